/* xattn run: runs a saved attention module (M1) on .npy inputs. */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *CMD = "run";

static void help(void)
{
    printf(
        "usage: xattn run MODEL.safetensors --x X.npy [--context C.npy] [--value V.npy]\n"
        "                 [--key-padding-mask M.npy] [--attn-mask A.npy] [--causal]\n"
        "                 [--heads N] [--return-attn] [--per-head-attn] [--out-dir DIR]\n"
        "                 [--threads N] [--module mha|attention] [--allow-nonfinite]\n"
        "\n"
        "Runs a multi-head (cross-)attention module saved from PyTorch with\n"
        "safetensors.torch.save_file(module.state_dict(), ...). The module kind is detected from\n"
        "the tensor names (a common name prefix such as 'blk.attn.' is allowed):\n"
        "  torch.nn.MultiheadAttention   in_proj_weight or q/k/v_proj_weight, out_proj.*\n"
        "  diffusers Attention           to_q.weight, to_k.weight, to_v.weight, to_out.0.*\n"
        "Every size comes from the tensor shapes; the number of heads from --heads, else the\n"
        "file's __metadata__ {\"heads\": \"N\"}, else 8 for diffusers Attention (torch's module\n"
        "has no default: give --heads).\n"
        "\n"
        "inputs (.npy, float32 or float64):\n"
        "  --x X.npy                 queries (B, I, embed_dim), or (I, embed_dim) for one sequence\n"
        "  --context C.npy           keys (B, J, kdim); default: X (self-attention)\n"
        "  --value V.npy             values (B, J, vdim); default: the context\n"
        "masks (.npy, bool or float32/float64; float masks are added to the logits):\n"
        "  --key-padding-mask M.npy  (B, J), or (J,) for a rank-2 X\n"
        "  --attn-mask A.npy         (I, J), or (B*heads, I, J) per head\n"
        "      torch.nn.MultiheadAttention: bool True = masked out (as torch).\n"
        "      diffusers Attention: bool True = keep (as F.scaled_dot_product_attention).\n"
        "  --causal                  also mask keys j > i (upper-left aligned)\n"
        "A query row whose every key is masked gives a zero attention row (output = output\n"
        "projection bias), not NaN.\n"
        "\n"
        "outputs (float32 .npy in --out-dir DIR, default '.', created if missing (its parent\n"
        "must exist); nothing is written, and no earlier output replaced, if anything fails):\n"
        "  out.npy                   (B, I, out_dim), or (I, out_dim) for a rank-2 X\n"
        "  attn.npy                  with --return-attn: weights averaged over heads (B, I, J)\n"
        "                            (as need_weights=True); with --per-head-attn (B, heads, I, J)\n"
        "                            (the batch axis is dropped for a rank-2 X, as torch does)\n"
        "\n"
        "NaN policy: by default a NaN or an infinity in X, the context, the values or the\n"
        "model's weights is an error naming the file (and tensor) and the first bad index;\n"
        "a float mask may hold -inf (a masked position) but not NaN or +inf. float64 values\n"
        "beyond the float32 range count as infinite.\n"
        "  --allow-nonfinite         pass NaN and infinities through instead (results may\n"
        "                            then hold NaN)\n"
        "\n"
        "other options:\n"
        "  --heads N                 number of heads (wins over the file's metadata)\n"
        "  --module mha|attention    insist on a module kind (error if the tensors disagree)\n"
        "  --threads N               threads (default: all cores)\n"
        "  -h, --help                this help\n");
}

typedef struct run_args {
    const char *model, *x, *context, *value, *kpm, *attn_mask, *out_dir, *module;
    long long heads, threads;
    int causal, return_attn, per_head, allow_nonfinite;
} run_args;

typedef struct run_state {
    xattn_safetensors *st;
    cli_module mod;
    xattn_mha *m;
    xattn_array x, ctx, val, kpm, am;
    float *out, *attn;
} run_state;

static void run_free(run_state *s)
{
    xattn_mha_free(s->m);
    xattn_st_close(s->st);
    xattn_array_free(&s->x);
    xattn_array_free(&s->ctx);
    xattn_array_free(&s->val);
    xattn_array_free(&s->kpm);
    xattn_array_free(&s->am);
    free(s->out);
    free(s->attn);
}

