//! A snapshot kept current from inotify, and the set of snapshots being served.
//!
//! One updater thread owns the change queue: it waits for events, lets a burst settle, applies
//! it with [`Scanner::update`] and publishes the result. Readers never wait for it: they clone
//! the snapshots they need out of [`Live::served`]. [`Live::sync`] is how a caller gets a
//! snapshot that includes every change made before the call: it creates a cookie file in the
//! project root and waits until the updater has processed the cookie's event, which inotify
//! delivers after every event queued before it (Watchman's technique).

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use notify::event::{EventKind, Flag};
use notify::{EventKindMask, RecursiveMode, Watcher};

use crate::scan::RESERVED_PREFIX;
use crate::verify::{ReadError, Reader};
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
}

/// Why the live view stopped on its own.
#[derive(Debug)]
pub enum Stopped {
    ProjectGone(PathBuf),
    WatcherFailed(String),
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
    error: Option<String>,
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
    /// Cookies the updater has seen, and the condition their waiters sleep on.
    cookies: Mutex<std::collections::HashSet<Vec<u8>>>,
    cookie_seen: Condvar,
    next_id: AtomicU64,
    counters: AtomicCounters,
    subscribers: Mutex<Vec<mpsc::Sender<Event>>>,
    reader: Reader,
}

/// A running live view; dropping it stops the watcher and the updater.
pub struct Live {
    shared: Arc<Shared>,
    _watcher: Arc<Mutex<notify::RecommendedWatcher>>,
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
        let handler = move |ev: notify::Result<notify::Event>| {
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
        let snapshot = Scanner::new(dir, config.filter)
            .name(config.name.clone())
            .previous(previous)
            .on_dir(hook.clone())
            .scan()?;
        hook(dir)?;
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
            }),
            config,
            cookies: Mutex::default(),
            cookie_seen: Condvar::new(),
            next_id: AtomicU64::new(1),
            counters: AtomicCounters::default(),
            subscribers: Mutex::default(),
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
        })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn current(&self) -> Snapshot {
        self.shared.state.read().unwrap().current.clone()
    }

    /// The current snapshot including every change made before this call.
    pub fn sync(&self, timeout: Duration) -> Result<Snapshot, String> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut name = RESERVED_PREFIX.to_vec();
        name.extend_from_slice(format!("cookie-{}-{id}", std::process::id()).as_bytes());
        let path = self.shared.dir.join(std::ffi::OsStr::from_bytes(&name));
        std::fs::write(&path, b"")
            .map_err(|e| format!("{}: cannot create sync cookie: {e}", path.display()))?;
        let deadline = Instant::now() + timeout;
        let mut seen = self.shared.cookies.lock().unwrap();
        let ok = loop {
            if seen.remove(&name) {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            seen = self.shared.cookie_seen.wait_timeout(seen, left).unwrap().0;
        };
        drop(seen);
        let _ = std::fs::remove_file(&path);
        if !ok {
            return Err(format!(
                "{}: the watcher did not see a change within {timeout:?}; is the project directory still there?",
                self.shared.dir.display()
            ));
        }
        let state = self.shared.state.read().unwrap();
        match &state.error {
            Some(e) => Err(e.clone()),
            None => Ok(state.current.clone()),
        }
    }

    /// The current snapshot of a subdirectory (a `/`-separated path below the project root),
    /// named by its own hash and served from now on, for this and every later snapshot.
    pub fn sync_subtree(&self, rel: &str, timeout: Duration) -> Result<Snapshot, String> {
        let rel = rel.trim_matches('/').as_bytes().to_vec();
        let whole = self.sync(timeout)?;
        match whole.subtree(&rel, None) {
            Ok(Some(sub)) if matches!(sub.tree(), crate::tree::Node::Dir(_)) => {
                self.shared.state.write().unwrap().subtrees.insert(rel);
                Ok(sub)
            }
            Ok(_) => Err(format!(
                "{}: not a directory of the snapshot (missing, ignored, or not a directory)",
                self.shared
                    .dir
                    .join(std::ffi::OsStr::from_bytes(&rel))
                    .display()
            )),
            Err(e) => Err(e.to_string()),
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

    /// Events from now on.
    pub fn subscribe(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel();
        self.shared.subscribers.lock().unwrap().push(tx);
        rx
    }

    /// Reads bytes of a served file, verified (see [`crate::verify`]); failures are counted,
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
                ReadError::Stale(p) => (p, false),
                ReadError::Torn(p) => (p, true),
                ReadError::Io(..) => return result,
            };
            let counter = if torn {
                &self.shared.counters.torn_reads
            } else {
                &self.shared.counters.stale_reads
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("{e}: the read failed (EIO) rather than mix versions");
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

fn dir_hook(watcher: &Arc<Mutex<notify::RecommendedWatcher>>) -> crate::DirHook {
    let watcher = watcher.clone();
    Arc::new(move |path: &Path| {
        watcher
            .lock()
            .unwrap()
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

impl Updater {
    fn run(self, rx: mpsc::Receiver<notify::Result<notify::Event>>) {
        let dir = self.shared.dir.clone();
        // The changes of an update that failed (a fifo appeared, a file vanished mid-scan): they
        // are tried again with the next burst, or the snapshot would never catch up with them.
        let mut unapplied = Changes::default();
        while let Ok(first) = rx.recv() {
            let started = Instant::now();
            let mut changes = std::mem::take(&mut unapplied);
            let mut cookies = Vec::new();
            let mut next = Some(first);
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
            if !changes.is_empty() {
                match self.apply(&changes, started) {
                    Ok(true) => {}
                    Ok(false) => unapplied = changes,
                    Err(stop) => {
                        let _ = self.on_stop.send(stop);
                        return;
                    }
                }
            }
            if !cookies.is_empty() {
                self.shared.cookies.lock().unwrap().extend(cookies);
                self.shared.cookie_seen.notify_all();
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
        for path in &ev.paths {
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
            let base = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
            if base.starts_with(RESERVED_PREFIX) {
                if !rel.contains(&b'/') && matches!(ev.kind, EventKind::Create(_)) {
                    cookies.push(rel.to_vec());
                }
                continue;
            }
            changes.add(rel.to_vec());
        }
        Ok(())
    }

    /// Brings the current snapshot up to date; `Ok(false)` when the update failed (the error is
    /// what `path` answers until one succeeds), `Err` when the project directory itself is gone.
    fn apply(&self, changes: &Changes, started: Instant) -> Result<bool, Stopped> {
        let current = self.shared.state.read().unwrap().current.clone();
        let result = Scanner::new(&self.shared.dir, self.shared.config.filter)
            .on_dir(self.hook.clone())
            .update(&current, changes);
        if result.is_ok() {
            self.shared.reader.let_go_of_removed();
        }
        let mut state = self.shared.state.write().unwrap();
        let applied = result.is_ok();
        match result {
            Ok((next, stats)) => {
                state.error = None;
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
            }
            Err(_) if !self.shared.dir.is_dir() => {
                return Err(Stopped::ProjectGone(self.shared.dir.clone()))
            }
            Err(e) => {
                tracing::warn!("{e}");
                state.error = Some(e.to_string());
            }
        }
        let c = &self.shared.counters;
        c.updates.fetch_add(1, Ordering::Relaxed);
        c.last_update_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(applied)
    }
}
