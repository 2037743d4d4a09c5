/* store.c: MySQL (MariaDB Connector/C) with prepared statements only. */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <mysql.h>
#include <mysqld_error.h>
#include <errmsg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "buf.h"
#include "err.h"
#include "json.h"
#include "log.h"
#include "metrics.h"

/* ------------------------------------------------------------------------ */
/* Statements                                                               */
/* ------------------------------------------------------------------------ */

/* Statements that write or look up many rows take them as one JSON array
 * of arrays, read by JSON_TABLE as the table j (a column per place in the
 * inner array): one statement whatever the number of rows, with a constant
 * text like every other. User, chat and conversation ids are ASCII; a
 * value that does not fit its column fails the statement. */
#define ROWS "JSON_TABLE(?, '$[*]' COLUMNS ("
#define AS_J ")) AS j"
#define ASCII " CHARACTER SET ascii COLLATE ascii_bin PATH "
#define UTF8 " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH "
#define NUM " PATH "
#define STRICT " ERROR ON ERROR"
#define MSG_ROWS                                                                                   \
    ROWS "mid CHAR(26)" ASCII "'$[0]'" STRICT ", snd VARCHAR(64)" ASCII "'$[1]'" STRICT            \
         ", cmid VARCHAR(64)" UTF8 "'$[2]'" STRICT ", body MEDIUMTEXT" UTF8 "'$[3]'" STRICT        \
         ", ts BIGINT" NUM "'$[4]'" STRICT ", chat VARCHAR(64)" ASCII "'$[5]'" STRICT              \
         ", ck VARCHAR(140)" ASCII "'$[6]'" STRICT AS_J
#define SEQ_ROWS                                                                                   \
    ROWS "u VARCHAR(64)" ASCII "'$[0]'" STRICT ", n BIGINT UNSIGNED" NUM "'$[1]'" STRICT AS_J
#define INBOX_ROWS                                                                                 \
    ROWS "u VARCHAR(64)" ASCII "'$[0]'" STRICT ", q BIGINT UNSIGNED" NUM "'$[1]'" STRICT           \
         ", pk BIGINT UNSIGNED" NUM "'$[2]'" STRICT ", push BIGINT" NUM                            \
         "'$[3]' NULL ON EMPTY" STRICT AS_J
#define CONV_ROWS                                                                                  \
    ROWS "u VARCHAR(64)" ASCII "'$[0]'" STRICT ", ck VARCHAR(140)" ASCII "'$[1]'" STRICT           \
         ", pk BIGINT UNSIGNED" NUM "'$[2]'" STRICT ", ts BIGINT" NUM "'$[3]'" STRICT              \
         ", nu BIGINT UNSIGNED" NUM "'$[4]'" STRICT AS_J
#define ACK_ROWS                                                                                   \
    ROWS "u VARCHAR(64)" ASCII "'$[0]'" STRICT ", q BIGINT UNSIGNED" NUM "'$[1]'" STRICT AS_J

enum stmt_id {
    S_SCHEMA,
    S_MSGS,
    S_SEQS,
    S_INBOXES,
    S_FIND_CLIENT,
    S_INBOX_ALL,
    S_INBOX_PENDING,
    S_LAST_SEQ,
    S_ACK_SELECT,
    S_ACK_MARK,
    S_ACK_DELETE,
    S_ACKS_MARK,
    S_ACKS_DELETE,
    S_MSG,
    S_MSG_RCPT,
    S_MEMBERS_SHARE,
    S_CONVS,
    S_GROUP_INS,
    S_MEMBER_INS,
    S_MEMBER_DEL,
    S_GROUP_GET,
    S_GROUP_LOCK,
    S_MEMBERS,
    S_MEMBER_COUNT,
    S_GROUP_LIST,
    S_IS_MEMBER,
    S_READ_SELECT,
    S_READ_SELECT_CONV,
    S_READ_MARK,
    S_CONV_UNREAD,
    S_CONV_LIST,
    S_HISTORY,
    S_MSG_PK,
    S_SEND_DIRECT,
    S_BLOCK_INS,
    S_BLOCK_DEL,
    S_BLOCK_LIST,
    S_TICKET_INS,
    S_TICKET_TAKE,
    S_TICKET_GC,
    S_PUSH_DUE,
    S_PUSH_LEASE,
    S_PUSH_DONE,
    S_PUSH_RETRY,
    S_CONV_PEERS,
    S_DURABILITY,
    S_COUNT
};

/* The columns of struct item_row; the body stays column 4 in every query. */
#define ITEM_COLS                                                                                  \
    "i.seq, m.message_id, m.sender, m.recipient, m.body, m.ts, i.status, i.delivered_ts, "         \
    "m.chat_id, i.read_ts"

static const char *const stmt_sql[S_COUNT] = {
    [S_SCHEMA] = "SELECT COALESCE(MAX(version), 0) FROM schema_version",
    /* A batch of group messages, RETURNING their ids. */
    [S_MSGS] = "INSERT INTO messages (message_id, sender, recipient, client_msg_id, body, ts, "
               "chat_id, conv_key) SELECT j.mid, j.snd, NULL, j.cmid, j.body, j.ts, j.chat, j.ck "
               "FROM " MSG_ROWS " RETURNING id, message_id",
    /* The recipients' rows, [user_id, n] in user order, locked until COMMIT:
     * seqs stay gapless. RETURNING hands back each row's new last_seq. */
    [S_SEQS] = "INSERT INTO user_seq (user_id, last_seq) SELECT j.u, j.n FROM " SEQ_ROWS
               " ON DUPLICATE KEY UPDATE last_seq = last_seq + VALUES(last_seq) "
               "RETURNING user_id, last_seq",
    /* [user_id, seq, msg_pk, push_next_ms or null] */
    [S_INBOXES] = "INSERT INTO inbox (user_id, seq, msg_pk, status, push_next_ms) "
                  "SELECT j.u, j.q, j.pk, 0, j.push FROM " INBOX_ROWS,
    [S_FIND_CLIENT] = "SELECT message_id, recipient, body, ts, chat_id FROM messages "
                      "WHERE sender = ? AND client_msg_id = ?",
    [S_INBOX_ALL] = "SELECT " ITEM_COLS " FROM inbox i JOIN messages m ON m.id = i.msg_pk "
                    "WHERE i.user_id = ? AND i.seq > ? ORDER BY i.seq LIMIT ?",
    [S_INBOX_PENDING] = "SELECT " ITEM_COLS " FROM inbox i JOIN messages m ON m.id = i.msg_pk "
                        "WHERE i.user_id = ? AND i.status = 0 AND i.seq > ? "
                        "ORDER BY i.seq LIMIT ?",
    [S_LAST_SEQ] = "SELECT last_seq FROM user_seq WHERE user_id = ?",
    [S_ACK_SELECT] = "SELECT i.seq, m.message_id, m.sender FROM inbox i "
                     "JOIN messages m ON m.id = i.msg_pk "
                     "WHERE i.user_id = ? AND i.status = 0 AND i.seq > ? AND i.seq <= ? "
                     "ORDER BY i.seq LIMIT 1000 FOR UPDATE",
    [S_ACK_MARK] = "UPDATE inbox SET status = 1, delivered_ts = ? "
                   "WHERE user_id = ? AND status = 0 AND seq > ? AND seq <= ?",
    [S_ACK_DELETE] = "DELETE FROM inbox WHERE user_id = ? AND status = 0 AND seq > ? AND seq <= ?",
    /* A batch of ACKs: one statement (and its own transaction) for the rows
     * of a JSON array of [user_id, seq] pairs, looked up in that order. */
    [S_ACKS_MARK] = "UPDATE " ACK_ROWS " STRAIGHT_JOIN inbox i "
                    "ON i.user_id = j.u AND i.seq = j.q "
                    "SET i.status = 1, i.delivered_ts = ? WHERE i.status = 0",
    [S_ACKS_DELETE] = "DELETE i FROM " ACK_ROWS " STRAIGHT_JOIN inbox i "
                      "ON i.user_id = j.u AND i.seq = j.q WHERE i.status = 0",
    [S_MSG] = "SELECT id, message_id, sender, recipient, body, ts, chat_id FROM messages "
              "WHERE message_id = ?",
    [S_MSG_RCPT] = "SELECT user_id, status, delivered_ts, read_ts FROM inbox WHERE msg_pk = ? "
                   "ORDER BY user_id",
    /* A send holds the member rows shared until COMMIT: a membership change
     * (which locks them exclusively) lands before it or after it, whole. */
    [S_MEMBERS_SHARE] = "SELECT user_id FROM chat_members WHERE chat_id = ? ORDER BY user_id "
                        "LOCK IN SHARE MODE",
    /* [user_id, conv_key, last_msg_pk, last_ts, unread], in key order */
    [S_CONVS] = "INSERT INTO conversations (user_id, conv_key, last_msg_pk, last_ts, unread) "
                "SELECT j.u, j.ck, j.pk, j.ts, j.nu FROM " CONV_ROWS " ON DUPLICATE KEY UPDATE "
                "last_msg_pk = GREATEST(last_msg_pk, VALUES(last_msg_pk)), "
                "last_ts = GREATEST(last_ts, VALUES(last_ts)), "
                "unread = unread + VALUES(unread)",
    [S_GROUP_INS] = "INSERT INTO chats (id, name, owner, created_ts) VALUES (?, ?, ?, ?)",
    [S_MEMBER_INS] =
        "INSERT IGNORE INTO chat_members (chat_id, user_id, joined_ts) VALUES (?, ?, ?)",
    [S_MEMBER_DEL] = "DELETE FROM chat_members WHERE chat_id = ? AND user_id = ?",
    [S_GROUP_GET] = "SELECT name, owner, created_ts FROM chats WHERE id = ?",
    [S_GROUP_LOCK] = "SELECT name, owner, created_ts FROM chats WHERE id = ? FOR UPDATE",
    [S_MEMBERS] = "SELECT user_id FROM chat_members WHERE chat_id = ? ORDER BY user_id",
    [S_MEMBER_COUNT] = "SELECT COUNT(*) FROM chat_members WHERE chat_id = ?",
    [S_GROUP_LIST] = "SELECT c.id, c.name, c.owner, c.created_ts, "
                     "(SELECT COUNT(*) FROM chat_members x WHERE x.chat_id = c.id) "
                     "FROM chat_members m JOIN chats c ON c.id = m.chat_id "
                     "WHERE m.user_id = ? ORDER BY c.created_ts DESC, c.id LIMIT 1000",
    [S_IS_MEMBER] = "SELECT joined_ts FROM chat_members WHERE chat_id = ? AND user_id = ?",
    [S_READ_SELECT] = "SELECT i.seq, m.message_id, m.sender, m.conv_key FROM inbox i "
                      "JOIN messages m ON m.id = i.msg_pk "
                      "WHERE i.user_id = ? AND i.status < 2 AND i.seq > ? AND i.seq <= ? "
                      "ORDER BY i.seq LIMIT 1000 FOR UPDATE",
    [S_READ_SELECT_CONV] = "SELECT i.seq, m.message_id, m.sender, m.conv_key FROM inbox i "
                           "JOIN messages m ON m.id = i.msg_pk "
                           "WHERE i.user_id = ? AND i.status < 2 AND i.seq > ? AND i.seq <= ? "
                           "AND m.conv_key = ? ORDER BY i.seq LIMIT 1000 FOR UPDATE",
    [S_READ_MARK] = "UPDATE inbox SET status = 2, read_ts = ?, "
                    "delivered_ts = COALESCE(delivered_ts, ?) WHERE user_id = ? AND seq = ?",
    [S_CONV_UNREAD] = "UPDATE conversations SET unread = IF(unread > ?, unread - ?, 0) "
                      "WHERE user_id = ? AND conv_key = ?",
    [S_CONV_LIST] = "SELECT c.conv_key, c.unread, c.last_ts, m.message_id, m.sender, m.body, m.ts, "
                    "g.name FROM conversations c JOIN messages m ON m.id = c.last_msg_pk "
                    "LEFT JOIN chats g ON g.id = m.chat_id "
                    "WHERE c.user_id = ? ORDER BY c.last_ts DESC, c.conv_key DESC LIMIT ?",
    [S_HISTORY] = "SELECT m.id, m.message_id, m.sender, m.recipient, m.body, m.ts, m.chat_id "
                  "FROM messages m WHERE m.conv_key = ? AND m.id < ? ORDER BY m.id DESC LIMIT ?",
    [S_MSG_PK] = "SELECT id, conv_key FROM messages WHERE message_id = ?",
    [S_DURABILITY] = "SELECT @@GLOBAL.innodb_flush_log_at_trx_commit",
    /* Direct sends: sql/004_send_direct.sql. */
    [S_SEND_DIRECT] = "CALL chat_send_direct(?, ?)",
    [S_BLOCK_INS] = "INSERT IGNORE INTO blocks (user_id, blocked, created_ts) VALUES (?, ?, ?)",
    [S_BLOCK_DEL] = "DELETE FROM blocks WHERE user_id = ? AND blocked = ?",
    [S_BLOCK_LIST] = "SELECT blocked FROM blocks WHERE user_id = ? ORDER BY blocked LIMIT 1000",
    [S_TICKET_INS] = "INSERT INTO tickets (ticket, user_id, expires_ms) VALUES (?, ?, ?)",
    /* Single use across every node: the DELETE that removes it wins. */
    [S_TICKET_TAKE] = "DELETE FROM tickets WHERE ticket = ? AND expires_ms > ? RETURNING user_id",
    [S_TICKET_GC] = "DELETE FROM tickets WHERE expires_ms < ? LIMIT 100",
    [S_PUSH_DUE] = "SELECT i.user_id, i.seq, i.push_attempts, m.message_id, m.sender, m.body, "
                   "m.chat_id, m.ts FROM inbox i JOIN messages m ON m.id = i.msg_pk "
                   "WHERE i.push_state = 0 AND i.status = 0 AND i.push_next_ms <= ? "
                   "ORDER BY i.push_next_ms LIMIT 50 FOR UPDATE SKIP LOCKED",
    [S_PUSH_LEASE] = "UPDATE inbox SET push_next_ms = ? WHERE user_id = ? AND seq = ?",
    [S_PUSH_DONE] = "UPDATE inbox SET push_state = 1, push_attempts = push_attempts + 1 "
                    "WHERE user_id = ? AND seq = ?",
    [S_PUSH_RETRY] = "UPDATE inbox SET push_attempts = push_attempts + 1, push_next_ms = ?, "
                     "push_state = IF(push_attempts >= ?, 2, 0) WHERE user_id = ? AND seq = ?",
    /* The people a user talks with: direct peers and fellow group members.
     * The peer of a direct conversation is read from its key ("d:a|b"; a
     * user id has no '|'), so only the user's own rows are read (a join on
     * conv_key would scan the whole table: it has no index of its own). */
    [S_CONV_PEERS] = "SELECT p FROM ("
                     "SELECT IF(SUBSTRING_INDEX(SUBSTRING(conv_key, 3), '|', 1) = user_id, "
                     "SUBSTRING_INDEX(conv_key, '|', -1), "
                     "SUBSTRING_INDEX(SUBSTRING(conv_key, 3), '|', 1)) AS p "
                     "FROM conversations WHERE user_id = ? AND conv_key LIKE 'd:%' UNION "
                     "SELECT b.user_id FROM chat_members a "
                     "JOIN chat_members b ON b.chat_id = a.chat_id WHERE a.user_id = ?"
                     ") t WHERE p <> ? LIMIT 1000",
};

