/*
 * M1: xattn_mha_* against fixtures from the real torch.nn.MultiheadAttention and diffusers
 * Attention (tests/reference/gen_mha.py), at threads 1 and 2 and kernel sets auto and scalar;
 * plus load and argument errors.
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const FIXTURES[] = {
    /* torch.nn.MultiheadAttention */
    "mha_packed_basic", "mha_kdim_vdim", "mha_nobias_kpm_bool", "mha_h1_len1",
    "mha_h16_dh1_long_kv", "mha_h2_long_q_bool2d", "mha_kpm_full_row", "mha_float2d_kpm_bool",
    "mha_bool3d_dead_head_row", "mha_float3d_kpm_float", "mha_causal_square_sdpa",
    "mha_causal_wide_kpm", "mha_causal_tall", "mha_noweights_full_row", "mha_dh128",
    "mha_dh3_masks", "mha_weights_f16", "mha_weights_bf16", "mha_value_is_key", "mha_heads_arg",
    /* add_bias_kv / add_zero_attn (tests/reference/gen_mha_extra.py) */
    "mha_extra_bias_kv", "mha_extra_zero_attn", "mha_extra_both_masks",
    "mha_extra_both_bool_nobias", "mha_extra_diff_noscale_residual", "mha_extra_diff_scale_rescale",
    /* diffusers Attention */
    "mha_diff_basic", "mha_diff_bias_kpm_full_row", "mha_diff_default_heads", "mha_diff_kpm_float",
    "mha_diff_perhead_float", "mha_diff_2d_bool", "mha_diff_causal", "mha_diff_out_dim_bf16",
    "mha_diff_f16"};

static double g_worst_out, g_worst_w;

/* xattn_mha_load with the number of heads as the only option (0: the file's metadata). */
static xattn_status load_heads(const xattn_safetensors *st, const char *prefix, int64_t heads,
                               xattn_mha **out)
{
    const xattn_mha_opts o = {.heads = heads};
    return xattn_mha_load(st, prefix, &o, out);
}

/* xattn_mha_forward on the default context with out and optional weights: averaged when
 * average_weights, else per head. */
static xattn_status fwd(const xattn_mha *m, const xattn_mha_inputs *in, float *out, float *weights,
                        int average_weights)
{
    xattn_mha_outputs o = {.out = out};
    if (average_weights)
        o.attn = weights;
    else
        o.attn_per_head = weights;
    return xattn_mha_forward(NULL, m, in, &o);
}

static int meta_is_true(const xattn_safetensors *st, const char *key)
{
    const char *v = xattn_st_meta_get(st, key);
    return v && !strcmp(v, "True");
}

static int64_t meta_int(const xattn_safetensors *st, const char *key)
{
    const char *v = xattn_st_meta_get(st, key);
    return v ? strtoll(v, NULL, 10) : 0;
}

/* Loads an optional mask tensor as BOOL or F32 by its stored dtype. */
static void get_mask(const xattn_safetensors *st, const char *name, xattn_array *arr,
                     const uint8_t **u8, const float **f32)
{
    *u8 = NULL;
    *f32 = NULL;
    long idx = xattn_st_find(st, name);
    if (idx < 0) return;
    xattn_dtype dt;
    int nd;
    int64_t shape[XATTN_MAX_DIMS];
    CHECK_OK(xattn_st_info(st, (size_t)idx, &dt, &nd, shape));
    if (dt == XATTN_BOOL) {
        CHECK_OK(xattn_st_get(st, name, XATTN_BOOL, arr));
        *u8 = arr->data;
    } else {
        *f32 = tu_get_f32(st, name, arr);
    }
}

