/* chatd.c: the libmicrohttpd door. It turns MHD requests into lib/api calls,
 * holds long-polls by suspending their connections and serves SSE streams
 * from its own stream loops once MHD has sent their head, so that an idle
 * one costs no thread, no CPU and little memory. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <utlist.h>

#include "alloc.h"
#include "api/api.h"
#include "buf.h"
#include "config.h"
#include "delivery.h"
#include "err.h"
#include "id.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "query.h"

/* What a stream loop reads from a stream per write. */
#define LOOP_BLOCK 16384
/* The least time between two rounds of keepalives in a stream loop. */
#define KEEPALIVE_ROUND_MS 200

struct sse;

/* A thread that serves the streams handed to it: an epoll set of their
 * sockets (for the client hanging up and for room to write) and a list of
 * the streams the delivery woke. An idle stream is a socket, a struct sse
 * and the delivery's own stream: no thread, no MHD connection, no pool. */
struct stream_loop {
    struct stream_loops *owner;
    int epfd;
    int wake_fd; /* eventfd: ready has entries, or stopping */
    pthread_t thread;
    bool started;
    pthread_mutex_t lock; /* guards ready, ready_tail and stopping */
    struct sse *ready;    /* woken or handed over, to be pumped */
    struct sse **ready_tail;
    size_t nready;
    bool stopping;
    struct sse *all;               /* loop thread only: every stream it serves, by last write */
    struct sse *grave;             /* loop thread only: ended, freed after this round */
    char buf[16 + LOOP_BLOCK + 2]; /* chunk size line, block, CRLF */
};

struct stream_loops {
    struct stream_loop *v;
    int n;
    int64_t keepalive_ms;      /* [delivery] keepalive */
    int64_t stuck_ms;          /* [server] connection_timeout */
    atomic_uint next;          /* round robin */
    atomic_int served;         /* streams the loops serve, for max_connections */
};

/* Threads that run REST requests off libmicrohttpd's threads. An HTTP
 * thread serves many connections, streams among them: a send that waited
 * there for its COMMIT would hold up every other connection of that thread,
 * and sends on one thread could never share a transaction. A request is
 * suspended, run here, and resumed with its answer. */
struct workers {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct req *head, **tail; /* FIFO */
    bool stopping;
    pthread_t *threads;
    int n;
};

struct chatd {
    struct chat_config cfg;
    struct stream_loops loops;
    struct workers workers;
    struct chat_delivery *delivery;
    struct chat_api *api;
    struct MHD_Daemon *mhd;
};

/* One HTTP request: MHD's con_cls. */
struct req {
    struct chatd *chatd;
    struct MHD_Connection *conn;
    struct chat_buf body;
    bool too_large; /* the body passed max_body_bytes while it came */
    bool started;   /* creq is built */
    bool answered;  /* an error was queued from the head alone */
    bool offloaded; /* handed to a worker; resp is its answer once resumed */
    bool http11;    /* an HTTP/1.1 request: a stream's body is chunked */
    struct chat_request creq;
    struct chat_response resp; /* a worker's answer */
    struct req *next;          /* in the worker queue */
};

/* The door side of an SSE stream, from the hand-over on: a stream loop's.
 * 'queued' and 'dead' are guarded by the loop's lock, the rest is the loop
 * thread's (fd is also read by sse_drop). */
struct sse {
    atomic_int fd;
    bool http11; /* the body is chunked */
    struct chat_stream *stream;
    struct stream_loop *loop;
    struct sse *next_ready;
    bool queued;             /* in the loop's ready list */
    bool dead;               /* ended: freed once off the ready list */
    bool fresh;              /* handed over, not yet in the loop's epoll set */
    bool blocked;            /* the socket was full: waits for EPOLLOUT */
    int64_t last_ms;         /* the last write (mono ms) */
    int64_t progress_ms;     /* the last time the socket took bytes */
    struct sse *prev, *next; /* in the loop's list of all, by last_ms; next: grave once ended */
    char *pend;              /* unsent bytes of the last write */
    size_t pend_off, pend_len;
};

