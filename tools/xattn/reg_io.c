/* Inputs and outputs of a registry module on the command line (see reg_cli.h). */
#include "reg_cli.h"
#include "cli_dist.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- symbolic shapes ----------------------------------------------------------------------- */

/* The alternative of `shape` ('|'-separated) with `rank` dims into buf, or NULL. */
static const char *alternative(const char *shape, int rank, char *buf, size_t cap)
{
    const char *p = shape;
    for (;;) {
        size_t l = strcspn(p, "|");
        int nd = l ? 1 : 0;
        for (size_t k = 0; k < l; k++) nd += p[k] == ',';
        if (nd == rank && l < cap) {
            memcpy(buf, p, l);
            buf[l] = '\0';
            return buf;
        }
        if (!p[l]) return NULL;
        p += l + 1;
    }
}

static int ranks_of(const char *shape, int *lo, int *hi)
{
    *lo = 99, *hi = -1;
    const char *p = shape;
    for (;;) {
        size_t l = strcspn(p, "|");
        int nd = l ? 1 : 0;
        for (size_t k = 0; k < l; k++) nd += p[k] == ',';
        if (nd < *lo) *lo = nd;
        if (nd > *hi) *hi = nd;
        if (!p[l]) return 0;
        p += l + 1;
    }
}

/* dim token k of a ','-separated list into tok. */
static void dim_tok(const char *dims, int k, char *tok, size_t cap)
{
    const char *p = dims;
    for (int i = 0; i < k && p; i++) p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL;
    size_t l = p ? strcspn(p, ",") : 0;
    if (l >= cap) l = cap - 1;
    memcpy(tok, p ? p : "", l);
    tok[l] = '\0';
}

static int is_sym(const char *t) { return t[0] >= 'A' && t[0] <= 'Z'; }

static int64_t config_value(const reg_state *s, const char *name, int *ok)
{
    for (size_t i = 0; i < xattn_module_config_count(s->m); i++) {
        xattn_config_entry e;
        if (!xattn_module_config(s->m, i, &e) && !strcmp(e.name, name)) {
            *ok = strcmp(e.value, "None") != 0; /* a size the module lacks: the library says so */
            return !strcmp(e.value, "True") ? 1 : atoll(e.value); /* a bool counts 0 or 1 */
        }
    }
    *ok = 0;
    return 0;
}

static int sym_index(const reg_state *s, const char *name)
{
    for (int i = 0; i < s->n_sym; i++)
        if (!strcmp(s->sym[i], name)) return i;
    return -1;
}

/* Value of a dim token, a sum of products ("B", "dim", "2*inner", "B*num_heads",
 * "J+add_bias_kv", "8"; "/1" ignored); *known = 0 when a part is unbound. */
static int64_t tok_value(const reg_state *s, const char *tok, int *known)
{
    char t[64];
    snprintf(t, sizeof t, "%.*s", (int)strcspn(tok, "/"), tok);
    int64_t sum = 0, prod = 1;
    *known = 1;
    for (char *p = t;;) {
        const size_t n = strcspn(p, "*+");
        const char sep = p[n];
        p[n] = '\0';
        int64_t v = 0;
        int ok = 1;
        if (p[0] >= '0' && p[0] <= '9')
            v = atoll(p);
        else if (is_sym(p)) {
            int i = sym_index(s, p);
            if (i < 0)
                ok = 0;
            else
                v = s->sym_val[i];
        } else {
            v = config_value(s, p, &ok);
        }
        if (!ok) *known = 0;
        prod *= v;
        if (sep != '*') {
            sum += prod;
            prod = 1;
        }
        if (!sep) break;
        p += n + 1;
    }
    return *known ? sum : 0;
}

/* ---- checks with messages naming the file ---------------------------------------------------- */

static const char *first_file(const reg_state *s)
{
    for (int i = 0; i < s->n_in; i++)
        if (s->in_file[i]) return s->in_file[i];
    return "the inputs";
}

/* "(B, I) = (2, 5)" of a dims list with the values known so far. */
static void expected_text(const reg_state *s, const char *dims, char *buf, size_t cap)
{
    char syms[256] = "", vals[256] = "";
    size_t o1 = 0, o2 = 0;
    int nd = dims[0] ? 1 : 0;
    for (const char *p = dims; *p; p++) nd += *p == ',';
    for (int k = 0; k < nd; k++) {
        char tok[64];
        dim_tok(dims, k, tok, sizeof tok);
        int known;
        int64_t v = tok_value(s, tok, &known);
        const size_t tl = strcspn(tok, "/"); /* "B/1": B or 1 */
        o1 += (size_t)snprintf(syms + o1, sizeof syms - o1, "%s%.*s%s", k ? ", " : "", (int)tl, tok,
                               tok[tl] ? " or 1" : "");
        if (known)
            o2 += (size_t)snprintf(vals + o2, sizeof vals - o2, "%s%lld", k ? ", " : "",
                                   (long long)v);
        else
            o2 += (size_t)snprintf(vals + o2, sizeof vals - o2, "%s?", k ? ", " : "");
    }
    snprintf(buf, cap, "(%s%s) = (%s%s)", syms, nd == 1 ? "," : "", vals, nd == 1 ? "," : "");
}

/* "(I, J) = (5, 7) or (heads or 1, I, J) = (4, 5, 7)": each alternative with its values. */
static const char *alternatives_text(const reg_state *s, const char *shape, char *buf, size_t cap)
{
    char one[300];
    size_t o = 0;
    buf[0] = '\0';
    for (const char *p = shape; o < cap;) {
        const size_t l = strcspn(p, "|");
        char one_alt[256];
        snprintf(one_alt, sizeof one_alt, "%.*s", (int)l, p);
        expected_text(s, one_alt, one, sizeof one);
        o += (size_t)snprintf(buf + o, cap - o, "%s%s", o ? " or " : "", one);
        if (!p[l]) break;
        p += l + 1;
    }
    return buf;
}

