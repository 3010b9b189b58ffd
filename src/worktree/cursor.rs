//! A depth-first walk of a snapshot over the project's own directories, for whatever copies a
//! snapshot's bytes out (a NAR, a store path's files).
//!
//! The walk holds the project directories on its way open, so every file it reaches is opened
//! one component below a directory it holds, without following a link; and every byte it hands
//! on is proven by [`verify::prove`] to be the snapshot's.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::read;
use super::verify::{self, Out, Unproven};
use crate::tree::{File, Hash};
use crate::{Error, Snapshot};

pub(crate) struct Cursor<'a> {
    snapshot: &'a Snapshot,
    /// Path of the node the walk is at, below the project directory.
    path: Vec<u8>,
    /// The directories being walked, open (the innermost last).
    dirs: Vec<OwnedFd>,
}

impl<'a> Cursor<'a> {
    /// At the top of `snapshot`.
    pub fn new(snapshot: &'a Snapshot) -> Self {
        Cursor {
            snapshot,
            path: snapshot.prefix().to_vec(),
            dirs: Vec::new(),
        }
    }

    /// Where the walk is, as a path a message can name.
    pub fn abs_path(&self) -> PathBuf {
        self.snapshot.dir().join(OsStr::from_bytes(&self.path))
    }

    pub fn io(&self, e: io::Error) -> Error {
        Error::io(self.abs_path(), e)
    }

    /// The directory the node is in, and its name there; at the top of the snapshot, the
    /// project root and the whole prefix.
    fn place(&self) -> (BorrowedFd<'_>, &[u8]) {
        match self.dirs.last() {
            Some(dir) => (dir.as_fd(), crate::scan::split(&self.path).1),
            None if self.path.is_empty() => (self.snapshot.root().fd(), b"."),
            None => (self.snapshot.root().fd(), &self.path),
        }
    }

    /// Opens the directory the walk is at, to walk what it holds.
    pub fn open_dir(&mut self) -> Result<(), Error> {
        let (parent, name) = self.place();
        let fd = read::open_dir_at(parent, name).map_err(|e| self.io(e))?;
        self.dirs.push(fd);
        Ok(())
    }

    /// Done with the directory last opened.
    pub fn close_dir(&mut self) {
        self.dirs.pop();
    }

    /// Moves to the entry `name` of the directory last opened; what [`Cursor::leave`] takes to
    /// come back.
    pub fn enter(&mut self, name: &[u8]) -> usize {
        let back = self.path.len();
        if back > 0 {
            self.path.push(b'/');
        }
        self.path.extend_from_slice(name);
        back
    }

    /// Back to the directory [`Cursor::enter`] left.
    pub fn leave(&mut self, back: usize) {
        self.path.truncate(back);
    }

    /// Copies the bytes of the file the walk is at into `out`, proven to be `f`'s: a file that
    /// no longer holds them is [`Error::Stale`], and what went to `out` must then be discarded.
    pub fn contents(&self, f: &File, out: &mut impl Out) -> Result<(), Error> {
        let unproven = |e| match e {
            Unproven::Io(e) => self.io(e),
            Unproven::Stale | Unproven::Torn => Error::Stale {
                path: self.abs_path(),
            },
        };
        let (dir, name) = self.place();
        let (file, stamp) = verify::open_backing(dir, name).map_err(unproven)?;
        verify::prove(&file, stamp, f, 0..f.size(), None, out).map_err(unproven)
    }

    /// Copies the bytes of the file the walk is at into `out` when its content is not known
    /// yet (a tree from `Scanner::unread`); their BLAKE3 hash, which then is its content. The
    /// file must have `f`'s stamp before and after the read, else it changed while being hashed
    /// ([`Error::Unstable`]), and what went to `out` must be discarded.
    pub fn contents_unknown(&self, f: &File, out: &mut impl Out) -> Result<Hash, Error> {
        let changed = || Error::Unstable {
            path: self.abs_path(),
        };
        let (dir, name) = self.place();
        let (file, stamp) = verify::open_backing(dir, name).map_err(|e| match e {
            Unproven::Io(e) => self.io(e),
            Unproven::Stale | Unproven::Torn => changed(),
        })?;
        if stamp != f.stamp {
            return Err(changed());
        }
        let hash = verify::read_into(&file, f.size(), out).map_err(|e| match e {
            Some(e) => self.io(e),
            None => changed(),
        })?;
        match read::stamp_of_file(&file).map_err(|e| self.io(e))? == stamp {
            true => Ok(hash),
            false => Err(changed()),
        }
    }
}
