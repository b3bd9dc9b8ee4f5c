/*
 * SGEMM benchmark: xattn_sgemm GFLOP/s per kernel set and thread count, against the fp32 FMA
 * peak this program measures itself (bench/peak.h).
 *
 *   bench_gemm [--threads N] [--reps N] [--isa NAME] [--quick] [--json FILE]
 *
 * --threads N   the multi-threaded runs use N threads (default: all cores); 1 thread always runs
 * --reps N      timed runs per case (default 7, at least 5 recommended); the median is reported
 * --isa NAME    only this kernel set (avx512, avx2, scalar); default: every one this CPU has
 *               (scalar only at the smallest size: it is there as a reference, not a contender)
 * --quick       only 1024^3
 * --json FILE   one JSON object per line: name, isa, threads, M, N, K, seconds, gflops,
 *               peak_gflops, pct_peak. The best kernel set at N threads is also written under
 *               the plain name "sgemm 1024^3" that bench/run.sh pairs with PyTorch's number.
 *
 * FLOPs are 2*M*N*K. C = A B with row-major A (M,K), B (K,N), alpha = 1, beta = 0.
 */
#include "peak.h"
#include "xattn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct gcase {
    const char *label;
    int64_t M, N, K;
} gcase;

static float *rand_buf(size_t n, uint64_t seed)
{
    float *p = malloc(n * sizeof(float));
    if (!p) {
        fprintf(stderr, "bench_gemm: out of memory\n");
        exit(1);
    }
    uint64_t r = seed;
    for (size_t i = 0; i < n; i++) {
        r = r * 6364136223846793005ULL + 1442695040888963407ULL;
        p[i] = (float)(r >> 40) / 16777216.0f - 0.5f;
    }
    return p;
}

/* Median seconds of `reps` runs (after one warm-up). */
static double time_gemm(const gcase *c, const float *A, const float *B, float *C, int reps)
{
    double *ts = malloc(sizeof(double) * (size_t)reps);
    if (xattn_sgemm(0, 0, c->M, c->N, c->K, 1.0f, A, c->K, B, c->N, 0.0f, C, c->N) != XATTN_OK) {
        fprintf(stderr, "xattn_sgemm: %s\n", xattn_last_error());
        exit(1);
    }
    for (int i = 0; i < reps; i++) {
        double t0 = now_seconds();
        xattn_sgemm(0, 0, c->M, c->N, c->K, 1.0f, A, c->K, B, c->N, 0.0f, C, c->N);
        ts[i] = now_seconds() - t0;
    }
    double med = xa_bench_median(ts, reps);
    free(ts);
    return med;
}

