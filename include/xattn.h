/*
 * xattn.h - the one public header of xattn, a C11 runtime for the cross-attention family.
 *
 * Conventions
 *   - Tensors are row-major fp32, batch first: sequences (B, N, D), attention maps (B, H, I, J).
 *   - Heads split channels as (h d): head h owns channels [h*dh, (h+1)*dh).
 *   - Every function that can fail returns an xattn_status; xattn_last_error() then gives a
 *     one-line message (thread-local) naming the file, tensor or argument at fault.
 *   - Strides are in elements, not bytes. A stride of 0 broadcasts along that axis.
 *   - Outputs are written into caller-provided buffers; the library never keeps pointers to them.
 *
 * Threads: each call runs on an execution context (xattn_ctx; see below) that holds its thread
 * count and kernel set; xattn_set_threads(n) sets the default context's count (default:
 * OMP_NUM_THREADS, else the number of cores). Results do not depend on the thread count beyond
 * float rounding.
 */
#ifndef XATTN_H
#define XATTN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xattn_ctx xattn_ctx;

#if defined(_WIN32) && defined(XATTN_SHARED_BUILD)
#define XATTN_API __declspec(dllexport)
#elif defined(__GNUC__)
#define XATTN_API __attribute__((visibility("default")))
#else
#define XATTN_API
#endif

/* XATTN_VERSION_MAJOR, _MINOR, _PATCH and XATTN_VERSION_STRING, generated from the CMake
 * project version (the only place the version is written). */
#include "xattn_version.h"

/* ------------------------------------------------------------------------------------------ */
/* Status and errors                                                                            */
/* ------------------------------------------------------------------------------------------ */

typedef enum xattn_status {
    XATTN_OK = 0,
    XATTN_ERR_ARG = 1,         /* invalid argument (NULL pointer, bad size, bad option)        */
    XATTN_ERR_NOMEM = 2,       /* allocation failed or a size would overflow                   */
    XATTN_ERR_IO = 3,          /* a file could not be opened, read or written                  */
    XATTN_ERR_FORMAT = 4,      /* a file is malformed (truncated, bad header, bad offsets)     */
    XATTN_ERR_SHAPE = 5,       /* shapes do not agree                                          */
    XATTN_ERR_UNSUPPORTED = 6, /* valid but not supported (dtype, byte order, layout)          */
    XATTN_ERR_NOT_FOUND = 7    /* a named tensor or key is missing                             */
} xattn_status;

/* Message of the last failure on this thread ("" if none). Valid until the next failing call. */
XATTN_API const char *xattn_last_error(void);
/* Short constant name of a status ("ok", "invalid argument", ...). */
XATTN_API const char *xattn_status_string(xattn_status s);
/* "MAJOR.MINOR.PATCH" */
XATTN_API const char *xattn_version(void);

/* ------------------------------------------------------------------------------------------ */
/* Threads and CPU dispatch                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* A yes/no option whose zero value means "the reference's default": options structs are valid
 * when zero-initialised, so their booleans need a third value. */
typedef enum xattn_choice {
    XATTN_DEFAULT = 0, /* the reference's default (or the file's metadata) */
    XATTN_NO = 1,
    XATTN_YES = 2
} xattn_choice;

/* Most threads a context may use. */
#define XATTN_MAX_THREADS 1024

/*
 * Execution context: the thread count, the kernel set and a cache of scratch memory (the
 * workspace), and later a communicator and a device. Every module forward and every registry
 * call takes one; NULL means the default context. Entry points without a context argument
 * (xattn_sdpa, xattn_sgemm, xattn_linear, the row operations, ...) run on the default context,
 * which xattn_set_threads / xattn_set_isa configure; a new context starts as a copy of the
 * default context's settings.
 *
 * Contexts are independent: a server may run calls with different thread counts at the same
 * time, each on its own context. One context may also be shared by threads calling at once
 * (its workspace cache is lock-free).
 *
 * Workspace: scratch blocks (a few MB for packing panels and attention tiles) are kept after a
 * call and reused, so small calls do not pay page faults; at most `limit` bytes are kept
 * (default 128 MiB); xattn_ctx_trim frees what is kept.
 */
XATTN_API xattn_status xattn_ctx_new(xattn_ctx **out);
XATTN_API void xattn_ctx_free(xattn_ctx *ctx); /* NULL-safe; the default context is not freed */
/* The default context (never NULL). */
XATTN_API xattn_ctx *xattn_ctx_default(void);
/* n = 0: the default (OMP_NUM_THREADS if it is a valid count, else all cores); else 1 ..
 * XATTN_MAX_THREADS. Without OpenMP at build time every call runs on the calling thread. */
XATTN_API xattn_status xattn_ctx_set_threads(xattn_ctx *ctx, int n);
XATTN_API int xattn_ctx_get_threads(const xattn_ctx *ctx);
/* "auto", "amx", "avx512bf16", "avx512", "avx2", "neon" or "scalar"; XATTN_ERR_UNSUPPORTED if
 * the CPU lacks it. */
XATTN_API xattn_status xattn_ctx_set_isa(xattn_ctx *ctx, const char *name);
XATTN_API const char *xattn_ctx_get_isa(const xattn_ctx *ctx);
/*
 * The type products compute in. XATTN_COMPUTE_F32 (the default): float32 throughout.
 * XATTN_COMPUTE_BF16: the products of a module's forward read their operands rounded to
 * bfloat16 (to nearest even) and accumulate in float32: the linear layers and 1x1 projections
 * (activations and weights), and attention's queries, keys and values; the attention
 * probabilities, softmax statistics, norms, activation functions and residual sums stay float32,
 * and results are float32. A product of two bf16 values is exact in float32, so this is the
 * arithmetic of bf16 dot-product instructions up to the order of the additions. The linear
 * layers' and 1x1 projections' products run on those instructions where the CPU has them (kernel
 * sets "avx512bf16": vdpbf16ps, "amx": AMX-BF16 tiles); elsewhere, and for attention, with
 * float32 FMAs on the rounded values (no speed-up: an emulation giving the same numbers up to
 * the order of the additions). Its error against float64 is that of the operands' rounding (unit
 * roundoff 2^-9), smaller than torch.autocast's bf16, which also rounds every product's result to
 * bf16. Modules only (xattn_module_forward, the typed forwards, the language model); the
 * stand-alone kernels (xattn_sdpa, xattn_sgemm, ...) stay float32. Inference only: gradients refuse
 * it.
 */
typedef enum xattn_compute { XATTN_COMPUTE_F32 = 0, XATTN_COMPUTE_BF16 = 1 } xattn_compute;
XATTN_API xattn_status xattn_ctx_set_compute(xattn_ctx *ctx, int compute);
XATTN_API int xattn_ctx_get_compute(const xattn_ctx *ctx);
/* Most bytes of scratch kept between calls (0: keep nothing). */
XATTN_API xattn_status xattn_ctx_set_workspace_limit(xattn_ctx *ctx, size_t bytes);
/* Bytes of scratch kept now. */
XATTN_API size_t xattn_ctx_workspace_cached(const xattn_ctx *ctx);
/* Frees the scratch kept. */
XATTN_API void xattn_ctx_trim(xattn_ctx *ctx);

/* The default context's settings (see above). n <= 0 restores the default count. */
XATTN_API void xattn_set_threads(int n);
/* The default context's compute type (xattn_ctx_set_compute). */
XATTN_API xattn_status xattn_set_compute(int compute);
XATTN_API int xattn_get_compute(void);
XATTN_API int xattn_get_threads(void);
/* Name of the kernel set in use: "amx" (AVX-512 with AMX-BF16 tiles), "avx512bf16" (AVX-512
 * with AVX512_BF16), "avx512", "avx2", "neon" (AArch64) or "scalar". The two bf16 sets differ
 * from "avx512" only in compute bf16's products. */
XATTN_API const char *xattn_isa(void);
/* Forces a kernel set ("auto", "amx", "avx512bf16", "avx512", "avx2", "neon", "scalar"); fails
 * if the CPU lacks it. */
XATTN_API xattn_status xattn_set_isa(const char *name);

/* ------------------------------------------------------------------------------------------ */
/* Arrays (the in-memory form of .npy files and safetensors tensors)                            */
/* ------------------------------------------------------------------------------------------ */

typedef enum xattn_dtype {
    XATTN_F32 = 0,
    XATTN_F64,
    XATTN_F16,
    XATTN_BF16,
    XATTN_BOOL,
    XATTN_U8,
    XATTN_I8,
    XATTN_I16,
    XATTN_I32,
    XATTN_I64,
    XATTN_DTYPE_COUNT
} xattn_dtype;

#define XATTN_MAX_DIMS 8

typedef struct xattn_array {
    xattn_dtype dtype;
    int ndim; /* 0 .. XATTN_MAX_DIMS                               */
    int64_t shape[XATTN_MAX_DIMS];
    void *data; /* owned; free with xattn_array_free                 */
} xattn_array;

XATTN_API const char *xattn_dtype_name(xattn_dtype t); /* "F32", "BOOL", ... (safetensors names) */
XATTN_API size_t xattn_dtype_size(xattn_dtype t);
XATTN_API int64_t xattn_array_numel(const xattn_array *a);
XATTN_API void xattn_array_free(xattn_array *a); /* frees data, zeroes the struct; NULL-safe */
/* Converts in place: float types -> F32 (any float or integer source), BOOL/U8 -> BOOL
 * (any integer or bool source, nonzero = true). */
XATTN_API xattn_status xattn_array_convert(xattn_array *a, xattn_dtype to);

/* ---- .npy (NumPy format 1.0/2.0/3.0): little-endian f32, f64, f16, bool, u8, i8, i16, i32,
 *      i64 in C order. Fortran order, big-endian data and object arrays are rejected with
 *      XATTN_ERR_UNSUPPORTED and a message saying so. */
XATTN_API xattn_status xattn_npy_load(const char *path, xattn_array *out);
/* Parses an in-memory .npy image; `label` names it in error messages. */
XATTN_API xattn_status xattn_npy_parse(const void *buf, size_t len, const char *label,
                                       xattn_array *out);
XATTN_API xattn_status xattn_npy_save(const char *path, const xattn_array *a);

/* ---- safetensors: reader validates every offset, size and shape against the file. */
typedef struct xattn_safetensors xattn_safetensors;

XATTN_API xattn_status xattn_st_open(const char *path, xattn_safetensors **out);
XATTN_API xattn_status xattn_st_parse(const void *buf, size_t len, const char *label,
                                      xattn_safetensors **out); /* copies buf */
XATTN_API void xattn_st_close(xattn_safetensors *st);
XATTN_API const char *xattn_st_path(const xattn_safetensors *st);
XATTN_API size_t xattn_st_count(const xattn_safetensors *st);
/* Tensors in file (offset) order. */
XATTN_API const char *xattn_st_name(const xattn_safetensors *st, size_t i);
/* Index of a tensor by name, or -1. */
XATTN_API long xattn_st_find(const xattn_safetensors *st, const char *name);
/* Dtype and shape as stored (shape must hold XATTN_MAX_DIMS). */
XATTN_API xattn_status xattn_st_info(const xattn_safetensors *st, size_t i, xattn_dtype *dtype,
                                     int *ndim, int64_t *shape);
/* Copies tensor `name` into `out`, converted to `want` (XATTN_F32 or XATTN_BOOL, see
 * xattn_array_convert). XATTN_ERR_NOT_FOUND if absent. */
XATTN_API xattn_status xattn_st_get(const xattn_safetensors *st, const char *name, xattn_dtype want,
                                    xattn_array *out);
/* __metadata__ entries (string to string). */
XATTN_API size_t xattn_st_meta_count(const xattn_safetensors *st);
XATTN_API const char *xattn_st_meta_key(const xattn_safetensors *st, size_t i);
XATTN_API const char *xattn_st_meta_value(const xattn_safetensors *st, size_t i);
XATTN_API const char *xattn_st_meta_get(const xattn_safetensors *st, const char *key); /* or NULL */

typedef struct xattn_st_entry {
    const char *name;
    xattn_dtype dtype;
    int ndim;
    int64_t shape[XATTN_MAX_DIMS];
    const void *data; /* numel * dtype size bytes */
} xattn_st_entry;
/* Writes a safetensors file; meta_kv holds n_meta (key, value) pairs: k0, v0, k1, v1, ... */
XATTN_API xattn_status xattn_st_save(const char *path, const xattn_st_entry *entries, size_t n,
                                     const char *const *meta_kv, size_t n_meta);

