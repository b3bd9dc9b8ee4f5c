/* `xattn run` and `xattn bench` for the kinds the CLI runs through the registry. */
#include "reg_cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Kinds whose command-line runs go through the registry. */
static const char *const REGISTRY_KINDS[] = {
    "conv2d-cross", "mutual",    "mha",         "attention",    "joint",
    "interlaced",   "multiview", "hallo-audio", "bert-decoder", NULL};

int reg_cli_handles(const char *kind)
{
    for (int i = 0; kind && REGISTRY_KINDS[i]; i++)
        if (!strcmp(REGISTRY_KINDS[i], kind)) return 1;
    return 0;
}

static int registry_kind(const char *kind)
{
    for (size_t i = 0; kind && i < xattn_kind_count(); i++) {
        xattn_kind_desc k;
        if (!xattn_kind_info(i, &k) && !strcmp(k.name, kind)) return 1;
    }
    return 0;
}

int reg_route(int argc, char **argv, int any_kind)
{
    const char *model = NULL, *kind = NULL, *prefix = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strncmp(argv[i], "--module=", 9)) kind = argv[i] + 9;
        else if (!strcmp(argv[i], "--module") && i + 1 < argc) kind = argv[++i];
        else if (!strncmp(argv[i], "--prefix=", 9)) prefix = argv[i] + 9;
        else if (!strcmp(argv[i], "--prefix") && i + 1 < argc) prefix = argv[++i];
        else if (argv[i][0] != '-' && !model && strncmp(argv[i - 1], "--", 2)) model = argv[i];
    }
    int (*handles)(const char *) = any_kind ? registry_kind : reg_cli_handles;
    if (kind) return handles(kind);
    if (!model) return 0;
    xattn_safetensors *st = NULL;
    if (xattn_st_open(model, &st)) return 0; /* reported by the runner that takes it */
    xattn_found f[16];
    size_t n = xattn_module_scan(st, f, 16), mine = 0, match = 0;
    for (size_t i = 0; i < n && i < 16; i++) {
        if (prefix && strcmp(f[i].prefix, prefix)) continue;
        match++;
        mine += handles(f[i].kind) != 0;
    }
    xattn_st_close(st);
    /* every module the command could mean is ours (several: the runner says which to pick) */
    return match ? mine == match : prefix != NULL && n > 0;
}

static void flag_of(const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, "--%s", name);
    for (char *c = buf + 2; *c; c++)
        if (*c == '_') *c = '-';
}

/* " [also --a, --b]": the flags that also name `name` (its aliases; --x / --context for the
 * first two inputs). */
static void also(const char *kind, const char *name, int input, char *buf, size_t cap)
{
    const char *names[16];
    int n = 0;
    if ((input == 0 || input == 1) && strcmp(name, input ? "context" : "x"))
        names[n++] = input ? "context" : "x";
    for (size_t i = 0; n < 16; i++) {
        xattn_alias_desc d;
        if (xattn_kind_alias(kind, i, &d)) break;
        if (!strcmp(d.name, name)) names[n++] = d.alias;
    }
    size_t o = 0;
    buf[0] = '\0';
    for (int k = 0; k < n && o < cap; k++) {
        char flag[96];
        flag_of(names[k], flag, sizeof flag);
        o += (size_t)snprintf(buf + o, cap - o, "%s%s", k ? ", " : " [also ", flag);
    }
    if (n && o < cap) snprintf(buf + o, cap - o, "]");
}

/* " [or --alt]" for an input another may stand instead of. */
static void or_flag(const char *alt, char *buf, size_t cap)
{
    char flag[96];
    buf[0] = '\0';
    if (!alt[0]) return;
    flag_of(alt, flag, sizeof flag);
    snprintf(buf, cap, " [or %s]", flag);
}

