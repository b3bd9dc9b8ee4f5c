/* xattn run --module joint: M4 joint (stacked) cross-attention, nn.TransformerEncoder(Layer). */
#include "cli.h"
#include "modules_ext.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *CMD = "run";

static void joint_help(void)
{
    printf(
        "usage: xattn run [--module joint] MODEL.safetensors --x R.npy --context X.npy\n"
        "                 [--x-padding-mask M.npy] [--context-padding-mask M.npy] [--heads N]\n"
        "                 [--norm-first true|false] [--activation relu|gelu]\n"
        "                 [--layer-norm-eps E] [--out-dir DIR] [--threads N] [--allow-nonfinite]\n"
        "\n"
        "Joint (stacked) cross-attention (MMCA): R (B, K, d) and X (B, N, d) are concatenated\n"
        "along the sequence axis, run through torch.nn.TransformerEncoderLayer(batch_first=True)\n"
        "layers (every row's softmax spans all K+N keys) and split back. The model is the\n"
        "state_dict of an nn.TransformerEncoderLayer (self_attn.in_proj_weight,\n"
        "self_attn.in_proj_bias, self_attn.out_proj.*, linear1.*, linear2.*, norm1.*, norm2.*)\n"
        "or of an nn.TransformerEncoder (layers.N.<those names>, optional final norm.*); it is\n"
        "detected from those names.\n"
        "  --x R.npy                   (B, K, d), or (K, d) for one pair; float32/64/16\n"
        "  --context X.npy             (B, N, d), or (N, d)\n"
        "  --x-padding-mask M.npy      bool (B, K), or (K,): True = IGNORE that position as a key\n"
        "  --context-padding-mask M.npy  bool (B, N), or (N,): True = ignore\n"
        "      (integer masks too: nonzero = True)\n"
        "      (the two make torch's src_key_padding_mask of the stacked sequence; a batch item\n"
        "      with every position ignored gets zero attention outputs, not NaN as in torch)\n"
        "Options the tensors cannot tell; a flag wins over the file's __metadata__ key of the\n"
        "same name, else torch's default:\n"
        "  --heads N                   nhead (metadata 'heads'; no default: required)\n"
        "  --norm-first true|false     (metadata 'norm_first'; default false)\n"
        "  --activation relu|gelu      (metadata 'activation'; default relu; gelu = erf form)\n"
        "  --layer-norm-eps E          (metadata 'layer_norm_eps'; default 1e-5; also used by\n"
        "                              the final norm)\n"
        "outputs (float32 .npy in --out-dir DIR, default '.'; nothing is written if anything\n"
        "fails):\n"
        "  out.npy                     R* (B, K, d)\n"
        "  context_out.npy             X* (B, N, d)\n"
        "NaN policy: a NaN or infinity in R, X or the weights is an error naming the file and\n"
        "index, unless --allow-nonfinite.\n"
        "  --threads N                 threads (default: all cores)\n"
        "  -h, --help                  this help\n");
}

static int joint_detect(const xattn_safetensors *st)
{
    return (xattn_st_find(st, "self_attn.in_proj_weight") >= 0 &&
            xattn_st_find(st, "linear1.weight") >= 0) ||
           xattn_st_find(st, "layers.0.self_attn.in_proj_weight") >= 0;
}

static void joint_describe(const xattn_safetensors *st)
{
    int n = 0;
    char name[64];
    if (xattn_st_find(st, "self_attn.in_proj_weight") >= 0) {
        printf("module: torch.nn.TransformerEncoderLayer (joint cross-attention, 'xattn run "
               "--module joint')\n");
        return;
    }
    for (; n < 4096; n++) {
        snprintf(name, sizeof name, "layers.%d.self_attn.in_proj_weight", n);
        if (xattn_st_find(st, name) < 0) break;
    }
    printf("module: torch.nn.TransformerEncoder, %d layer%s%s (joint cross-attention, 'xattn run "
           "--module joint')\n",
           n, n == 1 ? "" : "s", xattn_st_find(st, "norm.weight") >= 0 ? ", final norm" : "");
}

typedef struct jstate {
    xattn_safetensors *st;
    xattn_joint *m;
    xattn_array x, c, xm, cm;
    float *out, *cout;
} jstate;

