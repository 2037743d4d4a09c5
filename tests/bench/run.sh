#!/usr/bin/env bash
# tests/bench/run.sh: the benchmarks of docs/benchmarks.md, our stack and
# Nchan side by side in the same run. `./chatstack bench ARGS` runs this.
#
#   ./chatstack bench [options] [SCENARIO...]
#
#   SCENARIO      idle oneone fixed fanout fcgi store (default: all of them)
#   --quick       one run of each, smaller sizes (a few minutes)
#   --smoke       the smallest sizes, our stack only, SSE and long-poll,
#                 no Nchan and no timing: checks that the tool works
#   --runs N      runs of each figure (default 3; the table shows the median
#                 and the range)
#   --no-nchan-memory   leave out the Nchan column with memory storage
#                 (shown by default; --quick leaves it out)
#   --pubs N      publishers of the closed-loop 1:1 and FastCGI runs (16)
#   --profile     perf record chatd, mariadbd and redis during the first
#                 1:1 run of ours; the report goes to the end of the output
#   --keep        keep the state folder (logs, configs, raw results)
#
# It installs what is missing (nginx, libnginx-mod-nchan), builds build/
# (with the load tools, tests/bench/chat-load and chat-store-load),
# starts its own Redis, MariaDB, two chatd nodes, lighttpd with chat.fcgi,
# and Nchan (nginx, 2 workers) with a Redis of its own, on 127.0.0.1
# ports 19010-19091 (plus $CHATSTACK_BENCH_PORT_OFFSET), all in a
# temporary state folder; runs the scenarios; prints one table; stops
# everything it started.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# Defines chatstack's functions (and ROOT, BUILD, PACKAGES), runs nothing.
# shellcheck source=../../chatstack
source "$BENCH_DIR/../../chatstack"

############################################################################
# Options and sizes

QUICK=0 SMOKE=0 RUNS=3 PROFILE=0 KEEP=0 NCHAN_MEM=1 RUNS_SET=0
ONE_PUBS=16 # keep-alive publishers of the closed-loop scenarios
SCENARIOS=()
ALL_SCENARIOS=(idle oneone fixed fanout fcgi store)

bench_usage() {
    sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit "${1:-2}"
}

while (($#)); do
    case $1 in
    --quick) QUICK=1 ;;
    --smoke) SMOKE=1 ;;
    --runs)
        [[ ${2:-} =~ ^[1-9][0-9]?$ ]] || bench_usage
        RUNS=$2 RUNS_SET=1
        shift
        ;;
    --pubs)
        [[ ${2:-} =~ ^[1-9][0-9]{0,2}$ ]] || bench_usage
        ONE_PUBS=$2
        shift
        ;;
    --profile) PROFILE=1 ;;
    --keep) KEEP=1 ;;
    --no-nchan-memory) NCHAN_MEM=0 ;;
    --nchan-memory) NCHAN_MEM=2 ;;
    -h | --help) bench_usage 0 ;;
    idle | oneone | fixed | fanout | fcgi | store) SCENARIOS+=("$1") ;;
    *) bench_usage ;;
    esac
    shift
