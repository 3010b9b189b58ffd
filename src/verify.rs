//! Serving bytes of a snapshot's file from the working tree, with proof that they are the
//! snapshot's.
//!
//! The working tree moves on while older snapshots are still being read. Each read compares the
//! backing file's stamp with the one the snapshot recorded. When they differ (or the recorded
//! one was racy) the whole file is hashed once; if it still has the snapshot's content the new
//! stamp is remembered as proven, otherwise the read fails as [`ReadError::Stale`]. A stamp that
//! moves during the read itself fails it as [`ReadError::Torn`]. Either way the caller gets no
//! bytes, never another version's.
//!
//! The backing file is opened beneath the project root. A file read in pieces (the kernel asks
//! for at most its readahead window per request) keeps its descriptor, by node, until the piece
//! that reaches its end, so it is opened once rather than once per request. A kept descriptor
//! proves nothing by itself: every read through it is stamped before and after like any other,
//! and one whose stamp is no longer trusted is dropped and the read starts over from the path.
//! At most [`KEPT`] are kept (first in, first out), so a removed file's space is not held for
//! long.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::read::{copy_into, stamp_of_file, Root};
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

/// How many backing descriptors a [`Reader`] keeps open.
const KEPT: usize = 64;

/// Verifying reads for one project; shared by every snapshot of it.
pub struct Reader {
    root: Arc<Root>,
    /// Stamps under which a node's content was re-proven after its recorded stamp went stale
    /// (a `git checkout` away and back, a `touch`).
    proven: Mutex<HashMap<NodeId, Stamp>>,
    kept: Mutex<Kept>,
}

/// Open backing files by node, first in first out.
#[derive(Default)]
struct Kept {
    slots: Vec<(NodeId, Arc<fs::File>)>,
    next: usize,
}

impl Kept {
    fn get(&self, id: NodeId) -> Option<Arc<fs::File>> {
        self.slots.iter().find(|s| s.0 == id).map(|s| s.1.clone())
    }

    /// Keeps `file` for `id`; returns what it displaced (closed by the caller, unlocked).
    fn put(&mut self, id: NodeId, file: Arc<fs::File>) -> Option<Arc<fs::File>> {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.0 == id) {
            return Some(std::mem::replace(&mut slot.1, file));
        }
        if self.slots.len() < KEPT {
            self.slots.push((id, file));
            return None;
        }
        let victim = std::mem::replace(&mut self.slots[self.next], (id, file));
        self.next = (self.next + 1) % KEPT;
        Some(victim.1)
    }

    fn drop_id(&mut self, id: NodeId) -> Option<Arc<fs::File>> {
        let i = self.slots.iter().position(|s| s.0 == id)?;
        Some(self.slots.swap_remove(i).1)
    }
}

