/*
 * Sharded module runs (see dist_run.h and xattn_mpi.h): which kinds, inputs and outputs can be
 * spread over the ranks, the op layer's attention routed to the ring kernels, and the run's
 * agreements and sums.
 *
 * A module runs on each rank's rows of its sequences: projections, norms and feed-forwards are
 * per row and run locally; only attention mixes rows, and it goes through xattn_sdpa_dist /
 * xattn_bidir_attention_dist (contiguous layout: rank r's rows follow rank r - 1's). Masks over
 * key positions that broadcast over the query rows (key padding, keep vectors) are gathered from
 * every rank into their global columns. rel_pos_bias of the bidirectional kinds and mha's
 * attn_mask are taken as each rank's query rows and every key column (the ring kernels' layout;
 * mha then gathers its key padding mask into those columns, xa_op_gather_keys); the attention
 * maps are refused, by name, before anything runs.
 */
#include "dist_run.h"
#include "../kernels/ops.h"

#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------- */
/* What can run sharded                                                                     */
/* ---------------------------------------------------------------------------------------- */

typedef struct shard_kind {
    const char *kind;
    const char *seqs;   /* the size symbols of the sharded sequences, comma-separated */
    const char *refuse; /* config fields that must be 0 ('!': not given at all) */
} shard_kind;

static const shard_kind kinds[] = {
    {"bidir", "I,J", ""},
    {"bidir-transformer", "I,J", ""},
    {"mha", "I,J", "add_bias_kv,add_zero_attn"},
    {"attention", "I,J", ""},
    {"mutual", "", "!band_axis"}, /* a, b, out: (B, N, D) or (N, D), cut along N */
    {"joint", "K,N", ""},
    {"bert-decoder", "T,M,Nv,Na", ""},
};

static const shard_kind *kind_of(const char *name)
{
    for (size_t i = 0; i < XA_N(kinds); i++)
        if (!strcmp(kinds[i].kind, name)) return &kinds[i];
    return NULL;
}

/* 1 if token (a dim expression "J+add_bias_kv") names one of the symbols in seqs. */
static int names_seq(const char *tok, size_t n, const char *seqs)
{
    for (size_t a = 0; a < n;) {
        size_t l = strcspn(tok + a, "*+");
        if (a + l > n) l = n - a;
        for (const char *s = seqs; *s;) {
            size_t k = strcspn(s, ",");
            if (k == l && !strncmp(s, tok + a, l)) return 1;
            s += k + (s[k] == ',');
        }
        a += l + 1;
    }
    return 0;
}

/* The axis of io (of rank ndim) cut across ranks: -1 (whole on every rank), or -2 when the io
 * spans two sequences (an I x J mask or map). */
static int io_axis(const shard_kind *sk, const xa_kind *k, const xa_io *io, int ndim)
{
    if (!strcmp(sk->kind, "mutual")) return ndim >= 2 ? ndim - 2 : -1;
    const char *shape = io->shape;
    if (shape[0] == '=') { /* the shape of another input */
        for (int i = 0; i < k->n_in; i++)
            if (!strcmp(k->inputs[i].name, shape + 1)) return io_axis(sk, k, &k->inputs[i], ndim);
        return -1;
    }
    for (const char *alt = shape;;) { /* the alternative with ndim dims */
        const size_t l = strcspn(alt, "|");
        int dims = l > 0, axis = -1, nseq = 0;
        for (size_t i = 0; i < l; i++) dims += alt[i] == ',';
        if (dims == ndim) {
            for (size_t a = 0, d = 0; a < l; d++) {
                size_t t = strcspn(alt + a, ",|");
                if (names_seq(alt + a, t, sk->seqs)) axis = (int)d, nseq++;
                a += t + 1;
            }
            return nseq > 1 ? -2 : axis;
        }
        if (!alt[l]) return -1;
        alt += l + 1;
    }
}

static const xa_io *find_io(const xa_kind *k, const char *name, int output)
{
    const xa_io *ios = output ? k->outputs : k->inputs;
    const int n = output ? k->n_out : k->n_in;
    for (int i = 0; name && i < n; i++)
        if (!strcmp(ios[i].name, name)) return &ios[i];
    return NULL;
}

static xattn_status kind_check(const xa_mod *m, const shard_kind **out)
{
    const shard_kind *sk = kind_of(m->kind->name);
    if (!sk) {
        char list[256];
        size_t o = 0;
        for (size_t i = 0; i < XA_N(kinds); i++)
            o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", i ? ", " : "", kinds[i].kind);
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "%s cannot run sharded across ranks (kinds that can: %s)", m->kind->name,
                        list);
    }
    for (const char *r = sk->refuse; *r;) {
        const size_t l = strcspn(r, ",");
        const int given_at_all = r[0] == '!';
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(l - given_at_all), r + given_at_all);
        const int f = xa_cfg_find(&m->cfg, name);
        if (f >= 0 && m->cfg.from[f] != XA_FROM_UNSET && (given_at_all || m->cfg.v[f] != 0))
            return xa_error(XATTN_ERR_UNSUPPORTED,
                            "%s with %s set cannot run sharded across ranks (each rank would "
                            "apply it to its own rows)",
                            m->kind->name, name);
        r += l + (r[l] == ',');
    }
    *out = sk;
    return XATTN_OK;
}

/* Inputs spanning both sequences that a sharded run takes as each rank's query rows and every
 * key column ((.., I_local, J_total)): the bidirectional kinds' rel_pos_bias and mha's
 * attn_mask. */
static int span_taken(const xa_kind *k, const xa_io *io, int output)
{
    if (!io) return 0;
    if (output) /* the attention maps: (.., I_local, J_total) */
        return (!strcmp(k->name, "bidir") &&
                (!strcmp(io->name, "attn") || !strcmp(io->name, "context_attn"))) ||
               (!strcmp(k->name, "mha") &&
                (!strcmp(io->name, "attn") || !strcmp(io->name, "attn_per_head"))) ||
               (!strcmp(k->name, "attention") && !strcmp(io->name, "attention_probs"));
    if (!strcmp(io->name, "rel_pos_bias"))
        return !strcmp(k->name, "bidir") || !strcmp(k->name, "bidir-transformer");
    return !strcmp(io->name, "attn_mask") && !strcmp(k->name, "mha");
}

/* The spanning input of the current run (recorded by xd_run_check, recognised by the ops by its
 * pointer): its data and shape. */
static _Thread_local struct {
    const void *data;
    int ndim;
    int64_t shape[XATTN_MAX_DIMS];
} span_in;

int xd_key_dim(const xa_mod *m, const xa_io *io, int output, int ndim, int d)
{
    return span_taken(m->kind, io, output) && ndim >= 2 && d == ndim - 1;
}

