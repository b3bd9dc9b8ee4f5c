/* xattn inspect: tensors, metadata and the detected module of a safetensors file. */
#include "cli.h"
#include "modules_ext.h"
#include "reg_cli.h"

#include <stdio.h>
#include <string.h>

static const char *CMD = "inspect";

static void help(void)
{
    printf("usage: xattn inspect MODEL.safetensors\n"
           "\n"
           "Lists the tensors of a safetensors file (name, dtype, shape, size in MB), its\n"
           "__metadata__, and the attention module its names describe:\n"
           "  torch.nn.MultiheadAttention   in_proj_weight or q/k/v_proj_weight, out_proj.*\n"
           "  diffusers Attention           to_q.weight, to_k.weight, to_v.weight, to_out.0.*\n"
           "  BidirectionalCrossAttention   to_qk.weight, context_to_qk.weight, to_v.weight, ...\n"
           "  BidirectionalCrossAttentionTransformer\n"
           "                                layers.L.0.to_qk.weight, ..., layers.L.{1,2}.*\n"
           "with the sizes read from the shapes (for the bidirectional modules also the heads,\n"
           "dim_head, prenorm, talking heads, depth, feed-forward widths and final norms), or\n"
           "'unknown'.\n"
           "\n"
           "options:\n"
           "  -h, --help   this help\n");
}

static const char *tf(int b) { return b ? "True" : "False"; }

/* ---- bidirectional modules (PyPI bidirectional-cross-attention) ---- */


static const char *norm_name(xattn_bidir_norm k)
{
    switch (k) {
    case XATTN_NORM_RMS: return "RMSNorm";
    case XATTN_NORM_LAYER: return "LayerNorm (0.0.x)";
    default: return "none";
    }
}

static void print_bidir(const xattn_safetensors *st, const cli_bidir *bf, int n_total)
{
    const char *kind = bf->transformer ? "BidirectionalCrossAttentionTransformer"
                                       : "BidirectionalCrossAttention";
    char at[300] = "", pp[128];
    if (bf->prefix[0])
        snprintf(at, sizeof at, " at prefix '%s'", cli_printable(bf->prefix, pp, sizeof pp));
    if (n_total > 1) printf("note: %d attention modules found; showing the first\n", n_total);
    xattn_bidir *m = NULL;
    int heads_known = 1;
    const xattn_bidir_opts one_head = {.heads = 1};
    if (xattn_bidir_load(st, bf->prefix, NULL, &m) != XATTN_OK) {
        char why[512];
        cli_printable(xattn_last_error(), why, sizeof why);
        /* the default 8 heads may not divide inner_dim: without talking heads and metadata,
         * check the shapes with one head and report the count as unknown */
        char talk[600];
        snprintf(talk, sizeof talk, "%s%stalking_heads.weight", bf->prefix,
                 bf->transformer ? "layers.0.0." : "");
        if (xattn_st_meta_get(st, "heads") || xattn_st_find(st, talk) >= 0 ||
            xattn_bidir_load(st, bf->prefix, &one_head, &m) != XATTN_OK) {
            printf("module: unknown (%s names%s, but: %s)\n", kind, at, why);
            return;
        }
        heads_known = 0;
    }
    xattn_bidir_config c;
    xattn_bidir_get_config(m, &c);
    xattn_bidir_free(m);
    char heads[160], dim_head[32];
    if (!heads_known) {
        snprintf(heads, sizeof heads,
                 "? (the default 8 does not divide inner_dim %lld: pass --heads to run)",
                 (long long)c.inner_dim);
        snprintf(dim_head, sizeof dim_head, "?");
    } else {
        snprintf(heads, sizeof heads, "%lld%s", (long long)c.heads,
                 c.talking_heads                   ? " (from talking_heads.weight)"
                 : xattn_st_meta_get(st, "heads") ? ""
                                                   : " (default)");
        snprintf(dim_head, sizeof dim_head, "%lld", (long long)c.dim_head);
    }
    if (!c.is_transformer) {
        printf("module: %s%s (dim=%lld, context_dim=%lld, heads=%s, dim_head=%s, "
               "inner_dim=%lld, prenorm=%s, talking_heads=%s)\n",
               kind, at, (long long)c.dim, (long long)c.context_dim, heads, dim_head,
               (long long)c.inner_dim, norm_name(c.prenorm), tf(c.talking_heads));
        return;
    }
    char fin[96];
    if (c.final_norms)
        snprintf(fin, sizeof fin, "True (context_norm of size %lld)",
                 (long long)c.context_norm_dim);
    else
        snprintf(fin, sizeof fin, "False");
    printf("module: %s%s (dim=%lld, context_dim=%lld, depth=%lld, heads=%s, dim_head=%s, "
           "inner_dim=%lld, prenorm=%s, talking_heads=%s, ff_hidden=%lld, "
           "context_ff_hidden=%lld, final_norms=%s)\n",
           kind, at, (long long)c.dim, (long long)c.context_dim, (long long)c.depth, heads,
           dim_head, (long long)c.inner_dim, norm_name(c.prenorm),
           tf(c.talking_heads), (long long)c.ff_hidden, (long long)c.context_ff_hidden, fin);
}