static void run_fixture(const char *name)
{
    char file[256];
    snprintf(file, sizeof file, "%s.safetensors", name);
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(file), &st));
    if (!st) return;

    xattn_mha *m = NULL;
    int64_t heads_arg = meta_int(st, "heads_arg");
    CHECK_OK(load_heads(st, "", heads_arg, &m));
    if (!m) {
        xattn_st_close(st);
        return;
    }
    xattn_mha_config cfg;
    xattn_mha_get_config(m, &cfg);
    CHECK(cfg.heads == meta_int(st, "expected_heads"));
    const char *layout = xattn_st_meta_get(st, "layout");
    CHECK(layout && cfg.layout == (!strcmp(layout, "diffusers") ? XATTN_LAYOUT_DIFFUSERS
                                                                : XATTN_LAYOUT_TORCH_MHA));

    xattn_array aq, ak, av, akpm, aam, aout, awa, awp;
    memset(&av, 0, sizeof av);
    memset(&akpm, 0, sizeof akpm);
    memset(&aam, 0, sizeof aam);
    memset(&awa, 0, sizeof awa);
    memset(&awp, 0, sizeof awp);
    xattn_mha_inputs in;
    memset(&in, 0, sizeof in);
    in.query = tu_get_f32(st, "input.query", &aq);
    in.key = tu_get_f32(st, "input.key", &ak);
    if (xattn_st_find(st, "input.value") >= 0) in.value = tu_get_f32(st, "input.value", &av);
    in.B = aq.shape[0];
    in.I = aq.shape[1];
    in.J = ak.shape[1];
    CHECK(aq.shape[2] == cfg.embed_dim && ak.shape[2] == cfg.kdim);
    get_mask(st, "input.key_padding_mask", &akpm, &in.key_padding_mask, &in.key_padding_mask_float);
    get_mask(st, "input.attn_mask", &aam, &in.attn_mask, &in.attn_mask_float);
    in.attn_mask_per_head = meta_is_true(st, "attn_mask_per_head");
    in.is_causal = meta_is_true(st, "is_causal");
    const float *ref_out = tu_get_f32(st, "expected.out", &aout);
    const float *ref_wa = NULL, *ref_wp = NULL;
    if (xattn_st_find(st, "expected.attn_weights_avg") >= 0) {
        ref_wa = tu_get_f32(st, "expected.attn_weights_avg", &awa);
        ref_wp = tu_get_f32(st, "expected.attn_weights_per_head", &awp);
    }
    xattn_st_close(st); /* the module keeps no pointer into the file */

    const int64_t n_out = in.B * in.I * cfg.out_dim;
    /* keys appended by add_bias_kv / add_zero_attn come last in the weights */
    const int64_t n_wa = in.B * in.I * (in.J + cfg.add_bias_kv + cfg.add_zero_attn),
                  n_wp = n_wa * cfg.heads;
    float *out = malloc((size_t)n_out * sizeof(float));
    float *wa = malloc((size_t)n_wa * sizeof(float));
    float *wp = malloc((size_t)n_wp * sizeof(float));
    const char *isas[] = {"auto", "scalar"};
    double worst_out = 0, worst_w = 0;
    for (int ii = 0; ii < 2; ii++) {
        CHECK_OK(xattn_set_isa(isas[ii]));
        for (int threads = 1; threads <= 2; threads++) {
            xattn_set_threads(threads);
            char what[320];
            snprintf(what, sizeof what, "%s out (isa %s, threads %d)", name, isas[ii], threads);
            for (int64_t t = 0; t < n_out; t++) out[t] = NAN;
            CHECK_OK(fwd(m, &in, out, NULL, 0));
            worst_out = tu_max(worst_out, tu_check_close(what, out, ref_out, n_out, TU_TOL));
            if (!ref_wa) continue;
            for (int64_t t = 0; t < n_out; t++) out[t] = NAN;
            CHECK_OK(fwd(m, &in, out, wa, 1));
            worst_out = tu_max(worst_out, tu_check_close(what, out, ref_out, n_out, TU_TOL));
            snprintf(what, sizeof what, "%s averaged weights (isa %s, threads %d)", name, isas[ii],
                     threads);
            worst_w = tu_max(worst_w, tu_check_close(what, wa, ref_wa, n_wa, TU_TOL));
            CHECK_OK(fwd(m, &in, out, wp, 0));
            snprintf(what, sizeof what, "%s per-head weights (isa %s, threads %d)", name, isas[ii],
                     threads);
            worst_w = tu_max(worst_w, tu_check_close(what, wp, ref_wp, n_wp, TU_TOL));
        }
    }
    xattn_set_isa("auto");
    xattn_set_threads(0);
    printf("  %-28s B=%lld I=%lld J=%lld E=%lld kdim=%lld vdim=%lld H=%lld dh=%lld  "
           "max err out %.2e weights %.2e\n",
           name, (long long)in.B, (long long)in.I, (long long)in.J, (long long)cfg.embed_dim,
           (long long)cfg.kdim, (long long)cfg.vdim, (long long)cfg.heads, (long long)cfg.head_dim,
           worst_out, worst_w);
    g_worst_out = tu_max(g_worst_out, worst_out);
    g_worst_w = tu_max(g_worst_w, worst_w);
    free(out);
    free(wa);
    free(wp);
    xattn_array_free(&aq);
    xattn_array_free(&ak);
    xattn_array_free(&av);
    xattn_array_free(&akpm);
    xattn_array_free(&aam);
    xattn_array_free(&aout);
    xattn_array_free(&awa);
    xattn_array_free(&awp);
    xattn_mha_free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* Error cases on small synthetic files                                                     */
