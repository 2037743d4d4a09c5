#!/bin/bash
# run.sh: the browser tests of the web client (www/), in headless Chromium.
#
#   tests/browser/run.sh OUTDIR [-k SUBSTRING]...
#
# ./chatstack test runs it after the integration suites, with the test
# services up and the stack in the environment (CHAT_FRONT, CHAT_CHATD1,
# CHAT_CHATD2, CHAT_JWT_SECRET: see chat.test.mjs). OUTDIR (build/browser)
# gets node_modules/ with playwright-core at the version of
# package-lock.json, and screenshots/ with a PNG of every step of every
# test. The browser is Debian's chromium (/usr/bin/chromium, which
# chatstack installs): playwright-core only drives it, and Playwright's own
# browser download is never used.
#
# Installs node and npm with apt-get when node is missing. Prints PASS:/FAIL:
# lines and ends with exactly one line "N passed, N failed"; exit 1 when
# anything failed. Bounded: the install and the tests together end within
# about five minutes.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T_INSTALL=150 # apt-get and npm ci, when they are needed
T_TESTS=240   # every test together (each has its own bound as well)
CHROMIUM=/usr/bin/chromium

# fail REASON: the one summary line for a run that could not start.
fail() {
    echo "FAIL: browser setup: $*"
    echo "0 passed, 1 failed"
    exit 1
}

(($# >= 1)) || { echo "usage: $0 OUTDIR [-k SUBSTRING]..." >&2; exit 2; }
OUT=$1
shift
mkdir -p "$OUT" || fail "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)

if ! command -v node >/dev/null; then
    echo "installing nodejs and npm (apt-get)"
    # chatstack has refreshed the package lists; a bare machine may not have.
    { timeout "$T_INSTALL" apt-get install -y -q nodejs npm ||
        { timeout "$T_INSTALL" apt-get update -q &&
            timeout "$T_INSTALL" apt-get install -y -q nodejs npm; }; } >"$OUT/apt.log" 2>&1 ||
        { tail -n 20 "$OUT/apt.log"; fail "apt-get install nodejs npm failed (see $OUT/apt.log)"; }
fi
[[ -x $CHROMIUM ]] || fail "$CHROMIUM is missing (apt-get install chromium)"
# The locked playwright-core runs on Debian 12's own nodejs (18) and newer.
need=$(node -p 'require(process.argv[1]).packages["node_modules/playwright-core"].engines.node.replace(/\D/g, "")' \
    "$HERE/package-lock.json") || fail "cannot read package-lock.json"
(($(node -p 'process.versions.node.split(".")[0]') >= need)) ||
    fail "playwright-core needs Node.js $need or newer, this is $(node --version)"

# playwright-core at the locked version, unless it is there already.
want=$(node -p 'require(process.argv[1]).packages["node_modules/playwright-core"].version' \
    "$HERE/package-lock.json") || fail "cannot read package-lock.json"
have=$(node -p 'require(process.argv[1]).version' \
    "$OUT/node_modules/playwright-core/package.json" 2>/dev/null || true)
if [[ $have != "$want" ]] || ! cmp -s "$HERE/package-lock.json" "$OUT/package-lock.json"; then
    echo "installing playwright-core $want into $OUT (npm ci)"
    cp "$HERE/package.json" "$HERE/package-lock.json" "$OUT/" || fail "cannot copy package.json"
    # No browser download: chromium comes from Debian.
    (cd "$OUT" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 timeout "$T_INSTALL" \
        npm ci --no-audit --no-fund --loglevel=error) >"$OUT/npm.log" 2>&1 ||
        { tail -n 20 "$OUT/npm.log"; fail "npm ci failed (see $OUT/npm.log)"; }
fi

# Screenshots of this run only; Chromium's profile (a fresh one per launch)
# and its other temporary files under OUTDIR, not in /tmp.
rm -rf "$OUT/screenshots" "$OUT/tmp"
mkdir -p "$OUT/tmp" || fail "cannot create $OUT/tmp"
echo "chromium: $("$CHROMIUM" --version 2>/dev/null | tail -n 1)"
export TMPDIR=$OUT/tmp
timeout -k 10 "$T_TESTS" node "$HERE/chat.test.mjs" "$OUT" "$@" 2>&1 | tee "$OUT/tests.log"
rc=${PIPESTATUS[0]}
if ((rc == 124 || rc == 137)); then
    # Cut off before its summary line: what it finished counts, plus one
    # failure for the rest.
    echo "FAIL: browser tests: not done within $T_TESTS s"
    echo "$(grep -c '^PASS: ' "$OUT/tests.log") passed, $(($(grep -c '^FAIL: ' "$OUT/tests.log") + 1)) failed"
fi
rm -rf "$OUT/tmp"
exit $((rc != 0))
