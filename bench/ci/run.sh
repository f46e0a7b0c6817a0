#!/usr/bin/env bash
# Change detection benchmark (issue 11): `airlock ci affected` on synthetic monorepos of 250, 500,
# 1,000 and 2,000 stacks with 300 local modules and a 50-file change. Target: <= 1 s at 1,000.
#
#   bench/ci/run.sh [STACKS...] [--repeat N]     (default: 250 500 1000 2000, 5 runs each)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
bin="${AIRLOCK_BIN:-}"
if [ -z "$bin" ]; then
    cargo build --release -q -p airlock
    bin="$CARGO_TARGET_DIR/release/airlock"
fi
echo "$(nproc) CPUs, $(git --version), $("$bin" --version 2>/dev/null || echo airlock)"
exec python3 bench/ci/bench.py "$(realpath "$bin")" "$@"
