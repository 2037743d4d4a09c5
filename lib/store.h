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

#define CHAT_SCHEMA_VERSION 4
#define CHAT_CLIENT_MSG_ID_MAX 64
#define CHAT_CHAT_ID_LEN CHAT_MESSAGE_ID_LEN
#define CHAT_GROUP_MAX 1000 /* members of a group, owner included */
#define CHAT_NAME_MAX 100   /* bytes of a group name */
#define CHAT_CONV_KEY_MAX 140

enum chat_status { CHAT_STATUS_PENDING = 0, CHAT_STATUS_DELIVERED = 1, CHAT_STATUS_READ = 2 };

struct chat_item {
    uint64_t seq;
    char message_id[CHAT_MESSAGE_ID_LEN + 1];
    char from[CHAT_USER_MAX + 1];
    char to[CHAT_USER_MAX + 1];      /* "" for a group message */
    char chat[CHAT_CHAT_ID_LEN + 1]; /* "" for a direct message */
    char *body;                      /* owned, NUL-terminated */
    size_t body_len;
    int64_t ts;
    int status;
    int64_t delivered_ts; /* 0 when not delivered */
    int64_t read_ts;      /* 0 when not read */
};

struct chat_items {
    struct chat_item *v;
    size_t n;
    bool more; /* rows remain past the last one */
};

struct chat_send {
    const char *from;
    const char *to;   /* a user, or NULL for a group message */
    const char *chat; /* a group, or NULL */
    const char *body;
    size_t body_len;
    const char *client_msg_id; /* NULL or 1-64 bytes */
};

/* A recipient of a stored message and the seq of its inbox row. */
struct chat_target {
    char user[CHAT_USER_MAX + 1];
    uint64_t seq;
};

struct chat_sent {
    bool created;                /* false: a repeat of client_msg_id, nothing stored */
    struct chat_item item;       /* the message (seq: the direct recipient's; 0 otherwise) */
    struct chat_target *targets; /* every inbox row written, in user order */
    size_t ntargets;
};

struct chat_recipient {
    char user[CHAT_USER_MAX + 1];
    int status;
    int64_t delivered_ts;
    int64_t read_ts;
    bool known; /* false when the row is gone (policy delete) */
};

struct chat_group {
    char id[CHAT_CHAT_ID_LEN + 1];
    char name[CHAT_NAME_MAX + 1];
    char owner[CHAT_USER_MAX + 1];
    int64_t created_ts;
    char (*members)[CHAT_USER_MAX + 1]; /* owned, sorted; NULL in lists */
    size_t nmembers;
};

