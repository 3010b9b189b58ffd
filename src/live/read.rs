//! The proven reads the FUSE view makes of served files, and what a failed one sets off.

use std::sync::atomic::Ordering;

use super::{Event, Live};
use crate::worktree::verify::ReadError;

impl Live {
    /// Memory the proof of large files' bytes holds beside the snapshots: the bytes of the
    /// chunk trees it keeps, and how many.
    pub fn chunk_trees(&self) -> (usize, usize) {
        self.shared.reader.tree_usage()
    }

    /// Reads bytes of a served file, verified (see [`crate::worktree::verify`]); failures are counted,
    /// logged and announced to subscribers.
    pub fn read(
        &self,
        rel: &[u8],
        file: &crate::tree::File,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, ReadError> {
        let result = self.shared.reader.read(rel, file, offset, size);
        if let Err(e) = &result {
            let (path, torn) = match e {
                // An I/O error is counted and logged like a file that changed: the reader
                // gets EIO either way, and the file is looked at again.
                ReadError::Stale(p) | ReadError::Io(p, _) => (p, false),
                ReadError::Torn(p) => (p, true),
            };
            let counter = if torn {
                &self.shared.counters.torn_reads
            } else {
                &self.shared.counters.stale_reads
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("{e}: the read failed (EIO) rather than mix versions");
            // The file moved without the watcher saying so (or before it did): look again now.
            self.changed(path.clone());
            self.shared.publish(Event::ReadFailed {
                path: path.clone(),
                torn,
            });
        }
        result
    }
}
