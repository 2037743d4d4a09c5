"""Helpers for the group, read-state and conversation tests (issue 4).

Builds on chatlib (standard library only). Every helper checks the status and
the shape of the answer it gets and raises AssertionError naming the request,
so a failing test says what the server did.
"""

import re
import time
import urllib.parse

from chatlib import expect_json, get, now_ms, post, token, wait_until

ID_RE = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")  # Crockford base32, as message ids


CHAT_ID_RE = re.compile(r"[0-9A-Za-z]{26}")


def is_id(v):
    """A message id: 26 characters of Crockford base32."""
    return isinstance(v, str) and ID_RE.fullmatch(v) is not None


def is_chat_id(v):
    """A group id: 26 characters."""
    return isinstance(v, str) and CHAT_ID_RE.fullmatch(v) is not None


def fake_id():
    """A well-formed id that names nothing (all zeros sorts before any real one)."""
    return "0" * 26


def q(s):
    """A path segment: user ids and "chat:<id>" need no escaping (":" and "@"
    are pchars), anything else is percent-encoded."""
    return urllib.parse.quote(s, safe=":@")


def conv_of(chat_id):
    return "chat:" + chat_id


# --------------------------------------------------------------------------
# groups


def check_chat(obj, name, owner, members, desc=""):
    """Checks a full group object (the 201 of POST /v1/chats and the 200 of
    GET /v1/chats/{id} and POST /v1/chats/{id}/members)."""
    assert is_chat_id(obj.get("chat")), "%s: chat id %r is not a 26-char id: %r" % (desc, obj.get("chat"), obj)
    assert obj.get("name") == name, "%s: name %r, want %r" % (desc, obj.get("name"), name)
    assert obj.get("owner") == owner, "%s: owner %r, want %r" % (desc, obj.get("owner"), owner)
    want = sorted(set(members))
    assert obj.get("members") == want, "%s: members %r, want %r" % (desc, obj.get("members"), want)
    assert isinstance(obj.get("created_ts"), int), "%s: created_ts %r" % (desc, obj)
    return obj


def create_chat(base, owner, name, members, expect_status=201):
    """POST /v1/chats as owner; for a 201 checks the object (owner included
    in the members, duplicates gone, sorted) and returns it."""
    r = post(base, "/v1/chats", {"name": name, "members": members}, token=token(owner))
    if expect_status != 201:
        return r
    t = now_ms()
    j = expect_json(r, 201)
    check_chat(j, name, owner, list(members) + [owner], r.desc)
    assert abs(j["created_ts"] - t) < 60000, "%s: created_ts %r far from now %r" % (r.desc, j["created_ts"], t)
    return j


def get_chat(base, user, chat_id):
    return get(base, "/v1/chats/" + q(chat_id), token=token(user))


def list_chats(base, user):
    j = expect_json(get(base, "/v1/chats", token=token(user)), 200)
    assert isinstance(j.get("chats"), list), "GET /v1/chats as %s: %r" % (user, j)
    return j["chats"]


def change_members(base, user, chat_id, add=None, remove=None, body=None):
    """POST /v1/chats/{id}/members; returns the Resp."""
    if body is None:
        body = {}
        if add is not None:
            body["add"] = add
        if remove is not None:
            body["remove"] = remove
    return post(base, "/v1/chats/%s/members" % q(chat_id), body, token=token(user))


def send_chat(base, frm, chat_id, body, expect_status=201):
    """POST /v1/messages {"chat": id, "body": ...}; for a 201 checks the answer."""
    r = post(base, "/v1/messages", {"chat": chat_id, "body": body}, token=token(frm))
    if expect_status != 201:
        return r
    j = expect_json(r, 201)
    assert is_id(j.get("message_id")), "%s: message_id %r" % (r.desc, j)
    assert j.get("from") == frm, "%s: from %r, want %r" % (r.desc, j.get("from"), frm)
    assert j.get("chat") == chat_id, "%s: chat %r, want %r" % (r.desc, j.get("chat"), chat_id)
    assert "to" in j and j["to"] is None, "%s: to should be null for a group message: %r" % (r.desc, j)
    assert j.get("body") == body, "%s: body %r" % (r.desc, j.get("body"))
    assert isinstance(j.get("ts"), int), "%s: ts %r" % (r.desc, j)
    assert j.get("status") == "pending", "%s: status %r" % (r.desc, j)
    return j


