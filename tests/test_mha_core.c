/*
 * The multi-head attention kinds on the module core ("mha": torch.nn.MultiheadAttention,
 * "attention": diffusers Attention): create / save / reload with identical parameters and
 * forward, the reference's defaults from a zero-initialised xattn_mha_opts and from a module
 * created with only the required arguments, the initialisation's bounds and moments
 * (MultiheadAttention._reset_parameters; nn.Linear for diffusers), forward by named arrays
 * against the typed API and the reference on fixtures, and which prefixes the registry lists.
 */
#include "testutil.h"
#include "core/core.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void has(const char *needle)
{
    tu_checks++;
    if (!strstr(xattn_last_error(), needle)) {
        tu_failures++;
        fprintf(stderr, "message '%s' lacks '%s'\n", xattn_last_error(), needle);
    }
}

static char g_path[128];
static const char *tmp_path(const char *tag)
{
    snprintf(g_path, sizeof g_path, "/tmp/test_mha_core_%ld_%s.safetensors", (long)getpid(), tag);
    return g_path;
}

/* Parameter `name` of m, or NULL (absent from the table, or no data). */
static const xattn_param_desc *param(const xattn_module *m, const char *name, xattn_param_desc *p)
{
    for (size_t i = 0; i < xattn_module_param_count(m); i++) {
        CHECK_OK(xattn_module_param(m, i, p));
        if (!strcmp(p->name, name)) return p->data ? p : NULL;
    }
    return NULL;
}

/* Config value `name` of m as text ("" when m has no such entry). */
static const char *cfg(const xattn_module *m, const char *name)
{
    for (size_t i = 0; i < xattn_module_config_count(m); i++) {
        xattn_config_entry e;
        CHECK_OK(xattn_module_config(m, i, &e));
        if (!strcmp(e.name, name)) return e.value;
    }
    return "";
}

static int64_t cfg_int(const xattn_module *m, const char *name)
{
    return strtoll(cfg(m, name), NULL, 10);
}

static void expect_cfg(const xattn_module *m, const char *name, const char *want)
{
    tu_checks++;
    if (strcmp(cfg(m, name), want)) {
        tu_failures++;
        fprintf(stderr, "%s: %s = %s, want %s\n", xattn_module_kind(m), name, cfg(m, name), want);
    }
}

static xattn_module *create(const char *kind, const xattn_option *o, size_t n, uint64_t seed)
{
    xattn_module *m = NULL;
    CHECK_OK(xattn_module_create(kind, o, n, seed, &m));
    return m;
}

/* ---------------------------------------------------------------------------------------- */
/* Forward through the registry                                                             */
/* ---------------------------------------------------------------------------------------- */

#define NB 2
#define NI 5
#define NJ 7

/* Inputs for module m (either kind): random query / key / value and a bool padding mask in the
 * kind's polarity that keeps at least one key per batch item. Returns the number of inputs. */
static size_t make_inputs(const xattn_module *m, float *buf, uint8_t *kpm, xattn_tensor *in)
{
    const int torch = !strcmp(xattn_module_kind(m), "mha");
    const int64_t E = cfg_int(m, torch ? "embed_dim" : "query_dim");
    const int64_t kd = cfg_int(m, torch ? "kdim" : "cross_attention_dim");
    const int64_t vd = torch ? cfg_int(m, "vdim") : kd;
    uint64_t rng = 99;
    float *q = buf, *k = q + NB * NI * E, *v = k + NB * NJ * kd;
    tu_fill_uniform(q, NB * NI * E + NB * NJ * (kd + vd), -1, 1, &rng);
    for (int t = 0; t < NB * NJ; t++) kpm[t] = (uint8_t)((t % 3 == 1) == torch);
    size_t n = 0;
    in[n++] = (xattn_tensor){torch ? "query" : "hidden_states", XATTN_F32, 3, {NB, NI, E}, q};
    in[n++] =
        (xattn_tensor){torch ? "key" : "encoder_hidden_states", XATTN_F32, 3, {NB, NJ, kd}, k};
    if (torch) in[n++] = (xattn_tensor){"value", XATTN_F32, 3, {NB, NJ, vd}, v};
    in[n++] =
        (xattn_tensor){torch ? "key_padding_mask" : "attention_mask", XATTN_BOOL, 2, {NB, NJ}, kpm};
    return n;
}

