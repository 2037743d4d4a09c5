"""A chatd node dies: the user's next stream goes to the other node and
replays what the user missed; the node comes back and so do its users."""

import time

from chatlib import (chatd, door, kill_node, metric, node, open_and_locate, send, start_node, stream,
                     uid, via_front, wait_until)


def test_node_death_moves_the_stream_and_replays():
    """bob streams (through the door) from node X; X is killed (SIGKILL, as
    a crash); alice sends two more; bob reconnects as EventSource does
    (Last-Event-ID) through the same door and lands on the other node, which
    replays exactly the two and then goes live. Through a front, REST keeps
    working all along (chat.fcgi), and once X is back bob's streams go to X
    again. The chatd door has no proxy to move bob: he reconnects to the
    other node himself, as a client with two node addresses would."""
    alice, bob = uid("alice"), uid("bob")
    if via_front():
        base = node(1)
        s, x, opened = open_and_locate(base, bob)
        for extra in opened[1:]:
            extra.close()
    else:
        x = 1
        s = stream(chatd(x), bob)
    y = 3 - x
    # Through a front the POSTs go to chat.fcgi, which the node's death does
    # not touch; directly, to the node that stays up.
    post_base = node(1) if via_front() else chatd(y)
    again_base = node(1) if via_front() else chatd(y)
    print("%s: bob's stream is on node%d; killing it" % (door(), x))
    again = None
    try:
        seq1 = s.wait_message_id(send(post_base, alice, bob, "before")["message_id"], timeout=5).seq
        t_kill = time.monotonic()
        kill_node(x)
        s.wait_for(lambda: s.ended, 5, "the stream to end when node%d died" % x)
        print("stream ended %.2f s after the kill" % (time.monotonic() - t_kill))
        missed = [send(post_base, alice, bob, "while node%d is down: %d" % (x, i))["message_id"]
                  for i in range(2)]
        before_y = metric(chatd(y), "chat_streams_open")
        t_again = time.monotonic()
        again = stream(again_base, bob, last_event_id=seq1)
        wait_until(lambda: metric(chatd(y), "chat_streams_open") > before_y, 3,
                   "the new stream to be on node%d" % y)
        evs = again.wait_messages(2, timeout=5)
        print("reconnected to node%d and replayed in %.0f ms" % (y, (time.monotonic() - t_again) * 1000))
        assert [e.json()["message_id"] for e in evs] == missed, "replay %r, want %r" % (evs, missed)
        assert int(evs[0].id) == seq1 + 1, "replay starts at %s, want %d" % (evs[0].id, seq1 + 1)
        # and it is live
        t0 = time.monotonic()
        live = send(post_base, alice, bob, "after the failover")["message_id"]
        ev = again.wait_message_id(live, timeout=5)
        ms = (ev.t - t0) * 1000
        print("live event on node%d %.1f ms after the POST" % (y, ms))
        assert ms < 1000, "the live event took %.0f ms" % ms
        got = [e.json()["message_id"] for e in again.messages()]
        assert got == missed + [live], "the new stream got %r, want %r" % (got, missed + [live])
    finally:
        s.close()
        if again is not None:
            again.close()
        start_node(x)
    if not via_front():
        return
    # Back home: once node X answers again, bob's streams go to it again.
    t_up = time.monotonic()
    where = []

    def home():
        _, n, opened = open_and_locate(base, bob)
        for o in opened:
            o.close()
        where.append(n)
        return n == x
    wait_until(home, 15, "%s to send bob's streams to node%d again (so far: %r)" % (door(), x, where),
               interval=0.5)
    print("node%d has bob's streams again %.1f s after its restart" % (x, time.monotonic() - t_up))


test_node_death_moves_the_stream_and_replays.timeout = 90
