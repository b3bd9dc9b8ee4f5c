/*
 * Forward by named arrays: inputs are matched to the kind's input table by name, their shapes
 * checked against the symbolic shapes (size symbols bound by the first input naming them), the
 * sizes only the kind can compute bound by its plan hook (when it has one), the output shapes
 * computed, and the kind's forward called with plain pointers.
 */
#include "core/registry.h"
#include "kernels/ops.h"
#include "io/io_internal.h"
#include "dist/dist_run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t xa_run_sym(const xa_run *r, const char *name)
{
    for (int i = 0; i < r->n_sym; i++)
        if (!strcmp(r->sym_name[i], name)) return r->sym[i];
    return 0;
}

xattn_status xa_run_bind(xa_run *r, const char *name, int64_t v)
{
    if (r->n_sym >= XA_MAX_SYMS)
        return xa_error(XATTN_ERR_ARG, "size '%s': more than %d size symbols", name, XA_MAX_SYMS);
    r->sym_name[r->n_sym] = name;
    r->sym[r->n_sym++] = v;
    return XATTN_OK;
}

static int is_sym(const char *tok) { return tok[0] >= 'A' && tok[0] <= 'Z'; }

/* Set during a sharded run's planning: a rank's shard of a sequence may have 0 rows. */
static _Thread_local int plan_sharded;

/* One dim token into tok (capacity 64); returns the rest after the separator. */
static const char *next_dim(const char *p, char *tok)
{
    size_t n = strcspn(p, ",");
    if (n > 63) n = 63;
    memcpy(tok, p, n);
    tok[n] = '\0';
    return p[n] ? p + n + 1 : p + n;
}

static int count_dims(const char *shape)
{
    if (!*shape) return 0;
    int n = 1;
    for (const char *p = shape; *p; p++) n += *p == ',';
    return n;
}

/* Value of one factor: an integer, a bound size symbol or a config field; 1 and *v, or 0. */
static int factor_value(const xa_mod *m, const xa_run *r, const char *name, int64_t *v)
{
    if (xa_parse_int(name, v)) return 1;
    if (is_sym(name)) {
        for (int i = 0; i < r->n_sym; i++)
            if (!strcmp(r->sym_name[i], name)) return *v = r->sym[i], 1;
        return 0;
    }
    int i = xa_cfg_find(&m->cfg, name);
    if (i < 0) return 0;
    *v = (int64_t)m->cfg.v[i];
    return 1;
}

/* Value of a dim expression (a sum of products: "J+add_bias_kv", "B*num_heads", "8") with the
 * symbols bound so far: 1 and *v, or 0 if a part is unbound or malformed. */
static int dim_value(const xa_mod *m, const xa_run *r, const char *tok, int64_t *v)
{
    int64_t sum = 0, prod = 1;
    for (const char *p = tok;;) {
        const size_t n = strcspn(p, "*+");
        char name[64];
        int64_t f;
        if (!n || n >= sizeof name) return 0;
        memcpy(name, p, n);
        name[n] = '\0';
        if (!factor_value(m, r, name, &f)) return 0;
        prod *= f;
        if (p[n] != '*') {
            sum += prod;
            prod = 1;
        }
        if (!p[n]) break;
        p += n + 1;
    }
    *v = sum;
    return 1;
}

/* The alternative of a '|'-separated shape with `rank` dims, into buf (NULL if none). */
static const char *pick_alternative(const char *shape, int rank, char *buf, size_t cap)
{
    for (const char *p = shape;;) {
        size_t l = strcspn(p, "|");
        if (l < cap) {
            memcpy(buf, p, l);
            buf[l] = '\0';
            if (count_dims(buf) == rank) return buf;
        }
        if (!p[l]) return NULL;
        p += l + 1;
    }
}

static int io_index(const xa_io *ios, int n, const char *name);

/* "=name": the shape of input `name`. */
static xattn_status same_as(const xa_mod *m, const xa_io *io, const xattn_tensor *t,
                            const xa_run *r, const char *got)
{
    int j = io_index(m->kind->inputs, m->kind->n_in, io->shape + 1);
    int same = j >= 0 && r->in[j] && r->in_ndim[j] == t->ndim;
    for (int d = 0; same && d < t->ndim; d++) same = r->in_shape[j][d] == t->shape[d];
    if (same) return XATTN_OK;
    char want[128];
    return xa_error(
        XATTN_ERR_SHAPE, "input '%s' has shape %s; expected the shape of input '%s' %s", io->name,
        got, io->shape + 1,
        j >= 0 && r->in[j] ? xa_dims_text(r->in_ndim[j], r->in_shape[j], want, sizeof want) : "");
}

