/* ratelimit.c: per-user token buckets in a uthash table. */
#include "ratelimit.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "alloc.h"
#include "auth.h"

#undef uthash_fatal
#define uthash_fatal(msg) abort()

struct bucket {
    char key[CHAT_USER_MAX + 1];
    double tokens;
    int64_t last_ms;
    UT_hash_handle hh;
};

struct chat_ratelimit {
    pthread_mutex_t lock;
    double rate; /* tokens per ms */
    double burst;
    struct bucket *buckets;
    size_t takes; /* for the occasional sweep of full buckets */
};

struct chat_ratelimit *chat_ratelimit_new(int rate, int burst)
{
    struct chat_ratelimit *rl = chat_xcalloc(1, sizeof(*rl));
    pthread_mutex_init(&rl->lock, NULL);
    rl->rate = rate / 1000.0;
    rl->burst = burst;
    return rl;
}

void chat_ratelimit_free(struct chat_ratelimit *rl)
{
    if (!rl)
        return;
    struct bucket *b, *tmp;
    HASH_ITER (hh, rl->buckets, b, tmp) {
        HASH_DEL(rl->buckets, b);
        free(b);
    }
    pthread_mutex_destroy(&rl->lock);
    free(rl);
}

/* Drops buckets that have refilled: they hold nothing a new one would not. */
static void sweep(struct chat_ratelimit *rl, int64_t now_ms)
{
    struct bucket *b, *tmp;
    HASH_ITER (hh, rl->buckets, b, tmp) {
        if (b->tokens + (double)(now_ms - b->last_ms) * rl->rate >= rl->burst) {
            HASH_DEL(rl->buckets, b);
            free(b);
        }
    }
}

int64_t chat_ratelimit_take(struct chat_ratelimit *rl, const char *key, int64_t now_ms)
{
    if (rl->rate <= 0)
        return 0;
    int64_t wait = 0;
    pthread_mutex_lock(&rl->lock);
    if (++rl->takes % 4096 == 0)
        sweep(rl, now_ms);
    struct bucket *b;
    HASH_FIND_STR(rl->buckets, key, b);
    if (!b) {
        b = chat_xcalloc(1, sizeof(*b));
        snprintf(b->key, sizeof(b->key), "%s", key);
        b->tokens = rl->burst;
        b->last_ms = now_ms;
        HASH_ADD_STR(rl->buckets, key, b);
    }
    if (now_ms > b->last_ms) {
        b->tokens += (double)(now_ms - b->last_ms) * rl->rate;
        if (b->tokens > rl->burst)
            b->tokens = rl->burst;
        b->last_ms = now_ms;
    }
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
    } else {
        wait = (int64_t)((1.0 - b->tokens) / rl->rate) + 1;
    }
    pthread_mutex_unlock(&rl->lock);
    return wait;
}
