/*
 * NumPy .npy reader and writer.
 *
 * Layout: "\x93NUMPY", major, minor, header length (u16 LE for 1.0, u32 LE for 2.0 / 3.0), the
 * header (a Python dict literal such as "{'descr': '<f4', 'fortran_order': False,
 * 'shape': (2, 3), }" padded with spaces and ended by '\n'), then the raw data.
 *
 * The dict is parsed by hand with a small grammar; every read is bounds-checked against the
 * header length.
 */
#include "io/io_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char npy_magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

/* ---- header dict parser ----------------------------------------------------------------- */

typedef struct npy_cur {
    const char *p, *beg, *end;
    const char *label;
} npy_cur;

static void npy_ws(npy_cur *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static xattn_status npy_bad(const npy_cur *c, const char *what)
{
    return xa_error(XATTN_ERR_FORMAT, "%s: malformed .npy header: %s at header byte %zu", c->label,
                    what, (size_t)(c->p - c->beg));
}

/* Python string literal in single or double quotes, without escapes. */
static xattn_status npy_str(npy_cur *c, const char **s, size_t *n)
{
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return npy_bad(c, "expected a string");
    char q = *c->p++;
    const char *start = c->p;
    while (c->p < c->end && *c->p != q) {
        if (*c->p == '\\') return npy_bad(c, "escape sequence in string");
        if (*c->p == '\n' || *c->p == '\0') return npy_bad(c, "unterminated string");
        c->p++;
    }
    if (c->p >= c->end) return npy_bad(c, "unterminated string");
    *s = start;
    *n = (size_t)(c->p - start);
    c->p++;
    return XATTN_OK;
}

static int npy_lit(npy_cur *c, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) >= n && memcmp(c->p, word, n) == 0) {
        c->p += n;
        return 1;
    }
    return 0;
}

/* "(" [int {"," int}] [","] ")" ; ints are decimal, optionally with a Python 2 "L" suffix. */
static xattn_status npy_shape(npy_cur *c, int *ndim, int64_t *shape)
{
    if (c->p >= c->end || *c->p != '(') return npy_bad(c, "shape: expected '('");
    c->p++;
    int nd = 0;
    for (;;) {
        npy_ws(c);
        if (c->p >= c->end) return npy_bad(c, "shape: unterminated tuple");
        if (*c->p == ')') {
            c->p++;
            break;
        }
        if (*c->p == '-')
            return xa_error(XATTN_ERR_FORMAT, "%s: .npy header: negative dimension in shape",
                            c->label);
        if (*c->p < '0' || *c->p > '9') return npy_bad(c, "shape: expected an integer");
        int64_t v = 0;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
            int d = *c->p - '0';
            if (v > (INT64_MAX - d) / 10)
                return xa_error(XATTN_ERR_FORMAT, "%s: .npy header: dimension too large in shape",
                                c->label);
            v = v * 10 + d;
            c->p++;
        }
        if (c->p < c->end && (*c->p == 'L' || *c->p == 'l')) c->p++;
        if (nd == XATTN_MAX_DIMS)
            return xa_error(XATTN_ERR_UNSUPPORTED,
                            "%s: shape has more than %d dimensions, which is not supported",
                            c->label, XATTN_MAX_DIMS);
        shape[nd++] = v;
        npy_ws(c);
        if (c->p < c->end && *c->p == ',') {
            c->p++;
            continue;
        }
        npy_ws(c);
        if (c->p < c->end && *c->p == ')') {
            c->p++;
            break;
        }
        return npy_bad(c, "shape: expected ',' or ')'");
    }
    *ndim = nd;
    return XATTN_OK;
}

