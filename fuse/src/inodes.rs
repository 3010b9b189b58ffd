//! The inode table: which nodes the kernel holds, under which numbers.
//!
//! Inode 1 is the mount's root (the list of served trees). A file's or symlink's number is its
//! node id plus one, the same in every tree that holds the node: a new tree that keeps a file
//! (same place, same content) finds the kernel's attribute and page caches for it already
//! filled, with no daemon work.
//!
//! A directory's number stands for one place: one directory node under one parent inode. Linux
//! gives a directory inode a single dentry, so a directory shared by two trees under one number
//! would be moved to whichever tree looked it up last, and `..` from it, or a process working
//! in it, would lead into the other tree. Directory numbers come from a counter above every
//! file's and are never handed out twice.
//!
//! An entry lives from the first lookup that hands it to the kernel until the kernel forgets it
//! as often as it was looked up; it remembers where the node was found, which the source needs
//! to read it. A directory keeps its path; anything else keeps the directory it was found in
//! (shared, not copied) and has its name looked up there again when a read needs the path: a
//! path per file would hold every name of the tree a second time, and most of the table's
//! memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The first directory number; file numbers (node ids plus one) stay below it.
const FIRST_DIR: u64 = 1 << 62;

/// What readdir reports for a directory the kernel holds no number for (as libfuse does).
pub const UNKNOWN: u64 = 0xffff_ffff;

pub struct Inodes<N> {
    table: Mutex<Table<N>>,
    /// How many entries the table has, readable without the table's type or lock.
    held: Arc<AtomicUsize>,
}

struct Table<N> {
    inodes: HashMap<u64, Inode<N>>,
    /// Directory numbers by place: (parent inode, node id).
    dirs: HashMap<(u64, u64), u64>,
    next_dir: u64,
}

struct Inode<N> {
    node: N,
    lookups: u64,
    held: Held<N>,
}

enum Held<N> {
    /// A directory: its key in `dirs`, and where it is, shared with the entries found in it.
    Dir {
        place: (u64, u64),
        at: Arc<Found<N>>,
    },
    /// Found in this directory, under a name the directory still holds.
    In(Arc<Found<N>>),
    /// A tree at the root that is no directory: its own path.
    Top(Arc<[u8]>),
}

/// A directory the kernel holds, and its path below the source's trees.
pub struct Found<N> {
    pub node: N,
    pub path: Arc<[u8]>,
}

/// Where a node was found: its path, or the directory it is an entry of.
pub enum At<N> {
    Path(Arc<[u8]>),
    In(Arc<Found<N>>),
}

/// Where a node is handed to the kernel: under which parent, and whether it is a directory.
#[derive(Copy, Clone)]
pub struct Place {
    pub parent: u64,
    pub id: u64,
    pub is_dir: bool,
}

impl<N: Clone> Inodes<N> {
    pub fn new() -> Self {
        Inodes {
            table: Mutex::new(Table {
                inodes: HashMap::new(),
                dirs: HashMap::new(),
                next_dir: FIRST_DIR,
            }),
            held: Arc::default(),
        }
    }

    /// How many inodes the kernel holds, kept current.
    pub fn held(&self) -> Arc<AtomicUsize> {
        self.held.clone()
    }

    /// Records one more kernel reference to `node`, found at `found`: a directory by its path,
    /// anything else by its path at the root or the directory it is an entry of. Returns its
    /// number.
    pub fn enter(&self, at: Place, node: &N, found: impl FnOnce() -> At<N>) -> u64 {
        debug_assert!(
            at.id < FIRST_DIR - 1,
            "node ids stay below the directory numbers"
        );
        let mut table = self.table.lock().unwrap();
        let table = &mut *table;
        let ino = if at.is_dir {
            *table.dirs.entry((at.parent, at.id)).or_insert_with(|| {
                table.next_dir += 1;
                table.next_dir - 1
            })
        } else {
            at.id + 1
        };
        table
            .inodes
            .entry(ino)
            .or_insert_with(|| {
                let held = match found() {
                    At::Path(path) if at.is_dir => Held::Dir {
                        place: (at.parent, at.id),
                        at: Arc::new(Found {
                            node: node.clone(),
                            path,
                        }),
                    },
                    At::Path(path) => Held::Top(path),
                    At::In(dir) => Held::In(dir),
                };
                Inode {
                    node: node.clone(),
                    lookups: 0,
                    held,
                }
            })
            .lookups += 1;
        self.held.store(table.inodes.len(), Ordering::Relaxed);
        ino
    }

    /// The number `node` has at `at` if the kernel holds one, without taking a reference.
    pub fn peek(&self, at: Place) -> u64 {
        if !at.is_dir {
            return at.id + 1;
        }
        let table = self.table.lock().unwrap();
        table
            .dirs
            .get(&(at.parent, at.id))
            .copied()
            .unwrap_or(UNKNOWN)
    }

    /// The node under `ino`, and where it was found.
    pub fn get(&self, ino: u64) -> Option<(N, At<N>)> {
        let table = self.table.lock().unwrap();
        let i = table.inodes.get(&ino)?;
        let at = match &i.held {
            Held::Dir { at, .. } => At::Path(at.path.clone()),
            Held::In(dir) => At::In(dir.clone()),
            Held::Top(path) => At::Path(path.clone()),
        };
        Some((i.node.clone(), at))
    }

    /// The directory under `ino`, to enter its entries with.
    pub fn dir(&self, ino: u64) -> Option<Arc<Found<N>>> {
        match &self.table.lock().unwrap().inodes.get(&ino)?.held {
            Held::Dir { at, .. } => Some(at.clone()),
            _ => None,
        }
    }

    pub fn forget(&self, ino: u64, n: u64) {
        let mut table = self.table.lock().unwrap();
        let Some(i) = table.inodes.get_mut(&ino) else {
            return;
        };
        i.lookups = i.lookups.saturating_sub(n);
        if i.lookups == 0 {
            if let Some(Held::Dir { place, .. }) = table.inodes.remove(&ino).map(|i| i.held) {
                table.dirs.remove(&place);
            }
            self.held.store(table.inodes.len(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> At<u8> {
        At::Path(Arc::from(&b"p"[..]))
    }

    #[test]
    fn a_file_has_one_number_everywhere_a_directory_one_per_place() {
        let inodes = Inodes::<u8>::new();
        let file = |parent| Place {
            parent,
            id: 7,
            is_dir: false,
        };
        let dir = |parent| Place {
            parent,
            id: 9,
            is_dir: true,
        };
        assert_eq!(inodes.enter(file(2), &0, path), 8);
        assert_eq!(inodes.enter(file(3), &0, path), 8);
        let under_2 = inodes.enter(dir(2), &0, path);
        let under_3 = inodes.enter(dir(3), &0, path);
        assert_ne!(under_2, under_3);
        assert!(under_2 >= FIRST_DIR && under_3 >= FIRST_DIR);
        assert_eq!(
            inodes.enter(dir(2), &0, path),
            under_2,
            "the same place, the same number"
        );
        assert_eq!(inodes.peek(dir(2)), under_2);
        // Forgotten as often as looked up: gone, and the place gets a new number next time.
        inodes.forget(under_2, 2);
        assert!(inodes.get(under_2).is_none());
        assert_eq!(inodes.peek(dir(2)), UNKNOWN);
        let again = inodes.enter(dir(2), &0, path);
        assert!(
            again != under_2 && again != under_3,
            "a number is never handed out twice"
        );
    }
}
