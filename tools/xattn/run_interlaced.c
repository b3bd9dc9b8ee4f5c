/*
 * xattn run --module interlaced: the M5 interlaced two-stream decoder (InterlanceDecoder of
 * jimmy15923/mit). Detected by blocks.0.attn.q_map.weight beside blocks.0.self_attn.qkv.weight
 * (after any prefix). Writes out.npy (x, the reference's voxel stream), context_out.npy (view) and,
 * with --return-attn, attn_weights_L.npy per layer (pre-softmax logits, as the reference returns).
 */
#include "cli.h"
#include "modules_ext.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *CMD = "run";
static const char SUFFIX[] = "blocks.0.attn.q_map.weight";

static void help(void)
{
    printf(
        "usage: xattn run --module interlaced MODEL.safetensors --x X.npy --context C.npy\n"
        "                 [--n-cls N] [--heads N] [--first x|context] [--return-attn]\n"
        "                 [--out-dir DIR] [--threads N] [--allow-nonfinite]\n"
        "\n"
        "Runs InterlanceDecoder (2D-3D MIT, jimmy15923/mit models/sem_transformer.py) saved with\n"
        "safetensors.torch.save_file(decoder.state_dict(), ...): blocks.L.{norm1, self_attn.qkv,\n"
        "self_attn.proj, norm_q, norm_v, attn.q_map/k_map/v_map/proj, norm2, mlp.fc1/fc2}.\n"
        "X is the reference's voxel stream (B, I, dim) or (I, dim); C its view stream (B, J, "
        "dim).\n"
        "Layer 0 updates X querying C, layer 1 updates C querying X, and so on (the reference's\n"
        "forward(voxel, view)); each cross-attention skips the first n_cls tokens of the other\n"
        "stream as keys/values. LayerNorm eps 1e-5, GELU exact.\n"
        "\n"
        "Outputs (float32 .npy in --out-dir DIR, default '.'; written only if everything "
        "succeeded):\n"
        "  out.npy               X after the decoder\n"
        "  context_out.npy       C after the decoder\n"
        "  attn_weights_L.npy    with --return-attn: layer L's pre-softmax cross-attention "
        "logits,\n"
        "                        (B, heads, I, J) in layers where X queries, (B, heads, J, I) "
        "else\n"
        "\n"
        "Options (what the state dict cannot tell; default: the file's __metadata__, else the\n"
        "reference default):\n"
        "  --n-cls N             class tokens to skip (__metadata__ n_cls or num_classes; 20)\n"
        "  --heads N             attention heads (__metadata__ heads; 6)\n"
        "  --first x|context     which stream layer 0 updates (__metadata__ first; x)\n"
        "  --allow-nonfinite     accept NaN / infinities in the inputs and weights (rejected by\n"
        "                        default)\n"
        "  --threads N           threads (default: all cores)\n"
        "  -h, --help            this help\n");
}

/* prefix of the first name ending in SUFFIX that has a self_attn.qkv beside it, or -1 */
static int find_prefix(const xattn_safetensors *st, char *prefix, size_t cap)
{
    const size_t ls = sizeof SUFFIX - 1;
    for (size_t i = 0; i < xattn_st_count(st); i++) {
        const char *n = xattn_st_name(st, i);
        size_t len = n ? strlen(n) : 0;
        if (len < ls || strcmp(n + len - ls, SUFFIX)) continue;
        size_t pl = len - ls;
        if (pl >= cap) continue;
        char qkv[600];
        if (pl + 40 >= sizeof qkv) continue;
        memcpy(prefix, n, pl);
        prefix[pl] = '\0';
        snprintf(qkv, sizeof qkv, "%sblocks.0.self_attn.qkv.weight", prefix);
        if (xattn_st_find(st, qkv) >= 0) return 0;
    }
    return -1;
}

static int detect(const xattn_safetensors *st)
{
    char p[512];
    return find_prefix(st, p, sizeof p) == 0;
}

static void describe(const xattn_safetensors *st)
{
    char p[512], pp[160];
    if (find_prefix(st, p, sizeof p)) return;
    xattn_interlaced *m = NULL;
    if (xattn_interlaced_load(st, p, NULL, &m) != XATTN_OK) {
        printf("module: unknown (interlaced decoder names, but: %s)\n", xattn_last_error());
        return;
    }
    xattn_interlaced_config c;
    xattn_interlaced_get_config(m, &c);
    printf("module: InterlanceDecoder (interlaced two-stream decoder)%s%s%s (dim=%lld, depth=%lld, "
           "heads=%lld, mlp_hidden=%lld, n_cls=%lld, first=%s, qkv_bias=%s)\n",
           p[0] ? " at '" : "", p[0] ? cli_printable(p, pp, sizeof pp) : "", p[0] ? "'" : "",
           (long long)c.dim, (long long)c.depth, (long long)c.heads, (long long)c.mlp_hidden,
           (long long)c.n_cls, c.context_first ? "context" : "x", c.qkv_bias ? "True" : "False");
    xattn_interlaced_free(m);
}

