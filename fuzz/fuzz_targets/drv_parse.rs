//! The .drv parser reads files the hook is pointed at: it must never panic, and whatever it
//! accepts must be a derivation whose strings it can list.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(d) = srcstore::nix::drv::parse(data) {
        assert!(data.starts_with(b"Derive("));
        let _ = d.strings().count();
    }
});