static xattn_status bind_input(const xa_mod *m, const xa_io *io, const xattn_tensor *t, xa_run *r)
{
    char got[128], alt[256];
    xa_dims_text(t->ndim, t->shape, got, sizeof got);
    if (!strcmp(io->shape, "...")) return XATTN_OK; /* any shape; the kind's check decides */
    if (io->shape[0] == '=') return same_as(m, io, t, r, got);
    const char *p = pick_alternative(io->shape, t->ndim, alt, sizeof alt);
    if (!p)
        return xa_error(XATTN_ERR_SHAPE, "input '%s' has shape %s; expected (%s)", io->name, got,
                        io->shape);
    for (int d = 0; d < t->ndim; d++) {
        char tok[64];
        p = next_dim(p, tok);
        char *slash = strchr(tok, '/');
        int may_be_one = slash && !strcmp(slash + 1, "1");
        if (slash) *slash = '\0';
        if ((may_be_one && t->shape[d] == 1) || (plan_sharded && xd_key_dim(m, io, 0, t->ndim, d)))
            continue;
        const int f = xa_cfg_find(&m->cfg, tok);
        if (f >= 0 && m->cfg.from[f] == XA_FROM_UNSET) /* a size the module does not have */
            return xa_error(XATTN_ERR_ARG, "input '%s' is not taken: %s is None (%s)", io->name,
                            tok, m->cfg.f[f].doc);
        int64_t v;
        if (dim_value(m, r, tok, &v)) {
            if (t->shape[d] != v)
                return xa_error(XATTN_ERR_SHAPE,
                                "input '%s' has shape %s; dim %d must be %s = %lld%s", io->name,
                                got, d, tok, (long long)v, may_be_one ? " or 1" : "");
            continue;
        }
        if (!is_sym(tok) || strpbrk(tok, "*+") || r->n_sym >= XA_MAX_SYMS)
            return xa_error(XATTN_ERR_ARG, "input '%s': cannot bind '%s'", io->name, tok);
        if (t->shape[d] < 1 && !(plan_sharded && t->shape[d] == 0))
            return xa_error(XATTN_ERR_SHAPE, "input '%s' has an empty shape %s", io->name, got);
        static _Thread_local char names[XA_MAX_SYMS][64];
        snprintf(names[r->n_sym], sizeof names[r->n_sym], "%s", tok);
        r->sym_name[r->n_sym] = names[r->n_sym];
        r->sym[r->n_sym++] = t->shape[d];
    }
    return XATTN_OK;
}

static xattn_status check_dtype(const xa_io *io, const xattn_tensor *t)
{
    int ok = t->dtype == XATTN_F32;
    if (io->flags & XA_IO_MASK) {
        ok = t->dtype == XATTN_BOOL || t->dtype == XATTN_U8 ||
             ((io->flags & XA_IO_ADDITIVE) && t->dtype == XATTN_F32);
    }
    if (ok) return XATTN_OK;
    return xa_error(
        XATTN_ERR_UNSUPPORTED, "input '%s' has dtype %s; expected %s", io->name,
        xattn_dtype_name(t->dtype),
        (io->flags & XA_IO_MASK)
            ? ((io->flags & XA_IO_ADDITIVE) ? "BOOL, U8 or F32 (additive)" : "BOOL or U8")
            : "F32");
}

static int io_index(const xa_io *ios, int n, const char *name)
{
    for (int i = 0; name && i < n; i++)
        if (!strcmp(ios[i].name, name)) return i;
    return -1;
}

static xattn_status unknown_io(const xa_kind *k, int output, const char *name)
{
    char list[512], shown[64];
    size_t off = 0;
    const xa_io *ios = output ? k->outputs : k->inputs;
    int n = output ? k->n_out : k->n_in;
    list[0] = '\0';
    for (int i = 0; i < n && off < sizeof list; i++)
        off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", i ? ", " : "", ios[i].name);
    return xa_error(
        XATTN_ERR_ARG, "%s has no %s '%s' (%ss: %s)", k->name, output ? "output" : "input",
        xa_io_printable(name ? name : "", shown, sizeof shown), output ? "output" : "input", list);
}

