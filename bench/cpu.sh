#!/usr/bin/env bash
# CPU time per request, and while idle: the floor and the embedded gateway, each
# pinned to CPU 0 (nginx and wrk on CPU 1), measured from /proc/<pid>/stat.
#
#   bench/cpu.sh                 (floor and gateway, this tree)
#   bench/cpu.sh /path/to/tree   (the gateway of another checkout too: rounds
#                                 alternate between the trees, to compare a change
#                                 with its base in one run)
#
# Requests/s answer "how fast", and are bounded by whichever core runs out first;
# CPU per request answers "how costly" for the process under test alone. It still
# moves with the machine's load (±10-20 % here): compare trees in the same run and
# read the minimum over rounds. For a figure the load does not move, see
# bench/instructions.sh.
#
# Knobs: ROUNDS (4), SECS (5), CONNS (64), IDLE_SECS (20), PORT_BASE (18500).
# Needs nginx with the echo module, wrk and taskset (bench/run.sh installs them).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
OTHER=${1:-}
ROUNDS=${ROUNDS:-4}
SECS=${SECS:-5}
CONNS=${CONNS:-64}
IDLE_SECS=${IDLE_SECS:-20}
PORT_BASE=${PORT_BASE:-18500}
KEY=sk-bench-master-key
TMP=$(mktemp -d)
PIDS=()
HZ=$(getconf CLK_TCK)

# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
need_tools cpu.sh nginx wrk taskset

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

json_port=$((PORT_BASE + 1)) sse_port=$((PORT_BASE + 2))
start_upstream "$TMP/nginx" "$json_port" "$sse_port" 1
PIDS+=("$UPSTREAM_PID")
sed -e "s#127.0.0.1:18001#127.0.0.1:$json_port#; s#127.0.0.1:18002#127.0.0.1:$sse_port#" \
    "$BENCH_DIR/gateway/gateway-bench.yaml" >"$TMP/gateway.yaml"

NAMES=() PORTS=() SERVERS=()
# start NAME TREE PORT ARGS...
start() {
    local name=$1 tree=$2 port=$3 i
    shift 3
    mkdir -p "$TMP/$name"
    (cd "$tree" && exec taskset -c 0 env -u REDIS_URL -u DATABASE_URL PYTHONPATH="$tree" \
        GATEWAY_CONFIG="$TMP/gateway.yaml" GATEWAY_MASTER_KEY=$KEY GATEWAY_DATA_DIR="$TMP/$name" \
        "$tree/.venv/bin/python" "$@" --host 127.0.0.1 --port "$port" >"$TMP/$name.log" 2>&1) &
    PIDS+=($!)
    for ((i = 0; i < 300; i++)); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/readyz" && break
        kill -0 "${PIDS[-1]}" 2>/dev/null || { tail -20 "$TMP/$name.log" >&2; exit 1; }
        sleep 0.2
    done
    NAMES+=("$name") PORTS+=("$port") SERVERS+=("${PIDS[-1]}")
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

load() { # PORT SECONDS -> requests
    taskset -c 1 wrk -t1 -c"$CONNS" -d"${2}s" -s "$BENCH_DIR/load/chat.lua" "http://127.0.0.1:$1" \
        -- bench $KEY "cpu-$RANDOM$RANDOM" 2>&1 | grep -o '"requests":[0-9]*' | cut -d: -f2
}

start floor "$ROOT" $((PORT_BASE + 10)) "$BENCH_DIR/floor.py" \
    --upstream "http://127.0.0.1:$json_port" --stream-upstream "http://127.0.0.1:$sse_port"
start gateway "$ROOT" $((PORT_BASE + 11)) -m services gateway
[[ -z $OTHER ]] || start "gateway($(basename "$OTHER"))" "$OTHER" $((PORT_BASE + 12)) -m services gateway

# Idle first (after start-up settles): nothing but the servers' own timers.
sleep 3
declare -A idle
for i in "${!NAMES[@]}"; do idle[$i]=$(ticks "${SERVERS[$i]}"); done
sleep "$IDLE_SECS"
for i in "${!NAMES[@]}"; do idle[$i]=$(($(ticks "${SERVERS[$i]}") - idle[$i])); done

for i in "${!NAMES[@]}"; do load "${PORTS[$i]}" 3 >/dev/null; done # warm-up
declare -A per
for ((r = 0; r < ROUNDS; r++)); do
    for i in "${!NAMES[@]}"; do
        t0=$(ticks "${SERVERS[$i]}")
        n=$(load "${PORTS[$i]}" "$SECS")
        t1=$(ticks "${SERVERS[$i]}")
        per[$i]="${per[$i]:-} $(awk -v t="$((t1 - t0))" -v n="$n" -v hz="$HZ" 'BEGIN {printf "%.0f", t / hz / n * 1e6}')"
    done
done

printf "%-24s %-34s %8s %16s\n" "" "CPU us/request, each round" "min" "idle CPU share"
for i in "${!NAMES[@]}"; do
    min=$(tr ' ' '\n' <<<"${per[$i]}" | grep . | sort -n | head -1)
    printf "%-24s %-34s %8s %15.2f%%\n" "${NAMES[$i]}" "${per[$i]# }" "$min" \
        "$(awk -v t="${idle[$i]}" -v s="$IDLE_SECS" -v hz="$HZ" 'BEGIN {print t / hz / s * 100}')"
done
