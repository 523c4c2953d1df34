#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_node_agent::fuzzing::wire_frame(data));
