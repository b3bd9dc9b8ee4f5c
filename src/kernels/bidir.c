/*
 * Bidirectional attention without the I x J matrices.
 *
 * One similarity sim[i, j] = scale <qk_i, cqk_j> (+ bias) is normalised both ways. Each
 * direction is an attention problem of its own over the same logits:
 *   x side:        queries qk (I), keys cqk (J), values cv, softmax over j  -> out
 *   context side:  queries cqk (J), keys qk (I), values v,  softmax over i  -> cout
 * the second one reading the bias and writing the probabilities transposed (key stride J).
 * Masks are a keep vector per side: a masked x position masks a query row on the x side and a
 * key on the context side, and conversely; masked logits are -FLT_MAX, so fully masked rows and
 * columns become uniform averages as in the reference package.
 *
 * Without talking heads each side is one fused online-softmax pass. With talking heads the
 * softmax of every head must be final before heads are mixed, so each side first gathers its
 * row statistics (max and sum per query, O(B*H*(I+J)) floats), then recomputes the logit tiles,
 * normalises them, mixes the heads tile by tile and multiplies them into the values.
 */
#include "kernels.h"
#include "../base/base.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* the x-side problem (transposed = 0) or the context-side problem (transposed = 1) */
static void side(const xa_bidir *p, int transposed, xa_attn *a)
{
    memset(a, 0, sizeof *a);
    a->fn = "bidirectional attention";
    a->B = p->B;
    a->H = p->H;
    a->dh = a->dv = p->dh;
    a->scale = p->scale;
    a->fill = XATTN_FILL_MIN_FLOAT;
    const int64_t HIJ = p->H * p->I * p->J, IJ = p->I * p->J;
    if (!transposed) {
        a->I = p->I;
        a->J = p->J;
        a->q = p->qk;
        a->q_sb = p->qk_sb;
        a->q_sh = p->qk_sh;
        a->q_si = p->qk_si;
        a->k = p->cqk;
        a->k_sb = p->cqk_sb;
        a->k_sh = p->cqk_sh;
        a->k_sj = p->cqk_sj;
        a->v = p->cv;
        a->v_sb = p->cv_sb;
        a->v_sh = p->cv_sh;
        a->v_sj = p->cv_sj;
        a->out = p->out;
        a->o_sb = p->o_sb;
        a->o_sh = p->o_sh;
        a->o_si = p->o_si;
        a->qkeep = p->mask;
        a->qkeep_sb = p->mask_sb;
        a->kkeep = p->cmask;
        a->kkeep_sb = p->cmask_sb;
        a->bias_si = p->J;
        a->bias_sj = 1;
        a->probs = p->attn;
        a->lse = p->lse;
        a->p_si = p->J;
        a->p_sj = 1;
        a->mix = p->talk;
    } else {
        a->I = p->J;
        a->J = p->I;
        a->q = p->cqk;
        a->q_sb = p->cqk_sb;
        a->q_sh = p->cqk_sh;
        a->q_si = p->cqk_sj;
        a->k = p->qk;
        a->k_sb = p->qk_sb;
        a->k_sh = p->qk_sh;
        a->k_sj = p->qk_si;
        a->v = p->v;
        a->v_sb = p->v_sb;
        a->v_sh = p->v_sh;
        a->v_sj = p->v_si;
        a->out = p->cout;
        a->o_sb = p->co_sb;
        a->o_sh = p->co_sh;
        a->o_si = p->co_sj;
        a->qkeep = p->cmask;
        a->qkeep_sb = p->cmask_sb;
        a->kkeep = p->mask;
        a->kkeep_sb = p->mask_sb;
        a->bias_si = 1;
        a->bias_sj = p->J;
        a->probs = p->cattn;
        a->lse = p->clse;
        a->p_si = 1;
        a->p_sj = p->J;
        a->mix = p->ctalk;
    }
    a->bias = p->bias;
    a->bias_sb = p->bias_sb;
    a->bias_sh = p->bias_sh;
    a->p_sb = HIJ;
    a->p_sh = IJ;
}

/* one side: a fused pass, or statistics then the mixing pass */
static xattn_status run_side(xa_attn *a, float *stats)
{
    if (!a->mix) return xa_attention(a);
    const int64_t n = a->B * a->H * a->I;
    xa_attn st = *a;
    st.stats_only = 1;
    st.mix = NULL;
    st.probs = NULL;
    st.stat_m = stats;
    a->lse = NULL; /* written by the statistics pass */
    st.stat_l = stats + n;
    xattn_status s = xa_attention(&st);
    if (s) return s;
    a->row_m = stats;
    a->row_l = stats + n;
    return xa_attention(a);
}

