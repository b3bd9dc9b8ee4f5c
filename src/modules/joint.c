/*
 * Joint (stacked) cross-attention (MMCA, CVPR 2020): Y = [x; context] along the sequence axis,
 * torch.nn.TransformerEncoderLayer layers (batch_first=True) over Y, split back.
 *
 * Per layer (torch's order):
 *   norm_first = False:  Y = LN1(Y + SA(Y));      Y = LN2(Y + FF(Y))
 *   norm_first = True:   Y = Y + SA(LN1(Y));      Y = Y + FF(LN2(Y))
 *   SA(Z) = out_proj(attention(Z Wq + bq, Z Wk + bk, Z Wv + bv)),  FF(Z) = linear2(act(linear1 Z))
 * then the optional final norm of nn.TransformerEncoder(norm=LayerNorm).
 *
 * Loading: a bare nn.TransformerEncoderLayer (its names at the prefix) or an
 * nn.TransformerEncoder (layers.N.*, counted, plus an optional final norm.*): one parameter
 * table per layer under its stem; every size from the shapes, bias and the final norm from
 * which tensors exist, the rest from options, __metadata__ or torch's defaults.
 *
 * forward: the packed q/k/v projection into (B*L, 3d) scratch, ONE attention call reading the
 * heads in place through strides, with the padding masks turned into a (B, L) per-key keep
 * vector (-inf fill: a row with no key left is a zero row, not NaN), the output projection and
 * the second feed-forward linear accumulated into the residual stream.
 */
#include "core/registry.h"
#include "io/io_internal.h"
#include "kernels/op_joint.h"
#include "kernels/ops.h"

#include <stdio.h>
#include <string.h>

#define FN_LOAD          "xattn_joint_load"
#define FN_FWD           "xattn_joint_forward"
#define JOINT_MAX_LAYERS 4096

static const char *const ACTIVATIONS[] = {"relu", "gelu", NULL};

/* TransformerEncoderLayer(d_model, nhead, dim_feedforward=2048, dropout=0.1, activation='relu',
 * layer_norm_eps=1e-5, batch_first=True, norm_first=False, bias=True), stacked by
 * TransformerEncoder(layer, num_layers, norm=None) */
enum {
    F_D,
    F_NHEAD,
    F_FF,
    F_DROPOUT,
    F_ACT,
    F_EPS,
    F_NORM_FIRST,
    F_BIAS,
    F_LAYERS,
    F_NORM,
    F_NORM_BIAS,
    F_N
};
static const xa_field fields[F_N] = {
    [F_D] = {"d_model", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED, 0, 1, 1e15, NULL, NULL,
             "width of x, context and every layer"},
    [F_NHEAD] = {"nhead", XA_T_INT, XA_F_REQUIRED, 0, 1, 1e15, NULL, "heads|nhead",
                 "attention heads (the names cannot tell; no default)"},
    [F_FF] = {"dim_feedforward", XA_T_INT, XA_F_SHAPE, 2048, 1, 1e15, NULL, NULL,
              "hidden width of the feed-forward block"},
    [F_DROPOUT] = {"dropout", XA_T_REAL, XA_F_NOMETA, 0.1, 0, 1, NULL, NULL,
                   "dropout probability (identity at inference)"},
    [F_ACT] = {"activation", XA_T_ENUM, XA_F_TRACELESS, 0, 0, 0, ACTIVATIONS, NULL,
               "feed-forward activation (gelu: the exact erf form)"},
    [F_EPS] = {"layer_norm_eps", XA_T_REAL, XA_F_TRACELESS, 1e-5, 1e-38, 1e300, NULL, NULL,
               "eps of every LayerNorm (the final norm's too)"},
    [F_NORM_FIRST] = {"norm_first", XA_T_BOOL, XA_F_TRACELESS, 0, 0, 1, NULL, NULL,
                      "pre-norm layers (LayerNorm before attention and feed-forward)"},
    [F_BIAS] = {"bias", XA_T_BOOL, XA_F_PRESENCE, 1, 0, 1, NULL, NULL,
                "the linear layers and LayerNorms have biases"},
    [F_LAYERS] = {"num_layers", XA_T_INT, XA_F_SHAPE | XA_F_OPTIONAL | XA_F_NOMETA, 0, 1,
                  JOINT_MAX_LAYERS, NULL, NULL,
                  "layers of an nn.TransformerEncoder (layers.N.*); None: one bare "
                  "nn.TransformerEncoderLayer"},
    [F_NORM] = {"norm", XA_T_BOOL, XA_F_PRESENCE, 0, 0, 1, NULL, NULL,
                "nn.TransformerEncoder's final LayerNorm(d_model, eps=layer_norm_eps, "
                "bias=bias) (norm.*)"},
    [F_NORM_BIAS] = {"norm_bias", XA_T_BOOL, XA_F_PRESENCE | XA_F_DERIVED | XA_F_NOMETA, 0, 0, 1,
                     NULL, NULL, "the final LayerNorm has a bias (norm.bias)"},
};

/* One layer, in torch's state_dict order (nn.MultiheadAttention._reset_parameters: xavier
 * in_proj, zero in_proj_bias and out_proj.bias; the linears as nn.Linear; norms ones / zeros). */
