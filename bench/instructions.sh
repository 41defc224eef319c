#!/usr/bin/env bash
# Instructions per request: the floor and the embedded gateway under valgrind's
# callgrind, loaded by wrk, with the work they do while idle subtracted.
#
#   bench/instructions.sh                 (floor and gateway, this tree)
#   bench/instructions.sh /path/to/tree   (the gateway of another checkout too,
#                                          to compare a change with its base)
#
# Why: on a shared 2-core machine throughput and CPU time move by ±20 % from one
# minute to the next (other work, stolen CPU); the count of instructions a process
# executes per request moves by about 1 %. It measures cost, not speed: cache
# misses and syscall latency are not in it. Use it to tell whether a change made
# the request path cheaper, and bench/run.sh for what a client sees.
#
# How: each server runs under callgrind (about 50x slower), is warmed up, then
# the counters are zeroed, wrk sends CONNS connections' worth of requests for
# SECS seconds and the counters are dumped; the counters are zeroed again and
# dumped after the same time with no load (timers, the usage flush loop), and
# that is subtracted. The gateway's usage flush interval is raised to 1 s so
# that its usage events travel in batches of about the size they have under full
# load at native speed (a few dozen), not one by one.
#
# Knobs: CONNS (16), SECS (20), WARM (15), PORT_BASE (18400), SKIP_FLOOR (1: only the
# gateway rows), KEEP (a directory: the loaded dumps are copied there as
# <row>.cg.out, for `callgrind_annotate --inclusive=yes KEEP/gateway.cg.out`). Needs valgrind,
# nginx with the echo module and wrk (bench/run.sh installs the last two).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
OTHER=${1:-}
CONNS=${CONNS:-16}
SECS=${SECS:-20}
WARM=${WARM:-15}
PORT_BASE=${PORT_BASE:-18400}
KEY=sk-bench-master-key
TMP=$(mktemp -d)
PIDS=()

# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
need_tools instructions.sh valgrind callgrind_control nginx wrk

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

json_port=$((PORT_BASE + 1)) sse_port=$((PORT_BASE + 2))
start_upstream "$TMP/nginx" "$json_port" "$sse_port"
PIDS+=("$UPSTREAM_PID")

# The benchmark's gateway configuration, pointed at this run's upstream ports.
sed -e "s#127.0.0.1:18001#127.0.0.1:$json_port#; s#127.0.0.1:18002#127.0.0.1:$sse_port#" \
    "$BENCH_DIR/gateway/gateway-bench.yaml" >"$TMP/gateway.yaml"
printf 'usage:\n  flush_interval_ms: 1000\n' >>"$TMP/gateway.yaml"

total() { grep -h -m1 '^summary:\|^totals:' "$(ls -t "$1"/cg.out.* | head -1)" | awk '{print $2}'; }

# measure NAME TREE PORT ARGS...: prints "NAME <instructions per request> <requests>"
measure() {
    local name=$1 tree=$2 port=$3 dir=$TMP/$1 pid t0 t1 busy idle n i
    shift 3
    mkdir -p "$dir/data"
    (cd "$tree" && exec env -u REDIS_URL -u DATABASE_URL PYTHONPATH="$tree" \
        GATEWAY_CONFIG="$TMP/gateway.yaml" GATEWAY_MASTER_KEY=$KEY GATEWAY_DATA_DIR="$dir/data" \
        valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
        "$tree/.venv/bin/python" "$@" --host 127.0.0.1 --port "$port" >"$dir/log" 2>&1) &
    pid=$!
    PIDS+=("$pid")
    for ((i = 0; i < 600; i++)); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/readyz" && break
        kill -0 "$pid" 2>/dev/null || { tail -20 "$dir/log" >&2; exit 1; }
        sleep 1
    done
    wrk -t1 -c"$CONNS" -d"${WARM}s" -s "$BENCH_DIR/load/chat.lua" "http://127.0.0.1:$port" \
        -- bench $KEY "warm-$name-$RANDOM" >/dev/null 2>&1
    sleep 2
    callgrind_control -z "$pid" >/dev/null 2>&1
    t0=$EPOCHREALTIME
    n=$(wrk -t1 -c"$CONNS" -d"${SECS}s" -s "$BENCH_DIR/load/chat.lua" "http://127.0.0.1:$port" \
        -- bench $KEY "run-$name-$RANDOM" 2>&1 | grep -o '"requests":[0-9]*' | cut -d: -f2)
    sleep 1
    callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    t1=$EPOCHREALTIME
    busy=$(total "$dir")
    if [[ -n ${KEEP:-} ]]; then
        mkdir -p "$KEEP"
        cp "$(ls -t "$dir"/cg.out.* | head -1)" "$KEEP/$name.cg.out"
    fi
    callgrind_control -z "$pid" >/dev/null 2>&1
    sleep "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')"
    callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    idle=$(total "$dir")
    kill "$pid" 2>/dev/null || true
    echo "$name $(((busy - idle) / n)) $n"
}

{
    [[ -n ${SKIP_FLOOR:-} ]] || measure floor "$ROOT" $((PORT_BASE + 10)) "$BENCH_DIR/floor.py" \
        --upstream "http://127.0.0.1:$json_port" --stream-upstream "http://127.0.0.1:$sse_port"
    measure gateway "$ROOT" $((PORT_BASE + 11)) -m services gateway
    if [[ -n $OTHER ]]; then
        measure "gateway($(basename "$OTHER"))" "$OTHER" $((PORT_BASE + 12)) -m services gateway
    fi
} | awk '
    {name[NR] = $1; ins[NR] = $2; req[NR] = $3}
    END {
        printf "%-28s %14s %10s %9s\n", "", "instr/request", "requests", "x floor"
        for (i = 1; i <= NR; i++)
            printf "%-28s %14d %10d %9.2f\n", name[i], ins[i], req[i], ins[i] / ins[1]
    }'