/* ---------------------------------------------------------------------------------------- */

#define MAXT 12
typedef struct spec {
    int n;
    xattn_st_entry e[MAXT];
    const char *meta[4];
    int n_meta;
} spec;

static float g_buf[4096];

static void add(spec *s, const char *name, int64_t d0, int64_t d1)
{
    xattn_st_entry *e = &s->e[s->n++];
    e->name = name;
    e->dtype = XATTN_F32;
    e->ndim = d1 > 0 ? 2 : 1;
    e->shape[0] = d0;
    e->shape[1] = d1;
    e->data = g_buf;
}

static char g_tmp[256];

/* Writes spec to a temporary file and opens it. */
static xattn_safetensors *open_spec(const spec *s)
{
    snprintf(g_tmp, sizeof g_tmp, "/tmp/test_mha_%ld.safetensors", (long)getpid());
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_save(g_tmp, s->e, (size_t)s->n, s->meta, (size_t)s->n_meta));
    CHECK_OK(xattn_st_open(g_tmp, &st));
    unlink(g_tmp);
    return st;
}

/* Expects xattn_mha_load to fail with `want` and a message containing `needle`. */
static void expect_load_fail(const spec *s, const char *prefix, int64_t heads, xattn_status want,
                             const char *needle)
{
    xattn_safetensors *st = open_spec(s);
    if (!st) return;
    xattn_mha *m = (xattn_mha *)&g_buf; /* must be reset to NULL */
    CHECK_FAIL(load_heads(st, prefix, heads, &m), want);
    CHECK(m == NULL);
    if (needle && !strstr(xattn_last_error(), needle)) {
        tu_failures++;
        fprintf(stderr, "message '%s' does not mention '%s'\n", xattn_last_error(), needle);
    }
    tu_checks++;
    /* one line, of bounded length, whatever names the file holds */
    CHECK(strchr(xattn_last_error(), '\n') == NULL && strchr(xattn_last_error(), '\r') == NULL &&
          strchr(xattn_last_error(), '\x1b') == NULL);
    CHECK(strlen(xattn_last_error()) < 400);
    xattn_st_close(st);
}

static void torch_base(spec *s, int64_t E, int64_t kdim, int64_t vdim)
{
    memset(s, 0, sizeof *s);
    add(s, "q_proj_weight", E, E);
    add(s, "k_proj_weight", E, kdim);
    add(s, "v_proj_weight", E, vdim);
    add(s, "in_proj_bias", 3 * E, 0);
    add(s, "out_proj.weight", E, E);
    add(s, "out_proj.bias", E, 0);
}

static void diff_base(spec *s, int64_t qd, int64_t cd, int64_t inner)
{
    memset(s, 0, sizeof *s);
    add(s, "to_q.weight", inner, qd);
    add(s, "to_k.weight", inner, cd);
    add(s, "to_v.weight", inner, cd);
    add(s, "to_out.0.weight", qd, inner);
    add(s, "to_out.0.bias", qd, 0);
}

static void remove_entry(spec *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->e[i].name, name)) {
            memmove(&s->e[i], &s->e[i + 1], (size_t)(s->n - i - 1) * sizeof s->e[0]);
            s->n--;
            return;
        }
}

static xattn_st_entry *entry(spec *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->e[i].name, name)) return &s->e[i];
    return NULL;
}

