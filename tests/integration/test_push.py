"""The push hook: a row still PENDING [push] after seconds after it was
stored is POSTed once to [push] url (JSON: recipient, message id, sender,
chat, ts, a preview cut on a UTF-8 boundary); a 2xx ends it for good, any
other answer or a timeout is retried with backoff up to max_attempts; a row
delivered before then is never posted.

Each test starts a chatd of its own with a [push] section (node1's database
and Redis) and a receiver on loopback. That node's worker posts every due
row of the shared database, so the tests look only at their own fresh
recipients. Messages are sent through that node: it is the one that sets a
row's push time when it stores it."""

import secrets
import threading
import time

from chatlib import (assert_error, expect_json, get, inbox, node, post, send, stream, token, uid,
                     wait_delivered)
from chatlib_groups import create_chat, send_chat, wait_recipient_status
from chatlib_social import HookReceiver, OwnNode, block

AFTER_S = 1


def push_node(hook, **push):
    conf = {"url": hook.url, "after": AFTER_S, "preview_bytes": 10, "max_attempts": 3, "timeout_ms": 1000}
    conf.update(push)
    return OwnNode({"push": conf}, name="push")


def stays(hook, recipient, n, seconds, what):
    """Asserts recipient has exactly n hook requests for `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        got = hook.for_recipient(recipient)
        assert len(got) == n, "%s: %d hook request(s) for %s, want %d: %r" % (what, len(got), recipient, n, got)
        if time.monotonic() >= deadline:
            return got
        time.sleep(0.05)


def check_post(r, hook):
    assert r.method == "POST", "hook got %s, want POST: %r" % (r.method, r)
    assert r.path == hook.path, "hook path %r, want %r (the URL's path)" % (r.path, hook.path)
    ct = (r.header("Content-Type") or "").lower()
    assert ct.split(";")[0].strip() == "application/json", "hook Content-Type %r" % ct


def test_push_posts_pending_message_once_with_exact_payload():
    """Offline recipients: each row is posted once, about `after` s after the
    201, with exactly the documented fields; the preview is the first 10
    bytes cut back to a UTF-8 boundary (3- and 4-byte characters), whole and
    truncated=false when the body fits; nothing more for several seconds; the
    row stays PENDING (a push is not a delivery) and is replayed later."""
    alice = uid("alice")
    cases = {
        uid("bob"): ("ab\u2615\u2615\u2615 tail", "ab\u2615\u2615", True),  # cut inside the 3rd cup
        uid("carol"): ("h\u00e9llo w\u00f6", "h\u00e9llo w\u00f6", False),  # exactly 10 bytes
        uid("dave"): ("hi", "hi", False),
        uid("erin"): ("\U0001F600\U0001F600\U0001F600", "\U0001F600\U0001F600", True),  # 12 bytes
        uid("frank"): ("h\u00e9llo w\u00f6rld", "h\u00e9llo w\u00f6", True),  # 10 bytes, then more
    }
    hook = HookReceiver(path="/push/" + secrets.token_hex(4))
    with hook, push_node(hook) as pn:
        sent = {}
        for rcpt, (body, _, _) in cases.items():
            t = time.monotonic()
            sent[rcpt] = (send(pn.base, alice, rcpt, body), t)
        for rcpt, (body, preview, truncated) in cases.items():
            m, t_sent = sent[rcpt]
            [r] = hook.wait_count(rcpt, 1, timeout=6)
            check_post(r, hook)
            dt = r.t - t_sent
            assert dt >= AFTER_S - 0.2, "posted %.2f s after the send, before after=%d s: %r" % (dt, AFTER_S, r)
            assert dt < AFTER_S + 4, "posted only %.2f s after the send: %r" % (dt, r)
            want = {"recipient": rcpt, "message_id": m["message_id"], "from": alice, "chat": None,
                    "ts": m["ts"], "preview": preview, "truncated": truncated}
            got = r.json()
            assert got == want, "hook payload for body %r:\n got  %r\n want %r" % (body, got, want)
            assert len(preview.encode("utf-8")) <= 10
        for rcpt in cases:
            stays(hook, rcpt, 1, 0, "right after the first posts")
        stays(hook, next(iter(cases)), 1, 4.0, "after a 200")
        for rcpt in cases:
            stays(hook, rcpt, 1, 0, "4 s after the 200")
        # still pending: a push is not a delivery; the stream replays it
        rcpt = next(iter(cases))
        items = inbox(node(1), rcpt, status="pending")["items"]
        assert [i["message_id"] for i in items] == [sent[rcpt][0]["message_id"]], items
        with stream(node(2), rcpt) as s:
            s.wait_message_id(sent[rcpt][0]["message_id"], timeout=5)
        wait_delivered(node(1), alice, sent[rcpt][0]["message_id"], rcpt)
        stays(hook, rcpt, 1, 0, "after the replay")


def test_push_retries_with_backoff_until_2xx():
    """The hook answers 500 twice, then 200 (max_attempts = 3): exactly three
    posts of the same payload, the second about 1 s after the first, the third
    about 2 s after the second; then none."""
    alice, bob = uid("alice"), uid("bob")
    hook = HookReceiver(plan=lambda rcpt, n: 500 if rcpt == bob and n < 2 else 200)
    with hook, push_node(hook) as pn:
        m = send(pn.base, alice, bob, "retry me please")
        rs = hook.wait_count(bob, 3, timeout=12)
        assert [r.status for r in rs] == [500, 500, 200], rs
        for r in rs:
            check_post(r, hook)
        assert all(r.body == rs[0].body for r in rs), "the retries changed the payload: %r" % rs
        got = rs[0].json()
        assert got["message_id"] == m["message_id"] and got["recipient"] == bob, got
        g1, g2 = rs[1].t - rs[0].t, rs[2].t - rs[1].t
        print("retry gaps: %.2f s, %.2f s" % (g1, g2))
        assert 0.9 <= g1 <= 3.0, "first retry %.2f s after the first post, want about 1 s" % g1
        assert 1.9 <= g2 <= 4.0, "second retry %.2f s after the first retry, want about 2 s" % g2
        assert g2 > g1, "the delays do not grow: %.2f s then %.2f s" % (g1, g2)
        stays(hook, bob, 3, 5.0, "after the 200")


def test_push_gives_up_after_max_attempts():
    """The hook always answers 500: exactly max_attempts = 3 posts, then none
    (the next one would be due 4 s after the third)."""
    alice, bob = uid("alice"), uid("bob")
    hook = HookReceiver(plan=lambda rcpt, n: 500 if rcpt == bob else 200)
    with hook, push_node(hook) as pn:
        send(pn.base, alice, bob, "nobody answers")
        rs = hook.wait_count(bob, 3, timeout=12)
        assert [r.status for r in rs] == [500, 500, 500], rs
        stays(hook, bob, 3, 6.0, "after max_attempts failed posts")


def test_push_timeout_is_retried():
    """A hook that does not answer within timeout_ms counts as a failure: the
    row is posted again (and once more only), after the backoff."""
    alice, bob = uid("alice"), uid("bob")
    hook = HookReceiver(plan=lambda rcpt, n: ("sleep", 3.0, 200) if rcpt == bob and n == 0 else 200)
    with hook, push_node(hook, timeout_ms=500) as pn:
        send(pn.base, alice, bob, "slow gateway")
        rs = hook.wait_count(bob, 2, timeout=10)
        gap = rs[1].t - rs[0].t
        assert gap >= 1.2, "retried %.2f s after a post that timed out at 0.5 s; want the 1 s backoff after it" % gap
        assert rs[1].body == rs[0].body, rs
        stays(hook, bob, 2, 4.0, "after the 200 that followed the timeout")


def test_push_never_posts_a_delivered_row():
    """Rows delivered before `after` (to a stream on node1 through Redis, to a
    stream on the push node itself, to a long-poll on node2) are never posted;
    an offline recipient's row of the same moment is (so the hook works)."""
    alice, bob, carol, dave, erin = (uid(n) for n in ("alice", "bob", "carol", "dave", "erin"))
    hook = HookReceiver()
    with hook, push_node(hook) as pn:
        bs, cs = stream(node(1), bob), stream(pn.base, carol)
        polled = {}

        def poll():
            polled["r"] = get(node(2), "/v1/poll?after=0&timeout=8", token=token(dave), timeout=15)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        try:
            time.sleep(0.5)  # the poll is parked
            mids = {}
            for u in (bob, carol, dave, erin):
                mids[u] = send(pn.base, alice, u, "to %s" % u)["message_id"]
            bs.wait_message_id(mids[bob], timeout=5)
            cs.wait_message_id(mids[carol], timeout=5)
            th.join(10)
            j = expect_json(polled["r"], 200)
            assert [i["message_id"] for i in j["items"]] == [mids[dave]], j
            for u in (bob, carol, dave):
                wait_recipient_status(pn.base, alice, mids[u], u, "delivered", timeout=3)
            hook.wait_count(erin, 1, timeout=6)
            for u in (bob, carol, dave):
                stays(hook, u, 0, 0, "a delivered row was posted")
            stays(hook, bob, 0, 3.0, "a delivered row was posted")
            for u in (carol, dave):
                stays(hook, u, 0, 0, "a delivered row was posted")
        finally:
            bs.close()
            cs.close()


