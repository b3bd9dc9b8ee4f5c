/*
 * Benchmark helpers: a monotonic clock, a median, deterministic inputs, and a measurement of this
 * machine's fp32 FMA peak (so "% of peak" needs no table of CPU models). Header-only; include in
 * one file.
 *
 * xa_bench_fma_peak(threads): every thread runs a register-only loop of independent FMA chains
 * (AVX-512: 24 zmm accumulators, AVX2: 12 ymm, enough to cover FMA latency x throughput on
 * current x86 cores) for a fixed count; GFLOP/s = 2 * FMAs * lanes / wall time of the whole
 * team, median of several runs. Threads are OpenMP threads when built with OpenMP, else POSIX
 * threads.
 */
#ifndef XATTN_BENCH_PEAK_H
#define XATTN_BENCH_PEAK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#ifdef _OPENMP
#include <omp.h>
#else
#include <pthread.h>
#endif

#if defined(__GNUC__)
#define XA_BENCH_UNUSED __attribute__((unused))
#else
#define XA_BENCH_UNUSED
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define XA_BENCH_X86 1
#endif

static inline double now_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

XA_BENCH_UNUSED static int xa_bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of n values (sorts v in place); 0 for n == 0. */
static inline double xa_bench_median(double *v, int n)
{
    if (n <= 0) return 0.0;
    qsort(v, (size_t)n, sizeof(double), xa_bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* x (n) = offset + scale * (u - 0.5), u uniform in [0, 1), deterministic from seed */
XA_BENCH_UNUSED static float *xa_bench_rand(size_t n, uint64_t seed, float scale, float offset)
{
    float *x = malloc(n * sizeof(float));
    if (!x) {
        fprintf(stderr, "benchmark: out of memory for %zu floats\n", n);
        exit(1);
    }
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = offset + scale * ((float)(seed >> 40) / 16777216.0f - 0.5f);
    }
    return x;
}

/* The common options of the module benchmarks: --threads N --reps N --json FILE (reps >= 1).
 * Returns 0, or 2 after printing the usage line of benchmark `name`. */
XA_BENCH_UNUSED static int xa_bench_args(int argc, char **argv, const char *name, int *threads,
                                         int *reps, const char **json)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            *threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            *reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            *json = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--threads N] [--reps N] [--json FILE]\n", name);
            return 2;
        }
    }
    if (*reps < 1) *reps = 1;
    return 0;
}

/* Peak resident memory of this process in MB: VmHWM of /proc/self/status, which exec starts
 * afresh (*src = "VmHWM"); where /proc is missing, getrusage's ru_maxrss, which Linux carries
 * across exec from the parent (*src = "ru_maxrss"). 0 if neither is known. */
XA_BENCH_UNUSED static double xa_bench_peak_rss_mb(const char **src)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    *src = "VmHWM";
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) {
            fclose(f);
            return strtod(line + 6, NULL) / 1024.0;
        }
    if (f) fclose(f);
    struct rusage ru;
    *src = "ru_maxrss";
    return getrusage(RUSAGE_SELF, &ru) ? 0.0 : (double)ru.ru_maxrss / 1024.0;
}

#define XA_PEAK_ITERS 4000000L /* per thread and run: 4M x 24 zmm FMAs ~ 0.1 s at 3 GHz */

#ifdef XA_BENCH_X86
/* 24 chains of a = a*x + y (x ~ 1: stays finite, no subnormals), each chain starting from a
 * different value so the compiler cannot merge them. Returns a value to keep. */
#define XA_PEAK_CHAINS512 24
__attribute__((target("avx512f,fma"), noinline)) XA_BENCH_UNUSED static float
xa_bench_fma512(long iters)
{
    __m512 x = _mm512_set1_ps(0.9999f), y = _mm512_set1_ps(1e-4f);
    __m512 a[XA_PEAK_CHAINS512];
#pragma GCC unroll 32
    for (int j = 0; j < XA_PEAK_CHAINS512; j++) a[j] = _mm512_set1_ps(0.01f * (float)(j + 1));
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 32
        for (int j = 0; j < XA_PEAK_CHAINS512; j++) a[j] = _mm512_fmadd_ps(a[j], x, y);
    }
    __m512 s = a[0];
#pragma GCC unroll 32
    for (int j = 1; j < XA_PEAK_CHAINS512; j++) s = _mm512_add_ps(s, a[j]);
    return _mm512_reduce_add_ps(s);
}

