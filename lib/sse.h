/* sse.h: Server-Sent Events framing (WHATWG HTML, "server-sent events").
 *
 * Every function appends one complete frame to a buffer. Data containing
 * line breaks (CR, LF or CRLF) is split into several data: lines so that the
 * client reassembles it exactly. Field values never contain CR or LF. */
#ifndef CHAT_SSE_H
#define CHAT_SSE_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* "event: <event>\nid: <id>\ndata: ...\n\n"; event and id may be NULL. */
void chat_sse_event(struct chat_buf *b, const char *event, const char *id, const char *data,
                    size_t len);
/* ": <text>\n\n", a comment the client ignores (keepalive). */
void chat_sse_comment(struct chat_buf *b, const char *text);
/* "retry: <ms>\n\n". */
void chat_sse_retry(struct chat_buf *b, unsigned ms);
/* Parses a Last-Event-ID value: a decimal seq, or empty for none (0).
 * Returns 0 or CHAT_EINVAL. */
int chat_sse_parse_last_event_id(const char *s, uint64_t *seq);

#endif
