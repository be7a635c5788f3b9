#!/usr/bin/env bash
# Runs every test of the workspace, on a fresh machine too: installs what is
# missing (ensure-tools.sh), makes sure Postgres and RabbitMQ answer
# (ensure-services.sh), then `cargo nextest run --workspace --no-fail-fast`.
#
#   build-support/scripts/test.sh                 # all tests
#   build-support/scripts/test.sh -p outbox       # extra arguments go to nextest
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

pulse_log "cargo nextest run --workspace --no-fail-fast (profile $NEXTEST_PROFILE, target $CARGO_TARGET_DIR)"
exec cargo nextest run --workspace --no-fail-fast "$@"
