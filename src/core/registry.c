/*
 * The module registry: detection of kinds and prefixes from tensor names, open / create / save,
 * description of config, parameters, inputs and outputs, and forward by named arrays with every
 * shape checked against the kind's symbolic shapes.
 */
#include "core/registry.h"
#include "io/io_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const xa_kind xa_kind_conv2d_cross;
extern const xa_kind xa_kind_mutual;
extern const xa_kind xa_kind_mha, xa_kind_attention;
extern const xa_kind xa_kind_joint, xa_kind_interlaced, xa_kind_bert_decoder;
extern const xa_kind xa_kind_bidir, xa_kind_bidir_transformer;
extern const xa_kind xa_kind_multiview, xa_kind_hallo_audio;

const xa_kind *const xa_kinds[] = {&xa_kind_bidir,        &xa_kind_bidir_transformer,
                                   &xa_kind_mha,          &xa_kind_attention,
                                   &xa_kind_mutual,       &xa_kind_joint,
                                   &xa_kind_interlaced,   &xa_kind_multiview,
                                   &xa_kind_hallo_audio,  &xa_kind_bert_decoder,
                                   &xa_kind_conv2d_cross, NULL};

const xa_kind *xa_kind_find(const char *name)
{
    for (int i = 0; name && xa_kinds[i]; i++)
        if (!strcmp(xa_kinds[i]->name, name)) return xa_kinds[i];
    return NULL;
}

/* ---- options helpers ------------------------------------------------------------------------ */

static void kv_add(xa_kvbuf *b, const char *key, const char *fmt, double v)
{
    if (b->n >= XA_MAX_FIELDS) return;
    snprintf(b->text[b->n], sizeof b->text[b->n], fmt, v);
    b->kv[b->n].key = key;
    b->kv[b->n].value = b->text[b->n];
    b->n++;
}

void xa_kv_int(xa_kvbuf *b, const char *key, int64_t v)
{
    if (v) kv_add(b, key, "%.0f", (double)v);
}

void xa_kv_real(xa_kvbuf *b, const char *key, double v)
{
    if (v != 0) kv_add(b, key, "%.17g", v);
}

void xa_kv_bool(xa_kvbuf *b, const char *key, int v)
{
    if (v == XATTN_NO || v == XATTN_YES) {
        kv_add(b, key, "%.0f", v == XATTN_YES ? 1.0 : 0.0);
        return;
    }
    if (v) kv_add(b, key, "bad", 0); /* parsed as an error naming the option */
}

void xa_kv_enum(xa_kvbuf *b, const char *key, const char *const *names, int v)
{
    if (!v || b->n >= XA_MAX_FIELDS) return;
    int n = 0;
    while (names[n]) n++;
    snprintf(b->text[b->n], sizeof b->text[b->n], "%s", v >= 1 && v <= n ? names[v - 1] : "?");
    b->kv[b->n].key = key;
    b->kv[b->n].value = b->text[b->n];
    b->n++;
}

/* ---- open / create / free ------------------------------------------------------------------- */

static xa_mod *mod_alloc(const xa_kind *k, const char *prefix)
{
    xa_mod *m = calloc(1, k->size);
    if (!m) {
        xa_error(XATTN_ERR_NOMEM, "out of memory");
        return NULL;
    }
    m->kind = k;
    snprintf(m->prefix, sizeof m->prefix, "%s", prefix ? prefix : "");
    xa_cfg_init(&m->cfg, k->fields, k->n_fields);
    return m;
}

void xa_mod_free(xa_mod *m)
{
    if (!m) return;
    if (m->kind->destroy) m->kind->destroy(m);
    xa_params_free(&m->params);
    free(m);
}

const char *xattn_weights_name(int w)
{
    static const char *const names[] = {"auto", "f32", "bf16", "f16", "int8"};
    return w >= 0 && w < (int)XA_N(names) ? names[w] : NULL;
}

