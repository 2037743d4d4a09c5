"""Read state: POST /v1/inbox/read by seq or by conversation, read receipts
on the sender's streams on the other node, status read everywhere after."""

from chatlib import (assert_error, expect_json, inbox, node, post, send, stream, uid,
                     wait_until)
from chatlib_groups import (conv_of, create_chat, mark_read, message_ids, read, receipts_of,
                            recipients, send_chat, wait_receipt_from, wait_recipient_status)


def _statuses(base, user):
    return [(i["message_id"], i["status"]) for i in inbox(base, user, status="all")["items"]]


def _pending(base, user):
    return [i["message_id"] for i in inbox(base, user, status="pending")["items"]]


def _check_read_entry(e, desc=""):
    assert e.get("status") == "read", "%s: status %r, want read: %r" % (desc, e.get("status"), e)
    assert isinstance(e.get("read_ts"), int), "%s: read_ts %r" % (desc, e)
    assert isinstance(e.get("delivered_ts"), int), "%s: a read row must also be delivered: %r" % (desc, e)
    assert e["delivered_ts"] <= e["read_ts"], "%s: delivered after read: %r" % (desc, e)


def test_read_up_to_marks_rows_and_sends_read_receipts():
    """bob (never streamed) reads up to his 2nd seq on node2: {"read": 2}; alice's
    stream on node1 gets a read receipt for each of those two and none for the
    third; the inbox and GET /v1/messages show read (delivered_ts set too); the
    pending inbox and a fresh stream no longer offer them; a repeat reads 0."""
    n1, n2 = node(1), node(2)
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    mids = [send(n1, alice, bob, "read me %d" % i)["message_id"] for i in range(3)]
    for m in mids:
        e = recipients(n1, alice, m)[bob]
        assert e["status"] == "pending" and e.get("read_ts") is None, e
    with stream(n1, alice) as a_s:
        read(n2, bob, {"up_to": 2}, expect_n=2)
        for m in mids[:2]:
            d = wait_receipt_from(a_s, m, bob, "read", timeout=5)
            assert set(d) >= {"message_id", "user", "status", "ts"}, d
        marker = send(n2, carol, alice, "marker")["message_id"]
        a_s.wait_message_id(marker, timeout=5)
        assert not receipts_of(a_s, mids[2], "read"), "a read receipt for the unread third message"
        for m in mids[:2]:
            assert len(receipts_of(a_s, m, "read")) == 1, "read receipts for %s: %r" % (m, receipts_of(a_s, m))
    assert _statuses(n1, bob) == [(mids[0], "read"), (mids[1], "read"), (mids[2], "pending")], _statuses(n1, bob)
    assert _pending(n2, bob) == [mids[2]], "the pending inbox lists read rows: %r" % _pending(n2, bob)
    for base in (n1, n2):
        for m in mids[:2]:
            _check_read_entry(recipients(base, alice, m)[bob], "alice's view of %s" % m)
            _check_read_entry(recipients(base, bob, m)[bob], "bob's view of %s" % m)
        e = recipients(base, alice, mids[2])[bob]
        assert e["status"] == "pending" and e.get("read_ts") is None, e
    read(n1, bob, {"up_to": 2}, expect_n=0)
    read(n1, bob, {"up_to": 1}, expect_n=0)
    # a fresh stream (no Last-Event-ID) replays only the unread third one
    with stream(n2, bob) as b_s:
        b_s.wait_message_id(mids[2], timeout=5)
        marker = send(n1, alice, bob, "marker")["message_id"]
        b_s.wait_message_id(marker, timeout=5)
        assert message_ids(b_s) == [mids[2], marker], "replay after reading: %r" % message_ids(b_s)
    read(n2, bob, {"up_to": 10 ** 12}, expect_n=2)
    assert _pending(n1, bob) == []
    assert [s for _, s in _statuses(n1, bob)] == ["read"] * 4, _statuses(n1, bob)


