/*
 * The op layer: elementwise and row ops against plain loops; attention on a shard of a longer
 * causal sequence (causal_offset) equals the matching rows of the full attention; two partial
 * attentions over disjoint key halves merged by log-sum-exp equal the attention over all keys.
 */
#include "testutil.h"
#include "kernels/ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float *rnd(int64_t n, uint64_t *st)
{
    float *x = malloc((size_t)n * sizeof(float));
    tu_fill_uniform(x, n, -1.0f, 1.0f, st);
    return x;
}

static void elementwise(void)
{
    uint64_t st = 7;
    const int64_t rows = 300, n = 77, N = rows * n;
    float *x = rnd(N, &st), *y = rnd(N, &st), *r = malloc(N * 4), *b = rnd(n, &st);
    float *s = rnd(rows, &st), *t = malloc(N * 4);
    memcpy(r, y, N * 4);
    xa_op_axpy(0.5f, x, r, N);
    double e = 0;
    for (int64_t i = 0; i < N; i++) e = tu_max(e, fabs(r[i] - (y[i] + 0.5f * x[i])));
    CHECK(e == 0);
    memcpy(r, y, N * 4);
    xa_op_add_rows(r, rows, n, b, 2.0f);
    xa_op_scale_rows(r, rows, n, s);
    e = 0;
    for (int64_t i = 0; i < N; i++) e = tu_max(e, fabs(r[i] - (y[i] + 2.0f * b[i % n]) * s[i / n]));
    CHECK(e < 1e-6);
    memcpy(r, x, N * 4);
    xa_op_relu(r, N);
    e = 0;
    for (int64_t i = 0; i < N; i++) e = tu_max(e, fabs(r[i] - (x[i] > 0 ? x[i] : 0)));
    CHECK(e == 0);
    xa_op_transpose(x, t, 3, 100, 77);
    e = 0;
    for (int64_t bb = 0; bb < 3; bb++)
        for (int64_t p = 0; p < 100; p++)
            for (int64_t c = 0; c < 77; c++)
                e = tu_max(e, fabs(t[bb * 7700 + c * 100 + p] - x[bb * 7700 + p * 77 + c]));
    CHECK(e == 0);
    xa_op_geglu(x, 150, n, r); /* in (150, 2n) */
    e = 0;
    for (int64_t i = 0; i < 150 * n; i++) {
        const double a = x[(i / n) * 2 * n + i % n], g = x[(i / n) * 2 * n + n + i % n];
        e = tu_max(e, fabs(r[i] - a * 0.5 * g * (1 + erf(g / sqrt(2.0)))));
    }
    CHECK(e < 1e-6);
    xa_op_mean(x, 3, 4, 25, r);
    e = 0;
    for (int64_t bb = 0; bb < 3; bb++)
        for (int64_t k = 0; k < 25; k++) {
            double m = 0;
            for (int64_t f = 0; f < 4; f++) m += x[(bb * 4 + f) * 25 + k];
            e = tu_max(e, fabs(r[bb * 25 + k] - m / 4));
        }
    CHECK(e < 1e-6);
    xa_op_pool2(x, 2, 7, 5, r);
    e = 0;
    for (int64_t bb = 0; bb < 2; bb++)
        for (int64_t q = 0; q < 3; q++)
            for (int64_t c = 0; c < 5; c++)
                e = tu_max(
                    e, fabs(r[(bb * 3 + q) * 5 + c] -
                            (x[(bb * 7 + 2 * q) * 5 + c] + x[(bb * 7 + 2 * q + 1) * 5 + c]) / 2));
    CHECK(e < 1e-7);
    /* linear with accumulate: y += x W^T + b */
    float *W = rnd(13 * 77, &st), *bb = rnd(13, &st), *y2 = rnd(20 * 13, &st),
          *y3 = malloc(20 * 13 * 4);
    memcpy(y3, y2, 20 * 13 * 4);
    CHECK_OK(xa_op_linear(x, 20, 77, W, bb, 13, y2, 1));
    e = 0;
    for (int64_t m = 0; m < 20; m++)
        for (int64_t k = 0; k < 13; k++) {
            double acc = y3[m * 13 + k] + bb[k];
            for (int64_t q = 0; q < 77; q++) acc += (double)x[m * 77 + q] * W[k * 77 + q];
            e = tu_max(e, fabs(y2[m * 13 + k] - acc));
        }
    CHECK(e < 1e-4);
    free(W), free(bb), free(y2), free(y3);
    free(x), free(y), free(r), free(b), free(s), free(t);
}

