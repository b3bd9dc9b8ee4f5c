/*
 * Internals shared by the decoder (decoder.c), the whole BERT model (lm.c) and generation
 * (generate.c).
 */
#ifndef XATTN_MODULES_LM_H
#define XATTN_MODULES_LM_H

#include "core/registry.h"

extern const xa_kind xa_kind_bert_decoder;

/* Rows (batch * beams) and beams per memory item of a decoder state, and its model. */
int64_t xa_decoder_state_rows(const xattn_decoder_state *s);
int64_t xa_decoder_state_beams(const xattn_decoder_state *s);
const xattn_decoder *xa_decoder_state_model(const xattn_decoder_state *s);

/* Every id in [0, vocab_size), else an error naming `what`. */
xattn_status xa_lm_check_ids(const xattn_lm *m, const int64_t *ids, int64_t n, const char *what);
/* n tokens ids (rows, n) of every row of s through the embeddings and the layers: x (rows n,
 * hidden) scratch, hidden (rows n, hidden) out. pos (rows, n): the tokens' position ids, or
 * NULL (the state's position on); keep (rows, n): the tokens' attention mask, or NULL. */
xattn_status xa_lm_step(xattn_ctx *ctx, const xattn_lm *m, xattn_decoder_state *s, int64_t n,
                        const int64_t *ids, const int64_t *pos, const uint8_t *keep, float *x,
                        float *hidden);
/* logits (rows, vocab) of hidden (rows, hidden); t (rows, hidden) scratch. */
xattn_status xa_lm_head(const xattn_lm *m, const float *hidden, int64_t rows, float *t,
                        float *logits);

#endif
