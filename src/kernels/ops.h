/*
 * The op layer: every computation of a module goes through these (src/modules/ holds no compute
 * loops and no OpenMP pragmas). Ops take raw pointers and sizes, shapes in comments; they run on
 * the calling thread's current context (threads, kernel set, workspace) and are the seam where a
 * GPU backend plugs in. Elementwise ops are threaded over fixed chunks, so results do not depend
 * on the thread count.
 */
#ifndef XATTN_OPS_H
#define XATTN_OPS_H

#include "kernels/kernels.h"

/* y (M, N) = x (M, K) W^T + b, W (N, K) as nn.Linear stores it, b (N) or NULL;
 * accumulate = 1 adds the result to y instead (a residual add fused into the GEMM). */
xattn_status xa_op_linear(const float *x, int64_t M, int64_t K, const float *W, const float *b,
                          int64_t N, float *y, int accumulate);
/* The same with int8 weights (weight-only quantisation): W (N, K) int8 and a scale per output
 * channel, y[m, n] = scale[n] * sum_k x[m, k] W[n, k] + b[n] (+ y[m, n] when accumulate). Each
 * weight row is read once for all M rows; the result does not depend on the thread count. */
xattn_status xa_op_linear_q8(const float *x, int64_t M, int64_t K, const int8_t *W,
                             const float *scale, const float *b, int64_t N, float *y,
                             int accumulate);
/* The same with W kept as w says (float32, 16 bits or int8): y = x W^T + b (+ y). int8 with a
 * few rows (decoding) goes through xa_op_linear_q8; otherwise the GEMM converts W as it packs
 * it (16-bit weights give exactly the float32 result of the same values). */
xattn_status xa_op_linear_w(const float *x, int64_t M, int64_t K, xa_wt W, const float *b,
                            int64_t N, float *y, int accumulate);
/* Symmetric per-row quantisation of w (rows, K): scale[r] = max_k |w[r, k]| / 127,
 * q[r, k] = round-to-nearest-even(w[r, k] / scale[r]) in [-127, 127] (an all-zero row: scale 0,
 * q 0). Returns -1 when a row holds a value that is not finite (that row's output is left
 * unwritten), else 0. Rows are threaded when many. */
int xa_q8_quantize_rows(const float *w, int64_t rows, int64_t K, int8_t *q, float *scale);
/* y (M, N) = x^T-stored input: x (K, M) channel-major (a 1x1 convolution over positions:
 * x[c * M + p]) times W^T + b -> y (M, N) position-major. */
xattn_status xa_op_linear_cm(const float *x, int64_t M, int64_t K, const float *W, const float *b,
                             int64_t N, float *y);
/* Norms over the last axis of x (rows, n); y may be x. w, b may be NULL. */
xattn_status xa_op_layernorm(const float *x, int64_t rows, int64_t n, const float *w,
                             const float *b, float eps, float *y);
xattn_status xa_op_rmsnorm(const float *x, int64_t rows, int64_t n, const float *w, float eps,
                           float *y);
/* In place over n values. */
xattn_status xa_op_gelu(float *x, int64_t n, int tanh_form);
void xa_op_relu(float *x, int64_t n);
/* y (rows, h) = a * gelu(g) for in (rows, 2h) = [a | g] (diffusers GEGLU; erf GELU). */
void xa_op_geglu(const float *in, int64_t rows, int64_t h, float *y);
/* y += x; y += a * x; y *= a (n values). */
void xa_op_add(float *y, const float *x, int64_t n);
void xa_op_axpy(float a, const float *x, float *y, int64_t n);
void xa_op_scale(float *y, float a, int64_t n);
/* y[r, :] += alpha * b (y (rows, n), b (n)). */
void xa_op_add_rows(float *y, int64_t rows, int64_t n, const float *b, float alpha);
/* y[r, :] *= s[r] (y (rows, n), s (rows)). */
void xa_op_scale_rows(float *y, int64_t rows, int64_t n, const float *s);
/* dst (B, C, P) = src (B, P, C) transposed per batch item. */
void xa_op_transpose(const float *src, float *dst, int64_t B, int64_t P, int64_t C);
/* dst = src with its 4 axes permuted: src of shape dims (d0, d1, d2, d3); dst axis k is src
 * axis perm[k] (dst shape (dims[perm[0]], ..., dims[perm[3]])). */
