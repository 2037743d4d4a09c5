"""The history checker itself, on made-up histories: a clean one passes,
and each kind of fault is counted where it belongs. No server is used."""

from history import Attempt, Conn, Ev, History, Recorded, check


def _history(n=4):
    """alice sends n messages to bob one after another (each 201); bob's
    inbox holds them as seqs 1..n; bob's device got them all on one stream."""
    h = History("made-up")
    rows = []
    for k in range(n):
        s = h.new_send("alice", "bob", k)
        a = Attempt("http://x", 10.0 * k)
        a.t1, a.outcome, a.status, a.message_id = 10.0 * k + 1, "201", 201, "M%02d" % k
        s.attempts.append(a)
        rows.append({"seq": k + 1, "message_id": a.message_id, "from": "alice", "body": s.body})
    d = Recorded(h, "bob", "bob@1")
    c = Conn("http://x", 0)
    c.events = [_ev(r) for r in rows]
    d.conns.append(c)
    return h, rows, d


def _ev(row, t=100.0):
    return Ev(t, {"seq": row["seq"], "message_id": row["message_id"], "from": row["from"],
                  "to": "bob", "body": row["body"]})


def _counts(h, rows):
    rep = check(h, None, users=["bob"], inboxes={"bob": rows})
    return {k: v for k, v in rep.n.items() if v}, rep


def test_history_checker_counts_each_fault():
    h, rows, d = _history()
    got, rep = _counts(h, rows)
    assert got == {}, "a clean history: %r\n%s" % (got, rep.details())

    # a 201 whose row never reached the device: lost, and a gap on the device
    h, rows, d = _history()
    del d.conns[0].events[3]
    got, _ = _counts(h, rows)
    assert got == {"lost": 1, "gaps": 1}, got

    # a 201 that is not stored: lost
    h, rows, d = _history()
    del d.conns[0].events[3]
    got, _ = _counts(h, rows[:3])
    assert got == {"lost": 1}, got

    # a row nobody sent, and an event that does not match its row: unexpected
    h, rows, d = _history()
    rows.append({"seq": 5, "message_id": "MXX", "from": "mallory", "body": "mallory/0"})
    d.conns[0].events.append(_ev(rows[-1]))
    d.conns[0].events[1].message_id = "M99"
    got, _ = _counts(h, rows)
    assert got == {"unexpected": 2, "lost": 1, "gaps": 1}, got

    # one send stored twice
    h, rows, d = _history()
    rows.append(dict(rows[1], seq=5, message_id="M77"))
    d.conns[0].events.append(_ev(rows[-1]))
    got, _ = _counts(h, rows)
    assert got == {"stored_dups": 1}, got

    # a stream that skips a seq (the device never gets it either)
    h, rows, d = _history()
    del d.conns[0].events[1]
    got, _ = _counts(h, rows)
    assert got == {"gaps": 2, "lost": 1}, got

    # a stream going backwards
    h, rows, d = _history()
    ev = d.conns[0].events
    ev[1], ev[2] = ev[2], ev[1]
    got, _ = _counts(h, rows)
    assert got == {"order_breaks": 1, "gaps": 1}, got

    # alice's #1, sent after #0's 201, stored before it
    h, rows, d = _history()
    rows[0]["seq"], rows[1]["seq"] = 2, 1
    rows.sort(key=lambda r: r["seq"])
    d.conns[0].events = [_ev(r) for r in rows]
    got, _ = _counts(h, rows)
    assert got == {"order_breaks": 1}, got

    # ... which is no break when #1 was sent before #0 had its 201
    h, rows, d = _history()
    h.sends[1].attempts[0].t0 = 0.5
    rows[0]["seq"], rows[1]["seq"] = 2, 1
    rows.sort(key=lambda r: r["seq"])
    d.conns[0].events = [_ev(r) for r in rows]
    got, _ = _counts(h, rows)
    assert got == {}, got

    # a seq twice on one connection; a resume that repeats
    h, rows, d = _history()
    d.conns[0].events.insert(2, _ev(rows[1]))
    got, _ = _counts(h, rows)
    assert got == {"stream_dups": 1}, got
    h, rows, d = _history()
    first, second = Conn("http://x", 0), Conn("http://x", 2)
    first.events = [_ev(r) for r in rows[:2]]
    second.events = [_ev(r) for r in rows[1:]]
    d.conns[:] = [first, second]
    got, _ = _counts(h, rows)
    assert got == {"stream_dups": 1}, got
    # a resume that starts past the row after Last-Event-ID
    second.after, second.events = 2, [_ev(r) for r in rows[3:]]
    got, _ = _counts(h, rows)
    assert got == {"gaps": 2, "lost": 1}, got

    # a row of a send whose every attempt was refused (connection refused, 409)
    h, rows, d = _history()
    s = h.new_send("alice", "bob", 9)
    for outcome in ("refused", "409"):
        a = Attempt("http://x", 50.0)
        a.t1, a.outcome = 50.5, outcome
        s.attempts.append(a)
    rows.append({"seq": 5, "message_id": "M09", "from": "alice", "body": s.body})
    d.conns[0].events.append(_ev(rows[-1]))
    got, _ = _counts(h, rows)
    assert got == {"unexpected": 1}, got
    # ... while after an unknown outcome (the connection broke) it is fine
    s.attempts[0].outcome = "unknown"
    got, _ = _counts(h, rows)
    assert got == {}, got
    print("the checker counts lost, unexpected, stored duplicates, gaps, order breaks and stream "
          "duplicates on made-up histories")
