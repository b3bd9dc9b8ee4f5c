/*
 * The joint kind on the module core: an all-zero xattn_joint_opts means torch's defaults (and
 * the defaults assumed are announced), create -> save -> reload gives identical parameters and
 * an identical forward, the new parameters follow TransformerEncoderLayer's initialisation
 * (bounds and moments; a new stack's layers are copies of one layer, as nn.TransformerEncoder
 * deep-copies its layer), and the forward by names equals the typed forward on a fixture.
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void has(const char *text, const char *needle)
{
    tu_checks++;
    if (!strstr(text, needle)) {
        tu_failures++;
        fprintf(stderr, "'%s' lacks '%s'\n", text, needle);
    }
}

static xattn_module *create(const xattn_option *o, size_t n, uint64_t seed)
{
    xattn_module *m = NULL;
    CHECK_OK(xattn_module_create("joint", o, n, seed, &m));
    return m;
}

/* All-zero options and NULL options: torch's defaults, each announced. */
static void zero_opts(void)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("joint_enc1_defaults.safetensors"), &st)); /* heads only */
    if (!st) return;
    xattn_joint_opts o;
    memset(&o, 0, sizeof o);
    xattn_joint *a = NULL, *b = NULL;
    CHECK_OK(xattn_joint_load(st, "", &o, &a));
    CHECK_OK(xattn_joint_load(st, "", NULL, &b));
    if (a && b) {
        xattn_joint_config ca, cb;
        xattn_joint_get_config(a, &ca);
        xattn_joint_get_config(b, &cb);
        CHECK(!memcmp(&ca, &cb, sizeof ca));
        CHECK(ca.heads == 4 && ca.norm_first == 0 && ca.activation == 0 &&
              ca.layer_norm_eps == 1e-5f && ca.bias == 1 && ca.final_norm == 0 && ca.layers == 1);
        const char *w = xattn_joint_warnings(a);
        has(w, "norm_first: not given and not in the file; assuming False");
        has(w, "activation: not given and not in the file; assuming relu");
        has(w, "layer_norm_eps: not given and not in the file; assuming 1e-05");
        CHECK(strstr(w, "nhead") == NULL && strstr(w, "dropout") == NULL);
    }
    xattn_joint_free(a);
    xattn_joint_free(b);
    /* options given: nothing assumed */
    o.norm_first = XATTN_YES;
    o.activation = XATTN_JOINT_ACT_GELU;
    o.layer_norm_eps = 1e-6;
    CHECK_OK(xattn_joint_load(st, "", &o, &a));
    if (a) {
        CHECK(xattn_joint_warnings(a)[0] == '\0');
        xattn_joint_config c;
        xattn_joint_get_config(a, &c);
        CHECK(c.norm_first == 1 && c.activation == 1 && c.layer_norm_eps == 1e-6f);
    }
    xattn_joint_free(a);
    o.norm_first = 3; /* not an xattn_choice */
    CHECK_FAIL(xattn_joint_load(st, "", &o, &a), XATTN_ERR_ARG);
    xattn_st_close(st);
    /* a file with every option in its metadata: nothing assumed either */
    CHECK_OK(xattn_st_open(tu_fixture("joint_layer_pre_gelu.safetensors"), &st));
    CHECK_OK(xattn_joint_load(st, "", NULL, &a));
    if (a) CHECK(xattn_joint_warnings(a)[0] == '\0');
    xattn_joint_free(a);
    xattn_st_close(st);
    CHECK(xattn_joint_warnings(NULL)[0] == '\0');
}

