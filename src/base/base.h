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

/* Whether the reserved_[n] tail of a public struct is all zero (as it must be); r an array. */
static inline int xa_reserved_zero_n(const uint64_t *r, size_t n)
{
    uint64_t any = 0;
    for (size_t i = 0; i < n; i++) any |= r[i];
    return !any;
}
#define xa_reserved_zero(r) xa_reserved_zero_n((r), XA_N(r))

/* Half-precision values (16-bit patterns) to float, exactly: bfloat16 is the top half of a
 * float; IEEE binary16 (f16 != 0) widens normal, subnormal, zero, inf and NaN (payload kept). */
static inline float xa_half_to_f32(uint16_t h, int f16)
{
    union {
        uint32_t u;
        float f;
    } v;
    if (!f16) {
        v.u = (uint32_t)h << 16;
        return v.f;
    }
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) { /* zero or subnormal: m * 2^-24, exact in float */
        v.f = (float)m * 0x1p-24f;
        v.u |= sign;
    } else if (e == 31) {
        v.u = sign | 0x7f800000u | (m << 13);
    } else {
        v.u = sign | ((e + 112u) << 23) | (m << 13);
    }
    return v.f;
}

/* float to bfloat16 (f16 == 0) or IEEE binary16, rounded to nearest even as torch's .to()
 * rounds; a NaN stays a (quiet) NaN; binary16 overflows to +-inf past 65504 (the caller
 * decides whether that is an error). */
static inline uint16_t xa_f32_to_half(float x, int f16)
{
    union {
        float f;
        uint32_t u;
    } v = {x};
    const uint32_t u = v.u, sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (!f16) {
        if (a > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
        return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520: rounds to inf */
    if (a < 0x38800000u) { /* below 2^-14: a subnormal (or zero) of binary16 */
        if (a < 0x33000000u) return (uint16_t)sign; /* <= 2^-25: rounds to zero */
        const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u, sh = 126u - e;
        /* value = m * 2^(e - 150); in units of 2^-24: m >> (126 - e), rounded to even */
        uint32_t q = m >> sh;
        const uint32_t rem = m & ((1u << sh) - 1u), half = 1u << (sh - 1u);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    /* normal: rebias the exponent, round the 13 dropped bits to even (a carry into the
     * exponent is the correct result, up to inf) */
    const uint32_t r = a - 0x38000000u;
    return (uint16_t)(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
}

/* x rounded to the nearest bfloat16 (ties to even), as a float. */
static inline float xa_round_bf16(float x) { return xa_half_to_f32(xa_f32_to_half(x, 0), 0); }

/* lo and hi rounded to bfloat16 in one word, lo in the low half: the operand layout of the bf16
 * dot-product instructions (a pair along the sum). */
static inline uint32_t xa_bf16_pair(float lo, float hi)
{
    return (uint32_t)xa_f32_to_half(lo, 0) | (uint32_t)xa_f32_to_half(hi, 0) << 16;
}

/* Whether the calling thread's current context computes in bf16 (xattn_ctx_set_compute). */
int xa_compute_bf16(void);

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
