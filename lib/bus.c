/* bus.c: Redis Pub/Sub links on a libevent loop in a thread of their own. */
#include "bus.h"

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>
#include <uthash.h>
#include <utlist.h>

#include "alloc.h"
#include "err.h"
#include "id.h"
#include "log.h"
#include "metrics.h"

#undef uthash_fatal
#define uthash_fatal(msg) abort()

/* Publishes kept while the publisher link is down, at most. */
#define BACKLOG_MAX 100000
/* An unused channel stays subscribed this long, so that a client that
 * reconnects at once does not cost an UNSUBSCRIBE and a SUBSCRIBE. */
#define LINGER_MS 30000
#define BACKOFF_MIN_MS 100

/* ------------------------------------------------------------------------ */
/* Channel names                                                            */
/* ------------------------------------------------------------------------ */

static const char *const kind_names[] = {
    [CHAT_CHANNEL_USER] = "user",
    [CHAT_CHANNEL_ACK] = "ack",
    [CHAT_CHANNEL_CHAT] = "chat",
    [CHAT_KEY_PRESENCE] = "presence",
    [CHAT_CHANNEL_NODE] = "node",
};

int chat_channel_name(char *out, size_t n, const char *prefix, enum chat_channel_kind kind,
                      const char *id)
{
    int len = snprintf(out, n, "%s%s%s:%s", prefix, prefix[0] ? ":" : "", kind_names[kind], id);
    if (len < 0 || (size_t)len >= n)
        return -1;
    return len;
}

int chat_channel_parse(const char *name, const char *prefix, enum chat_channel_kind *kind,
                       const char **id)
{
    size_t plen = strlen(prefix);
    if (plen) {
        if (strncmp(name, prefix, plen) != 0 || name[plen] != ':')
            return -1;
        name += plen + 1;
    }
    for (int k = 0; k < (int)(sizeof(kind_names) / sizeof(kind_names[0])); k++) {
        size_t klen = strlen(kind_names[k]);
        if (strncmp(name, kind_names[k], klen) == 0 && name[klen] == ':' && name[klen + 1]) {
            *kind = (enum chat_channel_kind)k;
            *id = name + klen + 1;
            return 0;
        }
    }
    return -1;
}

/* ------------------------------------------------------------------------ */
/* State                                                                    */
/* ------------------------------------------------------------------------ */

/* A publish, or (argc > 0) any other command, waiting to be sent. */
struct pub_msg {
    struct pub_msg *next;
    struct chat_bus *bus;
    char channel[CHAT_CHANNEL_MAX];
    int argc;
    char **argv;
    size_t *argvlen;
    size_t len;
    char payload[]; /* len bytes */
};

static void pub_msg_free(struct pub_msg *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->argc; i++)
        free(m->argv[i]);
    free(m->argv);
    free(m->argvlen);
    free(m);
}

enum chan_state { CHAN_IDLE, CHAN_SUBSCRIBING, CHAN_SUBSCRIBED, CHAN_UNSUBSCRIBING };

struct chan {
    char name[CHAT_CHANNEL_MAX];
    enum chat_channel_kind kind;
    const char *id; /* into name */
    long refs;
    enum chan_state state;
    int64_t unused_since; /* mono ms when refs fell to 0 */
    /* In the bus's list of channels nobody uses, oldest first, from when
     * refs falls to 0 until it rises again or the channel goes: the tick
     * walks only these, not every channel. */
    bool lingering;
    struct chan *lprev, *lnext;
    struct pub_msg *deferred, **deferred_tail;
    UT_hash_handle hh;
};

enum cmd_type { CMD_REF, CMD_UNREF, CMD_PUBLISH, CMD_COMMAND, CMD_STOP };

struct cmd {
    struct cmd *next;
    enum cmd_type type;
    char channel[CHAT_CHANNEL_MAX];
    char after[CHAT_CHANNEL_MAX];
    struct pub_msg *msg;
};

struct link {
    struct chat_bus *bus;
    const char *name;      /* "subscriber" or "publisher" */
    redisAsyncContext *ac; /* NULL while down; hiredis frees it */
    bool up;               /* Redis has answered on this connection */
    bool ever_up;
    int64_t opened_ms; /* when ac was opened; the watchdog bounds the wait for up */
    int backoff_ms;
    struct event *retry;
};

struct chat_bus {
    const struct chat_config *cfg;
    const struct chat_bus_ops *ops;
    void *ctx;

    pthread_t thread;
    bool started;
    struct event_base *base;
    int wake_fd;
    struct event *wake_ev;
    struct event *tick_ev;

