/*
 * Mutual cross-attention (parameter-free; Zhao & Gu 2024, ztony0712/MCA).
 *
 *   A  = softmax(a b^T / sqrt(D)) b,   Bm = softmax(b a^T / sqrt(D)) a,   out = A + Bm
 *
 * Each term is one call of the fused attention kernel (xa_attention, H = 1): no Na x Nb matrix
 * is ever formed. xattn_mutual writes A straight into out, Bm into a (B, N, D) scratch, then adds.
 */
#include "core/registry.h"
#include "kernels/ops.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* One direction: out (B, Nq, D) = softmax(q k^T / sqrt(D)) k, with k (B, Nk, D). */
static xattn_status one_way(const char *fn, const float *q, int64_t Nq, const float *k, int64_t Nk,
                            int64_t B, int64_t D, float *out)
{
    xa_attn p;
    memset(&p, 0, sizeof p);
    xa_attn_heads(&p, B, 1, Nq, Nk, D, D, q, D, k, D, k, D, out, D);
    p.scale = (float)(1.0 / sqrt((double)D));
    p.fill = XATTN_FILL_NEG_INF;
    p.fn = fn;
    return xa_op_attention(&p);
}

static xattn_status check_sizes(const char *fn, int64_t B, int64_t Na, int64_t Nb, int64_t D)
{
    if (B < 1 || Na < xa_op_min_rows() || Nb < xa_op_min_rows() || D < 1)
        return xa_error(XATTN_ERR_SHAPE, "%s: sizes must be >= 1 (got B=%lld, N=%lld/%lld, D=%lld)",
                        fn, (long long)B, (long long)Na, (long long)Nb, (long long)D);
    int64_t big = INT64_MAX / 8 / D;
    if (Na > big / B || Nb > big / B)
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow (B=%lld, N=%lld/%lld, D=%lld)", fn,
                        (long long)B, (long long)Na, (long long)Nb, (long long)D);
    return XATTN_OK;
}

xattn_status xattn_mutual_terms(const float *a, int64_t Na, const float *b, int64_t Nb, int64_t B,
                                int64_t D, float *a_out, float *b_out)
{
    const char *fn = "xattn_mutual_terms";
    if (!a || !b || !a_out || !b_out)
        return xa_error(XATTN_ERR_ARG, "%s: a, b, a_out and b_out must not be NULL", fn);
    xattn_status s = check_sizes(fn, B, Na, Nb, D);
    if (s != XATTN_OK) return s;
    if ((s = one_way(fn, a, Na, b, Nb, B, D, a_out))) return s;
    return one_way(fn, b, Nb, a, Na, B, D, b_out);
}

xattn_status xattn_mutual(const float *a, const float *b, int64_t B, int64_t N, int64_t D,
                          float *out)
{
    const char *fn = "xattn_mutual";
    if (!a || !b || !out) return xa_error(XATTN_ERR_ARG, "%s: a, b and out must not be NULL", fn);
    xattn_status s = check_sizes(fn, B, N, N, D);
    if (s != XATTN_OK) return s;
    const int64_t n = B * N * D;
    float *tmp = xa_alloc((size_t)n * sizeof(float));
    if (!tmp) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory (%lld floats)", fn, (long long)n);
    if ((s = one_way(fn, a, N, b, N, B, D, out)) == XATTN_OK &&
        (s = one_way(fn, b, N, a, N, B, D, tmp)) == XATTN_OK) {
        xa_op_add(out, tmp, n);
    }
    xa_free(tmp);
    return s;
}

/* Moves the band axis next to the (N, D) pair: src viewed as (pre, N, F, D) (band axis R-2) or
 * (pre, N, D, F) (band axis R-1) into dst (pre, F, N, D); inverse != 0 goes back. */
static void band_permute(const float *src, float *dst, int64_t pre, int64_t F, int64_t N, int64_t D,
                         int last, int inverse)
{
    static const int fwd[2][4] = {{0, 2, 1, 3}, {0, 3, 1, 2}},
                     inv[2][4] = {{0, 2, 1, 3}, {0, 2, 3, 1}};
    const int64_t in_dims[2][4] = {{pre, N, F, D}, {pre, N, D, F}};
    const int64_t back_dims[4] = {pre, F, N, D};
    if (!inverse)
        xa_op_permute4(src, in_dims[last], fwd[last], dst);
    else
        xa_op_permute4(src, back_dims, inv[last], dst);
}