typedef struct il_args {
    const char *model, *x, *context, *first, *out_dir, *module;
    long long n_cls, heads, threads;
    int return_attn, allow_nonfinite;
} il_args;

typedef struct il_state {
    xattn_safetensors *st;
    xattn_interlaced *m;
    xattn_array x, ctx;
    float *out, *cout, *lg_block;
    float **lg;
    char (*names)[64];
    cli_output *outs;
} il_state;

static int run_il(const il_args *a, il_state *s)
{
    int rc;
    const char *dir = a->out_dir ? a->out_dir : ".";
    if ((rc = cli_check_out_dir(CMD, dir))) return rc;
    if (xattn_st_open(a->model, &s->st) != XATTN_OK) return cli_lib_error(CMD, a->model);
    char prefix[512];
    if (find_prefix(s->st, prefix, sizeof prefix))
        return cli_error(CMD, a->model,
                         "not an interlaced decoder: no tensor named [PREFIX]%s with "
                         "[PREFIX]blocks.0.self_attn.qkv.weight beside it",
                         SUFFIX);
    xattn_interlaced_opts o;
    memset(&o, 0, sizeof o);
    o.heads = a->heads;
    if (a->n_cls >= 0) {
        o.n_cls = a->n_cls;
        o.has_n_cls = 1;
    }
    if (a->first) o.context_first = !strcmp(a->first, "context") ? XATTN_YES : XATTN_NO;
    if (xattn_interlaced_load(s->st, prefix, &o, &s->m) != XATTN_OK)
        return cli_lib_error(CMD, a->model);
    if (!a->allow_nonfinite && (rc = cli_check_weights_finite(CMD, a->model, s->st, NULL, 0)))
        return rc;
    /* defaults assumed for what the file cannot tell (heads, n_cls, first) */
    for (const char *w = xattn_interlaced_warnings(s->m); *w;) {
        size_t n = strcspn(w, "\n");
        printf("warning: %.*s\n", (int)n, w);
        w += n + (w[n] == '\n');
    }
    xattn_interlaced_config c;
    xattn_interlaced_get_config(s->m, &c);

    cli_finite_rule rule = a->allow_nonfinite ? CLI_FINITE_ANY : CLI_FINITE_STRICT;
    if ((rc = cli_load_float(CMD, a->x, 2, 3, rule, &s->x))) return rc;
    if ((rc = cli_load_float(CMD, a->context, 2, 3, rule, &s->ctx))) return rc;
    char sx[128], sc[128];
    cli_shape_str(&s->x, sx, sizeof sx);
    cli_shape_str(&s->ctx, sc, sizeof sc);
    const int nd = s->x.ndim;
    if (s->x.shape[nd - 1] != c.dim)
        return cli_error(CMD, a->x, "has shape %s but the model's dim is %lld", sx,
                         (long long)c.dim);
    if (s->ctx.ndim != nd)
        return cli_error(CMD, a->context, "has shape %s but --x has shape %s (ranks differ)", sc,
                         sx);
    if (s->ctx.shape[nd - 1] != c.dim)
        return cli_error(CMD, a->context, "has shape %s but the model's dim is %lld", sc,
                         (long long)c.dim);
    const int64_t B = nd == 3 ? s->x.shape[0] : 1, I = s->x.shape[nd - 2], J = s->ctx.shape[nd - 2];
    if (nd == 3 && s->ctx.shape[0] != B)
        return cli_error(CMD, a->context, "has shape %s but --x has shape %s (batch sizes differ)",
                         sc, sx);
    const double n_lg = (double)B * (double)c.heads * (double)I * (double)J;
    if (a->return_attn && n_lg * 4.0 * (double)c.depth > 1e12)
        return cli_error(CMD, a->x, "attention logits for B=%lld, I=%lld, J=%lld are too large",
                         (long long)B, (long long)I, (long long)J);
    const int n_out = 2 + (a->return_attn ? (int)c.depth : 0);
    s->out = malloc((size_t)xattn_array_numel(&s->x) * sizeof(float));
    s->cout = malloc((size_t)xattn_array_numel(&s->ctx) * sizeof(float));
    s->names = calloc((size_t)n_out, sizeof *s->names);
    s->outs = calloc((size_t)n_out, sizeof *s->outs);
    if (a->return_attn) {
        s->lg = calloc((size_t)c.depth, sizeof *s->lg);
        s->lg_block = malloc((size_t)n_lg * (size_t)c.depth * sizeof(float));
    }
    if (!s->out || !s->cout || !s->names || !s->outs ||
        (a->return_attn && (!s->lg || !s->lg_block)))
        return cli_error(CMD, a->x, "out of memory for the outputs");
    for (int64_t L = 0; a->return_attn && L < c.depth; L++)
        s->lg[L] = s->lg_block + L * (int64_t)n_lg;
    xattn_interlaced_inputs in;
    memset(&in, 0, sizeof in);
    in.B = B;
    in.I = I;
    in.J = J;
    in.x = s->x.data;
    in.context = s->ctx.data;
    xattn_interlaced_outputs out;
    memset(&out, 0, sizeof out);
    out.out = s->out;
    out.context_out = s->cout;
    out.attn_weights = s->lg;
    if (xattn_interlaced_forward(NULL, s->m, &in, &out) != XATTN_OK)
        return cli_lib_error(CMD, a->model);

    cli_output_set(&s->outs[0], "out", s->out, NULL, nd, s->x.shape);
    cli_output_set(&s->outs[1], "context_out", s->cout, NULL, nd, s->ctx.shape);
    for (int64_t L = 0; a->return_attn && L < c.depth; L++) {
        int x_q = ((L & 1) == 0) != (c.context_first != 0);
        int64_t sh[4];
        int k = 0;
        if (nd == 3) sh[k++] = B;
        sh[k++] = c.heads;
        sh[k++] = x_q ? I : J;
        sh[k++] = x_q ? J : I;
        snprintf(s->names[2 + L], 64, "attn_weights_%lld", (long long)L);
        cli_output_set(&s->outs[2 + L], s->names[2 + L], s->lg[L], NULL, k, sh);
    }
    return cli_write_outputs(CMD, dir, s->outs, n_out);
}

