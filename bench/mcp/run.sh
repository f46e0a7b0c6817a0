#!/usr/bin/env bash
# MCP benchmark (issue 12): list_stacks + state_resources on a ~10 MB state over stdio
# (`airlock mcp`), next to the same reads through the CLI (`airlock stack list`, `airlock state
# show`), and tools/list latency (target < 5 ms). One run; medians. See bench/mcp/bench.py.
#
#   bench/mcp/run.sh [ROUNDS]      (default 20)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${1:-20}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
if [ -z "${AIRLOCK_BIN:-}" ]; then
    cargo build --release -q -p airlock
    AIRLOCK_BIN="$CARGO_TARGET_DIR/release/airlock"
fi
work="$(mktemp -d)"
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

"$AIRLOCK_BIN" server --listen 127.0.0.1:0 --data-dir "$work/data" > "$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 100); do grep -q '^listening on' "$work/server.out" 2>/dev/null && break; sleep 0.1; done
url="$(sed -n 's/^listening on //p' "$work/server.out")"
admin="$(sed -n 's/^admin token: //p' "$work/server.out")"
AIRLOCK_URL="$url" AIRLOCK_TOKEN="$admin" "$AIRLOCK_BIN" stack create bench/big >/dev/null
agent="$(AIRLOCK_URL="$url" AIRLOCK_TOKEN="$admin" "$AIRLOCK_BIN" token create --name bench-agent --role agent --format json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')"
python3 bench/mcp/bench.py "$AIRLOCK_BIN" "$url" "$admin" "$agent" "$rounds"
