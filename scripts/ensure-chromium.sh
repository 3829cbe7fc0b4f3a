#!/usr/bin/env bash
# Makes sure a headless-capable Chromium is there for the browser tests
# (tests/demo_browser.rs, tests/sockjs_browser.rs): Debian's `chromium`
# package when /usr/bin/chromium is missing (apt-get; sudo only when not
# root), and that tests/browser has its npm dependencies (`puppeteer-core`,
# which never downloads a browser: the tests point it at /usr/bin/chromium;
# `sockjs-client`, whose dist/sockjs.min.js the gateway serves in the tests
# and in scripts/run.sh; `@stomp/stompjs`). Node and npm
# themselves come from scripts/ensure-node.sh, which runs first.
#
# Idempotent; quick when everything is already there.
# Env: DEMO_CHROMIUM overrides the browser binary the tests use.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JS_DIR="$ROOT/tests/browser"
CHROMIUM="${DEMO_CHROMIUM:-/usr/bin/chromium}"

say() { echo "ensure-chromium: $*"; }
die() {
    echo "ensure-chromium: ERROR: $*" >&2
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

did=()
if [ ! -x "$CHROMIUM" ]; then
    # Skip `apt-get update` when the lists were refreshed within the last hour.
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -60 2>/dev/null | head -n1)" ]; then
        say "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
    fi
    say "apt-get install chromium"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold chromium </dev/null
    [ -x "$CHROMIUM" ] || die "$CHROMIUM is still missing after apt-get install chromium"
    did+=("installed chromium from Debian")
fi

command -v npm >/dev/null 2>&1 || die "npm is missing: run scripts/ensure-node.sh first"
[ -f "$JS_DIR/package-lock.json" ] || die "$JS_DIR/package-lock.json is missing"
stamp="$JS_DIR/node_modules/.package-lock.json"
if [ ! -f "$stamp" ] || [ "$JS_DIR/package-lock.json" -nt "$stamp" ] || [ "$JS_DIR/package.json" -nt "$stamp" ]; then
    say "npm ci in tests/browser"
    # PUPPETEER_SKIP_DOWNLOAD: puppeteer-core never downloads one, but be explicit.
    (cd "$JS_DIR" && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error </dev/null)
    did+=("ran npm ci in tests/browser")
fi

version="$("$CHROMIUM" --version 2>/dev/null || echo "unknown version")"
if [ "${#did[@]}" -eq 0 ]; then
    say "$version and tests/browser/node_modules already there; nothing to do"
else
    say "$(
        IFS=,
        echo "${did[*]}"
    ); $version"
fi
