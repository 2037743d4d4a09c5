"""Raw-socket HTTP helpers for the abuse and hardening tests.

Standard library only. http.client cannot send what these tests need (two
Content-Length headers, a header line of 300 KB, a request that trickles in
one byte a second, a client that never reads), nor tell whether a server
wrote anything after the response it declared: so here a request is bytes
on a socket and a response is parsed by hand.

Also: a chatd (or chat.fcgi) of the test's own, started from a copy of
node1's INI with the [server] keys a test needs (a small connection cap, a
short timeout), on a port of CHAT_FAULT_PORT_BASE+10..+19, always stopped by
its PID; and what the kernel says about a process's sockets and memory
(/proc), which is how a test tells which connections a server holds.
"""

import ctypes
import json
import os
import signal
import socket
import struct
import subprocess
import time
import urllib.parse

import chatlib

# --------------------------------------------------------------------------
# responses


class RawResponse:
    """One HTTP response read off a socket. extra holds the bytes the server
    sent after the end of this response (another response, or garbage);
    closed tells whether the server closed the connection after it."""

    def __init__(self, desc):
        self.desc = desc
        self.version = None
        self.status = None
        self.reason = ""
        self.headers = []
        self.body = b""
        self.interim = []  # statuses of 1xx responses before this one
        self.extra = b""
        self.closed = False
        self.complete = False
        self.elapsed = None
        self.raw = b""

    def header(self, name):
        name = name.lower()
        vals = [v for k, v in self.headers if k.lower() == name]
        return ", ".join(vals) if vals else None

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except Exception as e:  # noqa: BLE001
            raise AssertionError("%s: body is not JSON (%s): %r" % (self.desc, e, self.body[:300]))

    def is_json(self):
        ct = (self.header("Content-Type") or "").lower().replace(" ", "")
        return ct.startswith("application/json")

    def summary(self):
        ct = self.header("Content-Type") or "-"
        return "%s %s (%s, %d body bytes%s%s)" % (
            self.status, self.reason, ct, len(self.body), ", closed" if self.closed else "",
            ", %d bytes after it" % len(self.extra) if self.extra else "")

    def __repr__(self):
        return "<%s -> %s %r>" % (self.desc, self.status, self.body[:200])


