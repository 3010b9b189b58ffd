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
use crate::tree::{File, Stamp};
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

    /// Opens the file the walk is at, in a tree whose contents are not known yet and whose
    /// files the walk did not stat (a tree from `Scanner::unread`): what it is as opened, for
    /// [`Cursor::contents_unknown`]. A place that no longer holds a regular file is
    /// [`Error::Unstable`].
    pub fn open_unknown(&self) -> Result<Unread, Error> {
        let (dir, name) = self.place();
        let (file, st) = verify::open_backing_stat(dir, name).map_err(|e| match e {
            Unproven::Io(e) => self.io(e),
            Unproven::Stale | Unproven::Torn => self.changed(),
        })?;
        Ok(Unread {
            file,
            stamp: read::stamp_of_stat(&st),
            executable: read::exec_of_stat(&st),
        })
    }

    /// Copies the bytes of the file [`Cursor::open_unknown`] opened into `out`, showing each
    /// piece to `seen` too: their hash is then its content. The file must keep its stamp until
    /// the read is over, else it changed while being read ([`Error::Unstable`]), and what went
    /// to `out` must be discarded.
    pub fn contents_unknown(
        &self,
        f: &Unread,
        out: &mut impl Out,
        seen: impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        verify::read_into(&f.file, f.stamp.size, out, seen).map_err(|e| match e {
            Some(e) => self.io(e),
            None => self.changed(),
        })?;
        match read::stamp_of_file(&f.file).map_err(|e| self.io(e))? == f.stamp {
            true => Ok(()),
            false => Err(self.changed()),
        }
    }

    fn changed(&self) -> Error {
        Error::Unstable {
            path: self.abs_path(),
        }
    }
}

/// A file of a tree whose contents are not known yet, open to be read.
pub(crate) struct Unread {
    file: std::fs::File,
    pub stamp: Stamp,
    pub executable: bool,
}
