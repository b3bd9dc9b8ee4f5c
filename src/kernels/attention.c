/*
 * Fused scaled-dot-product attention with a tiled online softmax (xa_attention), and the
 * public xattn_sdpa on top of it.
 *
 * The work is cut into tasks (b, h, query tile [, key range]). A task keeps everything transposed
 * so that the softmax runs along vector lanes with no horizontal reductions:
 *
 *   Qt  (dh, ITP)   = scale * q[i0 .. i0+IT)^T            packed once per task
 *   Kt  (dh, JP)    = k[b, h]^T, J padded to mr           packed once per (b, h), shared
 *   St  (JTP, ITP)  = Kt^T-panel x Qt  = (q k^T)^T        micro-kernel, k = dh, per key tile
 *   column c of St holds the logits of query i0+c against the tile's keys; the running max m[c]
 *   and sum l[c] are per lane; St is turned into Pt = exp(St - m) in place and
 *   Ot  (dv, ITP)  += V^T x Pt                            micro-kernel, A = v rows read in place
 *   out[i0+c, :]    = Ot[:, c] / l[c]
 *
 * Nothing of size I x J is allocated unless the caller asks for the probabilities, which are then
 * written by a second pass that recomputes the logit tiles with the final statistics.
 * When there are fewer (b, h, query tile) tasks than threads, the keys are split across threads
 * and the partial (m, l, O) states are merged (log-sum-exp merge). A few queries (decoding) take
 * a direct path: logits by dot products against the key rows in place, no packing.
 *
 * Mixing mode (talking heads) runs one task per (b, query tile) over all heads: with the final
 * max and sum of every row known, each head's probability tile is formed, the heads are mixed
 * tile by tile, and each mixed tile is multiplied into its head's values.
 */
#include "kernels.h"
#include "../base/base.h"

#include <float.h>
#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct att_ctx {
    const xa_attn *p;
    const xa_kernels *kt;
    float fill;
    int64_t IT, JT;   /* tile sizes: IT multiple of nr, JT multiple of mr */
    int64_t ITP, JTP; /* padded (== IT, JT) */
    int64_t DVP;      /* dv rounded up to mr */
    int skip_causal;  /* tiles entirely above the diagonal contribute nothing */
    int64_t JP;       /* J rounded up to mr: row stride of the packed keys */
    float *Kt;        /* (B, H, dh, JP): every head's keys, transposed; NULL when direct */
    int direct;       /* few queries (decoding): logits by dot products, keys not packed */
    int64_t nmix;     /* heads held at once by a task: H in mixing mode, else 1 */
} att_ctx;

/* Per-thread scratch. */
typedef struct att_scratch {
    float *Qt;    /* (nmix, dh, ITP)  */
    float *St;    /* (nmix, JTP, ITP) */
    float *Pm;    /* (JTP, ITP) mixed probabilities (mixing mode) */
    float *Vtail; /* (JT, mr)   */
    float *mnew;  /* (ITP) */
    float *msafe; /* (nmix, ITP) */
    float *alpha; /* (ITP) */
    float *orow;  /* (dv): direct mode accumulator */
} att_scratch;

static size_t scratch_floats(const att_ctx *c)
{
    const xa_attn *p = c->p;
    return (size_t)(c->nmix * p->dh * c->ITP + (c->nmix + 1) * c->JTP * c->ITP + c->JT * c->kt->mr +
                    (2 * c->nmix + 2) * c->ITP + p->dv) +
           9 * 16;
}

/* Carves n floats (rounded up to a 64-byte multiple) off *base. */
static float *take(float **base, int64_t n)
{
    float *r = *base;
    *base += (n + 15) / 16 * 16;
    return r;
}

static void scratch_bind(const att_ctx *c, float *base, att_scratch *s)
{
    const xa_attn *p = c->p;
    s->Qt = take(&base, c->nmix * p->dh * c->ITP);
    s->St = take(&base, c->nmix * c->JTP * c->ITP);
    s->Pm = take(&base, c->JTP * c->ITP);
    s->Vtail = take(&base, c->JT * c->kt->mr);
    s->mnew = take(&base, c->ITP);
    s->msafe = take(&base, c->nmix * c->ITP);
    s->alpha = take(&base, c->nmix * c->ITP);
    s->orow = take(&base, p->dv);
}

