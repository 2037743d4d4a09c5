"""client_msg_id: a repeat is answered 200 with the first message_id."""

import secrets

from chatlib import assert_error, expect_json, inbox, node, post, send, token, uid


def test_client_msg_id_repeat_and_conflict():
    n1, n2 = node(1), node(2)
    alice, bob, dave = uid("alice"), uid("bob"), uid("dave")
    cid = "cid-" + secrets.token_hex(6)
    first = send(n1, alice, bob, "once only", client_msg_id=cid, expect_status=201)
    # the repeat may land on the other node (a retry through the load balancer)
    again = send(n2, alice, bob, "once only", client_msg_id=cid, expect_status=200)
    assert again["message_id"] == first["message_id"], (first, again)
    assert again["body"] == "once only" and again["to"] == bob and again["from"] == alice, again
    third = send(n1, alice, bob, "once only", client_msg_id=cid, expect_status=200)
    assert third["message_id"] == first["message_id"], third
    rows = [i for i in inbox(n1, bob, status="all")["items"]]
    assert len(rows) == 1 and rows[0]["message_id"] == first["message_id"], rows

    # same client_msg_id, different body or recipient: 409
    r = post(n1, "/v1/messages", {"to": bob, "body": "something else", "client_msg_id": cid}, token=token(alice))
    assert_error(r, 409, "conflict")
    r = post(n2, "/v1/messages", {"to": dave, "body": "once only", "client_msg_id": cid}, token=token(alice))
    assert_error(r, 409, "conflict")
    assert not inbox(n1, dave, status="all")["items"], "the conflicting send stored a row for dave"
    assert len(inbox(n2, bob, status="all")["items"]) == 1, "the conflicting send stored a row for bob"

    # client_msg_id is per sender: carol may use the same one
    carol = uid("carol")
    other = send(n1, carol, bob, "once only", client_msg_id=cid, expect_status=201)
    assert other["message_id"] != first["message_id"], other
    assert len(inbox(n1, bob, status="all")["items"]) == 2

    # without client_msg_id every POST is a new message
    a = send(n1, alice, dave, "same text")
    b = send(n1, alice, dave, "same text")
    assert a["message_id"] != b["message_id"]
    assert len(expect_json(post(n1, "/v1/messages", {"to": dave, "body": "x"}, token=token(alice)), 201)) > 0
    assert len(inbox(n2, dave, status="all")["items"]) == 3


def test_client_msg_id_concurrent_repeats():
    """The same client_msg_id sent 8 times at once through both nodes (a
    client retrying over a flaky network): one 201, the rest 200, one row."""
    import threading
    n1, n2 = node(1), node(2)
    alice, bob = uid("alice"), uid("bob")
    for round_ in range(3):
        cid = "race-%d-%s" % (round_, secrets.token_hex(4))
        results = [None] * 8
        gate = threading.Barrier(8)

        def go(i):
            gate.wait(5)
            results[i] = post(n1 if i % 2 else n2, "/v1/messages",
                              {"to": bob, "body": "raced", "client_msg_id": cid}, token=token(alice))

        threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        statuses = sorted(r.status for r in results)
        assert statuses == [200] * 7 + [201], "statuses %r: %r" % (
            statuses, [r.body[:200] for r in results if r.status not in (200, 201)])
        ids = {r.json()["message_id"] for r in results}
        assert len(ids) == 1, ids
    rows = inbox(n1, bob, status="all")["items"]
    assert len(rows) == 3, "expected 3 rows (one per client_msg_id), got %d" % len(rows)