enum { P_WIN, P_BIN, P_WOUT, P_BOUT, P_W1, P_B1, P_W2, P_B2, P_N1W, P_N1B, P_N2W, P_N2B, P_N };
static const xa_pspec layer_table[P_N] = {
    {"self_attn.in_proj_weight", "3*d_model,d_model", NULL, XA_P_LIN, XA_INIT_XAVIER, NULL,
     "the packed q/k/v projection (3*d_model, d_model) of nn.TransformerEncoderLayer"},
    {"self_attn.in_proj_bias", "3*d_model", "bias", 0, XA_INIT_ZEROS, NULL,
     "the layer has biases (bias=True)"},
    {"self_attn.out_proj.weight", "d_model,d_model", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     "part of nn.TransformerEncoderLayer"},
    {"self_attn.out_proj.bias", "d_model", "bias", 0, XA_INIT_ZEROS, NULL,
     "the layer has biases (bias=True)"},
    {"linear1.weight", "dim_feedforward,d_model", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     "part of nn.TransformerEncoderLayer: (dim_feedforward, d_model)"},
    {"linear1.bias", "dim_feedforward", "bias", 0, XA_INIT_BIAS, "d_model",
     "the layer has biases (bias=True)"},
    {"linear2.weight", "d_model,dim_feedforward", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     "part of nn.TransformerEncoderLayer"},
    {"linear2.bias", "d_model", "bias", 0, XA_INIT_BIAS, "dim_feedforward",
     "the layer has biases (bias=True)"},
    {"norm1.weight", "d_model", NULL, 0, XA_INIT_ONES, NULL, "part of nn.TransformerEncoderLayer"},
    {"norm1.bias", "d_model", "bias", 0, XA_INIT_ZEROS, NULL, "the layer has biases (bias=True)"},
    {"norm2.weight", "d_model", NULL, 0, XA_INIT_ONES, NULL, "part of nn.TransformerEncoderLayer"},
    {"norm2.bias", "d_model", "bias", 0, XA_INIT_ZEROS, NULL, "the layer has biases (bias=True)"},
};
enum { Q_NW, Q_NB, Q_N };
static const xa_pspec final_table[Q_N] = {
    {"norm.weight", "d_model", "norm", 0, XA_INIT_ONES, NULL,
     "the final LayerNorm of nn.TransformerEncoder"},
    {"norm.bias", "d_model", "norm_bias", 0, XA_INIT_ZEROS, NULL, "the final LayerNorm's bias"},
};

static const xa_io inputs[] = {
    {"x", "B,K,d_model", 0, "the first sequence (image regions in MMCA)"},
    {"context", "B,N,d_model", 0, "the second sequence (words in MMCA)"},
    {"x_padding_mask", "B,K", XA_IO_OPT | XA_IO_MASK,
     "True = ignore; x's part of torch's src_key_padding_mask (True = IGNORE that position as "
     "a key)"},
    {"context_padding_mask", "B,N", XA_IO_OPT | XA_IO_MASK,
     "True = ignore; the context's part of src_key_padding_mask (a batch item with every "
     "position ignored gets zero rows, not NaN as in torch)"},
};
/* the flag of the hand-written runner this kind's command line replaced */
static const xa_alias aliases[] = {{"heads", "nhead", NULL}};
static const xa_io outputs[] = {
    {"out", "B,K,d_model", 0, "x's rows of the stacked output"},
    {"context_out", "B,N,d_model", 0, "the context's rows of the stacked output"},
};

struct xattn_joint {
    xa_mod core;
    xattn_joint_config cfg;
    int created; /* parameters drawn, not loaded */
};

/* ---------------------------------------------------------------------------------------- */
/* Loading                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Bare layer or stack: num_layers from the count of layers.N.* (unset for a bare layer). */
static xattn_status find_layers(xa_cfg *c, const xattn_safetensors *st, const char *prefix,
                                int64_t *L)
{
    *L = 0;
    if (xa_has(st, prefix, "self_attn.in_proj_weight")) return XATTN_OK;
    xattn_status s =
        xa_count_layers(st, prefix, "layers.", "self_attn.in_proj_weight", JOINT_MAX_LAYERS - 1, L);
    if (s) return s;
    char pp[XA_IO_NAME_CAP];
    xa_io_printable(prefix, pp, sizeof pp);
    if (*L == 0)
        return xa_error(XATTN_ERR_NOT_FOUND,
                        "no transformer encoder layer found: expected '%sself_attn.in_proj_weight' "
                        "(nn.TransformerEncoderLayer) or '%slayers.0.self_attn.in_proj_weight' "
                        "(nn.TransformerEncoder)",
                        pp, pp);
    xa_cfg_set(c, F_LAYERS, (double)*L, XA_FROM_SHAPE, "count of '%slayers.N.*'", pp);
    return XATTN_OK;
}

/* Self-attention variants TransformerEncoderLayer never builds (separate projections for other
 * key/value widths, add_bias_kv) would be ignored: refused. */
static xattn_status refuse_variants(const xattn_safetensors *st, const char *prefix, int64_t L)
{
    static const char *const names[] = {"self_attn.q_proj_weight", "self_attn.bias_k",
                                        "self_attn.bias_v"};
    for (int64_t l = 0; l < (L ? L : 1); l++)
        for (int k = 0; k < 3; k++) {
            char rel[96], full[512], shown[XA_IO_NAME_CAP];
            if (L)
                snprintf(rel, sizeof rel, "layers.%lld.%s", (long long)l, names[k]);
            else
                snprintf(rel, sizeof rel, "%s", names[k]);
            if (!xa_has(st, prefix, rel)) continue;
            snprintf(full, sizeof full, "%s%s", prefix, rel);
            return xa_error(XATTN_ERR_UNSUPPORTED,
                            "tensor '%s' present: only self-attention with a packed "
                            "in_proj_weight (kdim = vdim = d_model, no bias_k/bias_v) is "
                            "supported",
                            xa_io_printable(full, shown, sizeof shown));
        }
    return XATTN_OK;
}

/* torch takes other activations (any callable); a name this module does not implement is
 * unsupported rather than malformed (an option, when given, wins over the metadata). */
