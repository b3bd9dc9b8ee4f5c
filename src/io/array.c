/* Arrays: dtype table, element counts, conversion to F32 / BOOL, and the file helpers shared by
 * the .npy and safetensors code. */
#include "io/io_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const struct {
    const char *name;
    size_t size;
} xa_dtypes[XATTN_DTYPE_COUNT] = {
    [XATTN_F32] = {"F32", 4},   [XATTN_F64] = {"F64", 8},   [XATTN_F16] = {"F16", 2},
    [XATTN_BF16] = {"BF16", 2}, [XATTN_BOOL] = {"BOOL", 1}, [XATTN_U8] = {"U8", 1},
    [XATTN_I8] = {"I8", 1},     [XATTN_I16] = {"I16", 2},   [XATTN_I32] = {"I32", 4},
    [XATTN_I64] = {"I64", 8},
};

int xa_dtype_valid(xattn_dtype t) { return (int)t >= 0 && (int)t < (int)XATTN_DTYPE_COUNT; }

int xa_dtype_is_float(xattn_dtype t)
{
    return t == XATTN_F32 || t == XATTN_F64 || t == XATTN_F16 || t == XATTN_BF16;
}

const char *xattn_dtype_name(xattn_dtype t) { return xa_dtype_valid(t) ? xa_dtypes[t].name : "?"; }

size_t xattn_dtype_size(xattn_dtype t) { return xa_dtype_valid(t) ? xa_dtypes[t].size : 0; }

int xa_shape_numel(int ndim, const int64_t *shape, int64_t *numel)
{
    if (ndim < 0 || ndim > XATTN_MAX_DIMS) return -1;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (xa_mul_ok(n, shape[i], &n) != 0) return -1;
    *numel = n;
    return 0;
}

int xa_shape_bytes(xattn_dtype t, int ndim, const int64_t *shape, size_t *bytes)
{
    int64_t n, b;
    if (!xa_dtype_valid(t) || xa_shape_numel(ndim, shape, &n) != 0) return -1;
    if (xa_mul_ok(n, (int64_t)xa_dtypes[t].size, &b) != 0) return -1;
    if ((uint64_t)b > (uint64_t)SIZE_MAX) return -1;
    *bytes = (size_t)b;
    return 0;
}

int64_t xattn_array_numel(const xattn_array *a)
{
    int64_t n;
    if (!a) return 0;
    return xa_shape_numel(a->ndim, a->shape, &n) == 0 ? n : -1;
}

void xattn_array_free(xattn_array *a)
{
    if (!a) return;
    xa_free(a->data);
    memset(a, 0, sizeof *a);
}

/* ---- conversion ------------------------------------------------------------------------- */

static void xa_to_f32(const unsigned char *s, xattn_dtype from, float *d, int64_t n)
{
    int64_t i;
    switch (from) {
    case XATTN_F32: memcpy(d, s, (size_t)n * 4); break;
    case XATTN_F64:
        for (i = 0; i < n; i++) {
            double v;
            memcpy(&v, s + 8 * i, 8);
            d[i] = (float)v; /* IEEE round to nearest even; out of range becomes +-inf */
        }
        break;
    case XATTN_F16:
        for (i = 0; i < n; i++) {
            uint16_t v;
            memcpy(&v, s + 2 * i, 2);
            d[i] = xa_half_to_f32(v, 1);
        }
        break;
    case XATTN_BF16:
        for (i = 0; i < n; i++) {
            uint16_t v;
            memcpy(&v, s + 2 * i, 2);
            d[i] = xa_half_to_f32(v, 0);
        }
        break;
    case XATTN_BOOL:
        for (i = 0; i < n; i++) d[i] = s[i] ? 1.0f : 0.0f;
        break;
    case XATTN_U8:
        for (i = 0; i < n; i++) d[i] = (float)s[i];
        break;
    case XATTN_I8:
        for (i = 0; i < n; i++) d[i] = (float)(int8_t)s[i];
        break;
    case XATTN_I16:
        for (i = 0; i < n; i++) {
            int16_t v;
            memcpy(&v, s + 2 * i, 2);
            d[i] = (float)v;
        }
        break;
    case XATTN_I32:
        for (i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, s + 4 * i, 4);
            d[i] = (float)v;
        }
        break;
    case XATTN_I64:
        for (i = 0; i < n; i++) {
            int64_t v;
            memcpy(&v, s + 8 * i, 8);
            d[i] = (float)v;
        }
        break;
    default: break;
    }
}

