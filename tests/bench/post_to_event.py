#!/usr/bin/env python3
"""POST on node 1 to the event on a stream held on node 2, against a running
`./chatstack up`: prints the median, p90 and max of N sends (default 50).

    python3 tests/bench/post_to_event.py [N]

A quick figure, not the benchmark: one sender, one stream, closed loop."""

import os
import statistics
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "integration"))
state = os.environ.get("CHATSTACK_DIR", os.path.join(here, "..", "..", ".chatstack"))
os.environ.setdefault("CHAT_NODE1", "http://127.0.0.1:8081")
os.environ.setdefault("CHAT_NODE2", "http://127.0.0.1:8082")
if "CHAT_JWT_SECRET" not in os.environ:
    with open(os.path.join(state, "jwt_secret")) as f:
        os.environ["CHAT_JWT_SECRET"] = f.read().strip()

from chatlib import node, send, stream, uid  # noqa: E402


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    alice, bob = uid("alice"), uid("bob")
    s = stream(node(2), bob)
    lat = []
    try:
        for i in range(n):
            t0 = time.monotonic()
            m = send(node(1), alice, bob, "ping %d" % i)
            ev = s.wait_message_id(m["message_id"], timeout=5)
            lat.append((ev.t - t0) * 1000)
    finally:
        s.close()
    lat.sort()
    print("POST on node 1 -> event on node 2, %d sends: median %.2f ms, p90 %.2f ms, max %.2f ms"
          % (n, statistics.median(lat), lat[int(n * 0.9) - 1], lat[-1]))


if __name__ == "__main__":
    main()
