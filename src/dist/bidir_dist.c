/*
 * Sequence-parallel bidirectional attention over MPI: xattn_bidir_attention_dist and
 * xattn_bidir_attention_backward_dist.
 *
 * Rank r holds x rows X_r (qk, v; I_r of them) and context rows C_r (cqk, cv; J_r). One
 * similarity S = scale qk cqk^T (+ bias) is softmaxed along j (the row side, owned by the x
 * rows) and along i (the column side, owned by the context rows). The context shards travel the
 * ring r -> r + 1 (at step t rank r holds rank (r - t) mod R's shard, the next one arriving while
 * it computes); what belongs to the context rows (column statistics, cout, their gradients)
 * accumulates into a buffer that travels with the shard, sent on after each step's computation,
 * and comes home after the last step.
 *
 * Forward, two rings:
 *   1. statistics: per block (X_r, C_s) the row maxima and sums (merged locally over the
 *      shards) and the column maxima and sums (merged into the shard's travelling buffer):
 *      m' = max(m1, m2), l' = l1 e^(m1 - m') + l2 e^(m2 - m'). A masked logit is -FLT_MAX, so a
 *      row masked everywhere ends with m = -FLT_MAX and l = J_total: its probabilities are
 *      exactly 1 / J_total, the package's uniform average.
 *   2. outputs: with the global statistics each block's probabilities are final, so talking
 *      heads mix them tile by tile (the fused kernel's mixing mode; the identity without talking
 *      heads) and out += A'_block cv_s (local), cout_s += C'_block^T v_r (travelling).
 * Backward, two rings of tiles (all heads of a tile at once), with the global lse:
 *   1. the row terms Dr = rowsum(dA o A) (local), the column terms Dc = colsum(dC o C)
 *      (travelling) and the talking-heads weights' gradients (summed over ranks at the end);
 *   2. dS = A o (dA - Dr) + C o (dC - Dc) (0 where masked) and from it dqk, dv (local), dcqk,
 *      dcv (travelling), dbias (local rows, the shard's columns).
 */
#include "dist.h"
#include "../kernels/bidir_tiles.h"
#include "../kernels/kernels.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TAG_ST  5000
#define TAG_ACC 7000

enum { BI_B, BI_H, BI_DH, BI_SCALE, BI_TALK, BI_I, BI_J, BI_CMASK, BI_HAS_LSE, BI_N };

/* What travels with a context shard of J_s rows in each ring (offsets in floats, -1: absent). */
/* RING_F0: the one-ring forward without talking heads (online statistics, as in xattn_sdpa_dist) */
typedef enum { RING_F0, RING_F1, RING_F2, RING_B1, RING_B2 } ring_kind;
typedef struct bd_lay {
    int64_t cqk, cv, keep, s1, s2, dco, dc, n; /* static part */
    int64_t nacc;                              /* the accumulator */
} bd_lay;

typedef struct bd_plan {
    const xd_comm *c;
    const xattn_bidir_params *p;
    int64_t B, H, dh;
    float scale;
    int64_t *I, *J; /* per rank */
    int64_t *j0;    /* first global context row of each rank */
    int64_t Itot, Jtot, Jmax;
    int any_cmask, any_no_lse, talk;
    const float *talk_w, *ctalk_w; /* the weights, or the identity */
    float *eye;
    int64_t *info;
} bd_plan;

static bd_lay lay_of(const bd_plan *s, ring_kind k, int64_t J)
{
    const int64_t n = s->B * s->H * J, nd = n * s->dh;
    bd_lay l = {-1, -1, -1, -1, -1, -1, -1, 0, 0};
    l.cqk = 0, l.n = nd;
    if (k != RING_F1) l.cv = l.n, l.n += nd;
    if (s->any_cmask) l.keep = l.n, l.n += s->B * J;
    if (k != RING_F0 && k != RING_F1) l.s1 = l.n, l.n += n; /* column max (F2), lse (B1, B2) */
    if (k == RING_F2) l.s2 = l.n, l.n += n;                 /* column sum */
    if (k == RING_B1 || k == RING_B2) l.dco = l.n, l.n += nd;
    if (k == RING_B2) l.dc = l.n, l.n += n;
    l.nacc = k == RING_F0   ? nd + 2 * n /* cout (unnormalised), column max, column sum */
             : k == RING_F1 ? 2 * n
             : k == RING_F2 ? nd
             : k == RING_B1 ? n
                            : 2 * nd;
    return l;
}

static void plan_free(bd_plan *s)
{
    free(s->info);
    free(s->I);
    xa_free(s->eye);
}

