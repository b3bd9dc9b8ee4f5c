/* Ops of the joint (stacked) attention (op_joint.h): sequence stacking, splitting, key masks. */
#include "kernels/op_joint.h"

#include <string.h>

void xa_op_concat_seq(const float *a, int64_t Na, const float *b, int64_t Nb, int64_t B, int64_t d,
                      float *y)
{
    const int64_t L = Na + Nb;
    for (int64_t i = 0; i < B; i++) {
        if (Na) memcpy(y + i * L * d, a + i * Na * d, (size_t)(Na * d) * sizeof(float));
        if (Nb) memcpy(y + (i * L + Na) * d, b + i * Nb * d, (size_t)(Nb * d) * sizeof(float));
    }
}

void xa_op_split_seq(const float *y, int64_t B, int64_t Na, int64_t Nb, int64_t d, float *a,
                     float *b)
{
    const int64_t L = Na + Nb;
    for (int64_t i = 0; i < B; i++) {
        if (Na) memcpy(a + i * Na * d, y + i * L * d, (size_t)(Na * d) * sizeof(float));
        if (Nb) memcpy(b + i * Nb * d, y + (i * L + Na) * d, (size_t)(Nb * d) * sizeof(float));
    }
}

void xa_op_keep_concat(const uint8_t *pa, int64_t Na, const uint8_t *pb, int64_t Nb, int64_t B,
                       uint8_t *keep)
{
    for (int64_t i = 0; i < B; i++) {
        uint8_t *k = keep + i * (Na + Nb);
        for (int64_t j = 0; j < Na; j++) k[j] = pa ? !pa[i * Na + j] : 1;
        for (int64_t j = 0; j < Nb; j++) k[Na + j] = pb ? !pb[i * Nb + j] : 1;
    }
}