/* out (NB, NI, out_dim) of m on make_inputs' inputs; caller frees. */
static float *run_named(const xattn_module *m, int64_t *n_out)
{
    float *buf = malloc(sizeof(float) * 8192);
    uint8_t kpm[NB * NJ];
    xattn_tensor in[4];
    const size_t n_in = make_inputs(m, buf, kpm, in);
    xattn_tensor out = {.name = "out"};
    CHECK_OK(xattn_module_plan(m, in, n_in, &out, 1));
    *n_out = out.shape[0] * out.shape[1] * out.shape[2];
    float *o = malloc(sizeof(float) * (size_t)*n_out);
    out.data = o;
    CHECK_OK(xattn_module_forward(NULL, m, in, n_in, &out, 1));
    free(buf);
    return o;
}

/* The same through xattn_mha_load on the file and xattn_mha_forward. */
static float *run_typed(const xattn_safetensors *st, const xattn_module *m)
{
    xattn_mha *t = NULL;
    CHECK_OK(xattn_mha_load(st, "", NULL, &t));
    if (!t) return NULL;
    xattn_mha_config c;
    xattn_mha_get_config(t, &c);
    float *buf = malloc(sizeof(float) * 8192);
    uint8_t kpm[NB * NJ];
    xattn_tensor in[4];
    make_inputs(m, buf, kpm, in);
    xattn_mha_inputs ti;
    memset(&ti, 0, sizeof ti);
    ti.B = NB, ti.I = NI, ti.J = NJ;
    ti.query = in[0].data;
    ti.key = in[1].data;
    ti.value = c.layout == XATTN_LAYOUT_TORCH_MHA ? in[2].data : NULL;
    ti.key_padding_mask = kpm;
    float *o = malloc(sizeof(float) * (size_t)(NB * NI * c.out_dim));
    xattn_mha_outputs to = {.out = o};
    CHECK_OK(xattn_mha_forward(NULL, t, &ti, &to));
    xattn_mha_free(t);
    free(buf);
    return o;
}

/* create -> save -> reload: same kind, parameters, config and forward; no default assumed. */
static void round_trip(const char *kind, const xattn_option *o, size_t n, const char *tag)
{
    xattn_module *a = create(kind, o, n, 17);
    if (!a) return;
    const char *f = tmp_path(tag);
    CHECK_OK(xattn_module_save(a, f));
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(f, &st));
    unlink(f);
    xattn_module *b = NULL;
    CHECK_OK(xattn_module_open(st, NULL, &b)); /* the kind found by its anchor */
    if (!b) {
        xattn_module_free(a);
        xattn_st_close(st);
        return;
    }
    CHECK(!strcmp(xattn_module_kind(b), kind));
    CHECK(xattn_module_warnings(b)[0] == '\0'); /* every traceless option saved */
    CHECK(xattn_module_param_count(a) == xattn_module_param_count(b));
    for (size_t i = 0; i < xattn_module_param_count(a); i++) {
        xattn_param_desc p, q;
        CHECK_OK(xattn_module_param(a, i, &p));
        CHECK_OK(xattn_module_param(b, i, &q));
        CHECK(!strcmp(p.name, q.name) && p.ndim == q.ndim && !p.data == !q.data);
        CHECK(!p.data || !memcmp(p.data, q.data, (size_t)tu_param_numel(&p) * 4));
    }
    for (size_t i = 0; i < xattn_module_config_count(a); i++) {
        xattn_config_entry x, y;
        CHECK_OK(xattn_module_config(a, i, &x));
        CHECK_OK(xattn_module_config(b, i, &y));
        CHECK(!strcmp(x.name, y.name) && !strcmp(x.value, y.value));
    }
    int64_t na, nb;
    float *oa = run_named(a, &na), *ob = run_named(b, &nb), *ot = run_typed(st, a);
    CHECK(na == nb && !memcmp(oa, ob, (size_t)na * 4));
    CHECK(ot && !memcmp(oa, ot, (size_t)na * 4)); /* the typed API on the saved file */
    int finite = 1;
    for (int64_t t = 0; t < na; t++) finite &= isfinite(oa[t]) != 0;
    CHECK(finite);
    free(oa);
    free(ob);
    free(ot);
    xattn_module_free(a);
    xattn_module_free(b);
    xattn_st_close(st);
}

