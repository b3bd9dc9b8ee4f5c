/*
 * Optimizers as torch.optim computes them (single-tensor path; float32 state), gradient-norm
 * clipping as torch.nn.utils.clip_grad_norm_, learning-rate schedules, and the optimizer state
 * as named tensors for checkpoints.
 *
 * AdamW (torch.optim.AdamW: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2,
 * amsgrad False), per step t (from 1) and parameter p with gradient g:
 *   p *= 1 - lr wd
 *   m = m + (1 - b1) (g - m)                      (lerp)
 *   v = b2 v + (1 - b2) g^2
 *   [amsgrad: vmax = max(vmax, v), v' = vmax]
 *   p -= lr / (1 - b1^t) * m / (sqrt(v') / sqrt(1 - b2^t) + eps)
 * SGD (torch.optim.SGD: lr 1e-3, momentum 0, dampening 0, weight_decay 0, nesterov False):
 *   d = g + wd p;  with momentum: buf = d (first step) else buf = momentum buf + (1 - dampening) d,
 *   d = nesterov ? d + momentum buf : buf;  p -= lr d
 */
#include "base/base.h"
#include "core/core.h"
#include "xattn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct xattn_optim {
    int sgd;
    double lr, b1, b2, eps, wd, momentum, dampening;
    int amsgrad, nesterov;
    int64_t step;
    size_t n;      /* parameters */
    int64_t *size; /* floats of each */
    float *state;  /* per parameter: AdamW m, v [, vmax]; SGD buf */
    size_t per;    /* state arrays per parameter */
    int64_t total; /* sum of sizes */
    int *started;  /* SGD: the momentum buffer exists (torch creates it at the first step) */
};

static const char *const OPT_NAMES = "lr, betas, eps, weight_decay, amsgrad (adamw); lr, "
                                     "momentum, dampening, weight_decay, nesterov (sgd)";

static xattn_status set_real(const char *key, const char *v, double *dst, double lo, double hi)
{
    double x;
    if (!xa_parse_real(v, &x) || !(x >= lo && x <= hi))
        return xa_error(XATTN_ERR_ARG, "optimizer option '%s' is \"%s\", not a number in [%g, %g]",
                        key, v, lo, hi);
    *dst = x;
    return XATTN_OK;
}

static xattn_status set_option(xattn_optim *o, const char *key, const char *v)
{
    int b;
    if (!strcmp(key, "lr")) return set_real(key, v, &o->lr, 0.0, 1e9);
    if (!strcmp(key, "weight_decay")) return set_real(key, v, &o->wd, 0.0, 1e9);
    if (!o->sgd && !strcmp(key, "eps")) return set_real(key, v, &o->eps, 0.0, 1e9);
    if (!o->sgd && !strcmp(key, "betas")) {
        char a[64], c[64];
        const char *comma = strchr(v, ',');
        if (!comma || (size_t)(comma - v) >= sizeof a || strlen(comma + 1) >= sizeof c)
            return xa_error(XATTN_ERR_ARG, "optimizer option 'betas' is \"%s\", not B1,B2", v);
        snprintf(a, sizeof a, "%.*s", (int)(comma - v), v);
        snprintf(c, sizeof c, "%s", comma + 1);
        xattn_status s = set_real("betas", a, &o->b1, 0.0, 0.999999999);
        return s ? s : set_real("betas", c, &o->b2, 0.0, 0.999999999);
    }
    if (o->sgd && !strcmp(key, "momentum")) return set_real(key, v, &o->momentum, 0.0, 1e9);
    if (o->sgd && !strcmp(key, "dampening")) return set_real(key, v, &o->dampening, -1e9, 1e9);
    if (!strcmp(key, o->sgd ? "nesterov" : "amsgrad")) {
        if (!xa_parse_bool(v, &b))
            return xa_error(XATTN_ERR_ARG, "optimizer option '%s' is \"%s\", not True or False",
                            key, v);
        if (o->sgd)
            o->nesterov = b;
        else
            o->amsgrad = b;
        return XATTN_OK;
    }
    return xa_error(XATTN_ERR_ARG, "%s has no option '%s' (options: %s)", o->sgd ? "sgd" : "adamw",
                    key, OPT_NAMES);
}

