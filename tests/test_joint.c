/*
 * M4: xattn_joint_* against fixtures from the real torch.nn.TransformerEncoderLayer /
 * nn.TransformerEncoder (tests/reference/gen_joint.py), at threads 1 and 2 and kernel sets auto
 * and scalar; fully masked rows against the float64 zero-row transcription; load and argument
 * errors.
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const FIXTURES[] = {"joint_layer_post_relu",
                                       "joint_layer_pre_gelu",
                                       "joint_enc2_post_gelu_masks",
                                       "joint_enc3_pre_relu_final",
                                       "joint_enc1_defaults",
                                       "joint_enc2_long",
                                       "joint_len1",
                                       "joint_full_row",
                                       "joint_full_row_pre",
                                       "joint_nobias_post_relu",
                                       "joint_nobias_pre_gelu_final"};

static double g_worst;

/* The typed forward with both outputs (either may be NULL) on the default context. */
static xattn_status joint_fwd(const xattn_joint *m, const xattn_joint_inputs *in, float *out,
                              float *context_out)
{
    xattn_joint_outputs o;
    memset(&o, 0, sizeof o);
    o.out = out;
    o.context_out = context_out;
    return xattn_joint_forward(NULL, m, in, &o);
}

static int64_t meta_int(const xattn_safetensors *st, const char *key)
{
    const char *v = xattn_st_meta_get(st, key);
    return v ? strtoll(v, NULL, 10) : 0;
}

static void run_fixture(const char *name)
{
    char file[256];
    snprintf(file, sizeof file, "%s.safetensors", name);
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(file), &st));
    if (!st) return;
    xattn_joint *m = NULL;
    CHECK_OK(xattn_joint_load(st, "", NULL, &m));
    if (!m) {
        xattn_st_close(st);
        return;
    }
    xattn_joint_config cfg;
    xattn_joint_get_config(m, &cfg);
    CHECK(cfg.heads == meta_int(st, "heads"));
    CHECK(cfg.layers == meta_int(st, "layers"));
    CHECK(cfg.norm_first == !strcmp(xattn_st_meta_get(st, "expected_norm_first"), "True"));
    CHECK(cfg.activation == !strcmp(xattn_st_meta_get(st, "expected_activation"), "gelu"));
    double eps = strtod(xattn_st_meta_get(st, "expected_eps"), NULL);
    CHECK(fabs(cfg.layer_norm_eps - eps) <= 1e-6 * eps);
    CHECK(cfg.final_norm == !strcmp(xattn_st_meta_get(st, "final_norm"), "True"));

    xattn_array ax, ac, axm, acm, aeo, aec;
    memset(&axm, 0, sizeof axm);
    memset(&acm, 0, sizeof acm);
    const float *x = tu_get_f32(st, "input.x", &ax);
    const float *c = tu_get_f32(st, "input.context", &ac);
    const float *eo = tu_get_f32(st, "expected.out", &aeo);
    const float *ec = tu_get_f32(st, "expected.context_out", &aec);
    xattn_joint_inputs in;
    memset(&in, 0, sizeof in);
    in.B = ax.shape[0];
    in.K = ax.shape[1];
    in.N = ac.shape[1];
    in.x = x;
    in.context = c;
    if (xattn_st_find(st, "input.x_padding_mask") >= 0) {
        CHECK_OK(xattn_st_get(st, "input.x_padding_mask", XATTN_BOOL, &axm));
        in.x_padding_mask = axm.data;
    }
    if (xattn_st_find(st, "input.context_padding_mask") >= 0) {
        CHECK_OK(xattn_st_get(st, "input.context_padding_mask", XATTN_BOOL, &acm));
        in.context_padding_mask = acm.data;
    }
    int64_t no = xattn_array_numel(&aeo), nc = xattn_array_numel(&aec);
    float *out = malloc((size_t)(no + 1) * sizeof(float));
    float *cout = malloc((size_t)(nc + 1) * sizeof(float));
    const char *isas[] = {"auto", "scalar"};
    for (int ii = 0; ii < 2; ii++) {
        CHECK_OK(xattn_set_isa(isas[ii]));
        for (int t = 1; t <= 2; t++) {
            xattn_set_threads(t);
            memset(out, 0xff, (size_t)no * sizeof(float)); /* NaN garbage */
            memset(cout, 0xff, (size_t)nc * sizeof(float));
            CHECK_OK(joint_fwd(m, &in, out, cout));
            char what[320];
            snprintf(what, sizeof what, "%s out (isa %s, threads %d)", name, isas[ii], t);
            double e1 = tu_check_close(what, out, eo, no, TU_TOL);
            snprintf(what, sizeof what, "%s context_out (isa %s, threads %d)", name, isas[ii], t);
            double e2 = tu_check_close(what, cout, ec, nc, TU_TOL);
            if (e1 > g_worst) g_worst = e1;
            if (e2 > g_worst) g_worst = e2;
        }
    }
    CHECK_OK(xattn_set_isa("auto"));
    xattn_set_threads(0);

    /* all-False masks == no masks */
    if (!in.x_padding_mask && !in.context_padding_mask) {
        uint8_t *zx = calloc((size_t)(in.B * in.K + 1), 1),
                *zc = calloc((size_t)(in.B * in.N + 1), 1);
        xattn_joint_inputs in2 = in;
        in2.x_padding_mask = zx;
        in2.context_padding_mask = zc;
        CHECK_OK(joint_fwd(m, &in2, out, cout));
        tu_check_close("all-False masks out", out, eo, no, TU_TOL);
        tu_check_close("all-False masks context_out", cout, ec, nc, TU_TOL);
        free(zx);
        free(zc);
    }
    free(out);
    free(cout);
    xattn_array_free(&ax);
    xattn_array_free(&ac);
    xattn_array_free(&axm);
    xattn_array_free(&acm);
    xattn_array_free(&aeo);
    xattn_array_free(&aec);
    xattn_joint_free(m);
    xattn_st_close(st);
}