/* ------------------------------------------------------------------------ */
/* Holding requests: park = suspend, wake = resume                          */
/* ------------------------------------------------------------------------ */

static void req_park(void *door)
{
    MHD_suspend_connection(((struct req *)door)->conn);
}

static void req_wake(void *door)
{
    MHD_resume_connection(((struct req *)door)->conn);
}

/* ------------------------------------------------------------------------ */
/* Adapter                                                                  */
/* ------------------------------------------------------------------------ */

static const char *req_header(void *door, const char *name)
{
    return MHD_lookup_connection_value(((struct req *)door)->conn, MHD_HEADER_KIND, name);
}

static const char *req_arg(void *door, const char *name)
{
    return MHD_lookup_connection_value(((struct req *)door)->conn, MHD_GET_ARGUMENT_KIND, name);
}

struct framing {
    int content_length;
    int transfer_encoding;
    bool other_coding; /* a Transfer-Encoding other than exactly "chunked" */
};

static enum MHD_Result count_framing(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    struct framing *f = cls;
    if (strcasecmp(key, "Content-Length") == 0) {
        f->content_length++;
    } else if (strcasecmp(key, "Transfer-Encoding") == 0) {
        f->transfer_encoding++;
        if (strcasecmp(value, "chunked") != 0)
            f->other_coding = true;
    }
    return MHD_YES;
}

/* Why the head of a request already rules it out, or NULL. libmicrohttpd
 * 0.9.75 takes the first of two Content-Length headers and ignores the
 * second (request smuggling), and waits for a body it cannot frame under a
 * transfer coding it does not know (gzip, identity) until the connection
 * times out: both are refused here, before any body is read. */
static const char *framing_problem(struct MHD_Connection *conn)
{
    struct framing f = {0, 0, false};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, count_framing, &f);
    if (f.content_length > 1 || (f.content_length && f.transfer_encoding))
        return "ambiguous message framing: more than one Content-Length, "
               "or Content-Length with Transfer-Encoding";
    if (f.transfer_encoding > 1 || f.other_coding)
        return "unsupported Transfer-Encoding: only chunked is accepted";
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Stream loops                                                             */
/* ------------------------------------------------------------------------ */

/* Puts s on its loop's ready list unless it is there; any thread. */
static void loop_queue(struct stream_loop *l, struct sse *s)
{
    pthread_mutex_lock(&l->lock);
    bool was_empty = l->ready == NULL;
    if (!s->queued) {
        s->queued = true;
        s->next_ready = NULL;
        *l->ready_tail = s;
        l->ready_tail = &s->next_ready;
        l->nready++;
    }
    pthread_mutex_unlock(&l->lock);
    uint64_t one = 1;
    if (was_empty && write(l->wake_fd, &one, sizeof(one)) < 0)
        chat_warn("stream loop: cannot wake: %s", strerror(errno));
}

/* The stream's door in a loop: parking is just returning to the loop; the
 * wake puts it on the ready list. */
static void loop_park(void *door)
{
    (void)door;
}

static void loop_wake(void *door)
{
    struct sse *s = door;
    loop_queue(s->loop, s);
}

/* Ends s: no wake and no drop can follow chat_stream_close, so the socket
 * is closed after it. Freed at the end of the round, or once off the ready
 * list, since events of this round may still name it. */
static void loop_end(struct stream_loop *l, struct sse *s, struct stream_loops *all)
{
    int fd = atomic_exchange(&s->fd, -1);
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
    DL_DELETE(l->all, s);
    chat_stream_close(s->stream);
    s->stream = NULL;
    close(fd);
    free(s->pend);
    s->pend = NULL;
    atomic_fetch_sub(&all->served, 1);
    pthread_mutex_lock(&l->lock);
    s->dead = true;
    bool queued = s->queued;
    pthread_mutex_unlock(&l->lock);
    if (!queued) {
        s->next = l->grave;
        l->grave = s;
    }
}

/* Sends what the socket takes of len bytes at data, now. Returns the
 * count (0 when the socket is full), or -1 when the connection failed. */
