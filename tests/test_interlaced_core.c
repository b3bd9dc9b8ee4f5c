/*
 * The interlaced kind on the module core: an all-zero xattn_interlaced_opts means the
 * reference's defaults (heads 6, n_cls 20, x first; each announced when assumed) while n_cls 0
 * stays expressible, create -> save -> reload gives identical parameters and an identical
 * forward, new parameters follow nn.Linear / nn.LayerNorm initialisation (bounds and moments),
 * and the forward by names (logits included) equals the typed forward on a fixture.
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

/* Writes the blocks.* tensors of a fixture to path with the given metadata. */
static void strip(const char *fixture, const char *path, const char *const *meta, size_t n_meta)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(fixture), &st));
    if (!st) return;
    size_t n = xattn_st_count(st), k = 0;
    xattn_st_entry *e = calloc(n, sizeof *e);
    xattn_array *arr = calloc(n, sizeof *arr);
    for (size_t i = 0; i < n; i++) {
        const char *name = xattn_st_name(st, i);
        if (strncmp(name, "blocks.", 7)) continue;
        CHECK_OK(xattn_st_get(st, name, XATTN_F32, &arr[k]));
        e[k].name = name;
        e[k].dtype = XATTN_F32;
        e[k].ndim = arr[k].ndim;
        memcpy(e[k].shape, arr[k].shape, sizeof e[k].shape);
        e[k].data = arr[k].data;
        k++;
    }
    CHECK_OK(xattn_st_save(path, e, k, meta, n_meta));
    for (size_t i = 0; i < k; i++) xattn_array_free(&arr[i]);
    free(arr);
    free(e);
    xattn_st_close(st);
}

static xattn_interlaced *load(const char *path, const xattn_interlaced_opts *o)
{
    xattn_safetensors *st = NULL;
    xattn_interlaced *m = NULL;
    CHECK_OK(xattn_st_open(path, &st));
    if (st) CHECK_OK(xattn_interlaced_load(st, "", o, &m));
    xattn_st_close(st);
    return m;
}

static void zero_opts(void)
{
    char f[128];
    snprintf(f, sizeof f, "/tmp/test_interlaced_core_%ld.safetensors", (long)getpid());
    strip("interlaced_d3_ncls1_defaults.safetensors", f, NULL, 0); /* dim 12: 6 heads divide */
    xattn_interlaced_opts o;
    memset(&o, 0, sizeof o);
    xattn_interlaced *a = load(f, &o), *b = load(f, NULL);
    if (a && b) {
        xattn_interlaced_config ca, cb;
        xattn_interlaced_get_config(a, &ca);
        xattn_interlaced_get_config(b, &cb);
        CHECK(!memcmp(&ca, &cb, sizeof ca));
        CHECK(ca.heads == 6 && ca.n_cls == 20 && ca.context_first == 0 && ca.depth == 3 &&
              ca.scale == (float)pow(2.0, -0.5) && ca.qkv_bias == 0);
        const char *w = xattn_interlaced_warnings(a);
        has(w, "num_heads: not given and not in the file; assuming 6");
        has(w, "num_classes: not given and not in the file; assuming 20");
        has(w, "first: not given and not in the file; assuming x");
        CHECK(strstr(w, "qk_scale") == NULL); /* None is the reference's own default */
    }
    xattn_interlaced_free(a);
    xattn_interlaced_free(b);
    /* n_cls 0 needs has_n_cls; a nonzero n_cls is taken as given */
    o.has_n_cls = 1;
    a = load(f, &o);
    o.has_n_cls = 0;
    o.n_cls = 5;
    o.context_first = XATTN_YES;
    o.heads = 3;
    o.qk_scale = 0.25;
    b = load(f, &o);
    if (a && b) {
        xattn_interlaced_config ca, cb;
        xattn_interlaced_get_config(a, &ca);
        xattn_interlaced_get_config(b, &cb);
        CHECK(ca.n_cls == 0 && cb.n_cls == 5 && cb.context_first == 1 && cb.heads == 3 &&
              cb.scale == 0.25f);
        CHECK(strstr(xattn_interlaced_warnings(a), "num_classes") == NULL);
        CHECK(xattn_interlaced_warnings(b)[0] == '\0');
    }
    xattn_interlaced_free(a);
    xattn_interlaced_free(b);
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(f, &st));
    o.context_first = 3; /* not an xattn_choice */
    CHECK_FAIL(xattn_interlaced_load(st, "", &o, &a), XATTN_ERR_ARG);
    o.context_first = 0;
    o.n_cls = -1;
    CHECK_FAIL(xattn_interlaced_load(st, "", &o, &a), XATTN_ERR_ARG);
    has(xattn_last_error(), "num_classes");
    CHECK(a == NULL);
    xattn_st_close(st);
    /* metadata "None" for qk_scale is the reference's None */
    const char *meta[] = {"qk_scale", "None", "first", "view"};
    strip("interlaced_d3_ncls1_defaults.safetensors", f, meta, 2);
    if ((a = load(f, NULL))) {
        xattn_interlaced_config c;
        xattn_interlaced_get_config(a, &c);
        CHECK(c.scale == (float)pow(2.0, -0.5) && c.context_first == 1);
    }
    xattn_interlaced_free(a);
    unlink(f);
}

