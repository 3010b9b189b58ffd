//! The FUSE request handlers.

use std::ffi::OsStr;
use std::hash::{Hash, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry,
    ReplyOpen, Request,
};

use crate::attr::{self, FOREVER, ROOT_ENTRY};
use crate::inodes::{At, Found, Inodes, Place};
use crate::{Kind, Source};

/// A [`Source`] as a FUSE filesystem.
pub struct View<S: Source> {
    source: S,
    inodes: Inodes<S::Node>,
    uid: u32,
    gid: u32,
    /// The kernel agreed to send no open/opendir (so none are answered with ENOSYS otherwise).
    zero_message_opens: AtomicBool,
    /// The root's mtime, counting changes of the set of names it lists: with zero-message
    /// opens the kernel caches every directory listing, the root's too, until it sees the
    /// directory's mtime change. (A hash of the names, and the count.)
    root_generation: Mutex<(u64, u64)>,
    /// The root listing's offsets: each name at the root gets the next serial when first seen,
    /// and a listing resumes after the serial it stopped at. Offsets into the list of names
    /// of the moment would skip or repeat a name when a tree comes or goes between two
    /// `READDIR`s of one listing.
    root_serials: Mutex<RootSerials>,
    /// The names at the root the kernel was given (by a lookup or a listing) and may still
    /// hold, with every entry below them: [`crate::Mounted::forget_gone_roots`] tells it to
    /// drop those no longer served.
    handed: Handed,
}

/// Root names handed to the kernel, shared with [`crate::Mounted`].
pub(crate) type Handed = Arc<Mutex<std::collections::HashSet<Vec<u8>>>>;

#[derive(Default)]
struct RootSerials {
    next: u64,
    of: std::collections::HashMap<Vec<u8>, u64>,
}

impl<S: Source> View<S> {
    pub fn new(source: S, uid: u32, gid: u32) -> Self {
        View {
            source,
            inodes: Inodes::new(),
            uid,
            gid,
            zero_message_opens: AtomicBool::new(false),
            root_generation: Mutex::new((0, 0)),
            root_serials: Mutex::default(),
            handed: Handed::default(),
        }
    }

    /// The root names handed to the kernel, as they are handed.
    pub(crate) fn handed(&self) -> Handed {
        self.handed.clone()
    }

    /// How many inodes the kernel holds, kept current.
    pub(crate) fn held(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.inodes.held()
    }

    /// Where `node` sits when handed to the kernel under `parent` (see [`crate::inodes`]).
    fn place(&self, parent: INodeNo, node: &S::Node) -> Place {
        Place {
            parent: parent.0,
            id: self.source.id(node),
            is_dir: self.source.kind(node) == Kind::Dir,
        }
    }

    /// The trees at the root in the order of their serials, each with the offset that comes
    /// after it (never 1 or 2, which are "." and ".."), from the one after `offset` on.
    fn roots_after(&self, offset: u64) -> Vec<(u64, crate::Root<S::Node>)> {
        let roots = self.source.roots();
        let mut serials = self.root_serials.lock().unwrap();
        let RootSerials { next, of } = &mut *serials;
        of.retain(|name, _| roots.iter().any(|r| &r.name == name));
        let mut listed: Vec<(u64, crate::Root<S::Node>)> = roots
            .into_iter()
            .map(|r| {
                let serial = *of.entry(r.name.clone()).or_insert_with(|| {
                    *next += 1;
                    *next
                });
                (serial + 2, r)
            })
            .filter(|(off, _)| *off > offset)
            .collect();
        listed.sort_by_key(|(off, _)| *off);
        listed
    }

    fn attr_of(&self, ino: u64, node: &S::Node) -> fuser::FileAttr {
        attr::of(INodeNo(ino), self.source.kind(node), self.uid, self.gid)
    }

    fn root_attr(&self) -> fuser::FileAttr {
        let mut names = std::collections::hash_map::DefaultHasher::new();
        for r in self.source.roots() {
            r.name.hash(&mut names);
        }
        let names = names.finish();
        let generation = {
            let mut g = self.root_generation.lock().unwrap();
            if g.0 != names {
                *g = (names, g.1 + 1);
            }
            g.1
        };
        let mut attr = attr::of(INodeNo::ROOT, Kind::Dir, self.uid, self.gid);
        attr.mtime = UNIX_EPOCH + Duration::from_secs(1 + generation);
        attr.ctime = attr.mtime;
        attr
    }