/* ---- PNG heat-maps (libpng; XATTN_ERR_UNSUPPORTED in a build without it) */
typedef struct xattn_heatmap_opts {
    const char *title;   /* drawn above the map, or NULL                         */
    const char *x_label; /* under the x axis (columns), or NULL                  */
    const char *y_label; /* beside the y axis (rows), or NULL                    */
    int max_side;        /* longest side of the map area in pixels (0 = 768)     */
    int fixed_range;     /* 1: colours span [vmin, vmax]; 0: the data's range    */
    float vmin, vmax;
    const char *bar_label; /* beside the colour bar (what a colour means), or NULL */
    double x_tick_scale;   /* tick label of column k is k * x_tick_scale (0 = 1)   */
    double y_tick_scale;   /* tick label of row k is k * y_tick_scale (0 = 1)      */
} xattn_heatmap_opts;

/* Writes map (rows, cols), row 0 at the top, as a heat-map with axes, tick labels and a
 * colour bar (ticks at vmax, the middle and vmin; bar_label, rotated, beside them). Rows and
 * columns are averaged down (box filter) when larger than the picture. The tick scales (finite,
 * >= 0) label an axis in the units of the data the cells stand for, e.g. 16 when row k is
 * frame 16 k. */
XATTN_API xattn_status xattn_png_heatmap(const char *path, const float *map, int64_t rows,
                                         int64_t cols, const xattn_heatmap_opts *opts);

/* Options of xattn_png_curve; all zero: no labels, linear y axis. */
typedef struct xattn_curve_opts {
    const char *title, *x_label, *y_label; /* or NULL */
    int log_y;                             /* 1: a logarithmic y axis (values <= 0 left out) */
} xattn_curve_opts;
/* Writes y[0 .. n) as a line plot (720 x 440: framed axes, 5 ticks each with labels, the x axis
 * numbering the points from 1): a training loss curve. Non-finite values break the line. */
XATTN_API xattn_status xattn_png_curve(const char *path, const float *y, int64_t n,
                                       const xattn_curve_opts *o);

/* ------------------------------------------------------------------------------------------ */
/* Fused attention (like torch.nn.functional.scaled_dot_product_attention)                      */
/* ------------------------------------------------------------------------------------------ */

typedef enum xattn_fill {
    /* Masked logits are -inf. A fully masked row gives a zero output row (SDPA, PyTorch >= 2.5),
     * zero probabilities and log-sum-exp -inf. */
    XATTN_FILL_NEG_INF = 0,
    /* Masked logits are -FLT_MAX (lucidrains' packages). A fully masked row gives the uniform
     * average over all keys. */
    XATTN_FILL_MIN_FLOAT = 1
} xattn_fill;

/*
 *   out[b,h,i,:] = sum_j softmax_j(s[b,h,i,:]) * v[b,h,j,:]
 *   s[b,h,i,j]   = scale * <q[b,h,i,:], k[b,h,j,:]> + bias[b,h,i,j]     (bias optional)
 * masked (mask[b,h,i,j] == 0, or j > i when causal) logits take the fill value.
 *
 * Tensors are given by base pointer and strides (elements) over (b, h, row); the last axis is
 * contiguous. Heads of a (B, N, H*dh) projection are read in place with strides
 * (N*H*dh, dh, H*dh). mask and bias broadcast over b, h and i with stride 0 (a key padding mask
 * (B, J) is mask_sb = J, mask_sh = 0, mask_si = 0).
 * Memory: O(threads * tile) scratch; no I x J buffer unless `probs` is given.
 */
typedef struct xattn_sdpa_params {
    int64_t B, H, I, J, dh, dv;
    const float *q;
    int64_t q_sb, q_sh, q_si; /* (B, H, I, dh)  */
    const float *k;
    int64_t k_sb, k_sh, k_sj; /* (B, H, J, dh)  */
    const float *v;
    int64_t v_sb, v_sh, v_sj; /* (B, H, J, dv)  */
    float *out;
    int64_t o_sb, o_sh, o_si; /* (B, H, I, dv)  */
    int has_scale;            /* 0: scale = dh^-0.5 */
    float scale;
    const uint8_t *mask;
    int64_t mask_sb, mask_sh, mask_si; /* (B|1, H|1, I|1, J), nonzero = keep */
    const float *bias;
    int64_t bias_sb, bias_sh, bias_si; /* (B|1, H|1, I|1, J), added        */
    int causal;                        /* keep j <= i (upper-left aligned) */
    xattn_fill fill;
    float *lse;   /* optional (B, H, I) contiguous: log-sum-exp of the (masked) logits    */
    float *probs; /* optional (B, H, I, J) contiguous: the softmax probabilities          */
    /* causal keeps key j for query i when j <= i + causal_offset (0: upper-left aligned; on a
     * shard whose queries start at global position q0 and keys at k0: q0 - k0) */
    int64_t causal_offset;
} xattn_sdpa_params;

/* Zeroes p (no mask, no bias, default scale, -inf fill). */
XATTN_API void xattn_sdpa_init(xattn_sdpa_params *p);
XATTN_API xattn_status xattn_sdpa(const xattn_sdpa_params *p);

/*
 * Backward of xattn_sdpa (FlashAttention-2's algorithm): from the forward's parameters p, with
 * p->out holding the forward's output and p->lse its log-sum-exp (or NULL: recomputed, one more
 * pass over the keys), and the gradient of out, computes the gradients of q, k, v and of the
 * additive bias. Probabilities are recomputed tile by tile from the log-sum-exp: nothing of size
 * I x J is allocated. p->probs is ignored. Masked logits carry no gradient; a fully masked row
 * gives zero gradients under XATTN_FILL_NEG_INF and, under XATTN_FILL_MIN_FLOAT (the uniform
 * average), gradients to v only. Results are the same for every thread count (no task adds to
 * what another task writes).
 *
 * Each gradient is given by base pointer and strides (elements) over (b, h, row), last axis
 * contiguous, like the forward's tensors (heads written in place into (B, N, H*dh) buffers);
 * NULL = not wanted. They are overwritten, or added to when accumulate != 0. dbias has the
 * layout of a bias (B|1, H|1, I|1, J) with row stride dbias_si: a 0 stride sums the gradient
 * over that axis (a (B, J) key bias: dbias_sb = J, dbias_sh = dbias_si = 0), so it can be asked
 * for with or without p->bias.
 */
typedef struct xattn_sdpa_grads {
    const float *dout;
    int64_t do_sb, do_sh, do_si; /* (B, H, I, dv) gradient of out (required) */
    float *dq;
    int64_t dq_sb, dq_sh, dq_si; /* (B, H, I, dh)                            */
    float *dk;
    int64_t dk_sb, dk_sh, dk_sj; /* (B, H, J, dh)                            */
    float *dv;
    int64_t dv_sb, dv_sh, dv_sj; /* (B, H, J, dv)                            */
    float *dbias;
    int64_t dbias_sb, dbias_sh, dbias_si; /* (B|1, H|1, I|1, J)              */
    int accumulate;                       /* 1: add to the gradients          */
    uint64_t reserved_[4];                /* zero                             */
} xattn_sdpa_grads;

/* Zeroes g. */
XATTN_API void xattn_sdpa_grads_init(xattn_sdpa_grads *g);
XATTN_API xattn_status xattn_sdpa_backward(const xattn_sdpa_params *p, const xattn_sdpa_grads *g);

/* ------------------------------------------------------------------------------------------ */
/* Bidirectional attention core (bidirectional-cross-attention 0.1.0, without the I x J maps)   */
/* ------------------------------------------------------------------------------------------ */

/*
 * The attention core of lucidrains' BidirectionalCrossAttention: one similarity normalised both
 * ways, after the projections and before the output linears.
 *   sim[b,h,i,j]  = scale * <qk[b,h,i,:], cqk[b,h,j,:]> + bias[b,h,i,j]       (bias optional)
 *   where mask[b,i] == 0 or cmask[b,j] == 0: sim = -FLT_MAX (a fully masked row or column is a
 *   uniform average, as in the package)
 *   attn  = softmax over j of sim,   cattn = softmax over i of sim
 *   talking heads (both weights, or neither; nn.Conv2d(H, H, 1, bias=False) weights (H, H, 1, 1)
 *   read as (H, H)): attn'[g] = sum_h talk[g][h] attn[h], cattn'[g] = sum_h ctalk[g][h] cattn[h]
 *   out[b,h,i,:]  = sum_j attn'[b,h,i,j] cv[b,h,j,:]
 *   cout[b,h,j,:] = sum_i cattn'[b,h,i,j] v[b,h,i,:]
 * Dropout is not applied (the package's dropout = 0, or eval mode).
 *
 * Tensors are given by base pointer and strides (elements) over (b, h, row); the last axis is
 * contiguous, so heads are read and written in place in (B, N, H*dh) projections with strides
 * (N*H*dh, dh, H*dh). Input strides may be 0 (broadcast); output strides must not overlap.
 * I or J may be 0 (the other side's output is then zero). Memory: O(B*H*(I+J)) statistics and
 * per-thread tiles; no I x J buffer unless attn / cattn are given.
 */
typedef struct xattn_bidir_params {
    int64_t B, H, I, J, dh;
    const float *qk;
    int64_t qk_sb, qk_sh, qk_si; /* (B, H, I, dh) shared query/key of x              */
    const float *cqk;
    int64_t cqk_sb, cqk_sh, cqk_sj; /* (B, H, J, dh) shared query/key of the context */
    const float *v;
    int64_t v_sb, v_sh, v_si; /* (B, H, I, dh) values of x                          */
    const float *cv;
    int64_t cv_sb, cv_sh, cv_sj; /* (B, H, J, dh) values of the context            */
    float *out;
    int64_t o_sb, o_sh, o_si; /* (B, H, I, dh) what x gathers from the context      */
    float *cout;
    int64_t co_sb, co_sh, co_sj; /* (B, H, J, dh) what the context gathers from x  */
    int has_scale;               /* 0: scale = dh^-0.5 (the package's)             */
    float scale;
    const uint8_t *mask;
    int64_t mask_sb; /* (B|1, I) nonzero = keep, or NULL (0: one row for every b) */
    const uint8_t *cmask;
    int64_t cmask_sb; /* (B|1, J) nonzero = keep, or NULL                     */
    const float *bias;
    int64_t bias_sb, bias_sh; /* (B|1, H|1, I, J) rel_pos_bias, rows of J contiguous (row
                                 stride J); 0 broadcasts over b or h; or NULL       */
    const float *talk;        /* (H, H) [g][h] talking heads of attn, or NULL          */
    const float *ctalk;       /* (H, H) [g][h] talking heads of cattn, or NULL         */
    float *attn;              /* optional (B, H, I, J) contiguous: attn' (after talking heads) */
    float *cattn;             /* optional (B, H, I, J) contiguous: cattn'                 */
    float *lse;               /* optional (B, H, I) contiguous: log-sum-exp over j of sim */
    float *clse;              /* optional (B, H, J) contiguous: log-sum-exp over i of sim */
    uint64_t reserved_[4];    /* zero                                                     */
} xattn_bidir_params;

/* Zeroes p (no masks, no bias, no talking heads, the default scale). */
XATTN_API void xattn_bidir_init(xattn_bidir_params *p);
XATTN_API xattn_status xattn_bidir_attention(const xattn_bidir_params *p);

/*
 * Backward of xattn_bidir_attention: from the forward's parameters p, with p->out and p->cout
 * holding the forward's outputs and p->lse, p->clse its log-sum-exps (or both NULL: recomputed,
 * one more pass), and the gradients of out and cout, computes the gradients of qk and cqk (the
 * shared similarity's, from both softmaxes), v, cv, the bias and both talking-heads weights.
 * Probabilities are recomputed tile by tile; nothing of size I x J is allocated; p->attn and
 * p->cattn are ignored. Masked logits carry no gradient: a fully masked row or column (a uniform
 * average) sends gradient to the values only. The results are the same for every thread count.
 *
 * Gradients are given like the forward's tensors (base pointer and strides over (b, h, row),
 * last axis contiguous); NULL = not wanted. They are overwritten, or added to when
 * accumulate != 0. dbias has the layout of a bias (B|1, H|1, I, J), rows of J contiguous: a 0
 * stride sums the gradient over that axis, so it can be asked for with or without p->bias.
 * dtalk, dctalk (H, H) need talking heads.
 */