static void round_trips(void)
{
    const xattn_option t1[] = {{"embed_dim", "16"}, {"num_heads", "4"}};
    round_trip("mha", t1, 2, "t1");
    const xattn_option t2[] = {{"embed_dim", "12"},
                               {"num_heads", "3"},
                               {"kdim", "5"},
                               {"vdim", "7"},
                               {"bias", "False"},
                               {"add_bias_kv", "True"},
                               {"add_zero_attn", "True"}};
    round_trip("mha", t2, 7, "t2");
    const xattn_option t3[] = {
        {"embed_dim", "8"}, {"num_heads", "2"}, {"kdim", "8"}, {"add_bias_kv", "True"}};
    round_trip("mha", t3, 4, "t3");
    const xattn_option d1[] = {
        {"query_dim", "16"}, {"heads", "2"}, {"dim_head", "8"}, {"cross_attention_dim", "6"}};
    round_trip("attention", d1, 4, "d1");
    const xattn_option d2[] = {{"query_dim", "8"},    {"cross_attention_dim", "5"},
                               {"heads", "1"},        {"dim_head", "4"},
                               {"bias", "True"},      {"out_dim", "12"},
                               {"scale_qk", "False"}, {"rescale_output_factor", "0.5"}};
    round_trip("attention", d2, 8, "d2");
    const xattn_option d3[] = {{"query_dim", "12"},
                               {"heads", "3"},
                               {"dim_head", "5"},
                               {"out_bias", "False"},
                               {"residual_connection", "True"},
                               {"rescale_output_factor", "2"}};
    round_trip("attention", d3, 6, "d3");
}

/* ---------------------------------------------------------------------------------------- */
/* Defaults                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* A module created with only its required arguments has the reference's defaults. */
static void created_defaults(void)
{
    const xattn_option t[] = {{"embed_dim", "8"}, {"num_heads", "2"}};
    xattn_module *m = create("mha", t, 2, 1);
    if (m) {
        expect_cfg(m, "bias", "True");
        expect_cfg(m, "add_bias_kv", "False");
        expect_cfg(m, "add_zero_attn", "False");
        expect_cfg(m, "kdim", "8");
        expect_cfg(m, "vdim", "8");
        expect_cfg(m, "_qkv_same_embed_dim", "True");
        xattn_param_desc p;
        CHECK(param(m, "in_proj_weight", &p) && p.shape[0] == 24 && p.shape[1] == 8);
        CHECK(param(m, "in_proj_bias", &p) && param(m, "out_proj.bias", &p));
        CHECK(!param(m, "q_proj_weight", &p) && !param(m, "bias_k", &p));
        xattn_module_free(m);
    }
    m = NULL;
    CHECK_FAIL(xattn_module_create("mha", t, 1, 0, &m), XATTN_ERR_NOT_FOUND);
    has("num_heads is not given: the reference has no default");
    const xattn_option bad[] = {{"embed_dim", "8"}, {"num_heads", "3"}};
    CHECK_FAIL(xattn_module_create("mha", bad, 2, 0, &m), XATTN_ERR_SHAPE);
    has("not divisible by heads 3");

    const xattn_option d[] = {{"query_dim", "16"}};
    m = create("attention", d, 1, 1);
    if (m) {
        expect_cfg(m, "cross_attention_dim", "16");
        expect_cfg(m, "heads", "8");
        expect_cfg(m, "dim_head", "64");
        expect_cfg(m, "inner_dim", "512");
        expect_cfg(m, "bias", "False");
        expect_cfg(m, "out_bias", "True");
        expect_cfg(m, "out_dim", "16");
        expect_cfg(m, "scale_qk", "True");
        expect_cfg(m, "residual_connection", "False");
        expect_cfg(m, "rescale_output_factor", "1");
        xattn_param_desc p;
        CHECK(param(m, "to_q.weight", &p) && p.shape[0] == 512 && p.shape[1] == 16);
        CHECK(!param(m, "to_q.bias", &p) && param(m, "to_out.0.bias", &p));
        xattn_module_free(m);
    }
    /* out_dim given: inner = out_dim and heads = out_dim // dim_head, as diffusers */
    const xattn_option od[] = {
        {"query_dim", "8"}, {"heads", "7"}, {"dim_head", "4"}, {"out_dim", "12"}};
    m = create("attention", od, 4, 1);
    if (m) {
        expect_cfg(m, "heads", "3");
        expect_cfg(m, "inner_dim", "12");
        xattn_module_free(m);
    }
}

/* A file with no metadata, loaded with a zero-initialised xattn_mha_opts (and with NULL),
 * takes the reference's default for every option the shapes cannot tell. */
