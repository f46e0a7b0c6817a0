#!/usr/bin/env bash
# Instructions per 1 MB lock+write+unlock cycle, counted by callgrind (repeatable on a shared,
# noisy machine, unlike CPU time): the server runs under `valgrind --tool=callgrind`, one
# client makes 5 warm-up cycles and then N timed ones; a run with N=0 counts start-up,
# warm-up and shutdown, so (Ir(N) - Ir(0)) / N is the cost of one cycle.
#
#   bench/state/callgrind.sh AIRLOCK_BIN LOADGEN_BIN [N=20]
#
# Prints `instructions_per_cycle <n>` and leaves the callgrind files (annotate them with
# `callgrind_annotate`) in $BENCH_OUT (default a temporary directory).
set -euo pipefail
bin="$1" loadgen="$2" n="${3:-20}"
out="${BENCH_OUT:-$(mktemp -d)}"
mkdir -p "$out"
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 1; }

run() { # run N: prints the total instruction count of a server that served N timed cycles
    local iters="$1" dir="$out/cg-$1" logf="$out/server-cg-$1.log"
    rm -rf "$dir"
    env -u AIRLOCK_DATABASE_URL -u AIRLOCK_DATA_DIR \
        valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out.$iters" "$bin" server --listen 127.0.0.1:0 --data-dir "$dir" >"$logf" 2>&1 &
    local pid=$! url="" token=""
    for _ in $(seq 1 600); do
        url="$(sed -n 's/^listening on //p' "$logf" | head -n1)"
        [ -n "$url" ] && break
        sleep 0.1
    done
    [ -n "$url" ] || { echo "server did not start; see $logf" >&2; kill "$pid"; exit 1; }
    token="$(sed -n 's/^admin token: //p' "$logf" | head -n1)"
    "$loadgen" create-stacks --url "$url" --token "$token" --stacks bench/cg-0 >/dev/null
    "$loadgen" latency --urls "$url" --token "$token" --stack-prefix bench/cg --clients 1 \
        --state-bytes 1000000 --warmup 5 --max-iters "$iters" --max-secs 600 --tag cg >"$out/lat-$iters.txt"
    kill "$pid"
    wait "$pid" || true
    sed -n 's/^summary: //p' "$out/callgrind.out.$iters"
}
base="$(run 0)"
full="$(run "$n")"
echo "instructions_start_warmup $base"
echo "instructions_with_${n}_cycles $full"
echo "instructions_per_cycle $(((full - base) / n))"
