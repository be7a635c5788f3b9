#!/usr/bin/env bash
# Starts the whole system on this machine with one command: makes sure
# Postgres and RabbitMQ answer (installing/starting them when needed), builds
# the `orders`, `notifications`, `payments` and `inventory` binaries in release
# mode, and runs the four in the foreground with their output prefixed by their
# name (`[orders]`, `[notifications]`, `[payments]`, `[inventory]`).
#
# Ctrl-C or SIGTERM is passed on to every service, which finishes its
# in-flight work and exits; the script exits 0 when all exit 0. If one
# service dies on its own, the others are stopped and the script exits non-zero.
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
: "${PAYMENTS_GRPC_ADDR:=0.0.0.0:50053}"
: "${INVENTORY_GRPC_ADDR:=0.0.0.0:50054}"
: "${ORDERS_DATABASE_URL:=postgres://postgres:postgres@localhost:5432/pulse_orders}"
: "${NOTIFICATIONS_DATABASE_URL:=postgres://postgres:postgres@localhost:5432/pulse_notifications}"
: "${PAYMENTS_DATABASE_URL:=postgres://postgres:postgres@localhost:5432/pulse_payments}"
: "${INVENTORY_DATABASE_URL:=postgres://postgres:postgres@localhost:5432/pulse_inventory}"
: "${AMQP_URL:=amqp://guest:guest@localhost:5672/%2f}"
: "${ORDERS_METRICS_ADDR:=0.0.0.0:9464}"
: "${NOTIFICATIONS_METRICS_ADDR:=0.0.0.0:9465}"
: "${PAYMENTS_METRICS_ADDR:=0.0.0.0:9466}"
: "${INVENTORY_METRICS_ADDR:=0.0.0.0:9467}"
: "${LOG_FORMAT:=pretty}"
export ORDERS_GRPC_ADDR NOTIFICATIONS_GRPC_ADDR PAYMENTS_GRPC_ADDR INVENTORY_GRPC_ADDR \
    ORDERS_DATABASE_URL NOTIFICATIONS_DATABASE_URL PAYMENTS_DATABASE_URL INVENTORY_DATABASE_URL AMQP_URL \
    ORDERS_METRICS_ADDR NOTIFICATIONS_METRICS_ADDR PAYMENTS_METRICS_ADDR INVENTORY_METRICS_ADDR LOG_FORMAT
STOP_TIMEOUT="${PULSE_STOP_TIMEOUT_SECS:-30}"

# The consumers (notifications, payments, inventory) declare their queues at
# start; until they have, orders' relay finds its commands unroutable and keeps
# them in the outbox, retrying: the start order does not matter.
services=(orders notifications payments inventory)
bin_dir="$CARGO_TARGET_DIR/release"
pulse_log "building ${services[*]} (release, target $CARGO_TARGET_DIR)"
packages=()
for name in "${services[@]}"; do
    packages+=(-p "$name")
done
cargo build --release "${packages[@]}"
for bin in "${services[@]}"; do
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

for name in "${services[@]}"; do
    start "$name"
    names[$!]=$name
done
# name: gRPC address, metrics address (the NAME_GRPC_ADDR / NAME_METRICS_ADDR above).
for name in "${services[@]}"; do
    grpc_var="${name^^}_GRPC_ADDR"
    metrics_var="${name^^}_METRICS_ADDR"
    pulse_log "$(printf '%-14s gRPC %-20s metrics http://%s/metrics' "$name" "${!grpc_var}" "${!metrics_var}")"
done
pulse_log "Ctrl-C stops all four"

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
