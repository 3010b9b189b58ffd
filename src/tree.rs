//! The Merkle tree a snapshot is made of.
//!
//! Nodes are immutable and reference-counted. A new snapshot after an edit rebuilds only the
//! nodes on the path from the root to what changed and shares every other node with the snapshot
//! before it, so each node also carries a [`NodeId`]: one identity for one (place, content) for
//! the life of the process. Consumers that cache by identity (the FUSE view uses it as the inode
//! number, so the kernel's caches carry over between snapshots) may rely on two rules:
//! an id never stands for other content, and two nodes built separately never share an id, even
//! when their content is equal. A daemon also begins an epoch of its own
//! ([`NodeId::begin_epoch`]), so that the rules hold across its restarts too: a cache that
//! outlives the daemon and trusts (inode, mtime, size) never meets an old number again.
//!
//! Hashes (see `docs/snapshot-format.md`):
//! - file:    `BLAKE3("srcstore-file\0" || exec-flag || BLAKE3(bytes))`
//! - symlink: `BLAKE3("srcstore-symlink\0" || target)`
//! - dir:     `BLAKE3("srcstore-dir\0" || for each child in raw-byte order: len(name) as u64le || name || child hash)`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A 256-bit BLAKE3 digest.
pub type Hash = [u8; 32];

/// Process-wide identity of a node; see the module docs for what it promises.
///
/// From the high bits down: the epoch of the run that made it ([`NodeId::begin_epoch`]), a
/// counter, and two bits a file keeps its flags in ([`File::executable`], [`File::racy`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

/// Ids are handed out in steps of this; a file's id carries its flags in the bits below.
const ID_STEP: u64 = 4;

/// The bits below a run's epoch: room for 2^38 nodes a run (a million new nodes a second for
/// three days) before its ids could reach the next epoch's.
const EPOCH_SHIFT: u32 = 40;

/// The last epoch: its ids end below 2^62, where the FUSE view's directory numbers begin (a
/// file's is its id + 1).
pub const MAX_EPOCH: u64 = (1 << (62 - EPOCH_SHIFT)) - 1;

/// The next id to hand out; a process that begins no epoch (`srcstore hash`) is in epoch 0.
static NEXT: AtomicU64 = AtomicU64::new(ID_STEP);

impl NodeId {
    /// Hands out every id from now on in `epoch` (at most [`MAX_EPOCH`]): a daemon calls it
    /// before it makes its first node, with an epoch no earlier run used. Ids never go back: an
    /// epoch below the one ids are in already changes nothing.
    pub fn begin_epoch(epoch: u64) {
        assert!(epoch <= MAX_EPOCH, "epoch {epoch} is past {MAX_EPOCH}");
        NEXT.fetch_max(epoch << EPOCH_SHIFT, Ordering::Relaxed);
    }

    fn fresh() -> Self {
        Self::fresh_with(0)
    }

    fn fresh_with(low_bits: u64) -> Self {
        debug_assert!(low_bits < ID_STEP);
        NodeId(NEXT.fetch_add(ID_STEP, Ordering::Relaxed) | low_bits)
    }
}

/// What a file looked like on disk when it was hashed: if all of it still matches, the bytes are
/// taken to be the ones hashed (the same trust `git status` places in its index).
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            ino: meta.ino(),
        }
    }
}

/// A regular file. Its two flags, [`File::executable`] and [`File::racy`], are kept in the low
/// bits of its id, which keeps a `File` at 72 bytes (an `Arc<File>` in 96 bytes of heap, not
/// 112). Every snapshot holds one per file, so this is most of its memory.
pub struct File {
    /// Its identity; the two low bits are its flags (an id is still never reused).
    pub id: NodeId,
    /// BLAKE3 of the bytes alone, so a read can re-verify content without the tree.
    pub content: Hash,
    pub stamp: Stamp,
}

const _: () = assert!(std::mem::size_of::<File>() == 72);

const EXECUTABLE: u64 = 1;
const RACY: u64 = 2;

