/*
 * Multiscale multiview cross-attention, a documented composition (docs/multiview.md; the
 * reference is MultiscaleMultiview(views, dims, heads, hiddens, eps=1e-5, gelu="none") in
 * tests/reference/gen_multiview.py).
 *
 * Per stage s and view v (names under stages.s.views.v.):
 *   s > 0:  x = expand(AvgPool1d(2, 2)(x))  - fused into ONE linear map: a pair of tokens
 *           (2t, 2t+1) is one row of width 2*C_{s-1} read in place, multiplied by 0.5*[W W]
 *           (built when the module is bound)
 *   self:   y = x + self_attn(norm1 x);  y += mlp(norm2 y)
 *   cross:  kv = concat_{u != v} y_u: cross_norm_kv writes its output straight into the
 *           concatenated layout (the one cheap concat per stage), then K and V come from ONE
 *           linear map with rows C..3C of in_proj_weight; z = y + cross_attn(...);
 *           z += cross_mlp(...)
 * Residuals are added by the projections themselves (xa_op_linear accumulating), attention is
 * one fused call per block reading heads in place through strides.
 *
 * Backward (the registry's module gradients): every parameter and every view; what the forward
 * keeps and what is recomputed is described above the backward's code.
 *
 * Loading: stages and views are counted from the names; each stage's width comes from view 0's
 * self_attn.in_proj_weight and each view's MLP widths from its own mlp.0 / cross_mlp.0 weights,
 * bound into a per-view config that instantiates the view's parameter table. The constructor's
 * list arguments (dims, heads, hiddens) are lists of integers, which the core's scalar fields do
 * not hold: this file parses them, keeps the first value and the whole list (in the detail text)
 * in the fields, and records each stage's heads in the scalar fields heads.0, heads.1, ... that
 * the saved __metadata__ carries.
 */
#include "core/registry.h"
#include "io/io_internal.h"
#include "kernels/op_multiview.h"
#include "kernels/ops.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_S XATTN_MULTIVIEW_MAX_STAGES
#define MAX_V XATTN_MULTIVIEW_MAX_VIEWS
/* views the named forward takes: B, N0 .. N10 and M0 .. M10 fill the registry's size symbols */
#define NAMED_VIEWS 11

static const char *FN_LOAD = "xattn_multiview_load";
static const char *FN_FWD = "xattn_multiview_forward";

/* ---------------------------------------------------------------------------------------- */
/* Fields and parameter tables                                                              */
/* ---------------------------------------------------------------------------------------- */

static const char *const GELU[] = {"erf", "tanh", "none", NULL};

#define STAGE_HEADS(s)                                                                             \
    {                                                                                              \
        "heads." #s, XA_T_INT, XA_F_OPTIONAL, 0, 1, 1e15, NULL, NULL,                              \
            "heads of stage " #s " (as saved; give heads)"                                         \
    }

enum { F_VIEWS, F_DIMS, F_HEADS, F_HIDDENS, F_EPS, F_GELU, F_STAGES, F_IN, F_OUT, F_HEADS0 };
#define F_N (F_HEADS0 + MAX_S)

static const xa_field fields[F_N] = {
    {"views", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED, 0, 2, MAX_V, NULL, NULL,
     "number of views (counted from the names)"},
    {"dims", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED | XA_F_NOMETA, 0, 1, 1e15, NULL, NULL,
     "widths of the stages, a list (\"96,192,384\"; from the shapes when loading)"},
    {"heads", XA_T_INT, XA_F_OPTIONAL | XA_F_NOMETA, 0, 1, 1e15, NULL, NULL,
     "heads per stage (\"2,4,8\", or one for all), required: here or __metadata__ 'heads'"},
    {"hiddens", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED | XA_F_NOMETA, 0, 1, 1e15, NULL, NULL,
     "MLP hidden widths, a list (\"384,768,1536\"; from the shapes when loading)"},
    {"eps", XA_T_REAL, XA_F_TRACELESS, 1e-5, 1e-30, 1e300, NULL, NULL, "LayerNorm eps"},
    {"gelu", XA_T_ENUM, XA_F_TRACELESS, 0, 0, 0, GELU, NULL,
     "GELU form of the MLPs (none: nn.GELU's name for erf)"},
    {"stages", XA_T_INT, XA_F_DERIVED, 0, 1, MAX_S, NULL, NULL, "number of stages"},
    {"in_dim", XA_T_INT, XA_F_DERIVED, 0, 1, 1e15, NULL, NULL, "width of the inputs (C_0)"},
    {"out_dim", XA_T_INT, XA_F_DERIVED, 0, 1, 1e15, NULL, NULL, "width of the outputs"},
    STAGE_HEADS(0),
    STAGE_HEADS(1),
    STAGE_HEADS(2),
    STAGE_HEADS(3),
    STAGE_HEADS(4),
    STAGE_HEADS(5),
    STAGE_HEADS(6),
    STAGE_HEADS(7),
    STAGE_HEADS(8),
    STAGE_HEADS(9),
    STAGE_HEADS(10),
    STAGE_HEADS(11),
    STAGE_HEADS(12),
    STAGE_HEADS(13),
    STAGE_HEADS(14),
    STAGE_HEADS(15),
};

/* The config of one view of one stage: the shapes of its parameter table. */
enum { SV_DIM, SV_HIDDEN, SV_CHIDDEN, SV_CIN, SV_N };
static const xa_field sv_fields[SV_N] = {
    {"dim", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED, 0, 1, 1e15, NULL, NULL, "width of the stage"},
    {"hidden", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED, 0, 1, 1e15, NULL, NULL, "mlp hidden width"},
    {"cross_hidden", XA_T_INT, XA_F_SHAPE | XA_F_REQUIRED, 0, 1, 1e15, NULL, NULL,
     "cross_mlp hidden width"},
    {"cin", XA_T_INT, XA_F_DERIVED, 0, 1, 1e15, NULL, NULL, "width of the previous stage"},
};

/* The tensors that tell a view's widths. */
static const xa_pspec anchors[] = {
    {"self_attn.in_proj_weight", "3*dim,dim", NULL, 0, XA_INIT_XAVIER, NULL,
     "the self-attention's packed q/k/v projection; a multiview stage needs it"},
    {"mlp.0.weight", "hidden,dim", NULL, 0, XA_INIT_LINEAR, NULL,
     "the self block's first MLP layer; a multiview stage needs it"},
    {"cross_mlp.0.weight", "cross_hidden,dim", NULL, 0, XA_INIT_LINEAR, NULL,
     "the cross block's first MLP layer; a multiview stage needs it"},
};

/* nn.MultiheadAttention: xavier_uniform in_proj_weight, zero in_proj_bias and out_proj.bias,
 * out_proj.weight as nn.Linear's; nn.LayerNorm: ones and zeros. Biases and norms may be
 * absent (a module built without them). */
#define NORM(n, w)                                                                                 \
    {n ".weight", "dim", NULL, XA_P_OPT, XA_INIT_ONES, NULL, w " (LayerNorm weight)"},             \
    {                                                                                              \
        n ".bias", "dim", NULL, XA_P_OPT, XA_INIT_ZEROS, NULL, w " (LayerNorm bias)"               \
    }
#define ATTN(n, w)                                                                                   \
    {n ".in_proj_weight",                                                                            \
     "3*dim,dim",                                                                                    \
     NULL,                                                                                           \
     XA_P_LIN,                                                                                       \
     XA_INIT_XAVIER,                                                                                 \
     NULL,                                                                                           \
     w "'s packed q/k/v projection; a multiview stage needs it"},                                    \
        {n ".in_proj_bias", "3*dim", NULL, XA_P_OPT, XA_INIT_ZEROS, NULL, w "'s packed q/k/v bias"}, \
        {n ".out_proj.weight",                                                                       \
         "dim,dim",                                                                                  \
         NULL,                                                                                       \
         XA_P_LIN,                                                                                   \
         XA_INIT_LINEAR,                                                                             \
         NULL,                                                                                       \
         w "'s output projection; a multiview stage needs it"},                                      \
    {                                                                                                \
        n ".out_proj.bias", "dim", NULL, XA_P_OPT, XA_INIT_ZEROS, NULL, w "'s output bias"           \
    }
#define MLP(n, h, w)                                                                               \
    {n ".0.weight",                                                                                \
     h ",dim",                                                                                     \
     NULL,                                                                                         \
     XA_P_LIN,                                                                                     \
     XA_INIT_LINEAR,                                                                               \
     NULL,                                                                                         \
     w "'s first layer; a multiview stage needs it"},                                              \
        {n ".0.bias", h, NULL, XA_P_OPT, XA_INIT_BIAS, "dim", w "'s first bias"},                  \
        {n ".2.weight",                                                                            \
         "dim," h,                                                                                 \
         NULL,                                                                                     \
         XA_P_LIN,                                                                                 \
         XA_INIT_LINEAR,                                                                           \
         NULL,                                                                                     \
         w "'s second layer; a multiview stage needs it"},                                         \
    {                                                                                              \
        n ".2.bias", "dim", NULL, XA_P_OPT, XA_INIT_BIAS, h, w "'s second bias"                    \
    }

