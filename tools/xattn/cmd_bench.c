/*
 * xattn bench: times a saved module's forward on given or generated inputs and reports the
 * median time and the process's peak resident memory, VmHWM of /proc/self/status (what
 * bench/bidir_bench.py compares with the reference package under PyTorch).
 */
#include "cli.h"
#include "reg_cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *CMD = "bench";

static void help(void)
{
    printf("usage: xattn bench MODEL.safetensors [--x X.npy] [--context C.npy] [--len I]\n"
           "                   [--context-len J] [--batch B] [--heads N] [--reps N]\n"
           "                   [--threads N] [--out-dir DIR] [--json]\n"
           "\n"
           "Times the forward of a saved module (detected as by 'xattn run') after one warm-up\n"
           "run, and prints the median time and the peak resident memory of the process. A kind\n"
           "'xattn run' takes through the registry takes the same inputs and options here\n"
           "('xattn bench --module KIND --help'); these are the options of\n"
           "BidirectionalCrossAttention[Transformer]:\n"
           "\n"
           "inputs:\n"
           "  --x X.npy          queries / first stream (B, I, width); default: generated\n"
           "  --context C.npy    keys / second stream (B, J, width); default: generated\n"
           "  --len I            generated query length (default 1024)\n"
           "  --context-len J    generated context length (default 2 * I)\n"
           "  --batch B          generated batch size (default 1)\n"
           "options:\n"
           "  --heads N          number of heads (else the file's metadata, else the default)\n"
           "  --reps N           timed runs (default 5)\n"
           "  --threads N        threads (default: all cores)\n"
           "  --out-dir DIR      also write the outputs of the last run (out.npy, context_out.npy)\n"
           "  --json             print one JSON object instead of text\n"
           "  -h, --help         this help\n");
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* x (n) uniform in [-1, 1), deterministic */
static float *generated(int64_t n, uint64_t seed)
{
    float *x = malloc(sizeof(float) * (size_t)n);
    if (!x) return NULL;
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)(seed >> 40) / 8388608.0f - 1.0f;
    }
    return x;
}

/* Loads `path` as (B, N, width) or generates it; checks the width. */
static int input(const char *path, int64_t B, int64_t N, int64_t width, uint64_t seed,
                 xattn_array *a)
{
    if (path) {
        if (cli_load_float(CMD, path, 2, 3, CLI_FINITE_STRICT, a)) return CLI_EXIT_ERROR;
        if (a->ndim == 2) { /* (N, width) -> (1, N, width) */
            a->shape[2] = a->shape[1];
            a->shape[1] = a->shape[0];
            a->shape[0] = 1;
            a->ndim = 3;
        }
        if (a->shape[2] != width)
            return cli_error(CMD, path, "last dimension %lld does not match the model's width %lld",
                             (long long)a->shape[2], (long long)width);
        return CLI_EXIT_OK;
    }
    memset(a, 0, sizeof *a);
    a->dtype = XATTN_F32;
    a->ndim = 3;
    a->shape[0] = B;
    a->shape[1] = N;
    a->shape[2] = width;
    a->data = generated(B * N * width, seed);
    if (!a->data) return cli_error(CMD, NULL, "out of memory for generated inputs");
    return CLI_EXIT_OK;
}

static int save_out(const char *dir, const char *name, const float *data, int64_t B, int64_t N,
                    int64_t W)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    xattn_array a = {.dtype = XATTN_F32, .ndim = 3, .shape = {B, N, W}, .data = (void *)data};
    if (xattn_npy_save(path, &a) != XATTN_OK) return cli_lib_error(CMD, path);
    return CLI_EXIT_OK;
}

