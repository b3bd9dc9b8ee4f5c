/*
 * mmca_match: the MMCA (CVPR 2020) image-text matching head composed from xattn's public API.
 *
 *   usage: mmca_match MODEL.safetensors
 *
 * MODEL holds a joint layer (nn.TransformerEncoderLayer names, __metadata__ heads/...), the text
 * aggregator's weights text_conv{1,2,3}.{weight (C, d, w), bias (C)} (nn.Conv1d, padding 0) and
 * text_proj.{weight (d, 3C), bias (d)} (nn.Linear), plus inputs input.x (B, K, d) image regions
 * and input.context (B, N, d) words (N >= 3), and __metadata__ "alpha".
 *
 *   joint:  [R*; X*] = joint_layer([R; X])              (xattn_joint_forward: one softmax over
 *                                                        all K+N keys for every row)
 *   image:  i = normalize(mean_k R[k])                   (average pooling over regions)
 *   text:   f_w = max_t relu(conv1d_w(X))[t]  (w = 1, 2, 3), c = normalize(Linear([f_1 f_2 f_3]))
 *   score:  S = <i0, c0> + alpha <i1, c1>,  (i0, c0) from (R, X), (i1, c1) from (R*, X*)
 *
 * The conv1d of window w is w accumulated GEMMs, one per tap s: rows s .. s+T of X (read in
 * place) times that tap's (C, d) weight slice (the torch weight (C, d, w) permuted to (w, C, d)).
 * tests/test_mmca.c checks every embedding and S against a PyTorch transcription
 * (tests/reference/gen_joint.py, joint_mmca.safetensors).
 */
#include "xattn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct mmca_head {
    int64_t d, C;
    float *conv_w[3];       /* (w, C, d): [t][c][i] = torch weight[c][i][t] */
    float *conv_b[3];       /* (C) */
    float *proj_w, *proj_b; /* (d, 3C), (d) */
} mmca_head;

static void mmca_head_free(mmca_head *h)
{
    for (int w = 0; w < 3; w++) {
        free(h->conv_w[w]);
        free(h->conv_b[w]);
    }
    free(h->proj_w);
    free(h->proj_b);
    memset(h, 0, sizeof *h);
}

static int mmca_get(const xattn_safetensors *st, const char *name, int ndim, xattn_array *a)
{
    if (xattn_st_get(st, name, XATTN_F32, a) != XATTN_OK) {
        fprintf(stderr, "mmca: %s\n", xattn_last_error());
        return -1;
    }
    if (a->ndim != ndim) {
        fprintf(stderr, "mmca: tensor '%s' has rank %d, expected %d\n", name, a->ndim, ndim);
        xattn_array_free(a);
        return -1;
    }
    return 0;
}

static int mmca_head_load(const xattn_safetensors *st, int64_t d, mmca_head *h)
{
    memset(h, 0, sizeof *h);
    h->d = d;
    for (int w = 1; w <= 3; w++) {
        char name[64];
        xattn_array wa, ba;
        snprintf(name, sizeof name, "text_conv%d.weight", w);
        if (mmca_get(st, name, 3, &wa)) goto fail;
        if (wa.shape[1] != d || wa.shape[2] != w || (h->C && wa.shape[0] != h->C)) {
            fprintf(stderr, "mmca: tensor '%s' must be (C, %lld, %d)\n", name, (long long)d, w);
            xattn_array_free(&wa);
            goto fail;
        }
        h->C = wa.shape[0];
        snprintf(name, sizeof name, "text_conv%d.bias", w);
        if (mmca_get(st, name, 1, &ba)) {
            xattn_array_free(&wa);
            goto fail;
        }
        if (ba.shape[0] != h->C) {
            fprintf(stderr, "mmca: tensor '%s' must be (%lld,)\n", name, (long long)h->C);
            xattn_array_free(&wa);
            xattn_array_free(&ba);
            goto fail;
        }
        float *p = malloc((size_t)(h->C * w * d) * sizeof(float));
        const float *src = wa.data;
        for (int64_t c = 0; c < h->C; c++) /* (C, d, w) -> (w, C, d) */
            for (int t = 0; t < w; t++)
                for (int64_t i = 0; i < d; i++)
                    p[(t * h->C + c) * d + i] = src[(c * d + i) * w + t];
        h->conv_w[w - 1] = p;
        h->conv_b[w - 1] = ba.data; /* take ownership */
        xattn_array_free(&wa);
    }
    xattn_array pw, pb;
    if (mmca_get(st, "text_proj.weight", 2, &pw)) goto fail;
    if (pw.shape[0] != d || pw.shape[1] != 3 * h->C) {
        fprintf(stderr, "mmca: tensor 'text_proj.weight' must be (%lld, %lld)\n", (long long)d,
                (long long)(3 * h->C));
        xattn_array_free(&pw);
        goto fail;
    }
    if (mmca_get(st, "text_proj.bias", 1, &pb)) {
        xattn_array_free(&pw);
        goto fail;
    }
    if (pb.shape[0] != d) {
        fprintf(stderr, "mmca: tensor 'text_proj.bias' must be (%lld,)\n", (long long)d);
        xattn_array_free(&pw);
        xattn_array_free(&pb);
        goto fail;
    }
    h->proj_w = pw.data;
    h->proj_b = pb.data;
    return 0;
fail:
    mmca_head_free(h);
    return -1;
}

