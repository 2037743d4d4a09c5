#!/usr/bin/env python3
"""The table of ./chatstack bench, from the raw figures run.sh collected.

    report.py RESULTS.tsv META [key=value...]

RESULTS.tsv has one figure a line: scenario, system, run, key, value.
Each cell is the median of the runs with their range in brackets; the ratio
is ours over the yardstick, of the medians. Exits 1 when a figure that
should be there is missing or a run lost messages, not when a target is
missed: a benchmark is not a test."""

import collections
import statistics
import sys


def load(path):
    data = collections.defaultdict(list)
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5:
                continue
            scen, system, run, key, value = parts
            try:
                data[(scen, system, key)].append(float(value))
            except ValueError:
                data[(scen, system, key + ":text")].append(value)
    return data


def fmt_num(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return "{:,.0f}".format(v)
    if a >= 100:
        return "%.0f" % v
    if a >= 10:
        return "%.1f" % v
    return "%.2f" % v


def cell(vals):
    if not vals:
        return "-", None
    med = statistics.median(vals)
    if len(vals) == 1:
        return fmt_num(med), med
    return "%s [%s-%s]" % (fmt_num(med), fmt_num(min(vals)), fmt_num(max(vals))), med


def main():
    data = load(sys.argv[1])
    with open(sys.argv[2]) as f:
        meta = f.read().rstrip("\n")
    opts = dict(a.split("=", 1) for a in sys.argv[3:])
    smoke = opts.get("smoke") == "1"
    systems = sorted({k[1] for k in data})
    have_mem = "nchanmem" in systems
    problems = []

    def get(scen, system, key):
        return data.get((scen, system, key), [])

    rows = []  # (figure, ours, yardstick, memory, ratio, target, met)

    def row(label, scen, key, ours="ours", yard="nchan", target="", test=None, mem=True,
            yard_from=None):
        # yard_from: (scenario, key) of the yardstick when it is another figure
        ys, yk = yard_from or (scen, key)
        o, om = cell(get(scen, ours, key))
        y, ym = cell(get(ys, yard, yk))
        m = cell(get(ys, "nchanmem", yk))[0] if (have_mem and mem) else ""
        ratio = ""
        if om is not None and ym:
            ratio = "%.2f" % (om / ym)
        met = ""
        if test and om is not None and (ym is not None or yard is None):
            met = "yes" if test(om, ym) else "NO"
        rows.append((label, o, y, m, ratio, target, met))

    n = int(float(opts.get("idle_n", "0")))
    if any(k[0] == "idle" for k in data):
        row("idle: memory per stream, KiB", "idle", "kib_per_stream",
            target="<= 1/3 of Nchan, <= 4", test=lambda o, y: o <= 4 and (y is None or o <= y / 3),
            mem=False)
        row("idle: CPU while idle, % of a core", "idle", "idle_cpu_pct", target="~0",
            test=lambda o, y: o < 1.0, mem=False)
        row("idle: time to open %s streams, s" % "{:,}".format(n), "idle", "open_s", mem=False)
    if any(k[0] == "oneone" for k in data):
        row("1:1 durable: delivered msgs/s", "oneone", "delivered_rate", target=">= 2x Nchan",
            test=lambda o, y: y is not None and o >= 2 * y)
        row("1:1: POST-to-event p50, ms", "oneone", "p50_ms")
        row("1:1: POST-to-event p99, ms", "oneone", "p99_ms")
    if any(k[0] == "fixed" for k in data):
        rate = "{:,}".format(int(float(opts.get("fix_rate", "0"))))
        row("%s msgs/s: rate reached" % rate, "fixed", "delivered_rate", mem=False)
        row("%s msgs/s: POST-to-event p50, ms" % rate, "fixed", "p50_ms", mem=False)
        row("%s msgs/s: POST-to-event p99, ms" % rate, "fixed", "p99_ms", mem=False,
            target="lower than Nchan", test=lambda o, y: y is not None and o < y)
        row("%s msgs/s: POST-to-event p99.9, ms" % rate, "fixed", "p999_ms", mem=False)
    if any(k[0] == "fanout" for k in data):
        fan = "{:,}".format(int(float(opts.get("fan_users", "0"))))
        row("fan-out (%s members): events/s" % fan, "fanout", "events_per_s",
            target=">= Nchan", test=lambda o, y: y is not None and o >= y)
        row("fan-out: POST to the last member, ms", "fanout", "last_member_ms")
    if any(k[0] == "fcgi" for k in data):
        row("REST sends/s: chat.fcgi (lighttpd) | chatd", "fcgi", "sends_per_s", ours="fcgi",
            yard="chatd", target=">= 50% of chatd", test=lambda o, y: y is not None and o >= y / 2,
            mem=False)

    if any(k[0] == "store" for k in data):
        # The durable path alone against Nchan's delivered 1:1 rate: what
        # the 1:1 target would need of it (2x) whatever HTTP and Redis cost.
        row("store alone (no HTTP, Redis): msgs/s", "store", "stored_rate",
            target="ceiling of 1:1", yard_from=("oneone", "delivered_rate"), mem=False)
        row("store alone: sends per transaction", "store", "per_batch", mem=False)
        row("store alone: group events/s (%s members)" % "{:,}".format(
            int(float(opts.get("fan_users", "0")))), "store", "group_rows_rate",
            target="ceiling of fan-out", yard_from=("fanout", "events_per_s"), mem=False)

    # Were all messages stored, delivered and (ours) marked DELIVERED?
    checks = []
    for scen in ("oneone", "fixed", "fanout", "store"):
        for system in systems:
            runs = get(scen, system, "missing")
            if scen == "store" and get(scen, system, "ok"):
                runs = [0]  # nothing is delivered there, only stored and ACKed
            if not runs and not get(scen, system, "aborted:text"):
                continue
            failed = sum(get(scen, system, "failed"))
            missing = sum(runs)
            aborted = [a for a in get(scen, system, "aborted:text") if a != "no"]
            note = []
            ok = sum(get(scen, system, "ok"))
            if scen != "fanout" and ok:
                note.append("%s sent, %d not stored" % ("{:,}".format(int(ok)), failed))
            elif failed:
                note.append("%d sends failed" % failed)
            if scen != "store":
                note.append("%d deliveries missing" % missing)
            if system == "ours" and scen != "fanout":
                rows_ = sum(get(scen, system, "rows"))
                stored = sum(get(scen, system, "stored"))
                pending = sum(get(scen, system, "pending"))
                note.append("%s stored, %s inbox rows, %d still PENDING"
                            % ("{:,}".format(int(stored)), "{:,}".format(int(rows_)), pending))
                if pending or stored != ok or rows_ != ok:
                    problems.append("%s/%s: rows not all DELIVERED" % (scen, system))
            if scen == "store" and get(scen, system, "group_rows"):
                g_rows = sum(get(scen, system, "group_rows"))
                g_acked = sum(get(scen, system, "group_acked"))
                g_pending = sum(get(scen, system, "group_pending"))
                g_failed = sum(get(scen, system, "group_failed"))
                note.append("group: %s inbox rows, %s ACKed, %d still PENDING, %d failed"
                            % ("{:,}".format(int(g_rows)), "{:,}".format(int(g_acked)),
                               g_pending, g_failed))
                if g_pending or g_failed or g_rows != g_acked:
                    problems.append("store/%s: group rows not all DELIVERED" % system)
            if aborted:
                note.append("stopped: " + ",".join(aborted))
                problems.append("%s/%s: stopped (%s)" % (scen, system, ",".join(aborted)))
            if missing or failed:
                problems.append("%s/%s: %d missing, %d failed" % (scen, system, missing, failed))
            checks.append("%-8s %-9s %s" % (scen, system, "; ".join(note)))
    for scen, system, key in [("poll", "ours", "missing")]:
        if get(scen, system, key):
            checks.append("poll     ours      long-poll: %d delivered, %d missing"
                          % (sum(get(scen, system, "delivered")), sum(get(scen, system, key))))
            if sum(get(scen, system, key)):
                problems.append("poll: deliveries missing")

    head = ("figure", "ours", "Nchan (Redis)", "Nchan (memory)" if have_mem else "", "ratio",
            "target", "met")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    print()
    print(meta)
    print()
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print("(median of the runs [range]; ratio = ours / Nchan with Redis, of the medians; the "
          "FastCGI row compares chat.fcgi with chatd; the store rows compare with Nchan's 1:1 "
          "and fan-out rates)")
    if checks:
        print()
        print("every message:")
        for c in checks:
            print("  " + c)

    # Where the CPU went: each process's share of one core in the window.
    cpu = collections.defaultdict(dict)
    for (scen, system, key), vals in data.items():
        if key.startswith("cpu.") and vals:
            cpu[(scen, system)][key[4:]] = statistics.median(vals)
    if cpu:
        print()
        print("CPU in the measured window, % of one core (median):")
        for (scen, system) in sorted(cpu):
            procs = sorted(cpu[(scen, system)].items(), key=lambda kv: -kv[1])
            print("  %-8s %-9s %s" % (scen, system,
                                      ", ".join("%s %.0f" % (p, v) for p, v in procs)))
    extra = []
    for system in systems:
        f = get("oneone", system, "fsyncs_per_s")
        c = get("oneone", system, "commits_per_s")
        if f:
            extra.append("  1:1 %s: MariaDB %s fsyncs/s, %s commits/s (median)"
                         % (system, fmt_num(statistics.median(f)), fmt_num(statistics.median(c))))
    if extra:
        print()
        print("\n".join(extra))
    if problems:
        print()
        print("problems: " + "; ".join(problems))
    if smoke and problems:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
