/* xattn compare: max |a - b| / (1 + |b|) of two .npy arrays against a tolerance. */
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *CMD = "compare";

static void help(void)
{
    printf(
        "usage: xattn compare A.npy B.npy [--tol T]\n"
        "\n"
        "Compares two arrays of the same shape (any numeric or bool dtype, compared as float32)\n"
        "element by element and prints max |a - b| / (1 + |b|): B is the reference. NaN in\n"
        "both at the same place counts as equal, NaN in one only as infinitely far. The\n"
        "position of the largest difference is printed as an index [i, j, ...].\n"
        "\n"
        "options:\n"
        "  --tol T      tolerance (default 2e-5)\n"
        "  -h, --help   this help\n"
        "\n"
        "Exit code 0 if the max error is <= T, 1 if not (or on an error).\n");
}

static int load(const char *path, xattn_array *a)
{
    memset(a, 0, sizeof *a);
    if (xattn_npy_load(path, a) != XATTN_OK) return cli_lib_error(CMD, path);
    if (xattn_array_convert(a, XATTN_F32) != XATTN_OK) {
        int rc = cli_lib_error(CMD, path);
        xattn_array_free(a);
        return rc;
    }
    return 0;
}

int cmd_compare(int argc, char **argv)
{
    double tol = 2e-5;
    const cli_option opts[] = {{"--tol", CLI_DOUBLE, &tol, 0, 0}};
    const char *pos[2];
    int n_pos;
    cli_parse_result pr = cli_parse(CMD, argc, argv, opts, 1, pos, 2, &n_pos);
    if (pr == CLI_HELP) {
        help();
        return CLI_EXIT_OK;
    }
    if (pr != CLI_PARSED) return CLI_EXIT_USAGE;
    if (n_pos != 2) return cli_usage(CMD, "expected two files: A.npy B.npy");

    xattn_array a, b;
    int rc = load(pos[0], &a);
    if (rc) return rc;
    if ((rc = load(pos[1], &b))) {
        xattn_array_free(&a);
        return rc;
    }
    int same = a.ndim == b.ndim;
    for (int d = 0; same && d < a.ndim; d++) same = a.shape[d] == b.shape[d];
    if (!same) {
        char sa[160], sb[160];
        rc = cli_error(CMD, pos[0], "has shape %s but %s has shape %s",
                       cli_shape_str(&a, sa, sizeof sa), pos[1], cli_shape_str(&b, sb, sizeof sb));
    } else {
        const float *x = a.data, *y = b.data;
        int64_t n = xattn_array_numel(&a), worst_at = 0;
        double worst = 0;
        for (int64_t i = 0; i < n; i++) {
            double e;
            if (isnan(x[i]) || isnan(y[i]))
                e = isnan(x[i]) && isnan(y[i]) ? 0 : INFINITY;
            else if (x[i] == y[i])
                e = 0; /* equal infinities too */
            else
                e = fabs((double)x[i] - (double)y[i]) / (1.0 + fabs((double)y[i]));
            if (isnan(e)) e = INFINITY;
            if (e > worst) {
                worst = e;
                worst_at = i;
            }
        }
        char at[200];
        cli_index_str(a.ndim, a.shape, worst_at, at, sizeof at);
        printf("max error %.3g over %lld values (tol %.3g)%s%s: %s\n", worst, (long long)n, tol,
               worst > 0 ? " at index " : "", worst > 0 ? at : "",
               worst <= tol ? "ok" : "DIFFERENT");
        if (!(worst <= tol))
            rc = cli_error(CMD, pos[0], "differs from %s: max error %.3g > tol %.3g at index %s",
                           pos[1], worst, tol, at);
    }
    xattn_array_free(&a);
    xattn_array_free(&b);
    return rc;
}
