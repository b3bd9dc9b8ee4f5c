/*
 * HALLO's hierarchical audio-visual cross-attention across a latent pyramid.
 *
 * Three soft face-region masks (full/pose, face, lip) are drawn at the resolution of a 512-pixel
 * image, resized to each latent level of the pyramid (64, 32, 16, 8: the UNet's H/8 .. H/64)
 * with xattn_resize_masks (bilinear, antialiased when shrinking, as torch's interpolate), and
 * one audio block per level (widths 320, 640, 1280, 1280 as Stable Diffusion's UNet) lets the
 * latent tokens attend to 32 audio tokens. The masked contribution of each region,
 * |zero_conv_k(attn2_k(norm2(x), audio) * M_k)| per token, is written as a PNG per level
 * (full | face | lip side by side).
 *
 *   hallo_pyramid [OUT_DIR] [--small]
 * --small uses narrow blocks (the example's test). The weights are deterministic stand-ins for
 * a trained HALLO checkpoint (load a real one with xattn_hallo_load on its state_dict).
 */
#define _POSIX_C_SOURCE 200809L /* mkstemp */
#include <xattn.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { IMG = 512, T = 32, AUDIO_DIM = 768, HEADS = 8 };

static float noise(uint64_t a, uint64_t b)
{
    uint64_t z = a * 0x9E3779B97F4A7C15ULL + b * 0xBF58476D1CE4E5B9ULL + 0x94D049BB133111EBULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (float)(z >> 40) / 16777216.0f - 0.5f;
}

/* soft ellipse: 1 inside, smooth falloff of `soft` pixels, 0 outside */
static void ellipse(float *m, double cx, double cy, double rx, double ry, double soft)
{
    for (int y = 0; y < IMG; y++)
        for (int x = 0; x < IMG; x++) {
            double d = sqrt(((x - cx) / rx) * ((x - cx) / rx) + ((y - cy) / ry) * ((y - cy) / ry));
            double e = (d - 1.0) * (rx < ry ? rx : ry) / soft; /* pixels outside the rim / soft */
            m[y * IMG + x] = (float)(e <= 0   ? 1.0
                                     : e >= 1 ? 0.0
                                              : 0.5 + 0.5 * cos(3.141592653589793 * e));
        }
}

/* fills a (rows, cols) weight with noise of scale 1/sqrt(cols) */
static float *weight(int64_t rows, int64_t cols, uint64_t tag)
{
    float *w = malloc(sizeof(float) * (size_t)(rows * cols));
    float s = 1.0f / sqrtf((float)cols);
    for (int64_t i = 0; i < rows * cols; i++) w[i] = 2.0f * s * noise(tag, (uint64_t)i);
    return w;
}

/* Builds a block of width C (the names of HALLO's state_dict) and loads it. */
static xattn_hallo *make_block(int64_t C, uint64_t seed)
{
    const int64_t inner = C, ff = 4 * C;
    char names[32][40];
    xattn_st_entry e[32];
    int n = 0;
    float *bufs[32];
#define ADD(nm, r, c, tag)                                                                         \
    do {                                                                                           \
        snprintf(names[n], sizeof names[n], "%s", nm);                                             \
        bufs[n] = weight(r, (c) > 0 ? (c) : 1, seed * 100 + (tag));                                \
        e[n] = (xattn_st_entry){names[n], XATTN_F32, (c) > 0 ? 2 : 1, {r, c}, bufs[n]};            \
        if ((c) == 0) e[n].shape[1] = 0;                                                           \
        n++;                                                                                       \
    } while (0)
    ADD("norm2.weight", C, 0, 1);
    ADD("norm2.bias", C, 0, 2);
    ADD("norm3.weight", C, 0, 3);
    ADD("norm3.bias", C, 0, 4);
    const char *att[3] = {"attn2_0", "attn2_1", "attn2_2"},
               *zc[3] = {"zero_conv_full", "zero_conv_face", "zero_conv_lip"};
    for (int k = 0; k < 3; k++) {
        char nm[40];
        snprintf(nm, sizeof nm, "%s.to_q.weight", att[k]);
        ADD(nm, inner, C, 10 + k);
        snprintf(nm, sizeof nm, "%s.to_k.weight", att[k]);
        ADD(nm, inner, AUDIO_DIM, 20 + k);
        snprintf(nm, sizeof nm, "%s.to_v.weight", att[k]);
        ADD(nm, inner, AUDIO_DIM, 30 + k);
        snprintf(nm, sizeof nm, "%s.to_out.0.weight", att[k]);
        ADD(nm, C, inner, 40 + k);
        snprintf(nm, sizeof nm, "%s.to_out.0.bias", att[k]);
        ADD(nm, C, 0, 50 + k);
    }
    for (int k = 0; k < 3; k++) {
        char nm[40];
        snprintf(nm, sizeof nm, "%s.weight", zc[k]);
        ADD(nm, C, C, 60 + k);
        e[n - 1].ndim = 4; /* Conv2d (C, C, 1, 1) */
        e[n - 1].shape[2] = e[n - 1].shape[3] = 1;
        snprintf(nm, sizeof nm, "%s.bias", zc[k]);
        ADD(nm, C, 0, 70 + k);
    }
    ADD("ff.net.0.proj.weight", 2 * ff, C, 80);
    ADD("ff.net.0.proj.bias", 2 * ff, 0, 81);
    ADD("ff.net.2.weight", C, ff, 82);
    ADD("ff.net.2.bias", C, 0, 83);
#undef ADD
    for (int i = 0; i < n; i++) /* LayerNorm weights near 1 */
        if (strstr(e[i].name, "norm") && strstr(e[i].name, ".weight"))
            for (int64_t j = 0; j < C; j++) bufs[i][j] += 1.0f;
    char path[] = "/tmp/hallo_block_XXXXXX";
    int fd = mkstemp(path);
    xattn_safetensors *st = NULL;
    xattn_hallo *m = NULL;
    const xattn_hallo_opts opts = {.heads = HEADS};
    if (fd < 0 || (close(fd), 0) || xattn_st_save(path, e, (size_t)n, NULL, 0) ||
        xattn_st_open(path, &st) || xattn_hallo_load(st, "", &opts, &m))
        fprintf(stderr, "hallo_pyramid: %s\n", xattn_last_error());
    if (fd >= 0) remove(path);
    xattn_st_close(st);
    for (int i = 0; i < n; i++) free(bufs[i]);
    return m;
}