static void set_attn(xa_attn *p, int64_t B, int64_t H, int64_t I, int64_t J, int64_t d,
                     const float *q, const float *k, const float *v, float *o, float *lse)
{
    memset(p, 0, sizeof *p);
    p->B = B, p->H = H, p->I = I, p->J = J, p->dh = d, p->dv = d;
    p->q = q, p->q_sb = I * H * d, p->q_sh = d, p->q_si = H * d;
    p->k = k, p->k_sb = J * H * d, p->k_sh = d, p->k_sj = H * d;
    p->v = v, p->v_sb = J * H * d, p->v_sh = d, p->v_sj = H * d;
    p->out = o, p->o_sb = I * H * d, p->o_sh = d, p->o_si = H * d;
    p->scale = 0.25f;
    p->fill = XATTN_FILL_NEG_INF;
    p->lse = lse;
    p->fn = "test";
}

static void shards(void)
{
    uint64_t st = 11;
    const int64_t B = 2, H = 3, T = 70, d = 16;
    float *q = rnd(B * T * H * d, &st), *k = rnd(B * T * H * d, &st), *v = rnd(B * T * H * d, &st);
    float *full = malloc(B * T * H * d * 4), *lse = malloc(B * H * T * 4);
    xa_attn p;
    set_attn(&p, B, H, T, T, d, q, k, v, full, lse);
    p.causal = 1;
    CHECK_OK(xa_op_attention(&p));
    /* queries 40..69 against keys 0..69: rows 40.. of the full causal attention */
    const int64_t q0 = 40, I = T - q0;
    float *part = malloc(B * I * H * d * 4);
    set_attn(&p, B, H, I, T, d, q + q0 * H * d, k, v, part, NULL);
    p.q_sb = T * H * d, p.o_sb = I * H * d;
    p.causal = 1;
    p.causal_offset = q0;
    CHECK_OK(xa_op_attention(&p));
    double e = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < I * H * d; i++)
            e = tu_max(e, fabs(part[b * I * H * d + i] - full[(b * T + q0) * H * d + i]));
    CHECK(e < 1e-6);
    const double e_shard = e;
    /* ring: keys split in two halves, each a partial result (out, lse), merged */
    const int64_t j1 = 33;
    float *o1 = malloc(B * T * H * d * 4), *o2 = malloc(B * T * H * d * 4);
    float *l1 = malloc(B * H * T * 4), *l2 = malloc(B * H * T * 4);
    set_attn(&p, B, H, T, j1, d, q, k, v, o1, l1);
    p.k_sb = p.v_sb = T * H * d;
    p.causal = 1;
    CHECK_OK(xa_op_attention(&p));
    set_attn(&p, B, H, T, T - j1, d, q, k + j1 * H * d, v + j1 * H * d, o2, l2);
    p.k_sb = p.v_sb = T * H * d;
    p.causal = 1;
    p.causal_offset = -j1; /* keys start at global position j1 */
    CHECK_OK(xa_op_attention(&p));
    e = 0;
    double el = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < T; i++) {
                float o[16], l;
                float a1[16], a2[16];
                for (int64_t x = 0; x < d; x++) {
                    a1[x] = o1[((b * T + i) * H + h) * d + x];
                    a2[x] = o2[((b * T + i) * H + h) * d + x];
                }
                const int64_t r = (b * H + h) * T + i;
                xa_op_lse_merge(a1, l1 + r, a2, l2 + r, 1, d, o, &l);
                for (int64_t x = 0; x < d; x++)
                    e = tu_max(e, fabs(o[x] - full[((b * T + i) * H + h) * d + x]));
                el = tu_max(el, fabs(l - lse[r]));
            }
    CHECK(e < 1e-5);
    CHECK(el < 1e-5);
    printf("  shard max err %.2e, merged max err %.2e (lse %.2e)\n", e_shard, e, el);
    free(q), free(k), free(v), free(full), free(lse), free(part);
    free(o1), free(o2), free(l1), free(l2);
}

