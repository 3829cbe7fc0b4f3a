#!/usr/bin/env bash
# THE run command: makes sure RabbitMQ answers on 127.0.0.1:5672, then runs
# (release builds) the gateway with the demo pages and the demo backend, and
# prints the demo URLs. Ctrl-C stops both.
#
#   scripts/run.sh
#   scripts/run.sh --listen 127.0.0.1:15675 --amqp-url amqp://guest:guest@127.0.0.1:5672/%2f
#
# - The gateway listens on 127.0.0.1:15674 (WebSocket endpoint
#   ws://127.0.0.1:15674/ws) with demo/stompgate.toml: anonymous access for
#   development, rules that keep the /user/ exchange private, and the demo
#   pages under /demo/ (demo.enabled). Arguments go to stompgate; STOMPGATE_*
#   variables override the file.
# - The demo backend (examples/demo-backend) listens on 127.0.0.1:15690
#   (DEMO_BACKEND_LISTEN): order simulator (DEMO_ORDER_INTERVAL_MS, default
#   3000), QR login, demo JWTs.
# - Both get the same HS256 secret: DEMO_JWT_SECRET when set, else one made
#   for this checkout and kept in target/demo-jwt-secret (so tokens survive a
#   restart of this script).
# - SockJS is on (demo/stompgate.toml): http://127.0.0.1:15674/sockjs, and the
#   demo pages list every SockJS transport next to WebSocket. The
#   sockjs-client bundle the gateway serves (/sockjs/sockjs.min.js) is the
#   locked npm package of tests/browser (`npm ci` there when missing; never
#   committed, never from a CDN). Without npm or network, SockJS is turned
#   off and the demos run over WebSocket only.
# - RUN_PROFILE=dev builds and runs debug binaries instead.
# - When the gateway stops on its own (e.g. `kill <its pid>`, to watch the
#   pages reconnect), it is started again after 2 s.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

"$ROOT/scripts/ensure-rabbitmq.sh"

# Where the gateway listens and which broker it uses, from the arguments or
# the environment, for the demo backend and the URLs printed below.
listen="${STOMPGATE_LISTEN:-127.0.0.1:15674}"
amqp_url="${STOMPGATE_AMQP_URL:-amqp://127.0.0.1:5672/%2f}"
prev=""
for arg in "$@"; do
    case "$prev" in
    --listen) listen="$arg" ;;
    --amqp-url) amqp_url="$arg" ;;
    esac
    case "$arg" in
    --listen=*) listen="${arg#--listen=}" ;;
    --amqp-url=*) amqp_url="${arg#--amqp-url=}" ;;
    esac
    prev="$arg"
done
backend_listen="${DEMO_BACKEND_LISTEN:-127.0.0.1:15690}"

# The demo JWT secret, shared by the gateway and the demo backend.
if [ -z "${DEMO_JWT_SECRET:-}" ]; then
    secret_file="$ROOT/target/demo-jwt-secret"
    if [ ! -s "$secret_file" ]; then
        mkdir -p "$ROOT/target"
        (
            umask 077
            head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret_file"
        )
    fi
    DEMO_JWT_SECRET="$(cat "$secret_file")"
fi
export DEMO_JWT_SECRET
export STOMPGATE_AUTH__JWT__HS256_SECRET="$DEMO_JWT_SECRET"
# A development gateway lets anyone in (production configurations set JWT
# keys or users and no anonymous access, see docs/security.md).
export STOMPGATE_AUTH__ANONYMOUS="${STOMPGATE_AUTH__ANONYMOUS:-true}"
export STOMPGATE_DEMO__BACKEND_URL="${STOMPGATE_DEMO__BACKEND_URL:-http://$backend_listen}"

