/*
 * M5: interlaced two-stream cross-attention decoder (2D-3D MIT, ICCV 2023), the InterlanceDecoder
 * of jimmy15923/mit models/sem_transformer.py, loaded by its state_dict names.
 *
 * Per block (SkipClsDecoderBlock), with q the stream being updated and v the other stream:
 *   q += proj(SelfAttn(LN1 q))                     qkv (3D, D) [+ bias], reshape (3, H, dh)
 *   q += proj(Attn(q_map LN_q q, k_map LN_v v, v_map LN_v v))   keys/values from token n_cls on
 *   q += fc2(GELU(fc1(LN2 q)))                     timm Mlp, GELU exact (erf)
 * Layer L updates x (voxel) when L is even and context (view) when L is odd (reference order),
 * or the other way round with context_first.
 *
 * forward: the two streams are copied into out / context_out and updated in place. Projections
 * go through xattn_linear / xattn_sgemm (residual adds by beta = 1), attention through
 * xa_attention reading heads in place with strides; the skipped class tokens are excluded by
 * pointing the key/value base at token n_cls (no copies). Logits, when asked for, are written
 * per (b, h) by xattn_sgemm over all keys.
 */
#include "base/base.h"
#include "kernels/kernels.h"
#include "modules/weights.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FN_LOAD "xattn_interlaced_load"
#define FN_FWD "xattn_interlaced_forward"

enum {
    W_N1W, W_N1B, W_QKVW, W_QKVB, W_SPW, W_SPB, W_NQW, W_NQB, W_NVW, W_NVB, W_QMW, W_QMB, W_KMW,
    W_KMB, W_VMW, W_VMB, W_CPW, W_CPB, W_N2W, W_N2B, W_F1W, W_F1B, W_F2W, W_F2B, W_COUNT
};

static const char *const W_NAMES[W_COUNT] = {
    "norm1.weight",      "norm1.bias",          "self_attn.qkv.weight", "self_attn.qkv.bias",
    "self_attn.proj.weight", "self_attn.proj.bias", "norm_q.weight",    "norm_q.bias",
    "norm_v.weight",     "norm_v.bias",         "attn.q_map.weight",    "attn.q_map.bias",
    "attn.k_map.weight", "attn.k_map.bias",     "attn.v_map.weight",    "attn.v_map.bias",
    "attn.proj.weight",  "attn.proj.bias",      "norm2.weight",         "norm2.bias",
    "mlp.fc1.weight",    "mlp.fc1.bias",        "mlp.fc2.weight",       "mlp.fc2.bias"};

typedef struct il_block {
    const float *w[W_COUNT]; /* NULL where absent (optional biases) */
} il_block;

struct xattn_interlaced {
    xattn_interlaced_config cfg;
    il_block *blocks;
    float *block; /* every weight, one allocation */
};

void xattn_interlaced_opts_init(xattn_interlaced_opts *o)
{
    if (!o) return;
    o->heads = 0;
    o->n_cls = -1;
    o->context_first = -1;
}

/* ---------------------------------------------------------------------------------------- */
/* Loading                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static int is_optional(int k)
{
    return k == W_QKVB || k == W_QMB || k == W_KMB || k == W_VMB;
}

/* Expected shape of weight k: rank and dims (D = dim, Hd = mlp hidden). */
static void want_shape(int k, int64_t D, int64_t Hd, int *nd, int64_t *s0, int64_t *s1)
{
    *nd = 1;
    *s1 = 0;
    switch (k) {
    case W_QKVW: *nd = 2; *s0 = 3 * D; *s1 = D; break;
    case W_QKVB: *s0 = 3 * D; break;
    case W_SPW: case W_QMW: case W_KMW: case W_VMW: case W_CPW: *nd = 2; *s0 = D; *s1 = D; break;
    case W_F1W: *nd = 2; *s0 = Hd; *s1 = D; break;
    case W_F1B: *s0 = Hd; break;
    case W_F2W: *nd = 2; *s0 = D; *s1 = Hd; break;
    default: *s0 = D; break;
    }
}