int xattn_weights_parse(const char *name)
{
    static const struct {
        const char *name;
        int w;
    } t[] = {{"auto", XATTN_WEIGHTS_AUTO},   {"f32", XATTN_WEIGHTS_F32},
             {"fp32", XATTN_WEIGHTS_F32},    {"float32", XATTN_WEIGHTS_F32},
             {"bf16", XATTN_WEIGHTS_BF16},   {"bfloat16", XATTN_WEIGHTS_BF16},
             {"f16", XATTN_WEIGHTS_F16},     {"fp16", XATTN_WEIGHTS_F16},
             {"float16", XATTN_WEIGHTS_F16}, {"int8", XATTN_WEIGHTS_INT8}};
    for (size_t i = 0; name && i < XA_N(t); i++)
        if (!strcmp(name, t[i].name)) return t[i].w;
    char shown[XA_IO_NAME_CAP];
    xa_error(XATTN_ERR_ARG, "weights '%s': expected auto, f32, bf16, f16 or int8",
             name ? xa_io_printable(name, shown, sizeof shown) : "(null)");
    return -1;
}

static xattn_status mod_open(const xa_kind *k, const xattn_safetensors *st, const char *prefix,
                             const xa_kv *opts, size_t n_opts, int weights, xa_mod **out)
{
    *out = NULL;
    if (!prefix) prefix = "";
    if (strlen(prefix) >= sizeof((xa_mod *)0)->prefix) {
        char pp[XA_IO_NAME_CAP];
        return xa_error(XATTN_ERR_ARG, "prefix '%s' is too long",
                        xa_io_printable(prefix, pp, sizeof pp));
    }
    xa_mod *m = mod_alloc(k, prefix);
    if (!m) return XATTN_ERR_NOMEM;
    xattn_status s = XATTN_OK;
    if (!xattn_weights_name(weights))
        s = xa_error(XATTN_ERR_ARG, "%s: weights = %d is not an xattn_weights value", k->name,
                     weights);
    m->params.weights = weights;
    if (!s) s = k->build(m, st, prefix, opts, n_opts);
    int linear = 0;
    for (int i = 0; !s && i < m->params.n; i++) linear |= !!(m->params.p[i].flags & XA_P_LIN);
    if (!s && !linear && weights != XATTN_WEIGHTS_AUTO && weights != XATTN_WEIGHTS_F32)
        s = xa_error(XATTN_ERR_UNSUPPORTED,
                     "%s: weights %s: the kind has no linear layers to keep in another type "
                     "(weights f32 only)",
                     k->name, xattn_weights_name(weights));
    if (!s) s = xa_params_load(&m->params, st, prefix, k->name);
    if (!s && k->bind) s = k->bind(m);
    if (s) {
        xa_mod_free(m);
        return s;
    }
    *out = m;
    xa_clear_error();
    return XATTN_OK;
}

xattn_status xa_mod_open(const xa_kind *k, const xattn_safetensors *st, const char *prefix,
                         const xa_kv *opts, size_t n_opts, xa_mod **out)
{
    return mod_open(k, st, prefix, opts, n_opts, XATTN_WEIGHTS_F32, out);
}

xattn_status xa_mod_open_w(const xa_kind *k, const xattn_safetensors *st, const char *prefix,
                           const xa_kv *opts, size_t n_opts, int weights, xa_mod **out)
{
    return mod_open(k, st, prefix, opts, n_opts, weights, out);
}

void xa_copy_config(const void *src, void *dst, size_t size)
{
    if (!dst) return;
    if (src)
        memcpy(dst, src, size);
    else
        memset(dst, 0, size);
}

xattn_status xa_mod_create(const xa_kind *k, const xa_kv *opts, size_t n_opts, uint64_t seed,
                           xa_mod **out)
{
    *out = NULL;
    xa_mod *m = mod_alloc(k, "");
    if (!m) return XATTN_ERR_NOMEM;
    xattn_status s = k->build(m, NULL, "", opts, n_opts);
    if (!s) s = xa_params_create(&m->params, seed);
    if (!s && k->bind) s = k->bind(m);
    if (s) {
        xa_mod_free(m);
        return s;
    }
    *out = m;
    return XATTN_OK;
}

/* ---- the public registry -------------------------------------------------------------------- */

