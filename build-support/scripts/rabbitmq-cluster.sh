#!/usr/bin/env bash
# A local three-node RabbitMQ cluster of the installed RabbitMQ, beside (never
# joined to) the machine's own node:
#
#   rabbitmq-cluster.sh up          # starts pulse-1..3@<host>, clusters them; last line: their AMQP URLs, comma-separated
#   rabbitmq-cluster.sh down        # stops the three nodes and removes their data
#   rabbitmq-cluster.sh urls        # the AMQP URLs again
#   rabbitmq-cluster.sh kill N      # SIGKILLs node N (1-3): a hard stop, its data kept
#   rabbitmq-cluster.sh start N     # starts node N again; it rejoins with its data
#   rabbitmq-cluster.sh leader QUEUE [VHOST]        # the node leading QUEUE (pulse-N@host)
#   rabbitmq-cluster.sh move-leader QUEUE [VHOST]   # moves QUEUE's leader to another running node; prints the new leader
#   rabbitmq-cluster.sh ctl N ARGS... # rabbitmqctl against node N
#
# Node N listens for AMQP on 127.0.0.1:$((PULSE_CLUSTER_PORT + N - 1)) (default
# 5701..5703) and for Erlang distribution on that port + 20000; no plugin is
# enabled (no management or Prometheus port). Data and logs live under
# PULSE_CLUSTER_DIR (default /tmp/pulse-rabbitmq-cluster). The nodes run as
# the broker's own user with its HOME when started as root, so they share its
# Erlang cookie and `rabbitmqctl -n pulse-2@$(hostname -s) status` works as is.
# When the short host name does not resolve, the nodes are named @localhost.
set -euo pipefail

# shellcheck source=build-support/scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PULSE_LOG_NAME=rabbitmq-cluster

export PATH="$PATH:/usr/sbin:/sbin"
BASE_PORT="${PULSE_CLUSTER_PORT:-5701}"
DIR="${PULSE_CLUSTER_DIR:-/tmp/pulse-rabbitmq-cluster}"
WAIT_SECS="${PULSE_CLUSTER_WAIT_SECS:-90}"
NODES=(1 2 3)
RABBIT_BIN=/usr/lib/rabbitmq/bin
[[ -x "$RABBIT_BIN/rabbitmq-server" ]] || RABBIT_BIN="$(dirname "$(command -v rabbitmq-server || echo /usr/sbin/x)")"

# The short host name Erlang's short node names use, if it resolves.
node_host() {
    local host
    host="$(hostname -s 2>/dev/null || true)"
    if [[ -n "$host" ]] && getent hosts "$host" >/dev/null 2>&1; then
        printf '%s\n' "$host"
    else
        printf 'localhost\n'
    fi
}
HOST="$(node_host)"

node_name() { printf 'pulse-%s@%s\n' "$1" "$HOST"; }
amqp_port() { printf '%s\n' $((BASE_PORT + $1 - 1)); }
node_dir() { printf '%s/pulse-%s\n' "$DIR" "$1"; }

# The broker's user when we are root and it exists: its HOME holds the cookie
# the machine's node and the Debian CLI wrappers use.
broker_user() {
    if [[ "$(id -u)" -eq 0 ]] && id rabbitmq >/dev/null 2>&1; then
        printf 'rabbitmq\n'
    fi
}

# as_broker COMMAND...: runs COMMAND as the broker's user (with its HOME), or as we are.
as_broker() {
    local user home
    user="$(broker_user)"
    if [[ -n "$user" ]]; then
        home="$(getent passwd "$user" | cut -d: -f6)"
        runuser -u "$user" -- env HOME="$home" "$@"
    else
        "$@"
    fi
}

