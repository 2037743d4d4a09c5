/* system.c: /healthz, /readyz, /metrics. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_int.h"
#include "auth.h"
#include "id.h"
#include "buf.h"
#include "err.h"
#include "json.h"
#include "metrics.h"

void api_healthz(struct api_ctx *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "ok");
    api_json(c, 200, o);
}

void api_readyz(struct api_ctx *c)
{
    bool mysql_up = chat_store_ping(chat_store_local(c->api->cfg)) == 0;
    bool redis_up = chat_delivery_bus_up(c->api->d);
    if (mysql_up && redis_up) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "status", "ready");
        cJSON_AddStringToObject(o, "mysql", "up");
        cJSON_AddStringToObject(o, "redis", "up");
        api_json(c, 200, o);
        return;
    }
    char msg[96];
    snprintf(msg, sizeof(msg), "not ready: %s%s%s is down", mysql_up ? "" : "mysql",
             !mysql_up && !redis_up ? " and " : "", redis_up ? "" : "redis");
    api_error(c, CHAT_EUNAVAIL, msg);
    /* The error body also says which backend is which. */
    cJSON *root = cJSON_Parse(c->resp->body);
    if (root) {
        cJSON_AddStringToObject(root, "mysql", mysql_up ? "up" : "down");
        cJSON_AddStringToObject(root, "redis", redis_up ? "up" : "down");
        api_json(c, 503, root);
        snprintf(c->resp->retry_after, sizeof(c->resp->retry_after), "1");
    }
}

/* POST /v1/dev/token {"user": "alice"}: a token for any user, when
 * [auth] dev_tokens = true (a local stack's sign-in page); otherwise the
 * path does not exist. */
void api_post_dev_token(struct api_ctx *c)
{
    const struct chat_config *cfg = c->api->cfg;
    if (!cfg->dev_tokens) {
        api_error(c, CHAT_ENOTFOUND, "no such path");
        return;
    }
    cJSON *body = api_body_object(c);
    if (!body)
        return;
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(body, "user");
    if (!cJSON_IsString(u) || !chat_user_valid(u->valuestring)) {
        cJSON_Delete(body);
        api_error(c, CHAT_EINVAL, "user must be a user id: 1 to 64 of A-Z a-z 0-9 _ - . @");
        return;
    }
    int64_t now = chat_now_ms() / 1000;
    char *tok = chat_auth_mint(cfg->jwt_secret, u->valuestring, now, cfg->token_ttl);
    if (!tok) {
        cJSON_Delete(body);
        api_error(c, CHAT_EINTERNAL, NULL);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "token", tok);
    cJSON_AddStringToObject(o, "user", u->valuestring);
    chat_json_add_int(o, "expires_ts", (now + cfg->token_ttl) * 1000);
    free(tok);
    cJSON_Delete(body);
    api_json(c, 201, o);
}

void api_metrics(struct api_ctx *c)
{
    struct chat_buf b = {0};
    chat_metrics_render(&b);
    struct chat_response *r = c->resp;
    r->kind = CHAT_RESP_BODY;
    r->status = 200;
    r->content_type = "text/plain; version=0.0.4; charset=utf-8";
    r->body_len = b.len;
    r->body = chat_buf_steal(&b);
}