struct chat_store {
    const struct chat_config *cfg;
    MYSQL *db; /* NULL while disconnected */
    MYSQL_STMT *st[S_COUNT];
    int64_t next_connect_ms; /* no new attempt before this (fail fast while down) */
};

/* ------------------------------------------------------------------------ */
/* Connection                                                               */
/* ------------------------------------------------------------------------ */

static void disconnect(struct chat_store *s)
{
    for (int i = 0; i < S_COUNT; i++) {
        if (s->st[i])
            mysql_stmt_close(s->st[i]);
        s->st[i] = NULL;
    }
    if (s->db)
        mysql_close(s->db);
    s->db = NULL;
}

static void warn_if_not_durable(struct chat_store *s);

static int connect_db(struct chat_store *s)
{
    if (s->db)
        return 0;
    int64_t now = chat_mono_ms();
    if (now < s->next_connect_ms)
        return CHAT_EUNAVAIL;
    const struct chat_config *c = s->cfg;
    MYSQL *db = mysql_init(NULL);
    if (!db)
        abort();
    unsigned ct = (unsigned)c->mysql_connect_timeout, rt = (unsigned)c->mysql_read_timeout;
    mysql_options(db, MYSQL_OPT_CONNECT_TIMEOUT, &ct);
    mysql_options(db, MYSQL_OPT_READ_TIMEOUT, &rt);
    mysql_options(db, MYSQL_OPT_WRITE_TIMEOUT, &rt);
    mysql_options(db, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    /* Each statement sees the latest commits; no gap locks on the inbox. */
    mysql_options(db, MYSQL_INIT_COMMAND, "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED");
    const char *sock = c->mysql_socket[0] ? c->mysql_socket : NULL;
    if (!mysql_real_connect(db, sock ? NULL : c->mysql_host, c->mysql_user, c->mysql_password,
                            c->mysql_database, sock ? 0 : (unsigned)c->mysql_port, sock, 0)) {
        chat_warn("mysql: connect to %s:%d failed: %s", sock ? sock : c->mysql_host, c->mysql_port,
                  mysql_error(db));
        mysql_close(db);
        chat_metric_inc(store_errors);
        /* Fail fast for a moment instead of waiting connect_timeout per request. */
        s->next_connect_ms = now + 500;
        return CHAT_EUNAVAIL;
    }
    s->db = db;
    warn_if_not_durable(s);
    /* The check drops a connection that fails it. */
    return s->db ? 0 : CHAT_EUNAVAIL;
}

/* Translates a MySQL error once, here. A lost connection is dropped so the
 * next call reconnects. */
static int db_fail(struct chat_store *s, const char *what, unsigned err, const char *msg)
{
    chat_metric_inc(store_errors);
    chat_warn("mysql: %s: %u %s", what, err, msg);
    disconnect(s);
    return CHAT_EUNAVAIL;
}

static MYSQL_STMT *stmt(struct chat_store *s, enum stmt_id id, int *err)
{
    *err = connect_db(s);
    if (*err)
        return NULL;
    if (s->st[id])
        return s->st[id];
    MYSQL_STMT *st = mysql_stmt_init(s->db);
    if (!st)
        abort();
    if (mysql_stmt_prepare(st, stmt_sql[id], strlen(stmt_sql[id])) != 0) {
        *err = db_fail(s, "prepare", mysql_stmt_errno(st), mysql_stmt_error(st));
        mysql_stmt_close(st);
        return NULL;
    }
    s->st[id] = st;
    return st;
}

/* Binds params, executes, and for a SELECT binds results and buffers the
 * whole result client-side. Returns 0, the MySQL error number (> 0) for the
 * caller to judge, or a negative chat_err. */
static int run(struct chat_store *s, enum stmt_id id, MYSQL_BIND *params, MYSQL_BIND *results,
               MYSQL_STMT **out)
{
    int err;
    MYSQL_STMT *st = stmt(s, id, &err);
    if (!st)
        return err;
    if ((params && mysql_stmt_bind_param(st, params)) || mysql_stmt_execute(st) ||
        (results && (mysql_stmt_bind_result(st, results) || mysql_stmt_store_result(st)))) {
        unsigned e = mysql_stmt_errno(st);
        if (e == ER_DUP_ENTRY || e == ER_LOCK_DEADLOCK || e == ER_LOCK_WAIT_TIMEOUT)
            return (int)e;
        return db_fail(s, stmt_sql[id], e, mysql_stmt_error(st));
    }
    *out = st;
    return 0;
}

static void bind_str(MYSQL_BIND *b, const char *v, unsigned long *len)
{
    memset(b, 0, sizeof(*b));
    b->buffer_type = MYSQL_TYPE_STRING;
    b->buffer = (void *)v;
    *len = v ? strlen(v) : 0;
    b->buffer_length = *len;
    b->length = len;
}

static void bind_null(MYSQL_BIND *b)
{
    memset(b, 0, sizeof(*b));
    b->buffer_type = MYSQL_TYPE_NULL;
}

static void bind_u64(MYSQL_BIND *b, uint64_t *v)
{
    memset(b, 0, sizeof(*b));
    b->buffer_type = MYSQL_TYPE_LONGLONG;
    b->buffer = v;
    b->is_unsigned = 1;
}

static void bind_i64(MYSQL_BIND *b, int64_t *v)
{
    memset(b, 0, sizeof(*b));
    b->buffer_type = MYSQL_TYPE_LONGLONG;
    b->buffer = v;
}

static void bind_out_str(MYSQL_BIND *b, char *buf, size_t cap, unsigned long *len, my_bool *null)
{
    memset(b, 0, sizeof(*b));
    b->buffer_type = MYSQL_TYPE_STRING;
    b->buffer = buf;
    b->buffer_length = (unsigned long)cap;
    b->length = len;
    b->is_null = null;
}

static int begin(struct chat_store *s)
{
    int err = connect_db(s);
    if (err)
        return err;
    if (mysql_real_query(s->db, "START TRANSACTION", 17) != 0)
        return db_fail(s, "begin", mysql_errno(s->db), mysql_error(s->db));
    return 0;
}

static void rollback(struct chat_store *s)
{
    if (s->db && mysql_rollback(s->db) != 0)
        db_fail(s, "rollback", mysql_errno(s->db), mysql_error(s->db));
}

/* COMMIT. A connection lost here leaves the outcome unknown, so it is never
 * reported as success; a retry with the same client_msg_id converges. */
static int commit(struct chat_store *s)
{
    if (mysql_commit(s->db) != 0)
        return db_fail(s, "commit", mysql_errno(s->db), mysql_error(s->db));
    return 0;
}

struct chat_store *chat_store_open(const struct chat_config *cfg, int *err)
{
    struct chat_store *s = chat_xcalloc(1, sizeof(*s));
    s->cfg = cfg;
    *err = connect_db(s);
    if (*err) {
        free(s);
        return NULL;
    }
    return s;
}

void chat_store_close(struct chat_store *s)
{
    if (!s)
        return;
    disconnect(s);
    free(s);
}

static pthread_key_t local_key;
static pthread_once_t local_once = PTHREAD_ONCE_INIT;

static void local_free(void *p)
{
    chat_store_close(p);
    mysql_thread_end();
}

static void local_init(void)
{
    pthread_key_create(&local_key, local_free);
}

struct chat_store *chat_store_local(const struct chat_config *cfg)
{
    pthread_once(&local_once, local_init);
    struct chat_store *s = pthread_getspecific(local_key);
    if (!s) {
        mysql_thread_init();
        s = chat_xcalloc(1, sizeof(*s));
        s->cfg = cfg;
        pthread_setspecific(local_key, s);
    }
    return s;
}

/* ------------------------------------------------------------------------ */
/* Reads                                                                    */
/* ------------------------------------------------------------------------ */

int chat_store_ping(struct chat_store *s)
{
    int err = connect_db(s);
    if (err)
        return err;
    if (mysql_ping(s->db) != 0)
        return db_fail(s, "ping", mysql_errno(s->db), mysql_error(s->db));
    int64_t version = 0;
    MYSQL_BIND res[1];
    bind_i64(&res[0], &version);
    MYSQL_STMT *st;
    err = run(s, S_SCHEMA, NULL, res, &st);
    if (err)
        return err < 0 ? err : CHAT_EUNAVAIL;
    int rc = mysql_stmt_fetch(st);
    mysql_stmt_free_result(st);
    if (rc != 0 || version != CHAT_SCHEMA_VERSION) {
        chat_warn("mysql: schema version is %lld, this build needs %d: run chatctl migrate",
                  (long long)version, CHAT_SCHEMA_VERSION);
        return CHAT_EUNAVAIL;
    }
    return 0;
}

/* The value last warned about (1: none), so that many connections to one
 * server say it once, and a server that changes its setting is told again. */
static _Atomic int warned_flush = 1;

/* Checked on every new connection, not only at start: a chatd that started
 * before MariaDB, or a MariaDB restarted with other settings, is caught. */
static void warn_if_not_durable(struct chat_store *s)
{
    int flush = 1;
    if (chat_store_durable(s, &flush) != 0)
        return;
    if (atomic_exchange(&warned_flush, flush) != flush && flush != 1)
        chat_error("mysql: innodb_flush_log_at_trx_commit is %d, not 1: a 201 is NOT durable; "
                   "a crash or power loss can lose messages that were acknowledged",
                   flush);
}

int chat_store_durable(struct chat_store *s, int *flush)
{
    int64_t v = -1;
    MYSQL_BIND res[1];
    bind_i64(&res[0], &v);
    MYSQL_STMT *st;
    int err = run(s, S_DURABILITY, NULL, res, &st);
    if (err)
        return err < 0 ? err : CHAT_EUNAVAIL;
    mysql_stmt_fetch(st);
    mysql_stmt_free_result(st);
    *flush = (int)v;
    return 0;
}

/* Reads the body column (bound with no buffer) of the current row. */
static char *fetch_body(MYSQL_STMT *st, unsigned col, unsigned long len)
{
    char *body = chat_xmalloc(len + 1);
    if (len) {
        MYSQL_BIND b;
        unsigned long got = 0;
        memset(&b, 0, sizeof(b));
        b.buffer_type = MYSQL_TYPE_STRING;
        b.buffer = body;
        b.buffer_length = len;
        b.length = &got;
        if (mysql_stmt_fetch_column(st, &b, col, 0) != 0)
            len = 0;
    }
    body[len] = '\0';
    return body;
}

struct item_row {
    MYSQL_BIND res[10];
    uint64_t seq;
    char message_id[CHAT_MESSAGE_ID_LEN + 2];
    char from[CHAT_USER_MAX + 2];
    char to[CHAT_USER_MAX + 2];
    char chat[CHAT_CHAT_ID_LEN + 2];
    int64_t ts, delivered_ts, read_ts;
    int64_t status;
    unsigned long mid_len, from_len, to_len, body_len, chat_len;
    my_bool to_null, dts_null, body_null, chat_null, rts_null;
};

static void item_row_bind(struct item_row *r)
{
    memset(r, 0, sizeof(*r));
    bind_u64(&r->res[0], &r->seq);
    bind_out_str(&r->res[1], r->message_id, sizeof(r->message_id), &r->mid_len, NULL);
    bind_out_str(&r->res[2], r->from, sizeof(r->from), &r->from_len, NULL);
    bind_out_str(&r->res[3], r->to, sizeof(r->to), &r->to_len, &r->to_null);
    bind_out_str(&r->res[4], NULL, 0, &r->body_len, &r->body_null);
    bind_i64(&r->res[5], &r->ts);
    bind_i64(&r->res[6], &r->status);
    bind_i64(&r->res[7], &r->delivered_ts);
    r->res[7].is_null = &r->dts_null;
    bind_out_str(&r->res[8], r->chat, sizeof(r->chat), &r->chat_len, &r->chat_null);
    bind_i64(&r->res[9], &r->read_ts);
    r->res[9].is_null = &r->rts_null;
}

static void copy_str(char *dst, size_t cap, const char *src, unsigned long len)
{
    if (len >= cap)
        len = cap - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

/* Ends a string column fetched into buf (len: its length in the row). */
static void end_str(char *buf, size_t cap, unsigned long len)
{
    buf[len < cap ? len : cap - 1] = '\0';
}

/* Copies the message columns of r (and the body, column body_col of st). */
static void item_from_row(struct chat_item *it, const struct item_row *r, MYSQL_STMT *st,
                          unsigned body_col)
{
    it->seq = r->seq;
    copy_str(it->message_id, sizeof(it->message_id), r->message_id, r->mid_len);
    copy_str(it->from, sizeof(it->from), r->from, r->from_len);
    it->to[0] = it->chat[0] = '\0';
    if (!r->to_null)
        copy_str(it->to, sizeof(it->to), r->to, r->to_len);
    if (!r->chat_null)
        copy_str(it->chat, sizeof(it->chat), r->chat, r->chat_len);
    it->body = fetch_body(st, body_col, r->body_len);
    it->body_len = strlen(it->body);
    it->ts = r->ts;
    it->status = (int)r->status;
    it->delivered_ts = r->dts_null ? 0 : r->delivered_ts;
    it->read_ts = r->rts_null ? 0 : r->read_ts;
}

int chat_store_inbox(struct chat_store *s, const char *user, uint64_t after, bool pending_only,
                     unsigned limit, struct chat_items *out)
{
    memset(out, 0, sizeof(*out));
    if (limit < 1)
        limit = 1;
    if (limit > 1000)
        limit = 1000;
    /* One row more than asked tells whether there are more. */
    uint64_t lim = (uint64_t)limit + 1;
    unsigned long ulen;
    MYSQL_BIND par[3];
    bind_str(&par[0], user, &ulen);
    bind_u64(&par[1], &after);
    bind_u64(&par[2], &lim);
    struct item_row r;
    item_row_bind(&r);
    MYSQL_STMT *st;
    int err = run(s, pending_only ? S_INBOX_PENDING : S_INBOX_ALL, par, r.res, &st);
    if (err)
        return err < 0 ? err : CHAT_EUNAVAIL;
    out->v = chat_xcalloc(limit, sizeof(*out->v));
    int rc;
    while ((rc = mysql_stmt_fetch(st)) == 0 || rc == MYSQL_DATA_TRUNCATED) {
        if (out->n == limit) {
            out->more = true;
            break;
        }
        item_from_row(&out->v[out->n++], &r, st, 4);
    }
    mysql_stmt_free_result(st);
    if (rc == 1) {
        chat_items_cleanup(out);
        return db_fail(s, "inbox fetch", mysql_stmt_errno(st), mysql_stmt_error(st));
    }
    return 0;
}

int chat_store_last_seq(struct chat_store *s, const char *user, uint64_t *seq)
{
    unsigned long ulen;
    MYSQL_BIND par[1], res[1];
    bind_str(&par[0], user, &ulen);
    *seq = 0;
    uint64_t v = 0;
    bind_u64(&res[0], &v);
    MYSQL_STMT *st;
    int err = run(s, S_LAST_SEQ, par, res, &st);
    if (err)
        return err < 0 ? err : CHAT_EUNAVAIL;
    if (mysql_stmt_fetch(st) == 0)
        *seq = v;
    mysql_stmt_free_result(st);
    return 0;
}

/* Binds the result columns of S_MSG / S_HISTORY (id, message_id, sender,
 * recipient, body, ts, chat_id) onto r, with the pk into *pk. */
static void msg_row_bind(struct item_row *r, MYSQL_BIND res[7], uint64_t *pk)
{
    item_row_bind(r);
    bind_u64(&res[0], pk);
    res[1] = r->res[1];
    res[2] = r->res[2];
    res[3] = r->res[3];
    res[4] = r->res[4];
    res[5] = r->res[5];
    res[6] = r->res[8];
}

int chat_store_message(struct chat_store *s, const char *message_id, struct chat_item *msg,
                       struct chat_recipient **rcpts, size_t *nrcpts)
{
    memset(msg, 0, sizeof(*msg));
    *rcpts = NULL;
    *nrcpts = 0;
    unsigned long idlen;
    MYSQL_BIND par[1];
    bind_str(&par[0], message_id, &idlen);
    struct item_row r;
    uint64_t pk = 0;
    MYSQL_BIND res[7];
    msg_row_bind(&r, res, &pk);
    MYSQL_STMT *st;
    int err = run(s, S_MSG, par, res, &st);
    if (err)
        return err < 0 ? err : CHAT_EUNAVAIL;
    int rc = mysql_stmt_fetch(st);
    if (rc != 0 && rc != MYSQL_DATA_TRUNCATED) {
        mysql_stmt_free_result(st);
        return rc == MYSQL_NO_DATA ? CHAT_ENOTFOUND : CHAT_EUNAVAIL;
    }
    item_from_row(msg, &r, st, 4);
    msg->status = CHAT_STATUS_PENDING;
    mysql_stmt_free_result(st);

    MYSQL_BIND par2[1], res2[4];
    bind_u64(&par2[0], &pk);
    char user[CHAT_USER_MAX + 2];
    unsigned long ulen;
    int64_t status = 0, dts = 0, rts = 0;
    my_bool dts_null = 0, rts_null = 0;
    bind_out_str(&res2[0], user, sizeof(user), &ulen, NULL);
    bind_i64(&res2[1], &status);
    bind_i64(&res2[2], &dts);
    res2[2].is_null = &dts_null;
    bind_i64(&res2[3], &rts);
    res2[3].is_null = &rts_null;
    err = run(s, S_MSG_RCPT, par2, res2, &st);
    if (err) {
        chat_item_cleanup(msg);
        return err < 0 ? err : CHAT_EUNAVAIL;
    }
    size_t cap = mysql_stmt_num_rows(st) + 1;
    *rcpts = chat_xcalloc(cap, sizeof(**rcpts));
    while (mysql_stmt_fetch(st) == 0 && *nrcpts < cap) {
        struct chat_recipient *rc1 = &(*rcpts)[(*nrcpts)++];
        copy_str(rc1->user, sizeof(rc1->user), user, ulen);
        rc1->known = true;
        rc1->status = (int)status;
        rc1->delivered_ts = dts_null ? 0 : dts;
        rc1->read_ts = rts_null ? 0 : rts;
    }
    mysql_stmt_free_result(st);
    if (*nrcpts == 0 && msg->to[0]) {
        /* The row is gone: deleted after delivery (policy delete). */
        struct chat_recipient *rc1 = &(*rcpts)[(*nrcpts)++];
        snprintf(rc1->user, sizeof(rc1->user), "%s", msg->to);
        rc1->status = CHAT_STATUS_DELIVERED;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Writes                                                                   */
/* ------------------------------------------------------------------------ */

void chat_conv_key_direct(char out[CHAT_CONV_KEY_MAX + 1], const char *a, const char *b)
{
    if (strcmp(a, b) > 0) {
        const char *t = a;
        a = b;
        b = t;
    }
    snprintf(out, CHAT_CONV_KEY_MAX + 1, "d:%s|%s", a, b);
}

void chat_conv_key_group(char out[CHAT_CONV_KEY_MAX + 1], const char *chat_id)
{
    snprintf(out, CHAT_CONV_KEY_MAX + 1, "c:%s", chat_id);
}

/* Looks up an earlier send with the same client_msg_id. Returns 0 and fills
 * out when found, CHAT_ENOTFOUND, CHAT_ECONFLICT when it differs. */
static int find_client_msg(struct chat_store *s, const struct chat_send *in, struct chat_sent *out)
{
    unsigned long l1, l2;
    MYSQL_BIND par[2];
    bind_str(&par[0], in->from, &l1);
    bind_str(&par[1], in->client_msg_id, &l2);
    struct item_row r;
    item_row_bind(&r);
    MYSQL_BIND res[5] = {r.res[1], r.res[3], r.res[4], r.res[5], r.res[8]};
    MYSQL_STMT *st;
    int err = run(s, S_FIND_CLIENT, par, res, &st);
    if (err)
        return err < 0 ? err : CHAT_EUNAVAIL;
    int rc = mysql_stmt_fetch(st);
    if (rc != 0 && rc != MYSQL_DATA_TRUNCATED) {
        mysql_stmt_free_result(st);
        return rc == MYSQL_NO_DATA ? CHAT_ENOTFOUND : CHAT_EUNAVAIL;
    }
    struct chat_item *it = &out->item;
    memset(it, 0, sizeof(*it));
    snprintf(r.from, sizeof(r.from), "%s", in->from);
    r.from_len = strlen(r.from);
    item_from_row(it, &r, st, 2);
    it->seq = 0;
    mysql_stmt_free_result(st);
    out->created = false;
    const char *to = in->to ? in->to : "", *chat = in->chat ? in->chat : "";
    if (strcmp(it->to, to) != 0 || strcmp(it->chat, chat) != 0 || it->body_len != in->body_len ||
        memcmp(it->body, in->body, in->body_len) != 0) {
        chat_item_cleanup(it);
        return CHAT_ECONFLICT;
    }
    return 0;
}

/* The members of a group send, sorted: the lock order of every transaction.
 * The member rows stay share-locked until COMMIT. */
static int group_targets(struct chat_store *s, const struct chat_send *in, struct chat_sent *out)
{
    unsigned long clen;
    MYSQL_BIND par[1], res[1];
    bind_str(&par[0], in->chat, &clen);
    char user[CHAT_USER_MAX + 2];
    unsigned long ulen;
    bind_out_str(&res[0], user, sizeof(user), &ulen, NULL);
    MYSQL_STMT *st;
    int err = run(s, S_MEMBERS_SHARE, par, res, &st);
    if (err)
        return err;
    size_t rows = mysql_stmt_num_rows(st);
    out->targets = chat_xcalloc(rows + 1, sizeof(*out->targets));
    bool member = false;
    while (mysql_stmt_fetch(st) == 0) {
        end_str(user, sizeof(user), ulen);
        if (strcmp(user, in->from) == 0) {
            member = true;
            continue; /* the sender gets no inbox row of its own message */
        }
        copy_str(out->targets[out->ntargets++].user, sizeof(out->targets[0].user), user,
                 strlen(user));
    }
    mysql_stmt_free_result(st);
    if (rows == 0)
        return CHAT_ENOTFOUND;
    if (!member)
        return CHAT_EFORBIDDEN;
    return 0;
}

/* A refusal, which comes before a send writes anything. */
static bool send_refused(int err)
{
    return err == CHAT_EBLOCKED || err == CHAT_ENOTFOUND || err == CHAT_EFORBIDDEN;
}

/* A send on its way into a transaction (alone, or with others in a batch). */
struct send_req {
    struct send_req *next;
    const struct chat_send *in;
    struct chat_sent *out;
    int err; /* 0, or why this send was refused or failed */
    bool done;
    pthread_cond_t wake; /* its sender waits on it in a queue */
    char conv[CHAT_CONV_KEY_MAX + 1];
    uint64_t pk; /* messages.id of its row */
};

/* Rows for a statement that reads them with JSON_TABLE: an array of
 * arrays, one value per column. Numbers go as their digits (cJSON would
 * print them through a double). */
static cJSON *json_row(cJSON *rows)
{
    cJSON *row = cJSON_CreateArray();
    cJSON_AddItemToArray(rows, row);
    return row;
}

static void json_str(cJSON *row, const char *v)
{
    cJSON_AddItemToArray(row, v ? cJSON_CreateString(v) : cJSON_CreateNull());
}

static void json_i64(cJSON *row, int64_t v)
{
    char text[24];
    snprintf(text, sizeof(text), "%lld", (long long)v);
    cJSON_AddItemToArray(row, cJSON_CreateRaw(text));
}

static void json_u64(cJSON *row, uint64_t v)
{
    char text[24];
    snprintf(text, sizeof(text), "%llu", (unsigned long long)v);
    cJSON_AddItemToArray(row, cJSON_CreateRaw(text));
}

/* A message's body, which need not end in a NUL. */
static void json_body(cJSON *row, const struct chat_send *in)
{
    char *body = chat_xstrndup(in->body, in->body_len);
    json_str(row, body);
    free(body);
}

/* Runs statement id with the rows as its first parameter and more (if
 * given) after them; frees rows. As run(). */
static int run_rows(struct chat_store *s, enum stmt_id id, cJSON *rows, MYSQL_BIND *more,
                    MYSQL_BIND *results, MYSQL_STMT **out)
{
    char *json = chat_json_print(rows);
    cJSON_Delete(rows);
    unsigned long len;
    MYSQL_BIND par[2];
    bind_str(&par[0], json, &len);
    if (more)
        par[1] = *more;
    int err = run(s, id, par, results, out);
    free(json);
    return err;
}

/* The group messages of w, RETURNING their ids into each send's pk. */
static int insert_messages(struct chat_store *s, struct send_req **w, size_t n)
{
    cJSON *rows = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++) {
        const struct chat_send *in = w[i]->in;
        cJSON *row = json_row(rows);
        json_str(row, w[i]->out->item.message_id);
        json_str(row, in->from);
        json_str(row, in->client_msg_id);
        json_body(row, in);
        json_i64(row, w[i]->out->item.ts);
        json_str(row, in->chat);
        json_str(row, w[i]->conv);
    }
    uint64_t pk;
    char mid[CHAT_MESSAGE_ID_LEN + 2];
    unsigned long mlen;
    MYSQL_BIND res[2];
    bind_u64(&res[0], &pk);
    bind_out_str(&res[1], mid, sizeof(mid), &mlen, NULL);
    MYSQL_STMT *st;
    int err = run_rows(s, S_MSGS, rows, NULL, res, &st);
    if (err)
        return err;
    size_t got = 0;
    while (mysql_stmt_fetch(st) == 0) {
        end_str(mid, sizeof(mid), mlen);
        for (size_t j = 0; j < n; j++)
            if (w[j]->pk == 0 && strcmp(w[j]->out->item.message_id, mid) == 0) {
                w[j]->pk = pk;
                got++;
                break;
            }
    }
    mysql_stmt_free_result(st);
    if (got != n)
        return db_fail(s, "insert messages", 0, "RETURNING did not name every row");
    return 0;
}

/* A recipient's user_seq row and the seqs the batch takes from it. */
struct seq_take {
    const char *user;
    uint64_t n;    /* rows this batch writes for the user */
    uint64_t next; /* the next seq to hand out; 0 until read back */
};

static int cmp_seq_take(const void *a, const void *b)
{
    return strcmp(((const struct seq_take *)a)->user, ((const struct seq_take *)b)->user);
}

/* Advances each recipient's last_seq by its rows in the batch (t sorted:
 * the lock order of every send) and takes the new values back. */
static int take_seqs(struct chat_store *s, struct seq_take *t, size_t n)
{
    cJSON *rows = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++) {
        cJSON *row = json_row(rows);
        json_str(row, t[i].user);
        json_u64(row, t[i].n);
    }
    char user[CHAT_USER_MAX + 2];
    unsigned long ulen;
    uint64_t last;
    MYSQL_BIND res[2];
    bind_out_str(&res[0], user, sizeof(user), &ulen, NULL);
    bind_u64(&res[1], &last);
    MYSQL_STMT *st;
    int err = run_rows(s, S_SEQS, rows, NULL, res, &st);
    if (err)
        return err;
    while (mysql_stmt_fetch(st) == 0) {
        end_str(user, sizeof(user), ulen);
        struct seq_take key = {.user = user};
        struct seq_take *hit = bsearch(&key, t, n, sizeof(*t), cmp_seq_take);
        if (hit)
            hit->next = last - hit->n + 1;
    }
    mysql_stmt_free_result(st);
    for (size_t i = 0; i < n; i++)
        if (t[i].next == 0)
            return db_fail(s, "user_seq", 0, "RETURNING did not name every recipient");
    return 0;
}

/* A conversations row a batch adds to (merged per user and conversation). */
struct conv_row {
    const char *user;
    const char *conv;
    uint64_t pk;
    int64_t ts;
    uint64_t unread;
};

static int cmp_conv_row(const void *a, const void *b)
{
    const struct conv_row *x = a, *y = b;
    int c = strcmp(x->user, y->user);
    return c ? c : strcmp(x->conv, y->conv);
}

/* Upserts the rows in (user, conversation) order, the lock order of every
 * transaction that touches them. */
static int upsert_convs(struct chat_store *s, struct conv_row *c, size_t n)
{
    qsort(c, n, sizeof(*c), cmp_conv_row);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m > 0 && cmp_conv_row(&c[m - 1], &c[i]) == 0) {
            struct conv_row *d = &c[m - 1];
            d->pk = d->pk > c[i].pk ? d->pk : c[i].pk;
            d->ts = d->ts > c[i].ts ? d->ts : c[i].ts;
            d->unread += c[i].unread;
        } else {
            c[m++] = c[i];
        }
    }
    cJSON *rows = cJSON_CreateArray();
    for (size_t i = 0; i < m; i++) {
        cJSON *row = json_row(rows);
        json_str(row, c[i].user);
        json_str(row, c[i].conv);
        json_u64(row, c[i].pk);
        json_i64(row, c[i].ts);
        json_u64(row, c[i].unread);
    }
    MYSQL_STMT *st;
    return run_rows(s, S_CONVS, rows, NULL, NULL, &st);
}

