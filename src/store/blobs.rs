//! Which copy in the store's `.links` directory holds a file's content.
//!
//! Blobs live where Nix keeps its own deduplicated files, `<store>/.links/<h>`, named as Nix
//! names them (`h`: nix-base32 of the SHA-256 of the file's NAR, so content and executable bit),
//! on the store's own mount (a hard link cannot cross one). Nix's collector spares `.links`
//! and removes only entries no store path links to any more; `nix-store --optimise` finds
//! srcstore's files already joined to them.
//!
//! A snapshot knows a file by its BLAKE3 content hash, so srcstore keeps a log from (BLAKE3,
//! executable) to the `.links` name: append-only, one checksummed record per blob, a torn or
//! damaged record skipped when read. A name whose file the collector took is simply copied
//! again.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::tree::Hash;

/// (content, executable) → SHA-256 of the file's NAR.
pub struct Blobs {
    names: HashMap<(Hash, bool), [u8; 32]>,
    log: fs::File,
    path: PathBuf,
}

const RECORD: usize = 32 + 1 + 32 + 4;

impl Blobs {
    /// Reads the log at `path` (made if missing).
    pub fn open(path: &Path) -> io::Result<Blobs> {
        let at = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let mut log = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(at)?;
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes).map_err(at)?;
        let mut names = HashMap::new();
        for r in bytes.chunks_exact(RECORD) {
            if checksum(&r[..65]) != r[65..] {
                continue;
            }
            let content: Hash = r[..32].try_into().expect("32 bytes");
            names.insert(
                (content, r[32] == 1),
                r[33..65].try_into().expect("32 bytes"),
            );
        }
        // A torn last record (a crash mid-append) would misalign every later one.
        let whole = bytes.len() - bytes.len() % RECORD;
        if whole != bytes.len() {
            log.set_len(whole as u64).map_err(at)?;
        }
        Ok(Blobs {
            names,
            log,
            path: path.to_path_buf(),
        })
    }

    /// The `.links` name of the blob holding `content` with this executable bit, if known.
    pub fn name(&self, content: &Hash, executable: bool) -> Option<String> {
        self.names
            .get(&(*content, executable))
            .map(|h| crate::nixhash::base32(h))
    }

    /// Records that `content` with this executable bit is the blob with NAR hash `nar`.
    pub fn insert(&mut self, content: Hash, executable: bool, nar: [u8; 32]) -> io::Result<()> {
        if self.names.insert((content, executable), nar) == Some(nar) {
            return Ok(());
        }
        let mut r = Vec::with_capacity(RECORD);
        r.extend_from_slice(&content);
        r.push(executable as u8);
        r.extend_from_slice(&nar);
        let sum = checksum(&r);
        r.extend_from_slice(&sum);
        self.log
            .write_all(&r)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Every known blob's `.links` name.
    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.names.values().map(|h| crate::nixhash::base32(h))
    }
}

fn checksum(bytes: &[u8]) -> [u8; 4] {
    blake3::hash(bytes).as_bytes()[..4]
        .try_into()
        .expect("4 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_or_damaged_record_is_skipped_and_the_rest_kept() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("blobs");
        let mut b = Blobs::open(&path).unwrap();
        b.insert([1; 32], false, [2; 32]).unwrap();
        b.insert([3; 32], true, [4; 32]).unwrap();
        drop(b);
        let mut bytes = fs::read(&path).unwrap();
        bytes[40] ^= 1; // damage the first record
        bytes.extend_from_slice(&[9; 10]); // a torn append
        fs::write(&path, &bytes).unwrap();
        let b = Blobs::open(&path).unwrap();
        assert_eq!(b.name(&[1; 32], false), None);
        assert_eq!(
            b.name(&[3; 32], true),
            Some(crate::nixhash::base32(&[4; 32]))
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * RECORD as u64);
    }
}
