/* Public row-wise operations over the kernel table, threaded over rows. */
#include "kernels.h"
#include "../base/base.h"

#include <math.h>

static xattn_status check_rows(const char *fn, const void *x, const void *y, int64_t rows,
                               int64_t n)
{
    if (!x || !y) return xa_error(XATTN_ERR_ARG, "%s: x and y must not be NULL", fn);
    if (rows < 0 || n < 1)
        return xa_error(XATTN_ERR_ARG, "%s: need rows >= 0 and n >= 1 (rows=%lld n=%lld)", fn,
                        (long long)rows, (long long)n);
    int64_t t;
    if (xa_mul_ok(rows, n, &t)) return xa_error(XATTN_ERR_ARG, "%s: rows*n overflows", fn);
    return XATTN_OK;
}

#ifdef _OPENMP
/* threads only when there is enough work to pay for them */
static int row_threads(int64_t rows, int64_t n)
{
    return (double)rows * (double)n < 65536.0 ? 1 : xa_threads();
}
#endif

xattn_status xattn_softmax(float *x, int64_t rows, int64_t n)
{
    xattn_status s = check_rows("xattn_softmax", x, x, rows, n);
    if (s) return s;
    const xa_kernels *kt = xa_kern();
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(row_threads(rows, n))
#endif
    for (int64_t r = 0; r < rows; r++) kt->softmax(x + r * n, n);
    return XATTN_OK;
}

xattn_status xattn_rmsnorm(const float *x, int64_t rows, int64_t n, const float *w, float eps,
                           float *y)
{
    xattn_status s = check_rows("xattn_rmsnorm", x, y, rows, n);
    if (s) return s;
    if (!(eps >= 0.0f) || !isfinite(eps))
        return xa_error(XATTN_ERR_ARG, "xattn_rmsnorm: eps must be finite and >= 0");
    const xa_kernels *kt = xa_kern();
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(row_threads(rows, n))
#endif
    for (int64_t r = 0; r < rows; r++) kt->rmsnorm(x + r * n, w, eps, n, y + r * n);
    return XATTN_OK;
}

xattn_status xattn_layernorm(const float *x, int64_t rows, int64_t n, const float *w,
                             const float *b, float eps, float *y)
{
    xattn_status s = check_rows("xattn_layernorm", x, y, rows, n);
    if (s) return s;
    if (!(eps >= 0.0f) || !isfinite(eps))
        return xa_error(XATTN_ERR_ARG, "xattn_layernorm: eps must be finite and >= 0");
    const xa_kernels *kt = xa_kern();
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(row_threads(rows, n))
#endif
    for (int64_t r = 0; r < rows; r++) kt->layernorm(x + r * n, w, b, eps, n, y + r * n);
    return XATTN_OK;
}

xattn_status xattn_gelu(float *x, int64_t n, int tanh_form)
{
    xattn_status s = check_rows("xattn_gelu", x, x, 1, n);
    if (s) return s;
    const xa_kernels *kt = xa_kern();
    const int64_t chunk = 16384;
    const int64_t nchunks = (n + chunk - 1) / chunk;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nchunks > 4 ? xa_threads() : 1)
#endif
    for (int64_t c = 0; c < nchunks; c++)
        kt->gelu(x + c * chunk, XA_MIN(chunk, n - c * chunk), tanh_form != 0);
    return XATTN_OK;
}
