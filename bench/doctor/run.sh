#!/usr/bin/env bash
# `airlock doctor` benchmark (issue 16): a generated repository of 5,000 `.tf` files (490 root
# modules of 10 files, 50 modules; see gen.py). Target: <= 2 s. Reports wall time, CPU time and
# peak memory (maximum resident set size) of one run, from /usr/bin/time -v.
#
#   bench/doctor/run.sh [FILES]     (default 5000)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
bin="${AIRLOCK_BIN:-}"
if [ -z "$bin" ]; then
    cargo build --release -q -p airlock
    bin="$CARGO_TARGET_DIR/release/airlock"
fi
files="${1:-5000}"
repo="$(mktemp -d)"
trap 'rm -rf "$repo"' EXIT
python3 bench/doctor/gen.py "$repo" "$files"
echo "$(nproc) CPUs; first run (cold cache) is discarded"
"$bin" doctor "$repo" --format json >/dev/null
/usr/bin/time -v "$bin" doctor "$repo" --format json 2>"$repo.time" >"$repo.json" || true
grep -E "Elapsed|User time|System time|Maximum resident" "$repo.time"
python3 - "$repo.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("scanned:", r["scanned"])
print("verdicts:", {q["id"]: q["verdict"] for q in r["questions"]}, "evidence:", sum(len(q["evidence"]) for q in r["questions"]))
PY
rm -f "$repo.time" "$repo.json"
