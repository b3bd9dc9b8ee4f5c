/*
 * safetensors reader and writer.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON header (an object mapping
 * tensor names to {"dtype", "shape", "data_offsets": [begin, end]} plus an optional
 * "__metadata__" object of strings), then the data area; offsets are relative to its start.
 *
 * The reader maps a file read-only where the system can (else reads it whole) and checks every
 * field of the header against the data area before any tensor is handed out. Loaders that copy
 * tensors out (xa_st_read_f32) hand the mapped pages back as they go, so a model's weights are
 * never resident twice: the file's bytes stay in the page cache, not in the process. A file
 * truncated by another process while it is open (after its header was checked against its
 * size) would fault on access, as any mapping does; writers of model files in this project
 * replace files by renaming, which leaves an open mapping intact.
 */
#if !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* madvise */
#endif
#include "io/io_internal.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define XA_ST_MMAP 1
#else
#define XA_ST_MMAP 0
#endif

typedef struct st_tensor {
    char *name;
    xattn_dtype dtype;
    int ndim;
    int64_t shape[XATTN_MAX_DIMS];
    uint64_t begin, end; /* relative to the data area */
    size_t order;        /* position in the header (tie-break when sorting) */
} st_tensor;

struct xattn_safetensors {
    char *label;
    uint8_t *buf; /* the whole file */
    size_t len;
    int mapped; /* buf is a read-only private mapping of the file (munmap), else xa_alloc */
    const uint8_t *data; /* start of the data area inside buf */
    uint64_t data_len;
    st_tensor *t; /* offset order */
    size_t n;
    st_tensor **by_name; /* name order, for lookup */
    char **mkey, **mval;
    size_t n_meta;
};

/* Largest integer the header may hold: JSON numbers pass through a double in cJSON, which is
 * exact up to 2^53. */
#define ST_MAX_INT 9007199254740992.0

static char *st_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = (char *)malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static int st_dtype_from_name(const char *s, xattn_dtype *t)
{
    for (int i = 0; i < (int)XATTN_DTYPE_COUNT; i++) {
        if (strcmp(s, xattn_dtype_name((xattn_dtype)i)) == 0) {
            *t = (xattn_dtype)i;
            return 0;
        }
    }
    return -1;
}

static const char *st_shape_str(int ndim, const int64_t *shape, char *buf, size_t cap)
{
    size_t k = 0;
    int w = snprintf(buf, cap, "[");
    k = w > 0 ? (size_t)w : 0;
    for (int i = 0; i < ndim && k < cap; i++) {
        w = snprintf(buf + k, cap - k, "%s%" PRId64, i ? ", " : "", shape[i]);
        if (w < 0) break;
        k += (size_t)w;
    }
    if (k < cap) snprintf(buf + k, cap - k, "]");
    return buf;
}

