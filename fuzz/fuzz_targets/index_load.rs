//! An index file may be damaged in any way short of its checksum (a crash mid-write is caught by
//! the checksum; a bug or a hand edit need not be): decoding must refuse it, never panic. The
//! input is the body after the project and filter, wrapped with a valid header and checksum so
//! that every run reaches the decoder.
#![no_main]

use std::io::Write;

libfuzzer_sys::fuzz_target!(|body: &[u8]| {
    let project = std::path::Path::new("/p");
    // postcard: the project path as length-prefixed bytes, then `Filter::All`'s variant index.
    let mut bytes = b"SRCSTIDX".to_vec();
    bytes.extend_from_slice(&2u32.to_le_bytes());
    bytes.extend_from_slice(&[2, b'/', b'p', 1]);
    bytes.extend_from_slice(body);
    let sum = blake3::hash(&bytes);
    bytes.extend_from_slice(sum.as_bytes());
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&bytes).unwrap();
    let _ = srcstore::index::load(file.path(), project, srcstore::Filter::All);
});
