/*
 * The module core through the public registry: kinds, create / save / reload (tensor data
 * byte-identical), the initialisation's bounds and moments against the reference's formulas,
 * strict option and metadata parsing, options that contradict shapes, forward by named arrays
 * against the typed API, contexts (threads, workspace limit and trim), the head scale, and one
 * module run from several threads at once.
 */
#include "testutil.h"
#include "core/core.h"

#include <math.h>
#include <pthread.h>
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

static void kinds(void)
{
    CHECK(xattn_kind_count() >= 2);
    int conv = 0, mutual = 0;
    for (size_t i = 0; i < xattn_kind_count(); i++) {
        xattn_kind_desc k;
        CHECK_OK(xattn_kind_info(i, &k));
        conv |= !strcmp(k.name, "conv2d-cross");
        mutual |= !strcmp(k.name, "mutual");
    }
    CHECK(conv && mutual);
    xattn_module *m = NULL;
    CHECK_FAIL(xattn_module_create("nope", NULL, 0, 0, &m), XATTN_ERR_ARG);
    has("(kinds: bidir, ");
    has("conv2d-cross)");
    CHECK(m == NULL);
}

static xattn_module *create_conv(uint64_t seed, const char *in, const char *out, const char *in2,
                                 const char *qk)
{
    xattn_option o[4] = {
        {"in_channels", in}, {"out_channels", out}, {"in_channels2", in2}, {"qk_channels", qk}};
    xattn_module *m = NULL;
    CHECK_OK(xattn_module_create("conv2d-cross", o, in2 ? 4 : 2, seed, &m));
    return m;
}

static void round_trip(void)
{
    char f1[128], f2[128];
    snprintf(f1, sizeof f1, "/tmp/test_registry_%ld_a.safetensors", (long)getpid());
    snprintf(f2, sizeof f2, "/tmp/test_registry_%ld_b.safetensors", (long)getpid());
    xattn_module *m = create_conv(11, "5", "7", "3", "4");
    if (!m) return;
    CHECK_OK(xattn_module_save(m, f1));
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(f1, &st));
    xattn_module *r = NULL;
    CHECK_OK(xattn_module_open(st, NULL, &r));
    if (!r) return;
    CHECK(!strcmp(xattn_module_kind(r), "conv2d-cross"));
    CHECK(!strcmp(xattn_st_meta_get(st, "xattn_kind"), "conv2d-cross"));
    CHECK(xattn_module_param_count(r) == xattn_module_param_count(m));
    for (size_t i = 0; i < xattn_module_param_count(m); i++) {
        xattn_param_desc a, b;
        CHECK_OK(xattn_module_param(m, i, &a));
        CHECK_OK(xattn_module_param(r, i, &b));
        CHECK(!strcmp(a.name, b.name) && a.ndim == b.ndim);
        CHECK(a.data && b.data && !memcmp(a.data, b.data, (size_t)tu_param_numel(&a) * 4));
    }
    for (size_t i = 0; i < xattn_module_config_count(r); i++) {
        xattn_config_entry a, b;
        CHECK_OK(xattn_module_config(m, i, &a));
        CHECK_OK(xattn_module_config(r, i, &b));
        CHECK(!strcmp(a.value, b.value));
    }
    CHECK_OK(xattn_module_save(r, f2));
    xattn_safetensors *st2 = NULL;
    CHECK_OK(xattn_st_open(f2, &st2));
    CHECK(xattn_st_count(st2) == xattn_st_count(st));
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
    xattn_st_close(st);
    unlink(f1);
    unlink(f2);
    xattn_module_free(r);
    xattn_module_free(m);
}

