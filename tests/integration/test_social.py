"""Blocks, stream tickets, presence, and delivery to users who are offline
(the send path skips the publish for them): what an app built on these
relies on, on both nodes."""

import os
import subprocess
import threading
import time

from chatlib import (SSEStream, assert_error, expect_json, front, get, inbox, node, post, request,
                     send, stream, token, uid, wait_delivered, now_ms)
from chatlib_groups import (conversation, create_chat, message_ids, recipients, send_chat, stay_quiet,
                            wait_receipt_from)
from chatlib_social import (STREAM_END_S, OwnNode, block, blocked_list, new_ticket, online, presence,
                            presence_events, presence_resp, ticket_resp, unblock, wait_online,
                            wait_presence)


def _messages_from(s, user):
    return [e for e in s.messages() if e.json().get("from") == user]


# --------------------------------------------------------------------------
# blocks


def test_block_refuses_direct_messages_and_stores_nothing():
    """bob blocks alice (node1): alice's direct messages on either node are a
    403 "blocked" and leave nothing behind (no inbox row, no stream event, no
    conversation, a client_msg_id still free); bob can still write to alice;
    after the unblock (node2) alice's messages go through again."""
    n1, n2 = node(1), node(2)
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    block(n1, bob, alice)
    assert blocked_list(n2, bob) == [alice], blocked_list(n2, bob)
    with stream(n2, bob) as bs, stream(n1, alice) as als:
        for base in (n1, n2):
            r = post(base, "/v1/messages", {"to": bob, "body": "let me in"}, token=token(alice))
            assert_error(r, 403, "blocked")
            r = post(base, "/v1/messages", {"to": bob, "body": "idempotent?", "client_msg_id": "c-1"},
                     token=token(alice))
            assert_error(r, 403, "blocked")
        # a marker from someone else: once it is on bob's stream, a stray event would be too
        marker = send(n1, carol, bob, "marker")["message_id"]
        bs.wait_message_id(marker, timeout=5)
        assert message_ids(bs) == [marker], "bob's stream got a blocked message: %r" % bs.messages()
        assert [i["message_id"] for i in inbox(n1, bob, status="all")["items"]] == [marker], \
            "a blocked message was stored in bob's inbox"
        assert conversation(n2, alice, bob) is None, "the refused message shows in alice's conversations"
        assert conversation(n1, bob, alice) is None, "the refused message shows in bob's conversations"
        # blocks are one way: bob writes to alice
        back = send(n2, bob, alice, "I can still write to you")["message_id"]
        als.wait_message_id(back, timeout=5)
        # unblock on the other node: it works again, the client_msg_id was never used
        unblock(n2, bob, alice)
        assert blocked_list(n1, bob) == [], blocked_list(n1, bob)
        r = post(n1, "/v1/messages", {"to": bob, "body": "idempotent?", "client_msg_id": "c-1"},
                 token=token(alice))
        m1 = expect_json(r, 201)["message_id"]
        m2 = send(n2, alice, bob, "hello again")["message_id"]
        for m in (m1, m2):
            bs.wait_message_id(m, timeout=5)
        assert message_ids(bs) == [marker, m1, m2], message_ids(bs)
        wait_delivered(n1, alice, m2, bob)
        items = inbox(n2, bob, status="all")["items"]
        assert [i["message_id"] for i in items] == [marker, m1, m2], items
        assert [i["seq"] for i in items] == [1, 2, 3], "seqs %r (a refused send used a seq?)" % items


def test_block_list_sorted_idempotent_per_user():
    """PUT twice lists once, GET is sorted, DELETE of someone never blocked is
    fine, each user has their own list, and a block stops only its target."""
    n1, n2 = node(1), node(2)
    bob, carol = uid("bob"), uid("carol")
    zed, alice, mike = "zed_" + uid("z"), "alice_" + uid("a"), "Mike_" + uid("m")
    for u in (zed, alice, mike):
        block(n1, bob, u)
    block(n2, bob, alice)  # again, on the other node
    assert blocked_list(n1, bob) == sorted([zed, alice, mike]), blocked_list(n1, bob)
    assert blocked_list(n2, carol) == [], "carol sees bob's blocks"
    assert blocked_list(n2, alice) == [], "the blocked user has blocks of her own"
    unblock(n2, bob, uid("never"))
    unblock(n1, bob, mike)
    unblock(n1, bob, mike)
    assert blocked_list(n2, bob) == sorted([zed, alice]), blocked_list(n2, bob)
    # only the blocked senders are refused; the unblocked one and others pass
    assert_error(post(n1, "/v1/messages", {"to": bob, "body": "x"}, token=token(zed)), 403, "blocked")
    send(n2, mike, bob, "unblocked")
    send(n1, carol, bob, "never blocked")
    # carol blocking alice does not make bob block her, nor the reverse
    block(n2, carol, alice)
    send(n1, bob, carol, "bob is not blocked by carol")
    assert_error(post(n2, "/v1/messages", {"to": carol, "body": "x"}, token=token(alice)), 403, "blocked")
    assert sorted(i["from"] for i in inbox(n1, bob, status="all")["items"]) == sorted([mike, carol])


