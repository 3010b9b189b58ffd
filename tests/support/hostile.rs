//! A hostile srcstore view: a FUSE server in a thread of the test process that lists itself in
//! the mount table as a view (`srcstore:<socket>`) and answers whatever an attacker would, and
//! a control socket that grants every pin without looking.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
    SessionACL,
};

/// A snapshot-shaped hash: 32 characters of Nix's base-32 alphabet.
pub const HASH: &str = "0m7w1q1c0m7w1q1c0m7w1q1c0m7w1q1c";
/// What the directory form of the entry holds in its one file, `file`.
pub const DECOY: &str = "decoy served by the view\n";

/// The snapshot entry's name at the view's root.
pub fn entry() -> String {
    format!("{HASH}-x")
}

/// What the root's one entry, [`entry`], is.
#[derive(Clone, Debug)]
pub enum Serve {
    /// A symlink to this path.
    Symlink(PathBuf),
    /// A directory holding `file` ([`DECOY`]).
    Dir,
    /// A directory for the first `LOOKUP` of the name, a symlink to this path for every later
    /// one (nothing is cached: every answer has a zero TTL).
    FlipAfterFirst(PathBuf),
    /// Directory and symlink to this path by turns, on every `LOOKUP` of the name and every
    /// `GETATTR` of the directory.
    Alternate(PathBuf),
    /// A directory whose `file` holds other bytes (of the same length) on every read, none
    /// of them cached by the kernel.
    Shifting,
    /// A directory whose `file` is never read: a read waits two minutes, then fails.
    Stalled,
    /// A directory whose `file` says it holds a terabyte (of zeros).
    Huge,
}

const ROOT: u64 = 1;
const DIR: u64 = 2;
const FILE: u64 = 3;
const LINK: u64 = 4;
const NOTHING_CACHED: Duration = Duration::ZERO;

struct HostileFs {
    serve: Serve,
    lookups: Arc<AtomicU64>,
    dir_getattrs: AtomicU64,
    reads: AtomicU64,
    /// Every `READ` the kernel sent.
    reads_seen: Arc<AtomicU64>,
}

/// The size [`Serve::Huge`]'s file claims.
const HUGE: u64 = 1 << 40;

impl HostileFs {
    fn target(&self) -> Option<&Path> {
        match &self.serve {
            Serve::Dir | Serve::Shifting | Serve::Stalled | Serve::Huge => None,
            Serve::Symlink(t) | Serve::FlipAfterFirst(t) | Serve::Alternate(t) => Some(t),
        }
    }

    /// The inode the `n`th (0-based) lookup of the entry answers with.
    fn entry_ino(&self, n: u64) -> u64 {
        match self.serve {
            Serve::Dir | Serve::Shifting | Serve::Stalled | Serve::Huge => DIR,
            Serve::Symlink(_) => LINK,
            Serve::FlipAfterFirst(_) => {
                if n == 0 {
                    DIR
                } else {
                    LINK
                }
            }
            Serve::Alternate(_) => {
                if n % 2 == 0 {
                    DIR
                } else {
                    LINK
                }
            }
        }
    }

    fn attr(&self, ino: u64, kind: FileType) -> FileAttr {
        let (perm, size) = match kind {
            FileType::Directory => (0o555, 0),
            FileType::Symlink => (
                0o777,
                self.target().map_or(0, |t| t.as_os_str().len() as u64),
            ),
            _ => match self.serve {
                Serve::Huge => (0o444, HUGE),
                _ => (0o444, DECOY.len() as u64),
            },
        };
        let time = UNIX_EPOCH + Duration::from_secs(1);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        }
    }

    fn attr_of(&self, ino: u64) -> Option<FileAttr> {
        let kind = match ino {
            ROOT => FileType::Directory,
            DIR => match self.serve {
                Serve::Alternate(_) => {
                    if self.dir_getattrs.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                        FileType::Directory
                    } else {
                        FileType::Symlink
                    }
                }
                _ => FileType::Directory,
            },
            FILE => FileType::RegularFile,
            LINK => FileType::Symlink,
            _ => return None,
        };
        Some(self.attr(ino, kind))
    }
}

