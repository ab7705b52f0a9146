#!/usr/bin/env bash
# Quick start: builds Shoal, starts a single-node cluster (ingress :8080, admin API
# 127.0.0.1:7070, data in ./shoal-data), deploys every app in examples/ and prints their URLs.
# Ctrl-C stops the node gracefully. Extra arguments go to `shoal seed` (see `shoal seed --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building shoal (release; the first build takes a few minutes)"
cargo build --release --quiet -p shoal
shoal=target/release/shoal

# Its own session: a Ctrl-C in the terminal reaches only this script, which forwards exactly
# one SIGTERM (a second signal would make the node skip draining).
setsid "$shoal" seed "$@" &
node=$!
stop() { kill -TERM "$node" 2>/dev/null || true; wait "$node" 2>/dev/null || true; }
trap stop INT TERM

# The admin API answers once the node is up.
for _ in $(seq 1 100); do
    if ! kill -0 "$node" 2>/dev/null; then
        wait "$node"
        exit 1
    fi
    if "$shoal" apps >/dev/null 2>&1; then break; fi
    sleep 0.1
done

for app in examples/*/; do
    echo "==> shoal deploy $app"
    "$shoal" deploy "$app"
done
echo
"$shoal" apps
echo
echo "Shoal is running."
echo "  dashboard: http://localhost:8080/apps/dashboard/  or  http://dashboard.localhost:8080/"
echo "  API:       curl http://localhost:8080/apps/api/hello?name=you   (the first request starts its container)"
echo "Try: $shoal apps | $shoal deploy DIR | $shoal rm NAME.  Ctrl-C stops the node."
wait "$node"
