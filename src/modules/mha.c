/*
 * M1: multi-head cross-attention modules.
 *
 *   torch.nn.MultiheadAttention (batch_first=True)   in_proj_weight (3E, E) [+ in_proj_bias (3E)]
 *                                                    or q_proj_weight (E, E), k_proj_weight
 *                                                    (E, kdim), v_proj_weight (E, vdim);
 *                                                    out_proj.weight (E, E) [+ out_proj.bias (E)]
 *   diffusers Attention                              to_q.weight (inner, query_dim), to_k.weight
 *                                                    (inner, cross_dim), to_v.weight (inner,
 *                                                    cross_dim) [+ to_{q,k,v}.bias (inner)],
 *                                                    to_out.0.weight (out_dim, inner)
 *                                                    [+ to_out.0.bias (out_dim)]
 *
 * forward: three projections with xattn_linear into scratch (B*I*inner, B*J*inner, B*J*inner),
 * ONE xattn_sdpa call that reads the heads in place through strides ((h d) channel split, no
 * transposes), then the output projection. Masks are turned into what xattn_sdpa takes: a keep
 * mask (uint8, nonzero = keep) for bool masks and -inf entries, an additive bias for float masks,
 * each with the smallest broadcast shape (B|1, H|1, I|1, J) that holds its sources.
 */
#include "base/base.h"
#include "modules/weights.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct xattn_mha {
    xattn_mha_config cfg;
    const float *wq, *wk, *wv; /* (inner, embed_dim), (inner, kdim), (inner, vdim) */
    const float *bq, *bk, *bv; /* (inner) each, or NULL                           */
    const float *wo, *bo;      /* (out_dim, inner), (out_dim) or NULL              */
    const float *bias_k, *bias_v; /* (inner) each: add_bias_kv, or NULL              */
    float *block;              /* every weight, one allocation                      */
};

/* ---------------------------------------------------------------------------------------- */
/* Loading                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Checks t is a float tensor of rank 2 (rows, cols); a dimension < 0 in `want` is free.
 * `implied` names what fixes the expected shape, for the message. */
static xattn_status check_2d(const xa_wref *t, int64_t rows, int64_t cols, const char *implied,
                             const char *want_text)
{
    char got[128];
    xa_wref_shape(t, got, sizeof got);
    xattn_status s = xa_wref_check_float(t);
    if (s != XATTN_OK) return s;
    if (t->ndim != 2)
        return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s but %s implies %s", t->shown, got,
                        implied, want_text);
    if (t->shape[0] <= 0 || t->shape[1] <= 0)
        return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has an empty shape %s", t->shown, got);
    if ((rows >= 0 && t->shape[0] != rows) || (cols >= 0 && t->shape[1] != cols))
        return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s but %s implies %s", t->shown, got,
                        implied, want_text);
    return XATTN_OK;
}

static xattn_status check_1d(const xa_wref *t, int64_t n, const char *implied)
{
    char got[128];
    xa_wref_shape(t, got, sizeof got);
    xattn_status s = xa_wref_check_float(t);
    if (s != XATTN_OK) return s;
    if (t->ndim != 1 || t->shape[0] != n)
        return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s but %s implies (%lld,)", t->shown,
                        got, implied, (long long)n);
    return XATTN_OK;
}

static int meta_true(const xattn_safetensors *st, const char *key)
{
    const char *v = xattn_st_meta_get(st, key);
    if (!v) return 0;
    return !strcmp(v, "True") || !strcmp(v, "true") || !strcmp(v, "1");
}

/* Rejects state_dict entries of diffusers Attention features this module does not compute. */
static xattn_status diffusers_reject_extras(const xattn_safetensors *st, const char *prefix)
{
    static const char *const extras[] = {"norm_q.", "norm_k.", "norm_cross.", "group_norm.",
                                         "spatial_norm.", "add_q_proj.", "add_k_proj.",
                                         "add_v_proj.", "to_add_out.", "norm_added_q.",
                                         "norm_added_k."};
    size_t plen = strlen(prefix);
    size_t n = xattn_st_count(st);
    for (size_t i = 0; i < n; i++) {
        const char *name = xattn_st_name(st, i);
        if (!name || strncmp(name, prefix, plen) != 0) continue;
        const char *rest = name + plen;
        char shown[XA_IO_NAME_CAP];
        for (size_t e = 0; e < sizeof extras / sizeof extras[0]; e++)
            if (!strncmp(rest, extras[e], strlen(extras[e])))
                return xa_error(XATTN_ERR_UNSUPPORTED,
                                "tensor '%s': diffusers Attention with %.*s is not supported "
                                "(only to_q/to_k/to_v/to_out.0)",
                                xa_io_printable(name, shown, sizeof shown),
                                (int)(strlen(extras[e]) - 1), extras[e]);
    }
    return XATTN_OK;
}