/* Options passed explicitly win over (or stand in for) the metadata. */
static void test_options(void)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("joint_layer_pre_gelu.safetensors"), &st));
    if (!st) return;
    xattn_joint_opts o;
    memset(&o, 0, sizeof o);
    o.norm_first = XATTN_NO;
    o.activation = XATTN_JOINT_ACT_RELU;
    o.layer_norm_eps = 1e-3;
    o.heads = 2;
    xattn_joint *m = NULL;
    CHECK_OK(xattn_joint_load(st, "", &o, &m));
    xattn_joint_config cfg;
    xattn_joint_get_config(m, &cfg);
    CHECK(cfg.heads == 2 && cfg.norm_first == 0 && cfg.activation == 0 &&
          fabsf(cfg.layer_norm_eps - 1e-3f) < 1e-9f);
    xattn_joint_free(m);
    o.heads = 5; /* 16 % 5 != 0 */
    CHECK_FAIL(xattn_joint_load(st, "", &o, &m), XATTN_ERR_SHAPE);
    CHECK(strstr(xattn_last_error(), "divisible") != NULL);
    o.heads = 0;
    o.activation = 7;
    CHECK_FAIL(xattn_joint_load(st, "", &o, &m), XATTN_ERR_ARG);
    xattn_st_close(st);
}

/* Rewrites a fixture's tensors into path, dropping `drop` and giving `reshape` shape (n,),
 * with the metadata pairs in meta. */
static void rewrite(const char *src, const char *path, const char *drop, const char *reshape,
                    const char *const *meta, size_t n_meta)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(src), &st));
    if (!st) return;
    size_t n = xattn_st_count(st);
    xattn_st_entry *e = calloc(n, sizeof *e);
    xattn_array *arr = calloc(n, sizeof *arr);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = xattn_st_name(st, i);
        if (drop && !strcmp(name, drop)) continue;
        xattn_dtype dt;
        int nd;
        int64_t shape[XATTN_MAX_DIMS];
        CHECK_OK(xattn_st_info(st, i, &dt, &nd, shape));
        CHECK_OK(xattn_st_get(st, name, dt == XATTN_BOOL ? XATTN_BOOL : XATTN_F32, &arr[k]));
        e[k].name = name;
        e[k].dtype = arr[k].dtype;
        e[k].ndim = arr[k].ndim;
        memcpy(e[k].shape, arr[k].shape, sizeof e[k].shape);
        if (reshape && !strcmp(name, reshape)) {
            e[k].ndim = 1;
            e[k].shape[0] = xattn_array_numel(&arr[k]);
        }
        e[k].data = arr[k].data;
        k++;
    }
    CHECK_OK(xattn_st_save(path, e, k, meta, n_meta));
    for (size_t i = 0; i < k; i++) xattn_array_free(&arr[i]);
    free(arr);
    free(e);
    xattn_st_close(st);
}

