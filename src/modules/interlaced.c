/*
 * Interlaced two-stream cross-attention decoder (2D-3D MIT, ICCV 2023): the InterlanceDecoder of
 * jimmy15923/mit models/sem_transformer.py, loaded by its state_dict names.
 *
 * Per block (SkipClsDecoderBlock), with q the stream being updated and v the other stream:
 *   q += proj(SelfAttn(LN1 q))                     qkv (3D, D) [+ bias], reshape (3, H, dh)
 *   q += proj(Attn(q_map LN_q q, k_map LN_v v, v_map LN_v v))   keys/values from token n_cls on
 *   q += fc2(GELU(fc1(LN2 q)))                     timm Mlp, GELU exact (erf)
 * Layer L updates x (voxel) when L is even and context (view) when L is odd (reference order),
 * or the other way round with first = context.
 *
 * Loading: blocks.N.* counted, one parameter table per block under its stem; dim, depth and
 * the MLP width from the shapes, qkv_bias from which tensors exist, heads, n_cls, first and
 * qk_scale from options, __metadata__ or the reference's defaults. The reference has no
 * initialisation of its own (no _init_weights): nn.Linear and nn.LayerNorm defaults.
 *
 * forward: the two streams are copied into out / context_out and updated in place. Output
 * projections and fc2 accumulate into the stream; attention reads heads in place with strides;
 * the skipped class tokens are excluded by pointing the key/value base at token n_cls (no
 * copies). Logits, when asked for, are computed per (b, h) over all keys.
 */
#include "core/registry.h"
#include "io/io_internal.h"
#include "kernels/op_interlaced.h"
#include "kernels/ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FN_LOAD      "xattn_interlaced_load"
#define FN_FWD       "xattn_interlaced_forward"
#define IL_MAX_DEPTH 100000

/* the stream layer 0 updates (voxel and view: the reference's names of x and context) */
static const char *const FIRST[] = {"x", "context", "voxel", "view", NULL};

/* InterlanceDecoder(embed_dim=384, depth=4, num_classes=20, num_heads=6, mlp_ratio=0.2,
 * qkv_bias=False, qk_scale=None) and the direction of its forward */
enum {
    F_DIM,
    F_DEPTH,
    F_NCLS,
    F_HEADS,
    F_RATIO,
    F_QKV_BIAS,
    F_QK_SCALE,
    F_FIRST,
    F_HIDDEN,
    F_XL,
    F_CL,
    F_X0,
    F_C0,
    F_N
};
static const xa_field fields[F_N] = {
    [F_DIM] = {"embed_dim", XA_T_INT, XA_F_SHAPE, 384, 1, 1e15, NULL, NULL,
               "width of both streams"},
    [F_DEPTH] = {"depth", XA_T_INT, XA_F_SHAPE, 4, 1, IL_MAX_DEPTH, NULL, NULL,
                 "decoder blocks (blocks.N.*)"},
    [F_NCLS] = {"num_classes", XA_T_INT, XA_F_TRACELESS, 20, 0, 1e15, NULL, "n_cls|num_classes",
                "class tokens at the start of each stream, skipped as keys and values"},
    [F_HEADS] = {"num_heads", XA_T_INT, XA_F_TRACELESS, 6, 1, 1e15, NULL, "heads|num_heads",
                 "attention heads"},
    [F_RATIO] = {"mlp_ratio", XA_T_REAL, XA_F_NOMETA, 0.2, 1e-9, 1e9, NULL, NULL,
                 "MLP width int(embed_dim * mlp_ratio)"},
    [F_QKV_BIAS] = {"qkv_bias", XA_T_BOOL, XA_F_PRESENCE, 0, 0, 1, NULL, NULL,
                    "biases of self_attn.qkv and attn.{q,k,v}_map"},
    [F_QK_SCALE] = {"qk_scale", XA_T_REAL, XA_F_OPTIONAL | XA_F_TRACELESS, 0, 0, 1e300, NULL, NULL,
                    "attention scale (None or 0: head_dim ** -0.5)"},
    [F_FIRST] = {"first", XA_T_ENUM, XA_F_TRACELESS, 0, 0, 0, FIRST, NULL,
                 "the stream layer 0 updates: x (the reference's voxel) or context (view)"},
    [F_HIDDEN] = {"mlp_hidden", XA_T_INT, XA_F_SHAPE | XA_F_DERIVED | XA_F_NOMETA, 0, 1, 1e15, NULL,
                  NULL, "MLP width"},
    [F_XL] = {"x_layers", XA_T_INT, XA_F_DERIVED | XA_F_NOMETA, 0, 0, 1e15, NULL, NULL,
              "layers where x queries the context"},
    [F_CL] = {"context_layers", XA_T_INT, XA_F_DERIVED | XA_F_NOMETA, 0, 0, 1e15, NULL, NULL,
              "layers where the context queries x"},
    [F_X0] = {"x_layer0", XA_T_INT, XA_F_DERIVED | XA_F_NOMETA, 0, 0, 1, NULL, NULL,
              "the first layer where x queries (0 or 1)"},
    [F_C0] = {"context_layer0", XA_T_INT, XA_F_DERIVED | XA_F_NOMETA, 0, 0, 1, NULL, NULL,
              "the first layer where the context queries (0 or 1)"},
};

