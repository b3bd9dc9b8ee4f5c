/*
 * M4 joint (stacked) cross-attention: nn.TransformerEncoder forward over [x; context].
 *
 *   bench_joint [--threads N] [--reps N] [--json FILE]
 * Configurations (the same in bench/torch_joint.py, same "name" strings):
 *   MMCA-like  B=8 K=36 N=32 d=512 heads=8 ff=2048 layers=2, post-norm relu, padding masks
 *              (item b: last b%4 words padded)
 *   long       B=1 K=1024 N=1024 d=256 heads=8 ff=1024 layers=1, pre-norm gelu, no masks
 * FLOPs per layer: 2*R*(3d*d + d*d + 2*d*ff) + 4*B*L*L*d, R = B*L, L = K+N.
 */
#include "peak.h"
#include "xattn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct cfg {
    const char *name;
    int64_t B, K, N, d, H, ff, layers;
    int norm_first, gelu, masks;
} cfg;

static int run_cfg(const cfg *c, int threads, int reps, FILE *json, double peak)
{
    const int64_t d = c->d, ff = c->ff;
    enum { PER = 12 };
    xattn_st_entry *e = calloc((size_t)(c->layers * PER), sizeof *e);
    char(*names)[64] = calloc((size_t)(c->layers * PER), 64);
    float **bufs = calloc((size_t)(c->layers * PER), sizeof(float *));
    static const char *const nm[PER] = {"self_attn.in_proj_weight",
                                        "self_attn.in_proj_bias",
                                        "self_attn.out_proj.weight",
                                        "self_attn.out_proj.bias",
                                        "linear1.weight",
                                        "linear1.bias",
                                        "linear2.weight",
                                        "linear2.bias",
                                        "norm1.weight",
                                        "norm1.bias",
                                        "norm2.weight",
                                        "norm2.bias"};
    const int64_t shp[PER][2] = {{3 * d, d}, {3 * d, 0}, {d, d}, {d, 0}, {ff, d}, {ff, 0},
                                 {d, ff},    {d, 0},     {d, 0}, {d, 0}, {d, 0},  {d, 0}};
    int n = 0;
    for (int64_t l = 0; l < c->layers; l++)
        for (int k = 0; k < PER; k++, n++) {
            snprintf(names[n], 64, "layers.%lld.%s", (long long)l, nm[k]);
            int64_t numel = shp[k][0] * (shp[k][1] ? shp[k][1] : 1);
            int is_norm_w = k == 8 || k == 10;
            bufs[n] = xa_bench_rand((size_t)numel, (uint64_t)(n + 1), shp[k][1] ? 0.1f : 0.05f,
                                    is_norm_w ? 1.0f : 0.0f);
            e[n].name = names[n];
            e[n].dtype = XATTN_F32;
            e[n].ndim = shp[k][1] ? 2 : 1;
            e[n].shape[0] = shp[k][0];
            e[n].shape[1] = shp[k][1];
            e[n].data = bufs[n];
        }
    char path[] = "/tmp/xattn_bench_joint_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return 1;
    close(fd);
    char heads[16];
    snprintf(heads, sizeof heads, "%lld", (long long)c->H);
    const char *meta[] = {"heads",      heads,
                          "norm_first", c->norm_first ? "True" : "False",
                          "activation", c->gelu ? "gelu" : "relu"};
    xattn_safetensors *st = NULL;
    xattn_joint *m = NULL;
    if (xattn_st_save(path, e, (size_t)n, meta, 3) || xattn_st_open(path, &st) ||
        xattn_joint_load(st, "", NULL, &m)) {
        fprintf(stderr, "bench_joint: %s\n", xattn_last_error());
        remove(path);
        return 1;
    }
    remove(path);
    const int64_t B = c->B, K = c->K, N = c->N, L = K + N;
    float *x = xa_bench_rand((size_t)(B * K * d), 101, 2.0f, 0),
          *ctx = xa_bench_rand((size_t)(B * N * d), 102, 2.0f, 0);
    float *out = malloc(sizeof(float) * (size_t)(B * K * d));
    float *cout = malloc(sizeof(float) * (size_t)(B * N * d));
    uint8_t *xm = calloc((size_t)(B * K), 1), *cm = calloc((size_t)(B * N), 1);
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = N - b % 4; j < N; j++) cm[b * N + j] = 1;
    xattn_joint_inputs in = {.B = B, .K = K, .N = N, .x = x, .context = ctx};
    xattn_joint_outputs outs = {.out = out, .context_out = cout};
    if (c->masks) {
        in.x_padding_mask = xm;
        in.context_padding_mask = cm;
    }
    double *ts = malloc(sizeof(double) * (size_t)reps);
    xattn_joint_forward(NULL, m, &in, &outs);
    for (int r = 0; r < reps; r++) {
        double t0 = now_seconds();
        if (xattn_joint_forward(NULL, m, &in, &outs)) {
            fprintf(stderr, "bench_joint: %s\n", xattn_last_error());
            return 1;
        }
        ts[r] = now_seconds() - t0;
    }
    qsort(ts, (size_t)reps, sizeof(double), xa_bench_cmp_double);
    double t = ts[reps / 2];
    double R = (double)B * L;
    double flop =
        c->layers * (2.0 * R * (4.0 * d * d + 2.0 * d * ff) + 4.0 * B * (double)L * L * d);
    double gf = flop / t / 1e9;
    printf("%s: %.3f ms, %.1f GFLOP/s, %.1f%% of measured peak %.1f (%s, %d threads)\n", c->name,
           t * 1e3, gf, 100 * gf / peak, peak, xattn_isa(), threads);
    if (json)
        fprintf(json,
                "{\"name\": \"%s\", \"seconds\": %.6g, \"gflops\": %.4g, \"peak_gflops\": %.4g, "
                "\"threads\": %d, \"isa\": \"%s\"}\n",
                c->name, t, gf, peak, threads, xattn_isa());
    xattn_joint_free(m);
    xattn_st_close(st);
    for (int i = 0; i < n; i++) free(bufs[i]);
    free(bufs);
    free(names);
    free(e);
    free(x);
    free(ctx);
    free(out);
    free(cout);
    free(xm);
    free(cm);
    free(ts);
    return 0;
}

int main(int argc, char **argv)
{
    int threads = 2, reps = 7;
    const char *json = NULL;
    if (xa_bench_args(argc, argv, "bench_joint", &threads, &reps, &json)) return 2;
    xattn_set_threads(threads);
    double peak = xa_bench_fma_peak(threads);
    const cfg cfgs[] = {
        {"joint mmca B=8 K=36 N=32 d=512 heads=8 ff=2048 layers=2 post relu masks", 8, 36, 32, 512,
         8, 2048, 2, 0, 0, 1},
        {"joint long B=1 K=1024 N=1024 d=256 heads=8 ff=1024 layers=1 pre gelu", 1, 1024, 1024, 256,
         8, 1024, 1, 1, 1, 0},
    };
    FILE *f = NULL;
    if (json && !(f = fopen(json, "w"))) {
        fprintf(stderr, "bench_joint: cannot write %s\n", json);
        return 1;
    }
    int rc = 0;
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0] && !rc; i++)
        rc = run_cfg(&cfgs[i], threads, reps, f, peak);
    if (f) fclose(f);
    return rc;
}
