/* Internal base layer: errors, allocation, threads. Not installed. */
#ifndef XATTN_BASE_H
#define XATTN_BASE_H

#include "xattn.h"
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define XA_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define XA_LIKELY(x)    __builtin_expect(!!(x), 1)
#define XA_UNLIKELY(x)  __builtin_expect(!!(x), 0)
#else
#define XA_PRINTF(a, b)
#define XA_LIKELY(x)   (x)
#define XA_UNLIKELY(x) (x)
#endif

/* The number of elements of an array (not a pointer). */
#define XA_N(a) (sizeof(a) / sizeof((a)[0]))

/* Whether the reserved_[4] tail of a public struct is all zero (as it must be). */
static inline int xa_reserved_zero(const uint64_t *r) { return !(r[0] | r[1] | r[2] | r[3]); }

/* Records a one-line message for xattn_last_error() and returns `s`. */
xattn_status xa_error(xattn_status s, const char *fmt, ...) XA_PRINTF(2, 3);
/* Clears the message (on success paths of public entry points). */
void xa_clear_error(void);

/* 64-byte aligned allocation; NULL on failure (also sets the error message). */
void *xa_alloc(size_t bytes);
void *xa_calloc(size_t bytes);
void xa_free(void *p);
/* Reusable scratch (see workspace.c): a block of at least `bytes` whose data is 64-byte
 * aligned, or NULL (error message set). Give it back with xa_ws_put. Thread-safe. */
typedef struct xa_ws xa_ws;
xa_ws *xa_ws_get(size_t bytes);
/* The same from context c's cache (for use inside parallel regions, where the current context
 * of the worker threads is not set). */
xa_ws *xa_ws_get_from(const xattn_ctx *c, size_t bytes);
void *xa_ws_data(xa_ws *w);
void xa_ws_put(xa_ws *w);

/* a*b with overflow check; returns 0 and sets *r on success, -1 on overflow or negative. */
int xa_mul_ok(int64_t a, int64_t b, int64_t *r);

/* Threads of the calling thread's current context (>= 1). */
int xa_threads(void);
/* Context in force on this thread (the default context unless an entry point set one). */
const xattn_ctx *xa_ctx_cur(void);
/* Makes c (NULL = default) current on this thread; returns the previous one for xa_ctx_leave. */
const xattn_ctx *xa_ctx_enter(const xattn_ctx *c);
void xa_ctx_leave(const xattn_ctx *prev);
int xa_ctx_threads(const xattn_ctx *c);
/* The distributed state of a context (src/dist in an MPI build: its communicator), or NULL.
 * Setting one frees the previous state with its own function; the context frees the last. */
void *xa_ctx_dist(const xattn_ctx *c);
void xa_ctx_set_dist(xattn_ctx *c, void *state, void (*free_fn)(void *));
/* Strict thread count ("8", or "8,2" as OMP_NUM_THREADS allows): 1..XATTN_MAX_THREADS, else 0. */
int xa_parse_threads(const char *s);

#define XA_MIN(a, b) ((a) < (b) ? (a) : (b))
#define XA_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
