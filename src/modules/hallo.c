/*
 * M7: HALLO region-masked hierarchical audio-visual cross-attention.
 *
 * The audio path of AudioTemporalBasicTransformerBlock (fudan-generative-vision/hallo,
 * hallo/models/attention.py): three diffusers Attentions over the audio tokens, each output
 * multiplied by its soft region mask (full/pose, face, lip) at the block's latent resolution,
 * passed through a 1x1 "zero" convolution (a per-token linear map with bias), and added to the
 * residual with fixed motion scales; then the GEGLU feed-forward with norm3.
 *
 * The masks come from xattn_resize_masks: torch's antialiased bilinear interpolation written as
 * two small dense resampling matrices (out = Wy * M * Wx^T), so it runs on the GEMM kernels.
 */
#include "base/base.h"
#include "kernels/kernels.h"
#include "modules/mha.h"
#include "modules/weights.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------- */
/* Mask pyramid                                                                             */
/* ---------------------------------------------------------------------------------------- */

/* Row i of W (out_n, in_n): the weights torch's separable antialiased bilinear filter
 * (aten upsample_bilinear2d_aa, align_corners=False, no scale_factor) gives output i. */
static void resample_matrix(int64_t in_n, int64_t out_n, float *W)
{
    double scale = (double)in_n / (double)out_n;
    double support = scale >= 1.0 ? scale : 1.0;
    double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
    memset(W, 0, (size_t)(in_n * out_n) * sizeof(float));
    for (int64_t i = 0; i < out_n; i++) {
        double center = scale * ((double)i + 0.5);
        int64_t lo = (int64_t)(center - support + 0.5);
        if (lo < 0) lo = 0;
        int64_t hi = (int64_t)(center + support + 0.5);
        if (hi > in_n) hi = in_n;
        double total = 0.0;
        for (int64_t j = lo; j < hi; j++) {
            double f = 1.0 - fabs(((double)j - center + 0.5) * invscale);
            total += f > 0.0 ? f : 0.0;
        }
        for (int64_t j = lo; j < hi; j++) {
            double f = 1.0 - fabs(((double)j - center + 0.5) * invscale);
            W[i * in_n + j] = total > 0.0 && f > 0.0 ? (float)(f / total) : 0.0f;
        }
    }
}

xattn_status xattn_resize_masks(const float *in, int64_t n, int64_t Hm, int64_t Wm, int64_t h,
                                int64_t w, float *out)
{
    static const char *fn = "xattn_resize_masks";
    if (!in || !out) return xa_error(XATTN_ERR_ARG, "%s: NULL pointer", fn);
    if (n < 0 || Hm <= 0 || Wm <= 0 || h <= 0 || w <= 0)
        return xa_error(XATTN_ERR_SHAPE, "%s: bad sizes n=%lld, (%lld, %lld) -> (%lld, %lld)", fn,
                        (long long)n, (long long)Hm, (long long)Wm, (long long)h, (long long)w);
    int64_t a, b, c, d;
    if (xa_mul_ok(h, Hm, &a) || xa_mul_ok(w, Wm, &b) || xa_mul_ok(Hm, w, &c) ||
        xa_mul_ok(Hm, Wm, &d) || xa_mul_ok(h, w, &d) || a + b + c < 0 || a + b + c > (INT64_MAX / 8))
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow", fn);
    if (n == 0) return XATTN_OK;
    float *Wy = xa_alloc((size_t)(a + b + c) * sizeof(float));
    if (!Wy) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    float *Wx = Wy + a, *tmp = Wx + b;
    resample_matrix(Hm, h, Wy);
    resample_matrix(Wm, w, Wx);
    xattn_status s = XATTN_OK;
    for (int64_t k = 0; k < n && s == XATTN_OK; k++) {
        const float *src = in + k * Hm * Wm;
        /* tmp (Hm, w) = src (Hm, Wm) Wx^T;  out (h, w) = Wy (h, Hm) tmp */
        s = xattn_linear(src, Hm, Wm, Wx, NULL, w, tmp);
        if (s == XATTN_OK)
            s = xattn_sgemm(0, 0, h, w, Hm, 1.0f, Wy, Hm, tmp, w, 0.0f, out + k * h * w, w);
    }
    xa_free(Wy);
    if (s == XATTN_OK) xa_clear_error();
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Block                                                                                    */
/* ---------------------------------------------------------------------------------------- */

enum { W_N2W, W_N2B, W_N3W, W_N3B, W_ZFW, W_ZFB, W_ZAW, W_ZAB, W_ZLW, W_ZLB, W_F0W, W_F0B,
       W_F2W, W_F2B, W_COUNT };

static const char *const WNAMES[W_COUNT] = {
    "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias",
    "zero_conv_full.weight", "zero_conv_full.bias", "zero_conv_face.weight", "zero_conv_face.bias",
    "zero_conv_lip.weight", "zero_conv_lip.bias", "ff.net.0.proj.weight", "ff.net.0.proj.bias",
    "ff.net.2.weight", "ff.net.2.bias"};

struct xattn_hallo {
    xattn_hallo_config cfg;
    xattn_mha *attn[3];
    float *w[W_COUNT];
    float *block;
};

static const char *FN = "xattn_hallo_load";

static xattn_status check_dims(const xa_wref *t, int ndim, const int64_t *want, const char *why)
{
    xattn_status s = xa_wref_check_float(t);
    if (s != XATTN_OK) return s;
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == want[i];
    if (ok) return XATTN_OK;
    char got[128], exp[128];
    xa_wref_shape(t, got, sizeof got);
    xa_dims_str(ndim, want, exp, sizeof exp);
    return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s but %s implies %s", t->shown, got,
                    why, exp);
}

