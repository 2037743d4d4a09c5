/* chats.c: groups (/v1/chats), conversations and history (/v1/conversations). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "api_int.h"
#include "delivery.h"
#include "err.h"
#include "id.h"
#include "json.h"

#define CONVERSATIONS_DEFAULT 50
#define HISTORY_DEFAULT 50

static cJSON *group_json(const struct chat_group *g)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "chat", g->id);
    cJSON_AddStringToObject(o, "name", g->name);
    cJSON_AddStringToObject(o, "owner", g->owner);
    if (g->members) {
        cJSON *arr = cJSON_AddArrayToObject(o, "members");
        for (size_t i = 0; i < g->nmembers; i++)
            cJSON_AddItemToArray(arr, cJSON_CreateString(g->members[i]));
    } else {
        chat_json_add_int(o, "members_count", (int64_t)g->nmembers);
    }
    chat_json_add_int(o, "created_ts", g->created_ts);
    return o;
}

/* Reads member name of obj as an array of user ids into *out (borrowed
 * strings, at most max). Absent gives none. Answers 400 and returns
 * CHAT_EINVAL when it is not such an array. */
static int user_list(struct api_ctx *c, const cJSON *obj, const char *name, size_t max,
                     const char ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!arr)
        return 0;
    char msg[128];
    int count = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : -1;
    if (count < 0 || (size_t)count > max) {
        snprintf(msg, sizeof(msg), "\"%s\" must be an array of at most %zu user ids", name, max);
        api_error(c, CHAT_EINVAL, msg);
        return CHAT_EINVAL;
    }
    *out = chat_xcalloc((size_t)count + 1, sizeof(**out));
    const cJSON *e;
    cJSON_ArrayForEach (e, arr) {
        if (!cJSON_IsString(e) || !chat_user_valid(e->valuestring)) {
            snprintf(msg, sizeof(msg), "\"%s\" must hold user ids: 1-64 of A-Za-z0-9_.@-", name);
            api_error(c, CHAT_EINVAL, msg);
            free(*out);
            *out = NULL;
            *n = 0;
            return CHAT_EINVAL;
        }
        (*out)[(*n)++] = e->valuestring;
    }
    return 0;
}

static void group_error(struct api_ctx *c, int err)
{
    switch (err) {
    case CHAT_ENOTFOUND:
        api_error(c, err, "no such chat");
        break;
    case CHAT_EFORBIDDEN:
        api_error(c, err, "only the owner may add or remove others; a member may leave");
        break;
    case CHAT_ECONFLICT:
        api_error(c, err, "the owner cannot leave the chat");
        break;
    case CHAT_EINVAL:
        api_error(c, err, "a chat has at most 1000 members");
        break;
    default:
        api_error(c, err, NULL);
    }
}

void api_post_chat(struct api_ctx *c)
{
    cJSON *root = api_body_object(c);
    if (!root)
        return;
    const char **members = NULL;
    size_t n = 0;
    const char *name = chat_json_string(root, "name");
    size_t len = name ? strlen(name) : 0;
    if (len < 1 || len > CHAT_NAME_MAX) {
        api_error(c, CHAT_EINVAL, "\"name\" must be a string of 1-100 bytes");
        goto done;
    }
    if (user_list(c, root, "members", CHAT_GROUP_MAX, &members, &n) != 0)
        goto done;
    struct chat_group g;
    int err = chat_store_group_create(chat_store_local(c->api->cfg), c->user, name, members, n, &g);
    if (err) {
        group_error(c, err);
        goto done;
    }
    api_json(c, 201, group_json(&g));
    chat_group_cleanup(&g);
done:
    free(members);
    cJSON_Delete(root);
}

