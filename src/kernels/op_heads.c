/* Attention over heads laid out in the rows of projections. */
#include "kernels/op_heads.h"
#include "kernels/ops.h"

xattn_status xa_op_attention_rows(int64_t B, int64_t H, int64_t I, int64_t J, int64_t dh,
                                  const float *q, int64_t q_ld, const float *k, const float *v,
                                  int64_t kv_ld, float *o, int64_t o_ld, float scale,
                                  const char *fn)
{
    const xa_attn p = {.B = B, .H = H, .I = I, .J = J, .dh = dh, .dv = dh,
                       .q = q, .q_sb = I * q_ld, .q_sh = dh, .q_si = q_ld,
                       .k = k, .k_sb = J * kv_ld, .k_sh = dh, .k_sj = kv_ld,
                       .v = v, .v_sb = J * kv_ld, .v_sh = dh, .v_sj = kv_ld,
                       .out = o, .o_sb = I * o_ld, .o_sh = dh, .o_si = o_ld,
                       .scale = scale, .fill = XATTN_FILL_NEG_INF, .fn = fn};
    return xa_op_attention(&p);
}
