#!/usr/bin/env bash
# Builds every Wasm rule of the repository into target/rules/NAME.wasm with `sluice rule build`:
# the shipped rules, the examples and the test fixtures. The tests load them from there.
# Needs the wasm32-unknown-unknown Rust target and npm (scripts/test.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q -p sluice
sluice=target/debug/sluice
mkdir -p target/rules

build() { # DIR NAME
  echo "Building $1 -> target/rules/$2.wasm"
  "$sluice" rule build "$1" --out "target/rules/$2.wasm"
}

build rules/emqx emqx
build rules/senml senml
build examples/thingsboard thingsboard
build tests/rules/fault fault
build examples/enrich-as enrich-as
build tests/rules/fault-as fault-as

# Builds the gateway must refuse, from real toolchains (host/tests/refused_builds.rs): Rust
# (features of tests/rules/fault) and AssemblyScript (tests/rules/fault-as/assembly/broken,
# built by its asbuild above).
for feature in wasi-import abi-v2 no-init; do
  echo "Building the refused Rust build '$feature' -> target/rules/broken-rust-$feature.wasm"
  cargo build -q --release --target wasm32-unknown-unknown -p sluice-rule-fault --features "$feature"
  cp target/wasm32-unknown-unknown/release/sluice_rule_fault.wasm "target/rules/broken-rust-$feature.wasm"
done
for name in import abi2 noinit; do
  cp "tests/rules/fault-as/build/broken-$name.raw.wasm" "target/rules/broken-as-$name.wasm"
done