static void zero_opts(void)
{
    static float w[4096];
    for (int i = 0; i < 4096; i++) w[i] = (float)((i * 7) % 13) / 13.0f - 0.5f;
    const xattn_st_entry d[] = {{"to_q.weight", XATTN_F32, 2, {32, 16}, w},
                                {"to_k.weight", XATTN_F32, 2, {32, 6}, w},
                                {"to_v.weight", XATTN_F32, 2, {32, 6}, w},
                                {"to_out.0.weight", XATTN_F32, 2, {16, 32}, w}};
    const char *f = tmp_path("zero");
    CHECK_OK(xattn_st_save(f, d, 4, NULL, 0));
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(f, &st));
    unlink(f);
    xattn_mha_opts zero;
    memset(&zero, 0, sizeof zero);
    xattn_mha *a = NULL, *b = NULL;
    CHECK_OK(xattn_mha_load(st, "", &zero, &a));
    CHECK_OK(xattn_mha_load(st, "", NULL, &b));
    xattn_mha_config c, c2;
    xattn_mha_get_config(a, &c);
    xattn_mha_get_config(b, &c2);
    CHECK(!memcmp(&c, &c2, sizeof c));
    CHECK(c.layout == XATTN_LAYOUT_DIFFUSERS && c.heads == 8 && c.head_dim == 4 &&
          c.scale == 0.5f && !c.residual_connection && c.rescale_output_factor == 1.0f &&
          !c.add_zero_attn && !c.add_bias_kv && !c.has_in_bias && !c.has_out_bias);
    xattn_mha_free(a);
    xattn_mha_free(b);
    /* an option of the other reference is refused */
    xattn_mha_opts o = {.add_zero_attn = XATTN_YES};
    CHECK_FAIL(xattn_mha_load(st, "", &o, &a), XATTN_ERR_ARG);
    has("unknown option 'add_zero_attn'");
    xattn_st_close(st);

    const xattn_st_entry t[] = {{"in_proj_weight", XATTN_F32, 2, {24, 8}, w},
                                {"out_proj.weight", XATTN_F32, 2, {8, 8}, w}};
    const char *meta[] = {"heads", "2"};
    CHECK_OK(xattn_st_save(f, t, 2, meta, 1));
    CHECK_OK(xattn_st_open(f, &st));
    unlink(f);
    CHECK_OK(xattn_mha_load(st, "", &zero, &a));
    xattn_mha_get_config(a, &c);
    CHECK(c.layout == XATTN_LAYOUT_TORCH_MHA && c.heads == 2 && !c.add_zero_attn &&
          !c.add_bias_kv && c.scale == xa_head_scale(4) && !c.residual_connection &&
          c.rescale_output_factor == 1.0f);
    xattn_mha_free(a);
    o = (xattn_mha_opts){.scale_qk = XATTN_NO};
    CHECK_FAIL(xattn_mha_load(st, "", &o, &a), XATTN_ERR_ARG);
    has("unknown option 'scale_qk'");
    xattn_st_close(st);
}

/* ---------------------------------------------------------------------------------------- */
/* Initialisation                                                                           */
/* ---------------------------------------------------------------------------------------- */

static void init_distribution(void)
{
    /* MultiheadAttention._reset_parameters: xavier_uniform_ on in_proj_weight (fans E and 3E)
     * or on each of q/k/v_proj_weight, zero in_proj_bias and out_proj.bias, xavier_normal_ on
     * bias_k / bias_v (1, 1, E) (fans E and E); out_proj.weight keeps nn.Linear's init. */
    const xattn_option t1[] = {{"embed_dim", "256"}, {"num_heads", "8"}, {"add_bias_kv", "True"}};
    xattn_module *m = create("mha", t1, 3, 5);
    if (m) {
        tu_check_uniform(m, "in_proj_weight", sqrt(6.0 / (256 + 768)));
        tu_check_const(m, "in_proj_bias", 0.0f);
        tu_check_uniform(m, "out_proj.weight", 1 / sqrt(256.0));
        tu_check_const(m, "out_proj.bias", 0.0f);
        tu_check_normal(m, "bias_k", sqrt(2.0 / 512));
        tu_check_normal(m, "bias_v", sqrt(2.0 / 512));
        xattn_module_free(m);
    }
    const xattn_option t2[] = {
        {"embed_dim", "64"}, {"num_heads", "4"}, {"kdim", "96"}, {"vdim", "40"}};
    m = create("mha", t2, 4, 6);
    if (m) {
        tu_check_uniform(m, "q_proj_weight", sqrt(6.0 / 128));
        tu_check_uniform(m, "k_proj_weight", sqrt(6.0 / 160));
        tu_check_uniform(m, "v_proj_weight", sqrt(6.0 / 104));
        tu_check_uniform(m, "out_proj.weight", 1 / sqrt(64.0));
        tu_check_const(m, "in_proj_bias", 0.0f);
        xattn_module_free(m);
    }
    /* diffusers Attention: nn.Linear's defaults, b = 1/sqrt(fan_in) for weights and biases */
    const xattn_option d[] = {{"query_dim", "48"},
                              {"cross_attention_dim", "80"},
                              {"heads", "4"},
                              {"dim_head", "32"},
                              {"bias", "True"}};
    m = create("attention", d, 5, 7);
    xattn_module *m2 = create("attention", d, 5, 8);
    if (m && m2) {
        tu_check_uniform(m, "to_q.weight", 1 / sqrt(48.0));
        tu_check_uniform(m, "to_q.bias", 1 / sqrt(48.0));
        tu_check_uniform(m, "to_k.weight", 1 / sqrt(80.0));
        tu_check_uniform(m, "to_k.bias", 1 / sqrt(80.0));
        tu_check_uniform(m, "to_v.weight", 1 / sqrt(80.0));
        tu_check_uniform(m, "to_v.bias", 1 / sqrt(80.0));
        tu_check_uniform(m, "to_out.0.weight", 1 / sqrt(128.0));
        tu_check_uniform(m, "to_out.0.bias", 1 / sqrt(128.0));
        xattn_param_desc p, q;
        param(m, "to_q.weight", &p);
        param(m2, "to_q.weight", &q);
        CHECK(memcmp(p.data, q.data, (size_t)tu_param_numel(&p) * 4) != 0); /* the seed matters */
    }
    xattn_module_free(m);
    xattn_module_free(m2);
}