static xattn_status check_activation(const xattn_safetensors *st, const xa_kv *opts, size_t n_opts)
{
    for (size_t k = 0; k < n_opts; k++)
        if (opts[k].key && !strcmp(opts[k].key, "activation")) return XATTN_OK;
    const char *v = xattn_st_meta_get(st, "activation");
    int i;
    if (!v || xa_parse_enum(v, ACTIVATIONS, &i)) return XATTN_OK;
    char shown[64];
    return xa_error(XATTN_ERR_UNSUPPORTED,
                    "__metadata__ 'activation' is \"%s\": only relu and gelu are supported",
                    xa_io_printable(v, shown, sizeof shown));
}

static xattn_status bind_file(xa_cfg *c, const xattn_safetensors *st, const char *prefix,
                              const xa_kv *opts, size_t n_opts)
{
    int64_t L;
    xattn_status s = find_layers(c, st, prefix, &L);
    if (s) return s;
    const char *stem = L ? "layers.0." : "";
    if ((s = xa_cfg_bind_shapes(c, layer_table, P_N, st, prefix, stem)) ||
        (s = xa_cfg_require_shapes(c, layer_table, P_N, st, prefix, stem)) ||
        (L && (s = xa_cfg_bind_shapes(c, final_table, Q_N, st, prefix, ""))) ||
        (s = refuse_variants(st, prefix, L)))
        return s;
    return check_activation(st, opts, n_opts);
}

static xattn_status resolve(xa_cfg *c, const xa_kv *opts, size_t n_opts,
                            const xattn_safetensors *st)
{
    xattn_status s = xa_cfg_resolve(c, opts, n_opts, st, FN_LOAD);
    /* nn.TransformerEncoderLayer has no default head count: a missing argument */
    if (s == XATTN_ERR_NOT_FOUND && c->from[F_D] != XA_FROM_UNSET &&
        c->from[F_NHEAD] == XA_FROM_UNSET)
        return xa_error(XATTN_ERR_ARG,
                        "%s: the number of heads (nhead) is not known: pass heads (the option "
                        "'nhead')%s",
                        FN_LOAD, st ? " or store __metadata__ {\"heads\": \"N\"} in the file" : "");
    return s;
}

/* Rules across fields; the final norm's bias follows `bias` when created. */
static xattn_status check_config(xa_cfg *c, const xattn_safetensors *st, const char *prefix)
{
    const int64_t d = (int64_t)c->v[F_D], H = (int64_t)c->v[F_NHEAD];
    char pp[XA_IO_NAME_CAP];
    xa_io_printable(prefix, pp, sizeof pp);
    if (d % H)
        return xa_error(XATTN_ERR_SHAPE,
                        "d_model %lld (from the %s) is not divisible by heads %lld", (long long)d,
                        c->how[F_D], (long long)H);
    const int stack = c->from[F_LAYERS] != XA_FROM_UNSET;
    if (st && c->from[F_LAYERS] == XA_FROM_OPTION)
        return xa_error(XATTN_ERR_SHAPE,
                        "option num_layers = %lld disagrees with the names: '%sself_attn."
                        "in_proj_weight' is one bare nn.TransformerEncoderLayer",
                        (long long)c->v[F_LAYERS], pp);
    if (c->v[F_NORM] != 0 && !stack)
        return xa_error(XATTN_ERR_ARG, "norm = True (the final LayerNorm of "
                                       "nn.TransformerEncoder) needs num_layers");
    if (!st || c->from[F_NORM_BIAS] == XA_FROM_UNSET)
        xa_cfg_set(c, F_NORM_BIAS, c->v[F_NORM] != 0 && c->v[F_BIAS] != 0, XA_FROM_DERIVED,
                   "norm and bias");
    else if (c->v[F_NORM_BIAS] != 0 && c->v[F_NORM] == 0)
        return xa_error(XATTN_ERR_FORMAT,
                        "tensor '%snorm.bias' is present but '%snorm.weight' is absent (a "
                        "LayerNorm's bias comes with its weight)",
                        pp, pp);
    return XATTN_OK;
}

static xattn_status add_tables(xa_mod *core)
{
    const xa_cfg *c = &core->cfg;
    if (c->from[F_LAYERS] == XA_FROM_UNSET)
        return xa_params_add_table(&core->params, layer_table, P_N, c, "", NULL);
    const int64_t L = (int64_t)c->v[F_LAYERS];
    xattn_status s = XATTN_OK;
    for (int64_t l = 0; l < L && !s; l++) {
        char stem[32];
        snprintf(stem, sizeof stem, "layers.%lld.", (long long)l);
        s = xa_params_add_table(&core->params, layer_table, P_N, c, stem, NULL);
    }
    return s ? s : xa_params_add_table(&core->params, final_table, Q_N, c, "", NULL);
}

static xattn_status build(xa_mod *core, const xattn_safetensors *st, const char *prefix,
                          const xa_kv *opts, size_t n_opts)
{
    xattn_status s;
    ((xattn_joint *)core)->created = st == NULL;
    if ((st && (s = bind_file(&core->cfg, st, prefix, opts, n_opts))) ||
        (s = resolve(&core->cfg, opts, n_opts, st)) || (s = check_config(&core->cfg, st, prefix)))
        return s;
    return add_tables(core);
}

/* nn.TransformerEncoder deep-copies its layer: a new stack starts with equal layers. */
static void clone_layers(xa_params *ps, int64_t L)
{
    for (int64_t l = 1; l < L; l++)
        for (int k = 0; k < P_N; k++) {
            const xa_param *src = &ps->p[k], *dst = &ps->p[l * P_N + k];
            if (!src->data || !dst->data) continue;
            int64_t n = 1;
            for (int a = 0; a < src->ndim; a++) n *= src->shape[a];
            memcpy(dst->data, src->data, (size_t)n * sizeof(float));
        }
}

