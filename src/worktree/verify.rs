//! Proving bytes of a snapshot's file by their content before they leave srcstore.
//!
//! The working tree moves on while older snapshots are still read, and a stamp (size, times,
//! inode) cannot show every move: a write through a shared mapping to a page that is already
//! dirty changes neither mtime nor ctime. So every byte served (a FUSE read, a NAR's file
//! contents) goes through one proof, [`prove`], against the snapshot's content hash (the plain
//! BLAKE3 of the file's bytes):
//! - a range that is the whole file, or any range of a file of at most [`WHOLE`] bytes (most files
//!   of a source tree): the whole file is read in the same pass and must hash to the content hash;
//! - any other range of a larger file: the [`GROUP`]-byte subtrees of BLAKE3's chunk tree that
//!   cover the range are hashed and must equal the chaining values of the file's [`ChunkTree`].
//!   That tree is built by the first such read of the content, in a pass over the whole file whose
//!   chaining values must merge to the content hash, and is then kept in memory ([`Trees`],
//!   bounded), by content hash.
//!
//! The caller hands the bytes on only when the proof succeeds. Stamps prove nothing here; they
//! only tell a failure that raced a change someone could see ([`ReadError::Torn`]) from one that
//! did not ([`ReadError::Stale`]). Either way the caller gets no bytes, never another version's.
//! A place that no longer holds a regular file (a symlink, a directory, a fifo took its place, or
//! a directory on its path became a symlink) is stale too: nothing is ever opened through a link.
//!
//! The backing file is opened beneath the project root. A file read in pieces (the kernel asks
//! for at most its readahead window per request) keeps its descriptor, by node, until the piece
//! that reaches its end, so it is opened once rather than once per request. A kept descriptor is
//! used only while its stamp is the one it had when kept (a removed or replaced file's ctime
//! moves), and proves nothing by itself: every read through it is proven like any other. At most
//! [`KEPT`] are kept (first in, first out), so a removed file's space is not held for long.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use blake3::hazmat::{self, ChainingValue, HasherExt, Mode};

use crate::tree::{File, Hash, NodeId, Stamp};
use crate::worktree::read::{open_file_at, stamp_of_file, stamp_of_stat, Root};
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

/// Files up to this size are proven by hashing them whole on every read: one request of the
/// kernel (its 128 KiB readahead window) covers them.
pub const WHOLE: u64 = 128 << 10;

/// The bytes under one chaining value of a [`ChunkTree`]: 64 BLAKE3 chunks, a subtree of the
/// BLAKE3 tree wherever it starts at a multiple of its size.
pub const GROUP: u64 = 64 << 10;

/// What one pass of a proof reads at a time (whole groups).
const SCRATCH: usize = 4 * GROUP as usize;

/// At most this many bytes of chaining values are kept in [`Trees`] (64 GiB of files), for at
/// most this many contents.
const TREES_BYTES: usize = 32 << 20;
const TREES: usize = 4096;

/// Why bytes could not be proven to be a file's.
#[derive(Debug)]
pub(crate) enum Unproven {
    /// They are not the file's content, and nothing was seen to change while they were read.
    Stale,
    /// They are not, and the file's stamp moved while they were read.
    Torn,
    /// Reading them (or handing them on) failed.
    Io(io::Error),
}

/// Where proven bytes go; the proof reads straight into the room it is offered. What it put
/// there may be used only once [`prove`] has returned `Ok`.
pub(crate) trait Out {
    /// Room for at least one more byte.
    fn room(&mut self) -> io::Result<&mut [u8]>;
    /// The first `n` bytes of the room last offered now hold bytes of the file.
    fn filled(&mut self, n: usize) -> io::Result<()>;

