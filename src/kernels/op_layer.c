/* The op layer (ops.h): the computations modules are made of, over the kernel tables. */
#include "kernels/ops.h"
#include "base/base.h"
#include "dist/dist_run.h"

#include <float.h>
#include <math.h>
#include <string.h>

#ifdef _OPENMP
#define XA_CHUNK ((int64_t)16384)
/* threads over fixed chunks only when there is enough work to pay for them */
static int chunk_threads(int64_t n) { return n >= 8 * XA_CHUNK ? xa_threads() : 1; }
#endif

xattn_status xa_op_linear(const float *x, int64_t M, int64_t K, const float *W, const float *b,
                          int64_t N, float *y, int accumulate)
{
    if (xa_compute_bf16()) return xa_op_linear_w(x, M, K, xa_wt_f32(W), b, N, y, accumulate);
    if (!accumulate) return xattn_linear(x, M, K, W, b, N, y);
    if (b) xa_op_add_rows(y, M, N, b, 1.0f);
    if (M == 0 || N == 0 || K == 0) return XATTN_OK;
    return xattn_sgemm(0, 1, M, N, K, 1.0f, x, K, W, K, 1.0f, y, N);
}

xattn_status xa_op_linear_q8(const float *x, int64_t M, int64_t K, const int8_t *W,
                             const float *scale, const float *b, int64_t N, float *y,
                             int accumulate)
{
    if (M <= 0 || N <= 0) return XATTN_OK;
    const xa_kernels *kt = xa_kern();
    enum { NB = 32, RB = 4 }; /* output channels per task; rows per kernel call */
    const int64_t nblk = (N + NB - 1) / NB;
#ifdef _OPENMP
    /* threads only where the weights are large enough to pay for waking them */
    const int nt = N * K >= ((int64_t)1 << 17) && nblk > 1 ? xa_threads() : 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
#endif
    for (int64_t jb = 0; jb < nblk; jb++) {
        const int64_t n1 = XA_MIN(N, (jb + 1) * NB);
        for (int64_t n = jb * NB; n < n1; n += 2) {
            const int two = n + 1 < n1; /* two weight rows share the activations' loads */
            for (int64_t r0 = 0; r0 < M; r0 += RB) {
                const int64_t rr = XA_MIN((int64_t)RB, M - r0);
                float d[2][RB];
                if (two)
                    kt->dot2_q8(x + r0 * K, K, rr, W + n * K, K, K, d[0], d[1]);
                else
                    kt->dot_q8(x + r0 * K, K, rr, W + n * K, K, d[0]);
                for (int j = 0; j <= two; j++) {
                    const float bn = b ? b[n + j] : 0.0f, sn = scale[n + j];
                    for (int64_t i = 0; i < rr; i++) {
                        float *o = y + (r0 + i) * N + n + j;
                        const float v = sn * d[j][i] + bn;
                        *o = accumulate ? *o + v : v;
                    }
                }
            }
        }
    }
    return XATTN_OK;
}

xattn_status xa_op_linear_w(const float *x, int64_t M, int64_t K, xa_wt W, const float *b,
                            int64_t N, float *y, int accumulate)
{
    enum { Q8_ROWS = 8 }; /* the int8 dot kernels read each weight row once per 4 rows */
    const int bf16 = xa_compute_bf16();
    if (W.dt == XA_W_F32 && !bf16)
        return xa_op_linear(x, M, K, (const float *)W.p, b, N, y, accumulate);
    if (W.dt == XA_W_Q8 && M <= Q8_ROWS && !bf16)
        return xa_op_linear_q8(x, M, K, (const int8_t *)W.p, W.scale, b, N, y, accumulate);
    if (xa_gemm_wt(NULL, M, N, K, x, K, W, b, accumulate, y, N, bf16)) return XATTN_ERR_NOMEM;
    return XATTN_OK;
}

int xa_q8_quantize_rows(const float *w, int64_t rows, int64_t K, int8_t *q, float *scale)
{
    /* adding and subtracting 1.5 * 2^23 rounds |v| < 2^22 to the nearest integer, ties to even,
     * in the default rounding mode (the values here are within +-127.5) */
    const volatile float magic_v = 12582912.0f;
    const float magic = magic_v;
    int bad = 0;
#ifdef _OPENMP
    const int nt = rows > 1 && rows * K >= 8 * XA_CHUNK ? xa_threads() : 1;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(| : bad) if (nt > 1)
#endif
    for (int64_t r = 0; r < rows; r++) {
        const float *a = w + r * K;
        float amax = 0.0f;
        int finite = 1;
        for (int64_t k = 0; k < K; k++) {
            const float m = fabsf(a[k]);
            finite &= m <= FLT_MAX;
            amax = m > amax ? m : amax;
        }
        if (!finite) {
            bad |= 1;
            continue;
        }
        scale[r] = amax / 127.0f;
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (int64_t k = 0; k < K; k++) {
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
            float v = (a[k] * inv + magic) - magic;
#else /* wider intermediates would round twice */
            float v = nearbyintf(a[k] * inv);
            (void)magic;
#endif
            q[r * K + k] = (int8_t)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
        }
    }
    return bad ? -1 : 0;
}

