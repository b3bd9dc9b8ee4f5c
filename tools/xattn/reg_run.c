/* `xattn run` and `xattn bench` for the kinds the CLI runs through the registry. */
#include "reg_cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Kinds whose command-line runs go through the registry. */
static const char *const REGISTRY_KINDS[] = {"conv2d-cross", NULL};

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

/* The inputs, options and outputs of one kind. */
void reg_help_kind(const char *kind)
{
    char flag[96];
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
        printf("  %-22s (%s)%s%s %s%s\n", flag, d.shape, d.optional ? " optional" : "",
               d.additive ? ", bool or float (added)" : d.mask ? ", bool" : "", d.doc,
               i < 2 ? (i ? " [also --context]" : " [also --x]") : "");
    }
    printf("%s options (the reference constructor's arguments; default in brackets, - = from the file):\n", kind);
    for (size_t j = 0;; j++) {
        xattn_arg_desc a;
        if (xattn_kind_arg(kind, j, &a)) break;
        if (a.derived) continue;
        flag_of(a.name, flag, sizeof flag);
        printf("  %-22s %-6s [%s] %s%s%s\n", flag, a.type, a.from_shapes ? "-" : a.default_value,
               a.doc, a.choices[0] ? ": " : "", a.choices);
    }
    printf("%s outputs (DIR/NAME.npy):\n", kind);
    for (size_t i = 0;; i++) {
        xattn_io_desc d;
        if (xattn_kind_io(kind, 1, i, &d)) break;
        printf("  %-22s (%s)%s %s\n", d.name, d.shape, d.optional ? " with --return-attn" : "",
               d.doc);
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
    if (!a.model) return cli_usage(cmd, "missing MODEL.safetensors");
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
