"""HTTP abuse: ambiguous framing, oversized heads and bodies, idle, slow and
non-reading clients. Each gets its documented error or is dropped within
its timeout, the connection cap holds, and normal clients keep being served.

The tests of chatd's own HTTP layer (connections, timeouts, the cap) reach
chatd itself and run once, in the chatd run; those about what a request may
hold (framing, sizes) run through every door, to show the fronts answer
cleanly too. Through a front the error page may be the web server's own
(HTML), as for a path outside /v1/; through chatd it is the API's JSON.
"""

import socket
import threading
import time

import chatlib_raw as R
from chatlib_raw import check_all
from chatlib import (SSEStream, assert_error, chatd, door, expect_json, get, inbox_all_pages, metric,
                     node, send, skip, token, uid, via_front, wait_until)

TOO_LARGE = {413, 431}  # a head too large: 431 (RFC 6585), or the API's 413
FRONT_TOO_LARGE = {400, 413, 414, 431}  # Apache's LimitRequestFieldSize answers 400


def chatd_only():
    if door() != "chatd":
        skip("about chatd's own HTTP layer; runs once, in the chatd run")


def alive(base):
    r = get(base, "/healthz", timeout=5)
    assert r.status == 200, "%s stopped serving: /healthz -> %d" % (base, r.status)


def wait(fn, timeout, what):
    return wait_until(fn, timeout, what, interval=0.1)


def api_headers(tok, *extra):
    return [("Authorization", "Bearer " + tok), ("Content-Type", "application/json")] + list(extra)


def post(base, headers, body=None, timeout=5, desc=None):
    return R.exchange(base, R.request_bytes("POST", "/v1/messages", headers, body), timeout=timeout,
                      desc=desc)


def smuggled_request(tok, bob, tag):
    body = ('{"to":"%s","body":"smuggled %s"}' % (bob, tag)).encode()
    return R.request_bytes("POST", "/v1/messages", api_headers(tok), body)


# --------------------------------------------------------------------------
# framing


def test_ambiguous_framing_is_refused():
    """Two Content-Length, a Content-Length list, Content-Length with
    Transfer-Encoding: chatd answers 400 bad_request (docs/api.md) and
    closes the connection. Through a front, two different lengths are a 400
    (RFC 9112 6.3); with Transfer-Encoding the front may go by it, and then
    closes. No door ever runs the request hidden in the body."""
    base = node(1)
    alice, bob = uid("alice"), uid("bob")
    tok = token(alice)
    outer = ('{"to":"%s","body":"outer"}' % bob).encode()
    s0, s1, s2 = (smuggled_request(tok, bob, t) for t in ("cl0", "cln", "list"))
    t0, t1 = (b"0\r\n\r\n" + smuggled_request(tok, bob, t) for t in ("clte", "tecl"))
    cases = [  # name, headers, body, a front must refuse it too
        ("Content-Length 0, then %d" % len(s0), [("Content-Length", "0"), ("Content-Length", str(len(s0)))], s0, True),
        ("Content-Length %d, then 0" % len(s1), [("Content-Length", str(len(s1))), ("Content-Length", "0")], s1, True),
        ("Content-Length: 0, %d" % len(s2), [("Content-Length", "0, %d" % len(s2))], s2, True),
        ("two equal Content-Length", [("Content-Length", str(len(outer)))] * 2, outer, False),
        ("Content-Length, then chunked", [("Content-Length", str(len(t0))), ("Transfer-Encoding", "chunked")],
         t0, False),
        ("chunked, then Content-Length 5", [("Transfer-Encoding", "chunked"), ("Content-Length", "5")], t1, False),
    ]

    def one(name, extra, body, front_refuses):
        r = post(base, api_headers(tok, *extra), body, desc="%s (%s)" % (name, door()))
        print("%-34s %s" % (name, r.summary()))
        try:
            if not via_front() and "Content-Length: " in name:
                # A list is a malformed Content-Length, which libmicrohttpd
                # refuses itself (see test_malformed_content_length_...).
                assert r.status == 400, "%s: status %s, want 400" % (r.desc, r.status)
                assert r.closed, "%s: the connection stays open after refusing the framing" % r.desc
            elif not via_front():
                R.assert_clean(r, {400}, json_error=True, code="bad_request")
                assert r.closed, "%s: the connection stays open after refusing the framing" % r.desc
            elif front_refuses:
                R.assert_clean(r, {400})
            else:
                R.assert_clean(r, set(range(200, 500)))
                assert r.status == 400 or r.closed, "%s: served, and the connection kept open" % r.desc
        finally:
            alive(base)
    check_all(cases, one)
    time.sleep(0.5)  # a request smuggled behind another is served right after it
    bad = [i["body"] for i in inbox_all_pages(base, bob) if i["body"].startswith("smuggled")]
    assert not bad, "requests hidden in another request's body were executed: %r" % bad


