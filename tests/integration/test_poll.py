"""Long-poll: wakes on a message from the other node, times out on time."""

import threading
import time

from chatlib import (assert_error, check_item, expect, expect_json, front, get, node, post,
                     recipient_status, request, send, token, uid, wait_delivered)


def _poll(base, user, after, timeout, http_timeout=None):
    t0 = time.monotonic()
    r = get(base, "/v1/poll?after=%s&timeout=%s" % (after, timeout), token=token(user),
            timeout=http_timeout or (float(timeout) + 10))
    return r, time.monotonic() - t0


def test_poll_wakes_on_message_from_other_node():
    n1, n2 = node(1), node(2)
    alice, bob = uid("alice"), uid("bob")
    res = {}

    def waiter():
        res["r"], res["dt"] = _poll(n2, bob, 0, 10)
        res["t_end"] = time.monotonic()

    th = threading.Thread(target=waiter, daemon=True)
    th.start()
    th.join(0.6)
    assert th.is_alive(), "poll on an empty inbox answered at once: %r" % res.get("r")
    t_sent = time.monotonic()
    sent = send(n1, alice, bob, "wake up")
    th.join(5)
    assert not th.is_alive(), "poll did not wake within 5 s of the 201"
    wake = res["t_end"] - t_sent
    print("poll woke %.1f ms after the POST began" % (wake * 1000))
    assert wake < 1.0, "poll woke %.2f s after the message" % wake
    j = expect_json(res["r"], 200)
    assert len(j["items"]) == 1, j
    check_item(j["items"][0], alice, bob, "wake up", sent["message_id"])
    assert j["next_after"] == j["items"][0]["seq"] and j["more"] is False, j
    # in server mode the poll's answer is the delivery
    wait_delivered(n1, alice, sent["message_id"], bob)


def test_poll_times_out_empty():
    carol = uid("carol")
    r, dt = _poll(node(1), carol, 0, 1)
    j = expect_json(r, 200)
    assert j == {"items": [], "next_after": 0, "more": False}, j
    assert 0.8 <= dt <= 2.5, "timeout=1 answered after %.2f s" % dt
    r, dt = _poll(node(2), carol, 0, 0)
    assert expect_json(r, 200)["items"] == [] and dt < 1.0, (r, dt)


def test_poll_answers_at_once_when_rows_exist():
    n1, n2 = node(1), node(2)
    alice, bob = uid("alice"), uid("bob")
    m1 = send(n1, alice, bob, "one")["message_id"]
    m2 = send(n2, alice, bob, "two")["message_id"]
    r, dt = _poll(n2, bob, 0, 10)
    j = expect_json(r, 200)
    assert dt < 1.0, "poll with rows waiting took %.2f s" % dt
    assert [i["message_id"] for i in j["items"]] == [m1, m2], j
    s1, s2 = j["items"][0]["seq"], j["items"][1]["seq"]
    assert s1 < s2 and j["next_after"] == s2, j
    # after=s1 gives only the second, whatever its status now
    r, dt = _poll(n1, bob, s1, 10)
    j = expect_json(r, 200)
    assert dt < 1.0 and [i["message_id"] for i in j["items"]] == [m2], (dt, j)
    # nothing after s2: holds for the timeout, answers with after echoed back
    r, dt = _poll(n1, bob, s2, 1)
    j = expect_json(r, 200)
    assert j == {"items": [], "next_after": s2, "more": False}, j
    assert 0.8 <= dt <= 2.5, dt
    for m in (m1, m2):
        wait_delivered(n1, alice, m, bob)
        assert recipient_status(n2, bob, m, bob)["status"] == "delivered"


def test_poll_bad_arguments():
    n1 = node(1)
    bob = uid("bob")
    for q in ("timeout=61", "timeout=abc", "timeout=-1", "after=abc&timeout=0", "after=-5&timeout=0"):
        r = get(n1, "/v1/poll?" + q, token=token(bob), timeout=5)
        assert_error(r, 400, "bad_request")
    expect(get(n1, "/healthz"), 200)