/* Loads and checks the model: returns 0 or an exit code (reported). */
static int load_model(const run_args *a, run_state *s)
{
    if (xattn_st_open(a->model, &s->st) != XATTN_OK) return cli_lib_error(CMD, a->model);
    cli_module *mod = &s->mod;
    cli_detect_module(s->st, mod);
    if (mod->n_found == 0 && mod->n_long > 0)
        return cli_error(CMD, a->model,
                         "the attention module's tensor names have a prefix longer than %d bytes, "
                         "which is not supported",
                         (int)sizeof mod->prefix - 1);
    if (mod->n_found == 0)
        return cli_error(CMD, a->model,
                         "no attention module found: expected tensors named in_proj_weight or "
                         "q_proj_weight (torch.nn.MultiheadAttention) or to_q.weight (diffusers "
                         "Attention)");
    if (mod->n_found > 1)
        return cli_error(CMD, a->model,
                         "holds %d attention modules (the first at prefix '%s'); run takes a file "
                         "with one",
                         mod->n_found, mod->prefix);
    if (a->module) {
        cli_module_kind want = !strcmp(a->module, "mha") ? CLI_MODULE_MHA : CLI_MODULE_ATTENTION;
        if (want != mod->kind)
            return cli_error(CMD, a->model, "--module %s, but the tensors are a %s", a->module,
                             cli_module_name(mod->kind));
    }
    if (a->heads <= 0 && mod->kind == CLI_MODULE_MHA && !xattn_st_meta_get(s->st, "heads"))
        return cli_error(CMD, a->model,
                         "the number of heads of torch.nn.MultiheadAttention is not in the file "
                         "(__metadata__ 'heads'): pass --heads N");
    if (xattn_mha_load(s->st, mod->prefix, a->heads > 0 ? a->heads : 0, &s->m) != XATTN_OK)
        return cli_lib_error(CMD, a->model);
    return 0;
}

/* NaN policy for the weights: every tensor the module reads must be finite (as float32). */
static int check_weights(const run_args *a, const run_state *s)
{
    static const char *const mha_names[] = {"in_proj_weight", "q_proj_weight",  "k_proj_weight",
                                            "v_proj_weight",  "in_proj_bias",   "out_proj.weight",
                                            "out_proj.bias"};
    static const char *const att_names[] = {"to_q.weight", "to_k.weight",     "to_v.weight",
                                            "to_q.bias",   "to_k.bias",       "to_v.bias",
                                            "to_out.0.weight", "to_out.0.bias"};
    if (a->allow_nonfinite) return 0;
    const int is_mha = s->mod.kind == CLI_MODULE_MHA;
    const char *const *names = is_mha ? mha_names : att_names;
    const size_t n = is_mha ? sizeof mha_names / sizeof mha_names[0]
                            : sizeof att_names / sizeof att_names[0];
    char full[512];
    snprintf(full, sizeof full, "%sin_proj_weight", s->mod.prefix);
    const int packed = is_mha && xattn_st_find(s->st, full) >= 0;
    for (size_t k = 0; k < n; k++) {
        /* a packed module ignores stray q/k/v_proj_weight copies, as xattn_mha_load does */
        if (packed && k >= 1 && k <= 3) continue;
        if ((size_t)snprintf(full, sizeof full, "%s%s", s->mod.prefix, names[k]) >= sizeof full)
            continue;
        long idx = xattn_st_find(s->st, full);
        if (idx < 0) continue;
        xattn_dtype dt = XATTN_F32;
        xattn_array w;
        if (xattn_st_info(s->st, (size_t)idx, &dt, NULL, NULL) != XATTN_OK ||
            xattn_st_get(s->st, full, XATTN_F32, &w) != XATTN_OK)
            return cli_lib_error(CMD, a->model);
        char what[64], at[200], shown[200];
        int64_t bad = cli_first_nonfinite(&w, CLI_FINITE_STRICT, what, sizeof what);
        if (bad >= 0) cli_index_str(w.ndim, w.shape, bad, at, sizeof at);
        xattn_array_free(&w);
        if (bad >= 0)
            return cli_error(CMD, a->model,
                             "tensor '%s' holds a non-finite value (%s%s) at index %s; pass "
                             "--allow-nonfinite to accept it",
                             cli_printable(full, shown, sizeof shown), what,
                             dt == XATTN_F64 ? " as float32" : "", at);
    }
    return 0;
}

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

