//! Directory trees that others write into, walked and changed without ever leaving them.
//!
//! A cache volume is written by builds: anything in it may be a symlink, a FIFO, a read-only
//! directory, a tree thousands of levels deep, or be swapped for any of these between two looks.
//! Everything srcstore does in such a tree goes through [`Tree`], the way everything it does in
//! a project goes through `worktree`:
//!
//! - the root is opened once, without following a symlink anywhere in its path; every later
//!   step is relative to a descriptor srcstore holds, one component at a time, `O_NOFOLLOW`,
//!   and never onto another filesystem (a directory whose device is not the root's is not
//!   entered): nothing is resolved by path twice;
//! - entries are removed with `unlinkat` relative to the descriptor of the directory that holds
//!   them, and `unlinkat` never follows a link;
//! - a directory its owner cannot write or list (a build made it so) is opened `O_PATH`, its
//!   mode changed through that very descriptor, and only then reopened through it;
//! - files are read only when they are regular, opened without following a link and without
//!   waiting, up to a bound;
//! - at most [`MAX_DEPTH`] directories are open at once; a removal that meets a deeper tree
//!   first moves that subtree up (a rename within the tree) and takes it from there.
//!
//! So nothing a writer does inside the tree makes srcstore read, change or remove anything
//! outside it.

use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Stat};
use rustix::io::Errno;

/// Directories open at once, at most: the depth a walk enters.
pub const MAX_DEPTH: usize = 64;

/// How often a removal lists a directory again that a writer keeps filling.
const MAX_RETRIES: u32 = 64;

/// A directory tree, held open by its root's descriptor.
#[derive(Debug)]
pub struct Tree {
    path: PathBuf,
    fd: OwnedFd,
    dev: u64,
}

/// What an entry is, never looked through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A FIFO, a socket or a device node.
    Special,
}

impl Kind {
    fn of(st: &Stat) -> Kind {
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Special,
        }
    }

    /// The word for it in messages.
    pub fn word(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Special => "FIFO, socket or device",
        }
    }
}

/// One entry a walk met.
#[derive(Debug)]
pub struct Entry<'a> {
    /// Its place below the root.
    pub rel: &'a Path,
    pub kind: Kind,
    /// Bytes allocated to it on disk.
    pub bytes: u64,
    /// Its last use: the later of its modification and access times, in seconds.
    pub used: i64,
    /// Its inode number, for [`Tree::remove`] to tell it from what a writer put there since.
    pub ino: u64,
    /// A directory the walk did not enter: too deep, or closed to its owner.
    pub unentered: bool,
}

/// What a removal took away.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub entries: u64,
    pub bytes: u64,
}

impl std::ops::AddAssign for Removed {
    fn add_assign(&mut self, other: Removed) {
        self.entries += other.entries;
        self.bytes += other.bytes;
    }
}

