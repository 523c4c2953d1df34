#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_operator::fuzzing::alert_webhook(data));