static void xa_to_bool(const unsigned char *s, size_t esize, uint8_t *d, int64_t n)
{
    /* an integer is nonzero iff one of its bytes is, whatever the byte order */
    for (int64_t i = 0; i < n; i++) {
        uint8_t nz = 0;
        for (size_t b = 0; b < esize; b++) nz |= s[(size_t)i * esize + b];
        d[i] = nz != 0;
    }
}

xattn_status xa_convert_buf(const void *src, xattn_dtype from, void *dst, xattn_dtype to, int64_t n)
{
    if (!xa_dtype_valid(from) || !xa_dtype_valid(to) || n < 0)
        return xa_error(XATTN_ERR_ARG, "conversion: invalid dtype or count");
    if (to == XATTN_F32) {
        if (n > 0) xa_to_f32((const unsigned char *)src, from, (float *)dst, n);
        return XATTN_OK;
    }
    if (to == XATTN_BOOL) {
        if (xa_dtype_is_float(from))
            return xa_error(XATTN_ERR_UNSUPPORTED,
                            "cannot convert %s to BOOL (only integer and bool data converts to "
                            "BOOL)",
                            xa_dtypes[from].name);
        if (n > 0) xa_to_bool((const unsigned char *)src, xa_dtypes[from].size, (uint8_t *)dst, n);
        return XATTN_OK;
    }
    return xa_error(XATTN_ERR_ARG, "conversion to %s is not supported (only to F32 or BOOL)",
                    xa_dtypes[to].name);
}

xattn_status xattn_array_convert(xattn_array *a, xattn_dtype to)
{
    if (!a) return xa_error(XATTN_ERR_ARG, "xattn_array_convert: array is NULL");
    if (!xa_dtype_valid(a->dtype))
        return xa_error(XATTN_ERR_ARG, "xattn_array_convert: invalid source dtype %d",
                        (int)a->dtype);
    if (!xa_dtype_valid(to))
        return xa_error(XATTN_ERR_ARG, "xattn_array_convert: invalid target dtype %d", (int)to);
    int64_t n;
    if (xa_shape_numel(a->ndim, a->shape, &n) != 0)
        return xa_error(XATTN_ERR_ARG, "xattn_array_convert: invalid shape (ndim %d)", a->ndim);
    if (!a->data && n > 0) return xa_error(XATTN_ERR_ARG, "xattn_array_convert: data is NULL");
    if (to == a->dtype && to != XATTN_BOOL) {
        xa_clear_error();
        return XATTN_OK;
    }
    if (to != XATTN_F32 && to != XATTN_BOOL)
        return xa_error(XATTN_ERR_ARG, "cannot convert %s to %s (only to F32 or BOOL)",
                        xa_dtypes[a->dtype].name, xa_dtypes[to].name);
    if (to == XATTN_BOOL && xa_dtype_is_float(a->dtype))
        return xa_convert_buf(NULL, a->dtype, NULL, to, 0);
    if (to == XATTN_BOOL && a->dtype == XATTN_BOOL) { /* normalise bytes to 0/1 in place */
        uint8_t *p = (uint8_t *)a->data;
        for (int64_t i = 0; i < n; i++) p[i] = p[i] != 0;
        xa_clear_error();
        return XATTN_OK;
    }
    size_t osize = xa_dtypes[to].size;
    if ((uint64_t)n > (uint64_t)SIZE_MAX / osize)
        return xa_error(XATTN_ERR_NOMEM, "xattn_array_convert: %lld elements overflow size_t",
                        (long long)n);
    void *out = xa_alloc((size_t)n * osize);
    if (!out) return XATTN_ERR_NOMEM;
    xattn_status s = xa_convert_buf(a->data, a->dtype, out, to, n);
    if (s != XATTN_OK) {
        xa_free(out);
        return s;
    }
    xa_free(a->data);
    a->data = out;
    a->dtype = to;
    xa_clear_error();
    return XATTN_OK;
}

/* ---- files ------------------------------------------------------------------------------ */