static int run(int argc, char **argv)
{
    il_args a;
    memset(&a, 0, sizeof a);
    a.n_cls = -1;
    const cli_option opts[] = {
        {"--x", CLI_STRING, &a.x, 0, 0},
        {"--context", CLI_STRING, &a.context, 0, 0},
        {"--n-cls", CLI_INT, &a.n_cls, 0, 1LL << 40},
        {"--heads", CLI_INT, &a.heads, 1, 1 << 20},
        {"--first", CLI_STRING, &a.first, 0, 0},
        {"--return-attn", CLI_FLAG, &a.return_attn, 0, 0},
        {"--out-dir", CLI_STRING, &a.out_dir, 0, 0},
        {"--threads", CLI_INT, &a.threads, 1, 4096},
        {"--module", CLI_STRING, &a.module, 0, 0},
        {"--allow-nonfinite", CLI_FLAG, &a.allow_nonfinite, 0, 0},
    };
    const char *pos[1];
    int n_pos;
    cli_parse_result pr =
        cli_parse(CMD, argc, argv, opts, sizeof opts / sizeof opts[0], pos, 1, &n_pos);
    if (pr == CLI_HELP) {
        help();
        return CLI_EXIT_OK;
    }
    if (pr != CLI_PARSED) return CLI_EXIT_USAGE;
    if (n_pos != 1) return cli_usage(CMD, "missing MODEL.safetensors");
    a.model = pos[0];
    if (!a.x) return cli_usage(CMD, "missing --x X.npy");
    if (!a.context)
        return cli_usage(CMD, "missing --context C.npy (the interlaced decoder has two streams)");
    if (a.first && strcmp(a.first, "x") && strcmp(a.first, "context"))
        return cli_usage(CMD, "--first must be 'x' or 'context', not '%s'", a.first);
    if (a.threads > 0) xattn_set_threads((int)a.threads);
    il_state s;
    memset(&s, 0, sizeof s);
    int rc = run_il(&a, &s);
    xattn_interlaced_free(s.m);
    xattn_st_close(s.st);
    xattn_array_free(&s.x);
    xattn_array_free(&s.ctx);
    free(s.out);
    free(s.cout);
    free(s.lg);
    free(s.lg_block);
    free(s.names);
    free(s.outs);
    return rc;
}

const cli_ext_module cli_ext_interlaced = {
    "interlaced",
    "InterlanceDecoder of 2D-3D MIT: two streams, layers alternate which one queries the other",
    detect, run, describe};
