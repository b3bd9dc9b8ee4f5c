/*
 * Bidirectional cross-attention on the module core (kinds "bidir" and "bidir-transformer"):
 *   1. defaults: the kinds' arguments and a zero-initialised xattn_bidir_opts give the package's
 *      defaults for every field (heads 8 announced as assumed, dim_head 64, dropout 0, ...);
 *   2. create -> save -> reload (registry and typed loader): identical parameters, config and
 *      forward (bitwise);
 *   3. initialisation: bounds and moments of every parameter as the package initialises it
 *      (nn.Linear, the talking heads' 1x1 nn.Conv2d, norms), seeds, layers drawn one by one;
 *   4. forward by named arrays equals the typed forward on the package's fixtures (masks,
 *      bias, maps, talking heads, the transformer), on contexts with 1 and 2 threads;
 *   5. what the build hooks settle: heads, dim_head and the feed-forward factor from the
 *      shapes, options and metadata that contradict them, the registry scan of a transformer.
 */
#include "testutil.h"

#include <math.h>
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

static const char *tmp_path(const char *tag)
{
    static char buf[4][160];
    static int k;
    char *b = buf[k++ % 4];
    snprintf(b, sizeof buf[0], "/tmp/test_bidir_core_%ld_%s.safetensors", (long)getpid(), tag);
    return b;
}

/* xattn_module_create with "name=value" pairs */
static xattn_module *create(const char *kind, uint64_t seed, const char *const *kv, size_t n)
{
    xattn_option o[16];
    for (size_t i = 0; i < n; i++) o[i] = (xattn_option){kv[2 * i], kv[2 * i + 1]};
    xattn_module *m = NULL;
    CHECK_OK(xattn_module_create(kind, o, n, seed, &m));
    return m;
}

static const char *config_value(const xattn_module *m, const char *name, const char **source)
{
    for (size_t i = 0; i < xattn_module_config_count(m); i++) {
        xattn_config_entry e;
        if (xattn_module_config(m, i, &e) == XATTN_OK && !strcmp(e.name, name)) {
            if (source) *source = e.source;
            return e.value;
        }
    }
    return "(none)";
}

static int param_of(const xattn_module *m, const char *name, xattn_param_desc *p)
{
    for (size_t i = 0; i < xattn_module_param_count(m); i++)
        if (xattn_module_param(m, i, p) == XATTN_OK && !strcmp(p->name, name)) return 1;
    return 0;
}

/* Writes the module's present parameters without any __metadata__ (as a plain state dict). */
static void save_plain(const xattn_module *m, const char *path)
{
    size_t n = xattn_module_param_count(m), k = 0;
    xattn_st_entry *e = calloc(n, sizeof *e);
    for (size_t i = 0; i < n; i++) {
        xattn_param_desc p;
        CHECK_OK(xattn_module_param(m, i, &p));
        if (!p.data) continue;
        e[k].name = p.name;
        e[k].dtype = XATTN_F32;
        e[k].ndim = p.ndim;
        memcpy(e[k].shape, p.shape, sizeof p.shape);
        e[k].data = p.data;
        k++;
    }
    CHECK_OK(xattn_st_save(path, e, k, NULL, 0));
    free(e);
}

/* ---------------------------------------------------------------------------------------- */
/* 1. defaults                                                                              */
/* ---------------------------------------------------------------------------------------- */

static const char *arg_default(const char *kind, const char *name)
{
    for (size_t j = 0;; j++) {
        xattn_arg_desc a;
        if (xattn_kind_arg(kind, j, &a) != XATTN_OK) return "(none)";
        if (!strcmp(a.name, name)) return a.default_value;
    }
}