static void init_distribution(void)
{
    xattn_module *m = create_conv(5, "96", "128", "64", "80");
    xattn_module *m2 = create_conv(6, "96", "128", "64", "80");
    xattn_module *m3 = create_conv(5, "96", "128", "64", "80");
    if (!m || !m2 || !m3) return;
    xattn_param_desc p, q, r;
    /* weights: kaiming_uniform(a=sqrt(5)) -> b = 1/sqrt(fan_in); biases: 1/sqrt(fan_in) */
    tu_check_uniform(m, "conv_query.weight", 1 / sqrt(96.0));
    tu_check_uniform(m, "conv_key.weight", 1 / sqrt(64.0));
    tu_check_uniform(m, "conv_value.weight", 1 / sqrt(64.0));
    tu_check_uniform(m, "conv_value.bias", 1 / sqrt(64.0));
    tu_check_uniform(m, "conv_query.bias", 1 / sqrt(96.0));
    tu_param(m, "conv_query.weight", &p);
    tu_param(m2, "conv_query.weight", &q);
    tu_param(m3, "conv_query.weight", &r);
    CHECK(memcmp(p.data, q.data, (size_t)tu_param_numel(&p) * 4) != 0); /* the seed matters   */
    CHECK(memcmp(p.data, r.data, (size_t)tu_param_numel(&p) * 4) == 0); /* and decides it all */
    /* bias=False: no bias tensors */
    xattn_option o[3] = {{"in_channels", "4"}, {"out_channels", "4"}, {"bias", "False"}};
    xattn_module *nb = NULL;
    CHECK_OK(xattn_module_create("conv2d-cross", o, 3, 1, &nb));
    for (size_t i = 0; nb && i < xattn_module_param_count(nb); i++) {
        CHECK_OK(xattn_module_param(nb, i, &p));
        CHECK((strstr(p.name, "bias") != NULL) == (p.data == NULL));
    }
    xattn_module_free(nb);
    xattn_module_free(m);
    xattn_module_free(m2);
    xattn_module_free(m3);
}

