/* xattn run: runs a saved attention module (M1 multi-head, M2 bidirectional) on .npy inputs. */
#include "cli.h"
#include "modules_ext.h"
#include "reg_cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *CMD = "run";

static void help(void)
{
    printf(
        "usage: xattn run MODEL.safetensors --x X.npy [--context C.npy] [--value V.npy]\n"
        "                 [--key-padding-mask M.npy] [--attn-mask A.npy] [--causal]\n"
        "                 [--mask M.npy] [--context-mask CM.npy] [--rel-pos-bias B.npy]\n"
        "                 [--heads N] [--return-attn] [--per-head-attn] [--out-dir DIR]\n"
        "                 [--threads N] [--module KIND] [--allow-nonfinite] [--add-zero-attn]\n"
        "\n"
        "Runs an attention module saved from PyTorch with\n"
        "safetensors.torch.save_file(module.state_dict(), ...). The module kind (KIND) is\n"
        "detected from the tensor names (a common name prefix such as 'blk.attn.' is allowed):\n");
    for (size_t i = 0; i < xattn_kind_count(); i++) {
        xattn_kind_desc k;
        if (!xattn_kind_info(i, &k) && reg_cli_handles(k.name))
            printf("  %-18s %s%s%s\n", k.name, k.reference, k.state_dict[0] ? ": " : "", k.state_dict);
    }
    printf(
        "  bidir              BidirectionalCrossAttention (PyPI bidirectional-cross-attention\n"
        "                     0.1.0, also the LayerNorm prenorm of 0.0.x): to_qk.weight,\n"
        "                     context_to_qk.weight, to_v.weight, context_to_v.weight, to_out.*,\n"
        "                     context_to_out.*, [norm.*, context_norm.*, talking_heads.weight,\n"
        "                     context_talking_heads.weight]\n"
        "  bidir-transformer  BidirectionalCrossAttentionTransformer: layers.L.0.<bidir names>,\n"
        "                     layers.L.1.* / layers.L.2.* (feed-forwards), [norm.weight,\n"
        "                     context_norm.weight]\n"
        "Every size comes from the tensor shapes; the number of heads from the talking-heads\n"
        "weights of a bidirectional module when it has them, else --heads, else the file's\n"
        "__metadata__ {\"heads\": \"N\"}, else 8 (the default of diffusers Attention and of the\n"
        "bidirectional modules; torch's module has no default: give --heads).\n"
        "\n"
        "Each of the following kinds takes the inputs of its reference's forward as --NAME FILE.npy\n"
        "(dashes for underscores; --x and --context name the first two) and the arguments of\n"
        "its constructor as options; an option that leaves no trace in the state dict and is\n"
        "neither given nor in the file's __metadata__ takes the reference's default, announced\n"
        "as a warning after the run ('xattn run --module KIND --help' shows one kind):\n");
    for (size_t i = 0; i < xattn_kind_count(); i++) {
        xattn_kind_desc k;
        if (xattn_kind_info(i, &k) || !reg_cli_handles(k.name)) continue;
        printf("\n");
        reg_help_kind(k.name);
    }
    printf("\n");
    /* (split: ISO C only promises string literals of 4095 bytes) */
    printf(
        "bidirectional cross-attention (bidir, bidir-transformer): X and the context attend to\n"
        "each other through one shared similarity, softmax-normalised over j for X and over i\n"
        "for the context.\n"
        "  --x X.npy                 (B, I, dim), or (I, dim) for one sequence\n"
        "  --context C.npy           (B, J, context_dim), or (J, context_dim); required\n"
        "  --mask M.npy              bool (B, I), or (I,) for a rank-2 X: True = KEEP\n"
        "  --context-mask CM.npy     bool (B, J), or (J,) for a rank-2 X: True = KEEP\n"
        "      (integer masks too: nonzero = True)\n"
        "      (as the package: a position (i, j) is kept when both are True; masked\n"
        "      similarities are -FLT_MAX, so a fully masked row or column becomes a uniform\n"
        "      average, not NaN)\n"
        "  --rel-pos-bias B.npy      float, added to the similarities before masking:\n"
        "                            (B or 1, heads or 1, I, J), (heads or 1, I, J) or (I, J)\n"
        "  outputs:\n"
        "  out.npy                   (B, I, dim)\n"
        "  context_out.npy           (B, J, context_dim)\n"
        "  attn.npy, context_attn.npy  with --return-attn (bidir only: the transformer returns\n"
        "                            none): (B, heads, I, J), softmax over j and over i, after\n"
        "                            talking heads (the batch axis is dropped for a rank-2 X)\n"
        "\n"
        "Outputs are float32 .npy files in --out-dir DIR, default '.', created if missing (its\n"
        "parent must exist); nothing is written, and no earlier output replaced, if anything\n"
        "fails. Options of one module family are an error with the other.\n"
        "\n"
        "NaN policy: by default a NaN or an infinity in X, the context, the values, the\n"
        "relative position bias or the model's weights is an error naming the file (and tensor)\n"
        "and the first bad index; a float mask may hold -inf (a masked position) but not NaN\n"
        "or +inf. float64 values beyond the float32 range count as infinite.\n"
        "  --allow-nonfinite         pass NaN and infinities through instead (results may\n"
        "                            then hold NaN)\n"
        "\n"
        "other options:\n"
        "  --heads N                 number of heads (wins over the file's metadata; must agree\n"
        "                            with talking-heads weights)\n"
        "  --module KIND             insist on a module kind (one of those above; an error if\n"
        "                            the tensors disagree)\n"
        "  --threads N               threads (default: all cores)\n"
        "  -h, --help                this help\n");
    const cli_ext_module *m = cli_ext_at(0);
    if (m) printf("\nmore modules, each with its own options ('xattn run --module KIND --help'):\n");
    for (int i = 0; (m = cli_ext_at(i)); i++) printf("  %-24s  %s\n", m->kind, m->summary);
}

