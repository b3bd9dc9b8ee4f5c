/*
 * The multiview module on the module core: create -> save -> reload (parameters and forward
 * identical), an all-zero options struct gives the reference's defaults, the initialisation's
 * bounds and moments against MultiscaleMultiview's own (nn.MultiheadAttention,
 * nn.Linear, nn.LayerNorm), the heads list (options, __metadata__, per-stage fields, wording),
 * and the named forward against the typed one on a fixture.
 */
#include "testutil.h"

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

static const char *config(const xattn_module *m, const char *name)
{
    xattn_config_entry e;
    for (size_t i = 0; i < xattn_module_config_count(m); i++)
        if (!xattn_module_config(m, i, &e) && !strcmp(e.name, name)) return e.value;
    return "";
}

static xattn_module *create(uint64_t seed, const char *views, const char *dims, const char *heads,
                            const char *hiddens, const char *gelu, const char *eps)
{
    xattn_option o[6] = {{"views", views},     {"dims", dims}, {"heads", heads},
                         {"hiddens", hiddens}, {"gelu", gelu}, {"eps", eps}};
    xattn_module *m = NULL;
    CHECK_OK(xattn_module_create("multiview", o, gelu ? 6 : 4, seed, &m));
    return m;
}

static xattn_status mv_forward(const xattn_multiview *m, int64_t B, const int64_t *tokens,
                               const float *const *x, float *const *out)
{
    xattn_multiview_config c;
    xattn_multiview_get_config(m, &c);
    const xattn_multiview_inputs in = {.B = B, .n_views = c.views, .tokens = tokens, .x = x};
    const xattn_multiview_outputs o = {.out = out};
    return xattn_multiview_forward(NULL, m, &in, &o);
}

static xattn_multiview *typed_load(const char *path, xattn_safetensors **st)
{
    xattn_multiview *t = NULL;
    CHECK_OK(xattn_st_open(path, st));
    if (*st) CHECK_OK(xattn_multiview_load(*st, "", NULL, &t));
    return t;
}

/* Runs a 3-view module of widths c0 -> cl on fixed inputs; out[v] (B, N_v', cl). */
static void run3(const xattn_multiview *m, int64_t c0, float *out[3])
{
    const int64_t B = 2, tokens[3] = {9, 4, 6};
    float *x[3];
    for (int v = 0; v < 3; v++) {
        x[v] = malloc(sizeof(float) * (size_t)(B * tokens[v] * c0));
        for (int64_t i = 0; i < B * tokens[v] * c0; i++) x[v][i] = (float)sin(0.3 * (double)i + v);
    }
    CHECK_OK(mv_forward(m, B, tokens, (const float *const *)x, out));
    for (int v = 0; v < 3; v++) free(x[v]);
}