def test_block_does_not_affect_groups():
    """bob blocks alice: her group messages still reach him (stream and inbox);
    her direct messages do not."""
    n1, n2 = node(1), node(2)
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    gid = create_chat(n1, alice, "blocks do not apply", [bob, carol])["chat"]
    block(n2, bob, alice)
    with stream(n1, bob) as bs:
        m = send_chat(n2, alice, gid, "to the group")["message_id"]
        bs.wait_message_id(m, timeout=5)
        assert_error(post(n1, "/v1/messages", {"to": bob, "body": "direct"}, token=token(alice)), 403, "blocked")
        assert bob in recipients(n1, alice, m), "bob is not a recipient of the group message"
        rows = inbox(n2, bob, status="all")["items"]
        assert [(i["message_id"], i["chat"]) for i in rows] == [(m, gid)], rows


def test_block_bad_input():
    """Bad user ids in the path: 400; no token: 401; wrong methods: 405."""
    n1, n2 = node(1), node(2)
    bob = uid("bob")
    for bad in ("bad!user", "x" * 65, "%20", "b%C3%B6b", "a.b%3F"):
        for method in ("PUT", "DELETE"):
            r = request(n1, method, "/v1/blocks/" + bad, token=token(bob))
            try:
                assert_error(r, 400, "bad_request")
            except AssertionError as e:
                raise AssertionError("%s /v1/blocks/%s: %s" % (method, bad, e))
    assert blocked_list(n2, bob) == [], "a refused PUT stored a block"
    other = uid("alice")
    assert_error(request(n1, "PUT", "/v1/blocks/" + other), 401, "unauthorized")
    assert_error(request(n2, "DELETE", "/v1/blocks/" + other), 401, "unauthorized")
    assert_error(get(n1, "/v1/blocks"), 401, "unauthorized")
    r = request(n1, "PUT", "/v1/blocks/" + other, token=token(bob) + "x")
    assert_error(r, 401, "unauthorized")
    assert blocked_list(n1, bob) == [], "an unauthenticated PUT stored a block"
    r = post(n1, "/v1/blocks/" + other, {}, token=token(bob))
    assert_error(r, 405, "method_not_allowed")
    assert set(x.strip() for x in (r.header("Allow") or "").split(",")) == {"PUT", "DELETE"}, r.header("Allow")
    assert_error(request(n2, "PUT", "/v1/blocks", token=token(bob)), 405, "method_not_allowed")
    # "x" * 64 is a valid id
    long_id = "x" * 63 + "1"
    block(n1, bob, long_id)
    assert blocked_list(n2, bob) == [long_id]
    unblock(n2, bob, long_id)


def test_block_path_with_nul_refused():
    """PUT /v1/blocks/a%00b names no valid user: 400, and no block of "a"
    (what the id would be if cut at the NUL) is stored."""
    n1 = node(1)
    bob = uid("bob")
    a = uid("a")
    for method in ("PUT", "DELETE"):
        r = request(n1, method, "/v1/blocks/%s%%00x" % a, token=token(bob))
        assert_error(r, 400, "bad_request")
    assert blocked_list(n1, bob) == [], "a path with a NUL stored a block: %r" % blocked_list(n1, bob)


# --------------------------------------------------------------------------
# stream tickets


