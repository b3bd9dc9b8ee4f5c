/*
 * M6: multiscale multiview cross-attention, a documented composition (docs/multiview.md,
 * reference: MultiscaleMultiview in tests/reference/gen_multiview.py).
 *
 * Per stage s and view v (names under stages.s.views.v.):
 *   s > 0:  x = expand(AvgPool1d(2, 2)(x))  - fused into ONE GEMM: a pair of tokens (2t, 2t+1)
 *           is one row of width 2*C_{s-1} read in place, multiplied by 0.5*[W W] (built at load)
 *   self:   y = x + self_attn(norm1 x);  y += mlp(norm2 y)
 *   cross:  kv = concat_{u != v} y_u: cross_norm_kv writes its output straight into the
 *           concatenated layout (the one cheap concat per stage), then K and V come from ONE
 *           GEMM with rows C..3C of in_proj_weight; z = y + cross_attn(...); z += cross_mlp(...)
 * Projections are xattn_linear / xattn_sgemm (residuals through beta = 1), attention is one
 * xattn_sdpa call per block reading heads in place through strides.
 */
#include "base/base.h"
#include "kernels/kernels.h"
#include "modules/weights.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    EX_W, EX_B, N1_W, N1_B, SA_IW, SA_IB, SA_OW, SA_OB, N2_W, N2_B, M0_W, M0_B, M2_W, M2_B,
    CQ_W, CQ_B, CKV_W, CKV_B, CA_IW, CA_IB, CA_OW, CA_OB, C2_W, C2_B, CM0_W, CM0_B, CM2_W, CM2_B,
    NW
};

static const char *const WNAMES[NW] = {
    "expand.weight", "expand.bias", "norm1.weight", "norm1.bias", "self_attn.in_proj_weight",
    "self_attn.in_proj_bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
    "norm2.weight", "norm2.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
    "cross_norm_q.weight", "cross_norm_q.bias", "cross_norm_kv.weight", "cross_norm_kv.bias",
    "cross_attn.in_proj_weight", "cross_attn.in_proj_bias", "cross_attn.out_proj.weight",
    "cross_attn.out_proj.bias", "cross_norm2.weight", "cross_norm2.bias", "cross_mlp.0.weight",
    "cross_mlp.0.bias", "cross_mlp.2.weight", "cross_mlp.2.bias"};

typedef struct mv_view {
    const float *w[NW];  /* NULL when absent (optional tensors)            */
    const float *ex2;    /* (C_s, 2*C_{s-1}) = 0.5*[W W] of expand.weight  */
    int64_t hid, chid;   /* rows of mlp.0.weight, cross_mlp.0.weight        */
} mv_view;

struct xattn_multiview {
    xattn_multiview_config cfg;
    mv_view *vw; /* [s * views + v] */
    float *block;
};

/* ---------------------------------------------------------------------------------------- */
/* Loading                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static int has_sv(const xattn_safetensors *st, const char *prefix, int64_t s, int64_t v,
                  const char *name)
{
    char buf[XA_WREF_NAME_MAX];
    int n = snprintf(buf, sizeof buf, "stages.%lld.views.%lld.%s", (long long)s, (long long)v, name);
    if (n < 0 || (size_t)n >= sizeof buf) return 0;
    return xa_wref_has(st, prefix, buf);
}

static xattn_status check_shape(const xa_wref *t, int ndim, int64_t d0, int64_t d1,
                                const char *implied)
{
    xattn_status s = xa_wref_check_float(t);
    if (s != XATTN_OK) return s;
    if (t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1)) {
        char got[128], want[128];
        int64_t sh[2] = {d0, d1};
        xa_wref_shape(t, got, sizeof got);
        xa_dims_str(ndim, sh, want, sizeof want);
        return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s but %s implies %s", t->shown,
                        got, implied, want);
    }
    return XATTN_OK;
}

/* "4" or "2,4,8" into h[0 .. *n); 0 on a malformed list. */
static int parse_heads_list(const char *str, int64_t *h, int64_t cap, int64_t *n)
{
    *n = 0;
    const char *p = str;
    while (*p) {
        char num[32];
        size_t k = 0;
        while (*p && *p != ',' && k + 1 < sizeof num) num[k++] = *p++;
        num[k] = '\0';
        if (*p && *p != ',') return 0;
        int64_t v = xa_parse_positive(num);
        if (v <= 0 || *n >= cap) return 0;
        h[(*n)++] = v;
        if (*p == ',') {
            p++;
            if (!*p) return 0;
        }
    }
    return *n > 0;
}

