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

exec cargo run --release --bin stompgate -- "$@"