/* The rows of the group sends of reqs, in the open transaction, with one
 * statement per table for all of them. A send refused before anything of
 * it is written (no such group, not a member) gets its reason in its err
 * and the others go on. Returns 0, a MySQL errno (> 0) the caller may
 * retry, or a negative chat_err (CHAT_EUNAVAIL). */
static int write_groups(struct chat_store *s, struct send_req **reqs, size_t n)
{
    struct send_req **w = chat_xcalloc(n, sizeof(*w));
    struct seq_take *takes = NULL;
    struct conv_row *convs = NULL;
    size_t nw = 0, ntargets = 0;
    int err = 0;
    for (size_t i = 0; !err && i < n; i++) {
        struct send_req *r = reqs[i];
        const struct chat_send *in = r->in;
        struct chat_sent *out = r->out;
        free(out->targets);
        out->targets = NULL;
        out->ntargets = 0;
        r->err = 0;
        r->pk = 0;
        err = group_targets(s, in, out);
        if (send_refused(err)) {
            r->err = err;
            err = 0;
            continue;
        }
        chat_conv_key_group(r->conv, in->chat);
        ntargets += out->ntargets;
        w[nw++] = r;
    }
    if (err || nw == 0)
        goto out;
    err = insert_messages(s, w, nw);
    if (err)
        goto out;

    takes = chat_xcalloc(ntargets, sizeof(*takes));
    convs = chat_xcalloc(ntargets + nw, sizeof(*convs));
    size_t nt = 0, nc = 0;
    for (size_t i = 0; i < nw; i++)
        for (size_t j = 0; j < w[i]->out->ntargets; j++)
            takes[nt++] = (struct seq_take){.user = w[i]->out->targets[j].user, .n = 1};
    qsort(takes, nt, sizeof(*takes), cmp_seq_take);
    size_t nu = 0;
    for (size_t i = 0; i < nt; i++) {
        if (nu > 0 && strcmp(takes[nu - 1].user, takes[i].user) == 0)
            takes[nu - 1].n++;
        else
            takes[nu++] = takes[i];
    }
    err = take_seqs(s, takes, nu);
    if (err)
        goto out;
    cJSON *rows = cJSON_CreateArray();
    for (size_t i = 0; i < nw; i++) {
        struct send_req *r = w[i];
        struct chat_sent *out = r->out;
        convs[nc++] = (struct conv_row){r->in->from, r->conv, r->pk, out->item.ts, 0};
        for (size_t j = 0; j < out->ntargets; j++) {
            struct chat_target *t = &out->targets[j];
            struct seq_take key = {.user = t->user};
            struct seq_take *take = bsearch(&key, takes, nu, sizeof(*takes), cmp_seq_take);
            t->seq = take->next++;
            cJSON *row = json_row(rows);
            json_str(row, t->user);
            json_u64(row, t->seq);
            json_u64(row, r->pk);
            if (s->cfg->push_url[0])
                json_i64(row, out->item.ts + (int64_t)s->cfg->push_after * 1000);
            else
                json_str(row, NULL);
            convs[nc++] = (struct conv_row){t->user, r->conv, r->pk, out->item.ts, 1};
        }
        out->item.seq = 0;
    }
    MYSQL_STMT *st;
    err = run_rows(s, S_INBOXES, rows, NULL, NULL, &st);
    if (!err)
        err = upsert_convs(s, convs, nc);
out:
    free(w);
    free(takes);
    free(convs);
    return err;
}

