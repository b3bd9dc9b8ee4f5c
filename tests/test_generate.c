/*
 * Whole BERT decoder models and generation against transformers (tests/reference/
 * gen_generate.py, float64): the logits of every step of incremental decoding (one token at a
 * time and a prompt at once) of BertLMHeadModel with tied and untied output weights, a bare
 * BertModel's hidden states, beam states with shared memories and cache reordering, and errors.
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static double g_worst;

/* Tensor `name` (integers stored as any dtype) as int64 (shape into dims). */
static int64_t *get_ids(const xattn_safetensors *st, const char *name, int64_t *dims)
{
    xattn_array a;
    float *f = tu_get_f32(st, name, &a);
    const int64_t n = xattn_array_numel(&a);
    int64_t *ids = malloc(sizeof(int64_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++) ids[i] = (int64_t)f[i];
    for (int d = 0; d < a.ndim; d++) dims[d] = a.shape[d];
    xattn_array_free(&a);
    return ids;
}

typedef struct fixture {
    xattn_safetensors *st;
    xattn_lm *m;
    xattn_lm_config c;
    xattn_array mem_a, mask_a;
    float *mem;
    uint8_t *mask;
    int64_t B, M;
} fixture;

static int open_fixture(fixture *f, const char *name)
{
    memset(f, 0, sizeof *f);
    if (xattn_st_open(tu_fixture(name), &f->st)) {
        fprintf(stderr, "%s: %s\n", name, xattn_last_error());
        CHECK(0);
        return 0;
    }
    CHECK_OK(xattn_lm_load(f->st, NULL, &f->m));
    if (!f->m) return 0;
    CHECK(!strcmp(xattn_lm_warnings(f->m), ""));
    xattn_lm_get_config(f->m, &f->c);
    f->mem = tu_get_f32(f->st, "input.memory", &f->mem_a);
    f->B = f->mem_a.shape[0];
    f->M = f->mem_a.shape[1];
    if (xattn_st_find(f->st, "input.memory_mask") >= 0) {
        CHECK_OK(xattn_st_get(f->st, "input.memory_mask", XATTN_BOOL, &f->mask_a));
        f->mask = f->mask_a.data;
    }
    return 1;
}

static void close_fixture(fixture *f)
{
    xattn_lm_free(f->m);
    xattn_array_free(&f->mem_a);
    xattn_array_free(&f->mask_a);
    xattn_st_close(f->st);
}

/* Steps of sizes first, 1, 1, ...: the logits of every position against expected.logits. */
static void check_logits(const char *name, int64_t first)
{
    fixture f;
    if (!open_fixture(&f, name)) return;
    int64_t d[8];
    int64_t *ids = get_ids(f.st, "input.ids", d);
    const int64_t B = d[0], T = d[1], V = f.c.vocab_size;
    xattn_array ra;
    const float *ref = tu_get_f32(f.st, "expected.logits", &ra);
    xattn_decoder_state *s = NULL;
    CHECK_OK(xattn_decoder_state_new(xattn_lm_decoder(f.m), B, T, T, &s));
    CHECK_OK(xattn_decoder_set_memory(NULL, s, f.M, f.mem, f.mask));
    float *lg = malloc(sizeof(float) * (size_t)(B * T * V));
    int64_t *step = malloc(sizeof(int64_t) * (size_t)(B * T));
    for (int64_t t = 0; t < T;) {
        const int64_t n = t ? 1 : first;
        for (int64_t b = 0; b < B; b++)
            memcpy(step + b * n, ids + b * T + t, sizeof(int64_t) * (size_t)n);
        CHECK_OK(xattn_lm_step(NULL, f.m, s, n, step, NULL, lg));
        for (int64_t b = 0; b < B; b++) {
            char what[96];
            snprintf(what, sizeof what, "%s logits b=%lld t=%lld..%lld", name, (long long)b,
                     (long long)t, (long long)(t + n - 1));
            const double e =
                tu_check_close(what, lg + b * n * V, ref + (b * T + t) * V, n * V, TU_TOL);
            if (e > g_worst) g_worst = e;
        }
        t += n;
    }
    CHECK(xattn_decoder_position(s) == T);
    /* past the positions, out of the vocabulary: one-line errors */
    step[0] = 0;
    CHECK_FAIL(xattn_lm_step(NULL, f.m, s, 1, step, NULL, lg), XATTN_ERR_SHAPE);
    xattn_decoder_reset(s);
    for (int64_t b = 0; b < B; b++) step[b] = b ? V : 1;
    CHECK_FAIL(xattn_lm_step(NULL, f.m, s, 1, step, NULL, lg), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "not in the vocabulary") != NULL);
    free(step);
    free(lg);
    free(ids);
    xattn_array_free(&ra);
    xattn_decoder_state_free(s);
    close_fixture(&f);
}