int main(int argc, char **argv)
{
    int threads = xattn_get_threads(), reps = 7, quick = 0;
    const char *json = NULL, *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--isa") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = argv[++i];
        else if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else {
            fprintf(stderr, "usage: bench_gemm [--threads N] [--reps N] [--isa NAME] [--quick] "
                            "[--json FILE]\n");
            return 2;
        }
    }
    if (threads < 1) threads = 1;
    if (reps < 1) reps = 1;
    FILE *jf = NULL;
    if (json && !(jf = fopen(json, "w"))) {
        fprintf(stderr, "bench_gemm: cannot write %s\n", json);
        return 1;
    }

    int tcounts[2] = {1, threads};
    int ntc = threads > 1 ? 2 : 1;
    /* The clock of a shared or virtual machine drifts with the load around it: the peak is
     * measured again after the GEMM runs and the larger value is used, so "% of peak" is not
     * flattered by a slow first measurement. */
    double peak[2], peak_end[2];
    for (int t = 0; t < ntc; t++) {
        peak[t] = xa_bench_fma_peak(tcounts[t]);
        printf("measured fp32 FMA peak, %d thread%s: %.1f GFLOP/s\n", tcounts[t],
               tcounts[t] > 1 ? "s" : "", peak[t]);
    }
    typedef struct row {
        char label[40];
        const char *isa;
        int t;
        int64_t M, N, K;
        double sec, gf;
    } row;
    row rows[64];
    int nrows = 0;

    const gcase all[] = {
        {"sgemm 1024^3", 1024, 1024, 1024},     {"sgemm 256^3", 256, 256, 256},
        {"sgemm 512^3", 512, 512, 512},         {"sgemm 2048^3", 2048, 2048, 2048},
        {"sgemm 4096x512x512", 4096, 512, 512},
    };
    const int ncase = quick ? 1 : (int)(sizeof all / sizeof all[0]);
    const char *isas[] = {"avx512", "avx2", "scalar"};
    const char *best = xattn_isa(); /* the set "auto" picks */
    int64_t maxel = 0;
    for (int i = 0; i < ncase; i++) {
        int64_t a = all[i].M * all[i].K, b = all[i].K * all[i].N, c = all[i].M * all[i].N;
        if (a > maxel) maxel = a;
        if (b > maxel) maxel = b;
        if (c > maxel) maxel = c;
    }
    float *A = rand_buf((size_t)maxel, 1), *B = rand_buf((size_t)maxel, 2);
    float *C = rand_buf((size_t)maxel, 3);

    printf("%-20s %-7s %3s %12s %10s %8s\n", "case", "isa", "thr", "ms (median)", "GFLOP/s",
           "% peak");
    for (size_t s = 0; s < sizeof isas / sizeof isas[0]; s++) {
        if (only && strcmp(only, isas[s])) continue;
        if (xattn_set_isa(isas[s]) != XATTN_OK) {
            printf("%-20s %-7s (not available on this CPU/build)\n", "-", isas[s]);
            continue;
        }
        int is_scalar = !strcmp(isas[s], "scalar");
        if (!is_scalar) { /* warm-up (clocks, page faults, thread pool): ~0.2 s untimed */
            const gcase *w = &all[0];
            xattn_set_threads(threads);
            double t0 = now_seconds();
            while (now_seconds() - t0 < 0.2)
                xattn_sgemm(0, 0, w->M, w->N, w->K, 1.0f, A, w->K, B, w->N, 0.0f, C, w->N);
        }
        for (int i = 0; i < ncase; i++) {
            const gcase *c = &all[i];
            if (is_scalar && !only && c->M * c->N * c->K > 256 * 256 * 256) continue;
            for (int t = 0; t < ntc; t++) {
                xattn_set_threads(tcounts[t]);
                double sec = time_gemm(c, A, B, C, reps);
                double gf = 2.0 * (double)c->M * (double)c->N * (double)c->K / sec / 1e9;
                printf("%-20s %-7s %3d %12.3f %10.1f %7.1f%%\n", c->label, isas[s], tcounts[t],
                       sec * 1e3, gf, 100.0 * gf / peak[t]);
                fflush(stdout);
                if (nrows < 64) {
                    row *r = &rows[nrows++];
                    snprintf(r->label, sizeof r->label, "%s", c->label);
                    r->isa = isas[s];
                    r->t = t;
                    r->M = c->M;
                    r->N = c->N;
                    r->K = c->K;
                    r->sec = sec;
                    r->gf = gf;
                }
            }
        }
    }
    for (int t = 0; t < ntc; t++) {
        peak_end[t] = xa_bench_fma_peak(tcounts[t]);
        printf("measured fp32 FMA peak again, %d thread%s: %.1f GFLOP/s", tcounts[t],
               tcounts[t] > 1 ? "s" : "", peak_end[t]);
        if (peak_end[t] > peak[t]) peak[t] = peak_end[t];
        printf(" (using %.1f)\n", peak[t]);
    }
    printf("\nsummary (%% of the larger peak measurement):\n");
    for (int i = 0; i < nrows; i++) {
        row *r = &rows[i];
        int tc = tcounts[r->t];
        double pct = 100.0 * r->gf / peak[r->t];
        printf("%-20s %-7s %3d %10.1f GFLOP/s %7.1f%%\n", r->label, r->isa, tc, r->gf, pct);
        if (jf) {
            char name[96];
            snprintf(name, sizeof name, "%s %s %dt", r->label, r->isa, tc);
            const char *fmt = "{\"name\": \"%s\", \"isa\": \"%s\", \"threads\": %d, "
                              "\"M\": %lld, \"N\": %lld, \"K\": %lld, \"seconds\": %.6g, "
                              "\"gflops\": %.4g, \"peak_gflops\": %.4g, \"pct_peak\": %.2f}\n";
            fprintf(jf, fmt, name, r->isa, tc, (long long)r->M, (long long)r->N, (long long)r->K,
                    r->sec, r->gf, peak[r->t], pct);
            if (!strcmp(r->isa, best) && r->t == ntc - 1)
                fprintf(jf, fmt, r->label, r->isa, tc, (long long)r->M, (long long)r->N,
                        (long long)r->K, r->sec, r->gf, peak[r->t], pct);
        }
    }
    xattn_set_isa("auto");
    xattn_set_threads(0);
    if (jf) fclose(jf);
    free(A);
    free(B);
    free(C);
    return 0;
}
