#!/usr/bin/env bash
# The web console on big inputs (issue 13 §Benchmark), one run:
#  (a) the run page of a 10,000-change plan (`airlock plan` by an agent with real terraform,
#      10,000 terraform_data creates), first page and last page;
#  (b) the diff page between two versions of a ~10 MB state (5,000 instances, 100 changed).
# Server time is the server's own `ms=` for the /ui/ request (its --log-level info line, which
# includes the page's in-process API calls); bytes are the response body; each page is fetched
# 5 times and the median reported. Target: <= 200 ms server time each.
#
#   bench/console/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p airlock
bin="$CARGO_TARGET_DIR/release/airlock"
work="$(mktemp -d)"
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
: > "$work/terraformrc"
export TF_CLI_CONFIG_FILE="$work/terraformrc"

"$bin" server --listen 127.0.0.1:0 --data-dir "$work/data" --log-level info > "$work/server.out" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 100); do grep -q '^listening on' "$work/server.out" 2>/dev/null && break; sleep 0.1; done
export AIRLOCK_URL="$(sed -n 's/^listening on //p' "$work/server.out")"
admin="$(sed -n 's/^admin token: //p' "$work/server.out")"
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
agent="$(AIRLOCK_TOKEN="$admin" "$bin" token create --name bench-agent --role agent --format json | json '["secret"]')"

# (a) A 10,000-change plan, planned and uploaded by an agent.
AIRLOCK_TOKEN="$admin" "$bin" stack create bench/plan >/dev/null
mkdir -p "$work/plan"
AIRLOCK_TOKEN="$admin" "$bin" backend-config bench/plan > "$work/plan/backend.tf"
printf 'resource "terraform_data" "r" {\n  count = 10000\n  input = "value-${count.index}"\n}\n' > "$work/plan/main.tf"
t0=$(date +%s)
run="$(AIRLOCK_TOKEN="$agent" "$bin" plan "$work/plan" --stack bench/plan --format json 2>"$work/plan.err" | json '["run"]["id"]')"
echo "planned $run (10,000 creates) in $(( $(date +%s) - t0 )) s"

# (b) Two versions of a ~10 MB state.
AIRLOCK_TOKEN="$admin" "$bin" stack create bench/state >/dev/null
lineage="0b7c0e4e-1d2b-4f6a-9a51-0c3c0b7f1e22"
put_state() { # serial changed
    python3 bench/console/gen_state.py "$1" "$lineage" "$2" > "$work/state.json"
    local info='{"ID":"bench-'"$1"'","Operation":"OperationTypeApply","Info":"","Who":"bench","Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":""}'
    curl -sf -u "airlock:$admin" -X LOCK --data "$info" "$AIRLOCK_URL/state/bench/state" >/dev/null
    curl -sf -u "airlock:$admin" -X POST --data-binary @"$work/state.json" "$AIRLOCK_URL/state/bench/state?ID=bench-$1" >/dev/null
    curl -sf -u "airlock:$admin" -X UNLOCK --data "$info" "$AIRLOCK_URL/state/bench/state" >/dev/null
}
put_state 1 0
put_state 2 100
echo "state versions: $(wc -c < "$work/state.json") bytes each"

# Sign in as the admin (a browser's flow: the login form's CSRF cookie, then the session cookie).
jar="$work/cookies"
form="$(curl -sf -c "$jar" "$AIRLOCK_URL/ui/login")"
csrf="$(printf '%s' "$form" | sed -n 's/.*name="login_csrf" value="\([0-9a-f]*\)".*/\1/p')"
curl -sf -b "$jar" -c "$jar" -o /dev/null --data-urlencode "token=$admin" --data "login_csrf=$csrf" "$AIRLOCK_URL/ui/login"

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
measure() { # label path
    local ms=() bytes=0 t
    for _ in 1 2 3 4 5; do
        local seen; seen="$(wc -l < "$work/server.log")"
        bytes="$(curl -sf -b "$jar" -o /dev/null -w '%{size_download}' "$AIRLOCK_URL$2")"
        sleep 0.2
        t="$(tail -n "+$((seen + 1))" "$work/server.log" | grep -a "path=${2%%\?*} " | sed -n "s/.* ms=\([0-9]*\).*/\1/p" | tail -1 || true)"
        ms+=("${t:-NaN}")
    done
    printf '%-46s server median %4s ms (%s)  bytes %s\n' "$1" "$(median "${ms[@]}")" "${ms[*]}" "$bytes"
}
echo "load: $(uptime | sed 's/.*load average: //'); CPUs: $(nproc)"
measure "run page, 10,000 changes, page 1" "/ui/runs/$run"
measure "run page, 10,000 changes, page 100" "/ui/runs/$run?page=100"
measure "diff page, 10 MB state, 100 of 5,000 changed" "/ui/stacks/bench%2Fstate/diff?from=1&to=2"
echo "target: <= 200 ms server time each"
