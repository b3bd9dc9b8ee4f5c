/*
 * xattn run MODEL.safetensors --module conv2d-cross: M9 cross-attention over 2-D feature maps
 * (seed 004 CrossAttention, corrected), loaded from conv_query / conv_key / conv_value.
 */
#include "cli.h"
#include "modules_ext.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMD "run"

static const char *const NAMES[] = {"conv_query.weight", "conv_query.bias", "conv_key.weight",
                                    "conv_key.bias",     "conv_value.weight", "conv_value.bias"};

static void help(void)
{
    printf(
        "usage: xattn run MODEL.safetensors [--module conv2d-cross] --x X1.npy --context X2.npy\n"
        "                 [--scale S] [--out-dir DIR] [--threads N] [--allow-nonfinite]\n"
        "\n"
        "Cross-attention over 2-D feature maps (seed 004 CrossAttention): 1x1 convolutions\n"
        "conv_query on x1, conv_key and conv_value on x2 (weights (Cout, Cin, 1, 1), biases\n"
        "optional), positions flattened row-major, softmax over x2's positions:\n"
        "  out[:, p] = sum_q softmax_q(scale * Q[:, p] . K[:, q]) V[:, q]\n"
        "(the seed's snippet multiplies the value by the untransposed attention, which only runs\n"
        "when both maps have the same number of positions and mixes the wrong axis; this is the\n"
        "corrected form).\n"
        "  --x X1.npy                x1: (B, C1, H1, W1), or (C1, H1, W1)\n"
        "  --context X2.npy          x2: (B, C2, H2, W2), or (C2, H2, W2); any H2, W2\n"
        "  --scale S                 multiply the logits by S (default: none, as the seed)\n"
        "  outputs: out.npy          (B, Cv, H1, W1) (no batch axis for a rank-3 x1)\n"
        "\n"
        "Outputs are float32 .npy files in --out-dir DIR (default '.', created if missing);\n"
        "nothing is written if anything fails. NaN or infinity in the inputs or weights is an\n"
        "error unless --allow-nonfinite.\n"
        "  --threads N               threads (default: all cores)\n"
        "  -h, --help                this help\n");
}

static int detect(const xattn_safetensors *st)
{
    return xattn_st_find(st, "conv_query.weight") >= 0 && xattn_st_find(st, "conv_key.weight") >= 0 &&
           xattn_st_find(st, "conv_value.weight") >= 0;
}

static void describe(const xattn_safetensors *st)
{
    printf("module: conv2d-cross (cross-attention over 2-D feature maps, seed 004 CrossAttention)\n");
}

