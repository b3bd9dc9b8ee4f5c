/* xattn compare: max |a - b| / (1 + |b|) of two .npy arrays, or of every tensor of two
 * safetensors files (matched by name), against a tolerance. */
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *CMD = "compare";

static void help(void)
{
    printf(
        "usage: xattn compare A.npy B.npy [--tol T]\n"
        "       xattn compare A.safetensors B.safetensors [--tol T]\n"
        "\n"
        "Compares two arrays of the same shape (any numeric or bool dtype, compared as float32)\n"
        "element by element and prints max |a - b| / (1 + |b|): B is the reference. NaN in\n"
        "both at the same place counts as equal, NaN in one only as infinitely far. The\n"
        "position of the largest difference is printed as an index [i, j, ...].\n"
        "Two safetensors files (xattn grad's grads.safetensors against PyTorch's gradients\n"
        "saved with save_file): the same tensor names in both, each pair compared so, one line\n"
        "each; a name in one file only is an error.\n"
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

/* Compares a with reference b (shapes checked); prints one line, prefixed by label. */
static int compare_arrays(const xattn_array *a, const xattn_array *b, double tol, const char *pa,
                          const char *pb, const char *label)
{
    int same = a->ndim == b->ndim, rc = 0;
    for (int d = 0; same && d < a->ndim; d++) same = a->shape[d] == b->shape[d];
    char sa[160], sb[160];
    if (!same)
        return cli_error(CMD, pa, "%s%shas shape %s but %s has shape %s", label, *label ? ": " : "",
                         cli_shape_str(a, sa, sizeof sa), pb, cli_shape_str(b, sb, sizeof sb));
    const float *x = a->data, *y = b->data;
    int64_t n = xattn_array_numel(a), worst_at = 0;
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
    cli_index_str(a->ndim, a->shape, worst_at, at, sizeof at);
    printf("%s%smax error %.3g over %lld values (tol %.3g)%s%s: %s\n", label, *label ? ": " : "",
           worst, (long long)n, tol, worst > 0 ? " at index " : "", worst > 0 ? at : "",
           worst <= tol ? "ok" : "DIFFERENT");
    if (!(worst <= tol))
        rc = cli_error(CMD, pa, "%s%sdiffers from %s: max error %.3g > tol %.3g at index %s", label,
                       *label ? ": " : "", pb, worst, tol, at);
    return rc;
}

static int ends_with(const char *s, const char *tail)
{
    const size_t l = strlen(s), t = strlen(tail);
    return l >= t && !strcmp(s + l - t, tail);
}

/* Every tensor of two safetensors files, by name. */
static int compare_files(const char *pa, const char *pb, double tol)
{
    xattn_safetensors *A = NULL, *B = NULL;
    if (xattn_st_open(pa, &A)) return cli_lib_error(CMD, pa);
    if (xattn_st_open(pb, &B)) {
        xattn_st_close(A);
        return cli_lib_error(CMD, pb);
    }
    int rc = 0, bad = 0;
    for (int side = 0; side < 2 && !rc; side++) { /* names in one file only */
        const xattn_safetensors *x = side ? B : A, *y = side ? A : B;
        for (size_t i = 0; i < xattn_st_count(x) && !rc; i++)
            if (xattn_st_find(y, xattn_st_name(x, i)) < 0)
                rc = cli_error(CMD, side ? pb : pa, "tensor '%s' is not in %s", xattn_st_name(x, i),
                               side ? pa : pb);
    }
    for (size_t i = 0; i < xattn_st_count(A) && !rc; i++) {
        const char *name = xattn_st_name(A, i);
        xattn_array a, b;
        memset(&a, 0, sizeof a);
        memset(&b, 0, sizeof b);
        if (xattn_st_get(A, name, XATTN_F32, &a))
            rc = cli_lib_error(CMD, pa);
        else if (xattn_st_get(B, name, XATTN_F32, &b))
            rc = cli_lib_error(CMD, pb);
        else
            bad |= compare_arrays(&a, &b, tol, pa, pb, name) != 0;
        xattn_array_free(&a);
        xattn_array_free(&b);
    }
    if (!rc) printf("%zu tensors: %s\n", xattn_st_count(A), bad ? "DIFFERENT" : "ok");
    xattn_st_close(A);
    xattn_st_close(B);
    return rc ? rc : bad ? CLI_EXIT_ERROR : 0;
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
    const int sa = ends_with(pos[0], ".safetensors"), sb = ends_with(pos[1], ".safetensors");
    if (sa != sb) return cli_usage(CMD, "compare two .npy files or two .safetensors files");
    if (sa) return compare_files(pos[0], pos[1], tol);

    xattn_array a, b;
    int rc = load(pos[0], &a);
    if (rc) return rc;
    if ((rc = load(pos[1], &b))) {
        xattn_array_free(&a);
        return rc;
    }
    rc = compare_arrays(&a, &b, tol, pos[0], pos[1], "");
    xattn_array_free(&a);
    xattn_array_free(&b);
    return rc;
}
