"""Groups: create, list, show, members, fan-out to every member's streams on
both nodes, per-member receipts and status, removal cutting a stream off at
once, and Last-Event-ID resume with direct and group rows mixed."""

import random
import threading
import time

from chatlib import (SSEStream, assert_error, expect_json, get, get_message, inbox, inbox_all_pages,
                     node, post, send, stream, token, uid, wait_until)
from chatlib_groups import (change_members, check_chat, check_group_item, create_chat, fake_id,
                            get_chat, list_chats, message_ids, receipts_of, recipients, send_chat,
                            stay_quiet, wait_receipt_from, wait_recipient_status)


def _rows_for(base, user, mid):
    return [i for i in inbox(base, user, status="all")["items"] if i["message_id"] == mid]


# --------------------------------------------------------------------------
# the group object


def test_create_group_and_show_it_on_both_nodes():
    """201 with id, name, owner, sorted members (creator included, duplicates
    gone); GET /v1/chats/{id} shows the same object to every member on either node."""
    n1, n2 = node(1), node(2)
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    g = create_chat(n1, alice, "Weekend plans", [carol, bob, bob, alice, carol])
    assert g["members"] == sorted([alice, bob, carol]), g
    assert len(g["members"]) == 3, g
    for base, user in ((n1, alice), (n2, alice), (n2, bob), (n1, carol)):
        j = expect_json(get_chat(base, user, g["chat"]), 200)
        check_chat(j, "Weekend plans", alice, [alice, bob, carol], "GET as %s on %s" % (user, base))
        assert j["chat"] == g["chat"] and j["created_ts"] == g["created_ts"], (j, g)
    # the creator need not list itself; a 100-character and a non-ASCII name are fine
    dave = uid("dave")
    g2 = create_chat(n2, bob, "x" * 100, [dave])
    assert g2["members"] == sorted([bob, dave]) and g2["owner"] == bob, g2
    g3 = create_chat(n2, carol, "Caf\u00e9 \u2615 \U0001F600", [alice])
    j = expect_json(get_chat(n1, alice, g3["chat"]), 200)
    assert j["name"] == "Caf\u00e9 \u2615 \U0001F600", "name not kept byte-exact: %r" % j["name"]
    assert len({g["chat"], g2["chat"], g3["chat"]}) == 3, "two groups share an id"


def test_create_group_bad_input():
    """name missing/empty/over 100/not a string, members not an array of user
    ids, over 1000 members in total, bad JSON, no token: refused, nothing stored;
    exactly 1000 members in total is fine."""
    n1 = node(1)
    alice, bob = uid("alice"), uid("bob")
    tok = token(alice)
    bad = [
        {"members": [bob]}, {"name": "", "members": [bob]}, {"name": "x" * 101, "members": [bob]},
        {"name": 5, "members": [bob]}, {"name": None, "members": [bob]}, {"name": ["x"], "members": [bob]},
        {"name": {"a": 1}, "members": [bob]}, {"name": True, "members": [bob]},
        {"name": "ok", "members": bob}, {"name": "ok", "members": 5}, {"name": "ok", "members": {"a": bob}},
        {"name": "ok", "members": None}, {"name": "ok", "members": ["bad user!"]},
        {"name": "ok", "members": [""]}, {"name": "ok", "members": ["x" * 65]},
        {"name": "ok", "members": [5]}, {"name": "ok", "members": [None]}, {"name": "ok", "members": [[bob]]},
        {"name": "ok", "members": [bob, "b\u00f6b"]},
    ]
    for body in bad:
        r = post(n1, "/v1/chats", body, token=tok)
        try:
            assert_error(r, 400, "bad_request")
        except AssertionError as e:
            raise AssertionError("POST /v1/chats %r: %s" % (body, e))
    for raw in (b'{"name":', b"[1]", b'"x"', b"null", b"", b"not json"):
        try:
            assert_error(post(n1, "/v1/chats", raw, token=tok), 400, "bad_request")
        except AssertionError as e:
            raise AssertionError("POST /v1/chats %r: %s" % (raw, e))
    assert_error(post(n1, "/v1/chats", {"name": "ok", "members": [bob]}), 401, "unauthorized")
    # 1000 others + the creator = 1001
    others = ["m%04d_%s" % (i, uid("x")) for i in range(1000)]
    r = post(n1, "/v1/chats", {"name": "too big", "members": others}, token=tok)
    assert_error(r, 400, "bad_request")
    # nothing of the above was stored
    assert list_chats(n1, alice) == [], "a refused POST /v1/chats stored a group"
    assert list_chats(n1, bob) == [], "a refused POST /v1/chats made bob a member"
    assert list_chats(n1, others[0]) == [], "the refused 1001-member group was stored"
    # 999 others + the creator = 1000: fine
    g = create_chat(n1, alice, "just fits", others[:999])
    assert len(g["members"]) == 1000, len(g["members"])
    [entry] = list_chats(node(2), alice)
    assert entry["chat"] == g["chat"] and entry["members_count"] == 1000, entry
    # the creator listing itself among 1000 is still 1000 in total
    g2 = create_chat(n1, bob, "also fits", [bob] + others[:999])
    assert len(g2["members"]) == 1000, len(g2["members"])


