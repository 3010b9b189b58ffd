//! The store service (`srcstore store serve`): root publishing users' snapshots, so that a
//! user's daemon has store mode without being trusted.
//!
//! A user's daemon asks with the path of a snapshot its view serves. The service believes
//! nothing the daemon says about it: the asker must be the view's owner (the peer of the
//! connection, against the mount's `user_id`), the view must stand in its owner's place (the
//! hook's rule), and the snapshot is found and opened as the hook opens what it stages. Then
//! root reads the snapshot from the view itself, like any directory (no link followed, no
//! other mount crossed), hashes every file, and publishes what it read: the farm's copies are
//! proven against root's own hashes, and the NAR hash is root's. A view that answers one read
//! one way and the next another fails the proof, and nothing is registered.
//!
//! A view is a FUSE server of the user's, which can stall root's reads forever. A watchdog
//! cuts such a view off (the kernel's `abort` of its FUSE connection, which fails every read
//! pending on it) when a publication has made no progress for a while.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::Publisher;
use crate::daemon::{Handler, Request, Response};
use crate::hook::{ViewMount, ViewSnapshot};
use crate::{Filter, Scanner};

/// Where the store service answers: a place in `/run` only root can make.
pub const SERVICE_SOCKET: &str = "/run/srcstore-store.sock";

/// Root's store service.
pub struct Service {
    /// One publisher per user and view.
    publishers: Mutex<HashMap<(u32, PathBuf), Arc<Publisher>>>,
    /// How long a publication may go without progress before its view is cut off.
    stall: Duration,
}

impl Service {
    pub fn new(stall: Duration) -> Service {
        Service {
            publishers: Mutex::default(),
            stall,
        }
    }

    /// Publishes the snapshot at `view` for the user `peer` (see the module docs).
    fn publish(&self, peer: u32, path: &str) -> Response {
        let snapshot = match ViewSnapshot::find(path) {
            Ok(found) => found,
            Err(e) => return Response::error(e.to_string()),
        };
        let view = &snapshot.view;
        let owner = view.owner.unwrap_or(0);
        if peer != owner && peer != 0 {
            return Response::error(format!(
                "{path}: served by uid {owner}'s view; uid {peer} may publish only its own snapshots"
            ));
        }
        let publisher = match self.publisher(owner, view) {
            Ok(p) => p,
            Err(e) => return Response::failed(e.to_string()),
        };
        // From the first question to the view on, a view that stops answering is cut off.
        let progress = Arc::new(AtomicU64::new(0));
        let _watchdog = Watchdog::start(view, self.stall, progress.clone(), publisher.clone());
        let dir = match snapshot.open() {
            Ok(dir) => dir,
            Err(e) => return Response::error(e.to_string()),
        };
        let scanned = Scanner::new(path, Filter::All)
            .name(Some(super::NAME.into()))
            .opened(dir)
            .progress(progress)
            .scan();
        let snapshot = match scanned {
            Ok(s) => s,
            Err(e) => return Response::failed(e.to_string()),
        };
        match publisher.publish(&snapshot) {
            Ok(p) => {
                tracing::info!("published {} for uid {owner} from {path}", p.path);
                Response {
                    ok: true,
                    path: Some(p.path),
                    ..Default::default()
                }
            }
            Err(e) => Response::failed(e.to_string()),
        }
    }

    /// The publisher for `owner`'s `view`, opened on first use.
    fn publisher(&self, owner: u32, view: &ViewMount) -> Result<Arc<Publisher>, super::StoreError> {
        let mut publishers = self.publishers.lock().unwrap_or_else(|p| p.into_inner());
        let key = (owner, view.mountpoint.clone());
        if let Some(p) = publishers.get(&key) {
            return Ok(p.clone());
        }
        let p = Arc::new(Publisher::open(&view.mountpoint, owner, &view.socket)?);
        publishers.insert(key, p.clone());
        Ok(p)
    }
}

impl Handler for Service {
    fn handle(&self, request: Request, peer: u32) -> Response {
        match request {
            Request::Publish { view } => self.publish(peer, &view),
            _ => Response::error("the store service answers only `publish`"),
        }
    }

    /// Any user may ask; what each may have is decided per request.
    fn admits(&self, _uid: u32) -> bool {
        true
    }

    fn subscribe(&self) -> mpsc::Receiver<Response> {
        mpsc::channel().1
    }
}

/// Cuts a view off when a publication from it makes no progress for `stall`: until dropped.
struct Watchdog {
    _done: mpsc::Sender<()>,
}

impl Watchdog {
    fn start(
        view: &ViewMount,
        stall: Duration,
        scanned: Arc<AtomicU64>,
        publisher: Arc<Publisher>,
    ) -> Watchdog {
        let (done, over) = mpsc::channel::<()>();
        // From the mount table: asking the view itself (a `stat`) could stall as well.
        let (major, minor) = view.dev;
        let abort = format!(
            "/sys/fs/fuse/connections/{}/abort",
            (u64::from(major) << 20) | u64::from(minor)
        );
        let mountpoint = view.mountpoint.clone();
        let _ = std::thread::Builder::new()
            .name("srcstore-watchdog".into())
            .spawn(move || {
                let seen = || {
                    let made = publisher.progress().map_or(0, |p| p.files);
                    scanned.load(Ordering::Relaxed) + made
                };
                let mut last = seen();
                let tick = stall.min(Duration::from_secs(1));
                let mut still = Duration::ZERO;
                while let Err(mpsc::RecvTimeoutError::Timeout) = over.recv_timeout(tick) {
                    let now = seen();
                    still = if now == last { still + tick } else { Duration::ZERO };
                    last = now;
                    if still < stall {
                        continue;
                    }
                    match std::fs::write(&abort, "1") {
                        Ok(()) => tracing::warn!(
                            "{}: its view answered nothing for {}s: cut off",
                            mountpoint.display(),
                            stall.as_secs()
                        ),
                        Err(e) => tracing::warn!(
                            "{}: its view answered nothing for {}s, and cannot be cut off ({abort}: {e})",
                            mountpoint.display(),
                            stall.as_secs()
                        ),
                    }
                    return;
                }
            });
        Watchdog { _done: done }
    }
}