static int st_cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int st_cmp_by_name(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

static int st_cmp_by_offset(const void *a, const void *b)
{
    const st_tensor *x = (const st_tensor *)a, *y = (const st_tensor *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->order < y->order ? -1 : (x->order > y->order);
}

void xattn_st_close(xattn_safetensors *st)
{
    if (!st) return;
    for (size_t i = 0; i < st->n; i++) free(st->t[i].name);
    for (size_t i = 0; i < st->n_meta; i++) {
        free(st->mkey[i]);
        free(st->mval[i]);
    }
    free(st->t);
    free(st->by_name);
    free(st->mkey);
    free(st->mval);
    free(st->label);
#if XA_ST_MMAP
    if (st->mapped)
        munmap(st->buf, st->len);
    else
#endif
        xa_free(st->buf);
    free(st);
}

/* Reads a JSON number that must be an integer in [0, 2^53]. On failure writes why into `why`. */
static int st_read_uint(const cJSON *v, uint64_t *out, char *why, size_t cap)
{
    if (!cJSON_IsNumber(v)) {
        snprintf(why, cap, "not a number");
        return -1;
    }
    double d = v->valuedouble;
    if (!(d >= 0)) {
        snprintf(why, cap, "negative (%g)", d);
        return -1;
    }
    if (d > ST_MAX_INT) {
        snprintf(why, cap, "too large (%.17g; the limit is 2^53)", d);
        return -1;
    }
    uint64_t u = (uint64_t)d;
    if ((double)u != d) {
        snprintf(why, cap, "not an integer (%g)", d);
        return -1;
    }
    *out = u;
    return 0;
}

static xattn_status st_read_tensor(xattn_safetensors *st, const char *name, const cJSON *v,
                                   st_tensor *t)
{
    char pn[XA_IO_NAME_CAP], why[96], sbuf[256];
    const char *L = st->label;
    xa_io_printable(name, pn, sizeof pn);

    if (!cJSON_IsObject(v))
        return xa_error(XATTN_ERR_FORMAT, "%s: tensor '%s': entry is not a JSON object", L, pn);

    /* dtype */
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(v, "dtype");
    if (!dt) return xa_error(XATTN_ERR_FORMAT, "%s: tensor '%s': missing 'dtype'", L, pn);
    if (!cJSON_IsString(dt) || !dt->valuestring)
        return xa_error(XATTN_ERR_FORMAT, "%s: tensor '%s': 'dtype' is not a string", L, pn);
    if (st_dtype_from_name(dt->valuestring, &t->dtype) != 0) {
        char pd[XA_IO_NAME_CAP];
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "%s: tensor '%s': dtype '%s' is not supported (supported: F32, F64, F16, "
                        "BF16, BOOL, U8, I8, I16, I32, I64)",
                        L, pn, xa_io_printable(dt->valuestring, pd, sizeof pd));
    }

    /* shape */
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(v, "shape");
    if (!sh) return xa_error(XATTN_ERR_FORMAT, "%s: tensor '%s': missing 'shape'", L, pn);
    if (!cJSON_IsArray(sh))
        return xa_error(XATTN_ERR_FORMAT, "%s: tensor '%s': 'shape' is not an array", L, pn);
    int ndim = 0;
    for (const cJSON *e = sh->child; e; e = e->next) {
        if (ndim == XATTN_MAX_DIMS) {
            int total = ndim;
            for (; e; e = e->next) total++;
            return xa_error(XATTN_ERR_UNSUPPORTED,
                            "%s: tensor '%s': shape has %d dimensions, at most %d are supported", L,
                            pn, total, XATTN_MAX_DIMS);
        }
        uint64_t u;
        if (st_read_uint(e, &u, why, sizeof why) != 0)
            return xa_error(XATTN_ERR_FORMAT, "%s: tensor '%s': shape[%d] is %s", L, pn, ndim, why);
        t->shape[ndim++] = (int64_t)u;
    }
    t->ndim = ndim;
    int64_t numel, nbytes;
    if (xa_shape_numel(ndim, t->shape, &numel) != 0 ||
        xa_mul_ok(numel, (int64_t)xattn_dtype_size(t->dtype), &nbytes) != 0)
        return xa_error(XATTN_ERR_FORMAT, "%s: tensor '%s': shape %s overflows", L, pn,
                        st_shape_str(ndim, t->shape, sbuf, sizeof sbuf));

    /* data_offsets */
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(v, "data_offsets");
    if (!off) return xa_error(XATTN_ERR_FORMAT, "%s: tensor '%s': missing 'data_offsets'", L, pn);
    if (!cJSON_IsArray(off) || !off->child || !off->child->next || off->child->next->next)
        return xa_error(XATTN_ERR_FORMAT,
                        "%s: tensor '%s': 'data_offsets' is not an array of two integers", L, pn);
    uint64_t be[2];
    const cJSON *e = off->child;
    for (int i = 0; i < 2; i++, e = e->next) {
        if (st_read_uint(e, &be[i], why, sizeof why) != 0)
            return xa_error(XATTN_ERR_FORMAT, "%s: tensor '%s': data_offsets[%d] is %s", L, pn, i,
                            why);
    }
    if (be[0] > be[1])
        return xa_error(XATTN_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] begin after end",
                        L, pn, be[0], be[1]);
    if (be[1] > st->data_len)
        return xa_error(XATTN_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                        "] past end of data (%" PRIu64 " bytes)",
                        L, pn, be[0], be[1], st->data_len);
    if (be[1] - be[0] != (uint64_t)nbytes)
        return xa_error(XATTN_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                        " bytes but shape %s of %s needs %" PRId64,
                        L, pn, be[0], be[1], be[1] - be[0],
                        st_shape_str(ndim, t->shape, sbuf, sizeof sbuf), xattn_dtype_name(t->dtype),
                        nbytes);
    t->begin = be[0];
    t->end = be[1];
    t->name = st_strdup(name);
    if (!t->name) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", L);
    return XATTN_OK;
}

