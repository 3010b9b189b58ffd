//! A snapshot kept current from inotify, and the set of snapshots being served.
//!
//! One updater thread owns the change queue: it waits for events, lets a burst settle, applies
//! it with [`Scanner::update`] and publishes the result. Readers never wait for it: they clone
//! the snapshots they need out of [`Live::served`]. [`Live::sync`] is how a caller gets a
//! snapshot that includes every change made before the call: it creates a cookie file and
//! waits until the updater has processed the cookie's event, which inotify delivers after every
//! event queued before it on the same instance (Watchman's technique).
//!
//! Cookies are never made in the project: they go to a directory of the view's own outside it
//! ([`Config::cookie_dir`]), watched on the same inotify instance, so that no snapshot can hold
//! one (with `--no-ignore` a snapshot takes everything, `.git` too) and nothing a user of the
//! project plants can redirect the write. They are created beneath that directory's descriptor
//! with `O_CREAT | O_EXCL | O_NOFOLLOW`, under names drawn from a random key, and removed
//! beneath it too (`unlinkat` never follows a link).

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use notify::event::{DataChange, EventKind, Flag, ModifyKind};
use notify::{EventKindMask, RecursiveMode, Watcher};
use rustix::fs::{AtFlags, Mode, OFlags};

use crate::tree::Node;
use crate::worktree::verify::{ReadError, Reader};
use crate::{Changes, Error, Filter, Scanner, Snapshot};

/// How a live view is set up.
#[derive(Clone, Debug)]
pub struct Config {
    pub filter: Filter,
    pub name: Option<String>,
    /// How long a burst of events may go quiet before it is applied.
    pub settle: Duration,
    /// How many superseded snapshots stay served besides the pinned ones.
    pub keep: usize,
    /// Where the sync cookies go: a directory outside the project that only this view uses,
    /// in a directory only this user can write (the daemon gives one per project in its runtime
    /// directory). Made if missing (mode 0700), refused unless it is this user's and private,
    /// and emptied of an earlier run's cookies. `None`: a fresh one in the system's temporary
    /// directory, removed with the view.
    pub cookie_dir: Option<PathBuf>,
}

/// Why the live view stopped on its own.
#[derive(Debug)]
pub enum Stopped {
    ProjectGone(PathBuf),
    WatcherFailed(String),
}

/// Why [`Live::sync`] gives no snapshot. Each names what it is about and what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SyncError {
    /// The newest changes cannot be made into a snapshot (a file Nix cannot store, …).
    #[error("{0}")]
    Update(Arc<Error>),
    #[error("{}: cannot create sync cookie: {cause}", dir.display())]
    Cookie {
        dir: PathBuf,
        cause: Arc<std::io::Error>,
    },
    #[error("{}: the watcher did not see a change within {waited:.0?}; is the project directory still there?", dir.display())]
    Unseen { dir: PathBuf, waited: Duration },
    #[error("{moving}; still so after {waited:.0?}: `path` answers once it has settled")]
    Moving {
        moving: Arc<Error>,
        waited: Duration,
    },
    #[error("{}: still bringing the snapshot up to date after {waited:.0?} (an update running for {running:.0?}, {entries} entries looked at so far); `srcstore status` shows its progress; ask again", dir.display())]
    Busy {
        dir: PathBuf,
        waited: Duration,
        running: Duration,
        entries: u64,
    },
    #[error("{}: not a directory of the snapshot (missing, ignored, or not a directory)", path.display())]
    NotADirectory { path: PathBuf },
}

/// Counters for `srcstore status`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub updates: u64,
    pub rescans: u64,
    pub last_update_us: u64,
    pub stale_reads: u64,
    pub torn_reads: u64,
}

/// Something a subscriber (the watch loop) wants to know.
#[derive(Clone, Debug)]
pub enum Event {
    /// A new current snapshot.
    Snapshot(String),
    /// A read of a served snapshot failed because its file changed.
    ReadFailed { path: PathBuf, torn: bool },
}

#[derive(Default)]
struct AtomicCounters {
    updates: AtomicU64,
    rescans: AtomicU64,
    last_update_us: AtomicU64,
    stale_reads: AtomicU64,
    torn_reads: AtomicU64,
}

struct State {
    current: Snapshot,
    /// Superseded snapshots, newest first.
    kept: VecDeque<Snapshot>,
    pins: HashMap<u64, Pin>,
    /// Subdirectories served as snapshots of their own (`srcstore path --sub`).
    subtrees: std::collections::BTreeSet<Vec<u8>>,
    /// Why the newest changes could not be made into a snapshot (a fifo appeared, …).
    error: Option<Arc<Error>>,
    /// Why the newest changes are not in a snapshot yet although nothing is wrong: a file
    /// vanished or kept changing while it was hashed, and the updater goes again once the
    /// burst has settled.
    moving: Option<Arc<Error>>,
}