    /// Hands `node` (found at `found`, below `parent`) to the kernel under its name for
    /// `entry_ttl`. Its attributes are cached for good: a node's attributes never change.
    fn enter(
        &self,
        parent: INodeNo,
        node: &S::Node,
        found: impl FnOnce() -> At<S::Node>,
        entry_ttl: Duration,
        reply: ReplyEntry,
    ) {
        let ino = self.inodes.enter(self.place(parent, node), node, found);
        let attr = self.attr_of(ino, node);
        reply.entry_with_ttls(&FOREVER, &entry_ttl, &attr, Generation(0));
    }

    /// Records that the root name `name` is in the kernel's hands.
    fn hand(&self, name: &[u8]) {
        self.handed.lock().unwrap().insert(name.to_vec());
    }

    /// One `READDIRPLUS` entry: a lookup the kernel will forget, taken back if the reply has no
    /// room for it. `false` when it had none.
    fn add_plus(
        &self,
        reply: &mut ReplyDirectoryPlus,
        parent: INodeNo,
        offset: u64,
        name: &OsStr,
        node: &S::Node,
        found: impl FnOnce() -> At<S::Node>,
    ) -> bool {
        let entry_ttl = if parent == INodeNo::ROOT {
            ROOT_ENTRY
        } else {
            FOREVER
        };
        let ino = self.inodes.enter(self.place(parent, node), node, found);
        let attr = self.attr_of(ino, node);
        if reply.add(attr.ino, offset, name, &entry_ttl, &attr, Generation(0)) {
            self.inodes.forget(ino, 1);
            return false;
        }
        true
    }

    /// Where `node`, an entry named `name` of `dir`, is found: a directory by its own path,
    /// anything else by `dir` (see [`crate::inodes`]).
    fn below(&self, dir: &Arc<Found<S::Node>>, name: &[u8], node: &S::Node) -> At<S::Node> {
        match self.source.kind(node) {
            Kind::Dir => At::Path(join(&dir.path, name)),
            _ => At::In(dir.clone()),
        }
    }

    /// The path of `node`, found at `at`, for a read: an entry's name is looked up again in
    /// its directory (a scan of its entries, small beside the read and proof of the bytes that
    /// follow, and only on a page-cache miss).
    fn path_of(&self, node: &S::Node, at: At<S::Node>) -> Option<Arc<[u8]>> {
        let dir = match at {
            At::Path(path) => return Some(path),
            At::In(dir) => dir,
        };
        let id = self.source.id(node);
        let mut path = None;
        self.source.list(&dir.node, 0, &mut |name, entry| {
            if self.source.id(entry) == id {
                path = Some(join(&dir.path, name));
            }
            path.is_none()
        });
        path
    }
}

fn join(parent: &[u8], name: &[u8]) -> Arc<[u8]> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    if !parent.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p.into()
}

