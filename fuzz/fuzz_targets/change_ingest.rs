#![no_main]

// libfuzzer-sys aborts on any panic, even one caught by `catch_unwind`; the entry point
// catches automerge's panics on purpose (see `records::apply_untrusted`), so only panics that
// escape it may count: those still abort, as they unwind into libFuzzer.
libfuzzer_sys::fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| {
        sync_protocol::fuzzing::change_ingest(data);
    }
);