def check_group_item(item, frm, chat_id, body, message_id=None, statuses=("pending", "delivered")):
    """Checks an inbox/stream item of a group message."""
    assert isinstance(item.get("seq"), int) and item["seq"] > 0, "item seq %r" % item
    assert item.get("from") == frm, "item from %r, want %r: %r" % (item.get("from"), frm, item)
    assert item.get("chat") == chat_id, "item chat %r, want %r: %r" % (item.get("chat"), chat_id, item)
    assert "to" in item and item["to"] is None, "group item: to should be null: %r" % item
    assert item.get("body") == body, "item body %r, want %r" % (item.get("body"), body)
    assert isinstance(item.get("ts"), int), "item ts %r" % item
    assert item.get("status") in statuses, "item status %r, want one of %r" % (item.get("status"), statuses)
    if message_id is not None:
        assert item.get("message_id") == message_id, "item message_id %r, want %r" % (
            item.get("message_id"), message_id)


def recipients(base, user, message_id):
    """GET /v1/messages/{id} as user -> {recipient: entry}."""
    r = get(base, "/v1/messages/" + q(message_id), token=token(user))
    j = expect_json(r, 200)
    rs = j.get("recipients")
    assert isinstance(rs, list), "%s: recipients %r" % (r.desc, j)
    out = {}
    for e in rs:
        assert e.get("user") not in out, "%s: recipient %r listed twice: %r" % (r.desc, e.get("user"), rs)
        out[e.get("user")] = e
    return out


def wait_recipient_status(base, user, message_id, recipient, status, timeout=5.0):
    def check():
        e = recipients(base, user, message_id).get(recipient)
        return e if e is not None and e.get("status") == status else None
    return wait_until(check, timeout, "message %s to show %s for %s" % (message_id, status, recipient))


# --------------------------------------------------------------------------
# streams


def stay_quiet(s, pred, seconds, what):
    """Asserts that pred(events) stays falsy on stream s for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        bad = pred(s.snapshot())
        assert not bad, "%s: %s: %r" % (s.desc, what, bad)
        time.sleep(0.05)
    bad = pred(s.snapshot())
    assert not bad, "%s: %s: %r" % (s.desc, what, bad)


def message_ids(s):
    return [e.json().get("message_id") for e in s.messages()]


def receipts_of(s, message_id=None, status=None):
    out = []
    for e in s.receipts():
        d = e.json()
        if message_id is not None and d.get("message_id") != message_id:
            continue
        if status is not None and d.get("status") != status:
            continue
        out.append(d)
    return out


def wait_receipt_from(s, message_id, user, status, timeout=5.0):
    """Waits for a receipt on s for message_id from user with status; checks its shape."""
    def pred():
        for e in s.events:
            if e.type != "receipt":
                continue
            d = e.json()
            if d.get("message_id") == message_id and d.get("user") == user and d.get("status") == status:
                return d
        return None
    d = s.wait_for(pred, timeout, "a %s receipt for %s from %s" % (status, message_id, user))
    assert isinstance(d.get("ts"), int), "receipt ts %r" % d
    return d


# --------------------------------------------------------------------------
# read state


def mark_read(base, user, body):
    """POST /v1/inbox/read; returns the Resp."""
    return post(base, "/v1/inbox/read", body, token=token(user))


def read(base, user, body, expect_n=None):
    """POST /v1/inbox/read expecting 200 {"read": n}; returns n."""
    r = mark_read(base, user, body)
    j = expect_json(r, 200)
    assert isinstance(j.get("read"), int), "%s %r: %r" % (r.desc, body, j)
    if expect_n is not None:
        assert j["read"] == expect_n, "%s %r as %s: read %r, want %d" % (r.desc, body, user, j["read"], expect_n)
    return j["read"]


# --------------------------------------------------------------------------
# conversations and history


def conversations(base, user, limit=None, raw_query=None):
    path = "/v1/conversations"
    if raw_query is not None:
        path += "?" + raw_query
    elif limit is not None:
        path += "?limit=%d" % limit
    r = get(base, path, token=token(user))
    j = expect_json(r, 200)
    cs = j.get("conversations")
    assert isinstance(cs, list), "%s: %r" % (r.desc, j)
    ts = [c.get("last_ts") for c in cs]
    assert all(isinstance(t, int) for t in ts), "%s: last_ts values %r" % (r.desc, ts)
    assert ts == sorted(ts, reverse=True), "%s: not most recent first: %r" % (r.desc, ts)
    keys = [c.get("conversation") for c in cs]
    assert len(keys) == len(set(keys)), "%s: a conversation listed twice: %r" % (r.desc, keys)
    return cs


def conversation(base, user, conv):
    """The caller's entry for conv, or None."""
    for c in conversations(base, user, limit=100):
        if c.get("conversation") == conv:
            return c
    return None


