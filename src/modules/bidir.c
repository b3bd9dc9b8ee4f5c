/*
 * M2: bidirectional cross-attention (PyPI bidirectional-cross-attention 0.1.0, and 0.0.x).
 *
 *   BidirectionalCrossAttention          [norm.weight [norm.bias], context_norm.weight [...]]
 *                                        to_qk.weight (inner, dim), to_v.weight (inner, dim),
 *                                        context_to_qk.weight (inner, context_dim),
 *                                        context_to_v.weight (inner, context_dim),
 *                                        to_out.weight (dim, inner), to_out.bias (dim),
 *                                        context_to_out.weight (context_dim, inner),
 *                                        context_to_out.bias (context_dim)
 *                                        [talking_heads.weight (H, H, 1, 1),
 *                                         context_talking_heads.weight (H, H, 1, 1)]
 *   BidirectionalCrossAttentionTransformer
 *                                        layers.L.0.<the names above> (prenorm always),
 *                                        layers.L.1.{0.weight, 1.weight, 1.bias, 3.weight,
 *                                        3.bias} (FeedForward of x: RMSNorm, Linear, GELU,
 *                                        Linear), layers.L.2.* (of the context),
 *                                        [norm.weight (dim), context_norm.weight (dim as the
 *                                        package builds it, or context_dim)]
 *
 * Prenorm: nn.RMSNorm(eps=None) (weight only; eps = FLT_EPSILON for fp32) in 0.1.0, nn.LayerNorm
 * (weight and bias, eps 1e-5) in 0.0.x. FeedForward: RMSNorm (FLT_EPSILON), Linear, exact erf
 * GELU, Linear. Heads: the talking-heads weight's size (a caller's heads or __metadata__
 * "heads" must agree with it), else the caller's heads, else __metadata__ "heads", else 8 (the
 * package default); dim_head = inner / heads.
 *
 * Loading checks every tensor (dtype, shape, presence, the same prenorm / talking heads / widths
 * in every layer) before it allocates anything that grows with the depth, so a forged file
 * naming a huge layer index costs nothing; then all weights go into one allocation.
 *
 * forward of one attention: prenorm into scratch; ONE xattn_linear for x against to_qk and
 * to_v stored back to back ((2*inner, dim), so each row of the result holds qk then v), one for
 * the context; xa_bidir_attention reads the heads in place through strides ((h d) channel split,
 * no transposes) and writes both merged-head outputs; then to_out / context_to_out. The
 * transformer adds the output projections straight onto its residual streams (which live in
 * the caller's out / context_out buffers) and runs the feed-forwards the same way.
 */
#include "base/base.h"
#include "modules/weights.h"
#include "kernels/kernels.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------- */
/* Module                                                                                   */
/* ---------------------------------------------------------------------------------------- */

typedef struct bd_attn {
    const float *norm_w, *norm_b;   /* (dim) each, or NULL (no prenorm / RMSNorm has no bias)   */
    const float *cnorm_w, *cnorm_b; /* (context_dim)                                            */
    const float *w_qkv;             /* (2*inner, dim): to_qk.weight rows, then to_v.weight rows */
    const float *cw_qkv;            /* (2*inner, context_dim)                                   */
    const float *wo, *bo;           /* (dim, inner), (dim)                                      */
    const float *cwo, *cbo;         /* (context_dim, inner), (context_dim)                      */
    const float *talk, *ctalk;      /* (H, H) [g][h] each, or NULL                              */
} bd_attn;

typedef struct bd_ff {
    const float *norm_w; /* (d) RMSNorm weight                */
    const float *w1, *b1; /* (hidden, d), (hidden)            */
    const float *w2, *b2; /* (d, hidden), (d)                 */
} bd_ff;

typedef struct bd_layer {
    bd_attn attn;
    bd_ff ff, cff; /* transformer only */
} bd_layer;

struct xattn_bidir {
    xattn_bidir_config cfg;
    bd_layer *layers;               /* cfg.depth                                  */
    const float *fnorm_w, *fcnorm_w; /* transformer final norms, or NULL          */
    float *block;                   /* every weight, one allocation               */
};

/* ---------------------------------------------------------------------------------------- */
/* Tensor lookup and checks                                                                 */
/* ---------------------------------------------------------------------------------------- */

#define XA_WREF_NAME_MAX 512
#define BD_MAX_DEPTH 100000

/* Attention names, in block order: to_v right after to_qk, context_to_v after context_to_qk. */
enum {
    A_NORM_W, A_NORM_B, A_CNORM_W, A_CNORM_B, A_QK, A_V, A_CQK, A_CV,
    A_OUT_W, A_OUT_B, A_COUT_W, A_COUT_B, A_TALK, A_CTALK, A_N
};
static const char *const attn_names[A_N] = {
    "norm.weight", "norm.bias", "context_norm.weight", "context_norm.bias",
    "to_qk.weight", "to_v.weight", "context_to_qk.weight", "context_to_v.weight",
    "to_out.weight", "to_out.bias", "context_to_out.weight", "context_to_out.bias",
    "talking_heads.weight", "context_talking_heads.weight"};

/* FeedForward names (nn.Sequential indices); F_NORM_B must be absent. */
enum { F_NORM, F_W1, F_B1, F_W2, F_B2, F_NORM_B, F_N };
static const char *const ff_names[F_N] = {"0.weight", "1.weight", "1.bias",
                                         "3.weight", "3.bias", "0.bias"};

/* Final norms of the transformer; the biases must be absent. */
enum { N_NORM_W, N_NORM_B, N_CNORM_W, N_CNORM_B, N_N };
static const char *const final_names[N_N] = {"norm.weight", "norm.bias", "context_norm.weight",
                                             "context_norm.bias"};

