/* config.c: the INI configuration, driven by one table of keys. */
#include "config.h"

#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"
#include "log.h"

enum key_type { KEY_INT, KEY_BOOL, KEY_STR, KEY_MODE, KEY_POLICY, KEY_LEVEL };

struct key {
    const char *section;
    const char *name;
    enum key_type type;
    size_t offset;
    const char *def;
    long min, max;
    const char *doc;
};

#define OFF(f) offsetof(struct chat_config, f)

/* The table of every key. Keep docs/config.md in step: `chatd --help-config`. */
static const struct key keys[] = {
    {"server", "node_id", KEY_STR, OFF(node_id), "", 0, 48,
     "Name of this node in ACK routing and logs, unique per node; empty means <hostname>:<port>. "
     "chat.fcgi appends /fcgi-<pid>, since a web server may start several processes."},
    {"server", "listen", KEY_STR, OFF(listen), "127.0.0.1", 0, 255,
     "Address to listen on (an IPv4 address)."},
    {"server", "port", KEY_INT, OFF(port), "8081", 1, 65535, "TCP port."},
    {"server", "threads", KEY_INT, OFF(threads), "4", 1, 256,
     "chatd: HTTP threads (libmicrohttpd), which hold the long-polls, and as many stream loops, "
     "which serve the SSE streams; each with one MySQL connection."},
    {"server", "workers", KEY_INT, OFF(workers), "8", 1, 256,
     "chatd: threads that run REST requests off the HTTP threads, each with its own MySQL "
     "connection; concurrent sends share a transaction (group commit)."},
    {"server", "max_connections", KEY_INT, OFF(max_connections), "10000", 1, 1000000,
     "Open connections at most, streams included."},
    {"server", "connection_timeout", KEY_INT, OFF(connection_timeout), "60", 1, 3600,
     "Seconds an idle non-stream connection is kept; also how long a stream's socket may "
     "take nothing (a client that stopped reading) before it is closed."},
    {"server", "max_body_bytes", KEY_INT, OFF(max_body_bytes), "65536", 1024, 16777216,
     "Largest request body; larger ones get 413."},
    {"server", "connection_memory_bytes", KEY_INT, OFF(connection_memory_bytes), "16384", 8192,
     1048576,
     "chatd: the memory of each connection while libmicrohttpd serves it, which holds its "
     "request head (a head of more than about this less 1 KiB is refused) and its answer. A "
     "stream gives it back once its head is written: an idle stream costs about 2 KiB."},
    {"auth", "jwt_secret", KEY_STR, OFF(jwt_secret), "", 0, 4096,
     "Required. HS256 key shared with the token issuer, at least 32 characters."},
    {"auth", "token_ttl", KEY_INT, OFF(token_ttl), "86400", 60, 31536000,
     "Lifetime in seconds of tokens minted by `chatctl token`."},
    {"auth", "dev_tokens", KEY_BOOL, OFF(dev_tokens), "false", 0, 0,
     "true serves POST /v1/dev/token, which mints a token for any user id without a password: "
     "for a local development stack only, never in production."},
    {"mysql", "host", KEY_STR, OFF(mysql_host), "127.0.0.1", 0, 255, "MySQL/MariaDB host."},
    {"mysql", "port", KEY_INT, OFF(mysql_port), "3306", 1, 65535, "MySQL/MariaDB port."},
    {"mysql", "socket", KEY_STR, OFF(mysql_socket), "", 0, 1024,
     "Unix socket path; when set it is used instead of host and port."},
    {"mysql", "user", KEY_STR, OFF(mysql_user), "chat", 0, 255, "MySQL user."},
    {"mysql", "password", KEY_STR, OFF(mysql_password), "", 0, 255, "MySQL password."},
    {"mysql", "database", KEY_STR, OFF(mysql_database), "chat", 1, 64, "Database name."},
    {"mysql", "connect_timeout", KEY_INT, OFF(mysql_connect_timeout), "2", 1, 60,
     "Seconds to wait for a MySQL connection."},
    {"mysql", "read_timeout", KEY_INT, OFF(mysql_read_timeout), "5", 1, 600,
     "Seconds to wait for a MySQL reply before the request gets 503."},
    {"mysql", "send_batch", KEY_INT, OFF(send_batch), "32", 1, 1024,
     "Sends written together in one transaction at most (group commit: sends that arrive while "
     "one is being written share the next COMMIT); 1 writes each alone."},
    {"redis", "host", KEY_STR, OFF(redis_host), "127.0.0.1", 1, 255, "Redis host."},
    {"redis", "port", KEY_INT, OFF(redis_port), "6379", 1, 65535, "Redis port."},
    {"redis", "user", KEY_STR, OFF(redis_user), "", 0, 255,
     "Redis ACL user (Redis 6 and later) for AUTH with the password; empty: the password alone."},
    {"redis", "password", KEY_STR, OFF(redis_password), "", 0, 255,
     "Redis AUTH password; empty for none."},
    {"redis", "channel_prefix", KEY_STR, OFF(channel_prefix), "chat", 0, 64,
     "Prefix of every channel name, so several deployments can share one Redis."},
    {"redis", "timeout", KEY_INT, OFF(redis_timeout), "3", 1, 60,
     "Seconds a Redis link may go without an answer (the watchdog's heartbeat) before it is "
     "dropped and reconnected."},
    {"redis", "reconnect_max_ms", KEY_INT, OFF(redis_reconnect_max_ms), "5000", 100, 600000,
     "Cap of the reconnect backoff (it starts at 100 ms and doubles, with jitter)."},
    {"delivery", "mode", KEY_MODE, OFF(mode), "server", 0, 0,
     "`server`: writing a message to a stream (or a poll answer) is its delivery. "
     "`client`: only the device's POST /v1/inbox/ack is."},
    {"delivery", "ack_policy", KEY_POLICY, OFF(ack_policy), "mark", 0, 0,
     "`mark`: a delivered inbox row becomes DELIVERED. `delete`: it is deleted."},
    {"delivery", "ack_timeout", KEY_INT, OFF(ack_timeout), "5", 1, 3600,
     "Seconds after which a message with no ACK is counted (chat_ack_timeouts_total); "
     "its row stays PENDING and is replayed."},
    {"delivery", "ack_batch_ms", KEY_INT, OFF(ack_batch_ms), "5", 0, 1000,
     "Milliseconds a node waits for more ACKs before it writes the ones it has (one COMMIT "
     "for all); 0: at once. Delays the sender's delivered receipt by as much."},
    {"delivery", "keepalive", KEY_INT, OFF(keepalive), "15", 1, 300,
     "Seconds between keepalive comments on an idle SSE stream; also how soon a vanished "
     "client is noticed."},
    {"delivery", "retry_ms", KEY_INT, OFF(retry_ms), "3000", 0, 600000,
     "The `retry:` reconnect delay sent at the start of each stream."},
    {"delivery", "max_message_bytes", KEY_INT, OFF(max_message_bytes), "4096", 1, 1048576,
     "Largest message body in bytes (UTF-8); larger ones get 413."},
    {"delivery", "poll_timeout", KEY_INT, OFF(poll_timeout), "25", 0, 3600,
     "Default seconds a long-poll is held."},
    {"delivery", "poll_timeout_max", KEY_INT, OFF(poll_timeout_max), "60", 0, 3600,
     "Largest `timeout` a long-poll may ask for; more gets 400."},
    {"delivery", "replay_batch", KEY_INT, OFF(replay_batch), "500", 1, 1000,
     "Rows read from MySQL at a time when a stream replays or catches up."},
    {"delivery", "stream_buffer_bytes", KEY_INT, OFF(stream_buffer_bytes), "1048576", 4096,
     1073741824,
     "Bytes a stream may have queued for a slow reader; past it the stream is closed and "
     "the client resumes with Last-Event-ID. Also the most JSON one inbox page, long-poll "
     "answer or history page holds (plus one item; `more` is then true)."},
    {"delivery", "send_rate", KEY_INT, OFF(send_rate), "50", 0, 1000000,
     "Messages per second a user may send through this node; 0 for no limit."},
    {"delivery", "send_burst", KEY_INT, OFF(send_burst), "100", 1, 1000000,
     "Messages a user may send at once before send_rate applies."},
    {"delivery", "max_streams_per_user", KEY_INT, OFF(max_streams_per_user), "10", 1, 1000,
     "SSE streams and long-polls one user may hold open on this node; more get 429."},
    {"delivery", "presence_ttl", KEY_INT, OFF(presence_ttl), "30", 3, 3600,
     "Seconds a user stays online in Redis after the last refresh by the node holding their "
     "stream; nodes refresh every third of it."},
    {"push", "url", KEY_STR, OFF(push_url), "", 0, 1024,
     "The push hook: an http(s) URL that gets a POST for each message still PENDING "
     "push_after seconds after it was stored; empty turns it off."},
    {"push", "after", KEY_INT, OFF(push_after), "30", 0, 86400,
     "Seconds a message stays PENDING before the push hook is called."},
    {"push", "preview_bytes", KEY_INT, OFF(push_preview_bytes), "100", 0, 4096,
     "Bytes of the body sent as the preview (cut on a UTF-8 boundary); 0 sends none."},
    {"push", "timeout_ms", KEY_INT, OFF(push_timeout_ms), "5000", 100, 60000,
     "Time allowed for one POST to the hook."},
    {"push", "max_attempts", KEY_INT, OFF(push_max_attempts), "8", 1, 100,
     "Posts tried for one message before giving up (backoff doubles from 1 s to 5 min)."},
    {"fcgi", "listen", KEY_STR, OFF(fcgi_listen), "127.0.0.1:9000", 0, 1024,
     "chat.fcgi only: a unix socket path, or 127.0.0.1:<port> (loopback only); empty means "
     "the socket on descriptor 0 (spawned by the web server, or systemd socket activation)."},
    {"fcgi", "threads", KEY_INT, OFF(fcgi_threads), "8", 1, 256,
     "chat.fcgi only: worker threads, each with its own MySQL connection."},
    {"fcgi", "max_polls", KEY_INT, OFF(fcgi_max_polls), "4", 0, 255,
     "chat.fcgi only: long-polls held at once (each blocks a worker); more get 503. Must be "
     "below threads."},
    {"log", "level", KEY_LEVEL, OFF(log_level), "info", 1, 5, "debug, info, warn or error."},
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

static const struct key *find_key(const char *section, const char *name)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

static int set_key(struct chat_config *cfg, const struct key *k, const char *value, char *err,
                   size_t errlen)
{
    char *field = (char *)cfg + k->offset;
    switch (k->type) {
    case KEY_INT: {
        char *end;
        errno = 0;
        long v = strtol(value, &end, 10);
        if (errno || end == value || *end != '\0' || v < k->min || v > k->max) {
            snprintf(err, errlen, "[%s] %s: \"%s\" is not an integer from %ld to %ld", k->section,
                     k->name, value, k->min, k->max);
            return CHAT_EINVAL;
        }
        *(int *)field = (int)v;
        return 0;
    }
    case KEY_BOOL:
        if (strcmp(value, "true") == 0 || strcmp(value, "1") == 0)
            *(bool *)field = true;
        else if (strcmp(value, "false") == 0 || strcmp(value, "0") == 0)
            *(bool *)field = false;
        else {
            snprintf(err, errlen, "[%s] %s: \"%s\" is not one of true, false", k->section,
                     k->name, value);
            return CHAT_EINVAL;
        }
        return 0;
    case KEY_STR:
    case KEY_LEVEL: {
        size_t n = strlen(value);
        if ((long)n < k->min || (long)n > k->max) {
            snprintf(err, errlen, "[%s] %s: must be %ld to %ld characters long", k->section,
                     k->name, k->min, k->max);
            return CHAT_EINVAL;
        }
        if (k->type == KEY_LEVEL) {
            enum chat_log_level lv;
            if (chat_log_parse_level(value, &lv) != 0) {
                snprintf(err, errlen, "[%s] %s: \"%s\" is not one of debug, info, warn, error",
                         k->section, k->name, value);
                return CHAT_EINVAL;
            }
        }
        char **s = (char **)field;
        free(*s);
        *s = chat_xstrdup(value);
        return 0;
    }
    case KEY_MODE:
        if (strcmp(value, "server") == 0)
            *(enum chat_mode *)field = CHAT_MODE_SERVER;
        else if (strcmp(value, "client") == 0)
            *(enum chat_mode *)field = CHAT_MODE_CLIENT;
        else {
            snprintf(err, errlen, "[%s] %s: \"%s\" is not one of server, client", k->section,
                     k->name, value);
            return CHAT_EINVAL;
        }
        return 0;
    case KEY_POLICY:
        if (strcmp(value, "mark") == 0)
            *(enum chat_policy *)field = CHAT_POLICY_MARK;
        else if (strcmp(value, "delete") == 0)
            *(enum chat_policy *)field = CHAT_POLICY_DELETE;
        else {
            snprintf(err, errlen, "[%s] %s: \"%s\" is not one of mark, delete", k->section, k->name,
                     value);
            return CHAT_EINVAL;
        }
        return 0;
    }
    return CHAT_EINVAL;
}

void chat_config_defaults(struct chat_config *cfg)
{
    char err[256];
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < NKEYS; i++) {
        /* Defaults obey the table's own bounds except the empty required ones. */
        const struct key *k = &keys[i];
        if (k->type == KEY_STR || k->type == KEY_LEVEL) {
            char **s = (char **)((char *)cfg + k->offset);
            *s = chat_xstrdup(k->def);
        } else if (set_key(cfg, k, k->def, err, sizeof(err)) != 0) {
            chat_error("config default: %s", err);
            abort();
        }
    }
}