/* Beams: K rows per memory item, each decoding its own tokens; after a reorder every row
 * continues the history it was given (checked against single-row states). */
static void check_beams(const char *name)
{
    enum { K = 3, T = 4 };
    fixture f;
    if (!open_fixture(&f, name)) return;
    const int64_t B = f.B, V = f.c.vocab_size, R = B * K;
    xattn_decoder_state *s = NULL, *one = NULL;
    CHECK_OK(xattn_decoder_state_new_beams(xattn_lm_decoder(f.m), B, K, T + 1, T, &s));
    CHECK_OK(xattn_decoder_state_new(xattn_lm_decoder(f.m), B, T + 1, T, &one));
    CHECK_OK(xattn_decoder_set_memory(NULL, s, f.M, f.mem, f.mask));
    CHECK_OK(xattn_decoder_set_memory(NULL, one, f.M, f.mem, f.mask));
    int64_t ids[3 * 2 * T], src[3 * 2], next[3 * 2];
    for (int64_t r = 0; r < R; r++)
        for (int t = 0; t < T; t++) ids[r * T + t] = (r * 7 + t * 3 + 1) % V;
    float *lg = malloc(sizeof(float) * (size_t)(R * V)), *ref = malloc(sizeof(float) * B * V);
    float *all = malloc(sizeof(float) * (size_t)(R * T * V));
    CHECK_OK(xattn_lm_step(NULL, f.m, s, T, ids, NULL, all));
    /* row r takes the history of row src[r] (within its item), then token next[r] */
    for (int64_t r = 0; r < R; r++) {
        src[r] = r / K * K + (r % K + 1 + r / K) % K;
        next[r] = (r * 5 + 2) % V;
    }
    src[0] = 0;
    CHECK_OK(xattn_decoder_reorder(s, src));
    CHECK_OK(xattn_lm_step(NULL, f.m, s, 1, next, NULL, lg));
    for (int64_t k = 0; k < K; k++) {
        int64_t seq[2 * (T + 1)], nb[2];
        for (int64_t b = 0; b < B; b++) {
            memcpy(seq + b * (T + 1), ids + src[b * K + k] * T, sizeof(int64_t) * T);
            seq[b * (T + 1) + T] = next[b * K + k];
        }
        (void)nb;
        float *full = malloc(sizeof(float) * (size_t)(B * (T + 1) * V));
        xattn_decoder_reset(one);
        CHECK_OK(xattn_lm_step(NULL, f.m, one, T + 1 > T ? T : T, seq, NULL, full));
        for (int64_t b = 0; b < B; b++) nb[b] = seq[b * (T + 1) + T];
        free(full);
        /* one token after the first T of each sequence */
        xattn_decoder_reset(one);
        int64_t pre[2 * T];
        for (int64_t b = 0; b < B; b++) memcpy(pre + b * T, seq + b * (T + 1), sizeof pre / 2);
        CHECK_OK(xattn_lm_step(NULL, f.m, one, T, pre, NULL, all));
        CHECK_OK(xattn_lm_step(NULL, f.m, one, 1, nb, NULL, ref));
        for (int64_t b = 0; b < B; b++)
            tu_check_close("beam row after reorder", lg + (b * K + k) * V, ref + b * V, V, 1e-5);
    }
    int64_t bad[3 * 2];
    memcpy(bad, src, sizeof bad);
    bad[0] = K; /* a row of another memory item */
    CHECK_FAIL(xattn_decoder_reorder(s, bad), XATTN_ERR_ARG);
    free(all);
    free(ref);
    free(lg);
    xattn_decoder_state_free(one);
    xattn_decoder_state_free(s);
    close_fixture(&f);
}

/* A bare BertModel: the hidden states; logits are refused. */
static void check_bert(void)
{
    fixture f;
    if (!open_fixture(&f, "generate_bert.safetensors")) return;
    int64_t d[8];
    int64_t *ids = get_ids(f.st, "input.ids", d);
    const int64_t B = d[0], T = d[1], h = f.c.hidden;
    CHECK(!f.c.has_head);
    xattn_array ra;
    const float *ref = tu_get_f32(f.st, "expected.hidden", &ra);
    xattn_decoder_state *s = NULL;
    CHECK_OK(xattn_decoder_state_new(xattn_lm_decoder(f.m), B, T, T, &s));
    CHECK_OK(xattn_decoder_set_memory(NULL, s, f.M, f.mem, NULL));
    float *hid = malloc(sizeof(float) * (size_t)(B * T * h));
    CHECK_OK(xattn_lm_step(NULL, f.m, s, T, ids, hid, NULL));
    const double e = tu_check_close("BertModel hidden", hid, ref, B * T * h, TU_TOL);
    if (e > g_worst) g_worst = e;
    xattn_decoder_reset(s);
    CHECK_FAIL(xattn_lm_step(NULL, f.m, s, 1, ids, NULL, hid), XATTN_ERR_UNSUPPORTED);
    free(hid);
    free(ids);
    xattn_array_free(&ra);
    xattn_decoder_state_free(s);
    close_fixture(&f);
}