static int check_dim(const char *cmd, const reg_args *a, reg_state *s, int i, const char *dims,
                     int k, int64_t got, int last)
{
    char tok[64];
    dim_tok(dims, k, tok, sizeof tok);
    const char *file = s->in_file[i];
    int known;
    int64_t want = tok_value(s, tok, &known);
    if (strstr(tok, "/1") && got == 1) return 0;
    if (!known) { /* bind the symbol */
        if (is_sym(tok) && !strpbrk(tok, "*+") && s->n_sym < 16) {
            snprintf(s->sym[s->n_sym], sizeof s->sym[0], "%.*s", (int)strcspn(tok, "/"), tok);
            s->sym_val[s->n_sym] = got;
            s->sym_file[s->n_sym++] = file;
        }
        return 0;
    }
    if (want == got) return 0;
    char exp[512], sh[160];
    if (!strcmp(tok, "B") || !strcmp(tok, "B/1")) {
        int j = sym_index(s, "B");
        return cli_error(cmd, file,
                         "batch %lld does not match the batch %lld of %s (batch sizes differ)",
                         (long long)got, (long long)want, j >= 0 ? s->sym_file[j] : first_file(s));
    }
    if (last && !is_sym(tok) && !strpbrk(tok, "*+") && !(tok[0] >= '0' && tok[0] <= '9') &&
        s->in_desc[i].shape[0] == 'B') { /* the width: the model's value and where it came from */
        char from[320] = "";
        for (size_t c = 0; c < xattn_module_config_count(s->m); c++) {
            xattn_config_entry e;
            if (!xattn_module_config(s->m, c, &e) && !strcmp(e.name, tok) && e.detail[0])
                snprintf(from, sizeof from, ", its %s from the %s", e.name, e.detail);
        }
        return cli_error(cmd, file,
                         "last dimension %lld does not match the model's %s %lld (the "
                         "model's dim is %lld%s in %s)",
                         (long long)got, tok, (long long)want, (long long)want, from, a->model);
    }
    if (strchr(s->in_desc[i].shape, '|')) /* a shape of several ranks: each of them */
        return cli_error(cmd, file, "has shape %s; expected %s for %s",
                         cli_shape_str(&s->arr[i], sh, sizeof sh),
                         alternatives_text(s, s->in_desc[i].shape, exp, sizeof exp), s->in_flag[i]);
    expected_text(s, dims, exp, sizeof exp);
    char why[320] = "";
    if (!is_sym(tok) && !strchr(tok, '+')) { /* a config value: say where it came from */
        char name[64];
        snprintf(name, sizeof name, "%s", strchr(tok, '*') ? strchr(tok, '*') + 1 : tok);
        for (size_t c = 0; c < xattn_module_config_count(s->m); c++) {
            xattn_config_entry e;
            if (!xattn_module_config(s->m, c, &e) && !strcmp(e.name, name) && e.detail[0])
                snprintf(why, sizeof why, " (%s = %s from the %s)", e.name, e.value, e.detail);
        }
    }
    if (s->batch_added >> i & 1u && strchr(dims, ',')) { /* as given: without the batch axis */
        expected_text(s, strchr(dims, ',') + 1, exp, sizeof exp);
        return cli_error(cmd, file, "has shape %s; %s needs %s%s",
                         cli_dims_str(s->arr[i].ndim - 1, s->arr[i].shape + 1, sh, sizeof sh),
                         s->in_flag[i], exp, why);
    }
    return cli_error(cmd, file, "has shape %s; %s needs %s%s",
                     cli_shape_str(&s->arr[i], sh, sizeof sh), s->in_flag[i], exp, why);
}

/* Checks input i's shape (after the batch axis was added for unbatched inputs). */
static int input_named(const reg_state *s, const char *name)
{
    for (int j = 0; j < s->n_in; j++)
        if (!strcmp(s->in_desc[j].name, name)) return j;
    return -1;
}

static int check_shape(const char *cmd, const reg_args *a, reg_state *s, int i)
{
    const xattn_io_desc *d = &s->in_desc[i];
    xattn_array *x = &s->arr[i];
    char alt[256], sh[160], sh2[160];
    if (!strcmp(d->shape, "...")) return 0; /* any shape: the module decides */
    if (d->shape[0] == '=') {
        int j = input_named(s, d->shape + 1);
        if (j < 0 || !s->arr[j].data) return 0; /* reported by the library */
        int same = s->arr[j].ndim == x->ndim;
        for (int k = 0; same && k < x->ndim; k++) same = s->arr[j].shape[k] == x->shape[k];
        if (same) return 0;
        return cli_error(cmd, s->in_file[i],
                         "has shape %s but %s has shape %s: %s needs the same "
                         "shape as %s",
                         cli_shape_str(x, sh, sizeof sh), s->in_file[j],
                         cli_shape_str(&s->arr[j], sh2, sizeof sh2), s->in_flag[i], s->in_flag[j]);
    }
    const char *dims = alternative(d->shape, x->ndim, alt, sizeof alt);
    int lo0, hi0;
    ranks_of(s->in_desc[0].shape, &lo0, &hi0);
    if (i > 0 && s->unbatched && d->shape[0] == 'B' && !strchr(d->shape, '|') &&
        !(s->batch_added >> i & 1u)) {
        /* beside one sequence, an input that kept its batch axis: what it needs without it */
        char exp[512];
        expected_text(s, strchr(d->shape, ',') ? strchr(d->shape, ',') + 1 : "", exp, sizeof exp);
        return cli_error(cmd, s->in_file[i], "has shape %s; %s needs %s for %s",
                         cli_shape_str(x, sh, sizeof sh), s->in_flag[i], exp, s->in_file[0]);
    }
    if (!dims) {
        int lo, hi;
        ranks_of(d->shape, &lo, &hi);
        const int drop = s->unbatched && d->shape[0] == 'B' ? 1 : 0;
        if (i > 0 && s->in_file[0] && x->ndim != s->arr[0].ndim && lo == hi &&
            s->in_desc[0].shape[0] == d->shape[0] && hi0 == hi)
            return cli_error(cmd, s->in_file[i], "has shape %s (rank %d) but %s has rank %d",
                             cli_shape_str(x, sh, sizeof sh), x->ndim, s->in_file[0],
                             s->arr[0].ndim - drop);
        if (i == 0 && d->shape[0] == 'B' && lo == hi)
            return cli_error(cmd, s->in_file[i],
                             "has shape %s (rank %d); expected rank %d to %d (%s)",
                             cli_shape_str(x, sh, sizeof sh), x->ndim, hi - 1, hi, d->shape);
        char exp[600], rank[32] = "";
        if (lo != hi) snprintf(rank, sizeof rank, " (rank %d)", x->ndim); /* what picks one */
        return cli_error(cmd, s->in_file[i], "has shape %s%s; expected %s for %s",
                         cli_shape_str(x, sh, sizeof sh), rank,
                         alternatives_text(s, d->shape, exp, sizeof exp), s->in_flag[i]);
    }
    /* under mpirun a rank holds its rows of rel_pos_bias (bidir) or attn_mask (mha) and every
     * key column: the library checks that width against every rank's keys */
    const int span =
        cli_dist_active() && s->in_flag[i] &&
        (!strcmp(s->in_flag[i], "--rel-pos-bias") || !strcmp(s->in_flag[i], "--attn-mask"));
    for (int k = 0; k < x->ndim - span; k++) {
        int rc = check_dim(cmd, a, s, i, dims, k, x->shape[k], k == x->ndim - 1);
        if (rc) return rc;
    }
    return 0;
}

/* ---- loading ------------------------------------------------------------------------------- */

/* What True means for a mask, from its doc ("True = keep (...)", "True = KEEP, as ..."):
 * "keep". */
static void true_means(const char *doc, char *buf, size_t cap)
{
    const char *p = strstr(doc, "True = ");
    snprintf(buf, cap, "%.*s", p ? (int)strcspn(p + 7, ",;()") : 4, p ? p + 7 : "true");
    size_t n = strlen(buf);
    while (n && buf[n - 1] == ' ') buf[--n] = '\0';
    for (char *c = buf; *c; c++)
        if (*c >= 'A' && *c <= 'Z') *c = (char)(*c - 'A' + 'a');
}

