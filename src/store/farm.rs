//! A snapshot made into a store path: real directories and symlinks, and files hard-linked
//! from the blobs in `.links`, every one with the metadata Nix gives a store path (files 0444
//! or 0555, directories 0555, mtime 1, owned by root). Only a file whose content the store has
//! no blob of is copied, its bytes proven to be the snapshot's as they are copied, and then
//! becomes a blob itself.
//!
//! Everything is made beneath a descriptor of the store directory, one component at a time:
//! `mkdirat`, `openat(O_CREAT | O_EXCL | O_NOFOLLOW)`, `symlinkat`, `linkat` with no flag (a
//! link is never followed), so nothing another user put in the store can redirect a write.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::blobs::Blobs;
use super::Progress;
use crate::nar::FileNarHash;
use crate::tree::{File, Node};
use crate::worktree::cursor::Cursor;
use crate::worktree::verify::Out;
use crate::{Error, Snapshot};

/// What making a path took.
#[derive(Debug, Default, Clone, Copy)]
pub struct Made {
    /// Files hard-linked from a blob the store had.
    pub linked: u64,
    /// Files copied, and their bytes.
    pub copied: u64,
    pub copied_bytes: u64,
    pub dirs: u64,
}

struct Farm<'a> {
    at: Cursor<'a>,
    links: BorrowedFd<'a>,
    progress: &'a Progress,
    blobs: &'a mut Blobs,
    made: Made,
    buf: Vec<u8>,
}

/// Nix's timestamp for everything in the store.
const ONE: Timestamps = Timestamps {
    last_access: Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    },
    last_modification: Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    },
};

/// Where a farm is made.
pub(super) struct At<'a> {
    /// The store directory.
    pub store: BorrowedFd<'a>,
    /// Its `.links`, where the blobs are.
    pub links: BorrowedFd<'a>,
    /// Told of every file made.
    pub progress: &'a Progress,
}

/// Makes `snapshot` as the entry `name` of the store directory, linking from and adding to the
/// blobs in `.links`. On an error, what was made is left for the caller to remove.
pub(super) fn make(
    snapshot: &Snapshot,
    at: At<'_>,
    name: &str,
    blobs: &mut Blobs,
) -> Result<Made, Error> {
    let mut farm = Farm {
        at: Cursor::new(snapshot),
        links: at.links,
        progress: at.progress,
        blobs,
        made: Made::default(),
        buf: vec![0; 256 << 10],
    };
    farm.node(snapshot.tree(), at.store, name.as_bytes())?;
    Ok(farm.made)
}

impl Farm<'_> {
    fn node(&mut self, node: &Node, parent: BorrowedFd<'_>, name: &[u8]) -> Result<(), Error> {
        let io = |e: Errno| self.at.io(e.into());
        match node {
            Node::Symlink(s) => {
                rustix::fs::symlinkat(s.target.as_ref(), parent, name).map_err(io)?;
                rustix::fs::utimensat(parent, name, &ONE, AtFlags::SYMLINK_NOFOLLOW).map_err(io)?;
            }
            Node::File(f) => self.file(f, parent, name)?,
            Node::Dir(d) => {
                rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)).map_err(io)?;
                let dir = open_dir(parent, name).map_err(io)?;
                self.at.open_dir()?;
                for e in d.entries.iter() {
                    let back = self.at.enter(&e.name);
                    self.node(&e.node, dir.as_fd(), &e.name)?;
                    self.at.leave(back);
                }
                self.at.close_dir();
                let io = |e: Errno| self.at.io(e.into());
                rustix::fs::fchmod(&dir, Mode::from_raw_mode(0o555)).map_err(io)?;
                rustix::fs::futimens(&dir, &ONE).map_err(io)?;
                self.made.dirs += 1;
            }
        }
        Ok(())
    }

    fn file(&mut self, f: &File, parent: BorrowedFd<'_>, name: &[u8]) -> Result<(), Error> {
        let mut full = false;
        if let Some(blob) = self.blobs.name(&f.content, f.executable()) {
            match rustix::fs::linkat(self.links, blob.as_str(), parent, name, AtFlags::empty()) {
                Ok(()) => {
                    self.made.linked += 1;
                    self.progress.made(0);
                    return Ok(());
                }
                // The collector took the blob (no path linked to it): a copy, the new blob.
                Err(Errno::NOENT) => {}
                // As many links as the filesystem allows (65,000 on ext4): a copy, which
                // becomes the blob later paths link to.
                Err(Errno::MLINK) => full = true,
                Err(e) => return Err(self.at.io(e.into())),
            }
        }
        let io = |e: io::Error| self.at.io(e);
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io(e.into()))?;
        let mut copy = Copy {
            file: fs::File::from(fd),
            buf: std::mem::take(&mut self.buf),
            nar: FileNarHash::new(f.executable(), f.size()),
        };
        let copied = self.at.contents(f, &mut copy);
        self.buf = std::mem::take(&mut copy.buf);
        copied?;
        let mode = if f.executable() { 0o555 } else { 0o444 };
        rustix::fs::fchmod(&copy.file, Mode::from_raw_mode(mode)).map_err(|e| io(e.into()))?;
        rustix::fs::futimens(&copy.file, &ONE).map_err(|e| io(e.into()))?;
        self.made.copied += 1;
        self.made.copied_bytes += f.size();
        self.progress.made(f.size());
        let nar = copy.nar.finish();
        let blob = crate::nixhash::base32(&nar);
        let linked = match full {
            false => rustix::fs::linkat(parent, name, self.links, blob.as_str(), AtFlags::empty()),
            true => self.replace_blob(parent, name, &blob),
        };
        match linked {
            // Already there (put by Nix's optimiser): the name says it holds these bytes all
            // the same.
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io(e.into())),
        }
        self.blobs
            .insert(f.content, f.executable(), nar)
            .map_err(|e| Error::io(std::path::PathBuf::from(".links"), e))
    }

    /// Makes the new file `name` in `parent` the blob `blob` in place of one that has as many
    /// links as the filesystem allows: linked at a name of its own, then renamed over it. Paths linked to the old inode
    /// keep it; the content is the same, the NAR hash of the new file's own bytes names it.
    fn replace_blob(&self, parent: BorrowedFd<'_>, name: &[u8], blob: &str) -> Result<(), Errno> {
        let temp = format!(".srcstore-{}-{blob}", std::process::id());
        match rustix::fs::unlinkat(self.links, temp.as_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
        rustix::fs::linkat(parent, name, self.links, temp.as_str(), AtFlags::empty())?;
        rustix::fs::renameat(self.links, temp.as_str(), self.links, blob)
    }
}

