/*
 * Ops of the interlaced two-stream decoder: the pre-softmax attention logits of every head,
 * which the reference returns from its cross-attention.
 */
#ifndef XATTN_OP_INTERLACED_H
#define XATTN_OP_INTERLACED_H

#include "kernels/kernels.h"

/* logits[b, h, i, j] = scale * q[b, i, h*dh : (h+1)*dh] . k[b, j, h*dh : (h+1)*dh]
 * q (B, I, H*dh) with row stride ldq, k (B, J, H*dh) with row stride ldk (batch strides I*ldq
 * and J*ldk), logits (B, H, I, J). */
xattn_status xa_op_head_logits(const float *q, int64_t ldq, const float *k, int64_t ldk, int64_t B,
                               int64_t H, int64_t I, int64_t J, int64_t dh, float scale,
                               float *logits);

#endif
