#!/usr/bin/env bash
# Overhead of governed runs: `airlock plan` + `airlock apply` (the approval between them is not
# timed: it is a human step) vs raw `terraform plan -out` + `terraform apply PLAN`, on stacks of
# 500 and 2,000 `terraform_data`, through the same airlock server (so the backend is the same and
# only the governance overhead differs). Each round changes every resource; rounds alternate
# raw/airlock; medians are reported, with every round's time so the noise shows.
# Round trips: the server logs every request (`--log-level info`); per governed round the bench
# counts airlock's own API requests (`/api/`) and Terraform's state requests (`/state/`, which a
# raw round makes too).
#
#   bench/runs/run.sh [ROUNDS] [SIZES]      (default 5, "500 2000")
#   AIRLOCK_BIN=path/to/airlock bench/runs/run.sh   measures that binary instead of building
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${1:-5}"
sizes="${2:-500 2000}"
export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
if [ -z "${AIRLOCK_BIN:-}" ]; then
    cargo build --release -q -p airlock
    AIRLOCK_BIN="$CARGO_TARGET_DIR/release/airlock"
fi
bin="$AIRLOCK_BIN"
work="$(mktemp -d)"
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
: > "$work/terraformrc"
export TF_CLI_CONFIG_FILE="$work/terraformrc"
command -v bc >/dev/null || { apt-get install -y -q bc >/dev/null 2>&1 || { echo "needs bc" >&2; exit 1; }; }

"$bin" server --listen 127.0.0.1:0 --data-dir "$work/data" --log-level info > "$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 100); do grep -q '^listening on' "$work/server.out" 2>/dev/null && break; sleep 0.1; done
export AIRLOCK_URL="$(sed -n 's/^listening on //p' "$work/server.out")"
admin="$(sed -n 's/^admin token: //p' "$work/server.out")"
token() { AIRLOCK_TOKEN="$admin" "$bin" token create --name "$1" --role "$2" "${@:3}" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])'; }
AIRLOCK_TOKEN="$admin" "$bin" user create bench-approver >/dev/null
agent="$(token bench-agent agent)"; approver="$(token bench-approver approver --user bench-approver)"; ci="$(token bench-ci ci)"

setup() { # stack dir size
    AIRLOCK_TOKEN="$admin" "$bin" stack create "$1" >/dev/null
    mkdir -p "$2"
    AIRLOCK_TOKEN="$admin" "$bin" backend-config "$1" > "$2/backend.tf"
    write_config "$2" 0 "$3"
}
write_config() { # dir round size
    printf 'resource "terraform_data" "r" {\n  count = %s\n  input = "round-%s-${count.index}"\n}\n' "$3" "$2" > "$1/main.tf"
}

now() { date +%s.%N; }
log_lines() { wc -l < "$work/server.err"; }
# Requests logged since line $1: "API STATE" counts.
requests_since() { tail -n +"$(($1 + 1))" "$work/server.err" | awk '/path="?\/api\//{a++} /path="?\/state\//{s++} END {print a+0, s+0}'; }
raw_round() { # size round
    local dir="$work/raw$1"
    write_config "$dir" "$2" "$1"
    local t0; t0=$(now)
    (cd "$dir" && export TF_HTTP_USERNAME=airlock TF_HTTP_PASSWORD="$admin" &&
        terraform plan -input=false -out=plan.tfplan >/dev/null && terraform apply -input=false plan.tfplan >/dev/null)
    echo "$(now) - $t0" | bc
}
gov_round() { # size round; prints the seconds, writes the request counts to $work/requestsSIZE
    local dir="$work/gov$1"
    write_config "$dir" "$2" "$1"
    # Timed: `airlock plan` and `airlock apply`. The approval between them is a human step.
    local t0 t1 t2 run l0 l1 l2; l0=$(log_lines); t0=$(now)
    AIRLOCK_TOKEN="$agent" "$bin" plan "$dir" --stack "bench/gov$1" --format json > "$work/run.json" 2>/dev/null
    t1=$(now); l1=$(log_lines)
    run="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run"]["id"])' "$work/run.json")"
    AIRLOCK_TOKEN="$approver" "$bin" approve "$run" >/dev/null
    t2=$(now); l2=$(log_lines)
    (cd "$dir" && AIRLOCK_TOKEN="$ci" "$bin" apply "$run" >/dev/null 2>&1)
    local t3; t3=$(now)
    echo "plan $(tail -n +"$((l0 + 1))" "$work/server.err" | head -n "$((l1 - l0))" | awk '/path="?\/api\//{a++} /path="?\/state\//{s++} END {print a+0, s+0}') apply $(requests_since "$l2")" > "$work/requests$1"
    echo "$t3 - $t2 + $t1 - $t0" | bc
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

for n in $sizes; do
    setup "bench/raw$n" "$work/raw$n" "$n"
    setup "bench/gov$n" "$work/gov$n" "$n"
    (cd "$work/raw$n" && TF_HTTP_USERNAME=airlock TF_HTTP_PASSWORD="$admin" terraform init -input=false >/dev/null)
    # Warm-up (the first apply creates the resources on each stack).
    raw_round "$n" 0 >/dev/null; gov_round "$n" 0 >/dev/null
done
declare -A raws govs
for i in $(seq 1 "$rounds"); do
    for n in $sizes; do
        raws[$n]="${raws[$n]:-} $(raw_round "$n" "$i")"
        govs[$n]="${govs[$n]:-} $(gov_round "$n" "$i")"
    done
done
echo "rounds: $rounds per size, alternating raw/airlock; load after: $(uptime | sed 's/.*load average: //')"
for n in $sizes; do
    read -r -a r <<< "${raws[$n]}"; read -r -a g <<< "${govs[$n]}"
    mr="$(median "${r[@]}")"; mg="$(median "${g[@]}")"
    target=1.10; [ "$n" -ge 2000 ] && target=1.05
    echo "$n terraform_data, every one changed per round:"
    echo "  raw terraform plan -out + apply:   median ${mr}s  (${r[*]})"
    echo "  airlock plan + airlock apply:      median ${mg}s  (${g[*]})"
    echo "  ratio airlock/raw: $(echo "scale=3; $mg / $mr" | bc)  (target <= $target)"
done
for n in $sizes; do
    read -r _ pa ps _ aa as < "$work/requests$n"
    echo "round trips, last governed round of $n: airlock plan $pa API + $ps state (terraform's); airlock apply $aa API + $as state"
done