static xattn_status resolve_heads(const xattn_safetensors *st, int64_t heads, int64_t deflt,
                                  int64_t *out)
{
    if (heads > 0) {
        *out = heads;
        return XATTN_OK;
    }
    const char *mv = xattn_st_meta_get(st, "heads");
    if (mv) {
        int64_t h = xa_parse_positive(mv);
        if (h <= 0) {
            char shown[48];
            return xa_error(XATTN_ERR_FORMAT,
                            "__metadata__ 'heads' is \"%s\", not a positive integer",
                            xa_io_printable(mv, shown, sizeof shown));
        }
        *out = h;
        return XATTN_OK;
    }
    if (deflt > 0) {
        *out = deflt;
        return XATTN_OK;
    }
    return xa_error(XATTN_ERR_ARG, "the number of heads is not known: pass heads > 0 or store "
                                   "__metadata__ {\"heads\": \"N\"} in the file");
}

/* Assigns 64-byte aligned slots inside one block for every present tensor, allocates it and
 * copies the tensors in. */
static xattn_status alloc_and_fetch(const xattn_safetensors *st, xa_wref **refs, int n,
                                    float **block_out)
{
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        if (!refs[i]->present) continue;
        int64_t e = xa_wref_numel(refs[i]);
        total += (e + 15) & ~(int64_t)15;
    }
    float *block = xa_alloc((size_t)total * sizeof(float));
    if (!block) return XATTN_ERR_NOMEM;
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (!refs[i]->present) continue;
        refs[i]->dst = block + off;
        off += (xa_wref_numel(refs[i]) + 15) & ~(int64_t)15;
    }
    for (int i = 0; i < n; i++) {
        if (!refs[i]->present) continue;
        xattn_status s = xa_wref_fetch(st, refs[i]);
        if (s != XATTN_OK) {
            xa_free(block);
            return s;
        }
    }
    *block_out = block;
    return XATTN_OK;
}

/* A finite float from a metadata value. */
static xattn_status meta_float(const char *v, const char *key, float *out)
{
    char *end = NULL;
    double d = strtod(v, &end);
    while (end && (*end == ' ' || *end == '\t')) end++;
    if (!end || end == v || *end || !isfinite(d) || fabs(d) > 3.0e38) {
        char shown[XA_IO_NAME_CAP];
        return xa_error(XATTN_ERR_FORMAT, "__metadata__ %s is \"%s\", not a finite number", key,
                        xa_io_printable(v, shown, sizeof shown));
    }
    *out = (float)d;
    return XATTN_OK;
}

static xattn_status xa_missing_pair(const xa_wref *t)
{
    return xa_wref_missing(t, "bias_k and bias_v come together (add_bias_kv=True)");
}

