"""Every error status with its JSON body, and the node keeps serving after it."""

import socket
import time
import urllib.parse

from chatlib import (SSEStream, assert_error, assert_retry_after, door, expect, expect_json, get,
                     node, post, request, send, token, uid, via_front)


def alive(base):
    r = get(base, "/healthz", timeout=5)
    assert r.status == 200, "%s stopped serving: /healthz -> %d %r" % (base, r.status, r.body[:200])


def check(resp, status, code, base):
    e = assert_error(resp, status, code)
    alive(base)
    return e


def test_bad_request_messages():
    n1 = node(1)
    alice, bob = uid("alice"), uid("bob")
    tok = token(alice)
    raw_cases = [
        b'{"to":', b'{"to": "bob", "body": "hi"', b"[1,2]", b'"just a string"', b"null", b"42",
        b"", b"not json at all", b'{"to":"%s","body":"\xff"}' % bob.encode(),
        b'{"to":"%s","body":"\xc3\x28"}' % bob.encode(),  # invalid 2-byte sequence
        b'{"to":"%s","body":"\xed\xa0\x80"}' % bob.encode(),  # UTF-8-encoded surrogate
        b'{"to":"%s","body":"\\ud800"}' % bob.encode(),  # lone surrogate escape
    ]
    for raw in raw_cases:
        r = post(n1, "/v1/messages", raw, token=tok)
        try:
            check(r, 400, "bad_request", n1)
        except AssertionError as e:
            raise AssertionError("body %r: %s" % (raw, e))
    obj_cases = [
        {"body": "hi"}, {"to": bob}, {},
        {"to": "bad user!", "body": "hi"}, {"to": "x" * 65, "body": "hi"}, {"to": "", "body": "hi"},
        {"to": "b\u00f6b", "body": "hi"}, {"to": 5, "body": "hi"}, {"to": None, "body": "hi"},
        {"to": [bob], "body": "hi"},
        {"to": bob, "body": ""}, {"to": bob, "body": 123}, {"to": bob, "body": None},
        {"to": bob, "body": ["x"]}, {"to": bob, "body": {"a": 1}}, {"to": bob, "body": True},
    ]
    for obj in obj_cases:
        r = post(n1, "/v1/messages", obj, token=tok)
        try:
            check(r, 400, "bad_request", n1)
        except AssertionError as e:
            raise AssertionError("body %r: %s" % (obj, e))
    # none of these stored anything
    j = expect_json(get(n1, "/v1/inbox?status=all", token=token(bob)), 200)
    assert j["items"] == [], j
    # the edges that are fine: 64-char recipient, yourself, all allowed characters
    send(n1, alice, "a" * 64, "edge")
    send(n1, alice, alice, "note to self")
    send(n1, alice, "A-z_0.9@x" + uid(""), "charset")


def test_bad_request_inbox_ack_events():
    n1 = node(1)
    bob = uid("bob")
    tok = token(bob)
    for q in ("status=foo", "status=", "after=abc", "after=-1", "after=1.5", "limit=0", "limit=1001",
              "limit=abc", "limit=-3"):
        check(get(n1, "/v1/inbox?" + q, token=tok), 400, "bad_request", n1)
    for obj in ({}, {"up_to": "x"}, {"seqs": "x"}, {"seqs": ["a"]}, {"up_to": None}, {"seqs": [1.5]},
                {"foo": 1}, [1, 2]):
        r = post(n1, "/v1/inbox/ack", obj, token=tok)
        try:
            check(r, 400, "bad_request", n1)
        except AssertionError as e:
            raise AssertionError("ack body %r: %s" % (obj, e))
    check(post(n1, "/v1/inbox/ack", b'{"up_to":', token=tok), 400, "bad_request", n1)
    for bad in ("abc", "-1", "1.5", "12x"):
        s = SSEStream(n1, bob, last_event_id=bad).open()
        assert s.resp is not None, "Last-Event-ID %r opened a stream (status %s)" % (bad, s.status)
        s.close()
        check(s.resp, 400, "bad_request", n1)
        s = SSEStream(n1, bob, query_last_event_id=bad).open()
        assert s.resp is not None, "?last_event_id=%r opened a stream (status %s)" % (bad, s.status)
        s.close()
        check(s.resp, 400, "bad_request", n1)
    # valid ones still work
    expect_json(get(n1, "/v1/inbox?status=all&after=0&limit=1000", token=tok), 200)
    expect_json(get(n1, "/v1/inbox?limit=1", token=tok), 200)
    assert expect_json(post(n1, "/v1/inbox/ack", {"seqs": []}, token=tok), 200).get("acked") == 0


