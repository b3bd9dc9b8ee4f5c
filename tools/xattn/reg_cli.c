/*
 * Running any module kind through the library's registry, for `xattn run` and `xattn bench`:
 * the kind's named inputs become options (--NAME FILE.npy, dashes for underscores; --x and
 * --context also name its first and second input), its constructor arguments become options
 * (--heads 8), its optional outputs are written with --return-attn. Shapes are checked against
 * the kind's symbolic shapes here, so that every message names the file at fault; nothing in
 * this file knows any particular kind.
 */
#include "reg_cli.h"
#include "cli_dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- parsing ---------------------------------------------------------------------------- */

static const char *const FIXED_VALUE[] = {"--module",      "--prefix", "--out-dir", "--threads",
                                          "--reps",        "--len",    "--weights", "--compute",
                                          "--context-len", "--batch",  "--kernels", NULL};
static const char *const FIXED_FLAG[] = {"--return-attn", "--allow-nonfinite", "--json", NULL};

static int in_list(const char *const *l, const char *s)
{
    for (int i = 0; l[i]; i++)
        if (!strcmp(l[i], s)) return 1;
    return 0;
}

static int set_fixed(const char *cmd, reg_args *a, const char *flag, const char *val)
{
    const char **dst = !strcmp(flag, "--module")    ? &a->kind
                       : !strcmp(flag, "--prefix")  ? &a->prefix
                       : !strcmp(flag, "--out-dir") ? &a->out_dir
                       : !strcmp(flag, "--weights") ? &a->weights
                       : !strcmp(flag, "--compute") ? &a->compute
                       : !strcmp(flag, "--kernels") ? &a->kernels
                                                    : NULL;
    if (dst) {
        if (!*val && dst != &a->prefix) return cli_usage(cmd, "%s: empty value", flag);
        *dst = val;
        return 0;
    }
    long long *n = !strcmp(flag, "--threads")       ? &a->threads
                   : !strcmp(flag, "--reps")        ? &a->reps
                   : !strcmp(flag, "--len")         ? &a->len
                   : !strcmp(flag, "--context-len") ? &a->context_len
                                                    : &a->batch;
    long long max = !strcmp(flag, "--threads") ? XATTN_MAX_THREADS : 1LL << 40;
    char *end = NULL;
    long long v = strtoll(val, &end, 10);
    if (!*val || *end || v < 1 || v > max)
        return cli_usage(cmd, "%s: '%s' is not an integer in [1, %lld]", flag, val, max);
    *n = v;
    return 0;
}

int reg_parse(const char *cmd, int argc, char **argv, reg_args *a, int *help)
{
    memset(a, 0, sizeof *a);
    *help = 0;
    int n_seen = 0; /* flags seen so far, kept in a->flags */
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            *help = 1;
            continue;
        }
        if (strncmp(arg, "--", 2) || !arg[2]) {
            if (!*arg) return cli_usage(cmd, "empty argument");
            if (a->model) return cli_usage(cmd, "unexpected argument '%s'", arg);
            a->model = arg;
            continue;
        }
        char flag[128];
        const char *eq = strchr(arg, '=');
        snprintf(flag, sizeof flag, "%.*s", (int)(eq ? (size_t)(eq - arg) : strlen(arg)), arg);
        /* the runner's own flags once; an input or option given twice is refused where it is
         * mapped (an alias of numbered inputs repeats: --view) */
        const int fixed = in_list(FIXED_VALUE, flag) || in_list(FIXED_FLAG, flag);
        for (int k = 0; k < n_seen && fixed; k++)
            if (!strcmp(a->flags[k], flag)) return cli_usage(cmd, "%s given twice", flag);
        if (n_seen >= REG_MAX_FLAGS) return cli_usage(cmd, "too many options");
        snprintf(a->flags[n_seen++], sizeof a->flags[0], "%s", flag);
        const char *val = eq ? eq + 1 : NULL;
        if (in_list(FIXED_FLAG, flag)) {
            if (val) return cli_usage(cmd, "%s takes no value", flag);
            if (!strcmp(flag, "--return-attn"))
                a->return_all = 1;
            else if (!strcmp(flag, "--json"))
                a->json = 1;
            else
                a->allow_nonfinite = 1;
            continue;
        }
        if (!val && i + 1 < argc && strncmp(argv[i + 1], "--", 2)) val = argv[++i];
        if (in_list(FIXED_VALUE, flag)) {
            if (!val) return cli_usage(cmd, "%s needs a value", flag);
            int rc = set_fixed(cmd, a, flag, val);
            if (rc) return rc;
            continue;
        }
        if (a->n_rest >= REG_MAX_ARGS) return cli_usage(cmd, "too many options");
        a->rest[a->n_rest].flag = a->flags[n_seen - 1];
        a->rest[a->n_rest].value = val;
        a->n_rest++;
    }
    return 0;
}

