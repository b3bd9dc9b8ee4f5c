/*
 * Sharded module runs (src/dist/modrun.c): what the op layer and the module runner (run.c) ask
 * of the MPI layer. In a build without MPI every function here is an inline stand-in that says
 * "not sharded", so the callers need no #ifdef of their own.
 *
 * The protocol that keeps ranks from waiting on each other: every collective phase of a sharded
 * run starts with an agreement on the status (xd_agree). A rank that fails locally returns from
 * the module at once and meets the others at the run's last agreement (xd_run_end); the others
 * meet it at the first agreement of their next phase (an attention op's, or the run's last),
 * learn of the failure there and return too, skipping the last agreement (their count of agreed
 * failures has grown).
 */
#ifndef XATTN_DIST_RUN_H
#define XATTN_DIST_RUN_H

#include "xattn.h"
#include "kernels/kernels.h"
#include "core/registry.h"

#ifdef XATTN_HAVE_MPI
#include "dist.h"

/* Local checks of a sharded run: the kind can run sharded, its options allow it, and every
 * input given and every output asked (out, dout) can be spread over the ranks. */
xattn_status xd_run_check(const xa_mod *m, const xattn_tensor *in, size_t n_in,
                          const xattn_tensor *out, size_t n_out, const xattn_tensor *dout,
                          size_t n_dout);
/* 1 when dim d of input (output = 0) or output (output = 1) io, of rank ndim, is the key-column
 * dim of an input or output spanning both sequences that a sharded run takes whole along its
 * keys (J_total, not this rank's J): the runner does not bind or check it; the attention op
 * checks it against every rank's keys. */
int xd_key_dim(const xa_mod *m, const xa_io *io, int output, int ndim, int d);
/* The count of agreed failures before a run (for xd_run_end). */
static inline int xd_run_begin(const xd_comm *c) { return c->fails; }
/* Agrees on st at the start of a run (collective). */
static inline xattn_status xd_run_agree(const xd_comm *c, xattn_status st)
{
    return xd_agree(c, st);
}
/* The run's last agreement, unless a failure was agreed during the run (collective). */
xattn_status xd_run_end(const xd_comm *c, xattn_status st, int fails0);
/* Sums n arrays (ptr[i] of len[i] floats, NULL skipped) over the ranks in place (collective;
 * every rank has the same len[] and NULL pattern). */
xattn_status xd_run_sum_floats(const xd_comm *c, float *const *ptr, const int64_t *len, size_t n);
/* Sums n doubles over the ranks in place (collective). */
xattn_status xd_run_sum_doubles(const xd_comm *c, double *v, int n);

/* The op layer's attention in a sharded run (the ring kernels of sdpa_dist.c / bidir_dist.c). */
xattn_status xd_op_attention(const xd_comm *c, const xa_attn *a);
xattn_status xd_op_attention_backward(const xd_comm *c, const xa_attn *a, const xa_attn_grad *g);
xattn_status xd_op_bidir(const xd_comm *c, const xa_bidir *p);
xattn_status xd_op_full_rows(const xd_comm *c, const xa_attn *a, const xa_attn_grad *g);
xattn_status xd_op_bidir_backward(const xd_comm *c, const xa_bidir *p, const xa_bidir_grad *g);
/* xa_op_shard_keys and xa_op_gather_keys in a sharded run (collective). */
xattn_status xd_shard_keys(const xd_comm *c, const char *what, int has, int64_t cols, int64_t I,
                           int64_t J, int64_t *Jtot, int *spans);
xattn_status xd_gather_keys(const xd_comm *c, const void *src, int64_t rows, int64_t J, size_t esz,
                            void *dst, int64_t Jtot);

#else

typedef struct xd_comm xd_comm;
static inline const xd_comm *xd_sharded(const xattn_ctx *ctx)
{
    (void)ctx;
    return NULL;
}
/* never called: xd_sharded is NULL */
static inline xattn_status xd_run_check(const xa_mod *m, const xattn_tensor *in, size_t n_in,
                                        const xattn_tensor *out, size_t n_out,
                                        const xattn_tensor *dout, size_t n_dout)
{
    (void)m, (void)in, (void)n_in, (void)out, (void)n_out, (void)dout, (void)n_dout;
    return XATTN_ERR_UNSUPPORTED;
}
static inline int xd_key_dim(const xa_mod *m, const xa_io *io, int output, int ndim, int d)
{
    return (void)m, (void)io, (void)output, (void)ndim, (void)d, 0;
}
static inline int xd_run_begin(const xd_comm *c) { return (void)c, 0; }
static inline xattn_status xd_run_agree(const xd_comm *c, xattn_status st) { return (void)c, st; }
static inline xattn_status xd_run_end(const xd_comm *c, xattn_status st, int fails0)
{
    return (void)c, (void)fails0, st;
}
static inline xattn_status xd_run_sum_floats(const xd_comm *c, float *const *ptr,
                                             const int64_t *len, size_t n)
{
    (void)c, (void)ptr, (void)len, (void)n;
    return XATTN_ERR_UNSUPPORTED;
}
static inline xattn_status xd_run_sum_doubles(const xd_comm *c, double *v, int n)
{
    (void)c, (void)v, (void)n;
    return XATTN_ERR_UNSUPPORTED;
}
static inline xattn_status xd_op_attention(const xd_comm *c, const xa_attn *a)
{
    (void)c, (void)a;
    return XATTN_ERR_UNSUPPORTED;
}
static inline xattn_status xd_op_attention_backward(const xd_comm *c, const xa_attn *a,
                                                    const xa_attn_grad *g)
{
    (void)c, (void)a, (void)g;
    return XATTN_ERR_UNSUPPORTED;
}
static inline xattn_status xd_op_full_rows(const xd_comm *c, const xa_attn *a,
                                           const xa_attn_grad *g)
{
    (void)c, (void)a, (void)g;
    return XATTN_ERR_UNSUPPORTED;
}
static inline xattn_status xd_op_bidir(const xd_comm *c, const xa_bidir *p)
{
    (void)c, (void)p;
    return XATTN_ERR_UNSUPPORTED;
}
static inline xattn_status xd_op_bidir_backward(const xd_comm *c, const xa_bidir *p,
                                                const xa_bidir_grad *g)
{
    (void)c, (void)p, (void)g;
    return XATTN_ERR_UNSUPPORTED;
}
static inline xattn_status xd_shard_keys(const xd_comm *c, const char *what, int has, int64_t cols,
                                         int64_t I, int64_t J, int64_t *Jtot, int *spans)
{
    (void)c, (void)what, (void)has, (void)cols, (void)I, (void)J, (void)Jtot, (void)spans;
    return XATTN_ERR_UNSUPPORTED;
}
static inline xattn_status xd_gather_keys(const xd_comm *c, const void *src, int64_t rows,
                                          int64_t J, size_t esz, void *dst, int64_t Jtot)
{
    (void)c, (void)src, (void)rows, (void)J, (void)esz, (void)dst, (void)Jtot;
    return XATTN_ERR_UNSUPPORTED;
}

#endif

#endif
