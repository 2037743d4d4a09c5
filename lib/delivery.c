/* delivery.c: send, fan-out to local streams, ACKs, receipts, replay. */
#include "delivery.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uthash.h>

#include "alloc.h"
#include "buf.h"
#include "bus.h"
#include "err.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "push.h"
#include "sse.h"

#undef uthash_fatal
#define uthash_fatal(msg) abort()

/* ------------------------------------------------------------------------ */
/* Events: one SSE frame shared by every local stream of a user             */
/* ------------------------------------------------------------------------ */

enum event_kind { EV_MESSAGE, EV_RECEIPT, EV_PRESENCE };

struct event {
    atomic_int refs;
    enum event_kind kind;
    uint64_t seq;
    char message_id[CHAT_MESSAGE_ID_LEN + 1];
    char from[CHAT_USER_MAX + 1];
    char origin[65];
    size_t len;
    char frame[]; /* len bytes */
};

static struct event *event_new(enum event_kind kind, const char *frame, size_t len)
{
    struct event *ev = chat_xcalloc(1, sizeof(*ev) + len + 1);
    atomic_init(&ev->refs, 1);
    ev->kind = kind;
    ev->len = len;
    memcpy(ev->frame, frame, len);
    return ev;
}

/* An event holding one SSE frame: "event: <name>", id (or NULL), data. */
static struct event *event_frame(enum event_kind kind, const char *name, const char *id,
                                 const char *data)
{
    struct chat_buf b = {0};
    chat_sse_event(&b, name, id, data, strlen(data));
    struct event *ev = event_new(kind, b.data, b.len);
    chat_buf_cleanup(&b);
    return ev;
}

static void event_unref(struct event *ev)
{
    if (ev && atomic_fetch_sub(&ev->refs, 1) == 1)
        free(ev);
}

/* ------------------------------------------------------------------------ */
/* Structures                                                               */
/* ------------------------------------------------------------------------ */

/* Live messages that arrive after a gap in a stream's seqs wait (in
 * held[]) for the missing ones, which another thread or node published a
 * moment later, rather than send the stream to MySQL at once: sends that
 * commit together publish from several threads and nodes, so their events
 * can arrive out of order. The gap is read from MySQL when it is still
 * open after GAP_HOLD_MS (checked each time the stream has taken in what
 * arrived, and on the 1 s tick for a stream that gets nothing more). Past
 * GAP_HOLD_MAX held, the highest is left to MySQL and read from there. */
#define GAP_HOLD_MS 100
#define GAP_HOLD_MAX 64

struct chat_stream {
    struct chat_delivery *d;
    char user[CHAT_USER_MAX + 1];
    struct chat_stream *prev, *next; /* in the user's entry; hub lock */

    pthread_mutex_t lock; /* guards the fields down to 'closing' */
    chat_park_fn park;
    chat_wake_fn wake;
    chat_drop_fn drop; /* NULL: the door cannot drop its connection */
    void *door;
    bool parked;
    bool need_catchup;
    bool keepalive_due;
    bool closing;
    struct event **q; /* live events not yet read */
    size_t qn, qcap, qbytes;

    /* Door thread only. */
    bool started;
    bool replaying_pending; /* reading the PENDING rows at the start */
    bool catching_up;       /* a catch-up read stopped at replay_batch */
    uint64_t replay_after;
    uint64_t last_seq; /* the highest seq written to this stream */
    struct event **held; /* live messages after a gap, by seq (GAP_HOLD_MAX) */
    size_t nheld;
    struct chat_buf out;
    atomic_llong last_write_ms;
    atomic_llong gap_since_ms;  /* 0, or since when held[] waits for a gap (stream_gap_since) */
    atomic_bool door_keepalive; /* the door times the keepalives, not the tick */
};

struct chat_waiter {
    struct chat_delivery *d;
    char user[CHAT_USER_MAX + 1];
    struct chat_waiter *prev, *next;
    int64_t deadline_ms;

    pthread_mutex_t lock;
    chat_park_fn park;
    chat_wake_fn wake;
    void *door;
    bool parked;
    bool signaled;
    bool expired;
};

/* The local streams and waiters of one user. */
struct user_entry {
    char user[CHAT_USER_MAX + 1];
    struct chat_stream *streams;
    struct chat_waiter *waiters;
    int held; /* streams + waiters */
    UT_hash_handle hh;
};

/* A message this node stored and waits to hear an ACK for. */
struct pending {
    char message_id[CHAT_MESSAGE_ID_LEN + 1];
    char from[CHAT_USER_MAX + 1];
    size_t remaining; /* recipients not heard from */
    int64_t deadline_ms;
    UT_hash_handle hh;
};

struct ack_job {
    struct ack_job *next;
    char user[CHAT_USER_MAX + 1];
    uint64_t seq;
};

struct chat_delivery {
    const struct chat_config *cfg;
    char node_id[65];
    struct chat_bus *bus;
    atomic_bool stopping;

    pthread_mutex_t hub_lock; /* users, their lists, and every stream's links */
    struct user_entry *users;

    pthread_mutex_t pending_lock;
    struct pending *pending;

    pthread_t ack_thread;
    bool ack_started;
    struct chat_pusher *pusher;
    int64_t next_presence_ms;     /* bus thread */
    unsigned long bus_generation; /* bus thread: the last one seen */
    int64_t settle_until_ms;      /* bus thread: read MySQL each tick until then */
    /* What the tick must visit each second; when all three are 0 (and
     * Redis is up) it visits the users only to refresh their presence. */
    atomic_long tick_keepalives; /* streams whose keepalive is the tick's */
    atomic_long gapped;          /* streams holding messages after a gap */
    atomic_long waiters;         /* long-polls waiting */
    pthread_mutex_t ack_lock;
    pthread_cond_t ack_cond;
    struct ack_job *acks, **acks_tail;
    size_t nacks; /* jobs in acks */
    bool ack_stop;
};

/* ------------------------------------------------------------------------ */
/* Hub                                                                      */
/* ------------------------------------------------------------------------ */

/* Hub lock held. */
static struct user_entry *entry_get(struct chat_delivery *d, const char *user, bool create)
{
    struct user_entry *e;
    HASH_FIND_STR(d->users, user, e);
    if (e || !create)
        return e;
    e = chat_xcalloc(1, sizeof(*e));
    snprintf(e->user, sizeof(e->user), "%s", user);
    HASH_ADD_STR(d->users, user, e);
    return e;
}

/* Hub lock held. Drops the entry once it holds nothing; returns true then
 * (the user just went away from this node). */
