//! Finding snapshot paths in a derivation's strings, in a path a user names, and in the mount
//! table: no panics, and every reference found really is `<dir>/<32 base-32 chars>-<name>`.
#![no_main]

use srcstore::{hook, nix::drv::Derivation};

libfuzzer_sys::fuzz_target!(|data: (&str, &str)| {
    let (mountinfo, value) = data;
    let views = hook::view_mounts(mountinfo.as_bytes());
    let d = Derivation {
        env: vec![("src".into(), value.into())],
        ..Default::default()
    };
    for r in hook::references(&d, &views) {
        let (hash, name) = r.basename.split_once('-').unwrap();
        assert_eq!(hash.len(), 32);
        assert!(!name.is_empty());
    }
    // A path a user hands root's store service: exactly a snapshot of a listed view, or none.
    if let Some(r) = hook::reference(value, &views) {
        assert_eq!(r.path.as_os_str(), value);
        if let Some(view) = &r.view {
            assert!(r.path.starts_with(&view.mountpoint), "{r:?}");
        }
    }
    let refs = hook::references(&d, &views);
    let staged: Vec<std::path::PathBuf> = (0..refs.len()).map(|i| format!("/stage/{i}").into()).collect();
    if let Ok(block) = hook::sandbox_block(&refs, &staged) {
        // Every line maps a path to what the hook staged: nothing a mountpoint says adds one.
        for line in block.lines().skip(1).filter(|l| !l.is_empty()) {
            assert!(line.split_once('=').is_some_and(|(_, o)| o.starts_with("/stage/")), "{line:?}");
        }
    }
});
