/*
 * Parameter tables: one routine instantiates a module's table with concrete shapes, loads it
 * from a state dict (presence, dtype and shape of every tensor checked before the single
 * allocation), creates it with the reference's initialisation, saves it under the reference's
 * names, and lets the module and the registry enumerate it.
 */
#include "core/core.h"
#include "io/io_internal.h"
#include "kernels/ops.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>

#define NAME_MAX_LEN 512

/* ---- shape expressions ------------------------------------------------------------------- */

/* Evaluates one dim "8", "inner", "2*inner" against cfg: 1 and *v, or 0 (unknown field). */
static int eval_dim(const char *d, size_t n, const xa_cfg *cfg, int64_t *v, int *field)
{
    char tok[64];
    if (n == 0 || n >= sizeof tok) return 0;
    memcpy(tok, d, n);
    tok[n] = '\0';
    int64_t mul = 1;
    char *name = tok, *star = strchr(tok, '*');
    if (star) {
        *star = '\0';
        if (!xa_parse_int(tok, &mul)) return 0;
        name = star + 1;
    }
    int64_t lit;
    if (!star && xa_parse_int(name, &lit)) {
        *v = lit;
        if (field) *field = -1;
        return 1;
    }
    int i = cfg ? xa_cfg_find(cfg, name) : -1;
    if (i < 0) return 0;
    *v = mul * (int64_t)cfg->v[i];
    if (field) *field = star ? -2 - i : i; /* -2 - i: a multiple of field i */
    return 1;
}

/* Splits shape into dims: returns the count (<= XATTN_MAX_DIMS) or -1. */
static int split_dims(const char *shape, const char **d, size_t *len)
{
    int n = 0;
    if (!*shape) return 0;
    for (const char *p = shape;; n++) {
        if (n >= XATTN_MAX_DIMS) return -1;
        size_t l = strcspn(p, ",");
        d[n] = p;
        len[n] = l;
        if (!p[l]) return n + 1;
        p += l + 1;
    }
}

/* A condition "name" / "!name" on bool fields: 1 holds, 0 does not. */
static int cond_holds(const char *cond, const xa_cfg *cfg)
{
    if (!cond) return 1;
    int neg = *cond == '!';
    int i = xa_cfg_find(cfg, cond + neg);
    int v = i >= 0 && cfg->v[i] != 0;
    return neg ? !v : v;
}

int xa_params_add(xa_params *ps, const xa_pspec *spec, const xa_cfg *cfg, const char *stem)
{
    if (ps->n == ps->cap) {
        int cap = ps->cap ? 2 * ps->cap : 32;
        xa_param *p = realloc(ps->p, (size_t)cap * sizeof *p);
        if (!p) return xa_error(XATTN_ERR_NOMEM, "out of memory for the parameter table"), -1;
        ps->p = p;
        ps->cap = cap;
    }
    xa_param *p = &ps->p[ps->n];
    memset(p, 0, sizeof *p);
    size_t nl = strlen(stem) + strlen(spec->name) + 1;
    if (!(p->name = malloc(nl))) return xa_error(XATTN_ERR_NOMEM, "out of memory"), -1;
    snprintf(p->name, nl, "%s%s", stem, spec->name);
    p->spec = spec;
    p->flags = spec->flags;
    if (!cond_holds(spec->cond, cfg))
        p->flags = (spec->flags & XA_P_OPT) ? XA_P_OPT | XA_P_NOCREATE : XA_P_ABSENT | XA_P_OPT;
    const char *d[XATTN_MAX_DIMS];
    size_t len[XATTN_MAX_DIMS];
    int nd = split_dims(spec->shape, d, len);
    for (int k = 0; k < nd; k++)
        if (!eval_dim(d[k], len[k], cfg, &p->shape[k], NULL) || p->shape[k] < 0) nd = -1;
    if (nd < 0) {
        free(p->name);
        return xa_error(XATTN_ERR_ARG, "parameter '%s': bad shape '%s'", spec->name, spec->shape),
               -1;
    }
    p->ndim = nd;
    if (spec->init == XA_INIT_BIAS && spec->fan_in) {
        int64_t f;
        if (eval_dim(spec->fan_in, strlen(spec->fan_in), cfg, &f, NULL)) p->fan_in = f;
    }
    if (spec->init == XA_INIT_NORMAL && spec->fan_in) xa_parse_real(spec->fan_in, &p->init_arg);
    ps->cfg = cfg;
    return ps->n++;
}