enum {
    P_N1W,
    P_N1B,
    P_SAIW,
    P_SAIB,
    P_SAOW,
    P_SAOB,
    P_N2W,
    P_N2B,
    P_M0W,
    P_M0B,
    P_M2W,
    P_M2B,
    P_CQW,
    P_CQB,
    P_CKVW,
    P_CKVB,
    P_CAIW,
    P_CAIB,
    P_CAOW,
    P_CAOB,
    P_C2W,
    P_C2B,
    P_CM0W,
    P_CM0B,
    P_CM2W,
    P_CM2B,
    P_N
};
/* One view of one stage, in the reference's state_dict order (ViewStage). */
static const xa_pspec view_table[P_N] = {
    NORM("norm1", "the self block's norm"),
    ATTN("self_attn", "the self-attention"),
    NORM("norm2", "the self block's MLP norm"),
    MLP("mlp", "hidden", "the self block's MLP"),
    NORM("cross_norm_q", "the cross block's query norm"),
    NORM("cross_norm_kv", "the cross block's key/value norm"),
    ATTN("cross_attn", "the cross-attention"),
    NORM("cross_norm2", "the cross block's MLP norm"),
    MLP("cross_mlp", "cross_hidden", "the cross block's MLP"),
};
/* Stages after the first: nn.Linear(C_{s-1}, C_s) on the pooled tokens, first in the view. */
enum { E_W, E_B, E_N };
static const xa_pspec expand_table[E_N] = {
    {"expand.weight", "dim,cin", NULL, 0, XA_INIT_LINEAR, NULL,
     "stages after the first widen channels with it"},
    {"expand.bias", "dim", NULL, XA_P_OPT, XA_INIT_BIAS, "cin", "the widening's bias"},
};

typedef struct mv_view {
    const float *w[P_N]; /* NULL when absent (optional tensors)            */
    xa_wt wt[P_N];       /* the same as the op layer reads them (linear weights as kept) */
    const float *ex_b;   /* expand.bias, or NULL                           */
    const float *ex2;    /* (C_s, 2*C_{s-1}) = 0.5*[W W] of expand.weight  */
    int64_t hid, chid;   /* rows of mlp.0.weight, cross_mlp.0.weight        */
    int p0, e0;          /* parameter index of norm1.weight, expand.weight  */
} mv_view;

struct xattn_multiview {
    xa_mod core;
    xattn_multiview_config cfg;
    char dim_src[MAX_S][XA_HOW_CAP]; /* where each stage's width came from (messages) */
    mv_view *vw;                     /* [s * views + v]                               */
    float *pair;                     /* the pooled expand weights                     */
};

/* ---------------------------------------------------------------------------------------- */
/* Building: the list options, counts, widths, heads, tables                                */
/* ---------------------------------------------------------------------------------------- */

enum { L_DIMS, L_HEADS, L_HIDDENS, L_N };
static const int LIST_FIELD[L_N] = {F_DIMS, F_HEADS, F_HIDDENS};
static const char *const LIST_WANT =
    "a positive integer or a comma-separated list of them (one per stage, at most 16)";

typedef struct mv_list {
    const char *text; /* the option's value, or NULL when not given */
    int64_t v[MAX_S];
    int n;
} mv_list;

/* "8" or "8,16,32": positive integers (the core's strict parser) into v; 0 when malformed. */
static int parse_list(const char *s, int64_t *v, int *n)
{
    *n = 0;
    for (const char *p = s ? s : ""; p;) {
        size_t k = strcspn(p, ",");
        char num[32];
        if (k == 0 || k >= sizeof num || *n >= MAX_S) return 0;
        memcpy(num, p, k);
        num[k] = '\0';
        if (!xa_parse_int(num, &v[*n]) || v[*n] < 1) return 0;
        (*n)++;
        p = p[k] ? p + k + 1 : NULL;
    }
    return 1;
}