xattn_status xattn_optim_new(const char *kind, const xattn_option *opts, size_t n_opts,
                             const int64_t *sizes, size_t n, xattn_optim **out)
{
    static const char fn[] = "xattn_optim_new";
    if (!out) return xa_error(XATTN_ERR_ARG, "%s: out is NULL", fn);
    *out = NULL;
    if ((n && !sizes) || (n_opts && !opts)) return xa_error(XATTN_ERR_ARG, "%s: NULL argument", fn);
    const int sgd = kind && !strcmp(kind, "sgd");
    if (kind && !sgd && strcmp(kind, "adamw"))
        return xa_error(XATTN_ERR_ARG, "%s: unknown optimizer '%s' (adamw, sgd)", fn, kind);
    xattn_optim *o = calloc(1, sizeof *o);
    if (!o) return xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    o->sgd = sgd;
    o->lr = 1e-3;
    o->b1 = 0.9, o->b2 = 0.999, o->eps = 1e-8;
    o->wd = sgd ? 0.0 : 1e-2;
    xattn_status s = XATTN_OK;
    for (size_t k = 0; k < n_opts && !s; k++) {
        if (!opts[k].name || !opts[k].value) s = xa_error(XATTN_ERR_ARG, "%s: NULL option", fn);
        for (size_t j = 0; j < k && !s; j++)
            if (!strcmp(opts[j].name, opts[k].name))
                s = xa_error(XATTN_ERR_ARG, "optimizer option '%s' is given twice", opts[k].name);
        if (!s) s = set_option(o, opts[k].name, opts[k].value);
    }
    if (!s && sgd && o->nesterov && (o->momentum <= 0.0 || o->dampening != 0.0))
        s = xa_error(XATTN_ERR_ARG, "sgd: nesterov needs a momentum and zero dampening (as torch)");
    o->n = n;
    o->per = sgd ? 1 : (o->amsgrad ? 3 : 2);
    for (size_t i = 0; i < n && !s; i++) {
        if (sizes[i] < 0 || o->total > INT64_MAX / 4 - sizes[i])
            s = xa_error(XATTN_ERR_ARG, "%s: bad parameter size", fn);
        else
            o->total += sizes[i];
    }
    if (!s) {
        o->size = malloc(sizeof *o->size * (n ? n : 1));
        o->started = calloc(n ? n : 1, sizeof *o->started);
        o->state = xa_alloc(sizeof(float) * (size_t)(o->total * (int64_t)o->per + 1));
        if (!o->size || !o->started || !o->state)
            s = xa_error(XATTN_ERR_NOMEM, "%s: out of memory", fn);
    }
    if (s) {
        xattn_optim_free(o);
        return s;
    }
    if (n) memcpy(o->size, sizes, sizeof *o->size * n);
    memset(o->state, 0, sizeof(float) * (size_t)(o->total * (int64_t)o->per));
    *out = o;
    xa_clear_error();
    return XATTN_OK;
}

void xattn_optim_free(xattn_optim *o)
{
    if (!o) return;
    free(o->size);
    free(o->started);
    xa_free(o->state);
    free(o);
}

int64_t xattn_optim_step_count(const xattn_optim *o) { return o ? o->step : 0; }

double xattn_optim_get_lr(const xattn_optim *o) { return o ? o->lr : 0.0; }

xattn_status xattn_optim_set_lr(xattn_optim *o, double lr)
{
    if (!o || !(lr >= 0.0 && lr <= 1e9))
        return xa_error(XATTN_ERR_ARG, "xattn_optim_set_lr: no optimizer or lr %g out of range",
                        lr);
    o->lr = lr;
    return XATTN_OK;
}

/* state array a (0 .. per-1) of parameter i */
static float *state_of(const xattn_optim *o, size_t i, size_t a)
{
    int64_t off = 0;
    for (size_t k = 0; k < i; k++) off += o->size[k];
    return o->state + (int64_t)a * o->total + off;
}

static void adamw(const xattn_optim *o, float *p, const float *g, float *m, float *v, float *vmax,
                  int64_t n)
{
    const float b2 = (float)o->b2;
    const double bc1 = 1.0 - pow(o->b1, (double)o->step), bc2 = 1.0 - pow(o->b2, (double)o->step);
    const float step_size = (float)(o->lr / bc1), bc2_sqrt = (float)sqrt(bc2), eps = (float)o->eps;
    const float decay = (float)(1.0 - o->lr * o->wd), w1 = (float)(1.0 - o->b1),
                w2 = (float)(1.0 - o->b2);
    for (int64_t i = 0; i < n; i++) {
        p[i] *= decay;
        m[i] += w1 * (g[i] - m[i]);
        v[i] = v[i] * b2 + w2 * g[i] * g[i];
        float vv = v[i];
        if (vmax) vv = vmax[i] = vmax[i] > v[i] ? vmax[i] : v[i];
        const float denom = sqrtf(vv) / bc2_sqrt + eps;
        p[i] += -step_size * (m[i] / denom);
    }
}