int cmd_bench(int argc, char **argv)
{
    if (reg_route(argc, argv, 1)) return reg_cmd_bench(CMD, argc, argv);
    const char *xpath = NULL, *cpath = NULL, *out_dir = NULL;
    long long len = 1024, clen = 0, batch = 1, heads = 0, reps = 5, threads = 0;
    int json = 0;
    cli_option opts[] = {
        {"--x", CLI_STRING, &xpath, 0, 0},
        {"--context", CLI_STRING, &cpath, 0, 0},
        {"--len", CLI_INT, &len, 1, 1 << 24},
        {"--context-len", CLI_INT, &clen, 1, 1 << 24},
        {"--batch", CLI_INT, &batch, 1, 1 << 16},
        {"--heads", CLI_INT, &heads, 1, 1 << 16},
        {"--reps", CLI_INT, &reps, 1, 1000},
        {"--threads", CLI_INT, &threads, 1, 1024},
        {"--out-dir", CLI_STRING, &out_dir, 0, 0},
        {"--json", CLI_FLAG, &json, 0, 0},
    };
    const char *pos[1] = {NULL};
    int npos = 0;
    cli_parse_result pr = cli_parse(CMD, argc, argv, opts, sizeof opts / sizeof opts[0], pos, 1, &npos);
    if (pr == CLI_HELP) {
        help();
        return CLI_EXIT_OK;
    }
    if (pr != CLI_PARSED) return CLI_EXIT_USAGE;
    if (npos < 1) return cli_usage(CMD, "missing MODEL.safetensors");
    if (!clen) clen = 2 * len;
    if (threads > 0) xattn_set_threads((int)threads);

    xattn_safetensors *st = NULL;
    xattn_bidir *bm = NULL;
    xattn_array x = {0}, c = {0};
    float *out = NULL, *cout = NULL;
    double *ts = NULL;
    int rc = CLI_EXIT_ERROR;
    const char *model = pos[0];
    if (xattn_st_open(model, &st) != XATTN_OK) return cli_lib_error(CMD, model);

    cli_bidir bf;
    cli_detect_bidir(st, &bf);
    if (bf.n_found != 1) {
        rc = cli_error(CMD, model, bf.n_found ? "holds several attention modules"
                                              : "no attention module found");
        goto done;
    }
    const xattn_bidir_opts bo = {.heads = heads};
    if (xattn_bidir_load(st, bf.prefix, &bo, &bm) != XATTN_OK) {
        rc = cli_lib_error(CMD, model);
        goto done;
    }
    xattn_bidir_config cfg;
    xattn_bidir_get_config(bm, &cfg);
    const int64_t wx = cfg.dim, wo = cfg.dim, wc = cfg.context_dim, wco = cfg.context_dim;
    const char *kind = cfg.is_transformer ? "BidirectionalCrossAttentionTransformer"
                                          : "BidirectionalCrossAttention";
    if (input(xpath, batch, len, wx, 1, &x) || input(cpath, batch, clen, wc, 2, &c)) goto done;
    const int64_t B = x.shape[0], I = x.shape[1], J = c.shape[1];
    if (c.shape[0] != B) {
        rc = cli_error(CMD, cpath, "batch %lld does not match the x batch %lld",
                       (long long)c.shape[0], (long long)B);
        goto done;
    }
    out = malloc(sizeof(float) * (size_t)(B * I * wo));
    cout = malloc(sizeof(float) * (size_t)(B * J * wco));
    ts = malloc(sizeof(double) * (size_t)reps);
    if (!out || !cout || !ts) {
        rc = cli_error(CMD, NULL, "out of memory for the outputs");
        goto done;
    }
    xattn_bidir_inputs bin = {.B = B, .I = I, .J = J, .x = x.data, .context = c.data};
    xattn_bidir_outputs bout = {.out = out, .context_out = cout};
    for (long long r = -1; r < reps; r++) { /* r = -1: warm-up */
        double t0 = cli_now();
        xattn_status s = xattn_bidir_forward(NULL, bm, &bin, &bout);
        double t = cli_now() - t0;
        if (s != XATTN_OK) {
            rc = cli_lib_error(CMD, model);
            goto done;
        }
        if (r >= 0) ts[r] = t;
    }
    qsort(ts, (size_t)reps, sizeof(double), cmp_double);
    const char *rss_note;
    double med = ts[reps / 2], rss = cli_peak_rss_bytes(&rss_note) / 1048576.0;
    if (out_dir && (save_out(out_dir, "out.npy", out, B, I, wo) ||
                    save_out(out_dir, "context_out.npy", cout, B, J, wco)))
        goto done;
    if (json)
        printf("{\"module\": \"%s\", \"B\": %lld, \"I\": %lld, \"J\": %lld, \"seconds\": %.6g, "
               "\"min_seconds\": %.6g, \"reps\": %lld, \"threads\": %d, \"isa\": \"%s\", "
               "\"peak_rss_mb\": %.1f, \"peak_rss_source\": \"%s\"}\n",
               kind, (long long)B, (long long)I, (long long)J, med, ts[0], reps,
               xattn_get_threads(), xattn_isa(), rss, *rss_note ? "ru_maxrss" : "VmHWM");
    else
        printf("%s  B=%lld I=%lld J=%lld  forward %.3f ms (median of %lld, best %.3f ms)  "
               "peak RSS %.1f MB%s  [%s, %d threads]\n",
               kind, (long long)B, (long long)I, (long long)J, med * 1e3, reps, ts[0] * 1e3, rss,
               rss_note, xattn_isa(), xattn_get_threads());
    rc = CLI_EXIT_OK;
done:
    xattn_bidir_free(bm);
    xattn_st_close(st);
    xattn_array_free(&x);
    xattn_array_free(&c);
    free(out);
    free(cout);
    free(ts);
    return rc;
}