void xa_op_log_softmax(const float *x, int64_t rows, int64_t n, float *y)
{
    const xa_kernels *kt = xa_kern();
#ifdef _OPENMP
    const int nt = rows > 1 && rows * n >= 8 * XA_CHUNK ? xa_threads() : 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
#endif
    for (int64_t r = 0; r < rows; r++) {
        const float *a = x + r * n;
        float *b = y + r * n;
        float mx = -INFINITY;
        for (int64_t i = 0; i < n; i++) mx = a[i] > mx ? a[i] : mx;
        if (mx == -INFINITY) { /* every entry -inf: log_softmax is NaN, as torch's */
            for (int64_t i = 0; i < n; i++) b[i] = NAN;
            continue;
        }
        for (int64_t i = 0; i < n; i++) b[i] = a[i] - mx;
        kt->vexp(b, n);
        double z = 0;
        for (int64_t i = 0; i < n; i++) z += b[i];
        const double lz = log(z);
        for (int64_t i = 0; i < n; i++) b[i] = (float)((double)a[i] - mx - lz);
    }
}

xattn_status xa_op_linear_cm(const float *x, int64_t M, int64_t K, const float *W, const float *b,
                             int64_t N, float *y)
{
    float beta = 0.0f;
    if (b) {
        for (int64_t p = 0; p < M; p++) memcpy(y + p * N, b, (size_t)N * sizeof(float));
        beta = 1.0f;
    }
    if (xa_compute_bf16())
        return xa_sgemm_bf16(NULL, 1, 1, M, N, K, 1.0f, x, M, W, K, beta, y, N) ? XATTN_ERR_NOMEM
                                                                                : XATTN_OK;
    return xattn_sgemm(1, 1, M, N, K, 1.0f, x, M, W, K, beta, y, N);
}

xattn_status xa_op_layernorm(const float *x, int64_t rows, int64_t n, const float *w,
                             const float *b, float eps, float *y)
{
    return xattn_layernorm(x, rows, n, w, b, eps, y);
}

xattn_status xa_op_rmsnorm(const float *x, int64_t rows, int64_t n, const float *w, float eps,
                           float *y)
{
    return xattn_rmsnorm(x, rows, n, w, eps, y);
}

xattn_status xa_op_gelu(float *x, int64_t n, int tanh_form)
{
    return n == 0 ? XATTN_OK
                  : xattn_gelu(x, n, tanh_form); /* no rows: a sharded run's empty shard */
}

/* Runs the statement given over [c0, c1) ranges covering [0, n) in fixed chunks, threaded
 * when large (the chunks do not depend on the thread count). */
#ifdef _OPENMP
#define XA_CHUNKED(n, ...)                                                                         \
    do {                                                                                           \
        const int64_t n_ = (n), nch_ = (n_ + XA_CHUNK - 1) / XA_CHUNK;                             \
        const int nt_ = chunk_threads(n_);                                                         \
        _Pragma("omp parallel for schedule(static) num_threads(nt_)") for (int64_t ch_ = 0;        \
                                                                           ch_ < nch_; ch_++)      \
        {                                                                                          \
            const int64_t c0 = ch_ * XA_CHUNK, c1 = XA_MIN(n_, c0 + XA_CHUNK);                     \
            __VA_ARGS__;                                                                           \
        }                                                                                          \
    } while (0)
#else
#define XA_CHUNKED(n, ...)                                                                         \
    do {                                                                                           \
        const int64_t c0 = 0, c1 = (n);                                                            \
        __VA_ARGS__;                                                                               \
    } while (0)
#endif

