/* chat-store-load: the durable path alone, without HTTP or Redis.
 *
 * It links the chatd nodes' own store code (lib/) and drives it the way a
 * node does, as fast as MariaDB allows: --threads sender threads, each with
 * its own MySQL connection, call chat_store_send in a closed loop for
 * direct messages between random users (concurrent sends share
 * transactions through the store's group commit, as on a node), and one
 * ACK thread marks their inbox rows DELIVERED with chat_store_ack_batch
 * every [delivery] ack_batch_ms, as a node's ACK worker does. What it
 * reports is the rate at which MariaDB stores and ACKs messages when
 * nothing else wants the CPU: the ceiling of the 1:1 figures of
 * ./chatstack bench on the same machine, whatever the HTTP and Redis
 * sides cost.
 *
 *   chat-store-load -c NODE.INI [options]
 *
 * With --group N it creates one group of N members (PREFIXs0, the owner,
 * and PREFIXu0..N-2) and every thread posts to it as the owner: each send
 * writes an inbox row for every other member, and each of those is ACKed;
 * the rate it reports is then of inbox rows (the events of a fan-out).
 *
 * Senders are PREFIXs<i>, recipients PREFIXu<i>, as chat-load names them,
 * so run.sh checks the rows the same way. Output: a RESULT line of
 * key=value words and a WATCH line per --watch process (its CPU in the
 * measured window). Bounded by --duration and --time-limit. */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "config.h"
#include "id.h"
#include "metrics.h"
#include "store.h"

#define MAX_WATCH 8
#define LAT_MAX (1 << 21) /* latencies kept for the percentiles */

static struct {
    const char *config;
    int threads;
    int users;
    double duration, warmup;
    const char *prefix;
    int first_sender;
    int group; /* members of the one group, or 0: direct messages */
    int time_limit;
} opt = {NULL, 64, 2000, 10, 2, "st-", 0, 0, 120};
static char group_id[CHAT_CHAT_ID_LEN + 1];

static struct chat_config cfg;

static struct watch {
    char name[64];
    int pid;
    double cpu0, cpu1;
} watches[MAX_WATCH];
static int nwatch;

static struct {
    pthread_mutex_t lock;
    struct chat_row_ref *v;
    size_t n, cap;
    bool senders_done;
} acks = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0, false};

static atomic_long sent, stored, failed, acked, ack_failed, measured, rows_measured, seq_no;
static int64_t t_start, t_measure, t_end; /* ns, monotonic */
static int64_t *lat;                      /* ns, of the measured sends */
static atomic_long nlat;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void usage(void)
{
    fprintf(stderr, "usage: chat-store-load -c NODE.INI [options]\n"
                    "  --threads N       sender threads, one MySQL connection each (64)\n"
                    "  --users N         recipients, PREFIXu0..N-1 (2000)\n"
                    "  --duration S      measured seconds (10)\n"
                    "  --warmup S        seconds before them, not counted (2)\n"
                    "  --prefix P        user name prefix (st-)\n"
                    "  --first-sender N  senders are PREFIXsN.. (0; one range per process)\n"
                    "  --group N         post to one group of N members instead\n"
                    "  --watch NAME=PID  report that process's CPU in the measured window\n"
                    "  --time-limit S    end the whole run after S seconds (120)\n");
    exit(2);
}

/* utime + stime of pid in seconds, or -1. */
static double cpu_seconds(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    unsigned long ut, st;
    /* After "pid (comm)": state and 10 fields, then utime and stime. */
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static void parse(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        i++;
        if (!strcmp(a, "-c"))
            opt.config = v;
        else if (!strcmp(a, "--threads"))
            opt.threads = atoi(v);
        else if (!strcmp(a, "--users"))
            opt.users = atoi(v);
        else if (!strcmp(a, "--duration"))
            opt.duration = atof(v);
        else if (!strcmp(a, "--warmup"))
            opt.warmup = atof(v);
        else if (!strcmp(a, "--prefix"))
            opt.prefix = v;
        else if (!strcmp(a, "--group"))
            opt.group = atoi(v);
        else if (!strcmp(a, "--first-sender"))
            opt.first_sender = atoi(v);
        else if (!strcmp(a, "--time-limit"))
            opt.time_limit = atoi(v);
        else if (!strcmp(a, "--watch")) {
            const char *eq = strchr(v, '=');
            if (!eq || nwatch == MAX_WATCH || eq - v >= (long)sizeof(watches[0].name))
                usage();
            struct watch *w = &watches[nwatch++];
            snprintf(w->name, sizeof(w->name), "%.*s", (int)(eq - v), v);
            w->pid = atoi(eq + 1);
        } else
            usage();
    }
    if (!opt.config || opt.threads < 1 || opt.threads > 1024 || opt.users < 1 ||
        opt.duration <= 0 || opt.warmup < 0 || opt.first_sender < 0 || opt.group < 0 ||
        opt.group == 1 || opt.time_limit < 1 || strlen(opt.prefix) > 40)
        usage();
}