typedef struct xattn_bidir_grads {
    const float *dout;
    int64_t do_sb, do_sh, do_si; /* (B, H, I, dh) gradient of out (required)   */
    const float *dcout;
    int64_t dco_sb, dco_sh, dco_sj; /* (B, H, J, dh) gradient of cout (required) */
    float *dqk;
    int64_t dqk_sb, dqk_sh, dqk_si; /* (B, H, I, dh)                               */
    float *dcqk;
    int64_t dcqk_sb, dcqk_sh, dcqk_sj; /* (B, H, J, dh)                            */
    float *dv;
    int64_t dv_sb, dv_sh, dv_si; /* (B, H, I, dh)                                  */
    float *dcv;
    int64_t dcv_sb, dcv_sh, dcv_sj; /* (B, H, J, dh)                               */
    float *dbias;
    int64_t dbias_sb, dbias_sh; /* (B|1, H|1, I, J), row stride J                  */
    float *dtalk, *dctalk;      /* (H, H) each, with talking heads                 */
    int accumulate;             /* 1: add to the gradients                         */
    uint64_t reserved_[4];      /* zero                                            */
} xattn_bidir_grads;

/* Zeroes g. */
XATTN_API void xattn_bidir_grads_init(xattn_bidir_grads *g);
XATTN_API xattn_status xattn_bidir_attention_backward(const xattn_bidir_params *p,
                                                      const xattn_bidir_grads *g);

/* ------------------------------------------------------------------------------------------ */
/* Dense math used by the modules, exposed for users building their own compositions            */
/* ------------------------------------------------------------------------------------------ */

/* C (M, N) = alpha * op(A) * op(B) + beta * C, row-major; op(X) = X or X^T (trans != 0).
 * lda/ldb/ldc are row strides of the matrices as stored. beta = 0 ignores C's contents. */
XATTN_API xattn_status xattn_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                                   float alpha, const float *A, int64_t lda, const float *B,
                                   int64_t ldb, float beta, float *C, int64_t ldc);
/* y (M, N) = x (M, K) * W^T + b, W (N, K) as torch.nn.Linear stores it; b may be NULL. */
XATTN_API xattn_status xattn_linear(const float *x, int64_t M, int64_t K, const float *W,
                                    const float *b, int64_t N, float *y);

/* Row-wise operations on x (rows, n), row-major, threaded over rows; y may be x (in place). */
/* softmax over each row: x = exp(x - max) / sum */
XATTN_API xattn_status xattn_softmax(float *x, int64_t rows, int64_t n);
/* y = x / sqrt(mean(x^2) + eps) * w        (torch.nn.RMSNorm; w may be NULL) */
XATTN_API xattn_status xattn_rmsnorm(const float *x, int64_t rows, int64_t n, const float *w,
                                     float eps, float *y);
/* y = (x - mean) / sqrt(var + eps) * w + b (torch.nn.LayerNorm; w, b may be NULL) */
XATTN_API xattn_status xattn_layernorm(const float *x, int64_t rows, int64_t n, const float *w,
                                       const float *b, float eps, float *y);
/* x = gelu(x) in place over n values: exact erf form, or the tanh approximation
 * (torch.nn.GELU(approximate="tanh")) when tanh_form != 0 */
XATTN_API xattn_status xattn_gelu(float *x, int64_t n, int tanh_form);

/* ------------------------------------------------------------------------------------------ */
/* Multi-head cross-attention modules                                                           */
/* ------------------------------------------------------------------------------------------ */

/*
 * Two references, told apart by their state_dict names (registry kinds "mha" and "attention"):
 *   torch.nn.MultiheadAttention(embed_dim, num_heads, bias=True, add_bias_kv=False,
 *       add_zero_attn=False, kdim=None, vdim=None, batch_first=True):
 *       in_proj_weight (3*embed_dim, embed_dim) when kdim = vdim = embed_dim, else
 *       q_proj_weight (embed_dim, embed_dim), k_proj_weight (embed_dim, kdim), v_proj_weight
 *       (embed_dim, vdim); [in_proj_bias (3*embed_dim)], out_proj.weight (embed_dim, embed_dim),
 *       [out_proj.bias (embed_dim)], [bias_k, bias_v (1, 1, embed_dim)];
 *   diffusers Attention(query_dim, cross_attention_dim=None, heads=8, dim_head=64, bias=False,
 *       out_bias=True, out_dim=None, scale_qk=True, residual_connection=False,
 *       rescale_output_factor=1.0): to_q.weight (inner, query_dim), to_k.weight and to_v.weight
 *       (inner, cross_attention_dim), [to_q/to_k/to_v.bias (inner)], to_out.0.weight (out_dim,
 *       inner), [to_out.0.bias (out_dim)], where inner = heads * dim_head (out_dim when given).
 * Sizes come from the shapes; what the shapes cannot tell (the number of heads, add_zero_attn,
 * scale_qk, residual_connection, rescale_output_factor) comes from the options, else the file's
 * __metadata__ ("heads", "add_zero_attn", ...), else the reference's default (nn.MultiheadAttention
 * has none for num_heads: it must be given).
 */
typedef enum xattn_mha_layout {
    XATTN_LAYOUT_TORCH_MHA = 0, /* torch.nn.MultiheadAttention (batch_first=True)            */
    XATTN_LAYOUT_DIFFUSERS = 1  /* diffusers Attention: to_q, to_k, to_v, to_out.0           */
} xattn_mha_layout;

typedef struct xattn_mha_config {
    xattn_mha_layout layout;
    int64_t embed_dim;  /* query input width (query_dim for diffusers)                  */
    int64_t kdim, vdim; /* key / value input widths (cross_attention_dim for diffusers)   */
    int64_t heads;
    int64_t head_dim;  /* q/k per-head width (embed_dim / heads, or inner / heads)      */
    int64_t inner_dim; /* heads * head_dim                                             */
    int64_t out_dim;   /* output width                                                 */
    int has_in_bias;   /* in_proj_bias / to_q.bias present                             */
    int has_out_bias;
    int add_bias_kv;         /* bias_k, bias_v present: one learned key/value appended          */
    int add_zero_attn;       /* a zero key/value appended                                      */
    float scale;             /* logits scale: head_dim^-0.5, or 1 if scale_qk is False          */
    int residual_connection; /* out += query                                            */
    float rescale_output_factor; /* out /= rescale_output_factor (after the residual)       */
} xattn_mha_config;

typedef struct xattn_mha xattn_mha;

/* Options of xattn_mha_load; all zero = the file's __metadata__, else the reference's
 * defaults. An option of the other reference is an error. */
typedef struct xattn_mha_opts {
    int64_t heads;           /* num_heads / heads (wins over __metadata__ "heads"); 0: the file's
                                metadata, else 8 for diffusers (nn.MultiheadAttention has no default) */
    int add_zero_attn;       /* xattn_choice (nn.MultiheadAttention): leaves no trace in the
                                state_dict; XATTN_DEFAULT: __metadata__ "add_zero_attn", else False */
    int scale_qk;            /* xattn_choice (diffusers): XATTN_DEFAULT: metadata, else True      */
    int residual_connection; /* xattn_choice (diffusers): XATTN_DEFAULT: metadata, else False */
    double rescale_output_factor; /* diffusers; 0: metadata, else 1.0                        */
    uint64_t reserved_[4];
} xattn_mha_opts;

/* Loads a module from state_dict tensors named with an optional `prefix` ("" or e.g.
 * "attn."); the reference is detected from the names. opts may be NULL (defaults). */
XATTN_API xattn_status xattn_mha_load(const xattn_safetensors *st, const char *prefix,
                                      const xattn_mha_opts *opts, xattn_mha **out);
XATTN_API void xattn_mha_free(xattn_mha *m);
XATTN_API void xattn_mha_get_config(const xattn_mha *m, xattn_mha_config *cfg);

/*
 * Masks follow the reference module:
 *   torch MHA:  key_padding_mask (B, J): bool True = ignore, or float added;
 *               attn_mask (I, J) or (B*heads, I, J): bool True = not allowed, or float added.
 *   diffusers:  the same arrays with SDPA polarity: bool True = keep, float added.
 * A query row with every key masked gives a zero output row and zero weights.
 */
typedef struct xattn_mha_inputs {
    int64_t B, I, J;
    const float *query;                  /* (B, I, embed_dim)                                 */
    const float *key;                    /* (B, J, kdim)                                      */
    const float *value;                  /* (B, J, vdim); NULL = key (requires kdim == vdim)  */
    const uint8_t *key_padding_mask;     /* (B, J) bool, or NULL                  */
    const float *key_padding_mask_float; /* (B, J) additive, or NULL              */
    const uint8_t *attn_mask;            /* bool, or NULL                         */
    const float *attn_mask_float;        /* additive, or NULL                     */
    int attn_mask_per_head;              /* 0: attn_mask is (I, J); 1: (B*heads, I, J)        */
    int is_causal;                       /* adds a causal mask (upper-left aligned)           */
    /* the attn_mask's column count, checked when nonzero: J; in a sharded run
     * (xattn_ctx_set_sharded) each rank holds its query rows of attn_mask and every rank's key
     * columns, so the keys of every rank together (0: taken to be so, unchecked) */
    int64_t attn_mask_cols;
    uint64_t reserved_[3];
} xattn_mha_inputs;

/* Where J' = J + add_bias_kv + add_zero_attn (the appended keys come last and are never
 * masked), as torch returns the weights (need_weights=True). */
typedef struct xattn_mha_outputs {
    float *out;           /* (B, I, out_dim), required                                     */
    float *attn;          /* (B, I, J') weights averaged over heads, or NULL                */
    float *attn_per_head; /* (B, heads, I, J') weights per head, or NULL                    */
    uint64_t reserved_[4];
} xattn_mha_outputs;

/* ctx may be NULL (the default context). */
XATTN_API xattn_status xattn_mha_forward(xattn_ctx *ctx, const xattn_mha *m,
                                         const xattn_mha_inputs *in, const xattn_mha_outputs *out);

/* ------------------------------------------------------------------------------------------ */
/* Bidirectional cross-attention (PyPI bidirectional-cross-attention 0.1.0 and 0.0.x)           */
/* ------------------------------------------------------------------------------------------ */

/*
 * BidirectionalCrossAttention(dim, heads, dim_head, context_dim, dropout, talking_heads,
 * prenorm) and BidirectionalCrossAttentionTransformer(dim, depth, context_dim,
 * ff_expansion_factor, final_norms, heads, dim_head, dropout, talking_heads), loaded from
 * their state_dict names (registry kinds "bidir" and "bidir-transformer"):
 *   attention:   [norm.weight [norm.bias], context_norm.weight [...]] to_qk.weight,
 *                context_to_qk.weight, to_v.weight, context_to_v.weight, to_out.{weight,bias},
 *                context_to_out.{weight,bias} [talking_heads.weight, context_talking_heads.weight]
 *   transformer: layers.L.0.<attention names>, layers.L.1.{0.weight,1.weight,1.bias,3.weight,
 *                3.bias} (feed-forward of x), layers.L.2.* (of the context)
 *                [norm.weight, context_norm.weight]
 * The prenorm is nn.RMSNorm (0.1.0: weight only, eps FLT_EPSILON) or nn.LayerNorm (0.0.x:
 * weight and bias, eps 1e-5), told by the names. Masks are True = keep; masked similarities
 * are -FLT_MAX, so a fully masked row or column gives a uniform average, exactly as the
 * package. Neither B*H*I*J map is materialised unless attn / context_attn are requested.
 */
typedef enum xattn_bidir_norm {
    XATTN_NORM_NONE = 0,
    XATTN_NORM_RMS = 1,  /* nn.RMSNorm(eps=None): weight only, eps = FLT_EPSILON      */
    XATTN_NORM_LAYER = 2 /* nn.LayerNorm (0.0.x prenorm): weight and bias, eps 1e-5   */
} xattn_bidir_norm;

typedef struct xattn_bidir_config {
    int is_transformer; /* BidirectionalCrossAttentionTransformer                    */
    int64_t dim, context_dim, heads, dim_head, inner_dim;
    xattn_bidir_norm prenorm;
    int talking_heads;
    int64_t depth; /* transformer: layers (1 for the attention module)          */
    int64_t ff_hidden, context_ff_hidden; /* transformer: int(dim * ff_expansion_factor)   */
    double ff_expansion_factor; /* transformer: the factor (given, or implied by the widths) */
    int final_norms;            /* transformer: norm / context_norm present                   */
    int64_t context_norm_dim;   /* transformer: size of context_norm.weight (= context_dim)    */
} xattn_bidir_config;

typedef struct xattn_bidir xattn_bidir;

/* Options of the loader; all zero = what the file tells, else the package's defaults. Values
 * given must agree with the tensor shapes. */
typedef struct xattn_bidir_opts {
    int64_t heads;              /* 0: the talking-heads weight's size, else __metadata__
                                   "heads", else 8 (the package default, announced)         */
    int64_t dim_head;           /* 0: inner_dim / heads                                     */
    double ff_expansion_factor; /* transformer; 0: __metadata__, else the factor the feed-
                                   forward widths imply                                     */
    double dropout;             /* 0 (dropout is the identity at inference)                 */
    uint64_t reserved_[4];      /* must be zero                                             */
} xattn_bidir_opts;