struct Pin {
    snapshot: Snapshot,
    expires: Option<Instant>,
    /// Released as soon as this path is gone (the chroot of the build it serves).
    until_gone: Option<PathBuf>,
}

struct Shared {
    dir: PathBuf,
    config: Config,
    state: RwLock<State>,
    cookies: Arc<Cookies>,
    next_id: AtomicU64,
    counters: AtomicCounters,
    subscribers: Mutex<Vec<mpsc::Sender<Event>>>,
    reader: Reader,
    /// Files seen with more than one link: re-stat-ed on every sync (see [`Live::sync`]).
    links: crate::scan::Links,
    /// When the update running now started, and how many entries it has looked at.
    busy: Mutex<Option<Instant>>,
    progress: Arc<AtomicU64>,
}

/// The cookies whose callers are waiting (and only those: a caller that gives up takes its own
/// out), and the condition they sleep on.
struct Cookies {
    dir: CookieDir,
    waiting: Mutex<HashMap<Vec<u8>, Seen>>,
    changed: Condvar,
}

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Seen {
    /// Created; the watcher has not delivered its event yet.
    Made,
    /// Its event is in the updater's queue, behind the events before it.
    Queued,
    /// The updater has applied every event before it.
    Done,
}

impl Cookies {
    /// The watcher delivered `name`'s event.
    fn queued(&self, name: &[u8]) {
        if let Some(s @ Seen::Made) = self.waiting.lock().unwrap().get_mut(name) {
            *s = Seen::Queued;
        }
    }

    /// The updater applied every event before these cookies'; cookies nobody waits for any
    /// more are not kept.
    fn done(&self, names: &[Vec<u8>]) {
        let mut waiting = self.waiting.lock().unwrap();
        for name in names {
            if let Some(s) = waiting.get_mut(name) {
                *s = Seen::Done;
            }
        }
        self.changed.notify_all();
    }

    /// Whether anyone still waits for `name`.
    fn awaited(&self, name: &[u8]) -> bool {
        self.waiting.lock().unwrap().contains_key(name)
    }
}

/// A directory of the live view's own for its cookies, held open: every cookie is created and
/// removed beneath this descriptor, never through a path a project user could redirect.
struct CookieDir {
    path: PathBuf,
    fd: OwnedFd,
    parent: OwnedFd,
    name: Box<[u8]>,
    key: [u8; 32],
    next: AtomicU64,
}

impl CookieDir {
    fn open(wanted: Option<&Path>) -> Result<CookieDir, Error> {
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut r| r.read_exact(&mut key))
            .map_err(|e| Error::io("/dev/urandom", e))?;
        let (parent, name) = match wanted {
            Some(p) => match (p.parent(), p.file_name()) {
                (Some(parent), Some(name)) => (parent.to_path_buf(), name.as_bytes().to_vec()),
                _ => {
                    return Err(Error::io(
                        p,
                        std::io::Error::other("not a directory to make cookies in"),
                    ))
                }
            },
            None => {
                let tag = blake3::keyed_hash(&key, b"directory").to_hex();
                let name = format!("srcstore-cookies-{}", &tag[..24]);
                (std::env::temp_dir(), name.into_bytes())
            }
        };
        let parent = std::fs::canonicalize(&parent).map_err(|e| Error::io(&parent, e))?;
        let path = parent.join(OsStr::from_bytes(&name));
        let io = |e: rustix::io::Errno| Error::io(&path, e.into());
        let parent_fd = rustix::fs::open(
            &parent,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(&parent, e.into()))?;
        match rustix::fs::mkdirat(&parent_fd, &*name, Mode::RWXU) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io(e)),
        }
        let fd = rustix::fs::openat(
            &parent_fd,
            &*name,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(io)?;
        let st = rustix::fs::fstat(&fd).map_err(io)?;
        if st.st_uid != rustix::process::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
            return Err(Error::io(
                &path,
                std::io::Error::other(
                    "not a private directory of this user's; remove it and start again",
                ),
            ));
        }
        // An earlier run's cookies (names only: unlinking never follows a link).
        let mut buf = vec![std::mem::MaybeUninit::uninit(); 8192];
        let mut old = Vec::new();
        let mut listing = rustix::fs::RawDir::new(&fd, &mut buf);
        while let Some(Ok(entry)) = listing.next() {
            let n = entry.file_name().to_bytes();
            if n != b"." && n != b".." {
                old.push(n.to_vec());
            }
        }
        for n in old {
            let _ = rustix::fs::unlinkat(&fd, n.as_slice(), AtFlags::empty());
        }
        Ok(CookieDir {
            path,
            fd,
            parent: parent_fd,
            name: name.into(),
            key,
            next: AtomicU64::new(0),
        })
    }

    /// A name no one can guess ahead of time.
    fn fresh_name(&self) -> Vec<u8> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let tag = blake3::keyed_hash(&self.key, &n.to_le_bytes()).to_hex();
        tag[..32].as_bytes().to_vec()
    }

    fn create(&self, name: &[u8]) -> std::io::Result<()> {
        let flags = OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::WRONLY
            | OFlags::CLOEXEC
            | OFlags::NOCTTY;
        rustix::fs::openat(&self.fd, name, flags, Mode::RUSR | Mode::WUSR)?;
        Ok(())
    }

    fn remove(&self, name: &[u8]) {
        let _ = rustix::fs::unlinkat(&self.fd, name, AtFlags::empty());
    }

    /// The cookie a watcher event names, if it is one of this directory's.
    fn cookie_of<'p>(&self, path: &'p Path) -> Option<&'p [u8]> {
        let rest = path.strip_prefix(&self.path).ok()?.as_os_str().as_bytes();
        (!rest.is_empty() && !rest.contains(&b'/')).then_some(rest)
    }
}

