//! A snapshot kept current from inotify, and the set of snapshots being served.
//!
//! One updater thread owns the change queue: it waits for events, lets a burst settle, applies
//! it with [`Scanner::update`] and publishes the result. Readers never wait for it: they clone
//! the snapshots they need out of [`Live::served`]. [`Live::sync`] is how a caller gets a
//! snapshot that includes every change made before the call: it creates a cookie file and
//! waits until the updater has processed the cookie's event, which inotify delivers after every
//! event queued before it on the same instance (Watchman's technique).
//!
//! Here: the front (start, the served set, pins, counters). `watch.rs`: the inotify watcher and
//! the sync cookies; `update.rs`: the updater thread; `read.rs`: the proven reads the FUSE view
//! makes.

mod read;
mod update;
mod watch;

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::worktree::verify::Reader;
use crate::{Error, Filter, Scanner, Snapshot};

use update::Updater;
use watch::{Cookies, WatchEvent};

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

impl SyncError {
    /// Whether the daemon could not do it (the system failed it: no room for a cookie, a
    /// watcher that saw nothing), rather than the tree or the request being what stops it.
    pub fn is_failure(&self) -> bool {
        matches!(self, SyncError::Cookie { .. } | SyncError::Unseen { .. })
    }
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

/// A running live view; dropping it stops the watcher and the updater.
pub struct Live {
    shared: Arc<Shared>,
    _watcher: Arc<Mutex<notify::RecommendedWatcher>>,
    /// Changes no watcher reports (an edit through another link), put in the updater's queue
    /// ahead of the cookie that follows them.
    inject: Mutex<mpsc::Sender<WatchEvent>>,
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
        let cookies = Arc::new(Cookies::open(config.cookie_dir.as_deref())?);
        let inject = tx.clone();
        let watcher = watch::watcher(dir, cookies.clone(), tx)?;
        let hook = watch::dir_hook(&watcher);
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
    /// then (a long scan) is waited for, up to [`BUSY_LIMIT`](watch::BUSY_LIMIT), and a tree
    /// that keeps moving (a file written again every time it is hashed) up to `timeout`; past
    /// those the error says what it waits for.
    pub fn sync(&self, timeout: Duration) -> Result<Snapshot, SyncError> {
        self.settle(timeout)?;
        let state = self.shared.state.read().unwrap();
        match &state.error {
            Some(e) => Err(SyncError::Update(e.clone())),
            None => Ok(state.current.clone()),
        }
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

    /// The update running now: how many entries it has looked at, and for how long.
    pub fn busy(&self) -> Option<(u64, Duration)> {
        let since = (*self.shared.busy.lock().unwrap())?;
        Some((
            self.shared.progress.load(Ordering::Relaxed),
            since.elapsed(),
        ))
    }

    /// Events from now on.
    pub fn subscribe(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel();
        self.shared.subscribers.lock().unwrap().push(tx);
        rx
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