def _parse_head(buf):
    """(version, status, reason, headers, rest) or None while incomplete."""
    i = buf.find(b"\r\n\r\n")
    if i < 0:
        return None
    lines = buf[:i].decode("iso-8859-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise AssertionError("not an HTTP status line: %r" % lines[0][:200])
    headers = []
    for h in lines[1:]:
        if ":" in h:
            k, v = h.split(":", 1)
            headers.append((k.strip(), v.strip()))
    return parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "", headers, buf[i + 4:]


def parse_response(buf, desc="response", eof=False, head_request=False):
    """Parses the first response in buf (1xx interim responses are skipped and
    listed). Returns a RawResponse, with complete False when buf ends before
    the response does (eof: the server closed, so a body without a length
    ends there)."""
    r = RawResponse(desc)
    r.raw = buf
    while True:
        head = _parse_head(buf)
        if head is None:
            return r
        r.version, r.status, r.reason, r.headers, buf = head
        if 100 <= r.status < 200 and r.status != 101:
            r.interim.append(r.status)
            r.status = None
            continue
        break
    te = (r.header("Transfer-Encoding") or "").lower()
    cl = r.header("Content-Length")
    if head_request or r.status in (204, 304):
        r.extra, r.complete = buf, True
    elif "chunked" in te:
        dec = chatlib._Chunked()
        body = dec.feed(buf)
        r.body = body
        if dec.done:
            # What follows the last chunk: the trailer section's CRLF, then
            # anything the server sent after the response.
            rest = dec.buf
            if rest.startswith(b"\r\n"):
                rest = rest[2:]
            r.extra, r.complete = rest, True
    elif cl is not None:
        n = int(cl.split(",")[0].strip())
        if len(buf) >= n:
            r.body, r.extra, r.complete = buf[:n], buf[n:], True
        else:
            r.body = buf
    else:
        r.body = buf
        r.complete = eof
    return r


def hostport(base):
    u = urllib.parse.urlsplit(base)
    return u.hostname, u.port or 80


def connect(base, timeout=5.0, rcvbuf=None):
    """A TCP connection to base; rcvbuf (bytes) is set before connecting, so
    that the window the client offers stays that small."""
    host, port = hostport(base)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect((host, port))
    return s


def exchange(base, payload, timeout=10.0, desc=None, shut_wr=False, linger=1.0):
    """Sends payload (bytes, or a list of bytes sent in order) on a fresh
    connection and reads until the server closes it, or for linger seconds
    more once the first response is complete (to catch anything sent after
    it), or until timeout. Returns a RawResponse; a server that answered
    nothing raises AssertionError. A server that resets the connection after
    answering is fine (the answer is kept)."""
    desc = desc or "%s %r" % (base, (payload if isinstance(payload, bytes) else payload[0])[:60])
    s = connect(base, timeout=timeout)
    t0 = time.monotonic()
    buf = b""
    eof = False
    try:
        try:
            for part in ([payload] if isinstance(payload, bytes) else payload):
                s.sendall(part)
            if shut_wr:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading it all
        deadline = t0 + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            buf += chunk
            if linger is not None and parse_response(buf, desc).complete:
                deadline = min(deadline, time.monotonic() + linger)
    finally:
        s.close()
    r = parse_response(buf, desc, eof=eof)
    r.closed = eof
    r.elapsed = time.monotonic() - t0
    if r.status is None:
        raise AssertionError("%s: no response within %.1f s (%s; got %r)" % (
            desc, timeout, "connection closed" if eof else "still open", buf[:200]))
    return r


def request_bytes(method, path, headers=None, body=None, host="127.0.0.1"):
    """A request as bytes, headers in the order given (a list of pairs may
    repeat a name); Content-Length is added for a body unless a header of
    that name (or Transfer-Encoding) is already there."""
    hs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in hs}
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        hs.append(("Content-Length", str(len(body))))
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % host]
    lines += ["%s: %s" % (k, v) for k, v in hs]
    out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return out + (body or b"")


def chunked(body, size=4000):
    """body in chunked transfer coding, chunks of size bytes."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                   for i in range(0, len(body), size))
    return out + b"0\r\n\r\n"


def check_all(cases, fn):
    """Runs fn on each case and gathers the failures into one."""
    failures = []
    for case in cases:
        try:
            fn(*case)
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "%d failures:\n" % len(failures) + "\n".join(failures)


def assert_clean(r, statuses, json_error=False, code=None):
    """A clean error: one of statuses, a complete response and nothing after
    it; with json_error, the API's {"error": {"code", "message"}} body in
    application/json (and code, when given)."""
    assert r.status in statuses, "%s: status %s, want one of %s: %s %r" % (
        r.desc, r.status, sorted(statuses), r.summary(), r.body[:300])
    assert r.complete, "%s: the response is cut short: %s %r" % (r.desc, r.summary(), r.raw[:300])
    assert not r.extra, "%s: %d bytes after the response it declared (a second response?): %r" % (
        r.desc, len(r.extra), r.extra[:300])
    if json_error:
        assert r.is_json(), "%s: error is not JSON: %s %r" % (r.desc, r.summary(), r.body[:300])
        j = r.json()
        e = j.get("error") if isinstance(j, dict) else None
        assert isinstance(e, dict) and isinstance(e.get("code"), str) and e.get("message"), \
            "%s: not the API's error body: %r" % (r.desc, j)
        if code is not None:
            assert e["code"] == code, "%s: error code %r, want %r" % (r.desc, e["code"], code)
    return r


# --------------------------------------------------------------------------
# what the kernel knows about a server process


def socket_inodes(pid):
    out = set()
    d = "/proc/%d/fd" % pid
    for fd in os.listdir(d):
        try:
            link = os.readlink(os.path.join(d, fd))
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def _tcp_rows():
    rows = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    p = line.split()
                    local, remote, state, inode = p[1], p[2], p[3], int(p[9])
                    rows.append((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16),
                                 state, inode))
        except OSError:
            pass
    return rows


def held_connections(pid, port):
    """The client ports of the TCP connections to port that process pid has
    accepted and not yet closed. (Connections the kernel completed but the
    server has not accepted wait in the listen queue, with no descriptor:
    they are not counted.)"""
    inodes = socket_inodes(pid)
    return {remote for local, remote, state, inode in _tcp_rows()
            if local == port and state != "0A" and inode in inodes}


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def pid_of_node(n):
    """The pid of the stack's chatd node n (1 or 2), from its pid file."""
    with open(chatlib.env("CHAT_NODE%d_PIDFILE" % n)) as f:
        return int(f.read().strip())