static xattn_status meta_int(const xattn_safetensors *st, const char *key, int64_t *v, int *found,
                             int allow_zero)
{
    const char *mv = xattn_st_meta_get(st, key);
    *found = 0;
    if (!mv) return XATTN_OK;
    int64_t h = xa_parse_positive(mv);
    int zero = !strcmp(mv, "0");
    if (h <= 0 && !(allow_zero && zero)) {
        char shown[48];
        return xa_error(XATTN_ERR_FORMAT, "%s: __metadata__ '%s' is \"%s\", not a %s integer",
                        FN_LOAD, key, xa_io_printable(mv, shown, sizeof shown),
                        allow_zero ? "non-negative" : "positive");
    }
    *v = zero ? 0 : h;
    *found = 1;
    return XATTN_OK;
}

static xattn_status resolve_opts(const xattn_safetensors *st, const xattn_interlaced_opts *o,
                                 xattn_interlaced_config *c)
{
    xattn_status s;
    int found;
    xattn_interlaced_opts d;
    xattn_interlaced_opts_init(&d);
    if (!o) o = &d;
    c->heads = 6;
    if (o->heads > 0) {
        c->heads = o->heads;
    } else {
        int64_t v = 0;
        if ((s = meta_int(st, "heads", &v, &found, 0))) return s;
        if (found) c->heads = v;
    }
    c->n_cls = 20;
    if (o->n_cls >= 0) {
        c->n_cls = o->n_cls;
    } else {
        int64_t v = 0;
        if ((s = meta_int(st, "n_cls", &v, &found, 1))) return s;
        if (!found && (s = meta_int(st, "num_classes", &v, &found, 1))) return s;
        if (found) c->n_cls = v;
    }
    c->context_first = 0;
    if (o->context_first >= 0) {
        c->context_first = o->context_first ? 1 : 0;
    } else {
        const char *mv = xattn_st_meta_get(st, "first");
        if (mv) {
            if (!strcmp(mv, "x") || !strcmp(mv, "voxel")) c->context_first = 0;
            else if (!strcmp(mv, "context") || !strcmp(mv, "view")) c->context_first = 1;
            else {
                char shown[48];
                return xa_error(XATTN_ERR_FORMAT,
                                "%s: __metadata__ 'first' is \"%s\"; expected \"x\" or \"context\"",
                                FN_LOAD, xa_io_printable(mv, shown, sizeof shown));
            }
        }
    }
    c->scale = 0.0f;
    const char *qs = xattn_st_meta_get(st, "qk_scale");
    if (qs && strcmp(qs, "None") != 0) {
        char *end = NULL;
        double v = strtod(qs, &end);
        if (!end || end == qs || *end || !isfinite(v) || v < 0) {
            char shown[48];
            return xa_error(XATTN_ERR_FORMAT, "%s: __metadata__ 'qk_scale' is \"%s\", not a number",
                            FN_LOAD, xa_io_printable(qs, shown, sizeof shown));
        }
        c->scale = (float)v; /* 0 falls back to head_dim^-0.5, as `qk_scale or ...` */
    }
    return XATTN_OK;
}

