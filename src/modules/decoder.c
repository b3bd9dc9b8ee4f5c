/*
 * M8: BERT-style decoder layers (transformers BertLayer with is_decoder=True,
 * add_cross_attention=True), a modality projector building the memory, and incremental decoding
 * with a per-layer self-attention K/V cache and cross-attention K/V computed once per memory.
 *
 * One code path serves both modes: the full forward is a state with max_len = T decoding T tokens
 * in one step. A step of n tokens at position pos:
 *   qkv = x Wqkv^T + b (one GEMM, weights of query/key/value stored back to back); k, v rows are
 *   copied into the cache; xa_attention over keys 0 .. pos+n-1 with the cached padding keep
 *   vector (kkeep), causal flag when pos = 0 (upper-left = correct alignment), a keep mask
 *   (n, pos+n) when pos > 0 and n > 1, nothing more for n = 1; fill -FLT_MAX as transformers'
 *   finfo.min additive masks.
 */
#include "base/base.h"
#include "kernels/kernels.h"
#include "modules/weights.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEC_MAX_LAYERS 4096
#define NW 26

enum {
    SQW, SKW, SVW, SQB, SKB, SVB, SOW, SOB, SLW, SLB,
    CQW, CKW, CVW, CQB, CKB, CVB, COW, COB, CLW, CLB,
    IW, IB, OW, OB, OLW, OLB
};

static const char *const WNAMES[NW] = {
    "attention.self.query.weight", "attention.self.key.weight", "attention.self.value.weight",
    "attention.self.query.bias", "attention.self.key.bias", "attention.self.value.bias",
    "attention.output.dense.weight", "attention.output.dense.bias",
    "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
    "crossattention.self.query.weight", "crossattention.self.key.weight",
    "crossattention.self.value.weight", "crossattention.self.query.bias",
    "crossattention.self.key.bias", "crossattention.self.value.bias",
    "crossattention.output.dense.weight", "crossattention.output.dense.bias",
    "crossattention.output.LayerNorm.weight", "crossattention.output.LayerNorm.bias",
    "intermediate.dense.weight", "intermediate.dense.bias", "output.dense.weight",
    "output.dense.bias", "output.LayerNorm.weight", "output.LayerNorm.bias"};

/* refs placed right after the previous one (packed q|k|v and k|v) */
static int glued(int k)
{
    return k == SKW || k == SVW || k == SKB || k == SVB || k == CVW || k == CVB;
}

typedef struct dec_layer {
    const float *w[NW];
} dec_layer;

#define NP 6 /* projector refs */
static const char *const PNAMES[NP] = {"proj.video.weight", "proj.video.bias",
                                       "proj.audio.weight", "proj.audio.bias",
                                       "type_embedding.video", "type_embedding.audio"};

struct xattn_decoder {
    xattn_decoder_config cfg;
    dec_layer *layers;
    const float *p[NP];
    float *block;
};

struct xattn_decoder_state {
    const xattn_decoder *m;
    int64_t B, max_len, max_step, pos, M, Mcap;
    int full; /* internal: only steps at pos 0 (no step mask) */
    float *kv;      /* per layer: K (B, max_len, h), V (B, max_len, h) */
    float *ckv;     /* per layer: (B, Mcap, 2h) cross K|V */
    uint8_t *ckeep; /* (B, Mcap) */
    uint8_t *keep;  /* (B, max_len) */
    uint8_t *smask; /* (B, max_step, max_len) or NULL */
    float *X, *QKV, *A, *Z, *F;
};

static const char *FN = "xattn_decoder_load";

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

void xattn_decoder_opts_init(xattn_decoder_opts *o)
{
    if (!o) return;
    o->heads = 0;
    o->layer_norm_eps = 0;
}

static xattn_status resolve_options(const xattn_safetensors *st, const xattn_decoder_opts *o,
                                    xattn_decoder_config *c)
{
    char shown[64];
    const char *v;
    if (o->heads > 0) {
        c->heads = o->heads;
    } else if ((v = xattn_st_meta_get(st, "heads")) ||
               (v = xattn_st_meta_get(st, "num_attention_heads"))) {
        c->heads = xa_parse_positive(v);
        if (c->heads <= 0)
            return xa_error(XATTN_ERR_FORMAT, "__metadata__ 'heads' is \"%s\", not a positive integer",
                            xa_io_printable(v, shown, sizeof shown));
    } else {
        c->heads = 12;
    }
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
        c->layer_norm_eps = 1e-12f;
    }
    return XATTN_OK;
}

