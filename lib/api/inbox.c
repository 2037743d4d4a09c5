/* inbox.c: GET /v1/inbox, POST /v1/inbox/ack, GET /v1/events, GET /v1/poll. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "api_int.h"
#include "delivery.h"
#include "err.h"
#include "id.h"
#include "json.h"
#include "metrics.h"
#include "sse.h"

#define INBOX_LIMIT_DEFAULT 100
#define INBOX_LIMIT_MAX 1000
#define ACK_SEQS_MAX 1000

void api_get_inbox(struct api_ctx *c)
{
    const char *status = c->req->arg(c->req->door, "status");
    bool pending_only = true;
    if (status && strcmp(status, "all") == 0)
        pending_only = false;
    else if (status && strcmp(status, "pending") != 0) {
        api_error(c, CHAT_EINVAL, "status must be pending or all");
        return;
    }
    uint64_t after, limit;
    if (api_arg_u64(c, "after", 0, UINT64_MAX, &after) ||
        api_arg_u64(c, "limit", INBOX_LIMIT_DEFAULT, INBOX_LIMIT_MAX, &limit))
        return;
    if (limit == 0) {
        api_error(c, CHAT_EINVAL, "limit must be from 1 to 1000");
        return;
    }
    struct chat_items items;
    int err = chat_store_inbox(chat_store_local(c->api->cfg), c->user, after, pending_only,
                               (unsigned)limit, &items);
    if (err) {
        api_error(c, err, NULL);
        return;
    }
    chat_items_bound(&items, (size_t)c->api->cfg->stream_buffer_bytes);
    api_json(c, 200, api_items_json(&items, after));
    chat_items_cleanup(&items);
}

void api_post_inbox_ack(struct api_ctx *c)
{
    cJSON *root = api_body_object(c);
    if (!root)
        return;
    const cJSON *seqs = cJSON_GetObjectItemCaseSensitive(root, "seqs");
    uint64_t up_to = 0;
    int has_up_to = chat_json_u64(root, "up_to", &up_to);
    uint64_t *v = NULL;
    size_t n = 0, acked = 0;
    int err;
    if (has_up_to == CHAT_EINVAL) {
        api_error(c, CHAT_EINVAL, "\"up_to\" must be a seq (a non-negative integer)");
        goto done;
    }
    if ((has_up_to == 0) == (seqs != NULL)) {
        api_error(c, CHAT_EINVAL, "give one of \"up_to\" or \"seqs\"");
        goto done;
    }
    if (seqs) {
        int count = cJSON_IsArray(seqs) ? cJSON_GetArraySize(seqs) : -1;
        if (count < 0 || count > ACK_SEQS_MAX) {
            api_error(c, CHAT_EINVAL, "\"seqs\" must be an array of at most 1000 seqs");
            goto done;
        }
        v = chat_xcalloc((size_t)count + 1, sizeof(*v));
        const cJSON *e;
        cJSON_ArrayForEach (e, seqs) {
            double x = cJSON_IsNumber(e) ? e->valuedouble : -1;
            if (x < 0 || x > 9007199254740992.0 || (double)(uint64_t)x != x) {
                api_error(c, CHAT_EINVAL, "\"seqs\" must hold non-negative integers");
                goto done;
            }
            v[n++] = (uint64_t)x;
        }
    }
    err = chat_delivery_device_ack(c->api->d, c->user, v, n, up_to, &acked);
    if (err) {
        api_error(c, err, NULL);
        goto done;
    }
    cJSON *o = cJSON_CreateObject();
    chat_json_add_int(o, "acked", (int64_t)acked);
    api_json(c, 200, o);
done:
    free(v);
    cJSON_Delete(root);
}

void api_post_inbox_read(struct api_ctx *c)
{
    cJSON *root = api_body_object(c);
    if (!root)
        return;
    uint64_t up_to = 0;
    int has_up_to = chat_json_u64(root, "up_to", &up_to);
    const cJSON *conv = cJSON_GetObjectItemCaseSensitive(root, "conversation");
    char key[CHAT_CONV_KEY_MAX + 1];
    size_t n = 0;
    int err;
    if (has_up_to == CHAT_EINVAL) {
        api_error(c, CHAT_EINVAL, "\"up_to\" must be a seq (a non-negative integer)");
        goto done;
    }
    if (has_up_to != 0 && !conv) {
        api_error(c, CHAT_EINVAL, "give \"up_to\", \"conversation\" or both");
        goto done;
    }
    if (conv && (!cJSON_IsString(conv) || api_conversation_key(c, conv->valuestring, key) != 0)) {
        if (!cJSON_IsString(conv))
            api_error(c, CHAT_EINVAL, "\"conversation\" must be a user id or chat:<chat id>");
        goto done;
    }
    if (has_up_to == 0 && up_to == 0)
        goto answer; /* nothing is at or below seq 0 */
    err = chat_delivery_read(c->api->d, c->user, has_up_to == 0 ? up_to : 0, conv ? key : NULL, &n);
    if (err) {
        api_error(c, err, NULL);
        goto done;
    }
