//! Finding snapshot paths in a derivation's strings and in the mount table: no panics, and
//! every reference found really is `<dir>/<32 base-32 chars>-<name>`.
#![no_main]

use srcstore::nix::{drv::Derivation, hook};

libfuzzer_sys::fuzz_target!(|data: (&str, &str)| {
    let (mountinfo, value) = data;
    let views = hook::view_mounts(mountinfo);
    let d = Derivation {
        env: vec![("src".into(), value.into())],
        ..Default::default()
    };
    for r in hook::references(&d, &views) {
        let (hash, name) = r.basename.split_once('-').unwrap();
        assert_eq!(hash.len(), 32);
        assert!(!name.is_empty());
    }
    let _ = hook::sandbox_block(&hook::references(&d, &views));
});