static xattn_status io_check(const shard_kind *sk, const xa_kind *k, const xattn_tensor *t,
                             int output, const char *what)
{
    const xa_io *io = find_io(k, t->name, output);
    if (!io) return XATTN_OK; /* the runner names unknown ones */
    if (io_axis(sk, k, io, t->ndim) == -2 && span_taken(k, io, output) &&
        (!output || !strcmp(what, "output"))) {
        if (t->ndim < 2)
            return xa_error(XATTN_ERR_SHAPE, "%s '%s' must have at least 2 dims", what, t->name);
        if (t->data && !output) {
            span_in.data = t->data;
            span_in.ndim = t->ndim;
            memcpy(span_in.shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
        }
        return XATTN_OK;
    }
    if (io_axis(sk, k, io, t->ndim) == -2)
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "%s '%s' spans both sequences (%s): not available when %s runs sharded "
                        "across ranks",
                        what, t->name, io->shape, k->name);
    if (!output && !strcmp(k->name, "bert-decoder") && !strcmp(t->name, "incremental"))
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "input 'incremental' (one token at a time with a K/V cache) is not "
                        "available when bert-decoder runs sharded across ranks");
    return XATTN_OK;
}

xattn_status xd_run_check(const xa_mod *m, const xattn_tensor *in, size_t n_in,
                          const xattn_tensor *out, size_t n_out, const xattn_tensor *dout,
                          size_t n_dout)
{
    const shard_kind *sk;
    memset(&span_in, 0, sizeof span_in);
    xattn_status s = kind_check(m, &sk);
    for (size_t i = 0; !s && i < n_in; i++) s = io_check(sk, m->kind, &in[i], 0, "input");
    for (size_t i = 0; !s && i < n_out; i++) s = io_check(sk, m->kind, &out[i], 1, "output");
    for (size_t i = 0; !s && i < n_dout; i++)
        s = io_check(sk, m->kind, &dout[i], 1, "the gradient of output");
    return s;
}

xattn_status xattn_module_shard_axis(const xattn_module *mod, const char *name, int output,
                                     int ndim, int *axis)
{
    if (!mod || !name || !axis)
        return xa_error(XATTN_ERR_ARG, "xattn_module_shard_axis: NULL argument");
    const xa_mod *m = *(xa_mod *const *)mod;
    const shard_kind *sk;
    xattn_status s = kind_check(m, &sk);
    if (s) return s;
    const xa_io *io = find_io(m->kind, name, output);
    if (!io)
        return xa_error(XATTN_ERR_ARG, "%s has no %s '%s'", m->kind->name,
                        output ? "output" : "input", name);
    xattn_tensor t;
    memset(&t, 0, sizeof t);
    t.name = name;
    t.ndim = ndim;
    if ((s = io_check(sk, m->kind, &t, output, output ? "output" : "input"))) return s;
    *axis = io_axis(sk, m->kind, io, ndim);
    if (*axis == -2) *axis = ndim - 2; /* a spanning input taken: its query rows are cut */
    return XATTN_OK;
}

void xattn_shard_range(int64_t n, int nranks, int rank, int64_t *start, int64_t *len)
{
    if (n < 0 || nranks < 1 || rank < 0 || rank >= nranks) {
        *start = *len = 0;
        return;
    }
    /* floor(n r / R) without overflow for any n below 2^62 and R below 2^31 */
    const int64_t q = n / nranks, rem = n % nranks;
    const int64_t a = q * rank + rem * rank / nranks,
                  b = q * (rank + 1) + rem * (rank + 1) / nranks;
    *start = a;
    *len = b - a;
}

/* ---------------------------------------------------------------------------------------- */
/* The context's switch and the run's collectives                                           */
/* ---------------------------------------------------------------------------------------- */

xattn_status xattn_ctx_set_sharded(xattn_ctx *ctx, int on)
{
    xd_comm *c = xa_ctx_dist(ctx);
    if (!c)
        return xa_error(XATTN_ERR_ARG, "xattn_ctx_set_sharded: the context has no communicator "
                                       "(xattn_ctx_set_comm)");
    c->sharded = on != 0;
    xa_clear_error();
    return XATTN_OK;
}

int xattn_ctx_get_sharded(const xattn_ctx *ctx)
{
    const xd_comm *c = xa_ctx_dist(ctx);
    return c && c->sharded;
}

const xd_comm *xd_sharded(const xattn_ctx *ctx)
{
    const xd_comm *c = xa_ctx_dist(ctx);
    return c && c->sharded ? c : NULL;
}

xattn_status xd_run_end(const xd_comm *c, xattn_status st, int fails0)
{
    if (c->fails != fails0) return st ? st : XATTN_ERR_ARG; /* agreed during the run */
    return xd_agree(c, st);
}

xattn_status xd_run_sum_floats(const xd_comm *c, float *const *ptr, const int64_t *len, size_t n)
{
    xattn_status st = xd_agree(c, XATTN_OK);
    for (size_t i = 0; !st && i < n; i++) {
        if (!ptr[i]) continue;
        for (int64_t o = 0; o < len[i];) {
            const int cnt = (int)XA_MIN(len[i] - o, (int64_t)1 << 30);
            int rc = MPI_Allreduce(MPI_IN_PLACE, ptr[i] + o, cnt, MPI_FLOAT, MPI_SUM, c->comm);
            if (rc != MPI_SUCCESS)
                return xd_mpi_error(rc, "summing the gradients", "MPI_Allreduce");
            o += cnt;
        }
    }
    return st;
}

xattn_status xd_run_sum_doubles(const xd_comm *c, double *v, int n)
{
    xattn_status st = xd_agree(c, XATTN_OK);
    if (st) return st;
    int rc = MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, c->comm);
    return rc == MPI_SUCCESS ? XATTN_OK
                             : xd_mpi_error(rc, "summing over the ranks", "MPI_Allreduce");
}

/* ---------------------------------------------------------------------------------------- */
/* The op layer's attention                                                                 */
/* ---------------------------------------------------------------------------------------- */

static const char *fn_of(const xa_attn *a) { return a->fn ? a->fn : "attention"; }

static xattn_status attn_local_check(const xa_attn *a)
{
    const char *what = a->qkeep                                   ? "a query keep vector"
                       : a->mix                                   ? "talking heads"
                       : a->stats_only || a->stat_m               ? "softmax statistics"
                       : a->row_m                                 ? "given row statistics"
                       : a->mask && a->mask_si && !a->keys_global ? "a mask with a row per query"
                       : a->bias && a->bias_si && !a->keys_global ? "a bias with a row per query"
                       : a->bias && a->bias_sj != 1               ? "a transposed bias"
                       : a->kkeep && a->keys_global ? "a key keep vector beside global key columns"
                                                    : NULL;
    if (what)
        return xa_error(XATTN_ERR_UNSUPPORTED, "%s: %s is not available in a sharded run", fn_of(a),
                        what);
    return XATTN_OK;
}

