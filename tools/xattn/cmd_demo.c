/*
 * xattn demo: the fused attention kernel (xattn_sdpa) on generated inputs. Prints the shapes,
 * the time, GFLOP/s, the peak resident memory and the max error of a few rows against a naive
 * float64 reference.
 *
 * Structure (kept separate so the demo's subject can change without touching the rest):
 *   demo_parse  -> demo_config       options
 *   demo_alloc / demo_fill           inputs
 *   demo_time                        timed runs of the kernel
 *   demo_check                       accuracy of sampled rows against float64
 *   demo_report                      what is printed
 */
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *CMD = "demo";

static void help(void)
{
    printf("usage: xattn demo [--len N] [--threads N] [--seed S]\n"
           "\n"
           "Runs the fused attention kernel (like F.scaled_dot_product_attention) on random\n"
           "inputs q, k, v of shape (B=1, H=8, N, 64) and prints the time, GFLOP/s (counting\n"
           "4*B*H*I*J*dh flops), the peak resident memory, and the max relative error of sampled\n"
           "rows against a naive float64 reference. The I x J score matrix is never stored.\n"
           "\n"
           "options:\n"
           "  --len N       sequence length I = J (default 4096)\n"
           "  --threads N   threads (default: all cores)\n"
           "  --seed S      random seed (default 1)\n"
           "  -h, --help    this help\n"
           "\n"
           "Exit code 1 if the sampled rows differ from the reference by more than 2e-5*(1+|ref|).\n");
}

typedef struct demo_config {
    int64_t B, H, I, J, dh;
    long long seed, threads, reps;
} demo_config;

typedef struct demo_data {
    float *q, *k, *v, *out; /* (B, H, I|J, dh), contiguous */
} demo_data;

typedef struct demo_result {
    double best_s, gflops, peak_rss, max_err;
    int rows_checked;
} demo_result;

/* ---- inputs ---- */

static int demo_alloc(const demo_config *c, demo_data *d)
{
    size_t nq = (size_t)(c->B * c->H * c->I * c->dh), nk = (size_t)(c->B * c->H * c->J * c->dh);
    d->q = malloc(nq * sizeof(float));
    d->k = malloc(nk * sizeof(float));
    d->v = malloc(nk * sizeof(float));
    d->out = malloc(nq * sizeof(float));
    return d->q && d->k && d->v && d->out ? 0 : -1;
}

static void demo_free(demo_data *d)
{
    free(d->q);
    free(d->k);
    free(d->v);
    free(d->out);
}

/* Uniform [-1, 1) from a 64-bit LCG (deterministic for a seed). */
static void fill(float *x, size_t n, uint64_t *state)
{
    for (size_t i = 0; i < n; i++) {
        *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)((double)(*state >> 11) / 4503599627370496.0 - 1.0);
    }
}

static void demo_fill(const demo_config *c, demo_data *d)
{
    uint64_t st = (uint64_t)c->seed * 0x9E3779B97F4A7C15ULL + 1;
    fill(d->q, (size_t)(c->B * c->H * c->I * c->dh), &st);
    fill(d->k, (size_t)(c->B * c->H * c->J * c->dh), &st);
    fill(d->v, (size_t)(c->B * c->H * c->J * c->dh), &st);
}

/* ---- kernel ---- */

static void demo_params(const demo_config *c, const demo_data *d, xattn_sdpa_params *p)
{
    xattn_sdpa_init(p);
    p->B = c->B, p->H = c->H, p->I = c->I, p->J = c->J, p->dh = c->dh, p->dv = c->dh;
    p->q = d->q, p->q_sb = c->H * c->I * c->dh, p->q_sh = c->I * c->dh, p->q_si = c->dh;
    p->k = d->k, p->k_sb = c->H * c->J * c->dh, p->k_sh = c->J * c->dh, p->k_sj = c->dh;
    p->v = d->v, p->v_sb = c->H * c->J * c->dh, p->v_sh = c->J * c->dh, p->v_sj = c->dh;
    p->out = d->out, p->o_sb = c->H * c->I * c->dh, p->o_sh = c->I * c->dh, p->o_si = c->dh;
}

static int demo_time(const demo_config *c, demo_data *d, demo_result *r)
{
    xattn_sdpa_params p;
    demo_params(c, d, &p);
    r->best_s = INFINITY;
    for (long long rep = 0; rep < c->reps; rep++) {
        double t0 = cli_now();
        if (xattn_sdpa(&p) != XATTN_OK) return cli_lib_error(CMD, NULL);
        double t = cli_now() - t0;
        if (t < r->best_s) r->best_s = t;
    }
    double flops = 4.0 * (double)c->B * (double)c->H * (double)c->I * (double)c->J * (double)c->dh;
    r->gflops = flops / r->best_s * 1e-9;
    r->peak_rss = cli_peak_rss_bytes();
    return 0;
}

/* ---- accuracy ---- */