/* "8,16" into buf. */
static const char *list_text(const int64_t *v, int64_t n, char *buf, size_t cap)
{
    size_t off = 0;
    buf[0] = '\0';
    for (int64_t i = 0; i < n && off < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%lld", i ? "," : "", (long long)v[i]);
    return buf;
}

/* Takes the list options out of opts (parsed into L) and copies the others into rest. */
static xattn_status take_lists(const xa_kv *opts, size_t n_opts, mv_list *L, xa_kv *rest,
                               size_t *n_rest)
{
    *n_rest = 0;
    for (size_t k = 0; k < n_opts; k++) {
        int l = L_N;
        for (int i = 0; i < L_N && opts[k].key; i++)
            if (!strcmp(opts[k].key, fields[LIST_FIELD[i]].name)) l = i;
        if (l == L_N) {
            rest[(*n_rest)++] = opts[k];
            continue;
        }
        char shown[64];
        if (L[l].text)
            return xa_error(XATTN_ERR_ARG, "%s: option '%s' given twice", FN_LOAD, opts[k].key);
        if (!parse_list(opts[k].value, L[l].v, &L[l].n))
            return xa_error(
                XATTN_ERR_ARG, "%s: option '%s' is \"%s\", not %s", FN_LOAD, opts[k].key,
                xa_io_printable(opts[k].value ? opts[k].value : "", shown, sizeof shown),
                LIST_WANT);
        L[l].text = opts[k].value;
    }
    return XATTN_OK;
}

/* Counts stages and views from the names (loading). */
static xattn_status count_layout(xattn_multiview *m, const xattn_safetensors *st,
                                 const char *prefix)
{
    char pp[XA_IO_NAME_CAP], stem[64];
    xa_io_printable(prefix, pp, sizeof pp);
    int64_t S = 0, V = 0, Vs = 0;
    xattn_status s =
        xa_count_layers(st, prefix, "stages.", "views.0.self_attn.in_proj_weight", MAX_S, &S);
    if (s) return s;
    if (S == 0)
        return xa_error(XATTN_ERR_NOT_FOUND,
                        "no multiview module found: tensor "
                        "'%sstages.0.views.0.self_attn.in_proj_weight' is missing",
                        pp);
    if (S > MAX_S)
        return xa_error(XATTN_ERR_UNSUPPORTED, "more than %d stages are not supported", MAX_S);
    if ((s = xa_count_layers(st, prefix, "stages.0.views.", "self_attn.in_proj_weight", MAX_V, &V)))
        return s;
    if (V > MAX_V)
        return xa_error(XATTN_ERR_UNSUPPORTED, "more than %d views are not supported", MAX_V);
    if (V < 2)
        return xa_error(XATTN_ERR_NOT_FOUND,
                        "tensor '%sstages.0.views.1.self_attn.in_proj_weight' "
                        "is missing (the multiview module needs at least 2 views)",
                        pp);
    for (int64_t k = 1; k < S; k++) {
        snprintf(stem, sizeof stem, "stages.%lld.views.", (long long)k);
        if ((s = xa_count_layers(st, prefix, stem, "self_attn.in_proj_weight", MAX_V, &Vs)))
            return s;
        if (Vs > V)
            return xa_error(XATTN_ERR_FORMAT,
                            "tensor '%s%s%lld.self_attn.in_proj_weight' is "
                            "present but stage 0 has %lld views, so the module would ignore it",
                            pp, stem, (long long)V, (long long)V);
    }
    m->cfg.stages = S;
    m->cfg.views = V;
    xa_cfg_set(&m->core.cfg, F_VIEWS, (double)V, XA_FROM_SHAPE,
               "count of '%sstages.0.views.N.self_attn.in_proj_weight'", pp);
    return XATTN_OK;
}

/* Stages, widths and MLP widths of a new module (creating): from the options dims and
 * hiddens (when not given, the resolution that follows says so). */
static xattn_status list_dims(xattn_multiview *m, const mv_list *L)
{
    const mv_list *d = &L[L_DIMS], *h = &L[L_HIDDENS];
    if (!d->text) return XATTN_OK;
    m->cfg.stages = d->n;
    memcpy(m->cfg.dim, d->v, (size_t)d->n * sizeof(int64_t));
    for (int k = 0; k < d->n; k++) snprintf(m->dim_src[k], sizeof m->dim_src[k], "option 'dims'");
    xa_cfg_set(&m->core.cfg, F_DIMS, (double)d->v[0], XA_FROM_OPTION, "option");
    if (!h->text) return XATTN_OK;
    if (h->n != d->n)
        return xa_error(XATTN_ERR_ARG,
                        "%s: option 'hiddens' has %d values but 'dims' %d (one "
                        "per stage)",
                        FN_LOAD, h->n, d->n);
    memcpy(m->cfg.mlp_hidden, h->v, (size_t)h->n * sizeof(int64_t));
    xa_cfg_set(&m->core.cfg, F_HIDDENS, (double)h->v[0], XA_FROM_OPTION, "option");
    return XATTN_OK;
}

/* Each stage's width and view 0's MLP width: bound from view 0's tensors (loading; the options
 * dims and hiddens must agree), or the options (creating). */
static xattn_status stage_dims(xattn_multiview *m, const xattn_safetensors *st, const char *prefix,
                               const mv_list *L)
{
    if (!st) return list_dims(m, L);
    const int64_t S = m->cfg.stages;
    char stem[64], txt[XA_HOW_CAP], want[XA_HOW_CAP];
    xattn_status s;
    for (int64_t k = 0; k < S; k++) {
        xa_cfg sc;
        xa_cfg_init(&sc, sv_fields, SV_N);
        snprintf(stem, sizeof stem, "stages.%lld.views.0.", (long long)k);
        if ((s = xa_cfg_bind_shapes(&sc, anchors, 3, st, prefix, stem)) ||
            (s = xa_cfg_require_shapes(&sc, anchors, 3, st, prefix, stem)))
            return s;
        m->cfg.dim[k] = (int64_t)sc.v[SV_DIM];
        m->cfg.mlp_hidden[k] = (int64_t)sc.v[SV_HIDDEN];
        snprintf(m->dim_src[k], sizeof m->dim_src[k], "%s", sc.how[SV_DIM]);
    }
    const mv_list *d = &L[L_DIMS];
    if (d->text && (d->n != S || memcmp(d->v, m->cfg.dim, (size_t)S * sizeof(int64_t))))
        return xa_error(XATTN_ERR_SHAPE,
                        "option dims = %s disagrees with the shapes (dims = "
                        "%s)",
                        d->text, list_text(m->cfg.dim, S, want, sizeof want));
    xa_cfg_set(&m->core.cfg, F_DIMS, (double)m->cfg.dim[0], XA_FROM_SHAPE,
               "%s: shapes of 'stages.S.views.0.self_attn.in_proj_weight'",
               list_text(m->cfg.dim, S, txt, sizeof txt));
    xa_cfg_set(&m->core.cfg, F_HIDDENS, (double)m->cfg.mlp_hidden[0], XA_FROM_SHAPE,
               "%s: shapes of 'stages.S.views.0.mlp.0.weight'",
               list_text(m->cfg.mlp_hidden, S, txt, sizeof txt));
    return XATTN_OK;
}

/* The list of heads from metadata "heads" (1 or S values) into h; *found = 0 when absent. */
static xattn_status meta_heads(const xattn_safetensors *st, int64_t S, int64_t *h, int *found)
{
    const char *mv = st ? xattn_st_meta_get(st, "heads") : NULL;
    *found = mv != NULL;
    if (!mv) return XATTN_OK;
    char shown[64];
    int n = 0;
    int64_t v[MAX_S];
    if (!parse_list(mv, v, &n))
        return xa_error(XATTN_ERR_FORMAT, "__metadata__ 'heads' is \"%s\", not %s",
                        xa_io_printable(mv, shown, sizeof shown), LIST_WANT);
    if (n != 1 && n != S)
        return xa_error(XATTN_ERR_FORMAT,
                        "__metadata__ 'heads' is \"%s\": expected one positive "
                        "integer or %lld comma-separated ones (one per stage)",
                        xa_io_printable(mv, shown, sizeof shown), (long long)S);
    for (int64_t k = 0; k < S; k++) h[k] = v[n == 1 ? 0 : k];
    return XATTN_OK;
}

/* Heads of stage k: option 'heads', option 'heads.k', metadata 'heads', metadata 'heads.k', in
 * that order; a list and a per-stage value of the same source must agree. */
static xattn_status stage_heads(xattn_multiview *m, int64_t k, const int64_t *opt,
                                const int64_t *meta, const xattn_safetensors *st)
{
    xa_cfg *c = &m->core.cfg;
    const int f = F_HEADS0 + (int)k;
    const int64_t per = (int64_t)c->v[f];
    const xa_from pf = c->from[f];
    for (int pass = 0; pass < 2; pass++) {
        const int64_t *list = pass ? meta : opt;
        const xa_from want = pass ? XA_FROM_META : XA_FROM_OPTION;
        const char *name = pass ? "__metadata__" : "option";
        if (list && pf == want && per != list[k])
            return xa_error(pass ? XATTN_ERR_FORMAT : XATTN_ERR_ARG,
                            "%s 'heads.%lld' = %lld "
                            "disagrees with %s 'heads' (%lld for stage %lld)",
                            name, (long long)k, (long long)per, name, (long long)list[k],
                            (long long)k);
        if (list) xa_cfg_set(c, f, (double)list[k], want, "%s 'heads'", name);
        if (list || pf == want) {
            m->cfg.heads[k] = (int64_t)c->v[f];
            return XATTN_OK;
        }
    }
    if (!st)
        return xa_error(XATTN_ERR_ARG,
                        "%s: heads is not given: the reference has no default; "
                        "state it with the option 'heads'",
                        FN_LOAD);
    return xa_error(XATTN_ERR_ARG,
                    "the number of heads is not known: pass option 'heads' or store "
                    "__metadata__ {\"heads\": \"H\"} or {\"heads\": \"H0,H1,...\"} (one per "
                    "stage) in the file");
}

static xattn_status resolve_heads(xattn_multiview *m, const xattn_safetensors *st, const mv_list *L)
{
    const int64_t S = m->cfg.stages;
    const mv_list *o = &L[L_HEADS];
    int64_t opt[MAX_S], meta[MAX_S];
    int has_meta = 0;
    if (o->text && o->n != 1 && o->n != S)
        return xa_error(XATTN_ERR_ARG,
                        "%s: option 'heads' has %d values for %lld stages (give 1 "
                        "or %lld)",
                        FN_LOAD, o->n, (long long)S, (long long)S);
    for (int64_t k = 0; o->text && k < S; k++) opt[k] = o->v[o->n == 1 ? 0 : k];
    xattn_status s = meta_heads(st, S, meta, &has_meta);
    for (int64_t k = S; !s && k < MAX_S; k++)
        if (m->core.cfg.from[F_HEADS0 + k] != XA_FROM_UNSET)
            s = xa_error(XATTN_ERR_ARG,
                         "heads.%lld is given (%s) but the module has %lld "
                         "stages",
                         (long long)k, m->core.cfg.how[F_HEADS0 + k], (long long)S);
    for (int64_t k = 0; !s && k < S; k++) {
        s = stage_heads(m, k, o->text ? opt : NULL, has_meta ? meta : NULL, st);
        if (!s && m->cfg.dim[k] % m->cfg.heads[k])
            s = xa_error(XATTN_ERR_SHAPE,
                         "stage %lld: width %lld (from the %s) is not divisible "
                         "by heads %lld",
                         (long long)k, (long long)m->cfg.dim[k], m->dim_src[k],
                         (long long)m->cfg.heads[k]);
    }
    if (s) return s;
    char txt[XA_HOW_CAP];
    xa_cfg *c = &m->core.cfg;
    xa_cfg_set(c, F_HEADS, (double)m->cfg.heads[0], c->from[F_HEADS0], "%s: %s",
               list_text(m->cfg.heads, S, txt, sizeof txt), c->how[F_HEADS0]);
    return XATTN_OK;
}

/* One view's config: the stage's widths and the view's MLP widths (bound from its tensors, or
 * the option hiddens). */
static xattn_status view_config(xattn_multiview *m, int64_t k, int64_t v,
                                const xattn_safetensors *st, const char *prefix, const mv_list *L,
                                xa_cfg *sc, char *stem, size_t cap)
{
    xa_cfg_init(sc, sv_fields, SV_N);
    snprintf(stem, cap, "stages.%lld.views.%lld.", (long long)k, (long long)v);
    xa_cfg_set(sc, SV_DIM, (double)m->cfg.dim[k], XA_FROM_DERIVED, "%s", m->dim_src[k]);
    xa_cfg_set(sc, SV_CIN, k ? (double)m->cfg.dim[k - 1] : 0, XA_FROM_DERIVED, "stage width");
    const mv_list *h = &L[L_HIDDENS];
    xattn_status s;
    if (!st) {
        xa_cfg_set(sc, SV_HIDDEN, (double)h->v[k], XA_FROM_OPTION, "option");
        xa_cfg_set(sc, SV_CHIDDEN, (double)h->v[k], XA_FROM_OPTION, "option");
        return XATTN_OK;
    }
    if ((s = xa_cfg_bind_shapes(sc, anchors, 3, st, prefix, stem)) ||
        (s = xa_cfg_require_shapes(sc, anchors, 3, st, prefix, stem)))
        return s;
    for (int f = SV_HIDDEN; h->text && f <= SV_CHIDDEN; f++)
        if (h->n != m->cfg.stages || sc->v[f] != (double)h->v[k])
            return xa_error(XATTN_ERR_SHAPE,
                            "option hiddens = %s disagrees with the %s (%s = "
                            "%lld)",
                            h->text, sc->how[f], sv_fields[f].name, (long long)sc->v[f]);
    for (int e = 0; k == 0 && e < E_N; e++) {
        char nm[192], shown[XA_IO_NAME_CAP];
        snprintf(nm, sizeof nm, "%s%s%s", prefix, stem, expand_table[e].name);
        if (xa_has(st, "", nm))
            return xa_error(XATTN_ERR_FORMAT, "tensor '%s' present: stage 0 has no expand layer",
                            xa_io_printable(nm, shown, sizeof shown));
    }
    return XATTN_OK;
}

/* Every view's tables, stage by stage: [expand (s > 0)] then the view. */
static xattn_status add_tables(xattn_multiview *m, const xattn_safetensors *st, const char *prefix,
                               const mv_list *L)
{
    xa_params *ps = &m->core.params;
    char stem[128];
    xattn_status s = XATTN_OK;
    for (int64_t k = 0; k < m->cfg.stages; k++)
        for (int64_t v = 0; v < m->cfg.views; v++) {
            xa_cfg sc;
            if ((s = view_config(m, k, v, st, prefix, L, &sc, stem, sizeof stem))) return s;
            if ((k && (s = xa_params_add_table(ps, expand_table, E_N, &sc, stem, NULL))) ||
                (s = xa_params_add_table(ps, view_table, P_N, &sc, stem, NULL)))
                return s;
        }
    /* the shapes are instantiated; messages of the load name the module's own fields */
    ps->cfg = &m->core.cfg;
    return s;
}

static xattn_status build(xa_mod *core, const xattn_safetensors *st, const char *prefix,
                          const xa_kv *opts, size_t n_opts)
{
    xattn_multiview *m = (xattn_multiview *)core;
    mv_list L[L_N];
    memset(L, 0, sizeof L);
    xa_kv *rest = calloc(n_opts + 1, sizeof *rest);
    if (!rest) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN_LOAD);
    size_t n_rest = 0;
    xattn_status s = take_lists(opts, n_opts, L, rest, &n_rest);
    if (!s && st) s = count_layout(m, st, prefix);
    if (!s) s = stage_dims(m, st, prefix, L);
    if (!s) s = xa_cfg_resolve(&core->cfg, rest, n_rest, st, FN_LOAD);
    free(rest);
    if (!s && !st) m->cfg.views = xa_cfg_int(&core->cfg, "views");
    if (!s) s = resolve_heads(m, st, L);
    if (!s) s = add_tables(m, st, prefix, L);
    if (s) return s;
    const int64_t S = m->cfg.stages;
    xa_cfg_set(&core->cfg, F_STAGES, (double)S, XA_FROM_DERIVED, "count");
    xa_cfg_set(&core->cfg, F_IN, (double)m->cfg.dim[0], XA_FROM_DERIVED, "dims of stage 0");
    xa_cfg_set(&core->cfg, F_OUT, (double)m->cfg.dim[S - 1], XA_FROM_DERIVED,
               "dims of the last stage");
    m->cfg.eps = (float)xa_cfg_get(&core->cfg, "eps");
    m->cfg.gelu_tanh = xa_cfg_int(&core->cfg, "gelu") == 1;
    /* the config lists the heads of the stages the module has (inspect, save) */
    core->cfg.n = F_HEADS0 + (int)S;
    return XATTN_OK;
}

