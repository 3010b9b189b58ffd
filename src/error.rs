use std::io;
use std::path::PathBuf;

/// What can go wrong while snapshotting a tree. Every variant names the path it is about, so a
/// one-line message is enough for a user to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cause is part of the message (and so not a `source`, which would repeat it in a chain).
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("{path}: not a directory (srcstore snapshots a project directory)")]
    NotADirectory { path: PathBuf },
    #[error("{path}: {kind} cannot be stored by Nix; remove it or add it to .srcstoreignore")]
    UnsupportedFileType { path: PathBuf, kind: &'static str },
    #[error(
        "{path}: file changed while being hashed (twice); retry when it is no longer being written"
    )]
    Unstable { path: PathBuf },
    #[error("{path}: file changed since the snapshot was taken")]
    Stale { path: PathBuf },
    #[error("{name:?} is not a valid Nix store path name: {why}")]
    InvalidName { name: String, why: &'static str },
}

impl Error {
    /// A file Nix cannot store, by what it is.
    pub(crate) fn unsupported(path: PathBuf, file_type: rustix::fs::FileType) -> Self {
        use rustix::fs::FileType as T;
        let kind = match file_type {
            T::Fifo => "a named pipe (fifo)",
            T::Socket => "a socket",
            T::BlockDevice | T::CharacterDevice => "a device node",
            _ => "a special file",
        };
        Error::UnsupportedFileType { path, kind }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, cause: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause,
        }
    }
}