static xattn_status check_local(const xattn_bidir_params *p, const char *fn)
{
    if (!p) return xa_error(XATTN_ERR_ARG, "%s: params is NULL", fn);
    if (!xa_reserved_zero(p->reserved_))
        return xa_error(XATTN_ERR_ARG, "%s: params->reserved_ must be zero", fn);
    if (p->B < 0 || p->H < 1 || p->I < 0 || p->J < 0 || p->dh < 1)
        return xa_error(XATTN_ERR_ARG, "%s: bad sizes (B=%lld H=%lld I=%lld J=%lld dh=%lld)", fn,
                        (long long)p->B, (long long)p->H, (long long)p->I, (long long)p->J,
                        (long long)p->dh);
    if (p->B && p->I && (!p->qk || !p->v || !p->out))
        return xa_error(XATTN_ERR_ARG, "%s: qk, v or out is NULL (%lld local x rows)", fn,
                        (long long)p->I);
    if (p->B && p->J && (!p->cqk || !p->cv || !p->cout))
        return xa_error(XATTN_ERR_ARG, "%s: cqk, cv or cout is NULL (%lld local context rows)", fn,
                        (long long)p->J);
    if ((p->talk == NULL) != (p->ctalk == NULL))
        return xa_error(XATTN_ERR_ARG, "%s: talking heads need both weights, or neither", fn);
    if (p->attn || p->cattn)
        return xa_error(XATTN_ERR_ARG, "%s: attn and cattn are not available distributed", fn);
    if (p->has_scale && !isfinite(p->scale))
        return xa_error(XATTN_ERR_ARG, "%s: scale is not finite", fn);
    const int64_t st[] = {p->qk_sb,   p->qk_sh,    p->qk_si,   p->cqk_sb, p->cqk_sh, p->cqk_sj,
                          p->v_sb,    p->v_sh,     p->v_si,    p->cv_sb,  p->cv_sh,  p->cv_sj,
                          p->o_sb,    p->o_sh,     p->o_si,    p->co_sb,  p->co_sh,  p->co_sj,
                          p->mask_sb, p->cmask_sb, p->bias_sb, p->bias_sh};
    for (size_t i = 0; i < XA_N(st); i++)
        if (st[i] < 0) return xa_error(XATTN_ERR_ARG, "%s: negative stride", fn);
    int64_t t;
    if (xa_mul_ok(p->B * p->H, XA_MAX(p->I, p->J) + 1, &t) || xa_mul_ok(t, 8 * p->dh + 8, &t))
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow", fn);
    return XATTN_OK;
}

static xattn_status plan_make(bd_plan *s, const xd_comm *c, const xattn_bidir_params *p,
                              const char *fn)
{
    memset(s, 0, sizeof *s);
    s->c = c;
    s->p = p;
    const int R = c->size;
    int64_t mine[BI_N];
    const float sc = p->has_scale ? p->scale : (float)(1.0 / sqrt((double)p->dh));
    uint32_t bits;
    memcpy(&bits, &sc, 4);
    mine[BI_B] = p->B, mine[BI_H] = p->H, mine[BI_DH] = p->dh, mine[BI_SCALE] = bits;
    mine[BI_TALK] = p->talk != NULL, mine[BI_I] = p->I, mine[BI_J] = p->J;
    mine[BI_CMASK] = p->cmask != NULL, mine[BI_HAS_LSE] = p->lse && p->clse;
    s->info = malloc(sizeof(int64_t) * BI_N * (size_t)R);
    s->I = malloc(sizeof(int64_t) * 3 * (size_t)R);
    s->eye = xa_alloc(sizeof(float) * (size_t)(p->H * p->H));
    xattn_status st = XATTN_OK;
    if (!s->info || !s->I || !s->eye) st = xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    if ((st = xd_agree(c, st))) return st;
    s->J = s->I + R, s->j0 = s->J + R;
    int rc = MPI_Allgather(mine, BI_N, MPI_INT64_T, s->info, BI_N, MPI_INT64_T, c->comm);
    if (rc != MPI_SUCCESS) return xd_mpi_error(rc, fn, "MPI_Allgather");
    static const char *const names[] = {"B", "H", "dh", "scale", "talking heads"};
    for (int r = 0; r < R; r++) {
        const int64_t *x = s->info + r * BI_N;
        for (int k = 0; k <= BI_TALK; k++)
            if (x[k] != s->info[k])
                return xa_error(XATTN_ERR_ARG, "%s: rank %d has %s = %lld, rank 0 has %lld", fn, r,
                                names[k], (long long)x[k], (long long)s->info[k]);
        s->I[r] = x[BI_I], s->J[r] = x[BI_J];
        s->j0[r] = s->Jtot;
        s->Itot += x[BI_I], s->Jtot += x[BI_J];
        s->Jmax = XA_MAX(s->Jmax, x[BI_J]);
        if (x[BI_CMASK]) s->any_cmask = 1;
        if (!x[BI_HAS_LSE]) s->any_no_lse = 1;
    }
    s->B = p->B, s->H = p->H, s->dh = p->dh, s->scale = sc, s->talk = p->talk != NULL;
    for (int64_t g = 0; g < s->H; g++)
        for (int64_t h = 0; h < s->H; h++) s->eye[g * s->H + h] = g == h ? 1.0f : 0.0f;
    s->talk_w = s->talk ? p->talk : s->eye;
    s->ctalk_w = s->talk ? p->ctalk : s->eye;
    return XATTN_OK;
}

/* Packs rows (strided) into (B, H, n, d). */
static void pack_rows(float *o, const float *x, int64_t sb, int64_t sh, int64_t sr, int64_t B,
                      int64_t H, int64_t n, int64_t d)
{
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t r = 0; r < n; r++)
                memcpy(o + ((b * H + h) * n + r) * d, x + b * sb + h * sh + r * sr,
                       sizeof(float) * (size_t)d);
}

/* x rows (strided) = or += packed (B, H, n, d). */
static void put_rows(float *x, int64_t sb, int64_t sh, int64_t sr, const float *y, int64_t B,
                     int64_t H, int64_t n, int64_t d, int add)
{
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t r = 0; r < n; r++) {
                float *o = x + b * sb + h * sh + r * sr;
                const float *y1 = y + ((b * H + h) * n + r) * d;
                for (int64_t e = 0; e < d; e++) o[e] = add ? o[e] + y1[e] : y1[e];
            }
}