/* Naive float64 attention for one (b, h, i) row; returns max |got - ref| / (1 + |ref|). */
static double check_row(const demo_config *c, const demo_data *d, int64_t b, int64_t h, int64_t i,
                        double *s)
{
    const int64_t dh = c->dh, J = c->J;
    const float *q = d->q + ((b * c->H + h) * c->I + i) * dh;
    const float *k = d->k + (b * c->H + h) * J * dh;
    const float *v = d->v + (b * c->H + h) * J * dh;
    const float *got = d->out + ((b * c->H + h) * c->I + i) * dh;
    const double scale = 1.0 / sqrt((double)dh);
    double mx = -INFINITY;
    for (int64_t j = 0; j < J; j++) {
        double acc = 0;
        for (int64_t e = 0; e < dh; e++) acc += (double)q[e] * (double)k[j * dh + e];
        s[j] = acc * scale;
        if (s[j] > mx) mx = s[j];
    }
    double sum = 0;
    for (int64_t j = 0; j < J; j++) sum += (s[j] = exp(s[j] - mx));
    double worst = 0;
    for (int64_t e = 0; e < dh; e++) {
        double ref = 0;
        for (int64_t j = 0; j < J; j++) ref += s[j] * (double)v[j * dh + e];
        ref /= sum;
        double err = fabs((double)got[e] - ref) / (1.0 + fabs(ref));
        if (!(err <= worst)) worst = isnan(err) ? INFINITY : err;
    }
    return worst;
}

static int demo_check(const demo_config *c, const demo_data *d, demo_result *r)
{
    double *s = malloc((size_t)c->J * sizeof(double));
    if (!s) return cli_error(CMD, NULL, "out of memory for the reference check");
    r->max_err = 0;
    r->rows_checked = 0;
    const int n_rows = 16;
    for (int t = 0; t < n_rows; t++) {
        int64_t b = t % c->B, h = t % c->H;
        int64_t i = t == 0 ? 0 : t == 1 ? c->I - 1 : ((int64_t)t * 7919 + 13) % c->I;
        double e = check_row(c, d, b, h, i, s);
        if (e > r->max_err) r->max_err = e;
        r->rows_checked++;
    }
    free(s);
    return 0;
}

/* ---- report ---- */

static void demo_report(const demo_config *c, const demo_result *r)
{
    const double mb = 1024.0 * 1024.0;
    printf("xattn demo: fused attention (xattn_sdpa), kernels %s, threads %d\n", xattn_isa(),
           xattn_get_threads());
    printf("  q (%lld, %lld, %lld, %lld)  k, v (%lld, %lld, %lld, %lld)  ->  out (%lld, %lld, "
           "%lld, %lld)\n",
           (long long)c->B, (long long)c->H, (long long)c->I, (long long)c->dh, (long long)c->B,
           (long long)c->H, (long long)c->J, (long long)c->dh, (long long)c->B, (long long)c->H,
           (long long)c->I, (long long)c->dh);
    printf("  time %.3f ms (best of %lld), %.1f GFLOP/s\n", r->best_s * 1e3, c->reps, r->gflops);
    double inputs = 4.0 * (double)c->B * (double)c->H * (double)(c->I + c->J) * (double)c->dh;
    double scores = 4.0 * (double)c->B * (double)c->H * (double)c->I * (double)c->J;
    printf("  peak RSS %.1f MB (q, k, v, out %.1f MB; a materialised score matrix would add "
           "%.1f MB)\n",
           r->peak_rss / mb, inputs / mb, scores / mb);
    printf("  check: %d rows against a float64 reference, max rel error %.3g (%s)\n",
           r->rows_checked, r->max_err, r->max_err <= 2e-5 ? "ok" : "TOO LARGE");
}

int cmd_demo(int argc, char **argv)
{
    demo_config c = {1, 8, 4096, 4096, 64, 1, 0, 3};
    long long len = 4096;
    const cli_option opts[] = {
        {"--len", CLI_INT, &len, 1, 65536},
        {"--threads", CLI_INT, &c.threads, 1, 4096},
        {"--seed", CLI_INT, &c.seed, 0, (long long)1 << 62},
    };
    int n_pos;
    cli_parse_result pr = cli_parse(CMD, argc, argv, opts, sizeof opts / sizeof opts[0], NULL, 0,
                                    &n_pos);
    if (pr == CLI_HELP) {
        help();
        return CLI_EXIT_OK;
    }
    if (pr != CLI_PARSED) return CLI_EXIT_USAGE;
    c.I = c.J = len;
    if (c.threads > 0) xattn_set_threads((int)c.threads);

    demo_data d;
    memset(&d, 0, sizeof d);
    demo_result r;
    memset(&r, 0, sizeof r);
    int rc = 0;
    if (demo_alloc(&c, &d) != 0)
        rc = cli_error(CMD, NULL, "out of memory for inputs of length %lld", len);
    if (!rc) {
        demo_fill(&c, &d);
        rc = demo_time(&c, &d, &r);
    }
    if (!rc) rc = demo_check(&c, &d, &r);
    if (!rc) {
        demo_report(&c, &r);
        if (!(r.max_err <= 2e-5))
            rc = cli_error(CMD, NULL, "max rel error %.3g exceeds 2e-5", r.max_err);
    }
    demo_free(&d);
    return rc;
}