def test_list_chats_only_mine_newest_first():
    """GET /v1/chats lists the caller's groups only (owned or joined), newest
    first, with chat, name, owner, members_count, created_ts."""
    n1, n2 = node(1), node(2)
    alice, bob, carol, dave = uid("alice"), uid("bob"), uid("carol"), uid("dave")
    g1 = create_chat(n1, alice, "one", [bob])
    time.sleep(0.01)
    g2 = create_chat(n2, alice, "two", [carol])
    time.sleep(0.01)
    g3 = create_chat(n1, bob, "three", [alice, carol, dave])

    def entries(base, user):
        out = []
        for e in list_chats(base, user):
            for k in ("chat", "name", "owner", "members_count", "created_ts"):
                assert k in e, "GET /v1/chats as %s: entry without %r: %r" % (user, k, e)
            out.append((e["chat"], e["name"], e["owner"], e["members_count"], e["created_ts"]))
        return out

    def row(g, count):
        return (g["chat"], g["name"], g["owner"], count, g["created_ts"])

    for base in (n1, n2):
        assert entries(base, alice) == [row(g3, 4), row(g2, 2), row(g1, 2)], entries(base, alice)
        assert entries(base, bob) == [row(g3, 4), row(g1, 2)], entries(base, bob)
        assert entries(base, carol) == [row(g3, 4), row(g2, 2)], entries(base, carol)
        assert entries(base, dave) == [row(g3, 4)], entries(base, dave)
        assert entries(base, uid("eve")) == [], "a stranger sees groups"


def test_show_group_forbidden_and_unknown():
    """A non-member gets 403 (and not the group's name), an unknown id 404, on both nodes."""
    n1, n2 = node(1), node(2)
    alice, bob, eve = uid("alice"), uid("bob"), uid("eve")
    g = create_chat(n1, alice, "secret-name-%s" % uid("n"), [bob])
    for base in (n1, n2):
        r = get_chat(base, eve, g["chat"])
        assert_error(r, 403, "forbidden")
        assert g["name"].encode() not in r.body and bob.encode() not in r.body, "403 leaks the group: %r" % r.body
        assert_error(get_chat(base, alice, fake_id()), 404, "not_found")
        assert_error(get(base, "/v1/chats/" + g["chat"]), 401, "unauthorized")


# --------------------------------------------------------------------------
# members