/* Qt (dh, ITP) = scale * q[b, h, i0 + c, :]^T for c < it, zero for it <= c < ITP */
static void pack_q(const att_ctx *c, int64_t b, int64_t h, int64_t i0, int64_t it, float *Qt)
{
    const xa_attn *p = c->p;
    const float *q = p->q + b * p->q_sb + h * p->q_sh + i0 * p->q_si;
    if (it < c->ITP) memset(Qt, 0, sizeof(float) * (size_t)(p->dh * c->ITP));
    /* blocks of 16 query rows x 16 channels: reads and writes stay on a few cache lines */
    for (int64_t ib = 0; ib < it; ib += 16)
        for (int64_t db = 0; db < p->dh; db += 16) {
            const int64_t ie = XA_MIN(it, ib + 16), de = XA_MIN(p->dh, db + 16);
            for (int64_t d = db; d < de; d++)
                for (int64_t i = ib; i < ie; i++)
                    Qt[d * c->ITP + i] = p->scale * q[i * p->q_si + d];
        }
}

/* Kt (dh, JP) = k[b, h, :, :]^T for keys [jb, je), zero for J <= r < JP. Reads 16 key rows
 * at a time so that both the reads and the writes stay on a few cache lines. */
static void pack_k(const att_ctx *c, int64_t b, int64_t h, int64_t jb, int64_t je)
{
    const xa_attn *p = c->p;
    const float *k = p->k + b * p->k_sb + h * p->k_sh;
    float *Kt = c->Kt + (b * p->H + h) * p->dh * c->JP;
    for (int64_t j0 = jb; j0 < je; j0 += 16) {
        int64_t n = XA_MIN(16, je - j0);
        for (int64_t d = 0; d < p->dh; d++) {
            float *dst = Kt + d * c->JP + j0;
            for (int64_t r = 0; r < n; r++) dst[r] = k[(j0 + r) * p->k_sj + d];
        }
    }
    if (je == p->J)
        for (int64_t d = 0; d < p->dh; d++)
            for (int64_t r = p->J; r < c->JP; r++) Kt[d * c->JP + r] = 0.0f;
}

/* Applies bias and masks to logits laid out as S[r * rs + col * cs] for key j0 + r (r < jt)
 * and query i0 + col (col < it). */
static void bias_and_masks(const att_ctx *c, int64_t b, int64_t h, int64_t i0, int64_t it,
                           int64_t j0, int64_t jt, float *S, int64_t rs, int64_t cs)
{
    const xa_attn *p = c->p;
    const float fill = c->fill;
    if (p->bias) {
        const float *bb = p->bias + b * p->bias_sb + h * p->bias_sh + j0 * p->bias_sj;
        for (int64_t col = 0; col < it; col++) {
            const float *brow = bb + (i0 + col) * p->bias_si;
            float *sc = S + col * cs;
            if (p->bias_sj == 1)
                for (int64_t r = 0; r < jt; r++) sc[r * rs] += brow[r];
            else
                for (int64_t r = 0; r < jt; r++) sc[r * rs] += brow[r * p->bias_sj];
        }
    }
    if (p->mask) {
        const uint8_t *mb = p->mask + b * p->mask_sb + h * p->mask_sh + j0;
        for (int64_t col = 0; col < it; col++) {
            const uint8_t *mrow = mb + (i0 + col) * p->mask_si;
            float *sc = S + col * cs;
            for (int64_t r = 0; r < jt; r++)
                if (!mrow[r]) sc[r * rs] = fill;
        }
    }
    if (p->kkeep) {
        const uint8_t *kk = p->kkeep + b * p->kkeep_sb + j0;
        for (int64_t r = 0; r < jt; r++)
            if (!kk[r])
                for (int64_t col = 0; col < it; col++) S[r * rs + col * cs] = fill;
    }
    if (p->qkeep) {
        const uint8_t *qk = p->qkeep + b * p->qkeep_sb + i0;
        for (int64_t col = 0; col < it; col++)
            if (!qk[col])
                for (int64_t r = 0; r < jt; r++) S[r * rs + col * cs] = fill;
    }
    if (p->causal && j0 + jt - 1 > i0 + p->causal_offset) {
        for (int64_t col = 0; col < it; col++) {
            int64_t first = i0 + col + p->causal_offset + 1 - j0; /* first masked key */
            for (int64_t r = first < 0 ? 0 : first; r < jt; r++) S[r * rs + col * cs] = fill;
        }
    }
}

/* St (jtp, ITP) = logits^T of the tile: St[r][col] for key j0 + r and query i0 + col, with
 * bias and masks applied to the valid (r < jt, col < it) entries. */
