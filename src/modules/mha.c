/*
 * Multi-head cross-attention modules: torch.nn.MultiheadAttention (kind "mha") and diffusers
 * Attention (kind "attention").
 *
 *   torch.nn.MultiheadAttention (batch_first=True)   in_proj_weight (3E, E) [+ in_proj_bias (3E)]
 *                                                    or q_proj_weight (E, E), k_proj_weight
 *                                                    (E, kdim), v_proj_weight (E, vdim);
 *                                                    out_proj.weight (E, E) [+ out_proj.bias (E)]
 *                                                    [+ bias_k, bias_v (1, 1, E)]
 *   diffusers Attention                              to_q.weight (inner, query_dim), to_k.weight
 *                                                    (inner, cross_dim), to_v.weight (inner,
 *                                                    cross_dim) [+ to_{q,k,v}.bias (inner)],
 *                                                    to_out.0.weight (out_dim, inner)
 *                                                    [+ to_out.0.bias (out_dim)]
 *
 * forward: three projections into scratch (B*I*inner, B*J'*inner, B*J'*inner), ONE fused
 * attention that reads the heads in place through strides ((h d) channel split, no transposes),
 * then the output projection (diffusers' residual accumulated into it). Masks are turned into
 * what the fused attention takes: a keep mask (uint8, nonzero = keep) for bool masks and -inf
 * entries, an additive bias for float masks, each with the smallest broadcast shape
 * (B|1, H|1, I|1, J') that holds its sources.
 */
#include "modules/mha.h"
#include "kernels/op_mha.h"
#include "io/io_internal.h"
#include "kernels/ops.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct xattn_mha {
    xa_mod core;
    xattn_mha_config cfg;
    xa_wt wq, wk, wv;             /* (inner, embed_dim), (inner, kdim), (inner, vdim) */
    const float *bq, *bk, *bv;    /* (inner) each, or NULL                           */
    xa_wt wo;                     /* (out_dim, inner)                                 */
    const float *bo;              /* (out_dim) or NULL                                */
    const float *bias_k, *bias_v; /* (inner) each: add_bias_kv, or NULL              */
};

static const char *FN_LOAD = "xattn_mha_load";
static const char *FN_FWD = "xattn_mha_forward";

/* ---------------------------------------------------------------------------------------- */
/* torch.nn.MultiheadAttention                                                              */
/* ---------------------------------------------------------------------------------------- */

/* MultiheadAttention(embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
 * add_zero_attn=False, kdim=None, vdim=None, batch_first=True); dropout does nothing at
 * inference. */
static const xa_field torch_fields[] = {
    {"embed_dim", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED, 0, 1, 1e15, NULL, NULL,
     "width of the queries and of the output"},
    {"num_heads", XA_T_INT, XA_F_REQUIRED, 0, 1, 1e15, NULL, "heads|num_heads",
     "attention heads (no default; must divide embed_dim)"},
    {"bias", XA_T_BOOL, XA_F_PRESENCE, 1, 0, 1, NULL, NULL, "in_proj_bias and out_proj.bias"},
    {"add_bias_kv", XA_T_BOOL, XA_F_PRESENCE, 0, 0, 1, NULL, NULL,
     "a learned key and value (bias_k, bias_v) appended to the keys"},
    {"add_zero_attn", XA_T_BOOL, XA_F_TRACELESS, 0, 0, 1, NULL, NULL,
     "a zero key and value appended to the keys"},
    {"kdim", XA_T_INT, XA_F_SHAPE | XA_F_OPTIONAL, 0, 1, 1e15, NULL, NULL,
     "width of the keys (None: embed_dim)"},
    {"vdim", XA_T_INT, XA_F_SHAPE | XA_F_OPTIONAL, 0, 1, 1e15, NULL, NULL,
     "width of the values (None: embed_dim)"},
    {"_qkv_same_embed_dim", XA_T_BOOL, XA_F_PRESENCE | XA_F_DERIVED, 1, 0, 1, NULL, NULL,
     "one packed in_proj_weight (kdim == vdim == embed_dim)"},
};

#define SEPARATE_WHY "q_proj_weight is present, so kdim/vdim differ from embed_dim"
#define PAIR_WHY     "bias_k and bias_v come together (add_bias_kv=True)"

