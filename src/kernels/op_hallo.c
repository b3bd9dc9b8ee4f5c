/*
 * Ops of HALLO's audio block: the mask pyramid (torch's antialiased bilinear interpolation as
 * two small dense resampling matrices, out = Wy M Wx^T, run on the GEMM) and region masking,
 * each with its backward.
 */
#include "kernels/op_hallo.h"
#include "base/base.h"
#include "kernels/kernels.h"

#include <math.h>
#include <string.h>

void xa_op_resample_matrix(int64_t in_n, int64_t out_n, float *W)
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

void xa_op_mask_rows(float *y, int64_t B, int64_t N, int64_t C, const float *mask, int64_t mask_sb,
                     float alpha)
{
    const int64_t rows = B * N;
#ifdef _OPENMP
#pragma omp parallel for num_threads(xa_threads()) if (rows * C > (1 << 16)) schedule(static)
#endif
    for (int64_t r = 0; r < rows; r++) {
        const float s = alpha * mask[(r / N) * mask_sb + r % N];
        float *row = y + r * C;
        for (int64_t c = 0; c < C; c++) row[c] *= s;
    }
}

void xa_op_mask_rows_backward(const float *x, float *dy, int64_t B, int64_t N, int64_t C,
                              const float *mask, int64_t mask_sb, float alpha, float *dmask)
{
    if (dmask) {
        /* one token at a time, its batch items in order: no sum depends on the threads */
#ifdef _OPENMP
#pragma omp parallel for num_threads(xa_threads()) if (B * N * C > (1 << 16)) schedule(static)
#endif
        for (int64_t n = 0; n < N; n++) {
            for (int64_t b = 0; b < B; b++) {
                const float *xr = x + (b * N + n) * C, *gr = dy + (b * N + n) * C;
                double s = 0.0;
                for (int64_t c = 0; c < C; c++) s += (double)gr[c] * xr[c];
                float *d = dmask + b * mask_sb + n;
                *d = (mask_sb || !b ? 0.0f : *d) + alpha * (float)s;
            }
        }
    }
    xa_op_mask_rows(dy, B, N, C, mask, mask_sb, alpha);
}

/* Checks the sizes of n maps (Hm, Wm) <-> (h, w) and, when n > 0, allocates *Wy: the resampling
 * matrices Wy (h, Hm) and Wx (w, Wm) after it, then a scratch of one intermediate map
 * (max(Hm * w, h * Wm) floats). */
static xattn_status resample_pair(const char *fn, const void *in, const void *out, int64_t n,
                                  int64_t Hm, int64_t Wm, int64_t h, int64_t w, float **Wy)
{
    if (!in || !out) return xa_error(XATTN_ERR_ARG, "%s: NULL pointer", fn);
    if (n < 0 || Hm <= 0 || Wm <= 0 || h <= 0 || w <= 0)
        return xa_error(XATTN_ERR_SHAPE, "%s: bad sizes n=%lld, (%lld, %lld) -> (%lld, %lld)", fn,
                        (long long)n, (long long)Hm, (long long)Wm, (long long)h, (long long)w);
    int64_t a, b, c, d, e;
    if (xa_mul_ok(h, Hm, &a) || xa_mul_ok(w, Wm, &b) || xa_mul_ok(Hm, w, &c) ||
        xa_mul_ok(h, Wm, &e) || xa_mul_ok(Hm, Wm, &d) || xa_mul_ok(h, w, &d) || a + b + c + e < 0 ||
        a + b + c + e > (INT64_MAX / 8))
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow", fn);
    *Wy = NULL;
    if (n == 0) return XATTN_OK;
    if (!(*Wy = xa_alloc((size_t)(a + b + (c > e ? c : e)) * sizeof(float))))
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    xa_op_resample_matrix(Hm, h, *Wy);
    xa_op_resample_matrix(Wm, w, *Wy + a);
    return XATTN_OK;
}

xattn_status xattn_resize_masks(const float *in, int64_t n, int64_t Hm, int64_t Wm, int64_t h,
                                int64_t w, float *out)
{
    static const char *fn = "xattn_resize_masks";
    float *Wy;
    xattn_status s = resample_pair(fn, in, out, n, Hm, Wm, h, w, &Wy);
    if (s || n == 0) return s;
    float *Wx = Wy + h * Hm, *tmp = Wx + w * Wm;
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

xattn_status xa_op_resize_masks_backward(const float *dy, int64_t n, int64_t Hm, int64_t Wm,
                                         int64_t h, int64_t w, float *dx)
{
    float *Wy;
    xattn_status s = resample_pair("xa_op_resize_masks_backward", dy, dx, n, Hm, Wm, h, w, &Wy);
    if (s || n == 0) return s;
    float *Wx = Wy + h * Hm, *tmp = Wx + w * Wm;
    for (int64_t k = 0; k < n && s == XATTN_OK; k++) {
        /* tmp (h, Wm) = dy (h, w) Wx;  dx (Hm, Wm) = Wy^T (Hm, h) tmp */
        s = xattn_sgemm(0, 0, h, Wm, w, 1.0f, dy + k * h * w, w, Wx, Wm, 0.0f, tmp, Wm);
        if (s == XATTN_OK)
            s = xattn_sgemm(1, 0, Hm, Wm, h, 1.0f, Wy, Hm, tmp, Wm, 0.0f, dx + k * Hm * Wm, Wm);
    }
    xa_free(Wy);
    return s;
}