    fn put(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let room = self.room()?;
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
            self.filled(n)?;
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

/// Opens the file `name` (one component, or a relative path) below `dir` to prove bytes of
/// it, with its stamp as opened. A place that no longer holds a regular file is stale.
pub(crate) fn open_backing(
    dir: BorrowedFd<'_>,
    name: &[u8],
) -> Result<(fs::File, Stamp), Unproven> {
    open_backing_stat(dir, name).map(|(file, st)| (file, stamp_of_stat(&st)))
}

/// [`open_backing`], with the whole `stat` of the file as opened.
pub(crate) fn open_backing_stat(
    dir: BorrowedFd<'_>,
    name: &[u8],
) -> Result<(fs::File, rustix::fs::Stat), Unproven> {
    use rustix::io::Errno;
    let file = open_file_at(dir, name).map_err(|e| {
        let moved = [
            Errno::NOENT,
            Errno::LOOP,
            Errno::NOTDIR,
            Errno::XDEV,
            Errno::NXIO,
        ];
        match e.raw_os_error() {
            Some(n) if moved.iter().any(|m| m.raw_os_error() == n) => Unproven::Stale,
            _ => Unproven::Io(e),
        }
    })?;
    let st = rustix::fs::fstat(&file).map_err(|e| Unproven::Io(e.into()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode as _) != rustix::fs::FileType::RegularFile {
        return Err(Unproven::Stale);
    }
    Ok((file, st))
}

/// The proof: reads the bytes `range` of `file` (clamped to its size) from `backing`, whose
/// stamp was `stamp` before the read, into `out`, and proves them `file`'s by their content (see
/// the module docs). `trees` keeps the chunk trees of large files for ranges of them; without
/// it, a range of a large file is proven by hashing the whole file.
pub(crate) fn prove(
    backing: &fs::File,
    stamp: Stamp,
    file: &File,
    range: Range<u64>,
    trees: Option<&Trees>,
    out: &mut impl Out,
) -> Result<(), Unproven> {
    let size = file.size();
    if stamp.size != size {
        return Err(Unproven::Stale);
    }
    let (from, to) = (range.start.min(size), range.end.min(size));
    if from == to && size > 0 {
        return Ok(()); // nothing is handed on
    }
    let proof = match trees {
        _ if from == 0 && to == size => whole_into(backing, file, out),
        Some(trees) if size > WHOLE => trees.prove(backing, file, from, to, out),
        _ => whole_through(backing, file, from, to, out),
    };
    proof.map_err(|e| match e {
        Some(e) => Unproven::Io(e),
        None if stamp_of_file(backing).is_ok_and(|now| now != stamp) => Unproven::Torn,
        None => Unproven::Stale,
    })
}

/// A proof's own failure: `None` when the bytes are not the content, else why reading failed.
pub(crate) type Failed = Option<io::Error>;

/// Reads into `buf` from `at` until it is full or the file ends; how much it read.
fn read_full_at(backing: &fs::File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match backing.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The whole file, read straight into `out` and hashed on the way.
fn whole_into(backing: &fs::File, file: &File, out: &mut impl Out) -> Result<(), Failed> {
    let mut hasher = blake3::Hasher::new();
    read_into(backing, file.size(), out, |b| {
        hasher.update(b);
    })?;
    (*hasher.finalize().as_bytes() == file.content)
        .then_some(())
        .ok_or(None)
}

/// The first `size` bytes of `backing`, read straight into `out`, each piece shown to `seen`
/// as it is read. A file that ends before is `Err(None)`. Proves nothing by itself: see
/// [`prove`].
pub(crate) fn read_into(
    backing: &fs::File,
    size: u64,
    out: &mut impl Out,
    mut seen: impl FnMut(&[u8]),
) -> Result<(), Failed> {
    let mut at = 0;
    while at < size {
        let room = out.room()?;
        let want = room.len().min((size - at).try_into().unwrap_or(usize::MAX));
        let n = match backing.read_at(&mut room[..want], at) {
            Ok(0) => return Err(None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Some(e)),
        };
        seen(&room[..n]);
        out.filled(n)?;
        at += n as u64;
    }
    Ok(())
}

/// Hands on the part of `buf` (the file's bytes from `at`) that falls in `from..to`.
fn put_overlap(buf: &[u8], at: u64, from: u64, to: u64, out: &mut impl Out) -> io::Result<()> {
    let end = at + buf.len() as u64;
    if end <= from || at >= to {
        return Ok(());
    }
    let start = from.saturating_sub(at) as usize;
    let stop = (to.min(end) - at) as usize;
    out.put(&buf[start..stop])
}

thread_local! {
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; SCRATCH]);
}

/// The whole file, hashed in one pass that hands on the bytes in `from..to`.
fn whole_through(
    backing: &fs::File,
    file: &File,
    from: u64,
    to: u64,
    out: &mut impl Out,
) -> Result<(), Failed> {
    BUF.with_borrow_mut(|buf| {
        let mut hasher = blake3::Hasher::new();
        let mut at = 0;
        while at < file.size() {
            let want = (file.size() - at).min(SCRATCH as u64) as usize;
            if read_full_at(backing, &mut buf[..want], at)? != want {
                return Err(None);
            }
            hasher.update(&buf[..want]);
            put_overlap(&buf[..want], at, from, to, out)?;
            at += want as u64;
        }
        (hasher.finalize().as_bytes() == &file.content)
            .then_some(())
            .ok_or(None)
    })
}

/// The chaining values of a file's [`GROUP`]-byte subtrees, in order (the last group may be
/// short), for a file of more than one group. Proven: they merge to the file's content hash.
pub struct ChunkTree {
    cvs: Box<[ChainingValue]>,
}

impl ChunkTree {
    /// The chaining value of group `index`, whose bytes are `bytes`.
    fn group(index: u64, bytes: &[u8]) -> ChainingValue {
        blake3::Hasher::new()
            .set_input_offset(index * GROUP)
            .update(bytes)
            .finalize_non_root()
    }

    /// The BLAKE3 hash of a file of `size` bytes (more than one group) with these groups.
    fn root(cvs: &[ChainingValue], size: u64) -> Hash {
        // The subtree of `len` bytes starting at group `first`.
        fn subtree(cvs: &[ChainingValue], first: usize, len: u64) -> ChainingValue {
            if len <= GROUP {
                return cvs[first];
            }
            let left = hazmat::left_subtree_len(len);
            hazmat::merge_subtrees_non_root(
                &subtree(cvs, first, left),
                &subtree(cvs, first + (left / GROUP) as usize, len - left),
                Mode::Hash,
            )
        }
        debug_assert!(size > GROUP);
        let left = hazmat::left_subtree_len(size);
        *hazmat::merge_subtrees_root(
            &subtree(cvs, 0, left),
            &subtree(cvs, (left / GROUP) as usize, size - left),
            Mode::Hash,
        )
        .as_bytes()
    }

    fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.cvs)
    }
}

