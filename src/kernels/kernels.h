/*
 * Internal kernel interface. Kernels take raw float pointers and sizes; shapes are in comments.
 * One table per instruction set (scalar, avx2, avx512, neon) is filled at start-up and selected
 * from the CPU's features; the scalar table is the reference every other one is tested against.
 */
#ifndef XATTN_KERNELS_H
#define XATTN_KERNELS_H

#include "xattn.h"

#include <stddef.h>
#include <stdint.h>

/*
 * Micro-kernel (BLIS style), full tile only:
 *   C[i*ldc + j] (= or +=) sum_{p<k} A[p*lda + i] * B[p*ldb + j]   for i < mr, j < nr
 * A: (k, mr) "column panel": row p holds the mr values of column p of the left operand.
 * B: (k, nr) "row panel": row p holds nr values of row p of the right operand.
 * accumulate = 0 overwrites C, 1 adds to it. lda >= mr and ldb >= nr may exceed the panel
 * width (packed panels use lda = mr, ldb = nr; other callers read operands in place).
 */
typedef void (*xa_ukr_fn)(int64_t k, const float *A, int64_t lda, const float *B, int64_t ldb,
                          float *C, int64_t ldc, int accumulate);

/*
 * bf16 dot-product micro-kernel (compute bf16, on CPUs with bf16 dot-product instructions):
 *   C[i*ldc + j] (= or +=) sum_{p<k} A(i, p) * B(p, j)   for i < mr_bf16, j < nr_bf16
 * with both operands bfloat16, packed in pairs along k: uint32 = bf16(x[2q]) | bf16(x[2q+1]) << 16
 *   A: blocks of hb = kb_bf16 / 2 pairs: pair q of row i at ((q / hb) * mr_bf16 + i) * hb + q % hb
 *   B: pair q of column j at q * nr_bf16 + j
 * k a multiple of kb_bf16 (panels zero padded). Sums are float32; each instruction's own order
 * of the additions, subnormal inputs and results flushed to zero.
 */
typedef void (*xa_ukr_bf16_fn)(int64_t k, const uint32_t *A, const uint32_t *B, float *C,
                               int64_t ldc, int accumulate);

typedef struct xa_kernels {
    const char *name; /* "scalar", "avx2", "avx512", "avx512bf16", "amx", "neon" */
    int mr, nr;       /* micro-tile of ukr */
    xa_ukr_fn ukr;
    /* NULL where the CPU has no bf16 dot products: compute bf16 then runs the float32
     * micro-kernel on operands rounded to bf16 (the same products, summed in another order) */
    xa_ukr_bf16_fn ukr_bf16;
    int mr_bf16, nr_bf16, kb_bf16;

    /* sum_i a[i] * b[i] over n values (fp32 accumulation in any order). */
    float (*dot)(const float *a, const float *b, int64_t n);

    /* y[i] += a * x[i] over n values. */
    void (*axpy)(float a, const float *x, float *y, int64_t n);
    /* y[r] = sum_d A[r*lda + d] * x[d]  for r < rows, d < n      (A rows, e.g. keys) */
    void (*gemv)(const float *A, int64_t lda, int64_t rows, const float *x, int64_t n, float *y);
    /* y[d] += sum_r p[r] * A[r*lda + d]  for d < n, r < rows     (weighted sum of rows) */
    void (*gemv_t)(const float *A, int64_t lda, int64_t rows, const float *p, int64_t n, float *y);

    /* x[i] = exp(x[i]) in place, n >= 0. exp(-inf) = 0, exp of very negative = 0. */
    void (*vexp)(float *x, int64_t n);

    /* Column-wise online-softmax helpers on a row-major (rows, cols) tile S with row stride ld:
     *   colmax:  m[c] = max(m[c], max_r S[r][c])
     *   expsub:  S[r][c] = exp(S[r][c] - m[c]); sum[c] += S[r][c]
     * (cols a multiple of nothing; any size). Callers pass m[c] >= every S[r][c] (m from colmax
     * over the same rows, or a larger max); the kernels are fastest so, and exact either way. */
    void (*colmax)(const float *S, int64_t rows, int64_t cols, int64_t ld, float *m);
    void (*expsub)(float *S, int64_t rows, int64_t cols, int64_t ld, const float *m, float *sum);

    /* Row-wise softmax in place over n values: x = exp(x - max) / sum. */
    void (*softmax)(float *x, int64_t n);
    /* y = x / sqrt(mean(x^2) + eps) * w (w may be NULL), n values. */
    void (*rmsnorm)(const float *x, const float *w, float eps, int64_t n, float *y);
    /* y = (x - mean) / sqrt(var + eps) * w + b (w, b may be NULL), biased variance. */
    void (*layernorm)(const float *x, const float *w, const float *b, float eps, int64_t n,
                      float *y);
    /* In place: x = gelu(x), erf form (tanh_form = 0) or tanh approximation (tanh_form = 1). */
    void (*gelu)(float *x, int64_t n, int tanh_form);

    /* out[r] = sum_k x[r*ldx + k] * w[k] for r < rows, k < n: a few rows against one row of
     * weights, the weights read once for all rows (skinny products). */
    void (*dotn)(const float *x, int64_t ldx, int64_t rows, const float *w, int64_t n, float *out);

    /* int8 weights: out[r] = sum_k x[r*ldx + k] * q[k] for r < rows, k < n (the int8 row read
     * once for all rows; each value converted exactly to float). */
    void (*dot_q8)(const float *x, int64_t ldx, int64_t rows, const int8_t *q, int64_t n,
                   float *out);
    /* The same for two int8 rows q and q + ldq at once (the activations read once for both):
     * out0[r] against q, out1[r] against q + ldq. */
    void (*dot2_q8)(const float *x, int64_t ldx, int64_t rows, const int8_t *q, int64_t ldq,
                    int64_t n, float *out0, float *out1);

    /* Half-precision weights to float: dst[i] = the value of the 16-bit pattern src[i], bfloat16
     * (f16 = 0) or IEEE binary16 (f16 = 1), exactly (as xa_half_to_f32), n >= 0. */
    void (*cvt_h)(const uint16_t *src, float *dst, int64_t n, int f16);
} xa_kernels;

