//! Fuzz target `rule_abi`: see fuzz/README.md and `sluice::fuzzing::rule_abi`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::rule_abi(data));