void xa_op_relu(float *x, int64_t n)
{
    XA_CHUNKED(n, for (int64_t i = c0; i < c1; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f);
}

void xa_op_add(float *y, const float *x, int64_t n) { xa_op_axpy(1.0f, x, y, n); }

void xa_op_axpy(float a, const float *x, float *y, int64_t n)
{
    const xa_kernels *kt = xa_kern();
    XA_CHUNKED(n, kt->axpy(a, x + c0, y + c0, c1 - c0));
}

void xa_op_scale(float *y, float a, int64_t n)
{
    XA_CHUNKED(n, for (int64_t i = c0; i < c1; i++) y[i] *= a);
}

void xa_op_add_rows(float *y, int64_t rows, int64_t n, const float *b, float alpha)
{
    const xa_kernels *kt = xa_kern();
    XA_CHUNKED(rows, for (int64_t r = c0; r < c1; r++) kt->axpy(alpha, b, y + r * n, n));
}

void xa_op_scale_rows(float *y, int64_t rows, int64_t n, const float *s)
{
    XA_CHUNKED(rows, for (int64_t r = c0; r < c1; r++) for (int64_t i = 0; i < n; i++)
                         y[r * n + i] *= s[r]);
}

void xa_op_geglu(const float *in, int64_t rows, int64_t h, float *y)
{
    const xa_kernels *kt = xa_kern();
    XA_CHUNKED(
        rows, for (int64_t r = c0; r < c1; r++) {
            float *yr = y + r * h;
            memcpy(yr, in + r * 2 * h + h, (size_t)h * sizeof(float));
            kt->gelu(yr, h, 0);
            for (int64_t i = 0; i < h; i++) yr[i] *= in[r * 2 * h + i];
        });
}

void xa_op_transpose(const float *src, float *dst, int64_t B, int64_t P, int64_t C)
{
    const int64_t T = 32;
    const int64_t np = (P + T - 1) / T, nc = (C + T - 1) / T;
    const int64_t ntask = B * np * nc;
#ifdef _OPENMP
#pragma omp parallel for num_threads(xa_threads()) if (B * P * C > (1 << 15)) schedule(static)
#endif
    for (int64_t t = 0; t < ntask; t++) {
        int64_t b = t / (np * nc), r = t % (np * nc);
        int64_t p0 = (r / nc) * T, c0 = (r % nc) * T;
        int64_t p1 = XA_MIN(p0 + T, P), c1 = XA_MIN(c0 + T, C);
        const float *s = src + b * P * C;
        float *d = dst + b * P * C;
        for (int64_t c = c0; c < c1; c++)
            for (int64_t p = p0; p < p1; p++) d[c * P + p] = s[p * C + c];
    }
}

void xa_op_permute4(const float *src, const int64_t dims[4], const int perm[4], float *dst)
{
    int64_t st[4] = {dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1}, od[4], os[4];
    for (int k = 0; k < 4; k++) od[k] = dims[perm[k]], os[k] = st[perm[k]];
    const int64_t rows = od[0] * od[1] * od[2];
#ifdef _OPENMP
#pragma omp parallel for num_threads(xa_threads()) if (rows * od[3] > (1 << 16)) schedule(static)
#endif
    for (int64_t r = 0; r < rows; r++) {
        const int64_t i0 = r / (od[1] * od[2]), i1 = r / od[2] % od[1], i2 = r % od[2];
        const float *s0 = src + i0 * os[0] + i1 * os[1] + i2 * os[2];
        float *d0 = dst + r * od[3];
        for (int64_t i3 = 0; i3 < od[3]; i3++) d0[i3] = s0[i3 * os[3]];
    }
}

void xa_op_mean(const float *x, int64_t B, int64_t F, int64_t R, float *y)
{
    const xa_kernels *kt = xa_kern();
    const float inv = 1.0f / (float)F;
    for (int64_t b = 0; b < B; b++) {
        float *yb = y + b * R;
        memcpy(yb, x + b * F * R, (size_t)R * sizeof(float));
        for (int64_t f = 1; f < F; f++) kt->axpy(1.0f, x + (b * F + f) * R, yb, R);
        xa_op_scale(yb, inv, R);
    }
}

void xa_op_pool2(const float *x, int64_t B, int64_t N, int64_t C, float *y)
{
    const int64_t No = N / 2;
    XA_CHUNKED(
        B * No, for (int64_t r = c0; r < c1; r++) {
            const int64_t b = r / No, t = r % No;
            const float *a = x + (b * N + 2 * t) * C;
            for (int64_t c = 0; c < C; c++) y[r * C + c] = (a[c] + a[C + c]) * 0.5f;
        });
}

void xa_op_max_over(const float *x, int64_t B, int64_t T, int64_t N, float *y)
{
    for (int64_t b = 0; b < B; b++) {
        float *yb = y + b * N;
        memcpy(yb, x + b * T * N, (size_t)N * sizeof(float));
        for (int64_t t = 1; t < T; t++) {
            const float *xt = x + (b * T + t) * N;
            for (int64_t n = 0; n < N; n++) yb[n] = xt[n] > yb[n] ? xt[n] : yb[n];
        }
    }
}

void xa_attn_heads(xa_attn *a, int64_t B, int64_t H, int64_t I, int64_t J, int64_t dh, int64_t dv,
                   const float *q, int64_t q_ld, const float *k, int64_t k_ld, const float *v,
                   int64_t v_ld, float *out, int64_t o_ld)
{
    a->B = B, a->H = H, a->I = I, a->J = J, a->dh = dh, a->dv = dv;
    a->q = q, a->q_sb = I * q_ld, a->q_sh = dh, a->q_si = q_ld;
    a->k = k, a->k_sb = J * k_ld, a->k_sh = dh, a->k_sj = k_ld;
    a->v = v, a->v_sb = J * v_ld, a->v_sh = dv, a->v_sj = v_ld;
    a->out = out, a->o_sb = I * o_ld, a->o_sh = dv, a->o_si = o_ld;
}

/* Compute bf16: per-head rows (B, H, R, d) at src (strides sb, sh, sr) rounded to bfloat16 into
 * dst, contiguous; *sb, *sh, *sr become dst's strides. */
static const float *rounded_heads(const float *src, int64_t B, int64_t H, int64_t R, int64_t d,
                                  int64_t *sb, int64_t *sh, int64_t *sr, float *dst)
{
    if (!src) return NULL;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t r = 0; r < R; r++) {
                const float *s = src + b * *sb + h * *sh + r * *sr;
                float *t = dst + ((b * H + h) * R + r) * d;
                for (int64_t c = 0; c < d; c++) t[c] = xa_round_bf16(s[c]);
            }
    *sb = H * R * d, *sh = R * d, *sr = d;
    return dst;
}

