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
 */
#include "core/registry.h"
#include "io/io_internal.h"
#include "kernels/ops.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEC_MAX_LAYERS 4096

static const char *const FN_LOAD = "xattn_decoder_load";

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
} dec_layer;

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
        if ((s = xa_params_add_table(&m->params, layer_table, NW, c, enc ? stem : "", NULL)))
            return s;
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
        for (int k = 0; k < NW; k++)
            m->layers[l].w[k] = xa_param_data(&core->params, (int)(l * NW + k));
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
    int full;            /* one step over everything: no self K/V cache, the memory's K/V
                            computed layer by layer into one slot                          */
    const float *memory; /* full: the memory (borrowed during the call)                    */
    float *kv;           /* incremental: per layer (B, max_len, 2h) rows K|V               */
    float *ckv;          /* per layer (B, M, 2h) rows K|V of the memory (full: one layer's) */
    uint8_t *keep;       /* (B, max_len) keep vector of the decoded positions              */
    uint8_t *ckeep;      /* (B, M) keep vector of the memory                                */
    float *Q, *A, *F;    /* scratch: (R, 3h) full q|k|v or (R, h) q; (R, h); (R, ff)        */
    float *block;        /* owned (state_new): kv, Q, A, F, keep                            */
    float *cblock;       /* owned (set_memory): ckv, ckeep                                  */
};

enum { BUF_KV, BUF_Q, BUF_A, BUF_F, BUF_KEEP, BUF_CKV, BUF_CKEEP, NBUF };

/* Floats of each buffer (bytes rounded up to floats), each slot 16-float aligned; the total,
 * or -1 when it would overflow. M = 0: no memory buffers (set_memory allocates them). */
static int64_t state_sizes(const xattn_decoder_config *c, int64_t B, int64_t ML, int64_t MS,
                           int64_t M, int full, int64_t n[NBUF])
{
    const double h = (double)c->hidden, R = (double)B * (double)MS;
    double d[NBUF];
    d[BUF_KV] = full ? 0 : (double)c->layers * (double)B * (double)ML * 2 * h;
    d[BUF_Q] = R * (full ? 3 * h : h);
    d[BUF_A] = R * h;
    d[BUF_F] = R * (double)c->intermediate;
    d[BUF_KEEP] = ((double)B * (double)ML + 3) / 4;
    d[BUF_CKV] = (full ? 1 : (double)c->layers) * (double)B * (double)M * 2 * h;
    d[BUF_CKEEP] = M ? ((double)B * (double)M + 3) / 4 : 0;
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
    if (p[BUF_CKV]) s->ckv = p[BUF_CKV];
    if (p[BUF_CKEEP]) s->ckeep = (uint8_t *)p[BUF_CKEEP];
}

