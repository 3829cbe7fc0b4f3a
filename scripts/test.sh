#!/usr/bin/env bash
# THE test command: makes sure RabbitMQ (127.0.0.1:5672), Node.js with the
# JavaScript client tests' dependencies, Python with stomp.py (a venv under
# target/, for tests/stomppy.rs, and one with the pins of RabbitMQ's own
# STOMP suite, for tests/rabbitmq_suite.rs) and Chromium with puppeteer-core
# are there,
# then runs every Rust test target (unit tests, tests/*.rs, including
# tests/stompjs.rs which drives the real @stomp/stompjs client through node,
# tests/sockjs_node.rs which runs it over the real sockjs-client in node,
# tests/demo_browser.rs which drives the demo pages in headless Chromium, and
# tests/sockjs_browser.rs which drives every sockjs-client transport in
# Chromium against two replicas behind HAProxy, and tests/rabbitmq_suite.rs
# which runs RabbitMQ's python STOMP suite against stompgate, about 2 minutes).
#
#   scripts/test.sh                      # everything
#   scripts/test.sh -- --nocapture       # extra args go to `cargo test --all-targets`
#   scripts/test.sh --test stompjs       # args that pick targets replace --all-targets
#   RUST_LOG=stompgate=debug scripts/test.sh   # gateway logs (RUST_LOG is not set by default)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

"$ROOT/scripts/ensure-rabbitmq.sh"
"$ROOT/scripts/ensure-node.sh"
"$ROOT/scripts/ensure-chromium.sh"
"$ROOT/scripts/ensure-haproxy.sh"
"$ROOT/scripts/ensure-python.sh" >/dev/null
"$ROOT/scripts/ensure-python.sh" suite >/dev/null

# --all-targets unless the arguments pick targets themselves (cargo would
# otherwise add them to all targets rather than select them).
picks_targets=0
for arg in "$@"; do
    case "$arg" in
    --) break ;;
    --lib | --bins | --bin | --bin=* | --tests | --test | --test=* | --benches | --bench | --bench=* | \
        --examples | --example | --example=* | --doc | --all-targets) picks_targets=1 ;;
    esac
done
if [ "$picks_targets" -eq 0 ]; then
    set -- --all-targets "$@"
fi

echo "test.sh: cargo test $*"
cargo test "$@"
