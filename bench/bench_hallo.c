/*
 * M7: HALLO's audio block (three region-masked diffusers cross-attentions + zero convs + GEGLU
 * feed-forward) at HALLO's SD-1.5 UNet sizes, and the mask pyramid (3 masks, 512x512 -> 64, 32,
 * 16, 8). Same work as bench/torch_hallo.py (same "name" strings).
 *
 *   bench_hallo [--threads N] [--reps N] [--json FILE]
 * FLOPs per block: 3 * (2*N*C*inner + 4*T*Ca*inner + 4*N*T*inner + 2*N*inner*C + 2*N*C*C)
 *                  + 2*N*C*2F + 2*N*F*C   (times B)
 */
#include "peak.h"
#include "xattn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static FILE *jf;
static int threads = 2, reps = 5;

static void report(const char *name, double t, double flop, double peak)
{
    if (flop > 0) {
        double gf = flop / t / 1e9;
        printf("%s: %.3f ms, %.1f GFLOP/s, %.1f%% of measured peak %.1f (%s, %d threads)\n", name,
               t * 1e3, gf, 100 * gf / peak, peak, xattn_isa(), threads);
        if (jf)
            fprintf(jf,
                    "{\"name\": \"%s\", \"seconds\": %.6g, \"gflops\": %.4g, \"threads\": %d, "
                    "\"isa\": \"%s\"}\n",
                    name, t, gf, threads, xattn_isa());
    } else {
        printf("%s: %.3f ms (%s, %d threads)\n", name, t * 1e3, xattn_isa(), threads);
        if (jf)
            fprintf(jf, "{\"name\": \"%s\", \"seconds\": %.6g, \"threads\": %d, \"isa\": \"%s\"}\n",
                    name, t, threads, xattn_isa());
    }
}

