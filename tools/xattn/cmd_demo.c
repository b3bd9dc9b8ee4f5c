/*
 * xattn demo: bidirectional cross-attention between a video and an audio stream at the shapes
 * of the reference package's README (video (1, 4096, 512), audio (1, 8192, 386), heads 8,
 * dim_head 64), on built-in deterministic weights and inputs made so that the attention has to
 * recover a known alignment: audio runs at twice the video frame rate and starts `offset` audio
 * frames early, so video frame i belongs with audio frame 2 i + offset.
 *
 * How the inputs carry time: the first 64 channels of both streams hold a sinusoidal code of the
 * frame's time on a common clock (32 frequencies, periods 6 .. 12000 video frames); the other
 * channels hold deterministic noise. to_qk and context_to_qk read the code into every head, so
 * the similarity of (i, j) is a sum of cosines of the time difference: largest where the times
 * agree. Nothing in the module knows the rate or the offset; the demo reads them back from the
 * attention map.
 *
 * Steps: build the state_dict in memory -> load it as any saved model -> one timed forward at
 * full size (no I x J map) -> the attention rows of every 16th video frame (rows of a softmax
 * over j do not depend on other rows, so a forward on those frames gives them exactly) ->
 * recovered alignment vs truth -> PNG heat-map.
 */
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *CMD = "demo";

#define XA_DEMO_MIN(a, b) ((a) < (b) ? (a) : (b))

static void help(void)
{
    printf("usage: xattn demo [--video-len N] [--audio-len N] [--offset N] [--threads N]\n"
           "                  [--out FILE.png] [--no-png]\n"
           "\n"
           "Bidirectional cross-attention (BidirectionalCrossAttention(dim=512, context_dim=386,\n"
           "heads=8, dim_head=64)) between a video stream (1, 4096, 512) and an audio stream\n"
           "(1, 8192, 386) on built-in weights and inputs. Audio runs at twice the video frame\n"
           "rate and starts OFFSET audio frames early; the demo checks that the attention finds\n"
           "that alignment, prints the forward time, GFLOP/s and peak memory, and draws the\n"
           "video->audio attention of every 16th video frame as a PNG heat-map (log scale).\n"
           "\n"
           "options:\n"
           "  --video-len N   video frames I (default 4096)\n"
           "  --audio-len N   audio frames J (default 8192)\n"
           "  --offset N      audio frames before video frame 0 (default 24)\n"
           "  --threads N     threads (default: all cores)\n"
           "  --out FILE.png  the heat-map (default demo_attention.png)\n"
           "  --no-png        skip the picture\n"
           "  --train         instead: train a small bidirectional transformer from scratch to\n"
           "                  recover such an alignment ('xattn demo --train --help')\n"
           "  -h, --help      this help\n"
           "\n"
           "Exit code 1 if fewer than 95%% of the sampled video frames find their audio frame\n"
           "within one audio frame.\n");
}

enum {
    DIM = 512,
    CDIM = 386,
    HEADS = 8,
    DH = 64,
    INNER = HEADS * DH,
    CODE = 64,
    STRIDE = 16,
    POOL = 8
};

/* deterministic noise in [-0.5, 0.5) */
static float noise(uint64_t a, uint64_t b)
{
    uint64_t z = a * 0x9E3779B97F4A7C15ULL + b * 0xBF58476D1CE4E5B9ULL + 0x94D049BB133111EBULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (float)(z >> 40) / 16777216.0f - 0.5f;
}

/* the time code of time t (in video frames) into c[0 .. CODE) */
static void time_code(double t, float *c)
{
    for (int k = 0; k < CODE / 2; k++) {
        double period = 6.0 * pow(2000.0, (double)k / (CODE / 2 - 1)); /* 6 .. 12000 */
        double w = 6.283185307179586 / period;
        c[2 * k] = (float)cos(w * t);
        c[2 * k + 1] = (float)sin(w * t);
    }
}

static void progress(const char *what)
{
    if (isatty(STDERR_FILENO)) {
        fprintf(stderr, "\r\033[K  %s ...", what);
        fflush(stderr);
    }
}

static void progress_done(void)
{
    if (isatty(STDERR_FILENO)) fprintf(stderr, "\r\033[K");
}

/* Builds the module's state_dict, saves it to a temporary file and loads it back, so the demo
 * runs the same loader as a model saved from PyTorch. */
