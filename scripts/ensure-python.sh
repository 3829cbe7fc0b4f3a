#!/usr/bin/env bash
# Makes sure the Python client tests can run: a virtualenv under
# target/py-venv with pinned stomp.py and websocket-client (stomp.py's
# WebSocket transport, `WSStompConnection`, needs it). Prints the venv's
# python on stdout. Installs python3-venv/python3-pip from Debian when the
# machine has no working `python3 -m venv`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STOMPGATE_PY_VENV:-$ROOT/target/py-venv}"
STOMP_PY_VERSION="9.0.0"
WEBSOCKET_CLIENT_VERSION="1.9.2"
STAMP="$VENV/.stompgate-pins-$STOMP_PY_VERSION-$WEBSOCKET_CLIENT_VERSION"

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ]; then
    echo "$VENV/bin/python"
    exit 0
fi

if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1 \
    || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    echo "ensure-python: installing python3-venv and python3-pip" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq python3 python3-venv python3-pip >&2
fi

rm -rf "$VENV"
python3 -m venv "$VENV" >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "stomp.py==$STOMP_PY_VERSION" "websocket-client==$WEBSOCKET_CLIENT_VERSION" >&2
touch "$STAMP"
echo "$VENV/bin/python"
