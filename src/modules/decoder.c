/*
 * BERT-style decoder layers (transformers BertLayer with is_decoder=True,
 * add_cross_attention=True), a modality projector building the memory, and incremental decoding
 * with a per-layer self-attention K/V cache and cross-attention K/V computed once per memory.
 *
 * Loading is the module core's: a fields table (BertConfig's arguments plus the projector's), a
 * per-layer parameter table instantiated under "layer.N." (BertEncoder) or "" (one BertLayer),
 * and the projector's table. Query, key and value weights (and biases) of each attention are
 * stored back to back (XA_P_GLUE), so q|k|v and k|v are single projections.
 *
 * A step of n tokens at position pos (the full forward is one step of T tokens at position 0):
 *   self-attention: full forward: one (B*T, 3h) projection q|k|v read in place; incremental: q
 *   into scratch and k|v rows straight into the cache at pos; then xa_op_attention over keys
 *   0 .. pos+n-1 with causal_offset = pos (query i at position pos + i keeps keys j <= pos + i)
 *   and the padding keep vector of every cached position; fill -FLT_MAX as transformers'
 *   finfo.min additive masks;
 *   cross-attention: the memory's k|v per layer (set_memory; computed layer by layer in the full
 *   forward), keep vector of the memory mask;
 *   residual adds fused into the output projections (xa_op_linear accumulate), post-LN, FFN with
 *   erf GELU. The residual stream lives in the caller's output buffer.
 *
 * The backward (module gradients) is that of the full forward: every parameter, the hidden
 * states and the memory (or the video / audio features through the projector); see "Backward".
 */
#include "modules/lm.h"
#include "io/io_internal.h"
#include "kernels/ops.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEC_MAX_LAYERS 4096

static const char *const FN_LOAD = "xattn_decoder_load";
static const char *const FN_BWD = "bert-decoder backward";

/* BertConfig(hidden_size=768, num_attention_heads=12, intermediate_size=3072,
 * num_hidden_layers=12, layer_norm_eps=1e-12, is_decoder=True, add_cross_attention=True), the
 * memory width (BLIP's encoder_width; transformers: hidden_size) and the projector (our design). */
static const xa_field fields[] = {
    {"hidden_size", XA_T_INT, XA_F_SHAPE, 768, 1, 1e15, NULL, NULL, "width of the hidden states"},
    {"num_attention_heads", XA_T_INT, XA_F_TRACELESS, 12, 1, 1e15, NULL,
     "heads|num_attention_heads", "attention heads (hidden_size must be a multiple)"},
    {"intermediate_size", XA_T_INT, XA_F_SHAPE, 3072, 1, 1e15, NULL, NULL,
     "width of the feed-forward layer"},
    {"num_hidden_layers", XA_T_INT, XA_F_SHAPE, 12, 1, DEC_MAX_LAYERS, NULL, NULL,
     "layers (counted from layer.0, layer.1, ...)"},
    {"layer_norm_eps", XA_T_REAL, XA_F_TRACELESS, 1e-12, 0, 1e30, NULL, NULL,
     "eps of every LayerNorm"},
    {"encoder_width", XA_T_INT, XA_F_SHAPE | XA_F_OPTIONAL, 0, 1, 1e15, NULL, NULL,
     "width of the memory (encoder_hidden_states) (None: hidden_size, as transformers)"},
    {"bert_encoder", XA_T_BOOL, XA_F_PRESENCE | XA_F_NOMETA, 1, 0, 1, NULL, NULL,
     "a BertEncoder (names layer.N.*); False: one BertLayer (no layer stem)"},
    {"video_projector", XA_T_BOOL, XA_F_PRESENCE, 0, 0, 1, NULL, NULL,
     "proj.video (nn.Linear(video_dim, encoder_width)) builds memory from video features"},
    {"video_dim", XA_T_INT, XA_F_SHAPE | XA_F_OPTIONAL, 0, 1, 1e15, NULL, NULL,
     "input width of proj.video (None: no video projector)"},
    {"video_type_embedding", XA_T_BOOL, XA_F_PRESENCE, 0, 0, 1, NULL, NULL,
     "type_embedding.video (encoder_width) is added to the projected video"},
    {"audio_projector", XA_T_BOOL, XA_F_PRESENCE, 0, 0, 1, NULL, NULL,
     "proj.audio (nn.Linear(audio_dim, encoder_width)) builds memory from audio features"},
    {"audio_dim", XA_T_INT, XA_F_SHAPE | XA_F_OPTIONAL, 0, 1, 1e15, NULL, NULL,
     "input width of proj.audio (None: no audio projector)"},
    {"audio_type_embedding", XA_T_BOOL, XA_F_PRESENCE, 0, 0, 1, NULL, NULL,
     "type_embedding.audio (encoder_width) is added to the projected audio"},
};
#define N_FIELDS ((int)(XA_N(fields)))

enum {
    SQW,
    SKW,
    SVW,
    SQB,
    SKB,
    SVB,
    SOW,
    SOB,
    SLW,
    SLB,
    CQW,
    CKW,
    CVW,
    CQB,
    CKB,
    CVB,
    COW,
    COB,
    CLW,
    CLB,
    IW,
    IB,
    OW,
    OB,
    OLW,
    OLB,
    NW
};

#define BERT "of a BertLayer(is_decoder=True, add_cross_attention=True)"
#define P_(name, shape, flags, init, fan, what)                                                    \
    {                                                                                              \
        name, shape, NULL, flags, init, fan, what " " BERT                                         \
    }
/* The ten tensors of a BertAttention (BertSelfAttention or BertCrossAttention + BertSelfOutput)
 * named pre.*, its keys and values projected from width kv. */
#define BERT_ATTENTION(pre, kv, who)                                                               \
    P_(pre ".self.query.weight", "hidden_size,hidden_size", 0, XA_INIT_LINEAR, NULL,               \
       "the " who " query weight"),                                                                \
        P_(pre ".self.key.weight", "hidden_size," kv, XA_P_GLUE, XA_INIT_LINEAR, NULL,             \
           "the " who " key weight"),                                                              \
        P_(pre ".self.value.weight", "hidden_size," kv, XA_P_GLUE, XA_INIT_LINEAR, NULL,           \
           "the " who " value weight"),                                                            \
        P_(pre ".self.query.bias", "hidden_size", 0, XA_INIT_BIAS, "hidden_size",                  \
           "the " who " query bias"),                                                              \
        P_(pre ".self.key.bias", "hidden_size", XA_P_GLUE, XA_INIT_BIAS, kv,                       \
           "the " who " key bias"),                                                                \
        P_(pre ".self.value.bias", "hidden_size", XA_P_GLUE, XA_INIT_BIAS, kv,                     \
           "the " who " value bias"),                                                              \
        P_(pre ".output.dense.weight", "hidden_size,hidden_size", 0, XA_INIT_LINEAR, NULL,         \
           "the " who " output weight"),                                                           \
        P_(pre ".output.dense.bias", "hidden_size", 0, XA_INIT_BIAS, "hidden_size",                \
           "the " who " output bias"),                                                             \
        P_(pre ".output.LayerNorm.weight", "hidden_size", 0, XA_INIT_ONES, NULL,                   \
           "the " who " LayerNorm weight"),                                                        \
        P_(pre ".output.LayerNorm.bias", "hidden_size", 0, XA_INIT_ZEROS, NULL,                    \
           "the " who " LayerNorm bias")

/* One BertLayer; nn.Linear and nn.LayerNorm keep torch's default initialisation when the layer
 * is built directly (no PreTrainedModel.post_init). Query, key and value are stored back to
 * back: one q|k|v projection for the self-attention, one k|v for the cross-attention. */
static const xa_pspec layer_table[NW] = {
    BERT_ATTENTION("attention", "hidden_size", "self-attention"),
    BERT_ATTENTION("crossattention", "encoder_width", "cross-attention"),
    P_("intermediate.dense.weight", "intermediate_size,hidden_size", 0, XA_INIT_LINEAR, NULL,
       "the feed-forward input weight"),
    P_("intermediate.dense.bias", "intermediate_size", 0, XA_INIT_BIAS, "hidden_size",
       "the feed-forward input bias"),
    P_("output.dense.weight", "hidden_size,intermediate_size", 0, XA_INIT_LINEAR, NULL,
       "the feed-forward output weight"),
    P_("output.dense.bias", "hidden_size", 0, XA_INIT_BIAS, "intermediate_size",
       "the feed-forward output bias"),
    P_("output.LayerNorm.weight", "hidden_size", 0, XA_INIT_ONES, NULL,
       "the output LayerNorm weight"),
    P_("output.LayerNorm.bias", "hidden_size", 0, XA_INIT_ZEROS, NULL, "the output LayerNorm bias"),
};

/* The projector (our design): nn.Linear defaults for proj.*; the type embeddings are drawn
 * N(0, 1) as nn.Embedding rows (BERT's token_type_embeddings, built directly). */
enum { PVW, PVB, PAW, PAB, TV, TA, NP };
static const xa_pspec proj_table[NP] = {
    {"proj.video.weight", "encoder_width,video_dim", "video_projector", 0, XA_INIT_LINEAR, NULL,
     "the video projection's weight (encoder_width, video_dim)"},
    {"proj.video.bias", "encoder_width", "video_projector", 0, XA_INIT_BIAS, "video_dim",
     "a modality projection has weight and bias"},
    {"proj.audio.weight", "encoder_width,audio_dim", "audio_projector", 0, XA_INIT_LINEAR, NULL,
     "the audio projection's weight (encoder_width, audio_dim)"},
    {"proj.audio.bias", "encoder_width", "audio_projector", 0, XA_INIT_BIAS, "audio_dim",
     "a modality projection has weight and bias"},
    {"type_embedding.video", "encoder_width", "video_type_embedding", 0, XA_INIT_NORMAL, "1",
     "the video type embedding (encoder_width)"},
    {"type_embedding.audio", "encoder_width", "audio_type_embedding", 0, XA_INIT_NORMAL, "1",
     "the audio type embedding (encoder_width)"},
};

