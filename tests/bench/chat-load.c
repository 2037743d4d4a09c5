/* chat-load: a load generator for HTTP push servers, the chat backend and
 * Nchan alike.
 *
 * One process, one thread, one epoll set, every socket non-blocking: it
 * holds thousands of subscribers (SSE streams or long-polls) and a few
 * keep-alive publishers that send at a target rate (open loop) or as fast
 * as answers and deliveries allow (closed loop). Every message body carries
 * "L1|<index>|<timestamp ns>|": a subscriber that reads it knows which
 * message it got and how long after its send (or, at a target rate, after
 * its scheduled send) it arrived. At the end it prints what was expected
 * and what was received, the latency percentiles, the HTTP statuses, and
 * the memory (RSS) and CPU of the processes it was asked to watch.
 *
 *   chat-load idle [options]    open the subscribers, hold them idle, report
 *   chat-load run  [options]    subscribers and publishers
 *
 * Run it without arguments for the options. Its output is lines of
 * key=value words (RESULT, STATUS, WATCH, ROUNDS) for tests/bench/run.sh.
 *
 * Bounded: every phase has a deadline, --time-limit ends the whole run,
 * and a watched process whose RSS passes --rss-limit-mb stops it at once
 * (exit 3), since a publisher that outruns delivery makes a server queue
 * without end. */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem, strcasestr, epoll_pwait2 */
#endif
#include <errno.h>
#include <jwt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EPS 8
#define MAX_WATCH 16
#define MARK "L1|"

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "chat-load: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(1);
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) {
        fputs("chat-load: out of memory\n", stderr);
        abort();
    }
    return p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xrealloc(NULL, n), s, n);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

/* xorshift64*: fast and good enough to pick recipients. */
static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545f4914f6cdd1dULL) >> 32) % n;
}

/* A growable byte buffer. */
struct buf {
    char *p;
    size_t len, cap;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* Drops the first n bytes. */
static void buf_eat(struct buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->p, b->p + n, b->len - n);
        b->len -= n;
    }
    if (b->p)
        b->p[b->len] = '\0';
}

static void buf_free(struct buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ------------------------------------------------------------------------ */
/* Options                                                                  */
/* ------------------------------------------------------------------------ */

enum proto { PROTO_CHAT, PROTO_NCHAN };
enum sub_kind { SUB_SSE, SUB_POLL };

struct endpoint {
    char host[64];
    int port;
    struct sockaddr_in addr;
};

struct watch {
    char name[32];
    int pid;
    long rss_start, rss_open, rss_peak, rss_end; /* KiB */
    long cpu_a, cpu_b;                            /* clock ticks at the window's ends */
    bool gone;
};

static struct {
    bool idle;
    enum proto proto;
    enum sub_kind sub_kind;
    struct endpoint sub_ep[MAX_EPS], pub_ep[MAX_EPS];
    int nsub_ep, npub_ep;
    int users;     /* recipients (1:1) or members (group) */
    bool no_subs;  /* recipients have no streams: only the sends count */
    bool group;    /* every subscriber is in one group (chat) or channel (nchan) */
    int pubs;      /* publisher connections */
    double rate;   /* messages/s in all, 0: closed loop */
    double warmup, duration, drain, hold, open_timeout, time_limit, settle;
    int max_outstanding;
    bool cross; /* post through a node that does not hold the recipient's stream */
    int rounds; /* group: messages sent one at a time before the main phase */
    int body_bytes;
    int connect_batch;
    const char *prefix;
    char *secret;
    long rss_limit_kb;
    struct watch watch[MAX_WATCH];
    int nwatch;
} opt = {
    .users = 100,
    .pubs = 16,
    .warmup = 2,
    .duration = 10,
    .drain = 10,
    .hold = 10,
    .open_timeout = 120,
    .time_limit = 600,
    .settle = 1,
    .max_outstanding = 1000,
    .body_bytes = 64,
    .connect_batch = 200,
    .prefix = "b",
};

static void usage(void)
{
    fputs("usage: chat-load idle|run [options]\n"
          "  --proto chat|nchan       what is driven (default chat)\n"
          "  --sub HOST:PORT[,...]    where subscribers connect, spread round-robin\n"
          "  --pub HOST:PORT[,...]    where publishers connect (default: --sub)\n"
          "  --secret-file FILE       chat: the HS256 key tokens are signed with\n"
          "  --users N                recipients (1:1) or streaming members (--group)\n"
          "  --no-subs                recipients hold no stream: measure the sends only\n"
          "  --longpoll               subscribers long-poll instead of streaming\n"
          "  --group                  one group (chat) or channel (nchan) for all\n"
          "  --pubs N                 publisher connections (16)\n"
          "  --rate R                 messages/s in all; 0 or absent: closed loop\n"
          "  --warmup S --duration S  the measured window follows the warm-up (2, 10)\n"
          "  --drain S                wait for what is outstanding after it (10)\n"
          "  --max-outstanding N      closed loop: sent but not yet delivered (1000)\n"
          "  --cross                  post through a node other than the recipient's\n"
          "  --rounds N               --group: N single messages first, time to the last\n"
          "  --hold S                 idle: seconds the streams are held (10)\n"
          "  --settle S               wait after opening, before measuring (1)\n"
          "  --body-bytes N           message body size (64)\n"
          "  --prefix P               user and channel names start with P (b)\n"
          "  --watch NAME=PID         report RSS and CPU of PID, or of itself with\n"
          "                           NAME=self (repeatable)\n"
          "  --rss-limit-mb N         stop (exit 3) when a watched RSS passes N MiB\n"
          "  --time-limit S           the whole run ends after S seconds (600)\n"
          "  --open-timeout S         the subscribers must be open by then (120)\n"
          "  --connect-batch N        connections being opened at once (200)\n",
          stderr);
    exit(2);
}

static int parse_eps(const char *s, struct endpoint *eps)
{
    int n = 0;
    char *copy = xstrdup(s), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *colon = strrchr(tok, ':');
        if (!colon || n == MAX_EPS || colon - tok >= (long)sizeof eps[n].host)
            die("bad endpoint list: %s", s);
        *colon = '\0';
        struct endpoint *e = &eps[n++];
        snprintf(e->host, sizeof e->host, "%s", tok);
        e->port = atoi(colon + 1);
        e->addr.sin_family = AF_INET;
        e->addr.sin_port = htons((uint16_t)e->port);
        if (inet_pton(AF_INET, e->host, &e->addr.sin_addr) != 1 || e->port <= 0)
            die("bad endpoint (an IPv4 address and a port): %s", s);
    }
    free(copy);
    return n;
}