static void logits_tile(const att_ctx *c, int64_t b, int64_t h, int64_t i0, int64_t it, int64_t j0,
                        int64_t jt, const float *Qt, float *St)
{
    const xa_attn *p = c->p;
    const xa_kernels *kt = c->kt;
    const int64_t mr = kt->mr, nr = kt->nr, ITP = c->ITP;
    int64_t jtp = (jt + mr - 1) / mr * mr;
    int64_t itp = (it + nr - 1) / nr * nr;
    if (c->direct) {
        /* St[r][col] = scale * <q_col, k_r>: no packing, one pass over the keys */
        const float *q = p->q + b * p->q_sb + h * p->q_sh + i0 * p->q_si;
        const float *k = p->k + b * p->k_sb + h * p->k_sh + j0 * p->k_sj;
        for (int64_t r = 0; r < jt; r++) {
            float *srow = St + r * ITP;
            for (int64_t col = 0; col < it; col++)
                srow[col] = p->scale * kt->dot(q + col * p->q_si, k + r * p->k_sj, p->dh);
            for (int64_t col = it; col < itp; col++) srow[col] = 0.0f;
        }
    } else {
        const float *Kt = c->Kt + (b * p->H + h) * p->dh * c->JP + j0;
        for (int64_t c0 = 0; c0 < itp; c0 += nr)
            for (int64_t r0 = 0; r0 < jtp; r0 += mr)
                kt->ukr(p->dh, Kt + r0, c->JP, Qt + c0, ITP, St + r0 * ITP + c0, ITP, 0);
    }
    bias_and_masks(c, b, h, i0, it, j0, jt, St, ITP, 1);
}

/* Ot (DVP, ITP) += V^T (dv, jt) x Pt (jt, ITP), v rows j0.. of head (b, h) read in place. */
static void accumulate_pv(const att_ctx *c, att_scratch *s, int64_t b, int64_t h, int64_t j0,
                          int64_t jt, int64_t itp, const float *Pt, float *Ot)
{
    const xa_attn *p = c->p;
    const xa_kernels *kt = c->kt;
    const int64_t mr = kt->mr, nr = kt->nr, ITP = c->ITP;
    const float *vt = p->v + b * p->v_sb + h * p->v_sh + j0 * p->v_sj;
    for (int64_t d0 = 0; d0 < p->dv; d0 += mr) {
        const float *A = vt + d0;
        int64_t lda = p->v_sj;
        if (d0 + mr > p->dv) { /* tail columns of v: copy into a zero-padded panel */
            int64_t w = p->dv - d0;
            for (int64_t r = 0; r < jt; r++) {
                for (int64_t x = 0; x < w; x++) s->Vtail[r * mr + x] = vt[r * p->v_sj + d0 + x];
                for (int64_t x = w; x < mr; x++) s->Vtail[r * mr + x] = 0.0f;
            }
            A = s->Vtail;
            lda = mr;
        }
        for (int64_t c0 = 0; c0 < itp; c0 += nr)
            kt->ukr(jt, A, lda, Pt + c0, ITP, Ot + d0 * ITP + c0, ITP, 1);
    }
}

/* Accumulates keys [jb, je) into the running state (m, l, Ot) of query tile (b, h, i0, it).
 * m, l: (ITP); Ot: (DVP, ITP). The caller initialises m = -inf, l = 0, Ot = 0. */
static void attend_range(const att_ctx *c, att_scratch *s, int64_t b, int64_t h, int64_t i0,
                         int64_t it, int64_t jb, int64_t je, float *m, float *l, float *Ot)
{
    const xa_attn *p = c->p;
    const xa_kernels *kt = c->kt;
    const int64_t nr = kt->nr, ITP = c->ITP;
    const int64_t itp = (it + nr - 1) / nr * nr;

    pack_q(c, b, h, i0, it, s->Qt);
    for (int64_t j0 = jb; j0 < je; j0 += c->JT) {
        int64_t jt = XA_MIN(c->JT, je - j0);
        if (c->skip_causal && j0 > i0 + it - 1 + p->causal_offset) break; /* all later masked */
        logits_tile(c, b, h, i0, it, j0, jt, s->Qt, s->St);

        /* new running max and the rescale factor of the old state */
        memcpy(s->mnew, m, sizeof(float) * (size_t)it);
        kt->colmax(s->St, jt, it, ITP, s->mnew);
        int rescale = 0;
        for (int64_t col = 0; col < it; col++) {
            float mn = s->mnew[col];
            s->msafe[col] = mn == -INFINITY ? 0.0f : mn;
            float a = (m[col] == mn) ? 1.0f : expf(m[col] - s->msafe[col]);
            s->alpha[col] = a;
            rescale |= a != 1.0f;
            l[col] *= a;
            m[col] = mn;
        }
        if (p->stats_only) {
            /* only the sums are needed: exp in place, St is scratch */
            kt->expsub(s->St, jt, it, ITP, s->msafe, l);
            continue;
        }
        if (rescale) {
            for (int64_t d = 0; d < p->dv; d++) {
                float *o = Ot + d * ITP;
                for (int64_t col = 0; col < it; col++) o[col] *= s->alpha[col];
            }
        }
        kt->expsub(s->St, jt, it, ITP, s->msafe, l);
        /* columns it..itp of St hold q = 0 padding: logits 0, never exponentiated, so the
         * padded columns of Ot stay 0 */
        accumulate_pv(c, s, b, h, j0, jt, itp, s->St, Ot);
    }
}

