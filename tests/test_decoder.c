/*
 * xattn_decoder_* against fixtures from the real transformers BertEncoder / BertLayer
 * (is_decoder=True, add_cross_attention=True; tests/reference/gen_decoder.py), full forward at
 * threads 1 and 2 and kernel sets auto and scalar; incremental decoding (one token per step and
 * mixed step sizes) == the reference on 1, 2 and 3 layers with padded memories; the modality
 * projector; load and argument errors.
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const FIXTURES[] = {"decoder_layer", "decoder_l1",       "decoder_l2",
                                       "decoder_l3",    "decoder_defaults", "decoder_av"};

static double g_worst, g_worst_inc;

static xattn_status fwd(const xattn_decoder *m, int64_t B, int64_t T, const float *x,
                        const uint8_t *am, int64_t M, const float *mem, const uint8_t *mm,
                        float *out)
{
    xattn_decoder_inputs in = {B, T, M, x, am, mem, mm, {0}};
    xattn_decoder_outputs o = {out, {0}};
    return xattn_decoder_forward(NULL, m, &in, &o);
}

/* 1 if row t of batch b has no kept key among 0..t (transformers: uniform over ALL T keys,
 * which incremental decoding cannot see). */
static int fully_masked(const uint8_t *am, int64_t T, int64_t b, int64_t t)
{
    if (!am) return 0;
    for (int64_t j = 0; j <= t; j++)
        if (am[b * T + j]) return 0;
    return 1;
}

/* Incremental decoding with steps of the sizes in `steps` (cycled), compared row by row. */
static void run_incremental(const xattn_decoder *m, const char *name, int64_t B, int64_t T,
                            int64_t M, const float *x, const uint8_t *am, const float *mem,
                            const uint8_t *mm, const float *ref, const int *steps, int nsteps,
                            int64_t max_step)
{
    xattn_decoder_config c;
    xattn_decoder_get_config(m, &c);
    const int64_t h = c.hidden;
    xattn_decoder_state *s = NULL;
    if (max_step > T) max_step = T;
    CHECK_OK(xattn_decoder_state_new(m, B, T, max_step, &s));
    if (!s) return;
    float *xs = malloc((size_t)(B * max_step * h) * sizeof(float));
    float *ys = malloc((size_t)(B * max_step * h) * sizeof(float));
    uint8_t *ms = malloc((size_t)(B * max_step));
    for (int rep = 0; rep < 2; rep++) { /* second pass: reset and decode again (cache reuse) */
        if (rep == 0)
            CHECK_OK(xattn_decoder_set_memory(NULL, s, M, mem, mm));
        else
            xattn_decoder_reset(s);
        int64_t pos = 0;
        int k = 0;
        while (pos < T) {
            int64_t n = steps[k++ % nsteps];
            if (n > max_step) n = max_step;
            if (n > T - pos) n = T - pos;
            for (int64_t b = 0; b < B; b++) {
                memcpy(xs + b * n * h, x + (b * T + pos) * h, (size_t)(n * h) * sizeof(float));
                for (int64_t i = 0; i < n; i++) ms[b * n + i] = am ? am[b * T + pos + i] : 1;
            }
            xattn_status st = xattn_decoder_step(NULL, s, n, xs, am ? ms : NULL, ys);
            CHECK_OK(st);
            if (st) break;
            CHECK(xattn_decoder_position(s) == pos + n);
            for (int64_t b = 0; b < B; b++)
                for (int64_t i = 0; i < n; i++) {
                    if (fully_masked(am, T, b, pos + i)) continue;
                    char what[256];
                    snprintf(what, sizeof what, "%s incremental row b=%lld t=%lld (step %lld)",
                             name, (long long)b, (long long)(pos + i), (long long)n);
                    double e = tu_check_close(what, ys + (b * n + i) * h,
                                              ref + (b * T + pos + i) * h, h, TU_TOL);
                    if (e > g_worst_inc) g_worst_inc = e;
                }
            pos += n;
        }
    }
    /* past max_len */
    CHECK_FAIL(xattn_decoder_step(NULL, s, 1, xs, NULL, ys), XATTN_ERR_SHAPE);
    free(xs);
    free(ys);
    free(ms);
    xattn_decoder_state_free(s);
}

