/*
 * Fused attention (xattn_sdpa):
 *   1. fixtures from torch.nn.functional.scaled_dot_product_attention in float64
 *      (tests/reference/gen_sdpa.py);
 *   2. random configurations against a float64 reference written here, covering what the
 *      fixtures cannot enumerate: every ISA, threads 1 and 2, key splitting, strided heads,
 *      broadcast masks, both fill modes, probabilities and log-sum-exp.
 */
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------- */
/* float64 reference                                                                          */

typedef struct cfg {
    int64_t B, H, I, J, dh, dv;
    int mask_kind; /* 0 none, 1 key padding (B,J), 2 (I,J), 3 (B,H,I,J) */
    int bias_kind; /* 0 none, 1 (1,H,I,J), 2 (B,1,I,J) */
    int causal, fill, has_scale, want_probs, want_lse;
    float scale;
    int fully_masked; /* force some fully masked rows */
} cfg;

/* q (B,I,H,dh) as from a projection, k (B,J,H,dh), v (B,J,H,dv), out (B,I,H,dv) */
static void reference(const cfg *c, const float *q, const float *k, const float *v,
                      const uint8_t *mask, const float *bias, double *out, double *lse,
                      double *probs)
{
    double scale = c->has_scale ? c->scale : 1.0 / sqrt((double)c->dh);
    double *s = malloc(sizeof(double) * (size_t)c->J);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < c->H; h++)
            for (int64_t i = 0; i < c->I; i++) {
                double mx = -INFINITY;
                for (int64_t j = 0; j < c->J; j++) {
                    double d = 0;
                    for (int64_t x = 0; x < c->dh; x++)
                        d += (double)q[((b * c->I + i) * c->H + h) * c->dh + x] *
                             (double)k[((b * c->J + j) * c->H + h) * c->dh + x];
                    d *= scale;
                    if (c->bias_kind == 1) d += bias[(h * c->I + i) * c->J + j];
                    if (c->bias_kind == 2) d += bias[(b * c->I + i) * c->J + j];
                    int keep = 1;
                    if (c->mask_kind == 1) keep = mask[b * c->J + j];
                    if (c->mask_kind == 2) keep = mask[i * c->J + j];
                    if (c->mask_kind == 3) keep = mask[((b * c->H + h) * c->I + i) * c->J + j];
                    if (c->causal && j > i) keep = 0;
                    if (!keep) d = c->fill ? -(double)FLT_MAX : -INFINITY; /* float semantics */
                    s[j] = d;
                    if (d > mx) mx = d;
                }
                double sum = 0;
                for (int64_t j = 0; j < c->J; j++) {
                    s[j] = mx == -INFINITY ? 0.0 : exp(s[j] - mx);
                    sum += s[j];
                }
                double *o = out + ((b * c->I + i) * c->H + h) * c->dv;
                for (int64_t x = 0; x < c->dv; x++) o[x] = 0;
                for (int64_t j = 0; j < c->J; j++) {
                    double pr = sum > 0 ? s[j] / sum : 0.0;
                    if (probs) probs[((b * c->H + h) * c->I + i) * c->J + j] = pr;
                    for (int64_t x = 0; x < c->dv; x++)
                        o[x] += pr * v[((b * c->J + j) * c->H + h) * c->dv + x];
                }
                if (lse) lse[(b * c->H + h) * c->I + i] = sum > 0 ? mx + log(sum) : -INFINITY;
            }
    free(s);
}

static uint64_t rng = 12345;

static int64_t pick(const int64_t *v, int n)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return v[(rng >> 33) % (uint64_t)n];
}

static void to_float(const double *d, float *f, int64_t n)
{
    for (int64_t i = 0; i < n; i++) f[i] = (float)d[i];
}

