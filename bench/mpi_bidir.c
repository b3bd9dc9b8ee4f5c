/*
 * Sequence-parallel bidirectional attention over MPI (an MPI build: -DXATTN_MPI=ON):
 * xattn_bidir_attention_dist (forward, or forward + backward) on each rank's contiguous shard of
 * two sequences of I and J rows, B batch items, H heads of width dh. Run under mpirun with 1, 2,
 * 4 ... ranks (bench/mpi_scaling.sh); each run prints one JSON line: the ranks, the sizes, the
 * median time of the reps, the FLOPs, the bytes each rank sent on the rings (the largest), the
 * peak resident memory of each rank (the largest), and with --check the largest difference
 * from the single-process xattn_bidir_attention on the same data (sizes small enough for one
 * process). With 1 rank it also times xattn_bidir_attention itself (the single-process run).
 *   mpirun -np 4 bench_mpi_bidir --I 4096 --J 4096 --H 8 --dh 64 [--backward] [--reps 3]
 *   mpirun -np 4 bench_mpi_bidir --I 65536 --J 65536 --H 4 --dh 16 --reps 1   (the long one)
 */
#include "xattn_mpi.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double peak_rss_mb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = atof(line + 6);
    if (f) fclose(f);
    return kb / 1024.0;
}

/* deterministic values of global row `row`, column c of tensor `which` */
static float val(int64_t which, int64_t b, int64_t row, int64_t c)
{
    uint64_t z = (uint64_t)which * 0x9E3779B97F4A7C15ull ^ (uint64_t)b * 0xBF58476D1CE4E5B9ull ^
                 (uint64_t)row * 0x94D049BB133111EBull ^ (uint64_t)c * 0x2545F4914F6CDD1Dull;
    z ^= z >> 31, z *= 0x9E3779B97F4A7C15ull, z ^= z >> 29;
    return (float)((double)(z >> 11) / 9007199254740992.0 - 0.5);
}

/* (B, n, H*dh) rows [r0, r0 + n) of tensor `which` */
static float *rows(int which, int64_t B, int64_t r0, int64_t n, int64_t w)
{
    float *x = malloc(sizeof(float) * (size_t)(B * n * w + 1));
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < n; i++)
            for (int64_t c = 0; c < w; c++) x[(b * n + i) * w + c] = val(which, b, r0 + i, c);
    return x;
}

static void layout(xattn_bidir_params *p, int64_t B, int64_t H, int64_t I, int64_t J, int64_t dh,
                   float *qk, float *v, float *cqk, float *cv, float *out, float *cout)
{
    const int64_t w = H * dh;
    xattn_bidir_init(p);
    p->B = B, p->H = H, p->I = I, p->J = J, p->dh = dh;
    p->qk = qk, p->qk_sb = I * w, p->qk_sh = dh, p->qk_si = w;
    p->v = v, p->v_sb = I * w, p->v_sh = dh, p->v_si = w;
    p->cqk = cqk, p->cqk_sb = J * w, p->cqk_sh = dh, p->cqk_sj = w;
    p->cv = cv, p->cv_sb = J * w, p->cv_sh = dh, p->cv_sj = w;
    p->out = out, p->o_sb = I * w, p->o_sh = dh, p->o_si = w;
    p->cout = cout, p->co_sb = J * w, p->co_sh = dh, p->co_sj = w;
}

