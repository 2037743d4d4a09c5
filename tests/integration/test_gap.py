"""A live message that shows a gap in the recipient's seqs: a row whose
publish never came (written here straight into MariaDB, as a node that
died between its COMMIT and its publish leaves it). The stream holds the
live one back, reads the missing row from MariaDB, and the recipient gets
both, in seq order, each once; the row the stream read is marked
delivered by its node."""

import secrets

from chatlib import door, node, recipient_status, send, server_sql, skip, stream, uid, wait_until

_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _silent_send(frm, to, body):
    """Stores a direct message through the schema's procedure, as a send
    would, but publishes nothing. Returns its message_id."""
    mid = "".join(secrets.choice(_B32) for _ in range(26))
    conv = "d:%s|%s" % tuple(sorted((frm, to)))
    batch = '[["%s","%s","%s",null,"%s",%d,"%s"]]' % (mid, frm, to, body, 1700000000000, conv)
    rc, out = server_sql("CALL chat_send_direct('%s', NULL); COMMIT" % batch)
    assert rc == 0, "chat_send_direct: %s" % out
    return mid


def _streaming(prefix):
    """alice has sent bob one message through node 1; bob streams on node 2
    and has it. Returns (node 1, alice, bob, that message_id, bob's stream)."""
    if door() != "chatd":
        skip("the nodes' behaviour; one run is enough")
    n1 = node(1)
    alice, bob = uid(prefix + "a"), uid(prefix + "b")
    first = send(n1, alice, bob, "before the gap")["message_id"]
    s = stream(node(2), bob)
    s.wait_message_id(first)
    return n1, alice, bob, first, s


def test_live_message_after_a_gap_waits_for_the_missing_row():
    n1, alice, bob, first, s = _streaming("gap")
    try:
        lost = _silent_send(alice, bob, "published never")
        live = send(n1, alice, bob, "after the gap")["message_id"]
        got = s.wait_messages(3, timeout=10)
        ids = [e.json()["message_id"] for e in got]
        seqs = [e.json()["seq"] for e in got]
        assert ids == [first, lost, live], "want %r, got %r" % ([first, lost, live], ids)
        assert seqs == sorted(seqs) and len(set(seqs)) == 3 and seqs[2] == seqs[0] + 2, seqs
        assert [e.id for e in got] == [str(q) for q in seqs], [e.id for e in got]
        wait_until(lambda: recipient_status(n1, alice, lost, bob).get("status") == "delivered", 5,
                   "the row read from MariaDB marked delivered")
        wait_until(lambda: recipient_status(n1, alice, live, bob).get("status") == "delivered", 5,
                   "the live row marked delivered")
    finally:
        s.close()
    assert len(s.messages()) == 3, "bob's stream got %r" % [e.json() for e in s.messages()]


def test_many_live_messages_after_a_gap_arrive_in_order():
    """The same with 100 live messages right after the gap: more than a
    stream holds back (64), so some are left to MariaDB and read from there;
    all 102 arrive, in seq order, once each."""
    n1, alice, bob, first, s = _streaming("gapm")
    try:
        want = [first, _silent_send(alice, bob, "published never")]
        want += [send(n1, alice, bob, "live %d" % i)["message_id"] for i in range(100)]
        got = s.wait_messages(len(want), timeout=20)
        ids = [e.json()["message_id"] for e in got]
        seqs = [e.json()["seq"] for e in got]
        assert ids == want, "first difference at %d: want %r, got %r" % (
            next(i for i, (a, b) in enumerate(zip(want, ids + [None] * len(want))) if a != b),
            want[:5], ids[:5])
        assert seqs == list(range(seqs[0], seqs[0] + len(want))), seqs
    finally:
        s.close()
    assert len(s.messages()) == len(want), "bob's stream got %d messages" % len(s.messages())
