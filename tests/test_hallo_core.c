/*
 * HALLO's audio block on the module core: create -> save -> reload (parameters and forward
 * identical), an all-zero options struct gives the reference's defaults, the initialisation
 * against the reference's (zero_module()d 1x1 convolutions, diffusers Attention / FeedForward
 * nn.Linear layers, nn.LayerNorm), and the named forward against the typed one on fixtures,
 * with masks at the latent's size or at any size (region_masks, resized by the kind).
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

static xattn_module *create(uint64_t seed, const xattn_option *o, size_t n)
{
    xattn_module *m = NULL;
    CHECK_OK(xattn_module_create("hallo-audio", o, n, seed, &m));
    return m;
}

/* The named forward of m on fixed inputs (B=2, N=12, T=5, shared masks, motion scales). */
static void named(const xattn_module *m, int64_t C, int64_t Ca, float *out, float *regions)
{
    const int64_t B = 2, N = 12, T = 5;
    float *x = malloc(sizeof(float) * B * N * C), *a = malloc(sizeof(float) * B * T * Ca);
    float mk[3 * N], ms[3] = {1.0f, 0.5f, -2.0f};
    for (int64_t i = 0; i < B * N * C; i++) x[i] = (float)sin(0.37 * (double)i);
    for (int64_t i = 0; i < B * T * Ca; i++) a[i] = (float)cos(0.11 * (double)i);
    for (int64_t i = 0; i < 3 * N; i++) mk[i] = (float)(i % 5) / 4.0f;
    xattn_tensor in[4] = {{"hidden_states", XATTN_F32, 3, {B, N, C}, x},
                          {"encoder_hidden_states", XATTN_F32, 3, {B, T, Ca}, a},
                          {"masks", XATTN_F32, 3, {1, 3, N}, mk},
                          {"motion_scale", XATTN_F32, 1, {3}, ms}};
    xattn_tensor o[2] = {{"out", XATTN_F32, 3, {B, N, C}, out},
                         {"regions", XATTN_F32, 4, {3, B, N, C}, regions}};
    CHECK_OK(xattn_module_forward(NULL, m, in, 4, o, regions ? 2 : 1));
    free(x);
    free(a);
}