/* The typed forward of a loaded module against the registry's forward of another module. */
static void same_forward(const xattn_module *rm, const xattn_joint *tm, int64_t d, int masks)
{
    const int64_t B = 2, K = 5, N = 3;
    float x[2 * 5 * 64], c[2 * 3 * 64], o1[2 * 5 * 64], c1[2 * 3 * 64], o2[2 * 5 * 64],
        c2[2 * 3 * 64];
    uint64_t rs = 7;
    tu_fill_uniform(x, B * K * d, -2, 2, &rs);
    tu_fill_uniform(c, B * N * d, -2, 2, &rs);
    uint8_t xm[10] = {0, 0, 1, 0, 1, 0, 0, 0, 0, 1}, cm[6] = {1, 0, 0, 0, 1, 1};
    xattn_tensor in[4] = {{"x", XATTN_F32, 3, {B, K, d}, x},
                          {"context", XATTN_F32, 3, {B, N, d}, c},
                          {"x_padding_mask", XATTN_BOOL, 2, {B, K}, xm},
                          {"context_padding_mask", XATTN_U8, 2, {B, N}, cm}};
    xattn_tensor out[2] = {{"out", XATTN_F32, 3, {B, K, d}, o1},
                           {"context_out", XATTN_F32, 3, {B, N, d}, c1}};
    CHECK_OK(xattn_module_forward(NULL, rm, in, masks ? 4 : 2, out, 2));
    xattn_joint_inputs ti = {.B = B, .K = K, .N = N, .x = x, .context = c};
    if (masks) {
        ti.x_padding_mask = xm;
        ti.context_padding_mask = cm;
    }
    xattn_joint_outputs to = {.out = o2, .context_out = c2};
    CHECK_OK(xattn_joint_forward(NULL, tm, &ti, &to));
    CHECK(!memcmp(o1, o2, sizeof(float) * (size_t)(B * K * d)));
    CHECK(!memcmp(c1, c2, sizeof(float) * (size_t)(B * N * d)));
    for (int64_t i = 0; i < B * K * d; i++) CHECK(isfinite(o1[i]));
}

/* create -> save -> reload: the same tensors (bytes), config and forward */
static void round_trip(const xattn_option *o, size_t n, int64_t d, int64_t layers)
{
    char f[128];
    snprintf(f, sizeof f, "/tmp/test_joint_core_%ld.safetensors", (long)getpid());
    xattn_module *m = create(o, n, 3);
    if (!m) return;
    CHECK_OK(xattn_module_save(m, f));
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(f, &st));
    unlink(f);
    if (!st) return;
    CHECK(!strcmp(xattn_st_meta_get(st, "xattn_kind"), "joint"));
    CHECK(xattn_st_meta_get(st, "heads") != NULL);
    size_t present = 0;
    for (size_t i = 0; i < xattn_module_param_count(m); i++) {
        xattn_param_desc p;
        CHECK_OK(xattn_module_param(m, i, &p));
        if (!p.data) continue;
        present++;
        xattn_array a;
        memset(&a, 0, sizeof a);
        CHECK_OK(xattn_st_get(st, p.name, XATTN_F32, &a));
        CHECK(xattn_array_numel(&a) == tu_param_numel(&p) &&
              !memcmp(a.data, p.data, 4 * (size_t)tu_param_numel(&p)));
        xattn_array_free(&a);
    }
    CHECK(present == xattn_st_count(st));
    xattn_joint *t = NULL;
    CHECK_OK(xattn_joint_load(st, "", NULL, &t));
    if (t) {
        xattn_joint_config c;
        xattn_joint_get_config(t, &c);
        CHECK(c.d_model == d && c.layers == layers);
        CHECK(xattn_joint_warnings(t)[0] == '\0'); /* the file states every option */
        same_forward(m, t, d, 1);
        same_forward(m, t, d, 0);
    }
    if (layers == 1) { /* a bare layer is found by the registry too */
        xattn_module *r = NULL;
        CHECK_OK(xattn_module_open(st, NULL, &r));
        for (size_t i = 0; r && i < xattn_module_config_count(r); i++) {
            xattn_config_entry a, b;
            CHECK_OK(xattn_module_config(m, i, &a));
            CHECK_OK(xattn_module_config(r, i, &b));
            CHECK(!strcmp(a.value, b.value));
        }
        if (r && t) same_forward(r, t, d, 1);
        xattn_module_free(r);
    }
    xattn_joint_free(t);
    xattn_st_close(st);
    xattn_module_free(m);
}