xattn_status xattn_interlaced_load(const xattn_safetensors *st, const char *prefix,
                                   const xattn_interlaced_opts *opts, xattn_interlaced **out)
{
    if (!out) return xa_error(XATTN_ERR_ARG, "%s: out is NULL", FN_LOAD);
    *out = NULL;
    if (!st) return xa_error(XATTN_ERR_ARG, "%s: safetensors handle is NULL", FN_LOAD);
    if (!prefix) prefix = "";
    char pp[XA_IO_NAME_CAP];
    xa_io_printable(prefix, pp, sizeof pp);

    /* depth: consecutive blocks.L.norm1.weight */
    int64_t depth = 0;
    for (;;) {
        char name[96];
        snprintf(name, sizeof name, "blocks.%lld.norm1.weight", (long long)depth);
        if (!xa_wref_has(st, prefix, name)) break;
        depth++;
        if (depth > 100000) break;
    }
    if (depth == 0)
        return xa_error(XATTN_ERR_NOT_FOUND,
                        "no interlaced decoder found: tensor '%sblocks.0.norm1.weight' is missing", pp);
    {
        xattn_status s0 = xa_stray_layer(st, prefix, "blocks.", depth, "norm1.weight");
        if (s0) return s0;
    }

    xattn_interlaced *m = calloc(1, sizeof *m);
    xa_wref *refs = calloc((size_t)depth * W_COUNT, sizeof *refs);
    if (!m || !refs) {
        free(m);
        free(refs);
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN_LOAD);
    }
    xattn_status s = XATTN_OK;
    xattn_interlaced_config *c = &m->cfg;
    int64_t D = 0, Hd = 0, total = 0;
    for (int64_t L = 0; L < depth && !s; L++) {
        char mid[48];
        snprintf(mid, sizeof mid, "blocks.%lld.", (long long)L);
        for (int k = 0; k < W_COUNT && !s; k++)
            s = xa_wref_find(st, FN_LOAD, prefix, mid, W_NAMES[k], &refs[L * W_COUNT + k]);
    }
    if (s) goto fail;
    /* sizes from blocks.0 */
    {
        const xa_wref *n1 = &refs[W_N1W], *f1 = &refs[W_F1W];
        if (n1->ndim != 1 || n1->shape[0] <= 0) {
            char got[128];
            s = xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s; expected (dim,)", n1->shown,
                         xa_wref_shape(n1, got, sizeof got));
            goto fail;
        }
        D = n1->shape[0];
        if (!f1->present) {
            s = xa_wref_missing(f1, "the MLP of the decoder block");
            goto fail;
        }
        if (f1->ndim != 2 || f1->shape[0] <= 0) {
            char got[128];
            s = xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s; expected (hidden, %lld)",
                         f1->shown, xa_wref_shape(f1, got, sizeof got), (long long)D);
            goto fail;
        }
        Hd = f1->shape[0];
    }
    c->qkv_bias = refs[W_QKVB].present;
    c->map_bias = refs[W_QMB].present;
    for (int64_t L = 0; L < depth; L++) {
        for (int k = 0; k < W_COUNT; k++) {
            xa_wref *t = &refs[L * W_COUNT + k];
            int want_present = !is_optional(k) || (k == W_QKVB ? c->qkv_bias : c->map_bias);
            if (!t->present) {
                if (want_present) {
                    s = xa_wref_missing(t, is_optional(k) ? "blocks.0 has this bias"
                                                          : "a SkipClsDecoderBlock weight");
                    goto fail;
                }
                continue;
            }
            if (!want_present) {
                s = xa_error(XATTN_ERR_FORMAT,
                             "tensor '%s' is present but blocks.0 has no such bias", t->shown);
                goto fail;
            }
            if ((s = xa_wref_check_float(t))) goto fail;
            int nd;
            int64_t s0, s1;
            want_shape(k, D, Hd, &nd, &s0, &s1);
            if (t->ndim != nd || t->shape[0] != s0 || (nd == 2 && t->shape[1] != s1)) {
                char got[128], want[128];
                int64_t ws[2] = {s0, s1};
                s = xa_error(XATTN_ERR_SHAPE,
                             "tensor '%s' has shape %s but dim %lld (from blocks.0.norm1.weight) "
                             "and hidden %lld (from blocks.0.mlp.fc1.weight) imply %s",
                             t->shown, xa_wref_shape(t, got, sizeof got), (long long)D,
                             (long long)Hd, xa_dims_str(nd, ws, want, sizeof want));
                goto fail;
            }
            total += (xa_wref_numel(t) + 15) & ~(int64_t)15;
        }
    }
    if ((s = resolve_opts(st, opts, c))) goto fail;
    if (D % c->heads != 0) {
        s = xa_error(XATTN_ERR_SHAPE, "%s: dim %lld (from %sblocks.0.norm1.weight) is not divisible "
                                      "by heads %lld",
                     FN_LOAD, (long long)D, pp, (long long)c->heads);
        goto fail;
    }
    c->dim = D;
    c->head_dim = D / c->heads;
    c->depth = depth;
    c->mlp_hidden = Hd;
    c->eps = 1e-5f;
    if (c->scale == 0.0f) c->scale = (float)(1.0 / sqrt((double)c->head_dim));

    m->blocks = calloc((size_t)depth, sizeof *m->blocks);
    m->block = xa_alloc((size_t)total * sizeof(float));
    if (!m->blocks || !m->block) {
        s = xa_error(XATTN_ERR_NOMEM, "%s: out of memory for %lld weights", FN_LOAD, (long long)total);
        goto fail;
    }
    {
        int64_t off = 0;
        for (int64_t L = 0; L < depth; L++)
            for (int k = 0; k < W_COUNT; k++) {
                xa_wref *t = &refs[L * W_COUNT + k];
                if (!t->present) continue;
                t->dst = m->block + off;
                off += (xa_wref_numel(t) + 15) & ~(int64_t)15;
                if ((s = xa_wref_fetch(st, t))) goto fail;
                m->blocks[L].w[k] = t->dst;
            }
    }
    free(refs);
    xa_clear_error();
    *out = m;
    return XATTN_OK;