/* Pointers into the parameters (in the order build added them) and the pooled expand weights. */
static xattn_status bind(xa_mod *core)
{
    xattn_multiview *m = (xattn_multiview *)core;
    const xa_params *ps = &core->params;
    const int64_t S = m->cfg.stages, V = m->cfg.views;
    m->vw = calloc((size_t)(S * V), sizeof *m->vw);
    if (!m->vw) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN_LOAD);
    int64_t n_pair = 0;
    for (int64_t k = 1; k < S; k++)
        n_pair += V * ((m->cfg.dim[k] * 2 * m->cfg.dim[k - 1] + 15) & ~15);
    if (n_pair && !(m->pair = xa_alloc((size_t)n_pair * sizeof(float)))) return XATTN_ERR_NOMEM;
    int idx = 0;
    float *pair = m->pair;
    for (int64_t k = 0; k < S; k++)
        for (int64_t v = 0; v < V; v++) {
            mv_view *w = &m->vw[k * V + v];
            if (k) {
                const int64_t C = m->cfg.dim[k], Cp = m->cfg.dim[k - 1];
                xa_op_pair_weight(xa_param_data(ps, idx + E_W), C, Cp, pair);
                w->ex2 = pair;
                w->ex_b = xa_param_data(ps, idx + E_B);
                pair += (C * 2 * Cp + 15) & ~15;
                w->e0 = idx;
                idx += E_N;
            }
            w->p0 = idx;
            for (int p = 0; p < P_N; p++) {
                w->w[p] = xa_param_data(ps, idx + p);
                w->wt[p] = xa_param_w(ps, idx + p);
            }
            w->hid = ps->p[idx + P_M0W].shape[0];
            w->chid = ps->p[idx + P_CM0W].shape[0];
            idx += P_N;
        }
    return XATTN_OK;
}

static void destroy(xa_mod *core)
{
    xattn_multiview *m = (xattn_multiview *)core;
    free(m->vw);
    xa_free(m->pair);
}

/* ---------------------------------------------------------------------------------------- */
/* Registry entry and the typed API                                                         */
/* ---------------------------------------------------------------------------------------- */

/* Views 0 and 1 exist in every module; the others up to its view count. Each output has the
 * view's pooled token count M_v = floor(N_v / 2^(S-1)), which the plan hook binds. */
#define XS(v, f)                                                                                   \
    {                                                                                              \
        "xs." #v, "B,N" #v ",in_dim", f,                                                           \
            "view " #v                                                                             \
            " (B, N_v, C_0): xs.0 .. xs.{V-1} for the module's V views (at least two views)"       \
    }
#define OUT(v, f)                                                                                  \
    {                                                                                              \
        "out." #v, "B,M" #v ",out_dim", f,                                                         \
            "view " #v                                                                             \
            " after the last stage: M_v = N_v halved (floor) once per stage after the first"       \
    }
#define OPT_OUT (XA_IO_OPT | XA_IO_BOUND)
static const xa_io inputs[NAMED_VIEWS] = {XS(0, 0),         XS(1, 0),         XS(2, XA_IO_OPT),
                                          XS(3, XA_IO_OPT), XS(4, XA_IO_OPT), XS(5, XA_IO_OPT),
                                          XS(6, XA_IO_OPT), XS(7, XA_IO_OPT), XS(8, XA_IO_OPT),
                                          XS(9, XA_IO_OPT), XS(10, XA_IO_OPT)};
static const xa_io outputs[NAMED_VIEWS] = {OUT(0, 0),       OUT(1, 0),       OUT(2, OPT_OUT),
                                           OUT(3, OPT_OUT), OUT(4, OPT_OUT), OUT(5, OPT_OUT),
                                           OUT(6, OPT_OUT), OUT(7, OPT_OUT), OUT(8, OPT_OUT),
                                           OUT(9, OPT_OUT), OUT(10, OPT_OUT)};
/* the views given one after another (the command line's repeated --view) */
static const xa_alias aliases[] = {{"view", "xs.*", NULL}};

/* Exactly the module's views are given. */
static xattn_status check_named(const xa_mod *core, const xa_run *r)
{
    const xattn_multiview *m = (const xattn_multiview *)core;
    const int64_t V = m->cfg.views;
    if (V > NAMED_VIEWS)
        return xa_error(XATTN_ERR_UNSUPPORTED,
                        "multiview: the named forward takes at most %d "
                        "views (this module has %lld); use xattn_multiview_forward",
                        NAMED_VIEWS, (long long)V);
    for (int64_t v = 0; v < NAMED_VIEWS; v++)
        if ((r->in[v] != NULL) != (v < V))
            return xa_error(XATTN_ERR_ARG,
                            "multiview: the module has %lld views: give xs.0 .. "
                            "xs.%lld (xs.%lld is %s)",
                            (long long)V, (long long)(V - 1), (long long)v,
                            r->in[v] ? "given" : "missing");
    return XATTN_OK;
}

/* The pooled token count M_v of every view given: N_v halved (floor) once per later stage. */
static xattn_status plan_named(const xa_mod *core, xa_run *r)
{
    static const char *const M[NAMED_VIEWS] = {"M0", "M1", "M2", "M3", "M4", "M5",
                                               "M6", "M7", "M8", "M9", "M10"};
    const xattn_multiview *m = (const xattn_multiview *)core;
    for (int v = 0; v < NAMED_VIEWS; v++) {
        if (!r->in[v] || r->in_ndim[v] != 3) continue;
        int64_t n = r->in_shape[v][1];
        for (int64_t s = 1; s < m->cfg.stages; s++) {
            if (n < 2)
                return xa_error(XATTN_ERR_SHAPE,
                                "input 'xs.%d' has %lld token(s): too few for "
                                "%lld stages (each stage after the first halves the tokens with "
                                "AvgPool1d(2, stride 2), which needs at least 2)",
                                v, (long long)r->in_shape[v][1], (long long)m->cfg.stages);
            n /= 2;
        }
        xattn_status st = xa_run_bind(r, M[v], n);
        if (st) return st;
    }
    return XATTN_OK;
}

static xattn_status forward_named(const xa_mod *core, const xa_run *r);
static xattn_status backward_named(const xa_mod *core, const xa_run *r, xa_grad *g);

const xa_kind xa_kind_multiview = {
    .name = "multiview",
    .reference = "MultiscaleMultiview (tests/reference/gen_multiview.py, docs/multiview.md)",
    .summary = "multiscale multiview cross-attention: per stage, self and cross blocks over "
               "V views, tokens pooled between stages",
    .fields = fields,
    .n_fields = F_N,
    .inputs = inputs,
    .n_in = NAMED_VIEWS,
    .outputs = outputs,
    .n_out = NAMED_VIEWS,
    .anchor = "stages.0.views.0.self_attn.in_proj_weight",
    .size = sizeof(xattn_multiview),
    .build = build,
    .bind = bind,
    .destroy = destroy,
    .check = check_named,
    .plan = plan_named,
    .forward = forward_named,
    .backward = backward_named,
    .state_dict = "stages.S.views.V.{expand.{weight,bias} (S > 0), norm1, norm2, cross_norm_q, "
                  "cross_norm_kv, cross_norm2 .{weight,bias}, self_attn., cross_attn. "
                  "{in_proj_weight, in_proj_bias, out_proj.{weight,bias}}, mlp., cross_mlp. "
                  "{0,2}.{weight,bias}}",
    .aliases = aliases,
    .n_aliases = 1,
};

