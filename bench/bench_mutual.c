/*
 * M3 mutual cross-attention forward (xattn_mutual): two fused attention passes + a sum.
 * Compared with bench/torch_mutual.py (the MCA notebook module in PyTorch, same names).
 *
 *   bench_mutual [--threads N] [--reps N] [--json FILE]
 * FLOPs: 2 terms * 4*B*N*N*D.
 */
#include "peak.h"
#include "xattn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv)
{
    int threads = 2, reps = 7;
    const char *json = NULL;
    if (xa_bench_args(argc, argv, "bench_mutual", &threads, &reps, &json)) return 2;
    xattn_set_threads(threads);
    double peak = xa_bench_fma_peak(threads);
    FILE *jf = NULL;
    if (json && !(jf = fopen(json, "w"))) {
        fprintf(stderr, "bench_mutual: cannot write %s\n", json);
        return 1;
    }
    /* EEG-like (trials*bands, channels, time) and a long-sequence case */
    const int64_t cfg[][3] = {{128, 32, 128}, {4, 1024, 64}, {1, 4096, 64}};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        const int64_t B = cfg[c][0], N = cfg[c][1], D = cfg[c][2];
        size_t n = (size_t)(B * N * D);
        float *a = xa_bench_rand(n, 1 + c, 3.0f, 0.0f), *b = xa_bench_rand(n, 7 + c, 3.0f, 0.0f);
        float *o = malloc(n * sizeof(float));
        double *ts = malloc(sizeof(double) * (size_t)reps);
        if (xattn_mutual(a, b, B, N, D, o)) {
            fprintf(stderr, "bench_mutual: %s\n", xattn_last_error());
            return 1;
        }
        for (int r = 0; r < reps; r++) {
            double t0 = now_seconds();
            xattn_mutual(a, b, B, N, D, o);
            ts[r] = now_seconds() - t0;
        }
        qsort(ts, (size_t)reps, sizeof(double), xa_bench_cmp_double);
        double t = ts[reps / 2];
        double gf = 8.0 * B * N * N * D / t / 1e9;
        char name[128];
        snprintf(name, sizeof name, "mutual B=%lld N=%lld D=%lld", (long long)B, (long long)N,
                 (long long)D);
        printf("%s: %.3f ms, %.1f GFLOP/s, %.1f%% of measured peak %.1f (%s, %d threads)\n", name,
               t * 1e3, gf, 100 * gf / peak, peak, xattn_isa(), threads);
        if (jf)
            fprintf(
                jf,
                "{\"name\": \"%s\", \"seconds\": %.6g, \"gflops\": %.4g, \"peak_gflops\": %.4g, "
                "\"threads\": %d, \"isa\": \"%s\"}\n",
                name, t, gf, peak, threads, xattn_isa());
        free(a);
        free(b);
        free(o);
        free(ts);
    }
    if (jf) fclose(jf);
    return 0;
}