def nofile_limit():
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------
# a server of the test's own


def _die_with_parent():
    """In the child before exec: SIGKILL when the test process dies, so that
    a test killed by run.py's time bound leaves no server running."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


def _port_free(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return False  # something answers there
    except OSError:
        pass
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def own_port():
    """A free port of this test's range, CHAT_FAULT_PORT_BASE+10..+19."""
    base = int(chatlib.env("CHAT_FAULT_PORT_BASE"))
    for port in range(base + 10, base + 20):
        if _port_free(port):
            return port
    raise AssertionError("no free port in %d..%d" % (base + 10, base + 19))


def read_ini(path):
    """[(section, [(key, value)])] in file order; comments dropped."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if not s or s.startswith((";", "#")):
                continue
            if s.startswith("[") and s.endswith("]"):
                out.append((s[1:-1], []))
            elif "=" in s and out:
                k, v = s.split("=", 1)
                out[-1][1].append((k.strip(), v.strip()))
    return out


def write_ini(path, sections):
    with open(path, "w", encoding="utf-8") as f:
        for sec, kvs in sections:
            f.write("[%s]\n" % sec)
            for k, v in kvs:
                f.write("%s = %s\n" % (k, v))
            f.write("\n")


def san_env():
    """The environment of the stack's sanitizer builds (CHAT_SAN_ENV)."""
    e = dict(os.environ)
    for kv in os.environ.get("CHAT_SAN_ENV", "").split():
        if "=" in kv:
            k, v = kv.split("=", 1)
            e[k] = v
    return e