xattn_status xa_bidir_attention(const xa_bidir *p)
{
    if (!p) return xa_error(XATTN_ERR_ARG, "bidirectional attention: params is NULL");
    if (p->B < 0 || p->H < 1 || p->I < 1 || p->J < 1 || p->dh < 1)
        return xa_error(XATTN_ERR_ARG,
                        "bidirectional attention: bad sizes (B=%lld H=%lld I=%lld J=%lld dh=%lld)",
                        (long long)p->B, (long long)p->H, (long long)p->I, (long long)p->J,
                        (long long)p->dh);
    if ((p->talk == NULL) != (p->ctalk == NULL))
        return xa_error(XATTN_ERR_ARG, "bidirectional attention: talking heads need both weights");
    if (!p->qk || !p->cqk || !p->v || !p->cv || !p->out || !p->cout)
        return xa_error(XATTN_ERR_ARG, "bidirectional attention: NULL tensor");
    if (p->B == 0) return XATTN_OK;
    float *stats = NULL;
    if (p->talk) {
        int64_t n;
        if (xa_mul_ok(p->B * p->H, XA_MAX(p->I, p->J), &n) || xa_mul_ok(n, 2, &n))
            return xa_error(XATTN_ERR_NOMEM, "bidirectional attention: sizes overflow");
        stats = xa_alloc(sizeof(float) * (size_t)n);
        if (!stats) return XATTN_ERR_NOMEM;
    }
    xa_attn a;
    side(p, 0, &a);
    xattn_status s = run_side(&a, stats);
    if (s == XATTN_OK) {
        side(p, 1, &a);
        s = run_side(&a, stats);
    }
    xa_free(stats);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Backward                                                                                 */
/*
 * Both softmaxes read one similarity S, so its gradient is the sum of the two sides':
 *   dS = A o (dA - rowsum(dA o A)) + C o (dC - colsum(dC o C))     (0 where masked)
 * with A = softmax_j(S), C = softmax_i(S) and dA, dC the gradients of the maps. Without talking
 * heads each side is an attention problem of its own (the context side transposed), and its
 * backward is the fused attention backward: the x side gives dqk, dcqk and dcv, the context side
 * adds its dcqk and dqk and gives dv; both add into the bias gradient, the second transposed.
 * Nothing of size I x J is kept; the row and column log-sum-exps are recomputed.
 */

/* Rows (n, d) of a strided per-head tensor set to zero. */
static void zero_heads(float *x, int64_t B, int64_t H, int64_t n, int64_t d, int64_t sb, int64_t sh,
                       int64_t sr)
{
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t r = 0; r < n; r++)
                memset(x + b * sb + h * sh + r * sr, 0, sizeof(float) * (size_t)d);
}

/*
 * With talking heads the maps are mixed across heads before the values: out[g] = A'[g] cv[g],
 * A'[g] = sum_h T[g][h] A[h] (likewise C' with the context's weight). Then
 *   dA'[g] = dout[g] cv[g]^T, dA[h] = sum_g T[g][h] dA'[g], dT[g][h] = sum dA'[g] o A[h],
 *   dcv[g] = A'[g]^T dout[g]   (and dC'[g] = v[g] dcout[g]^T, dv[g] = C'[g] dcout[g], ...)
 * and rowsum(dA o A) has no closed form, so the backward takes two passes over the tiles, all
 * heads at once: the first gathers rowsum(dA o A), colsum(dC o C) and the weights' gradients,
 * the second the gradients of qk, cqk, v, cv and the bias. A task owns a (b, group of key
 * tiles) and writes what belongs to its keys; what belongs to queries (dqk, dv, the row sums)
 * goes into the group's own accumulator, summed over groups in order at the end, so results do
 * not depend on the thread count. Tiles are multiplied by xa_sgemm on the calling thread.
 */
#define MB_T 64