static void run_fixture(const char *name)
{
    char file[256];
    snprintf(file, sizeof file, "%s.safetensors", name);
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(file), &st));
    if (!st) return;
    xattn_decoder *m = NULL;
    CHECK_OK(xattn_decoder_load(st, "", NULL, &m));
    if (!m) {
        xattn_st_close(st);
        return;
    }
    xattn_decoder_config cfg;
    xattn_decoder_get_config(m, &cfg);
    CHECK(cfg.heads == strtoll(xattn_st_meta_get(st, "heads"), NULL, 10));
    CHECK(cfg.layers == strtoll(xattn_st_meta_get(st, "layers"), NULL, 10));
    const char *e = xattn_st_meta_get(st, "layer_norm_eps");
    double eps = e ? strtod(e, NULL) : 1e-12;
    CHECK(fabs(cfg.layer_norm_eps - eps) <= 1e-6 * eps);

    xattn_array ax, amem, aref, aam, amm;
    memset(&aam, 0, sizeof aam);
    memset(&amm, 0, sizeof amm);
    const float *x = tu_get_f32(st, "input.x", &ax);
    const float *mem = tu_get_f32(st, "input.memory", &amem);
    const float *ref = tu_get_f32(st, "expected.out", &aref);
    const int64_t B = ax.shape[0], T = ax.shape[1], M = amem.shape[1], h = cfg.hidden;
    const uint8_t *am = NULL, *mm = NULL;
    if (xattn_st_find(st, "input.attention_mask") >= 0) {
        CHECK_OK(xattn_st_get(st, "input.attention_mask", XATTN_BOOL, &aam));
        am = aam.data;
    }
    if (xattn_st_find(st, "input.memory_mask") >= 0) {
        CHECK_OK(xattn_st_get(st, "input.memory_mask", XATTN_BOOL, &amm));
        mm = amm.data;
    }
    const int64_t no = B * T * h;
    float *out = malloc((size_t)no * sizeof(float));
    const char *isas[] = {"auto", "scalar"};
    for (int ii = 0; ii < 2; ii++) {
        CHECK_OK(xattn_set_isa(isas[ii]));
        for (int t = 1; t <= 2; t++) {
            xattn_set_threads(t);
            memset(out, 0xff, (size_t)no * sizeof(float));
            CHECK_OK(fwd(m, B, T, x, am, M, mem, mm, out));
            char what[256];
            snprintf(what, sizeof what, "%s out (isa %s, threads %d)", name, isas[ii], t);
            double err = tu_check_close(what, out, ref, no, TU_TOL);
            if (err > g_worst) g_worst = err;
        }
        static const int one[] = {1}, mixed[] = {2, 1, 3, 4, 1};
        run_incremental(m, name, B, T, M, x, am, mem, mm, ref, one, 1, 1);
        run_incremental(m, name, B, T, M, x, am, mem, mm, ref, mixed, 5, 4);
    }
    CHECK_OK(xattn_set_isa("auto"));
    xattn_set_threads(0);

    if (cfg.video_dim && cfg.audio_dim) { /* the projector */
        xattn_array av, aa, aem;
        const float *video = tu_get_f32(st, "input.video", &av);
        const float *audio = tu_get_f32(st, "input.audio", &aa);
        const float *em = tu_get_f32(st, "expected.memory", &aem);
        float *pm = malloc((size_t)(B * M * cfg.memory_dim) * sizeof(float));
        CHECK_OK(xattn_decoder_project(NULL, m, B, video, av.shape[1], av.shape[2], audio,
                                       aa.shape[1], aa.shape[2], pm));
        tu_check_close("projected memory", pm, em, B * M * cfg.memory_dim, TU_TOL);
        CHECK_OK(fwd(m, B, T, x, am, M, pm, mm, out));
        tu_check_close("out from the projected memory", out, ref, no, TU_TOL);
        /* video only: the first Nv rows of the T-AV memory */
        float *pv = malloc((size_t)(B * av.shape[2] * cfg.memory_dim) * sizeof(float));
        CHECK_OK(
            xattn_decoder_project(NULL, m, B, video, av.shape[1], av.shape[2], NULL, 0, 0, pv));
        for (int64_t b = 0; b < B; b++)
            tu_check_close("video-only memory", pv + b * av.shape[2] * cfg.memory_dim,
                           em + b * M * cfg.memory_dim, av.shape[2] * cfg.memory_dim, TU_TOL);
        CHECK_FAIL(xattn_decoder_project(NULL, m, B, NULL, 0, 0, NULL, 0, 0, pv), XATTN_ERR_SHAPE);
        free(pv);
        free(pm);
        xattn_array_free(&av);
        xattn_array_free(&aa);
        xattn_array_free(&aem);
    }
    free(out);
    xattn_array_free(&ax);
    xattn_array_free(&amem);
    xattn_array_free(&aref);
    xattn_array_free(&aam);
    xattn_array_free(&amm);
    xattn_decoder_free(m);
    xattn_st_close(st);
}

