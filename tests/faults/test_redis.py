"""Redis goes away: stopped and started again mid-traffic, down for long,
and a node's subscriber dropped by Redis for a full output buffer."""

import os
import signal
import time

from chatlib import chatd, get, metric, uid, wait_until
import faultlib
from faultlib import mono, node_pid, readyz, soak
from history import Sender, Workload, fmt_ms, percentile

CYCLES = soak(3, 10)        # Redis stopped and started again this many times
CYCLE_DOWN_S = 3.0          # each time down this long
LONG_DOWN_S = soak(25, 60)  # the long outage
DEGRADED_S = 10.0           # while Redis is down, a live stream gets a message within this
READY_AFTER_S = 20.0        # after Redis is back, /readyz is 200 again within this
PROBE_S = 5.0               # a message sent once Redis is back reaches every device within this


def _all_201(hist, what):
    bad = [a for a in hist.attempts() if a.outcome != "201"]
    assert not bad, "%s: %d send attempts were not answered 201, e.g. %r" % (what, len(bad), bad[:5])


def _device_latencies(w, since, until):
    """For each device, [(seconds from a 201 in [since, until] to the event on
    that device, or None)]; and the event times."""
    out = {}
    with w.hist.lock:
        sends = [s for s in w.hist.sends if s.ok and since <= s.ok.t1 <= until]
    for d in w.devs:
        at = {}
        for c in d.connections():
            for ev in c.events:
                if ev.message_id not in at:
                    at[ev.message_id] = ev.t
        out[d] = [(s, at.get(s.message_id)) for s in sends if s.recipient == d.user]
    return out


def test_redis_restarts_mid_traffic():
    """Two senders (one on each node) and 9 devices (4 users with a stream on
    each node, one of them also long-polling) while Redis is stopped (in
    turn SHUTDOWN NOSAVE and SIGKILL) for 3 s and started again, 3 times.
    Every send is answered 201, also while Redis is down; streams stay open
    or reconnect; everything sent meanwhile arrives; /readyz is 200 again
    soon after each restart."""
    n1, n2 = chatd(1), chatd(2)
    w = Workload("redis-restarts", n1)
    users = [uid("rr%d" % i) for i in range(4)]
    for u in users:
        w.device(u, [n1, n2], name=u + "@node1")
        w.device(u, [n2, n1], name=u + "@node2")
    w.poller(users[0], [n2, n1], name=users[0] + "@poll")
    w.sender(uid("rs1"), users, [n1], pace=(0.03, 0.08))
    w.sender(uid("rs2"), users[1:] + users[:1], [n2], pace=(0.03, 0.08))
    probers = [Sender(w.hist, uid("rp1"), users, [n1]), Sender(w.hist, uid("rp2"), users, [n2])]
    outages = []  # (how, t_down, t_up, t_ready)
    missed = []  # probes that did not arrive within PROBE_S: (device, send, seconds or None)
    try:
        w.start()
        time.sleep(2)
        for c in range(CYCLES):
            how = "shutdown" if c % 2 == 0 else "kill"
            t_down = mono()
            faultlib.stop_redis(how)
            time.sleep(CYCLE_DOWN_S)
            faultlib.start_redis()
            t_up = mono()
            for base in (n1, n2):
                faultlib.wait_ready(base, READY_AFTER_S, "%s/readyz to be 200 again after Redis came back" % base)
            t_ready = mono()
            # Right after Redis is back, with the senders paused (so that no
            # later message pushes an earlier one along): one message from
            # each node to each user reaches every device of that user.
            w.pause_senders()
            for p in probers:
                missed += [x for x in w.probe(p, users, PROBE_S) if x[2] is None or x[2] > PROBE_S]
            w.resume_senders()
            outages.append((how, t_down, t_up, t_ready))
            time.sleep(2)
        drain_s = w.finish(30)
        rep = w.check()
        print(rep.summary())
        for how, t_down, t_up, t_ready in outages:
            lat = [x for _, x in w.hist.delivery_latencies(t_down, t_up)]
            late = [x for x in lat if x is not None]
            print("redis %s: down %.1f s; %d sends answered 201 meanwhile, delivered after their 201 in "
                  "p50 %s, max %s; /readyz 200 %.1f s after the restart" % (
                      how, t_up - t_down, len(lat), fmt_ms(percentile(late, 50)),
                      fmt_ms(max(late) if late else None), t_ready - t_up))
        print("streams: %d reconnects; drain %.1f s" % (rep.stats["reconnects"], drain_s))
        _all_201(w.hist, "sends while Redis restarts")
        assert not missed, ("right after Redis came back, %d messages did not reach a device within %.0f s "
                            "(device, send, seconds or None=not in time): %r" % (
                                len(missed), PROBE_S, [(d, "%s via %s" % (s.body, s.ok and s.ok.base), t)
                                                       for d, s, t in missed[:8]]))
        rep.assert_clean()
        during = sum(len(w.hist.delivery_latencies(t_down, t_up)) for _, t_down, t_up, _ in outages)
        assert during >= CYCLES * 5, "only %d sends answered while Redis was down" % during
    finally:
        w.close()
        faultlib.restore_stack()


