//! Reading a project's files safely and detecting when they change underneath us.
//!
//! Every open goes through [`Root`], relative to a descriptor of the project directory with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`: a directory swapped for a symlink between a scan
//! and a read can never lead outside the tree.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
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
        Root::open_at(path, rustix::fs::CWD, path)
    }

    /// The directory open at `dir`, opened again to be read; `path` names it in messages.
    pub fn reopen(path: &Path, dir: BorrowedFd<'_>) -> Result<Self, Error> {
        Root::open_at(path, dir, Path::new("."))
    }

    fn open_at(path: &Path, dir: BorrowedFd<'_>, name: &Path) -> Result<Self, Error> {
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(dir, name, flags, Mode::empty())
            .map_err(|e| Error::io(path, e.into()))?;
        Ok(Root {
            path: path.into(),
            fd,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Opens the directory `name` (one component, or a relative path) below the directory `dir`,
/// never through a symlink.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat2(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        BENEATH,
    )?)
}

/// The directory holding `rel` below `dir` (opened, unless it is `dir` itself) and the last
/// component of `rel`: what the `*at` calls below need to reach `rel` through no link.
fn parent_of<'a>(dir: BorrowedFd<'_>, rel: &'a [u8]) -> io::Result<(Option<OwnedFd>, &'a [u8])> {
    Ok(match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (Some(open_dir_at(dir, &rel[..i])?), &rel[i + 1..]),
        None => (None, rel),
    })
}

/// The status of `rel` (a relative path) below the directory `dir`: the entry itself, never
/// followed if it is a link, and nothing on the way to it through one.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, rel: &[u8]) -> io::Result<rustix::fs::Stat> {
    let (parent, name) = parent_of(dir, rel)?;
    let at = parent.as_ref().map_or(dir, |p| p.as_fd());
    Ok(rustix::fs::statat(
        at,
        name,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// The target of the symlink `rel` below the directory `dir`, reached through no other link.
pub(crate) fn read_link_at(dir: BorrowedFd<'_>, rel: &[u8]) -> io::Result<Vec<u8>> {
    let (parent, name) = parent_of(dir, rel)?;
    let at = parent.as_ref().map_or(dir, |p| p.as_fd());
    Ok(rustix::fs::readlinkat(at, name, Vec::new())?.into_bytes())
}

/// Opens the file `name` (one component, or a relative path) below the directory `dir` for
/// reading, never through a symlink. Non-blocking, so that a fifo that took a regular file's
/// place opens (and is then refused by its type) rather than waiting for a writer.
pub(crate) fn open_file_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<fs::File> {
    let fd = rustix::fs::openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
        BENEATH,
    )?;
    Ok(fs::File::from(fd))
}

/// The stamp of a `stat` result (the same values [`Stamp::of`] takes from `Metadata`).
pub(crate) fn stamp_of_stat(st: &rustix::fs::Stat) -> Stamp {
    Stamp {
        size: st.st_size as u64,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64,
        ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec as i64,
        ino: st.st_ino,
    }
}

/// The stamp of an open file, now.
pub(crate) fn stamp_of_file(file: &fs::File) -> io::Result<Stamp> {
    Ok(stamp_of_stat(&rustix::fs::fstat(file)?))
}

/// The owner-executable bit of a `stat` result.
pub(crate) fn exec_of_stat(st: &rustix::fs::Stat) -> bool {
    st.st_mode & 0o100 != 0
}

/// A file's content hash together with the stamp it was taken under.
pub struct Hashed {
    pub content: Hash,
    pub stamp: Stamp,
    pub executable: bool,
    pub racy: bool,
    /// Its link count: a file with more than one name can change without an event here.
    pub links: u64,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Hashes the file `name` (one component, or a relative path) below the directory `dir`; the
/// walk that found it saw `expected`, if it stat-ed it. A file seen to change while read is read
/// once more, after it settled (see [`settle`]); one that changes again is [`Error::Unstable`],
/// one that something else took the place of is named for what it is now. `path` names it.
pub(crate) fn hash_settled(
    dir: BorrowedFd<'_>,
    name: &[u8],
    mut expected: Option<Stamp>,
    budget: Option<&crate::scan::Budget>,
    path: impl Fn() -> PathBuf,
) -> Result<Hashed, Error> {
    use rustix::fs::FileType;
    for attempt in 0..2 {
        if attempt > 0 {
            let st = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| Error::io(path(), e.into()))?;
            match FileType::from_raw_mode(st.st_mode as _) {
                FileType::RegularFile => {}
                FileType::Directory | FileType::Symlink => break,
                other => return Err(Error::unsupported(path(), other)),
            }
            let now = stamp_of_stat(&st);
            settle(now);
            expected = Some(now);
        }
        let attempt = match open_file_at(dir, name) {
            Ok(mut file) => {
                if let Some(budget) = budget {
                    let st = rustix::fs::fstat(&file).map_err(|e| Error::io(path(), e.into()))?;
                    budget.take(st.st_size as u64, &path)?;
                }
                hash_open(&mut file, expected)
            }
            // A symlink took its place: the open refuses it.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                Ok(Attempt::NotAFile)
            }
            Err(e) => Err(e),
        }
        .map_err(|e| Error::io(path(), e))?;
        if let Attempt::Hashed(h) = attempt {
            return Ok(h);
        }
    }
    Err(Error::Unstable { path: path() })
}