/* Runs one configuration with the current ISA and thread count. Returns the max error. */
static double run_cfg(const cfg *c, const char *label)
{
    int64_t nq = c->B * c->I * c->H * c->dh, nk = c->B * c->J * c->H * c->dh,
            nv = c->B * c->J * c->H * c->dv, no = c->B * c->I * c->H * c->dv;
    float *q = malloc(sizeof(float) * (size_t)nq), *k = malloc(sizeof(float) * (size_t)nk),
          *v = malloc(sizeof(float) * (size_t)nv), *out = malloc(sizeof(float) * (size_t)no);
    tu_fill_uniform(q, nq, -1.5f, 1.5f, &rng);
    tu_fill_uniform(k, nk, -1.5f, 1.5f, &rng);
    tu_fill_uniform(v, nv, -1.0f, 1.0f, &rng);
    int64_t nmask = c->mask_kind == 1   ? c->B * c->J
                    : c->mask_kind == 2 ? c->I * c->J
                    : c->mask_kind == 3 ? c->B * c->H * c->I * c->J
                                        : 0;
    uint8_t *mask = nmask ? malloc((size_t)nmask) : NULL;
    for (int64_t x = 0; x < nmask; x++) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        mask[x] = (rng >> 40) % 4 != 0;
    }
    if (mask && c->fully_masked) {
        /* mask every key of batch 0 (kind 1), of query row 0 (kind 2), of (b=0,h=0,i=last) (3) */
        if (c->mask_kind == 1) memset(mask, 0, (size_t)c->J);
        if (c->mask_kind == 2) memset(mask, 0, (size_t)c->J);
        if (c->mask_kind == 3) memset(mask + (c->I - 1) * c->J, 0, (size_t)c->J);
    }
    int64_t nbias = c->bias_kind == 1   ? c->H * c->I * c->J
                    : c->bias_kind == 2 ? c->B * c->I * c->J
                                        : 0;
    float *bias = nbias ? malloc(sizeof(float) * (size_t)nbias) : NULL;
    if (bias) tu_fill_uniform(bias, nbias, -2.0f, 2.0f, &rng);

    int64_t np = c->B * c->H * c->I * c->J;
    double *ref = malloc(sizeof(double) * (size_t)no),
           *rlse = malloc(sizeof(double) * (size_t)(c->B * c->H * c->I));
    double *rprobs = c->want_probs ? malloc(sizeof(double) * (size_t)np) : NULL;
    reference(c, q, k, v, mask, bias, ref, rlse, rprobs);

    xattn_sdpa_params p;
    xattn_sdpa_init(&p);
    p.B = c->B;
    p.H = c->H;
    p.I = c->I;
    p.J = c->J;
    p.dh = c->dh;
    p.dv = c->dv;
    /* heads read in place from (B, N, H*d) */
    p.q = q;
    p.q_sb = c->I * c->H * c->dh;
    p.q_sh = c->dh;
    p.q_si = c->H * c->dh;
    p.k = k;
    p.k_sb = c->J * c->H * c->dh;
    p.k_sh = c->dh;
    p.k_sj = c->H * c->dh;
    p.v = v;
    p.v_sb = c->J * c->H * c->dv;
    p.v_sh = c->dv;
    p.v_sj = c->H * c->dv;
    p.out = out;
    p.o_sb = c->I * c->H * c->dv;
    p.o_sh = c->dv;
    p.o_si = c->H * c->dv;
    p.has_scale = c->has_scale;
    p.scale = c->scale;
    p.causal = c->causal;
    p.fill = c->fill ? XATTN_FILL_MIN_FLOAT : XATTN_FILL_NEG_INF;
    if (c->mask_kind == 1) {
        p.mask = mask;
        p.mask_sb = c->J;
    }
    if (c->mask_kind == 2) {
        p.mask = mask;
        p.mask_si = c->J;
    }
    if (c->mask_kind == 3) {
        p.mask = mask;
        p.mask_sb = c->H * c->I * c->J;
        p.mask_sh = c->I * c->J;
        p.mask_si = c->J;
    }
    if (c->bias_kind == 1) {
        p.bias = bias;
        p.bias_sh = c->I * c->J;
        p.bias_si = c->J;
    }
    if (c->bias_kind == 2) {
        p.bias = bias;
        p.bias_sb = c->I * c->J;
        p.bias_si = c->J;
    }
    float *lse = c->want_lse ? malloc(sizeof(float) * (size_t)(c->B * c->H * c->I)) : NULL;
    float *probs = c->want_probs ? malloc(sizeof(float) * (size_t)np) : NULL;
    p.lse = lse;
    p.probs = probs;

    double err = 0;
    CHECK_OK(xattn_sdpa(&p));
    float *rf =
        malloc(sizeof(float) * (size_t)(no > np ? no : np) + 4 * (size_t)(c->B * c->H * c->I));
    to_float(ref, rf, no);
    char what[256];
    snprintf(what, sizeof what,
             "%s out B=%lld H=%lld I=%lld J=%lld dh=%lld dv=%lld mask=%d bias=%d causal=%d fill=%d",
             label, (long long)c->B, (long long)c->H, (long long)c->I, (long long)c->J,
             (long long)c->dh, (long long)c->dv, c->mask_kind, c->bias_kind, c->causal, c->fill);
    err = tu_check_close(what, out, rf, no, TU_TOL);
    if (lse) {
        int64_t nl = c->B * c->H * c->I;
        to_float(rlse, rf, nl);
        /* -inf must match exactly; tu_rel_err treats inf - inf as NaN -> failure, so compare */
        int ok = 1;
        double le = 0;
        for (int64_t x = 0; x < nl; x++) {
            if (isinf(rf[x]) || isinf(lse[x])) {
                ok &= rf[x] == lse[x];
                continue;
            }
            double e = fabs((double)lse[x] - rf[x]) / (1 + fabs((double)rf[x]));
            if (!(e <= le)) le = e;
        }
        char w2[300];
        snprintf(w2, sizeof w2, "%s lse", what);
        tu_checks++;
        if (!ok || !(le <= TU_TOL)) {
            tu_failures++;
            fprintf(stderr, "%s: lse error %.3g (inf mismatch: %d)\n", w2, le, !ok);
        }
    }
    if (probs) {
        to_float(rprobs, rf, np);
        char w2[300];
        snprintf(w2, sizeof w2, "%s probs", what);
        double e = tu_check_close(w2, probs, rf, np, TU_TOL);
        if (e > err) err = e;
    }
    free(q);
    free(k);
    free(v);
    free(out);
    free(mask);
    free(bias);
    free(ref);
    free(rlse);
    free(rprobs);
    free(lse);
    free(probs);
    free(rf);
    return err;
}