/* The heads option as text ("2,4,8"). */
static xattn_status heads_text(const xattn_multiview_opts *o, char *buf, size_t cap)
{
    if (o->n_heads < 0 || o->n_heads > MAX_S)
        return xa_error(XATTN_ERR_ARG,
                        "%s: n_heads = %lld (give 0, 1 or one per stage, at most "
                        "%d)",
                        FN_LOAD, (long long)o->n_heads, MAX_S);
    if (!o->heads) return xa_error(XATTN_ERR_ARG, "%s: opts->heads is NULL", FN_LOAD);
    for (int64_t i = 0; i < o->n_heads; i++)
        if (o->heads[i] <= 0)
            return xa_error(XATTN_ERR_ARG, "%s: heads[%lld] = %lld is not positive", FN_LOAD,
                            (long long)i, (long long)o->heads[i]);
    list_text(o->heads, o->n_heads, buf, cap);
    return XATTN_OK;
}

xattn_status xattn_multiview_load(const xattn_safetensors *st, const char *prefix,
                                  const xattn_multiview_opts *opts, xattn_multiview **out)
{
    XA_LOAD_ARGS(st, out, FN_LOAD);
    xa_kvbuf b;
    memset(&b, 0, sizeof b);
    char heads[MAX_S * 24];
    if (opts) {
        xa_kv_real(&b, "eps", opts->eps);
        xa_kv_enum(&b, "gelu", GELU, (int)opts->gelu);
        if (opts->n_heads) {
            xattn_status s = heads_text(opts, heads, sizeof heads);
            if (s) return s;
            b.kv[b.n++] = (xa_kv){"heads", heads};
        }
    }
    xa_mod *m;
    xattn_status s = xa_mod_open(&xa_kind_multiview, st, prefix, b.kv, b.n, &m);
    *out = s ? NULL : (xattn_multiview *)m;
    return s;
}

void xattn_multiview_free(xattn_multiview *m) { xa_mod_free(m ? &m->core : NULL); }

void xattn_multiview_get_config(const xattn_multiview *m, xattn_multiview_config *cfg)
{
    xa_copy_config(m ? &m->cfg : NULL, cfg, sizeof *cfg);
}

xattn_status xattn_multiview_out_tokens(const xattn_multiview *m, int64_t n, int64_t *out_n)
{
    if (!m || !out_n) return xa_error(XATTN_ERR_ARG, "xattn_multiview_out_tokens: NULL argument");
    if (n <= 0)
        return xa_error(XATTN_ERR_ARG, "xattn_multiview_out_tokens: %lld tokens (must be positive)",
                        (long long)n);
    for (int64_t s = 1; s < m->cfg.stages; s++) {
        if (n < 2)
            return xa_error(XATTN_ERR_SHAPE,
                            "a view with %lld token(s) at stage %lld cannot be "
                            "pooled (AvgPool1d(2, stride 2) needs at least 2)",
                            (long long)n, (long long)(s - 1));
        n /= 2;
    }
    *out_n = n;
    return XATTN_OK;
}

/* Forward                                                                                  */
/* ---------------------------------------------------------------------------------------- */

typedef struct mv_work {
    int64_t B, S, V;
    int64_t n[MAX_S][MAX_V];             /* tokens of view v at stage s */
    float *cur[MAX_V], *nxt[MAX_V];      /* (B, n, C_s) per view        */
    float *h, *ob, *qkv, *t, *kvin, *kv; /* scratch                   */
} mv_work;

/* Checks the arguments and fills the token counts of every stage. */
static xattn_status plan_tokens(const xattn_multiview *m, const xattn_multiview_inputs *in,
                                const xattn_multiview_outputs *out, mv_work *w)
{
    if (!m) return xa_error(XATTN_ERR_ARG, "%s: module is NULL", FN_FWD);
    if (!in || !out || !in->tokens || !in->x || !out->out)
        return xa_error(XATTN_ERR_ARG, "%s: tokens, x or out is NULL", FN_FWD);
    w->V = m->cfg.views;
    w->S = m->cfg.stages;
    w->B = in->B;
    if (in->n_views != w->V)
        return xa_error(XATTN_ERR_SHAPE, "%s: %lld views given but the module has %lld", FN_FWD,
                        (long long)in->n_views, (long long)w->V);
    if (w->B <= 0)
        return xa_error(XATTN_ERR_ARG, "%s: batch %lld must be positive", FN_FWD, (long long)w->B);
    for (int64_t v = 0; v < w->V; v++) {
        if (!in->x[v]) return xa_error(XATTN_ERR_ARG, "%s: x[%lld] is NULL", FN_FWD, (long long)v);
        if (in->tokens[v] <= 0)
            return xa_error(XATTN_ERR_ARG, "%s: view %lld has %lld tokens", FN_FWD, (long long)v,
                            (long long)in->tokens[v]);
        w->n[0][v] = in->tokens[v];
        for (int64_t s = 1; s < w->S; s++) {
            if (w->n[s - 1][v] < 2)
                return xa_error(XATTN_ERR_SHAPE,
                                "%s: view %lld has %lld token(s) at stage %lld, "
                                "which AvgPool1d(2, stride 2) cannot pool",
                                FN_FWD, (long long)v, (long long)w->n[s - 1][v],
                                (long long)(s - 1));
            w->n[s][v] = w->n[s - 1][v] / 2;
        }
    }
    return XATTN_OK;
}

/* The tokens of every view but v at stage s: the keys and values of v's cross-attention. */
static int64_t other_tokens(const mv_work *w, int64_t s, int64_t v)
{
    int64_t M = 0;
    for (int64_t u = 0; u < w->V; u++) M += u == v ? 0 : w->n[s][u];
    return M;
}

/* The largest sizes of a run, in floats. */
typedef struct mv_sizes {
    double cap[MAX_V];   /* (B, n, C_s) of view v, largest over the stages        */
    double rc, rqkv, rt; /* a view's B n rows times C, 3 C and its wider MLP width */
    double kvin, kv;     /* the other views' rows times C, 2 C                     */
    double lse, pair;    /* B H n; C_s 2 C_{s-1}                                   */
} mv_sizes;

static void run_sizes(const xattn_multiview *m, const mv_work *w, mv_sizes *z)
{
    memset(z, 0, sizeof *z);
    for (int64_t s = 0; s < w->S; s++) {
        const double C = (double)m->cfg.dim[s];
        if (s) z->pair = fmax(z->pair, C * 2 * (double)m->cfg.dim[s - 1]);
        for (int64_t v = 0; v < w->V; v++) {
            const mv_view *vw = &m->vw[s * w->V + v];
            const double rows = (double)w->B * (double)w->n[s][v];
            const double M = (double)w->B * (double)other_tokens(w, s, v);
            z->cap[v] = fmax(z->cap[v], rows * C);
            z->rc = fmax(z->rc, rows * C);
            z->rqkv = fmax(z->rqkv, rows * 3 * C);
            z->rt = fmax(z->rt, rows * (double)XA_MAX(vw->hid, vw->chid));
            z->kvin = fmax(z->kvin, M * C);
            z->kv = fmax(z->kv, M * 2 * C);
            z->lse = fmax(z->lse, rows * (double)m->cfg.heads[s]);
        }
    }
}

/* Buffers (16-float multiples) carved from one block; with base NULL it only counts. */
typedef struct mv_carve {
    float *base;
    double used;
} mv_carve;

static float *carve(mv_carve *c, double n)
{
    float *p = c->base ? c->base + (size_t)c->used : NULL;
    c->used += ceil(n / 16) * 16;
    return p;
}

/* The forward's scratch (the backward's recomputations use it too). */
static void carve_scratch(mv_carve *c, const mv_sizes *z, mv_work *w)
{
    w->h = carve(c, z->rc);
    w->ob = carve(c, z->rc);
    w->qkv = carve(c, z->rqkv);
    w->t = carve(c, z->rt);
    w->kvin = carve(c, z->kvin);
    w->kv = carve(c, z->kv);
}

/* One block from the context's workspace laid out by lay (called twice: counting, carving). */
static xattn_status take_block(void (*lay)(mv_carve *, void *), void *arg, int64_t B, xa_ws **ws)
{
    mv_carve c = {NULL, 0};
    lay(&c, arg);
    if (c.used * 4.0 > (double)(SIZE_MAX / 4) || c.used > 9e15)
        return xa_error(XATTN_ERR_NOMEM, "%s: scratch for batch %lld overflows", FN_FWD,
                        (long long)B);
    if (!(*ws = xa_ws_get((size_t)c.used * sizeof(float)))) return XATTN_ERR_NOMEM;
    c = (mv_carve){xa_ws_data(*ws), 0};
    lay(&c, arg);
    return XATTN_OK;
}

typedef struct mv_fwd {
    mv_work *w;
    mv_sizes z;
} mv_fwd;

/* The forward's block: two streams per view and the scratch. */
static void fwd_layout(mv_carve *c, void *arg)
{
    mv_fwd *f = arg;
    for (int64_t v = 0; v < f->w->V; v++) {
        f->w->cur[v] = carve(c, f->z.cap[v]);
        f->w->nxt[v] = carve(c, f->z.cap[v]);
    }
    carve_scratch(c, &f->z, f->w);
}

/* Attention of (B, I) queries over (B, J) keys/values of width C in H heads read in place:
 * q rows of stride q_ld, k and v rows of stride kv_ld, o (B, I, C); lse (B, H, I) or NULL. */
static void attn_setup(xa_attn *p, int64_t B, int64_t H, int64_t I, int64_t J, int64_t C,
                       const float *q, int64_t q_ld, const float *k, const float *v, int64_t kv_ld,
                       float *o, float *lse)
{
    memset(p, 0, sizeof *p);
    p->scale = xa_head_scale(C / H);
    p->fill = XATTN_FILL_NEG_INF;
    p->fn = FN_FWD;
    p->lse = lse;
    xa_attn_heads(p, B, H, I, J, C / H, C / H, q, q_ld, k, kv_ld, v, kv_ld, o, C);
}

