#!/usr/bin/env bash
# `airlock check` benchmark (DESIGN.md targets: >= 300 MB/s, peak RSS <= 64 MiB at every size,
# >= 100x faster than checkov on the same 10k-change plan).
#
# Generates synthetic plans (gen_plan.py: mixed AWS/GCP/Azure, nested modules, ~1 KB of
# attributes per object) at 1k, 10k, 100k and 1M changes, runs `airlock check --format json` on
# each under /usr/bin/time, then checkov (pip-installed into bench/.venv) on the 10k plan, and
# prints throughput, peak RSS and the ratio. Generated plans are deleted at the end.
#   SIZES="1000 10000"  CHECKOV=0 (skip checkov)  BENCH_OUT=dir  AIRLOCK_BIN=path (skip build)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${BENCH_OUT:-$root/bench/out/check}
sizes=${SIZES:-"1000 10000 100000 1000000"}
mkdir -p "$out"
trap 'rm -f "$out"/plan-*.json "$out"/*.time' EXIT

if [ ! -x /usr/bin/time ]; then
  echo "installing GNU time (/usr/bin/time) ..." >&2
  (apt-get update -qq && apt-get install -y -qq time) >/dev/null
fi

bin=${AIRLOCK_BIN:-}
if [ -z "$bin" ]; then
  cargo build --quiet --release -p airlock --manifest-path "$root/Cargo.toml"
  bin=${CARGO_TARGET_DIR:-$root/target}/release/airlock
fi

now() { date +%s.%N; }
# measure LABEL CMD...: sets SECS and RSS_KB; the command's stdout is discarded.
measure() {
  local label=$1; shift
  local t0 t1 code=0
  t0=$(now)
  /usr/bin/time -v -o "$out/$label.time" "$@" >/dev/null 2>"$out/$label.stderr" || code=$?
  t1=$(now)
  # airlock exits 2 on deny (the synthetic plans delete critical resources); checkov 1 on failed checks.
  if [ "$code" -gt 2 ]; then
    echo "$label failed (exit $code):" >&2; tail -5 "$out/$label.stderr" >&2; exit 1
  fi
  SECS=$(echo "$t1 - $t0" | bc -l)
  RSS_KB=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$out/$label.time")
  # CPU time (user + system): the machine is shared, so wall time alone overstates the cost.
  CPU=$(awk -F': ' '/User time|System time/ {s += $2} END {printf "%.3f", s}' "$out/$label.time")
}

printf '%-9s %9s %9s %9s %9s %9s %12s\n' changes "size MB" "wall s" "MB/s" "cpu s" "MB/cpu-s" "peak RSS MiB"
declare -A secs_at cpu_at
for n in $sizes; do
  plan="$out/plan-$n.json"
  python3 "$here/gen_plan.py" "$n" "$plan"
  bytes=$(stat -c %s "$plan")
  # Warm the page cache so the figure is airlock's, not the disk's.
  cat "$plan" >/dev/null
  measure "airlock-$n" "$bin" check "$plan" --format json
  secs_at[$n]=$SECS
  cpu_at[$n]=$CPU
  mb=$(echo "$bytes/1000000" | bc -l)
  printf '%-9s %9.1f %9.3f %9.0f %9.3f %9.0f %12.1f\n' "$n" "$mb" "$SECS" "$(echo "$mb/$SECS" | bc -l)" \
    "$CPU" "$(echo "$mb/($CPU+0.0005)" | bc -l)" "$(echo "$RSS_KB/1024" | bc -l)"
  [ "$n" = 10000 ] || rm -f "$plan"
done

if [ "${CHECKOV:-1}" = 1 ] && [ -n "${secs_at[10000]:-}" ]; then
  venv="$root/bench/.venv"
  if [ ! -x "$venv/bin/checkov" ]; then
    echo "installing checkov into $venv ..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip >/dev/null
    "$venv/bin/pip" install --quiet checkov >/dev/null
  fi
  measure checkov-10000 "$venv/bin/checkov" -f "$out/plan-10000.json" --framework terraform_plan \
    --quiet --compact --skip-download --output json
  printf '\ncheckov %s on the 10k plan: %.1f s wall, %.1f s CPU, peak RSS %.0f MiB\n' \
    "$("$venv/bin/checkov" --version 2>/dev/null)" "$SECS" "$CPU" "$(echo "$RSS_KB/1024" | bc -l)"
  printf 'airlock check vs checkov on the same plan: %.0fx faster by wall time, %.0fx by CPU time\n' \
    "$(echo "$SECS/${secs_at[10000]}" | bc -l)" "$(echo "$CPU/(${cpu_at[10000]}+0.0005)" | bc -l)"
fi