/* Runs m by names on x (B, I, D), context (B, J, D): out, context_out and both logits. */
static void run_named(const xattn_module *m, int64_t B, int64_t I, int64_t J, int64_t D, int64_t H,
                      int64_t xl, int64_t cl, const float *x, const float *c, float *o, float *co,
                      float *lx, float *lc)
{
    xattn_tensor in[2] = {{"x", XATTN_F32, 3, {B, I, D}, (void *)x},
                          {"context", XATTN_F32, 3, {B, J, D}, (void *)c}};
    xattn_tensor out[4] = {{"out", XATTN_F32, 3, {B, I, D}, o},
                           {"context_out", XATTN_F32, 3, {B, J, D}, co},
                           {"attn_weights_x", XATTN_F32, 5, {xl, B, H, I, J}, lx},
                           {"attn_weights_context", XATTN_F32, 5, {cl, B, H, J, I}, lc}};
    CHECK_OK(xattn_module_forward(NULL, m, in, 2, out, 4));
}

/* The typed forward: logits per layer into the stacked buffers lx / lc. */
static void run_typed(const xattn_interlaced *m, int64_t B, int64_t I, int64_t J, const float *x,
                      const float *c, float *o, float *co, float *lx, float *lc)
{
    xattn_interlaced_config cfg;
    xattn_interlaced_get_config(m, &cfg);
    float *lg[16] = {0};
    const int64_t per = B * cfg.heads * I * J;
    int64_t nx = 0, nc = 0;
    for (int64_t l = 0; l < cfg.depth && l < 16; l++) {
        const int x_queries = ((l & 1) == 0) != (cfg.context_first != 0);
        lg[l] = x_queries ? lx + per * nx++ : lc + per * nc++;
    }
    xattn_interlaced_inputs in = {.B = B, .I = I, .J = J, .x = x, .context = c};
    xattn_interlaced_outputs out = {.out = o, .context_out = co, .attn_weights = lg};
    CHECK_OK(xattn_interlaced_forward(NULL, m, &in, &out));
}