/* y (B N, C) += self_attn(norm1 x) of view vw at stage s (y may be x); the attention is left
 * in *p (q/k/v in w->qkv, its input in w->h, its output in w->ob, lse when not NULL). */
static xattn_status self_attn_part(const xattn_multiview *m, int64_t s, const mv_view *vw,
                                   mv_work *w, int64_t N, const float *x, float *y, float *lse,
                                   xa_attn *p)
{
    const int64_t C = m->cfg.dim[s], rows = w->B * N;
    xattn_status st;
    attn_setup(p, w->B, m->cfg.heads[s], N, N, C, w->qkv, 3 * C, w->qkv + C, w->qkv + 2 * C, 3 * C,
               w->ob, lse);
    if ((st = xa_op_layernorm(x, rows, C, vw->w[P_N1W], vw->w[P_N1B], m->cfg.eps, w->h)) ||
        (st = xa_op_linear_w(w->h, rows, C, vw->wt[P_SAIW], vw->w[P_SAIB], 3 * C, w->qkv, 0)) ||
        (st = xa_op_attention(p)))
        return st;
    return xa_op_linear_w(w->ob, rows, C, vw->wt[P_SAOW], vw->w[P_SAOB], C, y, 1);
}

/* y (B N_v, C) += cross_attn(cross_norm_q ys[v], c, c) of view v at stage s, c the other views'
 * ys through cross_norm_kv written straight into the concatenated layout w->kvin (B, M, C); K
 * and V from ONE linear map (rows C..3C of in_proj_weight) into w->kv, Q into w->qkv (its
 * input in w->h), the output in w->ob, the attention left in *p (lse when not NULL). */
static xattn_status cross_attn_part(const xattn_multiview *m, int64_t s, int64_t v, mv_work *w,
                                    float *const *ys, float *y, float *lse, xa_attn *p)
{
    const mv_view *vw = &m->vw[s * w->V + v];
    const int64_t C = m->cfg.dim[s], B = w->B, N = w->n[s][v], rows = B * N;
    const int64_t M = other_tokens(w, s, v);
    const float *ib = vw->w[P_CAIB];
    xattn_status st = XATTN_OK;
    for (int64_t b = 0; b < B && !st; b++)
        for (int64_t u = 0, at = 0; u < w->V && !st; u++) {
            if (u == v) continue;
            st = xa_op_layernorm(ys[u] + b * w->n[s][u] * C, w->n[s][u], C, vw->w[P_CKVW],
                                 vw->w[P_CKVB], m->cfg.eps, w->kvin + (b * M + at) * C);
            at += w->n[s][u];
        }
    attn_setup(p, B, m->cfg.heads[s], N, M, C, w->qkv, C, w->kv, w->kv + C, 2 * C, w->ob, lse);
    if (st ||
        (st = xa_op_linear_w(w->kvin, B * M, C, xa_wt_rows(vw->wt[P_CAIW], C, C),
                             ib ? ib + C : NULL, 2 * C, w->kv, 0)) ||
        (st = xa_op_layernorm(ys[v], rows, C, vw->w[P_CQW], vw->w[P_CQB], m->cfg.eps, w->h)) ||
        (st = xa_op_linear_w(w->h, rows, C, vw->wt[P_CAIW], ib, C, w->qkv, 0)) ||
        (st = xa_op_attention(p)))
        return st;
    return xa_op_linear_w(w->ob, rows, C, vw->wt[P_CAOW], vw->w[P_CAOB], C, y, 1);
}

/* t (rows, hid) = first MLP layer (at w[l0]) of norm(x) (the norm at w[nw], its output in h). */
static xattn_status mlp_first(const xattn_multiview *m, const mv_view *vw, int nw, int l0,
                              int64_t hid, const float *x, int64_t rows, int64_t C, float *h,
                              float *t)
{
    xattn_status s = xa_op_layernorm(x, rows, C, vw->w[nw], vw->w[nw + 1], m->cfg.eps, h);
    return s ? s : xa_op_linear_w(h, rows, C, vw->wt[l0], vw->w[l0 + 1], hid, t, 0);
}

/* x (rows, C) += mlp(LN(x)) with the norm at w[nw], the layers at w[l0], w[l0 + 2]. */
static xattn_status mlp_block(const xattn_multiview *m, const mv_view *vw, int nw, int l0,
                              int64_t hid, float *x, int64_t rows, int64_t C, mv_work *w)
{
    xattn_status s;
    if ((s = mlp_first(m, vw, nw, l0, hid, x, rows, C, w->h, w->t)) ||
        (s = xa_op_gelu(w->t, rows * hid, m->cfg.gelu_tanh)))
        return s;
    return xa_op_linear_w(w->t, rows, hid, vw->wt[l0 + 2], vw->w[l0 + 3], C, x, 1);
}

/* The token pairs of view v entering stage s > 0 as row groups of the pooled GEMM: one group
 * of B n_s rows when n_{s-1} is even, else one per batch item (its odd last token dropped);
 * group g starts at token g n_{s-1} of the input and row g n_s of the output. */
static int64_t pair_groups(const mv_work *w, int64_t s, int64_t v, int64_t *rows)
{
    const int odd = w->n[s - 1][v] % 2 != 0;
    *rows = odd ? w->n[s][v] : w->B * w->n[s][v];
    return odd ? w->B : 1;
}

/* x (B, n_s, C_s) = expand(pool(z)) for view v entering stage s > 0, z (B, n_{s-1}, C_{s-1}):
 * token pairs read in place as rows of width 2 C_{s-1} times 0.5 [W W]. */
static xattn_status expand_view(const xattn_multiview *m, int64_t s, int64_t v, const mv_work *w,
                                const float *z, float *x)
{
    const mv_view *vw = &m->vw[s * w->V + v];
    const int64_t C = m->cfg.dim[s], Cp = m->cfg.dim[s - 1];
    int64_t rows;
    const int64_t G = pair_groups(w, s, v, &rows);
    xattn_status st = XATTN_OK;
    for (int64_t g = 0; g < G && !st; g++)
        st = xa_op_linear(z + g * w->n[s - 1][v] * Cp, rows, 2 * Cp, vw->ex2, vw->ex_b, C,
                          x + g * w->n[s][v] * C, 0);
    return st;
}

/* Stage s > 0: cur <- expand(pool(cur)) for every view. */
static xattn_status pool_expand(const xattn_multiview *m, int64_t s, mv_work *w)
{
    xattn_status st = XATTN_OK;
    for (int64_t v = 0; v < w->V && !st; v++) {
        st = expand_view(m, s, v, w, w->cur[v], w->nxt[v]);
        float *tmp = w->cur[v];
        w->cur[v] = w->nxt[v];
        w->nxt[v] = tmp;
    }
    return st;
}

/* Self blocks of stage s, in place on cur. */
static xattn_status self_blocks(const xattn_multiview *m, int64_t s, mv_work *w)
{
    const int64_t C = m->cfg.dim[s];
    xattn_status st = XATTN_OK;
    for (int64_t v = 0; v < w->V && !st; v++) {
        const mv_view *vw = &m->vw[s * w->V + v];
        const int64_t N = w->n[s][v];
        xa_attn p;
        st = self_attn_part(m, s, vw, w, N, w->cur[v], w->cur[v], NULL, &p);
        if (!st) st = mlp_block(m, vw, P_N2W, P_M0W, vw->hid, w->cur[v], w->B * N, C, w);
    }
    return st;
}

/* Cross blocks of stage s: read cur (the self outputs of every view), write nxt. */
static xattn_status cross_blocks(const xattn_multiview *m, int64_t s, mv_work *w)
{
    const int64_t C = m->cfg.dim[s];
    xattn_status st = XATTN_OK;
    for (int64_t v = 0; v < w->V && !st; v++) {
        const mv_view *vw = &m->vw[s * w->V + v];
        const int64_t rows = w->B * w->n[s][v];
        xa_attn p;
        memcpy(w->nxt[v], w->cur[v], (size_t)(rows * C) * sizeof(float));
        st = cross_attn_part(m, s, v, w, w->cur, w->nxt[v], NULL, &p);
        if (!st) st = mlp_block(m, vw, P_C2W, P_CM0W, vw->chid, w->nxt[v], rows, C, w);
    }
    for (int64_t v = 0; v < w->V; v++) {
        float *tmp = w->cur[v];
        w->cur[v] = w->nxt[v];
        w->nxt[v] = tmp;
    }
    return st;
}

static xattn_status run(const xattn_multiview *m, const xattn_multiview_inputs *in,
                        const xattn_multiview_outputs *out)
{
    mv_work w;
    mv_fwd f;
    f.w = &w;
    xa_ws *ws = NULL;
    xattn_status st = plan_tokens(m, in, out, &w);
    if (st) return st;
    run_sizes(m, &w, &f.z);
    if ((st = take_block(fwd_layout, &f, w.B, &ws))) return st;
    const int64_t C0 = m->cfg.dim[0], CL = m->cfg.dim[w.S - 1];
    for (int64_t v = 0; v < w.V; v++)
        memcpy(w.cur[v], in->x[v], (size_t)(w.B * w.n[0][v] * C0) * sizeof(float));
    for (int64_t s = 0; s < w.S && !st; s++) {
        if (s > 0) st = pool_expand(m, s, &w);
        if (!st) st = self_blocks(m, s, &w);
        if (!st) st = cross_blocks(m, s, &w);
    }
    for (int64_t v = 0; v < w.V && !st; v++)
        if (out->out[v])
            memcpy(out->out[v], w.cur[v], (size_t)(w.B * w.n[w.S - 1][v] * CL) * sizeof(float));
    xa_ws_put(ws);
    return st;
}

