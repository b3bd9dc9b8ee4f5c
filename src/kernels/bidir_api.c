/*
 * The public bidirectional attention core (xattn_bidir_attention and its backward): argument
 * checks with named errors, then the internal kernels of bidir.c. Lengths of 0 are answered
 * here (zero outputs and gradients, log-sum-exp -inf), since the kernels need I, J >= 1.
 */
#include "kernels.h"
#include "../base/base.h"

#include <math.h>
#include <string.h>

void xattn_bidir_init(xattn_bidir_params *p)
{
    if (p) memset(p, 0, sizeof *p);
}

void xattn_bidir_grads_init(xattn_bidir_grads *g)
{
    if (g) memset(g, 0, sizeof *g);
}

/* A named stride of a tensor: negative never; for outputs (is_output = 1) 0 only along an axis
 * of size 1 or of an empty tensor (is_output = 2: not checked). */
typedef struct named_stride {
    const char *name;
    int64_t stride, extent;
    int is_output;
} named_stride;

static xattn_status check_strides(const char *fn, const named_stride *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i].stride < 0)
            return xa_error(XATTN_ERR_ARG, "%s: %s is negative (%lld)", fn, s[i].name,
                            (long long)s[i].stride);
        if (s[i].is_output == 1 && s[i].stride == 0 && s[i].extent > 1)
            return xa_error(XATTN_ERR_ARG,
                            "%s: %s is 0 for an axis of %lld: outputs and gradients must not "
                            "overlap",
                            fn, s[i].name, (long long)s[i].extent);
    }
    return XATTN_OK;
}

static xattn_status check_params(const xattn_bidir_params *p, const char *fn)
{
    if (!p) return xa_error(XATTN_ERR_ARG, "%s: params is NULL", fn);
    if (!xa_reserved_zero(p->reserved_))
        return xa_error(XATTN_ERR_ARG, "%s: params->reserved_ must be zero", fn);
    if (p->B < 0 || p->H < 1 || p->I < 0 || p->J < 0 || p->dh < 1)
        return xa_error(XATTN_ERR_ARG,
                        "%s: bad sizes (B=%lld H=%lld I=%lld J=%lld dh=%lld): B, I, J >= 0, "
                        "H, dh >= 1",
                        fn, (long long)p->B, (long long)p->H, (long long)p->I, (long long)p->J,
                        (long long)p->dh);
    if (!p->qk || !p->cqk || !p->v || !p->cv)
        return xa_error(XATTN_ERR_ARG, "%s: %s is NULL", fn,
                        !p->qk    ? "qk"
                        : !p->cqk ? "cqk (the context's qk)"
                        : !p->v   ? "v"
                                  : "cv (the context's v)");
    if (!p->out || !p->cout)
        return xa_error(XATTN_ERR_ARG, "%s: %s is NULL", fn,
                        !p->out ? "out" : "cout (the context's output)");
    if ((p->talk == NULL) != (p->ctalk == NULL))
        return xa_error(XATTN_ERR_ARG,
                        "%s: talking heads need both weights (talk and ctalk), or neither", fn);
    if (p->has_scale && !isfinite(p->scale))
        return xa_error(XATTN_ERR_ARG, "%s: scale is not finite", fn);
    const int64_t B = p->B, H = p->H, I = p->I, J = p->J;
    const int OI = I ? 1 : 2, OJ = J ? 1 : 2; /* empty outputs are not checked */
    const named_stride st[] = {{"qk_sb", p->qk_sb, B, 0},     {"qk_sh", p->qk_sh, H, 0},
                               {"qk_si", p->qk_si, I, 0},     {"cqk_sb", p->cqk_sb, B, 0},
                               {"cqk_sh", p->cqk_sh, H, 0},   {"cqk_sj", p->cqk_sj, J, 0},
                               {"v_sb", p->v_sb, B, 0},       {"v_sh", p->v_sh, H, 0},
                               {"v_si", p->v_si, I, 0},       {"cv_sb", p->cv_sb, B, 0},
                               {"cv_sh", p->cv_sh, H, 0},     {"cv_sj", p->cv_sj, J, 0},
                               {"o_sb", p->o_sb, B, OI},      {"o_sh", p->o_sh, H, OI},
                               {"o_si", p->o_si, I, OI},      {"co_sb", p->co_sb, B, OJ},
                               {"co_sh", p->co_sh, H, OJ},    {"co_sj", p->co_sj, J, OJ},
                               {"mask_sb", p->mask_sb, B, 0}, {"cmask_sb", p->cmask_sb, B, 0},
                               {"bias_sb", p->bias_sb, B, 0}, {"bias_sh", p->bias_sh, H, 0}};
    xattn_status s = check_strides(fn, st, XA_N(st));
    if (s) return s;
    int64_t t;
    if (xa_mul_ok(B * H, I, &t) || xa_mul_ok(t, J, &t) || xa_mul_ok(t, (int64_t)sizeof(float), &t))
        return xa_error(XATTN_ERR_NOMEM, "%s: B*H*I*J overflows", fn);
    return XATTN_OK;
}