static void round_trip(void)
{
    char f1[128], f2[128];
    snprintf(f1, sizeof f1, "/tmp/test_mv_core_%ld_a.safetensors", (long)getpid());
    snprintf(f2, sizeof f2, "/tmp/test_mv_core_%ld_b.safetensors", (long)getpid());
    xattn_module *m = create(11, "3", "8,16", "2,4", "16,24", "tanh", "1e-06");
    if (!m) return;
    CHECK_OK(xattn_module_save(m, f1));
    xattn_safetensors *st = NULL, *st2 = NULL;
    CHECK_OK(xattn_st_open(f1, &st));
    xattn_open_opts oo = {.kind = "multiview"};
    xattn_module *r = NULL;
    if (st) CHECK_OK(xattn_module_open(st, &oo, &r));
    if (!r) return;
    CHECK(xattn_module_param_count(r) == xattn_module_param_count(m));
    for (size_t i = 0; i < xattn_module_param_count(m); i++) {
        xattn_param_desc a, b;
        CHECK_OK(xattn_module_param(m, i, &a));
        CHECK_OK(xattn_module_param(r, i, &b));
        CHECK(!strcmp(a.name, b.name) && a.ndim == b.ndim);
        CHECK(a.data && b.data && !memcmp(a.data, b.data, (size_t)tu_param_numel(&a) * 4));
    }
    CHECK(xattn_module_config_count(r) == xattn_module_config_count(m));
    for (size_t i = 0; i < xattn_module_config_count(m); i++) {
        xattn_config_entry a, b;
        CHECK_OK(xattn_module_config(m, i, &a));
        CHECK_OK(xattn_module_config(r, i, &b));
        CHECK(!strcmp(a.name, b.name) && !strcmp(a.value, b.value));
    }
    CHECK(!strcmp(config(r, "heads.1"), "4") && !strcmp(config(r, "gelu"), "tanh"));
    CHECK(xattn_module_warnings(r)[0] == '\0'); /* everything was saved */
    CHECK_OK(xattn_module_save(r, f2));
    /* the typed loader on both files: the same configuration and the same forward, bitwise */
    xattn_safetensors *st1 = NULL;
    xattn_multiview *t1 = typed_load(f1, &st1), *t2 = typed_load(f2, &st2);
    if (t1 && t2) {
        xattn_multiview_config c1, c2;
        xattn_multiview_get_config(t1, &c1);
        xattn_multiview_get_config(t2, &c2);
        CHECK(c1.views == 3 && c1.stages == 2 && c1.dim[1] == 16 && c1.heads[0] == 2 &&
              c1.heads[1] == 4 && c1.mlp_hidden[1] == 24 && c1.gelu_tanh == 1 && c1.eps == 1e-6f);
        CHECK(!memcmp(&c1, &c2, sizeof c1));
        float *o1[3], *o2[3];
        const int64_t n[3] = {2 * 4 * 16, 2 * 2 * 16, 2 * 3 * 16};
        for (int v = 0; v < 3; v++) {
            o1[v] = calloc((size_t)n[v], 4);
            o2[v] = calloc((size_t)n[v], 4);
        }
        run3(t1, 8, o1);
        run3(t2, 8, o2);
        for (int v = 0; v < 3; v++) {
            CHECK(!memcmp(o1[v], o2[v], (size_t)n[v] * 4));
            CHECK(isfinite(o1[v][0]) && isfinite(o1[v][n[v] - 1]));
            free(o1[v]);
            free(o2[v]);
        }
    }
    xattn_multiview_free(t1);
    xattn_multiview_free(t2);
    xattn_st_close(st);
    xattn_st_close(st1);
    xattn_st_close(st2);
    unlink(f1);
    unlink(f2);
    xattn_module_free(r);
    xattn_module_free(m);
}

static void init_distribution(void)
{
    const int64_t C0 = 64, C1 = 96, H0 = 256, H1 = 160;
    xattn_module *m = create(5, "2", "64,96", "4,4", "256,160", NULL, NULL);
    if (!m) return;
    char nm[128];
    static const char *const blocks[2][3] = {{"self_attn", "norm1", "mlp"},
                                             {"cross_attn", "cross_norm_q", "cross_mlp"}};
    for (int s = 0; s < 2; s++)
        for (int v = 0; v < 2; v++) {
            const int64_t C = s ? C1 : C0, H = s ? H1 : H0;
            for (int k = 0; k < 2; k++) {
#define NM(fmt) (snprintf(nm, sizeof nm, "stages.%d.views.%d." fmt, s, v, blocks[k][0]), nm)
                /* nn.MultiheadAttention._reset_parameters */
                tu_check_uniform(m, NM("%s.in_proj_weight"), sqrt(6.0 / (double)(C + 3 * C)));
                tu_check_const(m, NM("%s.in_proj_bias"), 0.0f);
                tu_check_uniform(m, NM("%s.out_proj.weight"), 1 / sqrt((double)C));
                tu_check_const(m, NM("%s.out_proj.bias"), 0.0f);
#undef NM
                /* nn.Linear: kaiming_uniform(a=sqrt(5)) weights, U(+-1/sqrt(fan_in)) biases */
                snprintf(nm, sizeof nm, "stages.%d.views.%d.%s.0.weight", s, v, blocks[k][2]);
                tu_check_uniform(m, nm, 1 / sqrt((double)C));
                snprintf(nm, sizeof nm, "stages.%d.views.%d.%s.0.bias", s, v, blocks[k][2]);
                tu_check_uniform(m, nm, 1 / sqrt((double)C));
                snprintf(nm, sizeof nm, "stages.%d.views.%d.%s.2.weight", s, v, blocks[k][2]);
                tu_check_uniform(m, nm, 1 / sqrt((double)H));
                snprintf(nm, sizeof nm, "stages.%d.views.%d.%s.2.bias", s, v, blocks[k][2]);
                tu_check_uniform(m, nm, 1 / sqrt((double)H));
                snprintf(nm, sizeof nm, "stages.%d.views.%d.%s.weight", s, v, blocks[k][1]);
                tu_check_const(m, nm, 1.0f);
                snprintf(nm, sizeof nm, "stages.%d.views.%d.%s.bias", s, v, blocks[k][1]);
                tu_check_const(m, nm, 0.0f);
            }
        }
    for (int v = 0; v < 2; v++) {
        snprintf(nm, sizeof nm, "stages.1.views.%d.expand.weight", v);
        tu_check_uniform(m, nm, 1 / sqrt((double)C0));
        snprintf(nm, sizeof nm, "stages.1.views.%d.expand.bias", v);
        tu_check_uniform(m, nm, 1 / sqrt((double)C0));
    }
    xattn_param_desc p;
    for (size_t i = 0; i < xattn_module_param_count(m); i++) {
        CHECK_OK(xattn_module_param(m, i, &p));
        CHECK(p.data != NULL && strncmp(p.name, "stages.0.views.0.expand", 23)); /* all created */
    }
    xattn_module_free(m);
}

