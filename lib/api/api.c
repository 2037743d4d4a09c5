/* api.c: the route table, authentication and the shared response helpers. */
#include "api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "alloc.h"
#include "api_int.h"
#include "err.h"
#include "id.h"
#include "json.h"
#include "log.h"
#include "metrics.h"

enum auth_kind {
    AUTH_NONE,
    AUTH_BEARER,          /* Authorization: Bearer only */
    AUTH_BEARER_OR_QUERY, /* also ?access_token=, for EventSource */
};

struct route {
    const char *method;
    const char *path; /* a "{id}" segment matches one path segment */
    enum auth_kind auth;
    api_handler handler;
};

static const struct route routes[] = {
    {"POST", "/v1/messages", AUTH_BEARER, api_post_message},
    {"GET", "/v1/messages/{id}", AUTH_BEARER, api_get_message},
    {"GET", "/v1/inbox", AUTH_BEARER, api_get_inbox},
    {"POST", "/v1/inbox/ack", AUTH_BEARER, api_post_inbox_ack},
    {"POST", "/v1/inbox/read", AUTH_BEARER, api_post_inbox_read},
    {"GET", "/v1/events", AUTH_BEARER_OR_QUERY, api_get_events},
    {"POST", "/v1/events/ticket", AUTH_BEARER, api_post_ticket},
    {"GET", "/v1/poll", AUTH_BEARER_OR_QUERY, api_get_poll},
    {"POST", "/v1/chats", AUTH_BEARER, api_post_chat},
    {"GET", "/v1/chats", AUTH_BEARER, api_get_chats},
    {"GET", "/v1/chats/{id}", AUTH_BEARER, api_get_chat},
    {"POST", "/v1/chats/{id}/members", AUTH_BEARER, api_post_chat_members},
    {"GET", "/v1/conversations", AUTH_BEARER, api_get_conversations},
    {"GET", "/v1/conversations/{id}/messages", AUTH_BEARER, api_get_history},
    {"PUT", "/v1/blocks/{id}", AUTH_BEARER, api_put_block},
    {"DELETE", "/v1/blocks/{id}", AUTH_BEARER, api_put_block},
    {"GET", "/v1/blocks", AUTH_BEARER, api_get_blocks},
    {"GET", "/v1/presence", AUTH_BEARER, api_get_presence},
    {"POST", "/v1/dev/token", AUTH_NONE, api_post_dev_token},
    {"GET", "/healthz", AUTH_NONE, api_healthz},
    {"GET", "/readyz", AUTH_NONE, api_readyz},
    {"GET", "/metrics", AUTH_NONE, api_metrics},
};

#define NROUTES (sizeof(routes) / sizeof(routes[0]))

/* Matches path against pattern; a "{id}" in the pattern matches one
 * non-empty path segment, copied into param. */
static bool path_match(const char *pattern, const char *path, char *param, size_t cap)
{
    const char *brace = strstr(pattern, "{id}");
    param[0] = '\0';
    if (!brace)
        return strcmp(pattern, path) == 0;
    size_t plen = (size_t)(brace - pattern);
    const char *suffix = brace + 4;
    if (strncmp(pattern, path, plen) != 0)
        return false;
    const char *seg = path + plen;
    const char *end = strchr(seg, '/');
    size_t slen = end ? (size_t)(end - seg) : strlen(seg);
    if (slen == 0 || slen >= cap || strcmp(seg + slen, suffix) != 0)
        return false;
    memcpy(param, seg, slen);
    param[slen] = '\0';
    return true;
}

/* ------------------------------------------------------------------------ */
/* Responses                                                                */
/* ------------------------------------------------------------------------ */

static const char json_type[] = "application/json; charset=utf-8";

void api_error(struct api_ctx *c, int err, const char *message)
{
    struct chat_response *r = c->resp;
    free(r->body);
    r->kind = CHAT_RESP_BODY;
    r->status = chat_err_status(err);
    r->content_type = json_type;
    r->body = chat_json_error(chat_err_code(err), message ? message : chat_err_message(err));
    r->body_len = strlen(r->body);
    if (err == CHAT_EUNAVAIL && !r->retry_after[0])
        snprintf(r->retry_after, sizeof(r->retry_after), "1");
}

void api_json(struct api_ctx *c, int status, cJSON *body)
{
    struct chat_response *r = c->resp;
    free(r->body);
    r->kind = CHAT_RESP_BODY;
    r->status = status;
    r->content_type = json_type;
    r->body = chat_json_print(body);
    r->body_len = strlen(r->body);
    cJSON_Delete(body);
}

cJSON *api_body_object(struct api_ctx *c)
{
    const char *ct = c->req->header(c->req->door, "Content-Type");
    if (!ct || strncasecmp(ct, "application/json", 16) != 0 ||
        (ct[16] != '\0' && ct[16] != ';' && ct[16] != ' ')) {
        api_error(c, CHAT_EMEDIA, "Content-Type must be application/json");
        return NULL;
    }
    int err;
    const char *why;
    cJSON *root = chat_json_parse_object(c->req->body, c->req->body_len, &err, &why);
    if (!root)
        api_error(c, err, why);
    return root;
}