/* An input of a few numbers (a shape without size symbols: motion_scale (3)) may be given
 * inline, as comma-separated numbers, instead of a FILE.npy: its element count, else 0. */
static int64_t inline_count(const reg_state *s, int i)
{
    const char *shape = s->in_desc[i].shape, *v = s->in_file[i];
    const size_t l = v ? strlen(v) : 0;
    if (!shape[0] || strpbrk(shape, "|=.") || (l >= 4 && !strcmp(v + l - 4, ".npy"))) return 0;
    int nd = 1;
    for (const char *p = shape; *p; p++) nd += *p == ',';
    int64_t n = 1;
    for (int k = 0; k < nd; k++) {
        char tok[64];
        int known;
        dim_tok(shape, k, tok, sizeof tok);
        const int64_t d = is_sym(tok) ? 0 : tok_value(s, tok, &known);
        if (d < 1 || d > 4096 || !known || (n *= d) > 4096) return 0;
    }
    return n;
}

static int load_inline(const char *cmd, const reg_args *a, reg_state *s, int i, int64_t n)
{
    xattn_array *x = &s->arr[i];
    const char *v = s->in_file[i], *shape = s->in_desc[i].shape;
    if (!(x->data = malloc((size_t)n * sizeof(float))))
        return cli_error(cmd, NULL, "out of memory");
    float *f = x->data;
    int64_t k = 0;
    int ok = 1;
    for (const char *p = v;;) {
        char *end = NULL;
        const double d = strtod(p, &end);
        if (end == p || k >= n || (*end && *end != ',')) {
            ok = 0;
            break;
        }
        f[k++] = (float)d;
        if (!*end) break;
        p = end + 1;
    }
    if (!ok || k != n)
        return cli_usage(cmd, "%s: '%s' is not %lld comma-separated numbers (nor a FILE.npy)",
                         s->in_flag[i], v, (long long)n);
    for (k = 0; k < n && !a->allow_nonfinite; k++)
        if (!isfinite(f[k]))
            return cli_error(cmd, NULL,
                             "%s: '%s' holds a NaN or an infinity at index %lld (use "
                             "--allow-nonfinite to pass it)",
                             s->in_flag[i], v, (long long)k);
    x->dtype = XATTN_F32;
    x->ndim = 1;
    for (const char *p = shape; *p; p++) x->ndim += *p == ',';
    for (int d = 0; d < x->ndim; d++) {
        char tok[64];
        int known;
        dim_tok(shape, d, tok, sizeof tok);
        x->shape[d] = tok_value(s, tok, &known);
    }
    return 0;
}

/* Under mpirun: the axis of input (s, i) of rank ndim that the ranks share out (-1: whole; -2:
 * refused, the library's message set); inputs given without their batch axis count without it. */
typedef struct axis_arg {
    const reg_state *s;
    const char *name;
    const char *shape;
    int output;
} axis_arg;

static int axis_of(void *argp, int ndim)
{
    const axis_arg *x = argp;
    int axis = -1;
    if (cli_dist_shard_axis(x->s->m, x->name, x->output, ndim, &axis)) return -2;
    if (axis < 0 && x->shape[0] == 'B' &&
        !cli_dist_shard_axis(x->s->m, x->name, x->output, ndim + 1, &axis) && axis >= 1)
        return axis - 1; /* unbatched */
    return axis < 0 ? -1 : axis;
}

/* Loads through loader with this rank's rows under mpirun (cli_row_axis set around it). */
#define WITH_ROWS(s, name_, shape_, output_, rc, call)                                             \
    do {                                                                                           \
        axis_arg xa_ = {(s), (name_), (shape_), (output_)};                                        \
        cli_row_axis = axis_of, cli_row_arg = &xa_;                                                \
        rc = (call);                                                                               \
        cli_row_axis = NULL, cli_row_arg = NULL;                                                   \
    } while (0)

static int load_one_rows(const char *cmd, const reg_args *a, reg_state *s, int i);

static int load_one(const char *cmd, const reg_args *a, reg_state *s, int i)
{
    int rc;
    s->in_axis[i] = -1;
    s->in_total[i] = 0;
    WITH_ROWS(s, s->in_desc[i].name, s->in_desc[i].shape, 0, rc, load_one_rows(cmd, a, s, i));
    if (!rc && cli_row_got_axis >= 0) s->in_axis[i] = cli_row_got_axis;
    if (!rc) s->in_total[i] = cli_row_got_len;
    return rc;
}

int reg_load_output_rows(const char *cmd, const reg_state *s, int o, const char *file,
                         cli_finite_rule rule, xattn_array *arr, int *axis)
{
    int rc;
    *axis = -1;
    xattn_io_desc d;
    memset(&d, 0, sizeof d);
    d.shape = "";
    for (size_t k = 0; k < xattn_module_output_count(s->m); k++)
        if (!xattn_module_output(s->m, k, &d) && !strcmp(d.name, s->out[o].name)) break;
    WITH_ROWS(s, s->out[o].name, d.shape ? d.shape : "", 1, rc,
              cli_load_float(cmd, file, 0, XATTN_MAX_DIMS, rule, arr));
    if (!rc) *axis = cli_row_got_axis;
    return rc;
}

static int load_one_rows(const char *cmd, const reg_args *a, reg_state *s, int i)
{
    const xattn_io_desc *d = &s->in_desc[i];
    const cli_finite_rule data = a->allow_nonfinite ? CLI_FINITE_ANY : CLI_FINITE_STRICT;
    const cli_finite_rule mask = a->allow_nonfinite ? CLI_FINITE_ANY : CLI_FINITE_MASK;
    if (!d->shape[0]) { /* a switch: the option alone sets it */
        if (s->in_file[i]) return cli_usage(cmd, "%s takes no value", s->in_flag[i]);
        xattn_array *x = &s->arr[i];
        x->dtype = XATTN_BOOL;
        x->ndim = 0;
        x->data = calloc(1, 1);
        if (!x->data) return cli_error(cmd, NULL, "out of memory");
        *(uint8_t *)x->data = 1;
        return 0;
    }
    if (!s->in_file[i]) return cli_usage(cmd, "%s needs a FILE.npy", s->in_flag[i]);
    const int64_t n_inline = inline_count(s, i);
    if (n_inline) return load_inline(cmd, a, s, i, n_inline);
    char tm[64];
    true_means(d->doc, tm, sizeof tm);
    if (d->mask && d->additive)
        return cli_load_mask(cmd, s->in_file[i], s->in_flag[i], tm, mask, &s->arr[i]);
    if (d->mask) return cli_load_bool_mask(cmd, s->in_file[i], s->in_flag[i], tm, &s->arr[i]);
    return cli_load_float(cmd, s->in_file[i], 1, XATTN_MAX_DIMS - 1, data, &s->arr[i]);
}

/* The number K of an input named STEM.K ("xs.2" -> 2, stem length in *stem_len), or -1. */
static int member_index(const char *name, size_t *stem_len)
{
    const char *dot = strrchr(name, '.');
    if (!dot || !dot[1] || strspn(dot + 1, "0123456789") != strlen(dot + 1) || strlen(dot + 1) > 6)
        return -1;
    *stem_len = (size_t)(dot - name) + 1;
    return atoi(dot + 1);
}