/* The inputs, options and outputs of one kind. */
void reg_help_kind(const char *kind)
{
    char flag[96], al[160], alt[120];
    for (size_t i = 0; i < xattn_kind_count(); i++) {
        xattn_kind_desc k;
        if (!xattn_kind_info(i, &k) && !strcmp(k.name, kind))
            printf("%s: %s\n  state dict: %s\n", kind, k.reference, k.state_dict);
    }
    printf("%s inputs (.npy; float32/float64/float16, masks bool or integer):\n", kind);
    for (size_t i = 0;; i++) {
        xattn_io_desc d;
        if (xattn_kind_io(kind, 0, i, &d)) break;
        flag_of(d.name, flag, sizeof flag);
        also(kind, d.name, (int)i, al, sizeof al);
        or_flag(d.alternative, alt, sizeof alt);
        long long few = d.shape[0] ? 1 : 0; /* a shape of integers: inline numbers too */
        for (const char *p = d.shape; *p && few; p += strcspn(p, ",") + (p[strcspn(p, ",")] == ','))
            few = strspn(p, "0123456789") == strcspn(p, ",") ? few * atoll(p) : 0;
        char num[96] = "";
        if (few > 0 && few <= 4096)
            snprintf(num, sizeof num, " [or inline: %lld comma-separated numbers]", few);
        printf("  %-22s (%s)%s%s %s%s%s%s\n", flag, d.shape, d.optional ? " optional" : "",
               !d.shape[0] ? ", a switch (the flag alone)" : d.additive ? ", bool or float (added)"
               : d.mask ? ", bool" : "", d.doc, al, alt, num);
    }
    for (size_t i = 0;; i++) { /* an alias of numbered inputs: --view VK.npy, repeated */
        xattn_alias_desc d;
        char use[128];
        if (xattn_kind_alias(kind, i, &d)) break;
        const size_t l = strlen(d.name);
        if (l < 3 || strcmp(d.name + l - 2, ".*")) continue;
        flag_of(d.alias, flag, sizeof flag);
        snprintf(use, sizeof use, "%s %cK.npy", flag, d.alias[0] >= 'a' && d.alias[0] <= 'z'
                                                         ? d.alias[0] - 'a' + 'A' : d.alias[0]);
        printf("  %-22s repeated: the inputs %.*s0, %.*s1, ... in order, after those given by "
               "name (or --x / --context)\n", use, (int)(l - 1), d.name, (int)(l - 1), d.name);
    }
    const char *one_of = xattn_kind_one_of(kind); /* "a|b,c" -> "--a | --b, --c" */
    if (one_of[0]) {
        printf("  give one way (not two, not none): --");
        for (const char *c = one_of; *c; c++) {
            if (*c == '|' || *c == ',')
                printf("%s--", *c == '|' ? " | " : ", ");
            else
                putchar(*c == '_' ? '-' : *c);
        }
        printf("\n");
    }
    printf("%s options (the reference constructor's arguments; default in brackets, - = from the file):\n", kind);
    for (size_t j = 0;; j++) {
        xattn_arg_desc a;
        if (xattn_kind_arg(kind, j, &a)) break;
        if (a.derived) continue;
        flag_of(a.name, flag, sizeof flag);
        also(kind, a.name, -1, al, sizeof al);
        printf("  %-22s %-6s [%s] %s%s%s%s%s\n", flag, a.type, a.from_shapes ? "-" : a.default_value,
               a.doc, a.choices[0] ? ": " : "", a.choices, !strcmp(a.type, "bool") && !a.from_shapes ?
               " (the flag alone: True)" : "", al);
    }
    printf("%s outputs (DIR/NAME.npy):\n", kind);
    for (size_t i = 0;; i++) {
        xattn_io_desc d;
        if (xattn_kind_io(kind, 1, i, &d)) break;
        char ask[256] = "", file[128];
        size_t o = 0;
        int variant = 0;
        for (size_t k = 0; o < sizeof ask; k++) { /* asked by an alias */
            xattn_alias_desc e;
            if (xattn_kind_alias(kind, k, &e)) break;
            if (strcmp(e.name, d.name)) continue;
            flag_of(e.alias, flag, sizeof flag);
            variant |= e.as[0] != 0;
            o += (size_t)snprintf(ask + o, sizeof ask - o, " or %s%s%s%s", flag,
                                  e.as[0] ? " (written as " : "", e.as, e.as[0] ? ".npy)" : "");
        }
        char own[160] = ""; /* asked by its own bare flag too, or there with its inputs */
        flag_of(d.name, flag, sizeof flag);
        if (d.when_bound) snprintf(own, sizeof own, " (present when its inputs are given)");
        else if (d.optional)
            snprintf(own, sizeof own, " with %s%s", variant ? "" : "--return-attn or ", flag);
        reg_file_name(d.name, file, sizeof file);
        printf("  %-22s (%s)%s%s %s%s%s%s\n", file, d.shape, own, ask, d.doc,
               d.parts[0] ? "; saved one file per index k of the first axis, as " : "", d.parts,
               d.parts[0] ? ".npy" : "");
    }
}