static ssize_t loop_send_some(struct sse *s, const char *data, size_t len, int64_t now)
{
    ssize_t w = send(atomic_load(&s->fd), data, len, MSG_NOSIGNAL);
    if (w < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
    if (w > 0)
        s->progress_ms = now;
    return w;
}

/* Sends len bytes from data; what the socket does not take now is kept
 * for EPOLLOUT. False when the connection failed. */
static bool loop_send(struct sse *s, const char *data, size_t len, int64_t now)
{
    ssize_t w = loop_send_some(s, data, len, now);
    if (w < 0)
        return false;
    if ((size_t)w < len) {
        s->pend_len = len - (size_t)w;
        s->pend_off = 0;
        s->pend = chat_xmalloc(s->pend_len);
        memcpy(s->pend, data + w, s->pend_len);
        s->blocked = true;
    }
    return true;
}

/* Sends what is left of the last write. Returns 1 when it is all out, 0
 * when the socket is full again, -1 when the connection failed. */
static int loop_flush(struct sse *s)
{
    ssize_t w = loop_send_some(s, s->pend + s->pend_off, s->pend_len - s->pend_off, chat_mono_ms());
    if (w < 0)
        return -1;
    s->pend_off += (size_t)w;
    if (s->pend_off < s->pend_len)
        return 0;
    free(s->pend);
    s->pend = NULL;
    return 1;
}

/* s was written at now: it goes to the end of the loop's list, which is
 * kept in the order of the last write. */
static void loop_touch(struct stream_loop *l, struct sse *s, int64_t now)
{
    s->last_ms = now;
    DL_DELETE(l->all, s);
    DL_APPEND(l->all, s);
}

/* Writes the len bytes at l->buf + 16 to s, as one chunk under HTTP/1.1
 * (its size line goes in front, in the 16 bytes kept for it). False when
 * the connection failed. */
static bool loop_write(struct stream_loop *l, struct sse *s, size_t len)
{
    char *data = l->buf + 16;
    if (s->http11) {
        char head[16];
        int hl = snprintf(head, sizeof(head), "%zx\r\n", len);
        data -= hl;
        memcpy(data, head, (size_t)hl);
        memcpy(data + hl + len, "\r\n", 2);
        len += (size_t)hl + 2;
    }
    int64_t now = chat_mono_ms();
    if (!loop_send(s, data, len, now))
        return false;
    loop_touch(l, s, now);
    return true;
}

/* Writes what the stream has until it parks, the socket is full or the
 * stream is over. */
static void loop_pump(struct stream_loop *l, struct sse *s, struct stream_loops *all)
{
    for (;;) {
        int flushed = s->pend ? loop_flush(s) : 1;
        if (flushed < 0) {
            loop_end(l, s, all);
            return;
        }
        if (flushed == 0) {
            s->blocked = true;
            return;
        }
        s->blocked = false;
        ssize_t n = chat_stream_read(s->stream, l->buf + 16, LOOP_BLOCK);
        if (n == 0)
            return; /* parked: the next event wakes it */
        if (n < 0) {
            /* The stream is over: a chunked body gets its last chunk (a
             * client that went just does not read it). */
            if (s->http11)
                send(atomic_load(&s->fd), "0\r\n\r\n", 5, MSG_NOSIGNAL | MSG_DONTWAIT);
            loop_end(l, s, all);
            return;
        }
        if (!loop_write(l, s, (size_t)n)) {
            loop_end(l, s, all);
            return;
        }
    }
}

/* Keepalives: a stream with no write for `keepalive` seconds is read with
 * its keepalive due (a comment, and a retry of a replay or catch-up that
 * MySQL interrupted). The list is in the order of the last write, so only
 * the due ones are visited. A stream whose socket took nothing for
 * connection_timeout (a client that stopped reading) is closed. Returns
 * the ms to wait for the next round, or -1 for none. */
static int loop_keepalives(struct stream_loop *l, struct stream_loops *all)
{
    int64_t now = chat_mono_ms();
    struct sse *s;
    while ((s = l->all) && now - s->last_ms >= all->keepalive_ms) {
        if (s->blocked) {
            if (now - s->progress_ms >= all->stuck_ms)
                loop_end(l, s, all);
            else
                loop_touch(l, s, now);
            continue;
        }
        chat_stream_keepalive(s->stream);
        loop_pump(l, s, all);
        if (!s->dead && s->last_ms < now) /* nothing written: not again now */
            loop_touch(l, s, now);
    }
    if (!s)
        return -1;
    /* At most 5 rounds a second for keepalives: each takes all that are
     * due, a few hundred ms late at most. */
    int64_t wait = s->last_ms + all->keepalive_ms - now;
    return wait < KEEPALIVE_ROUND_MS ? KEEPALIVE_ROUND_MS : (int)wait;
}

/* Takes the next stream off the ready list, or NULL. One at a time, under
 * the lock: a stream taken can be woken (and queued) again at once, while
 * the rest of the list is still waiting. */
static struct sse *loop_take_ready(struct stream_loop *l)
{
    pthread_mutex_lock(&l->lock);
    struct sse *s = l->ready;
    if (s) {
        l->ready = s->next_ready;
        if (!l->ready)
            l->ready_tail = &l->ready;
        s->queued = false;
        l->nready--;
    }
    pthread_mutex_unlock(&l->lock);
    return s;
}

static void *loop_main(void *arg)
{
    struct stream_loop *l = arg;
    struct stream_loops *all = l->owner;
    struct epoll_event evs[256];
    bool stopping = false;
    int wait_ms = -1;
    while (!stopping || l->all) {
        int n = epoll_wait(l->epfd, evs, 256, stopping ? 50 : wait_ms);
        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++) {
            struct sse *s = evs[i].data.ptr;
            if (!s) {
                uint64_t v;
                if (read(l->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                    chat_warn("stream loop: %s", strerror(errno));
                continue;
            }
            if (s->dead)
                continue;
            if (evs[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                /* The client went: events from now on are not delivered
                 * into a dead socket. */
                chat_stream_end(s->stream);
                loop_pump(l, s, all);
            } else if ((evs[i].events & EPOLLOUT) && s->blocked) {
                loop_pump(l, s, all);
            }
        }
        /* What is ready now; streams woken meanwhile wait for the next
         * round, so that a busy stream cannot hold up the loop. */
        pthread_mutex_lock(&l->lock);
        size_t nready = l->nready;
        stopping = l->stopping;
        pthread_mutex_unlock(&l->lock);
        for (struct sse *s; nready > 0 && (s = loop_take_ready(l)); nready--) {
            if (s->dead) {
                s->next = l->grave;
                l->grave = s;
                continue;
            }
            if (s->fresh) {
                s->fresh = false;
                DL_APPEND(l->all, s);
                struct epoll_event ev = {.events = EPOLLRDHUP | EPOLLOUT | EPOLLET, .data.ptr = s};
                if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, atomic_load(&s->fd), &ev) != 0) {
                    chat_warn("stream loop: epoll_ctl: %s", strerror(errno));
                    loop_end(l, s, all);
                    continue;
                }
            }
            if (!s->blocked)
                loop_pump(l, s, all);
        }
        /* Stopping: the delivery has ended every stream and given them
         * a moment to go; what is left (a client that reads nothing) is
         * closed now. */
        while (stopping && l->all)
            loop_end(l, l->all, all);
        wait_ms = loop_keepalives(l, all);
        /* Streams woken during this round found the list not empty and
         * wrote no eventfd: they are the next round's, at once. */
        pthread_mutex_lock(&l->lock);
        if (l->nready > 0)
            wait_ms = 0;
        pthread_mutex_unlock(&l->lock);
        while (l->grave) {
            struct sse *s = l->grave;
            l->grave = s->next;
            free(s);
        }
    }
    return NULL;
}

static int loops_start(struct stream_loops *all, int n, int keepalive_s, int timeout_s)
{
    all->v = chat_xcalloc((size_t)n, sizeof(*all->v));
    all->n = n;
    all->keepalive_ms = (int64_t)keepalive_s * 1000;
    all->stuck_ms = (int64_t)timeout_s * 1000;
    for (int i = 0; i < n; i++) {
        all->v[i].epfd = all->v[i].wake_fd = -1;
        pthread_mutex_init(&all->v[i].lock, NULL);
    }
    for (int i = 0; i < n; i++) {
        struct stream_loop *l = &all->v[i];
        l->ready_tail = &l->ready;
        l->epfd = epoll_create1(EPOLL_CLOEXEC);
        l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        if (l->epfd < 0 || l->wake_fd < 0 || epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wake_fd, &ev))
            return CHAT_EINTERNAL;
    }
    for (int i = 0; i < n; i++) {
        all->v[i].owner = all;
        if (pthread_create(&all->v[i].thread, NULL, loop_main, &all->v[i]) != 0)
            return CHAT_EINTERNAL;
        all->v[i].started = true;
    }
    return 0;
}