static char *read_secret(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        die("cannot read %s", path);
    char line[512];
    if (!fgets(line, sizeof line, f))
        die("empty secret file %s", path);
    fclose(f);
    line[strcspn(line, "\r\n")] = '\0';
    return xstrdup(line);
}

static void parse_args(int argc, char **argv)
{
    if (argc < 2)
        usage();
    if (!strcmp(argv[1], "idle"))
        opt.idle = true;
    else if (strcmp(argv[1], "run"))
        usage();
    const char *pub = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_V()                                                                                   \
    do {                                                                                           \
        if (!v)                                                                                    \
            die("%s needs a value", a);                                                            \
        i++;                                                                                       \
    } while (0)
        if (!strcmp(a, "--proto")) {
            NEED_V();
            if (!strcmp(v, "chat"))
                opt.proto = PROTO_CHAT;
            else if (!strcmp(v, "nchan"))
                opt.proto = PROTO_NCHAN;
            else
                die("unknown --proto %s", v);
        } else if (!strcmp(a, "--sub")) {
            NEED_V();
            opt.nsub_ep = parse_eps(v, opt.sub_ep);
        } else if (!strcmp(a, "--pub")) {
            NEED_V();
            pub = v;
        } else if (!strcmp(a, "--secret-file")) {
            NEED_V();
            opt.secret = read_secret(v);
        } else if (!strcmp(a, "--users")) {
            NEED_V();
            opt.users = atoi(v);
        } else if (!strcmp(a, "--no-subs")) {
            opt.no_subs = true;
        } else if (!strcmp(a, "--longpoll")) {
            opt.sub_kind = SUB_POLL;
        } else if (!strcmp(a, "--group")) {
            opt.group = true;
        } else if (!strcmp(a, "--pubs")) {
            NEED_V();
            opt.pubs = atoi(v);
        } else if (!strcmp(a, "--rate")) {
            NEED_V();
            opt.rate = atof(v);
        } else if (!strcmp(a, "--warmup")) {
            NEED_V();
            opt.warmup = atof(v);
        } else if (!strcmp(a, "--duration")) {
            NEED_V();
            opt.duration = atof(v);
        } else if (!strcmp(a, "--drain")) {
            NEED_V();
            opt.drain = atof(v);
        } else if (!strcmp(a, "--max-outstanding")) {
            NEED_V();
            opt.max_outstanding = atoi(v);
        } else if (!strcmp(a, "--cross")) {
            opt.cross = true;
        } else if (!strcmp(a, "--rounds")) {
            NEED_V();
            opt.rounds = atoi(v);
        } else if (!strcmp(a, "--settle")) {
            NEED_V();
            opt.settle = atof(v);
        } else if (!strcmp(a, "--hold")) {
            NEED_V();
            opt.hold = atof(v);
        } else if (!strcmp(a, "--body-bytes")) {
            NEED_V();
            opt.body_bytes = atoi(v);
        } else if (!strcmp(a, "--prefix")) {
            NEED_V();
            opt.prefix = v;
        } else if (!strcmp(a, "--watch")) {
            NEED_V();
            const char *eq = strchr(v, '=');
            if (!eq || opt.nwatch == MAX_WATCH || eq - v >= 32)
                die("bad --watch %s (NAME=PID)", v);
            struct watch *w = &opt.watch[opt.nwatch++];
            snprintf(w->name, sizeof w->name, "%.*s", (int)(eq - v), v);
            w->pid = strcmp(eq + 1, "self") ? atoi(eq + 1) : (int)getpid();
        } else if (!strcmp(a, "--rss-limit-mb")) {
            NEED_V();
            opt.rss_limit_kb = atol(v) * 1024;
        } else if (!strcmp(a, "--time-limit")) {
            NEED_V();
            opt.time_limit = atof(v);
        } else if (!strcmp(a, "--open-timeout")) {
            NEED_V();
            opt.open_timeout = atof(v);
        } else if (!strcmp(a, "--connect-batch")) {
            NEED_V();
            opt.connect_batch = atoi(v);
        } else {
            die("unknown option %s", a);
        }
#undef NEED_V
    }
    if (!opt.nsub_ep)
        die("%s", "--sub is required");
    if (pub)
        opt.npub_ep = parse_eps(pub, opt.pub_ep);
    else {
        memcpy(opt.pub_ep, opt.sub_ep, sizeof opt.sub_ep);
        opt.npub_ep = opt.nsub_ep;
    }
    if (opt.proto == PROTO_CHAT && !opt.secret)
        die("%s", "--proto chat needs --secret-file");
    if (opt.users < 1 || opt.pubs < 1 || opt.body_bytes < 40 || opt.body_bytes > 4000 ||
        opt.connect_batch < 1)
        die("%s", "bad --users, --pubs, --body-bytes (40-4000) or --connect-batch");
    if (opt.max_outstanding < 1)
        opt.max_outstanding = 1;
}

/* ------------------------------------------------------------------------ */
/* Watched processes: RSS from /proc/PID/statm, CPU from /proc/PID/stat      */
/* ------------------------------------------------------------------------ */

static long page_kb;

static long proc_rss_kb(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/statm", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long size = 0, res = -1;
    if (fscanf(f, "%ld %ld", &size, &res) != 2)
        res = -1;
    fclose(f);
    return res < 0 ? -1 : res * page_kb;
}

static long proc_cpu_ticks(int pid)
{
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = '\0';
    /* After "pid (comm) ", whose comm may hold spaces: field 3 on. utime
     * and stime are fields 14 and 15. */
    char *p = strrchr(line, ')');
    if (!p)
        return -1;
    long ut = 0, st = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld", &ut, &st) != 2)
        return -1;
    return ut + st;
}

static const char *abort_reason;

/* Samples every watched process; sets abort_reason when one is over the
 * RSS bound. */
