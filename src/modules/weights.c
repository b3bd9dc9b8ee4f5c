#include "weights.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

xattn_status xa_wref_find(const xattn_safetensors *st, const char *fn, const char *prefix,
                          const char *mid, const char *name, xa_wref *t)
{
    memset(t, 0, sizeof *t);
    int n = snprintf(t->name, sizeof t->name, "%s%s%s", prefix, mid, name);
    if (n < 0 || (size_t)n >= sizeof t->name) {
        char pp[XA_IO_NAME_CAP];
        return xa_error(XATTN_ERR_ARG, "%s: prefix '%s' is too long", fn,
                        xa_io_printable(prefix, pp, sizeof pp));
    }
    xa_io_printable(t->name, t->shown, sizeof t->shown);
    long idx = xattn_st_find(st, t->name);
    if (idx < 0) return XATTN_OK;
    xattn_status s = xattn_st_info(st, (size_t)idx, &t->dtype, &t->ndim, t->shape);
    if (s != XATTN_OK) return s;
    t->present = 1;
    return XATTN_OK;
}

int xa_wref_has(const xattn_safetensors *st, const char *prefix, const char *name)
{
    char full[XA_WREF_NAME_MAX];
    int n = snprintf(full, sizeof full, "%s%s", prefix, name);
    if (n < 0 || (size_t)n >= sizeof full) return 0;
    return xattn_st_find(st, full) >= 0;
}

xattn_status xa_wref_missing(const xa_wref *t, const char *why)
{
    return xa_error(XATTN_ERR_NOT_FOUND, "tensor '%s' is missing (%s)", t->shown, why);
}

xattn_status xa_wref_check_float(const xa_wref *t)
{
    if (t->dtype != XATTN_F32 && t->dtype != XATTN_F16 && t->dtype != XATTN_BF16 &&
        t->dtype != XATTN_F64)
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "tensor '%s' has dtype %s; expected F32, F16, BF16 or F64", t->shown,
                        xattn_dtype_name(t->dtype));
    return XATTN_OK;
}

const char *xa_dims_str(int ndim, const int64_t *shape, char *buf, size_t n)
{
    size_t off = (size_t)snprintf(buf, n, "(");
    for (int d = 0; d < ndim && off < n; d++)
        off += (size_t)snprintf(buf + off, n - off, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (ndim == 1 && off < n) off += (size_t)snprintf(buf + off, n - off, ",");
    if (off < n) snprintf(buf + off, n - off, ")");
    return buf;
}

const char *xa_wref_shape(const xa_wref *t, char *buf, size_t n)
{
    return xa_dims_str(t->ndim, t->shape, buf, n);
}

int64_t xa_wref_numel(const xa_wref *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

xattn_status xa_wref_fetch(const xattn_safetensors *st, const xa_wref *t)
{
    xattn_array a;
    memset(&a, 0, sizeof a);
    xattn_status s = xattn_st_get(st, t->name, XATTN_F32, &a);
    if (s != XATTN_OK) return s;
    const int64_t n = xa_wref_numel(t);
    if (a.dtype != XATTN_F32 || xattn_array_numel(&a) != n) {
        xattn_array_free(&a);
        return xa_error(XATTN_ERR_FORMAT, "tensor '%s': converted data does not match its header",
                        t->shown);
    }
    memcpy(t->dst, a.data, (size_t)n * sizeof(float));
    xattn_array_free(&a);
    return XATTN_OK;
}

int64_t xa_parse_positive(const char *s)
{
    if (!s) return 0;
    while (*s == ' ' || *s == '\t') s++;
    if (*s < '0' || *s > '9') return 0;
    int64_t v = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        v = v * 10 + (*s - '0');
        if (v > ((int64_t)1 << 40)) return 0;
    }
    while (*s == ' ' || *s == '\t') s++;
    return *s ? 0 : v;
}

/* A tensor PREFIX STEM N.* with N >= the number of layers found (counted while STEM N.KEY
 * exists) would be silently ignored: a gap or a partial layer. Refuse it instead. */
xattn_status xa_stray_layer(const xattn_safetensors *st, const char *prefix, const char *stem,
                                int64_t L, const char *key)
{
    const size_t pl = strlen(prefix), sl = strlen(stem);
    for (size_t i = 0; i < xattn_st_count(st); i++) {
        const char *n = xattn_st_name(st, i);
        if (!n || strncmp(n, prefix, pl) || strncmp(n + pl, stem, sl)) continue;
        const char *p = n + pl + sl;
        if (*p < '0' || *p > '9') continue;
        int64_t idx = 0;
        int big = 0;
        for (; *p >= '0' && *p <= '9'; p++) {
            if (idx > (INT64_MAX - 9) / 10)
                big = 1;
            else
                idx = idx * 10 + (*p - '0');
        }
        if (*p != '.' || (!big && idx < L)) continue;
        char shown[XA_IO_NAME_CAP], pp[XA_IO_NAME_CAP];
        xa_io_printable(n, shown, sizeof shown);
        xa_io_printable(prefix, pp, sizeof pp);
        return xa_error(XATTN_ERR_NOT_FOUND,
                        "tensor '%s' lies outside the %lld layer%s found: '%s%s%lld.%s' is "
                        "missing (layers must be numbered 0..N-1, each complete)",
                        shown, (long long)L, L == 1 ? "" : "s", pp, stem, (long long)L, key);
    }
    return XATTN_OK;
}
