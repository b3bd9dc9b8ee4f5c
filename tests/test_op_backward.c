/*
 * The ops' backward against central finite differences of float64 forwards written here from
 * the references' definitions (nn.Linear, nn.LayerNorm / nn.RMSNorm with and without affine,
 * GELU erf and tanh, ReLU, diffusers' GEGLU, softmax, mean, AvgPool1d(2, 2)): for a loss
 * L = sum(dy o f(inputs)), every element of every input's gradient is compared with
 * (L(t + h) - L(t - h)) / 2h. Also: accumulate adds, NULL gradients are skipped, results are
 * bitwise the same on 1 and 3 threads, and dropout keeps the expected fraction, scales by
 * 1 / (1 - p), regenerates the same mask from the same seed and is the identity at p = 0.
 */
#include "testutil.h"
#include "kernels/ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define H_FD 1e-5
#define TOL  1e-4

/* ---- float64 forwards ---- */

typedef struct op {
    int kind;           /* 0 linear, 1 layernorm, 2 rmsnorm, 3 gelu, 4 gelu tanh, 5 relu, 6 geglu,
                           7 softmax, 8 mean, 9 pool2 */
    int64_t rows, n, k; /* sizes: linear (rows=M, k=K, n=N); norms (rows, n); ... */
    int affine, has_bias;
    double eps;
    double *in[3]; /* the inputs (x, w, b) */
    int64_t in_n[3];
    int n_in;
    int64_t out_n;
} op;

static double gelu_d(double x, int t)
{
    if (t)
        return 0.5 * x *
               (1.0 + tanh(sqrt(2.0 / 3.14159265358979323846) * (x + 0.044715 * x * x * x)));
    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
}

static void fwd(const op *o, double *y)
{
    const double *x = o->in[0], *w = o->in[1], *b = o->in[2];
    const int64_t R = o->rows, n = o->n;
    switch (o->kind) {
    case 0:
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < n; c++) {
                double s = o->has_bias ? b[c] : 0.0;
                for (int64_t i = 0; i < o->k; i++) s += x[r * o->k + i] * w[c * o->k + i];
                y[r * n + c] = s;
            }
        break;
    case 1:
    case 2:
        for (int64_t r = 0; r < R; r++) {
            double mean = 0, var = 0;
            if (o->kind == 1) {
                for (int64_t i = 0; i < n; i++) mean += x[r * n + i];
                mean /= (double)n;
            }
            for (int64_t i = 0; i < n; i++) var += (x[r * n + i] - mean) * (x[r * n + i] - mean);
            const double rs = 1.0 / sqrt(var / (double)n + o->eps);
            for (int64_t i = 0; i < n; i++) {
                double v = (x[r * n + i] - mean) * rs;
                if (o->affine) v *= w[i];
                if (o->has_bias) v += b[i];
                y[r * n + i] = v;
            }
        }
        break;
    case 3:
    case 4:
        for (int64_t i = 0; i < R * n; i++) y[i] = gelu_d(x[i], o->kind == 4);
        break;
    case 5:
        for (int64_t i = 0; i < R * n; i++) y[i] = x[i] > 0 ? x[i] : 0;
        break;
    case 6:
        for (int64_t r = 0; r < R; r++)
            for (int64_t i = 0; i < n; i++)
                y[r * n + i] = x[r * 2 * n + i] * gelu_d(x[r * 2 * n + n + i], 0);
        break;
    case 7:
        for (int64_t r = 0; r < R; r++) {
            double m = -INFINITY, s = 0;
            for (int64_t i = 0; i < n; i++) m = tu_max(m, x[r * n + i]);
            for (int64_t i = 0; i < n; i++) s += exp(x[r * n + i] - m);
            for (int64_t i = 0; i < n; i++) y[r * n + i] = exp(x[r * n + i] - m) / s;
        }
        break;
    case 8: /* x (rows=B, k=F, n=R) -> y (B, R) */
        for (int64_t bb = 0; bb < R; bb++)
            for (int64_t c = 0; c < n; c++) {
                double s = 0;
                for (int64_t f = 0; f < o->k; f++) s += x[(bb * o->k + f) * n + c];
                y[bb * n + c] = s / (double)o->k;
            }
        break;
    default: /* 9: x (rows=B, k=N, n=C) -> y (B, N/2, C) */
        for (int64_t bb = 0; bb < R; bb++)
            for (int64_t t = 0; t < o->k / 2; t++)
                for (int64_t c = 0; c < n; c++)
                    y[(bb * (o->k / 2) + t) * n + c] =
                        0.5 * (x[(bb * o->k + 2 * t) * n + c] + x[(bb * o->k + 2 * t + 1) * n + c]);
    }
}

