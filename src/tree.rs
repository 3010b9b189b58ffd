//! The Merkle tree a snapshot is made of.
//!
//! Nodes are immutable and reference-counted. A new snapshot after an edit rebuilds only the
//! nodes on the path from the root to what changed and shares every other node with the snapshot
//! before it, so each node also carries a [`NodeId`]: one identity for one (place, content) for
//! the life of the process. Consumers that cache by identity (the FUSE view uses it as the inode
//! number, so the kernel's caches carry over between snapshots) may rely on two rules:
//! an id never stands for other content, and two nodes built separately never share an id, even
//! when their content is equal.
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
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl NodeId {
    fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NodeId(NEXT.fetch_add(1, Ordering::Relaxed))
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

#[derive(Debug)]
pub struct File {
    pub id: NodeId,
    /// BLAKE3 of the bytes alone, so a read can re-verify content without the tree.
    pub content: Hash,
    pub executable: bool,
    pub stamp: Stamp,
    /// The stamp may not be trusted to prove the bytes unchanged: the file was modified within
    /// the timestamp granularity of being hashed (git's "racily clean" entries).
    pub racy: bool,
}

impl File {
    pub fn new(content: Hash, executable: bool, stamp: Stamp, racy: bool) -> Self {
        File {
            id: NodeId::fresh(),
            content,
            executable,
            stamp,
            racy,
        }
    }

    pub fn size(&self) -> u64 {
        self.stamp.size
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

#[derive(Debug)]
pub struct Entry {
    pub name: Box<[u8]>,
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
        let mut h = blake3::Hasher::new();
        h.update(b"srcstore-dir\0");
        for e in &entries {
            h.update(&(e.name.len() as u64).to_le_bytes());
            h.update(&e.name);
            h.update(&e.node.hash());
        }
        Dir {
            id: NodeId::fresh(),
            hash: *h.finalize().as_bytes(),
            entries: entries.into_boxed_slice(),
        }
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
                h.update(&[f.executable as u8]);
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
    fn find_walks_relative_paths() {
        let t = dir(vec![("d", dir(vec![("f", file(b"1", false))]))]);
        assert!(matches!(t.find(b"d/f"), Some(Node::File(_))));
        assert!(t.find(b"d/g").is_none());
        assert!(t.find(b"d/f/x").is_none());
        assert_eq!(t.find(b"").unwrap().id(), t.id());
    }
}
