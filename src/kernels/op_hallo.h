/* Ops of HALLO's audio block (src/modules/hallo.c): the mask pyramid and region masking. */
#ifndef XATTN_OP_HALLO_H
#define XATTN_OP_HALLO_H

#include "kernels/kernels.h"

#include <stdint.h>

/* W (out_n, in_n): row i holds the weights that torch's separable antialiased bilinear filter
 * (aten upsample_bilinear2d_aa, align_corners=False, no scale_factor) gives output i: a triangle
 * filter widened by the scale factor when shrinking, plain bilinear when enlarging. */
void xa_op_resample_matrix(int64_t in_n, int64_t out_n, float *W);

/* y[b, n, :] *= alpha * mask[b * mask_sb + n] for y (B, N, C): a soft region mask weighting
 * every channel of a token (mask_sb = 0: one mask row shared by the batch). */
void xa_op_mask_rows(float *y, int64_t B, int64_t N, int64_t C, const float *mask, int64_t mask_sb,
                     float alpha);

/* The backward of xa_op_mask_rows (y = alpha * mask * x per token) from its input x and the
 * gradient dy of y: dmask (laid out as mask; NULL: not wanted) = alpha * sum over channels of
 * dy * x, overwritten, summed over the batch in order when mask_sb = 0; then dy becomes the
 * gradient of x, in place (dy *= alpha * mask). */
void xa_op_mask_rows_backward(const float *x, float *dy, int64_t B, int64_t N, int64_t C,
                              const float *mask, int64_t mask_sb, float alpha, float *dmask);

/* The backward of xattn_resize_masks (out = Wy M Wx^T per map): dx (n, Hm, Wm) = Wy^T dy Wx for
 * dy (n, h * w), overwritten. */
xattn_status xa_op_resize_masks_backward(const float *dy, int64_t n, int64_t Hm, int64_t Wm,
                                         int64_t h, int64_t w, float *dx);

#endif
