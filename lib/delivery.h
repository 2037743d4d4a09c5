/* delivery.h: the delivery flow of SPEC.md, steps 1 to 8.
 *
 *  send:    store (one transaction) -> 201 -> publish on user:<to>
 *  deliver: bus -> local streams and long-polls of the recipient -> written
 *           -> ACK {message_id, recipient, seq} on ack:<sender>
 *  ack:     the node that stored the message (its "origin") marks or deletes
 *           the inbox row; every node holding a stream of the sender writes
 *           a receipt event to it.
 *  timeout: an origin that hears no ACK within ack_timeout counts it; the
 *           row stays PENDING and is replayed when the recipient comes back.
 *  replay:  rows a stream reads from MySQL (at its start, to fill a gap, or
 *           after the bus reconnects) are marked by the node that wrote them,
 *           since no origin is waiting for them any more.
 *
 * Doors (chatd, chat.fcgi) hold requests their own way. They hand the
 * delivery two functions: park, called in the door's own thread with the
 * stream's lock held right before the delivery answers "nothing now", and
 * wake, called from any thread with that lock held, exactly once after each
 * park. chatd suspends and resumes an MHD connection; a blocking door waits
 * on a condition variable. */
#ifndef CHAT_DELIVERY_H
#define CHAT_DELIVERY_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <cjson/cJSON.h>

#include "config.h"
#include "store.h"

typedef void (*chat_park_fn)(void *door);
typedef void (*chat_wake_fn)(void *door);
/* Drops the door's connection now, unread data and all. Called with the
 * delivery's locks held: it must neither block nor lock. */
typedef void (*chat_drop_fn)(void *door);

struct chat_delivery;
struct chat_bus;

/* Builds the delivery flow and its bus (not started). cfg is borrowed for
 * its life. */
struct chat_delivery *chat_delivery_new(const struct chat_config *cfg);
/* Starts the bus thread and the ACK worker. 0 or CHAT_EINTERNAL. */
int chat_delivery_start(struct chat_delivery *d);
/* Ends every stream and wakes every parked request (each read then returns
 * -1 and each waiter reports expired), then stops the threads. */
void chat_delivery_stop(struct chat_delivery *d);
void chat_delivery_free(struct chat_delivery *d);

const struct chat_config *chat_delivery_config(const struct chat_delivery *d);
bool chat_delivery_bus_up(const struct chat_delivery *d);

/* Step 1-2: stores the message and publishes it. Returns 0 (out->created
 * false on a client_msg_id repeat: nothing stored, nothing published),
 * CHAT_ECONFLICT, CHAT_EUNAVAIL. Never reports success for a write that did
 * not commit. */
int chat_delivery_send(struct chat_delivery *d, const struct chat_send *in, struct chat_sent *out);

/* The device's own ACK (POST /v1/inbox/ack): marks the rows and sends their
 * receipts. seqs NULL means every PENDING row up to up_to. */
int chat_delivery_device_ack(struct chat_delivery *d, const char *user, const uint64_t *seqs,
                             size_t n, uint64_t up_to, size_t *acked);

/* POST /v1/inbox/read: marks the user's rows up to up_to (0: all; only
 * conv_key's when not NULL) read and sends "read" receipts to their senders. */
int chat_delivery_read(struct chat_delivery *d, const char *user, uint64_t up_to,
                       const char *conv_key, size_t *count);

/* online[i]: whether users[i] holds a stream or long-poll on any node.
 * 0 or CHAT_EUNAVAIL (Redis). */
int chat_delivery_presence(struct chat_delivery *d, const char *const *users, size_t n,
                           bool *online);
/* Whether user already holds max_streams_per_user streams and long-polls
 * on this node. */
bool chat_delivery_user_full(struct chat_delivery *d, const char *user);

/* "pending", "delivered" or "read". */
const char *chat_status_name(int status);
/* Adds name as a string, or null when v is NULL or empty. */
void chat_json_add_str_or_null(cJSON *o, const char *name, const char *v);

/* A long-poll answer wrote the rows (after, up_to] of user: in mode server
 * that is their delivery, so they are marked and their receipts sent. */
void chat_delivery_poll_written(struct chat_delivery *d, const char *user, uint64_t after,
                                uint64_t up_to);

/* An inbox item as the API shows it; the caller frees it with cJSON_Delete. */
cJSON *chat_item_json(const struct chat_item *it);

/* ---- SSE streams ---- */

struct chat_stream;

/* Opens a stream of user's inbox on this node. With has_last, it resumes
 * after last_seq (every row after it, whatever its status); without, it
 * replays every PENDING row. Never NULL. */
struct chat_stream *chat_stream_open(struct chat_delivery *d, const char *user, bool has_last,
                                     uint64_t last_seq, chat_park_fn park, chat_wake_fn wake,
                                     void *door);

/* Hands the stream to another door context before its first read (a door
 * whose request record ends before the stream does). */
void chat_stream_set_door(struct chat_stream *s, chat_park_fn park, chat_wake_fn wake, void *door);

/* A door whose connection can be dropped gives drop here: a stream closed
 * because its reader fell stream_buffer_bytes behind is then cut at once,
 * instead of holding the kernel's socket buffers until the connection's
 * timeout. Without it the stream only ends. */
void chat_stream_set_drop(struct chat_stream *s, chat_drop_fn drop);

/* The door times the stream's keepalives itself (chat_stream_keepalive
 * after `keepalive` seconds without a write), so the tick leaves the
 * stream alone. Any thread. */
void chat_stream_door_keepalive(struct chat_stream *s);

/* A door that times its own keepalives calls this, in its own thread,
 * when one is due, then reads the stream: the read gives a keepalive
 * comment (and retries a replay or catch-up that MySQL interrupted). */
void chat_stream_keepalive(struct chat_stream *s);

/* Copies up to max bytes of the stream into buf, reading MySQL when it must
 * replay or fill a gap. Returns the byte count (> 0); 0 after calling park
 * (wake follows once there is more); -1 when the stream is over (the node is
 * stopping, or the client fell too far behind). Door thread. */
ssize_t chat_stream_read(struct chat_stream *s, char *buf, size_t max);

/* Ends the stream: its next read returns -1 (the door saw the client go).
 * Any thread, while the stream is open. */
void chat_stream_end(struct chat_stream *s);

/* Unregisters and frees the stream. The door must not call wake after this
 * returns. */
void chat_stream_close(struct chat_stream *s);

/* ---- long-poll waiters ---- */

struct chat_waiter;

/* Registers a waiter for user's inbox, to be created before the first
 * query so that no message can fall between that query and the wait.
 * deadline_ms is on chat_mono_ms's clock. */
struct chat_waiter *chat_waiter_new(struct chat_delivery *d, const char *user, int64_t deadline_ms,
                                    chat_park_fn park, chat_wake_fn wake, void *door);
/* Parks the waiter unless something happened since the last check: returns
 * true after calling park, false when the caller should check again now. */
bool chat_waiter_park(struct chat_waiter *w);
/* True once the deadline passed or the node is stopping. */
bool chat_waiter_expired(struct chat_waiter *w);
void chat_waiter_free(struct chat_waiter *w);

#endif