static bool entry_release(struct chat_delivery *d, struct user_entry *e)
{
    e->held--;
    if (!e->streams && !e->waiters) {
        HASH_DEL(d->users, e);
        free(e);
        return true;
    }
    return false;
}

/* Stream lock held. Wakes the door if it parked. */
static void stream_kick(struct chat_stream *s)
{
    if (s->parked) {
        s->parked = false;
        s->wake(s->door);
    }
}

/* Sets when the stream's gap wait started (0: no gap), keeping the count of
 * streams with a gap that the tick looks at. */
static void stream_gap_since(struct chat_stream *s, int64_t ms)
{
    int64_t was = atomic_exchange(&s->gap_since_ms, ms);
    if ((was == 0) != (ms == 0))
        atomic_fetch_add(&s->d->gapped, ms ? 1 : -1);
}

/* Hub lock held: the stream is alive. */
static void stream_push(struct chat_stream *s, struct event *ev)
{
    pthread_mutex_lock(&s->lock);
    if (!s->closing) {
        if (s->qbytes + ev->len > (size_t)s->d->cfg->stream_buffer_bytes) {
            /* A reader this far behind is closed; it resumes by Last-Event-ID. */
            chat_metric_inc(streams_closed_slow);
            chat_info("stream of %s closed: more than %d bytes queued", s->user,
                      s->d->cfg->stream_buffer_bytes);
            s->closing = true;
            /* What is queued would never be read: cut the connection, or
             * it holds its socket buffers until its timeout. */
            if (s->drop)
                s->drop(s->door);
        } else {
            if (s->qn == s->qcap) {
                s->qcap = s->qcap ? s->qcap * 2 : 8;
                s->q = chat_xrealloc(s->q, s->qcap * sizeof(*s->q));
            }
            atomic_fetch_add(&ev->refs, 1);
            s->q[s->qn++] = ev;
            s->qbytes += ev->len;
        }
        stream_kick(s);
    }
    pthread_mutex_unlock(&s->lock);
}

static void waiter_signal(struct chat_waiter *w, bool expire)
{
    pthread_mutex_lock(&w->lock);
    w->signaled = true;
    if (expire)
        w->expired = true;
    if (w->parked) {
        w->parked = false;
        w->wake(w->door);
    }
    pthread_mutex_unlock(&w->lock);
}

/* Hands ev to every local stream of user (and wakes long-polls for
 * messages). Takes ownership of ev. */
static void fan_out(struct chat_delivery *d, const char *user, struct event *ev)
{
    pthread_mutex_lock(&d->hub_lock);
    struct user_entry *e = entry_get(d, user, false);
    if (e) {
        for (struct chat_stream *s = e->streams; s; s = s->next)
            stream_push(s, ev);
        if (ev->kind == EV_MESSAGE)
            for (struct chat_waiter *w = e->waiters; w; w = w->next)
                waiter_signal(w, false);
    }
    pthread_mutex_unlock(&d->hub_lock);
    event_unref(ev);
}

/* Asks every stream of user to read MySQL for what it may have missed, and
 * every long-poll to check again. */
static void catch_up_user(struct chat_delivery *d, const char *user)
{
    pthread_mutex_lock(&d->hub_lock);
    struct user_entry *e = entry_get(d, user, false);
    if (e) {
        for (struct chat_stream *s = e->streams; s; s = s->next) {
            pthread_mutex_lock(&s->lock);
            s->need_catchup = true;
            stream_kick(s);
            pthread_mutex_unlock(&s->lock);
        }
        for (struct chat_waiter *w = e->waiters; w; w = w->next)
            waiter_signal(w, false);
    }
    pthread_mutex_unlock(&d->hub_lock);
}

/* ------------------------------------------------------------------------ */
/* Bus payloads                                                             */
/* ------------------------------------------------------------------------ */

const char *chat_status_name(int status)
{
    return status == CHAT_STATUS_PENDING ? "pending"
                                         : (status == CHAT_STATUS_READ ? "read" : "delivered");
}

void chat_json_add_str_or_null(cJSON *o, const char *name, const char *v)
{
    if (v && v[0])
        cJSON_AddStringToObject(o, name, v);
    else
        cJSON_AddNullToObject(o, name);
}

cJSON *chat_item_json(const struct chat_item *it)
{
    cJSON *o = cJSON_CreateObject();
    chat_json_add_int(o, "seq", (int64_t)it->seq);
    cJSON_AddStringToObject(o, "message_id", it->message_id);
    cJSON_AddStringToObject(o, "from", it->from);
    chat_json_add_str_or_null(o, "to", it->to);
    chat_json_add_str_or_null(o, "chat", it->chat);
    cJSON_AddStringToObject(o, "body", it->body ? it->body : "");
    chat_json_add_int(o, "ts", it->ts);
    cJSON_AddStringToObject(o, "status", chat_status_name(it->status));
    return o;
}

static void message_frame(struct chat_buf *b, const struct chat_item *it)
{
    cJSON *o = chat_item_json(it);
    char *data = chat_json_print(o);
    char id[24];
    snprintf(id, sizeof(id), "%llu", (unsigned long long)it->seq);
    chat_sse_event(b, "message", id, data, strlen(data));
    free(data);
    cJSON_Delete(o);
}

/* Publishes an ACK (or, with applied, a receipt of a row already marked)
 * on ack:<from>. status is "delivered" or "read". */
static void publish_ack(struct chat_delivery *d, const char *origin, const char *message_id,
                        const char *from, const char *recipient, uint64_t seq, bool applied,
                        const char *status)
{
    char buf[512];
    int n = snprintf(buf, sizeof(buf),
                     "{\"t\":\"ack\",\"origin\":\"%s\",\"message_id\":\"%s\",\"recipient\":\"%s\","
                     "\"seq\":%llu,\"ts\":%lld,\"applied\":%s,\"status\":\"%s\"}",
                     origin, message_id, recipient, (unsigned long long)seq,
                     (long long)chat_now_ms(), applied ? "true" : "false", status);
    /* Every field is an id of [A-Za-z0-9_.@:/-]: nothing needs escaping. */
    if (n > 0 && (size_t)n < sizeof(buf))
        chat_bus_publish(d->bus, CHAT_CHANNEL_ACK, from, buf, (size_t)n, CHAT_CHANNEL_ACK, NULL);
}

