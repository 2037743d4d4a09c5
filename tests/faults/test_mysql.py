"""MariaDB goes away: killed and started again under traffic; and a
connection lost in the middle of a COMMIT."""

import time

from chatlib import chatd, get, post, token, uid, wait_until
import faultlib
from faultlib import OwnNode, fault_port, mono, node_pid, quiet_counts, readyz, soak
from history import Sender, Workload, fmt_ms, percentile
from tcpproxy import TcpProxy

DOWN_S = soak(8, 30)   # MariaDB stays down this long
FAST_503_S = 6.0       # a send answers 503 within this while MariaDB is down (read_timeout 5 s + margin)
RECOVER_S = 20.0       # after MariaDB answers again, the nodes store sends again within this
FD_SLACK = 8           # descriptors a node may hold more after the outage (HTTP connections in flight)


def _warm(base, n=24):
    """Sends on every worker thread of a node, so each holds its MySQL
    connection (they are opened on first use)."""
    u, to = uid("warm"), uid("warmto")
    tok = token(u)
    for i in range(n):
        r = post(base, "/v1/messages", {"to": to, "body": "warm %d" % i}, token=tok, timeout=15)
        assert r.status == 201, "warm-up send on %s: %s %r" % (base, r.status, r.body[:200])


def test_mysql_killed_and_restarted():
    """MariaDB is killed (SIGKILL) while two senders (one on each node) write
    to 4 users with a stream on each node. While it is down: every send on
    either node answers 503 backend_unavailable with Retry-After, within
    FAST_503_S; /readyz is 503 and names mysql (down) and redis (up);
    /healthz stays 200. MariaDB is started again: both nodes store sends
    again within RECOVER_S without being restarted (same pids), /readyz is
    200; a send that got 503 and is retried with its client_msg_id is
    stored once; nothing answered 201 is lost. Threads and descriptors of
    each node (/proc/PID/task, /proc/PID/fd) are the same before and after."""
    n1, n2 = chatd(1), chatd(2)
    bases = {1: n1, 2: n2}
    w = Workload("mysql-kill", n1)
    users = [uid("mk%d" % i) for i in range(4)]
    for u in users:
        w.device(u, [n1, n2], name=u + "@node1")
        w.device(u, [n2, n1], name=u + "@node2")
    w.sender(uid("ms1"), users, [n1], pace=(0.03, 0.08), resolve_s=RECOVER_S + DOWN_S + 30)
    w.sender(uid("ms2"), users[2:] + users[:2], [n2], pace=(0.03, 0.08), resolve_s=RECOVER_S + DOWN_S + 30)
    # Probes, one send at a time on a node, not retried: their answers are
    # the figures. An offline recipient: only its storage is checked.
    probe_to = uid("mkoff")
    probers = {n: Sender(w.hist, uid("mp%d" % n), [probe_to], [bases[n]]) for n in (1, 2)}
    pids = {n: node_pid(n) for n in (1, 2)}
    before, after = {}, {}
    probes = {1: [], 2: []}
    killed = False
    try:
        w.start_devices()
        for n in (1, 2):
            _warm(bases[n])
            readyz(bases[n])
        time.sleep(0.5)
        for n in (1, 2):
            before[n] = quiet_counts(pids[n])
        for s in w.senders:
            s.start()
        time.sleep(2)
        t_kill = mono()
        faultlib.kill_mysql()
        killed = True
        t_gone = mono()
        # While MariaDB is down.
        ready_seen = {}
        while mono() - t_gone < DOWN_S:
            for n in (1, 2):
                s = probers[n].hist.new_send(probers[n].user, probe_to, probers[n].k)
                probers[n].k += 1
                a = w.hist.attempt(s, bases[n], probers[n].tok)
                probes[n].append((s, a))
                if n not in ready_seen:
                    t0 = mono()
                    st, j = readyz(bases[n])
                    ready_seen[n] = (st, j, mono() - t0)
                    assert get(bases[n], "/healthz", timeout=3).status == 200, "node%d /healthz with MariaDB down" % n
            time.sleep(0.3)
        faultlib.start_mysql()
        t_up = mono()
        killed = False
        # Recovery: each node stores a send again, without a restart.
        recovered = {}
        for n in (1, 2):
            def stored():
                s = probers[n].hist.new_send(probers[n].user, probe_to, probers[n].k)
                probers[n].k += 1
                a = w.hist.attempt(s, bases[n], probers[n].tok)
                return a.outcome == "201"
            wait_until(stored, RECOVER_S, "node%d to store a send again after MariaDB came back" % n,
                       interval=0.2)
            recovered[n] = mono() - t_up
            faultlib.wait_ready(bases[n], RECOVER_S)
        time.sleep(2)
        w.stop_senders()
        # The probes that got a 503 are retried: each ends as one row.
        for n in (1, 2):
            for s, _ in probes[n]:
                if not s.ok:
                    probers[n]._resolve(s)
        drain_s = w.drain(30)
        wait_until(lambda: all(d.open_now() for d in w.devs), 10, "every device to have a stream open")
        for n in (1, 2):
            _warm(bases[n])
        time.sleep(0.5)
        for n in (1, 2):
            after[n] = quiet_counts(pids[n])
        w.stop_devices()
        rep = w.check()
        print(rep.summary())
        for n in (1, 2):
            during = [a for _, a in probes[n]]
            times = [a.t1 - a.t0 for a in during]
            print("node%d with MariaDB down: %d probe sends: %s; answered in p50 %s, max %s; "
                  "/readyz %s %s in %s; stores again %.1f s after MariaDB is back; "
                  "threads %d -> %d, fds %d -> %d" % (
                      n, len(during), ", ".join("%s %d" % (o, sum(1 for a in during if a.outcome == o))
                                                for o in sorted({a.outcome for a in during})),
                      fmt_ms(percentile(times, 50)), fmt_ms(max(times) if times else None),
                      ready_seen[n][0], ready_seen[n][1], fmt_ms(ready_seen[n][2]), recovered[n],
                      before[n][0], after[n][0], before[n][1], after[n][1]))
        print("MariaDB down %.1f s (killed, then crash recovery); drain %.1f s" % (t_up - t_kill, drain_s))
        for n in (1, 2):
            assert node_pid(n) == pids[n], "node%d was restarted (pid %s -> %s)" % (n, pids[n], node_pid(n))
            bad = [a for _, a in probes[n] if a.status != 503 or a.error_code != "backend_unavailable"
                   or not a.retry_after or a.t1 - a.t0 > FAST_503_S]
            assert not bad, ("node%d with MariaDB down: %d of %d sends were not a 503 backend_unavailable "
                             "with Retry-After within %.0f s: %r" % (n, len(bad), len(probes[n]), FAST_503_S,
                                                                    bad[:5]))
            st, j, _ = ready_seen[n]
            assert st == 503 and isinstance(j, dict) and j.get("mysql") == "down" and j.get("redis") == "up", \
                "node%d /readyz with MariaDB down: %s %r" % (n, st, j)
            assert "mysql" in (j.get("error") or {}).get("message", ""), "node%d /readyz message: %r" % (n, j)
        rep.assert_clean()
        for n in (1, 2):
            assert after[n][0] <= before[n][0], "node%d threads %d before the outage, %d after" % (
                n, before[n][0], after[n][0])
            assert after[n][1] <= before[n][1] + FD_SLACK, "node%d descriptors %d before the outage, %d after" % (
                n, before[n][1], after[n][1])
    finally:
        w.close()
        if killed:
            faultlib.start_mysql()
        faultlib.restore_stack()