xattn_status xattn_mutual_bands(const float *a, const float *b, int ndim, const int64_t *shape,
                                int band_axis, float *out)
{
    const char *fn = "xattn_mutual_bands";
    if (!a || !b || !out || !shape)
        return xa_error(XATTN_ERR_ARG, "%s: a, b, shape and out must not be NULL", fn);
    if (ndim < 3 || ndim > XATTN_MAX_DIMS)
        return xa_error(XATTN_ERR_SHAPE,
                        "%s: inputs of rank %d; a band axis needs rank 3..%d (bands plus "
                        "(N, D) plus any batch axes)",
                        fn, ndim, XATTN_MAX_DIMS);
    int ax = band_axis < 0 ? band_axis + ndim : band_axis;
    if (ax < 0 || ax >= ndim)
        return xa_error(XATTN_ERR_ARG, "%s: band axis %d is out of range for rank %d", fn,
                        band_axis, ndim);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 1)
            return xa_error(XATTN_ERR_SHAPE, "%s: dimension %d is %lld (must be >= 1)", fn, i,
                            (long long)shape[i]);
    /* the band slice: the other axes; its last two are N and D */
    int64_t rest[XATTN_MAX_DIMS];
    int nr = 0;
    for (int i = 0; i < ndim; i++)
        if (i != ax) rest[nr++] = shape[i];
    const int64_t N = rest[nr - 2], D = rest[nr - 1];
    int64_t total = 1;
    for (int i = 0; i < ndim; i++) {
        if (total > INT64_MAX / 8 / shape[i])
            return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow", fn);
        total *= shape[i];
    }
    const int64_t batch = total / (N * D);
    if (ax < ndim - 2) /* bands are a batch axis: every (batch..., band) slice is one problem */
        return xattn_mutual(a, b, batch, N, D, out);

    const int64_t F = shape[ax];
    const int64_t pre = batch / F;
    const int last = ax == ndim - 1;
    float *buf = xa_alloc((size_t)total * 3 * sizeof(float));
    if (!buf)
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory (%lld floats)", fn,
                        (long long)(3 * total));
    float *pa = buf, *pb = buf + total, *po = buf + 2 * total;
    band_permute(a, pa, pre, F, N, D, last, 0);
    band_permute(b, pb, pre, F, N, D, last, 0);
    xattn_status s = xattn_mutual(pa, pb, batch, N, D, po);
    if (s == XATTN_OK) band_permute(po, out, pre, F, N, D, last, 1);
    xa_free(buf);
    return s;
}

/* ---- registry ---------------------------------------------------------------------------- */

static const xa_field mutual_fields[] = {
    {"band_axis", XA_T_INT, XA_F_OPTIONAL | XA_F_NOMETA, 0, -XATTN_MAX_DIMS, XATTN_MAX_DIMS - 1,
     NULL, NULL,
     "fuse each band of this axis on its own (a and b of rank 3..8; negative counts from the "
     "end); None: a and b are (B, N, D) or (N, D)"},
};

static const xa_io mutual_inputs[] = {
    {"a", "...", 0, "first feature set (B, N, D) or (N, D); with band_axis any rank 3..8"},
    {"b", "=a", 0, "second feature set, the same shape as a"},
};
static const xa_io mutual_outputs[] = {
    {"out", "=a", 0, "softmax(a b^T / sqrt(D)) b + softmax(b a^T / sqrt(D)) a"},
};

static xattn_status mutual_build(xa_mod *m, const xattn_safetensors *st, const char *prefix,
                                 const xa_kv *opts, size_t n_opts)
{
    (void)prefix;
    return xa_cfg_resolve(&m->cfg, opts, n_opts, st, "mutual");
}

static int band_given(const xa_mod *m) { return m->cfg.from[0] != XA_FROM_UNSET; }

static xattn_status mutual_check(const xa_mod *m, const xa_run *r)
{
    const int nd = r->in_ndim[0];
    if (!band_given(m) && (nd < 2 || nd > 3))
        return xa_error(XATTN_ERR_SHAPE,
                        "input 'a' has rank %d; expected (B, N, D) or (N, D), or "
                        "give band_axis for inputs with a band axis",
                        nd);
    if (band_given(m)) {
        const int64_t ax = (int64_t)m->cfg.v[0];
        if (nd < 3 || ax < -nd || ax >= nd)
            return xa_error(XATTN_ERR_SHAPE,
                            "input 'a' has rank %d: band_axis %lld is out of "
                            "range",
                            nd, (long long)ax);
    }
    return XATTN_OK;
}

static xattn_status mutual_forward(const xa_mod *m, const xa_run *r)
{
    const int nd = r->in_ndim[0];
    const int64_t *sh = r->in_shape[0];
    if (band_given(m))
        return xattn_mutual_bands(r->in[0], r->in[1], nd, sh, (int)m->cfg.v[0], r->out[0]);
    return xattn_mutual(r->in[0], r->in[1], nd == 3 ? sh[0] : 1, sh[nd - 2], sh[nd - 1], r->out[0]);
}

/* ---- backward ------------------------------------------------------------------------------ */
/*
 * out = attn(a; b, b) + attn(b; a, a): each term's fused attention backward (its probabilities
 * recomputed from a second forward's statistics, nothing Na x Nb kept) adds to the gradients of
 * both inputs, as the query of one term and the keys and values of the other.
 */

