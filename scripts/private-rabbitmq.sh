#!/usr/bin/env bash
# A private RabbitMQ node with the Web-STOMP plugin, for the benchmarks
# (`stompgate-bench compare` runs RabbitMQ's own Web-STOMP against stompgate),
# or a private cluster of such nodes without the STOMP plugins (tests/cluster.rs).
# It never touches the machine's broker (rabbit@localhost on 5672): own node
# names, own data, log and config files under /tmp/stompgate-rabbit-<NAME>,
# own ports.
#
#   scripts/private-rabbitmq.sh start  [NAME]   # boots it (bounded), prints its ports
#   scripts/private-rabbitmq.sh stop   [NAME]   # stops that node only
#   scripts/private-rabbitmq.sh status [NAME]   # exit 0 when it runs
#   scripts/private-rabbitmq.sh join   NAME SEED  # NAME (running) joins SEED's cluster
#
#   scripts/private-rabbitmq.sh cluster-start [PREFIX [COUNT]]
#   scripts/private-rabbitmq.sh cluster-stop  [PREFIX [COUNT]]
#
# `cluster-start` boots nodes PREFIX1..PREFIXCOUNT (default sgc1..sgc3) in
# parallel, without the STOMP plugins, node i on AMQP port
# PRIVATE_RABBIT_CLUSTER_AMQP_BASE+i-1 (default 5721..) and distribution port
# PRIVATE_RABBIT_CLUSTER_DIST_BASE+i-1 (default 25721..), then joins nodes
# 2..COUNT to node 1 (stop_app, join_cluster, start_app) and prints one
# key=value line per node (as `start` does). A node that fails to start or
# join stops the whole cluster. `cluster-stop` stops them all.
#
# NAME defaults to stompgate-bench (node stompgate-bench@localhost).
# Ports (env overrides): PRIVATE_RABBIT_AMQP_PORT=5673,
# PRIVATE_RABBIT_WEB_STOMP_PORT=15675, PRIVATE_RABBIT_DIST_PORT=25673,
# PRIVATE_RABBIT_STOMP_PORT=61614 (the plain STOMP listener Web-STOMP pulls in).
# PRIVATE_RABBIT_WAIT_SECS (default 60) bounds the boot.
# PRIVATE_RABBIT_TLS_DIR=<dir> adds an AMQPS listener on PRIVATE_RABBIT_TLS_PORT
# (default 5671) with <dir>/ca.pem, <dir>/cert.pem and <dir>/key.pem (PEM; no
# client certificates asked for). PRIVATE_RABBIT_NO_STOMP=1 is the same as
# PRIVATE_RABBIT_PLUGINS= (no plugin: a plain AMQP(S) node boots faster).
# PRIVATE_RABBIT_PLUGINS (default rabbitmq_stomp,rabbitmq_web_stomp): the
# plugins to enable, comma-separated; empty for none (then no STOMP or
# Web-STOMP listener is configured and their ports are not used).
# With rabbitmq_management among the plugins, its API listens on
# 127.0.0.1:PRIVATE_RABBIT_MANAGEMENT_PORT (default 15673).
# PRIVATE_RABBIT_KEEP_DATA=1 keeps the node's data from an earlier start
# (restart after a crash).
#
# `start` prints one line of key=value pairs that tools parse:
#   node=... amqp_port=... web_stomp_port=... dist_port=... pid=... pidfile=... base=...
#
# Erlang cookie: the node runs as root with HOME set to <base>/home, which
# holds a copy of the cookie of the machine's broker
# (/var/lib/rabbitmq/.erlang.cookie). Debian's rabbitmqctl, run as root,
# switches to user rabbitmq and uses that same cookie, so the CLI reaches
# both nodes.
set -euo pipefail

CMD="${1:-}"
case "$CMD" in
cluster-*) NAME="${2:-sgc}" ;;
*) NAME="${2:-stompgate-bench}" ;;
esac
case "$NAME" in
*[!A-Za-z0-9_-]* | "") echo "private-rabbitmq: bad node name '$NAME'" >&2 && exit 2 ;;
esac