static xattn_status load_torch(const xattn_safetensors *st, const char *prefix, int64_t heads_arg,
                               xattn_mha *m)
{
    xattn_status s;
    xa_wref inw, inb, qw, kw, vw, ow, ob, bk, bv;
    if ((s = xa_wref_find(st, "xattn_mha_load", prefix, "", "in_proj_weight", &inw)) ||
        (s = xa_wref_find(st, "xattn_mha_load", prefix, "", "in_proj_bias", &inb)) ||
        (s = xa_wref_find(st, "xattn_mha_load", prefix, "", "q_proj_weight", &qw)) ||
        (s = xa_wref_find(st, "xattn_mha_load", prefix, "", "k_proj_weight", &kw)) ||
        (s = xa_wref_find(st, "xattn_mha_load", prefix, "", "v_proj_weight", &vw)) ||
        (s = xa_wref_find(st, "xattn_mha_load", prefix, "", "out_proj.weight", &ow)) ||
        (s = xa_wref_find(st, "xattn_mha_load", prefix, "", "out_proj.bias", &ob)) ||
        (s = xa_wref_find(st, "xattn_mha_load", prefix, "", "bias_k", &bk)) ||
        (s = xa_wref_find(st, "xattn_mha_load", prefix, "", "bias_v", &bv)))
        return s;

    if (bk.present != bv.present)
        return xa_missing_pair(bk.present ? &bv : &bk);

    xattn_mha_config *c = &m->cfg;
    c->layout = XATTN_LAYOUT_TORCH_MHA;
    int64_t E;
    int packed = inw.present;
    if (packed) {
        if (inw.ndim == 2 && inw.shape[1] > 0 && inw.shape[0] == 3 * inw.shape[1]) {
            E = inw.shape[1];
        } else {
            char got[128];
            xa_wref_shape(&inw, got, sizeof got);
            return xa_error(XATTN_ERR_SHAPE,
                            "tensor '%s' has shape %s; expected (3*embed_dim, embed_dim)", inw.shown,
                            got);
        }
        if ((s = check_2d(&inw, 3 * E, E, "embed_dim", "(3*embed_dim, embed_dim)"))) return s;
        c->kdim = c->vdim = E;
    } else {
        if (!qw.present)
            return xa_error(XATTN_ERR_NOT_FOUND,
                            "tensor '%s' (or '%s') is missing", inw.shown, qw.shown);
        if (!kw.present) return xa_wref_missing(&kw, "q_proj_weight is present, so kdim/vdim differ from embed_dim");
        if (!vw.present) return xa_wref_missing(&vw, "q_proj_weight is present, so kdim/vdim differ from embed_dim");
        if (qw.ndim == 2 && qw.shape[0] > 0 && qw.shape[0] == qw.shape[1]) {
            E = qw.shape[0];
        } else {
            char got[128];
            xa_wref_shape(&qw, got, sizeof got);
            return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s; expected (embed_dim, embed_dim)",
                            qw.shown, got);
        }
        if ((s = check_2d(&qw, E, E, "embed_dim", "(embed_dim, embed_dim)"))) return s;
        char want[96];
        snprintf(want, sizeof want, "(%lld, kdim)", (long long)E);
        if ((s = check_2d(&kw, E, -1, "q_proj_weight", want))) return s;
        snprintf(want, sizeof want, "(%lld, vdim)", (long long)E);
        if ((s = check_2d(&vw, E, -1, "q_proj_weight", want))) return s;
        c->kdim = kw.shape[1];
        c->vdim = vw.shape[1];
    }
    const char *src = packed ? "in_proj_weight" : "q_proj_weight";
    if (inb.present && (s = check_1d(&inb, 3 * E, src))) return s;
    if (!ow.present) return xa_wref_missing(&ow, "the output projection of nn.MultiheadAttention");
    {
        char want[96];
        snprintf(want, sizeof want, "(%lld, %lld)", (long long)E, (long long)E);
        if ((s = check_2d(&ow, E, E, src, want))) return s;
    }
    if (ob.present && (s = check_1d(&ob, E, src))) return s;
    if (bk.present) { /* add_bias_kv: (1, 1, embed_dim) each */
        int64_t want[3] = {1, 1, E};
        for (int t = 0; t < 2; t++) {
            const xa_wref *r = t ? &bv : &bk;
            if ((s = xa_wref_check_float(r))) return s;
            if (r->ndim != 3 || memcmp(r->shape, want, sizeof want)) {
                char got[128];
                return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s but %s implies (1, 1, %lld)",
                                r->shown, xa_wref_shape(r, got, sizeof got), src, (long long)E);
            }
        }
    }
    c->add_bias_kv = bk.present;
    c->rescale_output_factor = 1.0f;
    c->add_zero_attn = meta_true(st, "add_zero_attn");

    int64_t H;
    if ((s = resolve_heads(st, heads_arg, 0, &H))) return s;
    if (E % H != 0)
        return xa_error(XATTN_ERR_SHAPE, "embed_dim %lld (from %s) is not divisible by heads %lld",
                        (long long)E, src, (long long)H);

    c->embed_dim = E;
    c->heads = H;
    c->head_dim = E / H;
    c->scale = (float)(1.0 / sqrt((double)c->head_dim));
    c->inner_dim = E;
    c->out_dim = E;
    c->has_in_bias = inb.present;
    c->has_out_bias = ob.present;

    xa_wref *refs[] = {&inw, &qw, &kw, &vw, &inb, &ow, &ob, &bk, &bv};
    if (packed) qw.present = kw.present = vw.present = 0; /* ignore stray unpacked copies */
    if ((s = alloc_and_fetch(st, refs, 9, &m->block))) return s;
    if (packed) {
        m->wq = inw.dst;
        m->wk = inw.dst + E * E;
        m->wv = inw.dst + 2 * E * E;
    } else {
        m->wq = qw.dst;
        m->wk = kw.dst;
        m->wv = vw.dst;
    }
    if (inb.present) {
        m->bq = inb.dst;
        m->bk = inb.dst + E;
        m->bv = inb.dst + 2 * E;
    }
    m->wo = ow.dst;
    m->bo = ob.present ? ob.dst : NULL;
    m->bias_k = bk.present ? bk.dst : NULL;
    m->bias_v = bv.present ? bv.dst : NULL;
    return XATTN_OK;
}