static xattn_status load_impl(const xattn_safetensors *st, const char *prefix,
                              const xattn_multiview_opts *o, xattn_multiview *m, xa_wref **refs_out)
{
    xattn_multiview_config *c = &m->cfg;
    char pp[XA_IO_NAME_CAP];
    xa_io_printable(prefix, pp, sizeof pp);
    /* counts */
    int64_t S = 0, V = 0;
    while (S < XATTN_MULTIVIEW_MAX_STAGES + 1 && has_sv(st, prefix, S, 0, "self_attn.in_proj_weight")) S++;
    if (S == 0)
        return xa_error(XATTN_ERR_NOT_FOUND,
                        "no multiview module found: tensor '%sstages.0.views.0.self_attn.in_proj_weight' "
                        "is missing", pp);
    if (S > XATTN_MULTIVIEW_MAX_STAGES)
        return xa_error(XATTN_ERR_UNSUPPORTED, "more than %d stages are not supported",
                        XATTN_MULTIVIEW_MAX_STAGES);
    while (V < XATTN_MULTIVIEW_MAX_VIEWS + 1 && has_sv(st, prefix, 0, V, "self_attn.in_proj_weight")) V++;
    if (V > XATTN_MULTIVIEW_MAX_VIEWS)
        return xa_error(XATTN_ERR_UNSUPPORTED, "more than %d views are not supported",
                        XATTN_MULTIVIEW_MAX_VIEWS);
    if (V < 2)
        return xa_error(XATTN_ERR_NOT_FOUND,
                        "tensor '%sstages.0.views.1.self_attn.in_proj_weight' is missing (the "
                        "multiview module needs at least 2 views)", pp);
    c->views = V;
    c->stages = S;

    /* options */
    int64_t hl[XATTN_MULTIVIEW_MAX_STAGES], nh = 0;
    if (o && o->n_heads > 0) {
        if (!o->heads) return xa_error(XATTN_ERR_ARG, "xattn_multiview_load: opts->heads is NULL");
        if (o->n_heads != 1 && o->n_heads != S)
            return xa_error(XATTN_ERR_ARG, "xattn_multiview_load: %lld heads values given for %lld "
                            "stages (give 1 or %lld)", (long long)o->n_heads, (long long)S,
                            (long long)S);
        for (int64_t i = 0; i < o->n_heads; i++) {
            if (o->heads[i] <= 0)
                return xa_error(XATTN_ERR_ARG, "xattn_multiview_load: heads[%lld] = %lld is not "
                                "positive", (long long)i, (long long)o->heads[i]);
            hl[i] = o->heads[i];
        }
        nh = o->n_heads;
    } else {
        const char *mv = xattn_st_meta_get(st, "heads");
        if (!mv)
            return xa_error(XATTN_ERR_ARG, "the number of heads is not known: pass heads or store "
                            "__metadata__ {\"heads\": \"H\"} or {\"heads\": \"H0,H1,...\"} (one per "
                            "stage) in the file");
        char shown[64];
        if (!parse_heads_list(mv, hl, XATTN_MULTIVIEW_MAX_STAGES, &nh) || (nh != 1 && nh != S))
            return xa_error(XATTN_ERR_FORMAT, "__metadata__ 'heads' is \"%s\": expected one positive "
                            "integer or %lld comma-separated ones (one per stage)",
                            xa_io_printable(mv, shown, sizeof shown), (long long)S);
    }
    for (int64_t s = 0; s < S; s++) c->heads[s] = hl[nh == 1 ? 0 : s];
    c->eps = 1e-5f;
    if (o && o->eps > 0) {
        c->eps = (float)o->eps;
    } else if (xattn_st_meta_get(st, "eps")) {
        const char *e = xattn_st_meta_get(st, "eps");
        char *end = NULL;
        double d = strtod(e, &end);
        char shown[64];
        if (end == e || *end || !(d > 0) || !isfinite(d))
            return xa_error(XATTN_ERR_FORMAT, "__metadata__ 'eps' is \"%s\", not a positive number",
                            xa_io_printable(e, shown, sizeof shown));
        c->eps = (float)d;
    }
    c->gelu_tanh = 0;
    if (o && o->gelu >= 0) {
        c->gelu_tanh = o->gelu ? 1 : 0;
    } else if (xattn_st_meta_get(st, "gelu")) {
        const char *g = xattn_st_meta_get(st, "gelu");
        char shown[64];
        if (!strcmp(g, "tanh")) c->gelu_tanh = 1;
        else if (strcmp(g, "erf") && strcmp(g, "none"))
            return xa_error(XATTN_ERR_FORMAT, "__metadata__ 'gelu' is \"%s\": expected \"erf\", "
                            "\"none\" or \"tanh\"", xa_io_printable(g, shown, sizeof shown));
    }

    /* look up every tensor */
    xa_wref *refs = calloc((size_t)(S * V * NW), sizeof *refs);
    if (!refs) return xa_error(XATTN_ERR_NOMEM, "xattn_multiview_load: out of memory");
    *refs_out = refs;
    m->vw = calloc((size_t)(S * V), sizeof *m->vw);
    if (!m->vw) return xa_error(XATTN_ERR_NOMEM, "xattn_multiview_load: out of memory");
    xattn_status s_;
    int64_t extra = 0;
    for (int64_t s = 0; s < S; s++) {
        for (int64_t v = 0; v < V; v++) {
            char mid[96];
            snprintf(mid, sizeof mid, "stages.%lld.views.%lld.", (long long)s, (long long)v);
            xa_wref *r = refs + (s * V + v) * NW;
            for (int k = 0; k < NW; k++)
                if ((s_ = xa_wref_find(st, "xattn_multiview_load", prefix, mid, WNAMES[k], &r[k])))
                    return s_;
            static const int required[] = {SA_IW, SA_OW, M0_W, M2_W, CA_IW, CA_OW, CM0_W, CM2_W};
            for (size_t k = 0; k < sizeof required / sizeof required[0]; k++)
                if (!r[required[k]].present)
                    return xa_wref_missing(&r[required[k]], "a multiview stage needs it");
            if (s > 0 && !r[EX_W].present)
                return xa_wref_missing(&r[EX_W], "stages after the first widen channels with it");
            if (s == 0 && (r[EX_W].present || r[EX_B].present))
                return xa_error(XATTN_ERR_FORMAT, "tensor '%s' present: stage 0 has no expand layer",
                                r[EX_W].present ? r[EX_W].shown : r[EX_B].shown);
            /* widths */
            const xa_wref *iw = &r[SA_IW];
            if ((s_ = xa_wref_check_float(iw))) return s_;
            if (v == 0) {
                if (iw->ndim != 2 || iw->shape[1] <= 0 || iw->shape[0] != 3 * iw->shape[1]) {
                    char got[128];
                    xa_wref_shape(iw, got, sizeof got);
                    return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s; expected (3*C, C)",
                                    iw->shown, got);
                }
                c->dim[s] = iw->shape[1];
                if (c->dim[s] % c->heads[s] != 0)
                    return xa_error(XATTN_ERR_SHAPE, "stage %lld: width %lld (from '%s') is not "
                                    "divisible by heads %lld", (long long)s, (long long)c->dim[s],
                                    iw->shown, (long long)c->heads[s]);
            }
            const int64_t C = c->dim[s], Cp = s > 0 ? c->dim[s - 1] : 0;
            char implied[160];
            snprintf(implied, sizeof implied, "stage %lld width %lld", (long long)s, (long long)C);
            if ((s_ = check_shape(&r[SA_IW], 2, 3 * C, C, implied)) ||
                (s_ = check_shape(&r[CA_IW], 2, 3 * C, C, implied)) ||
                (s_ = check_shape(&r[SA_OW], 2, C, C, implied)) ||
                (s_ = check_shape(&r[CA_OW], 2, C, C, implied)))
                return s_;
            if (r[SA_IB].present && (s_ = check_shape(&r[SA_IB], 1, 3 * C, 0, implied))) return s_;
            if (r[CA_IB].present && (s_ = check_shape(&r[CA_IB], 1, 3 * C, 0, implied))) return s_;
            static const int vecC[] = {EX_B, N1_W, N1_B, SA_OB, N2_W, N2_B, M2_B, CQ_W, CQ_B,
                                       CKV_W, CKV_B, CA_OB, C2_W, C2_B, CM2_B};
            for (size_t k = 0; k < sizeof vecC / sizeof vecC[0]; k++)
                if (r[vecC[k]].present && (s_ = check_shape(&r[vecC[k]], 1, C, 0, implied)))
                    return s_;
            if (s > 0) {
                char imp2[160];
                snprintf(imp2, sizeof imp2, "stage widths %lld -> %lld", (long long)Cp, (long long)C);
                if ((s_ = check_shape(&r[EX_W], 2, C, Cp, imp2))) return s_;
                extra += (C * 2 * Cp + 15) & ~(int64_t)15;
            }
            /* MLPs */
            for (int k = 0; k < 2; k++) {
                const xa_wref *w0 = &r[k ? CM0_W : M0_W];
                if ((s_ = xa_wref_check_float(w0))) return s_;
                if (w0->ndim != 2 || w0->shape[0] <= 0) {
                    char got[128];
                    xa_wref_shape(w0, got, sizeof got);
                    return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s; expected (hidden, %lld)",
                                    w0->shown, got, (long long)C);
                }
                int64_t hid = w0->shape[0];
                if ((s_ = check_shape(w0, 2, hid, C, implied))) return s_;
                char imp3[200];
                snprintf(imp3, sizeof imp3, "%s with hidden %lld", implied, (long long)hid);
                if ((s_ = check_shape(&r[k ? CM2_W : M2_W], 2, C, hid, imp3))) return s_;
                const xa_wref *b0 = &r[k ? CM0_B : M0_B];
                if (b0->present && (s_ = check_shape(b0, 1, hid, 0, imp3))) return s_;
                if (k) m->vw[s * V + v].chid = hid;
                else m->vw[s * V + v].hid = hid;
            }
            if (v == 0) c->mlp_hidden[s] = m->vw[s * V].hid;
        }
    }
    /* one block: every present tensor, then the pooled expand weights */
    int64_t total = 0;
    for (int64_t i = 0; i < S * V * NW; i++)
        if (refs[i].present) total += (xa_wref_numel(&refs[i]) + 15) & ~(int64_t)15;
    total += extra;
    m->block = xa_alloc((size_t)total * sizeof(float));
    if (!m->block) return XATTN_ERR_NOMEM;
    int64_t off = 0;
    for (int64_t i = 0; i < S * V * NW; i++) {
        if (!refs[i].present) continue;
        refs[i].dst = m->block + off;
        off += (xa_wref_numel(&refs[i]) + 15) & ~(int64_t)15;
        if ((s_ = xa_wref_fetch(st, &refs[i]))) return s_;
        m->vw[i / NW].w[i % NW] = refs[i].dst;
    }
    for (int64_t s = 1; s < S; s++) {
        const int64_t C = c->dim[s], Cp = c->dim[s - 1];
        for (int64_t v = 0; v < V; v++) {
            mv_view *w = &m->vw[s * V + v];
            float *d = m->block + off;
            off += (C * 2 * Cp + 15) & ~(int64_t)15;
            for (int64_t r = 0; r < C; r++)
                for (int64_t k = 0; k < Cp; k++) {
                    float h = 0.5f * w->w[EX_W][r * Cp + k];
                    d[r * 2 * Cp + k] = h;
                    d[r * 2 * Cp + Cp + k] = h;
                }
            w->ex2 = d;
        }
    }
    return XATTN_OK;
}

