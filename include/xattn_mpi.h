/*
 * xattn over MPI: sequence-parallel fused attention and bidirectional attention.
 *
 * Available when the library is built with -DXATTN_MPI=ON (CMake's FindMPI); this header
 * includes <mpi.h>, xattn.h does not. docs/distributed.md describes the algorithms.
 *
 * The communicator lives in the context: xattn_ctx_set_comm(ctx, comm) on every rank, then the
 * *_dist entry points below run collectively over it (every rank of the communicator calls the
 * same entry point with its own shards). Each rank holds a shard of the query sequence and a
 * shard of the key/context sequence; the key shards travel around a ring of ranks (non-blocking
 * sends and receives overlapped with the computation on the shard in hand) and the partial
 * results are merged with their log-sum-exp statistics. The results equal the single-process
 * entry points' (xattn_sdpa, xattn_sdpa_backward, xattn_bidir_attention,
 * xattn_bidir_attention_backward) on the concatenated sequences within fp32 rounding.
 *
 * Errors: the arguments of every rank are checked, then the ranks agree on the outcome before
 * any data moves; if one rank's arguments (or memory) fail, every rank returns that status and
 * xattn_last_error() says "rank R: <the cause>" (the lowest failing rank). An error of a kernel
 * or of MPI during the ring lets every rank finish the ring's communication and is then agreed
 * on the same way, so no rank is left waiting. The library's messages go over its own duplicate
 * of the communicator (MPI_ERRORS_RETURN set on it), never over the caller's.
 */
#ifndef XATTN_MPI_H
#define XATTN_MPI_H

#include "xattn.h"
#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Collective over comm (MPI must be initialised): ctx (NULL = the default context) runs the
 * *_dist entry points over a duplicate of comm. MPI_COMM_NULL removes the communicator. The
 * duplicate is freed by the next call, by xattn_ctx_free, or left to MPI_Finalize (free it
 * with xattn_ctx_set_comm(ctx, MPI_COMM_NULL) before MPI_Finalize to be tidy). */
XATTN_API xattn_status xattn_ctx_set_comm(xattn_ctx *ctx, MPI_Comm comm);
/* Bytes this rank has sent to the next rank on the rings of the *_dist entry points since
 * xattn_ctx_set_comm (the keys, values, statistics and gradients that travel; the small
 * agreements and gathers of key masks are not counted). */
XATTN_API int64_t xattn_ctx_bytes_sent(const xattn_ctx *ctx);
/* The communicator given to xattn_ctx_set_comm (not the duplicate), or MPI_COMM_NULL. */
XATTN_API MPI_Comm xattn_ctx_get_comm(const xattn_ctx *ctx);

/*
 * How a sequence is spread over the R ranks of the communicator.
 *   XATTN_LAYOUT_CONTIGUOUS: rank r holds one contiguous run, the runs in rank order: rank r's
 *     rows start at the sum of the lengths of ranks 0 .. r-1. Lengths are free per rank (0 is
 *     allowed).
 *   XATTN_LAYOUT_ZIGZAG: the sequence of length n is cut into 2R chunks (chunk c has
 *     n / 2R + (c < n % 2R) rows, in order) and rank r holds chunks r and 2R-1-r, in that
 *     order. Under a causal mask every rank then has about the same number of unmasked
 *     (query, key) pairs. The local lengths must be those of xattn_zigzag_shard.
 */
typedef enum xattn_layout { XATTN_LAYOUT_CONTIGUOUS = 0, XATTN_LAYOUT_ZIGZAG = 1 } xattn_layout;

/* Where a rank's rows lie in the global sequence: n runs (1 or 2) of len[k] rows starting at
 * global position start[k], in local order. */
typedef struct xattn_shard {
    int n;
    int64_t start[2], len[2];
} xattn_shard;

/* The zigzag shard of `rank` among `nranks` for a sequence of n rows. */
XATTN_API xattn_status xattn_zigzag_shard(int64_t n, int nranks, int rank, xattn_shard *out);

/*
 * Sequence-parallel xattn_sdpa. p describes this rank's shards, as xattn_sdpa does a whole
 * problem:
 *   - B, H, dh, dv, scale, fill, causal and causal_offset are the same on every rank;
 *   - I and J are the local numbers of query rows and key/value rows (any, 0 included, under the
 *     contiguous layout; those of xattn_zigzag_shard under the zigzag layout, the query and key
 *     sequences each cut in their own 2R chunks);
 *   - q, out and lse hold the local query rows; k and v the local key rows;
 *   - mask and bias hold the local query rows and every key column of the whole sequence:
 *     (B|1, H|1, I_local|1, J_total), column j being global key position j (row stride
 *     mask_si / bias_si, 0 broadcasts over the rows);
 *   - causal keeps key position j for query position i (global positions) when
 *     j <= i + causal_offset;
 *   - probs must be NULL (no I x J output).
 */
