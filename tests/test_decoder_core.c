/*
 * The BERT decoder on the module core: create -> save -> reload gives identical parameters and
 * an identical forward (a BertEncoder with the projector, and one BertLayer); a zero options
 * struct means BertConfig's defaults; the initialisation's bounds and moments (torch's nn.Linear
 * and nn.LayerNorm defaults, N(0, 1) type embeddings); forward by named arrays equals the typed
 * forward on the reference fixtures (also with a projected memory, from the video / audio inputs,
 * and decoding token by token with the incremental switch); contexts;
 * options and tensors that contradict the file are refused with messages naming them.
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

static xattn_status fwd(xattn_ctx *ctx, const xattn_decoder *m, int64_t B, int64_t T,
                        const float *x, const uint8_t *am, int64_t M, const float *mem,
                        const uint8_t *mm, float *out)
{
    xattn_decoder_inputs in;
    memset(&in, 0, sizeof in);
    in.B = B;
    in.T = T;
    in.M = M;
    in.x = x;
    in.attention_mask = am;
    in.memory = mem;
    in.memory_mask = mm;
    xattn_decoder_outputs o;
    memset(&o, 0, sizeof o);
    o.out = out;
    return xattn_decoder_forward(ctx, m, &in, &o);
}

static xattn_module *create(uint64_t seed, const xattn_option *o, size_t n)
{
    xattn_module *m = NULL;
    CHECK_OK(xattn_module_create("bert-decoder", o, n, seed, &m));
    return m;
}

/* ---- create / save / reload --------------------------------------------------------------- */

static void same_params(const xattn_module *a, const xattn_module *b)
{
    CHECK(xattn_module_param_count(a) == xattn_module_param_count(b));
    for (size_t i = 0; i < xattn_module_param_count(a); i++) {
        xattn_param_desc p, q;
        CHECK_OK(xattn_module_param(a, i, &p));
        CHECK_OK(xattn_module_param(b, i, &q));
        CHECK(!strcmp(p.name, q.name) && p.ndim == q.ndim &&
              tu_param_numel(&p) == tu_param_numel(&q));
        CHECK((p.data == NULL) == (q.data == NULL));
        if (p.data && q.data) CHECK(!memcmp(p.data, q.data, (size_t)tu_param_numel(&p) * 4));
    }
}

/* Saves m, reopens it with the typed loader and through the registry (which finds stacks:
 * layer.0.crossattention.self.query.weight), and compares parameters, config and the forward
 * (bitwise). */
