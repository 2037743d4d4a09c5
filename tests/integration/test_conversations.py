"""Conversations (one row per peer or group, last message, unread count, most
recent first) and history (both directions, newest first, cursor paging)."""

import time

from chatlib import assert_error, get, node, send, stream, token, uid
from chatlib_groups import (change_members, check_direct_conv, check_group_conv, conv_of,
                            conversation, conversations, create_chat, fake_id, history, history_all,
                            history_resp, read, send_chat)

# Between sends whose order a test relies on: ts and the time part of message
# ids are milliseconds, so two sends in the same millisecond have no order.
GAP = 0.005


def _keys(cs):
    return [c["conversation"] for c in cs]


def _ids(ms):
    return [m["message_id"] for m in ms]


def _check_direct_item(m, sent, frm, to):
    assert m["message_id"] == sent["message_id"], (m, sent)
    assert m["from"] == frm and m["to"] == to and m["chat"] is None, "history item %r, want %s->%s" % (m, frm, to)
    assert m["body"] == sent["body"] and m["ts"] == sent["ts"], "history item %r vs sent %r" % (m, sent)


# --------------------------------------------------------------------------
# GET /v1/conversations


def test_direct_conversations_on_both_sides():
    """Sender and recipient both have the conversation, keyed by the peer, with
    the last message whoever sent it; own messages are not unread; most recent first."""
    n1, n2 = node(1), node(2)
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    send(n1, alice, bob, "hi bob")
    time.sleep(GAP)
    send(n2, alice, bob, "you there?")
    time.sleep(GAP)
    m3 = send(n1, bob, alice, "yes")
    time.sleep(GAP)
    m4 = send(n2, carol, alice, "hello alice")
    for base in (n1, n2):
        cs = conversations(base, alice)
        assert _keys(cs) == [carol, bob], "alice's conversations %r" % _keys(cs)
        check_direct_conv(cs[0], carol, m4["message_id"], carol, "hello alice", unread=1)
        check_direct_conv(cs[1], bob, m3["message_id"], bob, "yes", unread=1)
        assert cs[0]["last_message"]["ts"] == m4["ts"], (cs[0], m4)
        cs = conversations(base, bob)
        assert _keys(cs) == [alice], "bob's conversations %r" % _keys(cs)
        check_direct_conv(cs[0], alice, m3["message_id"], bob, "yes", unread=2)
        cs = conversations(base, carol)
        assert _keys(cs) == [alice], "carol's conversations %r" % _keys(cs)
        check_direct_conv(cs[0], alice, m4["message_id"], carol, "hello alice", unread=0)
        assert conversations(base, uid("dave")) == [], "a stranger has conversations"
    assert_error(get(n1, "/v1/conversations"), 401, "unauthorized")


def test_unread_counts_follow_reads_not_deliveries():
    """unread counts rows not yet read: a stream delivering them leaves it, a
    read by seq or by conversation lowers it, other conversations keep theirs."""
    n1, n2 = node(1), node(2)
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    a = [send(n1, alice, bob, "a%d" % i) for i in range(3)]
    c = [send(n2, carol, bob, "c%d" % i) for i in range(2)]

    def unread(base, user, conv):
        e = conversation(base, user, conv)
        assert e is not None, "%s has no conversation %s" % (user, conv)
        return e["unread"]

    assert unread(n1, bob, alice) == 3 and unread(n2, bob, carol) == 2
    with stream(n2, bob) as s:
        s.wait_messages(5, timeout=5)
    time.sleep(0.2)
    assert unread(n1, bob, alice) == 3, "delivery to a stream counted as read"
    read(n2, bob, {"up_to": 1}, expect_n=1)
    assert unread(n1, bob, alice) == 2 and unread(n1, bob, carol) == 2
    a.append(send(n2, alice, bob, "a3"))
    e = conversation(n2, bob, alice)
    check_direct_conv(e, alice, a[-1]["message_id"], alice, "a3", unread=3)
    assert conversations(n2, bob)[0]["conversation"] == alice, "the newest conversation is not first"
    read(n1, bob, {"conversation": alice}, expect_n=3)
    assert unread(n2, bob, alice) == 0 and unread(n2, bob, carol) == 2
    read(n1, bob, {"conversation": carol}, expect_n=2)
    assert unread(n1, bob, carol) == 0
    assert unread(n1, alice, bob) == 0 and unread(n2, carol, bob) == 0, "senders have unread of their own"