xattn_status xa_params_add_table(xa_params *ps, const xa_pspec *t, int n, const xa_cfg *cfg,
                                 const char *stem, int *first)
{
    if (first) *first = ps->n;
    for (int k = 0; k < n; k++)
        if (xa_params_add(ps, &t[k], cfg, stem) < 0) return XATTN_ERR_NOMEM;
    return XATTN_OK;
}

int xa_params_find(const xa_params *ps, const char *name)
{
    for (int i = 0; i < ps->n; i++)
        if (!strcmp(ps->p[i].name, name)) return i;
    return -1;
}

void xa_params_free(xa_params *ps)
{
    if (!ps) return;
    for (int i = 0; i < ps->n; i++) free(ps->p[i].name);
    free(ps->p);
    xa_free(ps->block);
    xa_free(ps->wblock);
    memset(ps, 0, sizeof *ps);
}

/* ---- messages ------------------------------------------------------------------------------ */

const char *xa_dims_text(int nd, const int64_t *s, char *buf, size_t cap)
{
    size_t off = (size_t)snprintf(buf, cap, "(");
    for (int k = 0; k < nd && off < cap; k++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%lld", k ? ", " : "", (long long)s[k]);
    if (nd == 1 && off < cap) off += (size_t)snprintf(buf + off, cap - off, ",");
    if (off < cap) snprintf(buf + off, cap - off, ")");
    return buf;
}

/* "inner = 64 from the shape of 'to_qk.weight', dim = 16 from ..." for the fields of a spec. */
static const char *why_text(const xa_param *p, const xa_cfg *cfg, char *buf, size_t cap)
{
    const char *d[XATTN_MAX_DIMS];
    size_t len[XATTN_MAX_DIMS];
    int nd = split_dims(p->spec->shape, d, len);
    size_t off = 0;
    buf[0] = '\0';
    for (int k = 0; k < nd && off < cap; k++) {
        int64_t v;
        int fi;
        if (!eval_dim(d[k], len[k], cfg, &v, &fi) || fi == -1) continue;
        if (fi < -1) fi = -2 - fi;
        if (strstr(buf, cfg->f[fi].name)) continue;
        off += (size_t)snprintf(buf + off, cap - off, "%s%s = %lld from the %s", off ? "; " : "",
                                cfg->f[fi].name, (long long)cfg->v[fi], cfg->how[fi]);
    }
    return buf;
}

/* ---- loading ------------------------------------------------------------------------------- */

static xattn_status check_one(xa_param *p, const xattn_safetensors *st, const char *prefix,
                              const xa_cfg *cfg)
{
    char full[NAME_MAX_LEN], shown[XA_IO_NAME_CAP];
    if ((size_t)snprintf(full, sizeof full, "%s%s", prefix, p->name) >= sizeof full)
        return xa_error(XATTN_ERR_ARG, "prefix '%s' is too long",
                        xa_io_printable(prefix, shown, sizeof shown));
    xa_io_printable(full, shown, sizeof shown);
    long idx = xattn_st_find(st, full);
    if (idx < 0) {
        p->present = 0;
        if (p->flags & XA_P_OPT) return XATTN_OK;
        return xa_error(XATTN_ERR_NOT_FOUND, "tensor '%s' is missing (%s)", shown,
                        p->spec->what ? p->spec->what : "required");
    }
    if (p->flags & XA_P_ABSENT) {
        const char *c = p->spec->cond;
        int neg = c && *c == '!';
        return xa_error(XATTN_ERR_FORMAT,
                        "tensor '%s' is present but %s is %s (%s), so the module "
                        "would ignore it",
                        shown, c ? c + neg : "its condition", neg ? "True" : "False",
                        c && xa_cfg_find(cfg, c + neg) >= 0 ? cfg->how[xa_cfg_find(cfg, c + neg)]
                                                            : "no such option");
    }
    int nd;
    int64_t sh[XATTN_MAX_DIMS];
    xattn_status s = xattn_st_info(st, (size_t)idx, &p->src_dtype, &nd, sh);
    if (s) return s;
    if (p->src_dtype != XATTN_F32 && p->src_dtype != XATTN_F16 && p->src_dtype != XATTN_BF16 &&
        p->src_dtype != XATTN_F64)
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "tensor '%s' has dtype %s; expected F32, F16, BF16 or F64", shown,
                        xattn_dtype_name(p->src_dtype));
    int ok = nd == p->ndim;
    for (int k = 0; ok && k < nd; k++) ok = sh[k] == p->shape[k];
    if (!ok) {
        char got[128], want[128], why[512];
        why_text(p, cfg, why, sizeof why);
        return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s; expected %s%s%s%s", shown,
                        xa_dims_text(nd, sh, got, sizeof got),
                        xa_dims_text(p->ndim, p->shape, want, sizeof want), why[0] ? " (" : "", why,
                        why[0] ? ")" : "");
    }
    p->present = 1;
    return XATTN_OK;
}