/* The internal problem of public parameters. */
static void to_internal(const xattn_bidir_params *p, xa_bidir *a)
{
    memset(a, 0, sizeof *a);
    a->B = p->B, a->H = p->H, a->I = p->I, a->J = p->J, a->dh = p->dh;
    a->qk = p->qk, a->qk_sb = p->qk_sb, a->qk_sh = p->qk_sh, a->qk_si = p->qk_si;
    a->cqk = p->cqk, a->cqk_sb = p->cqk_sb, a->cqk_sh = p->cqk_sh, a->cqk_sj = p->cqk_sj;
    a->v = p->v, a->v_sb = p->v_sb, a->v_sh = p->v_sh, a->v_si = p->v_si;
    a->cv = p->cv, a->cv_sb = p->cv_sb, a->cv_sh = p->cv_sh, a->cv_sj = p->cv_sj;
    a->out = p->out, a->o_sb = p->o_sb, a->o_sh = p->o_sh, a->o_si = p->o_si;
    a->cout = p->cout, a->co_sb = p->co_sb, a->co_sh = p->co_sh, a->co_sj = p->co_sj;
    a->scale = p->has_scale ? p->scale : (float)(1.0 / sqrt((double)p->dh));
    a->mask = p->mask, a->mask_sb = p->mask_sb;
    a->cmask = p->cmask, a->cmask_sb = p->cmask_sb;
    a->bias = p->bias, a->bias_sb = p->bias_sb, a->bias_sh = p->bias_sh;
    a->talk = p->talk, a->ctalk = p->ctalk;
    a->attn = p->attn, a->cattn = p->cattn;
    a->lse = p->lse, a->clse = p->clse;
}

/* Rows (B, H, n, d) of a strided per-head tensor set to zero (NULL-safe). */
static void zero_rows(float *x, int64_t B, int64_t H, int64_t n, int64_t d, int64_t sb, int64_t sh,
                      int64_t sr)
{
    for (int64_t b = 0; x && b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t r = 0; r < n; r++)
                memset(x + b * sb + h * sh + r * sr, 0, sizeof(float) * (size_t)d);
}

static void fill_floats(float *x, int64_t n, float v)
{
    for (int64_t i = 0; x && i < n; i++) x[i] = v;
}

/* I = 0 or J = 0: each softmax is over an empty set, so both outputs are zero. */
static void forward_empty(const xattn_bidir_params *p)
{
    zero_rows(p->out, p->B, p->H, p->I, p->dh, p->o_sb, p->o_sh, p->o_si);
    zero_rows(p->cout, p->B, p->H, p->J, p->dh, p->co_sb, p->co_sh, p->co_sj);
    fill_floats(p->lse, p->B * p->H * p->I, -INFINITY);
    fill_floats(p->clse, p->B * p->H * p->J, -INFINITY);
}

xattn_status xattn_bidir_attention(const xattn_bidir_params *p)
{
    static const char fn[] = "xattn_bidir_attention";
    xattn_status s = check_params(p, fn);
    if (s) return s;
    if (p->B == 0) return XATTN_OK;
    if (p->I == 0 || p->J == 0) {
        forward_empty(p);
        xa_clear_error();
        return XATTN_OK;
    }
    xa_bidir a;
    to_internal(p, &a);
    if ((s = xa_bidir_attention(&a))) return s;
    xa_clear_error();
    return XATTN_OK;
}

