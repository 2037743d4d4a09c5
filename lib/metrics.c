/* metrics.c: Prometheus text exposition of the process's counters. */
#include "metrics.h"

#include <stddef.h>

struct chat_metrics chat_metrics;

enum metric_kind { COUNTER, GAUGE };

struct metric_row {
    const char *name;
    enum metric_kind kind;
    size_t offset;
    const char *help;
};

#define M(f) offsetof(struct chat_metrics, f)

static const struct metric_row rows[] = {
    {"chat_messages_stored_total", COUNTER, M(messages_stored), "Messages stored (201)."},
    {"chat_messages_duplicate_total", COUNTER, M(messages_duplicate),
     "Sends answered from an earlier client_msg_id."},
    {"chat_events_delivered_total", COUNTER, M(events_delivered),
     "Message events written to SSE streams."},
    {"chat_receipts_sent_total", COUNTER, M(receipts_sent), "Receipt events written."},
    {"chat_polls_answered_total", COUNTER, M(polls_answered), "Long-polls answered."},
    {"chat_acks_applied_total", COUNTER, M(acks_applied), "Inbox rows marked or deleted."},
    {"chat_ack_timeouts_total", COUNTER, M(ack_timeouts),
     "Messages with no ACK within ack_timeout (left PENDING)."},
    {"chat_bus_published_total", COUNTER, M(bus_published), "Redis publishes sent."},
    {"chat_bus_publish_dropped_total", COUNTER, M(bus_publish_dropped),
     "Publishes dropped while Redis was down and the backlog was full."},
    {"chat_bus_received_total", COUNTER, M(bus_received), "Redis messages received."},
    {"chat_bus_reconnects_total", COUNTER, M(bus_reconnects), "Redis reconnects."},
    {"chat_bus_degraded", GAUGE, M(bus_degraded),
     "1 while Redis is down and local users are served by reading MySQL."},
    {"chat_bus_fallback_polls_total", COUNTER, M(bus_fallback_polls),
     "Streams and long-polls asked to read MySQL because Redis was down."},
    {"chat_catchups_total", COUNTER, M(catchups), "Stream reads from MySQL to fill a gap."},
    {"chat_streams_open", GAUGE, M(streams_open), "SSE streams open now."},
    {"chat_streams_closed_slow_total", COUNTER, M(streams_closed_slow),
     "Streams closed for exceeding stream_buffer_bytes."},
    {"chat_polls_waiting", GAUGE, M(polls_waiting), "Long-polls held now."},
    {"chat_store_errors_total", COUNTER, M(store_errors), "MySQL errors."},
    {"chat_send_batches_total", COUNTER, M(send_batches),
     "Send transactions: each commits one or more sends (group commit)."},
    {"chat_send_batched_total", COUNTER, M(send_batched), "Sends written by those transactions."},
    {"chat_send_batches_split_total", COUNTER, M(send_batches_split),
     "Batches that failed (a lock conflict, a repeated client_msg_id) and went one by one."},
};

void chat_metrics_count_status(int status)
{
    int cls = status / 100;
    if (cls < 1 || cls > 5)
        cls = 0;
    atomic_fetch_add_explicit(&chat_metrics.http_requests[cls], 1, memory_order_relaxed);
}

void chat_metrics_render(struct chat_buf *out)
{
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        const struct metric_row *r = &rows[i];
        long v = atomic_load((atomic_long *)((char *)&chat_metrics + r->offset));
        chat_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s %ld\n", r->name, r->help, r->name,
                        r->kind == COUNTER ? "counter" : "gauge", r->name, v);
    }
    chat_buf_puts(out, "# HELP chat_http_requests_total HTTP responses by status class.\n"
                       "# TYPE chat_http_requests_total counter\n");
    static const char *const cls[] = {"other", "1xx", "2xx", "3xx", "4xx", "5xx"};
    for (int i = 0; i < 6; i++)
        chat_buf_printf(out, "chat_http_requests_total{code=\"%s\"} %ld\n", cls[i],
                        atomic_load(&chat_metrics.http_requests[i]));
}
