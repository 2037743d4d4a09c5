/* chatfcgi.c: chat.fcgi, the FastCGI door. Worker threads accept requests
 * from the web server (Apache mod_proxy_fcgi or mod_fcgid, lighttpd
 * mod_fastcgi) and answer them through lib/api, the same code chatd runs.
 * A long-poll blocks its worker on a condition variable; SSE is refused,
 * since the front door sends /v1/events to the chatd nodes. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcgiapp.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "alloc.h"
#include "api/api.h"
#include "buf.h"
#include "config.h"
#include "delivery.h"
#include "err.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "query.h"

struct fcgi {
    struct chat_config cfg;
    struct chat_delivery *delivery;
    struct chat_api *api;
    int listen_fd;
    pthread_mutex_t accept_lock;
    atomic_bool stopping;
    atomic_int polls; /* long-polls holding a worker now */
    atomic_int busy;  /* requests being answered now */
    bool inherited;   /* the listener is the web server's or systemd's */
};

/* One request in one worker thread. */
struct freq {
    FCGX_Request *fr;
    struct chat_query query;
    char hdr_name[128];
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool woken;
};

/* ------------------------------------------------------------------------ */
/* Adapter                                                                  */
/* ------------------------------------------------------------------------ */

/* "Last-Event-ID" -> "HTTP_LAST_EVENT_ID"; Content-Type and Content-Length
 * are CGI variables of their own. */
static const char *freq_header(void *door, const char *name)
{
    struct freq *r = door;
    if (strcasecmp(name, "Content-Type") == 0)
        return FCGX_GetParam("CONTENT_TYPE", r->fr->envp);
    if (strcasecmp(name, "Content-Length") == 0)
        return FCGX_GetParam("CONTENT_LENGTH", r->fr->envp);
    size_t n = strlen(name);
    if (n + 6 > sizeof(r->hdr_name))
        return NULL;
    memcpy(r->hdr_name, "HTTP_", 5);
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        r->hdr_name[5 + i] = c == '-' ? '_' : (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
    }
    r->hdr_name[5 + n] = '\0';
    return FCGX_GetParam(r->hdr_name, r->fr->envp);
}

static const char *freq_arg(void *door, const char *name)
{
    return chat_query_get(&((struct freq *)door)->query, name);
}

/* park: the worker waits in handle() once the api returns PARKED. */
static void freq_park(void *door)
{
    struct freq *r = door;
    pthread_mutex_lock(&r->lock);
    r->woken = false;
    pthread_mutex_unlock(&r->lock);
}