/* Ends the streams the loops still hold and stops them. */
static void loops_stop(struct stream_loops *all)
{
    for (int i = 0; i < all->n; i++) {
        struct stream_loop *l = &all->v[i];
        if (!l->started)
            continue;
        pthread_mutex_lock(&l->lock);
        l->stopping = true;
        pthread_mutex_unlock(&l->lock);
        uint64_t one = 1;
        if (write(l->wake_fd, &one, sizeof(one)) == sizeof(one))
            pthread_join(l->thread, NULL);
        l->started = false;
    }
    for (int i = 0; i < all->n; i++) {
        struct stream_loop *l = &all->v[i];
        if (l->epfd >= 0)
            close(l->epfd);
        if (l->wake_fd >= 0)
            close(l->wake_fd);
        pthread_mutex_destroy(&l->lock);
    }
    free(all->v);
    all->v = NULL;
    all->n = 0;
}

/* shutdown(), not close(): the descriptor stays the loop's, which sees the
 * socket fail and ends the stream. The stream calls this only while it is
 * registered, and the loop closes the descriptor only after it is not. */
static void sse_drop(void *door)
{
    struct sse *s = door;
    int fd = atomic_load(&s->fd);
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
}

static enum MHD_Result queue_body(struct req *r, struct chat_response *resp)
{
    struct MHD_Response *mr =
        MHD_create_response_from_buffer(resp->body_len, resp->body, MHD_RESPMEM_MUST_FREE);
    if (!mr)
        return MHD_NO;
    resp->body = NULL; /* MHD frees it */
    MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, resp->content_type);
    MHD_add_response_header(mr, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (resp->retry_after[0])
        MHD_add_response_header(mr, MHD_HTTP_HEADER_RETRY_AFTER, resp->retry_after);
    if (resp->allow[0])
        MHD_add_response_header(mr, MHD_HTTP_HEADER_ALLOW, resp->allow);
    if (resp->status == 401)
        MHD_add_response_header(mr, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (r->too_large || r->answered)
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)resp->status, mr);
    MHD_destroy_response(mr);
    return ret;
}