typedef struct run_args {
    const char *model, *x, *context, *value, *kpm, *attn_mask, *out_dir, *module;
    const char *mask, *cmask, *rel_bias;
    long long heads, threads;
    int causal, return_attn, per_head, allow_nonfinite, add_zero_attn;
} run_args;

/* Bidirectional modules found by name: to_qk.weight (attention) or layers.0.0.to_qk.weight
 * with a layers.0.1.* feed-forward beside it (transformer). */

typedef struct run_state {
    xattn_safetensors *st;
    cli_module mod;
    cli_bidir bf;
    int is_bidir;
    xattn_bidir *bm;
    xattn_array x, ctx, mask, cmask, bias;
    float *out, *attn, *cout, *cattn;
} run_state;

static void run_free(run_state *s)
{
    xattn_bidir_free(s->bm);
    xattn_st_close(s->st);
    xattn_array_free(&s->x);
    xattn_array_free(&s->ctx);
    xattn_array_free(&s->mask);
    xattn_array_free(&s->cmask);
    xattn_array_free(&s->bias);
    free(s->out);
    free(s->attn);
    free(s->cout);
    free(s->cattn);
}

/* ---------------------------------------------------------------------------------------- */
/* Model                                                                                    */
/* ---------------------------------------------------------------------------------------- */

static const char *bidir_name(int transformer)
{
    return transformer ? "BidirectionalCrossAttentionTransformer" : "BidirectionalCrossAttention";
}

static const char *kind_option(const run_state *s)
{
    if (s->is_bidir) return s->bf.transformer ? "bidir-transformer" : "bidir";
    return s->mod.kind == CLI_MODULE_MHA ? "mha" : "attention";
}

/* Options of the other module family are errors: returns 0 or an exit code (reported). */
static int check_family_options(const run_args *a, const run_state *s)
{
    char kind[128];
    if (s->is_bidir) {
        snprintf(kind, sizeof kind, "%s", bidir_name(s->bf.transformer));
        const char *opt = a->value ? "--value"
                          : a->kpm ? "--key-padding-mask"
                          : a->attn_mask ? "--attn-mask"
                          : a->causal ? "--causal"
                          : a->per_head ? "--per-head-attn"
                          : a->add_zero_attn ? "--add-zero-attn"
                                        : NULL;
        if (opt)
            return cli_error(CMD, a->model,
                             "%s is an option of the multi-head modules, but the model is a %s "
                             "(masks: --mask / --context-mask, bool True = keep)",
                             opt, kind);
        if (!a->context)
            return cli_error(CMD, a->model, "the model is a %s: give the context with --context",
                             kind);
        if (a->return_attn && s->bf.transformer)
            return cli_error(CMD, a->model,
                             "--return-attn: a BidirectionalCrossAttentionTransformer returns no "
                             "attention maps (the package ignores return_attn)");
    }
    return 0;
}