static xattn_status check_grads(const xattn_bidir_params *p, const xattn_bidir_grads *g,
                                const char *fn)
{
    if (!g) return xa_error(XATTN_ERR_ARG, "%s: grads is NULL", fn);
    if (!xa_reserved_zero(g->reserved_))
        return xa_error(XATTN_ERR_ARG, "%s: grads->reserved_ must be zero", fn);
    if (!g->dout || !g->dcout)
        return xa_error(XATTN_ERR_ARG, "%s: %s is NULL (both outputs' gradients are needed)", fn,
                        !g->dout ? "dout" : "dcout");
    if ((g->dtalk || g->dctalk) && !p->talk)
        return xa_error(XATTN_ERR_ARG,
                        "%s: dtalk / dctalk asked for without talking heads (talk, ctalk)", fn);
    const int64_t B = p->B, H = p->H, I = p->I, J = p->J;
    const int OI = I ? 1 : 2, OJ = J ? 1 : 2; /* empty outputs are not checked */
    const named_stride st[] = {{"do_sb", g->do_sb, B, 0},       {"do_sh", g->do_sh, H, 0},
                               {"do_si", g->do_si, I, 0},       {"dco_sb", g->dco_sb, B, 0},
                               {"dco_sh", g->dco_sh, H, 0},     {"dco_sj", g->dco_sj, J, 0},
                               {"dqk_sb", g->dqk_sb, B, OI},    {"dqk_sh", g->dqk_sh, H, OI},
                               {"dqk_si", g->dqk_si, I, OI},    {"dcqk_sb", g->dcqk_sb, B, OJ},
                               {"dcqk_sh", g->dcqk_sh, H, OJ},  {"dcqk_sj", g->dcqk_sj, J, OJ},
                               {"dv_sb", g->dv_sb, B, OI},      {"dv_sh", g->dv_sh, H, OI},
                               {"dv_si", g->dv_si, I, OI},      {"dcv_sb", g->dcv_sb, B, OJ},
                               {"dcv_sh", g->dcv_sh, H, OJ},    {"dcv_sj", g->dcv_sj, J, OJ},
                               {"dbias_sb", g->dbias_sb, B, 0}, {"dbias_sh", g->dbias_sh, H, 0}};
    /* a NULL gradient's strides are not read */
    const float *whose[] = {g->dout, g->dout, g->dout, g->dcout, g->dcout, g->dcout, g->dqk,
                            g->dqk,  g->dqk,  g->dcqk, g->dcqk,  g->dcqk,  g->dv,    g->dv,
                            g->dv,   g->dcv,  g->dcv,  g->dcv,   g->dbias, g->dbias};
    named_stride used[XA_N(st)];
    size_t n = 0;
    for (size_t i = 0; i < XA_N(st); i++)
        if (whose[i]) used[n++] = st[i];
    return check_strides(fn, used, n);
}

/* I = 0 or J = 0: the outputs do not depend on the inputs; the gradients are zero. */
static void backward_empty(const xattn_bidir_params *p, const xattn_bidir_grads *g)
{
    if (g->accumulate) return;
    const int64_t B = p->B, H = p->H, I = p->I, J = p->J, dh = p->dh;
    zero_rows(g->dqk, B, H, I, dh, g->dqk_sb, g->dqk_sh, g->dqk_si);
    zero_rows(g->dv, B, H, I, dh, g->dv_sb, g->dv_sh, g->dv_si);
    zero_rows(g->dcqk, B, H, J, dh, g->dcqk_sb, g->dcqk_sh, g->dcqk_sj);
    zero_rows(g->dcv, B, H, J, dh, g->dcv_sb, g->dcv_sh, g->dcv_sj);
    fill_floats(g->dtalk, H * H, 0.0f);
    fill_floats(g->dctalk, H * H, 0.0f);
}

xattn_status xattn_bidir_attention_backward(const xattn_bidir_params *p, const xattn_bidir_grads *g)
{
    static const char fn[] = "xattn_bidir_attention_backward";
    xattn_status s = check_params(p, fn);
    if (s) return s;
    if ((s = check_grads(p, g, fn))) return s;
    if (p->B == 0) return XATTN_OK;
    if (p->I == 0 || p->J == 0) {
        backward_empty(p, g);
        xa_clear_error();
        return XATTN_OK;
    }
    xa_bidir a;
    to_internal(p, &a);
    a.attn = a.cattn = NULL;
    a.lse = a.clse = NULL;
    xa_bidir_grad d;
    memset(&d, 0, sizeof d);
    d.dout = g->dout, d.do_sb = g->do_sb, d.do_sh = g->do_sh, d.do_si = g->do_si;
    d.dcout = g->dcout, d.dco_sb = g->dco_sb, d.dco_sh = g->dco_sh, d.dco_sj = g->dco_sj;
    d.dqk = g->dqk, d.dqk_sb = g->dqk_sb, d.dqk_sh = g->dqk_sh, d.dqk_si = g->dqk_si;
    d.dcqk = g->dcqk, d.dcqk_sb = g->dcqk_sb, d.dcqk_sh = g->dcqk_sh, d.dcqk_sj = g->dcqk_sj;
    d.dv = g->dv, d.dv_sb = g->dv_sb, d.dv_sh = g->dv_sh, d.dv_si = g->dv_si;
    d.dcv = g->dcv, d.dcv_sb = g->dcv_sb, d.dcv_sh = g->dcv_sh, d.dcv_sj = g->dcv_sj;
    d.dbias = g->dbias, d.dbias_sb = g->dbias_sb, d.dbias_sh = g->dbias_sh;
    d.dtalk = g->dtalk, d.dctalk = g->dctalk;
    d.lse = p->lse, d.clse = p->clse;
    d.accumulate = g->accumulate != 0;
    if ((s = xa_bidir_backward(&a, &d))) return s;
    xa_clear_error();
    return XATTN_OK;
}
