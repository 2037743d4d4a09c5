"""Bearer tokens: HS256 only, exp required, sub a valid user id."""

import base64
import hashlib
import hmac
import json
import time
import urllib.parse

from chatlib import (SSEStream, assert_error, b64url, expect_json, get, jwt, node, now_ms, post,
                     secret, stream, token, uid)


def bad_tokens(user):
    now = int(time.time())
    good = {"sub": user, "exp": now + 3600}
    valid = jwt(good)
    h, p, s = valid.split(".")
    tampered_payload = b64url(json.dumps({"sub": "admin", "exp": now + 3600}, separators=(",", ":")))
    flipped = s[:-2] + ("AA" if s[-2:] != "AA" else "BB")
    return {
        "forged (wrong secret)": jwt(good, key=secret() + "x"),
        "expired": jwt({"sub": user, "exp": now - 120}),
        "alg none, empty signature": jwt(good, header={"alg": "none", "typ": "JWT"}, signature=""),
        "alg None, empty signature": jwt(good, header={"alg": "None", "typ": "JWT"}, signature=""),
        "alg none, valid HS256 signature": jwt(good, header={"alg": "none", "typ": "JWT"}),
        "no alg, valid HS256 signature": jwt(good, header={"typ": "JWT"}),
        "HS512 header, valid HS512 signature": jwt(good, alg="HS512"),
        "HS256 header signed with HS512": jwt(good, header={"alg": "HS256", "typ": "JWT"}, signature=b64url(
            hmac.new(secret().encode(), (h + "." + p).encode(), hashlib.sha512).digest())),
        "missing exp": jwt({"sub": user}),
        "exp not a number": jwt({"sub": user, "exp": "tomorrow"}),
        "missing sub": jwt({"exp": now + 3600}),
        "sub with bad chars": jwt({"sub": "bad user!", "exp": now + 3600}),
        "sub with slash": jwt({"sub": "../etc", "exp": now + 3600}),
        "sub too long": jwt({"sub": "u" * 65, "exp": now + 3600}),
        "sub empty": jwt({"sub": "", "exp": now + 3600}),
        "sub not a string": jwt({"sub": 12345, "exp": now + 3600}),
        "payload swapped": h + "." + tampered_payload + "." + s,
        "signature flipped": h + "." + p + "." + flipped,
        "signature missing": h + "." + p,
        "garbage": "garbage",
        "empty parts": "..",
        "not base64": "!!!.@@@.###",
        "header not JSON": b64url("nope") + "." + p + "." + s,
    }


def _endpoints(base, bob):
    body = {"to": bob, "body": "hi"}
    return [
        ("POST /v1/messages", lambda h, q="": post(base, "/v1/messages" + q, body, headers=h)),
        ("GET /v1/inbox", lambda h, q="": get(base, "/v1/inbox" + q, headers=h)),
        ("GET /v1/poll", lambda h, q="": get(base, "/v1/poll?timeout=0", headers=h, timeout=5)),
        ("GET /v1/messages/{id}", lambda h, q="": get(base, "/v1/messages/m123", headers=h)),
        ("GET /v1/events", lambda h, q="": _events(base, h, q)),
        ("POST /v1/inbox/ack", lambda h, q="": post(base, "/v1/inbox/ack" + q, {"up_to": 1}, headers=h)),
    ]


def _events(base, headers, q):
    s = SSEStream(base, None, headers=headers, query=dict(urllib.parse.parse_qsl(q[1:])) if q else None).open()
    s.close()
    if s.resp is None:
        raise AssertionError("GET /v1/events%s opened a %d stream" % (q, s.status))
    return s.resp