/// Before the second and last attempt at a file seen to change while it was hashed: waits until
/// its last change (as of `stamp`) is older than the racy window, at most that long. The attempt
/// then insists on `stamp`, so only a file that stayed still that long is hashed; one that keeps
/// being written is reported, even when its writer pauses for the length of a read.
fn settle(stamp: Stamp) {
    let quiet_at = stamp
        .ctime_ns
        .max(stamp.mtime_ns)
        .saturating_add(RACY_WINDOW_NS);
    let wait = quiet_at.saturating_sub(now_ns()).clamp(0, RACY_WINDOW_NS);
    if wait > 0 {
        std::thread::sleep(std::time::Duration::from_nanos(wait as u64));
    }
}

/// What one attempt at hashing an open file found.
enum Attempt {
    Hashed(Hashed),
    /// Its stamp was not `expected`, or moved while it was read.
    Changed,
    /// It is not a regular file (something else took the place of one).
    NotAFile,
}

/// Hashes a file just opened, stamping it before and after the read.
fn hash_open(file: &mut fs::File, expected: Option<Stamp>) -> io::Result<Attempt> {
    let start = now_ns();
    let st = rustix::fs::fstat(&*file)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode as _) != rustix::fs::FileType::RegularFile {
        return Ok(Attempt::NotAFile);
    }
    let stamp = stamp_of_stat(&st);
    // Another file under the name (one renamed over it, as editors save) is not a change in
    // progress: it is hashed as it is, its own stamps before and after proving the read.
    if expected.is_some_and(|e| e != stamp && e.ino == stamp.ino) {
        return Ok(Attempt::Changed);
    }
    let mut hasher = blake3::Hasher::new();
    let read = copy_into(file, &mut hasher)?;
    let after = stamp_of_file(file)?;
    if after != stamp || read != stamp.size {
        return Ok(Attempt::Changed);
    }
    Ok(Attempt::Hashed(Hashed {
        content: *hasher.finalize().as_bytes(),
        stamp,
        executable: exec_of_stat(&st),
        racy: racy_at(stamp, start),
        links: st.st_nlink,
    }))
}

fn racy_at(stamp: Stamp, hashed_at_ns: i64) -> bool {
    stamp.ctime_ns.max(stamp.mtime_ns) + racy_window_ns(stamp) >= hashed_at_ns
}

/// A stamp whose times have no fraction of a second most likely comes from a filesystem that
/// keeps whole seconds (ext4 with 128-byte inodes, FAT's two seconds, some network mounts):
/// there a write later in the same second, or two, keeps the stamp.
fn racy_window_ns(stamp: Stamp) -> i64 {
    const SECOND: i64 = 1_000_000_000;
    if stamp.mtime_ns % SECOND == 0 && stamp.ctime_ns % SECOND == 0 {
        2 * SECOND
    } else {
        RACY_WINDOW_NS
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(mtime_ns: i64) -> Stamp {
        Stamp {
            size: 1,
            mtime_ns,
            ctime_ns: mtime_ns,
            ino: 1,
        }
    }

    #[test]
    fn a_stamp_proves_content_only_once_its_timestamp_tick_is_over() {
        let fine = stamp(10_123_456_789);
        assert!(racy_at(fine, 10_133_456_789), "10 ms after the change");
        assert!(!racy_at(fine, 10_223_456_789), "100 ms after the change");
        // Whole seconds: a write at 10.9 s still shows 10.0 s.
        let coarse = stamp(10_000_000_000);
        assert!(racy_at(coarse, 10_950_000_000));
        assert!(racy_at(coarse, 11_500_000_000));
        assert!(!racy_at(coarse, 12_100_000_000));
    }
}