/* Maps a descr string to a dtype, with messages for the unsupported cases. */
static xattn_status npy_descr(const char *L, const char *d, size_t n, xattn_dtype *t)
{
    static const struct {
        const char *code;
        xattn_dtype t;
    } map[] = {{"f4", XATTN_F32},  {"f8", XATTN_F64}, {"f2", XATTN_F16},
               {"b1", XATTN_BOOL}, {"u1", XATTN_U8},  {"i1", XATTN_I8},
               {"i2", XATTN_I16},  {"i4", XATTN_I32}, {"i8", XATTN_I64}};
    char show[40];
    size_t k = 0;
    for (; k < n && k < 32; k++) {
        unsigned char ch = (unsigned char)d[k];
        show[k] = (ch < 0x20 || ch >= 0x7f) ? '?' : (char)ch;
    }
    if (k < n) {
        memcpy(show + k, "...", 3);
        k += 3;
    }
    show[k] = '\0';

    char order = '=';
    const char *code = d;
    size_t cn = n;
    if (n > 0 && (d[0] == '<' || d[0] == '>' || d[0] == '=' || d[0] == '|')) {
        order = d[0];
        code++;
        cn--;
    }
    if (cn >= 1 && code[0] == 'O')
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "%s: object arrays (descr '%s') are not supported; they hold pickled "
                        "Python objects, save a numeric array instead",
                        L, show);
    for (size_t i = 0; i < XA_N(map); i++) {
        if (cn != 2 || memcmp(code, map[i].code, 2) != 0) continue;
        if (code[1] != '1') { /* byte order matters */
            if (order == '>')
                return xa_error(XATTN_ERR_UNSUPPORTED,
                                "%s: big-endian data ('%s') is not supported; convert with "
                                "arr.astype('<%s')",
                                L, show, map[i].code);
            if (order == '|')
                return xa_error(XATTN_ERR_UNSUPPORTED,
                                "%s: descr '%s' has no byte order; expected '<%s'", L, show,
                                map[i].code);
        }
        *t = map[i].t;
        return XATTN_OK;
    }
    return xa_error(XATTN_ERR_UNSUPPORTED,
                    "%s: dtype '%s' is not supported (supported: <f4 <f8 <f2 |b1 |u1 |i1 <i2 <i4 "
                    "<i8)",
                    L, show);
}

static xattn_status npy_dict(npy_cur *c, xattn_dtype *dtype, int *fortran, int *ndim,
                             int64_t *shape)
{
    int have_descr = 0, have_fortran = 0, have_shape = 0;
    xattn_status s;
    npy_ws(c);
    if (c->p >= c->end || *c->p != '{') return npy_bad(c, "expected '{'");
    c->p++;
    for (;;) {
        npy_ws(c);
        if (c->p >= c->end) return npy_bad(c, "unterminated dict");
        if (*c->p == '}') {
            c->p++;
            break;
        }
        const char *key;
        size_t kn;
        if ((s = npy_str(c, &key, &kn)) != XATTN_OK) return s;
        npy_ws(c);
        if (c->p >= c->end || *c->p != ':') return npy_bad(c, "expected ':'");
        c->p++;
        npy_ws(c);
        if (kn == 5 && memcmp(key, "descr", 5) == 0) {
            if (have_descr) return npy_bad(c, "'descr' given twice");
            have_descr = 1;
            if (c->p < c->end && (*c->p == '[' || *c->p == '{'))
                return xa_error(XATTN_ERR_UNSUPPORTED,
                                "%s: structured dtypes (record arrays) are not supported",
                                c->label);
            const char *d;
            size_t dn;
            if ((s = npy_str(c, &d, &dn)) != XATTN_OK) return s;
            if ((s = npy_descr(c->label, d, dn, dtype)) != XATTN_OK) return s;
        } else if (kn == 13 && memcmp(key, "fortran_order", 13) == 0) {
            if (have_fortran) return npy_bad(c, "'fortran_order' given twice");
            have_fortran = 1;
            if (npy_lit(c, "True"))
                *fortran = 1;
            else if (npy_lit(c, "False"))
                *fortran = 0;
            else
                return npy_bad(c, "fortran_order: expected True or False");
        } else if (kn == 5 && memcmp(key, "shape", 5) == 0) {
            if (have_shape) return npy_bad(c, "'shape' given twice");
            have_shape = 1;
            if ((s = npy_shape(c, ndim, shape)) != XATTN_OK) return s;
        } else {
            return npy_bad(c, "unknown key");
        }
        npy_ws(c);
        if (c->p < c->end && *c->p == ',') {
            c->p++;
            continue;
        }
        if (c->p < c->end && *c->p == '}') {
            c->p++;
            break;
        }
        return npy_bad(c, "expected ',' or '}'");
    }
    npy_ws(c);
    if (c->p != c->end) return npy_bad(c, "unexpected bytes after the dict");
    if (!have_descr || !have_fortran || !have_shape)
        return xa_error(XATTN_ERR_FORMAT, "%s: .npy header lacks '%s'", c->label,
                        !have_descr     ? "descr"
                        : !have_fortran ? "fortran_order"
                                        : "shape");
    return XATTN_OK;
}

