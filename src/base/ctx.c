/*
 * Execution contexts: thread count, kernel set and a workspace cache per context.
 *
 * Public entry points that take a context make it the calling thread's current context for the
 * duration of the call (xa_ctx_enter / xa_ctx_leave); kernels ask for the current context's
 * threads, kernel table and scratch. Code running inside a parallel region that needs scratch
 * passes the context it captured before the region (xa_ws_get_from). Entry points without a
 * context use the default context, which xattn_set_threads / xattn_set_isa configure.
 *
 * Workspace cache: scratch of a few MB allocated per call costs page faults (the allocator hands
 * large blocks back to the system on free), a large share of small GEMMs and attentions. Freed
 * blocks are kept in lock-free slots of their context's pool and reused, up to the context's
 * cache limit in total; xattn_ctx_trim frees them.
 */
#include "base.h"
#include "kernels/kernels.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define XA_WS_SLOTS         8
#define XA_WS_DEFAULT_LIMIT ((size_t)128 << 20)

typedef struct xa_ws_pool {
    _Atomic(xa_ws *) slots[XA_WS_SLOTS];
    _Atomic size_t cached; /* bytes held in slots */
    _Atomic size_t limit;  /* most bytes kept in slots */
} xa_ws_pool;

struct xa_ws {
    size_t bytes;     /* usable bytes after the 64-byte header */
    xa_ws_pool *pool; /* where the block goes back to */
};

struct xattn_ctx {
    _Atomic int threads;            /* 0 = the default count              */
    _Atomic(const xa_kernels *) kt; /* NULL = the best table for this CPU */
    _Atomic int compute;            /* xattn_compute                      */
    xa_ws_pool pool;
    int is_default;
    void *dist;                /* the communicator's state (src/dist), or NULL */
    void (*dist_free)(void *); /* frees it with the context                    */
};

static xattn_ctx default_ctx = {.is_default = 1, .pool = {.limit = XA_WS_DEFAULT_LIMIT}};
static _Thread_local const xattn_ctx *cur_ctx;

/* ---- threads --------------------------------------------------------------------------- */

int xa_parse_threads(const char *s)
{
    if (!s) return 0;
    int64_t v = 0;
    const char *p = s;
    if (*p < '0' || *p > '9') return 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        v = v * 10 + (*p - '0');
        if (v > XATTN_MAX_THREADS) return 0;
    }
    /* OpenMP allows a list for nested levels ("4,2"): the first level is ours */
    if (*p && *p != ',') return 0;
    return v >= 1 ? (int)v : 0;
}

#ifdef _OPENMP
static int default_threads(void)
{
    static _Atomic int dflt = 0;
    int n = atomic_load(&dflt);
    if (n > 0) return n;
    n = xa_parse_threads(getenv("OMP_NUM_THREADS"));
#ifdef _OPENMP
    if (n <= 0) n = omp_get_num_procs();
#endif
    if (n <= 0) n = 1;
    if (n > XATTN_MAX_THREADS) n = XATTN_MAX_THREADS;
    atomic_store(&dflt, n);
    return n;
}
#endif

static const xattn_ctx *ctx_or_default(const xattn_ctx *c) { return c ? c : &default_ctx; }

const xattn_ctx *xa_ctx_cur(void) { return ctx_or_default(cur_ctx); }

const xattn_ctx *xa_ctx_enter(const xattn_ctx *c)
{
    const xattn_ctx *prev = cur_ctx;
    cur_ctx = ctx_or_default(c);
    return prev;
}

void xa_ctx_leave(const xattn_ctx *prev) { cur_ctx = prev; }

int xa_ctx_threads(const xattn_ctx *c)
{
#ifdef _OPENMP
    int n = atomic_load(&ctx_or_default(c)->threads);
    return n > 0 ? n : default_threads();
#else
    (void)c;
    return 1;
#endif
}

int xa_threads(void) { return xa_ctx_threads(xa_ctx_cur()); }

