/*
 * Generation with a whole BERT decoder model, as transformers' GenerationMixin.generate does it
 * (transformers 5.24: _sample and the vectorised _beam_search):
 *   - greedy: argmax (first of equal maxima) of the processed float32 logits; a finished row
 *     takes pad_token_id; stop when every row has emitted eos_token_id or at max_length;
 *   - sampling: temperature, top-k, top-p (TemperatureLogitsWarper, TopKLogitsWarper,
 *     TopPLogitsWarper, in that order) then a draw from the softmax with a seeded generator
 *     (SplitMix64; torch's generator cannot be matched, the distribution is);
 *   - beam search: log_softmax, the processors, running scores added; the top
 *     max(2, 1 + n_eos) * K candidates of each item; finished candidates among the first K enter
 *     the finished set with score / (generated length ^ length_penalty); the K best unfinished
 *     continue, their caches reordered (xattn_decoder_reorder); early_stopping False / True /
 *     "never" and transformers' stopping heuristic; scores in float32 as transformers keeps them.
 *   - no_repeat_ngram_size: tokens that would repeat an n-gram of the row are banned (-inf).
 * Every row of an item shares the memory's cross-attention K/V (a beam state).
 */
#include "modules/lm.h"

#include "kernels/ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const FN = "xattn_lm_generate";

typedef struct gen {
    xattn_ctx *ctx;
    const xattn_lm *m;
    const xattn_generate_opts *o;
    xattn_lm_config c;
    int64_t B, K, R, P, max_len, V, h, pad;
    int64_t eos[XATTN_MAX_EOS], n_eos; /* the end tokens */
    xattn_decoder_state *s;
    float *x, *hid, *t, *logits; /* scratch (R P h) x3 and the last rows' logits (R, V) */
    int64_t *seq;                /* (R, max_len) running sequences                        */
    int64_t *tok;                /* (R) tokens of the next step                           */
    int64_t *pid;                /* prompt_mask: (R P) the prompt's position ids, else NULL */
    int64_t *next;               /* prompt_mask: (R) the position of each row's next token */
    uint8_t *pkeep;              /* prompt_mask: (R P) the prompt's keep flags            */
    int stepped;                 /* the prompt has gone through                           */
    xa_rng rng;
} gen;

/* The logits (R, V) of the last of n tokens ids (R, n) of every row. */
static xattn_status forward(gen *g, int64_t n, const int64_t *ids)
{
    const int64_t h = g->h;
    /* ragged prompts: the prompt's positions and mask, then each row one past its last */
    const int64_t *pos = !g->pid ? NULL : g->stepped ? g->next : g->pid;
    xattn_status s =
        xa_lm_step(g->ctx, g->m, g->s, n, ids, pos, g->stepped ? NULL : g->pkeep, g->x, g->hid);
    for (int64_t r = 0; g->pid && r < g->R; r++)
        g->next[r] = (g->stepped ? g->next[r] : g->pid[r * n + n - 1]) + 1;
    g->stepped = 1;
    for (int64_t r = 0; r < g->R && !s && n > 1; r++)
        memmove(g->hid + r * h, g->hid + (r * n + n - 1) * h, sizeof(float) * (size_t)h);
    if (!s) s = xa_lm_head(g->m, g->hid, g->R, g->t, g->logits);
    /* a NaN would be chosen or skipped by accident: refused (an infinite logit is an answer) */
    for (int64_t i = 0; !s && i < g->R * g->V; i++)
        if (g->logits[i] != g->logits[i])
            s = xa_error(XATTN_ERR_ARG,
                         "%s: the logits of row %lld hold NaN (a memory or a weight that is not "
                         "finite)",
                         FN, (long long)(i / g->V));
    return s;
}

/* no_repeat_ngram_size: bans (-inf) the tokens that would complete an n-gram already in
 * seq[0 .. len) (transformers' NoRepeatNGramLogitsProcessor). */
static void ban_ngrams(const int64_t *seq, int64_t len, int64_t n, float *scores)
{
    if (n <= 0 || len + 1 < n) return;
    for (int64_t i = 0; i + n <= len; i++) {
        int same = 1;
        for (int64_t j = 0; j < n - 1 && same; j++) same = seq[i + j] == seq[len - n + 1 + j];
        if (same) scores[seq[i + n - 1]] = -INFINITY;
    }
}