    pthread_mutex_t lock; /* guards cmds */
    struct cmd *cmds, **cmds_tail;

    /* Bus thread only from here on. */
    struct link sub, pub;
    struct chan *chans;
    struct chan *linger; /* refs 0, by unused_since (utlist) */
    struct pub_msg *backlog, **backlog_tail;
    size_t backlog_len;
    bool stopping;

    atomic_bool sub_up, pub_up;
    atomic_ulong generation; /* links come up so far */

    /* The watchdog (bus thread): this process's heartbeat channel, when the
     * heartbeat in flight was sent (0: none), and when the subscriber last
     * heard one (or was subscribed to it). */
    char hb_channel[CHAT_CHANNEL_MAX];
    int64_t hb_sent_ms;
    int64_t hb_heard_ms;
};

/* ------------------------------------------------------------------------ */
/* Publishing                                                               */
/* ------------------------------------------------------------------------ */

static void backlog_push(struct chat_bus *bus, struct pub_msg *m)
{
    if (bus->backlog_len >= BACKLOG_MAX) {
        chat_metric_inc(bus_publish_dropped);
        pub_msg_free(m);
        return;
    }
    m->next = NULL;
    *bus->backlog_tail = m;
    bus->backlog_tail = &m->next;
    bus->backlog_len++;
}

static void on_publish_reply(redisAsyncContext *ac, void *r, void *priv)
{
    struct pub_msg *m = priv;
    redisReply *reply = r;
    if (!reply) {
        /* The link went down with this publish in flight: send it again. */
        if (!m->bus->stopping) {
            backlog_push(m->bus, m);
            return;
        }
    } else if (reply->type == REDIS_REPLY_ERROR) {
        chat_warn("redis: %s %s: %s", m->argc ? m->argv[0] : "PUBLISH", m->channel, reply->str);
    } else if (!m->argc) {
        chat_metric_inc(bus_published);
    }
    pub_msg_free(m);
}

static void send_publish(struct chat_bus *bus, struct pub_msg *m)
{
    if (!bus->pub.up) {
        backlog_push(bus, m);
        return;
    }
    int rc = m->argc ? redisAsyncCommandArgv(bus->pub.ac, on_publish_reply, m, m->argc,
                                             (const char **)m->argv, m->argvlen)
                     : redisAsyncCommand(bus->pub.ac, on_publish_reply, m, "PUBLISH %s %b",
                                         m->channel, m->payload, m->len);
    if (rc != REDIS_OK)
        backlog_push(bus, m);
}

static void flush_backlog(struct chat_bus *bus)
{
    struct pub_msg *m = bus->backlog;
    bus->backlog = NULL;
    bus->backlog_tail = &bus->backlog;
    bus->backlog_len = 0;
    while (m) {
        struct pub_msg *next = m->next;
        send_publish(bus, m);
        m = next;
    }
}

static void flush_deferred(struct chat_bus *bus, struct chan *c)
{
    struct pub_msg *m = c->deferred;
    c->deferred = NULL;
    c->deferred_tail = &c->deferred;
    while (m) {
        struct pub_msg *next = m->next;
        send_publish(bus, m);
        m = next;
    }
}

/* ------------------------------------------------------------------------ */
/* Subscribing                                                              */
/* ------------------------------------------------------------------------ */

static struct chan *chan_get(struct chat_bus *bus, const char *name, bool create)
{
    struct chan *c;
    HASH_FIND_STR(bus->chans, name, c);
    if (c || !create)
        return c;
    c = chat_xcalloc(1, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "%s", name);
    if (chat_channel_parse(c->name, bus->cfg->channel_prefix, &c->kind, &c->id) != 0) {
        free(c);
        return NULL;
    }
    c->deferred_tail = &c->deferred;
    HASH_ADD_STR(bus->chans, name, c);
    return c;
}

static void linger_add(struct chat_bus *bus, struct chan *c)
{
    c->lingering = true;
    DL_APPEND2(bus->linger, c, lprev, lnext);
}

static void linger_del(struct chat_bus *bus, struct chan *c)
{
    if (c->lingering) {
        c->lingering = false;
        DL_DELETE2(bus->linger, c, lprev, lnext);
    }
}

static void chan_free(struct chat_bus *bus, struct chan *c)
{
    linger_del(bus, c);
    HASH_DEL(bus->chans, c);
    flush_deferred(bus, c);
    free(c);
}

static void on_sub_reply(redisAsyncContext *ac, void *r, void *priv);

