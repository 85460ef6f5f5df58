/* textbuf.h — a growing NUL-terminated text buffer for the JSON the exporters
 * write by hand (safetensors headers, config.json in Python's layout). */
#ifndef AR_TEXTBUF_H
#define AR_TEXTBUF_H
#include <stddef.h>

/* p is NUL-terminated after every append; oom sticks once an allocation
 * failed, and later appends do nothing (callers check it once at the end). */
typedef struct { char *p; size_t n, cap; int oom; } ar_textbuf;

/* Append n bytes of s. */
void ar_textbuf_add(ar_textbuf *b, const char *s, size_t n);

/* Append the C string s. */
void ar_textbuf_str(ar_textbuf *b, const char *s);

#endif