/* The same for few queries (decoding): the logits of each query are kept as a contiguous row
 * over the keys (gemv against the key rows read in place, no packing), the max/exp/sum run
 * along that row, and the value rows are summed by gemv_t with the output held in registers. */
static void attend_range_direct(const att_ctx *c, att_scratch *s, int64_t b, int64_t h, int64_t i0,
                                int64_t it, int64_t jb, int64_t je, float *m, float *l, float *Ot)
{
    const xa_attn *p = c->p;
    const xa_kernels *kt = c->kt;
    const int64_t ITP = c->ITP;
    const float *q = p->q + b * p->q_sb + h * p->q_sh + i0 * p->q_si;
    const float *kb = p->k + b * p->k_sb + h * p->k_sh;
    const float *vb = p->v ? p->v + b * p->v_sb + h * p->v_sh : NULL;
    float *qs = s->Qt;   /* (dh) scaled query */
    float *srow = s->St; /* (JT) */
    for (int64_t col = 0; col < it; col++) {
        const int64_t i = i0 + col;
        for (int64_t d = 0; d < p->dh; d++) qs[d] = p->scale * q[col * p->q_si + d];
        if (!p->stats_only)
            for (int64_t x = 0; x < p->dv; x++) s->orow[x] = Ot[x * ITP + col];
        for (int64_t j0 = jb; j0 < je; j0 += c->JT) {
            int64_t jt = XA_MIN(c->JT, je - j0);
            if (c->skip_causal && j0 > i + p->causal_offset) break;
            kt->gemv(kb + j0 * p->k_sj, p->k_sj, jt, qs, p->dh, srow);
            bias_and_masks(c, b, h, i, 1, j0, jt, srow, 1, 0);
            float mx = m[col];
            for (int64_t r = 0; r < jt; r++) mx = srow[r] > mx ? srow[r] : mx;
            float msafe = mx == -INFINITY ? 0.0f : mx;
            float a = m[col] == mx ? 1.0f : expf(m[col] - msafe);
            for (int64_t r = 0; r < jt; r++) srow[r] -= msafe;
            kt->vexp(srow, jt);
            float sum = 0.0f;
            for (int64_t r = 0; r < jt; r++) sum += srow[r];
            l[col] = l[col] * a + sum;
            m[col] = mx;
            if (p->stats_only) continue;
            if (a != 1.0f)
                for (int64_t x = 0; x < p->dv; x++) s->orow[x] *= a;
            kt->gemv_t(vb + j0 * p->v_sj, p->v_sj, jt, srow, p->dv, s->orow);
        }
        if (!p->stats_only)
            for (int64_t x = 0; x < p->dv; x++) Ot[x * ITP + col] = s->orow[x];
    }
}

/* out[b,h,i0+col,:] = Ot[:,col] / l[col]; lse likewise. */
static void finish_tile(const att_ctx *c, int64_t b, int64_t h, int64_t i0, int64_t it,
                        const float *m, const float *l, const float *Ot)
{
    const xa_attn *p = c->p;
    if (!p->stats_only) {
        float *o = p->out + b * p->o_sb + h * p->o_sh + i0 * p->o_si;
        for (int64_t col0 = 0; col0 < it; col0 += 16)
            for (int64_t d0 = 0; d0 < p->dv; d0 += 16) {
                const int64_t ce = XA_MIN(it, col0 + 16), de = XA_MIN(p->dv, d0 + 16);
                for (int64_t col = col0; col < ce; col++) {
                    const float iv = l[col] > 0.0f ? 1.0f / l[col] : 0.0f;
                    float *orow = o + col * p->o_si;
                    for (int64_t d = d0; d < de; d++) orow[d] = Ot[d * c->ITP + col] * iv;
                }
            }
    }
    if (p->lse) {
        float *lse = p->lse + (b * p->H + h) * p->I + i0;
        for (int64_t col = 0; col < it; col++)
            lse[col] = l[col] > 0.0f ? m[col] + logf(l[col]) : -INFINITY;
    }
    if (p->stat_m) {
        memcpy(p->stat_m + (b * p->H + h) * p->I + i0, m, sizeof(float) * (size_t)it);
        memcpy(p->stat_l + (b * p->H + h) * p->I + i0, l, sizeof(float) * (size_t)it);
    }
}