def test_push_group_message_posts_each_offline_member():
    """A group message: one post for the member who is offline (chat set to
    the group), none for the member streaming, none for the sender."""
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    hook = HookReceiver()
    with hook, push_node(hook) as pn:
        gid = create_chat(node(1), alice, "push group", [bob, carol])["chat"]
        with stream(node(2), bob) as bs:
            m = send_chat(pn.base, alice, gid, "group \u00e9t\u00e9 hello")
            bs.wait_message_id(m["message_id"], timeout=5)
            [r] = hook.wait_count(carol, 1, timeout=6)
            want = {"recipient": carol, "message_id": m["message_id"], "from": alice, "chat": gid,
                    "ts": m["ts"], "preview": "group \u00e9t", "truncated": True}
            assert r.json() == want, "group hook payload:\n got  %r\n want %r" % (r.json(), want)
            stays(hook, carol, 1, 2.5, "a second post for the group row")
            stays(hook, bob, 0, 0, "the streaming member's row was posted")
            stays(hook, alice, 0, 0, "the sender was posted her own message")


def test_push_without_preview():
    """preview_bytes = 0: the payload has no preview and no truncated."""
    alice, bob = uid("alice"), uid("bob")
    hook = HookReceiver()
    with hook, push_node(hook, preview_bytes=0) as pn:
        m = send(pn.base, alice, bob, "secret body, never in a push")
        [r] = hook.wait_count(bob, 1, timeout=6)
        want = {"recipient": bob, "message_id": m["message_id"], "from": alice, "chat": None, "ts": m["ts"]}
        assert r.json() == want, "payload without preview:\n got  %r\n want %r" % (r.json(), want)
        assert b"secret" not in r.body, r.body


def test_push_node_serves_blocks():
    """A blocked sender's message through the push node stores nothing, so
    nothing is posted either."""
    alice, bob = uid("alice"), uid("bob")
    hook = HookReceiver()
    with hook, push_node(hook) as pn:
        block(node(1), bob, alice)
        r = post(pn.base, "/v1/messages", {"to": bob, "body": "let me in"}, token=token(alice))
        assert_error(r, 403, "blocked")
        stays(hook, bob, 0, AFTER_S + 2.5, "a refused message was posted")
