/*
 * Cross-attention over 2-D feature maps (a CrossAttention of 1x1 convolutions, its value
 * product corrected).
 *
 *   conv_query.weight (Ck, C1, 1, 1) [+ conv_query.bias (Ck)]   on x1 (B, C1, H1, W1)
 *   conv_key.weight   (Ck, C2, 1, 1) [+ conv_key.bias (Ck)]     on x2 (B, C2, H2, W2)
 *   conv_value.weight (Cv, C2, 1, 1) [+ conv_value.bias (Cv)]   on x2
 *   out[b, :, p] = sum_q softmax_q(scale * Q[b,:,p] . K[b,:,q]) V[b, :, q]    (B, Cv, H1, W1)
 *
 * forward: a 1x1 convolution is a per-position linear map; with positions as the minor axis of
 * the maps, Q^T (P1, Ck) = x1[b]^T (P1, C1) Wq^T is one xattn_sgemm reading x1 in place
 * (trans_a, trans_b), written position-major so the fused attention kernel reads each
 * position's vector contiguously. The kernel output O (P1, Cv) is transposed into
 * out[b] (Cv, P1) by a blocked copy.
 */
#include "core/registry.h"
#include "kernels/ops.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* CrossAttention(in_channels, out_channels, in_channels2=None, qk_channels=None, bias=True,
 * scale=None) of tests/reference/gen_conv2d.py */
static const xa_field fields[] = {
    {"in_channels", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED, 0, 1, 1e15, NULL, NULL, "channels of x1"},
    {"out_channels", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED, 0, 1, 1e15, NULL, NULL,
     "channels of the values and the output"},
    {"in_channels2", XA_T_INT, XA_F_SHAPE | XA_F_OPTIONAL, 0, 1, 1e15, NULL, NULL,
     "channels of x2 (None: in_channels)"},
    {"qk_channels", XA_T_INT, XA_F_SHAPE | XA_F_OPTIONAL, 0, 1, 1e15, NULL, NULL,
     "channels of the queries and keys (None: out_channels)"},
    {"bias", XA_T_BOOL, XA_F_PRESENCE, 1, 0, 1, NULL, NULL, "the 1x1 convolutions have biases"},
    {"scale", XA_T_REAL, XA_F_OPTIONAL | XA_F_TRACELESS, 0, -1e300, 1e300, NULL, NULL,
     "logits scale (None: 1, no scaling, as the seed)"},
};

enum { P_WQ, P_WK, P_WV, P_BQ, P_BK, P_BV, P_N };
static const xa_pspec table[P_N] = {
    {"conv_query.weight", "qk_channels,in_channels,1,1", NULL, 0, XA_INIT_LINEAR, NULL,
     "the query 1x1 Conv2d weight (out, in, 1, 1)"},
    {"conv_key.weight", "qk_channels,in_channels2,1,1", NULL, 0, XA_INIT_LINEAR, NULL,
     "the key 1x1 Conv2d weight (out, in, 1, 1)"},
    {"conv_value.weight", "out_channels,in_channels2,1,1", NULL, 0, XA_INIT_LINEAR, NULL,
     "the value 1x1 Conv2d weight (out, in, 1, 1)"},
    {"conv_query.bias", "qk_channels", "bias", XA_P_OPT, XA_INIT_BIAS, "in_channels",
     "the query bias"},
    {"conv_key.bias", "qk_channels", "bias", XA_P_OPT, XA_INIT_BIAS, "in_channels2",
     "the key bias"},
    {"conv_value.bias", "out_channels", "bias", XA_P_OPT, XA_INIT_BIAS, "in_channels2",
     "the value bias"},
};

static const xa_io inputs[] = {
    {"x1", "B,in_channels,H1,W1", 0, "the map that queries"},
    {"x2", "B,in_channels2,H2,W2", 0, "the map that is attended"},
};
static const xa_io outputs[] = {
    {"out", "B,out_channels,H1,W1", 0, "attention over x2's positions for each of x1's"},
};

struct xattn_conv2d_cross {
    xa_mod core;
    xattn_conv2d_cross_config cfg;
    const float *wq, *wk, *wv; /* (Ck, C1), (Ck, C2), (Cv, C2) */
    const float *bq, *bk, *bv; /* or NULL */
};

static const char *FN_LOAD = "xattn_conv2d_cross_load";

/* in_channels2 and qk_channels default to in_channels and out_channels (creation). */
static void fill_defaults(xa_cfg *c)
{
    static const char *const pairs[2][2] = {{"in_channels2", "in_channels"},
                                            {"qk_channels", "out_channels"}};
    for (int k = 0; k < 2; k++) {
        int i = xa_cfg_find(c, pairs[k][0]);
        if (c->from[i] == XA_FROM_UNSET)
            xa_cfg_set(c, i, xa_cfg_get(c, pairs[k][1]), XA_FROM_DEFAULT, "default (%s)",
                       pairs[k][1]);
    }
}