static int cmp_desc(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

typedef struct scored {
    float x;
    int64_t i;
} scored;

/* Ascending by score, ties by index (torch.sort's order on the CPU). */
static int cmp_asc_idx(const void *a, const void *b)
{
    const scored *p = a, *q = b;
    return p->x < q->x ? -1 : p->x > q->x ? 1 : (p->i > q->i) - (p->i < q->i);
}

/* TopPLogitsWarper: sorted ascending, the tokens whose cumulative probability is <= 1 - top_p
 * become -inf, the last (largest) always stays. */
static xattn_status top_p_filter(float *scores, int64_t V, double top_p)
{
    scored *idx = malloc(sizeof(scored) * (size_t)V);
    if (!idx) return xa_error(XATTN_ERR_NOMEM, "xattn_sampling_filter: out of memory");
    double mx = -INFINITY, z = 0, cum = 0;
    for (int64_t v = 0; v < V; v++) {
        idx[v].x = scores[v], idx[v].i = v;
        mx = scores[v] > mx ? scores[v] : mx;
    }
    for (int64_t v = 0; v < V; v++) z += exp((double)scores[v] - mx);
    qsort(idx, (size_t)V, sizeof(scored), cmp_asc_idx);
    for (int64_t i = 0; i + 1 < V; i++) {
        cum += exp((double)idx[i].x - mx) / z;
        if (cum > 1.0 - top_p) break;
        scores[idx[i].i] = -INFINITY;
    }
    free(idx);
    return XATTN_OK;
}

xattn_status xattn_sampling_filter(float *scores, int64_t V, double temperature, int64_t top_k,
                                   double top_p)
{
    if (!scores || V <= 0 || temperature < 0 || top_p < 0 || top_p > 1)
        return xa_error(XATTN_ERR_ARG,
                        "xattn_sampling_filter: bad arguments (V=%lld, "
                        "temperature %g, top_p %g)",
                        (long long)V, temperature, top_p);
    float *sorted = malloc(sizeof(float) * (size_t)V);
    if (!sorted) return xa_error(XATTN_ERR_NOMEM, "xattn_sampling_filter: out of memory");
    if (temperature > 0 && temperature != 1.0)
        for (int64_t v = 0; v < V; v++) scores[v] = scores[v] / (float)temperature;
    if (top_k > 0 && top_k < V) { /* keep every score >= the k-th largest */
        memcpy(sorted, scores, sizeof(float) * (size_t)V);
        qsort(sorted, (size_t)V, sizeof(float), cmp_desc);
        for (int64_t v = 0; v < V; v++)
            if (scores[v] < sorted[top_k - 1]) scores[v] = -INFINITY;
    }
    free(sorted);
    return top_p > 0 && top_p < 1.0 ? top_p_filter(scores, V, top_p) : XATTN_OK;
}

/* softmax of scores into p (double); returns the index drawn with uniform u in [0, 1). */
static int64_t draw(const float *scores, int64_t V, double u)
{
    double mx = -INFINITY, z = 0, acc = 0;
    for (int64_t v = 0; v < V; v++) mx = scores[v] > mx ? scores[v] : mx;
    for (int64_t v = 0; v < V; v++) z += exp((double)scores[v] - mx);
    int64_t last = 0;
    for (int64_t v = 0; v < V; v++) {
        const double p = exp((double)scores[v] - mx) / z;
        if (p <= 0) continue;
        last = v;
        acc += p;
        if (u < acc) return v;
    }
    return last;
}

static int is_eos(const gen *g, int64_t t)
{
    for (int64_t i = 0; i < g->n_eos; i++)
        if (t == g->eos[i]) return 1;
    return 0;
}

static int64_t argmax(const float *x, int64_t V)
{
    int64_t best = 0;
    for (int64_t v = 1; v < V; v++)
        if (x[v] > x[best]) best = v;
    return best;
}

/* Greedy search or sampling (K = 1). */
static xattn_status greedy(gen *g, int64_t *out, int64_t *len)
{
    const xattn_generate_opts *o = g->o;
    uint8_t *open = calloc((size_t)g->B, 1);
    if (!open) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN);
    memset(open, 1, (size_t)g->B);
    xattn_status s = forward(g, g->P, g->tok);
    int64_t cur = g->P;
    while (!s) {
        int any = 0;
        for (int64_t b = 0; b < g->B && !s; b++) {
            float *sc = g->logits + b * g->V;
            int64_t *row = g->seq + b * g->max_len;
            ban_ngrams(row, cur, o->no_repeat_ngram_size, sc);
            int64_t t;
            if (o->do_sample) {
                s = xattn_sampling_filter(sc, g->V, o->temperature, o->top_k ? o->top_k : 50,
                                          o->top_p);
                t = draw(sc, g->V, xa_rng_uniform(&g->rng));
            } else {
                t = argmax(sc, g->V);
            }
            if (!open[b]) t = g->pad;
            row[cur] = g->tok[b] = t;
            if (is_eos(g, t)) open[b] = 0;
            any |= open[b];
        }
        cur++;
        if (s || !any || cur >= g->max_len) break;
        s = forward(g, 1, g->tok);
    }
    free(open);
    for (int64_t b = 0; b < g->B && !s; b++)
        memcpy(out + b * cur, g->seq + b * g->max_len, sizeof(int64_t) * (size_t)cur);
    *len = cur;
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Beam search                                                                              */
/* ---------------------------------------------------------------------------------------- */

typedef struct beams {
    int64_t C;              /* candidates per item: max(2, 1 + n_eos) * K                */
    float *run;             /* (R) running scores                                        */
    float *fin;             /* (R) finished scores                                       */
    int64_t *fseq, *flen;   /* (R, max_len) finished sequences, (R) generated lengths    */
    uint8_t *fdone, *unsat; /* (R) finished, (B) improvement still possible             */
    float *cs, *cf;         /* (C) candidate scores, as finished                         */
    int64_t *cbeam, *ctok;  /* (C) candidate rows (within the item) and tokens          */
    uint8_t *chit;          /* (C) hits eos or max_length                                */
    int64_t *src, *nseq;    /* (R) rows to reorder from; (R, max_len) next sequences   */
    float *flat;            /* (K V) accumulated log-probabilities of one item          */
} beams;

/* The n largest of x[0 .. N) in order (ties: lower index first), indices into idx: one pass,
 * keeping the best n found so far sorted (x holds no NaN: forward refuses it). */
static void top_n(const float *x, int64_t N, int64_t n, int64_t *idx)
{
    int64_t m = 0; /* idx[0 .. m) held, best first */
    for (int64_t j = 0; j < N; j++) {
        if (m == n && !(x[j] > x[idx[m - 1]])) continue;
        int64_t p = m < n ? m : n - 1; /* a full list drops its last */
        for (; p > 0 && x[j] > x[idx[p - 1]]; p--) idx[p] = idx[p - 1];
        idx[p] = j;
        if (m < n) m++;
    }
}

/* log_softmax (float32 as transformers' beam search), the processors, + running score. */
static void accumulate(gen *g, beams *w, int64_t b, int64_t cur)
{
    xa_op_log_softmax(g->logits + b * g->K * g->V, g->K, g->V, w->flat);
    for (int64_t k = 0; k < g->K; k++) {
        const int64_t r = b * g->K + k;
        float *y = w->flat + k * g->V;
        ban_ngrams(g->seq + r * g->max_len, cur, g->o->no_repeat_ngram_size, y);
        for (int64_t v = 0; v < g->V; v++) y[v] = y[v] + w->run[r];
    }
}

/* One item's candidates: the C best, whether they hit a stop, their finished scores. */
static int candidates(gen *g, beams *w, int64_t b, int64_t cur)
{
    const int64_t K = g->K, C = w->C;
    const xattn_generate_opts *o = g->o;
    const double lp = o->has_length_penalty ? o->length_penalty : 1.0;
    int64_t idx[64];
    int all_hit = 1, full = o->early_stopping == XATTN_EARLY_STOP_TRUE;
    for (int64_t k = 0; k < K; k++) full &= w->fdone[b * K + k];
    top_n(w->flat, K * g->V, C, idx);
    for (int64_t c = 0; c < C; c++) {
        w->cbeam[c] = idx[c] / g->V;
        w->ctok[c] = idx[c] % g->V;
        w->cs[c] = w->flat[idx[c]];
        w->chit[c] = is_eos(g, w->ctok[c]) || cur + 1 >= g->max_len;
        all_hit &= w->chit[c];
        float f = w->cs[c] / (float)pow((double)(cur + 1 - g->P), lp);
        f += full ? -1.0e9f : 0.0f;
        f += w->unsat[b] ? 0.0f : -1.0e9f;
        f += w->chit[c] && c < K ? 0.0f : -1.0e9f;
        w->cf[c] = f;
    }
    return all_hit;
}

/* The finished set of item b: the K best of the old ones and the new candidates. */
static void update_finished(gen *g, beams *w, int64_t b, int64_t cur)
{
    const int64_t K = g->K, C = w->C, L = g->max_len;
    float sc[64 + 64];
    int64_t idx[64], keep_seq = 0;
    for (int64_t k = 0; k < K; k++) sc[k] = w->fin[b * K + k];
    for (int64_t c = 0; c < C; c++) sc[K + c] = w->cf[c];
    top_n(sc, K + C, K, idx);
    int64_t *seq = w->nseq + b * K * L; /* scratch: K new finished rows (next_running's later) */
    float fs[64];
    int64_t fl[64];
    uint8_t fd[64];
    for (int64_t k = 0; k < K; k++) {
        const int64_t i = idx[k];
        fs[k] = sc[i];
        if (i < K) {
            memcpy(seq + k * L, w->fseq + (b * K + i) * L, sizeof(int64_t) * (size_t)L);
            fl[k] = w->flen[b * K + i], fd[k] = w->fdone[b * K + i];
        } else {
            const int64_t c = i - K, r = b * K + w->cbeam[c];
            memcpy(seq + k * L, g->seq + r * L, sizeof(int64_t) * (size_t)L);
            seq[k * L + cur] = w->ctok[c];
            fl[k] = cur + 1 - g->P, fd[k] = w->chit[c] && c < K;
        }
        keep_seq++;
    }
    memcpy(w->fseq + b * K * L, seq, sizeof(int64_t) * (size_t)(keep_seq * L));
    for (int64_t k = 0; k < K; k++)
        w->fin[b * K + k] = fs[k], w->flen[b * K + k] = fl[k], w->fdone[b * K + k] = fd[k];
}

/* The K best unfinished candidates continue: rows to reorder from, sequences, scores. */
static void next_running(gen *g, beams *w, int64_t b, int64_t cur)
{
    const int64_t K = g->K, C = w->C, L = g->max_len;
    float sc[64];
    int64_t idx[64];
    for (int64_t c = 0; c < C; c++) sc[c] = w->cs[c] + (w->chit[c] ? -1.0e9f : 0.0f);
    top_n(sc, C, K, idx);
    for (int64_t k = 0; k < K; k++) {
        const int64_t c = idx[k], r = b * K + k, from = b * K + w->cbeam[c];
        w->src[r] = from;
        memcpy(w->nseq + r * L, g->seq + from * L, sizeof(int64_t) * (size_t)L);
        w->nseq[r * L + cur] = g->tok[r] = w->ctok[c];
        w->run[r] = sc[c];
    }
}

/* transformers' _check_early_stop_heuristic after the step (cur: the new length). */
static void heuristic(gen *g, beams *w, int64_t b, int64_t cur)
{
    const int64_t K = g->K;
    const xattn_generate_opts *o = g->o;
    const double lp = o->has_length_penalty ? o->length_penalty : 1.0;
    const int64_t len =
        o->early_stopping == XATTN_EARLY_STOP_NEVER && lp > 0 ? g->max_len - g->P : cur - g->P;
    const float best = w->run[b * K] / (float)pow((double)len, lp);
    float mn = w->fin[b * K];
    for (int64_t k = 1; k < K; k++) mn = w->fin[b * K + k] < mn ? w->fin[b * K + k] : mn;
    int any = 0;
    for (int64_t k = 0; k < K; k++) any |= best > (w->fdone[b * K + k] ? mn : -1.0e9f);
    w->unsat[b] &= (uint8_t)any;
}

static xattn_status beams_alloc(gen *g, beams *w, void **block)
{
    const int64_t R = g->R, L = g->max_len, C = XA_MAX((int64_t)2, 1 + g->n_eos) * g->K;
    memset(w, 0, sizeof *w);
    w->C = C;
    const size_t bytes = sizeof(float) * (size_t)(2 * R + 2 * C + g->K * g->V) +
                         sizeof(int64_t) * (size_t)(2 * R * L + 2 * R + 2 * C) +
                         (size_t)(R + g->B + C) + 64;
    char *p = *block = calloc(1, bytes);
    if (!p)
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory for %lld beams", FN, (long long)g->K);
    w->fseq = (int64_t *)p, p += sizeof(int64_t) * (size_t)(R * L);
    w->nseq = (int64_t *)p, p += sizeof(int64_t) * (size_t)(R * L);
    w->flen = (int64_t *)p, p += sizeof(int64_t) * (size_t)R;
    w->src = (int64_t *)p, p += sizeof(int64_t) * (size_t)R;
    w->cbeam = (int64_t *)p, p += sizeof(int64_t) * (size_t)C;
    w->ctok = (int64_t *)p, p += sizeof(int64_t) * (size_t)C;
    w->run = (float *)p, p += sizeof(float) * (size_t)R;
    w->fin = (float *)p, p += sizeof(float) * (size_t)R;
    w->cs = (float *)p, p += sizeof(float) * (size_t)C;
    w->cf = (float *)p, p += sizeof(float) * (size_t)C;
    w->flat = (float *)p, p += sizeof(float) * (size_t)(g->K * g->V);
    w->fdone = (uint8_t *)p, p += R;
    w->unsat = (uint8_t *)p, p += g->B;
    w->chit = (uint8_t *)p;
    for (int64_t r = 0; r < R; r++) {
        w->run[r] = r % g->K ? -1.0e9f : 0.0f;
        w->fin[r] = -1.0e9f;
    }
    memset(w->unsat, 1, (size_t)g->B);
    /* transformers: pad_token_id or eos_token_id[0] (a pad of 0 gives the end token) */
    const int64_t fill = !g->n_eos ? -1 : g->pad > 0 ? g->pad : g->eos[0];
    for (int64_t r = 0; r < R; r++)
        for (int64_t t = g->P; t < L; t++) g->seq[r * L + t] = fill;
    memcpy(w->fseq, g->seq, sizeof(int64_t) * (size_t)(R * L));
    return XATTN_OK;
}

/* Beam search (K = num_beams > 1): the best finished sequence of each item into out. */
static xattn_status beam_search(gen *g, int64_t *out, int64_t *len)
{
    if (g->K > 32)
        return xa_error(XATTN_ERR_UNSUPPORTED, "%s: num_beams %lld (at most 32)", FN,
                        (long long)g->K);
    beams w;
    void *block = NULL;
    xattn_status s = beams_alloc(g, &w, &block);
    if (!s) s = forward(g, g->P, g->tok);
    const int64_t L = g->max_len;
    int64_t cur = g->P;
    while (!s) {
        int all_hit = 1, open = 0, all_done = 1;
        for (int64_t b = 0; b < g->B; b++) {
            accumulate(g, &w, b, cur);
            all_hit &= candidates(g, &w, b, cur);
            update_finished(g, &w, b, cur);
            next_running(g, &w, b, cur);
        }
        memcpy(g->seq, w.nseq, sizeof(int64_t) * (size_t)(g->R * L));
        s = xattn_decoder_reorder(g->s, w.src);
        cur++;
        for (int64_t b = 0; b < g->B; b++) {
            heuristic(g, &w, b, cur);
            open |= w.unsat[b];
        }
        for (int64_t r = 0; r < g->R; r++) all_done &= w.fdone[r];
        const int es = g->o->early_stopping == XATTN_EARLY_STOP_TRUE;
        if (s || !open || (all_done && es) || all_hit) break;
        s = forward(g, 1, g->tok);
    }
    int64_t n = 0;
    for (int64_t b = 0; b < g->B; b++) n = XA_MAX(n, w.flen[b * g->K]);
    for (int64_t b = 0; b < g->B && !s; b++)
        memcpy(out + b * (g->P + n), w.fseq + b * g->K * L, sizeof(int64_t) * (size_t)(g->P + n));
    *len = g->P + n;
    free(block);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Entry point                                                                              */
/* ---------------------------------------------------------------------------------------- */

static xattn_status check_opts(const xattn_lm_config *c, const xattn_generate_opts *o, int64_t P,
                               int64_t max_new)
{
    if (!c->has_head)
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "%s: the model has no prediction head (cls.predictions.*): a BertModel "
                        "cannot generate",
                        FN);
    if (o->num_beams < 0 || o->no_repeat_ngram_size < 0 || o->max_new_tokens < 0 ||
        o->temperature < 0 || o->top_p < 0 || o->top_p > 1 || o->top_k < 0 ||
        (unsigned)o->early_stopping > XATTN_EARLY_STOP_NEVER)
        return xa_error(XATTN_ERR_ARG,
                        "%s: bad options (num_beams, no_repeat_ngram_size, max_new_tokens, top_k "
                        ">= 0; temperature >= 0; top_p in [0, 1])",
                        FN);
    if (o->do_sample && o->num_beams > 1)
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "%s: beam sampling (do_sample with num_beams > 1) "
                        "is not supported",
                        FN);
    if (P + max_new > c->max_positions)
        return xa_error(XATTN_ERR_SHAPE,
                        "%s: a prompt of %lld tokens and %lld new ones exceed "
                        "max_position_embeddings = %lld",
                        FN, (long long)P, (long long)max_new, (long long)c->max_positions);
    if (max_new <= 0)
        return xa_error(XATTN_ERR_ARG, "%s: no new tokens to generate (max_new_tokens %lld)", FN,
                        (long long)max_new);
    return XATTN_OK;
}

