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
 *
 * backward: the gradients of every parameter and of both streams from those of out and
 * context_out (the logits are a diagnostic: a gradient given for them is refused). The forward
 * keeps each block's input; each block is recomputed from it going backward (see Backward).
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
    {"self_attn.qkv.weight", "3*embed_dim,embed_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL, IL_W},
    {"self_attn.qkv.bias", "3*embed_dim", "qkv_bias", 0, XA_INIT_BIAS, "embed_dim", IL_B},
    {"self_attn.proj.weight", "embed_dim,embed_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL, IL_W},
    {"self_attn.proj.bias", "embed_dim", NULL, 0, XA_INIT_BIAS, "embed_dim", IL_W},
    {"norm_q.weight", "embed_dim", NULL, 0, XA_INIT_ONES, NULL, IL_W},
    {"norm_q.bias", "embed_dim", NULL, 0, XA_INIT_ZEROS, NULL, IL_W},
    {"norm_v.weight", "embed_dim", NULL, 0, XA_INIT_ONES, NULL, IL_W},
    {"norm_v.bias", "embed_dim", NULL, 0, XA_INIT_ZEROS, NULL, IL_W},
    {"attn.q_map.weight", "embed_dim,embed_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL, IL_W},
    {"attn.q_map.bias", "embed_dim", "qkv_bias", 0, XA_INIT_BIAS, "embed_dim", IL_B},
    {"attn.k_map.weight", "embed_dim,embed_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL, IL_W},
    {"attn.k_map.bias", "embed_dim", "qkv_bias", 0, XA_INIT_BIAS, "embed_dim", IL_B},
    {"attn.v_map.weight", "embed_dim,embed_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL, IL_W},
    {"attn.v_map.bias", "embed_dim", "qkv_bias", 0, XA_INIT_BIAS, "embed_dim", IL_B},
    {"attn.proj.weight", "embed_dim,embed_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL, IL_W},
    {"attn.proj.bias", "embed_dim", NULL, 0, XA_INIT_BIAS, "embed_dim", IL_W},
    {"norm2.weight", "embed_dim", NULL, 0, XA_INIT_ONES, NULL, IL_W},
    {"norm2.bias", "embed_dim", NULL, 0, XA_INIT_ZEROS, NULL, IL_W},
    {"mlp.fc1.weight", "mlp_hidden,embed_dim", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL,
     "the MLP of the decoder block"},
    {"mlp.fc1.bias", "mlp_hidden", NULL, 0, XA_INIT_BIAS, "embed_dim", IL_W},
    {"mlp.fc2.weight", "embed_dim,mlp_hidden", NULL, XA_P_LIN, XA_INIT_LINEAR, NULL, IL_W},
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
static xattn_status backward_named(const xa_mod *core, const xa_run *r, xa_grad *g);

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
    .backward = backward_named,
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

/* What one block computes, with Mq = B Nq rows of the stream it updates and Mk = B Nk rows of
 * the other. The forward shares buffers (o1 = o2, g = h, q1 = q2 = the stream, qkv over
 * qc | kc | vc); the backward keeps apart every internal it reads. */
typedef struct il_bufs {
    float *t;            /* (Mq, D) LN1, LN_q and LN2 of the stream, in turn */
    float *nv;           /* (Mk, D) LN_v of the other stream */
    float *qkv;          /* (Mq, 3D) the self-attention's q | k | v of each row */
    float *qc, *kc, *vc; /* (Mq, D), (Mk, D), (Mk, D) the cross-attention's projections */
    float *o1, *o2;      /* (Mq, D) the self- and cross-attention outputs, heads merged */
    float *q1, *q2;      /* (Mq, D) the stream after the self- / cross-attention residual */
    float *h, *g;        /* (Mq, hidden) fc1's output before / after the GELU */
    float *lse1, *lse2;  /* (B, H, Nq) the two attentions' log-sum-exp, or NULL */
} il_bufs;

/* Parameter k of block l (NULL: an absent bias). */
static const float *bw(const xattn_interlaced *m, int64_t l, int k)
{
    return xa_param_data(&m->core.params, (int)(l * P_N + k));
}
/* Linear weight k of block l as kept (float32, 16 bits or int8). */
static xa_wt bwt(const xattn_interlaced *m, int64_t l, int k)
{
    return xa_param_w(&m->core.params, (int)(l * P_N + k));
}

/* 1 when block l updates x from the context, 0 when it updates the context from x. */
static int x_queries(const xattn_interlaced_config *c, int64_t l)
{
    return ((l & 1) == 0) != (c->context_first != 0);
}

/* dst = src (n floats) unless they are one buffer. */
static void carry(float *dst, const float *src, int64_t n)
{
    if (dst != src) memcpy(dst, src, sizeof(float) * (size_t)n);
}

/* Attention of B items, heads read in place: q (B, I, H*dh) row stride ldq, k and v (B, J,
 * H*dh) row stride ldk with batch stride sbk, o (B, I, H*dh), lse (B, H, I) or NULL. */
static void attn_setup(const xattn_interlaced_config *c, int64_t B, int64_t I, int64_t J,
                       const float *q, int64_t ldq, const float *k, const float *v, int64_t ldk,
                       int64_t sbk, float *o, float *lse, xa_attn *a)
{
    memset(a, 0, sizeof *a);
    xa_attn_heads(a, B, c->heads, I, J, c->head_dim, c->head_dim, q, ldq, k, ldk, v, ldk, o,
                  c->dim);
    a->k_sb = a->v_sb = sbk; /* the keys may start past the class tokens of longer rows */
    a->scale = c->scale;
    a->fill = XATTN_FILL_NEG_INF;
    a->lse = lse;
    a->fn = FN_FWD;
}

/* The self-attention of a block over its Nq tokens (q, k, v packed per row in qkv). */
static void self_attn(const xattn_interlaced_config *c, int64_t B, int64_t Nq, const il_bufs *b,
                      xa_attn *a)
{
    const int64_t D = c->dim;
    attn_setup(c, B, Nq, Nq, b->qkv, 3 * D, b->qkv + D, b->qkv + 2 * D, 3 * D, Nq * 3 * D, b->o1,
               b->lse1, a);
}

/* The cross-attention of a block over the Nk - n_cls keys after the class tokens (no copies:
 * the key/value base points at token n_cls of each item). */
static void cross_attn(const xattn_interlaced_config *c, int64_t B, int64_t Nq, int64_t Nk,
                       const il_bufs *b, xa_attn *a)
{
    const int64_t D = c->dim, n = c->n_cls;
    attn_setup(c, B, Nq, Nk - n, b->qc, D, b->kc + n * D, b->vc + n * D, D, Nk * D, b->o2, b->lse2,
               a);
}

/* q1 = q + proj(SelfAttn(LN1 q)), q (B, Nq, D). */
static xattn_status self_forward(const xattn_interlaced *m, int64_t l, int64_t B, const float *q,
                                 int64_t Nq, const il_bufs *b)
{
    const xattn_interlaced_config *c = &m->cfg;
    const int64_t D = c->dim, Mq = B * Nq;
    xa_attn a;
    self_attn(c, B, Nq, b, &a);
    xattn_status s;
    if ((s = xa_op_layernorm(q, Mq, D, bw(m, l, P_N1W), bw(m, l, P_N1B), c->eps, b->t)) ||
        (s = xa_op_linear_w(b->t, Mq, D, bwt(m, l, P_QKVW), bw(m, l, P_QKVB), 3 * D, b->qkv, 0)) ||
        (s = xa_op_attention(&a)))
        return s;
    carry(b->q1, q, Mq * D);
    return xa_op_linear_w(b->o1, Mq, D, bwt(m, l, P_SPW), bw(m, l, P_SPB), D, b->q1, 1);
}

/* q2 = q1 + proj(Attn(q_map LN_q q1, k_map LN_v kv, v_map LN_v kv)), keys and values from
 * token n_cls of kv (B, Nk, D) on; logits (B, H, Nq, Nk) over all keys, when not NULL. */
static xattn_status cross_forward(const xattn_interlaced *m, int64_t l, int64_t B, int64_t Nq,
                                  const float *kv, int64_t Nk, const il_bufs *b, float *logits)
{
    const xattn_interlaced_config *c = &m->cfg;
    const int64_t D = c->dim, Mq = B * Nq, Mk = B * Nk;
    const float eps = c->eps;
    xattn_status s;
    if ((s = xa_op_layernorm(b->q1, Mq, D, bw(m, l, P_NQW), bw(m, l, P_NQB), eps, b->t)) ||
        (s = xa_op_layernorm(kv, Mk, D, bw(m, l, P_NVW), bw(m, l, P_NVB), eps, b->nv)) ||
        (s = xa_op_linear_w(b->t, Mq, D, bwt(m, l, P_QMW), bw(m, l, P_QMB), D, b->qc, 0)) ||
        (s = xa_op_linear_w(b->nv, Mk, D, bwt(m, l, P_KMW), bw(m, l, P_KMB), D, b->kc, 0)) ||
        (s = xa_op_linear_w(b->nv, Mk, D, bwt(m, l, P_VMW), bw(m, l, P_VMB), D, b->vc, 0)))
        return s;
    if (logits && (s = xa_op_head_logits(b->qc, D, b->kc, D, B, c->heads, Nq, Nk, c->head_dim,
                                         c->scale, logits)))
        return s;
    if (Nk <= c->n_cls) { /* softmax over no keys: the reference's product is an empty sum */
        memset(b->o2, 0, sizeof(float) * (size_t)(Mq * D));
    } else {
        xa_attn a;
        cross_attn(c, B, Nq, Nk, b, &a);
        if ((s = xa_op_attention(&a))) return s;
    }
    carry(b->q2, b->q1, Mq * D);
    return xa_op_linear_w(b->o2, Mq, D, bwt(m, l, P_CPW), bw(m, l, P_CPB), D, b->q2, 1);
}

/* out = q2 + fc2(GELU(fc1(LN2 q2))) over Mq rows (out NULL: up to the GELU). */
static xattn_status mlp_forward(const xattn_interlaced *m, int64_t l, int64_t Mq, const il_bufs *b,
                                float *out)
{
    const xattn_interlaced_config *c = &m->cfg;
    const int64_t D = c->dim, Hd = c->mlp_hidden;
    xattn_status s;
    if ((s = xa_op_layernorm(b->q2, Mq, D, bw(m, l, P_N2W), bw(m, l, P_N2B), c->eps, b->t)) ||
        (s = xa_op_linear_w(b->t, Mq, D, bwt(m, l, P_F1W), bw(m, l, P_F1B), Hd, b->h, 0)))
        return s;
    carry(b->g, b->h, Mq * Hd);
    if ((s = xa_op_gelu(b->g, Mq * Hd, 0)) || !out) return s;
    carry(out, b->q2, Mq * D);
    return xa_op_linear_w(b->g, Mq, Hd, bwt(m, l, P_F2W), bw(m, l, P_F2B), D, out, 1);
}

/* One SkipClsDecoderBlock: q (B, Nq, D) attends to kv (B, Nk, D); the result into out (may be
 * q; NULL: only the internals in b, up to the MLP's GELU). */
static xattn_status block_forward(const xattn_interlaced *m, int64_t l, int64_t B, const float *q,
                                  int64_t Nq, const float *kv, int64_t Nk, const il_bufs *b,
                                  float *logits, float *out)
{
    xattn_status s;
    if ((s = self_forward(m, l, B, q, Nq, b)) ||
        (s = cross_forward(m, l, B, Nq, kv, Nk, b, logits)))
        return s;
    return mlp_forward(m, l, B * Nq, b, out);
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

/* The streams into out / context_out, where the blocks update them in place. */
static void start_streams(const xattn_interlaced *m, const xattn_interlaced_inputs *in,
                          const xattn_interlaced_outputs *out)
{
    const int64_t D = m->cfg.dim;
    if (out->out != in->x) memmove(out->out, in->x, (size_t)(in->B * in->I * D) * sizeof(float));
    if (out->context_out != in->context)
        memmove(out->context_out, in->context, (size_t)(in->B * in->J * D) * sizeof(float));
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
    il_bufs b;
    memset(&b, 0, sizeof b);
    b.t = xa_ws_data(ws);
    b.nv = b.t + rD;
    b.o1 = b.o2 = b.nv + rD;
    b.qkv = b.qc = b.o1 + rD; /* 3 rD, the self-attention's, then the cross-attention's */
    b.kc = b.qc + rD;
    b.vc = b.kc + rD;
    b.h = b.g = b.vc + rD;
    start_streams(m, in, out);
    xattn_status s = XATTN_OK;
    for (int64_t l = 0; l < c->depth && !s; l++) {
        const int xq = x_queries(c, l);
        float *q = xq ? out->out : out->context_out,
              *lg = out->attn_weights ? out->attn_weights[l] : NULL;
        b.q1 = b.q2 = q;
        s = block_forward(m, l, B, q, xq ? I : J, xq ? out->context_out : out->out, xq ? J : I, &b,
                          lg, q);
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

/* The typed inputs and outputs of a named run; the two stacked logits outputs, when asked,
 * become the per-layer pointers *lg (to free; NULL when neither is asked). */
static xattn_status named_io(const xattn_interlaced *m, const xa_run *r,
                             xattn_interlaced_inputs *in, xattn_interlaced_outputs *out,
                             float ***lg)
{
    const xattn_interlaced_config *c = &m->cfg;
    memset(in, 0, sizeof *in);
    in->B = xa_run_sym(r, "B");
    in->I = xa_run_sym(r, "I");
    in->J = xa_run_sym(r, "J");
    in->x = r->in[0];
    in->context = r->in[1];
    memset(out, 0, sizeof *out);
    out->out = r->out[0];
    out->context_out = r->out[1];
    *lg = NULL;
    if (!r->out[2] && !r->out[3]) return XATTN_OK;
    if (!(*lg = calloc((size_t)c->depth, sizeof **lg)))
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN_FWD);
    const int64_t per = in->B * c->heads * in->I * in->J;
    int64_t n[2] = {0, 0}; /* layers so far where the context / x queries */
    for (int64_t l = 0; l < c->depth; l++) {
        const int xq = x_queries(c, l);
        float *base = r->out[xq ? 2 : 3];
        (*lg)[l] = base ? base + n[xq] * per : NULL;
        n[xq]++;
    }
    out->attn_weights = *lg;
    return XATTN_OK;
}

static xattn_status forward_named(const xa_mod *core, const xa_run *r)
{
    const xattn_interlaced *m = (const xattn_interlaced *)core;
    xattn_interlaced_inputs in;
    xattn_interlaced_outputs out;
    float **lg;
    xattn_status s = named_io(m, r, &in, &out, &lg);
    /* the registry has made its context current */
    if (!s) s = check_call(m, &in, &out);
    if (!s) s = il_run(m, &in, &out);
    free(lg);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Backward                                                                                 */
/* ---------------------------------------------------------------------------------------- */
/*
 * The forward runs once keeping the input of every block: the stream that block updates (D
 * floats per token of that stream, per block). The other stream a block reads is the next
 * block's input, or for the last block the final output. Going backward, a block's internals
 * are recomputed from its input (the last block's are still in the buffers) and its gradient
 * taken op by op: the MLP (LN2, fc1, GELU, fc2), the cross-attention (output projection, the
 * fused attention backward over the keys after the class tokens, which get no gradient as keys
 * or values, q_map with LN_q; k_map and v_map with LN_v into the other stream's gradient), the
 * self-attention (proj, fused attention, qkv, LN1), each residual adding its branch. The
 * logits outputs are a diagnostic: no gradient flows from them.
 */

typedef struct il_bwd {
    const xattn_interlaced *m;
    int64_t B;
    il_bufs b;   /* the internals of the block being differentiated */
    float *dbig; /* (rows, 3D): dqc (Mq, D) | dkc (Mk, D) | dvc (Mk, D), then dqkv (Mq, 3D) */
    float *dO;   /* (rows, D) an attention output's gradient; a branch's before its add */
    float *dt;   /* (rows, D) a norm output's gradient */
    float *dh;   /* (rows, hidden) fc1's output's gradient */
    float *const *dparam;
} il_bwd;

/* The gradient of parameter k of block l (NULL: not wanted or an absent bias). */
static float *gp(const il_bwd *w, int64_t l, int k)
{
    return w->dparam && bw(w->m, l, k) ? w->dparam[l * P_N + k] : NULL;
}

/* The gradients of attention a (as its forward ran: its output and log-sum-exp kept) from dO
 * laid out as its output; dq, dk, dv are laid out as its q, k and v. */
static xattn_status attend_backward(const xa_attn *a, const float *dO, float *dq, float *dk,
                                    float *dv)
{
    xa_attn_grad g;
    memset(&g, 0, sizeof g);
    g.dout = dO, g.do_sb = a->o_sb, g.do_sh = a->o_sh, g.do_si = a->o_si;
    g.lse = a->lse;
    g.dq = dq, g.dq_sb = a->q_sb, g.dq_sh = a->q_sh, g.dq_si = a->q_si;
    g.dk = dk, g.dk_sb = a->k_sb, g.dk_sh = a->k_sh, g.dk_sj = a->k_sj;
    g.dv = dv, g.dv_sb = a->v_sb, g.dv_sh = a->v_sh, g.dv_sj = a->v_sj;
    xa_attn p = *a;
    p.lse = NULL;
    return xa_op_attention_backward(&p, &g);
}

/* dq += the gradient through LayerNorm k (weight k, bias k + 1) of x (rows, D) from dy. */
static xattn_status norm_backward(const il_bwd *w, int64_t l, int k, const float *x, int64_t rows,
                                  const float *dy, float *dq)
{
    const int64_t D = w->m->cfg.dim;
    xattn_status s = xa_op_layernorm_backward(x, rows, D, bw(w->m, l, k), w->m->cfg.eps, dy, w->dO,
                                              gp(w, l, k), gp(w, l, k + 1), 0);
    if (!s) xa_op_add(dq, w->dO, rows * D);
    return s;
}

/* dq (Mq, D): the gradient of the block's output becomes that of q2. */
static xattn_status mlp_backward(const il_bwd *w, int64_t l, int64_t Mq, float *dq)
{
    const xattn_interlaced *m = w->m;
    const int64_t D = m->cfg.dim, Hd = m->cfg.mlp_hidden;
    const il_bufs *b = &w->b;
    xattn_status s;
    if ((s = xa_op_linear_backward(b->g, Mq, Hd, bw(m, l, P_F2W), D, dq, w->dh, gp(w, l, P_F2W),
                                   gp(w, l, P_F2B), 0)))
        return s;
    xa_op_gelu_backward(b->h, w->dh, w->dh, Mq * Hd, 0);
    /* b->t holds LN2 q2 since the block's forward */
    if ((s = xa_op_linear_backward(b->t, Mq, D, bw(m, l, P_F1W), Hd, w->dh, w->dt, gp(w, l, P_F1W),
                                   gp(w, l, P_F1B), 0)))
        return s;
    return norm_backward(w, l, P_N2W, b->q2, Mq, w->dt, dq);
}

/* dq (Mq, D): the gradient of q2 becomes that of q1; dkv (Mk, D) += the other stream's. */
static xattn_status cross_backward(const il_bwd *w, int64_t l, int64_t Nq, int64_t Nk,
                                   const float *kv, float *dq, float *dkv)
{
    const xattn_interlaced *m = w->m;
    const xattn_interlaced_config *c = &m->cfg;
    const int64_t D = c->dim, Mq = w->B * Nq, Mk = w->B * Nk;
    const il_bufs *b = &w->b;
    float *dqc = w->dbig, *dkc = dqc + Mq * D, *dvc = dkc + Mk * D;
    xattn_status s;
    if ((s = xa_op_linear_backward(b->o2, Mq, D, bw(m, l, P_CPW), D, dq, w->dO, gp(w, l, P_CPW),
                                   gp(w, l, P_CPB), 0)))
        return s;
    memset(dkc, 0, sizeof(float) * (size_t)(Mk * D)); /* the class tokens' rows stay 0 */
    memset(dvc, 0, sizeof(float) * (size_t)(Mk * D));
    if (Nk <= c->n_cls) { /* no keys: the output did not depend on q, k or v */
        memset(dqc, 0, sizeof(float) * (size_t)(Mq * D));
    } else {
        xa_attn a;
        cross_attn(c, w->B, Nq, Nk, b, &a);
        if ((s = attend_backward(&a, w->dO, dqc, dkc + c->n_cls * D, dvc + c->n_cls * D))) return s;
    }
    if ((s = xa_op_layernorm(b->q1, Mq, D, bw(m, l, P_NQW), bw(m, l, P_NQB), c->eps, b->t)) ||
        (s = xa_op_linear_backward(b->t, Mq, D, bw(m, l, P_QMW), D, dqc, w->dt, gp(w, l, P_QMW),
                                   gp(w, l, P_QMB), 0)) ||
        (s = norm_backward(w, l, P_NQW, b->q1, Mq, w->dt, dq)))
        return s;
    /* the other stream: k_map and v_map of LN_v kv */
    if ((s = xa_op_linear_backward(b->nv, Mk, D, bw(m, l, P_KMW), D, dkc, w->dt, gp(w, l, P_KMW),
                                   gp(w, l, P_KMB), 0)) ||
        (s = xa_op_linear_backward(b->nv, Mk, D, bw(m, l, P_VMW), D, dvc, w->dO, gp(w, l, P_VMW),
                                   gp(w, l, P_VMB), 0)))
        return s;
    xa_op_add(w->dt, w->dO, Mk * D);
    return norm_backward(w, l, P_NVW, kv, Mk, w->dt, dkv);
}

/* dq (Mq, D): the gradient of q1 becomes that of the block's input q0. */
static xattn_status self_backward(const il_bwd *w, int64_t l, int64_t Nq, const float *q0,
                                  float *dq)
{
    const xattn_interlaced *m = w->m;
    const xattn_interlaced_config *c = &m->cfg;
    const int64_t D = c->dim, Mq = w->B * Nq;
    const il_bufs *b = &w->b;
    xa_attn a;
    self_attn(c, w->B, Nq, b, &a);
    xattn_status s;
    if ((s = xa_op_linear_backward(b->o1, Mq, D, bw(m, l, P_SPW), D, dq, w->dO, gp(w, l, P_SPW),
                                   gp(w, l, P_SPB), 0)) ||
        (s = attend_backward(&a, w->dO, w->dbig, w->dbig + D, w->dbig + 2 * D)) ||
        (s = xa_op_layernorm(q0, Mq, D, bw(m, l, P_N1W), bw(m, l, P_N1B), c->eps, b->t)) ||
        (s = xa_op_linear_backward(b->t, Mq, D, bw(m, l, P_QKVW), 3 * D, w->dbig, w->dt,
                                   gp(w, l, P_QKVW), gp(w, l, P_QKVB), 0)))
        return s;
    return norm_backward(w, l, P_N1W, q0, Mq, w->dt, dq);
}

/* Where block l's input is kept: after those of the blocks before it (l = depth: the floats
 * of all). */
static int64_t kept_at(const xattn_interlaced_config *c, int64_t l, int64_t B, int64_t I, int64_t J)
{
    const int64_t nx = x_queries(c, 0) ? (l + 1) / 2 : l / 2; /* blocks before l updating x */
    return (nx * I + (l - nx) * J) * B * c->dim;
}

/* Floats the backward allocates: the kept inputs, the block's internals, the gradients. */
static double bwd_floats(const xattn_interlaced_config *c, int64_t B, int64_t I, int64_t J)
{
    const double D = (double)c->dim, rows = (double)B * (double)XA_MAX(I, J);
    const double nx = x_queries(c, 0) ? (double)((c->depth + 1) / 2) : (double)(c->depth / 2);
    const double kept = (nx * (double)I + ((double)c->depth - nx) * (double)J) * (double)B * D;
    return kept + 17.0 * rows * D + 3.0 * rows * (double)c->mlp_hidden +
           2.0 * rows * (double)c->heads + (double)B * (double)(I + J) * D + 16.0 * 32;
}

static float *carve(float **base, double n)
{
    float *p = *base;
    *base += ((int64_t)n + 15) / 16 * 16;
    return p;
}

/* The buffers of w from mem (bwd_floats of it). */
static void bwd_layout(il_bwd *w, float *mem, int64_t B, int64_t I, int64_t J, float **kept,
                       float **dx, float **dc)
{
    const xattn_interlaced_config *c = &w->m->cfg;
    const double D = (double)c->dim, rows = (double)B * (double)XA_MAX(I, J);
    const double rD = rows * D, rH = rows * (double)c->mlp_hidden, rL = rows * (double)c->heads;
    float *q = mem;
    il_bufs *b = &w->b;
    *kept = carve(&q, (double)kept_at(c, c->depth, B, I, J));
    b->t = carve(&q, rD), b->nv = carve(&q, rD), b->qkv = carve(&q, 3 * rD);
    b->qc = carve(&q, rD), b->kc = carve(&q, rD), b->vc = carve(&q, rD);
    b->o1 = carve(&q, rD), b->o2 = carve(&q, rD), b->q1 = carve(&q, rD), b->q2 = carve(&q, rD);
    b->h = carve(&q, rH), b->g = carve(&q, rH), b->lse1 = carve(&q, rL), b->lse2 = carve(&q, rL);
    w->dbig = carve(&q, 3 * rD), w->dO = carve(&q, rD), w->dt = carve(&q, rD);
    w->dh = carve(&q, rH);
    *dx = carve(&q, (double)(B * I) * D), *dc = carve(&q, (double)(B * J) * D);
}

/* A gradient of the logits outputs is refused: they are a diagnostic of the forward. */
static xattn_status refuse_logit_grads(const xa_grad *g)
{
    for (int o = 2; o < 4; o++)
        if (g->dout[o])
            return xa_error(XATTN_ERR_UNSUPPORTED,
                            "%s: output '%s' (pre-softmax cross-attention logits) is a "
                            "diagnostic without a gradient: only out and context_out take one",
                            FN_FWD, outputs[o].name);
    return XATTN_OK;
}

/* Block l's backward: dq (B Nq, D), the gradient of its output, becomes that of its input q0;
 * dkv += the gradient of the stream kv it read. */
static xattn_status block_backward(const il_bwd *w, int64_t l, const float *q0, int64_t Nq,
                                   const float *kv, int64_t Nk, float *dq, float *dkv)
{
    xattn_status s;
    if ((s = mlp_backward(w, l, w->B * Nq, dq)) || (s = cross_backward(w, l, Nq, Nk, kv, dq, dkv)))
        return s;
    return self_backward(w, l, Nq, q0, dq);
}

/* The forward keeping every block's input (kept), then the outputs' gradients back through the
 * blocks into dx and dc. */
static xattn_status il_backward(il_bwd *w, const xattn_interlaced_inputs *in,
                                const xattn_interlaced_outputs *out, const xa_run *r, xa_grad *gr,
                                float *kept, float *dx, float *dc)
{
    const xattn_interlaced_config *c = &w->m->cfg;
    const int64_t B = in->B, I = in->I, J = in->J, D = c->dim, depth = c->depth;
    xattn_status s = XATTN_OK;
    start_streams(w->m, in, out);
    for (int64_t l = 0; l < depth && !s; l++) {
        const int xq = x_queries(c, l);
        float *q = xq ? out->out : out->context_out;
        carry(kept + kept_at(c, l, B, I, J), q, B * (xq ? I : J) * D);
        s = block_forward(w->m, l, B, q, xq ? I : J, xq ? out->context_out : out->out, xq ? J : I,
                          &w->b, out->attn_weights ? out->attn_weights[l] : NULL, q);
    }
    if (!s && !(s = xa_grad_outputs(gr, r))) s = refuse_logit_grads(gr);
    if (s) return s;
    if (gr->dout[0])
        carry(dx, gr->dout[0], B * I * D);
    else
        memset(dx, 0, sizeof(float) * (size_t)(B * I * D));
    if (gr->dout[1])
        carry(dc, gr->dout[1], B * J * D);
    else
        memset(dc, 0, sizeof(float) * (size_t)(B * J * D));
    for (int64_t l = depth - 1; l >= 0 && !s; l--) {
        const int xq = x_queries(c, l);
        const int64_t Nq = xq ? I : J, Nk = xq ? J : I;
        const float *q0 = kept + kept_at(c, l, B, I, J);
        const float *kv =
            l + 1 < depth ? kept + kept_at(c, l + 1, B, I, J) : (xq ? out->context_out : out->out);
        if (l != depth - 1) s = block_forward(w->m, l, B, q0, Nq, kv, Nk, &w->b, NULL, NULL);
        if (!s) s = block_backward(w, l, q0, Nq, kv, Nk, xq ? dx : dc, xq ? dc : dx);
    }
    if (!s && gr->din[0]) carry(gr->din[0], dx, B * I * D);
    if (!s && gr->din[1]) carry(gr->din[1], dc, B * J * D);
    return s;
}

static xattn_status backward_named(const xa_mod *core, const xa_run *r, xa_grad *gr)
{
    const xattn_interlaced *m = (const xattn_interlaced *)core;
    xattn_interlaced_inputs in;
    xattn_interlaced_outputs out;
    float **lg;
    xattn_status s = refuse_logit_grads(gr);
    if (s || (s = named_io(m, r, &in, &out, &lg))) return s;
    s = check_call(m, &in, &out);
    const double total = s ? 0 : bwd_floats(&m->cfg, in.B, in.I, in.J);
    float *mem = NULL;
    if (!s && (total > 2.5e11 || !(mem = xa_alloc(sizeof(float) * (size_t)total))))
        s = xa_error(XATTN_ERR_NOMEM, "%s: out of memory for the backward (%.3g floats)", FN_FWD,
                     total);
    if (!s) {
        il_bwd w;
        memset(&w, 0, sizeof w);
        w.m = m, w.B = in.B, w.dparam = gr->dparam;
        float *kept, *dx, *dc;
        bwd_layout(&w, mem, in.B, in.I, in.J, &kept, &dx, &dc);
        s = il_backward(&w, &in, &out, r, gr, kept, dx, dc);
    }
    xa_free(mem);
    free(lg);
    return s;
}