static void freq_wake(void *door)
{
    struct freq *r = door;
    pthread_mutex_lock(&r->lock);
    r->woken = true;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

static void write_response(FCGX_Request *fr, const struct chat_response *resp)
{
    /* FCGX_FPrintF knows no %zu: the head is formatted here. */
    struct chat_buf head = {0};
    chat_buf_printf(&head, "Status: %d\r\nContent-Type: %s\r\nCache-Control: no-store\r\n",
                    resp->status, resp->content_type);
    if (resp->retry_after[0])
        chat_buf_printf(&head, "Retry-After: %s\r\n", resp->retry_after);
    if (resp->allow[0])
        chat_buf_printf(&head, "Allow: %s\r\n", resp->allow);
    if (resp->status == 401)
        chat_buf_puts(&head, "WWW-Authenticate: Bearer\r\n");
    chat_buf_printf(&head, "Content-Length: %zu\r\n\r\n", resp->body_len);
    FCGX_PutStr(head.data, (int)head.len, fr->out);
    FCGX_PutStr(resp->body, (int)resp->body_len, fr->out);
    chat_buf_cleanup(&head);
}

/* Reads a body that came without CONTENT_LENGTH (Apache's mod_proxy_fcgi
 * passes a chunked request body on as it comes): up to the end of stdin,
 * at most max bytes. */
static char *read_body_to_end(FCGX_Request *fr, int max, size_t *len, bool *too_large)
{
    struct chat_buf b = {0};
    char chunk[8192];
    int got;
    while ((got = FCGX_GetStr(chunk, sizeof(chunk), fr->in)) > 0) {
        if (b.len + (size_t)got > (size_t)max) {
            *too_large = true; /* libfcgi discards the unread rest */
            chat_buf_cleanup(&b);
            return NULL;
        }
        chat_buf_append(&b, chunk, (size_t)got);
    }
    if (b.len == 0) {
        chat_buf_cleanup(&b);
        return NULL;
    }
    *len = b.len;
    chat_buf_append(&b, "", 1); /* NUL-terminated, as below */
    return chat_buf_steal(&b);
}

/* Reads the body, at most max bytes; sets *too_large past that. */
static char *read_body(FCGX_Request *fr, int max, size_t *len, bool *too_large)
{
    *len = 0;
    *too_large = false;
    const char *cl = FCGX_GetParam("CONTENT_LENGTH", fr->envp);
    if (!cl || !*cl)
        return read_body_to_end(fr, max, len, too_large);
    long want = strtol(cl, NULL, 10);
    if (want <= 0)
        return NULL;
    if (want > max) {
        *too_large = true; /* libfcgi discards the unread rest */
        return NULL;
    }
    char *body = chat_xmalloc((size_t)want + 1);
    int got = FCGX_GetStr(body, (int)want, fr->in);
    *len = got > 0 ? (size_t)got : 0;
    body[*len] = '\0';
    return body;
}

static bool is_poll(const char *method, const char *path)
{
    return strcmp(method, "GET") == 0 && strcmp(path, "/v1/poll") == 0;
}

static void handle(struct fcgi *f, FCGX_Request *fr)
{
    const char *method = FCGX_GetParam("REQUEST_METHOD", fr->envp);
    const char *uri = FCGX_GetParam("REQUEST_URI", fr->envp);
    char *path = NULL;
    if (uri) {
        const char *q = strchr(uri, '?');
        path = chat_xstrndup(uri, q ? (size_t)(q - uri) : strlen(uri));
    } else {
        const char *sn = FCGX_GetParam("SCRIPT_NAME", fr->envp);
        const char *pi = FCGX_GetParam("PATH_INFO", fr->envp);
        path = chat_xasprintf("%s%s", sn ? sn : "", pi ? pi : "");
    }
    struct freq r = {.fr = fr, .woken = false};
    pthread_mutex_init(&r.lock, NULL);
    pthread_cond_init(&r.cond, NULL);
    chat_query_parse(&r.query, FCGX_GetParam("QUERY_STRING", fr->envp));
    size_t body_len;
    bool too_large;
    char *body = read_body(fr, f->cfg.max_body_bytes, &body_len, &too_large);

    struct chat_request req = {
        .method = method ? method : "GET",
        .path = path,
        .header = freq_header,
        .arg = freq_arg,
        .door = &r,
        .body = body,
        .body_len = body_len,
        .body_too_large = too_large,
        .park = freq_park,
        .wake = freq_wake,
        .can_stream = false,
    };
    struct chat_response resp;
    memset(&resp, 0, sizeof(resp));

    /* A long-poll blocks this worker: hold at most max_polls of them so
     * that the other workers keep serving. */
    bool counted = false;
    if (is_poll(req.method, path)) {
        if (atomic_fetch_add(&f->polls, 1) >= f->cfg.fcgi_max_polls) {
            atomic_fetch_sub(&f->polls, 1);
            resp.status = 503;
            resp.content_type = "application/json; charset=utf-8";
            resp.body = chat_json_error(chat_err_code(CHAT_EUNAVAIL),
                                        "too many long-polls held here: poll a chatd node");
            resp.body_len = strlen(resp.body);
            snprintf(resp.retry_after, sizeof(resp.retry_after), "1");
            chat_metrics_count_status(503);
            write_response(fr, &resp);
            goto done;
        }
        counted = true;
    }

    chat_api_handle(f->api, &req, &resp);
    while (resp.kind == CHAT_RESP_PARKED) {
        pthread_mutex_lock(&r.lock);
        while (!r.woken)
            pthread_cond_wait(&r.cond, &r.lock);
        r.woken = false;
        pthread_mutex_unlock(&r.lock);
        memset(&resp, 0, sizeof(resp));
        chat_api_handle(f->api, &req, &resp);
    }
    chat_api_release(&req);
    if (resp.kind == CHAT_RESP_BODY)
        write_response(fr, &resp);
done:
    if (counted)
        atomic_fetch_sub(&f->polls, 1);
    chat_response_cleanup(&resp);
    free(body);
    free(path);
    chat_query_cleanup(&r.query);
    pthread_cond_destroy(&r.cond);
    pthread_mutex_destroy(&r.lock);
}

static void *worker(void *arg)
{
    struct fcgi *f = arg;
    FCGX_Request fr;
    if (FCGX_InitRequest(&fr, f->listen_fd, 0) != 0)
        return NULL;
    while (!atomic_load(&f->stopping)) {
        /* libfcgi's accept is not thread-safe on every platform: one at a time. */
        pthread_mutex_lock(&f->accept_lock);
        int rc = FCGX_Accept_r(&fr);
        pthread_mutex_unlock(&f->accept_lock);
        if (rc < 0)
            break;
        atomic_fetch_add(&f->busy, 1);
        if (atomic_load(&f->stopping)) {
            /* Accepted after the stop began: the web server retries elsewhere. */
            FCGX_PutS("Status: 503\r\nRetry-After: 1\r\nContent-Type: application/json; "
                      "charset=utf-8\r\n\r\n{\"error\":{\"code\":\"backend_unavailable\","
                      "\"message\":\"this process is stopping\"}}",
                      fr.out);
        } else {
            handle(f, &fr);
        }
        FCGX_Finish_r(&fr);
        atomic_fetch_sub(&f->busy, 1);
    }
    FCGX_Free(&fr, 1);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Listening                                                                */
/* ------------------------------------------------------------------------ */

/* A unix socket path, or 127.x.x.x:port; never every interface. */
static int open_listener(const char *spec, char *err, size_t errlen)
{
    if (!spec[0]) {
        /* Inherited on descriptor 0 (spawned by the web server, systemd). */
        struct stat stt;
        if (fstat(0, &stt) != 0 || !S_ISSOCK(stt.st_mode)) {
            snprintf(err, errlen, "[fcgi] listen is empty but descriptor 0 is not a socket");
            return -1;
        }
        return 0;
    }
    int fd;
    if (spec[0] == '/') {
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        if (strlen(spec) >= sizeof(un.sun_path)) {
            snprintf(err, errlen, "[fcgi] listen: the path is too long");
            return -1;
        }
        strcpy(un.sun_path, spec);
        unlink(spec);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&un, sizeof(un)) != 0) {
            snprintf(err, errlen, "[fcgi] listen: %s: %s", spec, strerror(errno));
            return -1;
        }
        chmod(spec, 0660);
    } else {
        char host[64];
        const char *colon = strrchr(spec, ':');
        struct sockaddr_in in = {.sin_family = AF_INET};
        long port = colon ? strtol(colon + 1, NULL, 10) : 0;
        size_t hlen = colon ? (size_t)(colon - spec) : 0;
        if (!colon || hlen >= sizeof(host) || port < 1 || port > 65535) {
            snprintf(err, errlen, "[fcgi] listen: \"%s\" is not a path or 127.0.0.1:<port>", spec);
            return -1;
        }
        memcpy(host, spec, hlen);
        host[hlen] = '\0';
        if (inet_pton(AF_INET, host, &in.sin_addr) != 1 ||
            (ntohl(in.sin_addr.s_addr) >> 24) != 127) {
            snprintf(err, errlen, "[fcgi] listen: \"%s\" is not a loopback address", host);
            return -1;
        }
        in.sin_port = htons((uint16_t)port);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        if (fd >= 0)
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (fd < 0 || bind(fd, (struct sockaddr *)&in, sizeof(in)) != 0) {
            snprintf(err, errlen, "[fcgi] listen: %s: %s", spec, strerror(errno));
            return -1;
        }
    }
    if (listen(fd, 1024) != 0) {
        snprintf(err, errlen, "[fcgi] listen: %s: %s", spec, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: chat.fcgi -c FILE   serve the chat REST API and long-poll over FastCGI\n");
}

int main(int argc, char **argv)
{
    const char *path = getenv("CHAT_CONFIG");
    int opt;
    while ((opt = getopt(argc, argv, "c:h")) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
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
    static struct fcgi f;
    char err[512];
    if (chat_config_open(&f.cfg, path, "chat.fcgi") != 0)
        return 2;
    /* A web server may start several processes from one config; each is a
     * chat server of its own in ACK routing, so each gets its own node id. */
    char host[64] = "host";
    gethostname(host, sizeof(host) - 1);
    char *node_id =
        chat_xasprintf("%s/fcgi-%d", f.cfg.node_id[0] ? f.cfg.node_id : host, (int)getpid());
    free(f.cfg.node_id);
    f.cfg.node_id = node_id;
    f.inherited = !f.cfg.fcgi_listen[0];
    f.listen_fd = open_listener(f.cfg.fcgi_listen, err, sizeof(err));
    if (f.listen_fd < 0) {
        fprintf(stderr, "chat.fcgi: %s: %s\n", path, err);
        return 2;
    }

    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGUSR1); /* mod_fcgid asks a process to finish with it */
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    pthread_t *threads = NULL;
    int started = 0;
    FCGX_Init();
    pthread_mutex_init(&f.accept_lock, NULL);
    f.delivery = chat_delivery_new(&f.cfg);
    if (!f.delivery || chat_delivery_start(f.delivery) != 0) {
        chat_error("cannot start the delivery threads");
        goto out;
    }
    f.api = chat_api_new(f.delivery);
    threads = chat_xcalloc((size_t)f.cfg.fcgi_threads, sizeof(*threads));
    for (; started < f.cfg.fcgi_threads; started++)
        if (pthread_create(&threads[started], NULL, worker, &f) != 0)
            break;
    chat_info("chat.fcgi serving on %s (%d threads)",
              f.cfg.fcgi_listen[0] ? f.cfg.fcgi_listen : "descriptor 0", started);

    int sig = 0;
    sigwait(&sigs, &sig);
    chat_info("signal %d: shutting down", sig);
    atomic_store(&f.stopping, true);
    chat_delivery_stop(f.delivery); /* answers every held long-poll */
    if (f.inherited) {
        /* The listening socket is not ours to shut down: another process
         * (the next chat.fcgi) accepts on it after us. Finish what is in
         * progress, then leave; the threads waiting in accept end with us. */
        for (int i = 0; i < 200 && atomic_load(&f.busy) > 0; i++)
            usleep(50 * 1000);
        chat_config_cleanup(&f.cfg);
        _exit(0);
    }
    shutdown(f.listen_fd, SHUT_RDWR); /* ends the accepts */
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    rc = 0;
out:
    free(threads);
    chat_api_free(f.api);
    chat_delivery_free(f.delivery);
    if (f.cfg.fcgi_listen[0] == '/')
        unlink(f.cfg.fcgi_listen);
    chat_config_cleanup(&f.cfg);
    return rc;
}