/* The argument of chat_send_direct: a JSON array with one array per send,
 * [message_id, sender, recipient, client_msg_id or null, body, ts,
 * conv_key]. Also sets each send's one target and conversation key. */
static cJSON *direct_batch(struct send_req **reqs, size_t n)
{
    cJSON *rows = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++) {
        struct send_req *r = reqs[i];
        const struct chat_send *in = r->in;
        struct chat_sent *out = r->out;
        free(out->targets);
        out->targets = chat_xcalloc(1, sizeof(*out->targets));
        snprintf(out->targets[0].user, sizeof(out->targets[0].user), "%s", in->to);
        out->ntargets = 1;
        r->err = 0;
        r->pk = 0;
        chat_conv_key_direct(r->conv, in->from, in->to);
        cJSON *row = json_row(rows);
        json_str(row, out->item.message_id);
        json_str(row, in->from);
        json_str(row, in->to);
        json_str(row, in->client_msg_id);
        json_body(row, in);
        json_i64(row, out->item.ts);
        json_str(row, r->conv);
    }
    return rows;
}

/* The direct sends reqs in one transaction: one call of chat_send_direct
 * writes them all (sql/004_send_direct.sql), then COMMIT: two round trips
 * to MariaDB whatever the size of the batch. A send whose recipient blocks
 * its sender is refused (CHAT_EBLOCKED) and the others go on. Returns 0
 * once committed, a MySQL errno (> 0) the caller may retry (nothing was
 * committed), or a negative chat_err (CHAT_EUNAVAIL); *at_commit is set
 * when it was the COMMIT that failed (the outcome is then unknown). */
