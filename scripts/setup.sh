#!/usr/bin/env bash
# Installs what Shoal's test suite needs on a fresh Debian machine. Idempotent: a tool already
# on PATH is not installed again. Run as root.
#
#   scripts/setup.sh
#
# Each tool is a small function below; add new ones (nginx, wrk, ...) the same way and list
# them in main.
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

main() {
    if [ "$(id -u)" -ne 0 ]; then
        log "run as root (it installs Debian packages)"
        exit 1
    fi
    install_chromium
}

main "$@"
