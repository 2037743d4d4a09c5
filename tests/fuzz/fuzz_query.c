/* fuzz_query.c: query strings through chat_query_parse, chat_query_get, chat_url_decode and
 * chat_url_unescape.
 *
 * The input up to its first NUL is a raw QUERY_STRING as chat.fcgi hands it over; the whole
 * input (NULs included) also goes to chat_url_decode. Checked, besides the sanitizers, against
 * a reference written from query.h (pairs split at '&', key and value at the first '=', a pair
 * with an empty key or one that does not decode is dropped; '+' is a space, %XX needs two hex
 * digits, a NUL in or decoded from the text makes it malformed):
 *   - chat_query_parse gives the same pairs in the same order;
 *   - chat_query_get gives the first value of each key, and NULL for keys not there (the
 *     arguments the API reads among them);
 *   - chat_url_decode agrees with the reference decoder, and decodes a percent-encoding of
 *     the input back to the input;
 *   - chat_url_unescape, on the input up to its first NUL, agrees with its own reference
 *     (query.h: in place, a %HH that is not two hex digits and %00 are left as they are). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "query.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Reference                                                                */
/* ------------------------------------------------------------------------ */

static int ref_hex(unsigned char c)
{
    static const char digits[] = "0123456789abcdef";
    unsigned char lower = (c >= 'A' && c <= 'F') ? (unsigned char)(c - 'A' + 'a') : c;
    const char *p = lower ? strchr(digits, lower) : NULL;
    return p ? (int)(p - digits) : -1;
}

/* Decodes s[0..n) into out (a chat_buf); false when malformed. */
static bool ref_decode(const char *s, size_t n, struct chat_buf *out)
{
    chat_buf_reset(out);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            int h = i + 1 < n ? ref_hex((unsigned char)s[i + 1]) : -1;
            int l = i + 2 < n ? ref_hex((unsigned char)s[i + 2]) : -1;
            if (h < 0 || l < 0)
                return false;
            c = (unsigned char)(h << 4 | l);
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (c == '\0')
            return false;
        chat_buf_append(out, &c, 1);
    }
    chat_buf_append(out, "", 0); /* a NUL-terminated, non-NULL data even when empty */
    return true;
}

struct ref_pair {
    char *key, *val;
};

/* Splits qs as query.h says; returns the pairs (count in *n), which the caller frees. */
static struct ref_pair *ref_parse(const char *qs, size_t *n)
{
    struct ref_pair *v = NULL;
    *n = 0;
    size_t len = strlen(qs);
    size_t start = 0;
    while (start < len) {
        size_t end = start;
        while (end < len && qs[end] != '&')
            end++;
        const char *seg = qs + start;
        size_t slen = end - start;
        const char *eq = memchr(seg, '=', slen);
        size_t klen = eq ? (size_t)(eq - seg) : slen;
        struct chat_buf k = {0}, val = {0};
        bool ok = klen > 0 && ref_decode(seg, klen, &k) &&
                  (eq ? ref_decode(eq + 1, slen - klen - 1, &val) : ref_decode("", 0, &val));
        if (ok) {
            v = realloc(v, (*n + 1) * sizeof(*v));
            CHECK(v);
            v[*n].key = chat_buf_steal(&k);
            v[*n].val = chat_buf_steal(&val);
            (*n)++;
        }
        chat_buf_cleanup(&k);
        chat_buf_cleanup(&val);
        start = end + 1;
    }
    return v;
}

/* ------------------------------------------------------------------------ */
/* Checks                                                                   */
/* ------------------------------------------------------------------------ */

static const char *ref_get(const struct ref_pair *v, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].key, name) == 0)
            return v[i].val;
    return NULL;
}

static void check_get(const struct chat_query *q, const struct ref_pair *v, size_t n,
                      const char *name)
{
    const char *got = chat_query_get(q, name);
    const char *want = ref_get(v, n, name);
    CHECK((got == NULL) == (want == NULL));
    CHECK(!got || strcmp(got, want) == 0);
}

/* The arguments the API and the doors read from a query string. */
static const char *const api_args[] = {"after", "limit",  "timeout", "access_token", "ticket",
                                       "chat",  "before", "with",    "user",         ""};