def test_malformed_content_length_and_unknown_coding():
    """Content-Length is 1*DIGIT (RFC 9110 8.6): anything else is a 400 and
    the connection closed. chatd's HTTP layer (libmicrohttpd 0.9.75) answers
    these itself, before the API sees the request: its own HTML page, whose
    declared length is shorter than what it sends (docs/api.md, "Errors of
    the HTTP layer"); the connection closes right after, so nothing can
    follow it. Through a front, one clean 400. A transfer coding the server
    does not implement is a 501 or 400 (RFC 9112 6.1) at once, the API's
    JSON from chatd, not a connection that hangs until its timeout."""
    base = node(1)
    alice, bob = uid("alice"), uid("bob")
    tok = token(alice)
    body = ('{"to":"%s","body":"framing"}' % bob).encode()
    n = len(body)
    lengths = [(cl,) for cl in ("+%d" % n, "0x%x" % n, "%d %d" % (n, n), "-1", "%d," % n, "%d.0" % n, "1e2")]
    codings = [(te,) for te in ("gzip", "identity", "chunked, gzip")]

    def length(cl):
        r = post(base, api_headers(tok, ("Content-Length", cl)), body, desc="Content-Length: %s (%s)" % (cl, door()))
        print("Content-Length: %-10s %s" % (cl, r.summary()))
        if via_front():
            R.assert_clean(r, {400})
        else:
            assert r.status == 400, "%s: status %s, want 400: %s" % (r.desc, r.status, r.summary())
            assert r.closed, "%s: the connection stays open after a malformed Content-Length" % r.desc

    def coding(te):
        t0 = time.monotonic()
        try:
            r = post(base, api_headers(tok, ("Transfer-Encoding", te)), R.chunked(body),
                     desc="Transfer-Encoding: %s (%s)" % (te, door()))
        except AssertionError as e:
            print("Transfer-Encoding: %-13s no answer in %.1f s" % (te, time.monotonic() - t0))
            raise
        print("Transfer-Encoding: %-13s %s in %.2f s" % (te, r.summary(), r.elapsed))
        R.assert_clean(r, {400, 501}, json_error=not via_front())
        assert r.elapsed < 2.0, "%s: answered only after %.1f s" % (r.desc, r.elapsed)
    try:
        check_all(lengths, length)
    finally:
        check_all(codings, coding)
        alive(base)
        items = inbox_all_pages(base, bob)
        assert not items, "a request with a malformed length was stored: %r" % [i["body"] for i in items]


# --------------------------------------------------------------------------
# sizes


def test_oversized_request_head():
    """A head within every door's limits (a 12 KB header) is served. 40 KB
    in one header, in 400 headers, in the URL or in the token is refused
    with 413/414/431 (401 for the token), the API's JSON error from chatd
    (through a front its own page, or 400 from Apache's
    LimitRequestFieldSize), one complete response, the connection closed,
    the door still serving. 300 KB of head: one clean 4xx from chatd; a
    front may pass it on within its own per-field limits. A head past
    chatd's 32 KiB connection buffer is refused by libmicrohttpd before the
    API sees it: the right status with its own short HTML page (docs/api.md,
    "Errors of the HTTP layer"), so JSON is not asked of it."""
    base = node(1)
    tok = token(uid("bob"))
    auth = [("Authorization", "Bearer " + tok)]
    r = R.exchange(base, R.request_bytes("GET", "/v1/inbox", auth + [("X-Pad", "p" * 12000)]), timeout=5,
                   desc="12 KB header")
    R.assert_clean(r, {200})
    many = [("X-Pad-%d" % i, "q" * 90) for i in range(400)]
    cases = [  # name, path, headers, chatd's statuses, a front must refuse it too
        ("one 40 KB header", "/v1/inbox", auth + [("X-Pad", "p" * 40000)], TOO_LARGE, True),
        ("400 headers, 40 KB", "/v1/inbox", auth + many, TOO_LARGE, True),
        ("40 KB URL", "/v1/inbox?pad=" + "u" * 40000, auth, {414, 431}, True),
        ("40 KB token", "/v1/inbox", [("Authorization", "Bearer " + "t" * 40000)], TOO_LARGE | {401}, True),
        ("300 KB of headers", "/v1/inbox", auth + [("X-Pad-%d" % i, "r" * 7500) for i in range(40)],
         TOO_LARGE, False),
    ]

    def one(name, path, hs, codes, front_refuses):
        r = R.exchange(base, R.request_bytes("GET", path, hs), timeout=5, desc="%s (%s)" % (name, door()))
        print("%-20s %s" % (name, r.summary()))
        try:
            if via_front():
                R.assert_clean(r, FRONT_TOO_LARGE | (codes & {401}) | ({200} if not front_refuses else set()))
            else:
                R.assert_clean(r, codes)
            assert r.closed or r.status < 400, "%s: the connection stays open after the error" % r.desc
        finally:
            alive(base)
    check_all(cases, one)


def test_oversized_and_chunked_bodies():
    """A chunked body of 30 KB is a normal request (201); chunked past
    max_body_bytes (64 KiB) is 413 payload_too_large from every door (the
    API's answer: the fronts pass bodies up to 1 MiB on); 2 MB with a
    Content-Length or chunked is one clean 413 (JSON from chatd); only the
    30 KB message is stored."""
    base = node(1)
    alice, bob = uid("alice"), uid("bob")
    tok = token(alice)
    te = api_headers(tok, ("Transfer-Encoding", "chunked"))

    def doc(tag, pad):
        return ('{"to":"%s","body":"%s","pad":"%s"}' % (bob, tag, "p" * pad)).encode()
    huge = doc("huge", 2000000)
    cases = [  # name, headers, body, statuses, JSON error code (None: any clean answer)
        ("chunked 30 KB", te, R.chunked(doc("chunked 30k", 30000)), {201}, None),
        ("chunked 128 KB", te, R.chunked(doc("chunked 128k", 128000)), {413}, "payload_too_large"),
        ("2 MB Content-Length", api_headers(tok), huge, {413}, None if via_front() else "payload_too_large"),
        ("2 MB chunked", te, R.chunked(huge, 65536), {413}, None if via_front() else "payload_too_large"),
    ]

    def one(name, hs, body, codes, code):
        r = post(base, hs, body, timeout=15, desc="%s (%s)" % (name, door()))
        print("%-20s %s" % (name, r.summary()))
        try:
            R.assert_clean(r, codes, json_error=code is not None, code=code)
        finally:
            alive(base)
    try:
        check_all(cases, one)
    finally:
        bodies = [i["body"] for i in inbox_all_pages(base, bob)]
        assert bodies in ([], ["chunked 30k"]), "bob's inbox should hold at most the 30 KB message: %r" % bodies