/* How a weight matrix (N, K) of a linear layer is kept (a module's --weights): float32, a
 * 16-bit float (converted exactly to float32 as it is read), or int8 with a float scale per
 * row (weight-only quantisation). */
typedef enum xa_wdt { XA_W_F32 = 0, XA_W_BF16, XA_W_F16, XA_W_Q8 } xa_wdt;
typedef struct xa_wt {
    const void *p;      /* N rows of K values: float, uint16_t (bf16 / f16 bits) or int8_t */
    const float *scale; /* XA_W_Q8: N scales, else NULL                                        */
    int dt;             /* xa_wdt                                                              */
} xa_wt;
/* A float32 weight matrix. */
static inline xa_wt xa_wt_f32(const float *w) { return (xa_wt){w, NULL, XA_W_F32}; }
/* Rows r0.. of a weight matrix with K values per row. */
static inline xa_wt xa_wt_rows(xa_wt w, int64_t r0, int64_t K)
{
    static const int64_t bytes[] = {4, 2, 2, 1};
    if (w.p) w.p = (const char *)w.p + r0 * K * bytes[w.dt];
    if (w.scale) w.scale += r0;
    return w;
}
/* The float32 data, or NULL when the weights are kept in another type. */
static inline const float *xa_wt_f(xa_wt w) { return w.dt == XA_W_F32 ? (const float *)w.p : NULL; }
/* Rows [r0, r0 + n) of w (K values each) as float32 into dst (n x K) with the table's
 * conversions (int8: q * scale). */
void xa_wt_rows_f32(const xa_kernels *kt, xa_wt w, int64_t r0, int64_t n, int64_t K, float *dst);
/* C (M, N) = A (M, K, row stride lda) W^T (+ bias (N) when not NULL; + C when accumulate),
 * W (N, K) kept as w says; the blocked GEMM converts W while packing it, so the result equals
 * xa_sgemm on the converted float32 matrix, bit for bit. bf16: both operands rounded to
 * bfloat16 as they are packed (compute bf16). kt NULL: the current table. Returns 0,
 * or -1 out of memory (error message set; only with weights kept in another type). */
int xa_gemm_wt(const xa_kernels *kt, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
               xa_wt w, const float *bias, int accumulate, float *C, int64_t ldc, int bf16);
/* xa_sgemm with both operands rounded to bfloat16 (float32 accumulation: compute bf16).
 * Returns 0, or -1 out of memory (error message set). */
int xa_sgemm_bf16(const xa_kernels *kt, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                  float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                  float *C, int64_t ldc);

/* The int8 kernels stream their weights from memory once per call (decoding), faster than the
 * hardware prefetcher follows two rows at a time: they ask for the rows XA_Q8_AHEAD rows on,
 * which the next calls of the same thread read, one cache line per row each 64 weights. The
 * address is formed as an integer, and a prefetch never faults, so past the end of the matrix it
 * is only a wasted hint. */