typedef struct dec_layer {
    const float *w[NW];
    xa_wt wt[NW]; /* the linear weights as kept (float32, 16 bits or int8; w[k] NULL if not
                     float32) */
} dec_layer;

/* The layer's linear weights: what a weights mode other than float32 keeps in its type. */
static const int linear_weights[] = {SQW, SKW, SVW, SOW, CQW, CKW, CVW, COW, IW, OW};

struct xattn_decoder {
    xa_mod core;
    xattn_decoder_config cfg;
    dec_layer *layers;
    const float *p[NP]; /* projector tensors, NULL when absent */
};

/* ---------------------------------------------------------------------------------------- */
/* Configuration                                                                            */
/* ---------------------------------------------------------------------------------------- */

/* One BertLayer at prefix, or a BertEncoder stack "layer.N." (counted, gaps refused); stem:
 * where the first layer's names start. */
static xattn_status find_layers(xa_cfg *c, const xattn_safetensors *st, const char *prefix,
                                char *stem, size_t cap)
{
    const char *key = "attention.self.query.weight";
    char pp[XA_IO_NAME_CAP];
    const int enc = xa_cfg_find(c, "bert_encoder"), nl = xa_cfg_find(c, "num_hidden_layers");
    int64_t L = 1;
    xa_io_printable(prefix, pp, sizeof pp);
    if (xa_has(st, prefix, key)) {
        snprintf(stem, cap, "%s", "");
        xa_cfg_set(c, enc, 0, XA_FROM_SHAPE, "presence of '%s%s'", pp, key);
        xa_cfg_set(c, nl, 1, XA_FROM_SHAPE, "one BertLayer at '%s'", pp);
        return XATTN_OK;
    }
    xattn_status s = xa_count_layers(st, prefix, "layer.", key, DEC_MAX_LAYERS, &L);
    if (s) return s;
    snprintf(stem, cap, "%s", "layer.0.");
    if (L == 0)
        return xa_error(XATTN_ERR_NOT_FOUND,
                        "no BERT decoder layer found: expected '%sattention.self.query.weight' "
                        "and '%scrossattention.self.query.weight' (BertLayer) or "
                        "'%slayer.0.attention.self.query.weight' and "
                        "'%slayer.0.crossattention.self.query.weight' (BertEncoder)",
                        pp, pp, pp, pp);
    xa_cfg_set(c, enc, 1, XA_FROM_SHAPE, "presence of '%slayer.0.%s'", pp, key);
    xa_cfg_set(c, nl, (double)L, XA_FROM_SHAPE, "count of '%slayer.N.%s'", pp, key);
    return XATTN_OK;
}

/* Like xa_cfg_require_shapes for the shape fields that have a default (BertConfig gives one for
 * creating, but a file must tell them): a tensor of the wrong rank is named, not defaulted. */
static xattn_status require_bound(const xa_cfg *c, const xattn_safetensors *st, const char *prefix,
                                  const char *stem)
{
    xa_field f[N_FIELDS];
    memcpy(f, fields, sizeof f);
    for (int i = 0; i < N_FIELDS; i++)
        if ((f[i].flags & XA_F_SHAPE) && !(f[i].flags & XA_F_OPTIONAL)) f[i].flags |= XA_F_REQUIRED;
    xa_cfg tmp = *c;
    tmp.f = f;
    return xa_cfg_require_shapes(&tmp, layer_table, NW, st, prefix, stem);
}

/* proj.<mod> exists exactly when <mod>_dim is known; creating with <mod>_dim alone asks for it. */
static xattn_status check_projector(xa_cfg *c, const char *mod, int creating)
{
    char pn[32], dn[32];
    snprintf(pn, sizeof pn, "%s_projector", mod);
    snprintf(dn, sizeof dn, "%s_dim", mod);
    const int pi = xa_cfg_find(c, pn), di = xa_cfg_find(c, dn);
    const int has_dim = c->from[di] != XA_FROM_UNSET;
    if (creating && c->from[pi] == XA_FROM_DEFAULT && has_dim)
        xa_cfg_set(c, pi, 1, XA_FROM_DERIVED, "derived (%s given)", dn);
    if (c->v[pi] != 0 && !has_dim)
        return xa_error(XATTN_ERR_ARG, "%s: %s = True needs %s (the input width of proj.%s)",
                        FN_LOAD, pn, dn, mod);
    if (c->v[pi] == 0 && has_dim)
        return xa_error(XATTN_ERR_ARG, "%s: %s = %lld given but there is no %s projector (%s)",
                        FN_LOAD, dn, (long long)c->v[di], mod, c->how[pi]);
    return XATTN_OK;
}

/* Cross-field rules after resolution. */
static xattn_status finish_config(xa_cfg *c, int creating)
{
    const int ew = xa_cfg_find(c, "encoder_width"), nl = xa_cfg_find(c, "num_hidden_layers");
    const int hs = xa_cfg_find(c, "hidden_size"), nh = xa_cfg_find(c, "num_attention_heads");
    if (c->from[ew] == XA_FROM_UNSET)
        xa_cfg_set(c, ew, c->v[hs], XA_FROM_DEFAULT, "default (hidden_size)");
    if (creating && xa_cfg_get(c, "bert_encoder") == 0 && c->v[nl] != 1) {
        if (c->from[nl] == XA_FROM_OPTION || c->from[nl] == XA_FROM_META)
            return xa_error(XATTN_ERR_ARG,
                            "%s: one BertLayer (bert_encoder = False) has "
                            "num_hidden_layers = 1, not %lld",
                            FN_LOAD, (long long)c->v[nl]);
        xa_cfg_set(c, nl, 1, XA_FROM_DERIVED, "derived (one BertLayer)");
    }
    const int64_t h = (int64_t)c->v[hs], H = (int64_t)c->v[nh];
    if (h % H != 0)
        return xa_error(XATTN_ERR_SHAPE,
                        "hidden size %lld (from the %s) is not divisible by "
                        "num_attention_heads %lld (from the %s)",
                        (long long)h, c->how[hs], (long long)H, c->how[nh]);
    xattn_status s = check_projector(c, "video", creating);
    return s ? s : check_projector(c, "audio", creating);
}

static xattn_status build(xa_mod *m, const xattn_safetensors *st, const char *prefix,
                          const xa_kv *opts, size_t n_opts)
{
    xa_cfg *c = &m->cfg;
    char stem[32] = "";
    xattn_status s;
    if (st && ((s = find_layers(c, st, prefix, stem, sizeof stem)) ||
               (s = xa_cfg_bind_shapes(c, layer_table, NW, st, prefix, stem)) ||
               (s = require_bound(c, st, prefix, stem)) ||
               (s = xa_cfg_bind_shapes(c, proj_table, NP, st, prefix, ""))))
        return s;
    if ((s = xa_cfg_resolve(c, opts, n_opts, st, FN_LOAD)) || (s = finish_config(c, !st))) return s;
    const int64_t L = xa_cfg_int(c, "num_hidden_layers");
    const int enc = xa_cfg_get(c, "bert_encoder") != 0;
    for (int64_t l = 0; l < L; l++) {
        if (enc) snprintf(stem, sizeof stem, "layer.%lld.", (long long)l);
        int first;
        if ((s = xa_params_add_table(&m->params, layer_table, NW, c, enc ? stem : "", &first)))
            return s;
        for (size_t k = 0; k < XA_N(linear_weights); k++)
            m->params.p[first + linear_weights[k]].flags |= XA_P_LIN;
    }
    return xa_params_add_table(&m->params, proj_table, NP, c, "", NULL);
}

static xattn_status bind(xa_mod *core)
{
    xattn_decoder *m = (xattn_decoder *)core;
    const xa_cfg *c = &core->cfg;
    xattn_decoder_config *g = &m->cfg;
    g->hidden = xa_cfg_int(c, "hidden_size");
    g->heads = xa_cfg_int(c, "num_attention_heads");
    g->head_dim = g->hidden / g->heads;
    g->intermediate = xa_cfg_int(c, "intermediate_size");
    g->layers = xa_cfg_int(c, "num_hidden_layers");
    g->memory_dim = xa_cfg_int(c, "encoder_width");
    g->video_dim = xa_cfg_get(c, "video_projector") != 0 ? xa_cfg_int(c, "video_dim") : 0;
    g->audio_dim = xa_cfg_get(c, "audio_projector") != 0 ? xa_cfg_int(c, "audio_dim") : 0;
    g->video_type = xa_cfg_get(c, "video_type_embedding") != 0;
    g->audio_type = xa_cfg_get(c, "audio_type_embedding") != 0;
    g->layer_norm_eps = (float)xa_cfg_get(c, "layer_norm_eps");
    m->layers = calloc((size_t)g->layers, sizeof *m->layers);
    if (!m->layers) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN_LOAD);
    for (int64_t l = 0; l < g->layers; l++)
        for (int k = 0; k < NW; k++) {
            m->layers[l].w[k] = xa_param_data(&core->params, (int)(l * NW + k));
            m->layers[l].wt[k] = xa_param_w(&core->params, (int)(l * NW + k));
        }
    for (int k = 0; k < NP; k++) m->p[k] = xa_param_data(&core->params, (int)(g->layers * NW + k));
    return XATTN_OK;
}