/* probs[b,h,i0+col, j] = exp(logit - m) / l with the final statistics (second pass). */
static void probs_tile(const att_ctx *c, att_scratch *s, int64_t b, int64_t h, int64_t i0,
                       int64_t it, const float *m, const float *l)
{
    const xa_attn *p = c->p;
    const int64_t ITP = c->ITP, J = p->J;
    float *P = p->probs + b * p->p_sb + h * p->p_sh + i0 * p->p_si;
    for (int64_t col = 0; col < it; col++) {
        s->msafe[col] = m[col] == -INFINITY ? 0.0f : m[col];
        s->alpha[col] = l[col] > 0.0f ? 1.0f / l[col] : 0.0f;
    }
    if (!c->direct) pack_q(c, b, h, i0, it, s->Qt);
    for (int64_t j0 = 0; j0 < J; j0 += c->JT) {
        int64_t jt = XA_MIN(c->JT, J - j0);
        if (c->skip_causal && j0 > i0 + it - 1 + p->causal_offset) {
            for (int64_t col = 0; col < it; col++)
                for (int64_t j = XA_MAX(j0, i0 + col + p->causal_offset + 1); j < J; j++)
                    P[col * p->p_si + j * p->p_sj] = 0.0f;
            break;
        }
        logits_tile(c, b, h, i0, it, j0, jt, s->Qt, s->St);
        /* exp by rows of St (all queries of one key at once), then scatter */
        for (int64_t r = 0; r < jt; r++) {
            float *srow = s->St + r * ITP;
            for (int64_t col = 0; col < it; col++) srow[col] -= s->msafe[col];
            c->kt->vexp(srow, it);
            for (int64_t col = 0; col < it; col++)
                P[col * p->p_si + (j0 + r) * p->p_sj] = srow[col] * s->alpha[col];
        }
    }
}

/* Mixing mode: all heads of batch b, query tile i0. Ot: (H, DVP, ITP). */
static void mixed_tile(const att_ctx *c, att_scratch *s, int64_t b, int64_t i0, int64_t it,
                       float *Ot)
{
    const xa_attn *p = c->p;
    const xa_kernels *kt = c->kt;
    const int64_t H = p->H, nr = kt->nr, ITP = c->ITP, tile = c->JTP * ITP;
    const int64_t itp = (it + nr - 1) / nr * nr;
    float *dummy = s->mnew; /* expsub's sums, unused */
    memset(Ot, 0, sizeof(float) * (size_t)(H * c->DVP * ITP));
    /* per head: the final row max (0 for a row without mass) and 1 / sum (0 without mass) */
    for (int64_t h = 0; h < H; h++) {
        const float *m = p->row_m + (b * H + h) * p->I + i0;
        const float *l = p->row_l + (b * H + h) * p->I + i0;
        for (int64_t col = 0; col < it; col++) {
            s->msafe[h * ITP + col] = m[col] == -INFINITY ? 0.0f : m[col];
            s->alpha[h * ITP + col] = l[col] > 0.0f ? 1.0f / l[col] : 0.0f;
        }
        pack_q(c, b, h, i0, it, s->Qt + h * p->dh * ITP);
    }
    for (int64_t j0 = 0; j0 < p->J; j0 += c->JT) {
        int64_t jt = XA_MIN(c->JT, p->J - j0);
        if (c->skip_causal && j0 > i0 + it - 1 + p->causal_offset) break;
        for (int64_t h = 0; h < H; h++) {
            float *St = s->St + h * tile;
            const float *inv = s->alpha + h * ITP;
            logits_tile(c, b, h, i0, it, j0, jt, s->Qt + h * p->dh * ITP, St);
            kt->expsub(St, jt, it, ITP, s->msafe + h * ITP, dummy);
            for (int64_t r = 0; r < jt; r++)
                for (int64_t col = 0; col < it; col++) St[r * ITP + col] *= inv[col];
        }
        for (int64_t g = 0; g < H; g++) {
            /* Pm = sum_h mix[g][h] * P[h] over the valid part of the tile */
            const float *w = p->mix + g * H;
            for (int64_t r = 0; r < jt; r++) {
                float *pm = s->Pm + r * ITP;
                for (int64_t col = 0; col < itp; col++) pm[col] = 0.0f;
                for (int64_t h = 0; h < H; h++)
                    if (w[h] != 0.0f) kt->axpy(w[h], s->St + h * tile + r * ITP, pm, it);
            }
            if (p->probs) {
                float *P = p->probs + b * p->p_sb + g * p->p_sh + i0 * p->p_si + j0 * p->p_sj;
                for (int64_t r = 0; r < jt; r++)
                    for (int64_t col = 0; col < it; col++)
                        P[col * p->p_si + r * p->p_sj] = s->Pm[r * ITP + col];
            }
            accumulate_pv(c, s, b, g, j0, jt, itp, s->Pm, Ot + g * c->DVP * ITP);
        }
    }
    for (int64_t g = 0; g < H; g++) {
        float *o = p->out + b * p->o_sb + g * p->o_sh + i0 * p->o_si;
        const float *og = Ot + g * c->DVP * ITP;
        for (int64_t col = 0; col < it; col++)
            for (int64_t d = 0; d < p->dv; d++) o[col * p->o_si + d] = og[d * ITP + col];
    }
}

