/*
 * M9: cross-attention over 2-D feature maps (seed 004 CrossAttention, corrected).
 *
 *   conv_query.weight (Ck, C1, 1, 1) [+ conv_query.bias (Ck)]   on x1 (B, C1, H1, W1)
 *   conv_key.weight   (Ck, C2, 1, 1) [+ conv_key.bias (Ck)]     on x2 (B, C2, H2, W2)
 *   conv_value.weight (Cv, C2, 1, 1) [+ conv_value.bias (Cv)]   on x2
 *   out[b, :, p] = sum_q softmax_q(scale * Q[b,:,p] . K[b,:,q]) V[b, :, q]    (B, Cv, H1, W1)
 *
 * forward: a 1x1 convolution is a per-position linear map; with positions as the minor axis of
 * the maps, Q^T (P1, Ck) = x1[b]^T (P1, C1) Wq^T is one xattn_sgemm reading x1 in place
 * (trans_a, trans_b), written position-major so the fused attention kernel reads each
 * position's vector contiguously. The kernel output O (P1, Cv) is transposed into
 * out[b] (Cv, P1) by a blocked copy.
 */
#include "base/base.h"
#include "kernels/kernels.h"
#include "modules/weights.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct xattn_conv2d_cross {
    xattn_conv2d_cross_config cfg;
    const float *wq, *wk, *wv; /* (Ck, C1), (Ck, C2), (Cv, C2) */
    const float *bq, *bk, *bv; /* or NULL */
    float *block;
};

static const char *FN_LOAD = "xattn_conv2d_cross_load";

/* weight of shape (rows, cols, 1, 1); rows/cols < 0 are free */
static xattn_status check_w(const xa_wref *t, int64_t rows, int64_t cols, const char *implied)
{
    char got[128];
    xa_wref_shape(t, got, sizeof got);
    xattn_status s = xa_wref_check_float(t);
    if (s != XATTN_OK) return s;
    if (t->ndim != 4 || t->shape[2] != 1 || t->shape[3] != 1 || t->shape[0] <= 0 ||
        t->shape[1] <= 0)
        return xa_error(XATTN_ERR_SHAPE,
                        "tensor '%s' has shape %s; expected a 1x1 Conv2d weight (out, in, 1, 1)",
                        t->shown, got);
    if (rows >= 0 && t->shape[0] != rows)
        return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s but %s implies %lld output channels",
                        t->shown, got, implied, (long long)rows);
    if (cols >= 0 && t->shape[1] != cols)
        return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s but %s implies %lld input channels",
                        t->shown, got, implied, (long long)cols);
    return XATTN_OK;
}

static xattn_status check_b(const xa_wref *t, int64_t n, const char *implied)
{
    char got[128];
    xa_wref_shape(t, got, sizeof got);
    xattn_status s = xa_wref_check_float(t);
    if (s != XATTN_OK) return s;
    if (t->ndim != 1 || t->shape[0] != n)
        return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s but %s implies (%lld,)", t->shown,
                        got, implied, (long long)n);
    return XATTN_OK;
}

