//! What a daemon answers, from its live view: the current snapshot (after every change made
//! before the request), status, pins, and a stream of events.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::{Handler, Request, Response, Warmer};
use crate::cache::Volume;
use crate::live::{Event as LiveEvent, Live};
use crate::store::Publisher;

/// How long `path` waits for the watcher to see its cookie.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// The daemon's answers, from its live view.
pub struct LiveHandler {
    live: Arc<Live>,
    mountpoint: PathBuf,
    /// Walks a snapshot someone is about to build (a `path` answer, a `watch` run).
    warmer: Arc<Warmer>,
    /// The project's compile cache volume, if it has a place (a cache home).
    volume: Option<Volume>,
    /// How many inodes the kernel holds of the view, as its server last counted.
    inodes: Arc<std::sync::atomic::AtomicU64>,
    /// How snapshots are published to the Nix store, for a daemon in store mode.
    store: Option<StoreMode>,
}

/// How a daemon in store mode publishes.
#[derive(Clone)]
pub enum StoreMode {
    /// Root's daemon: itself.
    Here(Arc<Publisher>),
    /// A user's daemon: through root's store service answering at this socket, which reads
    /// the snapshot from the view itself.
    Service(PathBuf),
}

impl LiveHandler {
    pub fn new(
        live: Arc<Live>,
        mountpoint: PathBuf,
        warmer: Warmer,
        volume: Option<Volume>,
        store: Option<StoreMode>,
    ) -> Self {
        LiveHandler {
            live,
            mountpoint,
            warmer: Arc::new(warmer),
            volume,
            inodes: Arc::default(),
            store,
        }
    }

    /// Where the FUSE server posts how many inodes the kernel holds (shown by `status`).
    pub fn inodes(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.inodes.clone()
    }
}

impl Handler for LiveHandler {
    fn handle(&self, request: Request, _peer: u32) -> Response {
        let (live, mountpoint) = (&self.live, &self.mountpoint);
        let ok = |r: Response| Response { ok: true, ..r };
        match request {
            Request::Path { sub, store: true } => match &self.store {
                None => Response::error(
                    "this daemon does not publish to the Nix store: restart it with `srcstore mount --store`",
                ),
                Some(mode) => publish(live, mode, mountpoint, sub.as_deref()),
            },
            Request::Publish { .. } | Request::Release { .. } => Response::error(
                "`publish` and `release` are for the store service (`srcstore store serve`)",
            ),
            Request::Path { sub, store: false } => {
                let snapshot = sync(live, sub.as_deref());
                match snapshot {
                    Ok(s) => {
                        let path = mountpoint.join(s.basename());
                        self.warmer.warm(&path);
                        ok(Response {
                            path: Some(path.display().to_string()),
                            ..Default::default()
                        })
                    }
                    Err(e) if e.is_failure() => Response::failed(e.to_string()),
                    Err(e) => Response::error(e.to_string()),
                }
            }
            Request::Status => {
                let mut status = status(live, mountpoint, self.warmer.listed());
                status["inodes"] = self
                    .inodes
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .into();
                if let Some(v) = &self.volume {
                    status["volume"] = v.root().display().to_string().into();
                }
                if let Some(p) = match &self.store {
                    Some(StoreMode::Here(p)) => p.progress(),
                    _ => None,
                } {
                    status["publishing"] = serde_json::to_value(p).unwrap_or_default();
                }
                ok(Response {
                    status: Some(status),
                    ..Default::default()
                })
            }
            Request::Pin {
                basename,
                lease_secs,
                until_gone,
            } => match live.find(&basename) {
                Some(s) => ok(Response {
                    pin: Some(live.pin(
                        s,
                        lease_secs.map(Duration::from_secs),
                        until_gone.map(PathBuf::from),
                    )),
                    ..Default::default()
                }),
                None => Response::error("superseded by newer edits and not pinned"),
            },
            Request::Unpin { id } => match live.unpin(id) {
                true => ok(Response::default()),
                false => Response::error(format!("no pin {id}")),
            },
            Request::Subscribe => Response::error("subscribe is answered by the connection"),
            Request::Volume { partition } => match &self.volume {
                None => Response::error(
                    "this daemon has no cache volume (neither XDG_CACHE_HOME nor HOME is set)",
                ),
                Some(volume) => match volume.partition(&partition) {
                    Ok(dir) => {
                        collect_in_background(volume);
                        ok(Response {
                            path: Some(dir.display().to_string()),
                            ..Default::default()
                        })
                    }
                    Err(e) => Response::error(e.to_string()),
                },
            },
        }
    }