NODE="$NAME@localhost"
BASE="/tmp/stompgate-rabbit-$NAME"
AMQP_PORT="${PRIVATE_RABBIT_AMQP_PORT:-5673}"
WS_PORT="${PRIVATE_RABBIT_WEB_STOMP_PORT:-15675}"
DIST_PORT="${PRIVATE_RABBIT_DIST_PORT:-25673}"
STOMP_PORT="${PRIVATE_RABBIT_STOMP_PORT:-61614}"
PLUGINS="${PRIVATE_RABBIT_PLUGINS-rabbitmq_stomp,rabbitmq_web_stomp}"
MGMT_PORT="${PRIVATE_RABBIT_MANAGEMENT_PORT:-15673}"
[ -z "${PRIVATE_RABBIT_NO_STOMP:-}" ] || PLUGINS=
TLS_DIR="${PRIVATE_RABBIT_TLS_DIR:-}"
TLS_PORT="${PRIVATE_RABBIT_TLS_PORT:-5671}"
case ",$PLUGINS," in
*,rabbitmq_web_stomp,*) WITH_WEB_STOMP=1 ;;
*) WITH_WEB_STOMP= ;;
esac
case ",$PLUGINS," in
*,rabbitmq_stomp,* | *,rabbitmq_web_stomp,*) WITH_STOMP=1 ;;
*) WITH_STOMP= ;;
esac
case ",$PLUGINS," in
*,rabbitmq_management,*) WITH_MGMT=1 ;;
*) WITH_MGMT= ;;
esac
WAIT_SECS="${PRIVATE_RABBIT_WAIT_SECS:-60}"
PID_FILE="$BASE/rabbit.pid"
SYSTEM_COOKIE=/var/lib/rabbitmq/.erlang.cookie

export PATH="$PATH:/usr/sbin:/sbin"

say() { echo "private-rabbitmq: $*" >&2; }
die() {
    echo "private-rabbitmq: ERROR: $*" >&2
    exit 1
}

# rabbitmqctl against this node only, bounded.
ctl() {
    timeout "$((WAIT_SECS + 30))" rabbitmqctl -n "$NODE" "$@" </dev/null
}

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" >/dev/null 2>&1
}

