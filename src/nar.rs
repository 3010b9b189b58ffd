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

use std::io::{self, Write};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use crate::tree::Node;
use crate::worktree::cursor::Cursor;
use crate::worktree::verify::Out;
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
        at: Cursor::new(snapshot),
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
    at: Cursor<'a>,
}

fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// Puts a NAR string: its length, its bytes, and the zeros that pad it to a multiple of eight.
fn put_str<E>(s: &[u8], put: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
    put(&(s.len() as u64).to_le_bytes())?;
    put(s)?;
    put(&[0; 8][..padding(s.len() as u64)])
}

/// The SHA-256 of one regular file's NAR: the name Nix gives the file's copy in the store's
/// `.links` directory, and so the key of a blob there.
pub struct FileNarHash {
    sha: Sha256,
    size: u64,
}

impl FileNarHash {
    /// For a file of `size` bytes; its bytes follow, through [`Out`] or [`FileNarHash::update`].
    pub fn new(executable: bool, size: u64) -> Self {
        let mut sha = Sha256::new();
        let mut put = |b: &[u8]| -> Result<(), ()> {
            sha.update(b);
            Ok(())
        };
        let mut head: Vec<&[u8]> = vec![b"nix-archive-1", b"(", b"type", b"regular"];
        if executable {
            head.extend([b"executable" as &[u8], b""]);
        }
        head.push(b"contents");
        for s in head {
            let _ = put_str(s, &mut put);
        }
        sha.update(size.to_le_bytes());
        FileNarHash { sha, size }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
    }

    /// The hash, once every byte went through [`FileNarHash::update`].
    pub fn finish(mut self) -> [u8; 32] {
        self.sha.update(&[0; 8][..padding(self.size)]);
        let _ = put_str(b")", &mut |b: &[u8]| -> Result<(), ()> {
            self.sha.update(b);
            Ok(())
        });
        self.sha.finalize().into()
    }
}

impl<S: Out> NarWriter<'_, S> {
    fn raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.out.put(bytes).map_err(|e| self.at.io(e))
    }

    fn str(&mut self, s: &[u8]) -> Result<(), Error> {
        put_str(s, &mut |b| self.raw(b))
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
                self.at.contents(f, &mut *self.out)?;
                self.raw(&[0; 8][..padding(f.size())])?;
            }
            Node::Dir(d) => {
                self.str(b"directory")?;
                self.at.open_dir()?;
                for e in d.entries.iter() {
                    self.str(b"entry")?;
                    self.str(b"(")?;
                    self.str(b"name")?;
                    self.str(&e.name)?;
                    self.str(b"node")?;
                    let back = self.at.enter(&e.name);
                    self.node(&e.node)?;
                    self.at.leave(back);
                    self.str(b")")?;
                }
                self.at.close_dir();
            }
        }
        self.str(b")")
    }
}