def test_poll_loop_sees_every_row_once_under_concurrency():
    """A client looping on /v1/poll?after=<next_after>, alternating nodes,
    while 4 senders write through both: every row once, in seq order."""
    n1, n2 = node(1), node(2)
    rcpt = uid("rcpt")
    senders = [(uid("p%d" % i), n1 if i % 2 else n2) for i in range(4)]
    per = 25
    sent = {u: [] for u, _ in senders}
    errors = []

    def sender(user, base):
        try:
            for i in range(per):
                sent[user].append(send(base, user, rcpt, "%s %d" % (user, i))["message_id"])
                time.sleep(0.01)
        except BaseException as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=sender, args=s, daemon=True) for s in senders]
    for t in threads:
        t.start()
    got = []
    after = 0
    k = 0
    deadline = time.monotonic() + 30
    while len(got) < 4 * per and time.monotonic() < deadline and not errors:
        r = get(n1 if k % 2 else n2, "/v1/poll?after=%d&timeout=2" % after, token=token(rcpt), timeout=10)
        j = expect_json(r, 200)
        k += 1
        seqs = [i["seq"] for i in j["items"]]
        assert all(s > after for s in seqs), "poll after=%d returned %r" % (after, seqs)
        assert seqs == sorted(set(seqs)), seqs
        got.extend(j["items"])
        assert j["next_after"] == (seqs[-1] if seqs else after), j
        after = j["next_after"]
    for t in threads:
        t.join(10)
    assert not errors, errors
    total = 4 * per
    assert [i["seq"] for i in got] == list(range(1, total + 1)), "seqs seen: %r" % [i["seq"] for i in got]
    order = [i["message_id"] for i in got]
    for user, mids in sent.items():
        assert [m for m in order if m in set(mids)] == mids, "%s out of order" % user
    print("%d rows in %d polls" % (total, k))


def test_poll_and_errors_through_front():
    """The long-poll and the REST errors behave the same through lighttpd."""
    f, n1 = front(), node(1)
    alice, bob = uid("alice"), uid("bob")
    res = {}

    def waiter():
        res["r"], res["dt"] = _poll(f, bob, 0, 8)
        res["t_end"] = time.monotonic()

    th = threading.Thread(target=waiter, daemon=True)
    th.start()
    th.join(0.6)
    assert th.is_alive(), "poll through the front answered at once: %r" % res.get("r")
    t0 = time.monotonic()
    mid = send(n1, alice, bob, "via the front")["message_id"]
    th.join(5)
    assert not th.is_alive(), "poll through the front did not wake"
    assert res["t_end"] - t0 < 1.0, "front poll woke %.2f s after the POST" % (res["t_end"] - t0)
    j = expect_json(res["r"], 200)
    assert [i["message_id"] for i in j["items"]] == [mid], j
    r, dt = _poll(f, uid("carol"), 0, 1)
    assert expect_json(r, 200)["items"] == [] and 0.8 <= dt <= 2.5, (r, dt)
    assert_error(get(f, "/v1/inbox"), 401, "unauthorized")
    assert_error(get(f, "/v1/poll?timeout=61", token=token(bob)), 400, "bad_request")
    assert_error(get(f, "/v1/messages/nope-" + mid, token=token(bob)), 404, "not_found")
    assert_error(post(f, "/v1/messages", b'{"to":"x","body":"y"}', token=token(alice), content_type="text/plain"),
                 415, "unsupported_media_type")
    assert_error(post(f, "/v1/messages", {"to": bob, "body": "x" * 4097}, token=token(alice)),
                 413, "payload_too_large")
    r = request(f, "DELETE", "/v1/messages", token=token(alice))
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in (r.header("Allow") or ""), r.header("Allow")
    expect(get(f, "/healthz"), 200)