/* generate() settings of gen_generate.py's CASES (max_new_tokens 12). */
static const struct gcase {
    const char *name;
    int64_t beams;
    double lp;
    xattn_early_stopping es;
    int64_t ngram;
} CASES[] = {
    {"greedy", 1, 1.0, 0, 0},
    {"greedy_ngram", 1, 1.0, 0, 2},
    {"beam3", 3, 1.0, XATTN_EARLY_STOP_FALSE, 0},
    {"beam3_es", 3, 0.6, XATTN_EARLY_STOP_TRUE, 0},
    {"beam4_never", 4, 1.5, XATTN_EARLY_STOP_NEVER, 0},
    {"beam4_ngram", 4, -0.5, 0, 2},
};

/* The options of a search case: 12 new tokens, beams, a length penalty, early stopping. */
static xattn_generate_opts case_opts(int64_t beams, double lp, xattn_early_stopping es)
{
    xattn_generate_opts o;
    memset(&o, 0, sizeof o);
    o.max_new_tokens = 12;
    o.num_beams = beams;
    o.has_length_penalty = 1;
    o.length_penalty = lp;
    o.early_stopping = es;
    return o;
}

/* Generates from the fixture's memory and the prompt (B, P) with o into ids (room for P + 12
 * per row): 1 if the ids equal the fixture's expected.<name>; what, if not NULL, labels the
 * ids printed when they differ. */
static int generates(const fixture *f, const char *name, int64_t P, const int64_t *prompt,
                     const xattn_generate_opts *o, int64_t *ids, const char *what)
{
    int64_t e[8], len = 0;
    char key[64];
    snprintf(key, sizeof key, "expected.%s", name);
    int64_t *ref = get_ids(f->st, key, e);
    CHECK_OK(xattn_lm_generate(NULL, f->m, f->B, f->M, f->mem, f->mask, P, prompt, o, ids, &len));
    int same = len == e[1];
    for (int64_t i = 0; i < f->B * len && same; i++) same = ids[i] == ref[i];
    if (!same && what) {
        fprintf(stderr, "%s %s: got", what, name);
        for (int64_t i = 0; i < f->B * len; i++) fprintf(stderr, " %lld", (long long)ids[i]);
        fprintf(stderr, " (len %lld), want len %lld\n", (long long)len, (long long)e[1]);
    }
    free(ref);
    return same;
}

/* Loads st as a whole model with config.json holding json (written to path): the status, the
 * model into *m. */
static xattn_status load_with_config(const xattn_safetensors *st, const char *path,
                                     const char *json, xattn_lm **m)
{
    FILE *fp = fopen(path, "w");
    if (!fp) return XATTN_ERR_IO;
    fputs(json, fp);
    fclose(fp);
    xattn_lm_opts o;
    memset(&o, 0, sizeof o);
    o.config_json = path;
    *m = NULL;
    return xattn_lm_load(st, &o, m);
}

/* Generated ids equal transformers' generate for every case. */
static void check_generate(const char *name)
{
    fixture f;
    if (!open_fixture(&f, name)) return;
    int64_t d[8];
    int64_t *prompt = get_ids(f.st, "input.prompt", d);
    const int64_t B = d[0], P = d[1], cap = P + 12;
    int64_t *ids = malloc(sizeof(int64_t) * (size_t)(B * cap));
    for (size_t k = 0; k < sizeof CASES / sizeof *CASES; k++) {
        const struct gcase *c = &CASES[k];
        xattn_generate_opts o = case_opts(c->beams, c->lp, c->es);
        o.no_repeat_ngram_size = c->ngram;
        CHECK(generates(&f, c->name, P, prompt, &o, ids, name));
    }
    /* a prompt id out of range, a prompt too long for the positions */
    prompt[1] = f.c.vocab_size;
    int64_t len;
    CHECK_FAIL(xattn_lm_generate(NULL, f.m, B, f.M, f.mem, f.mask, P, prompt, NULL, ids, &len),
               XATTN_ERR_ARG);
    prompt[1] = 1;
    xattn_generate_opts o;
    memset(&o, 0, sizeof o);
    o.max_new_tokens = f.c.max_positions;
    CHECK_FAIL(xattn_lm_generate(NULL, f.m, B, f.M, f.mem, f.mask, P, prompt, &o, ids, &len),
               XATTN_ERR_SHAPE);
    /* a NaN in the memory: refused at the first step, greedy and beams alike */
    const float keep = f.mem[3];
    f.mem[3] = NAN;
    for (int64_t beams = 1; beams <= 3; beams += 2) {
        memset(&o, 0, sizeof o);
        o.max_new_tokens = 4;
        o.num_beams = beams;
        CHECK_FAIL(xattn_lm_generate(NULL, f.m, B, f.M, f.mem, f.mask, P, prompt, &o, ids, &len),
                   XATTN_ERR_ARG);
        CHECK(strstr(xattn_last_error(), "NaN") != NULL);
    }
    f.mem[3] = keep;
    free(ids);
    free(prompt);
    close_fixture(&f);
}