static void round_trips(void)
{
    xattn_option bare[3] = {{"d_model", "16"}, {"nhead", "4"}, {"dim_feedforward", "24"}};
    round_trip(bare, 3, 16, 1);
    xattn_option stack[7] = {{"d_model", "12"},     {"nhead", "3"},   {"dim_feedforward", "20"},
                             {"num_layers", "3"},   {"norm", "True"}, {"norm_first", "True"},
                             {"activation", "gelu"}};
    round_trip(stack, 7, 12, 3);
    xattn_option nobias[5] = {
        {"d_model", "8"}, {"nhead", "2"}, {"num_layers", "2"}, {"norm", "True"}, {"bias", "False"}};
    round_trip(nobias, 5, 8, 2);
    /* bias=False: no bias tensors at all, the final norm included */
    xattn_module *m = create(nobias, 5, 1);
    for (size_t i = 0; m && i < xattn_module_param_count(m); i++) {
        xattn_param_desc p;
        CHECK_OK(xattn_module_param(m, i, &p));
        CHECK((strstr(p.name, "bias") != NULL) == (p.data == NULL));
    }
    xattn_module_free(m);
}

static void init_distribution(void)
{
    const int64_t d = 96, ff = 160;
    xattn_option o[4] = {
        {"d_model", "96"}, {"nhead", "8"}, {"dim_feedforward", "160"}, {"num_layers", "2"}};
    xattn_module *m = create(o, 4, 5), *m2 = create(o, 4, 6);
    if (!m || !m2) return;
    xattn_param_desc p, q;
    /* MultiheadAttention._reset_parameters: xavier in_proj, zero in_proj_bias, out_proj.bias */
    tu_check_uniform(m, "layers.0.self_attn.in_proj_weight", sqrt(6.0 / (4.0 * d)));
    tu_check_const(m, "layers.0.self_attn.in_proj_bias", 0.0f);
    tu_check_uniform(m, "layers.0.self_attn.out_proj.weight", 1 / sqrt((double)d));
    tu_check_const(m, "layers.0.self_attn.out_proj.bias", 0.0f);
    /* nn.Linear: U(+-1/sqrt(fan_in)) weights and biases */
    tu_check_uniform(m, "layers.0.linear1.weight", 1 / sqrt((double)d));
    tu_check_uniform(m, "layers.0.linear1.bias", 1 / sqrt((double)d));
    tu_check_uniform(m, "layers.0.linear2.weight", 1 / sqrt((double)ff));
    tu_check_const(m, "layers.1.norm1.weight", 1.0f);
    tu_check_const(m, "layers.1.norm2.bias", 0.0f);
    /* nn.TransformerEncoder deep-copies its layer */
    tu_param(m, "layers.0.linear2.weight", &p);
    tu_param(m, "layers.1.linear2.weight", &q);
    CHECK(!memcmp(p.data, q.data, 4 * (size_t)tu_param_numel(&p)));
    /* the seed decides */
    tu_param(m2, "layers.0.linear2.weight", &q);
    CHECK(memcmp(p.data, q.data, 4 * (size_t)tu_param_numel(&p)) != 0);
    xattn_module_free(m);
    xattn_module_free(m2);
    /* nhead has no default */
    xattn_module *none = NULL;
    CHECK_FAIL(xattn_module_create("joint", o, 1, 0, &none), XATTN_ERR_ARG);
    has(xattn_last_error(), "heads");
    xattn_option bad[3] = {{"d_model", "8"}, {"nhead", "2"}, {"norm", "True"}};
    CHECK_FAIL(xattn_module_create("joint", bad, 3, 0, &none), XATTN_ERR_ARG);
    has(xattn_last_error(), "needs num_layers");
    CHECK(none == NULL);
}