struct xattn_module {
    xa_mod *m;
    char text[XA_MAX_FIELDS][64]; /* config values as text */
};

static xattn_module *wrap(xa_mod *m)
{
    xattn_module *w = calloc(1, sizeof *w);
    if (!w) {
        xa_mod_free(m);
        xa_error(XATTN_ERR_NOMEM, "out of memory");
        return NULL;
    }
    w->m = m;
    for (int i = 0; i < m->cfg.n; i++) xa_cfg_text(&m->cfg, i, w->text[i], sizeof w->text[i]);
    return w;
}

size_t xattn_kind_count(void)
{
    size_t n = 0;
    while (xa_kinds[n]) n++;
    return n;
}

xattn_status xattn_kind_info(size_t i, xattn_kind_desc *d)
{
    if (!d || i >= xattn_kind_count())
        return xa_error(XATTN_ERR_ARG, "xattn_kind_info: index %zu out of range", i);
    const xa_kind *k = xa_kinds[i];
    memset(d, 0, sizeof *d);
    d->name = k->name;
    d->reference = k->reference;
    d->summary = k->summary;
    d->n_args = (size_t)k->n_fields;
    d->state_dict = k->state_dict ? k->state_dict : k->anchor ? k->anchor : "";
    xa_clear_error();
    return XATTN_OK;
}

static const xa_field *field_of(const char *kind, size_t j)
{
    const xa_kind *k = xa_kind_find(kind);
    return k && j < (size_t)k->n_fields ? &k->fields[j] : NULL;
}

xattn_status xattn_kind_arg(const char *kind, size_t j, xattn_arg_desc *a)
{
    const xa_field *f = field_of(kind, j);
    if (!f || !a)
        return xa_error(XATTN_ERR_ARG, "xattn_kind_arg: no argument %zu of '%s'", j,
                        kind ? kind : "(null)");
    static const char *const types[] = {"int", "float", "bool", "choice"};
    static _Thread_local char dflt[64], choices[256];
    memset(a, 0, sizeof *a);
    a->name = f->name;
    a->type = types[f->type];
    a->doc = f->doc ? f->doc : "";
    a->required = (f->flags & XA_F_REQUIRED) != 0;
    a->from_shapes = (f->flags & (XA_F_SHAPE | XA_F_PRESENCE)) != 0;
    a->derived = (f->flags & XA_F_DERIVED) != 0;
    xa_cfg c;
    xa_cfg_init(&c, f, 1);
    c.v[0] = f->dflt;
    if (f->flags & (XA_F_REQUIRED | XA_F_DERIVED))
        snprintf(dflt, sizeof dflt, "-");
    else if (f->flags & XA_F_OPTIONAL)
        snprintf(dflt, sizeof dflt, "None");
    else
        xa_cfg_text(&c, 0, dflt, sizeof dflt);
    a->default_value = dflt;
    choices[0] = '\0';
    for (size_t off = 0, e = 0; f->type == XA_T_ENUM && f->enums[e]; e++)
        off += (size_t)snprintf(choices + off, sizeof choices - off, "%s%s", e ? "|" : "",
                                f->enums[e]);
    a->choices = choices;
    xa_clear_error();
    return XATTN_OK;
}

xattn_status xattn_kind_alias(const char *kind, size_t i, xattn_alias_desc *d)
{
    const xa_kind *k = xa_kind_find(kind);
    if (!k || !d || i >= (size_t)k->n_aliases)
        return xa_error(XATTN_ERR_ARG, "xattn_kind_alias: no alias %zu of '%s'", i,
                        kind ? kind : "(null)");
    memset(d, 0, sizeof *d);
    d->alias = k->aliases[i].alias;
    d->name = k->aliases[i].name;
    d->as = k->aliases[i].as ? k->aliases[i].as : "";
    xa_clear_error();
    return XATTN_OK;
}

const char *xattn_kind_brief(const char *kind)
{
    const xa_kind *k = xa_kind_find(kind);
    return k && k->brief ? k->brief : "";
}

const char *xattn_kind_family(const char *kind)
{
    const xa_kind *k = xa_kind_find(kind);
    return k && k->family ? k->family : "";
}