typedef struct mb_ctx {
    const xa_bidir *p;
    const xa_bidir_grad *g;
    const xa_kernels *kt;
    int64_t G, ntk, nunit;
    int loop_b;
    float *Lr, *Lc;    /* (B, H, I), (B, H, J) log-sum-exps */
    float *Dr, *Dc;    /* (B, H, I) summed row terms, (B, H, J) column terms */
    float *Drg;        /* (G, B, H, I) row terms per group */
    float *dqkg, *dvg; /* (G, B, H, I, dh) per group */
    float *dTp, *dTcp; /* (nunit, H, H) per task */
} mb_ctx;

typedef struct mb_tile {
    float *S;   /* (H, T, T): logits, then A, then dS */
    float *C;   /* (H, T, T) */
    float *dA;  /* (H, T, T): dA' then dA */
    float *dC;  /* (H, T, T) */
    float *M;   /* (T, T) a mixed map */
    float *acc; /* (T, dh) */
} mb_tile;

/* The logits of all heads for tile (b, i0.., j0..), the maps A and C, dA' and dC'. */
static void mb_maps(const mb_ctx *c, mb_tile *t, int64_t b, int64_t i0, int64_t it, int64_t j0,
                    int64_t jt)
{
    const xa_bidir *p = c->p;
    const xa_bidir_grad *g = c->g;
    const int64_t T = MB_T, H = p->H;
    for (int64_t h = 0; h < H; h++) {
        float *S = t->S + h * T * T, *C = t->C + h * T * T;
        xa_sgemm(c->kt, 0, 1, it, jt, p->dh, p->scale,
                 p->qk + b * p->qk_sb + h * p->qk_sh + i0 * p->qk_si, p->qk_si,
                 p->cqk + b * p->cqk_sb + h * p->cqk_sh + j0 * p->cqk_sj, p->cqk_sj, 0.0f, S, T);
        const float *Lr = c->Lr + (b * H + h) * p->I + i0, *Lc = c->Lc + (b * H + h) * p->J + j0;
        const float *bias = p->bias ? p->bias + b * p->bias_sb + h * p->bias_sh : NULL;
        for (int64_t i = 0; i < it; i++) {
            float *sr = S + i * T, *cr = C + i * T;
            const int qk = !p->mask || p->mask[b * p->mask_sb + i0 + i];
            for (int64_t j = 0; j < jt; j++) {
                float v = sr[j] + (bias ? bias[(i0 + i) * p->J + j0 + j] : 0.0f);
                if (!qk || (p->cmask && !p->cmask[b * p->cmask_sb + j0 + j])) v = -FLT_MAX;
                /* a fully masked row / column (lse -FLT_MAX): uniform over all J / I */
                sr[j] = Lr[i] <= -FLT_MAX ? 1.0f / (float)p->J : expf(v - Lr[i]);
                cr[j] = Lc[j] <= -FLT_MAX ? 1.0f / (float)p->I : expf(v - Lc[j]);
            }
        }
        xa_sgemm(c->kt, 0, 1, it, jt, p->dh, 1.0f,
                 g->dout + b * g->do_sb + h * g->do_sh + i0 * g->do_si, g->do_si,
                 p->cv + b * p->cv_sb + h * p->cv_sh + j0 * p->cv_sj, p->cv_sj, 0.0f,
                 t->dA + h * T * T, T);
        xa_sgemm(c->kt, 0, 1, it, jt, p->dh, 1.0f, p->v + b * p->v_sb + h * p->v_sh + i0 * p->v_si,
                 p->v_si, g->dcout + b * g->dco_sb + h * g->dco_sh + j0 * g->dco_sj, g->dco_sj,
                 0.0f, t->dC + h * T * T, T);
    }
}

/* out (T, T) = sum_h w[h * ws] * in[h] over the (it, jt) part. */
static void mb_mix(const mb_ctx *c, const float *in, const float *w, int64_t ws, int64_t it,
                   int64_t jt, float *out)
{
    const int64_t T = MB_T;
    for (int64_t i = 0; i < it; i++) memset(out + i * T, 0, sizeof(float) * (size_t)jt);
    for (int64_t h = 0; h < c->p->H; h++)
        if (w[h * ws] != 0.0f)
            for (int64_t i = 0; i < it; i++)
                c->kt->axpy(w[h * ws], in + h * T * T + i * T, out + i * T, jt);
}