/* Detects attention vs transformer from the names after `prefix` ("" or e.g. "enc.");
 * opts may be NULL (all defaults). */
XATTN_API xattn_status xattn_bidir_load(const xattn_safetensors *st, const char *prefix,
                                        const xattn_bidir_opts *opts, xattn_bidir **out);
XATTN_API void xattn_bidir_free(xattn_bidir *m);
XATTN_API void xattn_bidir_get_config(const xattn_bidir *m, xattn_bidir_config *cfg);

typedef struct xattn_bidir_inputs {
    int64_t B, I, J;
    const float *x;              /* (B, I, dim)                                        */
    const float *context;        /* (B, J, context_dim)                                */
    const uint8_t *mask;         /* (B, I) nonzero = keep, or NULL                     */
    const uint8_t *context_mask; /* (B, J) nonzero = keep, or NULL                    */
    const float *rel_pos_bias;   /* (bias_b, bias_h, I, J) added to the similarities   */
    int64_t bias_b, bias_h;      /* 1 or B, 1 or heads                                 */
    uint64_t reserved_[4];       /* must be zero                                       */
} xattn_bidir_inputs;

typedef struct xattn_bidir_outputs {
    float *out;            /* (B, I, dim), required                              */
    float *context_out;    /* (B, J, context_dim), required                      */
    float *attn;           /* (B, heads, I, J) or NULL: softmax over j, after talking
                              heads (attention module only, as return_attn)      */
    float *context_attn;   /* (B, heads, I, J) or NULL: softmax over i, likewise  */
    uint64_t reserved_[4]; /* must be zero                                       */
} xattn_bidir_outputs;

/* Runs the module on ctx (NULL: the default context). The transformer returns no maps (the
 * package ignores return_attn): asking it for attn or context_attn is an error. */
XATTN_API xattn_status xattn_bidir_forward(xattn_ctx *ctx, const xattn_bidir *m,
                                           const xattn_bidir_inputs *in,
                                           const xattn_bidir_outputs *out);

/* ------------------------------------------------------------------------------------------ */
/* Mutual cross-attention (parameter-free); cross-attention over 2-D feature maps              */
/* ------------------------------------------------------------------------------------------ */
/*
 * Mutual cross-attention (Zhao & Gu 2024, ztony0712/MCA; parameter-free, dropout = identity
 * at inference). For a (B, Na, D) and b (B, Nb, D):
 *   A  = softmax(a b^T / sqrt(D)) b      (B, Na, D)   a queries b
 *   Bm = softmax(b a^T / sqrt(D)) a      (B, Nb, D)   b queries a
 *   out = A + Bm
 * The sum needs A and Bm of one shape, so xattn_mutual accepts exactly equal shapes
 * a, b (B, N, D) (N >= 1, D >= 1); xattn_mutual_terms returns the two terms separately and
 * accepts Na != Nb (same B and D). Both terms run on the fused attention kernel: no N x N
 * buffer; scratch is one (B, N, D) array.
 */
XATTN_API xattn_status xattn_mutual(const float *a, const float *b, int64_t B, int64_t N, int64_t D,
                                    float *out);
XATTN_API xattn_status xattn_mutual_terms(const float *a, int64_t Na, const float *b, int64_t Nb,
                                          int64_t B, int64_t D, float *a_out, float *b_out);
/* EEG helper: a, b of one shape (rank 3..8) with a band axis; each band is fused on its own:
 * the slice of a band (the other axes, in order) is read as (batch..., N, D) with its last two
 * axes as N and D. out has the input's shape and layout. For (trials, bands, channels, time)
 * and band_axis 1 this is N = channels, D = time for each (trial, band). band_axis may be
 * negative (from the end). */
XATTN_API xattn_status xattn_mutual_bands(const float *a, const float *b, int ndim,
                                          const int64_t *shape, int band_axis, float *out);

/*
 * Cross-attention over 2-D feature maps (a CrossAttention of 1x1 convolutions), loaded from its
 * state_dict names (optional prefix): conv_query.{weight,bias} (Ck, C1, 1, 1), (Ck);
 * conv_key.{weight,bias} (Ck, C2, 1, 1), (Ck); conv_value.{weight,bias} (Cv, C2, 1, 1), (Cv)
 * (1x1 nn.Conv2d; biases optional). For x1 (B, C1, H1, W1), x2 (B, C2, H2, W2), positions
 * flattened row-major (p = h*W + w):
 *   Q = conv_query(x1), K = conv_key(x2), V = conv_value(x2)
 *   out[b, :, p] = sum_q softmax_q(scale * Q[b,:,p] . K[b,:,q]) V[b, :, q]   (B, Cv, H1, W1)
 * scale is 1 (no scaling, as the seed) unless has_scale is set. x1 and x2 may differ in
 * spatial size. (The seed's snippet computes bmm(value, attention) with the attention
 * untransposed, which only runs when H1*W1 == H2*W2 and sums over the wrong axis; xattn
 * implements the formula above.)
 */
typedef struct xattn_conv2d_cross xattn_conv2d_cross;
typedef struct xattn_conv2d_cross_config {
    int64_t in1, in2;     /* C1 (x1 channels), C2 (x2 channels) */
    int64_t qk_channels;  /* Ck */
    int64_t out_channels; /* Cv */
    int has_bias_q, has_bias_k, has_bias_v;
} xattn_conv2d_cross_config;

XATTN_API xattn_status xattn_conv2d_cross_load(const xattn_safetensors *st, const char *prefix,
                                               xattn_conv2d_cross **out);
XATTN_API void xattn_conv2d_cross_free(xattn_conv2d_cross *m);
XATTN_API void xattn_conv2d_cross_get_config(const xattn_conv2d_cross *m,
                                             xattn_conv2d_cross_config *cfg);
typedef struct xattn_conv2d_cross_inputs {
    int64_t B, H1, W1, H2, W2;
    const float *x1; /* (B, C1, H1, W1) */
    const float *x2; /* (B, C2, H2, W2) */
    int has_scale;   /* 0: scale 1 (the seed) */
    float scale;
} xattn_conv2d_cross_inputs;
/* out (B, Cv, H1, W1) */
XATTN_API xattn_status xattn_conv2d_cross_forward(const xattn_conv2d_cross *m,
                                                  const xattn_conv2d_cross_inputs *in, float *out);

/* ------------------------------------------------------------------------------------------ */
/* Joint (stacked) cross-attention: nn.TransformerEncoder layers over [x; context]              */
/* ------------------------------------------------------------------------------------------ */
/*
 * MMCA-style joint attention: x (B, K, d) and context (B, N, d) are stacked into Y = [x; context]
 * (B, K+N, d) and run through torch.nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward,
 * dropout, activation, layer_norm_eps, batch_first=True, norm_first, bias) layers, then split
 * back. Every row's softmax spans all K+N keys. State dict names (after `prefix`):
 *   one layer:  self_attn.in_proj_weight (3d, d), self_attn.in_proj_bias (3d),
 *               self_attn.out_proj.{weight (d, d), bias (d)}, linear1.{weight (ff, d), bias (ff)},
 *               linear2.{weight (d, ff), bias (d)}, norm1.{weight, bias}, norm2.{weight, bias}
 *   stack:      layers.L.<the names above> (nn.TransformerEncoder), optional norm.{weight, bias}
 *               (its final LayerNorm, eps = layer_norm_eps).
 *   bias=False layers (torch >= 2.1) have none of the *.bias tensors; that is detected.
 * What the tensors cannot tell comes from `opts`, else the file's __metadata__ ("heads",
 * "norm_first", "activation" = relu|gelu, "layer_norm_eps"), else torch's defaults (norm_first
 * False, relu, 1e-5; heads has no default). A default assumed for norm_first, activation or
 * layer_norm_eps is announced by xattn_joint_warnings (and xattn_module_warnings).
 * Padding masks follow src_key_padding_mask: True = ignore that position as a key. A row whose
 * every key is ignored (a batch item with both sequences fully padded) gets a ZERO attention
 * output (before out_proj), never NaN.
 */
/* activation choices of xattn_joint_opts */
#define XATTN_JOINT_ACT_DEFAULT 0 /* the file's __metadata__, else relu */
#define XATTN_JOINT_ACT_RELU    1
#define XATTN_JOINT_ACT_GELU    2 /* exact (erf) form */

/* All zero: everything from the file, else torch's defaults. */
typedef struct xattn_joint_opts {
    int64_t heads;           /* nhead; 0: __metadata__ "heads" (required there if not here)    */
    xattn_choice norm_first; /* XATTN_DEFAULT (metadata, else False), XATTN_NO, XATTN_YES  */
    int activation;          /* XATTN_JOINT_ACT_*                                               */
    double layer_norm_eps;   /* 0: metadata, else 1e-5                                          */
    uint64_t reserved_[4];   /* zero                                                            */
} xattn_joint_opts;

typedef struct xattn_joint_config {
    int64_t d_model, heads, head_dim, ff_dim, layers;
    int norm_first, activation; /* activation: 0 relu, 1 gelu */
    float layer_norm_eps;
    int final_norm; /* norm.weight present */
    int bias;       /* the layers have biases (TransformerEncoderLayer(bias=...)) */
} xattn_joint_config;

typedef struct xattn_joint xattn_joint;

/* opts may be NULL (all defaults). */
XATTN_API xattn_status xattn_joint_load(const xattn_safetensors *st, const char *prefix,
                                        const xattn_joint_opts *opts, xattn_joint **out);
XATTN_API void xattn_joint_free(xattn_joint *m);
XATTN_API void xattn_joint_get_config(const xattn_joint *m, xattn_joint_config *cfg);
/* Defaults assumed for options the file cannot tell, one line each ("" if none). */
XATTN_API const char *xattn_joint_warnings(const xattn_joint *m);

typedef struct xattn_joint_inputs {
    int64_t B, K, N;                     /* K >= 0, N >= 0, K + N >= 1                     */
    const float *x;                      /* (B, K, d)                                      */
    const float *context;                /* (B, N, d)                                      */
    const uint8_t *x_padding_mask;       /* (B, K) nonzero = ignore, or NULL               */
    const uint8_t *context_padding_mask; /* (B, N) nonzero = ignore, or NULL               */
    uint64_t reserved_[4];               /* zero                                           */
} xattn_joint_inputs;

typedef struct xattn_joint_outputs {
    float *out;            /* (B, K, d); may be NULL when K = 0                               */
    float *context_out;    /* (B, N, d); may be NULL when N = 0                               */
    uint64_t reserved_[4]; /* zero                                                            */
} xattn_joint_outputs;

/* ctx may be NULL (the default context). */
XATTN_API xattn_status xattn_joint_forward(xattn_ctx *ctx, const xattn_joint *m,
                                           const xattn_joint_inputs *in,
                                           const xattn_joint_outputs *out);

/* ------------------------------------------------------------------------------------------ */
/* Interlaced two-stream cross-attention decoder (2D-3D MIT)                                     */
/* ------------------------------------------------------------------------------------------ */
/*
 * InterlanceDecoder(embed_dim, depth, num_classes=20, num_heads=6, mlp_ratio, qkv_bias=False,
 * qk_scale=None) of jimmy15923/mit (models/sem_transformer.py), loaded from its state_dict names
 * (each block a SkipClsDecoderBlock; LayerNorm eps 1e-5, nn.LayerNorm's default):
 *   blocks.L.norm1.{weight,bias}, blocks.L.self_attn.qkv.weight [.bias],
 *   blocks.L.self_attn.proj.{weight,bias}, blocks.L.norm_q.*, blocks.L.norm_v.*,
 *   blocks.L.attn.{q_map,k_map,v_map}.weight [.bias], blocks.L.attn.proj.{weight,bias},
 *   blocks.L.norm2.*, blocks.L.mlp.fc1.{weight,bias}, blocks.L.mlp.fc2.{weight,bias}
 * (the optional biases all present with qkv_bias=True, all absent without).
 * Block (q stream queries the other stream v):
 *   q += SelfAttn(LN1 q);  q += CrossAttn(LN_q q, LN_v v[n_cls:]);  q += MLP(LN2 q)  (GELU erf)
 * The cross-attention's keys/values skip the first n_cls tokens of the other stream (a stream
 * of <= n_cls tokens gives a zero attention output, as the reference's empty softmax).
 * Direction: forward(voxel, view) of the reference updates voxel (= x here) in even layers
 * (0, 2, ...) and view (= context) in odd layers; `context_first` swaps that.
 * What the tensors cannot tell comes from `opts`, else the file's __metadata__ ("heads",
 * "n_cls" or "num_classes", "first" = x|context, "qk_scale"), else the reference's defaults;
 * defaults assumed for heads, n_cls and first are announced by xattn_interlaced_warnings.
 */
