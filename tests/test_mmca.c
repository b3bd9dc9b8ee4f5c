/*
 * The MMCA matching head of examples/mmca_match.c (compiled in here) against its PyTorch
 * transcription (tests/reference/gen_joint.py, joint_mmca.safetensors): embeddings i0, c0, i1, c1
 * and the scores S, at kernel sets auto and scalar and threads 1 and 2.
 */
#define MMCA_NO_MAIN
#include "../examples/mmca_match.c"

#include "testutil.h"

int main(void)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture("joint_mmca.safetensors"), &st));
    if (!st) return tu_finish("test_mmca");
    xattn_joint *jm = NULL;
    CHECK_OK(xattn_joint_load(st, "", NULL, &jm));
    xattn_joint_config cfg;
    xattn_joint_get_config(jm, &cfg);
    mmca_head h;
    CHECK(mmca_head_load(st, cfg.d_model, &h) == 0);
    xattn_array ax, ac, e[5];
    const float *x = tu_get_f32(st, "input.x", &ax);
    const float *c = tu_get_f32(st, "input.context", &ac);
    const char *names[5] = {"expected.i0", "expected.c0", "expected.i1", "expected.c1",
                            "expected.score"};
    const float *ref[5];
    for (int k = 0; k < 5; k++) ref[k] = tu_get_f32(st, names[k], &e[k]);
    const int64_t B = ax.shape[0], K = ax.shape[1], N = ac.shape[1], d = cfg.d_model;
    float alpha = strtof(xattn_st_meta_get(st, "alpha"), NULL);
    float *buf = malloc((size_t)(4 * B * d + B) * sizeof(float));
    double worst = 0;
    const char *isas[] = {"auto", "scalar"};
    for (int ii = 0; ii < 2; ii++)
        for (int t = 1; t <= 2; t++) {
            CHECK_OK(xattn_set_isa(isas[ii]));
            xattn_set_threads(t);
            CHECK(mmca_match(jm, &h, x, c, B, K, N, alpha, buf, buf + B * d, buf + 2 * B * d,
                             buf + 3 * B * d, buf + 4 * B * d) == 0);
            for (int k = 0; k < 5; k++) {
                double err =
                    tu_check_close(names[k], buf + k * B * d, ref[k], k < 4 ? B * d : B, TU_TOL);
                if (err > worst) worst = err;
            }
        }
    printf("mmca: worst error %.3g\n", worst);
    /* N < 3 is refused */
    CHECK(mmca_text_embed(&h, c, 1, 2, buf) != 0);
    CHECK_OK(xattn_set_isa("auto"));
    xattn_set_threads(0);
    free(buf);
    for (int k = 0; k < 5; k++) xattn_array_free(&e[k]);
    xattn_array_free(&ax);
    xattn_array_free(&ac);
    mmca_head_free(&h);
    xattn_joint_free(jm);
    xattn_st_close(st);
    return tu_finish("test_mmca");
}
