/* api_int.h: what the handler files of lib/api share. Not for the doors. */
#ifndef CHAT_API_INT_H
#define CHAT_API_INT_H

#include <cjson/cJSON.h>

#include "api.h"
#include "config.h"
#include "ratelimit.h"

struct chat_api {
    struct chat_delivery *d;
    const struct chat_config *cfg;
    struct chat_ratelimit *send_limit;
};

/* One call of chat_api_handle. */
struct api_ctx {
    struct chat_api *api;
    struct chat_request *req;
    struct chat_response *resp;
    char user[CHAT_USER_MAX + 1]; /* the authenticated caller, or "" */
    const char *param;            /* the {id} of the path, or NULL */
};

typedef void (*api_handler)(struct api_ctx *c);

/* Answers with the error body for err; message NULL uses the default. */
void api_error(struct api_ctx *c, int err, const char *message);
/* Answers status with body (takes ownership of it). */
void api_json(struct api_ctx *c, int status, cJSON *body);
/* Checks Content-Type and size and parses the body as a JSON object. Returns
 * the tree (the caller frees it), or NULL after answering the error. */
cJSON *api_body_object(struct api_ctx *c);
/* Reads query argument name as a u64; absent gives def. Returns 0, or
 * answers 400 and returns CHAT_EINVAL. */
int api_arg_u64(struct api_ctx *c, const char *name, uint64_t def, uint64_t max, uint64_t *out);
/* {"items": [...], "next_after": seq, "more": bool} */
cJSON *api_items_json(const struct chat_items *items, uint64_t after);

void api_post_message(struct api_ctx *c);
void api_get_message(struct api_ctx *c);
void api_get_inbox(struct api_ctx *c);
void api_post_inbox_ack(struct api_ctx *c);
void api_get_events(struct api_ctx *c);
void api_get_poll(struct api_ctx *c);
void api_poll_resume(struct api_ctx *c);
void api_poll_release(void *state);
void api_post_inbox_read(struct api_ctx *c);
void api_post_chat(struct api_ctx *c);
void api_get_chats(struct api_ctx *c);
void api_get_chat(struct api_ctx *c);
void api_post_chat_members(struct api_ctx *c);
void api_get_conversations(struct api_ctx *c);
void api_get_history(struct api_ctx *c);
/* "bob" or "chat:<id>" -> its conversation key, if the caller may see it;
 * otherwise answers the error and returns it. */
int api_conversation_key(struct api_ctx *c, const char *name, char key[CHAT_CONV_KEY_MAX + 1]);
void api_put_block(struct api_ctx *c);
void api_get_blocks(struct api_ctx *c);
void api_post_ticket(struct api_ctx *c);
void api_get_presence(struct api_ctx *c);
void api_post_dev_token(struct api_ctx *c);
void api_healthz(struct api_ctx *c);
void api_readyz(struct api_ctx *c);
void api_metrics(struct api_ctx *c);

#endif