/* One SkipClsDecoderBlock in state_dict order: nn.LayerNorm (ones, zeros), nn.Linear. */
enum {
    P_N1W,
    P_N1B,
    P_QKVW,
    P_QKVB,
    P_SPW,
    P_SPB,
    P_NQW,
    P_NQB,
    P_NVW,
    P_NVB,
    P_QMW,
    P_QMB,
    P_KMW,
    P_KMB,
    P_VMW,
    P_VMB,
    P_CPW,
    P_CPB,
    P_N2W,
    P_N2B,
    P_F1W,
    P_F1B,
    P_F2W,
    P_F2B,
    P_N
};
#define IL_W "a SkipClsDecoderBlock weight"
#define IL_B "qkv_bias=True: blocks.0 has this bias"
static const xa_pspec table[P_N] = {
    {"norm1.weight", "embed_dim", NULL, 0, XA_INIT_ONES, NULL, IL_W},
    {"norm1.bias", "embed_dim", NULL, 0, XA_INIT_ZEROS, NULL, IL_W},
    {"self_attn.qkv.weight", "3*embed_dim,embed_dim", NULL, 0, XA_INIT_LINEAR, NULL, IL_W},
    {"self_attn.qkv.bias", "3*embed_dim", "qkv_bias", 0, XA_INIT_BIAS, "embed_dim", IL_B},
    {"self_attn.proj.weight", "embed_dim,embed_dim", NULL, 0, XA_INIT_LINEAR, NULL, IL_W},
    {"self_attn.proj.bias", "embed_dim", NULL, 0, XA_INIT_BIAS, "embed_dim", IL_W},
    {"norm_q.weight", "embed_dim", NULL, 0, XA_INIT_ONES, NULL, IL_W},
    {"norm_q.bias", "embed_dim", NULL, 0, XA_INIT_ZEROS, NULL, IL_W},
    {"norm_v.weight", "embed_dim", NULL, 0, XA_INIT_ONES, NULL, IL_W},
    {"norm_v.bias", "embed_dim", NULL, 0, XA_INIT_ZEROS, NULL, IL_W},
    {"attn.q_map.weight", "embed_dim,embed_dim", NULL, 0, XA_INIT_LINEAR, NULL, IL_W},
    {"attn.q_map.bias", "embed_dim", "qkv_bias", 0, XA_INIT_BIAS, "embed_dim", IL_B},
    {"attn.k_map.weight", "embed_dim,embed_dim", NULL, 0, XA_INIT_LINEAR, NULL, IL_W},
    {"attn.k_map.bias", "embed_dim", "qkv_bias", 0, XA_INIT_BIAS, "embed_dim", IL_B},
    {"attn.v_map.weight", "embed_dim,embed_dim", NULL, 0, XA_INIT_LINEAR, NULL, IL_W},
    {"attn.v_map.bias", "embed_dim", "qkv_bias", 0, XA_INIT_BIAS, "embed_dim", IL_B},
    {"attn.proj.weight", "embed_dim,embed_dim", NULL, 0, XA_INIT_LINEAR, NULL, IL_W},
    {"attn.proj.bias", "embed_dim", NULL, 0, XA_INIT_BIAS, "embed_dim", IL_W},
    {"norm2.weight", "embed_dim", NULL, 0, XA_INIT_ONES, NULL, IL_W},
    {"norm2.bias", "embed_dim", NULL, 0, XA_INIT_ZEROS, NULL, IL_W},
    {"mlp.fc1.weight", "mlp_hidden,embed_dim", NULL, 0, XA_INIT_LINEAR, NULL,
     "the MLP of the decoder block"},
    {"mlp.fc1.bias", "mlp_hidden", NULL, 0, XA_INIT_BIAS, "embed_dim", IL_W},
    {"mlp.fc2.weight", "embed_dim,mlp_hidden", NULL, 0, XA_INIT_LINEAR, NULL, IL_W},
    {"mlp.fc2.bias", "embed_dim", NULL, 0, XA_INIT_BIAS, "mlp_hidden", IL_W},
};

