/* libFuzzer harness: xattn_npy_parse on arbitrary bytes; on success the data is converted and
 * read in full. */
#include "xattn.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FUZZ_ASSERT(c)                                                                             \
    do {                                                                                           \
        if (!(c)) __builtin_trap();                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    xattn_array a;
    xattn_status s = xattn_npy_parse(data, size, "fuzz.npy", &a);
    if (s != XATTN_OK) {
        FUZZ_ASSERT(a.data == NULL);
        FUZZ_ASSERT(xattn_last_error()[0] != '\0');
        FUZZ_ASSERT(strchr(xattn_last_error(), '\n') == NULL);
        return 0;
    }
    int64_t numel = xattn_array_numel(&a);
    FUZZ_ASSERT(numel >= 0 && a.ndim >= 0 && a.ndim <= XATTN_MAX_DIMS);
    FUZZ_ASSERT((uint64_t)numel * xattn_dtype_size(a.dtype) <= size);
    volatile float sink = 0;
    if (a.dtype >= XATTN_BOOL) { /* integer or bool: a second copy converts to BOOL */
        size_t bytes = (size_t)numel * xattn_dtype_size(a.dtype);
        xattn_array b;
        FUZZ_ASSERT(xattn_npy_parse(data, size, "fuzz.npy", &b) == XATTN_OK);
        FUZZ_ASSERT(memcmp(a.data, b.data, bytes) == 0);
        FUZZ_ASSERT(xattn_array_convert(&b, XATTN_BOOL) == XATTN_OK);
        const uint8_t *p = (const uint8_t *)b.data;
        for (int64_t k = 0; k < numel; k++) FUZZ_ASSERT(p[k] <= 1);
        xattn_array_free(&b);
    } else {
        FUZZ_ASSERT(xattn_array_convert(&a, XATTN_BOOL) == XATTN_ERR_UNSUPPORTED);
    }
    FUZZ_ASSERT(xattn_array_convert(&a, XATTN_F32) == XATTN_OK);
    const float *f = (const float *)a.data;
    for (int64_t k = 0; k < numel; k++) sink += f[k];
    (void)sink;
    xattn_array_free(&a);
    return 0;
}