static int send_directs(struct chat_store *s, struct send_req **reqs, size_t n, bool *at_commit)
{
    int64_t push_after = (int64_t)s->cfg->push_after * 1000;
    MYSQL_BIND push;
    if (s->cfg->push_url[0])
        bind_i64(&push, &push_after);
    else
        bind_null(&push);
    int64_t place;
    uint64_t pk, seq;
    MYSQL_BIND res[3];
    bind_i64(&res[0], &place);
    bind_u64(&res[1], &pk);
    bind_u64(&res[2], &seq);
    MYSQL_STMT *st;
    int err = run_rows(s, S_SEND_DIRECT, direct_batch(reqs, n), &push, res, &st);
    if (err) {
        rollback(s); /* the procedure rolled back already, unless it never started */
        return err;
    }
    int rc;
    while ((rc = mysql_stmt_fetch(st)) == 0 || rc == MYSQL_DATA_TRUNCATED) {
        if (place < 1 || (size_t)place > n)
            continue;
        struct send_req *r = reqs[place - 1];
        r->pk = pk;
        r->out->targets[0].seq = seq;
        r->out->item.seq = seq;
    }
    mysql_stmt_free_result(st);
    /* A CALL ends with a status of its own after its rows. */
    if (rc != 1)
        while ((rc = mysql_stmt_next_result(st)) == 0)
            mysql_stmt_free_result(st);
    if (rc > 0) {
        /* Not committed (the COMMIT is ours): dropping the connection rolls
         * it back. The statement goes with it, so its error is read first. */
        char why[256];
        unsigned e = mysql_stmt_errno(st);
        snprintf(why, sizeof(why), "%s", mysql_stmt_error(st));
        return db_fail(s, "chat_send_direct", e, why);
    }
    for (size_t i = 0; i < n; i++)
        if (reqs[i]->pk == 0)
            reqs[i]->err = CHAT_EBLOCKED;
    *at_commit = true;
    return commit(s);
}

/* One attempt at writing reqs, all direct or all group sends: 0 when it
 * committed (each send's err tells whether it was refused), or why not.
 * *at_commit tells a failed COMMIT (the outcome is unknown) from a failure
 * before it (nothing was committed). */
static int send_once(struct chat_store *s, struct send_req **reqs, size_t n, bool *at_commit)
{
    *at_commit = false;
    if (reqs[0]->in->to)
        return send_directs(s, reqs, n, at_commit);
    int err = begin(s);
    if (err)
        return err;
    err = write_groups(s, reqs, n);
    if (err) {
        rollback(s);
        return err;
    }
    *at_commit = true;
    return commit(s);
}

/* What a successful send hands back besides the rows' ids. */
static void send_done(const struct chat_send *in, struct chat_sent *out)
{
    out->item.body = chat_xstrndup(in->body, in->body_len);
    out->item.body_len = in->body_len;
    out->created = true;
}

/* A send in a transaction of its own, retried after a lock conflict. */
static int send_alone(struct chat_store *s, const struct chat_send *in, struct chat_sent *out)
{
    struct send_req req = {.in = in, .out = out}, *r = &req;
    for (int attempt = 0; attempt < 3; attempt++) {
        bool at_commit;
        int err = send_once(s, &r, 1, &at_commit);
        if (err == 0 && req.err == 0) {
            send_done(in, out);
            return 0;
        }
        if (err == 0) {
            /* Refused: nothing was written. */
            chat_sent_cleanup(out);
            return req.err;
        }
        if (err == ER_DUP_ENTRY && in->client_msg_id) {
            /* A concurrent send with the same client_msg_id won the race. */
            chat_sent_cleanup(out);
            return find_client_msg(s, in, out);
        }
        if (err != ER_LOCK_DEADLOCK && err != ER_LOCK_WAIT_TIMEOUT) {
            chat_sent_cleanup(out);
            return err < 0 ? err : CHAT_EUNAVAIL;
        }
        chat_info("mysql: send retried after lock conflict %d", err);
    }
    chat_sent_cleanup(out);
    return CHAT_EUNAVAIL;
}

/* Group commit. Sends that arrive while another thread's batch is being
 * written queue up; the next thread to find none being written takes the
 * queue (up to [mysql] send_batch) and writes it on its own connection:
 * the direct sends with one call of chat_send_direct and its COMMIT, the
 * group sends with one statement per table and theirs. Every sender still
 * answers only after the COMMIT that holds its rows. A finished batch wakes
 * its own senders and the first one queued (the next writer), not every
 * waiting thread. */
#define BATCH_BYTES (4 << 20) /* bodies a batch holds at most: far below max_allowed_packet */
static struct {
    pthread_mutex_t lock;
    struct send_req *head, **tail;
    bool busy; /* a thread is writing a batch */
} batcher = {PTHREAD_MUTEX_INITIALIZER, NULL, NULL, false};

/* The order of a batch: direct sends first, then group sends; each by
 * recipient (or group), as in one send. */
static int cmp_send_req(const void *a, const void *b)
{
    const struct send_req *x = *(struct send_req *const *)a, *y = *(struct send_req *const *)b;
    if (!x->in->to != !y->in->to)
        return x->in->to ? -1 : 1;
    return strcmp(x->in->to ? x->in->to : x->in->chat, y->in->to ? y->in->to : y->in->chat);
}

/* Sends of one kind (all direct or all group) in one transaction. */
static void send_part(struct chat_store *s, struct send_req **reqs, size_t n)
{
    if (n == 1) {
        reqs[0]->err = send_alone(s, reqs[0]->in, reqs[0]->out);
        return;
    }
    bool at_commit;
    int err = send_once(s, reqs, n, &at_commit);
    if (err == 0) {
        for (size_t i = 0; i < n; i++) {
            struct send_req *r = reqs[i];
            if (r->err)
                chat_sent_cleanup(r->out);
            else
                send_done(r->in, r->out);
        }
        return;
    }
    if (at_commit) {
        /* The COMMIT failed: as for a send alone, no 201 (a retry with the
         * same client_msg_id converges). */
        for (size_t i = 0; i < n; i++) {
            chat_sent_cleanup(reqs[i]->out);
            reqs[i]->err = CHAT_EUNAVAIL;
        }
        return;
    }
    /* Before COMMIT (a lock conflict, a client_msg_id raced, a connection
     * lost): nothing was committed; each send goes alone. */
    chat_debug("mysql: a batch of %zu sends failed (%d); sending them one by one", n, err);
    chat_metric_inc(send_batches_split);
    for (size_t i = 0; i < n; i++) {
        struct send_req *r = reqs[i];
        chat_sent_cleanup(r->out);
        r->err = send_alone(s, r->in, r->out);
    }
}

/* A batch: its direct sends in one transaction, its group sends in another. */
static void send_batch(struct chat_store *s, struct send_req **reqs, size_t n)
{
    qsort(reqs, n, sizeof(*reqs), cmp_send_req);
    size_t nd = 0;
    while (nd < n && reqs[nd]->in->to)
        nd++;
    if (nd > 0)
        send_part(s, reqs, nd);
    if (nd < n)
        send_part(s, reqs + nd, n - nd);
}

static int send_batched(struct chat_store *s, const struct chat_send *in, struct chat_sent *out)
{
    size_t cap = (size_t)s->cfg->send_batch;
    struct send_req me = {.in = in, .out = out};
    struct send_req **reqs = chat_xcalloc(cap, sizeof(*reqs));
    pthread_cond_init(&me.wake, NULL);
    pthread_mutex_lock(&batcher.lock);
    if (!batcher.tail)
        batcher.tail = &batcher.head;
    *batcher.tail = &me;
    batcher.tail = &me.next;
    while (!me.done) {
        if (batcher.busy) {
            pthread_cond_wait(&me.wake, &batcher.lock);
            continue;
        }
        batcher.busy = true;
        size_t n = 0;
        size_t bytes = 0;
        while (batcher.head && n < cap &&
               (n == 0 || bytes + batcher.head->in->body_len <= BATCH_BYTES)) {
            bytes += batcher.head->in->body_len;
            reqs[n++] = batcher.head;
            batcher.head = batcher.head->next;
        }
        if (!batcher.head)
            batcher.tail = &batcher.head;
        pthread_mutex_unlock(&batcher.lock);
        send_batch(s, reqs, n);
        chat_metric_inc(send_batches);
        atomic_fetch_add(&chat_metrics.send_batched, (long)n);
        pthread_mutex_lock(&batcher.lock);
        for (size_t i = 0; i < n; i++) {
            reqs[i]->done = true;
            if (reqs[i] != &me)
                pthread_cond_signal(&reqs[i]->wake);
        }
        batcher.busy = false;
        if (batcher.head && batcher.head != &me)
            pthread_cond_signal(&batcher.head->wake);
    }
    pthread_mutex_unlock(&batcher.lock);
    pthread_cond_destroy(&me.wake);
    free(reqs);
    return me.err;
}

int chat_store_send(struct chat_store *s, const struct chat_send *in, struct chat_sent *out)
{
    memset(out, 0, sizeof(*out));
    struct chat_item *it = &out->item;
    if (in->client_msg_id) {
        int err = find_client_msg(s, in, out);
        if (err != CHAT_ENOTFOUND)
            return err;
    }
    it->ts = chat_now_ms();
    chat_id_new(it->message_id, it->ts);
    snprintf(it->from, sizeof(it->from), "%s", in->from);
    snprintf(it->to, sizeof(it->to), "%s", in->to ? in->to : "");
    snprintf(it->chat, sizeof(it->chat), "%s", in->chat ? in->chat : "");
    it->status = CHAT_STATUS_PENDING;
    if (s->cfg->send_batch > 1)
        return send_batched(s, in, out);
    return send_alone(s, in, out);
}

void chat_sent_cleanup(struct chat_sent *sent)
{
    chat_item_cleanup(&sent->item);
    free(sent->targets);
    sent->targets = NULL;
    sent->ntargets = 0;
}

/* ------------------------------------------------------------------------ */
/* Groups                                                                   */
/* ------------------------------------------------------------------------ */

void chat_group_cleanup(struct chat_group *g)
{
    free(g->members);
    g->members = NULL;
    g->nmembers = 0;
}

