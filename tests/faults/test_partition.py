"""A network partition between a node and Redis, or a node and MariaDB:
the link stays open but nothing moves (tcpproxy.py blackholes it)."""

import os
import threading
import time

from chatlib import chatd, get, token, uid, wait_until
import faultlib
from faultlib import OwnNode, fault_port, ini_value, mono, quiet_counts, readyz, soak
from history import Sender, Workload, fmt_ms, percentile
from tcpproxy import TcpProxy

PARTITION_S = soak(20, 60)  # how long the link is cut
DEGRADED_S = 10.0           # a stream still gets each message within this while Redis is cut off
RECOVER_S = 15.0            # after the heal, the node is ready again within this
FD_SLACK = 8
PROBERS = 4                 # clients sending through the node cut off from MySQL


def _node1_int(key, default):
    return int(ini_value(os.path.join(faultlib.stack_dir(), "node1.ini"), key, default))


def _poll_readyz(base, want, limit):
    """Polls /readyz until want(status, body); returns (seconds it took, or
    None after limit seconds; the last answer)."""
    t0 = mono()
    last = None
    while True:
        try:
            last = readyz(base, timeout=limit + 5)
        except (OSError, AssertionError) as e:
            last = (repr(e), None)
        if want(*last):
            return mono() - t0, last
        if mono() - t0 >= limit:
            return None, last
        time.sleep(0.2)


def test_partition_node_from_redis():
    """A chatd of its own reaches Redis through the proxy; 3 users hold a
    stream on it; a sender on node1 (whose messages reach the node through
    Redis) and one on the node itself write to them. The proxy blackholes
    the link for PARTITION_S: the node's watchdog notices within [redis]
    timeout + 3 s (/readyz 503, redis down); sends on both nodes keep
    getting 201; the node keeps delivering from MySQL (each message within
    DEGRADED_S, before the heal). After the heal the node is ready within
    RECOVER_S and nothing is missing."""
    rport = faultlib.redis_port()
    detect_s = _node1_int("redis.timeout", 3) + 3.0
    proxy = TcpProxy(fault_port(0), rport, name="redis")
    node = OwnNode("fault-predis", fault_port(2), {"redis.port": fault_port(0)})
    n1 = chatd(1)
    w = Workload("partition-redis", n1)
    users = [uid("pr%d" % i) for i in range(3)]
    san = []
    try:
        proxy.start()
        node.start()
        faultlib.wait_ready(node.url, 20)
        for u in users:
            w.device(u, [node.url], name=u + "@own")
        w.sender(uid("prs1"), users, [n1], pace=(0.1, 0.2))
        w.sender(uid("prs2"), users, [node.url], pace=(0.1, 0.2))
        w.start()
        time.sleep(2)
        t_cut = mono()
        proxy.blackhole()
        detect, seen = _poll_readyz(
            node.url, lambda st, j: st == 503 and isinstance(j, dict) and j.get("redis") == "down", detect_s)
        healthz = get(node.url, "/healthz", timeout=3).status
        # Down or not, the partition runs its course, so that the figures
        # tell what the node did meanwhile.
        time.sleep(max(0.0, PARTITION_S - (mono() - t_cut)))
        t_heal = mono()
        proxy.heal()
        recover, seen_after = _poll_readyz(node.url, lambda st, j: st == 200, RECOVER_S)
        time.sleep(2)
        drain_s = w.finish(30)
        rep = w.check()
        print(rep.summary())
        # While cut off (once noticed), the node delivers from MySQL.
        lats, slow = [], []
        for s, _ in w.hist.delivery_latencies(t_cut + (detect or detect_s) + 1.0, t_heal - DEGRADED_S):
            for d in w.devs:
                if d.user != s.recipient:
                    continue
                t = d.event_time(s.message_id)
                lat = None if t is None else max(0.0, t - s.ok.t1)
                if lat is None or lat > DEGRADED_S or t > t_heal:
                    slow.append((d.dname, s.body, s.ok.base, None if lat is None else round(lat, 2)))
                else:
                    lats.append(lat)
        own = [a.t1 - a.t0 for a in w.hist.attempts(t_cut, t_heal) if a.base == node.url]
        print("Redis cut off for %.1f s: %s (bound %.0f s; /readyz %r); %d deliveries due meanwhile, "
              "%d in time: p50 %s, max %s; sends on the cut-off node answered in p50 %s, max %s; "
              "%s after the heal; drain %.1f s" % (
                  t_heal - t_cut, "noticed after %.1f s" % detect if detect is not None else "NOT noticed",
                  detect_s, seen, len(lats) + len(slow), len(lats),
                  fmt_ms(percentile(lats, 50)), fmt_ms(max(lats) if lats else None),
                  fmt_ms(percentile(own, 50)), fmt_ms(max(own) if own else None),
                  "ready %.1f s" % recover if recover is not None else "NOT ready %.0f s" % RECOVER_S, drain_s))
        assert detect is not None, ("the node did not notice within %.0f s that Redis went silent: /readyz "
                                    "still answers %r" % (detect_s, seen))
        assert seen[1].get("mysql") == "up", "/readyz during the Redis partition: %r" % (seen,)
        assert healthz == 200, "/healthz during the Redis partition: %s" % healthz
        assert recover is not None, "not ready %.0f s after the heal: %r" % (RECOVER_S, seen_after)
        bad = [a for a in w.hist.attempts() if a.outcome != "201"]
        assert not bad, "sends during the Redis partition not answered 201: %r" % bad[:5]
        assert not slow, ("while Redis was cut off, %d of %d deliveries did not reach the device within %.0f s "
                          "(device, message, via, seconds or None=not before the heal): %r" % (
                              len(slow), len(slow) + len(lats), DEGRADED_S, slow[:8]))
        rep.assert_clean()
    finally:
        w.close()
        san = node.stop()
        proxy.stop()
        faultlib.restore_stack()
    assert not san, "sanitizer reports in %s:\n%s" % (node.log, "\n".join(san[:20]))


