#!/usr/bin/env bash
# Side by side: the stomp.py scenarios of tests/py/stomp_scenarios.py against
# RabbitMQ's own Web-STOMP (a private node, scripts/private-rabbitmq.sh) and
# against a stompgate bridged to that same node's AMQP port, then prints
# where the two differ (docs/protocol.md lists the differences kept).
#
#   scripts/compare-webstomp.sh [--only heartbeats errors ...]
#
# Ports (env): COMPARE_AMQP_PORT=5680, COMPARE_WEB_STOMP_PORT=15680,
# COMPARE_DIST_PORT=25680, COMPARE_STOMP_PORT=61680, COMPARE_GATEWAY_PORT=15690.
# The private node (name sg-compare) is started when not running and stopped
# at the end unless COMPARE_KEEP_NODE=1; it never touches the machine's broker.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export PRIVATE_RABBIT_AMQP_PORT="${COMPARE_AMQP_PORT:-5680}"
export PRIVATE_RABBIT_WEB_STOMP_PORT="${COMPARE_WEB_STOMP_PORT:-15680}"
export PRIVATE_RABBIT_DIST_PORT="${COMPARE_DIST_PORT:-25680}"
export PRIVATE_RABBIT_STOMP_PORT="${COMPARE_STOMP_PORT:-61680}"
GATEWAY_PORT="${COMPARE_GATEWAY_PORT:-15690}"
NODE=sg-compare

PY="$("$ROOT/scripts/ensure-python.sh")"

started_node=0
if ! scripts/private-rabbitmq.sh status "$NODE" >/dev/null 2>&1; then
    scripts/private-rabbitmq.sh start "$NODE" >/dev/null
    started_node=1
fi

cargo build --quiet --bin stompgate
CONFIG="$(mktemp /tmp/stompgate-compare-XXXXXX.toml)"
cat >"$CONFIG" <<TOML
listen = "127.0.0.1:$GATEWAY_PORT"
[amqp]
url = "amqp://guest:guest@127.0.0.1:$PRIVATE_RABBIT_AMQP_PORT/%2f"
[auth]
anonymous = false
[[auth.users]]
login = "guest"
passcode = "guest"
TOML
target/debug/stompgate --config "$CONFIG" >/tmp/stompgate-compare.log 2>&1 &
GW_PID=$!
cleanup() {
    kill "$GW_PID" 2>/dev/null || true
    wait "$GW_PID" 2>/dev/null || true
    rm -f "$CONFIG"
    if [ "$started_node" = 1 ] && [ "${COMPARE_KEEP_NODE:-0}" != 1 ]; then
        scripts/private-rabbitmq.sh stop "$NODE" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$GATEWAY_PORT/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.2
done

"$PY" tests/py/compare.py \
    --webstomp "ws://127.0.0.1:$PRIVATE_RABBIT_WEB_STOMP_PORT/ws" \
    --stompgate "ws://127.0.0.1:$GATEWAY_PORT/ws" "$@"
