/* libFuzzer harness: xattn_st_parse on arbitrary bytes; on success every tensor and metadata
 * entry is read back and checked against what the header promised, and the file is loaded as
 * a multi-head attention module (xattn_mha_load, which checks names and shapes) and, when that
 * succeeds with small sizes, run once (xattn_mha_forward). */
#include "xattn.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_ASSERT(c)                                                                             \
    do {                                                                                           \
        if (!(c)) __builtin_trap();                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Loads the file as an attention module with no prefix; runs it on B=1, I=2, J=3 if small. */
static void try_module(const xattn_safetensors *st, int64_t heads)
{
    xattn_mha *m = (xattn_mha *)1;
    const xattn_mha_opts o = {.heads = heads};
    xattn_status s = xattn_mha_load(st, "", &o, &m);
    if (s != XATTN_OK) {
        FUZZ_ASSERT(m == NULL);
        FUZZ_ASSERT(xattn_last_error()[0] != '\0');
        FUZZ_ASSERT(strchr(xattn_last_error(), '\n') == NULL);
        return;
    }
    xattn_mha_config c;
    xattn_mha_get_config(m, &c);
    FUZZ_ASSERT(c.heads > 0 && c.head_dim > 0 && c.heads * c.head_dim == c.inner_dim);
    FUZZ_ASSERT(c.embed_dim > 0 && c.kdim > 0 && c.vdim > 0 && c.out_dim > 0);
    if (c.embed_dim <= 4096 && c.kdim <= 4096 && c.vdim <= 4096 && c.out_dim <= 4096 &&
        c.heads <= 64) {
        const int64_t I = 2, J = 3, Jw = J + c.add_bias_kv + c.add_zero_attn;
        float *q = calloc((size_t)(I * c.embed_dim), sizeof(float));
        float *k = calloc((size_t)(J * c.kdim), sizeof(float));
        float *v = calloc((size_t)(J * c.vdim), sizeof(float));
        float *o = calloc((size_t)(I * c.out_dim), sizeof(float));
        float *w = calloc((size_t)(c.heads * I * Jw), sizeof(float));
        uint8_t kpm[3] = {0, 1, 0};
        if (q && k && v && o && w) {
            xattn_mha_inputs in;
            memset(&in, 0, sizeof in);
            in.B = 1, in.I = I, in.J = J, in.query = q, in.key = k, in.value = v;
            in.key_padding_mask = kpm;
            const xattn_mha_outputs out = {.out = o, .attn_per_head = w};
            FUZZ_ASSERT(xattn_mha_forward(NULL, m, &in, &out) == XATTN_OK);
        }
        free(q);
        free(k);
        free(v);
        free(o);
        free(w);
    }
    xattn_mha_free(m);
}

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
    try_module(st, 0);
    try_module(st, 2);
    xattn_st_close(st);
    return 0;
}
