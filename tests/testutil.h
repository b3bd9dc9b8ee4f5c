/* Tiny test harness shared by the C tests. */
#ifndef XATTN_TESTUTIL_H
#define XATTN_TESTUTIL_H

#include "xattn.h"
#include <stdint.h>
#include <stdio.h>

extern int tu_failures;
extern int tu_checks;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        tu_checks++;                                                                               \
        if (!(cond)) {                                                                             \
            tu_failures++;                                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

/* Checks a call returned XATTN_OK, printing xattn_last_error() if not. */
#define CHECK_OK(call)                                                                             \
    do {                                                                                           \
        tu_checks++;                                                                               \
        xattn_status s_ = (call);                                                                  \
        if (s_ != XATTN_OK) {                                                                      \
            tu_failures++;                                                                         \
            fprintf(stderr, "%s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #call,                    \
                    xattn_status_string(s_), xattn_last_error());                                  \
        }                                                                                          \
    } while (0)

/* Checks a call failed with `want` status and left a non-empty message. */
#define CHECK_FAIL(call, want)                                                                     \
    do {                                                                                           \
        tu_checks++;                                                                               \
        xattn_status s_ = (call);                                                                  \
        if (s_ != (want) || xattn_last_error()[0] == '\0') {                                       \
            tu_failures++;                                                                         \
            fprintf(stderr, "%s:%d: %s -> %s (%s), wanted %s\n", __FILE__, __LINE__, #call,        \
                    xattn_status_string(s_), xattn_last_error(), xattn_status_string(want));       \
        }                                                                                          \
    } while (0)

/* Returns the process exit code and prints a summary. */
int tu_finish(const char *name);

/* Max over i of |got-ref| / (1 + |ref|); NaN in got counts as infinity. */
double tu_rel_err(const float *got, const float *ref, int64_t n);
/* Records a check that tu_rel_err(...) <= tol, printing `what` on failure. Returns the error. */
double tu_check_close(const char *what, const float *got, const float *ref, int64_t n, double tol);

/* Deterministic uniform floats in [lo, hi). */
void tu_fill_uniform(float *x, int64_t n, float lo, float hi, uint64_t *state);

/* Path of a fixture file (static buffer). */
const char *tu_fixture(const char *name);

/* Loads tensor `name` of an open fixture as F32 (aborts the test with a message if missing). */
float *tu_get_f32(const xattn_safetensors *st, const char *name, xattn_array *arr);

/* ---- parameters of a registry module (initialisation tests) ---- */

/* Elements of a parameter. */
int64_t tu_param_numel(const xattn_param_desc *p);
/* Each gradient dp[i] of a parameter of m that has data against the fixture's tensor
 * "grad.NAME" (tu_check_close at tol, labelled "FILE d(NAME)"): the largest relative error;
 * *n_checked (may be NULL) gets how many parameters were compared. */
double tu_check_param_grads(const char *file, const xattn_module *m, const xattn_safetensors *st,
                            float *const *dp, double tol, int *n_checked);
/* Parameter `name` of m into *p; a failed check naming it when m has no such parameter. */
const xattn_param_desc *tu_param(const xattn_module *m, const char *name, xattn_param_desc *p);
/* U(-b, b), as torch draws kaiming/xavier uniform: every |x| <= b and the largest near b
 * (P(max|x| < b (1 - 10/n)) = e^-10), mean 0 and variance b^2 / 3 within 5 standard errors
 * (sd(mean) = b / sqrt(3n); relative sd of the sample variance sqrt(0.8 / n)). A missing
 * parameter, or one without data, fails. */
void tu_check_uniform(const xattn_module *m, const char *name, double b);
/* N(0, sd^2): mean and variance within 5 standard errors (relative sd of s^2: sqrt(2 / n)). */
void tu_check_normal(const xattn_module *m, const char *name, double sd);
/* Every value equal to v (norm weights 1, zero biases). */
void tu_check_const(const xattn_module *m, const char *name, float v);

/* Whether the tests run under an emulator (XATTN_TEST_EMULATED set and not "0", as ctest sets
 * it in a cross build): the heaviest cases then run fewer sizes, with the same tolerances. */
int tu_emulated(void);

/* max(e, t) for error reductions, with a NaN kept (fmax would drop it, so that a NaN result
 * passed a tolerance): NaN once seen stays the result. */
static inline double tu_max(double e, double t) { return (e != e || t <= e) ? e : t; }

/* Every kernel set any build has; a test skips those this CPU or build lacks (xattn_set_isa or
 * xa_kern_by_name fails for them). */
#define TU_ISAS                                                                                    \
    {                                                                                              \
        "scalar", "avx2", "avx512", "avx512bf16", "amx", "neon"                                    \
    }
#define TU_N_ISAS 6

#define TU_TOL 2e-5

#endif
