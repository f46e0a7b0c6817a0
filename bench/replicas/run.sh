#!/usr/bin/env bash
# Replica scaling on PostgreSQL (issue 17 §2): throughput of lock+write+unlock cycles by 8
# clients on 8 different stacks through one `airlock server` and through two on one database,
# alternated in rounds within one run, with the CPU each party took (servers, PostgreSQL's
# processes, the load generator, everything else on the machine).
#
#   bench/replicas/run.sh             # 5 rounds of 10 s per configuration, ~4 minutes
#   bench/replicas/run.sh --quick     # 2 rounds of 5 s
#   bench/replicas/run.sh --counts    # no timed rounds: statements, round trips, CPU per cycle
#
# Environment: CARGO_TARGET_DIR (default bench/replicas/target), AIRLOCK_BIN (use this binary
# instead of building one), AIRLOCK_BEFORE_BIN (also measure this binary, as "before", in the
# same rounds, on a database of its own), BENCH_OUT (default bench/replicas/out/<UTC time>),
# BENCH_STATE_BYTES (default 8000), BENCH_CLIENTS (default 8), BENCH_BUDGET (CPUs each replica
# may use in the budgeted configurations, default 0.4), BENCH_SHARES (cpu.shares of the
# benchmark's cgroup, default 65536). See bench/replicas/README.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
mode=full
for arg in "$@"; do
    case "$arg" in
    --quick) mode=quick ;;
    --counts) mode=counts ;;
    -h | --help)
        sed -n '2,16p' "$0"
        exit 0
        ;;
    *)
        echo "run.sh: unknown argument $arg (try --help)" >&2
        exit 64
        ;;
    esac
done

log() { echo "[replicas $(date -u +%H:%M:%S)] $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------- outer part: build
if [ -z "${AIRLOCK_BENCH_INNER:-}" ]; then
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/pg_ctl" ] && PATH="$PATH:$d"
    done
    export PATH
    command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH"
    command -v psql >/dev/null 2>&1 || die "psql is not on PATH (PostgreSQL 15 client and server binaries are needed)"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
    if [ -z "${AIRLOCK_BIN:-}" ]; then
        log "building airlock (release) into $CARGO_TARGET_DIR"
        (cd "$root" && cargo build --release --quiet -p airlock) || die "building airlock failed"
        AIRLOCK_BIN="$CARGO_TARGET_DIR/release/airlock"
    fi
    # The state benchmark's load generator: a minimal keep-alive HTTP client speaking the
    # Terraform http-backend protocol (LOCK, POST ?ID=, UNLOCK), its own Cargo workspace.
    log "building the load generator (bench/state/loadgen)"
    (cd "$root/bench/state/loadgen" && cargo build --release --quiet) || die "building the load generator failed"
    export LOADGEN_BIN="$CARGO_TARGET_DIR/release/airlock-bench-loadgen"
    if [ -n "${AIRLOCK_BEFORE_BIN:-}" ]; then
        [ -x "$AIRLOCK_BEFORE_BIN" ] || die "AIRLOCK_BEFORE_BIN=$AIRLOCK_BEFORE_BIN is not an executable"
        AIRLOCK_BEFORE_BIN="$(readlink -f "$AIRLOCK_BEFORE_BIN")"
        export AIRLOCK_BEFORE_BIN
    fi
    export AIRLOCK_BIN AIRLOCK_BENCH_INNER=1 AIRLOCK_BENCH_MODE="$mode"
    exec "$root/scripts/with-postgres.sh" "$here/run.sh"
fi

# ---------------------------------------------------------------- inner part: the run
mode="${AIRLOCK_BENCH_MODE:-$mode}"
: "${AIRLOCK_TEST_DATABASE_URL:?run through scripts/with-postgres.sh}"
case "$mode" in
quick) rounds=2 secs=5 ;;
counts) rounds=0 secs=0 ;;
*) rounds=5 secs=10 ;;
esac
clients="${BENCH_CLIENTS:-8}"
bytes="${BENCH_STATE_BYTES:-8000}"
out="${BENCH_OUT:-$here/out/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
results="$out/results.txt"
: >"$results"
log "mode $mode; logs and results in $out"

