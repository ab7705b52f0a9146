#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need, checks formatting and lints,
# then runs every unit and end-to-end test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "==> cargo fmt --check"
# rustfmt.toml asks for nightly-only import grouping; stable rustfmt warns about it and
# formats everything else, so the warning is filtered and the check still counts.
if ! cargo fmt --all -- --check 2> >(grep -v "nightly channel" >&2); then
    echo "code is not formatted: run cargo fmt --all"
    exit 1
fi

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "==> cargo test"
cargo test --workspace
