#!/usr/bin/env bash
# Makes sure the two services Pulse needs answer on this machine, and does
# nothing else when they already do (a fraction of a second):
#
#   PostgreSQL on 127.0.0.1:5432, user postgres reachable over TCP with the
#     password `postgres` (trust auth also satisfies this)
#   RabbitMQ   on 127.0.0.1:5672 (guest/guest, the broker's default)
#
# A service that is installed but stopped is started; one that is not
# installed is installed from Debian's packages first (needs root or sudo).
# Each start waits at most PULSE_SERVICE_WAIT_SECS (default 60 s; RabbitMQ
# gets 30 s more for its first boot) and fails with a pointer to the log.
set -euo pipefail

# shellcheck source=build-support/scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PULSE_LOG_NAME=ensure-services

WAIT_SECS="${PULSE_SERVICE_WAIT_SECS:-60}"
PG_HOST=127.0.0.1
PG_PORT=5432
PG_PASSWORD=postgres
AMQP_HOST=127.0.0.1
AMQP_PORT=5672
# Daemons we start must not inherit our stdout: a CI runner reading it would
# wait for them to exit.
START_LOG="${TMPDIR:-/tmp}/pulse-ensure-services.log"
APT_LOG="$START_LOG"

# Debian keeps the server tools in sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

tcp_open() {
    # shellcheck disable=SC2016 # $1 and $2 expand in the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND every half second.
wait_until() {
    local secs="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
    pulse_log "$what is up"
}

# --- PostgreSQL ----------------------------------------------------------------

pg_ready() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2
    else
        tcp_open "$PG_HOST" "$PG_PORT"
    fi
}

# Logs in the way the services do: user postgres, password postgres, over TCP.
pg_login() {
    PGPASSWORD="$PG_PASSWORD" PGCONNECT_TIMEOUT=5 psql -X -q -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres \
        -Atc 'SELECT 1' >/dev/null 2>&1
}

# "<version> <cluster>" of the cluster on port 5432, or of the newest one.
pg_cluster() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    local on_port newest
    on_port="$(pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" '$3 == port { print $1, $2; exit }')"
    newest="$(pg_lsclusters -h 2>/dev/null | sort -V | awk 'END { if (NR) print $1, $2 }')"
    printf '%s\n' "${on_port:-$newest}"
}

start_postgres() {
    local cluster version name
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
        apt_install postgresql
    fi
    cluster="$(pg_cluster)"
    if [[ -z "$cluster" ]]; then
        version="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)"
        [[ -n "$version" ]] || pulse_die "PostgreSQL is installed but no server version was found under /usr/lib/postgresql"
        pulse_log "creating PostgreSQL cluster $version/main on port $PG_PORT"
        as_root pg_createcluster -p "$PG_PORT" "$version" main </dev/null >>"$START_LOG" 2>&1 ||
            pulse_die "pg_createcluster failed (see $START_LOG)"
        cluster="$version main"
    fi
    read -r version name <<<"$cluster"
    if ! pg_ready; then
        pulse_log "starting PostgreSQL $version/$name"
        # Exits non-zero when the cluster is already running (still booting): the wait below decides.
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start </dev/null >>"$START_LOG" 2>&1 || true
    fi
    wait_until "$WAIT_SECS" "PostgreSQL $version/$name" pg_ready ||
        pulse_die "PostgreSQL did not accept connections on $PG_HOST:$PG_PORT within ${WAIT_SECS}s" \
            "(see $START_LOG and /var/log/postgresql/postgresql-$version-$name.log)"
}

# Fresh Debian clusters use peer auth on the socket and scram over TCP, with
# no password set: give user postgres the password the services use.
fix_postgres_login() {
    pulse_log "setting the password of PostgreSQL user postgres (TCP login failed)"
    as_root runuser -u postgres -- psql -X -q -p "$PG_PORT" -d postgres \
        -c "ALTER ROLE postgres WITH LOGIN PASSWORD '$PG_PASSWORD'" </dev/null >>"$START_LOG" 2>&1 ||
        pulse_die "cannot set the password of user postgres (see $START_LOG)"
}

ensure_postgres() {
    if pg_ready && pg_login; then
        return
    fi
    pg_ready || start_postgres
    command -v psql >/dev/null 2>&1 || apt_install postgresql-client
    pg_login || fix_postgres_login
    pg_login || pulse_die "PostgreSQL answers on $PG_HOST:$PG_PORT, but user postgres cannot log in over TCP" \
        "with password '$PG_PASSWORD': allow it in pg_hba.conf (psql -Atc 'SHOW hba_file')"
    pulse_log "PostgreSQL login over TCP works"
}

# --- RabbitMQ ------------------------------------------------------------------

amqp_ready() {
    tcp_open "$AMQP_HOST" "$AMQP_PORT"
}

# Debian's rabbitmq-server wrapper starts the node through `su rabbitmq`,
# which leaves it 1,024 file descriptors: each quorum queue holds a few, so a
# few hundred queues (a test run's) use them up and the broker stops accepting
# connections. The node is started with the hard limit instead when the
# wrapper's layout is there.
start_rabbitmq() {
    local node=/usr/lib/rabbitmq/bin/rabbitmq-server
    if [[ -x "$node" ]] && id rabbitmq >/dev/null 2>&1; then
        # shellcheck disable=SC2016 # expanded by the rabbitmq user's shell
        as_root su rabbitmq -s /bin/sh -c 'ulimit -n "$(ulimit -Hn)"; cd /var/lib/rabbitmq && exec "$0" -detached' "$node"
    else
        as_root rabbitmq-server -detached
    fi
}

ensure_rabbitmq() {
    amqp_ready && return
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        apt_install rabbitmq-server
        # The package may have started the broker itself.
        amqp_ready && return
    fi
    pulse_log "starting RabbitMQ"
    # Fails when a node is already running (still booting): the wait below decides.
    start_rabbitmq </dev/null >>"$START_LOG" 2>&1 || true
    local secs=$((WAIT_SECS + 30))
    wait_until "$secs" "RabbitMQ" amqp_ready ||
        pulse_die "RabbitMQ did not accept connections on $AMQP_HOST:$AMQP_PORT within ${secs}s" \
            "(see $START_LOG and /var/log/rabbitmq/)"
}

ensure_postgres
ensure_rabbitmq