static void l2_normalize(float *v, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)v[i] * v[i];
    float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
    for (int64_t i = 0; i < n; i++) v[i] *= inv;
}

/* emb (B, d) = normalize(mean over K regions of R (B, K, d)) */
static int mmca_image_embed(const float *R, int64_t B, int64_t K, int64_t d, float *emb)
{
    float *ones = malloc((size_t)K * sizeof(float));
    if (!ones) return -1;
    for (int64_t k = 0; k < K; k++) ones[k] = 1.0f;
    int rc = 0;
    for (int64_t b = 0; b < B && !rc; b++) {
        /* (1, d) = (1/K) * ones (1, K) * R_b (K, d) */
        if (xattn_sgemm(0, 0, 1, d, K, 1.0f / (float)K, ones, K, R + b * K * d, d, 0.0f,
                        emb + b * d, d) != XATTN_OK)
            rc = -1;
        else
            l2_normalize(emb + b * d, d);
    }
    free(ones);
    return rc;
}

/* emb (B, d) from words X (B, N, d), N >= 3 */
static int mmca_text_embed(const mmca_head *h, const float *X, int64_t B, int64_t N, float *emb)
{
    const int64_t d = h->d, C = h->C;
    if (N < 3) {
        fprintf(stderr, "mmca: the text needs at least 3 words (window 3, padding 0)\n");
        return -1;
    }
    float *conv = malloc((size_t)(N * C) * sizeof(float));
    float *feat = malloc((size_t)(3 * C) * sizeof(float));
    int rc = (conv && feat) ? 0 : -1;
    for (int64_t b = 0; b < B && !rc; b++) {
        const float *xb = X + b * N * d;
        for (int w = 1; w <= 3 && !rc; w++) {
            int64_t T = N - w + 1;
            /* conv (T, C) = sum over taps s of X[s .. s+T) (T, d) * W_s^T (d, C) */
            for (int tap = 0; tap < w && !rc; tap++)
                if (xattn_sgemm(0, 1, T, C, d, 1.0f, xb + tap * d, d,
                                h->conv_w[w - 1] + tap * C * d, d, tap ? 1.0f : 0.0f, conv,
                                C) != XATTN_OK) {
                    fprintf(stderr, "mmca: %s\n", xattn_last_error());
                    rc = -1;
                }
            if (rc) break;
            float *f = feat + (w - 1) * C;
            for (int64_t c = 0; c < C; c++) f[c] = 0.0f; /* max of ReLU outputs is >= 0 */
            for (int64_t t = 0; t < T; t++)
                for (int64_t c = 0; c < C; c++) {
                    float v = conv[t * C + c] + h->conv_b[w - 1][c];
                    if (v > f[c]) f[c] = v;
                }
        }
        if (!rc && xattn_linear(feat, 1, 3 * C, h->proj_w, h->proj_b, d, emb + b * d) != XATTN_OK)
            rc = -1;
        if (!rc) l2_normalize(emb + b * d, d);
    }
    free(conv);
    free(feat);
    return rc;
}