test_redis_restarts_mid_traffic.timeout = 60 + CYCLES * 40


def test_redis_down_for_long():
    """Redis is down for 25 s (60 s with CHAT_SOAK=1) while two senders
    (one on each node) write to 3 users with a stream on each node and a
    4th user long-polling. The nodes keep delivering by reading MySQL for
    the users they hold: every message answered 201 during the outage
    reaches every device within DEGRADED_S, before Redis is back; /readyz
    says 503 redis down (mysql up) and /healthz stays 200; a stream opened
    in the middle of the outage replays and goes on live. After Redis is
    back, /readyz is 200 and nothing is missing."""
    n1, n2 = chatd(1), chatd(2)
    w = Workload("redis-down", n1)
    users = [uid("rd%d" % i) for i in range(3)]
    for u in users:
        w.device(u, [n1, n2], name=u + "@node1")
        w.device(u, [n2, n1], name=u + "@node2")
    polled = uid("rdpoll")
    w.poller(polled, [n2, n1], name=polled + "@poll")
    w.sender(uid("rs1"), users + [polled], [n1], pace=(0.1, 0.2))
    w.sender(uid("rs2"), [polled] + users, [n2], pace=(0.1, 0.2))
    probers = [Sender(w.hist, uid("rp1"), users, [n1]), Sender(w.hist, uid("rp2"), users, [n2])]
    try:
        w.start()
        time.sleep(2)
        t_down = mono()
        faultlib.stop_redis("shutdown")
        # What the nodes say while Redis is down.
        time.sleep(3)
        for base in (n1, n2):
            st, j = readyz(base)
            assert st == 503 and isinstance(j, dict), "%s/readyz with Redis down: %s %r" % (base, st, j)
            assert j.get("redis") == "down" and j.get("mysql") == "up", \
                "%s/readyz should name redis (down) and mysql (up): %r" % (base, j)
            assert "redis" in (j.get("error") or {}).get("message", ""), "%s/readyz message: %r" % (base, j)
            assert get(base, "/healthz", timeout=3).status == 200, "%s/healthz with Redis down" % base
        # A device that comes in the middle of the outage.
        time.sleep(max(0.0, LONG_DOWN_S / 2 - (mono() - t_down)))
        late = w.device(users[0], [n2, n1], name=users[0] + "@late")
        w.start_devices(timeout=10)
        t_late = mono()
        time.sleep(max(0.0, LONG_DOWN_S - (mono() - t_down)))
        faultlib.start_redis()
        t_up = mono()
        for base in (n1, n2):
            faultlib.wait_ready(base, READY_AFTER_S, "%s/readyz to be 200 again after Redis came back" % base)
        t_ready = mono()
        # As after a short restart: a message from each node, senders
        # paused, reaches every device.
        w.pause_senders()
        missed = []
        for p in probers:
            missed += [x for x in w.probe(p, users + [polled], PROBE_S) if x[2] is None or x[2] > PROBE_S]
        w.resume_senders()
        time.sleep(2)
        drain_s = w.finish(30)
        rep = w.check()
        print(rep.summary())
        # Degraded delivery: what was answered 201 while Redis was down
        # (and early enough to be due before it came back) reached every
        # device before Redis came back, each within DEGRADED_S.
        per_dev = _device_latencies(w, t_down + 1.0, t_up - DEGRADED_S)
        lats, slow = [], []
        for d, pairs in per_dev.items():
            for s, t in pairs:
                if d is late and s.ok.t1 < t_late:
                    continue  # sent before this device existed: its replay
                lat = None if t is None else max(0.0, t - s.ok.t1)
                if lat is None or lat > DEGRADED_S or t > t_up:
                    slow.append((d.dname, s.body, None if lat is None else round(lat, 2)))
                else:
                    lats.append(lat)
        print("redis down %.1f s: %d deliveries due during the outage, %d in time: p50 %s, p99 %s, "
              "max %s; /readyz 200 %.1f s after the restart; %d reconnects; drain %.1f s" % (
                  t_up - t_down, len(lats) + len(slow), len(lats), fmt_ms(percentile(lats, 50)),
                  fmt_ms(percentile(lats, 99)), fmt_ms(max(lats) if lats else None), t_ready - t_up,
                  rep.stats["reconnects"], drain_s))
        _all_201(w.hist, "sends while Redis is down")
        assert not slow, ("while Redis was down, %d of %d deliveries did not reach the device within "
                          "%.0f s (device, message, seconds or None=not before Redis came back): %r" % (
                              len(slow), len(slow) + len(lats), DEGRADED_S, slow[:8]))
        assert lats, "no send was due during the outage"
        assert not missed, ("right after Redis came back, %d messages did not reach a device within %.0f s "
                            "(device, send, seconds or None=not in time): %r" % (
                                len(missed), PROBE_S, [(d, "%s via %s" % (s.body, s.ok and s.ok.base), t)
                                                       for d, s, t in missed[:8]]))
        rep.assert_clean()
    finally:
        w.close()
        faultlib.restore_stack()