static xattn_status check_layer(xa_wref *r, xattn_decoder_config *c)
{
    char got[128];
    const int64_t h = c->hidden;
    if (r[CKW].ndim != 2 || r[CKW].shape[1] <= 0) {
        xa_wref_shape(&r[CKW], got, sizeof got);
        return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s; expected (hidden, memory_dim)",
                        r[CKW].shown, got);
    }
    if (!c->memory_dim) c->memory_dim = r[CKW].shape[1];
    if (r[IW].ndim != 2 || r[IW].shape[0] <= 0) {
        xa_wref_shape(&r[IW], got, sizeof got);
        return xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s; expected (intermediate, hidden)",
                        r[IW].shown, got);
    }
    if (!c->intermediate) c->intermediate = r[IW].shape[0];
    const int64_t md = c->memory_dim, ff = c->intermediate;
    xattn_status s;
    for (int k = 0; k < NW; k++) {
        int64_t d0 = h, d1 = h;
        int nd = 2;
        const char *why = "hidden (attention.self.query.weight)";
        switch (k) {
        case SQB: case SKB: case SVB: case SOB: case SLW: case SLB: case CQB: case CKB: case CVB:
        case COB: case CLW: case CLB: case OB: case OLW: case OLB: nd = 1; break;
        case CKW: case CVW: d1 = md; why = "memory_dim (crossattention.self.key.weight)"; break;
        case IW: d0 = ff; why = "intermediate.dense.weight of the first layer"; break;
        case IB: nd = 1; d0 = ff; why = "intermediate size"; break;
        case OW: d1 = ff; why = "intermediate size and hidden"; break;
        default: break;
        }
        if ((s = check_shape(&r[k], nd, d0, d1, why))) return s;
    }
    return XATTN_OK;
}

