/*
 * Sequence-parallel fused attention (ring attention) over MPI: xattn_sdpa_dist and
 * xattn_sdpa_backward_dist.
 *
 * Rank r holds query rows Q_r and key/value rows K_r, V_r. The key/value shards travel around
 * the ring r -> r + 1: at step t rank r holds the shard of rank (r - t) mod R, and while it
 * computes on that shard the next one is already being received (MPI_Isend / MPI_Irecv of a
 * packed (k | v) buffer, waited for after the computation).
 *
 * Forward: each (query run, key run) pair of a step is one call of the fused kernel with its
 * own causal offset (global positions) and the mask and bias columns of the key run; its output
 * and log-sum-exp (o2, L2) are merged into the running (o, L) of the query rows:
 *   L' = log(e^L + e^L2),  o' = e^(L - L') o + e^(L2 - L') o2
 * A row with no key in a pair (L2 = -inf under -inf fill) changes nothing, so a fully masked
 * row ends with a zero output and lse -inf, as in one process. Under -FLT_MAX fill a pair whose
 * keys are all masked for a row gives L2 = -FLT_MAX and the mean of its values: such partial
 * results are merged by their key counts (a uniform average over every key when the whole row
 * is masked) and lose to any pair with an unmasked key, as in one process.
 *
 * Backward (FlashAttention-2 per pair, with the global lse and the global output): dq stays
 * local; dk, dv accumulate into buffers that travel with their keys (sent on after each step's
 * computation) and come home after the last step; dbias holds the local rows' columns (summed
 * over every rank's rows with an all-reduce when it broadcasts over the rows). Under -FLT_MAX
 * fill a row masked everywhere (lse -FLT_MAX) is the mean of all J_total values: its gradient
 * is dout / J_total on each value and nothing else, added here; the kernel sees it with a zero
 * dout (it would spread it over the keys of one call only).
 */
#include "dist.h"
#include "../kernels/kernels.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TAG_KV  1000
#define TAG_DKV 3000

/* What every rank tells the others before the ring. */
enum {
    SI_B,
    SI_H,
    SI_DH,
    SI_DV,
    SI_I,
    SI_J,
    SI_FILL,
    SI_CAUSAL,
    SI_OFFSET,
    SI_SCALE,
    SI_LAYOUT,
    SI_HAS_LSE,
    SI_DBIAS, /* backward: 0 none, 1 rows local, 2 summed over rows */
    SI_N
};

/* The problem as every rank sees it. */
typedef struct sd_plan {
    const xd_comm *c;
    const xattn_sdpa_params *p;
    int64_t B, H, dh, dv;
    float scale;
    int64_t *I, *J;       /* per rank */
    xattn_shard *qs, *ks; /* per rank */
    int64_t Itot, Jtot, Jmax;
    int any_no_lse, dbias_mode;
    int64_t *info; /* (size, SI_N) */
} sd_plan;

static void plan_free(sd_plan *s)
{
    free(s->info);
    free(s->I);
    free(s->qs);
}

