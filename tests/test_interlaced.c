/*
 * M5: xattn_interlaced_* against fixtures from a PyTorch transcription of InterlanceDecoder
 * (jimmy15923/mit; tests/reference/gen_interlaced.py), float64 references, at threads 1 and 2 and
 * kernel sets auto and scalar, with the per-layer cross-attention logits; plus load and argument
 * errors on files derived from a fixture.
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const FIXTURES[] = {
    "basic",         "d1_ncls0_len1", "d3_ncls1_defaults", "default_ncls20", "empty_keys",
    "context_first", "long"};

static double g_worst_out, g_worst_lg;

/* The typed forward on the default context. */
static xattn_status il_fwd(const xattn_interlaced *m, int64_t B, int64_t I, int64_t J,
                           const float *x, const float *context, float *out, float *context_out,
                           float *const *logits)
{
    xattn_interlaced_inputs in;
    memset(&in, 0, sizeof in);
    in.B = B;
    in.I = I;
    in.J = J;
    in.x = x;
    in.context = context;
    xattn_interlaced_outputs o;
    memset(&o, 0, sizeof o);
    o.out = out;
    o.context_out = context_out;
    o.attn_weights = logits;
    return xattn_interlaced_forward(NULL, m, &in, &o);
}

static int64_t meta_int(const xattn_safetensors *st, const char *key)
{
    const char *v = xattn_st_meta_get(st, key);
    return v ? strtoll(v, NULL, 10) : -1;
}

