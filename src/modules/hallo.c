/*
 * HALLO region-masked hierarchical audio-visual cross-attention.
 *
 * The audio path of AudioTemporalBasicTransformerBlock (fudan-generative-vision/hallo,
 * hallo/models/attention.py; transcribed as HalloAudioPath(dim, heads, dim_head, cross_dim) in
 * tests/reference/gen_hallo.py): three diffusers Attentions over the audio tokens, each output
 * multiplied by its soft region mask (full/pose, face, lip) at the block's latent resolution,
 * passed through a 1x1 "zero" convolution (a per-token linear map with bias; HALLO
 * zero-initialises it), and added to the residual with the motion scales; then the GEGLU
 * feed-forward with norm3.
 *
 * The masks come from xattn_resize_masks (src/kernels/op_hallo.c).
 *
 * Backward (xattn_module_grad): from the gradients of out and regions to every parameter and
 * every float input: hidden_states, encoder_hidden_states, motion_scale, masks or region_masks
 * (through the mask pyramid's adjoint).
 */
#include "core/registry.h"
#include "io/io_internal.h"
#include "kernels/op_hallo.h"
#include "kernels/ops.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *FN_LOAD = "xattn_hallo_load";
static const char *FN_FWD = "xattn_hallo_forward";

/* AudioTemporalBasicTransformerBlock(dim, num_attention_heads, attention_head_dim,
 * cross_attention_dim, attention_bias=False, ...), its attentions diffusers Attention(query_dim,
 * cross_attention_dim, heads=8, dim_head=64, bias) and its FeedForward(dim, inner_dim=None,
 * mult=4, activation_fn="geglu"). */
enum { F_DIM, F_HEADS, F_DIM_HEAD, F_CROSS, F_BIAS, F_FF, F_INNER, F_LATENT, F_N };
static const xa_field fields[F_N] = {
    {"dim", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED, 0, 1, 1e15, NULL, NULL,
     "channels of the latent tokens"},
    {"heads", XA_T_INT, XA_F_TRACELESS, 8, 1, 1e15, NULL, NULL,
     "heads of each attention (diffusers Attention's default)"},
    {"dim_head", XA_T_INT, XA_F_OPTIONAL | XA_F_NOMETA, 0, 1, 1e15, NULL, NULL,
     "width of a head (None: inner / heads from the shapes, else diffusers' 64)"},
    {"cross_attention_dim", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED, 0, 1, 1e15, NULL, NULL,
     "channels of the audio tokens"},
    {"attention_bias", XA_T_BOOL, XA_F_PRESENCE, 0, 0, 1, NULL, NULL,
     "the attentions' to_q, to_k, to_v have biases"},
    {"ff_inner_dim", XA_T_INT, XA_F_SHAPE | XA_F_OPTIONAL, 0, 1, 1e15, NULL, NULL,
     "the feed-forward's inner width (None: 4 * dim)"},
    {"inner", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED | XA_F_DERIVED, 0, 1, 1e15, NULL, NULL,
     "heads * dim_head (rows of to_q.weight)"},
    /* not the block's: the grid of its latent tokens, which HALLO's mask pyramid resizes the
     * full-resolution masks to (parsed by build: two integers) */
    {"latent_hw", XA_T_INT, XA_F_OPTIONAL | XA_F_NOMETA, 0, 1, 1e15, NULL, NULL,
     "the latent grid \"H,W\" (H*W tokens) that region_masks are resized to (None: a square)"},
};

#define PART "; part of HALLO's AudioTemporalBasicTransformerBlock (audio path)"
#define ZERO(n, w)                                                                                 \
    {"zero_conv_" n ".weight",                                                                     \
     "dim,dim,1,1",                                                                                \
     NULL,                                                                                         \
     0,                                                                                            \
     XA_INIT_ZEROS,                                                                                \
     NULL,                                                                                         \
     "the " w " region's 1x1 zero convolution" PART},                                              \
    {                                                                                              \
        "zero_conv_" n ".bias", "dim", NULL, 0, XA_INIT_ZEROS, NULL,                               \
            "the " w " region's zero convolution bias" PART                                        \
    }
/* The 1x1 convolutions, first in the block's state_dict (HALLO zero_module()s them). */
static const xa_pspec zero_table[6] = {ZERO("full", "full/pose"), ZERO("face", "face"),
                                       ZERO("lip", "lip")};