static xattn_status find_kind(const char *name, const xa_kind **k)
{
    if ((*k = xa_kind_find(name))) return XATTN_OK;
    char list[512];
    size_t off = 0;
    for (int i = 0; xa_kinds[i]; i++)
        off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", i ? ", " : "",
                                xa_kinds[i]->name);
    char shown[64];
    return xa_error(XATTN_ERR_ARG, "unknown module kind '%s' (kinds: %s)",
                    xa_io_printable(name ? name : "", shown, sizeof shown), list);
}

/* Whether the module of kind k at `prefix` (its parameter table built from the file's shapes,
 * nothing loaded) reads the tensor `full`. */
static int owns(const xa_kind *k, const xattn_safetensors *st, const char *prefix, const char *full)
{
    xa_mod *m = mod_alloc(k, prefix);
    if (!m) return 0;
    int yes = 0;
    const size_t pl = strlen(prefix);
    if (k->build(m, st, prefix, NULL, 0) == XATTN_OK) {
        for (int i = 0; i < m->params.n && !yes; i++)
            yes = !strncmp(full, prefix, pl) && !strcmp(full + pl, m->params.p[i].name);
    } else {
        /* the outer module needs options to be built (heads the file does not tell): its
         * tensors cannot be listed, so whatever lies under its prefix is taken as its own */
        yes = !strncmp(full, prefix, pl);
    }
    xa_mod_free(m);
    return yes;
}

/* Adds the candidate (k, prefix) unless it is there already. */
static void add_candidate(xattn_found *c, size_t *n, size_t cap, const xa_kind *k,
                          const xattn_safetensors *st, const char *name, size_t pl)
{
    if (*n >= cap || pl >= sizeof c[0].prefix) return;
    memcpy(c[*n].prefix, name, pl);
    c[*n].prefix[pl] = '\0';
    if (k->claims && !k->claims(st, c[*n].prefix)) return;
    for (size_t j = 0; j < *n; j++)
        if (c[j].kind == k->name && !strcmp(c[j].prefix, c[*n].prefix)) return;
    c[(*n)++].kind = k->name;
}

/* Whether a tensor PREFIX + an anchor alternative of some kind has a prefix too long for
 * xattn_found (such a module is not listed). */
static int long_prefixed(const xattn_safetensors *st)
{
    for (size_t t = 0; st && t < xattn_st_count(st); t++) {
        const char *name = xattn_st_name(st, t);
        const size_t nl = name ? strlen(name) : 0;
        for (int i = 0; name && xa_kinds[i]; i++)
            for (const char *a = xa_kinds[i]->anchor; a && *a;) {
                size_t al = strcspn(a, "|");
                if (nl > al && nl - al >= sizeof((xattn_found *)0)->prefix &&
                    !strncmp(name + nl - al, a, al) && name[nl - al - 1] == '.')
                    return 1;
                a += al + (a[al] == '|');
            }
    }
    return 0;
}

/* Candidates: a tensor PREFIX + an anchor alternative marks one. */
static size_t candidates(const xattn_safetensors *st, xattn_found *c, size_t cap)
{
    size_t n = 0;
    for (size_t t = 0; st && t < xattn_st_count(st); t++) {
        const char *name = xattn_st_name(st, t);
        const size_t nl = name ? strlen(name) : 0;
        for (int i = 0; name && xa_kinds[i]; i++) {
            const xa_kind *k = xa_kinds[i];
            for (const char *a = k->anchor; a && *a;) {
                size_t al = strcspn(a, "|");
                if (nl >= al && !strncmp(name + nl - al, a, al) &&
                    (nl == al || name[nl - al - 1] == '.'))
                    add_candidate(c, &n, cap, k, st, name, nl - al);
                a += al + (a[al] == '|');
            }
        }
    }
    return n;
}

/* Every module of the file: the candidates, less those that are part of another candidate
 * (a layer of a stack, the attention inside a block: its anchor is one of the other's tensors). */