static int build_model(xattn_safetensors **st, xattn_bidir **m)
{
    const float alpha = 2.0f; /* logits = alpha^2 * scale * sum of cosines */
    float *wqk = calloc((size_t)INNER * DIM, sizeof(float));
    float *wcqk = calloc((size_t)INNER * CDIM, sizeof(float));
    float *wv = malloc(sizeof(float) * INNER * DIM), *wcv = malloc(sizeof(float) * INNER * CDIM);
    float *wo = malloc(sizeof(float) * DIM * INNER), *bo = malloc(sizeof(float) * DIM);
    float *wco = malloc(sizeof(float) * CDIM * INNER), *bco = malloc(sizeof(float) * CDIM);
    int rc = CLI_EXIT_ERROR;
    if (!wqk || !wcqk || !wv || !wcv || !wo || !bo || !wco || !bco) {
        cli_error(CMD, NULL, "out of memory building the demo model");
        goto out;
    }
    for (int h = 0; h < HEADS; h++) /* every head reads the time code */
        for (int d = 0; d < DH; d++) {
            wqk[(size_t)(h * DH + d) * DIM + d] = alpha;
            wcqk[(size_t)(h * DH + d) * CDIM + d] = alpha;
        }
    for (size_t e = 0; e < (size_t)INNER * DIM; e++) wv[e] = 0.09f * noise(1, e);
    for (size_t e = 0; e < (size_t)INNER * CDIM; e++) wcv[e] = 0.1f * noise(2, e);
    for (size_t e = 0; e < (size_t)DIM * INNER; e++) wo[e] = 0.088f * noise(3, e);
    for (size_t e = 0; e < (size_t)CDIM * INNER; e++) wco[e] = 0.088f * noise(4, e);
    for (size_t e = 0; e < DIM; e++) bo[e] = 0.01f * noise(5, e);
    for (size_t e = 0; e < CDIM; e++) bco[e] = 0.01f * noise(6, e);
    xattn_st_entry ents[] = {
        {"to_qk.weight", XATTN_F32, 2, {INNER, DIM}, wqk},
        {"context_to_qk.weight", XATTN_F32, 2, {INNER, CDIM}, wcqk},
        {"to_v.weight", XATTN_F32, 2, {INNER, DIM}, wv},
        {"context_to_v.weight", XATTN_F32, 2, {INNER, CDIM}, wcv},
        {"to_out.weight", XATTN_F32, 2, {DIM, INNER}, wo},
        {"to_out.bias", XATTN_F32, 1, {DIM}, bo},
        {"context_to_out.weight", XATTN_F32, 2, {CDIM, INNER}, wco},
        {"context_to_out.bias", XATTN_F32, 1, {CDIM}, bco},
    };
    const char *meta[] = {"heads", "8"};
    char path[] = "/tmp/xattn_demo_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        cli_error(CMD, "/tmp", "cannot create a temporary file for the demo model");
        goto out;
    }
    close(fd);
    if (xattn_st_save(path, ents, sizeof ents / sizeof ents[0], meta, 1) != XATTN_OK ||
        xattn_st_open(path, st) != XATTN_OK || xattn_bidir_load(*st, "", NULL, m) != XATTN_OK) {
        cli_lib_error(CMD, path);
        remove(path);
        goto out;
    }
    remove(path);
    rc = CLI_EXIT_OK;
out:
    free(wqk);
    free(wcqk);
    free(wv);
    free(wcv);
    free(wo);
    free(bo);
    free(wco);
    free(bco);
    return rc;
}

/* x (I, DIM): code of video time i; ctx (J, CDIM): code of time (j - offset) / 2 */
static void build_inputs(int64_t I, int64_t J, int64_t offset, float *x, float *ctx)
{
    for (int64_t i = 0; i < I; i++) {
        float *row = x + i * DIM;
        time_code((double)i, row);
        for (int c = CODE; c < DIM; c++) row[c] = noise(7, (uint64_t)(i * DIM + c));
    }
    for (int64_t j = 0; j < J; j++) {
        float *row = ctx + j * CDIM;
        time_code((double)(j - offset) / 2.0, row);
        for (int c = CODE; c < CDIM; c++) row[c] = noise(8, (uint64_t)(j * CDIM + c));
    }
}

int demo_train(int argc, char **argv); /* cmd_demo_train.c */