/* An optional input not given, with a stand-in that is: the stand-in, checked against this
 * input's shape (binding what this input would bind), is passed to the forward in its place. */
static xattn_status stand_in(const xa_mod *m, const xa_stand_in *sb, xa_run *r)
{
    const xa_kind *k = m->kind;
    const int i = io_index(k->inputs, k->n_in, sb->input), j = io_index(k->inputs, k->n_in, sb->by);
    if (i < 0 || j < 0 || r->in[i] || !r->in[j]) return XATTN_OK;
    const xa_io *io = &k->inputs[i];
    xattn_tensor t;
    memset(&t, 0, sizeof t);
    t.name = io->name;
    t.dtype = r->in_dtype[j];
    t.ndim = r->in_ndim[j];
    memcpy(t.shape, r->in_shape[j], sizeof t.shape);
    t.data = (void *)r->in[j];
    xattn_status s = check_dtype(io, &t);
    if (!s) s = bind_input(m, io, &t, r);
    if (s) { /* "input 'key' has shape (2, 4, 9); dim 2 must be kdim = 4" */
        char why[512], got[128];
        const char *e = xattn_last_error(), *semi = strstr(e, "; ");
        snprintf(why, sizeof why, "%s", semi ? semi + 2 : e);
        return xa_error(s, "input '%s' is not given, and input '%s' in its place has shape %s: %s",
                        io->name, sb->by, xa_dims_text(t.ndim, t.shape, got, sizeof got), why);
    }
    r->in[i] = r->in[j];
    r->in_dtype[i] = r->in_dtype[j];
    r->in_ndim[i] = r->in_ndim[j];
    memcpy(r->in_shape[i], r->in_shape[j], sizeof r->in_shape[i]);
    return XATTN_OK;
}

/* The kind's inputs given in exactly one way (xa_kind.one_of: "a|b,c"): not two, not none. */
static xattn_status one_way(const xa_kind *k, const xa_run *r)
{
    if (!k->one_of) return XATTN_OK;
    char ways[256]; /* "a | b, c" */
    size_t o = 0;
    ways[0] = '\0';
    for (const char *c = k->one_of; *c && o + 4 < sizeof ways; c++) {
        if (*c == '|' || *c == ',') {
            o += (size_t)snprintf(ways + o, sizeof ways - o, "%s", *c == '|' ? " | " : ", ");
        } else {
            ways[o++] = *c;
            ways[o] = '\0';
        }
    }
    int way = 0, given = -1;
    const char *first = NULL;
    for (const char *p = k->one_of; *p;) {
        const size_t l = strcspn(p, ",|");
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)l, p);
        const int i = io_index(k->inputs, k->n_in, name);
        if (i >= 0 && r->in[i]) {
            if (given >= 0 && given != way)
                return xa_error(XATTN_ERR_ARG,
                                "inputs '%s' and '%s' exclude each other (%s takes "
                                "one of: %s)",
                                first, name, k->name, ways);
            if (given < 0) first = k->inputs[i].name;
            given = way;
        }
        p += l;
        way += *p == '|';
        p += *p != '\0';
    }
    if (given < 0) return xa_error(XATTN_ERR_ARG, "%s needs one of the inputs: %s", k->name, ways);
    return XATTN_OK;
}