impl Reader {
    pub fn new(snapshot: &Snapshot) -> Self {
        Reader {
            root: snapshot.root_arc(),
            proven: Mutex::default(),
            kept: Mutex::default(),
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
        let kept = self.kept.lock().unwrap().get(file.id);
        if let Some(backing) = kept {
            let stamp = stamp_of_file(&backing).map_err(|e| ReadError::Io(path(), e))?;
            if self.trusted(file, stamp) {
                let result = read_stamped(&backing, file, stamp, offset, size, path);
                if result.as_ref().map_or(true, |b| at_end(file, offset, b)) {
                    drop(self.kept.lock().unwrap().drop_id(file.id));
                }
                return result;
            }
            // Changed, replaced or removed since it was kept: start over from the path.
            drop(self.kept.lock().unwrap().drop_id(file.id));
        }
        let backing = match self.root.open_file(rel) {
            Ok(f) => f,
            Err(crate::Error::Io { cause, .. }) if cause.kind() == io::ErrorKind::NotFound => {
                return Err(ReadError::Stale(path()))
            }
            Err(crate::Error::Io { cause, .. }) => return Err(ReadError::Io(path(), cause)),
            Err(_) => return Err(ReadError::Stale(path())),
        };
        let stamp = stamp_of_file(&backing).map_err(|e| ReadError::Io(path(), e))?;
        let buf = if self.trusted(file, stamp) {
            read_stamped(&backing, file, stamp, offset, size, path)?
        } else {
            // The bytes served are the ones the proof hashed: a second read could see a write
            // made within the same timestamp tick, which no stamp would show.
            self.prove(&backing, file, stamp, offset, size)
                .map_err(|e| match e {
                    Some(io) => ReadError::Io(path(), io),
                    None => ReadError::Stale(path()),
                })?
        };
        if self.trusted(file, stamp) && !at_end(file, offset, &buf) {
            let displaced = self.kept.lock().unwrap().put(file.id, Arc::new(backing));
            drop(displaced);
        }
        Ok(buf)
    }

    /// Closes the kept descriptors of files removed (or replaced) since they were kept, so
    /// their space is freed without waiting for other reads to displace them.
    pub fn let_go_of_removed(&self) {
        use std::os::unix::fs::MetadataExt;
        let removed: Vec<_> = {
            let mut kept = self.kept.lock().unwrap();
            let (removed, still): (Vec<_>, Vec<_>) = std::mem::take(&mut kept.slots)
                .into_iter()
                .partition(|(_, f)| f.metadata().map_or(true, |m| m.nlink() == 0));
            *kept = Kept {
                slots: still,
                next: 0,
            };
            removed
        };
        drop(removed); // closed outside the lock
    }

    fn trusted(&self, file: &File, stamp: Stamp) -> bool {
        (!file.racy && stamp == file.stamp)
            || self.proven.lock().unwrap().get(&file.id) == Some(&stamp)
    }

    /// Hashes the whole backing file and returns the bytes of it asked for, taken from that
    /// same pass; `Err(None)` when it is not the snapshot's content. A stamp that is not racy
    /// is remembered as proven, so later reads under it need no hash.
    fn prove(
        &self,
        backing: &std::fs::File,
        file: &File,
        stamp: Stamp,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Option<io::Error>> {
        if stamp.size != file.size() {
            return Err(None);
        }
        let want = (size as u64).min(file.size().saturating_sub(offset)) as usize;
        let mut pass = HashAndKeep {
            hasher: blake3::Hasher::new(),
            at: 0,
            from: offset,
            kept: Vec::with_capacity(want),
            want,
        };
        let mut reader = io::BufReader::with_capacity(0, backing);
        std::io::Seek::rewind(&mut reader).map_err(Some)?;
        let read = copy_into(&mut reader, &mut pass).map_err(Some)?;
        if read != stamp.size
            || stamp_of_file(backing).map_err(Some)? != stamp
            || pass.hasher.finalize().as_bytes() != &file.content
            || pass.kept.len() != want
        {
            return Err(None);
        }
        if !crate::read::is_racy(stamp) {
            self.proven.lock().unwrap().insert(file.id, stamp);
        }
        Ok(pass.kept)
    }
}

/// Hashes everything written to it, and keeps the `want` bytes from offset `from` on.
struct HashAndKeep {
    hasher: blake3::Hasher,
    at: u64,
    from: u64,
    kept: Vec<u8>,
    want: usize,
}

impl io::Write for HashAndKeep {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        let start = self.from.saturating_sub(self.at);
        if start < buf.len() as u64 && self.kept.len() < self.want {
            let take = (buf.len() - start as usize).min(self.want - self.kept.len());
            self.kept
                .extend_from_slice(&buf[start as usize..start as usize + take]);
        }
        self.at += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether `buf`, read at `offset`, reaches the end of `file`.
fn at_end(file: &File, offset: u64, buf: &[u8]) -> bool {
    offset + buf.len() as u64 >= file.size()
}

/// Reads from `backing`, whose stamp before the read was `stamp`; fails as torn if the stamp
/// moved by the end of the read.
fn read_stamped(
    backing: &fs::File,
    file: &File,
    stamp: Stamp,
    offset: u64,
    size: u32,
    path: impl Fn() -> PathBuf,
) -> Result<Vec<u8>, ReadError> {
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
    if stamp_of_file(backing).map_err(|e| ReadError::Io(path(), e))? != stamp {
        return Err(ReadError::Torn(path()));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Node;
    use crate::{Filter, Scanner};

    const SIZE: usize = 1 << 20;
    const PIECE: u32 = 128 << 10;

    fn bytes(seed: u8) -> Vec<u8> {
        (0..SIZE).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    /// A project holding one 1 MiB file `f`, scanned once its stamp is no longer racy.
    fn project() -> (tempfile::TempDir, Snapshot, Node) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), bytes(0)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(120));
        let snap = Scanner::new(dir.path(), Filter::All).scan().unwrap();
        let node = match snap.tree() {
            Node::Dir(d) => d.get(b"f").unwrap().clone(),
            _ => unreachable!(),
        };
        (dir, snap, node)
    }

    fn read(reader: &Reader, node: &Node, offset: u64) -> Result<Vec<u8>, ReadError> {
        match node {
            Node::File(f) => reader.read(b"f", f, offset, PIECE),
            _ => unreachable!(),
        }
    }

    fn kept(reader: &Reader) -> usize {
        reader.kept.lock().unwrap().slots.len()
    }

    #[test]
    fn a_read_under_a_racy_stamp_serves_the_bytes_it_proved_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (vec![b'A'; 4096], vec![b'B'; 4096]);
        fs::write(dir.path().join("f"), &a).unwrap();
        let snap = Scanner::new(dir.path(), Filter::All).scan().unwrap();
        let Some(Node::File(node)) = snap.tree().find(b"f") else {
            unreachable!()
        };
        let reader = Reader::new(&snap);
        // Rewritten in place, B then A, as fast as it goes: every stamp it leaves is racy.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (stop, path, a, b) = (stop.clone(), dir.path().join("f"), a.clone(), b.clone());
            std::thread::spawn(move || {
                let f = fs::OpenOptions::new().write(true).open(path).unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    f.write_at(&b, 0).unwrap();
                    f.write_at(&a, 0).unwrap();
                }
            })
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let (mut served, mut refused) = (0, 0);
        while std::time::Instant::now() < until {
            match reader.read(b"f", node, 0, 4096) {
                Ok(bytes) => {
                    assert!(bytes == a, "bytes of another version were served");
                    served += 1;
                }
                Err(_) => refused += 1,
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert!(served + refused > 0);
    }

    #[test]
    fn a_file_read_in_pieces_is_opened_once_and_let_go_at_its_end() {
        let (_dir, snap, node) = project();
        let reader = Reader::new(&snap);
        let want = bytes(0);
        for offset in (0..SIZE as u64).step_by(PIECE as usize) {
            let got = read(&reader, &node, offset).unwrap();
            assert_eq!(got, want[offset as usize..][..PIECE as usize]);
            let last = offset + PIECE as u64 == SIZE as u64;
            assert_eq!(kept(&reader), if last { 0 } else { 1 });
        }
    }

    #[test]
    fn a_kept_descriptor_never_serves_bytes_written_after_the_snapshot() {
        let (dir, snap, node) = project();
        let reader = Reader::new(&snap);
        read(&reader, &node, 0).unwrap();
        assert_eq!(kept(&reader), 1);
        // Rewritten in place with the same bytes: proven again, still served.
        fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("f"))
            .unwrap()
            .write_at(&bytes(0)[..4096], 0)
            .unwrap();
        assert_eq!(read(&reader, &node, 0).unwrap(), bytes(0)[..PIECE as usize]);
        // Rewritten in place with other bytes: stale, and the descriptor is let go.
        fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("f"))
            .unwrap()
            .write_at(&[0xAA; 4096], PIECE as u64)
            .unwrap();
        assert!(matches!(
            read(&reader, &node, PIECE as u64),
            Err(ReadError::Stale(_))
        ));
        assert_eq!(kept(&reader), 0);
    }