static void destroy(xa_mod *core)
{
    xattn_decoder *m = (xattn_decoder *)core;
    free(m->layers);
    m->layers = NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Projector                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* memory[b, off .. off+N) = mean_f(x[b, f]) W^T + bias (+ type); x (B, F, N, D), pool (B, N*D). */
static xattn_status project_one(const float *x, int64_t B, int64_t F, int64_t N, int64_t D,
                                const float *W, const float *bias, const float *type, int64_t md,
                                int64_t off, int64_t Mt, float *mem, float *pool)
{
    xa_op_mean(x, B, F, N * D, pool);
    for (int64_t b = 0; b < B; b++) {
        float *dst = mem + (b * Mt + off) * md;
        xattn_status s = xa_op_linear(pool + b * N * D, N, D, W, bias, md, dst, 0);
        if (s) return s;
        if (type) xa_op_add_rows(dst, N, md, type, 1.0f);
    }
    return XATTN_OK;
}

static xattn_status project(const xattn_decoder *m, int64_t B, const float *video, int64_t Fv,
                            int64_t Nv, const float *audio, int64_t Fa, int64_t Na, float *memory)
{
    const char *fn = "xattn_decoder_project";
    const xattn_decoder_config *c = &m->cfg;
    if (Nv && !m->p[PVW])
        return xa_error(XATTN_ERR_NOT_FOUND,
                        "%s: video given but the file has no proj.video.weight", fn);
    if (Na && !m->p[PAW])
        return xa_error(XATTN_ERR_NOT_FOUND,
                        "%s: audio given but the file has no proj.audio.weight", fn);
    const double nv = (double)Nv * (double)c->video_dim, na = (double)Na * (double)c->audio_dim;
    const double tot = (double)B * (nv * (double)Fv + na * (double)Fa +
                                    ((double)Nv + (double)Na) * (double)c->memory_dim);
    if (!(tot < 0x1p50)) return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow", fn);
    const int64_t big = B * (int64_t)(nv > na ? nv : na);
    float *pool = xa_alloc((size_t)big * sizeof(float));
    if (!pool) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    xattn_status s = XATTN_OK;
    const int64_t Mt = Nv + Na;
    if (Nv)
        s = project_one(video, B, Fv, Nv, c->video_dim, m->p[PVW], m->p[PVB], m->p[TV],
                        c->memory_dim, 0, Mt, memory, pool);
    if (!s && Na)
        s = project_one(audio, B, Fa, Na, c->audio_dim, m->p[PAW], m->p[PAB], m->p[TA],
                        c->memory_dim, Nv, Mt, memory, pool);
    xa_free(pool);
    return s;
}

xattn_status xattn_decoder_project(xattn_ctx *ctx, const xattn_decoder *m, int64_t B,
                                   const float *video, int64_t Fv, int64_t Nv, const float *audio,
                                   int64_t Fa, int64_t Na, float *memory)
{
    const char *fn = "xattn_decoder_project";
    if (!m || !memory) return xa_error(XATTN_ERR_ARG, "%s: module or memory is NULL", fn);
    if (!video) Nv = 0;
    if (!audio) Na = 0;
    if (B <= 0 || Nv < 0 || Na < 0 || Nv + Na <= 0 || (Nv && Fv <= 0) || (Na && Fa <= 0))
        return xa_error(XATTN_ERR_SHAPE,
                        "%s: bad sizes B=%lld, Fv=%lld, Nv=%lld, Fa=%lld, Na=%lld "
                        "(need B >= 1, a modality with N >= 1 and F >= 1)",
                        fn, (long long)B, (long long)Fv, (long long)Nv, (long long)Fa,
                        (long long)Na);
    const xattn_ctx *prev = xa_ctx_enter(ctx);
    xattn_status s = project(m, B, video, Fv, Nv, audio, Fa, Na, memory);
    xa_ctx_leave(prev);
    if (!s) xa_clear_error();
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* State                                                                                    */
/* ---------------------------------------------------------------------------------------- */

struct xattn_decoder_state {
    const xattn_decoder *m;
    int64_t B, max_len, max_step, pos, M, Mcap;
    int64_t G, Bm;       /* rows per memory (beams) and memory items: B = Bm * G          */
    int full;            /* one step over everything: no self K/V cache, the memory's K/V
                            computed layer by layer into one slot                          */
    const float *memory; /* full: the memory (borrowed during the call)                    */
    float *kv;           /* incremental: per layer (B, max_len, 2h) rows K|V               */
    float *ckv;          /* per layer (B, M, 2h) rows K|V of the memory (full: one layer's) */
    uint8_t *keep;       /* (B, max_len) keep vector of the decoded positions              */
    uint8_t *ckeep;      /* (B, M) keep vector of the memory                                */
    float *Q, *A, *F;    /* scratch: (R, 3h) full q|k|v or (R, h) q; (R, h); (R, max(ff, 2h)) */
    float *re;           /* beams: (B, max_len, 2h) rows kept aside while reordering        */
    float *block;        /* owned (state_new): kv, Q, A, F, keep                            */
    float *cblock;       /* owned (set_memory): ckv, ckeep                                  */
};

enum { BUF_KV, BUF_Q, BUF_A, BUF_F, BUF_KEEP, BUF_RE, BUF_CKV, BUF_CKEEP, NBUF };

/* Floats of each buffer (bytes rounded up to floats), each slot 16-float aligned; the total,
 * or -1 when it would overflow. B rows over Bm memory items (G = B / Bm > 1: room to reorder
 * beams). M = 0: no memory buffers (set_memory allocates them). */
static int64_t state_sizes(const xattn_decoder_config *c, int64_t B, int64_t Bm, int64_t ML,
                           int64_t MS, int64_t M, int full, int64_t n[NBUF])
{
    const double h = (double)c->hidden, R = (double)B * (double)MS;
    double d[NBUF];
    d[BUF_KV] = full ? 0 : (double)c->layers * (double)B * (double)ML * 2 * h;
    d[BUF_Q] = R * (full ? 3 * h : h);
    d[BUF_A] = R * h;
    d[BUF_F] = R * fmax((double)c->intermediate, 2 * h); /* the FFN; or k|v rows of a step */
    d[BUF_KEEP] = ((double)B * (double)ML + 3) / 4;
    d[BUF_RE] = B > Bm ? (double)B * ((double)ML * 2 * h + (double)ML / 4 + 1) : 0;
    d[BUF_CKV] = (full ? 1 : (double)c->layers) * (double)Bm * (double)M * 2 * h;
    d[BUF_CKEEP] = M ? ((double)Bm * (double)M + 3) / 4 : 0;
    double tot = 0;
    for (int i = 0; i < NBUF; i++) tot += d[i] + 16;
    if (!(tot < 0x1p50)) return -1;
    int64_t t = 0;
    for (int i = 0; i < NBUF; i++) {
        n[i] = (int64_t)d[i];
        t += (n[i] + 15) & ~(int64_t)15;
    }
    return t;
}

/* Points the buffers with n[i] > 0 into base, in order. */
static void state_carve(xattn_decoder_state *s, float *base, const int64_t n[NBUF])
{
    float *p[NBUF];
    for (int i = 0; i < NBUF; i++) {
        p[i] = n[i] > 0 ? base : NULL;
        base += (n[i] + 15) & ~(int64_t)15;
    }
    if (p[BUF_KV]) s->kv = p[BUF_KV];
    s->Q = p[BUF_Q];
    s->A = p[BUF_A];
    s->F = p[BUF_F];
    s->keep = (uint8_t *)p[BUF_KEEP];
    s->re = p[BUF_RE];
    if (p[BUF_CKV]) s->ckv = p[BUF_CKV];
    if (p[BUF_CKEEP]) s->ckeep = (uint8_t *)p[BUF_CKEEP];
}

xattn_status xattn_decoder_state_new_beams(const xattn_decoder *m, int64_t batch, int64_t beams,
                                           int64_t max_len, int64_t max_step,
                                           xattn_decoder_state **out)
{
    const char *fn = "xattn_decoder_state_new";
    if (!out) return xa_error(XATTN_ERR_ARG, "%s: out is NULL", fn);
    *out = NULL;
    if (!m) return xa_error(XATTN_ERR_ARG, "%s: module is NULL", fn);
    if (batch <= 0 || beams <= 0 || max_len <= 0 || max_step <= 0 || max_step > max_len ||
        !((double)batch * (double)beams < 0x1p40))
        return xa_error(XATTN_ERR_SHAPE,
                        "%s: bad sizes batch=%lld, beams=%lld, max_len=%lld, max_step=%lld "
                        "(need batch, beams >= 1 and 1 <= max_step <= max_len)",
                        fn, (long long)batch, (long long)beams, (long long)max_len,
                        (long long)max_step);
    const int64_t B = batch * beams;
    int64_t n[NBUF];
    const int64_t tot = state_sizes(&m->cfg, B, batch, max_len, max_step, 0, 0, n);
    if (tot < 0)
        return xa_error(XATTN_ERR_NOMEM, "%s: cache for B=%lld, max_len=%lld overflows", fn,
                        (long long)B, (long long)max_len);
    xattn_decoder_state *s = calloc(1, sizeof *s);
    if (s) s->block = xa_alloc((size_t)tot * sizeof(float));
    if (!s || !s->block) {
        free(s);
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory (B=%lld, max_len=%lld)", fn,
                        (long long)B, (long long)max_len);
    }
    s->m = m;
    s->B = B;
    s->Bm = batch;
    s->G = beams;
    s->max_len = max_len;
    s->max_step = max_step;
    state_carve(s, s->block, n);
    *out = s;
    xa_clear_error();
    return XATTN_OK;
}

xattn_status xattn_decoder_state_new(const xattn_decoder *m, int64_t B, int64_t max_len,
                                     int64_t max_step, xattn_decoder_state **out)
{
    return xattn_decoder_state_new_beams(m, B, 1, max_len, max_step, out);
}

void xattn_decoder_state_free(xattn_decoder_state *s)
{
    if (!s) return;
    xa_free(s->block);
    xa_free(s->cblock);
    free(s);
}

void xattn_decoder_reset(xattn_decoder_state *s)
{
    if (s) s->pos = 0;
}

int64_t xattn_decoder_position(const xattn_decoder_state *s) { return s ? s->pos : 0; }

int64_t xa_decoder_state_rows(const xattn_decoder_state *s) { return s ? s->B : 0; }

int64_t xa_decoder_state_beams(const xattn_decoder_state *s) { return s ? s->G : 0; }

const xattn_decoder *xa_decoder_state_model(const xattn_decoder_state *s)
{
    return s ? s->m : NULL;
}

/* Row d of every cache (k|v of each layer over positions 0 .. pos-1, and the keep vector)
 * becomes a copy of row src[d]. Only the rows that change are written; a row that is both
 * copied from and overwritten is first kept aside in s->re. */
static void reorder_rows(xattn_decoder_state *s, const int64_t *src)
{
    const int64_t B = s->B, ML = s->max_len, P = s->pos, w = 2 * s->m->cfg.hidden;
    uint8_t *rkeep = (uint8_t *)(s->re + B * ML * w);
    for (int64_t l = 0; l <= s->m->cfg.layers; l++) {
        /* l < layers: layer l's k|v rows (w floats per position); l = layers: the keep vector */
        const int kv = l < s->m->cfg.layers;
        char *base = kv ? (char *)(s->kv + l * B * ML * w) : (char *)s->keep;
        char *aside = kv ? (char *)s->re : (char *)rkeep;
        const size_t row = (size_t)ML * (kv ? (size_t)w * sizeof(float) : 1);
        const size_t used = (size_t)P * (kv ? (size_t)w * sizeof(float) : 1);
        for (int64_t d = 0; d < B; d++)
            if (src[d] != d) memcpy(aside + (size_t)d * row, base + (size_t)d * row, used);
        for (int64_t d = 0; d < B; d++) {
            if (src[d] == d) continue;
            const int moved = src[src[d]] != src[d];
            memcpy(base + (size_t)d * row, (moved ? aside : base) + (size_t)src[d] * row, used);
        }
    }
}

xattn_status xattn_decoder_reorder(xattn_decoder_state *s, const int64_t *src)
{
    const char *fn = "xattn_decoder_reorder";
    if (!s || !src) return xa_error(XATTN_ERR_ARG, "%s: state or src is NULL", fn);
    for (int64_t d = 0; d < s->B; d++)
        if (src[d] < d / s->G * s->G || src[d] >= (d / s->G + 1) * s->G)
            return xa_error(XATTN_ERR_ARG,
                            "%s: src[%lld] = %lld is not a row of the same memory item (rows "
                            "%lld .. %lld)",
                            fn, (long long)d, (long long)src[d], (long long)(d / s->G * s->G),
                            (long long)((d / s->G + 1) * s->G - 1));
    if (s->G > 1) reorder_rows(s, src);
    return XATTN_OK;
}

/* keep[b, off .. off+n) (rows of ld) = mask[b, 0 .. n) (nonzero = keep), or all kept. */
static void put_keep(uint8_t *keep, int64_t B, int64_t ld, int64_t off, int64_t n,
                     const uint8_t *mask)
{
    if (n == 0) return; /* a sharded run's empty shard (keep may be NULL then) */
    for (int64_t b = 0; b < B; b++) {
        if (mask)
            memcpy(keep + b * ld + off, mask + b * n, (size_t)n);
        else
            memset(keep + b * ld + off, 1, (size_t)n);
    }
}

/* y (R, N) (+)= x (R, K) W^T + b with layer y's weight wk (as kept) and bias bk. */
static xattn_status lin(const dec_layer *y, int wk, int bk, const float *x, int64_t R, int64_t K,
                        int64_t N, float *out, int acc)
{
    return xa_op_linear_w(x, R, K, y->wt[wk], y->w[bk], N, out, acc);
}

/* K|V rows (B*M, 2h) of the memory for layer y (key and value weights are back to back). */
static xattn_status memory_kv(const xattn_decoder_state *s, const dec_layer *y, const float *memory,
                              float *ckv)
{
    const xattn_decoder_config *c = &s->m->cfg;
    return lin(y, CKW, CKB, memory, s->Bm * s->M, c->memory_dim, 2 * c->hidden, ckv, 0);
}

/* Room for the memory's K|V of every layer (grows only). */
static xattn_status memory_room(xattn_decoder_state *s, int64_t M, const char *fn)
{
    if (M <= s->Mcap) return XATTN_OK;
    int64_t n[NBUF];
    const int64_t tot = state_sizes(&s->m->cfg, s->Bm, s->Bm, 0, 0, M, 0, n);
    if (tot < 0)
        return xa_error(XATTN_ERR_NOMEM, "%s: memory of length %lld overflows", fn, (long long)M);
    xa_free(s->cblock);
    s->ckv = NULL;
    s->ckeep = NULL;
    s->Mcap = 0;
    s->M = 0;
    if (!(s->cblock = xa_alloc((size_t)tot * sizeof(float))))
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory (memory length %lld)", fn,
                        (long long)M);
    float *base = s->cblock;
    for (int i = 0; i < BUF_CKV; i++) base += (n[i] + 15) & ~(int64_t)15;
    s->ckv = base;
    s->ckeep = (uint8_t *)(base + ((n[BUF_CKV] + 15) & ~(int64_t)15));
    s->Mcap = M;
    return XATTN_OK;
}