/* A copy of fixture `name`'s module tensors with the given __metadata__. */
static xattn_safetensors *with_meta(const char *name, const char **meta, size_t n_meta,
                                    const char *path)
{
    xattn_safetensors *src = NULL, *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(name), &src));
    if (!src) return NULL;
    size_t n = xattn_st_count(src), k = 0;
    xattn_st_entry *e = calloc(n, sizeof *e);
    xattn_array *a = calloc(n, sizeof *a);
    for (size_t i = 0; i < n; i++) {
        const char *nm = xattn_st_name(src, i);
        if (strncmp(nm, "stages.", 7)) continue;
        CHECK_OK(xattn_st_get(src, nm, XATTN_F32, &a[k]));
        e[k] = (xattn_st_entry){nm, XATTN_F32, a[k].ndim, {0}, a[k].data};
        memcpy(e[k].shape, a[k].shape, sizeof e[k].shape);
        k++;
    }
    CHECK_OK(xattn_st_save(path, e, k, meta, n_meta));
    CHECK_OK(xattn_st_open(path, &st));
    for (size_t i = 0; i < k; i++) xattn_array_free(&a[i]);
    free(a);
    free(e);
    xattn_st_close(src);
    return st;
}

static void zero_options(void)
{
    char f[128];
    snprintf(f, sizeof f, "/tmp/test_mv_core_%ld_z.safetensors", (long)getpid());
    const char *meta[] = {"heads", "2,4"};
    xattn_safetensors *st = with_meta("multiview_v3_s2_odd.safetensors", meta, 1, f);
    unlink(f);
    if (!st) return;
    xattn_multiview_opts zero;
    memset(&zero, 0, sizeof zero);
    const xattn_multiview_opts given = {.eps = 1e-5, .gelu = XATTN_MULTIVIEW_GELU_ERF};
    xattn_multiview *a = NULL, *b = NULL, *c = NULL;
    CHECK_OK(xattn_multiview_load(st, "", &zero, &a));
    CHECK_OK(xattn_multiview_load(st, "", NULL, &b));
    CHECK_OK(xattn_multiview_load(st, "", &given, &c));
    if (a && b && c) {
        xattn_multiview_config ca, cb, cc;
        xattn_multiview_get_config(a, &ca);
        xattn_multiview_get_config(b, &cb);
        xattn_multiview_get_config(c, &cc);
        /* MultiscaleMultiview(eps=1e-5, gelu="none"), heads from the file */
        CHECK(ca.eps == 1e-5f && ca.gelu_tanh == 0 && ca.heads[0] == 2 && ca.heads[1] == 4);
        CHECK(!memcmp(&ca, &cb, sizeof ca) && !memcmp(&ca, &cc, sizeof ca));
    }
    /* the assumed defaults are announced */
    xattn_open_opts oo = {.kind = "multiview"};
    xattn_module *r = NULL;
    CHECK_OK(xattn_module_open(st, &oo, &r));
    CHECK(r && strstr(xattn_module_warnings(r), "eps: not given") &&
          strstr(xattn_module_warnings(r), "gelu: not given"));
    /* a new module: the reference's defaults for everything but the required lists */
    xattn_module *n = create(1, "2", "8", "2", "16", NULL, NULL);
    CHECK(n && !strcmp(config(n, "eps"), "1e-05") && !strcmp(config(n, "gelu"), "erf"));
    xattn_module_free(n);
    xattn_module_free(r);
    xattn_multiview_free(a);
    xattn_multiview_free(b);
    xattn_multiview_free(c);
    xattn_st_close(st);
}