    #[test]
    fn a_kept_descriptor_of_a_removed_file_is_let_go_without_another_read() {
        let (dir, snap, node) = project();
        let reader = Reader::new(&snap);
        read(&reader, &node, 0).unwrap();
        reader.let_go_of_removed();
        assert_eq!(kept(&reader), 1, "a file still there stays open");
        fs::remove_file(dir.path().join("f")).unwrap();
        reader.let_go_of_removed();
        assert_eq!(kept(&reader), 0);
    }

    #[test]
    fn a_kept_descriptor_of_a_replaced_or_removed_file_is_let_go() {
        let (dir, snap, node) = project();
        let f = dir.path().join("f");
        let reader = Reader::new(&snap);
        // Replaced by a file with other content: the kept (unlinked) one is not used.
        read(&reader, &node, 0).unwrap();
        fs::write(dir.path().join("g"), bytes(1)).unwrap();
        fs::rename(dir.path().join("g"), &f).unwrap();
        assert!(matches!(
            read(&reader, &node, PIECE as u64),
            Err(ReadError::Stale(_))
        ));
        assert_eq!(kept(&reader), 0);
        // Replaced by the snapshot's content again: proven and served.
        fs::write(dir.path().join("g"), bytes(0)).unwrap();
        fs::rename(dir.path().join("g"), &f).unwrap();
        assert_eq!(
            read(&reader, &node, PIECE as u64).unwrap(),
            bytes(0)[PIECE as usize..][..PIECE as usize]
        );
        // Removed.
        fs::remove_file(&f).unwrap();
        assert!(matches!(
            read(&reader, &node, 2 * PIECE as u64),
            Err(ReadError::Stale(_))
        ));
        assert_eq!(kept(&reader), 0);
    }
}
