/* `xattn run` and `xattn bench` for the kinds the CLI runs through the registry. */
#include "reg_cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Kinds whose command-line runs go through the registry. */
static const char *const REGISTRY_KINDS[] = {"conv2d-cross", "mutual", "multiview", "hallo-audio",
                                             NULL};

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

/* " [also --a, --b]": the other flags of an input (--x / --context for the first two) or an
 * option (its aliases), " [or --alt]" for an input another may stand instead of. */
static void also_flags(const char *kind, const char *name, int input, const char *alt, char *buf,
                       size_t cap)
{
    size_t o = 0;
    char flag[96];
    buf[0] = '\0';
    const char *pos = input == 0 ? "x" : input == 1 ? "context" : "";
    if (pos[0] && strcmp(pos, name)) o += (size_t)snprintf(buf, cap, " [also --%s", pos);
    for (size_t i = 0; o < cap; i++) {
        xattn_alias_desc d;
        if (xattn_kind_alias(kind, i, &d)) break;
        if (strcmp(d.name, name)) continue;
        flag_of(d.alias, flag, sizeof flag);
        o += (size_t)snprintf(buf + o, cap - o, "%s%s", o ? ", " : " [also ", flag);
    }
    if (o && o < cap) o += (size_t)snprintf(buf + o, cap - o, "]");
    if (alt && alt[0] && o < cap) {
        flag_of(alt, flag, sizeof flag);
        snprintf(buf + o, cap - o, " [or %s]", flag);
    }
}

/* The inputs, options and outputs of one kind. */
void reg_help_kind(const char *kind)
{
    char flag[96], al[256];
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
        also_flags(kind, d.name, (int)i, d.alternative, al, sizeof al);
        long long few = d.shape[0] ? 1 : 0; /* a shape of integers: inline numbers too */
        for (const char *p = d.shape; *p && few; p += strcspn(p, ",") + (p[strcspn(p, ",")] == ','))
            few = strspn(p, "0123456789") == strcspn(p, ",") ? few * atoll(p) : 0;
        char num[96] = "";
        if (few > 0 && few <= 4096)
            snprintf(num, sizeof num, " [or inline: %lld comma-separated numbers]", few);
        printf("  %-22s (%s)%s%s %s%s%s\n", flag, d.shape, d.optional ? " optional" : "",
               d.additive ? ", bool or float (added)" : d.mask ? ", bool" : "", d.doc, al, num);
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
    printf("%s options (the reference constructor's arguments; default in brackets, - = from the file):\n", kind);
    for (size_t j = 0;; j++) {
        xattn_arg_desc a;
        if (xattn_kind_arg(kind, j, &a)) break;
        if (a.derived) continue;
        flag_of(a.name, flag, sizeof flag);
        also_flags(kind, a.name, -1, NULL, al, sizeof al);
        printf("  %-22s %-6s [%s] %s%s%s%s\n", flag, a.type, a.from_shapes ? "-" : a.default_value,
               a.doc, a.choices[0] ? ": " : "", a.choices, al);
    }
    printf("%s outputs (DIR/NAME.npy):\n", kind);
    for (size_t i = 0;; i++) {
        xattn_io_desc d;
        if (xattn_kind_io(kind, 1, i, &d)) break;
        char file[128], ask[160] = "";
        reg_file_name(d.name, file, sizeof file);
        if (d.when_bound) snprintf(ask, sizeof ask, " (present when its inputs are given)");
        else if (d.optional) {
            flag_of(d.name, flag, sizeof flag);
            snprintf(ask, sizeof ask, " with --return-attn or %s", flag);
        }
        printf("  %-22s (%s)%s %s\n", file, d.shape, ask, d.doc);
    }
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
        reg_help_kind(a.kind);
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
               "resident memory of this process (VmHWM). Inputs not given are generated: the batch\n"
               "of the given inputs (else --batch, default 1), the first other size --len (default\n"
               "1024), the next --context-len (default 2 * --len). --out-dir also writes the outputs\n"
               "of the last run.\n\n");
        if (a.kind) reg_help_kind(a.kind);
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
        }
    }
    xattn_ctx_free(ctx);
    free(ts);
    reg_free(&s);
    return rc;
}
