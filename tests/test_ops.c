/* Public row-wise operations (softmax, RMSNorm, LayerNorm, GELU) against torch in float64
 * (tests/reference/gen_ops.py), for every kernel set and threads 1 and 2, in and out of place. */
#include "testutil.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("ops.safetensors"), &st));
    if (!st) return tu_finish("test_ops");
    xattn_array ax = {0}, aw = {0}, ab = {0}, ag = {0}, r[6] = {{0}};
    const char *names[] = {"softmax",         "rmsnorm", "layernorm",
                           "layernorm_eps12", "gelu",    "gelu_tanh"};
    float *x = tu_get_f32(st, "x", &ax), *w = tu_get_f32(st, "w", &aw),
          *b = tu_get_f32(st, "b", &ab);
    float *g = tu_get_f32(st, "g", &ag);
    float *ref[6];
    for (int i = 0; i < 6; i++) ref[i] = tu_get_f32(st, names[i], &r[i]);
    const int64_t rows = ax.shape[0], n = ax.shape[1], ng = ag.shape[0];
    float *y = malloc(sizeof(float) * (size_t)(rows * n)), *yg = malloc(sizeof(float) * (size_t)ng);
    const char *isas[] = TU_ISAS;
    double worst = 0;
    for (int is = 0; is < TU_N_ISAS; is++) {
        if (xattn_set_isa(isas[is]) != XATTN_OK) continue;
        for (int th = 1; th <= 2; th++) {
            xattn_set_threads(th);
            char what[128];
#define CLOSE(name, got, want, cnt)                                                                \
    do {                                                                                           \
        snprintf(what, sizeof what, "%s %s t%d", name, isas[is], th);                              \
        double e_ = tu_check_close(what, got, want, cnt, TU_TOL);                                  \
        if (e_ > worst) worst = e_;                                                                \
    } while (0)
            memcpy(y, x, sizeof(float) * (size_t)(rows * n));
            CHECK_OK(xattn_softmax(y, rows, n));
            CLOSE("softmax", y, ref[0], rows * n);
            CHECK_OK(xattn_rmsnorm(x, rows, n, w, FLT_EPSILON, y));
            CLOSE("rmsnorm", y, ref[1], rows * n);
            memcpy(y, x, sizeof(float) * (size_t)(rows * n));
            CHECK_OK(xattn_layernorm(y, rows, n, w, b, 1e-5f, y)); /* in place */
            CLOSE("layernorm", y, ref[2], rows * n);
            CHECK_OK(xattn_layernorm(x, rows, n, w, b, 1e-12f, y));
            CLOSE("layernorm eps 1e-12", y, ref[3], rows * n);
            memcpy(yg, g, sizeof(float) * (size_t)ng);
            CHECK_OK(xattn_gelu(yg, ng, 0));
            CLOSE("gelu", yg, ref[4], ng);
            memcpy(yg, g, sizeof(float) * (size_t)ng);
            CHECK_OK(xattn_gelu(yg, ng, 1));
            CLOSE("gelu tanh", yg, ref[5], ng);
        }
    }
    xattn_set_isa("auto");
    xattn_set_threads(0);
    printf("ops against torch float64: max rel error %.3g\n", worst);
    CHECK_FAIL(xattn_softmax(NULL, 1, 1), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_rmsnorm(x, -1, n, w, 1e-6f, y), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_layernorm(x, 1, 0, w, b, 1e-5f, y), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_layernorm(x, 1, n, w, b, -1.0f, y), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_gelu(yg, 0, 0), XATTN_ERR_ARG);
    free(y);
    free(yg);
    xattn_array_free(&ax);
    xattn_array_free(&aw);
    xattn_array_free(&ab);
    xattn_array_free(&ag);
    for (int i = 0; i < 6; i++) xattn_array_free(&r[i]);
    xattn_st_close(st);
    return tu_finish("test_ops");
}
