/*
 * Any module kind through the registry, by names alone: opens MODEL.safetensors (kind detected
 * from the tensor names), reads every required input from the same file's "input.<name>"
 * tensors (as the test fixtures hold them), runs the forward on a context of 2 threads and
 * compares "out" with the file's "expected.out".
 *   module_example MODEL.safetensors [OPTION=VALUE ...]
 */
#include <xattn.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what)
{
    fprintf(stderr, "module_example: %s: %s\n", what, xattn_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: module_example MODEL.safetensors [OPTION=VALUE ...]\n");
        return 2;
    }
    xattn_option opts[16];
    char buf[16][128];
    int n_opts = 0;
    for (int i = 2; i < argc && n_opts < 16; i++, n_opts++) { /* heads=8 -> {"heads", "8"} */
        snprintf(buf[n_opts], sizeof buf[n_opts], "%s", argv[i]);
        char *eq = strchr(buf[n_opts], '=');
        if (!eq) return 2;
        *eq = '\0';
        opts[n_opts] = (xattn_option){buf[n_opts], eq + 1};
    }
    xattn_safetensors *st;
    xattn_module *m;
    xattn_open_opts o = {.options = opts, .n_options = (size_t)n_opts};
    if (xattn_st_open(argv[1], &st)) return fail(argv[1]);
    if (xattn_module_open(st, &o, &m)) return fail(argv[1]);
    printf("%s at prefix '%s'\n", xattn_module_kind(m), xattn_module_prefix(m));
    fputs(xattn_module_warnings(m), stderr); /* defaults the file cannot tell, if any */

    /* the required inputs, from input.<name> */
    xattn_tensor in[12];
    xattn_array arr[12];
    size_t n_in = 0;
    for (size_t i = 0; i < xattn_module_input_count(m) && n_in < 12; i++) {
        xattn_io_desc d;
        xattn_module_input(m, i, &d);
        char name[96];
        snprintf(name, sizeof name, "input.%s", d.name);
        memset(&arr[n_in], 0, sizeof arr[n_in]);
        if (xattn_st_find(st, name) < 0) continue;
        if (xattn_st_get(st, name, d.mask ? XATTN_BOOL : XATTN_F32, &arr[n_in])) return fail(name);
        in[n_in] = (xattn_tensor){d.name, arr[n_in].dtype, arr[n_in].ndim, {0}, arr[n_in].data};
        memcpy(in[n_in].shape, arr[n_in].shape, sizeof in[n_in].shape);
        printf("  input %-14s (%s)\n", d.name, d.shape);
        n_in++;
    }
    xattn_tensor out[1] = {{.name = "out"}};
    if (xattn_module_plan(m, in, n_in, out, 1)) return fail("plan");
    int64_t n = 1;
    for (int k = 0; k < out[0].ndim; k++) n *= out[0].shape[k];
    out[0].data = malloc(sizeof(float) * (size_t)n);
    xattn_ctx *ctx;
    if (xattn_ctx_new(&ctx) || xattn_ctx_set_threads(ctx, 2)) return fail("context");
    if (xattn_module_forward(ctx, m, in, n_in, out, 1)) return fail("forward");

    xattn_array ref;
    memset(&ref, 0, sizeof ref);
    double worst = 0;
    if (xattn_st_get(st, "expected.out", XATTN_F32, &ref) == XATTN_OK &&
        xattn_array_numel(&ref) == n) {
        const float *r = ref.data, *y = out[0].data;
        for (int64_t i = 0; i < n; i++) {
            double e = fabs((double)y[i] - r[i]) / (1 + fabs((double)r[i]));
            if (e > worst) worst = e;
        }
        printf("out: %lld values, max error %.2e against expected.out\n", (long long)n, worst);
    }
    xattn_array_free(&ref);
    for (size_t i = 0; i < n_in; i++) xattn_array_free(&arr[i]);
    free(out[0].data);
    xattn_ctx_free(ctx);
    xattn_module_free(m);
    xattn_st_close(st);
    return worst <= 2e-5 ? 0 : 1;
}