/* All zero: everything from the file, else the reference's defaults (heads 6, n_cls 20, x first,
 * qk_scale None). */
typedef struct xattn_interlaced_opts {
    int64_t heads; /* num_heads; 0: __metadata__ "heads", else 6                      */
    int64_t n_cls; /* num_classes, the class tokens skipped as keys; used when nonzero */
    int has_n_cls; /* nonzero: n_cls is used as given, 0 included (n_cls = 0 alone
                      means "metadata n_cls / num_classes, else 20")                   */
    xattn_choice context_first; /* XATTN_DEFAULT (metadata "first", else x first),
                                   XATTN_NO (x first), XATTN_YES (context first)               */
    double qk_scale;            /* 0: __metadata__ "qk_scale", else None (head_dim^-0.5), as the
                                   reference's `qk_scale or head_dim ** -0.5`                       */
    uint64_t reserved_[4]; /* zero                                                            */
} xattn_interlaced_opts;

typedef struct xattn_interlaced_config {
    int64_t dim, heads, head_dim, depth, mlp_hidden, n_cls;
    int context_first;
    int qkv_bias; /* self_attn.qkv.bias present                                         */
    int map_bias; /* attn.{q,k,v}_map.bias present (= qkv_bias)                         */
    float eps;    /* LayerNorm eps (1e-5)                                               */
    float scale;  /* head_dim^-0.5 (or qk_scale)                                        */
} xattn_interlaced_config;

typedef struct xattn_interlaced xattn_interlaced;

/* Loads blocks.0 .. blocks.(depth-1) (names after `prefix`); opts may be NULL. */
XATTN_API xattn_status xattn_interlaced_load(const xattn_safetensors *st, const char *prefix,
                                             const xattn_interlaced_opts *opts,
                                             xattn_interlaced **out);
XATTN_API void xattn_interlaced_free(xattn_interlaced *m);
XATTN_API void xattn_interlaced_get_config(const xattn_interlaced *m, xattn_interlaced_config *c);
/* Defaults assumed for options the file cannot tell, one line each ("" if none). */
XATTN_API const char *xattn_interlaced_warnings(const xattn_interlaced *m);

typedef struct xattn_interlaced_inputs {
    int64_t B, I, J;
    const float *x;        /* (B, I, dim): the reference's voxel stream                       */
    const float *context;  /* (B, J, dim): the reference's view stream                        */
    uint64_t reserved_[4]; /* zero                                                            */
} xattn_interlaced_inputs;

typedef struct xattn_interlaced_outputs {
    float *out;         /* (B, I, dim); may be x (in place)                                */
    float *context_out; /* (B, J, dim); may be context                                     */
    /* NULL, or depth pointers (each may be NULL): attn_weights[L] receives layer L's
     * pre-softmax cross-attention logits (scale * q k^T over ALL keys, class tokens included,
     * as the reference's returned weights): (B, heads, I, J) in layers where x queries,
     * (B, heads, J, I) where context queries. */
    float *const *attn_weights;
    uint64_t reserved_[4]; /* zero                                                            */
} xattn_interlaced_outputs;

/* ctx may be NULL (the default context). */
XATTN_API xattn_status xattn_interlaced_forward(xattn_ctx *ctx, const xattn_interlaced *m,
                                                const xattn_interlaced_inputs *in,
                                                const xattn_interlaced_outputs *out);

/* ------------------------------------------------------------------------------------------ */
/* Multiscale multiview cross-attention                                                         */
/* ------------------------------------------------------------------------------------------ */
/*
 * A documented composition (docs/multiview.md; the PyTorch reference is the class
 * MultiscaleMultiview(views, dims, heads, hiddens, eps=1e-5, gelu="none") in
 * tests/reference/gen_multiview.py). V >= 2 views x_v (B, N_v, C_0) of one input pass S >= 1
 * stages of widths C_s. Per stage s and view v (prefix stages.s.views.v.):
 *   s > 0:  x_v = expand(AvgPool1d(2, stride 2) over tokens of x_v)    N -> floor(N / 2)
 *           (an odd last token is dropped; a view of 1 token cannot be pooled: error)
 *   self:   y_v = x_v + self_attn(norm1(x_v));  y_v += mlp(norm2(y_v))
 *   cross:  kv = concat over u != v (increasing u) of y_u along tokens (every view reads the
 *           self-block outputs of this stage: a simultaneous update)
 *           z_v = y_v + cross_attn(cross_norm_q(y_v), cross_norm_kv(kv), same);
 *           z_v += cross_mlp(cross_norm2(z_v))
 * State dict names (after `prefix`), all under stages.S.views.V.:
 *   expand.{weight,bias} (s > 0 only; (C_s, C_{s-1})), norm1, norm2, cross_norm_q, cross_norm_kv,
 *   cross_norm2 .{weight,bias} (nn.LayerNorm), self_attn., cross_attn. {in_proj_weight,
 *   in_proj_bias, out_proj.weight, out_proj.bias} (nn.MultiheadAttention(C_s, heads_s,
 *   batch_first=True)), mlp., cross_mlp. {0.weight, 0.bias, 2.weight, 2.bias} (Linear, GELU,
 *   Linear). No masks: every token attends to every token of the other views.
 * Views and stages are counted from the names and every width from the shapes; the heads per
 * stage leave no trace and must be given (option or __metadata__ "heads": "4" or "2,4,8").
 * Registry kind "multiview": options views, dims, heads, hiddens (lists such as "8,16"), eps,
 * gelu, and heads.0, heads.1, ... (each stage's heads, which a saved file's __metadata__
 * holds); inputs xs.0 .. xs.{V-1}, outputs out.0 .. out.{V-1} (up to 11 views), out.K of
 * shape (B, M_K, C_last) with M_K = floor(N_K / 2^(S-1)) (the size symbol M_K that the kind
 * computes); alias "view" for the views in order (xs.*).
 */
#define XATTN_MULTIVIEW_MAX_STAGES 16
#define XATTN_MULTIVIEW_MAX_VIEWS  64

typedef enum xattn_multiview_gelu {
    XATTN_MULTIVIEW_GELU_DEFAULT = 0, /* __metadata__ "gelu", else erf (nn.GELU's default)      */
    XATTN_MULTIVIEW_GELU_ERF = 1,     /* exact GELU: nn.GELU(approximate="none")               */
    XATTN_MULTIVIEW_GELU_TANH = 2     /* nn.GELU(approximate="tanh")                           */
} xattn_multiview_gelu;

/* All zero: everything from __metadata__, else the reference's defaults (the heads have none). */
typedef struct xattn_multiview_opts {
    const int64_t *heads;      /* heads per stage (n_heads = stages), or one value for all     */
    int64_t n_heads;           /* 0: __metadata__ "heads" ("4" or "2,4,8"), required there    */
    double eps;                /* LayerNorm eps; 0: __metadata__ "eps", else 1e-5              */
    xattn_multiview_gelu gelu; /* GELU form of the MLPs                                       */
    uint64_t reserved_[4];
} xattn_multiview_opts;

typedef struct xattn_multiview_config {
    int64_t views, stages;
    int64_t dim[XATTN_MULTIVIEW_MAX_STAGES]; /* C_s                              */
    int64_t heads[XATTN_MULTIVIEW_MAX_STAGES];
    int64_t mlp_hidden[XATTN_MULTIVIEW_MAX_STAGES]; /* rows of view 0's mlp.0.weight     */
    float eps;
    int gelu_tanh;
} xattn_multiview_config;

typedef struct xattn_multiview xattn_multiview;

/* opts may be NULL (everything from __metadata__ / defaults). */
XATTN_API xattn_status xattn_multiview_load(const xattn_safetensors *st, const char *prefix,
                                            const xattn_multiview_opts *opts,
                                            xattn_multiview **out);
XATTN_API void xattn_multiview_free(xattn_multiview *m);
XATTN_API void xattn_multiview_get_config(const xattn_multiview *m, xattn_multiview_config *cfg);
/* Final-stage token count of a view of n tokens (floor(n / 2) per pooling); fails when a
 * pooling would see fewer than 2 tokens. */
XATTN_API xattn_status xattn_multiview_out_tokens(const xattn_multiview *m, int64_t n,
                                                  int64_t *out_n);

typedef struct xattn_multiview_inputs {
    int64_t B;
    int64_t n_views;       /* = config views                                               */
    const int64_t *tokens; /* [n_views] N_v >= 1 (views may have different token counts)   */
    const float *const *x; /* [n_views] (B, N_v, C_0)                                      */
    uint64_t reserved_[4];
} xattn_multiview_inputs;

typedef struct xattn_multiview_outputs {
    float *const *out; /* [n_views] (B, out_tokens(N_v), C_{S-1}); NULL: not written   */
    uint64_t reserved_[4];
} xattn_multiview_outputs;

/* ctx may be NULL (the default context). */
XATTN_API xattn_status xattn_multiview_forward(xattn_ctx *ctx, const xattn_multiview *m,
                                               const xattn_multiview_inputs *in,
                                               const xattn_multiview_outputs *out);

/* ------------------------------------------------------------------------------------------ */
/* HALLO region-masked hierarchical audio-visual cross-attention                                */
/* ------------------------------------------------------------------------------------------ */
/*
 * Mask pyramid: resizes n soft masks (n, Hm, Wm) to (n, h, w) exactly as
 * torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=True)
 * (a triangle filter widened by the scale factor when shrinking; plain bilinear when
 * enlarging) and writes them flattened row-major, out (n, h*w): the token order of a latent
 * (B, h*w, C). in and out must not overlap.
 */
XATTN_API xattn_status xattn_resize_masks(const float *in, int64_t n, int64_t Hm, int64_t Wm,
                                          int64_t h, int64_t w, float *out);

/*
 * The audio path of HALLO's AudioTemporalBasicTransformerBlock (fudan-generative-vision/hallo,
 * hallo/models/attention.py, the branch with attn2_0/1/2; transcribed as HalloAudioPath in
 * tests/reference/gen_hallo.py), loaded by its state_dict names (after `prefix`):
 *   zero_conv_full., zero_conv_face., zero_conv_lip. {weight (dim, dim, 1, 1), bias}
 *   attn2_0., attn2_1., attn2_2. {to_q.weight, to_k.weight, to_v.weight, to_out.0.weight,
 *                                 to_out.0.bias}      diffusers Attention (to_q/k/v biases when
 *                                                     attention_bias=True)
 *   norm2.{weight,bias}, norm3.{weight,bias}         nn.LayerNorm(dim), eps 1e-5
 *   ff.net.0.proj.{weight (2*inner, dim), bias}, ff.net.2.{weight (dim, inner), bias}
 *                                                    diffusers FeedForward, GEGLU (exact GELU)
 * forward:  n = norm2(x);  o_k = zero_conv_k(attn2_k(n, audio) * M_k)  (k = full, face, lip;
 *           the mask multiplies every channel of a token);  h = x + s_0 o_0 + s_1 o_1 + s_2 o_2;
 *           out = h + ff(norm3(h)),  ff(y) = (a * gelu(g)) W2^T + b2,  [a | g] = y W0^T + b0.
 * The self-attention part (norm1, attn1) of the HALLO block is not part of this module.
 * Registry kind "hallo-audio": options dim, heads, dim_head, cross_attention_dim,
 * attention_bias, ff_inner_dim, latent_hw ("H,W": the latent grid, else a square); inputs
 * hidden_states, encoder_hidden_states, motion_scale, and one of masks (B or 1, 3, N) at the
 * latent's size or region_masks (B or 1, 3, Hm, Wm) at any size, which the kind resizes to the
 * latent grid as xattn_resize_masks does; outputs out, regions.
 */
typedef struct xattn_hallo_opts {
    int64_t heads; /* attention heads; 0: __metadata__ "heads", else 8 (diffusers' default) */
    uint64_t reserved_[4];
} xattn_hallo_opts;

typedef struct xattn_hallo_config {
    int64_t dim;                        /* channels of the latent tokens                         */
    int64_t audio_dim;                  /* cross_attention_dim                                  */
    int64_t heads, head_dim, inner_dim; /* of each attention                     */
    int64_t ff_inner;                   /* rows of ff.net.0.proj.weight / 2                      */
} xattn_hallo_config;

typedef struct xattn_hallo xattn_hallo;

/* opts may be NULL (defaults). */
XATTN_API xattn_status xattn_hallo_load(const xattn_safetensors *st, const char *prefix,
                                        const xattn_hallo_opts *opts, xattn_hallo **out);