/// Why [`Tree::read_file`] read nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("a {} where a regular file should be; not read", .0.word())]
    NotRegular(Kind),
    #[error("{0} bytes, more than the {1} read here")]
    TooLarge(u64, u64),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Tree {
    /// Opens the directory at `path` with no symlink followed anywhere in it; it must be this
    /// process's user's.
    pub fn open(path: &Path) -> io::Result<Tree> {
        let at = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let fd = rustix::fs::openat2(
            rustix::fs::CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| at(e.into()))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| at(e.into()))?;
        let me = rustix::process::geteuid().as_raw();
        if st.st_uid != me {
            return Err(at(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("owned by uid {}, not by uid {me}", st.st_uid),
            )));
        }
        Ok(Tree {
            path: path.to_path_buf(),
            fd,
            dev: st.st_dev,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root's descriptor, for making entries beneath it.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The directory `name` right below the root, as a tree of its own.
    pub fn subtree(&self, name: &str) -> io::Result<Tree> {
        let path = self.path.join(name);
        let c = cstr(name.as_bytes())?;
        let fd = writable_dir(self.fd.as_fd(), &c, self.dev)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Tree {
            path,
            fd,
            dev: self.dev,
        })
    }

    /// The names and kinds of the entries right below the root.
    pub fn list(&self) -> io::Result<Vec<(String, Kind)>> {
        let mut out = Vec::new();
        for name in names(self.fd.as_fd())? {
            let Ok(st) = statat(self.fd.as_fd(), &name) else {
                continue;
            };
            out.push((
                String::from_utf8_lossy(name.to_bytes()).into_owned(),
                Kind::of(&st),
            ));
        }
        Ok(out)
    }

    /// Calls `visit` for every entry below the root, each directory before what it holds,
    /// entering at most [`MAX_DEPTH`] levels. An entry that goes away meanwhile is passed over.
    pub fn walk(&self, visit: &mut dyn FnMut(&Entry)) -> io::Result<()> {
        self.walk_events(&mut |event| {
            if let Event::Entry(e) = event {
                visit(&e);
            }
        })
    }

    /// Removes every directory below the root that holds nothing, deepest first.
    pub fn prune_empty_dirs(&self) -> io::Result<Removed> {
        let mut removed = Removed::default();
        self.walk_events(&mut |event| {
            let Event::Left { parent, name } = event else {
                return;
            };
            let Ok(st) = statat(parent, name) else {
                return;
            };
            // Not empty (a writer's, or holding what was kept): left, as it should be.
            if rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR).is_ok() {
                removed += one(&st);
            }
        })?;
        Ok(removed)
    }

    /// Removes the entry at `rel` (a directory with everything in it) if it is still the inode
    /// `ino` a walk saw there; nothing if something else stands there now.
    pub fn remove(&self, rel: &Path, ino: u64) -> io::Result<Removed> {
        let mut parent: Option<OwnedFd> = None;
        let mut components = rel.components().peekable();
        let mut last = None;
        while let Some(c) = components.next() {
            let Component::Normal(name) = c else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: not a place below the tree", rel.display()),
                ));
            };
            let name = cstr(name.as_bytes())?;
            if components.peek().is_none() {
                last = Some(name);
                break;
            }
            let at = parent.as_ref().map_or(self.fd.as_fd(), |p| p.as_fd());
            match writable_dir(at, &name, self.dev) {
                Ok(fd) => parent = Some(fd),
                // Not what the walk saw there any more: nothing of it to remove.
                Err(e) if changed(&e) => return Ok(Removed::default()),
                Err(e) => return Err(e),
            }
        }
        let Some(name) = last else {
            return Ok(Removed::default());
        };
        // The root's own descriptor lists it; a write bit it lacks, `unlink` gives back.
        let parent = parent.as_ref().map_or(self.fd.as_fd(), |p| p.as_fd());
        match statat(parent, &name) {
            Ok(st) if st.st_ino == ino => remove_entry(parent, &name, &st, self.dev),
            _ => Ok(Removed::default()),
        }
    }

    /// Removes everything below the root, of every kind, keeping the root.
    pub fn clear(&self) -> io::Result<Removed> {
        let root = self.fd.as_fd();
        let mut removed = Removed::default();
        for name in names(root)? {
            if let Ok(st) = statat(root, &name) {
                removed += remove_entry(root, &name, &st, self.dev)?;
            }
        }
        Ok(removed)
    }

    /// The regular file at `rel`, at most `max` bytes of it: opened with no link followed and
    /// no mount crossed, looked at before it is read, never waited on (a FIFO is reported, not
    /// opened for reading).
    pub fn read_file(&self, rel: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
        let handle = rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            BENEATH,
        )
        .map_err(io::Error::from)?;
        let st = rustix::fs::fstat(&handle).map_err(io::Error::from)?;
        match Kind::of(&st) {
            Kind::File => {}
            other => return Err(ReadError::NotRegular(other)),
        }
        let size = st.st_size as u64;
        if size > max {
            return Err(ReadError::TooLarge(size, max));
        }
        // The same inode the handle holds, now opened to read.
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(proc_fd(&handle))?;
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(max + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > max {
            return Err(ReadError::TooLarge(bytes.len() as u64, max));
        }
        Ok(bytes)
    }

    fn walk_events(&self, visit: &mut dyn FnMut(Event)) -> io::Result<()> {
        struct Level {
            fd: OwnedFd,
            rel: PathBuf,
            name: CString,
            names: std::vec::IntoIter<CString>,
        }
        let root = rustix::fs::openat(&self.fd, c".", READ_DIR, Mode::empty())?;
        let names = names(root.as_fd())?;
        let mut stack = vec![Level {
            fd: root,
            rel: PathBuf::new(),
            name: CString::default(),
            names: names.into_iter(),
        }];
        loop {
            let depth = stack.len();
            let Some(level) = stack.last_mut() else {
                break;
            };
            let Some(name) = level.names.next() else {
                let done = stack.pop().expect("a level is there");
                if let Some(parent) = stack.last() {
                    visit(Event::Left {
                        parent: parent.fd.as_fd(),
                        name: &done.name,
                    });
                }
                continue;
            };
            let Ok(st) = statat(level.fd.as_fd(), &name) else {
                continue;
            };
            let rel = level.rel.join(OsStr::from_bytes(name.to_bytes()));
            let kind = Kind::of(&st);
            let entered = match kind {
                Kind::Dir if depth <= MAX_DEPTH => {
                    enter(level.fd.as_fd(), &name, &st, self.dev).ok()
                }
                _ => None,
            };
            visit(Event::Entry(Entry {
                rel: &rel,
                kind,
                bytes: allocated(&st),
                used: st.st_mtime.max(st.st_atime),
                ino: st.st_ino,
                unentered: kind == Kind::Dir && entered.is_none(),
            }));
            if let Some((fd, names)) = entered {
                stack.push(Level {
                    fd,
                    rel,
                    name,
                    names: names.into_iter(),
                });
            }
        }
        Ok(())
    }
}