int main(int argc, char **argv)
{
    const char *dir = ".";
    int small = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--small"))
            small = 1;
        else
            dir = argv[i];
    }
    const int64_t levels[4] = {IMG / 8, IMG / 16, IMG / 32, IMG / 64};
    const int64_t widths[4] = {small ? 32 : 320, small ? 64 : 640, small ? 64 : 1280,
                               small ? 64 : 1280};

    /* full/pose, face and lip masks of a centred portrait, soft at the rims */
    float *masks = malloc(sizeof(float) * 3 * IMG * IMG);
    ellipse(masks, 256, 250, 190, 230, 40);               /* head and shoulders */
    ellipse(masks + IMG * IMG, 256, 230, 120, 150, 24);   /* face */
    ellipse(masks + 2 * IMG * IMG, 256, 330, 50, 24, 12); /* lips */

    float *audio = malloc(sizeof(float) * T * AUDIO_DIM);
    for (int64_t i = 0; i < T * AUDIO_DIM; i++) audio[i] = 2.0f * noise(99, (uint64_t)i);
    int rc = 0;
    for (int l = 0; l < 4 && !rc; l++) {
        const int64_t h = levels[l], N = h * h, C = widths[l];
        float *m = malloc(sizeof(float) * 3 * N), *x = malloc(sizeof(float) * N * C);
        float *out = malloc(sizeof(float) * N * C), *reg = malloc(sizeof(float) * 3 * N * C);
        float *pic = malloc(sizeof(float) * N * 3);
        xattn_hallo *blk = make_block(C, (uint64_t)l + 1);
        for (int64_t i = 0; i < N * C; i++) x[i] = 2.0f * noise(200 + l, (uint64_t)i);
        xattn_hallo_inputs in = {
            .B = 1, .N = N, .T = T, .x = x, .audio = audio, .masks = m, .mask_batch = 1};
        const xattn_hallo_outputs outs = {.out = out, .regions = reg};
        if (!blk || xattn_resize_masks(masks, 3, IMG, IMG, h, h, m) != XATTN_OK ||
            xattn_hallo_forward(NULL, blk, &in, &outs) != XATTN_OK) {
            fprintf(stderr, "hallo_pyramid: %s\n", xattn_last_error());
            rc = 1;
        } else {
            /* |o_k| per token, the three regions side by side: (h, 3h) */
            for (int k = 0; k < 3; k++)
                for (int64_t p = 0; p < N; p++) {
                    double s = 0;
                    for (int64_t c = 0; c < C; c++)
                        s += (double)reg[(k * N + p) * C + c] * reg[(k * N + p) * C + c];
                    pic[(p / h) * 3 * h + k * h + p % h] = (float)sqrt(s / (double)C);
                }
            char path[4096], title[128];
            snprintf(path, sizeof path, "%s/hallo_level_%lld.png", dir, (long long)h);
            snprintf(title, sizeof title,
                     "latent %lldx%lld, width %lld: each region's output, RMS over channels",
                     (long long)h, (long long)h, (long long)C);
            char xl[96];
            snprintf(xl, sizeof xl, "x: full 0-%lld | face %lld-%lld | lip %lld-%lld",
                     (long long)h - 1, (long long)h, 2 * (long long)h - 1, 2 * (long long)h,
                     3 * (long long)h - 1);
            xattn_heatmap_opts ho = {.title = title,
                                     .x_label = xl,
                                     .y_label = "y",
                                     .max_side = 768,
                                     .bar_label = "RMS of region output"};
            double mean[3] = {0, 0, 0};
            for (int k = 0; k < 3; k++) {
                for (int64_t p = 0; p < N; p++) mean[k] += m[k * N + p];
                mean[k] /= (double)N;
            }
            xattn_status ps = xattn_png_heatmap(path, pic, h, 3 * h, &ho);
            if (ps != XATTN_OK && ps != XATTN_ERR_UNSUPPORTED) {
                fprintf(stderr, "hallo_pyramid: %s\n", xattn_last_error());
                rc = 1;
            }
            printf("level %2lldx%-2lld width %4lld: mean mask full %.3f face %.3f lip %.3f -> %s\n",
                   (long long)h, (long long)h, (long long)C, mean[0], mean[1], mean[2],
                   ps == XATTN_OK ? path : "(no picture: built without libpng)");
        }
        xattn_hallo_free(blk);
        free(m);
        free(x);
        free(out);
        free(reg);
        free(pic);
    }
    free(masks);
    free(audio);
    return rc;
}