/* Row i of head hd of batch item b of attention a, every logit of which is masked (log-sum-exp
 * -FLT_MAX): transformers' eager attention ADDS its mask (finfo.min) to the logits, so the row
 * is the uniform average 1/J, and autograd's softmax backward still passes
 * dS[j] = (dP[j] - D) / J (dP = dO v^T, D = dO . out) through the logits to q and k, where
 * xa_op_attention_backward (masked logits carry no gradient) gives them none. Adds that part to
 * g's dq and dk. */
static void additive_full_row(const xa_attn *a, const xa_attn_grad *g, int64_t b, int64_t hd,
                              int64_t i)
{
    const float *dO = g->dout + b * g->do_sb + hd * g->do_sh + i * g->do_si;
    const float *o = a->out + b * a->o_sb + hd * a->o_sh + i * a->o_si;
    const float *q = a->q + b * a->q_sb + hd * a->q_sh + i * a->q_si;
    float *dq = g->dq ? g->dq + b * g->dq_sb + hd * g->dq_sh + i * g->dq_si : NULL;
    double D = 0.0;
    for (int64_t x = 0; x < a->dv; x++) D += (double)dO[x] * o[x];
    for (int64_t j = 0; j < a->J; j++) {
        const float *k = a->k + b * a->k_sb + hd * a->k_sh + j * a->k_sj;
        const float *v = a->v + b * a->v_sb + hd * a->v_sh + j * a->v_sj;
        double dP = 0.0;
        for (int64_t x = 0; x < a->dv; x++) dP += (double)dO[x] * v[x];
        const float ds = (float)((dP - D) / (double)a->J) * a->scale;
        if (dq)
            for (int64_t x = 0; x < a->dh; x++) dq[x] += ds * k[x];
        if (g->dk) {
            float *dk = g->dk + b * g->dk_sb + hd * g->dk_sh + j * g->dk_sj;
            for (int64_t x = 0; x < a->dh; x++) dk[x] += ds * q[x];
        }
    }
}

/* additive_full_row for every fully masked row of a (its log-sum-exp in g->lse). */
static void additive_full_rows(const xa_attn *a, const xa_attn_grad *g)
{
    for (int64_t b = 0; b < a->B; b++)
        for (int64_t hd = 0; hd < a->H; hd++)
            for (int64_t i = 0; i < a->I; i++)
                if (g->lse[(b * a->H + hd) * a->I + i] <= -FLT_MAX)
                    additive_full_row(a, g, b, hd, i);
}

xattn_status xa_op_attention_full_rows_backward(const xa_attn *a, const xa_attn_grad *g)
{
    if (a->fill != XATTN_FILL_MIN_FLOAT) return XATTN_OK;
    const xd_comm *c = xd_sharded(xa_ctx_cur());
    if (c) return xd_op_full_rows(c, a, g);
    additive_full_rows(a, g);
    return XATTN_OK;
}

int64_t xa_op_min_rows(void) { return xd_sharded(xa_ctx_cur()) ? 0 : 1; }

