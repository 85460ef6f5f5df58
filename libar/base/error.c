#include "error.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char ar_errbuf[1024];

int ar_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ar_errbuf, sizeof ar_errbuf, fmt, ap);
    va_end(ap);
    return -1;
}

int ar_verror_at(const char *where, size_t msg_cap, const char *fmt, va_list ap)
{
    char msg[sizeof ar_errbuf];
    vsnprintf(msg, msg_cap < sizeof msg ? msg_cap : sizeof msg, fmt, ap);
    return ar_error("%s: %s", where, msg);
}

const char *ar_last_error(void) { return ar_errbuf; }

int ar_error_prefix(const char *prefix)
{
    /* shift the message right and put the prefix in front (truncating at the end) */
    size_t pl = strlen(prefix) + 2, cap = sizeof ar_errbuf;
    if (pl >= cap) return -1;
    memmove(ar_errbuf + pl, ar_errbuf, cap - pl);
    ar_errbuf[cap - 1] = 0;
    memcpy(ar_errbuf, prefix, pl - 2);
    ar_errbuf[pl - 2] = ':';
    ar_errbuf[pl - 1] = ' ';
    return -1;
}