XATTN_API xattn_status xattn_sdpa_dist(xattn_ctx *ctx, const xattn_sdpa_params *p,
                                       xattn_layout layout);

/*
 * Sequence-parallel xattn_sdpa_backward: p as for xattn_sdpa_dist with p->out the forward's
 * output rows and p->lse their log-sum-exp (or NULL: recomputed by a forward ring), g as for
 * xattn_sdpa_backward over the local shards: dout, dq the local query rows, dk, dv the local key
 * rows (their gradients travel the ring with the keys and come home at the end), dbias
 * (B|1, H|1, I_local|1, J_total) like the bias (with dbias_si = 0 the gradient is summed over
 * the rows of every rank).
 */
XATTN_API xattn_status xattn_sdpa_backward_dist(xattn_ctx *ctx, const xattn_sdpa_params *p,
                                                const xattn_sdpa_grads *g, xattn_layout layout);

/*
 * Sequence-parallel xattn_bidir_attention: the x sequence (qk, v, out, mask, lse) and the context
 * sequence (cqk, cv, cout, cmask, clse) are each spread contiguously over the ranks (p->I, p->J
 * the local lengths, any, 0 included); B, H, dh, the scale and the talking-heads weights are the
 * same on every rank. mask (B|1, I_local) and cmask (B|1, J_local) are the local rows' keep
 * vectors; bias (B|1, H|1, I_local, J_total) holds the local x rows and every context column, row
 * stride J_total. attn and cattn must be NULL. Two rings: the first gathers the row statistics
 * (local) and the column statistics (travelling with the context shards), the second the
 * outputs; with or without talking heads.
 */
XATTN_API xattn_status xattn_bidir_attention_dist(xattn_ctx *ctx, const xattn_bidir_params *p);

/*
 * Sequence-parallel xattn_bidir_attention_backward: p as for xattn_bidir_attention_dist (out,
 * cout the forward's local outputs; lse, clse its local log-sum-exps, or both NULL:
 * recomputed), g over the local rows: dout, dqk, dv of the x shard, dcout, dcqk, dcv of the
 * context shard, dbias (B|1, H|1, I_local, J_total) row stride J_total, dtalk and dctalk the
 * whole weights' gradients (summed over every rank, the same on every rank).
 */
XATTN_API xattn_status xattn_bidir_attention_backward_dist(xattn_ctx *ctx,
                                                           const xattn_bidir_params *p,
                                                           const xattn_bidir_grads *g);

/*
 * Sharded module runs. After xattn_ctx_set_sharded(ctx, 1) (the context must have a
 * communicator), xattn_module_forward, xattn_module_grad and xattn_module_mse_grad on ctx run
 * collectively over it: every rank passes its own rows of each sequence (contiguous layout:
 * rank r's rows follow rank r - 1's; any number of rows, 0 included) and the same whole arrays
 * for the rest, and gets its rows of the outputs and of the input gradients. Projections, norms
 * and feed-forwards run on each rank's rows; attention runs through the ring kernels above.
 * Parameter gradients are summed over the ranks (every rank gets the whole gradient);
 * xattn_module_mse_grad's loss is the global one (the mean over every rank's elements).
 *
 * Kinds that run sharded: bidir, bidir-transformer, mha, attention, mutual (without
 * band_axis), joint and bert-decoder (not incremental). mha refuses add_bias_kv and
 * add_zero_attn. Inputs and outputs that span both sequences (bidir's rel_pos_bias, mha's
 * attn_mask, the attention maps) hold the rank's query rows and every key column
 * (.., I_local, J_total); the maps' gradients are refused, naming them (XATTN_ERR_UNSUPPORTED).
 *
 * Errors: every rank returns the same status, with "rank R: <cause>" for a failure of rank R,
 * and no rank is left waiting: each collective phase starts with an agreement on the status.
 */
XATTN_API xattn_status xattn_ctx_set_sharded(xattn_ctx *ctx, int on);
XATTN_API int xattn_ctx_get_sharded(const xattn_ctx *ctx);

/* The axis of input (output = 0) or output (output = 1) `name`, of rank ndim, that a sharded run
 * cuts across the ranks (*axis), or -1 when every rank passes the whole array. An error naming
 * it when the kind or that input or output cannot run sharded. */
XATTN_API xattn_status xattn_module_shard_axis(const xattn_module *m, const char *name, int output,
                                               int ndim, int *axis);

/* The contiguous split of n rows that xattn's command line uses: rank `rank` of nranks holds rows
 * [floor(n rank / nranks), floor(n (rank + 1) / nranks)) (*start, *len; shards of 0 rows when
 * n < nranks). */
XATTN_API void xattn_shard_range(int64_t n, int nranks, int rank, int64_t *start, int64_t *len);

#ifdef __cplusplus
}
#endif

#endif
