/*
 * BERT decoder layers (causal self-attention + cross-attention + FFN) with a KV cache.
 *
 *   bench_decoder [--threads N] [--reps N] [--json FILE]
 * Configurations (the same "name" strings in bench/torch_decoder.py), hidden 256, heads 4,
 * intermediate 1024, 2 layers, memory M = 64:
 *   full          B=4 T=128: one full-sequence forward (causal + cross + FFN)
 *   incremental   B=1, 256 tokens decoded one at a time with the K/V cache (set_memory included);
 *                 seconds for all 256 tokens
 *   recompute     B=1, 256 tokens, recomputing the full forward over t tokens at every step
 *                 t = 1..256 (what decoding without a cache costs); C only
 */
#include "peak.h"
#include "xattn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define D      256
#define HEADS  4
#define FF     1024
#define LAYERS 2
#define MEM    64
#define STEPS  256

static const char *const NM[26] = {"attention.self.query.weight",
                                   "attention.self.key.weight",
                                   "attention.self.value.weight",
                                   "attention.self.query.bias",
                                   "attention.self.key.bias",
                                   "attention.self.value.bias",
                                   "attention.output.dense.weight",
                                   "attention.output.dense.bias",
                                   "attention.output.LayerNorm.weight",
                                   "attention.output.LayerNorm.bias",
                                   "crossattention.self.query.weight",
                                   "crossattention.self.key.weight",
                                   "crossattention.self.value.weight",
                                   "crossattention.self.query.bias",
                                   "crossattention.self.key.bias",
                                   "crossattention.self.value.bias",
                                   "crossattention.output.dense.weight",
                                   "crossattention.output.dense.bias",
                                   "crossattention.output.LayerNorm.weight",
                                   "crossattention.output.LayerNorm.bias",
                                   "intermediate.dense.weight",
                                   "intermediate.dense.bias",
                                   "output.dense.weight",
                                   "output.dense.bias",
                                   "output.LayerNorm.weight",
                                   "output.LayerNorm.bias"};

static xattn_decoder *make_model(void)
{
    enum { N = LAYERS * 26 };
    xattn_st_entry e[N];
    char names[N][80];
    float *bufs[N];
    int n = 0;
    for (int l = 0; l < LAYERS; l++)
        for (int k = 0; k < 26; k++, n++) {
            const char *nm = NM[k];
            int is2d = strstr(nm, "weight") && !strstr(nm, "LayerNorm");
            int64_t r = D, c = is2d ? D : 0;
            if (!strcmp(nm, "intermediate.dense.weight")) r = FF;
            if (!strcmp(nm, "intermediate.dense.bias")) r = FF;
            if (!strcmp(nm, "output.dense.weight")) c = FF;
            snprintf(names[n], sizeof names[n], "layer.%d.%s", l, nm);
            int lnw = strstr(nm, "LayerNorm.weight") != NULL;
            bufs[n] = xa_bench_rand((size_t)(r * (c ? c : 1)), (uint64_t)(n + 1), c ? 0.06f : 0.05f,
                                    lnw ? 1.0f : 0.0f);
            e[n].name = names[n];
            e[n].dtype = XATTN_F32;
            e[n].ndim = c ? 2 : 1;
            e[n].shape[0] = r;
            e[n].shape[1] = c;
            e[n].data = bufs[n];
        }
    char path[] = "/tmp/xattn_bench_decoder_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return NULL;
    close(fd);
    char heads[16];
    snprintf(heads, sizeof heads, "%d", HEADS);
    const char *meta[] = {"heads", heads};
    xattn_safetensors *st = NULL;
    xattn_decoder *m = NULL;
    if (xattn_st_save(path, e, (size_t)n, meta, 1) || xattn_st_open(path, &st) ||
        xattn_decoder_load(st, "", NULL, &m))
        fprintf(stderr, "bench_decoder: %s\n", xattn_last_error());
    remove(path);
    xattn_st_close(st);
    for (int i = 0; i < n; i++) free(bufs[i]);
    return m;
}

static void report(FILE *json, const char *name, double t, double flop, int threads)
{
    double gf = flop > 0 ? flop / t / 1e9 : 0;
    printf("%s: %.3f ms%s", name, t * 1e3, flop > 0 ? "" : "\n");
    if (flop > 0) printf(", %.1f GFLOP/s (%s, %d threads)\n", gf, xattn_isa(), threads);
    if (json) {
        fprintf(json, "{\"name\": \"%s\", \"seconds\": %.6g, ", name, t);
        if (flop > 0) fprintf(json, "\"gflops\": %.4g, ", gf);
        fprintf(json, "\"threads\": %d, \"isa\": \"%s\"}\n", threads, xattn_isa());
    }
}