xattn_status xattn_decoder_load(const xattn_safetensors *st, const char *prefix,
                                const xattn_decoder_opts *opts, xattn_decoder **out)
{
    if (!out) return xa_error(XATTN_ERR_ARG, "%s: out is NULL", FN);
    *out = NULL;
    if (!st) return xa_error(XATTN_ERR_ARG, "%s: safetensors handle is NULL", FN);
    if (!prefix) prefix = "";
    xattn_decoder_opts defo;
    xattn_decoder_opts_init(&defo);
    if (!opts) opts = &defo;
    char pp[XA_IO_NAME_CAP];
    xa_io_printable(prefix, pp, sizeof pp);

    int single = xa_wref_has(st, prefix, "attention.self.query.weight");
    int64_t L = 1;
    if (!single) {
        char name[64];
        for (L = 0; L < DEC_MAX_LAYERS; L++) {
            snprintf(name, sizeof name, "layer.%lld.attention.self.query.weight", (long long)L);
            if (!xa_wref_has(st, prefix, name)) break;
        }
        if (L == 0)
            return xa_error(XATTN_ERR_NOT_FOUND,
                            "no BERT decoder layer found: expected '%sattention.self.query.weight' "
                            "(BertLayer) or '%slayer.0.attention.self.query.weight' (BertEncoder)",
                            pp, pp);
        xattn_status s0 = xa_stray_layer(st, prefix, "layer.", L, "attention.self.query.weight");
        if (s0) return s0;
    }
    xattn_decoder *m = calloc(1, sizeof *m);
    xa_wref *refs = calloc((size_t)(L * NW + NP), sizeof *refs);
    if (!m || !refs) {
        free(m);
        free(refs);
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN);
    }
    xattn_decoder_config *c = &m->cfg;
    c->layers = L;
    xattn_status s = XATTN_OK;
    for (int64_t l = 0; l < L && !s; l++) {
        char mid[48];
        if (single)
            mid[0] = '\0';
        else
            snprintf(mid, sizeof mid, "layer.%lld.", (long long)l);
        xa_wref *r = &refs[l * NW];
        for (int k = 0; k < NW && !s; k++) s = xa_wref_find(st, FN, prefix, mid, WNAMES[k], &r[k]);
        for (int k = 0; k < NW && !s; k++)
            if (!r[k].present)
                s = xa_wref_missing(&r[k], "part of a BertLayer with is_decoder=True and "
                                           "add_cross_attention=True");
        if (s) break;
        if (l == 0) {
            if (r[SQW].ndim != 2 || r[SQW].shape[0] <= 0 || r[SQW].shape[0] != r[SQW].shape[1]) {
                char got[128];
                xa_wref_shape(&r[SQW], got, sizeof got);
                s = xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s; expected (hidden, hidden)",
                             r[SQW].shown, got);
                break;
            }
            c->hidden = r[SQW].shape[0];
        }
        s = check_layer(r, c);
    }
    xa_wref *pr = &refs[L * NW];
    for (int k = 0; k < NP && !s; k++) s = xa_wref_find(st, FN, prefix, "", PNAMES[k], &pr[k]);
    for (int k = 0; k < 4 && !s; k += 2) {
        if (pr[k].present != pr[k + 1].present) {
            s = xa_wref_missing(pr[k].present ? &pr[k + 1] : &pr[k],
                                "a modality projection has weight and bias");
            break;
        }
        if (!pr[k].present) continue;
        if (pr[k].ndim != 2 || pr[k].shape[1] <= 0) {
            char got[128];
            xa_wref_shape(&pr[k], got, sizeof got);
            s = xa_error(XATTN_ERR_SHAPE, "tensor '%s' has shape %s; expected (memory_dim, D)",
                         pr[k].shown, got);
            break;
        }
        if ((s = check_shape(&pr[k], 2, c->memory_dim, pr[k].shape[1], "memory_dim"))) break;
        s = check_shape(&pr[k + 1], 1, c->memory_dim, 0, "memory_dim");
        if (k == 0)
            c->video_dim = pr[k].shape[1];
        else
            c->audio_dim = pr[k].shape[1];
    }
    for (int k = 4; k < NP && !s; k++)
        if (pr[k].present) s = check_shape(&pr[k], 1, c->memory_dim, 0, "memory_dim");
    if (!s) s = resolve_options(st, opts, c);
    if (!s && c->hidden % c->heads != 0)
        s = xa_error(XATTN_ERR_SHAPE, "hidden size %lld (from attention.self.query.weight) is not "
                                      "divisible by heads %lld",
                     (long long)c->hidden, (long long)c->heads);
    if (!s) {
        c->head_dim = c->hidden / c->heads;
        c->video_type = pr[4].present;
        c->audio_type = pr[5].present;
        const int64_t nref = L * NW + NP;
        int64_t total = 0;
        for (int64_t i = 0; i < nref; i++)
            if (refs[i].present) total += (xa_wref_numel(&refs[i]) + 15) & ~(int64_t)15;
        m->block = xa_alloc((size_t)total * sizeof(float));
        m->layers = calloc((size_t)L, sizeof *m->layers);
        if (!m->block || !m->layers) s = xa_error(XATTN_ERR_NOMEM, "%s: out of memory", FN);
        int64_t off = 0;
        for (int64_t i = 0; i < nref && !s; i++) {
            if (!refs[i].present) continue;
            int glue = i < L * NW && glued((int)(i % NW));
            if (glue) {
                /* right after the previous tensor (un-pad it) */
                const xa_wref *prev = &refs[i - 1];
                off = (int64_t)(prev->dst - m->block) + xa_wref_numel(prev);
            }
            refs[i].dst = m->block + off;
            off += (xa_wref_numel(&refs[i]) + 15) & ~(int64_t)15;
            s = xa_wref_fetch(st, &refs[i]);
        }
    }
    if (!s) {
        for (int64_t l = 0; l < L; l++)
            for (int k = 0; k < NW; k++) m->layers[l].w[k] = refs[l * NW + k].dst;
        for (int k = 0; k < NP; k++) m->p[k] = pr[k].present ? pr[k].dst : NULL;
    }
    free(refs);
    if (s) {
        xattn_decoder_free(m);
        return s;
    }
    xa_clear_error();
    *out = m;
    return XATTN_OK;
}

void xattn_decoder_free(xattn_decoder *m)
{
    if (!m) return;
    xa_free(m->block);
    free(m->layers);
    free(m);
}

void xattn_decoder_get_config(const xattn_decoder *m, xattn_decoder_config *cfg)
{
    if (!cfg) return;
    if (!m) {
        memset(cfg, 0, sizeof *cfg);
        return;
    }
    *cfg = m->cfg;
}

