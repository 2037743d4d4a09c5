"""chatd serves SSE streams from stream loops of its own: a loop takes the
streams the delivery woke, writes them, and must never leave one behind.
Here one loop (threads 1) serves many streams while many senders post to
them at once, so streams are woken again while the loop is still writing
others; every message has to reach its stream at once, not at the next
keepalive round (set to a minute, so that it cannot hide a lost wake)."""

import random
import threading
import time

import chatlib_raw as R
from chatlib import door, send, skip, stream, uid

STREAMS = 150
SENDERS = 24
PER_SENDER = 40
DEADLINE_S = 10  # after the last send; a stream left behind waits 60 s


def test_busy_loop_leaves_no_stream_behind():
    """150 streams on one stream loop, 24 senders posting 40 messages each
    to random ones of them, all at once: every message reaches its stream,
    once, within 10 s of the last send (the keepalive round, which would
    also write a stream the loop forgot, is 60 s)."""
    if door() != "chatd":
        skip("about chatd's stream loops; runs once, in the chatd run")
    overrides = {"server": {"threads": 1}, "delivery": {"keepalive": 60, "send_rate": 0}}
    with R.OwnServer("loop", overrides) as srv:
        users = [uid("loop%d" % i) for i in range(STREAMS)]
        streams = {}
        try:
            for u in users:
                streams[u] = stream(srv.base, u)
            sent = []  # (recipient, message_id, time the 201 came)
            lock = threading.Lock()
            errors = []

            def sender(i):
                me, rnd = uid("loopsender%d" % i), random.Random(i)
                try:
                    for k in range(PER_SENDER):
                        to = rnd.choice(users)
                        mid = send(srv.base, me, to, "m %d %d" % (i, k))["message_id"]
                        with lock:
                            sent.append((to, mid, time.monotonic()))
                except Exception as e:  # noqa: BLE001
                    errors.append(e)
            threads = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(SENDERS)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(120)
            assert not errors, "sends failed: %r" % errors[:3]
            assert len(sent) == SENDERS * PER_SENDER, "%d sends of %d" % (len(sent), SENDERS * PER_SENDER)
            last = max(t for _, _, t in sent)

            def missing():
                have = {u: {e.json()["message_id"] for e in s.messages()} for u, s in streams.items()}
                return [(to, mid) for to, mid, _ in sent if mid not in have[to]]
            while missing() and time.monotonic() - last < DEADLINE_S:
                time.sleep(0.1)
            left = missing()
            assert not left, "%d of %d messages not on their stream %d s after the last send: %r" % (
                len(left), len(sent), DEADLINE_S, left[:5])
            dups = sum(len(s.messages()) - len({e.json()["message_id"] for e in s.messages()})
                       for s in streams.values())
            assert dups == 0, "%d messages arrived twice" % dups
            lat = sorted(e.t for s in streams.values() for e in s.messages())
            print("%d messages to %d streams on one loop, all arrived; the last %.2f s after the last 201"
                  % (len(sent), STREAMS, max(0.0, lat[-1] - last)))
        finally:
            for s in streams.values():
                s.close()
