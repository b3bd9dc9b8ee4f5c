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
