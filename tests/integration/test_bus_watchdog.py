"""The bus watchdog: a Redis that stops answering (DEBUG SLEEP) without
closing its connections is noticed within [redis] timeout (3 s) plus the
1 s tick; meanwhile streams are served from MySQL, and the links come
back when Redis answers again."""

import os
import subprocess
import time

from chatlib import (chatd, door, expect_json, get, metric, send, skip, stream, uid, wait_until)

HANG_S = 8  # Redis asleep this long: past the watchdog's bound, short of the test's
WATCHDOG_BOUND_S = 3 + 1 + 1.5  # [redis] timeout + the tick + slack for a loaded machine


def _redis_hang(seconds):
    # DEBUG is enabled for loopback in the test stack's redis.conf.
    return subprocess.Popen(["redis-cli", "-p", os.environ["CHAT_REDIS_PORT"], "DEBUG", "SLEEP",
                             str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _readyz(n):
    r = get(chatd(n), "/readyz")
    return r.status, (r.json() if r.body else {})


def test_silent_redis_is_dropped_and_streams_fall_back_to_mysql():
    if door() != "chatd":
        skip("the watchdog is a chatd property; one run is enough")
    alice, bob = uid("alice"), uid("bob")
    s = stream(chatd(2), alice)
    try:
        s.wait_connected()
        first = send(chatd(1), bob, alice, "before")
        s.wait_message_id(first["message_id"])
        reconnects = metric(chatd(2), "chat_bus_reconnects_total")
        t0 = time.monotonic()
        hang = _redis_hang(HANG_S)
        try:
            time.sleep(0.3)
            # Stored at once: the publish waits for Redis, the 201 does not.
            during = send(chatd(1), bob, alice, "while redis hangs")
            wait_until(lambda: _readyz(2)[0] == 503, WATCHDOG_BOUND_S, "node2 /readyz to say 503")
            detected = time.monotonic() - t0
            status, body = _readyz(2)
            assert body.get("redis") == "down" and body.get("mysql") == "up", body
            # The stream gets it from MySQL while Redis still sleeps.
            s.wait_message_id(during["message_id"], timeout=3)
            got = time.monotonic() - t0
            assert hang.poll() is None, "redis woke before the message arrived: not the fallback"
            assert metric(chatd(2), "chat_bus_degraded") == 1
            print("silent Redis noticed after %.1f s, message delivered from MySQL after %.1f s"
                  % (detected, got))
        finally:
            hang.wait(timeout=HANG_S + 5)
        wait_until(lambda: _readyz(2)[0] == 200, 15, "node2 /readyz to be ready again")
        wait_until(lambda: metric(chatd(2), "chat_bus_reconnects_total") > reconnects, 5,
                   "node2 to count the reconnect")
        # The gauge is refreshed on the node's 1 s tick.
        wait_until(lambda: metric(chatd(2), "chat_bus_degraded") == 0, 3,
                   "chat_bus_degraded back to 0")
        after = send(chatd(1), bob, alice, "after")
        s.wait_message_id(after["message_id"])
        ids = [m.json()["message_id"] for m in s.messages()]
        assert ids == [first["message_id"], during["message_id"], after["message_id"]], ids
    finally:
        s.close()


test_silent_redis_is_dropped_and_streams_fall_back_to_mysql.timeout = 60