impl File {
    pub fn new(content: Hash, executable: bool, stamp: Stamp, racy: bool) -> Self {
        let flags = if executable { EXECUTABLE } else { 0 } | if racy { RACY } else { 0 };
        File {
            id: NodeId::fresh_with(flags),
            content,
            stamp,
        }
    }

    pub fn size(&self) -> u64 {
        self.stamp.size
    }

    /// The owner-executable bit.
    pub fn executable(&self) -> bool {
        self.id.0 & EXECUTABLE != 0
    }

    /// The stamp may not be trusted to tell the bytes unchanged: the file was modified within
    /// the timestamp granularity of being hashed (git's "racily clean" entries).
    pub fn racy(&self) -> bool {
        self.id.0 & RACY != 0
    }
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File")
            .field("id", &self.id)
            .field("content", &self.content)
            .field("executable", &self.executable())
            .field("stamp", &self.stamp)
            .field("racy", &self.racy())
            .finish()
    }
}

#[derive(Debug)]
pub struct Symlink {
    pub id: NodeId,
    pub target: Box<[u8]>,
}

impl Symlink {
    pub fn new(target: Box<[u8]>) -> Self {
        Symlink {
            id: NodeId::fresh(),
            target,
        }
    }
}

/// A directory entry's name: its raw bytes, kept inline when they fit (most names do), else in
/// an allocation of their own. At 24 bytes it is the size of a `Vec<u8>` and saves the
/// allocation a `Box<[u8]>` would need for every entry of every snapshot.
#[derive(Clone)]
pub struct Name(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Boxed(Box<[u8]>),
}

/// The longest name kept inline: what fits beside the length and the variant's tag.
const INLINE: usize = 22;

const _: () = assert!(std::mem::size_of::<Name>() == 24);

impl Name {
    pub fn new(bytes: &[u8]) -> Self {
        Self::try_inline(bytes).unwrap_or_else(|| Name(Repr::Boxed(bytes.into())))
    }

    fn try_inline(bytes: &[u8]) -> Option<Self> {
        let mut inline = [0; INLINE];
        inline.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(Name(Repr::Inline {
            len: bytes.len() as u8,
            bytes: inline,
        }))
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..*len as usize],
            Repr::Boxed(b) => b,
        }
    }
}

impl Default for Name {
    fn default() -> Self {
        Name::new(b"")
    }
}