/* The memory's K/V of every layer into the state (on the current context); position 0. */
static xattn_status set_memory_core(xattn_decoder_state *s, int64_t M, const float *memory,
                                    const uint8_t *memory_mask, const char *fn)
{
    xattn_status st = memory_room(s, M, fn);
    if (st) return st;
    const xattn_decoder_config *c = &s->m->cfg;
    s->M = M;
    for (int64_t l = 0; l < c->layers && !st; l++)
        st = memory_kv(s, &s->m->layers[l], memory, s->ckv + l * s->Bm * M * 2 * c->hidden);
    if (st) {
        s->M = 0;
        return st;
    }
    put_keep(s->ckeep, s->Bm, M, 0, M, memory_mask);
    s->pos = 0;
    return XATTN_OK;
}

xattn_status xattn_decoder_set_memory(xattn_ctx *ctx, xattn_decoder_state *s, int64_t M,
                                      const float *memory, const uint8_t *memory_mask)
{
    const char *fn = "xattn_decoder_set_memory";
    if (!s || !memory) return xa_error(XATTN_ERR_ARG, "%s: state or memory is NULL", fn);
    if (M <= 0)
        return xa_error(XATTN_ERR_SHAPE, "%s: memory length %lld (need >= 1)", fn, (long long)M);
    const xattn_ctx *prev = xa_ctx_enter(ctx);
    xattn_status st = set_memory_core(s, M, memory, memory_mask, fn);
    xa_ctx_leave(prev);
    if (!st) xa_clear_error();
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Step                                                                                     */
/* ---------------------------------------------------------------------------------------- */

/* Attention of n query rows q (B, n, q_ld) of each of B items over J keys, k|v rows kv (B, J,
 * kv_ld) (v at kv + hidden), heads read in place, into s->A (B, n, hidden). */
static void attn_common(xa_attn *at, const xattn_decoder_state *s, int64_t B, int64_t n, int64_t J,
                        const float *q, int64_t q_ld, const float *kv, int64_t kv_ld)
{
    const xattn_decoder_config *c = &s->m->cfg;
    memset(at, 0, sizeof *at);
    xa_attn_heads(at, B, c->heads, n, J, c->head_dim, c->head_dim, q, q_ld, kv, kv_ld,
                  kv + c->hidden, kv_ld, s->A, c->hidden);
    at->scale = xa_head_scale(c->head_dim);
    at->fill = XATTN_FILL_MIN_FLOAT;
    at->fn = s->full ? "xattn_decoder_forward" : "xattn_decoder_step";
}

/* Causal self-attention of n tokens at s->pos: queries at positions pos .. pos+n-1 over keys
 * 0 .. pos+n-1 (causal_offset = pos), padding from the keep vector of every position. Full
 * forward: q|k|v rows (B*n, 3h); incremental: q (B*n, h) and the cache's k|v rows (B, max_len,
 * 2h) of the layer (k and v set per layer). */
static void self_setup(xa_attn *sa, const xattn_decoder_state *s, int64_t n)
{
    const int64_t h = s->m->cfg.hidden;
    if (s->full) {
        attn_common(sa, s, s->B, n, s->pos + n, s->Q, 3 * h, s->Q + h, 3 * h);
    } else {
        attn_common(sa, s, s->B, n, s->pos + n, s->Q, h, s->kv, 2 * h);
        sa->k_sb = sa->v_sb = s->max_len * 2 * h;
    }
    sa->causal = 1;
    sa->causal_offset = s->pos;
    sa->kkeep = s->keep;
    sa->kkeep_sb = s->max_len;
}

/* Cross-attention over the memory's k|v rows (Bm, M, 2h) (k and v set per layer): the G rows
 * (beams) of a memory item are G n query rows of one attention item. */
static void cross_setup(xa_attn *ca, const xattn_decoder_state *s, int64_t n)
{
    const int64_t h = s->m->cfg.hidden;
    attn_common(ca, s, s->Bm, s->G * n, s->M, s->Q, h, s->ckv, 2 * h);
    ca->kkeep = s->ckeep;
    ca->kkeep_sb = s->M;
}

/* X (B*n, h) = LN(X + SelfAttn(X)) for layer l. */
static xattn_status self_block(const xattn_decoder_state *s, int64_t l, int64_t n, float *X,
                               xa_attn *sa)
{
    const xattn_decoder_config *c = &s->m->cfg;
    const dec_layer *y = &s->m->layers[l];
    const int64_t B = s->B, h = c->hidden, R = B * n, ML = s->max_len;
    xattn_status st;
    if (s->full) {
        st = lin(y, SQW, SQB, X, R, h, 3 * h, s->Q, 0);
    } else {
        float *kv = s->kv + l * B * ML * 2 * h;
        sa->k = kv;
        sa->v = kv + h;
        st = lin(y, SQW, SQB, X, R, h, h, s->Q, 0);
        /* k|v rows of positions pos .. pos+n-1: straight into the cache when its rows are
         * contiguous, else one projection of every row (the weights read once) copied in */
        if (B == 1 || n == ML) {
            if (!st) st = lin(y, SKW, SKB, X, R, h, 2 * h, kv + s->pos * 2 * h, 0);
        } else {
            if (!st) st = lin(y, SKW, SKB, X, R, h, 2 * h, s->F, 0);
            for (int64_t b = 0; b < B && !st; b++)
                memcpy(kv + (b * ML + s->pos) * 2 * h, s->F + b * n * 2 * h,
                       sizeof(float) * (size_t)(n * 2 * h));
        }
    }
    if (!st) st = xa_op_attention(sa);
    if (!st) st = lin(y, SOW, SOB, s->A, R, h, h, X, 1);
    if (!st) st = xa_op_layernorm(X, R, h, y->w[SLW], y->w[SLB], c->layer_norm_eps, X);
    return st;
}

/* X = LN(X + CrossAttn(X, memory)), then X = LN(X + FFN(X)) for layer l. */
static xattn_status cross_ffn_block(const xattn_decoder_state *s, int64_t l, int64_t n, float *X,
                                    xa_attn *ca)
{
    const xattn_decoder_config *c = &s->m->cfg;
    const dec_layer *y = &s->m->layers[l];
    const int64_t h = c->hidden, ff = c->intermediate, R = s->B * n;
    const float eps = c->layer_norm_eps;
    float *ckv = s->full ? s->ckv : s->ckv + l * s->Bm * s->M * 2 * h;
    xattn_status st = s->full ? memory_kv(s, y, s->memory, ckv) : XATTN_OK;
    ca->k = ckv;
    ca->v = ckv + h;
    if (!st) st = lin(y, CQW, CQB, X, R, h, h, s->Q, 0);
    if (!st) st = xa_op_attention(ca);
    if (!st) st = lin(y, COW, COB, s->A, R, h, h, X, 1);
    if (!st) st = xa_op_layernorm(X, R, h, y->w[CLW], y->w[CLB], eps, X);
    if (!st) st = lin(y, IW, IB, X, R, h, ff, s->F, 0);
    if (!st) st = xa_op_gelu(s->F, R * ff, 0);
    if (!st) st = lin(y, OW, OB, s->F, R, ff, h, X, 1);
    if (!st) st = xa_op_layernorm(X, R, h, y->w[OLW], y->w[OLB], eps, X);
    return st;
}

/* n tokens x (B, n, h) at s->pos through every layer into out (the residual stream). */
static xattn_status step_core(xattn_decoder_state *s, int64_t n, const float *x,
                              const uint8_t *attention_mask, float *out)
{
    const xattn_decoder_config *c = &s->m->cfg;
    if (out != x) memmove(out, x, (size_t)(s->B * n * c->hidden) * sizeof(float));
    put_keep(s->keep, s->B, s->max_len, s->pos, n, attention_mask);
    xa_attn sa, ca;
    self_setup(&sa, s, n);
    cross_setup(&ca, s, n);
    xattn_status st = XATTN_OK;
    for (int64_t l = 0; l < c->layers && !st; l++) {
        st = self_block(s, l, n, out, &sa);
        if (!st) st = cross_ffn_block(s, l, n, out, &ca);
    }
    if (!st) s->pos += n;
    return st;
}

xattn_status xattn_decoder_step(xattn_ctx *ctx, xattn_decoder_state *s, int64_t n, const float *x,
                                const uint8_t *attention_mask, float *out)
{
    const char *fn = "xattn_decoder_step";
    if (!s || !x || !out) return xa_error(XATTN_ERR_ARG, "%s: state, x or out is NULL", fn);
    if (s->M <= 0)
        return xa_error(XATTN_ERR_ARG, "%s: no memory set (call xattn_decoder_set_memory first)",
                        fn);
    if (n <= 0 || n > s->max_step)
        return xa_error(XATTN_ERR_SHAPE, "%s: %lld tokens per step (need 1 .. max_step = %lld)", fn,
                        (long long)n, (long long)s->max_step);
    if (s->pos + n > s->max_len)
        return xa_error(XATTN_ERR_SHAPE, "%s: position %lld + %lld tokens exceeds max_len %lld", fn,
                        (long long)s->pos, (long long)n, (long long)s->max_len);
    const xattn_ctx *prev = xa_ctx_enter(ctx);
    xattn_status st = step_core(s, n, x, attention_mask, out);
    xa_ctx_leave(prev);
    if (!st) xa_clear_error();
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Full forward                                                                             */
/* ---------------------------------------------------------------------------------------- */

/* One step of T tokens at position 0 on scratch from the context's workspace. */
static xattn_status forward_core(const xattn_decoder *m, const xattn_decoder_inputs *in, float *out)
{
    const char *fn = "xattn_decoder_forward";
    int64_t n[NBUF];
    const int64_t tot = state_sizes(&m->cfg, in->B, in->B, in->T, in->T, in->M, 1, n);
    if (tot < 0)
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes B=%lld, T=%lld, M=%lld overflow", fn,
                        (long long)in->B, (long long)in->T, (long long)in->M);
    xa_ws *w = xa_ws_get((size_t)tot * sizeof(float));
    if (!w) return XATTN_ERR_NOMEM;
    xattn_decoder_state s;
    memset(&s, 0, sizeof s);
    s.m = m;
    s.B = s.Bm = in->B;
    s.G = 1;
    s.max_len = s.max_step = in->T;
    s.M = s.Mcap = in->M;
    s.full = 1;
    s.memory = in->memory;
    state_carve(&s, xa_ws_data(w), n);
    put_keep(s.ckeep, s.B, s.M, 0, s.M, in->memory_mask);
    xattn_status st = step_core(&s, in->T, in->x, in->attention_mask, out);
    xa_ws_put(w);
    return st;
}

xattn_status xattn_decoder_forward(xattn_ctx *ctx, const xattn_decoder *m,
                                   const xattn_decoder_inputs *in, const xattn_decoder_outputs *out)
{
    const char *fn = "xattn_decoder_forward";
    if (!m || !in || !out || !in->x || !in->memory || !out->out)
        return xa_error(XATTN_ERR_ARG, "%s: module, inputs, x, memory or out is NULL", fn);
    if (!xa_reserved_zero(in->reserved_) || !xa_reserved_zero(out->reserved_))
        return xa_error(XATTN_ERR_ARG, "%s: the reserved_ words of inputs and outputs must be zero",
                        fn);
    if (in->B <= 0 || in->T < xa_op_min_rows() || in->M < xa_op_min_rows())
        return xa_error(XATTN_ERR_SHAPE, "%s: bad sizes B=%lld, T=%lld, M=%lld (need all >= 1)", fn,
                        (long long)in->B, (long long)in->T, (long long)in->M);
    const xattn_ctx *prev = xa_ctx_enter(ctx);
    xattn_status st = forward_core(m, in, out->out);
    xa_ctx_leave(prev);
    if (!st) xa_clear_error();
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Registry                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* BertEncoder.forward's arguments (the masks as BertModel takes them), or the projector's
 * features in place of encoder_hidden_states, and a switch for decoding token by token. */
enum { IN_X, IN_MEM, IN_AM, IN_MM, IN_VIDEO, IN_AUDIO, IN_INC, N_IN };
static const xa_io inputs[N_IN] = {
    {"hidden_states", "B,T,hidden_size", 0, "the decoder's input embeddings"},
    {"encoder_hidden_states", "B,M,encoder_width", XA_IO_OPT,
     "the memory cross-attention reads (or give video / audio)"},
    {"attention_mask", "B,T", XA_IO_OPT | XA_IO_MASK,
     "1 = KEEP, 0 = masked (True = keep; BertModel's attention_mask), combined with the causal "
     "mask"},
    {"encoder_attention_mask", "B,M", XA_IO_OPT | XA_IO_MASK,
     "1 = KEEP, 0 = masked (True = keep); a row with no kept key is the uniform average, as "
     "transformers"},
    {"video", "B,Fv,Nv,video_dim", XA_IO_OPT,
     "instead of encoder_hidden_states: video features (Fv frames of Nv tokens), mean-pooled over "
     "frames and projected by proj.video (+ type_embedding.video); the memory is [video; audio] "
     "along the sequence (T-V, T-A or T-AV)"},
    {"audio", "B,Fa,Na,audio_dim", XA_IO_OPT,
     "instead of encoder_hidden_states: audio features (Fa frames of Na tokens), pooled and "
     "projected by proj.audio (+ type_embedding.audio), after the video in the memory"},
    {"incremental", "", XA_IO_OPT | XA_IO_MASK,
     "decode one token at a time with the K/V cache, as generation does (the same output up to "
     "float rounding, except rows with no kept key at all)"},
};
static const xa_io outputs[] = {
    {"out", "B,T,hidden_size", 0, "last_hidden_state: the output of the last layer"},
};

/* The names of the hand-written runner's flags (and of BertModel's config: heads). */
static const xa_alias aliases[] = {
    {"memory", "encoder_hidden_states", NULL},
    {"memory_mask", "encoder_attention_mask", NULL},
    {"heads", "num_attention_heads", NULL},
};

/* The memory built from video / audio has Nv + Na tokens: a memory mask must match them. */
static xattn_status check_named(const xa_mod *core, const xa_run *r)
{
    (void)core;
    if (r->in[IN_MEM] || !r->in[IN_MM]) return XATTN_OK;
    const int64_t Nv = r->in[IN_VIDEO] ? xa_run_sym(r, "Nv") : 0;
    const int64_t Na = r->in[IN_AUDIO] ? xa_run_sym(r, "Na") : 0;
    if (xa_run_sym(r, "M") == Nv + Na) return XATTN_OK;
    return xa_error(
        XATTN_ERR_SHAPE,
        "input 'encoder_attention_mask' has %lld keys, but the memory built from %s%s%s "
        "has Nv + Na = %lld tokens",
        (long long)xa_run_sym(r, "M"), Nv ? "video" : "", Nv && Na ? " and " : "",
        Na ? "audio" : "", (long long)(Nv + Na));
}

/* The forward computed as generation computes it: one token at a time, the self-attention
 * K/V of the tokens before in the cache, the memory's K/V computed once. */
static xattn_status forward_incremental(const xattn_decoder *m, const xattn_decoder_inputs *in,
                                        float *out)
{
    const char *fn = "xattn_decoder_step";
    const int64_t B = in->B, T = in->T, h = m->cfg.hidden;
    xattn_decoder_state *s = NULL;
    xattn_status st = xattn_decoder_state_new(m, B, T, 1, &s);
    float *buf = st ? NULL : xa_alloc((size_t)(2 * B * h) * sizeof(float) + (size_t)B);
    if (!st && !buf) st = xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    if (!st) st = set_memory_core(s, in->M, in->memory, in->memory_mask, fn);
    float *xs = buf, *ys = buf + B * h;
    uint8_t *ms = (uint8_t *)(ys + B * h);
    for (int64_t t = 0; t < T && !st; t++) {
        for (int64_t b = 0; b < B; b++) {
            memcpy(xs + b * h, in->x + (b * T + t) * h, (size_t)h * sizeof(float));
            ms[b] = in->attention_mask ? in->attention_mask[b * T + t] : 1;
        }
        st = step_core(s, 1, xs, ms, ys);
        for (int64_t b = 0; b < B && !st; b++)
            memcpy(out + (b * T + t) * h, ys + b * h, (size_t)h * sizeof(float));
    }
    xa_free(buf);
    xattn_decoder_state_free(s);
    return st;
}

/* The typed inputs of a named run; the memory built by the projector into *built (the caller
 * frees it) when video / audio stand in for encoder_hidden_states. */
static xattn_status named_inputs(const xattn_decoder *m, const xa_run *r, xattn_decoder_inputs *in,
                                 float **built)
{
    memset(in, 0, sizeof *in);
    *built = NULL;
    in->B = xa_run_sym(r, "B");
    in->T = xa_run_sym(r, "T");
    in->x = r->in[IN_X];
    in->attention_mask = r->in[IN_AM];
    in->memory_mask = r->in[IN_MM];
    if (r->in[IN_MEM]) {
        in->M = xa_run_sym(r, "M");
        in->memory = r->in[IN_MEM];
        return XATTN_OK;
    }
    const int64_t Nv = r->in[IN_VIDEO] ? xa_run_sym(r, "Nv") : 0;
    const int64_t Na = r->in[IN_AUDIO] ? xa_run_sym(r, "Na") : 0;
    in->M = Nv + Na;
    if (!((double)in->B * (double)in->M * (double)m->cfg.memory_dim < 0x1p50))
        return xa_error(XATTN_ERR_NOMEM, "xattn_decoder_project: sizes overflow");
    if (!(*built = xa_alloc((size_t)(in->B * in->M * m->cfg.memory_dim) * sizeof(float))))
        return xa_error(XATTN_ERR_NOMEM, "xattn_decoder_project: out of memory");
    in->memory = *built;
    return project(m, in->B, r->in[IN_VIDEO], xa_run_sym(r, "Fv"), Nv, r->in[IN_AUDIO],
                   xa_run_sym(r, "Fa"), Na, *built);
}

static int incremental_asked(const xa_run *r)
{
    return r->in[IN_INC] && *(const uint8_t *)r->in[IN_INC];
}

static xattn_status forward_named(const xa_mod *core, const xa_run *r)
{
    const xattn_decoder *m = (const xattn_decoder *)core;
    xattn_decoder_inputs in;
    float *built;
    xattn_status st = named_inputs(m, r, &in, &built);
    if (!st)
        st = incremental_asked(r) ? forward_incremental(m, &in, r->out[0])
                                  : forward_core(m, &in, r->out[0]);
    xa_free(built);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Backward                                                                                 */
/* ---------------------------------------------------------------------------------------- */
/*
 * The backward of the full forward (incremental decoding has none). The forward runs once
 * keeping each layer's input stream (hidden floats per token and layer) and the memory; going
 * backward, a layer's internals (q|k|v, both attention outputs and log-sum-exps, the memory's
 * k|v, the stream before and after each LayerNorm, the feed-forward hidden before and after the
 * GELU) are recomputed from its input (the last layer's are still there from the forward) and
 * its gradient taken op by op: the output LayerNorm and feed-forward, the cross-attention block
 * (the memory's gradient summed over the layers), the self-attention block. The projector's
 * gradients follow from the memory's.
 */

typedef struct dec_bwd {
    const xattn_decoder *m;
    int64_t R, BM;       /* query rows B*T, memory rows B*M                               */
    const float *memory; /* (BM, memory_dim)                                              */
    xa_attn sa, ca;      /* the self- and cross-attention over the buffers below          */
    /* one layer's internals: q|k|v (R, 3h); (R, h): the self-attention's output, the sums
     * before and after LN1, the cross-attention's query and output, the sums before and after
     * LN2, the sum before LN3; (R, ff): the feed-forward hidden before and after GELU; the
     * memory's k|v (BM, 2h) */
    float *qkv, *a1, *s1, *x1, *qc, *a2, *s2, *x2, *s3, *hf, *g, *ckv;
    /* gradients: (R, h) ds, tmp, da; (R, 3h) dq; (R, ff) dhf; (BM, 2h) dckv; the memory's
     * (BM, memory_dim) or NULL (not needed); dwb: a projection's dW | db before they are
     * split into the parameters stored back to back */
    float *ds, *tmp, *da, *dq, *dhf, *dckv, *dmem, *dwb;
    float *const *dparam;
} dec_bwd;

/* The gradient of parameter k of layer l (NULL: not wanted). */
static float *dpl(const dec_bwd *w, int64_t l, int k)
{
    return w->dparam ? w->dparam[l * NW + k] : NULL;
}

/* The internals of layer l from its input x0 (its output into out when not NULL). */
static xattn_status layer_internals(const dec_bwd *w, int64_t l, const float *x0, float *out)
{
    const xattn_decoder_config *c = &w->m->cfg;
    const dec_layer *y = &w->m->layers[l];
    const int64_t R = w->R, h = c->hidden, ff = c->intermediate;
    const float eps = c->layer_norm_eps;
    const size_t rh = sizeof(float) * (size_t)(R * h);
    xattn_status s;
    if ((s = xa_op_linear(x0, R, h, y->w[SQW], y->w[SQB], 3 * h, w->qkv, 0)) ||
        (s = xa_op_attention(&w->sa)))
        return s;
    memcpy(w->s1, x0, rh);
    if ((s = xa_op_linear(w->a1, R, h, y->w[SOW], y->w[SOB], h, w->s1, 1)) ||
        (s = xa_op_layernorm(w->s1, R, h, y->w[SLW], y->w[SLB], eps, w->x1)) ||
        (s = xa_op_linear(w->memory, w->BM, c->memory_dim, y->w[CKW], y->w[CKB], 2 * h, w->ckv,
                          0)) ||
        (s = xa_op_linear(w->x1, R, h, y->w[CQW], y->w[CQB], h, w->qc, 0)) ||
        (s = xa_op_attention(&w->ca)))
        return s;
    memcpy(w->s2, w->x1, rh);
    if ((s = xa_op_linear(w->a2, R, h, y->w[COW], y->w[COB], h, w->s2, 1)) ||
        (s = xa_op_layernorm(w->s2, R, h, y->w[CLW], y->w[CLB], eps, w->x2)) ||
        (s = xa_op_linear(w->x2, R, h, y->w[IW], y->w[IB], ff, w->hf, 0)))
        return s;
    memcpy(w->g, w->hf, sizeof(float) * (size_t)(R * ff));
    if ((s = xa_op_gelu(w->g, R * ff, 0))) return s;
    memcpy(w->s3, w->x2, rh);
    if ((s = xa_op_linear(w->g, R, ff, y->w[OW], y->w[OB], h, w->s3, 1))) return s;
    return out ? xa_op_layernorm(w->s3, R, h, y->w[OLW], y->w[OLB], eps, out) : XATTN_OK;
}

/* The output projection and attention of a block S = X + A Wo^T + bo (parameters ow, ob of
 * layer l) from w->ds = dS: the gradients of q (laid out as q in qb, written to dqb) and of k
 * and v (as k, v in kb, written to dkb). */
static xattn_status attn_block_backward(dec_bwd *w, int64_t l, const xa_attn *a, int ow, int ob,
                                        const float *qb, float *dqb, const float *kb, float *dkb)
{
    const int64_t h = w->m->cfg.hidden;
    xattn_status s = xa_op_linear_backward(a->out, w->R, h, w->m->layers[l].w[ow], h, w->ds, w->da,
                                           dpl(w, l, ow), dpl(w, l, ob), 0);
    if (s) return s;
    xa_attn_grad ag;
    memset(&ag, 0, sizeof ag);
    ag.dout = w->da, ag.do_sb = a->o_sb, ag.do_sh = a->o_sh, ag.do_si = a->o_si;
    ag.lse = a->lse;
    ag.dq = dqb + (a->q - qb), ag.dq_sb = a->q_sb, ag.dq_sh = a->q_sh, ag.dq_si = a->q_si;
    ag.dk = dkb + (a->k - kb), ag.dk_sb = a->k_sb, ag.dk_sh = a->k_sh, ag.dk_sj = a->k_sj;
    ag.dv = dkb + (a->v - kb), ag.dv_sb = a->v_sb, ag.dv_sh = a->v_sh, ag.dv_sj = a->v_sj;
    xa_attn p = *a;
    p.lse = NULL;
    if ((s = xa_op_attention_backward(&p, &ag))) return s;
    return xa_op_attention_full_rows_backward(a, &ag);
}

/* The backward of the n projections of layer l stored back to back from weight wk and bias bk
 * (each (h, K) and (h)) over x (rows, K), dy (rows, n h): dx (added to when acc), the weights'
 * and biases' gradients through w->dwb into every one wanted. */
static xattn_status glued_backward(dec_bwd *w, int64_t l, int wk, int bk, int n, const float *x,
                                   int64_t rows, int64_t K, const float *dy, float *dx, int acc)
{
    const int64_t h = w->m->cfg.hidden;
    int want = 0;
    for (int p = 0; p < n; p++) want |= dpl(w, l, wk + p) || dpl(w, l, bk + p);
    if (!want && !dx) return XATTN_OK;
    float *dW = want ? w->dwb : NULL, *db = want ? w->dwb + n * h * K : NULL;
    if (want && acc) memset(w->dwb, 0, sizeof(float) * (size_t)(n * h * (K + 1)));
    xattn_status s =
        xa_op_linear_backward(x, rows, K, w->m->layers[l].w[wk], n * h, dy, dx, dW, db, acc);
    for (int p = 0; p < n && want && !s; p++) {
        float *dst = dpl(w, l, wk + p);
        if (dst) memcpy(dst, dW + p * h * K, sizeof(float) * (size_t)(h * K));
        if ((dst = dpl(w, l, bk + p))) memcpy(dst, db + p * h, sizeof(float) * (size_t)h);
    }
    return s;
}

/* X3 = LN3(X2 + FFN(X2)) and X2 = LN2(X1 + CrossAttn(X1, memory)) of layer l: dy = dX3 in,
 * w->tmp = dX1 out; the memory's gradient added to (the first layer going back: set). */
static xattn_status ffn_cross_backward(dec_bwd *w, int64_t l, const float *dy)
{
    const xattn_decoder_config *c = &w->m->cfg;
    const dec_layer *y = &w->m->layers[l];
    const int64_t R = w->R, h = c->hidden, ff = c->intermediate;
    const float eps = c->layer_norm_eps;
    xattn_status s;
    if ((s = xa_op_layernorm_backward(w->s3, R, h, y->w[OLW], eps, dy, w->ds, dpl(w, l, OLW),
                                      dpl(w, l, OLB), 0)) ||
        (s = xa_op_linear_backward(w->g, R, ff, y->w[OW], h, w->ds, w->dhf, dpl(w, l, OW),
                                   dpl(w, l, OB), 0)))
        return s;
    xa_op_gelu_backward(w->hf, w->dhf, w->dhf, R * ff, 0);
    if ((s = xa_op_linear_backward(w->x2, R, h, y->w[IW], ff, w->dhf, w->tmp, dpl(w, l, IW),
                                   dpl(w, l, IB), 0)))
        return s;
    xa_op_add(w->tmp, w->ds, R * h); /* dX2: the residual's part and the feed-forward's */
    if ((s = xa_op_layernorm_backward(w->s2, R, h, y->w[CLW], eps, w->tmp, w->ds, dpl(w, l, CLW),
                                      dpl(w, l, CLB), 0)) ||
        (s = attn_block_backward(w, l, &w->ca, COW, COB, w->qc, w->dq, w->ckv, w->dckv)) ||
        (s = xa_op_linear_backward(w->x1, R, h, y->w[CQW], h, w->dq, w->tmp, dpl(w, l, CQW),
                                   dpl(w, l, CQB), 0)))
        return s;
    xa_op_add(w->tmp, w->ds, R * h); /* dX1 */
    return glued_backward(w, l, CKW, CKB, 2, w->memory, w->BM, c->memory_dim, w->dckv, w->dmem,
                          l != c->layers - 1);
}

/* Layer l's backward: dy (R, h), the gradient of its output, becomes that of its input x0. The
 * internals are those of layer_internals(x0). */
static xattn_status layer_backward(dec_bwd *w, int64_t l, const float *x0, float *dy)
{
    const xattn_decoder_config *c = &w->m->cfg;
    const int64_t R = w->R, h = c->hidden;
    xattn_status s;
    /* X1 = LN1(X0 + SelfAttn(X0)) */
    if ((s = ffn_cross_backward(w, l, dy)) ||
        (s = xa_op_layernorm_backward(w->s1, R, h, w->m->layers[l].w[SLW], c->layer_norm_eps,
                                      w->tmp, w->ds, dpl(w, l, SLW), dpl(w, l, SLB), 0)) ||
        (s = attn_block_backward(w, l, &w->sa, SOW, SOB, w->qkv, w->dq, w->qkv, w->dq)) ||
        (s = glued_backward(w, l, SQW, SQB, 3, x0, R, h, w->dq, dy, 0)))
        return s;
    xa_op_add(dy, w->ds, R * h); /* dX0 */
    return XATTN_OK;
}

/* The projector's backward for one modality: dmem's rows [off, off + N) of each batch item
 * (B, Mt, md) -> the gradients of W (md, D), its bias, the type embedding and of x (B, F, N, D)
 * (each NULL: not wanted); scratch: 2 B N D + B N md floats. */
static xattn_status project_one_backward(const float *x, int64_t B, int64_t F, int64_t N, int64_t D,
                                         const float *W, int64_t md, int64_t off, int64_t Mt,
                                         const float *dmem, float *dW, float *db, float *dtype,
                                         float *dx, float *scratch)
{
    float *pool = scratch, *dpool = pool + B * N * D, *dm = dpool + B * N * D;
    for (int64_t b = 0; b < B; b++)
        memcpy(dm + b * N * md, dmem + (b * Mt + off) * md, sizeof(float) * (size_t)(N * md));
    xa_op_mean(x, B, F, N * D, pool);
    xattn_status s = xa_op_linear_backward(pool, B * N, D, W, md, dm, dx ? dpool : NULL, dW, db, 0);
    if (!s && dtype) xa_op_sum_rows(dm, B * N, md, md, dtype);
    if (!s && dx) xa_op_mean_backward(dpool, B, F, N * D, dx, 0);
    return s;
}

/* The projector's gradients (parameters and video / audio inputs) from the memory's dmem (NULL:
 * the memory was given, not built); those of a projection not used are 0. */
static xattn_status project_backward(const xattn_decoder *m, const xa_run *r, const float *dmem,
                                     const xa_grad *g)
{
    const xattn_decoder_config *c = &m->cfg;
    for (int k = 0; k < NP && g->dparam; k++) {
        const xa_param *p = &m->core.params.p[c->layers * NW + k];
        int64_t n = 1;
        for (int a = 0; a < p->ndim; a++) n *= p->shape[a];
        float *d = g->dparam[c->layers * NW + k];
        if (d && m->p[k]) memset(d, 0, sizeof(float) * (size_t)n);
    }
    if (!dmem) return XATTN_OK;
    const int64_t B = xa_run_sym(r, "B"), md = c->memory_dim;
    const int64_t Nv = r->in[IN_VIDEO] ? xa_run_sym(r, "Nv") : 0;
    const int64_t Na = r->in[IN_AUDIO] ? xa_run_sym(r, "Na") : 0;
    const int64_t nd = XA_MAX(Nv * c->video_dim, Na * c->audio_dim);
    const int64_t nm = XA_MAX(Nv, Na) * md;
    float *const *dp = g->dparam ? g->dparam + c->layers * NW : NULL;
#define DP(k) (dp && m->p[k] ? dp[k] : NULL)
    float *scratch = xa_alloc(sizeof(float) * (size_t)(B * (2 * nd + nm)));
    if (!scratch) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory for the backward", FN_BWD);
    xattn_status s = XATTN_OK;
    if (Nv)
        s = project_one_backward(r->in[IN_VIDEO], B, xa_run_sym(r, "Fv"), Nv, c->video_dim,
                                 m->p[PVW], md, 0, Nv + Na, dmem, DP(PVW), DP(PVB), DP(TV),
                                 g->din[IN_VIDEO], scratch);
    if (!s && Na)
        s = project_one_backward(r->in[IN_AUDIO], B, xa_run_sym(r, "Fa"), Na, c->audio_dim,
                                 m->p[PAW], md, Nv, Nv + Na, dmem, DP(PAW), DP(PAB), DP(TA),
                                 g->din[IN_AUDIO], scratch);
#undef DP
    xa_free(scratch);
    return s;
}

static float *take(float **p, int64_t n)
{
    float *r = *p;
    *p += (n + 15) / 16 * 16;
    return r;
}

/* The attention of the backward's buffers (as the full forward sets it up), with their keep
 * vectors and log-sum-exps. */
static void bwd_attn(dec_bwd *w, const xattn_decoder_inputs *in, uint8_t *keep, uint8_t *ckeep,
                     float *lse1, float *lse2)
{
    xattn_decoder_state s;
    memset(&s, 0, sizeof s);
    s.m = w->m;
    s.B = s.Bm = in->B;
    s.G = 1;
    s.max_len = s.max_step = in->T;
    s.M = in->M;
    s.full = 1;
    s.keep = keep;
    s.ckeep = ckeep;
    s.ckv = w->ckv;
    put_keep(keep, in->B, in->T, 0, in->T, in->attention_mask);
    put_keep(ckeep, in->B, in->M, 0, in->M, in->memory_mask);
    s.Q = w->qkv, s.A = w->a1;
    self_setup(&w->sa, &s, in->T);
    s.Q = w->qc, s.A = w->a2;
    cross_setup(&w->ca, &s, in->T);
    w->sa.lse = lse1, w->ca.lse = lse2;
    w->sa.fn = w->ca.fn = FN_BWD;
}

/* One block for the backward: the inputs of layers 1 .. L-1 (*xs), the output's gradient (*dy,
 * unless the caller takes dX into g), one layer's internals and gradients, the memory's gradient
 * (the caller's, or here when the memory is built), the log-sum-exps and keep vectors. */
static xattn_status bwd_alloc(const xattn_decoder *m, const xattn_decoder_inputs *in,
                              const xa_grad *g, int built, dec_bwd *w, float **block, float **xs,
                              float **dy)
{
    const xattn_decoder_config *c = &m->cfg;
    const int64_t B = in->B, T = in->T, R = B * T, BM = B * in->M, h = c->hidden;
    const int64_t ff = c->intermediate, md = c->memory_dim, BHT = B * c->heads * T;
    const double dR = (double)R, dBM = (double)BM, dh = (double)h;
    const double nwb = XA_MAX(3.0 * dh * (dh + 1), 2.0 * dh * ((double)md + 1));
    const double tot = dR * dh * ((double)c->layers + 18) + 3 * dR * (double)ff +
                       dBM * (4 * dh + (double)md) + 2.0 * (double)BHT + nwb + (dR + dBM) / 4 +
                       16 * 40;
    if (!(tot < 0x1p40))
        return xa_error(XATTN_ERR_NOMEM, "%s: scratch for B=%lld, T=%lld, M=%lld overflows", FN_BWD,
                        (long long)B, (long long)T, (long long)in->M);
    float *p = *block = xa_alloc(sizeof(float) * (size_t)tot);
    if (!p) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN_BWD);
    memset(w, 0, sizeof *w);
    w->m = m, w->R = R, w->BM = BM, w->memory = in->memory, w->dparam = g->dparam;
    *xs = take(&p, (c->layers - 1) * R * h);
    *dy = g->din[IN_X] ? g->din[IN_X] : take(&p, R * h);
    w->qkv = take(&p, 3 * R * h), w->dq = take(&p, 3 * R * h);
    float **rows[] = {&w->a1, &w->s1, &w->x1, &w->qc,  &w->a2, &w->s2,
                      &w->x2, &w->s3, &w->ds, &w->tmp, &w->da};
    for (size_t i = 0; i < XA_N(rows); i++) *rows[i] = take(&p, R * h);
    w->hf = take(&p, R * ff), w->g = take(&p, R * ff), w->dhf = take(&p, R * ff);
    w->ckv = take(&p, BM * 2 * h), w->dckv = take(&p, BM * 2 * h);
    w->dmem = g->din[IN_MEM] ? g->din[IN_MEM] : built ? take(&p, BM * md) : NULL;
    w->dwb = take(&p, (int64_t)nwb);
    float *lse1 = take(&p, BHT), *lse2 = take(&p, BHT);
    uint8_t *keep = (uint8_t *)take(&p, R / 4 + 1), *ckeep = (uint8_t *)take(&p, BM / 4 + 1);
    bwd_attn(w, in, keep, ckeep, lse1, lse2);
    return XATTN_OK;
}

static xattn_status backward_named(const xa_mod *core, const xa_run *r, xa_grad *g)
{
    const xattn_decoder *m = (const xattn_decoder *)core;
    if (incremental_asked(r))
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "%s: incremental decoding (input 'incremental') has no backward; the "
                        "full forward has",
                        FN_BWD);
    if (xa_params_reduced(&core->params))
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "%s: the linear weights are kept in 16 bits or int8 (inference only); "
                        "load them as float32 to train",
                        FN_BWD);
    const int64_t L = m->cfg.layers, h = m->cfg.hidden;
    xattn_decoder_inputs in;
    float *built, *block = NULL, *xs = NULL, *dy = NULL;
    dec_bwd w;
    xattn_status s = named_inputs(m, r, &in, &built);
    if (!s) s = bwd_alloc(m, &in, g, built != NULL, &w, &block, &xs, &dy);
    const int64_t R = in.B * in.T;
    /* the forward, keeping the input of every layer after the first */
    for (int64_t l = 0; l < L && !s; l++)
        s = layer_internals(&w, l, l ? xs + (l - 1) * R * h : in.x,
                            l + 1 < L ? xs + l * R * h : r->out[0]);
    if (!s) s = xa_grad_outputs(g, r);
    if (!s && g->dout[0])
        memcpy(dy, g->dout[0], sizeof(float) * (size_t)(R * h));
    else if (!s)
        memset(dy, 0, sizeof(float) * (size_t)(R * h));
    for (int64_t l = L - 1; l >= 0 && !s; l--) {
        const float *x0 = l ? xs + (l - 1) * R * h : in.x;
        if (l != L - 1) s = layer_internals(&w, l, x0, NULL); /* the last: still there */
        if (!s) s = layer_backward(&w, l, x0, dy);
    }
    if (!s) s = project_backward(m, r, built ? w.dmem : NULL, g);
    xa_free(block);
    xa_free(built);
    return s;
}