XATTN_API void xattn_hallo_free(xattn_hallo *m);
XATTN_API void xattn_hallo_get_config(const xattn_hallo *m, xattn_hallo_config *cfg);

typedef struct xattn_hallo_inputs {
    int64_t B, N, T;
    const float *x;            /* (B, N, dim) latent tokens (N = h*w, row-major)              */
    const float *audio;        /* (B, T, audio_dim)                                           */
    const float *masks;        /* (mask_batch, 3, N): full/pose, face, lip at this level      */
    int64_t mask_batch;        /* 1 (shared by the batch) or B                                */
    const float *motion_scale; /* 3 weights (pose, face, lip), or NULL = 1, 1, 1           */
    uint64_t reserved_[4];
} xattn_hallo_inputs;

typedef struct xattn_hallo_outputs {
    float *out;     /* (B, N, dim); may not alias x                                */
    float *regions; /* optional (3, B, N, dim): the unscaled o_k of each region    */
    uint64_t reserved_[4];
} xattn_hallo_outputs;

/* ctx may be NULL (the default context). */
XATTN_API xattn_status xattn_hallo_forward(xattn_ctx *ctx, const xattn_hallo *m,
                                           const xattn_hallo_inputs *in,
                                           const xattn_hallo_outputs *out);

/* ------------------------------------------------------------------------------------------ */
/* BERT decoder layers: causal self-attention, cross-attention and a KV cache                  */
/* ------------------------------------------------------------------------------------------ */
/*
 * Hugging Face transformers BertLayer / BertEncoder as a decoder (BertConfig(is_decoder=True,
 * add_cross_attention=True)), post-LN, GELU (exact erf), scale head_dim^-0.5:
 *   h = LN(x + SelfAttn(x; causal AND attention_mask))
 *   h = LN(h + CrossAttn(h, memory; memory_mask))
 *   h = LN(h + output.dense(gelu(intermediate.dense(h))))
 * State dict names (after `prefix`): one BertLayer ("attention.self.query.weight", ...) or a
 * stack "layer.N.<name>" (BertEncoder), N = 0, 1, ...:
 *   attention.self.{query,key,value}.{weight,bias}, attention.output.dense.{weight,bias},
 *   attention.output.LayerNorm.{weight,bias}, crossattention.self.{query,key,value}.{weight,bias}
 *   (key/value weights (hidden, memory_dim): memory_dim may differ from hidden, as BLIP's
 *   encoder_width), crossattention.output.dense.*, crossattention.output.LayerNorm.*,
 *   intermediate.dense.*, output.dense.*, output.LayerNorm.*
 * Registry kind "bert-decoder" (options named as BertConfig's arguments: hidden_size,
 * num_attention_heads, intermediate_size, num_hidden_layers, layer_norm_eps, plus encoder_width,
 * bert_encoder and the projector's video_dim / audio_dim / *_projector / *_type_embedding), run
 * by name as BertEncoder.forward: hidden_states, encoder_hidden_states, attention_mask and
 * encoder_attention_mask (BertModel's (B, T) / (B, M) keep masks) -> out (the last hidden
 * state). In place of encoder_hidden_states the memory may be built by the projector from the
 * inputs video (B, Fv, Nv, video_dim) and / or audio (B, Fa, Na, audio_dim), as
 * xattn_decoder_project does (xattn_kind_one_of: "encoder_hidden_states|video,audio"); the 0-dim
 * switch "incremental" (nonzero) computes the same output token by token through the K/V cache,
 * as xattn_decoder_step does. The registry finds a BertEncoder stack
 * (layer.0.crossattention.self.query.weight) or one BertLayer (crossattention.self.query.weight).
 * Options: heads (num_attention_heads) from opts, else __metadata__ "heads" (or
 * "num_attention_heads"), else 12 (BertConfig's default); layer_norm_eps from opts, else
 * __metadata__ "layer_norm_eps", else 1e-12. Both leave no trace in the tensors: an assumed
 * default is reported by xattn_module_warnings.
 *
 * Masks follow transformers' attention_mask / encoder_attention_mask: 1 (nonzero) = keep. Masked
 * logits take -FLT_MAX as transformers' finfo.min additive mask, so a row with every key masked
 * is the uniform average over the row's keys (never NaN): for the self-attention of a full
 * forward that is all T positions, as transformers. (Incremental decoding agrees with the full
 * forward everywhere except on such fully masked rows, i.e. left-padded leading positions,
 * where only the keys decoded so far exist.)
 *
 * Modality projector (optional, our design, for the T-V / T-A / T-AV groups): tensors
 *   proj.video.weight (memory_dim, Dv), proj.video.bias (memory_dim),
 *   proj.audio.weight (memory_dim, Da), proj.audio.bias (memory_dim),
 *   type_embedding.video (memory_dim), type_embedding.audio (memory_dim)  (each optional; a
 *   projection has both weight and bias).
 * A modality's features (B, F, N, D) (F frames of N tokens) are mean-pooled over frames, then
 * projected: m = mean_f(x[:, f]) W^T + b (+ type_embedding). The memory is the concatenation
 * [video; audio] along the sequence axis (either may be absent): (B, Nv + Na, memory_dim).
 * Created modules draw proj.* as nn.Linear does and the type embeddings N(0, 1), as the rows of
 * an nn.Embedding built directly.
 */
typedef struct xattn_decoder_opts {
    int64_t heads;         /* num_attention_heads; 0: __metadata__, else 12                   */
    double layer_norm_eps; /* 0: __metadata__, else 1e-12                                      */
    uint64_t reserved_[4];
} xattn_decoder_opts;

typedef struct xattn_decoder_config {
    int64_t hidden, heads, head_dim, intermediate, layers, memory_dim;
    int64_t video_dim, audio_dim; /* input widths of proj.video / proj.audio, 0 if absent     */
    int video_type, audio_type;   /* type_embedding.video / .audio present                    */
    float layer_norm_eps;
} xattn_decoder_config;

typedef struct xattn_decoder xattn_decoder;
typedef struct xattn_decoder_state xattn_decoder_state;

/* opts may be NULL (every option at its default). */
XATTN_API xattn_status xattn_decoder_load(const xattn_safetensors *st, const char *prefix,
                                          const xattn_decoder_opts *opts, xattn_decoder **out);
XATTN_API void xattn_decoder_free(xattn_decoder *m);
XATTN_API void xattn_decoder_get_config(const xattn_decoder *m, xattn_decoder_config *cfg);

/* Builds the memory (B, Nv + Na, memory_dim) from video (B, Fv, Nv, Dv) and/or audio
 * (B, Fa, Na, Da) (NULL or N = 0: absent; at least one present; F >= 1). ctx may be NULL. */
XATTN_API xattn_status xattn_decoder_project(xattn_ctx *ctx, const xattn_decoder *m, int64_t B,
                                             const float *video, int64_t Fv, int64_t Nv,
                                             const float *audio, int64_t Fa, int64_t Na,
                                             float *memory);

typedef struct xattn_decoder_inputs {
    int64_t B, T, M;
    const float *x;                /* (B, T, hidden): hidden_states                           */
    const uint8_t *attention_mask; /* (B, T), nonzero = keep, or NULL                         */
    const float *memory;           /* (B, M, memory_dim), M >= 1: encoder_hidden_states       */
    const uint8_t *memory_mask;    /* (B, M), nonzero = keep, or NULL: encoder_attention_mask */
    uint64_t reserved_[4];
} xattn_decoder_inputs;

typedef struct xattn_decoder_outputs {
    float *out; /* (B, T, hidden): last_hidden_state; may be in->x */
    uint64_t reserved_[4];
} xattn_decoder_outputs;

/* Full-sequence forward. ctx may be NULL (default context). */
XATTN_API xattn_status xattn_decoder_forward(xattn_ctx *ctx, const xattn_decoder *m,
                                             const xattn_decoder_inputs *in,
                                             const xattn_decoder_outputs *out);

/* Incremental decoding. A state holds, per layer, the self-attention K/V cache for up to
 * max_len positions, the cross-attention K/V of the current memory, and scratch for steps of up
 * to max_step tokens; everything is allocated here (set_memory reallocates only when M grows),
 * so steps allocate nothing. The state keeps a pointer to m (m must outlive it). */
XATTN_API xattn_status xattn_decoder_state_new(const xattn_decoder *m, int64_t B, int64_t max_len,
                                               int64_t max_step, xattn_decoder_state **out);
/* A state for beam search: B = batch * beams rows, the rows b * beams .. (b + 1) * beams - 1
 * sharing memory item b: set_memory then takes the memory (batch, M, memory_dim) and its mask
 * (batch, M), whose K/V are computed and kept once per item, not once per beam. Steps take
 * (batch * beams, n, hidden) rows. (xattn_decoder_state_new is the case beams = 1.) */
XATTN_API xattn_status xattn_decoder_state_new_beams(const xattn_decoder *m, int64_t batch,
                                                     int64_t beams, int64_t max_len,
                                                     int64_t max_step, xattn_decoder_state **out);
XATTN_API void xattn_decoder_state_free(xattn_decoder_state *s);
/* Beam search's cache reordering: row d's self-attention cache (every layer, every decoded
 * position) becomes a copy of row src[d] (B entries, each a row of the same memory item). Only
 * rows that change are copied; the memory's K/V are shared and never move. */
XATTN_API xattn_status xattn_decoder_reorder(xattn_decoder_state *s, const int64_t *src);
/* Computes the cross-attention K/V of every layer once and resets the position to 0:
 * memory (B, M, memory_dim), memory_mask (B, M) or NULL. ctx may be NULL. */
XATTN_API xattn_status xattn_decoder_set_memory(xattn_ctx *ctx, xattn_decoder_state *s, int64_t M,
                                                const float *memory, const uint8_t *memory_mask);
/* Forgets the decoded tokens (keeps the memory). */
XATTN_API void xattn_decoder_reset(xattn_decoder_state *s);
/* Tokens decoded so far. */
XATTN_API int64_t xattn_decoder_position(const xattn_decoder_state *s);
/* Decodes n (1 .. max_step) more tokens: x (B, n, hidden), attention_mask (B, n) for these
 * positions (or NULL = all kept) -> out (B, n, hidden), equal to rows pos .. pos+n-1 of the
 * full forward over everything decoded so far (queries at positions pos .. pos+n-1 attend to
 * keys 0 .. pos+n-1 causally). ctx may be NULL. */
XATTN_API xattn_status xattn_decoder_step(xattn_ctx *ctx, xattn_decoder_state *s, int64_t n,
                                          const float *x, const uint8_t *attention_mask,
                                          float *out);

/* ------------------------------------------------------------------------------------------ */
/* A whole BERT decoder model (BertLMHeadModel / BertModel) and generation                      */
/* ------------------------------------------------------------------------------------------ */
/*
 * transformers' BertLMHeadModel (bert.embeddings.*, bert.encoder.layer.N.*, cls.predictions.*)
 * or a bare BertModel (embeddings.*, encoder.layer.N.*), BertConfig(is_decoder=True,
 * add_cross_attention=True), state dict as saved by safetensors (save_file / save_model):
 *   x = LayerNorm(word_embeddings[id] + token_type_embeddings[0] + position_embeddings[pos])
 *   h = the decoder layers (as xattn_decoder above) over x and the memory
 *   logits = LayerNorm(gelu(h W^T + b)) Wv^T + bias        (cls.predictions: transform, decoder)
 * Wv is cls.predictions.decoder.weight, or the word embeddings when it is absent (tied);
 * the bias is cls.predictions.decoder.bias or cls.predictions.bias. A modality projector
 * (proj.video.*, proj.audio.*, type_embedding.*) sits beside the layers under the encoder's
 * prefix (bert.encoder.proj.video.weight, ...); xattn_decoder_project(xattn_lm_decoder(m), ...)
 * builds the memory from features.
 * Sizes come from the shapes. num_attention_heads, layer_norm_eps, hidden_act ("gelu"),
 * pad_token_id, bos_token_id and eos_token_id come from a transformers config.json
 * (opts->config_json), else the file's __metadata__ (same keys), else BertConfig's defaults
 * (12, 1e-12, gelu, 0, None, None); an assumed default is listed by xattn_lm_warnings. A
 * config.json that disagrees with the shapes (hidden_size, vocab_size, num_hidden_layers, ...)
 * is an error naming it.
 */
typedef struct xattn_lm xattn_lm;
/* weights (xattn_weights, see xattn_open_opts): every linear layer (the decoder layers'
 * projections and feed-forwards, the head's dense layer and output layer; tied word embeddings
 * share the output layer's rows, kept in the same type). */