/* The local context shard's static part: rows of cqk, cv, the keep vector as 0/1 floats. */
static void pack_static(const bd_plan *s, const bd_lay *l, float *buf)
{
    const xattn_bidir_params *p = s->p;
    const int64_t J = p->J;
    pack_rows(buf + l->cqk, p->cqk, p->cqk_sb, p->cqk_sh, p->cqk_sj, s->B, s->H, J, s->dh);
    if (l->cv >= 0)
        pack_rows(buf + l->cv, p->cv, p->cv_sb, p->cv_sh, p->cv_sj, s->B, s->H, J, s->dh);
    if (l->keep >= 0)
        for (int64_t b = 0; b < s->B; b++)
            for (int64_t j = 0; j < J; j++)
                buf[l->keep + b * J + j] = !p->cmask || p->cmask[b * p->cmask_sb + j] ? 1.0f : 0.0f;
}

/* One step of a ring: the shard of rank src (static part st, accumulator acc). */
typedef xattn_status (*bd_step)(void *arg, int src, const float *st, float *acc, uint8_t *keep);

/*
 * Runs a ring: the static part (home_st, packed by the caller) travels r -> r + 1 overlapped with
 * the steps; the accumulator (home_acc, zeroed here) is sent on after each step and comes home
 * after the last. Every rank runs every transfer even after a failure; the outcome is agreed.
 */
static xattn_status bd_ring(const bd_plan *s, ring_kind kind, float *home_st, float *home_acc,
                            bd_step fn, void *arg, const char *fname)
{
    const xd_comm *c = s->c;
    const int R = c->size, me = c->rank;
    const bd_lay lm = lay_of(s, kind, s->Jmax);
    float *mem = xa_alloc(sizeof(float) * (size_t)(3 * lm.n + 3 * lm.nacc + s->B * s->Jmax + 16));
    xattn_status st = mem ? XATTN_OK : xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fname);
    if ((st = xd_agree(c, st))) {
        xa_free(mem);
        return st;
    }
    float *cur = mem, *nxt = cur + lm.n, *acc = nxt + lm.n, *accn = acc + lm.nacc;
    uint8_t *keep = (uint8_t *)(accn + lm.nacc);
    const bd_lay l0 = lay_of(s, kind, s->J[me]);
    memcpy(cur, home_st, sizeof(float) * (size_t)l0.n);
    memset(acc, 0, sizeof(float) * (size_t)l0.nacc);
    if (kind == RING_F1) /* column maxima start at -inf, their sums at 0 */
        for (int64_t x = 0; x < l0.nacc / 2; x++) acc[x] = -INFINITY;
    if (kind == RING_F0)
        for (int64_t x = 0, n = s->B * s->H * s->J[me]; x < n; x++) acc[n * s->dh + x] = -INFINITY;
    int mrc = MPI_SUCCESS;
    xd_xfer xa = {0};
    for (int t = 0; t < R; t++) {
        const int src = (me - t + R) % R, srcn = (me - t - 1 + R) % R;
        const bd_lay ls = lay_of(s, kind, s->J[src]), ln = lay_of(s, kind, s->J[srcn]);
        xd_xfer x = {0};
        if (t < R - 1) xd_post(c, &x, cur, ls.n, nxt, ln.n, TAG_ST);
        if (t > 0) {
            int rc = xd_wait(&xa);
            if (rc != MPI_SUCCESS && mrc == MPI_SUCCESS) mrc = rc;
        }
        if (st == XATTN_OK && mrc == MPI_SUCCESS) {
            if (ls.keep >= 0)
                for (int64_t x1 = 0; x1 < s->B * s->J[src]; x1++)
                    keep[x1] = cur[ls.keep + x1] != 0.0f;
            st = fn(arg, src, cur, acc, ls.keep >= 0 ? keep : NULL);
        }
        xd_post(c, &xa, acc, ls.nacc, accn, ln.nacc, TAG_ACC);
        int rc = t < R - 1 ? xd_wait(&x) : MPI_SUCCESS;
        if (rc != MPI_SUCCESS && mrc == MPI_SUCCESS) mrc = rc;
        float *tmp = cur;
        cur = nxt, nxt = tmp;
        tmp = acc, acc = accn, accn = tmp;
    }
    int rc = xd_wait(&xa);
    if (rc != MPI_SUCCESS && mrc == MPI_SUCCESS) mrc = rc;
    if (st == XATTN_OK && mrc != MPI_SUCCESS) st = xd_mpi_error(mrc, fname, "the ring transfer");
    st = xd_agree(c, st);
    if (st == XATTN_OK) memcpy(home_acc, acc, sizeof(float) * (size_t)l0.nacc);
    xa_free(mem);
    return st;
}

/* The row side (transposed = 0: queries x rows, keys the shard) or the column side
 * (transposed = 1: queries the shard's rows, keys x rows) of block (X_r, C_src). */
