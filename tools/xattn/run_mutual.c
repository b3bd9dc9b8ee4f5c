/*
 * xattn run --module mutual: M3 mutual cross-attention (parameter-free, no model file).
 *   out = softmax(a b^T / sqrt(D)) b + softmax(b a^T / sqrt(D)) a
 */
#include "cli.h"
#include "modules_ext.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMD "run"

static void help(void)
{
    printf(
        "usage: xattn run --module mutual --x A.npy --context B.npy [--band-axis K]\n"
        "                 [--out-dir DIR] [--threads N] [--allow-nonfinite]\n"
        "\n"
        "Mutual cross-attention (Zhao & Gu 2024, the ztony0712/MCA notebook; dropout is\n"
        "identity at inference). Parameter-free: no model file.\n"
        "  out = softmax(a b^T / sqrt(D)) b + softmax(b a^T / sqrt(D)) a\n"
        "  --x A.npy                 a: (B, N, D), or (N, D) for one sequence\n"
        "  --context B.npy           b: the same shape as a (the two terms are (B, N_a, D) and\n"
        "                            (B, N_b, D), so their sum needs N_a == N_b)\n"
        "  --band-axis K             a and b of rank 3..8 holding a band axis K (negative counts\n"
        "                            from the end): each band is fused on its own, its slice\n"
        "                            read as (batch..., N, D) from its last two axes. EEG\n"
        "                            (trials, bands, channels, time): --band-axis 1\n"
        "  outputs: out.npy          the input's shape\n"
        "\n"
        "Outputs are float32 .npy files in --out-dir DIR (default '.', created if missing);\n"
        "nothing is written if anything fails. NaN or infinity in the inputs is an error\n"
        "unless --allow-nonfinite.\n"
        "  --threads N               threads (default: all cores)\n"
        "  -h, --help                this help\n");
}

static int run_mutual(int argc, char **argv)
{
    const char *x = NULL, *ctx = NULL, *out_dir = ".", *module = NULL, *band = NULL;
    long long threads = 0;
    int allow = 0;
    const cli_option opts[] = {
        {"--x", CLI_STRING, &x, 0, 0},
        {"--context", CLI_STRING, &ctx, 0, 0},
        {"--band-axis", CLI_STRING, &band, 0, 0},
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
    if (npos > 0)
        return cli_usage(CMD, "module mutual takes no model file (got '%s')", pos[0]);
    if (!x) return cli_usage(CMD, "module mutual needs --x A.npy");
    if (!ctx) return cli_usage(CMD, "module mutual needs --context B.npy");
    int has_band = band != NULL;
    long band_axis = 0;
    if (has_band) {
        char *end;
        errno = 0;
        band_axis = strtol(band, &end, 10);
        if (errno || end == band || *end || band_axis < -XATTN_MAX_DIMS ||
            band_axis >= XATTN_MAX_DIMS)
            return cli_usage(CMD, "--band-axis: '%s' is not an axis number", band);
    }
    if (threads > 0) xattn_set_threads((int)threads);
    cli_finite_rule rule = allow ? CLI_FINITE_ANY : CLI_FINITE_STRICT;

    xattn_array a, b, o;
    memset(&b, 0, sizeof b);
    memset(&o, 0, sizeof o);
    int rc;
    if ((rc = cli_load_float(CMD, x, has_band ? 3 : 2, has_band ? XATTN_MAX_DIMS : 3, rule, &a)))
        return rc;
    if ((rc = cli_load_float(CMD, ctx, has_band ? 3 : 2, has_band ? XATTN_MAX_DIMS : 3, rule, &b)))
        goto done;
    char sa[160], sb[160];
    int same = a.ndim == b.ndim;
    for (int d = 0; same && d < a.ndim; d++) same = a.shape[d] == b.shape[d];
    if (!same) {
        rc = cli_error(CMD, ctx,
                       "has shape %s but %s has %s: mutual cross-attention sums "
                       "softmax(a b^T) b (N_a rows) and softmax(b a^T) a (N_b rows), so a and b "
                       "must have the same shape",
                       cli_shape_str(&b, sb, sizeof sb), x, cli_shape_str(&a, sa, sizeof sa));
        goto done;
    }
    if (has_band && (band_axis < -a.ndim || band_axis >= a.ndim)) {
        rc = cli_error(CMD, x, "has rank %d: --band-axis %ld is out of range", a.ndim, band_axis);
        goto done;
    }
    o = a;
    o.data = malloc((size_t)xattn_array_numel(&a) * sizeof(float));
    if (!o.data) {
        rc = cli_error(CMD, NULL, "out of memory");
        goto done;
    }
    if ((rc = cli_check_out_dir(CMD, out_dir))) goto done; /* before the work */
    xattn_status s;
    if (has_band) {
        s = xattn_mutual_bands(a.data, b.data, a.ndim, a.shape, (int)band_axis, o.data);
    } else {
        int64_t B = a.ndim == 3 ? a.shape[0] : 1;
        s = xattn_mutual(a.data, b.data, B, a.shape[a.ndim - 2], a.shape[a.ndim - 1], o.data);
    }
    if (s != XATTN_OK) {
        rc = cli_lib_error(CMD, x);
        goto done;
    }
    cli_output out = {"out", o, NULL};
    rc = cli_write_outputs(CMD, out_dir, &out, 1);
done:
    xattn_array_free(&a);
    xattn_array_free(&b);
    free(o.data);
    return rc;
}

const cli_ext_module cli_ext_mutual = {
    "mutual", "mutual cross-attention (M3, parameter-free): --x A.npy --context B.npy",
    NULL, run_mutual, NULL};