static const xa_io inputs[] = {
    {"x", "B,I,embed_dim", 0, "the first stream (the reference's voxel)"},
    {"context", "B,J,embed_dim", 0, "the second stream (the reference's view)"},
};
static const xa_io outputs[] = {
    {"out", "B,I,embed_dim", 0, "x after the decoder"},
    {"context_out", "B,J,embed_dim", 0, "the context after the decoder"},
    {"attn_weights_x", "x_layers,B,num_heads,I,J", XA_IO_OPT,
     "pre-softmax cross-attention logits (all keys) of the layers where x queries, in order"},
    {"attn_weights_context", "context_layers,B,num_heads,J,I", XA_IO_OPT,
     "pre-softmax cross-attention logits (all keys) of the layers where the context queries"},
};
/* the logits are saved one file per layer, numbered as the reference's list */
static const char *const out_parts[] = {NULL, NULL, "attn_weights_{x_layer0+2*k}",
                                        "attn_weights_{context_layer0+2*k}"};
/* the flags of the hand-written runner this kind's command line replaced */
static const xa_alias aliases[] = {{"heads", "num_heads", NULL}, {"n_cls", "num_classes", NULL}};

struct xattn_interlaced {
    xa_mod core;
    xattn_interlaced_config cfg;
};

/* ---------------------------------------------------------------------------------------- */
/* Loading                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static xattn_status bind_file(xa_cfg *c, const xattn_safetensors *st, const char *prefix)
{
    int64_t L;
    xattn_status s = xa_count_layers(st, prefix, "blocks.", "norm1.weight", IL_MAX_DEPTH, &L);
    if (s) return s;
    char pp[XA_IO_NAME_CAP];
    xa_io_printable(prefix, pp, sizeof pp);
    if (L == 0)
        return xa_error(XATTN_ERR_NOT_FOUND,
                        "not an interlaced decoder: tensor '%sblocks.0.norm1.weight' is missing",
                        pp);
    xa_cfg_set(c, F_DEPTH, (double)L, XA_FROM_SHAPE, "count of '%sblocks.N.*'", pp);
    return xa_cfg_bind_shapes(c, table, P_N, st, prefix, "blocks.0.");
}

/* The MLP width against mlp_ratio (int(embed_dim * mlp_ratio) as the reference), the head
 * split, and the layers each stream queries in. */
static xattn_status derive(xa_cfg *c, const xattn_safetensors *st)
{
    const int64_t D = (int64_t)c->v[F_DIM], H = (int64_t)c->v[F_HEADS];
    if (D % H)
        return xa_error(XATTN_ERR_SHAPE,
                        "%s: embed_dim %lld (from the %s) is not divisible by "
                        "heads %lld",
                        FN_LOAD, (long long)D, c->how[F_DIM], (long long)H);
    const int64_t from_ratio = (int64_t)((double)D * c->v[F_RATIO]);
    if (!st) {
        if (from_ratio < 1)
            return xa_error(XATTN_ERR_ARG,
                            "%s: int(embed_dim * mlp_ratio) = %lld: the MLP needs "
                            "a width >= 1",
                            FN_LOAD, (long long)from_ratio);
        xa_cfg_set(c, F_HIDDEN, (double)from_ratio, XA_FROM_DERIVED, "int(embed_dim * mlp_ratio)");
    } else if (c->from[F_RATIO] == XA_FROM_OPTION) {
        if (from_ratio != (int64_t)c->v[F_HIDDEN])
            return xa_error(XATTN_ERR_SHAPE,
                            "option mlp_ratio = %g gives an MLP of width %lld, "
                            "but the %s gives %lld",
                            c->v[F_RATIO], (long long)from_ratio, c->how[F_HIDDEN],
                            (long long)c->v[F_HIDDEN]);
    } else {
        xa_cfg_set(c, F_RATIO, c->v[F_HIDDEN] / (double)D, XA_FROM_DERIVED,
                   "mlp_hidden / embed_dim");
    }
    const int64_t depth = (int64_t)c->v[F_DEPTH];
    const int x_first = (int)c->v[F_FIRST] % 2 == 0;
    const int64_t xl = x_first ? (depth + 1) / 2 : depth / 2;
    xa_cfg_set(c, F_XL, (double)xl, XA_FROM_DERIVED, "depth and first");
    xa_cfg_set(c, F_CL, (double)(depth - xl), XA_FROM_DERIVED, "depth and first");
    xa_cfg_set(c, F_X0, x_first ? 0 : 1, XA_FROM_DERIVED, "first");
    xa_cfg_set(c, F_C0, x_first ? 1 : 0, XA_FROM_DERIVED, "first");
    return XATTN_OK;
}

