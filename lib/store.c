/* store.c: MySQL (MariaDB Connector/C) with prepared statements only. */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <mysql.h>
#include <mysqld_error.h>
#include <errmsg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "buf.h"
#include "err.h"
#include "log.h"
#include "metrics.h"

/* ------------------------------------------------------------------------ */
/* Statements                                                               */
/* ------------------------------------------------------------------------ */

enum stmt_id {
    S_SCHEMA,
    S_INS_MSG,
    S_SEQ,
    S_INS_INBOX,
    S_FIND_CLIENT,
    S_INBOX_ALL,
    S_INBOX_PENDING,
    S_LAST_SEQ,
    S_ACK_SELECT,
    S_ACK_MARK,
    S_ACK_DELETE,
    S_MSG,
    S_MSG_RCPT,
    S_COUNT
};

#define ITEM_COLS                                                                                  \
    "i.seq, m.message_id, m.sender, m.recipient, m.body, m.ts, i.status, i.delivered_ts"

static const char *const stmt_sql[S_COUNT] = {
    [S_SCHEMA] = "SELECT COALESCE(MAX(version), 0) FROM schema_version",
    [S_INS_MSG] = "INSERT INTO messages (message_id, sender, recipient, client_msg_id, body, ts) "
                  "VALUES (?, ?, ?, ?, ?, ?)",
    /* LAST_INSERT_ID(expr) hands the new value back without a second query. */
    [S_SEQ] = "INSERT INTO user_seq (user_id, last_seq) VALUES (?, LAST_INSERT_ID(1)) "
              "ON DUPLICATE KEY UPDATE last_seq = LAST_INSERT_ID(last_seq + 1)",
    [S_INS_INBOX] = "INSERT INTO inbox (user_id, seq, msg_pk, status) VALUES (?, ?, ?, 0)",
    [S_FIND_CLIENT] = "SELECT message_id, recipient, body, ts FROM messages "
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
    [S_MSG] = "SELECT id, message_id, sender, recipient, body, ts FROM messages "
              "WHERE message_id = ?",
    [S_MSG_RCPT] = "SELECT status, delivered_ts FROM inbox WHERE msg_pk = ? AND user_id = ?",
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
    return 0;
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

static void bind_blob(MYSQL_BIND *b, const char *v, size_t n, unsigned long *len)
{
    memset(b, 0, sizeof(*b));
    b->buffer_type = MYSQL_TYPE_STRING;
    b->buffer = (void *)v;
    *len = (unsigned long)n;
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
    MYSQL_BIND res[8];
    uint64_t seq;
    char message_id[CHAT_MESSAGE_ID_LEN + 2];
    char from[CHAT_USER_MAX + 2];
    char to[CHAT_USER_MAX + 2];
    int64_t ts, delivered_ts;
    int64_t status;
    unsigned long mid_len, from_len, to_len, body_len;
    my_bool to_null, dts_null, body_null;
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
}

static void copy_str(char *dst, size_t cap, const char *src, unsigned long len)
{
    if (len >= cap)
        len = cap - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
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
        struct chat_item *it = &out->v[out->n++];
        it->seq = r.seq;
        copy_str(it->message_id, sizeof(it->message_id), r.message_id, r.mid_len);
        copy_str(it->from, sizeof(it->from), r.from, r.from_len);
        if (!r.to_null)
            copy_str(it->to, sizeof(it->to), r.to, r.to_len);
        it->body = fetch_body(st, 4, r.body_len);
        it->body_len = strlen(it->body);
        it->ts = r.ts;
        it->status = (int)r.status;
        it->delivered_ts = r.dts_null ? 0 : r.delivered_ts;
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

int chat_store_message(struct chat_store *s, const char *message_id, struct chat_item *msg,
                       struct chat_recipient *rcpt)
{
    memset(msg, 0, sizeof(*msg));
    memset(rcpt, 0, sizeof(*rcpt));
    unsigned long idlen;
    MYSQL_BIND par[1];
    bind_str(&par[0], message_id, &idlen);
    struct item_row r;
    item_row_bind(&r);
    uint64_t pk = 0;
    MYSQL_BIND res[6];
    bind_u64(&res[0], &pk);
    res[1] = r.res[1];
    res[2] = r.res[2];
    res[3] = r.res[3];
    res[4] = r.res[4];
    res[5] = r.res[5];
    MYSQL_STMT *st;
    int err = run(s, S_MSG, par, res, &st);
    if (err)
        return err < 0 ? err : CHAT_EUNAVAIL;
    int rc = mysql_stmt_fetch(st);
    if (rc != 0 && rc != MYSQL_DATA_TRUNCATED) {
        mysql_stmt_free_result(st);
        return rc == MYSQL_NO_DATA ? CHAT_ENOTFOUND : CHAT_EUNAVAIL;
    }
    copy_str(msg->message_id, sizeof(msg->message_id), r.message_id, r.mid_len);
    copy_str(msg->from, sizeof(msg->from), r.from, r.from_len);
    if (!r.to_null)
        copy_str(msg->to, sizeof(msg->to), r.to, r.to_len);
    msg->body = fetch_body(st, 4, r.body_len);
    msg->body_len = strlen(msg->body);
    msg->ts = r.ts;
    mysql_stmt_free_result(st);

    snprintf(rcpt->user, sizeof(rcpt->user), "%s", msg->to);
    unsigned long ulen;
    MYSQL_BIND par2[2], res2[2];
    bind_u64(&par2[0], &pk);
    bind_str(&par2[1], rcpt->user, &ulen);
    int64_t status = 0, dts = 0;
    my_bool dts_null = 0;
    bind_i64(&res2[0], &status);
    bind_i64(&res2[1], &dts);
    res2[1].is_null = &dts_null;
    err = run(s, S_MSG_RCPT, par2, res2, &st);
    if (err) {
        chat_item_cleanup(msg);
        return err < 0 ? err : CHAT_EUNAVAIL;
    }
    if (mysql_stmt_fetch(st) == 0) {
        rcpt->known = true;
        rcpt->status = (int)status;
        rcpt->delivered_ts = dts_null ? 0 : dts;
    } else {
        /* No row: deleted after delivery (policy delete). */
        rcpt->status = CHAT_STATUS_DELIVERED;
    }
    mysql_stmt_free_result(st);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Writes                                                                   */
/* ------------------------------------------------------------------------ */

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
    MYSQL_BIND res[4] = {r.res[1], r.res[3], r.res[4], r.res[5]};
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
    copy_str(it->message_id, sizeof(it->message_id), r.message_id, r.mid_len);
    snprintf(it->from, sizeof(it->from), "%s", in->from);
    if (!r.to_null)
        copy_str(it->to, sizeof(it->to), r.to, r.to_len);
    it->body = fetch_body(st, 2, r.body_len);
    it->body_len = strlen(it->body);
    it->ts = r.ts;
    mysql_stmt_free_result(st);
    out->created = false;
    if (strcmp(it->to, in->to) != 0 || it->body_len != in->body_len ||
        memcmp(it->body, in->body, in->body_len) != 0) {
        chat_item_cleanup(it);
        return CHAT_ECONFLICT;
    }
    return 0;
}

/* One attempt of the send transaction. Returns 0, a MySQL errno (> 0) the
 * caller may retry, or a negative chat_err. */
static int send_once(struct chat_store *s, const struct chat_send *in, struct chat_sent *out)
{
    struct chat_item *it = &out->item;
    int err = begin(s);
    if (err)
        return err;
    unsigned long l[6];
    MYSQL_BIND par[6];
    bind_str(&par[0], it->message_id, &l[0]);
    bind_str(&par[1], in->from, &l[1]);
    bind_str(&par[2], in->to, &l[2]);
    if (in->client_msg_id)
        bind_str(&par[3], in->client_msg_id, &l[3]);
    else
        bind_null(&par[3]);
    bind_blob(&par[4], in->body, in->body_len, &l[4]);
    bind_i64(&par[5], &it->ts);
    MYSQL_STMT *st;
    err = run(s, S_INS_MSG, par, NULL, &st);
    if (err)
        goto fail;
    uint64_t pk = mysql_stmt_insert_id(st);

    /* Last: the recipient's seq row lock is held only for the remaining two
     * statements and the COMMIT. */
    MYSQL_BIND spar[1];
    bind_str(&spar[0], in->to, &l[0]);
    err = run(s, S_SEQ, spar, NULL, &st);
    if (err)
        goto fail;
    uint64_t seq = mysql_stmt_insert_id(st);

    MYSQL_BIND ipar[3];
    bind_str(&ipar[0], in->to, &l[0]);
    bind_u64(&ipar[1], &seq);
    bind_u64(&ipar[2], &pk);
    err = run(s, S_INS_INBOX, ipar, NULL, &st);
    if (err)
        goto fail;
    err = commit(s);
    if (err)
        return err;
    it->seq = seq;
    return 0;
fail:
    rollback(s);
    return err;
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
    snprintf(it->to, sizeof(it->to), "%s", in->to);
    it->status = CHAT_STATUS_PENDING;
    for (int attempt = 0; attempt < 3; attempt++) {
        int err = send_once(s, in, out);
        if (err == 0) {
            it->body = chat_xstrndup(in->body, in->body_len);
            it->body_len = in->body_len;
            out->created = true;
            return 0;
        }
        if (err == ER_DUP_ENTRY && in->client_msg_id) {
            /* A concurrent send with the same client_msg_id won the race. */
            return find_client_msg(s, in, out);
        }
        if (err != ER_LOCK_DEADLOCK && err != ER_LOCK_WAIT_TIMEOUT)
            return err < 0 ? err : CHAT_EUNAVAIL;
        chat_info("mysql: send retried after lock conflict %d", err);
    }
    return CHAT_EUNAVAIL;
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