static int load_inputs(const run_args *a, run_state *s, const xattn_mha_config *c, int64_t *B,
                       int64_t *I, int64_t *J)
{
    char s1[160], s2[160];
    int rc;
    const cli_finite_rule data_rule = a->allow_nonfinite ? CLI_FINITE_ANY : CLI_FINITE_STRICT;
    const cli_finite_rule mask_rule = a->allow_nonfinite ? CLI_FINITE_ANY : CLI_FINITE_MASK;
    if ((rc = cli_load_float(CMD, a->x, 2, 3, data_rule, &s->x))) return rc;
    const int rank = s->x.ndim;
    *B = rank == 3 ? s->x.shape[0] : 1;
    *I = s->x.shape[rank - 2];
    if ((rc = check_width(a->x, &s->x, c->embed_dim, "embed_dim", a->model))) return rc;

    const char *cpath = a->context ? a->context : a->x;
    if (a->context) {
        if ((rc = cli_load_float(CMD, a->context, 2, 3, data_rule, &s->ctx))) return rc;
        if (s->ctx.ndim != rank)
            return cli_error(CMD, a->context, "has shape %s (rank %d) but %s has rank %d",
                             cli_shape_str(&s->ctx, s1, sizeof s1), s->ctx.ndim, a->x, rank);
        if (rank == 3 && s->ctx.shape[0] != *B)
            return cli_error(CMD, a->context, "batch %lld does not match the batch %lld of %s",
                             (long long)s->ctx.shape[0], (long long)*B, a->x);
        if ((rc = check_width(a->context, &s->ctx, c->kdim, "kdim", a->model))) return rc;
    } else if (c->kdim != c->embed_dim) {
        return cli_error(CMD, a->model,
                         "kdim %lld differs from embed_dim %lld: give the keys with --context",
                         (long long)c->kdim, (long long)c->embed_dim);
    }
    const xattn_array *ctx = a->context ? &s->ctx : &s->x;
    *J = ctx->shape[rank - 2];

    if (a->value) {
        if ((rc = cli_load_float(CMD, a->value, 2, 3, data_rule, &s->val))) return rc;
        int same = s->val.ndim == rank;
        for (int d = 0; same && d < rank - 1; d++) same = s->val.shape[d] == ctx->shape[d];
        if (!same) {
            int64_t want[3];
            for (int d = 0; d < rank - 1; d++) want[d] = ctx->shape[d];
            want[rank - 1] = c->vdim;
            return cli_error(CMD, a->value, "has shape %s but %s implies %s",
                             cli_shape_str(&s->val, s1, sizeof s1), cpath,
                             cli_dims_str(rank, want, s2, sizeof s2));
        }
        if ((rc = check_width(a->value, &s->val, c->vdim, "vdim", a->model))) return rc;
    } else if (c->vdim != c->kdim) {
        return cli_error(CMD, a->model, "vdim %lld differs from kdim %lld: give the values with --value",
                         (long long)c->vdim, (long long)c->kdim);
    }

    if (a->kpm) {
        if ((rc = cli_load_mask(CMD, a->kpm, mask_rule, &s->kpm))) return rc;
        const xattn_array *k = &s->kpm;
        int ok = (k->ndim == 2 && k->shape[0] == *B && k->shape[1] == *J) ||
                 (rank == 2 && k->ndim == 1 && k->shape[0] == *J);
        if (!ok)
            return cli_error(CMD, a->kpm,
                             "has shape %s; expected (B, J) = (%lld, %lld) for %s and %s",
                             cli_shape_str(k, s1, sizeof s1), (long long)*B, (long long)*J, a->x,
                             cpath);
    }
    if (a->attn_mask) {
        if ((rc = cli_load_mask(CMD, a->attn_mask, mask_rule, &s->am))) return rc;
        const xattn_array *m = &s->am;
        int ok2 = m->ndim == 2 && m->shape[0] == *I && m->shape[1] == *J;
        int ok3 = m->ndim == 3 && m->shape[0] == *B * c->heads && m->shape[1] == *I &&
                  m->shape[2] == *J;
        if (!ok2 && !ok3)
            return cli_error(CMD, a->attn_mask,
                             "has shape %s; expected (I, J) = (%lld, %lld) or (B*heads, I, J) = "
                             "(%lld, %lld, %lld) for %s, %s and %lld heads",
                             cli_shape_str(m, s1, sizeof s1), (long long)*I, (long long)*J,
                             (long long)(*B * c->heads), (long long)*I, (long long)*J, a->x, cpath,
                             (long long)c->heads);
    }
    return 0;
}