#define LAYER_REFS (A_N + 2 * F_N)

/* A float rank-2 tensor with no empty dimension (sizes still free). */
static xattn_status check_matrix(const xa_wref *t, const char *what)
{
    xattn_status s = xa_wref_check_float(t);
    if (s) return s;
    char got[128];
    if (t->ndim != 2 || t->shape[0] <= 0 || t->shape[1] <= 0)
        return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s; expected %s", t->shown,
                        xa_wref_shape(t, got, sizeof got), what);
    return XATTN_OK;
}

/* A float tensor of exactly `ndim` dims `want`; `why` says where the sizes come from. */
static xattn_status check_shape(const xa_wref *t, int ndim, const int64_t *want, const char *why)
{
    xattn_status s = xa_wref_check_float(t);
    if (s) return s;
    int ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == want[d];
    if (ok) return XATTN_OK;
    char got[128], exp[128];
    return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s; expected %s (%s)", t->shown,
                    xa_wref_shape(t, got, sizeof got), xa_dims_str(ndim, want, exp, sizeof exp), why);
}

static xattn_status check_1d(const xa_wref *t, int64_t n, const char *why)
{
    return check_shape(t, 1, &n, why);
}

static xattn_status check_2d(const xa_wref *t, int64_t r, int64_t c, const char *why)
{
    const int64_t w[2] = {r, c};
    return check_shape(t, 2, w, why);
}

/* Lays out the present refs of r[0..n) in the weight block from *off on (64-byte aligned slots;
 * a glued ref directly follows the previous one) and advances *off; with a block, sets each
 * ref's dst and copies its data in. */
