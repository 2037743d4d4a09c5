/* sse.c: Server-Sent Events framing. */
#include "sse.h"

#include <string.h>

#include "err.h"
#include "json.h"

void chat_sse_event(struct chat_buf *b, const char *event, const char *id, const char *data,
                    size_t len)
{
    if (event) {
        chat_buf_puts(b, "event: ");
        chat_buf_puts(b, event);
        chat_buf_puts(b, "\n");
    }
    if (id) {
        chat_buf_puts(b, "id: ");
        chat_buf_puts(b, id);
        chat_buf_puts(b, "\n");
    }
    /* A line break inside data ends the data: line; the client joins the
     * lines with LF, so each of CRLF, CR and LF starts a new data: line. */
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && data[i] != '\n' && data[i] != '\r')
            continue;
        chat_buf_puts(b, "data: ");
        chat_buf_append(b, data + start, i - start);
        chat_buf_puts(b, "\n");
        if (i < len && data[i] == '\r' && i + 1 < len && data[i + 1] == '\n')
            i++;
        start = i + 1;
    }
    chat_buf_puts(b, "\n");
}

void chat_sse_comment(struct chat_buf *b, const char *text)
{
    chat_buf_puts(b, ": ");
    chat_buf_puts(b, text);
    chat_buf_puts(b, "\n\n");
}

void chat_sse_retry(struct chat_buf *b, unsigned ms)
{
    chat_buf_printf(b, "retry: %u\n\n", ms);
}

int chat_sse_parse_last_event_id(const char *s, uint64_t *seq)
{
    if (!s || !*s) {
        *seq = 0;
        return 0;
    }
    return chat_parse_u64(s, seq);
}