int xa_op_sharded(void) { return xd_sharded(xa_ctx_cur()) != NULL; }

xattn_status xa_op_shard_keys(const char *what, int has, int64_t cols, int64_t I, int64_t J,
                              int64_t *Jtot, int *spans)
{
    const xd_comm *c = xd_sharded(xa_ctx_cur());
    if (c) return xd_shard_keys(c, what, has, cols, I, J, Jtot, spans);
    *Jtot = J, *spans = has;
    if (has && cols && cols != J)
        return xa_error(XATTN_ERR_SHAPE, "%s holds %lld key columns; the keys are %lld", what,
                        (long long)cols, (long long)J);
    return XATTN_OK;
}

xattn_status xa_op_gather_keys(const void *src, int64_t rows, int64_t J, size_t esz, void *dst,
                               int64_t Jtot)
{
    const xd_comm *c = xd_sharded(xa_ctx_cur());
    if (c) return xd_gather_keys(c, src, rows, J, esz, dst, Jtot);
    if (!dst) return xa_error(XATTN_ERR_NOMEM, "gathering key columns: out of memory");
    if (rows > 0 && J > 0) memcpy(dst, src, esz * (size_t)(rows * J));
    return XATTN_OK;
}

/* The attention kernel of the current context: in a sharded module run (xattn_ctx_set_sharded)
 * the ring kernels over its communicator (src/dist/modrun.c), else the local one. */
static xattn_status attention_here(const xa_attn *p)
{
    const xd_comm *c = xd_sharded(xa_ctx_cur());
    return c ? xd_op_attention(c, p) : xa_attention(p);
}

xattn_status xa_op_attention(const xa_attn *p)
{
    if (!xa_compute_bf16()) return attention_here(p);
    /* queries, keys and values rounded to bfloat16 (probabilities and statistics float32) */
    const int64_t nq = p->B * p->H * p->I * p->dh, nk = p->B * p->H * p->J * p->dh,
                  nv = p->v ? p->B * p->H * p->J * p->dv : 0;
    xa_ws *ws = xa_ws_get(sizeof(float) * (size_t)(nq + nk + nv + 1));
    if (!ws) return XATTN_ERR_NOMEM;
    float *buf = xa_ws_data(ws);
    xa_attn a = *p;
    a.q = rounded_heads(p->q, p->B, p->H, p->I, p->dh, &a.q_sb, &a.q_sh, &a.q_si, buf);
    a.k = rounded_heads(p->k, p->B, p->H, p->J, p->dh, &a.k_sb, &a.k_sh, &a.k_sj, buf + nq);
    a.v = rounded_heads(p->v, p->B, p->H, p->J, p->dv, &a.v_sb, &a.v_sh, &a.v_sj, buf + nq + nk);
    a.bf16 = 1;
    xattn_status s = attention_here(&a);
    xa_ws_put(ws);
    return s;
}

xattn_status xa_op_bidir_attention(const xa_bidir *p)
{
    const xd_comm *c = xd_sharded(xa_ctx_cur());
    if (!xa_compute_bf16()) return c ? xd_op_bidir(c, p) : xa_bidir_attention(p);
    const int64_t ni = p->B * p->H * p->I * p->dh, nj = p->B * p->H * p->J * p->dh;
    xa_ws *ws = xa_ws_get(sizeof(float) * (size_t)(2 * (ni + nj) + 1));
    if (!ws) return XATTN_ERR_NOMEM;
    float *buf = xa_ws_data(ws);
    xa_bidir a = *p;
    a.qk = rounded_heads(p->qk, p->B, p->H, p->I, p->dh, &a.qk_sb, &a.qk_sh, &a.qk_si, buf);
    a.cqk =
        rounded_heads(p->cqk, p->B, p->H, p->J, p->dh, &a.cqk_sb, &a.cqk_sh, &a.cqk_sj, buf + ni);
    a.v = rounded_heads(p->v, p->B, p->H, p->I, p->dh, &a.v_sb, &a.v_sh, &a.v_si, buf + ni + nj);
    a.cv = rounded_heads(p->cv, p->B, p->H, p->J, p->dh, &a.cv_sb, &a.cv_sh, &a.cv_sj,
                         buf + 2 * ni + nj);
    a.bf16 = 1;
    xattn_status s = c ? xd_op_bidir(c, &a) : xa_bidir_attention(&a);
    xa_ws_put(ws);
    return s;
}

xattn_status xa_op_bidir_backward(const xa_bidir *p, const xa_bidir_grad *g)
{
    const xd_comm *c = xd_sharded(xa_ctx_cur());
    return c ? xd_op_bidir_backward(c, p, g) : xa_bidir_backward(p, g);
}