/* For an alias of numbered inputs ("xs.*"): the next of them after the highest one given, or -1
 * when the kind has no more. */
static int next_member(const reg_state *s, const char *family)
{
    const size_t sl = strlen(family) - 1; /* "xs." */
    int top = -1;
    for (int i = 0; i < s->n_in; i++) {
        size_t l = 0;
        const int k = member_index(s->in_desc[i].name, &l);
        if (k > top && s->in_flag[i] && l == sl && !strncmp(s->in_desc[i].name, family, sl))
            top = k;
    }
    char want[128];
    snprintf(want, sizeof want, "%.*s%d", (int)sl, family, top + 1);
    return input_named(s, want);
}

/* A bare flag --NAME of an optional output asks for it (--regions); 1 if flag r is one. */
static int output_flag(const reg_state *s, const char *name)
{
    for (size_t o = 0; o < xattn_module_output_count(s->m); o++) {
        xattn_io_desc d;
        if (!xattn_module_output(s->m, o, &d) && d.optional && !d.when_bound &&
            !strcmp(d.name, name))
            return 1;
    }
    return 0;
}

/* Index of output `name`, or -1. */
static int output_index(const reg_state *s, const char *name)
{
    for (size_t o = 0; o < xattn_module_output_count(s->m); o++) {
        xattn_io_desc d;
        if (!xattn_module_output(s->m, o, &d) && !strcmp(d.name, name)) return (int)o;
    }
    return -1;
}

/* ---- other kinds' flags ----------------------------------------------------------------- */

/* The input of `kind` that flag `name` (underscores) gives: by name or alias, or x / context
 * for the first / second input; -1 when none. */
static int input_of_kind(const char *kind, const char *name)
{
    const char *target = reg_alias(kind, name, NULL);
    if (target) name = target;
    for (size_t i = 0;; i++) {
        xattn_io_desc d;
        if (xattn_kind_io(kind, 0, i, &d)) break;
        if (!strcmp(d.name, name)) return (int)i;
    }
    xattn_io_desc d;
    if (!strcmp(name, "x") && !xattn_kind_io(kind, 0, 0, &d)) return 0;
    if (!strcmp(name, "context") && !xattn_kind_io(kind, 0, 1, &d)) return 1;
    return -1;
}

/* 1 if flag `name` (underscores) is an input, option, optional output or alias of `kind` (the
 * --x / --context names of every kind aside). */
static int flag_of_kind(const char *kind, const char *name)
{
    if (reg_alias(kind, name, NULL)) return 1;
    for (int out = 0; out < 2; out++)
        for (size_t i = 0;; i++) {
            xattn_io_desc d;
            if (xattn_kind_io(kind, out, i, &d)) break;
            if (!strcmp(d.name, name) && (!out || d.optional)) return 1;
        }
    for (size_t j = 0;; j++) {
        xattn_arg_desc d;
        if (xattn_kind_arg(kind, j, &d)) break;
        if (!d.derived && !strcmp(d.name, name)) return 1;
    }
    return 0;
}

/* The other kinds whose flag `name` is: "the multi-head modules" for kinds of another family,
 * "REFERENCE (kind)" for the others; "" when none. */
static void owners_of(const char *kind, const char *name, char *buf, size_t cap)
{
    const char *family = xattn_kind_family(kind);
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < xattn_kind_count() && o < cap; i++) {
        xattn_kind_desc k;
        if (xattn_kind_info(i, &k) || !strcmp(k.name, kind) || !flag_of_kind(k.name, name))
            continue;
        const char *fam = xattn_kind_family(k.name);
        char who[200];
        if (fam[0] && strcmp(fam, family))
            snprintf(who, sizeof who, "the %s modules", fam);
        else {
            char ref[160];
            reg_reference_name(k.name, ref, sizeof ref);
            snprintf(who, sizeof who, "%s (%s)", ref, k.name);
        }
        if (!strstr(buf, who)) o += (size_t)snprintf(buf + o, cap - o, "%s%s", o ? ", " : "", who);
    }
}

/* "; its masks: --mask, --context-mask: True = keep": the model's masks and what True means. */
static void masks_text(const reg_state *s, char *buf, size_t cap)
{
    char tm[64], first[64] = "", flag[160];
    int n = 0, same = 1;
    for (int i = 0; i < s->n_in; i++)
        if (s->in_desc[i].mask && s->in_desc[i].shape[0]) {
            true_means(s->in_desc[i].doc, tm, sizeof tm);
            if (!n++) snprintf(first, sizeof first, "%s", tm);
            same &= !strcmp(tm, first);
        }
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0, k = 0; i < s->n_in && o < cap; i++) {
        if (!s->in_desc[i].mask || !s->in_desc[i].shape[0]) continue;
        true_means(s->in_desc[i].doc, tm, sizeof tm);
        reg_flag_of(s->kind, s->in_desc[i].name, -1, flag, sizeof flag);
        o += (size_t)snprintf(buf + o, cap - o, "%s%s%s%s%s", k++ ? ", " : "; its masks: ", flag,
                              same ? "" : " (True = ", same ? "" : tm, same ? "" : ")");
    }
    if (n && o < cap)
        snprintf(buf + o, cap - o, "%s%s", same ? ": True = " : "", same ? first : "");
}

/* A required input not given that a kind of another family takes as optional by the same flag
 * (--context: the multi-head modules attend over x without one): the model asks for it. */
static int asked_by_model(const reg_state *s, int i)
{
    const char *family = xattn_kind_family(s->kind);
    const char *names[3] = {s->in_desc[i].name, i == 0 ? "x" : i == 1 ? "context" : NULL, NULL};
    for (size_t k = 0; family[0] && k < xattn_kind_count(); k++) {
        xattn_kind_desc kd;
        if (xattn_kind_info(k, &kd)) continue;
        const char *fam = xattn_kind_family(kd.name);
        if (!fam[0] || !strcmp(fam, family)) continue;
        for (int f = 0; names[f]; f++) {
            const int j = input_of_kind(kd.name, names[f]);
            xattn_io_desc d;
            if (j >= 0 && !xattn_kind_io(kd.name, 0, (size_t)j, &d) && d.optional) return 1;
        }
    }
    return 0;
}

/* Maps the remaining options to inputs: --NAME or an alias, or --x / --context for the first /
 * second; then the aliases of numbered inputs (--view), each for the next of them. An output's
 * alias, or the bare --NAME of an optional output, asks for that output (reg_outputs). */