static void subscribe(struct chat_bus *bus, struct chan *c)
{
    c->state = CHAN_SUBSCRIBING;
    if (bus->sub.up &&
        redisAsyncCommand(bus->sub.ac, on_sub_reply, NULL, "SUBSCRIBE %s", c->name) != REDIS_OK)
        chat_warn("redis: SUBSCRIBE %s could not be queued", c->name);
}

static void unsubscribe(struct chat_bus *bus, struct chan *c)
{
    if (!bus->sub.up) {
        chan_free(bus, c);
        return;
    }
    c->state = CHAN_UNSUBSCRIBING;
    redisAsyncCommand(bus->sub.ac, on_sub_reply, NULL, "UNSUBSCRIBE %s", c->name);
}

static void on_sub_reply(redisAsyncContext *ac, void *r, void *priv)
{
    struct chat_bus *bus = ac->data;
    redisReply *reply = r;
    if (!reply || !bus || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3)
        return;
    const char *type = reply->element[0]->str;
    redisReply *name = reply->element[1];
    if (!type || name->type != REDIS_REPLY_STRING || name->len >= CHAT_CHANNEL_MAX)
        return;
    struct chan *c = chan_get(bus, name->str, false);
    if (c && c->kind == CHAT_CHANNEL_NODE) {
        /* The heartbeat: a message, or the subscription confirmed. */
        bus->hb_heard_ms = chat_mono_ms();
        if (strcmp(type, "subscribe") == 0)
            c->state = CHAN_SUBSCRIBED;
        return;
    }
    if (strcmp(type, "message") == 0) {
        redisReply *payload = reply->element[2];
        chat_metric_inc(bus_received);
        if (c && payload->type == REDIS_REPLY_STRING)
            bus->ops->on_message(bus->ctx, c->kind, c->id, payload->str, payload->len);
    } else if (strcmp(type, "subscribe") == 0) {
        if (!c)
            return;
        c->state = CHAN_SUBSCRIBED;
        flush_deferred(bus, c);
        bus->ops->on_subscribed(bus->ctx, c->kind, c->id);
    } else if (strcmp(type, "unsubscribe") == 0) {
        if (!c)
            return;
        if (c->refs > 0)
            subscribe(bus, c); /* used again while the UNSUBSCRIBE was on its way */
        else
            chan_free(bus, c);
    }
}

static void do_ref(struct chat_bus *bus, const char *name)
{
    struct chan *c = chan_get(bus, name, true);
    if (!c)
        return;
    if (c->refs++ > 0)
        return;
    linger_del(bus, c);
    if (c->state == CHAN_IDLE)
        subscribe(bus, c);
    /* SUBSCRIBING/SUBSCRIBED: already ours. UNSUBSCRIBING: the reply resubscribes. */
}

static void do_unref(struct chat_bus *bus, const char *name)
{
    struct chan *c = chan_get(bus, name, false);
    if (!c || c->refs == 0)
        return;
    if (--c->refs == 0) {
        c->unused_since = chat_mono_ms();
        linger_add(bus, c);
    }
}

/* ------------------------------------------------------------------------ */
/* Links                                                                    */
/* ------------------------------------------------------------------------ */

static void link_connect(struct link *l);
static void link_ready(struct link *l);

static void link_schedule_retry(struct link *l)
{
    if (l->bus->stopping)
        return;
    int cap = l->bus->cfg->redis_reconnect_max_ms;
    l->backoff_ms = l->backoff_ms ? l->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (l->backoff_ms > cap)
        l->backoff_ms = cap;
    /* Jitter in [backoff/2, backoff] so that nodes do not reconnect in step. */
    int ms = l->backoff_ms / 2 + (int)(random() % (l->backoff_ms / 2 + 1));
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(l->retry, &tv);
}

static void link_down(struct link *l)
{
    struct chat_bus *bus = l->bus;
    bool was_up = l->up;
    l->ac = NULL;
    l->up = false;
    if (l == &bus->sub) {
        atomic_store(&bus->sub_up, false);
        /* Every subscription is gone; what waited on one is sent anyway. */
        struct chan *c, *tmp;
        HASH_ITER (hh, bus->chans, c, tmp) {
            flush_deferred(bus, c);
            if (c->state == CHAN_UNSUBSCRIBING && c->refs == 0)
                chan_free(bus, c);
            else
                c->state = CHAN_IDLE;
        }
    } else {
        atomic_store(&bus->pub_up, false);
    }
    if (was_up && !bus->stopping)
        chat_warn("redis: %s link lost", l->name);
    link_schedule_retry(l);
}

