/* config.h: the INI configuration file.
 *
 * Every key, its type, default, bounds and meaning live in one table in
 * config.c; docs/config.md is generated from the same table by
 * `chatd --help-config`. A bad value is refused at start with a message
 * naming the section and key. */
#ifndef CHAT_CONFIG_H
#define CHAT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

enum chat_mode { CHAT_MODE_SERVER, CHAT_MODE_CLIENT };
enum chat_policy { CHAT_POLICY_MARK, CHAT_POLICY_DELETE };

struct chat_config {
    /* [server] */
    char *node_id;
    char *listen;
    int port;
    int threads;
    int workers;
    int max_connections;
    int connection_timeout;
    int max_body_bytes;
    int connection_memory_bytes;
    /* [auth] */
    char *jwt_secret;
    int token_ttl;
    bool dev_tokens; /* POST /v1/dev/token: local stacks only */
    /* [mysql] */
    char *mysql_host;
    int mysql_port;
    char *mysql_socket;
    char *mysql_user;
    char *mysql_password;
    char *mysql_database;
    int mysql_connect_timeout;
    int mysql_read_timeout;
    int send_batch; /* group commit: sends per transaction at most */
    /* [redis] */
    char *redis_host;
    int redis_port;
    char *redis_user;
    char *redis_password;
    char *channel_prefix;
    int redis_reconnect_max_ms;
    int redis_timeout; /* seconds: the watchdog */
    /* [delivery] */
    enum chat_mode mode;
    enum chat_policy ack_policy;
    int ack_timeout;
    int ack_batch_ms;
    int keepalive;
    int retry_ms;
    int max_message_bytes;
    int poll_timeout;
    int poll_timeout_max;
    int replay_batch;
    int stream_buffer_bytes;
    int send_rate;
    int send_burst;
    int max_streams_per_user;
    int presence_ttl;
    /* [push] */
    char *push_url;
    int push_after;
    int push_preview_bytes;
    int push_timeout_ms;
    int push_max_attempts;
    /* [fcgi] */
    char *fcgi_listen;
    int fcgi_threads;
    int fcgi_max_polls;
    /* [log] */
    char *log_level;
};

/* Fills cfg with every default. Allocates; release with chat_config_cleanup. */
void chat_config_defaults(struct chat_config *cfg);

/* Sets one key from its text form. Returns 0, or CHAT_EINVAL with a message
 * naming "[section] key" and the accepted values written to err. */
int chat_config_set(struct chat_config *cfg, const char *section, const char *key,
                    const char *value, char *err, size_t errlen);

/* Defaults, then the file at path, then checks that required keys are set.
 * Returns 0, or CHAT_EINVAL with a message in err (file, line, key). */
int chat_config_load(struct chat_config *cfg, const char *path, char *err, size_t errlen);

/* What a program does first: chat_config_load, a "<prog>: <reason>" line on
 * stderr when that fails, and the log level from [log] level. 0 or
 * CHAT_EINVAL (cfg is still to be cleaned up). */
int chat_config_open(struct chat_config *cfg, const char *path, const char *prog);

/* Checks cross-key rules and required keys (jwt_secret). 0 or CHAT_EINVAL. */
int chat_config_validate(const struct chat_config *cfg, char *err, size_t errlen);

/* Writes every key with its default and meaning, as Markdown. */
void chat_config_describe(FILE *out);

void chat_config_cleanup(struct chat_config *cfg);

#endif
