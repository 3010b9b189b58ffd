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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use crate::tree::{Node, Stamp};
use crate::worktree::cursor::Cursor;
use crate::worktree::verify::Out;
use crate::{Error, Snapshot};

/// A NAR's SHA-256 and length.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    pub sha256: [u8; 32],
    pub size: u64,
}

/// What hashing a snapshot's NAR leaves for hashing the next one: the tree it was of, and the
/// SHA-256 state at node starts at least [`MARK_EVERY`] bytes apart. A NAR is one linear
/// stream, so the next snapshot's is hashed from the last mark before its first difference on:
/// an edit costs the NAR after it, never the NAR before it.
#[derive(Clone)]
pub struct NarMemo {
    tree: Node,
    info: NarInfo,
    /// (NAR offset of a node's start, the hash state there), by offset.
    marks: Vec<(u64, Sha256)>,
}

impl NarMemo {
    /// Whether this is the memo of `tree`'s NAR.
    pub fn is_of(&self, tree: &Node) -> bool {
        first_difference(&self.tree, tree, HEADER_LEN).is_none()
    }
}

/// How much NAR one buffer of [`nar_info`]'s pipeline holds, and how many are in flight.
const CHUNK: usize = 1 << 20;
const IN_FLIGHT: usize = 4;
/// The least NAR between two marks of a [`NarMemo`]: at most this much is hashed again before
/// an edit's first difference (and a 200 MB NAR keeps under a thousand marks).
const MARK_EVERY: u64 = 256 << 10;

/// Hashes the snapshot's NAR without storing it.
pub fn nar_info(snapshot: &Snapshot) -> Result<NarInfo, Error> {
    Ok(nar_info_since(snapshot, None)?.0)
}

/// Hashes the snapshot's NAR, from the last mark of `memo` (a memo of an earlier snapshot) that
/// the two NARs share; and the memo for the next one.
pub fn nar_info_since(
    snapshot: &Snapshot,
    memo: Option<&NarMemo>,
) -> Result<(NarInfo, NarMemo), Error> {
    let tree = snapshot.tree();
    let mut marks = Vec::new();
    if let Some(m) = memo {
        match first_difference(&m.tree, tree, HEADER_LEN) {
            None => {
                let same = NarMemo {
                    tree: tree.clone(),
                    ..m.clone()
                };
                return Ok((m.info, same));
            }
            Some(at) => marks.extend(m.marks.iter().take_while(|(o, _)| *o <= at).cloned()),
        }
    }
    let (resume, hasher) = marks.last().cloned().unwrap_or((0, Sha256::new()));
    let (info, _) = hash_stream(snapshot, resume, hasher, &mut marks, Known)?;
    let memo = NarMemo {
        tree: tree.clone(),
        info,
        marks,
    };
    Ok((info, memo))
}

/// Hashes the NAR of a tree from `Scanner::unread`, reading each file once: the NAR's SHA-256
/// and every file's BLAKE3 come from the same bytes, so the scan's hash needs no second read
/// to prove the NAR's. The snapshot with its files filled in (content, and the size and mode
/// each had as read: the walk did not stat them), and its NAR.
///
/// A file that changes while it is read is [`Error::Unstable`]: the NAR has gone out with part of
/// it, so the caller starts again (or hashes the ordinary way, which waits for it to settle).
pub fn nar_info_reading(snapshot: &Snapshot) -> Result<(Snapshot, NarInfo), Error> {
    reading(snapshot, KEEPING_UP)
}

/// [`nar_info_reading`], the hashing thread taking files' BLAKE3 while fewer than
/// `keeping_up` buffers wait for it.
fn reading(snapshot: &Snapshot, keeping_up: usize) -> Result<(Snapshot, NarInfo), Error> {
    let unknown = Unknown(keeping_up);
    let (info, read) = hash_stream(snapshot, 0, Sha256::new(), &mut Vec::new(), unknown)?;
    let tree = with_contents(snapshot.tree(), &mut read.into_iter());
    Ok((snapshot.with_tree(tree), info))
}