pids=()
cg=""
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -n "$cg" ] && cg_remove
    return 0
}
trap cleanup EXIT
put() { echo "$1 $2" >>"$results"; }

start_server() { # start_server NAME BIN URL -> server_url, server_pid, admin_token (first start on URL)
    local name="$1" logf="$out/server-$1.log"
    env -u AIRLOCK_DATA_DIR "$2" server --listen 127.0.0.1:0 --database-url "$3" >"$logf" 2>&1 &
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
    admin_token="$(sed -n 's/^admin token: //p' "$logf" | head -n1)"
    return 0
}

# CPU time in clock ticks: of one process (all its threads), and of PostgreSQL (the postmaster,
# its exited children as it reaped them, and its live children: backends, walwriter, ...).
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
pg_data="$(psql -X -At "$AIRLOCK_TEST_DATABASE_URL" -c 'SHOW data_directory')"
pg_pid="$(head -n1 "$pg_data/postmaster.pid")"
pg_ticks() {
    local sum
    sum="$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pg_pid/stat")"
    for c in $(pgrep -P "$pg_pid"); do
        sum=$((sum + $(awk '{ print $14 + $15 }' "/proc/$c/stat" 2>/dev/null || echo 0)))
    done
    echo "$sum"
}
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat; } # busy idle
hz="$(getconf CLK_TCK)"

# CPU budgets (cgroup v1's cpu controller). Everything the run starts (servers, PostgreSQL, the
# load generator) runs in one parent cgroup with a high cpu.shares, so that other work on a
# shared machine takes less from the run: in cgroup v1 every process of the root group weighs
# as much as a whole child group (BENCH_SHARES, default 65536 = 64 busy processes' worth). In the
# budgeted configurations each replica moves into a child cgroup of its own, with a CFS quota of
# BENCH_BUDGET CPUs and shares high enough that it always gets that much: one replica is bound
# by its budget and two get twice as much, as replicas on machines of their own would, while
# PostgreSQL and the load generator use what is left. Otherwise the servers are plain processes
# of the parent, as they were of the root group before.
cg_root=/sys/fs/cgroup/cpu
budget="${BENCH_BUDGET:-0.4}"
# 50 ms: shorter than the default 100 ms, so the quota comes in smaller bursts, yet several of the
# kernel's 5 ms bandwidth slices long (with a period of 10 ms a group got 0.36 of a 0.4 quota).
period_us=50000
quota_us="$(awk -v b="$budget" -v p="$period_us" 'BEGIN { printf "%d", b * p }')"
[ "$quota_us" -ge 1000 ] || die "BENCH_BUDGET=$budget is too small (at least 0.1 CPU)"
if [ -f "$cg_root/cpu.cfs_quota_us" ] && mkdir "$cg_root/airlock-bench-$$" 2>/dev/null; then
    cg="$cg_root/airlock-bench-$$"
    echo "${BENCH_SHARES:-65536}" >"$cg/cpu.shares"
else
    log "cannot create a cgroup under $cg_root (root and cgroup v1's cpu controller are needed): no budgeted configurations; the pinned ones (taskset) stand in for them"
fi
cg_join() { echo "$2" >"$1/cgroup.procs" 2>/dev/null || true; } # cg_join DIR PID (all its threads)
cg_remove() {                                                  # everything back to the root group
    local d p try
    # PostgreSQL backends of the stopped servers may still be exiting: move and retry.
    for try in $(seq 1 50); do
        for d in "$cg"/*/ "$cg"; do
            [ -f "$d/cgroup.procs" ] || continue
            while read -r p; do cg_join "$cg_root" "$p"; done <"$d/cgroup.procs"
        done
        for d in "$cg"/*/; do [ -d "$d" ] && rmdir "$d" 2>/dev/null; done
        rmdir "$cg" 2>/dev/null && return 0
        sleep 0.1
    done
    log "could not remove $cg"
}
cg_pg() { # PostgreSQL's processes (backends forked later inherit the postmaster's group)
    local c
    cg_join "$cg" "$pg_pid"
    for c in $(pgrep -P "$pg_pid"); do cg_join "$cg" "$c"; done
}
# throttled DIR: how often and how long (ms) the quota stopped the group so far.
throttled() { awk '$1 == "nr_throttled" { n = $2 } $1 == "throttled_time" { t = $2 } END { printf "%d %.0f", n, t / 1e6 }' "$1/cpu.stat"; }