/* ---- reader ----------------------------------------------------------------------------- */

xattn_status xattn_npy_parse(const void *buf, size_t len, const char *label, xattn_array *out)
{
    if (!label) label = XA_IO_NO_LABEL;
    if (!out) return xa_error(XATTN_ERR_ARG, "%s: xattn_npy_parse: out is NULL", label);
    memset(out, 0, sizeof *out);
    if (!buf && len) return xa_error(XATTN_ERR_ARG, "%s: xattn_npy_parse: buffer is NULL", label);
    if (XA_HOST_BIG_ENDIAN)
        return xa_error(XATTN_ERR_UNSUPPORTED, "%s: .npy reading needs a little-endian host",
                        label);
    const uint8_t *b = (const uint8_t *)buf;
    if (len < sizeof npy_magic || memcmp(b, npy_magic, sizeof npy_magic) != 0)
        return xa_error(XATTN_ERR_FORMAT, "%s: not a .npy file (bad magic; %zu bytes)", label, len);
    if (len < 8) return xa_error(XATTN_ERR_FORMAT, "%s: truncated .npy header", label);
    unsigned major = b[6], minor = b[7];
    size_t start;
    uint64_t hlen;
    if (major == 1 && minor == 0) {
        start = 10;
    } else if ((major == 2 || major == 3) && minor == 0) {
        start = 12;
    } else {
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "%s: .npy format version %u.%u is not supported (1.0, 2.0, 3.0 are)", label,
                        major, minor);
    }
    if (len < start)
        return xa_error(XATTN_ERR_FORMAT, "%s: truncated .npy header (%zu bytes)", label, len);
    hlen = start == 10 ? xa_le16(b + 8) : xa_le32(b + 8);
    if (hlen > (uint64_t)(len - start))
        return xa_error(XATTN_ERR_FORMAT,
                        "%s: .npy header length %" PRIu64 " past end of file (%zu bytes)", label,
                        hlen, len);

    npy_cur c = {(const char *)b + start, (const char *)b + start, (const char *)b + start + hlen,
                 label};
    xattn_dtype dtype = XATTN_F32;
    int fortran = 0, ndim = 0;
    int64_t shape[XATTN_MAX_DIMS] = {0};
    xattn_status s = npy_dict(&c, &dtype, &fortran, &ndim, shape);
    if (s != XATTN_OK) return s;

    int64_t numel, nbytes;
    if (xa_shape_numel(ndim, shape, &numel) != 0 ||
        xa_mul_ok(numel, (int64_t)xattn_dtype_size(dtype), &nbytes) != 0)
        return xa_error(XATTN_ERR_FORMAT, "%s: shape overflows", label);
    if (fortran && numel > 0) {
        int big = 0; /* with at most one dimension above 1, both orders store the same bytes */
        for (int i = 0; i < ndim; i++) big += shape[i] > 1;
        if (big > 1)
            return xa_error(XATTN_ERR_UNSUPPORTED,
                            "%s: Fortran-ordered arrays are not supported; save with "
                            "np.save(path, np.ascontiguousarray(arr))",
                            label);
    }
    size_t off = start + (size_t)hlen;
    uint64_t avail = (uint64_t)(len - off);
    if (avail < (uint64_t)nbytes)
        return xa_error(XATTN_ERR_FORMAT,
                        "%s: truncated: expected %" PRId64 " data bytes, found %" PRIu64, label,
                        nbytes, avail);
    if (avail > (uint64_t)nbytes)
        return xa_error(XATTN_ERR_FORMAT,
                        "%s: %" PRIu64 " trailing bytes after the data (expected %" PRId64
                        " data bytes, found %" PRIu64 ")",
                        label, avail - (uint64_t)nbytes, nbytes, avail);
    void *data = xa_alloc((size_t)nbytes);
    if (!data)
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory (%" PRId64 " bytes)", label, nbytes);
    if (nbytes) memcpy(data, b + off, (size_t)nbytes);
    if (dtype == XATTN_BOOL) {
        uint8_t *p = (uint8_t *)data;
        for (int64_t i = 0; i < nbytes; i++) p[i] = p[i] != 0;
    }
    out->dtype = dtype;
    out->ndim = ndim;
    for (int i = 0; i < ndim; i++) out->shape[i] = shape[i];
    out->data = data;
    xa_clear_error();
    return XATTN_OK;
}

