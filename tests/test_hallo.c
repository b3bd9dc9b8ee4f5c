/* M7: HALLO region-masked audio-visual cross-attention and the mask pyramid, against float64
 * references (tests/reference/gen_hallo.py). */
#include "testutil.h"
#include "xattn.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *ISAS[2] = {"scalar", "auto"};

static xattn_status hl_forward(const xattn_hallo *m, const xattn_hallo_inputs *in, float *out,
                               float *regions)
{
    const xattn_hallo_outputs o = {.out = out, .regions = regions};
    return xattn_hallo_forward(NULL, m, in, &o);
}

static void parse_motion(const char *s, float *ms)
{
    char *end;
    for (int k = 0; k < 3; k++) {
        ms[k] = strtof(s, &end);
        s = end + (*end == ',');
    }
}

static void test_pyramid(void)
{
    xattn_safetensors *st;
    CHECK_OK(xattn_st_open(tu_fixture("hallo_pyramid.safetensors"), &st));
    if (!st) return;
    xattn_array in;
    const float *m = tu_get_f32(st, "input.masks", &in);
    int64_t n = in.shape[0] * in.shape[1], Hm = in.shape[2], Wm = in.shape[3];
    char sizes[512];
    snprintf(sizes, sizeof sizes, "%s", xattn_st_meta_get(st, "sizes"));
    double worst = 0;
    for (int ii = 0; ii < 2; ii++) {
        CHECK_OK(xattn_set_isa(ISAS[ii]));
        for (int th = 1; th <= 2; th++) {
            xattn_set_threads(th);
            for (char *tok = strtok(sizes, ";"); tok; tok = strtok(NULL, ";")) {
                long h = 0, w = 0;
                CHECK(sscanf(tok, "%ldx%ld", &h, &w) == 2);
                char name[64];
                snprintf(name, sizeof name, "expected.L_%ldx%ld", h, w);
                xattn_array ex;
                const float *ref = tu_get_f32(st, name, &ex);
                float *got = malloc((size_t)(n * h * w) * sizeof(float));
                CHECK_OK(xattn_resize_masks(m, n, Hm, Wm, h, w, got));
                double e = tu_check_close(name, got, ref, n * h * w, TU_TOL);
                if (e > worst) worst = e;
                free(got);
                xattn_array_free(&ex);
            }
            snprintf(sizes, sizeof sizes, "%s", xattn_st_meta_get(st, "sizes"));
        }
    }
    printf("mask pyramid: max rel err %.3g\n", worst);
    float o;
    CHECK_FAIL(xattn_resize_masks(m, n, Hm, 0, 1, 1, &o), XATTN_ERR_SHAPE);
    CHECK_FAIL(xattn_resize_masks(NULL, n, Hm, Wm, 1, 1, &o), XATTN_ERR_ARG);
    CHECK_OK(xattn_set_isa("auto"));
    xattn_set_threads(0);
    xattn_array_free(&in);
    xattn_st_close(st);
}

static void test_block(const char *fixture)
{
    xattn_safetensors *st;
    CHECK_OK(xattn_st_open(tu_fixture(fixture), &st));
    if (!st) return;
    xattn_hallo *m = NULL;
    CHECK_OK(xattn_hallo_load(st, "", NULL, &m));
    if (!m) {
        xattn_st_close(st);
        return;
    }
    xattn_hallo_config cfg;
    xattn_hallo_get_config(m, &cfg);
    CHECK(cfg.heads == atoi(xattn_st_meta_get(st, "heads")));
    xattn_array ax, aa, am, aout, areg, arm;
    const float *x = tu_get_f32(st, "input.x", &ax);
    const float *audio = tu_get_f32(st, "input.audio", &aa);
    const float *masks = tu_get_f32(st, "input.masks", &am);
    const float *ref = tu_get_f32(st, "expected.out", &aout);
    const float *rref = tu_get_f32(st, "expected.regions", &areg);
    xattn_hallo_inputs in = {0};
    in.B = ax.shape[0];
    in.N = ax.shape[1];
    in.T = aa.shape[1];
    in.x = x;
    in.audio = audio;
    in.masks = masks;
    in.mask_batch = am.shape[0];
    float ms[3];
    const char *msv = xattn_st_meta_get(st, "motion_scale");
    if (msv) {
        parse_motion(msv, ms);
        in.motion_scale = ms;
    }
    int64_t n = xattn_array_numel(&aout);
    float *out = malloc((size_t)n * sizeof(float)), *reg = malloc((size_t)n * 3 * sizeof(float));
    double worst = 0, wr = 0;
    for (int ii = 0; ii < 2; ii++) {
        CHECK_OK(xattn_set_isa(ISAS[ii]));
        for (int th = 1; th <= 2; th++) {
            xattn_set_threads(th);
            memset(out, 0xff, (size_t)n * sizeof(float));
            CHECK_OK(hl_forward(m, &in, out, NULL));
            double e = tu_check_close(fixture, out, ref, n, TU_TOL);
            if (e > worst) worst = e;
            memset(out, 0xff, (size_t)n * sizeof(float));
            CHECK_OK(hl_forward(m, &in, out, reg));
            e = tu_check_close(fixture, out, ref, n, TU_TOL);
            if (e > worst) worst = e;
            e = tu_check_close("regions", reg, rref, 3 * n, TU_TOL);
            if (e > wr) wr = e;
        }
    }
    /* full-resolution masks through the pyramid give the same result */
    if (xattn_st_find(st, "input.region_masks") >= 0) {
        const float *big = tu_get_f32(st, "input.region_masks", &arm);
        int64_t h = atoi(xattn_st_meta_get(st, "latent_h")),
                w = atoi(xattn_st_meta_get(st, "latent_w"));
        int64_t nm = arm.shape[0] * arm.shape[1];
        float *lm = malloc((size_t)(nm * h * w) * sizeof(float));
        CHECK_OK(xattn_resize_masks(big, nm, arm.shape[2], arm.shape[3], h, w, lm));
        tu_check_close("resized masks", lm, masks, nm * h * w, TU_TOL);
        in.masks = lm;
        CHECK_OK(hl_forward(m, &in, out, NULL));
        double e = tu_check_close("block from full-res masks", out, ref, n, TU_TOL);
        if (e > worst) worst = e;
        in.masks = masks;
        free(lm);
        xattn_array_free(&arm);
    }
    printf("%s: B=%lld N=%lld T=%lld dim=%lld heads=%lld: max rel err out %.3g, regions %.3g\n",
           fixture, (long long)in.B, (long long)in.N, (long long)in.T, (long long)cfg.dim,
           (long long)cfg.heads, worst, wr);
    /* bad inputs */
    xattn_hallo_inputs bad = in;
    bad.mask_batch = in.B + 1;
    CHECK_FAIL(hl_forward(m, &bad, out, NULL), XATTN_ERR_SHAPE);
    bad = in;
    bad.N = 0;
    CHECK_FAIL(hl_forward(m, &bad, out, NULL), XATTN_ERR_SHAPE);
    bad = in;
    bad.audio = NULL;
    CHECK_FAIL(hl_forward(m, &bad, out, NULL), XATTN_ERR_ARG);
    CHECK_FAIL(hl_forward(m, &in, (float *)x, NULL), XATTN_ERR_ARG);
    CHECK_OK(xattn_set_isa("auto"));
    xattn_set_threads(0);
    free(out);
    free(reg);
    xattn_array_free(&ax);
    xattn_array_free(&aa);
    xattn_array_free(&am);
    xattn_array_free(&aout);
    xattn_array_free(&areg);
    xattn_hallo_free(m);
    xattn_st_close(st);
}

