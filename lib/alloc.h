/* alloc.h: allocation that never returns NULL.
 *
 * Out of memory is not a condition this server can answer usefully, so every
 * allocation goes through these wrappers, which log and abort on failure.
 * Call sites do not check. */
#ifndef CHAT_ALLOC_H
#define CHAT_ALLOC_H

#include <stddef.h>

void *chat_xmalloc(size_t n);
void *chat_xcalloc(size_t nmemb, size_t size);
void *chat_xrealloc(void *p, size_t n);
char *chat_xstrdup(const char *s);
char *chat_xstrndup(const char *s, size_t n);
/* Returns a newly allocated formatted string; the caller frees it. */
char *chat_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
