/* chatctl.c: the admin tool: schema migrations, dev tokens, inbox and stats. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "config.h"
#include "err.h"
#include "id.h"
#include "json.h"
#include "log.h"
#include "store.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: chatctl -c FILE COMMAND [ARGS]\n"
            "  migrate [--sql-dir DIR]   apply the schema (default DIR: %s)\n"
            "  token USER [--ttl SECONDS] print a token for USER signed with [auth] jwt_secret\n"
            "  inbox USER [--all]        print USER's pending (or all) inbox rows as JSON lines\n",
            CHAT_SQLDIR);
}

static int cmd_inbox(const struct chat_config *cfg, const char *user, bool all)
{
    int err;
    struct chat_store *st = chat_store_open(cfg, &err);
    if (!st) {
        fprintf(stderr, "chatctl: MySQL is unavailable\n");
        return 1;
    }
    uint64_t after = 0;
    for (;;) {
        struct chat_items items;
        err = chat_store_inbox(st, user, after, !all, 1000, &items);
        if (err) {
            fprintf(stderr, "chatctl: %s\n", chat_err_message(err));
            chat_store_close(st);
            return 1;
        }
        for (size_t i = 0; i < items.n; i++) {
            struct chat_item *it = &items.v[i];
            cJSON *o = cJSON_CreateObject();
            chat_json_add_int(o, "seq", (int64_t)it->seq);
            cJSON_AddStringToObject(o, "message_id", it->message_id);
            cJSON_AddStringToObject(o, "from", it->from);
            cJSON_AddStringToObject(o, "body", it->body);
            chat_json_add_int(o, "ts", it->ts);
            cJSON_AddStringToObject(o, "status", it->status ? "delivered" : "pending");
            char *s = chat_json_print(o);
            puts(s);
            free(s);
            cJSON_Delete(o);
            after = it->seq;
        }
        bool more = items.more;
        chat_items_cleanup(&items);
        if (!more)
            break;
    }
    chat_store_close(st);
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = NULL, *sql_dir = CHAT_SQLDIR;
    int ttl = -1;
    bool all = false;
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"sql-dir", required_argument, NULL, 's'},
        {"ttl", required_argument, NULL, 't'},    {"all", no_argument, NULL, 'a'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 's':
            sql_dir = optarg;
            break;
        case 't':
            ttl = atoi(optarg);
            break;
        case 'a':
            all = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!path || optind >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[optind];
    struct chat_config cfg;
    if (chat_config_open(&cfg, path, "chatctl") != 0) {
        chat_config_cleanup(&cfg);
        return 2;
    }
    int rc = 2;
    if (strcmp(cmd, "migrate") == 0) {
        rc = chat_store_migrate(&cfg, sql_dir) == 0 ? 0 : 1;
    } else if (strcmp(cmd, "token") == 0 && optind + 1 < argc) {
        const char *user = argv[optind + 1];
        char *tok = chat_auth_mint(cfg.jwt_secret, user, chat_now_ms() / 1000,
                                   ttl > 0 ? ttl : cfg.token_ttl);
        if (!tok) {
            fprintf(stderr, "chatctl: \"%s\" is not a user id (1-64 of A-Za-z0-9_.@-)\n", user);
            rc = 2;
        } else {
            puts(tok);
            free(tok);
            rc = 0;
        }
    } else if (strcmp(cmd, "inbox") == 0 && optind + 1 < argc) {
        rc = cmd_inbox(&cfg, argv[optind + 1], all);
    } else {
        usage(stderr);
    }
    chat_config_cleanup(&cfg);
    return rc;
}
