/* xattn init: a new module with the reference's default initialisation, through the registry. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *CMD = "init";

static void help(void)
{
    printf(
        "usage: xattn init KIND --out FILE.safetensors [--seed N] [--ARG VALUE ...]\n"
        "\n"
        "Creates a module of KIND with the parameters drawn as its PyTorch reference\n"
        "initialises them (nn.Linear / 1x1 Conv2d: kaiming-uniform weights and U(-1/sqrt(fan_in),\n"
        "1/sqrt(fan_in)) biases; norms: ones and zeros; nn.MultiheadAttention: xavier-uniform\n"
        "in_proj and zero biases), from a generator seeded by --seed (default 0), and saves it\n"
        "with the reference's state_dict names and a __metadata__ holding the options the names\n"
        "cannot tell, so that the reference module built with the same arguments loads it with\n"
        "load_state_dict(strict=True). ARGs are the reference constructor's keyword arguments,\n"
        "spelled with dashes (--in-channels 8); booleans take True or False.\n"
        "\n"
        "kinds and their arguments (default in brackets; '-' = required):\n");
    for (size_t i = 0; i < xattn_kind_count(); i++) {
        xattn_kind_desc k;
        if (xattn_kind_info(i, &k)) continue;
        printf("  %s: %s\n", k.name, k.reference);
        for (size_t j = 0; j < k.n_args; j++) {
            xattn_arg_desc a;
            if (xattn_kind_arg(k.name, j, &a) || a.derived) continue;
            char flag[64];
            snprintf(flag, sizeof flag, "--%s", a.name);
            for (char *c = flag + 2; *c; c++)
                if (*c == '_') *c = '-';
            printf("      %-22s %-6s [%s] %s%s%s\n", flag, a.type, a.default_value, a.doc,
                   a.choices[0] ? ": " : "", a.choices);
        }
    }
    printf("\n  -h, --help               this help\n");
}

/* "--in-channels" -> "in_channels" into buf; 0 on success. */
static int arg_name(const char *flag, char *buf, size_t cap)
{
    if (strncmp(flag, "--", 2) || !flag[2] || strlen(flag + 2) >= cap) return -1;
    snprintf(buf, cap, "%s", flag + 2);
    for (char *c = buf; *c; c++)
        if (*c == '-') *c = '_';
    return 0;
}

int cmd_init(int argc, char **argv)
{
    const char *kind = NULL, *out = NULL, *seed_s = NULL;
    xattn_option opts[64];
    static char names[64][64];
    size_t n = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help();
            return CLI_EXIT_OK;
        }
        if (strncmp(a, "--", 2)) {
            if (kind) return cli_usage(CMD, "unexpected argument '%s'", a);
            kind = a;
            continue;
        }
        const char *eq = strchr(a, '='), *val;
        char flag[128];
        snprintf(flag, sizeof flag, "%.*s", (int)(eq ? (size_t)(eq - a) : strlen(a)), a);
        if (eq)
            val = eq + 1;
        else if (i + 1 < argc)
            val = argv[++i];
        else
            return cli_usage(CMD, "%s needs a value", flag);
        if (!strcmp(flag, "--out") || !strcmp(flag, "--seed")) {
            const char **dst = flag[2] == 'o' ? &out : &seed_s;
            if (*dst) return cli_usage(CMD, "%s given twice", flag);
            *dst = val;
            continue;
        }
        if (n >= 64 || arg_name(flag, names[n], sizeof names[n]))
            return cli_usage(CMD, "bad option '%s'", flag);
        for (size_t k = 0; k < n; k++)
            if (!strcmp(names[k], names[n])) return cli_usage(CMD, "%s given twice", flag);
        opts[n].name = names[n];
        opts[n].value = val;
        n++;
    }
    if (!kind) return cli_usage(CMD, "missing KIND");
    if (!out) return cli_usage(CMD, "missing --out FILE.safetensors");
    unsigned long long seed = 0;
    if (seed_s) {
        char *end;
        seed = strtoull(seed_s, &end, 10);
        if (!*seed_s || *end || *seed_s == '-')
            return cli_usage(CMD, "--seed: '%s' is not a number", seed_s);
    }
    xattn_module *m = NULL;
    if (xattn_module_create(kind, opts, n, seed, &m)) {
        const char *e = xattn_last_error();
        if (strstr(e, "unknown module kind") || strstr(e, "option")) return cli_usage(CMD, "%s", e);
        return cli_error(CMD, NULL, "%s", e);
    }
    int rc = CLI_EXIT_OK;
    if (xattn_module_save(m, out))
        rc = cli_lib_error(CMD, out);
    else
        printf("wrote %s (%s, %zu tensors, seed %llu)\n", out, kind, xattn_module_param_count(m),
               seed);
    xattn_module_free(m);
    return rc;
}