/* The same bits for every thread count, including the key splits of short query blocks. */
static void thread_independence(void)
{
    uint64_t st = 5;
    const int64_t cases[][4] = {{1, 1, 1, 3000}, {1, 2, 3, 2000}, {2, 3, 70, 513}, {1, 1, 300, 40}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int64_t B = cases[c][0], H = cases[c][1], I = cases[c][2], J = cases[c][3], d = 32;
        float *q = rnd(B * I * H * d, &st), *k = rnd(B * J * H * d, &st),
              *v = rnd(B * J * H * d, &st);
        float *o[4], *l[4];
        for (int t = 0; t < 4; t++) {
            o[t] = malloc(B * I * H * d * 4);
            l[t] = malloc(B * H * I * 4);
            xattn_set_threads(t + 1);
            xa_attn p;
            set_attn(&p, B, H, I, J, d, q, k, v, o[t], l[t]);
            CHECK_OK(xa_op_attention(&p));
        }
        for (int t = 1; t < 4; t++) {
            CHECK(!memcmp(o[0], o[t], (size_t)(B * I * H * d) * 4));
            CHECK(!memcmp(l[0], l[t], (size_t)(B * H * I) * 4));
        }
        for (int t = 0; t < 4; t++) free(o[t]), free(l[t]);
        free(q), free(k), free(v);
    }
    xattn_set_threads(0);
}

/* int8 weights: the quantiser's rows (the largest magnitude to +-127, round half to even, an
 * all-zero row, a NaN refused) and xa_op_linear_q8 against xa_op_linear on the dequantised
 * weights (scale * q): the same numbers up to float32 rounding, with and without bias and
 * accumulation, M from 1 to 11 (the 4-row kernel and its remainder), the same bits on 1 and 2
 * threads. */
