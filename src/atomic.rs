//! Files replaced whole or not at all: srcstore's own small files (the index, the epoch, a
//! cache entry).
//!
//! The new bytes go to a fresh file beside the old one (made exclusively, under a random name),
//! which is then renamed over it: a reader sees the old file or the new one, never a part of
//! either. A write that fails (a full disk) removes the fresh file and leaves the old one as
//! it was, so a failure never loses what was there.

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes`, synced before and after the rename, so that the next boot sees
/// the old file or the new one too.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, true)
}

/// Replaces `path` with `bytes` whole or not at all, without waiting for the disk: for a cache
/// whose every entry is proven when read.
pub fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, false)
}

fn replace(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    let dir = path.parent().expect("a file's path has a parent");
    // Removed when dropped: on every error below, nothing is left behind.
    let mut fresh = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    fresh.write_all(bytes)?;
    if durable {
        fresh.as_file().sync_data()?;
    }
    fresh.persist(path).map_err(|e| e.error)?;
    match durable {
        true => std::fs::File::open(dir)?.sync_all(),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_file_whole() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("epoch");
        write_durably(&path, b"1\n").unwrap();
        write_whole(&path, b"2\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"2\n");
        assert_eq!(
            std::fs::read_dir(t.path()).unwrap().count(),
            1,
            "no stray file"
        );
    }
}