impl<S: Source> Filesystem for View<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let zero = InitFlags::FUSE_NO_OPEN_SUPPORT | InitFlags::FUSE_NO_OPENDIR_SUPPORT;
        let ok = config.add_capabilities(zero).is_ok();
        self.zero_message_opens.store(ok, Ordering::Relaxed);
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        // Requests stay within the readahead window the kernel offers (its 128 KiB default;
        // fuser cannot ask for more). A 1 MiB window (sysfs `read_ahead_kb` of the mount's
        // bdi) was measured to change nothing: the two copies of each byte dominate.
        tracing::debug!("zero-message opens: {ok}");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.as_bytes();
        if parent == INodeNo::ROOT {
            return match self.source.roots().into_iter().find(|r| r.name == name) {
                Some(r) => {
                    self.hand(&r.name);
                    let found = || At::Path(r.path.into());
                    self.enter(parent, &r.node, found, ROOT_ENTRY, reply)
                }
                None => reply.error(Errno::ENOENT),
            };
        }
        let Some(dir) = self.inodes.dir(parent.0) else {
            return reply.error(Errno::ENOENT);
        };
        match self.source.child(&dir.node, name) {
            Some(child) => {
                let found = || self.below(&dir, name, &child);
                self.enter(parent, &child, found, FOREVER, reply)
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT {
            // Not zero: every path walk through the mount checks the root's permissions, so a
            // zero TTL cost a GETATTR round trip per `open`. One a second lets the kernel see
            // the mtime move when trees come and go, and drop its cached root listing.
            return reply.attr(&ROOT_ENTRY, &self.root_attr());
        }
        match self.inodes.get(ino.0) {
            Some((node, _)) => reply.attr(&FOREVER, &self.attr_of(ino.0, &node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// Nothing is ever written, so there is nothing to flush. ENOSYS, answered here without the
    /// library's warning, tells the kernel never to send one again: answering "done" instead
    /// would cost a round trip on every `close`.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// A snapshot holds no extended attributes (Nix stores none); ENOSYS, as for `flush`, stops
    /// the kernel asking.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.inodes.get(ino.0) {
            Some((node, _)) => reply.data(&self.source.read_link(&node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.zero_message_opens.load(Ordering::Relaxed) {
            reply.error(Errno::ENOSYS);
        } else {
            reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.zero_message_opens.load(Ordering::Relaxed) {
            reply.error(Errno::ENOSYS);
        } else {
            reply.opened(FileHandle(0), FopenFlags::empty());
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some((node, at)) = self.inodes.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let Some(path) = self.path_of(&node, at) else {
            return reply.error(Errno::ENOENT);
        };
        match self.source.read(&node, &path, offset, size) {
            Ok(bytes) => reply.data(&bytes),
            Err(crate::Unproven) => reply.error(Errno::EIO),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // Offsets: 1 is ".", 2 is "..", 3 + i is entry i.
        let dots = [(1, "."), (2, "..")];
        for (off, name) in dots.into_iter().skip(offset.min(2) as usize) {
            if reply.add(ino, off, fuser::FileType::Directory, name) {
                return reply.ok();
            }
        }
        let from = offset.saturating_sub(2) as usize;
        if ino == INodeNo::ROOT {
            for (off, r) in self.roots_after(offset) {
                let kind = attr::file_type(self.source.kind(&r.node));
                if reply.add(
                    INodeNo(self.inodes.peek(self.place(ino, &r.node))),
                    off,
                    kind,
                    OsStr::from_bytes(&r.name),
                ) {
                    break;
                }
            }
            return reply.ok();
        }
        let Some((dir, _)) = self.inodes.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let mut i = from;
        self.source.list(&dir, from, &mut |name, node| {
            let kind = attr::file_type(self.source.kind(node));
            let number = INodeNo(self.inodes.peek(self.place(ino, node)));
            let full = reply.add(number, 3 + i as u64, kind, OsStr::from_bytes(name));
            i += 1;
            !full
        });
        reply.ok();
    }

    /// Like `readdir`, with each entry's attributes: the kernel makes the dentries and inodes
    /// from the listing, so the `LOOKUP` round trip per entry that a walk would otherwise cost
    /// (`find | xargs cat` over a cold view) is gone. Every entry handed over is one lookup
    /// the kernel will forget, except "." and "..", which it never links.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let dir = if ino == INodeNo::ROOT {
            None
        } else {
            match self.inodes.dir(ino.0) {
                Some(dir) => Some(dir),
                None => return reply.error(Errno::ENOENT),
            }
        };
        let own = match &dir {
            Some(d) => self.attr_of(ino.0, &d.node),
            None => self.root_attr(),
        };
        let dots = [(1, "."), (2, "..")];
        for (off, name) in dots.into_iter().skip(offset.min(2) as usize) {
            if reply.add(ino, off, name, &FOREVER, &own, Generation(0)) {
                return reply.ok();
            }
        }
        let from = offset.saturating_sub(2) as usize;
        let Some(dir) = dir else {
            for (off, r) in self.roots_after(offset) {
                self.hand(&r.name);
                let name = OsStr::from_bytes(&r.name);
                let found = || At::Path(r.path.clone().into());
                if !self.add_plus(&mut reply, ino, off, name, &r.node, found) {
                    break;
                }
            }
            return reply.ok();
        };
        let mut off = 3 + from as u64;
        self.source.list(&dir.node, from, &mut |name, node| {
            let found = || self.below(&dir, name, node);
            let name = OsStr::from_bytes(name);
            off += 1;
            self.add_plus(&mut reply, ino, off - 1, name, node, found)
        });
        reply.ok();
    }
}