/* The link answered its first PING (after AUTH, queued before it): Redis is
 * there, not only a TCP peer. */
static void on_hello(redisAsyncContext *ac, void *r, void *priv)
{
    struct chat_bus *bus = ac->data;
    redisReply *reply = r;
    if (!bus || !reply)
        return; /* the link went down meanwhile: on_disconnect handles it */
    struct link *l = (ac == bus->sub.ac) ? &bus->sub : &bus->pub;
    if (reply->type == REDIS_REPLY_ERROR) {
        /* NOAUTH and the like: stay not ready; the watchdog drops the link
         * after [redis] timeout and it retries with backoff. */
        chat_warn("redis: %s link: PING answered %s", l->name, reply->str);
        return;
    }
    link_ready(l);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct chat_bus *bus = ac->data;
    struct link *l = (ac == bus->sub.ac) ? &bus->sub : &bus->pub;
    if (status != REDIS_OK) {
        chat_warn("redis: %s connect to %s:%d failed: %s", l->name, bus->cfg->redis_host,
                  bus->cfg->redis_port, ac->errstr);
        /* hiredis frees a context that failed to connect after this returns. */
        link_down(l);
        return;
    }
    /* A TCP connection is not yet Redis: a proxy or a half-dead network
     * accepts and then says nothing. The link is up once PING answers. */
    redisAsyncCommand((redisAsyncContext *)ac, on_hello, NULL, "PING");
}

static void link_ready(struct link *l)
{
    struct chat_bus *bus = l->bus;
    l->up = true;
    l->backoff_ms = 0;
    if (l->ever_up)
        chat_metric_inc(bus_reconnects);
    l->ever_up = true;
    atomic_fetch_add(&bus->generation, 1);
    chat_info("redis: %s link up", l->name);
    if (l == &bus->sub) {
        atomic_store(&bus->sub_up, true);
        struct chan *c, *tmp;
        HASH_ITER (hh, bus->chans, c, tmp) {
            if (c->refs > 0)
                subscribe(bus, c);
            else
                chan_free(bus, c);
        }
    } else {
        atomic_store(&bus->pub_up, true);
        flush_backlog(bus);
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct chat_bus *bus = ac->data;
    struct link *l = (ac == bus->sub.ac) ? &bus->sub : &bus->pub;
    /* hiredis frees the context after this callback: forget it here. */
    link_down(l);
}

static void on_auth_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        chat_error("redis: AUTH failed: %s", reply->str);
}

