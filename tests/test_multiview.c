/*
 * M6: xattn_multiview_* against fixtures from the PyTorch composition MultiscaleMultiview
 * (tests/reference/gen_multiview.py): V = 2 and 3, 1-3 stages, odd lengths, views pooled to 1
 * token, single-token views, batch > 1; threads 1 and 2, kernel sets auto and scalar; plus load
 * and argument errors.
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const FIXTURES[] = {"multiview_v2_s1", "multiview_v3_s2_odd", "multiview_v2_s3",
                                       "multiview_v3_len1", "multiview_v2_s2_heads1"};

static double g_worst;

static xattn_status mv_forward(const xattn_multiview *m, int64_t B, int64_t V,
                               const int64_t *tokens, const float *const *x, float *const *out)
{
    const xattn_multiview_inputs in = {.B = B, .n_views = V, .tokens = tokens, .x = x};
    const xattn_multiview_outputs o = {.out = out};
    return xattn_multiview_forward(NULL, m, &in, &o);
}

static void run_fixture(const char *name)
{
    char file[256];
    snprintf(file, sizeof file, "%s.safetensors", name);
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(file), &st));
    if (!st) return;
    xattn_multiview *m = NULL;
    CHECK_OK(xattn_multiview_load(st, "", NULL, &m));
    if (!m) {
        xattn_st_close(st);
        return;
    }
    xattn_multiview_config cfg;
    xattn_multiview_get_config(m, &cfg);
    CHECK(cfg.views == strtoll(xattn_st_meta_get(st, "views"), NULL, 10));
    CHECK(cfg.stages == strtoll(xattn_st_meta_get(st, "stages"), NULL, 10));
    CHECK(cfg.gelu_tanh == !strcmp(xattn_st_meta_get(st, "gelu"), "tanh"));

    const int64_t V = cfg.views;
    xattn_array in[8], ex[8];
    const float *x[8];
    float *out[8];
    int64_t tokens[8], B = 0;
    for (int64_t v = 0; v < V; v++) {
        char nm[64];
        snprintf(nm, sizeof nm, "input.%lld", (long long)v);
        x[v] = tu_get_f32(st, nm, &in[v]);
        snprintf(nm, sizeof nm, "expected.%lld", (long long)v);
        tu_get_f32(st, nm, &ex[v]);
        B = in[v].shape[0];
        tokens[v] = in[v].shape[1];
        int64_t on = 0;
        CHECK_OK(xattn_multiview_out_tokens(m, tokens[v], &on));
        CHECK(on == ex[v].shape[1]);
        out[v] = calloc((size_t)xattn_array_numel(&ex[v]), sizeof(float));
    }
    static const char *const isas[] = {"auto", "scalar"};
    for (int ii = 0; ii < 2; ii++) {
        CHECK_OK(xattn_set_isa(isas[ii]));
        for (int th = 1; th <= 2; th++) {
            xattn_set_threads(th);
            for (int64_t v = 0; v < V; v++)
                memset(out[v], 0xff, (size_t)xattn_array_numel(&ex[v]) * sizeof(float)); /* NaN */
            CHECK_OK(mv_forward(m, B, V, tokens, x, out));
            for (int64_t v = 0; v < V; v++) {
                char what[160];
                snprintf(what, sizeof what, "%s view %lld isa %s threads %d", name, (long long)v,
                         isas[ii], th);
                double e =
                    tu_check_close(what, out[v], ex[v].data, xattn_array_numel(&ex[v]), TU_TOL);
                if (e > g_worst) g_worst = e;
            }
        }
    }
    CHECK_OK(xattn_set_isa("auto"));
    xattn_set_threads(0);
    for (int64_t v = 0; v < V; v++) {
        xattn_array_free(&in[v]);
        xattn_array_free(&ex[v]);
        free(out[v]);
    }
    xattn_multiview_free(m);
    xattn_st_close(st);
}

