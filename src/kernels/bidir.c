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
#include "bidir_tiles.h"
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
    a->bf16 = p->bf16;
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
 * With talking heads the maps are mixed across heads before the values, and rowsum(dA o A) has
 * no closed form: the backward takes two passes over the tiles, all heads at once, through the
 * tile pipeline of bidir_tiles.h with the whole context as its one block of keys.
 */

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
    const int64_t B = p->B, H = p->H, I = p->I, J = p->J, dh = p->dh;
    xa_bt t = {.kt = xa_kern(),
               .B = B,
               .H = H,
               .I = I,
               .dh = dh,
               .Itot = I,
               .Jtot = J,
               .scale = p->scale,
               .qk = p->qk,
               .qk_sb = p->qk_sb,
               .qk_sh = p->qk_sh,
               .qk_si = p->qk_si,
               .v = p->v,
               .v_sb = p->v_sb,
               .v_sh = p->v_sh,
               .v_si = p->v_si,
               .dout = g->dout,
               .do_sb = g->do_sb,
               .do_sh = g->do_sh,
               .do_si = g->do_si,
               .mask = p->mask,
               .mask_sb = p->mask_sb,
               .bias = p->bias,
               .bias_sb = p->bias_sb,
               .bias_sh = p->bias_sh,
               .dbias = g->dbias,
               .dbias_sb = g->dbias_sb,
               .dbias_sh = g->dbias_sh,
               .talk = p->talk,
               .ctalk = p->ctalk,
               .want_dqk = g->dqk != NULL,
               .want_dv = g->dv != NULL};
    xa_bt_plan(&t, J, g->dbias && g->dbias_sb == 0);
    const int64_t BHI = B * H * I, BHJ = B * H * J, nT = t.nunit * H * H;
    int64_t n;
    if (xa_mul_ok(BHI, t.G * (2 * dh + 1) + 2, &n) || xa_mul_ok(n + 2 * BHJ + 4 * nT, 4, &n))
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow", fn);
    float *mem = xa_alloc(sizeof(float) * (size_t)(n / 4 + 64));
    if (!mem) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    memset(mem, 0, sizeof(float) * (size_t)(n / 4 + 64));
    double *dT = (double *)mem; /* the weights' gradients per task: dT, then dTc */
    float *q = mem + 4 * nT, *Lr = q, *Lc = q + BHI, *Dr = q + BHI + BHJ;
    q += 2 * BHI + BHJ;
    xa_bt_keys k = {.J = J,
                    .cqk = p->cqk,
                    .cqk_sb = p->cqk_sb,
                    .cqk_sh = p->cqk_sh,
                    .cqk_sj = p->cqk_sj,
                    .cv = p->cv,
                    .cv_sb = p->cv_sb,
                    .cv_sh = p->cv_sh,
                    .cv_sj = p->cv_sj,
                    .dco = g->dcout,
                    .dco_sb = g->dco_sb,
                    .dco_sh = g->dco_sh,
                    .dco_sj = g->dco_sj,
                    .Lc = Lc,
                    .keep = p->cmask,
                    .keep_sb = p->cmask_sb,
                    .Dc_acc = q,
                    .Dc = q,
                    .dcqk = g->dcqk,
                    .dcqk_sb = g->dcqk_sb,
                    .dcqk_sh = g->dcqk_sh,
                    .dcqk_sj = g->dcqk_sj,
                    .dcv = g->dcv,
                    .dcv_sb = g->dcv_sb,
                    .dcv_sh = g->dcv_sh,
                    .dcv_sj = g->dcv_sj};
    q += BHJ;
    t.Lr = Lr, t.Dr = Dr, t.dTp = dT, t.dTcp = dT + nT;
    t.Drg = q, q += t.G * BHI;
    t.dqkg = q, q += t.G * BHI * dh;
    t.dvg = q;
    xattn_status s = XATTN_OK;
    if (g->lse && g->clse) { /* the forward's */
        memcpy(Lr, g->lse, sizeof(float) * (size_t)BHI);
        memcpy(Lc, g->clse, sizeof(float) * (size_t)BHJ);
    } else {
        s = mb_lse(p, Lr, Lc);
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
    if (!s) s = xa_bt_pass(&t, &k, 1);
    if (!s) { /* the row terms: groups summed in order */
        xa_bt_sum_groups(t.Drg, t.G, BHI, Dr);
        s = xa_bt_pass(&t, &k, 2);
    }
    if (!s) {
        /* query-owned gradients: groups summed in order (into the first group's) */
        xa_bt_sum_groups(t.dqkg, t.G, BHI * dh, t.dqkg);
        xa_bt_sum_groups(t.dvg, t.G, BHI * dh, t.dvg);
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t i = 0; i < I; i++) {
                    const int64_t x = ((b * H + h) * I + i) * dh;
                    float *oq =
                        g->dqk ? g->dqk + b * g->dqk_sb + h * g->dqk_sh + i * g->dqk_si : NULL;
                    float *ov = g->dv ? g->dv + b * g->dv_sb + h * g->dv_sh + i * g->dv_si : NULL;
                    for (int64_t d = 0; d < dh; d++) {
                        if (oq) oq[d] = g->accumulate ? oq[d] + t.dqkg[x + d] : t.dqkg[x + d];
                        if (ov) ov[d] = g->accumulate ? ov[d] + t.dvg[x + d] : t.dvg[x + d];
                    }
                }
        for (int64_t x = 0; x < H * H; x++) { /* the weights: tasks summed in order */
            double st = 0.0, sc = 0.0;
            for (int64_t u = 0; u < t.nunit; u++) {
                st += t.dTp[u * H * H + x];
                sc += t.dTcp[u * H * H + x];
            }
            if (g->dtalk) g->dtalk[x] = (float)(g->accumulate ? g->dtalk[x] + st : st);
            if (g->dctalk) g->dctalk[x] = (float)(g->accumulate ? g->dctalk[x] + sc : sc);
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
