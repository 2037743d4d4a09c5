"""Delivery mode client (node4): only the device's ACK makes a row delivered."""

import time

from chatlib import (check_item, expect_json, inbox, node, post, recipient_status, send, stream,
                     token, uid, wait_delivered)


def _stays_pending(base, alice, mids, bob, seconds):
    """Checks for `seconds` that the rows stay pending (a write is not delivery here)."""
    deadline = time.monotonic() + seconds
    while True:
        for m in mids:
            r = recipient_status(base, alice, m, bob)
            assert r["status"] == "pending", "client mode: %s became %r without an ACK" % (m, r)
            assert r.get("delivered_ts") is None, r
        if time.monotonic() >= deadline:
            return
        time.sleep(0.2)


def test_client_mode_up_to():
    n4 = node(4)
    alice, bob = uid("alice"), uid("bob")
    with stream(n4, alice) as a_s, stream(n4, bob) as b_s:
        sent = send(n4, alice, bob, "ack me")
        mid = sent["message_id"]
        ev = b_s.wait_message_id(mid, timeout=5)
        check_item(ev.json(), alice, bob, "ack me", mid)
        seq = ev.json()["seq"]
        _stays_pending(n4, alice, [mid], bob, 1.5)
        assert [i["message_id"] for i in inbox(n4, bob, status="pending")["items"]] == [mid]
        assert not a_s.receipts(), "receipt before any ACK: %r" % a_s.receipts()
        # a second device (a new stream without Last-Event-ID) gets the still-pending row again
        with stream(n4, bob) as b2:
            assert b2.wait_messages(1, timeout=5)[0].json()["message_id"] == mid
        r = post(n4, "/v1/inbox/ack", {"up_to": seq}, token=token(bob))
        assert expect_json(r, 200) == {"acked": 1}, r
        rc = a_s.wait_receipt(mid, timeout=5)
        d = rc.json()
        assert d["user"] == bob and d["status"] == "delivered" and isinstance(d["ts"], int), d
        st = wait_delivered(n4, alice, mid, bob, timeout=3)
        assert isinstance(st.get("delivered_ts"), int), st
        assert not inbox(n4, bob, status="pending")["items"]
        items = inbox(n4, bob, status="all")["items"]
        assert [(i["message_id"], i["status"]) for i in items] == [(mid, "delivered")], items
        # acking again changes nothing and sends no second receipt
        r = post(n4, "/v1/inbox/ack", {"up_to": seq}, token=token(bob))
        assert expect_json(r, 200) == {"acked": 0}, r
        marker = send(n4, bob, alice, "marker")["message_id"]
        a_s.wait_message_id(marker, timeout=5)
        assert len([e for e in a_s.receipts() if e.json()["message_id"] == mid]) == 1, a_s.receipts()


def test_client_mode_seqs():
    n4 = node(4)
    alice, bob = uid("alice"), uid("bob")
    with stream(n4, alice) as a_s, stream(n4, bob) as b_s:
        mids = [send(n4, alice, bob, "m%d" % i)["message_id"] for i in range(3)]
        evs = b_s.wait_messages(3, timeout=5)
        assert [e.json()["message_id"] for e in evs] == mids, evs
        seqs = [e.json()["seq"] for e in evs]
        _stays_pending(n4, alice, mids, bob, 1.2)
        r = post(n4, "/v1/inbox/ack", {"seqs": [seqs[2]]}, token=token(bob))
        assert expect_json(r, 200) == {"acked": 1}, r
        a_s.wait_receipt(mids[2], timeout=5)
        wait_delivered(n4, alice, mids[2], bob, timeout=3)
        for m in mids[:2]:
            assert recipient_status(n4, alice, m, bob)["status"] == "pending"
        pend = [i["message_id"] for i in inbox(n4, bob, status="pending")["items"]]
        assert pend == mids[:2], pend
        r = post(n4, "/v1/inbox/ack", {"seqs": [seqs[0], seqs[2], 10 ** 9]}, token=token(bob))
        assert expect_json(r, 200) == {"acked": 1}, r
        a_s.wait_receipt(mids[0], timeout=5)
        wait_delivered(n4, alice, mids[0], bob, timeout=3)
        assert recipient_status(n4, alice, mids[1], bob)["status"] == "pending"
        r = post(n4, "/v1/inbox/ack", {"up_to": seqs[2]}, token=token(bob))
        assert expect_json(r, 200) == {"acked": 1}, r
        a_s.wait_receipt(mids[1], timeout=5)
        assert not inbox(n4, bob, status="pending")["items"]