def check_direct_conv(c, peer, last_mid, last_from, last_body, unread):
    assert c is not None, "no conversation with %s" % peer
    assert c.get("conversation") == peer, "conversation %r, want %r: %r" % (c.get("conversation"), peer, c)
    assert c.get("kind") == "direct", "kind %r: %r" % (c.get("kind"), c)
    assert c.get("peer") == peer, "peer %r: %r" % (c.get("peer"), c)
    assert "chat" in c and c["chat"] is None, "direct conversation chat should be null: %r" % c
    assert "name" in c and c["name"] is None, "direct conversation name should be null: %r" % c
    _check_last(c, last_mid, last_from, last_body, unread)


def check_group_conv(c, chat_id, name, last_mid, last_from, last_body, unread):
    assert c is not None, "no conversation for chat %s" % chat_id
    assert c.get("conversation") == conv_of(chat_id), "conversation %r: %r" % (c.get("conversation"), c)
    assert c.get("kind") == "group", "kind %r: %r" % (c.get("kind"), c)
    assert "peer" in c and c["peer"] is None, "group conversation peer should be null: %r" % c
    assert c.get("chat") == chat_id, "chat %r: %r" % (c.get("chat"), c)
    assert c.get("name") == name, "name %r, want %r: %r" % (c.get("name"), name, c)
    _check_last(c, last_mid, last_from, last_body, unread)


def _check_last(c, last_mid, last_from, last_body, unread):
    lm = c.get("last_message")
    assert isinstance(lm, dict), "last_message %r" % c
    assert lm.get("message_id") == last_mid, "last_message id %r, want %r: %r" % (lm.get("message_id"), last_mid, c)
    assert lm.get("from") == last_from, "last_message from %r, want %r: %r" % (lm.get("from"), last_from, c)
    assert lm.get("body") == last_body, "last_message body %r, want %r" % (lm.get("body"), last_body)
    assert isinstance(lm.get("ts"), int), "last_message ts %r" % lm
    assert c.get("last_ts") == lm["ts"], "last_ts %r != last_message ts %r" % (c.get("last_ts"), lm["ts"])
    assert c.get("unread") == unread, "unread %r, want %r: %r" % (c.get("unread"), unread, c)


def history_resp(base, user, conv, before=None, limit=None, raw_query=None):
    path = "/v1/conversations/%s/messages" % q(conv)
    if raw_query is not None:
        path += "?" + raw_query
    else:
        qs = {}
        if before is not None:
            qs["before"] = before
        if limit is not None:
            qs["limit"] = str(limit)
        if qs:
            path += "?" + urllib.parse.urlencode(qs)
    return get(base, path, token=token(user))


def history(base, user, conv, before=None, limit=None):
    """One page of GET /v1/conversations/{conv}/messages; checks the paging
    fields agree with the items."""
    r = history_resp(base, user, conv, before=before, limit=limit)
    j = expect_json(r, 200)
    ms = j.get("messages")
    assert isinstance(ms, list), "%s: %r" % (r.desc, j)
    assert isinstance(j.get("more"), bool), "%s: more %r" % (r.desc, j)
    assert "next_before" in j, "%s: no next_before: %r" % (r.desc, j)
    if ms:
        assert j["next_before"] == ms[-1].get("message_id"), "%s: next_before %r, oldest returned %r" % (
            r.desc, j["next_before"], ms[-1].get("message_id"))
    else:
        assert j["next_before"] is None, "%s: empty page with next_before %r" % (r.desc, j["next_before"])
        assert j["more"] is False, "%s: empty page with more=true" % r.desc
    for m in ms:
        for k in ("message_id", "from", "to", "chat", "body", "ts"):
            assert k in m, "%s: history item without %r: %r" % (r.desc, k, m)
    ts = [m["ts"] for m in ms]
    assert ts == sorted(ts, reverse=True), "%s: not newest first: ts %r" % (r.desc, ts)
    ids = [m["message_id"] for m in ms]
    assert len(ids) == len(set(ids)), "%s: a message twice on one page: %r" % (r.desc, ids)
    return j


def history_all(base, user, conv, limit=None):
    """Every message of conv, newest first, following next_before/more."""
    out = []
    before = None
    for _ in range(1000):
        j = history(base, user, conv, before=before, limit=limit)
        out.extend(j["messages"])
        if not j["more"]:
            return out
        assert j["messages"], "more=true with no messages: %r" % j
        before = j["next_before"]
    raise AssertionError("history paging did not end")
