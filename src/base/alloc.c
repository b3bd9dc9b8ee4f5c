#include "base.h"

#include <stdlib.h>
#include <string.h>

void *xa_alloc(size_t bytes)
{
    if (bytes == 0) bytes = 64;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded < bytes) {
        xa_error(XATTN_ERR_NOMEM, "allocation of %zu bytes overflows", bytes);
        return NULL;
    }
    void *p = aligned_alloc(64, rounded);
    if (!p) xa_error(XATTN_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
    return p;
}

void *xa_calloc(size_t bytes)
{
    void *p = xa_alloc(bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

void xa_free(void *p) { free(p); }

int xa_mul_ok(int64_t a, int64_t b, int64_t *r)
{
    if (a < 0 || b < 0) return -1;
    if (a != 0 && b > INT64_MAX / a) return -1;
    *r = a * b;
    return 0;
}