static void defaults(void)
{
    /* the constructors' defaults */
    CHECK(!strcmp(arg_default("bidir", "heads"), "8"));
    CHECK(!strcmp(arg_default("bidir", "dim_head"), "64"));
    CHECK(!strcmp(arg_default("bidir", "context_dim"), "None"));
    CHECK(!strcmp(arg_default("bidir", "dropout"), "0"));
    CHECK(!strcmp(arg_default("bidir", "talking_heads"), "False"));
    CHECK(!strcmp(arg_default("bidir", "prenorm"), "False"));
    CHECK(!strcmp(arg_default("bidir", "dim"), "-"));
    CHECK(!strcmp(arg_default("bidir-transformer", "ff_expansion_factor"), "4"));
    CHECK(!strcmp(arg_default("bidir-transformer", "final_norms"), "False"));
    CHECK(!strcmp(arg_default("bidir-transformer", "depth"), "-"));
    CHECK(!strcmp(arg_default("bidir-transformer", "heads"), "8"));

    /* created with the required arguments only */
    const char *a[] = {"dim", "16"};
    xattn_module *m = create("bidir", 1, a, 1);
    if (!m) return;
    CHECK(!strcmp(config_value(m, "heads", NULL), "8"));
    CHECK(!strcmp(config_value(m, "dim_head", NULL), "64"));
    CHECK(!strcmp(config_value(m, "context_dim", NULL), "16"));
    CHECK(!strcmp(config_value(m, "inner_dim", NULL), "512"));
    CHECK(!strcmp(config_value(m, "prenorm", NULL), "False"));
    xattn_param_desc p;
    CHECK(param_of(m, "to_qk.weight", &p) && p.shape[0] == 512 && p.shape[1] == 16);
    CHECK(!param_of(m, "norm.weight", &p) || !p.data);
    CHECK(!param_of(m, "talking_heads.weight", &p) || !p.data);

    /* a plain state dict (no metadata) with a zero-initialised options struct: the defaults,
     * the assumed head count announced */
    const char *f = tmp_path("plain");
    save_plain(m, f);
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(f, &st));
    unlink(f);
    xattn_bidir_opts zero;
    memset(&zero, 0, sizeof zero);
    xattn_bidir *b = NULL, *b2 = NULL;
    CHECK_OK(xattn_bidir_load(st, "", &zero, &b));
    CHECK_OK(xattn_bidir_load(st, "", NULL, &b2));
    xattn_bidir_config c, c2;
    xattn_bidir_get_config(b, &c);
    xattn_bidir_get_config(b2, &c2);
    CHECK(c.heads == 8 && c.dim_head == 64 && c.inner_dim == 512 && c.dim == 16 &&
          c.context_dim == 16 && c.prenorm == XATTN_NORM_NONE && !c.talking_heads &&
          !c.is_transformer && c.depth == 1);
    CHECK(!memcmp(&c, &c2, sizeof c));
    xattn_module *r = NULL;
    CHECK_OK(xattn_module_open(st, NULL, &r));
    if (r) {
        CHECK(strstr(xattn_module_warnings(r), "heads: not given and not in the file; assuming 8"));
        CHECK(!strstr(xattn_module_warnings(r), "dropout"));
        const char *src = "";
        config_value(r, "dim_head", &src);
        CHECK(!strcmp(src, "shape"));
    }
    xattn_bidir_free(b2);
    zero.reserved_[2] = 1;
    CHECK_FAIL(xattn_bidir_load(st, "", &zero, &b2), XATTN_ERR_ARG);
    CHECK(b2 == NULL);
    xattn_module_free(r);
    xattn_bidir_free(b);
    xattn_st_close(st);
    xattn_module_free(m);

    /* the transformer: ff_expansion_factor 4, no final norms; implied by the widths */
    const char *t[] = {"dim", "12", "depth", "2", "heads", "2", "dim_head", "4"};
    m = create("bidir-transformer", 2, t, 4);
    if (!m) return;
    CHECK(!strcmp(config_value(m, "ff_expansion_factor", NULL), "4"));
    CHECK(!strcmp(config_value(m, "ff_hidden", NULL), "48"));
    CHECK(!strcmp(config_value(m, "final_norms", NULL), "False"));
    CHECK(!strcmp(config_value(m, "prenorm", NULL), "True"));
    f = tmp_path("tplain");
    save_plain(m, f);
    CHECK_OK(xattn_st_open(f, &st));
    unlink(f);
    memset(&zero, 0, sizeof zero);
    zero.heads = 2;
    CHECK_OK(xattn_bidir_load(st, "", &zero, &b));
    xattn_bidir_get_config(b, &c);
    CHECK(c.is_transformer && c.depth == 2 && c.ff_hidden == 48 && c.context_ff_hidden == 48 &&
          c.ff_expansion_factor == 4.0 && !c.final_norms && c.prenorm == XATTN_NORM_RMS &&
          c.dim_head == 4);
    xattn_bidir_free(b);
    xattn_st_close(st);
    xattn_module_free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* 2. create -> save -> reload                                                              */
