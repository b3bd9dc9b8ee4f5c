/* Ops of the multiscale multiview module. */
#include "kernels/op_multiview.h"

#include <string.h>

void xa_op_pair_weight(const float *W, int64_t rows, int64_t cols, float *W2)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *w = W + r * cols;
        float *d = W2 + r * 2 * cols;
        for (int64_t k = 0; k < cols; k++) d[k] = 0.5f * w[k];
        memcpy(d + cols, d, (size_t)cols * sizeof(float));
    }
}

void xa_op_pair_weight_backward(const float *dW2, int64_t rows, int64_t cols, float *dW)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *d = dW2 + r * 2 * cols;
        for (int64_t k = 0; k < cols; k++) dW[r * cols + k] = 0.5f * (d[k] + d[cols + k]);
    }
}