fail:
    free(refs);
    xattn_interlaced_free(m);
    return s;
}

void xattn_interlaced_free(xattn_interlaced *m)
{
    if (!m) return;
    xa_free(m->block);
    free(m->blocks);
    free(m);
}

void xattn_interlaced_get_config(const xattn_interlaced *m, xattn_interlaced_config *c)
{
    if (!c) return;
    if (!m) {
        memset(c, 0, sizeof *c);
        return;
    }
    *c = m->cfg;
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

/* y (M, N) += x (M, K) W^T + b */
static xattn_status linear_add(const float *x, int64_t M, int64_t K, const float *W,
                               const float *b, int64_t N, float *y)
{
    xattn_status s = xattn_sgemm(0, 1, M, N, K, 1.0f, x, K, W, K, 1.0f, y, N);
    if (s || !b) return s;
    for (int64_t r = 0; r < M; r++) {
        float *row = y + r * N;
        xa_kern()->axpy(1.0f, b, row, N);
    }
    return XATTN_OK;
}

static void attn_common(xa_attn *a, int64_t B, int64_t H, int64_t dh, float scale)
{
    memset(a, 0, sizeof *a);
    a->B = B;
    a->H = H;
    a->dh = dh;
    a->dv = dh;
    a->scale = scale;
    a->fill = XATTN_FILL_NEG_INF;
    a->fn = FN_FWD;
}

/* One SkipClsDecoderBlock: q (B, Nq, D) updated in place from kv (B, Nk, D). */
static xattn_status block_forward(const xattn_interlaced_config *c, const il_block *bk, int64_t B,
                                  float *q, int64_t Nq, const float *kv, int64_t Nk,
                                  const il_scratch *sc, float *logits)
{
    const int64_t D = c->dim, H = c->heads, dh = c->head_dim, Hd = c->mlp_hidden;
    const int64_t Mq = B * Nq, Mk = B * Nk;
    const float *const *w = bk->w;
    xattn_status s;
    xa_attn a;

    /* ---- self-attention ---- */
    if ((s = xattn_layernorm(q, Mq, D, w[W_N1W], w[W_N1B], c->eps, sc->t)) ||
        (s = xattn_linear(sc->t, Mq, D, w[W_QKVW], w[W_QKVB], 3 * D, sc->big)))
        return s;
    attn_common(&a, B, H, dh, c->scale);
    a.I = Nq;
    a.J = Nq;
    a.q = sc->big;
    a.q_sb = Nq * 3 * D; a.q_sh = dh; a.q_si = 3 * D;
    a.k = sc->big + D;
    a.k_sb = Nq * 3 * D; a.k_sh = dh; a.k_sj = 3 * D;
    a.v = sc->big + 2 * D;
    a.v_sb = Nq * 3 * D; a.v_sh = dh; a.v_sj = 3 * D;
    a.out = sc->o;
    a.o_sb = Nq * D; a.o_sh = dh; a.o_si = D;
    if ((s = xa_attention(&a))) return s;
    if ((s = linear_add(sc->o, Mq, D, w[W_SPW], w[W_SPB], D, q))) return s;

    /* ---- cross-attention, keys/values from token n_cls on ---- */
    float *qc = sc->big, *kc = sc->big + Mq * D, *vc = kc + Mk * D;
    if ((s = xattn_layernorm(q, Mq, D, w[W_NQW], w[W_NQB], c->eps, sc->t)) ||
        (s = xattn_layernorm(kv, Mk, D, w[W_NVW], w[W_NVB], c->eps, sc->nv)) ||
        (s = xattn_linear(sc->t, Mq, D, w[W_QMW], w[W_QMB], D, qc)) ||
        (s = xattn_linear(sc->nv, Mk, D, w[W_KMW], w[W_KMB], D, kc)) ||
        (s = xattn_linear(sc->nv, Mk, D, w[W_VMW], w[W_VMB], D, vc)))
        return s;
    if (logits) {
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++)
                if ((s = xattn_sgemm(0, 1, Nq, Nk, dh, c->scale, qc + b * Nq * D + h * dh, D,
                                     kc + b * Nk * D + h * dh, D, 0.0f,
                                     logits + (b * H + h) * Nq * Nk, Nk)))
                    return s;
    }
    const int64_t Je = Nk - c->n_cls;
    if (Je <= 0) {
        /* softmax over no keys: the reference's product is an empty sum */
        memset(sc->o, 0, (size_t)Mq * D * sizeof(float));
    } else {
        attn_common(&a, B, H, dh, c->scale);
        a.I = Nq;
        a.J = Je;
        a.q = qc;
        a.q_sb = Nq * D; a.q_sh = dh; a.q_si = D;
        a.k = kc + c->n_cls * D;
        a.k_sb = Nk * D; a.k_sh = dh; a.k_sj = D;
        a.v = vc + c->n_cls * D;
        a.v_sb = Nk * D; a.v_sh = dh; a.v_sj = D;
        a.out = sc->o;
        a.o_sb = Nq * D; a.o_sh = dh; a.o_si = D;
        if ((s = xa_attention(&a))) return s;
    }
    if ((s = linear_add(sc->o, Mq, D, w[W_CPW], w[W_CPB], D, q))) return s;

    /* ---- MLP ---- */
    if ((s = xattn_layernorm(q, Mq, D, w[W_N2W], w[W_N2B], c->eps, sc->t)) ||
        (s = xattn_linear(sc->t, Mq, D, w[W_F1W], w[W_F1B], Hd, sc->h)) ||
        (s = xattn_gelu(sc->h, Mq * Hd, 0)) ||
        (s = linear_add(sc->h, Mq, Hd, w[W_F2W], w[W_F2B], D, q)))
        return s;
    return XATTN_OK;
}