/* Reads a stream of unknown size (pipe, character device) in growing chunks. */
static xattn_status xa_read_stream(FILE *f, const char *path, uint8_t **buf, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    uint8_t *tmp = (uint8_t *)malloc(cap);
    if (!tmp) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory reading file", path);
    for (;;) {
        if (n == cap) {
            if (cap > SIZE_MAX / 2) {
                free(tmp);
                return xa_error(XATTN_ERR_NOMEM, "%s: file too large", path);
            }
            uint8_t *g = (uint8_t *)realloc(tmp, cap * 2);
            if (!g) {
                free(tmp);
                return xa_error(XATTN_ERR_NOMEM, "%s: out of memory reading file", path);
            }
            tmp = g;
            cap *= 2;
        }
        size_t got = fread(tmp + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        int e = errno;
        free(tmp);
        return xa_error(XATTN_ERR_IO, "%s: read error: %s", path, strerror(e));
    }
    uint8_t *out = (uint8_t *)xa_alloc(n);
    if (!out) {
        free(tmp);
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, n);
    }
    if (n) memcpy(out, tmp, n);
    free(tmp);
    *buf = out;
    *len = n;
    return XATTN_OK;
}

xattn_status xa_io_read_file(const char *path, uint8_t **buf, size_t *len)
{
    if (!path) return xa_error(XATTN_ERR_ARG, "file path is NULL");
    FILE *f = fopen(path, "rb");
    if (!f) return xa_error(XATTN_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) {
        int e = errno;
        fclose(f);
        return xa_error(XATTN_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (S_ISDIR(sb.st_mode)) {
        fclose(f);
        return xa_error(XATTN_ERR_IO, "%s: is a directory", path);
    }
    xattn_status s;
    if (!S_ISREG(sb.st_mode)) {
        s = xa_read_stream(f, path, buf, len);
        fclose(f);
        return s;
    }
    if (sb.st_size < 0 || (uint64_t)sb.st_size > (uint64_t)SIZE_MAX - 64) {
        fclose(f);
        return xa_error(XATTN_ERR_NOMEM, "%s: file too large (%lld bytes)", path,
                        (long long)sb.st_size);
    }
    size_t size = (size_t)sb.st_size;
    uint8_t *b = (uint8_t *)xa_alloc(size);
    if (!b) {
        fclose(f);
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, size);
    }
    size_t got = size ? fread(b, 1, size, f) : 0;
    if (got != size || ferror(f)) {
        int e = errno;
        int err = ferror(f);
        fclose(f);
        xa_free(b);
        if (err) return xa_error(XATTN_ERR_IO, "%s: read error: %s", path, strerror(e));
        return xa_error(XATTN_ERR_IO, "%s: file shrank while reading (%zu of %zu bytes)", path, got,
                        size);
    }
    fclose(f);
    *buf = b;
    *len = size;
    return XATTN_OK;
}

xattn_status xa_io_write_file(const char *path, const xa_io_part *parts, size_t n)
{
    if (!path || !path[0]) return xa_error(XATTN_ERR_ARG, "file path is NULL or empty");
    size_t pl = strlen(path);
    char *tmp = (char *)malloc(pl + 5);
    if (!tmp) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", path);
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp", 5);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        int e = errno;
        free(tmp);
        return xa_error(XATTN_ERR_IO, "%s: cannot create: %s", path, strerror(e));
    }
    int e = 0;
    errno = 0;
    for (size_t i = 0; i < n && !e; i++) {
        if (parts[i].len && fwrite(parts[i].data, 1, parts[i].len, f) != parts[i].len)
            e = errno ? errno : EIO;
    }
    if (!e && fflush(f) != 0) e = errno ? errno : EIO;
    if (fclose(f) != 0 && !e) e = errno ? errno : EIO;
    if (!e && rename(tmp, path) != 0) e = errno ? errno : EIO;
    if (e) {
        remove(tmp);
        free(tmp);
        return xa_error(XATTN_ERR_IO, "%s: write failed: %s", path, strerror(e));
    }
    free(tmp);
    return XATTN_OK;
}

const char *xa_io_printable(const char *s, char *dst, size_t cap)
{
    if (!s) s = "(null)";
    size_t limit = cap - 4, i = 0;
    if (limit > 80) limit = 80;
    for (; s[i] && i < limit; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (s[i]) { /* cut: do not end inside a UTF-8 sequence */
        while (i > 0 && ((unsigned char)dst[i - 1] & 0xc0) == 0x80) i--;
        if (i > 0 && ((unsigned char)dst[i - 1] & 0xc0) == 0xc0) i--;
        memcpy(dst + i, "...", 3);
        i += 3;
    }
    dst[i] = '\0';
    return dst;
}