# The sockjs-client bundle for SockJS (demo/stompgate.toml enables it).
sockjs_dir="$ROOT/tests/browser"
sockjs_bundle="$sockjs_dir/node_modules/sockjs-client/dist/sockjs.min.js"
sockjs_stamp="$sockjs_dir/node_modules/.package-lock.json"
if [ "${STOMPGATE_SOCKJS__ENABLED:-true}" = "true" ]; then
    if [ ! -f "$sockjs_bundle" ] || [ "$sockjs_dir/package-lock.json" -nt "$sockjs_stamp" ]; then
        echo "run.sh: npm ci in tests/browser (the sockjs-client bundle the gateway serves)"
        if ! command -v npm >/dev/null 2>&1; then
            "$ROOT/scripts/ensure-node.sh" || true
        fi
        (cd "$sockjs_dir" && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error </dev/null) ||
            echo "run.sh: npm ci in tests/browser failed" >&2
    fi
    if [ -f "$sockjs_bundle" ]; then
        export STOMPGATE_SOCKJS__CLIENT_FILE="$sockjs_bundle"
    else
        echo "run.sh: $sockjs_bundle is missing: SockJS is off, the demos use WebSocket only" >&2
        export STOMPGATE_SOCKJS__ENABLED=false
    fi
fi

# RUN_PROFILE=dev: a debug build (quicker to build, slower to run).
case "${RUN_PROFILE:-release}" in
release) build_flags=(--release) bin_dir="$ROOT/target/release" ;;
dev | debug) build_flags=() bin_dir="$ROOT/target/debug" ;;
*)
    echo "run.sh: RUN_PROFILE must be release or dev" >&2
    exit 2
    ;;
esac
echo "run.sh: building stompgate and examples/demo-backend (${RUN_PROFILE:-release})"
cargo build "${build_flags[@]}" --bin stompgate --example demo-backend

backend_pid=""
gateway_pid=""
stopping=0
cleanup() {
    stopping=1
    for pid in $gateway_pid $backend_pid; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

DEMO_BACKEND_LISTEN="$backend_listen" STOMPGATE_AMQP_URL="$amqp_url" \
    "$bin_dir/examples/demo-backend" &
backend_pid=$!
# Wait (bounded) until the backend answers, or stop if it exited.
for _ in $(seq 1 100); do
    if ! kill -0 "$backend_pid" 2>/dev/null; then
        echo "run.sh: the demo backend exited (is $backend_listen in use?); stopping" >&2
        exit 1
    fi
    if timeout 1 bash -c "exec 3<>/dev/tcp/${backend_listen%:*}/${backend_listen##*:}" 2>/dev/null; then
        break
    fi
    sleep 0.1
done

base="http://$listen"
if [ "${STOMPGATE_SOCKJS__ENABLED:-true}" = "true" ]; then
    sockjs_line="$base/sockjs  (xhr-streaming, eventsource, htmlfile, xhr/jsonp polling; the demos' transport selector)"
else
    sockjs_line="off (no sockjs-client bundle: npm ci in tests/browser)"
fi
cat <<MSG

  stompgate      ws://$listen/ws        (STOMP over WebSocket; AMQP: $amqp_url)
  SockJS         $sockjs_line
  demo backend   http://$backend_listen (order simulator, QR login, demo JWTs)

  Demos:
    merchant back office   $base/demo/merchant/
    QR-code login          $base/demo/qr-login/
    all demos              $base/demo/

  Ctrl-C stops both. Kill the gateway alone (its pid is logged below) to watch
  the pages reconnect: it is started again after 2 s.

MSG

while true; do
    started=$SECONDS
    "$bin_dir/stompgate" --config "$ROOT/demo/stompgate.toml" "$@" &
    gateway_pid=$!
    echo "run.sh: gateway pid $gateway_pid, demo backend pid $backend_pid"
    status=0
    wait "$gateway_pid" || status=$?
    gateway_pid=""
    [ "$stopping" -eq 0 ] || break
    if [ $((SECONDS - started)) -lt 3 ]; then
        echo "run.sh: the gateway exited at once (status $status); stopping" >&2
        exit 1
    fi
    echo "run.sh: the gateway stopped (status $status); starting it again in 2 s"
    sleep 2
done
