/* chatd.c: the libmicrohttpd door. It turns MHD requests into lib/api calls
 * and holds SSE streams and long-polls by suspending their connections, so
 * that an idle one costs no thread and no CPU. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <uthash.h>
#include <unistd.h>

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

/* The reader's block of a stream's response. Under HTTP/1.1 (chunked)
 * libmicrohttpd reads into the connection's own buffer instead, but it
 * allocates (and zeroes) this block for every stream all the same: a small
 * one keeps idle streams cheap. */
#define SSE_BLOCK 1024

/* Watches the sockets of SSE streams for the client hanging up. A suspended
 * MHD connection is not polled, so without this a vanished client would be
 * noticed only at the next keepalive, and events meanwhile would count as
 * delivered into a dead socket. */
struct hangup_watch {
    int epfd;
    int stop_fd;
    pthread_t thread;
    bool started;
    pthread_mutex_t lock; /* guards streams */
    struct sse *streams;  /* by id */
    uint64_t next_id;
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
    struct hangup_watch watch;
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
    struct chat_request creq;
    struct chat_response resp; /* a worker's answer */
    struct req *next;          /* in the worker queue */
};

/* The door side of an SSE stream: owned by the MHD response. */
struct sse {
    struct MHD_Connection *conn;
    int fd; /* the connection's socket, open until sse_free returns; -1 unknown */
    struct chat_stream *stream;
    struct hangup_watch *watch;
    uint64_t id; /* in the watch; 0 when not watched */
    UT_hash_handle hh;
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

static void sse_park(void *door)
{
    MHD_suspend_connection(((struct sse *)door)->conn);
}

static void sse_wake(void *door)
{
    MHD_resume_connection(((struct sse *)door)->conn);
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
/* Hangup watch                                                             */
/* ------------------------------------------------------------------------ */

/* Registers the stream's socket. Registrations are one-shot and keyed by an
 * id, never by pointer, and never removed by hand: the kernel drops one when
 * MHD closes the socket, and an id that is gone is ignored. */
static void watch_add(struct hangup_watch *w, struct sse *s)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(s->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci || !w->started)
        return;
    pthread_mutex_lock(&w->lock);
    s->id = ++w->next_id;
    s->watch = w;
    HASH_ADD(hh, w->streams, id, sizeof(s->id), s);
    pthread_mutex_unlock(&w->lock);
    struct epoll_event ev = {.events = EPOLLRDHUP | EPOLLONESHOT, .data.u64 = s->id};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, ci->connect_fd, &ev) != 0 && errno == EEXIST)
        epoll_ctl(w->epfd, EPOLL_CTL_MOD, ci->connect_fd, &ev); /* a keep-alive reuse */
}

static void watch_remove(struct sse *s)
{
    if (!s->watch)
        return;
    pthread_mutex_lock(&s->watch->lock);
    HASH_DEL(s->watch->streams, s);
    pthread_mutex_unlock(&s->watch->lock);
}

static void *watch_main(void *arg)
{
    struct hangup_watch *w = arg;
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(w->epfd, evs, 64, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return NULL;
        for (int i = 0; i < n; i++) {
            uint64_t id = evs[i].data.u64;
            if (id == 0)
                return NULL; /* stop_fd */
            pthread_mutex_lock(&w->lock);
            struct sse *s;
            HASH_FIND(hh, w->streams, &id, sizeof(id), s);
            if (s)
                chat_stream_end(s->stream);
            pthread_mutex_unlock(&w->lock);
        }
    }
}

static int watch_start(struct hangup_watch *w)
{
    pthread_mutex_init(&w->lock, NULL);
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
    if (w->epfd < 0 || w->stop_fd < 0 || epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->stop_fd, &ev) ||
        pthread_create(&w->thread, NULL, watch_main, w) != 0)
        return CHAT_EINTERNAL;
    w->started = true;
    return 0;
}

static void watch_stop(struct hangup_watch *w)
{
    if (w->started) {
        uint64_t one = 1;
        if (write(w->stop_fd, &one, sizeof(one)) == sizeof(one))
            pthread_join(w->thread, NULL);
        w->started = false;
    }
    if (w->epfd >= 0)
        close(w->epfd);
    if (w->stop_fd >= 0)
        close(w->stop_fd);
    pthread_mutex_destroy(&w->lock);
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct sse *s = cls;
    ssize_t n = chat_stream_read(s->stream, buf, max);
    return n < 0 ? MHD_CONTENT_READER_END_OF_STREAM : n;
}

/* shutdown(), not close(): the descriptor stays libmicrohttpd's, which sees
 * the socket fail, closes it and frees the response. The stream calls this
 * only before sse_free has closed it, and libmicrohttpd closes the socket
 * only after sse_free returns, so fd is still this connection's. */
static void sse_drop(void *door)
{
    struct sse *s = door;
    if (s->fd >= 0)
        shutdown(s->fd, SHUT_RDWR);
}

static void sse_free(void *cls)
{
    struct sse *s = cls;
    watch_remove(s);
    chat_stream_close(s->stream);
    free(s);
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

static enum MHD_Result queue_stream(struct req *r, struct chat_response *resp)
{
    struct sse *s = chat_xcalloc(1, sizeof(*s));
    s->conn = r->conn;
    s->stream = resp->stream;
    /* The stream parks through its own door struct: it outlives the request
     * record, which MHD may release first. */
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    s->fd = ci ? ci->connect_fd : -1;
    chat_stream_set_door(s->stream, sse_park, sse_wake, s);
    chat_stream_set_drop(s->stream, sse_drop);
    struct MHD_Response *mr =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, SSE_BLOCK, sse_read, s, sse_free);
    if (!mr) {
        sse_free(s);
        return MHD_NO;
    }
    MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, resp->content_type);
    MHD_add_response_header(mr, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(mr, "X-Accel-Buffering", "no");
    enum MHD_Result ret = MHD_queue_response(r->conn, MHD_HTTP_OK, mr);
    MHD_destroy_response(mr);
    watch_add(&r->chatd->watch, s);
    return ret;
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
    chat_metrics_count_status(resp.status);
    r->answered = true;
    return queue_body(r, &resp);
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
    chatd.watch.epfd = chatd.watch.stop_fd = -1;
    if (watch_start(&chatd.watch) != 0) {
        chat_error("cannot start the hangup watch");
        goto out;
    }
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
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
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
    MHD_stop_daemon(chatd.mhd);
    if (lsock != MHD_INVALID_SOCKET)
        close(lsock);
    rc = 0;
out:
    workers_stop(&chatd.workers);
    chat_api_free(chatd.api);
    chat_delivery_free(chatd.delivery);
    watch_stop(&chatd.watch);
    chat_config_cleanup(&chatd.cfg);
    return rc;
}