def test_declared_oversized_body_is_refused_before_it_is_sent():
    """A request whose Content-Length is past max_body_bytes gets its 413
    payload_too_large at once, without the body: with Expect: 100-continue
    no 100 Continue invites the upload first; a length chatd could never
    take (10^12) is the API's JSON 413 too, one response."""
    chatd_only()
    base = chatd(1)
    tok = token(uid("alice"))
    cases = [("Content-Length 100000, Expect: 100-continue",
              [("Content-Length", "100000"), ("Expect", "100-continue")]),
             ("Content-Length 10^12", [("Content-Length", "1000000000000")])]

    def one(name, extra):
        try:
            r = post(base, api_headers(tok, *extra), timeout=3, desc=name)
        except AssertionError as e:
            raise AssertionError("%s: no final answer within 3 s while the body is held back (%s)" % (name, e))
        print("%-45s %s, interim %r, in %.2f s" % (name, r.summary(), r.interim, r.elapsed))
        assert 100 not in r.interim, "%s: 100 Continue for a body that will be refused" % name
        R.assert_clean(r, {413}, json_error=True, code="payload_too_large")
    try:
        check_all(cases, one)
    finally:
        alive(base)


# --------------------------------------------------------------------------
# many idle connections, the cap, timeouts


def test_thousands_of_idle_connections_node1():
    """chatd node1 (max_connections 10000) holds 2500 idle connections while
    normal clients keep being served: /healthz, sends, and a stream that
    gets each message; closing them frees them all."""
    chatd_only()
    base = chatd(1)
    port = R.hostport(base)[1]
    pid = R.pid_of_node(1)
    n = min(2500, R.nofile_limit() - 1000)
    assert n >= 1000, "the open file limit (%d) is too low to hold 1000 connections" % R.nofile_limit()
    alice, bob = uid("alice"), uid("bob")
    rss0 = R.rss_kb(pid)
    socks = []
    ours = set()

    def held():
        return len(R.held_connections(pid, port) & ours)
    try:
        t0 = time.monotonic()
        socks = R.open_idle(base, n)
        opened = time.monotonic() - t0
        ours = {R.local_port(s) for s in socks}
        deadline = time.monotonic() + 15
        while held() < n and time.monotonic() < deadline:
            time.sleep(0.1)
        assert held() == n, "node1 holds %d of the %d idle connections" % (held(), n)
        rss1 = R.rss_kb(pid)
        lat = []
        for _ in range(20):
            r, dt = R.timed(lambda: get(base, "/healthz"))
            assert r.status == 200, r
            lat.append(dt)
        deliveries = []
        with SSEStream(base, bob).open() as s:
            s.wait_connected()
            for i in range(10):
                t = time.monotonic()
                mid = send(base, alice, bob, "while %d sockets idle: %d" % (n, i))["message_id"]
                lat.append(time.monotonic() - t)
                s.wait_message_id(mid, timeout=5)
                deliveries.append(time.monotonic() - t)
        print("%d idle connections opened in %.2f s, all held by node1; RSS +%d KB (%.1f KB each)" % (
            n, opened, rss1 - rss0, (rss1 - rss0) / float(n)))
        print("meanwhile: requests median %.1f ms, max %.1f ms; send to event median %.1f ms, "
              "max %.1f ms" % (R.percentile(lat, 50) * 1e3, max(lat) * 1e3,
                               R.percentile(deliveries, 50) * 1e3, max(deliveries) * 1e3))
        assert max(lat) < 1.0, "a request took %.2f s while %d connections were idle" % (max(lat), n)
        assert max(deliveries) < 1.0, "a message took %.2f s to reach the stream" % max(deliveries)
    finally:
        R.close_all(socks)
    deadline = time.monotonic() + 15
    while held() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not held(), "node1 still holds %d connections 15 s after the clients closed them" % held()
    alive(base)


test_thousands_of_idle_connections_node1.timeout = 120