/* Rebuilds a fixture's state dict without / with a wrong tensor and checks the load message. */
static void test_load_errors(void)
{
    xattn_safetensors *st;
    CHECK_OK(xattn_st_open(tu_fixture("hallo_len1.safetensors"), &st));
    if (!st) return;
    size_t cnt = xattn_st_count(st);
    xattn_st_entry *e = calloc(cnt, sizeof *e);
    xattn_array *arr = calloc(cnt, sizeof *arr);
    for (int variant = 0; variant < 3; variant++) {
        size_t k = 0;
        for (size_t i = 0; i < cnt; i++) {
            const char *name = xattn_st_name(st, i);
            if (!strncmp(name, "input.", 6) || !strncmp(name, "expected.", 9)) continue;
            if (variant == 0 && !strcmp(name, "zero_conv_lip.bias")) continue;
            if (variant == 1 && !strcmp(name, "attn2_1.to_k.weight")) continue;
            CHECK_OK(xattn_st_get(st, name, XATTN_F32, &arr[k]));
            if (variant == 2 && !strcmp(name, "ff.net.2.weight")) arr[k].shape[1] -= 1;
            e[k].name = name;
            e[k].dtype = XATTN_F32;
            e[k].ndim = arr[k].ndim;
            memcpy(e[k].shape, arr[k].shape, sizeof e[k].shape);
            e[k].data = arr[k].data;
            k++;
        }
        const char *meta[2] = {"heads", "2"};
        char path[256];
        snprintf(path, sizeof path, "/tmp/test_hallo_%ld_%d.safetensors", (long)getpid(), variant);
        CHECK_OK(xattn_st_save(path, e, k, meta, 1));
        xattn_safetensors *bad = NULL;
        CHECK_OK(xattn_st_open(path, &bad));
        xattn_hallo *m = NULL;
        static const xattn_status want[3] = {XATTN_ERR_NOT_FOUND, XATTN_ERR_NOT_FOUND,
                                             XATTN_ERR_SHAPE};
        static const char *const needle[3] = {"zero_conv_lip.bias", "attn2_1.to_k.weight",
                                              "ff.net.2.weight"};
        if (bad) {
            CHECK_FAIL(xattn_hallo_load(bad, "", NULL, &m), want[variant]);
            CHECK(m == NULL);
            CHECK(strstr(xattn_last_error(), needle[variant]) != NULL);
            printf("load error %d: %s\n", variant, xattn_last_error());
            xattn_st_close(bad);
        }
        remove(path);
        for (size_t i = 0; i < k; i++) xattn_array_free(&arr[i]);
    }
    free(e);
    free(arr);
    xattn_st_close(st);
}

int main(void)
{
    test_pyramid();
    test_block("hallo_basic.safetensors");
    test_block("hallo_len1.safetensors");
    test_block("hallo_odd.safetensors");
    test_block("hallo_tokens257.safetensors");
    test_block("hallo_fullres.safetensors");
    test_load_errors();
    return tu_finish("test_hallo");
}