static xattn_status build(xa_mod *core, const xattn_safetensors *st, const char *prefix,
                          const xa_kv *opts, size_t n_opts)
{
    xa_cfg *c = &core->cfg;
    xattn_status s;
    if ((st && (s = bind_file(c, st, prefix))) ||
        (s = xa_cfg_resolve(c, opts, n_opts, st, FN_LOAD)) || (s = derive(c, st)))
        return s;
    const int64_t depth = (int64_t)c->v[F_DEPTH];
    for (int64_t l = 0; l < depth && !s; l++) {
        char stem[32];
        snprintf(stem, sizeof stem, "blocks.%lld.", (long long)l);
        s = xa_params_add_table(&core->params, table, P_N, c, stem, NULL);
    }
    return s;
}

static xattn_status bind(xa_mod *core)
{
    xattn_interlaced *m = (xattn_interlaced *)core;
    const xa_cfg *c = &core->cfg;
    xattn_interlaced_config *o = &m->cfg;
    o->dim = (int64_t)c->v[F_DIM];
    o->heads = (int64_t)c->v[F_HEADS];
    o->head_dim = o->dim / o->heads;
    o->depth = (int64_t)c->v[F_DEPTH];
    o->mlp_hidden = (int64_t)c->v[F_HIDDEN];
    o->n_cls = (int64_t)c->v[F_NCLS];
    o->context_first = (int)c->v[F_FIRST] % 2 == 1;
    o->qkv_bias = o->map_bias = c->v[F_QKV_BIAS] != 0;
    o->eps = 1e-5f;
    /* qk_scale or head_dim ** -0.5 */
    const int has_scale = c->from[F_QK_SCALE] != XA_FROM_UNSET && c->v[F_QK_SCALE] != 0;
    o->scale = has_scale ? (float)c->v[F_QK_SCALE] : xa_head_scale(o->head_dim);
    return XATTN_OK;
}

static xattn_status forward_named(const xa_mod *core, const xa_run *r);

/* blocks.0.attn.q_map.weight with blocks.0.self_attn.qkv.weight beside it */
static int claims(const xattn_safetensors *st, const char *prefix)
{
    return xa_has(st, prefix, "blocks.0.self_attn.qkv.weight");
}

const xa_kind xa_kind_interlaced = {
    .name = "interlaced",
    .reference = "InterlanceDecoder of 2D-3D MIT (jimmy15923/mit, models/sem_transformer.py)",
    .summary = "two streams; layers alternate which one queries the other, class tokens skipped",
    .fields = fields,
    .n_fields = F_N,
    .inputs = inputs,
    .n_in = 2,
    .outputs = outputs,
    .n_out = 4,
    .anchor = "blocks.0.attn.q_map.weight",
    .claims = claims,
    .size = sizeof(xattn_interlaced),
    .build = build,
    .bind = bind,
    .forward = forward_named,
    .state_dict = "blocks.N.{norm1, self_attn.qkv, self_attn.proj, norm_q, norm_v, attn.q_map, "
                  "attn.k_map, attn.v_map, attn.proj, norm2, mlp.fc1, mlp.fc2}.{weight, bias} "
                  "(qkv_bias=False: no self_attn.qkv.bias, attn.{q,k,v}_map.bias)",
    .aliases = aliases,
    .n_aliases = 2,
    .out_parts = out_parts,
};