void api_get_chats(struct api_ctx *c)
{
    struct chat_group *v;
    size_t n;
    int err = chat_store_group_list(chat_store_local(c->api->cfg), c->user, &v, &n);
    if (err) {
        api_error(c, err, NULL);
        return;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(root, "chats");
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(arr, group_json(&v[i]));
    free(v);
    api_json(c, 200, root);
}

/* Loads group c->param for a member; answers and returns non-zero otherwise. */
static int member_group(struct api_ctx *c, struct chat_group *g)
{
    if (!chat_id_valid(c->param)) {
        api_error(c, CHAT_ENOTFOUND, "no such chat");
        return CHAT_ENOTFOUND;
    }
    int err = chat_store_group_get(chat_store_local(c->api->cfg), c->param, g);
    if (err) {
        group_error(c, err);
        return err;
    }
    for (size_t i = 0; i < g->nmembers; i++)
        if (strcmp(g->members[i], c->user) == 0)
            return 0;
    chat_group_cleanup(g);
    api_error(c, CHAT_EFORBIDDEN, "only members may see a chat");
    return CHAT_EFORBIDDEN;
}

void api_get_chat(struct api_ctx *c)
{
    struct chat_group g;
    if (member_group(c, &g) != 0)
        return;
    api_json(c, 200, group_json(&g));
    chat_group_cleanup(&g);
}

void api_post_chat_members(struct api_ctx *c)
{
    if (!chat_id_valid(c->param)) {
        api_error(c, CHAT_ENOTFOUND, "no such chat");
        return;
    }
    cJSON *root = api_body_object(c);
    if (!root)
        return;
    const char **add = NULL, **remove = NULL;
    size_t nadd = 0, nremove = 0;
    if (user_list(c, root, "add", CHAT_GROUP_MAX, &add, &nadd) != 0 ||
        user_list(c, root, "remove", CHAT_GROUP_MAX, &remove, &nremove) != 0)
        goto done;
    if (!cJSON_GetObjectItemCaseSensitive(root, "add") &&
        !cJSON_GetObjectItemCaseSensitive(root, "remove")) {
        api_error(c, CHAT_EINVAL, "give \"add\", \"remove\" or both");
        goto done;
    }
    struct chat_group g;
    int err = chat_store_group_change(chat_store_local(c->api->cfg), c->param, c->user, add, nadd,
                                      remove, nremove, &g);
    if (err) {
        group_error(c, err);
        goto done;
    }
    api_json(c, 200, group_json(&g));
    chat_group_cleanup(&g);
done:
    free(add);
    free(remove);
    cJSON_Delete(root);
}

/* ------------------------------------------------------------------------ */
/* Conversations                                                            */
/* ------------------------------------------------------------------------ */

/* Turns the API's name of a conversation ("bob", or "chat:<id>") into its
 * key, checking that the caller may see it. Answers and returns non-zero
 * otherwise. */
int api_conversation_key(struct api_ctx *c, const char *name, char key[CHAT_CONV_KEY_MAX + 1])
{
    if (strncmp(name, "chat:", 5) == 0) {
        const char *id = name + 5;
        if (!chat_id_valid(id)) {
            api_error(c, CHAT_ENOTFOUND, "no such chat");
            return CHAT_ENOTFOUND;
        }
        struct chat_group g;
        int err = chat_store_group_get(chat_store_local(c->api->cfg), id, &g);
        if (err) {
            group_error(c, err);
            return err;
        }
        bool member = false;
        for (size_t i = 0; i < g.nmembers && !member; i++)
            member = strcmp(g.members[i], c->user) == 0;
        chat_group_cleanup(&g);
        if (!member) {
            api_error(c, CHAT_EFORBIDDEN, "only members may read a chat");
            return CHAT_EFORBIDDEN;
        }
        chat_conv_key_group(key, id);
        return 0;
    }
    if (!chat_user_valid(name)) {
        api_error(c, CHAT_EINVAL, "a conversation is a user id or chat:<chat id>");
        return CHAT_EINVAL;
    }
    chat_conv_key_direct(key, c->user, name);
    return 0;
}

/* The API's name of a conversation key, seen by user. */
static void conversation_json(cJSON *o, const struct chat_conversation *cv, const char *user)
{
    const char *key = cv->conv_key;
    if (strncmp(key, "c:", 2) == 0) {
        char name[CHAT_CHAT_ID_LEN + 6];
        snprintf(name, sizeof(name), "chat:%s", key + 2);
        cJSON_AddStringToObject(o, "conversation", name);
        cJSON_AddStringToObject(o, "kind", "group");
        cJSON_AddNullToObject(o, "peer");
        cJSON_AddStringToObject(o, "chat", key + 2);
        cJSON_AddStringToObject(o, "name", cv->name);
        return;
    }
    /* "d:<a>|<b>": the peer is the one that is not the caller (or the
     * caller, for notes to oneself). */
    char a[CHAT_USER_MAX + 1] = "", b[CHAT_USER_MAX + 1] = "";
    const char *bar = strchr(key + 2, '|');
    if (bar) {
        snprintf(a, sizeof(a), "%.*s", (int)(bar - key - 2), key + 2);
        snprintf(b, sizeof(b), "%s", bar + 1);
    }
    const char *peer = strcmp(a, user) == 0 ? b : a;
    cJSON_AddStringToObject(o, "conversation", peer);
    cJSON_AddStringToObject(o, "kind", "direct");
    cJSON_AddStringToObject(o, "peer", peer);
    cJSON_AddNullToObject(o, "chat");
    cJSON_AddNullToObject(o, "name");
}

void api_get_conversations(struct api_ctx *c)
{
    uint64_t limit;
    if (api_arg_u64(c, "limit", CONVERSATIONS_DEFAULT, 100, &limit))
        return;
    if (limit == 0) {
        api_error(c, CHAT_EINVAL, "limit must be from 1 to 100");
        return;
    }
    struct chat_conversation *v;
    size_t n;
    int err =
        chat_store_conversations(chat_store_local(c->api->cfg), c->user, (unsigned)limit, &v, &n);
    if (err) {
        api_error(c, err, NULL);
        return;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(root, "conversations");
    for (size_t i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        conversation_json(o, &v[i], c->user);
        cJSON *last = cJSON_AddObjectToObject(o, "last_message");
        cJSON_AddStringToObject(last, "message_id", v[i].last.message_id);
        cJSON_AddStringToObject(last, "from", v[i].last.from);
        cJSON_AddStringToObject(last, "body", v[i].last.body ? v[i].last.body : "");
        chat_json_add_int(last, "ts", v[i].last.ts);
        chat_json_add_int(o, "unread", v[i].unread);
        chat_json_add_int(o, "last_ts", v[i].last_ts);
        cJSON_AddItemToArray(arr, o);
    }
    chat_conversations_free(v, n);
    api_json(c, 200, root);
}

void api_get_history(struct api_ctx *c)
{
    char key[CHAT_CONV_KEY_MAX + 1];
    if (api_conversation_key(c, c->param, key) != 0)
        return;
    uint64_t limit;
    if (api_arg_u64(c, "limit", HISTORY_DEFAULT, 100, &limit))
        return;
    const char *before = c->req->arg(c->req->door, "before");
    if (limit == 0 || (before && !chat_id_valid(before))) {
        api_error(c, CHAT_EINVAL,
                  limit == 0 ? "limit must be from 1 to 100"
                             : "before must be a message_id of this conversation");
        return;
    }
    struct chat_items items;
    int err =
        chat_store_history(chat_store_local(c->api->cfg), key, before, (unsigned)limit, &items);
    if (err == CHAT_ENOTFOUND) {
        api_error(c, CHAT_EINVAL, "before must be a message_id of this conversation");
        return;
    }
    if (err) {
        api_error(c, err, NULL);
        return;
    }
    chat_items_bound(&items, (size_t)c->api->cfg->stream_buffer_bytes);
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(root, "messages");
    for (size_t i = 0; i < items.n; i++) {
        const struct chat_item *it = &items.v[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "message_id", it->message_id);
        cJSON_AddStringToObject(o, "from", it->from);
        chat_json_add_str_or_null(o, "to", it->to);
        chat_json_add_str_or_null(o, "chat", it->chat);
        cJSON_AddStringToObject(o, "body", it->body);
        chat_json_add_int(o, "ts", it->ts);
        cJSON_AddItemToArray(arr, o);
    }
    chat_json_add_str_or_null(root, "next_before",
                              items.n ? items.v[items.n - 1].message_id : NULL);
    cJSON_AddBoolToObject(root, "more", items.more);
    chat_items_cleanup(&items);
    api_json(c, 200, root);
}
