/* The bidirectional backward's tile pipeline (bidir_tiles.h). */
#include "bidir_tiles.h"
#include "../base/base.h"

#include <float.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define T XA_BT_T

typedef struct bt_tile {
    float *S, *C, *dA, *dC, *tmp; /* (H, T, T) each */
    float *M;                     /* (T, T) a mixed map */
} bt_tile;

/* The maps of tile (b, i0.., j0..) for every head: A (in S), C, dA' and dC'. */
static void bt_maps(const xa_bt *t, const xa_bt_keys *k, bt_tile *w, int64_t b, int64_t i0,
                    int64_t it, int64_t j0, int64_t jt)
{
    const xa_kernels *kt = t->kt;
    const int64_t H = t->H, dh = t->dh;
    const float fi = 1.0f / (float)t->Itot, fj = 1.0f / (float)t->Jtot;
    for (int64_t h = 0; h < H; h++) {
        float *S = w->S + h * T * T, *C = w->C + h * T * T;
        xa_sgemm(kt, 0, 1, it, jt, dh, t->scale,
                 t->qk + b * t->qk_sb + h * t->qk_sh + i0 * t->qk_si, t->qk_si,
                 k->cqk + b * k->cqk_sb + h * k->cqk_sh + j0 * k->cqk_sj, k->cqk_sj, 0.0f, S, T);
        const float *Lr = t->Lr + (b * H + h) * t->I + i0, *Lc = k->Lc + (b * H + h) * k->J + j0;
        const float *bias = t->bias ? t->bias + b * t->bias_sb + h * t->bias_sh + k->j0 + j0 : NULL;
        for (int64_t i = 0; i < it; i++) {
            float *sr = S + i * T, *cr = C + i * T;
            const int qk = !t->mask || t->mask[b * t->mask_sb + i0 + i];
            const uint8_t *keep = k->keep ? k->keep + b * k->keep_sb + j0 : NULL;
            for (int64_t j = 0; j < jt; j++) {
                float v = sr[j] + (bias ? bias[(i0 + i) * t->Jtot + j] : 0.0f);
                if (!qk || (keep && !keep[j])) v = -FLT_MAX;
                sr[j] = v - Lr[i];
                cr[j] = v - Lc[j];
            }
            /* a row / column masked everywhere (lse -FLT_MAX) is uniform over all J / I */
            if (Lr[i] <= -FLT_MAX) {
                for (int64_t j = 0; j < jt; j++) sr[j] = fj;
            } else {
                kt->vexp(sr, jt);
            }
            kt->vexp(cr, jt);
            for (int64_t j = 0; j < jt; j++)
                if (Lc[j] <= -FLT_MAX) cr[j] = fi;
        }
        xa_sgemm(kt, 0, 1, it, jt, dh, 1.0f, t->dout + b * t->do_sb + h * t->do_sh + i0 * t->do_si,
                 t->do_si, k->cv + b * k->cv_sb + h * k->cv_sh + j0 * k->cv_sj, k->cv_sj, 0.0f,
                 w->dA + h * T * T, T);
        xa_sgemm(kt, 0, 1, it, jt, dh, 1.0f, t->v + b * t->v_sb + h * t->v_sh + i0 * t->v_si,
                 t->v_si, k->dco + b * k->dco_sb + h * k->dco_sh + j0 * k->dco_sj, k->dco_sj, 0.0f,
                 w->dC + h * T * T, T);
    }
}

/* out (it, jt) = sum_h wt[h * ws] in[h]. */
static void bt_mix(const xa_bt *t, const float *in, const float *wt, int64_t ws, int64_t it,
                   int64_t jt, float *out)
{
    for (int64_t i = 0; i < it; i++) memset(out + i * T, 0, sizeof(float) * (size_t)jt);
    for (int64_t h = 0; h < t->H; h++)
        if (wt[h * ws] != 0.0f)
            for (int64_t i = 0; i < it; i++)
                t->kt->axpy(wt[h * ws], in + h * T * T + i * T, out + i * T, jt);
}

/* dA[h] = sum_g W[g][h] dA'[g] for every h, in place (through w->tmp). */
static void bt_unmix(const xa_bt *t, bt_tile *w, float *dAp, const float *wt, int64_t it,
                     int64_t jt)
{
    const int64_t H = t->H;
    for (int64_t h = 0; h < H; h++) bt_mix(t, dAp, wt + h, H, it, jt, w->tmp + h * T * T);
    for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < it; i++)
            memcpy(dAp + h * T * T + i * T, w->tmp + h * T * T + i * T, sizeof(float) * (size_t)jt);
}