static void watch_sample(void)
{
    for (int i = 0; i < opt.nwatch; i++) {
        struct watch *w = &opt.watch[i];
        if (w->gone)
            continue;
        long rss = proc_rss_kb(w->pid);
        if (rss < 0) {
            w->gone = true;
            continue;
        }
        if (!w->rss_start)
            w->rss_start = rss;
        if (rss > w->rss_peak)
            w->rss_peak = rss;
        w->rss_end = rss;
        if (opt.rss_limit_kb && rss > opt.rss_limit_kb && !abort_reason) {
            static char why[96];
            snprintf(why, sizeof why, "rss_limit:%s", w->name);
            abort_reason = why;
            fprintf(stderr, "chat-load: %s (pid %d) RSS %ld MiB is over the bound: stopping\n",
                    w->name, w->pid, rss / 1024);
        }
    }
}

static void watch_cpu(bool end)
{
    for (int i = 0; i < opt.nwatch; i++) {
        long t = proc_cpu_ticks(opt.watch[i].pid);
        if (end)
            opt.watch[i].cpu_b = t;
        else
            opt.watch[i].cpu_a = t;
    }
}

/* ------------------------------------------------------------------------ */
/* Messages and what was received                                           */
/* ------------------------------------------------------------------------ */

struct msg {
    int64_t t;     /* the timestamp in its body */
    int64_t last;  /* when the last expected copy arrived */
    uint32_t want; /* copies expected: 0 until its publish succeeded */
    uint32_t got;
    bool done;     /* no longer outstanding */
};

static struct msg *msgs;
static uint32_t nmsgs, cap_msgs;

static struct {
    uint64_t sent, ok, failed, delivered, dup, stray, sub_closed, sub_errors, pub_reconnects;
    uint64_t win_sent_ok, win_delivered;
    uint64_t outstanding;
    uint64_t status[600];
} st;

static uint32_t *lat_us; /* latencies of the deliveries of messages sent in the window */
static size_t nlat, cap_lat;

static int64_t win_a, win_b; /* the measured window */
static int subs_total;

static uint32_t msg_new(int64_t t)
{
    if (nmsgs == cap_msgs) {
        cap_msgs = cap_msgs ? cap_msgs * 2 : 65536;
        msgs = xrealloc(msgs, cap_msgs * sizeof *msgs);
    }
    struct msg *m = &msgs[nmsgs];
    memset(m, 0, sizeof *m);
    m->t = t;
    return nmsgs++;
}

static void msg_finish(struct msg *m)
{
    if (!m->done) {
        m->done = true;
        st.outstanding--;
    }
}

/* A subscriber read message idx stamped t, at now. */
static void on_delivery(uint32_t idx, int64_t t, int64_t now)
{
    if (idx >= nmsgs || msgs[idx].t != t) {
        st.stray++;
        return;
    }
    struct msg *m = &msgs[idx];
    m->got++;
    /* A copy can arrive before the publisher's answer: count it, and check
     * against want once that is known. */
    uint32_t want = m->want ? m->want : (opt.group ? (uint32_t)subs_total : 1);
    if (m->got > want) {
        st.dup++;
        return;
    }
    st.delivered++;
    if (now >= win_a && now < win_b)
        st.win_delivered++;
    if (t >= win_a && t < win_b) {
        if (nlat == cap_lat) {
            cap_lat = cap_lat ? cap_lat * 2 : 65536;
            lat_us = xrealloc(lat_us, cap_lat * sizeof *lat_us);
        }
        int64_t d = (now - t) / 1000;
        lat_us[nlat++] = d < 0 ? 0 : d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
    }
    if (m->got == want) {
        m->last = now;
        if (m->want)
            msg_finish(m);
    }
}

/* Finds every complete marker "L1|idx|t|" in s; returns how many bytes of
 * s may be dropped (everything before an incomplete marker). */
static size_t scan_markers(const char *s, size_t len, int64_t now)
{
    size_t keep_from = len > 40 ? len - 40 : 0;
    const char *p = s, *end = s + len;
    while ((p = memmem(p, (size_t)(end - p), MARK, 3))) {
        const char *q = p + 3;
        char *e1, *e2;
        unsigned long idx = strtoul(q, &e1, 10);
        if (e1 >= end || *e1 != '|')
            return e1 >= end ? (size_t)(p - s) : keep_from;
        long long t = strtoll(e1 + 1, &e2, 10);
        if (e2 >= end)
            return (size_t)(p - s);
        if (*e2 == '|')
            on_delivery((uint32_t)idx, (int64_t)t, now);
        p = e2;
    }
    return keep_from;
}

/* ------------------------------------------------------------------------ */
/* Connections                                                              */
/* ------------------------------------------------------------------------ */

enum role { ROLE_SUB, ROLE_PUB };
enum cstate { C_NEW, C_CONNECTING, C_HEADERS, C_BODY, C_IDLE, C_DEAD };
enum chunk { CH_SIZE, CH_DATA, CH_CRLF, CH_TRAILER };

struct conn {
    int fd;
    enum role role;
    enum cstate state;
    int idx; /* subscriber or publisher number */
    int ep;
    bool want_out;
    bool open; /* subscriber: its stream answered 200 */
    bool close_after;
    struct buf out, in, body;
    size_t out_off;
    /* the response being read */
    int status;
    bool chunked, streaming;
    long content_left;
    enum chunk ch_state;
    long chunk_left;
    /* publisher: the message in flight */
    uint32_t msg;
    bool busy;
    /* long-poll cursors */
    long after;
    char etag[128], lastmod[64];
};

static int epfd;
static struct conn *subs, *pubs;
static char **tokens;   /* chat: each user's token */
static char **pub_toks; /* chat: each publisher's sender token */
static char *chat_id;   /* chat --group: the group */
static int opened, connecting;
static int64_t t_open_start, t_opened;
static bool stop_sending;

static const char *user_name(int i, char *out, size_t n)
{
    if (opt.group && opt.proto == PROTO_NCHAN)
        snprintf(out, n, "%sg", opt.prefix);
    else
        snprintf(out, n, "%su%d", opt.prefix, i);
    return out;
}

static struct endpoint *conn_ep(struct conn *c)
{
    return c->role == ROLE_SUB ? &opt.sub_ep[c->ep] : &opt.pub_ep[c->ep];
}

