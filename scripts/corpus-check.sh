#!/usr/bin/env bash
# Corpus check for `airlock check`: every public plan in shared/fixtures/plans (AWS, GCP, Azure,
# Terraform 0.12 to 1.x, OpenTofu, UTF-16, CI wrapper noise) must be read without error (or with
# the documented warning), and airlock's per-kind counts must equal an independent count of the
# raw `actions` lists. Prints one line per file. Usage: scripts/corpus-check.sh [CORPUS_DIR]
# AIRLOCK_BIN=path skips the build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
corpus=${1:-$root/../shared/fixtures/plans}
bin=${AIRLOCK_BIN:-}
if [ -z "$bin" ]; then
  cargo build --quiet --release -p airlock --manifest-path "$root/Cargo.toml"
  bin=${CARGO_TARGET_DIR:-$root/target}/release/airlock
fi
exec python3 - "$bin" "$corpus" <<'PY'
import json, subprocess, sys, pathlib

bin_, corpus = sys.argv[1], pathlib.Path(sys.argv[2])
KIND = {("no-op",): "no-op", ("create",): "create", ("read",): "read", ("update",): "update",
        ("delete", "create"): "replace", ("create", "delete"): "replace-create-first",
        ("delete",): "delete", ("forget",): "forget", ("create", "forget"): "forget-replace",
        ("forget", "create"): "forget-replace"}

def oracle(raw: bytes):
    """Independent reading: decode, skip lines before the first '{' line, take the first value."""
    if raw.startswith(b"\xff\xfe") or raw.startswith(b"\xfe\xff"):
        text = raw.decode("utf-16")
    else:
        text = raw.decode("utf-8-sig")
    lines = text.splitlines(keepends=True)
    start = next(i for i, l in enumerate(lines) if l.lstrip().startswith("{"))
    doc, _ = json.JSONDecoder().raw_decode("".join(lines[start:]).lstrip())
    counts = {}
    for rc in doc.get("resource_changes") or []:
        k = KIND.get(tuple(rc["change"]["actions"]), "unknown")
        counts[k] = counts.get(k, 0) + 1
    return doc.get("terraform_version", "?"), counts

files = sorted(p for p in corpus.glob("*.json"))
if not files:
    sys.exit(f"no plans found in {corpus}")
failures = 0
print(f"{'file':<58} {'tf':<10} {'decision':<8} counts / warnings")
for f in files:
    run = subprocess.run([bin_, "check", str(f), "--format", "json"], capture_output=True)
    name = f.name
    if run.returncode not in (0, 2):
        failures += 1
        print(f"{name:<58} FAILED exit {run.returncode}: {run.stderr.decode(errors='replace').strip()}")
        continue
    report = json.loads(run.stdout)
    tf, expected = oracle(f.read_bytes())
    got = {k: v for k, v in report["summary"].items()
           if k in set(KIND.values()) | {"unknown"} and v}
    status = "ok" if got == expected else f"MISMATCH expected {expected}"
    if got != expected:
        failures += 1
    counts = " ".join(f"{k}={v}" for k, v in sorted(got.items())) or "no changes"
    warn = "; ".join(report["warnings"])
    rules = sorted({x["rule"] for x in report["findings"]})
    print(f"{name:<58} {str(tf):<10} {report['decision']:<8} {counts}"
          + (f" | rules: {','.join(rules)}" if rules else "")
          + (f" | warning: {warn}" if warn else "") + ("" if status == "ok" else f" | {status}"))
print(f"\n{len(files) - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)
PY