static xattn_status load(const xattn_safetensors *st, const char *prefix, int64_t heads,
                         xattn_hallo *m)
{
    static const char *const an[3] = {"attn2_0.", "attn2_1.", "attn2_2."};
    xattn_status s;
    xa_wref refs[W_COUNT];
    memset(refs, 0, sizeof refs);
    for (int i = 0; i < W_COUNT; i++) {
        s = xa_wref_find(st, FN, prefix, "", WNAMES[i], &refs[i]);
        if (s != XATTN_OK) return s;
        if (!refs[i].present)
            return xa_wref_missing(&refs[i], "part of HALLO's AudioTemporalBasicTransformerBlock "
                                             "(audio path)");
    }
    xa_wref *n2w = &refs[W_N2W];
    if ((s = xa_wref_check_float(n2w)) != XATTN_OK) return s;
    if (n2w->ndim != 1 || n2w->shape[0] <= 0) {
        char got[128];
        xa_wref_shape(n2w, got, sizeof got);
        return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s; expected (dim,)", n2w->shown,
                        got);
    }
    int64_t C = n2w->shape[0];
    xa_wref *f0 = &refs[W_F0W];
    if ((s = xa_wref_check_float(f0)) != XATTN_OK) return s;
    if (f0->ndim != 2 || f0->shape[1] != C || f0->shape[0] <= 0 || f0->shape[0] % 2) {
        char got[128];
        xa_wref_shape(f0, got, sizeof got);
        return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s; expected (2*inner, %lld)",
                        f0->shown, got, (long long)C);
    }
    int64_t F = f0->shape[0] / 2;
    char why[64];
    snprintf(why, sizeof why, "dim %lld (norm2.weight)", (long long)C);
    const int64_t vC[1] = {C}, vCC11[4] = {C, C, 1, 1}, v2F[1] = {2 * F}, vCF[2] = {C, F};
    for (int i = 0; i < W_COUNT; i++) {
        const int64_t *want = vC;
        int nd = 1;
        if (i == W_ZFW || i == W_ZAW || i == W_ZLW) want = vCC11, nd = 4;
        else if (i == W_F0W) continue;
        else if (i == W_F0B) want = v2F;
        else if (i == W_F2W) want = vCF, nd = 2;
        if ((s = check_dims(&refs[i], nd, want, i == W_F0B || i == W_F2W ? "ff.net.0.proj.weight"
                                                                          : why)) != XATTN_OK)
            return s;
    }

    int64_t total = 0;
    for (int i = 0; i < W_COUNT; i++) total += (xa_wref_numel(&refs[i]) + 15) & ~(int64_t)15;
    m->block = xa_alloc((size_t)total * sizeof(float));
    if (!m->block) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN);
    int64_t off = 0;
    for (int i = 0; i < W_COUNT; i++) {
        refs[i].dst = m->w[i] = m->block + off;
        off += (xa_wref_numel(&refs[i]) + 15) & ~(int64_t)15;
        if ((s = xa_wref_fetch(st, &refs[i])) != XATTN_OK) return s;
    }

    size_t plen = strlen(prefix);
    char pre[XA_WREF_NAME_MAX];
    if (plen + 9 >= sizeof pre) return xa_error(XATTN_ERR_ARG, "%s: prefix too long", FN);
    xattn_mha_config ac[3];
    for (int k = 0; k < 3; k++) {
        snprintf(pre, sizeof pre, "%s%s", prefix, an[k]);
        if (!xa_wref_has(st, pre, "to_q.weight")) {
            xa_wref t;
            if ((s = xa_wref_find(st, FN, pre, "", "to_q.weight", &t)) != XATTN_OK) return s;
            return xa_wref_missing(&t, "HALLO's region attention (diffusers Attention)");
        }
        const xattn_mha_opts ao = {.heads = heads > 0 ? heads : 0};
        if ((s = xattn_mha_load(st, pre, &ao, &m->attn[k])) != XATTN_OK) return s;
        xattn_mha_get_config(m->attn[k], &ac[k]);
        if (ac[k].layout != XATTN_LAYOUT_DIFFUSERS)
            return xa_error(XATTN_ERR_FORMAT, "%s: '%s' is not a diffusers Attention", FN, pre);
        if (ac[k].embed_dim != C || ac[k].out_dim != C)
            return xa_error(XATTN_ERR_SHAPE, "%s: %s maps %lld -> %lld channels; dim is %lld "
                                             "(norm2.weight)", FN, pre, (long long)ac[k].embed_dim,
                            (long long)ac[k].out_dim, (long long)C);
        if (ac[k].kdim != ac[k].vdim || ac[k].kdim != ac[0].kdim || ac[k].heads != ac[0].heads)
            return xa_error(XATTN_ERR_SHAPE, "%s: %s has audio width %lld / %lld heads; %sto_k has "
                                             "%lld / %lld", FN, pre, (long long)ac[k].kdim,
                            (long long)ac[k].heads, prefix, (long long)ac[0].kdim,
                            (long long)ac[0].heads);
    }
    m->cfg.dim = C;
    m->cfg.audio_dim = ac[0].kdim;
    m->cfg.heads = ac[0].heads;
    m->cfg.head_dim = ac[0].head_dim;
    m->cfg.inner_dim = ac[0].inner_dim;
    m->cfg.ff_inner = F;
    return XATTN_OK;
}

