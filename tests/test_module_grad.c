/*
 * Module gradients (xattn_module_grad) against torch.autograd in float64 on the reference
 * modules (tests/reference/gen_module_grad.py, gen_grad_<kind>.py): every fixture
 * grad_<kind>_<case> in fixtures/grad_list.inc and grad_<kind>_list.inc (nn.MultiheadAttention
 * packed and separate, kdim/vdim, float and bool masks per head, add_bias_kv and add_zero_attn,
 * self-attention where the query plays all three roles, value = key, causal; diffusers Attention
 * with and without biases, self-attention with a mask, scale_qk=False with residual_connection and
 * rescale_output_factor, out_dim): every parameter and every float input within 1e-4 (1 + |ref|);
 * xattn_module_mse_grad agrees with xattn_module_grad given the MSE's gradient; the errors of a bad
 * call.
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double worst;

static int64_t numel(const xattn_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

/* The gradients of xattn_module_grad on 1 and 3 threads: the same bits as on the default. */
static void same_on_other_threads(const char *file, const xattn_module *m, const xattn_tensor *in,
                                  size_t n_in, const xattn_tensor *douts, size_t n_dout,
                                  const xattn_tensor *din, size_t n_din, float *const *dp)
{
    const size_t np = xattn_module_param_count(m);
    xattn_tensor din2[8];
    float **dp2 = calloc(np + 1, sizeof *dp2);
    for (size_t a = 0; a < n_din; a++) {
        din2[a] = din[a];
        din2[a].data = calloc((size_t)numel(&din[a]), sizeof(float));
    }
    for (size_t i = 0; i < np; i++) {
        xattn_param_desc p;
        CHECK_OK(xattn_module_param(m, i, &p));
        if (p.data) dp2[i] = calloc((size_t)tu_param_numel(&p), sizeof(float));
    }
    for (int th = 1; th <= 3; th += 2) {
        xattn_set_threads(th);
        CHECK_OK(xattn_module_grad(NULL, m, in, n_in, NULL, 0, douts, n_dout, din2, n_din, dp2));
        int same = 1;
        for (size_t a = 0; a < n_din; a++)
            same &= !memcmp(din2[a].data, din[a].data, sizeof(float) * (size_t)numel(&din[a]));
        for (size_t i = 0; i < np; i++) {
            xattn_param_desc p;
            xattn_module_param(m, i, &p);
            if (p.data) same &= !memcmp(dp2[i], dp[i], sizeof(float) * (size_t)tu_param_numel(&p));
        }
        if (!same) fprintf(stderr, "%s: gradients on %d threads differ\n", file, th);
        CHECK(same);
    }
    xattn_set_threads(0);
    for (size_t a = 0; a < n_din; a++) free(din2[a].data);
    for (size_t i = 0; i < np; i++) free(dp2[i]);
    free(dp2);
}