const xa_kind xa_kind_bert_decoder = {
    .name = "bert-decoder",
    .reference = "transformers BertEncoder / BertLayer (BertConfig(is_decoder=True, "
                 "add_cross_attention=True))",
    .summary = "BERT decoder layers: causal self-attention, cross-attention over a memory, FFN",
    .fields = fields,
    .n_fields = N_FIELDS,
    .inputs = inputs,
    .n_in = N_IN,
    .outputs = outputs,
    .n_out = 1,
    .anchor = "crossattention.self.query.weight|layer.0.crossattention.self.query.weight",
    .size = sizeof(xattn_decoder),
    .build = build,
    .bind = bind,
    .destroy = destroy,
    .check = check_named,
    .forward = forward_named,
    .backward = backward_named,
    .aliases = aliases,
    .n_aliases = (int)(XA_N(aliases)),
    .brief = "hidden_size,num_attention_heads,intermediate_size,num_hidden_layers,layer_norm_eps,"
             "encoder_width,video_dim,audio_dim",
    .state_dict = "[layer.N.]attention.self.{query,key,value}.{weight,bias}, "
                  "attention.output.dense.{weight,bias}, attention.output.LayerNorm.{weight,bias}, "
                  "crossattention.<the same> (key and value weights (hidden_size, encoder_width)), "
                  "intermediate.dense.{weight,bias}, output.dense.{weight,bias}, "
                  "output.LayerNorm.{weight,bias}; optional proj.video.{weight,bias}, "
                  "proj.audio.{weight,bias}, type_embedding.video, type_embedding.audio",
    .one_of = "encoder_hidden_states|video,audio",
};