/* One recipient of message_id was heard from. */
static void pending_forget(struct chat_delivery *d, const char *message_id)
{
    pthread_mutex_lock(&d->pending_lock);
    struct pending *p;
    HASH_FIND_STR(d->pending, message_id, p);
    if (p && --p->remaining > 0)
        p = NULL;
    else if (p)
        HASH_DEL(d->pending, p);
    pthread_mutex_unlock(&d->pending_lock);
    if (p) {
        chat_bus_unref(d->bus, CHAT_CHANNEL_ACK, p->from);
        free(p);
    }
}

/* Rows per ACK transaction at most. */
#define ACK_BATCH_MAX 512

static void ack_enqueue(struct chat_delivery *d, const char *user, uint64_t seq)
{
    struct ack_job *j = chat_xcalloc(1, sizeof(*j));
    snprintf(j->user, sizeof(j->user), "%s", user);
    j->seq = seq;
    pthread_mutex_lock(&d->ack_lock);
    *d->acks_tail = j;
    d->acks_tail = &j->next;
    /* The worker waits for the first of a batch and for a full one. */
    if (++d->nacks == 1 || d->nacks >= ACK_BATCH_MAX)
        pthread_cond_signal(&d->ack_cond);
    pthread_mutex_unlock(&d->ack_lock);
}

/* A contact came or went: a presence event for user's streams. */
static void on_presence(struct chat_delivery *d, const char *user, cJSON *root)
{
    const char *who = chat_json_string(root, "user");
    uint64_t ts;
    if (!who || !chat_user_valid(who) || chat_json_u64(root, "ts", &ts) != 0)
        return;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "user", who);
    cJSON_AddBoolToObject(o, "online",
                          cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "online")));
    chat_json_add_int(o, "ts", (int64_t)ts);
    char *data = chat_json_print(o);
    cJSON_Delete(o);
    struct event *ev = event_frame(EV_PRESENCE, "presence", NULL, data);
    free(data);
    fan_out(d, user, ev);
}

static void on_user_message(struct chat_delivery *d, const char *user, cJSON *root)
{
    const char *t = chat_json_string(root, "t");
    if (t && strcmp(t, "presence") == 0) {
        on_presence(d, user, root);
        return;
    }
    cJSON *jit = cJSON_GetObjectItemCaseSensitive(root, "item");
    const char *origin = chat_json_string(root, "origin");
    uint64_t seq;
    if (!cJSON_IsObject(jit) || !origin || chat_json_u64(jit, "seq", &seq) != 0)
        return;
    const char *mid = chat_json_string(jit, "message_id");
    const char *from = chat_json_string(jit, "from");
    if (!mid || !from || strlen(mid) > CHAT_MESSAGE_ID_LEN || !chat_user_valid(from))
        return;
    char *data = chat_json_print(jit);
    char id[24];
    snprintf(id, sizeof(id), "%llu", (unsigned long long)seq);
    struct event *ev = event_frame(EV_MESSAGE, "message", id, data);
    free(data);
    ev->seq = seq;
    snprintf(ev->message_id, sizeof(ev->message_id), "%s", mid);
    snprintf(ev->from, sizeof(ev->from), "%s", from);
    snprintf(ev->origin, sizeof(ev->origin), "%s", origin);
    fan_out(d, user, ev);
}

static void on_ack_message(struct chat_delivery *d, const char *sender, cJSON *root)
{
    const char *origin = chat_json_string(root, "origin");
    const char *mid = chat_json_string(root, "message_id");
    const char *rcpt = chat_json_string(root, "recipient");
    uint64_t seq, ts;
    if (!origin || !mid || !rcpt || !chat_user_valid(rcpt) || strlen(mid) > CHAT_MESSAGE_ID_LEN ||
        chat_json_u64(root, "seq", &seq) != 0 || chat_json_u64(root, "ts", &ts) != 0)
        return;
    bool applied = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "applied"));
    const char *status = chat_json_string(root, "status");
    bool read = status && strcmp(status, "read") == 0;
    /* A node that applies an ACK itself forgets the message's timer itself;
     * an ACK from elsewhere that was applied there stops ours. */
    if (strcmp(origin, d->node_id) == 0) {
        if (!applied) {
            /* Step 5: the node that stored the message applies its ACK. */
            pending_forget(d, mid);
            ack_enqueue(d, rcpt, seq);
        }
    } else if (applied) {
        pending_forget(d, mid);
    }
    /* The sender's own streams get a receipt. */
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "message_id", mid);
    cJSON_AddStringToObject(r, "user", rcpt);
    cJSON_AddStringToObject(r, "status", read ? "read" : "delivered");
    chat_json_add_int(r, "ts", (int64_t)ts);
    char *data = chat_json_print(r);
    cJSON_Delete(r);
    struct event *ev = event_frame(EV_RECEIPT, "receipt", NULL, data);
    free(data);
    fan_out(d, sender, ev);
}

static void bus_on_message(void *ctx, enum chat_channel_kind kind, const char *id,
                           const char *payload, size_t len)
{
    struct chat_delivery *d = ctx;
    cJSON *root = cJSON_ParseWithLength(payload, len);
    if (!root) {
        chat_warn("bus: unreadable payload on %s channel of %s",
                  kind == CHAT_CHANNEL_ACK ? "ack" : "user", id);
        return;
    }
    if (kind == CHAT_CHANNEL_USER)
        on_user_message(d, id, root);
    else if (kind == CHAT_CHANNEL_ACK)
        on_ack_message(d, id, root);
    cJSON_Delete(root);
}

static void bus_on_subscribed(void *ctx, enum chat_channel_kind kind, const char *id)
{
    /* Whatever was published before this subscription took effect (a new
     * stream, or a reconnect after Redis went away) is read from MySQL. */
    if (kind == CHAT_CHANNEL_USER)
        catch_up_user(ctx, id);
}