static int run_conv2d(int argc, char **argv)
{
    const char *x = NULL, *ctx = NULL, *out_dir = ".", *module = NULL;
    long long threads = 0;
    double scale = 0;
    const char *scale_s = NULL;
    int allow = 0;
    const cli_option opts[] = {
        {"--x", CLI_STRING, &x, 0, 0},
        {"--context", CLI_STRING, &ctx, 0, 0},
        {"--scale", CLI_STRING, &scale_s, 0, 0},
        {"--out-dir", CLI_STRING, &out_dir, 0, 0},
        {"--threads", CLI_INT, &threads, 1, 4096},
        {"--module", CLI_STRING, &module, 0, 0},
        {"--allow-nonfinite", CLI_FLAG, &allow, 0, 0},
    };
    const char *pos[1];
    int npos = 0;
    cli_parse_result pr = cli_parse(CMD, argc, argv, opts, sizeof opts / sizeof opts[0], pos, 1, &npos);
    if (pr == CLI_HELP) {
        help();
        return CLI_EXIT_OK;
    }
    if (pr == CLI_BAD_USAGE) return CLI_EXIT_USAGE;
    if (npos < 1) return cli_usage(CMD, "module conv2d-cross needs MODEL.safetensors");
    if (!x) return cli_usage(CMD, "module conv2d-cross needs --x X1.npy");
    if (!ctx) return cli_usage(CMD, "module conv2d-cross needs --context X2.npy");
    if (scale_s) {
        char *end;
        errno = 0;
        scale = strtod(scale_s, &end);
        if (errno || end == scale_s || *end || !isfinite(scale))
            return cli_usage(CMD, "--scale: '%s' is not a finite number", scale_s);
    }
    if (threads > 0) xattn_set_threads((int)threads);
    cli_finite_rule rule = allow ? CLI_FINITE_ANY : CLI_FINITE_STRICT;
    const char *model = pos[0];

    xattn_safetensors *st = NULL;
    xattn_conv2d_cross *m = NULL;
    xattn_array a1, a2, o;
    memset(&a1, 0, sizeof a1);
    memset(&a2, 0, sizeof a2);
    memset(&o, 0, sizeof o);
    int rc = 0;
    if (xattn_st_open(model, &st) != XATTN_OK) return cli_lib_error(CMD, model);
    if (xattn_conv2d_cross_load(st, "", &m) != XATTN_OK) {
        rc = cli_lib_error(CMD, model);
        goto done;
    }
    if (!allow &&
        (rc = cli_check_weights_finite(CMD, model, st, NAMES, sizeof NAMES / sizeof NAMES[0])))
        goto done;
    xattn_conv2d_cross_config c;
    xattn_conv2d_cross_get_config(m, &c);
    if ((rc = cli_load_float(CMD, x, 3, 4, rule, &a1))) goto done;
    if ((rc = cli_load_float(CMD, ctx, 3, 4, rule, &a2))) goto done;
    char s1[160], s2[160];
    if (a1.ndim != a2.ndim) {
        rc = cli_error(CMD, ctx, "has shape %s but %s has %s: both need a batch axis or neither",
                       cli_shape_str(&a2, s2, sizeof s2), x, cli_shape_str(&a1, s1, sizeof s1));
        goto done;
    }
    int o4 = a1.ndim == 4;
    int64_t B = o4 ? a1.shape[0] : 1;
    const int64_t *d1 = a1.shape + (o4 ? 1 : 0), *d2 = a2.shape + (o4 ? 1 : 0);
    if (o4 && a2.shape[0] != B) {
        rc = cli_error(CMD, ctx, "has batch %lld but %s has %lld", (long long)a2.shape[0], x,
                       (long long)B);
        goto done;
    }
    if (d1[0] != c.in1) {
        rc = cli_error(CMD, x, "has %lld channels (shape %s) but conv_query.weight in %s takes %lld",
                       (long long)d1[0], cli_shape_str(&a1, s1, sizeof s1), model, (long long)c.in1);
        goto done;
    }
    if (d2[0] != c.in2) {
        rc = cli_error(CMD, ctx, "has %lld channels (shape %s) but conv_key.weight in %s takes %lld",
                       (long long)d2[0], cli_shape_str(&a2, s2, sizeof s2), model, (long long)c.in2);
        goto done;
    }
    o.dtype = XATTN_F32;
    o.ndim = a1.ndim;
    if (o4) o.shape[0] = B;
    o.shape[o4 ? 1 : 0] = c.out_channels;
    o.shape[o4 ? 2 : 1] = d1[1];
    o.shape[o4 ? 3 : 2] = d1[2];
    o.data = malloc((size_t)xattn_array_numel(&o) * sizeof(float));
    if (!o.data) {
        rc = cli_error(CMD, NULL, "out of memory");
        goto done;
    }
    xattn_conv2d_cross_inputs in;
    memset(&in, 0, sizeof in);
    in.B = B;
    in.H1 = d1[1];
    in.W1 = d1[2];
    in.H2 = d2[1];
    in.W2 = d2[2];
    in.x1 = a1.data;
    in.x2 = a2.data;
    in.has_scale = scale_s != NULL;
    in.scale = (float)scale;
    if ((rc = cli_check_out_dir(CMD, out_dir))) goto done; /* before the work */
    if (xattn_conv2d_cross_forward(m, &in, o.data) != XATTN_OK) {
        rc = cli_lib_error(CMD, model);
        goto done;
    }
    cli_output out = {"out", o, NULL};
    rc = cli_write_outputs(CMD, out_dir, &out, 1);
done:
    xattn_conv2d_cross_free(m);
    xattn_st_close(st);
    xattn_array_free(&a1);
    xattn_array_free(&a2);
    free(o.data);
    return rc;
}

const cli_ext_module cli_ext_conv2d_cross = {
    "conv2d-cross",
    "cross-attention over 2-D feature maps (M9, seed 004): MODEL --x X1.npy --context X2.npy",
    detect, run_conv2d, describe};