/* Typed options as the registry's string options (n_cls 0 needs has_n_cls). */
static xattn_status opts_to_kv(const xattn_interlaced_opts *o, xa_kvbuf *kv)
{
    memset(kv, 0, sizeof *kv);
    const int first = (int)o->context_first;
    if (first < XATTN_DEFAULT || first > XATTN_YES)
        return xa_error(XATTN_ERR_ARG,
                        "%s: context_first is %d; expected XATTN_DEFAULT, "
                        "XATTN_NO or XATTN_YES",
                        FN_LOAD, first);
    xa_kv_int(kv, "num_heads", o->heads);
    if (o->n_cls || o->has_n_cls) {
        snprintf(kv->text[kv->n], sizeof kv->text[kv->n], "%lld", (long long)o->n_cls);
        kv->kv[kv->n].key = "num_classes";
        kv->kv[kv->n].value = kv->text[kv->n];
        kv->n++;
    }
    xa_kv_enum(kv, "first", FIRST, first); /* XATTN_NO: x, XATTN_YES: context */
    xa_kv_real(kv, "qk_scale", o->qk_scale);
    return XATTN_OK;
}

xattn_status xattn_interlaced_load(const xattn_safetensors *st, const char *prefix,
                                   const xattn_interlaced_opts *opts, xattn_interlaced **out)
{
    XA_LOAD_ARGS(st, out, FN_LOAD);
    xattn_interlaced_opts none;
    memset(&none, 0, sizeof none);
    xa_kvbuf kv;
    xattn_status s = opts_to_kv(opts ? opts : &none, &kv);
    if (s) return s;
    xa_mod *m;
    s = xa_mod_open(&xa_kind_interlaced, st, prefix, kv.kv, kv.n, &m);
    *out = s ? NULL : (xattn_interlaced *)m;
    return s;
}

void xattn_interlaced_free(xattn_interlaced *m) { xa_mod_free(m ? &m->core : NULL); }

void xattn_interlaced_get_config(const xattn_interlaced *m, xattn_interlaced_config *c)
{
    xa_copy_config(m ? &m->cfg : NULL, c, sizeof *c);
}

const char *xattn_interlaced_warnings(const xattn_interlaced *m)
{
    return m ? m->core.cfg.warn : "";
}

/* ---------------------------------------------------------------------------------------- */
/* Forward                                                                                  */
/* ---------------------------------------------------------------------------------------- */

typedef struct il_scratch {
    float *t;   /* (rows, D) normed q stream        */
    float *nv;  /* (rows, D) normed other stream    */
    float *big; /* (rows, 3D): qkv, or q | k | v     */
    float *o;   /* (rows, D) attention output       */
    float *h;   /* (rows, hidden)                   */
} il_scratch;

/* Parameter k of block l (NULL: an absent bias). */
static const float *bw(const xattn_interlaced *m, int64_t l, int k)
{
    return xa_param_data(&m->core.params, (int)(l * P_N + k));
}

/* Attention of B items, heads read in place: q (B, I, H*dh) row stride ldq, k and v (B, J,
 * H*dh) row stride ldk with batch stride sbk, out (B, I, H*dh). */
static xattn_status attend(const xattn_interlaced_config *c, int64_t B, int64_t I, int64_t J,
                           const float *q, int64_t ldq, const float *k, const float *v, int64_t ldk,
                           int64_t sbk, float *o)
{
    xa_attn a;
    memset(&a, 0, sizeof a);
    xa_attn_heads(&a, B, c->heads, I, J, c->head_dim, c->head_dim, q, ldq, k, ldk, v, ldk, o,
                  c->dim);
    a.k_sb = a.v_sb = sbk; /* the keys may start past the class tokens of longer rows */
    a.scale = c->scale;
    a.fill = XATTN_FILL_NEG_INF;
    a.fn = FN_FWD;
    return xa_op_attention(&a);
}

