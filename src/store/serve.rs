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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::Publisher;
use crate::daemon::{Handler, Request, Response};
use crate::hook::{ViewMount, ViewSnapshot};
use crate::{Budget, Filter, Scanner};

/// Where the store service answers: a place in `/run` only root can make.
pub const SERVICE_SOCKET: &str = "/run/srcstore-store.sock";

/// Root's store service.
pub struct Service {
    /// One publisher per user and view.
    publishers: Mutex<HashMap<(u32, PathBuf), Arc<Publisher>>>,
    /// Held by a user's publication while it runs: one at a time per user, so that the quota
    /// bounds what root reads for a user at any moment.
    users: Mutex<HashMap<u32, Arc<Mutex<()>>>>,
    limits: Limits,
}

/// What the service allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a publication may go without progress before its view is cut off.
    pub stall: Duration,
    /// What one user's publication may read: entries of the tree, and file bytes.
    pub quota_paths: u64,
    pub quota_bytes: u64,
}

impl Service {
    pub fn new(limits: Limits) -> Service {
        Service {
            publishers: Mutex::default(),
            users: Mutex::default(),
            limits,
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
        if !nix_allows(peer) {
            return Response::error(format!(
                "{path}: uid {peer} is not in Nix's allowed-users (nor its trusted-users), so it may not add to the store"
            ));
        }
        let publisher = match self.publisher(owner, view) {
            Ok(p) => p,
            Err(e) => return Response::failed(e.to_string()),
        };
        let user = self
            .users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(owner)
            .or_default()
            .clone();
        let _one_at_a_time = user.lock().unwrap_or_else(|p| p.into_inner());
        // From the first question to the view on, a view that stops answering is cut off.
        let progress = Arc::new(AtomicU64::new(0));
        let stall = self.limits.stall;
        let watchdog = Watchdog::start(view, stall, progress.clone(), publisher.clone());
        let answer = (|| {
            let dir = match snapshot.open() {
                Ok(dir) => dir,
                Err(e) => return Response::error(e.to_string()),
            };
            let scanned = Scanner::new(path, Filter::All)
                .name(Some(super::NAME.into()))
                .opened(dir)
                .progress(progress)
                .budget(Arc::new(Budget::new(
                    self.limits.quota_paths,
                    self.limits.quota_bytes,
                )))
                .scan();
            let snapshot = match scanned {
                Ok(s) => s,
                Err(e @ crate::Error::OverBudget { .. }) => {
                    return Response::error(format!("{e}: the store service's quota for a user"))
                }
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
        })();
        match watchdog.cut.load(Ordering::SeqCst) && !answer.ok {
            true => Response::failed(format!(
                "{path}: its view answered nothing for {}s and was cut off (its FUSE connection aborted); start `srcstore mount` again",
                stall.as_secs()
            )),
            false => answer,
        }
    }

    /// Drops the roots of what was published for `peer` from the view at `mountpoint`: only
    /// the asker's own.
    fn release(&self, peer: u32, mountpoint: &str) -> Response {
        let key = (peer, PathBuf::from(mountpoint));
        let publisher = self
            .publishers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        match publisher {
            Some(p) => {
                p.release();
                tracing::info!("released uid {peer}'s roots of {mountpoint}");
                Response {
                    ok: true,
                    ..Default::default()
                }
            }
            None => Response::error(format!(
                "{mountpoint}: nothing is published for uid {peer} from there"
            )),
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
            Request::Release { mountpoint } => self.release(peer, &mountpoint),
            _ => Response::error("the store service answers only `publish` and `release`"),
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

/// Whether Nix lets the user `uid` use the store, as nix-daemon decides whom it serves: root
/// always; else a user `trusted-users` (default `root`) or `allowed-users` (default `*`) of
/// `$NIX_CONF_DIR/nix.conf` names. (An `include` in it is not followed.)
fn nix_allows(uid: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let dir =
        std::env::var_os("NIX_CONF_DIR").map_or_else(|| PathBuf::from("/etc/nix"), PathBuf::from);
    let conf = std::fs::read_to_string(dir.join("nix.conf")).unwrap_or_default();
    let list = |key: &str, default: &str| {
        crate::nix::conf::effective(&conf, key).unwrap_or_else(|| default.to_owned())
    };
    crate::accounts::matches_nix_users(uid, &list("trusted-users", "root"))
        || crate::accounts::matches_nix_users(uid, &list("allowed-users", "*"))
}

/// Cuts a view off when a publication from it makes no progress for `stall`: until dropped.
struct Watchdog {
    _done: mpsc::Sender<()>,
    /// Set before the view is cut off.
    cut: Arc<AtomicBool>,
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
        let cut = Arc::new(AtomicBool::new(false));
        let cutting = cut.clone();
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
                    still = if now == last {
                        still + tick
                    } else {
                        Duration::ZERO
                    };
                    last = now;
                    if still < stall {
                        continue;
                    }
                    cutting.store(true, Ordering::SeqCst);
                    tracing::warn!(
                        "{}: its view answered nothing for {}s: cut off",
                        mountpoint.display(),
                        stall.as_secs()
                    );
                    if let Err(e) = std::fs::write(&abort, "1") {
                        tracing::warn!(
                            "{}: cannot cut it off ({abort}: {e})",
                            mountpoint.display()
                        );
                    }
                    return;
                }
            });
        Watchdog { _done: done, cut }
    }
}