/// Chunk trees of large files, by content hash, built on first need and kept up to
/// [`TREES_BYTES`] (the oldest let go first).
#[derive(Default)]
pub struct Trees {
    inner: Mutex<TreesInner>,
}

/// Where one content's tree is built, and then found.
type Slot = Arc<Mutex<Option<Arc<ChunkTree>>>>;

#[derive(Default)]
struct TreesInner {
    /// A slot per content: empty until its tree is built (a reader building one holds the
    /// slot's lock, so others reading the same file wait for it rather than build it again),
    /// and the bytes of its tree.
    slots: HashMap<Hash, (Slot, usize)>,
    order: VecDeque<Hash>,
    bytes: usize,
}

impl Trees {
    /// Bytes held by the kept chunk trees, and how many there are.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap();
        (
            inner.bytes,
            inner.slots.values().filter(|s| s.1 > 0).count(),
        )
    }

    fn prove(
        &self,
        backing: &fs::File,
        file: &File,
        from: u64,
        to: u64,
        out: &mut impl Out,
    ) -> Result<(), Failed> {
        let slot = {
            let mut inner = self.inner.lock().unwrap();
            let inner = &mut *inner;
            let slot = inner
                .slots
                .entry(file.content)
                .or_insert_with(|| {
                    inner.order.push_back(file.content);
                    Default::default()
                })
                .0
                .clone();
            inner.evict();
            slot
        };
        let mut built = slot.lock().unwrap();
        if let Some(tree) = built.clone() {
            drop(built);
            return check(backing, file, &tree, from, to, out);
        }
        let tree = Arc::new(build(backing, file, from, to, out)?);
        *built = Some(tree.clone());
        drop(built);
        self.kept(file.content, &slot, tree.bytes());
        Ok(())
    }

    /// Counts a tree just built into `slot`, and lets the oldest go while over the bound.
    fn kept(&self, content: Hash, slot: &Slot, bytes: usize) {
        let mut inner = self.inner.lock().unwrap();
        let inner = &mut *inner;
        match inner.slots.get_mut(&content) {
            Some(s) if Arc::ptr_eq(&s.0, slot) && s.1 == 0 => s.1 = bytes,
            _ => return, // let go of while it was built
        }
        inner.bytes += bytes;
        inner.evict();
    }
}

