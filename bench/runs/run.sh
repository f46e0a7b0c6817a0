#!/usr/bin/env bash
# Overhead of governed runs: `airlock plan` + `airlock apply` (the approval between them is not
# timed: it is a human step) vs raw `terraform plan -out` + `terraform apply PLAN`, on stacks of
# 500 and 2,000 `terraform_data`, through an airlock server (so the backend is the same and only
# the governance overhead differs). Each round changes every resource; rounds alternate the
# variants; medians are reported, with every round's figure so the noise shows.
# Two figures per variant: wall time, and CPU time (user + system of the client processes and
# their children, terraform included, plus the server's CPU during the round): CPU stays
# meaningful when other jobs load the machine, wall time does not.
# Round trips: the server logs every request (`--log-level info`); per governed round the bench
# counts airlock's own API requests (`/api/`) and Terraform's state requests (`/state/`, which a
# raw round makes too).
#
#   bench/runs/run.sh [ROUNDS] [SIZES]      (default 5, "500 2000")
#   AIRLOCK_BIN=path/to/airlock             measure that binary instead of building
#   AIRLOCK_BEFORE_BIN=path/to/old/airlock  also measure an older airlock (its own server and
#                                           stacks) in the same rounds: before/after in one run
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
# Absolute: the apply step runs in the stack's directory.
AIRLOCK_BIN="$(realpath "$AIRLOCK_BIN")"
[ -n "${AIRLOCK_BEFORE_BIN:-}" ] && AIRLOCK_BEFORE_BIN="$(realpath "$AIRLOCK_BEFORE_BIN")"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$work"; }
trap cleanup EXIT
: > "$work/terraformrc"
export TF_CLI_CONFIG_FILE="$work/terraformrc"
command -v bc >/dev/null || { apt-get install -y -q bc >/dev/null 2>&1 || { echo "needs bc" >&2; exit 1; }; }

declare -A BIN URL ADMIN AGENT APPROVER CI SPID
start_server() { # variant binary
    local v="$1" bin="$2" d="$work/server-$1"
    mkdir -p "$d"
    "$bin" server --listen 127.0.0.1:0 --data-dir "$d/data" --log-level info > "$d/out" 2>"$d/err" &
    SPID[$v]=$!; pids+=("$!")
    for _ in $(seq 100); do grep -q '^listening on' "$d/out" 2>/dev/null && break; sleep 0.1; done
    BIN[$v]="$bin"; URL[$v]="$(sed -n 's/^listening on //p' "$d/out")"; ADMIN[$v]="$(sed -n 's/^admin token: //p' "$d/out")"
    local tok=(env AIRLOCK_URL="${URL[$v]}" AIRLOCK_TOKEN="${ADMIN[$v]}" "$bin")
    "${tok[@]}" user create bench-approver >/dev/null
    secret() { python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])'; }
    AGENT[$v]="$("${tok[@]}" token create --name bench-agent --role agent --format json | secret)"
    APPROVER[$v]="$("${tok[@]}" token create --name bench-approver --role approver --user bench-approver --format json | secret)"
    CI[$v]="$("${tok[@]}" token create --name bench-ci --role ci --format json | secret)"
}
variants="raw gov"
start_server gov "$AIRLOCK_BIN"
if [ -n "${AIRLOCK_BEFORE_BIN:-}" ]; then
    start_server before "$AIRLOCK_BEFORE_BIN"
    variants="raw before gov"
fi

write_config() { # dir round size
    printf 'resource "terraform_data" "r" {\n  count = %s\n  input = "round-%s-${count.index}"\n}\n' "$3" "$2" > "$1/main.tf"
}
setup() { # variant size (raw rounds use the gov server's state backend)
    local v="$1" n="$2" sv="$1"; [ "$v" = raw ] && sv=gov
    local dir="$work/$v$n"
    AIRLOCK_URL="${URL[$sv]}" AIRLOCK_TOKEN="${ADMIN[$sv]}" "${BIN[$sv]}" stack create "bench/$v$n" >/dev/null
    mkdir -p "$dir"
    AIRLOCK_URL="${URL[$sv]}" AIRLOCK_TOKEN="${ADMIN[$sv]}" "${BIN[$sv]}" backend-config "bench/$v$n" > "$dir/backend.tf"
    write_config "$dir" 0 "$n"
    if [ "$v" = raw ]; then
        (cd "$dir" && TF_HTTP_USERNAME=airlock TF_HTTP_PASSWORD="${ADMIN[gov]}" terraform init -input=false >/dev/null)
    fi
}

now() { date +%s.%N; }
server_cpu() { awk '{print ($14 + $15) / 100}' "/proc/${SPID[$1]}/stat"; }
# Runs "$@" and prints the user + system CPU seconds of it and its children (a failure is
# reported on stderr: its figures would measure nothing).
cpu_of() { ( "$@" >/dev/null 2>&1 || echo "FAILED (figures invalid): $*" >&2; times ) | awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); print u[1] * 60 + u[2] + s[1] * 60 + s[2] }'; }
log_lines() { wc -l < "$work/server-$1/err"; }
count_requests() { awk '/path="?\/api\//{a++} /path="?\/state\//{s++} END {print a+0, s+0}'; }