/* The key columns of every rank (mask and kkeep combined into keep; bias), gathered into
 * global (B, Hk, Jtot) keep and (B, Hb, Jtot) bias arrays in rank order (the contiguous
 * layout's global key positions). NULL when no rank has them. Collective. */
typedef struct keycols {
    uint8_t *keep;
    float *bias;
    int64_t Hk, Hb, Jtot;
} keycols;

enum { KC_J, KC_KEEP, KC_HK, KC_BIAS, KC_HB, KC_N };

/* Gathers each rank's (per_row, J_r) block of esz-byte values into global (per_row, Jtot) in
 * rank order. st_in: this rank's status so far (agreed on with the buffers' allocation).
 * Collective. */
static xattn_status gather_cols(const xd_comm *c, xattn_status st_in, const void *mine,
                                int64_t per_row, int64_t esz, const int64_t *info, int64_t tot,
                                void *global, const char *fn)
{
    const int R = c->size;
    int *cnt = malloc(sizeof(int) * 2 * (size_t)R);
    char *recv = malloc((size_t)(per_row * tot * esz) + 1);
    xattn_status st = st_in;
    if (!st && (!cnt || !recv)) st = xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    for (int r = 0; !st && r < R; r++)
        if (per_row * info[r * KC_N + KC_J] * esz > (int64_t)1 << 30)
            st = xa_error(XATTN_ERR_UNSUPPORTED, "%s: key masks too large to gather", fn);
    if (!(st = xd_agree(c, st))) {
        int *dis = cnt + R, d = 0;
        for (int r = 0; r < R; r++) {
            cnt[r] = (int)(per_row * info[r * KC_N + KC_J] * esz);
            dis[r] = d;
            d += cnt[r];
        }
        int rc = MPI_Allgatherv(mine, cnt[c->rank], MPI_BYTE, recv, cnt, dis, MPI_BYTE, c->comm);
        if (rc != MPI_SUCCESS) {
            st = xd_mpi_error(rc, fn, "MPI_Allgatherv");
        } else { /* rank-major (r, row, j) -> (row, global j) */
            int64_t off = 0;
            for (int r = 0; r < R; r++) {
                const int64_t J = info[r * KC_N + KC_J];
                for (int64_t row = 0; row < per_row; row++)
                    memcpy((char *)global + (row * tot + off) * esz, recv + dis[r] + row * J * esz,
                           (size_t)(J * esz));
                off += J;
            }
        }
    }
    free(cnt);
    free(recv);
    return st;
}

static xattn_status key_columns(const xd_comm *c, const xa_attn *a, keycols *kc)
{
    const char *fn = fn_of(a);
    memset(kc, 0, sizeof *kc);
    if (a->keys_global) return XATTN_OK; /* taken as they are (sdpa_of) */
    const int R = c->size;
    const int64_t B = a->B, J = a->J;
    int64_t mine[KC_N] = {J, a->mask || a->kkeep, a->mask && a->mask_sh ? a->H : 1, a->bias != NULL,
                          a->bias && a->bias_sh ? a->H : 1};
    int64_t *info = malloc(sizeof(int64_t) * KC_N * (size_t)R);
    xattn_status st = info ? XATTN_OK : xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    uint8_t *lk = NULL;
    float *lb = NULL;
    if ((st = xd_agree(c, st))) goto done;
    int rc = MPI_Allgather(mine, KC_N, MPI_INT64_T, info, KC_N, MPI_INT64_T, c->comm);
    if (rc != MPI_SUCCESS) {
        st = xd_mpi_error(rc, fn, "MPI_Allgather");
        goto done;
    }
    /* a rank whose shard is empty may see no mask: the columns any rank has, at the widest
     * (the same decision on every rank, from the same table) */
    int64_t any[KC_N] = {0, 0, 1, 0, 1};
    for (int r = 0; r < R; r++) {
        kc->Jtot += info[r * KC_N + KC_J];
        for (int f = KC_KEEP; f < KC_N; f++) any[f] = XA_MAX(any[f], info[r * KC_N + f]);
    }
    const int has_keep = any[KC_KEEP] != 0, has_bias = any[KC_BIAS] != 0;
    const int64_t Hk = any[KC_HK], Hb = any[KC_HB];
    kc->Hk = Hk, kc->Hb = Hb;
    if (!has_keep && !has_bias) goto done;
    lk = has_keep ? malloc((size_t)(B * Hk * J) + 1) : NULL;
    lb = has_bias ? malloc(sizeof(float) * (size_t)(B * Hb * J) + 1) : NULL;
    if (has_keep) kc->keep = malloc((size_t)(B * Hk * kc->Jtot) + 1);
    if (has_bias) kc->bias = malloc(sizeof(float) * (size_t)(B * Hb * kc->Jtot) + 1);
    st = (!has_keep || (lk && kc->keep)) && (!has_bias || (lb && kc->bias))
             ? XATTN_OK
             : xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    if (st) goto gather; /* agreed on by the first gather */
    const int64_t msh = a->mask && a->mask_sh ? a->mask_sh : 0;
    const int64_t bsh = a->bias && a->bias_sh ? a->bias_sh : 0;
    for (int64_t b = 0; b < B && lk; b++)
        for (int64_t h = 0; h < Hk; h++)
            for (int64_t j = 0; j < J; j++) {
                const int keep = (!a->mask || a->mask[b * a->mask_sb + h * msh + j]) &&
                                 (!a->kkeep || a->kkeep[b * a->kkeep_sb + j]);
                lk[(b * Hk + h) * J + j] = (uint8_t)keep;
            }
    for (int64_t b = 0; b < B && lb; b++)
        for (int64_t h = 0; h < Hb; h++)
            for (int64_t j = 0; j < J; j++)
                lb[(b * Hb + h) * J + j] = a->bias ? a->bias[b * a->bias_sb + h * bsh + j] : 0.0f;
gather:
    /* has_keep and has_bias are the same on every rank */
    if (has_keep) st = gather_cols(c, st, lk, B * Hk, 1, info, kc->Jtot, kc->keep, fn);
    if (has_bias && (!has_keep || !st))
        st = gather_cols(c, st, lb, B * Hb, sizeof(float), info, kc->Jtot, kc->bias, fn);
done:
    free(info);
    free(lk);
    free(lb);
    return st;
}
static void keycols_free(keycols *kc)
{
    free(kc->keep);
    free(kc->bias);
}