impl std::ops::Deref for Name {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Name {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::borrow::Borrow<[u8]> for Name {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl From<&[u8]> for Name {
    fn from(bytes: &[u8]) -> Self {
        Name::new(bytes)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name::new(s.as_bytes())
    }
}

impl From<Box<[u8]>> for Name {
    fn from(bytes: Box<[u8]>) -> Self {
        Self::try_inline(&bytes).unwrap_or(Name(Repr::Boxed(bytes)))
    }
}

impl From<Vec<u8>> for Name {
    fn from(bytes: Vec<u8>) -> Self {
        Self::try_inline(&bytes).unwrap_or_else(|| Name(Repr::Boxed(bytes.into_boxed_slice())))
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_bytes().fmt(f)
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Name {}

impl PartialEq<[u8]> for Name {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_bytes() == other
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

#[derive(Debug)]
pub struct Entry {
    pub name: Name,
    pub node: Node,
}

#[derive(Debug)]
pub struct Dir {
    pub id: NodeId,
    pub hash: Hash,
    /// Sorted by the raw bytes of the name, as in a NAR.
    pub entries: Box<[Entry]>,
}

impl Dir {
    /// Builds a directory; `entries` may come in any order.
    pub fn new(mut entries: Vec<Entry>) -> Self {
        entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Self::from_sorted(entries.into_boxed_slice())
    }

    /// Builds a directory from entries already in order (strictly ascending names).
    pub(crate) fn from_sorted(entries: Box<[Entry]>) -> Self {
        debug_assert!(entries.windows(2).all(|w| w[0].name < w[1].name));
        let mut h = blake3::Hasher::new();
        h.update(b"srcstore-dir\0");
        for e in entries.iter() {
            h.update(&(e.name.len() as u64).to_le_bytes());
            h.update(&e.name);
            h.update(&e.node.hash());
        }
        Self::with_hash(*h.finalize().as_bytes(), entries)
    }

    /// A directory whose hash is already known (and was checked when it was first computed):
    /// the index stores it. `entries` must be in order.
    pub(crate) fn with_hash(hash: Hash, entries: Box<[Entry]>) -> Self {
        Dir {
            id: NodeId::fresh(),
            hash,
            entries,
        }
    }

    /// Whether `entries` (in order) are exactly this directory's: the same names for the same
    /// nodes, so its hash holds for them too.
    pub(crate) fn same_entries(&self, entries: &[Entry]) -> bool {
        self.entries.len() == entries.len()
            && self
                .entries
                .iter()
                .zip(entries)
                .all(|(a, b)| a.node.id() == b.node.id() && a.name == b.name)
    }

    pub fn get(&self, name: &[u8]) -> Option<&Node> {
        self.entries
            .binary_search_by(|e| (*e.name).cmp(name))
            .ok()
            .map(|i| &self.entries[i].node)
    }
}

#[derive(Clone, Debug)]
pub enum Node {
    Dir(Arc<Dir>),
    File(Arc<File>),
    Symlink(Arc<Symlink>),
}

impl Node {
    pub fn id(&self) -> NodeId {
        match self {
            Node::Dir(d) => d.id,
            Node::File(f) => f.id,
            Node::Symlink(s) => s.id,
        }
    }

    /// The Merkle hash; computed on demand for leaves (cheap), stored for directories.
    pub fn hash(&self) -> Hash {
        match self {
            Node::Dir(d) => d.hash,
            Node::File(f) => {
                let mut h = blake3::Hasher::new();
                h.update(b"srcstore-file\0");
                h.update(&[f.executable() as u8]);
                h.update(&f.content);
                *h.finalize().as_bytes()
            }
            Node::Symlink(s) => {
                let mut h = blake3::Hasher::new();
                h.update(b"srcstore-symlink\0");
                h.update(&s.target);
                *h.finalize().as_bytes()
            }
        }
    }

    /// Looks up a `/`-separated relative path (empty means this node).
    pub fn find(&self, rel: &[u8]) -> Option<&Node> {
        let mut node = self;
        for part in rel.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            match node {
                Node::Dir(d) => node = d.get(part)?,
                _ => return None,
            }
        }
        Some(node)
    }

    /// How many regular files are below (or are) this node, and their bytes.
    pub fn files(&self) -> (u64, u64) {
        let (mut files, mut bytes) = (0, 0);
        self.visit(&mut |_, node| {
            if let Node::File(f) = node {
                files += 1;
                bytes += f.size();
            }
        });
        (files, bytes)
    }

    /// Calls `f` for every node below and including this one, depth first, parents before
    /// children, with the path relative to this node.
    pub fn visit(&self, f: &mut impl FnMut(&[u8], &Node)) {
        fn go(path: &mut Vec<u8>, node: &Node, f: &mut impl FnMut(&[u8], &Node)) {
            f(path, node);
            if let Node::Dir(d) = node {
                for e in d.entries.iter() {
                    let len = path.len();
                    if len > 0 {
                        path.push(b'/');
                    }
                    path.extend_from_slice(&e.name);
                    go(path, &e.node, f);
                    path.truncate(len);
                }
            }
        }
        go(&mut Vec::new(), self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(bytes: &[u8], exec: bool) -> Node {
        let stamp = Stamp {
            size: bytes.len() as u64,
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 0,
        };
        Node::File(Arc::new(File::new(
            *blake3::hash(bytes).as_bytes(),
            exec,
            stamp,
            false,
        )))
    }

    fn dir(entries: Vec<(&str, Node)>) -> Node {
        Node::Dir(Arc::new(Dir::new(
            entries
                .into_iter()
                .map(|(n, node)| Entry {
                    name: n.as_bytes().into(),
                    node,
                })
                .collect(),
        )))
    }

    #[test]
    fn hash_depends_on_content_names_and_exec_bit_only() {
        let a = dir(vec![("x", file(b"1", false)), ("y", file(b"2", true))]);
        let same = dir(vec![("y", file(b"2", true)), ("x", file(b"1", false))]);
        assert_eq!(a.hash(), same.hash());
        assert_ne!(
            a.id(),
            same.id(),
            "separately built nodes never share an id"
        );
        for other in [
            dir(vec![("x", file(b"1", false)), ("y", file(b"2", false))]),
            dir(vec![("x", file(b"1", false)), ("z", file(b"2", true))]),
            dir(vec![("x", file(b"1", false)), ("y", file(b"3", true))]),
            dir(vec![("x", file(b"1", false))]),
        ] {
            assert_ne!(a.hash(), other.hash());
        }
    }

    #[test]
    fn a_file_and_a_symlink_with_the_same_bytes_differ() {
        let s = Node::Symlink(Arc::new(Symlink::new(b"abc".to_vec().into())));
        assert_ne!(file(b"abc", false).hash(), s.hash());
    }

    #[test]
    fn names_cannot_be_shifted_between_entries() {
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        let a = dir(vec![("ab", file(b"", false))]);
        let b = dir(vec![("a", file(b"", false))]);
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn names_read_back_as_their_bytes_inline_or_not() {
        let long = [b'x'; 300];
        let cases: [&[u8]; 10] = [
            b"a",
            b"module_000123.js",
            b"module_0001234.js",
            b"\xff\xfe",
            b"with\0nul",
            b"",
            &long,
            b"0123456789abcdef012345",
            b"0123456789abcdef0123456",
            b"\x01",
        ];
        for bytes in cases {
            for n in [
                Name::new(bytes),
                Name::from(bytes.to_vec()),
                Name::from(Box::<[u8]>::from(bytes)),
            ] {
                assert_eq!(&*n, bytes);
                assert_eq!(&*n.clone(), bytes);
                assert_eq!(n, Name::new(bytes));
            }
        }
        assert!(Name::new(b"a") < Name::new(b"ab"));
        assert!(Name::new(b"module_000123.js") < Name::new(b"module_000123.jsx"));
        assert_eq!(Name::default().len(), 0);
    }

    #[test]
    fn a_files_flags_read_back_and_ids_stay_distinct() {
        let stamp = Stamp {
            size: 1,
            mtime_ns: 2,
            ctime_ns: 3,
            ino: 4,
        };
        let mut ids = std::collections::HashSet::new();
        for (exec, racy) in [(false, false), (true, false), (false, true), (true, true)] {
            let f = File::new([7; 32], exec, stamp, racy);
            assert_eq!((f.executable(), f.racy()), (exec, racy));
            assert_eq!((f.content, f.stamp, f.size()), ([7; 32], stamp, 1));
            assert!(ids.insert(f.id));
            assert!(ids.insert(Node::Symlink(Arc::new(Symlink::new(b"t".to_vec().into()))).id()));
        }
    }

    #[test]
    fn ids_made_once_an_epoch_begins_are_in_it_and_never_go_back() {
        NodeId::begin_epoch(3);
        let first = Node::Symlink(Arc::new(Symlink::new(b"t".to_vec().into()))).id();
        assert!(first.0 >> EPOCH_SHIFT >= 3);
        NodeId::begin_epoch(1);
        assert!(
            file(b"x", true).id() > first,
            "an earlier epoch took ids back"
        );
    }

    #[test]
    fn find_walks_relative_paths() {
        let t = dir(vec![("d", dir(vec![("f", file(b"1", false))]))]);
        assert!(matches!(t.find(b"d/f"), Some(Node::File(_))));
        assert!(t.find(b"d/g").is_none());
        assert!(t.find(b"d/f/x").is_none());
        assert_eq!(t.find(b"").unwrap().id(), t.id());
    }
}
