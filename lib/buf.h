/* buf.h: a growable byte buffer. A zeroed struct chat_buf is an empty buffer. */
#ifndef CHAT_BUF_H
#define CHAT_BUF_H

#include <stddef.h>

struct chat_buf {
    char *data; /* NUL-terminated whenever len > 0 or after any append */
    size_t len;
    size_t cap;
};

void chat_buf_append(struct chat_buf *b, const void *p, size_t n);
void chat_buf_puts(struct chat_buf *b, const char *s);
void chat_buf_printf(struct chat_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes (n <= len). */
void chat_buf_consume(struct chat_buf *b, size_t n);
void chat_buf_reset(struct chat_buf *b);
/* Returns the data, leaving b empty; the caller frees it (never NULL). */
char *chat_buf_steal(struct chat_buf *b);
void chat_buf_cleanup(struct chat_buf *b);

#endif
