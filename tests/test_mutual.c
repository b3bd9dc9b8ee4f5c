/*
 * M3: xattn_mutual / xattn_mutual_terms / xattn_mutual_bands against fixtures from the MCA
 * notebook's module in float64 (tests/reference/gen_mutual.py), at threads 1 and 2 and kernel
 * sets auto and scalar; plus argument errors.
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const FIXTURES[] = {"len1",      "b2_n33_d17",  "b3_n65_d8", "n257_d32",
                                       "b2_n5_d64", "terms_33_65", "terms_1_7", "bands_ax1",
                                       "bands_ax3", "bands_axm2"};
static double g_worst;

static void run_fixture(const char *name)
{
    char file[256];
    snprintf(file, sizeof file, "mutual_%s.safetensors", name);
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(file), &st));
    if (!st) return;
    char kind[32] = "mutual";
    const char *kv = xattn_st_meta_get(st, "kind");
    CHECK(kv != NULL);
    if (kv) snprintf(kind, sizeof kind, "%s", kv);
    const char *axs = xattn_st_meta_get(st, "band_axis");
    int band_axis = axs ? atoi(axs) : 1;
    xattn_array aa, ab, e1, e2;
    memset(&e2, 0, sizeof e2);
    const float *a = tu_get_f32(st, "input.a", &aa);
    const float *b = tu_get_f32(st, "input.b", &ab);
    int terms = !strcmp(kind, "terms");
    const float *r1 = tu_get_f32(st, terms ? "expected.a_out" : "expected.out", &e1);
    const float *r2 = terms ? tu_get_f32(st, "expected.b_out", &e2) : NULL;
    xattn_st_close(st);

    int64_t n1 = xattn_array_numel(&e1), n2 = terms ? xattn_array_numel(&e2) : 0;
    float *o1 = malloc((size_t)n1 * sizeof(float));
    float *o2 = malloc((size_t)(n2 ? n2 : 1) * sizeof(float));
    const char *isas[] = {"auto", "scalar"};
    double worst = 0;
    for (int ii = 0; ii < 2; ii++) {
        CHECK_OK(xattn_set_isa(isas[ii]));
        for (int threads = 1; threads <= 2; threads++) {
            xattn_set_threads(threads);
            char what[256];
            snprintf(what, sizeof what, "mutual %s (isa %s, threads %d)", name, isas[ii], threads);
            for (int64_t t = 0; t < n1; t++) o1[t] = NAN;
            if (terms) {
                for (int64_t t = 0; t < n2; t++) o2[t] = NAN;
                CHECK_OK(xattn_mutual_terms(a, aa.shape[1], b, ab.shape[1], aa.shape[0],
                                            aa.shape[2], o1, o2));
                worst = tu_max(worst, tu_check_close(what, o2, r2, n2, TU_TOL));
            } else if (!strcmp(kind, "bands")) {
                CHECK_OK(xattn_mutual_bands(a, b, aa.ndim, aa.shape, band_axis, o1));
            } else {
                CHECK_OK(xattn_mutual(a, b, aa.shape[0], aa.shape[1], aa.shape[2], o1));
            }
            worst = tu_max(worst, tu_check_close(what, o1, r1, n1, TU_TOL));
        }
    }
    xattn_set_isa("auto");
    xattn_set_threads(0);
    printf("  %-14s %-6s shape a (%lld, %lld, %lld%s)  max err %.2e\n", name, kind,
           (long long)aa.shape[0], (long long)aa.shape[1], (long long)aa.shape[2],
           aa.ndim > 3 ? ", ..." : "", worst);
    g_worst = tu_max(g_worst, worst);
    free(o1);
    free(o2);
    xattn_array_free(&aa);
    xattn_array_free(&ab);
    xattn_array_free(&e1);
    xattn_array_free(&e2);
}

static void expect_msg(const char *needle)
{
    if (!strstr(xattn_last_error(), needle)) {
        tu_failures++;
        fprintf(stderr, "message '%s' lacks '%s'\n", xattn_last_error(), needle);
    }
    tu_checks++;
}

static void errors(void)
{
    float x[64] = {0}, y[64] = {0}, o[64];
    CHECK_FAIL(xattn_mutual(NULL, y, 1, 2, 2, o), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_mutual(x, y, 1, 0, 2, o), XATTN_ERR_SHAPE);
    expect_msg("xattn_mutual");
    CHECK_FAIL(xattn_mutual(x, y, 1, 2, -1, o), XATTN_ERR_SHAPE);
    CHECK_FAIL(xattn_mutual(x, y, INT64_MAX / 2, INT64_MAX / 2, 4, o), XATTN_ERR_NOMEM);
    CHECK_FAIL(xattn_mutual_terms(x, 2, y, 0, 1, 2, o, o), XATTN_ERR_SHAPE);
    CHECK_FAIL(xattn_mutual_terms(x, 2, y, 3, 1, 2, o, NULL), XATTN_ERR_ARG);
    int64_t sh4[4] = {1, 2, 2, 2};
    CHECK_FAIL(xattn_mutual_bands(x, y, 2, sh4, 0, o), XATTN_ERR_SHAPE);
    expect_msg("rank 2");
    CHECK_FAIL(xattn_mutual_bands(x, y, 4, sh4, 4, o), XATTN_ERR_ARG);
    expect_msg("band axis 4");
    CHECK_FAIL(xattn_mutual_bands(x, y, 4, sh4, -5, o), XATTN_ERR_ARG);
    int64_t sh0[4] = {1, 0, 2, 2};
    CHECK_FAIL(xattn_mutual_bands(x, y, 4, sh0, 1, o), XATTN_ERR_SHAPE);
    /* a fully identical pair: each term is a convex mix of rows; N = 1 returns 2*a */
    float a1[3] = {1, 2, 3}, b1[3] = {-1, 0.5f, 4}, o1[3];
    CHECK_OK(xattn_mutual(a1, b1, 1, 1, 3, o1));
    CHECK(fabsf(o1[0] - 0.0f) < 1e-6f && fabsf(o1[1] - 2.5f) < 1e-6f &&
          fabsf(o1[2] - 7.0f) < 1e-6f);
}

int main(void)
{
    printf("test_mutual:\n");
    for (size_t i = 0; i < sizeof FIXTURES / sizeof FIXTURES[0]; i++) run_fixture(FIXTURES[i]);
    printf("  worst error %.2e (tolerance %.0e * (1 + |ref|))\n", g_worst, TU_TOL);
    errors();
    return tu_finish("test_mutual");
}
