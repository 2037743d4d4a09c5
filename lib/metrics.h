/* metrics.h: process-wide counters and gauges, rendered as Prometheus text. */
#ifndef CHAT_METRICS_H
#define CHAT_METRICS_H

#include <stdatomic.h>

#include "buf.h"

struct chat_metrics {
    atomic_long messages_stored;    /* 201s */
    atomic_long messages_duplicate; /* client_msg_id repeats */
    atomic_long events_delivered;   /* message events written to streams */
    atomic_long receipts_sent;      /* receipt events written to streams */
    atomic_long polls_answered;
    atomic_long acks_applied; /* inbox rows marked or deleted */
    atomic_long ack_timeouts; /* no ACK within ack_timeout */
    atomic_long bus_published;
    atomic_long bus_publish_dropped; /* backlog full while Redis was down */
    atomic_long bus_received;
    atomic_long bus_reconnects;
    atomic_long bus_fallback_polls; /* MySQL reads for local users while Redis is down */
    atomic_long bus_degraded;       /* gauge: 1 while Redis is down */
    atomic_long catchups;            /* stream reads from MySQL to fill a gap */
    atomic_long streams_open;        /* gauge */
    atomic_long streams_closed_slow; /* closed for exceeding their buffer */
    atomic_long polls_waiting;       /* gauge */
    atomic_long store_errors;
    atomic_long send_batches;       /* send transactions (group commit) */
    atomic_long send_batched;       /* sends written in them */
    atomic_long send_batches_split; /* batches that failed and went one by one */
    atomic_long http_requests[6]; /* by status class: 1xx..5xx, [0] other */
};

extern struct chat_metrics chat_metrics;

#define chat_metric_inc(name) atomic_fetch_add_explicit(&chat_metrics.name, 1, memory_order_relaxed)
#define chat_metric_dec(name) atomic_fetch_sub_explicit(&chat_metrics.name, 1, memory_order_relaxed)

void chat_metrics_count_status(int status);
/* Appends the text exposition format (version 0.0.4). */
void chat_metrics_render(struct chat_buf *out);

#endif
