#!/usr/bin/env bash
# Drift states in one query (issue 14/15 follow-up): the latency of a `/metrics` scrape and of
# `GET /api/v1/stacks` (both read every stack's drift state) on a server holding STACKS stacks
# with REPORTS drift reports each, for two builds on the same store (SQLite, or PostgreSQL): BASE_BIN
# (before: one query per stack) and AIRLOCK_BIN (after: one query). Rounds alternate the builds;
# medians of the per-request medians are reported, with the CPU count and load.
#
#   BASE_BIN=… AIRLOCK_BIN=… bench/drift-states/run.sh [STACKS] [REPORTS] [ROUNDS]
#   (default 1000 stacks, 8 reports each, 3 rounds of 20 requests per path)
#   On PostgreSQL: scripts/with-postgres.sh env BENCH_ON_POSTGRES=1 BASE_BIN=… AIRLOCK_BIN=… bench/drift-states/run.sh
#   (an empty database at $AIRLOCK_TEST_DATABASE_URL)
set -euo pipefail
cd "$(dirname "$0")/../.."
stacks="${1:-1000}"
reports="${2:-8}"
rounds="${3:-3}"
: "${BASE_BIN:?set BASE_BIN to an airlock build from before the change}"
: "${AIRLOCK_BIN:?set AIRLOCK_BIN to the airlock build to measure}"
work="$(mktemp -d)"
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

start() { # BIN (the admin token minted on the first start stays valid)
    rm -f "$work/server.out"
    local store=(--data-dir "$work/data")
    if [ -n "${BENCH_ON_POSTGRES:-}" ]; then store=(--database-url "$AIRLOCK_TEST_DATABASE_URL"); fi
    "$1" server --listen 127.0.0.1:0 "${store[@]}" > "$work/server.out" 2>"$work/server.err" &
    server_pid=$!
    for _ in $(seq 200); do grep -q '^listening on' "$work/server.out" 2>/dev/null && break; sleep 0.1; done
    url="$(sed -n 's/^listening on //p' "$work/server.out")"
}
stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }

start "$AIRLOCK_BIN"
admin="$(sed -n 's/^admin token: //p' "$work/server.out")"
python3 bench/drift-states/bench.py populate "$url" "$admin" "$stacks" "$reports"
stop

engine=SQLite; [ -n "${BENCH_ON_POSTGRES:-}" ] && engine=PostgreSQL
echo "$(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg); $stacks stacks x $reports drift reports ($engine); $rounds rounds x 20 requests per path"
: > "$work/base.jsonl"; : > "$work/new.jsonl"
for r in $(seq "$rounds"); do
    for side in base new; do
        bin="$BASE_BIN"; [ "$side" = new ] && bin="$AIRLOCK_BIN"
        start "$bin"
        python3 bench/drift-states/bench.py measure "$url" "$admin" 20 >> "$work/$side.jsonl"
        stop
    done
done
python3 - "$work/base.jsonl" "$work/new.jsonl" <<'PY'
import json, statistics, sys
base = [json.loads(l) for l in open(sys.argv[1])]
new = [json.loads(l) for l in open(sys.argv[2])]
for path in ["/metrics", "/api/v1/stacks"]:
    b = statistics.median(x[path] for x in base)
    n = statistics.median(x[path] for x in new)
    print(f"{path:16} before {b:8.1f} ms  after {n:8.1f} ms  ratio after/before {n / b:.3f}")
PY