void xa_op_permute4(const float *src, const int64_t dims[4], const int perm[4], float *dst);
/* y (B, R) = mean over f of x (B, F, R). */
void xa_op_mean(const float *x, int64_t B, int64_t F, int64_t R, float *y);
/* Token pooling AvgPool1d(2, stride 2): y[b, t, :] = (x[b, 2t, :] + x[b, 2t + 1, :]) / 2 for
 * t < N / 2, x (B, N, C), y (B, N / 2, C) (an odd last token is dropped). */
void xa_op_pool2(const float *x, int64_t B, int64_t N, int64_t C, float *y);
/* y[b, n] = max over t of x[b, t, n] (x (B, T, N)). */
void xa_op_max_over(const float *x, int64_t B, int64_t T, int64_t N, float *y);

/* Sets the sizes and strides of `a` for heads read in place from row-major projections
 * ((h d) channel split, no transposes): q (B, I, q_ld), k (B, J, k_ld), v (B, J, v_ld),
 * out (B, I, o_ld); head h reads channels [h dh, (h+1) dh) of q and k, [h dv, (h+1) dv) of v
 * and writes those of out. Everything else of `a` is left as it is. */
void xa_attn_heads(xa_attn *a, int64_t B, int64_t H, int64_t I, int64_t J, int64_t dh, int64_t dv,
                   const float *q, int64_t q_ld, const float *k, int64_t k_ld, const float *v,
                   int64_t v_ld, float *out, int64_t o_ld);
/* The fewest rows a sequence may have: 1, or 0 in a sharded run (xattn_ctx_set_sharded on
 * the current context: a rank's shard of a sequence may be empty). */
int64_t xa_op_min_rows(void);
/* Key columns over every rank of a sharded run, for masks that hold this rank's query rows and
 * every key column (mha's attn_mask): *Jtot = the keys of every rank together (J elsewhere) and
 * *spans = whether the ranks have such a mask, `what` (has, agreed on: an error names a rank
 * that has none while the others do; a rank with no rows, I = 0, goes with the others). cols:
 * the mask's column count when known (checked against *Jtot), else 0. Collective in a sharded
 * run. */
xattn_status xa_op_shard_keys(const char *what, int has, int64_t cols, int64_t I, int64_t J,
                              int64_t *Jtot, int *spans);
/* 1 in a sharded module run (xattn_ctx_set_sharded on the current context). */
int xa_op_sharded(void);
/* Each rank's (rows, J) block of esz-byte values gathered into dst (rows, Jtot) in rank order
 * (the contiguous layout's key positions); in an unsharded run a copy. dst NULL: this rank ran
 * out of memory for it (told to the others). Collective in a sharded run. */
xattn_status xa_op_gather_keys(const void *src, int64_t rows, int64_t J, size_t esz, void *dst,
                               int64_t Jtot);
/* Fused attention (softmax(scale q k^T + bias, masked) v) with every option of xa_attn:
 * strided heads, masks, bias, causal with an offset (query and key position origins), both
 * fill semantics, log-sum-exp and probabilities out, talking-heads mixing. */
xattn_status xa_op_attention(const xa_attn *p);
/* Bidirectional attention (both softmaxes of one similarity). */
xattn_status xa_op_bidir_attention(const xa_bidir *p);
xattn_status xa_op_bidir_backward(const xa_bidir *p, const xa_bidir_grad *g);
xattn_status xa_op_attention_backward(const xa_attn *p, const xa_attn_grad *g);
/* The part of the gradient of attention a (after xa_op_attention_backward with g) that
 * transformers' additive masks give a row whose every logit is masked under -FLT_MAX fill
 * (log-sum-exp -FLT_MAX in g->lse): the row is the uniform average 1/J, and autograd's softmax
 * backward passes dS[j] = (dP[j] - D) / J (dP = dO v^T, D = dO . out) through the logits to q
 * and k, where xa_op_attention_backward gives them none. Adds it to g's dq and dk. Nothing
 * under -inf fill. In a sharded run over every rank's keys. */
xattn_status xa_op_attention_full_rows_backward(const xa_attn *a, const xa_attn_grad *g);
/* Merges partial attention results over disjoint key sets (ring attention):
 *   L = log(e^L1 + e^L2), o = e^(L1 - L) o1 + e^(L2 - L) o2
 * o1, o2, o (rows, dv), l1, l2, l (rows); o may be o1, l may be l1. A row with L1 = L2 = -inf
 * (no key at all) stays zero with L = -inf. */
void xa_op_lse_merge(const float *o1, const float *l1, const float *o2, const float *l2,
                     int64_t rows, int64_t dv, float *o, float *l);