/* 12 chains (16 ymm registers: 12 + 2 constants, no spills). */
#define XA_PEAK_CHAINS256 12
__attribute__((target("avx2,fma"), noinline)) XA_BENCH_UNUSED static float
xa_bench_fma256(long iters)
{
    __m256 x = _mm256_set1_ps(0.9999f), y = _mm256_set1_ps(1e-4f);
    __m256 a[XA_PEAK_CHAINS256];
#pragma GCC unroll 16
    for (int j = 0; j < XA_PEAK_CHAINS256; j++) a[j] = _mm256_set1_ps(0.01f * (float)(j + 1));
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 16
        for (int j = 0; j < XA_PEAK_CHAINS256; j++) a[j] = _mm256_fmadd_ps(a[j], x, y);
    }
    __m256 s = a[0];
#pragma GCC unroll 16
    for (int j = 1; j < XA_PEAK_CHAINS256; j++) s = _mm256_add_ps(s, a[j]);
    float o[8];
    _mm256_storeu_ps(o, s);
    return o[0] + o[1] + o[2] + o[3] + o[4] + o[5] + o[6] + o[7];
}
#endif

/* Scalar fallback: 8 chains (whatever the compiler makes of it). */
XA_BENCH_UNUSED static float xa_bench_fma_scalar(long iters)
{
    float a[8] = {0, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f};
    for (long i = 0; i < iters; i++)
        for (int j = 0; j < 8; j++) a[j] = a[j] * 0.9999f + 1e-4f;
    return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

/* flops one call of the chosen loop performs per iteration, and the loop. */
XA_BENCH_UNUSED static double xa_bench_flops_per_iter(int *kind)
{
#ifdef XA_BENCH_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) {
        *kind = 2;
        return 2.0 * XA_PEAK_CHAINS512 * 16;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        *kind = 1;
        return 2.0 * XA_PEAK_CHAINS256 * 8;
    }
#endif
    *kind = 0;
    return 2.0 * 8;
}

XA_BENCH_UNUSED static volatile float xa_bench_sink;

XA_BENCH_UNUSED static float xa_bench_fma_run(int kind, long iters)
{
#ifdef XA_BENCH_X86
    if (kind == 2) return xa_bench_fma512(iters);
    if (kind == 1) return xa_bench_fma256(iters);
#endif
    (void)kind;
    return xa_bench_fma_scalar(iters);
}

#ifndef _OPENMP
typedef struct xa_bench_peak_arg {
    int kind;
    long iters;
    float out;
} xa_bench_peak_arg;

XA_BENCH_UNUSED static void *xa_bench_peak_thread(void *p)
{
    xa_bench_peak_arg *a = (xa_bench_peak_arg *)p;
    a->out = xa_bench_fma_run(a->kind, a->iters);
    return NULL;
}
#endif

/* One timed run of the loop on `threads` threads; returns wall seconds. */
XA_BENCH_UNUSED static double xa_bench_peak_once(int threads, int kind, long iters)
{
    double t0 = 0, t1 = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    {
#pragma omp barrier
#pragma omp master
        t0 = now_seconds();
        float v = xa_bench_fma_run(kind, iters);
#pragma omp critical
        xa_bench_sink += v;
#pragma omp barrier
#pragma omp master
        t1 = now_seconds();
    }
#else
    pthread_t tid[256];
    xa_bench_peak_arg arg[256];
    if (threads > 256) threads = 256;
    t0 = now_seconds();
    for (int i = 0; i < threads; i++) {
        arg[i].kind = kind;
        arg[i].iters = iters;
        if (pthread_create(&tid[i], NULL, xa_bench_peak_thread, &arg[i])) {
            arg[i].out = xa_bench_fma_run(kind, iters); /* could not start: run here */
            tid[i] = pthread_self();
        }
    }
    for (int i = 0; i < threads; i++) {
        if (!pthread_equal(tid[i], pthread_self())) pthread_join(tid[i], NULL);
        xa_bench_sink += arg[i].out;
    }
    t1 = now_seconds();
#endif
    return t1 - t0;
}

/* Measured fp32 FMA peak of `threads` threads in GFLOP/s (median of 5 runs). */
static inline double xa_bench_fma_peak(int threads)
{
    if (threads < 1) threads = 1;
    int kind;
    double per_iter = xa_bench_flops_per_iter(&kind);
    long iters = kind ? XA_PEAK_ITERS : XA_PEAK_ITERS / 4;
    xa_bench_peak_once(threads, kind, iters / 4); /* warm-up: clocks, thread start */
    double g[5];
    for (int r = 0; r < 5; r++) {
        double t = xa_bench_peak_once(threads, kind, iters);
        g[r] = per_iter * (double)iters * threads / t / 1e9;
    }
    return xa_bench_median(g, 5);
}

#endif