static int64_t numel(const xa_param *p)
{
    int64_t n = 1;
    for (int k = 0; k < p->ndim; k++) n *= p->shape[k];
    return n;
}

/* How parameter p is kept under weights mode `mode` (xattn_weights) given its source dtype. */
static int kept_as(const xa_param *p, int mode)
{
    if (!(p->flags & XA_P_LIN) || p->ndim != 2) return XA_W_F32;
    switch (mode) {
    case XATTN_WEIGHTS_BF16: return XA_W_BF16;
    case XATTN_WEIGHTS_F16: return XA_W_F16;
    case XATTN_WEIGHTS_INT8: return XA_W_Q8;
    case XATTN_WEIGHTS_AUTO:
        return p->src_dtype == XATTN_BF16  ? XA_W_BF16
               : p->src_dtype == XATTN_F16 ? XA_W_F16
                                           : XA_W_F32;
    default: return XA_W_F32;
    }
}

/* The parameters kept in 16 bits or int8: every int8 scale (float), then the rows, each
 * parameter 64-byte aligned; glued parameters of one type stay contiguous (a glued q|k|v is
 * one (3h, K) matrix with 3h scales). */
static xattn_status layout_reduced(xa_params *ps)
{
    int64_t rows = 0, bytes = 0;
    for (int pass = 0; pass < 2; pass++) {
        int64_t srow = 0, off = 0;
        int prev = XA_W_F32;
        for (int i = 0; i < ps->n; i++) {
            xa_param *p = &ps->p[i];
            if (!p->present || p->wdt == XA_W_F32) {
                prev = XA_W_F32;
                continue;
            }
            const int64_t es = p->wdt == XA_W_Q8 ? 1 : 2;
            if (!((p->flags & XA_P_GLUE) && prev == p->wdt) && off % 64) off += 64 - off % 64;
            if (pass) {
                uint8_t *b = ps->wblock;
                p->w = b + (rows * 4 + 63) / 64 * 64 + off;
                p->qscale = p->wdt == XA_W_Q8 ? (float *)(void *)b + srow : NULL;
            }
            if (p->wdt == XA_W_Q8) srow += p->shape[0];
            off += numel(p) * es;
            prev = p->wdt;
        }
        if (!pass) {
            rows = srow;
            bytes = off;
            if (!bytes) return XATTN_OK;
            const double total = (double)((rows * 4 + 63) / 64 * 64) + (double)bytes;
            if (total > 1e12)
                return xa_error(XATTN_ERR_NOMEM,
                                "reduced-precision parameters of %.0f bytes are "
                                "too large",
                                total);
            if (!(ps->wblock = xa_alloc((size_t)total))) return XATTN_ERR_NOMEM;
        }
    }
    return XATTN_OK;
}

/* Places the present parameters: 16-float aligned slots, glued ones right after the previous. */
static xattn_status layout(xa_params *ps, int all)
{
    int64_t off = 0;
    for (int i = 0; i < ps->n; i++) {
        xa_param *p = &ps->p[i];
        if (all) p->present = !(p->flags & (XA_P_ABSENT | XA_P_NOCREATE));
        if (!p->present || p->wdt != XA_W_F32) continue;
        if (!(p->flags & XA_P_GLUE) && off % 16) off += 16 - off % 16;
        int64_t e;
        if (xa_mul_ok(numel(p), 1, &e) || e > INT64_MAX / 8 - off)
            return xa_error(XATTN_ERR_NOMEM, "parameters overflow");
        off += e;
    }
    ps->numel = off;
    if ((double)off * 4 > 1e12)
        return xa_error(XATTN_ERR_NOMEM, "parameters of %lld floats are too large", (long long)off);
    ps->block = xa_alloc((size_t)(off ? off : 1) * sizeof(float));
    if (!ps->block) return XATTN_ERR_NOMEM;
    off = 0;
    for (int i = 0; i < ps->n; i++) {
        xa_param *p = &ps->p[i];
        if (!p->present || p->wdt != XA_W_F32) continue;
        if (!(p->flags & XA_P_GLUE) && off % 16) off += 16 - off % 16;
        p->data = ps->block + off;
        off += numel(p);
    }
    return layout_reduced(ps);
}