/* Pass 1 over one tile: the weights' gradients, the row and column terms. */
static void bt_pass1(const xa_bt *t, const xa_bt_keys *k, bt_tile *w, int64_t unit, int64_t grp,
                     int64_t b, int64_t i0, int64_t it, int64_t j0, int64_t jt)
{
    const int64_t H = t->H;
    if (t->talk) {
        double *dT = t->dTp + unit * H * H, *dTc = t->dTcp + unit * H * H;
        for (int64_t gg = 0; gg < H; gg++)
            for (int64_t h = 0; h < H; h++) {
                double sa = 0.0, sc = 0.0;
                for (int64_t i = 0; i < it; i++) {
                    const float *a = w->dA + gg * T * T + i * T, *pa = w->S + h * T * T + i * T;
                    const float *cc = w->dC + gg * T * T + i * T, *pc = w->C + h * T * T + i * T;
                    for (int64_t j = 0; j < jt; j++) {
                        sa += a[j] * pa[j];
                        sc += cc[j] * pc[j];
                    }
                }
                dT[gg * H + h] += sa;
                dTc[gg * H + h] += sc;
            }
        bt_unmix(t, w, w->dA, t->talk, it, jt); /* without talking heads dA = dA' */
        bt_unmix(t, w, w->dC, t->ctalk, it, jt);
    }
    for (int64_t h = 0; h < H; h++) {
        float *Dr = t->Drg + ((grp * t->B + b) * H + h) * t->I + i0;
        float *Dc = k->Dc_acc + (b * H + h) * k->J + j0;
        for (int64_t i = 0; i < it; i++) {
            const float *a = w->dA + h * T * T + i * T, *pa = w->S + h * T * T + i * T;
            const float *cc = w->dC + h * T * T + i * T, *pc = w->C + h * T * T + i * T;
            float sum = 0.0f;
            for (int64_t j = 0; j < jt; j++) {
                sum += a[j] * pa[j];
                Dc[j] += cc[j] * pc[j];
            }
            Dr[i] += sum;
        }
    }
}

/* Pass 2 over one tile: dcv, dv, then dS and from it dbias, dqk, dcqk. */
static void bt_pass2(const xa_bt *t, const xa_bt_keys *k, bt_tile *w, int64_t grp, int64_t b,
                     int64_t i0, int64_t it, int64_t j0, int64_t jt)
{
    const xa_kernels *kt = t->kt;
    const int64_t H = t->H, dh = t->dh, I = t->I;
    for (int64_t gg = 0; gg < H; gg++) {
        /* A'[g], C'[g]: the maps mixed over the heads (A[g], C[g] without talking heads) */
        const float *Am = w->S + gg * T * T, *Cm = w->C + gg * T * T;
        if (k->dcv) {
            if (t->talk) bt_mix(t, w->S, t->talk + gg * H, 1, it, jt, w->M), Am = w->M;
            xa_sgemm(kt, 1, 0, jt, dh, it, 1.0f, Am, T,
                     t->dout + b * t->do_sb + gg * t->do_sh + i0 * t->do_si, t->do_si, 1.0f,
                     k->dcv + b * k->dcv_sb + gg * k->dcv_sh + j0 * k->dcv_sj, k->dcv_sj);
        }
        if (t->want_dv) {
            if (t->talk) bt_mix(t, w->C, t->ctalk + gg * H, 1, it, jt, w->M), Cm = w->M;
            xa_sgemm(kt, 0, 0, it, dh, jt, 1.0f, Cm, T,
                     k->dco + b * k->dco_sb + gg * k->dco_sh + j0 * k->dco_sj, k->dco_sj, 1.0f,
                     t->dvg + (((grp * t->B + b) * H + gg) * I + i0) * dh, dh);
        }
    }
    if (t->talk) {
        bt_unmix(t, w, w->dA, t->talk, it, jt);
        bt_unmix(t, w, w->dC, t->ctalk, it, jt);
    }
    for (int64_t h = 0; h < H; h++) {
        float *dS = w->S + h * T * T;
        const float *Dr = t->Dr + (b * H + h) * I + i0, *Dc = k->Dc + (b * H + h) * k->J + j0;
        const uint8_t *keep = k->keep ? k->keep + b * k->keep_sb + j0 : NULL;
        for (int64_t i = 0; i < it; i++) {
            float *a = dS + i * T;
            const float *da = w->dA + h * T * T + i * T, *cc = w->C + h * T * T + i * T,
                        *dc = w->dC + h * T * T + i * T;
            const int qk = !t->mask || t->mask[b * t->mask_sb + i0 + i];
            for (int64_t j = 0; j < jt; j++) {
                const int kp = qk && (!keep || keep[j]);
                a[j] = kp ? a[j] * (da[j] - Dr[i]) + cc[j] * (dc[j] - Dc[j]) : 0.0f;
            }
        }
        if (t->dbias) {
            float *db = t->dbias + b * t->dbias_sb + h * t->dbias_sh + k->j0 + j0;
            for (int64_t i = 0; i < it; i++)
                for (int64_t j = 0; j < jt; j++) db[(i0 + i) * t->Jtot + j] += dS[i * T + j];
        }
        const float *cqk = k->cqk + b * k->cqk_sb + h * k->cqk_sh + j0 * k->cqk_sj;
        if (t->want_dqk)
            xa_sgemm(kt, 0, 0, it, dh, jt, t->scale, dS, T, cqk, k->cqk_sj, 1.0f,
                     t->dqkg + (((grp * t->B + b) * H + h) * I + i0) * dh, dh);
        if (k->dcqk)
            xa_sgemm(kt, 1, 0, jt, dh, it, t->scale, dS, T,
                     t->qk + b * t->qk_sb + h * t->qk_sh + i0 * t->qk_si, t->qk_si, 1.0f,
                     k->dcqk + b * k->dcqk_sb + h * k->dcqk_sh + j0 * k->dcqk_sj, k->dcqk_sj);
    }
}

