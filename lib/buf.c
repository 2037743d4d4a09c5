/* buf.c: growable byte buffer. */
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <stdlib.h>

#include "alloc.h"

static void reserve(struct chat_buf *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    b->data = chat_xrealloc(b->data, cap);
    b->cap = cap;
}

void chat_buf_append(struct chat_buf *b, const void *p, size_t n)
{
    reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void chat_buf_puts(struct chat_buf *b, const char *s)
{
    chat_buf_append(b, s, strlen(s));
}

void chat_buf_printf(struct chat_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void chat_buf_consume(struct chat_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        if (b->data)
            b->data[0] = '\0';
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

void chat_buf_reset(struct chat_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

char *chat_buf_steal(struct chat_buf *b)
{
    reserve(b, 0);
    char *p = b->data;
    p[b->len] = '\0';
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

void chat_buf_cleanup(struct chat_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
