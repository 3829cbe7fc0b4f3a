#!/usr/bin/env bash
# Makes sure Node.js and npm are there (Debian's nodejs and npm packages when
# `node` is missing; apt-get, sudo only when not root) and that the
# JavaScript client tests in tests/js have their dependencies
# (@stomp/stompjs and ws for tests/stompjs.rs, sockjs-client for
# tests/sockjs_node.rs; `npm ci`, only when node_modules is missing, older
# than package-lock.json, or lacks a dependency package.json names).
#
# Idempotent; quick when everything is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JS_DIR="$ROOT/tests/js"

say() { echo "ensure-node: $*"; }
die() {
    echo "ensure-node: ERROR: $*" >&2
    exit 1
}

# Runs a command as root: directly when root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "not root and sudo is missing: cannot run $*"
    fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        # Skip `apt-get update` when the lists were refreshed within the last hour.
        if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -60 2>/dev/null | head -n1)" ]; then
            say "apt-get update"
            as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
        fi
        apt_updated=1
    fi
    say "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" </dev/null
}

did=()
if ! command -v node >/dev/null 2>&1; then
    if command -v npm >/dev/null 2>&1; then
        apt_install nodejs
    else
        apt_install nodejs npm
    fi
    did+=("installed nodejs from Debian")
fi
if ! command -v npm >/dev/null 2>&1; then
    # node is there but npm is not (a Node.js from elsewhere ships its own npm;
    # Debian's npm only fits Debian's nodejs).
    apt_install npm || die "node is installed but npm is missing, and apt-get install npm failed"
    did+=("installed npm from Debian")
fi

node_version="$(node --version)"
node_major="${node_version#v}"
node_major="${node_major%%.*}"
if [ "$node_major" -lt 18 ]; then
    die "Node.js $node_version is too old: the tests need node >= 18 (node:test)"
fi

[ -f "$JS_DIR/package-lock.json" ] || die "$JS_DIR/package-lock.json is missing"
stamp="$JS_DIR/node_modules/.package-lock.json"
# Every dependency of package.json has its directory (a node_modules
# installed before a dependency was added may have a newer stamp).
deps_missing=0
if [ -f "$stamp" ] && ! (cd "$JS_DIR" && node -e '
    const fs = require("fs");
    const deps = Object.keys(require("./package.json").dependencies || {});
    process.exit(deps.every((d) => fs.existsSync(`node_modules/${d}/package.json`)) ? 0 : 1);
' </dev/null); then
    deps_missing=1
fi
if [ ! -f "$stamp" ] || [ "$deps_missing" -eq 1 ] || [ "$JS_DIR/package-lock.json" -nt "$stamp" ] || [ "$JS_DIR/package.json" -nt "$stamp" ]; then
    say "npm ci in tests/js"
    (cd "$JS_DIR" && npm ci --no-audit --no-fund --loglevel=error </dev/null)
    did+=("ran npm ci in tests/js")
fi

if [ "${#did[@]}" -eq 0 ]; then
    say "node $node_version, npm $(npm --version) and tests/js/node_modules already there; nothing to do"
else
    say "$(
        IFS=,
        echo "${did[*]}"
    ); node $node_version, npm $(npm --version)"
fi