static void conn_events(struct conn *c)
{
    struct epoll_event ev = {.events = EPOLLIN | (c->want_out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_reset_response(struct conn *c)
{
    c->status = 0;
    c->chunked = c->streaming = c->close_after = false;
    c->content_left = -1;
    c->ch_state = CH_SIZE;
    c->chunk_left = 0;
    c->body.len = 0;
}

static void conn_flush(struct conn *c)
{
    while (c->out_off < c->out.len) {
        ssize_t n = send(c->fd, c->out.p + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            return; /* the read side sees the error */
        }
        c->out_off += (size_t)n;
    }
    if (c->out_off == c->out.len) {
        c->out.len = c->out_off = 0;
    }
    bool want = c->out.len > 0;
    if (want != c->want_out) {
        c->want_out = want;
        conn_events(c);
    }
}

static void conn_open(struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct endpoint *e = conn_ep(c);
    if (connect(c->fd, (struct sockaddr *)&e->addr, sizeof e->addr) < 0 && errno != EINPROGRESS)
        die("connect: %s", strerror(errno));
    c->state = C_CONNECTING;
    c->want_out = true;
    c->out.len = c->out_off = 0;
    c->in.len = 0;
    conn_reset_response(c);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    if (c->role == ROLE_SUB)
        connecting++;
}

/* Closes; with linger 0 so that thousands of closes leave no TIME_WAIT
 * behind to exhaust the ports of the next run. */
static void conn_close(struct conn *c)
{
    if (c->fd < 0)
        return;
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(c->fd);
    c->fd = -1;
    if (c->role == ROLE_SUB && c->state == C_CONNECTING)
        connecting--;
    c->state = C_DEAD;
}

static void sub_request(struct conn *c)
{
    char req[2048], name[96];
    struct endpoint *e = conn_ep(c);
    user_name(c->idx, name, sizeof name);
    int n;
    if (opt.proto == PROTO_CHAT && opt.sub_kind == SUB_SSE)
        n = snprintf(req, sizeof req,
                     "GET /v1/events HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                     "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
                     e->host, e->port, tokens[c->idx]);
    else if (opt.proto == PROTO_CHAT)
        n = snprintf(req, sizeof req,
                     "GET /v1/poll?after=%ld&timeout=55 HTTP/1.1\r\nHost: %s:%d\r\n"
                     "Authorization: Bearer %s\r\n\r\n",
                     c->after, e->host, e->port, tokens[c->idx]);
    else if (opt.sub_kind == SUB_SSE)
        n = snprintf(req, sizeof req,
                     "GET /sub?id=%s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\n\r\n",
                     name, e->host, e->port);
    else if (c->etag[0] || c->lastmod[0])
        n = snprintf(req, sizeof req,
                     "GET /sub?id=%s HTTP/1.1\r\nHost: %s:%d\r\nIf-Modified-Since: %s\r\n"
                     "If-None-Match: %s\r\n\r\n",
                     name, e->host, e->port, c->lastmod, c->etag);
    else
        n = snprintf(req, sizeof req, "GET /sub?id=%s HTTP/1.1\r\nHost: %s:%d\r\n\r\n", name,
                     e->host, e->port);
    buf_add(&c->out, req, (size_t)n);
    conn_flush(c);
}

/* A recipient for publisher c: any user, or with --cross one whose stream
 * is on another node than the one c posts to. */
static int pick_recipient(struct conn *c)
{
    int u = (int)rnd((uint32_t)opt.users);
    if (opt.cross && opt.nsub_ep > 1) {
        for (int tries = 0; tries < 16 && u % opt.nsub_ep == c->ep; tries++)
            u = (int)rnd((uint32_t)opt.users);
    }
    return u;
}

static void pub_send(struct conn *c, int64_t t)
{
    char body[4200], req[6000], name[96];
    uint32_t idx = msg_new(t);
    int blen = snprintf(body, sizeof body, MARK "%u|%lld|", idx, (long long)t);
    while (blen < opt.body_bytes)
        body[blen++] = 'x';
    body[blen] = '\0';
    struct endpoint *e = conn_ep(c);
    int n;
    if (opt.proto == PROTO_CHAT) {
        char json[4400];
        int jl;
        if (opt.group)
            jl = snprintf(json, sizeof json, "{\"chat\":\"%s\",\"body\":\"%s\"}", chat_id, body);
        else
            jl = snprintf(json, sizeof json, "{\"to\":\"%s\",\"body\":\"%s\"}",
                          user_name(pick_recipient(c), name, sizeof name), body);
        n = snprintf(req, sizeof req,
                     "POST /v1/messages HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                     "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                     e->host, e->port, pub_toks[c->idx], jl, json);
    } else {
        user_name(opt.group ? 0 : pick_recipient(c), name, sizeof name);
        n = snprintf(req, sizeof req,
                     "POST /pub?id=%s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %d\r\n\r\n%s",
                     name, e->host, e->port, blen, body);
    }
    c->msg = idx;
    c->busy = true;
    c->state = C_HEADERS;
    st.sent++;
    st.outstanding++;
    buf_add(&c->out, req, (size_t)n);
    conn_flush(c);
}

static void on_pub_answer(struct conn *c, int64_t now)
{
    struct msg *m = &msgs[c->msg];
    int s = c->status;
    st.status[s > 0 && s < 600 ? s : 0]++;
    c->busy = false;
    if (s >= 200 && s < 300) {
        st.ok++;
        if (m->t >= win_a && m->t < win_b)
            st.win_sent_ok++;
        m->want = opt.no_subs ? 0 : opt.group ? (uint32_t)subs_total : 1;
        if (m->got >= m->want)
            msg_finish(m);
    } else {
        st.failed++;
        msg_finish(m);
    }
    (void)now;
}

/* A publisher connection that failed mid-request: its message is lost. */
static void pub_lost(struct conn *c)
{
    if (c->busy) {
        st.status[0]++;
        st.failed++;
        c->busy = false;
        msg_finish(&msgs[c->msg]);
    }
    st.pub_reconnects++;
    conn_close(c);
    conn_open(c);
}

static void sub_lost(struct conn *c)
{
    st.sub_closed++;
    if (c->open) {
        c->open = false;
        opened--;
    }
    conn_close(c);
}

/* Whether the header line at l (ending in CRLF) holds word, in any case. */
static bool line_has(const char *l, const char *word)
{
    const char *eol = strstr(l, "\r\n");
    size_t n = strlen(word);
    for (const char *p = l; p + n <= eol; p++)
        if (!strncasecmp(p, word, n))
            return true;
    return false;
}

/* Parses a header block (NUL-terminated, ends at the blank line). */
static void parse_headers(struct conn *c, char *h)
{
    c->status = 0;
    if (strncmp(h, "HTTP/1.", 7) == 0)
        c->status = atoi(h + 9);
    c->content_left = -1;
    for (char *line = strstr(h, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        char *l = line + 2;
        if (!strncasecmp(l, "Content-Length:", 15))
            c->content_left = atol(l + 15);
        else if (!strncasecmp(l, "Transfer-Encoding:", 18) && line_has(l, "chunked"))
            c->chunked = true;
        else if (!strncasecmp(l, "Connection:", 11) && line_has(l, "close"))
            c->close_after = true; else if (c->role == ROLE_SUB && (!strncasecmp(l, "Etag:", 5) ||
                                            !strncasecmp(l, "Last-Modified:", 14))) {
            bool et = l[0] == 'E' || l[0] == 'e';
            char *v = l + (et ? 5 : 14), *eol = strstr(l, "\r\n");
            while (*v == ' ')
                v++;
            char *dst = et ? c->etag : c->lastmod;
            size_t cap = et ? sizeof c->etag : sizeof c->lastmod;
            snprintf(dst, cap, "%.*s", (int)(eol - v), v);
        }
    }
    if (c->chunked)
        c->content_left = -1;
    /* A 200 to a subscriber's SSE request is a stream: its body never ends. */
    c->streaming = c->role == ROLE_SUB && opt.sub_kind == SUB_SSE && c->status == 200;
}

/* Moves body bytes from c->in to c->body, undoing chunked framing. Returns
 * true when the body is complete. */
static bool take_body(struct conn *c)
{
    size_t i = 0;
    bool done = false;
    if (!c->chunked) {
        size_t n = c->in.len;
        if (c->content_left >= 0 && (long)n >= c->content_left) {
            n = (size_t)c->content_left;
            done = true;
        }
        buf_add(&c->body, c->in.p, n);
        if (c->content_left >= 0)
            c->content_left -= (long)n;
        buf_eat(&c->in, n);
        return done;
    }
    while (i < c->in.len && !done) {
        char *p = c->in.p + i;
        size_t avail = c->in.len - i;
        char *eol;
        switch (c->ch_state) {
        case CH_SIZE:
            eol = memmem(p, avail, "\r\n", 2);
            if (!eol)
                goto out;
            c->chunk_left = strtol(p, NULL, 16);
            i += (size_t)(eol - p) + 2;
            c->ch_state = c->chunk_left ? CH_DATA : CH_TRAILER;
            break;
        case CH_DATA: {
            size_t n = avail < (size_t)c->chunk_left ? avail : (size_t)c->chunk_left;
            buf_add(&c->body, p, n);
            i += n;
            c->chunk_left -= (long)n;
            if (!c->chunk_left)
                c->ch_state = CH_CRLF;
            break;
        }
        case CH_CRLF:
            if (avail < 2)
                goto out;
            i += 2;
            c->ch_state = CH_SIZE;
            break;
        case CH_TRAILER:
            eol = memmem(p, avail, "\r\n", 2);
            if (!eol)
                goto out;
            i += (size_t)(eol - p) + 2;
            if (eol == p)
                done = true;
            break;
        }
    }
out:
    buf_eat(&c->in, i);
    return done;
}

static void sub_poll_answer(struct conn *c, int64_t now)
{
    if (c->status == 200) {
        scan_markers(c->body.p ? c->body.p : "", c->body.len, now);
        if (opt.proto == PROTO_CHAT && c->body.p) {
            char *na = strstr(c->body.p, "\"next_after\":");
            if (na)
                c->after = atol(na + 13);
        }
    } else if (c->status != 304 && c->status != 408) {
        st.sub_errors++;
    }
}

static void conn_readable(struct conn *c, int64_t now)
{
    static char rbuf[65536];
    for (int loops = 0; loops < 8; loops++) {
        ssize_t n = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        if (n <= 0) {
            if (c->role == ROLE_PUB)
                pub_lost(c);
            else
                sub_lost(c);
            return;
        }
        buf_add(&c->in, rbuf, (size_t)n);
        if ((size_t)n < sizeof rbuf)
            break;
    }
    for (;;) {
        if (c->state == C_HEADERS) {
            char *end = c->in.p ? strstr(c->in.p, "\r\n\r\n") : NULL;
            if (!end)
                return;
            end[2] = '\0';
            parse_headers(c, c->in.p);
            buf_eat(&c->in, (size_t)(end - c->in.p) + 4);
            c->state = C_BODY;
            if (c->role == ROLE_SUB && !c->open && c->status == 200) {
                c->open = true;
                opened++;
                if (opened == subs_total)
                    t_opened = now;
            } else if (c->role == ROLE_SUB && c->status != 200) {
                st.sub_errors++;
            }
        }
        if (c->state != C_BODY)
            return;
        bool done = take_body(c);
        if (c->streaming) {
            size_t drop = scan_markers(c->body.p ? c->body.p : "", c->body.len, now);
            buf_eat(&c->body, drop);
            if (!done)
                return;
        }
        if (!done)
            return;
        /* A complete response. */
        if (c->role == ROLE_PUB) {
            on_pub_answer(c, now);
        } else if (c->streaming || opt.sub_kind == SUB_SSE) {
            sub_lost(c); /* a stream that ended, or was refused */
            return;
        } else {
            sub_poll_answer(c, now);
        }
        bool close_it = c->close_after;
        conn_reset_response(c);
        c->state = C_HEADERS;
        if (close_it) {
            if (c->role == ROLE_PUB) {
                st.pub_reconnects++;
                conn_close(c);
                conn_open(c);
            } else {
                conn_close(c);
                conn_open(c);
            }
            return;
        }
        if (c->role == ROLE_SUB)
            sub_request(c); /* the next long-poll */
        else
            c->state = C_IDLE;
        if (c->role == ROLE_PUB)
            return;
    }
}

static void conn_writable(struct conn *c)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (c->role == ROLE_SUB)
            connecting--;
        if (err) {
            c->state = C_NEW; /* so that close does not count it twice */
            if (c->role == ROLE_PUB) {
                close(c->fd);
                c->fd = -1;
                st.pub_reconnects++;
                conn_open(c);
            } else {
                st.sub_errors++;
                close(c->fd);
                c->fd = -1;
                c->state = C_NEW; /* retried by open_more */
            }
            return;
        }
        if (c->role == ROLE_SUB) {
            c->state = C_HEADERS;
            sub_request(c);
            if (opt.sub_kind == SUB_POLL && !c->open) {
                /* A long-poll gives no sign that it is waiting: count it open
                 * once its request is out. */
                c->open = true;
                opened++;
                if (opened == subs_total)
                    t_opened = now_ns();
            }
        } else {
            c->state = C_IDLE;
        }
    }
    conn_flush(c);
}

/* Starts connecting subscribers that are not, at most connect_batch at a
 * time, so that a listen backlog does not overflow into SYN retries. */
static void open_more(void)
{
    static int next;
    for (; next < subs_total && connecting < opt.connect_batch; next++)
        conn_open(&subs[next]);
    if (next == subs_total) {
        /* Retry those whose connect failed. */
        for (int i = 0; i < subs_total && connecting < opt.connect_batch; i++)
            if (subs[i].state == C_NEW && subs[i].fd < 0)
                conn_open(&subs[i]);
    }
}

/* ------------------------------------------------------------------------ */
/* The loop                                                                 */
/* ------------------------------------------------------------------------ */

static volatile sig_atomic_t got_signal;
static void on_signal(int sig)
{
    got_signal = sig;
}

static int64_t t_start, t_deadline, last_sample;

/* Waits for events until `until` (ns, monotonic) and handles them. */
static void loop_once(int64_t until)
{
    struct epoll_event evs[512];
    int64_t now = now_ns();
    int64_t wait = until - now;
    if (wait < 0)
        wait = 0;
    if (wait > 50000000)
        wait = 50000000;
    struct timespec ts = {.tv_sec = wait / 1000000000, .tv_nsec = wait % 1000000000};
    int n = epoll_pwait2(epfd, evs, 512, &ts, NULL);
    now = now_ns();
    for (int i = 0; i < n; i++) {
        struct conn *c = evs[i].data.ptr;
        if (c->fd < 0)
            continue;
        if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            if (c->state == C_CONNECTING || c->want_out)
                conn_writable(c);
        if (c->fd >= 0 && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) &&
            c->state != C_CONNECTING)
            conn_readable(c, now);
    }
    if (now - last_sample > 100000000) {
        last_sample = now;
        watch_sample();
    }
    if (got_signal && !abort_reason)
        abort_reason = "signal";
    if (now > t_deadline && !abort_reason)
        abort_reason = "time_limit";
}

static bool stopped(void)
{
    return abort_reason != NULL;
}

/* Opens every subscriber; false if they were not all open in time. */
static bool open_all(void)
{
    t_open_start = now_ns();
    int64_t limit = t_open_start + (int64_t)(opt.open_timeout * 1e9);
    while (opened < subs_total && !stopped()) {
        open_more();
        loop_once(now_ns() + 10000000);
        if (now_ns() > limit) {
            fprintf(stderr, "chat-load: %d of %d subscribers open after %.0f s\n", opened,
                    subs_total, opt.open_timeout);
            return false;
        }
    }
    return opened == subs_total;
}

/* Runs the loop for s seconds (or until stopped). */
static void idle_for(double s)
{
    int64_t until = now_ns() + (int64_t)(s * 1e9);
    while (now_ns() < until && !stopped())
        loop_once(until);
}

/* Closed loop: every idle publisher sends, while outstanding allows. */
static void feed_closed(int64_t now)
{
    for (int i = 0; i < opt.pubs; i++) {
        struct conn *c = &pubs[i];
        if (c->state != C_IDLE || c->busy || c->out.len)
            continue;
        if (!opt.no_subs && st.outstanding >= (uint64_t)opt.max_outstanding)
            return;
        pub_send(c, now_ns());
    }
    (void)now;
}

/* Sends the one message of a round and waits until every member has it;
 * returns its time to the last member in ns, or -1. */
static int64_t one_round(void)
{
    struct conn *c = &pubs[0];
    int64_t limit = now_ns() + 30000000000LL;
    while ((c->state != C_IDLE || c->busy) && now_ns() < limit && !stopped())
        loop_once(now_ns() + 1000000);
    uint32_t idx = nmsgs;
    pub_send(c, now_ns());
    while (now_ns() < limit && !stopped()) {
        loop_once(now_ns() + 1000000);
        if (msgs[idx].want && msgs[idx].got >= msgs[idx].want)
            return msgs[idx].last - msgs[idx].t;
        if (!c->busy && !msgs[idx].want)
            return -1; /* refused */
    }
    return -1;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_ms(double p)
{
    if (!nlat)
        return -1;
    size_t i = (size_t)(p * (double)nlat);
    if (i >= nlat)
        i = nlat - 1;
    return lat_us[i] / 1000.0;
}

/* ------------------------------------------------------------------------ */
/* Chat: tokens and the group, with one blocking request                    */
/* ------------------------------------------------------------------------ */

static char *mint(const char *user)
{
    jwt_t *j = NULL;
    if (jwt_new(&j) || jwt_set_alg(j, JWT_ALG_HS256, (const unsigned char *)opt.secret,
                                   (int)strlen(opt.secret)) ||
        jwt_add_grant(j, "sub", user) || jwt_add_grant_int(j, "exp", (long)time(NULL) + 6 * 3600))
        die("cannot mint a token for %s", user);
    char *s = jwt_encode_str(j);
    jwt_free(j);
    if (!s)
        die("cannot mint a token for %s", user);
    return s;
}

/* A blocking request with a 30 s bound; returns the status and the body
 * (caller frees), or -1. */
static int simple_request(struct endpoint *e, const char *req, size_t len, char **body)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = 30};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&e->addr, sizeof e->addr) < 0) {
        close(fd);
        return -1;
    }
    for (size_t off = 0; off < len;) {
        ssize_t n = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (n <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)n;
    }
    struct buf b = {0};
    char tmp[8192];
    ssize_t n;
    while ((n = recv(fd, tmp, sizeof tmp, 0)) > 0)
        buf_add(&b, tmp, (size_t)n);
    close(fd);
    if (!b.p || strncmp(b.p, "HTTP/1.", 7)) {
        buf_free(&b);
        return -1;
    }
    int status = atoi(b.p + 9);
    char *sep = strstr(b.p, "\r\n\r\n");
    *body = xstrdup(sep ? sep + 4 : "");
    buf_free(&b);
    return status;
}

