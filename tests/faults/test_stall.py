"""A reader that stops reading its SSE stream."""

import json
import socket
import threading
import time
import urllib.parse

from chatlib import (SSEParser, SSEStream, _Chunked, chatd, inbox_all_pages, metric, stream, token, uid,
                     wait_until)
import faultlib
from faultlib import OwnNode, fault_port, mono
from history import Conn, Ev, Recorded, Sender, Workload, fmt_ms, percentile

BUFFER = 262144         # [delivery] stream_buffer_bytes of the node under test
PAD = 3900              # bytes of padding per message (max_message_bytes is 4096)
MAX_FLOOD = 3000        # messages at most to overflow the stalled stream
CLOSE_S = 10.0          # the stream is closed within this after it went over the bound
LATENCY_MAX_S = 1.5     # another stream's events while the stalled one overflows


class _StalledReader:
    """GET /v1/events on a raw socket with a small receive buffer, which
    reads the response headers and then nothing until resume()."""

    def __init__(self, base, user):
        u = urllib.parse.urlsplit(base)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(5)
        self.sock.connect((u.hostname, u.port))
        self.local_port = self.sock.getsockname()[1]
        self.server_port = u.port
        req = ("GET /v1/events HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
               "Authorization: Bearer %s\r\nLast-Event-ID: 0\r\n\r\n" % (u.hostname, u.port, token(user)))
        self.sock.sendall(req.encode())
        self.raw = b""
        while b"\r\n\r\n" not in self.raw:
            chunk = self.sock.recv(4096)
            assert chunk, "stalled reader: closed before the headers"
            self.raw += chunk
        head, self.rest = self.raw.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), "stalled reader: %r" % head[:200]
        self.chunked = b"chunked" in head.lower()

    def resume(self, timeout):
        """Reads everything until the server closes (or timeout); returns
        (message events as (seq, item), closed by the server?)."""
        events = []

        def on_event(e):
            if e.type == "message":
                events.append(e)
        parser = SSEParser(on_event, lambda c: None, lambda n, v: None)
        dec = _Chunked() if self.chunked else None
        data = self.rest
        deadline = mono() + timeout
        closed = False
        self.sock.settimeout(0.5)
        while True:
            if data:
                parser.feed(dec.feed(data) if dec else data)
                if dec and dec.done:
                    closed = True
                    break
            if mono() > deadline:
                break
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                data = b""
                continue
            except OSError:
                closed = True
                break
            if not data:
                closed = True
                break
        self.sock.close()
        return events, closed