/* Binds the inputs into r and fills the output shapes (out may be NULL). */
static xattn_status plan(const xa_mod *m, const xattn_tensor *in, size_t n_in, xattn_tensor *out,
                         size_t n_out, xa_run *r)
{
    const xa_kind *k = m->kind;
    xattn_status s;
    memset(r, 0, sizeof *r);
    for (size_t a = 0; a < n_in; a++) {
        int i = io_index(k->inputs, k->n_in, in[a].name);
        if (i < 0) return unknown_io(k, 0, in[a].name);
        if (r->in[i] || !in[a].data)
            return xa_error(XATTN_ERR_ARG, "input '%s' is given twice or without data", in[a].name);
        if ((s = check_dtype(&k->inputs[i], &in[a]))) return s;
        r->in[i] = in[a].data;
        r->in_dtype[i] = in[a].dtype;
        r->in_ndim[i] = in[a].ndim;
        memcpy(r->in_shape[i], in[a].shape, sizeof in[a].shape);
    }
    for (int i = 0; i < k->n_in; i++)
        if (!r->in[i] && !(k->inputs[i].flags & XA_IO_OPT))
            return xa_error(XATTN_ERR_ARG, "%s needs the input '%s' %s", k->name, k->inputs[i].name,
                            k->inputs[i].doc ? k->inputs[i].doc : "");
    if ((s = one_way(k, r))) return s;
    for (int pass = 0; pass < 2; pass++) /* symbols bound by later inputs */
        for (size_t a = 0; a < n_in; a++) {
            int i = io_index(k->inputs, k->n_in, in[a].name);
            xa_run save = *r;
            s = bind_input(m, &k->inputs[i], &in[a], r);
            if (s && pass == 0) {
                *r = save;
                continue;
            }
            if (s) return s;
        }
    for (int i = 0; i < k->n_stand_ins; i++)
        if ((s = stand_in(m, &k->stand_ins[i], r))) return s;
    if (k->plan && (s = k->plan(m, r))) return s; /* sizes only the kind can compute */
    for (size_t a = 0; out && a < n_out; a++) {
        int o = io_index(k->outputs, k->n_out, out[a].name);
        if (o < 0) return unknown_io(k, 1, out[a].name);
        const char *p = k->outputs[o].shape;
        out[a].dtype = XATTN_F32;
        if (p[0] == '=') { /* the shape of an input */
            int j = io_index(k->inputs, k->n_in, p + 1);
            if (j < 0 || !r->in[j])
                return xa_error(XATTN_ERR_ARG, "output '%s' needs input '%s'", out[a].name, p + 1);
            out[a].ndim = r->in_ndim[j];
            memcpy(out[a].shape, r->in_shape[j], sizeof out[a].shape);
            continue;
        }
        out[a].ndim = count_dims(p);
        for (int d = 0; d < out[a].ndim; d++) {
            char tok[64];
            p = next_dim(p, tok);
            if (!dim_value(m, r, tok, &out[a].shape[d]))
                return xa_error(XATTN_ERR_ARG, "output '%s': size '%s' is unknown", out[a].name,
                                tok);
        }
    }
    return k->check ? k->check(m, r) : XATTN_OK;
}

xattn_status xattn_module_plan(const xattn_module *mod, const xattn_tensor *in, size_t n_in,
                               xattn_tensor *out, size_t n_out)
{
    if (!mod || (n_in && !in) || (n_out && !out))
        return xa_error(XATTN_ERR_ARG, "xattn_module_plan: NULL argument");
    xa_run r;
    xattn_status s = plan(*(xa_mod *const *)mod, in, n_in, out, n_out, &r);
    if (!s) xa_clear_error();
    return s;
}

static int64_t numel_of(const xattn_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

/* 1 if one of the n tensors t is named name. */
static int named(const xattn_tensor *t, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].name && !strcmp(t[i].name, name)) return 1;
    return 0;
}

/* The run of a forward: r bound to the inputs and the asked outputs (shapes checked), the
 * required outputs not asked for, and the optional ones named in need[] (outputs whose
 * gradient is given), in scratch[] (freed by the caller, xa_free). */
static xattn_status prepare(const xa_mod *m, const xattn_tensor *in, size_t n_in,
                            const xattn_tensor *out, size_t n_out, const xattn_tensor *need,
                            size_t n_need, xa_run *r, float *scratch[XA_MAX_IO])
{
    const xa_kind *k = m->kind;
    xattn_tensor plan_out[XA_MAX_IO];
    memset(scratch, 0, sizeof(float *) * XA_MAX_IO);
    if (n_out > XA_MAX_IO) return xa_error(XATTN_ERR_ARG, "too many outputs");
    if (n_out) memcpy(plan_out, out, n_out * sizeof *out);
    xattn_status s = plan(m, in, n_in, plan_out, n_out, r);
    if (s) return s;
    for (size_t a = 0; a < n_out; a++) {
        int o = io_index(k->outputs, k->n_out, out[a].name);
        int same = out[a].ndim == plan_out[a].ndim && out[a].data;
        for (int d = 0; same && d < out[a].ndim; d++)
            same = out[a].shape[d] == plan_out[a].shape[d] ||
                   (plan_sharded && xd_key_dim(m, &k->outputs[o], 1, out[a].ndim, d));
        char want[128], got[128];
        if (!same)
            return xa_error(XATTN_ERR_SHAPE, "output '%s' has shape %s%s; expected %s", out[a].name,
                            xa_dims_text(out[a].ndim, out[a].shape, got, sizeof got),
                            out[a].data ? "" : " and no data",
                            xa_dims_text(plan_out[a].ndim, plan_out[a].shape, want, sizeof want));
        if (r->out[o]) return xa_error(XATTN_ERR_ARG, "output '%s' is asked twice", out[a].name);
        r->out[o] = out[a].data;
    }
    /* required outputs the caller did not ask for go to scratch, and needed optional ones */
    for (int o = 0; !s && o < k->n_out; o++) {
        if (r->out[o] ||
            ((k->outputs[o].flags & XA_IO_OPT) && !named(need, n_need, k->outputs[o].name)))
            continue;
        xattn_tensor t;
        memset(&t, 0, sizeof t);
        t.name = k->outputs[o].name;
        xa_run tmp;
        if ((s = plan(m, in, n_in, &t, 1, &tmp))) break;
        double n = (double)numel_of(&t);
        if (n * 4 > 1e12)
            s = xa_error(XATTN_ERR_NOMEM, "output '%s' is too large", t.name);
        else if (!(scratch[o] = xa_alloc((size_t)XA_MAX(n, 1) * sizeof(float))))
            s = XATTN_ERR_NOMEM;
        r->out[o] = scratch[o];
    }
    return s;
}

