/*
 * 'xattn run' for M6, multiscale multiview cross-attention (kind "multiview"): views in order
 * --x (view 0), --context (view 1), then each --view (views 2, 3, ...); or only --view, repeated.
 * Writes out_0.npy .. out_{V-1}.npy, the final-stage tokens of every view.
 */
#include "cli.h"
#include "modules_ext.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMD "run"
#define MV_MAX XATTN_MULTIVIEW_MAX_VIEWS

static void mv_help(void)
{
    printf(
        "usage: xattn run [--module multiview] MODEL.safetensors --x V0.npy --context V1.npy\n"
        "                 [--view V2.npy ...] [--heads H | --heads H0,H1,...] [--gelu erf|tanh]\n"
        "                 [--eps E] [--out-dir DIR] [--threads N] [--allow-nonfinite]\n"
        "\n"
        "Multiscale multiview cross-attention (docs/multiview.md): V >= 2 views of one input\n"
        "pass S stages; between stages tokens are average-pooled (AvgPool1d(2, stride 2), an odd\n"
        "last token dropped) and widened by stages.S.views.V.expand; in each stage every view\n"
        "runs a pre-LN self-attention block, then a pre-LN cross-attention block whose keys and\n"
        "values are the other views' tokens, concatenated in view order. Detected from\n"
        "stages.0.views.0.self_attn.in_proj_weight. No masks.\n"
        "\n"
        "  MODEL.safetensors         the state dict (names in docs/multiview.md)\n"
        "  --x V0.npy                view 0: (B, N0, C0), or (N0, C0) for one sample\n"
        "  --context V1.npy          view 1: (B, N1, C0) or (N1, C0)\n"
        "  --view VK.npy             the next view; repeat for views 2, 3, ... (or give every\n"
        "                            view with --view, in order, without --x/--context)\n"
        "      views may have different token counts; all share B and C0 and the same rank;\n"
        "      the number of views must be the model's\n"
        "  --heads H | H0,H1,...     heads for every stage, or one per stage (wins over the\n"
        "                            file's __metadata__ \"heads\"; one of them is required)\n"
        "  --gelu erf|tanh           GELU form (default: __metadata__ \"gelu\", else erf)\n"
        "  --eps E                   LayerNorm eps (default: __metadata__ \"eps\", else 1e-5)\n"
        "  outputs:\n"
        "  out_K.npy                 view K after the last stage: (B, N_K', C_last), N' = N\n"
        "                            halved (floor) once per later stage (rank 2 for rank-2 inputs)\n"
        "\n"
        "Outputs are float32 .npy files in --out-dir DIR, default '.', created if missing;\n"
        "nothing is written if anything fails. NaN policy: a NaN or infinity in a view or a\n"
        "weight is an error naming the file and index unless --allow-nonfinite is given.\n"
        "  --threads N               threads (default: all cores)\n"
        "  -h, --help                this help\n");
}