def test_owner_adds_and_removes_members():
    """The owner adds and removes in one request (200, the object after the
    change), or either alone; the member lists of everyone follow."""
    n1, n2 = node(1), node(2)
    alice, bob, carol, dave, erin, frank = (uid(n) for n in ("alice", "bob", "carol", "dave", "erin", "frank"))
    g = create_chat(n1, alice, "team", [bob, carol])
    gid = g["chat"]
    j = expect_json(change_members(n1, alice, gid, add=[dave, erin], remove=[bob]), 200)
    check_chat(j, "team", alice, [alice, carol, dave, erin], "add+remove")
    assert j["chat"] == gid, j
    # seen the same way on the other node, by a new member
    j = expect_json(get_chat(n2, dave, gid), 200)
    check_chat(j, "team", alice, [alice, carol, dave, erin], "GET as dave on node2")
    assert_error(get_chat(n2, bob, gid), 403, "forbidden")
    assert gid not in [c["chat"] for c in list_chats(n2, bob)], "bob still lists the group"
    [e] = [c for c in list_chats(n1, dave) if c["chat"] == gid]
    assert e["members_count"] == 4, e
    j = expect_json(change_members(n2, alice, gid, add=[frank]), 200)
    check_chat(j, "team", alice, [alice, carol, dave, erin, frank], "add only")
    j = expect_json(change_members(n1, alice, gid, remove=[erin]), 200)
    check_chat(j, "team", alice, [alice, carol, dave, frank], "remove only")
    assert_error(get_chat(n1, erin, gid), 403, "forbidden")
    j = expect_json(get_chat(n2, frank, gid), 200)
    check_chat(j, "team", alice, [alice, carol, dave, frank], "final GET")


def test_member_change_permissions_and_leave():
    """Non-owners cannot add or remove others (403), outsiders cannot touch the
    group (403), the owner cannot remove itself (409), unknown group 404, bad
    bodies 400, nothing changes after any of those; a member may leave."""
    n1, n2 = node(1), node(2)
    alice, bob, carol, dave, eve = (uid(n) for n in ("alice", "bob", "carol", "dave", "eve"))
    g = create_chat(n1, alice, "perm", [bob, carol])
    gid = g["chat"]
    cases = [
        (bob, {"add": [dave]}, 403, "forbidden"),
        (bob, {"remove": [carol]}, 403, "forbidden"),
        (bob, {"remove": [alice]}, 403, "forbidden"),
        (bob, {"add": [dave], "remove": [bob]}, 403, "forbidden"),
        (eve, {"add": [eve]}, 403, "forbidden"),
        (eve, {"remove": [eve]}, 403, "forbidden"),
        (eve, {"remove": [bob]}, 403, "forbidden"),
        (alice, {"remove": [alice]}, 409, "conflict"),
        (alice, {"add": [dave], "remove": [alice]}, 409, "conflict"),
    ]
    for i, (user, body, status, code) in enumerate(cases):
        base = n1 if i % 2 else n2
        try:
            assert_error(change_members(base, user, gid, body=body), status, code)
        except AssertionError as e:
            raise AssertionError("%s %r: %s" % (user, body, e))
    assert_error(change_members(n1, alice, fake_id(), add=[dave]), 404, "not_found")
    bad = [{}, {"add": "x"}, {"add": 5}, {"add": None}, {"add": [5]}, {"add": ["bad user!"]},
           {"add": ["x" * 65]}, {"remove": bob}, {"remove": [None]}, {"remove": [""]}, [bob], b'"x"', b"null"]
    for body in bad:
        try:
            assert_error(change_members(n1, alice, gid, body=body), 400, "bad_request")
        except AssertionError as e:
            raise AssertionError("members body %r: %s" % (body, e))
    assert_error(change_members(n1, alice, gid, body=b'{"add":'), 400, "bad_request")
    assert_error(post(n1, "/v1/chats/%s/members" % gid, {"add": [dave]}), 401, "unauthorized")
    # nothing changed
    j = expect_json(get_chat(n2, carol, gid), 200)
    check_chat(j, "perm", alice, [alice, bob, carol], "after the refused changes")
    assert_error(get_chat(n1, dave, gid), 403, "forbidden")
    # bob leaves
    j = expect_json(change_members(n2, bob, gid, remove=[bob]), 200)
    check_chat(j, "perm", alice, [alice, carol], "bob leaving")
    assert_error(get_chat(n1, bob, gid), 403, "forbidden")
    assert gid not in [c["chat"] for c in list_chats(n1, bob)], "bob still lists the group he left"
    # once out he is an outsider
    assert_error(change_members(n1, bob, gid, remove=[bob]), 403, "forbidden")
    assert_error(change_members(n1, bob, gid, add=[bob]), 403, "forbidden")
    j = expect_json(get_chat(n1, alice, gid), 200)
    check_chat(j, "perm", alice, [alice, carol], "final")


