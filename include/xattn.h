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
 * Threads: xattn_set_threads(n) sets the OpenMP thread count used by every kernel (default:
 * OMP_NUM_THREADS, else the number of cores). Results do not depend on the thread count beyond float rounding.
 */
#ifndef XATTN_H
#define XATTN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(XATTN_SHARED_BUILD)
#define XATTN_API __declspec(dllexport)
#elif defined(__GNUC__)
#define XATTN_API __attribute__((visibility("default")))
#else
#define XATTN_API
#endif

#define XATTN_VERSION_MAJOR 0
#define XATTN_VERSION_MINOR 1
#define XATTN_VERSION_PATCH 0

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

/* n <= 0 restores the default (OMP_NUM_THREADS if set, else all cores). Without OpenMP at
 * build time this is a no-op and everything runs on the calling thread. */
XATTN_API void xattn_set_threads(int n);
XATTN_API int xattn_get_threads(void);
/* Name of the kernel set in use: "avx512", "avx2" or "scalar". */
XATTN_API const char *xattn_isa(void);
/* Forces a kernel set ("auto", "avx512", "avx2", "scalar"); fails if the CPU lacks it. */
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
    int ndim;                       /* 0 .. XATTN_MAX_DIMS                               */
    int64_t shape[XATTN_MAX_DIMS];
    void *data;                     /* owned; free with xattn_array_free                 */
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
XATTN_API xattn_status xattn_st_get(const xattn_safetensors *st, const char *name,
                                    xattn_dtype want, xattn_array *out);
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
    const char *title;           /* drawn above the map, or NULL                         */
    const char *x_label;         /* under the x axis (columns), or NULL                  */
    const char *y_label;         /* beside the y axis (rows), or NULL                    */
    int max_side;                /* longest side of the map area in pixels (0 = 768)     */
    int fixed_range;             /* 1: colours span [vmin, vmax]; 0: the data's range    */
    float vmin, vmax;
} xattn_heatmap_opts;

/* Writes map (rows, cols), row 0 at the top, as a heat-map with axes, tick labels and a
 * colour bar. Rows and columns are averaged down (box filter) when larger than the picture. */
XATTN_API xattn_status xattn_png_heatmap(const char *path, const float *map, int64_t rows,
                                         int64_t cols, const xattn_heatmap_opts *opts);

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
    const float *q; int64_t q_sb, q_sh, q_si;         /* (B, H, I, dh)  */
    const float *k; int64_t k_sb, k_sh, k_sj;         /* (B, H, J, dh)  */
    const float *v; int64_t v_sb, v_sh, v_sj;         /* (B, H, J, dv)  */
    float *out; int64_t o_sb, o_sh, o_si;             /* (B, H, I, dv)  */
    int has_scale;   /* 0: scale = dh^-0.5 */
    float scale;
    const uint8_t *mask; int64_t mask_sb, mask_sh, mask_si; /* (B|1, H|1, I|1, J), nonzero = keep */
    const float *bias; int64_t bias_sb, bias_sh, bias_si;   /* (B|1, H|1, I|1, J), added        */
    int causal;      /* keep j <= i (upper-left aligned) */
    xattn_fill fill;
    float *lse;      /* optional (B, H, I) contiguous: log-sum-exp of the (masked) logits    */
    float *probs;    /* optional (B, H, I, J) contiguous: the softmax probabilities          */
} xattn_sdpa_params;

/* Zeroes p (no mask, no bias, default scale, -inf fill). */
XATTN_API void xattn_sdpa_init(xattn_sdpa_params *p);
XATTN_API xattn_status xattn_sdpa(const xattn_sdpa_params *p);

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
/* M1: multi-head cross-attention modules                                                       */
/* ------------------------------------------------------------------------------------------ */