static xattn_status bind(xa_mod *core)
{
    xattn_joint *m = (xattn_joint *)core;
    const xa_cfg *c = &core->cfg;
    xattn_joint_config *o = &m->cfg;
    const int stack = c->from[F_LAYERS] != XA_FROM_UNSET;
    o->d_model = xa_cfg_int(c, "d_model");
    o->heads = xa_cfg_int(c, "nhead");
    o->head_dim = o->d_model / o->heads;
    o->ff_dim = xa_cfg_int(c, "dim_feedforward");
    o->layers = stack ? (int64_t)c->v[F_LAYERS] : 1;
    o->norm_first = c->v[F_NORM_FIRST] != 0;
    o->activation = (int)c->v[F_ACT];
    o->layer_norm_eps = (float)c->v[F_EPS];
    o->final_norm = c->v[F_NORM] != 0;
    o->bias = c->v[F_BIAS] != 0;
    if (m->created && stack) clone_layers(&core->params, o->layers);
    return XATTN_OK;
}

static xattn_status forward_named(const xa_mod *core, const xa_run *r);
static xattn_status backward_named(const xa_mod *core, const xa_run *r, xa_grad *g);

static int claims(const xattn_safetensors *st, const char *prefix);

const xa_kind xa_kind_joint = {
    .name = "joint",
    .reference = "torch.nn.TransformerEncoderLayer / nn.TransformerEncoder over [x; context] "
                 "(MMCA joint attention)",
    .summary = "joint (stacked) cross-attention: one softmax over both sequences",
    .fields = fields,
    .n_fields = F_N,
    .inputs = inputs,
    .n_in = 4,
    .outputs = outputs,
    .n_out = 2,
    .anchor = "self_attn.in_proj_weight|layers.0.self_attn.in_proj_weight",
    .claims = claims,
    .size = sizeof(xattn_joint),
    .build = build,
    .bind = bind,
    .forward = forward_named,
    .backward = backward_named,
    .state_dict = "self_attn.in_proj_weight (3d, d), self_attn.in_proj_bias, "
                  "self_attn.out_proj.{weight, bias}, linear1.{weight (ff, d), bias}, "
                  "linear2.{weight, bias}, norm1.{weight, bias}, norm2.{weight, bias} "
                  "(nn.TransformerEncoderLayer; bias=False: no *.bias); nn.TransformerEncoder: "
                  "layers.N.<the same>, norm.{weight, bias} (its final norm, optional)",
    .aliases = aliases,
    .n_aliases = 1,
};

/* A layer (self_attn. with linear1. beside it) or a stack of them (layers.0.self_attn. with a
 * feed-forward or norm tensor in some layers.N., so that a stack with a missing or stray layer
 * is found and its loader names the tensor; a stack of attention blocks alone is not one); the
 * layers of a stack are left out of the registry's scan as parts of the stack. */
static int claims(const xattn_safetensors *st, const char *prefix)
{
    if (xa_has(st, prefix, "linear1.weight")) return 1;
    if (!xa_has(st, prefix, "layers.0.self_attn.in_proj_weight")) return 0;
    static const char *const parts[] = {"linear1.", "linear2.", "norm1.", "norm2."};
    const size_t pl = strlen(prefix);
    for (size_t i = 0; i < xattn_st_count(st); i++) {
        const char *n = xattn_st_name(st, i), *p;
        if (!n || strncmp(n, prefix, pl) || strncmp(n + pl, "layers.", 7)) continue;
        for (p = n + pl + 7; *p >= '0' && *p <= '9'; p++) continue;
        for (int k = 0; k < 4 && p > n + pl + 7 && *p == '.'; k++)
            if (!strncmp(p + 1, parts[k], strlen(parts[k]))) return 1;
    }
    return 0;
}

xattn_status xattn_joint_load(const xattn_safetensors *st, const char *prefix,
                              const xattn_joint_opts *opts, xattn_joint **out)
{
    XA_LOAD_ARGS(st, out, FN_LOAD);
    xattn_joint_opts none;
    memset(&none, 0, sizeof none);
    if (!opts) opts = &none;
    xa_kvbuf kv;
    memset(&kv, 0, sizeof kv);
    xa_kv_int(&kv, "nhead", opts->heads);
    xa_kv_bool(&kv, "norm_first", (int)opts->norm_first);
    xa_kv_enum(&kv, "activation", ACTIVATIONS, opts->activation);
    xa_kv_real(&kv, "layer_norm_eps", opts->layer_norm_eps);
    xa_mod *m;
    xattn_status s = xa_mod_open(&xa_kind_joint, st, prefix, kv.kv, kv.n, &m);
    *out = s ? NULL : (xattn_joint *)m;
    return s;
}

void xattn_joint_free(xattn_joint *m) { xa_mod_free(m ? &m->core : NULL); }

void xattn_joint_get_config(const xattn_joint *m, xattn_joint_config *cfg)
{
    xa_copy_config(m ? &m->cfg : NULL, cfg, sizeof *cfg);
}

const char *xattn_joint_warnings(const xattn_joint *m) { return m ? m->core.cfg.warn : ""; }

/* ---------------------------------------------------------------------------------------- */
/* Forward                                                                                  */
/* ---------------------------------------------------------------------------------------- */

typedef struct joint_scratch {
    float *Y; /* (R, d) the stacked sequence, updated layer by layer */
    float *Z; /* (R, d) pre-norm input (norm_first)                 */
    float *A; /* (R, d) attention output                             */
    float *T; /* (R, max(3d, ff)) q/k/v or feed-forward hidden       */
} joint_scratch;

/* Parameter k of layer l (NULL: an absent bias). */
static const float *lw(const xattn_joint *m, int64_t l, int k)
{
    return xa_param_data(&m->core.params, (int)(l * P_N + k));
}
/* Linear weight k of layer l as kept (float32, 16 bits or int8). */
static xa_wt lwt(const xattn_joint *m, int64_t l, int k)
{
    return xa_param_w(&m->core.params, (int)(l * P_N + k));
}