static xattn_status check_local(const xattn_sdpa_params *p, xattn_layout layout, const char *fn)
{
    if (!p) return xa_error(XATTN_ERR_ARG, "%s: params is NULL", fn);
    if (layout != XATTN_LAYOUT_CONTIGUOUS && layout != XATTN_LAYOUT_ZIGZAG)
        return xa_error(XATTN_ERR_ARG, "%s: unknown layout %d", fn, (int)layout);
    if (p->B < 0 || p->H < 0 || p->I < 0 || p->J < 0 || p->dh < 1 || p->dv < 1)
        return xa_error(XATTN_ERR_ARG,
                        "%s: bad sizes (B=%lld H=%lld I=%lld J=%lld dh=%lld dv=%lld)", fn,
                        (long long)p->B, (long long)p->H, (long long)p->I, (long long)p->J,
                        (long long)p->dh, (long long)p->dv);
    if (p->probs) return xa_error(XATTN_ERR_ARG, "%s: probs is not available distributed", fn);
    if (p->has_scale && !isfinite(p->scale))
        return xa_error(XATTN_ERR_ARG, "%s: scale is not finite", fn);
    if (p->fill != XATTN_FILL_NEG_INF && p->fill != XATTN_FILL_MIN_FLOAT)
        return xa_error(XATTN_ERR_ARG, "%s: unknown fill mode %d", fn, (int)p->fill);
    const int64_t st[] = {p->q_sb,    p->q_sh,    p->q_si,    p->k_sb,    p->k_sh,    p->k_sj,
                          p->v_sb,    p->v_sh,    p->v_sj,    p->o_sb,    p->o_sh,    p->o_si,
                          p->mask_sb, p->mask_sh, p->mask_si, p->bias_sb, p->bias_sh, p->bias_si};
    for (size_t i = 0; i < XA_N(st); i++)
        if (st[i] < 0) return xa_error(XATTN_ERR_ARG, "%s: negative stride", fn);
    const int64_t BH = p->B * p->H;
    if (BH && p->I && (!p->q || !p->out))
        return xa_error(XATTN_ERR_ARG, "%s: q or out is NULL (%lld local query rows)", fn,
                        (long long)p->I);
    if (BH && p->J && (!p->k || !p->v))
        return xa_error(XATTN_ERR_ARG, "%s: k or v is NULL (%lld local key rows)", fn,
                        (long long)p->J);
    int64_t t;
    if (xa_mul_ok(BH, XA_MAX(p->I, p->J), &t) || xa_mul_ok(t, p->dh + p->dv + 4, &t) ||
        xa_mul_ok(t, 8, &t))
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow", fn);
    return XATTN_OK;
}

/* Exchanges the local descriptions and checks that they agree (the same outcome on every rank:
 * every rank sees the same table). */
static xattn_status plan_make(sd_plan *s, const xd_comm *c, const xattn_sdpa_params *p,
                              const xattn_sdpa_grads *g, xattn_layout layout, const char *fn)
{
    memset(s, 0, sizeof *s);
    s->c = c;
    s->p = p;
    const int R = c->size;
    int64_t mine[SI_N];
    mine[SI_B] = p->B, mine[SI_H] = p->H, mine[SI_DH] = p->dh, mine[SI_DV] = p->dv;
    mine[SI_I] = p->I, mine[SI_J] = p->J, mine[SI_FILL] = p->fill, mine[SI_CAUSAL] = !!p->causal;
    mine[SI_OFFSET] = p->causal ? p->causal_offset : 0;
    float sc = p->has_scale ? p->scale : (float)(1.0 / sqrt((double)p->dh));
    uint32_t bits;
    memcpy(&bits, &sc, 4);
    mine[SI_SCALE] = bits, mine[SI_LAYOUT] = layout, mine[SI_HAS_LSE] = p->lse != NULL;
    mine[SI_DBIAS] = g && g->dbias ? (g->dbias_si == 0 ? 2 : 1) : 0;
    s->info = malloc(sizeof(int64_t) * SI_N * (size_t)R);
    s->I = malloc(sizeof(int64_t) * 2 * (size_t)R);
    s->qs = malloc(sizeof(xattn_shard) * 2 * (size_t)R);
    xattn_status st = XATTN_OK;
    if (!s->info || !s->I || !s->qs) st = xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    if ((st = xd_agree(c, st))) return st;
    s->J = s->I + R;
    s->ks = s->qs + R;
    int rc = MPI_Allgather(mine, SI_N, MPI_INT64_T, s->info, SI_N, MPI_INT64_T, c->comm);
    if (rc != MPI_SUCCESS) return xd_mpi_error(rc, fn, "MPI_Allgather");
    static const char *const names[] = {"B",
                                        "H",
                                        "dh",
                                        "dv",
                                        NULL,
                                        NULL,
                                        "fill",
                                        "causal",
                                        "causal_offset",
                                        "scale",
                                        "layout",
                                        NULL,
                                        "dbias (present, broadcast over rows)"};
    for (int r = 0; r < R; r++) {
        const int64_t *x = s->info + r * SI_N;
        for (int k = 0; k < SI_N; k++)
            if (names[k] && x[k] != s->info[k])
                return xa_error(XATTN_ERR_ARG, "%s: rank %d has %s = %lld, rank 0 has %lld", fn, r,
                                names[k], (long long)x[k], (long long)s->info[k]);
        s->I[r] = x[SI_I];
        s->J[r] = x[SI_J];
        if (!x[SI_HAS_LSE]) s->any_no_lse = 1;
    }
    if ((st = xd_shards(layout, s->I, R, s->qs, "query", &s->Itot))) return st;
    if ((st = xd_shards(layout, s->J, R, s->ks, "key", &s->Jtot))) return st;
    s->B = p->B, s->H = p->H, s->dh = p->dh, s->dv = p->dv;
    s->scale = sc;
    s->dbias_mode = (int)mine[SI_DBIAS];
    for (int r = 0; r < R; r++) s->Jmax = XA_MAX(s->Jmax, s->J[r]);
    return XATTN_OK;
}