static void round_trip(int bias)
{
    char f[128];
    snprintf(f, sizeof f, "/tmp/test_hallo_core_%ld.safetensors", (long)getpid());
    const xattn_option o[5] = {{"dim", "32"},
                               {"cross_attention_dim", "24"},
                               {"heads", "4"},
                               {"dim_head", "6"},
                               {"attention_bias", bias ? "True" : "False"}};
    xattn_module *m = create(7, o, 5);
    if (!m) return;
    /* zero_module()d convolutions would hide the attentions: give them values */
    xattn_param_desc p;
    for (size_t i = 0; i < xattn_module_param_count(m); i++) {
        CHECK_OK(xattn_module_param(m, i, &p));
        for (int64_t j = 0; p.data && !strncmp(p.name, "zero_conv", 9) && j < tu_param_numel(&p);
             j++)
            p.data[j] = 0.05f * (float)sin((double)(j + 3 * i));
    }
    CHECK(tu_param(m, "attn2_2.to_v.bias", &p) && (p.data != NULL) == bias);
    CHECK_OK(xattn_module_save(m, f));
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(f, &st));
    unlink(f);
    xattn_open_opts oo = {.kind = "hallo-audio"};
    xattn_module *r = NULL;
    if (st) CHECK_OK(xattn_module_open(st, &oo, &r));
    if (!r) return;
    CHECK(xattn_module_param_count(r) == xattn_module_param_count(m));
    for (size_t i = 0; i < xattn_module_param_count(m); i++) {
        xattn_param_desc a, b;
        CHECK_OK(xattn_module_param(m, i, &a));
        CHECK_OK(xattn_module_param(r, i, &b));
        CHECK(!strcmp(a.name, b.name) && (a.data == NULL) == (b.data == NULL));
        CHECK(!a.data || !memcmp(a.data, b.data, (size_t)tu_param_numel(&a) * 4));
    }
    for (size_t i = 0; i < xattn_module_config_count(m); i++) {
        xattn_config_entry a, b;
        CHECK_OK(xattn_module_config(m, i, &a));
        CHECK_OK(xattn_module_config(r, i, &b));
        CHECK(!strcmp(a.name, b.name) && !strcmp(a.value, b.value));
    }
    CHECK(xattn_module_warnings(r)[0] == '\0');
    /* the created module by name, the reloaded one by name and through the typed API */
    const int64_t n = 2 * 12 * 32;
    float *o1 = calloc(n, 4), *o2 = calloc(n, 4), *o3 = calloc(n, 4), *r1 = calloc(3 * n, 4);
    float *r2 = calloc(3 * n, 4), *r3 = calloc(3 * n, 4);
    named(m, 32, 24, o1, r1);
    named(r, 32, 24, o2, r2);
    CHECK(!memcmp(o1, o2, (size_t)n * 4) && !memcmp(r1, r2, (size_t)n * 12));
    named(r, 32, 24, o2, NULL); /* without regions: the scale is folded differently */
    tu_check_close("out without regions", o2, o1, n, TU_TOL);
    xattn_hallo *t = NULL;
    CHECK_OK(xattn_hallo_load(st, "", NULL, &t));
    if (t) {
        xattn_hallo_config c;
        xattn_hallo_get_config(t, &c);
        CHECK(c.dim == 32 && c.audio_dim == 24 && c.heads == 4 && c.head_dim == 6 &&
              c.inner_dim == 24 && c.ff_inner == 128);
        float *x = malloc(sizeof(float) * n), *a = malloc(sizeof(float) * 2 * 5 * 24);
        float mk[36], ms[3] = {1.0f, 0.5f, -2.0f};
        for (int64_t i = 0; i < n; i++) x[i] = (float)sin(0.37 * (double)i);
        for (int64_t i = 0; i < 2 * 5 * 24; i++) a[i] = (float)cos(0.11 * (double)i);
        for (int64_t i = 0; i < 36; i++) mk[i] = (float)(i % 5) / 4.0f;
        const xattn_hallo_inputs in = {.B = 2,
                                       .N = 12,
                                       .T = 5,
                                       .x = x,
                                       .audio = a,
                                       .masks = mk,
                                       .mask_batch = 1,
                                       .motion_scale = ms};
        const xattn_hallo_outputs out = {.out = o3, .regions = r3};
        CHECK_OK(xattn_hallo_forward(NULL, t, &in, &out));
        CHECK(!memcmp(o1, o3, (size_t)n * 4) && !memcmp(r1, r3, (size_t)n * 12));
        CHECK(isfinite(o1[0]) && isfinite(o1[n - 1]) && o1[5] != x[5]);
        free(x);
        free(a);
    }
    xattn_hallo_free(t);
    free(o1), free(o2), free(o3), free(r1), free(r2), free(r3);
    xattn_module_free(r);
    xattn_module_free(m);
    xattn_st_close(st);
}

