/*
 * Internal kernel interface. Kernels take raw float pointers and sizes; shapes are in comments.
 * One table per instruction set (scalar, avx2, avx512) is filled at start-up and selected from
 * the CPU's features; the scalar table is the reference every other one is tested against.
 */
#ifndef XATTN_KERNELS_H
#define XATTN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/*
 * Micro-kernel (BLIS style), full tile only:
 *   C[i*ldc + j] (= or +=) sum_{p<k} A[p*lda + i] * B[p*ldb + j]   for i < mr, j < nr
 * A: (k, mr) "column panel": row p holds the mr values of column p of the left operand.
 * B: (k, nr) "row panel": row p holds nr values of row p of the right operand.
 * accumulate = 0 overwrites C, 1 adds to it. lda >= mr and ldb >= nr may exceed the panel
 * width (packed panels use lda = mr, ldb = nr; other callers read operands in place).
 */
typedef void (*xa_ukr_fn)(int64_t k, const float *A, int64_t lda, const float *B, int64_t ldb,
                          float *C, int64_t ldc, int accumulate);

typedef struct xa_kernels {
    const char *name; /* "scalar", "avx2", "avx512" */
    int mr, nr;       /* micro-tile of ukr */
    xa_ukr_fn ukr;

    /* sum_i a[i] * b[i] over n values (fp32 accumulation in any order). */
    float (*dot)(const float *a, const float *b, int64_t n);

    /* y[i] += a * x[i] over n values. */
    void (*axpy)(float a, const float *x, float *y, int64_t n);
    /* y[r] = sum_d A[r*lda + d] * x[d]  for r < rows, d < n      (A rows, e.g. keys) */
    void (*gemv)(const float *A, int64_t lda, int64_t rows, const float *x, int64_t n, float *y);
    /* y[d] += sum_r p[r] * A[r*lda + d]  for d < n, r < rows     (weighted sum of rows) */
    void (*gemv_t)(const float *A, int64_t lda, int64_t rows, const float *p, int64_t n, float *y);

    /* x[i] = exp(x[i]) in place, n >= 0. exp(-inf) = 0, exp of very negative = 0. */
    void (*vexp)(float *x, int64_t n);

    /* Column-wise online-softmax helpers on a row-major (rows, cols) tile S with row stride ld:
     *   colmax:  m[c] = max(m[c], max_r S[r][c])
     *   expsub:  S[r][c] = exp(S[r][c] - m[c]); sum[c] += S[r][c]
     * (cols a multiple of nothing; any size) */
    void (*colmax)(const float *S, int64_t rows, int64_t cols, int64_t ld, float *m);
    void (*expsub)(float *S, int64_t rows, int64_t cols, int64_t ld, const float *m, float *sum);

    /* Row-wise softmax in place over n values: x = exp(x - max) / sum. */
    void (*softmax)(float *x, int64_t n);
    /* y = x / sqrt(mean(x^2) + eps) * w (w may be NULL), n values. */
    void (*rmsnorm)(const float *x, const float *w, float eps, int64_t n, float *y);
    /* y = (x - mean) / sqrt(var + eps) * w + b (w, b may be NULL), biased variance. */
    void (*layernorm)(const float *x, const float *w, const float *b, float eps, int64_t n,
                      float *y);
    /* In place: x = gelu(x), erf form (tanh_form = 0) or tanh approximation (tanh_form = 1). */
    void (*gelu)(float *x, int64_t n, int tanh_form);
} xa_kernels;

/* Tables; a table is NULL-initialised when its ISA was not compiled in. */
extern const xa_kernels xa_kernels_scalar;
#if defined(XATTN_HAVE_X86_KERNELS)
extern const xa_kernels xa_kernels_avx2;
extern const xa_kernels xa_kernels_avx512;
#endif

/* The table in use (never NULL). */
const xa_kernels *xa_kern(void);
/* The table for a name if compiled in and supported by this CPU, else NULL. */
const xa_kernels *xa_kern_by_name(const char *name);

/* ---- GEMM framework (gemm.c): packing, cache blocking, threads over the kernel table. ---- */
/* C (M,N) = alpha * op(A) * op(B) + beta * C using table `kt` (NULL = current). */
void xa_sgemm(const xa_kernels *kt, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
              float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
              float *C, int64_t ldc);

#endif