xattn_status xa_op_attention_backward(const xa_attn *p, const xa_attn_grad *g)
{
    const xd_comm *c = xd_sharded(xa_ctx_cur());
    return c ? xd_op_attention_backward(c, p, g) : xa_attention_backward(p, g);
}

void xa_op_lse_merge(const float *o1, const float *l1, const float *o2, const float *l2,
                     int64_t rows, int64_t dv, float *o, float *l)
{
    for (int64_t r = 0; r < rows; r++) {
        const float a = l1[r], b = l2[r];
        const float m = a > b ? a : b;
        if (m == -INFINITY) { /* neither part saw a key */
            for (int64_t d = 0; d < dv; d++) o[r * dv + d] = 0.0f;
            l[r] = -INFINITY;
            continue;
        }
        const double L = (double)m + log(exp((double)a - m) + exp((double)b - m));
        const float w1 = (float)exp((double)a - L), w2 = (float)exp((double)b - L);
        for (int64_t d = 0; d < dv; d++) o[r * dv + d] = w1 * o1[r * dv + d] + w2 * o2[r * dv + d];
        l[r] = (float)L;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Backward                                                                                 */

#define XA_RB ((int64_t)64) /* rows per block of the weight/bias reductions */

static float upd(float old, float v, int accumulate) { return accumulate ? old + v : v; }

/* y[i] (+)= sum over b < B of x[b * stride + i] for i < n, in order of b, each block of columns
 * on one thread: bias gradients (column sums of dy) and sums over batch items. */
static void sum_strided(const float *x, int64_t B, int64_t stride, int64_t n, float *y,
                        int accumulate)
{
    XA_CHUNKED(
        n, for (int64_t i = c0; i < c1; i++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < B; b++) acc += x[b * stride + i];
            y[i] = upd(y[i], acc, accumulate);
        });
}

/* out (n) (+)= sum over row blocks (in order) of the partial sums part (nblk, n). */
static void reduce_blocks(const float *part, int64_t nblk, int64_t n, float *out, int accumulate)
{
    for (int64_t c = 0; c < n; c++) {
        float s = 0.0f;
        for (int64_t k = 0; k < nblk; k++) s += part[k * n + c];
        out[c] = upd(out[c], s, accumulate);
    }
}

xattn_status xa_op_linear_backward(const float *x, int64_t M, int64_t K, const float *W, int64_t N,
                                   const float *dy, float *dx, float *dW, float *db, int accumulate)
{
    const float beta = accumulate ? 1.0f : 0.0f;
    xattn_status s = XATTN_OK;
    if (dx) {
        if (N == 0) {
            if (!accumulate) memset(dx, 0, sizeof(float) * (size_t)(M * K));
        } else if ((s = xattn_sgemm(0, 0, M, K, N, 1.0f, dy, N, W, K, beta, dx, K))) {
            return s;
        }
    }
    if (dW) {
        if (M == 0) {
            if (!accumulate) memset(dW, 0, sizeof(float) * (size_t)(N * K));
        } else if ((s = xattn_sgemm(1, 0, N, K, M, 1.0f, dy, N, x, K, beta, dW, K))) {
            return s;
        }
    }
    if (db) sum_strided(dy, M, N, N, db, accumulate); /* columns of dy over the rows */
    return XATTN_OK;
}

xattn_status xa_op_linear_cm_backward(const float *x, int64_t B, int64_t M, int64_t K,
                                      const float *W, int64_t N, const float *dy, float *dx,
                                      float *dW, float *db, int accumulate)
{
    xattn_status s = XATTN_OK;
    for (int64_t b = 0; b < B && !s; b++) {
        const float *xb = x + b * K * M, *gb = dy + b * M * N;
        /* dx[b] (K, M) = W^T (K, N) dy[b]^T (N, M) */
        if (dx && N > 0)
            s = xattn_sgemm(1, 1, K, M, N, 1.0f, W, K, gb, N, accumulate ? 1.0f : 0.0f,
                            dx + b * K * M, M);
        else if (dx && !accumulate)
            memset(dx + b * K * M, 0, sizeof(float) * (size_t)(K * M));
        /* dW (N, K) += dy[b]^T (N, M) x[b]^T (M, K) */
        if (!s && dW && M > 0)
            s = xattn_sgemm(1, 1, N, K, M, 1.0f, gb, N, xb, M, accumulate || b ? 1.0f : 0.0f, dW,
                            K);
    }
    if (!s && dW && !accumulate && (B == 0 || M == 0))
        memset(dW, 0, sizeof(float) * (size_t)(N * K));
    if (!s && db) sum_strided(dy, B * M, N, N, db, accumulate); /* columns of dy, every row */
    return s;
}

/* Shared by both norms: per row, xhat = (x - mean) * rstd (mean 0 for RMSNorm), g = dy * w,
 * dx = rstd * (g - mean(g) [LayerNorm only] - xhat * mean(g * xhat)); per row block, the
 * partial sums of dy * xhat (dw) and dy (db). */
static xattn_status norm_backward(const float *x, int64_t rows, int64_t n, const float *w,
                                  float eps, int centred, const float *dy, float *dx, float *dw,
                                  float *db, int accumulate)
{
    const int64_t nblk = (rows + XA_RB - 1) / XA_RB;
    float *part = NULL;
    if ((dw || db) && rows > 0) {
        part = xa_alloc(sizeof(float) * (size_t)(2 * nblk * n + 1));
        if (!part) return xa_error(XATTN_ERR_NOMEM, "norm backward: out of memory");
    }
    float *pw = part, *pb = part ? part + nblk * n : NULL;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(rows *n > (1 << 16) ? xa_threads() : 1)
#endif
    for (int64_t k = 0; k < nblk; k++) {
        if (pw) memset(pw + k * n, 0, sizeof(float) * (size_t)n);
        if (pb) memset(pb + k * n, 0, sizeof(float) * (size_t)n);
        for (int64_t r = k * XA_RB; r < XA_MIN(rows, (k + 1) * XA_RB); r++) {
            const float *xr = x + r * n, *gr = dy + r * n;
            double mean = 0.0, var = 0.0;
            if (centred) {
                for (int64_t i = 0; i < n; i++) mean += xr[i];
                mean /= (double)n;
            }
            for (int64_t i = 0; i < n; i++) var += ((double)xr[i] - mean) * ((double)xr[i] - mean);
            const double rstd = 1.0 / sqrt(var / (double)n + (double)eps);
            double mg = 0.0, mgx = 0.0;
            for (int64_t i = 0; i < n; i++) {
                const double xh = ((double)xr[i] - mean) * rstd, g = gr[i] * (w ? w[i] : 1.0f);
                mg += g;
                mgx += g * xh;
                if (pw) pw[k * n + i] += (float)(gr[i] * xh);
                if (pb) pb[k * n + i] += gr[i];
            }
            mg /= (double)n;
            mgx /= (double)n;
            if (!dx) continue;
            float *dr = dx + r * n;
            for (int64_t i = 0; i < n; i++) {
                const double xh = ((double)xr[i] - mean) * rstd, g = gr[i] * (w ? w[i] : 1.0f);
                const float v = (float)(rstd * (g - (centred ? mg : 0.0) - xh * mgx));
                dr[i] = upd(dr[i], v, accumulate);
            }
        }
    }
    if (dw) {
        if (rows > 0)
            reduce_blocks(pw, nblk, n, dw, accumulate);
        else if (!accumulate)
            memset(dw, 0, sizeof(float) * (size_t)n);
    }
    if (db) {
        if (rows > 0)
            reduce_blocks(pb, nblk, n, db, accumulate);
        else if (!accumulate)
            memset(db, 0, sizeof(float) * (size_t)n);
    }
    xa_free(part);
    return XATTN_OK;
}

xattn_status xa_op_layernorm_backward(const float *x, int64_t rows, int64_t n, const float *w,
                                      float eps, const float *dy, float *dx, float *dw, float *db,
                                      int accumulate)
{
    return norm_backward(x, rows, n, w, eps, 1, dy, dx, dw, db, accumulate);
}

xattn_status xa_op_rmsnorm_backward(const float *x, int64_t rows, int64_t n, const float *w,
                                    float eps, const float *dy, float *dx, float *dw,
                                    int accumulate)
{
    return norm_backward(x, rows, n, w, eps, 0, dy, dx, dw, NULL, accumulate);
}

/* d/dx gelu(x): erf form Phi(x) + x phi(x); tanh form as torch's GELU(approximate="tanh"). */
static float gelu_grad(float x, int tanh_form)
{
    if (tanh_form) {
        const float k = 0.7978845608028654f, c = 0.044715f;
        const float t = tanhf(k * (x + c * x * x * x));
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * c * x * x);
    }
    const float cdf = 0.5f * (1.0f + erff(x * 0.7071067811865476f));
    const float pdf = 0.3989422804014327f * expf(-0.5f * x * x);
    return cdf + x * pdf;
}