static void link_connect(struct link *l)
{
    struct chat_bus *bus = l->bus;
    redisAsyncContext *ac = redisAsyncConnect(bus->cfg->redis_host, bus->cfg->redis_port);
    if (!ac || ac->err) {
        chat_warn("redis: %s: %s", l->name, ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        link_schedule_retry(l);
        return;
    }
    ac->data = bus;
    l->ac = ac;
    l->opened_ms = chat_mono_ms();
    redisLibeventAttach(ac, bus->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* Commands queue up until the connection completes; AUTH goes first
     * (with a user name: a Redis 6 ACL user). */
    const struct chat_config *cfg = bus->cfg;
    if (cfg->redis_password[0] && cfg->redis_user[0])
        redisAsyncCommand(ac, on_auth_reply, NULL, "AUTH %s %s", cfg->redis_user,
                          cfg->redis_password);
    else if (cfg->redis_password[0])
        redisAsyncCommand(ac, on_auth_reply, NULL, "AUTH %s", cfg->redis_password);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    link_connect(arg);
}

/* Drops a link that is open but silent; it reconnects like a lost one.
 * redisAsyncFree runs every pending callback with no reply (publishes in
 * flight go back to the backlog) and then on_disconnect. */
static void link_drop(struct link *l, int64_t silent_ms)
{
    chat_warn("redis: %s link silent for %lld ms; reconnecting", l->name, (long long)silent_ms);
    redisAsyncContext *ac = l->ac;
    redisAsyncFree(ac);
    if (l->ac == ac) /* hiredis did not call on_disconnect (never connected) */
        link_down(l);
}

static void on_heartbeat_reply(redisAsyncContext *ac, void *r, void *priv)
{
    struct chat_bus *bus = ac->data;
    if (bus && r)
        bus->hb_sent_ms = 0;
}

/* Once a second: checks both links and sends the next heartbeat. */
static void watchdog(struct chat_bus *bus, int64_t now)
{
    int64_t limit = (int64_t)bus->cfg->redis_timeout * 1000;
    /* A link opened but never answering (connect or PING hanging). */
    struct link *links[] = {&bus->sub, &bus->pub};
    for (size_t i = 0; i < 2; i++) {
        struct link *l = links[i];
        if (l->ac && !l->up && now - l->opened_ms > limit)
            link_drop(l, now - l->opened_ms);
    }
    if (!bus->pub.up) {
        bus->hb_sent_ms = 0;
    } else if (bus->hb_sent_ms && now - bus->hb_sent_ms > limit) {
        link_drop(&bus->pub, now - bus->hb_sent_ms);
        bus->hb_sent_ms = 0;
    } else if (!bus->hb_sent_ms) {
        char ms[24];
        snprintf(ms, sizeof(ms), "%lld", (long long)now);
        if (redisAsyncCommand(bus->pub.ac, on_heartbeat_reply, NULL, "PUBLISH %s %s",
                              bus->hb_channel, ms) == REDIS_OK)
            bus->hb_sent_ms = now;
    }
    struct chan *hb = chan_get(bus, bus->hb_channel, false);
    if (!bus->sub.up || !hb || hb->state != CHAN_SUBSCRIBED) {
        bus->hb_heard_ms = now;
        return;
    }
    /* Heartbeats are being published (the publisher answers) but none
     * arrives: the subscriber is the one cut off. */
    bool pub_ok = bus->pub.up && (!bus->hb_sent_ms || now - bus->hb_sent_ms <= limit);
    if (pub_ok && now - bus->hb_heard_ms > limit) {
        link_drop(&bus->sub, now - bus->hb_heard_ms);
        bus->hb_heard_ms = now;
    }
}

/* ------------------------------------------------------------------------ */
/* The thread                                                               */
/* ------------------------------------------------------------------------ */

static void run_cmd(struct chat_bus *bus, struct cmd *cmd)
{
    switch (cmd->type) {
    case CMD_REF:
        do_ref(bus, cmd->channel);
        break;
    case CMD_UNREF:
        do_unref(bus, cmd->channel);
        break;
    case CMD_COMMAND:
        send_publish(bus, cmd->msg);
        cmd->msg = NULL;
        break;
    case CMD_PUBLISH: {
        struct chan *after = cmd->after[0] ? chan_get(bus, cmd->after, false) : NULL;
        if (after && after->state == CHAN_SUBSCRIBING && bus->sub.up) {
            cmd->msg->next = NULL;
            *after->deferred_tail = cmd->msg;
            after->deferred_tail = &cmd->msg->next;
        } else {
            send_publish(bus, cmd->msg);
        }
        cmd->msg = NULL;
        break;
    }
    case CMD_STOP:
        bus->stopping = true;
        event_base_loopbreak(bus->base);
        break;
    }
    pub_msg_free(cmd->msg);
    free(cmd);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    struct chat_bus *bus = arg;
    uint64_t n;
    if (read(bus->wake_fd, &n, sizeof(n)) < 0) {
        /* EAGAIN: another wake already drained it. */
    }
    pthread_mutex_lock(&bus->lock);
    struct cmd *cmd = bus->cmds;
    bus->cmds = NULL;
    bus->cmds_tail = &bus->cmds;
    pthread_mutex_unlock(&bus->lock);
    while (cmd && !bus->stopping) {
        struct cmd *next = cmd->next;
        run_cmd(bus, cmd);
        cmd = next;
    }
    while (cmd) {
        struct cmd *next = cmd->next;
        pub_msg_free(cmd->msg);
        free(cmd);
        cmd = next;
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct chat_bus *bus = arg;
    int64_t now = chat_mono_ms();
    /* Oldest first: the walk stops at the first that may still linger. */
    struct chan *c;
    while ((c = bus->linger) && now - c->unused_since > LINGER_MS) {
        linger_del(bus, c);
        if (c->state != CHAN_UNSUBSCRIBING)
            unsubscribe(bus, c);
    }
    watchdog(bus, now);
    bus->ops->on_tick(bus->ctx);
}

static void *bus_main(void *arg)
{
    struct chat_bus *bus = arg;
    do_ref(bus, bus->hb_channel); /* held for the life of the bus */
    link_connect(&bus->sub);
    link_connect(&bus->pub);
    event_base_dispatch(bus->base);
    /* Stopping: close the links; their disconnect callbacks run inside. */
    bus->stopping = true;
    if (bus->sub.ac)
        redisAsyncDisconnect(bus->sub.ac);
    if (bus->pub.ac)
        redisAsyncDisconnect(bus->pub.ac);
    /* Let hiredis finish the disconnects it scheduled. */
    event_base_loop(bus->base, EVLOOP_NONBLOCK);
    return NULL;
}

/* Only the command that finds the queue empty wakes the thread: it takes
 * the whole queue at once after the wake, so the ones queued behind go
 * with it (under load, one wake and one write to Redis for many). */
static void enqueue(struct chat_bus *bus, struct cmd *cmd)
{
    cmd->next = NULL;
    pthread_mutex_lock(&bus->lock);
    bool wake = bus->cmds == NULL;
    *bus->cmds_tail = cmd;
    bus->cmds_tail = &cmd->next;
    pthread_mutex_unlock(&bus->lock);
    uint64_t one = 1;
    if (wake && write(bus->wake_fd, &one, sizeof(one)) < 0) {
        /* The counter is saturated only if the thread is gone: nothing to do. */
    }
}

struct chat_bus *chat_bus_new(const struct chat_config *cfg, const struct chat_bus_ops *ops,
                              void *ctx)
{
    struct chat_bus *bus = chat_xcalloc(1, sizeof(*bus));
    bus->cfg = cfg;
    bus->ops = ops;
    bus->ctx = ctx;
    bus->wake_fd = -1;
    pthread_mutex_init(&bus->lock, NULL);
    bus->cmds_tail = &bus->cmds;
    bus->backlog_tail = &bus->backlog;
    bus->sub = (struct link){.bus = bus, .name = "subscriber"};
    bus->pub = (struct link){.bus = bus, .name = "publisher"};
    /* The heartbeat channel: unique to this process (pid and a random part). */
    char hb_id[48];
    uint32_t r = 0;
    if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r))
        r = (uint32_t)chat_mono_ms();
    snprintf(hb_id, sizeof(hb_id), "%ld-%08lx", (long)getpid(), (unsigned long)r);
    if (chat_channel_name(bus->hb_channel, sizeof(bus->hb_channel), cfg->channel_prefix,
                          CHAT_CHANNEL_NODE, hb_id) < 0)
        goto fail;

    bus->base = event_base_new();
    if (!bus->base)
        goto fail;
    bus->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (bus->wake_fd < 0)
        goto fail;
    bus->wake_ev = event_new(bus->base, bus->wake_fd, EV_READ | EV_PERSIST, on_wake, bus);
    bus->tick_ev = event_new(bus->base, -1, EV_PERSIST, on_tick, bus);
    bus->sub.retry = evtimer_new(bus->base, on_retry, &bus->sub);
    bus->pub.retry = evtimer_new(bus->base, on_retry, &bus->pub);
    if (!bus->wake_ev || !bus->tick_ev || !bus->sub.retry || !bus->pub.retry)
        goto fail;
    struct timeval second = {1, 0};
    event_add(bus->wake_ev, NULL);
    event_add(bus->tick_ev, &second);
    return bus;
fail:
    chat_error("bus: cannot set up the event loop");
    chat_bus_free(bus);
    return NULL;
}

int chat_bus_start(struct chat_bus *bus)
{
    if (pthread_create(&bus->thread, NULL, bus_main, bus) != 0)
        return CHAT_EINTERNAL;
    bus->started = true;
    return 0;
}

void chat_bus_stop(struct chat_bus *bus)
{
    if (!bus || !bus->started)
        return;
    struct cmd *cmd = chat_xcalloc(1, sizeof(*cmd));
    cmd->type = CMD_STOP;
    enqueue(bus, cmd);
    pthread_join(bus->thread, NULL);
    bus->started = false;
}

void chat_bus_free(struct chat_bus *bus)
{
    if (!bus)
        return;
    chat_bus_stop(bus);
    struct chan *c, *tmp;
    HASH_ITER (hh, bus->chans, c, tmp) {
        HASH_DEL(bus->chans, c);
        struct pub_msg *m = c->deferred;
        while (m) {
            struct pub_msg *next = m->next;
            pub_msg_free(m);
            m = next;
        }
        free(c);
    }
    struct pub_msg *m = bus->backlog;
    while (m) {
        struct pub_msg *next = m->next;
        pub_msg_free(m);
        m = next;
    }
    struct cmd *cmd = bus->cmds;
    while (cmd) {
        struct cmd *next = cmd->next;
        pub_msg_free(cmd->msg);
        free(cmd);
        cmd = next;
    }
    if (bus->wake_ev)
        event_free(bus->wake_ev);
    if (bus->tick_ev)
        event_free(bus->tick_ev);
    if (bus->sub.retry)
        event_free(bus->sub.retry);
    if (bus->pub.retry)
        event_free(bus->pub.retry);
    if (bus->base)
        event_base_free(bus->base);
    if (bus->wake_fd >= 0)
        close(bus->wake_fd);
    pthread_mutex_destroy(&bus->lock);
    free(bus);
}

static struct cmd *channel_cmd(struct chat_bus *bus, enum cmd_type type,
                               enum chat_channel_kind kind, const char *id)
{
    struct cmd *cmd = chat_xcalloc(1, sizeof(*cmd));
    cmd->type = type;
    if (chat_channel_name(cmd->channel, sizeof(cmd->channel), bus->cfg->channel_prefix, kind, id) <
        0) {
        free(cmd);
        return NULL;
    }
    return cmd;
}

void chat_bus_ref(struct chat_bus *bus, enum chat_channel_kind kind, const char *id)
{
    struct cmd *cmd = channel_cmd(bus, CMD_REF, kind, id);
    if (cmd)
        enqueue(bus, cmd);
}

void chat_bus_unref(struct chat_bus *bus, enum chat_channel_kind kind, const char *id)
{
    struct cmd *cmd = channel_cmd(bus, CMD_UNREF, kind, id);
    if (cmd)
        enqueue(bus, cmd);
}

void chat_bus_publish(struct chat_bus *bus, enum chat_channel_kind kind, const char *id,
                      const char *payload, size_t len, enum chat_channel_kind after_kind,
                      const char *after_id)
{
    struct cmd *cmd = channel_cmd(bus, CMD_PUBLISH, kind, id);
    if (!cmd)
        return;
    if (after_id && chat_channel_name(cmd->after, sizeof(cmd->after), bus->cfg->channel_prefix,
                                      after_kind, after_id) < 0)
        cmd->after[0] = '\0';
    struct pub_msg *m = chat_xcalloc(1, sizeof(*m) + len);
    m->bus = bus;
    memcpy(m->channel, cmd->channel, sizeof(m->channel));
    m->len = len;
    memcpy(m->payload, payload, len);
    cmd->msg = m;
    enqueue(bus, cmd);
}

void chat_bus_command(struct chat_bus *bus, int argc, const char **argv)
{
    struct cmd *cmd = chat_xcalloc(1, sizeof(*cmd));
    cmd->type = CMD_COMMAND;
    struct pub_msg *m = chat_xcalloc(1, sizeof(*m));
    m->bus = bus;
    snprintf(m->channel, sizeof(m->channel), "%s", argc > 1 ? argv[1] : "");
    m->argc = argc;
    m->argv = chat_xcalloc((size_t)argc, sizeof(*m->argv));
    m->argvlen = chat_xcalloc((size_t)argc, sizeof(*m->argvlen));
    for (int i = 0; i < argc; i++) {
        m->argv[i] = chat_xstrdup(argv[i]);
        m->argvlen[i] = strlen(argv[i]);
    }
    cmd->msg = m;
    enqueue(bus, cmd);
}

/* ------------------------------------------------------------------------ */
/* Presence: a synchronous connection per calling thread                    */
/* ------------------------------------------------------------------------ */

static pthread_key_t sync_key;
static _Thread_local int64_t sync_retry_at; /* mono ms */
static pthread_once_t sync_once = PTHREAD_ONCE_INIT;

static void sync_free(void *p)
{
    redisFree(p);
}

static void sync_init(void)
{
    pthread_key_create(&sync_key, sync_free);
}

/* This thread's connection, or NULL (logged) when Redis does not answer. */
static redisContext *sync_ctx(struct chat_bus *bus)
{
    pthread_once(&sync_once, sync_init);
    redisContext *c = pthread_getspecific(sync_key);
    if (c)
        return c;
    /* After a failure, fail fast for a second rather than make every send
     * and stream open wait out a connect timeout. */
    int64_t now = chat_mono_ms();
    if (now < sync_retry_at)
        return NULL;
    struct timeval tv = {1, 0};
    c = redisConnectWithTimeout(bus->cfg->redis_host, bus->cfg->redis_port, tv);
    if (!c || c->err) {
        chat_warn("redis: presence: %s", c ? c->errstr : "out of memory");
        redisFree(c);
        sync_retry_at = now + 1000;
        return NULL;
    }
    redisSetTimeout(c, tv);
    if (bus->cfg->redis_password[0]) {
        const struct chat_config *cfg = bus->cfg;
        redisReply *r = cfg->redis_user[0]
                            ? redisCommand(c, "AUTH %s %s", cfg->redis_user, cfg->redis_password)
                            : redisCommand(c, "AUTH %s", cfg->redis_password);
        bool ok = r && r->type != REDIS_REPLY_ERROR;
        freeReplyObject(r);
        if (!ok) {
            redisFree(c);
            return NULL;
        }
    }
    pthread_setspecific(sync_key, c);
    return c;
}

/* Drops this thread's connection after an error, so the next call reconnects. */
static int sync_fail(void)
{
    redisContext *c = pthread_getspecific(sync_key);
    if (c) {
        redisFree(c);
        pthread_setspecific(sync_key, NULL);
    }
    sync_retry_at = chat_mono_ms() + 1000;
    return CHAT_EUNAVAIL;
}

static int presence_key(struct chat_bus *bus, const char *user, char key[CHAT_CHANNEL_MAX])
{
    return chat_channel_name(key, CHAT_CHANNEL_MAX, bus->cfg->channel_prefix, CHAT_KEY_PRESENCE,
                             user) < 0
               ? CHAT_EINVAL
               : 0;
}

int chat_bus_presence_join(struct chat_bus *bus, const char *user, const char *node,
                           int64_t expiry_ms, int64_t ttl_ms)
{
    char key[CHAT_CHANNEL_MAX];
    redisContext *c = sync_ctx(bus);
    if (!c || presence_key(bus, user, key))
        return CHAT_EUNAVAIL;
    redisAppendCommand(c, "ZADD %s %lld %s", key, (long long)expiry_ms, node);
    redisAppendCommand(c, "PEXPIRE %s %lld", key, (long long)ttl_ms);
    for (int i = 0; i < 2; i++) {
        redisReply *r = NULL;
        if (redisGetReply(c, (void **)&r) != REDIS_OK || !r || r->type == REDIS_REPLY_ERROR) {
            freeReplyObject(r);
            return sync_fail();
        }
        freeReplyObject(r);
    }
    return 0;
}

int chat_bus_presence_leave(struct chat_bus *bus, const char *user, const char *node,
                            int64_t now_ms, bool *others)
{
    char key[CHAT_CHANNEL_MAX];
    *others = false;
    redisContext *c = sync_ctx(bus);
    if (!c || presence_key(bus, user, key))
        return CHAT_EUNAVAIL;
    redisAppendCommand(c, "ZREM %s %s", key, node);
    redisAppendCommand(c, "ZCOUNT %s %lld +inf", key, (long long)now_ms);
    for (int i = 0; i < 2; i++) {
        redisReply *r = NULL;
        if (redisGetReply(c, (void **)&r) != REDIS_OK || !r || r->type == REDIS_REPLY_ERROR) {
            freeReplyObject(r);
            return sync_fail();
        }
        if (i == 1)
            *others = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
        freeReplyObject(r);
    }
    return 0;
}

int chat_bus_presence_get(struct chat_bus *bus, const char *const *users, size_t n,
                          const char *node, int64_t now_ms, unsigned char *state)
{
    redisContext *c = sync_ctx(bus);
    if (!c)
        return CHAT_EUNAVAIL;
    for (size_t i = 0; i < n; i++) {
        char key[CHAT_CHANNEL_MAX];
        if (presence_key(bus, users[i], key))
            snprintf(key, sizeof(key), "-");
        redisAppendCommand(c, "ZRANGEBYSCORE %s %lld +inf LIMIT 0 2", key, (long long)now_ms);
    }
    int err = 0;
    for (size_t i = 0; i < n; i++) {
        redisReply *r = NULL;
        if (redisGetReply(c, (void **)&r) != REDIS_OK || !r) {
            freeReplyObject(r);
            return sync_fail(); /* the rest of the replies are lost with the link */
        }
        state[i] = 0;
        if (r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
            bool only_me = r->elements == 1 && r->element[0]->type == REDIS_REPLY_STRING &&
                           strcmp(r->element[0]->str, node) == 0;
            state[i] = only_me ? 1 : 2;
        } else if (r->type == REDIS_REPLY_ERROR) {
            err = CHAT_EUNAVAIL;
        }
        freeReplyObject(r);
    }
    return err;
}

unsigned long chat_bus_generation(const struct chat_bus *bus)
{
    return atomic_load(&bus->generation);
}

bool chat_bus_up(const struct chat_bus *bus)
{
    return atomic_load(&bus->sub_up) && atomic_load(&bus->pub_up);
}
