//! The epoch of a daemon's node ids: a counter in the cache home, one more at every start.
//!
//! A file's inode number in the view is its node id plus one, and ids count up from where the
//! process began. Without an epoch, the next daemon's ids would begin where this one's did, and
//! an edited file of the same size could get its old number back: a compiler cache that trusts
//! (inode, mtime, size), as Zig's does, and lives on in a volume beside the build, would take
//! the old content for the new. Each run's ids begin at its epoch in the high bits instead
//! ([`NodeId::begin_epoch`]), and the counter lives in the cache home, which outlives reboots.
//!
//! The file holds the last epoch given out, in decimal. Starts take turns on a lock file beside
//! it (the counter itself is replaced by a rename, so a lock on it would lock the file being
//! replaced), and the new value is written atomically and synced before the run makes a node.
//! A counter that cannot be read is an error naming it: starting again from 0 is exactly what
//! it is there to prevent.

use std::fs;
use std::path::{Path, PathBuf};

use super::paths;
use super::StartError;
use crate::tree::{NodeId, MAX_EPOCH};

/// Gives this process an epoch no earlier run of this user's daemons had, and begins it.
pub fn begin() -> Result<(), StartError> {
    let home = paths::cache_home().ok_or_else(|| StartError::Io {
        path: PathBuf::from("$HOME"),
        cause: std::io::Error::other("not set (nor XDG_CACHE_HOME): no place for the epoch file"),
    })?;
    let epoch = next_in(&home)?;
    tracing::debug!("node ids of epoch {epoch}");
    NodeId::begin_epoch(epoch);
    Ok(())
}

/// Advances the counter in `home` (made, mode 0700, if missing); the new epoch.
fn next_in(home: &Path) -> Result<u64, StartError> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| StartError::Io { path, cause }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home)
        .map_err(io(home))?;
    let lock_path = home.join("epoch.lock");
    let lock = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io(&lock_path)(e.into()))?;
    let path = home.join("epoch");
    let last = match fs::read(&path) {
        Ok(bytes) => parse(&bytes).map_err(|why| StartError::Epoch {
            path: path.clone(),
            why,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io(&path)(e)),
    };
    let epoch = last + 1;
    if epoch > MAX_EPOCH {
        return Err(StartError::Epoch {
            path,
            why: format!("all {MAX_EPOCH} epochs are used up"),
        });
    }
    crate::atomic::write_durably(&path, format!("{epoch}\n").as_bytes()).map_err(io(&path))?;
    Ok(epoch)
}

/// The counter's value: one decimal number and a newline.
fn parse(bytes: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_owned())?;
    let digits = text.strip_suffix('\n').unwrap_or(text);
    match digits.parse::<u64>() {
        Ok(n) if n <= MAX_EPOCH && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        Ok(n) => Err(format!("{n} is past the last epoch, {MAX_EPOCH}")),
        Err(_) => {
            let start: String = digits.chars().take(24).collect();
            Err(format!("{start:?} is not a number"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_start_takes_the_next_epoch_and_keeps_it_in_a_private_directory() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("cache/srcstore");
        assert_eq!(next_in(&home).unwrap(), 1);
        assert_eq!(next_in(&home).unwrap(), 2);
        assert_eq!(fs::read_to_string(home.join("epoch")).unwrap(), "2\n");
        let mode = fs::metadata(&home).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_counter_it_cannot_read_is_an_error_naming_it_never_a_fresh_start() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("epoch");
        for corrupt in [
            &b"seven\n"[..],
            b"",
            b"-1",
            b"\xff",
            b"12 \n",
            b"99999999999",
        ] {
            fs::write(&path, corrupt).unwrap();
            let e = next_in(t.path())
                .expect_err("a corrupt counter was used")
                .to_string();
            assert!(e.starts_with(&format!("{}: ", path.display())), "{e}");
            assert_eq!(
                fs::read(&path).unwrap(),
                corrupt,
                "the counter was rewritten"
            );
        }
    }
}