enum Event<'a> {
    Entry(Entry<'a>),
    /// A directory's entries are all visited.
    Left {
        parent: BorrowedFd<'a>,
        name: &'a CStr,
    },
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

const READ_DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a name"))
}

/// Bytes allocated to an entry on disk.
fn allocated(st: &Stat) -> u64 {
    st.st_blocks as u64 * 512
}

fn statat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// The names in the directory `dir`, without `.` and `..`.
fn names(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            out.push(name);
        }
    }
    Ok(out)
}

/// `/proc/self/fd/N`: the very inode `fd` holds, for the calls that take no descriptor.
fn proc_fd(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens the directory `name` in `dir` to list it, if it is still the one `seen` describes and
/// on the tree's filesystem; its names.
fn enter(
    dir: BorrowedFd<'_>,
    name: &CStr,
    seen: &Stat,
    dev: u64,
) -> io::Result<(OwnedFd, Vec<CString>)> {
    let fd = rustix::fs::openat(dir, name, READ_DIR, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    if st.st_ino != seen.st_ino || st.st_dev != dev {
        return Err(Errno::XDEV.into());
    }
    let names = names(fd.as_fd())?;
    Ok((fd, names))
}

/// Opens the directory `name` in `dir` to change it: no link followed, on the tree's
/// filesystem, and, where its owner may not list or write it, made so through its own `O_PATH`
/// descriptor first.
fn writable_dir(dir: BorrowedFd<'_>, name: &CStr, dev: u64) -> io::Result<OwnedFd> {
    let handle = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&handle)?;
    if st.st_dev != dev {
        return Err(Errno::XDEV.into());
    }
    if st.st_mode & 0o700 != 0o700 {
        // Through the handle's own inode: the name may lead elsewhere by now, the handle not.
        rustix::fs::chmod(
            proc_fd(&handle),
            Mode::from_raw_mode((st.st_mode & 0o7777) | 0o700),
        )?;
    }
    Ok(rustix::fs::openat(&handle, c".", READ_DIR, Mode::empty())?)
}

/// Removes `name` from `dir`: a directory with everything below it. A writer may change the
/// tree meanwhile: an entry gone is passed over, a directory swapped for a link or a file is
/// removed as that (the link itself, never what it names).
fn remove_entry(dir: BorrowedFd<'_>, name: &CStr, st: &Stat, dev: u64) -> io::Result<Removed> {
    if Kind::of(st) != Kind::Dir {
        return unlink(dir, name, st);
    }
    let mut removed = Removed::default();
    let Some(top) = to_empty(dir, name, dev, &mut removed)? else {
        return Ok(removed);
    };
    // Directories being emptied: each with its name in the one above.
    let mut stack: Vec<(OwnedFd, CString)> = vec![(top, name.into())];
    let mut retries = 0;
    let mut moved = 0u64;
    while let Some((fd, _)) = stack.last() {
        let mut deeper = None;
        for child in names(fd.as_fd())? {
            let Ok(st) = statat(fd.as_fd(), &child) else {
                continue;
            };
            if Kind::of(&st) != Kind::Dir {
                removed += unlink(fd.as_fd(), &child, &st)?;
                continue;
            }
            if stack.len() < MAX_DEPTH {
                match to_empty(fd.as_fd(), &child, dev, &mut removed)? {
                    Some(next) => {
                        deeper = Some((next, child));
                        break;
                    }
                    None => continue,
                }
            }
            // Too deep to hold open: moved up into the directory being removed, taken later.
            moved += 1;
            let up = cstr(format!(".srcstore-deep-{}-{moved}", std::process::id()).as_bytes())?;
            match rustix::fs::renameat_with(fd, &child, &stack[0].0, &up, RenameFlags::NOREPLACE) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(next) = deeper {
            stack.push(next);
            continue;
        }
        let (fd, child) = stack.pop().expect("a level is there");
        drop(fd);
        let above = stack.last().map_or(dir, |(fd, _)| fd.as_fd());
        let Ok(st) = statat(above, &child) else {
            continue;
        };
        match unlink(above, &child, &st) {
            Ok(r) => removed += r,
            // A writer added to it meanwhile: empty it again, a bounded number of times.
            Err(e)
                if Errno::from_io_error(&e) == Some(Errno::NOTEMPTY) && retries < MAX_RETRIES =>
            {
                retries += 1;
                if let Some(again) = to_empty(above, &child, dev, &mut removed)? {
                    stack.push((again, child));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// The directory `name` in `dir`, opened to be emptied; `None` if it is gone, or was swapped
/// for something else, which is then removed itself.
fn to_empty(
    dir: BorrowedFd<'_>,
    name: &CStr,
    dev: u64,
    removed: &mut Removed,
) -> io::Result<Option<OwnedFd>> {
    match writable_dir(dir, name, dev) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if Errno::from_io_error(&e) == Some(Errno::NOENT) => Ok(None),
        Err(e) => match changed(&e) {
            true => {
                if let Ok(st) = statat(dir, name) {
                    if Kind::of(&st) != Kind::Dir {
                        *removed += unlink(dir, name, &st)?;
                    }
                }
                Ok(None)
            }
            false => Err(e),
        },
    }
}

/// Whether `e`, from opening a directory a walk saw, says a writer changed it since: it is
/// gone, or something else (a link, a file, another filesystem's directory) stands there now.
fn changed(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV)
    )
}

/// Removes the entry `name` of `dir` that `st` describes; nothing if it is gone.
fn unlink(dir: BorrowedFd<'_>, name: &CStr, st: &Stat) -> io::Result<Removed> {
    let flags = match Kind::of(st) {
        Kind::Dir => AtFlags::REMOVEDIR,
        _ => AtFlags::empty(),
    };
    let mut unlinked = rustix::fs::unlinkat(dir, name, flags);
    if unlinked == Err(Errno::ACCESS) {
        // A writer took the write bit away again: given back through the descriptor.
        let mode = rustix::fs::fstat(dir)?.st_mode & 0o7777;
        rustix::fs::fchmod(dir, Mode::from_raw_mode(mode | 0o700))?;
        unlinked = rustix::fs::unlinkat(dir, name, flags);
    }
    match unlinked {
        Ok(()) => Ok(one(st)),
        Err(Errno::NOENT) => Ok(Removed::default()),
        Err(e) => Err(e.into()),
    }
}

fn one(st: &Stat) -> Removed {
    Removed {
        entries: 1,
        bytes: allocated(st),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tree() -> (tempfile::TempDir, Tree) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let tree = Tree::open(&root).unwrap();
        (t, tree)
    }

    fn mkfifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    }

    fn walked(tree: &Tree) -> Vec<(String, Kind, bool)> {
        let mut seen = Vec::new();
        tree.walk(&mut |e| {
            seen.push((e.rel.display().to_string(), e.kind, e.unentered));
        })
        .unwrap();
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        seen
    }

    #[test]
    fn a_walk_lists_links_and_fifos_as_what_they_are_and_never_enters_a_link() {
        let (t, tree) = tree();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("precious"), "x").unwrap();
        symlink(&outside, tree.path().join("link")).unwrap();
        mkfifo(&tree.path().join("fifo"));
        fs::create_dir(tree.path().join("d")).unwrap();
        fs::write(tree.path().join("d/f"), "y").unwrap();
        assert_eq!(
            walked(&tree),
            [
                ("d".into(), Kind::Dir, false),
                ("d/f".into(), Kind::File, false),
                ("fifo".into(), Kind::Special, false),
                ("link".into(), Kind::Symlink, false),
            ]
        );
    }

    #[test]
    fn clear_empties_every_kind_of_entry_and_read_only_directories_but_nothing_a_link_names() {
        let (t, tree) = tree();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("precious"), "x").unwrap();
        let ro = tree.path().join("ro");
        fs::create_dir_all(ro.join("sub")).unwrap();
        fs::write(ro.join("sub/f"), "y").unwrap();
        symlink(&outside, ro.join("sub/out")).unwrap();
        symlink("../../../outside/precious", ro.join("rel")).unwrap();
        fs::write(tree.path().join("empty"), "").unwrap();
        mkfifo(&tree.path().join("fifo"));
        for (dir, mode) in [(ro.join("sub"), 0o500), (ro.clone(), 0o000)] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        }
        let removed = tree.clear().unwrap();
        assert_eq!(removed.entries, 7, "ro, sub, f, out, rel, empty, fifo");
        assert_eq!(fs::read_dir(tree.path()).unwrap().count(), 0);
        assert_eq!(fs::read_to_string(outside.join("precious")).unwrap(), "x");
    }

    #[test]
    fn a_tree_deeper_than_the_descriptors_held_is_removed_whole() {
        let (_t, tree) = tree();
        let mut deep = tree.path().join("top");
        for _ in 0..(3 * MAX_DEPTH) {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("f"), "z").unwrap();
        let seen = walked(&tree);
        assert!(
            seen.iter().any(|(_, _, unentered)| *unentered),
            "too deep to enter"
        );
        let top = fs::symlink_metadata(tree.path().join("top")).unwrap();
        let removed = tree
            .remove(Path::new("top"), std::os::unix::fs::MetadataExt::ino(&top))
            .unwrap();
        assert_eq!(removed.entries, 3 * MAX_DEPTH as u64 + 2);
        assert_eq!(fs::read_dir(tree.path()).unwrap().count(), 0);
    }

    #[test]
    fn remove_takes_only_the_inode_the_walk_saw() {
        let (_t, tree) = tree();
        fs::write(tree.path().join("f"), "old").unwrap();
        let mut ino = 0;
        tree.walk(&mut |e| ino = e.ino).unwrap();
        fs::remove_file(tree.path().join("f")).unwrap();
        fs::write(tree.path().join("g"), "pad").unwrap();
        fs::write(tree.path().join("f"), "new").unwrap();
        let now = fs::symlink_metadata(tree.path().join("f")).unwrap();
        if std::os::unix::fs::MetadataExt::ino(&now) != ino {
            assert_eq!(
                tree.remove(Path::new("f"), ino).unwrap(),
                Removed::default()
            );
            assert!(tree.path().join("f").exists());
        }
        assert!(tree.remove(Path::new("../f"), ino).is_err());
    }

    #[test]
    fn a_file_is_read_only_when_regular_and_small_enough() {
        let (_t, tree) = tree();
        fs::write(tree.path().join("counts"), "{}").unwrap();
        assert_eq!(tree.read_file(Path::new("counts"), 16).unwrap(), b"{}");
        assert!(matches!(
            tree.read_file(Path::new("counts"), 1),
            Err(ReadError::TooLarge(2, 1))
        ));
        symlink("/dev/zero", tree.path().join("zero")).unwrap();
        assert!(tree.read_file(Path::new("zero"), 16).is_err());
        mkfifo(&tree.path().join("fifo"));
        assert!(matches!(
            tree.read_file(Path::new("fifo"), 16),
            Err(ReadError::NotRegular(Kind::Special))
        ));
    }

    #[test]
    fn prune_removes_empty_directories_and_keeps_the_rest() {
        let (_t, tree) = tree();
        fs::create_dir_all(tree.path().join("a/b/c")).unwrap();
        fs::create_dir_all(tree.path().join("k")).unwrap();
        fs::write(tree.path().join("k/f"), "").unwrap();
        tree.prune_empty_dirs().unwrap();
        assert!(!tree.path().join("a").exists());
        assert!(tree.path().join("k/f").exists());
        assert!(tree.path().exists());
    }
}
