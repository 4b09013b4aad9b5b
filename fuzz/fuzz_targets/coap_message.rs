//! Fuzz target `coap_message`: see fuzz/README.md and `sluice::fuzzing::coap_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::coap_message(data));