static int map_inputs(const char *cmd, const reg_args *a, reg_state *s)
{
    for (int pass = 0; pass < 2; pass++)
        for (int r = 0; r < a->n_rest; r++) {
            if (s->used[r]) continue;
            char name[128];
            snprintf(name, sizeof name, "%s", a->rest[r].flag + 2);
            for (char *c = name; *c; c++)
                if (*c == '-') *c = '_';
            const char *target = reg_alias(s->kind, name, NULL);
            const size_t tl = target ? strlen(target) : 0;
            const int numbered = tl > 2 && !strcmp(target + tl - 2, ".*");
            if (numbered != pass) continue;
            if (target && !numbered &&
                output_index(s, target) >= 0) { /* an output asked by its alias */
                if (a->rest[r].value) return cli_usage(cmd, "%s takes no value", a->rest[r].flag);
                s->used[r] = 1;
                continue;
            }
            if (target && !numbered) snprintf(name, sizeof name, "%s", target);
            int hit = -1;
            if (numbered && (hit = next_member(s, target)) < 0)
                return cli_usage(cmd, "%s: %s takes no more inputs %s (at most %d)",
                                 a->rest[r].flag, s->kind, target, s->n_in);
            for (int i = 0; i < s->n_in && hit < 0; i++)
                if (!strcmp(s->in_desc[i].name, name)) hit = i;
            if (hit < 0 && !strcmp(name, "x") && s->n_in > 0) hit = 0;
            if (hit < 0 && !strcmp(name, "context") && s->n_in > 1) hit = 1;
            if (hit < 0 && output_flag(s, name)) {
                if (a->rest[r].value)
                    return cli_usage(cmd, "%s takes no value (it asks for the output %s)",
                                     a->rest[r].flag, name);
                for (int q = 0; q < r; q++)
                    if (!strcmp(a->rest[q].flag, a->rest[r].flag))
                        return cli_usage(cmd, "%s given twice", a->rest[r].flag);
                s->used[r] = 1;
                continue;
            }
            char owners[512] = "";
            if (hit < 0) owners_of(s->kind, name, owners, sizeof owners);
            if (owners[0]) { /* a flag of other kinds */
                char ref[160], masks[512];
                reg_reference_name(s->kind, ref, sizeof ref);
                masks_text(s, masks, sizeof masks);
                return cli_error(cmd, a->model,
                                 "%s is an option of %s, but the model is a %s (%s%s)",
                                 a->rest[r].flag, owners, ref, s->kind, masks);
            }
            if (hit < 0) {
                char list[1024];
                size_t off = 0;
                for (int i = 0; i < s->n_in && off < sizeof list; i++) {
                    off += (size_t)snprintf(list + off, sizeof list - off, "%s--", i ? ", " : "");
                    for (const char *c = s->in_desc[i].name; *c && off + 1 < sizeof list; c++)
                        list[off++] = *c == '_' ? '-' : *c;
                    list[off < sizeof list ? off : sizeof list - 1] = '\0';
                }
                for (size_t j = 0; off < sizeof list; j++) {
                    xattn_arg_desc d;
                    if (xattn_kind_arg(s->kind, j, &d)) break;
                    if (d.derived) continue;
                    off += (size_t)snprintf(list + off, sizeof list - off, ", --");
                    for (const char *c = d.name; *c && off + 1 < sizeof list; c++)
                        list[off++] = *c == '_' ? '-' : *c;
                    list[off < sizeof list ? off : sizeof list - 1] = '\0';
                }
                return cli_usage(cmd, "%s is not an input or option of %s (%s)", a->rest[r].flag,
                                 s->kind, list);
            }
            if (s->in_flag[hit] && !strcmp(s->in_flag[hit], a->rest[r].flag))
                return cli_usage(cmd, "%s given twice", a->rest[r].flag);
            if (s->in_flag[hit])
                return cli_usage(cmd, "%s and %s name the same input", s->in_flag[hit],
                                 a->rest[r].flag);
            s->in_flag[hit] = a->rest[r].flag;
            s->in_file[hit] = a->rest[r].value;
            s->used[r] = 1;
        }
    /* numbered inputs are given in order: STEM.K only with STEM.K-1 */
    for (int i = 0; i < s->n_in; i++) {
        size_t l;
        const int k = member_index(s->in_desc[i].name, &l);
        if (k < 1 || !s->in_flag[i]) continue;
        char prev[128], flag[130];
        snprintf(prev, sizeof prev, "%.*s%d", (int)l, s->in_desc[i].name, k - 1);
        snprintf(flag, sizeof flag, "--%s", prev);
        for (char *c = flag + 2; *c; c++)
            if (*c == '_') *c = '-';
        const int j = input_named(s, prev);
        if (j >= 0 && !s->in_flag[j])
            return cli_usage(cmd, "%s gives %s, but %s is not given (%s%s)", s->in_flag[i],
                             s->in_desc[i].name, prev, flag,
                             j < 2 ? (j ? " or --context" : " or --x") : "");
    }
    return 0;
}

/* Deterministic uniform [-1, 1) values. */
static void fill(float *x, int64_t n, uint64_t seed)
{
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)(seed >> 40) / 8388608.0f - 1.0f;
    }
}

/* bench: a required input not given, made from the sizes known and --batch/--len/--context-len */
static int generate(const char *cmd, const reg_args *a, reg_state *s, int i)
{
    const char *dims = s->in_desc[i].shape;
    char alt[256], any[32];
    if (dims[0] == '=') { /* the shape of another input */
        int j = input_named(s, dims + 1);
        if (j < 0 || !s->arr[j].data)
            return cli_error(cmd, NULL, "cannot make input '%s'", s->in_desc[i].name);
        xattn_array *x = &s->arr[i];
        *x = s->arr[j];
        const int64_t n = xattn_array_numel(x);
        if (!(x->data = malloc((size_t)(n ? n : 1) * sizeof(float))))
            return cli_error(cmd, NULL, "out of memory");
        fill(x->data, n, 0x9e3779b97f4a7c15ull + (uint64_t)i);
        return 0;
    }
    if (!strcmp(dims, "...")) { /* any shape: (B, --len, --len) */
        snprintf(any, sizeof any, "B,L,L");
        dims = any;
    }
    if (strchr(dims, '|'))
        dims = strncpy(alt, dims, strcspn(dims, "|")), alt[strcspn(dims, "|")] = '\0', alt;
    xattn_array *x = &s->arr[i];
    x->dtype = XATTN_F32;
    x->ndim = dims[0] ? 1 : 0;
    for (const char *p = dims; *p; p++) x->ndim += *p == ',';
    int64_t n = 1;
    for (int k = 0; k < x->ndim; k++) {
        char tok[64];
        dim_tok(dims, k, tok, sizeof tok);
        int known;
        int64_t v = tok_value(s, tok, &known);
        if (!known) { /* sizes of the first input: --len; of the second: --context-len */
            const long long len = a->len ? a->len : 1024;
            v = !strcmp(tok, "B") ? (a->batch ? a->batch : 1)
                : i == 1          ? (a->context_len ? a->context_len : 2 * len)
                                  : len;
            snprintf(s->sym[s->n_sym], sizeof s->sym[0], "%s", tok);
            s->sym_val[s->n_sym] = v;
            s->sym_file[s->n_sym++] = "generated inputs";
        }
        x->shape[k] = v;
        if ((double)n * (double)v > 4e9)
            return cli_error(cmd, NULL, "generated input '%s' is too large", s->in_desc[i].name);
        n *= v;
    }
    if (!(x->data = malloc((size_t)(n ? n : 1) * sizeof(float))))
        return cli_error(cmd, NULL, "out of memory");
    fill(x->data, n, 0x9e3779b97f4a7c15ull + (uint64_t)i);
    return 0;
}