static void strict_options(void)
{
    xattn_module *m = NULL;
    xattn_option bad_int[2] = {{"in_channels", "4x"}, {"out_channels", "4"}};
    CHECK_FAIL(xattn_module_create("conv2d-cross", bad_int, 2, 0, &m), XATTN_ERR_ARG);
    has("option 'in_channels' is \"4x\", not a positive integer");
    xattn_option neg[2] = {{"in_channels", "-4"}, {"out_channels", "4"}};
    CHECK_FAIL(xattn_module_create("conv2d-cross", neg, 2, 0, &m), XATTN_ERR_ARG);
    xattn_option bad_bool[3] = {{"in_channels", "4"}, {"out_channels", "4"}, {"bias", "maybe"}};
    CHECK_FAIL(xattn_module_create("conv2d-cross", bad_bool, 3, 0, &m), XATTN_ERR_ARG);
    has("not True or False");
    xattn_option bad_real[3] = {{"in_channels", "4"}, {"out_channels", "4"}, {"scale", "nan"}};
    CHECK_FAIL(xattn_module_create("conv2d-cross", bad_real, 3, 0, &m), XATTN_ERR_ARG);
    has("option 'scale' is \"nan\", not a number");
    xattn_option unknown[3] = {{"in_channels", "4"}, {"out_channels", "4"}, {"heads", "2"}};
    CHECK_FAIL(xattn_module_create("conv2d-cross", unknown, 3, 0, &m), XATTN_ERR_ARG);
    has("unknown option 'heads' (options: in_channels, out_channels");
    xattn_option twice[3] = {{"in_channels", "4"}, {"out_channels", "4"}, {"in_channels", "4"}};
    CHECK_FAIL(xattn_module_create("conv2d-cross", twice, 3, 0, &m), XATTN_ERR_ARG);
    has("given twice");
    xattn_option missing[1] = {{"in_channels", "4"}};
    CHECK_FAIL(xattn_module_create("conv2d-cross", missing, 1, 0, &m), XATTN_ERR_NOT_FOUND);
    has("out_channels is not given");
    CHECK(m == NULL);

    /* metadata: the same strictness and wording */
    int64_t parse;
    double real;
    int b;
    CHECK(xa_parse_int("12", &parse) && parse == 12);
    CHECK(!xa_parse_int("12 ", &parse) && !xa_parse_int("", &parse) &&
          !xa_parse_int("1e3", &parse));
    CHECK(xa_parse_real("1e-05", &real) && real == 1e-05);
    CHECK(!xa_parse_real("0x10", &real) && !xa_parse_real("inf", &real) &&
          !xa_parse_real(" 1", &real));
    CHECK(xa_parse_bool("True", &b) && b == 1 && xa_parse_bool("0", &b) && b == 0);
    CHECK(!xa_parse_bool("yes", &b));
    char f[128];
    snprintf(f, sizeof f, "/tmp/test_registry_%ld_m.safetensors", (long)getpid());
    xattn_module *c = create_conv(1, "3", "2", NULL, NULL);
    if (!c) return;
    xattn_param_desc p;
    xattn_st_entry e[6];
    size_t n = 0;
    for (size_t i = 0; i < xattn_module_param_count(c); i++) {
        CHECK_OK(xattn_module_param(c, i, &p));
        e[n].name = p.name;
        e[n].dtype = XATTN_F32;
        e[n].ndim = p.ndim;
        memcpy(e[n].shape, p.shape, sizeof p.shape);
        e[n].data = p.data;
        n++;
    }
    const char *meta[] = {"scale", "abc"};
    CHECK_OK(xattn_st_save(f, e, n, meta, 1));
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(f, &st));
    CHECK_FAIL(xattn_module_open(st, NULL, &m), XATTN_ERR_FORMAT);
    has("__metadata__ 'scale' is \"abc\", not a number");
    xattn_st_close(st);
    /* an option that contradicts the shapes */
    CHECK_OK(xattn_st_save(f, e, n, NULL, 0));
    CHECK_OK(xattn_st_open(f, &st));
    xattn_option o[1] = {{"in_channels", "9"}};
    xattn_open_opts oo;
    memset(&oo, 0, sizeof oo);
    oo.options = o;
    oo.n_options = 1;
    CHECK_FAIL(xattn_module_open(st, &oo, &m), XATTN_ERR_SHAPE);
    has("option in_channels = 9 disagrees with the shape of 'conv_query.weight'");
    /* scale=None is the reference's own default and no assumption: nothing announced */
    CHECK_OK(xattn_module_open(st, NULL, &m));
    CHECK(m && strstr(xattn_module_warnings(m), "scale") == NULL); /* None: the seed's own */
    xattn_module_free(m);
    xattn_st_close(st);
    unlink(f);
    xattn_module_free(c);
}

/* Every kind with parameters (mutual has none), every parameter, every dimension: a file in which
 * that dimension is 0 (a Linear with no outputs, a head of width 0, ...) is refused when loaded,
 * with a message; a zero width must never load as a module whose configuration has a 0 in it. */
