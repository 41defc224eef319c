#!/usr/bin/env bash
# CPU time per request of each process of the distributed topology (router, auth,
# classifier, cache, analytics), all five pinned to CPU 0 as in bench/run.sh, while wrk
# drives the router from CPU 1 (nginx, the fake upstream, on CPU 1 too).
#
#   bench/distributed_cpu.sh                 (this tree)
#   bench/distributed_cpu.sh /path/to/tree   (and another checkout: rounds alternate
#                                             between the trees, to compare a change
#                                             with its base in one run)
#
# On one CPU, every microsecond another service spends per request is taken from the
# router: the analytics consumer's cost per usage event shows in the router's
# requests/s and latency tail. Each round starts the topology afresh on an empty
# database (PostgreSQL `bench_dcpu_<PORT_BASE>`, dropped at the end) and its own usage
# stream, warms it up, then measures SECS seconds of load: CPU from /proc/<pid>/stat
# (user + system, all threads), requests/s and p99 from wrk. After the topology stops
# (a graceful stop drains the stream) the stored rows are counted: every request must
# have its row. The figures move with the machine's load: compare trees in the same
# run and read the minimum over rounds.
#
# Knobs: ROUNDS (3), SECS (10), WARM_SECS (5), CONNS (1), PORT_BASE (18600: ports
# base+0..4 and base+1000..1004 for the services, base+11, +12 for nginx),
# BENCH_REDIS_URL (redis://127.0.0.1:6379/0), BENCH_PG (postgresql://postgres@127.0.0.1:5432).
# Needs nginx with the echo module, wrk, taskset and psql.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
OTHER=${1:-}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-10}
WARM_SECS=${WARM_SECS:-5}
CONNS=${CONNS:-1}
PORT_BASE=${PORT_BASE:-18600}
REDIS=${BENCH_REDIS_URL:-redis://127.0.0.1:6379/0}
PG=${BENCH_PG:-postgresql://postgres@127.0.0.1:5432}
DB=bench_dcpu_$PORT_BASE
STREAM=bench-dcpu-$PORT_BASE:usage
KEY=sk-bench-master-key
SERVICES=(router auth classifier cache analytics)
HZ=$(getconf CLK_TCK)
TMP=$(mktemp -d)
NGINX=
RUN_DIR=

# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
need_tools distributed_cpu.sh nginx wrk taskset psql redis-cli

stop_topology() {
    if [[ -n $RUN_DIR ]]; then
        (cd "$TREE" && .venv/bin/python -m services.topology down --run-dir "$RUN_DIR" >/dev/null) || true
        RUN_DIR=
    fi
}
cleanup() {
    stop_topology
    [[ -z $NGINX ]] || kill "$NGINX" 2>/dev/null || true
    wait 2>/dev/null || true
    psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB" 2>/dev/null || true
    redis-cli -u "$REDIS" del "$STREAM" "$STREAM:dead" >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT

json_port=$((PORT_BASE + 11)) sse_port=$((PORT_BASE + 12))
start_upstream "$TMP/nginx" "$json_port" "$sse_port" 1
NGINX=$UPSTREAM_PID
{
    sed -e "s#127.0.0.1:18001#127.0.0.1:$json_port#; s#127.0.0.1:18002#127.0.0.1:$sse_port#" \
        "$BENCH_DIR/gateway/gateway-bench.yaml"
    printf 'usage:\n  stream: "%s"\n' "$STREAM"
} >"$TMP/gateway.yaml"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

load() { # SECONDS -> wrk's JSON summary
    taskset -c 1 wrk -t1 -c"$CONNS" -d"${1}s" -s "$BENCH_DIR/load/chat.lua" "http://127.0.0.1:$PORT_BASE" \
        -- bench $KEY "dcpu-$RANDOM$RANDOM" 2>&1 | grep -o 'WRK_JSON .*' | cut -d' ' -f2-
}
field() { grep -o "\"$2\":[0-9.]*" <<<"$1" | head -1 | cut -d: -f2; }

# round TREE LABEL: one measurement; appends "label service us" lines to $TMP/results
round() {
    TREE=$1
    local label=$2 pid warm out n rps p99 stored expected
    psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
    redis-cli -u "$REDIS" del "$STREAM" "$STREAM:dead" >/dev/null
    RUN_DIR=$TMP/run
    (cd "$TREE" && env GATEWAY_CONFIG="$TMP/gateway.yaml" GATEWAY_MASTER_KEY=$KEY GATEWAY_DATA_DIR="$TMP/data" \
        REDIS_URL="$REDIS" DATABASE_URL="$PG/$DB" \
        taskset -c 0 .venv/bin/python -m services.topology up --port-base "$PORT_BASE" --run-dir "$RUN_DIR" \
        >/dev/null) || { tail -n 20 "$RUN_DIR"/*.log >&2; exit 1; }
    warm=$(load "$WARM_SECS")
    sleep 2
    declare -A before
    for s in "${SERVICES[@]}"; do before[$s]=$(ticks "$(cat "$RUN_DIR/$s.pid")"); done
    out=$(load "$SECS")
    n=$(field "$out" requests) rps=$(field "$out" rps) p99=$(field "$out" p99)
    for s in "${SERVICES[@]}"; do
        pid=$(cat "$RUN_DIR/$s.pid")
        echo "$label $s $(awk -v t="$(($(ticks "$pid") - before[$s]))" -v n="$n" -v hz="$HZ" \
            'BEGIN {printf "%.0f", t / hz / n * 1e6}')" >>"$TMP/results"
    done
    echo "$label rps $rps" >>"$TMP/results"
    echo "$label p99 $p99" >>"$TMP/results"
    stop_topology
    expected=$(($(field "$warm" requests) + n))
    stored=$(psql -qtA "$PG/$DB" -c "SELECT count(*) FROM usage_records")
    printf "%-16s %7d requests  %8.0f req/s  p99 %6d us  rows stored %d/%d\n" \
        "$label" "$n" "$rps" "$p99" "$stored" "$expected"
    # wrk does not count the request in flight on each connection when it stops.
    if ((stored < expected || stored > expected + 2 * CONNS)); then
        echo "  rows stored do not match the requests served" >&2
    fi
}

LABELS=("$(basename "$ROOT")") TREES=("$ROOT")
if [[ -n $OTHER ]]; then
    OTHER=$(cd "$OTHER" && pwd)
    LABELS+=("$(basename "$OTHER")") TREES+=("$OTHER")
fi
: >"$TMP/results"
for ((r = 0; r < ROUNDS; r++)); do
    for i in "${!TREES[@]}"; do round "${TREES[$i]}" "${LABELS[$i]}"; done
done

echo
echo "CPU us per request (each round; min), requests/s and p99 us (each round; median)"
for label in "${LABELS[@]}"; do
    for what in "${SERVICES[@]}" rps p99; do
        values=$(awk -v l="$label" -v w="$what" '$1 == l && $2 == w {print $3}' "$TMP/results" | tr '\n' ' ')
        sorted=$(tr ' ' '\n' <<<"$values" | grep . | sort -n)
        if [[ $what == rps || $what == p99 ]]; then
            summary=$(awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}' <<<"$sorted")
        else
            summary=$(head -1 <<<"$sorted")
        fi
        printf "%-16s %-10s %-40s %10s\n" "$label" "$what" "$values" "$summary"
    done
done