static int load_pad_mask(const char *path, const char *opt, int rank3, int64_t B, int64_t n,
                         xattn_array *a)
{
    if (cli_load_bool_mask(CMD, path, opt, "ignore", a)) return CLI_EXIT_ERROR;
    char sh[128];
    int ok = rank3 ? (a->ndim == 2 && a->shape[0] == B && a->shape[1] == n)
                   : (a->ndim == 1 && a->shape[0] == n);
    if (!ok) {
        if (rank3)
            return cli_error(CMD, path, "%s has shape %s; expected (%lld, %lld)", opt,
                             cli_shape_str(a, sh, sizeof sh), (long long)B, (long long)n);
        return cli_error(CMD, path, "%s has shape %s; expected (%lld,)", opt,
                         cli_shape_str(a, sh, sizeof sh), (long long)n);
    }
    return 0;
}

typedef struct jargs {
    const char *model, *x, *c, *xm, *cm, *out_dir, *module, *norm_first, *activation;
    long long heads, threads;
    const char *eps_s;
    double eps;
    int allow_nonfinite;
} jargs;

static int joint_go(const jargs *a, jstate *s)
{
    int rc;
    const char *dir = a->out_dir ? a->out_dir : ".";
    if ((rc = cli_check_out_dir(CMD, dir))) return rc;
    if (xattn_st_open(a->model, &s->st) != XATTN_OK) return cli_lib_error(CMD, a->model);
    if (!joint_detect(s->st))
        return cli_error(CMD, a->model,
                         "--module joint: no nn.TransformerEncoderLayer found (expected "
                         "self_attn.in_proj_weight with linear1.weight, or "
                         "layers.0.self_attn.in_proj_weight)");
    xattn_joint_opts o;
    memset(&o, 0, sizeof o);
    o.heads = a->heads > 0 ? a->heads : 0;
    o.layer_norm_eps = a->eps;
    if (a->norm_first) {
        if (!strcmp(a->norm_first, "true") || !strcmp(a->norm_first, "True") ||
            !strcmp(a->norm_first, "1"))
            o.norm_first = XATTN_YES;
        else if (!strcmp(a->norm_first, "false") || !strcmp(a->norm_first, "False") ||
                 !strcmp(a->norm_first, "0"))
            o.norm_first = XATTN_NO;
        else
            return cli_usage(CMD, "--norm-first must be true or false");
    }
    if (a->activation) {
        if (!strcmp(a->activation, "relu"))
            o.activation = XATTN_JOINT_ACT_RELU;
        else if (!strcmp(a->activation, "gelu"))
            o.activation = XATTN_JOINT_ACT_GELU;
        else
            return cli_usage(CMD, "--activation must be relu or gelu");
    }
    if (o.heads <= 0 && !xattn_st_meta_get(s->st, "heads"))
        return cli_error(CMD, a->model,
                         "the number of heads (nhead) is not in the file (__metadata__ 'heads'): "
                         "pass --heads N");
    if (xattn_joint_load(s->st, "", &o, &s->m) != XATTN_OK) return cli_lib_error(CMD, a->model);
    if (!a->allow_nonfinite && (rc = cli_check_weights_finite(CMD, a->model, s->st, NULL, 0)))
        return rc;
    /* defaults assumed for what the file cannot tell (norm_first, activation, eps) */
    for (const char *w = xattn_joint_warnings(s->m); *w;) {
        size_t n = strcspn(w, "\n");
        printf("warning: %.*s\n", (int)n, w);
        w += n + (w[n] == '\n');
    }
    xattn_joint_config cfg;
    xattn_joint_get_config(s->m, &cfg);
    const int64_t d = cfg.d_model;

    cli_finite_rule rule = a->allow_nonfinite ? CLI_FINITE_ANY : CLI_FINITE_STRICT;
    if (cli_load_float(CMD, a->x, 2, 3, rule, &s->x)) return CLI_EXIT_ERROR;
    if (cli_load_float(CMD, a->c, 2, 3, rule, &s->c)) return CLI_EXIT_ERROR;
    const int rank3 = s->x.ndim == 3;
    char sh[128], sh2[128];
    if (s->c.ndim != s->x.ndim)
        return cli_error(CMD, a->c,
                         "the context has shape %s but R has shape %s (same rank "
                         "needed)",
                         cli_shape_str(&s->c, sh, sizeof sh),
                         cli_shape_str(&s->x, sh2, sizeof sh2));
    const int64_t B = rank3 ? s->x.shape[0] : 1;
    const int64_t K = s->x.shape[rank3], N = s->c.shape[rank3];
    if (s->x.shape[s->x.ndim - 1] != d)
        return cli_error(CMD, a->x, "has shape %s but the model's d_model is %lld",
                         cli_shape_str(&s->x, sh, sizeof sh), (long long)d);
    if (s->c.shape[s->c.ndim - 1] != d || (rank3 && s->c.shape[0] != B))
        return cli_error(CMD, a->c, "has shape %s; expected %s%lld)",
                         cli_shape_str(&s->c, sh, sizeof sh), rank3 ? "(B, N, " : "(N, ",
                         (long long)d);
    if (a->xm && (rc = load_pad_mask(a->xm, "--x-padding-mask", rank3, B, K, &s->xm))) return rc;
    if (a->cm && (rc = load_pad_mask(a->cm, "--context-padding-mask", rank3, B, N, &s->cm)))
        return rc;
    s->out = malloc((size_t)(B * K * d) * sizeof(float));
    s->cout = malloc((size_t)(B * N * d) * sizeof(float));
    if (!s->out || !s->cout) return cli_error(CMD, a->x, "out of memory for the outputs");
    xattn_joint_inputs in;
    memset(&in, 0, sizeof in);
    in.B = B;
    in.K = K;
    in.N = N;
    in.x = s->x.data;
    in.context = s->c.data;
    in.x_padding_mask = a->xm ? s->xm.data : NULL;
    in.context_padding_mask = a->cm ? s->cm.data : NULL;
    xattn_joint_outputs out;
    memset(&out, 0, sizeof out);
    out.out = s->out;
    out.context_out = s->cout;
    if (xattn_joint_forward(NULL, s->m, &in, &out) != XATTN_OK) return cli_lib_error(CMD, a->model);
    cli_output outs[2];
    int64_t sh_out[3];
    int nd = 0;
    if (rank3) sh_out[nd++] = B;
    sh_out[nd++] = K;
    sh_out[nd++] = d;
    cli_output_set(&outs[0], "out", s->out, NULL, nd, sh_out);
    sh_out[nd - 2] = N;
    cli_output_set(&outs[1], "context_out", s->cout, NULL, nd, sh_out);
    return cli_write_outputs(CMD, dir, outs, 2);
}

