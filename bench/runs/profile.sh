#!/usr/bin/env bash
# Where a governed run's time goes: one `airlock plan` and one `airlock apply` (and, for
# comparison, one raw `terraform plan -out` + `terraform apply PLAN`) of N `terraform_data`
# after a warm-up round, each traced with `strace -f` (process starts and exits) while the
# server logs every request with its duration. Prints one timeline per command: every child
# process with its arguments, start, end and duration, and every request the server answered
# meanwhile (at its end time, with the server's own time). CPU per process is not shown
# (strace slows what it traces a little; run.sh measures CPU).
#
#   bench/runs/profile.sh [N]               (default 500)
#   AIRLOCK_BIN=path/to/airlock             profile that binary instead of building
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${1:-500}"
export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
if [ -z "${AIRLOCK_BIN:-}" ]; then
    cargo build --release -q -p airlock
    AIRLOCK_BIN="$CARGO_TARGET_DIR/release/airlock"
fi
AIRLOCK_BIN="$(realpath "$AIRLOCK_BIN")"
command -v strace >/dev/null || { echo "needs strace" >&2; exit 1; }
work="$(mktemp -d)"
spid=
cleanup() { [ -n "$spid" ] && kill "$spid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
: > "$work/terraformrc"
export TF_CLI_CONFIG_FILE="$work/terraformrc"

"$AIRLOCK_BIN" server --listen 127.0.0.1:0 --data-dir "$work/data" --log-level info > "$work/out" 2> "$work/log" &
spid=$!
for _ in $(seq 100); do grep -q '^listening on' "$work/out" 2>/dev/null && break; sleep 0.1; done
url="$(sed -n 's/^listening on //p' "$work/out")"
admin="$(sed -n 's/^admin token: //p' "$work/out")"
as() { AIRLOCK_URL="$url" AIRLOCK_TOKEN="$1" "${@:2}"; }
secret() { python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])'; }
as "$admin" "$AIRLOCK_BIN" user create prof-approver >/dev/null
agent="$(as "$admin" "$AIRLOCK_BIN" token create --name prof-agent --role agent --format json | secret)"
approver="$(as "$admin" "$AIRLOCK_BIN" token create --name prof-approver --role approver --user prof-approver --format json | secret)"
ci="$(as "$admin" "$AIRLOCK_BIN" token create --name prof-ci --role ci --format json | secret)"
for v in gov raw; do
    as "$admin" "$AIRLOCK_BIN" stack create "prof/$v" >/dev/null
    mkdir -p "$work/$v"
    as "$admin" "$AIRLOCK_BIN" backend-config "prof/$v" > "$work/$v/backend.tf"
done
write_config() { # dir round
    printf 'resource "terraform_data" "r" {\n  count = %s\n  input = "round-%s-${count.index}"\n}\n' "$n" "$2" > "$1/main.tf"
}
raw() { (cd "$work/raw" && TF_HTTP_USERNAME=airlock TF_HTTP_PASSWORD="$admin" "$@"); }
gov_plan() { as "$agent" "$@" "$AIRLOCK_BIN" plan "$work/gov" --stack prof/gov --format json > "$work/run.json"; }
gov_apply() { (cd "$work/gov" && as "$ci" "$@" "$AIRLOCK_BIN" apply "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run"]["id"])' "$work/run.json")" >/dev/null); }
approve() { as "$approver" "$AIRLOCK_BIN" approve "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run"]["id"])' "$work/run.json")" >/dev/null; }

# Warm-up: creates the resources (and initialises the raw directory and the gov checkout).
raw terraform init -input=false >/dev/null
for r in 0 1; do
    write_config "$work/raw" "$r"; raw terraform plan -input=false -out=plan.tfplan >/dev/null; raw terraform apply -input=false plan.tfplan >/dev/null
    write_config "$work/gov" "$r"; gov_plan 2>/dev/null; approve; gov_apply 2>/dev/null
done