static xattn_status st_read_meta(xattn_safetensors *st, const cJSON *m)
{
    const char *L = st->label;
    char pk[XA_IO_NAME_CAP];
    if (!cJSON_IsObject(m))
        return xa_error(XATTN_ERR_FORMAT, "%s: __metadata__ is not a JSON object", L);
    size_t cnt = 0;
    for (const cJSON *e = m->child; e; e = e->next) cnt++;
    if (cnt == 0) return XATTN_OK;
    st->mkey = (char **)calloc(cnt, sizeof(char *));
    st->mval = (char **)calloc(cnt, sizeof(char *));
    if (!st->mkey || !st->mval) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", L);
    for (const cJSON *e = m->child; e; e = e->next) {
        const char *k = e->string ? e->string : "";
        if (!cJSON_IsString(e) || !e->valuestring)
            return xa_error(XATTN_ERR_FORMAT, "%s: __metadata__ entry '%s' is not a string", L,
                            xa_io_printable(k, pk, sizeof pk));
        st->mkey[st->n_meta] = st_strdup(k);
        st->mval[st->n_meta] = st_strdup(e->valuestring);
        st->n_meta++;
        if (!st->mkey[st->n_meta - 1] || !st->mval[st->n_meta - 1])
            return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", L);
    }
    const char **sorted = (const char **)malloc(cnt * sizeof(char *));
    if (!sorted) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", L);
    memcpy(sorted, st->mkey, cnt * sizeof(char *));
    qsort(sorted, cnt, sizeof(char *), st_cmp_str_ptr);
    for (size_t i = 1; i < cnt; i++) {
        if (strcmp(sorted[i - 1], sorted[i]) == 0) {
            xa_io_printable(sorted[i], pk, sizeof pk);
            free(sorted);
            return xa_error(XATTN_ERR_FORMAT, "%s: __metadata__ key '%s' appears twice", L, pk);
        }
    }
    free(sorted);
    return XATTN_OK;
}

static int st_is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* 1 if the first entry of the zip archive in b (len bytes, starting "PK\3\4") is named
 * "...suffix"; 0 if it is named otherwise; -1 if the name cannot be read. */
static int st_zip_first_ends(const uint8_t *b, size_t len, const char *suffix)
{
    if (len < 30) return -1;
    size_t n = xa_le16(b + 26), m = strlen(suffix);
    if (len - 30 < n) return -1;
    return n >= m && memcmp(b + 30 + n - m, suffix, m) == 0;
}

/* Files that are not safetensors at all but another format's checkpoint (called when the
 * first 8 bytes are no usable header length): an error naming the format, else XATTN_OK.
 * torch.save writes a zip archive whose first entry is ".../data.pkl", or (legacy) a pickle:
 * 0x80 then the protocol byte. */
static xattn_status st_foreign_format(const xattn_safetensors *st)
{
    const char *L = st->label;
    const uint8_t *b = st->buf;
    int zip = st->len >= 4 && memcmp(b, "PK\3\4", 4) == 0;
    if (zip && st_zip_first_ends(b, st->len, ".npy") == 1)
        return xa_error(XATTN_ERR_FORMAT, "%s: this is a NumPy .npz archive, not safetensors", L);
    if (zip && st_zip_first_ends(b, st->len, "data.pkl") == 0)
        return xa_error(XATTN_ERR_FORMAT, "%s: this is a zip archive, not safetensors", L);
    if (zip || (st->len >= 2 && b[0] == 0x80 && b[1] >= 2 && b[1] <= 5))
        return xa_error(XATTN_ERR_FORMAT,
                        "%s: this is a PyTorch pickle checkpoint (torch.save), not safetensors: "
                        "save it with safetensors.torch.save_file(model.state_dict(), "
                        "'model.safetensors')",
                        L);
    return XATTN_OK;
}

