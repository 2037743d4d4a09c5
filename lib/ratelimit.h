/* ratelimit.h: per-user token buckets (per process). */
#ifndef CHAT_RATELIMIT_H
#define CHAT_RATELIMIT_H

#include <stdint.h>

struct chat_ratelimit;

/* rate tokens per second, at most burst saved. rate 0 disables the limit. */
struct chat_ratelimit *chat_ratelimit_new(int rate, int burst);
void chat_ratelimit_free(struct chat_ratelimit *rl);
/* Takes one token for key at now_ms. Returns 0, or the ms to wait before a
 * token is free (> 0). Any thread. */
int64_t chat_ratelimit_take(struct chat_ratelimit *rl, const char *key, int64_t now_ms);

#endif