xattn_status xattn_conv2d_cross_load(const xattn_safetensors *st, const char *prefix,
                                     xattn_conv2d_cross **out)
{
    if (!out) return xa_error(XATTN_ERR_ARG, "%s: out is NULL", FN_LOAD);
    *out = NULL;
    if (!st) return xa_error(XATTN_ERR_ARG, "%s: safetensors handle is NULL", FN_LOAD);
    if (!prefix) prefix = "";
    xattn_status s;
    xa_wref wq, wk, wv, bq, bk, bv;
    if ((s = xa_wref_find(st, FN_LOAD, prefix, "", "conv_query.weight", &wq)) ||
        (s = xa_wref_find(st, FN_LOAD, prefix, "", "conv_key.weight", &wk)) ||
        (s = xa_wref_find(st, FN_LOAD, prefix, "", "conv_value.weight", &wv)) ||
        (s = xa_wref_find(st, FN_LOAD, prefix, "", "conv_query.bias", &bq)) ||
        (s = xa_wref_find(st, FN_LOAD, prefix, "", "conv_key.bias", &bk)) ||
        (s = xa_wref_find(st, FN_LOAD, prefix, "", "conv_value.bias", &bv)))
        return s;
    if (!wq.present) return xa_wref_missing(&wq, "the query 1x1 convolution");
    if (!wk.present) return xa_wref_missing(&wk, "the key 1x1 convolution");
    if (!wv.present) return xa_wref_missing(&wv, "the value 1x1 convolution");
    if ((s = check_w(&wq, -1, -1, ""))) return s;
    const int64_t Ck = wq.shape[0], C1 = wq.shape[1];
    if ((s = check_w(&wk, Ck, -1, "conv_query.weight"))) return s;
    const int64_t C2 = wk.shape[1];
    if ((s = check_w(&wv, -1, C2, "conv_key.weight"))) return s;
    const int64_t Cv = wv.shape[0];
    if (bq.present && (s = check_b(&bq, Ck, "conv_query.weight"))) return s;
    if (bk.present && (s = check_b(&bk, Ck, "conv_key.weight"))) return s;
    if (bv.present && (s = check_b(&bv, Cv, "conv_value.weight"))) return s;

    xattn_conv2d_cross *m = calloc(1, sizeof *m);
    if (!m) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN_LOAD);
    xa_wref *refs[] = {&wq, &wk, &wv, &bq, &bk, &bv};
    int64_t total = 0;
    for (int i = 0; i < 6; i++)
        if (refs[i]->present) total += (xa_wref_numel(refs[i]) + 15) & ~(int64_t)15;
    m->block = xa_alloc((size_t)total * sizeof(float));
    if (!m->block) {
        free(m);
        return XATTN_ERR_NOMEM;
    }
    int64_t off = 0;
    for (int i = 0; i < 6; i++) {
        if (!refs[i]->present) continue;
        refs[i]->dst = m->block + off;
        off += (xa_wref_numel(refs[i]) + 15) & ~(int64_t)15;
        if ((s = xa_wref_fetch(st, refs[i]))) {
            xattn_conv2d_cross_free(m);
            return s;
        }
    }
    m->wq = wq.dst;
    m->wk = wk.dst;
    m->wv = wv.dst;
    m->bq = bq.present ? bq.dst : NULL;
    m->bk = bk.present ? bk.dst : NULL;
    m->bv = bv.present ? bv.dst : NULL;
    m->cfg.in1 = C1;
    m->cfg.in2 = C2;
    m->cfg.qk_channels = Ck;
    m->cfg.out_channels = Cv;
    m->cfg.has_bias_q = bq.present;
    m->cfg.has_bias_k = bk.present;
    m->cfg.has_bias_v = bv.present;
    xa_clear_error();
    *out = m;
    return XATTN_OK;
}

void xattn_conv2d_cross_free(xattn_conv2d_cross *m)
{
    if (!m) return;
    xa_free(m->block);
    free(m);
}

void xattn_conv2d_cross_get_config(const xattn_conv2d_cross *m, xattn_conv2d_cross_config *cfg)
{
    if (!cfg) return;
    if (!m) {
        memset(cfg, 0, sizeof *cfg);
        return;
    }
    *cfg = m->cfg;
}

/* Y (B, P, Cout) = X[b]^T W^T + bias, X (B, Cin, P) channel-major; read in place. */
static xattn_status conv1x1_t(const float *x, int64_t B, int64_t Cin, int64_t P, const float *W,
                              const float *bias, int64_t Cout, float *y)
{
    for (int64_t b = 0; b < B; b++) {
        float *yb = y + b * P * Cout;
        float beta = 0.0f;
        if (bias) {
            for (int64_t p = 0; p < P; p++) memcpy(yb + p * Cout, bias, (size_t)Cout * sizeof(float));
            beta = 1.0f;
        }
        xattn_status s = xattn_sgemm(1, 1, P, Cout, Cin, 1.0f, x + b * Cin * P, P, W, Cin, beta,
                                     yb, Cout);
        if (s != XATTN_OK) return s;
    }
    return XATTN_OK;
}