def test_streams_count_toward_max_connections():
    """Streams are served by chatd's stream loops once their first frame is
    out, no longer by libmicrohttpd, and still count toward max_connections:
    a chatd with max_connections 4 serves 4 streams, answers a fifth 503
    backend_unavailable (JSON, Retry-After) while /healthz is still
    answered, and takes a new stream once one of the 4 has closed; every
    stream it serves gets its messages."""
    chatd_only()
    cap = 4
    with R.OwnServer("streamcap", {"server": {"max_connections": cap}}) as srv:
        users = [uid("cap%d" % i) for i in range(cap + 1)]
        sender = uid("capsender")
        streams = []
        try:
            for u in users[:cap]:
                s = SSEStream(srv.base, user=u)
                s.open()
                s.wait_connected()
                streams.append(s)
            # A message after the first frame is written by a loop: once
            # each has one, all 4 are the loops' (and counted).
            for u, s in zip(users, streams):
                m = send(srv.base, sender, u, "to " + u)
                s.wait_message_id(m["message_id"])
            extra = SSEStream(srv.base, user=users[cap])
            extra.open()
            assert extra.status == 503, "%s: a fifth stream got %s, not 503" % (extra.desc, extra.status)
            assert_error(extra.resp, 503, "backend_unavailable")
            assert "max_connections" in extra.resp.json()["error"]["message"], extra.resp.body
            assert extra.resp.header("Retry-After"), "%s: 503 without Retry-After" % extra.desc
            alive(srv.base)

            streams.pop(0).close()
            opened = {}

            def takes_a_stream():
                s = SSEStream(srv.base, user=users[cap])
                s.open()
                if s.status == 200:
                    opened["s"] = s
                    return True
                return False
            wait(takes_a_stream, 5, "a stream taken once one of the 4 closed")
            streams.append(opened["s"])
            m = send(srv.base, sender, users[cap], "after the cap")
            opened["s"].wait_message_id(m["message_id"])
        finally:
            for s in streams:
                s.close()


def _read_until(sock, pred, timeout, what):
    """Reads sock until pred(bytes so far) or EOF; returns (bytes, eof)."""
    buf, deadline = b"", time.monotonic() + timeout
    while not pred(buf):
        left = deadline - time.monotonic()
        assert left > 0, "no %s within %s s; got %r" % (what, timeout, buf[-300:])
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            return buf, True
        buf += chunk
    return buf, False