/* "--context-mask" -> "context_mask" */
static void flag_to_name(const char *flag, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", flag + 2);
    for (char *c = buf; *c; c++)
        if (*c == '-') *c = '_';
}

/* ---- aliases (other names the kind accepts: older flags, short names) --------------------- */

const char *reg_alias(const char *kind, const char *name, const char **as)
{
    for (size_t i = 0;; i++) {
        xattn_alias_desc d;
        if (xattn_kind_alias(kind, i, &d)) return NULL;
        if (strcmp(d.alias, name)) continue;
        if (as) *as = d.as[0] ? d.as : NULL;
        return d.name;
    }
}

void reg_flag_of(const char *kind, const char *name, int input, char *buf, size_t cap)
{
    const char *alias = NULL;
    for (size_t i = 0; !alias; i++) {
        xattn_alias_desc d;
        if (xattn_kind_alias(kind, i, &d)) break;
        if (!strcmp(d.name, name)) alias = d.alias;
    }
    if (!alias && input >= 0 && input < 2 && strcmp(name, input ? "context" : "x"))
        alias = input ? "context" : "x";
    size_t o = (size_t)snprintf(buf, cap, "--%s", name);
    if (alias && o < cap) snprintf(buf + o, cap - o, " (or --%s)", alias);
    for (char *c = buf + 2; *c; c++)
        if (*c == '_') *c = '-';
}

void reg_reference_name(const char *kind, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", kind);
    for (size_t i = 0; i < xattn_kind_count(); i++) {
        xattn_kind_desc k;
        if (!xattn_kind_info(i, &k) && !strcmp(k.name, kind))
            snprintf(buf, cap, "%.*s", (int)strcspn(k.reference, "("), k.reference);
    }
    size_t n = strlen(buf);
    while (n && buf[n - 1] == ' ') buf[--n] = '\0';
}

/* ---- the module --------------------------------------------------------------------------- */

/* Finds the module of the file (one, or the one --module / --prefix select). */
static int pick(const char *cmd, const reg_args *a, const xattn_safetensors *st, char *kind,
                char *prefix, char *why, size_t cap)
{
    xattn_found f[64];
    size_t n = xattn_module_scan(st, f, 64), match = 0, first = 0;
    for (size_t i = 0; i < n && i < 64; i++) {
        if ((a->kind && strcmp(f[i].kind, a->kind)) ||
            (a->prefix && strcmp(f[i].prefix, a->prefix)))
            continue;
        if (!match++) first = i;
    }
    char pp[256];
    if (match == 1) {
        snprintf(kind, 64, "%s", f[first].kind);
        snprintf(prefix, 256, "%s", f[first].prefix);
        return 0;
    }
    if (match > 1) {
        char list[1024];
        size_t off = 0;
        for (size_t i = 0; i < n && i < 64 && off < sizeof list; i++)
            off += (size_t)snprintf(list + off, sizeof list - off, "%s%s at '%s'", i ? ", " : "",
                                    f[i].kind, cli_printable(f[i].prefix, pp, 64));
        return cli_error(cmd, a->model, "holds %zu modules (%s): choose one with --prefix P%s",
                         match, list, a->kind ? "" : " or --module KIND");
    }
    if (a->kind) { /* kinds without weights are named, not found */
        for (size_t i = 0; i < xattn_kind_count(); i++) {
            xattn_kind_desc d;
            if (!xattn_kind_info(i, &d) && !strcmp(d.name, a->kind) && !d.state_dict[0]) {
                snprintf(kind, 64, "%s", a->kind);
                snprintf(prefix, 256, "%s", a->prefix ? a->prefix : "");
                return -1; /* found by name: the caller opens it by kind */
            }
        }
        /* --module names another kind than the file holds (at the prefix): opened there all
         * the same (by kind), so that a failure says what the kind misses (*why: what the
         * file holds instead) */
        const char *other = NULL;
        for (size_t i = 0; i < n && i < 64 && !other; i++)
            if (!a->prefix || !strcmp(f[i].prefix, a->prefix)) other = f[i].kind;
        char ref[160];
        if (other) {
            reg_reference_name(other, ref, sizeof ref);
            snprintf(why, cap, "--module %s, but the tensors are a %s (%s)", a->kind, ref, other);
        } else {
            snprintf(why, cap, "no %s module found%s%s%s", a->kind, a->prefix ? " at prefix '" : "",
                     a->prefix ? cli_printable(a->prefix, pp, sizeof pp) : "",
                     a->prefix ? "'" : "");
        }
        snprintf(kind, 64, "%s", a->kind);
        snprintf(prefix, 256, "%s", a->prefix ? a->prefix : "");
        return -1;
    }
    xattn_module *m = NULL;
    if (!a->kind && !a->prefix && !n && xattn_module_open(st, NULL, &m) == XATTN_ERR_UNSUPPORTED)
        return cli_lib_error(cmd, a->model); /* tensor names it cannot take */
    xattn_module_free(m);
    return cli_error(cmd, a->model, "no %s module found%s%s%s (see 'xattn inspect')",
                     a->kind ? a->kind : "", a->prefix ? " at prefix '" : "",
                     a->prefix ? cli_printable(a->prefix, pp, sizeof pp) : "",
                     a->prefix ? "'" : "");
}