void xa_op_gelu_backward(const float *x, const float *dy, float *dx, int64_t n, int tanh_form)
{
    XA_CHUNKED(n, for (int64_t i = c0; i < c1; i++) dx[i] = dy[i] * gelu_grad(x[i], tanh_form));
}

void xa_op_relu_backward(const float *x, const float *dy, float *dx, int64_t n)
{
    XA_CHUNKED(n, for (int64_t i = c0; i < c1; i++) dx[i] = x[i] > 0.0f ? dy[i] : 0.0f);
}

void xa_op_geglu_backward(const float *in, int64_t rows, int64_t h, const float *dy, float *din)
{
    const xa_kernels *kt = xa_kern();
    XA_CHUNKED(
        rows, for (int64_t r = c0; r < c1; r++) {
            const float *a = in + r * 2 * h, *g = a + h, *d = dy + r * h;
            float *da = din + r * 2 * h, *dg = da + h;
            memcpy(da, g, (size_t)h * sizeof(float));
            kt->gelu(da, h, 0); /* da = gelu(g) */
            for (int64_t i = 0; i < h; i++) {
                dg[i] = d[i] * a[i] * gelu_grad(g[i], 0);
                da[i] *= d[i];
            }
        });
}

void xa_op_softmax_backward(const float *y, const float *dy, float *dx, int64_t rows, int64_t n)
{
    XA_CHUNKED(
        rows, for (int64_t r = c0; r < c1; r++) {
            const float *yr = y + r * n, *gr = dy + r * n;
            float *dr = dx + r * n;
            double s = 0.0;
            for (int64_t i = 0; i < n; i++) s += (double)gr[i] * yr[i];
            for (int64_t i = 0; i < n; i++) dr[i] = yr[i] * (gr[i] - (float)s);
        });
}