# Variants: the binary under test ("after"; "before" is AIRLOCK_BEFORE_BIN, when given), each
# with two servers on a database of its own; v_*[VARIANT] hold their settings.
variants=()
declare -A v_bin v_db v_url_a v_url_b v_pid_a v_pid_b v_token
add_variant() { # add_variant NAME BIN DATABASE_URL
    local v="$1"
    variants+=("$v")
    v_bin[$v]="$2" v_db[$v]="$3"
    start_server "$v-a" "$2" "$3"
    v_url_a[$v]="$server_url" v_pid_a[$v]="$server_pid" v_token[$v]="$admin_token"
    [ -n "$admin_token" ] || die "no admin token printed; the database was not empty"
    start_server "$v-b" "$2" "$3"
    v_url_b[$v]="$server_url" v_pid_b[$v]="$server_pid"
    if [ -n "$cg" ]; then
        local g
        for g in "$cg/$v-a" "$cg/$v-b"; do
            mkdir "$g"
            echo "$period_us" >"$g/cpu.cfs_period_us"
            echo "$quota_us" >"$g/cpu.cfs_quota_us"
            echo 65536 >"$g/cpu.shares"
        done
        cg_join "$cg" "${v_pid_a[$v]}"
        cg_join "$cg" "${v_pid_b[$v]}"
    fi
}
if [ -n "${AIRLOCK_BEFORE_BIN:-}" ]; then
    before_db="${AIRLOCK_TEST_DATABASE_URL%/*}/airlock_bench_before"
    psql -X -q "$AIRLOCK_TEST_DATABASE_URL" -c 'CREATE DATABASE airlock_bench_before' >/dev/null
    add_variant before "$AIRLOCK_BEFORE_BIN" "$before_db"
    add_variant after "$AIRLOCK_BIN" "$AIRLOCK_TEST_DATABASE_URL"
else
    add_variant after "$AIRLOCK_BIN" "$AIRLOCK_TEST_DATABASE_URL"
fi

put meta.date "$(date -u +%Y-%m-%dT%H:%MZ)"
put meta.git "$(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$root" && git diff --quiet HEAD -- crates 2>/dev/null || echo +dirty)"
put meta.cpus "$(nproc)"
put meta.postgres "$(psql -X -At "$AIRLOCK_TEST_DATABASE_URL" -c 'SHOW server_version' | cut -d' ' -f1)"
[ -n "$cg" ] && cg_pg
put meta.load_start "$(cut -d' ' -f1-3 /proc/loadavg)"
[ -n "$cg" ] && put meta.budget_cpus "$budget"
put meta.secs "$secs"
put meta.clients "$clients"
put meta.state_bytes "$bytes"