size_t xattn_module_scan(const xattn_safetensors *st, xattn_found *found, size_t cap)
{
    enum { MAXC = 256 };
    xattn_found *c = calloc(MAXC, sizeof *c);
    if (!c) return 0;
    size_t nc = candidates(st, c, MAXC), n = 0;
    char full[600];
    for (size_t d = 0; d < nc; d++) {
        /* the tensor that made d a candidate: its prefix + the anchor alternative present */
        const xa_kind *kd = xa_kind_find(c[d].kind);
        full[0] = '\0';
        for (const char *a = kd->anchor; *a && !full[0];) {
            size_t al = strcspn(a, "|");
            snprintf(full, sizeof full, "%s%.*s", c[d].prefix, (int)al, a);
            if (xattn_st_find(st, full) < 0) full[0] = '\0';
            a += al + (a[al] == '|');
        }
        int inner = 0;
        for (size_t o = 0; o < nc && !inner; o++) {
            if (o == d || strncmp(c[d].prefix, c[o].prefix, strlen(c[o].prefix))) continue;
            if (!strcmp(c[o].prefix, c[d].prefix) && o > d) continue; /* same prefix: keep one */
            inner = owns(xa_kind_find(c[o].kind), st, c[o].prefix, full);
        }
        if (inner) continue;
        if (n < cap) found[n] = c[d];
        n++;
    }
    free(c);
    xa_clear_error();
    return n;
}

static xattn_status detect(const xattn_safetensors *st, const xattn_open_opts *o, const xa_kind **k,
                           const char **prefix)
{
    static _Thread_local xattn_found f[64];
    size_t n = xattn_module_scan(st, f, 64), match = 0, pick = 0;
    const char *want_prefix = o ? o->prefix : NULL;
    const char *want_kind = o ? o->kind : NULL;
    for (size_t i = 0; i < n && i < 64; i++) {
        if (want_prefix && strcmp(f[i].prefix, want_prefix)) continue;
        if (want_kind && strcmp(f[i].kind, want_kind)) continue;
        if (!match++) pick = i;
    }
    char pp[XA_IO_NAME_CAP];
    if (match == 0) {
        if (want_kind && (*k = xa_kind_find(want_kind))) {
            /* a kind without weights, or one the scan does not find at the prefix: opened
             * there, so that the kind's own loader says what is missing */
            *prefix = want_prefix ? want_prefix : "";
            return XATTN_OK;
        }
        if (!want_prefix && long_prefixed(st))
            return xa_error(XATTN_ERR_UNSUPPORTED,
                            "the attention module's tensor names have a prefix longer than %d "
                            "bytes, which is not supported",
                            (int)sizeof f[0].prefix - 1);
        return xa_error(XATTN_ERR_NOT_FOUND, "no module found%s%s%s (see 'xattn inspect')",
                        want_prefix ? " at prefix '" : "",
                        want_prefix ? xa_io_printable(want_prefix, pp, sizeof pp) : "",
                        want_prefix ? "'" : "");
    }
    if (match > 1)
        return xa_error(XATTN_ERR_ARG,
                        "the file holds %zu modules (the first: %s at prefix "
                        "'%s'): choose one with a prefix",
                        match, f[pick].kind, xa_io_printable(f[pick].prefix, pp, sizeof pp));
    *k = xa_kind_find(f[pick].kind);
    *prefix = f[pick].prefix;
    return XATTN_OK;
}

xattn_status xattn_module_open(const xattn_safetensors *st, const xattn_open_opts *o,
                               xattn_module **out)
{
    if (!out) return xa_error(XATTN_ERR_ARG, "xattn_module_open: out is NULL");
    *out = NULL;
    if (!st) return xa_error(XATTN_ERR_ARG, "xattn_module_open: safetensors handle is NULL");
    const xa_kind *k = NULL;
    const char *prefix = "";
    xattn_status s;
    if (o && o->kind && (s = find_kind(o->kind, &k))) return s;
    if ((s = detect(st, o, &k, &prefix))) return s;
    char pfx[256];
    snprintf(pfx, sizeof pfx, "%s", prefix);
    xa_mod *m;
    if (o && (o->reserved_[0] | o->reserved_[1] | o->reserved_[2]))
        return xa_error(XATTN_ERR_ARG, "xattn_module_open: o->reserved_ must be zero");
    if ((s = xa_mod_open_w(k, st, pfx, (const xa_kv *)(o ? o->options : NULL), o ? o->n_options : 0,
                           o ? (int)o->weights : XATTN_WEIGHTS_AUTO, &m)))
        return s;
    if (!(*out = wrap(m))) return XATTN_ERR_NOMEM;
    xa_clear_error();
    return XATTN_OK;
}

