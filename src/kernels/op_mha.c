/* Ops of the multi-head attention modules (op_mha.h). */
#include "kernels/op_mha.h"
#include "kernels/ops.h"
#include "base/base.h"

#include <math.h>
#include <string.h>

int xa_op_has_neg_inf(const float *x, int64_t n)
{
    for (int64_t t = 0; t < n; t++)
        if (x[t] == -INFINITY) return 1;
    return 0;
}

/* Clears row[j] (j < J) where source s masks position (b, h, i, j) out. */
static void keep_row(const xa_mask_src *s, int64_t b, int64_t h, int64_t i, int64_t J, uint8_t *row)
{
    const int64_t base = b * s->sb + h * s->sh + i * s->si;
    if (s->f32) {
        const float *src = s->f32 + base;
        for (int64_t j = 0; j < J; j++)
            if (src[j] == -INFINITY) row[j] = 0;
        return;
    }
    const uint8_t *src = s->u8 + base;
    if (s->true_keeps) {
        for (int64_t j = 0; j < J; j++)
            if (!src[j]) row[j] = 0;
    } else {
        for (int64_t j = 0; j < J; j++)
            if (src[j]) row[j] = 0;
    }
}

void xa_op_mask_keep(const xa_mask_src *src, int n_src, int64_t kB, int64_t kH, int64_t kI,
                     int64_t J, int64_t Jx, uint8_t *keep)
{
    for (int64_t b = 0; b < kB; b++)
        for (int64_t h = 0; h < kH; h++)
            for (int64_t i = 0; i < kI; i++) {
                uint8_t *row = keep + ((b * kH + h) * kI + i) * Jx;
                memset(row, 1, (size_t)Jx);
                for (int q = 0; q < n_src; q++) keep_row(&src[q], b, h, i, J, row);
            }
}

void xa_op_mask_bias(const xa_mask_src *src, int n_src, int64_t bB, int64_t bH, int64_t bI,
                     int64_t J, int64_t Jx, float *bias)
{
    const xa_kernels *kt = xa_kern();
    for (int64_t b = 0; b < bB; b++)
        for (int64_t h = 0; h < bH; h++)
            for (int64_t i = 0; i < bI; i++) {
                float *row = bias + ((b * bH + h) * bI + i) * Jx;
                memset(row, 0, sizeof(float) * (size_t)Jx);
                for (int q = 0; q < n_src; q++) {
                    const xa_mask_src *s = &src[q];
                    if (s->f32) kt->axpy(1.0f, s->f32 + b * s->sb + h * s->sh + i * s->si, row, J);
                }
            }
}

void xa_op_attn_heads(xa_attn *a, int64_t B, int64_t H, int64_t I, int64_t J, int64_t dh,
                      const float *q, int64_t q_ld, const float *k, const float *v, int64_t kv_ld,
                      float *out, int64_t o_ld)
{
    xa_attn_heads(a, B, H, I, J, dh, dh, q, q_ld, k, kv_ld, v, kv_ld, out, o_ld);
}

void xa_op_append_rows(float *kv, int64_t B, int64_t J, int64_t Jx, int64_t n, const float *row)
{
    for (int64_t b = 0; b < B; b++) {
        float *dst = kv + (b * Jx + J) * n;
        int64_t r = J;
        if (row && r < Jx) {
            memcpy(dst, row, sizeof(float) * (size_t)n);
            dst += n;
            r++;
        }
        if (r < Jx) memset(dst, 0, sizeof(float) * (size_t)((Jx - r) * n));
    }
}
