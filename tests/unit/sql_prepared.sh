#!/bin/sh
# SQL reaches MySQL only as the constant text of a prepared statement; data
# goes in through bound parameters, never into the SQL text. Every .c and .h
# of lib/, httpd/, cgi/ and chatctl.c is read statement by statement (comments
# dropped, adjacent string literals joined, statements that span lines taken
# whole), and this fails on:
#   plain   a plain query call (mysql_query, mysql_real_query,
#           mysql_send_query, their _start forms) other than the transaction
#           control ("START TRANSACTION", COMMIT, ROLLBACK) and the schema
#           migrations (run_script and chat_store_migrate in lib/store.c,
#           which run the files of sql/ and their own bookkeeping)
#   prepare mysql_stmt_prepare (or _start) given SQL that is neither a
#           string literal nor an entry of the constant stmt_sql[] table
#   built   SQL text put together at run time: a printf-like or
#           string-building call (snprintf, asprintf, chat_xasprintf,
#           chat_buf_printf, strcat, ...) whose arguments hold SQL
#   format  a string literal of SQL with a printf conversion (%s, %d, ...)
#   escape  the client's escaping functions (mysql_real_escape_string ...):
#           only string-built SQL needs them
# The one exception is the migrations' INSERT INTO schema_version of two
# numbers, in chat_store_migrate. Before scanning the tree the checker runs
# on samples of each fault (and of the allowed forms), so that a checker
# that has stopped seeing anything fails too.
set -eu
top="${srcdir:-.}"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sql_prepared.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# scan FILE...: prints one line per fault (file:line: kind: statement).
scan() {
    awk -v sq="'" '
    BEGIN {
        # Text that is SQL, a call that builds a string, a printf conversion.
        SQL = "(SELECT[ (].*(FROM|@@)|INSERT ([A-Z]+ )*INTO |UPDATE [A-Za-z_`.]+ SET |" \
              "DELETE ([A-Z]+ )*FROM |REPLACE ([A-Z]+ )*INTO |" \
              "(CREATE|ALTER|DROP|TRUNCATE|RENAME) TABLE |CALL [A-Za-z_])"
        BUILD = "(^|[^A-Za-z0-9_])(v?s?n?printf|v?asprintf|chat_x?v?asprintf|" \
                "chat_buf_(v?printf|puts|append)|str(n|l)?(cat|cpy)|stpn?cpy|memcpy|" \
                "g_strdup_printf|g_string_(append|printf)[a-z_]*) *\\("
        CONV = "%[-+ #0]*[0-9*]*(\\.[0-9*]+)?(hh|h|ll|l|z|j|t|L)?[diouxXcsfFeEgGp]"
        QUERY = "mysql_(real_query|query|send_query)(_start)?"
        MIGRATION = "(^|[^A-Za-z0-9_])(run_script|chat_store_migrate) *\\("
        VERSION_ROW = "^INSERT INTO schema_version VALUES \\(%l?ld, %ll?d\\)$"
    }
    function flush(   code, all, k, sql, allowed) {
        code = stmt
        gsub(/[ \t\n]+/, " ", code)
        if (code ~ /^ *$/) { reset(); return }
        all = ""
        for (k = 1; k <= nlit; k++) all = all lit[k]
        sql = all ~ SQL
        allowed = fn ~ /chat_store_migrate/ && all ~ VERSION_ROW
        if (code ~ /mysql_(real_)?(escape_string|hex_string|real_escape_string_quote)/)
            fault("escape", code)
        if (code ~ ("(^|[^A-Za-z0-9_])" QUERY " *\\(") && fn !~ MIGRATION &&
            literal_arg(code, QUERY) !~ /^ *(START TRANSACTION|COMMIT|ROLLBACK) *$/)
            fault("plain", code)
        if (code ~ /mysql_stmt_prepare(_start)? *\(/ && !prepare_ok(code))
            fault("prepare", code)
        if (sql && !allowed && code ~ BUILD)
            fault("built", code)
        if (sql && !allowed)
            for (k = 1; k <= nlit; k++)
                if (lit[k] ~ CONV) {
                    line0 = litline[k]
                    fault("format", "\"S" k "\"")
                }
        reset()
    }
    function reset() { stmt = ""; nlit = 0 }
    # The text of the second argument of the call to name in code (string
    # literals are "S<n>" there, so that commas in them do not count).
    function second_arg(code, name,   i, c, depth, arg, start) {
        if (!match(code, "(^|[^A-Za-z0-9_])" name "[ ]*\\(")) return ""
        i = RSTART + RLENGTH; depth = 0; arg = 0; start = 0
        for (; i <= length(code); i++) {
            c = substr(code, i, 1)
            if (c == "(") depth++
            else if (c == ")") { if (depth == 0) break; depth-- }
            else if (c == "," && depth == 0) { arg++; if (arg == 1) start = i + 1; else break }
        }
        return start ? substr(code, start, i - start) : ""
    }
    # The second argument when it is one literal (or adjacent ones): its text.
    function literal_arg(code, name,   a, out, k) {
        a = second_arg(code, name)
        if (a !~ /^ *("S[0-9]+" *)+$/) return "\001not a literal"
        out = ""
        while (match(a, /"S[0-9]+"/)) {
            k = substr(a, RSTART + 2, RLENGTH - 3) + 0
            out = out lit[k]
            a = substr(a, RSTART + RLENGTH)
        }
        return out
    }
    function prepare_ok(code,   a) {
        a = second_arg(code, "mysql_stmt_prepare(_start)?")
        return a ~ /^ *("S[0-9]+" *)+$/ || a ~ /^ *stmt_sql *\[[^]]*\] *$/
    }
    function fault(kind, text,   out, k) {
        out = ""
        while (match(text, /"S[0-9]+"/)) {
            k = substr(text, RSTART + 2, RLENGTH - 3) + 0
            out = out substr(text, 1, RSTART) lit[k] "\""
            text = substr(text, RSTART + RLENGTH)
        }
        printf "%s:%d: %s: %s\n", FILENAME, line0, kind, substr(out text, 1, 200)
        bad = 1
    }
    FNR == 1 { incomment = 0; reset(); fn = "" }
    {
        s = $0
        # The function a statement is in: a definition starts in column 0.
        if (!incomment && s ~ /^[a-z][A-Za-z0-9_ *]*[ *][a-z_][A-Za-z0-9_]*\(/ && s !~ /;[ \t]*$/)
            fn = s
        if (stmt == "") line0 = FNR
        out = ""
        n = length(s)
        for (i = 1; i <= n; i++) {
            c = substr(s, i, 1)
            if (incomment) {
                if (c == "*" && substr(s, i + 1, 1) == "/") { incomment = 0; i++ }
                continue
            }
            if (c == "/" && substr(s, i + 1, 1) == "*") { incomment = 1; i++; continue }
            if (c == "/" && substr(s, i + 1, 1) == "/") break
            if (c == "\"" || c == sq) {
                q = c; text = ""
                for (i++; i <= n; i++) {
                    d = substr(s, i, 1)
                    if (d == "\\") { text = text substr(s, i, 2); i++; continue }
                    if (d == q) break
                    text = text d
                }
                if (q == "\"") {
                    lit[++nlit] = text; litline[nlit] = FNR
                    out = out "\"S" nlit "\""
                } else out = out "x"
                continue
            }
            out = out c
            if (c == ";" || c == "{" || c == "}") {
                stmt = stmt " " out; out = ""
                flush()
                line0 = FNR
            }
        }
        if (out != "") stmt = stmt " " out
        if (s ~ /^#/) reset()  # a preprocessor line stands alone
    }
    END { exit bad }
    ' "$@"
}

# The checker on samples: each fault must be found, the allowed forms not.
mkdir "$tmp/bad" "$tmp/good"
cat >"$tmp/bad/plain.c" <<'EOF'
static int lookup(MYSQL *db, const char *user)
{
    return mysql_query(db, "SELECT 1 FROM users");
}
EOF
cat >"$tmp/bad/plain_multiline.c" <<'EOF'
int chat_store_thing(struct chat_store *s)
{
    int rc =
        mysql_real_query(s->db,
                         q, len);
    return rc;
}
EOF
cat >"$tmp/bad/send_query.c" <<'EOF'
int f(MYSQL *db) { return mysql_send_query(db, sql, n); }
EOF
cat >"$tmp/bad/prepare_built.c" <<'EOF'
static int find(struct chat_store *s, const char *sql)
{
    return mysql_stmt_prepare(st, buf, strlen(buf));
}
EOF
cat >"$tmp/bad/built_snprintf.c" <<'EOF'
static void q(char *buf, size_t n, const char *user)
{
    snprintf(buf, n,
             "SELECT id FROM inbox "
             "WHERE user_id = '%s'", user);
}
EOF
cat >"$tmp/bad/built_buf.c" <<'EOF'
static void q(struct chat_buf *b, const char *user)
{
    chat_buf_puts(b, "DELETE FROM tickets WHERE ticket = '");
    chat_buf_puts(b, user);
}
EOF
cat >"$tmp/bad/built_strcat.c" <<'EOF'
static void q(char *buf) { strcat(buf, "UPDATE inbox SET status = 1 WHERE seq = "); }
EOF
cat >"$tmp/bad/format_literal.c" <<'EOF'
static const char *const fmt = "INSERT INTO blocks (user_id) VALUES ('%s')";
EOF
cat >"$tmp/bad/escape.c" <<'EOF'
static void q(MYSQL *db, char *to, const char *from)
{
    mysql_real_escape_string(db, to, from, strlen(from));
}
EOF
cat >"$tmp/bad/migrate_other.c" <<'EOF'
int chat_store_migrate(const struct chat_config *cfg, const char *dir)
{
    snprintf(q, sizeof(q), "DELETE FROM messages WHERE sender = '%s'", name);
    return 0;
}
EOF
cat >"$tmp/good/store.c" <<'EOF'
/* A comment that says mysql_query(db, "SELECT * FROM x") is not code. */
#define COLS "i.seq, m.body"
static const char *const stmt_sql[2] = {
    [0] = "SELECT " COLS " FROM inbox i WHERE i.user_id = ? AND i.seq > ? ORDER BY i.seq LIMIT ?",
    [1] = "UPDATE inbox SET status = 1 WHERE user_id = ? AND seq = ?",
};
static int begin(struct chat_store *s)
{
    if (mysql_real_query(s->db, "START TRANSACTION", 17) != 0)
        return -1;
    chat_warn("mysql: %s: %u %s", what, err, msg);
    return mysql_stmt_prepare(st, stmt_sql[id], strlen(stmt_sql[id]));
}
static int run_script(MYSQL *db, const char *path)
{
    return mysql_real_query(db, sql.data ? sql.data : "", sql.len);
}
int chat_store_migrate(const struct chat_config *cfg, const char *dir)
{
    if (mysql_query(db, ddl) != 0 ||
        mysql_query(db, "SELECT COALESCE(MAX(version), 0) FROM schema_version") != 0)
        return -1;
    snprintf(q, sizeof(q), "INSERT INTO schema_version VALUES (%ld, %lld)", version,
             (long long)chat_now_ms());
    snprintf(text, sizeof(text), "%lld", (long long)v);
    return 0;
}
EOF
selftest=0
for f in "$tmp"/bad/*.c; do
    if scan "$f" >"$tmp/out" 2>&1; then
        echo "sql_prepared.sh: the checker misses the fault in this sample:"
        cat "$f"
        selftest=1
    fi
done
if ! scan "$tmp"/good/*.c >"$tmp/out" 2>&1; then
    echo "sql_prepared.sh: the checker refuses allowed forms:"
    cat "$tmp/out"
    selftest=1
fi
[ "$selftest" = 0 ] || exit 1

# The tree.
set --
for f in "$top"/lib/*.c "$top"/lib/*.h "$top"/lib/api/*.c "$top"/lib/api/*.h \
    "$top"/httpd/*.c "$top"/httpd/*.h "$top"/cgi/*.c "$top"/cgi/*.h "$top"/chatctl.c; do
    [ -f "$f" ] && set -- "$@" "$f"
done
if [ "$#" -eq 0 ] || ! grep -q 'mysql_stmt_prepare' "$@"; then
    echo "sql_prepared.sh: no sources with mysql_stmt_prepare under $top: nothing was checked"
    exit 1
fi
if ! scan "$@"; then
    echo "SQL outside prepared statements (above): prepare it, and pass the data as parameters"
    exit 1
fi
echo "sql_prepared.sh: $# files, SQL only in prepared statements"