/* Loads and checks the model: returns 0 or an exit code (reported). */
static int load_model(const run_args *a, run_state *s)
{
    if (xattn_st_open(a->model, &s->st) != XATTN_OK) return cli_lib_error(CMD, a->model);
    cli_module *mod = &s->mod;
    cli_detect_module(s->st, mod);
    cli_detect_bidir(s->st, &s->bf);
    const int n_found = mod->n_found + s->bf.n_found;
    if (n_found == 0 && (mod->n_long > 0 || s->bf.n_long > 0))
        return cli_error(CMD, a->model,
                         "the attention module's tensor names have a prefix longer than %d bytes, "
                         "which is not supported",
                         (int)sizeof mod->prefix - 1);
    if (n_found == 0)
        return cli_error(CMD, a->model,
                         "no attention module found: expected tensors named in_proj_weight or "
                         "q_proj_weight (torch.nn.MultiheadAttention), to_q.weight (diffusers "
                         "Attention), to_qk.weight (BidirectionalCrossAttention) or "
                         "layers.0.0.to_qk.weight (BidirectionalCrossAttentionTransformer)");
    if (n_found > 1) {
        char pp[160];
        return cli_error(CMD, a->model,
                         "holds %d attention modules (the first at prefix '%s'); run takes a file "
                         "with one",
                         n_found,
                         cli_printable(mod->n_found ? mod->prefix : s->bf.prefix, pp, sizeof pp));
    }
    s->is_bidir = s->bf.n_found == 1;
    if (a->module && strcmp(a->module, kind_option(s))) {
        char kind[64];
        snprintf(kind, sizeof kind, "%s",
                 s->is_bidir ? bidir_name(s->bf.transformer) : cli_module_name(mod->kind));
        return cli_error(CMD, a->model, "--module %s, but the tensors are a %s (%s)", a->module,
                         kind, kind_option(s));
    }
    int rc;
    if ((rc = check_family_options(a, s))) return rc;
    /* the multi-head modules run through the registry: names of one that it does not find */
    if (!s->is_bidir)
        return cli_error(CMD, a->model, "holds %s names, but no complete %s module (see 'xattn "
                         "inspect')", cli_module_name(mod->kind), kind_option(s));
    const xattn_bidir_opts bo = {.heads = a->heads > 0 ? a->heads : 0};
    if (xattn_bidir_load(s->st, s->bf.prefix, &bo, &s->bm) != XATTN_OK)
        return cli_lib_error(CMD, a->model);
    return 0;
}

/* NaN policy for one weight tensor prefix + name (skipped when absent): 0 or an exit code. */
static int check_weight(const run_args *a, const run_state *s, const char *prefix,
                        const char *name)
{
    char full[768];
    if ((size_t)snprintf(full, sizeof full, "%s%s", prefix, name) >= sizeof full) return 0;
    const char *names[1] = {full};
    return cli_check_weights_finite(CMD, a->model, s->st, names, 1);
}