/* Checks before any work that the output directory exists and is writable, or can be made:
 * returns 0 or an exit code (reported). */
static int check_out_dir(const char *dir)
{
    struct stat sb;
    if (stat(dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode)) return cli_error(CMD, dir, "exists and is not a directory");
        if (access(dir, W_OK | X_OK) != 0)
            return cli_error(CMD, dir, "output directory is not writable: %s", strerror(errno));
        return 0;
    }
    if (errno != ENOENT)
        return cli_error(CMD, dir, "cannot use as the output directory: %s", strerror(errno));
    /* the parent must exist: only the last component is created */
    char parent[4096];
    size_t n = strlen(dir);
    if (n >= sizeof parent) return cli_error(CMD, dir, "output directory name is too long");
    memcpy(parent, dir, n + 1);
    while (n > 1 && parent[n - 1] == '/') parent[--n] = '\0';
    char *slash = strrchr(parent, '/');
    if (!slash)
        snprintf(parent, sizeof parent, ".");
    else if (slash == parent)
        parent[1] = '\0';
    else
        *slash = '\0';
    if (stat(parent, &sb) != 0)
        return cli_error(CMD, dir, "cannot create the output directory: %s", strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return cli_error(CMD, dir, "cannot create the output directory: %s is not a directory",
                         parent);
    if (access(parent, W_OK | X_OK) != 0)
        return cli_error(CMD, dir, "cannot create the output directory: %s", strerror(errno));
    return 0;
}

/* Writes the outputs: each first as NAME.npy.part, then all renamed into place, so that a
 * failure leaves neither a partial set nor a clobbered earlier result. On failure removes what
 * it wrote (and the output directory if it made it). */
static int write_outputs(const run_args *a, const run_state *s, const xattn_mha_config *c,
                         int rank, int64_t B, int64_t I, int64_t J)
{
    const char *dir = a->out_dir ? a->out_dir : ".";
    char out_path[4096], attn_path[4096], out_part[4200], attn_part[4200];
    if ((size_t)snprintf(out_path, sizeof out_path, "%s/out.npy", dir) >= sizeof out_path ||
        (size_t)snprintf(attn_path, sizeof attn_path, "%s/attn.npy", dir) >= sizeof attn_path)
        return cli_error(CMD, dir, "output directory name is too long");
    snprintf(out_part, sizeof out_part, "%s.part", out_path);
    snprintf(attn_part, sizeof attn_part, "%s.part", attn_path);

    int made_dir = 0;
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        if (mkdir(dir, 0777) != 0)
            return cli_error(CMD, dir, "cannot create the output directory: %s", strerror(errno));
        made_dir = 1;
    }

    xattn_array o, w;
    memset(&o, 0, sizeof o);
    memset(&w, 0, sizeof w);
    o.dtype = XATTN_F32;
    o.data = s->out;
    if (rank == 3) o.shape[o.ndim++] = B;
    o.shape[o.ndim++] = I;
    o.shape[o.ndim++] = c->out_dim;
    if (a->return_attn) {
        w.dtype = XATTN_F32;
        w.data = s->attn;
        if (rank == 3) w.shape[w.ndim++] = B;
        if (a->per_head) w.shape[w.ndim++] = c->heads;
        w.shape[w.ndim++] = I;
        w.shape[w.ndim++] = J;
    }

    /* what could make a rename fail is checked first, so that the renames do not fail half way */
    int rc = 0;
    if (stat(out_path, &sb) == 0 && S_ISDIR(sb.st_mode))
        rc = cli_error(CMD, out_path, "cannot write: is a directory");
    else if (a->return_attn && stat(attn_path, &sb) == 0 && S_ISDIR(sb.st_mode))
        rc = cli_error(CMD, attn_path, "cannot write: is a directory");
    else if (xattn_npy_save(out_part, &o) != XATTN_OK)
        rc = cli_lib_error(CMD, out_part);
    else if (a->return_attn && xattn_npy_save(attn_part, &w) != XATTN_OK)
        rc = cli_lib_error(CMD, attn_part);
    else if (rename(out_part, out_path) != 0)
        rc = cli_error(CMD, out_path, "cannot write: %s", strerror(errno));
    else if (a->return_attn && rename(attn_part, attn_path) != 0) {
        rc = cli_error(CMD, attn_path, "cannot write: %s", strerror(errno));
        unlink(out_path);
    }
    if (rc) {
        unlink(out_part);
        if (a->return_attn) unlink(attn_part);
        if (made_dir) rmdir(dir);
        return rc;
    }
    char sh[160];
    printf("wrote %s %s\n", out_path, cli_shape_str(&o, sh, sizeof sh));
    if (a->return_attn)
        printf("wrote %s %s (%s)\n", attn_path, cli_shape_str(&w, sh, sizeof sh),
               a->per_head ? "per head" : "averaged over heads");
    return 0;
}