def test_ticket_opens_the_owners_stream_once_across_nodes():
    """A ticket from node1 opens alice's own stream on node2 with no
    Authorization header (replay and live); a second use on either node is 401."""
    n1, n2 = node(1), node(2)
    alice, bob = uid("alice"), uid("bob")
    m1 = send(n1, bob, alice, "before the ticket")["message_id"]
    r = ticket_resp(n1, alice)
    j = expect_json(r, 201)
    t = new_ticket(n1, alice)  # a second one is fine too
    assert t != j["ticket"], "two tickets are equal"
    assert abs(j["expires_ts"] - (now_ms() + 60000)) < 5000, "expires_ts %r is not about 60 s ahead" % j
    s = SSEStream(n2, query={"ticket": t}).open()
    try:
        s.expect_ok()
        assert "Authorization" not in s.req_headers
        s.wait_message_id(m1, timeout=5)
        m2 = send(n1, bob, alice, "live")["message_id"]
        s.wait_message_id(m2, timeout=5)
        assert message_ids(s) == [m1, m2], message_ids(s)
    finally:
        s.close()
    for base in (n2, n1, n2):
        again = SSEStream(base, query={"ticket": t}).open()
        assert again.status == 401, "%s: a used ticket opened a stream (%s)" % (again.desc, again.status)
        assert_error(again.resp, 401, "unauthorized")
    # the other ticket is still good, once
    s = SSEStream(n1, query={"ticket": j["ticket"]}).open()
    s.close()
    assert s.status == 200, "the second ticket: %s" % s.status
    assert SSEStream(n2, query={"ticket": j["ticket"]}).open().status == 401


def test_ticket_for_long_poll_single_use():
    """?ticket= works on /v1/poll (alice's rows), once; a ticket used by a poll
    cannot open a stream either."""
    n1, n2 = node(1), node(2)
    alice, bob = uid("alice"), uid("bob")
    m = send(n2, bob, alice, "for the poll")["message_id"]
    t = new_ticket(n2, alice)
    r = get(n1, "/v1/poll?after=0&timeout=1&ticket=" + t)
    j = expect_json(r, 200)
    assert [i["message_id"] for i in j["items"]] == [m], j
    assert_error(get(n2, "/v1/poll?after=0&timeout=1&ticket=" + t), 401, "unauthorized")
    assert_error(get(n1, "/v1/poll?after=0&timeout=1&ticket=" + t), 401, "unauthorized")
    s = SSEStream(n2, query={"ticket": t}).open()
    assert s.status == 401, "a ticket used by a poll opened a stream"
    # a poll that waits: held, then woken by a message
    t = new_ticket(n1, alice)
    out = {}
    th = threading.Thread(target=lambda: out.setdefault(
        "r", get(n2, "/v1/poll?after=1&timeout=5&ticket=" + t, timeout=10)), daemon=True)
    th.start()
    time.sleep(0.5)
    m2 = send(n1, bob, alice, "wake up")["message_id"]
    th.join(8)
    j = expect_json(out["r"], 200)
    assert [i["message_id"] for i in j["items"]] == [m2], j


def test_ticket_refused_where_it_does_not_belong():
    """Unknown, garbage, empty and case-changed tickets are 401; a real
    ticket on any other path, or as a Bearer token, is 401; minting needs a
    bearer token."""
    n1, n2 = node(1), node(2)
    alice = uid("alice")
    real = new_ticket(n1, alice)
    for bad in ("0" * 32, "f" * 32, real.upper(), real[:31], real + "0", "xyz", "",
                "%00" * 32, real[:16] + "%20" + real[17:]):
        for base, path in ((n1, "/v1/events"), (n2, "/v1/poll")):
            if path == "/v1/events":
                s = SSEStream(base, path=path + "?ticket=" + bad).open()
                s.close()
                assert s.status == 401, "ticket %r opened a stream on %s" % (bad, base)
                r = s.resp
            else:
                r = get(base, path + "?timeout=1&ticket=" + bad, timeout=5)
            try:
                assert_error(r, 401, "unauthorized")
            except AssertionError as e:
                raise AssertionError("ticket %r: %s" % (bad, e))
    for path in ("/v1/inbox?ticket=", "/v1/conversations?ticket=", "/v1/blocks?ticket=",
                 "/v1/chats?ticket=", "/v1/presence?users=%s&ticket=" % alice):
        t = new_ticket(n2, alice)
        assert_error(get(n1, path + t), 401, "unauthorized")
        assert_error(get(n1, "/v1/inbox", headers={"Authorization": "Bearer " + t}), 401, "unauthorized")
    t = new_ticket(n1, alice)
    r = post(n2, "/v1/messages?ticket=" + t, {"to": uid("bob"), "body": "x"})
    assert_error(r, 401, "unauthorized")
    r = post(n2, "/v1/events/ticket?ticket=" + t, None)
    assert_error(r, 401, "unauthorized")
    assert_error(post(n1, "/v1/events/ticket", None), 401, "unauthorized")
    assert_error(post(n1, "/v1/events/ticket", None, token=token(alice) + "x"), 401, "unauthorized")
    r = request(n1, "GET", "/v1/events/ticket", token=token(alice))
    assert_error(r, 405, "method_not_allowed")
    # and the real one, never used on a right path, still opens alice's stream
    s = SSEStream(n2, query={"ticket": real}).open()
    s.close()
    assert s.status == 200, "the unused ticket: %s" % s.status


