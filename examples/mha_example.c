/* Loads an nn.MultiheadAttention (or diffusers Attention) state_dict saved with
 * safetensors.torch.save_file and runs it on generated inputs.
 *   mha_example MODEL.safetensors [HEADS]          (heads default: the file's metadata) */
#include <xattn.h>

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.safetensors [HEADS]\n", argv[0]);
        return 2;
    }
    xattn_safetensors *st = NULL;
    xattn_mha *mha = NULL;
    if (xattn_st_open(argv[1], &st) != XATTN_OK ||
        xattn_mha_load(st, "", &(xattn_mha_opts){.heads = argc > 2 ? atoi(argv[2]) : 0}, &mha) !=
            XATTN_OK) {
        fprintf(stderr, "%s\n", xattn_last_error());
        xattn_st_close(st);
        return 1;
    }
    xattn_mha_config cfg;
    xattn_mha_get_config(mha, &cfg);

    const int64_t B = 2, I = 5, J = 9;
    float *x = malloc(sizeof(float) * B * I * cfg.embed_dim);
    float *ctx = malloc(sizeof(float) * B * J * cfg.kdim);
    float *val = malloc(sizeof(float) * B * J * cfg.vdim);
    float *out = malloc(sizeof(float) * B * I * cfg.out_dim);
    float *attn = malloc(sizeof(float) * B * I * J);
    for (int64_t i = 0; i < B * I * cfg.embed_dim; i++) x[i] = (float)((i * 37) % 11) / 11 - 0.5f;
    for (int64_t i = 0; i < B * J * cfg.kdim; i++) ctx[i] = (float)((i * 53) % 13) / 13 - 0.5f;
    for (int64_t i = 0; i < B * J * cfg.vdim; i++) val[i] = (float)((i * 29) % 7) / 7 - 0.5f;
    uint8_t pad[2 * 9] = {0};
    pad[9 + 8] = pad[9 + 7] =
        1; /* torch polarity: True = ignore; batch 1 ignores its last 2 keys */

    xattn_mha_inputs in = {
        .B = B, .I = I, .J = J, .query = x, .key = ctx, .value = val, .key_padding_mask = pad};
    int rc = 0;
    xattn_mha_outputs o = {.out = out, .attn = attn}; /* weights averaged over heads */
    if (xattn_mha_forward(NULL, mha, &in, &o) != XATTN_OK) {
        fprintf(stderr, "%s\n", xattn_last_error());
        rc = 1;
    } else {
        printf("heads %lld, embed %lld -> out (%lld, %lld, %lld); out[0,0,0] = %.6f\n",
               (long long)cfg.heads, (long long)cfg.embed_dim, (long long)B, (long long)I,
               (long long)cfg.out_dim, out[0]);
        float s = 0;
        for (int64_t j = 0; j < J; j++) s += attn[(1 * I + 0) * J + j];
        printf("attn weights of batch 1, query 0 sum to %.6f; ignored keys get %.1f and %.1f\n", s,
               attn[(1 * I) * J + 7], attn[(1 * I) * J + 8]);
    }
    free(x);
    free(ctx);
    free(val);
    free(out);
    free(attn);
    xattn_mha_free(mha);
    xattn_st_close(st);
    return rc;
}