/* The public problem of a (local) op problem with the gathered key columns. */
static void sdpa_of(const xa_attn *a, const keycols *kc, xattn_sdpa_params *p)
{
    xattn_sdpa_init(p);
    p->B = a->B, p->H = a->H, p->I = a->I, p->J = a->J, p->dh = a->dh, p->dv = a->dv;
    p->q = a->q, p->q_sb = a->q_sb, p->q_sh = a->q_sh, p->q_si = a->q_si;
    p->k = a->k, p->k_sb = a->k_sb, p->k_sh = a->k_sh, p->k_sj = a->k_sj;
    p->v = a->v, p->v_sb = a->v_sb, p->v_sh = a->v_sh, p->v_sj = a->v_sj;
    p->out = a->out, p->o_sb = a->o_sb, p->o_sh = a->o_sh, p->o_si = a->o_si;
    p->has_scale = 1, p->scale = a->scale;
    p->causal = a->causal, p->causal_offset = a->causal ? a->causal_offset : 0;
    p->fill = a->fill;
    p->lse = a->lse;
    if (kc->keep) {
        p->mask = kc->keep;
        p->mask_sb = kc->Hk * kc->Jtot, p->mask_sh = kc->Hk > 1 ? kc->Jtot : 0, p->mask_si = 0;
    }
    if (kc->bias) {
        p->bias = kc->bias;
        p->bias_sb = kc->Hb * kc->Jtot, p->bias_sh = kc->Hb > 1 ? kc->Jtot : 0, p->bias_si = 0;
    }
    if (a->keys_global) { /* this rank's query rows, every key column */
        p->mask = a->mask, p->mask_sb = a->mask_sb, p->mask_sh = a->mask_sh;
        p->mask_si = a->mask_si;
        p->bias = a->bias, p->bias_sb = a->bias_sb, p->bias_sh = a->bias_sh;
        p->bias_si = a->bias_si;
    }
}

xattn_status xd_shard_keys(const xd_comm *c, const char *what, int has, int64_t cols, int64_t I,
                           int64_t J, int64_t *Jtot, int *spans)
{
    *Jtot = J, *spans = has;
    xattn_status st = xd_agree(c, XATTN_OK);
    if (st) return st;
    /* keys; ranks with the mask; ranks with it or without query rows */
    int64_t mine[3] = {J, has != 0, has || I == 0}, tot[3];
    int rc = MPI_Allreduce(mine, tot, 3, MPI_INT64_T, MPI_SUM, c->comm);
    if (rc != MPI_SUCCESS) return xd_mpi_error(rc, "attention", "MPI_Allreduce");
    *Jtot = tot[0], *spans = tot[1] > 0;
    if (tot[1] && tot[2] < c->size && !has && I > 0)
        st = xa_error(XATTN_ERR_ARG, "rank %d has no %s while other ranks do", c->rank, what);
    else if (has && cols && cols != tot[0])
        st = xa_error(XATTN_ERR_SHAPE,
                      "%s holds %lld key columns; a rank of a sharded run holds its query rows "
                      "and every key column (%lld)",
                      what, (long long)cols, (long long)tot[0]);
    return xd_agree(c, st);
}

xattn_status xd_gather_keys(const xd_comm *c, const void *src, int64_t rows, int64_t J, size_t esz,
                            void *dst, int64_t Jtot)
{
    const char *fn = "gathering key columns";
    int64_t *info = calloc((size_t)c->size * KC_N, sizeof(int64_t));
    xattn_status st = info && dst ? XATTN_OK : xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    if ((st = xd_agree(c, st))) {
        free(info);
        return st;
    }
    int rc = MPI_Allgather(&J, 1, MPI_INT64_T, info, 1, MPI_INT64_T, c->comm);
    if (rc != MPI_SUCCESS) st = xd_mpi_error(rc, fn, "MPI_Allgather");
    /* one value per rank, spread to the table's rows */
    for (int r = c->size - 1; !st && r >= 0; r--) info[r * KC_N + KC_J] = info[r];
    int64_t sum = 0;
    for (int r = 0; !st && r < c->size; r++) sum += info[r * KC_N + KC_J];
    if (!st && sum != Jtot)
        st = xa_error(XATTN_ERR_SHAPE, "%s: the ranks hold %lld keys, not %lld", fn, (long long)sum,
                      (long long)Jtot);
    st = gather_cols(c, st, src, rows, (int64_t)esz, info, Jtot, dst, fn);
    free(info);
    return st;
}

/* Each rank's block of n[r] floats (mine: this rank's) gathered into all, rank after rank; off
 * (R) gets each block's offset. Collective (after the caller's agreement on the buffers). */
static xattn_status gather_blocks(const xd_comm *c, const float *mine, const int64_t *n, float *all,
                                  int64_t *off, const char *fn)
{
    const int R = c->size;
    int *cnt = malloc(sizeof(int) * 2 * (size_t)R);
    int64_t tot = 0;
    for (int r = 0; r < R; r++) off[r] = tot, tot += n[r];
    xattn_status st = cnt ? XATTN_OK : xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    if (!st && tot > INT32_MAX)
        st = xa_error(XATTN_ERR_UNSUPPORTED, "%s: too many rows to gather", fn);
    if (!(st = xd_agree(c, st))) {
        int *dis = cnt + R;
        for (int r = 0; r < R; r++) cnt[r] = (int)n[r], dis[r] = (int)off[r];
        int rc = MPI_Allgatherv(mine, cnt[c->rank], MPI_FLOAT, all, cnt, dis, MPI_FLOAT, c->comm);
        if (rc != MPI_SUCCESS) st = xd_mpi_error(rc, fn, "MPI_Allgatherv");
    }
    free(cnt);
    return st;
}

/* The local keys and values of a packed (b, h, j, [k | v]) into loc (B, H, J, dh + dv). */
static void pack_kv(const xa_attn *a, float *loc)
{
    const int64_t dv = a->v ? a->dv : 0, w = a->dh + dv;
    for (int64_t b = 0; b < a->B; b++)
        for (int64_t h = 0; h < a->H; h++)
            for (int64_t j = 0; j < a->J; j++) {
                float *d = loc + ((b * a->H + h) * a->J + j) * w;
                memcpy(d, a->k + b * a->k_sb + h * a->k_sh + j * a->k_sj, sizeof(float) * a->dh);
                if (dv)
                    memcpy(d + a->dh, a->v + b * a->v_sb + h * a->v_sh + j * a->v_sj,
                           sizeof(float) * dv);
            }
}

/* The attention maps asked in a sharded run (a->probs on some rank): the keys and values of
 * every rank are gathered ((B, H, J_total, dh + dv), less than the (I_local, J_total) maps
 * themselves once I_local > dh + dv) and the local query rows attend over all of them in one
 * call of the local kernel, which gives their outputs, log-sum-exps and maps as one process
 * does. Collective. */