#define XA_Q8_AHEAD 8
static inline uintptr_t xa_q8_ahead(const int8_t *q, int64_t ldq)
{
    return (uintptr_t)q + (uintptr_t)(XA_Q8_AHEAD * ldq);
}

/* A hint to fetch the line at p, a pointer or an integer address (any CPU; never faults). */
#if defined(__GNUC__)
#define XA_PREFETCH(p) __builtin_prefetch((const void *)(p))
#else
#define XA_PREFETCH(p) ((void)(p))
#endif

/* The int8 kernels' prefetch at weight k of a row: the line at pf + k each 64 weights (pf 0:
 * none). */
static inline void xa_q8_prefetch(uintptr_t pf, int64_t k)
{
    if (pf && !(k & 63)) XA_PREFETCH(pf + (uintptr_t)k);
}

/* out[r] = s[r] + the products k .. n-1 of four rows of x with the int8 row q: the scalar
 * remainder of the ISA tables' four-row int8 kernels. */
static inline void xa_dot_q8_tail4(const float *x, int64_t ldx, const int8_t *q, int64_t k,
                                   int64_t n, const float *s, float *out)
{
    float t[4] = {s[0], s[1], s[2], s[3]};
    for (; k < n; k++)
        for (int r = 0; r < 4; r++) t[r] += x[r * ldx + k] * (float)q[k];
    for (int r = 0; r < 4; r++) out[r] = t[r];
}

/* Tables; a table is NULL-initialised when its ISA was not compiled in. */
extern const xa_kernels xa_kernels_scalar;
#if defined(XATTN_HAVE_X86_KERNELS)
extern const xa_kernels xa_kernels_avx2;
extern const xa_kernels xa_kernels_avx512;
#endif
#if defined(XATTN_HAVE_BF16_KERNELS) /* 64-bit x86 with a compiler that knows the instructions */
extern const xa_kernels xa_kernels_avx512bf16; /* avx512 + vdpbf16ps for compute bf16     */
extern const xa_kernels xa_kernels_amx;        /* avx512 + AMX-BF16 tiles for compute bf16 */
/* kernels_bf16.c, with their micro-tiles (mr_bf16, nr_bf16, kb_bf16 of the tables) */
#define XA_DPBF16_MR 8
#define XA_DPBF16_NR 32
#define XA_DPBF16_KB 2
#define XA_AMX_MR    32
#define XA_AMX_NR    32
#define XA_AMX_KB    32
void xa_ukr_dpbf16_avx512(int64_t k, const uint32_t *A, const uint32_t *B, float *C, int64_t ldc,
                          int accumulate);
void xa_ukr_amx_bf16(int64_t k, const uint32_t *A, const uint32_t *B, float *C, int64_t ldc,
                     int accumulate);
#endif
#if defined(XATTN_HAVE_NEON_KERNELS)
extern const xa_kernels xa_kernels_neon;
#endif

/* The table of the calling thread's current context (never NULL). */
const xa_kernels *xa_kern(void);
/* The table of context c (NULL = the default context). */
const xa_kernels *xa_ctx_kern(const xattn_ctx *c);
/* Sets context c's table (NULL: the default context; k NULL: the best for the CPU) without the
 * CPU check of xattn_ctx_set_isa: for tests that run a table built from emulated kernels. */
void xa_ctx_set_kern(xattn_ctx *c, const xa_kernels *k);
/* The fastest table this CPU supports. */
const xa_kernels *xa_kern_best(void);
/* Whether name is a kernel set of some build ("amx", "avx512bf16", "avx512", "avx2", "neon",
 * "scalar"), present on this CPU or not. */
int xa_kern_known(const char *name);
/* The table for a name if compiled in and supported by this CPU, else NULL. */
const xa_kernels *xa_kern_by_name(const char *name);

/* ---- Generalised fused attention (attention.c); xattn_sdpa and the bidirectional kernel are
 * built on it. Per-head tensors by base pointer and strides (b, h, row), last axis contiguous.
 *   logit[b,h,i,j] = scale * <q[b,h,i], k[b,h,j]> + bias[b,h,i,j]
 *   masked (mask == 0, qkeep[b,i] == 0, kkeep[b,j] == 0, causal j > i) -> fill
 * Modes:
 *   normal      out = softmax_j(logit) v, online over key tiles; lse and probs optional.
 *   stats_only  only the row statistics (stat_m, stat_l: max and sum of exp(logit - max)) and
 *               lse are written: no values are read.
 *   mix         heads mixed after the softmax (talking heads): P[h] = exp(logit - m[h]) / l[h],
 *               P'[g] = sum_h mix[g][h] P[h], out[g] = P'[g] v[g]; probs get P'. Needs the
 *               row statistics (row_m, row_l) of a stats_only pass.
 * bias and probs take a key stride too (bias_sj, p_sj), so a problem can be run transposed. */
