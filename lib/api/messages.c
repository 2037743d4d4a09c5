/* messages.c: POST /v1/messages, GET /v1/messages/{id}. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_int.h"
#include "delivery.h"
#include "err.h"
#include "id.h"
#include "json.h"
#include "metrics.h"

static cJSON *message_json(const struct chat_item *it, const char *status)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "message_id", it->message_id);
    cJSON_AddStringToObject(o, "from", it->from);
    chat_json_add_str_or_null(o, "to", it->to);
    chat_json_add_str_or_null(o, "chat", it->chat);
    cJSON_AddStringToObject(o, "body", it->body ? it->body : "");
    chat_json_add_int(o, "ts", it->ts);
    if (status)
        cJSON_AddStringToObject(o, "status", status);
    return o;
}

/* The state of a message as a whole, for the answer to a repeated send:
 * the least advanced of its recipients. */
static int overall_status(const struct chat_recipient *r, size_t n)
{
    int status = CHAT_STATUS_READ;
    for (size_t i = 0; i < n; i++)
        if (r[i].status < status)
            status = r[i].status;
    return n ? status : CHAT_STATUS_PENDING;
}

void api_post_message(struct api_ctx *c)
{
    const struct chat_config *cfg = c->api->cfg;
    cJSON *root = api_body_object(c);
    if (!root)
        return;
    const cJSON *to = cJSON_GetObjectItemCaseSensitive(root, "to");
    const cJSON *chat = cJSON_GetObjectItemCaseSensitive(root, "chat");
    const cJSON *body = cJSON_GetObjectItemCaseSensitive(root, "body");
    const cJSON *cmid = cJSON_GetObjectItemCaseSensitive(root, "client_msg_id");
    struct chat_send in = {.from = c->user};
    struct chat_sent out;
    int err;

    if (to && chat) {
        api_error(c, CHAT_EINVAL, "give either \"to\" or \"chat\", not both");
        goto done;
    }
    if (chat) {
        if (!cJSON_IsString(chat)) {
            api_error(c, CHAT_EINVAL, "\"chat\" must be a chat id");
            goto done;
        }
        if (!chat_id_valid(chat->valuestring)) {
            api_error(c, CHAT_ENOTFOUND, "no such chat");
            goto done;
        }
        in.chat = chat->valuestring;
    } else if (!cJSON_IsString(to) || !chat_user_valid(to->valuestring)) {
        api_error(c, CHAT_EINVAL, "\"to\" must be a user id: 1-64 characters of A-Za-z0-9_.@-");
        goto done;
    } else {
        in.to = to->valuestring;
    }
    if (!cJSON_IsString(body)) {
        api_error(c, CHAT_EINVAL, "\"body\" must be a string");
        goto done;
    }
    in.body = body->valuestring;
    in.body_len = strlen(body->valuestring);
    if (in.body_len == 0) {
        api_error(c, CHAT_EINVAL, "\"body\" must not be empty");
        goto done;
    }
    if (in.body_len > (size_t)cfg->max_message_bytes) {
        char msg[128];
        snprintf(msg, sizeof(msg), "\"body\" is larger than %d bytes", cfg->max_message_bytes);
        api_error(c, CHAT_ETOOLARGE, msg);
        goto done;
    }
    if (cmid) {
        size_t n = cJSON_IsString(cmid) ? strlen(cmid->valuestring) : 0;
        if (n < 1 || n > CHAT_CLIENT_MSG_ID_MAX) {
            api_error(c, CHAT_EINVAL, "\"client_msg_id\" must be a string of 1-64 bytes");
            goto done;
        }
        in.client_msg_id = cmid->valuestring;
    }
    int64_t wait = chat_ratelimit_take(c->api->send_limit, c->user, chat_now_ms());
    if (wait > 0) {
        api_error(c, CHAT_ERATE, "sending too fast");
        int secs = wait > 3600000 ? 3600 : (int)((wait + 999) / 1000);
        snprintf(c->resp->retry_after, sizeof(c->resp->retry_after), "%d", secs);
        goto done;
    }
    err = chat_delivery_send(c->api->d, &in, &out);
    switch (err) {
    case 0:
        break;
    case CHAT_ECONFLICT:
        api_error(c, err, "client_msg_id was already used for a different message");
        goto done;
    case CHAT_ENOTFOUND:
        api_error(c, err, "no such chat");
        goto done;
    case CHAT_EFORBIDDEN:
        api_error(c, err, "only members may post to a chat");
        goto done;
    case CHAT_EUNAVAIL:
        api_error(c, err, "the message store is unavailable");
        goto done;
    default:
        api_error(c, err, NULL);
        goto done;
    }
    if (out.created) {
        api_json(c, 201, message_json(&out.item, "pending"));
    } else {
        /* A repeat: answer with the stored message and its state now. */
        struct chat_item msg;
        struct chat_recipient *r;
        size_t nr;
        chat_metric_inc(messages_duplicate);
        err = chat_store_message(chat_store_local(cfg), out.item.message_id, &msg, &r, &nr);
        if (err) {
            api_error(c, err, NULL);
        } else {
            api_json(c, 200, message_json(&msg, chat_status_name(overall_status(r, nr))));
            chat_item_cleanup(&msg);
            free(r);
        }
    }
    chat_sent_cleanup(&out);
done:
    cJSON_Delete(root);
}

void api_get_message(struct api_ctx *c)
{
    if (!chat_id_valid(c->param)) {
        api_error(c, CHAT_ENOTFOUND, "no such message");
        return;
    }
    struct chat_store *st = chat_store_local(c->api->cfg);
    struct chat_item msg;
    struct chat_recipient *r = NULL;
    size_t nr = 0;
    int err = chat_store_message(st, c->param, &msg, &r, &nr);
    if (err) {
        api_error(c, err, err == CHAT_ENOTFOUND ? "no such message" : NULL);
        return;
    }
    bool allowed = strcmp(c->user, msg.from) == 0 || strcmp(c->user, msg.to) == 0;
    for (size_t i = 0; !allowed && i < nr; i++)
        allowed = strcmp(c->user, r[i].user) == 0;
    if (!allowed && msg.chat[0]) {
        /* A member whose row is gone (policy delete) may still read it; one
         * who joined after it was sent never could. */
        bool member = false;
        int64_t joined = 0;
        err = chat_store_group_joined(st, msg.chat, c->user, &member, &joined);
        if (err) {
            api_error(c, err, NULL);
            goto out;
        }
        allowed = member && joined <= msg.ts;
    }
    if (!allowed) {
        api_error(c, CHAT_EFORBIDDEN, "only the sender and the recipients may read a message");
        goto out;
    }
    cJSON *o = message_json(&msg, NULL);
    cJSON *arr = cJSON_AddArrayToObject(o, "recipients");
    for (size_t i = 0; i < nr; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "user", r[i].user);
        cJSON_AddStringToObject(e, "status", chat_status_name(r[i].status));
        if (r[i].delivered_ts)
            chat_json_add_int(e, "delivered_ts", r[i].delivered_ts);
        else
            cJSON_AddNullToObject(e, "delivered_ts");
        if (r[i].read_ts)
            chat_json_add_int(e, "read_ts", r[i].read_ts);
        else
            cJSON_AddNullToObject(e, "read_ts");
        cJSON_AddItemToArray(arr, e);
    }
    api_json(c, 200, o);
out:
    chat_item_cleanup(&msg);
    free(r);
}
