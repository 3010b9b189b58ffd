//! Control-socket request lines come from other processes: parsing must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = srcstore::daemon::parse(data);
});
