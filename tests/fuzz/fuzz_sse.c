/* fuzz_sse.c: SSE framing (chat_sse_event) read back by a WHATWG parser, and the decimal
 * parsers behind Last-Event-ID and the u64 query arguments.
 *
 * The input is "event NUL id NUL data": the first two NUL bytes split it, an empty event or id
 * stands for NULL, and data is everything after the second NUL (NULs included). With fewer
 * than two NULs the whole input is data, with no event and no id. Checked, besides the
 * sanitizers:
 *   - the frame is exactly one event for a client parsing it by the WHATWG "interpreting an
 *     event stream" rules (lines end at CRLF, LF or CR; data lines are joined with LF; one
 *     space after the colon is dropped), with the event type and id given, and with the data
 *     given except that each CRLF and each lone CR has become LF (lib/sse.c: the client joins
 *     lines with LF, so the kind of line break is not kept). Event and id values with CR or LF
 *     are outside the contract of sse.h, so such inputs skip this check;
 *   - chat_parse_u64 and chat_sse_parse_last_event_id on the input up to its first NUL agree
 *     with a reference (digits only, no sign, fits in 64 bits; empty is 0 for Last-Event-ID),
 *     and a parsed value printed with %llu gives the input back, leading zeros aside. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "err.h"
#include "json.h"
#include "sse.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* ------------------------------------------------------------------------ */
/* A client's event stream parser (WHATWG HTML 9.2.6)                        */
/* ------------------------------------------------------------------------ */

struct sse_event {
    struct chat_buf type; /* "message" when no event field was given */
    struct chat_buf data;
    struct chat_buf last_id;
};

struct sse_client {
    struct chat_buf data_buf, type_buf, last_id_buf;
    struct sse_event events[4]; /* more than one is already a failure */
    size_t n_events;
    size_t n_dispatches_without_data;
};

static void buf_set(struct chat_buf *b, const char *p, size_t n)
{
    chat_buf_reset(b);
    chat_buf_append(b, p, n);
}

static void client_dispatch(struct sse_client *c)
{
    /* Steps of "dispatch the event": an empty data buffer dispatches nothing. */
    if (c->data_buf.len == 0) {
        chat_buf_reset(&c->type_buf);
        c->n_dispatches_without_data++;
        return;
    }
    size_t n = c->data_buf.len;
    if (c->data_buf.data[n - 1] == '\n')
        n--;
    if (c->n_events < sizeof(c->events) / sizeof(c->events[0])) {
        struct sse_event *e = &c->events[c->n_events];
        buf_set(&e->data, c->data_buf.data, n);
        if (c->type_buf.len)
            buf_set(&e->type, c->type_buf.data, c->type_buf.len);
        else
            buf_set(&e->type, "message", 7);
        buf_set(&e->last_id, c->last_id_buf.data ? c->last_id_buf.data : "", c->last_id_buf.len);
    }
    c->n_events++;
    chat_buf_reset(&c->data_buf);
    chat_buf_reset(&c->type_buf);
}

static void client_field(struct sse_client *c, const char *name, size_t nlen, const char *value,
                         size_t vlen)
{
    if (nlen == 5 && memcmp(name, "event", 5) == 0) {
        buf_set(&c->type_buf, value, vlen);
    } else if (nlen == 4 && memcmp(name, "data", 4) == 0) {
        chat_buf_append(&c->data_buf, value, vlen);
        chat_buf_append(&c->data_buf, "\n", 1);
    } else if (nlen == 2 && memcmp(name, "id", 2) == 0) {
        if (!memchr(value, '\0', vlen))
            buf_set(&c->last_id_buf, value, vlen);
    }
    /* "retry" and unknown fields do not occur in an event frame; ignoring them is the rule. */
}

static void client_line(struct sse_client *c, const char *line, size_t n)
{
    if (n == 0) {
        client_dispatch(c);
        return;
    }
    if (line[0] == ':')
        return; /* a comment */
    const char *colon = memchr(line, ':', n);
    if (!colon) {
        client_field(c, line, n, "", 0);
        return;
    }
    size_t nlen = (size_t)(colon - line);
    const char *value = colon + 1;
    size_t vlen = n - nlen - 1;
    if (vlen > 0 && value[0] == ' ') {
        value++;
        vlen--;
    }
    client_field(c, line, nlen, value, vlen);
}

/* Feeds the whole stream s[0..n). Returns the number of bytes after the last line end, which
 * a client keeps waiting on (a frame must leave none). */
static size_t client_feed(struct sse_client *c, const char *s, size_t n)
{
    size_t start = 0, i = 0;
    while (i < n) {
        if (s[i] != '\r' && s[i] != '\n') {
            i++;
            continue;
        }
        client_line(c, s + start, i - start);
        if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n')
            i++;
        start = ++i;
    }
    return n - start;
}

static void client_cleanup(struct sse_client *c)
{
    chat_buf_cleanup(&c->data_buf);
    chat_buf_cleanup(&c->type_buf);
    chat_buf_cleanup(&c->last_id_buf);
    for (size_t i = 0; i < sizeof(c->events) / sizeof(c->events[0]); i++) {
        chat_buf_cleanup(&c->events[i].type);
        chat_buf_cleanup(&c->events[i].data);
        chat_buf_cleanup(&c->events[i].last_id);
    }
}