typedef enum xattn_mha_layout {
    XATTN_LAYOUT_TORCH_MHA = 0, /* torch.nn.MultiheadAttention (batch_first=True)            */
    XATTN_LAYOUT_DIFFUSERS = 1  /* diffusers Attention: to_q, to_k, to_v, to_out.0           */
} xattn_mha_layout;

typedef struct xattn_mha_config {
    xattn_mha_layout layout;
    int64_t embed_dim;   /* query input width (query_dim for diffusers)                  */
    int64_t kdim, vdim;  /* key / value input widths (cross_attention_dim for diffusers)   */
    int64_t heads;
    int64_t head_dim;    /* q/k per-head width (embed_dim / heads, or dim_head)          */
    int64_t inner_dim;   /* heads * head_dim                                             */
    int64_t out_dim;     /* output width                                                 */
    int has_in_bias;     /* in_proj_bias / to_q.bias present                             */
    int has_out_bias;
} xattn_mha_config;

typedef struct xattn_mha xattn_mha;

/* Loads a module from state_dict tensors named with an optional `prefix` ("" or e.g.
 * "attn."). The layout is detected from the names; heads <= 0 takes the `heads` entry of
 * the file's __metadata__, else the reference default (diffusers: 8; torch MHA: required). */
XATTN_API xattn_status xattn_mha_load(const xattn_safetensors *st, const char *prefix,
                                      int64_t heads, xattn_mha **out);
XATTN_API void xattn_mha_free(xattn_mha *m);
XATTN_API void xattn_mha_get_config(const xattn_mha *m, xattn_mha_config *cfg);

/*
 * Masks follow the reference module of the layout:
 *   torch MHA:  key_padding_mask (B, J): bool True = ignore, or float added;
 *               attn_mask (I, J) or (B*heads, I, J): bool True = not allowed, or float added.
 *   diffusers:  the same arrays with SDPA polarity: bool True = keep, float added.
 * A query row with every key masked gives a zero output row and zero weights.
 */
typedef struct xattn_mha_inputs {
    int64_t B, I, J;
    const float *query;       /* (B, I, embed_dim)                                 */
    const float *key;         /* (B, J, kdim)                                      */
    const float *value;       /* (B, J, vdim); NULL = key (requires kdim == vdim)  */
    const uint8_t *key_padding_mask;      /* (B, J) bool, or NULL                  */
    const float *key_padding_mask_float;  /* (B, J) additive, or NULL              */
    const uint8_t *attn_mask;             /* bool, or NULL                         */
    const float *attn_mask_float;         /* additive, or NULL                     */
    int attn_mask_per_head;   /* 0: attn_mask is (I, J); 1: (B*heads, I, J)        */
    int is_causal;            /* adds a causal mask (upper-left aligned)           */
} xattn_mha_inputs;

/* out (B, I, out_dim). attn_weights optional: (B, I, J) if average_weights, else
 * (B, heads, I, J) (as need_weights=True, average_attn_weights=... in torch). */
XATTN_API xattn_status xattn_mha_forward(const xattn_mha *m, const xattn_mha_inputs *in,
                                         float *out, float *attn_weights, int average_weights);

/* ------------------------------------------------------------------------------------------ */
/* M2: bidirectional cross-attention (PyPI bidirectional-cross-attention 0.1.0 and 0.0.x)       */
/* ------------------------------------------------------------------------------------------ */

/*
 * BidirectionalCrossAttention(dim, heads, dim_head, context_dim, talking_heads, prenorm) and
 * BidirectionalCrossAttentionTransformer(dim, depth, context_dim, ff_expansion_factor,
 * final_norms, heads, dim_head, talking_heads), loaded from their state_dict names:
 *   attention:   [norm.weight [norm.bias], context_norm.weight [...]] to_qk.weight,
 *                context_to_qk.weight, to_v.weight, context_to_v.weight, to_out.{weight,bias},
 *                context_to_out.{weight,bias} [talking_heads.weight, context_talking_heads.weight]
 *   transformer: layers.L.0.<attention names>, layers.L.1.{0.weight,1.weight,1.bias,3.weight,
 *                3.bias} (feed-forward of x), layers.L.2.* (of the context)
 *                [norm.weight, context_norm.weight]
 * Masks are True = keep; masked similarities are -FLT_MAX, so a fully masked row or column
 * gives a uniform average, exactly as the package. Neither B*H*I*J map is materialised unless
 * attn / context_attn are requested.
 */
