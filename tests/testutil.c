#include "testutil.h"

#include <math.h>
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