/* dA[h] = sum_g T[g][h] dA'[g] for every h (dA' kept in dA, the result written over it). */
static void mb_unmix(const mb_ctx *c, float *dAp, const float *w, float *tmp, int64_t it,
                     int64_t jt)
{
    const int64_t T = MB_T, H = c->p->H;
    for (int64_t h = 0; h < H; h++) mb_mix(c, dAp, w + h, H, it, jt, tmp + h * T * T);
    for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < it; i++)
            memcpy(dAp + h * T * T + i * T, tmp + h * T * T + i * T, sizeof(float) * (size_t)jt);
}

/* Pass 1 over one tile: weights' gradients, row and column terms. */
static void mb_pass1(const mb_ctx *c, mb_tile *t, float *tmp, int64_t unit, int64_t grp, int64_t b,
                     int64_t i0, int64_t it, int64_t j0, int64_t jt)
{
    const xa_bidir *p = c->p;
    const int64_t T = MB_T, H = p->H;
    float *dT = c->dTp + unit * H * H, *dTc = c->dTcp + unit * H * H;
    for (int64_t gg = 0; gg < H; gg++)
        for (int64_t h = 0; h < H; h++) {
            double sa = 0.0, sc = 0.0;
            for (int64_t i = 0; i < it; i++) {
                const float *a = t->dA + gg * T * T + i * T, *pa = t->S + h * T * T + i * T;
                const float *cc = t->dC + gg * T * T + i * T, *pc = t->C + h * T * T + i * T;
                for (int64_t j = 0; j < jt; j++) {
                    sa += a[j] * pa[j];
                    sc += cc[j] * pc[j];
                }
            }
            dT[gg * H + h] += (float)sa;
            dTc[gg * H + h] += (float)sc;
        }
    mb_unmix(c, t->dA, p->talk, tmp, it, jt);
    mb_unmix(c, t->dC, p->ctalk, tmp, it, jt);
    for (int64_t h = 0; h < H; h++) {
        float *Dr = c->Drg + ((grp * p->B + b) * H + h) * p->I + i0;
        float *Dc = c->Dc + (b * H + h) * p->J + j0;
        for (int64_t i = 0; i < it; i++) {
            const float *a = t->dA + h * T * T + i * T, *pa = t->S + h * T * T + i * T;
            const float *cc = t->dC + h * T * T + i * T, *pc = t->C + h * T * T + i * T;
            float s = 0.0f;
            for (int64_t j = 0; j < jt; j++) {
                s += a[j] * pa[j];
                Dc[j] += cc[j] * pc[j];
            }
            Dr[i] += s;
        }
    }
}

/* Pass 2 over one tile: dcv, dv, then dS and dqk, dcqk, dbias. */
static void mb_pass2(const mb_ctx *c, mb_tile *t, float *tmp, int64_t grp, int64_t b, int64_t i0,
                     int64_t it, int64_t j0, int64_t jt)
{
    const xa_bidir *p = c->p;
    const xa_bidir_grad *g = c->g;
    const int64_t T = MB_T, H = p->H, dh = p->dh;
    for (int64_t gg = 0; gg < H; gg++) {
        /* dcv[g] += A'[g]^T dout[g];  dv[g] += C'[g] dcout[g] */
        mb_mix(c, t->S, p->talk + gg * H, 1, it, jt, t->M);
        if (g->dcv)
            xa_sgemm(c->kt, 1, 0, jt, dh, it, 1.0f, t->M, T,
                     g->dout + b * g->do_sb + gg * g->do_sh + i0 * g->do_si, g->do_si, 1.0f,
                     g->dcv + b * g->dcv_sb + gg * g->dcv_sh + j0 * g->dcv_sj, g->dcv_sj);
        mb_mix(c, t->C, p->ctalk + gg * H, 1, it, jt, t->M);
        if (g->dv)
            xa_sgemm(c->kt, 0, 0, it, dh, jt, 1.0f, t->M, T,
                     g->dcout + b * g->dco_sb + gg * g->dco_sh + j0 * g->dco_sj, g->dco_sj, 1.0f,
                     c->dvg + (((grp * p->B + b) * H + gg) * p->I + i0) * dh, dh);
    }
    mb_unmix(c, t->dA, p->talk, tmp, it, jt);
    mb_unmix(c, t->dC, p->ctalk, tmp, it, jt);
    for (int64_t h = 0; h < H; h++) {
        float *dS = t->S + h * T * T;
        const float *Dr = c->Dr + (b * H + h) * p->I + i0, *Dc = c->Dc + (b * H + h) * p->J + j0;
        for (int64_t i = 0; i < it; i++) {
            float *a = dS + i * T;
            const float *da = t->dA + h * T * T + i * T, *cc = t->C + h * T * T + i * T,
                        *dc = t->dC + h * T * T + i * T;
            const int qk = !p->mask || p->mask[b * p->mask_sb + i0 + i];
            for (int64_t j = 0; j < jt; j++) {
                const int keep = qk && (!p->cmask || p->cmask[b * p->cmask_sb + j0 + j]);
                a[j] = keep ? a[j] * (da[j] - Dr[i]) + cc[j] * (dc[j] - Dc[j]) : 0.0f;
            }
        }
        if (g->dbias) {
            float *db = g->dbias + b * g->dbias_sb + h * g->dbias_sh;
            for (int64_t i = 0; i < it; i++)
                for (int64_t j = 0; j < jt; j++) db[(i0 + i) * p->J + j0 + j] += dS[i * T + j];
        }
        if (g->dqk)
            xa_sgemm(c->kt, 0, 0, it, dh, jt, p->scale, dS, T,
                     p->cqk + b * p->cqk_sb + h * p->cqk_sh + j0 * p->cqk_sj, p->cqk_sj, 1.0f,
                     c->dqkg + (((grp * p->B + b) * H + h) * p->I + i0) * dh, dh);
        if (g->dcqk)
            xa_sgemm(c->kt, 1, 0, jt, dh, it, p->scale, dS, T,
                     p->qk + b * p->qk_sb + h * p->qk_sh + i0 * p->qk_si, p->qk_si, 1.0f,
                     g->dcqk + b * g->dcqk_sb + h * g->dcqk_sh + j0 * g->dcqk_sj, g->dcqk_sj);
    }
}

