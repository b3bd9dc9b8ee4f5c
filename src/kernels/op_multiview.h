/* Ops of the multiscale multiview module (src/modules/multiview.c). */
#ifndef XATTN_OP_MULTIVIEW_H
#define XATTN_OP_MULTIVIEW_H

#include <stdint.h>

/* W2 (rows, 2 * cols) = 0.5 * [W W] for W (rows, cols): AvgPool1d(2, stride 2) over tokens
 * followed by nn.Linear with weight W is then ONE linear map over token pairs, each pair
 * (2t, 2t + 1) of a (N, cols) sequence read in place as a row of width 2 * cols. */
void xa_op_pair_weight(const float *W, int64_t rows, int64_t cols, float *W2);
/* Its backward: dW (rows, cols) = 0.5 * (left + right half) of dW2 (rows, 2 * cols), the
 * gradient of W2 (overwritten). */
void xa_op_pair_weight_backward(const float *dW2, int64_t rows, int64_t cols, float *dW);

#endif