static void check_query(const char *qs)
{
    struct chat_query q;
    chat_query_parse(&q, qs);
    size_t n;
    struct ref_pair *v = ref_parse(qs, &n);
    CHECK(q.n == n);
    for (size_t i = 0; i < n; i++) {
        CHECK(strcmp(q.keys[i], v[i].key) == 0);
        CHECK(strcmp(q.vals[i], v[i].val) == 0);
    }
    for (size_t i = 0; i < n; i++)
        check_get(&q, v, n, v[i].key);
    for (size_t i = 0; i < sizeof(api_args) / sizeof(api_args[0]); i++)
        check_get(&q, v, n, api_args[i]);
    chat_query_cleanup(&q);
    CHECK(q.n == 0 && q.keys == NULL && q.vals == NULL);
    for (size_t i = 0; i < n; i++) {
        free(v[i].key);
        free(v[i].val);
    }
    free(v);
}

static void check_decode(const char *s, size_t n)
{
    /* A copy exactly n bytes long, so ASan sees a read past the end. */
    char *in = malloc(n ? n : 1);
    CHECK(in);
    if (n)
        memcpy(in, s, n);
    struct chat_buf want = {0};
    bool ok = ref_decode(in, n, &want);
    char *got = chat_url_decode(in, n);
    CHECK((got != NULL) == ok);
    if (got) {
        CHECK(strlen(got) == want.len && memcmp(got, want.data, want.len) == 0);
        free(got);
    }
    chat_buf_cleanup(&want);

    /* Encoded the way a browser would (space as '+', the rest of the unsafe bytes as %XX,
     * hex case alternating), the input comes back unchanged unless it holds a NUL. */
    if (!memchr(in, '\0', n)) {
        static const char upper[] = "0123456789ABCDEF", lower[] = "0123456789abcdef";
        struct chat_buf enc = {0};
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)in[i];
            if (c == ' ') {
                chat_buf_append(&enc, "+", 1);
            } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       c == '-' || c == '_' || c == '.' || c == '~') {
                chat_buf_append(&enc, &c, 1);
            } else {
                const char *hex = i % 2 ? upper : lower;
                char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
                chat_buf_append(&enc, esc, 3);
            }
        }
        char *back = chat_url_decode(enc.data ? enc.data : "", enc.len);
        CHECK(back && strlen(back) == n && memcmp(back, in, n) == 0);
        free(back);
        chat_buf_cleanup(&enc);
    }
    free(in);
}

/* chat_url_unescape (chatd's paths and arguments) against a reference: %HH with two hex
 * digits, other than %00, becomes its byte; everything else, '+' included, stays. */
static void check_unescape(const char *s)
{
    size_t n = strlen(s);
    struct chat_buf want = {0};
    for (size_t i = 0; i < n; i++) {
        /* s[i + 2] is read only after s[i + 1] proved to be a digit, not the NUL. */
        int h = s[i] == '%' ? ref_hex((unsigned char)s[i + 1]) : -1;
        int l = h >= 0 ? ref_hex((unsigned char)s[i + 2]) : -1;
        if (h >= 0 && l >= 0 && (h || l)) {
            unsigned char c = (unsigned char)(h << 4 | l);
            chat_buf_append(&want, &c, 1);
            i += 2;
        } else {
            chat_buf_append(&want, s + i, 1);
        }
    }
    /* On its own buffer of exactly n + 1 bytes, so ASan sees a read or write past the NUL. */
    char *buf = malloc(n + 1);
    CHECK(buf);
    memcpy(buf, s, n + 1);
    size_t got = chat_url_unescape(buf);
    CHECK(got == want.len && strlen(buf) == got);
    CHECK(got == 0 || memcmp(buf, want.data, got) == 0);
    free(buf);
    chat_buf_cleanup(&want);
}

/* ------------------------------------------------------------------------ */
/* Entry point                                                              */
/* ------------------------------------------------------------------------ */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *qs = malloc(size + 1);
    CHECK(qs);
    if (size)
        memcpy(qs, data, size);
    qs[size] = '\0';

    check_query(qs);
    check_decode((const char *)data, size);
    check_unescape(qs);

    struct chat_query q;
    chat_query_parse(&q, NULL);
    CHECK(q.n == 0 && chat_query_get(&q, "after") == NULL);
    chat_query_cleanup(&q);
    free(qs);
    return 0;
}
