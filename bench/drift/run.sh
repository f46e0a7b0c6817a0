#!/usr/bin/env bash
# Drift check overhead (issue 14): `airlock drift` (plan-phase token, its kept plan-phase data directory,
# `terraform init` when needed, `plan -refresh-only -out`, `show -json`, upload, the server's read) vs plain
# `terraform plan -refresh-only`, on a 2,000-resource stack on the local test cloud
# (crates/airlock-testcloud), through the same airlock server. 20 objects are changed behind
# Terraform's back first, so both find drift. Rounds alternate raw/airlock; medians are reported.
#
#   bench/drift/run.sh [ROUNDS] [RESOURCES]     (default 3 rounds, 2000 resources)
#   AIRLOCK_BIN=… AIRLOCK_TESTCLOUD_PROVIDER=… to use existing builds (default: release builds)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${1:-3}"
n="${2:-2000}"
export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
bin="${AIRLOCK_BIN:-}"
provider="${AIRLOCK_TESTCLOUD_PROVIDER:-}"
if [ -z "$bin" ] || [ -z "$provider" ]; then
    cargo build --release -q -p airlock -p airlock-testcloud
    bin="$CARGO_TARGET_DIR/release/airlock"
    provider="$CARGO_TARGET_DIR/release/terraform-provider-aws"
fi
work="$(mktemp -d)"
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# The provider as hashicorp/aws from a filesystem mirror, its cloud in $work/cloud.
pkg="$work/mirror/registry.terraform.io/hashicorp/aws/5.0.0/linux_amd64"
mkdir -p "$pkg" "$work/cloud"
cp "$provider" "$pkg/terraform-provider-aws_v5.0.0"
cat > "$work/terraformrc" <<RC
provider_installation {
  filesystem_mirror {
    path    = "$work/mirror"
    include = ["registry.terraform.io/hashicorp/aws"]
  }
  direct {
    exclude = ["registry.terraform.io/hashicorp/aws"]
  }
}
RC
export TF_CLI_CONFIG_FILE="$work/terraformrc" AIRLOCK_TF_CLI_CONFIG="$work/terraformrc"
export AIRLOCK_TESTCLOUD_DIR="$work/cloud"

"$bin" server --listen 127.0.0.1:0 --data-dir "$work/data" > "$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 100); do grep -q '^listening on' "$work/server.out" 2>/dev/null && break; sleep 0.1; done
export AIRLOCK_URL="$(sed -n 's/^listening on //p' "$work/server.out")"
admin="$(sed -n 's/^admin token: //p' "$work/server.out")"
ci="$(AIRLOCK_TOKEN="$admin" "$bin" token create --name bench-ci --role ci --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')"

dir="$work/tf"
mkdir -p "$dir"
AIRLOCK_TOKEN="$admin" "$bin" stack create bench/drift >/dev/null
AIRLOCK_TOKEN="$admin" "$bin" backend-config bench/drift > "$dir/backend.tf"
cat > "$dir/main.tf" <<TF
terraform {
  required_providers {
    aws = { source = "hashicorp/aws" }
  }
}
provider "aws" {}
resource "aws_vpc" "r" {
  count      = $n
  cidr_block = "10.\${floor(count.index / 256)}.\${count.index % 256}.0/24"
  tags       = { Name = "vpc-\${count.index}" }
}
TF
export TF_HTTP_USERNAME=airlock TF_HTTP_PASSWORD="$admin"
(cd "$dir" && terraform init -input=false >/dev/null && terraform apply -auto-approve -input=false -parallelism=10 >/dev/null)
# Drift: 20 objects retagged behind Terraform's back.
"$provider" cloud --dir "$work/cloud" list aws_vpc > "$work/vpcs.txt"
for id in $(cut -f2 "$work/vpcs.txt" | head -20); do
    "$provider" cloud --dir "$work/cloud" set aws_vpc "$id" tags '{"Name":"changed"}' >/dev/null
done

now() { date +%s.%N; }
raw_round() {
    local t0; t0=$(now)
    (cd "$dir" && terraform plan -refresh-only -input=false >/dev/null)
    python3 -c "import sys; print(float(sys.argv[1]) - float(sys.argv[2]))" "$(now)" "$t0"
}
gov_round() {
    local t0 code; t0=$(now)
    code=0
    (cd "$dir" && env -u TF_HTTP_PASSWORD -u TF_HTTP_USERNAME AIRLOCK_TOKEN="$ci" "$bin" drift . --stack bench/drift --format json > "$work/drift.json" 2>/dev/null) || code=$?
    [ "$code" = 3 ] || { echo "airlock drift exited $code, expected 3 (drifted)" >&2; exit 1; }
    python3 -c "import sys; print(float(sys.argv[1]) - float(sys.argv[2]))" "$(now)" "$t0"
}
raw_round >/dev/null; gov_round >/dev/null   # warm-up
raws=(); govs=()
for _ in $(seq 1 "$rounds"); do
    raws+=("$(raw_round)")
    govs+=("$(gov_round)")
done
python3 - "$work/drift.json" "$rounds" "$n" "${#raws[@]}" "${raws[@]}" "${govs[@]}" <<'PY'
import json, statistics, sys, os
report = json.load(open(sys.argv[1]))["report"]
rounds, n, k = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
raws = [float(x) for x in sys.argv[5:5 + k]]
govs = [float(x) for x in sys.argv[5 + k:]]
mr, mg = statistics.median(raws), statistics.median(govs)
print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; {n} aws_vpc on the local test cloud, {report['drifted_instances']} drifted; {rounds} rounds")
print(f"terraform plan -refresh-only: median {mr:.2f}s  ({', '.join(f'{x:.2f}' for x in raws)})")
print(f"airlock drift:                median {mg:.2f}s  ({', '.join(f'{x:.2f}' for x in govs)})")
print(f"ratio airlock/raw: {mg / mr:.3f}  (target <= 1.10)")
PY
