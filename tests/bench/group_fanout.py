#!/usr/bin/env python3
"""Group fan-out against a running `./chatstack up`: a group of MEMBERS users
(default 1,000, owner included), every member but the owner streaming, their
streams spread over both chatd nodes; the owner posts ROUNDS messages (default
5) through node 1, one at a time, and for each the time from the POST to the
last member's stream receiving it is measured.

    python3 tests/bench/group_fanout.py [MEMBERS] [ROUNDS]

Prints the median and range of those times and the events/s they imply.
One process, one thread, non-blocking sockets: the load tool is not what
is measured. Bounded: every wait has a deadline and it stops by itself."""

import base64
import hashlib
import hmac
import json
import os
import resource
import selectors
import socket
import statistics
import sys
import time
import urllib.request

here = os.path.dirname(os.path.abspath(__file__))
STATE = os.environ.get("CHATSTACK_DIR", os.path.join(here, "..", "..", ".chatstack"))
NODES = [("127.0.0.1", 8081), ("127.0.0.1", 8082)]


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(secret, user):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": user, "exp": int(time.time()) + 3600}).encode())
    sig = hmac.new(secret.encode(), ("%s.%s" % (head, body)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (head, body, b64(sig))


def api(node, method, path, tok, body=None):
    req = urllib.request.Request("http://%s:%d%s" % (node[0], node[1], path), method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Bearer " + tok,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


class Stream:
    def __init__(self, node, tok):
        self.sock = socket.create_connection(node, timeout=10)
        self.sock.sendall(("GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                           "Last-Event-ID: 0\r\n\r\n" % tok).encode())
        self.sock.setblocking(False)
        self.buf = b""
        self.ready = False
        self.seen = set()

    def feed(self):
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return []
        if not data:
            raise ConnectionError("stream closed")
        self.buf += data
        if not self.ready and b"retry:" in self.buf:
            self.ready = True
        got = []
        # Message ids are unique: scanning for them is enough, no SSE parser.
        while b'"message_id":"' in self.buf:
            i = self.buf.index(b'"message_id":"') + 14
            if len(self.buf) < i + 26:
                break
            got.append(self.buf[i:i + 26].decode())
            self.buf = self.buf[i + 26:]
        return got


def main():
    members = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, members + 100)), hard))
    with open(os.path.join(STATE, "jwt_secret")) as f:
        secret = f.read().strip()
    run = "%x" % (int(time.time() * 1000) & 0xffffff)
    owner = "fan%s_owner" % run
    users = ["fan%s_%d" % (run, i) for i in range(1, members)]
    otok = token(secret, owner)
    chat = api(NODES[0], "POST", "/v1/chats", otok, {"name": "fan-out", "members": users})["chat"]

    sel = selectors.DefaultSelector()
    streams = []
    t0 = time.monotonic()
    for i, u in enumerate(users):
        s = Stream(NODES[i % 2], token(secret, u))
        streams.append(s)
        sel.register(s.sock, selectors.EVENT_READ, s)
    deadline = time.monotonic() + 60
    while not all(s.ready for s in streams):
        if time.monotonic() > deadline:
            sys.exit("streams did not open within 60 s")
        for key, _ in sel.select(1):
            key.data.feed()
    opened = time.monotonic() - t0

    times = []
    for r in range(rounds):
        t = time.monotonic()
        mid = api(NODES[0], "POST", "/v1/messages", otok,
                  {"chat": chat, "body": "round %d" % r})["message_id"]
        waiting = set(range(len(streams)))
        deadline = t + 60
        while waiting:
            if time.monotonic() > deadline:
                sys.exit("round %d: %d members did not get it within 60 s" % (r, len(waiting)))
            for key, _ in sel.select(1):
                s = key.data
                if mid in s.feed():
                    waiting.discard(streams.index(s))
        times.append(time.monotonic() - t)
    for s in streams:
        s.sock.close()
    med = statistics.median(times)
    print("group of %d: %d streams opened in %.1f s over 2 nodes; POST to the last member: "
          "median %.0f ms (range %.0f-%.0f ms, %d rounds), %.0f events/s"
          % (members, len(streams), opened, med * 1000, min(times) * 1000, max(times) * 1000,
             rounds, len(streams) / med))


if __name__ == "__main__":
    main()
