"""Helpers for blocks, stream tickets, presence and the push hook: API
shortcuts, a chatd node of the test's own (a copy of node1's INI with
overrides) and a webhook receiver on loopback.

Standard library only; every wait is bounded.
"""

import configparser
import http.server
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse

from chatlib import KEEPALIVE_S, env, expect_json, get, post, request, token

# --------------------------------------------------------------------------
# blocks


def q(s):
    return urllib.parse.quote(s, safe="")


def put_block(base, user, other):
    return request(base, "PUT", "/v1/blocks/" + q(other), token=token(user))


def delete_block(base, user, other):
    return request(base, "DELETE", "/v1/blocks/" + q(other), token=token(user))


def block(base, user, other):
    r = put_block(base, user, other)
    j = expect_json(r, 200)
    assert j == {"user": other, "blocked": True}, "%s as %s: %r" % (r.desc, user, j)
    return j


def unblock(base, user, other):
    r = delete_block(base, user, other)
    j = expect_json(r, 200)
    assert j == {"user": other, "blocked": False}, "%s as %s: %r" % (r.desc, user, j)
    return j


def blocked_list(base, user):
    r = get(base, "/v1/blocks", token=token(user))
    j = expect_json(r, 200)
    assert isinstance(j.get("blocked"), list), "%s: %r" % (r.desc, j)
    return j["blocked"]


# --------------------------------------------------------------------------
# stream tickets


def ticket_resp(base, user):
    return post(base, "/v1/events/ticket", None, token=token(user))


def new_ticket(base, user):
    """POST /v1/events/ticket -> the ticket string (shape checked)."""
    r = ticket_resp(base, user)
    j = expect_json(r, 201)
    t = j.get("ticket")
    assert isinstance(t, str) and len(t) == 32 and all(c in "0123456789abcdef" for c in t), \
        "%s: ticket %r is not 32 lowercase hex characters" % (r.desc, j)
    assert isinstance(j.get("expires_ts"), int), "%s: expires_ts %r" % (r.desc, j)
    return t


# --------------------------------------------------------------------------
# presence


def presence_resp(base, user, users):
    return get(base, "/v1/presence?users=" + users, token=token(user))


def presence(base, user, users):
    """GET /v1/presence as user for the list users -> [(user, online)], order
    and shape checked."""
    r = presence_resp(base, user, ",".join(users))
    j = expect_json(r, 200)
    ps = j.get("presence")
    assert isinstance(ps, list), "%s: %r" % (r.desc, j)
    assert [p.get("user") for p in ps] == list(users), "%s: users %r, want %r in request order" % (
        r.desc, [p.get("user") for p in ps], list(users))
    for p in ps:
        assert set(p) == {"user", "online"}, "%s: entry %r" % (r.desc, p)
        assert p["online"] in (True, False, None), "%s: online %r" % (r.desc, p)
    return [(p["user"], p["online"]) for p in ps]


def online(base, user, other):
    """other's presence as user sees it: True, False or None."""
    return presence(base, user, [other])[0][1]


# How long a stream its client closed may take to end on its node: at once
# through chatd and lighttpd (which passes the FIN on), but Apache notices
# only when a write to the client fails, which is the second keepalive
# after the close (the first is answered with a reset). Measured 3.5-4.4 s
# with 2 s keepalives; this bounds waits for "offline" after a close.
STREAM_END_S = 4.0 + 2 * KEEPALIVE_S