static double loss(const op *o, const double *dy, double *y)
{
    fwd(o, y);
    double s = 0;
    for (int64_t i = 0; i < o->out_n; i++) s += dy[i] * y[i];
    return s;
}

/* numeric gradient of input a */
static void numeric(op *o, int a, const double *dy, double *g)
{
    double *y = malloc(sizeof(double) * (size_t)o->out_n);
    for (int64_t i = 0; i < o->in_n[a]; i++) {
        const double keep = o->in[a][i];
        o->in[a][i] = keep + H_FD;
        const double lp = loss(o, dy, y);
        o->in[a][i] = keep - H_FD;
        const double lm = loss(o, dy, y);
        o->in[a][i] = keep;
        g[i] = (lp - lm) / (2 * H_FD);
    }
    free(y);
}

static float *tof(const double *x, int64_t n)
{
    float *f = malloc(sizeof(float) * (size_t)(n + 1));
    for (int64_t i = 0; i < n; i++) f[i] = (float)x[i];
    return f;
}

static double *rnd_d(int64_t n, uint64_t *s, double scale)
{
    double *x = malloc(sizeof(double) * (size_t)(n + 1));
    float *f = malloc(sizeof(float) * (size_t)(n + 1));
    tu_fill_uniform(f, n, -1, 1, s);
    for (int64_t i = 0; i < n; i++) x[i] = (double)(float)(f[i] * scale); /* float-exact */
    free(f);
    return x;
}

/* Runs the float backward of o into grads g[a] (one per input), accumulate as given. */
static void backward(const op *o, const float *dy, float **g, int accumulate)
{
    float *x = tof(o->in[0], o->in_n[0]);
    float *w = o->n_in > 1 ? tof(o->in[1], o->in_n[1]) : NULL;
    const int64_t R = o->rows, n = o->n;
    switch (o->kind) {
    case 0:
        CHECK_OK(xa_op_linear_backward(x, R, o->k, w, n, dy, g[0], g[1], o->has_bias ? g[2] : NULL,
                                       accumulate));
        break;
    case 1:
        CHECK_OK(xa_op_layernorm_backward(x, R, n, o->affine ? w : NULL, (float)o->eps, dy, g[0],
                                          o->affine ? g[1] : NULL, o->has_bias ? g[2] : NULL,
                                          accumulate));
        break;
    case 2:
        CHECK_OK(xa_op_rmsnorm_backward(x, R, n, o->affine ? w : NULL, (float)o->eps, dy, g[0],
                                        o->affine ? g[1] : NULL, accumulate));
        break;
    case 3:
    case 4: xa_op_gelu_backward(x, dy, g[0], R * n, o->kind == 4); break;
    case 5: xa_op_relu_backward(x, dy, g[0], R * n); break;
    case 6: xa_op_geglu_backward(x, R, n, dy, g[0]); break;
    case 7: {
        float *y = malloc(sizeof(float) * (size_t)(R * n));
        memcpy(y, x, sizeof(float) * (size_t)(R * n));
        CHECK_OK(xattn_softmax(y, R, n));
        xa_op_softmax_backward(y, dy, g[0], R, n);
        free(y);
        break;
    }
    case 8: xa_op_mean_backward(dy, R, o->k, n, g[0], accumulate); break;
    default: xa_op_pool2_backward(dy, R, o->k, n, g[0], accumulate); break;
    }
    free(x);
    free(w);
}

static double worst;