/* One SkipClsDecoderBlock: q (B, Nq, D) updated in place from kv (B, Nk, D). */
static xattn_status block_forward(const xattn_interlaced *m, int64_t l, int64_t B, float *q,
                                  int64_t Nq, const float *kv, int64_t Nk, const il_scratch *sc,
                                  float *logits)
{
    const xattn_interlaced_config *c = &m->cfg;
    const int64_t D = c->dim, Hd = c->mlp_hidden, Mq = B * Nq, Mk = B * Nk;
    const float eps = c->eps;
    xattn_status s;
    /* ---- self-attention ---- */
    if ((s = xa_op_layernorm(q, Mq, D, bw(m, l, P_N1W), bw(m, l, P_N1B), eps, sc->t)) ||
        (s = xa_op_linear(sc->t, Mq, D, bw(m, l, P_QKVW), bw(m, l, P_QKVB), 3 * D, sc->big, 0)) ||
        (s = attend(c, B, Nq, Nq, sc->big, 3 * D, sc->big + D, sc->big + 2 * D, 3 * D, Nq * 3 * D,
                    sc->o)) ||
        (s = xa_op_linear(sc->o, Mq, D, bw(m, l, P_SPW), bw(m, l, P_SPB), D, q, 1)))
        return s;
    /* ---- cross-attention, keys/values from token n_cls on ---- */
    float *qc = sc->big, *kc = sc->big + Mq * D, *vc = kc + Mk * D;
    if ((s = xa_op_layernorm(q, Mq, D, bw(m, l, P_NQW), bw(m, l, P_NQB), eps, sc->t)) ||
        (s = xa_op_layernorm(kv, Mk, D, bw(m, l, P_NVW), bw(m, l, P_NVB), eps, sc->nv)) ||
        (s = xa_op_linear(sc->t, Mq, D, bw(m, l, P_QMW), bw(m, l, P_QMB), D, qc, 0)) ||
        (s = xa_op_linear(sc->nv, Mk, D, bw(m, l, P_KMW), bw(m, l, P_KMB), D, kc, 0)) ||
        (s = xa_op_linear(sc->nv, Mk, D, bw(m, l, P_VMW), bw(m, l, P_VMB), D, vc, 0)))
        return s;
    if (logits &&
        (s = xa_op_head_logits(qc, D, kc, D, B, c->heads, Nq, Nk, c->head_dim, c->scale, logits)))
        return s;
    const int64_t Je = Nk - c->n_cls;
    if (Je <= 0) /* softmax over no keys: the reference's product is an empty sum */
        memset(sc->o, 0, (size_t)(Mq * D) * sizeof(float));
    else if ((s = attend(c, B, Nq, Je, qc, D, kc + c->n_cls * D, vc + c->n_cls * D, D, Nk * D,
                         sc->o)))
        return s;
    if ((s = xa_op_linear(sc->o, Mq, D, bw(m, l, P_CPW), bw(m, l, P_CPB), D, q, 1))) return s;
    /* ---- MLP ---- */
    if ((s = xa_op_layernorm(q, Mq, D, bw(m, l, P_N2W), bw(m, l, P_N2B), eps, sc->t)) ||
        (s = xa_op_linear(sc->t, Mq, D, bw(m, l, P_F1W), bw(m, l, P_F1B), Hd, sc->h, 0)) ||
        (s = xa_op_gelu(sc->h, Mq * Hd, 0)))
        return s;
    return xa_op_linear(sc->h, Mq, Hd, bw(m, l, P_F2W), bw(m, l, P_F2B), D, q, 1);
}

static xattn_status check_call(const xattn_interlaced *m, const xattn_interlaced_inputs *in,
                               const xattn_interlaced_outputs *out)
{
    if (!m) return xa_error(XATTN_ERR_ARG, "%s: module is NULL", FN_FWD);
    if (!in || !out)
        return xa_error(XATTN_ERR_ARG, "%s: inputs and outputs must not be NULL", FN_FWD);
    if (!in->x || !in->context)
        return xa_error(XATTN_ERR_ARG, "%s: x and context must not be NULL", FN_FWD);
    if (!out->out || !out->context_out)
        return xa_error(XATTN_ERR_ARG, "%s: out and context_out must not be NULL", FN_FWD);
    const int64_t B = in->B, I = in->I, J = in->J;
    if (B <= 0 || I <= 0 || J <= 0)
        return xa_error(XATTN_ERR_ARG, "%s: sizes must be positive (B=%lld, I=%lld, J=%lld)",
                        FN_FWD, (long long)B, (long long)I, (long long)J);
    const xattn_interlaced_config *c = &m->cfg;
    int64_t rows, t, tot;
    if (xa_mul_ok(B, XA_MAX(I, J), &rows) || xa_mul_ok(B * I, c->dim, &t) ||
        xa_mul_ok(B * J, c->dim, &t) || xa_mul_ok(rows, 6 * c->dim + c->mlp_hidden + 80, &tot) ||
        xa_mul_ok(tot, (int64_t)sizeof(float), &t) || xa_mul_ok(B * c->heads, I, &t) ||
        xa_mul_ok(t, J, &t) || t > INT64_MAX / 8)
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow (B=%lld, I=%lld, J=%lld)", FN_FWD,
                        (long long)B, (long long)I, (long long)J);
    return XATTN_OK;
}