void xattn_set_threads(int n) { xattn_ctx_set_threads(NULL, n > 0 ? n : 0); }

int xattn_get_threads(void) { return xa_ctx_threads(NULL); }

/* ---- kernel tables ------------------------------------------------------------------------ */

const xa_kernels *xa_ctx_kern(const xattn_ctx *c)
{
    const xa_kernels *k = atomic_load(&ctx_or_default(c)->kt);
    return k ? k : xa_kern_best();
}

const xa_kernels *xa_kern(void) { return xa_ctx_kern(xa_ctx_cur()); }

void xa_ctx_set_kern(xattn_ctx *c, const xa_kernels *k)
{
    atomic_store(&(c ? c : &default_ctx)->kt, k);
}

const char *xattn_isa(void) { return xa_ctx_kern(NULL)->name; }

xattn_status xattn_set_isa(const char *name) { return xattn_ctx_set_isa(NULL, name); }

/* ---- the public context ------------------------------------------------------------------- */

xattn_ctx *xattn_ctx_default(void) { return &default_ctx; }

xattn_status xattn_ctx_new(xattn_ctx **out)
{
    if (!out) return xa_error(XATTN_ERR_ARG, "xattn_ctx_new: out is NULL");
    *out = NULL;
    xattn_ctx *c = calloc(1, sizeof *c);
    if (!c) return xa_error(XATTN_ERR_NOMEM, "xattn_ctx_new: out of memory");
    atomic_store(&c->threads, atomic_load(&default_ctx.threads));
    atomic_store(&c->kt, atomic_load(&default_ctx.kt));
    atomic_store(&c->pool.limit, atomic_load(&default_ctx.pool.limit));
    *out = c;
    xa_clear_error();
    return XATTN_OK;
}

void xattn_ctx_free(xattn_ctx *c)
{
    if (!c || c->is_default) return;
    if (c->dist_free) c->dist_free(c->dist);
    xattn_ctx_trim(c);
    free(c);
}

xattn_status xattn_ctx_set_threads(xattn_ctx *c, int n)
{
    if (n < 0 || n > XATTN_MAX_THREADS)
        return xa_error(XATTN_ERR_ARG, "xattn_ctx_set_threads: %d threads (0 = default, or 1..%d)",
                        n, XATTN_MAX_THREADS);
    atomic_store(&(c ? c : &default_ctx)->threads, n);
    xa_clear_error();
    return XATTN_OK;
}

int xattn_ctx_get_threads(const xattn_ctx *c) { return xa_ctx_threads(c); }

xattn_status xattn_ctx_set_isa(xattn_ctx *c, const char *name)
{
    if (!name) return xa_error(XATTN_ERR_ARG, "xattn_ctx_set_isa: name is NULL");
    const xa_kernels *k = NULL;
    if (strcmp(name, "auto")) {
        if (!xa_kern_known(name))
            return xa_error(XATTN_ERR_ARG,
                            "unknown kernel set '%s' (auto, amx, avx512bf16, avx512, avx2, neon, "
                            "scalar)",
                            name);
        if (!(k = xa_kern_by_name(name)))
            return xa_error(XATTN_ERR_UNSUPPORTED,
                            "kernel set '%s' is not available on this CPU or build (the best "
                            "here is '%s')",
                            name, xa_kern_best()->name);
    }
    atomic_store(&(c ? c : &default_ctx)->kt, k);
    xa_clear_error();
    return XATTN_OK;
}

const char *xattn_ctx_get_isa(const xattn_ctx *c) { return xa_ctx_kern(c)->name; }

/* ---- compute type ----------------------------------------------------------------------- */