def test_read_after_delivered_keeps_delivered_ts():
    """Rows already delivered by a stream: reading one sets read and read_ts,
    keeps delivered_ts, sends one read receipt; the other stays delivered."""
    n1, n2 = node(1), node(2)
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    with stream(n1, alice) as a_s, stream(n2, bob) as b_s:
        mids = [send(n1, alice, bob, "seen %d" % i)["message_id"] for i in range(2)]
        evs = b_s.wait_messages(2, timeout=5)
        for m in mids:
            wait_receipt_from(a_s, m, bob, "delivered", timeout=5)
        before = {m: wait_recipient_status(n1, alice, m, bob, "delivered") for m in mids}
        for m in mids:
            assert isinstance(before[m].get("delivered_ts"), int) and before[m].get("read_ts") is None, before[m]
        read(n1, bob, {"up_to": evs[0].json()["seq"]}, expect_n=1)
        wait_receipt_from(a_s, mids[0], bob, "read", timeout=5)
        marker = send(n2, carol, alice, "marker")["message_id"]
        a_s.wait_message_id(marker, timeout=5)
        assert not receipts_of(a_s, mids[1], "read"), "read receipt for the unread one"
        assert not receipts_of(b_s), "the reader's own stream got receipts: %r" % receipts_of(b_s)
    e = recipients(n2, alice, mids[0])[bob]
    _check_read_entry(e, "read after delivered")
    assert e["delivered_ts"] == before[mids[0]]["delivered_ts"], "reading changed delivered_ts: %r -> %r" % (
        before[mids[0]], e)
    e = recipients(n2, alice, mids[1])[bob]
    assert e["status"] == "delivered" and e.get("read_ts") is None, e
    assert _statuses(n2, bob) == [(mids[0], "read"), (mids[1], "delivered")], _statuses(n2, bob)


def test_read_by_direct_conversation():
    """{"conversation": peer} reads only that peer's direct rows (not the
    peer's group messages, not other peers'); with up_to only those up to it."""
    n1, n2 = node(1), node(2)
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    gid = create_chat(n1, alice, "side", [bob])["chat"]
    a = [send(n1, alice, bob, "a0")["message_id"]]
    c = [send(n2, carol, bob, "c0")["message_id"]]
    ga = send_chat(n1, alice, gid, "in the group")["message_id"]
    a.append(send(n2, alice, bob, "a1")["message_id"])
    c.append(send(n1, carol, bob, "c1")["message_id"])
    seq = {i["message_id"]: i["seq"] for i in inbox(n1, bob, status="all")["items"]}
    with stream(n2, alice) as a_s, stream(n1, carol) as c_s:
        read(n2, bob, {"conversation": alice}, expect_n=2)
        for m in a:
            wait_receipt_from(a_s, m, bob, "read", timeout=5)
        st = dict(_statuses(n1, bob))
        assert [st[m] for m in a] == ["read", "read"], st
        assert st[ga] == "pending", "reading the direct conversation read alice's group message"
        assert [st[m] for m in c] == ["pending", "pending"], "reading alice's conversation read carol's rows"
        read(n1, bob, {"conversation": carol, "up_to": seq[c[0]]}, expect_n=1)
        wait_receipt_from(c_s, c[0], bob, "read", timeout=5)
        st = dict(_statuses(n2, bob))
        assert st[c[0]] == "read" and st[c[1]] == "pending" and st[ga] == "pending", st
        marker = send(n1, bob, carol, "marker")["message_id"]
        c_s.wait_message_id(marker, timeout=5)
        assert not receipts_of(c_s, c[1], "read"), "read receipt for carol's unread row"
        assert not receipts_of(a_s, ga, "read"), "read receipt for the unread group row"
    read(n1, bob, {"conversation": alice}, expect_n=0)
    read(n1, bob, {"conversation": uid("nobody")}, expect_n=0)
    assert _pending(n2, bob) == [ga, c[1]], _pending(n2, bob)