static void round_trip(xattn_module *m, int registry_finds_it, const char *tag)
{
    char path[128];
    snprintf(path, sizeof path, "/tmp/test_decoder_core_%ld_%s.safetensors", (long)getpid(), tag);
    CHECK_OK(xattn_module_save(m, path));
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(path, &st));
    if (!st) return;
    CHECK(!strcmp(xattn_st_meta_get(st, "xattn_kind"), "bert-decoder"));
    for (size_t i = 0; i < xattn_module_param_count(m); i++) { /* the file holds m's values */
        xattn_param_desc p;
        CHECK_OK(xattn_module_param(m, i, &p));
        CHECK((xattn_st_find(st, p.name) >= 0) == (p.data != NULL));
        if (!p.data) continue;
        xattn_array a;
        memset(&a, 0, sizeof a);
        CHECK_OK(xattn_st_get(st, p.name, XATTN_F32, &a));
        CHECK(xattn_array_numel(&a) == tu_param_numel(&p) &&
              !memcmp(a.data, p.data, (size_t)tu_param_numel(&p) * 4));
        xattn_array_free(&a);
    }
    xattn_module *r = NULL;
    if (registry_finds_it) CHECK_OK(xattn_module_open(st, NULL, &r));
    if (r) {
        CHECK(!strcmp(xattn_module_kind(r), "bert-decoder"));
        same_params(m, r);
        for (size_t i = 0; i < xattn_module_config_count(m); i++) {
            xattn_config_entry a, b;
            CHECK_OK(xattn_module_config(m, i, &a));
            CHECK_OK(xattn_module_config(r, i, &b));
            CHECK(!strcmp(a.value, b.value));
        }
        CHECK(!strcmp(xattn_module_warnings(r), "")); /* heads and eps are in the metadata */
    }
    xattn_decoder *d = NULL;
    CHECK_OK(xattn_decoder_load(st, "", NULL, &d));
    if (d) { /* the typed module from the file and the named forward of the created one */
        xattn_decoder_config c;
        xattn_decoder_get_config(d, &c);
        const int64_t B = 2, T = 5, M = 3, h = c.hidden, w = c.memory_dim;
        uint64_t rs = 9;
        float *x = malloc((size_t)(B * T * h) * 4), *mem = malloc((size_t)(B * M * w) * 4);
        float *o1 = malloc((size_t)(B * T * h) * 4), *o2 = malloc((size_t)(B * T * h) * 4);
        tu_fill_uniform(x, B * T * h, -1, 1, &rs);
        tu_fill_uniform(mem, B * M * w, -1, 1, &rs);
        CHECK_OK(fwd(NULL, d, B, T, x, NULL, M, mem, NULL, o1));
        xattn_tensor in[2] = {{"hidden_states", XATTN_F32, 3, {B, T, h}, x},
                              {"encoder_hidden_states", XATTN_F32, 3, {B, M, w}, mem}};
        xattn_tensor out[1] = {{"out", XATTN_F32, 3, {B, T, h}, o2}};
        CHECK_OK(xattn_module_forward(NULL, m, in, 2, out, 1));
        CHECK(!memcmp(o1, o2, (size_t)(B * T * h) * 4));
        free(x);
        free(mem);
        free(o1);
        free(o2);
    }
    xattn_decoder_free(d);
    xattn_module_free(r);
    xattn_st_close(st);
    unlink(path);
}

static void create_save_reload(void)
{
    xattn_option o[] = {
        {"hidden_size", "24"},      {"num_attention_heads", "3"}, {"intermediate_size", "40"},
        {"num_hidden_layers", "3"}, {"layer_norm_eps", "1e-05"},  {"encoder_width", "20"},
        {"video_dim", "12"},        {"audio_dim", "10"},          {"audio_type_embedding", "True"}};
    xattn_module *m = create(3, o, sizeof o / sizeof o[0]);
    if (m) {
        xattn_param_desc p;
        CHECK(xattn_module_param_count(m) == 3 * 26 + 6);
        CHECK(tu_param(m, "type_embedding.video", &p) && p.data == NULL);
        CHECK(tu_param(m, "type_embedding.audio", &p) && p.data != NULL);
        CHECK(tu_param(m, "layer.2.crossattention.self.value.weight", &p) && p.shape[1] == 20);
        round_trip(m, 1, "stack");
    }
    xattn_module_free(m);
    xattn_option one[] = {{"hidden_size", "16"},
                          {"num_attention_heads", "2"},
                          {"intermediate_size", "8"},
                          {"bert_encoder", "False"}};
    m = create(4, one, 4);
    if (m) {
        xattn_param_desc p;
        CHECK(xattn_module_param_count(m) == 26 + 6);
        CHECK(tu_param(m, "attention.self.query.weight", &p) && p.data != NULL);
        xattn_config_entry e;
        CHECK_OK(xattn_module_config(m, 3, &e));
        CHECK(!strcmp(e.name, "num_hidden_layers") && !strcmp(e.value, "1"));
        round_trip(m, 0, "layer");
    }
    xattn_module_free(m);
}

/* ---- defaults ------------------------------------------------------------------------------- */

static const char *arg_default(const char *name)
{
    for (size_t j = 0;; j++) {
        xattn_arg_desc a;
        if (xattn_kind_arg("bert-decoder", j, &a)) return "?";
        if (!strcmp(a.name, name)) return a.default_value;
    }
}