def test_group_conversation_for_every_member():
    """Once a message is posted, every member lists "chat:<id>" (kind group,
    chat and name set, peer null) with the last message; unread per member,
    the poster's own messages excluded; reading the group clears it only."""
    n1, n2 = node(1), node(2)
    alice, bob, carol, dave, eve = (uid(n) for n in ("alice", "bob", "carol", "dave", "eve"))
    d = send(n1, dave, bob, "direct before")
    time.sleep(GAP)
    gid = create_chat(n2, alice, "Trip", [bob, carol])["chat"]
    conv = conv_of(gid)
    m1 = send_chat(n1, alice, gid, "who's in?")
    for base, user, n in ((n1, alice, 0), (n2, bob, 1), (n1, carol, 1)):
        check_group_conv(conversation(base, user, conv), gid, "Trip", m1["message_id"], alice, "who's in?", n)
    assert _keys(conversations(n2, bob)) == [conv, dave], "bob's order %r" % _keys(conversations(n2, bob))
    time.sleep(GAP)
    m2 = send_chat(n2, bob, gid, "me!")
    for base, user, n in ((n2, alice, 1), (n1, bob, 1), (n2, carol, 2)):
        check_group_conv(conversation(base, user, conv), gid, "Trip", m2["message_id"], bob, "me!", n)
        assert conversations(base, user)[0]["conversation"] == conv
    assert conversation(n1, eve, conv) is None and conversations(n1, eve) == [], "an outsider sees the group"
    read(n1, carol, {"conversation": conv}, expect_n=2)
    assert conversation(n2, carol, conv)["unread"] == 0
    read(n2, bob, {"conversation": conv}, expect_n=1)
    check_group_conv(conversation(n1, bob, conv), gid, "Trip", m2["message_id"], bob, "me!", 0)
    check_direct_conv(conversation(n1, bob, dave), dave, d["message_id"], dave, "direct before", 1)
    assert conversation(n1, alice, conv)["unread"] == 1, "another member's read changed alice's unread"


def test_conversations_order_and_limit():
    """Most recent first; default 50, limit 1..100, otherwise 400; a new
    message moves its conversation to the top."""
    n1, n2 = node(1), node(2)
    alice = uid("alice")
    peers = ["p%02d_%s" % (i, uid("x")) for i in range(52)]
    for i, p in enumerate(peers):
        send(n1 if i % 2 else n2, alice, p, "to %d" % i)
        time.sleep(GAP)
    newest = list(reversed(peers))
    cs = conversations(n1, alice)
    assert _keys(cs) == newest[:50], "default page: %d conversations, first %r" % (len(cs), _keys(cs)[:3])
    assert _keys(conversations(n2, alice, limit=100)) == newest
    assert _keys(conversations(n2, alice, limit=3)) == newest[:3]
    assert _keys(conversations(n1, alice, limit=1)) == newest[:1]
    for c in cs:
        assert c["unread"] == 0 and c["kind"] == "direct" and c["last_message"]["from"] == alice, c
    m = send(n2, peers[0], alice, "back to you")
    [top] = conversations(n1, alice, limit=1)
    check_direct_conv(top, peers[0], m["message_id"], peers[0], "back to you", unread=1)
    for q in ("limit=0", "limit=101", "limit=abc", "limit=-1", "limit=1.5", "limit="):
        try:
            assert_error(get(n1, "/v1/conversations?" + q, token=token(alice)), 400, "bad_request")
        except AssertionError as e:
            raise AssertionError("?%s: %s" % (q, e))


# --------------------------------------------------------------------------
# history


def test_direct_history_both_directions():
    """Both sides see the same messages, both directions, newest first, and
    nothing from other conversations (other peers, a shared group)."""
    n1, n2 = node(1), node(2)
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    gid = create_chat(n1, alice, "not direct", [bob])["chat"]
    sent = []
    for i in range(7):
        frm, to = (alice, bob) if i % 2 == 0 else (bob, alice)
        sent.append((send(n1 if i % 3 else n2, frm, to, "msg %d" % i), frm, to))
        time.sleep(GAP)
        if i == 3:
            send(n2, carol, alice, "noise to alice")
            send(n1, alice, carol, "noise from alice")
            send_chat(n2, bob, gid, "group noise")
    want = list(reversed(sent))
    for base, user, peer in ((n1, alice, bob), (n2, bob, alice)):
        j = history(base, user, peer)
        assert _ids(j["messages"]) == [s["message_id"] for s, _, _ in want], (
            "%s's history with %s: %r" % (user, peer, [m["body"] for m in j["messages"]]))
        assert j["more"] is False and j["next_before"] == sent[0][0]["message_id"], j
        for m, (s, frm, to) in zip(j["messages"], want):
            _check_direct_item(m, s, frm, to)
    j = history(n1, alice, carol)
    assert [m["body"] for m in j["messages"]] == ["noise from alice", "noise to alice"], j
    # a conversation with nobody (or not with me) is empty, not an error
    for user, peer in ((carol, bob), (alice, uid("nobody"))):
        j = history(n2, user, peer)
        assert j["messages"] == [] and j["next_before"] is None and j["more"] is False, j