/* ---- Backward of the ops (each beside its forward in op_layer.c). Inputs are the forward's
 * inputs (x) and the gradient of its output (dy); the gradients are overwritten, or added to
 * when accumulate != 0; any gradient pointer may be NULL (not wanted). Reductions over rows
 * (weight and bias gradients) run over fixed row blocks summed in order, so results do not
 * depend on the thread count. dx may not alias dy unless stated. */

/* y = x W^T + b: dx (M, K) = dy W, dW (N, K) = dy^T x, db (N) = sum over rows of dy. */
xattn_status xa_op_linear_backward(const float *x, int64_t M, int64_t K, const float *W, int64_t N,
                                   const float *dy, float *dx, float *dW, float *db,
                                   int accumulate);
/* xa_op_linear_cm over B items: x (B, K, M) channel-major (a 1x1 convolution's input), dy
 * (B, M, N) position-major -> dx (B, K, M) channel-major, dW (N, K) and db (N) summed over the
 * items in order. */
xattn_status xa_op_linear_cm_backward(const float *x, int64_t B, int64_t M, int64_t K,
                                      const float *W, int64_t N, const float *dy, float *dx,
                                      float *dW, float *db, int accumulate);
/* LayerNorm / RMSNorm over rows of n (w, b as the forward; NULL: without); the statistics are
 * recomputed from x. dw, db: (n). */
xattn_status xa_op_layernorm_backward(const float *x, int64_t rows, int64_t n, const float *w,
                                      float eps, const float *dy, float *dx, float *dw, float *db,
                                      int accumulate);
xattn_status xa_op_rmsnorm_backward(const float *x, int64_t rows, int64_t n, const float *w,
                                    float eps, const float *dy, float *dx, float *dw,
                                    int accumulate);
/* Elementwise: dx = dy * f'(x) (dx may be dy). */
void xa_op_gelu_backward(const float *x, const float *dy, float *dx, int64_t n, int tanh_form);
void xa_op_relu_backward(const float *x, const float *dy, float *dx, int64_t n);
/* GEGLU: in (rows, 2h) = [a | g], dy (rows, h) -> din (rows, 2h). */
void xa_op_geglu_backward(const float *in, int64_t rows, int64_t h, const float *dy, float *din);
/* y (rows, n) = log_softmax(x) along each row: x - max - log(sum exp(x - max)), the sum in
 * float64 of the kernel set's exp; y must not overlap x. Rows are independent (threaded when large;
 * the result does not depend on the thread count). */
void xa_op_log_softmax(const float *x, int64_t rows, int64_t n, float *y);
/* Row softmax from its output y: dx = y o (dy - rowsum(dy o y)) (dx may be dy). */
void xa_op_softmax_backward(const float *y, const float *dy, float *dx, int64_t rows, int64_t n);
/* Mean over f (xa_op_mean): dx (B, F, R) = dy (B, R) / F. */
void xa_op_mean_backward(const float *dy, int64_t B, int64_t F, int64_t R, float *dx,
                         int accumulate);
/* AvgPool1d(2, 2) (xa_op_pool2): dx (B, N, C); an odd last token gets 0. */
void xa_op_pool2_backward(const float *dy, int64_t B, int64_t N, int64_t C, float *dx,
                          int accumulate);

/* y (n) = sum over b < B of x[b * stride + 0 .. n) (in order). */
void xa_op_sum_rows(const float *x, int64_t B, int64_t stride, int64_t n, float *y);

/* sum of x[i] * y[i] over n values, in double, in order (the same for every thread count). */
double xa_op_dot(const float *x, const float *y, int64_t n);

/* The gradient of F.mse_loss(y, t) (reduction 'mean') over n values: d = 2 (y - t) / n. */
void xa_op_mse_grad(const float *y, const float *t, int64_t n, float *d);
/* The same for n of the count values of a mean taken over more (a shard's rows of a sharded
 * run): d = 2 (y - t) / count. */
void xa_op_mse_grad_of(const float *y, const float *t, int64_t n, double count, float *d);

/* Dropout with probability p (0 <= p < 1), in place: x[i] = 0 with probability p, else
 * x[i] / (1 - p). The keep/drop decision of element i is a counter-based hash of (seed, i):
 * nothing is stored, the backward (the same call on dy with the same seed) regenerates it,
 * and it does not depend on threads. p = 0 is the identity. Callers derive the seed from
 * (run seed, step, tensor) with xa_dropout_seed. */
void xa_op_dropout(float *x, int64_t n, float p, uint64_t seed);
uint64_t xa_dropout_seed(uint64_t run_seed, uint64_t step, uint64_t tensor);

#endif