# --------------------------------------------------------------------------
# messages


def test_group_message_reaches_members_on_both_nodes():
    """A group message posted on node1 reaches the streams of both other
    members (node1 and node2) at once, each with its own seq, chat set and to
    null; the sender gets one delivered receipt per member, no copy of its own
    message; GET /v1/messages/{id} lists each member; inboxes agree."""
    n1, n2 = node(1), node(2)
    alice, bob, carol, eve = uid("alice"), uid("bob"), uid("carol"), uid("eve")
    g = create_chat(n1, alice, "fanout", [bob, carol])
    gid = g["chat"]
    # bob already has two direct rows, so his seq for the group message is 3, carol's 1
    direct = [send(n2, eve, bob, "direct %d" % i)["message_id"] for i in range(2)]
    bob_s, carol_s, alice_s = stream(n1, bob), stream(n2, carol), stream(n2, alice)
    try:
        bob_s.wait_messages(2, timeout=5)
        t0 = time.monotonic()
        m = send_chat(n1, alice, gid, "hello group")
        mid = m["message_id"]
        eb = bob_s.wait_message_id(mid, timeout=5)
        ec = carol_s.wait_message_id(mid, timeout=5)
        lat = max(eb.t, ec.t) - t0
        print("POST on node1 to the last of 2 members' streams: %.1f ms" % (lat * 1000))
        assert lat < 1.0, "group message took %.0f ms to reach both streams" % (lat * 1000)
        for ev in (eb, ec):
            check_group_item(ev.json(), alice, gid, "hello group", mid)
            assert ev.id == str(ev.json()["seq"]), "event id %r vs seq %r" % (ev.id, ev.json()["seq"])
        assert eb.json()["seq"] == 3, "bob's seq %r, want 3 (after his two direct rows)" % eb.json()["seq"]
        assert ec.json()["seq"] == 1, "carol's seq %r, want 1" % ec.json()["seq"]
        assert message_ids(bob_s) == direct + [mid], message_ids(bob_s)
        assert message_ids(carol_s) == [mid], message_ids(carol_s)
        for u in (bob, carol):
            wait_receipt_from(alice_s, mid, u, "delivered", timeout=5)
        # a marker on alice's stream: by then any stray event would be there too
        marker = send(n1, eve, alice, "marker")["message_id"]
        alice_s.wait_message_id(marker, timeout=5)
        assert mid not in message_ids(alice_s), "the sender's stream got its own group message"
        users = sorted(d["user"] for d in receipts_of(alice_s, mid, "delivered"))
        assert users == sorted([bob, carol]), "delivered receipts for the group message: %r (want one per member)" % users
        assert not receipts_of(bob_s, mid) and not receipts_of(carol_s, mid), "members got receipts for it"
        # per-member state
        for u in (bob, carol):
            e = wait_recipient_status(n1, alice, mid, u, "delivered")
            assert isinstance(e.get("delivered_ts"), int), e
        rs = recipients(n2, alice, mid)
        assert sorted(rs) == sorted([bob, carol]), "recipients %r (the sender is not one)" % sorted(rs)
        j = expect_json(get_message(n2, alice, mid), 200)
        assert j["from"] == alice and j["chat"] == gid and j["to"] is None and j["body"] == "hello group", j
        for base, u in ((n1, bob), (n2, carol)):
            j = expect_json(get_message(base, u, mid), 200)
            assert j["message_id"] == mid and j["chat"] == gid and j["body"] == "hello group", j
        r = get_message(n1, eve, mid)
        assert_error(r, 403, "forbidden")
        assert b"hello group" not in r.body, "403 leaks the body"
        # inboxes: one row for each member, none for the sender
        for base, u in ((n2, bob), (n1, carol)):
            rows = _rows_for(base, u, mid)
            assert len(rows) == 1, "%s's inbox rows for it: %r" % (u, rows)
            check_group_item(rows[0], alice, gid, "hello group", mid, statuses=("delivered",))
        assert not _rows_for(n1, alice, mid), "the sender has an inbox row of her own group message"
        # bob answers on node2: alice and carol get it, bob's streams do not
        m2 = send_chat(n2, bob, gid, "reply from bob")["message_id"]
        ea = alice_s.wait_message_id(m2, timeout=5)
        check_group_item(ea.json(), bob, gid, "reply from bob", m2)
        assert ea.json()["seq"] == 2, "alice's seq %r, want 2 (after the marker)" % ea.json()["seq"]
        ec2 = carol_s.wait_message_id(m2, timeout=5)
        assert ec2.json()["seq"] == 2, ec2.json()
        for u in (alice, carol):
            wait_receipt_from(bob_s, m2, u, "delivered", timeout=5)
        marker = send(n2, eve, bob, "marker")["message_id"]
        bob_s.wait_message_id(marker, timeout=5)
        assert m2 not in message_ids(bob_s), "bob's stream got his own group message"
    finally:
        for s in (bob_s, carol_s, alice_s):
            s.close()


