#!/usr/bin/env bash
# OIDC: p99 of issuing a phase identity token at 100 requests/s, and of exchanging a CI job's ID
# token (cached JWKS) for an airlock token, against a release `airlock server` (SQLite) on
# loopback, with the test forge issuer (crates/airlock/tests/oidc/issuer.py, RS256).
#
#   bench/oidc/run.sh [SECONDS]      (default 20 s of phase tokens; 9 s of logins)
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${1:-20}"
. scripts/test-deps.sh >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
bin="${AIRLOCK_BIN:-}"
if [ -z "$bin" ]; then cargo build --release -q -p airlock; bin="$CARGO_TARGET_DIR/release/airlock"; fi
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
"$bin" server --listen "127.0.0.1:$port" --public-url "$url" --data-dir "$work/data" --log-level info \
    > "$work/server.out" 2>"$work/server.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening on' "$work/server.out" 2>/dev/null && break; sleep 0.1; done
admin="$(sed -n 's/^admin token: //p' "$work/server.out")"
export AIRLOCK_URL="$url"
AIRLOCK_TOKEN="$admin" "$bin" stack create bench/app >/dev/null
agent="$(AIRLOCK_TOKEN="$admin" "$bin" token create --name bench-agent --role agent --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')"

"$AIRLOCK_TEST_PYTHON" crates/airlock/tests/oidc/issuer.py > "$work/issuer.out" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/issuer.out" ] && break; sleep 0.1; done
issuer="http://127.0.0.1:$(head -n1 "$work/issuer.out")"
AIRLOCK_TOKEN="$admin" "$bin" trust add github --repository org/repo --repository-id 1001 --owner-id 2002 --ref refs/heads/main --role ci \
    --stack 'bench/*' --issuer "$issuer" >/dev/null

python3 bench/oidc/bench.py "$url" "$agent" "$issuer" "$secs" "$work/server.log"
