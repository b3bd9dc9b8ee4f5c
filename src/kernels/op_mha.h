/*
 * Ops of the multi-head attention modules (src/modules/mha.c): attention masks from several
 * sources merged into the keep mask and additive bias the fused attention takes, and the extra
 * key/value rows nn.MultiheadAttention appends (add_bias_kv, add_zero_attn).
 */
#ifndef XATTN_OP_MHA_H
#define XATTN_OP_MHA_H

#include "kernels/kernels.h"

#include <stdint.h>

/* One mask source viewed as (B|1, H|1, I|1, J): element (b, h, i, j) at b*sb + h*sh + i*si + j
 * (a zero stride broadcasts that axis). Either a bool mask (u8, nonzero = True) or an additive
 * float mask (f32, where -inf masks the position out). */
typedef struct xa_mask_src {
    const uint8_t *u8;
    const float *f32;
    int64_t sb, sh, si;
    int true_keeps; /* bool polarity: 1 = True keeps (SDPA), 0 = True masks out (torch MHA) */
} xa_mask_src;

/* keep (kB, kH, kI, Jx), row-major: 1 where no source masks (b, h, i, j) out, else 0. A bool
 * source masks by its polarity, a float source where it holds -inf (so that a row whose every
 * logit is -inf counts as fully masked). Columns j >= J (keys appended after the sources' J)
 * are kept. Indices past a source's broadcast extent use its zero strides. */
void xa_op_mask_keep(const xa_mask_src *src, int n_src, int64_t kB, int64_t kH, int64_t kI,
                     int64_t J, int64_t Jx, uint8_t *keep);
/* bias (bB, bH, bI, Jx), row-major: the sum of the float sources; columns j >= J are 0 (the
 * appended keys get no bias, as torch pads the masks with zeros). Bool sources are skipped. */
void xa_op_mask_bias(const xa_mask_src *src, int n_src, int64_t bB, int64_t bH, int64_t bI,
                     int64_t J, int64_t Jx, float *bias);
/* 1 if any of the n values of x is -inf. */
int xa_op_has_neg_inf(const float *x, int64_t n);
/* Points the fused attention a at heads read in place from projections laid out (B, N, H*dh)
 * ((h d) channel split, no transposes): q (B, I, q_ld), k and v (B, J, kv_ld), out (B, I, o_ld),
 * head h at channel h*dh of each row; sets B, H, I, J and dh = dv as well. */
void xa_op_attn_heads(xa_attn *a, int64_t B, int64_t H, int64_t I, int64_t J, int64_t dh,
                      const float *q, int64_t q_ld, const float *k, const float *v, int64_t kv_ld,
                      float *out, int64_t o_ld);
/* Rows J .. Jx-1 of every batch item of kv (B, Jx, n): first `row` (n values) if not NULL,
 * then zero rows up to Jx. */
void xa_op_append_rows(float *kv, int64_t B, int64_t J, int64_t Jx, int64_t n, const float *row);

#endif
