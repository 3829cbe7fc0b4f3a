#!/usr/bin/env bash
# Smoke run of the benchmark tool, for CI: builds stompgate-bench and the
# gateway, then runs every scenario tiny against a gateway it spawns on the
# machine's broker (127.0.0.1:5672):
#   fanout 200 subscribers for 3 s at max rate, idle 200 sessions,
#   send 20 sessions for 3 s;
# then `scale` tiny: 300 sessions on a topic each, 30 of them users on
# /user/queue/scale, 20 consuming one /queue, each SENDing once (per-key
# bindings, then again with --binding-mode auto); then
# `sockjs` tiny: 100 idle sessions and 100 fan-out subscribers over
# WebSocket and over SockJS xhr-streaming, 3 s per phase.
# Exits non-zero on any loss, duplicate, failed or dropped session or
# missing receipt, misrouted message, or a gateway holding more AMQP
# channels or queues than its configuration allows (never on speed).
#
#   scripts/bench-smoke.sh                      # debug builds
#   BENCH_PROFILE=release scripts/bench-smoke.sh
#   scripts/bench-smoke.sh --subscribers 500    # extra args go to `smoke`
#   BENCH_SCALE_ARGS="--sessions 1000" scripts/bench-smoke.sh   # to `scale`
#   BENCH_SOCKJS_ARGS="--subscribers 300" scripts/bench-smoke.sh # to `sockjs`
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PROFILE="${BENCH_PROFILE:-debug}"
case "$PROFILE" in
debug) build_flags=() ;;
release) build_flags=(--release) ;;
*)
    echo "bench-smoke: BENCH_PROFILE must be debug or release" >&2
    exit 2
    ;;
esac

"$ROOT/scripts/ensure-rabbitmq.sh"

echo "bench-smoke: cargo build ${build_flags[*]} -p stompgate-bench --bin stompgate-bench"
cargo build "${build_flags[@]}" -p stompgate-bench --bin stompgate-bench
echo "bench-smoke: cargo build ${build_flags[*]} --bin stompgate"
cargo build "${build_flags[@]}" --bin stompgate

# One socket per session on each side; the gateway inherits this limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

OUT="${BENCH_OUT_DIR:-bench-results}"
timeout 300 "target/$PROFILE/stompgate-bench" smoke \
    --gateway-bin "target/$PROFILE/stompgate" \
    --out-dir "$OUT" "$@"

# shellcheck disable=SC2086 # word splitting of BENCH_SCALE_ARGS is wanted
timeout 120 "target/$PROFILE/stompgate-bench" scale \
    --gateway-bin "target/$PROFILE/stompgate" \
    --sessions 300 --users 30 --queue-consumers 20 \
    --setup-timeout 20s --deliver-timeout 20s \
    --out-dir "$OUT/scale" ${BENCH_SCALE_ARGS:-}

# The same with amqp.binding_mode = "auto": the plane starts on one
# catch-all binding per exchange, and the burst of SENDs moves amq.topic to
# per-key bindings while messages flow (exactness is what is checked).
# shellcheck disable=SC2086 # word splitting of BENCH_SCALE_ARGS is wanted
timeout 120 "target/$PROFILE/stompgate-bench" scale \
    --gateway-bin "target/$PROFILE/stompgate" \
    --sessions 300 --users 30 --queue-consumers 20 --binding-mode auto \
    --setup-timeout 20s --deliver-timeout 20s \
    --out-dir "$OUT/scale-auto" ${BENCH_SCALE_ARGS:-}

# shellcheck disable=SC2086 # word splitting of BENCH_SOCKJS_ARGS is wanted
timeout 180 "target/$PROFILE/stompgate-bench" sockjs \
    --gateway-bin "target/$PROFILE/stompgate" \
    --subscribers 100 --idle-sessions 100 --hold 1s --duration 3s \
    --out-dir "$OUT/sockjs" ${BENCH_SOCKJS_ARGS:-}
# 200 clients resuming 20 messages each from a [history] stream (100 of
# memory: the resumes read the stream); fails on loss, duplicates, disorder,
# failed sessions or a changed channel/queue count.
# shellcheck disable=SC2086 # word splitting of BENCH_RESUME_ARGS is wanted
timeout 120 "target/$PROFILE/stompgate-bench" resume \
    --gateway-bin "target/$PROFILE/stompgate" \
    --clients 200 --topics 20 --missed 20 --live 20 --memory-messages 100 \
    --out-dir "$OUT/resume" ${BENCH_RESUME_ARGS:-}