static void run_fixture(const char *name)
{
    char file[256];
    snprintf(file, sizeof file, "interlaced_%s.safetensors", name);
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(file), &st));
    if (!st) return;
    xattn_interlaced *m = NULL;
    CHECK_OK(xattn_interlaced_load(st, "", NULL, &m));
    if (!m) {
        xattn_st_close(st);
        return;
    }
    xattn_interlaced_config c;
    xattn_interlaced_get_config(m, &c);
    CHECK(c.heads == meta_int(st, "expected_heads"));
    CHECK(c.n_cls == meta_int(st, "expected_n_cls"));
    CHECK(c.depth == meta_int(st, "depth"));
    const char *first = xattn_st_meta_get(st, "expected_first");
    CHECK(first && c.context_first == !strcmp(first, "context"));
    CHECK(c.eps == 1e-5f);

    xattn_array ax, ac, ao, aco, alg[8];
    memset(alg, 0, sizeof alg);
    const float *x = tu_get_f32(st, "input.x", &ax);
    const float *ctx = tu_get_f32(st, "input.context", &ac);
    const float *ref_o = tu_get_f32(st, "expected.out", &ao);
    const float *ref_co = tu_get_f32(st, "expected.context_out", &aco);
    const float *ref_lg[8] = {0};
    for (int64_t L = 0; L < c.depth && L < 8; L++) {
        char nm[64];
        snprintf(nm, sizeof nm, "expected.logits.%lld", (long long)L);
        ref_lg[L] = tu_get_f32(st, nm, &alg[L]);
    }
    xattn_st_close(st);

    const int64_t B = ax.shape[0], I = ax.shape[1], J = ac.shape[1], D = c.dim;
    CHECK(ax.shape[2] == D && ac.shape[2] == D);
    float *o = malloc((size_t)(B * I * D) * sizeof(float));
    float *co = malloc((size_t)(B * J * D) * sizeof(float));
    float *lg[8] = {0};
    const int64_t nlg = B * c.heads * I * J;
    for (int64_t L = 0; L < c.depth; L++) lg[L] = malloc((size_t)nlg * sizeof(float));
    const char *isas[] = {"auto", "scalar"};
    double wo = 0, wl = 0;
    for (int ii = 0; ii < 2; ii++) {
        CHECK_OK(xattn_set_isa(isas[ii]));
        for (int threads = 1; threads <= 2; threads++) {
            xattn_set_threads(threads);
            for (int with_lg = 0; with_lg < 2; with_lg++) {
                char what[320];
                for (int64_t t = 0; t < B * I * D; t++) o[t] = NAN;
                for (int64_t t = 0; t < B * J * D; t++) co[t] = NAN;
                CHECK_OK(il_fwd(m, B, I, J, x, ctx, o, co, with_lg ? lg : NULL));
                snprintf(what, sizeof what, "%s out (isa %s, threads %d)", name, isas[ii], threads);
                wo = tu_max(wo, tu_check_close(what, o, ref_o, B * I * D, TU_TOL));
                snprintf(what, sizeof what, "%s context_out (isa %s, threads %d)", name, isas[ii],
                         threads);
                wo = tu_max(wo, tu_check_close(what, co, ref_co, B * J * D, TU_TOL));
                if (!with_lg) continue;
                for (int64_t L = 0; L < c.depth; L++) {
                    snprintf(what, sizeof what, "%s logits %lld (isa %s, threads %d)", name,
                             (long long)L, isas[ii], threads);
                    wl = tu_max(wl, tu_check_close(what, lg[L], ref_lg[L], nlg, TU_TOL));
                }
            }
        }
    }
    xattn_set_isa("auto");
    xattn_set_threads(0);

    /* in place (out == x), and a NULL entry in the logits array */
    {
        float *xo = malloc((size_t)(B * I * D) * sizeof(float));
        float *xc = malloc((size_t)(B * J * D) * sizeof(float));
        memcpy(xo, x, (size_t)(B * I * D) * sizeof(float));
        memcpy(xc, ctx, (size_t)(B * J * D) * sizeof(float));
        float *some[8] = {0};
        some[c.depth - 1] = lg[c.depth - 1];
        CHECK_OK(il_fwd(m, B, I, J, xo, xc, xo, xc, some));
        wo = tu_max(wo, tu_check_close("in place out", xo, ref_o, B * I * D, TU_TOL));
        wo = tu_max(wo, tu_check_close("in place context_out", xc, ref_co, B * J * D, TU_TOL));
        wl = tu_max(
            wl, tu_check_close("last logits", lg[c.depth - 1], ref_lg[c.depth - 1], nlg, TU_TOL));
        free(xo);
        free(xc);
    }
    printf("  %-20s depth=%lld D=%lld H=%lld hidden=%lld n_cls=%lld first=%s B=%lld I=%lld "
           "J=%lld  max err out %.2e logits %.2e\n",
           name, (long long)c.depth, (long long)D, (long long)c.heads, (long long)c.mlp_hidden,
           (long long)c.n_cls, c.context_first ? "context" : "x", (long long)B, (long long)I,
           (long long)J, wo, wl);
    g_worst_out = tu_max(g_worst_out, wo);
    g_worst_lg = tu_max(g_worst_lg, wl);
    free(o);
    free(co);
    for (int64_t L = 0; L < c.depth; L++) free(lg[L]);
    xattn_array_free(&ax);
    xattn_array_free(&ac);
    xattn_array_free(&ao);
    xattn_array_free(&aco);
    for (int L = 0; L < 8; L++) xattn_array_free(&alg[L]);
    xattn_interlaced_free(m);
}

/* Options passed by the caller override the file: the basic fixture (n_cls 3 in its metadata)
 * loaded with n_cls = 3 and context_first = 0 explicitly gives the same, and n_cls = 0 differs. */
