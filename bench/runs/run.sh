#!/usr/bin/env bash
# Overhead of governed runs: `airlock plan` + `airlock apply` (the approval between them is not
# timed: it is a human step) vs raw
# `terraform plan -out` + `terraform apply PLAN`, on a 500-`terraform_data` stack, through the
# same airlock server (so the backend is the same and only the governance overhead differs).
# Each round changes every resource; rounds alternate raw/airlock; medians are reported.
#
#   bench/runs/run.sh [ROUNDS]      (default 5)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${1:-5}"
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

"$bin" server --listen 127.0.0.1:0 --data-dir "$work/data" > "$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 100); do grep -q '^listening on' "$work/server.out" 2>/dev/null && break; sleep 0.1; done
export AIRLOCK_URL="$(sed -n 's/^listening on //p' "$work/server.out")"
admin="$(sed -n 's/^admin token: //p' "$work/server.out")"
token() { AIRLOCK_TOKEN="$admin" "$bin" token create --name "$1" --role "$2" "${@:3}" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])'; }
AIRLOCK_TOKEN="$admin" "$bin" user create bench-approver >/dev/null
agent="$(token bench-agent agent)"; approver="$(token bench-approver approver --user bench-approver)"; ci="$(token bench-ci ci)"

setup() { # stack dir
    AIRLOCK_TOKEN="$admin" "$bin" stack create "$1" >/dev/null
    mkdir -p "$2"
    AIRLOCK_TOKEN="$admin" "$bin" backend-config "$1" > "$2/backend.tf"
    write_config "$2" 0
}
write_config() { # dir round
    printf 'resource "terraform_data" "r" {\n  count = 500\n  input = "round-%s-${count.index}"\n}\n' "$2" > "$1/main.tf"
}
setup bench/raw "$work/raw"
setup bench/gov "$work/gov"
(cd "$work/raw" && TF_HTTP_USERNAME=airlock TF_HTTP_PASSWORD="$admin" terraform init -input=false >/dev/null)

now() { date +%s.%N; }
raw_round() {
    write_config "$work/raw" "$1"
    local t0; t0=$(now)
    (cd "$work/raw" && export TF_HTTP_USERNAME=airlock TF_HTTP_PASSWORD="$admin" &&
        terraform plan -input=false -out=plan.tfplan >/dev/null && terraform apply -input=false plan.tfplan >/dev/null)
    echo "$(now) - $t0" | bc
}
gov_round() {
    write_config "$work/gov" "$1"
    # Timed: `airlock plan` and `airlock apply`. The approval between them is a human step.
    local t0 t1 t2 run; t0=$(now)
    AIRLOCK_TOKEN="$agent" "$bin" plan "$work/gov" --stack bench/gov --format json > "$work/run.json" 2>/dev/null
    t1=$(now)
    run="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run"]["id"])' "$work/run.json")"
    AIRLOCK_TOKEN="$approver" "$bin" approve "$run" >/dev/null
    t2=$(now)
    (cd "$work/gov" && AIRLOCK_TOKEN="$ci" "$bin" apply "$run" >/dev/null 2>&1)
    echo "$(now) - $t2 + $t1 - $t0" | bc
}
command -v bc >/dev/null || { apt-get install -y -q bc >/dev/null 2>&1 || { echo "needs bc" >&2; exit 1; }; }

# Warm-up (first apply creates the 500 resources on each stack).
raw_round 0 >/dev/null; gov_round 0 >/dev/null
raws=(); govs=()
for i in $(seq 1 "$rounds"); do
    raws+=("$(raw_round "$i")")
    govs+=("$(gov_round "$i")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mr="$(median "${raws[@]}")"; mg="$(median "${govs[@]}")"
echo "rounds: $rounds (each changes all 500 terraform_data instances); load: $(uptime | sed 's/.*load average: //')"
echo "raw terraform plan -out + apply:            median ${mr}s  (${raws[*]})"
echo "airlock plan + airlock apply:               median ${mg}s  (${govs[*]})"
echo "ratio airlock/raw: $(echo "scale=3; $mg / $mr" | bc)  (target <= 1.10)"