static xattn_status check_attn(const xa_attn *p)
{
    const char *fn = p->fn ? p->fn : "attention";
    if (p->B < 0 || p->H < 0 || p->I < 0 || p->J < 0)
        return xa_error(XATTN_ERR_ARG, "%s: negative size (B=%lld H=%lld I=%lld J=%lld)", fn,
                        (long long)p->B, (long long)p->H, (long long)p->I, (long long)p->J);
    if (p->dh < 1 || p->dv < 1)
        return xa_error(XATTN_ERR_ARG, "%s: head sizes must be >= 1 (dh=%lld dv=%lld)", fn,
                        (long long)p->dh, (long long)p->dv);
    if (!p->q || !p->k || (!p->stats_only && (!p->v || !p->out)))
        return xa_error(XATTN_ERR_ARG, "%s: q, k, v and out must not be NULL", fn);
    if (p->stats_only && !p->lse && !p->stat_m)
        return xa_error(XATTN_ERR_ARG, "%s: stats pass without an output", fn);
    if ((p->stat_m == NULL) != (p->stat_l == NULL))
        return xa_error(XATTN_ERR_ARG, "%s: stat_m and stat_l go together", fn);
    if (p->mix && (!p->row_m || !p->row_l))
        return xa_error(XATTN_ERR_ARG, "%s: head mixing needs the row statistics", fn);
    const int64_t st[] = {p->q_sb,     p->q_sh,    p->q_si,    p->k_sb,    p->k_sh,
                          p->k_sj,     p->v_sb,    p->v_sh,    p->v_sj,    p->o_sb,
                          p->o_sh,     p->o_si,    p->mask_sb, p->mask_sh, p->mask_si,
                          p->bias_sb,  p->bias_sh, p->bias_si, p->bias_sj, p->qkeep_sb,
                          p->kkeep_sb, p->p_sb,    p->p_sh,    p->p_si,    p->p_sj};
    for (size_t i = 0; i < XA_N(st); i++)
        if (st[i] < 0) return xa_error(XATTN_ERR_ARG, "%s: negative stride", fn);
    if (p->fill != XATTN_FILL_NEG_INF && p->fill != XATTN_FILL_MIN_FLOAT)
        return xa_error(XATTN_ERR_ARG, "%s: unknown fill mode %d", fn, (int)p->fill);
    if (!isfinite(p->scale)) return xa_error(XATTN_ERR_ARG, "%s: scale is not finite", fn);
    int64_t t;
    if (xa_mul_ok(p->B, p->H, &t) || xa_mul_ok(t, p->I, &t) || xa_mul_ok(t, p->J, &t) ||
        xa_mul_ok(t, (int64_t)sizeof(float), &t) || xa_mul_ok(p->B * p->H, p->dh, &t) ||
        xa_mul_ok(t, p->J + 64, &t) || xa_mul_ok(t, (int64_t)sizeof(float), &t))
        return xa_error(XATTN_ERR_NOMEM, "%s: B*H*I*J overflows", fn);
    return XATTN_OK;
}

/* Tile sizes and layout of one call. */
static void att_setup(att_ctx *c, const xa_attn *p)
{
    c->p = p;
    c->kt = xa_kern();
    const int64_t mr = c->kt->mr, nr = c->kt->nr;
    c->fill = p->fill == XATTN_FILL_NEG_INF ? -INFINITY : -FLT_MAX;
    c->IT = XA_MAX(nr, 64 / nr * nr);
    int64_t ipad = (p->I + nr - 1) / nr * nr;
    if (ipad < c->IT) c->IT = ipad;
    c->JT = XA_MAX(mr, 256 / mr * mr);
    c->ITP = c->IT;
    c->JTP = c->JT;
    c->DVP = (p->dv + mr - 1) / mr * mr;
    c->skip_causal = p->causal && p->fill == XATTN_FILL_NEG_INF;
    c->JP = (p->J + mr - 1) / mr * mr;
    c->direct = p->I <= 4 && !p->mix;
    c->nmix = p->mix ? p->H : 1;
    c->Kt = NULL;
}

/* Key splits of each query task when the tasks are too few to feed many threads: chosen from
 * the problem alone (never from the thread count), so results are the same for any count. */
#define ATT_MIN_TASKS 32
static int64_t att_splits(const att_ctx *c, int64_t ntask, int64_t *chunk)
{
    const xa_attn *p = c->p;
    int64_t nsplit = 1;
    if (!p->mix && ntask < ATT_MIN_TASKS && p->J > c->JT) {
        nsplit = (ATT_MIN_TASKS + ntask - 1) / ntask;
        int64_t maxsplit = (p->J + c->JT - 1) / c->JT;
        if (nsplit > maxsplit) nsplit = maxsplit;
    }
    *chunk = ((p->J + nsplit - 1) / nsplit + c->JT - 1) / c->JT * c->JT;
    if (nsplit > 1) nsplit = (p->J + *chunk - 1) / *chunk;
    return nsplit;
}