static void test_opts(void)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("interlaced_basic.safetensors"), &st));
    if (!st) return;
    xattn_interlaced_opts o;
    memset(&o, 0, sizeof o);
    o.heads = 2;
    o.n_cls = 3;
    o.context_first = XATTN_NO;
    xattn_interlaced *m = NULL, *m0 = NULL, *m4 = NULL;
    CHECK_OK(xattn_interlaced_load(st, "", &o, &m));
    o.n_cls = 0;
    o.has_n_cls = 1;
    CHECK_OK(xattn_interlaced_load(st, "", &o, &m0));
    o.has_n_cls = 0;
    o.heads = 4;
    CHECK_OK(xattn_interlaced_load(st, "", &o, &m4));
    xattn_interlaced_config c;
    xattn_interlaced_get_config(m4, &c);
    CHECK(c.heads == 4 && c.head_dim == 4 && c.n_cls == 3);
    xattn_array ax, ac, ao;
    const float *x = tu_get_f32(st, "input.x", &ax);
    const float *ctx = tu_get_f32(st, "input.context", &ac);
    const float *ref = tu_get_f32(st, "expected.out", &ao);
    const int64_t B = ax.shape[0], I = ax.shape[1], J = ac.shape[1], D = ax.shape[2];
    float *out = malloc((size_t)(B * I * D) * sizeof(float));
    float *co = malloc((size_t)(B * J * D) * sizeof(float));
    if (m && m0) {
        CHECK_OK(il_fwd(m, B, I, J, x, ctx, out, co, NULL));
        tu_check_close("explicit opts", out, ref, B * I * D, TU_TOL);
        CHECK_OK(il_fwd(m0, B, I, J, x, ctx, out, co, NULL));
        CHECK(tu_rel_err(out, ref, B * I * D) > 1e-3);
    }
    /* argument errors */
    CHECK_FAIL(il_fwd(NULL, B, I, J, x, ctx, out, co, NULL), XATTN_ERR_ARG);
    CHECK_FAIL(il_fwd(m, 0, I, J, x, ctx, out, co, NULL), XATTN_ERR_ARG);
    CHECK_FAIL(il_fwd(m, B, I, -1, x, ctx, out, co, NULL), XATTN_ERR_ARG);
    CHECK_FAIL(il_fwd(m, B, I, J, NULL, ctx, out, co, NULL), XATTN_ERR_ARG);
    CHECK_FAIL(il_fwd(m, B, I, J, x, ctx, out, NULL, NULL), XATTN_ERR_ARG);
    CHECK_FAIL(il_fwd(m, (int64_t)1 << 40, (int64_t)1 << 40, J, x, ctx, out, co, NULL),
               XATTN_ERR_NOMEM);
    CHECK_FAIL(xattn_interlaced_load(st, "", NULL, NULL), XATTN_ERR_ARG);
    xattn_interlaced *bad = (xattn_interlaced *)1;
    CHECK_FAIL(xattn_interlaced_load(NULL, "", NULL, &bad), XATTN_ERR_ARG);
    CHECK(bad == NULL);
    o.heads = 3; /* 16 % 3 != 0 */
    CHECK_FAIL(xattn_interlaced_load(st, "", &o, &bad), XATTN_ERR_SHAPE);
    CHECK(strstr(xattn_last_error(), "divisible") != NULL);
    CHECK_FAIL(xattn_interlaced_load(st, "decoder.", NULL, &bad), XATTN_ERR_NOT_FOUND);
    CHECK(strstr(xattn_last_error(), "decoder.blocks.0.norm1.weight") != NULL);
    free(out);
    free(co);
    xattn_array_free(&ax);
    xattn_array_free(&ac);
    xattn_array_free(&ao);
    xattn_interlaced_free(m);
    xattn_interlaced_free(m0);
    xattn_interlaced_free(m4);
    xattn_st_close(st);
}

/* Rewrites the basic fixture's blocks.* tensors (under `prefix`) without `drop`, with `reshape`
 * given a wrong first dimension, plus `meta`, and checks the load. */