/* da, db (B, N, D) += the gradients of attn(q; k, k) for dout d, q the rows of da's input. */
static xattn_status one_way_grad(const float *q, int64_t Nq, const float *k, int64_t Nk, int64_t B,
                                 int64_t D, const float *d, float *dq, float *dk, float *tmp)
{
    xa_attn p;
    memset(&p, 0, sizeof p);
    xa_attn_heads(&p, B, 1, Nq, Nk, D, D, q, D, k, D, k, D, tmp, D);
    p.scale = (float)(1.0 / sqrt((double)D));
    p.fill = XATTN_FILL_NEG_INF;
    p.fn = "mutual backward";
    xattn_status s = xa_op_attention(&p); /* the output, which the backward needs */
    if (s) return s;
    xa_attn_grad g;
    memset(&g, 0, sizeof g);
    g.dout = d, g.do_sb = Nq * D, g.do_si = D;
    g.dq = dq, g.dq_sb = Nq * D, g.dq_si = D;
    g.dk = dk, g.dk_sb = Nk * D, g.dk_sj = D;
    g.dv = dk, g.dv_sb = Nk * D, g.dv_sj = D; /* the keys are the values */
    g.accumulate = 1;
    return xa_op_attention_backward(&p, &g);
}

/* da, db (batch, N, D) of xattn_mutual for dout d; tmp (batch, N, D). */
static xattn_status mutual_grad(const float *a, const float *b, int64_t batch, int64_t N, int64_t D,
                                const float *d, float *da, float *db, float *tmp)
{
    const int64_t n = batch * N * D;
    memset(da, 0, sizeof(float) * (size_t)n);
    memset(db, 0, sizeof(float) * (size_t)n);
    xattn_status s = one_way_grad(a, N, b, N, batch, D, d, da, db, tmp);
    return s ? s : one_way_grad(b, N, a, N, batch, D, d, db, da, tmp);
}

static xattn_status mutual_backward(const xa_mod *m, const xa_run *r, xa_grad *g)
{
    const int nd = r->in_ndim[0];
    const int64_t *sh = r->in_shape[0];
    xattn_status s = mutual_forward(m, r);
    if (!s) s = xa_grad_outputs(g, r);
    if (s) return s;
    int64_t total = 1;
    for (int i = 0; i < nd; i++) total *= sh[i];
    /* the band axis next to (N, D), as the forward does; without one the arrays as they are */
    int ax = band_given(m) ? (int)m->cfg.v[0] : nd - 3;
    if (ax < 0) ax += nd;
    const int permuted = band_given(m) && ax >= nd - 2;
    const int64_t N = permuted ? sh[ax == nd - 1 ? nd - 3 : nd - 2] : sh[nd - 2];
    const int64_t D = permuted ? sh[ax == nd - 1 ? nd - 2 : nd - 1] : sh[nd - 1];
    /* N = 0: a sharded run's empty shard (no band axis then) */
    const int64_t batch = N * D != 0 ? total / (N * D) : (nd == 3 ? sh[0] : 1);
    float *buf = xa_alloc(sizeof(float) * (size_t)(total * (permuted ? 7 : 4) + 1));
    if (!buf) return xa_error(XATTN_ERR_NOMEM, "mutual backward: out of memory");
    float *zero = buf, *da = buf + total, *db = buf + 2 * total, *tmp = buf + 3 * total;
    const float *d = g->dout[0];
    if (!d) {
        memset(zero, 0, sizeof(float) * (size_t)total);
        d = zero;
    }
    const float *a = r->in[0], *b = r->in[1];
    if (permuted) { /* (pre, F, N, D) copies of a, b and d */
        const int64_t F = sh[ax], pre = batch / F;
        const int last = ax == nd - 1;
        float *pa = buf + 4 * total, *pb = buf + 5 * total, *pd = buf + 6 * total;
        band_permute(a, pa, pre, F, N, D, last, 0);
        band_permute(b, pb, pre, F, N, D, last, 0);
        band_permute(d, pd, pre, F, N, D, last, 0);
        s = mutual_grad(pa, pb, batch, N, D, pd, da, db, tmp);
        if (!s && g->din[0]) band_permute(da, g->din[0], pre, F, N, D, last, 1);
        if (!s && g->din[1]) band_permute(db, g->din[1], pre, F, N, D, last, 1);
    } else {
        s = mutual_grad(a, b, batch, N, D, d, da, db, tmp);
        if (!s && g->din[0]) memcpy(g->din[0], da, sizeof(float) * (size_t)total);
        if (!s && g->din[1]) memcpy(g->din[1], db, sizeof(float) * (size_t)total);
    }
    xa_free(buf);
    return s;
}

const xa_kind xa_kind_mutual = {
    .name = "mutual",
    .reference = "mutual cross-attention (Zhao & Gu 2024, ztony0712/MCA)",
    .summary = "parameter-free mutual cross-attention of two same-shape feature sets",
    .fields = mutual_fields,
    .n_fields = 1,
    .inputs = mutual_inputs,
    .n_in = 2,
    .outputs = mutual_outputs,
    .n_out = 1,
    .size = sizeof(xa_mod),
    .build = mutual_build,
    .check = mutual_check,
    .forward = mutual_forward,
    .backward = mutual_backward,
};