#define ATT "HALLO's region attention (diffusers Attention): "
enum { A_QW, A_QB, A_KW, A_KB, A_VW, A_VB, A_OW, A_OB, A_N };
/* One region's attention, under attn2_0., attn2_1., attn2_2. */
static const xa_pspec attn_table[A_N] = {
    {"to_q.weight", "inner,dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL, ATT "the query projection"},
    {"to_q.bias", "inner", "attention_bias", 0, XA_INIT_BIAS, "dim", ATT "the query bias"},
    {"to_k.weight", "inner,cross_attention_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     ATT "the key projection"},
    {"to_k.bias", "inner", "attention_bias", 0, XA_INIT_BIAS, "cross_attention_dim",
     ATT "the key bias"},
    {"to_v.weight", "inner,cross_attention_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     ATT "the value projection"},
    {"to_v.bias", "inner", "attention_bias", 0, XA_INIT_BIAS, "cross_attention_dim",
     ATT "the value bias"},
    {"to_out.0.weight", "dim,inner", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     ATT "the output projection"},
    {"to_out.0.bias", "dim", NULL, 0, XA_INIT_BIAS, "inner", ATT "the output bias"},
};
static const char *const REGION[3] = {"attn2_0.", "attn2_1.", "attn2_2."};

enum { T_N2W, T_N2B, T_F0W, T_F0B, T_F2W, T_F2B, T_N3W, T_N3B, T_N };
/* norm2, the feed-forward (GEGLU proj, then the output Linear) and norm3. */
static const xa_pspec tail_table[T_N] = {
    {"norm2.weight", "dim", NULL, 0, XA_INIT_ONES, NULL, "the attentions' LayerNorm weight" PART},
    {"norm2.bias", "dim", NULL, 0, XA_INIT_ZEROS, NULL, "the attentions' LayerNorm bias" PART},
    {"ff.net.0.proj.weight", "2*ff_inner_dim,dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     "the feed-forward's GEGLU projection" PART},
    {"ff.net.0.proj.bias", "2*ff_inner_dim", NULL, 0, XA_INIT_BIAS, "dim",
     "the feed-forward's GEGLU bias" PART},
    {"ff.net.2.weight", "dim,ff_inner_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     "the feed-forward's output layer" PART},
    {"ff.net.2.bias", "dim", NULL, 0, XA_INIT_BIAS, "ff_inner_dim",
     "the feed-forward's output bias" PART},
    {"norm3.weight", "dim", NULL, 0, XA_INIT_ONES, NULL,
     "the feed-forward's LayerNorm weight" PART},
    {"norm3.bias", "dim", NULL, 0, XA_INIT_ZEROS, NULL, "the feed-forward's LayerNorm bias" PART},
};

struct xattn_hallo {
    xa_mod core;
    xattn_hallo_config cfg;
    int64_t latent_h, latent_w; /* option latent_hw; 0: a square grid */
    const float *zw[3], *zb[3]; /* (dim, dim) 1x1 convolutions, (dim)   */
    const float *a[3][A_N];     /* each region's attention (biases NULL when absent) */
    const float *t[T_N];
    xa_wt aw[3][A_N], tw[T_N]; /* the same as the op layer reads them (linear weights as kept) */
};

/* ---------------------------------------------------------------------------------------- */
/* Building                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* Fields told by the shapes (loading): every table bound, then what no tensor told refused. */
static xattn_status bind_all(xa_cfg *c, const xattn_safetensors *st, const char *prefix)
{
    xattn_status s;
    if ((s = xa_cfg_bind_shapes(c, tail_table, T_N, st, prefix, "")) ||
        (s = xa_cfg_bind_shapes(c, zero_table, 6, st, prefix, "")) ||
        (s = xa_cfg_bind_shapes(c, attn_table, A_N, st, prefix, REGION[0])) ||
        (s = xa_cfg_require_shapes(c, zero_table, 6, st, prefix, "")) ||
        (s = xa_cfg_require_shapes(c, attn_table, A_N, st, prefix, REGION[0])))
        return s;
    return xa_cfg_require_shapes(c, tail_table, T_N, st, prefix, "");
}

/* Tensors under attn2_k. that the table does not name belong to diffusers Attention features
 * this module does not compute (qk norms, added projections, ...): refused. */
static xattn_status refuse_extras(const xattn_safetensors *st, const char *prefix)
{
    char stem[320], shown[XA_IO_NAME_CAP];
    for (size_t i = 0; i < xattn_st_count(st); i++) {
        const char *name = xattn_st_name(st, i);
        for (int k = 0; k < 3 && name; k++) {
            const size_t sl = (size_t)snprintf(stem, sizeof stem, "%s%s", prefix, REGION[k]);
            if (strncmp(name, stem, sl)) continue;
            int known = 0;
            for (int p = 0; p < A_N; p++) known |= !strcmp(name + sl, attn_table[p].name);
            if (!known)
                return xa_error(XATTN_ERR_UNSUPPORTED,
                                "tensor '%s': a diffusers Attention with "
                                "more than to_q, to_k, to_v and to_out.0 is not supported",
                                xa_io_printable(name, shown, sizeof shown));
        }
    }
    return XATTN_OK;
}

/* dim_head and inner: from the shapes and heads (loading), or heads * dim_head (creating). */
static xattn_status head_sizes(xa_cfg *c, const xattn_safetensors *st, const char *prefix)
{
    const int64_t H = xa_cfg_int(c, "heads"), inner = xa_cfg_int(c, "inner");
    char pp[XA_IO_NAME_CAP];
    xa_io_printable(prefix, pp, sizeof pp);
    if (!st) {
        if (c->from[F_DIM_HEAD] == XA_FROM_UNSET)
            xa_cfg_set(c, F_DIM_HEAD, 64, XA_FROM_DEFAULT, "default");
        int64_t n;
        if (xa_mul_ok(H, xa_cfg_int(c, "dim_head"), &n) || n > ((int64_t)1 << 40))
            return xa_error(XATTN_ERR_ARG, "%s: heads * dim_head is too large", FN_LOAD);
        xa_cfg_set(c, F_INNER, (double)n, XA_FROM_DERIVED, "heads * dim_head");
        if (c->from[F_FF] == XA_FROM_UNSET)
            xa_cfg_set(c, F_FF, 4.0 * xa_cfg_get(c, "dim"), XA_FROM_DEFAULT, "default (4 * dim)");
        return XATTN_OK;
    }
    if (inner % H)
        return xa_error(XATTN_ERR_SHAPE,
                        "inner dim %lld (rows of %sattn2_0.to_q.weight) is not "
                        "divisible by heads %lld",
                        (long long)inner, pp, (long long)H);
    if (c->from[F_DIM_HEAD] == XA_FROM_UNSET)
        xa_cfg_set(c, F_DIM_HEAD, (double)(inner / H), XA_FROM_DERIVED, "inner / heads");
    else if (xa_cfg_int(c, "dim_head") != inner / H)
        return xa_error(XATTN_ERR_SHAPE,
                        "option dim_head = %lld disagrees with the %s (inner = "
                        "%lld for %lld heads)",
                        (long long)xa_cfg_int(c, "dim_head"), c->how[F_INNER], (long long)inner,
                        (long long)H);
    return XATTN_OK;
}

/* Takes the option latent_hw ("H,W") out of opts (into m) and copies the others into rest. */
static xattn_status take_latent(xattn_hallo *m, const xa_kv *opts, size_t n_opts, xa_kv *rest,
                                size_t *n_rest)
{
    const char *name = fields[F_LATENT].name, *given = NULL;
    *n_rest = 0;
    for (size_t k = 0; k < n_opts; k++) {
        if (!opts[k].key || strcmp(opts[k].key, name)) {
            rest[(*n_rest)++] = opts[k];
            continue;
        }
        if (given) return xa_error(XATTN_ERR_ARG, "%s: option '%s' given twice", FN_LOAD, name);
        given = opts[k].value ? opts[k].value : "";
        char hs[32], shown[64];
        const size_t l = strcspn(given, ",");
        int64_t h = 0, w = 0;
        snprintf(hs, sizeof hs, "%.*s", (int)(l < sizeof hs ? l : 0), given);
        if (l >= sizeof hs || given[l] != ',' || !xa_parse_int(hs, &h) ||
            !xa_parse_int(given + l + 1, &w) || h < 1 || w < 1 || h > (1 << 30) || w > (1 << 30))
            return xa_error(XATTN_ERR_ARG,
                            "%s: option '%s' is \"%s\", not two positive integers "
                            "H,W (the latent grid)",
                            FN_LOAD, name, xa_io_printable(given, shown, sizeof shown));
        m->latent_h = h;
        m->latent_w = w;
    }
    return XATTN_OK;
}

static xattn_status build(xa_mod *core, const xattn_safetensors *st, const char *prefix,
                          const xa_kv *opts, size_t n_opts)
{
    xattn_hallo *hm = (xattn_hallo *)core;
    xa_mod *m = core;
    xa_cfg *c = &m->cfg;
    xattn_status s;
    xa_kv *rest = calloc(n_opts + 1, sizeof *rest);
    size_t n_rest = 0;
    if (!rest) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN_LOAD);
    s = take_latent(hm, opts, n_opts, rest, &n_rest);
    if (!s && st && !(s = refuse_extras(st, prefix))) s = bind_all(c, st, prefix);
    if (!s) s = xa_cfg_resolve(c, rest, n_rest, st, FN_LOAD);
    free(rest);
    if (!s && hm->latent_h)
        xa_cfg_set(c, F_LATENT, (double)hm->latent_h, XA_FROM_OPTION, "%lld,%lld: option",
                   (long long)hm->latent_h, (long long)hm->latent_w);
    if (s || (s = head_sizes(c, st, prefix)) ||
        (s = xa_params_add_table(&m->params, zero_table, 6, c, "", NULL)))
        return s;
    for (int k = 0; k < 3; k++)
        if ((s = xa_params_add_table(&m->params, attn_table, A_N, c, REGION[k], NULL))) return s;
    return xa_params_add_table(&m->params, tail_table, T_N, c, "", NULL);
}

static xattn_status bind(xa_mod *core)
{
    xattn_hallo *m = (xattn_hallo *)core;
    const xa_params *ps = &core->params;
    for (int k = 0; k < 3; k++) {
        m->zw[k] = xa_param_data(ps, 2 * k);
        m->zb[k] = xa_param_data(ps, 2 * k + 1);
        for (int p = 0; p < A_N; p++) {
            m->a[k][p] = xa_param_data(ps, 6 + k * A_N + p);
            m->aw[k][p] = xa_param_w(ps, 6 + k * A_N + p);
        }
    }
    for (int p = 0; p < T_N; p++) {
        m->t[p] = xa_param_data(ps, 6 + 3 * A_N + p);
        m->tw[p] = xa_param_w(ps, 6 + 3 * A_N + p);
    }
    const xa_cfg *c = &core->cfg;
    m->cfg.dim = xa_cfg_int(c, "dim");
    m->cfg.audio_dim = xa_cfg_int(c, "cross_attention_dim");
    m->cfg.heads = xa_cfg_int(c, "heads");
    m->cfg.head_dim = xa_cfg_int(c, "dim_head");
    m->cfg.inner_dim = xa_cfg_int(c, "inner");
    m->cfg.ff_inner = xa_cfg_int(c, "ff_inner_dim");
    return XATTN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Registry entry and the typed API                                                         */
/* ---------------------------------------------------------------------------------------- */

static const xa_io inputs[] = {
    {"hidden_states", "B,N,dim", 0, "latent tokens (B, h*w, dim), row-major over the latent"},
    {"encoder_hidden_states", "B,T,cross_attention_dim", 0, "audio tokens"},
    {"masks", "B/1,3,N", XA_IO_OPT,
     "the full/pose, face and lip masks (the reference's full_mask, face_mask, lip_mask) at the "
     "latent's resolution: soft weights multiplying each region's attention output per token"},
    {"motion_scale", "3", XA_IO_OPT, "weights of the three regions (default 1, 1, 1)"},
    {"region_masks", "B/1,3,Hm,Wm|3,Hm,Wm", XA_IO_OPT,
     "the full/pose, face and lip masks at any resolution (e.g. the image's) in place of masks: "
     "resized to the latent grid (option latent_hw, else a square) as HALLO's mask pyramid does "
     "(torch interpolate, bilinear, antialias=True, align_corners=False), flattened row-major"},
};
enum { IN_X, IN_AUDIO, IN_MASKS, IN_SCALE, IN_REGION, IN_N };
static const xa_io outputs[] = {
    {"out", "B,N,dim", 0, "the block's output (the audio path)"},
    {"regions", "3,B,N,dim", XA_IO_OPT, "each region's zero-convolution output, unscaled"},
};

static xattn_status check_named(const xa_mod *core, const xa_run *r);
static xattn_status forward_named(const xa_mod *core, const xa_run *r);
static xattn_status backward_named(const xa_mod *core, const xa_run *r, xa_grad *g);

const xa_kind xa_kind_hallo_audio = {
    .name = "hallo-audio",
    .reference = "HALLO AudioTemporalBasicTransformerBlock, audio path (hallo/models/attention.py)",
    .summary = "three region-masked audio cross-attentions with zero convolutions, then a GEGLU "
               "feed-forward",
    .fields = fields,
    .n_fields = F_N,
    .inputs = inputs,
    .n_in = IN_N,
    .outputs = outputs,
    .n_out = 2,
    .anchor = "zero_conv_full.weight",
    .size = sizeof(xattn_hallo),
    .build = build,
    .bind = bind,
    .check = check_named,
    .forward = forward_named,
    .backward = backward_named,
    .one_of = "masks|region_masks", /* at the latent's size, or any (resized by the kind) */
    .state_dict = "zero_conv_{full,face,lip}.{weight (dim, dim, 1, 1), bias}, attn2_{0,1,2}."
                  "{to_q,to_k,to_v}.{weight,[bias]}, attn2_{0,1,2}.to_out.0.{weight,bias}, "
                  "norm2.*, ff.net.0.proj.*, ff.net.2.*, norm3.* (diffusers Attention and "
                  "FeedForward, GEGLU)",
};

xattn_status xattn_hallo_load(const xattn_safetensors *st, const char *prefix,
                              const xattn_hallo_opts *opts, xattn_hallo **out)
{
    XA_LOAD_ARGS(st, out, FN_LOAD);
    xa_kvbuf b;
    memset(&b, 0, sizeof b);
    if (opts) xa_kv_int(&b, "heads", opts->heads);
    xa_mod *m;
    xattn_status s = xa_mod_open(&xa_kind_hallo_audio, st, prefix, b.kv, b.n, &m);
    *out = s ? NULL : (xattn_hallo *)m;
    return s;
}

void xattn_hallo_free(xattn_hallo *m) { xa_mod_free(m ? &m->core : NULL); }

void xattn_hallo_get_config(const xattn_hallo *m, xattn_hallo_config *cfg)
{
    xa_copy_config(m ? &m->cfg : NULL, cfg, sizeof *cfg);
}

/* ---------------------------------------------------------------------------------------- */
/* Forward                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* What the backward keeps of a forward: each region's attention output and log-sum-exp, and the
 * stream after the regions (the feed-forward's input). */
typedef struct hl_keep {
    float *o[3], *lse[3]; /* (M, inner), (B, H, N) */
    float *h1;            /* (M, C)                */
} hl_keep;

typedef struct hl_work {
    int64_t B, N, T, M, MC;
    float *nrm, *q, *k, *v, *o, *att; /* (M, C), (M, inner), (B*T, inner) x2, (M, inner), (M, C) */
    float *proj, *g;                  /* (M, 2F), (M, F)                                        */
    const hl_keep *keep; /* NULL, or where the forward leaves what the backward needs */
} hl_work;

static xattn_status check_args(const xattn_hallo *m, const xattn_hallo_inputs *in,
                               const xattn_hallo_outputs *out)
{
    if (!m) return xa_error(XATTN_ERR_ARG, "%s: module is NULL", FN_FWD);
    if (!in) return xa_error(XATTN_ERR_ARG, "%s: inputs is NULL", FN_FWD);
    if (!out || !out->out) return xa_error(XATTN_ERR_ARG, "%s: out is NULL", FN_FWD);
    if (!in->x || !in->audio || !in->masks)
        return xa_error(XATTN_ERR_ARG, "%s: x, audio and masks are required", FN_FWD);
    if (in->B <= 0 || in->N <= 0 || in->T <= 0)
        return xa_error(XATTN_ERR_SHAPE, "%s: B=%lld, N=%lld, T=%lld must be positive", FN_FWD,
                        (long long)in->B, (long long)in->N, (long long)in->T);
    if (in->mask_batch != 1 && in->mask_batch != in->B)
        return xa_error(XATTN_ERR_SHAPE, "%s: masks have batch %lld; expected 1 or %lld", FN_FWD,
                        (long long)in->mask_batch, (long long)in->B);
    if (out->out == in->x) return xa_error(XATTN_ERR_ARG, "%s: out may not alias x", FN_FWD);
    return XATTN_OK;
}

/* Scratch of the forward from the context's workspace. */
static xattn_status take_scratch(const xattn_hallo *m, const xattn_hallo_inputs *in, hl_work *w,
                                 xa_ws **ws)
{
    const int64_t C = m->cfg.dim, F = m->cfg.ff_inner, inner = m->cfg.inner_dim;
    w->B = in->B;
    w->N = in->N;
    w->T = in->T;
    w->keep = NULL;
    int64_t BT, n[8];
    if (xa_mul_ok(in->B, in->N, &w->M) || xa_mul_ok(w->M, C, &w->MC) ||
        xa_mul_ok(in->B, in->T, &BT) || xa_mul_ok(w->M, inner, &n[1]) ||
        xa_mul_ok(BT, inner, &n[2]) || xa_mul_ok(w->M, 2 * F, &n[6]) ||
        xa_mul_ok(BT, m->cfg.audio_dim, &n[0]))
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow (B=%lld, N=%lld)", FN_FWD,
                        (long long)in->B, (long long)in->N);
    n[0] = w->MC;
    n[3] = n[2];
    n[4] = n[1];
    n[5] = w->MC;
    n[7] = n[6] / 2;
    double tot = 0;
    for (int i = 0; i < 8; i++) tot += (double)((n[i] + 15) & ~(int64_t)15);
    if (tot * 4.0 > (double)(SIZE_MAX / 2) || tot > 9e15)
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow (B=%lld, N=%lld)", FN_FWD,
                        (long long)in->B, (long long)in->N);
    if (!(*ws = xa_ws_get((size_t)tot * sizeof(float)))) return XATTN_ERR_NOMEM;
    float *p = xa_ws_data(*ws),
          **dst[8] = {&w->nrm, &w->q, &w->k, &w->v, &w->o, &w->att, &w->proj, &w->g};
    for (int i = 0; i < 8; i++) {
        *dst[i] = p;
        p += (n[i] + 15) & ~(int64_t)15;
    }
    return XATTN_OK;
}

/* Region k's query (from nrm), key and value (from the audio) into w->q, w->k, w->v; the fused
 * attention over them, writing o (M, inner), set up in p. */
static xattn_status region_qkv(const xattn_hallo *m, int k, const float *audio, float *o,
                               hl_work *w, xa_attn *p)
{
    const int64_t C = m->cfg.dim, inner = m->cfg.inner_dim, Ca = m->cfg.audio_dim;
    const int64_t H = m->cfg.heads, dh = m->cfg.head_dim, BT = w->B * w->T;
    const float *const *a = m->a[k];
    memset(p, 0, sizeof *p);
    p->scale = xa_head_scale(dh);
    p->fill = XATTN_FILL_NEG_INF;
    p->fn = FN_FWD;
    xa_attn_heads(p, w->B, H, w->N, w->T, dh, dh, w->q, inner, w->k, inner, w->v, inner, o, inner);
    xattn_status s;
    const xa_wt *aw = m->aw[k];
    if ((s = xa_op_linear_w(w->nrm, w->M, C, aw[A_QW], a[A_QB], inner, w->q, 0)) ||
        (s = xa_op_linear_w(audio, BT, Ca, aw[A_KW], a[A_KB], inner, w->k, 0)))
        return s;
    return xa_op_linear_w(audio, BT, Ca, aw[A_VW], a[A_VB], inner, w->v, 0);
}

/* Region k: out += ms * zero_conv_k(attn2_k(nrm, audio) * M_k); regions[k] unscaled if asked
 * (the attention's output and log-sum-exp into w->keep when set). */
static xattn_status region(const xattn_hallo *m, int k, const xattn_hallo_inputs *in,
                           const xattn_hallo_outputs *out, float ms, hl_work *w)
{
    const int64_t C = m->cfg.dim, inner = m->cfg.inner_dim, B = w->B, N = w->N;
    const float *const *a = m->a[k];
    float *o = w->keep ? w->keep->o[k] : w->o;
    xa_attn p;
    xattn_status s = region_qkv(m, k, in->audio, o, w, &p);
    p.lse = w->keep ? w->keep->lse[k] : NULL;
    if (s || (s = xa_op_attention(&p)) ||
        (s = xa_op_linear_w(o, w->M, inner, m->aw[k][A_OW], a[A_OB], C, w->att, 0)))
        return s;
    const float *mk = in->masks + (int64_t)k * N;
    const int64_t msb = in->mask_batch == 1 ? 0 : 3 * N;
    if (out->regions) {
        float *rk = out->regions + (int64_t)k * w->MC;
        xa_op_mask_rows(w->att, B, N, C, mk, msb, 1.0f);
        s = xa_op_linear(w->att, w->M, C, m->zw[k], m->zb[k], C, rk, 0);
        if (!s && ms != 0.0f) xa_op_axpy(ms, rk, out->out, w->MC);
        return s;
    }
    xa_op_mask_rows(w->att, B, N, C, mk, msb, ms);
    if ((s = xa_op_linear(w->att, w->M, C, m->zw[k], NULL, C, out->out, 1))) return s;
    xa_op_add_rows(out->out, w->M, C, m->zb[k], ms);
    return XATTN_OK;
}

/* The feed-forward's internals from the stream h (M, C): nrm = norm3(h), proj = nrm W0^T + b0,
 * g = geglu(proj). */
static xattn_status ff_internals(const xattn_hallo *m, const float *h, hl_work *w)
{
    const int64_t C = m->cfg.dim, F = m->cfg.ff_inner;
    xattn_status s = xa_op_layernorm(h, w->M, C, m->t[T_N3W], m->t[T_N3B], 1e-5f, w->nrm);
    if (!s) s = xa_op_linear_w(w->nrm, w->M, C, m->tw[T_F0W], m->t[T_F0B], 2 * F, w->proj, 0);
    if (!s) xa_op_geglu(w->proj, w->M, F, w->g);
    return s;
}

/* The forward; with keep, every region runs (the backward needs each one's attention, even at
 * motion scale 0) and leaves what the backward needs there. */
static xattn_status run(const xattn_hallo *m, const xattn_hallo_inputs *in,
                        const xattn_hallo_outputs *out, const hl_keep *keep)
{
    xattn_status s = check_args(m, in, out);
    hl_work w;
    xa_ws *ws = NULL;
    if (!s) s = take_scratch(m, in, &w, &ws);
    if (s) return s;
    w.keep = keep;
    const int64_t C = m->cfg.dim, F = m->cfg.ff_inner;
    const float one3[3] = {1.0f, 1.0f, 1.0f};
    const float *ms = in->motion_scale ? in->motion_scale : one3;
    s = xa_op_layernorm(in->x, w.M, C, m->t[T_N2W], m->t[T_N2B], 1e-5f, w.nrm);
    if (!s) memcpy(out->out, in->x, (size_t)w.MC * sizeof(float));
    for (int k = 0; k < 3 && !s; k++)
        if (ms[k] != 0.0f || out->regions || keep) s = region(m, k, in, out, ms[k], &w);
    if (!s && keep) memcpy(keep->h1, out->out, (size_t)w.MC * sizeof(float));
    /* feed-forward: out += (a * gelu(g)) W2^T + b2, [a | g] = norm3(out) W0^T + b0 */
    if (!s) s = ff_internals(m, out->out, &w);
    if (!s) s = xa_op_linear_w(w.g, w.M, F, m->tw[T_F2W], m->t[T_F2B], C, out->out, 1);
    xa_ws_put(ws);
    return s;
}

xattn_status xattn_hallo_forward(xattn_ctx *ctx, const xattn_hallo *m, const xattn_hallo_inputs *in,
                                 const xattn_hallo_outputs *out)
{
    const xattn_ctx *prev = xa_ctx_enter(ctx);
    xattn_status s = run(m, in, out, NULL);
    xa_ctx_leave(prev);
    if (!s) xa_clear_error();
    return s;
}

/* The latent grid (h, w) of N tokens: option latent_hw, else a square. */
static xattn_status latent_grid(const xattn_hallo *m, int64_t N, int64_t *h, int64_t *w)
{
    *h = m->latent_h;
    *w = m->latent_w;
    if (*h) {
        if (*h * *w == N) return XATTN_OK;
        return xa_error(XATTN_ERR_SHAPE,
                        "input 'hidden_states' has %lld tokens but option "
                        "'latent_hw' = %lld,%lld gives %lld",
                        (long long)N, (long long)*h, (long long)*w, (long long)(*h * *w));
    }
    int64_t s = 1;
    while ((s + 1) * (s + 1) <= N) s++;
    if (s * s != N)
        return xa_error(XATTN_ERR_SHAPE,
                        "input 'hidden_states' has %lld tokens, not a square "
                        "grid: give the latent grid with option 'latent_hw' (H,W)",
                        (long long)N);
    *h = *w = s;
    return XATTN_OK;
}

/* The latent grid suits the tokens (when region_masks are to be resized to it or it is given). */
static xattn_status check_named(const xa_mod *core, const xa_run *r)
{
    const xattn_hallo *m = (const xattn_hallo *)core;
    int64_t h, w;
    if (!r->in[IN_REGION] && !m->latent_h) return XATTN_OK;
    return latent_grid(m, xa_run_sym(r, "N"), &h, &w);
}

/* The typed inputs of a named run; region_masks resized to the latent grid (HALLO's mask pyramid)
 * into nm->resized, which the caller frees. */
typedef struct hl_named {
    xattn_hallo_inputs in;
    float *resized; /* (Bm, 3, h*w), or NULL when masks are given at the latent's size */
    int64_t h, w;   /* the latent grid (region_masks)                                  */
} hl_named;

static xattn_status named_inputs(const xattn_hallo *m, const xa_run *r, hl_named *nm)
{
    memset(nm, 0, sizeof *nm);
    xattn_hallo_inputs *in = &nm->in;
    in->B = xa_run_sym(r, "B");
    in->N = xa_run_sym(r, "N");
    in->T = xa_run_sym(r, "T");
    in->x = r->in[IN_X];
    in->audio = r->in[IN_AUDIO];
    in->masks = r->in[IN_MASKS];
    in->mask_batch = r->in_shape[IN_MASKS][0];
    in->motion_scale = r->in[IN_SCALE];
    if (!r->in[IN_REGION]) return XATTN_OK;
    const int nd = r->in_ndim[IN_REGION];
    const int64_t *sh = r->in_shape[IN_REGION], Bm = nd == 4 ? sh[0] : 1;
    int64_t n;
    xattn_status s = latent_grid(m, in->N, &nm->h, &nm->w);
    if (!s && xa_mul_ok(Bm * 3, in->N, &n))
        s = xa_error(XATTN_ERR_NOMEM, "%s: region masks of %lld tokens overflow", FN_FWD,
                     (long long)in->N);
    if (!s && !(nm->resized = xa_alloc((size_t)n * sizeof(float))))
        s = xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN_FWD);
    if (!s)
        s = xattn_resize_masks(r->in[IN_REGION], Bm * 3, sh[nd - 2], sh[nd - 1], nm->h, nm->w,
                               nm->resized);
    in->masks = nm->resized;
    in->mask_batch = Bm;
    return s;
}

/* Runs on the context the registry made current. */
static xattn_status forward_named(const xa_mod *core, const xa_run *r)
{
    const xattn_hallo *m = (const xattn_hallo *)core;
    xattn_hallo_outputs out = {.out = r->out[0], .regions = r->out[1]};
    hl_named nm;
    xattn_status s = named_inputs(m, r, &nm);
    if (!s) s = run(m, &nm.in, &out, NULL);
    xa_free(nm.resized);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Backward                                                                                 */
/* ---------------------------------------------------------------------------------------- */
/*
 * The forward runs once, keeping each region's attention output and log-sum-exp and the stream
 * h after the regions ((3 (inner + heads) + dim) floats per token); going backward, the
 * feed-forward's internals are recomputed from h, each region's projections (q from norm2(x),
 * k and v from the audio), its output projection and masked product from the kept attention
 * output, and the gradient taken op by op: the feed-forward and norm3, each region's zero
 * convolution, mask (the masks' gradient is the channel sum of the masked product's gradient
 * times the unmasked attention output), output projection, fused attention and input
 * projections, then norm2. The motion scales get the dot product of the stream's gradient with
 * each region's output; region_masks the mask pyramid's adjoint (the transposed resampling).
 */

typedef struct hl_bwd {
    hl_work w; /* the forward's buffers, refilled: nrm, q, k, v, att; o holds d(attention) */
    hl_keep keep;
    float *dh1, *dn2, *mk, *dm, *dz; /* (M, C) each                                        */
    float *dp, *dg, *dq, *dk, *dv;   /* (M, 2F), (M, F), (M, inner), (B*T, inner) x2       */
    float *dmask;                    /* (Bm, 3, N): the resized masks' gradient, or NULL   */
    float dms[3];
    const xa_grad *g;
    const float *ms;
} hl_bwd;

/* Parameter indices: the zero convolutions, region k's attention, the tail. */
static int pz(int k, int p) { return 2 * k + p; }
static int pa(int k, int p) { return 6 + k * A_N + p; }
static int pt(int p) { return 6 + 3 * A_N + p; }

/* The gradient of parameter i (NULL: not wanted, or the parameter is absent). */
static float *dpar(const xattn_hallo *m, const xa_grad *g, int i)
{
    return g->dparam && xa_param_data(&m->core.params, i) ? g->dparam[i] : NULL;
}

/* y = x W^T + b backward: dW, db overwritten; dx overwritten, or added to when acc. */
static xattn_status lin_bwd(const float *x, int64_t M, int64_t K, const float *W, int64_t N,
                            const float *dy, float *dx, int acc, float *dW, float *db)
{
    if (!acc || !dx) return xa_op_linear_backward(x, M, K, W, N, dy, dx, dW, db, 0);
    xattn_status s = xa_op_linear_backward(x, M, K, W, N, dy, NULL, dW, db, 0);
    return s ? s : xa_op_linear_backward(x, M, K, W, N, dy, dx, NULL, NULL, 1);
}

/* The LayerNorm whose weight is tail parameter pw (its bias pw + 1) over x (M, C) backward:
 * its weights' gradients overwritten, the input's added to dx. */
static xattn_status norm_bwd(const xattn_hallo *m, const hl_bwd *b, int pw, const float *x,
                             const float *dy, float *dx)
{
    const int64_t C = m->cfg.dim;
    float *dw = dpar(m, b->g, pt(pw)), *db = dpar(m, b->g, pt(pw + 1));
    if (dw) memset(dw, 0, sizeof(float) * (size_t)C);
    if (db) memset(db, 0, sizeof(float) * (size_t)C);
    return xa_op_layernorm_backward(x, b->w.M, C, m->t[pw], 1e-5f, dy, dx, dw, db, 1);
}

/* out = h + ff(norm3(h)): dh1 = the gradient of h, from out's (dY, NULL: zero). */
static xattn_status ff_backward(const xattn_hallo *m, hl_bwd *b, const float *dY)
{
    const int64_t C = m->cfg.dim, F = m->cfg.ff_inner, M = b->w.M;
    const xa_grad *g = b->g;
    hl_work *w = &b->w;
    if (dY)
        memcpy(b->dh1, dY, sizeof(float) * (size_t)w->MC);
    else
        memset(b->dh1, 0, sizeof(float) * (size_t)w->MC);
    xattn_status s = ff_internals(m, b->keep.h1, w);
    if (!s)
        s = lin_bwd(w->g, M, F, m->t[T_F2W], C, b->dh1, b->dg, 0, dpar(m, g, pt(T_F2W)),
                    dpar(m, g, pt(T_F2B)));
    if (s) return s;
    xa_op_geglu_backward(w->proj, M, F, b->dg, b->dp);
    if ((s = lin_bwd(w->nrm, M, C, m->t[T_F0W], 2 * F, b->dp, b->dz, 0, dpar(m, g, pt(T_F0W)),
                     dpar(m, g, pt(T_F0B)))))
        return s;
    return norm_bwd(m, b, T_N3W, b->keep.h1, b->dz, b->dh1);
}

/* The fused attention of region k backward: d(attention output) in w->o -> dq, dk, dv. */
static xattn_status attn_bwd(const xattn_hallo *m, int k, const xattn_hallo_inputs *in, hl_bwd *b)
{
    const int64_t inner = m->cfg.inner_dim, dh = m->cfg.head_dim, N = b->w.N, T = b->w.T;
    xa_attn p;
    xattn_status s = region_qkv(m, k, in->audio, b->keep.o[k], &b->w, &p);
    if (s) return s;
    xa_attn_grad ag;
    memset(&ag, 0, sizeof ag);
    ag.dout = b->w.o, ag.do_sb = N * inner, ag.do_sh = dh, ag.do_si = inner;
    ag.lse = b->keep.lse[k];
    ag.dq = b->dq, ag.dq_sb = N * inner, ag.dq_sh = dh, ag.dq_si = inner;
    ag.dk = b->dk, ag.dk_sb = T * inner, ag.dk_sh = dh, ag.dk_sj = inner;
    ag.dv = b->dv, ag.dv_sb = T * inner, ag.dv_sh = dh, ag.dv_sj = inner;
    return xa_op_attention_backward(&p, &ag);
}

/* Region k backward: from dh1 (and regions' gradient) to its parameters, dn2 and the audio's
 * gradient (both overwritten by region 0, added to by the others), the masks' and the motion
 * scale's. w->nrm holds norm2(x). */
static xattn_status region_backward(const xattn_hallo *m, int k, const xattn_hallo_inputs *in,
                                    hl_bwd *b)
{
    const int64_t C = m->cfg.dim, inner = m->cfg.inner_dim, Ca = m->cfg.audio_dim;
    const int64_t B = b->w.B, N = b->w.N, M = b->w.M, MC = b->w.MC, BT = B * b->w.T;
    const float *const *a = m->a[k], *o = b->keep.o[k];
    const xa_grad *g = b->g;
    hl_work *w = &b->w;
    /* the masked attention output mk = M_k * (o Wo^T + bo); att keeps it unmasked */
    xattn_status s = xa_op_linear(o, M, inner, a[A_OW], a[A_OB], C, w->att, 0);
    if (s) return s;
    const float *mask = in->masks + (int64_t)k * N;
    const int64_t msb = in->mask_batch == 1 ? 0 : 3 * N;
    memcpy(b->mk, w->att, sizeof(float) * (size_t)MC);
    xa_op_mask_rows(b->mk, B, N, C, mask, msb, 1.0f);
    /* the zero convolution's output z feeds out (times ms) and regions[k] */
    memset(b->dz, 0, sizeof(float) * (size_t)MC);
    xa_op_axpy(b->ms[k], b->dh1, b->dz, MC);
    if (g->dout[1]) xa_op_add(b->dz, g->dout[1] + k * MC, MC);
    if ((s = lin_bwd(b->mk, M, C, m->zw[k], C, b->dz, b->dm, 0, dpar(m, g, pz(k, 0)),
                     dpar(m, g, pz(k, 1)))))
        return s;
    if (g->din[IN_SCALE]) { /* d ms_k = <dh1, z> (z into dz, no longer needed) */
        if ((s = xa_op_linear(b->mk, M, C, m->zw[k], m->zb[k], C, b->dz, 0))) return s;
        b->dms[k] = (float)xa_op_dot(b->dz, b->dh1, MC);
    }
    float *dmask = b->dmask ? b->dmask : g->din[IN_MASKS];
    xa_op_mask_rows_backward(w->att, b->dm, B, N, C, mask, msb, 1.0f,
                             dmask ? dmask + (int64_t)k * N : NULL);
    if ((s = lin_bwd(o, M, inner, a[A_OW], C, b->dm, w->o, 0, dpar(m, g, pa(k, A_OW)),
                     dpar(m, g, pa(k, A_OB)))) ||
        (s = attn_bwd(m, k, in, b)) ||
        (s = lin_bwd(w->nrm, M, C, a[A_QW], inner, b->dq, b->dn2, k > 0, dpar(m, g, pa(k, A_QW)),
                     dpar(m, g, pa(k, A_QB)))) ||
        (s = lin_bwd(in->audio, BT, Ca, a[A_KW], inner, b->dk, g->din[IN_AUDIO], k > 0,
                     dpar(m, g, pa(k, A_KW)), dpar(m, g, pa(k, A_KB)))))
        return s;
    return lin_bwd(in->audio, BT, Ca, a[A_VW], inner, b->dv, g->din[IN_AUDIO], 1,
                   dpar(m, g, pa(k, A_VW)), dpar(m, g, pa(k, A_VB)));
}

/* The memory the backward keeps and its own scratch, in one block carved into b (NULL: too
 * large or out of memory, error set). */
static float *bwd_alloc(const xattn_hallo *m, const hl_named *nm, const xa_grad *g, hl_bwd *b)
{
    const xattn_hallo_inputs *in = &nm->in;
    const int64_t C = m->cfg.dim, F = m->cfg.ff_inner, inner = m->cfg.inner_dim;
    const double M = (double)in->B * (double)in->N, BT = (double)in->B * (double)in->T;
    const double nmask =
        nm->resized && g->din[IN_REGION] ? 3.0 * (double)in->mask_batch * in->N : 0.0;
    const double total = M * (6.0 * C + 4.0 * inner + 3.0 * m->cfg.heads + 3.0 * F) +
                         2.0 * BT * inner + nmask + 16.0 * 18;
    if (total * 4.0 > 1e12) {
        xa_error(XATTN_ERR_NOMEM, "%s: backward scratch too large", FN_FWD);
        return NULL;
    }
    float *mem = xa_alloc(sizeof(float) * (size_t)total);
    if (!mem) return NULL;
    const int64_t Mi = in->B * in->N, MC = Mi * C, BTi = in->B * in->T;
    float *q = mem;
#define CARVE(n) (q += ((n) + 15) / 16 * 16, q - ((n) + 15) / 16 * 16)
    for (int k = 0; k < 3; k++) {
        b->keep.o[k] = CARVE(Mi * inner);
        b->keep.lse[k] = CARVE(Mi * m->cfg.heads);
    }
    b->keep.h1 = CARVE(MC);
    b->dh1 = CARVE(MC), b->dn2 = CARVE(MC), b->mk = CARVE(MC), b->dm = CARVE(MC);
    b->dz = CARVE(MC), b->dp = CARVE(Mi * 2 * F), b->dg = CARVE(Mi * F);
    b->dq = CARVE(Mi * inner), b->dk = CARVE(BTi * inner), b->dv = CARVE(BTi * inner);
    b->dmask = nmask > 0 ? CARVE((int64_t)nmask) : NULL;
#undef CARVE
    return mem;
}

static xattn_status backward_named(const xa_mod *core, const xa_run *r, xa_grad *g)
{
    const xattn_hallo *m = (const xattn_hallo *)core;
    xattn_hallo_outputs out = {.out = r->out[0], .regions = r->out[1]};
    hl_named nm;
    hl_bwd b;
    memset(&b, 0, sizeof b);
    b.g = g;
    const float one3[3] = {1.0f, 1.0f, 1.0f};
    b.ms = r->in[IN_SCALE] ? r->in[IN_SCALE] : one3;
    float *mem = NULL;
    xa_ws *ws = NULL;
    xattn_status s = named_inputs(m, r, &nm);
    if (!s) s = check_args(m, &nm.in, &out);
    if (!s && !(mem = bwd_alloc(m, &nm, g, &b))) s = XATTN_ERR_NOMEM;
    if (!s) s = run(m, &nm.in, &out, &b.keep);
    if (!s) s = xa_grad_outputs(g, r);
    if (!s) s = take_scratch(m, &nm.in, &b.w, &ws);
    if (!s) s = ff_backward(m, &b, g->dout[0]);
    if (!s)
        s = xa_op_layernorm(nm.in.x, b.w.M, m->cfg.dim, m->t[T_N2W], m->t[T_N2B], 1e-5f, b.w.nrm);
    for (int k = 0; k < 3 && !s; k++) s = region_backward(m, k, &nm.in, &b);
    if (!s) s = norm_bwd(m, &b, T_N2W, nm.in.x, b.dn2, b.dh1);
    if (!s && g->din[IN_X]) memcpy(g->din[IN_X], b.dh1, sizeof(float) * (size_t)b.w.MC);
    if (!s && g->din[IN_SCALE]) memcpy(g->din[IN_SCALE], b.dms, sizeof b.dms);
    if (!s && b.dmask) {
        const int nd = r->in_ndim[IN_REGION];
        const int64_t *sh = r->in_shape[IN_REGION];
        s = xa_op_resize_masks_backward(b.dmask, nm.in.mask_batch * 3, sh[nd - 2], sh[nd - 1], nm.h,
                                        nm.w, g->din[IN_REGION]);
    }
    if (ws) xa_ws_put(ws);
    xa_free(mem);
    xa_free(nm.resized);
    return s;
}