static void ack_push(const char *user, uint64_t seq)
{
    pthread_mutex_lock(&acks.lock);
    if (acks.n == acks.cap) {
        acks.cap = acks.cap ? acks.cap * 2 : 1024;
        acks.v = chat_xrealloc(acks.v, acks.cap * sizeof(*acks.v));
    }
    struct chat_row_ref *r = &acks.v[acks.n++];
    snprintf(r->user, sizeof(r->user), "%s", user);
    r->seq = seq;
    pthread_mutex_unlock(&acks.lock);
}

static void *sender(void *arg)
{
    unsigned rnd = (unsigned)(uintptr_t)arg * 2654435761u + (unsigned)now_ns();
    struct chat_store *st = chat_store_local(&cfg);
    char from[CHAT_USER_MAX + 1], to[CHAT_USER_MAX + 1], body[96];
    snprintf(from, sizeof(from), "%ss%d", opt.prefix,
             opt.group ? 0 : opt.first_sender + (int)(uintptr_t)arg);
    while (now_ns() < t_end) {
        if (!opt.group)
            snprintf(to, sizeof(to), "%su%d", opt.prefix,
                     (int)(rand_r(&rnd) % (unsigned)opt.users));
        int64_t t0 = now_ns();
        long k = atomic_fetch_add(&seq_no, 1);
        int bl = snprintf(body, sizeof(body), "L1|%ld|%lld|", k, (long long)t0);
        struct chat_send in = {.from = from,
                               .to = opt.group ? NULL : to,
                               .chat = opt.group ? group_id : NULL,
                               .body = body,
                               .body_len = (size_t)bl};
        struct chat_sent out;
        int err = chat_store_send(st, &in, &out);
        int64_t t1 = now_ns();
        bool counted = t0 >= t_measure && t1 <= t_end;
        atomic_fetch_add(&sent, 1);
        if (err) {
            atomic_fetch_add(&failed, 1);
            usleep(1000); /* MySQL down: do not spin */
            continue;
        }
        atomic_fetch_add(&stored, 1);
        if (counted) {
            atomic_fetch_add(&measured, 1);
            atomic_fetch_add(&rows_measured, (long)out.ntargets);
            long i = atomic_fetch_add(&nlat, 1);
            if (i < LAT_MAX)
                lat[i] = t1 - t0;
        }
        for (size_t i = 0; i < out.ntargets; i++)
            ack_push(out.targets[i].user, out.targets[i].seq);
        chat_sent_cleanup(&out);
    }
    return NULL;
}

/* Every ack_batch_ms, the ACKs gathered so far in one chat_store_ack_batch,
 * until the senders are done and none is left. */
static void *acker(void *arg)
{
    (void)arg;
    struct chat_store *st = chat_store_local(&cfg);
    struct chat_row_ref *batch = NULL;
    size_t cap = 0;
    int64_t limit = t_start + (int64_t)opt.time_limit * 1000000000LL;
    for (;;) {
        struct timespec d = {0, (long)(cfg.ack_batch_ms > 0 ? cfg.ack_batch_ms : 1) * 1000000L};
        nanosleep(&d, NULL);
        pthread_mutex_lock(&acks.lock);
        size_t n = acks.n;
        bool done = acks.senders_done;
        if (n > cap) {
            cap = n;
            batch = chat_xrealloc(batch, cap * sizeof(*batch));
        }
        if (n)
            memcpy(batch, acks.v, n * sizeof(*batch));
        acks.n = 0;
        pthread_mutex_unlock(&acks.lock);
        if (n) {
            size_t applied = 0;
            if (chat_store_ack_batch(st, batch, n, cfg.ack_policy, chat_now_ms(), &applied) == 0)
                atomic_fetch_add(&acked, (long)applied);
            else
                atomic_fetch_add(&ack_failed, (long)n);
        }
        if ((done && n == 0) || now_ns() > limit)
            break;
    }
    free(batch);
    return NULL;
}