/* floats of rank s's packed keys and values */
static int64_t kv_floats(const sd_plan *s, int64_t J) { return s->B * s->H * J * (s->dh + s->dv); }

/* Packs the local keys and values: (B, H, J, dh) then (B, H, J, dv), contiguous. */
static void pack_kv(const sd_plan *s, float *buf)
{
    const xattn_sdpa_params *p = s->p;
    const int64_t J = p->J;
    float *kb = buf, *vb = buf + s->B * s->H * J * s->dh;
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t h = 0; h < s->H; h++)
            for (int64_t j = 0; j < J; j++) {
                memcpy(kb + ((b * s->H + h) * J + j) * s->dh,
                       p->k + b * p->k_sb + h * p->k_sh + j * p->k_sj,
                       sizeof(float) * (size_t)s->dh);
                memcpy(vb + ((b * s->H + h) * J + j) * s->dv,
                       p->v + b * p->v_sb + h * p->v_sh + j * p->v_sj,
                       sizeof(float) * (size_t)s->dv);
            }
}

/* The kernel problem of query run qa of this rank against key run kb of rank `src`'s shard,
 * packed in kv; 0 when the pair has nothing to compute. */
static int pair_problem(const sd_plan *s, const float *kv, int src, int qa, int kb, xa_attn *a,
                        const char *fn)
{
    const xattn_sdpa_params *p = s->p;
    const xattn_shard *q = &s->qs[s->c->rank], *k = &s->ks[src];
    const int64_t qlen = q->len[qa], klen = k->len[kb], Js = s->J[src];
    if (qa >= q->n || kb >= k->n || !qlen || !klen || !s->B || !s->H) return 0;
    const int64_t q0 = q->start[qa], k0 = k->start[kb];
    const int64_t qoff = xd_run_off(q, qa), koff = xd_run_off(k, kb);
    /* under -inf fill, keys after every query's horizon contribute nothing */
    if (p->causal && p->fill == XATTN_FILL_NEG_INF && k0 > q0 + qlen - 1 + p->causal_offset)
        return 0;
    memset(a, 0, sizeof *a);
    a->fn = fn;
    a->B = s->B, a->H = s->H, a->I = qlen, a->J = klen, a->dh = s->dh, a->dv = s->dv;
    a->q = p->q + qoff * p->q_si;
    a->q_sb = p->q_sb, a->q_sh = p->q_sh, a->q_si = p->q_si;
    a->k = kv + koff * s->dh;
    a->k_sb = s->H * Js * s->dh, a->k_sh = Js * s->dh, a->k_sj = s->dh;
    a->v = kv + s->B * s->H * Js * s->dh + koff * s->dv;
    a->v_sb = s->H * Js * s->dv, a->v_sh = Js * s->dv, a->v_sj = s->dv;
    a->scale = s->scale;
    a->fill = p->fill;
    a->causal = p->causal;
    a->causal_offset = p->causal_offset + q0 - k0;
    if (p->mask) {
        a->mask = p->mask + qoff * p->mask_si + k0;
        a->mask_sb = p->mask_sb, a->mask_sh = p->mask_sh, a->mask_si = p->mask_si;
    }
    if (p->bias) {
        a->bias = p->bias + qoff * p->bias_si + k0;
        a->bias_sb = p->bias_sb, a->bias_sh = p->bias_sh, a->bias_si = p->bias_si;
    }
    a->bias_sj = 1;
    a->p_sj = 1;
    return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* Forward                                                                                  */

typedef struct sd_acc {
    float *O;   /* (B, H, I, dv) merged output */
    float *L;   /* (B, H, I) merged log-sum-exp */
    float *cnt; /* (B, H, I) keys behind a -FLT_MAX lse (all masked so far) */
    float *o2;  /* (B, H, run, dv) one pair's output */
    float *l2;  /* (B, H, run) its lse */
} sd_acc;

/* Merges one pair's (o2, l2) for query run qa (klen keys) into the accumulators. */
static void merge_pair(const sd_plan *s, sd_acc *m, int qa, int64_t klen)
{
    const xattn_shard *q = &s->qs[s->c->rank];
    const int64_t I = s->p->I, qlen = q->len[qa], qoff = xd_run_off(q, qa), dv = s->dv;
    for (int64_t bh = 0; bh < s->B * s->H; bh++)
        for (int64_t i = 0; i < qlen; i++) {
            const int64_t x = bh * I + qoff + i;
            const float L2 = m->l2[bh * qlen + i], L1 = m->L[x];
            const float *o2 = m->o2 + (bh * qlen + i) * dv;
            float *o = m->O + x * dv;
            if (L2 == -INFINITY) continue; /* no key of the pair */
            const int full2 = L2 <= -FLT_MAX, full1 = L1 <= -FLT_MAX && L1 != -INFINITY;
            if (L1 == -INFINITY || (full1 && !full2)) { /* the pair's result replaces */
                memcpy(o, o2, sizeof(float) * (size_t)dv);
                m->L[x] = L2;
                m->cnt[x] = full2 ? (float)klen : 0.0f;
            } else if (full1 && full2) { /* both all masked: a mean over both key sets */
                const double c1 = m->cnt[x], c2 = (double)klen, w1 = c1 / (c1 + c2),
                             w2 = c2 / (c1 + c2);
                for (int64_t d = 0; d < dv; d++) o[d] = (float)(w1 * o[d] + w2 * o2[d]);
                m->cnt[x] = (float)(c1 + c2);
            } else if (!full2) { /* both have unmasked keys */
                const double mx = L1 > L2 ? L1 : L2, mn = L1 > L2 ? L2 : L1;
                const double L = mx + log1p(exp(mn - mx));
                const double w1 = exp(L1 - L), w2 = exp(L2 - L);
                for (int64_t d = 0; d < dv; d++) o[d] = (float)(w1 * o[d] + w2 * o2[d]);
                m->L[x] = (float)L;
            } /* else: the pair is all masked, the running result has unmasked keys: no change */
        }
}

static xattn_status sdpa_forward_plan(const sd_plan *s, const char *fn, float *lse_out)
{
    const xattn_sdpa_params *p = s->p;
    const xd_comm *c = s->c;
    const int R = c->size, me = c->rank;
    const int64_t BH = s->B * s->H, I = p->I;
    const int64_t qrun = XA_MAX(s->qs[me].len[0], s->qs[me].len[1]);
    const int64_t nkv = kv_floats(s, s->Jmax);
    const int64_t nacc = BH * I * (s->dv + 2) + BH * qrun * (s->dv + 1);
    float *kvbuf = xa_alloc(sizeof(float) * (size_t)(2 * nkv + nacc + 16));
    xattn_status st = kvbuf ? XATTN_OK : xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    if ((st = xd_agree(c, st))) {
        xa_free(kvbuf);
        return st;
    }
    float *cur = kvbuf, *nxt = kvbuf + nkv;
    sd_acc m;
    m.O = nxt + nkv;
    m.L = m.O + BH * I * s->dv;
    m.cnt = m.L + BH * I;
    m.o2 = m.cnt + BH * I;
    m.l2 = m.o2 + BH * qrun * s->dv;
    memset(m.O, 0, sizeof(float) * (size_t)(BH * I * s->dv));
    for (int64_t x = 0; x < BH * I; x++) m.L[x] = -INFINITY, m.cnt[x] = 0.0f;
    pack_kv(s, cur);
    int mrc = MPI_SUCCESS;
    for (int t = 0; t < R; t++) {
        const int src = (me - t + R) % R, src_next = (me - t - 1 + R) % R;
        xd_xfer x = {0};
        if (t < R - 1)
            xd_post(c, &x, cur, kv_floats(s, s->J[src]), nxt, kv_floats(s, s->J[src_next]), TAG_KV);
        for (int qa = 0; qa < 2 && st == XATTN_OK; qa++)
            for (int kb = 0; kb < 2 && st == XATTN_OK; kb++) {
                xa_attn a;
                if (!pair_problem(s, cur, src, qa, kb, &a, fn)) continue;
                a.out = m.o2;
                a.o_si = s->dv, a.o_sh = a.I * s->dv, a.o_sb = s->H * a.I * s->dv;
                a.lse = m.l2;
                if ((st = xa_attention(&a)) == XATTN_OK) merge_pair(s, &m, qa, a.J);
            }
        int rc = t < R - 1 ? xd_wait(&x) : MPI_SUCCESS;
        if (rc != MPI_SUCCESS && mrc == MPI_SUCCESS) mrc = rc;
        float *tmp = cur;
        cur = nxt, nxt = tmp;
    }
    if (st == XATTN_OK && mrc != MPI_SUCCESS) st = xd_mpi_error(mrc, fn, "the ring transfer");
    if ((st = xd_agree(c, st)) == XATTN_OK) {
        for (int64_t b = 0; b < s->B; b++)
            for (int64_t h = 0; h < s->H; h++)
                for (int64_t i = 0; i < I; i++)
                    memcpy(p->out + b * p->o_sb + h * p->o_sh + i * p->o_si,
                           m.O + ((b * s->H + h) * I + i) * s->dv, sizeof(float) * (size_t)s->dv);
        if (lse_out) memcpy(lse_out, m.L, sizeof(float) * (size_t)(BH * I));
    }
    xa_free(kvbuf);
    return st;
}

xattn_status xattn_sdpa_dist(xattn_ctx *ctx, const xattn_sdpa_params *p, xattn_layout layout)
{
    static const char fn[] = "xattn_sdpa_dist";
    const xd_comm *c = xd_comm_of(ctx, fn);
    if (!c) return XATTN_ERR_ARG;
    const xattn_ctx *prev = xa_ctx_enter(ctx);
    sd_plan s;
    memset(&s, 0, sizeof s);
    xattn_status st = xd_agree(c, check_local(p, layout, fn));
    if (st == XATTN_OK && (st = plan_make(&s, c, p, NULL, layout, fn)) == XATTN_OK)
        st = sdpa_forward_plan(&s, fn, p->lse);
    plan_free(&s);
    xa_ctx_leave(prev);
    if (st == XATTN_OK) xa_clear_error();
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Backward                                                                                 */

static xattn_status check_grads_local(const xattn_sdpa_params *p, const xattn_sdpa_grads *g,
                                      const char *fn)
{
    if (!g) return xa_error(XATTN_ERR_ARG, "%s: grads is NULL", fn);
    if (!xa_reserved_zero(g->reserved_))
        return xa_error(XATTN_ERR_ARG, "%s: grads->reserved_ must be zero", fn);
    const int64_t st[] = {g->do_sb, g->do_sh, g->do_si,    g->dq_sb,    g->dq_sh,
                          g->dq_si, g->dk_sb, g->dk_sh,    g->dk_sj,    g->dv_sb,
                          g->dv_sh, g->dv_sj, g->dbias_sb, g->dbias_sh, g->dbias_si};
    for (size_t i = 0; i < XA_N(st); i++)
        if (st[i] < 0) return xa_error(XATTN_ERR_ARG, "%s: negative gradient stride", fn);
    if (p->B * p->H != 0 && p->I && (!g->dout || !p->out))
        return xa_error(XATTN_ERR_ARG,
                        "%s: dout or out (the forward's output) is NULL (%lld local query rows)",
                        fn, (long long)p->I);
    return XATTN_OK;
}

/* Sets the local rows of a per-head tensor to zero. */
static void zero_rows(float *x, int64_t B, int64_t H, int64_t n, int64_t d, int64_t sb, int64_t sh,
                      int64_t sr)
{
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t r = 0; r < n; r++)
                memset(x + b * sb + h * sh + r * sr, 0, sizeof(float) * (size_t)d);
}

/* x rows (strided) = or += packed rows (B, H, n, d). */
static void put_rows(float *x, int64_t sb, int64_t sh, int64_t sr, const float *y, int64_t B,
                     int64_t H, int64_t n, int64_t d, int add)
{
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t r = 0; r < n; r++) {
                float *o = x + b * sb + h * sh + r * sr;
                const float *s = y + ((b * H + h) * n + r) * d;
                if (add)
                    for (int64_t e = 0; e < d; e++) o[e] += s[e];
                else
                    memcpy(o, s, sizeof(float) * (size_t)d);
            }
}