done
((${#SCENARIOS[@]})) || SCENARIOS=("${ALL_SCENARIOS[@]}")
if ((QUICK || SMOKE)); then
    ((RUNS_SET)) || RUNS=1
    ((NCHAN_MEM == 2)) || NCHAN_MEM=0
fi
((SMOKE)) && NCHAN_MEM=0
scenario_wanted() { [[ " ${SCENARIOS[*]} " == *" $1 "* ]]; }

# Sizes. The full ones are those of the issue; the open-file cap of 20,000
# per process bounds the idle scenario (10,000 streams, one socket each on
# both sides of loopback, in the tool and in the server).
if ((SMOKE)); then
    IDLE_N=200 IDLE_HOLD=2 ONE_USERS=100 ONE_DUR=2 FIX_DUR=2 FIX_RATE=200 FAN_USERS=50
    FAN_ROUNDS=2 FAN_DUR=2 FCGI_DUR=2 WARMUP=0.5
elif ((QUICK)); then
    IDLE_N=2000 IDLE_HOLD=5 ONE_USERS=500 ONE_DUR=5 FIX_DUR=5 FIX_RATE=2000 FAN_USERS=200
    FAN_ROUNDS=3 FAN_DUR=5 FCGI_DUR=5 WARMUP=1
else
    # The hold spans one keepalive round ([delivery] keepalive = 15 s, and
    # Nchan's ping interval set to the same).
    IDLE_N=10000 IDLE_HOLD=20 ONE_USERS=2000 ONE_DUR=15 FIX_DUR=15 FIX_RATE=2000
    FAN_USERS=1000 FAN_ROUNDS=5 FAN_DUR=10 FCGI_DUR=10 WARMUP=2
fi
FIX_PUBS=64           # publishers of the fixed-rate one: more, so that none waits
FAN_PUBS=4            # publishers of the group fan-out
ONE_OUTSTANDING=2000  # closed loop: messages sent but not yet delivered, at most
FAN_OUTSTANDING=8     # the same for group messages (each is USERS events)
STORE_THREADS=$((SMOKE ? 4 : 64)) # sender threads of each store-alone process
STORE_GROUP_THREADS=8 # the same, posting to one group
RSS_LIMIT_MB=4096     # a process of the run past this stops it
LOAD_LIMIT=300        # seconds one run of the load tool may take
BUDGET=$((QUICK || SMOKE ? 1200 : 5400))

############################################################################
# Ports and state

use_bench_ports() {
    local o=${CHATSTACK_BENCH_PORT_OFFSET:-0}
    [[ $o =~ ^[0-9]{1,5}$ ]] && ((o < 40000)) || die "CHATSTACK_BENCH_PORT_OFFSET: 0 to 39999"
    REDIS_PORT=$((19010 + o)) MYSQL_PORT=$((19011 + o)) NREDIS_PORT=$((19012 + o))
    FRONT_PORT=$((19080 + o)) NODE_PORTS=($((19081 + o)) $((19082 + o)))
    NCHAN_PORT=$((19090 + o)) NCHAN_MEM_PORT=$((19091 + o))
}

LOAD=$BUILD/tests/bench/chat-load
STORE_LOAD=$BUILD/tests/bench/chat-store-load
RESULTS= # STATE/results.tsv: scenario, system, run, key, value
RUN_ID=$(printf '%04x' $((RANDOM % 65536)))
NCHAN_SVCS=() # the nginx instances started: names in STATE

# The systems compared: ours, Nchan with Redis storage, Nchan with memory.
systems() {
    echo ours
    ((SMOKE)) && return
    echo nchan
    ((NCHAN_MEM)) && echo nchanmem
    return 0
}

############################################################################
# Nchan: nginx with libnginx-mod-nchan, 2 workers, in the state folder

# write_nginx_conf NAME PORT redis|memory: STATE/NAME/nginx.conf.
write_nginx_conf() {
    local name=$1 port=$2 storage=$3 dir=$STATE/$1 pass='' upstream=''
    mkdir -p "$dir/tmp" || return 1
    if [[ $storage == redis ]]; then
        upstream="upstream nchan_redis { nchan_redis_server redis://127.0.0.1:$NREDIS_PORT; }"
        pass="nchan_redis_pass nchan_redis;"
    fi
    cat >"$dir/nginx.conf" <<EOF
# Nchan for ./chatstack bench ($storage storage), written by tests/bench/run.sh.
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
daemon off;
master_process on;
worker_processes 2;
# Each subscriber is one connection; 10,000 of them may land on one worker.
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections 16384;
}
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    # chatd does not close a keep-alive connection after N requests; nor
    # does this (nginx's default is 1,000).
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    # The shared memory for messages and channels; the default (32M) is
    # too small for 10,000 channels of the idle scenario.
    nchan_max_reserved_memory 256M;
    $upstream
    server {
        listen 127.0.0.1:$port backlog=4096;
        location = /pub {
            nchan_publisher http;
            nchan_channel_id \$arg_id;
            $pass
        }
        location = /sub {
            nchan_subscriber eventsource longpoll;
            nchan_channel_id \$arg_id;
            $pass
            # The same keepalive as chatd's ([delivery] keepalive = 15).
            nchan_eventsource_ping_interval 15;
        }
    }
}
EOF
}

# nginx_pid NAME: the pid of nginx master NAME, if it runs (checked by name,
# as chatstack's svc_pid does, so that a stale pid is never signalled).
nginx_pid() {
    local pid cmd
    pid=$(cat "$STATE/$1.pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmd == *nginx* ]] || return 1
    echo "$pid"
}

# The worker pids of nginx master NAME.
nginx_workers() {
    local pid
    pid=$(nginx_pid "$1") || return 1
    cat "/proc/$pid/task/$pid/children"
}

start_nginx() {
    local name=$1 port=$2 storage=$3 deadline
    require_port_free "$port" "nginx ($name)" || return 1
    write_nginx_conf "$name" "$port" "$storage" || return 1
    nginx -t -q -p "$STATE/$name" -c "$STATE/$name/nginx.conf" -e "$STATE/$name/error.log" \
        >>"$STATE/$name.log" 2>&1 || {
        log "nginx refuses its config:"
        tail -n 20 "$STATE/$name.log" >&2
        return 1
    }
    log "starting nchan ($storage storage) on 127.0.0.1:$port"
    spawn "$name" nginx -p "$STATE/$name" -c "$STATE/$name/nginx.conf" -e "$STATE/$name/error.log"
    NCHAN_SVCS+=("$name")
    deadline=$((SECONDS + WAIT_START))
    until port_in_use "$port" && (($(nginx_workers "$name" | wc -w) == 2)); do
        nginx_pid "$name" >/dev/null || {
            log "nginx ($name) exited while starting:"
            tail -n 20 "$STATE/$name/error.log" "$STATE/$name.log" >&2 || true
            return 1
        }
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

stop_nginx() {
    local name=$1 pid deadline
    pid=$(nginx_pid "$name") || return 0
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + WAIT_STOP))
    while nginx_pid "$name" >/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    nginx_pid "$name" >/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
    rm -f "$STATE/$name.pid"
}

# with_nchan_redis CMD...: CMD with STATE and REDIS_PORT those of Nchan's
# Redis, so that chatstack's service functions (spawn, svc_pid, stop_svc)
# work on it.
with_nchan_redis() {
    local s=$STATE r=$REDIS_PORT rc=0
    STATE=$s/nchan-redis REDIS_PORT=$NREDIS_PORT
    mkdir -p "$STATE" && "$@" || rc=$?
    STATE=$s REDIS_PORT=$r
    return "$rc"
}

# Nchan's Redis: like ours (no persistence, loopback only), without ACLs:
# Nchan runs its own Lua scripts on it.
start_nchan_redis() {
    local dir=$STATE/nchan-redis
    require_port_free "$NREDIS_PORT" "nchan's redis" || return 1
    mkdir -p "$dir/data" || return 1
    cat >"$dir/redis.conf" <<EOF || return 1
# Nchan's Redis for ./chatstack bench, written by tests/bench/run.sh.
bind 127.0.0.1
port $NREDIS_PORT
dir $dir/data
pidfile $dir/redis.pid
daemonize no
logfile ""
save ""
appendonly no
EOF
    log "starting nchan's redis on 127.0.0.1:$NREDIS_PORT"
    with_nchan_redis spawn redis redis-server "$dir/redis.conf"
    with_nchan_redis wait_until redis "nchan's redis" "$WAIT_START" \
        redis-cli -h 127.0.0.1 -p "$NREDIS_PORT" ping
}

############################################################################
# Our stack

# Config for the bench: the defaults, but no per-user send limit (the load
# tool sends thousands a second as a few users) and room for the 10,000
# idle streams on one node.
NODE_KEYS=(delivery.send_rate=0 delivery.send_burst=1000000 server.max_connections=15000
    log.level=warn)
# More section.key=value words for the nodes, to measure another setting:
# CHATSTACK_BENCH_KEYS="server.threads=16 mysql.send_batch=64".
read -r -a BENCH_KEYS <<<"${CHATSTACK_BENCH_KEYS:-}"
NODE_KEYS+=("${BENCH_KEYS[@]}")

start_ours() {
    local i
    ensure_secrets || return 1
    start_redis || return 1
    if ! start_mariadb; then
        # mariadb-install-db works in /tmp, where other programs clean up:
        # a datadir half made is made again, once.
        log "mariadb did not start; making its datadir again"
        stop_svc mysql
        rm -rf "$STATE/mysql"
        start_mariadb || return 1
    fi
    setup_databases chat || return 1
    for i in 0 1; do
        write_node_ini "node$((i + 1))" "${NODE_PORTS[i]}" "${NODE_KEYS[@]}" || return 1
    done
    migrate "$BUILD" node1 || return 1
    for i in 0 1; do
        start_node "$BUILD" "node$((i + 1))" "${NODE_PORTS[i]}" || return 1
    done
    FCGI_BUILD=$BUILD
    write_fcgi_ini fcgi "" "${NODE_KEYS[@]}" || return 1
    start_lighttpd
}

# The pids, for --watch: name=pid words.
ours_watch() {
    local p args=() f
    for f in node1 node2 mysql redis; do
        p=$(svc_pid "$f") && args+=(--watch "${f/mysql/mariadbd}=$p")
    done
    printf '%s\n' "${args[@]}"
}
fcgi_watch() {
    local lp c args=()
    lp=$(svc_pid lighttpd) || return 0
    args+=(--watch "lighttpd=$lp")
    for c in $(cat "/proc/$lp/task/$lp/children" 2>/dev/null); do
        args+=(--watch "chat.fcgi-$c=$c")
    done
    printf '%s\n' "${args[@]}"
}
nchan_watch() {
    local name=$1 w i=1 args=() rp
    for w in $(nginx_workers "$name"); do
        args+=(--watch "nginx-w$i=$w")
        i=$((i + 1))
    done
    if [[ $name == nginx-redis ]] && rp=$(with_nchan_redis svc_pid redis); then
        args+=(--watch "redis=$rp")
    fi
    printf '%s\n' "${args[@]}"
}

mysql_q() {
    mariadb --no-defaults --socket="$MYSQL_SOCK" -uroot -N -B chat -e "$1"
}

# MariaDB's counters of fsyncs and commits: "fsyncs commits".
mysql_counters() {
    mysql_q "SHOW GLOBAL STATUS WHERE Variable_name IN
        ('Innodb_os_log_fsyncs', 'Innodb_data_fsyncs', 'Com_commit')" |
        awk '$1 == "Com_commit" { c = $2 } $1 != "Com_commit" { f += $2 } END { print f + 0, c + 0 }'
}

############################################################################
# Running the load tool and keeping its figures

rec() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

# field FILE LINE-KIND KEY: the value of KEY= on the first LINE-KIND line.
field() {
    awk -v kind="$2" -v key="$3" '$1 == kind {
        for (i = 2; i <= NF; i++) { n = index($i, "="); if (substr($i, 1, n - 1) == key) { print substr($i, n + 1); exit } }
    }' "$1"
}

