/*
 * Fused scaled-dot-product attention with a tiled online softmax (xa_attention), and the
 * public xattn_sdpa on top of it.
 *
 * The work is cut into tasks (b, h, query tile [, key range]). A task keeps everything transposed
 * so that the softmax runs along vector lanes with no horizontal reductions:
 *
 *   Qt  (dh, ITP)   = scale * q[i0 .. i0+IT)^T            packed once per task
 *   Kt  (JP/mr, dh, mr) = k[b, h] in panels of mr keys     packed once per (b, h), shared
 *   Vp  (DVP/mr, JP, mr) = v[b, h] in panels of mr channels  likewise (not in direct mode)
 *   St  (JTP, ITP)  = Kt-panels x Qt  = (q k^T)^T         micro-kernel, k = dh, per key tile
 *   column c of St holds the logits of query i0+c against the tile's keys; the running max m[c]
 *   and sum l[c] are per lane; St is turned into Pt = exp(St - m) in place and
 *   Ot  (dv, ITP)  += V^T x Pt                            micro-kernel, A = the Vp panels
 * (the panels are contiguous: rows of k or v read in place, a row stride apart, would fall into
 * a few L1 sets and evict each other at every step of the micro-kernel)
 *   out[i0+c, :]    = Ot[:, c] / l[c]
 *
 * Nothing of size I x J is allocated unless the caller asks for the probabilities, which are then
 * written by a second pass that recomputes the logit tiles with the final statistics.
 * When there are fewer (b, h, query tile) tasks than threads, the keys are split across threads
 * and the partial (m, l, O) states are merged (log-sum-exp merge). A few queries (decoding) take
 * a direct path: logits by dot products against the key rows in place, no packing.
 *
 * Compute bf16 (a->bf16) on a table with a bf16 dot-product micro-kernel (ukr_bf16): Kt and Qt
 * hold bf16 pairs instead (keys in panels of mr_bf16, queries unscaled in panels of nr_bf16, dh
 * padded to the kernel's k granularity) and the logit tiles are scaled after the products; the
 * tile sizes are then multiples of both micro-tiles. The values stay float32 (Pt is float32).
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
    int64_t JP;       /* J rounded up to mr: the packed keys and values */
    float *Kt;        /* (B, H, JP/mr, dh, mr): every head's keys; NULL when direct */
    float *Vp;        /* (B, H, DVP/mr, JP, mr): every head's values; NULL when not needed */
    int direct;       /* few queries (decoding): logits by dot products, keys not packed */
    int64_t nmix;     /* heads held at once by a task: H in mixing mode, else 1 */
    /* logits on the bf16 micro-kernel: Kt holds (B, H, JP/mr_bf16, dhp/2 pairs x mr_bf16, in
     * the kernel's blocks) and Qt (ITP/nr_bf16, dhp/2, nr_bf16) pairs; dhp = dh rounded up to
     * kb_bf16 */
    int pairs;
    int64_t dhp;
    int64_t qts; /* floats of one head's Qt */
} att_ctx;

/* Per-thread scratch. */
typedef struct att_scratch {
    float *Qt;    /* (nmix, dh, ITP)  */
    float *St;    /* (nmix, JTP, ITP) */
    float *Pm;    /* (JTP, ITP) mixed probabilities (mixing mode) */
    float *mnew;  /* (ITP) */
    float *msafe; /* (nmix, ITP) */
    float *alpha; /* (ITP) */
    float *orow;  /* (dv): direct mode accumulator */
} att_scratch;

static size_t scratch_floats(const att_ctx *c)
{
    const xa_attn *p = c->p;
    return (size_t)(c->nmix * c->qts + (c->nmix + 1) * c->JTP * c->ITP +
                    (2 * c->nmix + 2) * c->ITP + p->dv) +
           8 * 16;
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
    s->Qt = take(&base, c->nmix * c->qts);
    s->St = take(&base, c->nmix * c->JTP * c->ITP);
    s->Pm = take(&base, c->JTP * c->ITP);
    s->mnew = take(&base, c->ITP);
    s->msafe = take(&base, c->nmix * c->ITP);
    s->alpha = take(&base, c->nmix * c->ITP);
    s->orow = take(&base, p->dv);
}

/* The dh values at src (NULL: zeros) as dhp / 2 bf16 pairs, zero past dh, pair x at
 * dst[(x / hb) * w * hb + x % hb]: a row of a pair panel w lanes wide in blocks of hb pairs. */
static void row_pairs(const att_ctx *c, const float *src, int64_t hb, int64_t w, uint32_t *dst)
{
    const int64_t dh = c->p->dh;
    for (int64_t x = 0; x < c->dhp / 2; x++) {
        const float lo = src && 2 * x < dh ? src[2 * x] : 0.0f;
        const float hi = src && 2 * x + 1 < dh ? src[2 * x + 1] : 0.0f;
        dst[(x / hb) * w * hb + x % hb] = xa_bf16_pair(lo, hi);
    }
}

/* Pairs: Qt as (ITP/nr_bf16, dhp/2, nr_bf16) pairs of q[b, h, i0 + c, :] (unscaled), zero for
 * it <= c < ITP and past dh. */
static void pack_q_pairs(const att_ctx *c, const float *q, int64_t it, uint32_t *Qp)
{
    const int64_t nrb = c->kt->nr_bf16, hq = c->dhp / 2;
    for (int64_t col = 0; col < c->ITP; col++)
        row_pairs(c, col < it ? q + col * c->p->q_si : NULL, 1, nrb,
                  Qp + (col / nrb) * hq * nrb + col % nrb);
}

/* Qt (dh, ITP) = scale * q[b, h, i0 + c, :]^T for c < it, zero for it <= c < ITP (pairs:
 * pack_q_pairs) */