test_mysql_killed_and_restarted.timeout = DOWN_S + 150


def test_lost_commit_never_answers_201():
    """A chatd of its own reaches MariaDB through a proxy that cuts the
    connection at a COMMIT: "after" (the COMMIT is forwarded and the
    connection dropped when its answer comes: the row is committed, the node
    never hears it) and "before" (dropped instead of forwarded: rolled
    back), three times each. Each such send answers 503
    backend_unavailable with Retry-After, never 201; its retry with the
    same client_msg_id answers 200 with the stored message_id ("after") or
    201 ("before"), a further repeat 200 with the same id; each send is
    stored exactly once."""
    proxy = TcpProxy(fault_port(3), int(faultlib.env("CHAT_MYSQL_PORT")), name="mysql", mysql=True)
    node = OwnNode("fault-commit", fault_port(4), {"mysql.host": "127.0.0.1", "mysql.port": fault_port(3)})
    w = Workload("lost-commit", chatd(1))
    bob = uid("lcbob")
    alice = Sender(w.hist, uid("lcalice"), [bob], [node.url])
    cases = []
    san = []
    try:
        proxy.start()
        node.start()
        for i, mode in enumerate(["after", "before"] * 3):
            ok = alice.send_one(bob)  # an ordinary send in between: 201
            assert ok.ok and ok.ok.outcome == "201", "plain send through the proxy: %r" % ok.attempts
            cuts = len(proxy.cuts)
            proxy.cut_at_commit(mode)
            s = w.hist.new_send(alice.user, bob, alice.k)
            alice.k += 1
            a = w.hist.attempt(s, node.url, alice.tok)
            proxy.disarm()
            assert len(proxy.cuts) == cuts + 1 and proxy.cuts[-1][0] == mode, \
                "the proxy saw no COMMIT to cut (%s) during %r" % (mode, a)
            assert a.outcome != "201", "a connection lost %s COMMIT answered 201: %r" % (
                "after forwarding" if mode == "after" else "before forwarding", a)
            assert a.status == 503 and a.error_code == "backend_unavailable" and a.retry_after, \
                "a connection lost during COMMIT (%s): want 503 backend_unavailable with Retry-After, got %r" % (
                    mode, a)
            b = w.hist.attempt(s, node.url, alice.tok)
            want = "200" if mode == "after" else "201"
            assert b.outcome == want, "retry after a COMMIT lost %s it: want %s, got %r" % (
                "after the server committed" if mode == "after" else "before it reached the server", want, b)
            c = w.hist.attempt(s, node.url, alice.tok)
            assert c.outcome == "200" and c.message_id == b.message_id, \
                "a further repeat: want 200 with %s, got %r" % (b.message_id, c)
            cases.append((mode, a.t1 - a.t0))
        rep = w.check(users=[bob])
        print(rep.summary())
        print("cuts at COMMIT: %s; each answered 503 in %s" % (
            " ".join(m for m, _ in cases), ", ".join(fmt_ms(t) for _, t in cases)))
        rep.assert_clean()
    finally:
        san = node.stop()
        proxy.stop()
        faultlib.restore_stack()
    assert not san, "sanitizer reports in %s:\n%s" % (node.log, "\n".join(san[:20]))


test_lost_commit_never_answers_201.timeout = 90
