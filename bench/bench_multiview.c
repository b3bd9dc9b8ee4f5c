/*
 * M6 multiscale multiview cross-attention forward (xattn_multiview_forward) on an MMViT-like
 * configuration: V=3 views of 1024, 512 and 768 tokens, B=2, three stages of widths 96, 192, 384
 * with 2, 4, 8 heads and MLP ratio 4 (pooling 2x between stages). Random weights.
 * bench/torch_multiview.py runs the same composition in PyTorch under the same "name".
 *
 *   bench_multiview [--threads N] [--reps N] [--json FILE]
 */
#include "peak.h"
#include "xattn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define V 3
#define S 3

int main(int argc, char **argv)
{
    int threads = 2, reps = 5;
    const char *json = NULL;
    if (xa_bench_args(argc, argv, "bench_multiview", &threads, &reps, &json)) return 2;
    const int64_t B = 2, dims[S] = {96, 192, 384}, tokens[V] = {1024, 512, 768};
    xattn_set_threads(threads);

    /* state dict: names of docs/multiview.md */
    static const char *const lin[] = {
        "self_attn.in_proj",   "self_attn.out_proj", "mlp.0",       "mlp.2", "cross_attn.in_proj",
        "cross_attn.out_proj", "cross_mlp.0",        "cross_mlp.2", "expand"};
    static const char *const norms[] = {"norm1", "norm2", "cross_norm_q", "cross_norm_kv",
                                        "cross_norm2"};
    enum { MAXE = S * V * 32 };
    xattn_st_entry *e = calloc(MAXE, sizeof *e);
    char(*names)[96] = calloc(MAXE, 96);
    float **bufs = calloc(MAXE, sizeof *bufs);
    int n = 0;
    uint64_t seed = 7;
    for (int s = 0; s < S; s++)
        for (int v = 0; v < V; v++) {
            const int64_t C = dims[s], Hd = 4 * C;
            for (int k = 0; k < 9; k++) {
                if (k == 8 && s == 0) continue;
                int64_t rows = C, cols = C;
                if (k == 0 || k == 4) rows = 3 * C;
                if (k == 2 || k == 6) rows = Hd;
                if (k == 3 || k == 7) cols = Hd;
                if (k == 8) cols = dims[s - 1];
                int packed = (k == 0 || k == 4);
                for (int wb = 0; wb < 2; wb++) {
                    snprintf(names[n], 96, "stages.%d.views.%d.%s%s", s, v, lin[k],
                             packed ? (wb ? "_bias" : "_weight") : (wb ? ".bias" : ".weight"));
                    size_t cnt = (size_t)(wb ? rows : rows * cols);
                    bufs[n] = xa_bench_rand(cnt, seed++, wb ? 0.1f : 2.0f / (float)cols, 0.0f);
                    e[n].name = names[n];
                    e[n].dtype = XATTN_F32;
                    e[n].ndim = wb ? 1 : 2;
                    e[n].shape[0] = rows;
                    e[n].shape[1] = cols;
                    e[n].data = bufs[n];
                    n++;
                }
            }
            for (int k = 0; k < 5; k++)
                for (int wb = 0; wb < 2; wb++) {
                    snprintf(names[n], 96, "stages.%d.views.%d.%s.%s", s, v, norms[k],
                             wb ? "bias" : "weight");
                    bufs[n] = xa_bench_rand((size_t)C, seed++, 0.2f, 0.0f);
                    if (!wb)
                        for (int64_t i = 0; i < C; i++) bufs[n][i] += 1.0f;
                    e[n].name = names[n];
                    e[n].dtype = XATTN_F32;
                    e[n].ndim = 1;
                    e[n].shape[0] = C;
                    e[n].data = bufs[n];
                    n++;
                }
        }
    char path[] = "/tmp/xattn_bench_multiview_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        perror("mkstemp");
        return 1;
    }
    close(fd);
    const char *meta[] = {"heads", "2,4,8"};
    xattn_safetensors *st = NULL;
    xattn_multiview *m = NULL;
    if (xattn_st_save(path, e, (size_t)n, meta, 1) || xattn_st_open(path, &st) ||
        xattn_multiview_load(st, "", NULL, &m)) {
        fprintf(stderr, "bench_multiview: %s\n", xattn_last_error());
        remove(path);
        return 1;
    }
    remove(path);
    const float *x[V];
    float *out[V];
    for (int v = 0; v < V; v++) {
        int64_t on = 0;
        xattn_multiview_out_tokens(m, tokens[v], &on);
        x[v] = xa_bench_rand((size_t)(B * tokens[v] * dims[0]), 100 + (uint64_t)v, 2.0f, 0.0f);
        out[v] = malloc(sizeof(float) * (size_t)(B * on * dims[S - 1]));
    }
    double *ts = malloc(sizeof(double) * (size_t)reps);
    const xattn_multiview_inputs mi = {.B = B, .n_views = V, .tokens = tokens, .x = x};
    const xattn_multiview_outputs mo = {.out = out};
    if (xattn_multiview_forward(NULL, m, &mi, &mo)) {
        fprintf(stderr, "bench_multiview: %s\n", xattn_last_error());
        return 1;
    }
    for (int r = 0; r < reps; r++) {
        double t0 = now_seconds();
        if (xattn_multiview_forward(NULL, m, &mi, &mo)) {
            fprintf(stderr, "bench_multiview: %s\n", xattn_last_error());
            return 1;
        }
        ts[r] = now_seconds() - t0;
    }
    qsort(ts, (size_t)reps, sizeof(double), xa_bench_cmp_double);
    double t = ts[reps / 2];
    const char *name = "multiview V=3 B=2 N=1024,512,768 C=96,192,384 heads=2,4,8 mlp=4";
    printf("%s: %.3f ms (median of %d, %s, %d threads)\n", name, t * 1e3, reps, xattn_isa(),
           threads);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            fprintf(stderr, "bench_multiview: cannot write %s\n", json);
            return 1;
        }
        fprintf(f, "{\"name\": \"%s\", \"seconds\": %.6g, \"threads\": %d, \"isa\": \"%s\"}\n",
                name, t, threads, xattn_isa());
        fclose(f);
    }
    xattn_multiview_free(m);
    xattn_st_close(st);
    for (int i = 0; i < n; i++) free(bufs[i]);
    for (int v = 0; v < V; v++) {
        free((void *)x[v]);
        free(out[v]);
    }
    free(bufs);
    free(names);
    free(e);
    free(ts);
    return 0;
}
