#!/usr/bin/env bash
# CPU per in-process API call (`inproc::call`: every MCP tool call and console page makes them):
# the router built once per process (now) vs built per call (before), in one run, alternating
# blocks of calls. See crates/airlock-server/examples/inproc_calls.rs.
#
#   bench/inproc/run.sh [CALLS]      (default 4000 of each)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p airlock-server --example inproc_calls
echo "load: $(uptime | sed 's/.*load average: //')"
"$CARGO_TARGET_DIR/release/examples/inproc_calls" "${1:-4000}"