/* The end tokens and the pad token: the call's where it names them, else the model's; the pad
 * is the first end token when None (transformers). */
static xattn_status special_ids(gen *g, const xattn_generate_opts *o)
{
    const int64_t V = g->c.vocab_size;
    if (o->n_eos < -1 || o->n_eos > XATTN_MAX_EOS)
        return xa_error(XATTN_ERR_ARG, "%s: n_eos = %lld (at most %d end tokens; -1: none)", FN,
                        (long long)o->n_eos, XATTN_MAX_EOS);
    const int64_t *src = o->n_eos > 0 ? o->eos_token_ids : g->c.eos_token_ids;
    g->n_eos = o->n_eos > 0 ? o->n_eos : o->n_eos < 0 ? 0 : g->c.n_eos;
    for (int64_t i = 0; i < g->n_eos; i++) {
        if (src[i] < 0 || src[i] >= V)
            return xa_error(XATTN_ERR_ARG,
                            "%s: eos_token_id %lld is not a token of the vocabulary of %lld", FN,
                            (long long)src[i], (long long)V);
        g->eos[i] = src[i];
    }
    g->pad = o->has_pad_token_id ? o->pad_token_id : g->c.pad_token_id;
    if (g->pad < -1 || g->pad >= V)
        return xa_error(XATTN_ERR_ARG, "%s: pad_token_id %lld is not a token of the vocabulary", FN,
                        (long long)g->pad);
    if (g->pad < 0) g->pad = g->n_eos ? g->eos[0] : -1;
    if (o->has_bos_token_id && (o->bos_token_id < -1 || o->bos_token_id >= V))
        return xa_error(XATTN_ERR_ARG, "%s: bos_token_id %lld is not a token of the vocabulary", FN,
                        (long long)o->bos_token_id);
    return XATTN_OK;
}