static xattn_status layer_forward(const xattn_joint *m, int64_t l, int64_t R, const xa_attn *at,
                                  const joint_scratch *sc)
{
    const xattn_joint_config *c = &m->cfg;
    const int64_t d = c->d_model, ff = c->ff_dim;
    const float eps = c->layer_norm_eps;
    float *Y = sc->Y;
    const float *src = Y;
    xattn_status s;
    /* ---- self-attention block ---- */
    if (c->norm_first) {
        if ((s = xa_op_layernorm(Y, R, d, lw(m, l, P_N1W), lw(m, l, P_N1B), eps, sc->Z))) return s;
        src = sc->Z;
    }
    if ((s = xa_op_linear_w(src, R, d, lwt(m, l, P_WIN), lw(m, l, P_BIN), 3 * d, sc->T, 0)) ||
        (s = xa_op_attention(at)) ||
        (s = xa_op_linear_w(sc->A, R, d, lwt(m, l, P_WOUT), lw(m, l, P_BOUT), d, Y, 1)))
        return s;
    if (!c->norm_first && (s = xa_op_layernorm(Y, R, d, lw(m, l, P_N1W), lw(m, l, P_N1B), eps, Y)))
        return s;
    /* ---- feed-forward block ---- */
    src = Y;
    if (c->norm_first) {
        if ((s = xa_op_layernorm(Y, R, d, lw(m, l, P_N2W), lw(m, l, P_N2B), eps, sc->Z))) return s;
        src = sc->Z;
    }
    if ((s = xa_op_linear_w(src, R, d, lwt(m, l, P_W1), lw(m, l, P_B1), ff, sc->T, 0))) return s;
    if (c->activation) {
        if ((s = xa_op_gelu(sc->T, R * ff, 0))) return s;
    } else {
        xa_op_relu(sc->T, R * ff);
    }
    if ((s = xa_op_linear_w(sc->T, R, ff, lwt(m, l, P_W2), lw(m, l, P_B2), d, Y, 1))) return s;
    if (!c->norm_first) return xa_op_layernorm(Y, R, d, lw(m, l, P_N2W), lw(m, l, P_N2B), eps, Y);
    return XATTN_OK;
}

/* The attention over the stacked sequence: heads read in place from T = [q | k | v] (R, 3d). */
static void joint_attn(const xattn_joint_config *c, int64_t B, int64_t L, const joint_scratch *sc,
                       const uint8_t *keep, xa_attn *at)
{
    const int64_t d = c->d_model, dh = c->head_dim;
    memset(at, 0, sizeof *at);
    xa_attn_heads(at, B, c->heads, L, L, dh, dh, sc->T, 3 * d, sc->T + d, 3 * d, sc->T + 2 * d,
                  3 * d, sc->A, d);
    at->scale = xa_head_scale(dh);
    at->fill = XATTN_FILL_NEG_INF;
    at->kkeep = keep;
    at->kkeep_sb = L;
    at->fn = FN_FWD;
}

static xattn_status check_call(const xattn_joint *m, const xattn_joint_inputs *in,
                               const xattn_joint_outputs *out)
{
    if (!m) return xa_error(XATTN_ERR_ARG, "%s: module is NULL", FN_FWD);
    if (!in) return xa_error(XATTN_ERR_ARG, "%s: inputs are NULL", FN_FWD);
    if (!out) return xa_error(XATTN_ERR_ARG, "%s: outputs are NULL", FN_FWD);
    const int64_t B = in->B, K = in->K, N = in->N;
    if (B <= 0 || K < 0 || N < 0 || K + N < xa_op_min_rows())
        return xa_error(XATTN_ERR_SHAPE,
                        "%s: bad sizes B=%lld, K=%lld, N=%lld (need B >= 1 and "
                        "K + N >= 1)",
                        FN_FWD, (long long)B, (long long)K, (long long)N);
    if ((K > 0 && (!in->x || !out->out)) || (N > 0 && (!in->context || !out->context_out)))
        return xa_error(XATTN_ERR_ARG,
                        "%s: x/out (K > 0) and context/context_out (N > 0) must "
                        "not be NULL",
                        FN_FWD);
    const int64_t d = m->cfg.d_model, ff = m->cfg.ff_dim, L = K + N;
    const int64_t lim = INT64_MAX / 16, wide = ff > 3 * d ? ff : 3 * d;
    if ((L && B > lim / L) || B * L > lim / (wide + 3 * d + 64)) /* L = 0: an empty shard */
        return xa_error(XATTN_ERR_NOMEM, "%s: scratch for B=%lld, K=%lld, N=%lld overflows", FN_FWD,
                        (long long)B, (long long)K, (long long)N);
    return XATTN_OK;
}