/* Creates the group of every streaming user, owned by publisher 0's user. */
static void create_group(void)
{
    struct buf json = {0}, req = {0};
    char name[96], head[1024];
    const char *open_ = "{\"name\":\"bench\",\"members\":[";
    buf_add(&json, open_, strlen(open_));
    for (int i = 0; i < opt.users; i++) {
        int n = snprintf(name, sizeof name, "%s\"%su%d\"", i ? "," : "", opt.prefix, i);
        buf_add(&json, name, (size_t)n);
    }
    buf_add(&json, "]}", 2);
    int hl = snprintf(head, sizeof head,
                      "POST /v1/chats HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n\r\n",
                      opt.pub_ep[0].host, opt.pub_ep[0].port, pub_toks[0], json.len);
    buf_add(&req, head, (size_t)hl);
    buf_add(&req, json.p, json.len);
    char *body = NULL;
    int status = simple_request(&opt.pub_ep[0], req.p, req.len, &body);
    char *p = body ? strstr(body, "\"chat\":\"") : NULL;
    if (status != 201 || !p) {
        fprintf(stderr, "chat-load: POST /v1/chats answered %d: %.300s\n", status,
                body ? body : "");
        exit(1);
    }
    p += 8;
    chat_id = xstrdup(p);
    chat_id[strcspn(chat_id, "\"")] = '\0';
    free(body);
    buf_free(&json);
    buf_free(&req);
}