/* One task of a pass: (b, group) over every key tile of the group and every query tile. */
static void mb_task(const mb_ctx *c, mb_tile *t, float *tmp, int pass, int64_t w)
{
    const xa_bidir *p = c->p;
    const int64_t grp = w % c->G, b0 = c->loop_b ? 0 : w / c->G, b1 = c->loop_b ? p->B : b0 + 1;
    const int64_t k0 = grp * c->ntk / c->G, k1 = (grp + 1) * c->ntk / c->G;
    for (int64_t b = b0; b < b1; b++)
        for (int64_t k = k0; k < k1; k++) {
            const int64_t j0 = k * MB_T, jt = XA_MIN(MB_T, p->J - j0);
            for (int64_t i0 = 0; i0 < p->I; i0 += MB_T) {
                const int64_t it = XA_MIN(MB_T, p->I - i0);
                mb_maps(c, t, b, i0, it, j0, jt);
                if (pass == 1)
                    mb_pass1(c, t, tmp, w, grp, b, i0, it, j0, jt);
                else
                    mb_pass2(c, t, tmp, grp, b, i0, it, j0, jt);
            }
        }
}

/* lse of each side (stats-only passes of the forward's problems). */
static xattn_status mb_lse(const xa_bidir *p, float *Lr, float *Lc)
{
    xa_attn a;
    for (int sd = 0; sd < 2; sd++) {
        side(p, sd, &a);
        a.mix = NULL;
        a.probs = NULL;
        a.out = NULL;
        a.stats_only = 1;
        a.lse = sd ? Lc : Lr;
        xattn_status s = xa_attention(&a);
        if (s) return s;
    }
    return XATTN_OK;
}

