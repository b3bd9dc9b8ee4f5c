/* libFuzzer harness: xattn_st_parse on arbitrary bytes; on success every tensor and metadata
 * entry is read back and checked against what the header promised. */
#include "xattn.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FUZZ_ASSERT(c)                                                                           \
    do {                                                                                         \
        if (!(c)) __builtin_trap();                                                              \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    xattn_safetensors *st = NULL;
    xattn_status s = xattn_st_parse(data, size, "fuzz.safetensors", &st);
    if (s != XATTN_OK) {
        FUZZ_ASSERT(st == NULL);
        FUZZ_ASSERT(xattn_last_error()[0] != '\0');
        FUZZ_ASSERT(strchr(xattn_last_error(), '\n') == NULL);
        return 0;
    }
    volatile float sink = 0;
    size_t n = xattn_st_count(st);
    for (size_t i = 0; i < n; i++) {
        const char *name = xattn_st_name(st, i);
        FUZZ_ASSERT(name != NULL);
        FUZZ_ASSERT(xattn_st_find(st, name) == (long)i);
        xattn_dtype t;
        int nd;
        int64_t shape[XATTN_MAX_DIMS];
        FUZZ_ASSERT(xattn_st_info(st, i, &t, &nd, shape) == XATTN_OK);
        FUZZ_ASSERT(nd >= 0 && nd <= XATTN_MAX_DIMS);
        xattn_array a;
        FUZZ_ASSERT(xattn_st_get(st, name, XATTN_F32, &a) == XATTN_OK);
        int64_t numel = xattn_array_numel(&a);
        FUZZ_ASSERT(numel >= 0 && a.ndim == nd && a.dtype == XATTN_F32);
        for (int d = 0; d < nd; d++) FUZZ_ASSERT(a.shape[d] == shape[d]);
        const float *f = (const float *)a.data;
        for (int64_t k = 0; k < numel; k++) sink += f[k];
        xattn_array_free(&a);
        s = xattn_st_get(st, name, XATTN_BOOL, &a);
        FUZZ_ASSERT(s == XATTN_OK || s == XATTN_ERR_UNSUPPORTED);
        if (s == XATTN_OK) {
            const uint8_t *b = (const uint8_t *)a.data;
            for (int64_t k = 0; k < numel; k++) FUZZ_ASSERT(b[k] <= 1);
        }
        xattn_array_free(&a);
    }
    FUZZ_ASSERT(xattn_st_name(st, n) == NULL);
    for (size_t i = 0; i < xattn_st_meta_count(st); i++) {
        const char *k = xattn_st_meta_key(st, i), *v = xattn_st_meta_value(st, i);
        FUZZ_ASSERT(k && v);
        FUZZ_ASSERT(xattn_st_meta_get(st, k) == v);
        sink += (float)strlen(v);
    }
    (void)sink;
    xattn_st_close(st);
    return 0;
}
