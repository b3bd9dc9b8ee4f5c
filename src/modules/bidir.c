/*
 * Bidirectional cross-attention (PyPI bidirectional-cross-attention 0.1.0, and 0.0.x): the
 * registry kinds "bidir" (BidirectionalCrossAttention) and "bidir-transformer"
 * (BidirectionalCrossAttentionTransformer).
 *
 *   BidirectionalCrossAttention          to_qk.weight (inner, dim), to_v.weight (inner, dim),
 *                                        context_to_qk.weight (inner, context_dim),
 *                                        context_to_v.weight (inner, context_dim),
 *                                        to_out.{weight (dim, inner), bias (dim)},
 *                                        context_to_out.{weight (context_dim, inner), bias},
 *                                        [norm.weight [norm.bias], context_norm.weight [...]],
 *                                        [talking_heads.weight, context_talking_heads.weight
 *                                         (heads, heads, 1, 1)]
 *   BidirectionalCrossAttentionTransformer
 *                                        layers.L.0.<the names above> (prenorm always),
 *                                        layers.L.1.{0.weight, 1.weight, 1.bias, 3.weight,
 *                                        3.bias} (FeedForward of x: RMSNorm, Linear, GELU,
 *                                        Linear), layers.L.2.* (of the context),
 *                                        [norm.weight (dim), context_norm.weight (context_dim)]
 *
 * Loading is the module core's: the fields below are the constructors' keyword arguments, the
 * tables their parameters. What the tables cannot say is settled by the build hooks: heads
 * (the talking-heads weight's size when there is one; else option, __metadata__, or the
 * package's 8, announced), dim_head = inner_dim / heads, the feed-forward factor (given, or the
 * shortest one that reproduces both widths int(dim * f), int(context_dim * f)), and the layer
 * count (indices 0..L-1, each layer complete).
 *
 * Prenorm: nn.RMSNorm(eps=None) (weight only; eps = FLT_EPSILON for fp32) in 0.1.0, nn.LayerNorm
 * (weight and bias, eps 1e-5) in 0.0.x. FeedForward: RMSNorm (FLT_EPSILON), Linear, exact erf
 * GELU, Linear.
 *
 * forward of one attention: prenorm into scratch; ONE linear for x against to_qk and to_v
 * stored back to back ((2*inner, dim), so each row of the result holds qk then v), one for the
 * context; the bidirectional attention op reads the heads in place through strides ((h d)
 * channel split, no transposes) and writes both merged-head outputs; then to_out /
 * context_to_out. The transformer adds the output projections straight onto its residual
 * streams (which live in the caller's out / context_out buffers) and runs the feed-forwards the
 * same way.
 */
#include "core/registry.h"
#include "io/io_internal.h"
#include "kernels/ops.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BD_MAX_DEPTH 100000

static const char *const FN_LOAD = "xattn_bidir_load";
static const char *const FN_FWD = "xattn_bidir_forward";

/* ---------------------------------------------------------------------------------------- */
/* Fields: the constructors' keyword arguments                                              */
/* ---------------------------------------------------------------------------------------- */

#define FLD_DIM                                                                                    \
    {                                                                                              \
        "dim", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED, 0, 1, 1e15, NULL, NULL, "width of x"          \
    }
#define FLD_CONTEXT_DIM                                                                            \
    {                                                                                              \
        "context_dim", XA_T_INT, XA_F_SHAPE | XA_F_OPTIONAL, 0, 1, 1e15, NULL, NULL,               \
            "width of the context (None: dim)"                                                     \
    }
#define FLD_HEADS                                                                                  \
    {                                                                                              \
        "heads", XA_T_INT, XA_F_TRACELESS, 8, 1, 1e15, NULL, NULL,                                 \
            "attention heads (told by the talking-heads weight when there is one)"                 \
    }
#define FLD_DIM_HEAD                                                                               \
    {                                                                                              \
        "dim_head", XA_T_INT, 0, 64, 1, 1e15, NULL, NULL,                                          \
            "width of a head (inner_dim = heads * dim_head)"                                       \
    }
#define FLD_DROPOUT                                                                                \
    {                                                                                              \
        "dropout", XA_T_REAL, 0, 0, 0, 1, NULL, NULL,                                              \
            "attention dropout (the identity at inference)"                                        \
    }
#define FLD_TALKING                                                                                \
    {                                                                                              \
        "talking_heads", XA_T_BOOL, XA_F_PRESENCE | XA_F_NOMETA, 0, 0, 1, NULL, NULL,              \
            "a 1x1 Conv2d mixes the heads of each attention map"                                   \
    }
#define FLD_LAYERNORM                                                                              \
    {                                                                                              \
        "layernorm", XA_T_BOOL, XA_F_PRESENCE | XA_F_NOMETA, 0, 0, 1, NULL, NULL,                  \
            "version 0.0.x: the prenorm is nn.LayerNorm (weight and bias, eps 1e-5), not "         \
            "nn.RMSNorm"                                                                           \
    }
#define FLD_INNER                                                                                  \
    {                                                                                              \
        "inner_dim", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED | XA_F_DERIVED, 0, 1, 1e15, NULL, NULL,  \
            "heads * dim_head"                                                                     \
    }

/* BidirectionalCrossAttention(dim, heads=8, dim_head=64, context_dim=None, dropout=0.,
 * talking_heads=False, prenorm=False) */
static const xa_field attn_fields[] = {
    FLD_DIM,
    FLD_HEADS,
    FLD_DIM_HEAD,
    FLD_CONTEXT_DIM,
    FLD_DROPOUT,
    FLD_TALKING,
    {"prenorm", XA_T_BOOL, XA_F_PRESENCE | XA_F_NOMETA, 0, 0, 1, NULL, NULL,
     "normalise x and the context before the projections"},
    FLD_LAYERNORM,
    FLD_INNER,
};

/* BidirectionalCrossAttentionTransformer(dim, depth, context_dim=None, ff_expansion_factor=4.,
 * final_norms=False, **attn_kwargs: heads, dim_head, dropout, talking_heads) */
static const xa_field tf_fields[] = {
    FLD_DIM,
    {"depth", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED, 0, 1, BD_MAX_DEPTH, NULL, NULL,
     "layers (told by the layer names)"},
    FLD_CONTEXT_DIM,
    {"ff_expansion_factor", XA_T_REAL, 0, 4, 0, 1e9, NULL, NULL,
     "feed-forward width int(d * factor) for d = dim and context_dim"},
    {"final_norms", XA_T_BOOL, XA_F_PRESENCE | XA_F_NOMETA, 0, 0, 1, NULL, NULL,
     "RMSNorm of both outputs after the last layer"},
    FLD_HEADS,
    FLD_DIM_HEAD,
    FLD_DROPOUT,
    FLD_TALKING,
    FLD_LAYERNORM,
    {"prenorm", XA_T_BOOL, XA_F_DERIVED | XA_F_NOMETA, 1, 0, 1, NULL, NULL,
     "always True: the layers' attentions are built with prenorm"},
    FLD_INNER,
    {"ff_hidden", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED | XA_F_DERIVED, 0, 1, 1e15, NULL, NULL,
     "int(dim * ff_expansion_factor)"},
    {"context_ff_hidden", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED | XA_F_DERIVED, 0, 1, 1e15, NULL,
     NULL, "int(context_dim * ff_expansion_factor)"},
};

/* ---------------------------------------------------------------------------------------- */
/* Parameter tables                                                                         */
/* ---------------------------------------------------------------------------------------- */

/* One attention, in block order: to_v right after to_qk and context_to_v after context_to_qk
 * (one GEMM each side); the projections first, so that they bind dim, context_dim and
 * inner_dim. */