void xa_op_mean_backward(const float *dy, int64_t B, int64_t F, int64_t R, float *dx,
                         int accumulate)
{
    const float inv = F > 0 ? 1.0f / (float)F : 0.0f;
    XA_CHUNKED(
        B * F, for (int64_t bf = c0; bf < c1; bf++) {
            const float *d = dy + (bf / F) * R;
            float *o = dx + bf * R;
            for (int64_t r = 0; r < R; r++) o[r] = upd(o[r], d[r] * inv, accumulate);
        });
}

void xa_op_pool2_backward(const float *dy, int64_t B, int64_t N, int64_t C, float *dx,
                          int accumulate)
{
    const int64_t T = N / 2;
    XA_CHUNKED(
        B * N, for (int64_t bn = c0; bn < c1; bn++) {
            const int64_t b = bn / N, t = (bn % N) / 2;
            float *o = dx + bn * C;
            if (t >= T) { /* the dropped odd last token */
                if (!accumulate) memset(o, 0, sizeof(float) * (size_t)C);
                continue;
            }
            const float *d = dy + (b * T + t) * C;
            for (int64_t c = 0; c < C; c++) o[c] = upd(o[c], 0.5f * d[c], accumulate);
        });
}

void xa_op_sum_rows(const float *x, int64_t B, int64_t stride, int64_t n, float *y)
{
    sum_strided(x, B, stride, n, y, 0);
}

double xa_op_dot(const float *x, const float *y, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * y[i];
    return s;
}

void xa_op_mse_grad(const float *y, const float *t, int64_t n, float *d)
{
    xa_op_mse_grad_of(y, t, n, (double)n, d);
}

void xa_op_mse_grad_of(const float *y, const float *t, int64_t n, double count, float *d)
{
    const double k = count > 0 ? 2.0 / count : 0.0;
    XA_CHUNKED(n, for (int64_t i = c0; i < c1; i++) d[i] = (float)(k * ((double)y[i] - t[i])));
}

/* SplitMix64's finaliser: a bijective mix of 64 bits. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t xa_dropout_seed(uint64_t run_seed, uint64_t step, uint64_t tensor)
{
    return mix64(mix64(mix64(run_seed) ^ step) ^ (tensor * 0x9e3779b97f4a7c15ull));
}

void xa_op_dropout(float *x, int64_t n, float p, uint64_t seed)
{
    if (p <= 0.0f) return;
    if (p >= 1.0f) { /* everything dropped, as torch's dropout with p = 1 */
        XA_CHUNKED(n, memset(x + c0, 0, sizeof(float) * (size_t)(c1 - c0)));
        return;
    }
    /* keep when the element's 24-bit uniform draw u satisfies u >= p */
    const uint32_t thr = (uint32_t)((double)p * 16777216.0 + 0.5);
    const float keep = 1.0f / (1.0f - p);
    XA_CHUNKED(
        n, for (int64_t i = c0; i < c1; i++) {
            const uint32_t u =
                (uint32_t)(mix64(seed + 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1)) >> 40);
            x[i] = u >= thr ? x[i] * keep : 0.0f;
        });
}
