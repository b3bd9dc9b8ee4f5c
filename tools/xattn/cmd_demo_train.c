/*
 * xattn demo --train: trains a small BidirectionalCrossAttentionTransformer from scratch, in C,
 * on generated video/audio pairs, until its attention recovers their alignment.
 *
 * Data: N pairs; audio runs at twice the video frame rate and starts `offset` audio frames early
 * (a different offset per pair), so video frame i belongs with audio frame 2 i + offset. Every
 * frame carries a sinusoidal code of its time on the common clock (8 frequencies) and 16
 * channels of its own random content. The target of the video stream is its input plus the
 * content of the audio frame it belongs with: the model can only meet it by attending from each
 * video frame to that audio frame, which nobody tells it.
 *
 * Training: AdamW (lr 3e-3) on the MSE loss, N fresh pairs each step (nothing can be memorised);
 * the loss is printed as it falls. Then the trained model is saved, its first layer's attention
 * maps are computed, each video frame's most attended audio frame compared with the truth, and the
 * loss curve and the learned attention (pair 0, heads averaged) drawn as PNG pictures.
 */
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *CMD = "demo";

enum { TD = 32, TCODE = 16, THEADS = 2, TDH = 16, TPAIRS = 16 };

static float tnoise(uint64_t a, uint64_t b)
{
    uint64_t z = a * 0x9e3779b97f4a7c15ull + b * 0xbf58476d1ce4e5b9ull + 0x94d049bb133111ebull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((double)(z >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* A frame: the time code of time t (video frames) in channels 0..15, its content after. */
static void frame(double t, uint64_t key, float *f, int with_content)
{
    for (int k = 0; k < TCODE / 2; k++) {
        const double period = 3.0 * pow(2.0, k * 0.75);
        f[2 * k] = (float)sin(6.283185307179586 * t / period);
        f[2 * k + 1] = (float)cos(6.283185307179586 * t / period);
    }
    for (int c = TCODE; c < TD; c++) f[c] = with_content ? tnoise(key, (uint64_t)c) : 0.0f;
}

/* The pairs of batch `round` (fresh ones every step: nothing to memorise): x (N, I, TD),
 * ctx (N, J, TD), the target of x, each pair's offset. */
static void make_pairs(int64_t round, int64_t N, int64_t I, int64_t J, float *x, float *ctx,
                       float *t, int64_t *off)
{
    for (int64_t n = 0; n < N; n++) {
        const uint64_t k = (uint64_t)(round * N + n) * 1000003u;
        off[n] = 2 + (int64_t)((tnoise(999, k) + 1.0f) * 4.0f); /* 2 .. 10 */
        for (int64_t i = 0; i < I; i++) frame((double)i, k + (uint64_t)i, x + (n * I + i) * TD, 1);
        for (int64_t j = 0; j < J; j++)
            frame((double)(j - off[n]) / 2.0, k + 500000u + (uint64_t)j, ctx + (n * J + j) * TD, 1);
        for (int64_t i = 0; i < I; i++) { /* x plus the content of audio frame 2 i + offset */
            const float *xi = x + (n * I + i) * TD, *aj = ctx + (n * J + 2 * i + off[n]) * TD;
            float *ti = t + (n * I + i) * TD;
            for (int c = 0; c < TD; c++) ti[c] = xi[c] + (c >= TCODE ? aj[c] : 0.0f);
        }
    }
}

int demo_train(int argc, char **argv)
{
    long long steps = 600, I = 24, seed = 1;
    const char *out = "demo_trained.safetensors", *curve = "demo_loss.png";
    const char *att = "demo_trained_attention.png";
    int no_png = 0, train = 0;
    cli_option opts[] = {
        {"--train", CLI_FLAG, &train, 0, 0},         {"--steps", CLI_INT, &steps, 1, 100000},
        {"--video-len", CLI_INT, &I, 4, 512},        {"--seed", CLI_INT, &seed, 0, 1LL << 40},
        {"--out", CLI_STRING, &out, 0, 0},           {"--loss-png", CLI_STRING, &curve, 0, 0},
        {"--attention-png", CLI_STRING, &att, 0, 0}, {"--no-png", CLI_FLAG, &no_png, 0, 0},
    };
    int npos = 0;
    cli_parse_result pr =
        cli_parse(CMD, argc, argv, opts, sizeof opts / sizeof opts[0], NULL, 0, &npos);
    if (pr == CLI_HELP) {
        printf(
            "usage: xattn demo --train [--steps N] [--video-len I] [--seed S]\n"
            "                  [--out FILE.safetensors] [--loss-png FILE.png]\n"
            "                  [--attention-png FILE.png] [--no-png]\n"
            "\n"
            "Trains BidirectionalCrossAttentionTransformer(dim=32, depth=1, context_dim=32,\n"
            "heads=2, dim_head=16) from scratch on %d fresh generated video/audio pairs a step\n"
            "(audio at twice the frame rate, 2..10 audio frames early; each frame carries a\n"
            "code of its time and its own content): each video frame must fetch the\n"
            "content of the audio frame it belongs with. AdamW (lr 3e-3), MSE loss, --steps\n"
            "steps (default 600) on I video frames (default 24; J = 2 I + 12). Prints the loss,\n"
            "saves the model (--out, default demo_trained.safetensors: load_state_dict in\n"
            "PyTorch, 'xattn run'), checks each video frame's most attended audio frame, and\n"
            "draws the loss curve (--loss-png) and the learned attention (--attention-png).\n"
            "Exit code 1 if fewer than 90%% of the video frames of pairs never seen in training\n"
            "attend most to their audio frame (within one frame).\n",
            TPAIRS);
        return CLI_EXIT_OK;
    }
    if (pr != CLI_PARSED) return CLI_EXIT_USAGE;
    const int64_t N = TPAIRS, J = 2 * I + 12;
    char seedtxt[32];
    snprintf(seedtxt, sizeof seedtxt, "%lld", seed);
    const xattn_option mo[] = {{"dim", "32"},  {"depth", "1"},     {"context_dim", "32"},
                               {"heads", "2"}, {"dim_head", "16"}, {"ff_expansion_factor", "2"}};
    xattn_module *m = NULL;
    xattn_optim *opt = NULL;
    float *x = malloc(sizeof(float) * (size_t)(N * I * TD)),
          *ctx = malloc(sizeof(float) * (size_t)(N * J * TD)),
          *t = malloc(sizeof(float) * (size_t)(N * I * TD)),
          *loss = malloc(sizeof(float) * (size_t)steps);
    int64_t *off = malloc(sizeof(int64_t) * (size_t)N);
    float **params = NULL, **grads = NULL;
    int64_t *sizes = NULL;
    int rc = CLI_EXIT_ERROR;
    if (!x || !ctx || !t || !loss || !off) {
        cli_error(CMD, NULL, "out of memory");
        goto done;
    }
    if (xattn_module_create("bidir-transformer", mo, sizeof mo / sizeof mo[0], (uint64_t)seed,
                            &m)) {
        cli_lib_error(CMD, NULL);
        goto done;
    }
    const size_t np = xattn_module_param_count(m);
    params = calloc(np + 1, sizeof *params);
    grads = calloc(np + 1, sizeof *grads);
    sizes = calloc(np + 1, sizeof *sizes);
    for (size_t i = 0; params && grads && sizes && i < np; i++) {
        xattn_param_desc d;
        xattn_module_param(m, i, &d);
        if (!d.data) continue;
        sizes[i] = 1;
        for (int k = 0; k < d.ndim; k++) sizes[i] *= d.shape[k];
        params[i] = d.data;
        grads[i] = malloc(sizeof(float) * (size_t)sizes[i]);
    }
    const xattn_option oo[] = {{"lr", "3e-3"}};
    if (!params || !grads || !sizes || xattn_optim_new("adamw", oo, 1, sizes, np, &opt)) {
        cli_error(CMD, NULL, "cannot set up the optimizer: %s", xattn_last_error());
        goto done;
    }
    printf("xattn demo --train: BidirectionalCrossAttentionTransformer(dim=32, depth=1, "
           "context_dim=32, heads=2, dim_head=16), %lld fresh pairs a step of video (%lld frames) "
           "and audio (%lld frames), AdamW lr 3e-3\n",
           (long long)N, I, (long long)J);
    const xattn_tensor in[2] = {{"x", XATTN_F32, 3, {N, I, TD}, x},
                                {"context", XATTN_F32, 3, {N, J, TD}, ctx}};
    const xattn_tensor tg[1] = {{"out", XATTN_F32, 3, {N, I, TD}, t}};
    for (long long s = 0; s < steps; s++) {
        double l = 0.0;
        make_pairs(s, N, I, J, x, ctx, t, off);
        if (xattn_module_mse_grad(NULL, m, in, 2, tg, 1, &l, NULL, 0, grads) ||
            xattn_optim_step(opt, params, (const float *const *)grads)) {
            cli_lib_error(CMD, NULL);
            goto done;
        }
        loss[s] = (float)l;
        if (s == 0 || (s + 1) % 50 == 0 || s + 1 == steps)
            printf("  step %4lld  loss %.5f\n", s + 1, l);
    }
    if (xattn_module_save(m, out)) {
        cli_lib_error(CMD, out);
        goto done;
    }
    printf("wrote %s (load it in PyTorch: load_state_dict(strict=True); or 'xattn run')\n", out);
    /* the first layer's attention as a module of its own: its maps, on pairs never seen */
    make_pairs(steps, N, I, J, x, ctx, t, off);
    {
        xattn_safetensors *st = NULL;
        xattn_module *a = NULL;
        xattn_open_opts ao;
        memset(&ao, 0, sizeof ao);
        ao.kind = "bidir";
        ao.prefix = "layers.0.0.";
        float *map = malloc(sizeof(float) * (size_t)(N * THEADS * I * J)),
              *o1 = malloc(sizeof(float) * (size_t)(N * I * TD)),
              *o2 = malloc(sizeof(float) * (size_t)(N * J * TD));
        int ok = map && o1 && o2 && !xattn_st_open(out, &st) && !xattn_module_open(st, &ao, &a);
        xattn_tensor res[3] = {{"out", XATTN_F32, 3, {N, I, TD}, o1},
                               {"context_out", XATTN_F32, 3, {N, J, TD}, o2},
                               {"attn", XATTN_F32, 4, {N, THEADS, I, J}, map}};
        ok = ok && !xattn_module_forward(NULL, a, in, 2, res, 3);
        if (!ok) {
            cli_lib_error(CMD, out);
        } else {
            int64_t hit = 0;
            for (int64_t n = 0; n < N; n++)
                for (int64_t i = 0; i < I; i++) {
                    int64_t best = 0;
                    float bv = -1.0f;
                    for (int64_t j = 0; j < J; j++) {
                        float v = 0.0f;
                        for (int h = 0; h < THEADS; h++)
                            v += map[((n * THEADS + h) * I + i) * J + j];
                        if (v > bv) bv = v, best = j;
                    }
                    const int64_t want = 2 * i + off[n];
                    hit += best >= want - 1 && best <= want + 1;
                }
            printf("learned alignment: %lld of %lld video frames attend most to their audio frame "
                   "(within one frame)\n",
                   (long long)hit, (long long)(N * I));
            rc = hit * 10 >= N * I * 9
                     ? CLI_EXIT_OK
                     : cli_error(CMD, NULL,
                                 "the attention did not learn the alignment (%lld of %lld)",
                                 (long long)hit, (long long)(N * I));
            if (!rc && !no_png) { /* pair 0, heads averaged */
                float *avg = malloc(sizeof(float) * (size_t)(I * J));
                for (int64_t k = 0; avg && k < I * J; k++)
                    avg[k] = 0.5f * (map[k] + map[I * J + k]);
                char title[96];
                snprintf(title, sizeof title, "learned attention, pair 0 (audio %lld frames early)",
                         (long long)off[0]);
                const xattn_heatmap_opts ho = {.title = title,
                                               .x_label = "audio frame",
                                               .y_label = "video frame",
                                               .bar_label = "attention weight"};
                const xattn_curve_opts co = {.title = "training loss (MSE)",
                                             .x_label = "step",
                                             .y_label = "loss",
                                             .log_y = 1};
                if (!avg || xattn_png_heatmap(att, avg, I, J, &ho) ||
                    xattn_png_curve(curve, loss, steps, &co))
                    rc = cli_lib_error(CMD, NULL);
                else
                    printf("wrote %s and %s\n", curve, att);
                free(avg);
            }
        }
        xattn_module_free(a);
        xattn_st_close(st);
        free(map);
        free(o1);
        free(o2);
    }
done:
    for (size_t i = 0; grads && i < xattn_module_param_count(m); i++) free(grads[i]);
    free(grads);
    free(params);
    free(sizes);
    xattn_optim_free(opt);
    xattn_module_free(m);
    free(x);
    free(ctx);
    free(t);
    free(loss);
    free(off);
    return rc;
}