/* Takes a stream's connection from libmicrohttpd: the socket is
 * duplicated, the response head written here and the stream handed to a
 * loop; then MHD is told to drop the connection (MHD_NO), which closes its
 * descriptor and frees its memory. MHD is started with MHD_USE_TURBO, under
 * which it closes without the shutdown() that would end the socket for the
 * duplicate as well. Returns false (the stream closed) when the socket
 * could not be taken. */
static bool hand_over(struct req *r, struct chat_response *resp)
{
    struct stream_loops *all = &r->chatd->loops;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    int fd = ci ? fcntl(ci->connect_fd, F_DUPFD_CLOEXEC, 0) : -1;
    if (fd < 0) {
        chat_warn("stream hand-over: %s", ci ? strerror(errno) : "no socket");
        chat_stream_close(resp->stream);
        resp->stream = NULL;
        return false;
    }
    /* Each event goes out as it comes. */
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    struct sse *s = chat_xcalloc(1, sizeof(*s));
    atomic_init(&s->fd, fd);
    s->http11 = r->http11;
    s->stream = resp->stream;
    resp->stream = NULL;
    s->loop = &all->v[atomic_fetch_add(&all->next, 1) % (unsigned)all->n];
    s->fresh = true;
    chat_stream_set_door(s->stream, loop_park, loop_wake, s);
    chat_stream_set_drop(s->stream, sse_drop);
    chat_stream_door_keepalive(s->stream);
    /* An HTTP/1.0 client reads the body until the connection closes. */
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 200 OK\r\n"
                     "Content-Type: %s\r\n"
                     "Cache-Control: no-cache\r\n"
                     "X-Accel-Buffering: no\r\n"
                     "%s\r\n",
                     resp->content_type,
                     s->http11 ? "Transfer-Encoding: chunked\r\n" : "Connection: close\r\n");
    atomic_fetch_add(&all->served, 1);
    s->last_ms = s->progress_ms = chat_mono_ms();
    if (!loop_send(s, head, (size_t)n, s->last_ms))
        chat_stream_end(s->stream); /* the loop closes it */
    loop_queue(s->loop, s);
    return true;
}