/* ---- inputs given one of several ways (xattn_kind_one_of: "a|b,c") ---------------------- */

/* The way (0, 1, ...) input `name` belongs to, or -1. */
static int way_of(const char *one_of, const char *name)
{
    const size_t n = strlen(name);
    int way = 0;
    for (const char *p = one_of; *p;) {
        const size_t l = strcspn(p, ",|");
        if (l == n && !strncmp(p, name, n)) return way;
        p += l;
        way += *p == '|';
        p += *p != '\0';
    }
    return -1;
}

/* "--a (or --memory) | --b, --c": the ways as flags. */
static void ways_text(const reg_state *s, const char *one_of, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = '\0';
    for (int w = 0, n = 1; n && o < cap; w++) {
        n = 0;
        for (int i = 0; i < s->n_in && o < cap; i++) {
            char flag[160];
            if (way_of(one_of, s->in_desc[i].name) != w) continue;
            reg_flag_of(s->kind, s->in_desc[i].name, i, flag, sizeof flag);
            o += (size_t)snprintf(buf + o, cap - o, "%s%s", n++ ? ", " : w ? " | " : "", flag);
        }
    }
}

/* Inputs of two ways, or of none (bench makes the first): a usage error naming them. */
static int check_ways(const char *cmd, const reg_state *s, int gen)
{
    const char *one_of = xattn_kind_one_of(s->kind);
    int given = -1, first = -1;
    char ways[512];
    for (int i = 0; one_of[0] && i < s->n_in; i++) {
        const int w = way_of(one_of, s->in_desc[i].name);
        if (w < 0 || !s->in_flag[i]) continue;
        if (given >= 0 && w != given) {
            ways_text(s, one_of, ways, sizeof ways);
            return cli_usage(cmd, "%s and %s exclude each other: %s takes one of %s",
                             s->in_flag[first], s->in_flag[i], s->kind, ways);
        }
        if (given < 0) given = w, first = i;
    }
    if (!one_of[0] || given >= 0 || gen) return 0;
    ways_text(s, one_of, ways, sizeof ways);
    return cli_usage(cmd, "missing one of %s", ways);
}

/* bench: 1 if input i is one of the kind's one-of inputs that is not made: any, once one of
 * them is given; else those of the ways after the first. */
static int other_way(const reg_state *s, int i)
{
    const char *one_of = xattn_kind_one_of(s->kind);
    const int w = way_of(one_of, s->in_desc[i].name);
    int given = 0;
    for (int j = 0; w >= 0 && j < s->n_in; j++)
        given |= s->in_flag[j] && way_of(one_of, s->in_desc[j].name) >= 0;
    return w >= 0 && (given || w > 0);
}
static void tensors(const reg_state *s, xattn_tensor *t, size_t *n);

int reg_inputs(const char *cmd, const reg_args *a, reg_state *s, int gen)
{
    s->n_in = (int)xattn_module_input_count(s->m);
    if (s->n_in > REG_MAX_IO) return cli_error(cmd, a->model, "too many inputs");
    for (int i = 0; i < REG_MAX_IO; i++) s->in_axis[i] = -1, s->in_total[i] = 0; /* whole */
    for (int i = 0; i < s->n_in; i++) xattn_module_input(s->m, (size_t)i, &s->in_desc[i]);
    int rc = map_inputs(cmd, a, s);
    if (rc || (rc = check_ways(cmd, s, gen))) return rc;
    for (int i = 0; i < s->n_in; i++) {
        if (!s->in_flag[i]) continue;
        if ((rc = load_one(cmd, a, s, i))) return rc;
    }
    /* inputs given without the batch axis (one sequence): the first decides */
    if (s->in_flag[0] && s->in_desc[0].shape[0] == 'B') {
        int lo, hi;
        ranks_of(s->in_desc[0].shape, &lo, &hi);
        s->unbatched = lo == hi && s->arr[0].ndim == hi - 1;
    }
    for (int i = 0; i < s->n_in; i++) {
        xattn_array *x = &s->arr[i];
        if (!s->in_flag[i] || !s->unbatched || s->in_desc[i].shape[0] != 'B' || !x->ndim) continue;
        int lo, hi, lo0, hi0;
        ranks_of(s->in_desc[i].shape, &lo, &hi);
        ranks_of(s->in_desc[0].shape, &lo0, &hi0);
        if (i > 0 && lo == hi && hi == hi0 && x->ndim == hi) { /* batched beside one sequence */
            char sh[160];
            return cli_error(cmd, s->in_file[i], "has shape %s (rank %d) but %s has rank %d",
                             cli_shape_str(x, sh, sizeof sh), x->ndim, s->in_file[0], hi0 - 1);
        }
        if (x->ndim != hi - 1) continue; /* reported by the shape check */
        memmove(x->shape + 1, x->shape, sizeof(int64_t) * (size_t)x->ndim);
        x->shape[0] = 1;
        x->ndim++;
        s->batch_added |= 1u << i;
        if (s->in_axis[i] >= 0) s->in_axis[i]++;
    }
    for (int i = 0; i < s->n_in; i++)
        if (s->in_flag[i] && s->in_desc[i].shape[0] && (rc = check_shape(cmd, a, s, i))) return rc;
    for (int i = 0; i < s->n_in; i++) {
        const xattn_io_desc *d = &s->in_desc[i];
        /* bench: an optional input of data (not a mask, bias or switch: the keys of a
         * cross-attention) is made too, of --context-len; not a numbered one (made below, as
         * many as the module takes), nor one of another way of giving the inputs (one_of) */
        size_t sl;
        const int data = !d->mask && !d->additive && d->shape[0] && member_index(d->name, &sl) < 0;
        if (s->in_flag[i] || (d->optional && !(gen && data && !other_way(s, i)))) continue;
        if (!gen && asked_by_model(s, i)) { /* the model's need, not the command line's */
            char ref[160], flag[160];
            reg_reference_name(s->kind, ref, sizeof ref);
            reg_flag_of(s->kind, s->in_desc[i].name, i, flag, sizeof flag);
            return cli_error(cmd, a->model, "the model is a %s (%s): give %s with %s FILE.npy", ref,
                             s->kind, s->in_desc[i].doc[0] ? s->in_desc[i].doc : "it", flag);
        }
        if (!gen) {
            const char *doc = d->doc, *also = i == 0 ? "x" : i == 1 ? "context" : "";
            return cli_usage(cmd, "missing --%s FILE.npy%s%s%s%s%s", d->name,
                             also[0] && strcmp(also, d->name) ? " (or --" : "",
                             also[0] && strcmp(also, d->name) ? also : "",
                             also[0] && strcmp(also, d->name) ? ")" : "", doc[0] ? ": " : "", doc);
        }
        if ((rc = generate(cmd, a, s, i))) return rc;
    }
    /* bench: numbered optional inputs (multiview's views) made one after another, until the
     * module takes the inputs */
    for (int i = 0; gen && i < s->n_in; i++) {
        size_t sl, n;
        xattn_tensor in[REG_MAX_IO];
        if (s->arr[i].data || !s->in_desc[i].optional || member_index(s->in_desc[i].name, &sl) < 0)
            continue;
        tensors(s, in, &n);
        if (!xattn_module_plan(s->m, in, n, NULL, 0)) break;
        if ((rc = generate(cmd, a, s, i))) return rc;
    }
    return 0;
}