def test_group_message_to_offline_members_waits_and_replays():
    """Members offline: each member's row stays pending; a stream on node2
    replays it and marks only that member delivered; a poll on node1 gets it
    for the other."""
    n1, n2 = node(1), node(2)
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    gid = create_chat(n2, alice, "offline", [bob, carol])["chat"]
    mids = [send_chat(n1, alice, gid, "offline %d" % i)["message_id"] for i in range(2)]
    for u in (bob, carol):
        items = inbox(n2, u, status="pending")["items"]
        assert [i["message_id"] for i in items] == mids, "%s pending: %r" % (u, items)
        assert [i["seq"] for i in items] == [1, 2], items
        for i, it in enumerate(items):
            check_group_item(it, alice, gid, "offline %d" % i, mids[i], statuses=("pending",))
        for m in mids:
            assert recipients(n1, alice, m)[u]["status"] == "pending"
    with stream(n2, carol) as cs:
        evs = cs.wait_messages(2, timeout=5)
        assert [e.json()["message_id"] for e in evs] == mids, "replay %r" % evs
    for m in mids:
        wait_recipient_status(n1, alice, m, carol, "delivered")
        assert recipients(n2, alice, m)[bob]["status"] == "pending", "carol's stream delivered bob's row"
    assert [i["message_id"] for i in inbox(n1, bob, status="pending")["items"]] == mids
    j = expect_json(get(n1, "/v1/poll?after=0&timeout=1", token=token(bob)), 200)
    assert [i["message_id"] for i in j["items"]] == mids, j
    for m in mids:
        wait_recipient_status(n2, alice, m, bob, "delivered")


