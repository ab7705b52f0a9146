#!/usr/bin/env bash
# Fuzzes Shoal's hostile-input parsers for a bounded time: builds every target in fuzz/ once,
# then runs each for SECONDS (default 30), one after the other on one core. Exits non-zero if
# any target crashed, printing the crash file and the command that reproduces it.
#
#   scripts/fuzz.sh [SECONDS]
#
# Stable toolchain only, so `-s none` (no sanitizer) and no RUSTC_BOOTSTRAP. cargo-fuzz's
# coverage instrumentation (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*) is all
# stable `-C` flags; only its default AddressSanitizer adds `-Zsanitizer=address`, which stable
# rustc refuses ("the option `Z` is only accepted on the nightly compiler"). ASan finds memory
# errors in unsafe code, which Shoal's parsers do not have; these targets look for panics and
# broken invariants, which need no sanitizer. `--debug-assertions` turns on overflow checks and
# debug_assert!s, in Shoal and in its dependencies, which are bugs worth finding.
#
# Inputs: fuzz/corpus/<target>/ (committed seeds) and fuzz/regressions/<target>/ (kept
# crashes) are read, never written; what the fuzzer finds goes to a scratch directory that is
# deleted at the end. Crashes go to fuzz/artifacts/<target>/ (git-ignored). The instrumented
# build is in fuzz/target (git-ignored); the first one compiles the whole `shoal` crate again.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
case "$seconds" in
    '' | *[!0-9]*)
        echo "usage: scripts/fuzz.sh [SECONDS]" >&2
        exit 2
        ;;
esac

# Build flags: `cargo fuzz run` below must repeat them or it rebuilds differently.
fuzz_flags=(-s none --debug-assertions)
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=fuzz/target/$triple/release

# The bundle targets create a bundle store per input: on a tmpfs, its fsyncs cost nothing.
scratch_parent=${TMPDIR:-/tmp}
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    scratch_parent=/dev/shm
fi
scratch=$(mktemp -d "$scratch_parent/shoal-fuzz.XXXXXX")
# Committed releases are read-only; make them removable first.
trap 'chmod -R u+w "$scratch" 2>/dev/null; rm -rf "$scratch"' EXIT

echo "==> cargo fuzz build ${fuzz_flags[*]}"
started=$(date +%s)
cargo fuzz build "${fuzz_flags[@]}"
echo "fuzz build took $(($(date +%s) - started)) s"

targets=$(cargo fuzz list)
failed=()
passed=0
for target in $targets; do
    corpus=$scratch/corpus/$target
    mkdir -p "$corpus" "$scratch/tmp/$target" "fuzz/artifacts/$target"
    seeds=()
    for dir in "fuzz/corpus/$target" "fuzz/regressions/$target"; do
        [ -d "$dir" ] && seeds+=("$dir")
    done
    options=(
        -max_total_time="$seconds"
        -timeout=20
        -rss_limit_mb=2048
        -print_final_stats=1
        -artifact_prefix="fuzz/artifacts/$target/"
    )
    case "$target" in
        bundle_unpack) options+=(-max_len=16384 -dict=fuzz/dicts/bundle.dict) ;;
        bundle_archive) options+=(-max_len=4096) ;;
        route | policy) options+=(-max_len=1024 "-dict=fuzz/dicts/$target.dict") ;;
    esac
    echo "==> fuzz $target for ${seconds} s"
    log=$scratch/$target.log
    status=0
    TMPDIR=$scratch/tmp/$target "$bin_dir/$target" "${options[@]}" "$corpus" "${seeds[@]}" \
        >"$log" 2>&1 || status=$?
    if [ "$status" -eq 0 ]; then
        # libFuzzer's closing statistics: runs, execs/s, new inputs found.
        grep -E '^(stat::|Done [0-9]+ runs)' "$log" || true
        passed=$((passed + 1))
        continue
    fi
    failed+=("$target")
    echo "--- fuzz $target FAILED (exit $status); end of its output:"
    tail -n 60 "$log"
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    if [ -n "$crash" ]; then
        echo "crash input: $crash"
        echo "reproduce:   cargo fuzz run ${fuzz_flags[*]} $target $crash"
        echo "keep it:     cp $crash fuzz/regressions/$target/<name>   (replayed by cargo test)"
    fi
done

echo "fuzz: $passed passed, ${#failed[@]} failed"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz targets that failed: ${failed[*]}"
    exit 1
fi
