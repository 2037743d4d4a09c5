/* store.h: the MySQL (MariaDB) store: messages and per-user inboxes.
 *
 * One struct chat_store is one connection and belongs to one thread. Every
 * statement is prepared once per connection. A lost connection is reopened
 * on the next call; the call that lost it returns CHAT_EUNAVAIL and never
 * pretends a write happened.
 *
 * Seq: each user has a row in user_seq; a send takes the row lock of each
 * recipient (in sorted order, so senders never deadlock) and holds it until
 * COMMIT, so a user's seqs become visible strictly in order and without
 * gaps. A stream that sees seq n+2 before n+1 knows n+1 is already
 * committed and can read it. */
#ifndef CHAT_STORE_H
#define CHAT_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "config.h"
#include "id.h"

#define CHAT_SCHEMA_VERSION 1
#define CHAT_CLIENT_MSG_ID_MAX 64

enum chat_status { CHAT_STATUS_PENDING = 0, CHAT_STATUS_DELIVERED = 1 };

struct chat_item {
    uint64_t seq;
    char message_id[CHAT_MESSAGE_ID_LEN + 1];
    char from[CHAT_USER_MAX + 1];
    char to[CHAT_USER_MAX + 1];
    char *body; /* owned, NUL-terminated */
    size_t body_len;
    int64_t ts;
    int status;
    int64_t delivered_ts; /* 0 when not delivered */
};

struct chat_items {
    struct chat_item *v;
    size_t n;
    bool more; /* rows remain past the last one */
};

struct chat_send {
    const char *from;
    const char *to;
    const char *body;
    size_t body_len;
    const char *client_msg_id; /* NULL or 1-64 bytes */
};

struct chat_sent {
    bool created;          /* false: a repeat of client_msg_id, nothing stored */
    struct chat_item item; /* the recipient's inbox row (seq 0 on a repeat) */
};

struct chat_recipient {
    char user[CHAT_USER_MAX + 1];
    int status;
    int64_t delivered_ts;
    bool known; /* false when the row is gone (policy delete) */
};

/* A row an ACK changed, for its receipt. */
struct chat_acked {
    uint64_t seq;
    char message_id[CHAT_MESSAGE_ID_LEN + 1];
    char from[CHAT_USER_MAX + 1];
};

struct chat_store;

/* Opens a connection. Returns NULL and sets *err (CHAT_EUNAVAIL) when MySQL
 * does not answer; cfg is borrowed for the store's life. */
struct chat_store *chat_store_open(const struct chat_config *cfg, int *err);
void chat_store_close(struct chat_store *st);

/* This thread's store, opened on first use and closed at thread exit. Never
 * NULL; calls on it return CHAT_EUNAVAIL while MySQL is down. */
struct chat_store *chat_store_local(const struct chat_config *cfg);

/* 0 when MySQL answers and the schema version is the one this build needs;
 * CHAT_EUNAVAIL otherwise. */
int chat_store_ping(struct chat_store *st);

/* Stores a message to one recipient and its PENDING inbox row in one
 * transaction. 0 (out->created tells whether it was new), CHAT_ECONFLICT when
 * client_msg_id was used before for a different message, CHAT_EUNAVAIL. */
int chat_store_send(struct chat_store *st, const struct chat_send *in, struct chat_sent *out);

/* The user's rows with seq > after in seq order, at most limit (1..1000),
 * only PENDING ones when pending_only. 0 or CHAT_EUNAVAIL. */
int chat_store_inbox(struct chat_store *st, const char *user, uint64_t after, bool pending_only,
                     unsigned limit, struct chat_items *out);

/* The highest seq the user has ever been given (0 for none). */
int chat_store_last_seq(struct chat_store *st, const char *user, uint64_t *seq);

/* Marks DELIVERED (or deletes, per policy) the user's PENDING rows listed in
 * seqs. Fills *acked (caller frees with free()) with the rows it changed.
 * 0 or CHAT_EUNAVAIL. */
int chat_store_ack(struct chat_store *st, const char *user, const uint64_t *seqs, size_t n,
                   enum chat_policy policy, int64_t now_ms, struct chat_acked **acked,
                   size_t *nacked);

/* The same for every PENDING row with seq in (after, up_to]. */
int chat_store_ack_range(struct chat_store *st, const char *user, uint64_t after, uint64_t up_to,
                         enum chat_policy policy, int64_t now_ms, struct chat_acked **acked,
                         size_t *nacked);

/* A message by id with its recipients' state. CHAT_ENOTFOUND when unknown. */
int chat_store_message(struct chat_store *st, const char *message_id, struct chat_item *msg,
                       struct chat_recipient *rcpt);

/* Applies the schema files in dir up to CHAT_SCHEMA_VERSION. Prints what it
 * did to stdout. 0, or CHAT_EUNAVAIL / CHAT_EINTERNAL with a logged reason. */
int chat_store_migrate(const struct chat_config *cfg, const char *dir);

void chat_item_cleanup(struct chat_item *it);
void chat_items_cleanup(struct chat_items *items);

#endif
