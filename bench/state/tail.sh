#!/usr/bin/env bash
# What the slow cycles of issue 17 §1's 1-client p99 wait on: runs an airlock server under
# `strace` (its file syncs only, with wall-clock times), 1 MB lock + write + unlock cycles of one
# client against it, and matches every cycle's write with the syncs that ran during it: of the
# WAL (a commit's), and of the database file (a checkpoint's: SQLite syncs the database file
# only when it checkpoints). Prints the write's p50 / p99 for cycles with and without a
# checkpoint sync, and how many of the slowest 1 % had one.
#
#   bench/state/tail.sh [SECS=20] [CLIENTS=1]
# AIRLOCK_BIN: the server (default: a release build of this tree).
set -euo pipefail
secs="${1:-20}" clients="${2:-1}"
. "$(dirname "${BASH_SOURCE[0]}")/builds.sh"
out="${BENCH_OUT:-$here/out/tail-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out/data"
env -u AIRLOCK_DATABASE_URL -u AIRLOCK_DATA_DIR \
    strace -f -ttt -T -y --seccomp-bpf -e trace=fsync,fdatasync -o "$out/strace.txt" \
    "$AIRLOCK_BIN" server --listen 127.0.0.1:0 --data-dir "$out/data" >"$out/server.log" 2>&1 &
pid=$!
trap 'pkill -P $pid 2>/dev/null || true' EXIT
url=""
for _ in $(seq 1 300); do
    url="$(sed -n 's/^listening on //p' "$out/server.log" | head -n1)"
    [ -n "$url" ] && break
    sleep 0.1
done
[ -n "$url" ] || { echo "tail.sh: the server did not start; see $out/server.log" >&2; exit 1; }
token="$(sed -n 's/^admin token: //p' "$out/server.log" | head -n1)"
stacks="$(seq -s, -f "bench/tail-%g" 0 $((clients - 1)))"
"$lg" create-stacks --url "$url" --token "$token" --stacks "$stacks" >/dev/null
"$lg" latency --urls "$url" --token "$token" --stack-prefix bench/tail --clients "$clients" \
    --state-bytes 1000000 --warmup 5 --max-iters 100000 --max-secs "$secs" --prepare-mib 1024 \
    --cycles-out "$out/cycles.txt" --tag tail >"$out/latency.txt"
# strace outlives a signal (it detaches); the server's end ends it.
pkill -P $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
echo "tail.sh: load $(cut -d' ' -f1-3 /proc/loadavg); results in $out" >&2

python3 - "$out" <<'PY' | tee "$out/report.txt"
import re, statistics, sys
out = sys.argv[1]
# strace -f -ttt -T -y: "PID 1733.123456 fdatasync(7</x/airlock.db-wal>) = 0 <0.001234>", or
# split into "... <unfinished ...>" and "PID 1733.2 <... fdatasync resumed>) = 0 <0.001>".
syncs, pending = [], {}
for line in open(f"{out}/strace.txt"):
    m = re.match(r"(\d+) +([\d.]+) (fsync|fdatasync)\(\d+<([^>]*)>", line)
    if m:
        pid, t, path = m.group(1), float(m.group(2)), m.group(4)
        d = re.search(r"<([\d.]+)>\s*$", line)
        if d:
            syncs.append((t, t + float(d.group(1)), path))
        else:
            pending[pid] = (t, path)
        continue
    m = re.match(r"(\d+) +[\d.]+ <\.\.\. (?:fsync|fdatasync) resumed>.*<([\d.]+)>\s*$", line)
    if m and m.group(1) in pending:
        t, path = pending.pop(m.group(1))
        syncs.append((t, t + float(m.group(2)), path))
cycles = []
for line in open(f"{out}/cycles.txt"):
    at, write, total = (int(x) for x in line.split())
    cycles.append((at / 1e6, (at + write) / 1e6, write / 1e3, total / 1e3))
db = [(a, b) for a, b, p in syncs if not p.endswith("-wal") and p.endswith(".db")]
wal = [(a, b) for a, b, p in syncs if p.endswith("-wal")]
def overlaps(c, spans):
    return [s for s in spans if s[0] < c[1] and s[1] > c[0]]
def pct(v, q):
    v = sorted(v)
    return v[max(0, min(len(v) - 1, int(-(-q * len(v) // 1)) - 1))] if v else float("nan")
with_ck = [c for c in cycles if overlaps(c, db)]
without = [c for c in cycles if not overlaps(c, db)]
print(f"{len(cycles)} cycles, {len(db)} database-file syncs (checkpoints), {len(wal)} WAL syncs")
for name, group in (("all", cycles), ("with a checkpoint sync", with_ck), ("without", without)):
    w = [c[2] for c in group]
    print(f"  write, {name}: {len(group)} cycles, p50 {pct(w, .5):.2f} ms, p99 {pct(w, .99):.2f} ms")
slow = sorted(cycles, key=lambda c: c[2])[-max(1, len(cycles) // 100):]
print(f"slowest 1 % ({len(slow)} writes, >= {slow[0][2]:.2f} ms): {sum(1 for c in slow if overlaps(c, db))} "
      "overlap a checkpoint sync")
longest = lambda c: max((b - a for a, b in overlaps(c, wal)), default=0) * 1e3
print("  their longest WAL sync during the write (ms): "
      + " ".join(f"{longest(c):.1f}" for c in slow))
print("  their write time (ms): " + " ".join(f"{c[2]:.1f}" for c in slow))
w_all = [(b - a) * 1e3 for a, b in wal]
print(f"WAL syncs: p50 {pct(w_all, .5):.2f} ms, p99 {pct(w_all, .99):.2f} ms; "
      f"database-file syncs: p50 {pct([(b - a) * 1e3 for a, b in db], .5):.2f} ms")
PY