/* Every module the registry finds, with each resolved option and where it came from. */
static void print_registry(const xattn_safetensors *st)
{
    xattn_found found[32];
    size_t n = xattn_module_scan(st, found, 32);
    char shown[256];
    for (size_t i = 0; i < n && i < 32; i++) {
        xattn_open_opts o;
        memset(&o, 0, sizeof o);
        o.kind = found[i].kind;
        o.prefix = found[i].prefix;
        xattn_module *m = NULL;
        printf("%s at prefix '%s'", found[i].kind, cli_printable(found[i].prefix, shown, sizeof shown));
        if (xattn_module_open(st, &o, &m)) {
            printf(": does not load: %s\n", xattn_last_error());
            continue;
        }
        printf(":\n");
        for (size_t c = 0; c < xattn_module_config_count(m); c++) {
            xattn_config_entry e;
            if (xattn_module_config(m, c, &e)) continue;
            printf("  %-16s = %-10s (%s%s%s)\n", e.name, e.value, e.source, e.detail[0] ? ": " : "",
                   cli_printable(e.detail, shown, sizeof shown));
        }
        const char *w = xattn_module_warnings(m);
        if (w[0]) printf("  warning: %s\n", w);
        xattn_module_free(m);
    }
}

/* The value of option `name` of m for the one-line description: '?' for one the file does not
 * give (read with a stand-in value), a default marked. */
static void brief_value(const xattn_module *m, const char *name, int unknown, char *buf, size_t cap)
{
    snprintf(buf, cap, "?");
    if (unknown) return;
    for (size_t c = 0; c < xattn_module_config_count(m); c++) {
        xattn_config_entry e;
        if (!xattn_module_config(m, c, &e) && !strcmp(e.name, name))
            snprintf(buf, cap, "%s%s", e.value, !strcmp(e.source, "default") ? " (default)" : "");
    }
}

/* "module: REFERENCE[ at prefix 'P'] (option=value, ...)" for each module the registry finds
 * of a kind the command line runs through it (the others keep their own description): the
 * options of the kind's brief description (else every option). A required option that neither
 * the shapes nor the file give shows as '?' (the shapes are read with it set to 1). Returns the
 * number of modules described. */
static size_t print_registry_modules(const xattn_safetensors *st)
{
    xattn_found f[32];
    const size_t n = xattn_module_scan(st, f, 32);
    size_t shown = 0;
    for (size_t i = 0; i < n && i < 32; i++) {
        if (!reg_cli_handles(f[i].kind)) continue;
        shown++;
        char ref[160], at[320] = "", pp[256], why[512], val[96];
        reg_reference_name(f[i].kind, ref, sizeof ref);
        if (f[i].prefix[0])
            snprintf(at, sizeof at, " at prefix '%s'", cli_printable(f[i].prefix, pp, sizeof pp));
        xattn_open_opts o;
        memset(&o, 0, sizeof o);
        o.kind = f[i].kind;
        o.prefix = f[i].prefix;
        xattn_option unknown[8];
        size_t nu = 0;
        xattn_module *m = NULL;
        if (xattn_module_open(st, &o, &m)) {
            cli_printable(xattn_last_error(), why, sizeof why);
            for (size_t j = 0; nu < 8; j++) {
                xattn_arg_desc a;
                if (xattn_kind_arg(f[i].kind, j, &a)) break;
                if (a.required && !a.from_shapes && !a.derived)
                    unknown[nu++] = (xattn_option){a.name, "1"};
            }
            o.options = unknown;
            o.n_options = nu;
            if (!nu || xattn_module_open(st, &o, &m)) {
                printf("module: unknown (%s names%s, but: %s)\n", ref, at, why);
                continue;
            }
        }
        printf("module: %s%s (", ref, at);
        const char *brief = xattn_kind_brief(f[i].kind);
        int first = 1;
        for (size_t j = 0;; j++) { /* the brief's names, else every option */
            char tok[64];
            if (brief[0]) {
                const char *p = brief;
                for (size_t k = 0; k < j && p; k++) p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL;
                if (!p) break;
                snprintf(tok, sizeof tok, "%.*s", (int)strcspn(p, ","), p);
            } else {
                xattn_arg_desc a;
                if (xattn_kind_arg(f[i].kind, j, &a)) break;
                if (a.derived) continue;
                snprintf(tok, sizeof tok, "%s", a.name);
            }
            const char *name = reg_alias(f[i].kind, tok, NULL);
            if (!name) name = tok;
            int is_unknown = 0;
            for (size_t u = 0; u < nu; u++) is_unknown |= !strcmp(unknown[u].name, name);
            brief_value(m, name, is_unknown, val, sizeof val);
            char flag[80];
            snprintf(flag, sizeof flag, "--%s", tok);
            for (char *c = flag; *c; c++)
                if (*c == '_') *c = '-';
            printf("%s%s=%s", first ? "" : ", ", tok, val);
            if (is_unknown) printf(" (not in the file: pass %s to run)", flag);
            first = 0;
        }
        printf(")\n");
        xattn_module_free(m);
    }
    return shown;
}

