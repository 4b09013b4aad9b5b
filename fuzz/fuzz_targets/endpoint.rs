//! Fuzz target `endpoint`: see fuzz/README.md and `sluice::fuzzing::endpoint`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::endpoint(data));
