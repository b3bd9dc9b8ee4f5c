/*
 * The tile pipeline of the bidirectional attention backward with the maps formed tile by tile
 * (talking heads in one process; every case of the sequence-parallel backward), shared by
 * bidir.c and src/dist/bidir_dist.c. They differ only in where a block of context rows comes
 * from: the whole context, or the ring shard held at a step (xa_bt_keys).
 *
 * With the global log-sum-exps Lr (rows) and Lc (columns), per tile (b, i0.., j0..), all heads:
 *   A = exp(S - Lr), C = exp(S - Lc)   (S = scale qk cqk^T + bias, -FLT_MAX where masked; a row
 *                                       or column masked everywhere is uniform: 1/Jtot, 1/Itot)
 *   dA' = dout cv^T, dC' = v dcout^T, and with talking heads dA[h] = sum_g T[g][h] dA'[g]
 *   pass 1: Dr += rowsum(dA o A) (per group), Dc += colsum(dC o C), dT[g][h] += sum dA'[g] o A[h]
 *   pass 2: dcv += A'^T dout, dv += C' dcout (A' = sum_h T[g][h] A[h]),
 *           dS = A o (dA - Dr) + C o (dC - Dc) (0 where masked), dbias += dS,
 *           dqk += scale dS cqk, dcqk += scale dS^T qk.
 * A task owns (b, a group of the block's key tiles) and writes what belongs to its keys (Dc,
 * dcqk, dcv, dbias) in place; what belongs to the x rows (row terms, dqk, dv) goes into its
 * group's accumulator and the weights' gradients into its own, summed in order afterwards
 * (xa_bt_sum_groups), so results do not depend on the thread count.
 */
#ifndef XATTN_BIDIR_TILES_H
#define XATTN_BIDIR_TILES_H

#include "kernels.h"

#define XA_BT_T 64 /* tile side */

/* One block of context rows. Pointers are at the block's first row; bias columns at j0. */
typedef struct xa_bt_keys {
    int64_t J;  /* rows of the block */
    int64_t j0; /* the block's first column among all Jtot (bias, dbias) */
    const float *cqk;
    int64_t cqk_sb, cqk_sh, cqk_sj;
    const float *cv;
    int64_t cv_sb, cv_sh, cv_sj;
    const float *dco; /* the gradient of cout */
    int64_t dco_sb, dco_sh, dco_sj;
    const float *Lc; /* (B, H, J) column log-sum-exps */
    const uint8_t *keep;
    int64_t keep_sb; /* (B|1, J) nonzero = keep, or NULL */
    float *Dc_acc;   /* (B, H, J) column terms: pass 1 adds to them */
    const float *Dc; /* the same, summed: pass 2 reads them */
    float *dcqk;     /* pass 2 adds to them (NULL: not wanted) */
    int64_t dcqk_sb, dcqk_sh, dcqk_sj;
    float *dcv;
    int64_t dcv_sb, dcv_sh, dcv_sj;
} xa_bt_keys;

typedef struct xa_bt {
    const xa_kernels *kt;
    int64_t B, H, I, dh;
    int64_t Itot, Jtot; /* every x row / context row (uniform maps; the bias' row stride) */
    float scale;
    const float *qk;
    int64_t qk_sb, qk_sh, qk_si;
    const float *v;
    int64_t v_sb, v_sh, v_si;
    const float *dout;
    int64_t do_sb, do_sh, do_si;
    const uint8_t *mask;
    int64_t mask_sb; /* (B|1, I) nonzero = keep, or NULL */
    const float *bias;
    int64_t bias_sb, bias_sh; /* (B|1, H|1, I, Jtot), or NULL */
    float *dbias;
    int64_t dbias_sb, dbias_sh;
    const float *talk, *ctalk; /* (H, H) [g][h] each, or both NULL */
    const float *Lr;           /* (B, H, I) row log-sum-exps */
    const float *Dr;           /* (B, H, I) row terms summed over the groups (pass 2) */
    int want_dqk, want_dv;
    /* tasks and their accumulators (zeroed by the caller) */
    int64_t G, nunit;   /* groups of key tiles per block; tasks per pass: (b, group) or (group) */
    int loop_b;         /* a task loops over b (dbias broadcast over b) */
    float *Drg;         /* (G, B, H, I) */
    float *dqkg, *dvg;  /* (G, B, H, I, dh) */
    double *dTp, *dTcp; /* (nunit, H, H) */
} xa_bt;

/* The task layout of a problem whose blocks have at most Jmax rows: G from the problem alone
 * (up to 8 tasks, fewer when the row accumulators of the groups would pass 1 GiB). Sets G,
 * nunit and loop_b (dbias broadcast over b: dbias_bcast_b with B > 1). */
void xa_bt_plan(xa_bt *t, int64_t Jmax, int dbias_bcast_b);

/* Pass 1 or 2 over every tile of block k, on the current context's threads. Returns 0, or
 * XATTN_ERR_NOMEM (message set) when a thread's tile buffers cannot be allocated. */
xattn_status xa_bt_pass(const xa_bt *t, const xa_bt_keys *k, int pass);

/* out[x] = sum over the G groups of grp (G, n), in order (out may be grp itself). */
void xa_bt_sum_groups(const float *grp, int64_t G, int64_t n, float *out);

#endif