/* ---------------------------------------------------------------------------------------- */

/* Runs a module by names: x (B, I, dim), context (B, J, cdim) -> out, context_out. */
static xattn_status run_named(xattn_ctx *ctx, const xattn_module *m, int64_t B, int64_t I,
                              int64_t J, int64_t dim, int64_t cdim, const float *x, const float *c,
                              float *out, float *cout)
{
    xattn_tensor in[2] = {{"x", XATTN_F32, 3, {B, I, dim}, (void *)x},
                          {"context", XATTN_F32, 3, {B, J, cdim}, (void *)c}};
    xattn_tensor o[2] = {{"out", XATTN_F32, 3, {B, I, dim}, out},
                         {"context_out", XATTN_F32, 3, {B, J, cdim}, cout}};
    return xattn_module_forward(ctx, m, in, 2, o, 2);
}

static void round_trip_one(const char *kind, const char *const *kv, size_t n, int64_t dim,
                           int64_t cdim)
{
    xattn_module *m = create(kind, 9, kv, n);
    if (!m) return;
    const char *f1 = tmp_path("rt1"), *f2 = tmp_path("rt2");
    CHECK_OK(xattn_module_save(m, f1));
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(f1, &st));
    xattn_module *r = NULL;
    CHECK_OK(xattn_module_open(st, NULL, &r));
    xattn_bidir *t = NULL;
    CHECK_OK(xattn_bidir_load(st, "", NULL, &t));
    if (!r || !t) goto done;
    CHECK(!strcmp(xattn_module_kind(r), kind));
    CHECK(xattn_module_warnings(r)[0] == '\0'); /* the metadata says what the names cannot */
    CHECK(xattn_module_param_count(r) == xattn_module_param_count(m));
    for (size_t i = 0; i < xattn_module_param_count(m); i++) {
        xattn_param_desc a, b;
        CHECK_OK(xattn_module_param(m, i, &a));
        CHECK_OK(xattn_module_param(r, i, &b));
        CHECK(!strcmp(a.name, b.name) && a.ndim == b.ndim && (a.data == NULL) == (b.data == NULL));
        if (a.data && b.data) CHECK(!memcmp(a.data, b.data, (size_t)tu_param_numel(&a) * 4));
    }
    for (size_t i = 0; i < xattn_module_config_count(m); i++) {
        xattn_config_entry a, b;
        CHECK_OK(xattn_module_config(m, i, &a));
        CHECK_OK(xattn_module_config(r, i, &b));
        tu_checks++;
        if (strcmp(a.value, b.value)) {
            tu_failures++;
            fprintf(stderr, "%s: %s is %s created, %s reloaded\n", kind, a.name, a.value, b.value);
        }
    }
    /* forward: created (by names), reloaded (by names), reloaded (typed): bitwise equal */
    const int64_t B = 2, I = 9, J = 13;
    float *x = malloc(sizeof(float) * B * I * dim), *c = malloc(sizeof(float) * B * J * cdim);
    float *o[3], *co[3];
    uint64_t rng = 17;
    tu_fill_uniform(x, B * I * dim, -2, 2, &rng);
    tu_fill_uniform(c, B * J * cdim, -2, 2, &rng);
    for (int k = 0; k < 3; k++) {
        o[k] = calloc((size_t)(B * I * dim), 4);
        co[k] = calloc((size_t)(B * J * cdim), 4);
    }
    CHECK_OK(run_named(NULL, m, B, I, J, dim, cdim, x, c, o[0], co[0]));
    CHECK_OK(run_named(NULL, r, B, I, J, dim, cdim, x, c, o[1], co[1]));
    xattn_bidir_inputs in = {.B = B, .I = I, .J = J, .x = x, .context = c};
    xattn_bidir_outputs out = {.out = o[2], .context_out = co[2]};
    CHECK_OK(xattn_bidir_forward(NULL, t, &in, &out));
    for (int k = 1; k < 3; k++) {
        CHECK(!memcmp(o[0], o[k], (size_t)(B * I * dim) * 4));
        CHECK(!memcmp(co[0], co[k], (size_t)(B * J * cdim) * 4));
    }
    /* saved again: the same file contents */
    CHECK_OK(xattn_module_save(r, f2));
    xattn_safetensors *st2 = NULL;
    CHECK_OK(xattn_st_open(f2, &st2));
    CHECK(st2 && xattn_st_count(st2) == xattn_st_count(st));
    for (size_t i = 0; st2 && i < xattn_st_count(st); i++) {
        xattn_array a, b;
        memset(&a, 0, sizeof a);
        memset(&b, 0, sizeof b);
        CHECK_OK(xattn_st_get(st, xattn_st_name(st, i), XATTN_F32, &a));
        CHECK_OK(xattn_st_get(st2, xattn_st_name(st, i), XATTN_F32, &b));
        CHECK(xattn_array_numel(&a) == xattn_array_numel(&b) &&
              !memcmp(a.data, b.data, (size_t)xattn_array_numel(&a) * 4));
        xattn_array_free(&a);
        xattn_array_free(&b);
    }
    xattn_st_close(st2);
    unlink(f2);
    for (int k = 0; k < 3; k++) {
        free(o[k]);
        free(co[k]);
    }
    free(x);
    free(c);
    printf("  round trip %s: %zu parameters\n", kind, xattn_module_param_count(m));
