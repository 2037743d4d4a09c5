/* system.c: /healthz, /readyz, /metrics. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_int.h"
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
