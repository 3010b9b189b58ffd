//! Bringing a snapshot up to date from a list of changed paths, at a cost that follows the
//! change: only the directories that saw events are listed again, only the files named by an
//! event (or whose stamp moved) are hashed again, and every other node is shared.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use crate::scan::{assemble, split, Item, Walk};
use crate::tree::{Dir, Entry, Node};
use crate::{Error, Filter, ScanStats, Scanner, Snapshot};

/// Paths (relative to the project root) that changed since a snapshot.
#[derive(Debug, Default)]
pub struct Changes {
    paths: HashSet<Vec<u8>>,
    everything: bool,
}

impl Changes {
    pub fn add(&mut self, rel: Vec<u8>) {
        if rel.is_empty() {
            self.everything = true;
        }
        self.paths.insert(rel);
    }

    /// The watcher lost events (queue overflow): only a full stat-check can be trusted.
    pub fn everything(&mut self) {
        self.everything = true;
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && !self.everything
    }
}

const IGNORE_FILES: [&[u8]; 2] = [b".gitignore", b".srcstoreignore"];

/// The directory whose ignore rules a change at `rel` may change, and so everything below it
/// kept or not: an ignore file's directory, or the directory holding a repository's `.git`
/// (made, removed, or its `info/exclude` edited).
fn rules_owner(rel: &[u8]) -> Option<&[u8]> {
    let (parent, base) = split(rel);
    if IGNORE_FILES.contains(&base) {
        return Some(parent);
    }
    let mut at = 0usize;
    for component in rel.split(|&b| b == b'/') {
        if component == b".git" {
            return Some(&rel[..at.saturating_sub(1)]);
        }
        at += component.len() + 1;
    }
    None
}

impl Scanner {
    /// The snapshot after `changes`, built from `current`; the scanner's own `previous` is
    /// ignored (the current tree plays its part).
    pub fn update(
        self,
        current: &Snapshot,
        changes: &Changes,
    ) -> Result<(Snapshot, ScanStats), Error> {
        if changes.everything {
            return self
                .name(Some(current.name().to_owned()))
                .previous(Some(current.tree().clone()))
                .scan_with_stats();
        }
        // Every named path is re-examined from scratch; its parent directory is listed again.
        // A changed ignore file changes what its whole directory keeps.
        let mut fresh: HashSet<Vec<u8>> = changes.paths.clone();
        let mut targets: BTreeSet<(std::cmp::Reverse<usize>, Vec<u8>)> = BTreeSet::new();
        for path in &changes.paths {
            let mut parent = split(path).0;
            let owner = match self.filter {
                Filter::Ignore => rules_owner(path),
                Filter::All => None,
            };
            if let Some(owner) = owner {
                fresh.insert(owner.to_vec());
                if owner.is_empty() {
                    return self.update(
                        current,
                        &Changes {
                            everything: true,
                            ..Default::default()
                        },
                    );
                }
                parent = split(owner).0;
            }
            // Climb to a directory the current tree has; everything below it on the way is new.
            let mut dir = parent;
            while !matches!(current.tree().find(dir), Some(Node::Dir(_))) {
                fresh.insert(dir.to_vec());
                dir = split(dir).0;
            }
            targets.insert((std::cmp::Reverse(depth(dir)), dir.to_vec()));
        }

        let root = current.root();
        let mut tree = current.tree().clone();
        let mut stats = ScanStats::default();
        // Deepest first, so a shallower listing reuses the deeper results.
        for (_, dir) in targets {
            // Gone, or no longer a directory reached without a symlink (`docs` moved away and
            // replaced by a link to where it went): its parent saw that change and is a target
            // too. Walking through the link would fail every update from now on.
            let here: &[u8] = if dir.is_empty() { b"." } else { &dir };
            if crate::worktree::read::open_dir_at(root.fd(), here).is_err() {
                continue;
            }
            let walk = Walk::new(&self, root, Some(&tree), &fresh);
            let mut items = walk.run(&dir, Some(1))?;
            for (rel, item) in items.iter_mut() {
                if !matches!(item, Item::Dir) {
                    continue;
                }
                *item = match tree.find(rel) {
                    Some(Node::Dir(d)) if !fresh.contains(rel) => Item::Node(Node::Dir(d.clone())),
                    _ => {
                        let sub = walk.run(rel, None)?;
                        let (node, s) = assemble(sub, rel, Some(&tree));
                        stats.hashed += s.hashed;
                        Item::Node(node)
                    }
                };
            }
            let (node, s) = assemble(items, &dir, Some(&tree));
            stats.hashed += s.hashed;
            tree = replace(&tree, &dir, node);
        }
        Ok((current.with_tree(tree), stats))
    }
}

fn depth(rel: &[u8]) -> usize {
    if rel.is_empty() {
        0
    } else {
        rel.iter().filter(|&&b| b == b'/').count() + 1
    }
}

/// `tree` with the node at `rel` replaced, copying only the directories on the way.
fn replace(tree: &Node, rel: &[u8], new: Node) -> Node {
    if rel.is_empty() {
        return new;
    }
    let Node::Dir(dir) = tree else {
        unreachable!("update targets are directories of the current tree")
    };
    let (first, rest) = match rel.iter().position(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (rel, &[][..]),
    };
    let entries = dir
        .entries
        .iter()
        .map(|e| Entry {
            name: e.name.clone(),
            node: if *e.name == *first {
                replace(&e.node, rest, new.clone())
            } else {
                e.node.clone()
            },
        })
        .collect::<Vec<_>>();
    let rebuilt = Dir::new(entries);
    if dir.same_entries(&rebuilt.entries) {
        return tree.clone();
    }
    Node::Dir(Arc::new(rebuilt))
}
