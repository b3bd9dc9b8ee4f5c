/* libFuzzer harness for the module registry: an arbitrary safetensors file with arbitrary
 * metadata is parsed, scanned for modules, every module found is opened, described (config,
 * parameters, inputs, outputs) and, when its sizes are small, run once on generated inputs with
 * every size symbol set to 2 (the required inputs, and the first way of inputs given one of
 * several ways); a failure must leave one line of error and no module. */
#include "xattn.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_ASSERT(c)                                                                             \
    do {                                                                                           \
        if (!(c)) __builtin_trap();                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Value of one dim of a symbolic shape: size symbols 2, config fields from the module. */
static int64_t dim_value(const xattn_module *m, const char *tok)
{
    const char *star = strchr(tok, '*');
    int64_t mul = star ? atoll(tok) : 1;
    const char *name = star ? star + 1 : tok;
    if (name[0] >= '0' && name[0] <= '9') return mul * atoll(name);
    if (name[0] >= 'A' && name[0] <= 'Z') return 2;
    for (size_t i = 0; i < xattn_module_config_count(m); i++) {
        xattn_config_entry e;
        if (!xattn_module_config(m, i, &e) && !strcmp(e.name, name)) return mul * atoll(e.value);
    }
    return -1;
}

/* 1 if input `name` is in the first way of a kind's one-of inputs ("a|b,c": a). */
static int first_way(const char *one_of, const char *name)
{
    const size_t n = strlen(name);
    for (const char *p = one_of; *p && *p != '|'; p += strcspn(p, ",|"), p += *p == ',')
        if (!strncmp(p, name, n) && (p[n] == ',' || p[n] == '|' || !p[n])) return 1;
    return 0;
}

static void run_small(const xattn_module *m, const char *kind)
{
    xattn_tensor in[12];
    float *buf[12] = {0};
    size_t n = 0;
    for (size_t i = 0; i < xattn_module_input_count(m) && n < 12; i++) {
        xattn_io_desc d;
        FUZZ_ASSERT(xattn_module_input(m, i, &d) == XATTN_OK);
        if (d.optional && !first_way(xattn_kind_one_of(kind), d.name)) continue;
        memset(&in[n], 0, sizeof in[n]);
        in[n].name = d.name;
        in[n].dtype = d.mask ? XATTN_BOOL : XATTN_F32;
        int64_t numel = 1;
        const char *p = d.shape;
        while (*p && in[n].ndim < XATTN_MAX_DIMS) {
            char tok[64];
            size_t l = strcspn(p, ",");
            if (l >= sizeof tok) return;
            memcpy(tok, p, l);
            tok[l] = '\0';
            char *slash = strchr(tok, '/');
            if (slash) *slash = '\0';
            int64_t v = dim_value(m, tok);
            if (v < 1 || v > 64) goto out;
            in[n].shape[in[n].ndim++] = v;
            numel *= v;
            p += l + (p[l] == ',');
        }
        if (numel > 4096) goto out;
        buf[n] = calloc((size_t)numel, 4);
        for (int64_t k = 0; k < numel; k++) buf[n][k] = d.mask ? 0 : (float)(k % 7) * 0.25f;
        in[n].data = buf[n];
        n++;
    }
    {
        xattn_tensor out[1];
        memset(out, 0, sizeof out);
        xattn_io_desc d;
        FUZZ_ASSERT(xattn_module_output(m, 0, &d) == XATTN_OK);
        out[0].name = d.name;
        if (xattn_module_plan(m, in, n, out, 1) == XATTN_OK) {
            int64_t numel = 1;
            for (int k = 0; k < out[0].ndim; k++) numel *= out[0].shape[k];
            if (numel <= 1 << 16) {
                out[0].data = calloc((size_t)numel, 4);
                const int ok = xattn_module_forward(NULL, m, in, n, out, 1) == XATTN_OK;
                if (ok && xattn_kind_has_backward(kind)) {
                    /* the gradients too: of every float input and every parameter */
                    xattn_tensor dout = out[0], din[12];
                    size_t nd = 0;
                    for (size_t k = 0; k < n; k++)
                        if (in[k].dtype == XATTN_F32) din[nd++] = in[k];
                    for (size_t k = 0; k < nd; k++) {
                        int64_t c = 1;
                        for (int q = 0; q < din[k].ndim; q++) c *= din[k].shape[q];
                        din[k].data = calloc((size_t)c, 4);
                    }
                    const size_t np = xattn_module_param_count(m);
                    float **dp = calloc(np + 1, sizeof *dp);
                    for (size_t k = 0; dp && k < np; k++) {
                        xattn_param_desc pd;
                        if (xattn_module_param(m, k, &pd) || !pd.data) continue;
                        int64_t c = 1;
                        for (int q = 0; q < pd.ndim; q++) c *= pd.shape[q];
                        if (c <= 1 << 20) dp[k] = calloc((size_t)c, 4);
                    }
                    xattn_status s =
                        xattn_module_grad(NULL, m, in, n, NULL, 0, &dout, 1, din, nd, dp);
                    FUZZ_ASSERT(s == XATTN_OK || xattn_last_error()[0] != '\0');
                    for (size_t k = 0; dp && k < np; k++) free(dp[k]);
                    free(dp);
                    for (size_t k = 0; k < nd; k++) free(din[k].data);
                }
                free(out[0].data);
            }
        }
    }
out:
    for (size_t k = 0; k < 12; k++) free(buf[k]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    xattn_safetensors *st = NULL;
    if (xattn_st_parse(data, size, "fuzz", &st) != XATTN_OK) return 0;
    xattn_found found[8];
    size_t nf = xattn_module_scan(st, found, 8);
    for (size_t i = 0; i < nf && i < 8; i++) {
        xattn_open_opts o;
        memset(&o, 0, sizeof o);
        o.kind = found[i].kind;
        o.prefix = found[i].prefix;
        xattn_module *m = (xattn_module *)1;
        if (xattn_module_open(st, &o, &m) != XATTN_OK) {
            FUZZ_ASSERT(m == NULL);
            FUZZ_ASSERT(xattn_last_error()[0] != '\0');
            FUZZ_ASSERT(strchr(xattn_last_error(), '\n') == NULL);
            continue;
        }
        for (size_t c = 0; c < xattn_module_config_count(m); c++) {
            xattn_config_entry e;
            FUZZ_ASSERT(xattn_module_config(m, c, &e) == XATTN_OK && e.value && e.source);
        }
        for (size_t p = 0; p < xattn_module_param_count(m); p++) {
            xattn_param_desc d;
            FUZZ_ASSERT(xattn_module_param(m, p, &d) == XATTN_OK && d.name);
        }
        run_small(m, found[i].kind);
        xattn_module_free(m);
    }
    xattn_st_close(st);
    return 0;
}
