#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need, checks formatting and lints,
# then runs every unit and end-to-end test of the workspace, a batch of simulator seeds (with
# the determinism check) and the fuzz targets.
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
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# The whole-cluster simulator: a fixed batch of seeds, each run twice in fresh processes
# (their trace hashes must match), on the debug build the tests just made. A longer run for
# nightly use: cargo run -p shoal-sim --release -- --seeds 2000 --check-determinism
echo "==> simulator: 48 seeds, each run twice"
sim_status=0
cargo run -p shoal-sim --quiet -- --seeds 48 --check-determinism || sim_status=$?

# Fuzzing runs whatever the tests did; its failure fails the run too.
echo "==> fuzz"
fuzz_status=0
scripts/fuzz.sh || fuzz_status=$?

# cargo prints one summary per test binary (the last is often an empty doc-test run);
# close with the total, so the last line tells what the whole suite did.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
if [ "$status" -eq 0 ]; then
    status=$sim_status
fi
if [ "$status" -eq 0 ]; then
    status=$fuzz_status
fi
exit "$status"