done:
    unlink(f1);
    xattn_bidir_free(t);
    xattn_module_free(r);
    xattn_st_close(st);
    xattn_module_free(m);
}

static void round_trip(void)
{
    const char *a1[] = {"dim",      "12", "context_dim",   "10",   "heads",   "3",
                        "dim_head", "5",  "talking_heads", "True", "prenorm", "True"};
    round_trip_one("bidir", a1, 6, 12, 10);
    const char *a2[] = {"dim",     "8",    "context_dim", "6",    "heads",   "2",  "dim_head", "4",
                        "prenorm", "True", "layernorm",   "True", "dropout", "0.1"};
    round_trip_one("bidir", a2, 7, 8, 6);
    const char *a3[] = {
        "dim",      "7", "context_dim",         "5",   "depth",         "3",   "heads", "2",
        "dim_head", "3", "ff_expansion_factor", "1.5", "talking_heads", "True"};
    round_trip_one("bidir-transformer", a3, 7, 7, 5);
    const char *a4[] = {"dim",
                        "6",
                        "depth",
                        "1",
                        "heads",
                        "1",
                        "dim_head",
                        "6",
                        "final_norms",
                        "True",
                        "ff_expansion_factor",
                        "0.3333333333333333"};
    round_trip_one("bidir-transformer", a4, 6, 6, 6);
}

/* ---------------------------------------------------------------------------------------- */
/* 3. initialisation                                                                        */
/* ---------------------------------------------------------------------------------------- */