static xattn_status joint_run(const xattn_joint *m, const xattn_joint_inputs *in,
                              const xattn_joint_outputs *out)
{
    const xattn_joint_config *c = &m->cfg;
    const int64_t B = in->B, K = in->K, N = in->N, L = K + N, R = B * L;
    const int64_t d = c->d_model, wide = c->ff_dim > 3 * d ? c->ff_dim : 3 * d;
    const size_t nY = ((size_t)(R * d) + 15) & ~(size_t)15;
    const size_t nT = ((size_t)(R * wide) + 15) & ~(size_t)15;
    const int masked = in->x_padding_mask || in->context_padding_mask;
    const size_t bytes = ((c->norm_first ? 3 : 2) * nY + nT) * sizeof(float) + (size_t)R;
    xa_ws *ws = xa_ws_get(bytes);
    if (!ws) return XATTN_ERR_NOMEM;
    joint_scratch sc;
    sc.Y = xa_ws_data(ws);
    sc.A = sc.Y + nY;
    sc.T = sc.A + nY;
    sc.Z = c->norm_first ? sc.T + nT : NULL;
    uint8_t *keep = masked ? (uint8_t *)(sc.T + nT + (c->norm_first ? nY : 0)) : NULL;
    xa_op_concat_seq(in->x, K, in->context, N, B, d, sc.Y);
    if (keep) xa_op_keep_concat(in->x_padding_mask, K, in->context_padding_mask, N, B, keep);
    xa_attn at;
    joint_attn(c, B, L, &sc, keep, &at);
    xattn_status s = XATTN_OK;
    for (int64_t l = 0; l < c->layers && !s; l++) s = layer_forward(m, l, R, &at, &sc);
    if (!s && c->final_norm) {
        const int64_t f = c->layers * P_N;
        s = xa_op_layernorm(sc.Y, R, d, xa_param_data(&m->core.params, (int)(f + Q_NW)),
                            xa_param_data(&m->core.params, (int)(f + Q_NB)), c->layer_norm_eps,
                            sc.Y);
    }
    if (!s) xa_op_split_seq(sc.Y, B, K, N, d, out->out, out->context_out);
    xa_ws_put(ws);
    return s;
}

xattn_status xattn_joint_forward(xattn_ctx *ctx, const xattn_joint *m, const xattn_joint_inputs *in,
                                 const xattn_joint_outputs *out)
{
    xattn_status s = check_call(m, in, out);
    if (s) return s;
    const xattn_ctx *prev = xa_ctx_enter(ctx);
    s = joint_run(m, in, out);
    xa_ctx_leave(prev);
    if (!s) xa_clear_error();
    return s;
}

/* The typed inputs and outputs of a named run. */
static void named_io(const xa_run *r, xattn_joint_inputs *in, xattn_joint_outputs *out)
{
    memset(in, 0, sizeof *in);
    in->B = xa_run_sym(r, "B");
    in->K = xa_run_sym(r, "K");
    in->N = xa_run_sym(r, "N");
    in->x = r->in[0];
    in->context = r->in[1];
    in->x_padding_mask = r->in[2];
    in->context_padding_mask = r->in[3];
    memset(out, 0, sizeof *out);
    out->out = r->out[0];
    out->context_out = r->out[1];
}

static xattn_status forward_named(const xa_mod *core, const xa_run *r)
{
    xattn_joint_inputs in;
    xattn_joint_outputs out;
    named_io(r, &in, &out);
    /* the registry has made its context current */
    const xattn_joint *m = (const xattn_joint *)core;
    xattn_status s = check_call(m, &in, &out);
    return s ? s : joint_run(m, &in, &out);
}

/* ---------------------------------------------------------------------------------------- */
/* Backward                                                                                 */
/* ---------------------------------------------------------------------------------------- */
/*
 * The forward runs once keeping each layer's input stream (R d floats, R = B (K + N)) and its
 * attention's log-sum-exp; going backward, a layer's internals (q/k/v, the attention output,
 * the stream between the blocks before and after its norm, the feed-forward hidden before and
 * after the activation) are recomputed from its input, and its gradient taken op by op: the
 * norms (post-norm or pre-norm, as the layer runs), the feed-forward, the output projection, the
 * fused attention (the padding masks as in the forward) and the packed q/k/v projection.
 */

typedef struct joint_bwd {
    const xattn_joint *m;
    int64_t R, B, L;
    xa_attn at;      /* the attention over T, A (joint_attn) */
    float *T, *A;    /* (R, 3d), (R, d) */
    float *y1p, *y1; /* the stream after the attention's residual, before / after norm1 */
    float *z;        /* a pre-norm's output (norm_first) */
    float *h, *g;    /* feed-forward hidden before / after the activation (R, ff) */
    float *lse;      /* (B, H, L) of the layer being recomputed */
    float *dT, *dA, *dz, *dh, *tmp;
    float *const *dparam;
} joint_bwd;

static float *jdp(const joint_bwd *w, int64_t l, int k)
{
    return w->dparam && lw(w->m, l, k) ? w->dparam[l * P_N + k] : NULL;
}

/* Parameter k of layer l's gradient set to 0 (before a backward that adds to it), n floats. */
static void jzero(const joint_bwd *w, int64_t l, int k, int64_t n)
{
    float *p = jdp(w, l, k);
    if (p) memset(p, 0, sizeof(float) * (size_t)n);
}

