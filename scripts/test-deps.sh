#!/usr/bin/env bash
# Installs (once, cached) the real external programs the suite drives, and exports where they are:
#   AIRLOCK_TEST_NODE_MODULES  npm packages of scripts/test-deps/package.json (package-lock.json):
#                              @octokit/openapi (GitHub's API description, for the forge stand-in),
#                              @actions/workflow-parser (GitHub's workflow parser, for ci init),
#                              @modelcontextprotocol/inspector (an MCP client), playwright-core
#   AIRLOCK_TEST_PYTHON        a Python with scripts/test-deps/requirements.txt (the MCP SDK `mcp`)
#   AIRLOCK_TEST_CHROMIUM      Debian's chromium (installed with apt-get when missing)
# and installs Debian's protoc (protobuf-compiler, libprotobuf-dev for its well-known types):
# building crates/airlock-testcloud (the local test cloud provider) needs it.
# Source it (`. scripts/test-deps.sh`) or let scripts/test.sh do it. The cache lives in
# $AIRLOCK_TEST_DEPS (default ~/.cache/airlock-test-deps) one directory per manifest version.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/test-deps"
deps="${AIRLOCK_TEST_DEPS:-$HOME/.cache/airlock-test-deps}"
mkdir -p "$deps"

stamp() { cat "$@" | sha256sum | cut -c1-16; }

# Each manifest version gets its own directory, named by the manifests' digest and filled in a
# temporary directory first, so checkouts with different manifests (branches, worktrees) and
# concurrent runs share the cache without ever seeing a half-installed or foreign tree.
node_dir="$deps/node-$(stamp "$here/package.json" "$here/package-lock.json")"
if ! [ -d "$node_dir" ]; then
    echo "test-deps: npm ci (scripts/test-deps/package-lock.json)" >&2
    tmp="$(mktemp -d "$deps/.node.XXXXXX")"
    cp "$here/package.json" "$here/package-lock.json" "$tmp/"
    (cd "$tmp" && npm ci --no-audit --no-fund --loglevel=error >&2)
    mv -T "$tmp" "$node_dir" 2>/dev/null || rm -rf "$tmp"
fi

venv_dir="$deps/venv-$(stamp "$here/requirements.txt")"
if ! [ -e "$venv_dir/.complete" ]; then
    # A venv records its own path, so it is built in place, under a lock, and marked complete.
    (
        flock 9
        if ! [ -e "$venv_dir/.complete" ]; then
            echo "test-deps: pip install -r scripts/test-deps/requirements.txt" >&2
            rm -rf "$venv_dir"
            python3 -m venv "$venv_dir"
            "$venv_dir/bin/pip" install --quiet --disable-pip-version-check \
                -r "$here/requirements.txt" >&2
            touch "$venv_dir/.complete"
        fi
    ) 9>"$deps/.venv.lock"
fi

if ! [ -x /usr/bin/chromium ]; then
    echo "test-deps: apt-get install chromium" >&2
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo_cmd apt-get install -y --no-install-recommends chromium >&2 \
        || { $sudo_cmd apt-get update >&2 && $sudo_cmd apt-get install -y --no-install-recommends chromium >&2; }
fi

# The test cloud provider's protocol code is generated with protoc at build time (tf-provider's
# build script), so it must be here before cargo builds the workspace.
if ! command -v protoc >/dev/null 2>&1 || ! [ -e /usr/include/google/protobuf/empty.proto ]; then
    echo "test-deps: apt-get install protobuf-compiler libprotobuf-dev" >&2
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo_cmd apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev >&2 \
        || { $sudo_cmd apt-get update >&2 && $sudo_cmd apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev >&2; }
fi

export AIRLOCK_TEST_NODE_MODULES="$node_dir/node_modules"
export AIRLOCK_TEST_PYTHON="$venv_dir/bin/python"
export AIRLOCK_TEST_CHROMIUM=/usr/bin/chromium
