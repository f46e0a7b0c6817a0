#!/usr/bin/env bash
# The state-server benchmark (issue 2 §Benchmark, issue 5 §Benchmark), in one run:
#   (a) terraform apply of a 200-terraform_data stack: airlock http backend (SQLite) vs the
#       local backend vs Terraform's built-in pg backend, fresh apply and "change all 200";
#   (b) lock+write+unlock latency of a 1 MB state with 1 and 8 clients, reads/s of a 100 KB
#       state with 32 clients;
#   (c) stored bytes of 1,000 versions of a 10 MB state, one instance changed per version;
#   (d) (b) on SQLite, on PostgreSQL with one server, and with two servers on one database.
#
#   bench/state/run.sh            # full run, ~10-15 minutes
#   bench/state/run.sh --quick    # smoke run, ~3 minutes (fewer repetitions, 100 versions)
#   bench/state/run.sh --write    # only (b) on SQLite (the write path of issue 17), ~1 minute
#   bench/state/run.sh --large    # only (e): a 100 MB state written, read, diffed, paged
#
# Environment: CARGO_TARGET_DIR (default bench/state/target), AIRLOCK_BIN (skip building
# airlock, use this binary), AIRLOCK_BEFORE_BIN (with --write: also run (b) against this
# binary, first, in the same run: the "before" column), AIRLOCK_TEST_DATABASE_URL (use this PostgreSQL instead of a
# throwaway cluster; the run creates and drops its own databases there), BENCH_OUT (where
# logs and results go; default bench/state/out/<timestamp>), AIRLOCK_BENCH_REV (the revision to
# print when the tree is not a git checkout). See bench/state/README.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
mode=full
for arg in "$@"; do
    case "$arg" in
    --quick) mode=quick ;;
    --write) mode=write ;;
    --large) mode=large ;;
    -h | --help)
        sed -n '2,20p' "$0"
        exit 0
        ;;
    *)
        echo "run.sh: unknown argument $arg (try --help)" >&2
        exit 64
        ;;
    esac
done

