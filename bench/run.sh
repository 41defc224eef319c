#!/usr/bin/env bash
# Benchmark: direct upstream vs a bare relay (the floor) vs the gateway
# (embedded and distributed mode) vs the LiteLLM proxy, against a fake
# OpenAI-compatible nginx upstream.
#
#   bench/run.sh            (what `make bench` runs)
#   BENCH_QUICK=1 bench/run.sh
#
# Knobs (environment):
#   BENCH_DURATION        seconds per measurement point       (10; quick: 2)
#   BENCH_WARMUP          minimum seconds of warm-up load      (5; quick: 2)
#   BENCH_WARMUP_REQUESTS minimum warm-up requests per target  (500; quick: 200)
#                         (LiteLLM answers its first ~150 requests slowly)
#   BENCH_WARMUP_MAX      warm-up stops after this many seconds anyway (30)
#   BENCH_TTFT_WARMUP     streaming requests before measuring  (50; quick: 10)
#   BENCH_CONNECTIONS     connections of the concurrent run    (64)
#   BENCH_QUICK           1 = short smoke run
#   BENCH_MODES           "pinned unpinned" (either or both)
#   BENCH_TARGETS         "direct floor embedded distributed litellm" (any subset)
#   BENCH_UPSTREAM_DELAY  seconds the upstream waits before answering (0)
#   BENCH_REDIS_URL       Redis for distributed mode   (redis://127.0.0.1:6379/0)
#   BENCH_DATABASE_URL    PostgreSQL for distributed mode
#                         (postgresql://postgres@127.0.0.1:5432/test)
#   BENCH_START_TIMEOUT   seconds a server may take to become ready (90)
#   BENCH_PORT_BASE       ports used: base+1, +2 (upstream), +80..+84, +100,
#                         +200, +300 (18000)
#   BENCH_RETRIES         a point disturbed by other processes (> 0.1 CPU) is
#                         run again up to this many times; the least
#                         disturbed attempt is kept (2)
#   BENCH_KEEP_TMP        1 = keep the temporary directory (logs, configs)
#   BENCH_PROFILE         1 = after the measurements, profile each proxy with
#                         py-spy under the concurrent load (not measured);
#                         summaries land in bench/results/<run>/<mode>/<target>/
#
# All traffic goes to 127.0.0.1. Every process started here is stopped on exit.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")

QUICK=${BENCH_QUICK:-0}
if [[ $QUICK == 1 ]]; then
    DURATION=${BENCH_DURATION:-2}
    WARMUP=${BENCH_WARMUP:-2}
    WARMUP_REQUESTS=${BENCH_WARMUP_REQUESTS:-200}
    TTFT_WARMUP=${BENCH_TTFT_WARMUP:-10}
else
    DURATION=${BENCH_DURATION:-10}
    WARMUP=${BENCH_WARMUP:-5}
    WARMUP_REQUESTS=${BENCH_WARMUP_REQUESTS:-500}
    TTFT_WARMUP=${BENCH_TTFT_WARMUP:-50}