typedef struct sd_bwd {
    const xattn_sdpa_grads *g;
    const float *lse; /* (B, H, I) the global log-sum-exp of the local rows */
    float *lse_run;   /* (B, H, run) */
    float *dout_run;  /* (B, H, run, dv): dout scaled for fully masked rows (-FLT_MAX fill) */
    float *dbias_sum; /* (B|1, H|1, J_total) when dbias is summed over rows */
    double *dfull;    /* (dv) sum of the dout of fully masked rows                          */
    int64_t dbB, dbH; /* its broadcast axes (1 or B, 1 or H) */
} sd_bwd;

/* The gradients of one (query run, key run) pair, added. */
static xattn_status bwd_pair(const sd_plan *s, const sd_bwd *w, xa_attn *a, int qa, int src, int kb,
                             float *dkv)
{
    const xattn_sdpa_params *p = s->p;
    const xattn_sdpa_grads *g = w->g;
    const xattn_shard *q = &s->qs[s->c->rank], *k = &s->ks[src];
    const int64_t qoff = xd_run_off(q, qa), koff = xd_run_off(k, kb), k0 = k->start[kb];
    const int64_t qlen = a->I, BH = s->B * s->H, Js = s->J[src], dv = s->dv;
    a->out = p->out + qoff * p->o_si;
    a->o_sb = p->o_sb, a->o_sh = p->o_sh, a->o_si = p->o_si;
    xa_attn_grad d;
    memset(&d, 0, sizeof d);
    int full = 0;
    for (int64_t bh = 0; bh < BH; bh++)
        for (int64_t i = 0; i < qlen; i++) {
            const float L = w->lse[bh * p->I + qoff + i];
            w->lse_run[bh * qlen + i] = L;
            if (p->fill == XATTN_FILL_MIN_FLOAT && L <= -FLT_MAX && L != -INFINITY) full = 1;
        }
    d.lse = w->lse_run;
    d.dout = g->dout + qoff * g->do_si;
    d.do_sb = g->do_sb, d.do_sh = g->do_sh, d.do_si = g->do_si;
    if (full) {
        /* rows masked everywhere (lse -FLT_MAX): a uniform average over the J_total keys, whose
         * only gradient is dout / J_total on every key's value. They go to the kernel with a zero
         * dout (no gradient at all there) and their share is added here. */
        const double f = 1.0 / (double)s->Jtot;
        for (int64_t bh = 0; bh < BH; bh++) {
            double *acc = w->dfull;
            for (int64_t e = 0; e < dv; e++) acc[e] = 0.0;
            int any = 0;
            for (int64_t i = 0; i < qlen; i++) {
                const float *src_row = g->dout + (bh / s->H) * g->do_sb + (bh % s->H) * g->do_sh +
                                       (qoff + i) * g->do_si;
                float *o = w->dout_run + (bh * qlen + i) * dv;
                const float L = w->lse_run[bh * qlen + i];
                if (L <= -FLT_MAX && L != -INFINITY) {
                    for (int64_t e = 0; e < dv; e++) acc[e] += src_row[e], o[e] = 0.0f;
                    any = 1;
                } else {
                    memcpy(o, src_row, sizeof(float) * (size_t)dv);
                }
            }
            if (!any) continue;
            float *dvk = dkv + BH * Js * s->dh + (bh * Js + koff) * dv;
            for (int64_t j = 0; j < a->J; j++)
                for (int64_t e = 0; e < dv; e++) dvk[j * dv + e] += (float)(acc[e] * f);
        }
        d.dout = w->dout_run;
        d.do_sb = s->H * qlen * dv, d.do_sh = qlen * dv, d.do_si = dv;
    }
    if (g->dq) {
        d.dq = g->dq + qoff * g->dq_si;
        d.dq_sb = g->dq_sb, d.dq_sh = g->dq_sh, d.dq_si = g->dq_si;
    }
    d.dk = dkv + koff * s->dh;
    d.dk_sb = s->H * Js * s->dh, d.dk_sh = Js * s->dh, d.dk_sj = s->dh;
    d.dv = dkv + BH * Js * s->dh + koff * dv;
    d.dv_sb = s->H * Js * dv, d.dv_sh = Js * dv, d.dv_sj = dv;
    if (g->dbias && w->dbias_sum) {
        d.dbias = w->dbias_sum + k0;
        d.dbias_sb = w->dbB > 1 ? w->dbH * s->Jtot : 0;
        d.dbias_sh = w->dbH > 1 ? s->Jtot : 0;
        d.dbias_si = 0;
    } else if (g->dbias) {
        d.dbias = g->dbias + qoff * g->dbias_si + k0;
        d.dbias_sb = g->dbias_sb, d.dbias_sh = g->dbias_sh, d.dbias_si = g->dbias_si;
    }
    d.dbias_sj = 1;
    d.accumulate = 1;
    return xa_attention_backward(a, &d);
}