# watch_field FILE NAME KEY: KEY of the WATCH line of NAME.
watch_field() {
    awk -v name="$2" -v key="$3" '$1 == "WATCH" && $2 == "name=" name {
        for (i = 3; i <= NF; i++) { n = index($i, "="); if (substr($i, 1, n - 1) == key) { print substr($i, n + 1); exit } }
    }' "$1"
}

# Records the CPU share of every watched process (and of the tool).
rec_cpu() {
    local scen=$1 sys=$2 run=$3 out=$4
    awk '$1 == "WATCH" { name = substr($2, 6); sub(/-[0-9]+$/, "", name)
        for (i = 3; i <= NF; i++) if ($i ~ /^cpu_pct=/) cpu[name] += substr($i, 9) }
        END { for (n in cpu) printf "%s\n", n "\t" cpu[n] }' "$out" |
        while IFS=$'\t' read -r name cpu; do rec "$scen" "$sys" "$run" "cpu.$name" "$cpu"; done
}

# load NAME ARGS...: runs the tool (bounded), its output in STATE/out/NAME.
# Fails when it did not finish cleanly; the output is kept either way.
load() {
    local name=$1 rc=0
    shift
    log "  $name: chat-load $1 ..."
    bounded "$LOAD_LIMIT" "$LOAD" "$@" --time-limit $((LOAD_LIMIT - 20)) \
        --rss-limit-mb "$RSS_LIMIT_MB" --watch chat-load=self \
        >"$STATE/out/$name" 2>"$STATE/out/$name.err" || rc=$?
    if ((rc != 0)); then
        log "  $name: the load tool ended with status $rc ($(field "$STATE/out/$name" RESULT aborted))"
        tail -n 5 "$STATE/out/$name.err" >&2 || true
    fi
    return "$rc"
}

