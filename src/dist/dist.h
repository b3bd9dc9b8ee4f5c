/*
 * Internal layer of the MPI build (src/dist): the communicator kept in a context, agreement on
 * a status across ranks, ring transfers and shard layouts. Only compiled with XATTN_MPI.
 */
#ifndef XATTN_DIST_H
#define XATTN_DIST_H

#include "xattn_mpi.h"
#include "../base/base.h"

#include <stdint.h>

/* The communicator state of a context: the caller's communicator and the library's duplicate. */
typedef struct xd_comm {
    MPI_Comm user, comm;
    int rank, size;
    int sharded; /* module runs take each rank's shard of the sequences (xattn_ctx_set_sharded) */
    int fails; /* failures agreed so far (xd_agree): a run that saw one skips its last agreement */
    int64_t sent; /* bytes sent on the rings (xd_post), for xattn_ctx_bytes_sent */
} xd_comm;

/* The context's communicator, or NULL with the error set (fn names the caller). */
const xd_comm *xd_comm_of(const xattn_ctx *ctx, const char *fn);

/* Agrees on a status: every rank passes its own (its message in xattn_last_error() when
 * failing); every rank returns the lowest failing rank's status with the message
 * "rank R: <its message>", or XATTN_OK when no rank failed. Collective. */
xattn_status xd_agree(const xd_comm *c, xattn_status st);

/* The communicator of a context in a sharded module run (xattn_ctx_set_sharded), or NULL. */
const xd_comm *xd_sharded(const xattn_ctx *ctx);

/* The error of a failed MPI call (XATTN_ERR_IO, the MPI error string). */
xattn_status xd_mpi_error(int rc, const char *fn, const char *what);

/* One ring step's transfers: send n_send floats to rank + 1, receive n_recv from rank - 1
 * (pieces of at most 2^30 floats; with one rank a copy). Non-blocking until xd_wait. */
typedef struct xd_xfer {
    MPI_Request *req;
    int n;
    int rc; /* the first failing MPI call's code, or MPI_SUCCESS */
} xd_xfer;
void xd_post(const xd_comm *c, xd_xfer *x, const float *send, int64_t n_send, float *recv,
             int64_t n_recv, int tag);
/* Waits for the transfers; returns MPI_SUCCESS or the first error code. */
int xd_wait(xd_xfer *x);

/* The shard of every rank (shards[r]) of a sequence given each rank's local length (len[r]):
 * contiguous runs in rank order, or the zigzag split (then every len[r] must match it). Returns
 * XATTN_OK or an argument error naming the first rank whose length does not fit. */
xattn_status xd_shards(xattn_layout layout, const int64_t *len, int size, xattn_shard *shards,
                       const char *what, int64_t *total);

/* The local offset of run k of a shard (rows before it in local order). */
static inline int64_t xd_run_off(const xattn_shard *s, int k) { return k ? s->len[0] : 0; }

#endif