static xattn_status load_diffusers(const xattn_safetensors *st, const char *prefix,
                                   int64_t heads_arg, xattn_mha *m)
{
    xattn_status s;
    xa_wref qw, kw, vw, qb, kb, vb, ow, ob;
    if ((s = xa_wref_find(st, "xattn_mha_load", prefix, "", "to_q.weight", &qw)) ||
        (s = xa_wref_find(st, "xattn_mha_load", prefix, "", "to_k.weight", &kw)) ||
        (s = xa_wref_find(st, "xattn_mha_load", prefix, "", "to_v.weight", &vw)) ||
        (s = xa_wref_find(st, "xattn_mha_load", prefix, "", "to_q.bias", &qb)) ||
        (s = xa_wref_find(st, "xattn_mha_load", prefix, "", "to_k.bias", &kb)) ||
        (s = xa_wref_find(st, "xattn_mha_load", prefix, "", "to_v.bias", &vb)) ||
        (s = xa_wref_find(st, "xattn_mha_load", prefix, "", "to_out.0.weight", &ow)) ||
        (s = xa_wref_find(st, "xattn_mha_load", prefix, "", "to_out.0.bias", &ob)))
        return s;
    if ((s = diffusers_reject_extras(st, prefix))) return s;
    if (!kw.present) return xa_wref_missing(&kw, "diffusers Attention key projection");
    if (!vw.present) return xa_wref_missing(&vw, "diffusers Attention value projection");
    if (!ow.present) return xa_wref_missing(&ow, "diffusers Attention output projection");

    if ((s = check_2d(&qw, -1, -1, "diffusers Attention", "(inner_dim, query_dim)"))) return s;
    int64_t inner = qw.shape[0], qdim = qw.shape[1];
    char want[128];
    snprintf(want, sizeof want, "(%lld, cross_attention_dim)", (long long)inner);
    if ((s = check_2d(&kw, inner, -1, "to_q.weight", want))) return s;
    if ((s = check_2d(&vw, inner, -1, "to_q.weight", want))) return s;
    snprintf(want, sizeof want, "(out_dim, %lld)", (long long)inner);
    if ((s = check_2d(&ow, -1, inner, "to_q.weight", want))) return s;
    int64_t odim = ow.shape[0];
    if (qb.present && (s = check_1d(&qb, inner, "to_q.weight"))) return s;
    if (kb.present && (s = check_1d(&kb, inner, "to_k.weight"))) return s;
    if (vb.present && (s = check_1d(&vb, inner, "to_v.weight"))) return s;
    if (ob.present && (s = check_1d(&ob, odim, "to_out.0.weight"))) return s;

    int64_t H;
    if ((s = resolve_heads(st, heads_arg, 8, &H))) return s;
    if (inner % H != 0)
        return xa_error(XATTN_ERR_SHAPE,
                        "inner dim %lld (rows of to_q.weight) is not divisible by heads %lld",
                        (long long)inner, (long long)H);

    xattn_mha_config *c = &m->cfg;
    c->layout = XATTN_LAYOUT_DIFFUSERS;
    c->embed_dim = qdim;
    c->kdim = kw.shape[1];
    c->vdim = vw.shape[1];
    c->heads = H;
    c->head_dim = inner / H;
    c->inner_dim = inner;
    c->out_dim = odim;
    c->has_in_bias = qb.present || kb.present || vb.present;
    c->has_out_bias = ob.present;
    /* constructor options that leave no trace in the state_dict, from __metadata__ */
    c->scale = (float)(1.0 / sqrt((double)c->head_dim));
    const char *v;
    /* scale_qk=False: logits unscaled (diffusers then runs AttnProcessor with attn.scale = 1) */
    if ((v = xattn_st_meta_get(st, "scale_qk")) && !meta_true(st, "scale_qk")) c->scale = 1.0f;
    c->residual_connection = meta_true(st, "residual_connection");
    c->rescale_output_factor = 1.0f;
    if ((v = xattn_st_meta_get(st, "rescale_output_factor")) &&
        (s = meta_float(v, "rescale_output_factor", &c->rescale_output_factor)))
        return s;
    if (c->rescale_output_factor == 0.0f)
        return xa_error(XATTN_ERR_FORMAT, "__metadata__ rescale_output_factor is 0");
    if (c->residual_connection && c->out_dim != c->embed_dim)
        return xa_error(XATTN_ERR_SHAPE, "residual_connection needs out_dim (%lld, rows of "
                        "to_out.0.weight) == query_dim (%lld)", (long long)c->out_dim,
                        (long long)c->embed_dim);

    xa_wref *refs[] = {&qw, &kw, &vw, &qb, &kb, &vb, &ow, &ob};
    if ((s = alloc_and_fetch(st, refs, 8, &m->block))) return s;
    m->wq = qw.dst;
    m->wk = kw.dst;
    m->wv = vw.dst;
    m->bq = qb.present ? qb.dst : NULL;
    m->bk = kb.present ? kb.dst : NULL;
    m->bv = vb.present ? vb.dst : NULL;
    m->wo = ow.dst;
    m->bo = ob.present ? ob.dst : NULL;
    return XATTN_OK;
}

