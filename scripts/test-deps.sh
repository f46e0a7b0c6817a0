#!/usr/bin/env bash
# Installs (once, cached) the real external programs the suite drives, and exports where they are:
#   AIRLOCK_TEST_NODE_MODULES  npm packages of scripts/test-deps/package.json (package-lock.json):
#                              @octokit/openapi (GitHub's API description, for the forge stand-in),
#                              @modelcontextprotocol/inspector (an MCP client), playwright-core
#   AIRLOCK_TEST_PYTHON        a Python with scripts/test-deps/requirements.txt (the MCP SDK `mcp`)
#   AIRLOCK_TEST_CHROMIUM      Debian's chromium (installed with apt-get when missing)
# Source it (`. scripts/test-deps.sh`) or let scripts/test.sh do it. The cache lives in
# $AIRLOCK_TEST_DEPS (default ~/.cache/airlock-test-deps) and is rebuilt when a manifest changes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/test-deps"
deps="${AIRLOCK_TEST_DEPS:-$HOME/.cache/airlock-test-deps}"
mkdir -p "$deps"

# Over the contents only: worktrees at other paths share the cache without reinstalling.
stamp() { cat "$@" | sha256sum | cut -c1-16; }

node_stamp="$(stamp "$here/package.json" "$here/package-lock.json")"
if [ "$(cat "$deps/node/.stamp" 2>/dev/null)" != "$node_stamp" ]; then
    echo "test-deps: npm ci (scripts/test-deps/package-lock.json)" >&2
    rm -rf "$deps/node" && mkdir -p "$deps/node"
    cp "$here/package.json" "$here/package-lock.json" "$deps/node/"
    (cd "$deps/node" && npm ci --no-audit --no-fund --loglevel=error >&2)
    echo "$node_stamp" > "$deps/node/.stamp"
fi

py_stamp="$(stamp "$here/requirements.txt")"
if [ "$(cat "$deps/venv/.stamp" 2>/dev/null)" != "$py_stamp" ]; then
    echo "test-deps: pip install -r scripts/test-deps/requirements.txt" >&2
    rm -rf "$deps/venv"
    python3 -m venv "$deps/venv"
    "$deps/venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
    echo "$py_stamp" > "$deps/venv/.stamp"
fi

if ! [ -x /usr/bin/chromium ]; then
    echo "test-deps: apt-get install chromium" >&2
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo_cmd apt-get install -y --no-install-recommends chromium >&2 \
        || { $sudo_cmd apt-get update >&2 && $sudo_cmd apt-get install -y --no-install-recommends chromium >&2; }
fi

export AIRLOCK_TEST_NODE_MODULES="$deps/node/node_modules"
export AIRLOCK_TEST_PYTHON="$deps/venv/bin/python"
export AIRLOCK_TEST_CHROMIUM=/usr/bin/chromium