static void zero_options(void)
{
    /* BertConfig's defaults */
    CHECK(!strcmp(arg_default("hidden_size"), "768"));
    CHECK(!strcmp(arg_default("num_attention_heads"), "12"));
    CHECK(!strcmp(arg_default("intermediate_size"), "3072"));
    CHECK(!strcmp(arg_default("num_hidden_layers"), "12"));
    CHECK(!strcmp(arg_default("layer_norm_eps"), "1e-12"));
    CHECK(!strcmp(arg_default("encoder_width"), "None"));
    CHECK(!strcmp(arg_default("bert_encoder"), "True"));
    CHECK(!strcmp(arg_default("video_projector"), "False"));
    /* a file without heads and eps metadata: a zero struct and NULL both give 12 and 1e-12 */
    xattn_option o[] = {{"hidden_size", "24"},
                        {"num_attention_heads", "2"},
                        {"intermediate_size", "8"},
                        {"num_hidden_layers", "1"}};
    xattn_module *m = create(1, o, 4);
    if (!m) return;
    size_t n = xattn_module_param_count(m);
    xattn_st_entry *e = calloc(n, sizeof *e);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        xattn_param_desc p;
        CHECK_OK(xattn_module_param(m, i, &p));
        if (!p.data) continue; /* the projector */
        e[k].name = p.name;
        e[k].dtype = XATTN_F32;
        e[k].ndim = p.ndim;
        memcpy(e[k].shape, p.shape, sizeof p.shape);
        e[k++].data = p.data;
    }
    char path[128];
    snprintf(path, sizeof path, "/tmp/test_decoder_core_%ld_bare.safetensors", (long)getpid());
    CHECK_OK(xattn_st_save(path, e, k, NULL, 0));
    free(e);
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(path, &st));
    xattn_decoder_opts zero;
    memset(&zero, 0, sizeof zero);
    for (int z = 0; z < 2 && st; z++) {
        xattn_decoder *d = NULL;
        CHECK_OK(xattn_decoder_load(st, "", z ? &zero : NULL, &d));
        xattn_decoder_config c;
        xattn_decoder_get_config(d, &c);
        CHECK(c.heads == 12 && c.head_dim == 2 && c.layer_norm_eps == 1e-12f);
        CHECK(c.hidden == 24 && c.intermediate == 8 && c.layers == 1 && c.memory_dim == 24);
        CHECK(c.video_dim == 0 && c.audio_dim == 0 && !c.video_type && !c.audio_type);
        xattn_decoder_free(d);
    }
    xattn_module *r = NULL;
    CHECK_OK(xattn_module_open(st, NULL, &r));
    const char *w = xattn_module_warnings(r);
    CHECK(strstr(w, "num_attention_heads: not given") && strstr(w, "layer_norm_eps: not given"));
    xattn_decoder_opts bad = zero;
    bad.reserved_[1] = 1;
    xattn_decoder *d = NULL;
    CHECK_FAIL(xattn_decoder_load(st, "", &bad, &d), XATTN_ERR_ARG);
    bad = zero;
    bad.heads = -2;
    CHECK_FAIL(xattn_decoder_load(st, "", &bad, &d), XATTN_ERR_ARG);
    has("num_attention_heads");
    xattn_module_free(r);
    xattn_st_close(st);
    unlink(path);
    xattn_module_free(m);
}

/* ---- initialisation ------------------------------------------------------------------------- */