int cmd_demo(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--train")) return demo_train(argc, argv);
    long long I = 4096, J = 8192, offset = 24, threads = 0;
    const char *png = "demo_attention.png";
    int no_png = 0;
    cli_option opts[] = {
        {"--video-len", CLI_INT, &I, 2 * STRIDE, 1 << 20},
        {"--audio-len", CLI_INT, &J, 16, 1 << 21},
        {"--offset", CLI_INT, &offset, 0, 1 << 20},
        {"--threads", CLI_INT, &threads, 1, 1024},
        {"--out", CLI_STRING, &png, 0, 0},
        {"--no-png", CLI_FLAG, &no_png, 0, 0},
    };
    int npos = 0;
    cli_parse_result pr =
        cli_parse(CMD, argc, argv, opts, sizeof opts / sizeof opts[0], NULL, 0, &npos);
    if (pr == CLI_HELP) {
        help();
        return CLI_EXIT_OK;
    }
    if (pr != CLI_PARSED) return CLI_EXIT_USAGE;
    if (threads > 0) xattn_set_threads((int)threads);

    xattn_safetensors *st = NULL;
    xattn_bidir *m = NULL;
    float *x = NULL, *ctx = NULL, *out = NULL, *cout = NULL, *xs = NULL, *so = NULL, *sco = NULL;
    float *attn = NULL, *map = NULL;
    int rc = CLI_EXIT_ERROR;
    progress("building the model");
    if (build_model(&st, &m)) goto done;
    const int64_t S = (I + STRIDE - 1) / STRIDE; /* sampled video frames */
    x = malloc(sizeof(float) * (size_t)(I * DIM));
    ctx = malloc(sizeof(float) * (size_t)(J * CDIM));
    out = malloc(sizeof(float) * (size_t)(I * DIM));
    cout = malloc(sizeof(float) * (size_t)(J * CDIM));
    xs = malloc(sizeof(float) * (size_t)(S * DIM));
    so = malloc(sizeof(float) * (size_t)(S * DIM));
    sco = malloc(sizeof(float) * (size_t)(J * CDIM));
    const int64_t JP = (J + POOL - 1) / POOL; /* picture columns */
    attn = malloc(sizeof(float) * (size_t)(HEADS * S * J));
    map = malloc(sizeof(float) * (size_t)(S * J + S * JP));
    if (!x || !ctx || !out || !cout || !xs || !so || !sco || !attn || !map) {
        cli_error(CMD, NULL, "out of memory for the demo inputs");
        goto done;
    }
    progress("building the inputs");
    build_inputs(I, J, offset, x, ctx);

    printf("xattn demo: bidirectional cross-attention, video <-> audio (kernels %s, %d threads)\n",
           xattn_isa(), xattn_get_threads());
    printf("  video x (1, %lld, %d)   audio context (1, %lld, %d)   heads %d, dim_head %d\n", I,
           DIM, J, CDIM, HEADS, DH);

    /* one timed forward at full size: no map requested, none materialised */
    xattn_bidir_inputs in = {.B = 1, .I = I, .J = J, .x = x, .context = ctx};
    xattn_bidir_outputs res = {.out = out, .context_out = cout};
    progress("forward (warm-up)");
    if (xattn_bidir_forward(NULL, m, &in, &res) != XATTN_OK) {
        cli_lib_error(CMD, NULL);
        goto done;
    }
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        char what[64];
        snprintf(what, sizeof what, "forward %d/3", r + 1);
        progress(what);
        double t0 = cli_now();
        xattn_bidir_forward(NULL, m, &in, &res);
        double t = cli_now() - t0;
        if (t < best) best = t;
    }
    progress_done();
    /* the package's math: 4 projections, one similarity, two weighted sums, 2 output layers */
    double flop = 2.0 * ((double)I * DIM * 2 * INNER + (double)J * CDIM * 2 * INNER) +
                  2.0 * (double)I * J * INNER * 3 +
                  2.0 * ((double)I * INNER * DIM + (double)J * INNER * CDIM);
    printf("  out (1, %lld, %d)   context_out (1, %lld, %d)\n", I, DIM, J, CDIM);
    printf("  forward %.1f ms (best of 3), %.1f GFLOP/s\n", best * 1e3, flop / best / 1e9);
    const char *rss_note;
    double rss = cli_peak_rss_bytes(&rss_note) / 1048576.0;
    printf("  peak memory %.1f MB%s (one attention map would take %.1f MB; the reference keeps "
           "three)\n",
           rss, rss_note, (double)HEADS * I * J * 4 / 1048576.0);

    /* the attention rows of every STRIDE-th video frame */
    progress("attention of sampled video frames");
    for (int64_t s = 0; s < S; s++) memcpy(xs + s * DIM, x + s * STRIDE * DIM, sizeof(float) * DIM);
    xattn_bidir_inputs ins = {.B = 1, .I = S, .J = J, .x = xs, .context = ctx};
    xattn_bidir_outputs sres = {.out = so, .context_out = sco, .attn = attn};
    if (xattn_bidir_forward(NULL, m, &ins, &sres) != XATTN_OK) {
        progress_done();
        cli_lib_error(CMD, NULL);
        goto done;
    }
    progress_done();
    for (int64_t e = 0; e < S * J; e++) {
        float acc = 0;
        for (int h = 0; h < HEADS; h++) acc += attn[h * S * J + e];
        map[e] = acc / HEADS;
    }
    int64_t scored = 0, hit = 0;
    double abs_err = 0;
    for (int64_t s = 0; s < S; s++) {
        int64_t truth = 2 * s * STRIDE + offset;
        if (truth >= J) continue; /* that video frame has no audio */
        const float *row = map + s * J;
        int64_t best_j = 0;
        for (int64_t j = 1; j < J; j++)
            if (row[j] > row[best_j]) best_j = j;
        int64_t d = best_j > truth ? best_j - truth : truth - best_j;
        abs_err += (double)d;
        hit += d <= 1;
        scored++;
    }
    double frac = scored ? (double)hit / (double)scored : 0.0;
    printf("  alignment: %lld sampled video frames, %.1f%% matched within one audio frame, mean "
           "|error| %.2f audio frames (truth: audio = 2 x video + %lld)\n",
           (long long)scored, 100.0 * frac, scored ? abs_err / (double)scored : 0.0, offset);

    if (!no_png) {
        /* log10 of the head-mean attention, max-pooled over POOL audio frames so that the
         * narrow band survives the picture's resolution */
        float *pic = map + S * J, top = -12.0f;
        for (int64_t s = 0; s < S; s++)
            for (int64_t c = 0; c < JP; c++) {
                float mx = 0.0f;
                for (int64_t j = c * POOL; j < XA_DEMO_MIN((c + 1) * POOL, J); j++)
                    mx = map[s * J + j] > mx ? map[s * J + j] : mx;
                float v = log10f(mx > 1e-12f ? mx : 1e-12f);
                pic[s * JP + c] = v;
                top = v > top ? v : top;
            }
        /* rows: video frames 0, STRIDE, 2 STRIDE, ...; columns: audio frames in blocks of POOL
         * (max-pooled); ticks in frames, so that the band reads audio = 2 x video + offset off
         * the axes */
        char title[160], xl[80];
        snprintf(title, sizeof title,
                 "video -> audio attention, mean over %d heads (band: audio = 2 x video + %lld)",
                 HEADS, offset);
        snprintf(xl, sizeof xl, "audio frame j (max over blocks of %d frames)", POOL);
        xattn_heatmap_opts ho = {.title = title,
                                 .x_label = xl,
                                 .y_label = "video frame i",
                                 .max_side = 1024,
                                 .fixed_range = 1,
                                 .vmin = top - 6.0f,
                                 .vmax = top,
                                 .bar_label = "log10 attention",
                                 .x_tick_scale = POOL,
                                 .y_tick_scale = STRIDE};
        progress("writing the heat-map");
        xattn_status ps = xattn_png_heatmap(png, pic, S, JP, &ho);
        progress_done();
        if (ps == XATTN_ERR_UNSUPPORTED) {
            printf("  heat-map skipped: %s\n", xattn_last_error());
        } else if (ps != XATTN_OK) {
            cli_lib_error(CMD, png);
            goto done;
        } else {
            printf("  heat-map: %s\n", png);
        }
    }
    rc = frac >= 0.95 ? CLI_EXIT_OK : CLI_EXIT_ERROR;
    if (rc) fprintf(stderr, "xattn demo: the attention did not recover the alignment\n");
done:
    progress_done();
    xattn_bidir_free(m);
    xattn_st_close(st);
    free(x);
    free(ctx);
    free(out);
    free(cout);
    free(xs);
    free(so);
    free(sco);
    free(attn);
    free(map);
    return rc;
}