static void side(const bd_plan *s, int transposed, int src, const float *stt, const uint8_t *keep,
                 xa_attn *a, const char *fn)
{
    const xattn_bidir_params *p = s->p;
    const int64_t Js = s->J[src], n = s->B * s->H * Js;
    (void)n;
    memset(a, 0, sizeof *a);
    a->fn = fn;
    a->B = s->B, a->H = s->H, a->dh = a->dv = s->dh;
    a->scale = s->scale;
    a->fill = XATTN_FILL_MIN_FLOAT;
    const float *cqk = stt, *cv = stt + s->B * s->H * Js * s->dh;
    const int64_t pb = s->H * Js * s->dh, ph = Js * s->dh, pr = s->dh;
    if (p->bias) {
        a->bias = p->bias + s->j0[src];
        a->bias_sb = p->bias_sb, a->bias_sh = p->bias_sh;
    }
    if (!transposed) {
        a->I = p->I, a->J = Js;
        a->q = p->qk, a->q_sb = p->qk_sb, a->q_sh = p->qk_sh, a->q_si = p->qk_si;
        a->k = cqk, a->k_sb = pb, a->k_sh = ph, a->k_sj = pr;
        a->v = cv, a->v_sb = pb, a->v_sh = ph, a->v_sj = pr;
        a->qkeep = p->mask, a->qkeep_sb = p->mask_sb;
        a->kkeep = keep, a->kkeep_sb = Js;
        a->bias_si = s->Jtot, a->bias_sj = 1;
        a->mix = s->talk_w;
    } else {
        a->I = Js, a->J = p->I;
        a->q = cqk, a->q_sb = pb, a->q_sh = ph, a->q_si = pr;
        a->k = p->qk, a->k_sb = p->qk_sb, a->k_sh = p->qk_sh, a->k_sj = p->qk_si;
        a->v = p->v, a->v_sb = p->v_sb, a->v_sh = p->v_sh, a->v_sj = p->v_si;
        a->qkeep = keep, a->qkeep_sb = Js;
        a->kkeep = p->mask, a->kkeep_sb = p->mask_sb;
        a->bias_si = 1, a->bias_sj = s->Jtot;
        a->mix = s->ctalk_w;
    }
    a->p_sj = 1;
}