static xattn_status place(const xattn_safetensors *st, xa_wref *r, int n, int64_t *off,
                          float *block)
{
    for (int k = 0; k < n; k++) {
        if (!r[k].present) continue;
        if (!r[k].glue && *off % 16) *off += 16 - *off % 16;
        const int64_t e = xa_wref_numel(&r[k]);
        if (e > INT64_MAX / 8 - *off)
            return xa_error(XATTN_ERR_NOMEM, "xattn_bidir_load: weights overflow");
        if (block) {
            r[k].dst = block + *off;
            xattn_status s = xa_wref_fetch(st, &r[k]);
            if (s != XATTN_OK) return s;
        }
        *off += e;
    }
    return XATTN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Loading                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Depth of a transformer at `prefix`: 1 + the largest L of any name prefix + "layers.L.";
 * error for an index with leading zeros or one too large. */
static xattn_status find_depth(const xattn_safetensors *st, const char *prefix, int64_t *depth)
{
    const size_t plen = strlen(prefix);
    const size_t n = xattn_st_count(st);
    int64_t maxl = -1;
    for (size_t i = 0; i < n; i++) {
        const char *name = xattn_st_name(st, i);
        if (!name || strncmp(name, prefix, plen) || strncmp(name + plen, "layers.", 7)) continue;
        const char *p = name + plen + 7, *q = p;
        int64_t l = 0;
        for (; *q >= '0' && *q <= '9'; q++)
            if (l <= BD_MAX_DEPTH) l = l * 10 + (*q - '0');
        if (q == p || *q != '.') continue; /* not a layer index: not ours */
        char shown[XA_IO_NAME_CAP];
        if ((q - p > 1 && *p == '0') || l > BD_MAX_DEPTH)
            return xa_error(XATTN_ERR_FORMAT,
                            "tensor '%s': layer index is not a plain integer below %d",
                            xa_io_printable(name, shown, sizeof shown), BD_MAX_DEPTH);
        if (l > maxl) maxl = l;
    }
    /* every layer up to the last one named must be there (a gap is a missing tensor) */
    char mid[64];
    for (int64_t l = 0; l <= maxl; l++) {
        snprintf(mid, sizeof mid, "layers.%lld.0.to_qk.weight", (long long)l);
        if (!xa_wref_has(st, prefix, mid)) {
            char pp[XA_IO_NAME_CAP];
            return xa_error(XATTN_ERR_NOT_FOUND,
                            "tensor '%s%s' is missing (the file names layers up to %lld)",
                            xa_io_printable(prefix, pp, sizeof pp), mid, (long long)maxl);
        }
    }
    *depth = maxl + 1;
    return XATTN_OK;
}

typedef struct bd_dims {
    int64_t dim, cdim, inner, H, hidden, chidden;
    xattn_bidir_norm norm;
    int talking;
} bd_dims;

/* Finds the refs of one attention (names prefix + mid + attn_names). */
static xattn_status find_attn(const xattn_safetensors *st, const char *prefix, const char *mid,
                              xa_wref *r)
{
    xattn_status s;
    for (int k = 0; k < A_N; k++)
        if ((s = xa_wref_find(st, "xattn_bidir_load", prefix, mid, attn_names[k], &r[k]))) return s;
    r[A_V].glue = 1;
    r[A_CV].glue = 1;
    return XATTN_OK;
}

/* Sizes fixed by the first attention: dim, context_dim, inner (not heads). */
static xattn_status first_dims(xa_wref *r, bd_dims *d)
{
    xattn_status s;
    if (!r[A_QK].present) return xa_wref_missing(&r[A_QK], "the shared query/key projection of x");
    if ((s = check_matrix(&r[A_QK], "(inner_dim, dim)"))) return s;
    d->inner = r[A_QK].shape[0];
    d->dim = r[A_QK].shape[1];
    if (!r[A_CQK].present)
        return xa_wref_missing(&r[A_CQK], "the shared query/key projection of the context");
    if ((s = check_matrix(&r[A_CQK], "(inner_dim, context_dim)"))) return s;
    if (r[A_CQK].shape[0] != d->inner) {
        char got[128];
        return xa_error(XATTN_ERR_SHAPE,
                        "tensor '%s' has shape %s; expected (%lld, context_dim) (inner_dim from "
                        "'%s')",
                        r[A_CQK].shown, xa_wref_shape(&r[A_CQK], got, sizeof got),
                        (long long)d->inner, r[A_QK].shown);
    }
    d->cdim = r[A_CQK].shape[1];
    if (r[A_NORM_W].present) d->norm = r[A_NORM_B].present ? XATTN_NORM_LAYER : XATTN_NORM_RMS;
    else d->norm = XATTN_NORM_NONE;
    d->talking = r[A_TALK].present;
    return XATTN_OK;
}

/* Heads: talking-heads size, else heads_arg, else metadata, else 8; disagreements are errors. */
static xattn_status resolve_heads(const xattn_safetensors *st, const xa_wref *talk, const xa_wref *qk,
                                  int64_t heads_arg, bd_dims *d)
{
    int64_t want = 0;
    const char *src = NULL;
    char srcbuf[96];
    if (heads_arg > 0) {
        want = heads_arg;
        snprintf(srcbuf, sizeof srcbuf, "heads argument %lld", (long long)want);
        src = srcbuf;
    } else {
        const char *mv = xattn_st_meta_get(st, "heads");
        if (mv) {
            want = xa_parse_positive(mv);
            if (want <= 0) {
                char shown[48];
                return xa_error(XATTN_ERR_FORMAT,
                                "__metadata__ 'heads' is \"%s\", not a positive integer",
                                xa_io_printable(mv, shown, sizeof shown));
            }
            snprintf(srcbuf, sizeof srcbuf, "__metadata__ 'heads' = %lld", (long long)want);
            src = srcbuf;
        }
    }
    if (talk->present) {
        xattn_status s = xa_wref_check_float(talk);
        if (s) return s;
        char got[128];
        xa_wref_shape(talk, got, sizeof got);
        if (talk->ndim != 4 || talk->shape[0] <= 0 || talk->shape[1] != talk->shape[0] ||
            talk->shape[2] != 1 || talk->shape[3] != 1)
            return xa_error(XATTN_ERR_SHAPE,
                            "tensor '%s' has shape %s; expected (heads, heads, 1, 1) (a 1x1 "
                            "Conv2d over heads)",
                            talk->shown, got);
        const int64_t ht = talk->shape[0];
        if (want > 0 && want != ht)
            return xa_error(XATTN_ERR_SHAPE, "%s disagrees with tensor '%s' of shape %s (%lld heads)",
                            src, talk->shown, got, (long long)ht);
        d->H = ht;
    } else {
        d->H = want > 0 ? want : 8;
    }
    if (d->inner % d->H != 0)
        return xa_error(XATTN_ERR_SHAPE,
                        "inner dim %lld (rows of '%s') is not divisible by heads %lld%s",
                        (long long)d->inner, qk->shown, (long long)d->H,
                        talk->present || want > 0
                            ? ""
                            : " (the package default: give the heads, or store __metadata__ "
                              "{\"heads\": \"N\"})");
    return XATTN_OK;
}

/* Checks one attention's refs against the sizes taken from the first attention `first` (whose
 * names the messages cite). */
static xattn_status check_attn(xa_wref *r, const bd_dims *d, const xa_wref *first)
{
    xattn_status s;
    char why[256], why_c[256], why_i[256];
    snprintf(why, sizeof why, "inner_dim, dim from '%s'", first[A_QK].shown);
    snprintf(why_c, sizeof why_c, "inner_dim, context_dim from '%s', '%s'", first[A_QK].shown,
             first[A_CQK].shown);
    snprintf(why_i, sizeof why_i, "dim, inner_dim from '%s'", first[A_QK].shown);
    static const char *const what[A_N] = {
        "prenorm of x", "prenorm of x", "prenorm of the context", "prenorm of the context",
        "the shared query/key projection of x", "the value projection of x",
        "the shared query/key projection of the context", "the value projection of the context",
        "the output projection of x", "the output projection of x",
        "the output projection of the context", "the output projection of the context",
        "talking heads of x", "talking heads of the context"};
    for (int k = A_QK; k <= A_COUT_B; k++)
        if (!r[k].present) return xa_wref_missing(&r[k], what[k]);
    if ((s = check_2d(&r[A_QK], d->inner, d->dim, why)) ||
        (s = check_2d(&r[A_V], d->inner, d->dim, why)) ||
        (s = check_2d(&r[A_CQK], d->inner, d->cdim, why_c)) ||
        (s = check_2d(&r[A_CV], d->inner, d->cdim, why_c)) ||
        (s = check_2d(&r[A_OUT_W], d->dim, d->inner, why_i)) ||
        (s = check_1d(&r[A_OUT_B], d->dim, why_i)))
        return s;
    snprintf(why_i, sizeof why_i, "context_dim, inner_dim from '%s', '%s'", first[A_CQK].shown,
             first[A_QK].shown);
    if ((s = check_2d(&r[A_COUT_W], d->cdim, d->inner, why_i)) ||
        (s = check_1d(&r[A_COUT_B], d->cdim, why_i)))
        return s;

    /* prenorm: none, RMSNorm (weights only) or LayerNorm (weights and biases), the same kind
     * on both sides and as the first attention */
    char first_kind[160];
    snprintf(first_kind, sizeof first_kind, "'%s' %s", first[A_NORM_W].shown,
             first[A_NORM_W].present ? "is present" : "is absent");
    if (d->norm == XATTN_NORM_NONE) {
        for (int k = A_NORM_W; k <= A_CNORM_B; k++)
            if (r[k].present)
                return xa_error(XATTN_ERR_FORMAT,
                                "tensor '%s' present but %s (no prenorm): the prenorm must be the "
                                "same in every attention",
                                r[k].shown, first_kind);
    } else {
        if (!r[A_NORM_W].present)
            return xa_wref_missing(&r[A_NORM_W], "prenorm of x, as in the first attention");
        if (!r[A_CNORM_W].present)
            return xa_wref_missing(&r[A_CNORM_W], "prenorm of the context: prenorm normalises both inputs");
        const int layer = d->norm == XATTN_NORM_LAYER;
        if (layer) {
            if (!r[A_NORM_B].present)
                return xa_wref_missing(&r[A_NORM_B], "nn.LayerNorm prenorm (0.0.x), as in the first attention");
            if (!r[A_CNORM_B].present)
                return xa_wref_missing(&r[A_CNORM_B], "nn.LayerNorm prenorm (0.0.x) of the context");
        } else {
            if (r[A_NORM_B].present || r[A_CNORM_B].present)
                return xa_error(XATTN_ERR_FORMAT,
                                "tensor '%s' present but the first attention's prenorm is "
                                "nn.RMSNorm (no bias)",
                                r[A_NORM_B].present ? r[A_NORM_B].shown : r[A_CNORM_B].shown);
        }
        snprintf(why, sizeof why, "dim from '%s'", first[A_QK].shown);
        snprintf(why_c, sizeof why_c, "context_dim from '%s'", first[A_CQK].shown);
        if ((s = check_1d(&r[A_NORM_W], d->dim, why)) ||
            (s = check_1d(&r[A_CNORM_W], d->cdim, why_c)))
            return s;
        if (layer && ((s = check_1d(&r[A_NORM_B], d->dim, why)) ||
                      (s = check_1d(&r[A_CNORM_B], d->cdim, why_c))))
            return s;
    }

    /* talking heads: both or neither, (H, H, 1, 1), as the first attention */
    if (r[A_TALK].present != d->talking || r[A_CTALK].present != d->talking) {
        const xa_wref *t = r[A_TALK].present != d->talking ? &r[A_TALK] : &r[A_CTALK];
        if (t->present)
            return xa_error(XATTN_ERR_FORMAT,
                            "tensor '%s' present but '%s' is absent: talking heads come in pairs "
                            "and in every attention",
                            t->shown, first[A_TALK].shown);
        return xa_wref_missing(t, "talking heads come in pairs and in every attention");
    }
    if (d->talking) {
        const int64_t w[4] = {d->H, d->H, 1, 1};
        char hw[96];
        snprintf(hw, sizeof hw, "%lld heads", (long long)d->H);
        if ((s = check_shape(&r[A_TALK], 4, w, hw)) || (s = check_shape(&r[A_CTALK], 4, w, hw)))
            return s;
    }
    return XATTN_OK;
}

/* Checks one FeedForward (d, hidden); hidden <= 0: taken from this one. */
static xattn_status check_ff(xa_wref *r, int64_t dsize, int64_t *hidden, const char *dname,
                             const xa_wref *dsrc)
{
    xattn_status s;
    static const char *const what = "FeedForward: RMSNorm, Linear, GELU, Linear";
    if (r[F_NORM_B].present)
        return xa_error(XATTN_ERR_FORMAT,
                        "tensor '%s' present: the FeedForward's norm is an nn.RMSNorm (no bias)",
                        r[F_NORM_B].shown);
    for (int k = F_NORM; k <= F_B2; k++)
        if (!r[k].present) return xa_wref_missing(&r[k], what);
    char why[256];
    snprintf(why, sizeof why, "%s from '%s'", dname, dsrc->shown);
    if ((s = check_1d(&r[F_NORM], dsize, why))) return s;
    if (*hidden <= 0) {
        if ((s = check_matrix(&r[F_W1], "(hidden, d)"))) return s;
        *hidden = r[F_W1].shape[0];
    }
    snprintf(why, sizeof why, "hidden, %s from the first layer", dname);
    if ((s = check_2d(&r[F_W1], *hidden, dsize, why)) || (s = check_1d(&r[F_B1], *hidden, why)))
        return s;
    snprintf(why, sizeof why, "%s, hidden from the first layer", dname);
    if ((s = check_2d(&r[F_W2], dsize, *hidden, why)) || (s = check_1d(&r[F_B2], dsize, why)))
        return s;
    return XATTN_OK;
}

static void wire_attn(bd_attn *a, const xa_wref *r)
{
    a->norm_w = r[A_NORM_W].present ? r[A_NORM_W].dst : NULL;
    a->norm_b = r[A_NORM_B].present ? r[A_NORM_B].dst : NULL;
    a->cnorm_w = r[A_CNORM_W].present ? r[A_CNORM_W].dst : NULL;
    a->cnorm_b = r[A_CNORM_B].present ? r[A_CNORM_B].dst : NULL;
    a->w_qkv = r[A_QK].dst; /* to_v follows (glued) */
    a->cw_qkv = r[A_CQK].dst;
    a->wo = r[A_OUT_W].dst;
    a->bo = r[A_OUT_B].dst;
    a->cwo = r[A_COUT_W].dst;
    a->cbo = r[A_COUT_B].dst;
    a->talk = r[A_TALK].present ? r[A_TALK].dst : NULL;
    a->ctalk = r[A_CTALK].present ? r[A_CTALK].dst : NULL;
}

static void wire_ff(bd_ff *f, const xa_wref *r)
{
    f->norm_w = r[F_NORM].dst;
    f->w1 = r[F_W1].dst;
    f->b1 = r[F_B1].dst;
    f->w2 = r[F_W2].dst;
    f->b2 = r[F_B2].dst;
}

/* Finds the refs of layer l: the attention, and for a transformer the two feed-forwards. */
static xattn_status find_layer(const xattn_safetensors *st, const char *prefix, int transformer,
                               int64_t l, xa_wref *r)
{
    xattn_status s;
    char mid[64];
    if (!transformer) return find_attn(st, prefix, "", r);
    snprintf(mid, sizeof mid, "layers.%lld.0.", (long long)l);
    if ((s = find_attn(st, prefix, mid, r))) return s;
    for (int side = 0; side < 2; side++) {
        snprintf(mid, sizeof mid, "layers.%lld.%d.", (long long)l, side + 1);
        for (int k = 0; k < F_N; k++)
            if ((s = xa_wref_find(st, "xattn_bidir_load", prefix, mid, ff_names[k], &r[A_N + side * F_N + k]))) return s;
    }
    return XATTN_OK;
}

/* Checks the final norms of a transformer. */
static xattn_status check_final(xa_wref *fin, const bd_dims *d, const xa_wref *first)
{
    xattn_status s;
    if (fin[N_NORM_B].present || fin[N_CNORM_B].present)
        return xa_error(XATTN_ERR_FORMAT,
                        "tensor '%s' present: the transformer's final norms are nn.RMSNorm (no "
                        "bias)",
                        fin[N_NORM_B].present ? fin[N_NORM_B].shown : fin[N_CNORM_B].shown);
    if (fin[N_NORM_W].present != fin[N_CNORM_W].present) {
        const xa_wref *have = fin[N_NORM_W].present ? &fin[N_NORM_W] : &fin[N_CNORM_W];
        const xa_wref *lack = fin[N_NORM_W].present ? &fin[N_CNORM_W] : &fin[N_NORM_W];
        char why[160];
        snprintf(why, sizeof why, "'%s' is present: final_norms=True builds both", have->shown);
        return xa_wref_missing(lack, why);
    }
    if (!fin[N_NORM_W].present) return XATTN_OK;
    char why[256];
    snprintf(why, sizeof why, "dim from '%s'", first[A_QK].shown);
    if ((s = check_1d(&fin[N_NORM_W], d->dim, why))) return s;
    /* the package builds context_norm with size dim, which only runs when context_dim == dim;
     * a context_norm of size context_dim is accepted too */
    snprintf(why, sizeof why, "context_dim from '%s'", first[A_CQK].shown);
    return check_1d(&fin[N_CNORM_W], d->cdim, why);
}

/* Two passes over the layers with constant memory: the first checks every layer and sizes the
 * weight block (so that nothing proportional to the depth is allocated before the file is
 * known to hold every layer), the second copies the weights in. `refs` holds 2 * LAYER_REFS +
 * N_N entries: the first layer's (kept: messages cite it), the current one's, the final norms. */
static xattn_status load_module(const xattn_safetensors *st, const char *prefix, int64_t heads_arg,
                                int transformer, xattn_bidir *m, xa_wref *refs)
{
    xattn_status s;
    int64_t depth = 1;
    if (transformer && (s = find_depth(st, prefix, &depth))) return s;
    const int per = transformer ? LAYER_REFS : A_N;
    xa_wref *first = refs, *cur = refs + LAYER_REFS, *fin = refs + 2 * LAYER_REFS;

    /* sizes from the first attention, then the heads */
    bd_dims d;
    memset(&d, 0, sizeof d);
    if ((s = find_layer(st, prefix, transformer, 0, first)) || (s = first_dims(first, &d)))
        return s;
    if (transformer && d.norm == XATTN_NORM_NONE)
        return xa_wref_missing(&first[A_NORM_W], "BidirectionalCrossAttentionTransformer layers use prenorm");
    if ((s = resolve_heads(st, &first[A_TALK], &first[A_QK], heads_arg, &d))) return s;

    /* pass 1: check every layer, size the block */
    int64_t total = 0;
    for (int64_t l = 0; l < depth; l++) {
        xa_wref *r = l == 0 ? first : cur;
        if (l > 0 && (s = find_layer(st, prefix, transformer, l, r))) return s;
        if ((s = check_attn(r, &d, first))) return s;
        if (transformer &&
            ((s = check_ff(r + A_N, d.dim, &d.hidden, "dim", &first[A_QK])) ||
             (s = check_ff(r + A_N + F_N, d.cdim, &d.chidden, "context_dim", &first[A_CQK]))))
            return s;
        if ((s = place(st, r, per, &total, NULL))) return s;
    }
    if (transformer) {
        for (int k = 0; k < N_N; k++)
            if ((s = xa_wref_find(st, "xattn_bidir_load", prefix, "", final_names[k], &fin[k]))) return s;
        if ((s = check_final(fin, &d, first)) || (s = place(st, fin, N_N, &total, NULL)))
            return s;
    }

    /* pass 2: one block for every weight */
    if ((uint64_t)total > SIZE_MAX / sizeof(float))
        return xa_error(XATTN_ERR_NOMEM, "xattn_bidir_load: weights overflow");
    m->block = xa_alloc((size_t)total * sizeof(float));
    m->layers = calloc((size_t)depth, sizeof *m->layers);
    if (!m->block || !m->layers) return xa_error(XATTN_ERR_NOMEM, "xattn_bidir_load: out of memory");
    int64_t off = 0;
    for (int64_t l = 0; l < depth; l++) {
        xa_wref *r = l == 0 ? first : cur;
        if (l > 0 && (s = find_layer(st, prefix, transformer, l, r))) return s;
        if ((s = place(st, r, per, &off, m->block))) return s;
        wire_attn(&m->layers[l].attn, r);
        if (transformer) {
            wire_ff(&m->layers[l].ff, r + A_N);
            wire_ff(&m->layers[l].cff, r + A_N + F_N);
        }
    }
    if (transformer) {
        if ((s = place(st, fin, N_N, &off, m->block))) return s;
        if (fin[N_NORM_W].present) {
            m->fnorm_w = fin[N_NORM_W].dst;
            m->fcnorm_w = fin[N_CNORM_W].dst;
        }
    }

    xattn_bidir_config *c = &m->cfg;
    c->is_transformer = transformer;
    c->dim = d.dim;
    c->context_dim = d.cdim;
    c->heads = d.H;
    c->dim_head = d.inner / d.H;
    c->inner_dim = d.inner;
    c->prenorm = d.norm;
    c->talking_heads = d.talking;
    c->depth = depth;
    c->ff_hidden = transformer ? d.hidden : 0;
    c->context_ff_hidden = transformer ? d.chidden : 0;
    c->final_norms = transformer && fin[N_NORM_W].present;
    c->context_norm_dim = c->final_norms ? fin[N_CNORM_W].shape[0] : 0;
    return XATTN_OK;
}

xattn_status xattn_bidir_load(const xattn_safetensors *st, const char *prefix, int64_t heads,
                              xattn_bidir **out)
{
    if (!out) return xa_error(XATTN_ERR_ARG, "xattn_bidir_load: out is NULL");
    *out = NULL;
    if (!st) return xa_error(XATTN_ERR_ARG, "xattn_bidir_load: safetensors handle is NULL");
    if (!prefix) prefix = "";
    if (heads < 0) heads = 0;
    char pp[XA_IO_NAME_CAP];
    xa_io_printable(prefix, pp, sizeof pp);

    const int attn_names_found = xa_wref_has(st, prefix, "to_qk.weight");
    const int tr_names = xa_wref_has(st, prefix, "layers.0.0.to_qk.weight");
    if (attn_names_found && tr_names)
        return xa_error(XATTN_ERR_FORMAT,
                        "ambiguous module: both '%sto_qk.weight' (BidirectionalCrossAttention) and "
                        "'%slayers.0.0.to_qk.weight' (BidirectionalCrossAttentionTransformer) present",
                        pp, pp);
    if (!attn_names_found && !tr_names)
        return xa_error(XATTN_ERR_NOT_FOUND,
                        "no bidirectional cross-attention found: expected '%sto_qk.weight' "
                        "(BidirectionalCrossAttention) or '%slayers.0.0.to_qk.weight' "
                        "(BidirectionalCrossAttentionTransformer)",
                        pp, pp);

    xattn_bidir *m = calloc(1, sizeof *m);
    if (!m) return xa_error(XATTN_ERR_NOMEM, "xattn_bidir_load: out of memory");
    xa_wref *refs = calloc(2 * LAYER_REFS + N_N, sizeof *refs);
    if (!refs) {
        free(m);
        return xa_error(XATTN_ERR_NOMEM, "xattn_bidir_load: out of memory");
    }
    xattn_status s = load_module(st, prefix, heads, tr_names, m, refs);
    free(refs);
    if (s != XATTN_OK) {
        xattn_bidir_free(m);
        return s;
    }
    xa_clear_error();
    *out = m;
    return XATTN_OK;
}

void xattn_bidir_free(xattn_bidir *m)
{
    if (!m) return;
    xa_free(m->block);
    free(m->layers);
    free(m);
}

void xattn_bidir_get_config(const xattn_bidir *m, xattn_bidir_config *cfg)
{
    if (!cfg) return;
    if (!m) {
        memset(cfg, 0, sizeof *cfg);
        return;
    }
    *cfg = m->cfg;
}

/* ---------------------------------------------------------------------------------------- */
/* Forward                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* y (M, N) += x (M, K) W^T + b */
static xattn_status linear_add(const float *x, int64_t M, int64_t K, const float *W,
                               const float *b, int64_t N, float *y)
{
    xattn_status s = xattn_sgemm(0, 1, M, N, K, 1.0f, x, K, W, K, 1.0f, y, N);
    if (s != XATTN_OK || !b) return s;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads((double)M * (double)N < 262144.0 ? 1 : xa_threads())
#endif
    for (int64_t r = 0; r < M; r++) {
        float *row = y + r * N;
        for (int64_t c = 0; c < N; c++) row[c] += b[c];
    }
    return XATTN_OK;
}

static xattn_status prenorm(xattn_bidir_norm kind, const float *x, int64_t rows, int64_t n,
                            const float *w, const float *b, float *y)
{
    if (kind == XATTN_NORM_LAYER) return xattn_layernorm(x, rows, n, w, b, 1e-5f, y);
    return xattn_rmsnorm(x, rows, n, w, FLT_EPSILON, y);
}

typedef struct bd_scratch {
    float *xn, *cn;     /* (B*I, dim), (B*J, context_dim): normalised inputs        */
    float *pqv, *cpqv;  /* (B*I, 2*inner), (B*J, 2*inner): [qk | v] per row         */
    float *oh, *coh;    /* (B*I, inner), (B*J, inner): merged-head attention outputs */
    float *hid;         /* (B*max(I*hidden, J*context_hidden)) feed-forward          */
} bd_scratch;

/* One attention up to the merged-head outputs sc->oh, sc->coh. */
static xattn_status attn_core(const xattn_bidir *m, const bd_attn *a, const xattn_bidir_inputs *in,
                              const float *x, const float *ctx, const bd_scratch *sc, float *attn,
                              float *cattn)
{
    const xattn_bidir_config *c = &m->cfg;
    const int64_t B = in->B, I = in->I, J = in->J, H = c->heads, dh = c->dim_head;
    const int64_t inner = c->inner_dim, inner2 = 2 * inner;
    xattn_status s;
    const float *xin = x, *cin = ctx;
    if (c->prenorm != XATTN_NORM_NONE) {
        if ((s = prenorm(c->prenorm, x, B * I, c->dim, a->norm_w, a->norm_b, sc->xn)) ||
            (s = prenorm(c->prenorm, ctx, B * J, c->context_dim, a->cnorm_w, a->cnorm_b, sc->cn)))
            return s;
        xin = sc->xn;
        cin = sc->cn;
    }
    if ((s = xattn_linear(xin, B * I, c->dim, a->w_qkv, NULL, inner2, sc->pqv)) ||
        (s = xattn_linear(cin, B * J, c->context_dim, a->cw_qkv, NULL, inner2, sc->cpqv)))
        return s;

    xa_bidir p;
    memset(&p, 0, sizeof p);
    p.B = B;
    p.H = H;
    p.I = I;
    p.J = J;
    p.dh = dh;
    p.qk = sc->pqv;
    p.qk_sb = I * inner2;
    p.qk_sh = dh;
    p.qk_si = inner2;
    p.v = sc->pqv + inner;
    p.v_sb = I * inner2;
    p.v_sh = dh;
    p.v_si = inner2;
    p.cqk = sc->cpqv;
    p.cqk_sb = J * inner2;
    p.cqk_sh = dh;
    p.cqk_sj = inner2;
    p.cv = sc->cpqv + inner;
    p.cv_sb = J * inner2;
    p.cv_sh = dh;
    p.cv_sj = inner2;
    p.out = sc->oh;
    p.o_sb = I * inner;
    p.o_sh = dh;
    p.o_si = inner;
    p.cout = sc->coh;
    p.co_sb = J * inner;
    p.co_sh = dh;
    p.co_sj = inner;
    p.scale = (float)pow((double)dh, -0.5); /* dim_head ** -0.5, then float32 as in torch */
    p.mask = in->mask;
    p.mask_sb = I;
    p.cmask = in->context_mask;
    p.cmask_sb = J;
    if (in->rel_pos_bias) {
        p.bias = in->rel_pos_bias;
        p.bias_sh = in->bias_h > 1 ? I * J : 0;
        p.bias_sb = in->bias_b > 1 ? in->bias_h * I * J : 0;
    }
    p.talk = a->talk;
    p.ctalk = a->ctalk;
    p.attn = attn;
    p.cattn = cattn;
    return xa_bidir_attention(&p);
}

/* x (rows, d) += W2 gelu(W1 rmsnorm(x) + b1) + b2 */
static xattn_status ff_add(const bd_ff *f, float *x, int64_t rows, int64_t d, int64_t hidden,
                           float *xn, float *hid)
{
    xattn_status s;
    if ((s = xattn_rmsnorm(x, rows, d, f->norm_w, FLT_EPSILON, xn)) ||
        (s = xattn_linear(xn, rows, d, f->w1, f->b1, hidden, hid)) ||
        (s = xattn_gelu(hid, rows * hidden, 0)) ||
        (s = linear_add(hid, rows, hidden, f->w2, f->b2, d, x)))
        return s;
    return XATTN_OK;
}

/* n values, 16-float aligned slots: returns the offset of this slot and advances *total. */
static int slot(int64_t n, int64_t *total, int64_t *off)
{
    int64_t r = (n + 15) & ~(int64_t)15;
    if (n < 0 || r < n || *total > INT64_MAX - r) return -1;
    *off = *total;
    *total += r;
    return 0;
}

xattn_status xattn_bidir_forward(const xattn_bidir *m, const xattn_bidir_inputs *in, float *out,
                                 float *context_out, float *attn, float *context_attn)
{
    static const char fn[] = "xattn_bidir_forward";
    if (!m) return xa_error(XATTN_ERR_ARG, "%s: module is NULL", fn);
    if (!in) return xa_error(XATTN_ERR_ARG, "%s: inputs is NULL", fn);
    if (!out) return xa_error(XATTN_ERR_ARG, "%s: out is NULL", fn);
    if (!context_out) return xa_error(XATTN_ERR_ARG, "%s: context_out is NULL", fn);
    const xattn_bidir_config *c = &m->cfg;
    const int64_t B = in->B, I = in->I, J = in->J, H = c->heads;
    if (B <= 0 || I <= 0 || J <= 0)
        return xa_error(XATTN_ERR_ARG, "%s: sizes must be positive (B=%lld, I=%lld, J=%lld)", fn,
                        (long long)B, (long long)I, (long long)J);
    if (!in->x) return xa_error(XATTN_ERR_ARG, "%s: x is NULL", fn);
    if (!in->context) return xa_error(XATTN_ERR_ARG, "%s: context is NULL", fn);
    if (c->is_transformer && (attn || context_attn))
        return xa_error(XATTN_ERR_ARG,
                        "%s: BidirectionalCrossAttentionTransformer returns no attention maps (the "
                        "package ignores return_attn): pass attn = context_attn = NULL",
                        fn);
    if (in->rel_pos_bias) {
        if (in->bias_b != 1 && in->bias_b != B)
            return xa_error(XATTN_ERR_SHAPE, "%s: rel_pos_bias batch %lld must be 1 or B = %lld",
                            fn, (long long)in->bias_b, (long long)B);
        if (in->bias_h != 1 && in->bias_h != H)
            return xa_error(XATTN_ERR_SHAPE, "%s: rel_pos_bias heads %lld must be 1 or heads = %lld",
                            fn, (long long)in->bias_h, (long long)H);
    }

    /* sizes, with overflow checks */
    int64_t nI, nJ, t;
    const int64_t inner2 = 2 * c->inner_dim;
    const int tr = c->is_transformer;
    const int need_norm = tr || c->prenorm != XATTN_NORM_NONE;
    int64_t n_xn = 0, n_cn = 0, n_pqv, n_cpqv, n_oh, n_coh, n_hid = 0, hI = 0, hJ = 0;
    if (xa_mul_ok(B, I, &nI) || xa_mul_ok(B, J, &nJ) || xa_mul_ok(nI, inner2, &n_pqv) ||
        xa_mul_ok(nJ, inner2, &n_cpqv) || xa_mul_ok(nI, c->inner_dim, &n_oh) ||
        xa_mul_ok(nJ, c->inner_dim, &n_coh) || xa_mul_ok(nI, c->dim, &t) ||
        xa_mul_ok(nJ, c->context_dim, &t) || xa_mul_ok(nI, J, &t) || xa_mul_ok(t, H, &t) ||
        xa_mul_ok(nI, c->ff_hidden, &hI) || xa_mul_ok(nJ, c->context_ff_hidden, &hJ) ||
        (in->rel_pos_bias && (xa_mul_ok(in->bias_b, in->bias_h, &t) || xa_mul_ok(t, I, &t) ||
                              xa_mul_ok(t, J, &t))))
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow (B=%lld, I=%lld, J=%lld)", fn,
                        (long long)B, (long long)I, (long long)J);
    if (need_norm) {
        n_xn = nI * c->dim;
        n_cn = nJ * c->context_dim;
    }
    if (tr) n_hid = XA_MAX(hI, hJ);

    int64_t total = 0, o_xn, o_cn, o_pqv, o_cpqv, o_oh, o_coh, o_hid;
    if (slot(n_xn, &total, &o_xn) || slot(n_cn, &total, &o_cn) || slot(n_pqv, &total, &o_pqv) ||
        slot(n_cpqv, &total, &o_cpqv) || slot(n_oh, &total, &o_oh) ||
        slot(n_coh, &total, &o_coh) || slot(n_hid, &total, &o_hid) ||
        (uint64_t)total > SIZE_MAX / sizeof(float) / 2)
        return xa_error(XATTN_ERR_NOMEM, "%s: scratch for B=%lld, I=%lld, J=%lld overflows", fn,
                        (long long)B, (long long)I, (long long)J);
    float *scratch = xa_alloc((size_t)total * sizeof(float));
    if (!scratch) return XATTN_ERR_NOMEM;
    bd_scratch sc;
    sc.xn = need_norm ? scratch + o_xn : NULL;
    sc.cn = need_norm ? scratch + o_cn : NULL;
    sc.pqv = scratch + o_pqv;
    sc.cpqv = scratch + o_cpqv;
    sc.oh = scratch + o_oh;
    sc.coh = scratch + o_coh;
    sc.hid = tr ? scratch + o_hid : NULL;

    xattn_status s = XATTN_OK;
    if (!tr) {
        const bd_attn *a = &m->layers[0].attn;
        if ((s = attn_core(m, a, in, in->x, in->context, &sc, attn, context_attn)) ||
            (s = xattn_linear(sc.oh, nI, c->inner_dim, a->wo, a->bo, c->dim, out)) ||
            (s = xattn_linear(sc.coh, nJ, c->inner_dim, a->cwo, a->cbo, c->context_dim,
                              context_out)))
            goto done;
    } else {
        /* the residual streams live in out and context_out */
        if (out != in->x) memmove(out, in->x, (size_t)(nI * c->dim) * sizeof(float));
        if (context_out != in->context)
            memmove(context_out, in->context, (size_t)(nJ * c->context_dim) * sizeof(float));
        for (int64_t l = 0; l < c->depth; l++) {
            const bd_layer *L = &m->layers[l];
            /* xo, co = attn(x, ctx); x += xo; ctx += co (both from the old x and ctx) */
            if ((s = attn_core(m, &L->attn, in, out, context_out, &sc, NULL, NULL)) ||
                (s = linear_add(sc.oh, nI, c->inner_dim, L->attn.wo, L->attn.bo, c->dim, out)) ||
                (s = linear_add(sc.coh, nJ, c->inner_dim, L->attn.cwo, L->attn.cbo,
                                c->context_dim, context_out)))
                goto done;
            /* x = ff(x) + x; ctx = cff(ctx) + ctx */
            if ((s = ff_add(&L->ff, out, nI, c->dim, c->ff_hidden, sc.xn, sc.hid)) ||
                (s = ff_add(&L->cff, context_out, nJ, c->context_dim, c->context_ff_hidden, sc.cn,
                            sc.hid)))
                goto done;
        }
        if (m->fnorm_w &&
            ((s = xattn_rmsnorm(out, nI, c->dim, m->fnorm_w, FLT_EPSILON, out)) ||
             (s = xattn_rmsnorm(context_out, nJ, c->context_dim, m->fcnorm_w, FLT_EPSILON,
                                context_out))))
            goto done;
    }
    xa_clear_error();
done:
    xa_free(scratch);
    return s;
}