/// A file as the reading pass found it.
struct Read {
    content: crate::tree::Hash,
    stamp: Stamp,
    executable: bool,
}

/// Whether the files' contents are known (and proven as they are read) or learnt by reading;
/// then the hashing thread hashes them too while fewer than this many buffers wait for it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Contents {
    Known,
    Unknown(usize),
}
use Contents::{Known, Unknown};

/// `tree` with each file the next of `read` (in NAR order), its directories hashed anew.
fn with_contents(tree: &Node, read: &mut impl Iterator<Item = Read>) -> Node {
    match tree {
        Node::File(_) => {
            let f = read.next().expect("every file read");
            Node::File(std::sync::Arc::new(crate::tree::File::new(
                f.content,
                f.executable,
                f.stamp,
                true,
            )))
        }
        Node::Symlink(_) => tree.clone(),
        Node::Dir(d) => Node::Dir(std::sync::Arc::new(crate::tree::Dir::new(
            d.entries
                .iter()
                .map(|e| crate::tree::Entry {
                    name: e.name.clone(),
                    node: with_contents(&e.node, read),
                })
                .collect(),
        ))),
    }
}

/// Streams the snapshot's NAR from `from` (a node's start; `hasher` holds the state there)
/// through SHA-256 on this thread while another reads and frames it, pushing a mark into
/// `marks` every [`MARK_EVERY`]; the NAR, and with [`Unknown`] contents each file's BLAKE3 in
/// NAR order. Each file's BLAKE3 is taken where there is room for it: on this thread while it
/// keeps up with the reading one (many small files: opening them is most of the work), on the
/// reading thread while this one falls behind (large files: hashing is).
fn hash_stream(
    snapshot: &Snapshot,
    from: u64,
    mut hasher: Sha256,
    marks: &mut Vec<(u64, Sha256)>,
    contents: Contents,
) -> Result<(NarInfo, Vec<Read>), Error> {
    let (full_tx, full_rx) = mpsc::sync_channel::<Piece>(IN_FLIGHT);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    let queued = &AtomicUsize::new(0);
    std::thread::scope(|s| {
        let producer = std::thread::Builder::new()
            .name("srcstore-nar".into())
            .spawn_scoped(s, move || {
                let keeping_up = match contents {
                    Known => 0,
                    Unknown(n) => n,
                };
                let mut sink = Chunks::new(full_tx, empty_rx, queued, keeping_up);
                let found = write_into(snapshot, &mut sink, from, MARK_EVERY, contents)?;
                sink.send().map_err(|e| Error::io(snapshot.dir(), e))?;
                Ok(found)
            })
            .map_err(|e| Error::io(snapshot.dir(), e))?;
        let mut size = from;
        let (mut content, mut read) = (blake3::Hasher::new(), Vec::new());
        for piece in full_rx {
            match piece {
                Piece::Bytes(buf, filled, spans) => {
                    hasher.update(&buf[..filled]);
                    for span in spans {
                        content.update(&buf[span.from..span.to]);
                        match span.ends {
                            Ends::Not => {}
                            Ends::File => {
                                read.push(*content.finalize().as_bytes());
                                content.reset();
                            }
                            Ends::Hashed(h) => read.push(h),
                        }
                    }
                    size += filled as u64;
                    queued.fetch_sub(1, Ordering::Relaxed);
                    let _ = empty_tx.send(buf);
                }
                Piece::Mark(at) => {
                    debug_assert_eq!(at, size);
                    marks.push((at, hasher.clone()));
                }
            }
        }
        let found = producer.join().expect("the NAR reader panicked")?;
        let info = NarInfo {
            sha256: hasher.finalize().into(),
            size,
        };
        let read = found
            .into_iter()
            .zip(read)
            .map(|((stamp, executable), content)| Read {
                content,
                stamp,
                executable,
            })
            .collect();
        Ok((info, read))
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
        0,
        u64::MAX,
        Known,
    )
    .map(drop)
}

/// Writes the snapshot's NAR from the offset `from` (a node's start) on, into `out`, marking
/// node starts at least `mark_every` apart. With [`Unknown`] contents, `out` is told where each
/// file's bytes begin and end, to hash them, and each file's stamp and executable bit as read
/// come back, in NAR order.
fn write_into(
    snapshot: &Snapshot,
    out: &mut impl Sink,
    from: u64,
    mark_every: u64,
    contents: Contents,
) -> Result<Vec<(Stamp, bool)>, Error> {
    let mut w = NarWriter {
        out,
        at: Cursor::new(snapshot),
        offset: 0,
        skip_to: from,
        mark_every,
        last_mark: from,
        contents,
        found: Vec::new(),
    };
    w.str(b"nix-archive-1")?;
    w.node(snapshot.tree())?;
    Ok(w.found)
}

/// Where the NAR goes: bytes, and the marks a memo keeps.
trait Sink: Out {
    /// The bytes so far end at a node's start, `offset`.
    fn mark(&mut self, offset: u64) -> io::Result<()>;

    /// Whether whoever takes the NAR has room to hash a file's content too: then the bytes
    /// from here on, up to [`Sink::file_ends`], are a file's whose content is not known yet
    /// ([`Unknown`]), for it to hash. If not, the writer hashes the file itself and tells the
    /// hash ([`Sink::file_hashed`]).
    fn file_starts(&mut self) -> bool {
        false
    }

    fn file_ends(&mut self) {}

    fn file_hashed(&mut self, _content: crate::tree::Hash) {}
}

/// What the NAR's reader hands its hasher.
enum Piece {
    /// A buffer, how much of it is NAR, and where in it a file's bytes are.
    Bytes(Vec<u8>, usize, Vec<Span>),
    /// The bytes so far end at this offset, a node's start: keep the state.
    Mark(u64),
}

/// The length of a NAR string of `len` bytes.
fn str_len(len: usize) -> u64 {
    8 + len as u64 + padding(len as u64) as u64
}

/// The length of the archive's header, where the top node starts.
const HEADER_LEN: u64 = 24;

/// The length of `node`'s NAR.
fn nar_len(node: &Node) -> u64 {
    let s = |b: &[u8]| str_len(b.len());
    let head = s(b"(") + s(b"type") + s(b")");
    head + match node {
        Node::Symlink(l) => s(b"symlink") + s(b"target") + s(&l.target),
        Node::File(f) => {
            let exec = match f.executable() {
                true => s(b"executable") + s(b""),
                false => 0,
            };
            s(b"regular") + exec + s(b"contents") + 8 + f.size() + padding(f.size()) as u64
        }
        Node::Dir(d) => {
            s(b"directory")
                + d.entries
                    .iter()
                    .map(|e| entry_head(&e.name) + nar_len(&e.node) + s(b")"))
                    .sum::<u64>()
        }
    }
}

/// The length of a directory entry's NAR before its node.
fn entry_head(name: &[u8]) -> u64 {
    [b"entry" as &[u8], b"(", b"name", name, b"node"]
        .iter()
        .map(|b| str_len(b.len()))
        .sum()
}

/// Where, in the NARs of `old` and `new` (starting at `at`), the first node that differs
/// starts; `None` when the two are the same. The streams are equal up to there.
fn first_difference(old: &Node, new: &Node, at: u64) -> Option<u64> {
    match (old, new) {
        (Node::Dir(a), Node::Dir(b)) if a.hash == b.hash => None,
        (Node::Dir(a), Node::Dir(b)) => {
            let s = |b: &[u8]| str_len(b.len());
            let mut at = at + s(b"(") + s(b"type") + s(b"directory");
            for (x, y) in a.entries.iter().zip(b.entries.iter()) {
                if x.name.as_bytes() != y.name.as_bytes() {
                    return Some(at);
                }
                let head = entry_head(&y.name);
                if let Some(d) = first_difference(&x.node, &y.node, at + head) {
                    return Some(d);
                }
                at += head + nar_len(&y.node) + s(b")");
            }
            // One lists more entries than the other (or nothing differs where it should).
            Some(at)
        }
        (Node::File(a), Node::File(b))
            if a.content == b.content
                && a.executable() == b.executable()
                && a.size() == b.size() =>
        {
            None
        }
        (Node::Symlink(a), Node::Symlink(b)) if a.target == b.target => None,
        _ => Some(at),
    }
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

impl<W: Write> Sink for Direct<'_, W> {
    fn mark(&mut self, _: u64) -> io::Result<()> {
        Ok(())
    }
}

/// A part of a [`Piece`] that holds a file's bytes (of an [`Unknown`] content).
struct Span {
    from: usize,
    to: usize,
    ends: Ends,
}

/// What comes at the end of a [`Span`].
enum Ends {
    /// The file goes on.
    Not,
    /// The file's last bytes: its content is their hash.
    File,
    /// A file the reading thread hashed itself (the span is empty).
    Hashed(crate::tree::Hash),
}

/// Into buffers handed to another thread; file bytes are read straight into them.
struct Chunks<'a> {
    buf: Vec<u8>,
    filled: usize,
    /// The buffer's file bytes so far, and where the file being read began in it.
    spans: Vec<Span>,
    file_from: Option<usize>,
    full: mpsc::SyncSender<Piece>,
    empty: mpsc::Receiver<Vec<u8>>,
    /// Buffers handed over and not hashed yet, and how many mean the other thread is behind.
    queued: &'a AtomicUsize,
    keeping_up: usize,
}

