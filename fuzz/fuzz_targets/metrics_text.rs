#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_operator::fuzzing::metrics_text(data));