/* ---------------------------------------------------------------------------------------- */
/* Named forward against the typed API and the reference                                    */
/* ---------------------------------------------------------------------------------------- */

/* Fixture input `name` as a named tensor (with its stored dtype for masks); shape overridden
 * when nd > 0. Returns 1 when present. */
static int fixture_input(const xattn_safetensors *st, const char *name, const char *as,
                         xattn_array *a, xattn_tensor *t)
{
    long idx = xattn_st_find(st, name);
    if (idx < 0) return 0;
    xattn_dtype dt;
    int nd;
    int64_t sh[XATTN_MAX_DIMS];
    CHECK_OK(xattn_st_info(st, (size_t)idx, &dt, &nd, sh));
    CHECK_OK(xattn_st_get(st, name, dt == XATTN_BOOL ? XATTN_BOOL : XATTN_F32, a));
    *t = (xattn_tensor){as, a->dtype, a->ndim, {0}, a->data};
    memcpy(t->shape, a->shape, sizeof a->shape);
    return 1;
}

/* A fixture through xattn_module_forward (every output asked) against xattn_mha_forward and
 * the reference's expected arrays. */
static void named_vs_typed(const char *fixture)
{
    char file[256];
    snprintf(file, sizeof file, "%s.safetensors", fixture);
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(file), &st));
    if (!st) return;
    xattn_mha *t = NULL;
    xattn_module *m = NULL;
    CHECK_OK(xattn_mha_load(st, "", NULL, &t));
    CHECK_OK(xattn_module_open(st, NULL, &m));
    if (!t || !m) return;
    xattn_mha_config c;
    xattn_mha_get_config(t, &c);
    const int torch = c.layout == XATTN_LAYOUT_TORCH_MHA;
    xattn_array a[5];
    memset(a, 0, sizeof a);
    xattn_tensor in[5];
    size_t n = 0;
    n += fixture_input(st, "input.query", torch ? "query" : "hidden_states", &a[n], &in[n]);
    n += fixture_input(st, "input.key", torch ? "key" : "encoder_hidden_states", &a[n], &in[n]);
    if (torch) n += fixture_input(st, "input.value", "value", &a[n], &in[n]);
    n += fixture_input(st, "input.key_padding_mask", torch ? "key_padding_mask" : "attention_mask",
                       &a[n], &in[n]);
    const int per_head = !strcmp(xattn_st_meta_get(st, "attn_mask_per_head"), "True");
    /* (I, J), or (B*heads, I, J) per head as torch takes it */
    n += fixture_input(st, "input.attn_mask", "attn_mask", &a[n], &in[n]);
    CHECK(!per_head || in[n - 1].ndim == 3);
    const int64_t B = in[0].shape[0], I = in[0].shape[1], J = in[1].shape[1];
    const int64_t no = B * I * c.out_dim, nw = B * I * J;
    float *got = malloc(sizeof(float) * (size_t)(2 * no + 2 * (c.heads + 1) * nw));
    float *ref = got + no, *w = ref + no, *wh = w + nw, *tw = wh + c.heads * nw, *twh = tw + nw;
    xattn_tensor out[3] = {
        {.name = "out"}, {.name = torch ? "attn" : "attention_probs"}, {.name = "attn_per_head"}};
    const size_t n_out = torch ? 3 : 2;
    CHECK_OK(xattn_module_plan(m, in, n, out, n_out));
    out[0].data = got;
    out[1].data = torch ? w : wh;
    out[2].data = wh;
    CHECK_OK(xattn_module_forward(NULL, m, in, n, out, n_out));
    /* the typed API */
    xattn_mha_inputs ti;
    memset(&ti, 0, sizeof ti);
    ti.B = B, ti.I = I, ti.J = J;
    ti.query = a[0].data;
    ti.key = a[1].data;
    ti.value = torch ? a[2].data : NULL;
    for (size_t k = 2 + torch; k < n; k++) {
        const int kp =
            !strcmp(in[k].name, "key_padding_mask") || !strcmp(in[k].name, "attention_mask");
        const uint8_t **u8 = kp ? &ti.key_padding_mask : &ti.attn_mask;
        const float **f32 = kp ? &ti.key_padding_mask_float : &ti.attn_mask_float;
        if (in[k].dtype == XATTN_BOOL)
            *u8 = in[k].data;
        else
            *f32 = in[k].data;
    }
    ti.attn_mask_per_head = per_head;
    xattn_mha_outputs to = {.out = ref, .attn = torch ? tw : NULL, .attn_per_head = twh};
    CHECK_OK(xattn_mha_forward(NULL, t, &ti, &to));
    CHECK(!memcmp(got, ref, (size_t)no * 4));
    CHECK(!memcmp(wh, twh, (size_t)(c.heads * nw) * 4));
    CHECK(!torch || !memcmp(w, tw, (size_t)nw * 4));
    xattn_array e;
    memset(&e, 0, sizeof e);
    char what[300];
    snprintf(what, sizeof what, "%s: named out vs reference", fixture);
    tu_check_close(what, got, tu_get_f32(st, "expected.out", &e), no, TU_TOL);
    xattn_array_free(&e);
    snprintf(what, sizeof what, "%s: named weights vs reference", fixture);
    tu_check_close(what, wh, tu_get_f32(st, "expected.attn_weights_per_head", &e), c.heads * nw,
                   TU_TOL);
    xattn_array_free(&e);
    for (size_t k = 0; k < n; k++) xattn_array_free(&a[k]);
    free(got);
    xattn_mha_free(t);
    xattn_module_free(m);
    xattn_st_close(st);
}