/* ---- outputs --------------------------------------------------------------------------------- */

void reg_file_name(const char *output, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", output);
    for (char *c = buf; *c; c++)
        if (*c == '.') *c = '_';
}

void reg_tensors(const reg_state *s, xattn_tensor *t, size_t *n) { tensors(s, t, n); }

static void tensors(const reg_state *s, xattn_tensor *t, size_t *n)
{
    *n = 0;
    for (int i = 0; i < s->n_in; i++) {
        if (!s->arr[i].data) continue;
        xattn_tensor *x = &t[(*n)++];
        memset(x, 0, sizeof *x);
        x->name = s->in_desc[i].name;
        x->dtype = s->arr[i].dtype;
        x->ndim = s->arr[i].ndim;
        memcpy(x->shape, s->arr[i].shape, sizeof x->shape);
        x->data = s->arr[i].data;
    }
}

/* Reports the library's last error in the command line's terms: "input 'a' ..." becomes
 * "FILE: ...", a constructor argument's name becomes its flag. */
int reg_lib_error(const char *cmd, const reg_args *a, const reg_state *s)
{
    char msg[1024], out[1400];
    snprintf(msg, sizeof msg, "%s", xattn_last_error());
    const char *file = a->model, *body = msg;
    for (int i = 0; i < s->n_in; i++) {
        char head[96];
        snprintf(head, sizeof head, "input '%s' ", s->in_desc[i].name);
        if (s->in_file[i] && !strncmp(msg, head, strlen(head))) {
            file = s->in_file[i];
            body = msg + strlen(head);
        }
    }
    size_t o = 0;
    for (const char *p = body; *p && o + 1 < sizeof out;) {
        int hit = 0;
        const int is_in = !strncmp(p, "input '", 7), is_opt = !strncmp(p, "option '", 8);
        if (is_in || is_opt) { /* input 'key' -> its file, or its flag; option 'x' -> its flag */
            const char *q = p + (is_in ? 7 : 8);
            const size_t l = strcspn(q, "'");
            char name[96], flag[600];
            snprintf(name, sizeof name, "%.*s", (int)l, q);
            int idx = -1, k;
            for (int i = 0; is_in && i < s->n_in; i++)
                if (!strcmp(s->in_desc[i].name, name)) idx = i;
            for (k = 0; is_opt && k < s->n_opts && strcmp(s->opts[k].name, name); k++) continue;
            if (idx >= 0 && s->in_file[idx])
                snprintf(flag, sizeof flag, "%s", s->in_file[idx]);
            else if (is_opt && k < s->n_opts)
                snprintf(flag, sizeof flag, "%s", s->opt_names[k]);
            else
                reg_flag_of(s->kind, name, idx, flag, sizeof flag);
            if (q[l] == '\'' && (idx >= 0 || is_opt)) {
                o += (size_t)snprintf(out + o, sizeof out - o, "%s%s", is_opt ? "option " : "",
                                      flag);
                p = q + l + 1;
                continue;
            }
        }
        for (int k = 0; k < s->n_opts && !hit; k++) {
            size_t l = strlen(s->opts[k].name);
            if (!strncmp(p, s->opts[k].name, l) && p[l] == ' ' &&
                (p == body || p[-1] == ' ' || p[-1] == '(')) {
                o += (size_t)snprintf(out + o, sizeof out - o, "%s", s->opt_names[k]);
                p += l;
                hit = 1;
            }
        }
        if (!hit) out[o++] = *p++;
    }
    out[o < sizeof out ? o : sizeof out - 1] = '\0';
    return cli_error(cmd, file, "%s", out);
}

int reg_outputs(const char *cmd, const reg_args *a, reg_state *s)
{
    xattn_tensor in[REG_MAX_IO];
    size_t n_in;
    tensors(s, in, &n_in);
    /* outputs asked by an alias (--per-head-attn), each written in place of the output its
     * alias names; an output an alias writes in place of another is asked only that way */
    const char *by_alias[REG_MAX_IO] = {0}, *as[REG_MAX_IO] = {0}, *variant[REG_MAX_IO] = {0};
    int n_alias = 0, n_variant = 0;
    for (int r = 0; r < a->n_rest && n_alias < REG_MAX_IO; r++) {
        char name[128];
        snprintf(name, sizeof name, "%s", a->rest[r].flag + 2);
        for (char *c = name; *c; c++)
            if (*c == '-') *c = '_';
        const char *target = reg_alias(s->kind, name, &as[n_alias]);
        if (target && output_index(s, target) >= 0) by_alias[n_alias++] = target;
    }
    for (size_t i = 0; n_variant < REG_MAX_IO; i++) {
        xattn_alias_desc d;
        if (xattn_kind_alias(s->kind, i, &d)) break;
        if (d.as[0]) variant[n_variant++] = d.name;
    }
    s->n_out = 0;
    int any_opt = 0;
    for (size_t o = 0; o < xattn_module_output_count(s->m) && o < REG_MAX_IO; o++) {
        xattn_io_desc d;
        xattn_module_output(s->m, o, &d);
        int asked = -1, replaced = 0, is_variant = 0, flag = 0;
        for (int k = 0; k < n_alias; k++) {
            if (!strcmp(by_alias[k], d.name)) asked = k;
            replaced |= as[k] && !strcmp(as[k], d.name);
        }
        for (int k = 0; k < n_variant; k++) is_variant |= !strcmp(variant[k], d.name);
        for (int r = 0; d.optional && r < a->n_rest; r++) { /* --NAME of the output */
            char name[128];
            snprintf(name, sizeof name, "%s", a->rest[r].flag + 2);
            for (char *c = name; *c; c++)
                if (*c == '-') *c = '_';
            flag |= !a->rest[r].value && !strcmp(name, d.name);
        }
        if (d.when_bound) { /* there when its sizes are: its inputs given */
            xattn_tensor t;
            memset(&t, 0, sizeof t);
            t.name = d.name;
            flag = !xattn_module_plan(s->m, in, n_in, &t, 1);
        }
        any_opt |= d.optional && !d.when_bound;
        if (d.optional && asked < 0 && !flag &&
            (!a->return_all || replaced || is_variant || d.when_bound))
            continue;
        memset(&s->out[s->n_out], 0, sizeof s->out[0]);
        s->out_as[s->n_out] = asked >= 0 ? as[asked] : NULL;
        s->out[s->n_out++].name = d.name;
    }
    if (a->return_all && !any_opt) { /* "a BidirectionalCrossAttentionTransformer (...) ..." */
        char ref[160], outs[256];
        reg_reference_name(s->kind, ref, sizeof ref);
        size_t o = 0;
        outs[0] = '\0';
        for (size_t k = 0; k < xattn_module_output_count(s->m) && o < sizeof outs; k++) {
            xattn_io_desc d;
            if (!xattn_module_output(s->m, k, &d))
                o += (size_t)snprintf(outs + o, sizeof outs - o, "%s%s", k ? ", " : "", d.name);
        }
        return cli_error(cmd, a->model,
                         "--return-attn: a %s (%s) returns no attention maps (its outputs: %s)",
                         ref, s->kind, outs);
    }
    /* under mpirun: the shapes over every rank (the inputs' axes at their whole lengths), then
     * this rank's rows of each output */
    int64_t gshape[REG_MAX_IO][XATTN_MAX_DIMS];
    for (size_t k = 0; k < n_in; k++) {
        int i = 0;
        while (i < s->n_in && strcmp(s->in_desc[i].name, in[k].name)) i++;
        memcpy(gshape[k], in[k].shape, sizeof gshape[k]);
        if (cli_dist_active() && i < s->n_in && s->in_axis[i] >= 0)
            gshape[k][s->in_axis[i]] = s->in_total[i];
        memcpy(in[k].shape, gshape[k], sizeof in[k].shape);
    }
    if (xattn_module_plan(s->m, in, n_in, s->out, (size_t)s->n_out))
        return reg_lib_error(cmd, a, s);
    for (int o = 0; o < s->n_out; o++) {
        s->out_axis[o] = -1;
        s->out_total[o] = s->out_start[o] = 0;
        if (!cli_dist_active() || !cli_dist_rows) continue;
        int axis = -1;
        if (cli_dist_shard_axis(s->m, s->out[o].name, 1, s->out[o].ndim, &axis))
            return reg_lib_error(cmd, a, s);
        if (axis < 0) continue;
        int64_t st, len;
        cli_dist_range(s->out[o].shape[axis], &st, &len);
        s->out_axis[o] = axis, s->out_total[o] = s->out[o].shape[axis], s->out_start[o] = st;
        s->out[o].shape[axis] = len;
    }
    for (int o = 0; o < s->n_out; o++) {
        double n = 1;
        for (int k = 0; k < s->out[o].ndim; k++) n *= (double)s->out[o].shape[k];
        if (n * 4 > 1e12)
            return cli_error(cmd, first_file(s), "output '%s' would take %.3g GB", s->out[o].name,
                             n * 4e-9);
        if (!(s->outbuf[o] = malloc((size_t)(n ? n : 1) * sizeof(float))))
            return cli_error(cmd, first_file(s), "out of memory for the outputs");
        s->out[o].data = s->outbuf[o];
    }
    return 0;
}