typedef enum xattn_bidir_norm {
    XATTN_NORM_NONE = 0,
    XATTN_NORM_RMS = 1,      /* nn.RMSNorm(eps=None): weight only, eps = FLT_EPSILON      */
    XATTN_NORM_LAYER = 2     /* nn.LayerNorm (0.0.x prenorm): weight and bias, eps 1e-5   */
} xattn_bidir_norm;

typedef struct xattn_bidir_config {
    int is_transformer;      /* BidirectionalCrossAttentionTransformer                    */
    int64_t dim, context_dim, heads, dim_head, inner_dim;
    xattn_bidir_norm prenorm;
    int talking_heads;
    int64_t depth;           /* transformer: layers (1 for the attention module)          */
    int64_t ff_hidden, context_ff_hidden; /* transformer: int(dim * ff_expansion_factor)   */
    int final_norms;         /* transformer: norm / context_norm present                   */
    int64_t context_norm_dim; /* transformer: size of context_norm.weight (dim or context_dim) */
} xattn_bidir_config;

typedef struct xattn_bidir xattn_bidir;

/* Detects attention vs transformer from the names (after `prefix`); heads <= 0 takes the
 * talking-heads weight's size, else __metadata__ "heads", else 8 (the package default). */
XATTN_API xattn_status xattn_bidir_load(const xattn_safetensors *st, const char *prefix,
                                        int64_t heads, xattn_bidir **out);
XATTN_API void xattn_bidir_free(xattn_bidir *m);
XATTN_API void xattn_bidir_get_config(const xattn_bidir *m, xattn_bidir_config *cfg);

typedef struct xattn_bidir_inputs {
    int64_t B, I, J;
    const float *x;             /* (B, I, dim)                                        */
    const float *context;       /* (B, J, context_dim)                                */
    const uint8_t *mask;        /* (B, I) nonzero = keep, or NULL                     */
    const uint8_t *context_mask; /* (B, J) nonzero = keep, or NULL                    */
    const float *rel_pos_bias;  /* (bias_b, bias_h, I, J) added to the similarities   */
    int64_t bias_b, bias_h;     /* 1 or B, 1 or heads                                 */
} xattn_bidir_inputs;

/* out (B, I, dim), context_out (B, J, context_dim); attn and context_attn (B, heads, I, J)
 * optional (attention module only, as the package's return_attn: after talking heads). */
XATTN_API xattn_status xattn_bidir_forward(const xattn_bidir *m, const xattn_bidir_inputs *in,
                                           float *out, float *context_out, float *attn,
                                           float *context_attn);

/* ------------------------------------------------------------------------------------------ */
/* M3: mutual cross-attention (parameter-free); M9: cross-attention over 2-D feature maps       */
/* ------------------------------------------------------------------------------------------ */
/* (M3/M9 declarations) */

/* ------------------------------------------------------------------------------------------ */
/* M4: joint (stacked) cross-attention: nn.TransformerEncoder layers over [x; context]          */
/* ------------------------------------------------------------------------------------------ */
/* (M4 declarations) */

/* ------------------------------------------------------------------------------------------ */
/* M5: interlaced two-stream cross-attention decoder (2D-3D MIT)                                */
/* ------------------------------------------------------------------------------------------ */
/* (M5 declarations) */

/* ------------------------------------------------------------------------------------------ */
/* M6: multiscale multiview cross-attention                                                     */
/* ------------------------------------------------------------------------------------------ */
/* (M6 declarations) */

#ifdef __cplusplus
}
#endif
#endif /* XATTN_H */