/* create -> save -> reload (registry and typed): the same tensors, config and forward */
static void round_trip(void)
{
    xattn_option opt[7] = {{"embed_dim", "16"},  {"depth", "3"},       {"num_heads", "2"},
                           {"num_classes", "3"}, {"qkv_bias", "True"}, {"first", "context"},
                           {"mlp_ratio", "1.5"}};
    xattn_module *m = NULL, *r = NULL;
    CHECK_OK(xattn_module_create("interlaced", opt, 7, 9, &m));
    if (!m) return;
    char f[128];
    snprintf(f, sizeof f, "/tmp/test_interlaced_core_%ld_r.safetensors", (long)getpid());
    CHECK_OK(xattn_module_save(m, f));
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(f, &st));
    unlink(f);
    if (!st) return;
    CHECK_OK(xattn_module_open(st, NULL, &r));
    xattn_interlaced *t = NULL;
    CHECK_OK(xattn_interlaced_load(st, "", NULL, &t));
    if (r && t) {
        CHECK(!strcmp(xattn_module_kind(r), "interlaced"));
        CHECK(xattn_module_param_count(r) == xattn_module_param_count(m));
        for (size_t i = 0; i < xattn_module_param_count(m); i++) {
            xattn_param_desc a, b;
            CHECK_OK(xattn_module_param(m, i, &a));
            CHECK_OK(xattn_module_param(r, i, &b));
            CHECK(!strcmp(a.name, b.name) && a.data && b.data &&
                  !memcmp(a.data, b.data, 4 * (size_t)tu_param_numel(&a)));
        }
        for (size_t i = 0; i < xattn_module_config_count(m); i++) {
            xattn_config_entry a, b;
            CHECK_OK(xattn_module_config(m, i, &a));
            CHECK_OK(xattn_module_config(r, i, &b));
            CHECK(!strcmp(a.value, b.value));
        }
        CHECK(xattn_module_warnings(r)[0] == '\0');
        xattn_interlaced_config c;
        xattn_interlaced_get_config(t, &c);
        CHECK(c.dim == 16 && c.depth == 3 && c.heads == 2 && c.n_cls == 3 && c.qkv_bias &&
              c.map_bias && c.context_first && c.mlp_hidden == 24);
        /* first = context: layers 0 and 2 update the context, layer 1 updates x */
        const int64_t B = 2, I = 7, J = 5, D = 16, H = 2, per = B * H * I * J;
        float x[2 * 7 * 16], ctx[2 * 5 * 16], o[2][2 * 7 * 16], co[2][2 * 5 * 16];
        float *lx = calloc(2 * (size_t)per, 4), *lc = calloc(4 * (size_t)per, 4);
        uint64_t rs = 11;
        tu_fill_uniform(x, B * I * D, -2, 2, &rs);
        tu_fill_uniform(ctx, B * J * D, -2, 2, &rs);
        run_named(m, B, I, J, D, H, 1, 2, x, ctx, o[0], co[0], lx, lc);
        run_typed(t, B, I, J, x, ctx, o[1], co[1], lx + per, lc + 2 * per);
        CHECK(!memcmp(o[0], o[1], sizeof o[0]) && !memcmp(co[0], co[1], sizeof co[0]));
        CHECK(!memcmp(lx, lx + per, 4 * (size_t)per) && !memcmp(lc, lc + 2 * per, 8 * (size_t)per));
        run_named(r, B, I, J, D, H, 1, 2, x, ctx, o[1], co[1], lx + per, lc + 2 * per);
        CHECK(!memcmp(o[0], o[1], sizeof o[0]) && !memcmp(lc, lc + 2 * per, 8 * (size_t)per));
        free(lx);
        free(lc);
    }
    xattn_interlaced_free(t);
    xattn_module_free(r);
    xattn_module_free(m);
    xattn_st_close(st);
}

/* nn.Linear (weights and biases U(+-1/sqrt(fan_in))) and nn.LayerNorm (ones, zeros); the
 * reference has no init of its own */
static void init_distribution(void)
{
    xattn_option opt[4] = {
        {"embed_dim", "96"}, {"depth", "2"}, {"mlp_ratio", "2"}, {"qkv_bias", "True"}};
    xattn_module *m = NULL;
    CHECK_OK(xattn_module_create("interlaced", opt, 4, 4, &m));
    if (!m) return;
    const double D = 96, Hd = 192;
    for (size_t i = 0; i < xattn_module_param_count(m); i++) {
        xattn_param_desc p;
        CHECK_OK(xattn_module_param(m, i, &p));
        CHECK(p.data != NULL);
        if (!p.data) continue;
        if (strstr(p.name, ".norm"))
            tu_check_const(m, p.name, strstr(p.name, "weight") ? 1.0f : 0.0f);
        else
            tu_check_uniform(m, p.name, 1 / sqrt(strstr(p.name, "fc2.") ? Hd : D));
    }
    xattn_param_desc p;
    CHECK_OK(xattn_module_param(m, 20, &p));
    CHECK(!strcmp(p.name, "blocks.0.mlp.fc1.weight") && p.shape[0] == 192 && p.shape[1] == 96);
    xattn_module_free(m);
    /* qkv_bias False (the default): none of the four biases */
    xattn_option small[1] = {{"embed_dim", "12"}};
    CHECK_OK(xattn_module_create("interlaced", small, 1, 0, &m));
    size_t n = 0;
    for (size_t i = 0; m && i < xattn_module_param_count(m); i++) {
        CHECK_OK(xattn_module_param(m, i, &p));
        n += p.data != NULL;
        if (strstr(p.name, "qkv.bias") || strstr(p.name, "map.bias")) CHECK(p.data == NULL);
    }
    CHECK(n == 4 * 20); /* depth 4, 20 tensors a block */
    xattn_module_free(m);
    xattn_option zero[2] = {{"embed_dim", "12"}, {"mlp_ratio", "0.01"}};
    CHECK_FAIL(xattn_module_create("interlaced", zero, 2, 0, &m), XATTN_ERR_ARG);
    has(xattn_last_error(), "int(embed_dim * mlp_ratio) = 0");
}