/* A parameter kept in 16 bits or int8, read a slab of rows at a time (never whole in float32)
 * and converted: rounded to nearest even (exact when the file holds the same type), or
 * quantised. */
static xattn_status load_reduced(xa_param *p, const xattn_safetensors *st, const char *full)
{
    const int64_t R = p->shape[0], K = p->shape[1], n = numel(p);
    const int64_t slab = XA_MAX((int64_t)1, ((int64_t)1 << 18) / XA_MAX(K, (int64_t)1));
    float *tmp = xa_alloc((size_t)(XA_MIN(slab, R) * K) * sizeof(float));
    if (!tmp && R > 0 && K > 0) return XATTN_ERR_NOMEM;
    xattn_status s = XATTN_OK;
    char shown[XA_IO_NAME_CAP];
    for (int64_t r = 0; r < R && !s; r += slab) {
        const int64_t rr = XA_MIN(slab, R - r);
        s = xa_st_read_f32_part(st, full, n, r * K, rr * K, tmp);
        if (s) break;
        if (p->wdt == XA_W_Q8) {
            if (xa_q8_quantize_rows(tmp, rr, K, (int8_t *)p->w + r * K, p->qscale + r))
                s = xa_error(XATTN_ERR_FORMAT,
                             "tensor '%s' holds a value that is not finite: it cannot be "
                             "quantised to int8",
                             xa_io_printable(full, shown, sizeof shown));
            continue;
        }
        const int f16 = p->wdt == XA_W_F16;
        uint16_t *h = (uint16_t *)p->w + r * K;
        for (int64_t k = 0; k < rr * K; k++) {
            h[k] = xa_f32_to_half(tmp[k], f16);
            if (f16 && (h[k] & 0x7fffu) == 0x7c00u && isfinite(tmp[k])) {
                s = xa_error(XATTN_ERR_FORMAT,
                             "tensor '%s' holds %g, beyond the range of float16 (65504): load "
                             "it with weights bf16 or f32",
                             xa_io_printable(full, shown, sizeof shown), (double)tmp[k]);
                break;
            }
        }
    }
    xa_free(tmp);
    return s;
}

int xa_params_reduced(const xa_params *ps)
{
    for (int i = 0; i < ps->n; i++)
        if (ps->p[i].present && ps->p[i].wdt != XA_W_F32) return 1;
    return 0;
}

int xa_params_weights(const xa_params *const *ps, int n)
{
    if (n > 0 && ps[0]->weights != XATTN_WEIGHTS_AUTO) return ps[0]->weights;
    int seen = -1;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < ps[t]->n; i++) {
            const xa_param *p = &ps[t]->p[i];
            if (!p->present || !(p->flags & XA_P_LIN)) continue;
            if (seen >= 0 && seen != p->wdt) return XATTN_WEIGHTS_AUTO;
            seen = p->wdt;
        }
    return seen == XA_W_BF16  ? XATTN_WEIGHTS_BF16
           : seen == XA_W_F16 ? XATTN_WEIGHTS_F16
                              : XATTN_WEIGHTS_F32;
}

void xa_param_read(const xa_params *ps, int i, float *dst)
{
    const xa_param *p = &ps->p[i];
    if (!p->present) return;
    if (p->wdt == XA_W_F32) {
        memcpy(dst, p->data, (size_t)numel(p) * sizeof(float));
        return;
    }
    xa_wt_rows_f32(NULL, xa_param_w(ps, i), 0, p->shape[0], p->shape[1], dst);
}

xattn_status xa_params_load(xa_params *ps, const xattn_safetensors *st, const char *prefix,
                            const char *fn)
{
    xattn_status s;
    (void)fn;
    for (int i = 0; i < ps->n; i++)
        if ((s = check_one(&ps->p[i], st, prefix, ps->cfg))) return s;
    for (int i = 0; i < ps->n; i++) ps->p[i].wdt = kept_as(&ps->p[i], ps->weights);
    /* glued parameters are one matrix to the module: one type for the run (float32 when a
     * file stores them in different types) */
    for (int i = 0, j; i < ps->n; i = j) {
        int same = 1;
        for (j = i + 1; j < ps->n && (ps->p[j].flags & XA_P_GLUE); j++)
            same &= ps->p[j].wdt == ps->p[i].wdt;
        for (int k = i; !same && k < j; k++) ps->p[k].wdt = XA_W_F32;
    }
    if ((s = layout(ps, 0))) return s;
    char full[NAME_MAX_LEN];
    for (int i = 0; i < ps->n; i++) {
        xa_param *p = &ps->p[i];
        if (!p->present) continue;
        snprintf(full, sizeof full, "%s%s", prefix, p->name);
        if ((p->wdt != XA_W_F32) ? (s = load_reduced(p, st, full))
                                 : (s = xa_st_read_f32(st, full, p->data, numel(p))))
            return s;
    }
    return XATTN_OK;
}