xattn_status xattn_module_forward(xattn_ctx *ctx, const xattn_module *mod, const xattn_tensor *in,
                                  size_t n_in, xattn_tensor *out, size_t n_out)
{
    if (!mod || (n_in && !in) || (n_out && !out))
        return xa_error(XATTN_ERR_ARG, "xattn_module_forward: NULL argument");
    const xa_mod *m = *(xa_mod *const *)mod;
    const xa_kind *k = m->kind;
    xa_run r;
    float *scratch[XA_MAX_IO];
    memset(scratch, 0, sizeof scratch);
    const xd_comm *dc = xd_sharded(ctx);
    const int fails0 = dc ? xd_run_begin(dc) : 0;
    xattn_status s = dc ? xd_run_check(m, in, n_in, out, n_out, NULL, 0) : XATTN_OK;
    plan_sharded = dc != NULL;
    if (!s) s = prepare(m, in, n_in, out, n_out, NULL, 0, &r, scratch);
    plan_sharded = 0;
    if (dc) s = xd_run_agree(dc, s);
    if (!s) {
        const xattn_ctx *prev = xa_ctx_enter(ctx);
        s = k->forward(m, &r);
        xa_ctx_leave(prev);
        if (dc) s = xd_run_end(dc, s, fails0);
    }
    for (int o = 0; o < k->n_out; o++) xa_free(scratch[o]);
    if (!s) xa_clear_error();
    return s;
}

int xattn_kind_has_backward(const char *kind)
{
    const xa_kind *k = kind ? xa_kind_find(kind) : NULL;
    return k && k->backward;
}

/* The output gradients and input-gradient destinations of a grad call into g. */
static xattn_status grad_bind(const xa_mod *m, const xattn_tensor *in, size_t n_in, const xa_run *r,
                              const xattn_tensor *dout, size_t n_dout, const xattn_tensor *din,
                              size_t n_din, xa_grad *g)
{
    const xa_kind *k = m->kind;
    char want[128], got[128];
    for (size_t a = 0; a < n_dout; a++) {
        const int o = io_index(k->outputs, k->n_out, dout[a].name);
        if (o < 0) return unknown_io(k, 1, dout[a].name);
        xattn_tensor t;
        memset(&t, 0, sizeof t);
        t.name = dout[a].name;
        xa_run tmp;
        xattn_status s = plan(m, in, n_in, &t, 1, &tmp);
        if (s) return s;
        int same = dout[a].ndim == t.ndim && dout[a].data && dout[a].dtype == XATTN_F32;
        for (int d = 0; same && d < t.ndim; d++) same = dout[a].shape[d] == t.shape[d];
        if (!same)
            return xa_error(XATTN_ERR_SHAPE,
                            "the gradient of output '%s' has shape %s%s; expected "
                            "float32 %s",
                            dout[a].name,
                            xa_dims_text(dout[a].ndim, dout[a].shape, got, sizeof got),
                            dout[a].data ? "" : " and no data",
                            xa_dims_text(t.ndim, t.shape, want, sizeof want));
        if (g->dout[o])
            return xa_error(XATTN_ERR_ARG, "the gradient of output '%s' is given twice",
                            dout[a].name);
        g->dout[o] = dout[a].data;
    }
    for (size_t a = 0; a < n_din; a++) {
        const int i = io_index(k->inputs, k->n_in, din[a].name);
        if (i < 0) return unknown_io(k, 0, din[a].name);
        if (!r->in[i])
            return xa_error(XATTN_ERR_ARG,
                            "a gradient of input '%s' is asked, but the input is "
                            "not given",
                            din[a].name);
        if (r->in_dtype[i] != XATTN_F32 || (k->inputs[i].flags & XA_IO_MASK))
            return xa_error(XATTN_ERR_ARG, "input '%s' is not a float32 tensor: it has no gradient",
                            din[a].name);
        int same = din[a].ndim == r->in_ndim[i] && din[a].data;
        for (int d = 0; same && d < din[a].ndim; d++) same = din[a].shape[d] == r->in_shape[i][d];
        if (!same)
            return xa_error(XATTN_ERR_SHAPE,
                            "the gradient of input '%s' has shape %s%s; expected "
                            "%s",
                            din[a].name, xa_dims_text(din[a].ndim, din[a].shape, got, sizeof got),
                            din[a].data ? "" : " and no data",
                            xa_dims_text(r->in_ndim[i], r->in_shape[i], want, sizeof want));
        if (g->din[i])
            return xa_error(XATTN_ERR_ARG, "the gradient of input '%s' is asked twice",
                            din[a].name);
        g->din[i] = din[a].data;
    }
    return XATTN_OK;
}