/* ------------------------------------------------------------------------ */
/* Report                                                                   */
/* ------------------------------------------------------------------------ */

static void report_watch(void)
{
    long hz = sysconf(_SC_CLK_TCK);
    double win = (double)(win_b - win_a) / 1e9;
    for (int i = 0; i < opt.nwatch; i++) {
        struct watch *w = &opt.watch[i];
        double cpu = (w->cpu_a >= 0 && w->cpu_b >= 0) ? (double)(w->cpu_b - w->cpu_a) / hz : -1;
        printf("WATCH name=%s pid=%d rss_start_kb=%ld rss_open_kb=%ld rss_peak_kb=%ld "
               "rss_end_kb=%ld cpu_s=%.2f cpu_pct=%.1f gone=%d\n",
               w->name, w->pid, w->rss_start, w->rss_open, w->rss_peak, w->rss_end, cpu,
               cpu >= 0 && win > 0 ? 100.0 * cpu / win : -1, w->gone);
    }
}

static void report_status(void)
{
    printf("STATUS");
    for (int s = 0; s < 600; s++)
        if (st.status[s])
            printf(" %d=%llu", s, (unsigned long long)st.status[s]);
    printf("\n");
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    page_kb = sysconf(_SC_PAGESIZE) / 1024;
    rng_state ^= (uint64_t)now_ns();
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    subs_total = opt.no_subs ? 0 : opt.users;
    if ((rlim_t)subs_total + (rlim_t)opt.pubs + 32 > rl.rlim_cur) {
        fprintf(stderr, "chat-load: %d connections do not fit in %ld open files\n",
                subs_total + opt.pubs, (long)rl.rlim_cur);
        return 1;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    t_start = last_sample = now_ns();
    t_deadline = t_start + (int64_t)(opt.time_limit * 1e9);
    win_a = win_b = INT64_MAX; /* nothing is in the window until it starts */

    char name[96];
    if (opt.proto == PROTO_CHAT) {
        tokens = xrealloc(NULL, (size_t)opt.users * sizeof *tokens);
        for (int i = 0; i < opt.users; i++)
            tokens[i] = mint(user_name(i, name, sizeof name));
        pub_toks = xrealloc(NULL, (size_t)opt.pubs * sizeof *pub_toks);
        for (int i = 0; i < opt.pubs; i++) {
            if (opt.group)
                snprintf(name, sizeof name, "%so", opt.prefix);
            else
                snprintf(name, sizeof name, "%ss%d", opt.prefix, i);
            pub_toks[i] = mint(name);
        }
        if (opt.group && !opt.idle)
            create_group();
    }
    watch_sample();
    for (int i = 0; i < opt.nwatch; i++)
        opt.watch[i].rss_start = opt.watch[i].rss_end;

    subs = xrealloc(NULL, (size_t)(subs_total ? subs_total : 1) * sizeof *subs);
    memset(subs, 0, (size_t)(subs_total ? subs_total : 1) * sizeof *subs);
    for (int i = 0; i < subs_total; i++) {
        subs[i].fd = -1;
        subs[i].role = ROLE_SUB;
        subs[i].idx = i;
        subs[i].ep = i % opt.nsub_ep;
    }
    bool all_open = open_all();
    double open_s = t_opened ? (double)(t_opened - t_open_start) / 1e9 : -1;
    idle_for(opt.settle);
    watch_sample();
    for (int i = 0; i < opt.nwatch; i++)
        opt.watch[i].rss_open = opt.watch[i].rss_end;

    if (opt.idle) {
        win_a = now_ns();
        watch_cpu(false);
        if (all_open)
            idle_for(opt.hold);
        win_b = now_ns();
        watch_cpu(true);
        watch_sample();
        printf("RESULT mode=idle subs=%d opened=%d open_s=%.3f hold_s=%.1f sub_closed=%llu "
               "sub_errors=%llu aborted=%s\n",
               subs_total, opened, open_s, (double)(win_b - win_a) / 1e9,
               (unsigned long long)st.sub_closed, (unsigned long long)st.sub_errors,
               abort_reason ? abort_reason : (all_open ? "no" : "open_timeout"));
        report_watch();
        for (int i = 0; i < subs_total; i++)
            conn_close(&subs[i]);
        return abort_reason ? 3 : all_open ? 0 : 1;
    }

    pubs = xrealloc(NULL, (size_t)opt.pubs * sizeof *pubs);
    memset(pubs, 0, (size_t)opt.pubs * sizeof *pubs);
    for (int i = 0; i < opt.pubs; i++) {
        pubs[i].fd = -1;
        pubs[i].role = ROLE_PUB;
        pubs[i].idx = i;
        pubs[i].ep = i % opt.npub_ep;
        conn_open(&pubs[i]);
    }
    idle_for(0.2);

    /* Rounds: one message at a time, the time until its last copy arrives. */
    int64_t *rounds = NULL;
    int nrounds = 0;
    if (all_open && opt.rounds > 0) {
        rounds = xrealloc(NULL, (size_t)opt.rounds * sizeof *rounds);
        for (int r = 0; r < opt.rounds && !stopped(); r++) {
            int64_t d = one_round();
            if (d >= 0)
                rounds[nrounds++] = d;
        }
    }
    uint64_t pre_ok = st.ok, pre_sent = st.sent;

    /* The main phase: warm-up, the measured window, then the drain. */
    int64_t t0 = now_ns();
    win_a = t0 + (int64_t)(opt.warmup * 1e9);
    win_b = win_a + (int64_t)(opt.duration * 1e9);
    bool cpu_started = false;
    uint64_t scheduled = 0, behind_max = 0;
    while (all_open && !stopped()) {
        int64_t now = now_ns();
        if (!cpu_started && now >= win_a) {
            watch_cpu(false);
            cpu_started = true;
        }
        if (now >= win_b) {
            stop_sending = true;
            break;
        }
        int64_t next = now + 50000000;
        if (opt.rate > 0) {
            /* Open loop: message k is due at t0 + k / rate and carries that
             * time, so that a send delayed by busy connections counts in
             * its latency (no coordinated omission). */
            for (int i = 0; i < opt.pubs; i++) {
                struct conn *c = &pubs[i];
                int64_t due = t0 + (int64_t)((double)scheduled * 1e9 / opt.rate);
                if (due > now) {
                    next = due;
                    break;
                }
                if (c->state == C_IDLE && !c->busy && !c->out.len) {
                    pub_send(c, due);
                    scheduled++;
                    i = -1; /* look for the next due message from the first connection */
                }
            }
            int64_t due = t0 + (int64_t)((double)scheduled * 1e9 / opt.rate);
            if (due <= now) {
                uint64_t behind = (uint64_t)((double)(now - due) * opt.rate / 1e9);
                if (behind > behind_max)
                    behind_max = behind;
                next = now + 200000; /* every connection is busy */
            }
        } else {
            feed_closed(now);
        }
        loop_once(next);
    }
    if (!cpu_started)
        watch_cpu(false);
    watch_cpu(true);
    int64_t drain_until = now_ns() + (int64_t)(opt.drain * 1e9);
    while (!stopped() && now_ns() < drain_until) {
        bool busy = false;
        for (int i = 0; i < opt.pubs; i++)
            busy |= pubs[i].busy;
        if (!busy && st.outstanding == 0)
            break;
        loop_once(now_ns() + 5000000);
    }
    watch_sample();
    double drain_s = (double)(now_ns() - win_b) / 1e9;

    /* What was expected of the main phase, and what arrived. */
    uint64_t expected = 0, got = 0, missing_msgs = 0;
    for (uint32_t i = 0; i < nmsgs; i++) {
        expected += msgs[i].want;
        uint32_t g = msgs[i].got < msgs[i].want ? msgs[i].got : msgs[i].want;
        got += g;
        if (g < msgs[i].want)
            missing_msgs++;
    }
    qsort(lat_us, nlat, sizeof *lat_us, cmp_u32);
    double win = (double)(win_b - win_a) / 1e9;
    printf("RESULT mode=run proto=%s subs=%d opened=%d open_s=%.3f sent=%llu ok=%llu "
           "failed=%llu expected=%llu delivered=%llu missing=%llu missing_msgs=%llu dup=%llu "
           "stray=%llu window_s=%.2f drain_s=%.2f sent_rate=%.1f delivered_rate=%.1f lat_n=%zu "
           "p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f behind_max=%llu "
           "sub_closed=%llu sub_errors=%llu pub_reconnects=%llu pre_sent=%llu pre_ok=%llu "
           "aborted=%s\n",
           opt.proto == PROTO_CHAT ? "chat" : "nchan", subs_total, opened, open_s,
           (unsigned long long)st.sent, (unsigned long long)st.ok,
           (unsigned long long)st.failed, (unsigned long long)expected,
           (unsigned long long)got, (unsigned long long)(expected - got),
           (unsigned long long)missing_msgs, (unsigned long long)st.dup,
           (unsigned long long)st.stray, win, drain_s, (double)st.win_sent_ok / win,
           (double)st.win_delivered / win, nlat, pct_ms(0.50), pct_ms(0.90), pct_ms(0.99),
           pct_ms(0.999), nlat ? lat_us[nlat - 1] / 1000.0 : -1.0,
           (unsigned long long)behind_max, (unsigned long long)st.sub_closed,
           (unsigned long long)st.sub_errors, (unsigned long long)st.pub_reconnects,
           (unsigned long long)pre_sent, (unsigned long long)pre_ok,
           abort_reason ? abort_reason : (all_open ? "no" : "open_timeout"));
    report_status();
    if (nrounds) {
        qsort(rounds, (size_t)nrounds, sizeof *rounds, cmp_i64);
        printf("ROUNDS n=%d p50_ms=%.2f min_ms=%.2f max_ms=%.2f\n", nrounds,
               rounds[nrounds / 2] / 1e6, rounds[0] / 1e6, rounds[nrounds - 1] / 1e6);
    }
    report_watch();
    for (int i = 0; i < subs_total; i++)
        conn_close(&subs[i]);
    for (int i = 0; i < opt.pubs; i++)
        conn_close(&pubs[i]);
    if (abort_reason)
        return 3;
    return all_open ? 0 : 1;
}
