/* push.h: the push hook. A worker thread posts each message that is still
 * PENDING [push] after seconds after it was stored to [push] url, once: a
 * 2xx answer ends it, anything else is retried with backoff up to
 * [push] max_attempts. Rows are leased in MySQL while posted, so that several
 * nodes running the hook never post one twice at the same time. */
#ifndef CHAT_PUSH_H
#define CHAT_PUSH_H

#include <stdint.h>

#include "config.h"

struct chat_pusher;

/* Starts the worker when [push] url is set; NULL (nothing to do) otherwise.
 * cfg is borrowed for its life. */
struct chat_pusher *chat_pusher_start(const struct chat_config *cfg);
/* Stops and frees the worker; NULL is a no-op. */
void chat_pusher_stop(struct chat_pusher *p);

/* The JSON the hook receives for one row (caller frees). preview_bytes 0
 * leaves the preview out; otherwise the body is cut on a UTF-8 boundary. */
char *chat_push_payload(const char *recipient, const char *message_id, const char *from,
                        const char *chat, const char *body, int64_t ts, int preview_bytes);

#endif