xattn_status xattn_mha_load(const xattn_safetensors *st, const char *prefix, int64_t heads,
                            xattn_mha **out)
{
    if (!out) return xa_error(XATTN_ERR_ARG, "xattn_mha_load: out is NULL");
    *out = NULL;
    if (!st) return xa_error(XATTN_ERR_ARG, "xattn_mha_load: safetensors handle is NULL");
    if (!prefix) prefix = "";
    char pp[XA_IO_NAME_CAP];
    xa_io_printable(prefix, pp, sizeof pp);

    int torch_names = xa_wref_has(st, prefix, "in_proj_weight") ||
                      xa_wref_has(st, prefix, "q_proj_weight");
    int diff_names = xa_wref_has(st, prefix, "to_q.weight");
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

    xattn_mha *m = calloc(1, sizeof *m);
    if (!m) return xa_error(XATTN_ERR_NOMEM, "xattn_mha_load: out of memory");
    xattn_status s = torch_names ? load_torch(st, prefix, heads, m)
                                 : load_diffusers(st, prefix, heads, m);
    if (s != XATTN_OK) {
        xa_free(m->block);
        free(m);
        return s;
    }
    xa_clear_error();
    *out = m;
    return XATTN_OK;
}

void xattn_mha_free(xattn_mha *m)
{
    if (!m) return;
    xa_free(m->block);
    free(m);
}

xattn_status xattn_mha_set_add_zero_attn(xattn_mha *m, int on)
{
    if (!m) return xa_error(XATTN_ERR_ARG, "xattn_mha_set_add_zero_attn: module is NULL");
    if (m->cfg.layout != XATTN_LAYOUT_TORCH_MHA && on)
        return xa_error(XATTN_ERR_ARG, "xattn_mha_set_add_zero_attn: only nn.MultiheadAttention "
                                       "has add_zero_attn");
    m->cfg.add_zero_attn = on != 0;
    return XATTN_OK;
}

void xattn_mha_get_config(const xattn_mha *m, xattn_mha_config *cfg)
{
    if (!cfg) return;
    if (!m) {
        memset(cfg, 0, sizeof *cfg);
        return;
    }
    *cfg = m->cfg;
}

/* ---------------------------------------------------------------------------------------- */
/* Masks                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* One mask source as a (B|1, H|1, I|1, J) view: element (b,h,i,j) at b*sb + h*sh + i*si + j. */
typedef struct mask_src {
    const uint8_t *u8;  /* bool mask, or NULL */
    const float *f32;   /* float mask, or NULL */
    int64_t sb, sh, si;
    int keep_if_true;   /* bool polarity: 1 = True keeps (SDPA), 0 = True masks (torch MHA) */
} mask_src;