/* ---- creation ------------------------------------------------------------------------------- */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void xa_rng_init(xa_rng *r, uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a of the name */
    for (const char *c = name; c && *c; c++) h = (h ^ (unsigned char)*c) * 0x100000001b3ull;
    r->s = seed ^ h;
    r->has_spare = 0;
    splitmix(&r->s);
}

double xa_rng_uniform(xa_rng *r) { return (double)(splitmix(&r->s) >> 11) * 0x1.0p-53; }

double xa_rng_normal(xa_rng *r)
{
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double u1, u2 = xa_rng_uniform(r);
    do u1 = xa_rng_uniform(r);
    while (u1 <= 0);
    double m = sqrt(-2.0 * log(u1));
    r->spare = m * sin(6.283185307179586476925286766559 * u2);
    r->has_spare = 1;
    return m * cos(6.283185307179586476925286766559 * u2);
}

static void fans(const xa_param *p, double *fin, double *fout)
{
    double rec = 1;
    for (int k = 2; k < p->ndim; k++) rec *= (double)p->shape[k];
    *fin = p->ndim >= 2 ? (double)p->shape[1] * rec : (double)(p->ndim ? p->shape[0] : 1);
    *fout = p->ndim >= 1 ? (double)p->shape[0] * rec : 1;
}

static void draw(const xa_param *p, uint64_t seed)
{
    xa_rng r;
    xa_rng_init(&r, seed, p->name);
    const int64_t n = numel(p);
    double fin, fout, b = 0;
    fans(p, &fin, &fout);
    xa_init how = p->spec->init;
    if (how == XA_INIT_LINEAR) b = 1.0 / sqrt(fin);
    if (how == XA_INIT_BIAS) b = p->fan_in > 0 ? 1.0 / sqrt((double)p->fan_in) : 0;
    if (how == XA_INIT_XAVIER) b = sqrt(6.0 / (fin + fout));
    for (int64_t i = 0; i < n; i++) {
        double v = 0;
        switch (how) {
        case XA_INIT_LINEAR:
        case XA_INIT_BIAS:
        case XA_INIT_XAVIER: v = -b + 2 * b * xa_rng_uniform(&r); break;
        case XA_INIT_ONES: v = 1; break;
        case XA_INIT_ZEROS: v = 0; break;
        case XA_INIT_XAVIER_NORMAL: v = sqrt(2.0 / (fin + fout)) * xa_rng_normal(&r); break;
        case XA_INIT_NORMAL: v = p->init_arg * xa_rng_normal(&r); break;
        }
        p->data[i] = (float)v;
    }
}

xattn_status xa_params_create(xa_params *ps, uint64_t seed)
{
    for (int i = 0; i < ps->n; i++) ps->p[i].wdt = XA_W_F32; /* created in float32 */
    xattn_status s = layout(ps, 1);
    if (s) return s;
    for (int i = 0; i < ps->n; i++) {
        xa_param *p = &ps->p[i];
        p->src_dtype = XATTN_F32;
        if (p->present) draw(p, seed);
    }
    return XATTN_OK;
}

/* ---- export --------------------------------------------------------------------------------- */

static uint16_t to_half(float f, xattn_dtype t)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if (t == XATTN_BF16) return (uint16_t)(u >> 16); /* exact: the value came from a bf16 */
    /* exact for values that came from an F16 (normal, subnormal, zero, inf, nan) */
    uint32_t sign = (u >> 16) & 0x8000u, e = (u >> 23) & 0xffu, m = u & 0x7fffffu;
    if (e == 0xff) return (uint16_t)(sign | 0x7c00u | (m ? 0x200u : 0));
    int ee = (int)e - 127 + 15;
    if (ee >= 31) return (uint16_t)(sign | 0x7c00u);
    if (ee <= 0) {
        if (ee < -10) return (uint16_t)sign;
        m |= 0x800000u;
        return (uint16_t)(sign | (m >> (14 - ee)));
    }
    return (uint16_t)(sign | ((uint32_t)ee << 10) | (m >> 13));
}