static xattn_status st_parse_header(xattn_safetensors *st)
{
    const char *L = st->label;
    char pn[XA_IO_NAME_CAP];
    if (st->len < 8 || xa_le64(st->buf) > (uint64_t)(st->len - 8)) {
        xattn_status f = st_foreign_format(st);
        if (f != XATTN_OK) return f;
    }
    if (st->len < 8)
        return xa_error(XATTN_ERR_FORMAT,
                        "%s: file is %zu bytes, too short for a safetensors header (need 8)", L,
                        st->len);
    uint64_t hlen = xa_le64(st->buf);
    if (hlen > (uint64_t)(st->len - 8))
        return xa_error(XATTN_ERR_FORMAT,
                        "%s: header length %" PRIu64 " past end of file (%zu bytes)", L, hlen,
                        st->len);
    if (hlen == 0) return xa_error(XATTN_ERR_FORMAT, "%s: header is empty", L);
    st->data = st->buf + 8 + hlen;
    st->data_len = (uint64_t)(st->len - 8) - hlen;

    /* a NUL-terminated copy of the header, so the JSON parser can never run off the end */
    char *text = (char *)malloc((size_t)hlen + 1);
    if (!text)
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory for a %" PRIu64 "-byte header", L,
                        hlen);
    memcpy(text, st->buf + 8, (size_t)hlen);
    text[hlen] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, (size_t)hlen, &end, 0);
    if (!root) {
        size_t at = end && end >= text && end <= text + hlen ? (size_t)(end - text) : 0;
        free(text);
        return xa_error(XATTN_ERR_FORMAT,
                        "%s: header is not valid JSON (error at byte %zu of %" PRIu64 ")", L, at,
                        hlen);
    }
    xattn_status s = XATTN_OK;
    for (const char *p = end; p && p < text + hlen; p++) {
        if (!st_is_space(*p)) {
            s = xa_error(XATTN_ERR_FORMAT, "%s: unexpected bytes after the header JSON at byte %zu",
                         L, (size_t)(p - text));
            goto done;
        }
    }
    if (!cJSON_IsObject(root)) {
        s = xa_error(XATTN_ERR_FORMAT, "%s: header is not a JSON object", L);
        goto done;
    }

    size_t cnt = 0;
    for (const cJSON *e = root->child; e; e = e->next) cnt++;
    st->t = (st_tensor *)calloc(cnt ? cnt : 1, sizeof(st_tensor));
    if (!st->t) {
        s = xa_error(XATTN_ERR_NOMEM, "%s: out of memory", L);
        goto done;
    }
    int seen_meta = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        const char *key = e->string ? e->string : "";
        if (strcmp(key, "__metadata__") == 0) {
            if (seen_meta) {
                s = xa_error(XATTN_ERR_FORMAT, "%s: __metadata__ appears twice", L);
                goto done;
            }
            seen_meta = 1;
            if ((s = st_read_meta(st, e)) != XATTN_OK) goto done;
            continue;
        }
        st_tensor *t = &st->t[st->n];
        if ((s = st_read_tensor(st, key, e, t)) != XATTN_OK) goto done;
        t->order = st->n++;
    }

    /* offset order, then names must be unique, then no two tensors may share bytes */
    if (st->n > 1) qsort(st->t, st->n, sizeof(st_tensor), st_cmp_by_offset);
    st->by_name = (st_tensor **)malloc((st->n ? st->n : 1) * sizeof(st_tensor *));
    if (!st->by_name) {
        s = xa_error(XATTN_ERR_NOMEM, "%s: out of memory", L);
        goto done;
    }
    for (size_t i = 0; i < st->n; i++) st->by_name[i] = &st->t[i];
    if (st->n > 1) qsort(st->by_name, st->n, sizeof(st_tensor *), st_cmp_by_name);
    for (size_t i = 1; i < st->n; i++) {
        if (strcmp(st->by_name[i - 1]->name, st->by_name[i]->name) == 0) {
            s = xa_error(XATTN_ERR_FORMAT, "%s: tensor '%s' appears twice in the header", L,
                         xa_io_printable(st->by_name[i]->name, pn, sizeof pn));
            goto done;
        }
    }
    const st_tensor *prev = NULL; /* the non-empty tensor reaching furthest so far */
    for (size_t i = 0; i < st->n; i++) {
        const st_tensor *t = &st->t[i];
        if (t->begin == t->end) continue; /* empty tensors own no bytes */
        if (prev && t->begin < prev->end) {
            char pn2[XA_IO_NAME_CAP];
            s = xa_error(XATTN_ERR_FORMAT,
                         "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                         "] overlap tensor '%s' [%" PRIu64 ", %" PRIu64 "]",
                         L, xa_io_printable(t->name, pn, sizeof pn), t->begin, t->end,
                         xa_io_printable(prev->name, pn2, sizeof pn2), prev->begin, prev->end);
            goto done;
        }
        prev = t;
    }