static xattn_status gen_alloc(gen *g, const int64_t *prompt, int64_t M, const float *memory,
                              const uint8_t *mask)
{
    const int64_t R = g->R, rows = R * g->P;
    xattn_status s =
        xattn_decoder_state_new_beams(xattn_lm_decoder(g->m), g->B, g->K, g->max_len, g->P, &g->s);
    if (s) return s;
    g->x = xa_alloc(sizeof(float) * (size_t)(3 * rows * g->h + R * g->V));
    g->seq = xa_alloc(sizeof(int64_t) * (size_t)(R * (g->max_len + g->P + 1)));
    if (!g->x || !g->seq) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN);
    g->hid = g->x + rows * g->h;
    g->t = g->hid + rows * g->h;
    g->logits = g->t + rows * g->h;
    g->tok = g->seq + R * g->max_len;
    for (int64_t r = 0; r < R; r++) {
        const int64_t *p = prompt + r / g->K * g->P;
        memcpy(g->seq + r * g->max_len, p, sizeof(int64_t) * (size_t)g->P);
        memcpy(g->tok + r * g->P, p, sizeof(int64_t) * (size_t)g->P);
    }
    const uint8_t *pm = g->o->prompt_mask;
    if (pm) { /* position ids cumsum(mask) - 1, 0 at masked tokens */
        g->pid = xa_alloc(sizeof(int64_t) * (size_t)(rows + R));
        g->pkeep = xa_alloc((size_t)rows);
        if (!g->pid || !g->pkeep) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN);
        g->next = g->pid + rows;
        for (int64_t r = 0; r < R; r++) {
            int64_t c = 0;
            for (int64_t t = 0; t < g->P; t++) {
                const int keep = pm[r / g->K * g->P + t] != 0;
                c += keep;
                g->pkeep[r * g->P + t] = (uint8_t)keep;
                g->pid[r * g->P + t] = keep ? c - 1 : 0;
            }
        }
    }
    return xattn_decoder_set_memory(g->ctx, g->s, M, memory, mask);
}