log() { echo "[bench $(date -u +%H:%M:%S)] $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------- outer part: tools, build
if [ -z "${AIRLOCK_BENCH_INNER:-}" ]; then
    # PostgreSQL server binaries live outside PATH on Debian.
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/pg_ctl" ] && PATH="$PATH:$d"
    done
    apt_install() {
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            log "installing Debian packages: $*"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
        else
            die "missing $*; install them (Debian/Ubuntu: apt-get install $*)"
        fi
    }
    command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH; install Rust (https://rustup.rs)"
    command -v terraform >/dev/null 2>&1 ||
        die "terraform is not on PATH; install Terraform 1.11.x (the benchmark drives the real binary)"
    if ! command -v initdb >/dev/null 2>&1 || ! command -v pg_ctl >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
        if [ -z "${AIRLOCK_TEST_DATABASE_URL:-}" ] || ! command -v psql >/dev/null 2>&1; then
            apt_install postgresql
            for d in /usr/lib/postgresql/*/bin; do
                [ -x "$d/pg_ctl" ] && PATH="$PATH:$d"
            done
        fi
    fi
    command -v cc >/dev/null 2>&1 || apt_install gcc libc6-dev # rusqlite builds SQLite from C
    export PATH

    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
    if [ -z "${AIRLOCK_BIN:-}" ]; then
        log "building airlock (release) into $CARGO_TARGET_DIR"
        (cd "$root" && cargo build --release --quiet -p airlock) || die "building airlock failed"
        AIRLOCK_BIN="$CARGO_TARGET_DIR/release/airlock"
    fi
    log "building the load generator"
    (cd "$here/loadgen" && cargo build --release --quiet) || die "building bench/state/loadgen failed"
    export AIRLOCK_BIN
    export LOADGEN_BIN="$CARGO_TARGET_DIR/release/airlock-bench-loadgen"
    export AIRLOCK_BENCH_INNER=1 AIRLOCK_BENCH_MODE="$mode"
    # Everything else runs with AIRLOCK_TEST_DATABASE_URL set to a throwaway cluster (or the
    # given database), which the wrapper stops and deletes however the run ends.
    exec "$root/scripts/with-postgres.sh" "$here/run.sh" "$@"
fi

# ---------------------------------------------------------------- inner part: the run
mode="${AIRLOCK_BENCH_MODE:-$mode}"
: "${AIRLOCK_TEST_DATABASE_URL:?run through scripts/with-postgres.sh}"
if [ "$mode" = write ] || [ "$mode" = large ]; then
    reps=0 lat_secs=15 read_secs=4 versions=0 hist_secs=0
elif [ "$mode" = quick ]; then
    reps=2 lat_secs=5 read_secs=4 versions=100 hist_secs=180
else
    reps=7 lat_secs=15 read_secs=10 versions=1000 hist_secs=540
fi
out="${BENCH_OUT:-$here/out/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
results="$out/results.txt"
: >"$results"
log "mode $mode; logs and results in $out"

pids=()
dbs=()
pg_base="${AIRLOCK_TEST_DATABASE_URL%/*}"
pg_admin_db="$AIRLOCK_TEST_DATABASE_URL"
cleanup() {
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    for d in "${dbs[@]}"; do
        psql -X -q "$pg_admin_db" -c "DROP DATABASE IF EXISTS $d" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

put() { echo "$1 $2" >>"$results"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

new_db() { # new_db NAME -> prints its URL
    local name="bench_$1_$$"
    psql -X -q "$pg_admin_db" -v ON_ERROR_STOP=1 -c "CREATE DATABASE $name" >/dev/null
    dbs+=("$name")
    echo "$pg_base/$name"
}

# start_server NAME ARGS... : starts `airlock server`, waits for its address; sets
# server_url, server_pid, and admin_token when the server printed one (empty database).
start_server() {
    local name="$1"
    shift
    local logf="$out/server-$name.log"
    : >"$logf" # exists before the server's shell opens it, for the reads below
    env -u AIRLOCK_DATABASE_URL -u AIRLOCK_DATA_DIR "${server_bin:-$AIRLOCK_BIN}" server --listen 127.0.0.1:0 "$@" >"$logf" 2>&1 &
    server_pid=$!
    pids+=("$server_pid")
    server_url=""
    for _ in $(seq 1 300); do
        server_url="$(sed -n 's/^listening on //p' "$logf" | head -n1)"
        [ -n "$server_url" ] && break
        kill -0 "$server_pid" 2>/dev/null || die "airlock server $name exited; see $logf"
        sleep 0.1
    done
    [ -n "$server_url" ] || die "airlock server $name did not start within 30 s; see $logf"
    local t
    t="$(sed -n 's/^admin token: //p' "$logf" | head -n1)"
    [ -n "$t" ] && admin_token="$t"
    return 0
}

stop_server() { # stop_server PID NAME: SIGTERM (graceful), bounded wait, then SIGKILL
    local p="$1" name="$2" status=0
    kill "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || status=$?
    case "$status" in
    0 | 143) ;;
    *) log "note: airlock server $name exited with status $status on SIGTERM; see $out/server-$name.log" ;;
    esac
    return 0
}

now_ns() { date +%s%N; }
secs_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }

put meta.mode "$mode"
put meta.date "$(date -u +%Y-%m-%dT%H:%MZ)"
if [ -n "${AIRLOCK_BENCH_REV:-}" ]; then
    put meta.git "$AIRLOCK_BENCH_REV"
else
    put meta.git "$(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$root" && git diff --quiet HEAD -- crates 2>/dev/null || echo +dirty)"
fi
put meta.cpus "$(nproc)"
put meta.cpu "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
put meta.load_start "$(loadavg)"
put meta.terraform "$(terraform version | head -n1 | sed 's/^Terraform v//')"
put meta.postgres "$(psql -X -At "$pg_admin_db" -c 'SHOW server_version' | cut -d' ' -f1)"
put meta.reps "$reps"
"$LOADGEN_BIN" fsync --dir "$out" --count 200 --tag meta >>"$results"

# ---------------------------------------------------------------- (a) terraform apply
log "(a) terraform apply: airlock vs pg vs local, $reps repetitions"
start_server sqlite-tf --data-dir "$out/data-tf"
tf_url="$server_url"
tf_pid="$server_pid"
tf_admin="$admin_token"
tfpg_url="$(new_db tfpg)"
empty_rc="$out/empty.tfrc"
: >"$empty_rc"

tf() { # tf DIR ARGS...
    local dir="$1"
    shift
    (cd "$dir" && CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0 TF_CLI_CONFIG_FILE="$empty_rc" \
        TF_HTTP_USERNAME=airlock TF_HTTP_PASSWORD="$tf_admin" terraform "$@")
}

declare -A tf_times
backends=(airlock pg local)
for rep in $(seq 1 "$reps"); do
    # Rotate the order each repetition, so no backend always runs right after another.
    for i in 0 1 2; do
        backend="${backends[$(((rep + i) % 3))]}"
        dir="$out/tf/$backend-$rep"
        mkdir -p "$dir"
        cat >"$dir/main.tf" <<'EOF'
variable "gen" {
  type    = string
  default = "1"
}

resource "terraform_data" "r" {
  count = 200
  input = "v-${count.index}-${var.gen}"
}
EOF
        case "$backend" in
        airlock)
            AIRLOCK_URL="$tf_url" AIRLOCK_TOKEN="$tf_admin" "$AIRLOCK_BIN" stack create "bench/tf-$rep" >/dev/null
            AIRLOCK_URL="$tf_url" AIRLOCK_TOKEN="$tf_admin" "$AIRLOCK_BIN" backend-config "bench/tf-$rep" >"$dir/backend.tf"
            ;;
        pg)
            printf 'terraform {\n  backend "pg" {\n    conn_str    = "%s?sslmode=disable"\n    schema_name = "bench_rep_%s"\n  }\n}\n' \
                "$tfpg_url" "$rep" >"$dir/backend.tf"
            ;;
        local)
            printf 'terraform {\n  backend "local" {\n    path = "terraform.tfstate"\n  }\n}\n' >"$dir/backend.tf"
            ;;
        esac
        tf "$dir" init -input=false -no-color >"$dir/init.log" 2>&1 || die "terraform init ($backend) failed; see $dir/init.log"
        for phase in create change; do
            gen=1
            [ "$phase" = change ] && gen=2
            t0="$(now_ns)"
            tf "$dir" apply -auto-approve -input=false -no-color -var "gen=$gen" >"$dir/$phase.log" 2>&1 ||
                die "terraform apply ($backend, $phase) failed; see $dir/$phase.log"
            s="$(secs_since "$t0")"
            grep -q "Apply complete! Resources: 0 added, 200 changed\|Apply complete! Resources: 200 added" "$dir/$phase.log" ||
                die "terraform apply ($backend, $phase) did not touch 200 resources; see $dir/$phase.log"
            tf_times[$backend.$phase]="${tf_times[$backend.$phase]:+${tf_times[$backend.$phase]},}$s"
            log "    rep $rep $backend $phase: $s s"
        done
    done
done
for k in "${!tf_times[@]}"; do
    put "tf.$k" "${tf_times[$k]}"
done
stop_server "$tf_pid" sqlite-tf

# ---------------------------------------------------------------- (b) + (d) latency, reads
# run_load CONFIG URLS: the latency and read runs against already started servers.
run_load() {
    local config="$1" urls="$2" first="${2%%,*}" spids="$3"
    local stacks="bench/lat1-0,bench/reads"
    for i in 0 1 2 3 4 5 6 7; do stacks="$stacks,bench/lat8-$i"; done
    "$LOADGEN_BIN" create-stacks --url "$first" --token "$admin_token" --stacks "$stacks"
    log "    $config: lock+write+unlock, 1 client"
    local perf_pid=""
    if [ -n "${BENCH_PROFILE:-}" ] && [ "${config#sqlite1}" != "$config" ]; then
        # A CPU profile of the server during the 1-client run (software clock samples: works
        # in VMs without hardware counters); `perf report -i $out/perf-sqlite1-c1.data` reads it.
        perf record -q -F 499 -g -e cpu-clock -p "$spids" -o "$out/perf-$config-c1.data" -- sleep "$((lat_secs + 1))" \
            >"$out/perf-record.log" 2>&1 &
        perf_pid=$!
    fi
    "$LOADGEN_BIN" latency --urls "$urls" --token "$admin_token" --stack-prefix bench/lat1 \
        --clients 1 --state-bytes 1000000 --max-secs "$lat_secs" --server-pids "$spids" --tag "lat.$config.c1" >>"$results"
    [ -n "$perf_pid" ] && wait "$perf_pid"
    log "    $config: lock+write+unlock, 8 clients"
    "$LOADGEN_BIN" latency --urls "$urls" --token "$admin_token" --stack-prefix bench/lat8 \
        --clients 8 --state-bytes 1000000 --max-secs "$lat_secs" --server-pids "$spids" --tag "lat.$config.c8" >>"$results"
    log "    $config: reads of a 100 KB state, 32 clients"
    "$LOADGEN_BIN" reads --urls "$urls" --token "$admin_token" --stack bench/reads \
        --clients 32 --state-bytes 100000 --secs "$read_secs" --tag "reads.$config" >>"$results"
}

if [ "$mode" = large ]; then
    log "(e) a 100 MB state: write, read, diff, show paging (SQLite); and 10 MB, for the scaling"
    start_server large --data-dir "$out/data-large"
    "$LOADGEN_BIN" create-stacks --url "$server_url" --token "$admin_token" --stacks bench/large,bench/large10
    "$LOADGEN_BIN" large --url "$server_url" --token "$admin_token" --stack bench/large10 \
        --state-bytes 10000000 --server-pid "$server_pid" --tag large10 >>"$results"
    "$LOADGEN_BIN" large --url "$server_url" --token "$admin_token" --stack bench/large \
        --state-bytes 100000000 --server-pid "$server_pid" --tag large >>"$results"
    stop_server "$server_pid" large
    put meta.load_end "$(loadavg)"
    # No quadratic step: each step's server CPU on 100 MB over its CPU on 10 MB is ~10 when the
    # step is linear (100 when quadratic). Steps under 20 ms at 10 MB are too small to read.
    awk '$1 ~ /^large10\..*server_cpu_ms$/ { k = substr($1, 9); small[k] = $2 }
         $1 ~ /^large\..*server_cpu_ms$/ { k = substr($1, 7); big[k] = $2 }
         END { for (k in big) if (k in small && small[k] >= 20)
                 printf "large.scaling.%s_100mb_over_10mb %.1f%s\n", k, big[k] / small[k],
                        (big[k] / small[k] > 20 ? " SUPERLINEAR" : "") }' "$results" | sort >>"$results"
    grep -E '^large(10)?\.' "$results" | tee "$out/report.txt"
    exit 0
fi

if [ "$mode" = write ] && [ -n "${AIRLOCK_BEFORE_BIN:-}" ]; then
    log "(b) SQLite, one server, the before binary $AIRLOCK_BEFORE_BIN"
    put meta.before_bin "$AIRLOCK_BEFORE_BIN"
    server_bin="$AIRLOCK_BEFORE_BIN" start_server sqlite1before --data-dir "$out/data-sqlite1before"
    run_load sqlite1before "$server_url" "$server_pid"
    stop_server "$server_pid" sqlite1before
fi
log "(b) SQLite, one server"
start_server sqlite1 --data-dir "$out/data-sqlite1"
run_load sqlite1 "$server_url" "$server_pid"
stop_server "$server_pid" sqlite1

if [ "$mode" = write ]; then
    put meta.load_end "$(loadavg)"
    "$LOADGEN_BIN" report "$results" | tee "$out/report.txt"
    exit 0
fi

log "(d) PostgreSQL, one server"
url="$(new_db pg1)"
start_server pg1 --database-url "$url"
run_load pg1 "$server_url" "$server_pid"
stop_server "$server_pid" pg1

log "(d) PostgreSQL, two servers on one database"
url="$(new_db pg2)"
start_server pg2-a --database-url "$url"
a_url="$server_url" a_pid="$server_pid"
start_server pg2-b --database-url "$url"
b_url="$server_url" b_pid="$server_pid"
run_load pg2 "$a_url,$b_url" "$a_pid,$b_pid"
stop_server "$a_pid" pg2-a
stop_server "$b_pid" pg2-b

# ---------------------------------------------------------------- (c) history size
log "(c) history: $versions versions of a 10 MB state (SQLite, over HTTP)"
start_server history --data-dir "$out/data-history"
"$LOADGEN_BIN" create-stacks --url "$server_url" --token "$admin_token" --stacks bench/history
"$LOADGEN_BIN" history --url "$server_url" --token "$admin_token" --stack bench/history \
    --state-bytes 10000000 --versions "$versions" --max-secs "$hist_secs" --tag hist >>"$results"
stop_server "$server_pid" history
"$LOADGEN_BIN" stored-bytes --db "$out/data-history/airlock.db" --tag hist >>"$results"
put hist.db_file_bytes "$(cat "$out"/data-history/airlock.db* | wc -c)"

put meta.load_end "$(loadavg)"
"$LOADGEN_BIN" report "$results" | tee "$out/report.txt"