fi
WARMUP_MAX=${BENCH_WARMUP_MAX:-30}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
MODES=${BENCH_MODES:-pinned unpinned}
TARGETS=${BENCH_TARGETS:-direct floor embedded distributed litellm}
UPSTREAM_DELAY=${BENCH_UPSTREAM_DELAY:-0}
REDIS_URL_BENCH=${BENCH_REDIS_URL:-redis://127.0.0.1:6379/0}
DATABASE_URL_BENCH=${BENCH_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/test}
FRESH_DB=  # the database distributed mode uses in this run, dropped at the end
START_TIMEOUT=${BENCH_START_TIMEOUT:-90}
PROFILE=${BENCH_PROFILE:-0}
RETRIES=${BENCH_RETRIES:-2}
FOREIGN_LIMIT=0.1 # CPUs used by other processes above which a point is disturbed

LITELLM_VERSION=1.108.7
LITELLM_VENV=$BENCH_DIR/.venv-litellm
GATEWAY_VENV=$ROOT/.venv
PYTHON=${BENCH_PYTHON:-python3}
MASTER_KEY=sk-bench-master-key # also in litellm/config.yaml
MODEL=bench                    # JSON upstream
STREAM_MODEL=bench-stream      # SSE upstream

# Ports: BENCH_PORT_BASE + a fixed offset. The gateway and LiteLLM configs name
# the upstream as 127.0.0.1:18001/18002; run.sh renders them with the real ports.
PORT_BASE=${BENCH_PORT_BASE:-18000}
UPSTREAM_JSON_PORT=$((PORT_BASE + 1))
UPSTREAM_SSE_PORT=$((PORT_BASE + 2))
EMBEDDED_PORT=$((PORT_BASE + 100))
FLOOR_PORT=$((PORT_BASE + 300))
ROUTER_PORT=$((PORT_BASE + 80)) AUTH_PORT=$((PORT_BASE + 81)) CLASSIFIER_PORT=$((PORT_BASE + 82))
CACHE_PORT=$((PORT_BASE + 83)) ANALYTICS_PORT=$((PORT_BASE + 84))
LITELLM_PORT=$((PORT_BASE + 200))

RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS_DIR=$BENCH_DIR/results
RAW_DIR=$RESULTS_DIR/$RUN_ID
TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gateway-bench.XXXXXX")

STARTED_PIDS=()
SERVER_PIDS=()   # processes under test: the ones settle() waits for

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- processes

descendants() {
    local child
    for child in $(pgrep -P "$1" 2>/dev/null || true); do
        echo "$child"
        descendants "$child"
    done
}

# stop_pid PID: TERM the process and its descendants, KILL after 10 s.
stop_pid() {
    local pid=$1 pids i
    kill -0 "$pid" 2>/dev/null || return 0
    pids="$pid $(descendants "$pid" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$? i
    for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${STARTED_PIDS[i]}"
    done
    if [[ -n $FRESH_DB ]]; then
        psql -q "${DATABASE_URL_BENCH%/*}/postgres" -c "DROP DATABASE IF EXISTS $FRESH_DB" >/dev/null 2>&1 || true
    fi
    if [[ ${BENCH_KEEP_TMP:-0} == 1 ]]; then
        log "temporary files kept in $TMP_DIR"
    else
        rm -rf "$TMP_DIR"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_bg LOGFILE CPU CMD...: run CMD in the background (pinned to CPU unless
# CPU is "-"), remember its PID in STARTED_PID.
start_bg() {
    local logfile=$1 cpu=$2
    shift 2
    if [[ $cpu == - ]]; then
        "$@" >"$logfile" 2>&1 &
    else
        taskset -c "$cpu" "$@" >"$logfile" 2>&1 &
    fi
    STARTED_PID=$!
    STARTED_PIDS+=("$STARTED_PID")
}

forget_pid() {
    local keep=() p
    for p in "${STARTED_PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    STARTED_PIDS=("${keep[@]}")
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_ready URL PID...: until GET URL answers 200, while every PID lives.
# On failure, READY_PROBLEM says why.
wait_ready() {
    local url=$1 deadline=$((SECONDS + START_TIMEOUT)) pid
    shift
    READY_PROBLEM=""
    while ((SECONDS < deadline)); do
        for pid in "$@"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                wait "$pid" 2>/dev/null && READY_PROBLEM="exited" || READY_PROBLEM="exited with status $?"
                return 1
            fi
        done
        if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true) == 200 ]]; then
            return 0
        fi
        sleep 0.2
    done
    READY_PROBLEM="no 200 from ${url#http://127.0.0.1:*/} within ${START_TIMEOUT}s"
    return 1
}

# check_chat BASE_URL: one non-streaming and one streaming request must work.
check_chat() {
    local base=$1 body
    body=$(curl -sS --max-time 20 -H "Authorization: Bearer $MASTER_KEY" \
        -H 'Content-Type: application/json' \
        -d "{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"check $RANDOM\"}]}" \
        -w '\nHTTP %{http_code}' "$base/v1/chat/completions" 2>&1) || true
    if [[ $body != *'HTTP 200' || $body != *'"chat.completion"'* ]]; then
        echo "non-streaming check failed: ${body:0:600}"
        return 1
    fi
    body=$(curl -sSN --max-time 20 -H "Authorization: Bearer $MASTER_KEY" \
        -H 'Content-Type: application/json' \
        -d "{\"model\":\"$STREAM_MODEL\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"check $RANDOM\"}]}" \
        -w '\nHTTP %{http_code}' "$base/v1/chat/completions" 2>&1) || true
    if [[ $body != *'HTTP 200' || $body != *'chat.completion.chunk'* || $body != *'[DONE]'* ]]; then
        echo "streaming check failed: ${body:0:600}"
        return 1
    fi
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

tree_rss_kb() {
    local total=0 p
    for p in "$1" $(descendants "$1"); do
        total=$((total + $(rss_kb "$p")))
    done
    echo "$total"
}

# write_status DIR OK MESSAGE [LOGFILE]
write_status() {
    local dir=$1 ok=$2 message=$3 logfile=${4:-}
    local tail_text=""
    [[ -n $logfile && -f $logfile ]] && tail_text=$(tail -n 40 "$logfile")
    "$PYTHON" -c 'import json, sys
json.dump({"ok": sys.argv[1] == "1", "message": sys.argv[2], "log_tail": sys.argv[3]},
          open(sys.argv[4], "w"), indent=1)' "$ok" "$message" "$tail_text" "$dir/status.json"
}

# ---------------------------------------------------------------- setup

ensure_tools() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx-light)
    [[ -f /usr/lib/nginx/modules/ngx_http_echo_module.so ]] || missing+=(libnginx-mod-http-echo)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v curl >/dev/null || missing+=(curl)
    ((${#missing[@]} == 0)) && return 0
    if [[ $(id -u) != 0 ]]; then
        die "missing packages: ${missing[*]} (apt-get install -y ${missing[*]})"
    fi
    log "installing ${missing[*]} from Debian packages"
    apt-get update -qq
    # policy-rc.d is not touched: without systemd the packaged nginx service is
    # not started, and nothing here uses it.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_litellm() {
    if [[ -x $LITELLM_VENV/bin/litellm ]] &&
        [[ $("$LITELLM_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null) == "$LITELLM_VERSION" ]]; then
        return 0
    fi
    log "creating $LITELLM_VENV with litellm[proxy]==$LITELLM_VERSION (one-time, a few minutes)"
    rm -rf "$LITELLM_VENV"
    "$PYTHON" -m venv "$LITELLM_VENV"
    "$LITELLM_VENV/bin/pip" install -q --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION"
}

ensure_gateway_venv() {
    [[ -x $GATEWAY_VENV/bin/python ]] && return 0
    log "gateway virtualenv missing: make -C $ROOT venv"
    make -C "$ROOT" venv >&2 || log "make venv failed; gateway rows will fail"
}

check_cpus() {
    local n
    n=$(nproc)
    if ((n < 2)) && [[ $MODES == *pinned* && $MODES != unpinned ]]; then
        log "only $n CPU: pinned mode needs 2; running unpinned only"
        MODES=unpinned
    fi
}

check_ports() {
    local port
    for port in $UPSTREAM_JSON_PORT $UPSTREAM_SSE_PORT $FLOOR_PORT $EMBEDDED_PORT $ROUTER_PORT \
        $AUTH_PORT $CLASSIFIER_PORT $CACHE_PORT $ANALYTICS_PORT $LITELLM_PORT; do
        port_free "$port" || die "port $port on 127.0.0.1 is in use; stop what listens there or set BENCH_PORT_BASE"
    done
}

# render_config SOURCE DEST: a configuration with the upstream's real ports.
render_config() {
    sed -e "s#127\.0\.0\.1:18001#127.0.0.1:$UPSTREAM_JSON_PORT#g" \
        -e "s#127\.0\.0\.1:18002#127.0.0.1:$UPSTREAM_SSE_PORT#g" "$1" >"$2"
}

# ---------------------------------------------------------------- pieces

start_upstream() {
    local cpu=$1 prefix=$TMP_DIR/nginx sleep_directive=""
    rm -rf "$prefix"
    mkdir -p "$prefix"
    if [[ $UPSTREAM_DELAY != 0 ]]; then
        sleep_directive="echo_sleep $UPSTREAM_DELAY;"
    fi
    sed -e "s#@PREFIX@#$prefix#g" \
        -e "s#@JSON_PORT@#$UPSTREAM_JSON_PORT#g" \
        -e "s#@SSE_PORT@#$UPSTREAM_SSE_PORT#g" \
        -e "s#@SLEEP@#$sleep_directive#g" \
        "$BENCH_DIR/upstream/nginx.conf.template" >"$prefix/nginx.conf"
    start_bg "$prefix/stdout.log" "$cpu" nginx -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log"
    UPSTREAM_PID=$STARTED_PID
    local i
    for ((i = 0; i < 50; i++)); do
        if ! port_free "$UPSTREAM_JSON_PORT" && ! port_free "$UPSTREAM_SSE_PORT"; then
            check_chat_upstream && return 0
        fi
        kill -0 "$UPSTREAM_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$prefix/stdout.log" "$prefix/error.log" >&2 2>/dev/null || true
    die "nginx upstream did not start"
}

check_chat_upstream() {
    curl -sf --max-time 5 -d '{}' "http://127.0.0.1:$UPSTREAM_JSON_PORT/v1/chat/completions" | grep -q chat.completion &&
        curl -sf --max-time 5 -d '{}' "http://127.0.0.1:$UPSTREAM_SSE_PORT/v1/chat/completions" | grep -q DONE
}

# run_wrk OUT_JSON BASE_URL CONNECTIONS SECONDS
run_wrk() {
    local out=$1 base=$2 conns=$3 secs=$4 raw
    raw="${out%.json}.txt"
    $LOAD_PIN wrk -t1 -c"$conns" -d"${secs}s" --timeout 30s -s "$BENCH_DIR/load/chat.lua" \
        "$base" -- "$MODEL" "$MASTER_KEY" "$RUN_ID-$RANDOM$RANDOM" >"$raw" 2>&1 || true
    if grep -q '^WRK_JSON ' "$raw"; then
        grep '^WRK_JSON ' "$raw" | tail -n 1 | cut -d' ' -f2- >"$out"
    else
        "$PYTHON" -c 'import json, sys
json.dump({"error": open(sys.argv[1]).read()[-2000:]}, open(sys.argv[2], "w"))' "$raw" "$out"
    fi
}

cpu_ticks() {
    local total=0 p root all=()
    for root in "$@"; do
        all+=("$root")
        mapfile -t -O "${#all[@]}" all < <(descendants "$root")
    done
    for p in "${all[@]}"; do
        [[ -r /proc/$p/stat ]] || continue
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total"
}

# settle: wait until the servers under test (SERVER_PIDS) are idle again, so
# that requests still queued from one point do not leak into the next one.
# Idle = under 10% of a CPU over half a second; at most 20 s.
settle() {
    local deadline=$((SECONDS + 20)) before after
    ((${#SERVER_PIDS[@]})) || return 0
    while ((SECONDS < deadline)); do
        before=$(cpu_ticks "${SERVER_PIDS[@]}")
        sleep 0.5
        after=$(cpu_ticks "${SERVER_PIDS[@]}")
        ((after - before <= 5)) && return 0
    done
    log "  (servers still busy after 20 s)"
}

# CPU time used on the machine by processes this script did not start, while
# one target was measured: a check that nothing else disturbed the figures.
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4}' /proc/stat; }

own_ticks() {
    # this shell and every child it has waited for (wrk, clients, stopped
    # servers), plus the upstream, which is still running
    # (`times` must run in this shell, not in a subshell: hence the file)
    local own
    times >"$TMP_DIR/times"
    own=$(awk '{for (i = 1; i <= NF; i++) {split($i, a, /[ms]/); t += a[1] * 60 + a[2]}} END {printf "%d", t * 100}' "$TMP_DIR/times")
    OWN_TICKS=$((own + $(cpu_ticks "$UPSTREAM_PID")))
}

foreign_cpu_start() {
    FOREIGN_BUSY0=$(busy_ticks)
    own_ticks
    FOREIGN_OWN0=$OWN_TICKS
    FOREIGN_T0=$EPOCHREALTIME
}

foreign_cpu_end() {
    local busy own
    busy=$(($(busy_ticks) - FOREIGN_BUSY0))
    own_ticks
    own=$((OWN_TICKS - FOREIGN_OWN0))
    "$PYTHON" -c 'import json, sys
busy, own, t0, t1 = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
foreign = max(0, busy - own) / 100
json.dump({"cpu_s": foreign, "wall_s": t1 - t0, "cpus": foreign / (t1 - t0)}, open(sys.argv[5], "w"))' \
        "$busy" "$own" "$FOREIGN_T0" "$EPOCHREALTIME" "$1/foreign_cpu.json"
}

# warm_up DIR BASE_URL: load in 2 s steps (half on one connection, half on
# many) until both WARMUP seconds and WARMUP_REQUESTS requests have passed,
# or WARMUP_MAX seconds.
warm_up() {
    local dir=$1 base=$2 start=$SECONDS total=0 step=0 done_now conns
    while ((SECONDS - start < WARMUP || total < WARMUP_REQUESTS)) && ((SECONDS - start < WARMUP_MAX)); do
        conns=$((step % 2 == 0 ? 1 : CONNECTIONS))
        run_wrk "$dir/warmup.json" "$base" "$conns" 2
        done_now=$(grep -o '"requests":[0-9]*' "$dir/warmup.json" | cut -d: -f2 || true)
        [[ -n $done_now ]] || break
        total=$((total + done_now))
        step=$((step + 1))
    done
    log "  warm-up: $total requests in $((SECONDS - start))s"
    settle
}

# point_own_ticks: CPU ticks of what this script runs: its waited-for children
# (wrk, clients), the upstream and the servers under test, which still run.
point_own_ticks() {
    local children pids
    times >"$TMP_DIR/times"
    children=$(awk '{for (i = 1; i <= NF; i++) {split($i, a, /[ms]/); t += a[1] * 60 + a[2]}} END {printf "%d", t * 100}' "$TMP_DIR/times")
    mapfile -t pids < <(printf '%s\n' "$UPSTREAM_PID" "${SERVER_PIDS[@]}" | sort -u)
    echo $((children + $(cpu_ticks "${pids[@]}")))
}

# run_point DIR NAME FILE... -- CMD...: run one measured point (CMD writes the
# FILEs in DIR) and measure the CPU other processes used meanwhile. When that
# exceeds FOREIGN_LIMIT CPUs, wait a little and run the point again, up to
# RETRIES times; the least disturbed attempt is kept. DIR/NAME.foreign.json
# records it.
run_point() {
    local dir=$1 name=$2 files=() file attempt best="" busy0 own0 t0 foreign tries=()
    shift 2
    while [[ $1 != -- ]]; do
        files+=("$1")
        shift
    done
    shift
    for ((attempt = 0; attempt <= RETRIES; attempt++)); do
        if ((attempt > 0)); then
            log "    disturbed (other processes used $foreign CPUs): again, attempt $((attempt + 1))"
            sleep 5
            settle
        fi
        busy0=$(busy_ticks)
        own0=$(point_own_ticks)
        t0=$EPOCHREALTIME
        "$@"
        foreign=$("$PYTHON" -c 'import sys
busy, own, wall = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) - float(sys.argv[4])
print(f"{max(0, busy - own) / 100 / wall:.3f}")' \
            $(($(busy_ticks) - busy0)) $(($(point_own_ticks) - own0)) "$EPOCHREALTIME" "$t0")
        tries+=("$foreign")
        if [[ -z $best ]] || awk -v a="$foreign" -v b="$best" 'BEGIN {exit !(a < b)}'; then
            best=$foreign
            for file in "${files[@]}"; do
                [[ -e $dir/$file ]] && cp "$dir/$file" "$dir/best-$file"
            done
        fi
        awk -v a="$foreign" -v l="$FOREIGN_LIMIT" 'BEGIN {exit !(a <= l)}' && break
    done
    for file in "${files[@]}"; do
        [[ -e $dir/best-$file ]] && mv "$dir/best-$file" "$dir/$file"
    done
    "$PYTHON" -c 'import json, sys
tries = [float(x) for x in sys.argv[3:]]
json.dump({"cpus": float(sys.argv[2]), "attempts": tries}, open(sys.argv[1], "w"))' \
        "$dir/$name.foreign.json" "$best" "${tries[@]}"
}

run_ttft() {
    local dir=$1 stream_base=$2
    $LOAD_PIN "$PYTHON" "$BENCH_DIR/ttft_client.py" --url "$stream_base" --model "$STREAM_MODEL" \
        --key "$MASTER_KEY" --duration "$DURATION" --warmup "$TTFT_WARMUP" \
        --nonce "$RUN_ID-$RANDOM" >"$dir/ttft.json" 2>"$dir/ttft.err" || true
    [[ -s $dir/ttft.json ]] || "$PYTHON" -c 'import json, sys
json.dump({"error": open(sys.argv[1]).read()[-2000:]}, open(sys.argv[2], "w"))' "$dir/ttft.err" "$dir/ttft.json"
}

# measure DIR BASE_URL [STREAM_BASE_URL]: the load points of one target.
measure() {
    local dir=$1 base=$2 stream_base=${3:-$2}
    warm_up "$dir" "$base"
    log "  non-streaming, 1 connection, ${DURATION}s"
    run_point "$dir" c1 c1.json c1.txt -- run_wrk "$dir/c1.json" "$base" 1 "$DURATION"
    settle
    log "  non-streaming, $CONNECTIONS connections, ${DURATION}s"
    run_point "$dir" concurrent concurrent.json concurrent.txt -- \
        run_wrk "$dir/concurrent.json" "$base" "$CONNECTIONS" "$DURATION"
    settle
    log "  streaming TTFT, 1 connection, ${DURATION}s"
    run_point "$dir" ttft ttft.json ttft.err -- run_ttft "$dir" "$stream_base"
}

# write_rss DIR NAME=PID...: RSS (kB) of processes after the load; the first is the main one.
write_rss() {
    local dir=$1 args=() item
    shift
    for item in "$@"; do
        args+=("${item%%=*}" "$(rss_kb "${item#*=}")" "$(tree_rss_kb "${item#*=}")")
    done
    "$PYTHON" -c 'import json, sys
a = sys.argv[2:]
procs = [{"name": a[i], "rss_kb": int(a[i + 1]), "tree_rss_kb": int(a[i + 2])} for i in range(0, len(a), 3)]
json.dump({"main": procs[0], "processes": procs,
           "total_tree_rss_kb": sum(p["tree_rss_kb"] for p in procs)}, open(sys.argv[1], "w"), indent=1)' \
        "$dir/rss.json" "${args[@]}"
}

ensure_py_spy() {
    [[ -x $GATEWAY_VENV/bin/py-spy ]] && return 0
    [[ -x $GATEWAY_VENV/bin/pip ]] || return 1
    log "installing py-spy into $GATEWAY_VENV"
    "$GATEWAY_VENV/bin/pip" install -q --disable-pip-version-check py-spy >&2
}

# profile DIR BASE_URL PID NAME FOCUS: py-spy samples PID while wrk loads it.
profile() {
    local dir=$1 base=$2 pid=$3 name=$4 focus=$5 load_pid
    [[ $PROFILE == 1 ]] || return 0
    if ! ensure_py_spy; then
        log "  py-spy unavailable: no profile"
        return 0
    fi
    log "  profiling $name under $CONNECTIONS connections, ${DURATION}s (not measured)"
    $LOAD_PIN wrk -t1 -c"$CONNECTIONS" -d"$((${DURATION%.*} + 3))s" --timeout 30s \
        -s "$BENCH_DIR/load/chat.lua" "$base" -- "$MODEL" "$MASTER_KEY" "$RUN_ID-profile-$RANDOM" \
        >"$dir/profile-load.txt" 2>&1 &
    load_pid=$!
    STARTED_PIDS+=("$load_pid")
    sleep 1
    "$GATEWAY_VENV/bin/py-spy" record --pid "$pid" --duration "${DURATION%.*}" --rate 250 --gil \
        --format raw --output "$dir/profile-$name.folded" >"$dir/profile-$name.log" 2>&1 || true
    wait "$load_pid" 2>/dev/null || true
    forget_pid "$load_pid"
    if [[ -s $dir/profile-$name.folded ]]; then
        "$PYTHON" "$BENCH_DIR/profile_summary.py" "$dir/profile-$name.folded" --focus "$focus" \
            >"$dir/profile-$name.txt"
        log "  profile: ${dir#"$BENCH_DIR"/}/profile-$name.txt"
    fi
}

keep_log_tail() {
    if [[ -f $1 ]]; then tail -n 200 "$1" >"$2"; fi
}

bench_direct() {
    local dir=$1
    write_status "$dir" 1 "nginx upstream, no proxy"
    SERVER_PIDS=("$UPSTREAM_PID")
    # The SSE variant of the upstream listens on its own port.
    measure "$dir" "http://127.0.0.1:$UPSTREAM_JSON_PORT" "http://127.0.0.1:$UPSTREAM_SSE_PORT"
    write_rss "$dir" "nginx=$UPSTREAM_PID"
}

bench_floor() {
    local dir=$1 logfile=$TMP_DIR/floor.log pid
    if [[ ! -x $GATEWAY_VENV/bin/python ]]; then
        write_status "$dir" 0 "failed to start: $GATEWAY_VENV missing"
        return 0
    fi
    # The gateway's virtualenv: the same uvicorn, uvloop, httptools and provider client.
    start_bg "$logfile" "$SERVER_CPU" env PYTHONUNBUFFERED=1 \
        env PYTHONPATH="$ROOT" "$GATEWAY_VENV/bin/python" "$BENCH_DIR/floor.py" --host 127.0.0.1 --port "$FLOOR_PORT" \
        --upstream "http://127.0.0.1:$UPSTREAM_JSON_PORT" \
        --stream-upstream "http://127.0.0.1:$UPSTREAM_SSE_PORT"
    pid=$STARTED_PID
    local base="http://127.0.0.1:$FLOOR_PORT" problem=""
    if ! wait_ready "$base/readyz" "$pid"; then
        problem="failed to start ($READY_PROBLEM)"
    elif ! problem=$(check_chat "$base"); then
        problem="started, but $problem"
    fi
    if [[ -n $problem ]]; then
        write_status "$dir" 0 "$problem" "$logfile"
    else
        write_status "$dir" 1 "bench/floor.py: bare uvicorn relay with the router's provider client (pid $pid)"
        SERVER_PIDS=("$pid")
        measure "$dir" "$base"
        write_rss "$dir" "floor=$pid"
        profile "$dir" "$base" "$pid" floor floor.py
    fi
    keep_log_tail "$logfile" "$dir/server.log"
    stop_pid "$pid"
    forget_pid "$pid"
}

bench_embedded() {
    local dir=$1 logfile=$TMP_DIR/embedded.log data=$TMP_DIR/embedded-data pid
    if [[ ! -f $ROOT/services/__main__.py || ! -x $GATEWAY_VENV/bin/python ]]; then
        write_status "$dir" 0 "failed to start: services/__main__.py or $GATEWAY_VENV missing"
        return 0
    fi
    rm -rf "$data"
    mkdir -p "$data"
    start_bg "$logfile" "$SERVER_CPU" env -u REDIS_URL -u DATABASE_URL \
        GATEWAY_CONFIG="$GATEWAY_CONFIG_FILE" GATEWAY_MASTER_KEY="$MASTER_KEY" \
        GATEWAY_DATA_DIR="$data" PYTHONUNBUFFERED=1 \
        "$GATEWAY_VENV/bin/python" -m services gateway --host 127.0.0.1 --port "$EMBEDDED_PORT"
    pid=$STARTED_PID
    local base="http://127.0.0.1:$EMBEDDED_PORT" problem=""
    if ! wait_ready "$base/readyz" "$pid"; then
        problem="failed to start ($READY_PROBLEM)"
    elif ! problem=$(check_chat "$base"); then
        problem="started, but $problem"
    fi
    if [[ -n $problem ]]; then
        write_status "$dir" 0 "$problem" "$logfile"
    else
        write_status "$dir" 1 "python -m services gateway (pid $pid)"
        SERVER_PIDS=("$pid")
        measure "$dir" "$base"
        write_rss "$dir" "gateway=$pid"
        profile "$dir" "$base" "$pid" gateway services/
    fi
    keep_log_tail "$logfile" "$dir/server.log"
    stop_pid "$pid"
    forget_pid "$pid"
}

bench_distributed() {
    local dir=$1 item name port problem="" pids=() names=() ports=() env_common
    local data=$TMP_DIR/distributed-data
    if [[ ! -f $ROOT/services/__main__.py || ! -x $GATEWAY_VENV/bin/python ]]; then
        write_status "$dir" 0 "failed to start: services/__main__.py or $GATEWAY_VENV missing"
        return 0
    fi
    if command -v redis-cli >/dev/null && ! redis-cli -u "$REDIS_URL_BENCH" ping >/dev/null 2>&1; then
        write_status "$dir" 0 "failed to start: Redis not reachable at $REDIS_URL_BENCH"
        return 0
    fi
    rm -rf "$data"
    mkdir -p "$data"
    # A database of its own for each run, on the same server: with rows left by earlier
    # runs (millions) the 1-connection p99 was +36 to +63 ms, and +2.35 ms right after a
    # VACUUM ANALYZE (PostgreSQL's autovacuum on the shared CPU, most likely).
    local database_url=$DATABASE_URL_BENCH fresh=bench_run_$PORT_BASE
    if command -v psql >/dev/null &&
        psql -q "${DATABASE_URL_BENCH%/*}/postgres" -c "DROP DATABASE IF EXISTS $fresh" \
            -c "CREATE DATABASE $fresh" >/dev/null 2>&1; then
        FRESH_DB=$fresh
        database_url=${DATABASE_URL_BENCH%/*}/$fresh
    else
        log "could not create a fresh database; using $DATABASE_URL_BENCH as it is"
    fi
    env_common=(
        "GATEWAY_CONFIG=$GATEWAY_CONFIG_FILE"
        "GATEWAY_MASTER_KEY=$MASTER_KEY"
        "GATEWAY_DATA_DIR=$data"
        "REDIS_URL=$REDIS_URL_BENCH"
        "DATABASE_URL=$database_url"
        "AUTH_URL=http://127.0.0.1:$AUTH_PORT"
        "CLASSIFIER_URL=http://127.0.0.1:$CLASSIFIER_PORT"
        "CACHE_URL=http://127.0.0.1:$CACHE_PORT"
        "ANALYTICS_URL=http://127.0.0.1:$ANALYTICS_PORT"
        "PYTHONUNBUFFERED=1"
    )
    for item in auth:$AUTH_PORT classifier:$CLASSIFIER_PORT cache:$CACHE_PORT \
        analytics:$ANALYTICS_PORT router:$ROUTER_PORT; do
        name=${item%%:*}
        port=${item#*:}
        start_bg "$TMP_DIR/$name.log" "$SERVER_CPU" env "${env_common[@]}" \
            "$GATEWAY_VENV/bin/python" -m services "$name" --host 127.0.0.1 --port "$port"
        pids+=("$STARTED_PID")
        names+=("$name")
        ports+=("$port")
    done
    local router_pid=${pids[4]} i
    for i in "${!names[@]}"; do
        if ! wait_ready "http://127.0.0.1:${ports[i]}/readyz" "${pids[@]}"; then
            local culprit=$i j
            if kill -0 "${pids[i]}" 2>/dev/null; then
                for j in "${!pids[@]}"; do
                    if ! kill -0 "${pids[j]}" 2>/dev/null; then
                        culprit=$j
                        break
                    fi
                done
            fi
            problem="failed to start: ${names[culprit]} ($READY_PROBLEM)"
            write_status "$dir" 0 "$problem" "$TMP_DIR/${names[culprit]}.log"
            break
        fi
    done
    local base="http://127.0.0.1:$ROUTER_PORT"
    if [[ -z $problem ]]; then
        if ! problem=$(check_chat "$base"); then
            problem="started, but $problem"
            write_status "$dir" 0 "$problem" "$TMP_DIR/router.log"
        fi
    fi
    if [[ -z $problem ]]; then
        write_status "$dir" 1 "python -m services router|auth|classifier|cache|analytics (router pid $router_pid)"
        SERVER_PIDS=("${pids[@]}")
        measure "$dir" "$base"
        write_rss "$dir" "router=$router_pid" "auth=${pids[0]}" "classifier=${pids[1]}" \
            "cache=${pids[2]}" "analytics=${pids[3]}"
        profile "$dir" "$base" "$router_pid" router services/
    fi
    for i in "${!names[@]}"; do
        keep_log_tail "$TMP_DIR/${names[i]}.log" "$dir/${names[i]}.log"
    done
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        stop_pid "${pids[i]}"
        forget_pid "${pids[i]}"
    done
}

bench_litellm() {
    local dir=$1 logfile=$TMP_DIR/litellm.log pid problem=""
    if [[ ! -x $LITELLM_VENV/bin/litellm ]]; then
        write_status "$dir" 0 "failed to start: $LITELLM_VENV has no litellm"
        return 0
    fi
    # Production settings from LiteLLM's own documentation: INFO/access logs
    # off, no .env loading, the bundled model price list instead of a fetch at
    # start-up. No database, no Redis, no callbacks, one worker.
    start_bg "$logfile" "$SERVER_CPU" env -u DATABASE_URL -u REDIS_URL \
        LITELLM_LOG=ERROR LITELLM_MODE=PRODUCTION LITELLM_LOCAL_MODEL_COST_MAP=True \
        "$LITELLM_VENV/bin/litellm" --config "$LITELLM_CONFIG_FILE" \
        --host 127.0.0.1 --port "$LITELLM_PORT" --num_workers 1
    pid=$STARTED_PID
    local base="http://127.0.0.1:$LITELLM_PORT"
    if ! wait_ready "$base/health/liveliness" "$pid"; then
        problem="failed to start ($READY_PROBLEM)"
    elif ! problem=$(check_chat "$base"); then
        problem="started, but $problem"
    fi
    if [[ -n $problem ]]; then
        write_status "$dir" 0 "$problem" "$logfile"
    else
        write_status "$dir" 1 "litellm $LITELLM_VERSION proxy (pid $pid)"
        SERVER_PIDS=("$pid")
        measure "$dir" "$base"
        write_rss "$dir" "litellm=$pid"
        profile "$dir" "$base" "$pid" litellm litellm/
    fi
    keep_log_tail "$logfile" "$dir/server.log"
    stop_pid "$pid"
    forget_pid "$pid"
}

write_meta() {
    local gateway_rev
    gateway_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)
    "$PYTHON" - "$RAW_DIR/meta.json" <<EOF
import json, platform, subprocess, sys
def out(*cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception as exc:  # noqa: BLE001
        return f"unavailable ({exc})"
cpu = "unknown"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
json.dump({
    "run_id": "$RUN_ID",
    "quick": "$QUICK" == "1",
    "duration_s": float("$DURATION"),
    "warmup_min_s": float("$WARMUP"),
    "warmup_min_requests": int("$WARMUP_REQUESTS"),
    "warmup_max_s": float("$WARMUP_MAX"),
    "profile": "$PROFILE" == "1",
    "retries": int("$RETRIES"),
    "ttft_warmup_requests": int("$TTFT_WARMUP"),
    "connections": int("$CONNECTIONS"),
    "port_base": int("$PORT_BASE"),
    "modes": "$MODES".split(),
    "targets": "$TARGETS".split(),
    "upstream_delay_s": float("$UPSTREAM_DELAY"),
    "cpu": cpu,
    "cpus": int("$(nproc)"),
    "kernel": platform.release(),
    "gateway_revision": "$gateway_rev",
    "versions": {
        "nginx": out("nginx", "-v"),
        "wrk": out("wrk", "-v"),
        "python": platform.python_version(),
        "gateway_python": out("$GATEWAY_VENV/bin/python", "-V"),
        "litellm": out("$LITELLM_VENV/bin/python", "-c",
                       "import importlib.metadata as m; print(m.version('litellm'))"),
    },
    "litellm_settings": {
        "flags": "--num_workers 1 (uvicorn, uvloop), no database, no Redis, no callbacks",
        "env": {"LITELLM_LOG": "ERROR", "LITELLM_MODE": "PRODUCTION",
                "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        "config": "bench/litellm/config.yaml",
    },
    "pinning": {
        "pinned": "floor/gateway/LiteLLM on CPU 0 (taskset -c 0); nginx and load generator on CPU 1",
        "unpinned": "no affinity set",
    },
}, open(sys.argv[1], "w"), indent=1)
EOF
}

# ---------------------------------------------------------------- main

main() {
    cd "$ROOT" # `python -m services` imports the package from here
    ensure_tools
    check_cpus
    check_ports
    GATEWAY_CONFIG_FILE=$TMP_DIR/gateway-bench.yaml
    LITELLM_CONFIG_FILE=$TMP_DIR/litellm-config.yaml
    render_config "$BENCH_DIR/gateway/gateway-bench.yaml" "$GATEWAY_CONFIG_FILE"
    render_config "$BENCH_DIR/litellm/config.yaml" "$LITELLM_CONFIG_FILE"
    [[ $TARGETS == *litellm* ]] && ensure_litellm
    [[ $TARGETS == *floor* || $TARGETS == *embedded* || $TARGETS == *distributed* ]] && ensure_gateway_venv
    mkdir -p "$RAW_DIR"
    write_meta
    log "run $RUN_ID: modes [$MODES], targets [$TARGETS], ${DURATION}s per point"

    local mode target dir
    for mode in $MODES; do
        if [[ $mode == pinned ]]; then
            SERVER_CPU=0
            LOAD_CPU=1
            LOAD_PIN="taskset -c $LOAD_CPU"
        else
            SERVER_CPU=-
            LOAD_CPU=-
            LOAD_PIN=""
        fi
        log "== $mode =="
        start_upstream "$LOAD_CPU"
        for target in $TARGETS; do
            dir=$RAW_DIR/$mode/$target
            mkdir -p "$dir"
            foreign_cpu_start
            log "-- $target"
            case $target in
                direct) bench_direct "$dir" ;;
                floor) bench_floor "$dir" ;;
                embedded) bench_embedded "$dir" ;;
                distributed) bench_distributed "$dir" ;;
                litellm) bench_litellm "$dir" ;;
                *) die "unknown target $target" ;;
            esac
            foreign_cpu_end "$dir"
        done
        stop_pid "$UPSTREAM_PID"
        forget_pid "$UPSTREAM_PID"
    done

    "$PYTHON" "$BENCH_DIR/report.py" "$RAW_DIR" --json "$RESULTS_DIR/$RUN_ID.json" |
        tee "$RESULTS_DIR/$RUN_ID.txt"
    cp "$RESULTS_DIR/$RUN_ID.json" "$RESULTS_DIR/latest.json"
    cp "$RESULTS_DIR/$RUN_ID.txt" "$RESULTS_DIR/latest.txt"
    log "results: bench/results/$RUN_ID.json (raw files in bench/results/$RUN_ID/)"
}

main "$@"