# measure VARIANT CONFIG ROUND URLS: one load run, with every party's CPU over exactly that run.
measure() {
    local v="$1" urls="$4" tag="$1.$2.r$3" pid_a="${v_pid_a[$1]}" pid_b="${v_pid_b[$1]}"
    local a0 b0 p0 m0 a1 b1 p1 m1 lg stacks="" prefix="bench/$1-${2//_/-}-$3"
    # Fresh stacks per run (untimed): each load run starts its states at serial 1.
    for i in $(seq 0 $((clients - 1))); do stacks="$stacks,$prefix-$i"; done
    "$LOADGEN_BIN" create-stacks --url "${v_url_a[$v]}" --token "${v_token[$v]}" --stacks "${stacks#,}"
    [ -n "$cg" ] && cg_pg
    put "$tag.load" "$(cut -d' ' -f1 /proc/loadavg)"
    local ta0="0 0" tb0="0 0" ta1="0 0" tb1="0 0"
    [ -n "$cg" ] && ta0="$(throttled "$cg/$v-a")" tb0="$(throttled "$cg/$v-b")"
    a0="$(ticks "$pid_a")" b0="$(ticks "$pid_b")" p0="$(pg_ticks)" m0="$(machine_ticks)"
    # `times` in the subshell reports the load generator's own CPU (its children's line).
    lg="$( (
        [ -n "$cg" ] && cg_join "$cg" "$BASHPID"
        "$LOADGEN_BIN" latency --urls "$urls" --token "${v_token[$v]}" --stack-prefix "$prefix" \
            --clients "$clients" --state-bytes "$bytes" --warmup 3 --max-iters 100000 \
            --max-secs "$secs" --tag "$tag" >>"$results"
        times
    ) | tail -n1)"
    a1="$(ticks "$pid_a")" b1="$(ticks "$pid_b")" p1="$(pg_ticks)" m1="$(machine_ticks)"
    [ -n "$cg" ] && ta1="$(throttled "$cg/$v-a")" tb1="$(throttled "$cg/$v-b")"
    put "$tag.throttled_a" "$((${ta1% *} - ${ta0% *})) $((${ta1#* } - ${ta0#* }))"
    put "$tag.throttled_b" "$((${tb1% *} - ${tb0% *})) $((${tb1#* } - ${tb0#* }))"
    put "$tag.cpu_server_a_s" "$(awk -v d=$((a1 - a0)) -v hz="$hz" 'BEGIN { printf "%.2f", d / hz }')"
    put "$tag.cpu_server_b_s" "$(awk -v d=$((b1 - b0)) -v hz="$hz" 'BEGIN { printf "%.2f", d / hz }')"
    put "$tag.cpu_postgres_s" "$(awk -v d=$((p1 - p0)) -v hz="$hz" 'BEGIN { printf "%.2f", d / hz }')"
    put "$tag.cpu_loadgen_s" "$(echo "$lg" | awk '{ split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%.2f", u[1] * 60 + u[2] + s[1] * 60 + s[2] }')"
    put "$tag.cpu_machine_busy_s" "$(awk -v a="${m0% *}" -v b="${m1% *}" -v hz="$hz" 'BEGIN { printf "%.2f", (b - a) / hz }')"
    put "$tag.cpu_machine_idle_s" "$(awk -v a="${m0#* }" -v b="${m1#* }" -v hz="$hz" 'BEGIN { printf "%.2f", (b - a) / hz }')"
}

# pin VARIANT A B: the CPUs its replica a and replica b may run on (every thread), e.g. `pin after 0-1 0-1`.
pin() {
    taskset -a -p -c "$2" "${v_pid_a[$1]}" >/dev/null
    taskset -a -p -c "$3" "${v_pid_b[$1]}" >/dev/null
}
# budgeted VARIANT on|off: its replicas in their budget cgroups, or back in the parent.
budgeted() {
    if [ "$2" = on ]; then
        cg_join "$cg/$1-a" "${v_pid_a[$1]}"
        cg_join "$cg/$1-b" "${v_pid_b[$1]}"
    else
        cg_join "$cg" "${v_pid_a[$1]}"
        cg_join "$cg" "${v_pid_b[$1]}"
    fi
}
ncpu="$(nproc)"
for r in $(seq 1 "$rounds"); do
    for v in "${variants[@]}"; do
        both="${v_url_a[$v]},${v_url_b[$v]}"
        # Free: each replica may use every CPU (one replica can then use the whole machine).
        pin "$v" "0-$((ncpu - 1))" "0-$((ncpu - 1))"
        log "round $r/$rounds $v: one replica"
        measure "$v" one "$r" "${v_url_a[$v]}"
        log "round $r/$rounds $v: two replicas"
        measure "$v" two "$r" "$both"
        # Budgeted: each replica may use BENCH_BUDGET CPUs (on any CPU), PostgreSQL and the load
        # generator what is left: what a second replica on a machine of its own adds.
        if [ -n "$cg" ]; then
            budgeted "$v" on
            log "round $r/$rounds $v: one replica, $budget CPU"
            measure "$v" one_budget "$r" "${v_url_a[$v]}"
            log "round $r/$rounds $v: two replicas, $budget CPU each"
            measure "$v" two_budget "$r" "$both"
            budgeted "$v" off
        fi
        # Pinned: each replica gets one CPU of its own, as replicas on separate machines would
        # have a fixed budget each (PostgreSQL and the load generator still run anywhere).
        if [ "$ncpu" -ge 2 ] && command -v taskset >/dev/null 2>&1; then
            pin "$v" 0 1
            log "round $r/$rounds $v: one replica on one CPU"
            measure "$v" one_pinned "$r" "${v_url_a[$v]}"
            log "round $r/$rounds $v: two replicas, one CPU each"
            measure "$v" two_pinned "$r" "$both"
        fi
    done