/* New tokens after start tokens (the prompt, or the bos token): max_new_tokens, or up to
 * transformers' max_length of 20 in all (0 or less when the prompt reaches it). */
static int64_t new_tokens(const xattn_generate_opts *o, int64_t start)
{
    return o && o->max_new_tokens > 0 ? o->max_new_tokens : 20 - start;
}

int64_t xattn_lm_generate_length(const xattn_generate_opts *o, int64_t P)
{
    const int64_t start = P > 0 ? P : 1, max_new = new_tokens(o, start);
    return start + (max_new > 0 ? max_new : 1);
}

xattn_status xattn_lm_generate(xattn_ctx *ctx, const xattn_lm *m, int64_t B, int64_t M,
                               const float *memory, const uint8_t *memory_mask, int64_t P,
                               const int64_t *prompt, const xattn_generate_opts *opts, int64_t *ids,
                               int64_t *len)
{
    xattn_generate_opts zero;
    memset(&zero, 0, sizeof zero);
    const xattn_generate_opts *o = opts ? opts : &zero;
    if (!m || !memory || !ids || !len || (P > 0 && !prompt) || B <= 0 || M <= 0 || P < 0)
        return xa_error(XATTN_ERR_ARG, "%s: model, memory, ids or len NULL, or bad sizes", FN);
    if (!xa_reserved_zero(o->reserved_))
        return xa_error(XATTN_ERR_ARG, "%s: opts->reserved_ must be zero", FN);
    if (o->prompt_mask && P == 0)
        return xa_error(XATTN_ERR_ARG, "%s: a prompt_mask without a prompt", FN);
    gen g;
    memset(&g, 0, sizeof g);
    g.ctx = ctx, g.m = m, g.o = o;
    xattn_lm_get_config(m, &g.c);
    xattn_status s = special_ids(&g, o);
    if (s) return s;
    int64_t bos = o->has_bos_token_id ? o->bos_token_id : g.c.bos_token_id;
    if (P == 0 && bos < 0)
        return xa_error(XATTN_ERR_ARG, "%s: no prompt and the model has no bos_token_id", FN);
    g.P = P ? P : 1;
    const int64_t max_new = new_tokens(o, g.P);
    s = check_opts(&g.c, o, g.P, max_new);
    if (!s && P) s = xa_lm_check_ids(m, prompt, B * P, "xattn_lm_generate: prompt");
    if (s) return s;
    int64_t *bos_prompt = P ? NULL : malloc(sizeof(int64_t) * (size_t)B);
    for (int64_t b = 0; bos_prompt && b < B; b++) bos_prompt[b] = bos;
    g.B = B, g.K = o->num_beams > 1 ? o->num_beams : 1, g.R = g.B * g.K;
    g.max_len = g.P + max_new, g.V = g.c.vocab_size, g.h = g.c.hidden;
    xa_rng_init(&g.rng, o->seed, "generate");
    const xattn_ctx *prev = xa_ctx_enter(ctx);
    s = gen_alloc(&g, P ? prompt : bos_prompt, M, memory, memory_mask);
    if (!s) s = g.K > 1 ? beam_search(&g, ids, len) : greedy(&g, ids, len);
    xa_ctx_leave(prev);
    free(bos_prompt);
    xa_free(g.pid);
    xa_free(g.pkeep);
    xa_free(g.x);
    xa_free(g.seq);
    xattn_decoder_state_free(g.s);
    if (!s) xa_clear_error();
    return s;
}