def test_stream_framing_http10_and_last_chunk():
    """chatd writes a stream's head itself: asked for with HTTP/1.0 the body
    is close-delimited (Connection: close, no chunk framing), with HTTP/1.1
    it is chunked; both get their events, and when the node stops the
    HTTP/1.1 body ends with its last chunk (0 CRLF CRLF), so a client or a
    proxy sees a complete response rather than a cut one."""
    chatd_only()
    with R.OwnServer("framing", may_exit=True) as srv:
        bob, alice = uid("bob"), uid("alice")
        socks = {}
        for ver in ("1.0", "1.1"):
            s = R.connect(srv.base)
            s.sendall(("GET /v1/events HTTP/%s\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                       "\r\n" % (ver, token(bob))).encode())
            socks[ver] = s
        try:
            got = {}
            for ver, s in socks.items():
                got[ver], eof = _read_until(s, lambda b: b"retry:" in b, 5, "retry field over HTTP/" + ver)
            mid = send(srv.base, alice, bob, "framing")["message_id"].encode()
            for ver, s in socks.items():
                more, eof = _read_until(s, lambda b: mid in b, 5, "the message over HTTP/" + ver)
                got[ver] += more
            assert srv.stop() == 0, "chatd exited %s" % srv.exit_code
            for ver, s in socks.items():
                more, eof = _read_until(s, lambda b: False, 10, "the end of the stream")
                got[ver] += more
                assert eof, "HTTP/%s stream not closed when its node stopped" % ver
            head10, _, body10 = got["1.0"].partition(b"\r\n\r\n")
            head11, _, body11 = got["1.1"].partition(b"\r\n\r\n")
            for head in (head10, head11):
                assert head.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in head, head
            assert b"Connection: close" in head10 and b"Transfer-Encoding" not in head10, head10
            assert body10.startswith(b"retry: ") and b"event: message\n" in body10, body10[:300]
            assert b"Transfer-Encoding: chunked" in head11, head11
            # Chunks: size CRLF data CRLF ..., then 0 CRLF CRLF.
            rest, data = body11, b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                if size == 0:
                    assert rest == b"\r\n", "after the last chunk: %r" % rest[:100]
                    break
                data, rest = data + rest[:size], rest[size:]
                assert rest.startswith(b"\r\n"), "a chunk not ended by CRLF: %r" % rest[:100]
                rest = rest[2:]
            assert data.startswith(b"retry: ") and mid in data, data[:300]
            print("HTTP/1.0 body %d bytes, close-delimited; HTTP/1.1 %d bytes in chunks, last chunk "
                  "after the node's SIGTERM" % (len(body10), len(data)))
        finally:
            for s in socks.values():
                s.close()


def test_connection_cap_and_idle_timeout_hold():
    """A chatd of the test's own with max_connections 50, connection_timeout
    3: 120 idle connections; it never holds more than 50, drops each idle
    one after 3 s, and then takes the next from the queue; a normal client
    that came after all of them is served once its turn comes, and at once
    after the flood."""
    chatd_only()
    cap, tmo, n = 50, 3, 120
    with R.OwnServer("cap", {"server": {"max_connections": cap, "connection_timeout": tmo}}) as srv:
        socks = R.open_idle(srv.base, n)
        t0 = time.monotonic()
        result = {}

        def normal():
            try:
                result["r"] = get(srv.base, "/healthz", timeout=30)
            except Exception as e:  # noqa: BLE001
                result["e"] = e
            result["t"] = time.monotonic() - t0
        th = threading.Thread(target=normal, daemon=True)
        th.start()
        closed_at = {}
        max_held = 0
        bound = (n // cap + 1) * (tmo + 1) + 3
        try:
            while len(closed_at) < n and time.monotonic() - t0 < bound:
                max_held = max(max_held, len(srv.held()))
                for s in socks:
                    if s.fileno() not in closed_at and R.peer_closed(s):
                        closed_at[s.fileno()] = time.monotonic() - t0
                time.sleep(0.05)
            th.join(max(0.0, bound - (time.monotonic() - t0)))
        finally:
            R.close_all(socks)
        times = sorted(closed_at.values())
        print("cap %d, timeout %d s, %d idle connections: at most %d held; dropped at %s s" % (
            cap, tmo, n, max_held, ", ".join("%.1f" % t for t in times[::cap // 2])))
        print("a normal client behind them: %s after %.1f s" % (
            result.get("r").status if "r" in result else result.get("e"), result.get("t", -1)))
        assert max_held <= cap, "held %d connections with max_connections %d" % (max_held, cap)
        assert max_held >= cap - 2, "held only %d connections of the %d allowed" % (max_held, cap)
        assert len(times) == n, "%d of %d idle connections were never dropped within %.0f s" % (
            n - len(times), n, bound)
        assert times[0] >= tmo - 0.5, "an idle connection was dropped after %.1f s, before the %d s timeout" % (
            times[0], tmo)
        assert times[cap - 1] <= tmo + 1.5, "the first %d idle connections were held %.1f s (timeout %d s)" % (
            cap, times[cap - 1], tmo)
        assert "r" in result and result["r"].status == 200, "the normal client was not served: %r" % result
        r, dt = R.timed(lambda: get(srv.base, "/healthz"))
        assert r.status == 200 and dt < 1.0, "after the flood /healthz took %.2f s" % dt
        limit_lines = srv.log_text().count("limit")
        print("log lines about the limit: %d" % limit_lines)


test_connection_cap_and_idle_timeout_hold.timeout = 60


def test_slowloris_silent_after_partial_request_is_dropped():
    """Connections that send part of a request (a few bytes, a head without
    its end, a head and part of the body), or a whole one and then keep
    the connection without a next, and then nothing, are dropped after
    connection_timeout (3 s), never before; the server keeps serving."""
    chatd_only()
    tmo = 3
    with R.OwnServer("slow", {"server": {"connection_timeout": tmo}}) as srv:
        kinds = {
            "a few bytes": b"GE",
            "head without its end": b"GET /v1/inbox HTTP/1.1\r\nHost: x\r\nX-Slow: a",
            "part of a body": R.request_bytes("POST", "/v1/messages", [
                ("Content-Type", "application/json"), ("Content-Length", "1000")]) + b'{"to":',
            "kept alive after an answer": R.request_bytes("GET", "/healthz"),
        }
        socks = []
        try:
            for kind, data in kinds.items():
                for _ in range(15):
                    s = R.connect(srv.base)
                    s.sendall(data)
                    socks.append((kind, s))
            t0 = time.monotonic()
            closed = {}
            while len(closed) < len(socks) and time.monotonic() - t0 < tmo + 6:
                for i, (kind, s) in enumerate(socks):
                    if i not in closed and R.peer_closed(s):
                        closed[i] = time.monotonic() - t0
                time.sleep(0.05)
            alive(srv.base)
        finally:
            R.close_all([s for _, s in socks])
        for kind in kinds:
            ts = [closed[i] for i, (k, _) in enumerate(socks) if k == kind and i in closed]
            print("%-22s %d of 15 dropped, after %s s" % (
                kind, len(ts), "%.1f-%.1f" % (min(ts), max(ts)) if ts else "-"))
        assert len(closed) == len(socks), "%d slow connections still open %d s after their last byte" % (
            len(socks) - len(closed), tmo + 6)
        early = [t for t in closed.values() if t < tmo - 0.5]
        assert not early, "dropped before the %d s timeout: %r" % (tmo, early)
        late = [t for t in closed.values() if t > tmo + 2]
        assert not late, "held past the %d s timeout: %r" % (tmo, late)


def wmem_max():
    """The most a socket's kernel send buffer grows to (net.ipv4.tcp_wmem)."""
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        return int(f.read().split()[2])


def test_streams_and_polls_outlive_connection_timeout():
    """connection_timeout is for idle connections, not for the ones chatd
    holds on purpose: with a 3 s timeout an SSE stream lives on past it
    (its keepalives flow, a message arrives at 8 s) and a 6 s long-poll
    gets its answer."""
    chatd_only()
    tmo = 3
    with R.OwnServer("holds", {"server": {"connection_timeout": tmo}}) as srv:
        alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
        result = {}

        def poll():
            result["r"] = get(srv.base, "/v1/poll?timeout=6", token=token(carol), timeout=15)
        th = threading.Thread(target=poll, daemon=True)
        with SSEStream(srv.base, bob).open() as st:
            st.wait_connected()
            th.start()
            time.sleep(3 * tmo - 1)
            mid = send(srv.base, alice, bob, "after the timeout")["message_id"]
            st.wait_message_id(mid, timeout=5)
            keepalives = len(st.comments)
            th.join(10)
        r = result.get("r")
        print("stream alive after %d s with %d keepalives; 6 s poll: %s in %.1f s" % (
            3 * tmo - 1, keepalives, r.status if r else "no answer", r.elapsed if r else -1))
        assert keepalives >= 2, "only %d keepalives in %d s" % (keepalives, 3 * tmo - 1)
        assert r is not None and r.status == 200, "the 6 s long-poll: %r" % r
        assert r.elapsed >= 5.5, "the long-poll answered after %.1f s, before its 6 s" % r.elapsed


# A page is bounded by stream_buffer_bytes (1 MiB); the tests of answers
# larger than the kernel's socket buffers raise it on their own server.
BIG_PAGE = 64 * 1048576


def _fat_inbox(base, min_bytes):
    """A user whose inbox page (limit=1000) is at least min_bytes: messages
    of 4096 control characters, 24 KB each in JSON (\\u0001). Returns
    (user, page bytes)."""
    fat, sender = uid("fat"), uid("filler")
    body = "\x01" * 4096
    for _ in range(min_bytes // 24600 + 1):
        send(base, sender, fat, body)
    r = get(base, "/v1/inbox?status=all&limit=1000", token=token(fat), timeout=30)
    expect_json(r, 200)
    assert len(r.body) >= min_bytes, "the page is %d bytes, want %d" % (len(r.body), min_bytes)
    return fat, len(r.body)


class _SlowClients:
    """Slow clients driven by one thread, one step a second: header
    tricklers (one more byte of a header line), body tricklers (one more
    byte of a body) and drip readers (read 4 KB of a large response).
    Records when the server cut each one."""

    def __init__(self, base, fat):
        self.base = base
        self.req = R.request_bytes("GET", "/v1/inbox?status=all&limit=1000",
                                   [("Authorization", "Bearer " + token(fat))])
        self.clients = []  # [kind, socket, started, cut_at, bytes read]
        self.lock = threading.Lock()
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def add(self, kind, n):
        for _ in range(n):
            if kind == "drip reader":
                s = R.connect(self.base, rcvbuf=4096)
                s.sendall(self.req)
            else:
                s = R.connect(self.base)
                if kind == "header trickler":
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                else:
                    # Within max_body_bytes (64 KiB): a larger length is
                    # refused from the head, before any body byte.
                    s.sendall(R.request_bytes("POST", "/v1/messages", [
                        ("Content-Type", "application/json"), ("Content-Length", "60000")]))
            with self.lock:
                self.clients.append([kind, s, time.monotonic(), None, 0])

    def _run(self):
        while not self.stop:
            with self.lock:
                cs = list(self.clients)
            for c in cs:
                if c[3] is not None:
                    continue
                kind, s = c[0], c[1]
                try:
                    if kind == "drip reader":
                        # All the 4 KB receive buffer holds: the window
                        # reopens, so the server sees its writes progress.
                        s.setblocking(False)
                        try:
                            data = s.recv(4096)
                            if data == b"":
                                c[3] = time.monotonic()
                            c[4] += len(data)
                        except BlockingIOError:
                            pass
                    else:
                        s.setblocking(False)
                        if R.peer_closed(s):
                            c[3] = time.monotonic()
                        else:
                            s.send(b"a")
                except OSError:
                    c[3] = time.monotonic()
            t = time.monotonic()
            while not self.stop and time.monotonic() - t < 1.0:
                time.sleep(0.05)

    def start(self):
        self.thread.start()
        return self

    def close(self):
        self.stop = True
        self.thread.join(5)
        R.close_all([c[1] for c in self.clients])

    def report(self):
        now = time.monotonic()
        out = {}
        with self.lock:
            for kind, _, started, cut, _ in self.clients:
                out.setdefault(kind, []).append((cut or now) - started if cut else None)
        lines = []
        for kind, vals in out.items():
            cut = [v for v in vals if v is not None]
            lines.append("%s: %d, %d cut (after %s s), %d still held" % (
                kind, len(vals), len(cut), "%.1f-%.1f" % (min(cut), max(cut)) if cut else "-",
                len(vals) - len(cut)))
        return lines

    def readers_started(self):
        """True once every drip reader has got the first bytes of its answer
        (the server has built it)."""
        with self.lock:
            return all(c[4] > 0 for c in self.clients if c[0] == "drip reader")

    def oldest_uncut(self):
        now = time.monotonic()
        with self.lock:
            ages = [now - c[2] for c in self.clients if c[3] is None]
        return max(ages) if ages else 0.0


def test_slow_clients_at_the_cap_do_not_lock_out_others():
    """max_connections 50, connection_timeout 3. Below the cap, 40 slow
    clients (a header or a body one byte a second, or a reader that takes
    4 KB a second of an answer larger than the kernel's socket buffers)
    leave normal clients served at once. Then header tricklers fill the
    cap: a normal request must still be answered within 4 timeouts (12 s),
    so the server must cut clients that trickle, not only silent ones."""
    chatd_only()
    cap, tmo = 50, 3
    with R.OwnServer("slowcap", {"server": {"max_connections": cap, "connection_timeout": tmo},
                                 "delivery": {"stream_buffer_bytes": BIG_PAGE}}) as srv:
        fat, page = _fat_inbox(srv.base, wmem_max() + 4 * 1048576)
        slow = _SlowClients(srv.base, fat)
        try:
            slow.add("header trickler", 20)
            slow.add("body trickler", 10)
            slow.add("drip reader", 10)
            slow.start()
            wait(slow.readers_started, 20, "the drip readers' answers to start")
            lat = []
            for _ in range(10):
                r, dt = R.timed(lambda: get(srv.base, "/healthz", timeout=10))
                assert r.status == 200, r
                lat.append(dt)
            print("40 slow clients below the cap of %d: /healthz max %.1f ms" % (cap, max(lat) * 1e3))
            assert max(lat) < 1.0, "below the cap a request took %.2f s" % max(lat)
            # Fill the cap: the drip readers may be gone by now (see the
            # stalled-reader test), the tricklers are not.
            for _ in range(cap):
                if len(srv.held()) >= cap:
                    break
                slow.add("header trickler", 1)
                time.sleep(0.05)
            time.sleep(0.5)
            print("held after filling the cap: %d" % len(srv.held()))
            t0 = time.monotonic()
            try:
                r = get(srv.base, "/healthz", timeout=4 * tmo)
                waited = "answered %d after %.1f s" % (r.status, time.monotonic() - t0)
            except (AssertionError, OSError) as e:
                r, waited = None, "not answered within %d s (%s)" % (4 * tmo, e)
            print("a normal client at the cap (%.1f KB answer for the readers): %s" % (page / 1024.0, waited))
            kept = slow.oldest_uncut()
            for line in slow.report():
                print(line)
        finally:
            slow.close()
        assert r is not None and r.status == 200, \
            "slow clients at the cap locked a normal client out: %s; the oldest slow client was " \
            "still held after %.0f s" % (waited, kept)


test_slow_clients_at_the_cap_do_not_lock_out_others.timeout = 90


def test_stalled_reader_of_a_big_answer_is_dropped():
    """Five clients ask for an inbox page larger than the kernel's socket
    buffers (tcp_wmem's max + 4 MiB) and read nothing: each is
    dropped within connection_timeout (3 s) + 3 s of its request, and other
    clients are served meanwhile."""
    chatd_only()
    tmo, n = 3, 5
    with R.OwnServer("stall", {"server": {"connection_timeout": tmo},
                               "delivery": {"stream_buffer_bytes": BIG_PAGE}}) as srv:
        fat, page = _fat_inbox(srv.base, wmem_max() + 4 * 1048576)
        req = R.request_bytes("GET", "/v1/inbox?status=all&limit=1000", [("Authorization", "Bearer " + token(fat))])
        rss0 = srv.rss_kb()
        socks = []
        try:
            t0 = time.monotonic()
            for _ in range(n):
                s = R.connect(srv.base, rcvbuf=4096)
                s.sendall(req)
                socks.append(s)
            ports = {R.local_port(s) for s in socks}
            time.sleep(1.0)
            rss1 = srv.rss_kb()
            lat = []
            gone = None
            while time.monotonic() - t0 < tmo + 6:
                r, dt = R.timed(lambda: get(srv.base, "/healthz", timeout=5))
                lat.append(dt)
                if not srv.held() & ports:
                    gone = time.monotonic() - t0
                    break
                time.sleep(0.2)
        finally:
            R.close_all(socks)
        print("%d stalled readers of a %.1f MB answer: RSS +%.1f MB while held (%.1f MB each); dropped "
              "after %s s; /healthz max %.1f ms" % (n, page / 1e6, (rss1 - rss0) / 1024.0, (rss1 - rss0) / 1024.0 / n,
                                                    "%.1f" % gone if gone else "never", max(lat) * 1e3))
        assert gone is not None, "stalled readers still held %d s after their request" % (tmo + 6)
        assert max(lat) < 1.0, "a request took %.2f s while readers stalled" % max(lat)


def resumes_with_all(srv, user, n):
    """Once user's stream is gone, a new one from Last-Event-ID 0 gets the
    n messages, seqs 1..n in order: nothing was lost."""
    wait(lambda: metric(srv.base, "chat_streams_open") == 0, 5, "chat_streams_open back to 0")
    with SSEStream(srv.base, user, last_event_id=0).open() as again:
        again.wait_messages(n, timeout=20)
        seqs = [e.seq for e in again.messages()]
    assert seqs[:n] == list(range(1, n + 1)), "the next stream from Last-Event-ID 0 gave %r..." % seqs[:20]


def test_sse_slow_reader_is_cut_and_loses_nothing():
    """A stream whose client reads nothing is ended once its backlog passes
    stream_buffer_bytes (1 MiB; the kernel's socket buffer, up to
    net.ipv4.tcp_wmem's max, comes on top), and its connection goes with it
    within 5 s, not at connection_timeout; sends to that user stay fast
    meanwhile; every row comes back on the next stream from Last-Event-ID
    0."""
    chatd_only()
    with R.OwnServer("ssecut", {}) as srv:
        user, sender = uid("sink"), uid("flood")
        limit = 1048576 + wmem_max() + 1048576
        marker = "stream of %s closed" % user
        s = R.connect(srv.base, rcvbuf=4096)
        lat = []
        try:
            s.sendall(R.request_bytes("GET", "/v1/events", [("Authorization", "Bearer " + token(user)),
                                                            ("Accept", "text/event-stream")]))
            wait(lambda: metric(srv.base, "chat_streams_open") == 1, 5, "the stream to open")
            port = R.local_port(s)
            body = "\x01" * 4096  # 24 KB a frame
            frame = 24700
            sent = 0
            t0 = time.monotonic()
            while marker not in srv.log_text() and sent * frame <= limit and time.monotonic() - t0 < 30:
                _, dt = R.timed(lambda: send(srv.base, sender, user, body))
                lat.append(dt)
                sent += 1
            ended = time.monotonic() - t0 if marker in srv.log_text() else None
            t1 = time.monotonic()
            while port in srv.held() and time.monotonic() - t1 < 10:
                time.sleep(0.1)
            dropped = time.monotonic() - t1 if port not in srv.held() else None
        finally:
            R.abort(s)
        print("slow SSE reader: stream ended after %d messages (%.1f MB of frames, %s s); connection dropped "
              "%s; sends to the user median %.1f ms, max %.1f ms" % (
                  sent, sent * frame / 1e6, "%.1f" % ended if ended else "never",
                  "%.1f s later" % dropped if dropped is not None else "not within 10 s",
                  R.percentile(lat, 50) * 1e3, max(lat) * 1e3))
        assert ended is not None, "a stream that reads nothing was not ended after %.1f MB of events" % (
            sent * frame / 1e6)
        assert dropped is not None and dropped <= 5, \
            "the stream ended for its backlog, but chatd still held its connection %s later" % (
                "%.1f s" % dropped if dropped else "10 s")
        assert R.percentile(lat, 50) < 0.1, "sends to the slow reader's user took %.0f ms (median)" % (
            R.percentile(lat, 50) * 1e3)
        resumes_with_all(srv, user, sent)


test_sse_slow_reader_is_cut_and_loses_nothing.timeout = 90


def test_stream_that_takes_nothing_is_closed_after_connection_timeout():
    """A stream whose client stops reading, with less queued than
    stream_buffer_bytes (so it is never cut for its backlog), is closed
    once its socket has taken nothing for connection_timeout (3 s here):
    it does not hold its socket and kernel buffers for good. Nothing is
    lost: the next stream from Last-Event-ID 0 has every message."""
    chatd_only()
    tmo = 3
    overrides = {"server": {"connection_timeout": tmo},
                 "delivery": {"keepalive": 1, "send_rate": 0, "stream_buffer_bytes": 64 << 20}}
    with R.OwnServer("stuck", overrides) as srv:
        user, sender = uid("stuck"), uid("filler")
        s = R.connect(srv.base, rcvbuf=4096)
        try:
            s.sendall(R.request_bytes("GET", "/v1/events", [("Authorization", "Bearer " + token(user)),
                                                            ("Accept", "text/event-stream")]))
            wait(lambda: metric(srv.base, "chat_streams_open") == 1, 5, "the stream to open")
            port = R.local_port(s)
            # More than the socket's buffers can take (the kernel's send
            # buffer at its largest, the client's 4 KB), far less than
            # stream_buffer_bytes: the stream is left waiting for room.
            body = "\x01" * 4096  # about 24 KB a frame
            n = (wmem_max() + (2 << 20)) // 24700 + 1
            first = time.monotonic()  # the socket cannot be full before this
            for _ in range(n):
                send(srv.base, sender, user, body)
            t0 = time.monotonic()
            while port in srv.held() and time.monotonic() - t0 < 20:
                time.sleep(0.1)
            closed = time.monotonic() - t0 if port not in srv.held() else None
            since_first = time.monotonic() - first
        finally:
            R.abort(s)
        print("a stream that took nothing after %d messages (%.1f MB): closed %s after the last send "
              "(%.1f s after the first)" % (n, n * 24700 / 1e6,
                                            "%.1f s" % closed if closed is not None else "not within 20 s",
                                            since_first))
        assert closed is not None, "chatd still held a stream whose socket took nothing 20 s later"
        assert since_first >= tmo, "closed %.1f s after the first message, before connection_timeout (%d s)" % (
            since_first, tmo)
        assert "closed: more than" not in srv.log_text(), "cut for its backlog, not for taking nothing"
        resumes_with_all(srv, user, n)


test_stream_that_takes_nothing_is_closed_after_connection_timeout.timeout = 90


def test_memory_per_connection_is_bounded():
    """What one connection makes chatd hold is bounded by its buffers: 200
    connections with 20 KB of head each, 200 with 60 KB of an unfinished
    64 KB body, and 10 pushing 2 MB chunked bodies (past max_body_bytes,
    to be discarded) grow chatd's RSS by at most 96 KB, 256 KB and 512 KB
    a connection (ASan build: generous)."""
    chatd_only()
    with R.OwnServer("mem", {"server": {"connection_timeout": 30}}) as srv:
        for _ in range(20):
            get(srv.base, "/healthz")
        tok = token(uid("alice"))
        phases = [
            ("20 KB of head", 200, 96,
             lambda s: s.sendall(b"GET /v1/inbox HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"h" * 20000)),
            ("60 KB of a 64 KB body", 200, 256,
             lambda s: s.sendall(R.request_bytes("POST", "/v1/messages", [
                 ("Authorization", "Bearer " + tok), ("Content-Type", "application/json"),
                 ("Content-Length", "65536")]) + b"b" * 60000)),
            ("2 MB chunked body", 10, 512,
             lambda s: s.sendall(R.request_bytes("POST", "/v1/messages", [
                 ("Authorization", "Bearer " + tok), ("Content-Type", "application/json"),
                 ("Transfer-Encoding", "chunked")]) + (b"10000\r\n" + b"c" * 65536 + b"\r\n") * 32)),
        ]
        failures = []
        for name, n, per_kb, fill in phases:
            rss0 = srv.rss_kb()
            socks = []
            try:
                for _ in range(n):
                    s = R.connect(srv.base, timeout=10)
                    fill(s)
                    socks.append(s)
                time.sleep(1.0)
                rss1 = srv.rss_kb()
                alive(srv.base)
            finally:
                R.close_all(socks)
            grow = rss1 - rss0
            print("%-22s x%-3d RSS +%d KB (%.1f KB a connection, bound %d)" % (name, n, grow, grow / float(n), per_kb))
            if grow > n * per_kb:
                failures.append("%s: RSS grew %d KB for %d connections (more than %d KB each)" % (
                    name, grow, n, per_kb))
            time.sleep(0.5)
        assert not failures, "\n".join(failures)


test_memory_per_connection_is_bounded.timeout = 90
