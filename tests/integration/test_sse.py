"""The SSE stream itself: headers, first frame, keepalive, vanished clients, text."""

import json
import time

from chatlib import (KEEPALIVE_S, SSEStream, check_item, door, expect_json, front, get, get_message,
                     inbox, node, post, send, stream, streams_open, token, uid, wait_delivered,
                     wait_until)


def _check_headers(s, strict=True):
    s.expect_ok()
    ct = (s.header("Content-Type") or "").lower()
    assert ct.startswith("text/event-stream"), "%s: Content-Type %r" % (s.desc, ct)
    cc = (s.header("Cache-Control") or "").lower()
    assert "no-cache" in cc, "%s: Cache-Control %r" % (s.desc, cc)
    if strict:
        xab = (s.header("X-Accel-Buffering") or "").lower()
        assert xab == "no", "%s: X-Accel-Buffering %r" % (s.desc, xab)


def test_stream_headers_first_frame_and_keepalive():
    idle = 5.0
    bob = uid("bob")
    streams = [SSEStream(node(1), bob).open(), SSEStream(front(), bob).open()]
    try:
        _check_headers(streams[0], strict=True)
        _check_headers(streams[1], strict=False)
        for s in streams:
            s.wait_connected()
            assert s.fields and s.fields[0] == ("retry", "3000"), "%s: first frame %r, want retry: 3000" % (
                s.desc, s.fields[:3])
        t0 = time.monotonic()
        for s in streams:
            s.wait_for(lambda: len(s.comments) >= 2, idle + 0.5 - (time.monotonic() - t0),
                       "2 keepalive comments within %.0f s" % idle)
        for s in streams:
            ts = [t for t, _ in s.comments]
            gaps = [b - a for a, b in zip(ts, ts[1:])]
            print("%s: %d comments, gaps %s" % (s.desc, len(ts), ["%.2f" % g for g in gaps]))
            assert not s.events, "idle stream got events: %r" % s.events
            assert not s.ended, "stream ended while idle: %r" % s.error
    finally:
        for s in streams:
            s.close()


def _open_streams():
    """chat_streams_open of chatd node1 and node2 together (through a front
    a user's streams may be on either)."""
    return sum(streams_open().values())


def test_vanished_clients_are_dropped():
    """20 streams (through the door) whose clients vanish, half with a RST,
    half with a FIN: the chatd nodes free them within two keepalives. (A
    front notices a vanished client when a write to it fails, and then
    closes its connection to chatd.)"""
    n1 = node(1)
    users = [uid("flaky"), uid("flaky")]  # 10 each: the per-user cap is 10
    before = _open_streams()
    streams = []
    try:
        for user in users:
            for _ in range(10):
                streams.append(stream(n1, user))
        opened = _open_streams()
        print("chat_streams_open of node1+node2: before %d, with 20 open %d" % (before, opened))
        assert opened >= 20, "20 streams open but chat_streams_open is %s" % opened
        for i, s in enumerate(streams):
            if i % 2 == 0:
                s.abort()  # RST
            else:
                s.close()  # FIN, then gone
        bound = KEEPALIVE_S * 2 + 2
        if door() == "apache":
            # Apache learns that a client is gone when a write to it fails:
            # the first keepalive after the close still goes out (and gets
            # a RST back), the next one fails.
            bound = KEEPALIVE_S * 3 + 2
        t0 = time.monotonic()
        target = min(before, opened - 20)
        wait_until(lambda: _open_streams() <= target, bound,
                   "chat_streams_open of node1+node2 to drop back to %d" % target, interval=0.2)
        print("dropped back after %.1f s" % (time.monotonic() - t0))
    finally:
        for s in streams:
            s.close()
    # the user can still stream and receive
    with stream(n1, user) as s:
        mid = send(n1, uid("alice"), user, "after the storm")["message_id"]
        s.wait_message_id(mid, timeout=5)


BODIES = [
    "a\nb\r\nc",
    "\U0001F600 \u00fcn\u00efc\u00f8d\u00e9",
    "line1\n\nline3\n",
    "\r",
    "data: not a field\n\nevent: nope\nid: 99",
    ": not a comment",
    "tab\there \"quoted\" back\\slash </script>",
    "\u2028\u2029\u0085 separators",
    "\u4e2d\u6587 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 \U0001F468\u200d\U0001F469\u200d\U0001F467",
    " leading and trailing spaces ",
]


