# Shared by bench/cpu.sh, bench/instructions.sh and bench/distributed_cpu.sh (sourced).

# need_tools SCRIPT TOOL...: stop, naming what to install, when a tool is not on the PATH.
need_tools() {
    local script=$1 tool
    shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null || {
            echo "bench/$script needs $tool (apt-get install valgrind nginx-light" \
                "libnginx-mod-http-echo wrk util-linux postgresql-client redis-tools)" >&2
            exit 1
        }
    done
}

# start_upstream DIR JSON_PORT SSE_PORT [CPU]: the benchmark's provider (nginx answering
# JSON on one port and SSE on the other, bench/upstream/nginx.conf.template) in the
# background, on CPU if given; its pid in UPSTREAM_PID.
start_upstream() {
    local dir=$1 json_port=$2 sse_port=$3 cpu=${4:-}
    mkdir -p "$dir"
    sed -e "s#@PREFIX@#$dir#g" -e "s#@JSON_PORT@#$json_port#g" -e "s#@SSE_PORT@#$sse_port#g" \
        -e "s#@SLEEP@##g" -e "s#@DELAY@#0#g" "$BENCH_DIR/upstream/nginx.conf.template" >"$dir/nginx.conf"
    if [[ -n $cpu ]]; then
        taskset -c "$cpu" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" &
    else
        nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" &
    fi
    UPSTREAM_PID=$!
}