static void init_distribution(void)
{
    const double H = 96, I = 160, W = 400, DV = 72, DA = 40;
    xattn_option o[] = {{"hidden_size", "96"},
                        {"num_attention_heads", "4"},
                        {"intermediate_size", "160"},
                        {"num_hidden_layers", "2"},
                        {"encoder_width", "400"},
                        {"video_dim", "72"},
                        {"audio_dim", "40"},
                        {"video_type_embedding", "True"},
                        {"audio_type_embedding", "True"}};
    xattn_module *m = create(7, o, sizeof o / sizeof o[0]);
    xattn_module *m2 = create(8, o, sizeof o / sizeof o[0]);
    if (!m || !m2) return;
    static const char *const lin[] = {"attention.self.query",      "attention.self.key",
                                      "attention.self.value",      "attention.output.dense",
                                      "crossattention.self.query", "crossattention.output.dense",
                                      "intermediate.dense"};
    static const char *const ln[] = {"attention.output.LayerNorm",
                                     "crossattention.output.LayerNorm", "output.LayerNorm"};
    char nm[128];
    for (int l = 0; l < 2; l++) {
        for (int k = 0; k < 7; k++)
            for (int wb = 0; wb < 2; wb++) {
                snprintf(nm, sizeof nm, "layer.%d.%s.%s", l, lin[k], wb ? "bias" : "weight");
                tu_check_uniform(m, nm, 1 / sqrt(H));
            }
        for (int wb = 0; wb < 2; wb++) {
            const char *t = wb ? "bias" : "weight";
            snprintf(nm, sizeof nm, "layer.%d.crossattention.self.key.%s", l, t);
            tu_check_uniform(m, nm, 1 / sqrt(W));
            snprintf(nm, sizeof nm, "layer.%d.crossattention.self.value.%s", l, t);
            tu_check_uniform(m, nm, 1 / sqrt(W));
            snprintf(nm, sizeof nm, "layer.%d.output.dense.%s", l, t);
            tu_check_uniform(m, nm, 1 / sqrt(I));
        }
        for (int k = 0; k < 3; k++) {
            snprintf(nm, sizeof nm, "layer.%d.%s.weight", l, ln[k]);
            tu_check_const(m, nm, 1.0f);
            snprintf(nm, sizeof nm, "layer.%d.%s.bias", l, ln[k]);
            tu_check_const(m, nm, 0.0f);
        }
    }
    tu_check_uniform(m, "proj.video.weight", 1 / sqrt(DV));
    tu_check_uniform(m, "proj.video.bias", 1 / sqrt(DV));
    tu_check_uniform(m, "proj.audio.weight", 1 / sqrt(DA));
    tu_check_uniform(m, "proj.audio.bias", 1 / sqrt(DA));
    tu_check_normal(m, "type_embedding.video", 1.0);
    tu_check_normal(m, "type_embedding.audio", 1.0);
    xattn_param_desc p, q;
    tu_param(m, "layer.1.attention.self.key.weight", &p);
    tu_param(m2, "layer.1.attention.self.key.weight", &q);
    CHECK(memcmp(p.data, q.data, (size_t)tu_param_numel(&p) * 4) != 0); /* the seed matters */
    tu_param(m, "layer.0.attention.self.key.weight", &q);
    CHECK(memcmp(p.data, q.data, (size_t)tu_param_numel(&p) * 4) !=
          0); /* each layer its own stream */
    xattn_module_free(m);
    xattn_module_free(m2);
}

/* ---- named forward == typed forward on the fixtures ----------------------------------------- */

static xattn_decoder *open_fixture(const char *file, xattn_safetensors **st, xattn_module **mod)
{
    *st = NULL;
    *mod = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(file), st));
    if (!*st) return NULL;
    xattn_decoder *d = NULL;
    CHECK_OK(xattn_decoder_load(*st, "", NULL, &d));
    CHECK_OK(xattn_module_open(*st, NULL, mod));
    return d;
}

