/*
 * Config fields: strict parsing of option and metadata values, resolution in one order
 * (shape, option, __metadata__, default) with the source of every value kept for `inspect`, and
 * one wording for every error and warning.
 */
#include "core/core.h"
#include "io/io_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int xa_parse_int(const char *s, int64_t *v)
{
    if (!s || !*s) return 0;
    const char *p = s;
    int neg = *p == '-';
    if (neg) p++;
    if (*p < '0' || *p > '9') return 0;
    int64_t x = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        x = x * 10 + (*p - '0');
        if (x > ((int64_t)1 << 53)) return 0;
    }
    if (*p) return 0;
    *v = neg ? -x : x;
    return 1;
}

int xa_parse_real(const char *s, double *v)
{
    if (!s || !*s || *s == ' ' || *s == '\t' || *s == '\n') return 0;
    char *end = NULL;
    double x = strtod(s, &end);
    if (!end || *end || !isfinite(x)) return 0;
    /* strtod accepts hex floats, "inf" and "nan": only plain decimal numbers are values here */
    for (const char *p = s; *p; p++)
        if (!strchr("0123456789+-.eE", *p)) return 0;
    *v = x;
    return 1;
}

int xa_parse_bool(const char *s, int *v)
{
    if (!s) return 0;
    if (!strcmp(s, "True") || !strcmp(s, "true") || !strcmp(s, "1")) return *v = 1, 1;
    if (!strcmp(s, "False") || !strcmp(s, "false") || !strcmp(s, "0")) return *v = 0, 1;
    return 0;
}

int xa_parse_enum(const char *s, const char *const *names, int *v)
{
    if (!s || !names) return 0;
    for (int i = 0; names[i]; i++)
        if (!strcmp(s, names[i])) return *v = i, 1;
    return 0;
}

const char *xa_from_name(xa_from f)
{
    switch (f) {
    case XA_FROM_SHAPE: return "shape";
    case XA_FROM_OPTION: return "option";
    case XA_FROM_META: return "metadata";
    case XA_FROM_DEFAULT: return "default";
    case XA_FROM_DERIVED: return "derived";
    default: return "unset";
    }
}

/* "a positive integer", "an integer in [1, 64]", "True or False", "one of relu, gelu" */
static const char *expectation(const xa_field *f, char *buf, size_t cap)
{
    switch (f->type) {
    case XA_T_INT:
        if (f->min == 1 && f->max >= 1e15)
            snprintf(buf, cap, "a positive integer");
        else if (f->min == 0 && f->max >= 1e15)
            snprintf(buf, cap, "a non-negative integer");
        else
            snprintf(buf, cap, "an integer in [%.0f, %.0f]", f->min, f->max);
        break;
    case XA_T_REAL:
        if (f->max >= 1e300 && f->min <= -1e300)
            snprintf(buf, cap, "a number");
        else if (f->max >= 1e300)
            snprintf(buf, cap, "a number >= %g", f->min);
        else
            snprintf(buf, cap, "a number in [%g, %g]", f->min, f->max);
        break;
    case XA_T_BOOL: snprintf(buf, cap, "True or False"); break;
    case XA_T_ENUM: {
        size_t off = (size_t)snprintf(buf, cap, "one of ");
        for (int i = 0; f->enums[i] && off < cap; i++)
            off += (size_t)snprintf(buf + off, cap - off, "%s%s", i ? ", " : "", f->enums[i]);
        break;
    }
    }
    return buf;
}

/* Parses s as field f: 1 and *v on success. */
static int parse_field(const xa_field *f, const char *s, double *v)
{
    int64_t i;
    int b;
    double r;
    switch (f->type) {
    case XA_T_INT:
        if (!xa_parse_int(s, &i) || (double)i < f->min || (double)i > f->max) return 0;
        *v = (double)i;
        return 1;
    case XA_T_REAL:
        if (!xa_parse_real(s, &r) || r < f->min || r > f->max) return 0;
        *v = r;
        return 1;
    case XA_T_BOOL:
        if (!xa_parse_bool(s, &b)) return 0;
        *v = b;
        return 1;
    case XA_T_ENUM:
        if (!xa_parse_enum(s, f->enums, &b)) return 0;
        *v = b;
        return 1;
    }
    return 0;
}