/* The internals of layer l from its input stream y0 (its output into out when not NULL). */
static xattn_status joint_layer_internals(joint_bwd *w, int64_t l, const float *y0, float *out)
{
    const xattn_joint_config *c = &w->m->cfg;
    const int64_t R = w->R, d = c->d_model, ff = c->ff_dim;
    const float eps = c->layer_norm_eps;
    const xattn_joint *m = w->m;
    xattn_status s;
    const float *src = y0;
    if (c->norm_first) {
        if ((s = xa_op_layernorm(y0, R, d, lw(m, l, P_N1W), lw(m, l, P_N1B), eps, w->z))) return s;
        src = w->z;
    }
    xa_attn at = w->at;
    at.lse = w->lse;
    if ((s = xa_op_linear_w(src, R, d, lwt(m, l, P_WIN), lw(m, l, P_BIN), 3 * d, w->T, 0)) ||
        (s = xa_op_attention(&at)))
        return s;
    memcpy(w->y1p, y0, sizeof(float) * (size_t)(R * d));
    if ((s = xa_op_linear_w(w->A, R, d, lwt(m, l, P_WOUT), lw(m, l, P_BOUT), d, w->y1p, 1)))
        return s;
    const float *y1 = w->y1p;
    if (!c->norm_first) {
        if ((s = xa_op_layernorm(w->y1p, R, d, lw(m, l, P_N1W), lw(m, l, P_N1B), eps, w->y1)))
            return s;
        y1 = w->y1;
    } else if ((s = xa_op_layernorm(w->y1p, R, d, lw(m, l, P_N2W), lw(m, l, P_N2B), eps, w->z))) {
        return s;
    }
    if ((s = xa_op_linear_w(c->norm_first ? w->z : y1, R, d, lwt(m, l, P_W1), lw(m, l, P_B1), ff,
                            w->h, 0)))
        return s;
    memcpy(w->g, w->h, sizeof(float) * (size_t)(R * ff));
    if (c->activation) {
        if ((s = xa_op_gelu(w->g, R * ff, 0))) return s;
    } else {
        xa_op_relu(w->g, R * ff);
    }
    if (!out) return XATTN_OK;
    memcpy(out, y1, sizeof(float) * (size_t)(R * d));
    if ((s = xa_op_linear_w(w->g, R, ff, lwt(m, l, P_W2), lw(m, l, P_B2), d, out, 1))) return s;
    if (!c->norm_first)
        return xa_op_layernorm(out, R, d, lw(m, l, P_N2W), lw(m, l, P_N2B), eps, out);
    return XATTN_OK;
}

/* Layer l's backward: dy (R, d), the gradient of its output, becomes that of its input y0. The
 * internals are those of joint_layer_internals(y0). */
static xattn_status joint_layer_backward(joint_bwd *w, int64_t l, const float *y0, float *dy)
{
    const xattn_joint_config *c = &w->m->cfg;
    const xattn_joint *m = w->m;
    const int64_t R = w->R, d = c->d_model, ff = c->ff_dim, H = c->heads, dh = c->head_dim;
    const float eps = c->layer_norm_eps;
    xattn_status s;
    /* post-norm: y2 = norm2(y1 + ff(y1)); pre-norm: y2 = y1 + ff(norm2(y1)) */
    if (!c->norm_first) { /* dy becomes the gradient of the sum before norm2, in place */
        memcpy(w->tmp, dy, sizeof(float) * (size_t)(R * d));
        float *y2p = w->dz; /* the sum again, as a scratch */
        memcpy(y2p, w->y1, sizeof(float) * (size_t)(R * d));
        if ((s = xa_op_linear_w(w->g, R, ff, lwt(m, l, P_W2), lw(m, l, P_B2), d, y2p, 1)) ||
            (s = xa_op_layernorm_backward(y2p, R, d, lw(m, l, P_N2W), eps, w->tmp, dy,
                                          jdp(w, l, P_N2W), jdp(w, l, P_N2B), 0)))
            return s;
    }
    /* the feed-forward's branch: dy -> dg -> dh -> its input (y1, or norm2(y1)) */
    if ((s = xa_op_linear_backward(w->g, R, ff, lw(m, l, P_W2), d, dy, w->dh, jdp(w, l, P_W2),
                                   jdp(w, l, P_B2), 0)))
        return s;
    if (c->activation)
        xa_op_gelu_backward(w->h, w->dh, w->dh, R * ff, 0);
    else
        xa_op_relu_backward(w->h, w->dh, w->dh, R * ff);
    if ((s = xa_op_linear_backward(c->norm_first ? w->z : w->y1, R, d, lw(m, l, P_W1), ff, w->dh,
                                   w->dz, jdp(w, l, P_W1), jdp(w, l, P_B1), 0)))
        return s;
    if (c->norm_first) { /* dy1 = dy + norm2's backward of dz (its weights' gradients from 0) */
        jzero(w, l, P_N2W, d);
        jzero(w, l, P_N2B, d);
        if ((s = xa_op_layernorm_backward(w->y1p, R, d, lw(m, l, P_N2W), eps, w->dz, dy,
                                          jdp(w, l, P_N2W), jdp(w, l, P_N2B), 1)))
            return s;
    } else { /* dy1 = dy + dz, then back through norm1 */
        xa_op_add(w->dz, dy, R * d);
        if ((s = xa_op_layernorm_backward(w->y1p, R, d, lw(m, l, P_N1W), eps, w->dz, dy,
                                          jdp(w, l, P_N1W), jdp(w, l, P_N1B), 0)))
            return s;
    }
    /* dy is now the gradient of y1p = y0 + out_proj(A) */
    if ((s = xa_op_linear_backward(w->A, R, d, lw(m, l, P_WOUT), d, dy, w->dA, jdp(w, l, P_WOUT),
                                   jdp(w, l, P_BOUT), 0)))
        return s;
    xa_attn_grad ag;
    memset(&ag, 0, sizeof ag);
    ag.dout = w->dA, ag.do_sb = w->L * d, ag.do_sh = dh, ag.do_si = d;
    ag.lse = w->lse;
    ag.dq = w->dT, ag.dq_sb = w->L * 3 * d, ag.dq_sh = dh, ag.dq_si = 3 * d;
    ag.dk = w->dT + d, ag.dk_sb = w->L * 3 * d, ag.dk_sh = dh, ag.dk_sj = 3 * d;
    ag.dv = w->dT + 2 * d, ag.dv_sb = w->L * 3 * d, ag.dv_sh = dh, ag.dv_sj = 3 * d;
    (void)H;
    if ((s = xa_op_attention_backward(&w->at, &ag))) return s;
    /* the q/k/v projection's input: y0, or norm1(y0) (z holds norm2's output by now) */
    if (c->norm_first &&
        (s = xa_op_layernorm(y0, R, d, lw(m, l, P_N1W), lw(m, l, P_N1B), eps, w->z)))
        return s;
    if ((s = xa_op_linear_backward(c->norm_first ? w->z : y0, R, d, lw(m, l, P_WIN), 3 * d, w->dT,
                                   w->dz, jdp(w, l, P_WIN), jdp(w, l, P_BIN), 0)))
        return s;
    if (c->norm_first) {
        jzero(w, l, P_N1W, d);
        jzero(w, l, P_N1B, d);
        return xa_op_layernorm_backward(y0, R, d, lw(m, l, P_N1W), eps, w->dz, dy, jdp(w, l, P_N1W),
                                        jdp(w, l, P_N1B), 1);
    }
    xa_op_add(dy, w->dz, R * d); /* the residual's part and the attention path's */
    return XATTN_OK;
}

