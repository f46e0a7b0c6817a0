# Sourced by write.sh and tail.sh: the release builds they measure, into $CARGO_TARGET_DIR
# (default bench/state/target). Sets `here`, `root`, `AIRLOCK_BIN` (built from this tree
# unless given) and `lg` (the load generator).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
if [ -z "${AIRLOCK_BIN:-}" ]; then
    (cd "$root" && cargo build --release --quiet -p airlock)
    AIRLOCK_BIN="$CARGO_TARGET_DIR/release/airlock"
fi
(cd "$here/loadgen" && cargo build --release --quiet)
lg="$CARGO_TARGET_DIR/release/airlock-bench-loadgen"