xattn_status xa_meta_field(const xattn_safetensors *st, const xa_field *f, double *v, int *found,
                           const char **key_used)
{
    *found = 0;
    if (!st || (f->flags & (XA_F_NOMETA | XA_F_DERIVED))) return XATTN_OK;
    const char *keys = f->meta ? f->meta : f->name;
    char key[64];
    while (*keys) {
        size_t n = strcspn(keys, "|");
        if (n >= sizeof key) n = sizeof key - 1;
        memcpy(key, keys, n);
        key[n] = '\0';
        keys += n + (keys[n] == '|');
        const char *val = xattn_st_meta_get(st, key);
        if (!val) continue;
        /* Python's None for an argument whose default is None */
        if ((f->flags & XA_F_OPTIONAL) && (!strcmp(val, "None") || !strcmp(val, "none"))) continue;
        if ((f->flags & XA_F_NULLABLE) && (!strcmp(val, "None") || !strcmp(val, "none"))) {
            *v = -1; /* None stated (the default is another value) */
            *found = 1;
            if (key_used) *key_used = f->meta ? f->meta : f->name;
            return XATTN_OK;
        }
        char shown[64], exp[256];
        if (!parse_field(f, val, v))
            return xa_error(XATTN_ERR_FORMAT, "__metadata__ '%s' is \"%s\", not %s", key,
                            xa_io_printable(val, shown, sizeof shown),
                            expectation(f, exp, sizeof exp));
        *found = 1;
        if (key_used) *key_used = f->meta ? f->meta : f->name; /* static text */
        return XATTN_OK;
    }
    return XATTN_OK;
}

void xa_cfg_init(xa_cfg *c, const xa_field *f, int n)
{
    memset(c, 0, sizeof *c);
    c->f = f;
    c->n = n < XA_MAX_FIELDS ? n : XA_MAX_FIELDS;
}

int xa_cfg_find(const xa_cfg *c, const char *name)
{
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->f[i].name, name)) return i;
    return -1;
}

double xa_cfg_get(const xa_cfg *c, const char *name)
{
    int i = xa_cfg_find(c, name);
    return i < 0 ? 0 : c->v[i];
}

int64_t xa_cfg_int(const xa_cfg *c, const char *name) { return (int64_t)xa_cfg_get(c, name); }

void xa_cfg_set(xa_cfg *c, int i, double v, xa_from from, const char *how, ...)
{
    if (i < 0 || i >= c->n) return;
    c->v[i] = v;
    c->from[i] = from;
    va_list ap;
    va_start(ap, how);
    vsnprintf(c->how[i], sizeof c->how[i], how, ap);
    va_end(ap);
}

const char *xa_cfg_text(const xa_cfg *c, int i, char *buf, size_t cap)
{
    const xa_field *f = &c->f[i];
    switch (f->type) {
    case XA_T_INT: snprintf(buf, cap, "%lld", (long long)c->v[i]); break;
    case XA_T_REAL: snprintf(buf, cap, "%.9g", c->v[i]); break;
    case XA_T_BOOL: snprintf(buf, cap, "%s", c->v[i] != 0 ? "True" : "False"); break;
    case XA_T_ENUM: snprintf(buf, cap, "%s", f->enums[(int)c->v[i]]); break;
    }
    return buf;
}

/* The value `s` of option f, parsed; errors name the option. */
static xattn_status parse_option(const xa_field *f, const char *s, double *v, const char *fn)
{
    char shown[64], exp[256];
    if (!parse_field(f, s, v))
        return xa_error(XATTN_ERR_ARG, "%s: option '%s' is \"%s\", not %s", fn, f->name,
                        xa_io_printable(s ? s : "", shown, sizeof shown),
                        expectation(f, exp, sizeof exp));
    return XATTN_OK;
}

static xattn_status unknown_option(const xa_cfg *c, const char *key, const char *fn)
{
    char list[512], shown[64];
    size_t off = 0;
    list[0] = '\0';
    for (int i = 0; i < c->n && off < sizeof list; i++)
        if (!(c->f[i].flags & XA_F_DERIVED))
            off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", off ? ", " : "",
                                    c->f[i].name);
    return xa_error(XATTN_ERR_ARG, "%s: unknown option '%s' (options: %s)", fn,
                    xa_io_printable(key ? key : "", shown, sizeof shown), list);
}