static xattn_status backward_named(const xa_mod *core, const xa_run *r, xa_grad *gr)
{
    const xattn_joint *m = (const xattn_joint *)core;
    const xattn_joint_config *c = &m->cfg;
    xattn_joint_inputs in;
    xattn_joint_outputs out;
    named_io(r, &in, &out);
    xattn_status s = check_call(m, &in, &out);
    if (s) return s;
    const int64_t B = in.B, K = in.K, N = in.N, L = K + N, R = B * L, d = c->d_model;
    const int64_t ff = c->ff_dim, H = c->heads, NL = c->layers;
    const double total = (double)(NL + 1) * (double)(R * d) + (double)NL * (double)(B * H * L) +
                         2.0 * (double)(R * 3 * d) + 9.0 * (double)(R * d) +
                         3.0 * (double)(R * ff) + (double)R / 4.0 + 64.0 * 16 * (double)(NL + 16);
    if (total > 2.5e11) return xa_error(XATTN_ERR_NOMEM, "%s: backward scratch too large", FN_FWD);
    float *mem = xa_alloc(sizeof(float) * (size_t)total);
    if (!mem) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory for the backward", FN_FWD);
    float *q = mem;
#define CARVE(n) (q += ((n) + 15) / 16 * 16, q - ((n) + 15) / 16 * 16)
    float *Ys = CARVE((NL + 1) * R * d), *lses = CARVE(NL * B * H * L);
    joint_bwd w;
    memset(&w, 0, sizeof w);
    w.m = m, w.R = R, w.B = B, w.L = L, w.dparam = gr->dparam;
    w.T = CARVE(R * 3 * d), w.A = CARVE(R * d), w.y1p = CARVE(R * d), w.y1 = CARVE(R * d);
    w.z = CARVE(R * d), w.h = CARVE(R * ff), w.g = CARVE(R * ff);
    w.dT = CARVE(R * 3 * d), w.dA = CARVE(R * d), w.dz = CARVE(R * d), w.dh = CARVE(R * ff);
    w.tmp = CARVE(R * d);
    float *dy = CARVE(R * d);
    uint8_t *keep = (uint8_t *)CARVE(R / 4 + 1);
#undef CARVE
    const int masked = in.x_padding_mask || in.context_padding_mask;
    if (masked) xa_op_keep_concat(in.x_padding_mask, K, in.context_padding_mask, N, B, keep);
    joint_scratch sc = {NULL, NULL, w.A, w.T};
    joint_attn(c, B, L, &sc, masked ? keep : NULL, &w.at);
    /* the forward, keeping each layer's input and log-sum-exp */
    xa_op_concat_seq(in.x, K, in.context, N, B, d, Ys);
    for (int64_t l = 0; l < NL && !s; l++) {
        w.lse = lses + l * B * H * L;
        s = joint_layer_internals(&w, l, Ys + l * R * d, Ys + (l + 1) * R * d);
    }
    float *yL = Ys + NL * R * d;
    const int64_t f = NL * P_N;
    const float *fw = c->final_norm ? xa_param_data(&m->core.params, (int)(f + Q_NW)) : NULL;
    const float *fb = c->final_norm ? xa_param_data(&m->core.params, (int)(f + Q_NB)) : NULL;
    if (!s) {
        float *o = w.tmp;
        memcpy(o, yL, sizeof(float) * (size_t)(R * d));
        if (c->final_norm) s = xa_op_layernorm(yL, R, d, fw, fb, c->layer_norm_eps, o);
        if (!s) xa_op_split_seq(o, B, K, N, d, out.out, out.context_out);
    }
    if (!s) s = xa_grad_outputs(gr, r);
    if (!s) { /* the outputs' gradients, stacked like the sequence */
        memset(dy, 0, sizeof(float) * (size_t)(R * d));
        float *zero = w.dz;
        memset(zero, 0, sizeof(float) * (size_t)(R * d));
        xa_op_concat_seq(gr->dout[0] ? gr->dout[0] : zero, K, gr->dout[1] ? gr->dout[1] : zero, N,
                         B, d, dy);
        if (c->final_norm) {
            memcpy(w.tmp, dy, sizeof(float) * (size_t)(R * d));
            s = xa_op_layernorm_backward(yL, R, d, fw, c->layer_norm_eps, w.tmp, dy,
                                         gr->dparam ? gr->dparam[f + Q_NW] : NULL,
                                         gr->dparam && fb ? gr->dparam[f + Q_NB] : NULL, 0);
        }
    }
    for (int64_t l = NL - 1; l >= 0 && !s; l--) {
        w.lse = lses + l * B * H * L;
        const float *y0 = Ys + l * R * d;
        if (l != NL - 1) s = joint_layer_internals(&w, l, y0, NULL); /* the last: still there */
        if (!s) s = joint_layer_backward(&w, l, y0, dy);
    }
    if (!s) /* an input whose gradient is not wanted: its half into scratch */
        xa_op_split_seq(dy, B, K, N, d, gr->din[0] ? gr->din[0] : w.tmp,
                        gr->din[1] ? gr->din[1] : w.tmp + B * K * d);
    xa_free(mem);
    return s;
}
