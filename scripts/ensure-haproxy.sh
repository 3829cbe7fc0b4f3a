#!/usr/bin/env bash
# Makes sure `haproxy` is on PATH, for tests/replicas.rs (several gateway
# replicas behind HAProxy, configured from deploy/haproxy-local.cfg.in).
#
# When it is missing: `apt-get update` (once) and Debian's haproxy package
# (`apt-get install -y`; sudo only when not root). Installing the package may
# also enable its system service; the tests never use that service, they run
# their own `haproxy -db -f FILE` in the foreground on ephemeral ports.
#
# Idempotent; does nothing when haproxy is already there.
set -euo pipefail

say() { echo "ensure-haproxy: $*"; }
die() {
    echo "ensure-haproxy: ERROR: $*" >&2
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

# Debian installs haproxy in /usr/sbin, which a non-root PATH may lack.
for dir in /usr/sbin /usr/local/sbin /sbin; do
    case ":$PATH:" in
        *":$dir:"*) ;;
        *) PATH="$PATH:$dir" ;;
    esac
done
export PATH

if command -v haproxy >/dev/null 2>&1; then
    say "found $(haproxy -v 2>/dev/null | head -n1)"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 || die "haproxy is missing and apt-get is not available: install HAProxy (2.x) by hand"

# One `apt-get update`, then the install.
say "apt-get update"
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
say "apt-get install haproxy"
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold haproxy </dev/null

command -v haproxy >/dev/null 2>&1 || die "apt-get installed haproxy but it is not on PATH"
say "installed $(haproxy -v 2>/dev/null | head -n1)"
