//! See `netd::fuzzing::topology`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netd::fuzzing::topology(data));
