#!/usr/bin/env bash
# The write path of issue 17 §1, measured against its floor: 1 MB lock + write + unlock cycles
# of Terraform's http backend, 1 client and 8 clients, on SQLite, in alternating rounds:
#   floor   `airlock-bench-loadgen floor-server`: the least a server does per cycle (reads the
#           requests, hashes the body with SHA-256 and MD5 as airlock does, checks Content-MD5,
#           appends 16 KiB and fdatasyncs; no parsing, database or async runtime);
#   before  AIRLOCK_BEFORE_BIN, when given;
#   after   AIRLOCK_BIN (default: a release build of this tree).
# Each round runs every variant for SECS seconds with 1 client, then with 8, on new stacks; the
# medians over the rounds are printed, with their ranges. Alternating rounds put every variant
# under the same changes of the machine's load (on a shared machine a server's CPU per cycle
# moves by ±20 % from one minute to the next), which one long run per variant does not.
# The load generator renders and hashes its timed versions before the timed cycles
# (`--prepare-mib`), so its CPU while timed is sending only (it shares the 2 cores).
#
#   bench/state/write.sh [ROUNDS=5] [SECS=4]
set -euo pipefail
rounds="${1:-5}" secs="${2:-4}"
. "$(dirname "${BASH_SOURCE[0]}")/builds.sh"
out="${BENCH_OUT:-$here/out/write-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

declare -A URL TOKEN PID
variants=(floor)
start() { # start NAME COMMAND...
    local name="$1"
    shift
    rm -rf "${out:?}/$name"
    mkdir -p "$out/$name"
    "$@" >"$out/$name.log" 2>&1 &
    PID[$name]=$!
    pids+=("$!")
    for _ in $(seq 1 300); do
        URL[$name]="$(sed -n 's/^listening on //p' "$out/$name.log" | head -n1)"
        [ -n "${URL[$name]}" ] && break
        sleep 0.1
    done
    [ -n "${URL[$name]}" ] || { echo "write.sh: $name did not start; see $out/$name.log" >&2; exit 1; }
    TOKEN[$name]="$(sed -n 's/^admin token: //p' "$out/$name.log" | head -n1)"
}
airlock() { exec env -u AIRLOCK_DATABASE_URL -u AIRLOCK_DATA_DIR "$1" server --listen 127.0.0.1:0 --data-dir "$2"; }
start floor "$lg" floor-server --listen 127.0.0.1:0 --dir "$out/floor"
if [ -n "${AIRLOCK_BEFORE_BIN:-}" ]; then
    start before airlock "$AIRLOCK_BEFORE_BIN" "$out/before"
    variants+=(before)
fi
start after airlock "$AIRLOCK_BIN" "$out/after"
variants+=(after)

echo "write.sh: $rounds rounds of ${secs} s per variant and client count; load $(cut -d' ' -f1-3 /proc/loadavg); results in $out" >&2
for r in $(seq 1 "$rounds"); do
    # Each round starts with another variant (a drift of the machine's speed within a round
    # is not charged to the same one every time).
    order=("${variants[@]:r % ${#variants[@]}}" "${variants[@]:0:r % ${#variants[@]}}")
    for clients in 1 8; do
        for v in "${order[@]}"; do
            prefix="bench/w$r-c$clients"
            stacks="$(seq -s, -f "$prefix-%g" 0 $((clients - 1)))"
            "$lg" create-stacks --url "${URL[$v]}" --token "${TOKEN[$v]}" --stacks "$stacks" >/dev/null
            "$lg" latency --urls "${URL[$v]}" --token "${TOKEN[$v]}" --stack-prefix "$prefix" \
                --clients "$clients" --state-bytes 1000000 --warmup 5 --max-iters 100000 \
                --max-secs "$secs" --prepare-mib 1024 --server-pids "${PID[$v]}" \
                --tag "$v.c$clients" >"$out/$v-c$clients-$r.txt"
        done
    done
done
echo "write.sh: load at the end $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$out" "$rounds" "${variants[@]}" <<'PY' | tee "$out/report.txt"
import statistics, sys
out, rounds, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
keys = [("server_cpu_ms_per_cycle", "server CPU ms/cycle"), ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"), ("cycles_per_s", "cycles/s"),
        ("loadgen_cpu_ms_per_cycle", "loadgen CPU ms/cycle"),
        ("server_minflt_per_cycle", "page faults/cycle")]
med = {}
for clients in (1, 8):
    print(f"\n{clients} client(s), 1 MB lock+write+unlock, medians of {rounds} rounds [min-max]")
    print("| figure | " + " | ".join(variants) + " |")
    print("|---" * (len(variants) + 1) + "|")
    for key, label in keys:
        cells = []
        for v in variants:
            vals = []
            for r in range(1, rounds + 1):
                for line in open(f"{out}/{v}-c{clients}-{r}.txt"):
                    k, val = line.split()
                    if k == f"{v}.c{clients}.{key}":
                        vals.append(float(val))
            m = statistics.median(vals)
            med[(v, clients, key)] = m
            cells.append(f"{m:.2f} [{min(vals):.2f}-{max(vals):.2f}]")
        print(f"| {label} | " + " | ".join(cells) + " |")
    cpu = lambda v: med[(v, clients, "server_cpu_ms_per_cycle")]
    line = f"after / floor server CPU: {cpu('after') / cpu('floor'):.2f}"
    if "before" in variants:
        line += f"; after / before: {cpu('after') / cpu('before'):.2f}"
    line += f"; after - floor: {cpu('after') - cpu('floor'):.2f} ms"
    print(line)
PY