def test_ticket_race_on_two_nodes_one_wins():
    """The same ticket presented to node1 and node2 at once: exactly one
    stream opens (five rounds)."""
    n1, n2 = node(1), node(2)
    alice = uid("alice")
    for _ in range(5):
        t = new_ticket(n1, alice)
        ss = [SSEStream(base, query={"ticket": t}) for base in (n1, n2, n1, n2)]
        barrier = threading.Barrier(len(ss))

        def go(s):
            barrier.wait(5)
            s.open()

        ths = [threading.Thread(target=go, args=(s,), daemon=True) for s in ss]
        for th in ths:
            th.start()
        for th in ths:
            th.join(10)
        try:
            statuses = sorted(s.status for s in ss)
            assert statuses == [200, 401, 401, 401], "one ticket, four opens at once: %r" % statuses
        finally:
            for s in ss:
                s.close()


def test_ticket_through_front():
    """A browser's way: mint through lighttpd, stream through lighttpd."""
    f = front()
    alice, bob = uid("alice"), uid("bob")
    m = send(f, bob, alice, "via the front")["message_id"]
    t = new_ticket(f, alice)
    s = SSEStream(f, query={"ticket": t}).open()
    try:
        s.expect_ok()
        s.wait_message_id(m, timeout=5)
    finally:
        s.close()
    again = SSEStream(f, query={"ticket": t}).open()
    assert again.status == 401, "a used ticket opened a stream through the front"