class OwnServer:
    """chatd (or chat.fcgi, fcgi=True) from CHAT_BUILD_DIR with a copy of the
    stack's node1.ini (same MySQL, Redis and channel prefix) and the given
    overrides {section: {key: value}}, on a port of its own, with its own
    node_id. The log is a file in the stack's state folder. Use it as a
    context manager: the process is always stopped by its PID (SIGTERM,
    then SIGKILL), its log is printed when the test fails, and a sanitizer
    report in the log fails the test."""

    def __init__(self, name, overrides=None, fcgi=False, wait_ready=True, may_exit=False):
        self.name = name
        self.overrides = overrides or {}
        self.fcgi = fcgi
        self.wait_ready = wait_ready
        self.may_exit = may_exit  # exiting by itself is an outcome the test checks
        self.port = None
        self.proc = None
        self.log_path = None
        self.ini_path = None
        self.exit_code = None

    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def pid(self):
        return self.proc.pid

    def start(self, timeout=30.0):
        self.port = own_port()
        secs = read_ini(os.path.join(chatlib.env("CHAT_STACK_DIR"), "node1.ini"))
        ov = {"server": {"port": str(self.port), "node_id": "%s-%d" % (self.name, self.port)}}
        if self.fcgi:
            ov["fcgi"] = {"listen": "127.0.0.1:%d" % self.port}
        for sec, kv in self.overrides.items():
            ov.setdefault(sec, {}).update({k: str(v) for k, v in kv.items()})
        names = [s for s, _ in secs]
        for sec, kv in ov.items():
            if sec not in names:
                secs.append((sec, []))
                names.append(sec)
            kvs = secs[names.index(sec)][1]
            for k, v in kv.items():
                for i, (k0, _) in enumerate(kvs):
                    if k0 == k:
                        kvs[i] = (k, v)
                        break
                else:
                    kvs.append((k, v))
        state = chatlib.env("CHAT_STACK_DIR")
        stem = os.path.join(state, "own-%s-%d" % (self.name, self.port))
        self.ini_path, self.log_path = stem + ".ini", stem + ".log"
        old = os.umask(0o077)
        try:
            write_ini(self.ini_path, secs)
        finally:
            os.umask(old)
        binary = os.path.join(chatlib.env("CHAT_BUILD_DIR"), "cgi/chat.fcgi" if self.fcgi else "httpd/chatd")
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen([binary, "-c", self.ini_path], stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.STDOUT, env=san_env(),
                                         preexec_fn=_die_with_parent)
        if self.wait_ready:
            self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("own %s exited (%s) while starting: %s" % (
                    self.name, self.proc.returncode, self.log_tail()))
            try:
                if self.fcgi:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                if chatlib.get(self.base, "/healthz", timeout=2).status == 200:
                    return
            except (OSError, AssertionError):
                pass
            if time.monotonic() >= deadline:
                raise AssertionError("own %s did not come up within %.0f s: %s" % (
                    self.name, timeout, self.log_tail()))
            time.sleep(0.1)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def log_tail(self, n=4000):
        """The end of the log, without the LeakSanitizer report at exit
        (chatstack counts leaks as warnings, and it would hide the rest)."""
        text = self.log_text()
        i = text.find("ERROR: LeakSanitizer")
        if i >= 0:
            i = text.rfind("\n", 0, i) + 1
            text = text[:i] + "(LeakSanitizer report at exit left out)\n"
        return text[-n:] or "(empty log)"

    def held(self):
        """Client ports of the connections this server holds now."""
        return held_connections(self.pid, self.port)

    def rss_kb(self):
        return rss_kb(self.pid)

    def stop(self):
        """SIGTERM by PID, SIGKILL after 15 s; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.exit_code = self.proc.returncode
        return self.exit_code

    def sanitizer_report(self):
        text = self.log_text()
        for marker in ("ERROR: AddressSanitizer", "runtime error:"):
            i = text.find(marker)
            if i >= 0:
                return text[max(0, i - 200):i + 3000]
        return None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type, exc, tb):
        was_alive = self.alive()
        self.stop()
        _unlink(self.ini_path)  # it holds the stack's secrets
        if exc_type is not None:
            print("---- own %s log (%s) ----\n%s" % (self.name, self.log_path, self.log_tail()))
            return False
        report = self.sanitizer_report()
        assert report is None, "own %s: a sanitizer report in %s:\n%s" % (self.name, self.log_path, report)
        assert was_alive or self.may_exit, "own %s died during the test (exit %s): %s" % (
            self.name, self.exit_code, self.log_tail())
        _unlink(self.log_path)  # kept only when something went wrong
        return False


def _unlink(path):
    try:
        if path:
            os.unlink(path)
    except OSError:
        pass


# --------------------------------------------------------------------------
# many connections


def open_idle(base, n, timeout=5.0):
    """n connections to base that send nothing. Connecting succeeds once the
    kernel completes the handshake, whether or not the server has accepted."""
    socks = []
    try:
        for _ in range(n):
            socks.append(connect(base, timeout=timeout))
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def abort(s):
    """Closes s with a RST (SO_LINGER 0): nothing lingers on either side."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


def local_port(s):
    return s.getsockname()[1]


def peer_closed(s):
    """True when the server has closed (or reset) the connection s; reads
    and drops whatever it sent before that. Never blocks."""
    s.setblocking(False)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def timed(fn):
    t0 = time.monotonic()
    v = fn()
    return v, time.monotonic() - t0


def percentile(values, p):
    v = sorted(values)
    if not v:
        return None
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[k]