/* ---------------------------------------------------------------------------------------- */
/* Typed API                                                                                */
/* ---------------------------------------------------------------------------------------- */

xattn_status xattn_decoder_load(const xattn_safetensors *st, const char *prefix,
                                const xattn_decoder_opts *opts, xattn_decoder **out)
{
    XA_LOAD_ARGS(st, out, FN_LOAD);
    xa_kvbuf kv;
    memset(&kv, 0, sizeof kv);
    if (opts) {
        if (!xa_reserved_zero(opts->reserved_))
            return xa_error(XATTN_ERR_ARG, "%s: opts->reserved_ must be zero", FN_LOAD);
        xa_kv_int(&kv, "num_attention_heads", opts->heads);
        xa_kv_real(&kv, "layer_norm_eps", opts->layer_norm_eps);
    }
    xa_mod *m;
    xattn_status s = xa_mod_open(&xa_kind_bert_decoder, st, prefix, kv.kv, kv.n, &m);
    *out = s ? NULL : (xattn_decoder *)m;
    return s;
}

void xattn_decoder_free(xattn_decoder *m) { xa_mod_free(m ? &m->core : NULL); }

void xattn_decoder_get_config(const xattn_decoder *m, xattn_decoder_config *cfg)
{
    xa_copy_config(m ? &m->cfg : NULL, cfg, sizeof *cfg);
}