static int cmp(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, R;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &R);
    int64_t B = 1, I = 2048, J = 2048, H = 8, dh = 64;
    int reps = 3, backward = 0, check = 0, threads = 0;
    for (int a = 1; a < argc; a++) {
        const char *f = argv[a], *v = a + 1 < argc ? argv[a + 1] : "0";
        if (!strcmp(f, "--backward"))
            backward = 1;
        else if (!strcmp(f, "--check"))
            check = 1;
        else if (!strcmp(f, "--B"))
            B = atoll(v), a++;
        else if (!strcmp(f, "--I"))
            I = atoll(v), a++;
        else if (!strcmp(f, "--J"))
            J = atoll(v), a++;
        else if (!strcmp(f, "--H"))
            H = atoll(v), a++;
        else if (!strcmp(f, "--dh"))
            dh = atoll(v), a++;
        else if (!strcmp(f, "--reps"))
            reps = atoi(v), a++;
        else if (!strcmp(f, "--threads"))
            threads = atoi(v), a++;
        else {
            if (!rank) fprintf(stderr, "bench_mpi_bidir: unknown option %s\n", f);
            MPI_Finalize();
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    xattn_ctx *ctx = NULL;
    if (xattn_ctx_new(&ctx) || (threads && xattn_ctx_set_threads(ctx, threads)) ||
        xattn_ctx_set_comm(ctx, MPI_COMM_WORLD)) {
        fprintf(stderr, "bench_mpi_bidir: %s\n", xattn_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    const int64_t i0 = I * rank / R, In = I * (rank + 1) / R - i0;
    const int64_t j0 = J * rank / R, Jn = J * (rank + 1) / R - j0;
    const int64_t w = H * dh;
    float *qk = rows(0, B, i0, In, w), *v = rows(1, B, i0, In, w);
    float *cqk = rows(2, B, j0, Jn, w), *cv = rows(3, B, j0, Jn, w);
    float *out = calloc((size_t)(B * In * w + 1), 4), *cout = calloc((size_t)(B * Jn * w + 1), 4);
    float *lse = calloc((size_t)(B * H * In + 1), 4), *clse = calloc((size_t)(B * H * Jn + 1), 4);
    float *dqk = NULL, *dv = NULL, *dcqk = NULL, *dcv = NULL;
    if (backward) {
        dqk = calloc((size_t)(B * In * w + 1), 4), dv = calloc((size_t)(B * In * w + 1), 4);
        dcqk = calloc((size_t)(B * Jn * w + 1), 4), dcv = calloc((size_t)(B * Jn * w + 1), 4);
    }
    xattn_bidir_params p;
    layout(&p, B, H, In, Jn, dh, qk, v, cqk, cv, out, cout);
    p.lse = lse, p.clse = clse;
    xattn_bidir_grads g;
    xattn_bidir_grads_init(&g);
    g.dout = v, g.do_sb = p.v_sb, g.do_sh = dh, g.do_si = w; /* some gradient of out */
    g.dcout = cv, g.dco_sb = p.cv_sb, g.dco_sh = dh, g.dco_sj = w;
    g.dqk = dqk, g.dqk_sb = p.qk_sb, g.dqk_sh = dh, g.dqk_si = w;
    g.dv = dv, g.dv_sb = p.v_sb, g.dv_sh = dh, g.dv_si = w;
    g.dcqk = dcqk, g.dcqk_sb = p.cqk_sb, g.dcqk_sh = dh, g.dcqk_sj = w;
    g.dcv = dcv, g.dcv_sb = p.cv_sb, g.dcv_sh = dh, g.dcv_sj = w;
    double *t = malloc(sizeof(double) * (size_t)reps);
    int64_t sent0 = xattn_ctx_bytes_sent(ctx);
    for (int r = 0; r < reps; r++) {
        MPI_Barrier(MPI_COMM_WORLD);
        const double t0 = now();
        xattn_status s = xattn_bidir_attention_dist(ctx, &p);
        if (!s && backward) s = xattn_bidir_attention_backward_dist(ctx, &p, &g);
        if (s) {
            fprintf(stderr, "bench_mpi_bidir: rank %d: %s\n", rank, xattn_last_error());
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        double dt = now() - t0, mx = 0;
        MPI_Allreduce(&dt, &mx, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        t[r] = mx;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp);
    double sent = (double)(xattn_ctx_bytes_sent(ctx) - sent0) / reps, sent_max = 0;
    double rss = peak_rss_mb(), rss_max = 0;
    MPI_Allreduce(&sent, &sent_max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(&rss, &rss_max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    /* the fused forward computes S twice (statistics, then outputs) and two products with the
     * values: 8 dh FLOPs per (i, j) pair and head; the backward about 2.5 times that */
    const double pairs = (double)B * H * I * J, flops = pairs * 8.0 * dh * (backward ? 3.5 : 1.0);
    double err = -1, t1 = -1;
    if (check || R == 1) { /* the single-process run, on rank 0, on the whole sequences */
        float *gq = rows(0, B, 0, I, w), *gv = rows(1, B, 0, I, w), *gc = rows(2, B, 0, J, w),
              *gcv = rows(3, B, 0, J, w), *go = calloc((size_t)(B * I * w + 1), 4),
              *gco = calloc((size_t)(B * J * w + 1), 4);
        xattn_bidir_params q;
        layout(&q, B, H, I, J, dh, gq, gv, gc, gcv, go, gco);
        if (rank == 0) {
            xattn_set_threads(threads);
            const double t0 = now();
            xattn_bidir_attention(&q);
            t1 = now() - t0;
        }
        MPI_Bcast(go, (int)(B * I * w), MPI_FLOAT, 0, MPI_COMM_WORLD);
        MPI_Bcast(gco, (int)(B * J * w), MPI_FLOAT, 0, MPI_COMM_WORLD);
        double e = 0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t x = 0; x < In * w; x++) {
                const double r = go[(b * I + i0) * w + x];
                e = fmax(e, fabs(out[b * In * w + x] - r) / (1 + fabs(r)));
            }
        for (int64_t b = 0; b < B; b++)
            for (int64_t x = 0; x < Jn * w; x++) {
                const double r = gco[(b * J + j0) * w + x];
                e = fmax(e, fabs(cout[b * Jn * w + x] - r) / (1 + fabs(r)));
            }
        MPI_Allreduce(&e, &err, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        free(gq), free(gv), free(gc), free(gcv), free(go), free(gco);
    }
    if (rank == 0) {
        printf("{\"ranks\": %d, \"B\": %lld, \"I\": %lld, \"J\": %lld, \"H\": %lld, \"dh\": %lld, "
               "\"backward\": %d, \"threads\": %d, \"seconds\": %.6g, \"gflops\": %.4g, "
               "\"bytes_sent_per_rank\": %.6g, \"peak_rss_mb_per_rank\": %.1f, "
               "\"three_bhij_matrices_gb\": %.4g",
               R, (long long)B, (long long)I, (long long)J, (long long)H, (long long)dh, backward,
               xattn_ctx_get_threads(ctx), t[reps / 2], flops / t[reps / 2] * 1e-9, sent_max,
               rss_max, 3.0 * pairs * 4.0 * 1e-9);
        if (t1 >= 0) printf(", \"single_process_seconds\": %.6g", t1);
        if (err >= 0) printf(", \"max_error_vs_single\": %.3g", err);
        printf("}\n");
    }
    free(qk), free(v), free(cqk), free(cv), free(out), free(cout), free(lse), free(clse);
    free(dqk), free(dv), free(dcqk), free(dcv), free(t);
    xattn_ctx_set_comm(ctx, MPI_COMM_NULL);
    xattn_ctx_free(ctx);
    MPI_Finalize();
    return 0;
}