node_pid() {
    [ -s "$PID_FILE" ] || return 1
    local pid
    pid="$(tr -dc '0-9' <"$PID_FILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

print_info() {
    echo "node=$NODE amqp_port=$AMQP_PORT ${WITH_WEB_STOMP:+web_stomp_port=$WS_PORT }dist_port=$DIST_PORT ${TLS_DIR:+tls_port=$TLS_PORT }pid=${1:-} pidfile=$PID_FILE base=$BASE"
}

show_logs() {
    local f
    for f in "$BASE"/log/*.log "$BASE"/log/*startup*; do
        [ -r "$f" ] || continue
        echo "----- tail of $f -----" >&2
        tail -n 30 "$f" >&2 || true
    done
}

find_server() {
    local s
    for s in /usr/lib/rabbitmq/bin/rabbitmq-server "$(command -v rabbitmq-server 2>/dev/null || true)"; do
        if [ -n "$s" ] && [ -x "$s" ]; then
            echo "$s"
            return 0
        fi
    done
    return 1
}

start() {
    if pid="$(node_pid)"; then
        say "$NODE already runs (pid $pid)"
        print_info "$pid"
        return 0
    fi
    local server
    server="$(find_server)" || die "rabbitmq-server is not installed (scripts/ensure-rabbitmq.sh installs it)"
    command -v rabbitmqctl >/dev/null 2>&1 || die "rabbitmqctl is not on PATH"
    local ports=("$AMQP_PORT" "$DIST_PORT")
    [ -n "$WITH_WEB_STOMP" ] && ports+=("$WS_PORT")
    [ -n "$WITH_STOMP" ] && ports+=("$STOMP_PORT")
    [ -n "$WITH_MGMT" ] && ports+=("$MGMT_PORT")
    [ -z "$TLS_DIR" ] || ports+=("$TLS_PORT")
    for p in "${ports[@]}"; do
        if port_open "$p"; then
            die "port $p on 127.0.0.1 is already taken (another private node? '$0 stop $NAME')"
        fi
    done

    # Fresh data each time (a benchmark node keeps nothing), unless
    # PRIVATE_RABBIT_KEEP_DATA=1: a restart after a crash keeps durable
    # queues and persistent messages, as a real broker would.
    if [ -z "${PRIVATE_RABBIT_KEEP_DATA:-}" ]; then
        rm -rf "$BASE"
    fi
    mkdir -p "$BASE/mnesia" "$BASE/log" "$BASE/home"
    if [ -r "$SYSTEM_COOKIE" ]; then
        cp "$SYSTEM_COOKIE" "$BASE/home/.erlang.cookie"
    elif [ -r "$HOME/.erlang.cookie" ]; then
        cp "$HOME/.erlang.cookie" "$BASE/home/.erlang.cookie"
    fi
    [ -f "$BASE/home/.erlang.cookie" ] && chmod 400 "$BASE/home/.erlang.cookie"

    cat >"$BASE/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
loopback_users = none
EOF
    if [ -n "$WITH_STOMP" ]; then
        echo "stomp.listeners.tcp.1 = 127.0.0.1:$STOMP_PORT" >>"$BASE/rabbitmq.conf"
    fi
    if [ -n "$WITH_WEB_STOMP" ]; then
        cat >>"$BASE/rabbitmq.conf" <<EOF
web_stomp.tcp.port = $WS_PORT
web_stomp.tcp.ip = 127.0.0.1
web_stomp.tcp.backlog = 4096
web_stomp.ws_opts.idle_timeout = 3600000
web_stomp.cowboy_opts.idle_timeout = 3600000
EOF
    fi
    if [ -n "$WITH_MGMT" ]; then
        cat >>"$BASE/rabbitmq.conf" <<EOF
management.tcp.port = $MGMT_PORT
management.tcp.ip = 127.0.0.1
EOF
    fi
    echo "[${PLUGINS}]." >"$BASE/enabled_plugins"
    if [ -n "$TLS_DIR" ]; then
        for f in ca.pem cert.pem key.pem; do
            [ -r "$TLS_DIR/$f" ] || die "PRIVATE_RABBIT_TLS_DIR has no readable $f"
        done
        cat >>"$BASE/rabbitmq.conf" <<EOF
listeners.ssl.default = $TLS_PORT
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/cert.pem
ssl_options.keyfile = $TLS_DIR/key.pem
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
EOF
    fi
    # Our own env file, so that /etc/rabbitmq/rabbitmq-env.conf (which names
    # the machine's node) does not apply; keep distribution on loopback.
    cat >"$BASE/rabbitmq-env.conf" <<EOF
NODENAME=$NODE
ERL_EPMD_ADDRESS=127.0.0.1
EOF

    # As many file descriptors as allowed: one per Web-STOMP connection.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    say "starting $NODE (AMQP $AMQP_PORT, ${WITH_WEB_STOMP:+Web-STOMP $WS_PORT, }distribution $DIST_PORT), fd limit $(ulimit -n)"
    (
        cd "$BASE"
        env HOME="$BASE/home" \
            RABBITMQ_NODENAME="$NODE" \
            RABBITMQ_CONF_ENV_FILE="$BASE/rabbitmq-env.conf" \
            RABBITMQ_CONFIG_FILE="$BASE/rabbitmq.conf" \
            RABBITMQ_ADVANCED_CONFIG_FILE="$BASE/advanced.config" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$BASE/enabled_plugins" \
            RABBITMQ_MNESIA_BASE="$BASE/mnesia" \
            RABBITMQ_LOG_BASE="$BASE/log" \
            RABBITMQ_PID_FILE="$PID_FILE" \
            RABBITMQ_NODE_PORT="$AMQP_PORT" \
            RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
            RABBITMQ_DIST_PORT="$DIST_PORT" \
            ERL_EPMD_ADDRESS=127.0.0.1 \
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
            "$server" -detached </dev/null >"$BASE/log/startup_stdout" 2>"$BASE/log/startup_stderr"
    ) || {
        show_logs
        die "rabbitmq-server -detached failed"
    }
    # The pid file appears once the VM runs; `wait` then waits for the app.
    local deadline=$((SECONDS + WAIT_SECS))
    until [ -s "$PID_FILE" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_logs
            die "no pid file $PID_FILE after ${WAIT_SECS}s"
        fi
        sleep 0.5
    done
    if ! ctl wait --timeout "$WAIT_SECS" "$PID_FILE" >/dev/null 2>"$BASE/log/ctl_wait_stderr"; then
        cat "$BASE/log/ctl_wait_stderr" >&2 || true
        show_logs
        die "$NODE did not boot within ${WAIT_SECS}s ('rabbitmqctl -n $NODE wait $PID_FILE')"
    fi
    until { [ -z "$WITH_WEB_STOMP" ] || port_open "$WS_PORT"; } && { [ -z "$WITH_MGMT" ] || port_open "$MGMT_PORT"; } && { [ -z "$TLS_DIR" ] || port_open "$TLS_PORT"; } && port_open "$AMQP_PORT"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_logs
            die "$NODE booted but its ports ($AMQP_PORT${WITH_WEB_STOMP:+/$WS_PORT}) do not answer"
        fi
        sleep 0.5
    done
    local pid
    pid="$(node_pid)" || die "$NODE booted but its pid file is stale"
    say "$NODE up: amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f${WITH_WEB_STOMP:+, ws://127.0.0.1:$WS_PORT/ws} (pid $pid, fd limit $(grep 'open files' "/proc/$pid/limits" | awk '{print $4}'))"
    print_info "$pid"
}

stop() {
    if ! pid="$(node_pid)"; then
        say "$NODE is not running"
        return 0
    fi
    say "stopping $NODE (pid $pid)"
    if ! ctl stop "$PID_FILE" >/dev/null; then
        say "'rabbitmqctl -n $NODE stop' failed; sending SIGTERM to pid $pid (that node only)"
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 30))
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
    fi
    say "$NODE stopped"
}

status() {
    if pid="$(node_pid)"; then
        print_info "$pid"
        return 0
    fi
    say "$NODE is not running"
    return 1
}

# NAME (running, fresh) joins the cluster of node SEED@localhost.
join() {
    local seed="${1:-}"
    case "$seed" in
    *[!A-Za-z0-9_-]* | "") die "join: bad seed node name '$seed'" ;;
    esac
    node_pid >/dev/null || die "$NODE is not running"
    say "$NODE joins $seed@localhost"
    ctl stop_app >/dev/null || die "'rabbitmqctl -n $NODE stop_app' failed"
    ctl join_cluster "$seed@localhost" >/dev/null || die "'rabbitmqctl -n $NODE join_cluster $seed@localhost' failed"
    # start_app returns once the app runs again.
    ctl start_app >/dev/null || die "'rabbitmqctl -n $NODE start_app' failed"
}

CLUSTER_COUNT=3
if [[ "$CMD" == cluster-* ]]; then
    CLUSTER_COUNT="${3:-3}"
    case "$CLUSTER_COUNT" in
    *[!0-9]* | "" | 0) echo "private-rabbitmq: bad node count '$CLUSTER_COUNT'" >&2 && exit 2 ;;
    esac
fi
CLUSTER_AMQP_BASE="${PRIVATE_RABBIT_CLUSTER_AMQP_BASE:-5721}"
CLUSTER_DIST_BASE="${PRIVATE_RABBIT_CLUSTER_DIST_BASE:-25721}"

# Runs this script for node i of the cluster (its ports, no STOMP plugins).
cluster_node() {
    local i="$1"
    shift
    env PRIVATE_RABBIT_AMQP_PORT="$((CLUSTER_AMQP_BASE + i - 1))" \
        PRIVATE_RABBIT_DIST_PORT="$((CLUSTER_DIST_BASE + i - 1))" \
        PRIVATE_RABBIT_PLUGINS="" \
        bash "$0" "$1" "$NAME$i" "${@:2}"
}

# Stops every node, in parallel (each bounded).
cluster_stop() {
    local i pids=()
    for i in $(seq 1 "$CLUSTER_COUNT"); do
        cluster_node "$i" stop &
        pids+=($!)
    done
    for i in "${pids[@]}"; do
        wait "$i" || true
    done
}

cluster_start() {
    local i out
    out="$(mktemp -d /tmp/stompgate-cluster-XXXXXX)"
    # Boot every node at once (each bounded by WAIT_SECS), then join them.
    for i in $(seq 1 "$CLUSTER_COUNT"); do
        cluster_node "$i" start >"$out/$i.out" 2>"$out/$i.err" &
        echo $! >"$out/$i.pid"
    done
    local failed=
    for i in $(seq 1 "$CLUSTER_COUNT"); do
        if ! wait "$(cat "$out/$i.pid")"; then
            failed=1
            cat "$out/$i.err" >&2
        fi
    done
    if [ -n "$failed" ]; then
        cluster_stop
        rm -rf "$out"
        die "the nodes of cluster $NAME did not all start"
    fi
    # Nodes 2..COUNT join node 1 at the same time (each rabbitmqctl call
    # takes seconds on a busy machine).
    for i in $(seq 2 "$CLUSTER_COUNT"); do
        cluster_node "$i" join "${NAME}1" 2>>"$out/$i.err" &
        echo $! >"$out/$i.pid"
    done
    for i in $(seq 2 "$CLUSTER_COUNT"); do
        if ! wait "$(cat "$out/$i.pid")"; then
            failed=1
            cat "$out/$i.err" >&2
        fi
    done
    if [ -n "$failed" ]; then
        cluster_stop
        rm -rf "$out"
        die "not every node of cluster $NAME could join ${NAME}1@localhost"
    fi
    local running
    running="$(timeout 30 rabbitmqctl -n "${NAME}1@localhost" eval 'length(rabbit_nodes:all_running()).' </dev/null 2>/dev/null | tr -dc '0-9')"
    if [ "$running" != "$CLUSTER_COUNT" ]; then
        cluster_stop
        rm -rf "$out"
        die "cluster $NAME has ${running:-?} running nodes, not $CLUSTER_COUNT"
    fi
    say "cluster $NAME up: $CLUSTER_COUNT nodes"
    for i in $(seq 1 "$CLUSTER_COUNT"); do
        cat "$out/$i.out"
    done
    rm -rf "$out"
}

case "$CMD" in
start) start ;;
stop) stop ;;
status) status ;;
join) join "${3:-}" ;;
cluster-start) cluster_start ;;
cluster-stop) cluster_stop ;;
*)
    echo "usage: $0 start|stop|status [NAME] | join NAME SEED | cluster-start|cluster-stop [PREFIX [COUNT]]" >&2
    exit 2
    ;;
esac