# Prints the timeline of strace output $1 (server log lines after line $2, ending before $3).
timeline() {
    python3 - "$1" "$work/log" "$2" "$3" <<'EOF'
import re, sys, datetime
trace, log, first, t_end = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
def secs(hms):
    h, m, s = hms.split(':'); return int(h) * 3600 + int(m) * 60 + float(s)
procs, order, t0 = {}, [], None
for line in open(trace):
    m = re.match(r'(\d+)\s+(\d+:\d+:\d+\.\d+) (.*)', line)
    if not m: continue
    pid, t, rest = int(m[1]), secs(m[2]), m[3]
    t0 = t if t0 is None else t0
    if rest.startswith('execve(') and (rest.endswith('= 0') or '<unfinished' in rest):
        argv = re.search(r'\[(.*?)\]', rest)
        args = [a.strip('"') for a in re.findall(r'"(?:[^"\\]|\\.)*"', argv[1] if argv else '')]
        args = [('…' + a[-40:]) if len(a) > 60 else a for a in args]
        if pid not in procs: order.append(pid)
        procs[pid] = {'start': t, 'args': ' '.join(args[:6]), 'end': None}
    elif 'exit_group(' in rest or '+++ exited' in rest:
        if pid in procs and procs[pid]['end'] is None: procs[pid]['end'] = t
events = []
for pid in order:
    p = procs[pid]
    end = p['end'] if p['end'] is not None else t0
    events.append((p['start'] - t0, f"  start {p['args']}  (pid {pid}; runs {end - p['start']:.3f}s, ends at {end - t0:.3f}s)"))
tz = datetime.datetime.now().astimezone().utcoffset().total_seconds()
for i, line in enumerate(open(log)):
    if i < first: continue
    m = re.match(r'(\S+) .*method=(\S+) path=(\S+).*ms=(\d+)', line)
    if not m: continue
    ts = datetime.datetime.fromisoformat(m[1].replace('Z', '+00:00')).timestamp()
    day = datetime.datetime.fromtimestamp(ts).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    t = ts - day
    events.append((t - t0, f"  request done: {m[2]} {m[3]}, server {m[4]} ms"))
for t, e in sorted(events):
    print(f"{t:7.3f}s{e}")
EOF
}
trace() { # name command... (its output in $work/out.json)
    local name="$1"; shift
    local l0; l0=$(wc -l < "$work/log")
    local t0; t0=$(date +%s.%N)
    strace -f -tt -e trace=execve,exit_group -o "$work/$name.trace" "$@" > "$work/out.json" 2>/dev/null
    local t1; t1=$(date +%s.%N)
    echo "$name: $(echo "$t1 - $t0" | bc) s wall (under strace)"
    timeline "$work/$name.trace" "$l0" "$t1"
}
write_config "$work/raw" 2
trace "raw terraform plan -out" env TF_HTTP_USERNAME=airlock TF_HTTP_PASSWORD="$admin" sh -c "cd '$work/raw' && terraform plan -input=false -out=plan.tfplan"
trace "raw terraform apply PLAN" env TF_HTTP_USERNAME=airlock TF_HTTP_PASSWORD="$admin" sh -c "cd '$work/raw' && terraform apply -input=false plan.tfplan"
write_config "$work/gov" 2
trace "airlock plan" env AIRLOCK_URL="$url" AIRLOCK_TOKEN="$agent" "$AIRLOCK_BIN" plan "$work/gov" --stack prof/gov --format json
cp "$work/out.json" "$work/run.json"
approve
trace "airlock apply" env AIRLOCK_URL="$url" AIRLOCK_TOKEN="$ci" sh -c "cd '$work/gov' && exec '$AIRLOCK_BIN' apply $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run"]["id"])' "$work/run.json")"

# CPU (user + system, median of 3) of the terraform steps governance adds, on this stack.
cpu_of() { ( "$@" >/dev/null 2>&1; times ) | awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); print u[1] * 60 + u[2] + s[1] * 60 + s[2] }'; }
median3() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
fresh_init() {
    rm -rf "$work/fresh-data"
    (cd "$work/raw" && TF_DATA_DIR="$work/fresh-data" TF_HTTP_USERNAME=airlock TF_HTTP_PASSWORD="$admin" terraform init -input=false)
}
show() { (cd "$work/raw" && terraform show -json plan.tfplan); }
startup() { terraform version; }
echo "CPU, median of 3 (user + system seconds), $n resources:"
echo "  terraform init in a fresh data directory: $(median3 "$(cpu_of fresh_init)" "$(cpu_of fresh_init)" "$(cpu_of fresh_init)")"
echo "  terraform show -json PLAN:                $(median3 "$(cpu_of show)" "$(cpu_of show)" "$(cpu_of show)")"
echo "  terraform version (process start):        $(median3 "$(cpu_of startup)" "$(cpu_of startup)" "$(cpu_of startup)")"
echo "load average: $(uptime | sed 's/.*load average: //')"
