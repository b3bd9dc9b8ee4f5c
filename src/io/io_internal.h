/* Internal helpers shared by the file readers and writers (array.c, npy.c, safetensors.c). */
#ifndef XATTN_IO_INTERNAL_H
#define XATTN_IO_INTERNAL_H

#include "base/base.h"

#include <stddef.h>
#include <stdint.h>

/* Both formats store little-endian data; the readers copy bytes as they are, so they refuse to
 * run on a big-endian host rather than return wrong numbers. */
#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) &&                                    \
    __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define XA_HOST_BIG_ENDIAN 1
#else
#define XA_HOST_BIG_ENDIAN 0
#endif

/* Label used in messages when a caller passes none. */
#define XA_IO_NO_LABEL "<memory>"

/* 1 if t is a valid dtype enum value. */
int xa_dtype_valid(xattn_dtype t);
/* 1 for F32, F64, F16, BF16. */
int xa_dtype_is_float(xattn_dtype t);

/* Product of shape[0..ndim) into *numel; -1 if a dimension is negative, ndim is out of range or
 * the product overflows int64. ndim 0 gives 1. */
int xa_shape_numel(int ndim, const int64_t *shape, int64_t *numel);
/* numel * dtype size in bytes with the same checks; -1 on overflow of int64 or size_t. */
int xa_shape_bytes(xattn_dtype t, int ndim, const int64_t *shape, size_t *bytes);

/* Converts n elements of `src` (dtype `from`, any alignment) into `dst` (dtype `to`, which must
 * be XATTN_F32 or XATTN_BOOL). Returns XATTN_ERR_UNSUPPORTED (message set) for a float source
 * with a BOOL target and XATTN_ERR_ARG for other targets. src and dst must not overlap. */
xattn_status xa_convert_buf(const void *src, xattn_dtype from, void *dst, xattn_dtype to,
                            int64_t n);

/* Converts the numel elements of tensor `name` of st to float32 into dst (a count that differs
 * from the header's is an error), handing the file's pages back to the system as it goes when
 * the file is mapped: loading weights this way never holds them twice. */
xattn_status xa_st_read_f32(const xattn_safetensors *st, const char *name, float *dst,
                            int64_t numel);
/* The same for elements [first, first + count) of a tensor of numel elements. */
xattn_status xa_st_read_f32_part(const xattn_safetensors *st, const char *name, int64_t numel,
                                 int64_t first, int64_t count, float *dst);

/* Reads a whole file into a fresh xa_alloc buffer (*len bytes; *buf is never NULL on success). */
xattn_status xa_io_read_file(const char *path, uint8_t **buf, size_t *len);

/* Writes the concatenation of n parts to `path`: first to "<path>.tmp", then renamed over path,
 * so a failed write never leaves a half-written file under the final name. */
typedef struct xa_io_part {
    const void *data;
    size_t len;
} xa_io_part;
xattn_status xa_io_write_file(const char *path, const xa_io_part *parts, size_t n);

/* Copies `s` into `dst` (size cap >= 8) for a one-line message: control characters become '?',
 * and long strings are cut to about 80 characters with "...". Returns dst. */
const char *xa_io_printable(const char *s, char *dst, size_t cap);
#define XA_IO_NAME_CAP 96

/* Little-endian loads from a byte buffer. */
static inline uint16_t xa_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t xa_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t xa_le64(const uint8_t *p)
{
    return (uint64_t)xa_le32(p) | ((uint64_t)xa_le32(p + 4) << 32);
}
static inline void xa_put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void xa_put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void xa_put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

#endif
