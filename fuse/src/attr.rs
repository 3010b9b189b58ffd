//! Attributes as the view presents them: canonical, like a store path's.
//!
//! World-readable modes (inside Nix's sandbox every owner shows as `nobody`), mtime 1 as in the
//! store, one link, nothing of the working tree's owners or times.

use std::time::{Duration, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::Kind;

/// Kernel cache lifetime for anything inside a tree: its content can never change.
pub const FOREVER: Duration = Duration::from_secs(1 << 30);
/// Lifetime of the names at the mount's root, which come and go as trees are served.
pub const ROOT_ENTRY: Duration = Duration::from_secs(1);

pub fn of(ino: INodeNo, kind: Kind, uid: u32, gid: u32) -> FileAttr {
    let (file_type, perm, size) = match kind {
        Kind::Dir => (FileType::Directory, 0o555, 0),
        Kind::File { size, executable } => (
            FileType::RegularFile,
            if executable { 0o555 } else { 0o444 },
            size,
        ),
        Kind::Symlink { len } => (FileType::Symlink, 0o777, len),
    };
    let time = UNIX_EPOCH + Duration::from_secs(1);
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind: file_type,
        perm,
        nlink: 1,
        uid,
        gid,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

pub fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File { .. } => FileType::RegularFile,
        Kind::Symlink { .. } => FileType::Symlink,
    }
}