static void pack_q(const att_ctx *c, int64_t b, int64_t h, int64_t i0, int64_t it, float *Qt)
{
    const xa_attn *p = c->p;
    const float *q = p->q + b * p->q_sb + h * p->q_sh + i0 * p->q_si;
    if (c->pairs) {
        pack_q_pairs(c, q, it, (uint32_t *)Qt);
        return;
    }
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

/* Keys [jb, je) of head (b, h) into their panels of Kt (key j at panel j / mr, lane j % mr,
 * after dh * mr floats per panel), and their values into the panels of Vp (channel x at panel
 * x / mr, lane x % mr; channels past dv zero) when Vp is kept; the keys J <= j < JP zero. */
static void pack_k(const att_ctx *c, int64_t b, int64_t h, int64_t jb, int64_t je)
{
    const xa_attn *p = c->p;
    const int64_t mr = c->kt->mr, dh = p->dh;
    const float *k = p->k + b * p->k_sb + h * p->k_sh;
    const int64_t jend = je == p->J ? c->JP : je;
    if (c->pairs) { /* key j at panel j / mrb, lane j % mrb, in blocks of hb pairs */
        const int64_t mrb = c->kt->mr_bf16, hb = c->kt->kb_bf16 / 2, hq = c->dhp / 2;
        uint32_t *Kp = (uint32_t *)c->Kt + (b * p->H + h) * hq * c->JP;
        for (int64_t j = jb; j < jend; j++)
            row_pairs(c, j < p->J ? k + j * p->k_sj : NULL, hb, mrb,
                      Kp + (j / mrb) * hq * mrb + (j % mrb) * hb);
    } else {
        float *Kt = c->Kt + (b * p->H + h) * dh * c->JP;
        for (int64_t j = jb; j < jend; j++) {
            float *dst = Kt + (j / mr) * dh * mr + j % mr;
            if (j < p->J) {
                const float *src = k + j * p->k_sj;
                for (int64_t d = 0; d < dh; d++) dst[d * mr] = src[d];
            } else {
                for (int64_t d = 0; d < dh; d++) dst[d * mr] = 0.0f;
            }
        }
    }
    if (!c->Vp) return;
    const float *v = p->v + b * p->v_sb + h * p->v_sh;
    float *Vp = c->Vp + (b * p->H + h) * c->DVP * c->JP;
    for (int64_t j = jb; j < jend; j++)
        for (int64_t x0 = 0; x0 < c->DVP; x0 += mr) {
            float *dst = Vp + x0 * c->JP + j * mr;
            for (int64_t x = 0; x < mr; x++)
                dst[x] = j < p->J && x0 + x < p->dv ? v[j * p->v_sj + x0 + x] : 0.0f;
        }
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
    } else if (c->pairs) {
        /* j0 is a multiple of mr_bf16: the tile's keys start a panel */
        const int64_t mrb = kt->mr_bf16, nrb = kt->nr_bf16, hq = c->dhp / 2;
        const uint32_t *Kp = (const uint32_t *)c->Kt + (b * p->H + h) * hq * c->JP + j0 * hq;
        const uint32_t *Qp = (const uint32_t *)Qt;
        jtp = (jt + mrb - 1) / mrb * mrb;
        itp = (it + nrb - 1) / nrb * nrb;
        for (int64_t c0 = 0; c0 < itp; c0 += nrb)
            for (int64_t r0 = 0; r0 < jtp; r0 += mrb)
                kt->ukr_bf16(c->dhp, Kp + r0 * hq, Qp + c0 * hq, St + r0 * ITP + c0, ITP, 0);
        /* scaled after the products (rounding scale * q to bf16 would change the numbers), so
         * the unscaled sums overflow float32 a factor 1 / scale sooner than the float32 path's */
        if (p->scale != 1.0f)
            for (int64_t r = 0; r < jt; r++)
                for (int64_t col = 0; col < itp; col++) St[r * ITP + col] *= p->scale;
    } else {
        /* j0 is a multiple of mr: the tile's keys start a panel */
        const float *Kt = c->Kt + (b * p->H + h) * p->dh * c->JP + j0 * p->dh;
        for (int64_t c0 = 0; c0 < itp; c0 += nr)
            for (int64_t r0 = 0; r0 < jtp; r0 += mr)
                kt->ukr(p->dh, Kt + r0 * p->dh, mr, Qt + c0, ITP, St + r0 * ITP + c0, ITP, 0);
    }
    bias_and_masks(c, b, h, i0, it, j0, jt, St, ITP, 1);
}

/* Ot (DVP, ITP) += V^T (dv, jt) x Pt (jt, ITP), v rows j0.. of head (b, h) read in place. */
static void accumulate_pv(const att_ctx *c, int64_t b, int64_t h, int64_t j0, int64_t jt,
                          int64_t itp, const float *Pt, float *Ot)
{
    const xa_attn *p = c->p;
    const xa_kernels *kt = c->kt;
    const int64_t mr = kt->mr, nr = kt->nr, ITP = c->ITP;
    /* the packed panels of channels d0.. (zero past dv), keys from j0 */
    const float *Vh = c->Vp + (b * p->H + h) * c->DVP * c->JP + j0 * mr;
    for (int64_t d0 = 0; d0 < p->dv; d0 += mr)
        for (int64_t c0 = 0; c0 < itp; c0 += nr)
            kt->ukr(jt, Vh + d0 * c->JP, mr, Pt + c0, ITP, Ot + d0 * ITP + c0, ITP, 1);
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
        accumulate_pv(c, b, h, j0, jt, itp, s->St, Ot);
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
        pack_q(c, b, h, i0, it, s->Qt + h * c->qts);
    }
    for (int64_t j0 = 0; j0 < p->J; j0 += c->JT) {
        int64_t jt = XA_MIN(c->JT, p->J - j0);
        if (c->skip_causal && j0 > i0 + it - 1 + p->causal_offset) break;
        for (int64_t h = 0; h < H; h++) {
            float *St = s->St + h * tile;
            const float *inv = s->alpha + h * ITP;
            logits_tile(c, b, h, i0, it, j0, jt, s->Qt + h * c->qts, St);
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
            accumulate_pv(c, b, g, j0, jt, itp, s->Pm, Ot + g * c->DVP * ITP);
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
        xa_mul_ok(t, (int64_t)sizeof(float), &t) || xa_mul_ok(p->B * p->H, p->dh + 32, &t) ||
        xa_mul_ok(t, p->J + 128, &t) || xa_mul_ok(t, (int64_t)sizeof(float), &t) ||
        xa_mul_ok(p->B * p->H, p->dv + 16, &t) || xa_mul_ok(t, p->J + 64, &t) ||
        xa_mul_ok(t, (int64_t)sizeof(float), &t))
        return xa_error(XATTN_ERR_NOMEM, "%s: B*H*I*J overflows", fn);
    return XATTN_OK;
}