/* The constructor arguments among the options (by name or alias, each once; a bool given bare
 * is True). */
static int collect_options(const char *cmd, reg_state *s, const reg_args *a)
{
    for (int r = 0; r < a->n_rest; r++) {
        char name[128];
        flag_to_name(a->rest[r].flag, name, sizeof name);
        const char *target = reg_alias(s->kind, name, NULL);
        for (size_t j = 0;; j++) {
            xattn_arg_desc d;
            if (xattn_kind_arg(s->kind, j, &d)) break;
            if (strcmp(d.name, target ? target : name) || d.derived) continue;
            const char *value = a->rest[r].value;
            if (!value && strcmp(d.type, "bool"))
                return cli_usage(cmd, "%s needs a value", a->rest[r].flag);
            for (int k = 0; k < s->n_opts; k++)
                if (!strcmp(s->opts[k].name, d.name))
                    return strcmp(s->opt_names[k], a->rest[r].flag)
                               ? cli_usage(cmd, "%s and %s name the same option", s->opt_names[k],
                                           a->rest[r].flag)
                               : cli_usage(cmd, "%s given twice", a->rest[r].flag);
            s->opt_names[s->n_opts] = a->rest[r].flag;
            s->opts[s->n_opts].name = d.name;
            s->opts[s->n_opts].value = value ? value : "True";
            s->n_opts++;
            s->used[r] = 1;
            break;
        }
    }
    return 0;
}

/* The flag of option `name` in messages: the one given, else its flag and alias. */
static void option_flag(const reg_state *s, const char *name, char *buf, size_t cap)
{
    for (int k = 0; k < s->n_opts; k++)
        if (!strcmp(s->opts[k].name, name)) {
            snprintf(buf, cap, "%s", s->opt_names[k]);
            return;
        }
    reg_flag_of(s->kind, name, -1, buf, cap);
}

/* A library error naming an option ("option 'num_heads' ..."): a malformed value is a usage
 * error naming the flag given; any other is reported on the file, each "option 'NAME'" as its
 * flag. 0 when the error names no option. */
static int option_error(const char *cmd, const char *model, const reg_state *s)
{
    char e[1024]; /* a copy: the calls below clear the library's last error */
    snprintf(e, sizeof e, "%s", xattn_last_error());
    const char *q = strstr(e, "option '");
    if (!q) return 0;
    char name[96], flag[160];
    snprintf(name, sizeof name, "%.*s", (int)strcspn(q + 8, "'"), q + 8);
    option_flag(s, name, flag, sizeof flag);
    const char *val = q + 8 + strlen(name);
    if (!strncmp(val, "' is \"", 6)) { /* option 'NAME' is "VALUE", not EXPECTED */
        val += 6;
        const size_t vl = strcspn(val, "\"");
        const char *exp = strstr(val + vl, ", not ");
        return cli_usage(cmd, "%s: '%.*s' is not %s", flag, (int)vl, val, exp ? exp + 6 : "valid");
    }
    char msg[1024];
    snprintf(msg, sizeof msg, "%.*soption %s%s", (int)(q - e), e, flag, val + 1);
    if (!model) return cli_usage(cmd, "%s", msg);
    return cli_error(cmd, model, "%s", msg);
}