static int src_has_neg_inf(const mask_src *s, int64_t n)
{
    for (int64_t t = 0; t < n; t++)
        if (s->f32[t] == -INFINITY) return 1;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Forward                                                                                  */
/* ---------------------------------------------------------------------------------------- */

xattn_status xattn_mha_forward(const xattn_mha *m, const xattn_mha_inputs *in, float *out,
                               float *attn_weights, int average_weights)
{
    if (!m) return xa_error(XATTN_ERR_ARG, "xattn_mha_forward: module is NULL");
    if (!in) return xa_error(XATTN_ERR_ARG, "xattn_mha_forward: inputs is NULL");
    if (!out) return xa_error(XATTN_ERR_ARG, "xattn_mha_forward: out is NULL");
    const xattn_mha_config *c = &m->cfg;
    const int64_t B = in->B, I = in->I, J = in->J, H = c->heads, dh = c->head_dim;
    const int64_t inner = c->inner_dim;
    if (B <= 0 || I <= 0 || J <= 0)
        return xa_error(XATTN_ERR_ARG, "xattn_mha_forward: sizes must be positive (B=%lld, I=%lld, J=%lld)",
                        (long long)B, (long long)I, (long long)J);
    if (!in->query) return xa_error(XATTN_ERR_ARG, "xattn_mha_forward: query is NULL");
    if (!in->key) return xa_error(XATTN_ERR_ARG, "xattn_mha_forward: key is NULL");
    const float *value = in->value ? in->value : in->key;
    if (!in->value && c->kdim != c->vdim)
        return xa_error(XATTN_ERR_SHAPE,
                        "xattn_mha_forward: value is NULL (= key) but kdim %lld != vdim %lld",
                        (long long)c->kdim, (long long)c->vdim);
    if (in->key_padding_mask && in->key_padding_mask_float)
        return xa_error(XATTN_ERR_ARG,
                        "xattn_mha_forward: give key_padding_mask as bool or as float, not both");
    if (in->attn_mask && in->attn_mask_float)
        return xa_error(XATTN_ERR_ARG,
                        "xattn_mha_forward: give attn_mask as bool or as float, not both");
    if (in->attn_mask_per_head != 0 && in->attn_mask_per_head != 1)
        return xa_error(XATTN_ERR_ARG, "xattn_mha_forward: attn_mask_per_head must be 0 or 1, got %d",
                        in->attn_mask_per_head);
    if (in->attn_mask_per_head && !in->attn_mask && !in->attn_mask_float)
        return xa_error(XATTN_ERR_ARG,
                        "xattn_mha_forward: attn_mask_per_head is set but no attn_mask is given");

    /* keys after add_bias_kv (bias_k / bias_v appended) and add_zero_attn (a zero key/value) */
    const int64_t X = c->add_bias_kv + c->add_zero_attn, Jx = J + X;
    /* sizes, with overflow checks */
    int64_t nq, nk, nbhij = 0, t;
    if (xa_mul_ok(B, I, &t) || xa_mul_ok(t, inner, &nq) || xa_mul_ok(B, Jx, &t) ||
        xa_mul_ok(t, inner, &nk) || xa_mul_ok(B * I, H, &t) || xa_mul_ok(t, Jx, &nbhij) ||
        xa_mul_ok(B * I, c->out_dim, &t) || xa_mul_ok(B * I, c->embed_dim, &t) ||
        xa_mul_ok(B * J, XA_MAX(c->kdim, c->vdim), &t) || nbhij > (INT64_MAX / 8))
        return xa_error(XATTN_ERR_NOMEM, "xattn_mha_forward: sizes overflow (B=%lld, I=%lld, J=%lld)",
                        (long long)B, (long long)I, (long long)J);

    /* ---- mask plan ---- */
    const int keep_true = c->layout == XATTN_LAYOUT_DIFFUSERS;
    mask_src srcs[2];
    int nsrc = 0;
    if (in->key_padding_mask || in->key_padding_mask_float) {
        mask_src *s = &srcs[nsrc++];
        s->u8 = in->key_padding_mask;
        s->f32 = in->key_padding_mask_float;
        s->sb = J;
        s->sh = 0;
        s->si = 0;
        s->keep_if_true = keep_true;
    }
    if (in->attn_mask || in->attn_mask_float) {
        mask_src *s = &srcs[nsrc++];
        s->u8 = in->attn_mask;
        s->f32 = in->attn_mask_float;
        s->si = J;
        if (in->attn_mask_per_head) {
            s->sb = H * I * J;
            s->sh = I * J;
        } else {
            s->sb = 0;
            s->sh = 0;
        }
        s->keep_if_true = keep_true;
    }
    /* keep mask: from bool sources and from -inf entries of float sources (so that a row whose
     * every logit is -inf counts as fully masked); bias: the sum of the float sources. */
    int need_keep = 0, n_float = 0;
    int src_in_keep[2] = {0, 0};
    for (int q = 0; q < nsrc; q++) {
        if (srcs[q].u8) {
            src_in_keep[q] = 1;
        } else {
            n_float++;
            int64_t n = (srcs[q].sb ? B : 1) * (srcs[q].sh ? H : 1) * (srcs[q].si ? I : 1) * J;
            src_in_keep[q] = src_has_neg_inf(&srcs[q], n);
        }
        need_keep |= src_in_keep[q];
    }
    int64_t kB = 1, kH = 1, kI = 1, bB = 1, bH = 1, bI = 1;
    for (int q = 0; q < nsrc; q++) {
        if (src_in_keep[q]) {
            if (srcs[q].sb) kB = B;
            if (srcs[q].sh) kH = H;
            if (srcs[q].si) kI = I;
        }
        if (srcs[q].f32) {
            if (srcs[q].sb) bB = B;
            if (srcs[q].sh) bH = H;
            if (srcs[q].si) bI = I;
        }
    }
    const int64_t n_keep = need_keep ? kB * kH * kI * Jx : 0;
    /* the float masks are read in place, unless two must be summed or extra keys widen them */
    const int copy_bias = n_float >= 2 || (n_float == 1 && X > 0);
    const int64_t n_bias = copy_bias ? bB * bH * bI * Jx : 0;

    const int avg = attn_weights && average_weights;
    const int64_t n_probs = avg ? nbhij : 0;

    /* ---- scratch: q, k, v, o projections, probs for averaging, mask buffers ---- */
    if ((2.0 * (double)nq + 2.0 * (double)nk + (double)n_probs + (double)n_bias + 64.0) * 4.0 +
            (double)n_keep > (double)(SIZE_MAX / 2))
        return xa_error(XATTN_ERR_NOMEM, "xattn_mha_forward: scratch for B=%lld, I=%lld, J=%lld "
                                         "overflows", (long long)B, (long long)I, (long long)J);
    size_t off_q = 0;
    size_t off_k = off_q + (((size_t)nq + 15) & ~(size_t)15);
    size_t off_v = off_k + (((size_t)nk + 15) & ~(size_t)15);
    size_t off_o = off_v + (((size_t)nk + 15) & ~(size_t)15);
    size_t off_p = off_o + (((size_t)nq + 15) & ~(size_t)15);
    size_t off_b = off_p + (((size_t)n_probs + 15) & ~(size_t)15);
    size_t n_f = off_b + (size_t)n_bias;
    size_t bytes = n_f * sizeof(float) + (size_t)n_keep;
    float *scratch = xa_alloc(bytes);
    if (!scratch) return XATTN_ERR_NOMEM;
    float *qp = scratch + off_q, *kp = scratch + off_k, *vp = scratch + off_v;
    float *op = scratch + off_o;
    float *probs = avg ? scratch + off_p : attn_weights;
    float *bias_buf = n_bias ? scratch + off_b : NULL;
    uint8_t *keep = n_keep ? (uint8_t *)(scratch + n_f) : NULL;

    xattn_sdpa_params p;
    xattn_sdpa_init(&p);

    if (keep) {
        for (int64_t b = 0; b < kB; b++)
            for (int64_t h = 0; h < kH; h++)
                for (int64_t i = 0; i < kI; i++) {
                    uint8_t *row = keep + ((b * kH + h) * kI + i) * Jx;
                    memset(row, 1, (size_t)Jx); /* the extra keys are never masked, as torch */
                    for (int q = 0; q < nsrc; q++) {
                        if (!src_in_keep[q]) continue;
                        const mask_src *s = &srcs[q];
                        int64_t base = b * s->sb + h * s->sh + i * s->si;
                        if (s->u8) {
                            const uint8_t *src = s->u8 + base;
                            if (s->keep_if_true) {
                                for (int64_t j = 0; j < J; j++)
                                    if (!src[j]) row[j] = 0;
                            } else {
                                for (int64_t j = 0; j < J; j++)
                                    if (src[j]) row[j] = 0;
                            }
                        } else {
                            const float *src = s->f32 + base;
                            for (int64_t j = 0; j < J; j++)
                                if (src[j] == -INFINITY) row[j] = 0;
                        }
                    }
                }
        p.mask = keep;
        p.mask_sb = kB > 1 ? kH * kI * Jx : 0;
        p.mask_sh = kH > 1 ? kI * Jx : 0;
        p.mask_si = kI > 1 ? Jx : 0;
    }
    if (n_float == 1 && !copy_bias) {
        for (int q = 0; q < nsrc; q++)
            if (srcs[q].f32) {
                p.bias = srcs[q].f32;
                p.bias_sb = srcs[q].sb;
                p.bias_sh = srcs[q].sh;
                p.bias_si = srcs[q].si;
            }
    } else if (copy_bias) {
        /* the sum of the float masks, the extra keys' columns 0 (F.pad in torch) */
        for (int64_t b = 0; b < bB; b++)
            for (int64_t h = 0; h < bH; h++)
                for (int64_t i = 0; i < bI; i++) {
                    float *row = bias_buf + ((b * bH + h) * bI + i) * Jx;
                    memset(row, 0, sizeof(float) * (size_t)Jx);
                    for (int q = 0; q < nsrc; q++) {
                        if (!srcs[q].f32) continue;
                        const float *a = srcs[q].f32 + b * srcs[q].sb + h * srcs[q].sh + i * srcs[q].si;
                        for (int64_t j = 0; j < J; j++) row[j] += a[j];
                    }
                }
        p.bias = bias_buf;
        p.bias_sb = bB > 1 ? bH * bI * Jx : 0;
        p.bias_sh = bH > 1 ? bI * Jx : 0;
        p.bias_si = bI > 1 ? Jx : 0;
    }

    /* ---- projections ---- */
    xattn_status s;
    if ((s = xattn_linear(in->query, B * I, c->embed_dim, m->wq, m->bq, inner, qp))) goto done;
    if (X == 0) {
        if ((s = xattn_linear(in->key, B * J, c->kdim, m->wk, m->bk, inner, kp)) ||
            (s = xattn_linear(value, B * J, c->vdim, m->wv, m->bv, inner, vp)))
            goto done;
    } else {
        /* per batch item: J projected keys/values, then bias_k/bias_v, then a zero row */
        for (int64_t b = 0; b < B; b++) {
            float *kb = kp + b * Jx * inner, *vb = vp + b * Jx * inner;
            if ((s = xattn_linear(in->key + b * J * c->kdim, J, c->kdim, m->wk, m->bk, inner, kb)) ||
                (s = xattn_linear(value + b * J * c->vdim, J, c->vdim, m->wv, m->bv, inner, vb)))
                goto done;
            int64_t r = J;
            if (c->add_bias_kv) {
                memcpy(kb + r * inner, m->bias_k, sizeof(float) * (size_t)inner);
                memcpy(vb + r * inner, m->bias_v, sizeof(float) * (size_t)inner);
                r++;
            }
            if (c->add_zero_attn) {
                memset(kb + r * inner, 0, sizeof(float) * (size_t)inner);
                memset(vb + r * inner, 0, sizeof(float) * (size_t)inner);
            }
        }
    }

    /* ---- attention: heads read in place, (B, N, H*dh) with strides (N*inner, dh, inner) ---- */
    p.B = B;
    p.H = H;
    p.I = I;
    p.J = Jx;
    p.dh = dh;
    p.dv = dh;
    p.q = qp;
    p.q_sb = I * inner;
    p.q_sh = dh;
    p.q_si = inner;
    p.k = kp;
    p.k_sb = Jx * inner;
    p.k_sh = dh;
    p.k_sj = inner;
    p.v = vp;
    p.v_sb = Jx * inner;
    p.v_sh = dh;
    p.v_sj = inner;
    p.out = op;
    p.o_sb = I * inner;
    p.o_sh = dh;
    p.o_si = inner;
    p.causal = in->is_causal ? 1 : 0;
    p.fill = XATTN_FILL_NEG_INF;
    p.has_scale = 1;
    p.scale = c->scale;
    p.probs = probs;
    if ((s = xattn_sdpa(&p))) goto done;

    /* ---- output projection ---- */
    if ((s = xattn_linear(op, B * I, inner, m->wo, m->bo, c->out_dim, out))) goto done;
    if (c->residual_connection || c->rescale_output_factor != 1.0f) {
        /* diffusers: out = (out + query) / rescale_output_factor */
        const float inv = 1.0f / c->rescale_output_factor;
        const int64_t n = B * I * c->out_dim;
        for (int64_t e = 0; e < n; e++)
            out[e] = ((c->residual_connection ? out[e] + in->query[e] : out[e])) * inv;
    }

    if (avg) {
        const float inv_h = 1.0f / (float)H;
        for (int64_t b = 0; b < B; b++) {
            float *dst = attn_weights + b * I * Jx;
            const float *src = probs + b * H * I * Jx;
            for (int64_t e = 0; e < I * Jx; e++) {
                float acc = 0;
                for (int64_t h = 0; h < H; h++) acc += src[h * I * Jx + e];
                dst[e] = acc * inv_h;
            }
        }
    }
    xa_clear_error();
done:
    xa_free(scratch);
    return s;
}
