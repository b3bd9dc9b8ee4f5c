/*
 * The optimizers against torch.optim in float32 (tests/reference/gen_optim.py): AdamW with its
 * defaults, with amsgrad, betas, eps and weight decay, with gradient clipping; SGD plain, with
 * momentum, dampening and weight decay, with Nesterov momentum and clipping; six steps each,
 * every parameter after every step within 1e-6 (1 + |ref|); the clipping norms; the warmup +
 * cosine schedule against transformers' get_cosine_schedule_with_warmup; the state's arrays;
 * strict options.
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void one(const char *file)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(file), &st));
    if (!st) return;
    const char *kind = xattn_st_meta_get(st, "kind"), *opts = xattn_st_meta_get(st, "options");
    const int steps = atoi(xattn_st_meta_get(st, "steps")),
              np = atoi(xattn_st_meta_get(st, "params"));
    const double max_norm = atof(xattn_st_meta_get(st, "max_norm"));
    /* "name=value;..." into options */
    char buf[512];
    snprintf(buf, sizeof buf, "%s", opts);
    xattn_option o[8];
    size_t n_o = 0;
    for (char *tok = strtok(buf, ";"); tok && n_o < 8; tok = strtok(NULL, ";")) {
        char *eq = strchr(tok, '=');
        *eq = '\0';
        o[n_o].name = tok;
        o[n_o].value = eq + 1;
        n_o++;
    }
    float *p[4];
    float *g[4];
    int64_t size[4];
    xattn_array a[4];
    for (int i = 0; i < np; i++) {
        char name[32];
        snprintf(name, sizeof name, "p.%d", i);
        memset(&a[i], 0, sizeof a[i]);
        p[i] = tu_get_f32(st, name, &a[i]);
        size[i] = xattn_array_numel(&a[i]);
        g[i] = malloc(sizeof(float) * (size_t)size[i]);
    }
    xattn_optim *opt = NULL;
    CHECK_OK(xattn_optim_new(kind, o, n_o, size, (size_t)np, &opt));
    if (!opt) return;
    double worst = 0;
    for (int t = 0; t < steps; t++) {
        for (int i = 0; i < np; i++) {
            char name[32];
            xattn_array ga;
            memset(&ga, 0, sizeof ga);
            snprintf(name, sizeof name, "g.%d.%d", t, i);
            memcpy(g[i], tu_get_f32(st, name, &ga), sizeof(float) * (size_t)size[i]);
            xattn_array_free(&ga);
        }
        if (max_norm > 0) {
            char name[32];
            xattn_array na;
            memset(&na, 0, sizeof na);
            snprintf(name, sizeof name, "norm.%d", t);
            const float want = *tu_get_f32(st, name, &na);
            const double got = xattn_clip_grad_norm(g, size, (size_t)np, max_norm);
            CHECK(fabs(got - want) <= 1e-5 * (1 + fabs(want)));
            xattn_array_free(&na);
        }
        CHECK_OK(xattn_optim_step(opt, p, (const float *const *)g));
        for (int i = 0; i < np; i++) {
            char name[32], what[96];
            xattn_array wa;
            memset(&wa, 0, sizeof wa);
            snprintf(name, sizeof name, "want.%d.%d", t, i);
            snprintf(what, sizeof what, "%s step %d param %d", file, t, i);
            worst =
                tu_max(worst, tu_check_close(what, p[i], tu_get_f32(st, name, &wa), size[i], 1e-6));
            xattn_array_free(&wa);
        }
    }
    CHECK(xattn_optim_step_count(opt) == steps);
    /* the state: per parameter, named as torch names it */
    const size_t ns = xattn_optim_state_count(opt);
    CHECK(ns == (size_t)np * (!strcmp(kind, "sgd") ? 1 : (strstr(opts, "amsgrad=True") ? 3 : 2)));
    const char *label;
    size_t param;
    int64_t sz;
    float *data;
    CHECK_OK(xattn_optim_state(opt, ns - 1, &label, &param, &data, &sz));
    CHECK(param == (size_t)np - 1 && sz == size[np - 1] && data != NULL);
    CHECK(!strcmp(label, !strcmp(kind, "sgd")           ? "momentum_buffer"
                         : strstr(opts, "amsgrad=True") ? "max_exp_avg_sq"
                                                        : "exp_avg_sq"));
    printf("%s: %d steps, max rel error %.2e against torch.optim\n", file, steps, worst);
    xattn_optim_free(opt);
    for (int i = 0; i < np; i++) {
        xattn_array_free(&a[i]);
        free(g[i]);
    }
    xattn_st_close(st);
}

static void schedule(void)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("optim_schedule.safetensors"), &st));
    if (!st) return;
    xattn_array a;
    memset(&a, 0, sizeof a);
    CHECK_OK(xattn_st_get(st, "lr", XATTN_F32, &a)); /* float64 in the file, read as float32 */
    const float *want = a.data;
    int ok = xattn_array_numel(&a) == 40;
    for (int64_t s = 0; s < xattn_array_numel(&a); s++)
        ok &= fabs(xattn_lr_at(s, 40, 7, 1, 3e-3) - want[s]) <= 1e-7 * fabs(want[s]) + 1e-12;
    CHECK(ok);
    CHECK(xattn_lr_at(5, 40, 0, 0, 0.1) == 0.1);
    xattn_array_free(&a);
    xattn_st_close(st);
}

static void errors(void)
{
    int64_t size[1] = {3};
    xattn_optim *o = NULL;
    const xattn_option bad[] = {{"lr", "fast"}};
    CHECK_FAIL(xattn_optim_new("adamw", bad, 1, size, 1, &o), XATTN_ERR_ARG);
    const xattn_option twice[] = {{"lr", "0.1"}, {"lr", "0.2"}};
    CHECK_FAIL(xattn_optim_new("adamw", twice, 2, size, 1, &o), XATTN_ERR_ARG);
    const xattn_option momentum[] = {{"momentum", "0.9"}};
    CHECK_FAIL(xattn_optim_new("adamw", momentum, 1, size, 1, &o), XATTN_ERR_ARG);
    const xattn_option nesterov[] = {{"nesterov", "True"}};
    CHECK_FAIL(xattn_optim_new("sgd", nesterov, 1, size, 1, &o), XATTN_ERR_ARG);
    const xattn_option betas[] = {{"betas", "0.9"}};
    CHECK_FAIL(xattn_optim_new("adamw", betas, 1, size, 1, &o), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_optim_new("adam", NULL, 0, size, 1, &o), XATTN_ERR_ARG);
    CHECK(o == NULL);
    CHECK_OK(xattn_optim_new(NULL, NULL, 0, size, 1, &o));
    char d[256];
    CHECK(strstr(xattn_optim_describe(o, d, sizeof d), "adamw lr=0.001 betas=0.9,0.999 eps=1e-08 "
                                                       "weight_decay=0.01 amsgrad=False") != NULL);
    xattn_optim_free(o);
}

int main(void)
{
    static const char *cases[] = {
        "optim_adamw_default.safetensors", "optim_adamw_amsgrad.safetensors",
        "optim_adamw_clip.safetensors",    "optim_sgd_plain.safetensors",
        "optim_sgd_momentum.safetensors",  "optim_sgd_nesterov.safetensors"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) one(cases[i]);
    schedule();
    errors();
    return tu_finish("test_optim");
}