int chat_config_set(struct chat_config *cfg, const char *section, const char *key,
                    const char *value, char *err, size_t errlen)
{
    const struct key *k = find_key(section, key);
    if (!k) {
        snprintf(err, errlen, "[%s] %s: unknown key", section, key);
        return CHAT_EINVAL;
    }
    return set_key(cfg, k, value, err, errlen);
}

struct load_ctx {
    struct chat_config *cfg;
    char *err;
    size_t errlen;
    int failed;
};

static int on_ini(void *user, const char *section, const char *name, const char *value)
{
    struct load_ctx *lc = user;
    if (lc->failed)
        return 0;
    if (chat_config_set(lc->cfg, section, name, value, lc->err, lc->errlen) != 0) {
        lc->failed = 1;
        return 0;
    }
    return 1;
}

int chat_config_validate(const struct chat_config *cfg, char *err, size_t errlen)
{
    if (strlen(cfg->jwt_secret) < 32) {
        snprintf(err, errlen, "[auth] jwt_secret: required, at least 32 characters");
        return CHAT_EINVAL;
    }
    if (cfg->poll_timeout > cfg->poll_timeout_max) {
        snprintf(err, errlen, "[delivery] poll_timeout: must not exceed poll_timeout_max (%d)",
                 cfg->poll_timeout_max);
        return CHAT_EINVAL;
    }
    if (cfg->fcgi_max_polls >= cfg->fcgi_threads) {
        snprintf(err, errlen, "[fcgi] max_polls: must be below [fcgi] threads (%d)",
                 cfg->fcgi_threads);
        return CHAT_EINVAL;
    }
    if (cfg->send_rate > 0 && cfg->send_burst < 1) {
        snprintf(err, errlen, "[delivery] send_burst: must be at least 1");
        return CHAT_EINVAL;
    }
    return 0;
}