def test_unauthorized_and_forbidden():
    n1, n2 = node(1), node(2)
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    check(get(n1, "/v1/inbox"), 401, "unauthorized", n1)
    check(post(n1, "/v1/messages", {"to": bob, "body": "hi"}), 401, "unauthorized", n1)
    mid = send(n1, alice, bob, "private")["message_id"]
    path = "/v1/messages/" + urllib.parse.quote(mid, safe="")
    check(get(n2, path, token=token(carol)), 403, "forbidden", n2)
    expect_json(get(n2, path, token=token(alice)), 200)
    expect_json(get(n2, path, token=token(bob)), 200)


def test_not_found():
    n1 = node(1)
    alice = uid("alice")
    tok = token(alice)
    for path in ("/v1/nope", "/nope", "/v1/messages/does-not-exist-123", "/v1/inbox/nope", "/v2/messages",
                 "/v1/messages/" + "9" * 30):
        r = get(n1, path, token=tok)
        if via_front() and not path.startswith("/v1/"):
            # Outside /v1/ a front serves www/: its own 404 page, not the API's JSON.
            assert r.status == 404, "%s: expected 404 from %s, got %d" % (r.desc, door(), r.status)
            alive(n1)
            continue
        check(r, 404, "not_found", n1)
    check(post(n1, "/v1/messages", {"chat": "x", "body": "hi"}, token=tok), 404, "not_found", n1)


def test_method_not_allowed():
    n1 = node(1)
    alice, bob = uid("alice"), uid("bob")
    tok = token(alice)
    mid = send(n1, alice, bob, "m")["message_id"]
    cases = [("DELETE", "/v1/messages", "POST"), ("GET", "/v1/messages", "POST"),
             ("PUT", "/v1/messages/" + mid, "GET"), ("POST", "/v1/inbox", "GET"),
             ("GET", "/v1/inbox/ack", "POST"), ("POST", "/v1/events", "GET"),
             ("DELETE", "/v1/poll", "GET"), ("POST", "/healthz", "GET")]
    for method, path, allowed in cases:
        body = {"x": 1} if method in ("POST", "PUT") else None
        r = request(n1, method, path, body=body, token=tok)
        check(r, 405, "method_not_allowed", n1)
        allow = r.header("Allow")
        assert allow, "%s: 405 without an Allow header" % r.desc
        methods = [m.strip().upper() for m in allow.split(",")]
        assert allowed in methods, "%s: Allow %r lacks %s" % (r.desc, allow, allowed)
        assert method not in methods, "%s: Allow %r lists the refused method" % (r.desc, allow)


def test_payload_too_large():
    n1 = node(1)
    alice, bob = uid("alice"), uid("bob")
    tok = token(alice)
    # exactly 4096 bytes is fine, in ASCII and in 4-byte characters
    send(n1, alice, bob, "x" * 4096)
    send(n1, alice, bob, "\U0001F600" * 1024)
    for body in ("x" * 4097, "\U0001F600" * 1024 + "a", "\u00e9" * 2049, "y" * 20000):
        r = post(n1, "/v1/messages", {"to": bob, "body": body}, token=tok)
        check(r, 413, "payload_too_large", n1)
    # a whole HTTP body past 65536 bytes, whatever it holds
    big = b'{"to":"%s","body":"hi","pad":"%s"}' % (bob.encode(), b"p" * 70000)
    check(post(n1, "/v1/messages", big, token=tok), 413, "payload_too_large", n1)
    check(post(n1, "/v1/inbox/ack", b'{"seqs":[' + b"1," * 40000 + b'1]}', token=token(bob)),
          413, "payload_too_large", n1)
    check(post(n1, "/v1/messages", b"z" * 300000, token=tok), 413, "payload_too_large", n1)
    j = expect_json(get(n1, "/v1/inbox?status=all", token=token(bob)), 200)
    assert len(j["items"]) == 2, "expected only the two 4096-byte messages: %r" % [len(i["body"]) for i in j["items"]]


def test_unsupported_media_type():
    n1 = node(1)
    alice, bob = uid("alice"), uid("bob")
    tok = token(alice)
    body = ('{"to":"%s","body":"hi"}' % bob).encode()
    for ct in (None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
               "application/jsonx"):
        r = request(n1, "POST", "/v1/messages", body=body, token=tok, content_type=ct)
        try:
            check(r, 415, "unsupported_media_type", n1)
        except AssertionError as e:
            raise AssertionError("Content-Type %r: %s" % (ct, e))
    r = request(n1, "POST", "/v1/inbox/ack", body=b'{"up_to":1}', token=token(bob), content_type="text/plain")
    check(r, 415, "unsupported_media_type", n1)
    for ct in ("application/json; charset=utf-8", "application/json;charset=UTF-8", "Application/JSON"):
        r = request(n1, "POST", "/v1/messages", body=body, token=tok, content_type=ct)
        expect_json(r, 201)