def test_group_post_refused():
    """Only members post: outsider 403, removed member 403, unknown group 404,
    both to and chat 400, bad chat 400; none of these stores anything."""
    n1, n2 = node(1), node(2)
    alice, bob, carol, dave, eve = (uid(n) for n in ("alice", "bob", "carol", "dave", "eve"))
    gid = create_chat(n1, alice, "members only", [bob, carol])["chat"]
    for base in (n1, n2):
        assert_error(send_chat(base, eve, gid, "let me in", expect_status=403), 403, "forbidden")
        assert_error(send_chat(base, eve, fake_id(), "anyone?", expect_status=404), 404, "not_found")
        assert_error(send_chat(base, alice, fake_id(), "anyone?", expect_status=404), 404, "not_found")
        r = post(base, "/v1/messages", {"chat": gid, "to": dave, "body": "both"}, token=token(alice))
        assert_error(r, 400, "bad_request")
        for body in ({"chat": 5, "body": "x"}, {"chat": [gid], "body": "x"}, {"chat": {"id": gid}, "body": "x"},
                     {"chat": gid, "body": ""}, {"chat": gid}, {"chat": gid, "body": 5}):
            try:
                assert_error(post(base, "/v1/messages", body, token=token(alice)), 400, "bad_request")
            except AssertionError as e:
                raise AssertionError("POST /v1/messages %r: %s" % (body, e))
    expect_json(change_members(n2, alice, gid, remove=[bob]), 200)
    for base in (n1, n2):
        assert_error(send_chat(base, bob, gid, "I was removed", expect_status=403), 403, "forbidden")
    expect_json(change_members(n1, carol, gid, remove=[carol]), 200)
    assert_error(send_chat(n2, carol, gid, "I left", expect_status=403), 403, "forbidden")
    for u in (alice, bob, carol, dave):
        assert inbox(n1, u, status="all")["items"] == [], "%s got a row from a refused post" % u
    # alice, still a member, can post; only she is left, so nobody gets a row
    send_chat(n1, alice, gid, "alone now")
    for u in (bob, carol):
        assert inbox(n2, u, status="all")["items"] == [], "%s got a row after leaving" % u


def test_removed_member_stream_stops_at_once():
    """A member removed by the owner (on the other node) and a member who
    leaves: the very next group message does not reach their open streams
    (watched for 1 s) nor their inbox, while the others get it at once; their
    streams keep working for direct messages."""
    n1, n2 = node(1), node(2)
    alice, bob, carol, dave, eve = (uid(n) for n in ("alice", "bob", "carol", "dave", "eve"))
    gid = create_chat(n1, alice, "cut", [bob, carol, dave])["chat"]
    ss = {alice: stream(n1, alice), bob: stream(n2, bob), carol: stream(n1, carol), dave: stream(n2, dave)}
    try:
        m1 = send_chat(n1, alice, gid, "before")["message_id"]
        for u in (bob, carol, dave):
            ss[u].wait_message_id(m1, timeout=5)
        # the owner removes bob on node1; bob's stream is on node2
        expect_json(change_members(n1, alice, gid, remove=[bob]), 200)
        m2 = send_chat(n1, alice, gid, "after bob left")["message_id"]
        ss[carol].wait_message_id(m2, timeout=5)
        ss[dave].wait_message_id(m2, timeout=5)
        stay_quiet(ss[bob], lambda evs: [e for e in evs if e.type == "message" and e.json().get("message_id") == m2],
                   1.0, "the removed member's stream got the next group message")
        assert not _rows_for(n2, bob, m2), "the removed member has an inbox row for it"
        assert_error(get_message(n2, bob, m2), 403, "forbidden")
        assert bob not in [d["user"] for d in receipts_of(ss[alice], m2)], "a receipt from the removed member"
        assert bob not in recipients(n1, alice, m2), "the removed member is a recipient"
        # carol leaves on node2 (her stream is on node1); dave posts on node2
        expect_json(change_members(n2, carol, gid, remove=[carol]), 200)
        m3 = send_chat(n2, dave, gid, "after carol left")["message_id"]
        ss[alice].wait_message_id(m3, timeout=5)
        stay_quiet(ss[carol], lambda evs: [e for e in evs if e.type == "message" and e.json().get("message_id") == m3],
                   1.0, "the member who left still got the next group message")
        stay_quiet(ss[bob], lambda evs: [e for e in evs if e.type == "message" and e.json().get("message_id") == m3],
                   0.1, "the removed member got a later group message")
        assert not _rows_for(n1, carol, m3), "the member who left has an inbox row for it"
        assert sorted(recipients(n2, dave, m3)) == [alice], recipients(n2, dave, m3)
        # their streams still serve direct messages
        for u in (bob, carol):
            d = send(n1, eve, u, "still there?")["message_id"]
            ss[u].wait_message_id(d, timeout=5)
        assert m2 not in message_ids(ss[bob]) and m3 not in message_ids(ss[bob]), message_ids(ss[bob])
        assert m3 not in message_ids(ss[carol]), message_ids(ss[carol])
    finally:
        for s in ss.values():
            s.close()