static xattn_status attention_gathered(const xd_comm *c, const xa_attn *a, const keycols *kc)
{
    const char *fn = fn_of(a);
    const int R = c->size;
    const int64_t B = a->B, H = a->H, dh = a->dh, dv = a->v ? a->dv : 0, w = dh + dv;
    int64_t mine[2] = {a->I, a->J};
    int64_t *info = malloc(sizeof(int64_t) * 4 * (size_t)R), *n = info + 2 * R, *off = n + R;
    xattn_status st = info ? XATTN_OK : xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    float *loc = NULL, *all = NULL, *kv = NULL;
    if ((st = xd_agree(c, st))) goto done;
    int rc = MPI_Allgather(mine, 2, MPI_INT64_T, info, 2, MPI_INT64_T, c->comm);
    if (rc != MPI_SUCCESS) {
        st = xd_mpi_error(rc, fn, "MPI_Allgather");
        goto done;
    }
    int64_t Jt = 0, q0 = 0;
    for (int r = 0; r < R; r++) {
        if (r < c->rank) q0 += info[2 * r];
        Jt += info[2 * r + 1];
    }
    loc = malloc(sizeof(float) * (size_t)(B * H * a->J * w + 1));
    all = malloc(sizeof(float) * (size_t)(B * H * Jt * w + 1));
    kv = malloc(sizeof(float) * (size_t)(B * H * Jt * w + 1));
    st = loc && all && kv ? XATTN_OK : xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    if ((st = xd_agree(c, st))) goto done;
    pack_kv(a, loc);
    for (int r = 0; r < R; r++) n[r] = B * H * info[2 * r + 1] * w;
    if ((st = gather_blocks(c, loc, n, all, off, fn))) goto done;
    /* rank-major blocks into (b, h, global j, [k | v]) */
    for (int64_t r = 0, j0 = 0; r < R; j0 += info[2 * r + 1], r++)
        for (int64_t bh = 0; bh < B * H; bh++)
            memcpy(kv + (bh * Jt + j0) * w, all + off[r] + bh * info[2 * r + 1] * w,
                   sizeof(float) * (size_t)(info[2 * r + 1] * w));
    xa_attn l = *a;
    l.J = Jt;
    l.k = kv, l.k_sb = H * Jt * w, l.k_sh = Jt * w, l.k_sj = w;
    if (dv) l.v = kv + dh, l.v_sb = H * Jt * w, l.v_sh = Jt * w, l.v_sj = w;
    if (a->causal) l.causal_offset = a->causal_offset + q0; /* keys from global position 0 */
    if (!a->keys_global) { /* the key columns gathered by key_columns */
        l.mask = kc->keep, l.kkeep = NULL, l.bias = kc->bias;
        l.mask_sb = kc->Hk * Jt, l.mask_sh = kc->Hk > 1 ? Jt : 0, l.mask_si = 0;
        l.bias_sb = kc->Hb * Jt, l.bias_sh = kc->Hb > 1 ? Jt : 0, l.bias_si = 0, l.bias_sj = 1;
    }
    st = l.I ? xa_attention(&l) : XATTN_OK;
done:
    free(info), free(loc), free(all), free(kv);
    return st;
}

xattn_status xd_op_attention(const xd_comm *c, const xa_attn *a)
{
    xattn_status st = xd_agree(c, attn_local_check(a));
    if (st) return st;
    int maps = a->probs != NULL, any = 0;
    int rc = MPI_Allreduce(&maps, &any, 1, MPI_INT, MPI_MAX, c->comm);
    if (rc != MPI_SUCCESS) return xd_mpi_error(rc, fn_of(a), "MPI_Allreduce");
    keycols kc;
    if (any) {
        if (!(st = key_columns(c, a, &kc))) st = attention_gathered(c, a, &kc);
        keycols_free(&kc);
        return st;
    }
    if (!(st = key_columns(c, a, &kc))) {
        xattn_sdpa_params p;
        sdpa_of(a, &kc, &p);
        st = xattn_sdpa_dist((xattn_ctx *)xa_ctx_cur(), &p, XATTN_LAYOUT_CONTIGUOUS);
    }
    keycols_free(&kc);
    return st;
}

xattn_status xd_op_attention_backward(const xd_comm *c, const xa_attn *a, const xa_attn_grad *g)
{
    xattn_status st = attn_local_check(a);
    if (!st && g->dbias)
        st = xa_error(XATTN_ERR_UNSUPPORTED,
                      "%s: a bias gradient is not available in a sharded run", fn_of(a));
    if ((st = xd_agree(c, st))) return st;
    keycols kc;
    if (!(st = key_columns(c, a, &kc))) {
        xattn_sdpa_params p;
        sdpa_of(a, &kc, &p);
        p.lse = (float *)g->lse;
        xattn_sdpa_grads d;
        xattn_sdpa_grads_init(&d);
        d.dout = g->dout, d.do_sb = g->do_sb, d.do_sh = g->do_sh, d.do_si = g->do_si;
        d.dq = g->dq, d.dq_sb = g->dq_sb, d.dq_sh = g->dq_sh, d.dq_si = g->dq_si;
        d.dk = g->dk, d.dk_sb = g->dk_sb, d.dk_sh = g->dk_sh, d.dk_sj = g->dk_sj;
        d.dv = g->dv, d.dv_sb = g->dv_sb, d.dv_sh = g->dv_sh, d.dv_sj = g->dv_sj;
        d.accumulate = g->accumulate;
        st = xattn_sdpa_backward_dist((xattn_ctx *)xa_ctx_cur(), &p, &d, XATTN_LAYOUT_CONTIGUOUS);
    }
    keycols_free(&kc);
    return st;
}

static xattn_status bidir_local_check(const xa_bidir *p)
{
    const char *what = p->bias && p->bias != span_in.data
                           ? "a bias over both sequences other than the run's rel_pos_bias"
                           : NULL;
    if (what)
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "bidirectional attention: %s is not available in a sharded run", what);
    return XATTN_OK;
}

/* The run's rel_pos_bias (.., I_local, J_total) as the ring kernels take it: its strides from
 * its own shape (the module's are those of a J_local-column bias), its column count checked
 * against the sum of every rank's keys. Collective (after the caller's agreement). */
