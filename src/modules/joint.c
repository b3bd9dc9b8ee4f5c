/*
 * M4: joint (stacked) cross-attention (MMCA, CVPR 2020): Y = [x; context] along the sequence
 * axis, torch.nn.TransformerEncoderLayer layers (batch_first=True) over Y, split back.
 *
 * Per layer (torch's order):
 *   norm_first = False:  Y = LN1(Y + SA(Y));      Y = LN2(Y + FF(Y))
 *   norm_first = True:   Y = Y + SA(LN1(Y));      Y = Y + FF(LN2(Y))
 *   SA(Z) = out_proj(attention(Z Wq + bq, Z Wk + bk, Z Wv + bv)),  FF(Z) = linear2(act(linear1 Z))
 * then the optional final norm of nn.TransformerEncoder(norm=LayerNorm).
 *
 * forward: one xattn_linear for the packed q/k/v projection ((B*L, 3d) scratch), ONE xa_attention
 * call reading the heads in place through strides, with the padding masks turned into a (B, L)
 * per-key keep vector (kkeep; -inf fill, so a row with no key left is a zero row, not NaN), then
 * the output projection, layernorm and the two FFN GEMMs with the gelu kernel.
 */
#include "base/base.h"
#include "kernels/kernels.h"
#include "modules/weights.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JOINT_MAX_LAYERS 4096

typedef struct joint_layer {
    const float *w_in, *b_in;   /* (3d, d), (3d)         */
    const float *w_out, *b_out; /* (d, d), (d)           */
    const float *w1, *b1;       /* (ff, d), (ff)         */
    const float *w2, *b2;       /* (d, ff), (d)          */
    const float *n1w, *n1b, *n2w, *n2b; /* (d) each      */
} joint_layer;

struct xattn_joint {
    xattn_joint_config cfg;
    joint_layer *layers;
    const float *nw, *nb; /* final norm (d) or NULL */
    float *block;
};

/* ---------------------------------------------------------------------------------------- */
/* Loading                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static const char *FN = "xattn_joint_load";

static xattn_status check_shape(const xa_wref *t, int ndim, int64_t d0, int64_t d1,
                                const char *why)
{
    xattn_status s = xa_wref_check_float(t);
    if (s != XATTN_OK) return s;
    int ok = t->ndim == ndim && t->shape[0] == d0 && (ndim == 1 || t->shape[1] == d1);
    if (ok) return XATTN_OK;
    char got[128], want[128];
    xa_wref_shape(t, got, sizeof got);
    if (ndim == 1)
        snprintf(want, sizeof want, "(%lld,)", (long long)d0);
    else
        snprintf(want, sizeof want, "(%lld, %lld)", (long long)d0, (long long)d1);
    return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s but %s implies %s", t->shown, got,
                    why, want);
}

static int parse_bool(const char *v, int *out)
{
    if (!strcmp(v, "True") || !strcmp(v, "true") || !strcmp(v, "1")) {
        *out = 1;
        return 1;
    }
    if (!strcmp(v, "False") || !strcmp(v, "false") || !strcmp(v, "0")) {
        *out = 0;
        return 1;
    }
    return 0;
}

static xattn_status resolve_options(const xattn_safetensors *st, const xattn_joint_options *o,
                                    xattn_joint_config *c)
{
    char shown[64];
    const char *v;
    /* heads */
    if (o->heads > 0) {
        c->heads = o->heads;
    } else if ((v = xattn_st_meta_get(st, "heads"))) {
        c->heads = xa_parse_positive(v);
        if (c->heads <= 0)
            return xa_error(XATTN_ERR_FORMAT, "__metadata__ 'heads' is \"%s\", not a positive integer",
                            xa_io_printable(v, shown, sizeof shown));
    } else {
        return xa_error(XATTN_ERR_ARG, "the number of heads (nhead) is not known: pass heads > 0 "
                                       "or store __metadata__ {\"heads\": \"N\"} in the file");
    }
    /* norm_first */
    if (o->norm_first >= 0) {
        c->norm_first = o->norm_first ? 1 : 0;
    } else if ((v = xattn_st_meta_get(st, "norm_first"))) {
        if (!parse_bool(v, &c->norm_first))
            return xa_error(XATTN_ERR_FORMAT, "__metadata__ 'norm_first' is \"%s\", not True or False",
                            xa_io_printable(v, shown, sizeof shown));
    } else {
        c->norm_first = 0;
    }
    /* activation */
    if (o->activation >= 0) {
        if (o->activation > 1) return xa_error(XATTN_ERR_ARG, "%s: activation must be 0 (relu) or 1 (gelu)", FN);
        c->activation = o->activation;
    } else if ((v = xattn_st_meta_get(st, "activation"))) {
        if (!strcmp(v, "relu"))
            c->activation = 0;
        else if (!strcmp(v, "gelu"))
            c->activation = 1;
        else
            return xa_error(XATTN_ERR_UNSUPPORTED,
                            "__metadata__ 'activation' is \"%s\": only relu and gelu are supported",
                            xa_io_printable(v, shown, sizeof shown));
    } else {
        c->activation = 0;
    }
    /* eps */
    if (o->layer_norm_eps > 0) {
        c->layer_norm_eps = (float)o->layer_norm_eps;
    } else if ((v = xattn_st_meta_get(st, "layer_norm_eps"))) {
        char *end = NULL;
        double e = strtod(v, &end);
        if (!end || end == v || *end != '\0' || !(e > 0) || !isfinite(e))
            return xa_error(XATTN_ERR_FORMAT,
                            "__metadata__ 'layer_norm_eps' is \"%s\", not a positive number",
                            xa_io_printable(v, shown, sizeof shown));
        c->layer_norm_eps = (float)e;
    } else {
        c->layer_norm_eps = 1e-5f;
    }
    return XATTN_OK;
}