    fn subscribe(&self) -> mpsc::Receiver<Response> {
        let events = self.live.subscribe();
        let (tx, rx) = mpsc::channel();
        let mountpoint = self.mountpoint.clone();
        let warmer = self.warmer.clone();
        std::thread::spawn(move || {
            for event in events {
                let (kind, path) = match event {
                    LiveEvent::Snapshot(name) => {
                        let path = mountpoint.join(name);
                        warmer.warm(&path);
                        ("snapshot", path)
                    }
                    LiveEvent::ReadFailed { path, .. } => ("read_failed", path),
                };
                let r = Response {
                    ok: true,
                    event: Some(kind.into()),
                    path: Some(path.display().to_string()),
                    ..Default::default()
                };
                if tx.send(r).is_err() {
                    return;
                }
            }
        });
        rx
    }
}

/// The current snapshot (of the subtree `sub`), with every change made before the request.
fn sync(live: &Live, sub: Option<&str>) -> Result<crate::Snapshot, crate::live::SyncError> {
    match sub {
        Some(rel) => live.sync_subtree(rel, SYNC_TIMEOUT),
        None => live.sync(SYNC_TIMEOUT),
    }
}

/// How many times a publication starts again from a newer snapshot when a file changed while
/// its bytes were copied.
const PUBLISH_TRIES: usize = 3;

/// Publishes the current snapshot (of the subtree `sub`): the answer with its store path, or
/// the one that says why not.
pub fn publish(live: &Live, mode: &StoreMode, mountpoint: &Path, sub: Option<&str>) -> Response {
    let mut tries = 0;
    loop {
        let snapshot = match sync(live, sub) {
            Ok(s) => s,
            Err(e) if e.is_failure() => return Response::failed(e.to_string()),
            Err(e) => return Response::error(e.to_string()),
        };
        // The answer, and whether a newer snapshot may do (a file changed while it was read).
        let (answer, newer_may_do) = match mode {
            StoreMode::Here(publisher) => match publisher.publish(&snapshot) {
                Ok(p) => {
                    if let Some(made) = p.made {
                        tracing::info!(
                            "published {} ({} files linked, {} copied, {} bytes)",
                            p.path,
                            made.linked,
                            made.copied,
                            made.copied_bytes
                        );
                    }
                    let answer = Response {
                        ok: true,
                        path: Some(p.path),
                        ..Default::default()
                    };
                    (answer, false)
                }
                Err(e) => (Response::failed(e.to_string()), e.is_stale()),
            },
            StoreMode::Service(socket) => {
                let answer = ask_service(live, socket, mountpoint, &snapshot);
                let failed = answer.failed;
                (answer, failed)
            }
        };
        match newer_may_do && tries + 1 < PUBLISH_TRIES {
            true => tries += 1,
            false => return answer,
        }
    }
}

/// Releases the roots of what this daemon published (the paths stay valid until Nix collects
/// them): its own, or those the store service keeps for it. A service that does not answer
/// within a few seconds keeps them, until its next start.
pub fn release(mode: &StoreMode, mountpoint: &Path) {
    match mode {
        StoreMode::Here(publisher) => publisher.release(),
        StoreMode::Service(socket) => {
            let asked = super::Client::connect_within(socket, 0, Duration::from_secs(5)).and_then(
                |mut c| {
                    c.request(Request::Release {
                        mountpoint: mountpoint.display().to_string(),
                    })
                },
            );
            if let Err(e) = asked {
                tracing::warn!(
                    "{}: cannot release the published paths' roots: {e}",
                    socket.display()
                );
            }
        }
    }
}

/// How long the store service may take to publish a snapshot: the first publication of a
/// project copies all of it.
const SERVICE_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// Asks root's store service at `socket` to publish `snapshot`, served meanwhile (pinned) at
/// its path in the view: the service's answer (with the store path), or a failure.
fn ask_service(
    live: &Live,
    socket: &Path,
    mountpoint: &Path,
    snapshot: &crate::Snapshot,
) -> Response {
    let pin = live.pin(snapshot.clone(), Some(SERVICE_DEADLINE), None);
    let view = mountpoint.join(snapshot.basename());
    let answer = super::Client::connect_within(socket, 0, SERVICE_DEADLINE).and_then(|mut c| {
        c.request(Request::Publish {
            view: view.display().to_string(),
        })
    });
    live.unpin(pin);
    answer.unwrap_or_else(|e| {
        Response::failed(format!(
            "{}: the store service did not answer ({e}); it runs as root: `srcstore store serve`",
            socket.display()
        ))
    })
}

