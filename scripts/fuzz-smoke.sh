#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ briefly, as CI's smoke test: any panic, crash, leak or
# per-input timeout fails the run (the failing input is saved under fuzz/artifacts/TARGET/).
#
#   scripts/fuzz-smoke.sh                                  # every target, 20 s each
#   scripts/fuzz-smoke.sh state_reader lockinfo_reader     # some targets
#   FUZZ_SECONDS=3600 scripts/fuzz-smoke.sh state_reader   # a longer run (the way to fuzz for real)
#   FUZZ_JOBS=2 FUZZ_SECONDS=3600 scripts/fuzz-smoke.sh    # one libFuzzer worker per core
#
# Targets (fuzz/fuzz_targets/): plan_reader, planfile_reader (binary plans), config_parser (airlock.hcl), state_reader,
# lockinfo_reader. New inputs libFuzzer finds are kept in fuzz/corpus/TARGET/ (git-ignored;
# the checked-in seeds are the hand-written files there), so later runs start further along.
# Reproduce a crash with: cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain (libFuzzer's sanitizer
# flags are nightly-only); without nightly it falls back to RUSTC_BOOTSTRAP=1 on stable. Not
# part of scripts/test.sh for that reason.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs="${FUZZ_SECONDS:-20}"
jobs="${FUZZ_JOBS:-1}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: cargo-fuzz is not installed; run: cargo install cargo-fuzz" >&2
    exit 1
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <("${fuzz[@]}" list)
fi

extra=()
if [ "$jobs" -gt 1 ]; then
    extra=(-jobs="$jobs" -workers="$jobs")
fi

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "fuzz-smoke: $t for ${secs}s" >&2
    # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: memory blow-ups fail too.
    if ! "${fuzz[@]}" run "$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 "${extra[@]}" \
        -print_final_stats=1; then
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-smoke: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz-smoke: ${#targets[@]} target(s) ran ${secs}s each without a failure" >&2