static xattn_status xa_bidir_backward_mixed(const xa_bidir *p, const xa_bidir_grad *g)
{
    static const char fn[] = "bidirectional attention backward";
    if (p->B == 0) return XATTN_OK;
    mb_ctx c;
    memset(&c, 0, sizeof c);
    c.p = p, c.g = g, c.kt = xa_kern();
    const int64_t B = p->B, H = p->H, I = p->I, J = p->J, dh = p->dh, T = MB_T;
    c.ntk = (J + T - 1) / T;
    c.loop_b = g->dbias && g->dbias_sb == 0 && B > 1;
    c.G = XA_MAX(1, XA_MIN(c.ntk, c.loop_b ? 8 : (8 + B - 1) / B)); /* from the problem only */
    c.nunit = (c.loop_b ? 1 : B) * c.G;
    const int64_t BHI = B * H * I, BHJ = B * H * J;
    int64_t n;
    if (xa_mul_ok(BHI, c.G * (2 * dh + 1) + 2, &n) ||
        xa_mul_ok(n + 2 * BHJ + 2 * c.nunit * H * H, 4, &n))
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow", fn);
    float *mem = xa_alloc(sizeof(float) * (size_t)(n / 4 + 64));
    if (!mem) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    memset(mem, 0, sizeof(float) * (size_t)(n / 4 + 64));
    float *q = mem;
    c.Lr = q, q += BHI;
    c.Lc = q, q += BHJ;
    c.Dr = q, q += BHI;
    c.Dc = q, q += BHJ;
    c.Drg = q, q += c.G * BHI;
    c.dqkg = q, q += c.G * BHI * dh;
    c.dvg = q, q += c.G * BHI * dh;
    c.dTp = q, q += c.nunit * H * H;
    c.dTcp = q;
    xattn_status s = XATTN_OK;
    if (g->lse && g->clse) { /* the forward's */
        memcpy(c.Lr, g->lse, sizeof(float) * (size_t)BHI);
        memcpy(c.Lc, g->clse, sizeof(float) * (size_t)BHJ);
    } else {
        s = mb_lse(p, c.Lr, c.Lc);
    }
    /* the key-owned gradients start at zero unless accumulating */
    if (!s && !g->accumulate) {
        if (g->dcqk) zero_heads(g->dcqk, B, H, J, dh, g->dcqk_sb, g->dcqk_sh, g->dcqk_sj);
        if (g->dcv) zero_heads(g->dcv, B, H, J, dh, g->dcv_sb, g->dcv_sh, g->dcv_sj);
        if (g->dbias)
            for (int64_t b = 0; b < (g->dbias_sb ? B : 1); b++)
                for (int64_t h = 0; h < (g->dbias_sh ? H : 1); h++)
                    memset(g->dbias + b * g->dbias_sb + h * g->dbias_sh, 0,
                           sizeof(float) * (size_t)(I * J));
    }
    int failed = 0;
    for (int pass = 1; pass <= 2 && !s; pass++) {
#ifdef _OPENMP
#pragma omp parallel num_threads(xa_threads())
#endif
        {
            const size_t tl = (size_t)(4 * H * T * T + T * T + T * dh + H * T * T);
            float *tm = xa_alloc(sizeof(float) * tl);
            mb_tile t;
            memset(&t, 0, sizeof t);
            if (tm) {
                t.S = tm, t.C = tm + H * T * T, t.dA = tm + 2 * H * T * T,
                t.dC = tm + 3 * H * T * T;
                t.M = tm + 4 * H * T * T, t.acc = t.M + T * T;
            } else {
#ifdef _OPENMP
#pragma omp atomic write
#endif
                failed = 1;
            }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
            for (int64_t w = 0; w < c.nunit; w++)
                if (tm) mb_task(&c, &t, t.acc + T * dh, pass, w);
            xa_free(tm);
        }
        if (failed) s = xa_error(XATTN_ERR_NOMEM, "%s: out of memory for tiles", fn);
        if (!s && pass == 1) /* the row terms: groups summed in order */
            for (int64_t x = 0; x < BHI; x++) {
                float v = 0.0f;
                for (int64_t k = 0; k < c.G; k++) v += c.Drg[k * BHI + x];
                c.Dr[x] = v;
            }
    }
    if (!s) {
        for (int64_t b = 0; b < B; b++) /* query-owned gradients: groups summed in order */
            for (int64_t h = 0; h < H; h++)
                for (int64_t i = 0; i < I; i++) {
                    const int64_t x = ((b * H + h) * I + i) * dh;
                    float *oq =
                        g->dqk ? g->dqk + b * g->dqk_sb + h * g->dqk_sh + i * g->dqk_si : NULL;
                    float *ov = g->dv ? g->dv + b * g->dv_sb + h * g->dv_sh + i * g->dv_si : NULL;
                    for (int64_t d = 0; d < dh; d++) {
                        float sq = 0.0f, sv = 0.0f;
                        for (int64_t k = 0; k < c.G; k++) {
                            sq += c.dqkg[k * BHI * dh + x + d];
                            sv += c.dvg[k * BHI * dh + x + d];
                        }
                        if (oq) oq[d] = g->accumulate ? oq[d] + sq : sq;
                        if (ov) ov[d] = g->accumulate ? ov[d] + sv : sv;
                    }
                }
        for (int64_t x = 0; x < H * H; x++) { /* the weights: tasks summed in order */
            float st = 0.0f, sc = 0.0f;
            for (int64_t u = 0; u < c.nunit; u++) {
                st += c.dTp[u * H * H + x];
                sc += c.dTcp[u * H * H + x];
            }
            if (g->dtalk) g->dtalk[x] = g->accumulate ? g->dtalk[x] + st : st;
            if (g->dctalk) g->dctalk[x] = g->accumulate ? g->dctalk[x] + sc : sc;
        }
    }
    xa_free(mem);
    return s;
}