xattn_status xattn_multiview_forward(xattn_ctx *ctx, const xattn_multiview *m,
                                     const xattn_multiview_inputs *in,
                                     const xattn_multiview_outputs *out)
{
    const xattn_ctx *prev = xa_ctx_enter(ctx);
    xattn_status st = run(m, in, out);
    xa_ctx_leave(prev);
    if (!st) xa_clear_error();
    return st;
}

/* The typed arguments of a named run (arrays of NAMED_VIEWS entries held by the caller). */
static void named_io(const xattn_multiview *m, const xa_run *r, int64_t *tokens, const float **x,
                     float **o, xattn_multiview_inputs *in, xattn_multiview_outputs *out)
{
    for (int64_t v = 0; v < m->cfg.views; v++) {
        tokens[v] = r->in_shape[v][1];
        x[v] = r->in[v];
        o[v] = r->out[v];
    }
    *in = (xattn_multiview_inputs){
        .B = xa_run_sym(r, "B"), .n_views = m->cfg.views, .tokens = tokens, .x = x};
    *out = (xattn_multiview_outputs){.out = o};
}

/* Runs on the context the registry made current. */
static xattn_status forward_named(const xa_mod *core, const xa_run *r)
{
    const xattn_multiview *m = (const xattn_multiview *)core;
    int64_t tokens[NAMED_VIEWS];
    const float *x[NAMED_VIEWS];
    float *o[NAMED_VIEWS];
    xattn_multiview_inputs in;
    xattn_multiview_outputs out;
    named_io(m, r, tokens, x, o, &in, &out);
    return run(m, &in, &out);
}

/* ---------------------------------------------------------------------------------------- */
/* Backward                                                                                 */
/* ---------------------------------------------------------------------------------------- */
/*
 * The forward runs once keeping, per stage s and view v, the self blocks' output y
 * (B, n_{s,v}, C_s) and, before the last stage, the cross blocks' output z (the next stage's
 * pooling input; the last stage's z is the output): 2 C_s floats per token (C_{S-1} in the
 * last stage). Going back stage by stage, each block's internals are recomputed from what was
 * kept (q/k/v, the attention's output and log-sum-exp, the stream between attention and MLP,
 * the MLP's norm and hidden; the stage input x = expand(pool(z_{s-1})), one GEMM):
 *   cross blocks: each view's gradient flows to its own y (residual, cross_norm_q) and,
 *     through K/V (rows C..3C of in_proj_weight) and cross_norm_kv of the concatenation, to
 *     every other view's y;
 *   self blocks: MLP, out_proj, fused attention backward, packed in_proj, norm1;
 *   pooled expansion: the GEMM over token pairs gives the previous stage's z (0 for a dropped
 *     odd token) and the gradient of 0.5 [W W], whose halves summed times 0.5 are dW.
 */

typedef struct mv_bwd {
    const xattn_multiview *m;
    mv_work w; /* token counts; the forward's scratch, reused for the recomputations */
    mv_sizes z;
    float *const *outs;                       /* the run's outputs (NULL: not asked)        */
    float *Y[MAX_S][MAX_V], *Z[MAX_S][MAX_V]; /* kept: self and cross outputs              */
    float *gz[MAX_V], *gy[MAX_V]; /* gradients of z and y in the stage going back            */
    float *x, *y1, *hm, *g, *lse; /* stage input, stream before the MLP, its norm and hidden */
    float *dq, *da, *dh, *dt, *dkvin, *dkv, *dpair;
    float *const *dparam;
} mv_bwd;

static void bwd_layout(mv_carve *c, void *arg)
{
    mv_bwd *b = arg;
    const mv_work *w = &b->w;
    for (int64_t s = 0; s < w->S; s++)
        for (int64_t v = 0; v < w->V; v++) {
            const double n = (double)(w->B * w->n[s][v] * b->m->cfg.dim[s]);
            b->Y[s][v] = carve(c, n);
            b->Z[s][v] = s == w->S - 1 && b->outs[v] ? b->outs[v] : carve(c, n);
        }
    for (int64_t v = 0; v < w->V; v++) {
        b->gz[v] = carve(c, b->z.cap[v]);
        b->gy[v] = carve(c, b->z.cap[v]);
    }
    carve_scratch(c, &b->z, &b->w);
    b->x = carve(c, b->z.rc), b->y1 = carve(c, b->z.rc), b->hm = carve(c, b->z.rc);
    b->g = carve(c, b->z.rt), b->lse = carve(c, b->z.lse);
    b->dq = carve(c, b->z.rqkv), b->da = carve(c, b->z.rc), b->dh = carve(c, b->z.rc);
    b->dt = carve(c, b->z.rt), b->dkvin = carve(c, b->z.kvin), b->dkv = carve(c, b->z.kv);
    b->dpair = carve(c, b->z.pair);
}

/* The gradient of parameter k of view vw (view table), NULL when not wanted or absent. */
static float *dpar(const mv_bwd *b, const mv_view *vw, int k)
{
    return b->dparam && vw->w[k] ? b->dparam[vw->p0 + k] : NULL;
}

/* Every wanted parameter gradient set to 0 (the norms' and expand.bias's add up). */
static void zero_grads(const xattn_multiview *m, float *const *dparam)
{
    const xa_params *ps = &m->core.params;
    for (int i = 0; dparam && i < ps->n; i++) {
        if (!dparam[i] || !ps->p[i].data) continue;
        int64_t n = 1;
        for (int d = 0; d < ps->p[i].ndim; d++) n *= ps->p[i].shape[d];
        memset(dparam[i], 0, sizeof(float) * (size_t)n);
    }
}

/* The forward keeping Y and Z (x0: the views). */
static xattn_status keep_forward(mv_bwd *b, const float *const *x0)
{
    mv_work *w = &b->w;
    const xattn_multiview *m = b->m;
    xattn_status st = XATTN_OK;
    for (int64_t s = 0; s < w->S && !st; s++) {
        for (int64_t v = 0; v < w->V && !st; v++) {
            if (s)
                st = expand_view(m, s, v, w, b->Z[s - 1][v], b->Y[s][v]);
            else
                memcpy(b->Y[0][v], x0[v],
                       sizeof(float) * (size_t)(w->B * w->n[0][v] * m->cfg.dim[0]));
            w->cur[v] = b->Y[s][v];
            w->nxt[v] = b->Z[s][v];
        }
        if (!st) st = self_blocks(m, s, w);
        if (!st) st = cross_blocks(m, s, w);
    }
    return st;
}

/* dx (rows, C), the gradient of x + mlp(norm(x)), becomes that of x (the MLP at w[l0], its
 * norm at w[nw]; the internals recomputed from x). */
static xattn_status mlp_backward(mv_bwd *b, const mv_view *vw, int nw, int l0, int64_t hid,
                                 const float *x, int64_t rows, int64_t C, float *dx)
{
    const xattn_multiview *m = b->m;
    const int gt = m->cfg.gelu_tanh;
    float *t = b->w.t;
    xattn_status s;
    if ((s = mlp_first(m, vw, nw, l0, hid, x, rows, C, b->hm, t))) return s;
    memcpy(b->g, t, sizeof(float) * (size_t)(rows * hid));
    if ((s = xa_op_gelu(b->g, rows * hid, gt)) ||
        (s = xa_op_linear_backward(b->g, rows, hid, vw->w[l0 + 2], C, dx, b->dt,
                                   dpar(b, vw, l0 + 2), dpar(b, vw, l0 + 3), 0)))
        return s;
    xa_op_gelu_backward(t, b->dt, b->dt, rows * hid, gt);
    if ((s = xa_op_linear_backward(b->hm, rows, C, vw->w[l0], hid, b->dt, b->dh, dpar(b, vw, l0),
                                   dpar(b, vw, l0 + 1), 0)))
        return s;
    return xa_op_layernorm_backward(x, rows, C, vw->w[nw], m->cfg.eps, b->dh, dx, dpar(b, vw, nw),
                                    dpar(b, vw, nw + 1), 1);
}

/* The gradients of attention p (run with lse) from da (B, I, C): dq in rows of stride q_ld,
 * dk and dv in rows of stride kv_ld. */
static xattn_status attn_backward(const xa_attn *p, const float *lse, const float *da, float *dq,
                                  int64_t q_ld, float *dk, float *dv, int64_t kv_ld)
{
    const int64_t C = p->H * p->dh;
    xa_attn_grad g;
    memset(&g, 0, sizeof g);
    g.dout = da, g.do_sb = p->I * C, g.do_sh = p->dh, g.do_si = C;
    g.lse = lse;
    g.dq = dq, g.dq_sb = p->I * q_ld, g.dq_sh = p->dh, g.dq_si = q_ld;
    g.dk = dk, g.dk_sb = p->J * kv_ld, g.dk_sh = p->dh, g.dk_sj = kv_ld;
    g.dv = dv, g.dv_sb = p->J * kv_ld, g.dv_sh = p->dv, g.dv_sj = kv_ld;
    return xa_op_attention_backward(p, &g);
}

