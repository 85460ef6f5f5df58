/* error.h — how libar reports failure.
 *
 * Library functions never print and never exit. A failing call returns a
 * non-zero int (or NULL) and leaves a one-line message, which the command
 * prints as "tool: message" before exiting non-zero. Messages name the file
 * and the problem, e.g. "model.safetensors: header length 1e12 exceeds file size".
 * The message buffer is per thread. */
#ifndef AR_ERROR_H
#define AR_ERROR_H
#include <stddef.h>
#include <stdarg.h>

/* Set the current thread's error message (printf-style). Always returns -1 so
 * callers can write `return ar_error("...")`. */
int ar_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Set the message to "where: " and fmt formatted with ap, the formatted part
 * cut to msg_cap - 1 bytes (at most 1023): for a reader's own printf-style
 * error function that puts its file or stream name in front. Returns -1. */
int ar_verror_at(const char *where, size_t msg_cap, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/* The last message set on this thread ("" if none). */
const char *ar_last_error(void);

/* Prefix the current message with "prefix: " (used to add a file name on the way
 * up). Returns -1. */
int ar_error_prefix(const char *prefix);

#endif