int chat_config_load(struct chat_config *cfg, const char *path, char *err, size_t errlen)
{
    char why[256] = "";
    struct load_ctx lc = {cfg, why, sizeof(why), 0};
    chat_config_defaults(cfg);
    int rc = ini_parse(path, on_ini, &lc);
    if (rc == -1) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return CHAT_EINVAL;
    }
    if (rc == -2) {
        snprintf(err, errlen, "%s: out of memory", path);
        return CHAT_EINVAL;
    }
    if (rc > 0) {
        if (lc.failed)
            snprintf(err, errlen, "%s:%d: %s", path, rc, why);
        else
            snprintf(err, errlen, "%s:%d: syntax error", path, rc);
        return CHAT_EINVAL;
    }
    if (chat_config_validate(cfg, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "%s: %s", path, why);
        return CHAT_EINVAL;
    }
    return 0;
}

int chat_config_open(struct chat_config *cfg, const char *path, const char *prog)
{
    char err[512];
    if (chat_config_load(cfg, path, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s: %s\n", prog, err);
        return CHAT_EINVAL;
    }
    enum chat_log_level level;
    chat_log_parse_level(cfg->log_level, &level);
    chat_log_set_level(level);
    return 0;
}

void chat_config_describe(FILE *out)
{
    const char *section = "";
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key *k = &keys[i];
        if (strcmp(section, k->section) != 0) {
            section = k->section;
            fprintf(out, "\n## [%s]\n\n| key | default | meaning |\n|---|---|---|\n", section);
        }
        fprintf(out, "| `%s` | `%s` | %s |\n", k->name, k->def[0] ? k->def : "(empty)", k->doc);
    }
}

void chat_config_cleanup(struct chat_config *cfg)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].type == KEY_STR || keys[i].type == KEY_LEVEL) {
            char **s = (char **)((char *)cfg + keys[i].offset);
            free(*s);
            *s = NULL;
        }
    }
}