done
put meta.load_end "$(cut -d' ' -f1-3 /proc/loadavg)"

# SQL statements per cycle: PostgreSQL logs every statement (`log_statement = all`, only now)
# while one client runs a fixed number of cycles on replica a; the lines are counted in the
# cluster's log (scripts/with-postgres.sh keeps it next to the data directory). Seals the server
# appends meanwhile (at most one a second) are counted too. Round trips: the sends replica a
# makes to PostgreSQL's port meanwhile, counted by `strace` (when installed; each round trip
# starts with one send, and statements pipelined together go out in one).
pg_log="$(dirname "$pg_data")/server.log"
pg_port="${AIRLOCK_TEST_DATABASE_URL##*:}"
pg_port="${pg_port%%/*}"
stmt_cycles=50
for v in "${variants[@]}"; do
    if [ ! -r "$pg_log" ]; then
        log "cannot read PostgreSQL's log at $pg_log: statements per cycle not counted"
        break
    fi
    prefix="bench/$v-statements"
    "$LOADGEN_BIN" create-stacks --url "${v_url_a[$v]}" --token "${v_token[$v]}" --stacks "$prefix-0"
    psql -X -q "$AIRLOCK_TEST_DATABASE_URL" -c "ALTER SYSTEM SET log_statement = 'all'" -c 'SELECT pg_reload_conf()' >/dev/null
    sleep 1
    n0="$(wc -l <"$pg_log")"
    strace_pid=""
    if command -v strace >/dev/null 2>&1; then
        strace -f -qq -yy -e trace=write,writev,sendto,sendmsg -o "$out/$v-sends.strace" -p "${v_pid_a[$v]}" &
        strace_pid=$!
        sleep 1
    fi
    "$LOADGEN_BIN" latency --urls "${v_url_a[$v]}" --token "${v_token[$v]}" --stack-prefix "$prefix" \
        --clients 1 --state-bytes "$bytes" --warmup 0 --max-iters "$stmt_cycles" --max-secs 60 \
        --tag "$v-statements" >"$out/$v-statements.txt"
    sleep 0.5
    if [ -n "$strace_pid" ]; then
        kill "$strace_pid" 2>/dev/null || true
        wait "$strace_pid" 2>/dev/null || true
    fi
    psql -X -q "$AIRLOCK_TEST_DATABASE_URL" -c 'ALTER SYSTEM RESET log_statement' -c 'SELECT pg_reload_conf()' >/dev/null
    tail -n +"$((n0 + 1))" "$pg_log" >"$out/$v-statements.log"
    done_cycles="$(sed -n 's/^.*statements.cycles //p' "$out/$v-statements.txt")"
    count="$(grep -cE 'LOG:  (statement|execute [^:]*): ' "$out/$v-statements.log" || true)"
    put "meta.statements_per_cycle.$v" "$(awk -v n="$count" -v c="$done_cycles" 'BEGIN { printf "%.1f", n / c }')"
    put "meta.commits_per_cycle.$v" "$(awk -v n="$(grep -c 'LOG:  statement: COMMIT' "$out/$v-statements.log" || true)" -v c="$done_cycles" 'BEGIN { printf "%.1f", n / c }')"
    if [ -n "$strace_pid" ]; then
        sends="$(grep -c -- "->127.0.0.1:$pg_port\]" "$out/$v-sends.strace" || true)"
        put "meta.round_trips_per_cycle.$v" "$(awk -v n="$sends" -v c="$done_cycles" 'BEGIN { printf "%.1f", n / c }')"
    fi
