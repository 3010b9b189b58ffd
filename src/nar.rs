//! Streaming a snapshot as a NAR (Nix ARchive), the serialisation Nix hashes a tree by.
//!
//! Every file's bytes go through the same proof as a FUSE read ([`crate::worktree::verify::prove`], the
//! whole file hashed with BLAKE3 as it streams, against the snapshot's content hash), so a NAR
//! (and so a NAR hash or a registered store path) never carries bytes from another version of
//! the tree, whatever the file's stamp says. A file that fails it (other bytes, another size, a
//! symlink or anything but a regular file in its place) fails the whole NAR with
//! [`Error::Stale`] before the file's entry is complete: a NAR is never completed with bytes
//! that are not the snapshot's, and a writer given one must discard what it got on an error.
//!
//! [`nar_info`] reads on one thread and runs SHA-256 on another, so reading, the proof and the
//! hash overlap.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use crate::tree::{File, Node};
use crate::worktree::read;
use crate::worktree::verify::{self, Out, Unproven};
use crate::{Error, Snapshot};

/// A NAR's SHA-256 and length.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    pub sha256: [u8; 32],
    pub size: u64,
}

/// How much NAR one buffer of [`nar_info`]'s pipeline holds, and how many are in flight.
const CHUNK: usize = 1 << 20;
const IN_FLIGHT: usize = 4;

/// Hashes the snapshot's NAR without storing it.
pub fn nar_info(snapshot: &Snapshot) -> Result<NarInfo, Error> {
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(IN_FLIGHT);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let producer = std::thread::Builder::new()
            .name("srcstore-nar".into())
            .spawn_scoped(s, move || {
                let mut sink = Chunks {
                    buf: vec![0; CHUNK],
                    filled: 0,
                    full: full_tx,
                    empty: empty_rx,
                };
                write_into(snapshot, &mut sink)?;
                sink.send().map_err(|e| Error::io(snapshot.dir(), e))
            })
            .map_err(|e| Error::io(snapshot.dir(), e))?;
        let mut hasher = Sha256::new();
        let mut size = 0;
        for (buf, filled) in full_rx {
            hasher.update(&buf[..filled]);
            size += filled as u64;
            let _ = empty_tx.send(buf);
        }
        producer.join().expect("the NAR reader panicked")?;
        Ok(NarInfo {
            sha256: hasher.finalize().into(),
            size,
        })
    })
}

/// Writes the snapshot's NAR to `out`.
pub fn write_nar(snapshot: &Snapshot, out: &mut impl Write) -> Result<(), Error> {
    write_into(
        snapshot,
        &mut Direct {
            out,
            buf: vec![0; 256 << 10],
        },
    )
}

fn write_into(snapshot: &Snapshot, out: &mut impl Out) -> Result<(), Error> {
    let mut w = NarWriter {
        out,
        snapshot,
        path: snapshot.prefix().to_vec(),
        dirs: Vec::new(),
    };
    w.str(b"nix-archive-1")?;
    w.node(snapshot.tree())
}

/// Straight to a writer; file bytes are read into a buffer and written from it.
struct Direct<'a, W> {
    out: &'a mut W,
    buf: Vec<u8>,
}

impl<W: Write> Out for Direct<'_, W> {
    fn room(&mut self) -> io::Result<&mut [u8]> {
        Ok(&mut self.buf)
    }

    fn filled(&mut self, n: usize) -> io::Result<()> {
        self.out.write_all(&self.buf[..n])
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)
    }
}

/// Into buffers handed to another thread; file bytes are read straight into them.
struct Chunks {
    buf: Vec<u8>,
    filled: usize,
    full: mpsc::SyncSender<(Vec<u8>, usize)>,
    empty: mpsc::Receiver<Vec<u8>>,
}