enum { T_INW, T_QW, T_KW, T_VW, T_INB, T_OW, T_OB, T_BK, T_BV, T_N };
static const xa_pspec torch_table[T_N] = {
    {"in_proj_weight", "3*embed_dim,embed_dim", "_qkv_same_embed_dim", XA_P_LIN, XA_INIT_XAVIER,
     NULL, "the packed query/key/value projection of nn.MultiheadAttention, or q_proj_weight"},
    {"q_proj_weight", "embed_dim,embed_dim", "!_qkv_same_embed_dim", XA_P_LIN, XA_INIT_XAVIER, NULL,
     "the query projection when kdim or vdim differ from embed_dim"},
    {"k_proj_weight", "embed_dim,kdim", "!_qkv_same_embed_dim", XA_P_LIN, XA_INIT_XAVIER, NULL,
     SEPARATE_WHY},
    {"v_proj_weight", "embed_dim,vdim", "!_qkv_same_embed_dim", XA_P_LIN, XA_INIT_XAVIER, NULL,
     SEPARATE_WHY},
    {"in_proj_bias", "3*embed_dim", "bias", 0, XA_INIT_ZEROS, NULL,
     "the query/key/value biases (bias=True)"},
    {"out_proj.weight", "embed_dim,embed_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     "the output projection of nn.MultiheadAttention"},
    {"out_proj.bias", "embed_dim", "bias", 0, XA_INIT_ZEROS, NULL,
     "the output bias: bias=True gives in_proj_bias and out_proj.bias"},
    {"bias_k", "1,1,embed_dim", "add_bias_kv", 0, XA_INIT_XAVIER_NORMAL, NULL, PAIR_WHY},
    {"bias_v", "1,1,embed_dim", "add_bias_kv", 0, XA_INIT_XAVIER_NORMAL, NULL, PAIR_WHY},
};

static const xa_io torch_inputs[] = {
    {"query", "B,I,embed_dim", 0, "the sequence that queries"},
    {"key", "B,J,kdim", XA_IO_OPT, "the keys (default: query, self-attention)"},
    {"value", "B,J,vdim", XA_IO_OPT, "the values (default: key)"},
    {"key_padding_mask", "B,J", XA_IO_OPT | XA_IO_MASK | XA_IO_ADDITIVE,
     "bool True = masked out (as torch: that key is ignored); float: added to the logits"},
    {"attn_mask", "I,J|B*num_heads,I,J", XA_IO_OPT | XA_IO_MASK | XA_IO_ADDITIVE,
     "bool True = masked out (as torch: not allowed to attend); float: added to the logits; "
     "(B*num_heads, I, J): one mask per batch item and head"},
    {"is_causal", "", XA_IO_OPT | XA_IO_MASK,
     "causal masking: key j > i masked out (upper-left aligned), besides the masks given"},
};
/* The keys add_bias_kv and add_zero_attn append (bias_k, then a zero key) come last. */
static const xa_io torch_outputs[] = {
    {"out", "B,I,embed_dim", 0, "attn_output"},
    {"attn", "B,I,J+add_bias_kv+add_zero_attn", XA_IO_OPT,
     "attn_output_weights averaged over heads (need_weights=True); the keys appended by "
     "add_bias_kv and add_zero_attn come last, as torch returns them"},
    {"attn_per_head", "B,num_heads,I,J+add_bias_kv+add_zero_attn", XA_IO_OPT,
     "attn_output_weights per head (average_attn_weights=False)"},
};
static const xa_stand_in torch_stand_ins[] = {{"key", "query"}, {"value", "key"}};
static const xa_alias torch_aliases[] = {
    {"heads", "num_heads", NULL},
    {"causal", "is_causal", NULL},
    {"per_head_attn", "attn_per_head", "attn"},
};

/* Field name gets the value of field `from` when nothing gave it (None in the reference). */
static void default_to(xa_cfg *c, const char *name, const char *from)
{
    int i = xa_cfg_find(c, name);
    if (c->from[i] == XA_FROM_UNSET)
        xa_cfg_set(c, i, xa_cfg_get(c, from), XA_FROM_DEFAULT, "default (%s)", from);
}

/* bias_k and bias_v exist together (the message names the missing one). */
static xattn_status torch_pair_check(const xattn_safetensors *st, const char *prefix)
{
    const int k = xa_has(st, prefix, "bias_k"), v = xa_has(st, prefix, "bias_v");
    if (k == v) return XATTN_OK;
    char full[600], shown[XA_IO_NAME_CAP];
    snprintf(full, sizeof full, "%s%s", prefix, k ? "bias_v" : "bias_k");
    return xa_error(XATTN_ERR_NOT_FOUND, "tensor '%s' is missing (%s)",
                    xa_io_printable(full, shown, sizeof shown), PAIR_WHY);
}

/* nn.MultiheadAttention has no default head count: an option or the metadata must give it. */
static xattn_status torch_heads_known(const xattn_safetensors *st, const xa_kv *opts, size_t n_opts)
{
    for (size_t k = 0; k < n_opts; k++)
        if (opts[k].key && !strcmp(opts[k].key, "num_heads")) return XATTN_OK;
    if (xattn_st_meta_get(st, "heads") || xattn_st_meta_get(st, "num_heads")) return XATTN_OK;
    return xa_error(XATTN_ERR_ARG,
                    "%s: the number of heads is not known (torch's module has no "
                    "default): give the option 'num_heads' or store __metadata__ "
                    "{\"heads\": \"N\"} in the file",
                    FN_LOAD);
}

static xattn_status torch_build(xa_mod *m, const xattn_safetensors *st, const char *prefix,
                                const xa_kv *opts, size_t n_opts)
{
    xa_cfg *c = &m->cfg;
    xattn_status s;
    if (st && ((s = xa_cfg_bind_shapes(c, torch_table, T_N, st, prefix, "")) ||
               (s = xa_cfg_require_shapes(c, torch_table, T_N, st, prefix, "")) ||
               (s = torch_pair_check(st, prefix)) || (s = torch_heads_known(st, opts, n_opts))))
        return s;
    if ((s = xa_cfg_resolve(c, opts, n_opts, st, FN_LOAD))) return s;
    default_to(c, "kdim", "embed_dim");
    default_to(c, "vdim", "embed_dim");
    const int64_t E = xa_cfg_int(c, "embed_dim"), H = xa_cfg_int(c, "num_heads");
    const int64_t kdim = xa_cfg_int(c, "kdim"), vdim = xa_cfg_int(c, "vdim");
    const int same = kdim == E && vdim == E, ip = xa_cfg_find(c, "_qkv_same_embed_dim");
    if (c->from[ip] == XA_FROM_UNSET) /* creating: torch packs exactly when the widths agree */
        xa_cfg_set(c, ip, same, XA_FROM_DERIVED, "kdim == vdim == embed_dim");
    else if (c->v[ip] != 0 && !same)
        return xa_error(XATTN_ERR_SHAPE,
                        "%s: in_proj_weight packs the projections of kdim = vdim = embed_dim = "
                        "%lld, but kdim = %lld (%s) and vdim = %lld (%s)",
                        FN_LOAD, (long long)E, (long long)kdim, c->how[xa_cfg_find(c, "kdim")],
                        (long long)vdim, c->how[xa_cfg_find(c, "vdim")]);
    if (E % H)
        return xa_error(XATTN_ERR_SHAPE,
                        "embed_dim %lld (from %s) is not divisible by heads %lld (%s)",
                        (long long)E, c->how[xa_cfg_find(c, "embed_dim")], (long long)H,
                        c->how[xa_cfg_find(c, "num_heads")]);
    return xa_params_add_table(&m->params, torch_table, T_N, c, "", NULL);
}

static xattn_status torch_bind(xa_mod *core)
{
    xattn_mha *m = (xattn_mha *)core;
    const xa_params *ps = &core->params;
    const xa_cfg *cf = &core->cfg;
    xattn_mha_config *c = &m->cfg;
    const int64_t E = xa_cfg_int(cf, "embed_dim"), H = xa_cfg_int(cf, "num_heads");
    c->layout = XATTN_LAYOUT_TORCH_MHA;
    c->embed_dim = c->inner_dim = c->out_dim = E;
    c->kdim = xa_cfg_int(cf, "kdim");
    c->vdim = xa_cfg_int(cf, "vdim");
    c->heads = H;
    c->head_dim = E / H;
    const xa_wt inw = xa_param_w(ps, T_INW);
    const float *inb = xa_param_data(ps, T_INB);
    m->wq = inw.p ? inw : xa_param_w(ps, T_QW);
    m->wk = inw.p ? xa_wt_rows(inw, E, E) : xa_param_w(ps, T_KW);
    m->wv = inw.p ? xa_wt_rows(inw, 2 * E, E) : xa_param_w(ps, T_VW);
    m->bq = inb;
    m->bk = inb ? inb + E : NULL;
    m->bv = inb ? inb + 2 * E : NULL;
    m->wo = xa_param_w(ps, T_OW);
    m->bo = xa_param_data(ps, T_OB);
    m->bias_k = xa_param_data(ps, T_BK);
    m->bias_v = xa_param_data(ps, T_BV);
    c->has_in_bias = inb != NULL;
    c->has_out_bias = m->bo != NULL;
    c->add_bias_kv = m->bias_k != NULL;
    c->add_zero_attn = xa_cfg_get(cf, "add_zero_attn") != 0;
    c->scale = xa_head_scale(c->head_dim);
    c->residual_connection = 0;
    c->rescale_output_factor = 1.0f;
    return XATTN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* diffusers Attention                                                                      */
/* ---------------------------------------------------------------------------------------- */

/* Attention(query_dim, cross_attention_dim=None, heads=8, dim_head=64, bias=False,
 * out_bias=True, scale_qk=True, rescale_output_factor=1.0, residual_connection=False,
 * out_dim=None), the arguments that change the state_dict or the forward of AttnProcessor2_0. */
static const xa_field diff_fields[] = {
    {"query_dim", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED, 0, 1, 1e15, NULL, NULL,
     "width of hidden_states"},
    {"cross_attention_dim", XA_T_INT, XA_F_SHAPE | XA_F_OPTIONAL, 0, 1, 1e15, NULL, NULL,
     "width of encoder_hidden_states (None: query_dim)"},
    {"heads", XA_T_INT, XA_F_TRACELESS, 8, 1, 1e15, NULL, NULL, "attention heads"},
    {"dim_head", XA_T_INT, 0, 64, 1, 1e15, NULL, NULL,
     "width of a head (loading: the rows of to_q.weight / heads)"},
    {"bias", XA_T_BOOL, XA_F_PRESENCE, 0, 0, 1, NULL, NULL, "to_q, to_k and to_v have biases"},
    {"out_bias", XA_T_BOOL, XA_F_PRESENCE, 1, 0, 1, NULL, NULL, "to_out.0 has a bias"},
    {"out_dim", XA_T_INT, XA_F_SHAPE | XA_F_OPTIONAL, 0, 1, 1e15, NULL, NULL,
     "output width (None: query_dim; when given it is also the inner width and heads = "
     "out_dim // dim_head)"},
    {"scale_qk", XA_T_BOOL, XA_F_TRACELESS, 1, 0, 1, NULL, NULL,
     "logits scaled by head width ** -0.5 (False: unscaled)"},
    {"residual_connection", XA_T_BOOL, XA_F_TRACELESS, 0, 0, 1, NULL, NULL,
     "hidden_states added to the output"},
    {"rescale_output_factor", XA_T_REAL, XA_F_TRACELESS, 1.0, -3.4e38, 3.4e38, NULL, NULL,
     "the output divided by it (after the residual)"},
    {"inner_dim", XA_T_INT, XA_F_SHAPE | XA_F_DERIVED, 0, 1, 1e15, NULL, NULL,
     "heads * dim_head, or out_dim when given"},
};

enum { D_QW, D_QB, D_KW, D_KB, D_VW, D_VB, D_OW, D_OB, D_N };
static const xa_pspec diff_table[D_N] = {
    {"to_q.weight", "inner_dim,query_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     "diffusers Attention query projection"},
    {"to_q.bias", "inner_dim", "bias", 0, XA_INIT_BIAS, "query_dim",
     "bias=True gives to_q, to_k and to_v biases"},
    {"to_k.weight", "inner_dim,cross_attention_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     "diffusers Attention key projection"},
    {"to_k.bias", "inner_dim", "bias", 0, XA_INIT_BIAS, "cross_attention_dim",
     "bias=True gives to_q, to_k and to_v biases"},
    {"to_v.weight", "inner_dim,cross_attention_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     "diffusers Attention value projection"},
    {"to_v.bias", "inner_dim", "bias", 0, XA_INIT_BIAS, "cross_attention_dim",
     "bias=True gives to_q, to_k and to_v biases"},
    {"to_out.0.weight", "out_dim,inner_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     "diffusers Attention output projection"},
    {"to_out.0.bias", "out_dim", "out_bias", 0, XA_INIT_BIAS, "inner_dim",
     "the output bias (out_bias=True)"},
};

static const xa_io diff_inputs[] = {
    {"hidden_states", "B,I,query_dim", 0, "the sequence that queries"},
    {"encoder_hidden_states", "B,J,cross_attention_dim", XA_IO_OPT,
     "the sequence attended to (None: hidden_states, self-attention)"},
    {"attention_mask", "B,J", XA_IO_OPT | XA_IO_MASK | XA_IO_ADDITIVE,
     "per batch item and key: bool True = keep (attend, as F.scaled_dot_product_attention); "
     "float: added to the logits"},
};
static const xa_io diff_outputs[] = {
    {"out", "B,I,out_dim", 0, "the attention output"},
    {"attention_probs", "B,heads,I,J", XA_IO_OPT, "attention weights per head"},
};
static const xa_stand_in diff_stand_ins[] = {{"encoder_hidden_states", "hidden_states"}};
static const xa_alias diff_aliases[] = {
    {"key_padding_mask", "attention_mask", NULL},
};

/* State_dict entries of diffusers Attention features this module does not compute. */
static xattn_status diff_reject_extras(const xattn_safetensors *st, const char *prefix)
{
    static const char *const extras[] = {"norm_q.",       "norm_k.",       "norm_cross.",
                                         "group_norm.",   "spatial_norm.", "add_q_proj.",
                                         "add_k_proj.",   "add_v_proj.",   "to_add_out.",
                                         "norm_added_q.", "norm_added_k."};
    const size_t plen = strlen(prefix), n = xattn_st_count(st);
    for (size_t i = 0; i < n; i++) {
        const char *name = xattn_st_name(st, i);
        if (!name || strncmp(name, prefix, plen) != 0) continue;
        char shown[XA_IO_NAME_CAP];
        for (size_t e = 0; e < XA_N(extras); e++)
            if (!strncmp(name + plen, extras[e], strlen(extras[e])))
                return xa_error(XATTN_ERR_UNSUPPORTED,
                                "tensor '%s': diffusers Attention with %.*s is not supported "
                                "(only to_q/to_k/to_v/to_out.0)",
                                xa_io_printable(name, shown, sizeof shown),
                                (int)(strlen(extras[e]) - 1), extras[e]);
    }
    return XATTN_OK;
}

/* heads, dim_head and the inner width as diffusers relates them: inner = heads * dim_head, or
 * inner = out_dim and heads = out_dim // dim_head when out_dim is given. Loading, the inner
 * width comes from the shapes and dim_head, unless given, from inner / heads. */
static xattn_status diff_heads(xa_cfg *c, int loading)
{
    const int ih = xa_cfg_find(c, "heads"), id = xa_cfg_find(c, "dim_head");
    const int ii = xa_cfg_find(c, "inner_dim"), io = xa_cfg_find(c, "out_dim");
    if (!loading && c->from[io] != XA_FROM_UNSET) {
        if (c->v[io] < c->v[id])
            return xa_error(XATTN_ERR_ARG,
                            "%s: out_dim %.0f is smaller than dim_head %.0f "
                            "(heads = out_dim // dim_head would be 0)",
                            FN_LOAD, c->v[io], c->v[id]);
        xa_cfg_set(c, ih, floor(c->v[io] / c->v[id]), XA_FROM_DERIVED,
                   "out_dim // dim_head (diffusers ignores heads when out_dim is given)");
        xa_cfg_set(c, ii, c->v[io], XA_FROM_DERIVED, "out_dim");
    } else if (!loading) {
        xa_cfg_set(c, ii, c->v[ih] * c->v[id], XA_FROM_DERIVED, "heads * dim_head");
    }
    const int64_t inner = (int64_t)c->v[ii], H = (int64_t)c->v[ih];
    if (inner % H)
        return xa_error(XATTN_ERR_SHAPE, "inner dim %lld (%s) is not divisible by heads %lld (%s)",
                        (long long)inner, c->how[ii], (long long)H, c->how[ih]);
    if (loading && c->from[id] == XA_FROM_DEFAULT) {
        xa_cfg_set(c, id, (double)(inner / H), XA_FROM_DERIVED, "inner_dim / heads");
    } else if (loading && inner / (int64_t)c->v[id] != H) {
        return xa_error(XATTN_ERR_SHAPE,
                        "%s: dim_head %lld (%s) does not fit heads %lld (%s) "
                        "and inner dim %lld (%s)",
                        FN_LOAD, (long long)c->v[id], c->how[id], (long long)H, c->how[ih],
                        (long long)inner, c->how[ii]);
    }
    return XATTN_OK;
}

static xattn_status diff_build(xa_mod *m, const xattn_safetensors *st, const char *prefix,
                               const xa_kv *opts, size_t n_opts)
{
    xa_cfg *c = &m->cfg;
    xattn_status s;
    if (st && ((s = diff_reject_extras(st, prefix)) ||
               (s = xa_cfg_bind_shapes(c, diff_table, D_N, st, prefix, "")) ||
               (s = xa_cfg_require_shapes(c, diff_table, D_N, st, prefix, ""))))
        return s;
    if ((s = xa_cfg_resolve(c, opts, n_opts, st, FN_LOAD))) return s;
    default_to(c, "cross_attention_dim", "query_dim");
    if ((s = diff_heads(c, st != NULL))) return s;
    default_to(c, "out_dim", "query_dim");
    const int ir = xa_cfg_find(c, "rescale_output_factor");
    if (c->v[ir] == 0)
        return xa_error(c->from[ir] == XA_FROM_META ? XATTN_ERR_FORMAT : XATTN_ERR_ARG,
                        "%s: rescale_output_factor is 0 (%s)", FN_LOAD, c->how[ir]);
    const int64_t qd = xa_cfg_int(c, "query_dim"), od = xa_cfg_int(c, "out_dim");
    if (xa_cfg_get(c, "residual_connection") != 0 && od != qd)
        return xa_error(XATTN_ERR_SHAPE,
                        "residual_connection needs out_dim (%lld, %s) == "
                        "query_dim (%lld)",
                        (long long)od, c->how[xa_cfg_find(c, "out_dim")], (long long)qd);
    return xa_params_add_table(&m->params, diff_table, D_N, c, "", NULL);
}

static xattn_status diff_bind(xa_mod *core)
{
    xattn_mha *m = (xattn_mha *)core;
    const xa_params *ps = &core->params;
    const xa_cfg *cf = &core->cfg;
    xattn_mha_config *c = &m->cfg;
    c->layout = XATTN_LAYOUT_DIFFUSERS;
    c->embed_dim = xa_cfg_int(cf, "query_dim");
    c->kdim = c->vdim = xa_cfg_int(cf, "cross_attention_dim");
    c->heads = xa_cfg_int(cf, "heads");
    c->inner_dim = xa_cfg_int(cf, "inner_dim");
    c->head_dim = c->inner_dim / c->heads;
    c->out_dim = xa_cfg_int(cf, "out_dim");
    m->wq = xa_param_w(ps, D_QW);
    m->wk = xa_param_w(ps, D_KW);
    m->wv = xa_param_w(ps, D_VW);
    m->bq = xa_param_data(ps, D_QB);
    m->bk = xa_param_data(ps, D_KB);
    m->bv = xa_param_data(ps, D_VB);
    m->wo = xa_param_w(ps, D_OW);
    m->bo = xa_param_data(ps, D_OB);
    m->bias_k = m->bias_v = NULL;
    c->has_in_bias = m->bq || m->bk || m->bv;
    c->has_out_bias = m->bo != NULL;
    c->add_bias_kv = c->add_zero_attn = 0;
    /* scale_qk=False: logits unscaled (diffusers then runs AttnProcessor with attn.scale = 1) */
    c->scale = xa_cfg_get(cf, "scale_qk") != 0 ? xa_head_scale(c->head_dim) : 1.0f;
    c->residual_connection = xa_cfg_get(cf, "residual_connection") != 0;
    c->rescale_output_factor = (float)xa_cfg_get(cf, "rescale_output_factor");
    return XATTN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* The kinds                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* in_proj_weight (packed) or q_proj_weight (separate) marks nn.MultiheadAttention; a block
 * inside another module (a transformer layer's self_attn.) is left out by the registry's scan. */
static int torch_claims(const xattn_safetensors *st, const char *prefix)
{
    return xa_has(st, prefix, "in_proj_weight") || xa_has(st, prefix, "q_proj_weight");
}

static xattn_status torch_forward_named(const xa_mod *core, const xa_run *r);
static xattn_status diff_forward_named(const xa_mod *core, const xa_run *r);
static xattn_status torch_backward_named(const xa_mod *core, const xa_run *r, xa_grad *g);
static xattn_status diff_backward_named(const xa_mod *core, const xa_run *r, xa_grad *g);

const xa_kind xa_kind_mha = {
    .name = "mha",
    .reference = "torch.nn.MultiheadAttention (batch_first=True)",
    .summary = "multi-head attention with packed or separate q/k/v projections",
    .fields = torch_fields,
    .n_fields = XA_N(torch_fields),
    .inputs = torch_inputs,
    .n_in = XA_N(torch_inputs),
    .outputs = torch_outputs,
    .n_out = XA_N(torch_outputs),
    .anchor = "out_proj.weight",
    .claims = torch_claims,
    .size = sizeof(xattn_mha),
    .build = torch_build,
    .bind = torch_bind,
    .forward = torch_forward_named,
    .backward = torch_backward_named,
    .stand_ins = torch_stand_ins,
    .n_stand_ins = XA_N(torch_stand_ins),
    .aliases = torch_aliases,
    .n_aliases = XA_N(torch_aliases),
    .brief = "embed_dim,heads,kdim,vdim,bias",
    .family = "multi-head",
    .state_dict = "in_proj_weight or q_proj_weight, k_proj_weight, v_proj_weight; "
                  "[in_proj_bias], out_proj.weight, [out_proj.bias], [bias_k, bias_v]",
};

const xa_kind xa_kind_attention = {
    .name = "attention",
    .reference = "diffusers Attention (AttnProcessor2_0)",
    .summary = "diffusers' attention block: to_q, to_k, to_v, to_out.0",
    .fields = diff_fields,
    .n_fields = XA_N(diff_fields),
    .inputs = diff_inputs,
    .n_in = XA_N(diff_inputs),
    .outputs = diff_outputs,
    .n_out = XA_N(diff_outputs),
    .anchor = "to_q.weight",
    .size = sizeof(xattn_mha),
    .build = diff_build,
    .bind = diff_bind,
    .forward = diff_forward_named,
    .backward = diff_backward_named,
    .stand_ins = diff_stand_ins,
    .n_stand_ins = XA_N(diff_stand_ins),
    .aliases = diff_aliases,
    .n_aliases = XA_N(diff_aliases),
    .brief = "query_dim,cross_attention_dim,heads,dim_head,inner_dim,out_dim,bias,out_bias",
    .family = "multi-head",
    .state_dict = "to_q.weight, to_k.weight, to_v.weight, [to_{q,k,v}.bias], to_out.0.weight, "
                  "[to_out.0.bias]",
};

/* ---------------------------------------------------------------------------------------- */
/* Typed API                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* The typed options as the kind's string options. */
static xattn_status opts_to_kv(const xattn_mha_opts *o, int torch, xa_kvbuf *b)
{
    memset(b, 0, sizeof *b);
    if (!o) return XATTN_OK;
    if (!xa_reserved_zero(o->reserved_))
        return xa_error(XATTN_ERR_ARG, "%s: opts->reserved_ must be zero", FN_LOAD);
    xa_kv_int(b, torch ? "num_heads" : "heads", o->heads);
    xa_kv_bool(b, "add_zero_attn", o->add_zero_attn);
    xa_kv_bool(b, "scale_qk", o->scale_qk);
    xa_kv_bool(b, "residual_connection", o->residual_connection);
    xa_kv_real(b, "rescale_output_factor", o->rescale_output_factor);
    return XATTN_OK;
}

xattn_status xattn_mha_load(const xattn_safetensors *st, const char *prefix,
                            const xattn_mha_opts *opts, xattn_mha **out)
{
    XA_LOAD_ARGS(st, out, FN_LOAD);
    if (!prefix) prefix = "";
    char pp[XA_IO_NAME_CAP];
    xa_io_printable(prefix, pp, sizeof pp);
    const int torch_names =
        xa_has(st, prefix, "in_proj_weight") || xa_has(st, prefix, "q_proj_weight");
    const int diff_names = xa_has(st, prefix, "to_q.weight");
    if (torch_names && diff_names)
        return xa_error(XATTN_ERR_FORMAT,
                        "ambiguous module: both '%sin_proj_weight'/'%sq_proj_weight' "
                        "(nn.MultiheadAttention) and '%sto_q.weight' (diffusers Attention) present",
                        pp, pp, pp);
    if (!torch_names && !diff_names)
        return xa_error(XATTN_ERR_NOT_FOUND,
                        "no attention module found: expected '%sin_proj_weight' or "
                        "'%sq_proj_weight' (nn.MultiheadAttention) or '%sto_q.weight' "
                        "(diffusers Attention)",
                        pp, pp, pp);
    xa_kvbuf kv;
    xattn_status s = opts_to_kv(opts, torch_names, &kv);
    if (s) return s;
    xa_mod *m;
    s = xa_mod_open(torch_names ? &xa_kind_mha : &xa_kind_attention, st, prefix, kv.kv, kv.n, &m);
    *out = s ? NULL : (xattn_mha *)m;
    return s;
}

void xattn_mha_free(xattn_mha *m) { xa_mod_free(m ? &m->core : NULL); }

void xattn_mha_get_config(const xattn_mha *m, xattn_mha_config *cfg)
{
    xa_copy_config(m ? &m->cfg : NULL, cfg, sizeof *cfg);
}

/* ---------------------------------------------------------------------------------------- */
/* Forward                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static xattn_status check_args(const xattn_mha *m, const xattn_mha_inputs *in,
                               const xattn_mha_outputs *out)
{
    if (!m) return xa_error(XATTN_ERR_ARG, "%s: module is NULL", FN_FWD);
    if (!in) return xa_error(XATTN_ERR_ARG, "%s: inputs is NULL", FN_FWD);
    if (!out || !out->out) return xa_error(XATTN_ERR_ARG, "%s: out is NULL", FN_FWD);
    if (!xa_reserved_zero(in->reserved_) || !xa_reserved_zero(out->reserved_))
        return xa_error(XATTN_ERR_ARG, "%s: reserved_ of the inputs and outputs must be zero",
                        FN_FWD);
    const xattn_mha_config *c = &m->cfg;
    if (in->attn_mask_cols < 0 ||
        (in->attn_mask_cols && !xa_op_sharded() && in->attn_mask_cols != in->J))
        return xa_error(XATTN_ERR_SHAPE, "%s: attn_mask_cols is %lld; the keys are J = %lld",
                        FN_FWD, (long long)in->attn_mask_cols, (long long)in->J);
    if (in->B <= 0 || in->I < xa_op_min_rows() || in->J < xa_op_min_rows())
        return xa_error(XATTN_ERR_ARG, "%s: sizes must be positive (B=%lld, I=%lld, J=%lld)",
                        FN_FWD, (long long)in->B, (long long)in->I, (long long)in->J);
    if (!in->query) return xa_error(XATTN_ERR_ARG, "%s: query is NULL", FN_FWD);
    if (!in->key) return xa_error(XATTN_ERR_ARG, "%s: key is NULL", FN_FWD);
    if (!in->value && c->kdim != c->vdim)
        return xa_error(XATTN_ERR_SHAPE, "%s: value is NULL (= key) but kdim %lld != vdim %lld",
                        FN_FWD, (long long)c->kdim, (long long)c->vdim);
    if (in->key_padding_mask && in->key_padding_mask_float)
        return xa_error(XATTN_ERR_ARG, "%s: give key_padding_mask as bool or as float, not both",
                        FN_FWD);
    if (in->attn_mask && in->attn_mask_float)
        return xa_error(XATTN_ERR_ARG, "%s: give attn_mask as bool or as float, not both", FN_FWD);
    if (in->attn_mask_per_head != 0 && in->attn_mask_per_head != 1)
        return xa_error(XATTN_ERR_ARG, "%s: attn_mask_per_head must be 0 or 1, got %d", FN_FWD,
                        in->attn_mask_per_head);
    if (in->attn_mask_per_head && !in->attn_mask && !in->attn_mask_float)
        return xa_error(XATTN_ERR_ARG, "%s: attn_mask_per_head is set but no attn_mask is given",
                        FN_FWD);
    return XATTN_OK;
}

/* The masks of one call as the fused attention takes them. */
typedef struct mask_plan {
    xa_mask_src src[2];
    int n_src;
    int in_keep[2];     /* source q feeds the keep mask (bool, or float holding -inf) */
    int64_t kB, kH, kI; /* keep mask (kB, kH, kI, Jx), or n_keep = 0 */
    int64_t bB, bH, bI; /* bias (bB, bH, bI, Jx) when copy_bias */
    int64_t n_keep, n_bias;
    int copy_bias;               /* the float masks are summed (or widened) into scratch */
    const xa_mask_src *bias_src; /* the one float mask read in place, or NULL */
} mask_plan;

static void plan_masks(const xattn_mha *m, const xattn_mha_inputs *in, int64_t Jx, mask_plan *p)
{
    const int64_t B = in->B, H = m->cfg.heads, I = in->I, J = in->J;
    const int keep_true = m->cfg.layout == XATTN_LAYOUT_DIFFUSERS;
    memset(p, 0, sizeof *p);
    if (in->key_padding_mask || in->key_padding_mask_float)
        p->src[p->n_src++] =
            (xa_mask_src){in->key_padding_mask, in->key_padding_mask_float, J, 0, 0, keep_true};
    if (in->attn_mask || in->attn_mask_float) {
        const int ph = in->attn_mask_per_head;
        p->src[p->n_src++] = (xa_mask_src){
            in->attn_mask, in->attn_mask_float, ph ? H * I * J : 0, ph ? I * J : 0, J, keep_true};
    }
    int need_keep = 0, n_float = 0;
    p->kB = p->kH = p->kI = p->bB = p->bH = p->bI = 1;
    for (int q = 0; q < p->n_src; q++) {
        const xa_mask_src *s = &p->src[q];
        if (s->f32) {
            n_float++;
            p->bias_src = s;
            const int64_t n = (s->sb ? B : 1) * (s->sh ? H : 1) * (s->si ? I : 1) * J;
            p->in_keep[q] = xa_op_has_neg_inf(s->f32, n);
        } else {
            p->in_keep[q] = 1;
        }
        need_keep |= p->in_keep[q];
        if (p->in_keep[q]) {
            if (s->sb) p->kB = B;
            if (s->sh) p->kH = H;
            if (s->si) p->kI = I;
        }
        if (s->f32) {
            if (s->sb) p->bB = B;
            if (s->sh) p->bH = H;
            if (s->si) p->bI = I;
        }
    }
    p->n_keep = need_keep ? p->kB * p->kH * p->kI * Jx : 0;
    /* the float masks are read in place, unless two must be summed or extra keys widen them */
    p->copy_bias = n_float >= 2 || (n_float == 1 && Jx > J);
    p->n_bias = p->copy_bias ? p->bB * p->bH * p->bI * Jx : 0;
    if (p->copy_bias) p->bias_src = NULL;
}

/* Fills the mask fields of the attention call from the plan (keep and bias in scratch). */
static void apply_masks(const mask_plan *p, int64_t J, int64_t Jx, uint8_t *keep, float *bias,
                        xa_attn *a)
{
    xa_mask_src ks[2];
    int nk = 0;
    for (int q = 0; q < p->n_src; q++)
        if (p->in_keep[q]) ks[nk++] = p->src[q];
    if (p->n_keep) {
        xa_op_mask_keep(ks, nk, p->kB, p->kH, p->kI, J, Jx, keep);
        a->mask = keep;
        a->mask_sb = p->kB > 1 ? p->kH * p->kI * Jx : 0;
        a->mask_sh = p->kH > 1 ? p->kI * Jx : 0;
        a->mask_si = p->kI > 1 ? Jx : 0;
    }
    if (p->copy_bias) {
        xa_op_mask_bias(p->src, p->n_src, p->bB, p->bH, p->bI, J, Jx, bias);
        a->bias = bias;
        a->bias_sb = p->bB > 1 ? p->bH * p->bI * Jx : 0;
        a->bias_sh = p->bH > 1 ? p->bI * Jx : 0;
        a->bias_si = p->bI > 1 ? Jx : 0;
    } else if (p->bias_src) {
        a->bias = p->bias_src->f32;
        a->bias_sb = p->bias_src->sb;
        a->bias_sh = p->bias_src->sh;
        a->bias_si = p->bias_src->si;
    }
    a->bias_sj = 1;
}

/* The masks' (and maps') key columns. In a sharded run with an attn_mask or the attention maps
 * asked (maps: each rank holds its query rows and every rank's key columns) they are every
 * rank's keys: *pin is in with J = J_total and the key padding mask gathered into those columns
 * (*kpm, freed by the caller), and *global is 1. Elsewhere *pin is in. Collective in a sharded
 * run. */
static xattn_status mask_columns(const xattn_mha_inputs *in, int maps, xattn_mha_inputs *pin,
                                 void **kpm, int *global)
{
    *pin = *in, *kpm = NULL, *global = 0;
    if (!xa_op_sharded()) return XATTN_OK;
    int64_t Jt, Jk;
    int spans, any_maps;
    xattn_status s = xa_op_shard_keys("attn_mask", in->attn_mask || in->attn_mask_float,
                                      in->attn_mask_cols, in->I, in->J, &Jt, &spans);
    if (!s) s = xa_op_shard_keys("attention maps", maps, 0, 1, in->J, &Jk, &any_maps);
    if (s || (!spans && !any_maps)) return s;
    int kb, kf;
    /* the key padding mask's type, agreed on (a rank without keys may have none) */
    if ((s = xa_op_shard_keys("bool key_padding_mask", in->key_padding_mask != NULL, 0, in->J,
                              in->J, &Jk, &kb)) ||
        (s = xa_op_shard_keys("float key_padding_mask", in->key_padding_mask_float != NULL, 0,
                              in->J, in->J, &Jk, &kf)))
        return s;
    if (kb && kf)
        return xa_error(XATTN_ERR_ARG,
                        "%s: key_padding_mask is bool on some ranks and float on "
                        "others",
                        FN_FWD);
    *global = 1;
    pin->J = Jt;
    if (!kb && !kf) return XATTN_OK;
    const size_t esz = kf ? sizeof(float) : 1;
    *kpm = malloc(esz * (size_t)(in->B * Jt) + 1);
    const void *src = kf ? (const void *)in->key_padding_mask_float : in->key_padding_mask;
    if ((s = xa_op_gather_keys(src, in->B, in->J, esz, *kpm, Jt))) return s;
    pin->key_padding_mask = kf ? NULL : *kpm;
    pin->key_padding_mask_float = kf ? *kpm : NULL;
    return XATTN_OK;
}

/* Projects the keys and values into kp, vp (B, Jx, inner); the keys nn.MultiheadAttention
 * appends (bias_k / bias_v, then a zero key) fill rows J .. Jx-1 of each batch item. */
static xattn_status project_kv(const xattn_mha *m, const xattn_mha_inputs *in, int64_t Jx,
                               float *kp, float *vp)
{
    const xattn_mha_config *c = &m->cfg;
    const float *value = in->value ? in->value : in->key;
    const int64_t B = in->B, J = in->J, inner = c->inner_dim;
    xattn_status s;
    if (Jx == J)
        return (s = xa_op_linear_w(in->key, B * J, c->kdim, m->wk, m->bk, inner, kp, 0))
                   ? s
                   : xa_op_linear_w(value, B * J, c->vdim, m->wv, m->bv, inner, vp, 0);
    for (int64_t b = 0; b < B; b++) {
        if ((s = xa_op_linear_w(in->key + b * J * c->kdim, J, c->kdim, m->wk, m->bk, inner,
                                kp + b * Jx * inner, 0)) ||
            (s = xa_op_linear_w(value + b * J * c->vdim, J, c->vdim, m->wv, m->bv, inner,
                                vp + b * Jx * inner, 0)))
            return s;
    }
    xa_op_append_rows(kp, B, J, Jx, inner, m->bias_k);
    xa_op_append_rows(vp, B, J, Jx, inner, m->bias_v);
    return XATTN_OK;
}

/* The fused attention over the projections: heads read in place, (B, N, H*dh) with strides
 * (N*inner, dh, inner); probabilities (B, H, I, Jx) into probs when not NULL. */
static void attn_call(const xattn_mha *m, const xattn_mha_inputs *in, int64_t Jx, const float *qp,
                      const float *kp, const float *vp, float *op, float *probs, xa_attn *a)
{
    const int64_t I = in->I, H = m->cfg.heads, inner = m->cfg.inner_dim;
    xa_op_attn_heads(a, in->B, H, I, Jx, m->cfg.head_dim, qp, inner, kp, vp, inner, op, inner);
    a->causal = in->is_causal ? 1 : 0;
    a->fill = XATTN_FILL_NEG_INF;
    a->scale = m->cfg.scale;
    a->probs = probs;
    a->p_sb = H * I * Jx;
    a->p_sh = I * Jx;
    a->p_si = Jx;
    a->p_sj = 1;
    a->fn = FN_FWD;
}

/* out = to_out(op) [+ query] [/ rescale_output_factor] (diffusers' order). */
static xattn_status project_out(const xattn_mha *m, const xattn_mha_inputs *in, const float *op,
                                float *out)
{
    const xattn_mha_config *c = &m->cfg;
    const int64_t M = in->B * in->I;
    xattn_status s;
    if (c->residual_connection) {
        memcpy(out, in->query, sizeof(float) * (size_t)(M * c->out_dim));
        s = xa_op_linear_w(op, M, c->inner_dim, m->wo, m->bo, c->out_dim, out, 1);
    } else {
        s = xa_op_linear_w(op, M, c->inner_dim, m->wo, m->bo, c->out_dim, out, 0);
    }
    if (!s && c->rescale_output_factor != 1.0f)
        xa_op_scale(out, 1.0f / c->rescale_output_factor, M * c->out_dim);
    return s;
}

xattn_status xa_mha_run(const xattn_mha *m, const xattn_mha_inputs *in,
                        const xattn_mha_outputs *out)
{
    xattn_status s = check_args(m, in, out);
    if (s) return s;
    const xattn_mha_config *c = &m->cfg;
    const int64_t B = in->B, I = in->I, J = in->J, H = c->heads, inner = c->inner_dim;
    /* keys after add_bias_kv (bias_k / bias_v appended) and add_zero_attn (a zero key/value) */
    const int64_t Jx = J + c->add_bias_kv + c->add_zero_attn;
    int64_t nq, nk, nbhij = 0, t;
    if (xa_mul_ok(B, I, &t) || xa_mul_ok(t, inner, &nq) || xa_mul_ok(B, Jx, &t) ||
        xa_mul_ok(t, inner, &nk) || xa_mul_ok(B * I, H, &t) || xa_mul_ok(t, Jx, &nbhij) ||
        xa_mul_ok(B * I, c->out_dim, &t) || xa_mul_ok(B * I, c->embed_dim, &t) ||
        xa_mul_ok(B * J, XA_MAX(c->kdim, c->vdim), &t) || nbhij > (INT64_MAX / 8))
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow (B=%lld, I=%lld, J=%lld)", FN_FWD,
                        (long long)B, (long long)I, (long long)J);
    xattn_mha_inputs pin;
    void *kpm;
    int global;
    if ((s = mask_columns(in, out->attn || out->attn_per_head, &pin, &kpm, &global))) {
        free(kpm);
        return s;
    }
    const int64_t Jm = global ? pin.J : Jx; /* the masks' and maps' columns */
    mask_plan mp;
    plan_masks(m, &pin, Jm, &mp);
    /* probabilities in scratch when only the average is asked */
    if (global) nbhij = B * H * I * Jm;
    const int64_t n_probs = out->attn && !out->attn_per_head ? nbhij : 0;
    if ((2.0 * (double)nq + 2.0 * (double)nk + (double)n_probs + (double)mp.n_bias + 64.0) * 4.0 +
            (double)mp.n_keep >
        (double)(SIZE_MAX / 2)) {
        free(kpm);
        return xa_error(XATTN_ERR_NOMEM, "%s: scratch for B=%lld, I=%lld, J=%lld overflows", FN_FWD,
                        (long long)B, (long long)I, (long long)J);
    }
    const size_t off_k = ((size_t)nq + 15) & ~(size_t)15;
    const size_t off_v = off_k + (((size_t)nk + 15) & ~(size_t)15);
    const size_t off_o = off_v + (((size_t)nk + 15) & ~(size_t)15);
    const size_t off_p = off_o + (((size_t)nq + 15) & ~(size_t)15);
    const size_t off_b = off_p + (((size_t)n_probs + 15) & ~(size_t)15);
    const size_t n_f = off_b + (size_t)mp.n_bias;
    float *scratch = xa_alloc(n_f * sizeof(float) + (size_t)mp.n_keep);
    if (!scratch) {
        free(kpm);
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory for scratch", FN_FWD);
    }
    float *qp = scratch, *kp = scratch + off_k, *vp = scratch + off_v, *op = scratch + off_o;
    float *probs = out->attn_per_head ? out->attn_per_head : n_probs ? scratch + off_p : NULL;

    xa_attn a;
    memset(&a, 0, sizeof a);
    apply_masks(&mp, pin.J, Jm, (uint8_t *)(scratch + n_f), scratch + off_b, &a);
    attn_call(m, in, Jx, qp, kp, vp, op, probs, &a);
    a.keys_global = global;
    if (global) /* the maps hold every rank's key columns */
        a.p_sb = H * I * Jm, a.p_sh = I * Jm, a.p_si = Jm;
    if (!(s = xa_op_linear_w(in->query, B * I, c->embed_dim, m->wq, m->bq, inner, qp, 0)) &&
        !(s = project_kv(m, in, Jx, kp, vp)) && !(s = xa_op_attention(&a)) &&
        !(s = project_out(m, in, op, out->out))) {
        if (out->attn) xa_op_mean(probs, B, H, I * Jm, out->attn);
        xa_clear_error();
    }
    xa_free(scratch);
    free(kpm); /* a float key padding mask may be the bias read in place */
    return s;
}

xattn_status xattn_mha_forward(xattn_ctx *ctx, const xattn_mha *m, const xattn_mha_inputs *in,
                               const xattn_mha_outputs *out)
{
    const xattn_ctx *prev = xa_ctx_enter(ctx);
    xattn_status s = xa_mha_run(m, in, out);
    xa_ctx_leave(prev);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Forward by named arrays                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Input i of r as a bool or a float mask (by its dtype), or neither when not given. */
static void named_mask(const xa_run *r, int i, const uint8_t **u8, const float **f32)
{
    if (!r->in[i]) return;
    if (r->in_dtype[i] == XATTN_F32)
        *f32 = r->in[i];
    else
        *u8 = r->in[i];
}

static void torch_named_inputs(const xa_run *r, xattn_mha_inputs *in)
{
    memset(in, 0, sizeof *in);
    in->B = xa_run_sym(r, "B");
    in->I = xa_run_sym(r, "I");
    in->J = xa_run_sym(r, "J");
    in->query = r->in[0];
    in->key = r->in[1]; /* the stand-ins (query, key) when not given */
    in->value = r->in[2];
    named_mask(r, 3, &in->key_padding_mask, &in->key_padding_mask_float);
    named_mask(r, 4, &in->attn_mask, &in->attn_mask_float);
    in->attn_mask_per_head = r->in[4] && r->in_ndim[4] == 3;
    in->attn_mask_cols = r->in[4] ? r->in_shape[4][r->in_ndim[4] - 1] : 0;
    in->is_causal = r->in[5] && *(const uint8_t *)r->in[5];
}

static void diff_named_inputs(const xa_run *r, xattn_mha_inputs *in)
{
    memset(in, 0, sizeof *in);
    in->B = xa_run_sym(r, "B");
    in->I = xa_run_sym(r, "I");
    in->J = xa_run_sym(r, "J");
    in->query = r->in[0];
    in->key = r->in[1]; /* hidden_states when encoder_hidden_states is not given */
    named_mask(r, 2, &in->key_padding_mask, &in->key_padding_mask_float);
}

static xattn_status torch_forward_named(const xa_mod *core, const xa_run *r)
{
    const xattn_mha *m = (const xattn_mha *)core;
    xattn_mha_inputs in;
    torch_named_inputs(r, &in);
    xattn_mha_outputs o;
    memset(&o, 0, sizeof o);
    o.out = r->out[0];
    o.attn = r->out[1];
    o.attn_per_head = r->out[2];
    return xa_mha_run(m, &in, &o);
}

static xattn_status diff_forward_named(const xa_mod *core, const xa_run *r)
{
    const xattn_mha *m = (const xattn_mha *)core;
    xattn_mha_inputs in;
    diff_named_inputs(r, &in);
    xattn_mha_outputs o;
    memset(&o, 0, sizeof o);
    o.out = r->out[0];
    o.attn_per_head = r->out[1];
    return xa_mha_run(m, &in, &o);
}

/* ---------------------------------------------------------------------------------------- */
/* Backward                                                                                 */
/* ---------------------------------------------------------------------------------------- */
/*
 * The forward runs once, keeping the projections q, k, v (with the appended bias_k / bias_v
 * and zero rows), the attention output and its log-sum-exp ((2 inner per query token + 2 inner
 * per key + heads per query) floats); then out's gradient goes back through the output
 * projection, the fused attention backward (the masks as in the forward; the probabilities
 * recomputed from the log-sum-exp), the appended keys (bias_k, bias_v summed over the batch) and
 * the input projections. An input that stands in for another (the keys and values of
 * self-attention are the query) gets the sum of the gradients of every role it plays.
 */

/* The gradient pointers of the weights, by role (NULL: not wanted or absent). */
typedef struct mha_dw {
    float *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo, *bias_k, *bias_v;
} mha_dw;

static float *dpi(const xa_grad *g, int i) { return g->dparam ? g->dparam[i] : NULL; }

static void torch_dw(const xattn_mha *m, const xa_grad *g, mha_dw *d)
{
    const int64_t E = m->cfg.embed_dim;
    float *inw = m->core.params.p[T_INW].data ? dpi(g, T_INW) : NULL, *inb = dpi(g, T_INB);
    memset(d, 0, sizeof *d);
    d->wq = inw ? inw : dpi(g, T_QW);
    d->wk = inw ? inw + E * E : dpi(g, T_KW);
    d->wv = inw ? inw + 2 * E * E : dpi(g, T_VW);
    if (m->cfg.has_in_bias && inb) d->bq = inb, d->bk = inb + E, d->bv = inb + 2 * E;
    d->wo = dpi(g, T_OW);
    d->bo = m->cfg.has_out_bias ? dpi(g, T_OB) : NULL;
    if (m->cfg.add_bias_kv) d->bias_k = dpi(g, T_BK), d->bias_v = dpi(g, T_BV);
}

static void diff_dw(const xattn_mha *m, const xa_grad *g, mha_dw *d)
{
    memset(d, 0, sizeof *d);
    d->wq = dpi(g, D_QW), d->wk = dpi(g, D_KW), d->wv = dpi(g, D_VW), d->wo = dpi(g, D_OW);
    if (m->bq) d->bq = dpi(g, D_QB);
    if (m->bk) d->bk = dpi(g, D_KB);
    if (m->bv) d->bv = dpi(g, D_VB);
    if (m->bo) d->bo = dpi(g, D_OB);
}

/* Rows [0, J) of each batch item of x (B, Jx, n) into y (B * J, n). */
static void first_rows(const float *x, int64_t B, int64_t J, int64_t Jx, int64_t n, float *y)
{
    for (int64_t b = 0; b < B; b++)
        memcpy(y + b * J * n, x + b * Jx * n, sizeof(float) * (size_t)(J * n));
}

static xattn_status mha_backward(const xattn_mha *m, const xattn_mha_inputs *in, const xa_run *r,
                                 xa_grad *g, const mha_dw *dw, int i_query, int i_key, int i_value)
{
    const xattn_mha_config *c = &m->cfg;
    if (g->dout[1] || (i_value >= 0 && g->dout[2]))
        return xa_error(XATTN_ERR_UNSUPPORTED, "the gradient of the attention weights is not "
                                               "supported (only of out)");
    xattn_mha_outputs o;
    memset(&o, 0, sizeof o);
    o.out = r->out[0];
    xattn_status s = check_args(m, in, &o);
    if (s) return s;
    const int64_t B = in->B, I = in->I, J = in->J, H = c->heads, inner = c->inner_dim;
    const int64_t Jx = J + c->add_bias_kv + c->add_zero_attn, E = c->embed_dim;
    const float *value = in->value ? in->value : in->key;
    const double nf = 4.0 * (double)(B * I * inner) + 4.0 * (double)(B * Jx * inner) +
                      (double)(B * I * H) + (double)(B * I * c->out_dim) +
                      2.0 * (double)(B * J * inner) + (double)(B * I * E) +
                      (double)(B * J * (c->kdim + c->vdim)) + 64.0 * 16;
    xattn_mha_inputs pin;
    void *kpm;
    int global;
    if ((s = mask_columns(in, 0, &pin, &kpm, &global))) {
        free(kpm);
        return s;
    }
    const int64_t Jm = global ? pin.J : Jx; /* the masks' columns */
    mask_plan mp;
    plan_masks(m, &pin, Jm, &mp);
    float *mem =
        (nf + (double)mp.n_bias) * 4.0 + (double)mp.n_keep > 1e12
            ? NULL
            : xa_alloc(sizeof(float) * (size_t)(nf + (double)mp.n_bias) + (size_t)mp.n_keep);
    if (!mem) {
        free(kpm);
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory for the backward", FN_FWD);
    }
    float *q = mem;
#define CARVE(n) (q += ((n) + 15) / 16 * 16, q - ((n) + 15) / 16 * 16)
    float *qp = CARVE(B * I * inner), *kp = CARVE(B * Jx * inner), *vp = CARVE(B * Jx * inner);
    float *op = CARVE(B * I * inner), *lse = CARVE(B * H * I), *d = CARVE(B * I * c->out_dim);
    float *dop = CARVE(B * I * inner), *dqp = CARVE(B * I * inner), *dkp = CARVE(B * Jx * inner);
    float *dvp = CARVE(B * Jx * inner), *rows = CARVE(B * J * inner);
    float *dq_in = CARVE(B * I * E), *dk_in = CARVE(B * J * c->kdim),
          *dv_in = CARVE(B * J * c->vdim);
    float *bias = CARVE(mp.n_bias);
#undef CARVE
    /* forward, keeping what the backward needs */
    xa_attn a;
    memset(&a, 0, sizeof a);
    apply_masks(&mp, pin.J, Jm, (uint8_t *)q, bias, &a);
    attn_call(m, in, Jx, qp, kp, vp, op, NULL, &a);
    a.keys_global = global;
    a.lse = lse;
    if (!(s = xa_op_linear_w(in->query, B * I, E, m->wq, m->bq, inner, qp, 0)) &&
        !(s = project_kv(m, in, Jx, kp, vp)) && !(s = xa_op_attention(&a)))
        s = project_out(m, in, op, o.out);
    if (!s) s = xa_grad_outputs(g, r);
    /* out = (op Wo^T + bo [+ query]) / rescale */
    if (!s) {
        if (g->dout[0])
            memcpy(d, g->dout[0], sizeof(float) * (size_t)(B * I * c->out_dim));
        else
            memset(d, 0, sizeof(float) * (size_t)(B * I * c->out_dim));
        if (c->rescale_output_factor != 1.0f)
            xa_op_scale(d, 1.0f / c->rescale_output_factor, B * I * c->out_dim);
        s = xa_op_linear_backward(op, B * I, inner, xa_wt_f(m->wo), c->out_dim, d, dop, dw->wo,
                                  dw->bo, 0);
    }
    if (!s) { /* the attention */
        xa_attn_grad ag;
        memset(&ag, 0, sizeof ag);
        const int64_t dh = c->head_dim;
        ag.dout = dop, ag.do_sb = I * inner, ag.do_sh = dh, ag.do_si = inner;
        ag.lse = lse;
        ag.dq = dqp, ag.dq_sb = I * inner, ag.dq_sh = dh, ag.dq_si = inner;
        ag.dk = dkp, ag.dk_sb = Jx * inner, ag.dk_sh = dh, ag.dk_sj = inner;
        ag.dv = dvp, ag.dv_sb = Jx * inner, ag.dv_sh = dh, ag.dv_sj = inner;
        a.lse = NULL;
        s = xa_op_attention_backward(&a, &ag);
    }
    if (!s && c->add_bias_kv) { /* the appended key and value: row J, summed over the batch */
        if (dw->bias_k) xa_op_sum_rows(dkp + J * inner, B, Jx * inner, inner, dw->bias_k);
        if (dw->bias_v) xa_op_sum_rows(dvp + J * inner, B, Jx * inner, inner, dw->bias_v);
    }
    /* the input projections */
    if (!s)
        s = xa_op_linear_backward(in->query, B * I, E, xa_wt_f(m->wq), inner, dqp, dq_in, dw->wq,
                                  dw->bq, 0);
    const float *dk_rows = dkp, *dv_rows = dvp;
    if (!s && Jx != J) {
        first_rows(dkp, B, J, Jx, inner, rows);
        dk_rows = rows;
    }
    if (!s)
        s = xa_op_linear_backward(in->key, B * J, c->kdim, xa_wt_f(m->wk), inner, dk_rows, dk_in,
                                  dw->wk, dw->bk, 0);
    if (!s && Jx != J) {
        first_rows(dvp, B, J, Jx, inner, rows);
        dv_rows = rows;
    }
    if (!s)
        s = xa_op_linear_backward(value, B * J, c->vdim, xa_wt_f(m->wv), inner, dv_rows, dv_in,
                                  dw->wv, dw->bv, 0);
    if (!s && c->residual_connection) xa_op_add(dq_in, d, B * I * E);
    /* every input gets the gradients of the roles it plays (self-attention: all three) */
    if (!s) {
        const float *role_ptr[3] = {in->query, in->key, value};
        const float *role_grad[3] = {dq_in, dk_in, dv_in};
        const int64_t role_n[3] = {B * I * E, B * J * c->kdim, B * J * c->vdim};
        const int idx[3] = {i_query, i_key, i_value};
        for (int k = 0; k < 3; k++) {
            if (idx[k] < 0 || !g->din[idx[k]]) continue;
            float *dst = g->din[idx[k]];
            int first = 1;
            for (int role = 0; role < 3; role++) {
                if (role_ptr[role] != r->in[idx[k]]) continue;
                if (role_n[role] != role_n[k]) continue; /* another shape: not this input */
                if (first)
                    memcpy(dst, role_grad[role], sizeof(float) * (size_t)role_n[role]);
                else
                    xa_op_add(dst, role_grad[role], role_n[role]);
                first = 0;
            }
        }
    }
    xa_free(mem);
    free(kpm); /* a float key padding mask may be the bias read in place */
    return s;
}

static xattn_status torch_backward_named(const xa_mod *core, const xa_run *r, xa_grad *g)
{
    const xattn_mha *m = (const xattn_mha *)core;
    xattn_mha_inputs in;
    torch_named_inputs(r, &in);
    mha_dw dw;
    torch_dw(m, g, &dw);
    return mha_backward(m, &in, r, g, &dw, 0, 1, 2);
}

static xattn_status diff_backward_named(const xa_mod *core, const xa_run *r, xa_grad *g)
{
    const xattn_mha *m = (const xattn_mha *)core;
    xattn_mha_inputs in;
    diff_named_inputs(r, &in);
    mha_dw dw;
    diff_dw(m, g, &dw);
    return mha_backward(m, &in, r, g, &dw, 0, 1, -1);
}
