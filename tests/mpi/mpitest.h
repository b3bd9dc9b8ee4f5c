/* Helpers of the MPI tests: every rank draws the same global problem from the same seed, runs
 * the single-process reference, and checks its own rows of the distributed result. */
#ifndef XATTN_MPITEST_H
#define XATTN_MPITEST_H

#include "testutil.h"
#include "xattn_mpi.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int mt_rank, mt_size;

static inline uint64_t mt_next(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}
/* an integer in [lo, hi] */
static inline int64_t mt_int(uint64_t *s, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(mt_next(s) % (uint64_t)(hi - lo + 1));
}
static inline float *mt_rand(int64_t n, float lo, float hi, uint64_t *s)
{
    float *x = malloc(sizeof(float) * (size_t)(n ? n : 1));
    tu_fill_uniform(x, n, lo, hi, s);
    return x;
}
/* per-rank lengths, often 0 or 1, rarely all small */
static inline void mt_lengths(uint64_t *s, int64_t *len, int64_t maxlen)
{
    for (int r = 0; r < mt_size; r++) {
        int k = (int)mt_int(s, 0, 5);
        len[r] = k == 0 ? 0 : k == 1 ? 1 : mt_int(s, 2, maxlen);
    }
}
/* the shard of this rank: global positions of the local rows */
static inline void mt_shard(xattn_layout layout, const int64_t *len, int rank, xattn_shard *sh)
{
    int64_t pos = 0, tot = 0;
    for (int r = 0; r < mt_size; r++) tot += len[r];
    if (layout == XATTN_LAYOUT_ZIGZAG) {
        xattn_zigzag_shard(tot, mt_size, rank, sh);
        return;
    }
    for (int r = 0; r < rank; r++) pos += len[r];
    sh->n = 1;
    sh->start[0] = pos, sh->len[0] = len[rank];
    sh->start[1] = sh->len[1] = 0;
}
/* global position of local row i */
static inline int64_t mt_pos(const xattn_shard *sh, int64_t i)
{
    return i < sh->len[0] ? sh->start[0] + i : sh->start[1] + i - sh->len[0];
}
static inline int64_t mt_count(const xattn_shard *sh)
{
    return sh->len[0] + (sh->n > 1 ? sh->len[1] : 0);
}
/* rows of a (B, H, N, d) tensor at the shard's positions: (B, H, n_local, d) */
static inline float *mt_rows(const float *x, int64_t B, int64_t H, int64_t N, int64_t d,
                             const xattn_shard *sh)
{
    const int64_t n = mt_count(sh);
    float *y = malloc(sizeof(float) * (size_t)(B * H * n * d + 1));
    for (int64_t bh = 0; bh < B * H; bh++)
        for (int64_t i = 0; i < n; i++)
            memcpy(y + (bh * n + i) * d, x + (bh * N + mt_pos(sh, i)) * d,
                   sizeof(float) * (size_t)d);
    return y;
}
/* max over |got - ref| / (1 + |ref|), infinities equal to themselves */
static inline double mt_err(const float *got, const float *ref, int64_t n)
{
    double e = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (isinf(ref[i]) || isinf(got[i])) {
            if (got[i] != ref[i]) return INFINITY;
            continue;
        }
        double d = fabs((double)got[i] - ref[i]) / (1.0 + fabs((double)ref[i]));
        if (!(d <= e)) e = d;
    }
    return e;
}
/* the larger, NaN winning */
static inline double mt_max(double a, double b) { return (a != a || a > b) ? a : b; }
/* the largest error over every rank */
static inline double mt_max_all(double e)
{
    double m = 0.0;
    MPI_Allreduce(&e, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return m;
}
/* exit code: failures on any rank fail every rank */
static inline int mt_finish(const char *name)
{
    int f = tu_failures, all = 0;
    MPI_Allreduce(&f, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (mt_rank == 0)
        printf("%s on %d ranks: %d checks on rank 0, %d failures on all ranks\n", name, mt_size,
               tu_checks, all);
    return all ? 1 : 0;
}

#endif
