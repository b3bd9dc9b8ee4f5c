#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tu_failures = 0;
int tu_checks = 0;

int tu_finish(const char *name)
{
    if (tu_failures) {
        fprintf(stderr, "%s: %d of %d checks FAILED\n", name, tu_failures, tu_checks);
        return 1;
    }
    if (tu_checks == 0) {
        fprintf(stderr, "%s: no checks ran\n", name);
        return 1;
    }
    printf("%s: %d checks passed\n", name, tu_checks);
    return 0;
}

int tu_emulated(void)
{
    const char *e = getenv("XATTN_TEST_EMULATED");
    return e && *e && strcmp(e, "0") != 0;
}

double tu_rel_err(const float *got, const float *ref, int64_t n)
{
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - (double)ref[i]) / (1.0 + fabs((double)ref[i]));
        if (isnan(got[i]) != isnan(ref[i]) || isnan(e)) e = INFINITY;
        if (isnan(got[i]) && isnan(ref[i])) e = 0;
        if (e > worst) worst = e;
    }
    return worst;
}

double tu_check_close(const char *what, const float *got, const float *ref, int64_t n, double tol)
{
    double e = tu_rel_err(got, ref, n);
    tu_checks++;
    if (!(e <= tol)) {
        tu_failures++;
        fprintf(stderr, "%s: max rel error %.3g > %.3g\n", what, e, tol);
    }
    return e;
}

void tu_fill_uniform(float *x, int64_t n, float lo, float hi, uint64_t *state)
{
    for (int64_t i = 0; i < n; i++) {
        *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
        double u = (double)(*state >> 11) / 9007199254740992.0;
        x[i] = lo + (float)u * (hi - lo);
    }
}

const char *tu_fixture(const char *name)
{
    static char buf[4096];
    const char *dir = getenv("XATTN_FIXTURES");
    snprintf(buf, sizeof buf, "%s/%s", dir ? dir : XATTN_FIXTURES, name);
    return buf;
}

float *tu_get_f32(const xattn_safetensors *st, const char *name, xattn_array *arr)
{
    xattn_status s = xattn_st_get(st, name, XATTN_F32, arr);
    if (s != XATTN_OK) {
        fprintf(stderr, "fixture tensor '%s': %s\n", name, xattn_last_error());
        exit(1);
    }
    return (float *)arr->data;
}

int64_t tu_param_numel(const xattn_param_desc *p)
{
    int64_t n = 1;
    for (int d = 0; d < p->ndim; d++) n *= p->shape[d];
    return n;
}

double tu_check_param_grads(const char *file, const xattn_module *m, const xattn_safetensors *st,
                            float *const *dp, double tol, int *n_checked)
{
    double err = 0;
    int n = 0;
    for (size_t i = 0; i < xattn_module_param_count(m); i++) {
        xattn_param_desc p;
        xattn_module_param(m, i, &p);
        if (!p.data) continue;
        char key[300], what[400];
        snprintf(key, sizeof key, "grad.%s", p.name);
        xattn_array r;
        memset(&r, 0, sizeof r);
        float *ref = tu_get_f32(st, key, &r);
        snprintf(what, sizeof what, "%s d(%s)", file, p.name);
        err = tu_max(err, tu_check_close(what, dp[i], ref, tu_param_numel(&p), tol));
        xattn_array_free(&r);
        n++;
    }
    if (n_checked) *n_checked = n;
    return err;
}

const xattn_param_desc *tu_param(const xattn_module *m, const char *name, xattn_param_desc *p)
{
    for (size_t i = 0; i < xattn_module_param_count(m); i++) {
        CHECK_OK(xattn_module_param(m, i, p));
        if (!strcmp(p->name, name)) return p;
    }
    fprintf(stderr, "no parameter '%s'\n", name);
    CHECK(0);
    return NULL;
}

/* Mean, unbiased variance and max |x| of parameter `name` with data; 0 (a failed check) if
 * there is none. Returns the element count. */
static int64_t moments(const xattn_module *m, const char *name, double *mean, double *var,
                       double *mx)
{
    xattn_param_desc p;
    *mean = *var = *mx = 0;
    if (!tu_param(m, name, &p)) return 0;
    const int64_t n = tu_param_numel(&p);
    if (!p.data || n < 2) {
        fprintf(stderr, "parameter '%s' has no data to test\n", name);
        CHECK(0);
        return 0;
    }
    for (int64_t i = 0; i < n; i++) {
        *mean += p.data[i];
        *mx = tu_max(*mx, fabs(p.data[i]));
    }
    *mean /= (double)n;
    for (int64_t i = 0; i < n; i++) *var += (p.data[i] - *mean) * (p.data[i] - *mean);
    *var /= (double)(n - 1);
    return n;
}

void tu_check_uniform(const xattn_module *m, const char *name, double b)
{
    double mean, var, mx;
    const int64_t n = moments(m, name, &mean, &var, &mx);
    if (!n) return;
    const double se_mean = b / sqrt(3.0 * (double)n), want_var = b * b / 3;
    const double tol_var = 5 * sqrt(0.8 / (double)n), low = b * (1 - 10.0 / (double)n);
    tu_checks++;
    if (mx > b || mx < low || fabs(mean) > 5 * se_mean || fabs(var / want_var - 1) > tol_var) {
        tu_failures++;
        fprintf(stderr, "%s: max %g (bound %g), mean %g, var %g (want %g)\n", name, mx, b, mean,
                var, want_var);
    }
}

void tu_check_normal(const xattn_module *m, const char *name, double sd)
{
    double mean, var, mx;
    const int64_t n = moments(m, name, &mean, &var, &mx);
    if (!n) return;
    tu_checks++;
    if (fabs(mean) > 5 * sd / sqrt((double)n) ||
        fabs(var / (sd * sd) - 1) > 5 * sqrt(2.0 / (double)n)) {
        tu_failures++;
        fprintf(stderr, "%s: mean %g, var %g (want N(0, %g))\n", name, mean, var, sd * sd);
    }
}

void tu_check_const(const xattn_module *m, const char *name, float v)
{
    xattn_param_desc p;
    int ok = tu_param(m, name, &p) && p.data;
    for (int64_t i = 0; ok && i < tu_param_numel(&p); i++) ok = p.data[i] == v;
    tu_checks++;
    if (!ok) {
        tu_failures++;
        fprintf(stderr, "%s: not all %g\n", name, (double)v);
    }
}