/// A new file in the store, and the NAR hash that will name it as a blob.
struct Copy {
    file: fs::File,
    buf: Vec<u8>,
    nar: FileNarHash,
}

impl Out for Copy {
    fn room(&mut self) -> io::Result<&mut [u8]> {
        Ok(&mut self.buf)
    }

    fn filled(&mut self, n: usize) -> io::Result<()> {
        self.nar.update(&self.buf[..n]);
        self.file.write_all(&self.buf[..n])
    }
}

/// Opens `name` below `dir` as a directory, never through a link.
pub(super) fn open_dir(
    dir: BorrowedFd<'_>,
    name: impl rustix::path::Arg,
) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Filter, Scanner};
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::process::Command;

    /// A small ext4 filesystem of its own, mounted for one test, so that its link limit is
    /// reached without touching the machine's.
    struct Ext4 {
        _dir: tempfile::TempDir,
        mnt: std::path::PathBuf,
    }

    impl Ext4 {
        fn new() -> Ext4 {
            let dir = tempfile::tempdir().unwrap();
            let image = dir.path().join("image");
            let mnt = dir.path().join("mnt");
            fs::create_dir(&mnt).unwrap();
            fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
            run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
            run(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mnt));
            Ext4 { _dir: dir, mnt }
        }
    }

    impl Drop for Ext4 {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.mnt).status();
        }
    }

    fn run(c: &mut Command) {
        let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
        assert!(
            out.status.success(),
            "{c:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ino(p: &Path) -> u64 {
        fs::symlink_metadata(p).unwrap().ino()
    }

    #[test]
    fn a_blob_at_the_filesystems_link_limit_is_copied_once_and_the_copy_is_linked_from_then_on() {
        let fs4 = Ext4::new();
        let store = fs4.mnt.join("store");
        fs::create_dir_all(store.join(".links")).unwrap();
        let fill = fs4.mnt.join("fill");
        fs::create_dir(&fill).unwrap();
        let project = tempfile::tempdir().unwrap();
        fs::write(project.path().join("__init__.py"), b"# a package\n").unwrap();
        let snapshot = Scanner::new(project.path(), Filter::All).scan().unwrap();
        let mut blobs = Blobs::open(&fs4.mnt.join("blobs")).unwrap();
        let dir = |p: &Path| open_dir(rustix::fs::CWD, p).unwrap();
        let (store_fd, links) = (dir(&store), dir(&store.join(".links")));
        let progress = Progress::default();
        let mut publish = |name: &str| {
            let at = At {
                store: store_fd.as_fd(),
                links: links.as_fd(),
                progress: &progress,
            };
            make(&snapshot, at, name, &mut blobs).unwrap()
        };

        let first = publish("p0");
        assert_eq!((first.copied, first.linked), (1, 0));
        let blob = fs::read_dir(store.join(".links"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .next()
            .unwrap();
        assert_eq!(ino(&blob), ino(&store.join("p0/__init__.py")));
        // ext4's limit is 65,000 links: the path's and the blob's own name, and the rest here.
        for i in 0..64_998 {
            fs::hard_link(&blob, fill.join(i.to_string())).unwrap();
        }
        assert_eq!(fs::metadata(&blob).unwrap().nlink(), 65_000);

        let full = publish("p1");
        assert_eq!((full.copied, full.linked), (1, 0), "a full blob is copied");
        assert_ne!(
            ino(&store.join("p1/__init__.py")),
            ino(&store.join("p0/__init__.py"))
        );
        assert_eq!(
            ino(&blob),
            ino(&store.join("p1/__init__.py")),
            "the copy is the blob now"
        );
        let after = publish("p2");
        assert_eq!(
            (after.copied, after.linked),
            (0, 1),
            "later paths link to the copy"
        );
        assert_eq!(ino(&store.join("p2/__init__.py")), ino(&blob));
        for p in ["p0", "p1", "p2"] {
            assert_eq!(
                fs::read(store.join(p).join("__init__.py")).unwrap(),
                b"# a package\n"
            );
        }
        let names: Vec<_> = fs::read_dir(store.join(".links")).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary name is left in .links");
    }
}
