//! The GOCACHEPROG stream comes from a Go process a build runs: whatever its bytes, serving it
//! ends (with an answer or an error), never panics, never waits for more.
#![no_main]

use std::sync::OnceLock;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("srcstore-fuzz-gocacheprog-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    });
    let mut store = srcstore::cache::gocacheprog::Store::open(dir).unwrap();
    let _ = srcstore::cache::gocacheprog::serve(&mut store, data, std::io::sink());
});