xattn_status xattn_hallo_load(const xattn_safetensors *st, const char *prefix, int64_t heads,
                              xattn_hallo **out)
{
    if (!out) return xa_error(XATTN_ERR_ARG, "%s: out is NULL", FN);
    *out = NULL;
    if (!st) return xa_error(XATTN_ERR_ARG, "%s: safetensors handle is NULL", FN);
    if (!prefix) prefix = "";
    xattn_hallo *m = calloc(1, sizeof *m);
    if (!m) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN);
    xattn_status s = load(st, prefix, heads, m);
    if (s != XATTN_OK) {
        xattn_hallo_free(m);
        return s;
    }
    *out = m;
    xa_clear_error();
    return XATTN_OK;
}

void xattn_hallo_free(xattn_hallo *m)
{
    if (!m) return;
    for (int k = 0; k < 3; k++) xattn_mha_free(m->attn[k]);
    xa_free(m->block);
    free(m);
}

void xattn_hallo_get_config(const xattn_hallo *m, xattn_hallo_config *cfg)
{
    if (m && cfg) *cfg = m->cfg;
}

/* y[r] += alpha * b for every row r of y (rows, n) */
static void add_rows(float *y, int64_t rows, int64_t n, const float *b, float alpha)
{
    const xa_kernels *kt = xa_kern();
#pragma omp parallel for num_threads(xa_threads()) if (rows * n > (1 << 16)) schedule(static)
    for (int64_t r = 0; r < rows; r++) kt->axpy(alpha, b, y + r * n, n);
}