/* Task `unit` of a pass: (b, group) over the group's key tiles of the block and every x tile. */
static void bt_task(const xa_bt *t, const xa_bt_keys *k, bt_tile *w, int pass, int64_t unit)
{
    const int64_t ntk = (k->J + T - 1) / T, grp = unit % t->G;
    const int64_t b0 = t->loop_b ? 0 : unit / t->G, b1 = t->loop_b ? t->B : b0 + 1;
    const int64_t k0 = grp * ntk / t->G, k1 = (grp + 1) * ntk / t->G;
    for (int64_t b = b0; b < b1; b++)
        for (int64_t kk = k0; kk < k1; kk++) {
            const int64_t j0 = kk * T, jt = XA_MIN((int64_t)T, k->J - j0);
            for (int64_t i0 = 0; i0 < t->I; i0 += T) {
                const int64_t it = XA_MIN((int64_t)T, t->I - i0);
                bt_maps(t, k, w, b, i0, it, j0, jt);
                if (pass == 1)
                    bt_pass1(t, k, w, unit, grp, b, i0, it, j0, jt);
                else
                    bt_pass2(t, k, w, grp, b, i0, it, j0, jt);
            }
        }
}

void xa_bt_plan(xa_bt *t, int64_t Jmax, int dbias_bcast_b)
{
    const int64_t ntk = (Jmax + T - 1) / T, per = t->B * t->H * t->I * (2 * t->dh + 1);
    t->loop_b = dbias_bcast_b && t->B > 1;
    t->G = XA_MAX(1, XA_MIN(ntk, t->loop_b ? 8 : (8 + t->B - 1) / XA_MAX(t->B, 1)));
    if (per > 0) t->G = XA_MAX(1, XA_MIN(t->G, ((int64_t)1 << 28) / per));
    t->nunit = (t->loop_b ? 1 : t->B) * t->G;
}

xattn_status xa_bt_pass(const xa_bt *t, const xa_bt_keys *k, int pass)
{
    const int64_t H = t->H, tl = 5 * H * T * T + T * T;
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads((int)XA_MAX((int64_t)1, XA_MIN((int64_t)xa_threads(), t->nunit)))
#endif
    {
        float *tm = xa_alloc(sizeof(float) * (size_t)tl);
        bt_tile w = {0};
        if (tm) {
            w.S = tm, w.C = tm + H * T * T, w.dA = tm + 2 * H * T * T, w.dC = tm + 3 * H * T * T;
            w.tmp = tm + 4 * H * T * T, w.M = tm + 5 * H * T * T;
        } else {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            failed = 1;
        }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t u = 0; u < t->nunit; u++)
            if (tm) bt_task(t, k, &w, pass, u);
        xa_free(tm);
    }
    return failed ? xa_error(XATTN_ERR_NOMEM,
                             "bidirectional attention backward: out of memory for tiles")
                  : XATTN_OK;
}

void xa_bt_sum_groups(const float *grp, int64_t G, int64_t n, float *out)
{
    for (int64_t x = 0; x < n; x++) {
        float v = 0.0f;
        for (int64_t g = 0; g < G; g++) v += grp[g * n + x];
        out[x] = v;
    }
}