/* FLOPs of T query rows over J self keys and M memory keys, per batch item and layer */
static double layer_flop(double T, double J, double M)
{
    return 2.0 * T * (6.0 * D * D + 2.0 * D * FF) + 4.0 * T * J * D + 4.0 * T * M * D;
}

int main(int argc, char **argv)
{
    int threads = 2, reps = 5;
    const char *json = NULL;
    if (xa_bench_args(argc, argv, "bench_decoder", &threads, &reps, &json)) return 2;
    xattn_set_threads(threads);
    FILE *f = NULL;
    if (json && !(f = fopen(json, "w"))) {
        fprintf(stderr, "bench_decoder: cannot write %s\n", json);
        return 1;
    }
    xattn_decoder *m = make_model();
    if (!m) return 1;
    double *ts = malloc(sizeof(double) * (size_t)reps);
    int rc = 0;

    /* ---- full forward ---- */
    {
        const int64_t B = 4, T = 128;
        float *x = xa_bench_rand((size_t)(B * T * D), 101, 1.0f, 0);
        float *mem = xa_bench_rand((size_t)(B * MEM * D), 102, 1.0f, 0);
        float *out = malloc(sizeof(float) * (size_t)(B * T * D));
        xattn_decoder_inputs in = {B, T, MEM, x, NULL, mem, NULL, {0}};
        xattn_decoder_outputs o = {out, {0}};
        rc |= xattn_decoder_forward(NULL, m, &in, &o);
        for (int r = 0; r < reps && !rc; r++) {
            double t0 = now_seconds();
            rc |= xattn_decoder_forward(NULL, m, &in, &o);
            ts[r] = now_seconds() - t0;
        }
        double flop = B * LAYERS * (layer_flop(T, T / 2.0, MEM) + 4.0 * MEM * D * D);
        if (!rc)
            report(f, "decoder full B=4 T=128 M=64 d=256 heads=4 ff=1024 layers=2",
                   xa_bench_median(ts, reps), flop, threads);
        free(x);
        free(mem);
        free(out);
    }
    /* ---- incremental vs recompute, B=1, 256 tokens ---- */
    {
        float *x = xa_bench_rand((size_t)(STEPS * D), 201, 1.0f, 0);
        float *mem = xa_bench_rand((size_t)(MEM * D), 202, 1.0f, 0);
        float *out = malloc(sizeof(float) * (size_t)(STEPS * D));
        xattn_decoder_state *s = NULL;
        rc |= xattn_decoder_state_new(m, 1, STEPS, 1, &s);
        for (int r = 0; r <= reps && !rc; r++) { /* r = 0: warm-up */
            double t0 = now_seconds();
            rc |= xattn_decoder_set_memory(NULL, s, MEM, mem, NULL);
            for (int t = 0; t < STEPS && !rc; t++)
                rc |= xattn_decoder_step(NULL, s, 1, x + t * D, NULL, out + t * D);
            if (r) ts[r - 1] = now_seconds() - t0;
        }
        double inc = rc ? 0 : xa_bench_median(ts, reps);
        if (!rc)
            report(f, "decoder incremental 256 tokens B=1 M=64 d=256 heads=4 ff=1024 layers=2", inc,
                   0, threads);
        double t0 = now_seconds();
        for (int t = 1; t <= STEPS && !rc; t++) {
            xattn_decoder_inputs in = {1, t, MEM, x, NULL, mem, NULL, {0}};
            xattn_decoder_outputs o = {out, {0}};
            rc |= xattn_decoder_forward(NULL, m, &in, &o);
        }
        double rec = now_seconds() - t0;
        if (!rc) {
            report(f, "decoder recompute 256 tokens B=1 M=64 d=256 heads=4 ff=1024 layers=2", rec,
                   0, threads);
            printf("incremental: %.1f us/token; recompute / incremental = %.1fx\n",
                   inc / STEPS * 1e6, rec / inc);
        }
        xattn_decoder_state_free(s);
        free(x);
        free(mem);
        free(out);
    }
    if (rc) fprintf(stderr, "bench_decoder: %s\n", xattn_last_error());
    xattn_decoder_free(m);
    free(ts);
    if (f) fclose(f);
    return rc ? 1 : 0;
}
