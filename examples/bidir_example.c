/* Loads a BidirectionalCrossAttention (or ...Transformer) state_dict saved with
 * safetensors.torch.save_file and runs it on generated video/audio-like inputs with padding.
 *   bidir_example MODEL.safetensors */
#include <xattn.h>

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.safetensors\n", argv[0]);
        return 2;
    }
    xattn_safetensors *st = NULL;
    xattn_bidir *m = NULL;
    if (xattn_st_open(argv[1], &st) != XATTN_OK ||
        xattn_bidir_load(st, "", NULL /* heads: talking heads, metadata or 8 */, &m) != XATTN_OK) {
        fprintf(stderr, "%s\n", xattn_last_error());
        xattn_st_close(st);
        return 1;
    }
    xattn_bidir_config cfg;
    xattn_bidir_get_config(m, &cfg);

    const int64_t B = 2, I = 6, J = 10, H = cfg.heads;
    float *x = malloc(sizeof(float) * B * I * cfg.dim);
    float *ctx = malloc(sizeof(float) * B * J * cfg.context_dim);
    float *out = malloc(sizeof(float) * B * I * cfg.dim);
    float *cout = malloc(sizeof(float) * B * J * cfg.context_dim);
    float *attn = cfg.is_transformer ? NULL : malloc(sizeof(float) * B * H * I * J);
    for (int64_t i = 0; i < B * I * cfg.dim; i++) x[i] = (float)((i * 37) % 11) / 11 - 0.5f;
    for (int64_t i = 0; i < B * J * cfg.context_dim; i++)
        ctx[i] = (float)((i * 53) % 13) / 13 - 0.5f;
    uint8_t mask[2 * 6], cmask[2 * 10]; /* True = keep (as the package) */
    for (int i = 0; i < 2 * 6; i++) mask[i] = 1;
    for (int j = 0; j < 2 * 10; j++)
        cmask[j] = !(j >= 10 + 7); /* batch 1: last 3 context frames padded */

    xattn_bidir_inputs in = {
        .B = B, .I = I, .J = J, .x = x, .context = ctx, .mask = mask, .context_mask = cmask};
    int rc = 0;
    xattn_bidir_outputs res = {.out = out, .context_out = cout, .attn = attn};
    if (xattn_bidir_forward(NULL, m, &in, &res) != XATTN_OK) {
        fprintf(stderr, "%s\n", xattn_last_error());
        rc = 1;
    } else {
        printf("%s: dim %lld, context_dim %lld, heads %lld -> out (%lld, %lld, %lld), "
               "context_out (%lld, %lld, %lld)\n",
               cfg.is_transformer ? "transformer" : "attention", (long long)cfg.dim,
               (long long)cfg.context_dim, (long long)H, (long long)B, (long long)I,
               (long long)cfg.dim, (long long)B, (long long)J, (long long)cfg.context_dim);
        if (attn && !cfg.talking_heads) {
            const float *row = attn + ((1 * H + 0) * I + 0) * J; /* batch 1, head 0, query 0 */
            float s = 0;
            for (int64_t j = 0; j < J; j++) s += row[j];
            printf(
                "attn of batch 1, head 0, query 0 sums to %.6f; padded frames get %.1f %.1f %.1f\n",
                s, row[7], row[8], row[9]);
        }
    }
    free(x);
    free(ctx);
    free(out);
    free(cout);
    free(attn);
    xattn_bidir_free(m);
    xattn_st_close(st);
    return rc;
}