/// The hashing thread keeps up while fewer buffers than this wait for it.
const KEEPING_UP: usize = 3;

impl<'a> Chunks<'a> {
    fn new(
        full: mpsc::SyncSender<Piece>,
        empty: mpsc::Receiver<Vec<u8>>,
        queued: &'a AtomicUsize,
        keeping_up: usize,
    ) -> Chunks<'a> {
        Chunks {
            buf: vec![0; CHUNK],
            filled: 0,
            spans: Vec::new(),
            file_from: None,
            full,
            empty,
            queued,
            keeping_up,
        }
    }

    /// Hands over what is buffered.
    fn send(&mut self) -> io::Result<()> {
        if let Some(from) = self.file_from.replace(0) {
            self.spans.push(Span {
                from,
                to: self.filled,
                ends: Ends::Not,
            });
        } else if self.filled == 0 && self.spans.is_empty() {
            return Ok(());
        }
        let next = self.empty.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
        let full = std::mem::replace(&mut self.buf, next);
        let filled = std::mem::take(&mut self.filled);
        let spans = std::mem::take(&mut self.spans);
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.full
            .send(Piece::Bytes(full, filled, spans))
            .map_err(|_| io::Error::other("the NAR hasher stopped"))
    }

    fn free(&mut self) -> io::Result<&mut [u8]> {
        if self.filled == CHUNK {
            self.send()?;
        }
        Ok(&mut self.buf[self.filled..])
    }
}

