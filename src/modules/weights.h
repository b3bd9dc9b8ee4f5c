/*
 * Shared by the modules: looking up state_dict tensors by name, checking them with messages
 * that name the tensor, and copying them (converted to fp32) into a module's weight block.
 */
#ifndef XATTN_MODULE_WEIGHTS_H
#define XATTN_MODULE_WEIGHTS_H

#include "base/base.h"
#include "io/io_internal.h" /* xa_io_printable, XA_IO_NAME_CAP */

#define XA_WREF_NAME_MAX 512

/* One named weight of a state_dict. */
typedef struct xa_wref {
    char name[XA_WREF_NAME_MAX]; /* full name (prefix included) */
    char shown[XA_IO_NAME_CAP];  /* for messages: control characters replaced, cut */
    int present;
    int glue;                    /* placed right after the previous ref, without padding */
    xattn_dtype dtype;
    int ndim;
    int64_t shape[XATTN_MAX_DIMS];
    float *dst;                  /* where its data goes inside the module's block */
} xa_wref;

/* Looks up prefix + mid + name into t: XATTN_OK whether present or not (an error only for a
 * name too long, reported as fn's). */
xattn_status xa_wref_find(const xattn_safetensors *st, const char *fn, const char *prefix,
                          const char *mid, const char *name, xa_wref *t);
/* 1 if prefix + name is in the file. */
int xa_wref_has(const xattn_safetensors *st, const char *prefix, const char *name);
/* XATTN_ERR_NOT_FOUND: "tensor 'x' is missing (why)". */
xattn_status xa_wref_missing(const xa_wref *t, const char *why);
/* XATTN_ERR_UNSUPPORTED unless t is stored as F32, F16, BF16 or F64. */
xattn_status xa_wref_check_float(const xa_wref *t);
/* "(2, 3)" / "(5,)" into buf; returns buf. */
const char *xa_dims_str(int ndim, const int64_t *shape, char *buf, size_t n);
const char *xa_wref_shape(const xa_wref *t, char *buf, size_t n);
int64_t xa_wref_numel(const xa_wref *t);
/* Copies the (already checked) tensor into t->dst, converted to fp32. */
xattn_status xa_wref_fetch(const xattn_safetensors *st, const xa_wref *t);
/* Layer stacks are counted while PREFIX STEM N.KEY exists (N = 0, 1, ...). A tensor PREFIX STEM
 * N.* with N >= L (the count found) would be silently ignored — a gap or a partial layer — so it
 * is refused: XATTN_ERR_NOT_FOUND naming it and the missing PREFIX STEM L.KEY. */
xattn_status xa_stray_layer(const xattn_safetensors *st, const char *prefix, const char *stem,
                            int64_t L, const char *key);
/* Parses a positive decimal integer (metadata values); 0 on failure. */
int64_t xa_parse_positive(const char *s);

#endif