#define NW 14 /* weights per layer */

void xattn_joint_options_init(xattn_joint_options *o)
{
    if (!o) return;
    o->heads = 0;
    o->norm_first = -1;
    o->activation = -1;
    o->layer_norm_eps = 0;
}

xattn_status xattn_joint_load(const xattn_safetensors *st, const char *prefix,
                              const xattn_joint_options *opts, xattn_joint **out)
{
    if (!out) return xa_error(XATTN_ERR_ARG, "%s: out is NULL", FN);
    *out = NULL;
    if (!st) return xa_error(XATTN_ERR_ARG, "%s: safetensors handle is NULL", FN);
    if (!prefix) prefix = "";
    xattn_joint_options defo;
    xattn_joint_options_init(&defo);
    if (!opts) opts = &defo;
    char pp[XA_IO_NAME_CAP];
    xa_io_printable(prefix, pp, sizeof pp);

    int single = xa_wref_has(st, prefix, "self_attn.in_proj_weight");
    int64_t L = 0;
    if (!single) {
        char name[64];
        for (; L < JOINT_MAX_LAYERS; L++) {
            snprintf(name, sizeof name, "layers.%lld.self_attn.in_proj_weight", (long long)L);
            if (!xa_wref_has(st, prefix, name)) break;
        }
        if (L == 0)
            return xa_error(XATTN_ERR_NOT_FOUND,
                            "no transformer encoder layer found: expected '%sself_attn.in_proj_weight' "
                            "(nn.TransformerEncoderLayer) or '%slayers.0.self_attn.in_proj_weight' "
                            "(nn.TransformerEncoder)",
                            pp, pp);
        xattn_status s0 = xa_stray_layer(st, prefix, "layers.", L, "self_attn.in_proj_weight");
        if (s0) return s0;
    } else {
        L = 1;
    }

    xattn_joint *m = calloc(1, sizeof *m);
    xa_wref *refs = calloc((size_t)(L * NW + 2), sizeof *refs);
    if (!m || !refs) {
        free(m);
        free(refs);
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN);
    }
    xattn_status s = XATTN_OK;
    xattn_joint_config *c = &m->cfg;
    c->layers = L;
    static const char *const names[NW] = {
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
        "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight",
        "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
        "self_attn.q_proj_weight", "self_attn.bias_k"};

    for (int64_t l = 0; l < L && !s; l++) {
        char mid[48];
        if (single)
            mid[0] = '\0';
        else
            snprintf(mid, sizeof mid, "layers.%lld.", (long long)l);
        for (int k = 0; k < NW && !s; k++)
            s = xa_wref_find(st, FN, prefix, mid, names[k], &refs[l * NW + k]);
        if (s) break;
        xa_wref *r = &refs[l * NW];
        if (r[12].present || r[13].present) {
            s = xa_error(XATTN_ERR_UNSUPPORTED,
                         "tensor '%s' present: only self-attention with a packed in_proj_weight "
                         "(kdim = vdim = d_model, no bias_k/bias_v) is supported",
                         r[12].present ? r[12].shown : r[13].shown);
            break;
        }
        /* weights always; biases (odd indices) all or none: TransformerEncoderLayer(bias=False) */
        const int has_bias = r[1].present;
        for (int k = 0; k < 12; k++)
            if (r[k].present != ((k % 2 == 0) || has_bias)) {
                s = r[k].present
                        ? xa_error(XATTN_ERR_FORMAT,
                                   "tensor '%s' present but '%s' absent: the layer's biases come "
                                   "all together (bias=True) or not at all (bias=False)",
                                   r[k].shown, r[1].shown)
                        : xa_wref_missing(&r[k], k % 2 ? "the layer has biases (bias=True)"
                                                       : "part of nn.TransformerEncoderLayer");
                break;
            }
        if (s) break;
        if (l == 0) c->bias = has_bias;
        else if (has_bias != c->bias) {
            s = xa_error(XATTN_ERR_FORMAT, "layer %lld has %s biases but layer 0 %s", (long long)l,
                         has_bias ? "" : "no", c->bias ? "has" : "has none");
            break;
        }
        if (l == 0) {
            if (r[0].ndim != 2 || r[0].shape[1] <= 0 || r[0].shape[0] != 3 * r[0].shape[1]) {
                char got[128];
                xa_wref_shape(&r[0], got, sizeof got);
                s = xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s; expected (3*d_model, d_model)",
                             r[0].shown, got);
                break;
            }
            c->d_model = r[0].shape[1];
            if (r[4].ndim != 2 || r[4].shape[0] <= 0) {
                char got[128];
                xa_wref_shape(&r[4], got, sizeof got);
                s = xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s; expected (dim_feedforward, d_model)",
                             r[4].shown, got);
                break;
            }
            c->ff_dim = r[4].shape[0];
        }
        const int64_t d = c->d_model, ff = c->ff_dim;
        if ((s = check_shape(&r[0], 2, 3 * d, d, "d_model of the first layer")) ||
            (has_bias && (s = check_shape(&r[1], 1, 3 * d, 0, "d_model"))) ||
            (s = check_shape(&r[2], 2, d, d, "d_model")) ||
            (has_bias && (s = check_shape(&r[3], 1, d, 0, "d_model"))) ||
            (s = check_shape(&r[4], 2, ff, d, "linear1.weight of the first layer")) ||
            (has_bias && (s = check_shape(&r[5], 1, ff, 0, "dim_feedforward"))) ||
            (s = check_shape(&r[6], 2, d, ff, "dim_feedforward and d_model")) ||
            (has_bias && (s = check_shape(&r[7], 1, d, 0, "d_model"))) ||
            (s = check_shape(&r[8], 1, d, 0, "d_model")) ||
            (has_bias && (s = check_shape(&r[9], 1, d, 0, "d_model"))) ||
            (s = check_shape(&r[10], 1, d, 0, "d_model")) ||
            (has_bias && (s = check_shape(&r[11], 1, d, 0, "d_model"))))
            break;
    }
    xa_wref *fnw = &refs[L * NW], *fnb = &refs[L * NW + 1];
    if (!s && !single) {
        if (!(s = xa_wref_find(st, FN, prefix, "", "norm.weight", fnw)))
            s = xa_wref_find(st, FN, prefix, "", "norm.bias", fnb);
        if (!s && fnw->present != fnb->present && (c->bias || fnb->present))
            s = xa_wref_missing(fnw->present ? fnb : fnw,
                                "the final LayerNorm of nn.TransformerEncoder has weight and bias");
        if (!s && fnw->present && !(s = check_shape(fnw, 1, c->d_model, 0, "d_model")) &&
            fnb->present)
            s = check_shape(fnb, 1, c->d_model, 0, "d_model");
    }
    if (!s) s = resolve_options(st, opts, c);
    if (!s && c->d_model % c->heads != 0)
        s = xa_error(XATTN_ERR_SHAPE, "d_model %lld (from self_attn.in_proj_weight) is not divisible "
                                      "by heads %lld",
                     (long long)c->d_model, (long long)c->heads);
    if (!s) {
        c->head_dim = c->d_model / c->heads;
        c->final_norm = fnw->present;
        int64_t total = 0, nref = L * NW + 2;
        for (int64_t i = 0; i < nref; i++)
            if (refs[i].present && (i >= L * NW || i % NW < 12))
                total += (xa_wref_numel(&refs[i]) + 15) & ~(int64_t)15;
        m->block = xa_alloc((size_t)total * sizeof(float));
        m->layers = calloc((size_t)L, sizeof *m->layers);
        if (!m->block || !m->layers) s = xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN);
        int64_t off = 0;
        for (int64_t i = 0; i < nref && !s; i++) {
            if (!refs[i].present || (i < L * NW && i % NW >= 12)) continue;
            refs[i].dst = m->block + off;
            off += (xa_wref_numel(&refs[i]) + 15) & ~(int64_t)15;
            s = xa_wref_fetch(st, &refs[i]);
        }
    }
    if (!s) {
        for (int64_t l = 0; l < L; l++) {
            xa_wref *r = &refs[l * NW];
            joint_layer *y = &m->layers[l];
            y->w_in = r[0].dst;
            y->b_in = r[1].dst;
            y->w_out = r[2].dst;
            y->b_out = r[3].dst;
            y->w1 = r[4].dst;
            y->b1 = r[5].dst;
            y->w2 = r[6].dst;
            y->b2 = r[7].dst;
            y->n1w = r[8].dst;
            y->n1b = r[9].dst;
            y->n2w = r[10].dst;
            y->n2b = r[11].dst;
        }
        if (c->final_norm) {
            m->nw = fnw->dst;
            m->nb = fnb->dst;
        }
    }
    free(refs);
    if (s) {
        xattn_joint_free(m);
        return s;
    }
    xa_clear_error();
    *out = m;
    return XATTN_OK;
}