/* Copies fixture src to path, dropping tensor `drop` and flattening `reshape` to 1-D. */
static void rewrite(const char *src, const char *path, const char *drop, const char *reshape,
                    const char *const *meta, size_t n_meta)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(src), &st));
    if (!st) return;
    size_t n = xattn_st_count(st), k = 0;
    xattn_st_entry *e = calloc(n, sizeof *e);
    xattn_array *arr = calloc(n, sizeof *arr);
    for (size_t i = 0; i < n; i++) {
        const char *name = xattn_st_name(st, i);
        if (drop && !strcmp(name, drop)) continue;
        CHECK_OK(xattn_st_get(st, name, XATTN_F32, &arr[k]));
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
    snprintf(path, sizeof path, "/tmp/xattn_test_decoder_%d.safetensors", (int)getpid());
    const char *meta[] = {"heads", "4"};
    xattn_safetensors *st = NULL;
    xattn_decoder *m = NULL;

    rewrite("decoder_l2.safetensors", path, "layer.1.crossattention.output.dense.bias", NULL, meta,
            1);
    CHECK_OK(xattn_st_open(path, &st));
    CHECK_FAIL(xattn_decoder_load(st, "", NULL, &m), XATTN_ERR_NOT_FOUND);
    CHECK(strstr(xattn_last_error(), "layer.1.crossattention.output.dense.bias") != NULL);
    CHECK(m == NULL);
    xattn_st_close(st);

    rewrite("decoder_l2.safetensors", path, NULL, "layer.0.intermediate.dense.weight", meta, 1);
    CHECK_OK(xattn_st_open(path, &st));
    CHECK_FAIL(xattn_decoder_load(st, "", NULL, &m), XATTN_ERR_SHAPE);
    CHECK(strstr(xattn_last_error(), "layer.0.intermediate.dense.weight") != NULL);
    xattn_st_close(st);

    const char *bad[] = {"heads", "5"};
    rewrite("decoder_l1.safetensors", path, NULL, NULL, bad, 1);
    CHECK_OK(xattn_st_open(path, &st));
    CHECK_FAIL(xattn_decoder_load(st, "", NULL, &m), XATTN_ERR_SHAPE);
    CHECK(strstr(xattn_last_error(), "divisible") != NULL);
    CHECK_FAIL(xattn_decoder_load(st, "nope.", NULL, &m), XATTN_ERR_NOT_FOUND);
    CHECK(strstr(xattn_last_error(), "nope.layer.0.attention.self.query.weight") != NULL);
    xattn_decoder_opts o;
    memset(&o, 0, sizeof o);
    o.heads = 2;
    o.layer_norm_eps = 1e-3;
    CHECK_OK(xattn_decoder_load(st, "", &o, &m));
    xattn_decoder_config c;
    xattn_decoder_get_config(m, &c);
    CHECK(c.heads == 2 && fabsf(c.layer_norm_eps - 1e-3f) < 1e-9f && c.video_dim == 0);
    xattn_st_close(st);
    unlink(path);

    /* argument errors */
    float x[2 * 16] = {0}, y[2 * 16], mem[16] = {0};
    xattn_decoder_state *s = NULL;
    CHECK_FAIL(xattn_decoder_state_new(m, 1, 4, 5, &s), XATTN_ERR_SHAPE);
    CHECK_FAIL(xattn_decoder_state_new(m, 0, 4, 1, &s), XATTN_ERR_SHAPE);
    CHECK_OK(xattn_decoder_state_new(m, 1, 2, 2, &s));
    CHECK_FAIL(xattn_decoder_step(NULL, s, 1, x, NULL, y), XATTN_ERR_ARG); /* no memory */
    CHECK(strstr(xattn_last_error(), "memory") != NULL);
    CHECK_FAIL(xattn_decoder_set_memory(NULL, s, 0, mem, NULL), XATTN_ERR_SHAPE);
    CHECK_OK(xattn_decoder_set_memory(NULL, s, 1, mem, NULL));
    CHECK_FAIL(xattn_decoder_step(NULL, s, 3, x, NULL, y), XATTN_ERR_SHAPE);
    CHECK_OK(xattn_decoder_step(NULL, s, 2, x, NULL, y));
    CHECK_FAIL(xattn_decoder_step(NULL, s, 1, x, NULL, y), XATTN_ERR_SHAPE);
    CHECK(strstr(xattn_last_error(), "max_len") != NULL);
    CHECK_FAIL(fwd(m, 1, 0, x, NULL, 1, mem, NULL, y), XATTN_ERR_SHAPE);
    CHECK_FAIL(fwd(NULL, 1, 1, x, NULL, 1, mem, NULL, y), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_decoder_project(NULL, m, 1, x, 1, 1, NULL, 0, 0, y), XATTN_ERR_NOT_FOUND);
    xattn_decoder_state_free(s);
    xattn_decoder_free(m);
    CHECK_FAIL(xattn_decoder_load(NULL, "", NULL, &m), XATTN_ERR_ARG);
}

int main(void)
{
    for (size_t i = 0; i < sizeof FIXTURES / sizeof *FIXTURES; i++) run_fixture(FIXTURES[i]);
    printf("decoder: worst full-forward error %.3g, worst incremental error %.3g (tol %.1g)\n",
           g_worst, g_worst_inc, TU_TOL);
    test_errors();
    return tu_finish("decoder");
}
