"""No user can read, ack, stream or poll another user's inbox."""

import urllib.parse

from chatlib import (assert_error, expect_json, get, inbox, node, post, recipient_status, send,
                     stream, token, uid)


def test_cannot_read_others_message():
    n1, n2 = node(1), node(2)
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    mid = send(n1, alice, bob, "for bob only")["message_id"]
    path = "/v1/messages/" + urllib.parse.quote(mid, safe="")
    for base in (n1, n2):
        r = get(base, path, token=token(carol))
        e = assert_error(r, 403, "forbidden")
        assert "for bob only" not in r.body.decode("utf-8", "replace"), "403 leaks the body: %r" % e
    assert expect_json(get(n2, path, token=token(bob)), 200)["body"] == "for bob only"
    assert expect_json(get(n1, path, token=token(alice)), 200)["body"] == "for bob only"


def test_ack_only_touches_own_rows():
    n1, n2 = node(1), node(2)
    alice, bob, carol, dave = uid("alice"), uid("bob"), uid("carol"), uid("dave")
    to_bob = send(n1, alice, bob, "to bob")["message_id"]
    to_dave = [send(n1, alice, dave, "to dave %d" % i)["message_id"] for i in range(3)]
    r = post(n2, "/v1/inbox/ack", {"up_to": 10 ** 12}, token=token(bob))
    assert expect_json(r, 200) == {"acked": 1}, r
    assert recipient_status(n1, alice, to_bob, bob)["status"] == "delivered"
    # carol has no rows: acking seqs 1..10 (dave's seqs too) changes nothing of dave's
    r = post(n1, "/v1/inbox/ack", {"seqs": list(range(1, 11))}, token=token(carol))
    assert expect_json(r, 200) == {"acked": 0}, r
    r = post(n1, "/v1/inbox/ack", {"up_to": 10 ** 12}, token=token(carol))
    assert expect_json(r, 200) == {"acked": 0}, r
    pend = inbox(n2, dave, status="pending")["items"]
    assert [i["message_id"] for i in pend] == to_dave, "dave's rows changed: %r" % pend
    for m in to_dave:
        assert recipient_status(n1, alice, m, dave)["status"] == "pending"
    # bob acking again is a no-op
    assert expect_json(post(n1, "/v1/inbox/ack", {"up_to": 10 ** 12}, token=token(bob)), 200) == {"acked": 0}


def test_stream_and_poll_show_only_own_rows():
    n1, n2 = node(1), node(2)
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    pending_bob = send(n1, alice, bob, "bob's pending")["message_id"]
    # carol streams with ?access_token= on node1, from seq 0 (every row of hers)
    with stream(n1, None, access_token=token(carol), query_last_event_id=0) as cs:
        live_bob = send(n2, alice, bob, "bob's live")["message_id"]
        marker = send(n2, alice, carol, "carol's own")["message_id"]
        cs.wait_message_id(marker, timeout=5)
        got = [e.json() for e in cs.messages()]
        assert [g["message_id"] for g in got] == [marker], "carol's stream got %r" % got
        assert all(g["to"] == carol for g in got), got
        assert not cs.receipts(), "carol got receipts: %r" % cs.receipts()
    # carol's poll and inbox: only her row
    r = get(n2, "/v1/poll?after=0&timeout=1", token=token(carol))
    j = expect_json(r, 200)
    assert [i["message_id"] for i in j["items"]] == [marker], j
    r = get(n1, "/v1/poll?after=0&timeout=0&access_token=" + token(carol))
    assert [i["message_id"] for i in expect_json(r, 200)["items"]] == [marker]
    assert [i["message_id"] for i in inbox(n1, carol, status="all")["items"]] == [marker]
    # bob's rows did not get delivered to anybody
    pend = [i["message_id"] for i in inbox(n2, bob, status="pending")["items"]]
    assert pend == [pending_bob, live_bob], "bob's rows: %r" % pend
    # a sender's stream does not get the messages it sends, only receipts
    with stream(n1, alice) as a_s:
        with stream(n2, bob) as b_s:
            b_s.wait_messages(2, timeout=5)
            a_s.wait_receipt(live_bob, timeout=5)
            assert not a_s.messages(), "alice's stream got messages: %r" % a_s.messages()
