/*
 * nn.MultiheadAttention forward (batch_first, kdim = vdim = embed_dim) at B=1, I=1024, J=2048,
 * E=512, 8 heads: projections (GEMM) + fused attention + output projection.
 *
 *   bench_mha [--threads N] [--reps N] [--json FILE]
 * FLOPs: 2*B*(I*E*E + 2*J*E*E + I*E*E) for the projections + 4*B*I*J*E for attention.
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
    if (xa_bench_args(argc, argv, "bench_mha", &threads, &reps, &json)) return 2;
    const int64_t B = 1, I = 1024, J = 2048, E = 512, H = 8;
    xattn_set_threads(threads);
    double peak = xa_bench_fma_peak(threads);

    float *w_in = xa_bench_rand((size_t)(3 * E * E), 1, 0.1f, 0.0f),
          *b_in = xa_bench_rand((size_t)(3 * E), 2, 0.1f, 0.0f);
    float *w_out = xa_bench_rand((size_t)(E * E), 3, 0.1f, 0.0f),
          *b_out = xa_bench_rand((size_t)E, 4, 0.1f, 0.0f);
    xattn_st_entry e[4] = {
        {"in_proj_weight", XATTN_F32, 2, {3 * E, E}, w_in},
        {"in_proj_bias", XATTN_F32, 1, {3 * E}, b_in},
        {"out_proj.weight", XATTN_F32, 2, {E, E}, w_out},
        {"out_proj.bias", XATTN_F32, 1, {E}, b_out},
    };
    char path[] = "/tmp/xattn_bench_mha_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        perror("mkstemp");
        return 1;
    }
    close(fd);
    const char *meta[] = {"heads", "8"};
    xattn_safetensors *st = NULL;
    xattn_mha *m = NULL;
    if (xattn_st_save(path, e, 4, meta, 1) || xattn_st_open(path, &st) ||
        xattn_mha_load(st, "", &(xattn_mha_opts){.heads = H}, &m)) {
        fprintf(stderr, "bench_mha: %s\n", xattn_last_error());
        remove(path);
        return 1;
    }
    remove(path);
    float *x = xa_bench_rand((size_t)(B * I * E), 5, 2.0f, 0.0f),
          *c = xa_bench_rand((size_t)(B * J * E), 6, 2.0f, 0.0f);
    float *out = malloc(sizeof(float) * (size_t)(B * I * E));
    xattn_mha_inputs in = {.B = B, .I = I, .J = J, .query = x, .key = c, .value = c};
    double *ts = malloc(sizeof(double) * (size_t)reps);
    xattn_mha_outputs o = {.out = out};
    xattn_mha_forward(NULL, m, &in, &o);
    for (int r = 0; r < reps; r++) {
        double t0 = now_seconds();
        if (xattn_mha_forward(NULL, m, &in, &o)) {
            fprintf(stderr, "bench_mha: %s\n", xattn_last_error());
            return 1;
        }
        ts[r] = now_seconds() - t0;
    }
    qsort(ts, (size_t)reps, sizeof(double), xa_bench_cmp_double);
    double t = ts[reps / 2];
    double flop = 2.0 * B * (2.0 * I * E * E + 2.0 * J * E * E) + 4.0 * B * I * J * E;
    double gf = flop / t / 1e9;
    const char *name = "mha B=1 I=1024 J=2048 E=512 heads=8";
    printf("%s: %.3f ms, %.1f GFLOP/s, %.1f%% of measured peak %.1f (%s, %d threads)\n", name,
           t * 1e3, gf, 100 * gf / peak, peak, xattn_isa(), threads);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            fprintf(stderr, "bench_mha: cannot write %s\n", json);
            return 1;
        }
        fprintf(f,
                "{\"name\": \"%s\", \"seconds\": %.6g, \"gflops\": %.4g, \"peak_gflops\": %.4g, "
                "\"threads\": %d, \"isa\": \"%s\"}\n",
                name, t, gf, peak, threads, xattn_isa());
        fclose(f);
    }
    xattn_mha_free(m);
    xattn_st_close(st);
    free(w_in);
    free(b_in);
    free(w_out);
    free(b_out);
    free(x);
    free(c);
    free(out);
    free(ts);
    return 0;
}
