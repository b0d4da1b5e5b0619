#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sync_protocol::fuzzing::handshake(data);
});
