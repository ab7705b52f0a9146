#!/usr/bin/env bash
# Installs what Shoal's tests and benchmarks need on a fresh Debian machine. Idempotent: a tool
# already on PATH is not installed again. Run as root.
#
#   scripts/setup.sh
#
# Each tool is a small function below; add new ones the same way and list them in main.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

have() { command -v "$1" >/dev/null 2>&1; }

APT_UPDATED=0

# `apt-get update`, at most once per run.
apt_update() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
}

# Installs Debian packages quietly; apt's errors still reach stderr.
apt_install() {
    apt_update
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Headless Chromium for tests/tests/browser.rs, with fonts so pages render text.
install_chromium() {
    if have chromium; then
        log "chromium already installed: $(chromium --version 2>/dev/null || echo unknown version)"
        return
    fi
    apt_install chromium fonts-liberation fonts-dejavu-core fontconfig ca-certificates
    log "installed $(chromium --version 2>/dev/null || echo chromium)"
}

# Load generator and baseline server for the benchmarks (`cargo run -p shoal-tests --release
# --bin bench`). Debian's plain `nginx` is already the light build (bookworm's `nginx-light` is
# it plus a module). The bench starts its own nginx on a free loopback port; the system service
# the package would start is kept from running, so nothing is left listening on port 80.
install_bench_tools() {
    if have wrk; then
        log "wrk already installed"
    else
        apt_install wrk
    fi
    if have nginx || [ -x /usr/sbin/nginx ]; then
        log "nginx already installed: $(/usr/sbin/nginx -v 2>&1 || echo unknown version)"
    else
        without_service_starts apt_install nginx
        log "installed $(/usr/sbin/nginx -v 2>&1 || echo nginx)"
    fi
    stop_system_nginx
}

# Runs a command with Debian's policy-rc.d saying "do not start services", so a package's
# postinst starts nothing (and cannot fail because port 80 is taken). An existing policy is
# left as it is.
without_service_starts() {
    local policy=/usr/sbin/policy-rc.d
    if [ -e "$policy" ]; then
        "$@"
        return
    fi
    printf '#!/bin/sh\n# written by shoal scripts/setup.sh while installing packages\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    # Interrupted or not, the policy must not outlive this install.
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    local status=0
    "$@" || status=$?
    rm -f "$policy"
    trap - EXIT
    return "$status"
}

# Stops and disables the packaged nginx service if something started it anyway. Works with
# systemd, with a SysV init, and with no init system at all (containers).
stop_system_nginx() {
    if have systemctl && [ -d /run/systemd/system ]; then
        systemctl disable --now nginx.service >/dev/null 2>&1 || true
    fi
    local pid_file=/run/nginx.pid
    if [ -s "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
        log "stopping the system nginx (pid $(cat "$pid_file"))"
        /usr/sbin/nginx -s quit >/dev/null 2>&1 || kill "$(cat "$pid_file")" 2>/dev/null || true
    fi
}

# cargo-fuzz for scripts/fuzz.sh, built from crates.io with the stable toolchain. libfuzzer-sys
# compiles libFuzzer's C++ sources, so a C++ compiler comes with it.
install_cargo_fuzz() {
    if ! have c++; then
        apt_install g++
    fi
    if cargo fuzz --version >/dev/null 2>&1; then
        log "cargo-fuzz already installed: $(cargo fuzz --version)"
        return
    fi
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
    log "installed $(cargo fuzz --version)"
}

main() {
    if [ "$(id -u)" -ne 0 ]; then
        log "run as root (it installs Debian packages)"
        exit 1
    fi
    install_chromium
    install_bench_tools
    install_cargo_fuzz
}

main "$@"