static void zero_dims(void)
{
    static const struct {
        const char *kind;
        xattn_option o[4];
        size_t n;
    } k[] = {
        {"bidir", {{"dim", "4"}, {"heads", "2"}, {"dim_head", "2"}, {"talking_heads", "True"}}, 4},
        {"bidir-transformer", {{"dim", "4"}, {"depth", "1"}, {"heads", "2"}, {"dim_head", "2"}}, 4},
        {"mha",
         {{"embed_dim", "4"}, {"num_heads", "2"}, {"kdim", "3"}, {"add_bias_kv", "True"}},
         4},
        {"attention", {{"query_dim", "4"}, {"heads", "2"}, {"dim_head", "2"}, {"bias", "True"}}, 4},
        {"attention", {{"query_dim", "5"}, {"heads", "2"}, {"dim_head", "3"}}, 3},
        {"joint", {{"d_model", "4"}, {"nhead", "2"}, {"dim_feedforward", "6"}}, 3},
        {"interlaced", {{"embed_dim", "10"}, {"depth", "1"}, {"num_heads", "2"}}, 3},
        {"multiview", {{"views", "2"}, {"dims", "4,8"}, {"heads", "2"}, {"hiddens", "6,8"}}, 4},
        {"hallo-audio", {{"dim", "4"}, {"cross_attention_dim", "3"}, {"dim_head", "2"}}, 3},
        {"bert-decoder", {{"hidden_size", "4"}, {"num_attention_heads", "2"}}, 2},
        {"conv2d-cross", {{"in_channels", "3"}, {"out_channels", "4"}}, 2},
    };
    char f[128], g[128];
    snprintf(f, sizeof f, "/tmp/test_registry_%ld_z.safetensors", (long)getpid());
    snprintf(g, sizeof g, "/tmp/test_registry_%ld_y.safetensors", (long)getpid());
    for (size_t t = 0; t < sizeof k / sizeof *k; t++) {
        xattn_module *m = NULL;
        CHECK_OK(xattn_module_create(k[t].kind, k[t].o, k[t].n, 3, &m));
        if (!m) {
            fprintf(stderr, "zero_dims: %s: %s\n", k[t].kind, xattn_last_error());
            continue;
        }
        CHECK_OK(xattn_module_save(m, f));
        xattn_safetensors *st = NULL;
        CHECK_OK(xattn_st_open(f, &st));
        if (!st) {
            xattn_module_free(m);
            continue;
        }
        const size_t n = xattn_st_count(st), nm = xattn_st_meta_count(st);
        xattn_st_entry *e = calloc(n, sizeof *e);
        xattn_array *a = calloc(n, sizeof *a);
        int64_t *keep = calloc(n * XATTN_MAX_DIMS, sizeof *keep);
        const char **kv = calloc(2 * nm + 1, sizeof *kv);
        for (size_t i = 0; i < nm; i++) {
            kv[2 * i] = xattn_st_meta_key(st, i);
            kv[2 * i + 1] = xattn_st_meta_value(st, i);
        }
        for (size_t i = 0; i < n; i++) {
            CHECK_OK(xattn_st_get(st, xattn_st_name(st, i), XATTN_F32, &a[i]));
            e[i].name = xattn_st_name(st, i);
            e[i].dtype = XATTN_F32;
            e[i].ndim = a[i].ndim;
            memcpy(e[i].shape, a[i].shape, sizeof e[i].shape);
            e[i].data = a[i].data;
        }
        /* one dimension of one tensor at a time; then every dimension of one size in every
         * tensor at once (a field set to 0 consistently, as in a forged file), with the saved
         * __metadata__ and without it (nothing then pins the widths the shapes give) */
        int loaded = 0, tried = 0;
        for (size_t i = 0; i < n; i++) {
            for (int d = 0; d < e[i].ndim; d++) {
                for (int mode = 0; mode < 3; mode++) {
                    const int all = mode > 0;
                    const int64_t v = e[i].shape[d];
                    for (size_t j = 0; j < n; j++) {
                        memcpy(keep + j * XATTN_MAX_DIMS, e[j].shape, sizeof e[j].shape);
                        for (int q = 0; q < e[j].ndim; q++)
                            if ((j == i && q == d) || (all && e[j].shape[q] == v))
                                e[j].shape[q] = 0;
                    }
                    CHECK_OK(xattn_st_save(g, e, n, kv, mode == 2 ? 0 : nm));
                    for (size_t j = 0; j < n; j++)
                        memcpy(e[j].shape, keep + j * XATTN_MAX_DIMS, sizeof e[j].shape);
                    xattn_safetensors *z = NULL;
                    CHECK_OK(xattn_st_open(g, &z));
                    xattn_module *r = NULL;
                    tried++;
                    if (z && xattn_module_open(z, NULL, &r) == XATTN_OK) {
                        loaded++;
                        fprintf(stderr, "zero_dims: %s loads (as %s) with %s dim %d = 0\n",
                                k[t].kind, xattn_module_kind(r), e[i].name, d);
                    } else {
                        CHECK(r == NULL && xattn_last_error()[0] != '\0');
                    }
                    xattn_module_free(r);
                    xattn_st_close(z);
                }
            }
        }
        CHECK(tried > 0 && loaded == 0);
        for (size_t i = 0; i < n; i++) xattn_array_free(&a[i]);
        free(a);
        free(e);
        free(kv);
        free(keep);
        xattn_st_close(st);
        xattn_module_free(m);
    }
    unlink(f);
    unlink(g);
}