impl Chunks {
    /// Hands over what is buffered.
    fn send(&mut self) -> io::Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        let next = self.empty.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
        let full = std::mem::replace(&mut self.buf, next);
        let filled = std::mem::take(&mut self.filled);
        self.full
            .send((full, filled))
            .map_err(|_| io::Error::other("the NAR hasher stopped"))
    }

    fn free(&mut self) -> io::Result<&mut [u8]> {
        if self.filled == CHUNK {
            self.send()?;
        }
        Ok(&mut self.buf[self.filled..])
    }
}

impl Out for Chunks {
    fn room(&mut self) -> io::Result<&mut [u8]> {
        self.free()
    }

    fn filled(&mut self, n: usize) -> io::Result<()> {
        self.filled += n;
        Ok(())
    }
}

struct NarWriter<'a, S> {
    out: &'a mut S,
    snapshot: &'a Snapshot,
    /// Path of the node being written below the project directory.
    path: Vec<u8>,
    /// The directories being written, open (the innermost last).
    dirs: Vec<OwnedFd>,
}

fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

impl<S: Out> NarWriter<'_, S> {
    fn io(&self, e: io::Error) -> Error {
        Error::io(self.abs_path(), e)
    }

    fn abs_path(&self) -> std::path::PathBuf {
        self.snapshot.dir().join(OsStr::from_bytes(&self.path))
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.out.put(bytes).map_err(|e| self.io(e))
    }

    fn str(&mut self, s: &[u8]) -> Result<(), Error> {
        self.raw(&(s.len() as u64).to_le_bytes())?;
        self.raw(s)?;
        self.raw(&[0; 8][..padding(s.len() as u64)])
    }

    /// The directory `self.path` is in, and its name there; at the top of the snapshot, the
    /// project root and the whole prefix.
    fn place(&self) -> (BorrowedFd<'_>, &[u8]) {
        match self.dirs.last() {
            Some(dir) => (dir.as_fd(), super::scan::split(&self.path).1),
            None if self.path.is_empty() => (self.snapshot.root().fd(), b"."),
            None => (self.snapshot.root().fd(), &self.path),
        }
    }

    fn node(&mut self, node: &Node) -> Result<(), Error> {
        self.str(b"(")?;
        self.str(b"type")?;
        match node {
            Node::Symlink(s) => {
                self.str(b"symlink")?;
                self.str(b"target")?;
                self.str(&s.target)?;
            }
            Node::File(f) => {
                self.str(b"regular")?;
                if f.executable() {
                    self.str(b"executable")?;
                    self.str(b"")?;
                }
                self.str(b"contents")?;
                self.raw(&f.size().to_le_bytes())?;
                self.contents(f)?;
                self.raw(&[0; 8][..padding(f.size())])?;
            }
            Node::Dir(d) => {
                self.str(b"directory")?;
                let (parent, name) = self.place();
                let fd = read::open_dir_at(parent, name).map_err(|e| self.io(e))?;
                self.dirs.push(fd);
                for e in d.entries.iter() {
                    self.str(b"entry")?;
                    self.str(b"(")?;
                    self.str(b"name")?;
                    self.str(&e.name)?;
                    self.str(b"node")?;
                    let len = self.path.len();
                    if len > 0 {
                        self.path.push(b'/');
                    }
                    self.path.extend_from_slice(&e.name);
                    self.node(&e.node)?;
                    self.path.truncate(len);
                    self.str(b")")?;
                }
                self.dirs.pop();
            }
        }
        self.str(b")")
    }

    /// Copies a file's bytes, proven to be the snapshot's (see the module docs).
    fn contents(&mut self, f: &File) -> Result<(), Error> {
        let unproven = |w: &Self, e| match e {
            Unproven::Io(e) => w.io(e),
            Unproven::Stale | Unproven::Torn => Error::Stale { path: w.abs_path() },
        };
        let (dir, name) = self.place();
        let (file, stamp) = verify::open_backing(dir, name).map_err(|e| unproven(self, e))?;
        verify::prove(&file, stamp, f, 0..f.size(), None, &mut *self.out)
            .map_err(|e| unproven(self, e))
    }
}