static void named_memory(void)
{
    xattn_safetensors *st;
    xattn_module *mod;
    xattn_decoder *d = open_fixture("decoder_l2.safetensors", &st, &mod);
    if (!d || !mod) return;
    xattn_array ax, am, ar, aam, amm;
    const float *x = tu_get_f32(st, "input.x", &ax), *mem = tu_get_f32(st, "input.memory", &am);
    const float *ref = tu_get_f32(st, "expected.out", &ar);
    CHECK_OK(xattn_st_get(st, "input.attention_mask", XATTN_BOOL, &aam));
    CHECK_OK(xattn_st_get(st, "input.memory_mask", XATTN_BOOL, &amm));
    const int64_t B = ax.shape[0], T = ax.shape[1], h = ax.shape[2], M = am.shape[1];
    float *o1 = malloc((size_t)(B * T * h) * 4), *o2 = malloc((size_t)(B * T * h) * 4);
    xattn_ctx *ctx = NULL;
    CHECK_OK(xattn_ctx_new(&ctx));
    CHECK_OK(xattn_ctx_set_threads(ctx, 1));
    CHECK_OK(fwd(ctx, d, B, T, x, aam.data, M, mem, amm.data, o1));
    tu_check_close("typed forward (1-thread context)", o1, ref, B * T * h, TU_TOL);
    memcpy(o2, x, (size_t)(B * T * h) * 4); /* in place: out = x */
    CHECK_OK(fwd(ctx, d, B, T, o2, aam.data, M, mem, amm.data, o2));
    CHECK(!memcmp(o1, o2, (size_t)(B * T * h) * 4));
    xattn_tensor in[4] = {{"hidden_states", XATTN_F32, 3, {B, T, h}, (void *)x},
                          {"encoder_hidden_states", XATTN_F32, 3, {B, M, h}, (void *)mem},
                          {"attention_mask", XATTN_BOOL, 2, {B, T}, aam.data},
                          {"encoder_attention_mask", XATTN_BOOL, 2, {B, M}, amm.data}};
    xattn_tensor out[1] = {{"out", XATTN_F32, 3, {B, T, h}, o2}};
    CHECK_OK(xattn_module_forward(ctx, mod, in, 4, out, 1));
    CHECK(!memcmp(o1, o2, (size_t)(B * T * h) * 4));
    uint8_t *u8 = malloc((size_t)(B * T)); /* an integer mask: nonzero = keep */
    for (int64_t i = 0; i < B * T; i++) u8[i] = ((uint8_t *)aam.data)[i] ? 7 : 0;
    in[2].dtype = XATTN_U8;
    in[2].data = u8;
    memset(o2, 0, (size_t)(B * T * h) * 4);
    CHECK_OK(xattn_module_forward(ctx, mod, in, 4, out, 1));
    CHECK(!memcmp(o1, o2, (size_t)(B * T * h) * 4));
    free(u8);
    /* the cache through a context: one token at a time equals the full forward */
    xattn_decoder_state *s = NULL;
    CHECK_OK(xattn_decoder_state_new(d, B, T, 1, &s));
    CHECK_OK(xattn_decoder_set_memory(ctx, s, M, mem, amm.data));
    float *xs = malloc((size_t)(B * h) * 4), *ys = malloc((size_t)(B * h) * 4);
    float *o3 = malloc((size_t)(B * T * h) * 4);
    uint8_t ms[8];
    double worst = 0;
    for (int64_t t = 0; t < T && s; t++) {
        for (int64_t b = 0; b < B; b++) {
            memcpy(xs + b * h, x + (b * T + t) * h, (size_t)h * 4);
            ms[b] = ((uint8_t *)aam.data)[b * T + t];
        }
        CHECK_OK(xattn_decoder_step(ctx, s, 1, xs, ms, ys));
        for (int64_t b = 0; b < B; b++) {
            memcpy(o3 + (b * T + t) * h, ys + b * h, (size_t)h * 4);
            int seen = 0; /* rows with no kept key so far differ by design */
            for (int64_t j = 0; j <= t; j++) seen |= ((uint8_t *)aam.data)[b * T + j];
            if (seen) worst = tu_max(worst, tu_rel_err(ys + b * h, o1 + (b * T + t) * h, h));
        }
    }
    CHECK(worst < TU_TOL);
    /* the incremental switch decodes the same way: the steps' outputs exactly */
    uint8_t on = 1;
    in[2].dtype = XATTN_BOOL;
    in[2].data = aam.data;
    xattn_tensor inc[5] = {in[0], in[1], in[2], in[3], {"incremental", XATTN_BOOL, 0, {0}, &on}};
    memset(o2, 0, (size_t)(B * T * h) * 4);
    CHECK_OK(xattn_module_forward(ctx, mod, inc, 5, out, 1));
    CHECK(!memcmp(o2, o3, (size_t)(B * T * h) * 4));
    on = 0; /* switched off: the full forward */
    CHECK_OK(xattn_module_forward(ctx, mod, inc, 5, out, 1));
    CHECK(!memcmp(o1, o2, (size_t)(B * T * h) * 4));
    /* errors: no memory, a mask of the wrong length, an input the module does not take, video
     * features for a module without a video projector */
    CHECK_FAIL(xattn_module_forward(NULL, mod, in, 1, out, 1), XATTN_ERR_ARG);
    has("encoder_hidden_states | video, audio");
    xattn_tensor badm[3] = {in[0], in[1], in[3]};
    badm[2].shape[1] = M - 1;
    CHECK_FAIL(xattn_module_forward(NULL, mod, badm, 3, out, 1), XATTN_ERR_SHAPE);
    badm[2].name = "memory";
    CHECK_FAIL(xattn_module_forward(NULL, mod, badm, 3, out, 1), XATTN_ERR_ARG);
    xattn_tensor novideo[2] = {in[0], {"video", XATTN_F32, 4, {B, 2, M, h}, (void *)mem}};
    CHECK_FAIL(xattn_module_forward(NULL, mod, novideo, 2, out, 1), XATTN_ERR_ARG);
    has("video_dim is None");
    free(o3);
    free(xs);
    free(ys);
    xattn_decoder_state_free(s);
    xattn_ctx_free(ctx);
    free(o1);
    free(o2);
    xattn_array_free(&ax);
    xattn_array_free(&am);
    xattn_array_free(&ar);
    xattn_array_free(&aam);
    xattn_array_free(&amm);
    xattn_module_free(mod);
    xattn_decoder_free(d);
    xattn_st_close(st);
}