/* (m, l) += (m2, l2), n entries. */
static void merge_stats(float *m, float *l, const float *m2, const float *l2, int64_t n)
{
    for (int64_t x = 0; x < n; x++) {
        const float mx = XA_MAX(m[x], m2[x]);
        if (mx == -INFINITY) continue;
        const float a1 = m[x] == mx ? 1.0f : expf(m[x] - mx);
        const float a2 = m2[x] == mx ? 1.0f : expf(m2[x] - mx);
        l[x] = l[x] * a1 + l2[x] * a2;
        m[x] = mx;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Forward                                                                                  */

typedef struct fwd_arg {
    const bd_plan *s;
    const char *fn;
    float *rm, *rl; /* (B, H, I_r) row statistics */
    float *tm, *tl; /* scratch statistics (B, H, max(I_r, J_max)) */
    float *out;     /* (B, H, I_r, dh) accumulated output */
    float *tout;    /* (B, H, max(I_r, J_max), dh) one block's output */
} fwd_arg;

static xattn_status f1_step(void *arg, int src, const float *stt, float *acc, uint8_t *keep)
{
    fwd_arg *f = arg;
    const bd_plan *s = f->s;
    const int64_t Js = s->J[src], I = s->p->I;
    if (!Js || !I || !s->B) return XATTN_OK;
    xa_attn a;
    side(s, 0, src, stt, keep, &a, f->fn);
    a.mix = NULL, a.stats_only = 1, a.stat_m = f->tm, a.stat_l = f->tl;
    xattn_status st = xa_attention(&a);
    if (st) return st;
    merge_stats(f->rm, f->rl, f->tm, f->tl, s->B * s->H * I);
    side(s, 1, src, stt, keep, &a, f->fn);
    a.mix = NULL, a.stats_only = 1, a.stat_m = f->tm, a.stat_l = f->tl;
    if ((st = xa_attention(&a))) return st;
    const int64_t n = s->B * s->H * Js;
    merge_stats(acc, acc + n, f->tm, f->tl, n);
    return XATTN_OK;
}

/* acc += the block's output o (n rows of dh, normalised by the block's own statistics m2, l2),
 * reweighted to the global statistics (m, l): exp(m2 - m) l2 / l. A block whose keys are all
 * masked for a row (m2 = -FLT_MAX) counts for l2 / l of a row masked everywhere and nothing
 * beside an unmasked key, as in one softmax over every key. */
static void add_rescaled(float *acc, const float *o, const float *m, const float *l,
                         const float *m2, const float *l2, int64_t n, int64_t dh)
{
    for (int64_t x = 0; x < n; x++) {
        if (!(l[x] > 0.0f) || !(l2[x] > 0.0f)) continue;
        const float wgt = (m2[x] == m[x] ? 1.0f : expf(m2[x] - m[x])) * (l2[x] / l[x]);
        for (int64_t d = 0; d < dh; d++) acc[x * dh + d] += wgt * o[x * dh + d];
    }
}

/* The output pass of one block and side: with talking heads the mixing mode (the global
 * statistics given); without, the plain fused pass, rescaled to the global statistics. */
static xattn_status out_side(const bd_plan *s, fwd_arg *f, xa_attn *a, const float *gm,
                             const float *gl, float *acc, int64_t n)
{
    if (s->talk) {
        a->row_m = gm, a->row_l = gl;
        const xattn_status st = xa_attention(a);
        if (st) return st;
        for (int64_t x = 0; x < n * s->dh; x++) acc[x] += f->tout[x];
        return XATTN_OK;
    }
    a->mix = NULL, a->stat_m = f->tm, a->stat_l = f->tl;
    const xattn_status st = xa_attention(a);
    if (!st) add_rescaled(acc, f->tout, gm, gl, f->tm, f->tl, n, s->dh);
    return st;
}

static xattn_status f2_step(void *arg, int src, const float *stt, float *acc, uint8_t *keep)
{
    fwd_arg *f = arg;
    const bd_plan *s = f->s;
    const int64_t Js = s->J[src], I = s->p->I, dh = s->dh;
    if (!Js || !I || !s->B) return XATTN_OK;
    const bd_lay l = lay_of(s, RING_F2, Js);
    xa_attn a;
    side(s, 0, src, stt, keep, &a, f->fn);
    a.out = f->tout, a.o_si = dh, a.o_sh = I * dh, a.o_sb = s->H * I * dh;
    xattn_status st = out_side(s, f, &a, f->rm, f->rl, f->out, s->B * s->H * I);
    if (st) return st;
    side(s, 1, src, stt, keep, &a, f->fn);
    a.out = f->tout, a.o_si = dh, a.o_sh = Js * dh, a.o_sb = s->H * Js * dh;
    return out_side(s, f, &a, stt + l.s1, stt + l.s2, acc, s->B * s->H * Js);
}

/* (O, m, l) += the block's output o (normalised by its own m2, l2), n rows of dh: O stays
 * unnormalised (sum of exp(logit - m) v), divided by l at the end. */
static void merge_out(float *O, float *m, float *l, const float *o, const float *m2,
                      const float *l2, int64_t n, int64_t dh)
{
    for (int64_t x = 0; x < n; x++) {
        if (!(l2[x] > 0.0f)) continue;
        const float mx = XA_MAX(m[x], m2[x]);
        const float a1 = m[x] == mx ? 1.0f : m[x] == -INFINITY ? 0.0f : expf(m[x] - mx);
        const float a2 = (m2[x] == mx ? 1.0f : expf(m2[x] - mx)) * l2[x];
        for (int64_t d = 0; d < dh; d++) O[x * dh + d] = O[x * dh + d] * a1 + o[x * dh + d] * a2;
        l[x] = l[x] * a1 + a2;
        m[x] = mx;
    }
}

/* One ring without talking heads: each block's plain fused pass on both sides, merged online
 * (the row side locally, the column side into the travelling accumulator). */
static xattn_status f0_step(void *arg, int src, const float *stt, float *acc, uint8_t *keep)
{
    fwd_arg *f = arg;
    const bd_plan *s = f->s;
    const int64_t Js = s->J[src], I = s->p->I, dh = s->dh, BH = s->B * s->H;
    if (!Js || !I || !s->B) return XATTN_OK;
    xa_attn a;
    side(s, 0, src, stt, keep, &a, f->fn);
    a.mix = NULL, a.stat_m = f->tm, a.stat_l = f->tl;
    a.out = f->tout, a.o_si = dh, a.o_sh = I * dh, a.o_sb = s->H * I * dh;
    xattn_status st = xa_attention(&a);
    if (st) return st;
    merge_out(f->out, f->rm, f->rl, f->tout, f->tm, f->tl, BH * I, dh);
    side(s, 1, src, stt, keep, &a, f->fn);
    a.mix = NULL, a.stat_m = f->tm, a.stat_l = f->tl;
    a.out = f->tout, a.o_si = dh, a.o_sh = Js * dh, a.o_sb = s->H * Js * dh;
    if ((st = xa_attention(&a))) return st;
    merge_out(acc, acc + BH * Js * dh, acc + BH * Js * (dh + 1), f->tout, f->tm, f->tl, BH * Js,
              dh);
    return XATTN_OK;
}

/* O / l per row (0 without mass). */
static void normalise(float *O, const float *l, int64_t n, int64_t dh)
{
    for (int64_t x = 0; x < n; x++) {
        const float iv = l[x] > 0.0f ? 1.0f / l[x] : 0.0f;
        for (int64_t d = 0; d < dh; d++) O[x * dh + d] *= iv;
    }
}

/* The statistics ring: row (rm, rl) of the local x rows, column (cm, cl) of the local context
 * rows, each (B, H, n) as (max, sum). */
static xattn_status bd_stats(const bd_plan *s, fwd_arg *f, float *cm, float *cl, const char *fn)
{
    const int64_t BH = s->B * s->H, I = s->p->I, J = s->p->J;
    const bd_lay l = lay_of(s, RING_F1, J);
    float *home = xa_alloc(sizeof(float) * (size_t)(l.n + l.nacc + 16));
    xattn_status st =
        xd_agree(s->c, home ? XATTN_OK : xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn));
    if (st) {
        xa_free(home);
        return st;
    }
    for (int64_t x = 0; x < BH * I; x++) f->rm[x] = -INFINITY, f->rl[x] = 0.0f;
    pack_static(s, &l, home);
    st = bd_ring(s, RING_F1, home, home + l.n, f1_step, f, fn);
    if (st == XATTN_OK) {
        memcpy(cm, home + l.n, sizeof(float) * (size_t)(BH * J));
        memcpy(cl, home + l.n + BH * J, sizeof(float) * (size_t)(BH * J));
    }
    xa_free(home);
    return st;
}

static void to_lse(float *lse, const float *m, const float *l, int64_t n)
{
    for (int64_t x = 0; x < n; x++) lse[x] = l[x] > 0.0f ? m[x] + logf(l[x]) : -INFINITY;
}

/* Scratch of the forward: row and column statistics, block outputs. */
static float *fwd_scratch(const bd_plan *s, fwd_arg *f, float **cm, float **cl)
{
    const int64_t BH = s->B * s->H, I = s->p->I, J = s->p->J;
    const int64_t nmax = XA_MAX(I, s->Jmax);
    float *m = xa_alloc(sizeof(float) * (size_t)(2 * BH * I + 2 * BH * J + 2 * BH * nmax +
                                                 BH * I * s->dh + BH * nmax * s->dh + 16));
    if (!m) return NULL;
    f->rm = m, f->rl = f->rm + BH * I;
    *cm = f->rl + BH * I, *cl = *cm + BH * J;
    f->tm = *cl + BH * J, f->tl = f->tm + BH * nmax;
    f->out = f->tl + BH * nmax, f->tout = f->out + BH * I * s->dh;
    return m;
}

xattn_status xattn_bidir_attention_dist(xattn_ctx *ctx, const xattn_bidir_params *p)
{
    static const char fn[] = "xattn_bidir_attention_dist";
    const xd_comm *c = xd_comm_of(ctx, fn);
    if (!c) return XATTN_ERR_ARG;
    const xattn_ctx *prev = xa_ctx_enter(ctx);
    bd_plan s;
    memset(&s, 0, sizeof s);
    float *mem = NULL, *home = NULL;
    xattn_status st = xd_agree(c, check_local(p, fn));
    if (st == XATTN_OK) st = plan_make(&s, c, p, fn);
    fwd_arg f;
    memset(&f, 0, sizeof f);
    f.s = &s, f.fn = fn;
    float *cm = NULL, *cl = NULL;
    bd_lay l = {0};
    if (st == XATTN_OK) {
        mem = fwd_scratch(&s, &f, &cm, &cl);
        l = lay_of(&s, RING_F2, p->J);
        const bd_lay l0 = lay_of(&s, RING_F0, p->J); /* the larger of the two */
        home = xa_alloc(sizeof(float) * (size_t)(XA_MAX(l.n + l.nacc, l0.n + l0.nacc) + 16));
        st = xd_agree(c,
                      mem && home ? XATTN_OK : xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn));
    }
    if (st == XATTN_OK && !s.talk) { /* one ring: online statistics */
        const int64_t BH = s.B * s.H, I = p->I, J = p->J;
        const bd_lay l0 = lay_of(&s, RING_F0, J);
        pack_static(&s, &l0, home);
        for (int64_t x = 0; x < BH * I; x++) f.rm[x] = -INFINITY, f.rl[x] = 0.0f;
        memset(f.out, 0, sizeof(float) * (size_t)(BH * I * s.dh));
        st = bd_ring(&s, RING_F0, home, home + l0.n, f0_step, &f, fn);
        if (st == XATTN_OK) {
            float *co = home + l0.n, *ccm = co + BH * J * s.dh, *ccl = ccm + BH * J;
            normalise(f.out, f.rl, BH * I, s.dh);
            normalise(co, ccl, BH * J, s.dh);
            put_rows(p->out, p->o_sb, p->o_sh, p->o_si, f.out, s.B, s.H, I, s.dh, 0);
            put_rows(p->cout, p->co_sb, p->co_sh, p->co_sj, co, s.B, s.H, J, s.dh, 0);
            if (p->lse) to_lse(p->lse, f.rm, f.rl, BH * I);
            if (p->clse) to_lse(p->clse, ccm, ccl, BH * J);
        }
    } else if (st == XATTN_OK) {
        st = bd_stats(&s, &f, cm, cl, fn);
    }
    if (st == XATTN_OK && s.talk) {
        const int64_t BH = s.B * s.H, I = p->I, J = p->J;
        pack_static(&s, &l, home);
        memcpy(home + l.s1, cm, sizeof(float) * (size_t)(BH * J));
        memcpy(home + l.s2, cl, sizeof(float) * (size_t)(BH * J));
        memset(f.out, 0, sizeof(float) * (size_t)(BH * I * s.dh));
        st = bd_ring(&s, RING_F2, home, home + l.n, f2_step, &f, fn);
        if (st == XATTN_OK) {
            put_rows(p->out, p->o_sb, p->o_sh, p->o_si, f.out, s.B, s.H, I, s.dh, 0);
            put_rows(p->cout, p->co_sb, p->co_sh, p->co_sj, home + l.n, s.B, s.H, J, s.dh, 0);
            if (p->lse) to_lse(p->lse, f.rm, f.rl, BH * I);
            if (p->clse) to_lse(p->clse, cm, cl, BH * J);
        }
    }
    xa_free(home);
    xa_free(mem);
    plan_free(&s);
    xa_ctx_leave(prev);
    if (st == XATTN_OK) xa_clear_error();
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Backward                                                                                 */

/* A ring step of the backward: the tile pipeline of src/kernels/bidir_tiles.h over the shard
 * held (its rows and column statistics in the static part of the travelling buffer; pass 1's
 * column terms and pass 2's dcqk, dcv in its accumulator). */
typedef struct bwd_arg {
    const bd_plan *s;
    xa_bt t;
    int pass;
} bwd_arg;

static xattn_status bw_step(void *arg, int src, const float *stt, float *acc, uint8_t *keep)
{
    bwd_arg *w = arg;
    const bd_plan *s = w->s;
    const int64_t Js = s->J[src], dh = s->dh, sh = Js * dh, sb = s->H * sh;
    const bd_lay l = lay_of(s, w->pass == 1 ? RING_B1 : RING_B2, Js);
    const xa_bt_keys k = {.J = Js,
                          .j0 = s->j0[src],
                          .cqk = stt + l.cqk,
                          .cqk_sb = sb,
                          .cqk_sh = sh,
                          .cqk_sj = dh,
                          .cv = stt + l.cv,
                          .cv_sb = sb,
                          .cv_sh = sh,
                          .cv_sj = dh,
                          .dco = stt + l.dco,
                          .dco_sb = sb,
                          .dco_sh = sh,
                          .dco_sj = dh,
                          .Lc = stt + l.s1,
                          .keep = keep,
                          .keep_sb = Js,
                          .Dc_acc = w->pass == 1 ? acc : NULL,
                          .Dc = w->pass == 2 ? stt + l.dc : NULL,
                          .dcqk = w->pass == 2 ? acc : NULL,
                          .dcqk_sb = sb,
                          .dcqk_sh = sh,
                          .dcqk_sj = dh,
                          .dcv = w->pass == 2 ? acc + s->B * sb : NULL,
                          .dcv_sb = sb,
                          .dcv_sh = sh,
                          .dcv_sj = dh};
    return xa_bt_pass(&w->t, &k, w->pass);
}

static xattn_status check_grads_local(const xattn_bidir_params *p, const xattn_bidir_grads *g,
                                      const char *fn)
{
    if (!g) return xa_error(XATTN_ERR_ARG, "%s: grads is NULL", fn);
    if (!xa_reserved_zero(g->reserved_))
        return xa_error(XATTN_ERR_ARG, "%s: grads->reserved_ must be zero", fn);
    const int64_t st[] = {g->do_sb,   g->do_sh,   g->do_si,  g->dco_sb,   g->dco_sh,
                          g->dco_sj,  g->dqk_sb,  g->dqk_sh, g->dqk_si,   g->dcqk_sb,
                          g->dcqk_sh, g->dcqk_sj, g->dv_sb,  g->dv_sh,    g->dv_si,
                          g->dcv_sb,  g->dcv_sh,  g->dcv_sj, g->dbias_sb, g->dbias_sh};
    for (size_t i = 0; i < XA_N(st); i++)
        if (st[i] < 0) return xa_error(XATTN_ERR_ARG, "%s: negative gradient stride", fn);
    if (p->B && p->I && !g->dout)
        return xa_error(XATTN_ERR_ARG, "%s: dout is NULL (%lld local x rows)", fn, (long long)p->I);
    if (p->B && p->J && !g->dcout)
        return xa_error(XATTN_ERR_ARG, "%s: dcout is NULL (%lld local context rows)", fn,
                        (long long)p->J);
    if ((g->dtalk || g->dctalk) && !p->talk)
        return xa_error(XATTN_ERR_ARG, "%s: dtalk and dctalk need talking heads", fn);
    return XATTN_OK;
}

xattn_status xattn_bidir_attention_backward_dist(xattn_ctx *ctx, const xattn_bidir_params *p,
                                                 const xattn_bidir_grads *g)
{
    static const char fn[] = "xattn_bidir_attention_backward_dist";
    const xd_comm *c = xd_comm_of(ctx, fn);
    if (!c) return XATTN_ERR_ARG;
    const xattn_ctx *prev = xa_ctx_enter(ctx);
    bd_plan s;
    memset(&s, 0, sizeof s);
    float *mem = NULL, *fmem = NULL, *home = NULL;
    xattn_status st = check_local(p, fn);
    if (st == XATTN_OK) st = check_grads_local(p, g, fn);
    st = xd_agree(c, st);
    if (st == XATTN_OK) st = plan_make(&s, c, p, fn);
    bwd_arg w;
    memset(&w, 0, sizeof w);
    w.s = &s;
    bd_lay l = {0};
    const float *Lr = NULL, *Lc = NULL;
    double *dT = NULL, *dTc = NULL; /* (H, H) each: the weights' gradients, summed */
    float *Dr = NULL;               /* (B, H, I) the row terms */
    if (st == XATTN_OK) {
        const int64_t BH = s.B * s.H, I = p->I, H = s.H, dh = s.dh;
        l = lay_of(&s, RING_B2, p->J);
        xa_bt *t = &w.t;
        t->kt = xa_kern(), t->B = s.B, t->H = H, t->I = I, t->dh = dh;
        t->Itot = s.Itot, t->Jtot = s.Jtot, t->scale = s.scale;
        t->qk = p->qk, t->qk_sb = p->qk_sb, t->qk_sh = p->qk_sh, t->qk_si = p->qk_si;
        t->v = p->v, t->v_sb = p->v_sb, t->v_sh = p->v_sh, t->v_si = p->v_si;
        t->dout = g->dout, t->do_sb = g->do_sb, t->do_sh = g->do_sh, t->do_si = g->do_si;
        t->mask = p->mask, t->mask_sb = p->mask_sb;
        t->bias = p->bias, t->bias_sb = p->bias_sb, t->bias_sh = p->bias_sh;
        t->dbias = g->dbias, t->dbias_sb = g->dbias_sb, t->dbias_sh = g->dbias_sh;
        t->talk = s.talk ? s.talk_w : NULL, t->ctalk = s.talk ? s.ctalk_w : NULL;
        t->want_dqk = g->dqk != NULL, t->want_dv = g->dv != NULL;
        /* groups of key tiles from the problem alone (never the thread count) */
        xa_bt_plan(t, s.Jmax, g->dbias && g->dbias_sb == 0);
        const int64_t per = BH * I * (2 * dh + 1);
        const int64_t n =
            2 * (t->nunit + 1) * H * H * 2 + BH * I + t->G * per + 2 * BH * XA_MAX(I, p->J);
        mem = xa_alloc(sizeof(float) * (size_t)(n + 64));
        home = xa_alloc(sizeof(float) * (size_t)(l.n + l.nacc + 16));
        st = xd_agree(c,
                      mem && home ? XATTN_OK : xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn));
        if (st == XATTN_OK) {
            memset(mem, 0, sizeof(float) * (size_t)n);
            float *q = mem;
            dT = (double *)q, q += 2 * H * H * 2; /* dT then dTc */
            dTc = dT + H * H;
            t->dTp = (double *)q, q += 2 * t->nunit * H * H;
            t->dTcp = (double *)q, q += 2 * t->nunit * H * H;
            Dr = q;
            t->Dr = Dr, q += BH * I;
            t->Drg = q, q += t->G * BH * I;
            t->dqkg = q, q += t->G * BH * I * dh;
            t->dvg = q, q += t->G * BH * I * dh;
            float *lr = q, *lc = q + BH * I;
            Lr = p->lse, Lc = p->clse;
            if (s.any_no_lse) { /* some rank lacks the forward's lse: every rank recomputes */
                fwd_arg f;
                float *cm, *cl;
                memset(&f, 0, sizeof f);
                f.s = &s, f.fn = fn;
                fmem = fwd_scratch(&s, &f, &cm, &cl);
                st = xd_agree(c,
                              fmem ? XATTN_OK : xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn));
                if (st == XATTN_OK) st = bd_stats(&s, &f, cm, cl, fn);
                if (st == XATTN_OK) {
                    to_lse(lr, f.rm, f.rl, BH * I);
                    to_lse(lc, cm, cl, BH * p->J);
                    Lr = lr, Lc = lc;
                }
            }
        }
    }
    if (st == XATTN_OK) { /* ring 1: row and column terms, the weights' gradients */
        const int64_t BH = s.B * s.H, J = p->J;
        w.t.Lr = Lr;
        pack_static(&s, &l, home);
        memcpy(home + l.s1, Lc, sizeof(float) * (size_t)(BH * J));
        pack_rows(home + l.dco, g->dcout, g->dco_sb, g->dco_sh, g->dco_sj, s.B, s.H, J, s.dh);
        w.pass = 1;
        st = bd_ring(&s, RING_B1, home, home + l.dc, bw_step, &w, fn);
        if (st == XATTN_OK) xa_bt_sum_groups(w.t.Drg, w.t.G, BH * p->I, Dr);
    }
    if (st == XATTN_OK) { /* ring 2: the gradients */
        const int64_t I = p->I;
        if (g->dbias && !g->accumulate)
            for (int64_t b = 0; b < (g->dbias_sb ? s.B : 1); b++)
                for (int64_t h = 0; h < (g->dbias_sh ? s.H : 1); h++)
                    memset(g->dbias + b * g->dbias_sb + h * g->dbias_sh, 0,
                           sizeof(float) * (size_t)(I * s.Jtot));
        w.pass = 2;
        st = bd_ring(&s, RING_B2, home, home + l.n, bw_step, &w, fn);
    }
    if (st == XATTN_OK && s.talk) { /* the weights: the tasks' in order, summed over ranks */
        const int64_t HH = s.H * s.H;
        for (int64_t u = 0; u < w.t.nunit; u++)
            for (int64_t x = 0; x < HH; x++) {
                dT[x] += w.t.dTp[u * HH + x];
                dTc[x] += w.t.dTcp[u * HH + x];
            }
        int rc = MPI_Allreduce(MPI_IN_PLACE, dT, (int)(2 * HH), MPI_DOUBLE, MPI_SUM, c->comm);
        st = xd_agree(c, rc == MPI_SUCCESS ? XATTN_OK : xd_mpi_error(rc, fn, "MPI_Allreduce"));
    }
    if (st == XATTN_OK) {
        const int64_t BH = s.B * s.H, I = p->I, J = p->J, dh = s.dh, acc = g->accumulate;
        /* the row gradients: the groups' in order (into the first group's) */
        xa_bt_sum_groups(w.t.dqkg, w.t.G, BH * I * dh, w.t.dqkg);
        xa_bt_sum_groups(w.t.dvg, w.t.G, BH * I * dh, w.t.dvg);
        if (g->dqk)
            put_rows(g->dqk, g->dqk_sb, g->dqk_sh, g->dqk_si, w.t.dqkg, s.B, s.H, I, dh, acc);
        if (g->dv) put_rows(g->dv, g->dv_sb, g->dv_sh, g->dv_si, w.t.dvg, s.B, s.H, I, dh, acc);
        const float *a = home + l.n;
        if (g->dcqk) put_rows(g->dcqk, g->dcqk_sb, g->dcqk_sh, g->dcqk_sj, a, s.B, s.H, J, dh, acc);
        if (g->dcv)
            put_rows(g->dcv, g->dcv_sb, g->dcv_sh, g->dcv_sj, a + BH * J * dh, s.B, s.H, J, dh,
                     acc);
        for (int64_t x = 0; x < s.H * s.H; x++) {
            if (g->dtalk) g->dtalk[x] = (float)(acc ? g->dtalk[x] + dT[x] : dT[x]);
            if (g->dctalk) g->dctalk[x] = (float)(acc ? g->dctalk[x] + dTc[x] : dTc[x]);
        }
    }
    xa_free(home);
    xa_free(fmem);
    xa_free(mem);
    plan_free(&s);
    xa_ctx_leave(prev);
    if (st == XATTN_OK) xa_clear_error();
    return st;
}