/* ---------------------------------------------------------------------------------------- */
/* fixtures from torch                                                                        */

static double grad_worst; /* the backward's largest error against the torch fixtures */

static double run_fixture(const char *file)
{
    xattn_safetensors *st = NULL;
    xattn_status s = xattn_st_open(tu_fixture(file), &st);
    CHECK_OK(s);
    if (s != XATTN_OK) return INFINITY;
    xattn_array aq = {0}, ak = {0}, av = {0}, ao = {0}, am = {0}, ab = {0}, al = {0};
    float *q = tu_get_f32(st, "q", &aq), *k = tu_get_f32(st, "k", &ak),
          *v = tu_get_f32(st, "v", &av);
    float *ref = tu_get_f32(st, "out", &ao);
    xattn_sdpa_params p;
    xattn_sdpa_init(&p);
    p.B = aq.shape[0];
    p.H = aq.shape[1];
    p.I = aq.shape[2];
    p.dh = aq.shape[3];
    p.J = ak.shape[2];
    p.dv = av.shape[3];
    p.q = q;
    p.q_sb = p.H * p.I * p.dh;
    p.q_sh = p.I * p.dh;
    p.q_si = p.dh;
    p.k = k;
    p.k_sb = p.H * p.J * p.dh;
    p.k_sh = p.J * p.dh;
    p.k_sj = p.dh;
    p.v = v;
    p.v_sb = p.H * p.J * p.dv;
    p.v_sh = p.J * p.dv;
    p.v_sj = p.dv;
    int64_t no = p.B * p.H * p.I * p.dv;
    float *out = malloc(sizeof(float) * (size_t)no);
    p.out = out;
    p.o_sb = p.H * p.I * p.dv;
    p.o_sh = p.I * p.dv;
    p.o_si = p.dv;
    const char *cs = xattn_st_meta_get(st, "causal"), *sc = xattn_st_meta_get(st, "scale"),
               *fl = xattn_st_meta_get(st, "fill");
    p.causal = cs && !strcmp(cs, "1");
    if (sc && strcmp(sc, "none")) {
        p.has_scale = 1;
        p.scale = (float)atof(sc);
    }
    p.fill = fl && !strcmp(fl, "min_float") ? XATTN_FILL_MIN_FLOAT : XATTN_FILL_NEG_INF;
    /* mask / bias are stored 4-D with broadcast dims of size 1 */
    if (xattn_st_find(st, "mask") >= 0) {
        CHECK_OK(xattn_st_get(st, "mask", XATTN_BOOL, &am));
        p.mask = am.data;
        p.mask_si = am.shape[2] == 1 ? 0 : am.shape[3];
        p.mask_sh = am.shape[1] == 1 ? 0 : am.shape[2] * am.shape[3];
        p.mask_sb = am.shape[0] == 1 ? 0 : am.shape[1] * am.shape[2] * am.shape[3];
    }
    if (xattn_st_find(st, "bias") >= 0) {
        tu_get_f32(st, "bias", &ab);
        p.bias = ab.data;
        p.bias_si = ab.shape[2] == 1 ? 0 : ab.shape[3];
        p.bias_sh = ab.shape[1] == 1 ? 0 : ab.shape[2] * ab.shape[3];
        p.bias_sb = ab.shape[0] == 1 ? 0 : ab.shape[1] * ab.shape[2] * ab.shape[3];
    }
    double err = 0;
    for (int th = 1; th <= 2; th++) {
        xattn_set_threads(th);
        memset(out, 0xff, sizeof(float) * (size_t)no);
        CHECK_OK(xattn_sdpa(&p));
        char what[200];
        snprintf(what, sizeof what, "%s [%s, %d threads]", file, xattn_isa(), th);
        double e = tu_check_close(what, out, ref, no, TU_TOL);
        if (e > err) err = e;
    }
    /* the backward against torch.autograd in float64 (sdpa_grad_<case>.safetensors) */
    char gname[256];
    snprintf(gname, sizeof gname, "sdpa_grad_%s", file + strlen("sdpa_"));
    xattn_safetensors *gs = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(gname), &gs));
    if (gs) {
        xattn_array ad = {0}, rq = {0}, rk = {0}, rv = {0}, rb = {0};
        float *lse = malloc(sizeof(float) * (size_t)(p.B * p.H * p.I + 1));
        const int64_t nq = p.B * p.H * p.I * p.dh, nk = p.B * p.H * p.J * p.dh,
                      nv = p.B * p.H * p.J * p.dv;
        float *dq = malloc(sizeof(float) * (size_t)(nq + 1)),
              *dk = malloc(sizeof(float) * (size_t)(nk + 1)),
              *dv = malloc(sizeof(float) * (size_t)(nv + 1)),
              *db = calloc((size_t)(ab.data ? xattn_array_numel(&ab) : 1), sizeof(float));
        p.lse = lse;
        CHECK_OK(xattn_sdpa(&p));
        xattn_sdpa_grads g;
        xattn_sdpa_grads_init(&g);
        g.dout = tu_get_f32(gs, "dout", &ad);
        g.do_sb = p.o_sb, g.do_sh = p.o_sh, g.do_si = p.o_si;
        g.dq = dq, g.dq_sb = p.q_sb, g.dq_sh = p.q_sh, g.dq_si = p.q_si;
        g.dk = dk, g.dk_sb = p.k_sb, g.dk_sh = p.k_sh, g.dk_sj = p.k_sj;
        g.dv = dv, g.dv_sb = p.v_sb, g.dv_sh = p.v_sh, g.dv_sj = p.v_sj;
        if (ab.data)
            g.dbias = db, g.dbias_sb = p.bias_sb, g.dbias_sh = p.bias_sh, g.dbias_si = p.bias_si;
        CHECK_OK(xattn_sdpa_backward(&p, &g));
        char what[200];
        snprintf(what, sizeof what, "%s backward [%s]", file, xattn_isa());
        double e = tu_check_close(what, dq, tu_get_f32(gs, "dq", &rq), nq, 1e-4);
        e = tu_max(e, tu_check_close(what, dk, tu_get_f32(gs, "dk", &rk), nk, 1e-4));
        e = tu_max(e, tu_check_close(what, dv, tu_get_f32(gs, "dv", &rv), nv, 1e-4));
        if (ab.data)
            e = tu_max(e, tu_check_close(what, db, tu_get_f32(gs, "dbias", &rb),
                                         xattn_array_numel(&ab), 1e-4));
        if (e > grad_worst) grad_worst = e;
        p.lse = NULL;
        free(lse), free(dq), free(dk), free(dv), free(db);
        xattn_array_free(&ad), xattn_array_free(&rq), xattn_array_free(&rk);
        xattn_array_free(&rv), xattn_array_free(&rb);
        xattn_st_close(gs);
    }
    (void)al;
    free(out);
    xattn_array_free(&aq);
    xattn_array_free(&ak);
    xattn_array_free(&av);
    xattn_array_free(&ao);
    xattn_array_free(&am);
    xattn_array_free(&ab);
    xattn_st_close(st);
    return err;
}