static void test_errors(void)
{
    char path[256];
    snprintf(path, sizeof path, "/tmp/xattn_test_joint_%d.safetensors", (int)getpid());
    const char *meta[] = {"heads", "4"};
    xattn_safetensors *st = NULL;
    xattn_joint *m = NULL;

    rewrite("joint_enc1_defaults.safetensors", path, "layers.0.linear2.bias", NULL, meta, 1);
    CHECK_OK(xattn_st_open(path, &st));
    CHECK_FAIL(xattn_joint_load(st, "", NULL, &m), XATTN_ERR_NOT_FOUND);
    CHECK(strstr(xattn_last_error(), "layers.0.linear2.bias") != NULL);
    CHECK(m == NULL);
    xattn_st_close(st);

    rewrite("joint_enc1_defaults.safetensors", path, NULL, "layers.0.linear1.weight", meta, 1);
    CHECK_OK(xattn_st_open(path, &st));
    CHECK_FAIL(xattn_joint_load(st, "", NULL, &m), XATTN_ERR_SHAPE);
    CHECK(strstr(xattn_last_error(), "layers.0.linear1.weight") != NULL);
    xattn_st_close(st);

    rewrite("joint_enc1_defaults.safetensors", path, NULL, "layers.0.norm2.bias", meta, 1);
    CHECK_OK(xattn_st_open(path, &st)); /* (16,) stays (16,): loads */
    CHECK_OK(xattn_joint_load(st, "", NULL, &m));
    xattn_joint_free(m);
    m = NULL;
    xattn_st_close(st);

    rewrite("joint_enc1_defaults.safetensors", path, NULL, NULL, NULL, 0); /* no heads */
    CHECK_OK(xattn_st_open(path, &st));
    CHECK_FAIL(xattn_joint_load(st, "", NULL, &m), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "heads") != NULL);
    xattn_st_close(st);

    const char *bad_act[] = {"heads", "4", "activation", "silu"};
    rewrite("joint_enc1_defaults.safetensors", path, NULL, NULL, bad_act, 2);
    CHECK_OK(xattn_st_open(path, &st));
    CHECK_FAIL(xattn_joint_load(st, "", NULL, &m), XATTN_ERR_UNSUPPORTED);
    CHECK(strstr(xattn_last_error(), "silu") != NULL);
    xattn_st_close(st);

    const char *bad_eps[] = {"heads", "4", "layer_norm_eps", "-1"};
    rewrite("joint_enc1_defaults.safetensors", path, NULL, NULL, bad_eps, 2);
    CHECK_OK(xattn_st_open(path, &st));
    CHECK_FAIL(xattn_joint_load(st, "", NULL, &m), XATTN_ERR_FORMAT);
    xattn_st_close(st);

    /* not a transformer layer at all */
    rewrite("joint_enc1_defaults.safetensors", path, "layers.0.self_attn.in_proj_weight", NULL,
            meta, 1);
    CHECK_OK(xattn_st_open(path, &st));
    CHECK_FAIL(xattn_joint_load(st, "", NULL, &m), XATTN_ERR_NOT_FOUND);
    CHECK(strstr(xattn_last_error(), "in_proj_weight") != NULL);
    xattn_st_close(st);
    unlink(path);

    /* forward argument errors */
    CHECK_OK(xattn_st_open(tu_fixture("joint_len1.safetensors"), &st));
    CHECK_OK(xattn_joint_load(st, "", NULL, &m));
    float x[64] = {0}, o[64], co[64];
    xattn_joint_inputs in;
    memset(&in, 0, sizeof in);
    in.B = 1;
    in.K = 0;
    in.N = 0;
    in.x = x;
    in.context = x;
    CHECK_FAIL(joint_fwd(m, &in, o, co), XATTN_ERR_SHAPE);
    in.N = 1;
    in.B = 0;
    CHECK_FAIL(joint_fwd(m, &in, o, co), XATTN_ERR_SHAPE);
    in.B = 1;
    CHECK_OK(joint_fwd(m, &in, NULL, co)); /* K = 0: x only context */
    for (int t = 0; t < 8; t++) CHECK(isfinite(co[t]));
    in.K = 2;
    CHECK_FAIL(joint_fwd(m, &in, NULL, co), XATTN_ERR_ARG);
    CHECK_FAIL(joint_fwd(NULL, &in, o, co), XATTN_ERR_ARG);
    CHECK_FAIL(joint_fwd(m, NULL, o, co), XATTN_ERR_ARG);
    /* every position ignored: finite (zero attention rows) */
    uint8_t all[2] = {1, 1}, one[1] = {1};
    in.x_padding_mask = all;
    in.context_padding_mask = one;
    CHECK_OK(joint_fwd(m, &in, o, co));
    for (int t = 0; t < 16; t++) CHECK(isfinite(o[t]));
    for (int t = 0; t < 8; t++) CHECK(isfinite(co[t]));
    xattn_joint_free(m);
    xattn_st_close(st);
    CHECK_FAIL(xattn_joint_load(NULL, "", NULL, &m), XATTN_ERR_ARG);
}

int main(void)
{
    for (size_t i = 0; i < sizeof FIXTURES / sizeof FIXTURES[0]; i++) run_fixture(FIXTURES[i]);
    printf("joint: worst error %.3g (tolerance %.1g*(1+|ref|))\n", g_worst, TU_TOL);
    test_options();
    test_errors();
    return tu_finish("test_joint");
}
