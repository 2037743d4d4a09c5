"""Least privilege: the servers' MariaDB account reads and writes rows and
can do nothing else; the schema belongs to chat_admin (chatctl migrate)."""

import configparser
import os
import subprocess

from chatlib import door, server_mysql, server_sql, skip


def test_server_account_cannot_change_the_schema():
    if door() != "chatd":
        skip("a property of the stack's accounts; one run is enough")
    m = server_mysql()
    assert m["user"] == "chat", m["user"]
    rc, out = server_sql("SELECT COUNT(*) FROM messages")
    assert rc == 0, out
    rc, out = server_sql("SHOW GRANTS")
    assert rc == 0, out
    allowed = {"USAGE", "SELECT", "INSERT", "UPDATE", "DELETE", "EXECUTE"}
    for line in out.splitlines():
        # GRANT <privileges> ON <what> TO <who> [IDENTIFIED BY ...] [WITH GRANT OPTION]
        head, _, rest = line.partition(" ON ")
        assert head.startswith("GRANT "), line
        privs = {p.strip().upper() for p in head[len("GRANT "):].split(",")}
        assert privs <= allowed, "the chat account has %s: %s" % (sorted(privs - allowed), line)
        assert "WITH GRANT OPTION" not in rest.upper(), line
    for sql in ("CREATE TABLE t_priv (a INT)", "DROP TABLE messages", "ALTER TABLE messages ADD x INT",
                "TRUNCATE TABLE messages", "CREATE DATABASE evil", "SELECT user FROM mysql.user",
                "CREATE PROCEDURE p_priv() SELECT 1", "DROP PROCEDURE chat_send_direct"):
        rc, out = server_sql(sql)
        assert rc != 0 and "denied" in out.lower(), "%s: rc %d, %s" % (sql, rc, out)


def _redis_as_chat(*args):
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(os.environ["CHAT_NODE_CONF1"])
    r = ini["redis"]
    env = dict(os.environ, REDISCLI_AUTH=r["password"])
    p = subprocess.run(["redis-cli", "--no-auth-warning", "-h", r["host"], "-p", r["port"],
                        "--user", r["user"]] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=10)
    return p.stdout.decode("utf-8", "replace").strip()


def test_server_redis_user_has_only_pubsub_and_presence():
    if door() != "chatd":
        skip("a property of the stack's accounts; one run is enough")
    assert _redis_as_chat("PING") == "PONG"
    assert _redis_as_chat("PUBLISH", "t:user:nobody", "x").isdigit()
    assert _redis_as_chat("ZCOUNT", "t:presence:nobody", "0", "+inf") == "0"
    for cmd in (["CONFIG", "GET", "maxmemory"], ["FLUSHALL"], ["SET", "t:presence:x", "1"],
                ["KEYS", "*"], ["DEBUG", "SLEEP", "0"], ["SHUTDOWN", "NOSAVE"],
                ["ZADD", "other:key", "1", "x"], ["ACL", "LIST"], ["CLIENT", "LIST"]):
        out = _redis_as_chat(*cmd)
        assert "NOPERM" in out, "%s: %r" % (" ".join(cmd), out)