static int block(int64_t B, int64_t hh, int64_t C, int64_t heads, int64_t T, int64_t Ca,
                 double peak)
{
    const int64_t N = hh * hh, dh = C / heads, inner = C, F = 4 * C;
    xattn_st_entry e[29];
    float *bufs[29];
    int n = 0;
    char names[29][48];
    uint64_t seed = 11;
#define ADD(nm, nd, d0, d1, d2, d3, sc)                                                            \
    do {                                                                                           \
        snprintf(names[n], sizeof names[n], "%s", nm);                                             \
        size_t cnt = (size_t)(d0) * (size_t)(d1) * (size_t)(d2) * (size_t)(d3);                    \
        bufs[n] = xa_bench_rand(cnt, seed++, sc, 0.0f);                                            \
        e[n] = (xattn_st_entry){names[n], XATTN_F32, nd, {d0, d1, d2, d3}, bufs[n]};               \
        n++;                                                                                       \
    } while (0)
    ADD("norm2.weight", 1, C, 1, 1, 1, 1.0f);
    ADD("norm2.bias", 1, C, 1, 1, 1, 0.1f);
    ADD("norm3.weight", 1, C, 1, 1, 1, 1.0f);
    ADD("norm3.bias", 1, C, 1, 1, 1, 0.1f);
    static const char *const zc[3] = {"zero_conv_full", "zero_conv_face", "zero_conv_lip"};
    char buf[64];
    for (int k = 0; k < 3; k++) {
        snprintf(buf, sizeof buf, "%s.weight", zc[k]);
        ADD(buf, 4, C, C, 1, 1, 0.05f);
        snprintf(buf, sizeof buf, "%s.bias", zc[k]);
        ADD(buf, 1, C, 1, 1, 1, 0.05f);
        snprintf(buf, sizeof buf, "attn2_%d.to_q.weight", k);
        ADD(buf, 2, inner, C, 1, 1, 0.05f);
        snprintf(buf, sizeof buf, "attn2_%d.to_k.weight", k);
        ADD(buf, 2, inner, Ca, 1, 1, 0.05f);
        snprintf(buf, sizeof buf, "attn2_%d.to_v.weight", k);
        ADD(buf, 2, inner, Ca, 1, 1, 0.05f);
        snprintf(buf, sizeof buf, "attn2_%d.to_out.0.weight", k);
        ADD(buf, 2, C, inner, 1, 1, 0.05f);
        snprintf(buf, sizeof buf, "attn2_%d.to_out.0.bias", k);
        ADD(buf, 1, C, 1, 1, 1, 0.05f);
    }
    ADD("ff.net.0.proj.weight", 2, 2 * F, C, 1, 1, 0.05f);
    ADD("ff.net.0.proj.bias", 1, 2 * F, 1, 1, 1, 0.05f);
    ADD("ff.net.2.weight", 2, C, F, 1, 1, 0.03f);
    ADD("ff.net.2.bias", 1, C, 1, 1, 1, 0.05f);
    char path[] = "/tmp/xattn_bench_hallo_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return 1;
    close(fd);
    char hs[16];
    snprintf(hs, sizeof hs, "%lld", (long long)heads);
    const char *meta[] = {"heads", hs};
    xattn_safetensors *st = NULL;
    xattn_hallo *m = NULL;
    if (xattn_st_save(path, e, (size_t)n, meta, 1) || xattn_st_open(path, &st) ||
        xattn_hallo_load(st, "", NULL, &m)) {
        fprintf(stderr, "bench_hallo: %s\n", xattn_last_error());
        remove(path);
        return 1;
    }
    remove(path);
    for (int i = 0; i < n; i++) free(bufs[i]);
    float *x = xa_bench_rand((size_t)(B * N * C), 101, 1.0f, 0.0f);
    float *au = xa_bench_rand((size_t)(B * T * Ca), 102, 1.0f, 0.0f);
    float *mk = xa_bench_rand((size_t)(3 * N), 103, 0.5f, 0.5f);
    float *out = malloc(sizeof(float) * (size_t)(B * N * C));
    xattn_hallo_inputs in = {
        .B = B, .N = N, .T = T, .x = x, .audio = au, .masks = mk, .mask_batch = 1};
    double *ts = malloc(sizeof(double) * (size_t)reps);
    const xattn_hallo_outputs ou = {.out = out};
    xattn_hallo_forward(NULL, m, &in, &ou);
    for (int r = 0; r < reps; r++) {
        double t0 = now_seconds();
        if (xattn_hallo_forward(NULL, m, &in, &ou)) {
            fprintf(stderr, "bench_hallo: %s\n", xattn_last_error());
            return 1;
        }
        ts[r] = now_seconds() - t0;
    }
    qsort(ts, (size_t)reps, sizeof(double), cmp);
    double flop = B * (3.0 * (2.0 * N * C * inner + 4.0 * T * Ca * inner + 4.0 * N * T * inner +
                              2.0 * N * inner * C + 2.0 * N * C * C) +
                       2.0 * N * C * 2 * F + 2.0 * N * F * C);
    char name[160];
    snprintf(name, sizeof name, "hallo-audio B=%lld %lldx%lld C=%lld heads=%lld T=%lld Ca=%lld",
             (long long)B, (long long)hh, (long long)hh, (long long)C, (long long)heads,
             (long long)T, (long long)Ca);
    report(name, ts[reps / 2], flop, peak);
    (void)dh;
    xattn_hallo_free(m);
    xattn_st_close(st);
    free(x);
    free(au);
    free(mk);
    free(out);
    free(ts);
    return 0;
}

static int pyramid(double peak)
{
    const int64_t S = 512;
    float *big = xa_bench_rand((size_t)(3 * S * S), 7, 0.5f, 0.5f);
    float *lv = malloc(sizeof(float) * 3 * 64 * 64);
    double *ts = malloc(sizeof(double) * (size_t)reps);
    for (int r = -1; r < reps; r++) {
        double t0 = now_seconds();
        for (int64_t h = 64; h >= 8; h /= 2)
            if (xattn_resize_masks(big, 3, S, S, h, h, lv)) {
                fprintf(stderr, "bench_hallo: %s\n", xattn_last_error());
                return 1;
            }
        if (r >= 0) ts[r] = now_seconds() - t0;
    }
    qsort(ts, (size_t)reps, sizeof(double), cmp);
    report("hallo mask pyramid 3x512x512 -> 64,32,16,8", ts[reps / 2], 0, peak);
    free(big);
    free(lv);
    free(ts);
    return 0;
}

int main(int argc, char **argv)
{
    const char *json = NULL;
    if (xa_bench_args(argc, argv, "bench_hallo", &threads, &reps, &json)) return 2;
    xattn_set_threads(threads);
    double peak = xa_bench_fma_peak(threads);
    if (json && !(jf = fopen(json, "w"))) {
        fprintf(stderr, "bench_hallo: cannot write %s\n", json);
        return 1;
    }
    int rc = block(1, 64, 320, 8, 32, 768, peak);
    if (!rc) rc = block(2, 16, 1280, 8, 32, 768, peak);
    if (!rc) rc = pyramid(peak);
    if (jf) fclose(jf);
    return rc;
}
