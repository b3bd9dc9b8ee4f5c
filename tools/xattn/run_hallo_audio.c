/*
 * xattn run MODEL.safetensors --module hallo-audio: M7, the audio path of HALLO's
 * AudioTemporalBasicTransformerBlock with region masks resized to the latent (mask pyramid).
 */
#include "cli.h"
#include "modules_ext.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMD "run"

static const char *const NAMES[] = {
    "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias", "zero_conv_full.weight",
    "zero_conv_full.bias", "zero_conv_face.weight", "zero_conv_face.bias", "zero_conv_lip.weight",
    "zero_conv_lip.bias", "ff.net.0.proj.weight", "ff.net.0.proj.bias", "ff.net.2.weight",
    "ff.net.2.bias", "attn2_0.to_q.weight", "attn2_0.to_k.weight", "attn2_0.to_v.weight",
    "attn2_0.to_out.0.weight", "attn2_0.to_out.0.bias", "attn2_1.to_q.weight",
    "attn2_1.to_k.weight", "attn2_1.to_v.weight", "attn2_1.to_out.0.weight",
    "attn2_1.to_out.0.bias", "attn2_2.to_q.weight", "attn2_2.to_k.weight", "attn2_2.to_v.weight",
    "attn2_2.to_out.0.weight", "attn2_2.to_out.0.bias"};

static void help(void)
{
    printf(
        "usage: xattn run MODEL.safetensors [--module hallo-audio] --x LATENT.npy\n"
        "                 --context AUDIO.npy --region-masks M.npy [--latent-hw H,W]\n"
        "                 [--motion-scale P,F,L] [--heads N] [--regions] [--out-dir DIR]\n"
        "                 [--threads N] [--allow-nonfinite]\n"
        "\n"
        "The audio path of HALLO's AudioTemporalBasicTransformerBlock (hallo/models/attention.py):\n"
        "  n = norm2(x);  o_k = zero_conv_k(attn2_k(n, audio) * M_k),  k = full, face, lip\n"
        "  h = x + P o_full + F o_face + L o_lip;  out = h + ff(norm3(h))   (diffusers GEGLU)\n"
        "The region masks are resized to the latent by antialiased bilinear interpolation\n"
        "(torch interpolate(mode='bilinear', antialias=True, align_corners=False)) and flattened\n"
        "row-major; each multiplies every channel of a token.\n"
        "  --x LATENT.npy            latent tokens (B, H*W, C), or (H*W, C)\n"
        "  --context AUDIO.npy       audio tokens (B, T, Ca), or (T, Ca)\n"
        "  --region-masks M.npy      soft masks (B or 1, 3, Hm, Wm), or (3, Hm, Wm): full/pose,\n"
        "                            face, lip, at any resolution (e.g. the image's)\n"
        "  --latent-hw H,W           the latent grid (default: square, H = W = sqrt(H*W))\n"
        "  --motion-scale P,F,L      region weights (default 1,1,1)\n"
        "  --heads N                 attention heads (default: __metadata__ 'heads', else 8)\n"
        "  --regions                 also write regions.npy (3, B, H*W, C): each o_k, unscaled\n"
        "  outputs: out.npy          (B, H*W, C) (no batch axis for a rank-2 --x)\n"
        "\n"
        "Outputs are float32 .npy files in --out-dir DIR (default '.', created if missing);\n"
        "nothing is written if anything fails. NaN or infinity in the inputs or weights is an\n"
        "error unless --allow-nonfinite.\n"
        "  --threads N               threads (default: all cores)\n"
        "  -h, --help                this help\n");
}

static int detect(const xattn_safetensors *st)
{
    return xattn_st_find(st, "attn2_0.to_q.weight") >= 0 &&
           xattn_st_find(st, "zero_conv_full.weight") >= 0 &&
           xattn_st_find(st, "zero_conv_lip.weight") >= 0;
}

static void describe(const xattn_safetensors *st)
{
    printf("module: hallo-audio (HALLO region-masked audio cross-attention block, audio path)\n");
}

/* "a,b[,c]" -> n finite numbers; 0 on success */
static int parse_list(const char *s, int n, double *v)
{
    const char *p = s;
    for (int i = 0; i < n; i++) {
        char *end;
        errno = 0;
        v[i] = strtod(p, &end);
        if (errno || end == p || !isfinite(v[i])) return -1;
        if (i + 1 < n) {
            if (*end != ',') return -1;
            p = end + 1;
        } else if (*end) {
            return -1;
        }
    }
    return 0;
}

