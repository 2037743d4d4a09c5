/* social.c: blocks (/v1/blocks), stream tickets (/v1/events/ticket) and
 * presence (/v1/presence). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "alloc.h"
#include "api_int.h"
#include "delivery.h"
#include "err.h"
#include "id.h"
#include "json.h"

#define TICKET_TTL_MS 60000
#define PRESENCE_USERS_MAX 100

void api_put_block(struct api_ctx *c)
{
    if (!chat_user_valid(c->param)) {
        api_error(c, CHAT_EINVAL, "not a user id");
        return;
    }
    int err = chat_store_block(chat_store_local(c->api->cfg), c->user, c->param,
                               strcmp(c->req->method, "PUT") == 0);
    if (err) {
        api_error(c, err, NULL);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "user", c->param);
    cJSON_AddBoolToObject(o, "blocked", strcmp(c->req->method, "PUT") == 0);
    api_json(c, 200, o);
}

void api_get_blocks(struct api_ctx *c)
{
    char(*v)[CHAT_USER_MAX + 1];
    size_t n;
    int err = chat_store_blocks(chat_store_local(c->api->cfg), c->user, &v, &n);
    if (err) {
        api_error(c, err, NULL);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(o, "blocked");
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(arr, cJSON_CreateString(v[i]));
    free(v);
    api_json(c, 200, o);
}

void api_post_ticket(struct api_ctx *c)
{
    unsigned char r[16];
    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
        api_error(c, CHAT_EINTERNAL, NULL);
        return;
    }
    char ticket[33];
    for (int i = 0; i < 16; i++)
        snprintf(ticket + 2 * i, 3, "%02x", r[i]);
    int64_t expires = chat_now_ms() + TICKET_TTL_MS;
    int err = chat_store_ticket_put(chat_store_local(c->api->cfg), ticket, c->user, expires);
    if (err) {
        api_error(c, err, NULL);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "ticket", ticket);
    chat_json_add_int(o, "expires_ts", expires);
    api_json(c, 201, o);
}

void api_get_presence(struct api_ctx *c)
{
    const char *arg = c->req->arg(c->req->door, "users");
    if (!arg || !*arg) {
        api_error(c, CHAT_EINVAL, "users must list user ids, separated by commas");
        return;
    }
    char *list = chat_xstrdup(arg);
    const char *users[PRESENCE_USERS_MAX];
    size_t n = 0;
    bool ok = true;
    for (char *u = list; ok && u;) {
        char *comma = strchr(u, ',');
        if (comma)
            *comma = '\0';
        /* An empty item (",," or a trailing comma) is an error, not nothing. */
        if (!chat_user_valid(u) || n == PRESENCE_USERS_MAX)
            ok = false;
        else
            users[n++] = u;
        u = comma ? comma + 1 : NULL;
    }
    if (!ok || n == 0) {
        api_error(c, CHAT_EINVAL, "users must list 1-100 user ids, separated by commas");
        free(list);
        return;
    }
    /* Only the people one shares a conversation with are visible. */
    char(*contacts)[CHAT_USER_MAX + 1] = NULL;
    size_t ncontacts = 0;
    int err = chat_store_contacts(chat_store_local(c->api->cfg), c->user, &contacts, &ncontacts);
    bool online[PRESENCE_USERS_MAX];
    if (!err)
        err = chat_delivery_presence(c->api->d, users, n, online);
    if (err) {
        api_error(c, err, err == CHAT_EUNAVAIL ? "presence is unavailable" : NULL);
        goto out;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(o, "presence");
    for (size_t i = 0; i < n; i++) {
        bool visible = strcmp(users[i], c->user) == 0;
        for (size_t k = 0; k < ncontacts && !visible; k++)
            visible = strcmp(contacts[k], users[i]) == 0;
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "user", users[i]);
        if (visible)
            cJSON_AddBoolToObject(e, "online", online[i]);
        else
            cJSON_AddNullToObject(e, "online");
        cJSON_AddItemToArray(arr, e);
    }
    api_json(c, 200, o);
out:
    free(contacts);
    free(list);
}
