/*
 * M9: xattn_conv2d_cross_* against fixtures from the corrected seed-004 CrossAttention in
 * float64 (tests/reference/gen_conv2d.py), at threads 1 and 2 and kernel sets auto and scalar;
 * plus load and argument errors.
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const FIXTURES[] = {"len1",      "seed_same", "diff_33_65", "p257_scale",
                                       "nobias_b3", "f16",       "x2_len1"};
static double g_worst;

static void run_fixture(const char *name)
{
    char file[256];
    snprintf(file, sizeof file, "conv2d_%s.safetensors", name);
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(file), &st));
    if (!st) return;
    xattn_conv2d_cross *m = NULL;
    CHECK_OK(xattn_conv2d_cross_load(st, "", &m));
    if (!m) {
        xattn_st_close(st);
        return;
    }
    xattn_conv2d_cross_config cfg;
    xattn_conv2d_cross_get_config(m, &cfg);
    xattn_array a1, a2, ae;
    xattn_conv2d_cross_inputs in;
    memset(&in, 0, sizeof in);
    in.x1 = tu_get_f32(st, "input.x1", &a1);
    in.x2 = tu_get_f32(st, "input.x2", &a2);
    const float *ref = tu_get_f32(st, "expected.out", &ae);
    const char *sc = xattn_st_meta_get(st, "scale");
    if (sc && strcmp(sc, "none") != 0) {
        in.has_scale = 1;
        in.scale = (float)atof(sc);
    }
    xattn_st_close(st);
    CHECK(a1.shape[1] == cfg.in1 && a2.shape[1] == cfg.in2 && ae.shape[1] == cfg.out_channels);
    in.B = a1.shape[0];
    in.H1 = a1.shape[2];
    in.W1 = a1.shape[3];
    in.H2 = a2.shape[2];
    in.W2 = a2.shape[3];
    int64_t n = xattn_array_numel(&ae);
    float *out = malloc((size_t)n * sizeof(float));
    const char *isas[] = {"auto", "scalar"};
    double worst = 0;
    for (int ii = 0; ii < 2; ii++) {
        CHECK_OK(xattn_set_isa(isas[ii]));
        for (int threads = 1; threads <= 2; threads++) {
            xattn_set_threads(threads);
            char what[256];
            snprintf(what, sizeof what, "conv2d %s (isa %s, threads %d)", name, isas[ii], threads);
            for (int64_t t = 0; t < n; t++) out[t] = NAN;
            CHECK_OK(xattn_conv2d_cross_forward(m, &in, out));
            worst = tu_max(worst, tu_check_close(what, out, ref, n, TU_TOL));
        }
    }
    xattn_set_isa("auto");
    xattn_set_threads(0);
    printf(
        "  %-11s B=%lld C1=%lld C2=%lld Ck=%lld Cv=%lld x1 %lldx%lld x2 %lldx%lld  max err %.2e\n",
        name, (long long)in.B, (long long)cfg.in1, (long long)cfg.in2, (long long)cfg.qk_channels,
        (long long)cfg.out_channels, (long long)in.H1, (long long)in.W1, (long long)in.H2,
        (long long)in.W2, worst);
    g_worst = tu_max(g_worst, worst);
    free(out);
    xattn_array_free(&a1);
    xattn_array_free(&a2);
    xattn_array_free(&ae);
    xattn_conv2d_cross_free(m);
}

static float g_buf[1024];

static void add(xattn_st_entry *e, int *n, const char *name, int ndim, int64_t d0, int64_t d1)
{
    xattn_st_entry *x = &e[(*n)++];
    memset(x, 0, sizeof *x);
    x->name = name;
    x->dtype = XATTN_F32;
    x->ndim = ndim;
    x->shape[0] = d0;
    if (ndim > 1) x->shape[1] = d1;
    for (int i = 2; i < ndim; i++) x->shape[i] = 1;
    x->data = g_buf;
}

static void expect_load_fail(const xattn_st_entry *e, int n, xattn_status want, const char *needle)
{
    char tmp[256];
    snprintf(tmp, sizeof tmp, "/tmp/test_conv2d_%ld.safetensors", (long)getpid());
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_save(tmp, e, (size_t)n, NULL, 0));
    CHECK_OK(xattn_st_open(tmp, &st));
    unlink(tmp);
    xattn_conv2d_cross *m = NULL;
    CHECK_FAIL(xattn_conv2d_cross_load(st, "", &m), want);
    CHECK(m == NULL);
    if (!strstr(xattn_last_error(), needle)) {
        tu_failures++;
        fprintf(stderr, "message '%s' lacks '%s'\n", xattn_last_error(), needle);
    }
    xattn_conv2d_cross_free(m);
    xattn_st_close(st);
}

static void errors(void)
{
    xattn_st_entry e[8];
    int n = 0;
    add(e, &n, "conv_query.weight", 4, 4, 3);
    add(e, &n, "conv_key.weight", 4, 4, 3);
    expect_load_fail(e, n, XATTN_ERR_NOT_FOUND, "conv_value.weight");
    n = 0;
    add(e, &n, "conv_query.weight", 4, 4, 3);
    add(e, &n, "conv_key.weight", 4, 5, 3);
    add(e, &n, "conv_value.weight", 4, 4, 3);
    expect_load_fail(e, n, XATTN_ERR_SHAPE, "conv_key.weight");
    n = 0;
    add(e, &n, "conv_query.weight", 2, 4, 3);
    add(e, &n, "conv_key.weight", 4, 4, 3);
    add(e, &n, "conv_value.weight", 4, 4, 3);
    expect_load_fail(e, n, XATTN_ERR_SHAPE, "1x1 Conv2d");
    n = 0;
    add(e, &n, "conv_query.weight", 4, 4, 3);
    add(e, &n, "conv_key.weight", 4, 4, 3);
    add(e, &n, "conv_value.weight", 4, 4, 2);
    expect_load_fail(e, n, XATTN_ERR_SHAPE, "conv_value.weight");
    n = 0;
    add(e, &n, "conv_query.weight", 4, 4, 3);
    add(e, &n, "conv_key.weight", 4, 4, 3);
    add(e, &n, "conv_value.weight", 4, 4, 3);
    add(e, &n, "conv_value.bias", 1, 5, 0);
    expect_load_fail(e, n, XATTN_ERR_SHAPE, "conv_value.bias");

    /* forward argument errors on a valid module */
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("conv2d_len1.safetensors"), &st));
    xattn_conv2d_cross *m = NULL;
    CHECK_OK(xattn_conv2d_cross_load(st, "", &m));
    xattn_st_close(st);
    xattn_conv2d_cross *none = NULL;
    CHECK_FAIL(xattn_conv2d_cross_load(NULL, "", &none), XATTN_ERR_ARG);
    float x[64] = {0}, o[64];
    xattn_conv2d_cross_inputs in;
    memset(&in, 0, sizeof in);
    in.B = 1;
    in.H1 = in.W1 = in.H2 = in.W2 = 1;
    in.x1 = x;
    in.x2 = x;
    CHECK_OK(xattn_conv2d_cross_forward(m, &in, o));
    in.W2 = 0;
    CHECK_FAIL(xattn_conv2d_cross_forward(m, &in, o), XATTN_ERR_SHAPE);
    in.W2 = 1;
    in.x2 = NULL;
    CHECK_FAIL(xattn_conv2d_cross_forward(m, &in, o), XATTN_ERR_ARG);
    in.x2 = x;
    in.has_scale = 1;
    in.scale = NAN;
    CHECK_FAIL(xattn_conv2d_cross_forward(m, &in, o), XATTN_ERR_ARG);
    in.has_scale = 0;
    in.H1 = INT64_MAX / 4;
    in.W1 = 8;
    CHECK_FAIL(xattn_conv2d_cross_forward(m, &in, o), XATTN_ERR_NOMEM);
    xattn_conv2d_cross_free(m);
}

int main(void)
{
    printf("test_conv2d:\n");
    for (size_t i = 0; i < sizeof FIXTURES / sizeof FIXTURES[0]; i++) run_fixture(FIXTURES[i]);
    printf("  worst error %.2e (tolerance %.0e * (1 + |ref|))\n", g_worst, TU_TOL);
    errors();
    return tu_finish("test_conv2d");
}