impl TreesInner {
    /// Lets the oldest trees go while there are too many, or too many bytes of them.
    fn evict(&mut self) {
        while self.bytes > TREES_BYTES || self.slots.len() > TREES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((_, b)) = self.slots.remove(&oldest) {
                self.bytes -= b;
            }
        }
    }
}

/// Builds the chunk tree of `file` in one pass over it, handing on the bytes in `from..to`.
fn build(
    backing: &fs::File,
    file: &File,
    from: u64,
    to: u64,
    out: &mut impl Out,
) -> Result<ChunkTree, Failed> {
    let size = file.size();
    let mut cvs = Vec::with_capacity(size.div_ceil(GROUP) as usize);
    BUF.with_borrow_mut(|buf| {
        let mut at = 0;
        while at < size {
            let want = (size - at).min(SCRATCH as u64) as usize;
            if read_full_at(backing, &mut buf[..want], at)? != want {
                return Err(None);
            }
            for (i, group) in buf[..want].chunks(GROUP as usize).enumerate() {
                cvs.push(ChunkTree::group(at / GROUP + i as u64, group));
            }
            put_overlap(&buf[..want], at, from, to, out)?;
            at += want as u64;
        }
        Ok(())
    })?;
    if ChunkTree::root(&cvs, size) != file.content {
        return Err(None);
    }
    Ok(ChunkTree { cvs: cvs.into() })
}

/// Reads the groups of `file` that cover `from..to`, checks each against `tree`, and hands on
/// the bytes in `from..to`.
fn check(
    backing: &fs::File,
    file: &File,
    tree: &ChunkTree,
    from: u64,
    to: u64,
    out: &mut impl Out,
) -> Result<(), Failed> {
    let size = file.size();
    BUF.with_borrow_mut(|buf| {
        let mut at = from / GROUP * GROUP;
        let end = to.div_ceil(GROUP).saturating_mul(GROUP).min(size);
        while at < end {
            let want = (end - at).min(SCRATCH as u64) as usize;
            if read_full_at(backing, &mut buf[..want], at)? != want {
                return Err(None);
            }
            for (i, group) in buf[..want].chunks(GROUP as usize).enumerate() {
                let index = at / GROUP + i as u64;
                if ChunkTree::group(index, group) != tree.cvs[index as usize] {
                    return Err(None);
                }
            }
            put_overlap(&buf[..want], at, from, to, out)?;
            at += want as u64;
        }
        Ok(())
    })
}

/// Bytes proven for a FUSE read, collected in a buffer of exactly their size.
struct Collect {
    buf: Vec<u8>,
    filled: usize,
}

impl Out for Collect {
    fn room(&mut self) -> io::Result<&mut [u8]> {
        match &mut self.buf[self.filled..] {
            [] => Err(io::Error::other(
                "a proof handed on more than it was asked for",
            )),
            room => Ok(room),
        }
    }

    fn filled(&mut self, n: usize) -> io::Result<()> {
        self.filled += n;
        Ok(())
    }
}

/// How many backing descriptors a [`Reader`] keeps open.
const KEPT: usize = 64;

/// Verifying reads for one project; shared by every snapshot of it.
pub struct Reader {
    root: Arc<Root>,
    trees: Trees,
    kept: Mutex<Kept>,
}

/// Open backing files by node, with their stamps when kept; first in first out.
#[derive(Default)]
struct Kept {
    slots: Vec<(NodeId, Arc<fs::File>, Stamp)>,
    next: usize,
}

impl Kept {
    fn get(&self, id: NodeId) -> Option<(Arc<fs::File>, Stamp)> {
        self.slots
            .iter()
            .find(|s| s.0 == id)
            .map(|s| (s.1.clone(), s.2))
    }