static enum MHD_Result queue_error(struct req *r, int err, const char *message);

static enum MHD_Result queue_stream(struct req *r, struct chat_response *resp)
{
    if (!hand_over(r, resp))
        return queue_error(r, CHAT_EINTERNAL, "the stream could not be set up");
    return MHD_NO; /* MHD drops its side of the connection */
}

/* ------------------------------------------------------------------------ */
/* Workers                                                                  */
/* ------------------------------------------------------------------------ */

static void *worker_main(void *arg)
{
    struct chatd *chatd = arg;
    struct workers *w = &chatd->workers;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->head && !w->stopping)
            pthread_cond_wait(&w->cond, &w->lock);
        struct req *r = w->head;
        if (!r)
            break; /* stopping, and nothing is left */
        w->head = r->next;
        if (!w->head)
            w->tail = &w->head;
        pthread_mutex_unlock(&w->lock);
        chat_api_handle(chatd->api, &r->creq, &r->resp);
        /* The last touch: once resumed, MHD may complete and free r. */
        MHD_resume_connection(r->conn);
        pthread_mutex_lock(&w->lock);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

static int workers_start(struct chatd *chatd)
{
    struct workers *w = &chatd->workers;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    w->tail = &w->head;
    w->threads = chat_xcalloc((size_t)chatd->cfg.workers, sizeof(*w->threads));
    for (; w->n < chatd->cfg.workers; w->n++)
        if (pthread_create(&w->threads[w->n], NULL, worker_main, chatd) != 0)
            return CHAT_EINTERNAL;
    return 0;
}

/* Runs what is queued, then ends the threads. After it, requests are run on
 * the HTTP threads themselves. */
static void workers_stop(struct workers *w)
{
    if (!w->threads)
        return;
    pthread_mutex_lock(&w->lock);
    w->stopping = true;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    for (int i = 0; i < w->n; i++)
        pthread_join(w->threads[i], NULL);
    free(w->threads);
    w->threads = NULL;
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
}

/* Suspends r's connection and queues it for a worker. Returns false when
 * the workers are stopping (the caller runs the request itself). */