def test_added_member_gets_later_messages_only():
    """A user added while their stream is open (on the other node) gets the
    next group message on it; an earlier one is neither streamed, nor in the
    inbox, nor readable by them (403)."""
    n1, n2 = node(1), node(2)
    alice, bob, dave = uid("alice"), uid("bob"), uid("dave")
    gid = create_chat(n1, alice, "late joiner", [bob])["chat"]
    with stream(n2, dave) as ds, stream(n1, bob) as bs:
        m1 = send_chat(n1, alice, gid, "before dave")["message_id"]
        bs.wait_message_id(m1, timeout=5)
        expect_json(change_members(n1, alice, gid, add=[dave]), 200)
        m2 = send_chat(n1, alice, gid, "welcome dave")["message_id"]
        ev = ds.wait_message_id(m2, timeout=5)
        check_group_item(ev.json(), alice, gid, "welcome dave", m2)
        assert ev.json()["seq"] == 1, ev.json()
        assert message_ids(ds) == [m2], "dave's stream: %r" % message_ids(ds)
    assert [i["message_id"] for i in inbox(n2, dave, status="all")["items"]] == [m2]
    assert_error(get_message(n2, dave, m1), 403, "forbidden")
    assert expect_json(get_message(n1, dave, m2), 200)["body"] == "welcome dave"
    assert sorted(recipients(n1, alice, m2)) == sorted([bob, dave])
    assert sorted(recipients(n1, alice, m1)) == [bob]


