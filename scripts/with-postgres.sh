#!/usr/bin/env bash
# Runs CMD with AIRLOCK_TEST_DATABASE_URL pointing at a throwaway PostgreSQL cluster.
#
#   scripts/with-postgres.sh cargo test -p airlock-store
#
# If AIRLOCK_TEST_DATABASE_URL is already set, CMD just runs against that database. Otherwise a
# cluster is created in a temp dir (initdb as the `postgres` OS user, since PostgreSQL refuses to
# run as root), started on a free port on 127.0.0.1 only, with its socket in the temp dir, and
# stopped and removed when CMD ends, whatever way it ends. CMD's exit code is passed on.
# Needs initdb and pg_ctl on PATH (PostgreSQL 15). Never reads stdin.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 CMD [ARG...]" >&2
    exit 64
fi

if [ -n "${AIRLOCK_TEST_DATABASE_URL:-}" ]; then
    exec "$@"
fi

log() { echo "with-postgres: $*" >&2; }

for tool in initdb pg_ctl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "$tool is not on PATH; install PostgreSQL 15 server binaries, or set AIRLOCK_TEST_DATABASE_URL to an existing database"
        exit 1
    fi
done
bindir="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
psql="$bindir/psql"
[ -x "$psql" ] || psql="$(command -v psql || true)"
if [ -z "$psql" ]; then
    log "psql not found next to pg_ctl ($bindir) nor on PATH"
    exit 1
fi

# PostgreSQL refuses to run as root: as root, run the server as the `postgres` OS user
# (created if missing); as anyone else, run it as ourselves.
if [ "$(id -u)" -eq 0 ]; then
    if ! id postgres >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    fi
    if command -v runuser >/dev/null 2>&1; then
        as_pg() { runuser -u postgres -- "$@"; }
    else
        as_pg() { su -s /bin/sh postgres -c "$(printf '%q ' "$@")"; }
    fi
    pg_user=postgres
else
    as_pg() { "$@"; }
    pg_user="$(id -un)"
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/airlock-pg.XXXXXX")"
started=""
cleanup() {
    if [ -n "$started" ]; then
        (cd "$tmp" && as_pg pg_ctl -D "$tmp/data" -m fast -w -t 30 stop >/dev/null 2>&1) ||
            log "pg_ctl stop failed; see $tmp/server.log"
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$tmp/data" "$tmp/sock"
chmod 700 "$tmp/data"
if [ "$pg_user" = postgres ] && [ "$(id -u)" -eq 0 ]; then
    chown -R postgres: "$tmp"
fi

# Run PostgreSQL tools from inside the temp dir: the `postgres` user may not be able to enter
# the caller's working directory.
if ! (cd "$tmp" && as_pg initdb -D "$tmp/data" -U postgres --auth=trust -E UTF8 --no-locale --no-instructions) \
    >"$tmp/initdb.log" 2>&1 </dev/null; then
    cat "$tmp/initdb.log" >&2
    log "initdb failed"
    exit 1
fi

# A free loopback port: pick one nobody answers on, and retry if the server still cannot bind it.
port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=""
for attempt in 1 2 3 4 5 6 7 8; do
    candidate=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    port_is_free "$candidate" || continue
    if (cd "$tmp" && as_pg pg_ctl -D "$tmp/data" -l "$tmp/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $candidate -k $tmp/sock -c max_connections=200" start) \
        >/dev/null 2>&1 </dev/null; then
        port="$candidate"
        started=1
        break
    fi
    log "server did not start on port $candidate (attempt $attempt)"
done
if [ -z "$port" ]; then
    [ -f "$tmp/server.log" ] && cat "$tmp/server.log" >&2
    log "could not start PostgreSQL"
    exit 1
fi

if ! "$psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c "CREATE DATABASE airlock_test" </dev/null >&2; then
    log "could not create the test database"
    exit 1
fi

export AIRLOCK_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/airlock_test"
log "PostgreSQL $(pg_ctl --version | awk '{print $3}') on 127.0.0.1:$port (data in $tmp)"

# CMD runs as a child we wait for, so that a TERM or INT sent to this script (a CI timeout,
# say) is passed on to it at once and the cluster is still stopped afterwards.
set +e
"$@" <&0 &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
trap 'kill -INT "$child" 2>/dev/null' INT
wait "$child"
status=$?
while kill -0 "$child" 2>/dev/null; do
    wait "$child"
    status=$?
done
exit "$status"