/* A state dict with tensor `drop` removed (or renamed to `rename`) or `reshape` cut by one row. */
static xattn_safetensors *edited(const xattn_safetensors *src, const char *drop, const char *rename,
                                 int keep_meta, xattn_array *arrs, size_t *n_out)
{
    size_t n = xattn_st_count(src), k = 0;
    xattn_st_entry *e = calloc(n, sizeof *e);
    for (size_t i = 0; i < n; i++) {
        const char *nm = xattn_st_name(src, i);
        if (strncmp(nm, "stages.", 7)) continue;
        if (drop && !strcmp(nm, drop) && !rename) continue;
        CHECK_OK(xattn_st_get(src, nm, XATTN_F32, &arrs[k]));
        e[k].name = (drop && rename && !strcmp(nm, drop)) ? rename : nm;
        e[k].dtype = XATTN_F32;
        e[k].ndim = arrs[k].ndim;
        memcpy(e[k].shape, arrs[k].shape, sizeof e[k].shape);
        e[k].data = arrs[k].data;
        k++;
    }
    const char *meta[] = {"heads", "2,4"};
    char path[] = "/tmp/xattn_test_multiview_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    CHECK_OK(xattn_st_save(path, e, k, meta, keep_meta ? 1 : 0));
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(path, &st));
    remove(path);
    free(e);
    *n_out = k;
    return st;
}

static void free_arrs(xattn_array *a, size_t n)
{
    for (size_t i = 0; i < n; i++) xattn_array_free(&a[i]);
}

static void errors(void)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("multiview_v3_s2_odd.safetensors"), &st));
    if (!st) return;
    xattn_multiview *m = NULL;
    CHECK_FAIL(xattn_multiview_load(st, "nope.", NULL, &m), XATTN_ERR_NOT_FOUND);
    CHECK(strstr(xattn_last_error(), "nope.stages.0.views.0.self_attn.in_proj_weight") != NULL);
    CHECK_FAIL(xattn_multiview_load(NULL, "", NULL, &m), XATTN_ERR_ARG);
    int64_t hb[3] = {2, 4, 4};
    xattn_multiview_opts o = {.heads = hb, .n_heads = 3};
    CHECK_FAIL(xattn_multiview_load(st, "", &o, &m), XATTN_ERR_ARG);
    int64_t h3[2] = {3, 4};
    o.heads = h3;
    o.n_heads = 2;
    CHECK_FAIL(xattn_multiview_load(st, "", &o, &m), XATTN_ERR_SHAPE);
    CHECK(strstr(xattn_last_error(), "divisible") != NULL);
    /* option overrides */
    int64_t h1[1] = {1};
    xattn_multiview_opts o1 = {
        .heads = h1, .n_heads = 1, .eps = 1e-3, .gelu = XATTN_MULTIVIEW_GELU_ERF};
    CHECK_OK(xattn_multiview_load(st, "", &o1, &m));
    if (m) {
        xattn_multiview_config cfg;
        xattn_multiview_get_config(m, &cfg);
        CHECK(cfg.heads[0] == 1 && cfg.heads[1] == 1 && cfg.gelu_tanh == 0 &&
              fabsf(cfg.eps - 1e-3f) < 1e-9f);
        CHECK(cfg.dim[0] == 8 && cfg.dim[1] == 16 && cfg.mlp_hidden[0] == 16 &&
              cfg.mlp_hidden[1] == 24);
        int64_t on = 0;
        CHECK_FAIL(xattn_multiview_out_tokens(m, 1, &on), XATTN_ERR_SHAPE);
        CHECK_OK(xattn_multiview_out_tokens(m, 3, &on));
        CHECK(on == 1);
        /* forward argument errors */
        float a[2 * 9 * 8] = {0}, b[2 * 4 * 8] = {0}, c1[2 * 1 * 8] = {0};
        float o0[2 * 4 * 16], o1b[2 * 2 * 16], o2[2 * 1 * 16];
        const float *xs[3] = {a, b, c1};
        float *outs[3] = {o0, o1b, o2};
        int64_t tk[3] = {9, 4, 1};
        CHECK_FAIL(mv_forward(m, 2, 3, tk, xs, outs), XATTN_ERR_SHAPE);
        CHECK(strstr(xattn_last_error(), "view 2") != NULL);
        tk[2] = 2;
        CHECK_FAIL(mv_forward(m, 2, 2, tk, xs, outs), XATTN_ERR_SHAPE);
        CHECK_FAIL(mv_forward(m, 0, 3, tk, xs, outs), XATTN_ERR_ARG);
        xs[1] = NULL;
        CHECK_FAIL(mv_forward(m, 2, 3, tk, xs, outs), XATTN_ERR_ARG);
        xattn_multiview_free(m);
        m = NULL;
    }
    /* missing / bad tensors */
    xattn_array arrs[256];
    size_t na = 0;
    xattn_safetensors *e1 = edited(st, "stages.1.views.2.cross_mlp.2.weight", NULL, 1, arrs, &na);
    CHECK_FAIL(xattn_multiview_load(e1, "", NULL, &m), XATTN_ERR_NOT_FOUND);
    CHECK(strstr(xattn_last_error(), "stages.1.views.2.cross_mlp.2.weight") != NULL);
    xattn_st_close(e1);
    free_arrs(arrs, na);
    e1 = edited(st, "stages.1.views.0.expand.weight", NULL, 1, arrs, &na);
    CHECK_FAIL(xattn_multiview_load(e1, "", NULL, &m), XATTN_ERR_NOT_FOUND);
    CHECK(strstr(xattn_last_error(), "stages.1.views.0.expand.weight") != NULL);
    xattn_st_close(e1);
    free_arrs(arrs, na);
    /* no heads anywhere */
    e1 = edited(st, NULL, NULL, 0, arrs, &na);
    CHECK_FAIL(xattn_multiview_load(e1, "", NULL, &m), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "heads") != NULL);
    xattn_st_close(e1);
    free_arrs(arrs, na);
    /* a shape that disagrees: mlp.2.weight of stage 0 view 1 replaced by a (16, 8) one
     * (mlp.0.weight is (16, 8), so it is renamed in its place) */
    e1 = edited(st, "stages.0.views.1.mlp.2.weight", "stages.0.views.1.mlp.2.weight.x", 1, arrs,
                &na);
    CHECK_FAIL(xattn_multiview_load(e1, "", NULL, &m), XATTN_ERR_NOT_FOUND);
    xattn_st_close(e1);
    free_arrs(arrs, na);
    xattn_st_close(st);
}

