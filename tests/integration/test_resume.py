"""Last-Event-ID resumption while four senders write concurrently on two nodes."""

import random
import threading
import time

from chatlib import (SSEStream, expect_json, get, inbox_all_pages, node, post, token, uid,
                     wait_until)

PER_SENDER = 40


def test_resume_under_concurrency():
    n1, n2 = node(1), node(2)
    rcpt = uid("rcpt")
    senders = [(uid("s%d" % i), n1 if i < 2 else n2) for i in range(4)]
    sent = {s: [] for s, _ in senders}  # message_ids in the order of their 201s
    errors = []
    rnd = random.Random()

    def sender(user, base):
        tok = token(user)
        try:
            for i in range(PER_SENDER):
                r = post(base, "/v1/messages", {"to": rcpt, "body": "%s #%d" % (user, i)}, token=tok)
                j = expect_json(r, 201)
                sent[user].append(j["message_id"])
                time.sleep(rnd.uniform(0.05, 0.1))  # pacing, so the sends span many reconnects
        except BaseException as e:  # noqa: BLE001
            errors.append("%s: %r" % (user, e))

    conns = []  # (resumed_from or None, node, events)

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

    def last_seq(last, events):
        ms = [e for e in events if e.type == "message"]
        return int(ms[-1].id) if ms else last

    last = None
    k = 0
    s = open_stream(k, None)
    threads = [threading.Thread(target=sender, args=sb, daemon=True) for sb in senders]
    for t in threads:
        t.start()
    reconnects_during_sends = 0
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(rnd.uniform(0.1, 0.3))
            s.close()
            conns.append((last, s.base, s.messages()))
            last = last_seq(last if last is not None else 0, s.messages())
            k += 1
            s = open_stream(k, last)
            reconnects_during_sends += 1
        for t in threads:
            t.join(30)
        assert not errors, "senders failed: %s" % errors
        s.close()
        conns.append((last, s.base, s.messages()))
        last = last_seq(last if last is not None else 0, s.messages())
        total = sum(len(v) for v in sent.values())
        assert total == 4 * PER_SENDER, total
        # final resume: everything not yet seen must come now
        k += 1
        s = open_stream(k, last)
        if last < total:
            s.wait_messages(total - last, timeout=10)
        s.close()
        conns.append((last, s.base, s.messages()))
    finally:
        s.close()

    print("%d messages, %d stream connections, %d reconnects during the sends" % (
        total, len(conns), reconnects_during_sends))
    assert reconnects_during_sends >= 8, "only %d reconnects happened during the sends" % reconnects_during_sends

    by_seq = {}
    for i, (resumed, base, evs) in enumerate(conns):
        seqs = [int(e.id) for e in evs]
        for e in evs:
            assert e.json()["seq"] == int(e.id), "event id %r vs data seq %r" % (e.id, e.json()["seq"])
        assert len(seqs) == len(set(seqs)), "connection %d (%s) repeated a seq: %r" % (i, base, seqs)
        assert all(a < b for a, b in zip(seqs, seqs[1:])), "connection %d (%s) out of order: %r" % (i, base, seqs)
        if resumed is not None and seqs:
            assert seqs[0] == resumed + 1, "connection %d (%s) resumed after %d but began at %d" % (
                i, base, resumed, seqs[0])
        for e in evs:
            item = e.json()
            prev = by_seq.get(item["seq"])
            if prev is not None:
                assert prev == item["message_id"], "seq %d was %s and %s" % (item["seq"], prev, item["message_id"])
            by_seq[item["seq"]] = item["message_id"]
            assert item["to"] == rcpt, item
    assert sorted(by_seq) == list(range(1, total + 1)), "received seqs are not 1..%d: missing %r, extra %r" % (
        total, sorted(set(range(1, total + 1)) - set(by_seq)), sorted(set(by_seq) - set(range(1, total + 1))))
    all_ids = {m for v in sent.values() for m in v}
    got_ids = set(by_seq.values())
    assert got_ids == all_ids, "missing %r, unexpected %r" % (sorted(all_ids - got_ids), sorted(got_ids - all_ids))
    order = [by_seq[q] for q in sorted(by_seq)]
    for user, mids in sent.items():
        mine = [m for m in order if m in set(mids)]
        assert mine == mids, "%s's messages arrived out of 201 order" % user

    # default limit 100, with more=true
    j = expect_json(get(n2, "/v1/inbox?status=all", token=token(rcpt)), 200)
    assert len(j["items"]) == 100 and j["more"] is True and j["next_after"] == j["items"][-1]["seq"], (
        len(j["items"]), j["more"], j["next_after"])
    j = expect_json(get(n2, "/v1/inbox?status=all&after=100&limit=1000", token=token(rcpt)), 200)
    assert len(j["items"]) == total - 100 and j["more"] is False, (len(j["items"]), j["more"])
    # The inbox, paged, agrees with the stream: same seq -> message_id, all delivered.
    items = inbox_all_pages(n1, rcpt, status="all", limit=37)
    assert [i["seq"] for i in items] == list(range(1, total + 1)), [i["seq"] for i in items][:20]
    for it in items:
        assert by_seq[it["seq"]] == it["message_id"], it
    wait_until(lambda: not inbox_all_pages(n2, rcpt, status="pending"), 5,
               "every streamed row to leave the pending inbox")