/* The kind a command line means: --module, else the one module of its file (for --help). */
static const char *kind_of(const reg_args *a, char *buf, size_t cap)
{
    if (a->kind || !a->model) return a->kind;
    xattn_safetensors *st = NULL;
    xattn_found f[16];
    if (xattn_st_open(a->model, &st)) return NULL;
    size_t n = xattn_module_scan(st, f, 16);
    for (size_t i = 0; i < n && i < 16; i++)
        if (!a->prefix || !strcmp(f[i].prefix, a->prefix)) {
            snprintf(buf, cap, "%s", f[i].kind);
            break;
        }
    xattn_st_close(st);
    return buf[0] ? buf : NULL;
}

int reg_cmd_run(const char *cmd, int argc, char **argv)
{
    reg_args a;
    int help, rc;
    if ((rc = reg_parse(cmd, argc, argv, &a, &help))) return rc;
    if (help) {
        printf("usage: xattn run MODEL.safetensors [--module KIND] [--prefix P] --INPUT FILE.npy ...\n"
               "                 [--OPTION VALUE ...] [--return-attn] [--out-dir DIR] [--threads N]\n"
               "                 [--allow-nonfinite]\n\n");
        char kb[64] = "";
        const char *kind = kind_of(&a, kb, sizeof kb);
        if (kind) reg_help_kind(kind);
        else reg_help_kinds();
        return CLI_EXIT_OK;
    }
    if (!a.model && !a.kind) return cli_usage(cmd, "missing MODEL.safetensors");
    if ((rc = cli_check_out_dir(cmd, a.out_dir ? a.out_dir : "."))) return rc;
    reg_state s;
    if (!(rc = reg_open(cmd, &a, &s)) && !(rc = reg_check_weights(cmd, &a, &s)) &&
        !(rc = reg_inputs(cmd, &a, &s, 0)) && !(rc = reg_outputs(cmd, &a, &s))) {
        xattn_ctx *ctx = NULL;
        if (a.threads && (xattn_ctx_new(&ctx) || xattn_ctx_set_threads(ctx, (int)a.threads)))
            rc = cli_lib_error(cmd, NULL);
        if (!rc) rc = reg_forward(cmd, &a, &s, ctx);
        if (!rc) rc = reg_write(cmd, &a, &s);
        if (!rc) reg_warn(cmd, &a, &s);
        xattn_ctx_free(ctx);
    }
    reg_free(&s);
    return rc;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(const reg_args *a, const reg_state *s, const double *ts, long long reps,
                   xattn_ctx *ctx)
{
    const char *note;
    const double rss = cli_peak_rss_bytes(&note) / 1048576.0;
    char ref[160], sizes[256];
    reg_reference_name(s->kind, ref, sizeof ref);
    size_t off = 0;
    sizes[0] = '\0';
    for (int i = 0; i < s->n_sym && off < sizeof sizes; i++)
        off += (size_t)snprintf(sizes + off, sizeof sizes - off, a->json ? "%s\"%s\": %lld" : "%s%s=%lld",
                                a->json ? ", " : (i ? " " : ""), s->sym[i], (long long)s->sym_val[i]);
    if (a->json)
        printf("{\"module\": \"%s\", \"kind\": \"%s\"%s, \"seconds\": %.6g, \"min_seconds\": %.6g, "
               "\"reps\": %lld, \"threads\": %d, \"isa\": \"%s\", \"peak_rss_mb\": %.1f, "
               "\"peak_rss_source\": \"%s\"}\n",
               ref, s->kind, sizes, ts[reps / 2], ts[0], reps, xattn_ctx_get_threads(ctx),
               xattn_ctx_get_isa(ctx), rss, *note ? "ru_maxrss" : "VmHWM");
    else
        printf("%s (%s)  %s  forward %.3f ms (median of %lld, best %.3f ms)  peak RSS %.1f MB%s  "
               "[%s, %d threads]\n",
               ref, s->kind, sizes, ts[reps / 2] * 1e3, reps, ts[0] * 1e3, rss, note,
               xattn_ctx_get_isa(ctx), xattn_ctx_get_threads(ctx));
}

int reg_cmd_bench(const char *cmd, int argc, char **argv)
{
    reg_args a;
    int help, rc;
    if ((rc = reg_parse(cmd, argc, argv, &a, &help))) return rc;
    if (help) {
        printf("usage: xattn bench MODEL.safetensors [--module KIND] [--prefix P] [--INPUT FILE.npy ...]\n"
               "                   [--OPTION VALUE ...] [--batch B] [--len I] [--context-len J]\n"
               "                   [--reps N] [--threads N] [--return-attn] [--out-dir DIR] [--json]\n"
               "\n"
               "Times the forward of a module (any kind 'xattn run' takes, with the same inputs and\n"
               "options) after one warm-up run: the median of --reps runs (default 5) and the peak\n"
               "resident memory of this process (VmHWM). Inputs not given (but masks) are generated:\n"
               "the batch of the given inputs (else --batch, default 1), the first other size --len\n"
               "(default 1024), the next --context-len (default 2 * --len). --out-dir also writes\n"
               "the outputs of the last run.\n\n");
        char kb[64] = "";
        const char *kind = kind_of(&a, kb, sizeof kb);
        if (kind) reg_help_kind(kind);
        else reg_help_kinds();
        return CLI_EXIT_OK;
    }
    if (!a.model && !a.kind) return cli_usage(cmd, "missing MODEL.safetensors");
    if (a.out_dir && (rc = cli_check_out_dir(cmd, a.out_dir))) return rc;
    const long long reps = a.reps ? a.reps : 5;
    reg_state s;
    xattn_ctx *ctx = NULL;
    double *ts = calloc((size_t)reps, sizeof *ts);
    if (!ts) return cli_error(cmd, NULL, "out of memory");
    if (!(rc = reg_open(cmd, &a, &s)) && !(rc = reg_check_weights(cmd, &a, &s)) &&
        !(rc = reg_inputs(cmd, &a, &s, 1)) && !(rc = reg_outputs(cmd, &a, &s))) {
        if (xattn_ctx_new(&ctx) || (a.threads && xattn_ctx_set_threads(ctx, (int)a.threads)))
            rc = cli_lib_error(cmd, NULL);
        for (long long r = -1; !rc && r < reps; r++) {
            double t = cli_now();
            rc = reg_forward(cmd, &a, &s, ctx);
            if (r >= 0) ts[r] = cli_now() - t;
        }
        if (!rc) {
            qsort(ts, (size_t)reps, sizeof *ts, cmp_double);
            cli_quiet_writes = a.json; /* stdout is the JSON line */
            if (a.out_dir) rc = reg_write(cmd, &a, &s);
            if (!rc) report(&a, &s, ts, reps, ctx);
            if (!rc) reg_warn(cmd, &a, &s);
        }
    }
    xattn_ctx_free(ctx);
    free(ts);
    reg_free(&s);
    return rc;
}