static void init_distribution(void)
{
    const int64_t C = 96, Ca = 80, inner = 4 * 40, F = 4 * C;
    const xattn_option o[5] = {{"dim", "96"},
                               {"cross_attention_dim", "80"},
                               {"heads", "4"},
                               {"dim_head", "40"},
                               {"attention_bias", "True"}};
    xattn_module *m = create(3, o, 5);
    if (!m) return;
    static const char *const zc[3] = {"full", "face", "lip"};
    char nm[64];
    for (int k = 0; k < 3; k++) {
        snprintf(nm, sizeof nm, "zero_conv_%s.weight", zc[k]); /* zero_module() */
        tu_check_const(m, nm, 0.0f);
        snprintf(nm, sizeof nm, "zero_conv_%s.bias", zc[k]);
        tu_check_const(m, nm, 0.0f);
        /* diffusers Attention: nn.Linear layers */
        snprintf(nm, sizeof nm, "attn2_%d.to_q.weight", k);
        tu_check_uniform(m, nm, 1 / sqrt((double)C));
        snprintf(nm, sizeof nm, "attn2_%d.to_q.bias", k);
        tu_check_uniform(m, nm, 1 / sqrt((double)C));
        snprintf(nm, sizeof nm, "attn2_%d.to_k.weight", k);
        tu_check_uniform(m, nm, 1 / sqrt((double)Ca));
        snprintf(nm, sizeof nm, "attn2_%d.to_v.bias", k);
        tu_check_uniform(m, nm, 1 / sqrt((double)Ca));
        snprintf(nm, sizeof nm, "attn2_%d.to_out.0.weight", k);
        tu_check_uniform(m, nm, 1 / sqrt((double)inner));
        snprintf(nm, sizeof nm, "attn2_%d.to_out.0.bias", k);
        tu_check_uniform(m, nm, 1 / sqrt((double)inner));
    }
    /* FeedForward(dim, activation_fn="geglu"): GEGLU's proj and the output Linear */
    tu_check_uniform(m, "ff.net.0.proj.weight", 1 / sqrt((double)C));
    tu_check_uniform(m, "ff.net.0.proj.bias", 1 / sqrt((double)C));
    tu_check_uniform(m, "ff.net.2.weight", 1 / sqrt((double)F));
    tu_check_uniform(m, "ff.net.2.bias", 1 / sqrt((double)F));
    tu_check_const(m, "norm2.weight", 1.0f);
    tu_check_const(m, "norm2.bias", 0.0f);
    tu_check_const(m, "norm3.weight", 1.0f);
    tu_check_const(m, "norm3.bias", 0.0f);
    xattn_module_free(m);
}

static void zero_options(void)
{
    /* a new module: diffusers' heads=8, dim_head=64, FeedForward's mult=4, bias=False */
    const xattn_option o[2] = {{"dim", "16"}, {"cross_attention_dim", "8"}};
    xattn_module *m = create(1, o, 2);
    CHECK(m && !strcmp(config(m, "heads"), "8") && !strcmp(config(m, "dim_head"), "64") &&
          !strcmp(config(m, "inner"), "512") && !strcmp(config(m, "ff_inner_dim"), "64") &&
          !strcmp(config(m, "attention_bias"), "False"));
    xattn_module_free(m);
    xattn_module *bad = NULL;
    const xattn_option wrong[2] = {{"dim", "16"}, {"cross_attention_dim", "8x"}};
    CHECK_FAIL(xattn_module_create("hallo-audio", wrong, 2, 0, &bad), XATTN_ERR_ARG);
    has("option 'cross_attention_dim' is \"8x\", not a positive integer");
    /* a file without __metadata__: all-zero options = NULL = heads 8, announced */
    xattn_safetensors *src = NULL, *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("hallo_basic.safetensors"), &src));
    if (!src) return;
    size_t n = xattn_st_count(src), k = 0;
    xattn_st_entry *e = calloc(n, sizeof *e);
    xattn_array *a = calloc(n, sizeof *a);
    for (size_t i = 0; i < n; i++) {
        const char *nm = xattn_st_name(src, i);
        if (!strncmp(nm, "input.", 6) || !strncmp(nm, "expected.", 9)) continue;
        CHECK_OK(xattn_st_get(src, nm, XATTN_F32, &a[k]));
        e[k] = (xattn_st_entry){nm, XATTN_F32, a[k].ndim, {0}, a[k].data};
        memcpy(e[k].shape, a[k].shape, sizeof e[k].shape);
        k++;
    }
    char f[128];
    snprintf(f, sizeof f, "/tmp/test_hallo_core_%ld_z.safetensors", (long)getpid());
    CHECK_OK(xattn_st_save(f, e, k, NULL, 0));
    CHECK_OK(xattn_st_open(f, &st));
    unlink(f);
    xattn_hallo_opts zero;
    memset(&zero, 0, sizeof zero);
    xattn_hallo *h1 = NULL, *h2 = NULL;
    CHECK_OK(xattn_hallo_load(st, "", &zero, &h1));
    CHECK_OK(xattn_hallo_load(st, "", NULL, &h2));
    if (h1 && h2) {
        xattn_hallo_config c1, c2;
        xattn_hallo_get_config(h1, &c1);
        xattn_hallo_get_config(h2, &c2);
        CHECK(c1.heads == 8 && c1.inner_dim == 32 && c1.head_dim == 4);
        CHECK(!memcmp(&c1, &c2, sizeof c1));
    }
    xattn_open_opts oo = {.kind = "hallo-audio"};
    CHECK_OK(xattn_module_open(st, &oo, &m));
    CHECK(m && strstr(xattn_module_warnings(m), "heads: not given"));
    xattn_module_free(m);
    /* heads that do not divide the inner width, and a dim_head that disagrees */
    xattn_option h3[1] = {{"heads", "3"}};
    oo.options = h3;
    oo.n_options = 1;
    CHECK_FAIL(xattn_module_open(st, &oo, &m), XATTN_ERR_SHAPE);
    has("inner dim 32 (rows of attn2_0.to_q.weight) is not divisible by heads 3");
    xattn_option dh[2] = {{"heads", "4"}, {"dim_head", "4"}};
    oo.options = dh;
    oo.n_options = 2;
    CHECK_FAIL(xattn_module_open(st, &oo, &m), XATTN_ERR_SHAPE);
    has("option dim_head = 4 disagrees");
    xattn_hallo_free(h1);
    xattn_hallo_free(h2);
    xattn_st_close(st);
    /* a diffusers Attention with a feature the block does not compute (qk norm) is refused */
    float ones[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    e[k] = (xattn_st_entry){"attn2_1.norm_q.weight", XATTN_F32, 1, {8}, ones};
    CHECK_OK(xattn_st_save(f, e, k + 1, NULL, 0));
    CHECK_OK(xattn_st_open(f, &st));
    unlink(f);
    CHECK_FAIL(xattn_hallo_load(st, "", NULL, &h1), XATTN_ERR_UNSUPPORTED);
    has("tensor 'attn2_1.norm_q.weight': a diffusers Attention with more than to_q");
    for (size_t i = 0; i < k; i++) xattn_array_free(&a[i]);
    free(a);
    free(e);
    xattn_st_close(st);
    xattn_st_close(src);
}

