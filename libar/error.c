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

const char *ar_last_error(void) { return ar_errbuf; }

int ar_error_prefix(const char *prefix)
{
    char tmp[sizeof ar_errbuf];
    snprintf(tmp, sizeof tmp, "%s: %s", prefix, ar_errbuf);
    memcpy(ar_errbuf, tmp, sizeof ar_errbuf);
    return -1;
}