done

# CPU per cycle measured apart from the load runs: one client runs a fixed number of cycles on
# replica a, without statement logging or strace, while `perf stat` counts the CPU time
# (`task-clock`, the scheduler's own accounting, not /proc's 10 ms ticks) and, where the
# machine exposes the counter (not in most VMs), the instructions of replica a and of
# PostgreSQL's processes. With one client, little else runs in the bench's processes, so this
# is the CPU each cycle costs, less disturbed by the machine's load than the timed rounds.
count_cycles=300
for v in "${variants[@]}"; do
    command -v perf >/dev/null 2>&1 || {
        log "perf is not installed: instructions per cycle not counted"
        break
    }
    prefix="bench/$v-instructions"
    "$LOADGEN_BIN" create-stacks --url "${v_url_a[$v]}" --token "${v_token[$v]}" --stacks "$prefix-0,$prefix-warm-0"
    # A few uncounted cycles first (on a stack of their own), so that the pool's connection
    # and its statements are ready.
    "$LOADGEN_BIN" latency --urls "${v_url_a[$v]}" --token "${v_token[$v]}" --stack-prefix "$prefix-warm" \
        --clients 1 --state-bytes "$bytes" --warmup 0 --max-iters 20 --max-secs 60 --tag warm >/dev/null
    perf stat -x, -e task-clock,instructions -p "${v_pid_a[$v]}" -o "$out/$v-instructions-airlock.txt" &
    perf_a=$!
    perf stat -x, -e task-clock,instructions -p "$(pgrep -d, -P "$pg_pid")" -o "$out/$v-instructions-postgres.txt" &
    perf_p=$!
    sleep 1
    "$LOADGEN_BIN" latency --urls "${v_url_a[$v]}" --token "${v_token[$v]}" --stack-prefix "$prefix" \
        --clients 1 --state-bytes "$bytes" --warmup 0 --max-iters "$count_cycles" --max-secs 120 \
        --tag "$v-instructions" >"$out/$v-instructions.txt"
    kill -INT "$perf_a" "$perf_p" 2>/dev/null || true
    wait "$perf_a" "$perf_p" 2>/dev/null || true
    done_cycles="$(sed -n 's/^.*instructions.cycles //p' "$out/$v-instructions.txt")"
    for party in airlock postgres; do
        f="$out/$v-instructions-$party.txt"
        ms="$(awk -F, '$3 ~ /^task-clock/ && $1 ~ /^[0-9.]+$/ { print $1 }' "$f")"
        [ -n "$ms" ] && put "meta.cpu_ms_per_cycle_1client.$party.$v" "$(awk -v n="$ms" -v c="$done_cycles" 'BEGIN { printf "%.3f", n / c }')"
        n="$(awk -F, '$3 ~ /^instructions/ && $1 ~ /^[0-9]+$/ { print $1 }' "$f")"
        [ -n "$n" ] && put "meta.instructions_per_cycle.$party.$v" "$(awk -v n="$n" -v c="$done_cycles" 'BEGIN { printf "%.2f", n / c / 1e6 }')"
    done
done

# The audit chains the run wrote must verify (the benchmark is not allowed to trade them away).
for v in "${variants[@]}"; do
    "${v_bin[$v]}" audit --verify --url "${v_url_a[$v]}" --token "${v_token[$v]}" >"$out/$v-verify.txt" 2>&1 ||
        die "airlock audit --verify ($v) failed after the run; see $out/$v-verify.txt"
    put "meta.audit_verify.$v" "$(head -n1 "$out/$v-verify.txt")"
done

python3 "$here/report.py" "$results" | tee "$out/report.txt"