done:
    cJSON_Delete(root);
    free(text);
    return s;
}

/* Takes ownership of buf (an xa_alloc block, or a mapping of len bytes when mapped) in every
 * case. */
static xattn_status st_parse_owned(uint8_t *buf, size_t len, int mapped, const char *label,
                                   xattn_safetensors **out)
{
    xattn_safetensors *st = (xattn_safetensors *)calloc(1, sizeof *st);
    if (!st) {
#if XA_ST_MMAP
        if (mapped)
            munmap(buf, len);
        else
#endif
            xa_free(buf);
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", label);
    }
    st->buf = buf;
    st->len = len;
    st->mapped = mapped;
    st->label = st_strdup(label);
    if (!st->label) {
        xattn_st_close(st);
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", label);
    }
    xattn_status s;
    if (XA_HOST_BIG_ENDIAN)
        s = xa_error(XATTN_ERR_UNSUPPORTED, "%s: safetensors reading needs a little-endian host",
                     label);
    else
        s = st_parse_header(st);
    if (s != XATTN_OK) {
        xattn_st_close(st);
        return s;
    }
    *out = st;
    xa_clear_error();
    return XATTN_OK;
}

xattn_status xattn_st_open(const char *path, xattn_safetensors **out)
{
    if (!out) return xa_error(XATTN_ERR_ARG, "xattn_st_open: out is NULL");
    *out = NULL;
    if (!path) return xa_error(XATTN_ERR_ARG, "xattn_st_open: path is NULL");
#if XA_ST_MMAP
    /* a regular, non-empty file is mapped; anything else (a pipe, an empty file, a failed
     * mapping) is read as before, with read's messages */
    int fd = open(path, O_RDONLY);
    struct stat sb;
    if (fd >= 0 && fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size > 0 &&
        (uint64_t)sb.st_size <= (uint64_t)SIZE_MAX / 2) {
        void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        close(fd);
        if (p != MAP_FAILED) return st_parse_owned((uint8_t *)p, (size_t)sb.st_size, 1, path, out);
    } else if (fd >= 0) {
        close(fd);
    }
#endif
    uint8_t *buf;
    size_t len;
    xattn_status s = xa_io_read_file(path, &buf, &len);
    if (s != XATTN_OK) return s;
    return st_parse_owned(buf, len, 0, path, out);
}

xattn_status xattn_st_parse(const void *buf, size_t len, const char *label, xattn_safetensors **out)
{
    if (!label) label = XA_IO_NO_LABEL;
    if (!out) return xa_error(XATTN_ERR_ARG, "%s: xattn_st_parse: out is NULL", label);
    *out = NULL;
    if (!buf && len) return xa_error(XATTN_ERR_ARG, "%s: xattn_st_parse: buffer is NULL", label);
    uint8_t *copy = (uint8_t *)xa_alloc(len);
    if (!copy) return XATTN_ERR_NOMEM;
    if (len) memcpy(copy, buf, len);
    return st_parse_owned(copy, len, 0, label, out);
}

const char *xattn_st_path(const xattn_safetensors *st) { return st ? st->label : NULL; }

size_t xattn_st_count(const xattn_safetensors *st) { return st ? st->n : 0; }

const char *xattn_st_name(const xattn_safetensors *st, size_t i)
{
    return st && i < st->n ? st->t[i].name : NULL;
}

static const st_tensor *st_lookup(const xattn_safetensors *st, const char *name)
{
    if (!st || !name || st->n == 0) return NULL;
    st_tensor key;
    key.name = (char *)(uintptr_t)name;
    const st_tensor *kp = &key;
    st_tensor *const *hit =
        (st_tensor *const *)bsearch(&kp, st->by_name, st->n, sizeof(st_tensor *), st_cmp_by_name);
    return hit ? *hit : NULL;
}

long xattn_st_find(const xattn_safetensors *st, const char *name)
{
    const st_tensor *t = st_lookup(st, name);
    return t ? (long)(t - st->t) : -1;
}

