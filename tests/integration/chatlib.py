"""Helpers for the integration suite: environment, tokens, HTTP, SSE, metrics.

Standard library only. Every wait is bounded; every helper that can fail
raises AssertionError (or an OSError from the network) with a message that
names the request, so a failing test says what the server did.
"""

import base64
import configparser
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.parse

# --------------------------------------------------------------------------
# environment


def env(name):
    v = os.environ.get(name)
    if not v:
        raise AssertionError("environment variable %s is not set (run through ./chatstack test)" % name)
    return v.rstrip("/")


def node(n):
    """Base URL for node n (1..5): nodes 3-5 are always chatd itself; nodes
    1 and 2 are the door under test (CHAT_DOOR): chatd node1 and node2, or
    the same front (lighttpd or Apache) for both."""
    return env("CHAT_NODE%d" % n)


def server_mysql():
    """The [mysql] section of node 1's config: the servers' account."""
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(os.environ["CHAT_NODE_CONF1"])
    return ini["mysql"]


def server_sql(sql):
    """Runs sql with the mariadb client as the servers' account; returns
    (exit code, output with tab-separated columns and no headers)."""
    m = server_mysql()
    # The password in a config on a pipe, not on the command line.
    cnf = "[client]\nuser=%s\npassword=%s\nhost=%s\nport=%s\n" % (
        m["user"], m["password"], m["host"], m["port"])
    r, w = os.pipe()
    os.write(w, cnf.encode())
    os.close(w)
    try:
        p = subprocess.run(["mariadb", "--defaults-file=/dev/fd/%d" % r, m["database"], "-N", "-e", sql],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(r,), timeout=20)
    finally:
        os.close(r)
    return p.returncode, p.stdout.decode("utf-8", "replace")


def front():
    """The front door of this run: lighttpd, or Apache in the Apache run."""
    return env("CHAT_FRONT")


def door():
    """The door this run of the suite goes through: chatd, lighttpd or apache."""
    return os.environ.get("CHAT_DOOR", "chatd")


def via_front():
    return door() != "chatd"


def chatd(n):
    """Base URL of chatd node n (1 or 2) itself, whatever the door: for what
    only a node can tell (its own gauges), or a test that kills it."""
    return env("CHAT_CHATD%d" % n) if os.environ.get("CHAT_CHATD%d" % n) else node(n)


def lighttpd():
    return env("CHAT_LIGHTTPD")


def apache():
    return env("CHAT_APACHE")


def other_door(n):
    """Where to POST so that a message crosses from another door into this
    one: the other front (Apache for lighttpd, lighttpd for Apache), or
    chatd node n for the chatd door."""
    return {"lighttpd": apache, "apache": lighttpd}.get(door(), lambda: chatd(n))()


class Skip(Exception):
    """Raised by skip(); run.py reports the test as SKIP with the reason."""


def skip(reason):
    raise Skip(reason)


def secret():
    return os.environ.get("CHAT_JWT_SECRET") or env("CHAT_JWT_SECRET")


# Values the harness configures on the test nodes (see the brief).
KEEPALIVE_S = float(os.environ.get("CHAT_TEST_KEEPALIVE", "2"))
ACK_TIMEOUT_S = float(os.environ.get("CHAT_TEST_ACK_TIMEOUT", "1"))


def uid(prefix):
    """A fresh user id, unique per call, e.g. alice_1a2b3c4d."""
    return "%s_%s" % (prefix, secrets.token_hex(5))


def now_ms():
    return int(time.time() * 1000)


# --------------------------------------------------------------------------
# tokens