/* The registry's forward by names equals the typed forward on a fixture (masks, contexts). */
static void named_forward(void)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("joint_layer_pre_gelu.safetensors"), &st));
    if (!st) return;
    xattn_module *r = NULL;
    xattn_joint *t = NULL;
    CHECK_OK(xattn_module_open(st, NULL, &r));
    CHECK_OK(xattn_joint_load(st, "", NULL, &t));
    if (r && t) {
        CHECK(!strcmp(xattn_module_kind(r), "joint"));
        xattn_array ax, ac, am, cm, eo, ec;
        const float *x = tu_get_f32(st, "input.x", &ax), *c = tu_get_f32(st, "input.context", &ac);
        const float *ref = tu_get_f32(st, "expected.out", &eo);
        const float *cref = tu_get_f32(st, "expected.context_out", &ec);
        CHECK_OK(xattn_st_get(st, "input.x_padding_mask", XATTN_BOOL, &am));
        CHECK_OK(xattn_st_get(st, "input.context_padding_mask", XATTN_BOOL, &cm));
        const int64_t B = ax.shape[0], K = ax.shape[1], N = ac.shape[1], d = ax.shape[2];
        float *o1 = calloc((size_t)(B * K * d), 4), *c1 = calloc((size_t)(B * N * d), 4);
        float *o2 = calloc((size_t)(B * K * d), 4), *c2 = calloc((size_t)(B * N * d), 4);
        xattn_tensor in[4] = {{"x", XATTN_F32, 3, {B, K, d}, (void *)x},
                              {"context", XATTN_F32, 3, {B, N, d}, (void *)c},
                              {"x_padding_mask", XATTN_BOOL, 2, {B, K}, am.data},
                              {"context_padding_mask", XATTN_BOOL, 2, {B, N}, cm.data}};
        xattn_tensor out[2] = {{"out", XATTN_F32, 3, {B, K, d}, o1},
                               {"context_out", XATTN_F32, 3, {B, N, d}, c1}};
        xattn_ctx *one = NULL;
        CHECK_OK(xattn_ctx_new(&one));
        CHECK_OK(xattn_ctx_set_threads(one, 1));
        CHECK_OK(xattn_module_forward(one, r, in, 4, out, 2));
        xattn_joint_inputs ti = {.B = B,
                                 .K = K,
                                 .N = N,
                                 .x = x,
                                 .context = c,
                                 .x_padding_mask = am.data,
                                 .context_padding_mask = cm.data};
        xattn_joint_outputs to = {.out = o2, .context_out = c2};
        CHECK_OK(xattn_joint_forward(one, t, &ti, &to));
        CHECK(!memcmp(o1, o2, 4 * (size_t)(B * K * d)) && !memcmp(c1, c2, 4 * (size_t)(B * N * d)));
        tu_check_close("named out", o1, ref, B * K * d, TU_TOL);
        tu_check_close("named context_out", c1, cref, B * N * d, TU_TOL);
        CHECK_OK(xattn_joint_forward(NULL, t, &ti, &to)); /* default context: same numbers */
        tu_check_close("typed out", o2, ref, B * K * d, TU_TOL);
        /* the context out only, a required output left to scratch */
        memset(c1, 0, 4 * (size_t)(B * N * d));
        CHECK_OK(xattn_module_forward(NULL, r, in, 4, out + 1, 1));
        tu_check_close("context_out alone", c1, cref, B * N * d, TU_TOL);
        xattn_ctx_free(one);
        free(o1);
        free(c1);
        free(o2);
        free(c2);
        xattn_array_free(&ax);
        xattn_array_free(&ac);
        xattn_array_free(&am);
        xattn_array_free(&cm);
        xattn_array_free(&eo);
        xattn_array_free(&ec);
    }
    xattn_module_free(r);
    xattn_joint_free(t);
    xattn_st_close(st);
    /* a stack is one module: found at its prefix, its layers (and their attentions) not listed */
    CHECK_OK(xattn_st_open(tu_fixture("joint_enc2_long.safetensors"), &st));
    xattn_found found[8];
    size_t n = xattn_module_scan(st, found, 8);
    CHECK(n == 1 && !strcmp(found[0].kind, "joint") && !strcmp(found[0].prefix, ""));
    xattn_module *whole = NULL;
    CHECK_OK(xattn_module_open(st, NULL, &whole));
    xattn_module_free(whole);
    xattn_st_close(st);
}

int main(void)
{
    zero_opts();
    round_trips();
    init_distribution();
    named_forward();
    return tu_finish("test_joint_core");
}