/* ---------------------------------------------------------------------------------------- */
/* Projector                                                                                */
/* ---------------------------------------------------------------------------------------- */

static xattn_status project_one(const float *x, int64_t B, int64_t F, int64_t N, int64_t D,
                                const float *W, const float *b, const float *type, int64_t md,
                                int64_t off, int64_t Mt, float *mem, float *pool)
{
    const float inv = 1.0f / (float)F;
    for (int64_t bb = 0; bb < B; bb++) {
        float *pb = pool + bb * N * D;
        const float *xb = x + bb * F * N * D;
        memcpy(pb, xb, (size_t)(N * D) * sizeof(float));
        for (int64_t f = 1; f < F; f++) xa_kern()->axpy(1.0f, xb + f * N * D, pb, N * D);
        if (F > 1)
            for (int64_t t = 0; t < N * D; t++) pb[t] *= inv;
    }
    for (int64_t bb = 0; bb < B; bb++) {
        float *dst = mem + (bb * Mt + off) * md;
        xattn_status s = xattn_sgemm(0, 1, N, md, D, 1.0f, pool + bb * N * D, D, W, D, 0.0f, dst, md);
        if (s) return s;
        for (int64_t i = 0; i < N; i++) {
            xa_kern()->axpy(1.0f, b, dst + i * md, md);
            if (type) xa_kern()->axpy(1.0f, type, dst + i * md, md);
        }
    }
    return XATTN_OK;
}