static void check_op(op *o, uint64_t seed, const char *name)
{
    double *dyd = rnd_d(o->out_n, &seed, 1.0);
    float *dy = tof(dyd, o->out_n);
    float *g[3] = {0};
    for (int a = 0; a < o->n_in; a++) g[a] = calloc((size_t)o->in_n[a] + 1, sizeof(float));
    backward(o, dy, g, 0);
    for (int a = 0; a < o->n_in; a++) {
        if ((a == 1 && !o->affine && o->kind != 0) || (a == 2 && !o->has_bias)) continue;
        double *num = malloc(sizeof(double) * (size_t)(o->in_n[a] + 1));
        numeric(o, a, dyd, num);
        float *nf = tof(num, o->in_n[a]);
        char what[96];
        snprintf(what, sizeof what, "%s input %d", name, a);
        worst = tu_max(worst, tu_check_close(what, g[a], nf, o->in_n[a], TOL));
        /* accumulate: the same gradient added once more */
        float *twice = malloc(sizeof(float) * (size_t)(o->in_n[a] + 1));
        for (int64_t i = 0; i < o->in_n[a]; i++) twice[i] = 2.0f * g[a][i];
        free(nf);
        free(num);
        if (o->kind == 0 || o->kind == 1 || o->kind == 2 || o->kind >= 8) {
            float *g2[3] = {0};
            for (int b = 0; b < o->n_in; b++) {
                g2[b] = malloc(sizeof(float) * (size_t)(o->in_n[b] + 1));
                memcpy(g2[b], g[b], sizeof(float) * (size_t)o->in_n[b]);
            }
            backward(o, dy, g2, 1);
            snprintf(what, sizeof what, "%s input %d accumulated", name, a);
            tu_check_close(what, g2[a], twice, o->in_n[a], 1e-6);
            for (int b = 0; b < o->n_in; b++) free(g2[b]);
        }
        free(twice);
    }
    for (int a = 0; a < o->n_in; a++) free(g[a]);
    free(dy);
    free(dyd);
}

static void finite_differences(void)
{
    uint64_t s = 7;
    static const int64_t sizes[][3] = {{3, 5, 4}, {1, 1, 1}, {70, 9, 6}, {4, 33, 17}};
    for (int t = 0; t < 4; t++) {
        const int64_t R = sizes[t][0], n = sizes[t][1], k = sizes[t][2];
        for (int kind = 0; kind <= 9; kind++)
            for (int var = 0; var < (kind == 0 || kind == 1 || kind == 2 ? 3 : 1); var++) {
                op o;
                memset(&o, 0, sizeof o);
                o.kind = kind, o.rows = R, o.n = n, o.k = k, o.eps = 1e-5;
                o.affine = var != 0, o.has_bias = var == 2 || (kind == 0 && var == 1);
                if (kind == 2) o.has_bias = 0;
                o.n_in = 1;
                o.in_n[0] = R * n;
                o.out_n = R * n;
                if (kind == 0) {
                    o.in_n[0] = R * k, o.in_n[1] = n * k, o.in_n[2] = n, o.n_in = 3;
                } else if (kind == 1 || kind == 2) {
                    o.in_n[1] = o.in_n[2] = n, o.n_in = 3;
                } else if (kind == 6) {
                    o.in_n[0] = R * 2 * n;
                } else if (kind == 8) {
                    o.in_n[0] = R * k * n, o.out_n = R * n;
                } else if (kind == 9) {
                    o.in_n[0] = R * k * n, o.out_n = R * (k / 2) * n;
                }
                for (int a = 0; a < o.n_in; a++)
                    o.in[a] = rnd_d(o.in_n[a], &s, a == 0 && kind == 7 ? 4.0 : 1.5);
                if (kind == 1 && o.affine)
                    for (int64_t i = 0; i < n; i++) o.in[1][i] += 1.0;
                char name[64];
                snprintf(name, sizeof name, "op %d var %d size %d", kind, var, t);
                if (o.out_n > 0) check_op(&o, s + 11, name);
                for (int a = 0; a < o.n_in; a++) free(o.in[a]);
            }
    }
    printf("op backward against finite differences: max rel error %.2e\n", worst);
}