static void linear_q8(void)
{
    uint64_t st = 5;
    const float w0[8] = {63.5f, -127.0f, 31.75f, 0.0f, 0.5f, 1.5f, -95.25f, 12.7f};
    int8_t q0[8];
    float s0;
    CHECK(xa_q8_quantize_rows(w0, 1, 8, q0, &s0) == 0);
    CHECK(s0 == 1.0f && q0[1] == -127 && q0[0] == 64 && q0[2] == 32 && q0[3] == 0);
    CHECK(q0[4] == 0 && q0[5] == 2); /* 0.5 and 1.5 round to even */
    const float zeros[4] = {0, 0, 0, 0};
    int8_t qz[4] = {1, 1, 1, 1};
    CHECK(xa_q8_quantize_rows(zeros, 1, 4, qz, &s0) == 0 && s0 == 0.0f && !qz[0] && !qz[3]);
    const float bad[3] = {1.0f, NAN, 2.0f};
    CHECK(xa_q8_quantize_rows(bad, 1, 3, qz, &s0) == -1);
    static const int64_t Ks[] = {1, 17, 77, 300}, Ns[] = {1, 13, 70, 500};
    for (size_t a = 0; a < 4; a++)
        for (size_t c = 0; c < 4; c++)
            for (int64_t M = 1; M <= 11; M += 2) {
                const int64_t K = Ks[a], N = Ns[c];
                float *x = rnd(M * K, &st), *W = rnd(N * K, &st), *b = rnd(N, &st);
                float *sc = malloc(sizeof(float) * (size_t)N), *Wd = malloc(4 * (size_t)(N * K));
                int8_t *q = malloc((size_t)(N * K));
                CHECK(xa_q8_quantize_rows(W, N, K, q, sc) == 0);
                for (int64_t i = 0; i < N * K; i++) Wd[i] = sc[i / K] * (float)q[i];
                for (int acc = 0; acc < 2; acc++)
                    for (int wb = 0; wb < 2; wb++) {
                        float *y = rnd(M * N, &st), *yr = malloc(4 * (size_t)(M * N)),
                              *y2 = malloc(4 * (size_t)(M * N));
                        memcpy(yr, y, 4 * (size_t)(M * N));
                        memcpy(y2, y, 4 * (size_t)(M * N));
                        xattn_set_threads(1);
                        CHECK_OK(xa_op_linear_q8(x, M, K, q, sc, wb ? b : NULL, N, y, acc));
                        CHECK_OK(xa_op_linear(x, M, K, Wd, wb ? b : NULL, N, yr, acc));
                        xattn_set_threads(2);
                        CHECK_OK(xa_op_linear_q8(x, M, K, q, sc, wb ? b : NULL, N, y2, acc));
                        xattn_set_threads(0);
                        /* both within the float32 dot-product bound of the same sum */
                        int nbad = 0;
                        for (int64_t m = 0; m < M; m++)
                            for (int64_t j = 0; j < N; j++) {
                                double mag = fabs(wb ? b[j] : 0.0) + (acc ? 2.0 : 0.0);
                                for (int64_t k = 0; k < K; k++)
                                    mag += fabs((double)x[m * K + k] * Wd[j * K + k]);
                                const double d = fabs((double)y[m * N + j] - yr[m * N + j]);
                                nbad += !(d <= 4.0 * (double)(K + 4) * 0x1p-24 * mag);
                            }
                        CHECK(nbad == 0);
                        CHECK(!memcmp(y, y2, 4 * (size_t)(M * N)));
                        free(y), free(yr), free(y2);
                    }
                free(x), free(W), free(b), free(sc), free(Wd), free(q);
            }
}

/* log_softmax against float64 (rows with -inf entries, a long row set threaded), the same bits
 * on 1 and 2 threads. */
static void log_softmax(void)
{
    uint64_t st = 9;
    const int64_t rows = 3, n = 50001;
    float *x = rnd(rows * n, &st), *y = malloc(4 * (size_t)(rows * n)),
          *y2 = malloc(4 * (size_t)(rows * n));
    for (int64_t i = 0; i < rows * n; i++) x[i] *= 30.0f;
    x[7] = x[n + 11] = -INFINITY;
    xattn_set_threads(1);
    xa_op_log_softmax(x, rows, n, y);
    xattn_set_threads(2);
    xa_op_log_softmax(x, rows, n, y2);
    xattn_set_threads(0);
    CHECK(!memcmp(y, y2, 4 * (size_t)(rows * n)));
    double e = 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *a = x + r * n;
        double mx = -INFINITY, z = 0;
        for (int64_t i = 0; i < n; i++) mx = tu_max(mx, a[i]);
        for (int64_t i = 0; i < n; i++) z += exp((double)a[i] - mx);
        for (int64_t i = 0; i < n; i++) {
            const double ref = (double)a[i] - mx - log(z);
            if (isinf(ref))
                CHECK(y[r * n + i] == -INFINITY);
            else
                e = tu_max(e, fabs(y[r * n + i] - ref) / (1.0 + fabs(ref)));
        }
    }
    CHECK(e < 1e-6);
    free(x), free(y), free(y2);
}

int main(void)
{
    printf("test_op_layer:\n");
    log_softmax();
    linear_q8();
    elementwise();
    shards();
    thread_independence();
    return tu_finish("test_op_layer");
}
