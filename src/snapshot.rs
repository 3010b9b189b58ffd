use std::path::Path;
use std::sync::Arc;

use crate::tree::{Hash, Node};
use crate::worktree::read::Root;

/// An immutable, content-named view of a project directory.
///
/// Cheap to clone: the tree is shared. The bytes of its files stay on disk in the working tree;
/// a snapshot only remembers what they hashed to, so every reader must check that what it reads
/// still is that (see [`crate::nar`] and the FUSE view).
#[derive(Clone, Debug)]
pub struct Snapshot {
    tree: Node,
    name: String,
    root: Arc<Root>,
    /// Where `tree` sits below the project directory (empty for the whole project).
    prefix: Box<[u8]>,
}

impl Snapshot {
    pub(crate) fn new(tree: Node, name: String, root: Arc<Root>) -> Self {
        Snapshot {
            tree,
            name,
            root,
            prefix: Box::default(),
        }
    }

    /// The same project and name with another tree.
    pub(crate) fn with_tree(&self, tree: Node) -> Snapshot {
        Snapshot {
            tree,
            name: self.name.clone(),
            root: self.root.clone(),
            prefix: self.prefix.clone(),
        }
    }

    /// The snapshot of one entry below this one (a `/`-separated relative path), named by its
    /// own hash: what a monorepo's package sees, untouched by edits elsewhere. `name` defaults
    /// to the entry's basename made valid.
    pub fn subtree(
        &self,
        rel: &[u8],
        name: Option<String>,
    ) -> Result<Option<Snapshot>, crate::Error> {
        let Some(tree) = self.tree.find(rel) else {
            return Ok(None);
        };
        let name = match name {
            Some(n) => {
                crate::name::validate(&n)?;
                n
            }
            None => {
                let base = rel.rsplit(|&b| b == b'/').find(|p| !p.is_empty());
                crate::name::from_basename(&String::from_utf8_lossy(base.unwrap_or(b"")))
            }
        };
        let mut prefix = self.prefix.to_vec();
        for part in rel.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(part);
        }
        Ok(Some(Snapshot {
            tree: tree.clone(),
            name,
            root: self.root.clone(),
            prefix: prefix.into(),
        }))
    }

    /// The path of this snapshot's root below the project directory.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The root directory node.
    pub fn tree(&self) -> &Node {
        &self.tree
    }

    /// The Merkle root hash.
    pub fn hash(&self) -> Hash {
        self.tree.hash()
    }

    /// The first 160 bits of the root hash in Nix's base-32: 32 characters, the shape of a store
    /// path hash.
    pub fn short_hash(&self) -> String {
        crate::nixhash::base32(&self.hash()[..20])
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<hash>-<name>`, the directory name the snapshot is served under.
    pub fn basename(&self) -> String {
        format!("{}-{}", self.short_hash(), self.name)
    }

    /// The project directory the snapshot was taken of.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// Entries of the snapshot that other users could not read in the working tree (a file
    /// without `o+r`, a directory without `o+rx`): how many, and the first `show` of them.
    /// Through a view mounted `--allow-other` every local user reads them, as the store would.
    pub fn closed_to_others(&self, show: usize) -> (usize, Vec<String>) {
        let (mut count, mut first) = (0, Vec::new());
        let prefix = self.prefix().to_vec();
        self.tree.visit(&mut |rel, node| {
            let needs = match node {
                Node::Dir(_) if rel.is_empty() => return,
                Node::Dir(_) => 0o005,
                Node::File(_) => 0o004,
                Node::Symlink(_) => return, // a link's own mode means nothing
            };
            let mut path = prefix.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(rel);
            let closed = crate::worktree::read::stat_at(self.root.fd(), &path)
                .is_ok_and(|st| st.st_mode & needs != needs);
            if closed {
                count += 1;
                if first.len() < show {
                    first.push(String::from_utf8_lossy(&path).into_owned());
                }
            }
        });
        (count, first)
    }

    pub(crate) fn root(&self) -> &Root {
        &self.root
    }

    pub(crate) fn root_arc(&self) -> Arc<Root> {
        self.root.clone()
    }
}
