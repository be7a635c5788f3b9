# Shared helpers for the Pulse dev/CI scripts. Source it; it sets no shell options.
# shellcheck shell=bash

# The repository root, whatever directory the caller runs from.
PULSE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PULSE_SCRIPTS="$PULSE_ROOT/build-support/scripts"

pulse_log() { printf '[%s] %s\n' "${PULSE_LOG_NAME:-pulse}" "$*" >&2; }
pulse_die() {
    pulse_log "error: $*"
    exit 1
}

# A cache directory outside the clone: /var/cache/<name> when it can be
# written (root, CI), otherwise under the user's cache directory.
pulse_cache_dir() {
    local name="$1"
    if mkdir -p "/var/cache/$name" 2>/dev/null && [[ -w "/var/cache/$name" ]]; then
        printf '%s\n' "/var/cache/$name"
    else
        printf '%s\n' "${XDG_CACHE_HOME:-$HOME/.cache}/$name"
    fi
}

# Cargo builds into a shared cache outside the clone unless the caller chose.
pulse_export_target_dir() {
    if [[ -z "${CARGO_TARGET_DIR:-}" ]]; then
        CARGO_TARGET_DIR="$(pulse_cache_dir pulse-target)"
    fi
    export CARGO_TARGET_DIR
}

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        pulse_die "root is needed to run: $*"
    fi
}

# Debian's package index, refreshed at most once per run. apt's output goes
# to $APT_LOG when the caller sets it, otherwise to stderr.
apt_updated=false
apt_update_once() {
    [[ "$apt_updated" == true ]] && return
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >>"${APT_LOG:-/dev/stderr}" 2>&1 ||
        pulse_die "apt-get update failed${APT_LOG:+ (see $APT_LOG)}"
    apt_updated=true
}

# apt_install [APT-OPTION...] PACKAGE...: installs from Debian's packages.
apt_install() {
    pulse_log "installing from Debian's packages: $*"
    apt_update_once
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" </dev/null >>"${APT_LOG:-/dev/stderr}" 2>&1 ||
        pulse_die "apt-get install $* failed${APT_LOG:+ (see $APT_LOG)}"
}

# Installs missing tools and puts them on PATH in the calling shell.
pulse_load_tools() {
    local tools_env
    tools_env="$(bash "$PULSE_SCRIPTS/ensure-tools.sh")" || pulse_die "ensure-tools.sh failed"
    eval "$tools_env"
}

# Whether this is a CI run (CI=true, as CI systems set it).
pulse_is_ci() {
    case "${CI:-}" in
        "" | 0 | false | FALSE | False | no) return 1 ;;
        *) return 0 ;;
    esac
}
