#!/usr/bin/env bash
# What judging a mint for a person costs on SQLite as the user's plan-phase tokens pile up
# (0, 10,000, 100,000), next to an own-identity token's mint (no person judged), in one run,
# alternating blocks. See crates/airlock-store/examples/person_mint.rs.
#
#   bench/person-mint/run.sh [MINTS]      (per block, 4 blocks of each per size; default 100)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p airlock-store --example person_mint
echo "load: $(uptime | sed 's/.*load average: //')"
"$CARGO_TARGET_DIR/release/examples/person_mint" "${1:-100}"
