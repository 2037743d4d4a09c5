/* bus.h: the Redis bus between chat servers.
 *
 * One thread per process owns two hiredis async links (one subscribes, one
 * publishes) on a libevent loop. Other threads talk to it only through a
 * queue: chat_bus_ref/unref/publish never block and never touch Redis.
 *
 * Links are state machines: connecting -> up -> (lost) -> waiting with capped
 * exponential backoff and jitter -> connecting. After the subscriber link
 * comes back every channel in use is subscribed again and on_subscribed is
 * called for each, because Pub/Sub dropped whatever was published while it
 * was down: the caller catches up from MySQL. Publishes made while the
 * publisher link is down are kept (up to a bound) and sent once it is up.
 *
 * A watchdog catches a link that is open but silent (a partition, a hung
 * server): once a second the publisher sends a heartbeat on a channel only
 * this process subscribes to. A publisher with no reply for [redis] timeout
 * seconds, or a subscriber that hears no heartbeat for as long while the
 * publisher works, is dropped and reconnected like a lost one. */
#ifndef CHAT_BUS_H
#define CHAT_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

enum chat_channel_kind {
    CHAT_CHANNEL_USER, /* <prefix>:user:<id>  new messages for a recipient */
    CHAT_CHANNEL_ACK,  /* <prefix>:ack:<id>   delivery ACKs for a sender */
    CHAT_CHANNEL_CHAT, /* <prefix>:chat:<id>  a group */
    CHAT_KEY_PRESENCE, /* <prefix>:presence:<id>  a sorted set: node -> expiry ms */
    CHAT_CHANNEL_NODE  /* <prefix>:node:<id>  the bus's own heartbeat (watchdog) */
};

#define CHAT_CHANNEL_MAX 256

/* Writes the channel name into out. Returns its length, or -1 when it does
 * not fit in n bytes. An empty prefix gives "user:<id>". */
int chat_channel_name(char *out, size_t n, const char *prefix, enum chat_channel_kind kind,
                      const char *id);

/* Splits a channel name made by chat_channel_name with the same prefix.
 * Returns 0 and points *id into name, or -1 when it is not one of ours. */
int chat_channel_parse(const char *name, const char *prefix, enum chat_channel_kind *kind,
                       const char **id);

struct chat_bus_ops {
    /* A message arrived on a channel this process uses. Bus thread; payload
     * is borrowed until return. */
    void (*on_message)(void *ctx, enum chat_channel_kind kind, const char *id, const char *payload,
                       size_t len);
    /* Redis confirmed a subscription (first use, or after a reconnect). */
    void (*on_subscribed)(void *ctx, enum chat_channel_kind kind, const char *id);
    /* Once a second, on the bus thread. */
    void (*on_tick)(void *ctx);
};

struct chat_bus;

/* Builds the bus (no thread yet). cfg and ops are borrowed for its life. */
struct chat_bus *chat_bus_new(const struct chat_config *cfg, const struct chat_bus_ops *ops,
                              void *ctx);
/* Starts the bus thread and begins connecting. 0 or CHAT_EINTERNAL. */
int chat_bus_start(struct chat_bus *bus);
/* Stops the thread; no callback runs after it returns. */
void chat_bus_stop(struct chat_bus *bus);
void chat_bus_free(struct chat_bus *bus);

/* Counts a use of a channel; the first use subscribes, the last unref
 * unsubscribes. Any thread. */
void chat_bus_ref(struct chat_bus *bus, enum chat_channel_kind kind, const char *id);
void chat_bus_unref(struct chat_bus *bus, enum chat_channel_kind kind, const char *id);

/* Publishes payload (copied). When after_kind/after_id name a channel whose
 * subscription is still being confirmed, the publish waits for it, so that a
 * reply to this message cannot race the subscription meant to receive it.
 * Pass after_id NULL for none. Any thread. */
void chat_bus_publish(struct chat_bus *bus, enum chat_channel_kind kind, const char *id,
                      const char *payload, size_t len, enum chat_channel_kind after_kind,
                      const char *after_id);

/* Sends a command on the publisher link without waiting for its reply
 * (argv is copied; kept in the backlog while Redis is down). Any thread. */
void chat_bus_command(struct chat_bus *bus, int argc, const char **argv);

/* ---- presence, on a synchronous connection of the calling thread ---- */

/* Marks user present on node until expiry_ms (and the key for ttl_ms).
 * 0 or CHAT_EUNAVAIL. */
int chat_bus_presence_join(struct chat_bus *bus, const char *user, const char *node,
                           int64_t expiry_ms, int64_t ttl_ms);
/* Removes node from user's presence; *others tells whether another node
 * still holds the user. 0 or CHAT_EUNAVAIL. */
int chat_bus_presence_leave(struct chat_bus *bus, const char *user, const char *node,
                            int64_t now_ms, bool *others);
/* For each user: 0 offline, 1 online on node only, 2 online elsewhere too.
 * 0 or CHAT_EUNAVAIL. */
int chat_bus_presence_get(struct chat_bus *bus, const char *const *users, size_t n,
                          const char *node, int64_t now_ms, unsigned char *state);

/* Whether each link is up now. Any thread. */
bool chat_bus_up(const struct chat_bus *bus);

/* How many times a link has come up (answered) since the start. A change
 * means Redis may have lost what it held (a restart without persistence:
 * presence) and missed what was published meanwhile. Any thread. */
unsigned long chat_bus_generation(const struct chat_bus *bus);

#endif