static int joint_run(int argc, char **argv)
{
    jargs a;
    memset(&a, 0, sizeof a);
    const cli_option opts[] = {
        {"--x", CLI_STRING, &a.x, 0, 0},
        {"--context", CLI_STRING, &a.c, 0, 0},
        {"--x-padding-mask", CLI_STRING, &a.xm, 0, 0},
        {"--context-padding-mask", CLI_STRING, &a.cm, 0, 0},
        {"--heads", CLI_INT, &a.heads, 1, 1 << 20},
        {"--norm-first", CLI_STRING, &a.norm_first, 0, 0},
        {"--activation", CLI_STRING, &a.activation, 0, 0},
        {"--layer-norm-eps", CLI_STRING, &a.eps_s, 0, 0},
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
        joint_help();
        return CLI_EXIT_OK;
    }
    if (pr != CLI_PARSED) return CLI_EXIT_USAGE;
    if (a.module && strcmp(a.module, "joint"))
        return cli_usage(CMD,
                         "--module %s given, but the model is a joint (TransformerEncoder) "
                         "module",
                         a.module);
    if (n_pos != 1) return cli_usage(CMD, "missing MODEL.safetensors");
    a.model = pos[0];
    if (!a.x) return cli_usage(CMD, "missing --x R.npy");
    if (!a.c) return cli_usage(CMD, "missing --context X.npy");
    if (a.eps_s) {
        char *end = NULL;
        a.eps = strtod(a.eps_s, &end);
        if (!end || end == a.eps_s || *end || !(a.eps > 0) || a.eps > 1e30)
            return cli_usage(CMD, "--layer-norm-eps must be a positive number");
    }
    if (a.threads > 0) xattn_set_threads((int)a.threads);
    jstate s;
    memset(&s, 0, sizeof s);
    int rc = joint_go(&a, &s);
    xattn_joint_free(s.m);
    xattn_st_close(s.st);
    xattn_array_free(&s.x);
    xattn_array_free(&s.c);
    xattn_array_free(&s.xm);
    xattn_array_free(&s.cm);
    free(s.out);
    free(s.cout);
    return rc;
}

const cli_ext_module cli_ext_joint = {
    "joint",
    "joint (stacked) cross-attention: nn.TransformerEncoder(Layer) over [x; context] (MMCA)",
    joint_detect, joint_run, joint_describe};