/* The output length: transformers' max_length of 20 without max_new_tokens, the prompt plus
 * max_new_tokens with it; a generation without end tokens fills exactly that length. */
static void check_length(void)
{
    xattn_generate_opts o;
    memset(&o, 0, sizeof o);
    CHECK(xattn_lm_generate_length(&o, 0) == 20);
    CHECK(xattn_lm_generate_length(&o, 7) == 20);
    CHECK(xattn_lm_generate_length(&o, 19) == 20);
    CHECK(xattn_lm_generate_length(&o, 25) == 26);
    CHECK(xattn_lm_generate_length(NULL, 3) == 20);
    o.max_new_tokens = 5;
    CHECK(xattn_lm_generate_length(&o, 0) == 6);
    CHECK(xattn_lm_generate_length(&o, 4) == 9);
    fixture f;
    if (!open_fixture(&f, "generate_lm_tied.safetensors")) return;
    int64_t d[8];
    int64_t *prompt = get_ids(f.st, "input.prompt", d);
    const int64_t B = d[0], P = d[1];
    for (int64_t beams = 1; beams <= 2; beams++) {
        memset(&o, 0, sizeof o);
        o.n_eos = -1;
        o.num_beams = beams;
        const int64_t cap = xattn_lm_generate_length(&o, P);
        CHECK(cap == (P < 20 ? 20 : P + 1));
        int64_t *ids = malloc(sizeof(int64_t) * (size_t)(B * cap)), len = -1;
        CHECK_OK(xattn_lm_generate(NULL, f.m, B, f.M, f.mem, f.mask, P, prompt, &o, ids, &len));
        CHECK(len == cap);
        free(ids);
    }
    free(prompt);
    close_fixture(&f);
}

static int cmp_float(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The filtered distributions equal transformers' warpers'; draws follow them. */
static void check_sampling(void)
{
    static const double SET[][3] = {
        {0.7, 0, 1.0}, {1.0, 5, 1.0}, {1.0, 0, 0.9}, {1.3, 10, 0.8}, {0.5, 1, 0.5}};
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("generate_sampling.safetensors"), &st));
    if (!st) return;
    xattn_array la;
    const float *lg = tu_get_f32(st, "input.logits", &la);
    const int64_t R = la.shape[0], V = la.shape[1];
    float *sc = malloc(sizeof(float) * (size_t)V), *p = malloc(sizeof(float) * (size_t)V);
    float *q = malloc(sizeof(float) * (size_t)V);
    for (int k = 0; k < 5; k++) {
        char key[64];
        snprintf(key, sizeof key, "expected.probs.%d", k);
        xattn_array pa;
        const float *ref = tu_get_f32(st, key, &pa);
        for (int64_t r = 0; r < R; r++) {
            memcpy(sc, lg + r * V, sizeof(float) * (size_t)V);
            CHECK_OK(xattn_sampling_filter(sc, V, SET[k][0], (int64_t)SET[k][1], SET[k][2]));
            double mx = -1e30, z = 0;
            for (int64_t v = 0; v < V; v++) mx = sc[v] > mx ? sc[v] : mx;
            for (int64_t v = 0; v < V; v++) z += exp((double)sc[v] - mx);
            for (int64_t v = 0; v < V; v++) p[v] = (float)(exp((double)sc[v] - mx) / z);
            char what[64];
            snprintf(what, sizeof what, "filtered probs setting %d row %lld", k, (long long)r);
            /* rows 1 and 2 hold ties, which torch.sort orders as it may: which of equal
             * tokens top-p drops is torch's choice; what is kept (sorted) must agree */
            if (r != 1 && r != 2) {
                tu_check_close(what, p, ref + r * V, V, 1e-6);
                for (int64_t v = 0; v < V; v++) CHECK((p[v] == 0) == (ref[r * V + v] == 0));
            }
            memcpy(q, ref + r * V, sizeof(float) * (size_t)V);
            qsort(p, (size_t)V, sizeof(float), cmp_float);
            qsort(q, (size_t)V, sizeof(float), cmp_float);
            tu_check_close(what, p, q, V, 1e-6);
        }
        xattn_array_free(&pa);
    }
    free(q);
    free(p);
    free(sc);
    xattn_array_free(&la);
    xattn_st_close(st);
}