def test_resume_with_direct_and_group_rows():
    """Two members post to a group (node1, node2) and a third user sends direct
    messages while the recipient reconnects with Last-Event-ID over and over on
    alternating nodes: every seq exactly once, none repeated within a
    connection, each resume starts at last_event_id + 1, per-sender order kept."""
    n1, n2 = node(1), node(2)
    rcpt, g1, g2, d = uid("rcpt"), uid("gs1"), uid("gs2"), uid("ds")
    gid = create_chat(n1, g1, "resume", [g2, rcpt])["chat"]
    per = 30
    senders = [(g1, n1, "chat"), (g2, n2, "chat"), (d, n2, "to")]
    sent = {s: [] for s, _, _ in senders}
    errors = []
    rnd = random.Random()

    def sender(user, base, kind):
        tok = token(user)
        try:
            for i in range(per):
                msg = {"body": "%s #%d" % (user, i)}
                msg.update({"chat": gid} if kind == "chat" else {"to": rcpt})
                j = expect_json(post(base, "/v1/messages", msg, token=tok), 201)
                sent[user].append(j["message_id"])
                time.sleep(rnd.uniform(0.04, 0.09))
        except BaseException as e:  # noqa: BLE001
            errors.append("%s: %r" % (user, e))

    def open_stream(k, last):
        base = n1 if k % 2 == 0 else n2
        if last is None:
            s = SSEStream(base, rcpt)
        elif k % 3 == 1:
            s = SSEStream(base, rcpt, query_last_event_id=last)
        elif k % 3 == 2:
            s = SSEStream(base, None, access_token=token(rcpt), query_last_event_id=last)
        else:
            s = SSEStream(base, rcpt, last_event_id=last)
        s.open()
        s.wait_connected()
        return s

    def last_seq(last, s):
        ms = s.messages()
        return int(ms[-1].id) if ms else last

    conns = []
    last, k = None, 0
    s = open_stream(k, None)
    threads = [threading.Thread(target=sender, args=a, daemon=True) for a in senders]
    for t in threads:
        t.start()
    reconnects = 0
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(rnd.uniform(0.1, 0.3))
            s.close()
            conns.append((last, s.base, s.messages()))
            last = last_seq(last if last is not None else 0, s)
            k += 1
            s = open_stream(k, last)
            reconnects += 1
        for t in threads:
            t.join(20)
        assert not errors, "senders failed: %s" % errors
        s.close()
        conns.append((last, s.base, s.messages()))
        last = last_seq(last if last is not None else 0, s)
        total = sum(len(v) for v in sent.values())
        assert total == 3 * per, total
        k += 1
        s = open_stream(k, last)
        if last < total:
            s.wait_messages(total - last, timeout=10)
        time.sleep(0.2)
        s.close()
        conns.append((last, s.base, s.messages()))
    finally:
        s.close()
    print("%d messages (%d group, %d direct), %d connections, %d reconnects during the sends" % (
        total, 2 * per, per, len(conns), reconnects))
    assert reconnects >= 6, "only %d reconnects happened during the sends" % reconnects
    by_seq = {}
    for i, (resumed, base, evs) in enumerate(conns):
        seqs = [int(e.id) for e in evs]
        assert len(seqs) == len(set(seqs)), "connection %d (%s) repeated a seq: %r" % (i, base, seqs)
        assert all(a < b for a, b in zip(seqs, seqs[1:])), "connection %d (%s) out of order: %r" % (i, base, seqs)
        if resumed is not None and seqs:
            assert seqs[0] == resumed + 1, "connection %d (%s) resumed after %d but began at %d" % (
                i, base, resumed, seqs[0])
        for e in evs:
            item = e.json()
            assert item["seq"] == int(e.id), (e.id, item)
            prev = by_seq.get(item["seq"])
            assert prev is None or prev == item["message_id"], "seq %d was %s and %s" % (
                item["seq"], prev, item["message_id"])
            by_seq[item["seq"]] = item["message_id"]
            if item["from"] == d:
                assert item["to"] == rcpt and item["chat"] is None, item
            else:
                assert item["chat"] == gid and item["to"] is None, item
    assert sorted(by_seq) == list(range(1, total + 1)), "seqs are not 1..%d: missing %r, extra %r" % (
        total, sorted(set(range(1, total + 1)) - set(by_seq)), sorted(set(by_seq) - set(range(1, total + 1))))
    all_ids = {m for v in sent.values() for m in v}
    assert set(by_seq.values()) == all_ids, "missing %r, unexpected %r" % (
        sorted(all_ids - set(by_seq.values())), sorted(set(by_seq.values()) - all_ids))
    order = [by_seq[x] for x in sorted(by_seq)]
    for user, mids in sent.items():
        mine = set(mids)
        assert [m for m in order if m in mine] == mids, "%s's messages arrived out of 201 order" % user
    items = inbox_all_pages(n2, rcpt, status="all", limit=37)
    assert [(i["seq"], i["message_id"]) for i in items] == sorted(by_seq.items()), "inbox disagrees with the stream"
    wait_until(lambda: not inbox_all_pages(n1, rcpt, status="pending"), 5,
               "every streamed row to leave the pending inbox")
    # the other members' inboxes got each other's group messages, in order
    g2_rows = [i["message_id"] for i in inbox_all_pages(n1, g2, status="all") if i["chat"] == gid]
    assert g2_rows == sent[g1], "g2's inbox lacks some of g1's group messages"