typedef struct xattn_lm_opts {
    const char *config_json; /* a transformers config.json, or NULL                         */
    int64_t heads;           /* num_attention_heads; 0: config.json, __metadata__, else 12 */
    int64_t weights;         /* xattn_weights; 0: as stored                                */
    uint64_t reserved_[4];
} xattn_lm_opts;
#define XATTN_MAX_EOS 8 /* end tokens a model or a generate call may name */
typedef struct xattn_lm_config {
    int64_t vocab_size, hidden, max_positions, type_vocab_size, layers, heads;
    int64_t pad_token_id, bos_token_id, eos_token_id; /* -1: None (eos: the first end token) */
    int64_t n_eos,
        eos_token_ids[XATTN_MAX_EOS]; /* every end token (config.json may list several) */
    int has_head, tied; /* cls.predictions.* present; output weight = word embeddings */
    float layer_norm_eps;
    int weights; /* xattn_weights the linear layers are kept as (loaded as stored: F32, BF16 or
                    F16 when they are all that type, XATTN_WEIGHTS_AUTO when they differ) */
} xattn_lm_config;
/* opts may be NULL. */
XATTN_API xattn_status xattn_lm_load(const xattn_safetensors *st, const xattn_lm_opts *opts,
                                     xattn_lm **out);
XATTN_API void xattn_lm_free(xattn_lm *m);
XATTN_API void xattn_lm_get_config(const xattn_lm *m, xattn_lm_config *c);
/* Assumed defaults, one line each ("" if none). */
XATTN_API const char *xattn_lm_warnings(const xattn_lm *m);
/* The decoder layers: states (xattn_decoder_state_new / _new_beams), set_memory, project. */
XATTN_API const xattn_decoder *xattn_lm_decoder(const xattn_lm *m);
/* Decodes n tokens ids (B, n) (B: the state's rows) at the state's position: hidden (B, n,
 * hidden) and/or logits (B, n, vocab_size) (either may be NULL; logits need the head). Token
 * ids must be in [0, vocab_size) and positions below max_position_embeddings. ctx may be NULL. */
XATTN_API xattn_status xattn_lm_step(xattn_ctx *ctx, const xattn_lm *m, xattn_decoder_state *s,
                                     int64_t n, const int64_t *ids, float *hidden, float *logits);

/* Generation options as transformers' GenerationConfig; all zero: its defaults (greedy,
 * max_length 20, length_penalty 1.0, early_stopping False, top_k 50 when sampling). */
typedef enum xattn_early_stopping {
    XATTN_EARLY_STOP_DEFAULT = 0, /* False */
    XATTN_EARLY_STOP_FALSE = 1,
    XATTN_EARLY_STOP_TRUE = 2,
    XATTN_EARLY_STOP_NEVER = 3 /* "never" */
} xattn_early_stopping;
typedef struct xattn_generate_opts {
    int64_t max_new_tokens; /* 0: up to 20 tokens in all (transformers' max_length)           */
    int64_t num_beams;      /* 0 or 1: greedy search (or sampling); K > 1: beam search (<= 32) */
    int has_length_penalty; /* 0: length_penalty 1.0                                          */
    double length_penalty;  /* finished beams score sum_logprobs / generated_len^penalty       */
    xattn_early_stopping early_stopping;
    int64_t no_repeat_ngram_size; /* 0: off                                                   */
    int do_sample;                /* sample (num_beams 1) instead of greedy                    */
    double temperature;           /* 0: 1.0                                                    */
    int64_t top_k;                /* 0: 50 (transformers' default); >= vocab: off              */
    double top_p;                 /* 0: 1.0 (off)                                              */
    uint64_t seed;                /* the sampling generator's seed (SplitMix64)                */
    /* generate()'s eos_token_id / pad_token_id / bos_token_id over the model's:
     * n_eos 0: the model's end tokens; n > 0: eos_token_ids[0 .. n) instead; -1: None */
    int64_t n_eos, eos_token_ids[XATTN_MAX_EOS];
    int has_pad_token_id, has_bos_token_id; /* 1: the id below replaces the model's    */
    int64_t pad_token_id; /* -1: None (then the first end token, as transformers)    */
    int64_t bos_token_id; /* starts every sequence when there is no prompt          */
    /* (B, P) nonzero = keep, or NULL: generate()'s attention_mask of padded prompts (usually
     * padded on the left): masked prompt tokens are never attended to, and positions count
     * the kept tokens (cumsum(mask) - 1, 0 at masked tokens), as transformers counts them */
    const uint8_t *prompt_mask;
    uint64_t reserved_[4];
} xattn_generate_opts;
/* Generates from memory (B, M, hidden) with memory_mask (B, M) (nonzero = keep, or NULL) and a
 * prompt (B, P) (P = 0: bos_token_id alone) as BertLMHeadModel.generate(input_ids=prompt,
 * encoder_hidden_states=memory, encoder_attention_mask=memory_mask, ...) with the model's
 * pad / eos ids: ids (B, xattn_lm_generate_length(opts, P)) receives the sequences (prompt
 * included), *len
 * their length (rows are (B, *len) contiguous; a finished greedy row continues with
 * pad_token_id, a short beam row with transformers' fill: pad_token_id if nonzero, else
 * eos_token_id). Greedy and beam search give transformers' ids; sampling draws from the same
 * distributions with its own generator. ctx may be NULL. */
XATTN_API xattn_status xattn_lm_generate(xattn_ctx *ctx, const xattn_lm *m, int64_t B, int64_t M,
                                         const float *memory, const uint8_t *memory_mask, int64_t P,
                                         const int64_t *prompt, const xattn_generate_opts *opts,
                                         int64_t *ids, int64_t *len);
/* The row length ids needs for xattn_lm_generate with P prompt tokens: the prompt (the bos token
 * when P = 0) and max_new_tokens, or transformers' max_length of 20 in all when it is 0 (at
 * least one token more than the prompt; a prompt of 20 or more is refused then). */
XATTN_API int64_t xattn_lm_generate_length(const xattn_generate_opts *opts, int64_t P);
/* Sampling's filters on one row of scores (V), in place, as transformers'
 * TemperatureLogitsWarper (temperature > 0, != 1), TopKLogitsWarper (0 < top_k < V: scores below
 * the k-th largest become -inf) and TopPLogitsWarper (0 < top_p < 1: the smallest scores whose
 * probabilities sum to at most 1 - top_p become -inf; the largest stays), in that order. */
XATTN_API xattn_status xattn_sampling_filter(float *scores, int64_t V, double temperature,
                                             int64_t top_k, double top_p);

/* ------------------------------------------------------------------------------------------ */
/* Modules through the registry: one interface for every kind                                   */
/* ------------------------------------------------------------------------------------------ */
/*
 * Every module kind (multi-head attention, bidirectional, mutual, joint, interlaced, multiview,
 * HALLO audio, BERT decoder, 2-D feature maps, ...) can be opened from a state dict, created
 * with the reference's default initialisation, saved, described and run through these calls,
 * by names alone: bindings for other languages need no per-kind code.
 *
 * Conventions of the public structs: every options struct is valid when zero-initialised, and
 * zero means the reference's default for every field (booleans use xattn_choice so that 0 can
 * mean "the default"). Structs end with reserved words that must be zero: new fields are taken
 * from that space, so a struct's size never changes and a caller compiled against an older
 * header keeps its behaviour (its zero-initialisation already zeroes the reserved words).
 *
 * Configuration values are resolved in one order everywhere: the tensor shapes (and which
 * tensors exist), then options, then the file's __metadata__, then the reference's default;
 * options or metadata that contradict the shapes are errors. A default assumed for an option
 * that leaves no trace in the state dict is reported by xattn_module_warnings().
 */

typedef struct xattn_module xattn_module;

/* An option as text, named as the reference constructor's keyword argument ("heads", "8"). */
typedef struct xattn_option {
    const char *name;
    const char *value;
} xattn_option;

/*
 * How a module keeps the weights of its linear layers in memory (the 2-D weights of nn.Linear
 * and 1x1 projections; norms, biases, embeddings and other parameters stay float32):
 *   XATTN_WEIGHTS_AUTO  as stored in the file: BF16 and F16 tensors stay 16-bit, F32 and F64
 *                       ones are float32 (the default);
 *   XATTN_WEIGHTS_F32   float32;
 *   XATTN_WEIGHTS_BF16, XATTN_WEIGHTS_F16   16 bits (half the memory), rounded to nearest even
 *                       from wider sources (F16 refuses a value beyond its range, 65504);
 *   XATTN_WEIGHTS_INT8  weight-only quantisation at load: per output channel symmetric,
 *                       scale = max |w| / 127, q = round(w / scale) (a quarter of the memory).
 * 16-bit weights are converted exactly to float32 as the products read them (vcvtph2ps or a
 * shift), so the results equal those of float32 weights holding the same values; all
 * activations, accumulations, norms and softmax stay float32. A module with weights kept in
 * 16 bits or int8 is for inference: gradients and training need float32 weights, and int8
 * weights cannot be saved (quantisation is not invertible).
 */
typedef enum xattn_weights {
    XATTN_WEIGHTS_AUTO = 0,
    XATTN_WEIGHTS_F32 = 1,
    XATTN_WEIGHTS_BF16 = 2,
    XATTN_WEIGHTS_F16 = 3,
    XATTN_WEIGHTS_INT8 = 4
} xattn_weights;
/* "auto", "f32", "bf16", "f16", "int8" (NULL for another value). */
XATTN_API const char *xattn_weights_name(int weights);
/* The value named (the names above; "fp32", "float32", "bfloat16", "fp16", "float16" too), or
 * -1 (an error naming the choices is set). */
XATTN_API int xattn_weights_parse(const char *name);

typedef struct xattn_open_opts {
    const char *kind;   /* NULL: detected from the tensor names                          */
    const char *prefix; /* NULL: the file must hold exactly one module (of `kind`)        */
    const xattn_option *options;
    size_t n_options;
    int64_t weights; /* xattn_weights (0: as stored)                                      */
    uint64_t reserved_[3];
} xattn_open_opts;

/* A module found in a file: its kind and the prefix of its tensor names. */
typedef struct xattn_found {
    const char *kind;
    char prefix[256];
} xattn_found;

/* Lists the modules of a file (up to cap of them; returns how many there are). */
XATTN_API size_t xattn_module_scan(const xattn_safetensors *st, xattn_found *found, size_t cap);
/* Opens a module; o may be NULL (detect the kind; the file must hold one module). A kind the
 * scan does not find (at o->prefix, else anywhere) is opened at o->prefix (NULL: ""), so that
 * its loader names what is missing; a block the scan leaves out as part of another module
 * opens this way too. */
XATTN_API xattn_status xattn_module_open(const xattn_safetensors *st, const xattn_open_opts *o,
                                         xattn_module **out);
/* A new module of `kind` with the reference's default initialisation: options are the
 * reference constructor's keyword arguments; parameters are drawn from a generator seeded by
 * `seed` (SplitMix64 streams keyed by the seed and each parameter's name). */
XATTN_API xattn_status xattn_module_create(const char *kind, const xattn_option *options,
                                           size_t n_options, uint64_t seed, xattn_module **out);
/* Saves the parameters under the reference's state_dict names (with the module's prefix), each
 * in the dtype it was loaded from (F64 sources are written as F32), and a __metadata__ holding
 * every option the names cannot tell plus "xattn_kind". */
XATTN_API xattn_status xattn_module_save(const xattn_module *m, const char *path);
/* xattn_module_save with more: every parameter as float32 (float32 != 0; else as stored, F16 /
 * BF16 round-tripping exactly), extra tensors beside the parameters (names must differ from
 * theirs) and extra __metadata__ pairs (k0, v0, k1, v1, ...; at most 64). The file is written
 * beside PATH and renamed into place: a failure leaves an earlier PATH as it was. (Training
 * checkpoints: weights, optimizer state and step in one file.) */
typedef struct xattn_save_opts {
    int float32;
    const xattn_st_entry *extra;
    size_t n_extra;
    const char *const *meta_kv;
    size_t n_meta;
    uint64_t reserved_[4];
} xattn_save_opts;
XATTN_API xattn_status xattn_module_save_ex(const xattn_module *m, const char *path,
                                            const xattn_save_opts *o);
XATTN_API void xattn_module_free(xattn_module *m);
XATTN_API const char *xattn_module_kind(const xattn_module *m);
XATTN_API const char *xattn_module_prefix(const xattn_module *m);
/* Assumed defaults, one line each ("" if none). */
XATTN_API const char *xattn_module_warnings(const xattn_module *m);