static void heads_lists(void)
{
    char f[128];
    snprintf(f, sizeof f, "/tmp/test_mv_core_%ld_h.safetensors", (long)getpid());
    xattn_multiview *m = NULL;
    const char *bad[] = {"heads", "2,,4"};
    xattn_safetensors *st = with_meta("multiview_v3_s2_odd.safetensors", bad, 1, f);
    CHECK_FAIL(xattn_multiview_load(st, "", NULL, &m), XATTN_ERR_FORMAT);
    has("__metadata__ 'heads' is \"2,,4\", not a positive integer or a comma-separated list");
    xattn_st_close(st);
    const char *three[] = {"heads", "2,4,4"};
    st = with_meta("multiview_v3_s2_odd.safetensors", three, 1, f);
    CHECK_FAIL(xattn_multiview_load(st, "", NULL, &m), XATTN_ERR_FORMAT);
    has("expected one positive integer or 2 comma-separated ones");
    xattn_st_close(st);
    /* per-stage metadata (as xattn saves it); with a list it must agree */
    const char *per[] = {"heads.0", "2", "heads.1", "4"};
    st = with_meta("multiview_v3_s2_odd.safetensors", per, 2, f);
    CHECK_OK(xattn_multiview_load(st, "", NULL, &m));
    xattn_multiview_config c;
    xattn_multiview_get_config(m, &c);
    CHECK(m && c.heads[0] == 2 && c.heads[1] == 4);
    xattn_multiview_free(m);
    m = NULL;
    xattn_st_close(st);
    const char *clash[] = {"heads.0", "2", "heads.1", "4", "heads", "2,8"};
    st = with_meta("multiview_v3_s2_odd.safetensors", clash, 3, f);
    CHECK_FAIL(xattn_multiview_load(st, "", NULL, &m), XATTN_ERR_FORMAT);
    has("__metadata__ 'heads.1' = 4 disagrees with __metadata__ 'heads' (8 for stage 1)");
    /* options win over metadata; option text is parsed strictly */
    xattn_option o1[1] = {{"heads", "1"}};
    xattn_open_opts oo = {.kind = "multiview", .options = o1, .n_options = 1};
    xattn_module *r = NULL;
    CHECK_OK(xattn_module_open(st, &oo, &r));
    CHECK(r && !strcmp(config(r, "heads.1"), "1"));
    xattn_module_free(r);
    xattn_option o2[1] = {{"heads", "2, 4"}};
    oo.options = o2;
    CHECK_FAIL(xattn_module_open(st, &oo, &r), XATTN_ERR_ARG);
    has("option 'heads' is \"2, 4\", not a positive integer");
    xattn_option o3[1] = {{"dims", "8,12"}};
    oo.options = o3;
    CHECK_FAIL(xattn_module_open(st, &oo, &r), XATTN_ERR_SHAPE);
    has("option dims = 8,12 disagrees with the shapes (dims = 8,16)");
    xattn_option o4[1] = {{"heads.5", "2"}};
    oo.options = o4;
    CHECK_FAIL(xattn_module_open(st, &oo, &r), XATTN_ERR_ARG);
    has("heads.5 is given (option) but the module has 2 stages");
    xattn_st_close(st);
    unlink(f);
}

/* The registry's forward by names equals the typed forward (one stage: the outputs keep the
 * token counts). */
