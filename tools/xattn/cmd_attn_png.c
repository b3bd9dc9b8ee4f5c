/* xattn attn-png: draws an attention map saved as .npy as a PNG heat-map. */
#include "cli.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cmd_attn_png(int argc, char **argv);

static const char *CMD = "attn-png";

static void help(void)
{
    printf("usage: xattn attn-png ATTN.npy --out FILE.png [--head H] [--batch B] [--title T]\n"
           "                      [--max-side N]\n"
           "\n"
           "Draws an attention map as a PNG heat-map: query positions i down (row 0 at the\n"
           "top), key / context positions j across, with axes, tick labels and a colour bar\n"
           "(viridis over the map's own min..max). NaN values are drawn grey. Maps larger\n"
           "than the picture are averaged down (box filter); smaller ones are enlarged.\n"
           "\n"
           "ATTN.npy (float32, float64 or float16) holds one of\n"
           "  (I, J)        one map\n"
           "  (B, I, J)     a batch of maps, e.g. nn.MultiheadAttention's averaged weights\n"
           "  (B, H, I, J)  per-head maps (average_attn_weights=False; xattn run\n"
           "                --per-head-attn), drawn averaged over the heads unless --head\n"
           "                picks one\n"
           "\n"
           "options:\n"
           "  --out FILE.png  the picture to write (required); written to FILE.png.tmp\n"
           "                  first, then renamed, so a failure leaves no partial file\n"
           "  --head H        draw head H (0-based) of a (B, H, I, J) map, not the mean\n"
           "  --batch B       draw batch element B (0-based; default 0) of a batched map\n"
           "  --title T       title above the map (default: the file name, the batch\n"
           "                  element when there are several, and \"(head H)\" or\n"
           "                  \"(mean over H heads)\")\n"
           "  --max-side N    longest side of the map area in pixels, 64 to 4096\n"
           "                  (default 768)\n"
           "  -h, --help      this help\n"
           "\n"
           "Prints the path written. Errors are one line on stderr; the exit code is 1\n"
           "(2 for a usage error).\n");
}

static const char *base_name(const char *path)
{
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

int cmd_attn_png(int argc, char **argv)
{
    const char *out = NULL, *title = NULL;
    long long head = -1, batch = -1, max_side = 768;
    const cli_option opts[] = {
        {"--out", CLI_STRING, &out, 0, 0},
        {"--head", CLI_INT, &head, 0, INT_MAX},
        {"--batch", CLI_INT, &batch, 0, INT_MAX},
        {"--title", CLI_STRING, &title, 0, 0},
        {"--max-side", CLI_INT, &max_side, 64, 4096},
    };
    const char *pos[1];
    int n_pos;
    cli_parse_result pr =
        cli_parse(CMD, argc, argv, opts, sizeof opts / sizeof opts[0], pos, 1, &n_pos);
    if (pr == CLI_HELP) {
        help();
        return CLI_EXIT_OK;
    }
    if (pr != CLI_PARSED) return CLI_EXIT_USAGE;
    if (n_pos != 1) return cli_usage(CMD, "expected one file: ATTN.npy");
    if (!out) return cli_usage(CMD, "--out FILE.png is required");
    const char *path = pos[0];

    xattn_array a;
    int rc = cli_load_float(CMD, path, 2, 4, CLI_FINITE_ANY, &a);
    if (rc) return rc;

    /* view the array as (B, H, I, J) */
    const int nd = a.ndim;
    const int64_t B = nd >= 3 ? a.shape[0] : 1, H = nd == 4 ? a.shape[1] : 1;
    const int64_t I = a.shape[nd - 2], J = a.shape[nd - 1];
    char shape[160];
    cli_shape_str(&a, shape, sizeof shape);
    const float *map = NULL;
    float *owned = NULL; /* the mean over heads, when drawn */
    if (head >= 0 && nd != 4) {
        rc = cli_error(CMD, path,
                       "--head needs per-head maps (B, H, I, J) but the array has shape %s", shape);
        goto done;
    }
    if (head >= H) {
        rc = cli_error(CMD, path, "--head %lld is out of range: shape %s has %lld heads (0..%lld)",
                       head, shape, (long long)H, (long long)H - 1);
        goto done;
    }
    if (batch >= 0 && nd == 2) {
        rc = cli_error(CMD, path,
                       "--batch needs a batched map (B, I, J) or (B, H, I, J) but the "
                       "array has shape %s",
                       shape);
        goto done;
    }
    if (batch >= B) {
        rc = cli_error(CMD, path,
                       "--batch %lld is out of range: shape %s has batch size %lld (0..%lld)",
                       batch, shape, (long long)B, (long long)B - 1);
        goto done;
    }
    const int64_t b = batch >= 0 ? batch : 0;
    const int64_t IJ = I * J; /* no overflow: the array is in memory */
    const float *src = (const float *)a.data + b * H * IJ;
    if (H == 1 || head >= 0) {
        map = src + (head >= 0 ? head : 0) * IJ;
    } else {
        owned = (float *)malloc((size_t)IJ * sizeof(float));
        if (!owned) {
            rc = cli_error(CMD, path, "out of memory averaging %lld heads", (long long)H);
            goto done;
        }
        /* in chunks, heads outer: each head's rows are read in order, sums kept in double */
        enum { CHUNK = 2048 };
        double acc[CHUNK];
        for (int64_t k0 = 0; k0 < IJ; k0 += CHUNK) {
            const int64_t n = IJ - k0 < CHUNK ? IJ - k0 : CHUNK;
            memset(acc, 0, sizeof acc);
            for (int64_t h = 0; h < H; h++) {
                const float *x = src + h * IJ + k0;
                for (int64_t k = 0; k < n; k++) acc[k] += x[k];
            }
            for (int64_t k = 0; k < n; k++) owned[k0 + k] = (float)(acc[k] / (double)H);
        }
        map = owned;
    }

    char tbuf[512];
    if (!title) {
        char bpart[48] = "", hpart[64] = "";
        if (B > 1) snprintf(bpart, sizeof bpart, " batch %lld", (long long)b);
        if (head >= 0)
            snprintf(hpart, sizeof hpart, " (head %lld)", head);
        else if (H > 1)
            snprintf(hpart, sizeof hpart, " (mean over %lld heads)", (long long)H);
        snprintf(tbuf, sizeof tbuf, "%s%s%s", base_name(path), bpart, hpart);
        title = tbuf;
    }
    xattn_heatmap_opts ho;
    memset(&ho, 0, sizeof ho);
    ho.title = title;
    ho.x_label = "key / context position j";
    ho.y_label = "query position i";
    ho.bar_label = "attention weight";
    ho.max_side = (int)max_side;
    if (xattn_png_heatmap(out, map, I, J, &ho) != XATTN_OK)
        rc = cli_lib_error(CMD, out);
    else
        printf("%s\n", out);

done:
    free(owned);
    xattn_array_free(&a);
    return rc;
}