xattn_status xattn_decoder_state_new(const xattn_decoder *m, int64_t B, int64_t max_len,
                                     int64_t max_step, xattn_decoder_state **out)
{
    const char *fn = "xattn_decoder_state_new";
    if (!out) return xa_error(XATTN_ERR_ARG, "%s: out is NULL", fn);
    *out = NULL;
    if (!m) return xa_error(XATTN_ERR_ARG, "%s: module is NULL", fn);
    if (B <= 0 || max_len <= 0 || max_step <= 0 || max_step > max_len)
        return xa_error(XATTN_ERR_SHAPE,
                        "%s: bad sizes B=%lld, max_len=%lld, max_step=%lld (need "
                        "B >= 1 and 1 <= max_step <= max_len)",
                        fn, (long long)B, (long long)max_len, (long long)max_step);
    int64_t n[NBUF];
    const int64_t tot = state_sizes(&m->cfg, B, max_len, max_step, 0, 0, n);
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
    s->max_len = max_len;
    s->max_step = max_step;
    state_carve(s, s->block, n);
    *out = s;
    xa_clear_error();
    return XATTN_OK;
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

/* keep[b, off .. off+n) (rows of ld) = mask[b, 0 .. n) (nonzero = keep), or all kept. */
static void put_keep(uint8_t *keep, int64_t B, int64_t ld, int64_t off, int64_t n,
                     const uint8_t *mask)
{
    for (int64_t b = 0; b < B; b++) {
        if (mask)
            memcpy(keep + b * ld + off, mask + b * n, (size_t)n);
        else
            memset(keep + b * ld + off, 1, (size_t)n);
    }
}

/* K|V rows (B*M, 2h) of the memory for layer y (key and value weights are back to back). */
static xattn_status memory_kv(const xattn_decoder_state *s, const dec_layer *y, const float *memory,
                              float *ckv)
{
    const xattn_decoder_config *c = &s->m->cfg;
    return xa_op_linear(memory, s->B * s->M, c->memory_dim, y->w[CKW], y->w[CKB], 2 * c->hidden,
                        ckv, 0);
}

/* Room for the memory's K|V of every layer (grows only). */
static xattn_status memory_room(xattn_decoder_state *s, int64_t M, const char *fn)
{
    if (M <= s->Mcap) return XATTN_OK;
    int64_t n[NBUF];
    const int64_t tot = state_sizes(&s->m->cfg, s->B, 0, 0, M, 0, n);
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
        st = memory_kv(s, &s->m->layers[l], memory, s->ckv + l * s->B * M * 2 * c->hidden);
    if (st) {
        s->M = 0;
        return st;
    }
    put_keep(s->ckeep, s->B, M, 0, M, memory_mask);
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

/* Attention of n query rows q (B, n, q_ld) over J keys, k|v rows kv (B, J, kv_ld) (v at
 * kv + hidden), heads read in place, into s->A (B, n, hidden). */
static void attn_common(xa_attn *at, const xattn_decoder_state *s, int64_t n, int64_t J,
                        const float *q, int64_t q_ld, const float *kv, int64_t kv_ld)
{
    const xattn_decoder_config *c = &s->m->cfg;
    memset(at, 0, sizeof *at);
    xa_attn_heads(at, s->B, c->heads, n, J, c->head_dim, c->head_dim, q, q_ld, kv, kv_ld,
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
        attn_common(sa, s, n, s->pos + n, s->Q, 3 * h, s->Q + h, 3 * h);
    } else {
        attn_common(sa, s, n, s->pos + n, s->Q, h, s->kv, 2 * h);
        sa->k_sb = sa->v_sb = s->max_len * 2 * h;
    }
    sa->causal = 1;
    sa->causal_offset = s->pos;
    sa->kkeep = s->keep;
    sa->kkeep_sb = s->max_len;
}

/* Cross-attention over the memory's k|v rows (B, M, 2h) (k and v set per layer). */
static void cross_setup(xa_attn *ca, const xattn_decoder_state *s, int64_t n)
{
    const int64_t h = s->m->cfg.hidden;
    attn_common(ca, s, n, s->M, s->Q, h, s->ckv, 2 * h);
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
        st = xa_op_linear(X, R, h, y->w[SQW], y->w[SQB], 3 * h, s->Q, 0);
    } else {
        float *kv = s->kv + l * B * ML * 2 * h;
        sa->k = kv;
        sa->v = kv + h;
        st = xa_op_linear(X, R, h, y->w[SQW], y->w[SQB], h, s->Q, 0);
        /* k|v rows of positions pos .. pos+n-1 straight into the cache */
        const int one = B == 1 || n == ML;
        for (int64_t b = 0; b < (one ? 1 : B) && !st; b++)
            st = xa_op_linear(X + b * n * h, one ? R : n, h, y->w[SKW], y->w[SKB], 2 * h,
                              kv + (b * ML + s->pos) * 2 * h, 0);
    }
    if (!st) st = xa_op_attention(sa);
    if (!st) st = xa_op_linear(s->A, R, h, y->w[SOW], y->w[SOB], h, X, 1);
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
    float *ckv = s->full ? s->ckv : s->ckv + l * s->B * s->M * 2 * h;
    xattn_status st = s->full ? memory_kv(s, y, s->memory, ckv) : XATTN_OK;
    ca->k = ckv;
    ca->v = ckv + h;
    if (!st) st = xa_op_linear(X, R, h, y->w[CQW], y->w[CQB], h, s->Q, 0);
    if (!st) st = xa_op_attention(ca);
    if (!st) st = xa_op_linear(s->A, R, h, y->w[COW], y->w[COB], h, X, 1);
    if (!st) st = xa_op_layernorm(X, R, h, y->w[CLW], y->w[CLB], eps, X);
    if (!st) st = xa_op_linear(X, R, h, y->w[IW], y->w[IB], ff, s->F, 0);
    if (!st) st = xa_op_gelu(s->F, R * ff, 0);
    if (!st) st = xa_op_linear(s->F, R, ff, y->w[OW], y->w[OB], h, X, 1);
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
    const int64_t tot = state_sizes(&m->cfg, in->B, in->T, in->T, in->M, 1, n);
    if (tot < 0)
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes B=%lld, T=%lld, M=%lld overflow", fn,
                        (long long)in->B, (long long)in->T, (long long)in->M);
    xa_ws *w = xa_ws_get((size_t)tot * sizeof(float));
    if (!w) return XATTN_ERR_NOMEM;
    xattn_decoder_state s;
    memset(&s, 0, sizeof s);
    s.m = m;
    s.B = in->B;
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
    if (in->B <= 0 || in->T <= 0 || in->M <= 0)
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

static xattn_status forward_named(const xa_mod *core, const xa_run *r)
{
    const xattn_decoder *m = (const xattn_decoder *)core;
    xattn_decoder_inputs in;
    memset(&in, 0, sizeof in);
    in.B = xa_run_sym(r, "B");
    in.T = xa_run_sym(r, "T");
    in.x = r->in[IN_X];
    in.attention_mask = r->in[IN_AM];
    in.memory_mask = r->in[IN_MM];
    float *built = NULL;
    xattn_status st = XATTN_OK;
    if (r->in[IN_MEM]) {
        in.M = xa_run_sym(r, "M");
        in.memory = r->in[IN_MEM];
    } else { /* the memory from the projector */
        const int64_t Nv = r->in[IN_VIDEO] ? xa_run_sym(r, "Nv") : 0;
        const int64_t Na = r->in[IN_AUDIO] ? xa_run_sym(r, "Na") : 0;
        in.M = Nv + Na;
        if (!((double)in.B * (double)in.M * (double)m->cfg.memory_dim < 0x1p50))
            return xa_error(XATTN_ERR_NOMEM, "xattn_decoder_project: sizes overflow");
        if (!(built = xa_alloc((size_t)(in.B * in.M * m->cfg.memory_dim) * sizeof(float))))
            return xa_error(XATTN_ERR_NOMEM, "xattn_decoder_project: out of memory");
        st = project(m, in.B, r->in[IN_VIDEO], xa_run_sym(r, "Fv"), Nv, r->in[IN_AUDIO],
                     xa_run_sym(r, "Fa"), Na, built);
        in.memory = built;
    }
    const int incremental = r->in[IN_INC] && *(const uint8_t *)r->in[IN_INC];
    if (!st)
        st = incremental ? forward_incremental(m, &in, r->out[0]) : forward_core(m, &in, r->out[0]);
    xa_free(built);
    return st;
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