static void derived(const char *prefix, const char *drop, const char *reshape, const char *mk,
                    const char *mv, xattn_status want, const char *needle)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("interlaced_basic.safetensors"), &st));
    if (!st) return;
    size_t n = xattn_st_count(st);
    xattn_st_entry *e = calloc(n, sizeof *e);
    xattn_array *arr = calloc(n, sizeof *arr);
    char(*names)[128] = calloc(n, sizeof *names);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *nm = xattn_st_name(st, i);
        if (strncmp(nm, "blocks.", 7) || (drop && !strcmp(nm, drop))) continue;
        CHECK_OK(xattn_st_get(st, nm, XATTN_F32, &arr[k]));
        snprintf(names[k], sizeof names[k], "%s%s", prefix, nm);
        e[k].name = names[k];
        e[k].dtype = XATTN_F32;
        e[k].ndim = arr[k].ndim;
        memcpy(e[k].shape, arr[k].shape, sizeof e[k].shape);
        e[k].data = arr[k].data;
        if (reshape && !strcmp(nm, reshape)) {
            e[k].shape[0] -= 1; /* fewer values: data is a prefix of the real one */
        }
        k++;
    }
    xattn_st_close(st);
    char tmp[256];
    snprintf(tmp, sizeof tmp, "/tmp/test_interlaced_%ld.safetensors", (long)getpid());
    /* heads 2 as the fixture (the default 6 does not divide dim 16), then the extra entry */
    const char *meta[4] = {"heads", "2", mk, mv};
    if (mk && !strcmp(mk, "heads")) meta[1] = mv;
    CHECK_OK(xattn_st_save(tmp, e, k, meta, mk && strcmp(mk, "heads") ? 2 : 1));
    xattn_safetensors *st2 = NULL;
    CHECK_OK(xattn_st_open(tmp, &st2));
    unlink(tmp);
    if (st2) {
        xattn_interlaced *m = NULL;
        if (want == XATTN_OK) {
            CHECK_OK(xattn_interlaced_load(st2, prefix, NULL, &m));
            CHECK(m != NULL);
        } else {
            CHECK_FAIL(xattn_interlaced_load(st2, prefix, NULL, &m), want);
            CHECK(m == NULL);
            if (needle && !strstr(xattn_last_error(), needle)) {
                tu_failures++;
                fprintf(stderr, "message '%s' does not contain '%s'\n", xattn_last_error(), needle);
            }
        }
        xattn_interlaced_free(m);
        xattn_st_close(st2);
    }
    for (size_t i = 0; i < k; i++) xattn_array_free(&arr[i]);
    free(e);
    free(arr);
    free(names);
}

static void test_errors(void)
{
    derived("model.decoder.", NULL, NULL, NULL, NULL, XATTN_OK, NULL);
    derived("", "blocks.1.attn.k_map.weight", NULL, NULL, NULL, XATTN_ERR_NOT_FOUND,
            "'blocks.1.attn.k_map.weight' is missing");
    derived("", "blocks.0.mlp.fc1.weight", NULL, NULL, NULL, XATTN_ERR_NOT_FOUND,
            "blocks.0.mlp.fc1.weight");
    derived("", "blocks.1.self_attn.proj.bias", NULL, NULL, NULL, XATTN_ERR_NOT_FOUND,
            "blocks.1.self_attn.proj.bias");
    derived("", NULL, "blocks.1.attn.proj.weight", NULL, NULL, XATTN_ERR_SHAPE,
            "'blocks.1.attn.proj.weight' has shape (15, 16)");
    derived("", NULL, "blocks.0.mlp.fc2.bias", NULL, NULL, XATTN_ERR_SHAPE,
            "blocks.0.mlp.fc2.bias");
    derived("", NULL, NULL, "heads", "zero", XATTN_ERR_FORMAT, "heads");
    derived("", NULL, NULL, "n_cls", "-1", XATTN_ERR_FORMAT, "n_cls");
    derived("", NULL, NULL, "first", "sideways", XATTN_ERR_FORMAT, "first");
    derived("", NULL, NULL, "n_cls", "0", XATTN_OK, NULL);
    derived("", NULL, NULL, "heads", "6", XATTN_ERR_SHAPE, "not divisible by heads 6");
}

int main(void)
{
    for (size_t i = 0; i < sizeof FIXTURES / sizeof FIXTURES[0]; i++) run_fixture(FIXTURES[i]);
    printf("worst: out %.2e, logits %.2e (tolerance %.0e * (1 + |ref|))\n", g_worst_out, g_worst_lg,
           TU_TOL);
    test_opts();
    test_errors();
    return tu_finish("test_interlaced");
}