/* Reads the group row (locked FOR UPDATE when lock) into g. */
static int group_row(struct chat_store *s, const char *id, bool lock, struct chat_group *g)
{
    memset(g, 0, sizeof(*g));
    unsigned long ilen, nlen, olen;
    MYSQL_BIND par[1], res[3];
    bind_str(&par[0], id, &ilen);
    bind_out_str(&res[0], g->name, sizeof(g->name), &nlen, NULL);
    bind_out_str(&res[1], g->owner, sizeof(g->owner), &olen, NULL);
    bind_i64(&res[2], &g->created_ts);
    MYSQL_STMT *st;
    int err = run(s, lock ? S_GROUP_LOCK : S_GROUP_GET, par, res, &st);
    if (err)
        return err;
    int rc = mysql_stmt_fetch(st);
    mysql_stmt_free_result(st);
    if (rc != 0 && rc != MYSQL_DATA_TRUNCATED)
        return rc == MYSQL_NO_DATA ? CHAT_ENOTFOUND : CHAT_EUNAVAIL;
    g->name[nlen < sizeof(g->name) ? nlen : sizeof(g->name) - 1] = '\0';
    g->owner[olen < sizeof(g->owner) ? olen : sizeof(g->owner) - 1] = '\0';
    snprintf(g->id, sizeof(g->id), "%s", id);
    return 0;
}

static int group_members(struct chat_store *s, struct chat_group *g)
{
    unsigned long ilen, ulen;
    char user[CHAT_USER_MAX + 2];
    MYSQL_BIND par[1], res[1];
    bind_str(&par[0], g->id, &ilen);
    bind_out_str(&res[0], user, sizeof(user), &ulen, NULL);
    MYSQL_STMT *st;
    int err = run(s, S_MEMBERS, par, res, &st);
    if (err)
        return err;
    size_t rows = mysql_stmt_num_rows(st);
    g->members = chat_xcalloc(rows + 1, sizeof(*g->members));
    g->nmembers = 0;
    while (g->nmembers < rows && mysql_stmt_fetch(st) == 0)
        copy_str(g->members[g->nmembers++], sizeof(g->members[0]), user, ulen);
    mysql_stmt_free_result(st);
    return 0;
}

static int member_add(struct chat_store *s, const char *id, const char *user, int64_t now)
{
    unsigned long l1, l2;
    MYSQL_BIND par[3];
    bind_str(&par[0], id, &l1);
    bind_str(&par[1], user, &l2);
    bind_i64(&par[2], &now);
    MYSQL_STMT *st;
    return run(s, S_MEMBER_INS, par, NULL, &st);
}

static int member_count(struct chat_store *s, const char *id, uint64_t *count)
{
    unsigned long ilen;
    MYSQL_BIND par[1], res[1];
    bind_str(&par[0], id, &ilen);
    bind_u64(&res[0], count);
    MYSQL_STMT *st;
    int err = run(s, S_MEMBER_COUNT, par, res, &st);
    if (err)
        return err;
    *count = 0;
    mysql_stmt_fetch(st);
    mysql_stmt_free_result(st);
    return 0;
}

/* Ends a group transaction: commits, then reads the group for out. */
static int group_finish(struct chat_store *s, int err, const char *id, struct chat_group *out)
{
    if (err) {
        rollback(s);
        return err < 0 ? err : CHAT_EUNAVAIL;
    }
    err = commit(s);
    if (err)
        return err;
    err = group_row(s, id, false, out);
    if (err == 0)
        err = group_members(s, out);
    return err < 0 ? err : (err ? CHAT_EUNAVAIL : 0);
}

int chat_store_group_create(struct chat_store *s, const char *owner, const char *name,
                            const char *const *members, size_t n, struct chat_group *out)
{
    memset(out, 0, sizeof(*out));
    char id[CHAT_CHAT_ID_LEN + 1];
    int64_t now = chat_now_ms();
    chat_id_new(id, now);
    int err = begin(s);
    if (err)
        return err;
    unsigned long l[3];
    MYSQL_BIND par[4];
    bind_str(&par[0], id, &l[0]);
    bind_str(&par[1], name, &l[1]);
    bind_str(&par[2], owner, &l[2]);
    bind_i64(&par[3], &now);
    MYSQL_STMT *st;
    err = run(s, S_GROUP_INS, par, NULL, &st);
    if (!err)
        err = member_add(s, id, owner, now);
    for (size_t i = 0; !err && i < n; i++)
        err = member_add(s, id, members[i], now);
    uint64_t count = 0;
    if (!err && (err = member_count(s, id, &count)) == 0 && count > CHAT_GROUP_MAX)
        err = CHAT_EINVAL;
    return group_finish(s, err, id, out);
}

int chat_store_group_get(struct chat_store *s, const char *id, struct chat_group *out)
{
    int err = group_row(s, id, false, out);
    if (err == 0)
        err = group_members(s, out);
    if (err)
        chat_group_cleanup(out);
    return err < 0 ? err : (err ? CHAT_EUNAVAIL : 0);
}

int chat_store_group_list(struct chat_store *s, const char *user, struct chat_group **out,
                          size_t *n)
{
    *out = NULL;
    *n = 0;
    struct chat_group g;
    memset(&g, 0, sizeof(g));
    unsigned long ulen, ilen, nlen, olen;
    uint64_t count = 0;
    MYSQL_BIND par[1], res[5];
    bind_str(&par[0], user, &ulen);
    bind_out_str(&res[0], g.id, sizeof(g.id), &ilen, NULL);
    bind_out_str(&res[1], g.name, sizeof(g.name), &nlen, NULL);
    bind_out_str(&res[2], g.owner, sizeof(g.owner), &olen, NULL);
    bind_i64(&res[3], &g.created_ts);
    bind_u64(&res[4], &count);
    MYSQL_STMT *st;
    int err = run(s, S_GROUP_LIST, par, res, &st);
    if (err)
        return err < 0 ? err : CHAT_EUNAVAIL;
    size_t rows = mysql_stmt_num_rows(st);
    *out = chat_xcalloc(rows + 1, sizeof(**out));
    int rc;
    while (*n < rows && ((rc = mysql_stmt_fetch(st)) == 0 || rc == MYSQL_DATA_TRUNCATED)) {
        struct chat_group *o = &(*out)[(*n)++];
        *o = g;
        o->id[ilen < sizeof(o->id) ? ilen : sizeof(o->id) - 1] = '\0';
        o->name[nlen < sizeof(o->name) ? nlen : sizeof(o->name) - 1] = '\0';
        o->owner[olen < sizeof(o->owner) ? olen : sizeof(o->owner) - 1] = '\0';
        o->nmembers = (size_t)count;
    }
    mysql_stmt_free_result(st);
    return 0;
}

int chat_store_group_change(struct chat_store *s, const char *id, const char *actor,
                            const char *const *add, size_t nadd, const char *const *remove,
                            size_t nremove, struct chat_group *out)
{
    memset(out, 0, sizeof(*out));
    int err = begin(s);
    if (err)
        return err;
    struct chat_group g;
    bool is_member = false;
    err = group_row(s, id, true, &g);
    if (!err)
        err = chat_store_group_member(s, id, actor, &is_member);
    if (!err && !is_member)
        err = CHAT_EFORBIDDEN;
    bool owner = !err && strcmp(g.owner, actor) == 0;
    if (!err && !owner && nadd > 0)
        err = CHAT_EFORBIDDEN;
    for (size_t i = 0; !err && i < nremove; i++) {
        if (!owner && strcmp(remove[i], actor) != 0)
            err = CHAT_EFORBIDDEN;
        else if (strcmp(remove[i], g.owner) == 0)
            err = CHAT_ECONFLICT; /* a group always has its owner */
    }
    int64_t now = chat_now_ms();
    for (size_t i = 0; !err && i < nadd; i++)
        err = member_add(s, id, add[i], now);
    for (size_t i = 0; !err && i < nremove; i++) {
        unsigned long l1, l2;
        MYSQL_BIND par[2];
        bind_str(&par[0], id, &l1);
        bind_str(&par[1], remove[i], &l2);
        MYSQL_STMT *st;
        err = run(s, S_MEMBER_DEL, par, NULL, &st);
    }
    uint64_t count = 0;
    if (!err && nadd && (err = member_count(s, id, &count)) == 0 && count > CHAT_GROUP_MAX)
        err = CHAT_EINVAL;
    return group_finish(s, err, id, out);
}

int chat_store_group_member(struct chat_store *s, const char *id, const char *user, bool *is_member)
{
    int64_t joined;
    return chat_store_group_joined(s, id, user, is_member, &joined);
}