static void test_errors(void)
{
    xattn_sdpa_params p;
    xattn_sdpa_init(&p);
    CHECK_FAIL(xattn_sdpa(NULL), XATTN_ERR_ARG);
    float x[4] = {0};
    p.B = p.H = p.I = p.J = 1;
    p.dh = p.dv = 1;
    CHECK_FAIL(xattn_sdpa(&p), XATTN_ERR_ARG); /* NULL tensors */
    p.q = p.k = p.v = x;
    p.out = x + 2;
    p.dh = 0;
    CHECK_FAIL(xattn_sdpa(&p), XATTN_ERR_ARG);
    p.dh = 1;
    p.I = -1;
    CHECK_FAIL(xattn_sdpa(&p), XATTN_ERR_ARG);
    p.I = 1;
    p.q_si = -3;
    CHECK_FAIL(xattn_sdpa(&p), XATTN_ERR_ARG);
    p.q_si = 0;
    p.fill = (xattn_fill)7;
    CHECK_FAIL(xattn_sdpa(&p), XATTN_ERR_ARG);
    p.fill = XATTN_FILL_NEG_INF;
    p.has_scale = 1;
    p.scale = NAN;
    CHECK_FAIL(xattn_sdpa(&p), XATTN_ERR_ARG);
    p.has_scale = 0;
    p.B = INT64_MAX / 2;
    p.H = 4;
    CHECK_FAIL(xattn_sdpa(&p), XATTN_ERR_NOMEM);
    /* J = 0: empty softmax -> zero output */
    p.B = 1;
    p.H = 1;
    p.J = 0;
    x[2] = 5;
    CHECK_OK(xattn_sdpa(&p));
    CHECK(x[2] == 0.0f);
}