static void named_projector(void)
{
    xattn_safetensors *st;
    xattn_module *mod;
    xattn_decoder *d = open_fixture("decoder_av.safetensors", &st, &mod);
    if (!d || !mod) return;
    xattn_array ax, av, aa, ar, amm;
    const float *x = tu_get_f32(st, "input.x", &ax), *ref = tu_get_f32(st, "expected.out", &ar);
    const float *video = tu_get_f32(st, "input.video", &av);
    const float *audio = tu_get_f32(st, "input.audio", &aa);
    CHECK_OK(xattn_st_get(st, "input.memory_mask", XATTN_BOOL, &amm));
    const int64_t B = ax.shape[0], T = ax.shape[1], h = ax.shape[2];
    const int64_t Fv = av.shape[1], Nv = av.shape[2], Fa = aa.shape[1], Na = aa.shape[2];
    const int64_t M = Nv + Na;
    xattn_decoder_config c;
    xattn_decoder_get_config(d, &c);
    float *mem = malloc((size_t)(B * M * c.memory_dim) * 4);
    float *o1 = malloc((size_t)(B * T * h) * 4), *o2 = malloc((size_t)(B * T * h) * 4);
    CHECK_OK(xattn_decoder_project(NULL, d, B, video, Fv, Nv, audio, Fa, Na, mem));
    CHECK_OK(fwd(NULL, d, B, T, x, NULL, M, mem, amm.data, o1));
    tu_check_close("typed forward of the projected memory", o1, ref, B * T * h, TU_TOL);
    xattn_tensor in[3] = {{"hidden_states", XATTN_F32, 3, {B, T, h}, (void *)x},
                          {"encoder_hidden_states", XATTN_F32, 3, {B, M, c.memory_dim}, mem},
                          {"encoder_attention_mask", XATTN_BOOL, 2, {B, M}, amm.data}};
    xattn_tensor out[1] = {{"out", XATTN_F32, 3, {B, T, h}, o2}};
    CHECK_OK(xattn_module_forward(NULL, mod, in, 3, out, 1));
    CHECK(!memcmp(o1, o2, (size_t)(B * T * h) * 4));
    /* the memory built by the module from its video and audio inputs */
    uint8_t on = 1;
    xattn_tensor va[5] = {in[0],
                          {"video", XATTN_F32, 4, {B, Fv, Nv, c.video_dim}, (void *)video},
                          {"audio", XATTN_F32, 4, {B, Fa, Na, c.audio_dim}, (void *)audio},
                          in[2],
                          {"incremental", XATTN_U8, 0, {0}, &on}};
    memset(o2, 0, (size_t)(B * T * h) * 4);
    CHECK_OK(xattn_module_forward(NULL, mod, va, 4, out, 1));
    CHECK(!memcmp(o1, o2, (size_t)(B * T * h) * 4));
    CHECK_OK(xattn_module_forward(NULL, mod, va, 5, out, 1)); /* token by token */
    tu_check_close("incremental forward of the projected memory", o2, ref, B * T * h, TU_TOL);
    xattn_tensor vonly[2] = {va[0], va[1]}; /* T-V: the video alone */
    CHECK_OK(xattn_module_forward(NULL, mod, vonly, 2, out, 1));
    /* a memory and the features that would build one; a mask of another length than Nv + Na */
    xattn_tensor both[3] = {in[0], in[1], va[2]};
    CHECK_FAIL(xattn_module_forward(NULL, mod, both, 3, out, 1), XATTN_ERR_ARG);
    has("inputs 'encoder_hidden_states' and 'audio' exclude each other");
    xattn_tensor vmask[3] = {va[0], va[1], in[2]}; /* the mask has Nv + Na keys, the memory Nv */
    CHECK_FAIL(xattn_module_forward(NULL, mod, vmask, 3, out, 1), XATTN_ERR_SHAPE);
    has("Nv + Na");
    free(mem);
    free(o1);
    free(o2);
    xattn_array_free(&ax);
    xattn_array_free(&av);
    xattn_array_free(&aa);
    xattn_array_free(&ar);
    xattn_array_free(&amm);
    xattn_module_free(mod);
    xattn_decoder_free(d);
    xattn_st_close(st);
}