/* dst (C, P) = src (P, C)^T, per batch, 32x32 blocks. */
static void transpose_bpc(const float *src, float *dst, int64_t B, int64_t P, int64_t C)
{
    const int64_t T = 32;
    const int64_t np = (P + T - 1) / T, nc = (C + T - 1) / T;
    const int64_t ntask = B * np * nc;
#ifdef _OPENMP
#pragma omp parallel for num_threads(xa_threads()) if (B * P * C > (1 << 15)) schedule(static)
#endif
    for (int64_t t = 0; t < ntask; t++) {
        int64_t b = t / (np * nc), r = t % (np * nc);
        int64_t p0 = (r / nc) * T, c0 = (r % nc) * T;
        int64_t p1 = XA_MIN(p0 + T, P), c1 = XA_MIN(c0 + T, C);
        const float *s = src + b * P * C;
        float *d = dst + b * P * C;
        for (int64_t c = c0; c < c1; c++)
            for (int64_t p = p0; p < p1; p++) d[c * P + p] = s[p * C + c];
    }
}

xattn_status xattn_conv2d_cross_forward(const xattn_conv2d_cross *m,
                                        const xattn_conv2d_cross_inputs *in, float *out)
{
    const char *fn = "xattn_conv2d_cross_forward";
    if (!m || !in || !out || !in->x1 || !in->x2)
        return xa_error(XATTN_ERR_ARG, "%s: module, inputs, x1, x2 and out must not be NULL", fn);
    const int64_t B = in->B;
    if (B < 1 || in->H1 < 1 || in->W1 < 1 || in->H2 < 1 || in->W2 < 1)
        return xa_error(XATTN_ERR_SHAPE,
                        "%s: sizes must be >= 1 (got B=%lld, x1 %lldx%lld, x2 %lldx%lld)", fn,
                        (long long)B, (long long)in->H1, (long long)in->W1, (long long)in->H2,
                        (long long)in->W2);
    if (in->has_scale && !isfinite(in->scale))
        return xa_error(XATTN_ERR_ARG, "%s: scale is not finite", fn);
    const int64_t Ck = m->cfg.qk_channels, Cv = m->cfg.out_channels;
    int64_t P1, P2, nq, nk, nv, no, tot;
    if (xa_mul_ok(in->H1, in->W1, &P1) || xa_mul_ok(in->H2, in->W2, &P2) ||
        xa_mul_ok(B * 1, P1, &nq) || xa_mul_ok(nq, Ck, &nq) || xa_mul_ok(B, P2, &nk) ||
        xa_mul_ok(nk, Ck + Cv, &nk) || xa_mul_ok(B * P1, Cv, &no) ||
        xa_mul_ok(B, P1 * XA_MAX(m->cfg.in1, 1), &tot) || xa_mul_ok(B, P2 * m->cfg.in2, &tot) ||
        nq + nk + no > INT64_MAX / 8)
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow", fn);
    nv = B * P2 * Cv;
    nk = B * P2 * Ck;
    const int64_t n = nq + nk + nv + no;
    float *buf = xa_alloc((size_t)n * sizeof(float));
    if (!buf) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory (%lld floats)", fn, (long long)n);
    float *Q = buf, *K = Q + nq, *V = K + nk, *O = V + nv;
    xattn_status s;
    if ((s = conv1x1_t(in->x1, B, m->cfg.in1, P1, m->wq, m->bq, Ck, Q)) ||
        (s = conv1x1_t(in->x2, B, m->cfg.in2, P2, m->wk, m->bk, Ck, K)) ||
        (s = conv1x1_t(in->x2, B, m->cfg.in2, P2, m->wv, m->bv, Cv, V)))
        goto done;
    {
        xa_attn p;
        memset(&p, 0, sizeof p);
        p.B = B;
        p.H = 1;
        p.I = P1;
        p.J = P2;
        p.dh = Ck;
        p.dv = Cv;
        p.q = Q;
        p.q_sb = P1 * Ck;
        p.q_si = Ck;
        p.k = K;
        p.k_sb = P2 * Ck;
        p.k_sj = Ck;
        p.v = V;
        p.v_sb = P2 * Cv;
        p.v_sj = Cv;
        p.out = O;
        p.o_sb = P1 * Cv;
        p.o_si = Cv;
        p.scale = in->has_scale ? in->scale : 1.0f;
        p.fill = XATTN_FILL_NEG_INF;
        p.fn = fn;
        if ((s = xa_attention(&p))) goto done;
    }
    transpose_bpc(O, out, B, P1, Cv);
    xa_clear_error();
done:
    xa_free(buf);
    return s;
}