int main(void)
{
    static const char *fixtures[] = {
#include "fixtures/sdpa_list.inc"
    };
    const char *isas[] = TU_ISAS;
    double worst_fix = 0;
    for (size_t f = 0; f < sizeof fixtures / sizeof fixtures[0]; f++)
        for (int is = 0; is < TU_N_ISAS; is++) {
            if (xattn_set_isa(isas[is]) != XATTN_OK) continue;
            double e = run_fixture(fixtures[f]);
            if (e > worst_fix) worst_fix = e;
        }
    printf("torch fixtures: %zu files, max rel error %.3g; backward (torch.autograd) %.3g\n",
           sizeof fixtures / sizeof fixtures[0], worst_fix, grad_worst);

    static const int64_t lens[] = {1, 2, 7, 31, 32, 33, 64, 65, 100, 255, 257, 300};
    static const int64_t dhs[] = {1, 8, 64, 80, 128, 256, 3, 13};
    static const int64_t heads[] = {1, 2, 3, 8, 16};
    double worst = 0;
    int ncfg = 0;
    for (int is = 0; is < TU_N_ISAS; is++) {
        if (xattn_set_isa(isas[is]) != XATTN_OK) continue;
        for (int t = 0; t < 70; t++) {
            cfg c = {0};
            c.B = 1 + (t % 2);
            c.H = pick(heads, 5);
            c.I = pick(lens, 12);
            c.J = pick(lens, 12);
            c.dh = pick(dhs, 8);
            c.dv = (t % 3 == 0) ? pick(dhs, 8) : c.dh;
            if (c.H * (c.I + c.J) * (c.dh + c.dv) > 400000) c.H = 1;
            c.mask_kind = t % 4;
            c.bias_kind = (t / 4) % 3;
            c.causal = (t % 5) == 2;
            c.fill = (t / 2) % 2;
            c.has_scale = (t % 7) == 3;
            c.scale = 0.37f;
            c.fully_masked = (t % 3) == 1;
            c.want_lse = 1;
            c.want_probs = (t % 4) == 1;
            xattn_set_threads(1 + (t % 2));
            char label[64];
            snprintf(label, sizeof label, "[%s t%d]", isas[is], t);
            double e = run_cfg(&c, label);
            if (e > worst) worst = e;
            ncfg++;
        }
        /* decode-shaped: one query, long keys, split across threads */
        for (int t = 0; t < 6; t++) {
            cfg c = {0};
            c.B = 1;
            c.H = 1 + t % 2;
            c.I = 1 + (t % 3);
            c.J = 700 + 333 * t;
            c.dh = 64;
            c.dv = 64;
            c.mask_kind = t % 2;
            c.fill = t % 2;
            c.fully_masked = t == 3;
            c.want_lse = 1;
            c.want_probs = t == 5;
            c.causal = t == 4;
            xattn_set_threads(2);
            double e = run_cfg(&c, "[split]");
            if (e > worst) worst = e;
            ncfg++;
        }
    }
    xattn_set_isa("auto");
    xattn_set_threads(0);
    printf("random configurations: %d, max rel error %.3g\n", ncfg, worst);
    test_errors();
    return tu_finish("test_attention");
}