/* Prints the "module: ..." line. */
static void print_module(const xattn_safetensors *st)
{
    /* modules with their own runner first: their blocks hold attention names of their own */
    const cli_ext_module *ext = cli_ext_detect(st);
    if (ext && ext->describe) {
        ext->describe(st);
        return;
    }
    if (print_registry_modules(st)) return;
    cli_bidir bf;
    cli_detect_bidir(st, &bf);
    if (bf.n_found > 0) {
        print_bidir(st, &bf, bf.n_found);
        return;
    }
    cli_module mod;
    cli_detect_module(st, &mod);
    if (bf.n_long > 0 || mod.n_long > 0) {
        printf("module: unknown (attention tensor names with a prefix longer than %d bytes are "
               "not supported)\n",
               (int)sizeof bf.prefix - 1);
        return;
    }
    printf("module: unknown (no tensor names of a module 'xattn run --help' lists)\n");
}

int cmd_inspect(int argc, char **argv)
{
    const char *pos[1];
    int n_pos;
    cli_parse_result pr = cli_parse(CMD, argc, argv, NULL, 0, pos, 1, &n_pos);
    if (pr == CLI_HELP) {
        help();
        return CLI_EXIT_OK;
    }
    if (pr != CLI_PARSED) return CLI_EXIT_USAGE;
    if (n_pos != 1) return cli_usage(CMD, "missing MODEL.safetensors");
    const char *path = pos[0];

    xattn_safetensors *st = NULL;
    if (xattn_st_open(path, &st) != XATTN_OK) return cli_lib_error(CMD, path);

    /* names and metadata come from the file: shown with control characters replaced and cut
     * to NAME_SHOWN bytes, so that every entry stays on its line */
    enum { NAME_SHOWN = 160 };
    char shown[NAME_SHOWN], shown2[NAME_SHOWN * 2];
    size_t n = xattn_st_count(st);
    size_t wname = 4;
    double total_mb = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(cli_printable(xattn_st_name(st, i), shown, sizeof shown));
        if (len > wname) wname = len;
    }
    if (wname > 60) wname = 60;
    printf("file: %s\n", cli_printable(path, shown2, sizeof shown2));
    printf("tensors: %zu\n", n);
    printf("  %-*s  %-5s  %-22s  %10s\n", (int)wname, "name", "dtype", "shape", "MB");
    for (size_t i = 0; i < n; i++) {
        const char *name = xattn_st_name(st, i);
        xattn_dtype dt;
        int nd;
        int64_t shape[XATTN_MAX_DIMS];
        if (xattn_st_info(st, i, &dt, &nd, shape) != XATTN_OK) {
            int rc = cli_lib_error(CMD, path);
            xattn_st_close(st);
            return rc;
        }
        double numel = 1;
        for (int d = 0; d < nd; d++) numel *= (double)shape[d];
        double mb = numel * (double)xattn_dtype_size(dt) / (1024.0 * 1024.0);
        total_mb += mb;
        char sh[160];
        printf("  %-*s  %-5s  %-22s  %10.4f\n", (int)wname,
               cli_printable(name ? name : "?", shown, sizeof shown), xattn_dtype_name(dt),
               cli_dims_str(nd, shape, sh, sizeof sh), mb);
    }
    printf("  %-*s  %-5s  %-22s  %10.4f\n", (int)wname, "total", "", "", total_mb);

    size_t nm = xattn_st_meta_count(st);
    if (nm == 0) {
        printf("metadata: none\n");
    } else {
        printf("metadata:\n");
        for (size_t i = 0; i < nm; i++)
            printf("  %s = %s\n", cli_printable(xattn_st_meta_key(st, i), shown, sizeof shown),
                   cli_printable(xattn_st_meta_value(st, i), shown2, sizeof shown2));
    }
    print_module(st);
    print_registry(st);
    xattn_st_close(st);
    return CLI_EXIT_OK;
}
