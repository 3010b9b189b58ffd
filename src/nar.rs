//! Streaming a snapshot as a NAR (Nix ARchive), the serialisation Nix hashes a tree by.
//!
//! Every file is re-verified against the snapshot while it is streamed, so a NAR (and so a NAR
//! hash or a registered store path) never mixes in bytes from another version of the tree.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::read::copy_into;
use crate::tree::Node;
use crate::{Error, Snapshot};

/// A NAR's SHA-256 and length.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    pub sha256: [u8; 32],
    pub size: u64,
}

/// Hashes the snapshot's NAR without storing it.
pub fn nar_info(snapshot: &Snapshot) -> Result<NarInfo, Error> {
    let mut sink = HashingWriter::default();
    write_nar(snapshot, &mut sink)?;
    Ok(NarInfo {
        sha256: sink.hasher.finalize().into(),
        size: sink.size,
    })
}

/// Writes the snapshot's NAR to `out`.
pub fn write_nar(snapshot: &Snapshot, out: &mut impl Write) -> Result<(), Error> {
    let mut w = NarWriter {
        out,
        snapshot,
        path: snapshot.prefix().to_vec(),
    };
    w.str(b"nix-archive-1")?;
    w.node(snapshot.tree())
}

#[derive(Default)]
struct HashingWriter {
    hasher: Sha256,
    size: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct NarWriter<'a, W> {
    out: &'a mut W,
    snapshot: &'a Snapshot,
    /// Path of the node being written below the project directory.
    path: Vec<u8>,
}

fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

impl<W: Write> NarWriter<'_, W> {
    fn io(&self, e: io::Error) -> Error {
        Error::io(self.abs_path(), e)
    }

    fn abs_path(&self) -> std::path::PathBuf {
        self.snapshot.dir().join(OsStr::from_bytes(&self.path))
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.out.write_all(bytes).map_err(|e| self.io(e))
    }

    fn str(&mut self, s: &[u8]) -> Result<(), Error> {
        self.raw(&(s.len() as u64).to_le_bytes())?;
        self.raw(s)?;
        self.raw(&[0; 8][..padding(s.len() as u64)])
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
                if f.executable {
                    self.str(b"executable")?;
                    self.str(b"")?;
                }
                self.str(b"contents")?;
                self.raw(&f.size().to_le_bytes())?;
                self.contents(&f.content, f.size())?;
                self.raw(&[0; 8][..padding(f.size())])?;
            }
            Node::Dir(d) => {
                self.str(b"directory")?;
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
            }
        }
        self.str(b")")
    }

    /// Copies a file's bytes, checking they are the snapshot's: same length and same BLAKE3.
    fn contents(&mut self, expected: &[u8; 32], size: u64) -> Result<(), Error> {
        let rel = Path::new(OsStr::from_bytes(&self.path));
        let file = self.snapshot.root().open_file(rel)?;
        let mut tee = Tee {
            out: &mut *self.out,
            hasher: blake3::Hasher::new(),
        };
        let copied = copy_into(&mut io::Read::take(file, size + 1), &mut tee);
        let intact = tee.hasher.finalize().as_bytes() == expected;
        let n = copied.map_err(|e| self.io(e))?;
        if n != size || !intact {
            return Err(Error::Stale {
                path: self.abs_path(),
            });
        }
        Ok(())
    }
}

struct Tee<'a, W> {
    out: &'a mut W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Tee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write_all(buf)?;
        self.hasher.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