xattn_status xattn_npy_load(const char *path, xattn_array *out)
{
    if (!out) return xa_error(XATTN_ERR_ARG, "xattn_npy_load: out is NULL");
    memset(out, 0, sizeof *out);
    if (!path) return xa_error(XATTN_ERR_ARG, "xattn_npy_load: path is NULL");
    uint8_t *buf;
    size_t len;
    xattn_status s = xa_io_read_file(path, &buf, &len);
    if (s != XATTN_OK) return s;
    s = xattn_npy_parse(buf, len, path, out);
    xa_free(buf);
    return s;
}

/* ---- writer ----------------------------------------------------------------------------- */

static const char *npy_descr_of(xattn_dtype t)
{
    switch (t) {
    case XATTN_F32: return "<f4";
    case XATTN_F64: return "<f8";
    case XATTN_F16: return "<f2";
    case XATTN_BOOL: return "|b1";
    case XATTN_U8: return "|u1";
    case XATTN_I8: return "|i1";
    case XATTN_I16: return "<i2";
    case XATTN_I32: return "<i4";
    case XATTN_I64: return "<i8";
    default: return NULL;
    }
}

xattn_status xattn_npy_save(const char *path, const xattn_array *a)
{
    if (!path || !path[0]) return xa_error(XATTN_ERR_ARG, "xattn_npy_save: path is NULL or empty");
    if (!a) return xa_error(XATTN_ERR_ARG, "%s: array is NULL", path);
    if (XA_HOST_BIG_ENDIAN)
        return xa_error(XATTN_ERR_UNSUPPORTED, "%s: .npy writing needs a little-endian host", path);
    if (!xa_dtype_valid(a->dtype))
        return xa_error(XATTN_ERR_ARG, "%s: invalid dtype %d", path, (int)a->dtype);
    const char *descr = npy_descr_of(a->dtype);
    if (!descr)
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "%s: NumPy has no %s dtype; convert the array to F32 first", path,
                        xattn_dtype_name(a->dtype));
    if (a->ndim < 0 || a->ndim > XATTN_MAX_DIMS)
        return xa_error(XATTN_ERR_ARG, "%s: ndim %d out of range 0..%d", path, a->ndim,
                        XATTN_MAX_DIMS);
    size_t nbytes;
    if (xa_shape_bytes(a->dtype, a->ndim, a->shape, &nbytes) != 0)
        return xa_error(XATTN_ERR_ARG, "%s: negative or overflowing shape", path);
    if (nbytes > 0 && !a->data) return xa_error(XATTN_ERR_ARG, "%s: data is NULL", path);

    char dict[512];
    int k =
        snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    for (int i = 0; i < a->ndim; i++)
        k += snprintf(dict + k, sizeof dict - (size_t)k, "%s%" PRId64, i ? ", " : "", a->shape[i]);
    k += snprintf(dict + k, sizeof dict - (size_t)k, "%s), }", a->ndim == 1 ? "," : "");
    size_t dl = (size_t)k;

    /* pad with spaces so the data starts at a multiple of 64, '\n' last */
    size_t prefix = 10;
    size_t total = (prefix + dl + 1 + 63) & ~(size_t)63;
    if (total - prefix > 65535) {
        prefix = 12;
        total = (prefix + dl + 1 + 63) & ~(size_t)63;
    }
    uint8_t head[640];
    memcpy(head, npy_magic, 6);
    head[6] = prefix == 10 ? 1 : 2;
    head[7] = 0;
    if (prefix == 10)
        xa_put_le16(head + 8, (uint16_t)(total - prefix));
    else
        xa_put_le32(head + 8, (uint32_t)(total - prefix));
    memcpy(head + prefix, dict, dl);
    memset(head + prefix + dl, ' ', total - prefix - dl - 1);
    head[total - 1] = '\n';

    xa_io_part parts[2] = {{head, total}, {a->data, nbytes}};
    xattn_status s = xa_io_write_file(path, parts, 2);
    if (s == XATTN_OK) xa_clear_error();
    return s;
}