static xattn_status build(xa_mod *m, const xattn_safetensors *st, const char *prefix,
                          const xa_kv *opts, size_t n_opts)
{
    xattn_status s;
    if (st && ((s = xa_cfg_bind_shapes(&m->cfg, table, P_N, st, prefix, "")) ||
               (s = xa_cfg_require_shapes(&m->cfg, table, P_N, st, prefix, ""))))
        return s;
    if ((s = xa_cfg_resolve(&m->cfg, opts, n_opts, st, FN_LOAD))) return s;
    fill_defaults(&m->cfg);
    return xa_params_add_table(&m->params, table, P_N, &m->cfg, "", NULL);
}

static xattn_status bind(xa_mod *core)
{
    xattn_conv2d_cross *m = (xattn_conv2d_cross *)core;
    const xa_params *ps = &core->params;
    m->wq = xa_param_data(ps, P_WQ);
    m->wk = xa_param_data(ps, P_WK);
    m->wv = xa_param_data(ps, P_WV);
    m->bq = xa_param_data(ps, P_BQ);
    m->bk = xa_param_data(ps, P_BK);
    m->bv = xa_param_data(ps, P_BV);
    m->cfg.in1 = xa_cfg_int(&core->cfg, "in_channels");
    m->cfg.in2 = xa_cfg_int(&core->cfg, "in_channels2");
    m->cfg.qk_channels = xa_cfg_int(&core->cfg, "qk_channels");
    m->cfg.out_channels = xa_cfg_int(&core->cfg, "out_channels");
    m->cfg.has_bias_q = m->bq != NULL;
    m->cfg.has_bias_k = m->bk != NULL;
    m->cfg.has_bias_v = m->bv != NULL;
    return XATTN_OK;
}

static xattn_status forward_named(const xa_mod *core, const xa_run *r);
static xattn_status backward_named(const xa_mod *core, const xa_run *r, xa_grad *g);

const xa_kind xa_kind_conv2d_cross = {
    .name = "conv2d-cross",
    .reference = "CrossAttention over 2-D feature maps (1x1 convolutions; value product corrected)",
    .summary = "cross-attention between two feature maps through 1x1 convolutions",
    .fields = fields,
    .n_fields = XA_N(fields),
    .inputs = inputs,
    .n_in = 2,
    .outputs = outputs,
    .n_out = 1,
    .anchor = "conv_query.weight",
    .size = sizeof(xattn_conv2d_cross),
    .build = build,
    .bind = bind,
    .forward = forward_named,
    .backward = backward_named,
    .state_dict = "conv_query.{weight (Ck, C1, 1, 1), bias}, conv_key.{weight (Ck, C2, 1, 1), "
                  "bias}, conv_value.{weight (Cv, C2, 1, 1), bias} (1x1 nn.Conv2d)",
};

xattn_status xattn_conv2d_cross_load(const xattn_safetensors *st, const char *prefix,
                                     xattn_conv2d_cross **out)
{
    XA_LOAD_ARGS(st, out, FN_LOAD);
    xa_mod *m;
    xattn_status s = xa_mod_open(&xa_kind_conv2d_cross, st, prefix, NULL, 0, &m);
    *out = s ? NULL : (xattn_conv2d_cross *)m;
    return s;
}

void xattn_conv2d_cross_free(xattn_conv2d_cross *m) { xa_mod_free(m ? &m->core : NULL); }

void xattn_conv2d_cross_get_config(const xattn_conv2d_cross *m, xattn_conv2d_cross_config *cfg)
{
    xa_copy_config(m ? &m->cfg : NULL, cfg, sizeof *cfg);
}

/* Y (B, P, Cout) = a 1x1 convolution of X (B, Cin, P) channel-major, read in place. */
static xattn_status conv1x1_t(const float *x, int64_t B, int64_t Cin, int64_t P, const float *W,
                              const float *bias, int64_t Cout, float *y)
{
    xattn_status s = XATTN_OK;
    for (int64_t b = 0; b < B && !s; b++)
        s = xa_op_linear_cm(x + b * Cin * P, P, Cin, W, bias, Cout, y + b * P * Cout);
    return s;
}

