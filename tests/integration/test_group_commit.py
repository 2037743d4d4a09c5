"""Group commit: concurrent sends share transactions ([mysql] send_batch),
and each still gets its own answer: 201 with its own rows, 403 for a
blocked one, one row for racing repeats of a client_msg_id."""

import secrets
import threading

from chatlib import (assert_error, chatd, door, expect_json, inbox, metric, post, send, skip,
                     token, uid)
from chatlib_social import block

SENDERS = 16
EACH = 15


def test_concurrent_sends_share_commits_and_keep_their_own_answers():
    if door() != "chatd":
        skip("the metrics read are chatd node1's own")
    base = chatd(1)
    tag = uid("gc")
    recipients = ["%s-r%d" % (tag, i) for i in range(SENDERS)]
    blocker = "%s-blocker" % tag
    senders = ["%s-s%d" % (tag, i) for i in range(SENDERS)]
    block(base, blocker, senders[0])
    before = (metric(base, "chat_send_batches_total"), metric(base, "chat_send_batched_total"))
    results, errors = {}, []
    cid = "cid-" + secrets.token_hex(6)

    def run(i):
        try:
            got = []
            for k in range(EACH):
                # Every third send of sender 0 goes to someone who blocks it.
                if i == 0 and k % 3 == 0:
                    r = post(base, "/v1/messages", {"to": blocker, "body": "no"}, token=token(senders[0]))
                    got.append(("blocked", r.status, r.body))
                    continue
                # Senders 1 and 2 race the same client_msg_id (same sender).
                if i in (1, 2) and k == 0:
                    r = post(base, "/v1/messages", {"to": recipients[1], "body": "once", "client_msg_id": cid},
                             token=token(senders[1]))
                    got.append(("cid", r.status, r.json()["message_id"] if r.status in (200, 201) else r.body))
                    continue
                m = send(base, senders[i], recipients[i], "m%d" % k)
                got.append(("ok", 201, m["message_id"]))
            results[i] = got
        except BaseException as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == SENDERS, "some senders did not finish"

    cids = [g for i in (1, 2) for g in results[i] if g[0] == "cid"]
    cid_ids = {g[2] for g in cids}
    for i, got in results.items():
        ok = [g[2] for g in got if g[0] == "ok"]
        rows = [it["message_id"] for it in inbox(base, recipients[i], status="all")["items"]
                if it["from"] == senders[i] and it["message_id"] not in cid_ids]
        assert rows == ok, "recipient %d: stored %r, answered %r" % (i, rows, ok)
    blocked = [g for g in results[0] if g[0] == "blocked"]
    assert blocked and all(g[1] == 403 for g in blocked), blocked
    assert not inbox(base, blocker, status="all")["items"], "a blocked send was stored"
    assert sorted(g[1] for g in cids) == [200, 201], cids
    assert cids[0][2] == cids[1][2], cids
    once = [it for it in inbox(base, recipients[1], status="all")["items"] if it["body"] == "once"]
    assert len(once) == 1, once

    batches = metric(base, "chat_send_batches_total") - before[0]
    batched = metric(base, "chat_send_batched_total") - before[1]
    stored = sum(1 for got in results.values() for g in got if g[0] in ("ok", "cid") and g[1] == 201)
    print("%d sends stored in %d transactions (%d sends in batches)" % (stored, batches, batched))
    assert batched >= stored, (batched, stored)
    # Sixteen senders on four HTTP threads: some sends must have shared a commit.
    assert batches < batched, "no two sends ever shared a transaction: %d for %d" % (batches, batched)
