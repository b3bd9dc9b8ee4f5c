/*
 * Workspace cache. Scratch of a few MB allocated per call costs page faults (the allocator hands
 * large blocks back to the system on free), a large share of small GEMMs and attentions. A few
 * freed workspaces are kept in lock-free slots and reused; concurrent callers that find no cached
 * block big enough allocate their own. Blocks over XA_WS_MAX_CACHED are not kept.
 */
#include "base.h"

#include <stdatomic.h>
#include <stdint.h>

#define XA_WS_SLOTS 8
#define XA_WS_MAX_CACHED ((size_t)64 << 20)

struct xa_ws {
    size_t bytes; /* usable bytes after the 64-byte header */
};

static _Atomic(xa_ws *) ws_slots[XA_WS_SLOTS];

void *xa_ws_data(xa_ws *w) { return (char *)w + 64; }

xa_ws *xa_ws_get(size_t bytes)
{
    for (int i = 0; i < XA_WS_SLOTS; i++) {
        xa_ws *b = atomic_exchange(&ws_slots[i], NULL);
        if (!b) continue;
        if (b->bytes >= bytes) return b;
        xa_free(b); /* too small for this and probably later calls */
    }
    if (bytes > SIZE_MAX - 64) return NULL;
    xa_ws *b = xa_alloc(64 + bytes);
    if (b) b->bytes = bytes;
    return b;
}

void xa_ws_put(xa_ws *w)
{
    if (!w) return;
    if (w->bytes <= XA_WS_MAX_CACHED)
        for (int i = 0; i < XA_WS_SLOTS; i++) {
            xa_ws *expect = NULL;
            if (atomic_compare_exchange_strong(&ws_slots[i], &expect, w)) return;
        }
    xa_free(w);
}