/* add_bias_kv: the weights have J + 1 columns (the appended key last), as torch returns them;
 * the key and value stand in for each other as the query does for the key. */
static void named_extra_keys(void)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("mha_extra_bias_kv.safetensors"), &st));
    xattn_module *m = NULL;
    CHECK_OK(xattn_module_open(st, NULL, &m));
    if (!m) return;
    xattn_array a[3], e;
    memset(a, 0, sizeof a);
    memset(&e, 0, sizeof e);
    xattn_tensor in[3];
    fixture_input(st, "input.query", "query", &a[0], &in[0]);
    fixture_input(st, "input.key", "key", &a[1], &in[1]);
    fixture_input(st, "input.value", "value", &a[2], &in[2]);
    const int64_t B = in[0].shape[0], I = in[0].shape[1], J = in[1].shape[1];
    const int64_t no = B * I * in[0].shape[2], nw = B * I * (J + 1);
    float *got = malloc(sizeof(float) * (size_t)(no + 5 * nw));
    xattn_tensor out[3] = {{.name = "out"}, {.name = "attn"}, {.name = "attn_per_head"}};
    CHECK_OK(xattn_module_plan(m, in, 3, out, 3));
    CHECK(out[1].ndim == 3 && out[1].shape[2] == J + 1);
    CHECK(out[2].ndim == 4 && out[2].shape[1] == 4 && out[2].shape[3] == J + 1);
    out[0].data = got;
    out[1].data = got + no;
    out[2].data = got + no + nw;
    CHECK_OK(xattn_module_forward(NULL, m, in, 3, out, 3));
    tu_check_close("mha_extra_bias_kv: named out", got, tu_get_f32(st, "expected.out", &e), no,
                   TU_TOL);
    xattn_array_free(&e);
    tu_check_close("mha_extra_bias_kv: named attn (J + 1 columns)", got + no,
                   tu_get_f32(st, "expected.attn_weights_avg", &e), nw, TU_TOL);
    xattn_array_free(&e);
    tu_check_close("mha_extra_bias_kv: named attn per head", got + no + nw,
                   tu_get_f32(st, "expected.attn_weights_per_head", &e), 4 * nw, TU_TOL);
    xattn_array_free(&e);
    /* without the query, no stand-in for the keys: the query is required */
    CHECK_FAIL(xattn_module_forward(NULL, m, in + 1, 2, out, 1), XATTN_ERR_ARG);
    has("needs the input 'query'");
    for (int k = 0; k < 3; k++) xattn_array_free(&a[k]);
    free(got);
    xattn_module_free(m);
    xattn_st_close(st);
}