xattn_status xattn_module_create(const char *kind, const xattn_option *opts, size_t n_opts,
                                 uint64_t seed, xattn_module **out)
{
    if (!out) return xa_error(XATTN_ERR_ARG, "xattn_module_create: out is NULL");
    *out = NULL;
    const xa_kind *k;
    xattn_status s = find_kind(kind, &k);
    if (s) return s;
    xa_mod *m;
    if ((s = xa_mod_create(k, (const xa_kv *)opts, n_opts, seed, &m))) return s;
    if (!(*out = wrap(m))) return XATTN_ERR_NOMEM;
    xa_clear_error();
    return XATTN_OK;
}

void xattn_module_free(xattn_module *m)
{
    if (!m) return;
    xa_mod_free(m->m);
    free(m);
}

xattn_status xattn_module_save(const xattn_module *m, const char *path)
{
    if (!m || !path)
        return xa_error(XATTN_ERR_ARG, "xattn_module_save: module and path are required");
    xattn_status s =
        xa_params_save(&m->m->params, &m->m->cfg, m->m->kind->name, m->m->prefix, path, NULL);
    if (!s) xa_clear_error();
    return s;
}

xattn_status xattn_module_save_ex(const xattn_module *m, const char *path, const xattn_save_opts *o)
{
    if (!m || !path)
        return xa_error(XATTN_ERR_ARG, "xattn_module_save_ex: module and path are required");
    if (o && (!xa_reserved_zero(o->reserved_) || (o->n_extra && !o->extra) ||
              (o->n_meta && !o->meta_kv)))
        return xa_error(XATTN_ERR_ARG, "xattn_module_save_ex: bad options");
    xattn_status s =
        xa_params_save(&m->m->params, &m->m->cfg, m->m->kind->name, m->m->prefix, path, o);
    if (!s) xa_clear_error();
    return s;
}

const char *xattn_module_kind(const xattn_module *m) { return m ? m->m->kind->name : ""; }
const char *xattn_module_prefix(const xattn_module *m) { return m ? m->m->prefix : ""; }
const char *xattn_module_warnings(const xattn_module *m) { return m ? m->m->cfg.warn : ""; }
size_t xattn_module_config_count(const xattn_module *m) { return m ? (size_t)m->m->cfg.n : 0; }

xattn_status xattn_module_config(const xattn_module *m, size_t i, xattn_config_entry *e)
{
    if (!m || !e || i >= (size_t)m->m->cfg.n)
        return xa_error(XATTN_ERR_ARG, "xattn_module_config: index %zu out of range", i);
    const xa_cfg *c = &m->m->cfg;
    e->name = c->f[i].name;
    e->value = c->from[i] == XA_FROM_UNSET ? "None" : m->text[i];
    e->source = xa_from_name(c->from[i]);
    e->detail = c->how[i];
    e->doc = c->f[i].doc ? c->f[i].doc : "";
    xa_clear_error();
    return XATTN_OK;
}

size_t xattn_module_param_count(const xattn_module *m) { return m ? (size_t)m->m->params.n : 0; }

xattn_status xattn_module_param(const xattn_module *m, size_t i, xattn_param_desc *p)
{
    if (!m || !p || i >= (size_t)m->m->params.n)
        return xa_error(XATTN_ERR_ARG, "xattn_module_param: index %zu out of range", i);
    const xa_param *q = &m->m->params.p[i];
    memset(p, 0, sizeof *p);
    p->name = q->name;
    p->ndim = q->ndim;
    memcpy(p->shape, q->shape, sizeof q->shape);
    p->data = q->data;
    p->stored_dtype = q->src_dtype;
    xa_clear_error();
    return XATTN_OK;
}