def _mysql(sql):
    """Runs sql on node1's database as root over the test MariaDB's socket."""
    import configparser
    cp = configparser.RawConfigParser(strict=False)
    with open(os.environ["CHAT_NODE_CONF1"], encoding="utf-8") as fh:
        cp.read_file(fh)
    db = cp.get("mysql", "database", fallback="chat")
    p = subprocess.run(["mariadb", "--no-defaults", "--socket=" + os.environ["CHAT_MYSQL_SOCKET"], "-uroot",
                        "-N", "-B", db], input=sql.encode(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=10)
    assert p.returncode == 0, "mariadb %r: %s" % (sql, p.stdout.decode(errors="replace"))
    return p.stdout.decode()


def test_ticket_expires():
    """A ticket past its expiry (moved back in the table: 60 s is too long to
    wait) is refused, on both paths."""
    n1, n2 = node(1), node(2)
    alice = uid("alice")
    t1, t2 = new_ticket(n1, alice), new_ticket(n2, alice)
    past = now_ms() - 1000
    _mysql("UPDATE tickets SET expires_ms = %d WHERE ticket IN ('%s', '%s')" % (past, t1, t2))
    assert SSEStream(n2, query={"ticket": t1}).open().status == 401, "an expired ticket opened a stream"
    assert_error(get(n1, "/v1/poll?timeout=1&ticket=" + t2), 401, "unauthorized")


# --------------------------------------------------------------------------
# presence


def _contacts(n, a, b):
    """a and b exchange a message so that they are contacts."""
    send(n, a, b, "hi %s" % b)


def test_presence_follows_streams_across_nodes():
    """alice (node1) sees bob come online when his stream opens on node2 (an
    event at once, GET on both nodes) and go offline within a few seconds of
    closing it."""
    n1, n2 = node(1), node(2)
    alice, bob = uid("alice"), uid("bob")
    _contacts(n1, alice, bob)
    assert presence(n1, alice, [bob, alice]) == [(bob, False), (alice, False)]
    with stream(n1, alice) as als:
        assert online(n2, alice, alice) is True, "alice's own stream does not make her online"
        assert online(n2, bob, alice) is True, "bob does not see alice online"
        assert online(n1, alice, bob) is False
        t0 = time.monotonic()
        bs = stream(n2, bob)
        try:
            wait_presence(als, bob, True, timeout=3)
            print("presence online event after %.0f ms" % ((time.monotonic() - t0) * 1000))
            for base in (n1, n2):
                assert online(base, alice, bob) is True, "GET %s: bob not online" % base
        finally:
            t1 = time.monotonic()
            bs.close()
        d = wait_presence(als, bob, False, timeout=STREAM_END_S)
        print("presence offline event after %.0f ms" % ((time.monotonic() - t1) * 1000))
        assert d["user"] == bob
        for base in (n1, n2):
            wait_online(base, alice, bob, False, timeout=1)
        evs = presence_events(als, bob)
        assert [e["online"] for e in evs] == [True, False], "presence events for bob: %r" % evs
        assert evs[0]["ts"] <= evs[1]["ts"], evs
        assert not presence_events(als, alice), "alice got presence events about herself: %r" % als.events
        assert not als.messages(), "presence came as message events: %r" % als.messages()


def test_presence_two_nodes_keep_the_user_online():
    """bob on node1 and node2: one online event; closing one stream keeps him
    online (no offline event, GET says online); closing the other sends it."""
    n1, n2 = node(1), node(2)
    alice, bob = uid("alice"), uid("bob")
    _contacts(n2, bob, alice)
    with stream(n2, alice) as als:
        b1 = stream(n1, bob)
        b2 = None
        try:
            wait_presence(als, bob, True, timeout=3)
            b2 = stream(n2, bob)
            b3 = stream(n2, bob)  # a second device on the same node
            b3.close()
            time.sleep(0.5)
            b1.close()
            stay_quiet(als, lambda evs: [e for e in evs if e.type == "presence" and e.json()["online"] is False],
                       2.0, "bob went offline while his stream on node2 stayed open")
            assert online(n1, alice, bob) is True and online(n2, alice, bob) is True, "bob shown offline"
            assert [e["online"] for e in presence_events(als, bob)] == [True], presence_events(als, bob)
            # a message still reaches him on node2
            m = send(n1, alice, bob, "still there?")["message_id"]
            b2.wait_message_id(m, timeout=5)
        finally:
            b1.close()
            if b2 is not None:
                b2.close()
        wait_presence(als, bob, False, timeout=STREAM_END_S)
        wait_online(n1, alice, bob, False, timeout=1)
        assert [e["online"] for e in presence_events(als, bob)] == [True, False], presence_events(als, bob)


def test_presence_long_poll_counts_as_online():
    """A long-poll held on node2 makes bob online for alice; when it ends he
    goes offline."""
    n1, n2 = node(1), node(2)
    alice, bob = uid("alice"), uid("bob")
    _contacts(n1, alice, bob)
    inbox(n2, bob)  # (reading the inbox is not being online)
    with stream(n1, alice) as als:
        assert online(n1, alice, bob) is False
        out = {}
        th = threading.Thread(target=lambda: out.setdefault(
            "r", get(n2, "/v1/poll?after=1&timeout=3", token=token(bob), timeout=10)), daemon=True)
        th.start()
        wait_presence(als, bob, True, timeout=3)
        assert online(n2, alice, bob) is True
        th.join(8)
        assert expect_json(out["r"], 200)["items"] == [], out["r"]
        wait_presence(als, bob, False, timeout=4)
        wait_online(n1, alice, bob, False, timeout=1)


def test_presence_visible_to_contacts_only():
    """Strangers see null and get no events; a direct message either way or a
    common group makes two users contacts; everyone may see themself."""
    n1, n2 = node(1), node(2)
    alice, bob, carol, dave, eve = (uid(n) for n in ("alice", "bob", "carol", "dave", "eve"))
    send(n1, dave, bob, "one way is enough")  # dave -> bob only
    gid = create_chat(n2, carol, "common group", [bob])["chat"]  # carol and bob: a group, no direct message
    send_chat(n1, bob, gid, "hello group")
    watchers = {u: stream(n1 if i % 2 else n2, u) for i, u in enumerate((alice, carol, dave, eve))}
    try:
        for u in (alice, eve):
            assert online(n1, u, bob) is None, "%s shares nothing with bob but sees his presence" % u
        for u in (carol, dave):
            assert online(n2, u, bob) is False, "%s should see bob offline" % u
        assert online(n1, bob, dave) is True, "bob cannot see dave (who wrote to him) online"
        assert online(n2, bob, carol) is True, "bob cannot see carol (a fellow member) online"
        assert online(n1, bob, eve) is None and online(n1, bob, alice) is None
        assert online(n1, eve, eve) is True and online(n2, bob, bob) is False, "one's own presence"
        bs = stream(n2, bob)
        try:
            for u in (carol, dave):
                wait_presence(watchers[u], bob, True, timeout=3)
            for u in (alice, eve):
                assert online(n2, u, bob) is None, "%s sees bob after he came online" % u
        finally:
            bs.close()
        for u in (carol, dave):
            wait_presence(watchers[u], bob, False, timeout=STREAM_END_S)
        time.sleep(0.3)
        for u in (alice, eve):
            assert not presence_events(watchers[u]), "%s (a stranger) got presence events: %r" % (
                u, presence_events(watchers[u]))
        # a stranger who writes becomes a contact
        send(n1, eve, bob, "hello stranger")
        assert online(n2, eve, bob) is False
        assert online(n1, bob, eve) is True
    finally:
        for s in watchers.values():
            s.close()


def test_presence_common_group_is_enough():
    """Members of a common group are contacts from the moment they share it,
    before anyone posts to it: each sees the other's presence (not null) and
    gets the presence events."""
    n1, n2 = node(1), node(2)
    bob, carol, dave = uid("bob"), uid("carol"), uid("dave")
    create_chat(n2, carol, "new group", [bob, dave])
    for viewer, other in ((carol, bob), (bob, carol), (bob, dave), (dave, bob)):
        got = online(n1, viewer, other)
        assert got is False, "%s and %s share a group (no message yet): %s sees %r, want false" % (
            viewer, other, viewer, got)
    with stream(n1, carol) as cs:
        with stream(n2, bob):
            wait_presence(cs, bob, True, timeout=3)


def test_presence_bad_input():
    """users missing, empty, a bad id, more than 100: 400; 100 fine, in
    request order; no token: 401."""
    n1, n2 = node(1), node(2)
    alice = uid("alice")
    many = ["u%03d_%s" % (i, uid("p")) for i in range(101)]
    for qs in ("", "?users=", "?users=,", "?users=bad!id", "?users=%s,bad!id" % alice, "?users=" + "x" * 65,
               "?users=" + ",".join(many), "?user=" + alice, "?users=b%C3%B6b"):
        r = get(n1, "/v1/presence" + qs, token=token(alice))
        try:
            assert_error(r, 400, "bad_request")
        except AssertionError as e:
            raise AssertionError("GET /v1/presence%s: %s" % (qs[:80], e))
    ps = presence(n2, alice, many[:100])
    assert ps == [(u, None) for u in many[:100]], ps[:3]
    ps = presence(n2, alice, [many[5], alice, many[2]])
    assert ps == [(many[5], None), (alice, False), (many[2], None)], ps
    assert_error(get(n1, "/v1/presence?users=" + alice), 401, "unauthorized")
    assert_error(post(n1, "/v1/presence?users=" + alice, {}, token=token(alice)), 405, "method_not_allowed")


def test_presence_refuses_empty_list_items():
    """"a,,b" and "a," hold an item that is not a user id: 400 like any other
    bad item (not a silently shorter answer)."""
    n1 = node(1)
    alice, bob = uid("alice"), uid("bob")
    for users in ("%s,,%s" % (alice, bob), "%s," % alice, ",%s" % alice):
        r = presence_resp(n1, alice, users)
        try:
            assert_error(r, 400, "bad_request")
        except AssertionError as e:
            raise AssertionError("GET /v1/presence?users=%s: %s" % (users, e))


def test_presence_gone_within_ttl_after_node_dies():
    """bob streams on a node of our own with presence_ttl = 3: he stays online
    for well over a TTL (the node refreshes him), and once that node is killed
    (no goodbye) he is offline within about one TTL."""
    n1, n2 = node(1), node(2)
    alice, bob = uid("alice"), uid("bob")
    _contacts(n1, alice, bob)
    with OwnNode({"delivery": {"presence_ttl": 3}}, name="ttl") as own:
        s = stream(own.base, bob)
        try:
            wait_online(n1, alice, bob, True, timeout=3)
            t_end = time.monotonic() + 7.0
            while time.monotonic() < t_end:
                assert online(n2, alice, bob) is True, "bob shown offline while his stream is open (refresh?)"
                time.sleep(0.25)
            t_kill = time.monotonic()
            own.kill()
        finally:
            s.close()
        wait_online(n1, alice, bob, False, timeout=3 + 1.5)
        print("offline %.1f s after the node was killed" % (time.monotonic() - t_kill))


def test_stream_open_longer_than_presence_ttl_still_gets_messages():
    """bob's stream on a node with presence_ttl = 3 stays open for two TTLs:
    he is still online, and messages sent on node1 and on that node reach
    the stream live (not left pending because he looked offline)."""
    n1 = node(1)
    alice, bob = uid("alice"), uid("bob")
    with OwnNode({"delivery": {"presence_ttl": 3}}, name="ttl") as own:
        with stream(own.base, bob) as s:
            time.sleep(6.5)
            assert online(n1, bob, bob) is True, "bob's presence expired while his stream is open"
            m1 = send(n1, alice, bob, "sent on node1 after two TTLs")["message_id"]
            m2 = send(own.base, alice, bob, "sent on his node after two TTLs")["message_id"]
            s.wait_message_id(m1, timeout=3)
            s.wait_message_id(m2, timeout=3)
            for m in (m1, m2):
                wait_delivered(n1, alice, m, bob, timeout=3)


# --------------------------------------------------------------------------
# delivery and presence


def test_offline_recipient_gets_messages_on_next_connect_either_node():
    """bob is offline (his stream closed): messages sent on both nodes stay
    pending; his next stream (node2) replays them in order and they become
    delivered with receipts; offline again, the next message is replayed on
    node1 and only it."""
    n1, n2 = node(1), node(2)
    alice, bob = uid("alice"), uid("bob")
    with stream(n1, bob) as s:
        first = send(n2, alice, bob, "while online")["message_id"]
        s.wait_message_id(first, timeout=5)
    wait_online(n2, alice, bob, False, timeout=STREAM_END_S)
    with stream(n2, alice) as als:
        mids = [send(n1, alice, bob, "offline 1")["message_id"], send(n2, alice, bob, "offline 2")["message_id"],
                send(n1, alice, bob, "offline 3")["message_id"]]
        time.sleep(1.5)  # past ack_timeout
        assert [i["message_id"] for i in inbox(n1, bob, status="pending")["items"]] == mids
        for m in mids:
            assert recipients(n2, alice, m)[bob]["status"] == "pending"
        with stream(n2, bob) as s:
            evs = s.wait_messages(3, timeout=5)
            assert [e.json()["message_id"] for e in evs] == mids, "replay %r" % evs
            for m in mids:
                wait_receipt_from(als, m, bob, "delivered", timeout=5)
                wait_delivered(n1, alice, m, bob)
        wait_online(n1, alice, bob, False, timeout=STREAM_END_S)
        last = send(n2, alice, bob, "offline again")["message_id"]
        time.sleep(0.3)
        assert recipients(n1, alice, last)[bob]["status"] == "pending"
        with stream(n1, bob) as s:
            s.wait_message_id(last, timeout=5)
            time.sleep(0.3)
            assert message_ids(s) == [last], "replayed after reconnect: %r" % message_ids(s)
        wait_delivered(n2, alice, last, bob)
        wait_receipt_from(als, last, bob, "delivered", timeout=5)


def test_online_recipients_local_remote_and_both():
    """A message reaches a recipient held only by the sending node, one held
    only by the other node, and one held by both (on each stream), at once."""
    n1, n2 = node(1), node(2)
    alice, bob, carol, dave = uid("alice"), uid("bob"), uid("carol"), uid("dave")
    ss = {"bob1": stream(n1, bob), "carol2": stream(n2, carol), "dave1": stream(n1, dave),
          "dave2": stream(n2, dave), "alice2": stream(n2, alice)}
    try:
        m = {u: send(n1, alice, u, "to %s" % u)["message_id"] for u in (bob, carol, dave)}
        t0 = time.monotonic()
        ss["bob1"].wait_message_id(m[bob], timeout=3)
        ss["carol2"].wait_message_id(m[carol], timeout=3)
        ss["dave1"].wait_message_id(m[dave], timeout=3)
        ss["dave2"].wait_message_id(m[dave], timeout=3)
        assert time.monotonic() - t0 < 2.0
        for u in (bob, carol, dave):
            wait_receipt_from(ss["alice2"], m[u], u, "delivered", timeout=5)
            wait_delivered(n2, alice, m[u], u)
    finally:
        for s in ss.values():
            s.close()
