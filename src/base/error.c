#include "base.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char xa_msg[1024];

xattn_status xa_error(xattn_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(xa_msg, sizeof xa_msg, fmt, ap);
    va_end(ap);
    /* one line, whatever a file name or tensor name holds */
    for (char *c = xa_msg; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
    return s;
}

void xa_clear_error(void) { xa_msg[0] = '\0'; }

const char *xattn_last_error(void) { return xa_msg; }

const char *xattn_status_string(xattn_status s)
{
    switch (s) {
    case XATTN_OK: return "ok";
    case XATTN_ERR_ARG: return "invalid argument";
    case XATTN_ERR_NOMEM: return "out of memory";
    case XATTN_ERR_IO: return "i/o error";
    case XATTN_ERR_FORMAT: return "malformed file";
    case XATTN_ERR_SHAPE: return "shape mismatch";
    case XATTN_ERR_UNSUPPORTED: return "unsupported";
    case XATTN_ERR_NOT_FOUND: return "not found";
    }
    return "unknown status";
}

const char *xattn_version(void) { return XATTN_VERSION_STRING; }