static void head_scale(void)
{
    int ok = 1;
    for (int64_t dh = 1; dh <= 1024; dh++) ok &= xa_head_scale(dh) == (float)pow((double)dh, -0.5);
    CHECK(ok);
    CHECK(xa_head_scale(64) == 0.125f);
}

typedef struct job {
    const xattn_module *m;
    xattn_ctx *ctx;
    float *x1, *x2, *out;
    int64_t B, C1, C2, H, W;
    xattn_status s;
} job;

static void *run_job(void *arg)
{
    job *j = arg;
    xattn_tensor in[2] = {{"x1", XATTN_F32, 4, {j->B, j->C1, j->H, j->W}, j->x1},
                          {"x2", XATTN_F32, 4, {j->B, j->C2, j->W, j->H}, j->x2}};
    xattn_tensor out[1] = {{"out", XATTN_F32, 0, {0}, NULL}};
    j->s = xattn_module_plan(j->m, in, 2, out, 1);
    if (j->s) return NULL;
    out[0].data = j->out;
    j->s = xattn_module_forward(j->ctx, j->m, in, 2, out, 1);
    return NULL;
}

static void named_forward(void)
{
    const int64_t B = 2, C1 = 5, C2 = 3, Cv = 6, H = 7, W = 9;
    xattn_module *m = create_conv(3, "5", "6", "3", "4");
    if (!m) return;
    float *x1 = malloc(sizeof(float) * B * C1 * H * W),
          *x2 = malloc(sizeof(float) * B * C2 * H * W);
    const int64_t no = B * Cv * H * W;
    float *ref = calloc((size_t)no, 4), *outs[4];
    for (int64_t i = 0; i < B * C1 * H * W; i++) x1[i] = (float)sin(0.37 * (double)i);
    for (int64_t i = 0; i < B * C2 * H * W; i++) x2[i] = (float)cos(0.21 * (double)i);
    /* the typed API on the same module (its parameters) */
    xattn_param_desc p;
    tu_param(m, "conv_query.weight", &p);
    xattn_tensor in[2] = {{"x1", XATTN_F32, 4, {B, C1, H, W}, x1},
                          {"x2", XATTN_F32, 4, {B, C2, W, H}, x2}};
    xattn_tensor out[1] = {{"out", XATTN_F32, 0, {0}, NULL}};
    CHECK_OK(xattn_module_plan(m, in, 2, out, 1));
    CHECK(out[0].ndim == 4 && out[0].shape[0] == B && out[0].shape[1] == Cv &&
          out[0].shape[2] == H && out[0].shape[3] == W);
    out[0].data = ref;
    CHECK_OK(xattn_module_forward(NULL, m, in, 2, out, 1));
    /* the same through a file and the typed loader */
    char f[128];
    snprintf(f, sizeof f, "/tmp/test_registry_%ld_f.safetensors", (long)getpid());
    CHECK_OK(xattn_module_save(m, f));
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(f, &st));
    unlink(f);
    xattn_conv2d_cross *t = NULL;
    CHECK_OK(xattn_conv2d_cross_load(st, "", &t));
    float *typed = calloc((size_t)no, 4);
    xattn_conv2d_cross_inputs ti = {.B = B, .H1 = H, .W1 = W, .H2 = W, .W2 = H, .x1 = x1, .x2 = x2};
    CHECK_OK(xattn_conv2d_cross_forward(t, &ti, typed));
    CHECK(!memcmp(typed, ref, (size_t)no * 4));
    xattn_conv2d_cross_free(t);
    xattn_st_close(st);
    free(typed);

    /* shape errors name the input */
    xattn_tensor bad[2] = {{"x1", XATTN_F32, 4, {B, C1 + 1, H, W}, x1},
                           {"x2", XATTN_F32, 4, {B, C2, W, H}, x2}};
    CHECK_FAIL(xattn_module_forward(NULL, m, bad, 2, out, 1), XATTN_ERR_SHAPE);
    has("input 'x1' has shape (2, 6, 7, 9)");
    CHECK_FAIL(xattn_module_forward(NULL, m, in, 1, out, 1), XATTN_ERR_ARG);
    has("needs the input 'x2'");
    xattn_tensor unk[1] = {{"y", XATTN_F32, 1, {1}, x1}};
    CHECK_FAIL(xattn_module_forward(NULL, m, unk, 1, out, 1), XATTN_ERR_ARG);
    has("inputs: x1, x2");

    /* contexts: threads 1 and 2 and four threads sharing one module */
    xattn_ctx *c1 = NULL, *c2 = NULL;
    CHECK_OK(xattn_ctx_new(&c1));
    CHECK_OK(xattn_ctx_new(&c2));
    CHECK_OK(xattn_ctx_set_threads(c1, 1));
    CHECK_OK(xattn_ctx_set_threads(c2, 2));
    CHECK(xattn_ctx_get_threads(c1) == 1);
    CHECK_FAIL(xattn_ctx_set_threads(c1, XATTN_MAX_THREADS + 1), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_ctx_set_isa(c1, "mmx"), XATTN_ERR_ARG);
    CHECK_OK(xattn_ctx_set_isa(c1, "scalar"));
    CHECK(!strcmp(xattn_ctx_get_isa(c1), "scalar"));
    CHECK_OK(xattn_ctx_set_isa(c1, "auto"));
    job jobs[4];
    pthread_t th[4];
    for (int k = 0; k < 4; k++) {
        outs[k] = calloc((size_t)no, 4);
        jobs[k] = (job){m, k % 2 ? c2 : c1, x1, x2, outs[k], B, C1, C2, H, W, XATTN_OK};
        pthread_create(&th[k], NULL, run_job, &jobs[k]);
    }
    for (int k = 0; k < 4; k++) {
        pthread_join(th[k], NULL);
        CHECK(jobs[k].s == XATTN_OK);
        CHECK(!memcmp(outs[k], ref, (size_t)no * 4));
        free(outs[k]);
    }
    CHECK_OK(xattn_ctx_set_workspace_limit(c2, 0));
    CHECK(xattn_ctx_workspace_cached(c2) == 0);
    xattn_ctx_trim(c1);
    CHECK(xattn_ctx_workspace_cached(c1) == 0);
    xattn_ctx_free(c1);
    xattn_ctx_free(c2);
    xattn_ctx_free(xattn_ctx_default()); /* a no-op */

    /* mutual by names against the typed call */
    xattn_module *mu = NULL;
    CHECK_OK(xattn_module_create("mutual", NULL, 0, 0, &mu));
    float *o1 = calloc(2 * 7 * 5, 4), *o2 = calloc(2 * 7 * 5, 4);
    xattn_tensor mi[2] = {{"a", XATTN_F32, 3, {2, 7, 5}, x1}, {"b", XATTN_F32, 3, {2, 7, 5}, x2}};
    xattn_tensor mo[1] = {{"out", XATTN_F32, 3, {2, 7, 5}, o1}};
    CHECK_OK(xattn_module_forward(NULL, mu, mi, 2, mo, 1));
    CHECK_OK(xattn_mutual(x1, x2, 2, 7, 5, o2));
    CHECK(!memcmp(o1, o2, 2 * 7 * 5 * 4));
    free(o1);
    free(o2);
    xattn_module_free(mu);
    free(x1);
    free(x2);
    free(ref);
    xattn_module_free(m);
}

int main(void)
{
    printf("test_registry:\n");
    kinds();
    round_trip();
    init_distribution();
    strict_options();
    zero_dims();
    head_scale();
    named_forward();
    return tu_finish("test_registry");
}