enum {
    A_QK,
    A_V,
    A_CQK,
    A_CV,
    A_OUT_W,
    A_OUT_B,
    A_COUT_W,
    A_COUT_B,
    A_NORM_W,
    A_NORM_B,
    A_CNORM_W,
    A_CNORM_B,
    A_TALK,
    A_CTALK,
    A_N
};
static const xa_pspec attn_table[A_N] = {
    {"to_qk.weight", "inner_dim,dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     "the shared query/key projection of x"},
    {"to_v.weight", "inner_dim,dim", NULL, XA_P_GLUE | XA_P_LIN, XA_INIT_LINEAR, NULL,
     "the value projection of x"},
    {"context_to_qk.weight", "inner_dim,context_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     "the shared query/key projection of the context"},
    {"context_to_v.weight", "inner_dim,context_dim", NULL, XA_P_GLUE | XA_P_LIN, XA_INIT_LINEAR,
     NULL, "the value projection of the context"},
    {"to_out.weight", "dim,inner_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     "the output projection of x"},
    {"to_out.bias", "dim", NULL, 0, XA_INIT_BIAS, "inner_dim", "the output projection of x"},
    {"context_to_out.weight", "context_dim,inner_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     "the output projection of the context"},
    {"context_to_out.bias", "context_dim", NULL, 0, XA_INIT_BIAS, "inner_dim",
     "the output projection of the context"},
    {"norm.weight", "dim", "prenorm", 0, XA_INIT_ONES, NULL, "prenorm of x"},
    {"norm.bias", "dim", "layernorm", 0, XA_INIT_ZEROS, NULL,
     "nn.LayerNorm prenorm (0.0.x), as 'context_norm.bias' says"},
    {"context_norm.weight", "context_dim", "prenorm", 0, XA_INIT_ONES, NULL,
     "prenorm of the context: prenorm normalises both inputs"},
    {"context_norm.bias", "context_dim", "layernorm", 0, XA_INIT_ZEROS, NULL,
     "nn.LayerNorm prenorm (0.0.x) of the context, as 'norm.bias' says"},
    {"talking_heads.weight", "heads,heads,1,1", "talking_heads", 0, XA_INIT_LINEAR, NULL,
     "talking heads of x (a 1x1 Conv2d over heads)"},
    {"context_talking_heads.weight", "heads,heads,1,1", "talking_heads", 0, XA_INIT_LINEAR, NULL,
     "talking heads of the context: they come in pairs"},
};

/* FeedForward(d, mult) = Sequential(RMSNorm(d), Linear(d, hidden), GELU(), Linear(hidden, d)) */
enum { F_NORM, F_W1, F_B1, F_W2, F_B2, F_N };
#define FF_TABLE(D, HID, WHAT)                                                                     \
    {                                                                                              \
        {"0.weight", D, NULL, 0, XA_INIT_ONES, NULL, WHAT},                                        \
            {"1.weight", HID "," D, NULL, XA_P_LIN, XA_INIT_LINEAR, NULL, WHAT},                   \
            {"1.bias", HID, NULL, 0, XA_INIT_BIAS, D, WHAT},                                       \
            {"3.weight", D "," HID, NULL, XA_P_LIN, XA_INIT_LINEAR, NULL, WHAT},                   \
            {"3.bias", D, NULL, 0, XA_INIT_BIAS, HID, WHAT},                                       \
    }
static const xa_pspec ff_table[F_N] =
    FF_TABLE("dim", "ff_hidden", "the FeedForward of x: RMSNorm, Linear, GELU, Linear");
static const xa_pspec cff_table[F_N] =
    FF_TABLE("context_dim", "context_ff_hidden",
             "the FeedForward of the context: RMSNorm, Linear, GELU, Linear");

/* The transformer's final norms (the package builds context_norm with size dim, which only
 * runs when context_dim == dim). */
enum { N_NORM, N_CNORM, N_N };
static const xa_pspec final_table[N_N] = {
    {"norm.weight", "dim", "final_norms", 0, XA_INIT_ONES, NULL, "the final norm of x"},
    {"context_norm.weight", "context_dim", "final_norms", 0, XA_INIT_ONES, NULL,
     "final_norms=True builds both final norms"},
};

#define TF_PER_LAYER (A_N + 2 * F_N)

/* ---------------------------------------------------------------------------------------- */
/* Module                                                                                   */
/* ---------------------------------------------------------------------------------------- */

typedef struct bd_attn {
    const float *norm_w, *norm_b;   /* (dim) each, or NULL (no prenorm / RMSNorm has no bias)   */
    const float *cnorm_w, *cnorm_b; /* (context_dim)                                            */
    xa_wt w_qkv;                    /* (2*inner, dim): to_qk.weight rows, then to_v.weight rows */
    xa_wt cw_qkv;                   /* (2*inner, context_dim)                                   */
    xa_wt wo, cwo;                  /* (dim, inner), (context_dim, inner)                       */
    const float *bo, *cbo;          /* (dim), (context_dim)                                     */
    const float *talk, *ctalk;      /* (H, H) [g][h] each, or NULL                              */
} bd_attn;

typedef struct bd_ff {
    const float *norm_w;  /* (d) RMSNorm weight      */
    xa_wt w1, w2;         /* (hidden, d), (d, hidden) */
    const float *b1, *b2; /* (hidden), (d)            */
} bd_ff;

typedef struct bd_layer {
    bd_attn attn;
    bd_ff ff, cff; /* transformer only */
} bd_layer;

struct xattn_bidir {
    xa_mod core;
    xattn_bidir_config cfg;
    bd_layer *layers;                /* cfg.depth                         */
    const float *fnorm_w, *fcnorm_w; /* transformer final norms, or NULL */
};

extern const xa_kind xa_kind_bidir;
extern const xa_kind xa_kind_bidir_transformer;

/* ---------------------------------------------------------------------------------------- */
/* Build: what the tables cannot say                                                        */
/* ---------------------------------------------------------------------------------------- */

static int field(const xa_cfg *c, const char *name) { return xa_cfg_find(c, name); }

/* A value settled from the shapes after xa_cfg_resolve: marked as derived before it, so that
 * the resolver leaves it alone unless an option or the metadata gives the field. */
static void pend(xa_cfg *c, const char *name, double v)
{
    xa_cfg_set(c, field(c, name), v, XA_FROM_DERIVED, "the shapes");
}

static int pending(const xa_cfg *c, const char *name)
{
    return c->from[field(c, name)] == XA_FROM_DERIVED;
}

/* "heads argument 3" / "__metadata__ 'heads' = 3" / "the default heads 8" */
static const char *given(const xa_cfg *c, int i, char *buf, size_t cap)
{
    char v[64];
    xa_cfg_text(c, i, v, sizeof v);
    if (c->from[i] == XA_FROM_OPTION)
        snprintf(buf, cap, "%s argument %s", c->f[i].name, v);
    else if (c->from[i] == XA_FROM_META)
        snprintf(buf, cap, "__metadata__ '%s' = %s", c->f[i].name, v);
    else
        snprintf(buf, cap, "the default %s %s", c->f[i].name, v);
    return buf;
}

/* Shape of prefix + stem + name: its rank (0 when absent), dims into sh (may be NULL), the full
 * name into full (printable). */
static int tensor_shape(const xattn_safetensors *st, const char *prefix, const char *stem,
                        const char *name, int64_t *sh, char *full, size_t cap)
{
    char raw[768];
    snprintf(raw, sizeof raw, "%s%s%s", prefix, stem, name);
    xa_io_printable(raw, full, cap);
    long idx = xattn_st_find(st, raw);
    xattn_dtype dt;
    int nd = 0;
    int64_t dims[XATTN_MAX_DIMS];
    if (idx < 0 || xattn_st_info(st, (size_t)idx, &dt, &nd, sh ? sh : dims)) return 0;
    return nd;
}

/* Before the resolver (loading): heads from the talking-heads weight, dim_head from the shapes. */
static void pend_heads(xa_cfg *c, const xattn_safetensors *st, const char *prefix, const char *stem)
{
    int64_t sh[XATTN_MAX_DIMS];
    char full[XA_IO_NAME_CAP];
    if (tensor_shape(st, prefix, stem, "talking_heads.weight", sh, full, sizeof full) == 4 &&
        sh[0] > 0)
        pend(c, "heads", (double)sh[0]);
    pend(c, "dim_head", 0);
}

/* Creating: a parameter of a x b values stays far below what could overflow a size. */
static xattn_status sizes_fit(double a, double b, const char *what)
{
    if (a * b <= 1e12) return XATTN_OK;
    return xa_error(XATTN_ERR_ARG, "%s: %s of %.0f x %.0f values is too large", FN_LOAD, what, a,
                    b);
}

/* After the resolver: heads, dim_head and inner_dim agree; context_dim defaults to dim; a
 * LayerNorm prenorm has weights. */
static xattn_status settle_attn(xa_cfg *c, const xattn_safetensors *st, const char *prefix,
                                const char *stem)
{
    const int hi = field(c, "heads"), di = field(c, "dim_head"), ii = field(c, "inner_dim");
    const int ci = field(c, "context_dim");
    char full[XA_IO_NAME_CAP], src[128];
    if (c->from[ci] == XA_FROM_UNSET)
        xa_cfg_set(c, ci, c->v[field(c, "dim")], XA_FROM_DEFAULT, "default (dim)");
    if (xa_cfg_get(c, "layernorm") != 0 && xa_cfg_get(c, "prenorm") == 0) {
        if (!st)
            return xa_error(XATTN_ERR_ARG,
                            "%s: layernorm=True is a kind of prenorm: it needs "
                            "prenorm=True",
                            FN_LOAD);
        char w[XA_IO_NAME_CAP];
        tensor_shape(st, prefix, stem, "norm.weight", NULL, w, sizeof w);
        return xa_error(XATTN_ERR_FORMAT,
                        "tensor '%s' is missing (the nn.LayerNorm prenorm "
                        "that norm.bias belongs to)",
                        w);
    }
    if (!st) {
        const double inner = c->v[hi] * c->v[di];
        xattn_status s;
        if ((s = sizes_fit(inner, xa_cfg_get(c, "dim"), "to_qk.weight")) ||
            (s = sizes_fit(inner, c->v[ci], "context_to_qk.weight")) ||
            (xa_cfg_get(c, "talking_heads") != 0 &&
             (s = sizes_fit(c->v[hi], c->v[hi], "talking_heads.weight"))))
            return s;
        xa_cfg_set(c, ii, inner, XA_FROM_DERIVED, "heads * dim_head");
        return XATTN_OK;
    }
    int64_t sh[XATTN_MAX_DIMS];
    if (tensor_shape(st, prefix, stem, "talking_heads.weight", sh, full, sizeof full) == 4) {
        if (c->from[hi] != XA_FROM_DERIVED && c->v[hi] != (double)sh[0])
            return xa_error(XATTN_ERR_SHAPE,
                            "%s disagrees with tensor '%s' of shape (%lld, %lld, "
                            "%lld, %lld)",
                            given(c, hi, src, sizeof src), full, (long long)sh[0], (long long)sh[1],
                            (long long)sh[2], (long long)sh[3]);
        xa_cfg_set(c, hi, (double)sh[0], XA_FROM_SHAPE, "shape of '%s'", full);
    }
    const int64_t inner = (int64_t)c->v[ii], H = (int64_t)c->v[hi];
    tensor_shape(st, prefix, stem, "to_qk.weight", sh, full, sizeof full);
    if (inner % H)
        return xa_error(XATTN_ERR_SHAPE,
                        "inner dim %lld (rows of '%s') is not divisible by heads "
                        "%lld%s",
                        (long long)inner, full, (long long)H,
                        c->from[hi] == XA_FROM_DEFAULT ? " (the package default: give the heads, "
                                                         "or store __metadata__ {\"heads\": \"N\"})"
                                                       : "");
    if (c->from[di] == XA_FROM_DERIVED) {
        xa_cfg_set(c, di, (double)(inner / H), XA_FROM_SHAPE,
                   "shape of '%s' (inner_dim %lld / "
                   "heads %lld)",
                   full, (long long)inner, (long long)H);
    } else if (c->v[di] * (double)H != (double)inner) {
        return xa_error(XATTN_ERR_SHAPE,
                        "%s disagrees with the shape of '%s' (inner_dim %lld = "
                        "heads %lld * dim_head %lld)",
                        given(c, di, src, sizeof src), full, (long long)inner, (long long)H,
                        (long long)(inner / H));
    }
    return XATTN_OK;
}

/* int(d * f), as Python computes the FeedForward's width */
static int64_t ff_width(int64_t d, double f) { return (int64_t)((double)d * f); }

static int ff_fits(int64_t d, int64_t h, int64_t cd, int64_t ch, double f)
{
    return ff_width(d, f) == h && ff_width(cd, f) == ch;
}

/* The shortest decimal factor f with int(d f) = h and int(cd f) = ch, or 0 if none. */
static double implied_factor(int64_t d, int64_t h, int64_t cd, int64_t ch)
{
    const double lo = fmax((double)h / (double)d, (double)ch / (double)cd);
    for (int digits = 0; digits <= 17; digits++) {
        const double p = pow(10.0, digits), f = ceil(lo * p) / p;
        if (ff_fits(d, h, cd, ch, f)) return f;
    }
    double f = lo;
    for (int k = 0; k < 8; k++, f = nextafter(f, INFINITY))
        if (ff_fits(d, h, cd, ch, f)) return f;
    return 0;
}

/* The transformer's feed-forward widths and factor, and its final norms' sizes. */
static xattn_status settle_ff(xa_cfg *c, const xattn_safetensors *st, const char *prefix)
{
    const int fi = field(c, "ff_expansion_factor"), hi = field(c, "ff_hidden");
    const int chi = field(c, "context_ff_hidden");
    const int64_t d = xa_cfg_int(c, "dim"), cd = xa_cfg_int(c, "context_dim");
    const double f = c->v[fi];
    char src[128];
    if (!st) {
        xattn_status s;
        if ((s = sizes_fit((double)d * f, (double)d, "the feed-forward of x")) ||
            (s = sizes_fit((double)cd * f, (double)cd, "the feed-forward of the context")))
            return s;
        const int64_t h = ff_width(d, f), ch = ff_width(cd, f);
        if (h < 1 || ch < 1)
            return xa_error(XATTN_ERR_ARG,
                            "%s: ff_expansion_factor %g gives a feed-forward "
                            "width int(%lld * %g) = %lld",
                            FN_LOAD, f, (long long)(h < 1 ? d : cd), f,
                            (long long)(h < 1 ? h : ch));
        if (xa_cfg_get(c, "final_norms") != 0 && d != cd)
            return xa_error(XATTN_ERR_ARG,
                            "%s: final_norms=True with context_dim %lld != dim "
                            "%lld: the package builds context_norm with size dim, so its forward "
                            "fails",
                            FN_LOAD, (long long)cd, (long long)d);
        xa_cfg_set(c, hi, (double)h, XA_FROM_DERIVED, "int(dim * ff_expansion_factor)");
        xa_cfg_set(c, chi, (double)ch, XA_FROM_DERIVED, "int(context_dim * ff_expansion_factor)");
        return XATTN_OK;
    }
    const int64_t h = (int64_t)c->v[hi], ch = (int64_t)c->v[chi];
    char w1[XA_IO_NAME_CAP], cw1[XA_IO_NAME_CAP];
    int64_t sh[XATTN_MAX_DIMS];
    tensor_shape(st, prefix, "layers.0.1.", "1.weight", sh, w1, sizeof w1);
    tensor_shape(st, prefix, "layers.0.2.", "1.weight", sh, cw1, sizeof cw1);
    if (pending(c, "ff_expansion_factor")) {
        const double g = implied_factor(d, h, cd, ch);
        if (g <= 0)
            return xa_error(XATTN_ERR_SHAPE,
                            "the feed-forward widths %lld ('%s') and %lld ('%s') "
                            "come from no one ff_expansion_factor f (int(dim %lld * f), "
                            "int(context_dim %lld * f))",
                            (long long)h, w1, (long long)ch, cw1, (long long)d, (long long)cd);
        xa_cfg_set(c, fi, g, XA_FROM_SHAPE, "shapes of '%s' and '%s'", w1, cw1);
        return XATTN_OK;
    }
    /* __metadata__ keeps 9 significant digits: a factor rounded down by that still fits */
    if (!ff_fits(d, h, cd, ch, f) && !ff_fits(d, h, cd, ch, f * (1 + 5e-9)))
        return xa_error(XATTN_ERR_SHAPE,
                        "%s disagrees with the shapes of '%s' (%lld) and '%s' "
                        "(%lld): int(dim %lld * f) and int(context_dim %lld * f)",
                        given(c, fi, src, sizeof src), w1, (long long)h, cw1, (long long)ch,
                        (long long)d, (long long)cd);
    return XATTN_OK;
}

/* Depth of a transformer at prefix: layers 0..L-1, each with its attention, and no index
 * beyond; an index with leading zeros or too large is refused. */
static xattn_status tf_depth(const xattn_safetensors *st, const char *prefix, int64_t *L)
{
    const size_t plen = strlen(prefix);
    int64_t maxl = -1;
    char shown[XA_IO_NAME_CAP], pp[XA_IO_NAME_CAP];
    for (size_t i = 0; i < xattn_st_count(st); i++) {
        const char *name = xattn_st_name(st, i);
        if (!name || strncmp(name, prefix, plen) || strncmp(name + plen, "layers.", 7)) continue;
        const char *p = name + plen + 7, *q = p;
        int64_t l = 0;
        for (; *q >= '0' && *q <= '9'; q++)
            if (l <= BD_MAX_DEPTH) l = l * 10 + (*q - '0');
        if (q == p || *q != '.') continue; /* not a layer index: not ours */
        if ((q - p > 1 && *p == '0') || l >= BD_MAX_DEPTH)
            return xa_error(XATTN_ERR_FORMAT,
                            "tensor '%s': layer index is not a plain integer below %d",
                            xa_io_printable(name, shown, sizeof shown), BD_MAX_DEPTH);
        maxl = XA_MAX(maxl, l);
    }
    xattn_status s = xa_count_layers(st, prefix, "layers.", "0.to_qk.weight", BD_MAX_DEPTH, L);
    if (!s && *L == maxl + 1) return XATTN_OK;
    int64_t l = 0;
    char rel[64];
    for (; l <= maxl; l++) {
        snprintf(rel, sizeof rel, "layers.%lld.0.to_qk.weight", (long long)l);
        if (!xa_has(st, prefix, rel)) break;
    }
    xa_io_printable(prefix, pp, sizeof pp);
    if (l > maxl) return s ? s : xa_error(XATTN_ERR_FORMAT, "layers of '%s' do not add up", pp);
    return xa_error(XATTN_ERR_NOT_FOUND,
                    "tensor '%s%s' is missing (the file names layers up to "
                    "%lld)",
                    pp, rel, (long long)maxl);
}

static xattn_status attn_build(xa_mod *m, const xattn_safetensors *st, const char *prefix,
                               const xa_kv *opts, size_t n_opts)
{
    xa_cfg *c = &m->cfg;
    xattn_status s;
    if (st) {
        if ((s = xa_cfg_bind_shapes(c, attn_table, A_N, st, prefix, "")) ||
            (s = xa_cfg_require_shapes(c, attn_table, A_N, st, prefix, "")))
            return s;
        pend_heads(c, st, prefix, "");
    }
    if ((s = xa_cfg_resolve(c, opts, n_opts, st, FN_LOAD)) || (s = settle_attn(c, st, prefix, "")))
        return s;
    return xa_params_add_table(&m->params, attn_table, A_N, c, "", NULL);
}

/* Binds the transformer's fields from its first layer and its final norms. */
static xattn_status tf_bind(xa_cfg *c, const xattn_safetensors *st, const char *prefix)
{
    static const struct {
        const xa_pspec *t;
        int n;
        const char *stem;
    } parts[] = {{attn_table, A_N, "layers.0.0."},
                 {ff_table, F_N, "layers.0.1."},
                 {cff_table, F_N, "layers.0.2."},
                 {final_table, N_N, ""}};
    int64_t L;
    xattn_status s = tf_depth(st, prefix, &L);
    if (s) return s;
    xa_cfg_set(c, field(c, "depth"), (double)L, XA_FROM_SHAPE, "layer names (layers.0 .. %lld)",
               (long long)(L - 1));
    for (size_t k = 0; k < XA_N(parts); k++)
        if ((s = xa_cfg_bind_shapes(c, parts[k].t, parts[k].n, st, prefix, parts[k].stem)))
            return s;
    for (size_t k = 0; k < XA_N(parts); k++)
        if ((s = xa_cfg_require_shapes(c, parts[k].t, parts[k].n, st, prefix, parts[k].stem)))
            return s;
    pend_heads(c, st, prefix, "layers.0.0.");
    pend(c, "ff_expansion_factor", 0);
    return XATTN_OK;
}

static xattn_status tf_build(xa_mod *m, const xattn_safetensors *st, const char *prefix,
                             const xa_kv *opts, size_t n_opts)
{
    xa_cfg *c = &m->cfg;
    xattn_status s;
    xa_cfg_set(c, field(c, "prenorm"), 1, XA_FROM_DERIVED, "the transformer's attentions");
    if ((st && (s = tf_bind(c, st, prefix))) ||
        (s = xa_cfg_resolve(c, opts, n_opts, st, FN_LOAD)) ||
        (s = settle_attn(c, st, prefix, "layers.0.0.")) || (s = settle_ff(c, st, prefix)))
        return s;
    const int64_t depth = xa_cfg_int(c, "depth");
    char stem[64];
    for (int64_t l = 0; l < depth; l++) {
        snprintf(stem, sizeof stem, "layers.%lld.0.", (long long)l);
        if ((s = xa_params_add_table(&m->params, attn_table, A_N, c, stem, NULL))) return s;
        snprintf(stem, sizeof stem, "layers.%lld.1.", (long long)l);
        if ((s = xa_params_add_table(&m->params, ff_table, F_N, c, stem, NULL))) return s;
        snprintf(stem, sizeof stem, "layers.%lld.2.", (long long)l);
        if ((s = xa_params_add_table(&m->params, cff_table, F_N, c, stem, NULL))) return s;
    }
    return xa_params_add_table(&m->params, final_table, N_N, c, "", NULL);
}

/* ---------------------------------------------------------------------------------------- */
/* Bind: pointers into the parameter block                                                  */
/* ---------------------------------------------------------------------------------------- */

static void wire_attn(bd_attn *a, const xa_params *ps, int base)
{
    a->norm_w = xa_param_data(ps, base + A_NORM_W);
    a->norm_b = xa_param_data(ps, base + A_NORM_B);
    a->cnorm_w = xa_param_data(ps, base + A_CNORM_W);
    a->cnorm_b = xa_param_data(ps, base + A_CNORM_B);
    a->w_qkv = xa_param_w(ps, base + A_QK); /* to_v follows (glued) */
    a->cw_qkv = xa_param_w(ps, base + A_CQK);
    a->wo = xa_param_w(ps, base + A_OUT_W);
    a->bo = xa_param_data(ps, base + A_OUT_B);
    a->cwo = xa_param_w(ps, base + A_COUT_W);
    a->cbo = xa_param_data(ps, base + A_COUT_B);
    a->talk = xa_param_data(ps, base + A_TALK);
    a->ctalk = xa_param_data(ps, base + A_CTALK);
}

static void wire_ff(bd_ff *f, const xa_params *ps, int base)
{
    f->norm_w = xa_param_data(ps, base + F_NORM);
    f->w1 = xa_param_w(ps, base + F_W1);
    f->b1 = xa_param_data(ps, base + F_B1);
    f->w2 = xa_param_w(ps, base + F_W2);
    f->b2 = xa_param_data(ps, base + F_B2);
}

static void fill_config(xattn_bidir *m, int tf)
{
    const xa_cfg *c = &m->core.cfg;
    xattn_bidir_config *o = &m->cfg;
    memset(o, 0, sizeof *o);
    o->is_transformer = tf;
    o->dim = xa_cfg_int(c, "dim");
    o->context_dim = xa_cfg_int(c, "context_dim");
    o->heads = xa_cfg_int(c, "heads");
    o->dim_head = xa_cfg_int(c, "dim_head");
    o->inner_dim = xa_cfg_int(c, "inner_dim");
    o->prenorm = xa_cfg_get(c, "prenorm") == 0     ? XATTN_NORM_NONE
                 : xa_cfg_get(c, "layernorm") != 0 ? XATTN_NORM_LAYER
                                                   : XATTN_NORM_RMS;
    o->talking_heads = xa_cfg_get(c, "talking_heads") != 0;
    o->depth = tf ? xa_cfg_int(c, "depth") : 1;
    if (!tf) return;
    o->ff_hidden = xa_cfg_int(c, "ff_hidden");
    o->context_ff_hidden = xa_cfg_int(c, "context_ff_hidden");
    o->ff_expansion_factor = xa_cfg_get(c, "ff_expansion_factor");
    o->final_norms = xa_cfg_get(c, "final_norms") != 0;
    o->context_norm_dim = o->final_norms ? o->context_dim : 0;
}

static xattn_status bind(xa_mod *core)
{
    xattn_bidir *m = (xattn_bidir *)core;
    const int tf = core->kind == &xa_kind_bidir_transformer;
    fill_config(m, tf);
    const xa_params *ps = &core->params;
    m->layers = calloc((size_t)m->cfg.depth, sizeof *m->layers);
    if (!m->layers) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN_LOAD);
    const int per = tf ? TF_PER_LAYER : A_N;
    for (int64_t l = 0; l < m->cfg.depth; l++) {
        const int base = (int)l * per;
        wire_attn(&m->layers[l].attn, ps, base);
        if (!tf) continue;
        wire_ff(&m->layers[l].ff, ps, base + A_N);
        wire_ff(&m->layers[l].cff, ps, base + A_N + F_N);
    }
    if (tf) {
        const int fin = (int)m->cfg.depth * per;
        m->fnorm_w = xa_param_data(ps, fin + N_NORM);
        m->fcnorm_w = xa_param_data(ps, fin + N_CNORM);
    }
    return XATTN_OK;
}

static void destroy(xa_mod *core)
{
    xattn_bidir *m = (xattn_bidir *)core;
    free(m->layers);
    m->layers = NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Registry                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* A transformer: its first layer's attention and feed-forward (as the CLI detects it). */
static int tf_claims(const xattn_safetensors *st, const char *prefix)
{
    return xa_has(st, prefix, "layers.0.0.to_qk.weight") &&
           xa_has(st, prefix, "layers.0.1.1.weight");
}

/* The package's masks keep what is True (the opposite of torch's); a position (i, j) is kept
 * when both are, and a fully masked row or column becomes a uniform average (masked
 * similarities are -FLT_MAX), not NaN. */
static const xa_io bd_inputs[] = {
    {"x", "B,I,dim", 0, "the sequence"},
    {"context", "B,J,context_dim", 0, "the context"},
    {"mask", "B,I", XA_IO_OPT | XA_IO_MASK,
     "True = KEEP, as the package (a masked x position is neither a query nor a key; a fully "
     "masked row is a uniform average)"},
    {"context_mask", "B,J", XA_IO_OPT | XA_IO_MASK, "True = KEEP, as the package"},
    {"rel_pos_bias", "I,J|heads/1,I,J|B/1,heads/1,I,J", XA_IO_OPT | XA_IO_ADDITIVE,
     "added to the shared similarities before masking"},
};
static const xa_io bd_outputs[] = {
    {"out", "B,I,dim", 0, "x attending to the context"},
    {"context_out", "B,J,context_dim", 0, "the context attending to x"},
    {"attn", "B,heads,I,J", XA_IO_OPT,
     "softmax over j, {talking_heads?mixed across heads by talking heads|per head}"},
    {"context_attn", "B,heads,I,J", XA_IO_OPT,
     "softmax over i, {talking_heads?mixed across heads by talking heads|per head}"},
};

/* The one-line descriptions: the heads a talking-heads weight tells are marked so; the prenorm
 * as the package names it. */
#define BD_HEADS   "heads={heads}{heads@shape? (from {heads@})}"
#define BD_PRENORM "prenorm={prenorm?{layernorm?LayerNorm (0.0.x)|RMSNorm}|none}"

static xattn_status forward_named(const xa_mod *core, const xa_run *r);
static xattn_status backward_named(const xa_mod *core, const xa_run *r, xa_grad *g);

const xa_kind xa_kind_bidir = {
    .name = "bidir",
    .reference = "BidirectionalCrossAttention (PyPI bidirectional-cross-attention 0.1.0; 0.0.x "
                 "LayerNorm prenorm)",
    .summary = "two sequences attend to each other through one shared similarity",
    .fields = attn_fields,
    .n_fields = XA_N(attn_fields),
    .inputs = bd_inputs,
    .n_in = 5,
    .outputs = bd_outputs,
    .n_out = 4,
    .anchor = "to_qk.weight",
    .size = sizeof(xattn_bidir),
    .build = attn_build,
    .bind = bind,
    .destroy = destroy,
    .forward = forward_named,
    .backward = backward_named,
    .state_dict = "to_qk.weight (inner_dim, dim), to_v.weight, context_to_qk.weight (inner_dim, "
                  "context_dim), context_to_v.weight, to_out.{weight, bias}, context_to_out."
                  "{weight, bias}, [norm.weight [norm.bias], context_norm.weight [.bias]], "
                  "[talking_heads.weight, context_talking_heads.weight (heads, heads, 1, 1)]",
    .brief = "dim,context_dim," BD_HEADS ",dim_head,inner_dim," BD_PRENORM ",talking_heads",
    .family = "bidirectional",
};

const xa_kind xa_kind_bidir_transformer = {
    .name = "bidir-transformer",
    .reference = "BidirectionalCrossAttentionTransformer (PyPI bidirectional-cross-attention "
                 "0.1.0)",
    .summary = "layers of bidirectional cross-attention and feed-forwards on both streams (no "
               "attention maps: the package ignores return_attn)",
    .fields = tf_fields,
    .n_fields = XA_N(tf_fields),
    .inputs = bd_inputs,
    .n_in = 5,
    .outputs = bd_outputs,
    .n_out = 2, /* the package returns no maps */
    .anchor = "layers.0.0.to_qk.weight",
    .claims = tf_claims,
    .size = sizeof(xattn_bidir),
    .build = tf_build,
    .bind = bind,
    .destroy = destroy,
    .forward = forward_named,
    .backward = backward_named,
    .state_dict = "layers.L.0.<the bidir names, with prenorm>, layers.L.1.{0.weight, 1.weight, "
                  "1.bias, 3.weight, 3.bias} (feed-forward of x), layers.L.2.* (of the context), "
                  "[norm.weight, context_norm.weight]",
    .brief = "dim,context_dim,depth," BD_HEADS ",dim_head,inner_dim," BD_PRENORM
             ",talking_heads,ff_hidden,context_ff_hidden,"
             "final_norms={final_norms?True (context_norm of size {context_dim})|False}",
    .family = "bidirectional",
};

/* ---------------------------------------------------------------------------------------- */
/* Typed API                                                                                */
/* ---------------------------------------------------------------------------------------- */

xattn_status xattn_bidir_load(const xattn_safetensors *st, const char *prefix,
                              const xattn_bidir_opts *opts, xattn_bidir **out)
{
    XA_LOAD_ARGS(st, out, FN_LOAD);
    if (opts && !xa_reserved_zero(opts->reserved_))
        return xa_error(XATTN_ERR_ARG, "%s: opts->reserved_ must be zero", FN_LOAD);
    if (!prefix) prefix = "";
    char pp[XA_IO_NAME_CAP];
    xa_io_printable(prefix, pp, sizeof pp);
    const int attn_names = xa_has(st, prefix, "to_qk.weight");
    const int tf_names = xa_has(st, prefix, "layers.0.0.to_qk.weight");
    if (attn_names && tf_names)
        return xa_error(
            XATTN_ERR_FORMAT,
            "ambiguous module: both '%sto_qk.weight' (BidirectionalCrossAttention) and "
            "'%slayers.0.0.to_qk.weight' (BidirectionalCrossAttentionTransformer) present",
            pp, pp);
    if (!attn_names && !tf_names)
        return xa_error(XATTN_ERR_NOT_FOUND,
                        "no bidirectional cross-attention found: expected '%sto_qk.weight' "
                        "(BidirectionalCrossAttention) or '%slayers.0.0.to_qk.weight' "
                        "(BidirectionalCrossAttentionTransformer)",
                        pp, pp);
    xa_kvbuf kv;
    memset(&kv, 0, sizeof kv);
    if (opts) {
        xa_kv_int(&kv, "heads", opts->heads);
        xa_kv_int(&kv, "dim_head", opts->dim_head);
        xa_kv_real(&kv, "ff_expansion_factor", opts->ff_expansion_factor);
        xa_kv_real(&kv, "dropout", opts->dropout);
    }
    xa_mod *m;
    xattn_status s = xa_mod_open(tf_names ? &xa_kind_bidir_transformer : &xa_kind_bidir, st, prefix,
                                 kv.kv, kv.n, &m);
    *out = s ? NULL : (xattn_bidir *)m;
    return s;
}

void xattn_bidir_free(xattn_bidir *m) { xa_mod_free(m ? &m->core : NULL); }

void xattn_bidir_get_config(const xattn_bidir *m, xattn_bidir_config *cfg)
{
    xa_copy_config(m ? &m->cfg : NULL, cfg, sizeof *cfg);
}

/* ---------------------------------------------------------------------------------------- */
/* Forward                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static xattn_status prenorm(xattn_bidir_norm kind, const float *x, int64_t rows, int64_t n,
                            const float *w, const float *b, float *y)
{
    if (kind == XATTN_NORM_LAYER) return xa_op_layernorm(x, rows, n, w, b, 1e-5f, y);
    return xa_op_rmsnorm(x, rows, n, w, FLT_EPSILON, y);
}

typedef struct bd_scratch {
    float *xn, *cn;    /* (B*I, dim), (B*J, context_dim): normalised inputs        */
    float *pqv, *cpqv; /* (B*I, 2*inner), (B*J, 2*inner): [qk | v] per row         */
    float *oh, *coh;   /* (B*I, inner), (B*J, inner): merged-head attention outputs */
    float *hid;        /* (B*max(I*hidden, J*context_hidden)) feed-forward          */
} bd_scratch;

/* The op's description of one attention over the scratch's projections (heads read in place:
 * head h of row i is pqv[i * 2 inner + h dh ..], its value inner further). */
static void describe(const xattn_bidir_config *c, const xattn_bidir_inputs *in,
                     const bd_scratch *sc, xa_bidir *p)
{
    const int64_t I = in->I, J = in->J, dh = c->dim_head, inner = c->inner_dim;
    const int64_t inner2 = 2 * inner;
    memset(p, 0, sizeof *p);
    p->B = in->B, p->H = c->heads, p->I = I, p->J = J, p->dh = dh;
    p->qk = sc->pqv, p->qk_sb = I * inner2, p->qk_sh = dh, p->qk_si = inner2;
    p->v = sc->pqv + inner, p->v_sb = I * inner2, p->v_sh = dh, p->v_si = inner2;
    p->cqk = sc->cpqv, p->cqk_sb = J * inner2, p->cqk_sh = dh, p->cqk_sj = inner2;
    p->cv = sc->cpqv + inner, p->cv_sb = J * inner2, p->cv_sh = dh, p->cv_sj = inner2;
    p->out = sc->oh, p->o_sb = I * inner, p->o_sh = dh, p->o_si = inner;
    p->cout = sc->coh, p->co_sb = J * inner, p->co_sh = dh, p->co_sj = inner;
    p->scale = xa_head_scale(dh); /* dim_head ** -0.5, then float32 as in torch */
    p->mask = in->mask, p->mask_sb = I;
    p->cmask = in->context_mask, p->cmask_sb = J;
    if (in->rel_pos_bias) {
        p->bias = in->rel_pos_bias;
        p->bias_sh = in->bias_h > 1 ? I * J : 0;
        p->bias_sb = in->bias_b > 1 ? in->bias_h * I * J : 0;
    }
}

/* One attention up to the merged-head outputs sc->oh, sc->coh. */
static xattn_status attn_core(const xattn_bidir *m, const bd_attn *a, const xattn_bidir_inputs *in,
                              const float *x, const float *ctx, const bd_scratch *sc, float *attn,
                              float *cattn)
{
    const xattn_bidir_config *c = &m->cfg;
    const int64_t nI = in->B * in->I, nJ = in->B * in->J, inner2 = 2 * c->inner_dim;
    xattn_status s;
    const float *xin = x, *cin = ctx;
    if (c->prenorm != XATTN_NORM_NONE) {
        if ((s = prenorm(c->prenorm, x, nI, c->dim, a->norm_w, a->norm_b, sc->xn)) ||
            (s = prenorm(c->prenorm, ctx, nJ, c->context_dim, a->cnorm_w, a->cnorm_b, sc->cn)))
            return s;
        xin = sc->xn;
        cin = sc->cn;
    }
    if ((s = xa_op_linear_w(xin, nI, c->dim, a->w_qkv, NULL, inner2, sc->pqv, 0)) ||
        (s = xa_op_linear_w(cin, nJ, c->context_dim, a->cw_qkv, NULL, inner2, sc->cpqv, 0)))
        return s;
    xa_bidir p;
    describe(c, in, sc, &p);
    p.talk = a->talk;
    p.ctalk = a->ctalk;
    p.attn = attn;
    p.cattn = cattn;
    return xa_op_bidir_attention(&p);
}

/* x (rows, d) += W2 gelu(W1 rmsnorm(x) + b1) + b2 */
static xattn_status ff_add(const bd_ff *f, float *x, int64_t rows, int64_t d, int64_t hidden,
                           float *xn, float *hid)
{
    xattn_status s;
    if ((s = xa_op_rmsnorm(x, rows, d, f->norm_w, FLT_EPSILON, xn)) ||
        (s = xa_op_linear_w(xn, rows, d, f->w1, f->b1, hidden, hid, 0)) ||
        (s = xa_op_gelu(hid, rows * hidden, 0)) ||
        (s = xa_op_linear_w(hid, rows, hidden, f->w2, f->b2, d, x, 1)))
        return s;
    return XATTN_OK;
}

/* The transformer: the residual streams live in out and context_out. */
static xattn_status run_transformer(const xattn_bidir *m, const xattn_bidir_inputs *in,
                                    const xattn_bidir_outputs *o, const bd_scratch *sc)
{
    const xattn_bidir_config *c = &m->cfg;
    const int64_t nI = in->B * in->I, nJ = in->B * in->J;
    float *x = o->out, *ctx = o->context_out;
    xattn_status s;
    if (x != in->x) memmove(x, in->x, (size_t)(nI * c->dim) * sizeof(float));
    if (ctx != in->context)
        memmove(ctx, in->context, (size_t)(nJ * c->context_dim) * sizeof(float));
    for (int64_t l = 0; l < c->depth; l++) {
        const bd_layer *L = &m->layers[l];
        /* xo, co = attn(x, ctx); x += xo; ctx += co (both from the old x and ctx) */
        if ((s = attn_core(m, &L->attn, in, x, ctx, sc, NULL, NULL)) ||
            (s = xa_op_linear_w(sc->oh, nI, c->inner_dim, L->attn.wo, L->attn.bo, c->dim, x, 1)) ||
            (s = xa_op_linear_w(sc->coh, nJ, c->inner_dim, L->attn.cwo, L->attn.cbo, c->context_dim,
                                ctx, 1)))
            return s;
        /* x = ff(x) + x; ctx = cff(ctx) + ctx */
        if ((s = ff_add(&L->ff, x, nI, c->dim, c->ff_hidden, sc->xn, sc->hid)) ||
            (s = ff_add(&L->cff, ctx, nJ, c->context_dim, c->context_ff_hidden, sc->cn, sc->hid)))
            return s;
    }
    if (m->fnorm_w && ((s = xa_op_rmsnorm(x, nI, c->dim, m->fnorm_w, FLT_EPSILON, x)) ||
                       (s = xa_op_rmsnorm(ctx, nJ, c->context_dim, m->fcnorm_w, FLT_EPSILON, ctx))))
        return s;
    return XATTN_OK;
}

/* Arguments of a forward call. */
static xattn_status check_call(const xattn_bidir *m, const xattn_bidir_inputs *in,
                               const xattn_bidir_outputs *o)
{
    const char *fn = FN_FWD;
    if (!m) return xa_error(XATTN_ERR_ARG, "%s: module is NULL", fn);
    if (!in) return xa_error(XATTN_ERR_ARG, "%s: inputs is NULL", fn);
    if (!o) return xa_error(XATTN_ERR_ARG, "%s: outputs is NULL", fn);
    if (!xa_reserved_zero(in->reserved_) || !xa_reserved_zero(o->reserved_))
        return xa_error(XATTN_ERR_ARG, "%s: reserved_ words must be zero", fn);
    if (!o->out) return xa_error(XATTN_ERR_ARG, "%s: out is NULL", fn);
    if (!o->context_out) return xa_error(XATTN_ERR_ARG, "%s: context_out is NULL", fn);
    const int64_t B = in->B, I = in->I, J = in->J, H = m->cfg.heads;
    if (B <= 0 || I < xa_op_min_rows() || J < xa_op_min_rows())
        return xa_error(XATTN_ERR_ARG, "%s: sizes must be positive (B=%lld, I=%lld, J=%lld)", fn,
                        (long long)B, (long long)I, (long long)J);
    if (!in->x) return xa_error(XATTN_ERR_ARG, "%s: x is NULL", fn);
    if (!in->context) return xa_error(XATTN_ERR_ARG, "%s: context is NULL", fn);
    if (m->cfg.is_transformer && (o->attn || o->context_attn))
        return xa_error(XATTN_ERR_ARG,
                        "%s: BidirectionalCrossAttentionTransformer returns no attention maps (the "
                        "package ignores return_attn): pass attn = context_attn = NULL",
                        fn);
    if (in->rel_pos_bias) {
        if (in->bias_b != 1 && in->bias_b != B)
            return xa_error(XATTN_ERR_SHAPE, "%s: rel_pos_bias batch %lld must be 1 or B = %lld",
                            fn, (long long)in->bias_b, (long long)B);
        if (in->bias_h != 1 && in->bias_h != H)
            return xa_error(XATTN_ERR_SHAPE,
                            "%s: rel_pos_bias heads %lld must be 1 or heads = %lld", fn,
                            (long long)in->bias_h, (long long)H);
    }
    return XATTN_OK;
}

/* n values, 16-float aligned slots: sets *off to this slot's offset and advances *total. */
static int slot(int64_t n, int64_t *total, int64_t *off)
{
    int64_t r = (n + 15) & ~(int64_t)15;
    if (n < 0 || r < n || *total > INT64_MAX - r) return -1;
    *off = *total;
    *total += r;
    return 0;
}

/* Scratch sizes (with overflow checks): offsets of each buffer into o[7], the total floats. */
static xattn_status scratch_plan(const xattn_bidir_config *c, const xattn_bidir_inputs *in,
                                 int64_t o[7], int64_t *total)
{
    const int64_t B = in->B, I = in->I, J = in->J, inner = c->inner_dim;
    const int need_norm = c->is_transformer || c->prenorm != XATTN_NORM_NONE;
    int64_t nI, nJ, t, n_pqv, n_cpqv, n_oh, n_coh, hI = 0, hJ = 0;
    if (xa_mul_ok(B, I, &nI) || xa_mul_ok(B, J, &nJ) || xa_mul_ok(nI, 2 * inner, &n_pqv) ||
        xa_mul_ok(nJ, 2 * inner, &n_cpqv) || xa_mul_ok(nI, inner, &n_oh) ||
        xa_mul_ok(nJ, inner, &n_coh) || xa_mul_ok(nI, c->dim, &t) ||
        xa_mul_ok(nJ, c->context_dim, &t) || xa_mul_ok(nI, J, &t) || xa_mul_ok(t, c->heads, &t) ||
        xa_mul_ok(nI, c->ff_hidden, &hI) || xa_mul_ok(nJ, c->context_ff_hidden, &hJ) ||
        (in->rel_pos_bias &&
         (xa_mul_ok(in->bias_b, in->bias_h, &t) || xa_mul_ok(t, I, &t) || xa_mul_ok(t, J, &t))))
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow (B=%lld, I=%lld, J=%lld)", FN_FWD,
                        (long long)B, (long long)I, (long long)J);
    const int64_t n[7] = {need_norm ? nI * c->dim : 0,
                          need_norm ? nJ * c->context_dim : 0,
                          n_pqv,
                          n_cpqv,
                          n_oh,
                          n_coh,
                          c->is_transformer ? XA_MAX(hI, hJ) : 0};
    *total = 0;
    for (int k = 0; k < 7; k++)
        if (slot(n[k], total, &o[k]))
            return xa_error(XATTN_ERR_NOMEM, "%s: scratch for B=%lld, I=%lld, J=%lld overflows",
                            FN_FWD, (long long)B, (long long)I, (long long)J);
    if ((uint64_t)*total > SIZE_MAX / sizeof(float) / 2)
        return xa_error(XATTN_ERR_NOMEM, "%s: scratch for B=%lld, I=%lld, J=%lld overflows", FN_FWD,
                        (long long)B, (long long)I, (long long)J);
    return XATTN_OK;
}

/* The forward on the current context. */
static xattn_status bidir_run(const xattn_bidir *m, const xattn_bidir_inputs *in,
                              const xattn_bidir_outputs *o)
{
    xattn_status s = check_call(m, in, o);
    if (s) return s;
    const xattn_bidir_config *c = &m->cfg;
    int64_t off[7], total = 0;
    if ((s = scratch_plan(c, in, off, &total))) return s;
    xa_ws *ws = xa_ws_get((size_t)XA_MAX(total, 1) * sizeof(float));
    if (!ws) return XATTN_ERR_NOMEM;
    float *base = xa_ws_data(ws);
    const int need_norm = c->is_transformer || c->prenorm != XATTN_NORM_NONE;
    const bd_scratch sc = {need_norm ? base + off[0] : NULL,
                           need_norm ? base + off[1] : NULL,
                           base + off[2],
                           base + off[3],
                           base + off[4],
                           base + off[5],
                           c->is_transformer ? base + off[6] : NULL};
    const int64_t nI = in->B * in->I, nJ = in->B * in->J;
    if (c->is_transformer) {
        s = run_transformer(m, in, o, &sc);
    } else {
        const bd_attn *a = &m->layers[0].attn;
        if (!(s = attn_core(m, a, in, in->x, in->context, &sc, o->attn, o->context_attn)) &&
            !(s = xa_op_linear_w(sc.oh, nI, c->inner_dim, a->wo, a->bo, c->dim, o->out, 0)))
            s = xa_op_linear_w(sc.coh, nJ, c->inner_dim, a->cwo, a->cbo, c->context_dim,
                               o->context_out, 0);
    }
    xa_ws_put(ws);
    if (!s) xa_clear_error();
    return s;
}

xattn_status xattn_bidir_forward(xattn_ctx *ctx, const xattn_bidir *m, const xattn_bidir_inputs *in,
                                 const xattn_bidir_outputs *out)
{
    const xattn_ctx *prev = xa_ctx_enter(ctx);
    xattn_status s = bidir_run(m, in, out);
    xa_ctx_leave(prev);
    return s;
}

/* Named arrays (in / out in table order) onto the typed forward, on the current context. */
static void named_inputs(const xa_run *r, xattn_bidir_inputs *in);

static xattn_status forward_named(const xa_mod *core, const xa_run *r)
{
    xattn_bidir_inputs in;
    named_inputs(r, &in);
    xattn_bidir_outputs o;
    memset(&o, 0, sizeof o);
    o.out = r->out[0];
    o.context_out = r->out[1];
    if (core->kind->n_out > 2) {
        o.attn = r->out[2];
        o.context_attn = r->out[3];
    }
    return bidir_run((const xattn_bidir *)core, &in, &o);
}

/* ---------------------------------------------------------------------------------------- */
/* Backward                                                                                 */
/* ---------------------------------------------------------------------------------------- */
/*
 * The forward runs once and keeps, per layer, what is costly to recompute: the projections
 * [qk | v] of both streams, the attention's merged-head outputs and its log-sum-exps (row and
 * column), the streams after the attention's residual and the feed-forward hidden layers
 * before GELU (the transformer), plus each layer's input streams. Per x token and layer that
 * is 2 inner + inner + dim + ff_hidden floats (+ dim for the input stream), likewise per
 * context token; nothing of size I x J. What is cheap is recomputed when the layer's gradient is
 * taken: the prenorms, the feed-forward norms and GELU. Going backward, each layer's gradient is
 * taken op by op: feed-forwards (RMSNorm, Linear, GELU, Linear, residual), the output
 * projections, the bidirectional attention (the gradient of the shared similarity from both
 * softmaxes, talking heads, rel_pos_bias), the projections and the prenorms.
 */

typedef struct bd_saved { /* one layer's kept activations */
    float *oh, *coh;      /* (nI, inner), (nJ, inner) */
    float *lse, *clse;    /* (B, H, I), (B, H, J) */
    /* recomputed from the layer's input streams (one buffer for every layer): */
    float *pqv, *cpqv; /* (nI, 2 inner), (nJ, 2 inner) */
    float *x1, *c1;    /* the streams after the attention's residual (transformer) */
} bd_saved;

typedef struct bd_bwd {
    const xattn_bidir *m;
    const xattn_bidir_inputs *in;
    int64_t nI, nJ;
    bd_saved *sv;        /* per layer */
    float *xn, *cn;      /* recomputed: prenormed inputs (nI, dim), (nJ, context_dim) */
    float *fx, *dfx;     /* a block of a feed-forward's norm and of its gradient */
    float *hid, *g;      /* recomputed, one side at a time: feed-forward hidden before and after
                            GELU (max(nI hidden, nJ context_hidden)) */
    float *dx, *dc;      /* running gradients of the streams */
    float *d_oh, *d_coh; /* (nI, inner), (nJ, inner) */
    float *dpqv, *dcpqv; /* (nI, 2 inner), (nJ, 2 inner) */
    float *dxin, *dcin;  /* (nI, dim), (nJ, context_dim) */
    float *dW, *dcW;     /* (2 inner, dim), (2 inner, context_dim) */
    float *dg;           /* the hidden's gradient, one side at a time (in place through GELU) */
    float *const *dparam;
    float *dbias;     /* the rel_pos_bias gradient, or NULL */
    int bias_started; /* the bias gradient holds a layer's part already */
} bd_bwd;

static float *dp(const bd_bwd *w, int i) { return w->dparam ? w->dparam[i] : NULL; }

/* Parameter i's gradient set to 0 (before a backward that adds to it), n floats. */
static void dp_zero(const bd_bwd *w, int i, int64_t n)
{
    if (dp(w, i)) memset(dp(w, i), 0, sizeof(float) * (size_t)n);
}

/* norm of a prenorm (the kind's) backward, into or adding to dx */
static xattn_status prenorm_backward(xattn_bidir_norm kind, const float *x, int64_t rows, int64_t n,
                                     const float *w, const float *dy, float *dx, float *dw,
                                     float *db, int accumulate)
{
    if (kind == XATTN_NORM_LAYER)
        return xa_op_layernorm_backward(x, rows, n, w, 1e-5f, dy, dx, dw, db, accumulate);
    return xa_op_rmsnorm_backward(x, rows, n, w, FLT_EPSILON, dy, dx, dw, accumulate);
}

/* The prenormed inputs of a layer (recomputed into w->xn, w->cn when there is a prenorm). */
static xattn_status prenorms(bd_bwd *w, const bd_layer *L, const float *x, const float *ctx)
{
    const xattn_bidir_config *c = &w->m->cfg;
    if (c->prenorm == XATTN_NORM_NONE) return XATTN_OK;
    xattn_status s = prenorm(c->prenorm, x, w->nI, c->dim, L->attn.norm_w, L->attn.norm_b, w->xn);
    return s ? s
             : prenorm(c->prenorm, ctx, w->nJ, c->context_dim, L->attn.cnorm_w, L->attn.cnorm_b,
                       w->cn);
}

/* The feed-forwards run over blocks of this many rows (fixed: the same sums for any thread
 * count): their hidden layers are held one block at a time. */
#define FF_ROWS 512

/* One block of a feed-forward's norm, hidden layer and GELU (into fx, w->hid, w->g). */
static xattn_status ff_recompute(bd_bwd *w, const bd_ff *f, const float *x1, int64_t rows,
                                 int64_t d, int64_t hidden, float *fx)
{
    xattn_status s;
    if ((s = xa_op_rmsnorm(x1, rows, d, f->norm_w, FLT_EPSILON, fx)) ||
        (s = xa_op_linear_w(fx, rows, d, f->w1, f->b1, hidden, w->hid, 0)))
        return s;
    memcpy(w->g, w->hid, sizeof(float) * (size_t)(rows * hidden));
    return xa_op_gelu(w->g, rows * hidden, 0);
}

/* One layer's forward from streams x, ctx keeping its activations in v; the transformer's layer
 * outputs go to xo, co. */
static xattn_status layer_forward(bd_bwd *w, const bd_layer *L, bd_saved *v, const float *x,
                                  const float *ctx, float *xo, float *co)
{
    const xattn_bidir *m = w->m;
    const xattn_bidir_config *c = &m->cfg;
    const int64_t nI = w->nI, nJ = w->nJ, dim = c->dim, cd = c->context_dim;
    const int pre = c->prenorm != XATTN_NORM_NONE;
    xattn_status s = prenorms(w, L, x, ctx);
    if (s) return s;
    const int64_t inner2 = 2 * c->inner_dim;
    if ((s = xa_op_linear_w(pre ? w->xn : x, nI, dim, L->attn.w_qkv, NULL, inner2, v->pqv, 0)) ||
        (s = xa_op_linear_w(pre ? w->cn : ctx, nJ, cd, L->attn.cw_qkv, NULL, inner2, v->cpqv, 0)))
        return s;
    const bd_scratch sc = {NULL, NULL, v->pqv, v->cpqv, v->oh, v->coh, NULL};
    xa_bidir p;
    describe(c, w->in, &sc, &p);
    p.talk = L->attn.talk;
    p.ctalk = L->attn.ctalk;
    p.lse = v->lse;
    p.clse = v->clse;
    if ((s = xa_op_bidir_attention(&p))) return s;
    if (!c->is_transformer) return XATTN_OK;
    memcpy(v->x1, x, sizeof(float) * (size_t)(nI * dim));
    memcpy(v->c1, ctx, sizeof(float) * (size_t)(nJ * cd));
    if ((s = xa_op_linear_w(v->oh, nI, c->inner_dim, L->attn.wo, L->attn.bo, dim, v->x1, 1)) ||
        (s = xa_op_linear_w(v->coh, nJ, c->inner_dim, L->attn.cwo, L->attn.cbo, cd, v->c1, 1)))
        return s;
    memcpy(xo, v->x1, sizeof(float) * (size_t)(nI * dim));
    memcpy(co, v->c1, sizeof(float) * (size_t)(nJ * cd));
    for (int side = 0; side < 2; side++) { /* stream += ff(stream), a block of rows at a time */
        const bd_ff *f = side ? &L->cff : &L->ff;
        const int64_t rows = side ? nJ : nI, d = side ? cd : dim;
        const int64_t hidden = side ? c->context_ff_hidden : c->ff_hidden;
        const float *x1 = side ? v->c1 : v->x1;
        float *o = side ? co : xo;
        for (int64_t r0 = 0; r0 < rows && !s; r0 += FF_ROWS) {
            const int64_t n = XA_MIN(FF_ROWS, rows - r0);
            if (!(s = ff_recompute(w, f, x1 + r0 * d, n, d, hidden, w->fx)))
                s = xa_op_linear_w(w->g, n, hidden, f->w2, f->b2, d, o + r0 * d, 1);
        }
    }
    return s;
}

/* Feed-forward backward: dstream (rows, d), the gradient of the stream after the block
 * (x1 + ff), becomes that of x1. Block by block of rows: the norm, hidden layer and GELU
 * recomputed, the weights' gradients summed over the blocks in order. */
static xattn_status ff_backward(bd_bwd *w, const bd_ff *f, int base, const float *x1, int64_t rows,
                                int64_t d, int64_t hidden, float *dstream)
{
    xattn_status s = XATTN_OK;
    dp_zero(w, base + F_NORM, d); /* added to below, with the stream's gradient */
    for (int64_t r0 = 0; r0 < rows && !s; r0 += FF_ROWS) {
        const int64_t n = XA_MIN(FF_ROWS, rows - r0);
        const int acc = r0 > 0;
        float *ds = dstream + r0 * d;
        if ((s = ff_recompute(w, f, x1 + r0 * d, n, d, hidden, w->fx)) ||
            (s = xa_op_linear_backward(w->g, n, hidden, xa_wt_f(f->w2), d, ds, w->dg,
                                       dp(w, base + F_W2), dp(w, base + F_B2), acc)))
            break;
        xa_op_gelu_backward(w->hid, w->dg, w->dg, n * hidden, 0);
        if (!(s = xa_op_linear_backward(w->fx, n, d, xa_wt_f(f->w1), hidden, w->dg, w->dfx,
                                        dp(w, base + F_W1), dp(w, base + F_B1), acc)))
            s = xa_op_rmsnorm_backward(x1 + r0 * d, n, d, f->norm_w, FLT_EPSILON, w->dfx, ds,
                                       dp(w, base + F_NORM), 1);
    }
    if (rows == 0) { /* a sharded run's empty shard: no share of the weights' gradients */
        dp_zero(w, base + F_W1, hidden * d), dp_zero(w, base + F_B1, hidden);
        dp_zero(w, base + F_W2, d * hidden), dp_zero(w, base + F_B2, d);
    }
    return s;
}

/* The two projections' gradients: dW (2 inner, d) split into to_qk / to_v; din = dpqv W. */
static xattn_status proj_backward(bd_bwd *w, const float *xin, int64_t rows, int64_t d,
                                  const float *W, const float *dpqv, float *din, float *dWtmp,
                                  int iqk, int iv, int64_t inner)
{
    float *dq = dp(w, iqk), *dv = dp(w, iv);
    xattn_status s = xa_op_linear_backward(xin, rows, d, W, 2 * inner, dpqv, din,
                                           dq || dv ? dWtmp : NULL, NULL, 0);
    if (s) return s;
    if (dq) memcpy(dq, dWtmp, sizeof(float) * (size_t)(inner * d));
    if (dv) memcpy(dv, dWtmp + inner * d, sizeof(float) * (size_t)(inner * d));
    return XATTN_OK;
}

/* The attention's backward of a layer: w->d_oh, w->d_coh into w->dpqv, w->dcpqv, the talking
 * heads' and the bias's gradients. */
static xattn_status attn_backward(bd_bwd *w, const bd_layer *L, const bd_saved *v, int base)
{
    const xattn_bidir_config *c = &w->m->cfg;
    const int64_t inner = c->inner_dim;
    const bd_scratch sc = {NULL, NULL, v->pqv, v->cpqv, v->oh, v->coh, NULL};
    xa_bidir p;
    describe(c, w->in, &sc, &p);
    p.talk = L->attn.talk;
    p.ctalk = L->attn.ctalk;
    xa_bidir_grad g;
    memset(&g, 0, sizeof g);
    g.dout = w->d_oh, g.do_sb = p.o_sb, g.do_sh = p.o_sh, g.do_si = p.o_si;
    g.dcout = w->d_coh, g.dco_sb = p.co_sb, g.dco_sh = p.co_sh, g.dco_sj = p.co_sj;
    g.dqk = w->dpqv, g.dqk_sb = p.qk_sb, g.dqk_sh = p.qk_sh, g.dqk_si = p.qk_si;
    g.dv = w->dpqv + inner, g.dv_sb = p.v_sb, g.dv_sh = p.v_sh, g.dv_si = p.v_si;
    g.dcqk = w->dcpqv, g.dcqk_sb = p.cqk_sb, g.dcqk_sh = p.cqk_sh, g.dcqk_sj = p.cqk_sj;
    g.dcv = w->dcpqv + inner, g.dcv_sb = p.cv_sb, g.dcv_sh = p.cv_sh, g.dcv_sj = p.cv_sj;
    g.dtalk = dp(w, base + A_TALK);
    g.dctalk = dp(w, base + A_CTALK);
    g.dbias = w->dbias, g.dbias_sb = p.bias_sb, g.dbias_sh = p.bias_sh;
    g.lse = v->lse, g.clse = v->clse;
    if (w->dbias && w->bias_started) { /* the bias is every layer's: add this layer's part */
        memset(w->dpqv, 0, sizeof(float) * (size_t)(w->nI * 2 * inner));
        memset(w->dcpqv, 0, sizeof(float) * (size_t)(w->nJ * 2 * inner));
        if (g.dtalk) memset(g.dtalk, 0, sizeof(float) * (size_t)(c->heads * c->heads));
        if (g.dctalk) memset(g.dctalk, 0, sizeof(float) * (size_t)(c->heads * c->heads));
        g.accumulate = 1;
    }
    xattn_status s = xa_op_bidir_backward(&p, &g);
    if (!s) w->bias_started = 1;
    return s;
}

/* A layer's projections and residual streams again, from its input streams and kept attention
 * outputs (the buffers hold the last layer's after the forward). */
static xattn_status layer_recompute(bd_bwd *w, const bd_layer *L, const bd_saved *v, const float *x,
                                    const float *ctx)
{
    const xattn_bidir_config *c = &w->m->cfg;
    const int64_t nI = w->nI, nJ = w->nJ, dim = c->dim, cd = c->context_dim;
    const int pre = c->prenorm != XATTN_NORM_NONE;
    xattn_status s = prenorms(w, L, x, ctx);
    if (s ||
        (s = xa_op_linear_w(pre ? w->xn : x, nI, dim, L->attn.w_qkv, NULL, 2 * c->inner_dim, v->pqv,
                            0)) ||
        (s = xa_op_linear_w(pre ? w->cn : ctx, nJ, cd, L->attn.cw_qkv, NULL, 2 * c->inner_dim,
                            v->cpqv, 0)))
        return s;
    if (!c->is_transformer) return XATTN_OK;
    memcpy(v->x1, x, sizeof(float) * (size_t)(nI * dim));
    memcpy(v->c1, ctx, sizeof(float) * (size_t)(nJ * cd));
    if ((s = xa_op_linear_w(v->oh, nI, c->inner_dim, L->attn.wo, L->attn.bo, dim, v->x1, 1)))
        return s;
    return xa_op_linear_w(v->coh, nJ, c->inner_dim, L->attn.cwo, L->attn.cbo, cd, v->c1, 1);
}

/* One layer's backward: w->dx, w->dc hold the gradients of its outputs (the transformer's
 * streams after the layer; the block's out and context_out otherwise) and become those of its
 * inputs x, ctx. */
static xattn_status layer_backward(bd_bwd *w, const bd_layer *L, const bd_saved *v, int base,
                                   const float *x, const float *ctx)
{
    const xattn_bidir *m = w->m;
    const xattn_bidir_config *c = &m->cfg;
    const int64_t nI = w->nI, nJ = w->nJ, dim = c->dim, cd = c->context_dim, inner = c->inner_dim;
    const int tf = c->is_transformer;
    xattn_status s;
    if (tf && ((s = ff_backward(w, &L->ff, base + A_N, v->x1, nI, dim, c->ff_hidden, w->dx)) ||
               (s = ff_backward(w, &L->cff, base + A_N + F_N, v->c1, nJ, cd, c->context_ff_hidden,
                                w->dc))))
        return s;
    /* output projections (the transformer: of the residual branch, dx is also x's) */
    if ((s = xa_op_linear_backward(v->oh, nI, inner, xa_wt_f(L->attn.wo), dim, w->dx, w->d_oh,
                                   dp(w, base + A_OUT_W), dp(w, base + A_OUT_B), 0)) ||
        (s = xa_op_linear_backward(v->coh, nJ, inner, xa_wt_f(L->attn.cwo), cd, w->dc, w->d_coh,
                                   dp(w, base + A_COUT_W), dp(w, base + A_COUT_B), 0)) ||
        (s = attn_backward(w, L, v, base)))
        return s;
    /* projections and prenorms */
    const int pre = c->prenorm != XATTN_NORM_NONE; /* w->xn, w->cn: this layer's prenorms */
    if ((s = proj_backward(w, pre ? w->xn : x, nI, dim, xa_wt_f(L->attn.w_qkv), w->dpqv, w->dxin,
                           w->dW, base + A_QK, base + A_V, inner)) ||
        (s = proj_backward(w, pre ? w->cn : ctx, nJ, cd, xa_wt_f(L->attn.cw_qkv), w->dcpqv, w->dcin,
                           w->dcW, base + A_CQK, base + A_CV, inner)))
        return s;
    /* the stream's gradient: the residual's (transformer) plus the attention path's */
    if (!pre) {
        memcpy(w->dx, w->dxin, sizeof(float) * (size_t)(nI * dim));
        memcpy(w->dc, w->dcin, sizeof(float) * (size_t)(nJ * cd));
        return XATTN_OK;
    }
    if (tf) { /* added to below, with the streams' gradients */
        dp_zero(w, base + A_NORM_W, dim);
        dp_zero(w, base + A_NORM_B, dim);
        dp_zero(w, base + A_CNORM_W, cd);
        dp_zero(w, base + A_CNORM_B, cd);
    }
    if ((s = prenorm_backward(c->prenorm, x, nI, dim, L->attn.norm_w, w->dxin, w->dx,
                              dp(w, base + A_NORM_W), dp(w, base + A_NORM_B), tf)))
        return s;
    return prenorm_backward(c->prenorm, ctx, nJ, cd, L->attn.cnorm_w, w->dcin, w->dc,
                            dp(w, base + A_CNORM_W), dp(w, base + A_CNORM_B), tf);
}

/* Carves n floats off *base (16-float aligned). */
static float *carve(float **base, int64_t n)
{
    float *r = *base;
    *base += (n + 15) / 16 * 16;
    return r;
}

/* The typed inputs of a named run: (I, J), (heads or 1, I, J) or (B or 1, heads or 1, I, J)
 * for rel_pos_bias. */
static void named_inputs(const xa_run *r, xattn_bidir_inputs *in)
{
    memset(in, 0, sizeof *in);
    in->B = xa_run_sym(r, "B");
    in->I = xa_run_sym(r, "I");
    in->J = xa_run_sym(r, "J");
    in->x = r->in[0];
    in->context = r->in[1];
    in->mask = r->in[2];
    in->context_mask = r->in[3];
    if (r->in[4]) {
        const int nd = r->in_ndim[4];
        in->rel_pos_bias = r->in[4];
        in->bias_b = nd == 4 ? r->in_shape[4][0] : 1;
        in->bias_h = nd >= 3 ? r->in_shape[4][nd - 3] : 1;
    }
}

/* Floats of the backward's memory (one block), or -1 when it overflows. */
static double bwd_floats(const xattn_bidir_config *c, const xattn_bidir_inputs *in)
{
    const double nI = (double)(in->B * in->I), nJ = (double)(in->B * in->J), L = (double)c->depth;
    const double dim = (double)c->dim, cd = (double)c->context_dim, inner = (double)c->inner_dim;
    const double tf = c->is_transformer, hx = tf ? (double)c->ff_hidden : 0.0,
                 hc = tf ? (double)c->context_ff_hidden : 0.0, H = (double)c->heads;
    const double per_layer = inner * (nI + nJ) + H * (nI + nJ);
    return L * per_layer + L * tf * (nI * dim + nJ * cd) + 7.0 * (nI * dim + nJ * cd) +
           2.0 * inner * (nI + nJ) + 3.0 * (nI + nJ) * inner + 3.0 * FF_ROWS * fmax(hx, hc) +
           2.0 * FF_ROWS * fmax(dim, cd) + 2.0 * inner * (dim + cd) + 32.0 * (L + 10) * 16;
}

static xattn_status backward_named(const xa_mod *core, const xa_run *r, xa_grad *gr)
{
    const xattn_bidir *m = (const xattn_bidir *)core;
    const xattn_bidir_config *c = &m->cfg;
    xattn_bidir_inputs in;
    named_inputs(r, &in);
    xattn_bidir_outputs o;
    memset(&o, 0, sizeof o);
    o.out = r->out[0];
    o.context_out = r->out[1];
    xattn_status s = check_call(m, &in, &o);
    if (s) return s;
    const int64_t nI = in.B * in.I, nJ = in.B * in.J, dim = c->dim, cd = c->context_dim;
    const int64_t inner = c->inner_dim, L = c->depth, tf = c->is_transformer, H = c->heads;
    const int64_t hx = tf ? c->ff_hidden : 0, hc = tf ? c->context_ff_hidden : 0;
    const double total = bwd_floats(c, &in);
    if (total * sizeof(float) > 0.9 * (double)SIZE_MAX || total > 1e12)
        return xa_error(XATTN_ERR_NOMEM, "%s: backward scratch too large", FN_FWD);
    float *mem = xa_alloc(sizeof(float) * (size_t)total);
    bd_saved *sv = calloc((size_t)L, sizeof *sv);
    if (!mem || !sv) {
        xa_free(mem);
        free(sv);
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory for the backward", FN_FWD);
    }
    float *q = mem;
    bd_bwd w;
    memset(&w, 0, sizeof w);
    w.m = m, w.in = &in, w.nI = nI, w.nJ = nJ, w.dparam = gr->dparam, w.sv = sv;
    w.dbias = gr->din[4];
    float *pqv = carve(&q, nI * 2 * inner), *cpqv = carve(&q, nJ * 2 * inner);
    float *x1 = carve(&q, tf * nI * dim), *c1 = carve(&q, tf * nJ * cd);
    for (int64_t l = 0; l < L; l++) {
        bd_saved *v = &sv[l];
        v->oh = carve(&q, nI * inner), v->coh = carve(&q, nJ * inner);
        v->lse = carve(&q, in.B * H * in.I), v->clse = carve(&q, in.B * H * in.J);
        v->pqv = pqv, v->cpqv = cpqv, v->x1 = x1, v->c1 = c1; /* shared, recomputed */
    }
    /* the layers' input streams: layer 0's are the inputs, the last layer's output is the
     * module's output unless final norms follow (then kept for their backward) */
    const int64_t own_last = m->fnorm_w != NULL;
    float *streams = tf ? carve(&q, (L - 1 + own_last) * (nI * dim + nJ * cd)) : NULL;
    const int64_t pre = c->prenorm != XATTN_NORM_NONE; /* the prenormed inputs, when any */
    w.xn = carve(&q, pre * nI * dim), w.cn = carve(&q, pre * nJ * cd);
    const int64_t dmax = FF_ROWS * XA_MAX(dim, cd), hmax = FF_ROWS * XA_MAX(hx, hc);
    w.fx = carve(&q, dmax), w.dfx = carve(&q, dmax);
    w.hid = carve(&q, hmax), w.g = carve(&q, hmax);
    w.dx = carve(&q, nI * dim), w.dc = carve(&q, nJ * cd);
    w.d_oh = carve(&q, nI * inner), w.d_coh = carve(&q, nJ * inner);
    w.dpqv = carve(&q, nI * 2 * inner), w.dcpqv = carve(&q, nJ * 2 * inner);
    w.dxin = carve(&q, nI * dim), w.dcin = carve(&q, nJ * cd);
    w.dW = carve(&q, 2 * inner * dim), w.dcW = carve(&q, 2 * inner * cd);
    w.dg = carve(&q, hmax);
    const int per = tf ? TF_PER_LAYER : A_N;
    /* the forward, keeping each layer's activations and input streams */
#define XW(l) ((l) == L && !own_last ? o.out : streams + ((l)-1) * (nI * dim + nJ * cd))
#define CW(l) ((l) == L && !own_last ? o.context_out : XW(l) + nI * dim)
#define XS(l) ((l) == 0 ? in.x : (const float *)XW(l))
#define CS(l) ((l) == 0 ? in.context : (const float *)CW(l))
    if (tf) {
        for (int64_t l = 0; l < L && !s; l++)
            s = layer_forward(&w, &m->layers[l], &sv[l], XS(l), CS(l), XW(l + 1), CW(l + 1));
        if (!s && own_last) { /* the outputs: the final norms of the last streams */
            if (!(s = xa_op_rmsnorm(XS(L), nI, dim, m->fnorm_w, FLT_EPSILON, o.out)))
                s = xa_op_rmsnorm(CS(L), nJ, cd, m->fcnorm_w, FLT_EPSILON, o.context_out);
        }
    } else {
        const bd_attn *a = &m->layers[0].attn;
        if (!(s = layer_forward(&w, &m->layers[0], &sv[0], in.x, in.context, NULL, NULL)) &&
            !(s = xa_op_linear_w(sv[0].oh, nI, inner, a->wo, a->bo, dim, o.out, 0)))
            s = xa_op_linear_w(sv[0].coh, nJ, inner, a->cwo, a->cbo, cd, o.context_out, 0);
    }
    /* the outputs' gradients (a loss sets them from the outputs now) */
    if (!s) s = xa_grad_outputs(gr, r);
    if (!s) {
        if (gr->dout[0])
            memcpy(w.dx, gr->dout[0], sizeof(float) * (size_t)(nI * dim));
        else
            memset(w.dx, 0, sizeof(float) * (size_t)(nI * dim));
        if (gr->dout[1])
            memcpy(w.dc, gr->dout[1], sizeof(float) * (size_t)(nJ * cd));
        else
            memset(w.dc, 0, sizeof(float) * (size_t)(nJ * cd));
    }
    if (!s && tf && m->fnorm_w) { /* through the final norms */
        const int fin = (int)L * per;
        memcpy(w.dxin, w.dx, sizeof(float) * (size_t)(nI * dim));
        memcpy(w.dcin, w.dc, sizeof(float) * (size_t)(nJ * cd));
        if (!(s = xa_op_rmsnorm_backward(XS(L), nI, dim, m->fnorm_w, FLT_EPSILON, w.dxin, w.dx,
                                         dp(&w, fin + N_NORM), 0)))
            s = xa_op_rmsnorm_backward(CS(L), nJ, cd, m->fcnorm_w, FLT_EPSILON, w.dcin, w.dc,
                                       dp(&w, fin + N_CNORM), 0);
    }
    for (int64_t l = L - 1; l >= 0 && !s; l--) {
        const float *xl = tf ? XS(l) : in.x, *cl = tf ? CS(l) : in.context;
        if (l != L - 1) s = layer_recompute(&w, &m->layers[l], &sv[l], xl, cl);
        if (!s) s = layer_backward(&w, &m->layers[l], &sv[l], (int)l * per, xl, cl);
    }
#undef XW
#undef CW
#undef XS
#undef CS
    if (!s && gr->din[0]) memcpy(gr->din[0], w.dx, sizeof(float) * (size_t)(nI * dim));
    if (!s && gr->din[1]) memcpy(gr->din[1], w.dc, sizeof(float) * (size_t)(nJ * cd));
    xa_free(mem);
    free(sv);
    return s;
}