/* The registry's forward by names equals the typed forward on the fixtures. */
static void named_forward(const char *fixture)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(fixture), &st));
    if (!st) return;
    xattn_open_opts oo = {.kind = "hallo-audio"};
    xattn_module *r = NULL;
    xattn_hallo *t = NULL;
    CHECK_OK(xattn_module_open(st, &oo, &r));
    CHECK_OK(xattn_hallo_load(st, "", NULL, &t));
    if (!r || !t) return;
    xattn_array ax, aa, am, ae;
    const float *x = tu_get_f32(st, "input.x", &ax), *au = tu_get_f32(st, "input.audio", &aa);
    const float *mk = tu_get_f32(st, "input.masks", &am);
    tu_get_f32(st, "expected.out", &ae);
    float ms[3] = {0.7f, 1.3f, -0.4f};
    const int64_t n = xattn_array_numel(&ae);
    float *o1 = calloc((size_t)n, 4), *o2 = calloc((size_t)n, 4);
    float *r1 = calloc((size_t)n * 3, 4), *r2 = calloc((size_t)n * 3, 4);
    const xattn_hallo_inputs in = {.B = ax.shape[0],
                                   .N = ax.shape[1],
                                   .T = aa.shape[1],
                                   .x = x,
                                   .audio = au,
                                   .masks = mk,
                                   .mask_batch = am.shape[0],
                                   .motion_scale = ms};
    const xattn_hallo_outputs out = {.out = o1, .regions = r1};
    CHECK_OK(xattn_hallo_forward(NULL, t, &in, &out));
    xattn_tensor ti[4] = {{"hidden_states", XATTN_F32, 3, {0}, (void *)x},
                          {"encoder_hidden_states", XATTN_F32, 3, {0}, (void *)au},
                          {"masks", XATTN_F32, 3, {0}, (void *)mk},
                          {"motion_scale", XATTN_F32, 1, {3}, ms}};
    memcpy(ti[0].shape, ax.shape, sizeof ax.shape);
    memcpy(ti[1].shape, aa.shape, sizeof aa.shape);
    memcpy(ti[2].shape, am.shape, sizeof am.shape);
    xattn_tensor to[2] = {{"out", XATTN_F32, 0, {0}, NULL}, {"regions", XATTN_F32, 0, {0}, NULL}};
    CHECK_OK(xattn_module_plan(r, ti, 4, to, 2));
    CHECK(to[0].ndim == 3 && to[1].ndim == 4 && to[1].shape[0] == 3);
    to[0].data = o2;
    to[1].data = r2;
    xattn_ctx *ctx = NULL;
    CHECK_OK(xattn_ctx_new(&ctx));
    CHECK_OK(xattn_ctx_set_threads(ctx, 1));
    CHECK_OK(xattn_module_forward(ctx, r, ti, 4, to, 2));
    CHECK(!memcmp(o1, o2, (size_t)n * 4) && !memcmp(r1, r2, (size_t)n * 12));
    /* without motion_scale: the reference's 1, 1, 1 (the fixture's expected output when it has
     * no motion scales) */
    if (!xattn_st_meta_get(st, "motion_scale")) {
        CHECK_OK(xattn_module_forward(ctx, r, ti, 3, to, 1));
        tu_check_close(fixture, o2, ae.data, n, TU_TOL);
    }
    /* a mask batch that is neither 1 nor B */
    ti[2].shape[0] = ax.shape[0] + 1;
    CHECK_FAIL(xattn_module_forward(ctx, r, ti, 4, to, 1), XATTN_ERR_SHAPE);
    has("input 'masks'");
    xattn_ctx_free(ctx);
    free(o1), free(o2), free(r1), free(r2);
    xattn_array_free(&ax), xattn_array_free(&aa), xattn_array_free(&am), xattn_array_free(&ae);
    xattn_hallo_free(t);
    xattn_module_free(r);
    xattn_st_close(st);
}