static xattn_status il_run(const xattn_interlaced *m, const xattn_interlaced_inputs *in,
                           const xattn_interlaced_outputs *out)
{
    const xattn_interlaced_config *c = &m->cfg;
    const int64_t B = in->B, I = in->I, J = in->J, D = c->dim;
    const size_t rows = (size_t)(B * XA_MAX(I, J));
    const size_t rD = (rows * (size_t)D + 15) & ~(size_t)15;
    const size_t rH = (rows * (size_t)c->mlp_hidden + 15) & ~(size_t)15;
    xa_ws *ws = xa_ws_get((6 * rD + rH) * sizeof(float));
    if (!ws) return XATTN_ERR_NOMEM;
    il_scratch sc;
    sc.t = xa_ws_data(ws);
    sc.nv = sc.t + rD;
    sc.o = sc.nv + rD;
    sc.big = sc.o + rD; /* 3 rD */
    sc.h = sc.big + 3 * rD;
    if (out->out != in->x) memmove(out->out, in->x, (size_t)(B * I * D) * sizeof(float));
    if (out->context_out != in->context)
        memmove(out->context_out, in->context, (size_t)(B * J * D) * sizeof(float));
    xattn_status s = XATTN_OK;
    for (int64_t l = 0; l < c->depth && !s; l++) {
        const int x_queries = ((l & 1) == 0) != (c->context_first != 0);
        float *lg = out->attn_weights ? out->attn_weights[l] : NULL;
        if (x_queries)
            s = block_forward(m, l, B, out->out, I, out->context_out, J, &sc, lg);
        else
            s = block_forward(m, l, B, out->context_out, J, out->out, I, &sc, lg);
    }
    xa_ws_put(ws);
    return s;
}

xattn_status xattn_interlaced_forward(xattn_ctx *ctx, const xattn_interlaced *m,
                                      const xattn_interlaced_inputs *in,
                                      const xattn_interlaced_outputs *out)
{
    xattn_status s = check_call(m, in, out);
    if (s) return s;
    const xattn_ctx *prev = xa_ctx_enter(ctx);
    s = il_run(m, in, out);
    xa_ctx_leave(prev);
    if (!s) xa_clear_error();
    return s;
}

/* The two stacked logits outputs become the per-layer pointers of the typed call. */
static xattn_status forward_named(const xa_mod *core, const xa_run *r)
{
    const xattn_interlaced *m = (const xattn_interlaced *)core;
    const xattn_interlaced_config *c = &m->cfg;
    xattn_interlaced_inputs in;
    memset(&in, 0, sizeof in);
    in.B = xa_run_sym(r, "B");
    in.I = xa_run_sym(r, "I");
    in.J = xa_run_sym(r, "J");
    in.x = r->in[0];
    in.context = r->in[1];
    xattn_interlaced_outputs out;
    memset(&out, 0, sizeof out);
    out.out = r->out[0];
    out.context_out = r->out[1];
    float **lg = NULL;
    if (r->out[2] || r->out[3]) {
        if (!(lg = calloc((size_t)c->depth, sizeof *lg)))
            return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN_FWD);
        const int64_t per = in.B * c->heads * in.I * in.J;
        int64_t nx = 0, nc = 0;
        for (int64_t l = 0; l < c->depth; l++) {
            const int x_queries = ((l & 1) == 0) != (c->context_first != 0);
            float *base = r->out[x_queries ? 2 : 3];
            lg[l] = base ? base + (x_queries ? nx : nc) * per : NULL;
            *(x_queries ? &nx : &nc) += 1;
        }
        out.attn_weights = lg;
    }
    /* the registry has made its context current */
    xattn_status s = check_call(m, &in, &out);
    if (!s) s = il_run(m, &in, &out);
    free(lg);
    return s;
}