/* One (query tile, key split) work item; finishes the tile when the keys are not split. */
static void att_work(const att_ctx *c, att_scratch *s, int64_t w, int64_t ntile, int64_t nsplit,
                     int64_t chunk, int64_t state, float *states, float *own)
{
    const xa_attn *p = c->p;
    int64_t task = w / nsplit, sp = w % nsplit;
    if (p->mix) {
        int64_t b = task / ntile, i0 = (task % ntile) * c->IT;
        mixed_tile(c, s, b, i0, XA_MIN(c->IT, p->I - i0), own + 2 * c->ITP);
        return;
    }
    int64_t bh = task / ntile, ti = task % ntile;
    int64_t b = bh / p->H, h = bh % p->H;
    int64_t i0 = ti * c->IT, it = XA_MIN(c->IT, p->I - i0);
    float *stt = nsplit > 1 ? states + w * state : own;
    float *m = stt, *l = stt + c->ITP, *Ot = stt + 2 * c->ITP;
    for (int64_t x = 0; x < c->ITP; x++) {
        m[x] = -INFINITY;
        l[x] = 0.0f;
    }
    if (!p->stats_only) memset(Ot, 0, sizeof(float) * (size_t)(c->DVP * c->ITP));
    int64_t jb = sp * chunk, je = XA_MIN(p->J, jb + chunk);
    if (jb < je) {
        if (c->direct)
            attend_range_direct(c, s, b, h, i0, it, jb, je, m, l, Ot);
        else
            attend_range(c, s, b, h, i0, it, jb, je, m, l, Ot);
    }
    if (nsplit == 1) {
        finish_tile(c, b, h, i0, it, m, l, Ot);
        if (p->probs) probs_tile(c, s, b, h, i0, it, m, l);
    }
}

/* Merges the split states of one task into its first split (in split order), then finishes. */
static void att_merge(const att_ctx *c, att_scratch *s, int64_t task, int64_t ntile, int64_t nsplit,
                      int64_t state, float *states)
{
    const xa_attn *p = c->p;
    int64_t bh = task / ntile, ti = task % ntile;
    int64_t b = bh / p->H, h = bh % p->H;
    int64_t i0 = ti * c->IT, it = XA_MIN(c->IT, p->I - i0);
    float *m0 = states + task * nsplit * state, *l0 = m0 + c->ITP, *O0 = m0 + 2 * c->ITP;
    for (int64_t sp = 1; sp < nsplit; sp++) {
        float *m1 = m0 + sp * state, *l1 = m1 + c->ITP, *O1 = m1 + 2 * c->ITP;
        for (int64_t col = 0; col < it; col++) {
            float mx = XA_MAX(m0[col], m1[col]);
            if (mx == -INFINITY) continue;
            float a0 = m0[col] == mx ? 1.0f : expf(m0[col] - mx);
            float a1 = m1[col] == mx ? 1.0f : expf(m1[col] - mx);
            l0[col] = l0[col] * a0 + l1[col] * a1;
            m0[col] = mx;
            if (!p->stats_only)
                for (int64_t d = 0; d < p->dv; d++)
                    O0[d * c->ITP + col] = O0[d * c->ITP + col] * a0 + O1[d * c->ITP + col] * a1;
        }
    }
    finish_tile(c, b, h, i0, it, m0, l0, O0);
    if (p->probs) probs_tile(c, s, b, h, i0, it, m0, l0);
}

/* Scratch shared by the threads of one call: transposed keys and split states. */
typedef struct att_shared {
    xa_ws *kt_ws, *states_ws;
    float *states;
} att_shared;

static xattn_status att_shared_get(att_ctx *c, int64_t nstate_floats, att_shared *sh)
{
    const xa_attn *p = c->p;
    memset(sh, 0, sizeof *sh);
    if (!c->direct) {
        int64_t ktn = p->B * p->H * p->dh * XA_MAX(c->JP, 1); /* bounded by check_attn */
        if (!(sh->kt_ws = xa_ws_get(sizeof(float) * (size_t)ktn))) return XATTN_ERR_NOMEM;
        c->Kt = xa_ws_data(sh->kt_ws);
    }
    if (nstate_floats) {
        if (!(sh->states_ws = xa_ws_get(sizeof(float) * (size_t)nstate_floats))) {
            xa_ws_put(sh->kt_ws);
            return XATTN_ERR_NOMEM;
        }
        sh->states = xa_ws_data(sh->states_ws);
    }
    return XATTN_OK;
}