static void one(const char *file)
{
    xattn_safetensors *st = NULL;
    CHECK_OK(xattn_st_open(tu_fixture(file), &st));
    if (!st) return;
    xattn_module *m = NULL;
    xattn_open_opts oo; /* the module at the root: grad.* is the same names, another prefix */
    memset(&oo, 0, sizeof oo);
    oo.prefix = "";
    oo.kind = xattn_st_meta_get(st, "kind"); /* a kind without weights is named */
    CHECK_OK(xattn_module_open(st, &oo, &m));
    if (!m) {
        fprintf(stderr, "%s: %s\n", file, xattn_last_error());
        xattn_st_close(st);
        return;
    }
    xattn_tensor in[8], din[8];
    xattn_array arr[8];
    size_t n_in = 0, n_din = 0;
    uint8_t causal = 1;
    for (size_t i = 0; i < xattn_st_count(st) && n_in < 7; i++) {
        const char *name = xattn_st_name(st, i);
        if (strncmp(name, "input.", 6)) continue;
        xattn_dtype dt;
        int nd;
        int64_t sh[XATTN_MAX_DIMS];
        CHECK_OK(xattn_st_info(st, i, &dt, &nd, sh));
        const int is_bool = dt == XATTN_BOOL;
        memset(&arr[n_in], 0, sizeof arr[n_in]);
        CHECK_OK(xattn_st_get(st, name, is_bool ? XATTN_BOOL : XATTN_F32, &arr[n_in]));
        in[n_in] = (xattn_tensor){
            name + 6, is_bool ? XATTN_BOOL : XATTN_F32, arr[n_in].ndim, {0}, arr[n_in].data};
        memcpy(in[n_in].shape, arr[n_in].shape, sizeof in[n_in].shape);
        char key[96];
        snprintf(key, sizeof key, "grad.input.%s", name + 6);
        if (!is_bool && xattn_st_find(st, key) >= 0) {
            din[n_din] = in[n_in];
            din[n_din].data = calloc((size_t)xattn_array_numel(&arr[n_in]), sizeof(float));
            n_din++;
        }
        n_in++;
    }
    const char *ic = xattn_st_meta_get(st, "is_causal");
    if (ic && !strcmp(ic, "True"))
        in[n_in++] = (xattn_tensor){"is_causal", XATTN_BOOL, 0, {0}, &causal};
    /* the outputs' gradients: dout.NAME */
    xattn_array darr[4];
    xattn_tensor douts[4];
    size_t n_dout = 0;
    for (size_t i = 0; i < xattn_st_count(st) && n_dout < 4; i++) {
        const char *name = xattn_st_name(st, i);
        if (strncmp(name, "dout.", 5)) continue;
        memset(&darr[n_dout], 0, sizeof darr[n_dout]);
        tu_get_f32(st, name, &darr[n_dout]);
        douts[n_dout] =
            (xattn_tensor){name + 5, XATTN_F32, darr[n_dout].ndim, {0}, darr[n_dout].data};
        memcpy(douts[n_dout].shape, darr[n_dout].shape, sizeof douts[n_dout].shape);
        n_dout++;
    }
    const size_t np = xattn_module_param_count(m);
    float **dp = calloc(np + 1, sizeof *dp);
    for (size_t i = 0; i < np; i++) {
        xattn_param_desc p;
        CHECK_OK(xattn_module_param(m, i, &p));
        if (p.data) dp[i] = calloc((size_t)tu_param_numel(&p), sizeof(float));
    }
    CHECK_OK(xattn_module_grad(NULL, m, in, n_in, NULL, 0, douts, n_dout, din, n_din, dp));
    same_on_other_threads(file, m, in, n_in, douts, n_dout, din, n_din, dp);
    char what[256];
    double err = 0;
    for (size_t a = 0; a < n_din; a++) {
        char key[96];
        snprintf(key, sizeof key, "grad.input.%s", din[a].name);
        xattn_array r;
        memset(&r, 0, sizeof r);
        float *ref = tu_get_f32(st, key, &r);
        snprintf(what, sizeof what, "%s d_%s", file, din[a].name);
        err = tu_max(err, tu_check_close(what, din[a].data, ref, xattn_array_numel(&r), 1e-4));
        xattn_array_free(&r);
    }
    int n_params = 0;
    err = tu_max(err, tu_check_param_grads(file, m, st, dp, 1e-4, &n_params));
    CHECK(n_params > 0 || (np == 0 && n_din > 0)); /* a kind without parameters: inputs only */
    /* the MSE loss against targets (the fixture's output gradients, every output, optional ones
     * included): its loss and the first parameter's gradient equal those computed here from the
     * outputs, 2 (y - t) / n given to xattn_module_grad */
    xattn_param_desc p0;
    memset(&p0, 0, sizeof p0);
    if (np) xattn_module_param(m, 0, &p0);
    if (p0.data) {
        xattn_tensor outs[4], dmse[4];
        double want = 0;
        for (size_t k = 0; k < n_dout; k++) {
            const int64_t n = numel(&douts[k]);
            outs[k] = dmse[k] = douts[k];
            outs[k].data = calloc((size_t)n, sizeof(float));
            dmse[k].data = calloc((size_t)n, sizeof(float));
        }
        CHECK_OK(xattn_module_forward(NULL, m, in, n_in, outs, n_dout));
        for (size_t k = 0; k < n_dout; k++) {
            const int64_t n = numel(&douts[k]);
            const float *y = outs[k].data, *t = douts[k].data;
            float *d = dmse[k].data;
            double sum = 0;
            for (int64_t i = 0; i < n; i++) {
                sum += ((double)y[i] - t[i]) * ((double)y[i] - t[i]);
                d[i] = 2.0f * (y[i] - t[i]) / (float)n;
            }
            want += sum / (double)n;
        }
        double loss = -1;
        float **dp2 = calloc(np + 1, sizeof *dp2), **dp3 = calloc(np + 1, sizeof *dp3);
        const int64_t n0 = tu_param_numel(&p0);
        dp2[0] = calloc((size_t)n0, sizeof(float));
        dp3[0] = calloc((size_t)n0, sizeof(float));
        CHECK_OK(xattn_module_mse_grad(NULL, m, in, n_in, douts, n_dout, &loss, NULL, 0, dp2));
        CHECK_OK(xattn_module_grad(NULL, m, in, n_in, NULL, 0, dmse, n_dout, NULL, 0, dp3));
        CHECK(fabs(loss - want) <= 1e-6 * (1 + want));
        snprintf(what, sizeof what, "%s mse d(%s)", file, p0.name);
        tu_check_close(what, dp2[0], dp3[0], n0, 1e-5);
        for (size_t k = 0; k < n_dout; k++) {
            free(outs[k].data);
            free(dmse[k].data);
        }
        free(dp2[0]);
        free(dp3[0]);
        free(dp2);
        free(dp3);
    }
    if (err > worst) worst = err;
    for (size_t i = 0; i < np; i++) free(dp[i]);
    free(dp);
    for (size_t a = 0; a < n_din; a++) free(din[a].data);
    for (size_t k = 0; k < n_in && k < 7; k++)
        if (strcmp(in[k].name, "is_causal")) xattn_array_free(&arr[k]);
    for (size_t k = 0; k < n_dout; k++) xattn_array_free(&darr[k]);
    xattn_module_free(m);
    xattn_st_close(st);
}

int main(void)
{
    static const char *fixtures[] = {
#include "fixtures/grad_list.inc"
#include "fixtures/grad_interlaced_list.inc"
#include "fixtures/grad_multiview_list.inc"
#include "fixtures/grad_hallo_list.inc"
#include "fixtures/grad_decoder_list.inc"
    };
    const size_t n = sizeof fixtures / sizeof fixtures[0];
    for (size_t f = 0; f < n; f++) one(fixtures[f]);
    printf("module gradients against torch.autograd: %zu fixtures, max rel error %.2e\n", n, worst);
    CHECK(xattn_kind_has_backward("mha") && xattn_kind_has_backward("attention"));
    return tu_finish("test_module_grad");
}