def b64url(b):
    if isinstance(b, str):
        b = b.encode("utf-8")
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def jwt(claims, key=None, alg="HS256", header=None, signature=None):
    """Builds a JWT. header overrides the default header; signature (a str)
    replaces the computed one (e.g. "" for alg=none)."""
    if header is None:
        header = {"alg": alg, "typ": "JWT"}
    h = b64url(json.dumps(header, separators=(",", ":")))
    p = b64url(json.dumps(claims, separators=(",", ":")))
    signing_input = (h + "." + p).encode("ascii")
    if signature is None:
        k = (key if key is not None else secret()).encode("utf-8")
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        signature = b64url(hmac.new(k, signing_input, digest).digest())
    return h + "." + p + "." + signature


def token(user, ttl=3600):
    return jwt({"sub": user, "exp": int(time.time()) + ttl})


# --------------------------------------------------------------------------
# plain HTTP


class Resp:
    def __init__(self, desc, status, reason, headers, body, elapsed):
        self.desc = desc
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value)
        self.body = body
        self.elapsed = elapsed
        self._json = None

    def header(self, name):
        name = name.lower()
        vals = [v for k, v in self.headers if k.lower() == name]
        if not vals:
            return None
        return ", ".join(vals)

    def json(self):
        if self._json is None:
            try:
                self._json = json.loads(self.body.decode("utf-8"))
            except Exception as e:  # noqa: BLE001
                raise AssertionError("%s: body is not JSON (%s): %r" % (self.desc, e, self.body[:500]))
        return self._json

    def __repr__(self):
        return "<%s -> %s %r>" % (self.desc, self.status, self.body[:300])


def _split(base):
    u = urllib.parse.urlsplit(base)
    return u.hostname, u.port or 80, u.path.rstrip("/")


def request(base, method, path, body=None, token=None, headers=None, timeout=15,
            content_type="application/json"):
    """One HTTP request on a fresh connection. body: dict/list (sent as JSON
    with content_type unless that is None), bytes/str (sent raw, with
    content_type unless it is None) or None."""
    host, port, prefix = _split(base)
    hdrs = {}
    data = None
    if body is not None:
        if isinstance(body, (dict, list)):
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        elif isinstance(body, str):
            data = body.encode("utf-8")
        else:
            data = body
        if content_type is not None:
            hdrs["Content-Type"] = content_type
    if token is not None:
        hdrs["Authorization"] = "Bearer " + token
    if headers:
        hdrs.update(headers)
    desc = "%s %s%s" % (method, base, path)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    t0 = time.monotonic()
    try:
        try:
            conn.request(method, prefix + path, body=data, headers=hdrs)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (e.g. 413) before reading it all
        r = conn.getresponse()
        payload = r.read()
        return Resp(desc, r.status, r.reason, r.getheaders(), payload, time.monotonic() - t0)
    except socket.timeout:
        raise AssertionError("%s: no answer within %s s" % (desc, timeout))
    finally:
        conn.close()


def get(base, path, token=None, **kw):
    return request(base, "GET", path, token=token, **kw)


def post(base, path, body, token=None, **kw):
    return request(base, "POST", path, body=body, token=token, **kw)


def expect(resp, status):
    assert resp.status == status, "%s: expected %d, got %d %r" % (resp.desc, status, resp.status, resp.body[:500])
    return resp


def expect_json(resp, status):
    expect(resp, status)
    ct = (resp.header("Content-Type") or "").lower()
    assert ct.startswith("application/json"), "%s: Content-Type %r, want application/json" % (resp.desc, ct)
    return resp.json()


def assert_error(resp, status, code):
    """Checks an error answer: status, JSON content type with utf-8 charset,
    {"error": {"code": code, "message": non-empty string}}."""
    assert resp.status == status, "%s: expected %d %s, got %d %r" % (
        resp.desc, status, code, resp.status, resp.body[:500])
    ct = (resp.header("Content-Type") or "").lower().replace(" ", "")
    assert ct.startswith("application/json") and "charset=utf-8" in ct, \
        "%s: error Content-Type %r, want application/json; charset=utf-8" % (resp.desc, ct)
    j = resp.json()
    assert isinstance(j, dict) and isinstance(j.get("error"), dict), "%s: error body %r" % (resp.desc, j)
    assert j["error"].get("code") == code, "%s: error code %r, want %r (body %r)" % (
        resp.desc, j["error"].get("code"), code, j)
    msg = j["error"].get("message")
    assert isinstance(msg, str) and msg, "%s: error message missing in %r" % (resp.desc, j)
    return j["error"]


