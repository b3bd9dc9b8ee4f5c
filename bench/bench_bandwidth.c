/*
 * Memory read bandwidth: the bound of decoding one token, which reads every weight once.
 *
 *   bench_bandwidth [--mb 320] [--threads N] [--reps 8]
 *
 * Sums a buffer of --mb MiB (larger than the caches) as 64-bit words, split across 1 .. N
 * threads (OpenMP), and prints, per thread count, the best of --reps passes as a JSON line:
 * {"name": "read bandwidth", "threads": t, "mib": m, "gb_per_s": g, "ms_per_pass": ms}.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    long mib = 320, reps = 8, threads = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        long *dst = !strcmp(argv[i], "--mb")        ? &mib
                    : !strcmp(argv[i], "--threads") ? &threads
                    : !strcmp(argv[i], "--reps")    ? &reps
                                                    : NULL;
        if (!dst || (*dst = strtol(argv[i + 1], NULL, 10)) <= 0) {
            fprintf(stderr, "usage: bench_bandwidth [--mb M] [--threads N] [--reps R]\n");
            return 2;
        }
    }
#ifdef _OPENMP
    if (!threads) threads = omp_get_max_threads();
#else
    threads = 1;
#endif
    const size_t n = (size_t)mib << 17; /* 64-bit words */
    uint64_t *a = malloc(n * sizeof *a);
    if (!a) {
        fprintf(stderr, "bench_bandwidth: out of memory for %ld MiB\n", mib);
        return 1;
    }
    for (size_t i = 0; i < n; i++) a[i] = i * 0x9E3779B97F4A7C15ull;
    uint64_t sink = 0;
    for (long t = 1; t <= threads; t++) {
        double best = 1e30;
        for (long r = 0; r < reps; r++) {
            uint64_t total = 0;
            const double t0 = now();
#ifdef _OPENMP
#pragma omp parallel for num_threads((int)t) reduction(+ : total) schedule(static)
#endif
            for (size_t c = 0; c < n / 1024; c++) {
                const uint64_t *p = a + c * 1024;
                uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                for (int i = 0; i < 1024; i += 4) {
                    s0 += p[i];
                    s1 += p[i + 1];
                    s2 += p[i + 2];
                    s3 += p[i + 3];
                }
                total += s0 ^ s1 ^ s2 ^ s3;
            }
            const double dt = now() - t0;
            sink += total;
            if (dt < best) best = dt;
        }
        printf("{\"name\": \"read bandwidth\", \"threads\": %ld, \"mib\": %ld, \"gb_per_s\": %.2f, "
               "\"ms_per_pass\": %.3f}\n",
               t, mib, (double)(n * sizeof *a) / best / 1e9, best * 1e3);
    }
    free(a);
    return sink == 42 ? 3 : 0; /* keeps the sums alive */
}
