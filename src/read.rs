//! Reading a project's files safely and detecting when they change underneath us.
//!
//! Every open goes through [`Root`], relative to a descriptor of the project directory with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`: a directory swapped for a symlink between a scan
//! and a read can never lead outside the tree.

use std::fs;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::tree::{Hash, Stamp};
use crate::Error;

/// How close to "now" a change time must be for the stamp not to prove the content: coarse
/// kernel timestamps advance once per tick, so a second write in the same tick keeps the stamp.
const RACY_WINDOW_NS: i64 = 50_000_000;

/// The project directory, held open.
#[derive(Debug)]
pub struct Root {
    path: PathBuf,
    fd: OwnedFd,
}

impl Root {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_dir() {
            return Err(Error::NotADirectory { path: path.into() });
        }
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(path, e.into()))?;
        Ok(Root {
            path: path.into(),
            fd,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens a regular file below the root, never through a symlink.
    pub fn open_file(&self, rel: &Path) -> Result<fs::File, Error> {
        let fd = rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| Error::io(self.path.join(rel), e.into()))?;
        Ok(fs::File::from(fd))
    }
}

/// A file's content hash together with the stamp it was taken under.
pub struct Hashed {
    pub content: Hash,
    pub stamp: Stamp,
    pub executable: bool,
    pub racy: bool,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Hashes a file, retrying once if it changes while being read; `expected` is what the walk saw.
pub fn hash_file(root: &Root, rel: &Path, expected: &fs::Metadata) -> Result<Hashed, Error> {
    let first = Stamp::of(expected);
    match hash_once(root, rel, Some(first))? {
        Some(h) => Ok(h),
        None => hash_once(root, rel, None)?.ok_or_else(|| Error::Unstable {
            path: root.path.join(rel),
        }),
    }
}

/// One attempt; `None` when the file was seen to change (stamp before open, at open, after read).
fn hash_once(root: &Root, rel: &Path, expected: Option<Stamp>) -> Result<Option<Hashed>, Error> {
    use std::os::unix::fs::PermissionsExt;
    let err = |e: io::Error| Error::io(root.path.join(rel), e);
    let mut file = root.open_file(rel)?;
    let start = now_ns();
    let meta = file.metadata().map_err(err)?;
    let stamp = Stamp::of(&meta);
    if expected.is_some_and(|e| e != stamp) {
        return Ok(None);
    }
    let mut hasher = blake3::Hasher::new();
    let read = copy_into(&mut file, &mut hasher).map_err(err)?;
    let after = Stamp::of(&file.metadata().map_err(err)?);
    if after != stamp || read != stamp.size {
        return Ok(None);
    }
    Ok(Some(Hashed {
        content: *hasher.finalize().as_bytes(),
        stamp,
        executable: meta.permissions().mode() & 0o100 != 0,
        racy: racy_at(stamp, start),
    }))
}

fn racy_at(stamp: Stamp, hashed_at_ns: i64) -> bool {
    stamp.ctime_ns.max(stamp.mtime_ns) + RACY_WINDOW_NS >= hashed_at_ns
}

/// Whether a stamp taken now could still hide a change made in the same timestamp tick.
pub(crate) fn is_racy(stamp: Stamp) -> bool {
    racy_at(stamp, now_ns())
}

/// Streams a reader to the end through a reused buffer large enough for BLAKE3's SIMD paths.
pub(crate) fn copy_into(r: &mut impl Read, w: &mut impl io::Write) -> io::Result<u64> {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 256 * 1024]);
    }
    BUF.with_borrow_mut(|buf| {
        let mut total = 0;
        loop {
            let n = match r.read(buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            w.write_all(&buf[..n])?;
            total += n as u64;
        }
    })
}