/* NaN policy for the weights: every tensor the module reads must be finite (as float32). */
static int check_weights(const run_args *a, const run_state *s)
{
    static const char *const bidir_names[] = {
        "norm.weight", "norm.bias", "context_norm.weight", "context_norm.bias",
        "to_qk.weight", "to_v.weight", "context_to_qk.weight", "context_to_v.weight",
        "to_out.weight", "to_out.bias", "context_to_out.weight", "context_to_out.bias",
        "talking_heads.weight", "context_talking_heads.weight"};
    static const char *const ff_names[] = {"0.weight", "1.weight", "1.bias", "3.weight",
                                           "3.bias"};
    if (a->allow_nonfinite) return 0;
    int rc;
    {
        xattn_bidir_config c;
        xattn_bidir_get_config(s->bm, &c);
        const size_t nb = sizeof bidir_names / sizeof bidir_names[0];
        if (!c.is_transformer) {
            for (size_t k = 0; k < nb; k++)
                if ((rc = check_weight(a, s, s->bf.prefix, bidir_names[k]))) return rc;
            return 0;
        }
        char p[400];
        for (int64_t l = 0; l < c.depth; l++) {
            snprintf(p, sizeof p, "%slayers.%lld.0.", s->bf.prefix, (long long)l);
            for (size_t k = 0; k < nb; k++)
                if ((rc = check_weight(a, s, p, bidir_names[k]))) return rc;
            for (int side = 1; side <= 2; side++) {
                snprintf(p, sizeof p, "%slayers.%lld.%d.", s->bf.prefix, (long long)l, side);
                for (size_t k = 0; k < sizeof ff_names / sizeof ff_names[0]; k++)
                    if ((rc = check_weight(a, s, p, ff_names[k]))) return rc;
            }
        }
        if ((rc = check_weight(a, s, s->bf.prefix, "norm.weight")) ||
            (rc = check_weight(a, s, s->bf.prefix, "context_norm.weight")))
            return rc;
        return 0;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Inputs                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* Checks an input's last dimension against the model. */
static int check_width(const char *path, const xattn_array *arr, int64_t want, const char *what,
                       const char *model)
{
    int64_t got = arr->shape[arr->ndim - 1];
    if (got != want)
        return cli_error(CMD, path, "last dimension %lld does not match the model's %s %lld (%s)",
                         (long long)got, what, (long long)want, model);
    return 0;
}

/* Loads the context (rank and batch of X, width `want`). */
static int load_context(const run_args *a, run_state *s, cli_finite_rule rule, int64_t B,
                        int64_t want, const char *what)
{
    char s1[160];
    int rc;
    const int rank = s->x.ndim;
    if ((rc = cli_load_float(CMD, a->context, 2, 3, rule, &s->ctx))) return rc;
    if (s->ctx.ndim != rank)
        return cli_error(CMD, a->context, "has shape %s (rank %d) but %s has rank %d",
                         cli_shape_str(&s->ctx, s1, sizeof s1), s->ctx.ndim, a->x, rank);
    if (rank == 3 && s->ctx.shape[0] != B)
        return cli_error(CMD, a->context, "batch %lld does not match the batch %lld of %s",
                         (long long)s->ctx.shape[0], (long long)B, a->x);
    return check_width(a->context, &s->ctx, want, what, a->model);
}

/* A bidirectional mask: bool or integer (B, N), or (N,) for a rank-2 X; True / nonzero = keep,
 * as the package. `axis` is "I" or "J". */
static int load_bool_mask(const char *path, const char *opt, int rank, int64_t B, int64_t N,
                          const char *axis, const char *from, xattn_array *m)
{
    char s1[160];
    if (cli_load_bool_mask(CMD, path, opt, "keep", m)) return CLI_EXIT_ERROR;
    int ok = (m->ndim == 2 && m->shape[0] == B && m->shape[1] == N) ||
             (rank == 2 && m->ndim == 1 && m->shape[0] == N);
    if (!ok) {
        if (rank == 2)
            return cli_error(CMD, path, "has shape %s; %s needs (%s,) = (%lld,) for %s",
                             cli_shape_str(m, s1, sizeof s1), opt, axis, (long long)N, from);
        return cli_error(CMD, path, "has shape %s; %s needs (B, %s) = (%lld, %lld) for %s",
                         cli_shape_str(m, s1, sizeof s1), opt, axis, (long long)B, (long long)N,
                         from);
    }
    return 0;
}

static int load_bidir_inputs(const run_args *a, run_state *s, const xattn_bidir_config *c,
                             int64_t *B, int64_t *I, int64_t *J)
{
    char s1[160];
    int rc;
    const cli_finite_rule data_rule = a->allow_nonfinite ? CLI_FINITE_ANY : CLI_FINITE_STRICT;
    if ((rc = cli_load_float(CMD, a->x, 2, 3, data_rule, &s->x))) return rc;
    const int rank = s->x.ndim;
    *B = rank == 3 ? s->x.shape[0] : 1;
    *I = s->x.shape[rank - 2];
    if ((rc = check_width(a->x, &s->x, c->dim, "dim", a->model))) return rc;
    if ((rc = load_context(a, s, data_rule, *B, c->context_dim, "context_dim"))) return rc;
    *J = s->ctx.shape[rank - 2];

    if (a->mask &&
        (rc = load_bool_mask(a->mask, "--mask", rank, *B, *I, "I", a->x, &s->mask)))
        return rc;
    if (a->cmask && (rc = load_bool_mask(a->cmask, "--context-mask", rank, *B, *J, "J",
                                         a->context, &s->cmask)))
        return rc;
    if (a->rel_bias) {
        if ((rc = cli_load_float(CMD, a->rel_bias, 2, 4, data_rule, &s->bias))) return rc;
        const xattn_array *b = &s->bias;
        const int nd = b->ndim;
        int ok = b->shape[nd - 2] == *I && b->shape[nd - 1] == *J;
        if (nd >= 3) ok = ok && (b->shape[nd - 3] == 1 || b->shape[nd - 3] == c->heads);
        if (nd == 4) ok = ok && (b->shape[0] == 1 || b->shape[0] == *B);
        if (!ok)
            return cli_error(CMD, a->rel_bias,
                             "has shape %s; expected (I, J) = (%lld, %lld), (heads or 1, I, J) or "
                             "(B or 1, heads or 1, I, J) for B = %lld, heads = %lld",
                             cli_shape_str(b, s1, sizeof s1), (long long)*I, (long long)*J,
                             (long long)*B, (long long)c->heads);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Running                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static int run_bidir(const run_args *a, run_state *s)
{
    int rc;
    xattn_bidir_config c;
    xattn_bidir_get_config(s->bm, &c);
    int64_t B = 0, I = 0, J = 0;
    if ((rc = load_bidir_inputs(a, s, &c, &B, &I, &J))) return rc;

    /* sizes, with overflow checks (each factor is bounded by a file that was read) */
    const double n_out = (double)B * (double)I * (double)c.dim;
    const double n_cout = (double)B * (double)J * (double)c.context_dim;
    const double n_attn = (double)B * (double)c.heads * (double)I * (double)J;
    if (n_out * 4 > 1e12 || n_cout * 4 > 1e12 || (a->return_attn && n_attn * 4 > 1e12))
        return cli_error(CMD, a->x, "outputs for B=%lld, I=%lld, J=%lld, %lld heads are too large",
                         (long long)B, (long long)I, (long long)J, (long long)c.heads);
    s->out = malloc((size_t)n_out * sizeof(float));
    s->cout = malloc((size_t)n_cout * sizeof(float));
    if (a->return_attn) {
        s->attn = malloc((size_t)n_attn * sizeof(float));
        s->cattn = malloc((size_t)n_attn * sizeof(float));
    }
    if (!s->out || !s->cout || (a->return_attn && (!s->attn || !s->cattn)))
        return cli_error(CMD, a->x, "out of memory for the outputs");

    xattn_bidir_inputs in;
    memset(&in, 0, sizeof in);
    in.B = B;
    in.I = I;
    in.J = J;
    in.x = s->x.data;
    in.context = s->ctx.data;
    in.mask = a->mask ? s->mask.data : NULL;
    in.context_mask = a->cmask ? s->cmask.data : NULL;
    if (a->rel_bias) {
        const int nd = s->bias.ndim;
        in.rel_pos_bias = s->bias.data;
        in.bias_h = nd >= 3 ? s->bias.shape[nd - 3] : 1;
        in.bias_b = nd == 4 ? s->bias.shape[0] : 1;
    }
    const xattn_bidir_outputs res = {.out = s->out, .context_out = s->cout, .attn = s->attn,
                                     .context_attn = s->cattn};
    if (xattn_bidir_forward(NULL, s->bm, &in, &res) != XATTN_OK)
        return cli_lib_error(CMD, a->model);

    const int rank3 = s->x.ndim == 3;
    cli_output outs[4];
    int64_t sh[4];
    int nd = 0;
    if (rank3) sh[nd++] = B;
    sh[nd++] = I;
    sh[nd++] = c.dim;
    cli_output_set(&outs[0], "out", s->out, NULL, nd, sh);
    nd = 0;
    if (rank3) sh[nd++] = B;
    sh[nd++] = J;
    sh[nd++] = c.context_dim;
    cli_output_set(&outs[1], "context_out", s->cout, NULL, nd, sh);
    if (a->return_attn) {
        nd = 0;
        if (rank3) sh[nd++] = B;
        sh[nd++] = c.heads;
        sh[nd++] = I;
        sh[nd++] = J;
        /* talking heads mix the heads' probabilities after the softmax */
        const int th = c.talking_heads;
        cli_output_set(&outs[2], "attn", s->attn,
                       th ? "softmax over j, mixed across heads by talking heads"
                          : "softmax over j, per head",
                       nd, sh);
        cli_output_set(&outs[3], "context_attn", s->cattn,
                       th ? "softmax over i, mixed across heads by talking heads"
                          : "softmax over i, per head",
                       nd, sh);
    }
    return cli_write_outputs(CMD, a->out_dir ? a->out_dir : ".", outs, a->return_attn ? 4 : 2);
}

static int run(const run_args *a, run_state *s)
{
    int rc;
    if ((rc = cli_check_out_dir(CMD, a->out_dir ? a->out_dir : "."))) return rc;
    if ((rc = load_model(a, s))) return rc;
    if ((rc = check_weights(a, s))) return rc;
    return run_bidir(a, s);
}

/* For the registry runner's messages (reg_cli.h): the flags of this runner's modules, and the
 * module this runner finds in a file. */
const char *reg_foreign_flag(const char *flag)
{
    static const char *const bidir_flags[] = {"--mask", "--context-mask", "--rel-pos-bias", NULL};
    for (int i = 0; bidir_flags[i]; i++)
        if (!strcmp(flag, bidir_flags[i])) return "the bidirectional modules";
    return NULL;
}

const char *reg_foreign_module(const xattn_safetensors *st)
{
    cli_bidir bf;
    cli_detect_bidir(st, &bf);
    if (bf.n_found != 1) return NULL;
    return bf.transformer ? "BidirectionalCrossAttentionTransformer (bidir-transformer)"
                          : "BidirectionalCrossAttention (bidir)";
}

int cmd_run(int argc, char **argv)
{
    /* modules with their own runner first: their blocks (an nn.MultiheadAttention inside a
     * layer) are registry modules of their own */
    int ext_rc;
    if (cli_ext_dispatch(argc, argv, &ext_rc)) return ext_rc;
    if (reg_route(argc, argv, 0)) return reg_cmd_run(CMD, argc, argv);
    run_args a;
    memset(&a, 0, sizeof a);
    const cli_option opts[] = {
        {"--x", CLI_STRING, &a.x, 0, 0},
        {"--context", CLI_STRING, &a.context, 0, 0},
        {"--value", CLI_STRING, &a.value, 0, 0},
        {"--key-padding-mask", CLI_STRING, &a.kpm, 0, 0},
        {"--attn-mask", CLI_STRING, &a.attn_mask, 0, 0},
        {"--causal", CLI_FLAG, &a.causal, 0, 0},
        {"--mask", CLI_STRING, &a.mask, 0, 0},
        {"--context-mask", CLI_STRING, &a.cmask, 0, 0},
        {"--rel-pos-bias", CLI_STRING, &a.rel_bias, 0, 0},
        {"--heads", CLI_INT, &a.heads, 1, 1 << 20},
        {"--return-attn", CLI_FLAG, &a.return_attn, 0, 0},
        {"--per-head-attn", CLI_FLAG, &a.per_head, 0, 0},
        {"--out-dir", CLI_STRING, &a.out_dir, 0, 0},
        {"--threads", CLI_INT, &a.threads, 1, 4096},
        {"--module", CLI_STRING, &a.module, 0, 0},
        {"--allow-nonfinite", CLI_FLAG, &a.allow_nonfinite, 0, 0},
        {"--add-zero-attn", CLI_FLAG, &a.add_zero_attn, 0, 0},
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
    if (a.module && strcmp(a.module, "mha") && strcmp(a.module, "attention") &&
        strcmp(a.module, "bidir") && strcmp(a.module, "bidir-transformer"))
        return cli_usage(CMD,
                         "--module must be 'mha', 'attention', 'bidir' or 'bidir-transformer', "
                         "not '%s'",
                         a.module);
    if (a.per_head) a.return_attn = 1;
    if (a.threads > 0) xattn_set_threads((int)a.threads);

    run_state s;
    memset(&s, 0, sizeof s);
    int rc = run(&a, &s);
    run_free(&s);
    return rc;
}
