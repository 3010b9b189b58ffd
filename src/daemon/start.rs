//! What a daemon claims and repairs on its way up: the project's lock and an epoch for its node
//! ids, and the mountpoint a daemon killed with -9 left behind.

use std::fs;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Why a daemon cannot start; each names its path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{project}: already served by another srcstore daemon ({holder}); stop it first")]
    AlreadyServed { project: PathBuf, holder: String },
    #[error("{path}: stale mount could not be removed; run `fusermount3 -u -z {path}`")]
    StaleMount { path: PathBuf },
    #[error("{path}: mountpoint is not empty")]
    NotEmpty { path: PathBuf },
    #[error("{path}: not an epoch counter ({why}); counting from 0 again could give an earlier run's inode numbers to other content: remove it only if no build cache keeps inode numbers of this user's views")]
    Epoch { path: PathBuf, why: String },
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StartError + '_ {
    move |cause| StartError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// One daemon per project: an exclusive `flock` held for the daemon's life, with the holder's
/// pid and mountpoint written inside for the message a second daemon gives.
pub struct DaemonLock(#[allow(dead_code)] fs::File);

impl DaemonLock {
    /// Claims the project for this run, and begins the run's epoch of node ids
    /// ([`super::epoch`]): a daemon takes its lock first, before anything (its index) makes a
    /// node.
    pub fn acquire(path: &Path, project: &Path, mountpoint: &Path) -> Result<Self, StartError> {
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io(path))?;
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(StartError::AlreadyServed {
                project: project.to_path_buf(),
                holder: holder.trim().to_owned(),
            });
        }
        (|| {
            file.set_len(0)?;
            file.rewind()?;
            write!(
                file,
                "pid {}, mounted at {}",
                std::process::id(),
                mountpoint.display()
            )
        })()
        .map_err(io(path))?;
        super::epoch::begin()?;
        Ok(DaemonLock(file))
    }
}

/// Makes `mountpoint` ready: a daemon killed with -9 leaves its mount behind, answering
/// ENOTCONN, which is detached. Whether the mountpoint had to be made.
pub fn prepare_mountpoint(mountpoint: &Path) -> Result<bool, StartError> {
    if let Err(e) = fs::metadata(mountpoint) {
        if e.raw_os_error() == Some(rustix::io::Errno::NOTCONN.raw_os_error()) {
            tracing::info!(
                "{}: repairing the mount of a daemon that died",
                mountpoint.display()
            );
            let detached = std::process::Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(mountpoint)
                .status()
                .is_ok_and(|s| s.success());
            if !detached {
                return Err(StartError::StaleMount {
                    path: mountpoint.to_path_buf(),
                });
            }
        }
    }
    let made = !mountpoint.exists();
    fs::create_dir_all(mountpoint).map_err(io(mountpoint))?;
    if fs::read_dir(mountpoint)
        .map_err(io(mountpoint))?
        .next()
        .is_some()
    {
        return Err(StartError::NotEmpty {
            path: mountpoint.to_path_buf(),
        });
    }
    Ok(made)
}