ctl() {
    local n="$1"
    shift
    as_broker "$RABBIT_BIN/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

running() { ctl "$1" -q status >/dev/null 2>&1; }

wait_running() {
    local n="$1" deadline=$((SECONDS + WAIT_SECS))
    until ctl "$n" -q await_startup >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            pulse_log "node $(node_name "$n") did not start in ${WAIT_SECS}s; its log: $(node_dir "$n")/log"
            tail -n 30 "$(node_dir "$n")/log/startup.log" >&2 || true
            exit 1
        fi
        sleep 1
    done
}

start_node() {
    local n="$1" dir
    dir="$(node_dir "$n")"
    if running "$n"; then
        return
    fi
    mkdir -p "$dir/mnesia" "$dir/log"
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
loopback_users = none
EOF
    printf '[].\n' >"$dir/enabled_plugins"
    [[ -n "$(broker_user)" ]] && chown -R "$(broker_user)" "$dir"
    # setsid: the node outlives this script and is not in its process group.
    as_broker env \
        RABBITMQ_NODENAME="$(node_name "$n")" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
        RABBITMQ_DIST_PORT=$(($(amqp_port "$n") + 20000)) \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" \
        RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_PID_FILE="$dir/pid" \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
        setsid "$RABBIT_BIN/rabbitmq-server" >"$dir/log/startup.log" 2>&1 </dev/null &
    wait_running "$n"
}

urls() {
    local n out=()
    for n in "${NODES[@]}"; do
        out+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f")
    done
    (
        IFS=,
        printf '%s\n' "${out[*]}"
    )
}

up() {
    command -v rabbitmq-server >/dev/null 2>&1 || [[ -x "$RABBIT_BIN/rabbitmq-server" ]] ||
        pulse_die "rabbitmq-server is not installed (build-support/scripts/ensure-services.sh installs it)"
    mkdir -p "$DIR"
    [[ -n "$(broker_user)" ]] && chown "$(broker_user)" "$DIR"
    for n in "${NODES[@]}"; do
        start_node "$n" &
    done
    wait
    for n in "${NODES[@]}"; do running "$n" || pulse_die "node $(node_name "$n") is not running"; done
    # Nodes 2 and 3 join node 1 unless they already are its peers.
    for n in 2 3; do
        if ! ctl 1 -q cluster_status 2>/dev/null | grep -q "$(node_name "$n")"; then
            pulse_log "$(node_name "$n") joins $(node_name 1)"
            {
                ctl "$n" -q stop_app
                ctl "$n" -q reset
                ctl "$n" -q join_cluster "$(node_name 1)"
                ctl "$n" -q start_app
            } >>"$(node_dir "$n")/log/startup.log" 2>&1
        fi
    done
    pulse_log "cluster of $(node_name 1), $(node_name 2), $(node_name 3) is up (data in $DIR)"
    urls
}

node_pid() {
    local file
    file="$(node_dir "$1")/pid"
    [[ -s "$file" ]] && cat "$file"
}

kill_node() {
    local pid
    pid="$(node_pid "$1")" || pulse_die "no pid file for $(node_name "$1")"
    pulse_log "SIGKILL $(node_name "$1") (pid $pid)"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

down() {
    local n pid
    for n in "${NODES[@]}"; do
        if running "$n"; then
            ctl "$n" -q shutdown >/dev/null 2>&1 || true
        fi
        # Whatever did not answer: its own pid, and nothing else.
        if pid="$(node_pid "$n")" && kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$DIR"
    pulse_log "cluster is down"
}

# The node (pulse-N@host) leading QUEUE in VHOST, as Ra reports it.
leader_of() {
    local queue="$1" vhost="$2" n
    for n in "${NODES[@]}"; do
        if running "$n"; then
            ctl "$n" -q eval "
                {ok, Q} = rabbit_amqqueue:lookup(rabbit_misc:r(<<\"$vhost\">>, queue, <<\"$queue\">>)),
                {_, Leader} = amqqueue:get_pid(Q), io:format(\"~s~n\", [Leader])." | head -n 1
            return
        fi
    done
    pulse_die "no node is running"
}

move_leader() {
    local queue="$1" vhost="${2:-/}" leader target n
    leader="$(leader_of "$queue" "$vhost")"
    for n in "${NODES[@]}"; do
        if [[ "$(node_name "$n")" != "$leader" ]] && running "$n"; then
            target="$(node_name "$n")"
            break
        fi
    done
    [[ -n "${target:-}" ]] || pulse_die "no other running node to lead $queue"
    pulse_log "moving the leader of $queue from $leader to $target"
    ctl 1 -q eval "
        {ok, Q} = rabbit_amqqueue:lookup(rabbit_misc:r(<<\"$vhost\">>, queue, <<\"$queue\">>)),
        rabbit_quorum_queue:transfer_leadership(Q, '$target')." >/dev/null
    leader_of "$queue" "$vhost"
}

node_arg() {
    [[ "${1:-}" =~ ^[123]$ ]] || pulse_die "a node number (1, 2 or 3) is needed"
    printf '%s\n' "$1"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    urls) urls ;;
    kill) kill_node "$(node_arg "${2:-}")" ;;
    start) start_node "$(node_arg "${2:-}")" ;;
    leader)
        [[ -n "${2:-}" ]] || pulse_die "usage: $0 leader QUEUE [VHOST]"
        leader_of "$2" "${3:-/}"
        ;;
    move-leader)
        [[ -n "${2:-}" ]] || pulse_die "usage: $0 move-leader QUEUE [VHOST]"
        move_leader "$2" "${3:-/}"
        ;;
    ctl)
        n="$(node_arg "${2:-}")"
        shift 2
        ctl "$n" "$@"
        ;;
    *) pulse_die "usage: $0 up|down|urls|kill N|start N|leader QUEUE [VHOST]|move-leader QUEUE [VHOST]|ctl N ARGS..." ;;
esac
