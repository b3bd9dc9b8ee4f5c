/*
 * M9 cross-attention over 2-D feature maps (xattn_conv2d_cross_forward): three 1x1
 * convolutions (GEMM) + one fused attention pass + a transpose. Compared with
 * bench/torch_conv2d.py (the corrected seed-004 CrossAttention in PyTorch, same names).
 *
 *   bench_conv2d [--threads N] [--reps N] [--json FILE]
 * FLOPs: 2*B*(P1*C*C + 2*P2*C*C) for the convolutions + 4*B*P1*P2*C for attention (C = Ck = Cv).
 */
#include "peak.h"
#include "xattn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int threads = 2, reps = 7;
    const char *json = NULL;
    if (xa_bench_args(argc, argv, "bench_conv2d", &threads, &reps, &json)) return 2;
    xattn_set_threads(threads);
    double peak = xa_bench_fma_peak(threads);
    FILE *jf = NULL;
    if (json && !(jf = fopen(json, "w"))) {
        fprintf(stderr, "bench_conv2d: cannot write %s\n", json);
        return 1;
    }
    /* B, C, H1, W1, H2, W2 */
    const int64_t cfg[][6] = {{2, 64, 32, 32, 16, 16}, {1, 128, 64, 64, 64, 64}};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        const int64_t B = cfg[c][0], C = cfg[c][1], H1 = cfg[c][2], W1 = cfg[c][3], H2 = cfg[c][4],
                      W2 = cfg[c][5];
        const int64_t P1 = H1 * W1, P2 = H2 * W2;
        float *w[3], *bias[3];
        for (int k = 0; k < 3; k++) {
            w[k] = xa_bench_rand((size_t)(C * C), 10 + k, 0.25f, 0.0f);
            bias[k] = xa_bench_rand((size_t)C, 20 + k, 0.2f, 0.0f);
        }
        xattn_st_entry e[6] = {
            {"conv_query.weight", XATTN_F32, 4, {C, C, 1, 1}, w[0]},
            {"conv_query.bias", XATTN_F32, 1, {C}, bias[0]},
            {"conv_key.weight", XATTN_F32, 4, {C, C, 1, 1}, w[1]},
            {"conv_key.bias", XATTN_F32, 1, {C}, bias[1]},
            {"conv_value.weight", XATTN_F32, 4, {C, C, 1, 1}, w[2]},
            {"conv_value.bias", XATTN_F32, 1, {C}, bias[2]},
        };
        char path[] = "/tmp/xattn_bench_conv2d_XXXXXX";
        int fd = mkstemp(path);
        if (fd < 0) {
            perror("mkstemp");
            return 1;
        }
        close(fd);
        xattn_safetensors *st = NULL;
        xattn_conv2d_cross *m = NULL;
        if (xattn_st_save(path, e, 6, NULL, 0) || xattn_st_open(path, &st) ||
            xattn_conv2d_cross_load(st, "", &m)) {
            fprintf(stderr, "bench_conv2d: %s\n", xattn_last_error());
            remove(path);
            return 1;
        }
        remove(path);
        float *x1 = xa_bench_rand((size_t)(B * C * P1), 1, 2.0f, 0.0f),
              *x2 = xa_bench_rand((size_t)(B * C * P2), 2, 2.0f, 0.0f);
        float *o = malloc(sizeof(float) * (size_t)(B * C * P1));
        xattn_conv2d_cross_inputs in = {
            .B = B, .H1 = H1, .W1 = W1, .H2 = H2, .W2 = W2, .x1 = x1, .x2 = x2};
        double *ts = malloc(sizeof(double) * (size_t)reps);
        if (xattn_conv2d_cross_forward(m, &in, o)) {
            fprintf(stderr, "bench_conv2d: %s\n", xattn_last_error());
            return 1;
        }
        for (int r = 0; r < reps; r++) {
            double t0 = now_seconds();
            xattn_conv2d_cross_forward(m, &in, o);
            ts[r] = now_seconds() - t0;
        }
        qsort(ts, (size_t)reps, sizeof(double), xa_bench_cmp_double);
        double t = ts[reps / 2];
        double flop = 2.0 * B * (P1 + 2.0 * P2) * C * C + 4.0 * B * P1 * P2 * C;
        double gf = flop / t / 1e9;
        char name[160];
        snprintf(name, sizeof name, "conv2d-cross B=%lld C=%lld x1=%lldx%lld x2=%lldx%lld",
                 (long long)B, (long long)C, (long long)H1, (long long)W1, (long long)H2,
                 (long long)W2);
        printf("%s: %.3f ms, %.1f GFLOP/s, %.1f%% of measured peak %.1f (%s, %d threads)\n", name,
               t * 1e3, gf, 100 * gf / peak, peak, xattn_isa(), threads);
        if (jf)
            fprintf(
                jf,
                "{\"name\": \"%s\", \"seconds\": %.6g, \"gflops\": %.4g, \"peak_gflops\": %.4g, "
                "\"threads\": %d, \"isa\": \"%s\"}\n",
                name, t, gf, peak, threads, xattn_isa());
        xattn_conv2d_cross_free(m);
        xattn_st_close(st);
        for (int k = 0; k < 3; k++) {
            free(w[k]);
            free(bias[k]);
        }
        free(x1);
        free(x2);
        free(o);
        free(ts);
    }
    if (jf) fclose(jf);
    return 0;
}