static int64_t lcm(int64_t a, int64_t b)
{
    int64_t x = a, y = b;
    while (y) {
        const int64_t t = x % y;
        x = y;
        y = t;
    }
    return a / x * b;
}

/* Tile sizes and layout of one call. */
static void att_setup(att_ctx *c, const xa_attn *p)
{
    c->p = p;
    c->kt = xa_kern();
    const xa_kernels *kt = c->kt;
    c->fill = p->fill == XATTN_FILL_NEG_INF ? -INFINITY : -FLT_MAX;
    c->direct = p->I <= 4 && !p->mix;
    c->pairs = p->bf16 && kt->ukr_bf16 && !c->direct;
    /* query tiles in multiples of nr (and of nr_bf16 with pairs), key tiles likewise of mr */
    const int64_t mr = c->pairs ? lcm(kt->mr, kt->mr_bf16) : kt->mr;
    const int64_t nr = c->pairs ? lcm(kt->nr, kt->nr_bf16) : kt->nr;
    c->dhp = c->pairs ? (p->dh + kt->kb_bf16 - 1) / kt->kb_bf16 * kt->kb_bf16 : p->dh;
    /* from the core's caches: a query tile's packed queries (dh x IT) within half of L1, and
     * a key tile's logits (JT x IT), keys and values within half of L2 (64 and 336 with a
     * 32 KB L1 and a 512 KB L2 at dh = dv = 64), at most 128 and 512, multiples of the
     * micro-tile (IT of nr, JT of mr); never from the thread count */
    int64_t l1, l2;
    xa_cache_sizes(&l1, &l2);
    c->IT = XA_MAX(nr, XA_MIN((int64_t)128, (l1 / 2) / (4 * p->dh)) / nr * nr);
    int64_t ipad = (p->I + nr - 1) / nr * nr;
    if (ipad < c->IT) c->IT = ipad;
    c->JT = XA_MAX(mr, XA_MIN((int64_t)512, (l2 / 2) / (4 * (c->IT + p->dh + p->dv))) / mr * mr);
    c->ITP = c->IT;
    c->JTP = c->JT;
    c->DVP = (p->dv + kt->mr - 1) / kt->mr * kt->mr;
    c->skip_causal = p->causal && p->fill == XATTN_FILL_NEG_INF;
    c->JP = (p->J + mr - 1) / mr * mr;
    c->qts = c->ITP * XA_MAX(p->dh, c->dhp / 2);
    c->nmix = p->mix ? p->H : 1;
    c->Kt = c->Vp = NULL;
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
    xa_ws *kt_ws, *vp_ws, *states_ws;
    float *states;
} att_shared;

