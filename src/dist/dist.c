/*
 * The communicator of a context, status agreement and ring transfers (see dist.h).
 */
#include "dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XD_MSG 512

static void comm_free(void *state)
{
    xd_comm *c = state;
    if (!c) return;
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin && c->comm != MPI_COMM_NULL) MPI_Comm_free(&c->comm);
    free(c);
}

xattn_status xattn_ctx_set_comm(xattn_ctx *ctx, MPI_Comm comm)
{
    static const char fn[] = "xattn_ctx_set_comm";
    if (comm == MPI_COMM_NULL) {
        xa_ctx_set_dist(ctx, NULL, NULL);
        xa_clear_error();
        return XATTN_OK;
    }
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin) return xa_error(XATTN_ERR_ARG, "%s: MPI is not initialised", fn);
    xd_comm *c = calloc(1, sizeof *c);
    if (!c) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    c->user = comm;
    int rc = MPI_Comm_dup(comm, &c->comm);
    if (rc != MPI_SUCCESS) {
        free(c);
        return xd_mpi_error(rc, fn, "MPI_Comm_dup");
    }
    MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(c->comm, &c->rank);
    MPI_Comm_size(c->comm, &c->size);
    xa_ctx_set_dist(ctx, c, comm_free);
    xa_clear_error();
    return XATTN_OK;
}

int64_t xattn_ctx_bytes_sent(const xattn_ctx *ctx)
{
    const xd_comm *c = xa_ctx_dist(ctx);
    return c ? c->sent : 0;
}

MPI_Comm xattn_ctx_get_comm(const xattn_ctx *ctx)
{
    const xd_comm *c = xa_ctx_dist(ctx);
    return c ? c->user : MPI_COMM_NULL;
}

const xd_comm *xd_comm_of(const xattn_ctx *ctx, const char *fn)
{
    const xd_comm *c = xa_ctx_dist(ctx);
    if (!c) xa_error(XATTN_ERR_ARG, "%s: the context has no communicator (xattn_ctx_set_comm)", fn);
    return c;
}

xattn_status xd_mpi_error(int rc, const char *fn, const char *what)
{
    char s[MPI_MAX_ERROR_STRING];
    int n = 0;
    if (MPI_Error_string(rc, s, &n) != MPI_SUCCESS) snprintf(s, sizeof s, "error %d", rc);
    return xa_error(XATTN_ERR_IO, "%s: %s failed: %s", fn, what, s);
}

xattn_status xd_agree(const xd_comm *c, xattn_status st)
{
    struct {
        int failed, rank;
    } in = {st != XATTN_OK, c->rank}, out = {0, 0};
    /* the lowest failing rank (MAXLOC takes the lowest rank among equal values) */
    int rc = MPI_Allreduce(&in, &out, 1, MPI_2INT, MPI_MAXLOC, c->comm);
    if (rc != MPI_SUCCESS) return xd_mpi_error(rc, "agreeing on the status", "MPI_Allreduce");
    if (!out.failed) return XATTN_OK;
    struct {
        int status;
        char msg[XD_MSG];
    } m;
    memset(&m, 0, sizeof m);
    if (c->rank == out.rank) {
        m.status = (int)st;
        snprintf(m.msg, sizeof m.msg, "%s", xattn_last_error());
    }
    rc = MPI_Bcast(&m, (int)sizeof m, MPI_BYTE, out.rank, c->comm);
    if (rc != MPI_SUCCESS) return xd_mpi_error(rc, "agreeing on the status", "MPI_Bcast");
    m.msg[XD_MSG - 1] = '\0';
    ((xd_comm *)c)->fails++; /* the state is the context's, which the caller may change */
    return xa_error((xattn_status)m.status, "rank %d: %s", out.rank,
                    m.msg[0] ? m.msg : xattn_status_string((xattn_status)m.status));
}

#define XD_PIECE ((int64_t)1 << 30)