void xattn_joint_free(xattn_joint *m)
{
    if (!m) return;
    xa_free(m->block);
    free(m->layers);
    free(m);
}

void xattn_joint_get_config(const xattn_joint *m, xattn_joint_config *cfg)
{
    if (!cfg) return;
    if (!m) {
        memset(cfg, 0, sizeof *cfg);
        return;
    }
    *cfg = m->cfg;
}

/* ---------------------------------------------------------------------------------------- */
/* Forward                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* y += x over n values (residual). */
static void add_into(float *y, const float *x, int64_t n)
{
    xa_kern()->axpy(1.0f, x, y, n);
}

static void relu_inplace(float *x, int64_t n)
{
    for (int64_t t = 0; t < n; t++) x[t] = x[t] > 0.0f ? x[t] : 0.0f;
}

xattn_status xattn_joint_forward(const xattn_joint *m, const xattn_joint_inputs *in, float *out,
                                 float *context_out)
{
    const char *fn = "xattn_joint_forward";
    if (!m) return xa_error(XATTN_ERR_ARG, "%s: module is NULL", fn);
    if (!in) return xa_error(XATTN_ERR_ARG, "%s: inputs are NULL", fn);
    const xattn_joint_config *c = &m->cfg;
    const int64_t B = in->B, K = in->K, N = in->N;
    if (B <= 0 || K < 0 || N < 0 || K + N <= 0)
        return xa_error(XATTN_ERR_SHAPE, "%s: bad sizes B=%lld, K=%lld, N=%lld (need B >= 1 and "
                                         "K + N >= 1)",
                        fn, (long long)B, (long long)K, (long long)N);
    if ((K > 0 && (!in->x || !out)) || (N > 0 && (!in->context || !context_out)))
        return xa_error(XATTN_ERR_ARG, "%s: x/out (K > 0) and context/context_out (N > 0) must "
                                       "not be NULL",
                        fn);
    const int64_t d = c->d_model, ff = c->ff_dim, H = c->heads, dh = c->head_dim;
    const int64_t L = K + N;
    /* scratch: Y (R*d), Z (R*d), T (R*max(3d, ff)), A (R*d), keep (B*L) bytes */
    const int64_t lim = INT64_MAX / 16;
    int64_t wide = ff > 3 * d ? ff : 3 * d;
    if (B > lim / L || B * L > lim / (wide + 3 * d + 64))
        return xa_error(XATTN_ERR_NOMEM, "%s: scratch for B=%lld, K=%lld, N=%lld overflows", fn,
                        (long long)B, (long long)K, (long long)N);
    const int64_t R = B * L;
    size_t nY = ((size_t)(R * d) + 15) & ~(size_t)15;
    size_t nT = ((size_t)(R * wide) + 15) & ~(size_t)15;
    int masked = in->x_padding_mask || in->context_padding_mask;
    size_t bytes = (3 * nY + nT) * sizeof(float) + (masked ? (size_t)R : 0);
    float *scratch = xa_alloc(bytes);
    if (!scratch) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory (%zu bytes)", fn, bytes);
    float *Y = scratch, *Z = Y + nY, *A = Z + nY, *T = A + nY;
    uint8_t *keep = masked ? (uint8_t *)(T + nT) : NULL;

    for (int64_t b = 0; b < B; b++) {
        if (K) memcpy(Y + b * L * d, in->x + b * K * d, (size_t)(K * d) * sizeof(float));
        if (N) memcpy(Y + (b * L + K) * d, in->context + b * N * d, (size_t)(N * d) * sizeof(float));
        if (keep) {
            uint8_t *kr = keep + b * L;
            for (int64_t j = 0; j < K; j++)
                kr[j] = in->x_padding_mask ? !in->x_padding_mask[b * K + j] : 1;
            for (int64_t j = 0; j < N; j++)
                kr[K + j] = in->context_padding_mask ? !in->context_padding_mask[b * N + j] : 1;
        }
    }

    xa_attn at;
    memset(&at, 0, sizeof at);
    at.B = B;
    at.H = H;
    at.I = L;
    at.J = L;
    at.dh = dh;
    at.dv = dh;
    at.q = T;
    at.q_sb = L * 3 * d;
    at.q_sh = dh;
    at.q_si = 3 * d;
    at.k = T + d;
    at.k_sb = L * 3 * d;
    at.k_sh = dh;
    at.k_sj = 3 * d;
    at.v = T + 2 * d;
    at.v_sb = L * 3 * d;
    at.v_sh = dh;
    at.v_sj = 3 * d;
    at.out = A;
    at.o_sb = L * d;
    at.o_sh = dh;
    at.o_si = d;
    at.scale = 1.0f / sqrtf((float)dh);
    at.fill = XATTN_FILL_NEG_INF;
    at.kkeep = keep;
    at.kkeep_sb = L;
    at.fn = fn;

    const float eps = c->layer_norm_eps;
    xattn_status s = XATTN_OK;
    for (int64_t l = 0; l < c->layers && !s; l++) {
        const joint_layer *y = &m->layers[l];
        /* ---- self-attention block ---- */
        const float *src = Y;
        if (c->norm_first) {
            if ((s = xattn_layernorm(Y, R, d, y->n1w, y->n1b, eps, Z))) break;
            src = Z;
        }
        if ((s = xattn_linear(src, R, d, y->w_in, y->b_in, 3 * d, T))) break;
        if ((s = xa_attention(&at))) break;
        if ((s = xattn_linear(A, R, d, y->w_out, y->b_out, d, Z))) break;
        add_into(Y, Z, R * d);
        if (!c->norm_first && (s = xattn_layernorm(Y, R, d, y->n1w, y->n1b, eps, Y))) break;
        /* ---- feed-forward block ---- */
        src = Y;
        if (c->norm_first) {
            if ((s = xattn_layernorm(Y, R, d, y->n2w, y->n2b, eps, Z))) break;
            src = Z;
        }
        if ((s = xattn_linear(src, R, d, y->w1, y->b1, ff, T))) break;
        if (c->activation)
            s = xattn_gelu(T, R * ff, 0);
        else
            relu_inplace(T, R * ff);
        if (s) break;
        if ((s = xattn_linear(T, R, ff, y->w2, y->b2, d, A))) break;
        add_into(Y, A, R * d);
        if (!c->norm_first && (s = xattn_layernorm(Y, R, d, y->n2w, y->n2b, eps, Y))) break;
    }
    if (!s && m->nw) s = xattn_layernorm(Y, R, d, m->nw, m->nb, eps, Y);
    if (!s) {
        for (int64_t b = 0; b < B; b++) {
            if (K) memcpy(out + b * K * d, Y + b * L * d, (size_t)(K * d) * sizeof(float));
            if (N)
                memcpy(context_out + b * N * d, Y + (b * L + K) * d,
                       (size_t)(N * d) * sizeof(float));
        }
        xa_clear_error();
    }
    xa_free(scratch);
    return s;
}