typedef struct xa_attn {
    int64_t B, H, I, J, dh, dv;
    const float *q;
    int64_t q_sb, q_sh, q_si; /* (B, H, I, dh) */
    const float *k;
    int64_t k_sb, k_sh, k_sj; /* (B, H, J, dh) */
    const float *v;
    int64_t v_sb, v_sh, v_sj; /* (B, H, J, dv) */
    float *out;
    int64_t o_sb, o_sh, o_si; /* (B, H, I, dv) */
    float scale;
    xattn_fill fill;
    int causal;
    /* causal keeps key j for query i when j <= i + causal_offset: on a shard whose queries
     * start at global position q0 and keys at k0, causal_offset = q0 - k0 */
    int64_t causal_offset;
    const uint8_t *mask;
    int64_t mask_sb, mask_sh, mask_si; /* (B|1,H|1,I|1,J) keep */
    const uint8_t *qkeep;
    int64_t qkeep_sb; /* (B|1, I) keep        */
    const uint8_t *kkeep;
    int64_t kkeep_sb; /* (B|1, J) keep        */
    const float *bias;
    int64_t bias_sb, bias_sh, bias_si, bias_sj; /* (B|1,H|1,I|1,J)      */
    float *lse;                                 /* (B, H, I) contiguous */
    float *stat_m, *stat_l;                     /* (B, H, I) contiguous */
    float *probs;
    int64_t p_sb, p_sh, p_si, p_sj; /* (B, H, I, J)         */
    int stats_only;
    const float *mix;           /* (H, H) [g][h] */
    const float *row_m, *row_l; /* (B, H, I) contiguous */
    const char *fn;             /* name for error messages */
    /* in a sharded run: mask and bias hold this rank's query rows and every rank's key columns
     * (J_total, in rank order: xa_op_shard_keys), taken as they are; else they hold the local
     * key columns (J), gathered from every rank */
    int keys_global;
    /* compute bf16: q and k hold bf16 values; on a table with a bf16 dot-product micro-kernel
     * the logits run on it (else, and always for v, the float32 kernels) */
    int bf16;
} xa_attn;

xattn_status xa_attention(const xa_attn *a);

/* Gradients of xa_attention (normal mode; no head mixing, no keep vectors) from the forward's
 * output a->out and its log-sum-exp. Per-head tensors by base pointer and strides as in xa_attn.
 * dq, dk, dv may each be NULL; they are overwritten, or added to when accumulate != 0. dbias
 * (B|1, H|1, I|1, J) with strides (sb, sh, si, sj): a 0 stride among sb, sh, si sums the
 * gradient over that axis; sj = J and si = 1 read a bias stored transposed. Keep vectors
 * (qkeep, kkeep) are masks like the others. */
typedef struct xa_attn_grad {
    const float *dout;
    int64_t do_sb, do_sh, do_si; /* (B, H, I, dv) gradient of out                     */
    const float *lse;            /* (B, H, I) contiguous from the forward, or NULL: recomputed */
    float *dq;
    int64_t dq_sb, dq_sh, dq_si; /* (B, H, I, dh) */
    float *dk;
    int64_t dk_sb, dk_sh, dk_sj; /* (B, H, J, dh) */
    float *dv;
    int64_t dv_sb, dv_sh, dv_sj; /* (B, H, J, dv) */
    float *dbias;
    int64_t dbias_sb, dbias_sh, dbias_si, dbias_sj; /* dbias_sj: key stride (1, or I transposed) */
    int accumulate;
} xa_attn_grad;

xattn_status xa_attention_backward(const xa_attn *a, const xa_attn_grad *g);
/* About how many bytes of packed operands the attention backward holds at once (heads are
 * packed and processed a chunk at a time; at least one head per thread); 32 MiB. The results
 * do not depend on it (tests set it small to run many chunks). */
extern int64_t xa_attn_bwd_pack_bytes;

