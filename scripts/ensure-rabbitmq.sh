#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672 (guest/guest), for
# the tests and for scripts/run.sh.
#
# - Port 5672 already answers: does nothing to the broker (never restarts or
#   stops it) except enabling rabbitmq_management when the management API
#   does not answer on 15672 (tests/rabbit_auth.rs), and checks that the
#   `rabbitmqctl` CLI used by tests works.
# - Otherwise: installs Debian's rabbitmq-server if it is missing
#   (apt-get; sudo only when not root), starts the broker if it is not
#   running (systemd when it runs, else `rabbitmq-server -detached`), and
#   waits, bounded, until port 5672 answers.
#
# Idempotent; quick when the broker is already up.
# Env: RABBITMQ_WAIT_SECS (default 60) bounds the wait for the port.
set -euo pipefail

HOST=127.0.0.1
PORT=5672
WAIT_SECS="${RABBITMQ_WAIT_SECS:-60}"
PID_FILE=/var/lib/rabbitmq/stompgate-rabbitmq.pid

say() { echo "ensure-rabbitmq: $*"; }
warn() { echo "ensure-rabbitmq: WARNING: $*" >&2; }
die() {
    echo "ensure-rabbitmq: ERROR: $*" >&2
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

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$PORT" >/dev/null 2>&1
}

wait_for_port() {
    local deadline=$((SECONDS + WAIT_SECS))
    until port_open; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 1
    done
}

apt_updated=0
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ "$apt_updated" -eq 0 ]; then
        # Skip `apt-get update` when the lists were refreshed within the last hour.
        if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -60 2>/dev/null | head -n1)" ]; then
            say "apt-get update"
            as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
        fi
        apt_updated=1
    fi
    say "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" </dev/null
}

# Is an Erlang VM running a RabbitMQ node (maybe still booting)? Plain /proc
# scan, so it works without procps.
rabbit_vm_running() {
    local f cmd
    for f in /proc/[0-9]*/cmdline; do
        cmd=$({ tr '\0' ' ' <"$f"; } 2>/dev/null) || continue
        if [[ $cmd == *beam*"-s rabbit boot"* ]]; then
            return 0
        fi
    done
    return 1
}

# The tests call `rabbitmqctl list_queues` as the user that runs them.
check_ctl() {
    if ! command -v rabbitmqctl >/dev/null 2>&1; then
        warn "the broker answers but 'rabbitmqctl' is not on PATH; tests that call it will fail" \
            "(Debian: it is in /usr/sbin, from the rabbitmq-server package)"
        return 0
    fi
    if ! timeout 60 rabbitmqctl -q list_queues name >/dev/null 2>&1 </dev/null; then
        warn "'rabbitmqctl list_queues' fails for user $(id -un); tests that call it will fail" \
            "(Debian's rabbitmqctl must run as root or rabbitmq)"
    fi
}

# tests/rabbit_auth.rs (auth.mode = "rabbitmq") reads permissions from the
# management API on 127.0.0.1:15672: enable the plugin when it does not answer
# (rabbitmq-plugins enables it on the running node, no restart). A failure
# here only warns: the other tests do not need it.
MGMT_PORT=15672
ensure_management() {
    if timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$MGMT_PORT" >/dev/null 2>&1; then
        return 0
    fi
    if ! command -v rabbitmq-plugins >/dev/null 2>&1; then
        warn "rabbitmq-plugins is not on PATH; tests/rabbit_auth.rs needs rabbitmq_management"
        return 0
    fi
    say "enabling rabbitmq_management (management API on $HOST:$MGMT_PORT)"
    if ! as_root timeout 120 rabbitmq-plugins enable rabbitmq_management </dev/null >/dev/null; then
        warn "'rabbitmq-plugins enable rabbitmq_management' failed; tests/rabbit_auth.rs will fail"
        return 0
    fi
    local deadline=$((SECONDS + WAIT_SECS))
    until timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$MGMT_PORT" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            warn "the management API does not answer on $HOST:$MGMT_PORT"
            return 0
        fi
        sleep 1
    done
}

show_logs() {
    local f
    for f in /var/log/rabbitmq/*.log /var/log/rabbitmq/startup_err; do
        [ -r "$f" ] || continue
        echo "----- tail of $f -----" >&2
        tail -n 30 "$f" >&2 || true
    done
}

if port_open; then
    check_ctl
    ensure_management
    say "RabbitMQ already answers on $HOST:$PORT"
    exit 0
fi

did=()
if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
    apt_install rabbitmq-server
    did+=("installed rabbitmq-server")
fi
export PATH="$PATH:/usr/sbin:/sbin"

# The package's postinst may have started it: check again before starting one.
if port_open; then
    :
elif rabbit_vm_running; then
    say "a RabbitMQ node is already booting; waiting for it"
else
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        say "starting RabbitMQ with systemctl"
        as_root systemctl start rabbitmq-server
        did+=("started rabbitmq-server (systemd)")
    else
        # A node name on a host name that does not resolve keeps RabbitMQ from
        # booting (containers): use rabbit@localhost then, for the server and
        # for rabbitmqctl alike (both read rabbitmq-env.conf).
        env_conf=/etc/rabbitmq/rabbitmq-env.conf
        if ! getent hosts "$(hostname -s 2>/dev/null || hostname)" >/dev/null 2>&1 &&
            ! grep -qsE '^[[:space:]]*(export[[:space:]]+)?(RABBITMQ_)?NODENAME=' "$env_conf"; then
            say "host name does not resolve: setting NODENAME=rabbit@localhost in $env_conf"
            echo 'NODENAME=rabbit@localhost' | as_root tee -a "$env_conf" >/dev/null
        fi
        say "starting RabbitMQ: rabbitmq-server -detached"
        as_root rm -f "$PID_FILE"
        # Debian's wrapper runs the server as user rabbitmq; the environment passes through su.
        as_root env RABBITMQ_PID_FILE="$PID_FILE" rabbitmq-server -detached </dev/null
        did+=("started rabbitmq-server -detached")
        if ! as_root timeout $((WAIT_SECS + 30)) rabbitmqctl wait --timeout "$WAIT_SECS" "$PID_FILE" </dev/null; then
            show_logs
            die "RabbitMQ did not finish booting within ${WAIT_SECS}s (rabbitmqctl wait $PID_FILE)"
        fi
    fi
fi

if ! wait_for_port; then
    show_logs
    die "RabbitMQ does not answer on $HOST:$PORT after ${WAIT_SECS}s"
fi
check_ctl
ensure_management
if [ "${#did[@]}" -eq 0 ]; then
    say "RabbitMQ answers on $HOST:$PORT (it was already starting)"
else
    say "$(
        IFS=,
        echo "${did[*]}"
    ); RabbitMQ answers on $HOST:$PORT"
fi