xattn_status xattn_multiview_load(const xattn_safetensors *st, const char *prefix,
                                  const xattn_multiview_opts *opts, xattn_multiview **out)
{
    if (!out) return xa_error(XATTN_ERR_ARG, "xattn_multiview_load: out is NULL");
    *out = NULL;
    if (!st) return xa_error(XATTN_ERR_ARG, "xattn_multiview_load: safetensors handle is NULL");
    if (!prefix) prefix = "";
    xattn_multiview *m = calloc(1, sizeof *m);
    if (!m) return xa_error(XATTN_ERR_NOMEM, "xattn_multiview_load: out of memory");
    xa_wref *refs = NULL;
    xattn_status s = load_impl(st, prefix, opts, m, &refs);
    free(refs);
    if (s != XATTN_OK) {
        xattn_multiview_free(m);
        return s;
    }
    xa_clear_error();
    *out = m;
    return XATTN_OK;
}

void xattn_multiview_free(xattn_multiview *m)
{
    if (!m) return;
    xa_free(m->block);
    free(m->vw);
    free(m);
}

void xattn_multiview_get_config(const xattn_multiview *m, xattn_multiview_config *cfg)
{
    if (!cfg) return;
    if (!m) {
        memset(cfg, 0, sizeof *cfg);
        return;
    }
    *cfg = m->cfg;
}