raw_cmds() { # dir
    cd "$1" && export TF_HTTP_USERNAME=airlock TF_HTTP_PASSWORD="${ADMIN[gov]}" &&
        terraform plan -input=false -out=plan.tfplan && terraform apply -input=false plan.tfplan
}
gov_plan() { # variant size dir
    AIRLOCK_URL="${URL[$1]}" AIRLOCK_TOKEN="${AGENT[$1]}" "${BIN[$1]}" plan "$3" --stack "bench/$1$2" --format json > "$work/run.json"
}
gov_apply() { # variant run dir
    cd "$3" && AIRLOCK_URL="${URL[$1]}" AIRLOCK_TOKEN="${CI[$1]}" "${BIN[$1]}" apply "$2"
}
# One round: prints "WALL CPU"; a governed round writes its request counts to $work/requests-VARIANT-SIZE.
round() { # variant size round
    local v="$1" n="$2" dir="$work/$1$2" sv="$1"; [ "$v" = raw ] && sv=gov
    write_config "$dir" "$3" "$n"
    local s0 t0 c l0 l1 l2 run t1 t2 s1 s2 c2
    s0=$(server_cpu "$sv"); t0=$(now)
    if [ "$v" = raw ]; then
        c=$(cpu_of raw_cmds "$dir")
        echo "$(echo "$(now) - $t0" | bc) $(echo "$c + $(server_cpu "$sv") - $s0" | bc)"
        return
    fi
    l0=$(log_lines "$v")
    c=$(cpu_of gov_plan "$v" "$n" "$dir")
    t1=$(now); s1=$(server_cpu "$v"); l1=$(log_lines "$v")
    run="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run"]["id"])' "$work/run.json")"
    AIRLOCK_URL="${URL[$v]}" AIRLOCK_TOKEN="${APPROVER[$v]}" "${BIN[$v]}" approve "$run" >/dev/null
    t2=$(now); s2=$(server_cpu "$v"); l2=$(log_lines "$v")
    c2=$(cpu_of gov_apply "$v" "$run" "$dir")
    echo "plan $(sed -n "$((l0 + 1)),${l1}p" "$work/server-$v/err" | count_requests) apply $(tail -n +"$((l2 + 1))" "$work/server-$v/err" | count_requests)" > "$work/requests-$v-$n"
    echo "$(echo "$(now) - $t2 + $t1 - $t0" | bc) $(echo "$c + $c2 + $(server_cpu "$v") - $s2 + $s1 - $s0" | bc)"
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

for n in $sizes; do
    for v in $variants; do setup "$v" "$n"; round "$v" "$n" 0 >/dev/null; done # warm-up: creates the resources
done
declare -A WALL CPU
read -r -a vs <<< "$variants"
for i in $(seq 1 "$rounds"); do
    # Each round starts with another variant: on a machine whose speed drifts within a round,
    # a fixed order would always charge the drift to the same one.
    order=("${vs[@]:i % ${#vs[@]}}" "${vs[@]:0:i % ${#vs[@]}}")
    for n in $sizes; do
        for v in "${order[@]}"; do
            read -r w c <<< "$(round "$v" "$n" "$i")"
            WALL[$v$n]="${WALL[$v$n]:-} $w"; CPU[$v$n]="${CPU[$v$n]:-} $c"
            echo "round $i, $n resources, $v: wall ${w}s, CPU ${c}s" >&2
        done
    done
done
echo "rounds: $rounds per size and variant, alternating; load average at the end: $(uptime | sed 's/.*load average: //')"
for n in $sizes; do
    target=1.10; [ "$n" -ge 2000 ] && target=1.05
    echo "$n terraform_data, every one changed per round:"
    for v in $variants; do
        read -r -a w <<< "${WALL[$v$n]}"; read -r -a c <<< "${CPU[$v$n]}"
        printf '  %-7s wall median %7.2fs (%s)  CPU median %7.2fs (%s)\n' "$v" "$(median "${w[@]}")" "${w[*]}" "$(median "${c[@]}")" "${c[*]}"
    done
    read -r -a rw <<< "${WALL[raw$n]}"; read -r -a rc <<< "${CPU[raw$n]}"
    for v in $variants; do
        [ "$v" = raw ] && continue
        read -r -a w <<< "${WALL[$v$n]}"; read -r -a c <<< "${CPU[$v$n]}"
        read -r _ pa ps _ aa as < "$work/requests-$v-$n"
        echo "  $v/raw: wall ratio $(echo "scale=3; $(median "${w[@]}") / $(median "${rw[@]}")" | bc), CPU ratio $(echo "scale=3; $(median "${c[@]}") / $(median "${rc[@]}")" | bc) (target <= $target); requests: airlock plan $pa API + $ps state, airlock apply $aa API + $as state"
        # The same ratio taken within each round (the two ran minutes apart at most, in
        # rotating order), then the median over rounds: a drift of the machine's speed across
        # rounds moves both halves of a pair, not the ratio.
        pr=()
        for j in "${!c[@]}"; do pr+=("$(echo "scale=3; ${c[$j]} / ${rc[$j]}" | bc)"); done
        echo "  $v/raw: CPU ratio within each round, median $(median "${pr[@]}") (${pr[*]})"
    done
    # What a governed run adds that cannot go: two `terraform show -json` of its plan that raw
    # Terraform does not make (the planner's, which the server judges and reviewers read, and
    # the applier's check that the approved binary says the same), each as airlock runs it
    # (GOGC=400), measured apart on the last raw round's plan, in this run. Not a floor: in a
    # governed run they overlap other work, and runs have measured below this line.
    sh=()
    for _ in 1 2 3; do
        sh+=("$(cpu_of sh -c "cd '$work/raw$n' && TF_HTTP_USERNAME=airlock TF_HTTP_PASSWORD='${ADMIN[gov]}' GOGC=400 terraform show -json plan.tfplan")")
    done
    echo "  raw + shows: raw CPU + 2 x terraform show -json measured apart ($(median "${sh[@]}")s CPU each, median of 3) = ratio $(echo "scale=3; ($(median "${rc[@]}") + 2 * $(median "${sh[@]}")) / $(median "${rc[@]}")" | bc) (target <= $target)"
done
