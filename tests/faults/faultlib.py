"""Helpers of the fault tests: the test stack's processes (Redis, MariaDB,
chatd node1 and node2), chatd nodes a test starts for itself, Redis
commands, and what /proc tells about a process.

Every wait is bounded. restore_stack() puts the stack back as the tests
found it (every backend and node running and ready); each test calls it in
a finally, so a failing test does not take the next one down with it.
"""

import os
import signal
import socket
import subprocess
import time

import chatlib
from chatlib import env, get, wait_until

SOAK = os.environ.get("CHAT_SOAK", "") not in ("", "0")


def soak(default, longer):
    """default in the normal run, longer with CHAT_SOAK=1."""
    return longer if SOAK else default


def fault_port(i):
    """The i-th of the 20 ports ./chatstack test leaves to this suite."""
    assert 0 <= i < 20, i
    return int(env("CHAT_FAULT_PORT_BASE")) + i


def stack_dir():
    return env("CHAT_STACK_DIR")


def mono():
    return time.monotonic()


# --------------------------------------------------------------------------
# processes


def _argv(var):
    with open(env(var), "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def proc_state(pid):
    """The state letter of /proc/PID/stat (R, S, T, Z...), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def pid_running(pid, name):
    """True if pid is a live (not zombie) process whose command line has name."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return name.encode() in cmd and proc_state(pid) not in (None, "Z")


def pid_from_file(path, name):
    try:
        with open(path) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_running(pid, name) else None


def counts(pid):
    """(threads, open descriptors) of a process, from /proc."""
    return len(os.listdir("/proc/%d/task" % pid)), len(os.listdir("/proc/%d/fd" % pid))


def quiet_counts(pid, samples=5):
    """(threads, fds) of pid, the least of a few samples 0.1 s apart, so that
    an HTTP connection just closing does not count."""
    got = []
    for _ in range(samples):
        got.append(counts(pid))
        time.sleep(0.1)
    return min(t for t, _ in got), min(f for _, f in got)


def spawn(argv, log_path, extra_env=None):
    """Starts a service detached (a session of its own, stdin /dev/null, its
    output appended to log_path), as ./chatstack does, so that it outlives
    the test that started it."""
    # The stack's secrets stay out of the services' environment.
    e = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_") and k != "REDISCLI_AUTH"}
    if extra_env:
        e.update(extra_env)
    with open(log_path, "ab") as logf:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True, env=e)


def _wait_gone(pid, name, what, timeout=20):
    wait_until(lambda: not pid_running(pid, name), timeout, "%s (pid %d) to exit" % (what, pid), interval=0.05)


