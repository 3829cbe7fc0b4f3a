#!/usr/bin/env bash
# Makes sure the Python client tests can run and prints the venv's python on
# stdout. Installs python3-venv/python3-pip from Debian when the machine has
# no working `python3 -m venv`.
#
#   scripts/ensure-python.sh          # target/py-venv: pinned stomp.py and
#                                     # websocket-client (stomp.py's WebSocket
#                                     # transport, `WSStompConnection`), for
#                                     # tests/stomppy.rs and compare-webstomp.sh
#   scripts/ensure-python.sh suite    # target/py-venv-suite: RabbitMQ's python
#                                     # STOMP suite's own pins
#                                     # (tests/rabbitmq_stomp_suite/src/requirements.txt:
#                                     # stomp.py 8.2.0, pika, rabbitman), for
#                                     # tests/rabbitmq_suite.rs
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHICH="${1:-client}"
case "$WHICH" in
client)
    VENV="${STOMPGATE_PY_VENV:-$ROOT/target/py-venv}"
    STOMP_PY_VERSION="9.0.0"
    WEBSOCKET_CLIENT_VERSION="1.9.2"
    PINS=("stomp.py==$STOMP_PY_VERSION" "websocket-client==$WEBSOCKET_CLIENT_VERSION")
    STAMP="$VENV/.stompgate-pins-$STOMP_PY_VERSION-$WEBSOCKET_CLIENT_VERSION"
    ;;
suite)
    VENV="${STOMPGATE_PY_SUITE_VENV:-$ROOT/target/py-venv-suite}"
    REQUIREMENTS="$ROOT/tests/rabbitmq_stomp_suite/src/requirements.txt"
    PINS=(-r "$REQUIREMENTS")
    STAMP="$VENV/.stompgate-pins-$(cksum <"$REQUIREMENTS" | tr -dc '0-9')"
    ;;
*)
    echo "usage: $0 [client|suite]" >&2
    exit 2
    ;;
esac

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
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}" >&2
touch "$STAMP"
echo "$VENV/bin/python"
