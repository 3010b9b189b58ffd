//! The locks Nix itself takes around a store path, taken the same way.
//!
//! - [`GcLock`]: Nix's collector holds `gc.lock` exclusively for its whole run (2.8 to 2.35);
//!   holding it shared keeps a collection from starting, and waits for one that runs. A path
//!   being made is then safe from the collector without a temporary root, which is exactly how
//!   Nix's own `addTempRoot` proceeds when it gets the shared lock.
//! - [`PathLock`]: `<path>.lock`, which Nix takes before it makes or registers a path, so that
//!   a `nix-store --add` of the same tree and a publication never write one path at once.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::at;

/// Nix's garbage collector lock, held shared.
pub struct GcLock {
    _held: OwnedFd,
}

impl GcLock {
    /// Takes it in Nix's state directory `state`, calling `waiting` once if a collection runs.
    pub fn shared(state: &Path, waiting: impl FnOnce()) -> io::Result<GcLock> {
        let path = state.join("gc.lock");
        let fd = rustix::fs::open(
            &path,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| at(&path, e))?;
        if let Err(Errno::WOULDBLOCK) =
            rustix::fs::flock(&fd, FlockOperation::NonBlockingLockShared)
        {
            waiting();
            rustix::fs::flock(&fd, FlockOperation::LockShared).map_err(|e| at(&path, e))?;
        }
        Ok(GcLock { _held: fd })
    }
}

/// Nix's lock of one store path, `<store>/<name>.lock`, held exclusively; removed on drop, as
/// Nix removes it.
pub struct PathLock<'a> {
    store: BorrowedFd<'a>,
    name: String,
    fd: OwnedFd,
}

impl<'a> PathLock<'a> {
    /// Takes the lock of the entry `name` of the store directory `store` (at `store_path`, for
    /// messages), waiting at most `patience` for another holder.
    pub fn take(
        store: BorrowedFd<'a>,
        store_path: &Path,
        name: &str,
        patience: Duration,
    ) -> io::Result<PathLock<'a>> {
        let name = format!("{name}.lock");
        let path = store_path.join(&name);
        let start = Instant::now();
        loop {
            let fd = rustix::fs::openat(
                store,
                name.as_str(),
                OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| at(&path, e))?;
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) if start.elapsed() < patience => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(Errno::WOULDBLOCK) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{}: held by another process for {}s; is a Nix build of it stuck?",
                            path.display(),
                            patience.as_secs()
                        ),
                    ))
                }
                Err(e) => return Err(at(&path, e)),
            }
            // A holder that finished removed the file and marked it (Nix writes one byte to a
            // lock file it deletes): this one is no lock any more; take a fresh one.
            if rustix::fs::fstat(&fd).map_err(|e| at(&path, e))?.st_size != 0 {
                continue;
            }
            return Ok(PathLock { store, name, fd });
        }
    }
}

impl Drop for PathLock<'_> {
    fn drop(&mut self) {
        let _ = rustix::fs::unlinkat(self.store, self.name.as_str(), AtFlags::empty());
        let _ = rustix::io::write(self.fd.as_fd(), b"d");
    }
}