static xattn_status sdpa_backward_plan(const sd_plan *s, const sd_bwd *w0, const char *fn)
{
    const xattn_sdpa_params *p = s->p;
    const xattn_sdpa_grads *g = w0->g;
    const xd_comm *c = s->c;
    const int R = c->size, me = c->rank;
    const int64_t BH = s->B * s->H, I = p->I;
    const int64_t qrun = XA_MAX(s->qs[me].len[0], s->qs[me].len[1]);
    const int64_t nkv = kv_floats(s, s->Jmax);
    sd_bwd w = *w0;
    w.dbB = g->dbias && g->dbias_sb ? s->B : 1;
    w.dbH = g->dbias && g->dbias_sh ? s->H : 1;
    const int64_t ndb = s->dbias_mode == 2 ? w.dbB * w.dbH * s->Jtot : 0;
    const int64_t n = 4 * nkv + BH * qrun * (s->dv + 1) + ndb + 2 * s->dv;
    float *mem = xa_alloc(sizeof(float) * (size_t)(n + 16));
    xattn_status st = mem ? XATTN_OK : xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    if ((st = xd_agree(c, st))) {
        xa_free(mem);
        return st;
    }
    float *kv = mem, *kvn = kv + nkv, *dkv = kvn + nkv, *dkvn = dkv + nkv;
    w.lse_run = dkvn + nkv;
    w.dout_run = w.lse_run + BH * qrun;
    w.dbias_sum = ndb ? w.dout_run + BH * qrun * s->dv : NULL;
    if (ndb) memset(w.dbias_sum, 0, sizeof(float) * (size_t)ndb);
    w.dfull = (double *)(((uintptr_t)(w.dout_run + BH * qrun * s->dv + ndb) + 7) & ~(uintptr_t)7);
    if (g->dq && !g->accumulate)
        zero_rows(g->dq, s->B, s->H, I, s->dh, g->dq_sb, g->dq_sh, g->dq_si);
    if (s->dbias_mode == 1 && !g->accumulate)
        zero_rows(g->dbias, g->dbias_sb ? s->B : 1, g->dbias_sh ? s->H : 1, I, s->Jtot, g->dbias_sb,
                  g->dbias_sh, g->dbias_si);
    pack_kv(s, kv);
    memset(dkv, 0, sizeof(float) * (size_t)kv_floats(s, s->J[me]));
    int mrc = MPI_SUCCESS;
    xd_xfer xg = {0};
    for (int t = 0; t < R; t++) {
        const int src = (me - t + R) % R, src_next = (me - t - 1 + R) % R;
        xd_xfer x = {0};
        if (t < R - 1)
            xd_post(c, &x, kv, kv_floats(s, s->J[src]), kvn, kv_floats(s, s->J[src_next]), TAG_KV);
        if (t > 0) { /* this shard's gradient so far, from the previous rank */
            int rc = xd_wait(&xg);
            if (rc != MPI_SUCCESS && mrc == MPI_SUCCESS) mrc = rc;
        }
        for (int qa = 0; qa < 2 && st == XATTN_OK && mrc == MPI_SUCCESS; qa++)
            for (int kb = 0; kb < 2 && st == XATTN_OK; kb++) {
                xa_attn a;
                if (!pair_problem(s, kv, src, qa, kb, &a, fn)) continue;
                st = bwd_pair(s, &w, &a, qa, src, kb, dkv);
            }
        /* the gradient travels on; after the last step it reaches its owner */
        xd_post(c, &xg, dkv, kv_floats(s, s->J[src]), dkvn, kv_floats(s, s->J[src_next]), TAG_DKV);
        int rc = t < R - 1 ? xd_wait(&x) : MPI_SUCCESS;
        if (rc != MPI_SUCCESS && mrc == MPI_SUCCESS) mrc = rc;
        float *tmp = kv;
        kv = kvn, kvn = tmp;
        tmp = dkv;
        dkv = dkvn, dkvn = tmp;
    }
    int rc = xd_wait(&xg);
    if (rc != MPI_SUCCESS && mrc == MPI_SUCCESS) mrc = rc;
    if (st == XATTN_OK && mrc != MPI_SUCCESS) st = xd_mpi_error(mrc, fn, "the ring transfer");
    st = xd_agree(c, st);
    if (st == XATTN_OK && ndb) { /* the rows of every rank */
        for (int64_t o = 0; o < ndb && st == XATTN_OK; o += (int64_t)1 << 30) {
            rc = MPI_Allreduce(MPI_IN_PLACE, w.dbias_sum + o,
                               (int)XA_MIN(ndb - o, (int64_t)1 << 30), MPI_FLOAT, MPI_SUM, c->comm);
            if (rc != MPI_SUCCESS) st = xd_mpi_error(rc, fn, "MPI_Allreduce of dbias");
        }
        st = xd_agree(c, st);
        if (st == XATTN_OK)
            put_rows(g->dbias, g->dbias_sb, g->dbias_sh, 0, w.dbias_sum, w.dbB, w.dbH, 1, s->Jtot,
                     g->accumulate);
    }
    if (st == XATTN_OK) {
        const int64_t J = p->J;
        if (g->dk)
            put_rows(g->dk, g->dk_sb, g->dk_sh, g->dk_sj, dkv, s->B, s->H, J, s->dh, g->accumulate);
        if (g->dv)
            put_rows(g->dv, g->dv_sb, g->dv_sh, g->dv_sj, dkv + BH * J * s->dh, s->B, s->H, J,
                     s->dv, g->accumulate);
    }
    xa_free(mem);
    return st;
}