static void sgd(const xattn_optim *o, float *p, const float *g, float *buf, int *started, int64_t n)
{
    const float lr = (float)o->lr, wd = (float)o->wd, mom = (float)o->momentum,
                damp = 1.0f - (float)o->dampening;
    for (int64_t i = 0; i < n; i++) {
        float d = g[i];
        if (wd != 0.0f) d += wd * p[i];
        if (mom != 0.0f) {
            buf[i] = *started ? mom * buf[i] + damp * d : d;
            d = o->nesterov ? d + mom * buf[i] : buf[i];
        }
        p[i] -= lr * d;
    }
    *started = 1;
}

xattn_status xattn_optim_step(xattn_optim *o, float *const *params, const float *const *grads)
{
    if (!o || (o->n && (!params || !grads)))
        return xa_error(XATTN_ERR_ARG, "xattn_optim_step: NULL argument");
    o->step++;
    for (size_t i = 0; i < o->n; i++) {
        if (!params[i] || !grads[i]) continue; /* a parameter without a gradient is left alone */
        if (o->sgd)
            sgd(o, params[i], grads[i], state_of(o, i, 0), &o->started[i], o->size[i]);
        else
            adamw(o, params[i], grads[i], state_of(o, i, 0), state_of(o, i, 1),
                  o->amsgrad ? state_of(o, i, 2) : NULL, o->size[i]);
    }
    return XATTN_OK;
}

double xattn_clip_grad_norm(float *const *grads, const int64_t *sizes, size_t n, double max_norm)
{
    double total = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!grads[i]) continue;
        double s = 0.0;
        for (int64_t k = 0; k < sizes[i]; k++) s += (double)grads[i][k] * grads[i][k];
        total += s;
    }
    total = sqrt(total);
    if (max_norm > 0.0) {
        const double coef = max_norm / (total + 1e-6);
        if (coef < 1.0)
            for (size_t i = 0; i < n; i++)
                for (int64_t k = 0; grads[i] && k < sizes[i]; k++) grads[i][k] *= (float)coef;
    }
    return total;
}

double xattn_lr_at(int64_t step, int64_t total_steps, int64_t warmup, int cosine, double lr)
{
    if (warmup > 0 && step < warmup) return lr * (double)step / (double)warmup;
    if (!cosine) return lr;
    const int64_t span = total_steps - warmup > 1 ? total_steps - warmup : 1;
    double progress = (double)(step - warmup) / (double)span;
    if (progress > 1.0) progress = 1.0;
    return lr * 0.5 * (1.0 + cos(3.14159265358979323846 * progress));
}

/* ---- state as named tensors ---- */

size_t xattn_optim_state_count(const xattn_optim *o) { return o ? o->n * o->per : 0; }

static const char *state_label(const xattn_optim *o, size_t a)
{
    static const char *const adam[3] = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
    return o->sgd ? "momentum_buffer" : adam[a];
}

xattn_status xattn_optim_state(const xattn_optim *o, size_t k, const char **label, size_t *param,
                               float **data, int64_t *size)
{
    if (!o || k >= o->n * o->per)
        return xa_error(XATTN_ERR_ARG, "xattn_optim_state: index %zu out of range", k);
    const size_t i = k / o->per, a = k % o->per;
    if (label) *label = state_label(o, a);
    if (param) *param = i;
    if (data) *data = state_of(o, i, a);
    if (size) *size = o->size[i];
    return XATTN_OK;
}

xattn_status xattn_optim_restore(xattn_optim *o, int64_t step, const int *started)
{
    if (!o || step < 0) return xa_error(XATTN_ERR_ARG, "xattn_optim_restore: bad arguments");
    o->step = step;
    for (size_t i = 0; i < o->n; i++) o->started[i] = started ? started[i] != 0 : step > 0;
    return XATTN_OK;
}

const char *xattn_optim_describe(const xattn_optim *o, char *buf, size_t cap)
{
    if (!o || !buf || !cap) return "";
    if (o->sgd)
        snprintf(buf, cap, "sgd lr=%.9g momentum=%.9g dampening=%.9g weight_decay=%.9g nesterov=%s",
                 o->lr, o->momentum, o->dampening, o->wd, o->nesterov ? "True" : "False");
    else
        snprintf(buf, cap, "adamw lr=%.9g betas=%.9g,%.9g eps=%.9g weight_decay=%.9g amsgrad=%s",
                 o->lr, o->b1, o->b2, o->eps, o->wd, o->amsgrad ? "True" : "False");
    return buf;
}