static void named_forward(void)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("multiview_v2_s1.safetensors"), &st));
    if (!st) return;
    xattn_open_opts oo = {.kind = "multiview"};
    xattn_module *r = NULL;
    xattn_multiview *t = NULL;
    CHECK_OK(xattn_module_open(st, &oo, &r));
    CHECK_OK(xattn_multiview_load(st, "", NULL, &t));
    if (!r || !t) return;
    xattn_array x0, x1, e0, e1;
    const float *xs[2] = {tu_get_f32(st, "input.0", &x0), tu_get_f32(st, "input.1", &x1)};
    tu_get_f32(st, "expected.0", &e0);
    tu_get_f32(st, "expected.1", &e1);
    const int64_t B = x0.shape[0], tokens[2] = {x0.shape[1], x1.shape[1]};
    const int64_t n0 = xattn_array_numel(&e0), n1 = xattn_array_numel(&e1);
    float *t0 = calloc((size_t)n0, 4), *t1 = calloc((size_t)n1, 4);
    float *r0 = calloc((size_t)n0, 4), *r1 = calloc((size_t)n1, 4);
    float *touts[2] = {t0, t1};
    CHECK_OK(mv_forward(t, B, tokens, xs, touts));
    xattn_tensor in[2] = {{"xs.0", XATTN_F32, 3, {0}, (void *)xs[0]},
                          {"xs.1", XATTN_F32, 3, {0}, (void *)xs[1]}};
    memcpy(in[0].shape, x0.shape, sizeof x0.shape);
    memcpy(in[1].shape, x1.shape, sizeof x1.shape);
    xattn_tensor out[2] = {{"out.0", XATTN_F32, 0, {0}, NULL}, {"out.1", XATTN_F32, 0, {0}, NULL}};
    CHECK_OK(xattn_module_plan(r, in, 2, out, 2));
    CHECK(out[0].ndim == 3 && out[0].shape[1] == tokens[0] && out[1].shape[1] == tokens[1]);
    out[0].data = r0;
    out[1].data = r1;
    xattn_ctx *ctx = NULL;
    CHECK_OK(xattn_ctx_new(&ctx));
    CHECK_OK(xattn_ctx_set_threads(ctx, 1));
    CHECK_OK(xattn_module_forward(ctx, r, in, 2, out, 2));
    CHECK(!memcmp(t0, r0, (size_t)n0 * 4) && !memcmp(t1, r1, (size_t)n1 * 4));
    tu_check_close("named out.0", r0, e0.data, n0, TU_TOL);
    tu_check_close("named out.1", r1, e1.data, n1, TU_TOL);
    /* every view must be given */
    CHECK_FAIL(xattn_module_forward(ctx, r, in, 1, out, 1), XATTN_ERR_ARG);
    has("needs the input 'xs.1'");
    xattn_ctx_free(ctx);
    xattn_safetensors *st3 = NULL;
    xattn_module *r3 = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("multiview_v3_len1.safetensors"), &st3));
    if (st3) CHECK_OK(xattn_module_open(st3, &oo, &r3));
    xattn_tensor in3[2] = {{"xs.0", XATTN_F32, 3, {B, 1, 12}, r0},
                           {"xs.1", XATTN_F32, 3, {B, 1, 12}, r1}};
    CHECK_FAIL(xattn_module_forward(NULL, r3, in3, 2, out, 1), XATTN_ERR_ARG);
    has("the module has 3 views: give xs.0 .. xs.2 (xs.2 is missing)");
    xattn_module_free(r3);
    xattn_st_close(st3);
    /* a module of several stages: the outputs' token counts are pooled, floor(N / 2^(S-1)),
     * computed by the kind; a view too short to pool is refused by name */
    xattn_module *m2 = create(2, "2", "16,32", "2", "16,16", NULL, NULL);
    xattn_tensor out2[2] = {{"out.0", XATTN_F32, 0, {0}, NULL}, {"out.1", XATTN_F32, 0, {0}, NULL}};
    CHECK_OK(xattn_module_plan(m2, in, 2, out2, 2));
    CHECK(out2[0].ndim == 3 && out2[0].shape[0] == B && out2[0].shape[1] == tokens[0] / 2 &&
          out2[0].shape[2] == 32 && out2[1].shape[1] == tokens[1] / 2);
    xattn_tensor short1[2] = {in[0], in[1]};
    short1[1].shape[1] = 1;
    CHECK_FAIL(xattn_module_plan(m2, short1, 2, out2, 2), XATTN_ERR_SHAPE);
    has("input 'xs.1' has 1 token(s): too few for 2 stages");
    xattn_module_free(m2);
    free(t0), free(t1), free(r0), free(r1);
    xattn_array_free(&x0), xattn_array_free(&x1), xattn_array_free(&e0), xattn_array_free(&e1);
    xattn_multiview_free(t);
    xattn_module_free(r);
    xattn_st_close(st);
}