static int run(const run_args *a, run_state *s)
{
    int rc;
    if ((rc = check_out_dir(a->out_dir ? a->out_dir : "."))) return rc;
    if ((rc = load_model(a, s))) return rc;
    if ((rc = check_weights(a, s))) return rc;
    xattn_mha_config c;
    xattn_mha_get_config(s->m, &c);
    int64_t B = 0, I = 0, J = 0;
    if ((rc = load_inputs(a, s, &c, &B, &I, &J))) return rc;

    /* sizes, with overflow checks (each factor is bounded by a file that was read) */
    const double n_out = (double)B * (double)I * (double)c.out_dim;
    const double n_attn = (double)B * (double)I * (double)J * (a->per_head ? (double)c.heads : 1);
    const double n_scratch = (double)B * (double)I * (double)J * (double)c.heads;
    if (n_out * 4 > 1e12 || (a->return_attn && (n_attn * 4 > 1e12 || n_scratch * 4 > 1e12)))
        return cli_error(CMD, a->x, "outputs for B=%lld, I=%lld, J=%lld, %lld heads are too large",
                         (long long)B, (long long)I, (long long)J, (long long)c.heads);
    s->out = malloc((size_t)n_out * sizeof(float));
    if (a->return_attn) s->attn = malloc((size_t)n_attn * sizeof(float));
    if (!s->out || (a->return_attn && !s->attn))
        return cli_error(CMD, a->x, "out of memory for the outputs");

    xattn_mha_inputs in;
    memset(&in, 0, sizeof in);
    in.B = B;
    in.I = I;
    in.J = J;
    in.query = s->x.data;
    in.key = a->context ? s->ctx.data : s->x.data;
    in.value = a->value ? s->val.data : NULL;
    if (in.value == NULL && c.kdim == c.vdim) in.value = in.key;
    if (a->kpm) {
        if (s->kpm.dtype == XATTN_BOOL)
            in.key_padding_mask = s->kpm.data;
        else
            in.key_padding_mask_float = s->kpm.data;
    }
    if (a->attn_mask) {
        if (s->am.dtype == XATTN_BOOL)
            in.attn_mask = s->am.data;
        else
            in.attn_mask_float = s->am.data;
        in.attn_mask_per_head = s->am.ndim == 3;
    }
    in.is_causal = a->causal;
    if (xattn_mha_forward(s->m, &in, s->out, s->attn, !a->per_head) != XATTN_OK)
        return cli_lib_error(CMD, a->model);
    return write_outputs(a, s, &c, s->x.ndim, B, I, J);
}

int cmd_run(int argc, char **argv)
{
    run_args a;
    memset(&a, 0, sizeof a);
    const cli_option opts[] = {
        {"--x", CLI_STRING, &a.x, 0, 0},
        {"--context", CLI_STRING, &a.context, 0, 0},
        {"--value", CLI_STRING, &a.value, 0, 0},
        {"--key-padding-mask", CLI_STRING, &a.kpm, 0, 0},
        {"--attn-mask", CLI_STRING, &a.attn_mask, 0, 0},
        {"--causal", CLI_FLAG, &a.causal, 0, 0},
        {"--heads", CLI_INT, &a.heads, 1, 1 << 20},
        {"--return-attn", CLI_FLAG, &a.return_attn, 0, 0},
        {"--per-head-attn", CLI_FLAG, &a.per_head, 0, 0},
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
    if (a.module && strcmp(a.module, "mha") && strcmp(a.module, "attention"))
        return cli_usage(CMD, "--module must be 'mha' or 'attention', not '%s'", a.module);
    if (a.per_head) a.return_attn = 1;
    if (a.threads > 0) xattn_set_threads((int)a.threads);

    run_state s;
    memset(&s, 0, sizeof s);
    int rc = run(&a, &s);
    run_free(&s);
    return rc;
}