static int mv_run(int argc, char **argv)
{
    /* --view may repeat: take it out before the common parser */
    const char *views_opt[MV_MAX + 1];
    int n_view_opt = 0;
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest) return cli_error(CMD, NULL, "out of memory");
    int nr = 0;
    for (int i = 0; i < argc; i++) {
        const char *val = NULL;
        if (i > 0 && !strcmp(argv[i], "--")) {
            while (i < argc) rest[nr++] = argv[i++];
            break;
        }
        if (i > 0 && !strcmp(argv[i], "--view")) {
            if (i + 1 >= argc) {
                free(rest);
                return cli_usage(CMD, "option --view needs a value");
            }
            val = argv[++i];
        } else if (i > 0 && !strncmp(argv[i], "--view=", 7)) {
            val = argv[i] + 7;
        }
        if (val) {
            if (n_view_opt >= MV_MAX) {
                free(rest);
                return cli_usage(CMD, "more than %d --view options", MV_MAX);
            }
            views_opt[n_view_opt++] = val;
        } else {
            rest[nr++] = argv[i];
        }
    }
    const char *x = NULL, *context = NULL, *out_dir = ".", *module = NULL, *heads = NULL,
               *gelu = NULL;
    long long threads = 0;
    double eps = 0;
    int allow = 0;
    cli_option opts[] = {
        {"--x", CLI_STRING, &x, 0, 0},
        {"--context", CLI_STRING, &context, 0, 0},
        {"--out-dir", CLI_STRING, &out_dir, 0, 0},
        {"--module", CLI_STRING, &module, 0, 0},
        {"--heads", CLI_STRING, &heads, 0, 0},
        {"--gelu", CLI_STRING, &gelu, 0, 0},
        {"--eps", CLI_DOUBLE, &eps, 0, 0},
        {"--threads", CLI_INT, &threads, 1, 4096},
        {"--allow-nonfinite", CLI_FLAG, &allow, 0, 0},
    };
    const char *pos[1] = {NULL};
    int npos = 0;
    cli_parse_result pr = cli_parse(CMD, nr, rest, opts, sizeof opts / sizeof opts[0], pos, 1, &npos);
    free(rest);
    if (pr == CLI_HELP) {
        mv_help();
        return CLI_EXIT_OK;
    }
    if (pr == CLI_BAD_USAGE) return CLI_EXIT_USAGE;
    if (module && strcmp(module, "multiview"))
        return cli_usage(CMD, "--module %s given, but the multiview runner was selected", module);
    if (npos < 1) return cli_usage(CMD, "missing MODEL.safetensors");
    const char *paths[MV_MAX + 2];
    int V = 0;
    if (x) paths[V++] = x;
    if (context) paths[V++] = context;
    if (context && !x) return cli_usage(CMD, "--context given without --x");
    for (int k = 0; k < n_view_opt; k++) paths[V++] = views_opt[k];
    if (V > MV_MAX) return cli_usage(CMD, "more than %d views", MV_MAX);
    if (V < 2) return cli_usage(CMD, "at least two views are needed: --x V0.npy --context V1.npy "
                                     "[--view V2.npy ...]");
    int64_t hl[XATTN_MULTIVIEW_MAX_STAGES];
    int64_t nh = 0;
    if (heads) {
        const char *p = heads;
        while (*p) {
            char *end = NULL;
            errno = 0;
            long long h = strtoll(p, &end, 10);
            if (end == p || errno || h <= 0 || h > 1000000 || nh >= XATTN_MULTIVIEW_MAX_STAGES ||
                (*end && *end != ','))
                return cli_usage(CMD, "--heads must be a positive integer or a comma-separated list "
                                      "of them, got '%s'", heads);
            hl[nh++] = h;
            p = *end == ',' ? end + 1 : end;
            if (*end == ',' && !*p) return cli_usage(CMD, "--heads ends with a comma");
        }
    }
    xattn_multiview_gelu g = XATTN_MULTIVIEW_GELU_DEFAULT;
    if (gelu) {
        if (!strcmp(gelu, "tanh")) g = XATTN_MULTIVIEW_GELU_TANH;
        else if (!strcmp(gelu, "erf") || !strcmp(gelu, "none")) g = XATTN_MULTIVIEW_GELU_ERF;
        else return cli_usage(CMD, "--gelu must be erf or tanh, got '%s'", gelu);
    }
    if (threads > 0) xattn_set_threads((int)threads);

    const char *model = pos[0];
    xattn_safetensors *st = NULL;
    if (xattn_st_open(model, &st) != XATTN_OK) return cli_lib_error(CMD, model);
    int rc = 0;
    xattn_multiview *m = NULL;
    xattn_array in[MV_MAX], outs[MV_MAX];
    cli_output files[MV_MAX];
    char names[MV_MAX][16];
    memset(in, 0, sizeof in);
    memset(outs, 0, sizeof outs);
    xattn_multiview_opts o = {.heads = nh ? hl : NULL, .n_heads = nh, .eps = eps, .gelu = g};
    if (!allow && (rc = cli_check_weights_finite(CMD, model, st, NULL, 0))) goto end;
    if (xattn_multiview_load(st, "", &o, &m) != XATTN_OK) {
        rc = cli_lib_error(CMD, model);
        goto end;
    }
    xattn_multiview_config c;
    xattn_multiview_get_config(m, &c);
    if (V != c.views) {
        rc = cli_error(CMD, model, "the model has %lld views but %d were given", (long long)c.views, V);
        goto end;
    }
    const cli_finite_rule rule = allow ? CLI_FINITE_ANY : CLI_FINITE_STRICT;
    int64_t tokens[MV_MAX], outn[MV_MAX], B = 0;
    int rank = 0;
    for (int v = 0; v < V; v++) {
        if ((rc = cli_load_float(CMD, paths[v], 2, 3, rule, &in[v]))) goto end;
        char sh[160];
        const xattn_array *a = &in[v];
        int64_t b = a->ndim == 3 ? a->shape[0] : 1, n = a->shape[a->ndim - 2],
                d = a->shape[a->ndim - 1];
        if (v == 0) {
            rank = a->ndim;
            B = b;
        } else if (a->ndim != rank) {
            rc = cli_error(CMD, paths[v], "has rank %d but view 0 (%s) has rank %d", a->ndim,
                           paths[0], rank);
            goto end;
        } else if (b != B) {
            rc = cli_error(CMD, paths[v], "has shape %s: batch %lld differs from view 0's %lld",
                           cli_shape_str(a, sh, sizeof sh), (long long)b, (long long)B);
            goto end;
        }
        if (d != c.dim[0]) {
            rc = cli_error(CMD, paths[v], "has shape %s: width %lld, but the model's first stage "
                           "takes %lld", cli_shape_str(a, sh, sizeof sh), (long long)d,
                           (long long)c.dim[0]);
            goto end;
        }
        tokens[v] = n;
        if (xattn_multiview_out_tokens(m, n, &outn[v]) != XATTN_OK) {
            rc = cli_error(CMD, paths[v], "has %lld token(s): too few for %lld stages (each later "
                           "stage halves the tokens, and pooling needs at least 2)", (long long)n,
                           (long long)c.stages);
            goto end;
        }
        outs[v].dtype = XATTN_F32;
        outs[v].ndim = rank;
        int d0 = 0;
        if (rank == 3) outs[v].shape[d0++] = B;
        outs[v].shape[d0++] = outn[v];
        outs[v].shape[d0] = c.dim[c.stages - 1];
        outs[v].data = malloc((size_t)(B * outn[v] * c.dim[c.stages - 1]) * sizeof(float));
        if (!outs[v].data) {
            rc = cli_error(CMD, NULL, "out of memory");
            goto end;
        }
    }
    {
        const float *xs[MV_MAX];
        float *os[MV_MAX];
        for (int v = 0; v < V; v++) {
            xs[v] = in[v].data;
            os[v] = outs[v].data;
        }
        xattn_multiview_inputs mi = {.B = B, .n_views = V, .tokens = tokens, .x = xs};
        xattn_multiview_outputs mo = {.out = os};
        if (xattn_multiview_forward(NULL, m, &mi, &mo) != XATTN_OK) {
            rc = cli_lib_error(CMD, model);
            goto end;
        }
    }
    for (int v = 0; v < V; v++) {
        snprintf(names[v], sizeof names[v], "out_%d", v);
        files[v] = (cli_output){names[v], outs[v], NULL};
    }
    rc = cli_write_outputs(CMD, out_dir, files, V);