def test_history_paging_without_overlap_or_gap():
    """55 messages: default page 50 with more; limit 10 pages chain by
    next_before to exactly all of them, newest first, also while new messages
    arrive between pages; past the oldest an empty page."""
    n1, n2 = node(1), node(2)
    alice, bob = uid("alice"), uid("bob")
    sent = []
    for i in range(55):
        frm, to = (alice, bob) if i % 3 else (bob, alice)
        sent.append(send(n1 if i % 2 else n2, frm, to, "page %d" % i)["message_id"])
        time.sleep(GAP)
    want = list(reversed(sent))
    j = history(n1, alice, bob)
    assert _ids(j["messages"]) == want[:50] and j["more"] is True, (len(j["messages"]), j["more"])
    j = history(n2, alice, bob, before=j["next_before"])
    assert _ids(j["messages"]) == want[50:] and j["more"] is False, (_ids(j["messages"]), j["more"])
    j = history(n2, bob, alice, limit=100)
    assert _ids(j["messages"]) == want and j["more"] is False, len(j["messages"])
    assert _ids(history_all(n1, bob, alice, limit=10)) == want
    assert _ids(history_all(n2, alice, bob, limit=1)[:5]) == want[:5]
    # pages stay exact while new messages arrive
    p1 = history(n1, alice, bob, limit=10)
    assert _ids(p1["messages"]) == want[:10] and p1["more"] is True
    late = []
    for i in range(3):
        time.sleep(GAP)
        late.append(send(n2, bob, alice, "late %d" % i)["message_id"])
    p2 = history(n2, alice, bob, before=p1["next_before"], limit=10)
    assert _ids(p2["messages"]) == want[10:20], "page 2 after new messages: %r" % [
        m["body"] for m in p2["messages"]]
    p = history(n1, alice, bob, limit=5)
    assert _ids(p["messages"]) == list(reversed(late)) + want[:2], [m["body"] for m in p["messages"]]
    # before the very oldest: nothing
    j = history(n1, alice, bob, before=sent[0])
    assert j["messages"] == [] and j["next_before"] is None and j["more"] is False, j
    # the last full page says whether there is more
    j = history(n1, alice, bob, before=want[44], limit=10)
    assert _ids(j["messages"]) == want[45:55] and j["more"] is False, (len(j["messages"]), j["more"])


def test_group_history_members_only():
    """Every member sees all of the group's messages (their own too), newest
    first, chat set and to null; outsiders and removed members 403, unknown group 404."""
    n1, n2 = node(1), node(2)
    alice, bob, carol, dave = uid("alice"), uid("bob"), uid("carol"), uid("dave")
    gid = create_chat(n1, alice, "history", [bob, carol])["chat"]
    conv = conv_of(gid)
    sent = []
    for i, u in enumerate([alice, bob, carol, alice, carol, bob]):
        sent.append(send_chat(n1 if i % 2 else n2, u, gid, "g%d from %s" % (i, u)))
        time.sleep(GAP)
    send(n1, alice, bob, "direct, not in the group")
    want = list(reversed(sent))
    for base, user in ((n1, alice), (n2, bob), (n1, carol)):
        j = history(base, user, conv)
        assert _ids(j["messages"]) == [s["message_id"] for s in want], "%s: %r" % (
            user, [m["body"] for m in j["messages"]])
        for m, s in zip(j["messages"], want):
            assert m["from"] == s["from"] and m["chat"] == gid and m["to"] is None, m
            assert m["body"] == s["body"] and m["ts"] == s["ts"], (m, s)
    p = history(n2, bob, conv, limit=4)
    assert _ids(p["messages"]) == [s["message_id"] for s in want[:4]] and p["more"] is True
    p = history(n1, bob, conv, before=p["next_before"], limit=4)
    assert _ids(p["messages"]) == [s["message_id"] for s in want[4:]] and p["more"] is False
    for base in (n1, n2):
        r = history_resp(base, dave, conv)
        assert_error(r, 403, "forbidden")
        assert b"g0 from" not in r.body, "403 leaks the history"
        assert_error(history_resp(base, alice, conv_of(fake_id())), 404, "not_found")
    r = change_members(n1, alice, gid, remove=[carol])
    assert r.status == 200, r
    assert_error(history_resp(n2, carol, conv), 403, "forbidden")
    assert len(history(n2, alice, conv)["messages"]) == 6


def test_history_bad_arguments():
    """Bad before or limit: 400; no token: 401."""
    n1 = node(1)
    alice, bob = uid("alice"), uid("bob")
    mid = send(n1, alice, bob, "one")["message_id"]
    tok = token(alice)
    for qs in ("before=not-an-id", "before=" + "0" * 25, "before=" + "0" * 27, "before=%2A%2A%2A",
               "limit=0", "limit=101", "limit=abc", "limit=-1", "limit=1.5", "limit=",
               "before=%s&limit=0" % mid):
        r = get(n1, "/v1/conversations/%s/messages?%s" % (bob, qs), token=tok)
        try:
            assert_error(r, 400, "bad_request")
        except AssertionError as e:
            raise AssertionError("?%s: %s" % (qs, e))
    assert_error(get(n1, "/v1/conversations/%s/messages" % bob), 401, "unauthorized")
    assert _ids(history(n1, alice, bob, limit=100)["messages"]) == [mid]