static void init_distribution(void)
{
    const char *a[] = {"dim",       "96",  "context_dim",   "64",   "heads",   "16",
                       "dim_head",  "8",   "talking_heads", "True", "prenorm", "True",
                       "layernorm", "True"};
    xattn_module *m = create("bidir", 5, a, 7), *m2 = create("bidir", 6, a, 7);
    xattn_module *m3 = create("bidir", 5, a, 7);
    if (!m || !m2 || !m3) return;
    /* nn.Linear: kaiming_uniform(a=sqrt(5)) -> U(+-1/sqrt(fan_in)); biases U(+-1/sqrt(fan_in)) */
    tu_check_uniform(m, "to_qk.weight", 1 / sqrt(96.0));
    tu_check_uniform(m, "to_v.weight", 1 / sqrt(96.0));
    tu_check_uniform(m, "context_to_qk.weight", 1 / sqrt(64.0));
    tu_check_uniform(m, "context_to_v.weight", 1 / sqrt(64.0));
    tu_check_uniform(m, "to_out.weight", 1 / sqrt(128.0));
    tu_check_uniform(m, "to_out.bias", 1 / sqrt(128.0));
    tu_check_uniform(m, "context_to_out.weight", 1 / sqrt(128.0));
    tu_check_uniform(m, "context_to_out.bias", 1 / sqrt(128.0));
    /* nn.Conv2d(heads, heads, 1, bias=False): fan_in = heads */
    tu_check_uniform(m, "talking_heads.weight", 1 / sqrt(16.0));
    tu_check_uniform(m, "context_talking_heads.weight", 1 / sqrt(16.0));
    /* norms: weights 1, LayerNorm biases 0 */
    tu_check_const(m, "norm.weight", 1);
    tu_check_const(m, "context_norm.weight", 1);
    tu_check_const(m, "norm.bias", 0);
    tu_check_const(m, "context_norm.bias", 0);
    xattn_param_desc p, q, r;
    param_of(m, "to_qk.weight", &p);
    param_of(m2, "to_qk.weight", &q);
    param_of(m3, "to_qk.weight", &r);
    CHECK(memcmp(p.data, q.data, (size_t)tu_param_numel(&p) * 4) != 0); /* the seed matters   */
    CHECK(memcmp(p.data, r.data, (size_t)tu_param_numel(&p) * 4) == 0); /* and decides it all */
    xattn_module_free(m);
    xattn_module_free(m2);
    xattn_module_free(m3);

    const char *t[] = {
        "dim",      "48", "context_dim",         "40",  "depth",       "2",    "heads", "4",
        "dim_head", "16", "ff_expansion_factor", "2.5", "final_norms", "False"};
    m = create("bidir-transformer", 7, t, 7);
    if (!m) return;
    tu_check_uniform(m, "layers.1.0.to_qk.weight", 1 / sqrt(48.0));
    tu_check_uniform(m, "layers.1.0.context_to_out.bias", 1 / sqrt(64.0));
    tu_check_const(m, "layers.0.0.norm.weight", 1);
    tu_check_const(m, "layers.1.0.context_norm.weight", 1);
    tu_check_uniform(m, "layers.0.1.1.weight", 1 / sqrt(48.0)); /* Linear(48, 120) */
    tu_check_uniform(m, "layers.0.1.1.bias", 1 / sqrt(48.0));
    tu_check_uniform(m, "layers.0.1.3.weight", 1 / sqrt(120.0)); /* Linear(120, 48) */
    tu_check_uniform(m, "layers.0.1.3.bias", 1 / sqrt(120.0));
    tu_check_uniform(m, "layers.1.2.1.weight", 1 / sqrt(40.0)); /* Linear(40, 100) */
    tu_check_uniform(m, "layers.1.2.3.bias", 1 / sqrt(100.0));
    tu_check_const(m, "layers.1.2.0.weight", 1);
    CHECK(param_of(m, "layers.0.1.1.weight", &p) && p.shape[0] == 120 && p.shape[1] == 48);
    CHECK(param_of(m, "layers.0.2.1.weight", &p) && p.shape[0] == 100 && p.shape[1] == 40);
    CHECK(!param_of(m, "norm.weight", &p) || !p.data);
    /* each layer is built on its own (no deep copies): layers differ */
    param_of(m, "layers.0.0.to_qk.weight", &p);
    param_of(m, "layers.1.0.to_qk.weight", &q);
    CHECK(memcmp(p.data, q.data, (size_t)tu_param_numel(&p) * 4) != 0);
    xattn_module_free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* 4. named forward == typed forward on fixtures                                            */
/* ---------------------------------------------------------------------------------------- */

static void named_vs_typed(const char *file, int maps)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(file), &st));
    if (!st) return;
    xattn_module *m = NULL;
    xattn_bidir *t = NULL;
    xattn_open_opts oo;
    memset(&oo, 0, sizeof oo);
    oo.prefix = "";
    CHECK_OK(xattn_module_open(st, &oo, &m));
    CHECK_OK(xattn_bidir_load(st, "", NULL, &t));
    xattn_array ax, ac, am, acm, ab;
    memset(&am, 0, sizeof am);
    memset(&acm, 0, sizeof acm);
    memset(&ab, 0, sizeof ab);
    tu_get_f32(st, "input.x", &ax);
    tu_get_f32(st, "input.context", &ac);
    xattn_tensor in[5];
    size_t n_in = 0;
    in[n_in++] =
        (xattn_tensor){"x", XATTN_F32, 3, {ax.shape[0], ax.shape[1], ax.shape[2]}, ax.data};
    in[n_in++] =
        (xattn_tensor){"context", XATTN_F32, 3, {ac.shape[0], ac.shape[1], ac.shape[2]}, ac.data};
    xattn_bidir_inputs ti = {
        .B = ax.shape[0], .I = ax.shape[1], .J = ac.shape[1], .x = ax.data, .context = ac.data};
    if (xattn_st_find(st, "input.mask") >= 0) {
        CHECK_OK(xattn_st_get(st, "input.mask", XATTN_BOOL, &am));
        in[n_in++] = (xattn_tensor){"mask", XATTN_BOOL, 2, {am.shape[0], am.shape[1]}, am.data};
        ti.mask = am.data;
    }
    if (xattn_st_find(st, "input.context_mask") >= 0) {
        CHECK_OK(xattn_st_get(st, "input.context_mask", XATTN_BOOL, &acm));
        in[n_in++] =
            (xattn_tensor){"context_mask", XATTN_BOOL, 2, {acm.shape[0], acm.shape[1]}, acm.data};
        ti.context_mask = acm.data;
    }
    if (xattn_st_find(st, "input.rel_pos_bias") >= 0) {
        tu_get_f32(st, "input.rel_pos_bias", &ab);
        in[n_in++] = (xattn_tensor){"rel_pos_bias",
                                    XATTN_F32,
                                    4,
                                    {ab.shape[0], ab.shape[1], ab.shape[2], ab.shape[3]},
                                    ab.data};
        ti.rel_pos_bias = ab.data;
        ti.bias_b = ab.shape[0];
        ti.bias_h = ab.shape[1];
    }
    xattn_tensor out[4] = {{"out", XATTN_F32, 0, {0}, NULL},
                           {"context_out", XATTN_F32, 0, {0}, NULL},
                           {"attn", XATTN_F32, 0, {0}, NULL},
                           {"context_attn", XATTN_F32, 0, {0}, NULL}};
    const size_t n_out = maps ? 4 : 2;
    if (!m || !t || xattn_module_plan(m, in, n_in, out, n_out) != XATTN_OK) {
        CHECK(0);
        goto done;
    }
    float *buf[2][4];
    int64_t sz[4];
    for (size_t k = 0; k < n_out; k++) {
        sz[k] = 1;
        for (int d = 0; d < out[k].ndim; d++) sz[k] *= out[k].shape[d];
        buf[0][k] = calloc((size_t)sz[k], 4);
        buf[1][k] = calloc((size_t)sz[k], 4);
        out[k].data = buf[0][k];
    }
    xattn_ctx *ctx = NULL;
    CHECK_OK(xattn_ctx_new(&ctx));
    for (int threads = 1; threads <= 2; threads++) {
        CHECK_OK(xattn_ctx_set_threads(ctx, threads));
        CHECK_OK(xattn_module_forward(ctx, m, in, n_in, out, n_out));
        xattn_bidir_outputs to = {.out = buf[1][0],
                                  .context_out = buf[1][1],
                                  .attn = maps ? buf[1][2] : NULL,
                                  .context_attn = maps ? buf[1][3] : NULL};
        CHECK_OK(xattn_bidir_forward(ctx, t, &ti, &to));
        for (size_t k = 0; k < n_out; k++) CHECK(!memcmp(buf[0][k], buf[1][k], (size_t)sz[k] * 4));
    }
    /* the fixture's expected values (the package, float64) */
    xattn_array e;
    tu_check_close(file, buf[0][0], tu_get_f32(st, "expected.out", &e), sz[0], TU_TOL);
    xattn_array_free(&e);
    if (maps && xattn_st_find(st, "expected.attn") >= 0) {
        tu_check_close(file, buf[0][2], tu_get_f32(st, "expected.attn", &e), sz[2], TU_TOL);
        xattn_array_free(&e);
    }
    xattn_ctx_free(ctx);
    for (size_t k = 0; k < n_out; k++) {
        free(buf[0][k]);
        free(buf[1][k]);
    }
    printf("  named vs typed: %s (%zu inputs, %zu outputs)\n", file, n_in, n_out);