static void test_load_errors(void)
{
    spec s;
    uint64_t rng = 7;
    tu_fill_uniform(g_buf, 4096, -0.5f, 0.5f, &rng);

    /* a valid file loads, and its config comes from the shapes */
    torch_base(&s, 8, 5, 3);
    {
        xattn_safetensors *st = open_spec(&s);
        xattn_mha *m = NULL;
        CHECK_OK(load_heads(st, "", 2, &m));
        xattn_mha_config c;
        xattn_mha_get_config(m, &c);
        CHECK(c.layout == XATTN_LAYOUT_TORCH_MHA && c.embed_dim == 8 && c.kdim == 5 &&
              c.vdim == 3 && c.heads == 2 && c.head_dim == 4 && c.out_dim == 8 && c.has_in_bias &&
              c.has_out_bias);
        /* forward argument errors */
        float q[2 * 3 * 8], k[2 * 4 * 5], v[2 * 4 * 3], out[2 * 3 * 8];
        tu_fill_uniform(q, 48, -1, 1, &rng);
        tu_fill_uniform(k, 40, -1, 1, &rng);
        tu_fill_uniform(v, 24, -1, 1, &rng);
        xattn_mha_inputs in;
        memset(&in, 0, sizeof in);
        in.B = 2, in.I = 3, in.J = 4, in.query = q, in.key = k, in.value = v;
        CHECK_OK(fwd(m, &in, out, NULL, 0));
        CHECK_FAIL(fwd(NULL, &in, out, NULL, 0), XATTN_ERR_ARG);
        CHECK_FAIL(fwd(m, NULL, out, NULL, 0), XATTN_ERR_ARG);
        CHECK_FAIL(fwd(m, &in, NULL, NULL, 0), XATTN_ERR_ARG);
        CHECK_FAIL(xattn_mha_forward(NULL, m, &in, NULL), XATTN_ERR_ARG);
        xattn_mha_inputs bad = in;
        bad.query = NULL;
        CHECK_FAIL(fwd(m, &bad, out, NULL, 0), XATTN_ERR_ARG);
        bad = in;
        bad.key = NULL;
        CHECK_FAIL(fwd(m, &bad, out, NULL, 0), XATTN_ERR_ARG);
        bad = in;
        bad.value = NULL; /* value = key needs kdim == vdim */
        CHECK_FAIL(fwd(m, &bad, out, NULL, 0), XATTN_ERR_SHAPE);
        bad = in;
        bad.J = 0;
        CHECK_FAIL(fwd(m, &bad, out, NULL, 0), XATTN_ERR_ARG);
        bad = in;
        bad.B = -1;
        CHECK_FAIL(fwd(m, &bad, out, NULL, 0), XATTN_ERR_ARG);
        bad = in;
        bad.I = INT64_MAX / 2;
        CHECK(fwd(m, &bad, out, NULL, 0) != XATTN_OK);
        /* mask arguments that cannot be right */
        uint8_t kpm[8] = {0};
        float kpmf[8] = {0};
        bad = in;
        bad.key_padding_mask = kpm;
        bad.key_padding_mask_float = kpmf;
        CHECK_FAIL(fwd(m, &bad, out, NULL, 0), XATTN_ERR_ARG);
        bad = in;
        bad.attn_mask_per_head = 1; /* per-head flag without a mask */
        CHECK_FAIL(fwd(m, &bad, out, NULL, 0), XATTN_ERR_ARG);
        bad = in;
        bad.attn_mask = kpm;
        bad.attn_mask_per_head = 2;
        CHECK_FAIL(fwd(m, &bad, out, NULL, 0), XATTN_ERR_ARG);
        bad = in;
        bad.attn_mask = kpm;
        bad.attn_mask_float = kpmf;
        CHECK_FAIL(fwd(m, &bad, out, NULL, 0), XATTN_ERR_ARG);

        /* non-finite inputs pass through: a NaN in query row (b=1, i=2) poisons that row only */
        q[(1 * 3 + 2) * 8 + 5] = NAN;
        CHECK_OK(fwd(m, &in, out, NULL, 0));
        int nan_ok = 1;
        for (int64_t r = 0; r < 6; r++)
            for (int64_t c2 = 0; c2 < 8; c2++)
                if (isnan(out[r * 8 + c2]) != (r == 5)) nan_ok = 0;
        CHECK(nan_ok);

        /* a fully masked query row gives out_proj.bias (zero attention output) */
        q[(1 * 3 + 2) * 8 + 5] = 0.25f;
        uint8_t all[2 * 4];
        memset(all, 1, sizeof all);
        in.key_padding_mask = all;
        float w[2 * 3 * 4];
        CHECK_OK(fwd(m, &in, out, w, 1));
        const float *bo = g_buf; /* every synthetic tensor holds g_buf's leading values */
        int zero_ok = 1;
        for (int t = 0; t < 24; t++)
            if (w[t] != 0.0f) zero_ok = 0;
        for (int r = 0; r < 6; r++)
            for (int c2 = 0; c2 < 8; c2++)
                if (fabsf(out[r * 8 + c2] - bo[c2]) > 1e-7f) zero_ok = 0;
        CHECK(zero_ok);
        xattn_mha_free(m);
        xattn_st_close(st);
    }
    xattn_mha_free(NULL);

    /* heads resolution */
    torch_base(&s, 8, 5, 3);
    expect_load_fail(&s, "", 0, XATTN_ERR_ARG, "heads");
    expect_load_fail(&s, "", 3, XATTN_ERR_SHAPE, "divisible");
    s.meta[0] = "heads";
    s.meta[1] = "abc";
    s.n_meta = 1;
    expect_load_fail(&s, "", 0, XATTN_ERR_FORMAT, "heads");
    s.meta[1] = "3";
    expect_load_fail(&s, "", 0, XATTN_ERR_SHAPE, "divisible");
    s.meta[0] = "add_zero_attn"; /* no trace in the state_dict: read from the metadata */
    s.meta[1] = "True";
    {
        xattn_safetensors *st = open_spec(&s);
        xattn_mha *m = NULL;
        xattn_mha_config c;
        CHECK_OK(load_heads(st, "", 2, &m));
        xattn_mha_get_config(m, &c);
        CHECK(c.add_zero_attn == 1 && c.add_bias_kv == 0);
        xattn_mha_free(m);
        /* the option wins over the metadata */
        xattn_mha_opts o = {.heads = 2, .add_zero_attn = XATTN_NO};
        CHECK_OK(xattn_mha_load(st, "", &o, &m));
        xattn_mha_get_config(m, &c);
        CHECK(c.add_zero_attn == 0);
        xattn_mha_free(m);
        o.add_zero_attn = 3; /* not an xattn_choice */
        CHECK_FAIL(xattn_mha_load(st, "", &o, &m), XATTN_ERR_ARG);
        o.add_zero_attn = XATTN_DEFAULT;
        o.reserved_[2] = 1;
        CHECK_FAIL(xattn_mha_load(st, "", &o, &m), XATTN_ERR_ARG);
        xattn_st_close(st);
    }

    /* missing and misshapen tensors */
    torch_base(&s, 8, 5, 3);
    remove_entry(&s, "out_proj.weight");
    expect_load_fail(&s, "", 2, XATTN_ERR_NOT_FOUND, "out_proj.weight");
    torch_base(&s, 8, 5, 3);
    remove_entry(&s, "k_proj_weight");
    expect_load_fail(&s, "", 2, XATTN_ERR_NOT_FOUND, "k_proj_weight");
    torch_base(&s, 8, 5, 3);
    entry(&s, "k_proj_weight")->shape[0] = 7;
    expect_load_fail(&s, "", 2, XATTN_ERR_SHAPE, "k_proj_weight");
    torch_base(&s, 8, 5, 3);
    entry(&s, "v_proj_weight")->ndim = 1;
    entry(&s, "v_proj_weight")->shape[0] = 24;
    expect_load_fail(&s, "", 2, XATTN_ERR_SHAPE, "v_proj_weight");
    torch_base(&s, 8, 5, 3);
    entry(&s, "q_proj_weight")->shape[1] = 7;
    expect_load_fail(&s, "", 2, XATTN_ERR_SHAPE, "q_proj_weight");
    torch_base(&s, 8, 5, 3);
    entry(&s, "in_proj_bias")->shape[0] = 23;
    expect_load_fail(&s, "", 2, XATTN_ERR_SHAPE, "in_proj_bias");
    torch_base(&s, 8, 5, 3);
    entry(&s, "out_proj.weight")->shape[1] = 7;
    expect_load_fail(&s, "", 2, XATTN_ERR_SHAPE, "out_proj.weight");
    torch_base(&s, 8, 5, 3);
    entry(&s, "out_proj.bias")->shape[0] = 9;
    expect_load_fail(&s, "", 2, XATTN_ERR_SHAPE, "out_proj.bias");
    torch_base(&s, 8, 5, 3);
    entry(&s, "k_proj_weight")->dtype = XATTN_I32;
    expect_load_fail(&s, "", 2, XATTN_ERR_UNSUPPORTED, "k_proj_weight");
    torch_base(&s, 8, 5, 3);
    add(&s, "bias_k", 1, 0);
    expect_load_fail(&s, "", 2, XATTN_ERR_NOT_FOUND, "'bias_v' is missing");
    add(&s, "bias_v", 1, 0); /* (1,) instead of (1, 1, embed_dim) */
    expect_load_fail(&s, "", 2, XATTN_ERR_SHAPE, "bias_k");
    /* packed layout */
    memset(&s, 0, sizeof s);
    add(&s, "in_proj_weight", 25, 8);
    add(&s, "out_proj.weight", 8, 8);
    expect_load_fail(&s, "", 2, XATTN_ERR_SHAPE, "in_proj_weight");
    entry(&s, "in_proj_weight")->shape[0] = 24;
    {
        xattn_safetensors *st = open_spec(&s);
        xattn_mha *m = NULL;
        CHECK_OK(load_heads(st, "", 4, &m));
        xattn_mha_config c;
        xattn_mha_get_config(m, &c);
        CHECK(c.embed_dim == 8 && c.kdim == 8 && c.vdim == 8 && c.head_dim == 2 && !c.has_in_bias &&
              !c.has_out_bias);
        xattn_mha_free(m);
        xattn_st_close(st);
    }
    /* nothing there, or both layouts */
    memset(&s, 0, sizeof s);
    add(&s, "something.else", 4, 4);
    expect_load_fail(&s, "", 2, XATTN_ERR_NOT_FOUND, "in_proj_weight");
    torch_base(&s, 8, 8, 8);
    add(&s, "to_q.weight", 8, 8);
    expect_load_fail(&s, "", 2, XATTN_ERR_FORMAT, "ambiguous");
    /* a prefix selects the sub-module */
    memset(&s, 0, sizeof s);
    add(&s, "blk.attn.in_proj_weight", 24, 8);
    add(&s, "blk.attn.out_proj.weight", 8, 8);
    expect_load_fail(&s, "", 2, XATTN_ERR_NOT_FOUND, NULL);
    {
        xattn_safetensors *st = open_spec(&s);
        xattn_mha *m = NULL;
        CHECK_OK(load_heads(st, "blk.attn.", 2, &m));
        CHECK(m != NULL);
        xattn_mha_free(m);
        CHECK_FAIL(load_heads(NULL, "", 2, &m), XATTN_ERR_ARG);
        CHECK_FAIL(load_heads(st, "", 2, NULL), XATTN_ERR_ARG);
        xattn_st_close(st);
    }

    /* diffusers */
    diff_base(&s, 16, 6, 32);
    {
        xattn_safetensors *st = open_spec(&s);
        xattn_mha *m = NULL;
        CHECK_OK(load_heads(st, "", 0, &m)); /* default heads 8 */
        xattn_mha_config c;
        xattn_mha_get_config(m, &c);
        CHECK(c.layout == XATTN_LAYOUT_DIFFUSERS && c.heads == 8 && c.head_dim == 4 &&
              c.inner_dim == 32 && c.embed_dim == 16 && c.kdim == 6 && c.out_dim == 16 &&
              !c.has_in_bias && c.has_out_bias);
        xattn_mha_free(m);
        xattn_st_close(st);
    }
    diff_base(&s, 16, 6, 12);
    expect_load_fail(&s, "", 0, XATTN_ERR_SHAPE, "divisible"); /* 12 % 8 */
    diff_base(&s, 16, 6, 32);
    entry(&s, "to_k.weight")->shape[0] = 16;
    expect_load_fail(&s, "", 0, XATTN_ERR_SHAPE, "to_k.weight");
    diff_base(&s, 16, 6, 32);
    entry(&s, "to_out.0.weight")->shape[1] = 31;
    expect_load_fail(&s, "", 0, XATTN_ERR_SHAPE, "to_out.0.weight");
    diff_base(&s, 16, 6, 32);
    entry(&s, "to_out.0.bias")->shape[0] = 15;
    expect_load_fail(&s, "", 0, XATTN_ERR_SHAPE, "to_out.0.bias");
    diff_base(&s, 16, 6, 32);
    add(&s, "to_q.bias", 31, 0);
    expect_load_fail(&s, "", 0, XATTN_ERR_SHAPE, "to_q.bias");
    diff_base(&s, 16, 6, 32);
    remove_entry(&s, "to_v.weight");
    expect_load_fail(&s, "", 0, XATTN_ERR_NOT_FOUND, "to_v.weight");
    diff_base(&s, 16, 6, 32);
    remove_entry(&s, "to_out.0.weight");
    expect_load_fail(&s, "", 0, XATTN_ERR_NOT_FOUND, "to_out.0.weight");
    diff_base(&s, 16, 6, 32);
    add(&s, "norm_q.weight", 4, 0);
    expect_load_fail(&s, "", 0, XATTN_ERR_UNSUPPORTED, "norm_q");
}