test_redis_down_for_long.timeout = LONG_DOWN_S + 110


def _client_list():
    out = []
    for line in faultlib.redis("CLIENT", "LIST").splitlines():
        kv = dict(p.split("=", 1) for p in line.split() if "=" in p)
        out.append(kv)
    return out


def _subscribers_of(pid):
    """CLIENT LIST entries of the Pub/Sub connections process pid holds."""
    ports = {lp for lp, rp, st in faultlib.process_tcp(pid) if rp == faultlib.redis_port()}
    return [c for c in _client_list()
            if int(c.get("addr", ":0").rsplit(":", 1)[1]) in ports
            and (int(c.get("sub", 0)) > 0 or int(c.get("psub", 0)) > 0)]


def test_subscriber_dropped_for_output_buffer():
    """node2 holds the streams of 3 users (bases: node2 only) while a sender
    on node1 writes to them. The pubsub client-output-buffer-limit is set
    low (hard 64 KiB), node2 is paused (SIGSTOP) and the users' channels
    get a flood, so that Redis drops node2's subscriber; the sender goes on
    meanwhile. After SIGCONT node2 notices, subscribes again
    (chat_bus_reconnects_total grows, a new subscriber shows in CLIENT LIST)
    and catches up: the streams that stayed open get everything, without
    any reconnect of theirs."""
    n1, n2 = chatd(1), chatd(2)
    saved = faultlib.redis("CONFIG", "GET", "client-output-buffer-limit")[1]
    w = Workload("pubsub-drop", n1)
    users = [uid("pd%d" % i) for i in range(3)]
    for u in users:
        w.device(u, [n2], name=u + "@node2")
    w.sender(uid("ps"), users, [n1], pace=(0.02, 0.05))
    pid2 = node_pid(2)
    stopped = False
    try:
        w.start()
        time.sleep(1.5)
        reconnects0 = metric(n2, "chat_bus_reconnects_total")
        subs = _subscribers_of(pid2)
        assert subs, "no Pub/Sub connection of node2 (pid %d) in CLIENT LIST" % pid2
        sub_ids = {c["id"] for c in subs}
        faultlib.redis("CONFIG", "SET", "client-output-buffer-limit", "pubsub 65536 32768 1")
        os.kill(pid2, signal.SIGSTOP)
        stopped = True
        t_stop = mono()
        prefix = faultlib.ini_value(os.path.join(faultlib.stack_dir(), "node2.ini"), "redis.channel_prefix")
        pad = '{"t":"pad","x":"%s"}' % ("p" * 16384)
        dropped = False
        for _ in range(8):
            faultlib.redis_pipeline([("PUBLISH", "%s:user:%s" % (prefix, u), pad) for u in users for _ in range(100)])
            if not sub_ids & {c["id"] for c in _client_list()}:
                dropped = True
                break
            time.sleep(0.3)
        t_drop = mono()
        assert dropped, "Redis kept node2's subscriber %s after %.0f MB of publishes" % (
            sub_ids, 8 * 300 * 16384 / 1e6)
        time.sleep(2)  # the sender goes on: publishes that node2 cannot get
        faultlib.redis("CONFIG", "SET", "client-output-buffer-limit", saved)
        t_cont = mono()
        os.kill(pid2, signal.SIGCONT)
        stopped = False
        wait_until(lambda: metric(n2, "chat_bus_reconnects_total") > reconnects0, 15,
                                    "node2 to notice its subscriber was dropped and reconnect")
        t_noticed = mono()
        wait_until(lambda: _subscribers_of(pid2), 10, "node2 to subscribe again")
        t_resub = mono()
        time.sleep(2)
        w.stop_senders()
        drain_s = w.drain(20)
        sent_in_pause = [s for s, _ in w.hist.delivery_latencies(t_stop, t_cont)]
        got = w.hist.first_delivery()
        catchup = [got[s.message_id] - t_cont for s in sent_in_pause if s.message_id in got]
        w.stop_devices()
        rep = w.check()
        print(rep.summary())
        print("node2 paused %.1f s; Redis dropped its subscriber %.1f s after the pause; after SIGCONT "
              "the node reconnected in %.2f s, was subscribed again in %.2f s; the %d messages sent "
              "during the pause reached the streams %s after SIGCONT (max); drain %.1f s" % (
                  t_cont - t_stop, t_drop - t_stop, t_noticed - t_cont, t_resub - t_cont,
                  len(sent_in_pause), fmt_ms(max(catchup) if catchup else None), drain_s))
        rep.assert_clean()
        assert len(sent_in_pause) >= 10, "only %d sends during the pause" % len(sent_in_pause)
        reconnected = [d.dname for d in w.devs if len(d.connections()) != 1]
        assert not reconnected, "streams had to reconnect to get their messages: %s" % reconnected
    finally:
        if stopped:
            os.kill(pid2, signal.SIGCONT)
        w.close()
        try:
            faultlib.redis("CONFIG", "SET", "client-output-buffer-limit", saved)
        except (OSError, faultlib.RedisError):
            pass
        faultlib.restore_stack()


test_subscriber_dropped_for_output_buffer.timeout = 120