/* Draws of the first new token over many seeds against the filtered distribution of the
 * first step's logits (each frequency within 5 standard errors). */
static void check_draws(void)
{
    enum { N = 4000 };
    fixture f;
    if (!open_fixture(&f, "generate_lm_tied.safetensors")) return;
    const int64_t V = f.c.vocab_size, B = 1;
    int64_t d[8];
    int64_t *prompt = get_ids(f.st, "input.prompt", d);
    const int64_t P = d[1];
    xattn_decoder_state *s = NULL;
    float *lg = malloc(sizeof(float) * (size_t)(P * V));
    CHECK_OK(xattn_decoder_state_new(xattn_lm_decoder(f.m), B, P, P, &s));
    CHECK_OK(xattn_decoder_set_memory(NULL, s, f.M, f.mem, f.mask));
    CHECK_OK(xattn_lm_step(NULL, f.m, s, P, prompt, NULL, lg));
    float *sc = lg + (P - 1) * V;
    CHECK_OK(xattn_sampling_filter(sc, V, 1.5, 8, 0.9));
    double mx = -1e30, z = 0, *p = calloc((size_t)V, sizeof(double));
    for (int64_t v = 0; v < V; v++) mx = sc[v] > mx ? sc[v] : mx;
    for (int64_t v = 0; v < V; v++) z += exp((double)sc[v] - mx);
    for (int64_t v = 0; v < V; v++) p[v] = exp((double)sc[v] - mx) / z;
    int *count = calloc((size_t)V, sizeof(int));
    xattn_generate_opts o;
    memset(&o, 0, sizeof o);
    o.max_new_tokens = 1, o.do_sample = 1, o.temperature = 1.5, o.top_k = 8, o.top_p = 0.9;
    int64_t ids[8], len;
    for (int i = 0; i < N; i++) {
        o.seed = (uint64_t)i;
        if (xattn_lm_generate(NULL, f.m, B, f.M, f.mem, f.mask, P, prompt, &o, ids, &len)) break;
        count[ids[P]]++;
    }
    for (int64_t v = 0; v < V; v++) {
        const double q = (double)count[v] / N, se = sqrt(p[v] * (1 - p[v]) / N);
        CHECK(fabs(q - p[v]) <= 5 * se + 1e-12);
        if (p[v] == 0) CHECK(count[v] == 0);
    }
    free(count);
    free(p);
    free(lg);
    free(prompt);
    xattn_decoder_state_free(s);
    close_fixture(&f);
}

/* config.json: agreeing values load; one disagreeing with the shapes, or a config that is not
 * a decoder's, is an error naming the file. */
static void check_config_json(void)
{
    static const char *const JS[] = {
        "{\"num_attention_heads\": 4, \"hidden_size\": 32, \"num_hidden_layers\": 2, "
        "\"is_decoder\": true, \"hidden_act\": \"gelu\"}",
        "{\"num_attention_heads\": 4, \"hidden_size\": 64}",
        "{\"num_attention_heads\": 4, \"num_hidden_layers\": 3}",
        "{\"is_decoder\": false}",
        "{\"hidden_act\": \"relu\"}",
        "[1, 2]"};
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("generate_lm_tied.safetensors"), &st));
    char path[] = "/tmp/xattn_generate_configXXXXXX";
    const int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    for (size_t i = 0; i < sizeof JS / sizeof *JS && st; i++) {
        xattn_lm *m;
        const xattn_status s = load_with_config(st, path, JS[i], &m);
        if (i == 0) {
            CHECK_OK(s);
            xattn_lm_config c;
            xattn_lm_get_config(m, &c);
            /* eos_token_id from the metadata */
            CHECK(c.eos_token_id == 34 && c.heads == 4 && c.layers == 2);
        } else {
            CHECK(s != XATTN_OK && m == NULL);
            CHECK(strstr(xattn_last_error(), path) != NULL || i == 4);
        }
        xattn_lm_free(m);
    }
    unlink(path);
    xattn_st_close(st);
}

/* Several end tokens (__metadata__ "[e1, e2]"), a pad and an eos list given to the call, the
 * beam candidates max(2, 1 + n_eos) * K and the fill of short beams (pad 0: the first end
 * token) against transformers (tests/reference/gen_generate_eos.py). */