def assert_retry_after(resp):
    ra = resp.header("Retry-After")
    assert ra is not None, "%s: %d without Retry-After header" % (resp.desc, resp.status)
    assert re.fullmatch(r"[0-9]+", ra.strip()), "%s: Retry-After %r is not whole seconds" % (resp.desc, ra)
    assert int(ra) >= 1, "%s: Retry-After %r should be at least 1" % (resp.desc, ra)
    return int(ra)


# --------------------------------------------------------------------------
# API shortcuts


def send(base, frm, to, body, client_msg_id=None, expect_status=201):
    msg = {"to": to, "body": body}
    if client_msg_id is not None:
        msg["client_msg_id"] = client_msg_id
    r = post(base, "/v1/messages", msg, token=token(frm))
    j = expect_json(r, expect_status)
    if expect_status in (200, 201):
        assert isinstance(j.get("message_id"), str) and j["message_id"], "%s: message_id %r" % (r.desc, j)
    return j


def get_message(base, user, message_id):
    r = get(base, "/v1/messages/" + urllib.parse.quote(message_id, safe=""), token=token(user))
    return r


def inbox(base, user, status=None, after=None, limit=None):
    q = {}
    if status is not None:
        q["status"] = status
    if after is not None:
        q["after"] = str(after)
    if limit is not None:
        q["limit"] = str(limit)
    path = "/v1/inbox" + ("?" + urllib.parse.urlencode(q) if q else "")
    j = expect_json(get(base, path, token=token(user)), 200)
    assert isinstance(j.get("items"), list), "inbox body %r" % j
    return j


def inbox_all_pages(base, user, status="all", limit=50):
    """Every item of the user's inbox, following next_after/more."""
    items = []
    after = 0
    for _ in range(10000):
        j = inbox(base, user, status=status, after=after, limit=limit)
        items.extend(j["items"])
        if j["items"]:
            assert j["next_after"] == j["items"][-1]["seq"], "next_after %r vs last seq" % j
        if not j["more"]:
            return items
        assert j["items"], "more=true with no items: %r" % j
        after = j["next_after"]
    raise AssertionError("inbox paging did not end")


def recipient_status(base, user, message_id, recipient):
    j = expect_json(get_message(base, user, message_id), 200)
    for r in j.get("recipients", []):
        if r.get("user") == recipient:
            return r
    raise AssertionError("GET /v1/messages/%s: no recipient %s in %r" % (message_id, recipient, j))