static void bus_on_tick(void *ctx)
{
    struct chat_delivery *d = ctx;
    int64_t now = chat_mono_ms();

    /* ACK timeouts: the row stays PENDING; replay delivers it later. */
    struct pending *p, *tmp, *expired = NULL;
    pthread_mutex_lock(&d->pending_lock);
    HASH_ITER (hh, d->pending, p, tmp) {
        if (p->deadline_ms <= now) {
            HASH_DEL(d->pending, p);
            p->hh.next = expired;
            expired = p;
        }
    }
    pthread_mutex_unlock(&d->pending_lock);
    while (expired) {
        p = expired;
        expired = p->hh.next;
        atomic_fetch_add(&chat_metrics.ack_timeouts, (long)p->remaining);
        chat_debug("no ACK for %s within %d s", p->message_id, d->cfg->ack_timeout);
        chat_bus_unref(d->bus, CHAT_CHANNEL_ACK, p->from);
        free(p);
    }

    /* A link came back: Redis may have restarted empty, so presence is
     * written again at once; and until it surely is (two ticks), a send
     * that found a local user offline skipped the publish, so local
     * streams read MySQL each tick, as while Redis is down. */
    unsigned long gen = chat_bus_generation(d->bus);
    if (gen != d->bus_generation) {
        d->bus_generation = gen;
        d->next_presence_ms = 0;
        d->settle_until_ms = now + 2000;
    }

    /* Presence: every third of the TTL, each local user is refreshed. */
    int64_t wall = chat_now_ms(), ttl = (int64_t)d->cfg->presence_ttl * 1000;
    bool refresh = now >= d->next_presence_ms;
    if (refresh)
        d->next_presence_ms = now + ttl / 3;

    /* Redis down: nothing arrives live, so every local stream and long-poll
     * reads MySQL each tick instead (degraded, but nothing stops). Rows are
     * marked by this node as they are written, so no ACK needs Redis. */
    bool degraded = !chat_bus_up(d->bus);
    atomic_store(&chat_metrics.bus_degraded, degraded ? 1 : 0);
    degraded |= now < d->settle_until_ms;

    /* Keepalives, gaps and long-poll deadlines, when some stream or poll
     * needs the tick: visiting 10,000 idle users each second is most of
     * an idle node's CPU. */
    bool streams = degraded || atomic_load(&d->tick_keepalives) > 0 || atomic_load(&d->gapped) > 0;
    bool waiters = degraded || atomic_load(&d->waiters) > 0;
    if (!refresh && !streams && !waiters)
        return;
    int64_t ka = (int64_t)d->cfg->keepalive * 1000;
    pthread_mutex_lock(&d->hub_lock);
    struct user_entry *e, *etmp;
    HASH_ITER (hh, d->users, e, etmp) {
        if (refresh) {
            char key[CHAT_CHANNEL_MAX], score[24], ms[24];
            chat_channel_name(key, sizeof(key), d->cfg->channel_prefix, CHAT_KEY_PRESENCE, e->user);
            snprintf(score, sizeof(score), "%lld", (long long)(wall + ttl));
            snprintf(ms, sizeof(ms), "%lld", (long long)ttl);
            const char *zadd[] = {"ZADD", key, score, d->node_id};
            const char *pexpire[] = {"PEXPIRE", key, ms};
            chat_bus_command(d->bus, 4, zadd);
            chat_bus_command(d->bus, 3, pexpire);
        }
        for (struct chat_stream *s = streams ? e->streams : NULL; s; s = s->next) {
            bool ka_due = !atomic_load(&s->door_keepalive) &&
                          now - atomic_load(&s->last_write_ms) >= ka - 500;
            int64_t gap = atomic_load(&s->gap_since_ms);
            bool gap_due = gap != 0 && now - gap >= GAP_HOLD_MS;
            if (!ka_due && !degraded && !gap_due)
                continue;
            pthread_mutex_lock(&s->lock);
            s->keepalive_due |= ka_due;
            s->need_catchup |= degraded || gap_due;
            stream_kick(s);
            pthread_mutex_unlock(&s->lock);
            if (degraded)
                chat_metric_inc(bus_fallback_polls);
        }
        for (struct chat_waiter *w = waiters ? e->waiters : NULL; w; w = w->next) {
            if (w->deadline_ms <= now) {
                waiter_signal(w, true);
            } else if (degraded) {
                waiter_signal(w, false);
                chat_metric_inc(bus_fallback_polls);
            }
        }
    }
    pthread_mutex_unlock(&d->hub_lock);
}

static const struct chat_bus_ops bus_ops = {
    .on_message = bus_on_message,
    .on_subscribed = bus_on_subscribed,
    .on_tick = bus_on_tick,
};

/* ------------------------------------------------------------------------ */
/* The ACK worker: applies ACKs of messages this node stored                */
/* ------------------------------------------------------------------------ */

/* Takes every ACK queued so far and applies them together, one commit per
 * batch: under load many ACKs share one fsync. */
