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
    /// `fix` is how to keep it out under the filter in force ([`crate::Filter::how_to_leave_out`]).
    #[error("{path}: {kind} cannot be stored by Nix; {fix}")]
    UnsupportedFileType {
        path: PathBuf,
        kind: &'static str,
        fix: &'static str,
    },
    #[error(
        "{path}: file changed while being hashed (twice); retry when it is no longer being written"
    )]
    Unstable { path: PathBuf },
    #[error("{path}: file changed since the snapshot was taken")]
    Stale { path: PathBuf },
    #[error("{path}: more than the {limit} this scan may read")]
    OverBudget { path: PathBuf, limit: String },
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
        Error::UnsupportedFileType {
            path,
            kind,
            fix: crate::Filter::Ignore.how_to_leave_out(),
        }
    }

    /// The same error, its advice given for `filter` (the walks that find a special file do not
    /// all know which filter is in force; the scan that called them does).
    pub(crate) fn under(self, filter: crate::Filter) -> Self {
        match self {
            Error::UnsupportedFileType { path, kind, .. } => Error::UnsupportedFileType {
                path,
                kind,
                fix: filter.how_to_leave_out(),
            },
            other => other,
        }
    }

    /// What the path named was a moment ago is no longer there (removed, renamed away, or its
    /// directory replaced by a file or a link) while a walk was looking at it.
    pub(crate) fn vanished(&self) -> bool {
        use rustix::io::Errno;
        match self {
            Error::Io { cause, .. } => {
                cause.kind() == io::ErrorKind::NotFound
                    || [Errno::NOTDIR, Errno::LOOP]
                        .iter()
                        .any(|e| cause.raw_os_error() == Some(e.raw_os_error()))
            }
            _ => false,
        }
    }

    /// A sign that the tree is moving under the walk (a file that vanished or kept changing),
    /// not a problem for the user: the update is tried again once the burst has settled.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unstable { .. }) || self.vanished()
    }

    pub(crate) fn io(path: impl Into<PathBuf>, cause: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause,
        }
    }
}