fn status(live: &Live, mountpoint: &Path, warmed_dirs: u64) -> serde_json::Value {
    let current = live.current();
    let (files, bytes) = current.tree().files();
    let c = live.counters();
    let trees = live.chunk_trees();
    serde_json::json!({
        "project": live.dir().display().to_string(),
        "pid": std::process::id(),
        "mountpoint": mountpoint.display().to_string(),
        "current": mountpoint.join(current.basename()).display().to_string(),
        "snapshots": live.served().iter().map(|s| s.basename()).collect::<Vec<_>>(),
        "pins": live.pins(),
        "files": files,
        "bytes": bytes,
        "updates": c.updates,
        "last_update_ms": c.last_update_us as f64 / 1000.0,
        "rescans": c.rescans,
        "stale_reads": c.stale_reads,
        "torn_reads": c.torn_reads,
        "warmed_dirs": warmed_dirs,
        "chunk_trees": { "trees": trees.1, "bytes": trees.0 },
        "rss_bytes": rss_bytes(),
        "updating": live.busy().map(|(entries, running)| serde_json::json!({
            "entries": entries,
            "seconds": running.as_secs_f64(),
        })),
    })
}

fn rss_bytes() -> u64 {
    let statm = fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * rustix::param::page_size() as u64
}

/// How long a request waits for a daemon that is still starting.
const START_TIMEOUT: Duration = Duration::from_secs(50);

/// A daemon's answers while it starts: the socket answers from the moment the lock is held, and
/// a request waits until the daemon is up (its first scan done, its view mounted), so a `path`
/// right after `srcstore mount &` gets the snapshot rather than "no daemon". A start that fails
/// hands its reason to whoever waits.
#[derive(Default)]
pub struct Starting {
    state: std::sync::Mutex<StartState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
enum StartState {
    #[default]
    Starting,
    Up(Arc<dyn Handler>),
    Failed(String),
}

impl Starting {
    /// The daemon is up: requests go to `handler` from now on.
    pub fn up(&self, handler: Arc<dyn Handler>) {
        *self.state.lock().unwrap() = StartState::Up(handler);
        self.changed.notify_all();
    }

    /// The daemon will not come up, for `why`.
    pub fn failed(&self, why: String) {
        *self.state.lock().unwrap() = StartState::Failed(why);
        self.changed.notify_all();
    }

    fn wait(&self) -> Result<Arc<dyn Handler>, Box<Response>> {
        let state = self.state.lock().unwrap();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, START_TIMEOUT, |s| matches!(s, StartState::Starting))
            .unwrap();
        match &*state {
            StartState::Up(h) => Ok(h.clone()),
            StartState::Failed(why) => Err(Box::new(Response::error(format!(
                "the daemon did not start: {why}"
            )))),
            StartState::Starting => Err(Box::new(Response::error(format!(
                "the daemon is still starting after {}s (its first scan of the project); try again",
                START_TIMEOUT.as_secs()
            )))),
        }
    }
}

impl Handler for Starting {
    fn handle(&self, request: Request, peer: u32) -> Response {
        match self.wait() {
            Ok(h) => h.handle(request, peer),
            Err(refusal) => *refusal,
        }
    }

    fn subscribe(&self) -> mpsc::Receiver<Response> {
        match self.wait() {
            Ok(h) => h.subscribe(),
            Err(_) => mpsc::channel().1,
        }
    }
}

/// Cuts the volume down to its default size, on a thread of its own, if a collection is due.
fn collect_in_background(volume: &Volume) {
    if !volume.collect_if_due(crate::cache::COLLECT_EVERY) {
        return;
    }
    let volume = volume.clone();
    let _ = std::thread::Builder::new()
        .name("srcstore-gc".into())
        .spawn(move || {
            let collected =
                crate::cache::default_limit(volume.root()).and_then(|limit| volume.gc(limit));
            match collected {
                Ok(c) if c.removed > 0 => tracing::info!(
                    "{}: removed {} least recently used cache entries ({} bytes)",
                    volume.root().display(),
                    c.removed,
                    c.freed_bytes
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("{}: cannot collect: {e}", volume.root().display()),
            }
        });
}
