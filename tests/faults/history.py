"""The history checker of the fault tests.

The clients of a fault test record everything they do and see in one
History: every send, attempt by attempt (invoked, then 201, 200 to a retry,
an error status, a connection refused, or unknown: the connection broke or
timed out after the request went out), and every message event each device
received, connection by connection. After the run and a full drain,
Workload.check() (or check()) compares that record with what is stored
(each recipient's inbox, read through GET /v1/inbox) and counts:

  lost          a send answered 201 (or 200 to a retry) that is not stored,
                or that no device of its recipient received
  unexpected    a stored row or a received event that no send explains: a
                body this test never sent to that user, a send every attempt
                of which was refused, an event whose seq and message_id do
                not match the inbox
  stored dups   one send stored more than once (two rows with its body)
  gaps          seqs missing from an inbox, a stream that skipped a seq
                (within a connection, or across a Last-Event-ID resume), a
                device that never got a row of its user
  order breaks  a stream's seqs going backwards; a sender's messages to one
                recipient stored out of the order of their 201s
  stream dups   a seq twice on one connection, or a resumed connection
                (Last-Event-ID: L) repeating a seq <= L

Every device resumes with Last-Event-ID (0 for its first connection: all
rows whatever their status), so a device must see each row of its user
exactly once; a reconnect explains no duplicate. A fault test passes only
when every count is 0 (Report.assert_clean).

Each message body names its send ("<sender>/<k>", then padding), so a row or
an event leads back to the send that made it.
"""

import http.client
import json
import random
import threading
import time
import urllib.parse

import chatlib
from chatlib import SSEStream, token

OK = ("201", "200")


def mono():
    return time.monotonic()


def percentile(values, p):
    if not values:
        return None
    v = sorted(values)
    i = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[i]


def fmt_ms(s):
    return "-" if s is None else "%.0f ms" % (s * 1000)


# --------------------------------------------------------------------------
# the record


class Attempt:
    __slots__ = ("base", "t0", "t1", "outcome", "status", "message_id", "retry_after", "error_code",
                 "detail")

    def __init__(self, base, t0):
        self.base = base
        self.t0 = t0
        self.t1 = None
        self.outcome = None  # "201" "200" "503" "409"... "refused" "unknown"
        self.status = None
        self.message_id = None
        self.retry_after = None
        self.error_code = None
        self.detail = ""

    def __repr__(self):
        return "<%s %s %.2f s %s>" % (self.base, self.outcome, (self.t1 or self.t0) - self.t0, self.detail[:80])


class Send:
    """One logical message: the same client_msg_id over every attempt."""

    def __init__(self, sender, recipient, k, pad):
        self.sender = sender
        self.recipient = recipient
        self.k = k
        self.client_msg_id = "m%d" % k
        self.body = "%s/%d" % (sender, k) + ("|" + "." * pad if pad else "")
        self.attempts = []

    @property
    def ok(self):
        for a in self.attempts:
            if a.outcome in OK:
                return a
        return None

    @property
    def message_id(self):
        a = self.ok
        return a.message_id if a else None

    def may_have_stored(self):
        """False only when every attempt was surely not processed (refused
        connection, or an answer that says nothing was stored)."""
        for a in self.attempts:
            if a.outcome in OK or a.outcome in ("unknown", "503") or a.outcome is None:
                return True
            if a.outcome.startswith("5"):
                return True
        return False

    def __repr__(self):
        return "<send %s -> %s %s %r>" % (self.sender, self.recipient, self.client_msg_id, self.attempts)


class Ev:
    """A message event a device received."""
    __slots__ = ("t", "seq", "message_id", "sender", "to", "body", "bad")

    def __init__(self, t, item, bad=None):
        self.t = t
        self.bad = bad
        item = item if isinstance(item, dict) else {}
        self.seq = item.get("seq")
        self.message_id = item.get("message_id")
        self.sender = item.get("from")
        self.to = item.get("to")
        self.body = item.get("body")
        if bad is None and not isinstance(self.seq, int):
            self.bad = "no integer seq in %r" % (item,)

    def __repr__(self):
        return "<ev seq=%s %s %r>" % (self.seq, self.message_id, (self.body or "")[:40])