def port_refuses(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


# --------------------------------------------------------------------------
# Redis


class RedisError(Exception):
    pass


def _resp_encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("redis closed the connection")
        self.buf += data

    def line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.exact(n).decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RedisError("unexpected reply %r" % line[:100])


def redis_port():
    return int(env("CHAT_REDIS_PORT"))


def _auth():
    """The administrator's AUTH, when the stack's Redis has a password
    (REDISCLI_AUTH, which redis-cli reads too)."""
    pw = os.environ.get("REDISCLI_AUTH")
    return [("AUTH", pw)] if pw else []


def redis_pipeline(commands, timeout=10.0, port=None):
    """Several commands on one connection, as the administrator; returns
    their replies."""
    auth = _auth()
    with socket.create_connection(("127.0.0.1", port or redis_port()), timeout=timeout) as s:
        s.sendall(b"".join(_resp_encode(c) for c in auth + list(commands)))
        r = _Reader(s)
        for _ in auth:
            r.reply()
        return [r.reply() for _ in commands]


def redis(*args, timeout=3.0, port=None):
    """One Redis command on a fresh connection; returns its reply."""
    return redis_pipeline([args], timeout=timeout, port=port)[0]


def redis_pid():
    return pid_from_file(env("CHAT_REDIS_PIDFILE"), "redis-server")


def redis_answers():
    """True when `redis-cli ping` answers PONG (the check chatstack uses)."""
    try:
        p = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(redis_port()), "ping"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0 and p.stdout.strip() == b"PONG"


def stop_redis(how="shutdown"):
    """Stops Redis: "shutdown" (SHUTDOWN NOSAVE, the clients see a FIN) or
    "kill" (SIGKILL, as a crash). Waits until nothing answers on its port."""
    pid = redis_pid()
    assert pid, "redis is not running (pid file %s)" % env("CHAT_REDIS_PIDFILE")
    if how == "kill":
        os.kill(pid, signal.SIGKILL)
    else:
        try:
            redis("SHUTDOWN", "NOSAVE")
        except (OSError, RedisError):
            pass  # the connection closes with the server: no reply
    _wait_gone(pid, "redis-server", "redis")
    wait_until(lambda: port_refuses(redis_port()), 10, "redis's port to close")
    return pid


def start_redis():
    """Starts Redis again from its command line; waits until it answers."""
    if redis_pid() and redis_answers():
        return
    p = spawn(_argv("CHAT_REDIS_ARGV"), env("CHAT_REDIS_LOG"))

    def up():
        if p.poll() is not None:
            raise AssertionError("redis exited (%s) as it restarted; see %s" % (p.returncode, env("CHAT_REDIS_LOG")))
        return redis_answers()
    wait_until(up, 30, "redis to answer after its restart", interval=0.1)


# --------------------------------------------------------------------------
# MariaDB


def mysql_pid():
    return pid_from_file(env("CHAT_MYSQL_PIDFILE"), "mariadbd")


def mysql_answers():
    try:
        p = subprocess.run(["mariadb-admin", "--no-defaults", "--socket=" + env("CHAT_MYSQL_SOCKET"), "-uroot",
                            "--connect-timeout=2", "ping"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0


def kill_mysql():
    """SIGKILLs MariaDB, as a crash would; waits until its port refuses."""
    pid = mysql_pid()
    assert pid, "mariadb is not running (pid file %s)" % env("CHAT_MYSQL_PIDFILE")
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, "mariadbd", "mariadb")
    wait_until(lambda: port_refuses(int(env("CHAT_MYSQL_PORT"))), 10, "mariadb's port to close")
    return pid


def start_mysql():
    """Starts MariaDB again from its command line (crash recovery included);
    waits until it answers a ping."""
    if mysql_pid() and mysql_answers():
        return
    p = spawn(_argv("CHAT_MYSQL_ARGV"), env("CHAT_MYSQL_LOG"))

    def up():
        if p.poll() is not None:
            raise AssertionError("mariadb exited (%s) as it restarted; see %s" % (p.returncode, env("CHAT_MYSQL_LOG")))
        return mysql_answers()
    wait_until(up, 90, "mariadb to answer after its restart", interval=0.2)


# --------------------------------------------------------------------------
# chatd node1 and node2


def node_pid(n):
    return pid_from_file(env("CHAT_NODE%d_PIDFILE" % n), "chatd")


def readyz(base, timeout=15):
    """(status, body as JSON or None) of GET /readyz."""
    r = get(base, "/readyz", timeout=timeout)
    try:
        return r.status, r.json()
    except AssertionError:
        return r.status, None


def healthz_ok(base, timeout=3):
    try:
        return get(base, "/healthz", timeout=timeout).status == 200
    except (OSError, AssertionError):
        return False


def wait_ready(base, timeout, what=None):
    def ready():
        try:
            return readyz(base, timeout=6)[0] == 200
        except (OSError, AssertionError):
            return False
    wait_until(ready, timeout, what or "%s/readyz to answer 200" % base, interval=0.2)


def restore_stack():
    """Brings back whatever a test stopped: a paused node is continued,
    Redis and MariaDB are started if they are down, node1 and node2 if they
    died; then waits until both nodes are ready. Returns what it fixed."""
    fixed = []
    for n in (1, 2):
        pid = node_pid(n)
        if pid and proc_state(pid) == "T":
            os.kill(pid, signal.SIGCONT)
            fixed.append("continued node%d" % n)
    if not (redis_pid() and redis_answers()):
        start_redis()
        fixed.append("started redis")
    if not (mysql_pid() and mysql_answers()):
        start_mysql()
        fixed.append("started mariadb")
    for n in (1, 2):
        if not node_pid(n):
            chatlib.start_node(n)
            fixed.append("started node%d" % n)
    for n in (1, 2):
        wait_ready(chatlib.chatd(n), 60, "node%d to be ready again" % n)
    if fixed:
        print("restore_stack: " + ", ".join(fixed))
    return fixed


# --------------------------------------------------------------------------
# chatd nodes of a test's own


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "SUMMARY: UndefinedBehaviorSanitizer")


def edit_ini(text, overrides):
    """The INI text with overrides {"section.key": value} applied (keys that
    are missing are added to their section)."""
    want = {}
    for k, v in overrides.items():
        sec, key = k.split(".", 1)
        want.setdefault(sec, {})[key] = str(v)
    out, sec, done = [], None, set()

    def flush_section():
        for key, v in want.get(sec, {}).items():
            if (sec, key) not in done:
                out.append("%s = %s" % (key, v))
                done.add((sec, key))
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            flush_section()
            sec = s[1:-1].strip()
            out.append(line)
            continue
        if sec and "=" in s and not s.startswith(";") and not s.startswith("#"):
            key = s.split("=", 1)[0].strip()
            if key in want.get(sec, {}):
                out.append("%s = %s" % (key, want[sec][key]))
                done.add((sec, key))
                continue
        out.append(line)
    flush_section()
    for s2, keys in want.items():
        missing = [(k, v) for k, v in keys.items() if (s2, k) not in done]
        if missing:
            out.append("")
            out.append("[%s]" % s2)
            out.extend("%s = %s" % kv for kv in missing)
    return "\n".join(out) + "\n"


def ini_value(path, key, default=None):
    """The value of "section.key" in an INI file."""
    sec, name = key.split(".", 1)
    cur = None
    with open(path) as f:
        for line in f:
            s = line.strip()
            if s.startswith("[") and s.endswith("]"):
                cur = s[1:-1].strip()
            elif cur == sec and "=" in s and not s.startswith((";", "#")):
                k, v = s.split("=", 1)
                if k.strip() == name:
                    return v.strip()
    return default


class OwnNode:
    """A chatd of the ASan build that a test starts for itself, from a copy
    of node1.ini (the same deployment: database, channel prefix, secret)
    with its own port and node_id and the given overrides, e.g.
    {"redis.port": 18502}. Its log is STATE/<name>.log, shown by chatstack
    on failure."""

    def __init__(self, name, port, overrides=None):
        self.name = name
        self.port = port
        self.overrides = dict(overrides or {})
        self.url = "http://127.0.0.1:%d" % port
        self.proc = None
        self.ini = os.path.join(stack_dir(), name + ".ini")
        self.log = os.path.join(stack_dir(), name + ".log")
        self._log_start = 0

    def start(self):
        with open(os.path.join(stack_dir(), "node1.ini")) as f:
            base = f.read()
        ov = {"server.port": self.port, "server.node_id": self.name}
        ov.update(self.overrides)
        old = os.umask(0o077)
        try:
            with open(self.ini, "w") as f:
                f.write(edit_ini(base, ov))
        finally:
            os.umask(old)
        try:
            self._log_start = os.path.getsize(self.log)
        except OSError:
            self._log_start = 0
        san = dict(kv.split("=", 1) for kv in os.environ.get("CHAT_SAN_ENV", "").split() if "=" in kv)
        exe = os.path.join(env("CHAT_BUILD_DIR"), "httpd", "chatd")
        self.proc = spawn([exe, "-c", self.ini], self.log, san)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError("chatd %s exited (%s) at start; see %s:\n%s" % (
                    self.name, self.proc.returncode, self.log, self.log_tail()))
            return healthz_ok(self.url, timeout=1)
        wait_until(up, 30, "chatd %s to answer /healthz" % self.name, interval=0.1)
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def log_text(self):
        try:
            with open(self.log, "rb") as f:
                f.seek(self._log_start)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=30):
        return "\n".join(self.log_text().splitlines()[-n:])

    def sanitizer_lines(self):
        return [l for l in self.log_text().splitlines() if any(m in l for m in SANITIZER_MARKS)]

    def stop(self):
        """SIGTERM (SIGKILL after 15 s); returns the sanitizer report lines of
        its log (leaks are reported at exit)."""
        if self.proc is None:
            return []
        if self.proc.poll() is None:
            if proc_state(self.proc.pid) == "T":
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.sanitizer_lines()


# --------------------------------------------------------------------------
# sockets


TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
              "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
              "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def _tcp_table():
    rows = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            p = line.split()
            lport = int(p[1].split(":")[1], 16)
            rport = int(p[2].split(":")[1], 16)
            rows.append((lport, rport, TCP_STATES.get(p[3], p[3]), p[9]))
    return rows


def tcp_state(local_port, remote_port):
    """The state of the loopback socket local_port -> remote_port, or None."""
    for lp, rp, st, _ in _tcp_table():
        if lp == local_port and rp == remote_port:
            return st
    return None


def process_tcp(pid):
    """[(local port, remote port, state)] of the TCP sockets pid holds."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return [(lp, rp, st) for lp, rp, st, ino in _tcp_table() if ino in inodes]