/* All of it: embeddings i0, c0, i1, c1 (B, d) each and scores S (B). */
static int mmca_match(const xattn_joint *jm, const mmca_head *h, const float *R, const float *X,
                      int64_t B, int64_t K, int64_t N, float alpha, float *i0, float *c0, float *i1,
                      float *c1, float *S)
{
    const int64_t d = h->d;
    float *rs = malloc((size_t)(B * K * d) * sizeof(float));
    float *xs = malloc((size_t)(B * N * d) * sizeof(float));
    int rc = (rs && xs) ? 0 : -1;
    xattn_joint_inputs in;
    memset(&in, 0, sizeof in);
    in.B = B;
    in.K = K;
    in.N = N;
    in.x = R;
    in.context = X;
    xattn_joint_outputs out;
    memset(&out, 0, sizeof out);
    out.out = rs;
    out.context_out = xs;
    if (!rc && xattn_joint_forward(NULL, jm, &in, &out) != XATTN_OK) {
        fprintf(stderr, "mmca: %s\n", xattn_last_error());
        rc = -1;
    }
    if (!rc) rc = mmca_image_embed(R, B, K, d, i0);
    if (!rc) rc = mmca_text_embed(h, X, B, N, c0);
    if (!rc) rc = mmca_image_embed(rs, B, K, d, i1);
    if (!rc) rc = mmca_text_embed(h, xs, B, N, c1);
    for (int64_t b = 0; b < B && !rc; b++) {
        double s0 = 0, s1 = 0;
        for (int64_t i = 0; i < d; i++) {
            s0 += (double)i0[b * d + i] * c0[b * d + i];
            s1 += (double)i1[b * d + i] * c1[b * d + i];
        }
        S[b] = (float)(s0 + alpha * s1);
    }
    free(rs);
    free(xs);
    return rc;
}

#ifndef MMCA_NO_MAIN
int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: mmca_match MODEL.safetensors\n");
        return 2;
    }
    xattn_safetensors *st = NULL;
    if (xattn_st_open(argv[1], &st) != XATTN_OK) {
        fprintf(stderr, "mmca_match: %s\n", xattn_last_error());
        return 1;
    }
    int rc = 1;
    xattn_joint *jm = NULL;
    mmca_head h;
    memset(&h, 0, sizeof h);
    xattn_array ax, ac;
    memset(&ax, 0, sizeof ax);
    memset(&ac, 0, sizeof ac);
    float *buf = NULL;
    if (xattn_joint_load(st, "", NULL, &jm) != XATTN_OK) {
        fprintf(stderr, "mmca_match: %s\n", xattn_last_error());
        goto done;
    }
    xattn_joint_config cfg;
    xattn_joint_get_config(jm, &cfg);
    const int64_t d = cfg.d_model;
    if (mmca_head_load(st, d, &h)) goto done;
    if (mmca_get(st, "input.x", 3, &ax) || mmca_get(st, "input.context", 3, &ac)) goto done;
    const int64_t B = ax.shape[0], K = ax.shape[1], N = ac.shape[1];
    if (ac.shape[0] != B || ax.shape[2] != d || ac.shape[2] != d) {
        fprintf(stderr, "mmca_match: inputs must be (B, K, %lld) and (B, N, %lld)\n", (long long)d,
                (long long)d);
        goto done;
    }
    const char *av = xattn_st_meta_get(st, "alpha");
    float alpha = av ? strtof(av, NULL) : 1.0f;
    buf = malloc((size_t)(4 * B * d + B) * sizeof(float));
    if (!buf) goto done;
    float *S = buf + 4 * B * d;
    if (mmca_match(jm, &h, ax.data, ac.data, B, K, N, alpha, buf, buf + B * d, buf + 2 * B * d,
                   buf + 3 * B * d, S))
        goto done;
    for (int64_t b = 0; b < B; b++) printf("pair %lld: S = %.6f\n", (long long)b, S[b]);
    rc = 0;
done:
    free(buf);
    xattn_array_free(&ax);
    xattn_array_free(&ac);
    mmca_head_free(&h);
    xattn_joint_free(jm);
    xattn_st_close(st);
    return rc;
}
#endif