done:
    xattn_array_free(&ax);
    xattn_array_free(&ac);
    xattn_array_free(&am);
    xattn_array_free(&acm);
    xattn_array_free(&ab);
    xattn_bidir_free(t);
    xattn_module_free(m);
    xattn_st_close(st);
}

/* ---------------------------------------------------------------------------------------- */
/* 5. what the build hooks settle                                                           */
/* ---------------------------------------------------------------------------------------- */

static xattn_status open_with(xattn_safetensors *st, const char *name, const char *value,
                              xattn_module **m)
{
    xattn_option o[1] = {{name, value}};
    xattn_open_opts oo;
    memset(&oo, 0, sizeof oo);
    oo.options = o;
    oo.n_options = name ? 1 : 0;
    return xattn_module_open(st, &oo, m);
}

static void settled(void)
{
    xattn_module *m = NULL;
    /* creation errors */
    const char *bad1[] = {"dim", "8", "layernorm", "True"};
    xattn_option o[8];
    for (int i = 0; i < 2; i++) o[i] = (xattn_option){bad1[2 * i], bad1[2 * i + 1]};
    CHECK_FAIL(xattn_module_create("bidir", o, 2, 0, &m), XATTN_ERR_ARG);
    has("needs prenorm=True");
    const char *bad2[] = {"dim", "8", "context_dim", "6", "depth", "1", "final_norms", "True"};
    for (int i = 0; i < 4; i++) o[i] = (xattn_option){bad2[2 * i], bad2[2 * i + 1]};
    CHECK_FAIL(xattn_module_create("bidir-transformer", o, 4, 0, &m), XATTN_ERR_ARG);
    has("context_norm with size dim");
    const char *bad3[] = {"dim", "8", "depth", "1", "ff_expansion_factor", "0.1"};
    for (int i = 0; i < 3; i++) o[i] = (xattn_option){bad3[2 * i], bad3[2 * i + 1]};
    CHECK_FAIL(xattn_module_create("bidir-transformer", o, 3, 0, &m), XATTN_ERR_ARG);
    has("int(8 * 0.1) = 0");
    const char *bad4[] = {"dim", "8", "ff_expansion_factor", "2"};
    for (int i = 0; i < 2; i++) o[i] = (xattn_option){bad4[2 * i], bad4[2 * i + 1]};
    CHECK_FAIL(xattn_module_create("bidir", o, 2, 0, &m), XATTN_ERR_ARG);
    has("unknown option 'ff_expansion_factor'");
    CHECK(m == NULL);

    /* a transformer with factor 1.5 (dim 7 -> 10, context 5 -> 7), saved without metadata */
    const char *t[] = {"dim",      "7", "context_dim",         "5",  "depth", "2", "heads", "2",
                       "dim_head", "3", "ff_expansion_factor", "1.5"};
    xattn_module *c = create("bidir-transformer", 3, t, 6);
    if (!c) return;
    const char *f = tmp_path("settle");
    save_plain(c, f);
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(f, &st));
    unlink(f);
    CHECK_OK(open_with(st, "heads", "2", &m));
    if (m) {
        const char *src = "";
        CHECK(!strcmp(config_value(m, "ff_expansion_factor", &src), "1.5"));
        CHECK(!strcmp(src, "shape"));
        CHECK(!strcmp(config_value(m, "depth", &src), "2") && !strcmp(src, "shape"));
        CHECK(!strcmp(config_value(m, "dim_head", &src), "3") && !strcmp(src, "shape"));
        xattn_module_free(m);
    }
    /* the default 8 heads do not divide inner_dim 6 */
    CHECK_FAIL(open_with(st, NULL, NULL, &m), XATTN_ERR_SHAPE);
    has("inner dim 6 (rows of 'layers.0.0.to_qk.weight') is not divisible by heads 8 (the package "
        "default");
    xattn_option two[2] = {{"heads", "2"}, {"dim_head", "2"}};
    xattn_open_opts oo;
    memset(&oo, 0, sizeof oo);
    oo.options = two;
    oo.n_options = 2;
    CHECK_FAIL(xattn_module_open(st, &oo, &m), XATTN_ERR_SHAPE);
    has("dim_head argument 2 disagrees with the shape of 'layers.0.0.to_qk.weight' (inner_dim 6 "
        "= heads 2 * dim_head 3)");
    two[1] = (xattn_option){"ff_expansion_factor", "2"};
    CHECK_FAIL(xattn_module_open(st, &oo, &m), XATTN_ERR_SHAPE);
    has("ff_expansion_factor argument 2 disagrees with the shapes of 'layers.0.1.1.weight' (10)");
    two[1].value = "1.45"; /* int(7 * 1.45) = 10, int(5 * 1.45) = 7: agrees */
    CHECK_OK(xattn_module_open(st, &oo, &m));
    if (m) CHECK(!strcmp(config_value(m, "ff_expansion_factor", NULL), "1.45"));
    xattn_module_free(m);
    /* the scan lists the transformer once, not the attentions of its layers */
    xattn_found found[8];
    CHECK(xattn_module_scan(st, found, 8) == 1 && !strcmp(found[0].kind, "bidir-transformer"));
    xattn_st_close(st);

    /* widths that no one factor gives: int(7 f) = 10 needs f in [1.43, 1.57), int(5 f) = 9
     * needs f in [1.8, 2) */
    size_t np = xattn_module_param_count(c), k = 0;
    xattn_st_entry *e = calloc(np, sizeof *e);
    float *junk = calloc(7 * 9 * 2, 4);
    for (size_t i = 0; i < np; i++) {
        xattn_param_desc p;
        CHECK_OK(xattn_module_param(c, i, &p));
        if (!p.data) continue;
        e[k] = (xattn_st_entry){p.name, XATTN_F32, p.ndim, {0}, p.data};
        memcpy(e[k].shape, p.shape, sizeof p.shape);
        const char *leaf = strncmp(p.name, "layers.", 7) ? "" : p.name + 9;
        if (!strncmp(leaf, "2.1.", 4) || !strncmp(leaf, "2.3.", 4)) { /* context hidden 7 -> 9 */
            for (int d = 0; d < p.ndim; d++)
                if (e[k].shape[d] == 7 && (leaf[2] == '1' ? d == 0 : d == 1)) e[k].shape[d] = 9;
            e[k].data = junk;
        }
        k++;
    }
    f = tmp_path("nofactor");
    CHECK_OK(xattn_st_save(f, e, k, NULL, 0));
    CHECK_OK(xattn_st_open(f, &st));
    unlink(f);
    CHECK_FAIL(open_with(st, "heads", "2", &m), XATTN_ERR_SHAPE);
    has("come from no one ff_expansion_factor");
    xattn_st_close(st);
    free(junk);
    free(e);
    xattn_module_free(c);

    /* heads from the talking-heads weight: no assumption announced */
    const char *a[] = {"dim", "8", "heads", "4", "dim_head", "3", "talking_heads", "True"};
    c = create("bidir", 4, a, 4);
    if (!c) return;
    f = tmp_path("talk");
    save_plain(c, f);
    CHECK_OK(xattn_st_open(f, &st));
    unlink(f);
    CHECK_OK(open_with(st, NULL, NULL, &m));
    if (m) {
        const char *src = "";
        CHECK(!strcmp(config_value(m, "heads", &src), "4") && !strcmp(src, "shape"));
        CHECK(xattn_module_warnings(m)[0] == '\0');
        xattn_module_free(m);
    }
    CHECK_FAIL(open_with(st, "heads", "2", &m), XATTN_ERR_SHAPE);
    has("heads argument 2 disagrees with tensor 'talking_heads.weight' of shape (4, 4, 1, 1)");
    CHECK_FAIL(open_with(st, "talking_heads", "False", &m), XATTN_ERR_SHAPE);
    has("disagrees with the presence of 'talking_heads.weight'");
    xattn_st_close(st);
    xattn_module_free(c);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("test_bidir_core:\n");
    defaults();
    round_trip();
    init_distribution();
    named_vs_typed("bidir_return_attn_talking.safetensors", 1);
    named_vs_typed("bidir_both_masks_full.safetensors", 1);
    named_vs_typed("bidir_bias_b1ij.safetensors", 0);
    named_vs_typed("bidir_tf_talking_masks_bias.safetensors", 0);
    named_vs_typed("bidir_tf_final_norms_ctxdim.safetensors", 0);
    settled();
    return tu_finish("test_bidir_core");
}