struct chat_conversation {
    char conv_key[CHAT_CONV_KEY_MAX + 1];
    char name[CHAT_NAME_MAX + 1]; /* a group's name, or "" */
    unsigned unread;
    int64_t last_ts;
    struct chat_item last; /* message_id, from, body, ts */
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

/* *flush: the server's innodb_flush_log_at_trx_commit. Anything but 1 lets
 * a committed (201) message vanish in a crash or power loss. */
int chat_store_durable(struct chat_store *st, int *flush);

/* Stores a message and a PENDING inbox row for its recipient (or for every
 * member of its group but the sender), and updates the conversations, in one
 * transaction. 0 (out->created tells whether it was new; release out with
 * chat_sent_cleanup), CHAT_ECONFLICT when client_msg_id was used before for
 * a different message, CHAT_ENOTFOUND (no such group), CHAT_EFORBIDDEN (the
 * sender is not a member), CHAT_EUNAVAIL. */
int chat_store_send(struct chat_store *st, const struct chat_send *in, struct chat_sent *out);

/* The user's rows with seq > after in seq order, at most limit (1..1000),
 * only PENDING ones when pending_only. 0 or CHAT_EUNAVAIL. */
int chat_store_inbox(struct chat_store *st, const char *user, uint64_t after, bool pending_only,
                     unsigned limit, struct chat_items *out);

/* The highest seq the user has ever been given (0 for none). */
int chat_store_last_seq(struct chat_store *st, const char *user, uint64_t *seq);

/* One inbox row, for chat_store_ack_batch. */
struct chat_row_ref {
    char user[CHAT_USER_MAX + 1];
    uint64_t seq;
};

/* Marks DELIVERED (or deletes, per policy) every listed row that is still
 * PENDING, all in one transaction: one commit for many ACKs. Sorts refs.
 * *applied (may be NULL) counts the rows changed. 0 or CHAT_EUNAVAIL; on
 * failure nothing changed (the rows stay PENDING and are replayed). */
int chat_store_ack_batch(struct chat_store *st, struct chat_row_ref *refs, size_t n,
                         enum chat_policy policy, int64_t now_ms, size_t *applied);

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

/* A message by id with its recipients' state (*rcpts: caller frees with
 * free()). CHAT_ENOTFOUND when unknown. */
int chat_store_message(struct chat_store *st, const char *message_id, struct chat_item *msg,
                       struct chat_recipient **rcpts, size_t *nrcpts);

/* ---- groups ---- */

/* Creates a group owned by owner with owner and members (deduplicated).
 * Fills out (release with chat_group_cleanup). CHAT_EINVAL past
 * CHAT_GROUP_MAX members. */
int chat_store_group_create(struct chat_store *st, const char *owner, const char *name,
                            const char *const *members, size_t n, struct chat_group *out);
/* A group with its members. CHAT_ENOTFOUND when unknown. */
int chat_store_group_get(struct chat_store *st, const char *id, struct chat_group *out);
/* The groups user belongs to, newest first (members NULL, nmembers the
 * count). *out: caller frees with free(). */
int chat_store_group_list(struct chat_store *st, const char *user, struct chat_group **out,
                          size_t *n);
/* Adds and removes members on behalf of actor, in one transaction: the owner
 * may do both, a member may remove only itself. CHAT_ENOTFOUND,
 * CHAT_EFORBIDDEN, CHAT_ECONFLICT (the owner leaving), CHAT_EINVAL (too
 * many members). Fills out with the group after the change. */
int chat_store_group_change(struct chat_store *st, const char *id, const char *actor,
                            const char *const *add, size_t nadd, const char *const *remove,
                            size_t nremove, struct chat_group *out);
/* *is_member tells whether user is a member of group id. */
int chat_store_group_member(struct chat_store *st, const char *id, const char *user,
                            bool *is_member);
/* The same, with when user joined (ms). */
int chat_store_group_joined(struct chat_store *st, const char *id, const char *user,
                            bool *is_member, int64_t *joined_ts);
void chat_group_cleanup(struct chat_group *g);

/* ---- read state, conversations, history ---- */

/* Marks READ the user's unread rows with seq <= up_to (0: all), only those
 * of conv_key when it is not NULL, and lowers the conversations' unread
 * counts. Fills *read (caller frees) with the rows it changed. */
int chat_store_read(struct chat_store *st, const char *user, uint64_t up_to, const char *conv_key,
                    int64_t now_ms, struct chat_acked **read, size_t *nread);
/* The user's conversations, most recent first, at most limit (1..100).
 * *out: release with chat_conversations_free. */
int chat_store_conversations(struct chat_store *st, const char *user, unsigned limit,
                             struct chat_conversation **out, size_t *n);
void chat_conversations_free(struct chat_conversation *v, size_t n);
/* The messages of conv_key older than the message before_id (NULL: the
 * newest), newest first, at most limit (1..100). CHAT_ENOTFOUND when
 * before_id is not a message of that conversation. */
int chat_store_history(struct chat_store *st, const char *conv_key, const char *before_id,
                       unsigned limit, struct chat_items *out);

/* ---- blocks, tickets, contacts ---- */

/* user blocks (on) or unblocks blocked. */
int chat_store_block(struct chat_store *st, const char *user, const char *blocked, bool on);
/* The users user blocks. *out: caller frees with free(). */
int chat_store_blocks(struct chat_store *st, const char *user, char (**out)[CHAT_USER_MAX + 1],
                      size_t *n);
/* The users user shares a conversation with. *out: caller frees. */
int chat_store_contacts(struct chat_store *st, const char *user, char (**out)[CHAT_USER_MAX + 1],
                        size_t *n);
/* Stores a stream ticket for user. */
int chat_store_ticket_put(struct chat_store *st, const char *ticket, const char *user,
                          int64_t expires_ms);
/* Redeems a ticket once: 0 and its user, or CHAT_EAUTH when unknown, used
 * or expired. */
int chat_store_ticket_take(struct chat_store *st, const char *ticket, int64_t now_ms,
                           char user[CHAT_USER_MAX + 1]);

/* ---- the push hook's queue ---- */

/* A PENDING row due for the push hook: item.to is its recipient. */
struct chat_push {
    struct chat_item item;
    int attempts;
};
/* Takes up to 50 due rows and leases them for lease_ms, so that no other
 * node posts them meanwhile. *out: release with chat_push_free. */
int chat_store_push_claim(struct chat_store *st, int64_t now_ms, int64_t lease_ms,
                          struct chat_push **out, size_t *n);
/* Records the outcome of one post: done for good (ok), or due again at
 * next_ms, given up after max_attempts. */
int chat_store_push_result(struct chat_store *st, const struct chat_push *p, bool ok,
                           int64_t next_ms, int max_attempts);
void chat_push_free(struct chat_push *v, size_t n);

/* The conversation key of a direct pair ("d:<a>|<b>", sorted) and of a
 * group ("c:<id>"). */
void chat_conv_key_direct(char out[CHAT_CONV_KEY_MAX + 1], const char *a, const char *b);
void chat_conv_key_group(char out[CHAT_CONV_KEY_MAX + 1], const char *chat_id);
void chat_sent_cleanup(struct chat_sent *sent);

/* Applies the schema files in dir up to CHAT_SCHEMA_VERSION. Prints what it
 * did to stdout. 0, or CHAT_EUNAVAIL / CHAT_EINTERNAL with a logged reason. */
int chat_store_migrate(const struct chat_config *cfg, const char *dir);

void chat_item_cleanup(struct chat_item *it);
/* Keeps the first items of a page while their JSON stays within budget
 * bytes (always the first one, so a page never comes back empty while rows
 * remain); frees the rest and sets more. What one request makes a server
 * build is then bounded whatever the bodies hold. */
void chat_items_bound(struct chat_items *items, size_t budget);
void chat_items_cleanup(struct chat_items *items);

#endif