static void threads(void)
{
    const int64_t R = 1000, n = 96, K = 80;
    uint64_t s = 3;
    float *x = malloc(sizeof(float) * R * K), *W = malloc(sizeof(float) * n * K);
    float *dy = malloc(sizeof(float) * R * n), *xn = malloc(sizeof(float) * R * n);
    tu_fill_uniform(x, R * K, -1, 1, &s);
    tu_fill_uniform(W, n * K, -1, 1, &s);
    tu_fill_uniform(dy, R * n, -1, 1, &s);
    tu_fill_uniform(xn, R * n, -1, 1, &s);
    float *out[2][4];
    for (int t = 0; t < 2; t++) {
        xattn_set_threads(t ? 3 : 1);
        out[t][0] = malloc(sizeof(float) * n * K);
        out[t][1] = malloc(sizeof(float) * n);
        out[t][2] = malloc(sizeof(float) * n);
        out[t][3] = malloc(sizeof(float) * n);
        CHECK_OK(xa_op_linear_backward(x, R, K, W, n, dy, NULL, out[t][0], out[t][1], 0));
        CHECK_OK(xa_op_layernorm_backward(xn, R, n, W, 1e-5f, dy, NULL, out[t][2], out[t][3], 0));
    }
    xattn_set_threads(0);
    CHECK(!memcmp(out[0][0], out[1][0], sizeof(float) * n * K));
    CHECK(!memcmp(out[0][1], out[1][1], sizeof(float) * n));
    CHECK(!memcmp(out[0][2], out[1][2], sizeof(float) * n));
    CHECK(!memcmp(out[0][3], out[1][3], sizeof(float) * n));
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < 4; i++) free(out[t][i]);
    free(x), free(W), free(dy), free(xn);
}

static void dropout(void)
{
    const int64_t n = 200000;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    for (int64_t i = 0; i < n; i++) x[i] = 1.0f + (float)(i % 7);
    memcpy(y, x, sizeof(float) * n);
    xa_op_dropout(y, n, 0.0f, 5);
    CHECK(!memcmp(x, y, sizeof(float) * n)); /* p = 0: the identity */
    const float p = 0.3f;
    const uint64_t seed = xa_dropout_seed(42, 7, 3);
    xa_op_dropout(y, n, p, seed);
    int64_t kept = 0;
    int scaled = 1;
    for (int64_t i = 0; i < n; i++)
        if (y[i] != 0.0f) {
            kept++;
            scaled &= fabsf(y[i] - x[i] / (1.0f - p)) <= 1e-6f * fabsf(y[i]);
        }
    CHECK(scaled);
    /* binomial: mean n(1-p), sd sqrt(n p (1-p)); within 5 sd */
    const double mean = n * (1.0 - p), sd = sqrt(n * p * (1.0 - p));
    CHECK(fabs((double)kept - mean) < 5 * sd);
    /* the same seed regenerates the mask (the backward), another seed does not */
    float *z = malloc(sizeof(float) * n);
    for (int64_t i = 0; i < n; i++) z[i] = 1.0f;
    xa_op_dropout(z, n, p, seed);
    int same = 1;
    for (int64_t i = 0; i < n; i++) same &= (z[i] != 0.0f) == (y[i] != 0.0f);
    CHECK(same);
    for (int64_t i = 0; i < n; i++) z[i] = 1.0f;
    xa_op_dropout(z, n, p, xa_dropout_seed(42, 8, 3));
    int differ = 0;
    for (int64_t i = 0; i < n; i++) differ += (z[i] != 0.0f) != (y[i] != 0.0f);
    CHECK(differ > n / 10);
    xattn_set_threads(3);
    for (int64_t i = 0; i < n; i++) z[i] = x[i];
    xa_op_dropout(z, n, p, seed);
    CHECK(!memcmp(z, y, sizeof(float) * n)); /* thread count independent */
    xattn_set_threads(0);
    xa_op_dropout(z, n, 1.0f, seed);
    int zero = 1;
    for (int64_t i = 0; i < n; i++) zero &= z[i] == 0.0f;
    CHECK(zero);
    free(x), free(y), free(z);
}

int main(void)
{
    finite_differences();
    threads();
    dropout();
    return tu_finish("test_op_backward");
}