static int run_hallo(int argc, char **argv)
{
    const char *x = NULL, *ctx = NULL, *rm = NULL, *hw_s = NULL, *ms_s = NULL, *out_dir = ".",
               *module = NULL;
    long long threads = 0, heads = 0;
    int allow = 0, want_regions = 0;
    const cli_option opts[] = {
        {"--x", CLI_STRING, &x, 0, 0},
        {"--context", CLI_STRING, &ctx, 0, 0},
        {"--region-masks", CLI_STRING, &rm, 0, 0},
        {"--latent-hw", CLI_STRING, &hw_s, 0, 0},
        {"--motion-scale", CLI_STRING, &ms_s, 0, 0},
        {"--heads", CLI_INT, &heads, 1, 65536},
        {"--regions", CLI_FLAG, &want_regions, 0, 0},
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
    if (npos < 1) return cli_usage(CMD, "module hallo-audio needs MODEL.safetensors");
    if (!x) return cli_usage(CMD, "module hallo-audio needs --x LATENT.npy");
    if (!ctx) return cli_usage(CMD, "module hallo-audio needs --context AUDIO.npy");
    if (!rm) return cli_usage(CMD, "module hallo-audio needs --region-masks M.npy");
    double hw[2] = {0, 0}, msd[3] = {1, 1, 1};
    if (hw_s && (parse_list(hw_s, 2, hw) || hw[0] < 1 || hw[1] < 1 || hw[0] != floor(hw[0]) ||
                 hw[1] != floor(hw[1]) || hw[0] > 1e9 || hw[1] > 1e9))
        return cli_usage(CMD, "--latent-hw: '%s' is not two positive integers H,W", hw_s);
    if (ms_s && parse_list(ms_s, 3, msd))
        return cli_usage(CMD, "--motion-scale: '%s' is not three finite numbers P,F,L", ms_s);
    if (threads > 0) xattn_set_threads((int)threads);
    cli_finite_rule rule = allow ? CLI_FINITE_ANY : CLI_FINITE_STRICT;
    const char *model = pos[0];
    int rc = cli_check_out_dir(CMD, out_dir);
    if (rc) return rc;

    xattn_safetensors *st = NULL;
    xattn_hallo *m = NULL;
    xattn_array ax, ac, am;
    memset(&ax, 0, sizeof ax);
    memset(&ac, 0, sizeof ac);
    memset(&am, 0, sizeof am);
    float *outv = NULL, *regs = NULL, *lm = NULL;
    char s1[160], s2[160];
    if (xattn_st_open(model, &st) != XATTN_OK) return cli_lib_error(CMD, model);
    xattn_hallo_opts ho = {.heads = heads};
    if (xattn_hallo_load(st, "", &ho, &m) != XATTN_OK) {
        rc = cli_lib_error(CMD, model);
        goto done;
    }
    if (!allow &&
        (rc = cli_check_weights_finite(CMD, model, st, NAMES, sizeof NAMES / sizeof NAMES[0])))
        goto done;
    xattn_hallo_config c;
    xattn_hallo_get_config(m, &c);
    if ((rc = cli_load_float(CMD, x, 2, 3, rule, &ax))) goto done;
    if ((rc = cli_load_float(CMD, ctx, 2, 3, rule, &ac))) goto done;
    if ((rc = cli_load_float(CMD, rm, 3, 4, rule, &am))) goto done;
    if (ax.ndim != ac.ndim) {
        rc = cli_error(CMD, ctx, "has shape %s but %s has %s: both need a batch axis or neither",
                       cli_shape_str(&ac, s2, sizeof s2), x, cli_shape_str(&ax, s1, sizeof s1));
        goto done;
    }
    int b3 = ax.ndim == 3;
    int64_t B = b3 ? ax.shape[0] : 1, N = ax.shape[b3], C = ax.shape[b3 + 1];
    int64_t T = ac.shape[b3], Ca = ac.shape[b3 + 1];
    if (b3 && ac.shape[0] != B) {
        rc = cli_error(CMD, ctx, "has batch %lld but %s has %lld", (long long)ac.shape[0], x,
                       (long long)B);
        goto done;
    }
    if (C != c.dim) {
        rc = cli_error(CMD, x, "has %lld channels (shape %s) but norm2.weight in %s has %lld",
                       (long long)C, cli_shape_str(&ax, s1, sizeof s1), model, (long long)c.dim);
        goto done;
    }
    if (Ca != c.audio_dim) {
        rc = cli_error(CMD, ctx, "has %lld channels (shape %s) but attn2_0.to_k.weight in %s takes %lld",
                       (long long)Ca, cli_shape_str(&ac, s2, sizeof s2), model,
                       (long long)c.audio_dim);
        goto done;
    }
    int64_t h, w;
    if (hw_s) {
        h = (int64_t)hw[0];
        w = (int64_t)hw[1];
        if (h * w != N) {
            rc = cli_error(CMD, x, "has %lld tokens (shape %s) but --latent-hw %lld,%lld gives %lld",
                           (long long)N, cli_shape_str(&ax, s1, sizeof s1), (long long)h,
                           (long long)w, (long long)(h * w));
            goto done;
        }
    } else {
        h = (int64_t)llround(sqrt((double)N));
        while (h * h > N) h--;
        while ((h + 1) * (h + 1) <= N) h++;
        w = h;
        if (h * w != N) {
            rc = cli_error(CMD, x, "has %lld tokens (shape %s), not a square: pass --latent-hw H,W",
                           (long long)N, cli_shape_str(&ax, s1, sizeof s1));
            goto done;
        }
    }
    int m4 = am.ndim == 4;
    int64_t Bm = m4 ? am.shape[0] : 1, R = am.shape[m4], Hm = am.shape[m4 + 1], Wm = am.shape[m4 + 2];
    if (R != 3 || (Bm != 1 && Bm != B)) {
        rc = cli_error(CMD, rm, "has shape %s; expected (%lld or 1, 3, Hm, Wm): full, face, lip",
                       cli_shape_str(&am, s1, sizeof s1), (long long)B);
        goto done;
    }
    size_t need = (size_t)(B * N * C);
    outv = malloc(need * sizeof(float));
    lm = malloc((size_t)(Bm * 3 * N) * sizeof(float));
    if (want_regions) regs = malloc(3 * need * sizeof(float));
    if (!outv || !lm || (want_regions && !regs)) {
        rc = cli_error(CMD, NULL, "out of memory");
        goto done;
    }
    if (xattn_resize_masks(am.data, Bm * 3, Hm, Wm, h, w, lm) != XATTN_OK) {
        rc = cli_lib_error(CMD, rm);
        goto done;
    }
    float ms[3] = {(float)msd[0], (float)msd[1], (float)msd[2]};
    xattn_hallo_inputs in;
    memset(&in, 0, sizeof in);
    in.B = B;
    in.N = N;
    in.T = T;
    in.x = ax.data;
    in.audio = ac.data;
    in.masks = lm;
    in.mask_batch = Bm;
    in.motion_scale = ms;
    xattn_hallo_outputs ou = {.out = outv, .regions = regs};
    if (xattn_hallo_forward(NULL, m, &in, &ou) != XATTN_OK) {
        rc = cli_lib_error(CMD, model);
        goto done;
    }
    cli_output outs[2];
    int64_t oshape[3] = {B, N, C}, rshape[4] = {3, B, N, C};
    cli_output_set(&outs[0], "out", outv, NULL, b3 ? 3 : 2, b3 ? oshape : oshape + 1);
    if (want_regions)
        cli_output_set(&outs[1], "regions", regs, "full, face, lip; unscaled", 4, rshape);
    rc = cli_write_outputs(CMD, out_dir, outs, want_regions ? 2 : 1);
done:
    xattn_hallo_free(m);
    xattn_st_close(st);
    xattn_array_free(&ax);
    xattn_array_free(&ac);
    xattn_array_free(&am);
    free(outv);
    free(regs);
    free(lm);
    return rc;
}

const cli_ext_module cli_ext_hallo_audio = {
    "hallo-audio",
    "HALLO region-masked audio cross-attention block (M7): MODEL --x LATENT.npy --context "
    "AUDIO.npy --region-masks M.npy",
    detect, run_hallo, describe};
