"""chatd nodes killed with SIGKILL, again and again, under traffic."""

import random
import time

from chatlib import chatd, kill_node, start_node, uid
import faultlib
from faultlib import mono, soak
from history import Workload

DURATION_S = soak(30, 300)  # of traffic with kills
USERS = 10                   # each with a device on node1 and one on node2: 20 streams
SENDERS = 4


def test_kill9_nodes_under_traffic():
    """4 senders (two starting on each node) and 20 streams (10 users, a
    device homed on each node) run while a supervisor kills node1 or node2
    (in turn) with SIGKILL every 2-4 s and starts it again. A send whose
    node died under it is retried with its client_msg_id on the other node;
    a stream that ended reconnects with Last-Event-ID (to the other node
    while its own is down). Then: every 201 stored once and received by
    every device of its recipient, in order, nothing unexpected."""
    n1, n2 = chatd(1), chatd(2)
    rnd = random.Random(9)
    w = Workload("kill9", n1)
    users = [uid("k%d" % i) for i in range(USERS)]
    for u in users:
        w.device(u, [n1, n2], name=u + "@node1")
        w.device(u, [n2, n1], name=u + "@node2")
    for i in range(SENDERS):
        w.sender(uid("ks%d" % i), users[i:] + users[:i], [n1, n2] if i % 2 == 0 else [n2, n1],
                 pace=(0.03, 0.08))
    kills = []  # (node, seconds from the kill until it answered again)
    try:
        w.start()
        t_end = mono() + DURATION_S
        victim = 1
        while mono() < t_end:
            time.sleep(rnd.uniform(2.0, 4.0))
            t_kill = mono()
            kill_node(victim)
            time.sleep(rnd.uniform(0.3, 1.0))
            start_node(victim)
            kills.append((victim, mono() - t_kill))
            victim = 3 - victim
        drain_s = w.finish(30)
        rep = w.check()
        print(rep.summary())
        failures = sum(len(d.failures) for d in w.devs)
        print("kills: %d (%s); down then up again in %.1f-%.1f s" % (
            len(kills), " ".join("node%d" % k for k, _ in kills),
            min(t for _, t in kills), max(t for _, t in kills)))
        print("streams: %d reconnects, %d failed opens; drain %.1f s" % (
            rep.stats["reconnects"], failures, drain_s))
        out = rep.stats["outcomes"]
        print("sends: %d answered 201/200; %d attempts broke with the node (unknown), %d refused" % (
            rep.stats["sends"], out.get("unknown", 0), out.get("refused", 0)))
        rep.assert_clean()
        assert len(kills) >= 3, "only %d kills in %d s" % (len(kills), DURATION_S)
        assert rep.stats["reconnects"] >= USERS, "only %d reconnects: did the kills hit the streams?" % (
            rep.stats["reconnects"])
        assert rep.stats["sends"] >= 100, "only %d sends answered" % rep.stats["sends"]
    finally:
        w.close()
        faultlib.restore_stack()


test_kill9_nodes_under_traffic.timeout = DURATION_S + 120