static xattn_status span_bias(const xd_comm *c, const xa_bidir *a, xattn_bidir_params *p,
                              int64_t *sb, int64_t *sh)
{
    /* every rank's keys; the ranks with the bias; the ranks with it or without rows */
    int64_t mine[3] = {a->J, a->bias != NULL, a->bias != NULL || a->I == 0}, tot[3];
    *sb = *sh = 0;
    int rc = MPI_Allreduce(mine, tot, 3, MPI_INT64_T, MPI_SUM, c->comm);
    if (rc != MPI_SUCCESS) return xd_mpi_error(rc, "bidirectional attention", "MPI_Allreduce");
    const int64_t Jt = tot[0];
    xattn_status st = XATTN_OK;
    if (tot[1] && tot[2] < c->size)
        st = xa_error(XATTN_ERR_ARG, "rel_pos_bias is given on some ranks and not on others");
    if (!a->bias) return xd_agree(c, st);
    const int nd = span_in.ndim;
    const int64_t *sp = span_in.shape;
    const int64_t hb = nd >= 3 ? sp[nd - 3] : 1, bb = nd >= 4 ? sp[nd - 4] : 1;
    if (!st && (sp[nd - 1] != Jt || sp[nd - 2] != a->I))
        st = xa_error(XATTN_ERR_SHAPE,
                      "rel_pos_bias holds %lld x %lld rows and columns; a rank of a sharded run "
                      "holds its %lld query rows and every key column (%lld)",
                      (long long)sp[nd - 2], (long long)sp[nd - 1], (long long)a->I, (long long)Jt);
    *sh = hb > 1 ? a->I * Jt : 0;
    *sb = bb > 1 ? hb * a->I * Jt : 0;
    p->bias = a->bias, p->bias_sh = *sh, p->bias_sb = *sb;
    return xd_agree(c, st);
}

static void bidir_of(const xa_bidir *a, xattn_bidir_params *p)
{
    xattn_bidir_init(p);
    p->B = a->B, p->H = a->H, p->I = a->I, p->J = a->J, p->dh = a->dh;
    p->qk = a->qk, p->qk_sb = a->qk_sb, p->qk_sh = a->qk_sh, p->qk_si = a->qk_si;
    p->cqk = a->cqk, p->cqk_sb = a->cqk_sb, p->cqk_sh = a->cqk_sh, p->cqk_sj = a->cqk_sj;
    p->v = a->v, p->v_sb = a->v_sb, p->v_sh = a->v_sh, p->v_si = a->v_si;
    p->cv = a->cv, p->cv_sb = a->cv_sb, p->cv_sh = a->cv_sh, p->cv_sj = a->cv_sj;
    p->out = a->out, p->o_sb = a->o_sb, p->o_sh = a->o_sh, p->o_si = a->o_si;
    p->cout = a->cout, p->co_sb = a->co_sb, p->co_sh = a->co_sh, p->co_sj = a->co_sj;
    p->has_scale = 1, p->scale = a->scale;
    p->mask = a->mask, p->mask_sb = a->mask_sb;
    p->cmask = a->cmask, p->cmask_sb = a->cmask_sb;
    p->talk = a->talk, p->ctalk = a->ctalk;
    p->lse = a->lse, p->clse = a->clse;
}

/* One side of the maps' problem (transposed = 0: the x rows against every context row; 1: every
 * context row against the x rows) as the single-process kernel runs it: with talking heads the
 * statistics first, then the mixing pass; given statistics (row_m, row_l) go straight to the
 * mixing pass. */
static xattn_status maps_side(xa_attn *a, float *stats)
{
    if (!a->mix || a->row_m) return xa_attention(a);
    const int64_t n = a->B * a->H * a->I;
    xa_attn st = *a;
    st.stats_only = 1, st.mix = NULL, st.probs = NULL, st.lse = NULL;
    st.stat_m = stats, st.stat_l = stats + n;
    xattn_status s = xa_attention(&st);
    if (s) return s;
    a->row_m = stats, a->row_l = stats + n;
    return xa_attention(a);
}

/* The attention maps of a sharded run, after its forward (lse, clse its statistics): each rank
 * holds its x rows of attn and context_attn (B, H, I_local, J_total). The context rows' cqk,
 * cv, keep mask and column log-sum-exps of every rank are gathered ((B, H, J_total, 2 dh + 1)
 * floats, less than the maps); attn is the x side against all of them, as one process computes
 * it; context_attn the context side over the local x rows with the global column statistics
 * given (a column masked everywhere: uniform over I_total). Collective. */