static void check_eos(void)
{
    fixture f;
    if (!open_fixture(&f, "generate_eos.safetensors")) return;
    CHECK(f.c.n_eos == 2 && f.c.eos_token_id == f.c.eos_token_ids[0]);
    int64_t d[8];
    int64_t *prompt = get_ids(f.st, "input.prompt", d);
    const int64_t B = d[0], P = d[1];
    static const struct {
        const char *name;
        int64_t beams;
        double lp;
        xattn_early_stopping es;
        int pad5, eos2;
    } cases[] = {{"greedy", 1, 1.0, 0, 0, 0},
                 {"greedy_pad5", 1, 1.0, 0, 1, 0},
                 {"greedy_eos2", 1, 1.0, 0, 0, 1},
                 {"beam3", 3, 1.0, XATTN_EARLY_STOP_FALSE, 0, 0},
                 {"beam4_es", 4, 0.7, XATTN_EARLY_STOP_TRUE, 0, 0},
                 {"beam3_never", 3, 1.3, XATTN_EARLY_STOP_NEVER, 0, 0}};
    int64_t *ids = malloc(sizeof(int64_t) * (size_t)(B * (P + 12)));
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        xattn_generate_opts o = case_opts(cases[k].beams, cases[k].lp, cases[k].es);
        if (cases[k].pad5) o.has_pad_token_id = 1, o.pad_token_id = 5;
        if (cases[k].eos2) o.n_eos = 1, o.eos_token_ids[0] = f.c.eos_token_ids[1];
        CHECK(generates(&f, cases[k].name, P, prompt, &o, ids, "generate_eos"));
    }
    /* out-of-range ids given to the call; -1: no end token at all (runs to max_new_tokens) */
    xattn_generate_opts o;
    memset(&o, 0, sizeof o);
    o.max_new_tokens = 12;
    int64_t len;
    o.n_eos = 1, o.eos_token_ids[0] = f.c.vocab_size;
    CHECK_FAIL(xattn_lm_generate(NULL, f.m, B, f.M, f.mem, f.mask, P, prompt, &o, ids, &len),
               XATTN_ERR_ARG);
    o.n_eos = XATTN_MAX_EOS + 1;
    CHECK_FAIL(xattn_lm_generate(NULL, f.m, B, f.M, f.mem, f.mask, P, prompt, &o, ids, &len),
               XATTN_ERR_ARG);
    o.n_eos = 0, o.has_pad_token_id = 1, o.pad_token_id = -7;
    CHECK_FAIL(xattn_lm_generate(NULL, f.m, B, f.M, f.mem, f.mask, P, prompt, &o, ids, &len),
               XATTN_ERR_ARG);
    o.has_pad_token_id = 0, o.n_eos = -1;
    CHECK_OK(xattn_lm_generate(NULL, f.m, B, f.M, f.mem, f.mask, P, prompt, &o, ids, &len));
    CHECK(len == P + 12);
    /* config.json's list wins over __metadata__'s; more than XATTN_MAX_EOS, or not ids: errors */
    static const char *const JS[] = {
        "{\"eos_token_id\": [7, 9, 11]}", "{\"eos_token_id\": [1, 2, 3, 4, 5, 6, 7, 8, 9]}",
        "{\"eos_token_id\": [1, \"x\"]}", "{\"eos_token_id\": [1, 99]}"};
    char path[] = "/tmp/xattn_generate_eosXXXXXX";
    const int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    for (size_t i = 0; i < sizeof JS / sizeof *JS; i++) {
        xattn_lm *m;
        const xattn_status st = load_with_config(f.st, path, JS[i], &m);
        if (i == 0) {
            CHECK_OK(st);
            xattn_lm_config c;
            xattn_lm_get_config(m, &c);
            CHECK(c.n_eos == 3 && c.eos_token_ids[0] == 7 && c.eos_token_ids[2] == 11 &&
                  c.eos_token_id == 7);
        } else {
            CHECK(st != XATTN_OK && m == NULL);
        }
        xattn_lm_free(m);
    }
    unlink(path);
    free(ids);
    free(prompt);
    close_fixture(&f);
}

/* Left-padded prompts with their mask (generate()'s attention_mask): transformers' ids for
 * greedy and beam search (tests/reference/gen_generate_eos.py); without the mask the padded
 * rows decode otherwise (the mask is used). */