end:
    for (int v = 0; v < MV_MAX; v++) {
        xattn_array_free(&in[v]);
        xattn_array_free(&outs[v]);
    }
    xattn_multiview_free(m);
    xattn_st_close(st);
    return rc;
}

static int mv_detect(const xattn_safetensors *st)
{
    return xattn_st_find(st, "stages.0.views.0.self_attn.in_proj_weight") >= 0 &&
           xattn_st_find(st, "stages.0.views.0.cross_attn.in_proj_weight") >= 0;
}

static void mv_describe(const xattn_safetensors *st)
{
    int64_t S = 0, V = 0;
    char nm[128];
    for (;; S++) {
        snprintf(nm, sizeof nm, "stages.%lld.views.0.self_attn.in_proj_weight", (long long)S);
        if (xattn_st_find(st, nm) < 0 || S > 64) break;
    }
    for (;; V++) {
        snprintf(nm, sizeof nm, "stages.0.views.%lld.self_attn.in_proj_weight", (long long)V);
        if (xattn_st_find(st, nm) < 0 || V > 256) break;
    }
    printf("module: multiview (multiscale multiview cross-attention), %lld views, %lld stages\n",
           (long long)V, (long long)S);
}

const cli_ext_module cli_ext_multiview = {
    "multiview",
    "multiscale multiview cross-attention: --x V0 --context V1 [--view V2 ...] -> out_K.npy",
    mv_detect, mv_run, mv_describe};