    /// Keeps `file` for `id`; returns what it displaced (closed by the caller, unlocked).
    fn put(&mut self, id: NodeId, file: Arc<fs::File>, stamp: Stamp) -> Option<Arc<fs::File>> {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.0 == id) {
            slot.2 = stamp;
            return Some(std::mem::replace(&mut slot.1, file));
        }
        if self.slots.len() < KEPT {
            self.slots.push((id, file, stamp));
            return None;
        }
        let victim = std::mem::replace(&mut self.slots[self.next], (id, file, stamp));
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
            trees: Trees::default(),
            kept: Mutex::default(),
        }
    }

    /// Reads up to `size` bytes at `offset` of `file`, found at `rel` below the project root,
    /// proven to be its bytes.
    pub fn read(
        &self,
        rel: &[u8],
        file: &File,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, ReadError> {
        let rel = Path::new(OsStr::from_bytes(rel));
        let failed = |e: Unproven| {
            let path = self.root.path().join(rel);
            match e {
                Unproven::Stale => ReadError::Stale(path),
                Unproven::Torn => ReadError::Torn(path),
                Unproven::Io(e) => ReadError::Io(path, e),
            }
        };
        let range = offset..offset.saturating_add(size as u64);
        let kept = self.kept.lock().unwrap().get(file.id);
        if let Some((backing, kept_stamp)) = kept {
            let stamp = stamp_of_file(&backing).map_err(|e| failed(Unproven::Io(e)))?;
            if stamp == kept_stamp {
                let result = self.serve(&backing, stamp, file, range.clone());
                if result.as_ref().map_or(true, |b| at_end(file, offset, b)) {
                    drop(self.kept.lock().unwrap().drop_id(file.id));
                }
                return result.map_err(failed);
            }
            // Changed, replaced or removed since it was kept: start over from the path.
            drop(self.kept.lock().unwrap().drop_id(file.id));
        }
        let (backing, stamp) =
            open_backing(self.root.fd(), rel.as_os_str().as_bytes()).map_err(failed)?;
        let buf = self.serve(&backing, stamp, file, range).map_err(failed)?;
        if !at_end(file, offset, &buf) {
            let displaced = self
                .kept
                .lock()
                .unwrap()
                .put(file.id, Arc::new(backing), stamp);
            drop(displaced);
        }
        Ok(buf)
    }

    fn serve(
        &self,
        backing: &fs::File,
        stamp: Stamp,
        file: &File,
        range: Range<u64>,
    ) -> Result<Vec<u8>, Unproven> {
        let want = range.end.min(file.size()).saturating_sub(range.start) as usize;
        let mut out = Collect {
            buf: vec![0; want],
            filled: 0,
        };
        prove(backing, stamp, file, range, Some(&self.trees), &mut out)?;
        debug_assert_eq!(out.filled, want);
        Ok(out.buf)
    }

    /// Bytes held by chunk trees of large files (and how many), beside the snapshots.
    pub fn tree_usage(&self) -> (usize, usize) {
        self.trees.usage()
    }

    /// Closes the kept descriptors of files removed (or replaced) since they were kept, so
    /// their space is freed without waiting for other reads to displace them.
    pub fn let_go_of_removed(&self) {
        use std::os::unix::fs::MetadataExt;
        let removed: Vec<_> = {
            let mut kept = self.kept.lock().unwrap();
            let (removed, still): (Vec<_>, Vec<_>) = std::mem::take(&mut kept.slots)
                .into_iter()
                .partition(|(_, f, _)| f.metadata().map_or(true, |m| m.nlink() == 0));
            *kept = Kept {
                slots: still,
                next: 0,
            };
            removed
        };
        drop(removed); // closed outside the lock
    }
}