static bool workers_submit(struct workers *w, struct req *r)
{
    pthread_mutex_lock(&w->lock);
    bool ok = !w->stopping;
    if (ok) {
        /* Suspended before any worker can see it: a resume never precedes
         * its suspend. */
        r->offloaded = true;
        MHD_suspend_connection(r->conn);
        r->next = NULL;
        *w->tail = r;
        w->tail = &r->next;
        pthread_cond_signal(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
    return ok;
}

/* Streams and long-polls are held by their HTTP thread (suspend/resume);
 * everything else is a request with one answer, run by a worker. */
static bool runs_on_worker(const char *url)
{
    return strcmp(url, "/v1/events") != 0 && strcmp(url, "/v1/poll") != 0;
}

/* Queues what the API answered, whichever thread ran it; frees its body. */
static enum MHD_Result queue_answer(struct req *r, struct chat_response *resp)
{
    enum MHD_Result ret = MHD_YES;
    switch (resp->kind) {
    case CHAT_RESP_BODY:
        ret = queue_body(r, resp);
        break;
    case CHAT_RESP_STREAM:
        ret = queue_stream(r, resp);
        break;
    case CHAT_RESP_PARKED:
        break; /* suspended; MHD calls again after the wake */
    }
    chat_response_cleanup(resp);
    return ret;
}

/* Answers err (a chat_err) with the API's JSON error and closes the
 * connection after it. */
static enum MHD_Result queue_error(struct req *r, int err, const char *message)
{
    struct chat_response resp;
    memset(&resp, 0, sizeof(resp));
    resp.status = chat_err_status(err);
    resp.content_type = "application/json; charset=utf-8";
    resp.body = chat_json_error(chat_err_code(err), message);
    resp.body_len = strlen(resp.body);
    if (err == CHAT_EUNAVAIL)
        snprintf(resp.retry_after, sizeof(resp.retry_after), "1");
    chat_metrics_count_status(resp.status);
    r->answered = true;
    return queue_body(r, &resp);
}

/* A stream served by a loop is no longer one of MHD's connections, so
 * max_connections counts them here: past it a new stream is refused. */
static bool streams_full(struct chatd *chatd, const char *url)
{
    return strcmp(url, "/v1/events") == 0 &&
           atomic_load(&chatd->loops.served) >= chatd->cfg.max_connections;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct chatd *chatd = cls;
    struct req *r = *con_cls;
    if (!r) {
        r = chat_xcalloc(1, sizeof(*r));
        r->chatd = chatd;
        r->conn = conn;
        r->http11 = strcmp(version, MHD_HTTP_VERSION_1_1) == 0;
        *con_cls = r;
        /* Refusals that the head decides are answered now, in the first
         * call: libmicrohttpd then reads no body, sends no 100 Continue and
         * closes the connection after the answer. */
        const char *why = framing_problem(conn);
        if (why)
            return queue_error(r, CHAT_EINVAL, why);
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > (unsigned long long)chatd->cfg.max_body_bytes)
            return queue_error(r, CHAT_ETOOLARGE, "the body is larger than max_body_bytes");
        return MHD_YES;
    }
    if (r->answered) {
        *upload_data_size = 0; /* libmicrohttpd discards the rest itself */
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (!r->too_large) {
            if (r->body.len + *upload_data_size > (size_t)chatd->cfg.max_body_bytes) {
                r->too_large = true;
                chat_buf_cleanup(&r->body);
            } else {
                chat_buf_append(&r->body, upload_data, *upload_data_size);
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (r->offloaded) /* resumed by its worker: the answer is ready */
        return queue_answer(r, &r->resp);
    if (!r->started) {
        r->started = true;
        r->creq = (struct chat_request){
            .method = method,
            .path = url,
            .header = req_header,
            .arg = req_arg,
            .door = r,
            .body = r->body.data,
            .body_len = r->body.len,
            .body_too_large = r->too_large,
            .park = req_park,
            .wake = req_wake,
            .can_stream = true,
        };
    }
    if (streams_full(chatd, url))
        return queue_error(r, CHAT_EUNAVAIL, "this node holds max_connections streams");
    if (runs_on_worker(url) && workers_submit(&chatd->workers, r))
        return MHD_YES; /* MHD calls again once the worker resumes it */
    struct chat_response resp;
    memset(&resp, 0, sizeof(resp));
    chat_api_handle(chatd->api, &r->creq, &resp);
    return queue_answer(r, &resp);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct req *r = *con_cls;
    if (!r)
        return;
    chat_api_release(&r->creq);
    chat_response_cleanup(&r->resp);
    chat_buf_cleanup(&r->body);
    free(r);
    *con_cls = NULL;
}

static size_t unescape(void *cls, struct MHD_Connection *conn, char *s)
{
    return chat_url_unescape(s);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof(line), fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    /* MHD logs this for every MHD_NO of the access handler, which is how a
     * stream handed to a loop leaves it (hand_over). */
    if (strstr(line, "Application reported internal error"))
        return;
    chat_warn("http: %s", line);
}

/* ------------------------------------------------------------------------ */
/* Main                                                                     */
/* ------------------------------------------------------------------------ */

static void usage(FILE *out)
{
    fprintf(out, "usage: chatd -c FILE      serve the chat API with the config FILE\n"
                 "       chatd --help-config  print every config key with its default\n");
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"help-config", no_argument, NULL, 'H'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 'H':
            printf("# Configuration keys\n");
            chat_config_describe(stdout);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!path) {
        usage(stderr);
        return 2;
    }

    static struct chatd chatd;
    if (chat_config_open(&chatd.cfg, path, "chatd") != 0)
        return 2;

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)chatd.cfg.port)};
    if (inet_pton(AF_INET, chatd.cfg.listen, &addr.sin_addr) != 1) {
        fprintf(stderr, "chatd: %s: [server] listen: \"%s\" is not an IPv4 address\n", path,
                chatd.cfg.listen);
        return 2;
    }

    /* Every stream is a descriptor: take what the hard limit allows. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    /* Signals go to the main thread only, which waits for them below. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    chatd.delivery = chat_delivery_new(&chatd.cfg);
    if (!chatd.delivery || chat_delivery_start(chatd.delivery) != 0) {
        chat_error("cannot start the delivery threads");
        goto out;
    }
    chatd.api = chat_api_new(chatd.delivery);
    if (workers_start(&chatd) != 0) {
        chat_error("cannot start the worker threads");
        goto out;
    }
    if (loops_start(&chatd.loops, chatd.cfg.threads, chatd.cfg.keepalive,
                    chatd.cfg.connection_timeout) != 0) {
        chat_error("cannot start the stream loops");
        goto out;
    }
    /* MHD_USE_TURBO: a connection is closed without shutdown(), which a
     * stream handed to a loop relies on (hand_over). */
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                     MHD_USE_TURBO;
    chatd.mhd = MHD_start_daemon(
        flags, (uint16_t)chatd.cfg.port, NULL, NULL, on_request, &chatd, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_log, &chatd, MHD_OPTION_UNESCAPE_CALLBACK, unescape, &chatd, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&addr, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)chatd.cfg.threads,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)chatd.cfg.max_connections,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)chatd.cfg.connection_memory_bytes,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)chatd.cfg.connection_timeout,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, &chatd, MHD_OPTION_LISTENING_ADDRESS_REUSE, 1U,
        MHD_OPTION_END);
    if (!chatd.mhd) {
        chat_error("cannot listen on %s:%d: %s", chatd.cfg.listen, chatd.cfg.port, strerror(errno));
        goto out;
    }
    chat_info("chatd listening on %s:%d (%d threads, %d workers)", chatd.cfg.listen, chatd.cfg.port,
              chatd.cfg.threads, chatd.cfg.workers);

    int sig = 0;
    sigwait(&sigs, &sig);
    chat_info("signal %d: shutting down", sig);
    /* Stop accepting, end every stream and long-poll (which resumes every
     * suspended connection: MHD must not stop with one suspended), give them
     * a moment to go, then stop. */
    MHD_socket lsock = MHD_quiesce_daemon(chatd.mhd);
    /* The listening socket stays open until MHD has stopped (its threads
     * may still look at it), but it must stop taking connections now: with
     * SO_REUSEPORT the kernel would go on queueing clients on it, which a
     * node started on the same port meanwhile would then never see. */
    if (lsock != MHD_INVALID_SOCKET)
        shutdown(lsock, SHUT_RDWR);
    chat_delivery_stop(chatd.delivery);
    for (int i = 0; i < 40 && (atomic_load(&chat_metrics.streams_open) > 0 ||
                               atomic_load(&chat_metrics.polls_waiting) > 0);
         i++)
        usleep(50 * 1000);
    /* The workers finish (and resume) what they hold; MHD must not stop
     * with a connection suspended. */
    workers_stop(&chatd.workers);
    /* MHD first: a connection it still serves could open a stream. */
    MHD_stop_daemon(chatd.mhd);
    loops_stop(&chatd.loops);
    if (lsock != MHD_INVALID_SOCKET)
        close(lsock);
    rc = 0;
out:
    workers_stop(&chatd.workers);
    chat_api_free(chatd.api);
    loops_stop(&chatd.loops);
    chat_delivery_free(chatd.delivery);
    chat_config_cleanup(&chatd.cfg);
    return rc;
}
