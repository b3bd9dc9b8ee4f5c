/*
 * M5 interlaced two-stream decoder (InterlanceDecoder of 2D-3D MIT) forward, mlp_ratio 0.2 and
 * n_cls 20 (the reference defaults), at two sizes; the same work as bench/torch_interlaced.py.
 *
 *   bench_interlaced [--threads N] [--reps N] [--json FILE]
 */
#include "peak.h"
#include "xattn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct cfg {
    int64_t depth, D, H, n_cls, B, I, J;
} cfg;

/* Builds a random state dict in a temporary file and loads it. */
static xattn_interlaced *make_model(const cfg *c, float **bufs, int *nbuf)
{
    static const char *names[] = {
        "norm1.weight",        "norm1.bias",        "self_attn.qkv.weight", "self_attn.proj.weight",
        "self_attn.proj.bias", "norm_q.weight",     "norm_q.bias",          "norm_v.weight",
        "norm_v.bias",         "attn.q_map.weight", "attn.k_map.weight",    "attn.v_map.weight",
        "attn.proj.weight",    "attn.proj.bias",    "norm2.weight",         "norm2.bias",
        "mlp.fc1.weight",      "mlp.fc1.bias",      "mlp.fc2.weight",       "mlp.fc2.bias"};
    const int nper = (int)(sizeof names / sizeof names[0]);
    const int64_t D = c->D, Hd = (int64_t)((double)D * 0.2);
    int n = (int)c->depth * nper;
    xattn_st_entry *e = calloc((size_t)n, sizeof *e);
    char(*full)[96] = calloc((size_t)n, sizeof *full);
    int k = 0;
    for (int64_t L = 0; L < c->depth; L++)
        for (int t = 0; t < nper; t++, k++) {
            const char *nm = names[t];
            int64_t s0 = D, s1 = 0;
            if (!strcmp(nm, "self_attn.qkv.weight")) {
                s0 = 3 * D;
                s1 = D;
            } else if (strstr(nm, "map.weight") || strstr(nm, "proj.weight"))
                s1 = D;
            else if (!strcmp(nm, "mlp.fc1.weight")) {
                s0 = Hd;
                s1 = D;
            } else if (!strcmp(nm, "mlp.fc1.bias"))
                s0 = Hd;
            else if (!strcmp(nm, "mlp.fc2.weight"))
                s1 = Hd;
            snprintf(full[k], sizeof full[k], "blocks.%lld.%s", (long long)L, nm);
            size_t numel = (size_t)(s0 * (s1 ? s1 : 1));
            int is_norm_w = strstr(nm, "norm") && strstr(nm, "weight");
            bufs[*nbuf] = xa_bench_rand(numel, (uint64_t)(k + 11), is_norm_w ? 0.2f : 0.2f,
                                        is_norm_w ? 1.0f : 0.0f);
            e[k].name = full[k];
            e[k].dtype = XATTN_F32;
            e[k].ndim = s1 ? 2 : 1;
            e[k].shape[0] = s0;
            e[k].shape[1] = s1;
            e[k].data = bufs[(*nbuf)++];
        }
    char path[] = "/tmp/xattn_bench_interlaced_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        perror("mkstemp");
        exit(1);
    }
    close(fd);
    xattn_safetensors *st = NULL;
    xattn_interlaced *m = NULL;
    xattn_interlaced_opts o;
    memset(&o, 0, sizeof o);
    o.heads = c->H;
    o.n_cls = c->n_cls;
    o.has_n_cls = 1;
    if (xattn_st_save(path, e, (size_t)n, NULL, 0) || xattn_st_open(path, &st) ||
        xattn_interlaced_load(st, "", &o, &m)) {
        fprintf(stderr, "bench_interlaced: %s\n", xattn_last_error());
        remove(path);
        exit(1);
    }
    remove(path);
    xattn_st_close(st);
    free(e);
    free(full);
    return m;
}

int main(int argc, char **argv)
{
    int threads = 2, reps = 7;
    const char *json = NULL;
    if (xa_bench_args(argc, argv, "bench_interlaced", &threads, &reps, &json)) return 2;
    xattn_set_threads(threads);
    const cfg cfgs[] = {{4, 192, 6, 20, 1, 1044, 532}, {2, 96, 6, 20, 4, 148, 84}};
    FILE *f = NULL;
    if (json && !(f = fopen(json, "w"))) {
        fprintf(stderr, "bench_interlaced: cannot write %s\n", json);
        return 1;
    }
    for (size_t ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++) {
        const cfg *c = &cfgs[ci];
        float *bufs[512];
        int nbuf = 0;
        xattn_interlaced *m = make_model(c, bufs, &nbuf);
        float *x = xa_bench_rand((size_t)(c->B * c->I * c->D), 5, 4.0f, 0.0f);
        float *ctx = xa_bench_rand((size_t)(c->B * c->J * c->D), 6, 4.0f, 0.0f);
        float *o = malloc(sizeof(float) * (size_t)(c->B * c->I * c->D));
        float *co = malloc(sizeof(float) * (size_t)(c->B * c->J * c->D));
        double *ts = malloc(sizeof(double) * (size_t)reps);
        xattn_interlaced_inputs in = {.B = c->B, .I = c->I, .J = c->J, .x = x, .context = ctx};
        xattn_interlaced_outputs outs = {.out = o, .context_out = co};
        xattn_interlaced_forward(NULL, m, &in, &outs);
        for (int r = 0; r < reps; r++) {
            double t0 = now_seconds();
            if (xattn_interlaced_forward(NULL, m, &in, &outs)) {
                fprintf(stderr, "bench_interlaced: %s\n", xattn_last_error());
                return 1;
            }
            ts[r] = now_seconds() - t0;
        }
        qsort(ts, (size_t)reps, sizeof(double), xa_bench_cmp_double);
        double t = ts[reps / 2];
        char name[160];
        snprintf(name, sizeof name,
                 "interlaced depth=%lld D=%lld heads=%lld n_cls=%lld B=%lld "
                 "I=%lld J=%lld",
                 (long long)c->depth, (long long)c->D, (long long)c->H, (long long)c->n_cls,
                 (long long)c->B, (long long)c->I, (long long)c->J);
        printf("%s: %.3f ms (%s, %d threads)\n", name, t * 1e3, xattn_isa(), threads);
        if (f)
            fprintf(f, "{\"name\": \"%s\", \"seconds\": %.6g, \"threads\": %d, \"isa\": \"%s\"}\n",
                    name, t, threads, xattn_isa());
        xattn_interlaced_free(m);
        for (int b = 0; b < nbuf; b++) free(bufs[b]);
        free(x);
        free(ctx);
        free(o);
        free(co);
        free(ts);
    }
    if (f) fclose(f);
    return 0;
}