def test_rate_limited_node3():
    n3 = node(3)
    alice, bob = uid("ratey"), uid("bob")
    tok = token(alice)
    results = []
    for i in range(10):
        r = post(n3, "/v1/messages", {"to": bob, "body": "burst %d" % i}, token=tok)
        results.append(r)
    statuses = [r.status for r in results]
    assert statuses[0] == 201, statuses
    assert set(statuses) <= {201, 429}, statuses
    limited = [r for r in results if r.status == 429]
    assert limited, "10 fast POSTs at 5/s burst 5 were never limited: %r" % statuses
    assert statuses.count(201) >= 4, "burst 5 should let about 5 through: %r" % statuses
    for r in limited:
        assert_error(r, 429, "rate_limited")
        ra = assert_retry_after(r)
        assert ra <= 10, "Retry-After %d is far more than the bucket needs" % ra
    alive(n3)
    # only the 201s are stored
    j = expect_json(get(n3, "/v1/inbox?status=all", token=token(bob)), 200)
    assert len(j["items"]) == statuses.count(201), (statuses, len(j["items"]))
    # another user is not limited by alice's burst
    send(n3, uid("calm"), bob, "unaffected")
    # after Retry-After the same user may send again
    time.sleep(assert_retry_after(limited[-1]))
    r = post(n3, "/v1/messages", {"to": bob, "body": "later"}, token=tok)
    expect_json(r, 201)


def test_backend_unavailable_node5():
    n5 = node(5)
    alice, bob = uid("alice"), uid("bob")
    t0 = time.monotonic()
    r = post(n5, "/v1/messages", {"to": bob, "body": "into the void"}, token=token(alice), timeout=10)
    dt = time.monotonic() - t0
    assert_error(r, 503, "backend_unavailable")
    assert_retry_after(r)
    assert dt < 5, "503 took %.1f s" % dt
    t0 = time.monotonic()
    r = get(n5, "/v1/inbox", token=token(bob), timeout=10)
    assert_error(r, 503, "backend_unavailable")
    assert_retry_after(r)
    assert time.monotonic() - t0 < 5
    expect(get(n5, "/healthz"), 200)
    r = get(n5, "/readyz", timeout=10)
    assert r.status == 503, "readyz with MySQL down: %d %r" % (r.status, r.body[:300])
    assert "mysql" in r.body.decode("utf-8", "replace").lower(), "readyz does not name mysql: %r" % r.body[:300]
    e = assert_error(r, 503, "backend_unavailable")
    assert "mysql" in e["message"].lower(), e
    # still answering after all that
    expect(get(n5, "/healthz"), 200)
    expect(get(n5, "/metrics"), 200)


def test_health_ready_metrics():
    for n in (1, 2, 3, 4):
        base = node(n)
        expect(get(base, "/healthz"), 200)
        j = expect_json(get(base, "/readyz"), 200)
        assert j.get("status") == "ready", j
    r = expect(get(node(1), "/metrics"), 200)
    ct = (r.header("Content-Type") or "").lower()
    assert ct.startswith("text/plain"), "metrics Content-Type %r" % ct
    text = r.body.decode("utf-8")
    for name in ("chat_streams_open", "chat_ack_timeouts_total"):
        assert any(line.startswith(name) for line in text.splitlines()), "%s missing from /metrics" % name
    assert "# TYPE" in text, "no # TYPE lines in /metrics"


def _raw(base, payload, read=True):
    u = urllib.parse.urlsplit(base)
    s = socket.create_connection((u.hostname, u.port), timeout=5)
    try:
        s.sendall(payload)
        if read:
            try:
                s.shutdown(socket.SHUT_WR)
                s.recv(65536)
            except OSError:
                pass
    finally:
        s.close()