xattn_status xattn_st_info(const xattn_safetensors *st, size_t i, xattn_dtype *dtype, int *ndim,
                           int64_t *shape)
{
    if (!st) return xa_error(XATTN_ERR_ARG, "xattn_st_info: file handle is NULL");
    if (i >= st->n)
        return xa_error(XATTN_ERR_ARG, "%s: tensor index %zu out of range (%zu tensors)", st->label,
                        i, st->n);
    const st_tensor *t = &st->t[i];
    if (dtype) *dtype = t->dtype;
    if (ndim) *ndim = t->ndim;
    if (shape) {
        for (int d = 0; d < XATTN_MAX_DIMS; d++) shape[d] = d < t->ndim ? t->shape[d] : 0;
    }
    xa_clear_error();
    return XATTN_OK;
}

xattn_status xattn_st_get(const xattn_safetensors *st, const char *name, xattn_dtype want,
                          xattn_array *out)
{
    if (!out) return xa_error(XATTN_ERR_ARG, "xattn_st_get: out is NULL");
    memset(out, 0, sizeof *out);
    if (!st) return xa_error(XATTN_ERR_ARG, "xattn_st_get: file handle is NULL");
    if (!name) return xa_error(XATTN_ERR_ARG, "%s: xattn_st_get: name is NULL", st->label);
    char pn[XA_IO_NAME_CAP];
    xa_io_printable(name, pn, sizeof pn);
    if (want != XATTN_F32 && want != XATTN_BOOL)
        return xa_error(XATTN_ERR_ARG, "%s: tensor '%s': can only be read as F32 or BOOL, not %s",
                        st->label, pn, xattn_dtype_name(want));
    const st_tensor *t = st_lookup(st, name);
    if (!t) return xa_error(XATTN_ERR_NOT_FOUND, "%s: no tensor named '%s'", st->label, pn);
    if (want == XATTN_BOOL && xa_dtype_is_float(t->dtype))
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "%s: tensor '%s': cannot read %s data as BOOL (only integer or bool "
                        "tensors convert to BOOL)",
                        st->label, pn, xattn_dtype_name(t->dtype));
    int64_t numel = 1;
    xa_shape_numel(t->ndim, t->shape, &numel); /* checked when the header was read */
    size_t osize = xattn_dtype_size(want);
    if ((uint64_t)numel > (uint64_t)SIZE_MAX / osize)
        return xa_error(XATTN_ERR_NOMEM, "%s: tensor '%s': too large for memory", st->label, pn);
    void *data = xa_alloc((size_t)numel * osize);
    if (!data)
        return xa_error(XATTN_ERR_NOMEM, "%s: tensor '%s': out of memory (%zu bytes)", st->label,
                        pn, (size_t)numel * osize);
    xattn_status s = xa_convert_buf(st->data + t->begin, t->dtype, data, want, numel);
    if (s != XATTN_OK) {
        xa_free(data);
        return s;
    }
    out->dtype = want;
    out->ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) out->shape[d] = t->shape[d];
    out->data = data;
    xa_clear_error();
    return XATTN_OK;
}

size_t xattn_st_meta_count(const xattn_safetensors *st) { return st ? st->n_meta : 0; }

const char *xattn_st_meta_key(const xattn_safetensors *st, size_t i)
{
    return st && i < st->n_meta ? st->mkey[i] : NULL;
}

const char *xattn_st_meta_value(const xattn_safetensors *st, size_t i)
{
    return st && i < st->n_meta ? st->mval[i] : NULL;
}

const char *xattn_st_meta_get(const xattn_safetensors *st, const char *key)
{
    if (!st || !key) return NULL;
    for (size_t i = 0; i < st->n_meta; i++)
        if (strcmp(st->mkey[i], key) == 0) return st->mval[i];
    return NULL;
}

/* ---- writer ----------------------------------------------------------------------------- */

static cJSON *st_json_uint(uint64_t v)
{
    char num[32];
    snprintf(num, sizeof num, "%" PRIu64, v);
    return cJSON_CreateRaw(num); /* exact digits, never exponent notation */
}