xattn_status xattn_interlaced_forward(const xattn_interlaced *m, int64_t B, int64_t I, int64_t J,
                                      const float *x, const float *context, float *out,
                                      float *context_out, float *const *logits)
{
    if (!m) return xa_error(XATTN_ERR_ARG, "%s: module is NULL", FN_FWD);
    if (!x || !context) return xa_error(XATTN_ERR_ARG, "%s: x and context must not be NULL", FN_FWD);
    if (!out || !context_out)
        return xa_error(XATTN_ERR_ARG, "%s: out and context_out must not be NULL", FN_FWD);
    if (B <= 0 || I <= 0 || J <= 0)
        return xa_error(XATTN_ERR_ARG, "%s: sizes must be positive (B=%lld, I=%lld, J=%lld)", FN_FWD,
                        (long long)B, (long long)I, (long long)J);
    const xattn_interlaced_config *c = &m->cfg;
    const int64_t D = c->dim, Hd = c->mlp_hidden;
    const int64_t N = XA_MAX(I, J);
    int64_t rows, t, nx, nc, tot;
    if (xa_mul_ok(B, N, &rows) || xa_mul_ok(B * I, D, &nx) || xa_mul_ok(B * J, D, &nc) ||
        xa_mul_ok(rows, 6 * D + Hd + 80, &tot) || xa_mul_ok(tot, (int64_t)sizeof(float), &t) ||
        xa_mul_ok(B * c->heads, I, &t) || xa_mul_ok(t, J, &t) || t > INT64_MAX / 8)
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow (B=%lld, I=%lld, J=%lld)", FN_FWD,
                        (long long)B, (long long)I, (long long)J);

    const size_t rD = (((size_t)rows * (size_t)D) + 15) & ~(size_t)15;
    const size_t rH = (((size_t)rows * (size_t)Hd) + 15) & ~(size_t)15;
    float *scratch = xa_alloc((6 * rD + rH) * sizeof(float));
    if (!scratch) return XATTN_ERR_NOMEM;
    il_scratch sc;
    sc.t = scratch;
    sc.nv = sc.t + rD;
    sc.o = sc.nv + rD;
    sc.big = sc.o + rD;    /* 3 rD */
    sc.h = sc.big + 3 * rD;

    if (out != x) memmove(out, x, (size_t)nx * sizeof(float));
    if (context_out != context) memmove(context_out, context, (size_t)nc * sizeof(float));

    xattn_status s = XATTN_OK;
    for (int64_t L = 0; L < c->depth && !s; L++) {
        int x_queries = ((L & 1) == 0) != (c->context_first != 0);
        float *lg = logits ? logits[L] : NULL;
        if (x_queries)
            s = block_forward(c, &m->blocks[L], B, out, I, context_out, J, &sc, lg);
        else
            s = block_forward(c, &m->blocks[L], B, context_out, J, out, I, &sc, lg);
    }
    if (!s) xa_clear_error();
    xa_free(scratch);
    return s;
}