impl Drop for CookieDir {
    fn drop(&mut self) {
        // Only ever empty by now; a directory someone else filled stays.
        let _ = rustix::fs::unlinkat(&self.parent, &*self.name, AtFlags::REMOVEDIR);
    }
}

/// How long `sync` waits beyond its timeout for an update that is still running (a long scan),
/// before it gives up and says what it waits for; below a client's patience for an answer.
const BUSY_LIMIT: Duration = Duration::from_secs(50);

/// A running live view; dropping it stops the watcher and the updater.
pub struct Live {
    shared: Arc<Shared>,
    _watcher: Arc<Mutex<notify::RecommendedWatcher>>,
    /// Changes no watcher reports (an edit through another link), put in the updater's queue
    /// ahead of the cookie that follows them.
    inject: Mutex<mpsc::Sender<notify::Result<notify::Event>>>,
}

impl Live {
    /// Scans `dir` (with `previous` from the index when there is one), watches every directory
    /// the snapshot keeps, and starts the updater. `on_stop` is told if the view stops by itself.
    pub fn start(
        dir: &Path,
        config: Config,
        previous: Option<crate::tree::Node>,
        on_stop: mpsc::Sender<Stopped>,
    ) -> Result<Live, Error> {
        let (tx, rx) = mpsc::channel();
        let cookies = Arc::new(Cookies {
            dir: CookieDir::open(config.cookie_dir.as_deref())?,
            waiting: Mutex::default(),
            changed: Condvar::new(),
        });
        let inject = tx.clone();
        let seen = cookies.clone();
        let handler = move |ev: notify::Result<notify::Event>| {
            // A waiter learns at once that its cookie reached the queue (the watcher works),
            // however long the update ahead of it takes.
            if let Ok(ev) = &ev {
                if matches!(ev.kind, EventKind::Create(_)) {
                    for name in ev.paths.iter().filter_map(|p| seen.dir.cookie_of(p)) {
                        seen.queued(name);
                    }
                }
            }
            let _ = tx.send(ev);
        };
        let mask = EventKindMask::CORE | EventKindMask::ACCESS_CLOSE;
        let watcher = notify::RecommendedWatcher::new(
            handler,
            notify::Config::default().with_event_kinds(mask),
        )
        .map_err(|e| watch_error(dir, e))?;
        let watcher = Arc::new(Mutex::new(watcher));
        let hook = dir_hook(&watcher);
        let links = crate::scan::Links::default();
        // A file that keeps changing while the first scan hashes it is waited for a little, as
        // an update waits for a burst to settle; one that never stops is reported.
        let mut attempt = 0;
        let snapshot = loop {
            let scan = Scanner::new(dir, config.filter)
                .name(config.name.clone())
                .previous(previous.clone())
                .on_dir(hook.clone())
                .links(links.clone())
                .scan();
            match scan {
                Err(e) if e.is_transient() && attempt < 8 && dir.is_dir() => {
                    tracing::debug!("{e}; scanning again once it settles");
                    std::thread::sleep(Duration::from_millis(50 << attempt.min(4)));
                    attempt += 1;
                }
                other => break other?,
            }
        };
        hook(dir)?;
        // After the project's: a watch limit reached is then, most likely, named for the project.
        hook(&cookies.dir.path)?;
        // The repository's `info/exclude` is in no snapshot, but its rules decide what is.
        let exclude_dir = dir.join(".git/info");
        if config.filter == Filter::Ignore && exclude_dir.is_dir() {
            hook(&exclude_dir)?;
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            reader: Reader::new(&snapshot),
            state: RwLock::new(State {
                current: snapshot,
                kept: VecDeque::new(),
                pins: HashMap::new(),
                subtrees: Default::default(),
                error: None,
                moving: None,
            }),
            config,
            cookies,
            next_id: AtomicU64::new(1),
            counters: AtomicCounters::default(),
            subscribers: Mutex::default(),
            links,
            busy: Mutex::default(),
            progress: Arc::default(),
        });
        let updater = Updater {
            shared: shared.clone(),
            hook,
            on_stop,
        };
        std::thread::Builder::new()
            .name("srcstore-updater".into())
            .spawn(move || updater.run(rx))
            .map_err(|e| Error::io(dir, e))?;
        Ok(Live {
            shared,
            _watcher: watcher,
            inject: Mutex::new(inject),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn current(&self) -> Snapshot {
        self.shared.state.read().unwrap().current.clone()
    }

    /// The current snapshot including every change made before this call.
    ///
    /// "Made before" covers every change an inotify watch on the project's directories reports,
    /// and edits through another name of a file with several links (inside the project or
    /// outside it), which raise no event here: those files are stat-ed again on every call.
    /// What no watcher and no stat can see is a write through a shared mapping (`mmap`) that is
    /// still open: it changes neither the file's times nor its size until the mapping is
    /// written back, so the answer may be a snapshot whose bytes that write has since changed
    /// (its reads then fail rather than serve other bytes).
    ///
    /// The watcher must deliver the call's cookie within `timeout`; an update still running
    /// then (a long scan) is waited for, up to [`BUSY_LIMIT`], and a tree that keeps moving (a
    /// file written again every time it is hashed) up to `timeout`; past those the error says
    /// what it waits for.
    pub fn sync(&self, timeout: Duration) -> Result<Snapshot, SyncError> {
        self.settle(timeout)?;
        let state = self.shared.state.read().unwrap();
        match &state.error {
            Some(e) => Err(SyncError::Update(e.clone())),
            None => Ok(state.current.clone()),
        }
    }

    /// Returns once the updater has applied every change made before the call (see
    /// [`Live::sync`]).
    fn settle(&self, timeout: Duration) -> Result<(), SyncError> {
        self.recheck_links();
        let cookies = &self.shared.cookies;
        let name = cookies.dir.fresh_name();
        cookies
            .waiting
            .lock()
            .unwrap()
            .insert(name.clone(), Seen::Made);
        if let Err(e) = cookies.dir.create(&name) {
            cookies.waiting.lock().unwrap().remove(&name);
            return Err(SyncError::Cookie {
                dir: cookies.dir.path.clone(),
                cause: Arc::new(e),
            });
        }
        let started = Instant::now();
        let mut waiting = cookies.waiting.lock().unwrap();
        let outcome = loop {
            let seen = waiting.get(&name).copied().unwrap_or(Seen::Done);
            if seen == Seen::Done {
                break Ok(());
            }
            let elapsed = started.elapsed();
            let limit = match (seen, self.moving()) {
                (Seen::Queued, None) => timeout.max(BUSY_LIMIT),
                _ => timeout,
            };
            if elapsed >= limit {
                break Err(seen);
            }
            let step = (limit - elapsed).min(Duration::from_millis(250));
            waiting = cookies.changed.wait_timeout(waiting, step).unwrap().0;
        };
        waiting.remove(&name);
        drop(waiting);
        cookies.dir.remove(&name);
        outcome.map_err(|seen| self.waited_for(seen, started.elapsed()))
    }

    /// Why the tree cannot be snapshotted for the moment (a file kept changing while it was
    /// hashed), while the updater waits to go again.
    fn moving(&self) -> Option<Arc<Error>> {
        self.shared.state.read().unwrap().moving.clone()
    }

    /// What a sync that gave up after `waited` was waiting for.
    fn waited_for(&self, seen: Seen, waited: Duration) -> SyncError {
        let dir = self.shared.dir.clone();
        if seen == Seen::Made {
            return SyncError::Unseen { dir, waited };
        }
        if let Some(moving) = self.moving() {
            return SyncError::Moving { moving, waited };
        }
        let (entries, running) = self.busy().unwrap_or_default();
        SyncError::Busy {
            dir,
            waited,
            running,
            entries,
        }
    }

    /// The update running now: how many entries it has looked at, and for how long.
    pub fn busy(&self) -> Option<(u64, Duration)> {
        let since = (*self.shared.busy.lock().unwrap())?;
        Some((
            self.shared.progress.load(Ordering::Relaxed),
            since.elapsed(),
        ))
    }

    /// Files with several links change without an event in a watched directory when written
    /// through another name: each one whose stamp no longer matches the current snapshot is
    /// queued as changed, ahead of the cookie that follows. Ones that are gone or down to one
    /// link are forgotten (a later walk notes them again if they gain one).
    fn recheck_links(&self) {
        let mut links: Vec<Vec<u8>> = self.shared.links.lock().unwrap().iter().cloned().collect();
        if links.is_empty() {
            return;
        }
        links.sort_unstable(); // a directory's files together: it is opened once
        let current = self.current();
        let mut forget = Vec::new();
        let mut dir: Option<(Vec<u8>, Option<OwnedFd>)> = None;
        for rel in links {
            // Only a file of the snapshot can be stale in it; one no longer there (or left out)
            // is noted again by the walk that takes it back.
            let Some(Node::File(f)) = current.tree().find(&rel) else {
                forget.push(rel);
                continue;
            };
            let (parent, base) = crate::scan::split(&rel);
            if dir.as_ref().is_none_or(|(p, _)| p.as_slice() != parent) {
                let here: &[u8] = if parent.is_empty() { b"." } else { parent };
                let fd = crate::worktree::read::open_dir_at(current.root().fd(), here).ok();
                dir = Some((parent.to_vec(), fd));
            }
            let st = (dir.as_ref().and_then(|(_, fd)| fd.as_ref()))
                .and_then(|d| rustix::fs::statat(d, base, AtFlags::SYMLINK_NOFOLLOW).ok())
                .filter(|st| {
                    rustix::fs::FileType::from_raw_mode(st.st_mode as _)
                        == rustix::fs::FileType::RegularFile
                });
            let same = st.as_ref().is_some_and(|st| {
                !f.racy()
                    && f.stamp == crate::worktree::read::stamp_of_stat(st)
                    && f.executable() == crate::worktree::read::exec_of_stat(st)
            });
            if st.is_none_or(|st| st.st_nlink <= 1) {
                forget.push(rel.clone());
            }
            if !same {
                self.changed(self.shared.dir.join(OsStr::from_bytes(&rel)));
            }
        }
        let mut links = self.shared.links.lock().unwrap();
        for rel in forget {
            links.remove(&rel);
        }
    }

    /// Queues `path` (absolute) as changed, as if the watcher had named it.
    fn changed(&self, path: PathBuf) {
        let event =
            notify::Event::new(EventKind::Modify(ModifyKind::Data(DataChange::Any))).add_path(path);
        let _ = self.inject.lock().unwrap().send(Ok(event));
    }

    /// The current snapshot of a subdirectory (a `/`-separated path below the project root),
    /// named by its own hash and served from now on, for this and every later snapshot.
    ///
    /// The subtree is taken from the current snapshot and registered under one lock: from the
    /// moment it is answered, every snapshot served (that one included) serves it too.
    pub fn sync_subtree(&self, rel: &str, timeout: Duration) -> Result<Snapshot, SyncError> {
        let rel = rel.trim_matches('/').as_bytes().to_vec();
        self.settle(timeout)?;
        let mut state = self.shared.state.write().unwrap();
        if let Some(e) = &state.error {
            return Err(SyncError::Update(e.clone()));
        }
        match state.current.subtree(&rel, None) {
            Ok(Some(sub)) if matches!(sub.tree(), crate::tree::Node::Dir(_)) => {
                state.subtrees.insert(rel);
                Ok(sub)
            }
            Ok(_) => Err(SyncError::NotADirectory {
                path: self.shared.dir.join(std::ffi::OsStr::from_bytes(&rel)),
            }),
            Err(e) => Err(SyncError::Update(Arc::new(e))),
        }
    }

    /// Every snapshot being served: the current one, the kept ones, their registered subtrees,
    /// and the pinned ones.
    pub fn served(&self) -> Vec<Snapshot> {
        let state = self.shared.state.read().unwrap();
        let mut all = vec![state.current.clone()];
        all.extend(state.kept.iter().cloned());
        let subtrees: Vec<Snapshot> = all
            .iter()
            .flat_map(|s| {
                state
                    .subtrees
                    .iter()
                    .filter_map(|rel| s.subtree(rel, None).ok().flatten())
            })
            .filter(|s| matches!(s.tree(), crate::tree::Node::Dir(_)))
            .collect();
        all.extend(subtrees);
        all.extend(state.pins.values().map(|p| p.snapshot.clone()));
        let mut seen = std::collections::HashSet::new();
        all.retain(|s| seen.insert(s.basename()));
        all
    }

    /// A served snapshot by its `<hash>-<name>`.
    pub fn find(&self, basename: &str) -> Option<Snapshot> {
        self.served().into_iter().find(|s| s.basename() == basename)
    }

    /// Keeps `snapshot` served until [`Live::unpin`], until `until_gone` no longer exists, or,
    /// with a lease, until it runs out.
    pub fn pin(
        &self,
        snapshot: Snapshot,
        lease: Option<Duration>,
        until_gone: Option<PathBuf>,
    ) -> u64 {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let pin = Pin {
            snapshot,
            expires: lease.map(|l| Instant::now() + l),
            until_gone,
        };
        self.shared.state.write().unwrap().pins.insert(id, pin);
        id
    }

    pub fn unpin(&self, id: u64) -> bool {
        self.shared
            .state
            .write()
            .unwrap()
            .pins
            .remove(&id)
            .is_some()
    }

    /// Drops pins whose lease ran out or whose build is over.
    pub fn expire_pins(&self) {
        let now = Instant::now();
        // Looked at without the lock: a slow path must not hold up every FUSE request.
        let watched: Vec<(u64, PathBuf)> = (self.shared.state.read().unwrap().pins.iter())
            .filter_map(|(id, p)| Some((*id, p.until_gone.clone()?)))
            .collect();
        let over: HashSet<u64> = watched
            .into_iter()
            .filter(|(_, path)| !path.exists())
            .map(|(id, _)| id)
            .collect();
        self.shared
            .state
            .write()
            .unwrap()
            .pins
            .retain(|id, p| p.expires.is_none_or(|e| e > now) && !over.contains(id));
    }

    pub fn pins(&self) -> usize {
        self.shared.state.read().unwrap().pins.len()
    }

    pub fn counters(&self) -> Counters {
        let c = &self.shared.counters;
        Counters {
            updates: c.updates.load(Ordering::Relaxed),
            rescans: c.rescans.load(Ordering::Relaxed),
            last_update_us: c.last_update_us.load(Ordering::Relaxed),
            stale_reads: c.stale_reads.load(Ordering::Relaxed),
            torn_reads: c.torn_reads.load(Ordering::Relaxed),
        }
    }

    /// Memory the proof of large files' bytes holds beside the snapshots: the bytes of the
    /// chunk trees it keeps, and how many.
    pub fn chunk_trees(&self) -> (usize, usize) {
        self.shared.reader.tree_usage()
    }

    /// Events from now on.
    pub fn subscribe(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel();
        self.shared.subscribers.lock().unwrap().push(tx);
        rx
    }

    /// Reads bytes of a served file, verified (see [`crate::worktree::verify`]); failures are counted,
    /// logged and announced to subscribers.
    pub fn read(
        &self,
        rel: &[u8],
        file: &crate::tree::File,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, ReadError> {
        let result = self.shared.reader.read(rel, file, offset, size);
        if let Err(e) = &result {
            let (path, torn) = match e {
                // An I/O error is counted and logged like a file that changed: the reader
                // gets EIO either way, and the file is looked at again.
                ReadError::Stale(p) | ReadError::Io(p, _) => (p, false),
                ReadError::Torn(p) => (p, true),
            };
            let counter = if torn {
                &self.shared.counters.torn_reads
            } else {
                &self.shared.counters.stale_reads
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("{e}: the read failed (EIO) rather than mix versions");
            // The file moved without the watcher saying so (or before it did): look again now.
            self.changed(path.clone());
            self.shared.publish(Event::ReadFailed {
                path: path.clone(),
                torn,
            });
        }
        result
    }
}

impl Shared {
    fn publish(&self, event: Event) {
        self.subscribers
            .lock()
            .unwrap()
            .retain(|s| s.send(event.clone()).is_ok());
    }
}

/// Adds a watch for every directory a walk enters. It holds the watcher weakly: the updater
/// keeps the hook, and a watcher it kept alive would keep its own queue open, so a dropped view
/// would never stop.
fn dir_hook(watcher: &Arc<Mutex<notify::RecommendedWatcher>>) -> crate::DirHook {
    let watcher = Arc::downgrade(watcher);
    Arc::new(move |path: &Path| {
        let Some(watcher) = watcher.upgrade() else {
            return Ok(()); // the view is being dropped; nothing will read the events
        };
        let mut watcher = watcher.lock().unwrap();
        watcher
            .watch(path, RecursiveMode::NonRecursive)
            .map_err(|e| watch_error(path, e))
    })
}

fn watch_error(path: &Path, e: notify::Error) -> Error {
    let io = match e.kind {
        notify::ErrorKind::MaxFilesWatch => std::io::Error::other(
            "inotify watch limit reached; raise it with `sysctl fs.inotify.max_user_watches=524288` \
             (and fs.inotify.max_user_instances if many daemons run)",
        ),
        notify::ErrorKind::Io(io) => io,
        // Gone before it could be watched: a walk leaves it out (its removal raised an event).
        notify::ErrorKind::PathNotFound => {
            std::io::Error::from_raw_os_error(rustix::io::Errno::NOENT.raw_os_error())
        }
        other => std::io::Error::other(format!("{other:?}")),
    };
    Error::io(path, io)
}

/// The longest a stream of events may postpone a snapshot.
const MAX_BURST: Duration = Duration::from_millis(500);

struct Updater {
    shared: Arc<Shared>,
    hook: crate::DirHook,
    on_stop: mpsc::Sender<Stopped>,
}

/// What one attempt at applying a burst came to.
enum Outcome {
    Applied,
    /// The error is what `path` answers until an update succeeds.
    Failed,
    /// The tree moved under the update: the same changes go again once it settles.
    Moving,
    Stop(Stopped),
}

impl Updater {
    fn run(self, rx: mpsc::Receiver<notify::Result<notify::Event>>) {
        let dir = self.shared.dir.clone();
        // The changes of an update that failed (a fifo appeared, a file kept changing): they
        // are tried again with the next burst, or the snapshot would never catch up with them.
        let mut unapplied = Changes::default();
        // The cookies of a burst whose update must go again: answered once it has gone through.
        let mut held: Vec<Vec<u8>> = Vec::new();
        // After an update the tree moved under: how long to let it settle before going again.
        let mut retry: Option<Duration> = None;
        loop {
            let first = match retry {
                None => match rx.recv() {
                    Ok(ev) => Some(ev),
                    Err(_) => return,
                },
                Some(wait) => match rx.recv_timeout(wait) {
                    Ok(ev) => Some(ev),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                },
            };
            let started = Instant::now();
            let mut changes = std::mem::take(&mut unapplied);
            let mut cookies = std::mem::take(&mut held);
            cookies.retain(|c| self.shared.cookies.awaited(c));
            let mut next = first;
            // A burst ends when it goes quiet for `settle` (or runs long); a waiting caller
            // (a cookie) ends it at once with whatever is already queued.
            while let Some(ev) = next.take() {
                if let Err(stop) = self.absorb(ev, &dir, &mut changes, &mut cookies) {
                    let _ = self.on_stop.send(stop);
                    return;
                }
                next = if !cookies.is_empty() {
                    rx.try_recv().ok()
                } else if started.elapsed() < MAX_BURST {
                    rx.recv_timeout(self.shared.config.settle).ok()
                } else {
                    None
                };
            }
            let outcome = if changes.is_empty() {
                Outcome::Applied
            } else {
                self.apply(&changes, started)
            };
            match outcome {
                Outcome::Applied => retry = None,
                Outcome::Failed => {
                    retry = None;
                    unapplied = changes;
                }
                Outcome::Moving => {
                    unapplied = changes;
                    held = cookies;
                    let first = self.shared.config.settle.max(Duration::from_millis(20));
                    retry = Some(retry.map_or(first, |r| (r * 2).min(MAX_BURST)));
                    continue;
                }
                Outcome::Stop(stop) => {
                    let _ = self.on_stop.send(stop);
                    return;
                }
            }
            if !cookies.is_empty() {
                self.shared.cookies.done(&cookies);
            }
        }
    }

    /// Folds one watcher event into the pending changes; `Err` when the project itself is gone.
    fn absorb(
        &self,
        ev: notify::Result<notify::Event>,
        dir: &Path,
        changes: &mut Changes,
        cookies: &mut Vec<Vec<u8>>,
    ) -> Result<(), Stopped> {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!("watcher: {e}; rescanning");
                changes.everything();
                return Ok(());
            }
        };
        if ev.flag() == Some(Flag::Rescan) {
            tracing::warn!("inotify queue overflowed; rescanning against the last snapshot");
            self.shared.counters.rescans.fetch_add(1, Ordering::Relaxed);
            changes.everything();
            return Ok(());
        }
        if matches!(ev.kind, EventKind::Access(_) | EventKind::Other) && ev.paths.is_empty() {
            return Ok(());
        }
        let cookie_dir = &self.shared.cookies.dir;
        for path in &ev.paths {
            if let Some(name) = cookie_dir.cookie_of(path) {
                if matches!(ev.kind, EventKind::Create(_)) {
                    cookies.push(name.to_vec());
                }
                continue;
            }
            if path == &cookie_dir.path {
                if matches!(ev.kind, EventKind::Remove(_)) {
                    tracing::warn!(
                        "{}: the cookie directory was removed; `path` cannot sync until a restart",
                        path.display()
                    );
                }
                continue;
            }
            let Ok(rel) = path.strip_prefix(dir) else {
                continue;
            };
            let rel = rel.as_os_str().as_bytes();
            if rel.is_empty() {
                if matches!(
                    ev.kind,
                    EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
                ) && !dir.is_dir()
                {
                    return Err(Stopped::ProjectGone(dir.to_path_buf()));
                }
                continue;
            }
            changes.add(rel.to_vec());
        }
        Ok(())
    }

    /// Brings the current snapshot up to date; on failure the error is what `path` answers
    /// until an update succeeds, unless the tree only moved under the update.
    fn apply(&self, changes: &Changes, started: Instant) -> Outcome {
        let current = self.shared.state.read().unwrap().current.clone();
        self.shared.progress.store(0, Ordering::Relaxed);
        *self.shared.busy.lock().unwrap() = Some(started);
        let result = Scanner::new(&self.shared.dir, self.shared.config.filter)
            .on_dir(self.hook.clone())
            .links(self.shared.links.clone())
            .progress(self.shared.progress.clone())
            .update(&current, changes);
        *self.shared.busy.lock().unwrap() = None;
        if result.is_ok() {
            self.shared.reader.let_go_of_removed();
        }
        let mut state = self.shared.state.write().unwrap();
        let outcome = match result {
            Ok((next, stats)) => {
                state.error = None;
                state.moving = None;
                let name = next.basename();
                if name == current.basename() {
                    // The same content under fresher stamps (a touch, a file re-hashed to what
                    // it was): served from now on under the same name, and no new snapshot.
                    state.current = next;
                } else {
                    tracing::info!("snapshot {name} ({} files hashed)", stats.hashed);
                    let old = std::mem::replace(&mut state.current, next);
                    state.kept.retain(|s| s.basename() != name);
                    state.kept.push_front(old);
                    state.kept.truncate(self.shared.config.keep);
                    drop(state);
                    self.shared.publish(Event::Snapshot(name));
                }
                Outcome::Applied
            }
            Err(_) if !self.shared.dir.is_dir() => {
                return Outcome::Stop(Stopped::ProjectGone(self.shared.dir.clone()))
            }
            Err(e) if e.is_transient() => {
                tracing::debug!("{e}; going again once the changes settle");
                state.moving = Some(Arc::new(e));
                return Outcome::Moving;
            }
            Err(e) => {
                tracing::warn!("{e}");
                state.error = Some(Arc::new(e));
                state.moving = None;
                Outcome::Failed
            }
        };
        let c = &self.shared.counters;
        c.updates.fetch_add(1, Ordering::Relaxed);
        c.last_update_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cookie_dir: Option<PathBuf>) -> Config {
        Config {
            filter: Filter::All,
            name: None,
            settle: Duration::from_millis(10),
            keep: 2,
            cookie_dir,
        }
    }

    #[test]
    fn callers_that_gave_up_leave_no_cookie_behind() {
        let t = tempfile::tempdir().unwrap();
        let project = t.path().join("p");
        std::fs::create_dir_all(&project).unwrap();
        std::fs::write(project.join("f"), "f").unwrap();
        let cookies = t.path().join("cookies");
        let (tx, _rx) = mpsc::channel();
        let live = Live::start(&project, config(Some(cookies.clone())), None, tx).unwrap();
        // Callers that give up before the watcher could deliver their cookie.
        let gave_up = (0..100)
            .filter(|_| live.sync(Duration::ZERO).is_err())
            .count();
        assert!(gave_up > 0, "no caller gave up: the test shows nothing");
        // One that waits: every cookie before it has been through the updater by then.
        live.sync(Duration::from_secs(10)).unwrap();
        assert_eq!(live.shared.cookies.waiting.lock().unwrap().len(), 0);
        assert_eq!(std::fs::read_dir(&cookies).unwrap().count(), 0);
        let names: Vec<_> = std::fs::read_dir(&project).unwrap().collect();
        assert_eq!(names.len(), 1, "the project was written: {names:?}");
    }

    #[test]
    fn a_dropped_view_stops_and_takes_its_cookie_directory_with_it() {
        let t = tempfile::tempdir().unwrap();
        let project = t.path().join("p");
        std::fs::create_dir_all(&project).unwrap();
        let cookies = t.path().join("cookies");
        let (tx, _rx) = mpsc::channel();
        let live = Live::start(&project, config(Some(cookies.clone())), None, tx).unwrap();
        live.sync(Duration::from_secs(10)).unwrap();
        let shared = Arc::downgrade(&live.shared);
        drop(live);
        for _ in 0..200 {
            if shared.upgrade().is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(shared.upgrade().is_none(), "the updater outlived its view");
        assert!(!cookies.exists(), "the cookie directory was left behind");
    }

    #[test]
    fn a_cookie_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let cookies = t.path().join("cookies");
        std::fs::create_dir(&cookies).unwrap();
        std::fs::set_permissions(&cookies, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (tx, _rx) = mpsc::channel();
        let e = Live::start(t.path(), config(Some(cookies.clone())), None, tx)
            .err()
            .expect("a shared cookie directory was used");
        assert!(e.to_string().contains("not a private directory"), "{e}");
        // A link where the directory should be is not followed either.
        std::fs::remove_dir(&cookies).unwrap();
        std::fs::create_dir(t.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(t.path().join("elsewhere"), &cookies).unwrap();
        let (tx, _rx) = mpsc::channel();
        assert!(Live::start(t.path(), config(Some(cookies)), None, tx).is_err());
    }
}