/* Several stages by names: the registry's forward equals the typed forward and the reference,
 * the outputs of the pooled token counts; out.K of a view not given does not exist. */
static void named_stages(const char *fixture)
{
    xattn_safetensors *st = NULL;
    xattn_multiview *t = typed_load(tu_fixture(fixture), &st);
    xattn_open_opts oo = {.kind = "multiview"};
    xattn_module *r = NULL;
    if (st) CHECK_OK(xattn_module_open(st, &oo, &r));
    if (!r || !t) return;
    xattn_multiview_config c;
    xattn_multiview_get_config(t, &c);
    const int V = (int)c.views;
    xattn_array x[3], e[3];
    const float *xs[3];
    float *typed[3], *named[3];
    int64_t tokens[3], n[3];
    static const char *const XN[3] = {"xs.0", "xs.1", "xs.2"};
    static const char *const ON[3] = {"out.0", "out.1", "out.2"};
    xattn_tensor in[3], out[3];
    for (int v = 0; v < V; v++) {
        char nm[32];
        snprintf(nm, sizeof nm, "input.%d", v);
        xs[v] = tu_get_f32(st, nm, &x[v]);
        snprintf(nm, sizeof nm, "expected.%d", v);
        tu_get_f32(st, nm, &e[v]);
        tokens[v] = x[v].shape[1];
        n[v] = xattn_array_numel(&e[v]);
        typed[v] = calloc((size_t)n[v], 4);
        named[v] = calloc((size_t)n[v], 4);
        in[v] = (xattn_tensor){XN[v], XATTN_F32, 3, {0}, (void *)xs[v]};
        memcpy(in[v].shape, x[v].shape, sizeof x[v].shape);
        out[v] = (xattn_tensor){ON[v], XATTN_F32, 0, {0}, NULL};
    }
    CHECK_OK(mv_forward(t, x[0].shape[0], tokens, xs, typed));
    CHECK_OK(xattn_module_plan(r, in, (size_t)V, out, (size_t)V));
    for (int v = 0; v < V; v++) {
        CHECK(out[v].ndim == 3 && out[v].shape[1] == tokens[v] >> (c.stages - 1) &&
              out[v].shape[2] == c.dim[c.stages - 1] && out[v].shape[1] == e[v].shape[1]);
        out[v].data = named[v];
    }
    CHECK_OK(xattn_module_forward(NULL, r, in, (size_t)V, out, (size_t)V));
    for (int v = 0; v < V; v++) {
        CHECK(!memcmp(typed[v], named[v], (size_t)n[v] * 4));
        tu_check_close(fixture, named[v], e[v].data, n[v], TU_TOL);
    }
    xattn_tensor absent = {"out.2", XATTN_F32, 0, {0}, NULL};
    if (V == 2) {
        CHECK_FAIL(xattn_module_plan(r, in, 2, &absent, 1), XATTN_ERR_ARG);
        has("size 'M2' is unknown");
    }
    for (int v = 0; v < V; v++) {
        free(typed[v]), free(named[v]);
        xattn_array_free(&x[v]), xattn_array_free(&e[v]);
    }
    xattn_multiview_free(t);
    xattn_module_free(r);
    xattn_st_close(st);
}

int main(void)
{
    round_trip();
    init_distribution();
    zero_options();
    heads_lists();
    named_forward();
    named_stages("multiview_v2_s3.safetensors");
    named_stages("multiview_v3_s2_odd.safetensors");
    named_stages("multiview_v2_s2_heads1.safetensors");
    return tu_finish("test_multiview_core");
}