static xattn_status att_shared_get(att_ctx *c, int64_t nstate_floats, att_shared *sh)
{
    const xa_attn *p = c->p;
    memset(sh, 0, sizeof *sh);
    if (!c->direct) {
        /* bounded by check_attn (JP < J + 128 and dhp / 2 < dh + 32 for every table) */
        int64_t ktn = p->B * p->H * XA_MAX(p->dh, c->dhp / 2) * XA_MAX(c->JP, 1);
        if (!(sh->kt_ws = xa_ws_get(sizeof(float) * (size_t)ktn))) return XATTN_ERR_NOMEM;
        c->Kt = xa_ws_data(sh->kt_ws);
        if (p->v && !p->stats_only) {
            const int64_t vpn = p->B * p->H * c->DVP * XA_MAX(c->JP, 1);
            if (!(sh->vp_ws = xa_ws_get(sizeof(float) * (size_t)vpn))) {
                xa_ws_put(sh->kt_ws);
                return XATTN_ERR_NOMEM;
            }
            c->Vp = xa_ws_data(sh->vp_ws);
        }
    }
    if (nstate_floats) {
        if (!(sh->states_ws = xa_ws_get(sizeof(float) * (size_t)nstate_floats))) {
            xa_ws_put(sh->kt_ws);
            xa_ws_put(sh->vp_ws);
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
#ifdef _OPENMP
    const int nth = xa_threads();
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
    xa_ws_put(sh.vp_ws);
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

/* The internal problem of public parameters (fn names the caller in errors). */
static xattn_status sdpa_problem(const xattn_sdpa_params *p, const char *fn, xa_attn *out)
{
    if (!p) return xa_error(XATTN_ERR_ARG, "%s: params is NULL", fn);
    if (p->has_scale && !isfinite(p->scale))
        return xa_error(XATTN_ERR_ARG, "%s: scale is not finite", fn);
    if (p->dh < 1)
        return xa_error(XATTN_ERR_ARG, "%s: head sizes must be >= 1 (dh=%lld dv=%lld)", fn,
                        (long long)p->dh, (long long)p->dv);
    xa_attn a;
    memset(&a, 0, sizeof a);
    a.fn = fn;
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
    a.causal_offset = p->causal_offset;
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
    *out = a;
    return XATTN_OK;
}

xattn_status xattn_sdpa(const xattn_sdpa_params *p)
{
    xa_attn a;
    xattn_status s = sdpa_problem(p, "xattn_sdpa", &a);
    return s ? s : xa_attention(&a);
}

void xattn_sdpa_grads_init(xattn_sdpa_grads *g)
{
    if (g) memset(g, 0, sizeof *g);
}

xattn_status xattn_sdpa_backward(const xattn_sdpa_params *p, const xattn_sdpa_grads *g)
{
    static const char fn[] = "xattn_sdpa_backward";
    xa_attn a;
    xattn_status s = sdpa_problem(p, fn, &a);
    if (s) return s;
    if (!g) return xa_error(XATTN_ERR_ARG, "%s: grads is NULL", fn);
    if (!xa_reserved_zero(g->reserved_))
        return xa_error(XATTN_ERR_ARG, "%s: grads->reserved_ must be zero", fn);
    if (!p->out) return xa_error(XATTN_ERR_ARG, "%s: out (the forward's output) is NULL", fn);
    a.probs = NULL;
    a.lse = NULL;
    xa_attn_grad d;
    memset(&d, 0, sizeof d);
    d.dout = g->dout;
    d.do_sb = g->do_sb;
    d.do_sh = g->do_sh;
    d.do_si = g->do_si;
    d.lse = p->lse;
    d.dq = g->dq;
    d.dq_sb = g->dq_sb;
    d.dq_sh = g->dq_sh;
    d.dq_si = g->dq_si;
    d.dk = g->dk;
    d.dk_sb = g->dk_sb;
    d.dk_sh = g->dk_sh;
    d.dk_sj = g->dk_sj;
    d.dv = g->dv;
    d.dv_sb = g->dv_sb;
    d.dv_sh = g->dv_sh;
    d.dv_sj = g->dv_sj;
    d.dbias = g->dbias;
    d.dbias_sb = g->dbias_sb;
    d.dbias_sh = g->dbias_sh;
    d.dbias_si = g->dbias_si;
    d.dbias_sj = 1;
    d.accumulate = g->accumulate != 0;
    if ((s = xa_attention_backward(&a, &d))) return s;
    xa_clear_error();
    return XATTN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Backward (FlashAttention-2's algorithm, deterministic)                                   */
/*
 * From the forward's output O and per-row log-sum-exp L:
 *   D[i] = sum_d dO[i,d] O[i,d]
 *   per (query tile, key tile), recomputed: S = scale q k^T + bias (masked), P = exp(S - L)
 *   dV += P^T dO,  dP = dO V^T,  dS = P o (dP - D),  dK += scale dS^T q,  dQ += scale dS K,
 *   dbias += dS (summed over the axes the bias broadcasts over).
 * Five micro-kernel products per tile pair, S, P and dP laid out query-major (rows = queries,
 * so dV and dK are sums over rows), dS transposed once for dQ. Nothing of size I x J is kept.
 *
 * Determinism without atomics: the key tiles of each head are cut into G groups, G chosen from
 * the problem's size alone (enough tasks for 64 threads), and one task owns a (b, h, group):
 * it writes dK and dV of its keys and the dbias entries of its keys, and adds dQ into the
 * group's own accumulator (I, dh), in key order. The G accumulators are summed in group order
 * at the end. The b and h axes a requested dbias broadcasts over are looped inside a task (in
 * order). Extra memory: G accumulators of the size of q, the operands packed once per head.
 * Masked logits carry no gradient. A fully masked row: under -inf fill P = 0 (no gradient at
 * all); under -FLT_MAX fill (lse = -FLT_MAX) P = 1/J on every key, which reaches V only.
 */

typedef struct bwd_ctx {
    att_ctx a; /* the problem, kernels, fill, JP (J rounded up to T) */
    const xa_attn_grad *g;
    int64_t T;          /* tile side (queries and keys), a multiple of mr and nr */
    int64_t DHn, DVn;   /* dh, dv rounded up to nr */
    int64_t IP;         /* I rounded up to T */
    int64_t G, ntk;     /* key-tile groups per head; key tiles per head */
    float *Kt, *Vt;     /* (B, H, JP / T, dh | dv, T) keys and values transposed by key tile */
    float *QtA, *QsA;   /* (B, H, IP / T, dh, T) scale * q^T by query tile; (B, H, IP, DHn) */
    float *dOtA, *dOrA; /* (B, H, IP / T, dv, T) dO^T by query tile; (B, H, IP, DVn) dO rows */
    float *KnA;         /* (B, H, JP, DHn) key rows padded */
    int q_rows, o_rows, k_rows; /* q, dO, k rows read in place (widths multiples of nr) */
    float *dQg;                 /* (B, H, G, IP, DHn) dQ / scale accumulated per key-tile group */
    float *Dr;                  /* (B, H, I): rowsum(dO o O) */
    int loop_b, loop_h;         /* dbias broadcasts over b / h: looped inside a task */
    /* The packed arrays above hold HC heads at a time (a chunk of the B * H, from flat head
     * index bh0): "(B, H, ...)" reads "(HC, ...)", head bh at slot bh - bh0. */
    int64_t HC, bh0;
} bwd_ctx;

/* The slot of flat head bh in the packed arrays of the current chunk. */
static inline int64_t bwd_slot(const bwd_ctx *c, int64_t bh) { return bh - c->bh0; }

typedef struct bwd_scratch {
    float *S, *dP, *dSt;  /* (T, T) */
    const float *Qt;      /* the query tile's block of QtA (dh, T) */
    const float *Qs;      /* its rows: of QsA (scaled), or of q in place (unscaled) */
    int64_t qs_ld, or_ld; /* their row strides */
    const float *dOt;     /* its block of dOtA (dv, T) */
    const float *dOr;     /* its rows: of dOrA, or of dO in place */
    float *dK, *dV;       /* (T, DHn), (T, DVn) */
    float *Ls, *Ps, *Dt;  /* (T) per query: lse (safe), probability scale, D */
} bwd_scratch;

static size_t bwd_scratch_floats(const bwd_ctx *c)
{
    const int64_t T = c->T;
    return (size_t)(3 * T * T + T * c->DHn + T * c->DVn + 3 * T) + 8 * 16;
}

static void bwd_scratch_bind(const bwd_ctx *c, float *base, bwd_scratch *s)
{
    const int64_t T = c->T;
    s->S = take(&base, T * T);
    s->dP = take(&base, T * T);
    s->dSt = take(&base, T * T);
    s->dK = take(&base, T * c->DHn);
    s->dV = take(&base, T * c->DVn);
    s->Ls = take(&base, T);
    s->Ps = take(&base, T);
    s->Dt = take(&base, T);
}

/* Whether a query row of [i0, i0 + it) is fully masked under -FLT_MAX fill (lse = -FLT_MAX). */
static int bwd_has_full_row(const bwd_ctx *c, int64_t b, int64_t h, int64_t i0, int64_t it)
{
    const xa_attn *p = c->a.p;
    if (p->fill != XATTN_FILL_MIN_FLOAT) return 0;
    const float *L = c->g->lse + (b * p->H + h) * p->I + i0;
    for (int64_t col = 0; col < it; col++)
        if (L[col] <= -FLT_MAX) return 1;
    return 0;
}

/* The query tile's operands (pointers into the packed arrays), and per query the safe lse, the
 * probability scale (1/J for a row fully masked under -FLT_MAX fill, whose probabilities are
 * 1/J on every key) and D. */
static void bwd_query_tile(const bwd_ctx *c, bwd_scratch *s, int64_t b, int64_t h, int64_t i0,
                           int64_t it)
{
    const xa_attn *p = c->a.p;
    const int64_t T = c->T, bh = b * p->H + h, sl = bwd_slot(c, bh);
    s->Qt = c->QtA + (sl * c->IP + i0) * p->dh; /* block i0 / T of (dh, T) */
    s->dOt = c->dOtA + (sl * c->IP + i0) * p->dv;
    const xa_attn_grad *g = c->g;
    if (c->q_rows) {
        s->Qs = p->q + b * p->q_sb + h * p->q_sh + i0 * p->q_si;
        s->qs_ld = p->q_si;
    } else {
        s->Qs = c->QsA + (sl * c->IP + i0) * c->DHn;
        s->qs_ld = c->DHn;
    }
    if (c->o_rows) {
        s->dOr = g->dout + b * g->do_sb + h * g->do_sh + i0 * g->do_si;
        s->or_ld = g->do_si;
    } else {
        s->dOr = c->dOrA + (sl * c->IP + i0) * c->DVn;
        s->or_ld = c->DVn;
    }
    const float *L = c->g->lse + bh * p->I + i0;
    const float *D = c->Dr + sl * p->I + i0;
    for (int64_t col = 0; col < T; col++) {
        s->Ps[col] = 1.0f;
        s->Dt[col] = col < it ? D[col] : 0.0f;
        if (col >= it || (p->fill == XATTN_FILL_NEG_INF && L[col] == -INFINITY)) {
            s->Ls[col] = INFINITY; /* no probability mass (padding, or a fully masked row) */
        } else if (p->fill == XATTN_FILL_MIN_FLOAT && L[col] <= -FLT_MAX) {
            s->Ls[col] = -FLT_MAX; /* every logit is -FLT_MAX: exp(S - L) = 1, times 1/J */
            s->Ps[col] = 1.0f / (float)p->J;
        } else {
            s->Ls[col] = L[col];
        }
    }
}

/* Whether key tile [j0, ...) is causally masked for every query of [i0, i0 + it). */
static int bwd_causal_skip(const xa_attn *p, int64_t i0, int64_t it, int64_t j0)
{
    return p->causal && j0 > i0 + it - 1 + p->causal_offset;
}

/* One (b, h, key tile j0): every query tile; dK and dV written, dQ added into dQg (IP, DHn),
 * dbias entries of these keys added to. */
static void bwd_keys(const bwd_ctx *c, bwd_scratch *s, int64_t b, int64_t h, int64_t j0, float *dQg)
{
    const xa_attn *p = c->a.p;
    const xa_attn_grad *g = c->g;
    const xa_kernels *kt = c->a.kt;
    const int64_t mr = kt->mr, nr = kt->nr, T = c->T, jt = XA_MIN(T, p->J - j0);
    const int64_t sl = bwd_slot(c, b * p->H + h);
    const float *Kt = c->Kt + (sl * c->a.JP + j0) * p->dh;
    const float *Vt = c->Vt + (sl * c->a.JP + j0) * p->dv;
    const float *Kn = c->k_rows ? p->k + b * p->k_sb + h * p->k_sh + j0 * p->k_sj
                                : c->KnA + (sl * c->a.JP + j0) * c->DHn;
    const int64_t kn_ld = c->k_rows ? p->k_sj : c->DHn;
    memset(s->dK, 0, sizeof(float) * (size_t)(T * c->DHn));
    memset(s->dV, 0, sizeof(float) * (size_t)(T * c->DVn));
    for (int64_t i0 = 0; i0 < p->I; i0 += T) {
        const int64_t it = XA_MIN(T, p->I - i0);
        const int64_t itm = (it + mr - 1) / mr * mr, itn = (it + nr - 1) / nr * nr;
        /* a query tile that sees none of these keys contributes nothing, unless a row of it
         * is fully masked under -FLT_MAX fill (probabilities 1/J on every key) */
        if (bwd_causal_skip(p, i0, it, j0) && !bwd_has_full_row(c, b, h, i0, it)) continue;
        bwd_query_tile(c, s, b, h, i0, it);
        /* S (queries x keys) = (scale q) k^T, masked; P = exp(S - L) * scale */
        for (int64_t c0 = 0; c0 < itm; c0 += mr)
            for (int64_t r0 = 0; r0 < T; r0 += nr)
                kt->ukr(p->dh, s->Qt + c0, T, Kt + r0, T, s->S + c0 * T + r0, T, 0);
        bias_and_masks(&c->a, b, h, i0, it, j0, jt, s->S, 1, T);
        for (int64_t col = 0; col < itm; col++) {
            float *row = s->S + col * T;
            const float Lc = s->Ls[col];
            for (int64_t r = 0; r < jt; r++) row[r] -= Lc;
            kt->vexp(row, jt);
            if (s->Ps[col] != 1.0f)
                for (int64_t r = 0; r < jt; r++) row[r] *= s->Ps[col];
            for (int64_t r = jt; r < T; r++) row[r] = 0.0f;
        }
        /* dV (keys x dv) += P^T dO */
        for (int64_t r0 = 0; r0 < T; r0 += mr)
            for (int64_t d0 = 0; d0 < c->DVn; d0 += nr)
                kt->ukr(it, s->S + r0, T, s->dOr + d0, s->or_ld, s->dV + r0 * c->DVn + d0, c->DVn,
                        1);
        /* dP (queries x keys) = dO V^T */
        for (int64_t c0 = 0; c0 < itm; c0 += mr)
            for (int64_t r0 = 0; r0 < T; r0 += nr)
                kt->ukr(p->dv, s->dOt + c0, T, Vt + r0, T, s->dP + c0 * T + r0, T, 0);
        /* dS = P o (dP - D) in place of P (masked entries have P = 0; a fully masked row, whose
         * logits do not depend on q, k or the bias, gets 0); dS^T beside it for dQ */
        for (int64_t col = 0; col < it; col++) {
            float *S = s->S + col * T;
            const float *dP = s->dP + col * T;
            const float Dc = s->Dt[col];
            if (s->Ps[col] != 1.0f)
                for (int64_t r = 0; r < jt; r++) S[r] = 0.0f;
            else
                for (int64_t r = 0; r < jt; r++) S[r] = S[r] * (dP[r] - Dc);
        }
        const int64_t itx = XA_MAX(itm, itn); /* columns the dQ product reads */
        for (int64_t r0 = 0; r0 < jt; r0 += 8)
            for (int64_t col = 0; col < itx; col++) {
                const float *src = s->S + col * T + r0;
                const int64_t re = XA_MIN(8, jt - r0);
                for (int64_t r = 0; r < re; r++)
                    s->dSt[(r0 + r) * T + col] = col < it ? src[r] : 0.0f;
            }
        if (g->dbias) {
            float *db = g->dbias + b * g->dbias_sb + h * g->dbias_sh + j0 * g->dbias_sj;
            for (int64_t col = 0; col < it; col++) {
                float *row = db + (i0 + col) * g->dbias_si;
                const float *sc = s->S + col * T;
                if (g->dbias_sj == 1)
                    for (int64_t r = 0; r < jt; r++) row[r] += sc[r];
                else
                    for (int64_t r = 0; r < jt; r++) row[r * g->dbias_sj] += sc[r];
            }
        }
        /* dK (keys x dh) += dS^T (scale q) */
        for (int64_t r0 = 0; r0 < T; r0 += mr)
            for (int64_t d0 = 0; d0 < c->DHn; d0 += nr)
                kt->ukr(it, s->S + r0, T, s->Qs + d0, s->qs_ld, s->dK + r0 * c->DHn + d0, c->DHn,
                        1);
        /* dQ / scale (queries x dh) += dS K */
        for (int64_t c0 = 0; c0 < itm; c0 += mr)
            for (int64_t d0 = 0; d0 < c->DHn; d0 += nr)
                kt->ukr(jt, s->dSt + c0, T, Kn + d0, kn_ld, dQg + (i0 + c0) * c->DHn + d0, c->DHn,
                        1);
    }
    for (int64_t r = 0; r < jt; r++) {
        if (g->dk) {
            float *o = g->dk + b * g->dk_sb + h * g->dk_sh + (j0 + r) * g->dk_sj;
            const float *a = s->dK + r * c->DHn;
            const float ks = c->q_rows ? p->scale : 1.0f; /* q read unscaled */
            for (int64_t d = 0; d < p->dh; d++) {
                const float v = ks * a[d];
                o[d] = g->accumulate ? o[d] + v : v;
            }
        }
        if (g->dv) {
            float *o = g->dv + b * g->dv_sb + h * g->dv_sh + (j0 + r) * g->dv_sj;
            const float *a = s->dV + r * c->DVn;
            for (int64_t d = 0; d < p->dv; d++) o[d] = g->accumulate ? o[d] + a[d] : a[d];
        }
    }
}

/* Key tiles [first, last) of group k of ntk tiles in G groups. */
static void bwd_group(const bwd_ctx *c, int64_t k, int64_t *first, int64_t *last)
{
    *first = k * c->ntk / c->G;
    *last = (k + 1) * c->ntk / c->G;
}

/* One task: w indexes (b, h, group) over the axes not looped, from the chunk's first head. */
static void bwd_task(const bwd_ctx *c, bwd_scratch *s, int64_t w)
{
    const xa_attn *p = c->a.p;
    const xa_attn_grad *g = c->g;
    const int64_t nh = c->loop_h ? 1 : p->H, grp = w % c->G, bh = c->bh0 + w / c->G;
    const int64_t bb = c->loop_b ? 0 : bh / nh, hh = c->loop_h ? 0 : bh % nh;
    const int64_t be = c->loop_b ? p->B : bb + 1, he = c->loop_h ? p->H : hh + 1;
    int64_t t0, t1;
    bwd_group(c, grp, &t0, &t1);
    const int64_t j0 = t0 * c->T, j1 = XA_MIN(p->J, t1 * c->T);
    if (g->dbias && !g->accumulate && j1 > j0) { /* this task's dbias entries start at 0 */
        float *db = g->dbias + bb * g->dbias_sb + hh * g->dbias_sh + j0 * g->dbias_sj;
        for (int64_t i = 0; i < (g->dbias_si ? p->I : 1); i++)
            for (int64_t j = 0; j < j1 - j0; j++) db[i * g->dbias_si + j * g->dbias_sj] = 0.0f;
    }
    for (int64_t b = bb; b < be; b++)
        for (int64_t h = hh; h < he; h++) {
            float *dQg = c->dQg + (bwd_slot(c, b * p->H + h) * c->G + grp) * c->IP * c->DHn;
            memset(dQg, 0, sizeof(float) * (size_t)(c->IP * c->DHn));
            for (int64_t t = t0; t < t1; t++) bwd_keys(c, s, b, h, t * c->T, dQg);
        }
}

/* dq of query rows [i0, i0 + n) of head bh: scale times the groups' sums, in group order. */
static void bwd_dq(const bwd_ctx *c, int64_t bh, int64_t i0, int64_t n)
{
    const xa_attn *p = c->a.p;
    const xa_attn_grad *g = c->g;
    const int64_t b = bh / p->H, h = bh % p->H;
    for (int64_t i = i0; i < i0 + n; i++) {
        float *row = g->dq + b * g->dq_sb + h * g->dq_sh + i * g->dq_si;
        for (int64_t d = 0; d < p->dh; d++) {
            float v = 0.0f;
            for (int64_t k = 0; k < c->G; k++)
                v += c->dQg[((bwd_slot(c, bh) * c->G + k) * c->IP + i) * c->DHn + d];
            v *= p->scale;
            row[d] = g->accumulate ? row[d] + v : v;
        }
    }
}

/* dst (NP / T, d, T) = scale * src (n, d) (row stride sr) transposed tile by tile (T rows at a
 * time), zero past n: each tile's operand is a contiguous (d, T) block, read with row stride T. */
static void bwd_pack_t(const float *src, int64_t sr, int64_t n, int64_t d, int64_t T, int64_t NP,
                       float scale, float *dst)
{
    const int64_t last = n > 0 ? (n - 1) / T * T : 0;
    memset(dst + last * d, 0, sizeof(float) * (size_t)((NP - last) * d));
    /* rows 16 at a time, never across a tile boundary (T need not be a multiple of 16) */
    for (int64_t r0 = 0, re; r0 < n; r0 = re) {
        re = XA_MIN(XA_MIN(n, r0 + 16), (r0 / T + 1) * T);
        float *blk = dst + r0 / T * T * d + r0 % T;
        for (int64_t x = 0; x < d; x++)
            for (int64_t r = r0; r < re; r++) blk[x * T + r - r0] = scale * src[r * sr + x];
    }
}

/* dst (NP, w) = scale * src (n, d) rows padded with zeros to width w and count NP. */
static void bwd_pack_rows(const float *src, int64_t sr, int64_t n, int64_t d, int64_t w, int64_t NP,
                          float scale, float *dst)
{
    memset(dst, 0, sizeof(float) * (size_t)(NP * w));
    for (int64_t r = 0; r < n; r++)
        for (int64_t x = 0; x < d; x++) dst[r * w + x] = scale * src[r * sr + x];
}

/* The per-head operands, packed once: scale * q, dO, k and v transposed by tile, scale * q,
 * dO and k as rows padded to nr; and D = rowsum(dO o O). */
static void bwd_pack_head(const bwd_ctx *c, int64_t bh)
{
    const xa_attn *p = c->a.p;
    const xa_attn_grad *g = c->g;
    const int64_t b = bh / p->H, h = bh % p->H, IP = c->IP, T = c->T, JP = c->a.JP;
    const int64_t sl = bwd_slot(c, bh);
    const float *q = p->q + b * p->q_sb + h * p->q_sh;
    const float *dO = g->dout + b * g->do_sb + h * g->do_sh;
    const float *k = p->k + b * p->k_sb + h * p->k_sh;
    const float *v = p->v + b * p->v_sb + h * p->v_sh;
    const float *o = p->out + b * p->o_sb + h * p->o_sh;
    bwd_pack_t(q, p->q_si, p->I, p->dh, T, IP, p->scale, c->QtA + sl * IP * p->dh);
    bwd_pack_t(dO, g->do_si, p->I, p->dv, T, IP, 1.0f, c->dOtA + sl * IP * p->dv);
    bwd_pack_t(k, p->k_sj, p->J, p->dh, T, JP, 1.0f, c->Kt + sl * JP * p->dh);
    bwd_pack_t(v, p->v_sj, p->J, p->dv, T, JP, 1.0f, c->Vt + sl * JP * p->dv);
    if (!c->q_rows)
        bwd_pack_rows(q, p->q_si, p->I, p->dh, c->DHn, IP, p->scale, c->QsA + sl * IP * c->DHn);
    if (!c->o_rows)
        bwd_pack_rows(dO, g->do_si, p->I, p->dv, c->DVn, IP, 1.0f, c->dOrA + sl * IP * c->DVn);
    if (!c->k_rows)
        bwd_pack_rows(k, p->k_sj, p->J, p->dh, c->DHn, JP, 1.0f, c->KnA + sl * JP * c->DHn);
    for (int64_t i = 0; i < p->I; i++) {
        double acc = 0.0;
        for (int64_t x = 0; x < p->dv; x++)
            acc += (double)o[i * p->o_si + x] * dO[i * g->do_si + x];
        c->Dr[sl * p->I + i] = (float)acc;
    }
}

static xattn_status check_grad(const xa_attn *p, const xa_attn_grad *g)
{
    const char *fn = p->fn ? p->fn : "attention backward";
    if (p->mix || p->stats_only)
        return xa_error(XATTN_ERR_ARG,
                        "%s: head mixing and stats-only passes have no backward "
                        "here",
                        fn);
    if (!g->dout) return xa_error(XATTN_ERR_ARG, "%s: dout (the output's gradient) is NULL", fn);
    const int64_t st[] = {g->do_sb,    g->do_sh,    g->do_si,    g->dq_sb,   g->dq_sh, g->dq_si,
                          g->dk_sb,    g->dk_sh,    g->dk_sj,    g->dv_sb,   g->dv_sh, g->dv_sj,
                          g->dbias_sb, g->dbias_sh, g->dbias_si, g->dbias_sj};
    for (size_t i = 0; i < XA_N(st); i++)
        if (st[i] < 0) return xa_error(XATTN_ERR_ARG, "%s: negative stride", fn);
    return XATTN_OK;
}

/* The backward packs its operands a chunk of heads at a time, about this many bytes. */
int64_t xa_attn_bwd_pack_bytes = (int64_t)32 << 20;

/* Tile side, padded widths, groups, heads per chunk and the layout of the shared scratch
 * (floats needed, or -1 on overflow); with base != NULL the arrays are carved from it. */
static int64_t bwd_layout(bwd_ctx *c, float *base)
{
    const xa_attn *p = c->a.p;
    const xa_kernels *kt = c->a.kt;
    const int64_t mr = kt->mr, nr = kt->nr;
    int64_t l = mr;
    while (l % nr) l += mr; /* lcm(mr, nr) */
    c->T = (64 + l - 1) / l * l;
    c->DHn = (p->dh + nr - 1) / nr * nr;
    c->DVn = (p->dv + nr - 1) / nr * nr;
    c->a.JP = XA_MAX((p->J + c->T - 1) / c->T * c->T, c->T);
    c->IP = XA_MAX((p->I + c->T - 1) / c->T * c->T, c->T);
    c->ntk = (p->J + c->T - 1) / c->T;
    const int64_t nbh = (c->loop_b ? 1 : p->B) * (c->loop_h ? 1 : p->H);
    /* groups from the problem, never the thread count: at most 2 accumulators (each the size of
     * q); the tasks are the (b, h) pairs times the groups */
    c->G = XA_MAX(1, XA_MIN(XA_MIN(c->ntk, 2), (64 + nbh - 1) / nbh));
    /* rows read in place where a row's width is a multiple of the micro-tile */
    c->q_rows = p->dh % nr == 0 && p->q_si == p->dh,
    c->o_rows = p->dv % nr == 0 && c->g->do_si == p->dv,
    c->k_rows = p->dh % nr == 0 && p->k_sj == p->dh;
    const int64_t JP = c->a.JP, IP = c->IP;
    const int64_t per_head =
        JP * (p->dh + p->dv + (c->k_rows ? 0 : c->DHn)) +
        IP * (p->dh + p->dv + (c->q_rows ? 0 : c->DHn) + (c->o_rows ? 0 : c->DVn) + c->G * c->DHn) +
        2 * p->I;
    /* heads per chunk: all of them when a task loops over b or h (dbias broadcast), else as
     * many as fit BWD_PACK_BYTES, at least one per thread (the result does not depend on it) */
    c->HC = p->B * p->H;
    if (!c->loop_b && !c->loop_h) {
        const int64_t fit = xa_attn_bwd_pack_bytes / (int64_t)sizeof(float) / (per_head + 16);
        c->HC = XA_MIN(c->HC, XA_MAX(XA_MAX(fit, 1), (int64_t)xa_threads()));
    }
    const int64_t BH = c->HC;
    int64_t total;
    if (xa_mul_ok(BH, per_head + 16, &total) || xa_mul_ok(total, (int64_t)sizeof(float), &l))
        return -1;
    if (base) {
        c->Kt = take(&base, BH * JP * p->dh);
        c->Vt = take(&base, BH * JP * p->dv);
        c->KnA = c->k_rows ? NULL : take(&base, BH * JP * c->DHn);
        c->QtA = take(&base, BH * IP * p->dh);
        c->dOtA = take(&base, BH * IP * p->dv);
        c->QsA = c->q_rows ? NULL : take(&base, BH * IP * c->DHn);
        c->dOrA = c->o_rows ? NULL : take(&base, BH * IP * c->DVn);
        c->dQg = take(&base, BH * c->G * IP * c->DHn);
        c->Dr = take(&base, BH * p->I);
    }
    return total + 16 * 16;
}

xattn_status xa_attention_backward(const xa_attn *p, const xa_attn_grad *g0)
{
    xattn_status st = check_attn(p);
    if (!st) st = check_grad(p, g0);
    if (st) return st;
    if (p->B == 0 || p->H == 0) return XATTN_OK;
    const char *fn = p->fn ? p->fn : "attention backward";
    xa_attn_grad g = *g0;
    bwd_ctx c;
    memset(&c, 0, sizeof c);
    att_setup(&c.a, p);
    c.g = &g;
    c.a.direct = 0;
    c.loop_b = g.dbias && g.dbias_sb == 0 && p->B > 1;
    c.loop_h = g.dbias && g.dbias_sh == 0 && p->H > 1;
    const int64_t need = bwd_layout(&c, NULL), BH = p->B * p->H;
    if (need < 0) return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow", fn);
    xa_ws *sh = xa_ws_get(sizeof(float) * (size_t)(need + BH * p->I));
    if (!sh) return XATTN_ERR_NOMEM;
    float *lse_own = (float *)xa_ws_data(sh) + need;
    bwd_layout(&c, xa_ws_data(sh));
    if (!g.lse) { /* the forward's statistics, recomputed */
        xa_attn s = *p;
        s.stats_only = 1;
        s.lse = lse_own;
        s.stat_m = s.stat_l = NULL;
        s.probs = NULL;
        s.out = NULL;
        if ((st = xa_attention(&s))) {
            xa_ws_put(sh);
            return st;
        }
        g.lse = lse_own;
    }
    const size_t sfl = bwd_scratch_floats(&c);
    const int64_t nbh = (c.loop_b ? 1 : p->B) * (c.loop_h ? 1 : p->H);
    const int64_t RB = 64, nrb = (p->I + RB - 1) / RB;
    int failed = 0;
    const xattn_ctx *ctx = xa_ctx_cur();
#ifdef _OPENMP
#pragma omp parallel num_threads(xa_threads())
#endif
    {
        xa_ws *mem_ws = xa_ws_get_from(ctx, sizeof(float) * sfl);
        bwd_scratch s;
        memset(&s, 0, sizeof s);
        if (mem_ws)
            bwd_scratch_bind(&c, xa_ws_data(mem_ws), &s);
        else {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            failed = 1;
        }
        /* chunk by chunk of heads (one chunk of all the tasks when a task loops over b or h) */
        for (int64_t bh0 = 0; bh0 < BH; bh0 += c.HC) {
            bwd_ctx cc = c;
            cc.bh0 = bh0;
            const int64_t nc = XA_MIN(c.HC, BH - bh0), ntask = (nc == BH ? nbh : nc) * c.G;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t w = 0; w < nc; w++) bwd_pack_head(&cc, bh0 + w);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
            for (int64_t w = 0; w < ntask; w++)
                if (mem_ws) bwd_task(&cc, &s, w);
            if (g.dq) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
                for (int64_t w = 0; w < nc * nrb; w++)
                    bwd_dq(&cc, bh0 + w / nrb, w % nrb * RB, XA_MIN(RB, p->I - w % nrb * RB));
            }
        }
        xa_ws_put(mem_ws);
    }
    xa_ws_put(sh);
    if (failed) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory for scratch", fn);
    return XATTN_OK;
}