static void *ack_main(void *arg)
{
    struct chat_delivery *d = arg;
    struct chat_store *st = chat_store_local(d->cfg);
    struct chat_row_ref *refs = chat_xcalloc(ACK_BATCH_MAX, sizeof(*refs));
    pthread_mutex_lock(&d->ack_lock);
    while (!d->ack_stop) {
        if (!d->acks) {
            pthread_cond_wait(&d->ack_cond, &d->ack_lock);
            continue;
        }
        /* Let the ACKs of the next few milliseconds join this batch. */
        if (d->cfg->ack_batch_ms > 0 && d->nacks < ACK_BATCH_MAX) {
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            long ns = until.tv_nsec + (long)d->cfg->ack_batch_ms * 1000000L;
            until.tv_sec += ns / 1000000000L;
            until.tv_nsec = ns % 1000000000L;
            while (!d->ack_stop && d->nacks < ACK_BATCH_MAX &&
                   pthread_cond_timedwait(&d->ack_cond, &d->ack_lock, &until) == 0)
                ;
        }
        size_t n = 0;
        while (d->acks && n < ACK_BATCH_MAX) {
            struct ack_job *j = d->acks;
            d->acks = j->next;
            d->nacks--;
            snprintf(refs[n].user, sizeof(refs[n].user), "%s", j->user);
            refs[n].seq = j->seq;
            n++;
            free(j);
        }
        if (!d->acks)
            d->acks_tail = &d->acks;
        pthread_mutex_unlock(&d->ack_lock);
        /* A failure leaves the rows PENDING: they are replayed, not lost. */
        if (chat_store_ack_batch(st, refs, n, d->cfg->ack_policy, chat_now_ms(), NULL) != 0)
            chat_warn("%zu ACKs not applied: MySQL unavailable", n);
        pthread_mutex_lock(&d->ack_lock);
    }
    pthread_mutex_unlock(&d->ack_lock);
    free(refs);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Lifecycle                                                                */
/* ------------------------------------------------------------------------ */

struct chat_delivery *chat_delivery_new(const struct chat_config *cfg)
{
    struct chat_delivery *d = chat_xcalloc(1, sizeof(*d));
    d->cfg = cfg;
    if (cfg->node_id[0]) {
        snprintf(d->node_id, sizeof(d->node_id), "%s", cfg->node_id);
    } else {
        char host[64] = "node";
        gethostname(host, sizeof(host) - 1);
        snprintf(d->node_id, sizeof(d->node_id), "%.50s:%d", host, cfg->port);
    }
    pthread_mutex_init(&d->hub_lock, NULL);
    pthread_mutex_init(&d->pending_lock, NULL);
    pthread_mutex_init(&d->ack_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&d->ack_cond, &ca);
    pthread_condattr_destroy(&ca);
    d->acks_tail = &d->acks;
    d->bus = chat_bus_new(cfg, &bus_ops, d);
    if (!d->bus) {
        chat_delivery_free(d);
        return NULL;
    }
    return d;
}

int chat_delivery_start(struct chat_delivery *d)
{
    if (pthread_create(&d->ack_thread, NULL, ack_main, d) != 0)
        return CHAT_EINTERNAL;
    d->ack_started = true;
    d->pusher = chat_pusher_start(d->cfg);
    /* Opening a connection checks that MariaDB flushes at each commit and
     * says so loudly when not (the store does it on every new connection). */
    int err;
    chat_store_close(chat_store_open(d->cfg, &err));
    return chat_bus_start(d->bus);
}

void chat_delivery_stop(struct chat_delivery *d)
{
    if (!d || atomic_exchange(&d->stopping, true))
        return;
    pthread_mutex_lock(&d->hub_lock);
    struct user_entry *e, *tmp;
    HASH_ITER (hh, d->users, e, tmp) {
        for (struct chat_stream *s = e->streams; s; s = s->next) {
            pthread_mutex_lock(&s->lock);
            s->closing = true;
            stream_kick(s);
            pthread_mutex_unlock(&s->lock);
        }
        for (struct chat_waiter *w = e->waiters; w; w = w->next)
            waiter_signal(w, true);
    }
    pthread_mutex_unlock(&d->hub_lock);
}

void chat_delivery_free(struct chat_delivery *d)
{
    if (!d)
        return;
    chat_delivery_stop(d);
    chat_pusher_stop(d->pusher);
    chat_bus_free(d->bus);
    if (d->ack_started) {
        pthread_mutex_lock(&d->ack_lock);
        d->ack_stop = true;
        pthread_cond_signal(&d->ack_cond);
        pthread_mutex_unlock(&d->ack_lock);
        pthread_join(d->ack_thread, NULL);
    }
    for (struct ack_job *j = d->acks; j;) {
        struct ack_job *next = j->next;
        free(j);
        j = next;
    }
    struct pending *p, *ptmp;
    HASH_ITER (hh, d->pending, p, ptmp) {
        HASH_DEL(d->pending, p);
        free(p);
    }
    struct user_entry *e, *etmp;
    HASH_ITER (hh, d->users, e, etmp) {
        HASH_DEL(d->users, e);
        free(e);
    }
    pthread_cond_destroy(&d->ack_cond);
    pthread_mutex_destroy(&d->ack_lock);
    pthread_mutex_destroy(&d->pending_lock);
    pthread_mutex_destroy(&d->hub_lock);
    free(d);
}

const struct chat_config *chat_delivery_config(const struct chat_delivery *d)
{
    return d->cfg;
}

bool chat_delivery_bus_up(const struct chat_delivery *d)
{
    return chat_bus_up(d->bus);
}

/* ------------------------------------------------------------------------ */
/* Sending                                                                  */
/* ------------------------------------------------------------------------ */

int chat_delivery_send(struct chat_delivery *d, const struct chat_send *in, struct chat_sent *out)
{
    struct chat_store *st = chat_store_local(d->cfg);
    int err = chat_store_send(st, in, out);
    if (err || !out->created)
        return err;
    chat_metric_inc(messages_stored);

    /* Track the ACK before publishing, and subscribe to the sender's ACK
     * channel; the bus holds the publish until that subscription is live. */
    struct pending *p = chat_xcalloc(1, sizeof(*p));
    snprintf(p->message_id, sizeof(p->message_id), "%s", out->item.message_id);
    snprintf(p->from, sizeof(p->from), "%s", in->from);
    p->remaining = out->ntargets;
    p->deadline_ms = chat_mono_ms() + (int64_t)d->cfg->ack_timeout * 1000;
    pthread_mutex_lock(&d->pending_lock);
    HASH_ADD_STR(d->pending, message_id, p);
    pthread_mutex_unlock(&d->pending_lock);
    chat_bus_ref(d->bus, CHAT_CHANNEL_ACK, in->from);

    /* One message per recipient, with its own seq (membership is the one the
     * send transaction saw): nothing for a recipient who is offline (the row
     * waits for replay), a local hand-over for one held only here, a publish
     * on their channel otherwise, or for everyone when presence is unknown. */
    const char **users = chat_xcalloc(out->ntargets + 1, sizeof(*users));
    unsigned char *where = chat_xcalloc(out->ntargets + 1, 1);
    for (size_t i = 0; i < out->ntargets; i++)
        users[i] = out->targets[i].user;
    if (chat_bus_presence_get(d->bus, users, out->ntargets, d->node_id, chat_now_ms(), where))
        memset(where, 2, out->ntargets);
    for (size_t i = 0; i < out->ntargets; i++) {
        if (where[i] == 0)
            continue;
        out->item.seq = out->targets[i].seq;
        cJSON *root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "t", "msg");
        cJSON_AddStringToObject(root, "origin", d->node_id);
        cJSON_AddItemToObject(root, "item", chat_item_json(&out->item));
        if (where[i] == 1) {
            on_user_message(d, users[i], root);
        } else {
            char *payload = chat_json_print(root);
            chat_bus_publish(d->bus, CHAT_CHANNEL_USER, users[i], payload, strlen(payload),
                             CHAT_CHANNEL_ACK, in->from);
            free(payload);
        }
        cJSON_Delete(root);
    }
    free(users);
    free(where);
    out->item.seq = in->to && out->ntargets ? out->targets[0].seq : 0;
    return 0;
}

/* Rows this node marked delivered itself: stop their ACK timers here and
 * send their receipts (as applied, so no origin applies them again). Frees
 * acked. */
static void delivered_here(struct chat_delivery *d, const char *user, struct chat_acked *acked,
                           size_t n)
{
    for (size_t i = 0; i < n; i++) {
        pending_forget(d, acked[i].message_id);
        publish_ack(d, d->node_id, acked[i].message_id, acked[i].from, user, acked[i].seq, true,
                    "delivered");
    }
    free(acked);
}

/* Marks rows (after, up_to] that this node wrote from MySQL, and sends their
 * receipts: no origin waits for an ACK of a replayed row. */