int api_arg_u64(struct api_ctx *c, const char *name, uint64_t def, uint64_t max, uint64_t *out)
{
    const char *v = c->req->arg(c->req->door, name);
    if (!v) {
        *out = def;
        return 0;
    }
    if (chat_parse_u64(v, out) != 0 || *out > max) {
        char msg[128];
        snprintf(msg, sizeof(msg), "%s must be an integer from 0 to %llu", name,
                 (unsigned long long)max);
        api_error(c, CHAT_EINVAL, msg);
        return CHAT_EINVAL;
    }
    return 0;
}

cJSON *api_items_json(const struct chat_items *items, uint64_t after)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(root, "items");
    for (size_t i = 0; i < items->n; i++)
        cJSON_AddItemToArray(arr, chat_item_json(&items->v[i]));
    chat_json_add_int(root, "next_after", (int64_t)(items->n ? items->v[items->n - 1].seq : after));
    cJSON_AddBoolToObject(root, "more", items->more);
    return root;
}

/* ------------------------------------------------------------------------ */
/* Dispatch                                                                 */
/* ------------------------------------------------------------------------ */

static int authenticate(struct api_ctx *c, enum auth_kind kind)
{
    const char *token = NULL;
    const char *h = c->req->header(c->req->door, "Authorization");
    if (h) {
        if (strncasecmp(h, "Bearer ", 7) != 0) {
            api_error(c, CHAT_EAUTH, "Authorization must be: Bearer <token>");
            return CHAT_EAUTH;
        }
        token = h + 7;
        while (*token == ' ')
            token++;
    } else if (kind == AUTH_BEARER_OR_QUERY) {
        const char *ticket = c->req->arg(c->req->door, "ticket");
        if (ticket) {
            int err = strlen(ticket) == 32 ? chat_store_ticket_take(chat_store_local(c->api->cfg),
                                                                    ticket, chat_now_ms(), c->user)
                                           : CHAT_EAUTH;
            if (err)
                api_error(c, err,
                          err == CHAT_EAUTH ? "the ticket is unknown, used or expired"
                                            : "tickets are unavailable");
            return err;
        }
        token = c->req->arg(c->req->door, "access_token");
    }
    if (!token || !*token) {
        api_error(c, CHAT_EAUTH, "a bearer token is required");
        return CHAT_EAUTH;
    }
    const char *why;
    if (chat_auth_verify(c->api->cfg->jwt_secret, token, chat_now_ms() / 1000, c->user, &why)) {
        api_error(c, CHAT_EAUTH, why);
        return CHAT_EAUTH;
    }
    return 0;
}

struct chat_api *chat_api_new(struct chat_delivery *d)
{
    struct chat_api *api = chat_xcalloc(1, sizeof(*api));
    api->d = d;
    api->cfg = chat_delivery_config(d);
    api->send_limit = chat_ratelimit_new(api->cfg->send_rate, api->cfg->send_burst);
    return api;
}

void chat_api_free(struct chat_api *api)
{
    if (!api)
        return;
    chat_ratelimit_free(api->send_limit);
    free(api);
}

void chat_api_handle(struct chat_api *api, struct chat_request *req, struct chat_response *resp)
{
    struct api_ctx c = {.api = api, .req = req, .resp = resp};
    if (req->state) {
        /* A parked long-poll coming back. */
        api_poll_resume(&c);
        goto done;
    }
    const struct route *found = NULL;
    char allow[32] = "";
    char param[CHAT_CONV_KEY_MAX + 1];
    for (size_t i = 0; i < NROUTES; i++) {
        if (!path_match(routes[i].path, req->path, param, sizeof(param)))
            continue;
        if (strcmp(routes[i].method, req->method) == 0) {
            found = &routes[i];
            c.param = param[0] ? param : NULL;
            break;
        }
        size_t n = strlen(allow);
        snprintf(allow + n, sizeof(allow) - n, "%s%s", n ? ", " : "", routes[i].method);
    }
    if (!found) {
        if (allow[0]) {
            api_error(&c, CHAT_EMETHOD, NULL);
            snprintf(resp->allow, sizeof(resp->allow), "%s", allow);
        } else {
            api_error(&c, CHAT_ENOTFOUND, "no such path");
        }
        goto done;
    }
    if (req->body_too_large) {
        char msg[96];
        snprintf(msg, sizeof(msg), "the request body is larger than %d bytes",
                 api->cfg->max_body_bytes);
        api_error(&c, CHAT_ETOOLARGE, msg);
        goto done;
    }
    if (found->auth != AUTH_NONE && authenticate(&c, found->auth) != 0)
        goto done;
    found->handler(&c);
done:
    if (resp->kind == CHAT_RESP_BODY)
        chat_metrics_count_status(resp->status);
    else if (resp->kind == CHAT_RESP_STREAM)
        chat_metrics_count_status(200);
}

void chat_api_release(struct chat_request *req)
{
    if (req->state) {
        api_poll_release(req->state);
        req->state = NULL;
    }
}

void chat_response_cleanup(struct chat_response *resp)
{
    free(resp->body);
    resp->body = NULL;
}
