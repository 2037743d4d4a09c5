#!/usr/bin/env python3
"""Runs the integration suite against a running stack.

    python3 tests/integration/run.py [--dir DIR] [-k SUBSTRING]... [-j JOBS] [-t SECONDS] [-l]

Discovers the functions test_* of the modules test_*.py beside this file (in
file order, then definition order), runs each in its own Python process with
a time bound (default 60 s, or the function's `timeout` attribute), prints
`PASS: name` or `FAIL: name` with the reason, or `SKIP: name: why` for a
test that cannot apply to this door (chatlib.skip), and ends with a line
`N skipped` and then exactly one line `N passed, N failed`. Exit code 1 when
any test failed (or none was chosen). --dir runs the test_*.py of another
folder (tests/faults) the same way, with chatlib still importable;
CHAT_TEST_K (comma-separated) adds to -k.

Tests run one at a time by default: a few read process-wide metrics of a
node (chat_streams_open, chat_ack_timeouts_total), which other tests running
at the same time (-j N) would disturb.

The stack is described by the environment (./chatstack test sets it):
  CHAT_DOOR             the door this run goes through: chatd, lighttpd, apache
  CHAT_NODE1, 2         the door: chatd node1 and node2, or the front's URL twice
  CHAT_NODE3..5         chatd node3..node5 (their own configs), always direct
  CHAT_CHATD1, 2        chatd node1 and node2 themselves, in every run
  CHAT_FRONT            lighttpd (Apache in the apache run)
  CHAT_LIGHTTPD, CHAT_APACHE   the two fronts, in every run
  CHAT_FCGI_PROCS       chat.fcgi processes behind CHAT_FRONT (lighttpd 2, Apache 1)
  CHAT_NODEn_PIDFILE, CHAT_NODEn_LOG, CHAT_NODEn_ARGV (n = 1, 2): for the
                        test that kills a chatd node and starts it again
  CHAT_JWT_SECRET       the HS256 key of the stack
"""

import argparse
import importlib
import inspect
import os
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
TEST_DIR = HERE  # where the test_*.py are: --dir
DEFAULT_TIMEOUT = 60
SKIP_EXIT = 77  # a child's exit code for chatlib.skip()


def use_dir(d):
    global TEST_DIR
    TEST_DIR = os.path.abspath(d)
    sys.path.insert(0, HERE)
    if TEST_DIR != HERE:
        sys.path.insert(0, TEST_DIR)


def discover():
    tests = []
    for fn in sorted(os.listdir(TEST_DIR)):
        if not (fn.startswith("test_") and fn.endswith(".py")):
            continue
        modname = fn[:-3]
        mod = importlib.import_module(modname)
        funcs = [(name, f) for name, f in vars(mod).items()
                 if name.startswith("test_") and inspect.isfunction(f) and f.__module__ == modname]
        funcs.sort(key=lambda nf: nf[1].__code__.co_firstlineno)
        for name, f in funcs:
            tests.append(("%s.%s" % (modname, name), getattr(f, "timeout", DEFAULT_TIMEOUT)))
    return tests


def child(name):
    """Runs one test in this process; exit 0 on success."""
    modname, func = name.split(".", 1)
    import chatlib
    try:
        mod = importlib.import_module(modname)
        getattr(mod, func)()
    except chatlib.Skip as e:
        sys.stdout.flush()
        print(str(e) or "(no reason given)")
        sys.stdout.flush()
        os._exit(SKIP_EXIT)
    except BaseException:  # noqa: BLE001
        sys.stdout.flush()
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_one(name, timeout):
    t0 = time.monotonic()
    cmd = [sys.executable, "-u", "-B", os.path.abspath(__file__), "--dir", TEST_DIR, "--child", name]
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=timeout)
        out = p.stdout.decode("utf-8", "replace")
        ok = True if p.returncode == 0 else "skip" if p.returncode == SKIP_EXIT else False
        if not ok and not out.strip():
            out = "exit code %d\n" % p.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace")
        out += "timed out after %d s (test killed)\n" % timeout
        ok = False
    return name, ok, out, time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", action="append", default=[], help="run only tests whose name contains this (repeatable)")
    ap.add_argument("-j", type=int, default=1, help="tests to run at once (default 1)")
    ap.add_argument("-t", type=int, default=None, help="per-test time bound in seconds (default 60)")
    ap.add_argument("-l", action="store_true", help="list the tests and exit")
    ap.add_argument("--dir", default=HERE, help="the folder of the test_*.py (default: this one)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    use_dir(args.dir)
    args.k += [k for k in os.environ.get("CHAT_TEST_K", "").split(",") if k]

    if args.child:
        child(args.child)
        return

    try:
        tests = discover()
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        print("FAIL: discovery")
        print("0 passed, 1 failed")
        sys.exit(1)
    if args.k:
        tests = [t for t in tests if any(k in t[0] for k in args.k)]
    if args.l:
        for name, _ in tests:
            print(name)
        return
    if not tests:
        print("no test matches %r" % args.k, file=sys.stderr)
        print("0 passed, 0 failed")
        sys.exit(1)

    missing = [v for v in ("CHAT_NODE1", "CHAT_NODE2", "CHAT_NODE3", "CHAT_NODE4", "CHAT_NODE5",
                           "CHAT_FRONT", "CHAT_JWT_SECRET") if not os.environ.get(v)]
    if missing:
        print("warning: not set: %s (tests that need them fail)" % " ".join(missing), file=sys.stderr)

    passed = failed = skipped = 0
    t_start = time.monotonic()

    def report(res):
        nonlocal passed, failed, skipped
        name, ok, out, dt = res
        if ok == "skip":
            skipped += 1
            lines = out.rstrip().splitlines() or [""]
            print("SKIP: %s: %s" % (name, lines[-1]))
            for line in lines[:-1]:
                print("    " + line)
        elif ok:
            passed += 1
            print("PASS: %s (%.1f s)" % (name, dt))
            for line in out.rstrip().splitlines():
                print("    " + line)
        else:
            failed += 1
            print("FAIL: %s (%.1f s)" % (name, dt))
            for line in out.rstrip().splitlines():
                print("    " + line)
        sys.stdout.flush()

    if args.j <= 1:
        for name, to in tests:
            report(run_one(name, args.t or to))
    else:
        with ThreadPoolExecutor(max_workers=args.j) as ex:
            for res in ex.map(lambda t: run_one(t[0], args.t or t[1]), tests):
                report(res)
    print("suite %s took %.1f s" % (os.path.basename(TEST_DIR), time.monotonic() - t_start))
    print("%d skipped" % skipped)
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
