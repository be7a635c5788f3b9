#!/usr/bin/env bash
# Starts the whole system on this machine with one command: makes sure
# Postgres and RabbitMQ answer (installing/starting them when needed), builds
# the `orders` and `notifications` binaries in release mode, and runs both in
# the foreground with their output prefixed `[orders]` / `[notifications]`.
#
# Ctrl-C or SIGTERM is passed on to both services, which finish their
# in-flight work and exit; the script exits 0 when both exit 0. If either
# service dies on its own, the other is stopped and the script exits non-zero.
#
# Every variable of docs/configuration.md can be set to override its default, e.g.
#   ORDERS_GRPC_ADDR=127.0.0.1:6051 build-support/scripts/run-local.sh
# LOG_FORMAT defaults to `pretty` (the services log JSON otherwise).
# PULSE_STOP_TIMEOUT_SECS (default 30) bounds the wait for a clean exit
# before the services are killed.
set -euo pipefail

# shellcheck source=build-support/scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PULSE_LOG_NAME=run-local

cd "$PULSE_ROOT"
bash "$PULSE_SCRIPTS/ensure-services.sh"
pulse_export_target_dir

: "${ORDERS_GRPC_ADDR:=0.0.0.0:50051}"
: "${NOTIFICATIONS_GRPC_ADDR:=0.0.0.0:50052}"
: "${ORDERS_DATABASE_URL:=postgres://postgres:postgres@localhost:5432/pulse_orders}"
: "${NOTIFICATIONS_DATABASE_URL:=postgres://postgres:postgres@localhost:5432/pulse_notifications}"
: "${AMQP_URL:=amqp://guest:guest@localhost:5672/%2f}"
: "${ORDERS_METRICS_ADDR:=0.0.0.0:9464}"
: "${NOTIFICATIONS_METRICS_ADDR:=0.0.0.0:9465}"
: "${LOG_FORMAT:=pretty}"
export ORDERS_GRPC_ADDR NOTIFICATIONS_GRPC_ADDR ORDERS_DATABASE_URL NOTIFICATIONS_DATABASE_URL AMQP_URL \
    ORDERS_METRICS_ADDR NOTIFICATIONS_METRICS_ADDR LOG_FORMAT
STOP_TIMEOUT="${PULSE_STOP_TIMEOUT_SECS:-30}"

pulse_log "building orders and notifications (release, target $CARGO_TARGET_DIR)"
cargo build --release -p orders -p notifications
bin_dir="$CARGO_TARGET_DIR/release"
for bin in orders notifications; do
    [[ -x "$bin_dir/$bin" ]] || pulse_die "the build produced no $bin_dir/$bin"
done

# From here on we handle failures ourselves: a service's exit is an event, not an error.
set +e

# Runs a service with its output prefixed; the service's own pid lands in $!.
# In a terminal the services may also see Ctrl-C themselves: they stop on the
# first SIGINT or SIGTERM, whichever comes first. The prefixing filter ignores
# Ctrl-C so that it prints the services' last lines, and ends when they exit.
start() {
    local name="$1"
    "$bin_dir/$name" > >(
        trap '' INT
        exec sed -u "s/^/[$name] /"
    ) 2>&1 </dev/null &
}

declare -A names=() # pid -> service name, for the services still running
stopping=false
watchdog=""
stop_all() {
    [[ "$stopping" == true ]] && return
    stopping=true
    local pids=("${!names[@]}")
    pulse_log "stopping: SIGTERM to ${names[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null
    # Bounded: whatever still runs after the grace period is killed.
    (
        trap 'kill "${sleeper:-}" 2>/dev/null; exit 0' TERM
        sleep "$STOP_TIMEOUT" &
        sleeper=$!
        wait "$sleeper"
        printf '[run-local] still running after %ss, killing\n' "$STOP_TIMEOUT" >&2
        kill -KILL "${pids[@]}" 2>/dev/null
    ) &
    watchdog=$!
}
trap stop_all INT TERM

start orders
names[$!]=orders
start notifications
names[$!]=notifications
pulse_log "orders on $ORDERS_GRPC_ADDR, notifications on $NOTIFICATIONS_GRPC_ADDR; Ctrl-C stops both"

status=0
while ((${#names[@]} > 0)); do
    done_pid=""
    wait -n -p done_pid "${!names[@]}"
    code=$?
    # Interrupted by a signal we trapped: the trap ran, wait again.
    [[ -z "${done_pid:-}" ]] && continue
    name="${names[$done_pid]}"
    unset "names[$done_pid]"
    if [[ "$stopping" == true ]]; then
        pulse_log "$name exited with status $code"
        ((code == 0)) || status=1
    else
        pulse_log "$name exited unexpectedly with status $code; stopping the rest"
        status=1
        stop_all
    fi
done

[[ -n "$watchdog" ]] && kill "$watchdog" 2>/dev/null
# Let the prefixing filters print the last lines.
wait 2>/dev/null
exit "$status"