def test_garbage_does_not_hurt():
    n1 = node(1)
    bad = [b"GARBAGE\r\n\r\n", b"\x00\xff\xfe" * 100, b"GET / HTTP/1.1\r\nHost: x\r\n",  # never ends
           b"GET /v1/inbox HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 100000 + b"\r\n\r\n",
           b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: 100\r\n\r\n{\"to\"",
           b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
           b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
           b"GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"." * 5000 + b"\r\n\r\n"]
    for p in bad:
        _raw(n1, p, read=p.endswith(b"\r\n\r\n"))
        _raw(n1, p, read=False)
        alive(n1)
    # and a normal request works end to end
    send(n1, uid("alice"), uid("bob"), "still fine")


def test_tricky_json_and_utf8():
    """Inputs a C JSON parser tends to get wrong: each is a 400, or stored exactly."""
    n1 = node(1)
    alice, bob = uid("alice"), uid("bob")
    tok = token(alice)
    b = bob.encode()
    must_400 = [
        b'{"to":"%s","body":"hi"} trailing' % b,  # garbage after the value
        b'{"to":"%s","body":"hi"}{}' % b,
        b'{"to":"%s","body":"\xc0\xaf"}' % b,  # overlong encoding
        b'{"to":"%s","body":"\xe0\x80\xaf"}' % b,  # overlong, 3 bytes
        b'{"to":"%s","body":"\xf4\x90\x80\x80"}' % b,  # past U+10FFFF
        b'{"to":"%s","body":"\xf8\x88\x80\x80\x80"}' % b,  # 5-byte form
        b'{"to":"%s","body":"\xe2\x82"}' % b,  # truncated sequence
        b'{"to":"%s","body":"\x80"}' % b,  # lone continuation byte
        b'{"to":"%s","body":"ok","x":"\xff"}' % b,  # invalid UTF-8 elsewhere in the document
        b'{"to":"%s","body":"\\x41"}' % b,  # not a JSON escape
        b'{"to":"%s","body":"\\ud83d"}' % b,  # high surrogate alone
        b'{"to":"%s","body":"\\udc00\\ud83d"}' % b,  # reversed pair
        b"[" * 20000 + b"]" * 20000,  # deep nesting
        b'{"a":' * 10000 + b"1" + b"}" * 10000,
    ]
    for raw in must_400:
        r = post(n1, "/v1/messages", raw, token=tok)
        try:
            check(r, 400, "bad_request", n1)
        except AssertionError as e:
            raise AssertionError("body %r: %s" % (raw[:80], e))
    # valid but unusual: stored and returned exactly
    for body in ("\uffff\ufffe", "\U0010ffff", "\U0001F600" * 3, "\\u0041 is not unescaped twice", "\x7f\x01\x1f"):
        s = send(n1, alice, bob, body)
        assert s["body"] == body, (s, body)
    # a raw control character inside a string is not JSON (RFC 8259 7)
    r = post(n1, "/v1/messages", b'{"to":"%s","body":"a\nb\tc"}' % b, token=tok)
    check(r, 400, "bad_request", n1)
    # an embedded NUL would silently cut the text in cJSON: refused
    r = post(n1, "/v1/messages", {"to": bob, "body": "before\u0000after"}, token=tok)
    check(r, 400, "bad_request", n1)
    items = expect_json(get(n1, "/v1/inbox?status=all", token=token(bob)), 200)["items"]
    for it in items:
        assert it["body"] != "before", "a body was truncated at the NUL: %r" % it


def test_numbers_out_of_range():
    n1 = node(1)
    bob = uid("bob")
    tok = token(bob)
    huge = "99999999999999999999999999"
    for q in ("after=" + huge, "limit=" + huge, "after=18446744073709551616", "after=1e3", "after=0x10",
              "after=+5", "after= 5"):
        check(get(n1, "/v1/inbox?" + q.replace(" ", "%20"), token=tok), 400, "bad_request", n1)
    check(get(n1, "/v1/poll?timeout=0&after=" + huge, token=tok), 400, "bad_request", n1)
    check(get(n1, "/v1/poll?timeout=" + huge, token=tok), 400, "bad_request", n1)
    for lei in (huge, "18446744073709551616", "1e3", " 5x"):
        s = SSEStream(n1, bob, last_event_id=lei).open()
        s.close()
        assert s.resp is not None, "Last-Event-ID %r opened a stream" % lei
        check(s.resp, 400, "bad_request", n1)
    for obj in ({"up_to": 1e300}, {"up_to": 18446744073709551616 * 10}, {"seqs": [1e300]},
                {"up_to": "5"}, {"up_to": True}, {"seqs": [True]}):
        r = post(n1, "/v1/inbox/ack", obj, token=tok)
        try:
            check(r, 400, "bad_request", n1)
        except AssertionError as e:
            raise AssertionError("ack %r: %s" % (obj, e))


def test_client_msg_id_must_be_a_string():
    n1 = node(1)
    alice, bob = uid("alice"), uid("bob")
    for cid in (5, True, ["x"], {"a": 1}):
        r = post(n1, "/v1/messages", {"to": bob, "body": "hi", "client_msg_id": cid}, token=token(alice))
        try:
            check(r, 400, "bad_request", n1)
        except AssertionError as e:
            raise AssertionError("client_msg_id %r: %s" % (cid, e))
    # a very long one is refused cleanly (or accepted), never a 5xx
    r = post(n1, "/v1/messages", {"to": bob, "body": "hi", "client_msg_id": "c" * 5000}, token=token(alice))
    assert r.status in (201, 400, 413), "client_msg_id of 5000 chars: %d %r" % (r.status, r.body[:300])
    alive(n1)
    assert expect_json(get(n1, "/v1/inbox?status=all", token=token(bob)), 200)["items"] == [] or r.status == 201
