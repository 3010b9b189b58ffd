//! The inode table: which nodes the kernel holds, under which numbers.
//!
//! Inode 1 is the mount's root (the list of served trees). Every other inode number is the
//! source's node id plus one, so a node kept between two trees (same place, same content) keeps
//! its number and the kernel's dentry, attribute and page caches carry over to the new tree
//! with no daemon work. An entry lives from the first lookup that hands it to the kernel until
//! the kernel forgets it as often as it was looked up; it remembers the path the node was found
//! at, which the source needs to read it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct Inode<N> {
    pub node: N,
    pub path: Arc<[u8]>,
    lookups: u64,
}

pub struct Inodes<N> {
    table: Mutex<HashMap<u64, Inode<N>>>,
}

impl<N: Clone> Inodes<N> {
    pub fn new() -> Self {
        Inodes {
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Records one more kernel reference to `node`, found at `path`.
    pub fn remember(&self, ino: u64, node: &N, path: impl FnOnce() -> Arc<[u8]>) {
        self.table
            .lock()
            .unwrap()
            .entry(ino)
            .or_insert_with(|| Inode {
                node: node.clone(),
                path: path(),
                lookups: 0,
            })
            .lookups += 1;
    }

    pub fn get(&self, ino: u64) -> Option<(N, Arc<[u8]>)> {
        self.table
            .lock()
            .unwrap()
            .get(&ino)
            .map(|i| (i.node.clone(), i.path.clone()))
    }

    pub fn forget(&self, ino: u64, n: u64) {
        let mut table = self.table.lock().unwrap();
        if let Some(i) = table.get_mut(&ino) {
            i.lookups = i.lookups.saturating_sub(n);
            if i.lookups == 0 {
                table.remove(&ino);
            }
        }
    }
}