xattn_status xattn_conv2d_cross_forward(const xattn_conv2d_cross *m,
                                        const xattn_conv2d_cross_inputs *in, float *out)
{
    const char *fn = "xattn_conv2d_cross_forward";
    if (!m || !in || !out || !in->x1 || !in->x2)
        return xa_error(XATTN_ERR_ARG, "%s: module, inputs, x1, x2 and out must not be NULL", fn);
    const int64_t B = in->B;
    if (B < 1 || in->H1 < 1 || in->W1 < 1 || in->H2 < 1 || in->W2 < 1)
        return xa_error(XATTN_ERR_SHAPE,
                        "%s: sizes must be >= 1 (got B=%lld, x1 %lldx%lld, x2 %lldx%lld)", fn,
                        (long long)B, (long long)in->H1, (long long)in->W1, (long long)in->H2,
                        (long long)in->W2);
    if (in->has_scale && !isfinite(in->scale))
        return xa_error(XATTN_ERR_ARG, "%s: scale is not finite", fn);
    const int64_t Ck = m->cfg.qk_channels, Cv = m->cfg.out_channels;
    int64_t P1, P2, nq, nk, nv, no, tot;
    if (xa_mul_ok(in->H1, in->W1, &P1) || xa_mul_ok(in->H2, in->W2, &P2) ||
        xa_mul_ok(B * 1, P1, &nq) || xa_mul_ok(nq, Ck, &nq) || xa_mul_ok(B, P2, &nk) ||
        xa_mul_ok(nk, Ck + Cv, &nk) || xa_mul_ok(B * P1, Cv, &no) ||
        xa_mul_ok(B, P1 * XA_MAX(m->cfg.in1, 1), &tot) || xa_mul_ok(B, P2 * m->cfg.in2, &tot) ||
        nq + nk + no > INT64_MAX / 8)
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow", fn);
    nv = B * P2 * Cv;
    nk = B * P2 * Ck;
    const int64_t n = nq + nk + nv + no;
    float *buf = xa_alloc((size_t)n * sizeof(float));
    if (!buf) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory (%lld floats)", fn, (long long)n);
    float *Q = buf, *K = Q + nq, *V = K + nk, *O = V + nv;
    xattn_status s;
    if ((s = conv1x1_t(in->x1, B, m->cfg.in1, P1, m->wq, m->bq, Ck, Q)) ||
        (s = conv1x1_t(in->x2, B, m->cfg.in2, P2, m->wk, m->bk, Ck, K)) ||
        (s = conv1x1_t(in->x2, B, m->cfg.in2, P2, m->wv, m->bv, Cv, V)))
        goto done;
    {
        xa_attn p;
        memset(&p, 0, sizeof p);
        xa_attn_heads(&p, B, 1, P1, P2, Ck, Cv, Q, Ck, K, Ck, V, Cv, O, Cv);
        p.scale = in->has_scale ? in->scale : 1.0f;
        p.fill = XATTN_FILL_NEG_INF;
        p.fn = fn;
        if ((s = xa_op_attention(&p))) goto done;
    }
    xa_op_transpose(O, out, B, P1, Cv);
    xa_clear_error();
done:
    xa_free(buf);
    return s;
}

static xattn_status forward_named(const xa_mod *core, const xa_run *r)
{
    const xattn_conv2d_cross *m = (const xattn_conv2d_cross *)core;
    xattn_conv2d_cross_inputs in;
    memset(&in, 0, sizeof in);
    in.B = xa_run_sym(r, "B");
    in.H1 = xa_run_sym(r, "H1");
    in.W1 = xa_run_sym(r, "W1");
    in.H2 = xa_run_sym(r, "H2");
    in.W2 = xa_run_sym(r, "W2");
    in.x1 = r->in[0];
    in.x2 = r->in[1];
    const int si = xa_cfg_find(&core->cfg, "scale");
    in.has_scale = core->cfg.from[si] != XA_FROM_UNSET;
    in.scale = (float)core->cfg.v[si];
    return xattn_conv2d_cross_forward(m, &in, r->out[0]);
}

/* ---------------------------------------------------------------------------------------- */
/* Backward                                                                                 */
/* ---------------------------------------------------------------------------------------- */
/*
 * The forward runs once keeping Q (B, P1, Ck), K (B, P2, Ck), V (B, P2, Cv) and the attention
 * output O; out's gradient is transposed position-major, goes back through the fused attention
 * (probabilities recomputed), then through the three 1x1 convolutions (x2 gets both the key's
 * and the value's part).
 */
