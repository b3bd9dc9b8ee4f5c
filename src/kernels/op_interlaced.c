/* Ops of the interlaced two-stream decoder (op_interlaced.h). */
#include "kernels/op_interlaced.h"
#include "base/base.h"

xattn_status xa_op_head_logits(const float *q, int64_t ldq, const float *k, int64_t ldk, int64_t B,
                               int64_t H, int64_t I, int64_t J, int64_t dh, float scale,
                               float *logits)
{
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            const float *qb = q + b * I * ldq + h * dh, *kb = k + b * J * ldk + h * dh;
            float *lb = logits + (b * H + h) * I * J;
            xattn_status s =
                xa_compute_bf16()
                    ? (xa_sgemm_bf16(NULL, 0, 1, I, J, dh, scale, qb, ldq, kb, ldk, 0.0f, lb, J)
                           ? XATTN_ERR_NOMEM
                           : XATTN_OK)
                    : xattn_sgemm(0, 1, I, J, dh, scale, qb, ldq, kb, ldk, 0.0f, lb, J);
            if (s) return s;
        }
    return XATTN_OK;
}