xattn_status xa_attention(const xa_attn *p)
{
    xattn_status st = check_attn(p);
    if (st != XATTN_OK) return st;
    if (p->B == 0 || p->H == 0 || p->I == 0) return XATTN_OK;
    att_ctx c;
    att_setup(&c, p);
    const int64_t ntile = (p->I + c.IT - 1) / c.IT;
    const int64_t ntask = p->B * (p->mix ? 1 : p->H) * ntile;
    int64_t chunk;
    const int64_t nsplit = att_splits(&c, ntask, &chunk);
    /* per-task state: m (ITP), l (ITP), Ot (DVP, ITP) per head held, for each (task, split) */
    const int64_t state = (c.ITP * (2 + c.nmix * c.DVP) + 15) / 16 * 16;
    const size_t sfl = scratch_floats(&c);
    att_shared sh;
    if (att_shared_get(&c, nsplit > 1 ? ntask * nsplit * state : 0, &sh)) return XATTN_ERR_NOMEM;
    int failed = 0;
    const xattn_ctx *ctx = xa_ctx_cur();
    const int nth = xa_threads();
#ifdef _OPENMP
#pragma omp parallel num_threads(nth)
#endif
    {
        xa_ws *mem_ws = xa_ws_get_from(ctx, sizeof(float) * (sfl + (size_t)state));
        float *mem = mem_ws ? xa_ws_data(mem_ws) : NULL;
        if (!mem) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            failed = 1;
        }
        att_scratch s;
        if (mem) scratch_bind(&c, mem + state, &s);
        /* transpose every head's keys once: (B*H) x key blocks of 256 */
        const int64_t kblocks = XA_MAX((p->J + 255) / 256, 1),
                      npack = c.direct ? 0 : p->B * p->H * kblocks;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t w = 0; w < npack; w++)
            pack_k(&c, w / kblocks / p->H, w / kblocks % p->H, w % kblocks * 256,
                   XA_MIN(p->J, w % kblocks * 256 + 256));
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t w = 0; w < ntask * nsplit; w++)
            if (mem) att_work(&c, &s, w, ntile, nsplit, chunk, state, sh.states, mem);
        if (nsplit > 1) {
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
            for (int64_t task = 0; task < ntask; task++)
                if (mem) att_merge(&c, &s, task, ntile, nsplit, state, sh.states);
        }
        xa_ws_put(mem_ws);
    }
    xa_ws_put(sh.states_ws);
    xa_ws_put(sh.kt_ws);
    if (failed)
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory for scratch",
                        p->fn ? p->fn : "attention");
    return XATTN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Public SDPA                                                                              */

void xattn_sdpa_init(xattn_sdpa_params *p)
{
    if (p) memset(p, 0, sizeof *p);
}

xattn_status xattn_sdpa(const xattn_sdpa_params *p)
{
    if (!p) return xa_error(XATTN_ERR_ARG, "xattn_sdpa: params is NULL");
    if (p->has_scale && !isfinite(p->scale))
        return xa_error(XATTN_ERR_ARG, "xattn_sdpa: scale is not finite");
    if (p->dh < 1)
        return xa_error(XATTN_ERR_ARG, "xattn_sdpa: head sizes must be >= 1 (dh=%lld dv=%lld)",
                        (long long)p->dh, (long long)p->dv);
    xa_attn a;
    memset(&a, 0, sizeof a);
    a.fn = "xattn_sdpa";
    a.B = p->B;
    a.H = p->H;
    a.I = p->I;
    a.J = p->J;
    a.dh = p->dh;
    a.dv = p->dv;
    a.q = p->q;
    a.q_sb = p->q_sb;
    a.q_sh = p->q_sh;
    a.q_si = p->q_si;
    a.k = p->k;
    a.k_sb = p->k_sb;
    a.k_sh = p->k_sh;
    a.k_sj = p->k_sj;
    a.v = p->v;
    a.v_sb = p->v_sb;
    a.v_sh = p->v_sh;
    a.v_sj = p->v_sj;
    a.out = p->out;
    a.o_sb = p->o_sb;
    a.o_sh = p->o_sh;
    a.o_si = p->o_si;
    a.scale = p->has_scale ? p->scale : (float)(1.0 / sqrt((double)p->dh));
    a.fill = p->fill;
    a.causal = p->causal;
    a.mask = p->mask;
    a.mask_sb = p->mask_sb;
    a.mask_sh = p->mask_sh;
    a.mask_si = p->mask_si;
    a.bias = p->bias;
    a.bias_sb = p->bias_sb;
    a.bias_sh = p->bias_sh;
    a.bias_si = p->bias_si;
    a.bias_sj = 1;
    a.lse = p->lse;
    a.probs = p->probs;
    a.p_sj = 1;
    a.p_si = p->J;
    a.p_sh = p->I * p->J;
    a.p_sb = p->H * p->I * p->J;
    return xa_attention(&a);
}