static xattn_status backward_named(const xa_mod *core, const xa_run *r, xa_grad *g)
{
    static const char fn[] = "conv2d-cross backward";
    const xattn_conv2d_cross *m = (const xattn_conv2d_cross *)core;
    const int64_t B = xa_run_sym(r, "B"), P1 = xa_run_sym(r, "H1") * xa_run_sym(r, "W1"),
                  P2 = xa_run_sym(r, "H2") * xa_run_sym(r, "W2");
    const int64_t C1 = m->cfg.in1, C2 = m->cfg.in2, Ck = m->cfg.qk_channels,
                  Cv = m->cfg.out_channels;
    const int si = xa_cfg_find(&core->cfg, "scale");
    const float *x1 = r->in[0], *x2 = r->in[1];
    const double n = 2.0 * (double)(B * P1 * (Ck + Cv)) + 2.0 * (double)(B * P2 * (Ck + Cv)) +
                     (double)(B * C2 * P2) + 64.0 * 8;
    if (n > 2.5e11) return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow", fn);
    float *buf = xa_alloc(sizeof(float) * (size_t)n);
    if (!buf) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    float *q = buf;
#define CARVE(k) (q += ((k) + 15) / 16 * 16, q - ((k) + 15) / 16 * 16)
    float *Q = CARVE(B * P1 * Ck), *K = CARVE(B * P2 * Ck), *V = CARVE(B * P2 * Cv);
    float *O = CARVE(B * P1 * Cv), *dO = CARVE(B * P1 * Cv), *dQ = CARVE(B * P1 * Ck);
    float *dK = CARVE(B * P2 * Ck), *dV = CARVE(B * P2 * Cv), *dx2 = CARVE(B * C2 * P2);
#undef CARVE
    xattn_status s;
    if ((s = conv1x1_t(x1, B, C1, P1, m->wq, m->bq, Ck, Q)) ||
        (s = conv1x1_t(x2, B, C2, P2, m->wk, m->bk, Ck, K)) ||
        (s = conv1x1_t(x2, B, C2, P2, m->wv, m->bv, Cv, V)))
        goto done;
    xa_attn p;
    memset(&p, 0, sizeof p);
    xa_attn_heads(&p, B, 1, P1, P2, Ck, Cv, Q, Ck, K, Ck, V, Cv, O, Cv);
    p.scale = core->cfg.from[si] != XA_FROM_UNSET ? (float)core->cfg.v[si] : 1.0f;
    p.fill = XATTN_FILL_NEG_INF;
    p.fn = fn;
    if ((s = xa_op_attention(&p))) goto done;
    xa_op_transpose(O, r->out[0], B, P1, Cv);
    if ((s = xa_grad_outputs(g, r))) goto done;
    if (g->dout[0])
        xa_op_transpose(g->dout[0], dO, B, Cv, P1); /* (B, Cv, P1) -> (B, P1, Cv) */
    else
        memset(dO, 0, sizeof(float) * (size_t)(B * P1 * Cv));
    {
        xa_attn_grad ag;
        memset(&ag, 0, sizeof ag);
        ag.dout = dO, ag.do_sb = P1 * Cv, ag.do_si = Cv;
        ag.dq = dQ, ag.dq_sb = P1 * Ck, ag.dq_si = Ck;
        ag.dk = dK, ag.dk_sb = P2 * Ck, ag.dk_sj = Ck;
        ag.dv = dV, ag.dv_sb = P2 * Cv, ag.dv_sj = Cv;
        if ((s = xa_op_attention_backward(&p, &ag))) goto done;
    }
    float *const *dp = g->dparam;
    const int has_dp = dp != NULL;
    /* x2 feeds the keys and the values: the value's backward adds to dx2, so its own weight
     * gradients start at zero */
    if (has_dp && dp[P_WV]) memset(dp[P_WV], 0, sizeof(float) * (size_t)(Cv * C2));
    if (has_dp && m->bv && dp[P_BV]) memset(dp[P_BV], 0, sizeof(float) * (size_t)Cv);
    if ((s = xa_op_linear_cm_backward(x1, B, P1, C1, m->wq, Ck, dQ, g->din[0],
                                      has_dp ? dp[P_WQ] : NULL, has_dp && m->bq ? dp[P_BQ] : NULL,
                                      0)) ||
        (s = xa_op_linear_cm_backward(x2, B, P2, C2, m->wk, Ck, dK, dx2, has_dp ? dp[P_WK] : NULL,
                                      has_dp && m->bk ? dp[P_BK] : NULL, 0)) ||
        (s = xa_op_linear_cm_backward(x2, B, P2, C2, m->wv, Cv, dV, dx2, has_dp ? dp[P_WV] : NULL,
                                      has_dp && m->bv ? dp[P_BV] : NULL, 1)))
        goto done;
    if (g->din[1]) memcpy(g->din[1], dx2, sizeof(float) * (size_t)(B * C2 * P2));
done:
    xa_free(buf);
    return s;
}