static void check_ragged(void)
{
    fixture f;
    if (!open_fixture(&f, "generate_ragged.safetensors")) return;
    int64_t d[8];
    int64_t *prompt = get_ids(f.st, "input.prompt", d);
    const int64_t B = d[0], P = d[1];
    xattn_array pa;
    CHECK_OK(xattn_st_get(f.st, "input.prompt_mask", XATTN_BOOL, &pa));
    static const struct {
        const char *name;
        int64_t beams;
        double lp;
        xattn_early_stopping es;
    } cases[] = {{"greedy", 1, 1.0, 0},
                 {"beam3", 3, 1.0, XATTN_EARLY_STOP_FALSE},
                 {"beam4_es", 4, 0.7, XATTN_EARLY_STOP_TRUE}};
    int64_t *ids = malloc(sizeof(int64_t) * (size_t)(B * (P + 12)));
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++)
        for (int masked = 1; masked >= 0; masked--) {
            xattn_generate_opts o = case_opts(cases[k].beams, cases[k].lp, cases[k].es);
            o.prompt_mask = masked ? pa.data : NULL;
            const int same =
                generates(&f, cases[k].name, P, prompt, &o, ids, masked ? "generate_ragged" : NULL);
            CHECK(same == masked || (!masked && k > 0)); /* unmasked greedy must differ */
        }
    /* a mask without a prompt is refused, not ignored */
    xattn_generate_opts o = case_opts(1, 1.0, 0);
    o.prompt_mask = pa.data;
    int64_t len;
    CHECK_FAIL(xattn_lm_generate(NULL, f.m, B, f.M, f.mem, f.mask, 0, NULL, &o, ids, &len),
               XATTN_ERR_ARG);
    free(ids);
    free(prompt);
    xattn_array_free(&pa);
    close_fixture(&f);
}

/* A tensor that weights int8 quantises: every linear layer's weight (the decoder layers' and the
 * head's), and the word embeddings when they are the (tied) output layer. */
static int quantised(const char *n, int tied)
{
    const size_t l = strlen(n);
    if (l < 7 || strcmp(n + l - 7, ".weight") || strstr(n, "LayerNorm") || !strncmp(n, "input.", 6))
        return 0;
    if (strstr(n, "embeddings.")) return tied && strstr(n, "word_embeddings.") != NULL;
    return 1;
}

/* weights int8 against the float32 model whose quantised weights are replaced by their
 * dequantised values (scale * q, the quantiser written out here again: scale = max|w| / 127,
 * q = round-half-even(w * (127 / max|w|))): the same logits at every step up to float32
 * rounding (the kernel applies the scale after the dot product). The error of int8 against the
 * float64 reference of the float32 weights is reported (the quantisation's own). */