xattn_status xattn_multiview_out_tokens(const xattn_multiview *m, int64_t n, int64_t *out_n)
{
    if (!m || !out_n) return xa_error(XATTN_ERR_ARG, "xattn_multiview_out_tokens: NULL argument");
    if (n <= 0)
        return xa_error(XATTN_ERR_ARG, "xattn_multiview_out_tokens: %lld tokens (must be positive)",
                        (long long)n);
    for (int64_t s = 1; s < m->cfg.stages; s++) {
        if (n < 2)
            return xa_error(XATTN_ERR_SHAPE, "a view with %lld token(s) at stage %lld cannot be "
                            "pooled (AvgPool1d(2, stride 2) needs at least 2)", (long long)n,
                            (long long)(s - 1));
        n /= 2;
    }
    *out_n = n;
    return XATTN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Forward                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* y[r, :] += b for r < rows (b may be NULL). */
static void add_bias(float *y, int64_t rows, int64_t n, const float *b)
{
    if (!b) return;
    const xa_kernels *k = xa_kern();
    for (int64_t r = 0; r < rows; r++) k->axpy(1.0f, b, y + r * n, n);
}

/* x (rows, C) += mlp(LN(x)): h (rows, C) and t (rows, hid) scratch. */
static xattn_status mlp_block(const xattn_multiview_config *c, float *x, int64_t rows, int64_t C,
                              const float *nw, const float *nb, const float *w0, const float *b0,
                              int64_t hid, const float *w2, const float *b2, float *h, float *t)
{
    xattn_status s;
    if ((s = xattn_layernorm(x, rows, C, nw, nb, c->eps, h)) ||
        (s = xattn_linear(h, rows, C, w0, b0, hid, t)) ||
        (s = xattn_gelu(t, rows * hid, c->gelu_tanh)) ||
        (s = xattn_sgemm(0, 1, rows, C, hid, 1.0f, t, hid, w2, hid, 1.0f, x, C)))
        return s;
    add_bias(x, rows, C, b2);
    return XATTN_OK;
}

static void sdpa_setup(xattn_sdpa_params *p, int64_t B, int64_t H, int64_t I, int64_t J,
                       int64_t dh, const float *q, int64_t q_ld, const float *k, const float *v,
                       int64_t kv_ld, float *o, int64_t o_ld)
{
    xattn_sdpa_init(p);
    p->B = B;
    p->H = H;
    p->I = I;
    p->J = J;
    p->dh = p->dv = dh;
    p->q = q;
    p->q_sb = I * q_ld;
    p->q_sh = dh;
    p->q_si = q_ld;
    p->k = k;
    p->k_sb = J * kv_ld;
    p->k_sh = dh;
    p->k_sj = kv_ld;
    p->v = v;
    p->v_sb = J * kv_ld;
    p->v_sh = dh;
    p->v_sj = kv_ld;
    p->out = o;
    p->o_sb = I * o_ld;
    p->o_sh = dh;
    p->o_si = o_ld;
}

xattn_status xattn_multiview_forward(const xattn_multiview *m, int64_t B, int64_t n_views,
                                     const int64_t *tokens, const float *const *x,
                                     float *const *out)
{
    if (!m) return xa_error(XATTN_ERR_ARG, "xattn_multiview_forward: module is NULL");
    if (!tokens || !x || !out)
        return xa_error(XATTN_ERR_ARG, "xattn_multiview_forward: tokens, x or out is NULL");
    const xattn_multiview_config *c = &m->cfg;
    const int64_t V = c->views, S = c->stages;
    if (n_views != V)
        return xa_error(XATTN_ERR_SHAPE, "xattn_multiview_forward: %lld views given but the module "
                        "has %lld", (long long)n_views, (long long)V);
    if (B <= 0) return xa_error(XATTN_ERR_ARG, "xattn_multiview_forward: batch %lld must be positive",
                                (long long)B);
    int64_t n[XATTN_MULTIVIEW_MAX_STAGES][XATTN_MULTIVIEW_MAX_VIEWS];
    for (int64_t v = 0; v < V; v++) {
        if (!x[v] || !out[v])
            return xa_error(XATTN_ERR_ARG, "xattn_multiview_forward: x[%lld] or out[%lld] is NULL",
                            (long long)v, (long long)v);
        if (tokens[v] <= 0)
            return xa_error(XATTN_ERR_ARG, "xattn_multiview_forward: view %lld has %lld tokens",
                            (long long)v, (long long)tokens[v]);
        n[0][v] = tokens[v];
        for (int64_t s = 1; s < S; s++) {
            if (n[s - 1][v] < 2)
                return xa_error(XATTN_ERR_SHAPE, "xattn_multiview_forward: view %lld has %lld "
                                "token(s) at stage %lld, which AvgPool1d(2, stride 2) cannot pool",
                                (long long)v, (long long)n[s - 1][v], (long long)(s - 1));
            n[s][v] = n[s - 1][v] / 2;
        }
    }
    /* scratch sizes (double first, for overflow) */
    double cap[XATTN_MULTIVIEW_MAX_VIEWS] = {0};
    double mh = 0, mqkv = 0, mt = 0, mkvin = 0, mkv = 0, tot = 0;
    for (int64_t s = 0; s < S; s++) {
        const double C = (double)c->dim[s];
        double ntot = 0;
        for (int64_t v = 0; v < V; v++) ntot += (double)n[s][v];
        for (int64_t v = 0; v < V; v++) {
            const mv_view *w = &m->vw[s * V + v];
            double rows = (double)B * (double)n[s][v];
            double M = (double)B * (ntot - (double)n[s][v]);
            cap[v] = fmax(cap[v], rows * C);
            mh = fmax(mh, rows * C);
            mqkv = fmax(mqkv, rows * 3 * C);
            mt = fmax(mt, rows * (double)XA_MAX(w->hid, w->chid));
            mkvin = fmax(mkvin, M * C);
            mkv = fmax(mkv, M * 2 * C);
        }
    }
    for (int64_t v = 0; v < V; v++) tot += 2 * (cap[v] + 16);
    tot += 2 * (mh + 16) + mqkv + mt + mkvin + mkv + 64;
    if (tot * 4.0 > (double)(SIZE_MAX / 4) || tot > 9e15)
        return xa_error(XATTN_ERR_NOMEM, "xattn_multiview_forward: scratch for batch %lld overflows",
                        (long long)B);
    size_t off = 0;
    size_t o_cur[XATTN_MULTIVIEW_MAX_VIEWS], o_nxt[XATTN_MULTIVIEW_MAX_VIEWS];
#define MV_TAKE(n_) (off += ((size_t)(n_) + 15) & ~(size_t)15, off - (((size_t)(n_) + 15) & ~(size_t)15))
    for (int64_t v = 0; v < V; v++) {
        o_cur[v] = MV_TAKE(cap[v]);
        o_nxt[v] = MV_TAKE(cap[v]);
    }
    size_t o_h = MV_TAKE(mh), o_o = MV_TAKE(mh), o_qkv = MV_TAKE(mqkv), o_t = MV_TAKE(mt),
           o_kvin = MV_TAKE(mkvin), o_kv = MV_TAKE(mkv);
#undef MV_TAKE
    float *scratch = xa_alloc(off * sizeof(float));
    if (!scratch) return XATTN_ERR_NOMEM;
    float *cur[XATTN_MULTIVIEW_MAX_VIEWS], *nxt[XATTN_MULTIVIEW_MAX_VIEWS];
    for (int64_t v = 0; v < V; v++) {
        cur[v] = scratch + o_cur[v];
        nxt[v] = scratch + o_nxt[v];
    }
    float *h = scratch + o_h, *ob = scratch + o_o, *qkv = scratch + o_qkv, *t = scratch + o_t;
    float *kvin = scratch + o_kvin, *kv = scratch + o_kv;
    xattn_status st = XATTN_OK;
    xattn_sdpa_params p;

    for (int64_t v = 0; v < V; v++)
        memcpy(cur[v], x[v], (size_t)(B * n[0][v] * c->dim[0]) * sizeof(float));

    for (int64_t s = 0; s < S; s++) {
        const int64_t C = c->dim[s], H = c->heads[s], dh = C / H;
        /* ---- pooling + expand: one GEMM over token pairs read in place ---- */
        if (s > 0) {
            const int64_t Cp = c->dim[s - 1];
            for (int64_t v = 0; v < V; v++) {
                const mv_view *w = &m->vw[s * V + v];
                const int64_t np = n[s - 1][v], nn = n[s][v];
                if (np % 2 == 0) {
                    st = xattn_sgemm(0, 1, B * nn, C, 2 * Cp, 1.0f, cur[v], 2 * Cp, w->ex2, 2 * Cp,
                                     0.0f, nxt[v], C);
                } else {
                    for (int64_t b = 0; b < B && !st; b++)
                        st = xattn_sgemm(0, 1, nn, C, 2 * Cp, 1.0f, cur[v] + b * np * Cp, 2 * Cp,
                                         w->ex2, 2 * Cp, 0.0f, nxt[v] + b * nn * C, C);
                }
                if (st) goto done;
                add_bias(nxt[v], B * nn, C, w->w[EX_B]);
                float *tmp = cur[v];
                cur[v] = nxt[v];
                nxt[v] = tmp;
            }
        }
        /* ---- self blocks (in place on cur) ---- */
        for (int64_t v = 0; v < V; v++) {
            const mv_view *w = &m->vw[s * V + v];
            const int64_t N = n[s][v], rows = B * N;
            if ((st = xattn_layernorm(cur[v], rows, C, w->w[N1_W], w->w[N1_B], c->eps, h)) ||
                (st = xattn_linear(h, rows, C, w->w[SA_IW], w->w[SA_IB], 3 * C, qkv)))
                goto done;
            sdpa_setup(&p, B, H, N, N, dh, qkv, 3 * C, qkv + C, qkv + 2 * C, 3 * C, ob, C);
            if ((st = xattn_sdpa(&p)) ||
                (st = xattn_sgemm(0, 1, rows, C, C, 1.0f, ob, C, w->w[SA_OW], C, 1.0f, cur[v], C)))
                goto done;
            add_bias(cur[v], rows, C, w->w[SA_OB]);
            if ((st = mlp_block(c, cur[v], rows, C, w->w[N2_W], w->w[N2_B], w->w[M0_W], w->w[M0_B],
                                w->hid, w->w[M2_W], w->w[M2_B], h, t)))
                goto done;
        }
        /* ---- cross blocks: read cur (self outputs), write nxt ---- */
        int64_t ntot = 0;
        for (int64_t v = 0; v < V; v++) ntot += n[s][v];
        for (int64_t v = 0; v < V; v++) {
            const mv_view *w = &m->vw[s * V + v];
            const int64_t N = n[s][v], rows = B * N, M = ntot - N;
            /* cross_norm_kv straight into the concatenated (B, M, C) layout */
            for (int64_t b = 0; b < B; b++) {
                int64_t at = 0;
                for (int64_t u = 0; u < V; u++) {
                    if (u == v) continue;
                    if ((st = xattn_layernorm(cur[u] + b * n[s][u] * C, n[s][u], C, w->w[CKV_W],
                                              w->w[CKV_B], c->eps, kvin + (b * M + at) * C)))
                        goto done;
                    at += n[s][u];
                }
            }
            if ((st = xattn_linear(kvin, B * M, C, w->w[CA_IW] + C * C,
                                   w->w[CA_IB] ? w->w[CA_IB] + C : NULL, 2 * C, kv)) ||
                (st = xattn_layernorm(cur[v], rows, C, w->w[CQ_W], w->w[CQ_B], c->eps, h)) ||
                (st = xattn_linear(h, rows, C, w->w[CA_IW], w->w[CA_IB], C, qkv)))
                goto done;
            sdpa_setup(&p, B, H, N, M, dh, qkv, C, kv, kv + C, 2 * C, ob, C);
            memcpy(nxt[v], cur[v], (size_t)(rows * C) * sizeof(float));
            if ((st = xattn_sdpa(&p)) ||
                (st = xattn_sgemm(0, 1, rows, C, C, 1.0f, ob, C, w->w[CA_OW], C, 1.0f, nxt[v], C)))
                goto done;
            add_bias(nxt[v], rows, C, w->w[CA_OB]);
            if ((st = mlp_block(c, nxt[v], rows, C, w->w[C2_W], w->w[C2_B], w->w[CM0_W],
                                w->w[CM0_B], w->chid, w->w[CM2_W], w->w[CM2_B], h, t)))
                goto done;
        }
        for (int64_t v = 0; v < V; v++) {
            float *tmp = cur[v];
            cur[v] = nxt[v];
            nxt[v] = tmp;
        }
    }
    for (int64_t v = 0; v < V; v++)
        memcpy(out[v], cur[v], (size_t)(B * n[S - 1][v] * c->dim[S - 1]) * sizeof(float));
    xa_clear_error();
done:
    xa_free(scratch);
    return st;
}