test_partition_node_from_redis.timeout = PARTITION_S + 120


def test_partition_node_from_mysql():
    """A chatd of its own reaches MariaDB through the proxy; 3 users hold a
    stream on it and a sender on node1 writes to them (live events reach the
    node through Redis). The proxy blackholes the link for PARTITION_S: sends
    on the node answer 503 backend_unavailable with Retry-After, each within
    [mysql] read_timeout + connect_timeout + 3 s, never 201; /readyz names
    mysql down within that bound; /healthz stays 200. After the heal the node
    stores again within RECOVER_S without a restart; each send that got 503
    and is retried with its client_msg_id is stored once; the node holds as
    many threads and descriptors as before."""
    mport = int(faultlib.env("CHAT_MYSQL_PORT"))
    bound = _node1_int("mysql.read_timeout", 5) + _node1_int("mysql.connect_timeout", 2) + 3.0
    proxy = TcpProxy(fault_port(1), mport, name="mysql")
    node = OwnNode("fault-pmysql", fault_port(6), {"mysql.host": "127.0.0.1", "mysql.port": fault_port(1)})
    n1 = chatd(1)
    w = Workload("partition-mysql", n1)
    users = [uid("pm%d" % i) for i in range(3)]
    san = []
    try:
        proxy.start()
        node.start()
        faultlib.wait_ready(node.url, 20)
        for u in users:
            w.device(u, [node.url], name=u + "@own")
        w.sender(uid("pms1"), users, [n1], pace=(0.1, 0.2))
        local = Sender(w.hist, uid("pms2"), users, [node.url], resolve_s=PARTITION_S + 60)
        w.start()
        for i in range(24):  # every worker thread opens its MySQL connection
            s = local.send_one(users[i % len(users)])
            assert s.ok, "send on the node before the partition: %r" % s.attempts
        time.sleep(0.5)
        before = quiet_counts(node.pid)
        t_cut = mono()
        proxy.blackhole()
        # During the partition: PROBERS clients send through the node at
        # once (each send recorded, not retried), /healthz is watched, and
        # /readyz asked once.
        probes, health = [], []
        ready = None
        halt = threading.Event()

        def probing(i):
            tok = token(local.user)
            j = 0
            while not halt.is_set():
                s = w.hist.new_send(local.user, users[j % len(users)], 100000 * (i + 1) + j)
                j += 1
                probes.append((s, w.hist.attempt(s, node.url, tok, timeout=bound + 10)))
                halt.wait(0.2)

        def watching():
            while not halt.is_set():
                t0 = mono()
                try:
                    st = get(node.url, "/healthz", timeout=bound + 10).status
                except (OSError, AssertionError) as e:
                    st = repr(e)
                health.append((st, mono() - t0))
                halt.wait(0.5)
        ths = [threading.Thread(target=probing, args=(i,), daemon=True) for i in range(PROBERS)]
        ths.append(threading.Thread(target=watching, daemon=True))
        for t in ths:
            t.start()
        time.sleep(1)
        t0 = mono()
        st, j = readyz(node.url, timeout=bound + 10)
        ready = (st, j, mono() - t_cut, mono() - t0)
        time.sleep(max(0.0, PARTITION_S - (mono() - t_cut)))
        halt.set()
        for t in ths:
            t.join(bound + 15)
        t_heal = mono()
        proxy.heal()

        def stored():
            s = w.hist.new_send(local.user, users[local.k % len(users)], local.k)
            local.k += 1
            return w.hist.attempt(s, node.url, local.tok).outcome == "201"
        wait_until(stored, RECOVER_S, "the node to store a send again after the heal", interval=0.2)
        recover = mono() - t_heal
        faultlib.wait_ready(node.url, RECOVER_S)
        for s, _ in probes:
            if not s.ok:
                local._resolve(s)
        time.sleep(1)
        w.stop_senders()
        drain_s = w.drain(30)
        wait_until(lambda: all(d.open_now() for d in w.devs), 10, "every device to have a stream open")
        for i in range(24):
            local.send_one(users[i % len(users)])
        time.sleep(0.5)
        after = quiet_counts(node.pid)
        w.stop_devices()
        rep = w.check()
        print(rep.summary())
        times = [a.t1 - a.t0 for _, a in probes]
        htimes = [t for _, t in health]
        live = [x for _, x in w.hist.delivery_latencies(t_cut, t_heal)]
        print("MySQL cut off for %.1f s, %d clients sending through the node: %d sends: %s; answered in "
              "p50 %s, max %s (bound %.0f s); /healthz %d times: %s, in p50 %s, max %s; node1's messages "
              "to the node's streams meanwhile: %d, delivered in p50 %s, max %s" % (
                  t_heal - t_cut, PROBERS, len(probes),
                  ", ".join("%s %d" % (o, sum(1 for _, a in probes if a.outcome == o))
                            for o in sorted({a.outcome for _, a in probes})),
                  fmt_ms(percentile(times, 50)), fmt_ms(max(times) if times else None), bound,
                  len(health), ", ".join("%s %d" % (o, sum(1 for x, _ in health if str(x) == o))
                                         for o in sorted({str(x) for x, _ in health})),
                  fmt_ms(percentile(htimes, 50)), fmt_ms(max(htimes) if htimes else None),
                  len(live), fmt_ms(percentile([x for x in live if x is not None], 50)),
                  fmt_ms(max([x for x in live if x is not None], default=None))))
        print("/readyz %s %r after %.1f s (answered in %s); stores again %.1f s after the heal; "
              "threads %d -> %d, fds %d -> %d; drain %.1f s" % (
                  ready and ready[0], ready and ready[1], ready and ready[2], fmt_ms(ready and ready[3]),
                  recover, before[0], after[0], before[1], after[1], drain_s))
        assert probes, "no send during the partition"
        bad = [a for _, a in probes if a.outcome == "201"]
        assert not bad, "sends answered 201 while MySQL was cut off: %r" % bad[:5]
        bad = [a for _, a in probes if a.status != 503 or a.error_code != "backend_unavailable"
               or not a.retry_after or a.t1 - a.t0 > bound]
        assert not bad, ("%d of %d sends during the MySQL partition were not a 503 backend_unavailable with "
                         "Retry-After within %.0f s: %r" % (len(bad), len(probes), bound, bad[:5]))
        assert ready is not None and ready[0] == 503 and isinstance(ready[1], dict) \
            and ready[1].get("mysql") == "down" and ready[3] <= bound, \
            "/readyz during the MySQL partition: %r (want 503 mysql down within %.0f s)" % (ready, bound)
        bad = [(x, round(t, 2)) for x, t in health if x != 200 or t > bound]
        assert health and not bad, "/healthz during the MySQL partition: %r (want 200 within %.0f s)" % (
            bad[:8], bound)
        rep.assert_clean()
        assert after[0] <= before[0], "threads %d before the partition, %d after" % (before[0], after[0])
        assert after[1] <= before[1] + FD_SLACK, "descriptors %d before the partition, %d after" % (
            before[1], after[1])
    finally:
        w.close()
        san = node.stop()
        proxy.stop()
        faultlib.restore_stack()
    assert not san, "sanitizer reports in %s:\n%s" % (node.log, "\n".join(san[:20]))


test_partition_node_from_mysql.timeout = PARTITION_S + 150
