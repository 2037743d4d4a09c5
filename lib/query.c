/* query.c: query string decoding. */
#include "query.h"

#include <stdlib.h>
#include <string.h>

#include "alloc.h"

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

char *chat_url_decode(const char *s, size_t n)
{
    char *out = chat_xmalloc(n + 1);
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            if (n - i < 3) { /* fewer than two hex digits left */
                free(out);
                return NULL;
            }
            int h = hexval(s[i + 1]), l = hexval(s[i + 2]);
            if (h < 0 || l < 0) {
                free(out);
                return NULL;
            }
            c = (char)(h * 16 + l);
            i += 2;
        }
        if (c == '\0') {
            free(out);
            return NULL;
        }
        out[j++] = c;
    }
    out[j] = '\0';
    return out;
}

size_t chat_url_unescape(char *s)
{
    char *w = s;
    for (const char *r = s; *r; r++) {
        int hi, lo;
        if (r[0] == '%' && (hi = hexval(r[1])) >= 0 && (lo = hexval(r[2])) >= 0 && (hi | lo) != 0) {
            *w++ = (char)(hi * 16 + lo);
            r += 2;
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
    return (size_t)(w - s);
}

void chat_query_parse(struct chat_query *q, const char *qs)
{
    memset(q, 0, sizeof(*q));
    if (!qs)
        return;
    const char *p = qs;
    while (*p) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        size_t klen = eq ? (size_t)(eq - p) : len;
        if (klen > 0) {
            char *k = chat_url_decode(p, klen);
            char *v = eq ? chat_url_decode(eq + 1, len - klen - 1) : chat_xstrdup("");
            if (k && v) {
                q->keys = chat_xrealloc(q->keys, (q->n + 1) * sizeof(*q->keys));
                q->vals = chat_xrealloc(q->vals, (q->n + 1) * sizeof(*q->vals));
                q->keys[q->n] = k;
                q->vals[q->n] = v;
                q->n++;
            } else {
                free(k);
                free(v);
            }
        }
        p += len;
        if (*p == '&')
            p++;
    }
}

const char *chat_query_get(const struct chat_query *q, const char *name)
{
    for (size_t i = 0; i < q->n; i++)
        if (strcmp(q->keys[i], name) == 0)
            return q->vals[i];
    return NULL;
}

void chat_query_cleanup(struct chat_query *q)
{
    for (size_t i = 0; i < q->n; i++) {
        free(q->keys[i]);
        free(q->vals[i]);
    }
    free(q->keys);
    free(q->vals);
    memset(q, 0, sizeof(*q));
}