/* A shape mismatch: the v2_s1 fixture's cross_attn.out_proj.weight replaced by a wrong-size one. */
static void shape_error(void)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("multiview_v2_s1.safetensors"), &st));
    if (!st) return;
    size_t n = xattn_st_count(st), k = 0;
    xattn_st_entry *e = calloc(n, sizeof *e);
    xattn_array *arrs = calloc(n, sizeof *arrs);
    static float junk[16 * 8];
    for (size_t i = 0; i < n; i++) {
        const char *nm = xattn_st_name(st, i);
        CHECK_OK(xattn_st_get(st, nm, XATTN_F32, &arrs[k]));
        e[k].name = nm;
        e[k].dtype = XATTN_F32;
        e[k].ndim = arrs[k].ndim;
        memcpy(e[k].shape, arrs[k].shape, sizeof e[k].shape);
        e[k].data = arrs[k].data;
        if (!strcmp(nm, "stages.0.views.1.cross_attn.out_proj.weight")) {
            e[k].shape[1] = 8;
            e[k].data = junk;
        }
        k++;
    }
    const char *meta[] = {"heads", "2"};
    char path[] = "/tmp/xattn_test_multiview_XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0) close(fd);
    CHECK_OK(xattn_st_save(path, e, k, meta, 1));
    xattn_safetensors *s2 = NULL;
    CHECK_OK(xattn_st_open(path, &s2));
    remove(path);
    xattn_multiview *m = NULL;
    CHECK_FAIL(xattn_multiview_load(s2, "", NULL, &m), XATTN_ERR_SHAPE);
    CHECK(strstr(xattn_last_error(), "stages.0.views.1.cross_attn.out_proj.weight") != NULL);
    xattn_st_close(s2);
    for (size_t i = 0; i < k; i++) xattn_array_free(&arrs[i]);
    free(arrs);
    free(e);
    xattn_st_close(st);
}

int main(void)
{
    for (size_t i = 0; i < sizeof FIXTURES / sizeof FIXTURES[0]; i++) run_fixture(FIXTURES[i]);
    printf("multiview: worst relative error %.3g (tolerance %.1g)\n", g_worst, TU_TOL);
    errors();
    shape_error();
    return tu_finish("test_multiview");
}