/* A sharded run's parameter gradients summed over the ranks. */
static xattn_status sum_params(const xd_comm *dc, const xattn_module *mod, float *const *dparams)
{
    const size_t n = xattn_module_param_count(mod);
    int64_t *len = malloc(sizeof(int64_t) * (n + 1));
    xattn_status s = len ? XATTN_OK : xa_error(XATTN_ERR_NOMEM, "out of memory");
    for (size_t i = 0; !s && i < n; i++) {
        xattn_param_desc d;
        if ((s = xattn_module_param(mod, i, &d))) break;
        len[i] = 1;
        for (int a = 0; a < d.ndim; a++) len[i] *= d.shape[a];
    }
    s = xd_run_agree(dc, s);
    if (!s) s = xd_run_sum_floats(dc, dparams, len, n);
    free(len);
    return s;
}

/* xattn_module_grad with an optional hook that sets the outputs' gradients after the forward. */
static xattn_status module_grad(xattn_ctx *ctx, const xattn_module *mod, const xattn_tensor *in,
                                size_t n_in, xattn_tensor *out, size_t n_out,
                                const xattn_tensor *dout, size_t n_dout, xattn_tensor *din,
                                size_t n_din, float *const *dparams,
                                xattn_status (*hook)(void *, const xa_run *, xa_grad *), void *arg,
                                const char *fn)
{
    if (!mod || (n_in && !in) || (n_out && !out) || (n_dout && !dout) || (n_din && !din))
        return xa_error(XATTN_ERR_ARG, "%s: NULL argument", fn);
    const xa_mod *m = *(xa_mod *const *)mod;
    const xa_kind *k = m->kind;
    if (!k->backward)
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "%s has no backward yet (kinds with one: "
                        "xattn_kind_has_backward)",
                        k->name);
    if (xattn_ctx_get_compute(ctx) != XATTN_COMPUTE_F32)
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "%s: gradients are computed in float32; the context computes in bf16 "
                        "(xattn_ctx_set_compute: inference only)",
                        fn);
    if (xa_params_reduced(&m->params))
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "%s: gradients need float32 weights; this module keeps its linear "
                        "weights as %s (open it with weights f32)",
                        fn,
                        xattn_module_weights(mod) == XATTN_WEIGHTS_AUTO
                            ? "16-bit types (as stored)"
                            : xattn_weights_name(xattn_module_weights(mod)));
    xa_run r;
    float *scratch[XA_MAX_IO];
    memset(scratch, 0, sizeof scratch);
    xa_grad g;
    memset(&g, 0, sizeof g);
    g.dparam = dparams;
    g.on_outputs = hook;
    g.arg = arg;
    const xd_comm *dc = xd_sharded(ctx);
    const int fails0 = dc ? xd_run_begin(dc) : 0;
    xattn_status s = dc ? xd_run_check(m, in, n_in, out, n_out, dout, n_dout) : XATTN_OK;
    plan_sharded = dc != NULL;
    if (!s) s = prepare(m, in, n_in, out, n_out, dout, n_dout, &r, scratch);
    if (!s) s = grad_bind(m, in, n_in, &r, dout, n_dout, din, n_din, &g);
    plan_sharded = 0;
    if (dc) s = xd_run_agree(dc, s);
    if (!s) {
        const xattn_ctx *prev = xa_ctx_enter(ctx);
        s = k->backward(m, &r, &g);
        xa_ctx_leave(prev);
        if (dc) s = xd_run_end(dc, s, fails0);
        if (dc && !s && dparams) s = sum_params(dc, mod, dparams);
    }
    for (int o = 0; o < k->n_out; o++) xa_free(scratch[o]);
    if (!s) xa_clear_error();
    return s;
}

