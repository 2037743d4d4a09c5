/* query.h: decoded query strings (application/x-www-form-urlencoded), for
 * doors whose transport hands over the raw QUERY_STRING. */
#ifndef CHAT_QUERY_H
#define CHAT_QUERY_H

#include <stddef.h>

struct chat_query {
    size_t n;
    char **keys; /* decoded, owned */
    char **vals;
};

/* Parses qs (may be NULL or empty). A pair that does not decode (a bad %XX
 * escape, or a NUL) is dropped. */
void chat_query_parse(struct chat_query *q, const char *qs);
/* The first value of name, or NULL. */
const char *chat_query_get(const struct chat_query *q, const char *name);
void chat_query_cleanup(struct chat_query *q);

/* Decodes %XX and '+' in s[0..n) into a new string; NULL when malformed or
 * when it decodes to a NUL. The caller frees the result. */
char *chat_url_decode(const char *s, size_t n);

/* Decodes %HH in place and returns the new length; a %HH that is not two
 * hex digits, and %00 (which would cut the string), are left as they are. */
size_t chat_url_unescape(char *s);

#endif