static void apply_written_range(struct chat_delivery *d, struct chat_store *st, const char *user,
                                uint64_t after, uint64_t up_to)
{
    if (d->cfg->mode != CHAT_MODE_SERVER || up_to <= after)
        return;
    struct chat_acked *acked = NULL;
    size_t n = 0;
    if (chat_store_ack_range(st, user, after, up_to, d->cfg->ack_policy, chat_now_ms(), &acked,
                             &n) != 0)
        return; /* left PENDING: replayed again later */
    delivered_here(d, user, acked, n);
}

int chat_delivery_device_ack(struct chat_delivery *d, const char *user, const uint64_t *seqs,
                             size_t n, uint64_t up_to, size_t *count)
{
    struct chat_store *st = chat_store_local(d->cfg);
    struct chat_acked *acked = NULL;
    size_t na = 0;
    int err =
        seqs ? chat_store_ack(st, user, seqs, n, d->cfg->ack_policy, chat_now_ms(), &acked, &na)
             : chat_store_ack_range(st, user, 0, up_to, d->cfg->ack_policy, chat_now_ms(), &acked,
                                    &na);
    if (err)
        return err;
    delivered_here(d, user, acked, na);
    *count = na;
    return 0;
}

int chat_delivery_read(struct chat_delivery *d, const char *user, uint64_t up_to,
                       const char *conv_key, size_t *count)
{
    struct chat_acked *read = NULL;
    size_t n = 0;
    int err =
        chat_store_read(chat_store_local(d->cfg), user, up_to, conv_key, chat_now_ms(), &read, &n);
    if (err)
        return err;
    for (size_t i = 0; i < n; i++)
        publish_ack(d, d->node_id, read[i].message_id, read[i].from, user, read[i].seq, true,
                    "read");
    free(read);
    *count = n;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Presence                                                                 */
/* ------------------------------------------------------------------------ */

/* Tells the user's contacts, through their own channels, that user came or
 * went. */
static void announce(struct chat_delivery *d, const char *user, bool online)
{
    char(*contacts)[CHAT_USER_MAX + 1] = NULL;
    size_t n = 0;
    if (chat_store_contacts(chat_store_local(d->cfg), user, &contacts, &n) != 0)
        return;
    char buf[256];
    int len =
        snprintf(buf, sizeof(buf), "{\"t\":\"presence\",\"user\":\"%s\",\"online\":%s,\"ts\":%lld}",
                 user, online ? "true" : "false", (long long)chat_now_ms());
    for (size_t i = 0; i < n && len > 0 && (size_t)len < sizeof(buf); i++)
        chat_bus_publish(d->bus, CHAT_CHANNEL_USER, contacts[i], buf, (size_t)len,
                         CHAT_CHANNEL_USER, NULL);
    free(contacts);
}

/* The first stream or long-poll of user on this node. The presence write is
 * synchronous and comes before the stream's first read of MySQL: a sender
 * that saw the user offline (and skipped the publish) committed before it,
 * so that read finds the row. */
static void user_arrived(struct chat_delivery *d, const char *user)
{
    int64_t now = chat_now_ms(), ttl = (int64_t)d->cfg->presence_ttl * 1000;
    unsigned char before = 0;
    const char *users[1] = {user};
    if (chat_bus_presence_get(d->bus, users, 1, d->node_id, now, &before) != 0)
        before = 2; /* unknown: do not announce */
    if (chat_bus_presence_join(d->bus, user, d->node_id, now + ttl, ttl) == 0 && before == 0)
        announce(d, user, true);
}

static void user_left(struct chat_delivery *d, const char *user)
{
    bool others = true;
    if (chat_bus_presence_leave(d->bus, user, d->node_id, chat_now_ms(), &others) == 0 && !others)
        announce(d, user, false);
}

int chat_delivery_presence(struct chat_delivery *d, const char *const *users, size_t n,
                           bool *online)
{
    unsigned char *state = chat_xcalloc(n + 1, 1);
    int err = chat_bus_presence_get(d->bus, users, n, d->node_id, chat_now_ms(), state);
    for (size_t i = 0; i < n; i++)
        online[i] = state[i] != 0;
    free(state);
    return err;
}

bool chat_delivery_user_full(struct chat_delivery *d, const char *user)
{
    pthread_mutex_lock(&d->hub_lock);
    struct user_entry *e = entry_get(d, user, false);
    bool full = e && e->held >= d->cfg->max_streams_per_user;
    pthread_mutex_unlock(&d->hub_lock);
    return full;
}

/* ------------------------------------------------------------------------ */
/* Streams                                                                  */
/* ------------------------------------------------------------------------ */

struct chat_stream *chat_stream_open(struct chat_delivery *d, const char *user, bool has_last,
                                     uint64_t last_seq, chat_park_fn park, chat_wake_fn wake,
                                     void *door)
{
    struct chat_stream *s = chat_xcalloc(1, sizeof(*s));
    s->d = d;
    snprintf(s->user, sizeof(s->user), "%s", user);
    pthread_mutex_init(&s->lock, NULL);
    s->park = park;
    s->wake = wake;
    s->door = door;
    s->last_seq = last_seq;
    s->replaying_pending = !has_last;
    atomic_init(&s->last_write_ms, chat_mono_ms());
    atomic_fetch_add(&d->tick_keepalives, 1);
    if (atomic_load(&d->stopping))
        s->closing = true;

    /* Registered before the first read of MySQL: an event that arrives in
     * between is queued, and the seq check drops what the read returned. */
    pthread_mutex_lock(&d->hub_lock);
    struct user_entry *e = entry_get(d, user, true);
    s->next = e->streams;
    if (e->streams)
        e->streams->prev = s;
    e->streams = s;
    bool first = e->held++ == 0;
    pthread_mutex_unlock(&d->hub_lock);
    chat_bus_ref(d->bus, CHAT_CHANNEL_USER, user);
    chat_bus_ref(d->bus, CHAT_CHANNEL_ACK, user); /* receipts for this user as a sender */
    chat_metric_inc(streams_open);
    if (first)
        user_arrived(d, user);
    return s;
}

void chat_stream_set_door(struct chat_stream *s, chat_park_fn park, chat_wake_fn wake, void *door)
{
    pthread_mutex_lock(&s->lock);
    s->park = park;
    s->wake = wake;
    s->door = door;
    pthread_mutex_unlock(&s->lock);
}

void chat_stream_set_drop(struct chat_stream *s, chat_drop_fn drop)
{
    pthread_mutex_lock(&s->lock);
    s->drop = drop;
    pthread_mutex_unlock(&s->lock);
}

void chat_stream_door_keepalive(struct chat_stream *s)
{
    if (!atomic_exchange(&s->door_keepalive, true))
        atomic_fetch_sub(&s->d->tick_keepalives, 1);
}

void chat_stream_keepalive(struct chat_stream *s)
{
    pthread_mutex_lock(&s->lock);
    s->keepalive_due = true;
    s->parked = false; /* the door reads it next */
    pthread_mutex_unlock(&s->lock);
}

void chat_stream_end(struct chat_stream *s)
{
    pthread_mutex_lock(&s->lock);
    s->closing = true;
    stream_kick(s);
    pthread_mutex_unlock(&s->lock);
}

void chat_stream_close(struct chat_stream *s)
{
    if (!s)
        return;
    struct chat_delivery *d = s->d;
    bool gone = false;
    pthread_mutex_lock(&d->hub_lock);
    struct user_entry *e = entry_get(d, s->user, false);
    if (e) {
        if (s->prev)
            s->prev->next = s->next;
        else
            e->streams = s->next;
        if (s->next)
            s->next->prev = s->prev;
        gone = entry_release(d, e);
    }
    pthread_mutex_unlock(&d->hub_lock);
    if (gone)
        user_left(d, s->user);
    chat_bus_unref(d->bus, CHAT_CHANNEL_USER, s->user);
    chat_bus_unref(d->bus, CHAT_CHANNEL_ACK, s->user);
    for (size_t i = 0; i < s->qn; i++)
        event_unref(s->q[i]);
    free(s->q);
    for (size_t i = 0; i < s->nheld; i++)
        event_unref(s->held[i]);
    free(s->held);
    stream_gap_since(s, 0);
    if (!atomic_load(&s->door_keepalive))
        atomic_fetch_sub(&d->tick_keepalives, 1);
    chat_buf_cleanup(&s->out);
    pthread_mutex_destroy(&s->lock);
    chat_metric_dec(streams_open);
    free(s);
}

/* Reads one batch of rows from MySQL into the stream. Returns 0 or
 * CHAT_EUNAVAIL (the stream then waits for the next event or tick). */
static int stream_read_rows(struct chat_stream *s)
{
    struct chat_delivery *d = s->d;
    struct chat_store *st = chat_store_local(d->cfg);
    struct chat_items items;
    bool pending = s->replaying_pending;
    uint64_t after = pending ? s->replay_after : s->last_seq;
    if (pending && !s->started) {
        /* Read last_seq first: a row committed after this read has a larger
         * seq and arrives live or through a catch-up. */
        uint64_t last;
        int err = chat_store_last_seq(st, s->user, &last);
        if (err)
            return err;
        s->last_seq = last;
    }
    int err = chat_store_inbox(st, s->user, after, pending, (unsigned)d->cfg->replay_batch, &items);
    if (err)
        return err;
    chat_metric_inc(catchups);
    uint64_t before = s->last_seq;
    for (size_t i = 0; i < items.n; i++) {
        struct chat_item *it = &items.v[i];
        if (pending) {
            s->replay_after = it->seq;
        } else if (it->seq <= s->last_seq) {
            continue;
        }
        message_frame(&s->out, it);
        chat_metric_inc(events_delivered);
        if (it->seq > s->last_seq)
            s->last_seq = it->seq;
    }
    if (pending) {
        s->replaying_pending = items.more;
        if (items.n && d->cfg->mode == CHAT_MODE_SERVER)
            apply_written_range(d, st, s->user, items.v[0].seq - 1, items.v[items.n - 1].seq);
    } else {
        s->catching_up = items.more;
        apply_written_range(d, st, s->user, before, s->last_seq);
    }
    chat_items_cleanup(&items);
    return 0;
}

/* Writes a live message event that follows the last one, and ACKs it. */
static void stream_write_message(struct chat_stream *s, struct event *ev)
{
    struct chat_delivery *d = s->d;
    chat_buf_append(&s->out, ev->frame, ev->len);
    s->last_seq = ev->seq;
    chat_metric_inc(events_delivered);
    if (d->cfg->mode != CHAT_MODE_SERVER)
        return;
    if (strcmp(ev->origin, d->node_id) == 0) {
        /* Our own message: apply the ACK here rather than wait for it to come
         * back through Redis; the receipt still goes to every node. */
        pending_forget(d, ev->message_id);
        ack_enqueue(d, s->user, ev->seq);
        publish_ack(d, d->node_id, ev->message_id, ev->from, s->user, ev->seq, true, "delivered");
    } else {
        publish_ack(d, ev->origin, ev->message_id, ev->from, s->user, ev->seq, false, "delivered");
    }
}

/* Writes the held messages that now follow the last one, drops those
 * already written (by a read of MySQL), keeps the rest. */
static void stream_release_held(struct chat_stream *s)
{
    size_t i = 0;
    for (; i < s->nheld && s->held[i]->seq <= s->last_seq + 1; i++) {
        if (s->held[i]->seq == s->last_seq + 1)
            stream_write_message(s, s->held[i]);
        event_unref(s->held[i]);
    }
    memmove(s->held, s->held + i, (s->nheld - i) * sizeof(*s->held));
    s->nheld -= i;
    if (s->nheld == 0) {
        free(s->held);
        s->held = NULL;
        stream_gap_since(s, 0);
    } else if (i > 0) {
        stream_gap_since(s, chat_mono_ms()); /* a later gap: its own wait */
    }
}

/* Reads MySQL for a gap that stayed open (one batch of rows), then writes
 * what was held. Rows a complete read does not return were deleted after
 * delivery (policy delete) and are skipped. When MySQL is unavailable,
 * or the read was of PENDING rows or stopped at replay_batch, the held
 * messages keep waiting: the stream's own reads go on, and the next event
 * or the tick tries again; a stream never writes past a row it has not
 * had, so a resume with Last-Event-ID cannot skip it. */
static void stream_fill_gap(struct chat_stream *s)
{
    uint64_t want = s->held[0]->seq;
    bool pending = s->replaying_pending;
    if (stream_read_rows(s) != 0) {
        stream_gap_since(s, chat_mono_ms());
        return;
    }
    if (!pending && !s->catching_up && s->last_seq + 1 < want) {
        chat_info("stream of %s: rows %llu..%llu are gone (deleted after delivery)", s->user,
                  (unsigned long long)s->last_seq + 1, (unsigned long long)want - 1);
        s->last_seq = want - 1;
    }
    stream_release_held(s);
    if (s->nheld)
        stream_gap_since(s, chat_mono_ms());
}

/* Writes a live message event, or holds it while an earlier one is
 * missing (see GAP_HOLD_MS). With GAP_HOLD_MAX held, the highest one is
 * left to MySQL (it is committed) and the stream reads on from there. */
static void stream_take_message(struct chat_stream *s, struct event *ev)
{
    if (ev->seq <= s->last_seq)
        return; /* already written (replayed, or a second publish) */
    if (ev->seq == s->last_seq + 1) {
        stream_write_message(s, ev);
        if (s->nheld)
            stream_release_held(s);
        return;
    }
    size_t i = 0;
    while (i < s->nheld && s->held[i]->seq < ev->seq)
        i++;
    if (i < s->nheld && s->held[i]->seq == ev->seq)
        return; /* held already */
    if (s->nheld == GAP_HOLD_MAX) {
        s->catching_up = true;
        if (i == s->nheld)
            return;
        event_unref(s->held[--s->nheld]);
    }
    if (!s->held)
        s->held = chat_xcalloc(GAP_HOLD_MAX, sizeof(*s->held));
    memmove(s->held + i + 1, s->held + i, (s->nheld - i) * sizeof(*s->held));
    s->held[i] = ev;
    atomic_fetch_add(&ev->refs, 1);
    s->nheld++;
    if (atomic_load(&s->gap_since_ms) == 0)
        stream_gap_since(s, chat_mono_ms());
}

ssize_t chat_stream_read(struct chat_stream *s, char *buf, size_t max)
{
    struct chat_delivery *d = s->d;
    for (;;) {
        if (s->out.len > 0) {
            size_t n = s->out.len < max ? s->out.len : max;
            memcpy(buf, s->out.data, n);
            chat_buf_consume(&s->out, n);
            atomic_store(&s->last_write_ms, chat_mono_ms());
            return (ssize_t)n;
        }
        if (!s->started) {
            chat_sse_retry(&s->out, (unsigned)d->cfg->retry_ms);
            stream_read_rows(s);
            s->started = true;
            continue;
        }
        if (s->replaying_pending || s->catching_up) {
            if (stream_read_rows(s) == 0 && s->nheld)
                stream_release_held(s);
            if (s->out.len > 0)
                continue;
        }

        pthread_mutex_lock(&s->lock);
        if (s->closing) {
            pthread_mutex_unlock(&s->lock);
            return -1;
        }
        bool catchup = s->need_catchup, keepalive = s->keepalive_due;
        struct event **q = s->q;
        size_t qn = s->qn;
        if (!catchup && !keepalive && qn == 0) {
            s->parked = true;
            s->park(s->door);
            pthread_mutex_unlock(&s->lock);
            return 0;
        }
        s->need_catchup = s->keepalive_due = false;
        s->q = NULL;
        s->qn = s->qcap = s->qbytes = 0;
        pthread_mutex_unlock(&s->lock);

        if (catchup && !s->nheld)
            stream_read_rows(s);
        for (size_t i = 0; i < qn; i++) {
            if (q[i]->kind == EV_MESSAGE) {
                stream_take_message(s, q[i]);
            } else {
                chat_buf_append(&s->out, q[i]->frame, q[i]->len);
                chat_metric_inc(receipts_sent);
            }
            event_unref(q[i]);
        }
        free(q);
        /* A gap is read once the whole queue is in (it may hold what the
         * gap waits for). */
        if (s->nheld && (catchup || chat_mono_ms() - atomic_load(&s->gap_since_ms) >= GAP_HOLD_MS))
            stream_fill_gap(s);
        if (keepalive && s->out.len == 0)
            chat_sse_comment(&s->out, "keepalive");
    }
}

/* ------------------------------------------------------------------------ */
/* Long-poll waiters                                                        */
/* ------------------------------------------------------------------------ */

struct chat_waiter *chat_waiter_new(struct chat_delivery *d, const char *user, int64_t deadline_ms,
                                    chat_park_fn park, chat_wake_fn wake, void *door)
{
    struct chat_waiter *w = chat_xcalloc(1, sizeof(*w));
    w->d = d;
    snprintf(w->user, sizeof(w->user), "%s", user);
    w->deadline_ms = deadline_ms;
    pthread_mutex_init(&w->lock, NULL);
    w->park = park;
    w->wake = wake;
    w->door = door;
    w->expired = atomic_load(&d->stopping);
    pthread_mutex_lock(&d->hub_lock);
    struct user_entry *e = entry_get(d, user, true);
    w->next = e->waiters;
    if (e->waiters)
        e->waiters->prev = w;
    e->waiters = w;
    bool first = e->held++ == 0;
    pthread_mutex_unlock(&d->hub_lock);
    chat_bus_ref(d->bus, CHAT_CHANNEL_USER, user);
    atomic_fetch_add(&d->waiters, 1);
    chat_metric_inc(polls_waiting);
    if (first)
        user_arrived(d, user);
    return w;
}

bool chat_waiter_park(struct chat_waiter *w)
{
    pthread_mutex_lock(&w->lock);
    if (w->signaled || w->expired || chat_mono_ms() >= w->deadline_ms) {
        w->signaled = false;
        pthread_mutex_unlock(&w->lock);
        return false;
    }
    w->parked = true;
    w->park(w->door);
    pthread_mutex_unlock(&w->lock);
    return true;
}

bool chat_waiter_expired(struct chat_waiter *w)
{
    pthread_mutex_lock(&w->lock);
    bool expired = w->expired || chat_mono_ms() >= w->deadline_ms;
    pthread_mutex_unlock(&w->lock);
    return expired;
}

void chat_waiter_free(struct chat_waiter *w)
{
    if (!w)
        return;
    struct chat_delivery *d = w->d;
    bool gone = false;
    pthread_mutex_lock(&d->hub_lock);
    struct user_entry *e = entry_get(d, w->user, false);
    if (e) {
        if (w->prev)
            w->prev->next = w->next;
        else
            e->waiters = w->next;
        if (w->next)
            w->next->prev = w->prev;
        gone = entry_release(d, e);
    }
    pthread_mutex_unlock(&d->hub_lock);
    if (gone)
        user_left(d, w->user);
    chat_bus_unref(d->bus, CHAT_CHANNEL_USER, w->user);
    pthread_mutex_destroy(&w->lock);
    atomic_fetch_sub(&d->waiters, 1);
    chat_metric_dec(polls_waiting);
    free(w);
}

void chat_delivery_poll_written(struct chat_delivery *d, const char *user, uint64_t after,
                                uint64_t up_to)
{
    apply_written_range(d, chat_store_local(d->cfg), user, after, up_to);
}
