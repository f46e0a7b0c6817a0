#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: format and lint checks, then every crate's unit
# and integration tests,
# with a throwaway PostgreSQL cluster for the PostgreSQL engine (scripts/with-postgres.sh) and
# the real terraform binary on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
export CHECKPOINT_DISABLE=1
if ! command -v terraform >/dev/null 2>&1; then
    echo "test.sh: terraform (1.11.x) must be on PATH; the end-to-end tests use the real binary" >&2
    exit 1
fi
# The code's own claims first: formatting, and clippy with warnings as errors (it also keeps
# `rust-version` honest through `incompatible_msrv`, and the library crates deny printing).
# The real external clients the suite drives (MCP SDK and Inspector, GitHub's OpenAPI description,
# playwright-core and chromium), installed once and cached: scripts/test-deps.sh.
. scripts/test-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The local test cloud provider (crates/airlock-testcloud), installed by the tests under
# hashicorp/aws in a filesystem mirror (crates/airlock/tests/it/testcloud.rs).
cargo build --locked -p airlock-testcloud --bin terraform-provider-aws
export AIRLOCK_TESTCLOUD_PROVIDER="${CARGO_TARGET_DIR:-$PWD/target}/debug/terraform-provider-aws"
if cargo nextest --version >/dev/null 2>&1; then
    runner=(cargo nextest run --workspace --no-fail-fast)
else
    runner=(cargo test --workspace --no-fail-fast)
fi
exec scripts/with-postgres.sh "${runner[@]}" "$@"