def test_read_by_group_conversation():
    """{"conversation": "chat:<id>"} reads that group's rows only; the sender
    gets a read receipt per reader; GET /v1/messages shows read per member."""
    n1, n2 = node(1), node(2)
    alice, bob, carol, dave = uid("alice"), uid("bob"), uid("carol"), uid("dave")
    gid = create_chat(n1, alice, "readers", [bob, carol])["chat"]
    conv = conv_of(gid)
    with stream(n2, alice) as a_s:
        g = [send_chat(n1, alice, gid, "group %d" % i)["message_id"] for i in range(2)]
        d = send(n2, dave, bob, "direct from dave")["message_id"]
        read(n1, bob, {"conversation": conv}, expect_n=2)
        for m in g:
            wait_receipt_from(a_s, m, bob, "read", timeout=5)
        st = dict(_statuses(n2, bob))
        assert st[g[0]] == "read" and st[g[1]] == "read" and st[d] == "pending", st
        for m in g:
            rs = recipients(n2, alice, m)
            _check_read_entry(rs[bob], "bob on %s" % m)
            assert rs[carol]["status"] == "pending" and rs[carol].get("read_ts") is None, rs[carol]
        # carol reads the first only, by seq
        read(n2, carol, {"up_to": 1}, expect_n=1)
        wait_receipt_from(a_s, g[0], carol, "read", timeout=5)
        rs = recipients(n1, alice, g[0])
        _check_read_entry(rs[carol], "carol on the first")
        rs = recipients(n1, alice, g[1])
        assert rs[carol]["status"] == "pending", rs
        read(n1, carol, {"conversation": conv, "up_to": 10 ** 12}, expect_n=1)
        wait_receipt_from(a_s, g[1], carol, "read", timeout=5)
        marker = send(n1, dave, alice, "marker")["message_id"]
        a_s.wait_message_id(marker, timeout=5)
        for m in g:
            users = sorted(x["user"] for x in receipts_of(a_s, m, "read"))
            assert users == sorted([bob, carol]), "read receipts for %s: %r" % (m, users)
    assert _pending(n1, bob) == [d]
    assert _pending(n1, carol) == []


def test_read_bad_requests():
    """Bodies without up_to or conversation, of the wrong type, or not JSON: 400;
    no token: 401; nothing is marked by any of them."""
    n1 = node(1)
    alice, bob = uid("alice"), uid("bob")
    mids = [send(n1, alice, bob, "keep %d" % i)["message_id"] for i in range(2)]
    bad = [{}, {"foo": 1}, {"up_to": "x"}, {"up_to": None}, {"up_to": 1.5}, {"up_to": [1]}, {"up_to": True},
           {"conversation": 5}, {"conversation": ""}, {"conversation": None}, {"conversation": "bad user!"},
           {"conversation": "x" * 65}, {"conversation": [alice]}, {"conversation": alice, "up_to": "x"},
           {"conversation": alice, "up_to": None}, [1, 2], b'"x"', b"5", b"null"]
    for body in bad:
        try:
            assert_error(mark_read(n1, bob, body), 400, "bad_request")
        except AssertionError as e:
            raise AssertionError("POST /v1/inbox/read %r: %s" % (body, e))
    for raw in (b'{"up_to":', b"", b"not json"):
        assert_error(mark_read(n1, bob, raw), 400, "bad_request")
    assert_error(post(n1, "/v1/inbox/read", {"up_to": 10 ** 12}), 401, "unauthorized")
    assert _pending(n1, bob) == mids, "a refused read marked rows"
    for m in mids:
        assert recipients(n1, alice, m)[bob]["status"] == "pending"


def test_read_only_touches_own_rows():
    """Another user, the sender, and an outsider to a group reading everything
    change none of bob's rows and send no receipts."""
    n1, n2 = node(1), node(2)
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    gid = create_chat(n1, alice, "private", [bob])["chat"]
    with stream(n1, alice) as a_s:
        mids = [send(n1, alice, bob, "for bob %d" % i)["message_id"] for i in range(2)]
        mids.append(send_chat(n2, alice, gid, "group for bob")["message_id"])
        read(n2, carol, {"up_to": 10 ** 12}, expect_n=0)
        read(n2, carol, {"conversation": alice}, expect_n=0)
        read(n1, carol, {"conversation": bob}, expect_n=0)
        r = mark_read(n1, carol, {"conversation": conv_of(gid)})
        if r.status == 200:
            assert expect_json(r, 200) == {"read": 0}, r
        else:
            assert_error(r, 403, "forbidden")
        # the sender reading her side marks nothing of bob's
        read(n1, alice, {"conversation": bob}, expect_n=0)
        read(n1, alice, {"conversation": conv_of(gid)}, expect_n=0)
        read(n2, alice, {"up_to": 10 ** 12}, expect_n=0)
        marker = send(n2, carol, alice, "marker")["message_id"]
        a_s.wait_message_id(marker, timeout=5)
        assert not [x for x in receipts_of(a_s) if x.get("status") == "read"], receipts_of(a_s)
    assert _pending(n1, bob) == mids, "bob's rows changed: %r" % _statuses(n1, bob)
    for m in mids:
        assert recipients(n2, alice, m)[bob]["status"] == "pending"
    # and bob himself can
    read(n2, bob, {"up_to": 10 ** 12}, expect_n=3)
    wait_until(lambda: all(recipients(n1, alice, m)[bob]["status"] == "read" for m in mids), 5,
               "bob's rows to show read")