static xattn_status bidir_maps(const xd_comm *c, const xa_bidir *a, const float *clse, int64_t bsb,
                               int64_t bsh)
{
    static const char fn[] = "bidirectional attention maps";
    const int R = c->size;
    const int64_t B = a->B, H = a->H, I = a->I, dh = a->dh, w = 2 * dh + 1;
    int64_t mine[3] = {I, a->J, a->cmask != NULL && a->J > 0};
    int64_t *info = malloc(sizeof(int64_t) * 5 * (size_t)R), *n = info + 3 * R, *off = n + R;
    xattn_status st = info ? XATTN_OK : xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    float *loc = NULL, *all = NULL, *kv = NULL, *scr = NULL;
    uint8_t *keep = NULL;
    if ((st = xd_agree(c, st))) goto done;
    int rc = MPI_Allgather(mine, 3, MPI_INT64_T, info, 3, MPI_INT64_T, c->comm);
    if (rc != MPI_SUCCESS) {
        st = xd_mpi_error(rc, fn, "MPI_Allgather");
        goto done;
    }
    int64_t Jt = 0, It = 0, any_cmask = 0;
    for (int r = 0; r < R; r++)
        It += info[3 * r], Jt += info[3 * r + 1], any_cmask |= info[3 * r + 2];
    const int64_t BH = B * H, nscr = XA_MAX(BH * XA_MAX(I, Jt) * (dh + 2), 1);
    loc = malloc(sizeof(float) * (size_t)(BH * a->J * w + B * a->J + 1));
    all = malloc(sizeof(float) * (size_t)(BH * Jt * w + B * Jt + 1));
    kv = malloc(sizeof(float) * (size_t)(BH * Jt * w + 1));
    scr = xa_alloc(sizeof(float) * (size_t)(nscr + H * H));
    keep = malloc((size_t)(B * Jt + 1));
    st = loc && all && kv && scr && keep ? XATTN_OK
                                         : xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    if ((st = xd_agree(c, st))) goto done;
    /* local context rows packed (b, h, j, [cqk | cv | clse]), then (b, j) keep as floats */
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t j = 0; j < a->J; j++) {
                float *d = loc + ((b * H + h) * a->J + j) * w;
                memcpy(d, a->cqk + b * a->cqk_sb + h * a->cqk_sh + j * a->cqk_sj,
                       sizeof(float) * dh);
                memcpy(d + dh, a->cv + b * a->cv_sb + h * a->cv_sh + j * a->cv_sj,
                       sizeof(float) * dh);
                d[2 * dh] = clse[(b * H + h) * a->J + j];
            }
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < a->J; j++)
            loc[BH * a->J * w + b * a->J + j] =
                !a->cmask || a->cmask[b * a->cmask_sb + j] ? 1.0f : 0.0f;
    for (int r = 0; r < R; r++) n[r] = (BH * w + B) * info[3 * r + 1];
    if ((st = gather_blocks(c, loc, n, all, off, fn))) goto done;
    for (int64_t r = 0, j0 = 0; r < R; j0 += info[3 * r + 1], r++) {
        const int64_t Jr = info[3 * r + 1];
        for (int64_t bh = 0; bh < BH; bh++)
            memcpy(kv + (bh * Jt + j0) * w, all + off[r] + bh * Jr * w,
                   sizeof(float) * (size_t)(Jr * w));
        for (int64_t b = 0; b < B; b++)
            for (int64_t j = 0; j < Jr; j++)
                keep[b * Jt + j0 + j] = all[off[r] + BH * Jr * w + b * Jr + j] != 0.0f;
    }
    float *eye = scr + nscr;
    for (int64_t x = 0; x < H * H; x++) eye[x] = x % (H + 1) == 0 ? 1.0f : 0.0f;
    if (I == 0) goto done;
    /* the x side: the local rows against every context row (row statistics computed here) */
    xa_attn x;
    memset(&x, 0, sizeof x);
    x.fn = fn, x.B = B, x.H = H, x.I = I, x.J = Jt, x.dh = x.dv = dh, x.scale = a->scale;
    x.fill = XATTN_FILL_MIN_FLOAT;
    x.q = a->qk, x.q_sb = a->qk_sb, x.q_sh = a->qk_sh, x.q_si = a->qk_si;
    x.k = kv, x.k_sb = H * Jt * w, x.k_sh = Jt * w, x.k_sj = w;
    x.v = kv + dh, x.v_sb = H * Jt * w, x.v_sh = Jt * w, x.v_sj = w;
    x.out = scr, x.o_sb = H * I * dh, x.o_sh = I * dh, x.o_si = dh;
    x.qkeep = a->mask, x.qkeep_sb = a->mask_sb;
    if (any_cmask) x.kkeep = keep, x.kkeep_sb = Jt;
    x.bias = a->bias, x.bias_sb = bsb, x.bias_sh = bsh, x.bias_si = Jt, x.bias_sj = 1;
    x.probs = a->attn, x.p_sb = H * I * Jt, x.p_sh = I * Jt, x.p_si = Jt, x.p_sj = 1;
    x.mix = a->talk;
    float *stats = scr + BH * I * dh;
    if (a->attn && (st = maps_side(&x, stats))) goto done;
    if (!a->cattn) goto done;
    /* the context side: every context row against the local x rows, the column statistics
     * given (m = lse, l = 1; a column masked everywhere m = -FLT_MAX, l = I_total) */
    xa_attn y = x;
    y.I = Jt, y.J = I;
    y.q = kv, y.q_sb = H * Jt * w, y.q_sh = Jt * w, y.q_si = w;
    y.k = a->qk, y.k_sb = a->qk_sb, y.k_sh = a->qk_sh, y.k_sj = a->qk_si;
    y.v = a->v, y.v_sb = a->v_sb, y.v_sh = a->v_sh, y.v_sj = a->v_si;
    y.out = scr, y.o_sb = H * Jt * dh, y.o_sh = Jt * dh, y.o_si = dh;
    y.qkeep = any_cmask ? keep : NULL, y.qkeep_sb = any_cmask ? Jt : 0;
    y.kkeep = a->mask, y.kkeep_sb = a->mask_sb;
    y.bias_si = 1, y.bias_sj = Jt;
    y.probs = a->cattn, y.p_si = 1, y.p_sj = Jt;
    y.mix = a->ctalk ? a->ctalk : eye;
    float *m = scr + BH * Jt * dh, *l = m + BH * Jt;
    for (int64_t bh = 0; bh < BH; bh++)
        for (int64_t j = 0; j < Jt; j++) {
            const float L = kv[(bh * Jt + j) * w + 2 * dh];
            m[bh * Jt + j] = L <= -FLT_MAX ? -FLT_MAX : L;
            l[bh * Jt + j] = L <= -FLT_MAX ? (float)It : 1.0f;
        }
    y.row_m = m, y.row_l = l;
    st = maps_side(&y, NULL);
done:
    free(info), free(loc), free(all), free(kv), free(keep);
    xa_free(scr);
    return st;
}

xattn_status xd_op_bidir(const xd_comm *c, const xa_bidir *a)
{
    xattn_status st = xd_agree(c, bidir_local_check(a));
    if (st) return st;
    int maps = a->attn || a->cattn, any = 0;
    int rc = MPI_Allreduce(&maps, &any, 1, MPI_INT, MPI_MAX, c->comm);
    if (rc != MPI_SUCCESS) return xd_mpi_error(rc, "bidirectional attention", "MPI_Allreduce");
    xattn_bidir_params p;
    bidir_of(a, &p);
    int64_t sb, sh;
    if ((st = span_bias(c, a, &p, &sb, &sh))) return st;
    if (!any) return xattn_bidir_attention_dist((xattn_ctx *)xa_ctx_cur(), &p);
    /* the maps need the column statistics: the forward's into scratch when not asked */
    float *tmp = a->clse ? NULL : xa_alloc(sizeof(float) * (size_t)(a->B * a->H * a->J + 1));
    st = a->clse || tmp ? XATTN_OK
                        : xa_error(XATTN_ERR_NOMEM, "bidirectional attention: out of memory");
    if (!(st = xd_agree(c, st))) {
        p.clse = a->clse ? a->clse : tmp;
        st = xattn_bidir_attention_dist((xattn_ctx *)xa_ctx_cur(), &p);
        if (!st) st = bidir_maps(c, a, p.clse, sb, sh);
    }
    xa_free(tmp);
    return st;
}