int reg_forward(const char *cmd, const reg_args *a, reg_state *s, xattn_ctx *ctx)
{
    xattn_tensor in[REG_MAX_IO];
    size_t n_in;
    tensors(s, in, &n_in);
    if (xattn_module_forward(ctx, s->m, in, n_in, s->out, (size_t)s->n_out))
        return reg_lib_error(cmd, a, s);
    return 0;
}

/* The file name of part k of an output saved in parts: its template "BASE{A+B*k}" with A and B
 * integers or config fields. */
static int part_name(const reg_state *s, const char *parts, int64_t k, char *buf, size_t cap)
{
    const char *open = strchr(parts, '{'), *close = open ? strchr(open, '}') : NULL;
    if (!close) return -1;
    int64_t v = 0;
    for (const char *p = open + 1; p < close;) {
        char term[64];
        const size_t l = strcspn(p, "+}"), tl = l < sizeof term ? l : sizeof term - 1;
        snprintf(term, sizeof term, "%.*s", (int)tl, p);
        int known = 1;
        if (!strcmp(term, "k"))
            v += k;
        else if (tl > 2 && !strcmp(term + tl - 2, "*k")) {
            term[tl - 2] = '\0';
            v += k * tok_value(s, term, &known);
        } else
            v += tok_value(s, term, &known);
        if (!known) return -1;
        p += l + (p[l] == '+');
    }
    snprintf(buf, cap, "%.*s%lld%s", (int)(open - parts), parts, (long long)v, close + 1);
    return 0;
}

int reg_write(const char *cmd, const reg_args *a, const reg_state *s)
{
    xattn_io_desc d[REG_MAX_IO];
    char notes[REG_MAX_IO][256]; /* the docs of optional outputs, for this module */
    int64_t n = 0;
    for (int o = 0; o < s->n_out; o++) {
        for (size_t k = 0; k < xattn_module_output_count(s->m); k++)
            if (!xattn_module_output(s->m, k, &d[o]) && !strcmp(d[o].name, s->out[o].name)) break;
        reg_expand(s->kind, s->m, NULL, d[o].doc, notes[o], sizeof notes[o]);
        n += d[o].parts[0] && s->out[o].ndim > 0 ? s->out[o].shape[0] : 1;
    }
    cli_output *outs = calloc((size_t)(n ? n : 1), sizeof *outs);
    char(*names)[128] = calloc((size_t)(n ? n : 1), sizeof *names);
    int w = 0, rc = 0;
    if (!outs || !names) rc = cli_error(cmd, NULL, "out of memory");
    for (int o = 0; o < s->n_out && !rc; o++) {
        const xattn_tensor *t = &s->out[o];
        const char *note = d[o].optional && !d[o].when_bound ? notes[o] : NULL;
        if (!d[o].parts[0] || t->ndim < 1) { /* one array */
            const int drop = s->unbatched && d[o].shape[0] == 'B';
            reg_file_name(s->out_as[o] ? s->out_as[o] : t->name, names[w], sizeof names[w]);
            cli_output_set(&outs[w], names[w], t->data, note, t->ndim - drop, t->shape + drop);
            if (s->out_axis[o] >= drop) /* under mpirun: this rank's rows */
                outs[w].axis = s->out_axis[o] - drop, outs[w].start = s->out_start[o],
                outs[w].total = s->out_total[o];
            w++;
            continue;
        }
        /* one file per index of the first axis, without the batch axis after it if unbatched */
        const char *rest = strchr(d[o].shape, ',');
        const int drop = s->unbatched && rest && rest[1] == 'B';
        int64_t per = 1;
        for (int k = 1; k < t->ndim; k++) per *= t->shape[k];
        for (int64_t k = 0; k < t->shape[0] && !rc; k++, w++) {
            if (part_name(s, d[o].parts, k, names[w], sizeof names[w]))
                rc = cli_error(cmd, NULL, "output '%s': cannot name its parts (%s)", t->name,
                               d[o].parts);
            cli_output_set(&outs[w], names[w], (float *)t->data + k * per, note, t->ndim - 1 - drop,
                           t->shape + 1 + drop);
        }
    }
    if (!rc) rc = cli_write_outputs(cmd, a->out_dir ? a->out_dir : ".", outs, w);
    free(outs);
    free(names);
    return rc;
}

void reg_help_kinds(void)
{
    for (size_t i = 0; i < xattn_kind_count(); i++) {
        xattn_kind_desc k;
        if (xattn_kind_info(i, &k)) continue;
        printf("  %-18s %s\n", k.name, k.reference);
    }
}