/* Builds the header object; NULL on allocation failure. */
static cJSON *st_build_header(const xattn_st_entry *entries, size_t n, const char *const *meta_kv,
                              size_t n_meta)
{
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    if (n_meta > 0) {
        cJSON *m = cJSON_CreateObject();
        if (!m || !cJSON_AddItemToObject(root, "__metadata__", m)) {
            cJSON_Delete(m);
            goto fail;
        }
        for (size_t i = 0; i < n_meta; i++)
            if (!cJSON_AddStringToObject(m, meta_kv[2 * i], meta_kv[2 * i + 1])) goto fail;
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const xattn_st_entry *e = &entries[i];
        size_t bytes = 0;
        xa_shape_bytes(e->dtype, e->ndim, e->shape, &bytes);
        cJSON *obj = cJSON_CreateObject();
        if (!obj || !cJSON_AddItemToObject(root, e->name, obj)) {
            cJSON_Delete(obj);
            goto fail;
        }
        if (!cJSON_AddStringToObject(obj, "dtype", xattn_dtype_name(e->dtype))) goto fail;
        cJSON *shape = cJSON_AddArrayToObject(obj, "shape");
        cJSON *offs = cJSON_AddArrayToObject(obj, "data_offsets");
        if (!shape || !offs) goto fail;
        for (int d = 0; d < e->ndim; d++) {
            cJSON *v = st_json_uint((uint64_t)e->shape[d]);
            if (!v || !cJSON_AddItemToArray(shape, v)) {
                cJSON_Delete(v);
                goto fail;
            }
        }
        uint64_t be[2] = {off, off + bytes};
        for (int k = 0; k < 2; k++) {
            cJSON *v = st_json_uint(be[k]);
            if (!v || !cJSON_AddItemToArray(offs, v)) {
                cJSON_Delete(v);
                goto fail;
            }
        }
        off += bytes;
    }
    return root;
fail:
    cJSON_Delete(root);
    return NULL;
}

xattn_status xattn_st_save(const char *path, const xattn_st_entry *entries, size_t n,
                           const char *const *meta_kv, size_t n_meta)
{
    if (!path || !path[0]) return xa_error(XATTN_ERR_ARG, "xattn_st_save: path is NULL or empty");
    if (XA_HOST_BIG_ENDIAN)
        return xa_error(XATTN_ERR_UNSUPPORTED, "%s: safetensors writing needs a little-endian host",
                        path);
    if (n > 0 && !entries) return xa_error(XATTN_ERR_ARG, "%s: entries is NULL", path);
    if (n_meta > 0 && !meta_kv) return xa_error(XATTN_ERR_ARG, "%s: meta_kv is NULL", path);
    char pn[XA_IO_NAME_CAP];

    /* check every entry and the total size */
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const xattn_st_entry *e = &entries[i];
        if (!e->name) return xa_error(XATTN_ERR_ARG, "%s: entry %zu has no name", path, i);
        xa_io_printable(e->name, pn, sizeof pn);
        if (strcmp(e->name, "__metadata__") == 0)
            return xa_error(XATTN_ERR_ARG, "%s: '__metadata__' cannot name a tensor", path);
        if (!xa_dtype_valid(e->dtype))
            return xa_error(XATTN_ERR_ARG, "%s: tensor '%s': invalid dtype %d", path, pn,
                            (int)e->dtype);
        if (e->ndim < 0 || e->ndim > XATTN_MAX_DIMS)
            return xa_error(XATTN_ERR_ARG, "%s: tensor '%s': ndim %d out of range 0..%d", path, pn,
                            e->ndim, XATTN_MAX_DIMS);
        size_t bytes;
        if (xa_shape_bytes(e->dtype, e->ndim, e->shape, &bytes) != 0)
            return xa_error(XATTN_ERR_ARG, "%s: tensor '%s': negative or overflowing shape", path,
                            pn);
        if (bytes > 0 && !e->data)
            return xa_error(XATTN_ERR_ARG, "%s: tensor '%s': data is NULL", path, pn);
        if ((uint64_t)bytes > (uint64_t)ST_MAX_INT - total)
            return xa_error(XATTN_ERR_ARG, "%s: total data size exceeds 2^53 bytes", path);
        total += bytes;
    }
    for (size_t i = 0; i < 2 * n_meta; i++)
        if (!meta_kv[i])
            return xa_error(XATTN_ERR_ARG, "%s: metadata %s %zu is NULL", path,
                            i % 2 ? "value" : "key", i / 2);

    /* unique tensor names and metadata keys */
    size_t most = n > n_meta ? n : n_meta;
    const char **names = (const char **)malloc((most ? most : 1) * sizeof(char *));
    if (!names) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", path);
    for (int pass = 0; pass < 2; pass++) {
        size_t cnt = pass == 0 ? n : n_meta;
        for (size_t i = 0; i < cnt; i++) names[i] = pass == 0 ? entries[i].name : meta_kv[2 * i];
        qsort(names, cnt, sizeof(char *), st_cmp_str_ptr);
        for (size_t i = 1; i < cnt; i++) {
            if (strcmp(names[i - 1], names[i]) == 0) {
                xa_io_printable(names[i], pn, sizeof pn);
                free(names);
                return xa_error(XATTN_ERR_ARG, "%s: %s '%s' given twice", path,
                                pass == 0 ? "tensor name" : "metadata key", pn);
            }
        }
    }
    free(names);

    cJSON *root = st_build_header(entries, n, meta_kv, n_meta);
    char *json = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!json) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory building the header", path);
    size_t jl = strlen(json);
    size_t hl = (jl + 7) & ~(size_t)7; /* data area starts 8-byte aligned */
    uint8_t *head = (uint8_t *)malloc(8 + hl);
    if (!head) {
        cJSON_free(json);
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", path);
    }
    xa_put_le64(head, (uint64_t)hl);
    memcpy(head + 8, json, jl);
    memset(head + 8 + jl, ' ', hl - jl);
    cJSON_free(json);

    xa_io_part *parts = (xa_io_part *)malloc((n + 1) * sizeof(xa_io_part));
    if (!parts) {
        free(head);
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", path);
    }
    parts[0].data = head;
    parts[0].len = 8 + hl;
    for (size_t i = 0; i < n; i++) {
        size_t bytes = 0;
        xa_shape_bytes(entries[i].dtype, entries[i].ndim, entries[i].shape, &bytes);
        parts[i + 1].data = entries[i].data;
        parts[i + 1].len = bytes;
    }
    xattn_status s = xa_io_write_file(path, parts, n + 1);
    free(parts);
    free(head);
    if (s == XATTN_OK) xa_clear_error();
    return s;
}