/* Masks at any resolution (region_masks) resized by the kind to the latent grid (option
 * latent_hw, else a square), against the reference (hallo_fullres: 40x36 masks, 8x6 latent), and
 * the errors of the grid and of the two mask inputs. */
static void named_region_masks(void)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("hallo_fullres.safetensors"), &st));
    if (!st) return;
    const xattn_option hw = {"latent_hw", "8,6"}, hw7 = {"latent_hw", "7,7"};
    const xattn_option bad = {"latent_hw", "8"};
    xattn_open_opts oo = {.kind = "hallo-audio", .options = &hw, .n_options = 1};
    xattn_module *r = NULL, *sq = NULL, *r7 = NULL;
    CHECK_OK(xattn_module_open(st, &oo, &r));
    xattn_open_opts o0 = {.kind = "hallo-audio"};
    CHECK_OK(xattn_module_open(st, &o0, &sq));
    oo.options = &hw7;
    CHECK_OK(xattn_module_open(st, &oo, &r7));
    oo.options = &bad;
    xattn_module *rb = NULL;
    CHECK_FAIL(xattn_module_open(st, &oo, &rb), XATTN_ERR_ARG);
    has("option 'latent_hw' is \"8\", not two positive integers H,W");
    if (!r || !sq || !r7) return;
    xattn_array ax, aa, am, arm, ae, ar;
    const float *x = tu_get_f32(st, "input.x", &ax), *au = tu_get_f32(st, "input.audio", &aa);
    const float *mk = tu_get_f32(st, "input.masks", &am);
    const float *rm = tu_get_f32(st, "input.region_masks", &arm);
    tu_get_f32(st, "expected.out", &ae);
    tu_get_f32(st, "expected.regions", &ar);
    float ms[3] = {1.0f, 0.5f, 2.0f};
    const int64_t n = xattn_array_numel(&ae);
    float *o1 = calloc((size_t)n, 4), *o2 = calloc((size_t)n, 4), *r1 = calloc((size_t)n * 3, 4);
    xattn_tensor ti[5] = {{"hidden_states", XATTN_F32, 3, {0}, (void *)x},
                          {"encoder_hidden_states", XATTN_F32, 3, {0}, (void *)au},
                          {"motion_scale", XATTN_F32, 1, {3}, ms},
                          {"region_masks", XATTN_F32, 4, {0}, (void *)rm},
                          {"masks", XATTN_F32, 3, {0}, (void *)mk}};
    memcpy(ti[0].shape, ax.shape, sizeof ax.shape);
    memcpy(ti[1].shape, aa.shape, sizeof aa.shape);
    memcpy(ti[3].shape, arm.shape, sizeof arm.shape);
    memcpy(ti[4].shape, am.shape, sizeof am.shape);
    xattn_tensor to[2] = {{"out", XATTN_F32, 0, {0}, NULL}, {"regions", XATTN_F32, 0, {0}, NULL}};
    CHECK_OK(xattn_module_plan(r, ti, 4, to, 2));
    CHECK(to[0].ndim == 3 && to[0].shape[1] == 48 && to[1].ndim == 4);
    to[0].data = o1;
    to[1].data = r1;
    CHECK_OK(xattn_module_forward(NULL, r, ti, 4, to, 2));
    tu_check_close("region_masks out", o1, ae.data, n, TU_TOL);
    tu_check_close("region_masks regions", r1, ar.data, n * 3, TU_TOL);
    /* the same as the masks resized by the reference */
    xattn_tensor tm[4] = {ti[0], ti[1], ti[2], ti[4]};
    to[0].data = o2;
    CHECK_OK(xattn_module_forward(NULL, r, tm, 4, to, 1));
    tu_check_close("masks out", o2, o1, n, TU_TOL);
    /* one unbatched (3, Hm, Wm) mask set is the batch's */
    xattn_tensor t3[4] = {ti[0], ti[1], ti[2], ti[3]};
    t3[3].ndim = 3;
    memmove(t3[3].shape, t3[3].shape + 1, 3 * sizeof(int64_t));
    float *o3 = calloc((size_t)n, 4);
    xattn_tensor t4[4] = {ti[0], ti[1], ti[2], ti[3]};
    CHECK_OK(xattn_module_forward(NULL, r, t4, 4, to, 1)); /* o2: (1, 3, Hm, Wm), no regions */
    to[0].data = o3;
    CHECK_OK(xattn_module_forward(NULL, r, t3, 4, to, 1));
    CHECK(!memcmp(o3, o2, (size_t)n * 4));
    free(o3);
    /* 48 tokens: not a square, and not 7x7 */
    CHECK_FAIL(xattn_module_plan(sq, ti, 4, to, 1), XATTN_ERR_SHAPE);
    has("input 'hidden_states' has 48 tokens, not a square grid: give the latent grid with "
        "option 'latent_hw'");
    CHECK_FAIL(xattn_module_plan(r7, tm, 4, to, 1), XATTN_ERR_SHAPE);
    has("input 'hidden_states' has 48 tokens but option 'latent_hw' = 7,7 gives 49");
    /* one of masks and region_masks */
    CHECK_FAIL(xattn_module_plan(r, ti, 5, to, 1), XATTN_ERR_ARG);
    has("exclude each other (hallo-audio takes one of: masks | region_masks)");
    CHECK_FAIL(xattn_module_plan(r, ti, 3, to, 1), XATTN_ERR_ARG);
    has("hallo-audio needs one of the inputs: masks | region_masks");
    CHECK(!strcmp(xattn_kind_one_of("hallo-audio"), "masks|region_masks"));
    free(o1), free(o2), free(r1);
    xattn_array_free(&ax), xattn_array_free(&aa), xattn_array_free(&am);
    xattn_array_free(&arm), xattn_array_free(&ae), xattn_array_free(&ar);
    xattn_module_free(r), xattn_module_free(sq), xattn_module_free(r7);
    xattn_st_close(st);
}

int main(void)
{
    round_trip(0);
    round_trip(1);
    init_distribution();
    zero_options();
    named_forward("hallo_basic.safetensors");
    named_forward("hallo_odd.safetensors");
    named_region_masks();
    return tu_finish("test_hallo_core");
}