xattn_status xattn_sdpa_backward_dist(xattn_ctx *ctx, const xattn_sdpa_params *p,
                                      const xattn_sdpa_grads *g, xattn_layout layout)
{
    static const char fn[] = "xattn_sdpa_backward_dist";
    const xd_comm *c = xd_comm_of(ctx, fn);
    if (!c) return XATTN_ERR_ARG;
    const xattn_ctx *prev = xa_ctx_enter(ctx);
    sd_plan s;
    memset(&s, 0, sizeof s);
    float *own = NULL;
    xattn_status st = check_local(p, layout, fn);
    if (st == XATTN_OK) st = check_grads_local(p, g, fn);
    st = xd_agree(c, st);
    if (st == XATTN_OK) st = plan_make(&s, c, p, g, layout, fn);
    sd_bwd w;
    memset(&w, 0, sizeof w);
    w.g = g;
    if (st == XATTN_OK) {
        w.lse = p->lse;
        if (s.any_no_lse) { /* some rank lacks the forward's lse: every rank recomputes it */
            const int64_t BHI = s.B * s.H * p->I;
            own = xa_alloc(sizeof(float) * (size_t)(BHI * (1 + s.dv) + 16));
            st = xd_agree(c, own ? XATTN_OK : xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn));
            if (st == XATTN_OK) {
                xattn_sdpa_params f = *p;
                f.out = own + BHI;
                f.o_si = s.dv, f.o_sh = p->I * s.dv, f.o_sb = s.H * p->I * s.dv;
                sd_plan s2 = s;
                s2.p = &f;
                st = sdpa_forward_plan(&s2, fn, own);
                w.lse = own;
            }
        }
    }
    if (st == XATTN_OK) st = sdpa_backward_plan(&s, &w, fn);
    xa_free(own);
    plan_free(&s);
    xa_ctx_leave(prev);
    if (st == XATTN_OK) xa_clear_error();
    return st;
}