/* The group of --group: PREFIXs0 owns it, PREFIXu0.. are the others. */
static int make_group(void)
{
    size_t n = (size_t)opt.group - 1;
    char(*names)[CHAT_USER_MAX + 1] = chat_xcalloc(n, sizeof(*names));
    const char **members = chat_xcalloc(n, sizeof(*members));
    char owner[CHAT_USER_MAX + 1];
    snprintf(owner, sizeof(owner), "%ss0", opt.prefix);
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], sizeof(names[i]), "%su%zu", opt.prefix, i);
        members[i] = names[i];
    }
    struct chat_group g;
    int err = chat_store_group_create(chat_store_local(&cfg), owner, "store load", members, n, &g);
    if (err == 0) {
        snprintf(group_id, sizeof(group_id), "%s", g.id);
        chat_group_cleanup(&g);
    }
    free(members);
    free(names);
    return err;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct_ms(const int64_t *v, size_t n, double p)
{
    if (n == 0)
        return -1;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return (double)v[i] / 1e6;
}

int main(int argc, char **argv)
{
    parse(argc, argv);
    if (chat_config_open(&cfg, opt.config, "chat-store-load") != 0)
        return 2;
    alarm((unsigned)opt.time_limit); /* the hard bound, whatever MySQL does */
    if (opt.group && make_group() != 0) {
        fprintf(stderr, "chat-store-load: the group could not be created\n");
        chat_config_cleanup(&cfg);
        return 1;
    }
    lat = chat_xcalloc(LAT_MAX, sizeof(*lat));
    t_start = now_ns();
    t_measure = t_start + (int64_t)(opt.warmup * 1e9);
    t_end = t_measure + (int64_t)(opt.duration * 1e9);

    pthread_t ack_thread, *threads = chat_xcalloc((size_t)opt.threads, sizeof(*threads));
    if (pthread_create(&ack_thread, NULL, acker, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    int started = 0;
    for (; started < opt.threads; started++)
        if (pthread_create(&threads[started], NULL, sender, (void *)(uintptr_t)started) != 0)
            break;
    struct timespec to_measure = {(time_t)opt.warmup,
                                  (long)((opt.warmup - (double)(time_t)opt.warmup) * 1e9)};
    nanosleep(&to_measure, NULL);
    for (int i = 0; i < nwatch; i++)
        watches[i].cpu0 = cpu_seconds(watches[i].pid);
    long batches0 = atomic_load(&chat_metrics.send_batches);
    long batched0 = atomic_load(&chat_metrics.send_batched);
    while (now_ns() < t_end)
        usleep(20000);
    for (int i = 0; i < nwatch; i++)
        watches[i].cpu1 = cpu_seconds(watches[i].pid);
    long batches = atomic_load(&chat_metrics.send_batches) - batches0;
    long batched = atomic_load(&chat_metrics.send_batched) - batched0;
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    pthread_mutex_lock(&acks.lock);
    acks.senders_done = true;
    pthread_mutex_unlock(&acks.lock);
    pthread_join(ack_thread, NULL);

    size_t n = (size_t)atomic_load(&nlat);
    if (n > LAT_MAX)
        n = LAT_MAX;
    qsort(lat, n, sizeof(*lat), cmp_i64);
    printf("RESULT mode=store threads=%d started=%d sent=%ld stored=%ld failed=%ld acked=%ld "
           "ack_failed=%ld measured=%ld stored_rate=%.0f rows_rate=%.0f per_batch=%.1f "
           "p50_ms=%.2f p99_ms=%.2f\n",
           opt.threads, started, atomic_load(&sent), atomic_load(&stored), atomic_load(&failed),
           atomic_load(&acked), atomic_load(&ack_failed), atomic_load(&measured),
           (double)atomic_load(&measured) / opt.duration,
           (double)atomic_load(&rows_measured) / opt.duration,
           batches > 0 ? (double)batched / (double)batches : 0, pct_ms(lat, n, 0.50),
           pct_ms(lat, n, 0.99));
    for (int i = 0; i < nwatch; i++) {
        struct watch *w = &watches[i];
        double cpu = w->cpu0 >= 0 && w->cpu1 >= 0 ? w->cpu1 - w->cpu0 : -1;
        printf("WATCH name=%s pid=%d cpu_s=%.2f cpu_pct=%.1f\n", w->name, w->pid, cpu,
               cpu >= 0 ? 100.0 * cpu / opt.duration : -1);
    }
    free(lat);
    free(threads);
    free(acks.v);
    chat_config_cleanup(&cfg);
    return atomic_load(&failed) || atomic_load(&ack_failed) ? 1 : 0;
}