xattn_status xattn_module_param_read(const xattn_module *m, size_t i, float *dst)
{
    if (!m || i >= (size_t)m->m->params.n)
        return xa_error(XATTN_ERR_ARG, "xattn_module_param_read: index %zu out of range", i);
    if (!dst) return xa_error(XATTN_ERR_ARG, "xattn_module_param_read: dst is NULL");
    if (!m->m->params.p[i].present)
        return xa_error(XATTN_ERR_NOT_FOUND, "xattn_module_param_read: the module has no '%s'",
                        m->m->params.p[i].name);
    xa_param_read(&m->m->params, (int)i, dst);
    xa_clear_error();
    return XATTN_OK;
}

xattn_dtype xattn_module_param_kept(const xattn_module *m, size_t i)
{
    if (!m || i >= (size_t)m->m->params.n) return XATTN_F32;
    static const xattn_dtype as[] = {XATTN_F32, XATTN_BF16, XATTN_F16, XATTN_I8};
    return as[m->m->params.p[i].wdt];
}

int xattn_module_weights(const xattn_module *m)
{
    if (!m) return XATTN_WEIGHTS_F32;
    const xa_params *ps = &m->m->params;
    return xa_params_weights(&ps, 1);
}

static const xa_io *io_of(const xattn_module *m, int output, size_t i, size_t *n)
{
    const xa_kind *k = m->m->kind;
    *n = (size_t)(output ? k->n_out : k->n_in);
    return i < *n ? &(output ? k->outputs : k->inputs)[i] : NULL;
}

/* Input or output i of kind k into d. */
static void fill_io(const xa_kind *k, int output, size_t i, xattn_io_desc *d)
{
    const xa_io *io = &(output ? k->outputs : k->inputs)[i];
    const char *parts = output && k->out_parts ? k->out_parts[i] : NULL;
    memset(d, 0, sizeof *d);
    d->name = io->name;
    d->shape = io->shape;
    d->optional = (io->flags & XA_IO_OPT) != 0;
    d->mask = (io->flags & XA_IO_MASK) != 0;
    d->additive = (io->flags & XA_IO_ADDITIVE) != 0;
    d->doc = io->doc ? io->doc : "";
    d->parts = parts ? parts : "";
    d->when_bound = (io->flags & XA_IO_BOUND) != 0;
}

static xattn_status io_desc(const xattn_module *m, int output, size_t i, xattn_io_desc *d)
{
    size_t n;
    const xa_io *io = m && d ? io_of(m, output, i, &n) : NULL;
    if (!io)
        return xa_error(XATTN_ERR_ARG, "module %s %zu out of range", output ? "output" : "input",
                        i);
    fill_io(m->m->kind, output, i, d);
    xa_clear_error();
    return XATTN_OK;
}

size_t xattn_module_input_count(const xattn_module *m) { return m ? (size_t)m->m->kind->n_in : 0; }
size_t xattn_module_output_count(const xattn_module *m)
{
    return m ? (size_t)m->m->kind->n_out : 0;
}
xattn_status xattn_module_input(const xattn_module *m, size_t i, xattn_io_desc *d)
{
    return io_desc(m, 0, i, d);
}
xattn_status xattn_module_output(const xattn_module *m, size_t i, xattn_io_desc *d)
{
    return io_desc(m, 1, i, d);
}

xattn_status xattn_kind_io(const char *kind, int output, size_t i, xattn_io_desc *d)
{
    const xa_kind *k = xa_kind_find(kind);
    size_t n = k ? (size_t)(output ? k->n_out : k->n_in) : 0;
    if (!k || !d || i >= n)
        return xa_error(XATTN_ERR_ARG, "xattn_kind_io: no %s %zu of '%s'",
                        output ? "output" : "input", i, kind ? kind : "(null)");
    fill_io(k, output, i, d);
    xa_clear_error();
    return XATTN_OK;
}

const char *xattn_kind_one_of(const char *kind)
{
    const xa_kind *k = xa_kind_find(kind);
    return k && k->one_of ? k->one_of : "";
}
