/*
 * Multi-head attention for modules built on it (HALLO's region attention, ...): the kinds, and
 * the forward on the calling thread's current context (a module's own forward already entered
 * its caller's context).
 */
#ifndef XATTN_MODULES_MHA_H
#define XATTN_MODULES_MHA_H

#include "core/registry.h"

extern const xa_kind xa_kind_mha;       /* torch.nn.MultiheadAttention */
extern const xa_kind xa_kind_attention; /* diffusers Attention         */

/* xattn_mha_forward without entering a context. */
xattn_status xa_mha_run(const xattn_mha *m, const xattn_mha_inputs *in,
                        const xattn_mha_outputs *out);

#endif