/* ---- strictness ----------------------------------------------------------------------------- */

/* Copies fixture `src` to path without tensor `drop`. */
static void rewrite(const char *src, const char *path, const char *drop)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(src), &st));
    if (!st) return;
    size_t cnt = xattn_st_count(st), k = 0;
    xattn_st_entry *e = calloc(cnt, sizeof *e);
    xattn_array *arr = calloc(cnt, sizeof *arr);
    for (size_t i = 0; i < cnt; i++) {
        const char *name = xattn_st_name(st, i);
        if (drop && !strcmp(name, drop)) continue;
        CHECK_OK(xattn_st_get(st, name, XATTN_F32, &arr[k]));
        e[k].name = name;
        e[k].dtype = XATTN_F32;
        e[k].ndim = arr[k].ndim;
        memcpy(e[k].shape, arr[k].shape, sizeof e[k].shape);
        e[k].data = arr[k].data;
        k++;
    }
    const char *meta[] = {"heads", "4"};
    CHECK_OK(xattn_st_save(path, e, k, meta, 1));
    for (size_t i = 0; i < cnt; i++) xattn_array_free(&arr[i]);
    free(arr);
    free(e);
    xattn_st_close(st);
}

static xattn_status open_with(const char *path, const xattn_option *o, size_t n)
{
    xattn_safetensors *st = NULL;
    xattn_status s = xattn_st_open(path, &st);
    if (s) return s;
    xattn_open_opts oo;
    memset(&oo, 0, sizeof oo);
    oo.kind = "bert-decoder";
    oo.options = o;
    oo.n_options = n;
    xattn_module *m = NULL;
    s = xattn_module_open(st, &oo, &m);
    xattn_module_free(m);
    xattn_st_close(st);
    return s;
}