/// Whether `buf`, read at `offset`, reaches the end of `file`.
fn at_end(file: &File, offset: u64, buf: &[u8]) -> bool {
    offset + buf.len() as u64 >= file.size()
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

    /// A node for `f` whose stamp is the file's stamp now but whose content is `content`'s:
    /// what a write that moves no stamp (through a shared mapping) leaves behind.
    fn vouched(dir: &Path, content: &[u8]) -> File {
        let stamp = Stamp::of(&fs::metadata(dir.join("f")).unwrap());
        File::new(*blake3::hash(content).as_bytes(), false, stamp, false)
    }

    #[test]
    fn chunk_trees_merge_to_the_blake3_hash_of_the_bytes() {
        let g = GROUP as usize;
        for size in [
            g + 1,
            2 * g - 1,
            2 * g,
            2 * g + 1,
            3 * g + 1023,
            5 * g + 17,
            8 * g,
            17 * g + 1,
            SIZE + 3,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
            let cvs: Vec<_> = data
                .chunks(g)
                .enumerate()
                .map(|(i, c)| ChunkTree::group(i as u64, c))
                .collect();
            assert_eq!(
                ChunkTree::root(&cvs, size as u64),
                *blake3::hash(&data).as_bytes(),
                "{size} bytes"
            );
        }
    }

    #[test]
    fn a_stamp_that_vouches_for_other_bytes_proves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let reader = Reader::new(&Scanner::new(dir.path(), Filter::All).scan().unwrap());
        // A small file: B C A A… on disk, B A A A… in the snapshot, under the same stamp.
        let mut snapshot = vec![b'A'; 8192];
        snapshot[0] = b'B';
        let mut now = snapshot.clone();
        now[1] = b'C';
        fs::write(dir.path().join("f"), &now).unwrap();
        let node = vouched(dir.path(), &snapshot);
        assert!(matches!(
            reader.read(b"f", &node, 0, PIECE),
            Err(ReadError::Stale(_))
        ));
        // A large one, changed in one group only: every range that reaches it is refused, the
        // others are served (they are the snapshot's bytes, proven by its chunk tree).
        let snapshot = bytes(0);
        let mut now = snapshot.clone();
        now[900_001] ^= 0xFF;
        fs::write(dir.path().join("f"), &now).unwrap();
        let node = vouched(dir.path(), &snapshot);
        assert!(
            matches!(reader.read(b"f", &node, 0, PIECE), Err(ReadError::Stale(_))),
            "the first read proves the whole file before its tree is trusted"
        );
        fs::write(dir.path().join("f"), &snapshot).unwrap();
        let node = vouched(dir.path(), &snapshot);
        assert_eq!(
            reader.read(b"f", &node, 0, PIECE).unwrap(),
            &snapshot[..PIECE as usize]
        );
        fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("f"))
            .unwrap()
            .write_at(&now[900_001..900_002], 900_001)
            .unwrap();
        let node = vouched(dir.path(), &snapshot); // the stamp moved; pretend it did not
        let g = GROUP as usize;
        for (offset, size) in [(900_000, 10), (13 * g as u64, 1), (12 * g as u64, PIECE)] {
            assert!(
                matches!(
                    reader.read(b"f", &node, offset, size),
                    Err(ReadError::Stale(_))
                ),
                "{offset}+{size}"
            );
        }
        for (offset, size) in [
            (0, PIECE),
            (14 * g as u64, GROUP as u32),
            (11 * g as u64, 9),
        ] {
            let got = reader.read(b"f", &node, offset, size).unwrap();
            let want = &snapshot[offset as usize..][..got.len()];
            assert!(got == want, "{offset}+{size}");
        }
    }

    #[test]
    fn any_range_of_a_large_file_reads_back_exactly_and_its_tree_is_built_once() {
        let (_dir, snap, node) = project();
        let reader = Reader::new(&snap);
        let want = bytes(0);
        let mut seed = 12345u64;
        let mut next = |below: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % below
        };
        for _ in 0..200 {
            let offset = next(SIZE as u64 + 10);
            let size = next(300_000) as u32 + 1;
            let Node::File(f) = &node else { unreachable!() };
            let got = reader.read(b"f", f, offset, size).unwrap();
            let end = (offset + size as u64).min(SIZE as u64);
            assert!(
                got == want[offset.min(SIZE as u64) as usize..end as usize],
                "{offset}+{size}"
            );
        }
        assert_eq!(
            reader.tree_usage(),
            (16 * 32, 1),
            "one tree, 32 bytes per group"
        );
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