answer:;
    cJSON *o = cJSON_CreateObject();
    chat_json_add_int(o, "read", (int64_t)n);
    api_json(c, 200, o);
done:
    cJSON_Delete(root);
}

void api_get_events(struct api_ctx *c)
{
    if (!c->req->can_stream) {
        api_error(c, CHAT_ENOTFOUND,
                  "this server does not hold SSE streams: open /v1/events on a chatd node");
        return;
    }
    const char *last = c->req->header(c->req->door, "Last-Event-ID");
    if (!last)
        last = c->req->arg(c->req->door, "last_event_id");
    uint64_t seq = 0;
    if (last && chat_sse_parse_last_event_id(last, &seq) != 0) {
        api_error(c, CHAT_EINVAL, "Last-Event-ID must be a seq from an earlier event");
        return;
    }
    /* Refuse now rather than hold a stream that cannot replay. */
    uint64_t top;
    int err = chat_store_last_seq(chat_store_local(c->api->cfg), c->user, &top);
    if (err) {
        api_error(c, err, "the message store is unavailable");
        return;
    }
    if (chat_delivery_user_full(c->api->d, c->user)) {
        api_error(c, CHAT_ERATE, "too many streams and long-polls open for this user");
        snprintf(c->resp->retry_after, sizeof(c->resp->retry_after), "5");
        return;
    }
    bool has_last = last && *last;
    c->resp->kind = CHAT_RESP_STREAM;
    c->resp->status = 200;
    c->resp->content_type = "text/event-stream; charset=utf-8";
    c->resp->stream = chat_stream_open(c->api->d, c->user, has_last, seq, c->req->park,
                                       c->req->wake, c->req->door);
}

/* ------------------------------------------------------------------------ */
/* Long-poll                                                                */
/* ------------------------------------------------------------------------ */

struct poll_state {
    struct chat_waiter *waiter;
    char user[CHAT_USER_MAX + 1];
    uint64_t after;
};

void api_poll_release(void *state)
{
    struct poll_state *ps = state;
    chat_waiter_free(ps->waiter);
    free(ps);
}

/* Answers when there are rows or time is up; otherwise parks again. */
static void poll_check(struct api_ctx *c, struct poll_state *ps)
{
    const struct chat_config *cfg = c->api->cfg;
    for (;;) {
        struct chat_items items;
        int err = chat_store_inbox(chat_store_local(cfg), ps->user, ps->after, false,
                                   INBOX_LIMIT_DEFAULT, &items);
        if (err) {
            api_error(c, err, NULL);
            break;
        }
        if (items.n > 0 || chat_waiter_expired(ps->waiter)) {
            /* Before the rows count as written: only what is answered is. */
            chat_items_bound(&items, (size_t)cfg->stream_buffer_bytes);
            if (items.n > 0)
                chat_delivery_poll_written(c->api->d, ps->user, ps->after,
                                           items.v[items.n - 1].seq);
            chat_metric_inc(polls_answered);
            api_json(c, 200, api_items_json(&items, ps->after));
            chat_items_cleanup(&items);
            break;
        }
        chat_items_cleanup(&items);
        if (chat_waiter_park(ps->waiter)) {
            c->resp->kind = CHAT_RESP_PARKED;
            return;
        }
    }
    api_poll_release(ps);
    c->req->state = NULL;
}

void api_get_poll(struct api_ctx *c)
{
    const struct chat_config *cfg = c->api->cfg;
    uint64_t after, timeout;
    if (api_arg_u64(c, "after", 0, UINT64_MAX, &after) ||
        api_arg_u64(c, "timeout", (uint64_t)cfg->poll_timeout, (uint64_t)cfg->poll_timeout_max,
                    &timeout))
        return;
    if (chat_delivery_user_full(c->api->d, c->user)) {
        api_error(c, CHAT_ERATE, "too many streams and long-polls open for this user");
        snprintf(c->resp->retry_after, sizeof(c->resp->retry_after), "5");
        return;
    }
    struct poll_state *ps = chat_xcalloc(1, sizeof(*ps));
    snprintf(ps->user, sizeof(ps->user), "%s", c->user);
    ps->after = after;
    /* The waiter exists before the first query, so nothing falls between. */
    ps->waiter = chat_waiter_new(c->api->d, c->user, chat_mono_ms() + (int64_t)timeout * 1000,
                                 c->req->park, c->req->wake, c->req->door);
    c->req->state = ps;
    poll_check(c, ps);
}

void api_poll_resume(struct api_ctx *c)
{
    poll_check(c, c->req->state);
}