xattn_status xattn_hallo_forward(const xattn_hallo *m, const xattn_hallo_inputs *in, float *out,
                                 float *regions)
{
    static const char *fn = "xattn_hallo_forward";
    if (!m) return xa_error(XATTN_ERR_ARG, "%s: module is NULL", fn);
    if (!in) return xa_error(XATTN_ERR_ARG, "%s: inputs is NULL", fn);
    if (!out) return xa_error(XATTN_ERR_ARG, "%s: out is NULL", fn);
    if (!in->x || !in->audio || !in->masks)
        return xa_error(XATTN_ERR_ARG, "%s: x, audio and masks are required", fn);
    const int64_t B = in->B, N = in->N, T = in->T, C = m->cfg.dim, F = m->cfg.ff_inner;
    if (B <= 0 || N <= 0 || T <= 0)
        return xa_error(XATTN_ERR_SHAPE, "%s: B=%lld, N=%lld, T=%lld must be positive", fn,
                        (long long)B, (long long)N, (long long)T);
    if (in->mask_batch != 1 && in->mask_batch != B)
        return xa_error(XATTN_ERR_SHAPE, "%s: masks have batch %lld; expected 1 or %lld", fn,
                        (long long)in->mask_batch, (long long)B);
    if (out == in->x) return xa_error(XATTN_ERR_ARG, "%s: out may not alias x", fn);
    int64_t M, MC, MF, tot;
    if (xa_mul_ok(B, N, &M) || xa_mul_ok(M, C, &MC) || xa_mul_ok(M, 2 * F, &MF) ||
        MC > INT64_MAX / 8 || MF > INT64_MAX / 8 || (tot = 2 * MC + MF) > INT64_MAX / 8 ||
        (uint64_t)tot > SIZE_MAX / sizeof(float))
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow (B=%lld, N=%lld)", fn, (long long)B,
                        (long long)N);
    float *nrm = xa_alloc((size_t)tot * sizeof(float));
    if (!nrm) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory (B=%lld, N=%lld)", fn,
                              (long long)B, (long long)N);
    float *att = nrm + MC, *proj = att + MC;
    const float one3[3] = {1.0f, 1.0f, 1.0f};
    const float *ms = in->motion_scale ? in->motion_scale : one3;
    const xa_kernels *kt = xa_kern();
    xattn_status s;

    s = xattn_layernorm(in->x, M, C, m->w[W_N2W], m->w[W_N2B], 1e-5f, nrm);
    if (s == XATTN_OK) memcpy(out, in->x, (size_t)MC * sizeof(float));

    xattn_mha_inputs ai;
    memset(&ai, 0, sizeof ai);
    ai.B = B;
    ai.I = N;
    ai.J = T;
    ai.query = nrm;
    ai.key = in->audio;
    ai.value = in->audio;
    const int64_t msb = in->mask_batch == 1 ? 0 : 3 * N;
    for (int k = 0; k < 3 && s == XATTN_OK; k++) {
        s = xa_mha_run(m->attn[k], &ai, &(xattn_mha_outputs){.out = att});
        if (s != XATTN_OK) break;
        const float *mk = in->masks + (int64_t)k * N;
#pragma omp parallel for num_threads(xa_threads()) if (MC > (1 << 16)) schedule(static)
        for (int64_t r = 0; r < M; r++) {
            float v = mk[(r / N) * msb + r % N];
            float *row = att + r * C;
            for (int64_t c = 0; c < C; c++) row[c] *= v;
        }
        const float *W = m->w[W_ZFW + 2 * k], *bias = m->w[W_ZFB + 2 * k];
        if (regions) {
            float *rk = regions + (int64_t)k * MC;
            s = xattn_linear(att, M, C, W, bias, C, rk);
            if (s == XATTN_OK && ms[k] != 0.0f) {
#pragma omp parallel for num_threads(xa_threads()) if (MC > (1 << 16)) schedule(static)
                for (int64_t r = 0; r < M; r++) kt->axpy(ms[k], rk + r * C, out + r * C, C);
            }
        } else if (ms[k] != 0.0f) {
            s = xattn_sgemm(0, 1, M, C, C, ms[k], att, C, W, C, 1.0f, out, C);
            if (s == XATTN_OK) add_rows(out, M, C, bias, ms[k]);
        }
    }

    /* feed-forward: out += (a * gelu(g)) W2^T + b2, [a | g] = norm3(out) W0^T + b0 */
    if (s == XATTN_OK) s = xattn_layernorm(out, M, C, m->w[W_N3W], m->w[W_N3B], 1e-5f, nrm);
    if (s == XATTN_OK) s = xattn_linear(nrm, M, C, m->w[W_F0W], m->w[W_F0B], 2 * F, proj);
    if (s == XATTN_OK) {
#pragma omp parallel for num_threads(xa_threads()) if (MF > (1 << 15)) schedule(static)
        for (int64_t r = 0; r < M; r++) {
            float *a = proj + r * 2 * F, *g = a + F;
            kt->gelu(g, F, 0);
            for (int64_t c = 0; c < F; c++) a[c] *= g[c];
        }
        s = xattn_sgemm(0, 1, M, C, F, 1.0f, proj, 2 * F, m->w[W_F2W], F, 1.0f, out, C);
    }
    if (s == XATTN_OK) add_rows(out, M, C, m->w[W_F2B], 1.0f);
    xa_free(nrm);
    if (s == XATTN_OK) xa_clear_error();
    return s;
}