/* By names against the typed call and the reference on a fixture; mlp_ratio against shapes. */
static void named_forward(void)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("interlaced_context_first.safetensors"), &st));
    if (!st) return;
    xattn_module *r = NULL;
    xattn_interlaced *t = NULL;
    CHECK_OK(xattn_module_open(st, NULL, &r));
    CHECK_OK(xattn_interlaced_load(st, "", NULL, &t));
    if (r && t) {
        xattn_array ax, ac, eo, ec, el[3];
        const float *x = tu_get_f32(st, "input.x", &ax), *c = tu_get_f32(st, "input.context", &ac);
        const float *ref = tu_get_f32(st, "expected.out", &eo);
        const float *cref = tu_get_f32(st, "expected.context_out", &ec);
        const int64_t B = ax.shape[0], I = ax.shape[1], J = ac.shape[1], D = ax.shape[2], H = 4;
        const int64_t per = B * H * I * J;
        float *o = calloc((size_t)(2 * B * I * D), 4), *co = calloc((size_t)(2 * B * J * D), 4);
        float *lx = calloc(2 * (size_t)per, 4), *lc = calloc(4 * (size_t)per, 4);
        run_named(r, B, I, J, D, H, 1, 2, x, c, o, co, lx, lc);
        run_typed(t, B, I, J, x, c, o + B * I * D, co + B * J * D, lx + per, lc + 2 * per);
        CHECK(!memcmp(o, o + B * I * D, 4 * (size_t)(B * I * D)));
        CHECK(!memcmp(co, co + B * J * D, 4 * (size_t)(B * J * D)));
        CHECK(!memcmp(lx, lx + per, 4 * (size_t)per) && !memcmp(lc, lc + 2 * per, 8 * (size_t)per));
        tu_check_close("named out", o, ref, B * I * D, TU_TOL);
        tu_check_close("named context_out", co, cref, B * J * D, TU_TOL);
        /* first = context: layers 0 and 2 are the context's, layer 1 x's */
        tu_check_close("logits 0", lc, tu_get_f32(st, "expected.logits.0", &el[0]), per, TU_TOL);
        tu_check_close("logits 1", lx, tu_get_f32(st, "expected.logits.1", &el[1]), per, TU_TOL);
        tu_check_close("logits 2", lc + per, tu_get_f32(st, "expected.logits.2", &el[2]), per,
                       TU_TOL);
        /* the outputs alone, without logits */
        xattn_tensor in[2] = {{"x", XATTN_F32, 3, {B, I, D}, (void *)x},
                              {"context", XATTN_F32, 3, {B, J, D}, (void *)c}};
        xattn_tensor out[1] = {{"out", XATTN_F32, 3, {B, I, D}, o + B * I * D}};
        CHECK_OK(xattn_module_forward(NULL, r, in, 2, out, 1));
        CHECK(!memcmp(o, o + B * I * D, 4 * (size_t)(B * I * D)));
        free(o);
        free(co);
        free(lx);
        free(lc);
        xattn_array_free(&ax);
        xattn_array_free(&ac);
        xattn_array_free(&eo);
        xattn_array_free(&ec);
        for (int k = 0; k < 3; k++) xattn_array_free(&el[k]);
    }
    xattn_module_free(r);
    xattn_interlaced_free(t);
    /* mlp_ratio given must agree with the MLP's width (16 * 0.2 = 3) */
    xattn_option good[1] = {{"mlp_ratio", "0.2"}}, bad[1] = {{"mlp_ratio", "0.5"}};
    xattn_open_opts oo;
    memset(&oo, 0, sizeof oo);
    oo.options = good;
    oo.n_options = 1;
    CHECK_OK(xattn_module_open(st, &oo, &r));
    xattn_module_free(r);
    oo.options = bad;
    CHECK_FAIL(xattn_module_open(st, &oo, &r), XATTN_ERR_SHAPE);
    has(xattn_last_error(), "option mlp_ratio = 0.5 gives an MLP of width 8");
    xattn_st_close(st);
}

int main(void)
{
    zero_opts();
    round_trip();
    init_distribution();
    named_forward();
    return tu_finish("test_interlaced_core");
}
