#!/usr/bin/env bash
# run.sh BUILD_DIR SECONDS: builds every libFuzzer target of tests/fuzz into BUILD_DIR and runs
# each for SECONDS seconds on a temporary copy of its seed corpus (the checked-in corpus is never
# written). Prints one line per target, "PASS: fuzz_x (N runs)" or "FAIL: fuzz_x ..." with the
# input that failed, and exits 0 when every target passed, 1 when one failed, 77 (skipped) when
# clang or its fuzzer runtime is missing.
#
# Environment: CLANG (default clang, then clang-14), FUZZ_JOBS (targets fuzzed at once; default
# the number of CPUs, at most the number of targets).
set -u

TARGETS=(fuzz_json fuzz_jwt fuzz_sse fuzz_query fuzz_api)
PKGS=(libcjson libjwt inih hiredis libevent libmariadb libcurl)

usage() {
    echo "usage: $0 BUILD_DIR SECONDS" >&2
    exit 2
}

[ $# -eq 2 ] || usage
case "$2" in '' | *[!0-9]* | 0) usage ;; esac
SECONDS_EACH=$2
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
mkdir -p "$1" || exit 1
BUILD=$(cd "$1" && pwd)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/chat-fuzz.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT

### toolchain: clang with the libFuzzer runtime, else skip

CC=${CLANG:-}
if [ -z "$CC" ]; then
    for c in clang clang-14; do
        if command -v "$c" >/dev/null 2>&1; then
            CC=$c
            break
        fi
    done
fi
if [ -z "$CC" ] || ! command -v "$CC" >/dev/null 2>&1; then
    echo "SKIP: fuzz: clang not found (Debian: apt-get install -y clang libclang-rt-14-dev)"
    exit 77
fi
SAN=-fsanitize=fuzzer,address,undefined
cat >"$TMP/probe.c" <<'EOF'
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }
EOF
if ! "$CC" -g "$SAN" "$TMP/probe.c" -o "$TMP/probe" >"$TMP/probe.log" 2>&1; then
    echo "SKIP: fuzz: $CC cannot link $SAN (Debian: apt-get install -y libclang-rt-14-dev):"
    sed 's/^/    /' "$TMP/probe.log" | tail -5
    exit 77
fi
if ! flags=$(pkg-config --cflags --libs "${PKGS[@]}" 2>"$TMP/pkg.log"); then
    echo "FAIL: fuzz: pkg-config cannot find the libraries lib/ needs (${PKGS[*]}):"
    sed 's/^/    /' "$TMP/pkg.log"
    exit 1
fi
read -r -a LIBFLAGS <<<"$flags"

### build: every target at once, one log each

declare -A built
pids=()
for t in "${TARGETS[@]}"; do
    rm -f "$BUILD/$t"
    # Run from the top so that the command is the one the README gives.
    (cd "$TOP" && exec "$CC" -g -O1 "$SAN" -I lib -D_GNU_SOURCE "tests/fuzz/$t.c" \
        lib/*.c lib/api/*.c "${LIBFLAGS[@]}" -lpthread -o "$BUILD/$t") \
        >"$BUILD/$t.build.log" 2>&1 &
    pids+=($!)
done
for i in "${!TARGETS[@]}"; do
    if wait "${pids[$i]}"; then built[${TARGETS[$i]}]=1; else built[${TARGETS[$i]}]=0; fi
done

### fuzz: each target on a fresh copy of its seeds, FUZZ_JOBS at a time

# A UBSan report is a failure with a saved input, not a line in a log.
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:abort_on_error=1:print_stacktrace=1}

fuzz_one() {
    local t=$1
    local art="$BUILD/artifacts/$t" corpus="$TMP/corpus/$t"
    rm -rf "$art"
    mkdir -p "$art" "$corpus"
    cp -R "$HERE/corpus/$t/." "$corpus/"
    # libFuzzer stops itself; the outer limit only catches a wedged process.
    timeout -k 10 $((SECONDS_EACH + 120)) "$BUILD/$t" -max_total_time="$SECONDS_EACH" -timeout=10 \
        -rss_limit_mb=1024 -print_final_stats=1 -artifact_prefix="$art/" "$corpus" \
        >"$BUILD/$t.log" 2>&1
    echo $? >"$TMP/$t.rc"
}

jobs_max=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
[ "$jobs_max" -ge 1 ] 2>/dev/null || jobs_max=1
running=0
for t in "${TARGETS[@]}"; do
    [ "${built[$t]}" = 1 ] || continue
    if [ "$running" -ge "$jobs_max" ]; then
        wait -n
        running=$((running - 1))
    fi
    fuzz_one "$t" &
    running=$((running + 1))
done
wait

### report

failed=0
for t in "${TARGETS[@]}"; do
    if [ "${built[$t]}" != 1 ]; then
        echo "FAIL: $t (does not build; see $BUILD/$t.build.log)"
        sed 's/^/    /' "$BUILD/$t.build.log" | grep -m 5 -E 'error|undefined reference'
        failed=1
        continue
    fi
    rc=$(cat "$TMP/$t.rc" 2>/dev/null || echo 1)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$BUILD/$t.log" | tail -1)
    if [ "$rc" = 0 ] && [ -n "$runs" ]; then
        echo "PASS: $t ($runs runs)"
        continue
    fi
    failed=1
    input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$BUILD/$t.log" | tail -1)
    [ -n "$input" ] || input=$(find "$BUILD/artifacts/$t" -type f 2>/dev/null | head -1)
    echo "FAIL: $t (exit $rc) input: ${input:-none saved}; log: $BUILD/$t.log"
    [ -n "$input" ] && echo "    reproduce: $BUILD/$t $input"
    grep -m 3 -E '^==[0-9]+==ERROR|check failed|runtime error|SUMMARY' "$BUILD/$t.log" |
        sed 's/^/    /'
done
exit $failed