/* Tensor names and metadata from a hostile file (newlines, escape sequences, long prefixes)
 * never break the one-line message of a load error. */
static void test_hostile_names(void)
{
    spec s;
#define P "a\nb\x1b[2J."
    memset(&s, 0, sizeof s);
    add(&s, P "to_q.weight", 32, 16);
    add(&s, P "to_k.weight", 16, 6); /* 16 rows, but to_q.weight says inner = 32 */
    add(&s, P "to_v.weight", 32, 6);
    add(&s, P "to_out.0.weight", 16, 32);
    expect_load_fail(&s, P, 0, XATTN_ERR_SHAPE, "'a?b?[2J.to_k.weight' has shape (16, 6)");
    entry(&s, P "to_k.weight")->shape[0] = 32;
    entry(&s, P "to_k.weight")->dtype = XATTN_I32;
    expect_load_fail(&s, P, 0, XATTN_ERR_UNSUPPORTED, "a?b?[2J.to_k.weight' has dtype I32");
    entry(&s, P "to_k.weight")->dtype = XATTN_F32;
    remove_entry(&s, P "to_v.weight");
    expect_load_fail(&s, P, 0, XATTN_ERR_NOT_FOUND, "a?b?[2J.to_v.weight' is missing");
    add(&s, P "to_v.weight", 32, 6);
    add(&s, P "norm_q.weight", 4, 0);
    expect_load_fail(&s, P, 0, XATTN_ERR_UNSUPPORTED, "a?b?[2J.norm_q.weight");
    remove_entry(&s, P "norm_q.weight");
    s.meta[0] = "heads";
    s.meta[1] = "4\n\x1b[2J";
    s.n_meta = 1;
    expect_load_fail(&s, P, 0, XATTN_ERR_FORMAT, "\"4??[2J\", not a positive integer");
    s.n_meta = 0;
    expect_load_fail(&s, "x\ny.", 0, XATTN_ERR_NOT_FOUND, "x?y.to_q.weight");
    add(&s, P "in_proj_weight", 48, 16);
    expect_load_fail(&s, P, 0, XATTN_ERR_FORMAT, "ambiguous");
    memset(&s, 0, sizeof s);
    add(&s, P "in_proj_weight", 24, 8);
    add(&s, P "out_proj.weight", 8, 8);
    add(&s, P "bias_k", 8, 0);
    expect_load_fail(&s, P, 2, XATTN_ERR_NOT_FOUND, "a?b?[2J.bias_v");
    entry(&s, P "in_proj_weight")->shape[0] = 25;
    remove_entry(&s, P "bias_k");
    expect_load_fail(&s, P, 2, XATTN_ERR_SHAPE, "a?b?[2J.in_proj_weight");
#undef P
    /* a prefix longer than any name: nothing found, and a bounded message */
    char longp[700];
    memset(longp, '\n', sizeof longp - 1);
    longp[sizeof longp - 1] = '\0';
    diff_base(&s, 16, 6, 32);
    expect_load_fail(&s, longp, 0, XATTN_ERR_NOT_FOUND, "...");
}

int main(void)
{
    printf("kernel set: %s\n", xattn_isa());
    for (size_t i = 0; i < sizeof FIXTURES / sizeof FIXTURES[0]; i++) run_fixture(FIXTURES[i]);
    printf("max rel error over all fixtures: out %.3g, weights %.3g (tolerance %.1g)\n",
           g_worst_out, g_worst_w, TU_TOL);
    test_load_errors();
    test_hostile_names();
    return tu_finish("test_mha");
}