xattn_status xd_op_bidir_backward(const xd_comm *c, const xa_bidir *a, const xa_bidir_grad *g)
{
    xattn_status st = bidir_local_check(a);
    /* the talking-heads gradients come back summed over every rank; the module's parameter
     * gradients are summed over the ranks after the backward, so only rank 0 keeps them */
    const int64_t HH = a->H * a->H;
    /* without talking heads the module's dtalk / dctalk (if any) are not touched */
    float *const dtalk = a->talk ? g->dtalk : NULL, *const dctalk = a->ctalk ? g->dctalk : NULL;
    float *tmp = c->rank && (dtalk || dctalk) ? malloc(sizeof(float) * 2 * (size_t)HH) : NULL;
    if (!st && c->rank && (dtalk || dctalk) && !tmp)
        st = xa_error(XATTN_ERR_NOMEM, "bidirectional attention: out of memory");
    if ((st = xd_agree(c, st))) {
        free(tmp);
        return st;
    }
    xattn_bidir_params p;
    bidir_of(a, &p);
    int64_t sb = 0, sh = 0;
    if ((st = span_bias(c, a, &p, &sb, &sh))) {
        free(tmp);
        return st;
    }
    p.lse = (float *)g->lse, p.clse = (float *)g->clse;
    xattn_bidir_grads d;
    xattn_bidir_grads_init(&d);
    d.dout = g->dout, d.do_sb = g->do_sb, d.do_sh = g->do_sh, d.do_si = g->do_si;
    d.dcout = g->dcout, d.dco_sb = g->dco_sb, d.dco_sh = g->dco_sh, d.dco_sj = g->dco_sj;
    d.dqk = g->dqk, d.dqk_sb = g->dqk_sb, d.dqk_sh = g->dqk_sh, d.dqk_si = g->dqk_si;
    d.dcqk = g->dcqk, d.dcqk_sb = g->dcqk_sb, d.dcqk_sh = g->dcqk_sh, d.dcqk_sj = g->dcqk_sj;
    d.dv = g->dv, d.dv_sb = g->dv_sb, d.dv_sh = g->dv_sh, d.dv_si = g->dv_si;
    d.dcv = g->dcv, d.dcv_sb = g->dcv_sb, d.dcv_sh = g->dcv_sh, d.dcv_sj = g->dcv_sj;
    if (g->dbias) /* the gradient of rel_pos_bias, shaped like it: this rank's rows */
        d.dbias = g->dbias, d.dbias_sb = sb, d.dbias_sh = sh;
    d.dtalk = dtalk ? (tmp ? tmp : dtalk) : NULL;
    d.dctalk = dctalk ? (tmp ? tmp + HH : dctalk) : NULL;
    d.accumulate = g->accumulate;
    st = xattn_bidir_attention_backward_dist((xattn_ctx *)xa_ctx_cur(), &p, &d);
    if (!st && tmp && !g->accumulate) { /* rank > 0: no share of the talking heads' gradient */
        if (dtalk) memset(dtalk, 0, sizeof(float) * (size_t)HH);
        if (dctalk) memset(dctalk, 0, sizeof(float) * (size_t)HH);
    }
    free(tmp);
    return st;
}

/* xa_op_attention_full_rows_backward over every rank's keys: rows masked everywhere (lse
 * -FLT_MAX) are rare, so when any rank has one the keys and values of every rank are gathered
 * (B, H, J_total, dh + dv), each rank adds its full rows' share to its dq and to a gradient of
 * every key, and those are summed back to the ranks that hold the keys. Collective. */
xattn_status xd_op_full_rows(const xd_comm *c, const xa_attn *a, const xa_attn_grad *g)
{
    const char *fn = fn_of(a);
    const int R = c->size;
    const int64_t B = a->B, H = a->H, I = a->I, J = a->J, dh = a->dh, dv = a->dv, w = dh + dv;
    int mine = 0;
    for (int64_t x = 0; x < B * H * I && !mine; x++) mine = g->lse[x] <= -FLT_MAX;
    xattn_status st = xd_agree(c, XATTN_OK);
    if (st) return st;
    int any = 0;
    int rc = MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, c->comm);
    if (rc != MPI_SUCCESS) return xd_mpi_error(rc, fn, "MPI_Allreduce");
    if (!any) return XATTN_OK;
    int64_t *Js = malloc(sizeof(int64_t) * (size_t)R);
    int *cnt = malloc(sizeof(int) * 2 * (size_t)R);
    if (Js && cnt) rc = MPI_Allgather(&J, 1, MPI_INT64_T, Js, 1, MPI_INT64_T, c->comm);
    int64_t Jt = 0;
    for (int r = 0; Js && r < R; r++) Jt += Js[r];
    float *loc = malloc(sizeof(float) * (size_t)(B * H * J * w + 1));
    float *kv = malloc(sizeof(float) * (size_t)(B * H * Jt * w + 1));
    float *dk = calloc((size_t)(B * H * Jt * dh + 1), sizeof(float));
    float *dkl = malloc(sizeof(float) * (size_t)(B * H * J * dh + 1));
    if (!Js || !cnt || !loc || !kv || !dk || !dkl)
        st = xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    else if (rc != MPI_SUCCESS)
        st = xd_mpi_error(rc, fn, "MPI_Allgather");
    else if (B * H * Jt * w > INT32_MAX)
        st = xa_error(XATTN_ERR_UNSUPPORTED, "%s: too many keys to gather for a masked row", fn);
    if ((st = xd_agree(c, st))) goto done;
    pack_kv(a, loc);
    int64_t *n = malloc(sizeof(int64_t) * 2 * (size_t)R), *off = n ? n + R : NULL;
    for (int r = 0; n && r < R; r++) n[r] = B * H * Js[r] * w;
    st = n ? gather_blocks(c, loc, n, kv, off, fn)
           : xd_agree(c, xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn));
    int *dis = cnt + R;
    for (int r = 0; !st && r < R; r++) dis[r] = (int)off[r];
    free(n);
    if (st) goto done;
    /* rank-major blocks: rank r's (b, h, j) at dis[r] + ((b H + h) J_r + j) w */
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < I; i++) {
                if (!(g->lse[(b * H + h) * I + i] <= -FLT_MAX)) continue;
                const float *dO = g->dout + b * g->do_sb + h * g->do_sh + i * g->do_si;
                const float *o = a->out + b * a->o_sb + h * a->o_sh + i * a->o_si;
                const float *q = a->q + b * a->q_sb + h * a->q_sh + i * a->q_si;
                float *dq = g->dq ? g->dq + b * g->dq_sb + h * g->dq_sh + i * g->dq_si : NULL;
                double D = 0.0;
                for (int64_t x = 0; x < dv; x++) D += (double)dO[x] * o[x];
                for (int r = 0; r < R; r++) {
                    for (int64_t j = 0; j < Js[r]; j++) {
                        const float *k = kv + dis[r] + ((b * H + h) * Js[r] + j) * w, *v = k + dh;
                        double dP = 0.0;
                        for (int64_t x = 0; x < dv; x++) dP += (double)dO[x] * v[x];
                        const float ds = (float)((dP - D) / (double)Jt) * a->scale;
                        if (dq)
                            for (int64_t x = 0; x < dh; x++) dq[x] += ds * k[x];
                        float *dkg = dk + (int64_t)dis[r] / w * dh + ((b * H + h) * Js[r] + j) * dh;
                        for (int64_t x = 0; x < dh; x++) dkg[x] += ds * q[x];
                    }
                }
            }
    for (int r = 0; r < R; r++) cnt[r] = (int)(B * H * Js[r] * dh);
    rc = MPI_Reduce_scatter(dk, dkl, cnt, MPI_FLOAT, MPI_SUM, c->comm);
    if (rc != MPI_SUCCESS) {
        st = xd_mpi_error(rc, fn, "MPI_Reduce_scatter");
        goto done;
    }
    for (int64_t b = 0; g->dk && b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t j = 0; j < J; j++) {
                float *d = g->dk + b * g->dk_sb + h * g->dk_sh + j * g->dk_sj;
                const float *s = dkl + ((b * H + h) * J + j) * dh;
                for (int64_t x = 0; x < dh; x++) d[x] += s[x];
            }
done:
    free(Js), free(cnt), free(loc), free(kv), free(dk), free(dkl);
    return st;
}
