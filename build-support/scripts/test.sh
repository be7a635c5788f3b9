#!/usr/bin/env bash
# Runs every test of the workspace, on a fresh machine too: installs what is
# missing (ensure-tools.sh), makes sure Postgres and RabbitMQ answer
# (ensure-services.sh), builds the binaries the end-to-end tests run
# (`cargo build --workspace --bins`), then `cargo nextest run --workspace --no-fail-fast`.
#
#   build-support/scripts/test.sh                 # all tests
#   build-support/scripts/test.sh -p outbox       # extra arguments go to nextest (-p: those packages only)
#   TEST_LOG=1 build-support/scripts/test.sh      # with the services' tracing output
#
# Profile: `ci` when CI is set (see .config/nextest.toml), else `default`;
# NEXTEST_PROFILE overrides. Builds into $CARGO_TARGET_DIR (default
# /var/cache/pulse-target, outside the clone).
set -euo pipefail

# shellcheck source=build-support/scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PULSE_LOG_NAME="test"

cd "$PULSE_ROOT"
pulse_load_tools
bash "$PULSE_SCRIPTS/ensure-services.sh"
pulse_export_target_dir

if [[ -z "${NEXTEST_PROFILE:-}" ]]; then
    if pulse_is_ci; then NEXTEST_PROFILE=ci; else NEXTEST_PROFILE=default; fi
fi
export NEXTEST_PROFILE

# The end-to-end tests (tools/e2e) run the workspace's binaries as processes:
# build them first so they exist and are current. Cargo's own flags among the
# arguments (--locked, --frozen, --offline) apply to this build too.
build_flags=()
for arg in "$@"; do
    case "$arg" in --locked | --frozen | --offline) build_flags+=("$arg") ;; esac
done
pulse_log "cargo build --workspace --bins ${build_flags[*]}"
cargo build --workspace --bins "${build_flags[@]}"

# The whole workspace unless the arguments pick packages (`-p e2e`): cargo
# ignores -p when --workspace is given too.
scope=(--workspace)
for arg in "$@"; do
    case "$arg" in -p | -p?* | --package | --package=*) scope=() ;; esac
done
pulse_log "cargo nextest run ${scope[*]} --no-fail-fast $* (profile $NEXTEST_PROFILE, target $CARGO_TARGET_DIR)"
exec cargo nextest run "${scope[@]}" --no-fail-fast "$@"