int reg_open(const char *cmd, const reg_args *a, reg_state *s)
{
    memset(s, 0, sizeof *s);
    if (a->need_f32 && a->compute && strcmp(a->compute, "f32"))
        return cli_usage(cmd, "--compute %s: gradients are computed in float32", a->compute);
    if (a->kind) { /* --module names a kind of the registry */
        char list[512];
        size_t o = 0, known = 0;
        for (size_t i = 0; i < xattn_kind_count() && o < sizeof list; i++) {
            xattn_kind_desc k;
            if (xattn_kind_info(i, &k)) continue;
            known |= !strcmp(k.name, a->kind);
            o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", i ? ", " : "", k.name);
        }
        char shown[64];
        if (!known)
            return cli_usage(cmd, "--module: '%s' is not a module kind (kinds: %s)",
                             cli_printable(a->kind, shown, sizeof shown), list);
    }
    if (!a->model && a->weights)
        return cli_usage(cmd, "--weights: there is no model file whose weights it would keep");
    if (!a->model) { /* a kind without weights, named by --module */
        snprintf(s->kind, sizeof s->kind, "%s", a->kind ? a->kind : "");
        for (size_t i = 0; i < xattn_kind_count(); i++) {
            xattn_kind_desc k;
            if (!xattn_kind_info(i, &k) && !strcmp(k.name, s->kind) && k.state_dict[0])
                return cli_usage(cmd, "missing MODEL.safetensors (%s has weights)", s->kind);
        }
        int rc = collect_options(cmd, s, a);
        if (rc) return rc;
        if (xattn_module_create(s->kind, s->opts, (size_t)s->n_opts, 0, &s->m)) {
            int orc = option_error(cmd, NULL, s);
            return orc ? orc : cli_usage(cmd, "%s", xattn_last_error());
        }
        return 0;
    }
    for (size_t i = 0; a->kind && i < xattn_kind_count(); i++) {
        xattn_kind_desc k;
        if (!xattn_kind_info(i, &k) && !strcmp(k.name, a->kind) && !k.state_dict[0])
            return cli_usage(cmd, "%s has no weights: no model file is needed (got '%s')", a->kind,
                             a->model);
    }
    int weights = a->need_f32 ? XATTN_WEIGHTS_F32 : XATTN_WEIGHTS_AUTO;
    if (a->weights) {
        const int w = xattn_weights_parse(a->weights);
        char shown[64];
        if (w < 0)
            return cli_usage(cmd, "--weights: '%s' is not auto, f32, bf16, f16 or int8",
                             cli_printable(a->weights, shown, sizeof shown));
        if (a->need_f32 && w != XATTN_WEIGHTS_F32 && w != XATTN_WEIGHTS_AUTO)
            return cli_usage(cmd,
                             "--weights %s: gradients need float32 weights (16-bit ones are "
                             "read exactly as float32 here)",
                             a->weights);
        if (!a->need_f32) weights = w;
    }
    if (xattn_st_open(a->model, &s->st) != XATTN_OK) return cli_lib_error(cmd, a->model);
    char why[512] = "";
    int rc = pick(cmd, a, s->st, s->kind, s->prefix, why, sizeof why);
    if (rc > 0) return rc;
    if ((rc = collect_options(cmd, s, a))) return rc;
    xattn_open_opts o;
    memset(&o, 0, sizeof o);
    o.kind = s->kind;
    o.prefix = s->prefix;
    o.options = s->opts;
    o.n_options = (size_t)s->n_opts;
    o.weights = weights;
    if (xattn_module_open(s->st, &o, &s->m) != XATTN_OK) {
        int orc = option_error(cmd, a->model, s);
        if (orc || !why[0]) return orc ? orc : cli_lib_error(cmd, a->model);
        char e[1024]; /* the kind named is not what the file holds: both said */
        snprintf(e, sizeof e, "%s", xattn_last_error());
        return cli_error(cmd, a->model, "%s: %s", why, e);
    }
    return 0;
}