void xd_post(const xd_comm *c, xd_xfer *x, const float *send, int64_t n_send, float *recv,
             int64_t n_recv, int tag)
{
    x->n = 0;
    x->rc = MPI_SUCCESS;
    x->req = NULL;
    if (c->size == 1) {
        if (n_send && send != recv) memmove(recv, send, sizeof(float) * (size_t)n_send);
        return;
    }
    const int next = (c->rank + 1) % c->size, prev = (c->rank + c->size - 1) % c->size;
    ((xd_comm *)c)->sent += (int64_t)sizeof(float) * n_send;
    const int64_t ps = (n_send + XD_PIECE - 1) / XD_PIECE, pr = (n_recv + XD_PIECE - 1) / XD_PIECE;
    x->req = malloc(sizeof(MPI_Request) * (size_t)(ps + pr + 1));
    if (!x->req) {
        x->rc = MPI_ERR_NO_MEM;
        return;
    }
    for (int64_t k = 0; k < pr; k++) {
        int rc = MPI_Irecv(recv + k * XD_PIECE, (int)XA_MIN(XD_PIECE, n_recv - k * XD_PIECE),
                           MPI_FLOAT, prev, tag + (int)k, c->comm, &x->req[x->n]);
        if (rc != MPI_SUCCESS) {
            x->rc = rc;
            return;
        }
        x->n++;
    }
    for (int64_t k = 0; k < ps; k++) {
        int rc = MPI_Isend(send + k * XD_PIECE, (int)XA_MIN(XD_PIECE, n_send - k * XD_PIECE),
                           MPI_FLOAT, next, tag + (int)k, c->comm, &x->req[x->n]);
        if (rc != MPI_SUCCESS) {
            x->rc = rc;
            return;
        }
        x->n++;
    }
}

int xd_wait(xd_xfer *x)
{
    int rc = x->rc;
    if (x->n) {
        int w = MPI_Waitall(x->n, x->req, MPI_STATUSES_IGNORE);
        if (rc == MPI_SUCCESS) rc = w;
    }
    free(x->req);
    x->req = NULL;
    x->n = 0;
    x->rc = MPI_SUCCESS;
    return rc;
}

xattn_status xattn_zigzag_shard(int64_t n, int nranks, int rank, xattn_shard *out)
{
    static const char fn[] = "xattn_zigzag_shard";
    if (!out) return xa_error(XATTN_ERR_ARG, "%s: out is NULL", fn);
    if (n < 0 || nranks < 1 || rank < 0 || rank >= nranks)
        return xa_error(XATTN_ERR_ARG, "%s: n=%lld nranks=%d rank=%d", fn, (long long)n, nranks,
                        rank);
    const int64_t nc = 2 * (int64_t)nranks, q = n / nc, rem = n % nc;
    const int64_t c[2] = {rank, nc - 1 - rank};
    out->n = 2;
    for (int k = 0; k < 2; k++) {
        out->start[k] = c[k] * q + XA_MIN(c[k], rem);
        out->len[k] = q + (c[k] < rem);
    }
    return XATTN_OK;
}

xattn_status xd_shards(xattn_layout layout, const int64_t *len, int size, xattn_shard *shards,
                       const char *what, int64_t *total)
{
    int64_t t = 0;
    for (int r = 0; r < size; r++) t += len[r];
    *total = t;
    int64_t pos = 0;
    for (int r = 0; r < size; r++) {
        if (layout == XATTN_LAYOUT_CONTIGUOUS) {
            shards[r].n = 1;
            shards[r].start[0] = pos;
            shards[r].len[0] = len[r];
            shards[r].start[1] = shards[r].len[1] = 0;
            pos += len[r];
        } else {
            xattn_zigzag_shard(t, size, r, &shards[r]);
            if (shards[r].len[0] + shards[r].len[1] != len[r])
                return xa_error(XATTN_ERR_SHAPE,
                                "rank %d holds %lld %s rows, the zigzag layout of %lld rows over "
                                "%d ranks gives it %lld",
                                r, (long long)len[r], what, (long long)t, size,
                                (long long)(shards[r].len[0] + shards[r].len[1]));
        }
    }
    return XATTN_OK;
}