def wait_online(base, user, other, want, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        got = online(base, user, other)
        if got is want:
            return
        if time.monotonic() >= deadline:
            raise AssertionError("GET %s/v1/presence as %s: %s is %r after %.1f s, want %r" % (
                base, user, other, got, timeout, want))
        time.sleep(0.1)


def presence_events(s, user=None):
    """The presence events' data on stream s (about user, if given)."""
    out = []
    for e in s.snapshot():
        if e.type != "presence":
            continue
        d = e.json()
        if user is None or d.get("user") == user:
            out.append(d)
    return out


def wait_presence(s, user, want, timeout=5.0, after=0):
    """Waits for presence event number > after about user with online == want;
    checks its shape; returns it."""
    def pred():
        evs = [e for e in s.events if e.type == "presence" and e.json().get("user") == user]
        for e in evs[after:]:
            if e.json().get("online") is want:
                return e
        return None
    e = s.wait_for(pred, timeout, "a presence event %s online=%r" % (user, want))
    d = e.json()
    assert set(d) == {"user", "online", "ts"}, "presence event %r" % d
    assert isinstance(d["ts"], int) and abs(d["ts"] - time.time() * 1000) < 60000, "presence ts %r" % d
    assert e.id is None, "a presence event carries an id (%r): it would move Last-Event-ID" % e.id
    return d


# --------------------------------------------------------------------------
# a chatd node of the test's own


def _die_with_parent():
    """In the child before exec: SIGKILL when the test process dies (a test
    killed by run.py's time bound must not leave its node running, posting
    the shared database's due rows)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


class OwnNode:
    """chatd started by the test with a copy of node1's INI (same MySQL and
    Redis, same channel prefix), a free port, its own node_id, and the given
    overrides {section: {key: value}}. Use as a context manager: the process
    is always ended (by its PID), and its log is printed if the test fails."""

    def __init__(self, overrides, name="own"):
        self.overrides = overrides
        self.name = name
        self.port = None
        self.proc = None
        self.dir = None
        self.log_path = None
        self.ini_path = None

    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self, timeout=20.0):
        cp = configparser.RawConfigParser(strict=False)
        cp.optionxform = str
        with open(env("CHAT_NODE_CONF1"), encoding="utf-8") as f:
            cp.read_file(f)
        self.port = free_port()
        ov = {"server": {"port": str(self.port), "node_id": "%s%d" % (self.name, self.port)}}
        for sec, kv in self.overrides.items():
            ov.setdefault(sec, {}).update({k: str(v) for k, v in kv.items()})
        for sec, kv in ov.items():
            if not cp.has_section(sec):
                cp.add_section(sec)
            for k, v in kv.items():
                cp.set(sec, k, v)
        # In the stack's state folder when there is one (chatstack removes it).
        self.dir = tempfile.mkdtemp(prefix="own-node-", dir=os.environ.get("CHAT_STACK_DIR") or None)
        os.chmod(self.dir, 0o700)
        self.ini_path = os.path.join(self.dir, "node.ini")
        with open(self.ini_path, "w", encoding="utf-8") as f:
            cp.write(f)
        self.log_path = os.path.join(self.dir, "node.log")
        chatd = os.path.join(env("CHAT_BUILD_DIR"), "httpd", "chatd")
        logf = open(self.log_path, "wb")
        e = dict(os.environ)
        e.setdefault("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0")
        try:
            self.proc = subprocess.Popen([chatd, "-c", self.ini_path], stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.STDOUT, env=e,
                                         preexec_fn=_die_with_parent)
        finally:
            logf.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("own chatd exited (%s) while starting: %s" % (self.proc.returncode, self.log()))
            try:
                if get(self.base, "/healthz", timeout=2).status == 200:
                    return self
            except (OSError, AssertionError):
                pass
            if time.monotonic() >= deadline:
                raise AssertionError("own chatd did not answer /healthz within %.0f s: %s" % (timeout, self.log()))
            time.sleep(0.1)

    def log(self, tail=4000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-tail:]
        except OSError:
            return "(no log)"

    def kill(self):
        """SIGKILL: the node dies without any goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def cleanup(self):
        for p in (self.ini_path, self.log_path):
            try:
                if p:
                    os.unlink(p)
            except OSError:
                pass
        try:
            if self.dir:
                os.rmdir(self.dir)
        except OSError:
            pass

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            self.cleanup()
            raise

    def __exit__(self, exc_type, exc, tb):
        self.stop()
        if exc_type is not None:
            print("---- own chatd log (%s) ----\n%s" % (self.base, self.log()))
        self.cleanup()


# --------------------------------------------------------------------------
# the webhook receiver


class HookRequest:
    __slots__ = ("t", "method", "path", "headers", "body", "status")

    def __init__(self, t, method, path, headers, body, status):
        self.t, self.method, self.path, self.headers, self.body, self.status = \
            t, method, path, headers, body, status

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except Exception as e:  # noqa: BLE001
            raise AssertionError("hook body is not JSON (%s): %r" % (e, self.body[:500]))

    def header(self, name):
        return self.headers.get(name)

    def __repr__(self):
        return "<hook %s %s at %.2f -> %d %r>" % (self.method, self.path, self.t, self.status, self.body[:300])


class HookReceiver:
    """An HTTP server on 127.0.0.1 (free port) that records every request.
    It answers 200, unless plan(recipient, n) says otherwise: plan gets the
    payload's recipient and how many requests for that recipient came before
    this one, and returns a status, or ("sleep", seconds, status)."""

    def __init__(self, path="/hook", plan=None):
        self.path = path
        self.plan = plan
        self.requests = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                receiver._handle(self)

            do_GET = do_PUT = do_POST  # noqa: N815

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)

    @property
    def url(self):
        return "http://127.0.0.1:%d%s" % (self.port, self.path)

    def _handle(self, h):
        t = time.monotonic()
        n = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(n) if n else b""
        try:
            recipient = json.loads(body.decode("utf-8")).get("recipient")
        except Exception:  # noqa: BLE001
            recipient = None
        with self.cond:
            before = sum(1 for r in self.requests if _recipient(r) == recipient)
        plan = self.plan(recipient, before) if self.plan else 200
        delay = 0
        status = plan
        if isinstance(plan, tuple):
            _, delay, status = plan
        rec = HookRequest(t, h.command, h.path, {k: v for k, v in h.headers.items()}, body, status)
        with self.cond:
            self.requests.append(rec)
            self.cond.notify_all()
        if delay:
            time.sleep(delay)
        out = b'{"ok":true}' if 200 <= status < 300 else b'{"error":"try later"}'
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(out)))
            h.end_headers()
            h.wfile.write(out)
        except OSError:
            pass  # the node gave up waiting (a timeout test)

    def for_recipient(self, recipient):
        with self.cond:
            return [r for r in self.requests if _recipient(r) == recipient]

    def wait_count(self, recipient, n, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [r for r in self.requests if _recipient(r) == recipient]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("push hook: %d request(s) for %s within %.1f s, want %d: %r" % (
                        len(got), recipient, timeout, n, got))
                self.cond.wait(min(left, 0.1))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.server.shutdown()
        self.server.server_close()


def _recipient(r):
    try:
        return json.loads(r.body.decode("utf-8")).get("recipient")
    except Exception:  # noqa: BLE001
        return None