def wait_until(fn, timeout, what, interval=0.05):
    """Calls fn until it returns a truthy value or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1f s waiting for %s (last: %r)" % (timeout, what, last))
        time.sleep(interval)


def wait_delivered(base, user, message_id, recipient, timeout=5.0):
    def check():
        r = recipient_status(base, user, message_id, recipient)
        return r if r.get("status") == "delivered" else None
    return wait_until(check, timeout, "message %s to %s to show delivered" % (message_id, recipient))


# --------------------------------------------------------------------------
# metrics


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def metrics(base):
    r = get(base, "/metrics")
    expect(r, 200)
    out = {}
    for line in r.body.decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line)
        if not m:
            continue
        try:
            v = float(m.group(3))
        except ValueError:
            continue
        out[m.group(1)] = out.get(m.group(1), 0.0) + v
    return out


def metric(base, name):
    m = metrics(base)
    assert name in m, "metric %s not in GET %s/metrics (have: %s)" % (name, base, ", ".join(sorted(m)))
    return m[name]


def streams_open():
    """chat_streams_open of chatd node1 and node2 themselves: {1: n, 2: n}
    (None for a node that does not answer)."""
    out = {}
    for n in (1, 2):
        try:
            out[n] = metric(chatd(n), "chat_streams_open")
        except OSError:
            out[n] = None
    return out


def open_and_locate(base, user, **kw):
    """Opens a stream through base and tells which chatd node holds it, from
    the nodes' chat_streams_open: the node whose gauge grows. The suite runs
    one test at a time, so no other stream opens meanwhile, but one that
    closed just before may still be leaving (a front notices a closed client
    late) and hide the growth on its node: then another stream of the same
    kind is opened and looked for. Returns (stream, node number, streams)
    where streams are all that were opened (the first is returned); the
    caller closes them all."""
    opened = []
    try:
        for _ in range(5):
            before = streams_open()
            assert None not in before.values(), "a chatd node does not answer: %r" % before
            s = stream(base, user, **kw)
            opened.append(s)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                now = streams_open()
                grown = [n for n in (1, 2) if now[n] is not None and now[n] > before[n]]
                if len(grown) == 1:
                    return opened[0], grown[0], opened
                assert len(grown) < 2, "both nodes' chat_streams_open grew for one stream: %r -> %r" % (
                    before, now)
                time.sleep(0.05)
    except BaseException:
        for x in opened:
            x.close()
        raise
    for x in opened:
        x.close()
    raise AssertionError("%s: opened %d streams and no chatd node's chat_streams_open grew" % (
        base, len(opened)))


# --------------------------------------------------------------------------
# chatd node processes, for the test that kills one (./chatstack test gives
# CHAT_NODEn_PIDFILE, CHAT_NODEn_LOG and CHAT_NODEn_ARGV, a NUL-separated
# command line)


def _node_pid(n):
    try:
        with open(env("CHAT_NODE%d_PIDFILE" % n)) as f:
            pid = int(f.read().strip())
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmd = f.read()
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError):
        return None
    return pid if b"chatd" in cmd and state != "Z" else None


def kill_node(n):
    """SIGKILLs chatd node n, as a crash would, and waits until it is gone."""
    pid = _node_pid(n)
    assert pid, "chatd node%d is not running (pid file %s)" % (n, env("CHAT_NODE%d_PIDFILE" % n))
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: _node_pid(n) is None, 10, "chatd node%d (pid %d) to die" % (n, pid))

    def refused():
        try:
            get(chatd(n), "/healthz", timeout=1)
        except (OSError, AssertionError):
            return True
        return False
    wait_until(refused, 10, "chatd node%d to stop answering" % n)
    return pid


def start_node(n):
    """Starts chatd node n again with its command line, its output appended
    to its log and its pid in its pid file (so that ./chatstack stops it),
    in a session of its own so that it outlives this test; waits for its
    /healthz."""
    if _node_pid(n):
        return
    with open(env("CHAT_NODE%d_ARGV" % n), "rb") as f:
        argv = [a.decode() for a in f.read().split(b"\0") if a]
    with open(env("CHAT_NODE%d_LOG" % n), "ab") as logf:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                             start_new_session=True)
    with open(env("CHAT_NODE%d_PIDFILE" % n), "w") as f:
        f.write("%d\n" % p.pid)

    def up():
        if p.poll() is not None:
            raise AssertionError("chatd node%d exited (%s) as it restarted; see %s" % (
                n, p.returncode, env("CHAT_NODE%d_LOG" % n)))
        try:
            return get(chatd(n), "/healthz", timeout=1).status == 200
        except (OSError, AssertionError):
            return False
    wait_until(up, 30, "chatd node%d to answer /healthz after its restart" % n, interval=0.1)


# --------------------------------------------------------------------------
# SSE


class SSEEvent:
    __slots__ = ("type", "id", "last_event_id", "data", "t", "_json")

    def __init__(self, type_, id_, last_event_id, data, t):
        self.type = type_
        self.id = id_  # the id field of this very frame, or None
        self.last_event_id = last_event_id
        self.data = data
        self.t = t
        self._json = None

    def json(self):
        if self._json is None:
            try:
                self._json = json.loads(self.data)
            except Exception as e:  # noqa: BLE001
                raise AssertionError("SSE %s event data is not JSON (%s): %r" % (self.type, e, self.data[:500]))
        return self._json

    @property
    def seq(self):
        return self.json()["seq"]

    def __repr__(self):
        return "<SSE %s id=%r %s>" % (self.type, self.id, self.data[:200])


class _Chunked:
    """Incremental decoder of HTTP/1.1 chunked transfer coding."""

    def __init__(self):
        self.buf = b""
        self.remaining = None  # None: expecting a size line; 0: expecting CRLF
        self.done = False

    def feed(self, data):
        self.buf += data
        out = []
        while not self.done:
            if self.remaining is None:
                i = self.buf.find(b"\r\n")
                if i < 0:
                    break
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.done = True
                    break
                self.remaining = size
            elif self.remaining > 0:
                take = self.buf[:self.remaining]
                if not take:
                    break
                out.append(take)
                self.buf = self.buf[len(take):]
                self.remaining -= len(take)
            else:
                if len(self.buf) < 2:
                    break
                if self.buf[:2] != b"\r\n":
                    raise ValueError("bad chunk terminator %r" % self.buf[:10])
                self.buf = self.buf[2:]
                self.remaining = None
        return b"".join(out)


_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSEParser:
    """Event stream interpretation per WHATWG HTML 9.2.6."""

    def __init__(self, on_event, on_comment, on_field):
        self.buf = b""
        self.first = True
        self.data = []
        self.event_type = ""
        self.id_field = None
        self.last_event_id = ""
        self.retry = None
        self.on_event = on_event
        self.on_comment = on_comment
        self.on_field = on_field

    def feed(self, data):
        if self.first and data:
            self.buf += data
            if len(self.buf) < 3 and b"\xef\xbb\xbf".startswith(self.buf):
                return
            if self.buf.startswith(b"\xef\xbb\xbf"):
                self.buf = self.buf[3:]
            self.first = False
        else:
            self.buf += data
        while True:
            m = _LINE_END.search(self.buf)
            if not m:
                return
            if m.group() == b"\r" and m.end() == len(self.buf):
                return  # maybe the CR of a CRLF split across reads
            line, self.buf = self.buf[:m.start()], self.buf[m.end():]
            self._line(line.decode("utf-8", "replace"))

    def _line(self, line):
        if line == "":
            self._dispatch()
            return
        if line.startswith(":"):
            self.on_comment(line[1:])
            return
        if ":" in line:
            name, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            name, value = line, ""
        self.on_field(name, value)
        if name == "event":
            self.event_type = value
        elif name == "data":
            self.data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
                self.id_field = value
        elif name == "retry":
            if value.isdigit():
                self.retry = int(value)

    def _dispatch(self):
        id_field, self.id_field = self.id_field, None
        if not self.data:
            self.event_type = ""
            return
        data = "\n".join(self.data)
        etype = self.event_type or "message"
        self.data = []
        self.event_type = ""
        self.on_event(SSEEvent(etype, id_field, self.last_event_id, data, time.monotonic()))


class SSEStream:
    """A raw-socket EventSource. open() connects, sends the request and reads
    the status and headers; for a 200 a thread then parses the stream into
    .events / .comments / .fields. For any other status .resp holds the whole
    answer (a Resp) and no thread runs."""

    def __init__(self, base, user=None, tok=None, access_token=None, last_event_id=None,
                 query_last_event_id=None, path="/v1/events", headers=None, query=None):
        self.base = base
        host, port, prefix = _split(base)
        self.host, self.port = host, port
        q = dict(query or {})
        if access_token is not None:
            q["access_token"] = access_token
        if query_last_event_id is not None:
            q["last_event_id"] = str(query_last_event_id)
        self.path = prefix + path + ("?" + urllib.parse.urlencode(q) if q else "")
        self.req_headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if tok is None and user is not None and access_token is None:
            tok = token(user)
        if tok is not None:
            self.req_headers["Authorization"] = "Bearer " + tok
        if last_event_id is not None:
            self.req_headers["Last-Event-ID"] = str(last_event_id)
        if headers:
            self.req_headers.update(headers)
        self.desc = "GET %s%s" % (base, path)
        self.sock = None
        self.status = None
        self.headers = []
        self.resp = None
        self.events = []
        self.comments = []  # (time, text)
        self.fields = []  # (name, value) in order, first frames included
        self.cond = threading.Condition()
        self.ended = False
        self.error = None
        self._stop = False
        self._thread = None
        self.opened_at = None

    # ---- connection

    def open(self, timeout=5.0):
        self.sock = socket.create_connection((self.host, self.port), timeout=timeout)
        self.opened_at = time.monotonic()
        lines = ["GET %s HTTP/1.1" % self.path, "Host: %s:%d" % (self.host, self.port)]
        lines += ["%s: %s" % kv for kv in self.req_headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in buf:
            if time.monotonic() > deadline:
                raise AssertionError("%s: no response headers within %s s" % (self.desc, timeout))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError("%s: no response headers within %s s" % (self.desc, timeout))
            if not chunk:
                raise AssertionError("%s: connection closed before response headers (%r)" % (self.desc, buf[:300]))
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        hl = head.decode("iso-8859-1").split("\r\n")
        parts = hl[0].split(" ", 2)
        self.status = int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        for h in hl[1:]:
            if ":" in h:
                k, v = h.split(":", 1)
                self.headers.append((k.strip(), v.strip()))
        chunked = "chunked" in (self.header("Transfer-Encoding") or "").lower()
        self._dechunk = _Chunked() if chunked else None
        if self.status != 200:
            body = self._read_whole(rest, timeout)
            self.resp = Resp(self.desc, self.status, reason, self.headers, body, time.monotonic() - self.opened_at)
            self._close_socket()
            self.ended = True
            return self
        self.parser = SSEParser(self._on_event, self._on_comment, self._on_field)
        self.sock.settimeout(0.25)
        self._thread = threading.Thread(target=self._run, args=(rest,), daemon=True)
        self._thread.start()
        return self

    def _read_whole(self, rest, timeout):
        cl = self.header("Content-Length")
        out = b""
        dec = self._dechunk
        data = rest
        deadline = time.monotonic() + timeout
        while True:
            out += dec.feed(data) if dec else data
            if dec and dec.done:
                return out
            if cl is not None and len(out) >= int(cl):
                return out[:int(cl)]
            if time.monotonic() > deadline:
                return out
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return out
            if not data:
                return out

    def header(self, name):
        name = name.lower()
        vals = [v for k, v in self.headers if k.lower() == name]
        return ", ".join(vals) if vals else None

    def _run(self, rest):
        try:
            data = rest
            while True:
                if data:
                    payload = self._dechunk.feed(data) if self._dechunk else data
                    if payload:
                        self.parser.feed(payload)
                    if self._dechunk and self._dechunk.done:
                        break
                if self._stop:
                    break
                try:
                    data = self.sock.recv(65536)
                except socket.timeout:
                    data = b""
                    continue
                if not data:
                    break
        except OSError as e:
            if not self._stop:
                self.error = e
        except Exception as e:  # noqa: BLE001
            self.error = e
        finally:
            with self.cond:
                self.ended = True
                self.cond.notify_all()

    def _on_event(self, ev):
        with self.cond:
            self.events.append(ev)
            self.cond.notify_all()

    def _on_comment(self, text):
        with self.cond:
            self.comments.append((time.monotonic(), text))
            self.cond.notify_all()

    def _on_field(self, name, value):
        with self.cond:
            self.fields.append((name, value))
            self.cond.notify_all()

    def _close_socket(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass

    def close(self):
        """Closes the connection (FIN) and stops the reader."""
        self._stop = True
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(3)
        self._close_socket()

    def abort(self):
        """Closes the connection abortively (RST, SO_LINGER 0)."""
        self._stop = True
        if self.sock is not None:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.sock.shutdown(socket.SHUT_RD)  # wakes the reader, sends nothing
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(3)
        self._close_socket()

    def __enter__(self):
        if self.sock is None:
            self.open()
        return self

    def __exit__(self, *a):
        self.close()

    # ---- reading

    def expect_ok(self):
        assert self.status == 200, "%s: expected a 200 stream, got %s %r" % (
            self.desc, self.status, self.resp.body[:500] if self.resp else b"")
        return self

    def snapshot(self):
        with self.cond:
            return list(self.events)

    def messages(self):
        return [e for e in self.snapshot() if e.type == "message"]

    def receipts(self):
        return [e for e in self.snapshot() if e.type == "receipt"]

    def wait_for(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = pred()
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("%s: timed out after %.1f s waiting for %s; events so far: %r%s" % (
                        self.desc, timeout, what, self.events[-10:],
                        " (stream ended: %r)" % self.error if self.ended else ""))
                if self.ended:
                    v = pred()
                    if v:
                        return v
                    raise AssertionError("%s: stream ended (%r) while waiting for %s; events: %r" % (
                        self.desc, self.error, what, self.events[-10:]))
                self.cond.wait(min(left, 0.25))

    def wait_messages(self, n, timeout=5.0):
        """Waits until at least n message events arrived; returns them all."""
        def pred():
            ms = [e for e in self.events if e.type == "message"]
            return ms if len(ms) >= n else None
        return self.wait_for(pred, timeout, "%d message event(s)" % n)

    def wait_message_id(self, message_id, timeout=5.0):
        def pred():
            for e in self.events:
                if e.type == "message" and e.json().get("message_id") == message_id:
                    return e
            return None
        return self.wait_for(pred, timeout, "message event for %s" % message_id)

    def wait_receipt(self, message_id, timeout=5.0):
        def pred():
            for e in self.events:
                if e.type == "receipt" and e.json().get("message_id") == message_id:
                    return e
            return None
        return self.wait_for(pred, timeout, "receipt for %s" % message_id)

    def wait_connected(self, timeout=5.0):
        """Waits for the first frame (retry:), which tells the stream is set up."""
        self.expect_ok()
        return self.wait_for(lambda: self.fields or self.events or self.comments, timeout,
                             "the first frame (retry:)")


def stream(base, user=None, **kw):
    """Opens an SSE stream, checks it is a 200 and waits for its first frame."""
    s = SSEStream(base, user, **kw).open()
    s.wait_connected()
    return s


def check_item(item, frm, to, body, message_id=None):
    """Checks an inbox/stream item carries the message as sent."""
    assert isinstance(item.get("seq"), int) and item["seq"] > 0, "item seq %r" % item
    assert item.get("from") == frm, "item from %r, want %r: %r" % (item.get("from"), frm, item)
    assert item.get("to") == to, "item to %r, want %r: %r" % (item.get("to"), to, item)
    assert item.get("body") == body, "item body %r, want %r" % (item.get("body"), body)
    assert "chat" in item and item["chat"] is None, "item chat should be null: %r" % item
    assert isinstance(item.get("ts"), int), "item ts %r" % item
    assert item.get("status") in ("pending", "delivered"), "item status %r" % item
    if message_id is not None:
        assert item.get("message_id") == message_id, "item message_id %r, want %r" % (
            item.get("message_id"), message_id)
