//! Serving bytes of a snapshot's file from the working tree, with proof that they are the
//! snapshot's.
//!
//! The working tree moves on while older snapshots are still being read. Each read opens the
//! backing file beneath the project root and compares its stamp with the one the snapshot
//! recorded. When they differ (or the recorded one was racy) the whole file is hashed once; if
//! it still has the snapshot's content the new stamp is remembered as proven, otherwise the read
//! fails as [`ReadError::Stale`]. A stamp that moves during the read itself fails it as
//! [`ReadError::Torn`]. Either way the caller gets no bytes, never another version's.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::read::{copy_into, Root};
use crate::tree::{File, NodeId, Stamp};
use crate::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}: changed since the snapshot was taken")]
    Stale(PathBuf),
    #[error("{0}: changed while being read")]
    Torn(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
}

/// Verifying reads for one project; shared by every snapshot of it.
pub struct Reader {
    root: Arc<Root>,
    /// Stamps under which a node's content was re-proven after its recorded stamp went stale
    /// (a `git checkout` away and back, a `touch`).
    proven: Mutex<HashMap<NodeId, Stamp>>,
}

impl Reader {
    pub fn new(snapshot: &Snapshot) -> Self {
        Reader {
            root: snapshot.root_arc(),
            proven: Mutex::default(),
        }
    }

    /// Reads up to `size` bytes at `offset` of `file`, found at `rel` below the project root.
    pub fn read(
        &self,
        rel: &[u8],
        file: &File,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, ReadError> {
        let rel = Path::new(OsStr::from_bytes(rel));
        let path = || self.root.path().join(rel);
        let backing = match self.root.open_file(rel) {
            Ok(f) => f,
            Err(crate::Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(ReadError::Stale(path()))
            }
            Err(crate::Error::Io { source, .. }) => return Err(ReadError::Io(path(), source)),
            Err(_) => return Err(ReadError::Stale(path())),
        };
        let stamp = stamp_of(&backing).map_err(|e| ReadError::Io(path(), e))?;
        if !self.trusted(file, stamp) {
            self.prove(&backing, file, stamp).map_err(|e| match e {
                Some(io) => ReadError::Io(path(), io),
                None => ReadError::Stale(path()),
            })?;
        }
        let want = (size as u64).min(file.size().saturating_sub(offset)) as usize;
        let mut buf = vec![0; want];
        let mut filled = 0;
        while filled < want {
            match backing.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => return Err(ReadError::Torn(path())),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Io(path(), e)),
            }
        }
        if stamp_of(&backing).map_err(|e| ReadError::Io(path(), e))? != stamp {
            return Err(ReadError::Torn(path()));
        }
        Ok(buf)
    }

    fn trusted(&self, file: &File, stamp: Stamp) -> bool {
        (!file.racy && stamp == file.stamp)
            || self.proven.lock().unwrap().get(&file.id) == Some(&stamp)
    }

    /// Hashes the whole backing file; `Err(None)` when it is not the snapshot's content.
    fn prove(
        &self,
        backing: &std::fs::File,
        file: &File,
        stamp: Stamp,
    ) -> Result<(), Option<io::Error>> {
        if stamp.size != file.size() {
            return Err(None);
        }
        let mut hasher = blake3::Hasher::new();
        let mut reader = io::BufReader::with_capacity(0, backing);
        std::io::Seek::rewind(&mut reader).map_err(Some)?;
        copy_into(&mut reader, &mut hasher).map_err(Some)?;
        if stamp_of(backing).map_err(Some)? != stamp
            || hasher.finalize().as_bytes() != &file.content
        {
            return Err(None);
        }
        if !crate::read::is_racy(stamp) {
            self.proven.lock().unwrap().insert(file.id, stamp);
        }
        Ok(())
    }
}

fn stamp_of(f: &std::fs::File) -> io::Result<Stamp> {
    f.metadata().map(|m| Stamp::of(&m))
}