/* The resolved configuration. */
typedef struct xattn_config_entry {
    const char *name;   /* the reference constructor's argument                      */
    const char *value;  /* "8", "True", "gelu", "1e-05", "None"                       */
    const char *source; /* "shape", "option", "metadata", "default", "derived"         */
    const char *detail; /* e.g. "shape of 'to_qk.weight'", "__metadata__ 'heads'"        */
    const char *doc;
} xattn_config_entry;
XATTN_API size_t xattn_module_config_count(const xattn_module *m);
XATTN_API xattn_status xattn_module_config(const xattn_module *m, size_t i, xattn_config_entry *e);

/* The parameters, in state_dict order, under their names relative to the prefix; data is the
 * module's own fp32 copy (NULL for an optional parameter the module does not have). */
typedef struct xattn_param_desc {
    const char *name;
    int ndim;
    int64_t shape[XATTN_MAX_DIMS];
    float *data; /* NULL too when the module keeps it in another type (xattn_weights): see
                    xattn_module_param_read */
    xattn_dtype stored_dtype; /* as it was in the file */
} xattn_param_desc;
XATTN_API size_t xattn_module_param_count(const xattn_module *m);
XATTN_API xattn_status xattn_module_param(const xattn_module *m, size_t i, xattn_param_desc *p);
/* Parameter i's values as float32 into dst (its number of floats), whatever type the module
 * keeps it in (16-bit values exactly; int8 as q * scale). */
XATTN_API xattn_status xattn_module_param_read(const xattn_module *m, size_t i, float *dst);
/* How the module keeps parameter i: XATTN_F32, XATTN_BF16, XATTN_F16 or XATTN_I8 (int8 rows
 * with a float32 scale per row). */
XATTN_API xattn_dtype xattn_module_param_kept(const xattn_module *m, size_t i);
/* The xattn_weights the module was opened with (XATTN_WEIGHTS_AUTO resolved: F32 when every
 * linear weight is float32, BF16 / F16 when they all are, AUTO when they differ). */
XATTN_API int xattn_module_weights(const xattn_module *m);

/* Named inputs and outputs. shape is symbolic: comma-separated dims, each a size symbol
 * (capitalised: B, I, J ... bound by the inputs), a config name (dim, heads ...), a number, or a
 * sum of products of these ("2*dim", "B*num_heads", "J+add_bias_kv+add_zero_attn", a bool
 * counting 0 or 1); "B/1" means B or 1 (broadcast); '|' separates alternatives by rank; "" is a
 * 0-dim switch. Masks are BOOL or U8 (nonzero = true; doc gives the polarity); additive masks
 * may also be F32; every other input is F32. Some optional inputs have a stand-in (torch's key:
 * the query) used in their place when not given, as their doc says. A size symbol that only
 * outputs name is computed by the kind from the inputs (multiview's pooled token counts M0, M1,
 * ...; the output's doc says how). */
typedef struct xattn_io_desc {
    const char *name;
    const char *shape;
    int optional;
    int mask;
    int additive;
    const char *doc;
    /* an output whose first axis lists parts saved one file each: the name of part k,
     * "BASE{A+B*k}" (A, B integers or config fields); "" for one array */
    const char *parts;
    /* an optional output that exists whenever the sizes of its shape are bound (multiview's
     * out.K when xs.K is given): asked like a required one then; xattn_module_plan of it alone
     * tells whether it exists */
    int when_bound;
} xattn_io_desc;
XATTN_API size_t xattn_module_input_count(const xattn_module *m);
XATTN_API xattn_status xattn_module_input(const xattn_module *m, size_t i, xattn_io_desc *d);
XATTN_API size_t xattn_module_output_count(const xattn_module *m);
XATTN_API xattn_status xattn_module_output(const xattn_module *m, size_t i, xattn_io_desc *d);
/* Inputs a kind takes in exactly one of several ways: alternatives separated by '|', each a
 * comma-separated list of optional inputs, one or more of which make that alternative
 * ("encoder_hidden_states|video,audio": the memory, or the features that build it); "" when the
 * kind has none. xattn_module_plan refuses inputs of two alternatives, or of none. */
XATTN_API const char *xattn_kind_one_of(const char *kind);

/* A named array (borrowed data, row-major, contiguous). */
typedef struct xattn_tensor {
    const char *name;
    xattn_dtype dtype;
    int ndim;
    int64_t shape[XATTN_MAX_DIMS];
    void *data;
} xattn_tensor;

/* Fills dtype, ndim and shape of the outputs named in out[].name for the given inputs. */
XATTN_API xattn_status xattn_module_plan(const xattn_module *m, const xattn_tensor *in, size_t n_in,
                                         xattn_tensor *out, size_t n_out);
/* Runs the module: in[] by name, out[] by name with data and the shapes xattn_module_plan
 * gives. Optional outputs are produced only when asked. ctx may be NULL (default context).
 * A loaded module is read-only during forward: several threads may run one module at once. */
XATTN_API xattn_status xattn_module_forward(xattn_ctx *ctx, const xattn_module *m,
                                            const xattn_tensor *in, size_t n_in, xattn_tensor *out,
                                            size_t n_out);

/*
 * Gradients (a vector-Jacobian product): runs the forward on in[] like xattn_module_forward
 * (out[] optional: the forward's outputs, when asked) and back-propagates the gradients of the
 * outputs dout[] (named like the outputs, same shapes; an output not given has zero gradient;
 * an optional output whose gradient is given is computed, asked in out[] or not).
 * Writes the gradient of each float input named in din[] (same names and shapes as in[]:
 * "x", "context", "rel_pos_bias", ...) and, when dparams is not NULL, of every parameter i
 * into dparams[i] (xattn_module_param_count entries, each NULL or the parameter's number of
 * floats; the order of xattn_module_param). Gradients are overwritten, never accumulated.
 * XATTN_ERR_UNSUPPORTED for a kind without a backward (xattn_kind_has_backward).
 */
XATTN_API xattn_status xattn_module_grad(xattn_ctx *ctx, const xattn_module *m,
                                         const xattn_tensor *in, size_t n_in, xattn_tensor *out,
                                         size_t n_out, const xattn_tensor *dout, size_t n_dout,
                                         xattn_tensor *din, size_t n_din, float *const *dparams);
/* The gradients of the loss sum_t F.mse_loss(output_t, target_t) (reduction 'mean', each term
 * over its own elements): target[] named like outputs with their shapes; the forward runs once,
 * the loss (computed in double) goes to *loss (may be NULL); din and dparams as
 * xattn_module_grad. */
XATTN_API xattn_status xattn_module_mse_grad(xattn_ctx *ctx, const xattn_module *m,
                                             const xattn_tensor *in, size_t n_in,
                                             const xattn_tensor *target, size_t n_target,
                                             double *loss, xattn_tensor *din, size_t n_din,
                                             float *const *dparams);
/* 1 if the kind named has a backward (xattn_module_grad), else 0. */
XATTN_API int xattn_kind_has_backward(const char *kind);

/* ------------------------------------------------------------------------------------------ */
/* Training: optimizers, gradient clipping, learning-rate schedules                             */
/* ------------------------------------------------------------------------------------------ */

/*
 * An optimizer over n parameters of the given sizes (floats), as torch.optim computes it:
 * kind "adamw" (NULL: adamw; torch.optim.AdamW: lr 1e-3, betas "0.9,0.999", eps 1e-8,
 * weight_decay 1e-2, amsgrad False) or "sgd" (torch.optim.SGD: lr 1e-3, momentum 0,
 * dampening 0, weight_decay 0, nesterov False); options by those names, values as text
 * (strictly parsed; unknown or repeated options are errors). Its state (AdamW's exp_avg,
 * exp_avg_sq [, max_exp_avg_sq], SGD's momentum_buffer) is float32, zero at the start.
 */
typedef struct xattn_optim xattn_optim;
XATTN_API xattn_status xattn_optim_new(const char *kind, const xattn_option *opts, size_t n_opts,
                                       const int64_t *sizes, size_t n, xattn_optim **out);
XATTN_API void xattn_optim_free(xattn_optim *o);
/* One step: params[i] updated from grads[i] (an entry NULL in either: parameter i is left as
 * it is, as torch skips a parameter without a gradient). */
XATTN_API xattn_status xattn_optim_step(xattn_optim *o, float *const *params,
                                        const float *const *grads);
XATTN_API int64_t xattn_optim_step_count(const xattn_optim *o);
XATTN_API double xattn_optim_get_lr(const xattn_optim *o);
/* The learning rate of the next steps (a schedule sets it before each step). */
XATTN_API xattn_status xattn_optim_set_lr(xattn_optim *o, double lr);
/* "adamw lr=... betas=...,... eps=... weight_decay=... amsgrad=..." (or sgd's) into buf. */
XATTN_API const char *xattn_optim_describe(const xattn_optim *o, char *buf, size_t cap);
/* The state as arrays: xattn_optim_state_count of them; array k belongs to parameter *param,
 * named *label ("exp_avg", ...), *size floats at *data (writable: a checkpoint restores it). */
XATTN_API size_t xattn_optim_state_count(const xattn_optim *o);
XATTN_API xattn_status xattn_optim_state(const xattn_optim *o, size_t k, const char **label,
                                         size_t *param, float **data, int64_t *size);
/* After restoring the state arrays: the step count (and for SGD which momentum buffers exist;
 * NULL: all of them when step > 0). */
XATTN_API xattn_status xattn_optim_restore(xattn_optim *o, int64_t step, const int *started);
/* torch.nn.utils.clip_grad_norm_(max_norm, norm_type=2): the total 2-norm of the gradients
 * (NULL entries skipped), returned; when max_norm > 0 and it exceeds max_norm, every gradient is
 * scaled by max_norm / (norm + 1e-6). */
XATTN_API double xattn_clip_grad_norm(float *const *grads, const int64_t *sizes, size_t n,
                                      double max_norm);
/* The learning rate of step `step` (0-based) of total_steps: linear warmup lr * step / warmup
 * for step < warmup, then constant (cosine = 0) or lr * (1 + cos(pi * progress)) / 2 with
 * progress = (step - warmup) / (total_steps - warmup) (transformers'
 * get_cosine_schedule_with_warmup). */
XATTN_API double xattn_lr_at(int64_t step, int64_t total_steps, int64_t warmup, int cosine,
                             double lr);

/* The kinds and the arguments their constructors take (for `xattn init --help`). */
typedef struct xattn_kind_desc {
    const char *name, *reference, *summary;
    size_t n_args;
    const char *state_dict; /* its tensor names ("" for a kind without weights) */
} xattn_kind_desc;
typedef struct xattn_arg_desc {
    const char *name, *type, *doc, *default_value, *choices;
    int required, from_shapes, derived;
} xattn_arg_desc;
XATTN_API size_t xattn_kind_count(void);
XATTN_API xattn_status xattn_kind_info(size_t i, xattn_kind_desc *d);
XATTN_API xattn_status xattn_kind_arg(const char *kind, size_t j, xattn_arg_desc *a);
/* Input (output = 0) or output (output = 1) i of a kind, as xattn_module_input describes it;
 * XATTN_ERR_ARG past the last one. */
XATTN_API xattn_status xattn_kind_io(const char *kind, int output, size_t i, xattn_io_desc *d);
/* Other names a front end accepts (older flags, short names): alias i of a kind stands for its
 * input, option or output `name`; for an optional output, asking for it by the alias writes it
 * in place of the output `as` ("" when under its own name). A name "STEM.*" stands for the
 * numbered inputs STEM.0, STEM.1, ...: the alias may repeat, each time for the next of them
 * after those given by their own names (multiview's --view). XATTN_ERR_ARG past the last one. */
typedef struct xattn_alias_desc {
    const char *alias, *name, *as;
} xattn_alias_desc;
XATTN_API xattn_status xattn_kind_alias(const char *kind, size_t i, xattn_alias_desc *d);
/* A kind's one-line description, as `xattn inspect` shows it: comma-separated items (a ','
 * inside {} does not separate), each an option (name or alias: "heads" shows heads=VALUE) or
 * LABEL=TEMPLATE ("prenorm={prenorm?{layernorm?LayerNorm|RMSNorm}|none}"); "": every option.
 * A template's {f} is the value of option f ("8 (default)" for an assumed default), {f?A|B} A
 * when f is true or nonzero else B, {f@SRC?A|B} A when f came from SRC ("shape", "option",
 * "metadata", "default", "derived": xattn_config_entry.source) else B, {f@} the tensor whose
 * name f's source quotes. Docs of inputs and outputs may hold templates too (a front end
 * expands them with the module's config: xattn_module_config). */
XATTN_API const char *xattn_kind_brief(const char *kind);
/* The family of kinds that share command-line flags ("multi-head", "bidirectional"; "" for
 * none): messages name "the multi-head modules". */
XATTN_API const char *xattn_kind_family(const char *kind);

#ifdef __cplusplus
}
#endif
#endif /* XATTN_H */
