#!/usr/bin/env bash
# THE run command: makes sure RabbitMQ answers on 127.0.0.1:5672, then runs
# the gateway (release build). It listens on 127.0.0.1:15674 by default
# (WebSocket endpoint ws://127.0.0.1:15674/ws); arguments go to stompgate:
#
#   scripts/run.sh
#   scripts/run.sh --listen 127.0.0.1:15675 --amqp-url amqp://guest:guest@127.0.0.1:5672/%2f
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

"$ROOT/scripts/ensure-rabbitmq.sh"

# A development gateway lets anyone in (anonymous access must be enabled
# explicitly; production configurations set JWT keys or users instead, see
# docs/security.md). Override with STOMPGATE_AUTH__ANONYMOUS=false.
export STOMPGATE_AUTH__ANONYMOUS="${STOMPGATE_AUTH__ANONYMOUS:-true}"

exec cargo run --release --bin stompgate -- "$@"