int chat_store_group_joined(struct chat_store *s, const char *id, const char *user, bool *is_member,
                            int64_t *joined_ts)
{
    *is_member = false;
    *joined_ts = 0;
    unsigned long l1, l2;
    MYSQL_BIND par[2], res[1];
    bind_str(&par[0], id, &l1);
    bind_str(&par[1], user, &l2);
    bind_i64(&res[0], joined_ts);
    MYSQL_STMT *st;
    int err = run(s, S_IS_MEMBER, par, res, &st);
    if (err)
        return err < 0 ? err : CHAT_EUNAVAIL;
    *is_member = mysql_stmt_fetch(st) == 0;
    mysql_stmt_free_result(st);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Read state, conversations, history                                       */
/* ------------------------------------------------------------------------ */

struct conv_count {
    char key[CHAT_CONV_KEY_MAX + 1];
    uint64_t n;
};

static int read_once(struct chat_store *s, const char *user, uint64_t after, uint64_t up_to,
                     const char *conv_key, int64_t now, struct chat_acked **read, size_t *nread,
                     size_t *cap, bool *more)
{
    *more = false;
    int err = begin(s);
    if (err)
        return err;
    unsigned long ulen, klen;
    MYSQL_BIND par[4];
    bind_str(&par[0], user, &ulen);
    bind_u64(&par[1], &after);
    bind_u64(&par[2], &up_to);
    if (conv_key)
        bind_str(&par[3], conv_key, &klen);
    uint64_t seq;
    char mid[CHAT_MESSAGE_ID_LEN + 2], from[CHAT_USER_MAX + 2], key[CHAT_CONV_KEY_MAX + 2];
    unsigned long mlen, flen, kl;
    MYSQL_BIND res[4];
    bind_u64(&res[0], &seq);
    bind_out_str(&res[1], mid, sizeof(mid), &mlen, NULL);
    bind_out_str(&res[2], from, sizeof(from), &flen, NULL);
    bind_out_str(&res[3], key, sizeof(key), &kl, NULL);
    MYSQL_STMT *st;
    err = run(s, conv_key ? S_READ_SELECT_CONV : S_READ_SELECT, par, res, &st);
    if (err)
        goto fail;
    size_t first = *nread, got = 0;
    struct conv_count *counts = NULL;
    size_t ncounts = 0;
    while (mysql_stmt_fetch(st) == 0) {
        if (*nread == *cap) {
            *cap = *cap ? *cap * 2 : 16;
            *read = chat_xrealloc(*read, *cap * sizeof(**read));
        }
        struct chat_acked *a = &(*read)[(*nread)++];
        a->seq = seq;
        copy_str(a->message_id, sizeof(a->message_id), mid, mlen);
        copy_str(a->from, sizeof(a->from), from, flen);
        key[kl < sizeof(key) ? kl : sizeof(key) - 1] = '\0';
        size_t c = 0;
        while (c < ncounts && strcmp(counts[c].key, key) != 0)
            c++;
        if (c == ncounts) {
            counts = chat_xrealloc(counts, (ncounts + 1) * sizeof(*counts));
            copy_str(counts[ncounts].key, sizeof(counts[0].key), key, strlen(key));
            counts[ncounts++].n = 0;
        }
        counts[c].n++;
        got++;
    }
    mysql_stmt_free_result(st);
    for (size_t i = first; !err && i < *nread; i++) {
        MYSQL_BIND up[4];
        int64_t ts = now;
        bind_i64(&up[0], &ts);
        bind_i64(&up[1], &ts);
        bind_str(&up[2], user, &ulen);
        bind_u64(&up[3], &(*read)[i].seq);
        err = run(s, S_READ_MARK, up, NULL, &st);
    }
    for (size_t c = 0; !err && c < ncounts; c++) {
        MYSQL_BIND up[4];
        unsigned long l1, l2;
        bind_u64(&up[0], &counts[c].n);
        bind_u64(&up[1], &counts[c].n);
        bind_str(&up[2], user, &l1);
        bind_str(&up[3], counts[c].key, &l2);
        err = run(s, S_CONV_UNREAD, up, NULL, &st);
    }
    free(counts);
    if (err)
        goto fail;
    err = commit(s);
    if (err)
        return err;
    *more = got == 1000;
    return 0;
fail:
    rollback(s);
    return err;
}

int chat_store_read(struct chat_store *s, const char *user, uint64_t up_to, const char *conv_key,
                    int64_t now_ms, struct chat_acked **read, size_t *nread)
{
    size_t cap = 0;
    *read = NULL;
    *nread = 0;
    if (up_to == 0)
        up_to = UINT64_MAX;
    uint64_t after = 0;
    bool more = true;
    while (more) {
        int err = read_once(s, user, after, up_to, conv_key, now_ms, read, nread, &cap, &more);
        if (err) {
            free(*read);
            *read = NULL;
            *nread = 0;
            return err < 0 ? err : CHAT_EUNAVAIL;
        }
        if (*nread)
            after = (*read)[*nread - 1].seq;
    }
    return 0;
}

void chat_conversations_free(struct chat_conversation *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        chat_item_cleanup(&v[i].last);
    free(v);
}

int chat_store_conversations(struct chat_store *s, const char *user, unsigned limit,
                             struct chat_conversation **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    uint64_t lim = limit < 1 ? 1 : (limit > 100 ? 100 : limit);
    struct item_row r;
    item_row_bind(&r);
    char key[CHAT_CONV_KEY_MAX + 2], name[CHAT_NAME_MAX + 2];
    unsigned long ulen, klen, nlen;
    uint64_t unread = 0;
    int64_t last_ts = 0;
    my_bool name_null = 0;
    MYSQL_BIND par[2], res[8];
    bind_str(&par[0], user, &ulen);
    bind_u64(&par[1], &lim);
    bind_out_str(&res[0], key, sizeof(key), &klen, NULL);
    bind_u64(&res[1], &unread);
    bind_i64(&res[2], &last_ts);
    res[3] = r.res[1]; /* message_id */
    res[4] = r.res[2]; /* sender */
    res[5] = r.res[4]; /* body */
    res[6] = r.res[5]; /* ts */
    bind_out_str(&res[7], name, sizeof(name), &nlen, &name_null);
    MYSQL_STMT *st;
    int err = run(s, S_CONV_LIST, par, res, &st);
    if (err)
        return err < 0 ? err : CHAT_EUNAVAIL;
    size_t rows = mysql_stmt_num_rows(st);
    *out = chat_xcalloc(rows + 1, sizeof(**out));
    int rc;
    while (*n < rows && ((rc = mysql_stmt_fetch(st)) == 0 || rc == MYSQL_DATA_TRUNCATED)) {
        struct chat_conversation *c = &(*out)[(*n)++];
        copy_str(c->conv_key, sizeof(c->conv_key), key, klen);
        if (!name_null)
            copy_str(c->name, sizeof(c->name), name, nlen);
        c->unread = (unsigned)unread;
        c->last_ts = last_ts;
        copy_str(c->last.message_id, sizeof(c->last.message_id), r.message_id, r.mid_len);
        copy_str(c->last.from, sizeof(c->last.from), r.from, r.from_len);
        c->last.body = fetch_body(st, 5, r.body_len);
        c->last.body_len = strlen(c->last.body);
        c->last.ts = r.ts;
    }
    mysql_stmt_free_result(st);
    return 0;
}

int chat_store_history(struct chat_store *s, const char *conv_key, const char *before_id,
                       unsigned limit, struct chat_items *out)
{
    memset(out, 0, sizeof(*out));
    uint64_t before = UINT64_MAX;
    if (before_id) {
        unsigned long idlen, klen;
        char key[CHAT_CONV_KEY_MAX + 2];
        MYSQL_BIND par[1], res[2];
        bind_str(&par[0], before_id, &idlen);
        bind_u64(&res[0], &before);
        bind_out_str(&res[1], key, sizeof(key), &klen, NULL);
        MYSQL_STMT *st;
        int err = run(s, S_MSG_PK, par, res, &st);
        if (err)
            return err < 0 ? err : CHAT_EUNAVAIL;
        int rc = mysql_stmt_fetch(st);
        mysql_stmt_free_result(st);
        key[klen < sizeof(key) ? klen : sizeof(key) - 1] = '\0';
        if (rc != 0 || strcmp(key, conv_key) != 0)
            return CHAT_ENOTFOUND;
    }
    uint64_t lim = (limit < 1 ? 1 : (limit > 100 ? 100 : limit)) + 1;
    unsigned long klen;
    MYSQL_BIND par[3];
    bind_str(&par[0], conv_key, &klen);
    bind_u64(&par[1], &before);
    bind_u64(&par[2], &lim);
    struct item_row r;
    uint64_t pk;
    MYSQL_BIND res[7];
    msg_row_bind(&r, res, &pk);
    MYSQL_STMT *st;
    int err = run(s, S_HISTORY, par, res, &st);
    if (err)
        return err < 0 ? err : CHAT_EUNAVAIL;
    out->v = chat_xcalloc(lim, sizeof(*out->v));
    int rc;
    while ((rc = mysql_stmt_fetch(st)) == 0 || rc == MYSQL_DATA_TRUNCATED) {
        if (out->n == lim - 1) {
            out->more = true;
            break;
        }
        item_from_row(&out->v[out->n++], &r, st, 4);
        out->v[out->n - 1].seq = 0;
    }
    mysql_stmt_free_result(st);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Blocks, tickets, contacts                                                */
/* ------------------------------------------------------------------------ */

int chat_store_block(struct chat_store *s, const char *user, const char *blocked, bool on)
{
    unsigned long l1, l2;
    int64_t now = chat_now_ms();
    MYSQL_BIND par[3];
    bind_str(&par[0], user, &l1);
    bind_str(&par[1], blocked, &l2);
    bind_i64(&par[2], &now);
    MYSQL_STMT *st;
    int err = run(s, on ? S_BLOCK_INS : S_BLOCK_DEL, par, NULL, &st);
    return err < 0 ? err : (err ? CHAT_EUNAVAIL : 0);
}

/* Reads a one-column list of user ids from statement id with one string
 * parameter. *out: caller frees with free(). */
static int user_column(struct chat_store *s, enum stmt_id id, const char *param,
                       char (**out)[CHAT_USER_MAX + 1], size_t *n)
{
    *out = NULL;
    *n = 0;
    unsigned long plen, ulen;
    char user[CHAT_USER_MAX + 2];
    MYSQL_BIND par[3], res[1];
    bind_str(&par[0], param, &plen);
    par[1] = par[2] = par[0]; /* for a statement that names the user more than once */
    bind_out_str(&res[0], user, sizeof(user), &ulen, NULL);
    MYSQL_STMT *st;
    int err = run(s, id, par, res, &st);
    if (err)
        return err < 0 ? err : CHAT_EUNAVAIL;
    size_t rows = mysql_stmt_num_rows(st);
    *out = chat_xcalloc(rows + 1, sizeof(**out));
    while (*n < rows && mysql_stmt_fetch(st) == 0)
        copy_str((*out)[(*n)++], sizeof((*out)[0]), user, ulen);
    mysql_stmt_free_result(st);
    return 0;
}

int chat_store_blocks(struct chat_store *s, const char *user, char (**out)[CHAT_USER_MAX + 1],
                      size_t *n)
{
    return user_column(s, S_BLOCK_LIST, user, out, n);
}

int chat_store_contacts(struct chat_store *s, const char *user, char (**out)[CHAT_USER_MAX + 1],
                        size_t *n)
{
    return user_column(s, S_CONV_PEERS, user, out, n);
}

int chat_store_ticket_put(struct chat_store *s, const char *ticket, const char *user,
                          int64_t expires_ms)
{
    unsigned long l1, l2;
    int64_t now = chat_now_ms();
    MYSQL_BIND gc[1];
    bind_i64(&gc[0], &now);
    MYSQL_STMT *st;
    int err = run(s, S_TICKET_GC, gc, NULL, &st); /* keeps the table small */
    if (err)
        return err < 0 ? err : CHAT_EUNAVAIL;
    MYSQL_BIND par[3];
    bind_str(&par[0], ticket, &l1);
    bind_str(&par[1], user, &l2);
    bind_i64(&par[2], &expires_ms);
    err = run(s, S_TICKET_INS, par, NULL, &st);
    return err < 0 ? err : (err ? CHAT_EUNAVAIL : 0);
}

int chat_store_ticket_take(struct chat_store *s, const char *ticket, int64_t now_ms,
                           char user[CHAT_USER_MAX + 1])
{
    unsigned long l1, ulen;
    char u[CHAT_USER_MAX + 2];
    MYSQL_BIND par[2], res[1];
    bind_str(&par[0], ticket, &l1);
    bind_i64(&par[1], &now_ms);
    bind_out_str(&res[0], u, sizeof(u), &ulen, NULL);
    MYSQL_STMT *st;
    int err = run(s, S_TICKET_TAKE, par, res, &st);
    if (err)
        return err < 0 ? err : CHAT_EUNAVAIL;
    int rc = mysql_stmt_fetch(st);
    mysql_stmt_free_result(st);
    if (rc != 0)
        return CHAT_EAUTH;
    copy_str(user, CHAT_USER_MAX + 1, u, ulen);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The push hook's queue                                                    */
/* ------------------------------------------------------------------------ */

int chat_store_push_claim(struct chat_store *s, int64_t now_ms, int64_t lease_ms,
                          struct chat_push **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    int err = begin(s);
    if (err)
        return err;
    struct item_row r;
    item_row_bind(&r);
    int64_t attempts = 0;
    MYSQL_BIND par[1], res[8];
    bind_i64(&par[0], &now_ms);
    res[0] = r.res[3]; /* user_id, into r.to */
    res[1] = r.res[0]; /* seq */
    bind_i64(&res[2], &attempts);
    res[3] = r.res[1]; /* message_id */
    res[4] = r.res[2]; /* sender */
    res[5] = r.res[4]; /* body */
    res[6] = r.res[8]; /* chat_id */
    res[7] = r.res[5]; /* ts */
    MYSQL_STMT *st;
    err = run(s, S_PUSH_DUE, par, res, &st);
    if (err)
        goto fail;
    size_t rows = mysql_stmt_num_rows(st);
    *out = chat_xcalloc(rows + 1, sizeof(**out));
    int rc;
    while (*n < rows && ((rc = mysql_stmt_fetch(st)) == 0 || rc == MYSQL_DATA_TRUNCATED)) {
        struct chat_push *p = &(*out)[(*n)++];
        item_from_row(&p->item, &r, st, 5);
        p->attempts = (int)attempts;
    }
    mysql_stmt_free_result(st);
    /* Leased: no other node takes them while this one posts them. */
    int64_t until = now_ms + lease_ms;
    for (size_t i = 0; !err && i < *n; i++) {
        unsigned long ulen;
        MYSQL_BIND up[3];
        bind_i64(&up[0], &until);
        bind_str(&up[1], (*out)[i].item.to, &ulen);
        bind_u64(&up[2], &(*out)[i].item.seq);
        err = run(s, S_PUSH_LEASE, up, NULL, &st);
    }
    if (err)
        goto fail;
    err = commit(s);
    if (err)
        goto out;
    return 0;
fail:
    rollback(s);
out:
    chat_push_free(*out, *n);
    *out = NULL;
    *n = 0;
    return err < 0 ? err : CHAT_EUNAVAIL;
}

int chat_store_push_result(struct chat_store *s, const struct chat_push *p, bool ok,
                           int64_t next_ms, int max_attempts)
{
    unsigned long ulen;
    MYSQL_STMT *st;
    uint64_t seq = p->item.seq;
    int err;
    if (ok) {
        MYSQL_BIND par[2];
        bind_str(&par[0], p->item.to, &ulen);
        bind_u64(&par[1], &seq);
        err = run(s, S_PUSH_DONE, par, NULL, &st);
    } else {
        int64_t last = max_attempts;
        MYSQL_BIND par[4];
        bind_i64(&par[0], &next_ms);
        bind_i64(&par[1], &last);
        bind_str(&par[2], p->item.to, &ulen);
        bind_u64(&par[3], &seq);
        err = run(s, S_PUSH_RETRY, par, NULL, &st);
    }
    return err < 0 ? err : (err ? CHAT_EUNAVAIL : 0);
}

void chat_push_free(struct chat_push *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        chat_item_cleanup(&v[i].item);
    free(v);
}

static int ack_range_once(struct chat_store *s, const char *user, uint64_t after, uint64_t up_to,
                          enum chat_policy policy, int64_t now_ms, struct chat_acked **acked,
                          size_t *nacked, size_t *cap, bool *more)
{
    *more = false;
    int err = begin(s);
    if (err)
        return err;
    unsigned long ulen;
    MYSQL_BIND par[3];
    bind_str(&par[0], user, &ulen);
    bind_u64(&par[1], &after);
    bind_u64(&par[2], &up_to);
    uint64_t seq;
    char mid[CHAT_MESSAGE_ID_LEN + 2], from[CHAT_USER_MAX + 2];
    unsigned long mlen, flen;
    MYSQL_BIND res[3];
    bind_u64(&res[0], &seq);
    bind_out_str(&res[1], mid, sizeof(mid), &mlen, NULL);
    bind_out_str(&res[2], from, sizeof(from), &flen, NULL);
    MYSQL_STMT *st;
    err = run(s, S_ACK_SELECT, par, res, &st);
    if (err)
        goto fail;
    size_t got = 0;
    uint64_t last = after;
    while (mysql_stmt_fetch(st) == 0) {
        if (*nacked == *cap) {
            *cap = *cap ? *cap * 2 : 16;
            *acked = chat_xrealloc(*acked, *cap * sizeof(**acked));
        }
        struct chat_acked *a = &(*acked)[(*nacked)++];
        a->seq = seq;
        copy_str(a->message_id, sizeof(a->message_id), mid, mlen);
        copy_str(a->from, sizeof(a->from), from, flen);
        last = seq;
        got++;
    }
    mysql_stmt_free_result(st);
    if (got > 0) {
        MYSQL_BIND upar[4];
        int64_t ts = now_ms;
        if (policy == CHAT_POLICY_MARK) {
            bind_i64(&upar[0], &ts);
            bind_str(&upar[1], user, &ulen);
            bind_u64(&upar[2], &after);
            bind_u64(&upar[3], &last);
            err = run(s, S_ACK_MARK, upar, NULL, &st);
        } else {
            bind_str(&upar[0], user, &ulen);
            bind_u64(&upar[1], &after);
            bind_u64(&upar[2], &last);
            err = run(s, S_ACK_DELETE, upar, NULL, &st);
        }
        if (err)
            goto fail;
    }
    err = commit(s);
    if (err)
        return err;
    *more = got == 1000 && last < up_to;
    atomic_fetch_add(&chat_metrics.acks_applied, (long)got);
    return 0;
fail:
    rollback(s);
    return err;
}

int chat_store_ack_range(struct chat_store *s, const char *user, uint64_t after, uint64_t up_to,
                         enum chat_policy policy, int64_t now_ms, struct chat_acked **acked,
                         size_t *nacked)
{
    size_t cap = 0;
    *acked = NULL;
    *nacked = 0;
    bool more = true;
    while (more && after < up_to) {
        size_t before = *nacked;
        int err = ack_range_once(s, user, after, up_to, policy, now_ms, acked, nacked, &cap, &more);
        if (err) {
            free(*acked);
            *acked = NULL;
            *nacked = 0;
            return err < 0 ? err : CHAT_EUNAVAIL;
        }
        if (*nacked > before)
            after = (*acked)[*nacked - 1].seq;
    }
    return 0;
}

static int cmp_row_ref(const void *a, const void *b)
{
    const struct chat_row_ref *x = a, *y = b;
    int c = strcmp(x->user, y->user);
    return c ? c : (x->seq > y->seq) - (x->seq < y->seq);
}

/* The rows of refs (sorted; seq 0 skipped) with one statement, which is
 * its own transaction. */
static int ack_batch_once(struct chat_store *s, const struct chat_row_ref *refs, size_t n,
                          enum chat_policy policy, int64_t now_ms, size_t *applied)
{
    *applied = 0;
    cJSON *rows = cJSON_CreateArray();
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (refs[i].seq == 0)
            continue;
        cJSON *row = json_row(rows);
        json_str(row, refs[i].user);
        json_u64(row, refs[i].seq);
        k++;
    }
    if (k == 0) {
        cJSON_Delete(rows);
        return 0;
    }
    MYSQL_BIND at;
    bind_i64(&at, &now_ms);
    MYSQL_STMT *st;
    int err = run_rows(s, policy == CHAT_POLICY_MARK ? S_ACKS_MARK : S_ACKS_DELETE, rows,
                       policy == CHAT_POLICY_MARK ? &at : NULL, NULL, &st);
    if (!err)
        *applied = (size_t)mysql_stmt_affected_rows(st);
    return err;
}

int chat_store_ack_batch(struct chat_store *s, struct chat_row_ref *refs, size_t n,
                         enum chat_policy policy, int64_t now_ms, size_t *applied)
{
    size_t dummy;
    if (!applied)
        applied = &dummy;
    *applied = 0;
    /* One order for every batch: concurrent batches never deadlock. */
    qsort(refs, n, sizeof(*refs), cmp_row_ref);
    for (int attempt = 0; attempt < 3; attempt++) {
        int err = ack_batch_once(s, refs, n, policy, now_ms, applied);
        if (err == 0) {
            atomic_fetch_add(&chat_metrics.acks_applied, (long)*applied);
            return 0;
        }
        *applied = 0;
        if (err != ER_LOCK_DEADLOCK && err != ER_LOCK_WAIT_TIMEOUT)
            return err < 0 ? err : CHAT_EUNAVAIL;
    }
    return CHAT_EUNAVAIL;
}

int chat_store_ack(struct chat_store *s, const char *user, const uint64_t *seqs, size_t n,
                   enum chat_policy policy, int64_t now_ms, struct chat_acked **acked,
                   size_t *nacked)
{
    size_t cap = 0;
    bool more;
    *acked = NULL;
    *nacked = 0;
    for (size_t i = 0; i < n; i++) {
        if (seqs[i] == 0)
            continue;
        int err = ack_range_once(s, user, seqs[i] - 1, seqs[i], policy, now_ms, acked, nacked, &cap,
                                 &more);
        if (err) {
            free(*acked);
            *acked = NULL;
            *nacked = 0;
            return err < 0 ? err : CHAT_EUNAVAIL;
        }
    }
    return 0;
}

void chat_item_cleanup(struct chat_item *it)
{
    free(it->body);
    it->body = NULL;
}

/* An item's JSON besides its body: ids, names, numbers and member names. */
#define ITEM_JSON_OVERHEAD 400

void chat_items_bound(struct chat_items *items, size_t budget)
{
    size_t used = 0, keep = 0;
    while (keep < items->n && (keep == 0 || used < budget)) {
        const struct chat_item *it = &items->v[keep++];
        used += ITEM_JSON_OVERHEAD + chat_json_string_len(it->body, it->body_len);
    }
    if (keep == items->n)
        return;
    for (size_t i = keep; i < items->n; i++)
        chat_item_cleanup(&items->v[i]);
    items->n = keep;
    items->more = true;
}

void chat_items_cleanup(struct chat_items *items)
{
    for (size_t i = 0; i < items->n; i++)
        chat_item_cleanup(&items->v[i]);
    free(items->v);
    memset(items, 0, sizeof(*items));
}

/* ------------------------------------------------------------------------ */
/* Migrations                                                               */
/* ------------------------------------------------------------------------ */

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_script(MYSQL *db, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        chat_error("migrate: %s: %s", path, strerror(errno));
        return CHAT_EINTERNAL;
    }
    struct chat_buf sql = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        chat_buf_append(&sql, chunk, n);
    fclose(f);
    int rc = mysql_real_query(db, sql.data ? sql.data : "", sql.len);
    /* Drain every result of the multi-statement script. */
    while (rc == 0) {
        MYSQL_RES *r = mysql_store_result(db);
        if (r)
            mysql_free_result(r);
        rc = mysql_next_result(db);
        if (rc == -1) {
            rc = 0;
            break;
        }
    }
    chat_buf_cleanup(&sql);
    if (rc != 0) {
        chat_error("migrate: %s: %s", path, mysql_error(db));
        return CHAT_EINTERNAL;
    }
    return 0;
}

int chat_store_migrate(const struct chat_config *cfg, const char *dir)
{
    MYSQL *db = mysql_init(NULL);
    if (!db)
        abort();
    unsigned ct = (unsigned)cfg->mysql_connect_timeout;
    mysql_options(db, MYSQL_OPT_CONNECT_TIMEOUT, &ct);
    mysql_options(db, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    const char *sock = cfg->mysql_socket[0] ? cfg->mysql_socket : NULL;
    if (!mysql_real_connect(db, sock ? NULL : cfg->mysql_host, cfg->mysql_user, cfg->mysql_password,
                            cfg->mysql_database, sock ? 0 : (unsigned)cfg->mysql_port, sock,
                            CLIENT_MULTI_STATEMENTS)) {
        chat_error("migrate: connect: %s", mysql_error(db));
        mysql_close(db);
        return CHAT_EUNAVAIL;
    }
    int err = 0;
    const char *ddl = "CREATE TABLE IF NOT EXISTS schema_version (version INT NOT NULL PRIMARY "
                      "KEY, applied_ms BIGINT NOT NULL) ENGINE=InnoDB";
    long current = 0;
    if (mysql_query(db, ddl) != 0 ||
        mysql_query(db, "SELECT COALESCE(MAX(version), 0) FROM schema_version") != 0) {
        chat_error("migrate: %s", mysql_error(db));
        mysql_close(db);
        return CHAT_EINTERNAL;
    }
    MYSQL_RES *r = mysql_store_result(db);
    MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
    if (row && row[0])
        current = strtol(row[0], NULL, 10);
    if (r)
        mysql_free_result(r);

    DIR *d = opendir(dir);
    if (!d) {
        chat_error("migrate: %s: %s", dir, strerror(errno));
        mysql_close(db);
        return CHAT_EINTERNAL;
    }
    char **names = NULL;
    size_t count = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len > 4 && strcmp(de->d_name + len - 4, ".sql") == 0 && de->d_name[0] >= '0' &&
            de->d_name[0] <= '9') {
            names = chat_xrealloc(names, (count + 1) * sizeof(*names));
            names[count++] = chat_xstrdup(de->d_name);
        }
    }
    closedir(d);
    qsort(names, count, sizeof(*names), cmp_names);
    for (size_t i = 0; i < count && err == 0; i++) {
        long version = strtol(names[i], NULL, 10);
        if (version <= current || version > CHAT_SCHEMA_VERSION)
            continue;
        char *path = chat_xasprintf("%s/%s", dir, names[i]);
        err = run_script(db, path);
        free(path);
        if (err == 0) {
            char q[128];
            snprintf(q, sizeof(q), "INSERT INTO schema_version VALUES (%ld, %lld)", version,
                     (long long)chat_now_ms());
            if (mysql_query(db, q) != 0) {
                chat_error("migrate: %s", mysql_error(db));
                err = CHAT_EINTERNAL;
            } else {
                printf("applied %s (schema version %ld)\n", names[i], version);
                current = version;
            }
        }
    }
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
    mysql_close(db);
    if (err == 0) {
        if (current != CHAT_SCHEMA_VERSION) {
            chat_error("migrate: schema is at version %ld, expected %d (missing files in %s?)",
                       current, CHAT_SCHEMA_VERSION, dir);
            return CHAT_EINTERNAL;
        }
        printf("schema at version %ld\n", current);
    }
    return err;
}
