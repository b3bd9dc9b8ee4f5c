/*
 * Fused attention benchmark: xattn_sdpa at B=1, H=8, I=J=4096, dh=64 (and a causal and a decode
 * shape), GFLOP/s and % of the fp32 FMA peak that this program measures itself.
 *
 *   bench_attention [--threads N] [--seq N] [--reps N] [--json FILE]
 *
 * FLOPs counted as 4*B*H*I*J*dh (two matrix products; causal: half of that), the same count
 * bench/torch_ref.py uses for torch.nn.functional.scaled_dot_product_attention. The backward
 * (xattn_sdpa_backward: dq, dk, dv from the forward's out and log-sum-exp, the forward not
 * timed) counts 10*B*H*I*J*dh, the five matrix products of FlashAttention-2's backward (the
 * recomputation of the logits in the second pass is not counted).
 */
#include "peak.h"
#include "xattn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct shape {
    const char *name;
    int64_t B, H, I, J, dh;
    int causal;
    int backward;
} shape;

static double run(const shape *s, int reps)
{
    size_t nq = (size_t)(s->B * s->H * s->I * s->dh), nk = (size_t)(s->B * s->H * s->J * s->dh);
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4), *o = malloc(nq * 4);
    uint64_t r = 1;
    for (size_t i = 0; i < nq; i++)
        q[i] = (float)((r = r * 6364136223846793005ULL + 1) >> 40) / 16777216.0f - 0.5f;
    for (size_t i = 0; i < nk; i++)
        k[i] = (float)((r = r * 6364136223846793005ULL + 1) >> 40) / 16777216.0f - 0.5f;
    for (size_t i = 0; i < nk; i++)
        v[i] = (float)((r = r * 6364136223846793005ULL + 1) >> 40) / 16777216.0f - 0.5f;
    xattn_sdpa_params p;
    xattn_sdpa_init(&p);
    p.B = s->B;
    p.H = s->H;
    p.I = s->I;
    p.J = s->J;
    p.dh = p.dv = s->dh;
    /* (B, H, N, d) contiguous, as torch's SDPA takes it */
    p.q = q;
    p.q_sb = s->H * s->I * s->dh;
    p.q_sh = s->I * s->dh;
    p.q_si = s->dh;
    p.k = k;
    p.k_sb = s->H * s->J * s->dh;
    p.k_sh = s->J * s->dh;
    p.k_sj = s->dh;
    p.v = v;
    p.v_sb = p.k_sb;
    p.v_sh = p.k_sh;
    p.v_sj = s->dh;
    p.out = o;
    p.o_sb = p.q_sb;
    p.o_sh = p.q_sh;
    p.o_si = s->dh;
    p.causal = s->causal;
    float *lse = malloc(sizeof(float) * (size_t)(s->B * s->H * s->I));
    float *dout = malloc(nq * 4), *dq = malloc(nq * 4), *dk = malloc(nk * 4), *dv = malloc(nk * 4);
    for (size_t i = 0; i < nq; i++)
        dout[i] = (float)((r = r * 6364136223846793005ULL + 1) >> 40) / 16777216.0f - 0.5f;
    p.lse = lse;
    xattn_sdpa_grads g;
    xattn_sdpa_grads_init(&g);
    g.dout = dout, g.do_sb = p.o_sb, g.do_sh = p.o_sh, g.do_si = p.o_si;
    g.dq = dq, g.dq_sb = p.q_sb, g.dq_sh = p.q_sh, g.dq_si = p.q_si;
    g.dk = dk, g.dk_sb = p.k_sb, g.dk_sh = p.k_sh, g.dk_sj = p.k_sj;
    g.dv = dv, g.dv_sb = p.v_sb, g.dv_sh = p.v_sh, g.dv_sj = p.v_sj;
    double *ts = malloc(sizeof(double) * (size_t)reps);
    if (xattn_sdpa(&p) != XATTN_OK || (s->backward && xattn_sdpa_backward(&p, &g) != XATTN_OK)) {
        fprintf(stderr, "bench_attention: %s\n", xattn_last_error()); /* warm-up */
        exit(1);
    }
    for (int i = 0; i < reps; i++) {
        double t0 = now_seconds();
        if (s->backward)
            xattn_sdpa_backward(&p, &g);
        else
            xattn_sdpa(&p);
        ts[i] = now_seconds() - t0;
    }
    free(lse), free(dout), free(dq), free(dk), free(dv);
    qsort(ts, (size_t)reps, sizeof(double), xa_bench_cmp_double);
    double med = ts[reps / 2];
    free(ts);
    free(q);
    free(k);
    free(v);
    free(o);
    return med;
}

int main(int argc, char **argv)
{
    int threads = 2, reps = 7;
    int64_t seq = 4096;
    const char *json = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seq") && i + 1 < argc)
            seq = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = argv[++i];
        else {
            fprintf(stderr,
                    "usage: bench_attention [--threads N] [--seq N] [--reps N] [--json FILE]\n");
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    xattn_set_threads(threads);
    double peak = xa_bench_fma_peak(threads);
    printf("isa %s, threads %d, measured fp32 FMA peak %.1f GFLOP/s\n", xattn_isa(), threads, peak);
    shape shapes[] = {
        {"sdpa", 1, 8, seq, seq, 64, 0, 0},
        {"sdpa causal", 1, 8, seq, seq, 64, 1, 0},
        {"sdpa decode I=1", 1, 8, 1, seq, 64, 0, 0},
        {"sdpa backward", 1, 8, seq, seq, 64, 0, 1},
        {"sdpa causal backward", 1, 8, seq, seq, 64, 1, 1},
    };
    FILE *jf = json ? fopen(json, "w") : NULL;
    if (json && !jf) {
        fprintf(stderr, "bench_attention: cannot write %s\n", json);
        return 1;
    }
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const shape *s = &shapes[i];
        double t = run(s, reps);
        double flop = (s->backward ? 10.0 : 4.0) * (double)(s->B * s->H * s->I) * (double)s->J *
                      (double)s->dh;
        if (s->causal) flop *= 0.5;
        double gf = flop / t / 1e9;
        printf(
            "%-18s B=%lld H=%lld I=%lld J=%lld dh=%lld  %9.3f ms  %7.1f GFLOP/s  %5.1f%% of peak\n",
            s->name, (long long)s->B, (long long)s->H, (long long)s->I, (long long)s->J,
            (long long)s->dh, t * 1e3, gf, 100.0 * gf / peak);
        if (jf)
            fprintf(jf,
                    "{\"name\": \"%s B=%lld H=%lld I=%lld J=%lld dh=%lld\", \"seconds\": %.6g, "
                    "\"gflops\": %.4g, \"peak_gflops\": %.4g, \"threads\": %d, \"isa\": \"%s\"}\n",
                    s->name, (long long)s->B, (long long)s->H, (long long)s->I, (long long)s->J,
                    (long long)s->dh, t, gf, peak, threads, xattn_isa());
    }
    const char *src;
    double rss = xa_bench_peak_rss_mb(&src);
    printf("peak RSS %.1f MB (%s)\n", rss, src);
    if (jf) fclose(jf);
    return 0;
}