def test_bad_tokens_are_401_everywhere():
    base = node(1)
    user, bob = uid("mallory"), uid("bob")
    cases = {name: {"Authorization": "Bearer " + t} for name, t in bad_tokens(user).items()}
    cases.update({
        "no Authorization": {},
        "Bearer with no token": {"Authorization": "Bearer"},
        "Bearer and a space": {"Authorization": "Bearer "},
        "Basic scheme": {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()},
        "token without scheme": {"Authorization": token(user)},
    })
    failures = []
    for ename, call in _endpoints(base, bob):
        for cname, hdrs in cases.items():
            try:
                assert_error(call(hdrs), 401, "unauthorized")
            except AssertionError as e:
                failures.append("%s with %s: %s" % (ename, cname, e))
    assert not failures, "%d failures:\n" % len(failures) + "\n".join(failures)
    # nothing was stored for bob by any of those
    assert expect_json(get(base, "/v1/inbox?status=all", token=token(bob)), 200)["items"] == []
    assert get(base, "/healthz").status == 200


def test_bad_access_token_is_401():
    base = node(2)
    user = uid("mallory")
    failures = []
    for cname, t in bad_tokens(user).items():
        q = "?access_token=" + urllib.parse.quote(t, safe="")
        for ename, fn in (("events", lambda: _events(base, {}, q)),
                          ("poll", lambda: get(base, "/v1/poll" + q + "&timeout=0", timeout=5))):
            try:
                assert_error(fn(), 401, "unauthorized")
            except AssertionError as e:
                failures.append("%s with %s: %s" % (ename, cname, e))
    assert not failures, "%d failures:\n" % len(failures) + "\n".join(failures)


def test_access_token_only_for_events_and_poll():
    n1 = node(1)
    alice, bob = uid("alice"), uid("bob")
    q = "?access_token=" + token(bob)
    # accepted for the stream and the poll
    with stream(n1, None, access_token=token(bob)) as s:
        assert s.status == 200
    r = get(n1, "/v1/poll" + q + "&timeout=0")
    assert expect_json(r, 200)["items"] == [], r
    # refused for the REST paths
    r = post(n1, "/v1/messages" + "?access_token=" + token(alice), {"to": bob, "body": "hi"})
    assert_error(r, 401, "unauthorized")
    assert_error(get(n1, "/v1/inbox" + q), 401, "unauthorized")
    assert_error(post(n1, "/v1/inbox/ack" + q, {"up_to": 1}), 401, "unauthorized")
    assert expect_json(get(n1, "/v1/inbox?status=all", token=token(bob)), 200)["items"] == []


def test_valid_tokens_are_accepted():
    n1 = node(1)
    alice, bob = uid("alice"), uid("bob")
    now = int(time.time())
    # extra claims, a kid, no typ: still a valid HS256 token
    for t in (jwt({"sub": alice, "exp": now + 60}),
              jwt({"sub": alice, "exp": now + 60, "iat": now, "aud": "chat", "jti": "x"}),
              jwt({"sub": alice, "exp": now + 60}, header={"alg": "HS256"}),
              jwt({"sub": alice, "exp": now + 60}, header={"alg": "HS256", "typ": "JWT", "kid": "k1"})):
        r = post(n1, "/v1/messages", {"to": bob, "body": "ok"}, token=t)
        expect_json(r, 201)
    j = expect_json(get(n1, "/v1/inbox?status=all", token=token(bob)), 200)
    assert len(j["items"]) == 4, j


def test_dev_token_endpoint_only_where_enabled():
    # The test stack turns [auth] dev_tokens on for node1, node2 and the
    # fronts' chat.fcgi (as `up` does); node3 keeps the shipped default, off.
    alice, bob = uid("alice"), uid("bob")
    r = post(node(1), "/v1/dev/token", {"user": alice})
    j = expect_json(r, 201)
    assert j["user"] == alice and j["expires_ts"] > now_ms(), j
    expect_json(post(node(1), "/v1/messages", {"to": bob, "body": "dev"}, token=j["token"]), 201)
    for bad in ({}, {"user": ""}, {"user": "bad user!"}, {"user": 7}, {"user": "u" * 65}):
        assert_error(post(node(1), "/v1/dev/token", bad), 400, "bad_request")
    assert_error(post(node(3), "/v1/dev/token", {"user": alice}), 404, "not_found")
