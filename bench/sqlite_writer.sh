#!/usr/bin/env bash
# Instructions per usage event stored by the embedded SQLite store, under callgrind:
# all of them, and those of the worker thread that runs the insert (the rest run on the
# event loop). Each figure is the difference between inserting BATCHES batches of SIZE
# events and only making them (bench/sqlite_writer.py).
#
#   bench/sqlite_writer.sh                  (this tree)
#   bench/sqlite_writer.sh /path/to/tree    (another checkout too, to compare)
#
# Knobs: BATCHES (20), SIZES ("64 37": a full chunk and an uneven batch). Needs valgrind.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
BATCHES=${BATCHES:-20}
SIZES=${SIZES:-64 37}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# count TREE SIZE [OPTION] [--events-only]: instructions collected
count() {
    local tree=$1 size=$2 option=${3:-} only=${4:-}
    (cd "$tree" && PYTHONPATH="$tree" valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out" $option \
        "$tree/.venv/bin/python" "$BENCH_DIR/sqlite_writer.py" "$BATCHES" "$size" $only 2>&1) |
        grep -o 'Collected : [0-9]*' | awk '{print $3}'
}

printf "%-28s %6s %14s %14s\n" "" "batch" "instr/event" "in the thread"
for tree in "$ROOT" ${1:+"$1"}; do
    for size in $SIZES; do
        all=$(($(count "$tree" "$size") - $(count "$tree" "$size" "" --events-only)))
        thread=$(($(count "$tree" "$size" --toggle-collect=thread_run) - $(count "$tree" "$size" --toggle-collect=thread_run --events-only)))
        n=$((BATCHES * size))
        printf "%-28s %6d %14d %14d\n" "$(basename "$tree")" "$size" $((all / n)) $((thread / n))
    done
done