def test_stalled_reader_is_bounded_and_resumes():
    """On a chatd of its own with stream_buffer_bytes = 256 KiB, a stream
    whose reader stops reading (a raw socket, 4 KiB receive buffer) gets
    4 KB messages until the node gives up on it: chat_streams_closed_slow_total
    grows and the stream is gone from chat_streams_open within CLOSE_S,
    while the reader still reads nothing. Another user's stream on the same
    node gets its events within LATENCY_MAX_S all along. The stalled reader
    then reads what reached it and resumes with Last-Event-ID: together it
    has every row once, in order."""
    node = OwnNode("fault-stall", fault_port(5), {"delivery.stream_buffer_bytes": BUFFER})
    w = Workload("stalled-reader", chatd(1))
    slow, probe_user = uid("slow"), uid("probe")
    rec = Recorded(w.hist, slow, slow + "@stalled")
    flooders = []
    probe_lat = {"before": [], "during": [], "after": []}
    phase = ["before"]
    halt = threading.Event()
    reader = probe = resumed = None
    san = []
    try:
        node.start()
        flooders = [Sender(w.hist, uid("flood%d" % i), [slow], [node.url], pad=PAD) for i in range(3)]
        prober = Sender(w.hist, uid("prober"), [probe_user], [node.url])
        probe = stream(node.url, probe_user, last_event_id=0)
        reader = _StalledReader(node.url, slow)
        rec.conns.append(Conn(node.url, 0))
        slow0 = metric(node.url, "chat_streams_closed_slow_total")
        open0 = metric(node.url, "chat_streams_open")

        def probing():
            while not halt.is_set():
                s = prober.send_one(probe_user)
                if s.ok:
                    try:
                        ev = probe.wait_message_id(s.message_id, timeout=10)
                        probe_lat[phase[0]].append(max(0.0, ev.t - s.ok.t1))
                    except AssertionError:
                        probe_lat[phase[0]].append(None)
                halt.wait(0.1)
        pt = threading.Thread(target=probing, daemon=True)
        pt.start()
        time.sleep(1.5)
        phase[0] = "during"
        # Flood the stalled stream until the node closes it.
        over = threading.Event()

        def flood(snd):
            while not over.is_set() and len(w.hist.sends) < MAX_FLOOD:
                snd.send_one(slow)
        fts = [threading.Thread(target=flood, args=(f,), daemon=True) for f in flooders]
        t_flood = mono()
        for t in fts:
            t.start()
        try:
            wait_until(lambda: metric(node.url, "chat_streams_closed_slow_total") > slow0, 60,
                       "chat_streams_closed_slow_total to grow (stalled stream over %d bytes)" % BUFFER,
                       interval=0.1)
        finally:
            over.set()
            for t in fts:
                t.join(20)
        t_over = mono()
        flood_n = sum(1 for s in w.hist.sends if s.recipient == slow)
        # Closed by the node while the reader still reads nothing.
        gone = None
        try:
            wait_until(lambda: metric(node.url, "chat_streams_open") < open0, CLOSE_S,
                       "the node to close the stalled stream (chat_streams_open back below %d)" % open0,
                       interval=0.1)
            gone = mono() - t_over
        except AssertionError as e:
            gone = e
        tcp = faultlib.tcp_state(node.port, reader.local_port)
        time.sleep(1)
        phase[0] = "after"
        # Two more after the close: they come with the resume.
        for f in flooders[:2]:
            f.send_one(slow)
        time.sleep(1)
        halt.set()
        pt.join(15)
        # The reader wakes up: what reached it, then a resume.
        evs, closed = reader.resume(timeout=5 if isinstance(gone, float) else 2)
        first = rec.conns[0]
        first.events = [Ev(e.t, e.data and json.loads(e.data)) for e in evs]
        first.t_end = mono()
        first.end = "closed by the server" if closed else "closed by the test"
        last = first.events[-1].seq if first.events else 0
        resumed = SSEStream(node.url, slow, last_event_id=last).open()
        resumed.expect_ok()
        conn2 = Conn(node.url, last)
        rec.conns.append(conn2)
        total = len(inbox_all_pages(node.url, slow, limit=1000))
        resumed.wait_for(lambda: (resumed.messages() and resumed.messages()[-1].seq >= total) or None, 20,
                         "the resumed stream to reach seq %d" % total)
        resumed.close()
        conn2.events = [Ev(e.t, e.json()) for e in resumed.messages()]
        rep = w.check(users=[slow, probe_user])
        print(rep.summary())
        lat = {k: [x for x in v if x is not None] for k, v in probe_lat.items()}
        print("stalled stream: over %d bytes after %d messages of %d bytes in %.1f s; closed by the node %s "
              "after that (its side of the socket: %s); the reader got %d events before the close, "
              "%d more on resuming after seq %d" % (
                  BUFFER, flood_n, PAD + 20, t_over - t_flood,
                  fmt_ms(gone) if isinstance(gone, float) else "NOT within %.0f s" % CLOSE_S, tcp,
                  len(first.events), len(conn2.events), last))
        for k in ("before", "during", "after"):
            v = lat[k]
            print("other stream's latency %s the overflow: %d events, p50 %s, max %s%s" % (
                k, len(v), fmt_ms(percentile(v, 50)), fmt_ms(max(v) if v else None),
                "" if len(v) == len(probe_lat[k]) else ", %d never came" % (len(probe_lat[k]) - len(v))))
        assert isinstance(gone, float), (
            "the stream over stream_buffer_bytes was not closed while its reader stalled: %s; the node's "
            "side of the socket is %s" % (gone, tcp))
        rep.assert_clean()
        during = probe_lat["during"]
        assert during and None not in during and max(during) <= LATENCY_MAX_S, (
            "another stream's events while the stalled one overflowed: %r (want each within %.1f s)" % (
                [None if x is None else round(x, 3) for x in during], LATENCY_MAX_S))
    finally:
        halt.set()
        for x in (probe, resumed):
            if x is not None:
                x.close()
        if reader is not None:
            try:
                reader.sock.close()
            except OSError:
                pass
        san = node.stop()
        faultlib.restore_stack()
    assert not san, "sanitizer reports in %s:\n%s" % (node.log, "\n".join(san[:20]))


test_stalled_reader_is_bounded_and_resumes.timeout = 150
