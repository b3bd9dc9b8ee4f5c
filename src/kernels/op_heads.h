/* Attention over heads laid out in the rows of projections (used by src/modules/multiview.c and
 * src/modules/hallo.c; a candidate for the op layer, ops.h). */
#ifndef XATTN_OP_HEADS_H
#define XATTN_OP_HEADS_H

#include "kernels/kernels.h"

/* o = softmax(scale q k^T) v per head, no masks, with every operand a row-major (B, rows, ld)
 * projection whose head h occupies channels [h * dh, (h + 1) * dh) of each row (read in place):
 * q (B, I, q_ld), k and v (B, J, kv_ld), o (B, I, o_ld). fn names the caller in messages. */
xattn_status xa_op_attention_rows(int64_t B, int64_t H, int64_t I, int64_t J, int64_t dh,
                                  const float *q, int64_t q_ld, const float *k, const float *v,
                                  int64_t kv_ld, float *o, int64_t o_ld, float scale,
                                  const char *fn);

#endif