impl Filesystem for HostileFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = match (parent.0, name.as_bytes()) {
            (ROOT, n) if n == entry().as_bytes() => {
                self.entry_ino(self.lookups.fetch_add(1, Ordering::SeqCst))
            }
            (DIR, b"file") => FILE,
            _ => return reply.error(Errno::ENOENT),
        };
        let kind = match ino {
            DIR => FileType::Directory,
            FILE => FileType::RegularFile,
            _ => FileType::Symlink,
        };
        reply.entry(&NOTHING_CACHED, &self.attr(ino, kind), Generation(0));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Some(attr) => reply.attr(&NOTHING_CACHED, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        match self.target() {
            Some(t) => reply.data(t.as_os_str().as_bytes()),
            None => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let flags = match self.serve {
            Serve::Shifting => FopenFlags::FOPEN_DIRECT_IO,
            _ => FopenFlags::empty(),
        };
        reply.opened(FileHandle(0), flags);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
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
        if ino.0 != FILE {
            return reply.error(Errno::EISDIR);
        }
        self.reads_seen.fetch_add(1, Ordering::SeqCst);
        let mut bytes = DECOY.as_bytes().to_vec();
        match self.serve {
            Serve::Huge => return reply.data(&vec![0; size as usize]),
            Serve::Shifting => {
                bytes[0] = b'a' + (self.reads.fetch_add(1, Ordering::SeqCst) % 26) as u8
            }
            Serve::Stalled => {
                std::thread::sleep(Duration::from_secs(120));
                return reply.error(Errno::EIO);
            }
            _ => {}
        }
        let start = (offset as usize).min(bytes.len());
        let end = (start + size as usize).min(bytes.len());
        reply.data(&bytes[start..end]);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries: Vec<(u64, FileType, String)> = match ino.0 {
            ROOT => {
                let shown = self.entry_ino(self.lookups.load(Ordering::SeqCst));
                let kind = if shown == DIR {
                    FileType::Directory
                } else {
                    FileType::Symlink
                };
                vec![
                    (ROOT, FileType::Directory, ".".into()),
                    (ROOT, FileType::Directory, "..".into()),
                    (shown, kind, entry()),
                ]
            }
            DIR => vec![
                (DIR, FileType::Directory, ".".into()),
                (ROOT, FileType::Directory, "..".into()),
                (FILE, FileType::RegularFile, "file".into()),
            ],
            _ => return reply.error(Errno::ENOTDIR),
        };
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// A hostile FUSE view mounted at `mountpoint`, unmounted (lazily) when dropped.
pub struct HostileView {
    pub mountpoint: PathBuf,
    lookups: Arc<AtomicU64>,
    reads: Arc<AtomicU64>,
    ended: mpsc::Receiver<()>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl HostileView {
    /// Mounts a view serving `serve` at `mountpoint` (which must exist), read-only, open to
    /// every user, with `srcstore:<socket>` as its source.
    pub fn mount(mountpoint: &Path, socket: &Path, serve: Serve) -> HostileView {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::RO,
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::DefaultPermissions,
            MountOption::FSName(format!("srcstore:{}", socket.to_str().unwrap())),
        ];
        config.acl = SessionACL::All;
        let lookups = Arc::new(AtomicU64::new(0));
        let reads_seen = Arc::new(AtomicU64::new(0));
        let fs = HostileFs {
            serve,
            lookups: lookups.clone(),
            dir_getattrs: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            reads_seen: reads_seen.clone(),
        };
        let session = fuser::Session::new(fs, mountpoint, &config)
            .unwrap_or_else(|e| panic!("mounting a FUSE view at {mountpoint:?}: {e}"));
        let (done, ended) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("hostile-fuse".into())
            .spawn(move || {
                let result = session.run();
                let _ = done.send(());
                result
            })
            .unwrap();
        HostileView {
            mountpoint: mountpoint.to_path_buf(),
            lookups,
            reads: reads_seen,
            ended,
            thread: Some(thread),
        }
    }

    /// `<mountpoint>/<entry>`: the snapshot path a derivation names.
    pub fn snapshot(&self) -> PathBuf {
        self.mountpoint.join(entry())
    }

    /// How many reads of a file the kernel asked for.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// How many times the kernel looked the entry up.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::SeqCst)
    }
}

impl Drop for HostileView {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
        // The session ends once nothing holds the filesystem any more. A clone of one of its
        // directories mounted elsewhere, or a copy of the mount in a mount namespace made
        // meanwhile (a concurrent build's), keeps it alive: the connection then ends with this
        // process.
        if self.ended.recv_timeout(Duration::from_secs(5)).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// A control socket that answers every request line with one reply (`{"ok":true,"pin":7}`
/// unless told otherwise), and records what it was sent.
pub struct PinServer {
    pub path: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PinServer {
    pub fn start(path: &Path) -> PinServer {
        PinServer::answering(path, "{\"ok\":true,\"pin\":7}")
    }

    /// A server answering every line with `reply`.
    pub fn answering(path: &Path, reply: &'static str) -> PinServer {
        let listener = UnixListener::bind(path).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut writer = match stream.try_clone() {
                        Ok(w) => w,
                        Err(_) => continue,
                    };
                    for line in BufReader::new(stream).lines() {
                        let Ok(line) = line else { break };
                        requests.lock().unwrap().push(line);
                        if writer.write_all(format!("{reply}\n").as_bytes()).is_err() {
                            break;
                        }
                    }
                }
            })
        };
        PinServer {
            path: path.to_path_buf(),
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// Every request line received so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for PinServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
