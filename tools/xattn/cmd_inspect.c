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
           "__metadata__, and the modules its tensor names describe, one line each:\n"
           "  module: REFERENCE [at prefix 'P'] (option=value, ...)\n"
           "with the sizes read from the shapes, '(default)' after a value the file does not\n"
           "tell, '?' for one it would have to tell (give it as an option to run), or\n"
           "'module: unknown (...)' saying why; then each module's options with where each\n"
           "came from. The kinds ('xattn run --module KIND --help' names their tensors):\n");
    for (size_t i = 0; i < xattn_kind_count(); i++) {
        xattn_kind_desc k;
        if (!xattn_kind_info(i, &k) && k.state_dict[0]) printf("  %-18s %s\n", k.name, k.reference);
    }
    printf("\n"
           "options:\n"
           "  -h, --help   this help\n");
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
        printf("%s at prefix '%s'", found[i].kind,
               cli_printable(found[i].prefix, shown, sizeof shown));
        if (xattn_module_open(st, &o, &m)) {
            printf(": does not load: %s\n", xattn_last_error());
            continue;
        }
        printf(":\n");
        const int wk = xattn_module_weights(m);
        printf("  %-16s = %-10s (as stored; 'xattn run --weights' keeps them otherwise)\n",
               "linear weights", wk == XATTN_WEIGHTS_AUTO ? "mixed" : xattn_weights_name(wk));
        for (size_t c = 0; c < xattn_module_config_count(m); c++) {
            xattn_config_entry e;
            if (xattn_module_config(m, c, &e)) continue;
            printf("  %-16s = %-10s (%s%s%s)\n", e.name, e.value, e.source, e.detail[0] ? ": " : "",
                   cli_printable(e.detail, shown, sizeof shown));
        }
        for (const char *w = xattn_module_warnings(m); *w;) { /* one line per warning */
            const size_t l = strcspn(w, "\n");
            printf("  warning: %.*s\n", (int)l, w);
            w += l + (w[l] == '\n');
        }
        xattn_module_free(m);
    }
}

static xattn_module *open_with(const xattn_safetensors *st, const xattn_found *f,
                               const xattn_option *opts, size_t n)
{
    xattn_open_opts o;
    memset(&o, 0, sizeof o);
    o.kind = f->kind;
    o.prefix = f->prefix;
    o.options = opts;
    o.n_options = n;
    xattn_module *m = NULL;
    return xattn_module_open(st, &o, &m) ? NULL : m;
}

/* A module the file does not fully tell, opened with the stand-in value 1 for the required
 * options the shapes do not give, else also for one option of the brief that the shapes do not
 * give (its default does not fit the file). u gets them, and the options whose values change
 * when they do. NULL when no such stand-ins open it. */
static xattn_module *open_standing_in(const xattn_safetensors *st, const xattn_found *f,
                                      reg_unknown *u)
{
    const char *shown[64], *cand[16];
    const int n_shown = reg_brief_options(f->kind, shown, 64);
    int nr = 0, nc = 0;
    for (size_t j = 0; nr < 15; j++) {
        xattn_arg_desc a;
        if (xattn_kind_arg(f->kind, j, &a)) break;
        if (a.required && !a.from_shapes && !a.derived) u->stand_in[nr++] = a.name;
    }
    for (int k = 0; k < n_shown && nc < 16; k++)
        for (size_t j = 0;; j++) {
            xattn_arg_desc a;
            if (xattn_kind_arg(f->kind, j, &a)) break;
            if (!strcmp(a.name, shown[k]) && !strcmp(a.type, "int") && !a.required &&
                !a.from_shapes && !a.derived)
                cand[nc++] = a.name;
        }
    xattn_option o[16];
    xattn_module *m = NULL;
    int n = 0;
    for (int extra = -1; !m && extra < nc; extra++) {
        n = nr;
        if (extra >= 0) u->stand_in[n++] = cand[extra];
        if (!n) continue;
        for (int k = 0; k < n; k++) o[k] = (xattn_option){u->stand_in[k], "1"};
        m = open_with(st, f, o, (size_t)n);
    }
    if (!m) return NULL;
    u->n_stand_in = n;
    /* what follows the stand-ins: the options that change with another value that fits */
    static const char *const other[] = {"2", "3", "4", "5", "6", "7", "8"};
    for (size_t v = 0; v < sizeof other / sizeof other[0]; v++) {
        for (int k = 0; k < n; k++) o[k].value = other[v];
        xattn_module *m2 = open_with(st, f, o, (size_t)n);
        if (!m2) continue;
        for (size_t c = 0; c < xattn_module_config_count(m) && u->n_changed < 64; c++) {
            xattn_config_entry e1, e2;
            if (!xattn_module_config(m, c, &e1) && !xattn_module_config(m2, c, &e2) &&
                strcmp(e1.value, e2.value))
                u->changed[u->n_changed++] = e1.name;
        }
        xattn_module_free(m2);
        break;
    }
    return m;
}

/* "module: REFERENCE[ at prefix 'P'] (option=value, ...)" for each module the registry finds
 * of a kind the command line runs through it (the others keep their own description), from the
 * kind's brief description (xattn_kind_brief). Returns the number of modules described. */
static size_t print_registry_modules(const xattn_safetensors *st)
{
    xattn_found f[32];
    const size_t n = xattn_module_scan(st, f, 32);
    size_t shown = 0;
    for (size_t i = 0; i < n && i < 32; i++) {
        if (!reg_cli_handles(f[i].kind)) continue;
        shown++;
        char ref[160], at[320] = "", pp[256], why[512], line[2048], text[2048];
        reg_reference_name(f[i].kind, ref, sizeof ref);
        if (f[i].prefix[0])
            snprintf(at, sizeof at, " at prefix '%s'", cli_printable(f[i].prefix, pp, sizeof pp));
        reg_unknown u;
        memset(&u, 0, sizeof u);
        xattn_module *m = open_with(st, &f[i], NULL, 0);
        if (!m) {
            cli_printable(xattn_last_error(), why, sizeof why);
            if (!(m = open_standing_in(st, &f[i], &u))) {
                printf("module: unknown (%s names%s, but: %s)\n", ref, at, why);
                continue;
            }
        }
        reg_brief(f[i].kind, m, &u, line, sizeof line);
        printf("module: %s%s (%s)\n", ref, at, cli_printable(line, text, sizeof text));
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
    xattn_module *m = NULL;
    if (xattn_module_open(st, NULL, &m) == XATTN_ERR_UNSUPPORTED) { /* names it cannot list */
        printf("module: unknown (%s)\n", xattn_last_error());
        return;
    }
    xattn_module_free(m);
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
