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
    cJSON_AddStringToObject(o, "to", it->to);
    cJSON_AddStringToObject(o, "body", it->body ? it->body : "");
    chat_json_add_int(o, "ts", it->ts);
    if (status)
        cJSON_AddStringToObject(o, "status", status);
    return o;
}

static const char *status_name(int status)
{
    return status == CHAT_STATUS_PENDING ? "pending" : "delivered";
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
        api_error(c, CHAT_ENOTFOUND, "no such chat");
        goto done;
    }
    if (!cJSON_IsString(to) || !chat_user_valid(to->valuestring)) {
        api_error(c, CHAT_EINVAL, "\"to\" must be a user id: 1-64 characters of A-Za-z0-9_.@-");
        goto done;
    }
    if (!cJSON_IsString(body)) {
        api_error(c, CHAT_EINVAL, "\"body\" must be a string");
        goto done;
    }
    in.to = to->valuestring;
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
    if (err == CHAT_ECONFLICT) {
        api_error(c, err, "client_msg_id was already used for a different message");
        goto done;
    }
    if (err) {
        api_error(c, err, err == CHAT_EUNAVAIL ? "the message store is unavailable" : NULL);
        goto done;
    }
    if (out.created) {
        api_json(c, 201, message_json(&out.item, "pending"));
    } else {
        /* A repeat: answer with the stored message and its state now. */
        struct chat_item msg;
        struct chat_recipient rcpt;
        chat_metric_inc(messages_duplicate);
        err = chat_store_message(chat_store_local(cfg), out.item.message_id, &msg, &rcpt);
        if (err) {
            api_error(c, err, NULL);
        } else {
            api_json(c, 200, message_json(&msg, status_name(rcpt.status)));
            chat_item_cleanup(&msg);
        }
    }
    chat_item_cleanup(&out.item);
done:
    cJSON_Delete(root);
}

void api_get_message(struct api_ctx *c)
{
    if (!chat_id_valid(c->param)) {
        api_error(c, CHAT_ENOTFOUND, "no such message");
        return;
    }
    struct chat_item msg;
    struct chat_recipient rcpt;
    int err = chat_store_message(chat_store_local(c->api->cfg), c->param, &msg, &rcpt);
    if (err) {
        api_error(c, err, err == CHAT_ENOTFOUND ? "no such message" : NULL);
        return;
    }
    if (strcmp(c->user, msg.from) != 0 && strcmp(c->user, msg.to) != 0) {
        api_error(c, CHAT_EFORBIDDEN, "only the sender and the recipients may read a message");
        chat_item_cleanup(&msg);
        return;
    }
    cJSON *o = message_json(&msg, NULL);
    cJSON_AddNullToObject(o, "chat");
    cJSON *arr = cJSON_AddArrayToObject(o, "recipients");
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "user", rcpt.user);
    cJSON_AddStringToObject(r, "status", status_name(rcpt.status));
    if (rcpt.delivered_ts)
        chat_json_add_int(r, "delivered_ts", rcpt.delivered_ts);
    else
        cJSON_AddNullToObject(r, "delivered_ts");
    cJSON_AddItemToArray(arr, r);
    api_json(c, 200, o);
    chat_item_cleanup(&msg);
}