target_args() {
    case $1 in
    ours) echo "--proto chat --secret-file $STATE/jwt_secret" ;;
    nchan) echo "--proto nchan" ;;
    nchanmem) echo "--proto nchan" ;;
    esac
}
nchan_ep() { [[ $1 == nchan ]] && echo "127.0.0.1:$NCHAN_PORT" || echo "127.0.0.1:$NCHAN_MEM_PORT"; }
nchan_name() { [[ $1 == nchan ]] && echo nginx-redis || echo nginx-mem; }
N1=
N2=

# The pids of every service of the run.
all_pids() {
    local n
    for n in redis mysql node1 node2 lighttpd; do svc_pid "$n" || true; done
    local lp
    if lp=$(svc_pid lighttpd); then cat "/proc/$lp/task/$lp/children" 2>/dev/null || true; fi
    with_nchan_redis svc_pid redis || true
    for n in "${NCHAN_SVCS[@]}"; do nginx_workers "$n" || true; done
}

# quiesce: waits (at most QUIESCE_MAX s) until the services of the run use
# less than 5% of a core, so that what one run left behind (a server still
# working through closed streams, InnoDB purging) does not load the next.
QUIESCE_MAX=180
quiesce() {
    local deadline=$((SECONDS + QUIESCE_MAX)) a b pids t0=$SECONDS
    pids=$(all_pids | tr '\n' ' ')
    while :; do
        a=$(cpu_ticks $pids)
        sleep 1
        b=$(cpu_ticks $pids)
        # Clock ticks are 1/100 s: 5 in a second is 5% of a core.
        if ((b - a <= 5)); then
            ((SECONDS - t0 > 2)) && log "  (waited $((SECONDS - t0)) s for the services to be idle)"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            log "  warning: the services still use $((b - a))% of a core after ${QUIESCE_MAX} s"
            return 0
        fi
    done
}
cpu_ticks() {
    local p sum=0 f
    for p; do
        f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        f=${f##*) }
        # shellcheck disable=SC2086 # split into fields on purpose
        set -- $f
        sum=$((sum + ${12} + ${13}))
    done
    echo "$sum"
}

# fresh_server ours|nchan: restarts the server of the idle scenario, so that
# its RSS growth is that of the streams alone, not memory freed by a
# previous run and kept by the allocator.
fresh_server() {
    if [[ $1 == ours ]]; then
        stop_svc node1
        start_node "$BUILD" node1 "${NODE_PORTS[0]}"
    else
        stop_nginx nginx-redis
        start_nginx nginx-redis "$NCHAN_PORT" redis
    fi
}

############################################################################
# Scenarios: one run of one system each

# idle: IDLE_N idle streams on one server; memory per stream, CPU while idle,
# time to open them.
sc_idle() {
    local sys=$1 run=$2 out=$STATE/out/idle-$1-$2 pfx=$RUN_ID-i$2- w=() rss=0 cpu
    if [[ $sys == ours ]]; then
        w=(--watch "node1=$(svc_pid node1)")
        # shellcheck disable=SC2046
        load "idle-$sys-$run" idle $(target_args ours) --sub "$N1" --users "$IDLE_N" \
            --hold "$IDLE_HOLD" --settle 2 --prefix "$pfx" "${w[@]}" || return 0
    else
        mapfile -t w < <(nchan_watch "$(nchan_name "$sys")")
        # shellcheck disable=SC2046
        load "idle-$sys-$run" idle --proto nchan --sub "$(nchan_ep "$sys")" --users "$IDLE_N" \
            --hold "$IDLE_HOLD" --settle 2 --prefix "$pfx" "${w[@]}" || return 0
    fi
    [[ $(field "$out" RESULT opened) == "$IDLE_N" ]] || return 0
    # The server's RSS growth: chatd node1, or both nginx workers.
    rss=$(awk '$1 == "WATCH" && $2 ~ /^name=(node1|nginx-w[0-9])$/ {
        for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        d += v["rss_open_kb"] - v["rss_start_kb"]; c += v["cpu_pct"] }
        END { printf "%.3f %.2f\n", d, c }' "$out")
    cpu=${rss#* } rss=${rss% *}
    rec idle "$sys" "$run" kib_per_stream "$(awk -v d="$rss" -v n="$IDLE_N" 'BEGIN { printf "%.2f", d / n }')"
    rec idle "$sys" "$run" idle_cpu_pct "$cpu"
    rec idle "$sys" "$run" open_s "$(field "$out" RESULT open_s)"
}

# Waits until the inbox rows of users PREFIX* are all DELIVERED (or 15 s);
# prints "rows pending".
wait_delivered() {
    local pfx=$1 deadline=$((SECONDS + 15)) r
    while :; do
        r=$(mysql_q "SELECT COUNT(*), COALESCE(SUM(status = 0), 0) FROM inbox
            WHERE user_id LIKE '${pfx}u%'") || r="-1 -1"
        [[ ${r#*$'\t'} == 0 ]] && break
        ((SECONDS < deadline)) || break
        sleep 0.5
    done
    echo "${r/$'\t'/ }"
}

PROFILED=0
# oneone: ONE_USERS users streaming over both nodes (Nchan: one channel
# each), ONE_PUBS keep-alive publishers in a closed loop to random users
# (ours: through the node that does not hold the recipient's stream).
# fixed: the same at FIX_RATE messages/s.
sc_pubsub() {
    local scen=$1 sys=$2 run=$3 out=$STATE/out/$1-$2-$3 pfx=$RUN_ID-${1:0:1}$3- w=() mode=()
    local c0 c1 t0 t1 rows pending stored perf_pid=''
    if [[ $scen == oneone ]]; then
        mode=(--pubs "$ONE_PUBS" --max-outstanding "$ONE_OUTSTANDING" --duration "$ONE_DUR")
    else
        mode=(--pubs "$FIX_PUBS" --rate "$FIX_RATE" --duration "$FIX_DUR")
    fi
    mode+=(--users "$ONE_USERS" --warmup "$WARMUP" --prefix "$pfx")
    if [[ $sys == ours ]]; then
        mapfile -t w < <(ours_watch)
        c0=$(mysql_counters) t0=$(date +%s.%N)
        if ((PROFILE && !PROFILED)) && [[ $scen == oneone ]]; then
            PROFILED=1
            local pids
            pids=$(svc_pid node1),$(svc_pid node2),$(svc_pid mysql),$(svc_pid redis)
            perf record -e cpu-clock -F 499 -g -p "$pids" -o "$STATE/perf.data" \
                >"$STATE/perf.log" 2>&1 &
            perf_pid=$!
        fi
        # shellcheck disable=SC2046
        load "$scen-$sys-$run" run $(target_args ours) --sub "$N1,$N2" --pub "$N1,$N2" --cross \
            "${mode[@]}" "${w[@]}" || true
        if [[ -n $perf_pid ]]; then
            kill -INT "$perf_pid" 2>/dev/null || true
            wait "$perf_pid" 2>/dev/null || true
        fi
        c1=$(mysql_counters) t1=$(date +%s.%N)
        read -r rows pending < <(wait_delivered "$pfx")
        stored=$(mysql_q "SELECT COUNT(*) FROM messages WHERE sender LIKE '${pfx}s%'")
        rec "$scen" "$sys" "$run" rows "$rows"
        rec "$scen" "$sys" "$run" pending "$pending"
        rec "$scen" "$sys" "$run" stored "$stored"
        awk -v a="$c0" -v b="$c1" -v t0="$t0" -v t1="$t1" 'BEGIN {
            split(a, x, " "); split(b, y, " "); d = t1 - t0
            printf "%.0f %.0f\n", (y[1] - x[1]) / d, (y[2] - x[2]) / d }' |
            { read -r f c; rec "$scen" "$sys" "$run" fsyncs_per_s "$f"; rec "$scen" "$sys" "$run" commits_per_s "$c"; }
    else
        mapfile -t w < <(nchan_watch "$(nchan_name "$sys")")
        load "$scen-$sys-$run" run --proto nchan --sub "$(nchan_ep "$sys")" "${mode[@]}" "${w[@]}" ||
            true
    fi
    [[ -s $out ]] && grep -q '^RESULT' "$out" || return 0
    local k
    for k in ok failed expected delivered missing dup sent_rate delivered_rate p50_ms p99_ms \
        p999_ms max_ms behind_max; do
        rec "$scen" "$sys" "$run" "$k" "$(field "$out" RESULT "$k")"
    done
    rec "$scen" "$sys" "$run" aborted "$(field "$out" RESULT aborted)"
    rec_cpu "$scen" "$sys" "$run" "$out"
}

# fanout: one group of FAN_USERS members (ours: the owner and FAN_USERS-1
# streaming members, over both nodes; Nchan: one channel with FAN_USERS
# subscribers). FAN_ROUNDS single messages for the time to the last member,
# then FAN_PUBS publishers in a closed loop for the events/s.
sc_fanout() {
    local sys=$1 run=$2 out=$STATE/out/fanout-$1-$2 pfx=$RUN_ID-g$2- w=()
    local mode=(--group --pubs "$FAN_PUBS" --rounds "$FAN_ROUNDS" --max-outstanding
        "$FAN_OUTSTANDING" --duration "$FAN_DUR" --warmup "$WARMUP" --prefix "$pfx")
    if [[ $sys == ours ]]; then
        mapfile -t w < <(ours_watch)
        # shellcheck disable=SC2046
        load "fanout-$sys-$run" run $(target_args ours) --sub "$N1,$N2" --pub "$N1" \
            --users $((FAN_USERS - 1)) "${mode[@]}" "${w[@]}" || true
    else
        mapfile -t w < <(nchan_watch "$(nchan_name "$sys")")
        load "fanout-$sys-$run" run --proto nchan --sub "$(nchan_ep "$sys")" --users "$FAN_USERS" \
            "${mode[@]}" "${w[@]}" || true
    fi
    grep -q '^RESULT' "$out" 2>/dev/null || return 0
    rec fanout "$sys" "$run" events_per_s "$(field "$out" RESULT delivered_rate)"
    rec fanout "$sys" "$run" last_member_ms "$(field "$out" ROUNDS p50_ms)"
    rec fanout "$sys" "$run" missing "$(field "$out" RESULT missing)"
    rec fanout "$sys" "$run" failed "$(field "$out" RESULT failed)"
    rec_cpu fanout "$sys" "$run" "$out"
}

# fcgi: REST sends/s (closed loop, recipients without streams) through
# lighttpd + chat.fcgi, and to the chatd nodes directly.
sc_fcgi() {
    local door=$1 run=$2 out=$STATE/out/fcgi-$1-$2 pfx=$RUN_ID-f$2$1- w=() ep
    mapfile -t w < <(ours_watch)
    if [[ $door == fcgi ]]; then
        ep=127.0.0.1:$FRONT_PORT
        mapfile -t -O "${#w[@]}" w < <(fcgi_watch)
    else
        ep=$N1,$N2
    fi
    # shellcheck disable=SC2046
    load "fcgi-$door-$run" run $(target_args ours) --sub "$ep" --pub "$ep" --no-subs \
        --users "$ONE_USERS" --pubs "$ONE_PUBS" --duration "$FCGI_DUR" --warmup "$WARMUP" \
        --prefix "$pfx" "${w[@]}" || true
    grep -q '^RESULT' "$out" 2>/dev/null || return 0
    rec fcgi "$door" "$run" sends_per_s "$(field "$out" RESULT sent_rate)"
    rec fcgi "$door" "$run" failed "$(field "$out" RESULT failed)"
    rec fcgi "$door" "$run" p50_ms "$(field "$out" RESULT p50_ms)"
    rec_cpu fcgi "$door" "$run" "$out"
}

# store: the durable path alone. Two chat-store-load processes at once, one
# with each node's configuration, as two nodes would write: STORE_THREADS
# threads each send in a closed loop through the nodes' store code (group
# commit included) and an ACK thread marks the rows DELIVERED; no HTTP, no
# Redis, no streams. The ceiling of the 1:1 figures on this machine. Then
# one process posts to a group of FAN_USERS members from STORE_GROUP_THREADS
# threads: the inbox rows it writes and ACKs a second are the ceiling of
# the fan-out's events/s.
sc_store() {
    local run=$1 out=$STATE/out/store-ours-$1 pfx=$RUN_ID-d$1- i limit pids=() rc=0
    local rate=0 ok=0 failed=0 rows pending stored
    limit=$(bound "$LOAD_LIMIT") || return 0
    log "  store-ours-$run: chat-store-load x2 ..."
    for i in 1 2; do
        timeout -k 10 "$limit" "$STORE_LOAD" -c "$STATE/node$i.ini" --threads "$STORE_THREADS" \
            --users "$ONE_USERS" --duration "$ONE_DUR" --warmup "$WARMUP" --prefix "$pfx" \
            --first-sender $(((i - 1) * STORE_THREADS)) --time-limit $((limit - 20)) \
            --watch "mariadbd=$(svc_pid mysql)" >"$out.$i" 2>"$out.$i.err" &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || rc=$?; done
    ((rc == 0)) || log "  store-ours-$run: chat-store-load ended with status $rc"
    for i in 1 2; do
        grep -q '^RESULT' "$out.$i" 2>/dev/null || return 0
        rate=$((rate + $(field "$out.$i" RESULT stored_rate)))
        ok=$((ok + $(field "$out.$i" RESULT stored)))
        failed=$((failed + $(field "$out.$i" RESULT failed) + $(field "$out.$i" RESULT ack_failed)))
    done
    read -r rows pending < <(wait_delivered "$pfx")
    stored=$(mysql_q "SELECT COUNT(*) FROM messages WHERE sender LIKE '${pfx}s%'")
    rec store ours "$run" stored_rate "$rate"
    rec store ours "$run" per_batch "$(field "$out.1" RESULT per_batch)"
    rec store ours "$run" p50_ms "$(field "$out.1" RESULT p50_ms)"
    rec store ours "$run" p99_ms "$(field "$out.1" RESULT p99_ms)"
    rec store ours "$run" ok "$ok"
    rec store ours "$run" failed "$failed"
    rec store ours "$run" rows "$rows"
    rec store ours "$run" pending "$pending"
    rec store ours "$run" stored "$stored"
    rec_cpu store ours "$run" "$out.1"

    pfx=$RUN_ID-e$run-
    quiesce
    log "  store-ours-$run: chat-store-load --group $FAN_USERS ..."
    timeout -k 10 "$limit" "$STORE_LOAD" -c "$STATE/node1.ini" --group "$FAN_USERS" \
        --threads "$STORE_GROUP_THREADS" --duration "$FAN_DUR" --warmup "$WARMUP" \
        --prefix "$pfx" --time-limit $((limit - 20)) >"$out.g" 2>"$out.g.err" ||
        log "  store-ours-$run: chat-store-load --group ended with status $?"
    grep -q '^RESULT' "$out.g" 2>/dev/null || return 0
    read -r rows pending < <(wait_delivered "$pfx")
    rec store ours "$run" group_rows_rate "$(field "$out.g" RESULT rows_rate)"
    rec store ours "$run" group_acked "$(field "$out.g" RESULT acked)"
    rec store ours "$run" group_rows "$rows"
    rec store ours "$run" group_pending "$pending"
    rec store ours "$run" group_failed \
        $(($(field "$out.g" RESULT failed) + $(field "$out.g" RESULT ack_failed)))
}

# smoke: long-pollers as well, ours only (the other scenarios cover SSE).
sc_poll() {
    local run=$1 pfx=$RUN_ID-p$1- out=$STATE/out/poll-ours-$1
    # shellcheck disable=SC2046
    load "poll-ours-$run" run $(target_args ours) --sub "$N1,$N2" --pub "$N1,$N2" --longpoll \
        --users "$ONE_USERS" --pubs 4 --rate 100 --duration 2 --warmup 0.5 --prefix "$pfx" || true
    grep -q '^RESULT' "$out" 2>/dev/null || return 0
    rec poll ours "$run" missing "$(field "$out" RESULT missing)"
    rec poll ours "$run" delivered "$(field "$out" RESULT delivered)"
}

############################################################################
# Main

bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    end_children
    local n
    for n in "${NCHAN_SVCS[@]}"; do stop_nginx "$n"; done
    with_nchan_redis stop_svc redis || true
    stop_all || true
    if ((rc == 0 && !KEEP)); then
        rm -rf -- "$STATE"
    else
        log "state, logs and raw results kept in $STATE"
    fi
    exit "$rc"
}

main_bench() {
    local t_begin=$SECONDS
    use_bench_ports
    # Up to the hard limit: the idle scenario holds 10,000 sockets in the
    # tool and as many in the server.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    if (($(ulimit -n) < IDLE_N + 500)); then
        IDLE_N=$(($(ulimit -n) - 500))
        log "open files are capped at $(ulimit -n): the idle scenario holds $IDLE_N streams"
    fi
    DEADLINE=$((SECONDS + BUDGET)) T_TOTAL=$BUDGET
    local extra=(nginx libnginx-mod-nchan)
    ((PROFILE)) && extra+=(linux-perf)
    ((SMOKE)) && extra=()
    ensure_packages "${extra[@]}"
    ensure_configure || die "autogen failed"
    # Others may be editing the tree: a broken build gets two more tries.
    local try
    for try in 1 2 3; do
        build_tree "$BUILD" && [[ -x $LOAD && -x $STORE_LOAD ]] && break
        ((try < 3)) || die "the build failed"
        log "the build failed; trying again in 20 s"
        sleep 20
    done

    make_state "$(mktemp -d "${TMPDIR:-/tmp}/chatstack-bench.XXXXXX")" || die "mktemp failed"
    MYSQL_SOCK=$STATE/mysql.sock
    RESULTS=$STATE/results.tsv
    mkdir -p "$STATE/out"
    : >"$RESULTS"
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    log "bench state in $STATE"
    local port
    for port in "$REDIS_PORT" "$MYSQL_PORT" "$NREDIS_PORT" "$FRONT_PORT" "${NODE_PORTS[@]}" \
        "$NCHAN_PORT" "$NCHAN_MEM_PORT"; do
        require_port_free "$port" "the bench" || die "port $port is taken"
    done
    start_ours || die "our stack did not start"
    N1=127.0.0.1:${NODE_PORTS[0]} N2=127.0.0.1:${NODE_PORTS[1]}
    if ((!SMOKE)); then
        start_nchan_redis || die "nchan's redis did not start"
        start_nginx nginx-redis "$NCHAN_PORT" redis || die "nchan did not start"
        if ((NCHAN_MEM)); then
            start_nginx nginx-mem "$NCHAN_MEM_PORT" memory || die "nchan (memory) did not start"
        fi
    fi
    local t_ready=$SECONDS

    # Each run does every system in turn, so that the machine's other load
    # falls on both alike.
    local run sys scen
    for scen in "${SCENARIOS[@]}"; do
        log "scenario $scen ($RUNS run(s))"
        for ((run = 1; run <= RUNS; run++)); do
            case $scen in
            idle)
                for sys in ours nchan; do
                    ((SMOKE)) && [[ $sys != ours ]] && continue
                    fresh_server "$sys" || die "the $sys server did not restart"
                    quiesce
                    sc_idle "$sys" "$run"
                done
                ;;
            oneone | fixed)
                for sys in $(systems); do
                    [[ $scen == fixed && $sys == nchanmem ]] && continue
                    quiesce
                    sc_pubsub "$scen" "$sys" "$run"
                done
                ;;
            fanout) for sys in $(systems); do quiesce && sc_fanout "$sys" "$run"; done ;;
            fcgi) for sys in fcgi chatd; do quiesce && sc_fcgi "$sys" "$run"; done ;;
            store) quiesce && sc_store "$run" ;;
            esac
        done
    done
    ((SMOKE)) && sc_poll 1

    local secs=$((SECONDS - t_begin))
    {
        echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "versions: chatd $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'), $(nginx -v 2>&1 | sed 's/^nginx version: //'), nchan $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo '?'), redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p'), mariadb $(mariadbd --version | awk '{ print $3 }')"
        echo "runs: $RUNS; $( ((QUICK)) && echo quick || { ((SMOKE)) && echo smoke || echo full; }) sizes; start-up $((t_ready - t_begin)) s, total $secs s"
    } >"$STATE/meta"
    /usr/bin/python3 "$BENCH_DIR/report.py" "$RESULTS" "$STATE/meta" \
        "idle_n=$IDLE_N" "one_users=$ONE_USERS" "fix_rate=$FIX_RATE" "fan_users=$FAN_USERS" \
        "smoke=$SMOKE"
    local rc=$?
    if [[ -s $STATE/perf.data ]]; then
        echo
        echo "perf (cpu-clock samples during the first 1:1 run of ours), the top symbols:"
        perf report -i "$STATE/perf.data" --stdio --no-children --sort comm,dso,sym \
            --percent-limit 0.7 -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60 ||
            true
        echo
        echo "by process:"
        perf report -i "$STATE/perf.data" --stdio --no-children --sort comm -g none 2>/dev/null |
            grep -v '^#' | grep -v '^$' | head -10 || true
    fi
    return "$rc"
}

main_bench