static void add_warning(xa_cfg *c, int i)
{
    const xa_field *f = &c->f[i];
    char val[64];
    size_t off = strlen(c->warn);
    const char *key = f->meta ? f->meta : f->name;
    char k0[64];
    snprintf(k0, sizeof k0, "%.*s", (int)strcspn(key, "|"), key);
    if (off < sizeof c->warn)
        snprintf(c->warn + off, sizeof c->warn - off,
                 "%s%s: not given and not in the file; assuming %s (the reference's default); "
                 "state it with the option '%s' or __metadata__ {\"%s\": \"...\"}",
                 off ? "\n" : "", f->name, xa_cfg_text(c, i, val, sizeof val), f->name, k0);
}

/* Field i already set from a shape: an option or metadata value must agree. */
static xattn_status agree(const xa_cfg *c, int i, double v, const char *src)
{
    if (v == c->v[i]) return XATTN_OK;
    char a[64], b[64];
    xa_cfg tmp = *c;
    tmp.v[i] = v;
    return xa_error(XATTN_ERR_SHAPE, "%s %s = %s disagrees with the %s (%s = %s)", src,
                    c->f[i].name, xa_cfg_text(&tmp, i, a, sizeof a), c->how[i], c->f[i].name,
                    xa_cfg_text(c, i, b, sizeof b));
}

xattn_status xa_cfg_resolve(xa_cfg *c, const xa_kv *opts, size_t n_opts,
                            const xattn_safetensors *st, const char *fn)
{
    xattn_status s;
    for (size_t k = 0; k < n_opts; k++) {
        int i = xa_cfg_find(c, opts[k].key ? opts[k].key : "");
        if (i < 0 || (c->f[i].flags & XA_F_DERIVED)) return unknown_option(c, opts[k].key, fn);
        for (size_t k2 = 0; k2 < k; k2++)
            if (!strcmp(opts[k2].key, opts[k].key))
                return xa_error(XATTN_ERR_ARG, "%s: option '%s' given twice", fn, opts[k].key);
    }
    for (int i = 0; i < c->n; i++) {
        const xa_field *f = &c->f[i];
        if (f->flags & XA_F_DERIVED) continue;
        double v;
        int found = 0;
        for (size_t k = 0; k < n_opts && !found; k++) {
            if (strcmp(opts[k].key, f->name)) continue;
            if ((f->flags & XA_F_OPTIONAL) && opts[k].value && !strcmp(opts[k].value, "None"))
                break;
            found = 1;
            if ((f->flags & XA_F_NULLABLE) && opts[k].value && !strcmp(opts[k].value, "None"))
                v = -1;
            else if ((s = parse_option(f, opts[k].value, &v, fn)))
                return s;
        }
        if (found) {
            if (c->from[i] == XA_FROM_SHAPE) {
                if ((s = agree(c, i, v, "option"))) return s;
            } else {
                xa_cfg_set(c, i, v, XA_FROM_OPTION, "option");
            }
            continue;
        }
        const char *key = NULL;
        if ((s = xa_meta_field(st, f, &v, &found, &key))) return s;
        if (found) {
            if (c->from[i] == XA_FROM_SHAPE) {
                if ((s = agree(c, i, v, "__metadata__"))) return s;
            } else {
                xa_cfg_set(c, i, v, XA_FROM_META, "__metadata__ '%.*s'", (int)strcspn(key, "|"),
                           key);
            }
            continue;
        }
        if (c->from[i] != XA_FROM_UNSET) continue;
        if (f->flags & XA_F_OPTIONAL) continue;
        if (f->flags & (XA_F_REQUIRED | XA_F_SHAPE)) {
            if (!(f->flags & XA_F_REQUIRED) && !st) {
                xa_cfg_set(c, i, f->dflt, XA_FROM_DEFAULT, "default");
                continue;
            }
            return xa_error(XATTN_ERR_NOT_FOUND,
                            "%s: %s is not given: the reference has no default; state it with "
                            "the option '%s'%s",
                            fn, f->name, f->name,
                            st && !(f->flags & XA_F_NOMETA) ? " or __metadata__" : "");
        }
        xa_cfg_set(c, i, f->dflt, XA_FROM_DEFAULT, "default");
        if ((f->flags & XA_F_TRACELESS) && st) add_warning(c, i);
    }
    return XATTN_OK;
}