int reg_context(const char *cmd, const reg_args *a, xattn_ctx **ctx)
{
    *ctx = NULL;
    int compute = XATTN_COMPUTE_F32;
    if (a->compute && strcmp(a->compute, "f32")) {
        char shown[64];
        if (strcmp(a->compute, "bf16"))
            return cli_usage(cmd, "--compute: '%s' is not f32 or bf16",
                             cli_printable(a->compute, shown, sizeof shown));
        if (a->need_f32) return cli_usage(cmd, "--compute bf16: gradients are computed in float32");
        compute = XATTN_COMPUTE_BF16;
    }
    /* under mpirun: the communicator too, the module's sequences sharded */
    if (!(*ctx = cli_dist_ctx(cmd, a->threads))) return CLI_EXIT_ERROR;
    if (xattn_ctx_set_compute(*ctx, compute) ||
        (a->kernels && xattn_ctx_set_isa(*ctx, a->kernels))) {
        xattn_ctx_free(*ctx);
        *ctx = NULL;
        return cli_lib_error(cmd, NULL);
    }
    return 0;
}

void reg_warn(const char *cmd, const reg_args *a, const reg_state *s)
{
    const char *w = s->m && cli_dist_rank() == 0 ? xattn_module_warnings(s->m) : "";
    while (*w) { /* one line each, "option 'NAME'" as its flag */
        const size_t l = strcspn(w, "\n");
        char line[1024], flag[160];
        snprintf(line, sizeof line, "%.*s", (int)l, w);
        char *q = strstr(line, "option '");
        if (q && strchr(q + 8, '\'')) {
            char name[96], rest[512];
            snprintf(name, sizeof name, "%.*s", (int)strcspn(q + 8, "'"), q + 8);
            snprintf(rest, sizeof rest, "%s", strchr(q + 8, '\'') + 1);
            reg_flag_of(s->kind, name, -1, flag, sizeof flag);
            snprintf(q, sizeof line - (size_t)(q - line), "option %s%s", flag, rest);
        }
        fprintf(stderr, "xattn %s: %s: warning: %s\n", cmd, a->model ? a->model : s->kind, line);
        w += l + (w[l] == '\n');
    }
}

void reg_free(reg_state *s)
{
    xattn_module_free(s->m);
    xattn_st_close(s->st);
    for (int i = 0; i < REG_MAX_IO; i++) {
        xattn_array_free(&s->arr[i]);
        free(s->outbuf[i]);
    }
    memset(s, 0, sizeof *s);
}

/* NaN policy for the weights the module holds: its own copies are scanned (the file's pages
 * were handed back as they were copied; reading the file again would make them resident). */
int reg_check_weights(const char *cmd, const reg_args *a, const reg_state *s)
{
    if (a->allow_nonfinite) return 0;
    float *buf = NULL;
    int rc = 0;
    for (size_t i = 0; !rc && i < xattn_module_param_count(s->m); i++) {
        xattn_param_desc p;
        if (xattn_module_param(s->m, i, &p) ||
            (!p.data && xattn_module_param_kept(s->m, i) == XATTN_F32)) /* absent */
            continue;
        xattn_array w;
        memset(&w, 0, sizeof w);
        w.dtype = XATTN_F32;
        w.ndim = p.ndim;
        memcpy(w.shape, p.shape, sizeof w.shape);
        w.data = p.data;
        if (!p.data) { /* kept in 16 bits or int8: its values as float32 */
            float *nb = realloc(buf, sizeof(float) * (size_t)xattn_array_numel(&w));
            if (!nb) {
                rc = cli_error(cmd, a->model, "out of memory");
                break;
            }
            buf = nb;
            if (xattn_module_param_read(s->m, i, buf)) {
                rc = cli_lib_error(cmd, a->model);
                break;
            }
            w.data = buf;
        }
        char what[64], at[200], shown[768];
        const int64_t bad = cli_first_nonfinite(&w, CLI_FINITE_STRICT, what, sizeof what);
        if (bad < 0) continue;
        char full[768];
        snprintf(full, sizeof full, "%s%s", s->prefix, p.name);
        cli_index_str(w.ndim, w.shape, bad, at, sizeof at);
        rc = cli_error(cmd, a->model,
                       "tensor '%s' holds a non-finite value (%s%s) at index %s; pass "
                       "--allow-nonfinite to accept it",
                       cli_printable(full, shown, sizeof shown), what,
                       p.stored_dtype == XATTN_F64 ? " as float32" : "", at);
    }
    free(buf);
    return rc;
}