static bool buf_equals(const struct chat_buf *b, const char *p, size_t n)
{
    return b->len == n && (n == 0 || memcmp(b->data, p, n) == 0);
}

/* ------------------------------------------------------------------------ */
/* Framing                                                                  */
/* ------------------------------------------------------------------------ */

static bool has_line_break(const char *s)
{
    return s && strpbrk(s, "\r\n");
}

static void check_frame(const char *event, const char *id, const char *data, size_t len)
{
    struct chat_buf frame = {0};
    chat_sse_event(&frame, event, id, data, len);
    CHECK(frame.len >= 2 && frame.data[frame.len - 1] == '\n');

    /* What the client must see: data with CRLF and lone CR turned into LF. */
    struct chat_buf want = {0};
    for (size_t i = 0; i < len; i++) {
        if (data[i] == '\r') {
            chat_buf_append(&want, "\n", 1);
            if (i + 1 < len && data[i + 1] == '\n')
                i++;
        } else {
            chat_buf_append(&want, data + i, 1);
        }
    }

    struct sse_client c = {0};
    size_t pending = client_feed(&c, frame.data, frame.len);
    if (c.n_events != 1 || !buf_equals(&c.events[0].data, want.data, want.len))
        fprintf(stderr, "frame (%zu bytes) gave %zu events: %.*s\n", frame.len, c.n_events,
                (int)(frame.len > 2000 ? 2000 : frame.len), frame.data);
    CHECK(pending == 0);
    CHECK(c.n_events == 1 && c.n_dispatches_without_data == 0);
    CHECK(buf_equals(&c.events[0].data, want.data, want.len));
    if (event && *event)
        CHECK(buf_equals(&c.events[0].type, event, strlen(event)));
    else
        CHECK(buf_equals(&c.events[0].type, "message", 7));
    CHECK(buf_equals(&c.events[0].last_id, id ? id : "", id ? strlen(id) : 0));
    /* Nothing of the frame is left over for the next event. */
    CHECK(c.data_buf.len == 0 && c.type_buf.len == 0);

    client_cleanup(&c);
    chat_buf_cleanup(&want);
    chat_buf_cleanup(&frame);
}

/* ------------------------------------------------------------------------ */
/* Decimal parsing                                                          */
/* ------------------------------------------------------------------------ */

/* Reference: 1+ ASCII digits whose value fits in 64 bits. */
static bool ref_parse_u64(const char *s, uint64_t *out)
{
    size_t n = strlen(s);
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    while (n > 1 && *s == '0') { /* leading zeros do not count towards the 20 digits */
        s++;
        n--;
    }
    if (n > 20 || (n == 20 && strcmp(s, "18446744073709551615") > 0))
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (uint64_t)(s[i] - '0');
    *out = v;
    return true;
}

static void check_decimal(const char *s)
{
    uint64_t want = 0, got = 12345;
    bool ok = ref_parse_u64(s, &want);
    int rc = chat_parse_u64(s, &got);
    CHECK(rc == 0 || rc == CHAT_EINVAL);
    CHECK((rc == 0) == ok);
    if (ok) {
        CHECK(got == want);
        /* The round trip: printing gives the input, less any leading zeros. */
        char text[24];
        snprintf(text, sizeof(text), "%llu", (unsigned long long)got);
        const char *canon = s;
        while (canon[0] == '0' && canon[1] != '\0')
            canon++;
        CHECK(strcmp(text, canon) == 0);
    }

    uint64_t seq = 777;
    rc = chat_sse_parse_last_event_id(s, &seq);
    if (*s == '\0') {
        CHECK(rc == 0 && seq == 0);
    } else {
        CHECK((rc == 0) == ok);
        CHECK(ok ? seq == want : rc == CHAT_EINVAL);
    }
}

/* ------------------------------------------------------------------------ */
/* Entry point                                                              */
/* ------------------------------------------------------------------------ */

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size)
{
    /* One copy with a NUL after it: the NULs in the input end the C strings. */
    char *s = malloc(size + 1);
    CHECK(s);
    if (size)
        memcpy(s, in, size);
    s[size] = '\0';

    check_decimal(s);

    const char *event = NULL, *id = NULL, *data = s;
    size_t len = size;
    char *nul1 = memchr(s, '\0', size);
    char *nul2 = nul1 ? memchr(nul1 + 1, '\0', size - (size_t)(nul1 + 1 - s)) : NULL;
    if (nul2) {
        event = *s ? s : NULL;
        id = nul1[1] ? nul1 + 1 : NULL;
        data = nul2 + 1;
        len = size - (size_t)(data - s);
    }
    if (!has_line_break(event) && !has_line_break(id)) {
        /* The data on its own buffer of exactly len bytes, for ASan. */
        char *d = malloc(len ? len : 1);
        CHECK(d);
        if (len)
            memcpy(d, data, len);
        check_frame(event, id, d, len);
        free(d);
    }
    free(s);
    return 0;
}