static void check_int8(const char *name)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(name), &st));
    if (!st) return;
    const int tied = xattn_st_find(st, "cls.predictions.decoder.weight") < 0;
    const size_t n = xattn_st_count(st);
    xattn_st_entry *e = calloc(n, sizeof *e);
    xattn_array *arr = calloc(n, sizeof *arr);
    int nq = 0;
    for (size_t i = 0; i < n; i++) {
        const char *nm = xattn_st_name(st, i);
        CHECK_OK(xattn_st_get(st, nm, XATTN_F32, &arr[i]));
        float *w = arr[i].data;
        if (arr[i].ndim == 2 && quantised(nm, tied)) {
            const int64_t R = arr[i].shape[0], K = arr[i].shape[1];
            for (int64_t r = 0; r < R; r++) {
                float amax = 0;
                for (int64_t k = 0; k < K; k++) amax = fmaxf(amax, fabsf(w[r * K + k]));
                const float scale = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
                for (int64_t k = 0; k < K; k++)
                    w[r * K + k] = scale * nearbyintf(w[r * K + k] * inv);
            }
            nq++;
        }
        e[i] = (xattn_st_entry){nm, XATTN_F32, arr[i].ndim, {0}, w};
        memcpy(e[i].shape, arr[i].shape, sizeof e[i].shape);
    }
    /* 2 layers of 10, the head's dense and its output layer (the word embeddings when tied) */
    CHECK(nq == 2 * 10 + 2);
    const char *meta[2 * 8];
    size_t nm = 0;
    for (size_t i = 0; i < xattn_st_meta_count(st) && nm < 8; i++, nm++) {
        meta[2 * nm] = xattn_st_meta_key(st, i);
        meta[2 * nm + 1] = xattn_st_meta_value(st, i);
    }
    char path[] = "/tmp/xattn_generate_int8XXXXXX";
    const int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    CHECK_OK(xattn_st_save(path, e, n, meta, nm));
    xattn_safetensors *dq = NULL;
    xattn_lm *mref = NULL, *mq = NULL;
    xattn_lm_opts o;
    memset(&o, 0, sizeof o);
    CHECK_OK(xattn_st_open(path, &dq));
    CHECK_OK(xattn_lm_load(dq, &o, &mref));
    o.weights = XATTN_WEIGHTS_INT8;
    CHECK_OK(xattn_lm_load(st, &o, &mq));
    o.weights = 7;
    xattn_lm *bad = NULL;
    CHECK_FAIL(xattn_lm_load(st, &o, &bad), XATTN_ERR_ARG);
    xattn_lm_config c;
    xattn_lm_get_config(mq, &c);
    CHECK(c.weights == XATTN_WEIGHTS_INT8 && c.tied == tied);
    int64_t d[8];
    int64_t *ids = get_ids(st, "input.ids", d);
    const int64_t B = d[0], T = d[1], V = c.vocab_size;
    xattn_array ma, ra, ka;
    float *mem = tu_get_f32(st, "input.memory", &ma);
    const float *ref = tu_get_f32(st, "expected.logits", &ra);
    const uint8_t *mask = NULL;
    memset(&ka, 0, sizeof ka);
    if (xattn_st_find(st, "input.memory_mask") >= 0) {
        CHECK_OK(xattn_st_get(st, "input.memory_mask", XATTN_BOOL, &ka));
        mask = ka.data;
    }
    xattn_decoder_state *sq = NULL, *sr = NULL;
    CHECK_OK(xattn_decoder_state_new(xattn_lm_decoder(mq), B, T, ma.shape[1], &sq));
    CHECK_OK(xattn_decoder_state_new(xattn_lm_decoder(mref), B, T, ma.shape[1], &sr));
    CHECK_OK(xattn_decoder_set_memory(NULL, sq, ma.shape[1], mem, mask));
    CHECK_OK(xattn_decoder_set_memory(NULL, sr, ma.shape[1], mem, mask));
    float *lq = malloc(sizeof(float) * (size_t)(B * V)),
          *lr = malloc(sizeof(float) * (size_t)(B * V));
    int64_t *step = malloc(sizeof(int64_t) * (size_t)B);
    double e_dq = 0, e_ref = 0;
    for (int64_t t = 0; t < T && mq && mref; t++) {
        for (int64_t b = 0; b < B; b++) step[b] = ids[b * T + t];
        CHECK_OK(xattn_lm_step(NULL, mq, sq, 1, step, NULL, lq));
        CHECK_OK(xattn_lm_step(NULL, mref, sr, 1, step, NULL, lr));
        char what[96];
        snprintf(what, sizeof what, "%s int8 logits t=%lld", name, (long long)t);
        e_dq = tu_max(e_dq, tu_check_close(what, lq, lr, B * V, TU_TOL));
        for (int64_t b = 0; b < B; b++)
            e_ref = tu_max(e_ref, tu_rel_err(lq + b * V, ref + (b * T + t) * V, V));
    }
    printf("%s: int8 weights: logits against the dequantised float32 model %.3g, against the "
           "float64 reference of the float32 weights %.3g\n",
           name, e_dq, e_ref);
    /* The quantisation's own error on these fixtures' std-0.3 weights: 0.137 (tied) and 0.328
     * (untied), which transformers' BertLMHeadModel in float64 on the dequantised weights
     * reproduces exactly; the bound only catches a broken model (a wrong scale or row). */
    CHECK(e_ref < 0.5);
    free(lq), free(lr), free(step), free(ids);
    xattn_array_free(&ma), xattn_array_free(&ra), xattn_array_free(&ka);
    xattn_decoder_state_free(sq), xattn_decoder_state_free(sr);
    xattn_lm_free(mq), xattn_lm_free(mref);
    xattn_st_close(dq);
    /* a weight that is not finite cannot be quantised: refused at load, naming the tensor */
    for (size_t i = 0; i < n; i++)
        if (arr[i].ndim == 2 && quantised(e[i].name, tied)) {
            ((float *)arr[i].data)[1] = NAN;
            CHECK_OK(xattn_st_save(path, e, n, meta, nm));
            xattn_safetensors *nan_st = NULL;
            CHECK_OK(xattn_st_open(path, &nan_st));
            o.weights = XATTN_WEIGHTS_INT8;
            CHECK_FAIL(xattn_lm_load(nan_st, &o, &bad), XATTN_ERR_FORMAT);
            CHECK(strstr(xattn_last_error(), "not finite") &&
                  strstr(xattn_last_error(), e[i].name));
            xattn_st_close(nan_st);
            break;
        }
    unlink(path);
    for (size_t i = 0; i < n; i++) xattn_array_free(&arr[i]);
    free(arr), free(e);
    xattn_st_close(st);
}

int main(void)
{
    check_logits("generate_lm_tied.safetensors", 1);
    check_logits("generate_lm_tied.safetensors", 3);
    check_logits("generate_lm_untied.safetensors", 2);
    check_beams("generate_lm_tied.safetensors");
    check_bert();
    check_generate("generate_lm_tied.safetensors");
    check_generate("generate_lm_untied.safetensors");
    check_sampling();
    check_config_json();
    check_draws();
    check_int8("generate_lm_tied.safetensors");
    check_int8("generate_lm_untied.safetensors");
    check_eos();
    check_ragged();
    check_length();
    printf("generate: worst logits / hidden error %.3g (tol %g)\n", g_worst, TU_TOL);
    return tu_finish("generate");
}