xattn_status xattn_decoder_project(const xattn_decoder *m, int64_t B, const float *video,
                                   int64_t Fv, int64_t Nv, const float *audio, int64_t Fa,
                                   int64_t Na, float *memory)
{
    const char *fn = "xattn_decoder_project";
    if (!m || !memory) return xa_error(XATTN_ERR_ARG, "%s: module or memory is NULL", fn);
    if (!video) Nv = 0;
    if (!audio) Na = 0;
    if (B <= 0 || Nv < 0 || Na < 0 || Nv + Na <= 0 || (Nv && Fv <= 0) || (Na && Fa <= 0))
        return xa_error(XATTN_ERR_SHAPE, "%s: bad sizes B=%lld, Fv=%lld, Nv=%lld, Fa=%lld, Na=%lld "
                                         "(need B >= 1, a modality with N >= 1 and F >= 1)",
                        fn, (long long)B, (long long)Fv, (long long)Nv, (long long)Fa,
                        (long long)Na);
    const xattn_decoder_config *c = &m->cfg;
    if (Nv && !m->p[0])
        return xa_error(XATTN_ERR_NOT_FOUND, "%s: video given but the file has no proj.video.weight", fn);
    if (Na && !m->p[2])
        return xa_error(XATTN_ERR_NOT_FOUND, "%s: audio given but the file has no proj.audio.weight", fn);
    const int64_t lim = INT64_MAX / 64;
    int64_t nv = Nv ? Nv * c->video_dim : 0, na = Na ? Na * c->audio_dim : 0;
    int64_t big = nv > na ? nv : na;
    if (B > lim / (big + 1) || (Nv && Fv > lim / (nv * B)) || (Na && Fa > lim / (na * B)))
        return xa_error(XATTN_ERR_NOMEM, "%s: sizes overflow", fn);
    float *pool = xa_alloc((size_t)(B * big) * sizeof(float));
    if (!pool) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    xattn_status s = XATTN_OK;
    const int64_t Mt = Nv + Na;
    if (Nv)
        s = project_one(video, B, Fv, Nv, c->video_dim, m->p[0], m->p[1], m->p[4], c->memory_dim,
                        0, Mt, memory, pool);
    if (!s && Na)
        s = project_one(audio, B, Fa, Na, c->audio_dim, m->p[2], m->p[3], m->p[5], c->memory_dim,
                        Nv, Mt, memory, pool);
    xa_free(pool);
    if (!s) xa_clear_error();
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* State                                                                                    */
/* ---------------------------------------------------------------------------------------- */

static xattn_status state_new(const xattn_decoder *m, int64_t B, int64_t max_len, int64_t max_step,
                              int full, xattn_decoder_state **out)
{
    const char *fn = "xattn_decoder_state_new";
    if (!out) return xa_error(XATTN_ERR_ARG, "%s: out is NULL", fn);
    *out = NULL;
    if (!m) return xa_error(XATTN_ERR_ARG, "%s: module is NULL", fn);
    if (B <= 0 || max_len <= 0 || max_step <= 0 || max_step > max_len)
        return xa_error(XATTN_ERR_SHAPE, "%s: bad sizes B=%lld, max_len=%lld, max_step=%lld (need "
                                         "B >= 1 and 1 <= max_step <= max_len)",
                        fn, (long long)B, (long long)max_len, (long long)max_step);
    const xattn_decoder_config *c = &m->cfg;
    const int64_t h = c->hidden, ff = c->intermediate, L = c->layers;
    const int64_t lim = INT64_MAX / 64;
    int64_t wide = ff > 3 * h ? ff : 3 * h;
    if (B > lim / max_len || B * max_len > lim / (2 * h * L + 1) ||
        B * max_step > lim / (wide + 3 * h + 64) || (!full && max_step > 1 && B * max_step > lim / max_len))
        return xa_error(XATTN_ERR_NOMEM, "%s: cache for B=%lld, max_len=%lld overflows", fn,
                        (long long)B, (long long)max_len);
    xattn_decoder_state *s = calloc(1, sizeof *s);
    if (!s) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    s->m = m;
    s->B = B;
    s->max_len = max_len;
    s->max_step = max_step;
    s->full = full;
    const int64_t R = B * max_step;
    s->kv = xa_alloc((size_t)(L * 2 * B * max_len * h) * sizeof(float));
    s->keep = malloc((size_t)(B * max_len));
    s->X = xa_alloc((size_t)(R * h) * sizeof(float));
    s->QKV = xa_alloc((size_t)(R * 3 * h) * sizeof(float));
    s->A = xa_alloc((size_t)(R * h) * sizeof(float));
    s->Z = xa_alloc((size_t)(R * h) * sizeof(float));
    s->F = xa_alloc((size_t)(R * ff) * sizeof(float));
    int need_mask = !full && max_step > 1;
    if (need_mask) s->smask = malloc((size_t)(R * max_len));
    if (!s->kv || !s->keep || !s->X || !s->QKV || !s->A || !s->Z || !s->F ||
        (need_mask && !s->smask)) {
        xattn_decoder_state_free(s);
        return xa_error(XATTN_ERR_NOMEM, "%s: out of memory (B=%lld, max_len=%lld)", fn,
                        (long long)B, (long long)max_len);
    }
    *out = s;
    xa_clear_error();
    return XATTN_OK;
}

xattn_status xattn_decoder_state_new(const xattn_decoder *m, int64_t B, int64_t max_len,
                                     int64_t max_step, xattn_decoder_state **out)
{
    return state_new(m, B, max_len, max_step, 0, out);
}

void xattn_decoder_state_free(xattn_decoder_state *s)
{
    if (!s) return;
    xa_free(s->kv);
    xa_free(s->ckv);
    free(s->ckeep);
    free(s->keep);
    free(s->smask);
    xa_free(s->X);
    xa_free(s->QKV);
    xa_free(s->A);
    xa_free(s->Z);
    xa_free(s->F);
    free(s);
}

void xattn_decoder_reset(xattn_decoder_state *s)
{
    if (s) s->pos = 0;
}

int64_t xattn_decoder_position(const xattn_decoder_state *s)
{
    return s ? s->pos : 0;
}

xattn_status xattn_decoder_set_memory(xattn_decoder_state *s, int64_t M, const float *memory,
                                      const uint8_t *memory_mask)
{
    const char *fn = "xattn_decoder_set_memory";
    if (!s || !memory) return xa_error(XATTN_ERR_ARG, "%s: state or memory is NULL", fn);
    const xattn_decoder_config *c = &s->m->cfg;
    const int64_t h = c->hidden, md = c->memory_dim, L = c->layers, B = s->B;
    if (M <= 0) return xa_error(XATTN_ERR_SHAPE, "%s: memory length %lld (need >= 1)", fn, (long long)M);
    const int64_t lim = INT64_MAX / 64;
    if (M > lim / B || B * M > lim / (2 * h * L + md + 1))
        return xa_error(XATTN_ERR_NOMEM, "%s: memory of length %lld overflows", fn, (long long)M);
    if (M > s->Mcap) {
        xa_free(s->ckv);
        free(s->ckeep);
        s->ckv = xa_alloc((size_t)(L * B * M * 2 * h) * sizeof(float));
        s->ckeep = malloc((size_t)(B * M));
        if (!s->ckv || !s->ckeep) {
            xa_free(s->ckv);
            free(s->ckeep);
            s->ckv = NULL;
            s->ckeep = NULL;
            s->Mcap = 0;
            s->M = 0;
            return xa_error(XATTN_ERR_NOMEM, "%s: out of memory (memory length %lld)", fn,
                            (long long)M);
        }
        s->Mcap = M;
    }
    s->M = 0;
    for (int64_t l = 0; l < L; l++) {
        const dec_layer *y = &s->m->layers[l];
        /* key and value weights are stored back to back: one (B*M, 2h) projection */
        xattn_status st = xattn_linear(memory, B * M, md, y->w[CKW], y->w[CKB], 2 * h,
                                       s->ckv + l * B * M * 2 * h);
        if (st) return st;
    }
    for (int64_t i = 0; i < B * M; i++) s->ckeep[i] = memory_mask ? memory_mask[i] != 0 : 1;
    s->M = M;
    s->pos = 0;
    xa_clear_error();
    return XATTN_OK;
}

static void attn_common(xa_attn *at, const xattn_decoder_config *c, int64_t B, int64_t n,
                        float *out, const char *fn)
{
    const int64_t h = c->hidden, dh = c->head_dim;
    memset(at, 0, sizeof *at);
    at->B = B;
    at->H = c->heads;
    at->I = n;
    at->dh = dh;
    at->dv = dh;
    at->out = out;
    at->o_sb = n * h;
    at->o_sh = dh;
    at->o_si = h;
    at->scale = 1.0f / sqrtf((float)dh);
    at->fill = XATTN_FILL_MIN_FLOAT;
    at->fn = fn;
}

xattn_status xattn_decoder_step(xattn_decoder_state *s, int64_t n, const float *x,
                                const uint8_t *attention_mask, float *out)
{
    const char *fn = "xattn_decoder_step";
    if (!s || !x || !out) return xa_error(XATTN_ERR_ARG, "%s: state, x or out is NULL", fn);
    if (s->M <= 0)
        return xa_error(XATTN_ERR_ARG, "%s: no memory set (call xattn_decoder_set_memory first)", fn);
    if (n <= 0 || n > s->max_step)
        return xa_error(XATTN_ERR_SHAPE, "%s: %lld tokens per step (need 1 .. max_step = %lld)",
                        fn, (long long)n, (long long)s->max_step);
    if (s->pos + n > s->max_len)
        return xa_error(XATTN_ERR_SHAPE, "%s: position %lld + %lld tokens exceeds max_len %lld", fn,
                        (long long)s->pos, (long long)n, (long long)s->max_len);
    if (s->full && s->pos > 0)
        return xa_error(XATTN_ERR_ARG, "%s: internal state used past position 0", fn);
    const xattn_decoder *m = s->m;
    const xattn_decoder_config *c = &m->cfg;
    const int64_t B = s->B, h = c->hidden, ff = c->intermediate, pos = s->pos, J = pos + n;
    const int64_t R = B * n, ML = s->max_len, M = s->M;
    const float eps = c->layer_norm_eps;
    float *X = s->X, *QKV = s->QKV, *A = s->A, *Z = s->Z, *Fb = s->F;

    memcpy(X, x, (size_t)(R * h) * sizeof(float));
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < n; i++) {
            uint8_t k = attention_mask ? attention_mask[b * n + i] != 0 : 1;
            s->keep[b * ML + pos + i] = k;
        }
    const uint8_t *mask = NULL;
    if (pos > 0 && n > 1) {
        uint8_t *mk = s->smask;
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < n; i++) {
                uint8_t *row = mk + (b * n + i) * J;
                memcpy(row, s->keep + b * ML, (size_t)J);
                memset(row + pos + i + 1, 0, (size_t)(n - 1 - i));
            }
        mask = mk;
    }

    xa_attn sa, ca;
    attn_common(&sa, c, B, n, A, fn);
    sa.J = J;
    sa.q = QKV;
    sa.q_sb = n * 3 * h;
    sa.q_sh = c->head_dim;
    sa.q_si = 3 * h;
    sa.k_sb = ML * h;
    sa.k_sh = c->head_dim;
    sa.k_sj = h;
    sa.v_sb = ML * h;
    sa.v_sh = c->head_dim;
    sa.v_sj = h;
    sa.kkeep = s->keep;
    sa.kkeep_sb = ML;
    if (pos == 0) sa.causal = 1;
    if (mask) {
        sa.mask = mask;
        sa.mask_sb = n * J;
        sa.mask_sh = 0;
        sa.mask_si = J;
    }
    attn_common(&ca, c, B, n, A, fn);
    ca.J = M;
    ca.q = QKV;
    ca.q_sb = n * h;
    ca.q_sh = c->head_dim;
    ca.q_si = h;
    ca.k_sb = M * 2 * h;
    ca.k_sh = c->head_dim;
    ca.k_sj = 2 * h;
    ca.v_sb = M * 2 * h;
    ca.v_sh = c->head_dim;
    ca.v_sj = 2 * h;
    ca.kkeep = s->ckeep;
    ca.kkeep_sb = M;

    xattn_status st = XATTN_OK;
    for (int64_t l = 0; l < c->layers && !st; l++) {
        const dec_layer *y = &m->layers[l];
        float *Kc = s->kv + l * 2 * B * ML * h, *Vc = Kc + B * ML * h;
        /* ---- causal self-attention ---- */
        if ((st = xattn_linear(X, R, h, y->w[SQW], y->w[SQB], 3 * h, QKV))) break;
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < n; i++) {
                const float *src = QKV + (b * n + i) * 3 * h;
                memcpy(Kc + (b * ML + pos + i) * h, src + h, (size_t)h * sizeof(float));
                memcpy(Vc + (b * ML + pos + i) * h, src + 2 * h, (size_t)h * sizeof(float));
            }
        sa.k = Kc;
        sa.v = Vc;
        if ((st = xa_attention(&sa))) break;
        if ((st = xattn_linear(A, R, h, y->w[SOW], y->w[SOB], h, Z))) break;
        xa_kern()->axpy(1.0f, Z, X, R * h);
        if ((st = xattn_layernorm(X, R, h, y->w[SLW], y->w[SLB], eps, X))) break;
        /* ---- cross-attention over the cached memory K/V ---- */
        if ((st = xattn_linear(X, R, h, y->w[CQW], y->w[CQB], h, QKV))) break;
        ca.k = s->ckv + l * B * M * 2 * h;
        ca.v = ca.k + h;
        if ((st = xa_attention(&ca))) break;
        if ((st = xattn_linear(A, R, h, y->w[COW], y->w[COB], h, Z))) break;
        xa_kern()->axpy(1.0f, Z, X, R * h);
        if ((st = xattn_layernorm(X, R, h, y->w[CLW], y->w[CLB], eps, X))) break;
        /* ---- feed-forward ---- */
        if ((st = xattn_linear(X, R, h, y->w[IW], y->w[IB], ff, Fb))) break;
        if ((st = xattn_gelu(Fb, R * ff, 0))) break;
        if ((st = xattn_linear(Fb, R, ff, y->w[OW], y->w[OB], h, Z))) break;
        xa_kern()->axpy(1.0f, Z, X, R * h);
        if ((st = xattn_layernorm(X, R, h, y->w[OLW], y->w[OLB], eps, X))) break;
    }
    if (st) return st;
    memcpy(out, X, (size_t)(R * h) * sizeof(float));
    s->pos += n;
    xa_clear_error();
    return XATTN_OK;
}

xattn_status xattn_decoder_forward(const xattn_decoder *m, int64_t B, int64_t T, const float *x,
                                   const uint8_t *attention_mask, int64_t M, const float *memory,
                                   const uint8_t *memory_mask, float *out)
{
    const char *fn = "xattn_decoder_forward";
    if (!m || !x || !memory || !out)
        return xa_error(XATTN_ERR_ARG, "%s: module, x, memory or out is NULL", fn);
    if (B <= 0 || T <= 0 || M <= 0)
        return xa_error(XATTN_ERR_SHAPE, "%s: bad sizes B=%lld, T=%lld, M=%lld (need all >= 1)", fn,
                        (long long)B, (long long)T, (long long)M);
    xattn_decoder_state *s = NULL;
    xattn_status st = state_new(m, B, T, T, 1, &s);
    if (!st) st = xattn_decoder_set_memory(s, M, memory, memory_mask);
    if (!st) st = xattn_decoder_step(s, T, x, attention_mask, out);
    xattn_decoder_state_free(s);
    return st;
}
