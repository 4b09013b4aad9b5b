#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ and runs each for a bounded time (see fuzz/README.md).
#
#   scripts/fuzz.sh [--seconds N] [TARGET...]     N seconds per target (default 60); all targets
#                                                 (coap_message endpoint config rule_abi) by default
#
# Needs a nightly toolchain (installed with rustup if missing) and cargo-fuzz (installed from
# crates.io if missing). Prints one line per target: executions, run time, corpus size and the
# result; exits 1 when a target crashed, naming the artifact that reproduces it:
#   cd fuzz && cargo +nightly fuzz run --sanitizer none TARGET artifacts/TARGET/crash-...
# New inputs go to fuzz/target/corpus/TARGET (kept between runs, not committed); the seeds in
# fuzz/corpus/TARGET are read, never written.
set -euo pipefail

seconds=60
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=${2:?--seconds needs a number}; shift 2 ;;
        --seconds=*) seconds=${1#--seconds=}; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        -*) echo "unknown option $1; see $0 --help" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
case "$seconds" in ''|*[!0-9]*) echo "--seconds takes a whole number, not '$seconds'" >&2; exit 2 ;; esac
[ ${#targets[@]} -gt 0 ] || targets=(coap_message endpoint config rule_abi)

cd "$(dirname "$0")/../fuzz"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "Installing the nightly toolchain (cargo-fuzz needs it)..."
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "Installing cargo-fuzz..."
    cargo install cargo-fuzz --locked
fi

# No sanitizer: the code under test is safe Rust (panics, overflow checks and debug assertions
# are on), and AddressSanitizer conflicts with wasmtime's signal handlers and guard regions.
fuzz=(cargo +nightly fuzz)
flags=(--sanitizer none)
mkdir -p target/logs
echo "Building the fuzz targets (the first build takes several minutes)..."
if ! "${fuzz[@]}" build "${flags[@]}" >target/logs/build.log 2>&1; then
    tail -n 30 target/logs/build.log >&2
    echo "The fuzz targets do not build; the whole log is fuzz/target/logs/build.log" >&2
    exit 1
fi
failed=0
for target in "${targets[@]}"; do
    [ -f "fuzz_targets/$target.rs" ] || { echo "no target $target in fuzz/fuzz_targets" >&2; exit 2; }
    work="target/corpus/$target"
    log="target/logs/$target.log"
    mkdir -p "$work" "artifacts/$target" "corpus/$target"
    set +e
    "${fuzz[@]}" run "${flags[@]}" "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1 || true)
    took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' | tail -n 1 || true)
    units=$(find "$work" -type f | wc -l)
    if [ "$status" -eq 0 ]; then
        printf '%-13s %10s executions in %ss, %s inputs in its corpus: ok\n' \
            "$target" "${execs:-?}" "${took:-$seconds}" "$units"
    else
        failed=1
        artifact=$(grep -o 'Test unit written to .*' "$log" | sed 's/Test unit written to //' | tail -n 1 || true)
        printf '%-13s %10s executions: CRASH (exit %s), input %s, log fuzz/%s\n' \
            "$target" "${execs:-?}" "$status" "${artifact:-?}" "$log"
        grep -m 1 -A 1 "panicked at\|ERROR: libFuzzer" "$log" | sed 's/^/    /' || true
    fi
done
exit "$failed"