xattn_status xattn_module_grad(xattn_ctx *ctx, const xattn_module *mod, const xattn_tensor *in,
                               size_t n_in, xattn_tensor *out, size_t n_out,
                               const xattn_tensor *dout, size_t n_dout, xattn_tensor *din,
                               size_t n_din, float *const *dparams)
{
    return module_grad(ctx, mod, in, n_in, out, n_out, dout, n_dout, din, n_din, dparams, NULL,
                       NULL, "xattn_module_grad");
}

/* The MSE loss of xattn_module_mse_grad, set from the outputs once the forward has run. */
typedef struct mse_arg {
    const xattn_tensor *target;
    size_t n;
    float *buf[XA_MAX_IO];
    double count[XA_MAX_IO]; /* each target's element count (over every rank when sharded) */
    double loss;
    const xa_mod *m;
} mse_arg;

static xattn_status mse_outputs(void *argp, const xa_run *r, xa_grad *g)
{
    mse_arg *a = argp;
    const xa_kind *k = a->m->kind;
    a->loss = 0.0;
    for (size_t t = 0; t < a->n; t++) {
        const int o = io_index(k->outputs, k->n_out, a->target[t].name);
        const int64_t n = numel_of(&a->target[t]);
        const float *y = r->out[o], *tg = a->target[t].data;
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) { /* the loss itself, in double */
            const double d = (double)y[i] - tg[i];
            sum += d * d;
        }
        a->loss += a->count[t] > 0 ? sum / a->count[t] : 0.0;
        xa_op_mse_grad_of(y, tg, n, a->count[t], a->buf[t]);
        g->dout[o] = a->buf[t];
    }
    return XATTN_OK;
}

xattn_status xattn_module_mse_grad(xattn_ctx *ctx, const xattn_module *mod, const xattn_tensor *in,
                                   size_t n_in, const xattn_tensor *target, size_t n_target,
                                   double *loss, xattn_tensor *din, size_t n_din,
                                   float *const *dparams)
{
    static const char fn[] = "xattn_module_mse_grad";
    if (!mod || (n_target && !target) || n_target > XA_MAX_IO)
        return xa_error(XATTN_ERR_ARG, "%s: NULL argument or too many targets", fn);
    mse_arg a;
    memset(&a, 0, sizeof a);
    a.target = target;
    a.n = n_target;
    a.m = *(xa_mod *const *)mod;
    xattn_status s = XATTN_OK;
    for (size_t t = 0; t < n_target && !s; t++) {
        const int64_t n = target[t].data ? numel_of(&target[t]) : 0;
        if (n < 0 || (double)n * 4 > 1e12)
            s = xa_error(XATTN_ERR_ARG, "%s: bad target shape", fn);
        else if (!(a.buf[t] = xa_alloc(sizeof(float) * (size_t)(n + 1))))
            s = XATTN_ERR_NOMEM;
        a.count[t] = (double)n;
    }
    /* a sharded run: the mean is over every rank's elements */
    const xd_comm *dc = xd_sharded(ctx);
    if (dc && !(s = xd_run_agree(dc, s))) s = xd_run_sum_doubles(dc, a.count, (int)n_target);
    /* the targets are checked as the outputs' gradients would be (names, shapes, float32) */
    if (!s)
        s = module_grad(ctx, mod, in, n_in, NULL, 0, target, n_target, din, n_din, dparams,
                        mse_outputs, &a, fn);
    if (dc && !s) s = xd_run_sum_doubles(dc, &a.loss, 1);
    for (size_t t = 0; t < n_target; t++) xa_free(a.buf[t]);
    if (!s && loss) *loss = a.loss;
    return s;
}