static void strictness(void)
{
    const char *l2 = tu_fixture("decoder_l2.safetensors");
    xattn_option three[] = {{"num_hidden_layers", "3"}};
    CHECK_FAIL(open_with(l2, three, 1), XATTN_ERR_SHAPE);
    has("num_hidden_layers = 3 disagrees with the count of 'layer.N.attention.self.query.weight'");
    xattn_option single[] = {{"bert_encoder", "False"}};
    CHECK_FAIL(open_with(l2, single, 1), XATTN_ERR_SHAPE);
    xattn_option wide[] = {{"hidden_size", "32"}};
    CHECK_FAIL(open_with(l2, wide, 1), XATTN_ERR_SHAPE);
    has("shape of 'layer.0.attention.self.query.weight'");
    xattn_option vdim[] = {{"video_dim", "8"}};
    CHECK_FAIL(open_with(l2, vdim, 1), XATTN_ERR_ARG);
    has("no video projector");
    xattn_option heads[] = {{"num_attention_heads", "3"}};
    CHECK_FAIL(open_with(l2, heads, 1), XATTN_ERR_SHAPE);
    has("divisible");

    char path[128];
    snprintf(path, sizeof path, "/tmp/test_decoder_core_%ld_bad.safetensors", (long)getpid());
    rewrite("decoder_av.safetensors", path, "proj.audio.weight");
    CHECK_FAIL(open_with(path, NULL, 0), XATTN_ERR_FORMAT);
    has("tensor 'proj.audio.bias' is present but audio_projector is False");
    rewrite("decoder_av.safetensors", path, "proj.video.bias");
    CHECK_FAIL(open_with(path, NULL, 0), XATTN_ERR_NOT_FOUND);
    has("'proj.video.bias' is missing (a modality projection has weight and bias)");
    rewrite("decoder_l2.safetensors", path, "layer.1.intermediate.dense.bias");
    CHECK_FAIL(open_with(path, NULL, 0), XATTN_ERR_NOT_FOUND);
    has("layer.1.intermediate.dense.bias' is missing (the feed-forward input bias");
    unlink(path);

    xattn_module *m = NULL;
    xattn_option bad1[] = {{"hidden_size", "8"},
                           {"num_attention_heads", "2"},
                           {"bert_encoder", "False"},
                           {"num_hidden_layers", "2"}};
    CHECK_FAIL(xattn_module_create("bert-decoder", bad1, 4, 0, &m), XATTN_ERR_ARG);
    has("num_hidden_layers = 1");
    xattn_option bad2[] = {
        {"hidden_size", "8"}, {"num_attention_heads", "2"}, {"video_projector", "True"}};
    CHECK_FAIL(xattn_module_create("bert-decoder", bad2, 3, 0, &m), XATTN_ERR_ARG);
    has("needs video_dim");
    xattn_option bad3[] = {{"hidden_size", "8"}, {"num_attention_heads", "3"}};
    CHECK_FAIL(xattn_module_create("bert-decoder", bad3, 2, 0, &m), XATTN_ERR_SHAPE);
    xattn_option bad4[] = {{"hidden_size", "8"}, {"layer_norm_eps", "-1"}};
    CHECK_FAIL(xattn_module_create("bert-decoder", bad4, 2, 0, &m), XATTN_ERR_ARG);
    CHECK(m == NULL);
}

int main(void)
{
    create_save_reload();
    zero_options();
    init_distribution();
    named_memory();
    named_projector();
    strictness();
    return tu_finish("decoder_core");
}