/* Gives the whole pages inside [p, p + n) of a mapped file back to the system: they leave the
 * process's resident set (a later read faults them in again from the file). */
static void st_release(const xattn_safetensors *st, const uint8_t *p, size_t n)
{
#if XA_ST_MMAP
    if (!st->mapped || !n) return;
    static long page;
    if (!page) page = sysconf(_SC_PAGESIZE);
    if (page <= 0) return;
    uintptr_t a = ((uintptr_t)p + (uintptr_t)page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t b = ((uintptr_t)p + n) & ~(uintptr_t)(page - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
#else
    (void)st;
    (void)p;
    (void)n;
#endif
}

xattn_status xa_st_read_f32_part(const xattn_safetensors *st, const char *name, int64_t numel,
                                 int64_t first, int64_t count, float *dst)
{
    char pn[XA_IO_NAME_CAP];
    const st_tensor *t = st_lookup(st, name);
    if (!t)
        return xa_error(XATTN_ERR_NOT_FOUND, "%s: no tensor named '%s'", st ? st->label : "",
                        xa_io_printable(name, pn, sizeof pn));
    int64_t have = 1;
    xa_shape_numel(t->ndim, t->shape, &have); /* checked when the header was read */
    if (have != numel)
        return xa_error(XATTN_ERR_FORMAT, "%s: tensor '%s' has %lld elements, %lld expected",
                        st->label, xa_io_printable(name, pn, sizeof pn), (long long)have,
                        (long long)numel);
    if (first < 0 || count < 0 || first > numel || count > numel - first)
        return xa_error(XATTN_ERR_ARG, "%s: tensor '%s': elements [%lld, %lld) out of range",
                        st->label, xa_io_printable(name, pn, sizeof pn), (long long)first,
                        (long long)(first + count));
    const size_t es = xattn_dtype_size(t->dtype);
    const int64_t chunk = (int64_t)1 << 20; /* elements converted, then released, at a time */
    for (int64_t i = 0; i < count; i += chunk) {
        const int64_t n = XA_MIN(chunk, count - i);
        const uint8_t *src = st->data + t->begin + (size_t)(first + i) * es;
        xattn_status s = xa_convert_buf(src, t->dtype, dst + i, XATTN_F32, n);
        if (s != XATTN_OK) return s;
        st_release(st, src, (size_t)n * es);
    }
    return XATTN_OK;
}

xattn_status xa_st_read_f32(const xattn_safetensors *st, const char *name, float *dst,
                            int64_t numel)
{
    return xa_st_read_f32_part(st, name, numel, 0, numel, dst);
}