/* diffusers self-attention: without encoder_hidden_states the keys are hidden_states. */
static void named_self_attention(void)
{
    const xattn_option d[] = {{"query_dim", "8"}, {"heads", "2"}, {"dim_head", "4"}};
    xattn_module *m = create("attention", d, 3, 3);
    if (!m) return;
    float x[NB * NI * 8], o1[NB * NI * 8], o2[NB * NI * 8];
    uint64_t rng = 5;
    tu_fill_uniform(x, NB * NI * 8, -1, 1, &rng);
    xattn_tensor in[2] = {{"hidden_states", XATTN_F32, 3, {NB, NI, 8}, x},
                          {"encoder_hidden_states", XATTN_F32, 3, {NB, NI, 8}, x}};
    xattn_tensor out = {"out", XATTN_F32, 3, {NB, NI, 8}, o1};
    CHECK_OK(xattn_module_forward(NULL, m, in, 2, &out, 1));
    out.data = o2;
    CHECK_OK(xattn_module_forward(NULL, m, in, 1, &out, 1));
    CHECK(!memcmp(o1, o2, sizeof o1));
    xattn_module_free(m);
    /* cross_attention_dim != query_dim: the keys must be given */
    const xattn_option dc[] = {
        {"query_dim", "8"}, {"cross_attention_dim", "3"}, {"heads", "2"}, {"dim_head", "4"}};
    m = create("attention", dc, 4, 3);
    if (!m) return;
    CHECK_FAIL(xattn_module_forward(NULL, m, in, 1, &out, 1), XATTN_ERR_SHAPE);
    has("input 'encoder_hidden_states' is not given, and input 'hidden_states' in its place has "
        "shape (2, 5, 8): dim 2 must be cross_attention_dim = 3");
    xattn_module_free(m);
}

/* torch's key and value default to the query and the key (stand-ins), is_causal is a 0-dim
 * switch equal to the causal (I, J) attn_mask, a (B*heads, I, J) attn_mask is one mask per
 * batch item and head; the kind's aliases and one-line description. */
static void named_torch_inputs(void)
{
    const xattn_option o[] = {{"embed_dim", "8"}, {"num_heads", "2"}};
    xattn_module *m = create("mha", o, 2, 4);
    if (!m) return;
    float x[NB * NI * 8], o1[NB * NI * 8], o2[NB * NI * 8];
    uint8_t yes = 1, causal[NI * NI], causal3[NB * 2 * NI * NI];
    uint64_t rng = 11;
    tu_fill_uniform(x, NB * NI * 8, -1, 1, &rng);
    for (int i = 0; i < NI; i++)
        for (int j = 0; j < NI; j++) causal[i * NI + j] = j > i; /* True = masked out */
    for (int bh = 0; bh < NB * 2; bh++) memcpy(causal3 + bh * NI * NI, causal, sizeof causal);
    xattn_tensor full[4] = {{"query", XATTN_F32, 3, {NB, NI, 8}, x},
                            {"key", XATTN_F32, 3, {NB, NI, 8}, x},
                            {"value", XATTN_F32, 3, {NB, NI, 8}, x},
                            {"attn_mask", XATTN_BOOL, 2, {NI, NI}, causal}};
    xattn_tensor out = {"out", XATTN_F32, 3, {NB, NI, 8}, o1};
    CHECK_OK(xattn_module_forward(NULL, m, full, 4, &out, 1));
    xattn_tensor self[2] = {{"query", XATTN_F32, 3, {NB, NI, 8}, x},
                            {"is_causal", XATTN_BOOL, 0, {0}, &yes}};
    out.data = o2;
    CHECK_OK(xattn_module_forward(NULL, m, self, 2, &out, 1));
    CHECK(!memcmp(o1, o2, sizeof o1));
    full[3] = (xattn_tensor){"attn_mask", XATTN_BOOL, 3, {NB * 2, NI, NI}, causal3};
    CHECK_OK(xattn_module_forward(NULL, m, full, 4, &out, 1));
    CHECK(!memcmp(o1, o2, sizeof o1));
    full[3].shape[0] = NB * 2 + 1; /* not B*num_heads */
    CHECK_FAIL(xattn_module_forward(NULL, m, full, 4, &out, 1), XATTN_ERR_SHAPE);
    has("dim 0 must be B*num_heads = 4");
    xattn_module_free(m);
    /* kdim != embed_dim: the query cannot stand in for the keys */
    const xattn_option ok[] = {{"embed_dim", "8"}, {"num_heads", "2"}, {"kdim", "3"}};
    if (!(m = create("mha", ok, 3, 4))) return;
    CHECK_FAIL(xattn_module_forward(NULL, m, self, 1, &out, 1), XATTN_ERR_SHAPE);
    has("input 'key' is not given, and input 'query' in its place has shape (2, 5, 8): dim 2 "
        "must be kdim = 3");
    xattn_module_free(m);

    xattn_alias_desc d;
    int per_head = 0, heads = 0;
    for (size_t i = 0; !xattn_kind_alias("mha", i, &d); i++) {
        heads |= !strcmp(d.alias, "heads") && !strcmp(d.name, "num_heads") && !d.as[0];
        per_head |= !strcmp(d.alias, "per_head_attn") && !strcmp(d.name, "attn_per_head") &&
                    !strcmp(d.as, "attn");
    }
    CHECK(heads && per_head);
    CHECK_FAIL(xattn_kind_alias("mha", 99, &d), XATTN_ERR_ARG);
    CHECK(!strcmp(xattn_kind_brief("mha"), "embed_dim,heads,kdim,vdim,bias"));
    CHECK(!strcmp(xattn_kind_brief("no-such-kind"), ""));
}