class Conn:
    """One connection of a device (an SSE stream, or one long-poll answer)."""

    def __init__(self, base, after):
        self.base = base
        self.after = after  # the Last-Event-ID (or poll's after) it asked for
        self.t_open = mono()
        self.t_end = None
        self.end = None
        self.events = []


class History:
    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.sends = []
        self.by_body = {}
        self.devices = []
        self.t0 = mono()

    def new_send(self, sender, recipient, k, pad=0):
        s = Send(sender, recipient, k, pad)
        with self.lock:
            self.sends.append(s)
            self.by_body[s.body] = s
        return s

    def attempt(self, send, base, tok, timeout=15.0):
        """POSTs the send once through base and records the outcome."""
        a = Attempt(base, mono())
        with self.lock:
            send.attempts.append(a)
        body = json.dumps({"to": send.recipient, "body": send.body,
                           "client_msg_id": send.client_msg_id}).encode()
        u = urllib.parse.urlsplit(base)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        try:
            try:
                conn.connect()
            except OSError as e:
                # Nothing was sent: this attempt cannot have stored anything.
                a.outcome, a.detail = "refused", repr(e)
                return a
            try:
                conn.request("POST", "/v1/messages", body=body, headers={
                    "Authorization": "Bearer " + tok, "Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException) as e:
                a.outcome, a.detail = "unknown", repr(e)
                return a
            a.status = r.status
            a.outcome = str(r.status)
            a.retry_after = r.getheader("Retry-After")
            try:
                j = json.loads(data.decode("utf-8"))
            except ValueError:
                j = None
            if r.status in (200, 201) and isinstance(j, dict) and isinstance(j.get("message_id"), str):
                a.message_id = j["message_id"]
            elif r.status in (200, 201):
                a.outcome, a.detail = "unknown", "%d without a message_id: %r" % (r.status, data[:200])
            else:
                if isinstance(j, dict) and isinstance(j.get("error"), dict):
                    a.error_code = j["error"].get("code")
                a.detail = data[:300].decode("utf-8", "replace")
            return a
        finally:
            a.t1 = mono()
            conn.close()

    # ---- views

    def attempts(self, since=None, until=None):
        with self.lock:
            out = [a for s in self.sends for a in s.attempts]
        return [a for a in out if a.t1 is not None and (since is None or a.t0 >= since)
                and (until is None or a.t1 <= until)]

    def outcome_counts(self, since=None, until=None):
        c = {}
        for a in self.attempts(since, until):
            c[a.outcome] = c.get(a.outcome, 0) + 1
        return c

    def first_delivery(self):
        """{message_id: monotonic time of its first event on any device}."""
        out = {}
        for d in self.devices:
            for conn in d.connections():
                for ev in conn.events:
                    if ev.message_id and (ev.message_id not in out or ev.t < out[ev.message_id]):
                        out[ev.message_id] = ev.t
        return out

    def delivery_latencies(self, since=None, until=None):
        """[(send, seconds from its 201 to its first event, or None)] for the
        sends whose 201 (or 200) came in [since, until]."""
        first = self.first_delivery()
        out = []
        with self.lock:
            sends = list(self.sends)
        for s in sends:
            a = s.ok
            if a is None or (since is not None and a.t1 < since) or (until is not None and a.t1 > until):
                continue
            t = first.get(a.message_id)
            out.append((s, None if t is None else max(0.0, t - a.t1)))
        return out


# --------------------------------------------------------------------------
# clients


class Sender(threading.Thread):
    """Sends to its recipients in turn, one message at a time: each message
    is retried with its client_msg_id (on the next base after an error or an
    unknown outcome; after Retry-After on a 503) until it is answered 201 or
    200, refused for good (4xx), or resolve_s passes. So the order of a
    sender's messages to one recipient is the order of their 201s."""

    def __init__(self, hist, user, recipients, bases, pace=(0.03, 0.08), count=None, pad=0,
                 resolve_s=30.0, seed=None):
        super().__init__(daemon=True, name="sender-" + user)
        self.hist = hist
        self.user = user
        self.recipients = list(recipients)
        self.bases = list(bases)
        self.pace = pace
        self.count = count
        self.pad = pad
        self.resolve_s = resolve_s
        self.rnd = random.Random(seed if seed is not None else user)
        self.tok = token(user, ttl=7200)
        self.halt = threading.Event()
        self.go = threading.Event()  # cleared by pause()
        self.go.set()
        self.idle = threading.Event()  # set while paused between messages
        self.error = None
        self.sent = 0
        self.k = 0

    def run(self):
        try:
            while not self.halt.is_set() and (self.count is None or self.k < self.count):
                if not self.go.is_set():
                    self.idle.set()
                    while not self.go.wait(0.1) and not self.halt.is_set():
                        pass
                    self.idle.clear()
                    continue
                self.send_one(self.recipients[self.k % len(self.recipients)])
                if self.pace:
                    self.halt.wait(self.rnd.uniform(*self.pace))
        except BaseException as e:  # noqa: BLE001
            self.error = e
        finally:
            self.idle.set()

    def send_one(self, recipient):
        """Sends the next message to recipient and resolves it (in the
        calling thread); returns the Send."""
        s = self.hist.new_send(self.user, recipient, self.k, self.pad)
        self.k += 1
        self._resolve(s)
        self.sent += 1
        return s

    def pause(self, timeout=40.0):
        """Stops sending after the message in flight; returns once idle."""
        self.go.clear()
        if self.is_alive() and not self.idle.wait(timeout):
            raise AssertionError("sender %s did not pause within %.0f s" % (self.user, timeout))

    def resume(self):
        self.go.set()

    def _resolve(self, s):
        deadline = mono() + self.resolve_s
        i = 0
        while True:
            a = self.hist.attempt(s, self.bases[i % len(self.bases)], self.tok)
            if a.outcome in OK:
                return
            if a.status is not None and 400 <= a.status < 500 and a.status != 429:
                return  # refused for good: nothing stored, nothing to retry
            if mono() >= deadline:
                return
            wait = 0.1
            if a.status in (429, 503):
                try:
                    wait = min(1.0, max(0.2, float(a.retry_after)))
                except (TypeError, ValueError):
                    wait = 0.5
            i += 1
            time.sleep(wait)

    def stop(self):
        self.halt.set()


class Device(threading.Thread):
    """A user's device holding an SSE stream the way EventSource does: when
    the stream ends (or cannot be opened) it opens a new one after retry_s,
    with Last-Event-ID = the last seq it received (0 at first: every row),
    on its first base, or on the next one after a failure."""

    kind = "sse"

    def __init__(self, hist, user, bases, name=None, retry_s=0.2, open_timeout=4.0):
        super().__init__(daemon=True, name="device-" + (name or user))
        self.hist = hist
        self.user = user
        self.bases = list(bases)
        self.dname = name or user
        self.retry_s = retry_s
        self.open_timeout = open_timeout
        self.halt = threading.Event()
        self.connected = threading.Event()
        self.lock = threading.Lock()
        self.conns = []
        self.failures = []  # (time, base, why)
        self.last = 0
        self._cur = None
        self._absorbed = 0
        self.error = None
        with hist.lock:
            hist.devices.append(self)

    def connections(self):
        with self.lock:
            return list(self.conns)

    def seen_seqs(self):
        with self.lock:
            return {ev.seq for c in self.conns for ev in c.events}

    def event_time(self, message_id):
        """When this device first received message_id, or None."""
        with self.lock:
            for c in self.conns:
                for ev in c.events:
                    if ev.message_id == message_id:
                        return ev.t
        return None

    def open_now(self):
        """True while a connection is open."""
        with self.lock:
            return bool(self.conns) and self.conns[-1].t_end is None

    def _absorb(self, s, conn):
        with s.cond:
            new = s.events[self._absorbed:]
            self._absorbed = len(s.events)
        evs = []
        for e in new:
            if e.type != "message":
                continue
            try:
                item = json.loads(e.data)
                ev = Ev(e.t, item)
            except ValueError:
                ev = Ev(e.t, None, bad="not JSON: %r" % e.data[:100])
            if ev.bad is None and e.id != str(ev.seq):
                ev.bad = "id: %r but seq %r" % (e.id, ev.seq)
            evs.append(ev)
        if evs:
            with self.lock:
                conn.events.extend(evs)
                if evs[-1].seq is not None and isinstance(evs[-1].seq, int):
                    self.last = evs[-1].seq

    def run(self):
        try:
            fails = 0
            while not self.halt.is_set():
                base = self.bases[fails % len(self.bases)]
                s = SSEStream(base, self.user, tok=token(self.user, ttl=7200), last_event_id=self.last)
                try:
                    s.open(timeout=self.open_timeout)
                except (OSError, AssertionError, ValueError) as e:
                    s.close()
                    self.failures.append((mono(), base, repr(e)[:200]))
                    fails += 1
                    self.halt.wait(self.retry_s)
                    continue
                if s.status != 200:
                    self.failures.append((mono(), base, "status %s %r" % (
                        s.status, s.resp.body[:200] if s.resp else b"")))
                    fails += 1
                    self.halt.wait(self.retry_s)
                    continue
                fails = 0
                conn = Conn(base, self.last)
                self._absorbed = 0
                with self.lock:
                    self.conns.append(conn)
                    self._cur = s
                self.connected.set()
                while not self.halt.is_set() and not s.ended:
                    with s.cond:
                        if not s.ended:
                            s.cond.wait(0.2)
                    self._absorb(s, conn)
                ended_by_server = s.ended and not self.halt.is_set()
                s.close()
                self._absorb(s, conn)
                with self.lock:
                    conn.t_end = mono()
                    conn.end = ("ended: %r" % s.error if s.error else "closed by the server") \
                        if ended_by_server else "closed by the test"
                    self._cur = None
                if not self.halt.is_set():
                    self.halt.wait(self.retry_s)
        except BaseException as e:  # noqa: BLE001
            self.error = e

    def stop(self):
        self.halt.set()


class Recorded:
    """A device whose connections a test fills in itself (a raw socket the
    test reads, say); the checker reads only these attributes."""

    kind = "sse"

    def __init__(self, hist, user, name):
        self.user = user
        self.dname = name
        self.conns = []
        with hist.lock:
            hist.devices.append(self)

    def connections(self):
        return list(self.conns)


class Poller(Device):
    """A device that long-polls (GET /v1/poll?after=<last>) instead: each
    answer is one connection."""

    kind = "poll"

    def __init__(self, hist, user, bases, name=None, retry_s=0.2, poll_timeout=3):
        super().__init__(hist, user, bases, name=name, retry_s=retry_s)
        self.poll_timeout = poll_timeout

    def run(self):
        try:
            fails = 0
            tok = token(self.user, ttl=7200)
            while not self.halt.is_set():
                base = self.bases[fails % len(self.bases)]
                conn = Conn(base, self.last)
                try:
                    r = chatlib.get(base, "/v1/poll?after=%d&timeout=%d" % (self.last, self.poll_timeout),
                                    token=tok, timeout=self.poll_timeout + 12)
                except (OSError, AssertionError) as e:
                    self.failures.append((mono(), base, repr(e)[:200]))
                    fails += 1
                    self.halt.wait(self.retry_s)
                    continue
                t = mono()
                if r.status != 200:
                    self.failures.append((t, base, "status %d %r" % (r.status, r.body[:200])))
                    fails += 1
                    self.halt.wait(self.retry_s)
                    continue
                fails = 0
                self.connected.set()
                try:
                    items = r.json().get("items") or []
                except AssertionError as e:
                    items = []
                    conn.events.append(Ev(t, None, bad=str(e)[:200]))
                conn.events.extend(Ev(t, it) for it in items)
                conn.t_end = t
                conn.end = "answered"
                with self.lock:
                    self.conns.append(conn)
                    if items and isinstance(items[-1].get("seq"), int):
                        self.last = items[-1]["seq"]
        except BaseException as e:  # noqa: BLE001
            self.error = e


# --------------------------------------------------------------------------
# the checker


KINDS = ("lost", "unexpected", "stored_dups", "gaps", "order_breaks", "stream_dups")


class Report:
    def __init__(self, name):
        self.name = name
        self.n = {k: 0 for k in KINDS}
        self.examples = {k: [] for k in KINDS}
        self.stats = {}

    def add(self, kind, what):
        self.n[kind] += 1
        if len(self.examples[kind]) < 6:
            self.examples[kind].append(what)

    def clean(self):
        return all(v == 0 for v in self.n.values())

    def summary(self):
        st = self.stats
        parts = ["history %s:" % self.name,
                 "sends %d (attempts: %s)" % (st.get("sends", 0), ", ".join(
                     "%s %d" % kv for kv in sorted(st.get("outcomes", {}).items()))),
                 "rows %d" % st.get("rows", 0),
                 "events %d on %d devices: %d streams, %d reconnects (ends: %s), %d poll answers" % (
                     st.get("events", 0), st.get("devices", 0),
                     st.get("connections", 0) - st.get("polls", 0) - st.get("reconnects", 0),
                     st.get("reconnects", 0), ", ".join("%s %d" % kv for kv in sorted(
                         st.get("ends", {}).items())) or "none", st.get("polls", 0)),
                 "delivery after 201: p50 %s, p99 %s, max %s" % (
                     fmt_ms(st.get("lat_p50")), fmt_ms(st.get("lat_p99")), fmt_ms(st.get("lat_max"))),
                 "; ".join("%s %d" % (k, self.n[k]) for k in KINDS)]
        return "\n    ".join(parts)

    def details(self):
        out = []
        for k in KINDS:
            for ex in self.examples[k]:
                out.append("  %s: %s" % (k, ex))
        return "\n".join(out)

    def assert_clean(self):
        assert self.clean(), "%s\n%s" % (self.summary(), self.details())


def read_inbox(base, user):
    return chatlib.inbox_all_pages(base, user, status="all", limit=1000)


def _row_origin(hist, row):
    """Where a stored row came from: its send, the base that answered, when."""
    s = hist.by_body.get(row.get("body"))
    if s is None or not s.ok:
        return "seq %d (no answered send)" % row["seq"]
    return "seq %d = %s #%d answered %s by %s at +%.1f s" % (
        row["seq"], s.sender, s.k, s.ok.outcome, s.ok.base, s.ok.t1 - hist.t0)


def check(hist, read_base, users=None, inboxes=None):
    """Compares the history with the stored inboxes (read through
    read_base, or taken from inboxes: {user: [item...]}); users: every
    user whose inbox to check (default: every recipient and device owner)."""
    rep = Report(hist.name)
    with hist.lock:
        sends = list(hist.sends)
        devices = list(hist.devices)
    if users is None:
        users = sorted({s.recipient for s in sends} | {d.user for d in devices})
    rep.stats["sends"] = sum(1 for s in sends if s.ok)
    rep.stats["outcomes"] = hist.outcome_counts()
    rep.stats["devices"] = len(devices)
    by_dev_user = {}
    for d in devices:
        by_dev_user.setdefault(d.user, []).append(d)
    total_rows = 0
    first = hist.first_delivery()
    lats = []
    for user in users:
        rows = inboxes.get(user, []) if inboxes is not None else read_inbox(read_base, user)
        total_rows += len(rows)
        by_seq = {}
        bodies = {}
        for r in rows:
            if r["seq"] in by_seq:
                rep.add("stored_dups", "%s: seq %d listed twice" % (user, r["seq"]))
            by_seq[r["seq"]] = r
            bodies.setdefault(r.get("body"), []).append(r)
        if rows:
            want = set(range(1, max(by_seq) + 1))
            miss = sorted(want - set(by_seq))
            if miss:
                rep.add("gaps", "%s: the inbox has no seq %s" % (user, miss[:10]))
        # every row leads back to a send to this user that may have stored it
        for body, rs in bodies.items():
            s = hist.by_body.get(body)
            if s is None or s.recipient != user:
                for r in rs:
                    rep.add("unexpected", "%s: row seq %d %r was not sent to them by this test" % (
                        user, r["seq"], (body or "")[:60]))
                continue
            if not s.may_have_stored():
                rep.add("unexpected", "%s: row seq %d of %s, whose every attempt was refused: %r" % (
                    user, rs[0]["seq"], s.client_msg_id, s.attempts))
            if len(rs) > 1:
                rep.add("stored_dups", "%s: %s stored %d times (seqs %s, ids %s)" % (
                    user, s.body[:40], len(rs), [r["seq"] for r in rs], [r["message_id"] for r in rs]))
        # every 201 is stored, under the message_id it answered
        mids = {r["message_id"]: r for r in rows}
        mine = [s for s in sends if s.recipient == user]
        for s in mine:
            if s.ok and s.message_id not in mids:
                rep.add("lost", "%s: %s answered %s with %s, which is not stored (attempts %r)" % (
                    user, s.body[:40], s.ok.outcome, s.message_id, s.attempts))
        # a sender's messages to this user are stored in the order of their
        # 201s: a message first sent after another's 201 has a larger seq
        by_sender = {}
        for s in mine:
            if s.ok and s.message_id in mids:
                by_sender.setdefault(s.sender, []).append(s)
        for snd, ss in by_sender.items():
            done = sorted(ss, key=lambda x: x.ok.t1)
            for b in ss:
                started = b.attempts[0].t0
                before = [a for a in done if a.ok.t1 < started]
                if not before:
                    continue
                a = max(before, key=lambda x: mids[x.message_id]["seq"])
                if mids[a.message_id]["seq"] >= mids[b.message_id]["seq"]:
                    rep.add("order_breaks", "%s: %s #%d (seq %d) was sent after the 201 of #%d (seq %d)" % (
                        user, snd, b.k, mids[b.message_id]["seq"], a.k, mids[a.message_id]["seq"]))
        # the devices
        devs = by_dev_user.get(user, [])
        for d in devs:
            seen = set()
            for ci, conn in enumerate(d.connections()):
                last = None
                in_conn = set()
                for ev in conn.events:
                    where = "%s %s conn %d (%s)" % (d.kind, d.dname, ci, conn.base)
                    if ev.bad:
                        rep.add("unexpected", "%s: %s" % (where, ev.bad))
                        continue
                    r = by_seq.get(ev.seq)
                    matches = r is not None and r["message_id"] == ev.message_id and r.get("body") == ev.body
                    if not matches:
                        rep.add("unexpected", "%s: event seq %s %s does not match the inbox row %r" % (
                            where, ev.seq, ev.message_id, r and (r["seq"], r["message_id"])))
                    if ev.seq in in_conn:
                        rep.add("stream_dups", "%s: seq %d twice on one connection" % (where, ev.seq))
                    elif last is not None and ev.seq < last:
                        rep.add("order_breaks", "%s: seq %d after %d" % (where, ev.seq, last))
                    elif last is None and conn.after is not None and ev.seq <= conn.after:
                        rep.add("stream_dups", "%s: resumed after %d, got %d" % (where, conn.after, ev.seq))
                    elif last is not None and ev.seq > last + 1:
                        rep.add("gaps", "%s: skipped from seq %d to %d" % (where, last, ev.seq))
                    elif last is None and conn.after is not None and ev.seq > conn.after + 1:
                        rep.add("gaps", "%s: resumed after %d, first got %d" % (where, conn.after, ev.seq))
                    in_conn.add(ev.seq)
                    if matches:
                        seen.add(ev.seq)
                    if last is None or ev.seq > last:
                        last = ev.seq
            miss = sorted(set(by_seq) - seen)
            if miss:
                rep.add("gaps", "%s %s never got seqs %s%s (of %d): %s" % (
                    d.kind, d.dname, miss[:10], "..." if len(miss) > 10 else "", len(by_seq),
                    "; ".join(_row_origin(hist, by_seq[q]) for q in miss[:3])))
        if devs:
            for s in mine:
                if not s.ok:
                    continue
                t = first.get(s.message_id)
                if t is None:
                    if s.message_id in mids:
                        rep.add("lost", "%s: %s (seq %d, %s at +%.1f s) reached none of their %d devices" % (
                            user, s.body[:40], mids[s.message_id]["seq"], s.ok.outcome,
                            s.ok.t1 - hist.t0, len(devs)))
                else:
                    lats.append(max(0.0, t - s.ok.t1))
    rep.stats["rows"] = total_rows
    conns = [c for d in devices for c in d.connections()]
    rep.stats["connections"] = len(conns)
    sse = [d for d in devices if d.kind == "sse"]
    rep.stats["reconnects"] = sum(max(0, len(d.connections()) - 1) for d in sse)
    rep.stats["polls"] = sum(len(d.connections()) for d in devices if d.kind == "poll")
    rep.stats["events"] = sum(len(c.events) for c in conns)
    ends = {}
    for c in conns:
        if c.end and c.end != "answered":
            k = c.end.split(":")[0]
            ends[k] = ends.get(k, 0) + 1
    rep.stats["ends"] = ends
    rep.stats["lat_p50"] = percentile(lats, 50)
    rep.stats["lat_p99"] = percentile(lats, 99)
    rep.stats["lat_max"] = max(lats) if lats else None
    return rep


# --------------------------------------------------------------------------
# a fault test's clients together


class Workload:
    """Senders and devices of one fault test, with the drain and the check.

        w = Workload("kill", read_base)
        w.device(user, [n1, n2]); w.sender(alice, [user...], [n1, n2])
        w.start(); ...inject...; w.finish(drain_s); rep = w.check()
        (w.close() in a finally)
    """

    def __init__(self, name, read_base):
        self.hist = History(name)
        self.read_base = read_base
        self.senders = []
        self.devs = []

    def device(self, user, bases, name=None, **kw):
        d = Device(self.hist, user, bases, name=name, **kw)
        self.devs.append(d)
        return d

    def poller(self, user, bases, name=None, **kw):
        d = Poller(self.hist, user, bases, name=name, **kw)
        self.devs.append(d)
        return d

    def sender(self, user, recipients, bases, **kw):
        s = Sender(self.hist, user, recipients, bases, **kw)
        self.senders.append(s)
        return s

    def pause_senders(self):
        for s in self.senders:
            s.go.clear()
        for s in self.senders:
            s.pause()

    def resume_senders(self):
        for s in self.senders:
            s.resume()

    def probe(self, sender, recipients, timeout):
        """Sends one message to each recipient with sender (a Sender that
        is not running), then waits until every device of that recipient
        has it. Returns [(device name, send, seconds from its 201 to the
        event on that device, or None when it did not come in time)]."""
        sends = [sender.send_one(u) for u in recipients]
        deadline = mono() + timeout
        out = []
        for s in sends:
            for d in [d for d in self.devs if d.user == s.recipient]:
                t = None
                while s.ok is not None:
                    t = d.event_time(s.message_id)
                    if t is not None or mono() >= deadline:
                        break
                    time.sleep(0.05)
                out.append((d.dname, s, None if t is None or s.ok is None else max(0.0, t - s.ok.t1)))
        return out

    def start_devices(self, timeout=15.0):
        for d in self.devs:
            if not d.is_alive() and d.ident is None:
                d.start()
        deadline = mono() + timeout
        for d in self.devs:
            if not d.connected.wait(max(0.0, deadline - mono())):
                raise AssertionError("device %s did not connect within %.0f s: %r" % (
                    d.dname, timeout, d.failures[-3:]))

    def start(self, timeout=15.0):
        self.start_devices(timeout)
        for s in self.senders:
            s.start()

    def stop_senders(self, timeout=None):
        for s in self.senders:
            s.stop()
        for s in self.senders:
            s.join(timeout if timeout is not None else s.resolve_s + 10)
        alive = [s.user for s in self.senders if s.is_alive()]
        assert not alive, "senders still busy: %s" % alive
        errs = [(s.user, s.error) for s in self.senders if s.error]
        assert not errs, "senders failed: %r" % errs

    def unresolved(self):
        """Sends with no 201/200 and not refused for good."""
        with self.hist.lock:
            sends = list(self.hist.sends)
        return [s for s in sends if not s.ok and s.may_have_stored()]

    def drain(self, timeout):
        """Waits until each device holds every row of its user's inbox.
        Returns the seconds it took (or timeout, when it did not happen:
        check() then tells what is missing)."""
        t0 = mono()
        want = {}
        for u in sorted({d.user for d in self.devs}):
            want[u] = {r["seq"] for r in read_inbox(self.read_base, u)}
        while True:
            if all(want[d.user] <= d.seen_seqs() for d in self.devs):
                return mono() - t0
            if mono() - t0 >= timeout:
                return mono() - t0
            time.sleep(0.1)

    def stop_devices(self):
        for d in self.devs:
            d.stop()
        for d in self.devs:
            d.join(10)
        errs = [(d.dname, d.error) for d in self.devs if d.error]
        assert not errs, "devices failed: %r" % errs

    def finish(self, drain_s):
        """Stops the senders, drains, stops the devices; returns the drain time."""
        self.stop_senders()
        t = self.drain(drain_s)
        self.stop_devices()
        return t

    def check(self, users=None):
        return check(self.hist, self.read_base, users)

    def close(self):
        for s in self.senders:
            s.stop()
        for d in self.devs:
            d.stop()
        for s in self.senders:
            if s.is_alive():
                s.join(5)
        for d in self.devs:
            if d.is_alive():
                d.join(5)