/* ---- Bidirectional attention (bidir.c): both directions of one shared similarity, without
 * materialising it.
 *   sim[b,h,i,j] = scale * <qk[b,h,i], cqk[b,h,j]> + bias[b,h,i,j]
 *   where mask[b,i] == 0 or cmask[b,j] == 0: sim = -FLT_MAX (lucidrains semantics: a fully
 *   masked row or column becomes a uniform average)
 *   attn = softmax over j, cattn = softmax over i;  with talking heads
 *   attn'[g] = sum_h talk[g][h] attn[h], cattn'[g] = sum_h ctalk[g][h] cattn[h]
 *   out[b,h,i]  = sum_j attn'[b,h,i,j] cv[b,h,j]
 *   cout[b,h,j] = sum_i cattn'[b,h,i,j] v[b,h,i]
 * All per-head tensors are given by base pointer and strides (elements) over (b, h, row), last
 * axis contiguous, so heads are read in place from (B, N, H*dh) projections. */
typedef struct xa_bidir {
    int64_t B, H, I, J, dh;
    const float *qk;
    int64_t qk_sb, qk_sh, qk_si; /* (B, H, I, dh) shared query/key of x   */
    const float *cqk;
    int64_t cqk_sb, cqk_sh, cqk_sj; /* (B, H, J, dh) of the context      */
    const float *v;
    int64_t v_sb, v_sh, v_si; /* (B, H, I, dh) values of x            */
    const float *cv;
    int64_t cv_sb, cv_sh, cv_sj; /* (B, H, J, dh) values of the context  */
    float *out;
    int64_t o_sb, o_sh, o_si; /* (B, H, I, dh)                         */
    float *cout;
    int64_t co_sb, co_sh, co_sj; /* (B, H, J, dh)                         */
    float scale;
    const uint8_t *mask;
    int64_t mask_sb; /* (B|1, I) nonzero = keep, or NULL      */
    const uint8_t *cmask;
    int64_t cmask_sb; /* (B|1, J) nonzero = keep, or NULL      */
    const float *bias;
    int64_t bias_sb, bias_sh;  /* (B|1, H|1, I, J), row stride J, or NULL */
    const float *talk, *ctalk; /* (H, H) [g][h] each, or both NULL      */
    float *attn, *cattn;       /* (B, H, I, J) contiguous, or NULL      */
    float *lse,
        *clse; /* optional (B, H, I), (B, H, J): each side's log-sum-exp, for the backward */
    int bf16;  /* compute bf16: qk and cqk hold bf16 values (xa_attn.bf16 for both sides) */
} xa_bidir;

xattn_status xa_bidir_attention(const xa_bidir *p);

/* Gradients of xa_bidir_attention from the forward's per-head outputs p->out and p->cout and the
 * gradients of those: qk and cqk get the gradient of the shared similarity from both softmaxes,
 * v and cv from their side, the bias (B|1, H|1, I, J) its sum over the axes it broadcasts over,
 * the talking-heads weights their own. Any gradient may be NULL; they are overwritten, or added
 * to when accumulate != 0. No B*H*I*J buffer; the same results for every thread count. */
typedef struct xa_bidir_grad {
    const float *dout;
    int64_t do_sb, do_sh, do_si; /* (B, H, I, dh) */
    const float *dcout;
    int64_t dco_sb, dco_sh, dco_sj; /* (B, H, J, dh) */
    float *dqk;
    int64_t dqk_sb, dqk_sh, dqk_si;
    float *dcqk;
    int64_t dcqk_sb, dcqk_sh, dcqk_sj;
    float *dv;
    int64_t dv_sb, dv_sh, dv_si;
    float *dcv;
    int64_t dcv_sb, dcv_sh, dcv_sj;
    float *dbias;
    int64_t dbias_sb, dbias_sh; /* (B|1, H|1, I, J), row stride J */
    float *dtalk, *dctalk;      /* (H, H) each, with talking heads */
    const float *lse, *clse;    /* the forward's p->lse, p->clse, or NULL: recomputed */
    int accumulate;
} xa_bidir_grad;

xattn_status xa_bidir_backward(const xa_bidir *p, const xa_bidir_grad *g);

/* ---- GEMM framework (gemm.c): packing, cache blocking, threads over the kernel table. ---- */
/* Bytes of the per-core L1 data and L2 caches (sysconf where the C library reports them, else
 * 32 KB and 512 KB); the GEMM's and the fused attention's block sizes come from them. */
void xa_cache_sizes(int64_t *l1, int64_t *l2);
/* C (M,N) = alpha * op(A) * op(B) + beta * C using table `kt` (NULL = current). */
void xa_sgemm(const xa_kernels *kt, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
              float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
              float *C, int64_t ldc);

#endif