/* ---------------------------------------------------------------------------------------- */
/* What the registry lists                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Standalone modules at any prefix are listed; a block inside a module of another kind is
 * part of that module. */
static void scan_prefixes(void)
{
    static float w[1024];
    const xattn_st_entry two[] = {{"a.in_proj_weight", XATTN_F32, 2, {24, 8}, w},
                                  {"a.out_proj.weight", XATTN_F32, 2, {8, 8}, w},
                                  {"b.to_q.weight", XATTN_F32, 2, {8, 8}, w},
                                  {"b.to_k.weight", XATTN_F32, 2, {8, 8}, w},
                                  {"b.to_v.weight", XATTN_F32, 2, {8, 8}, w},
                                  {"b.to_out.0.weight", XATTN_F32, 2, {8, 8}, w}};
    const char *f = tmp_path("scan");
    CHECK_OK(xattn_st_save(f, two, 6, NULL, 0));
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(f, &st));
    unlink(f);
    xattn_found found[8];
    CHECK(xattn_module_scan(st, found, 8) == 2);
    CHECK(!strcmp(found[0].kind, "mha") && !strcmp(found[0].prefix, "a."));
    CHECK(!strcmp(found[1].kind, "attention") && !strcmp(found[1].prefix, "b."));
    xattn_module *m = NULL;
    CHECK_FAIL(xattn_module_open(st, NULL, &m), XATTN_ERR_ARG);
    has("holds 2 modules");
    xattn_open_opts o = {
        .prefix = "a.", .options = (const xattn_option[]){{"num_heads", "2"}}, .n_options = 1};
    CHECK_OK(xattn_module_open(st, &o, &m));
    CHECK(m && !strcmp(xattn_module_kind(m), "mha"));
    xattn_module_free(m);
    xattn_st_close(st);

    /* an nn.MultiheadAttention beside a conv2d-cross whose tensors it does not use: two modules
     * (a block is left out only when the other module's parameters include it) */
    const xattn_st_entry nested[] = {{"conv_query.weight", XATTN_F32, 4, {4, 3, 1, 1}, w},
                                     {"conv_key.weight", XATTN_F32, 4, {4, 3, 1, 1}, w},
                                     {"conv_value.weight", XATTN_F32, 4, {4, 3, 1, 1}, w},
                                     {"conv_query.bias", XATTN_F32, 1, {4}, w},
                                     {"conv_key.bias", XATTN_F32, 1, {4}, w},
                                     {"conv_value.bias", XATTN_F32, 1, {4}, w},
                                     {"extra.in_proj_weight", XATTN_F32, 2, {24, 8}, w},
                                     {"extra.out_proj.weight", XATTN_F32, 2, {8, 8}, w}};
    CHECK_OK(xattn_st_save(f, nested, 8, NULL, 0));
    CHECK_OK(xattn_st_open(f, &st));
    unlink(f);
    CHECK(xattn_module_scan(st, found, 8) == 2 && !strcmp(found[0].kind, "conv2d-cross") &&
          !strcmp(found[1].kind, "mha") && !strcmp(found[1].prefix, "extra."));
    xattn_st_close(st);
}

int main(void)
{
    round_trips();
    created_defaults();
    zero_opts();
    init_distribution();
    static const char *const fixtures[] = {"mha_float3d_kpm_float", "mha_bool3d_dead_head_row",
                                           "mha_float2d_kpm_bool",  "mha_kdim_vdim",
                                           "mha_diff_kpm_float",    "mha_diff_bias_kpm_full_row",
                                           "mha_diff_out_dim_bf16"};
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) named_vs_typed(fixtures[i]);
    named_extra_keys();
    named_self_attention();
    named_torch_inputs();
    scan_prefixes();
    return tu_finish("test_mha_core");
}