xattn_status xa_bidir_backward(const xa_bidir *p, const xa_bidir_grad *g)
{
    static const char fn[] = "bidirectional attention backward";
    if (!p || !g) return xa_error(XATTN_ERR_ARG, "%s: params or grads is NULL", fn);
    if (p->B < 0 || p->H < 1 || p->I < 1 || p->J < 1 || p->dh < 1)
        return xa_error(XATTN_ERR_ARG, "%s: bad sizes (B=%lld H=%lld I=%lld J=%lld dh=%lld)", fn,
                        (long long)p->B, (long long)p->H, (long long)p->I, (long long)p->J,
                        (long long)p->dh);
    if (!p->qk || !p->cqk || !p->v || !p->cv || !p->out || !p->cout || !g->dout || !g->dcout)
        return xa_error(XATTN_ERR_ARG,
                        "%s: NULL tensor (the forward's inputs and outputs and "
                        "both outputs' gradients are needed)",
                        fn);
    if ((p->talk == NULL) != (p->ctalk == NULL))
        return xa_error(XATTN_ERR_ARG, "%s: talking heads need both weights", fn);
    if (p->talk) return xa_bidir_backward_mixed(p, g);
    if (p->B == 0) return XATTN_OK;
    xa_attn a;
    xa_attn_grad d;
    /* the x side: softmax over j of S, values cv */
    side(p, 0, &a);
    a.fn = fn;
    a.probs = NULL;
    memset(&d, 0, sizeof d);
    d.dout = g->dout, d.do_sb = g->do_sb, d.do_sh = g->do_sh, d.do_si = g->do_si;
    d.dq = g->dqk, d.dq_sb = g->dqk_sb, d.dq_sh = g->dqk_sh, d.dq_si = g->dqk_si;
    d.dk = g->dcqk, d.dk_sb = g->dcqk_sb, d.dk_sh = g->dcqk_sh, d.dk_sj = g->dcqk_sj;
    d.dv = g->dcv, d.dv_sb = g->dcv_sb, d.dv_sh = g->dcv_sh, d.dv_sj = g->dcv_sj;
    d.dbias = g->dbias, d.dbias_sb = g->dbias_sb, d.dbias_sh = g->dbias_sh;
    d.dbias_si = p->J, d.dbias_sj = 1;
    d.lse = g->lse;
    d.accumulate = g->accumulate;
    xattn_status s = xa_attention_backward(&a, &d);
    if (s) return s;
    /* the context side: softmax over i of the same S (transposed), values v; what it shares
     * with the x side is added */
    side(p, 1, &a);
    a.fn = fn;
    a.probs = NULL;
    if (g->dv && !g->accumulate)
        zero_heads(g->dv, p->B, p->H, p->I, p->dh, g->dv_sb, g->dv_sh, g->dv_si);
    memset(&d, 0, sizeof d);
    d.dout = g->dcout, d.do_sb = g->dco_sb, d.do_sh = g->dco_sh, d.do_si = g->dco_sj;
    d.dq = g->dcqk, d.dq_sb = g->dcqk_sb, d.dq_sh = g->dcqk_sh, d.dq_si = g->dcqk_sj;
    d.dk = g->dqk, d.dk_sb = g->dqk_sb, d.dk_sh = g->dqk_sh, d.dk_sj = g->dqk_si;
    d.dv = g->dv, d.dv_sb = g->dv_sb, d.dv_sh = g->dv_sh, d.dv_sj = g->dv_si;
    d.dbias = g->dbias, d.dbias_sb = g->dbias_sb, d.dbias_sh = g->dbias_sh;
    d.dbias_si = 1, d.dbias_sj = p->J;
    d.lse = g->clse;
    d.accumulate = 1;
    return xa_attention_backward(&a, &d);
}