def test_unicode_round_trip():
    n1, n2 = node(1), node(2)
    alice, bob = uid("alice"), uid("bob")
    with stream(n2, bob) as s:
        mids = []
        for i, body in enumerate(BODIES):
            sent = send(n1 if i % 2 == 0 else n2, alice, bob, body)
            assert sent["body"] == body, "201 echoed %r for %r" % (sent["body"], body)
            mids.append(sent["message_id"])
        evs = s.wait_messages(len(BODIES), timeout=5)
        for ev, body, mid in zip(evs, BODIES, mids):
            check_item(ev.json(), alice, bob, body, mid)
    items = inbox(n1, bob, status="all")["items"]
    assert [i["message_id"] for i in items] == mids
    for it, body in zip(items, BODIES):
        assert it["body"] == body, "inbox body %r, sent %r" % (it["body"], body)
    for mid, body in zip(mids, BODIES):
        assert expect_json(get_message(n2, alice, mid), 200)["body"] == body
    # the same text sent with \u escapes instead of raw UTF-8
    raw = json.dumps({"to": bob, "body": BODIES[1]}, ensure_ascii=True).encode()
    j = expect_json(post(n1, "/v1/messages", raw, token=token(alice)), 201)
    assert j["body"] == BODIES[1], j


def test_resume_returns_rows_of_any_status():
    """Last-Event-ID N yields exactly the rows after N, delivered ones too;
    no Last-Event-ID yields only the pending ones."""
    n1, n2 = node(1), node(2)
    alice, bob = uid("alice"), uid("bob")
    mids = [send(n2, alice, bob, "r%d" % i)["message_id"] for i in range(4)]
    # deliver them by a long-poll (server mode), so that no stream lingers
    j = expect_json(get(n1, "/v1/poll?after=0&timeout=5", token=token(bob)), 200)
    assert [i["message_id"] for i in j["items"]] == mids, j
    seqs = [i["seq"] for i in j["items"]]
    for m in mids:
        wait_delivered(n1, alice, m, bob)
    pending = send(n1, alice, bob, "still pending")["message_id"]
    # fresh device: only the pending row
    with stream(n2, bob) as s:
        ev = s.wait_messages(1, timeout=5)[0]
        assert ev.json()["message_id"] == pending, ev
        marker = send(n1, alice, bob, "marker")["message_id"]
        s.wait_message_id(marker, timeout=5)
        assert [e.json()["message_id"] for e in s.messages()] == [pending, marker], s.messages()
        last = int(s.messages()[-1].id)
    # resume after the second row: rows 3, 4 (delivered), the pending one and the marker
    for kw in ({"last_event_id": seqs[1]}, {"query_last_event_id": seqs[1]}):
        with stream(n2 if "last_event_id" in kw else n1, bob, **kw) as s:
            evs = s.wait_messages(4, timeout=5)
            assert [e.json()["message_id"] for e in evs] == mids[2:] + [pending, marker], evs
            assert int(evs[0].id) == seqs[1] + 1, evs
    # resume after the newest row: nothing until a new one comes
    with stream(n1, bob, last_event_id=last) as s:
        m = send(n2, alice, bob, "new")["message_id"]
        ev = s.wait_message_id(m, timeout=5)
        assert [e.json()["message_id"] for e in s.messages()] == [m], s.messages()
        assert int(ev.id) == last + 1, ev


def test_stream_cap_per_user():
    """max_streams_per_user (10): the 11th stream of one user on a node gets
    429 with Retry-After; once one closes (and the node has noticed), a new
    one is accepted. Another user is not affected."""
    from chatlib import SSEStream, assert_retry_after
    n1 = node(1)
    user, other = uid("greedy"), uid("calm")
    streams = [stream(n1, user) for _ in range(10)]
    try:
        extra = SSEStream(n1, user).open()
        try:
            assert extra.status == 429, "11th stream: %s" % extra.status
            assert_retry_after(extra)
        finally:
            extra.close()
        streams.append(stream(n1, other))
        streams.pop(0).close()

        def reopened():
            s = SSEStream(n1, user).open()
            if s.status == 200:
                streams.append(s)
                return True
            s.close()
            return False
        wait_until(reopened, 5, "a new stream once one closed", interval=0.2)
    finally:
        for s in streams:
            s.close()