/* cross_norm_kv of view v's cross block at stage s: dkvin (B, M, C) back to the other views'
 * gy (added). */
static xattn_status kv_norm_backward(mv_bwd *b, int64_t s, int64_t v)
{
    const mv_work *w = &b->w;
    const mv_view *vw = &b->m->vw[s * w->V + v];
    const int64_t C = b->m->cfg.dim[s], M = other_tokens(w, s, v);
    float *dw = dpar(b, vw, P_CKVW), *db = dpar(b, vw, P_CKVB);
    xattn_status st = XATTN_OK;
    for (int64_t i = 0; i < w->B && !st; i++)
        for (int64_t u = 0, at = 0; u < w->V && !st; u++) {
            if (u == v) continue;
            const int64_t n = w->n[s][u];
            st = xa_op_layernorm_backward(b->Y[s][u] + i * n * C, n, C, vw->w[P_CKVW],
                                          b->m->cfg.eps, b->dkvin + (i * M + at) * C,
                                          b->gy[u] + i * n * C, dw, db, 1);
            at += n;
        }
    return st;
}

/* View v's cross block of stage s: gz[v] (the gradient of its output) is used up; the
 * gradient of y_v is added to gy[v] and, through the keys and values, of each other y_u to
 * gy[u]. */
static xattn_status cross_backward(mv_bwd *b, int64_t s, int64_t v)
{
    const xattn_multiview *m = b->m;
    mv_work *w = &b->w;
    const mv_view *vw = &m->vw[s * w->V + v];
    const int64_t C = m->cfg.dim[s], rows = w->B * w->n[s][v], M = other_tokens(w, s, v);
    float *dz = b->gz[v], *dW = dpar(b, vw, P_CAIW), *dbi = dpar(b, vw, P_CAIB);
    xa_attn p;
    xattn_status st;
    memcpy(b->y1, b->Y[s][v], sizeof(float) * (size_t)(rows * C));
    if ((st = cross_attn_part(m, s, v, w, b->Y[s], b->y1, b->lse, &p)) ||
        (st = mlp_backward(b, vw, P_C2W, P_CM0W, vw->chid, b->y1, rows, C, dz)) ||
        (st = xa_op_linear_backward(w->ob, rows, C, vw->w[P_CAOW], C, dz, b->da,
                                    dpar(b, vw, P_CAOW), dpar(b, vw, P_CAOB), 0)) ||
        (st = attn_backward(&p, b->lse, b->da, b->dq, C, b->dkv, b->dkv + C, 2 * C)) ||
        (st = xa_op_linear_backward(w->h, rows, C, vw->w[P_CAIW], C, b->dq, b->dh, dW, dbi, 0)) ||
        (st = xa_op_layernorm_backward(b->Y[s][v], rows, C, vw->w[P_CQW], m->cfg.eps, b->dh,
                                       b->gy[v], dpar(b, vw, P_CQW), dpar(b, vw, P_CQB), 1)) ||
        (st = xa_op_linear_backward(w->kvin, w->B * M, C, vw->w[P_CAIW] + C * C, 2 * C, b->dkv,
                                    b->dkvin, dW ? dW + C * C : NULL, dbi ? dbi + C : NULL, 0)))
        return st;
    xa_op_add(b->gy[v], dz, rows * C); /* the residual */
    return kv_norm_backward(b, s, v);
}

/* View v's self block of stage s over its input x: gy[v], the gradient of its output,
 * becomes that of x. */
static xattn_status self_backward(mv_bwd *b, int64_t s, int64_t v, const float *x)
{
    const xattn_multiview *m = b->m;
    mv_work *w = &b->w;
    const mv_view *vw = &m->vw[s * w->V + v];
    const int64_t C = m->cfg.dim[s], N = w->n[s][v], rows = w->B * N;
    float *dy = b->gy[v];
    xa_attn p;
    xattn_status st;
    memcpy(b->y1, x, sizeof(float) * (size_t)(rows * C));
    if ((st = self_attn_part(m, s, vw, w, N, x, b->y1, b->lse, &p)) ||
        (st = mlp_backward(b, vw, P_N2W, P_M0W, vw->hid, b->y1, rows, C, dy)) ||
        (st = xa_op_linear_backward(w->ob, rows, C, vw->w[P_SAOW], C, dy, b->da,
                                    dpar(b, vw, P_SAOW), dpar(b, vw, P_SAOB), 0)) ||
        (st = attn_backward(&p, b->lse, b->da, b->dq, 3 * C, b->dq + C, b->dq + 2 * C, 3 * C)) ||
        (st = xa_op_linear_backward(w->h, rows, C, vw->w[P_SAIW], 3 * C, b->dq, b->dh,
                                    dpar(b, vw, P_SAIW), dpar(b, vw, P_SAIB), 0)))
        return st;
    return xa_op_layernorm_backward(x, rows, C, vw->w[P_N1W], m->cfg.eps, b->dh, dy,
                                    dpar(b, vw, P_N1W), dpar(b, vw, P_N1B), 1);
}

/* The pooled expansion of view v into stage s > 0: dx (B, n_s, C_s), the gradient of its
 * output, gives dz (B, n_{s-1}, C_{s-1}), that of its input, and the gradients of expand.weight
 * and expand.bias. */
static xattn_status expand_backward(mv_bwd *b, int64_t s, int64_t v, const float *dx, float *dz)
{
    const mv_work *w = &b->w;
    const mv_view *vw = &b->m->vw[s * w->V + v];
    const int64_t C = b->m->cfg.dim[s], Cp = b->m->cfg.dim[s - 1];
    float *dW = b->dparam ? b->dparam[vw->e0 + E_W] : NULL;
    float *db = b->dparam && vw->ex_b ? b->dparam[vw->e0 + E_B] : NULL;
    float *dW2 = dW ? b->dpair : NULL;
    int64_t rows;
    const int64_t G = pair_groups(w, s, v, &rows);
    memset(dz, 0, sizeof(float) * (size_t)(w->B * w->n[s - 1][v] * Cp));
    if (dW2) memset(dW2, 0, sizeof(float) * (size_t)(C * 2 * Cp));
    xattn_status st = XATTN_OK;
    for (int64_t g = 0; g < G && !st; g++) {
        const int64_t in = g * w->n[s - 1][v] * Cp;
        st = xa_op_linear_backward(b->Z[s - 1][v] + in, rows, 2 * Cp, vw->ex2, C,
                                   dx + g * w->n[s][v] * C, dz + in, dW2, db, 1);
    }
    if (!st && dW) xa_op_pair_weight_backward(dW2, C, Cp, dW);
    return st;
}

/* From the outputs' gradients (NULL: 0) back through every stage to the views' gradients. */
static xattn_status backward_stages(mv_bwd *b, const xa_grad *g, const float *const *x0)
{
    const xattn_multiview *m = b->m;
    const mv_work *w = &b->w;
    const int64_t S = w->S, V = w->V;
    for (int64_t v = 0; v < V; v++) {
        const size_t n = (size_t)(w->B * w->n[S - 1][v] * m->cfg.dim[S - 1]);
        if (g->dout[v])
            memcpy(b->gz[v], g->dout[v], sizeof(float) * n);
        else
            memset(b->gz[v], 0, sizeof(float) * n);
    }
    xattn_status st = XATTN_OK;
    for (int64_t s = S - 1; s >= 0 && !st; s--) {
        for (int64_t v = 0; v < V; v++)
            memset(b->gy[v], 0, sizeof(float) * (size_t)(w->B * w->n[s][v] * m->cfg.dim[s]));
        for (int64_t v = 0; v < V && !st; v++) st = cross_backward(b, s, v);
        for (int64_t v = 0; v < V && !st; v++) {
            const float *x = x0[v];
            if (s && !(st = expand_view(m, s, v, w, b->Z[s - 1][v], b->x))) x = b->x;
            if (!st) st = self_backward(b, s, v, x);
            if (!st && s) st = expand_backward(b, s, v, b->gy[v], b->gz[v]);
        }
    }
    for (int64_t v = 0; v < V && !st; v++)
        if (g->din[v])
            memcpy(g->din[v], b->gy[v],
                   sizeof(float) * (size_t)(w->B * w->n[0][v] * m->cfg.dim[0]));
    return st;
}

static xattn_status backward_named(const xa_mod *core, const xa_run *r, xa_grad *g)
{
    const xattn_multiview *m = (const xattn_multiview *)core;
    int64_t tokens[NAMED_VIEWS];
    const float *x[NAMED_VIEWS];
    float *o[NAMED_VIEWS];
    xattn_multiview_inputs in;
    xattn_multiview_outputs out;
    named_io(m, r, tokens, x, o, &in, &out);
    mv_bwd b;
    memset(&b, 0, sizeof b);
    b.m = m, b.outs = o, b.dparam = g->dparam;
    xa_ws *ws = NULL;
    xattn_status st = plan_tokens(m, &in, &out, &b.w);
    if (st) return st;
    run_sizes(m, &b.w, &b.z);
    if ((st = take_block(bwd_layout, &b, b.w.B, &ws))) return st;
    zero_grads(m, g->dparam);
    st = keep_forward(&b, x);
    xa_run ro = *r; /* every view's output, those not asked too (a loss may read them) */
    for (int64_t v = 0; v < b.w.V; v++) ro.out[v] = b.Z[b.w.S - 1][v];
    if (!st) st = xa_grad_outputs(g, &ro);
    if (!st) st = backward_stages(&b, g, x);
    xa_ws_put(ws);
    return st;
}
