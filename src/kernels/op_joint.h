/*
 * Ops of the joint (stacked) attention: two sequences stacked along the sequence axis and split
 * back, and the per-key keep vector of the stacked sequence from the two padding masks.
 */
#ifndef XATTN_OP_JOINT_H
#define XATTN_OP_JOINT_H

#include "kernels/kernels.h"

/* y (B, Na + Nb, d) = [a (B, Na, d); b (B, Nb, d)] along the sequence axis; a (b) is not read
 * when Na (Nb) is 0. */
void xa_op_concat_seq(const float *a, int64_t Na, const float *b, int64_t Nb, int64_t B, int64_t d,
                      float *y);
/* The inverse: a (B, Na, d), b (B, Nb, d) from y (B, Na + Nb, d); a (b) is not written when Na
 * (Nb) is 0. */
void xa_op_split_seq(const float *y, int64_t B, int64_t Na, int64_t Nb, int64_t d, float *a,
                     float *b);
/* keep (B, Na + Nb) = 1 where the stacked position is a key: pa (B, Na) and pb (B, Nb) are
 * padding masks (nonzero = ignore), either may be NULL (nothing ignored). */
void xa_op_keep_concat(const uint8_t *pa, int64_t Na, const uint8_t *pb, int64_t Nb, int64_t B,
                       uint8_t *keep);

#endif
