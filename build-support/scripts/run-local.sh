#!/usr/bin/env bash
# Starts the whole system on this machine with one command: makes sure
# Postgres and RabbitMQ answer (installing/starting them when needed), builds
# the `orders`, `notifications`, `payments` and `inventory` binaries in release
# mode, and runs the four (and a local SMTP server) in the foreground with their output prefixed by their
# name (`[orders]`, `[notifications]`, `[payments]`, `[inventory]`).
#
# Ctrl-C or SIGTERM is passed on to every service, which finishes its
# in-flight work and exits; the script exits 0 when all exit 0. If one
# service dies on its own, the others are stopped and the script exits non-zero.
#
# Every variable of docs/configuration.md can be set to override its default, e.g.
#   ORDERS_GRPC_ADDR=127.0.0.1:6051 build-support/scripts/run-local.sh
# LOG_FORMAT defaults to `pretty` (the services log JSON otherwise).
#
# Deliveries (docs/delivery.md): notifications may post webhooks to this
# machine (DELIVERY_ALLOW_PRIVATE_NETWORKS=true), encrypts webhook secrets with
# a key generated once and kept in PULSE_RUN_DIR (default
# /var/cache/pulse-run-local, or ~/.cache/pulse-run-local), and mails through
# an SMTP server this script starts on 127.0.0.1:1025 (aiosmtpd, from the
# tools ensure-tools.sh installs) that keeps every mail in PULSE_RUN_DIR/mail,
# a Maildir. With SMTP_URL set, or something already listening on port 1025
# (the compose file's mail catcher), no server is started.
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
: "${DELIVERY_ALLOW_PRIVATE_NETWORKS:=true}"
export ORDERS_GRPC_ADDR NOTIFICATIONS_GRPC_ADDR PAYMENTS_GRPC_ADDR INVENTORY_GRPC_ADDR \
    ORDERS_DATABASE_URL NOTIFICATIONS_DATABASE_URL PAYMENTS_DATABASE_URL INVENTORY_DATABASE_URL AMQP_URL \
    ORDERS_METRICS_ADDR NOTIFICATIONS_METRICS_ADDR PAYMENTS_METRICS_ADDR INVENTORY_METRICS_ADDR LOG_FORMAT \
    DELIVERY_ALLOW_PRIVATE_NETWORKS
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

# The key that encrypts webhook secrets: generated once, then reused, so that
# the endpoints made in one run still sign in the next. One given in the
# environment (DELIVERY_SECRET_KEY or DELIVERY_SECRET_KEY_FILE) is used as it is.
PULSE_RUN_DIR="${PULSE_RUN_DIR:-$(pulse_cache_dir pulse-run-local)}"
mkdir -p "$PULSE_RUN_DIR" || pulse_die "cannot create $PULSE_RUN_DIR"
if [[ -z "${DELIVERY_SECRET_KEY:-}" && -z "${DELIVERY_SECRET_KEY_FILE:-}" ]]; then
    key_file="$PULSE_RUN_DIR/delivery-secret-key"
    if [[ ! -s "$key_file" ]]; then
        (umask 077 && head -c 32 /dev/urandom | base64 >"$key_file") || pulse_die "cannot write $key_file"
        pulse_log "generated the webhook secrets' key in $key_file"
    fi
    : "${DELIVERY_SECRET_KEY_FILE:=$key_file}"
    export DELIVERY_SECRET_KEY_FILE
fi

# The SMTP server email endpoints are delivered through.
smtp_server=false
mail_dir="$PULSE_RUN_DIR/mail"
if [[ -z "${SMTP_URL:-}" ]]; then
    if timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/1025' 2>/dev/null; then
        pulse_log "an SMTP server already listens on 127.0.0.1:1025: mail goes there"
    else
        pulse_load_tools
        smtp_python="$PULSE_TOOLS/venv/bin/python"
        "$smtp_python" -c 'import aiosmtpd' 2>/dev/null ||
            pulse_die "aiosmtpd is missing from $PULSE_TOOLS/venv (build-support/scripts/ensure-tools.sh installs it)"
        mkdir -p "$mail_dir" || pulse_die "cannot create $mail_dir"
        smtp_server=true
    fi
fi
: "${SMTP_URL:=smtp://127.0.0.1:1025}"
export SMTP_URL

# Keeps every mail in a Maildir and exits 0 on SIGTERM or SIGINT, as the services do.
# shellcheck disable=SC2016 # Python, not shell
SMTP_SERVER_PY='
import signal, sys, threading
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox

controller = Controller(Mailbox(sys.argv[1]), hostname="127.0.0.1", port=1025)
controller.start()
print(f"SMTP on 127.0.0.1:1025, mail kept in {sys.argv[1]}", flush=True)
stop = threading.Event()
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())
stop.wait()
controller.stop()
'

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
if [[ "$smtp_server" == true ]]; then
    "$smtp_python" -c "$SMTP_SERVER_PY" "$mail_dir" > >(
        trap '' INT
        exec sed -u "s/^/[smtp] /"
    ) 2>&1 </dev/null &
    names[$!]=smtp
fi
# name: gRPC address, metrics address (the NAME_GRPC_ADDR / NAME_METRICS_ADDR above).
for name in "${services[@]}"; do
    grpc_var="${name^^}_GRPC_ADDR"
    metrics_var="${name^^}_METRICS_ADDR"
    pulse_log "$(printf '%-14s gRPC %-20s metrics http://%s/metrics' "$name" "${!grpc_var}" "${!metrics_var}")"
done
if [[ "$smtp_server" == true ]]; then
    pulse_log "mail to email endpoints lands in $mail_dir/new (a Maildir, one file per mail)"
else
    pulse_log "mail to email endpoints goes to $SMTP_URL"
fi
pulse_log "Ctrl-C stops all"

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