static xattn_status meta_pairs(const xa_cfg *cfg, const char *kind, const char **kv, char *text,
                               size_t cap, size_t *n_meta)
{
    size_t n = 0, off = 0;
    kv[n++] = "xattn_kind";
    kv[n++] = kind;
    for (int i = 0; i < cfg->n; i++) {
        const xa_field *f = &cfg->f[i];
        if (f->flags & (XA_F_DERIVED | XA_F_NOMETA)) continue;
        if ((f->flags & XA_F_OPTIONAL) && cfg->from[i] == XA_FROM_UNSET) continue;
        char val[64];
        xa_cfg_text(cfg, i, val, sizeof val);
        const char *key = f->meta ? f->meta : f->name;
        int kl = (int)strcspn(key, "|");
        int w = snprintf(text + off, cap - off, "%.*s", kl, key);
        if (w < 0 || (size_t)w + strlen(val) + 2 >= cap - off)
            return xa_error(XATTN_ERR_NOMEM, "metadata too long");
        kv[n++] = text + off;
        off += (size_t)w + 1;
        kv[n++] = text + off;
        off += (size_t)snprintf(text + off, cap - off, "%s", val) + 1;
    }
    *n_meta = n / 2;
    return XATTN_OK;
}

xattn_status xa_params_save(const xa_params *ps, const xa_cfg *cfg, const char *kind,
                            const char *prefix, const char *path, const xattn_save_opts *o)
{
    const size_t n_extra = o ? o->n_extra : 0, n_more = o ? o->n_meta : 0;
    if (n_more > 64) return xa_error(XATTN_ERR_ARG, "too many metadata pairs");
    /* one spare slot: the cleanup below walks n + 1 entries */
    xattn_st_entry *e = calloc((size_t)ps->n + n_extra + 1, sizeof *e);
    char **names = calloc((size_t)ps->n + 1, sizeof *names);
    void **conv = calloc((size_t)ps->n + 1, sizeof *conv);
    const char *kv[2 * (XA_MAX_FIELDS + 1 + 64)];
    char text[4096];
    size_t n = 0, n_meta = 0;
    xattn_status s = XATTN_OK;
    if (!e || !names || !conv) s = xa_error(XATTN_ERR_NOMEM, "out of memory saving '%s'", path);
    for (int i = 0; !s && i < ps->n; i++) {
        const xa_param *p = &ps->p[i];
        if (!p->present) continue;
        size_t nl = strlen(prefix) + strlen(p->name) + 1;
        if (!(names[n] = malloc(nl))) {
            s = xa_error(XATTN_ERR_NOMEM, "out of memory");
            break;
        }
        snprintf(names[n], nl, "%s%s", prefix, p->name);
        e[n].name = names[n];
        e[n].ndim = p->ndim;
        memcpy(e[n].shape, p->shape, sizeof p->shape);
        e[n].dtype = XATTN_F32;
        e[n].data = p->data;
        if (p->wdt == XA_W_Q8) {
            s = xa_error(XATTN_ERR_UNSUPPORTED,
                         "cannot save '%s': its weights are kept as int8 (weights int8), which "
                         "does not give back the weights loaded; save the module loaded with "
                         "float32 or 16-bit weights",
                         path);
            n++;
            break;
        }
        if (p->wdt != XA_W_F32 && !(o && o->float32)) { /* 16-bit: written as kept */
            e[n].dtype = p->wdt == XA_W_F16 ? XATTN_F16 : XATTN_BF16;
            e[n].data = p->w;
        } else if (p->wdt != XA_W_F32) { /* 16-bit, asked as float32 */
            float *f = malloc((size_t)(numel(p) ? numel(p) : 1) * sizeof(float));
            if (!(conv[n] = f)) {
                s = xa_error(XATTN_ERR_NOMEM, "out of memory");
                break;
            }
            xa_param_read(ps, i, f);
            e[n].data = f;
        } else if (!(o && o->float32) &&
                   (p->src_dtype == XATTN_F16 || p->src_dtype == XATTN_BF16)) {
            const int64_t m = numel(p);
            uint16_t *h = malloc((size_t)(m ? m : 1) * 2);
            if (!(conv[n] = h)) {
                s = xa_error(XATTN_ERR_NOMEM, "out of memory");
                break;
            }
            for (int64_t k = 0; k < m; k++) h[k] = to_half(p->data[k], p->src_dtype);
            e[n].dtype = p->src_dtype;
            e[n].data = h;
        }
        n++;
    }
    if (!s) s = meta_pairs(cfg, kind, kv, text, sizeof text, &n_meta);
    const size_t n_own = n;
    for (size_t k = 0; !s && k < n_extra; k++) {
        for (size_t j = 0; j < n_own && !s; j++)
            if (!strcmp(e[j].name, o->extra[k].name))
                s = xa_error(XATTN_ERR_ARG, "saving '%s': tensor '%s' is a parameter's name", path,
                             o->extra[k].name);
        e[n++] = o->extra[k];
    }
    for (size_t k = 0; !s && k < n_more; k++) {
        kv[2 * n_meta] = o->meta_kv[2 * k];
        kv[2 * n_meta + 1] = o->meta_kv[2 * k + 1];
        n_meta++;
    }
    /* written next to the file, then renamed into place: a failure leaves the old file */
    char tmp[4200];
    if (!s && (size_t)snprintf(tmp, sizeof tmp, "%s.part", path) >= sizeof tmp)
        s = xa_error(XATTN_ERR_ARG, "path '%s' is too long", path);
    if (!s) s = xattn_st_save(tmp, e, n, kv, n_meta);
    if (!s && rename(tmp, path)) {
        s = xa_error(XATTN_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
        remove(tmp);
    }
    for (size_t i = 0; i < (size_t)ps->n + 1 && names && conv; i++) {
        free(names[i]);
        free(conv[i]);
    }
    free(names);
    free(conv);
    free(e);
    return s;
}

/* ---- binding fields from the file ------------------------------------------------------------ */

int xa_has(const xattn_safetensors *st, const char *prefix, const char *name)
{
    char full[NAME_MAX_LEN];
    int n = snprintf(full, sizeof full, "%s%s", prefix, name);
    return n > 0 && (size_t)n < sizeof full && xattn_st_find(st, full) >= 0;
}

static void bind_presence(xa_cfg *c, const xa_pspec *t, int n, const xattn_safetensors *st,
                          const char *prefix, const char *stem)
{
    char rel[NAME_MAX_LEN];
    for (int k = 0; k < n; k++) {
        const char *cond = t[k].cond;
        if (!cond || *cond == '!') continue;
        int i = xa_cfg_find(c, cond);
        if (i < 0 || !(c->f[i].flags & XA_F_PRESENCE) || c->from[i] != XA_FROM_UNSET) continue;
        snprintf(rel, sizeof rel, "%s%s", stem, t[k].name);
        int has = xa_has(st, prefix, rel);
        xa_cfg_set(c, i, has, XA_FROM_SHAPE, "%s of '%s%s'", has ? "presence" : "absence", prefix,
                   rel);
    }
}

xattn_status xa_cfg_bind_shapes(xa_cfg *c, const xa_pspec *t, int n, const xattn_safetensors *st,
                                const char *prefix, const char *stem)
{
    bind_presence(c, t, n, st, prefix, stem);
    char full[NAME_MAX_LEN];
    for (int k = 0; k < n; k++) {
        if (!cond_holds(t[k].cond, c) && t[k].cond) continue;
        if ((size_t)snprintf(full, sizeof full, "%s%s%s", prefix, stem, t[k].name) >= sizeof full)
            continue;
        long idx = xattn_st_find(st, full);
        if (idx < 0) continue;
        xattn_dtype dt;
        int nd;
        int64_t sh[XATTN_MAX_DIMS];
        xattn_status s = xattn_st_info(st, (size_t)idx, &dt, &nd, sh);
        if (s) return s;
        const char *d[XATTN_MAX_DIMS];
        size_t len[XATTN_MAX_DIMS];
        if (split_dims(t[k].shape, d, len) != nd) continue; /* reported by the load */
        for (int j = 0; j < nd; j++) {
            char tok[64];
            if (len[j] >= sizeof tok) continue;
            memcpy(tok, d[j], len[j]);
            tok[len[j]] = '\0';
            char *name = tok;
            int64_t mul = 1;
            char *star = strchr(tok, '*');
            if (star) {
                *star = '\0';
                if (!xa_parse_int(tok, &mul) || mul <= 0) continue;
                name = star + 1;
            }
            int i = xa_cfg_find(c, name);
            if (i < 0 || !(c->f[i].flags & XA_F_SHAPE) || c->from[i] != XA_FROM_UNSET) continue;
            char shown[XA_IO_NAME_CAP];
            if (sh[j] / mul < c->f[i].min)
                return xa_error(XATTN_ERR_SHAPE,
                                "tensor '%s' has %lld in dimension %d, which gives %s = %lld "
                                "(at least %.0f)",
                                xa_io_printable(full, shown, sizeof shown), (long long)sh[j], j,
                                name, (long long)(sh[j] / mul), c->f[i].min);
            if (sh[j] % mul) continue; /* reported by the load */
            xa_cfg_set(c, i, (double)(sh[j] / mul), XA_FROM_SHAPE, "shape of '%s'",
                       xa_io_printable(full, shown, sizeof shown));
        }
    }
    return XATTN_OK;
}

xattn_status xa_count_layers(const xattn_safetensors *st, const char *prefix, const char *stem,
                             const char *key, int64_t max, int64_t *L)
{
    char rel[NAME_MAX_LEN];
    int64_t l = 0;
    for (; l <= max; l++) {
        snprintf(rel, sizeof rel, "%s%lld.%s", stem, (long long)l, key);
        if (!xa_has(st, prefix, rel)) break;
    }
    const size_t pl = strlen(prefix), sl = strlen(stem);
    for (size_t i = 0; i < xattn_st_count(st); i++) {
        const char *n = xattn_st_name(st, i);
        if (!n || strncmp(n, prefix, pl) || strncmp(n + pl, stem, sl)) continue;
        const char *p = n + pl + sl, *q = p;
        if (*p < '0' || *p > '9') continue;
        int64_t idx = 0;
        int big = 0;
        for (; *q >= '0' && *q <= '9'; q++) {
            if (idx > (INT64_MAX - 9) / 10)
                big = 1;
            else
                idx = idx * 10 + (*q - '0');
        }
        if (*q != '.') continue;
        char shown[XA_IO_NAME_CAP], pp[XA_IO_NAME_CAP];
        xa_io_printable(n, shown, sizeof shown);
        if (q - p > 1 && *p == '0')
            return xa_error(XATTN_ERR_FORMAT, "tensor '%s': layer index has leading zeros", shown);
        if (!big && idx < l) continue;
        return xa_error(XATTN_ERR_NOT_FOUND,
                        "tensor '%s' lies outside the %lld layer%s found: '%s%s%lld.%s' is "
                        "missing (layers must be numbered 0..N-1, each complete)",
                        shown, (long long)l, l == 1 ? "" : "s",
                        xa_io_printable(prefix, pp, sizeof pp), stem, (long long)l, key);
    }
    *L = l;
    return XATTN_OK;
}

float xa_head_scale(int64_t dh) { return (float)pow((double)dh, -0.5); }

/* Whether dim list `shape` names field `name` (alone or as N*name). */
static int names_field(const char *shape, const char *name)
{
    const char *d[XATTN_MAX_DIMS];
    size_t len[XATTN_MAX_DIMS];
    int nd = split_dims(shape, d, len);
    for (int k = 0; k < nd; k++) {
        const char *star = memchr(d[k], '*', len[k]);
        const char *b = star ? star + 1 : d[k];
        size_t l = len[k] - (size_t)(b - d[k]);
        if (l == strlen(name) && !strncmp(b, name, l)) return 1;
    }
    return 0;
}

xattn_status xa_cfg_require_shapes(const xa_cfg *c, const xa_pspec *t, int n,
                                   const xattn_safetensors *st, const char *prefix,
                                   const char *stem)
{
    char full[NAME_MAX_LEN], shown[XA_IO_NAME_CAP], got[128];
    for (int i = 0; i < c->n; i++) {
        if ((c->f[i].flags & (XA_F_SHAPE | XA_F_REQUIRED)) != (XA_F_SHAPE | XA_F_REQUIRED) ||
            c->from[i] != XA_FROM_UNSET)
            continue;
        for (int k = 0; k < n; k++) {
            if (!names_field(t[k].shape, c->f[i].name)) continue;
            snprintf(full, sizeof full, "%s%s%s", prefix, stem, t[k].name);
            xa_io_printable(full, shown, sizeof shown);
            long idx = xattn_st_find(st, full);
            if (idx < 0)
                return xa_error(XATTN_ERR_NOT_FOUND, "tensor '%s' is missing (%s)", shown,
                                t[k].what ? t[k].what : "required");
            xattn_dtype dt;
            int nd;
            int64_t sh[XATTN_MAX_DIMS];
            xattn_status s = xattn_st_info(st, (size_t)idx, &dt, &nd, sh);
            if (s) return s;
            return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s; expected (%s)%s%s%s", shown,
                            xa_dims_text(nd, sh, got, sizeof got), t[k].shape,
                            t[k].what ? " (" : "", t[k].what ? t[k].what : "",
                            t[k].what ? ")" : "");
        }
    }
    return XATTN_OK;
}
