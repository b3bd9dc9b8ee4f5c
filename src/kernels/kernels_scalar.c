/* Portable scalar kernels: the reference every ISA variant is tested against. */
#include "kernels.h"
#include "../base/base.h"

#include <math.h>

#define SC_MR 4
#define SC_NR 8

/* C (SC_MR, SC_NR) = or += A (k, lda>=SC_MR)^T-panel * B (k, ldb>=SC_NR) */
static void ukr_scalar(int64_t k, const float *A, int64_t lda, const float *B, int64_t ldb,
                       float *C, int64_t ldc, int accumulate)
{
    float acc[SC_MR][SC_NR] = {{0}};
    for (int64_t p = 0; p < k; p++) {
        const float *a = A + p * lda, *b = B + p * ldb;
        for (int i = 0; i < SC_MR; i++)
            for (int j = 0; j < SC_NR; j++) acc[i][j] += a[i] * b[j];
    }
    for (int i = 0; i < SC_MR; i++)
        for (int j = 0; j < SC_NR; j++)
            C[i * ldc + j] = accumulate ? C[i * ldc + j] + acc[i][j] : acc[i][j];
}

static float dot_scalar(const float *a, const float *b, int64_t n)
{
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy_scalar(float a, const float *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

static void gemv_scalar(const float *A, int64_t lda, int64_t rows, const float *x, int64_t n,
                        float *y)
{
    for (int64_t r = 0; r < rows; r++) y[r] = dot_scalar(A + r * lda, x, n);
}

static void gemv_t_scalar(const float *A, int64_t lda, int64_t rows, const float *p, int64_t n,
                          float *y)
{
    for (int64_t r = 0; r < rows; r++) axpy_scalar(p[r], A + r * lda, y, n);
}

static void vexp_scalar(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) x[i] = expf(x[i]);
}

/* S (rows, cols) row stride ld; m (cols) */
static void colmax_scalar(const float *S, int64_t rows, int64_t cols, int64_t ld, float *m)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            if (S[r * ld + c] > m[c]) m[c] = S[r * ld + c];
}

/* S (rows, cols) row stride ld; m, sum (cols) */
static void expsub_scalar(float *S, int64_t rows, int64_t cols, int64_t ld, const float *m,
                          float *sum)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            float e = expf(S[r * ld + c] - m[c]);
            S[r * ld + c] = e;
            sum[c] += e;
        }
}

static void softmax_scalar(float *x, int64_t n)
{
    if (n <= 0) return;
    float mx = x[0];
    for (int64_t i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double s = 0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        s += x[i];
    }
    float inv = (float)(1.0 / s);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

static void rmsnorm_scalar(const float *x, const float *w, float eps, int64_t n, float *y)
{
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * r * (w ? w[i] : 1.0f);
}

static void layernorm_scalar(const float *x, const float *w, const float *b, float eps, int64_t n,
                             float *y)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += x[i];
    double mean = s / (double)n, v = 0;
    for (int64_t i = 0; i < n; i++) v += ((double)x[i] - mean) * ((double)x[i] - mean);
    float r = (float)(1.0 / sqrt(v / (double)n + eps));
    float mf = (float)mean;
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] - mf) * r * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
}

static void gelu_scalar(float *x, int64_t n, int tanh_form)
{
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        if (tanh_form)
            x[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
        else
            x[i] = 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
    }
}

static void dotn_scalar(const float *x, int64_t ldx, int64_t rows, const float *w, int64_t n,
                        float *out)
{
    for (int64_t r = 0; r < rows; r++) out[r] = dot_scalar(x + r * ldx, w, n);
}

static void dot_q8_scalar(const float *x, int64_t ldx, int64_t rows, const int8_t *q, int64_t n,
                          float *out)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *a = x + r * ldx;
        float s = 0.0f;
        for (int64_t k = 0; k < n; k++) s += a[k] * (float)q[k];
        out[r] = s;
    }
}

static void dot2_q8_scalar(const float *x, int64_t ldx, int64_t rows, const int8_t *q, int64_t ldq,
                           int64_t n, float *out0, float *out1)
{
    dot_q8_scalar(x, ldx, rows, q, n, out0);
    dot_q8_scalar(x, ldx, rows, q + ldq, n, out1);
}

static void cvt_h_scalar(const uint16_t *src, float *dst, int64_t n, int f16)
{
    for (int64_t i = 0; i < n; i++) dst[i] = xa_half_to_f32(src[i], f16);
}

const xa_kernels xa_kernels_scalar = {
    .name = "scalar",
    .mr = SC_MR,
    .nr = SC_NR,
    .ukr = ukr_scalar,
    .dot = dot_scalar,
    .axpy = axpy_scalar,
    .gemv = gemv_scalar,
    .gemv_t = gemv_t_scalar,
    .vexp = vexp_scalar,
    .colmax = colmax_scalar,
    .expsub = expsub_scalar,
    .softmax = softmax_scalar,
    .rmsnorm = rmsnorm_scalar,
    .layernorm = layernorm_scalar,
    .gelu = gelu_scalar,
    .dotn = dotn_scalar,
    .dot_q8 = dot_q8_scalar,
    .cvt_h = cvt_h_scalar,
    .dot2_q8 = dot2_q8_scalar,
};