impl Sink for Chunks<'_> {
    fn mark(&mut self, offset: u64) -> io::Result<()> {
        self.send()?;
        self.full
            .send(Piece::Mark(offset))
            .map_err(|_| io::Error::other("the NAR hasher stopped"))
    }

    fn file_starts(&mut self) -> bool {
        if self.queued.load(Ordering::Relaxed) >= self.keeping_up {
            return false;
        }
        self.file_from = Some(self.filled);
        true
    }

    fn file_ends(&mut self) {
        let from = self.file_from.take().expect("a file's end after its start");
        self.spans.push(Span {
            from,
            to: self.filled,
            ends: Ends::File,
        });
    }

    fn file_hashed(&mut self, content: crate::tree::Hash) {
        self.spans.push(Span {
            from: self.filled,
            to: self.filled,
            ends: Ends::Hashed(content),
        });
    }
}

impl Out for Chunks<'_> {
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
    /// How much NAR came before what is written next.
    offset: u64,
    /// The NAR before this offset is not written (another pass hashed it).
    skip_to: u64,
    mark_every: u64,
    last_mark: u64,
    contents: Contents,
    /// With [`Unknown`] contents: each file's stamp and executable bit as read, in NAR order.
    found: Vec<(Stamp, bool)>,
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

impl<S: Sink> NarWriter<'_, S> {
    fn raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let end = self.offset + bytes.len() as u64;
        if end > self.skip_to {
            let from = self.skip_to.saturating_sub(self.offset) as usize;
            self.out.put(&bytes[from..]).map_err(|e| self.at.io(e))?;
        }
        self.offset = end;
        Ok(())
    }

    fn str(&mut self, s: &[u8]) -> Result<(), Error> {
        put_str(s, &mut |b| self.raw(b))
    }

    /// A regular file's NAR up to its bytes.
    fn file_head(&mut self, executable: bool, size: u64) -> Result<(), Error> {
        self.str(b"regular")?;
        if executable {
            self.str(b"executable")?;
            self.str(b"")?;
        }
        self.str(b"contents")?;
        self.raw(&size.to_le_bytes())
    }

    /// A regular file's NAR after its `size` bytes went out.
    fn file_tail(&mut self, size: u64) -> Result<(), Error> {
        self.offset += size;
        self.raw(&[0; 8][..padding(size)])
    }

    fn node(&mut self, node: &Node) -> Result<(), Error> {
        if self.offset < self.skip_to {
            let len = nar_len(node);
            if self.offset + len <= self.skip_to {
                self.offset += len;
                return Ok(());
            }
        } else if self.offset - self.last_mark >= self.mark_every {
            self.out.mark(self.offset).map_err(|e| self.at.io(e))?;
            self.last_mark = self.offset;
        }
        self.str(b"(")?;
        self.str(b"type")?;
        match node {
            Node::Symlink(s) => {
                self.str(b"symlink")?;
                self.str(b"target")?;
                self.str(&s.target)?;
            }
            Node::File(f) if self.contents == Known => {
                self.file_head(f.executable(), f.size())?;
                // A mark is a node's start, so a file is written whole or skipped whole.
                debug_assert!(self.offset >= self.skip_to);
                self.at.contents(f, &mut *self.out)?;
                self.file_tail(f.size())?;
            }
            // Its size and mode are what the file has as opened: the walk did not stat it.
            Node::File(_) => {
                let f = self.at.open_unknown()?;
                self.file_head(f.executable, f.stamp.size)?;
                if self.out.file_starts() {
                    self.at.contents_unknown(&f, &mut *self.out, |_| {})?;
                    self.out.file_ends();
                } else {
                    let mut content = blake3::Hasher::new();
                    self.at.contents_unknown(&f, &mut *self.out, |b| {
                        content.update(b);
                    })?;
                    self.out.file_hashed(*content.finalize().as_bytes());
                }
                self.file_tail(f.stamp.size)?;
                self.found.push((f.stamp, f.executable));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Filter, Scanner};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn scan(dir: &std::path::Path) -> Snapshot {
        Scanner::new(dir, Filter::All).scan().unwrap()
    }

    #[test]
    fn a_hash_resumed_from_a_memo_is_the_hash_of_the_whole_nar_after_every_kind_of_edit() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        for i in 0..40 {
            let sub = d.join(format!("d{:02}", i % 8));
            fs::create_dir_all(&sub).unwrap();
            // Large enough that the NAR has marks in it.
            fs::write(sub.join(format!("f{i:02}")), vec![i as u8; 60_000]).unwrap();
        }
        std::os::unix::fs::symlink("d00", d.join("link")).unwrap();
        let (first, mut memo) = nar_info_since(&scan(d), None).unwrap();
        assert_eq!(first, nar_info(&scan(d)).unwrap());
        assert!(memo.marks.len() > 4, "{} marks", memo.marks.len());
        let x = |p: &str| d.join(p);
        let edits: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| fs::write(x("d05/f13"), b"edited").unwrap()),
            Box::new(|| fs::write(x("d00/f00"), b"first file").unwrap()),
            Box::new(|| fs::write(x("d07/f39"), b"last file").unwrap()),
            Box::new(|| {
                fs::set_permissions(x("d03/f11"), fs::Permissions::from_mode(0o755)).unwrap()
            }),
            Box::new(|| fs::write(x("d04/new"), b"added").unwrap()),
            Box::new(|| fs::remove_file(x("d02/f10")).unwrap()),
            Box::new(|| fs::rename(x("d06/f14"), x("d06/g14")).unwrap()),
            Box::new(|| {
                fs::remove_file(x("link")).unwrap();
                std::os::unix::fs::symlink("d01", x("link")).unwrap();
            }),
            Box::new(|| fs::create_dir(x("aaa")).unwrap()),
            Box::new(|| {}),
        ];
        for (i, edit) in edits.iter().enumerate() {
            edit();
            let snapshot = scan(d);
            let (resumed, next) = nar_info_since(&snapshot, Some(&memo)).unwrap();
            assert_eq!(resumed, nar_info(&snapshot).unwrap(), "edit {i}");
            memo = next;
        }
    }

    #[test]
    fn one_reading_pass_gives_the_nar_and_the_snapshot_that_two_passes_give() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        for i in 0..30 {
            let sub = d.join(format!("d{}", i % 4));
            fs::create_dir_all(&sub).unwrap();
            fs::write(sub.join(format!("f{i}")), vec![i as u8; 1000 * i]).unwrap();
        }
        // Files across buffers, and between them.
        fs::write(d.join("d2/large"), vec![9; 3 * CHUNK + 5]).unwrap();
        fs::write(d.join("d2/large2"), vec![8; CHUNK]).unwrap();
        fs::set_permissions(d.join("d1/f1"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("d0", d.join("link")).unwrap();
        let two = scan(d);
        let unread = Scanner::new(d, Filter::All).unread().scan().unwrap();
        // Every file hashed by the reading thread, by the hashing one, and as it comes.
        for keeping_up in [0, usize::MAX, KEEPING_UP] {
            let (one, info) = reading(&unread, keeping_up).unwrap();
            assert_eq!(info, nar_info(&two).unwrap(), "{keeping_up}");
            assert_eq!(one.basename(), two.basename(), "{keeping_up}");
            // The filled-in snapshot is a snapshot like any other: its files prove their bytes.
            assert_eq!(nar_info(&one).unwrap(), info, "{keeping_up}");
        }
    }

    #[test]
    fn a_file_changed_after_the_walk_is_taken_as_the_pass_reads_it_in_the_tree_and_the_nar() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), b"before").unwrap();
        let unread = Scanner::new(t.path(), Filter::All).unread().scan().unwrap();
        fs::write(t.path().join("f"), b"after, and longer").unwrap();
        fs::set_permissions(t.path().join("f"), fs::Permissions::from_mode(0o755)).unwrap();
        let (read, info) = nar_info_reading(&unread).unwrap();
        let now = scan(t.path());
        assert_eq!(info, nar_info(&now).unwrap());
        assert_eq!(read.basename(), now.basename());
    }

    #[test]
    fn a_file_gone_after_the_walk_is_unstable_never_hashed() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), b"before").unwrap();
        let unread = Scanner::new(t.path(), Filter::All).unread().scan().unwrap();
        fs::remove_file(t.path().join("f")).unwrap();
        assert!(matches!(
            nar_info_reading(&unread),
            Err(Error::Unstable { .. })
        ));
    }
}