xattn_status xattn_ctx_set_compute(xattn_ctx *ctx, int compute)
{
    if (compute != XATTN_COMPUTE_F32 && compute != XATTN_COMPUTE_BF16)
        return xa_error(XATTN_ERR_ARG,
                        "xattn_ctx_set_compute: %d is not XATTN_COMPUTE_F32 (0) or "
                        "XATTN_COMPUTE_BF16 (1)",
                        compute);
    atomic_store(&(ctx ? ctx : &default_ctx)->compute, compute);
    xa_clear_error();
    return XATTN_OK;
}

int xattn_ctx_get_compute(const xattn_ctx *ctx)
{
    return atomic_load(&ctx_or_default(ctx)->compute);
}

xattn_status xattn_set_compute(int compute) { return xattn_ctx_set_compute(NULL, compute); }

int xattn_get_compute(void) { return xattn_ctx_get_compute(NULL); }

int xa_compute_bf16(void) { return xattn_ctx_get_compute(xa_ctx_cur()) == XATTN_COMPUTE_BF16; }

void *xa_ctx_dist(const xattn_ctx *c) { return ctx_or_default(c)->dist; }

void xa_ctx_set_dist(xattn_ctx *c, void *state, void (*free_fn)(void *))
{
    xattn_ctx *t = c ? c : &default_ctx;
    if (t->dist_free && t->dist != state) t->dist_free(t->dist);
    t->dist = state;
    t->dist_free = free_fn;
}

/* ---- workspace ------------------------------------------------------------------------------ */

void *xa_ws_data(xa_ws *w) { return (char *)w + 64; }

xa_ws *xa_ws_get_from(const xattn_ctx *c, size_t bytes)
{
    xa_ws_pool *pool = (xa_ws_pool *)&ctx_or_default(c)->pool;
    for (int i = 0; i < XA_WS_SLOTS; i++) {
        xa_ws *b = atomic_exchange(&pool->slots[i], NULL);
        if (!b) continue;
        atomic_fetch_sub(&pool->cached, b->bytes);
        if (b->bytes >= bytes) return b;
        xa_free(b); /* too small for this and probably later calls */
    }
    if (bytes > SIZE_MAX - 64) {
        xa_error(XATTN_ERR_NOMEM, "scratch of %zu bytes overflows", bytes);
        return NULL;
    }
    xa_ws *b = xa_alloc(64 + bytes);
    if (b) {
        b->bytes = bytes;
        b->pool = pool;
    }
    return b;
}

xa_ws *xa_ws_get(size_t bytes) { return xa_ws_get_from(xa_ctx_cur(), bytes); }

void xa_ws_put(xa_ws *w)
{
    if (!w) return;
    xa_ws_pool *pool = w->pool;
    const size_t limit = atomic_load(&pool->limit);
    size_t held = atomic_fetch_add(&pool->cached, w->bytes) + w->bytes;
    if (held <= limit)
        for (int i = 0; i < XA_WS_SLOTS; i++) {
            xa_ws *expect = NULL;
            if (atomic_compare_exchange_strong(&pool->slots[i], &expect, w)) return;
        }
    atomic_fetch_sub(&pool->cached, w->bytes);
    xa_free(w);
}

xattn_status xattn_ctx_set_workspace_limit(xattn_ctx *c, size_t bytes)
{
    xattn_ctx *t = c ? c : &default_ctx;
    atomic_store(&t->pool.limit, bytes);
    if (atomic_load(&t->pool.cached) > bytes) xattn_ctx_trim(t);
    xa_clear_error();
    return XATTN_OK;
}

size_t xattn_ctx_workspace_cached(const xattn_ctx *c)
{
    return atomic_load(&ctx_or_default(c)->pool.cached);
}

void xattn_ctx_trim(xattn_ctx *c)
{
    xa_ws_pool *pool = &(c ? c : &default_ctx)->pool;
    for (int i = 0; i < XA_WS_SLOTS; i++) {
        xa_ws *b = atomic_exchange(&pool->slots[i], NULL);
        if (!b) continue;
        atomic_fetch_sub(&pool->cached, b->bytes);
        xa_free(b);
    }
}
