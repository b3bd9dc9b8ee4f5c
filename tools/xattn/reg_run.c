/* `xattn run` and `xattn bench` for the kinds the CLI runs through the registry. */
#include "modules_ext.h"
#include "reg_cli.h"
#include "cli_dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Kinds whose command-line runs go through the registry. */
static const char *const REGISTRY_KINDS[] = {
    "conv2d-cross",      "mutual",    "mha",         "attention",    "joint",
    "interlaced",        "multiview", "hallo-audio", "bert-decoder", "bidir",
    "bidir-transformer", NULL};

int reg_cli_handles(const char *kind)
{
    for (int i = 0; kind && REGISTRY_KINDS[i]; i++)
        if (!strcmp(REGISTRY_KINDS[i], kind)) return 1;
    return 0;
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

/* The inputs, options and outputs of one kind. */
void reg_help_kind(const char *kind)
{
    char flag[96], al[160], doc[1024];
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
        long long few = d.shape[0] ? 1 : 0; /* a shape of integers: inline numbers too */
        for (const char *p = d.shape; *p && few; p += strcspn(p, ",") + (p[strcspn(p, ",")] == ','))
            few = strspn(p, "0123456789") == strcspn(p, ",") ? few * atoll(p) : 0;
        char num[96] = "";
        if (few > 0 && few <= 4096)
            snprintf(num, sizeof num, " [or inline: %lld comma-separated numbers]", few);
        reg_expand(kind, NULL, NULL, d.doc, doc, sizeof doc);
        printf("  %-22s (%s)%s%s %s%s%s\n", flag, d.shape, d.optional ? " optional" : "",
               !d.shape[0]  ? ", a switch (the flag alone)"
               : d.additive ? (d.mask ? ", bool or float (added)" : ", float")
               : d.mask     ? ", bool"
                            : "",
               doc, al, num);
    }
    for (size_t i = 0;; i++) { /* an alias of numbered inputs: --view VK.npy, repeated */
        xattn_alias_desc d;
        char use[128];
        if (xattn_kind_alias(kind, i, &d)) break;
        const size_t l = strlen(d.name);
        if (l < 3 || strcmp(d.name + l - 2, ".*")) continue;
        flag_of(d.alias, flag, sizeof flag);
        snprintf(use, sizeof use, "%s %cK.npy", flag,
                 d.alias[0] >= 'a' && d.alias[0] <= 'z' ? d.alias[0] - 'a' + 'A' : d.alias[0]);
        printf("  %-22s repeated: the inputs %.*s0, %.*s1, ... in order, after those given by "
               "name (or --x / --context)\n",
               use, (int)(l - 1), d.name, (int)(l - 1), d.name);
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
    printf("%s options (the reference constructor's arguments; default in brackets, - = from the "
           "file):\n",
           kind);
    for (size_t j = 0;; j++) {
        xattn_arg_desc a;
        if (xattn_kind_arg(kind, j, &a)) break;
        if (a.derived) continue;
        flag_of(a.name, flag, sizeof flag);
        also(kind, a.name, -1, al, sizeof al);
        printf("  %-22s %-6s [%s] %s%s%s%s%s\n", flag, a.type,
               a.from_shapes ? "-" : a.default_value, a.doc, a.choices[0] ? ": " : "", a.choices,
               !strcmp(a.type, "bool") && !a.from_shapes ? " (the flag alone: True)" : "", al);
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
        if (d.when_bound)
            snprintf(own, sizeof own, " (present when its inputs are given)");
        else if (d.optional)
            snprintf(own, sizeof own, " with %s%s", variant ? "" : "--return-attn or ", flag);
        reg_file_name(d.name, file, sizeof file);
        reg_expand(kind, NULL, NULL, d.doc, doc, sizeof doc);
        printf("  %-22s (%s)%s%s %s%s%s%s\n", file, d.shape, own, ask, doc,
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

/* `xattn run --help` without a kind: every kind the command line runs this way. */
static void help_run(void)
{
    printf(
        "Runs a module saved from PyTorch with safetensors.torch.save_file(module.state_dict(),\n"
        "...) on .npy inputs. Its kind is detected from the tensor names (a common name prefix\n"
        "such as 'blk.attn.' is allowed) and every size from the shapes. Each kind takes the\n"
        "inputs of its reference's forward as --NAME FILE.npy (dashes for underscores; --x and\n"
        "--context name the first two; inputs without their leading batch axis are one\n"
        "sequence) and the arguments of its constructor as options (--NAME VALUE, a bool also\n"
        "as the flag alone); an option that leaves no trace in the state dict and is neither\n"
        "given nor in the file's __metadata__ takes the reference's default, announced as a\n"
        "warning after the run. Masks take the polarity of the reference, as each says.\n"
        "'xattn run --module KIND --help' (or MODEL.safetensors --help) shows one kind:\n");
    for (size_t i = 0; i < xattn_kind_count(); i++) {
        xattn_kind_desc k;
        if (xattn_kind_info(i, &k) || !reg_cli_handles(k.name)) continue;
        printf("\n");
        reg_help_kind(k.name);
    }
    printf("\n"
           "Outputs are float32 .npy files in --out-dir DIR, default '.', created if missing (its\n"
           "parent must exist); nothing is written, and no earlier output replaced, if anything\n"
           "fails. Flags of another kind than the file's are an error naming whose they are.\n"
           "\n"
           "NaN policy: by default a NaN or an infinity in an input or in the model's weights is\n"
           "an error naming the file (and tensor) and the first bad index; a float mask may hold\n"
           "-inf (a masked position) but not NaN or +inf. float64 values beyond the float32 range\n"
           "count as infinite.\n"
           "  --allow-nonfinite     pass NaN and infinities through instead (results may then\n"
           "                        hold NaN)\n"
           "\n"
           "other options:\n"
           "  --module KIND         insist on a module kind (one of those above; an error if the\n"
           "                        tensors disagree)\n"
           "  --prefix P            the module at name prefix P, in a file that holds several\n"
           "  --weights W           how the linear layers keep their weights: auto: as stored\n"
           "                        (BF16/F16 tensors stay 16-bit, others float32) [default];\n"
           "                        f32; bf16 or f16 (half the memory; rounded to nearest from\n"
           "                        wider files; read exactly, so results equal float32 weights\n"
           "                        of the same values); int8 (a quarter of the memory: per\n"
           "                        output channel scales computed at load)\n"
           "  --compute C           f32 [default], or bf16: the products read their operands\n"
           "                        rounded to bfloat16 and accumulate in float32 (the linear\n"
           "                        layers, attention's queries, keys and values; softmax,\n"
           "                        norms and outputs stay float32)\n"
           "  --kernels K           the kernel set: auto [default: the best this CPU has], amx,\n"
           "                        avx512bf16, avx512, avx2, neon or scalar (an error if the\n"
           "                        CPU lacks it)\n"
           "  --return-attn         also write the optional outputs (the attention maps)\n"
           "  --out-dir DIR         where the outputs go (default '.')\n"
           "  --threads N           threads (default: all cores)\n"
           "  -h, --help            this help\n");
    const cli_ext_module *m = cli_ext_at(0);
    if (m)
        printf("\nmore modules, each with its own options ('xattn run --module KIND --help'):\n");
    for (int i = 0; (m = cli_ext_at(i)); i++) printf("  %-24s  %s\n", m->kind, m->summary);
}

int reg_cmd_run(const char *cmd, int argc, char **argv)
{
    reg_args a;
    int help, rc;
    if ((rc = reg_parse(cmd, argc, argv, &a, &help))) return rc;
    if (help) {
        printf(
            "usage: xattn run MODEL.safetensors [--module KIND] [--prefix P] --INPUT FILE.npy ...\n"
            "                 [--OPTION VALUE ...] [--return-attn] [--out-dir DIR] [--threads N]\n"
            "                 [--weights auto|f32|bf16|f16|int8] [--compute f32|bf16]\n"
            "                 [--kernels K] [--allow-nonfinite]\n\n");
        char kb[64] = "";
        const char *kind = kind_of(&a, kb, sizeof kb);
        if (kind)
            reg_help_kind(kind);
        else
            help_run();
        return CLI_EXIT_OK;
    }
    if (!a.model && !a.kind) return cli_usage(cmd, "missing MODEL.safetensors");
    if ((rc = cli_check_out_dir(cmd, a.out_dir ? a.out_dir : "."))) return rc;
    reg_state s;
    if (!(rc = reg_open(cmd, &a, &s)) && !(rc = reg_check_weights(cmd, &a, &s)) &&
        !(rc = reg_inputs(cmd, &a, &s, 0)))
        rc = reg_outputs(cmd, &a, &s);
    rc = cli_dist_agree(cmd, rc); /* under mpirun: every rank has its inputs */
    if (!rc) {
        xattn_ctx *ctx = NULL;
        rc = reg_context(cmd, &a, &ctx);
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
        off += (size_t)snprintf(
            sizes + off, sizeof sizes - off, a->json ? "%s\"%s\": %lld" : "%s%s=%lld",
            a->json ? ", " : (i ? " " : ""), s->sym[i], (long long)s->sym_val[i]);
    const int wk = s->m ? xattn_module_weights(s->m) : XATTN_WEIGHTS_F32;
    const char *weights = wk == XATTN_WEIGHTS_AUTO ? "mixed" : xattn_weights_name(wk);
    const char *compute = xattn_ctx_get_compute(ctx) == XATTN_COMPUTE_BF16 ? "bf16" : "f32";
    if (a->json)
        printf("{\"module\": \"%s\", \"kind\": \"%s\"%s, \"seconds\": %.6g, \"min_seconds\": %.6g, "
               "\"reps\": %lld, \"threads\": %d, \"isa\": \"%s\", \"weights\": \"%s\", "
               "\"compute\": \"%s\", \"peak_rss_mb\": %.1f, \"peak_rss_source\": \"%s\"}\n",
               ref, s->kind, sizes, ts[reps / 2], ts[0], reps, xattn_ctx_get_threads(ctx),
               xattn_ctx_get_isa(ctx), weights, compute, rss, *note ? "ru_maxrss" : "VmHWM");
    else
        printf("%s (%s)  %s  forward %.3f ms (median of %lld, best %.3f ms)  peak RSS %.1f MB%s  "
               "[%s, %d threads, weights %s, compute %s]\n",
               ref, s->kind, sizes, ts[reps / 2] * 1e3, reps, ts[0] * 1e3, rss, note,
               xattn_ctx_get_isa(ctx), xattn_ctx_get_threads(ctx), weights, compute);
}

int reg_cmd_bench(const char *cmd, int argc, char **argv)
{
    reg_args a;
    int help, rc;
    if ((rc = reg_parse(cmd, argc, argv, &a, &help))) return rc;
    if (help) {
        printf(
            "usage: xattn bench MODEL.safetensors [--module KIND] [--prefix P] [--INPUT FILE.npy "
            "...]\n"
            "                   [--OPTION VALUE ...] [--batch B] [--len I] [--context-len J]\n"
            "                   [--reps N] [--threads N] [--return-attn] [--out-dir DIR] [--json]\n"
            "                   [--weights auto|f32|bf16|f16|int8] [--compute f32|bf16]\n"
            "                   [--kernels K]\n"
            "\n"
            "Times the forward of a module (any kind 'xattn run' takes, with the same inputs and\n"
            "options) after one warm-up run: the median of --reps runs (default 5) and the peak\n"
            "resident memory of this process (VmHWM). Inputs not given (but masks and biases)\n"
            "are made: the batch of the given inputs (else --batch, default 1), the first other\n"
            "size --len (default 1024), the next --context-len (default 2 * --len). --out-dir\n"
            "also writes the outputs of the last run. --weights, --compute and --kernels as\n"
            "'xattn run' (all show in the report).\n\n");
        char kb[64] = "";
        const char *kind = kind_of(&a, kb, sizeof kb);
        if (kind)
            reg_help_kind(kind);
        else
            reg_help_kinds();
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
        rc = reg_context(cmd, &a, &ctx);
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
