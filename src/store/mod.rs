//! Store mode: a snapshot published as the valid, content-addressed store path
//! `/nix/store/<h>-source` that `nix-store --add` (or `builtins.path { name = "source"; }`)
//! gives the same tree, with only bytes the store lacks copied.
//!
//! A path is a hard-link farm ([`farm`]) of blobs in the store's `.links` ([`blobs`]), made
//! beneath a descriptor of the store directory while Nix's collector is held off
//! ([`locks::GcLock`]) and the path's own lock is held ([`locks::PathLock`]), then registered
//! in Nix's database with its content address ([`nixdb`]) and rooted. What a publication does
//! to the store is journalled first ([`Records`]): a publication that died (kill -9) leaves an
//! invalid entry that the next [`Publisher::open`] or `srcstore store repair` removes; a path
//! is registered only once every byte of it is in place, so none is ever valid and wrong.
//!
//! Only root writes the store and its database, so a publisher runs as root.

mod blobs;
mod farm;
mod locks;
mod nixdb;
mod records;
mod serve;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use rustix::fs::Mode;
use rustix::io::Errno;

pub use farm::Made;
pub use nixdb::DbError;
pub use records::{Records, Status};
pub use serve::{Limits, Service, SERVICE_SOCKET};

use crate::nar::{NarInfo, NarMemo};
use crate::{nar, nixhash, Snapshot};

/// Where Nix keeps store paths, and its state.
pub const STORE_DIR: &str = "/nix/store";
pub const NIX_STATE: &str = "/nix/var/nix";
/// srcstore's records of what it published: root's own.
pub const RECORDS: &str = "/nix/var/srcstore";
/// The name of every published path: what `builtins.path` and flakes name a source tree.
pub const NAME: &str = "source";
/// How many of a daemon's latest publications stay rooted (a build holds the inputs it uses
/// with temporary roots of its own).
const ROOTED: usize = 8;
/// How many subtrees' NAR memos a publisher keeps (each about 100 bytes per 256 KiB of NAR).
const MEMOS: usize = 8;
/// How long a publication waits for another holder of a path's lock.
const PATH_LOCK_PATIENCE: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "store mode writes the Nix store and Nix's database, which only root may: run `srcstore mount --store` as root"
    )]
    NotRoot,
    #[error(transparent)]
    Snapshot(#[from] crate::Error),
    #[error(transparent)]
    Db(#[from] DbError),
    /// The message names the path.
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("{path}: registered with NAR hash {found}, not {expected}: run `nix-store --verify --check-contents --repair`")]
    Mismatch {
        path: String,
        found: String,
        expected: String,
    },
}

impl StoreError {
    /// A file changed while its bytes were being copied: publishing a newer snapshot may work.
    pub fn is_stale(&self) -> bool {
        matches!(self, StoreError::Snapshot(crate::Error::Stale { .. }))
    }
}

/// A published path.
#[derive(Debug, Clone)]
pub struct Published {
    pub path: String,
    pub nar: NarInfo,
    /// What making it took; `None` when it was valid already.
    pub made: Option<Made>,
}

/// How far the publication under way has come, for `srcstore status` and the wait of
/// `srcstore path --store`: the first publication of a project copies all of it.
#[derive(Default)]
pub struct Progress {
    since: Mutex<Option<std::time::Instant>>,
    files: AtomicU64,
    total: AtomicU64,
    copied_bytes: AtomicU64,
}

/// A reading of [`Progress`], as `srcstore status` shows it (`publishing`).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct ProgressNow {
    pub seconds: f64,
    /// Files in place, linked or copied, of `total`.
    pub files: u64,
    pub total: u64,
    pub copied_bytes: u64,
}

impl std::fmt::Display for ProgressNow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "publishing for {:.0}s, {} of {} files in place, {} bytes copied",
            self.seconds, self.files, self.total, self.copied_bytes
        )
    }
}

impl Progress {
    /// The publication under way, if one is.
    pub fn now(&self) -> Option<ProgressNow> {
        let since = (*self.since.lock().unwrap_or_else(|p| p.into_inner()))?;
        Some(ProgressNow {
            seconds: since.elapsed().as_secs_f64(),
            files: self.files.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            copied_bytes: self.copied_bytes.load(Ordering::Relaxed),
        })
    }

    /// A publication of `total` files starts; it is over when the guard is dropped.
    fn start(&self, total: u64) -> impl Drop + '_ {
        self.files.store(0, Ordering::Relaxed);
        self.copied_bytes.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        *self.since.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        Over(self)
    }

    pub(crate) fn made(&self, copied_bytes: u64) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.copied_bytes.fetch_add(copied_bytes, Ordering::Relaxed);
    }
}

struct Over<'a>(&'a Progress);

impl Drop for Over<'_> {
    fn drop(&mut self) {
        *self.0.since.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// One project's publisher: a thread of its own that publishes, so that where the store is
/// mounted read-only (NixOS), it alone enters the mount namespace where the store is writable
/// ([`writable_store`]); the daemon's FUSE view stays where everyone sees it.
pub struct Publisher {
    jobs: Mutex<mpsc::Sender<Job>>,
    progress: Arc<Progress>,
}

/// What the publishing thread is asked to do.
enum Job {
    Publish(Snapshot, mpsc::Sender<Result<Published, StoreError>>),
    Release(mpsc::Sender<()>),
}

impl Publisher {
    /// The publisher for the project at `dir` owned by `owner`, whose daemon answers at
    /// `socket`. Repairs what a publication that died left (each repair logged) and releases a
    /// previous daemon's roots.
    pub fn open(dir: &Path, owner: u32, socket: &Path) -> Result<Publisher, StoreError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (opened_tx, opened) = mpsc::channel();
        let (dir, socket) = (dir.to_path_buf(), socket.to_path_buf());
        let progress = Arc::new(Progress::default());
        let shared = progress.clone();
        std::thread::Builder::new()
            .name("srcstore-store".into())
            .spawn(move || {
                let publishing =
                    writable_store().and_then(|()| Publishing::open(&dir, owner, &socket, shared));
                let publishing = match publishing {
                    Ok(p) => {
                        let _ = opened_tx.send(Ok(()));
                        p
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                for job in rx {
                    match job {
                        Job::Publish(snapshot, answer) => {
                            let _ = answer.send(publishing.publish(&snapshot));
                        }
                        Job::Release(done) => {
                            publishing.release();
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        opened
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the publishing thread panicked").into()))?;
        Ok(Publisher {
            jobs: Mutex::new(jobs),
            progress,
        })
    }

    /// How far the publication under way has come, if one is.
    pub fn progress(&self) -> Option<ProgressNow> {
        self.progress.now()
    }

    /// Publishes `snapshot` as its `source` path (see [`Publishing::publish`]).
    pub fn publish(&self, snapshot: &Snapshot) -> Result<Published, StoreError> {
        let (answer, rx) = mpsc::channel();
        let job = Job::Publish(snapshot.clone(), answer);
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job);
        sent.ok()
            .and_then(|()| rx.recv().ok())
            .unwrap_or_else(|| Err(io::Error::other("the publishing thread is gone").into()))
    }

    /// Releases this daemon's roots (the paths stay valid until Nix collects them).
    pub fn release(&self) {
        let (done, rx) = mpsc::channel();
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Job::Release(done));
        if sent.is_ok() {
            let _ = rx.recv();
        }
    }
}

/// Where the store is mounted read-only (NixOS: only nix-daemon writes it, from a mount
/// namespace of its own), moves the calling thread into a mount namespace of its own and
/// remounts the store writable there, as nix-daemon does. Nothing else of the process moves.
fn writable_store() -> Result<(), StoreError> {
    let st = rustix::fs::statvfs(STORE_DIR).map_err(|e| at(Path::new(STORE_DIR), e))?;
    if !st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
        return Ok(());
    }
    crate::sys::unshare_mount_namespace().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{STORE_DIR}: mounted read-only, and no mount namespace of srcstore's own to write it from: {e}"),
        )
    })?;
    rustix::mount::mount_remount(STORE_DIR, rustix::mount::MountFlags::BIND, "")
        .map_err(|e| at(Path::new(STORE_DIR), e))?;
    Ok(())
}

/// What the publishing thread holds: the store, the records, and the roots of this daemon's
/// publications.
struct Publishing {
    store: crate::beneath::Tree,
    links: OwnedFd,
    records: Records,
    project: records::Project,
    progress: Arc<Progress>,
    state: Mutex<State>,
}

struct State {
    blobs: blobs::Blobs,
    /// The NAR memo of the latest publication of each subtree (by prefix; the whole project's
    /// is empty), so the next one hashes only the NAR after its first edit.
    memos: HashMap<Box<[u8]>, NarMemo>,
    /// This daemon's latest publications, rooted (newest last).
    rooted: VecDeque<String>,
}

impl Publishing {
    fn open(
        dir: &Path,
        owner: u32,
        socket: &Path,
        progress: Arc<Progress>,
    ) -> Result<Publishing, StoreError> {
        let (records, store) = open_records()?;
        for line in records.repair(&store)? {
            tracing::info!("{line}");
        }
        let links = match rustix::fs::mkdirat(store.fd(), ".links", Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => farm::open_dir(store.fd(), ".links"),
            Err(e) => Err(e),
        }
        .map_err(|e| at(&Path::new(STORE_DIR).join(".links"), e))?;
        // Whoever may change `.links` chooses what a farm's files hold: root alone.
        let st =
            rustix::fs::fstat(&links).map_err(|e| at(&Path::new(STORE_DIR).join(".links"), e))?;
        if st.st_uid != 0 || st.st_mode & 0o022 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{STORE_DIR}/.links: owned by uid {} with mode {:o}, not root's alone: blobs there could be replaced; inspect it, and remove it (as root) if it is not Nix's",
                    st.st_uid,
                    st.st_mode & 0o7777
                ),
            )
            .into());
        }
        let blobs = blobs::Blobs::open(&records.blobs_log())?;
        let project = records.project(dir, owner, socket)?;
        Ok(Publishing {
            store,
            links,
            records,
            project,
            progress,
            state: Mutex::new(State {
                blobs,
                memos: HashMap::new(),
                rooted: VecDeque::new(),
            }),
        })
    }

    /// Publishes `snapshot` as its `source` path (see the module docs).
    ///
    /// The files are made under a temporary name while the NAR is hashed beside them, on
    /// another thread (the name of the path comes from the hash); the path's lock is taken
    /// once the name is known, and the files are renamed into place and registered only then.
    fn publish(&self, snapshot: &Snapshot) -> Result<Published, StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *state;
        let started = std::time::Instant::now();
        let _gc = locks::GcLock::shared(Path::new(NIX_STATE), || {
            tracing::info!("waiting for Nix's garbage collector to finish")
        })?;
        let memo = state.memos.remove(snapshot.prefix());
        // The same tree as the last publication of this subtree: its path, nothing to make
        // unless Nix collected it since.
        let mut temp = None;
        let hashed = match memo.as_ref().is_some_and(|m| m.is_of(snapshot.tree())) {
            true => nar::nar_info_since(snapshot, memo.as_ref()).map(|h| (h, None)),
            false => {
                let name = self.temp_name();
                self.records.begin(&name, &self.project)?;
                temp = Some(name.clone());
                let blobs = &mut state.blobs;
                let (hashed, made) = std::thread::scope(|s| {
                    let farm = s.spawn(|| {
                        let made = self.make(snapshot, &name, blobs);
                        tracing::debug!("files made in {:?}", started.elapsed());
                        made
                    });
                    let hashed = nar::nar_info_since(snapshot, memo.as_ref());
                    tracing::debug!("NAR hashed in {:?}", started.elapsed());
                    (hashed, farm.join().expect("making a path panicked"))
                });
                hashed.and_then(|h| made.map(|m| (h, Some(m))))
            }
        };
        let ((nar, next), made_here) = match hashed {
            Ok(h) => h,
            Err(e) => {
                if let Some(m) = memo {
                    state.memos.insert(snapshot.prefix().into(), m);
                }
                self.take_back(temp.as_deref())?;
                return Err(e.into());
            }
        };
        if state.memos.len() >= MEMOS {
            state.memos.clear();
        }
        state.memos.insert(snapshot.prefix().into(), next);
        let path = nixhash::source_store_path(STORE_DIR, &nar.sha256, NAME);
        let base = base_of(&path);
        let made = temp.as_deref().zip(made_here);
        let result = self.register(snapshot, &path, &nar, made, &mut state.blobs);
        self.take_back(temp.as_deref())?;
        let made = result?;
        tracing::debug!("published in {:?}", started.elapsed());
        self.records.root(&self.project, base)?;
        state.rooted.retain(|b| b != base);
        state.rooted.push_back(base.to_owned());
        while state.rooted.len() > ROOTED {
            let old = state.rooted.pop_front().expect("more than ROOTED");
            self.records.unroot(&self.project, &old)?;
        }
        Ok(Published { path, nar, made })
    }

    /// Under the path's lock: registers `path` from the files `made` at a temporary name (made
    /// now if there are none), unless it is valid already; what making it took, if it was
    /// registered here.
    fn register(
        &self,
        snapshot: &Snapshot,
        path: &str,
        nar: &NarInfo,
        made: Option<(&str, Made)>,
        blobs: &mut blobs::Blobs,
    ) -> Result<Option<Made>, StoreError> {
        let base = base_of(path);
        let _lock = locks::PathLock::take(
            self.store.fd(),
            Path::new(STORE_DIR),
            base,
            PATH_LOCK_PATIENCE,
        )?;
        let db = nixdb::NixDb::open(Path::new(NIX_STATE))?;
        if let Some(found) = db.nar_hash(path)? {
            let expected = format!("sha256:{}", nixhash::hex(&nar.sha256));
            return match found == expected {
                true => Ok(None),
                false => Err(StoreError::Mismatch {
                    path: path.to_owned(),
                    found,
                    expected,
                }),
            };
        }
        let made = match made {
            Some((name, made)) => {
                self.move_into_place(name, base)?;
                made
            }
            None => {
                let name = self.temp_name();
                self.records.begin(&name, &self.project)?;
                let made = self.make(snapshot, &name, blobs);
                let made = made.map_err(StoreError::from).and_then(|m| {
                    self.move_into_place(&name, base)?;
                    Ok(m)
                });
                self.take_back(Some(&name))?;
                made?
            }
        };
        let registered = db.register_source(path, nar);
        if registered.is_err() {
            records::remove_entry(&self.store, base)?;
        }
        self.records.end(base)?;
        registered?;
        Ok(Some(made))
    }

    /// Makes `snapshot`'s files at the store entry `name`, counting them in the progress.
    fn make(
        &self,
        snapshot: &Snapshot,
        name: &str,
        blobs: &mut blobs::Blobs,
    ) -> Result<Made, crate::Error> {
        let _publishing = self.progress.start(snapshot.tree().files().0);
        let at = farm::At {
            store: self.store.fd(),
            links: self.links.as_fd(),
            progress: &self.progress,
        };
        farm::make(snapshot, at, name, blobs)
    }

    /// Renames the files made at `temp` to `base`, over whatever invalid entry stands there: a
    /// leftover Nix's collector would remove, or another user's entry (Nix removes it too
    /// before it makes a path).
    fn move_into_place(&self, temp: &str, base: &str) -> Result<(), StoreError> {
        self.records.begin(base, &self.project)?;
        records::remove_entry(&self.store, base)?;
        rustix::fs::renameat(self.store.fd(), temp, self.store.fd(), base)
            .map_err(|e| at(&Path::new(STORE_DIR).join(base), e))?;
        Ok(())
    }

    /// Removes what is left at the temporary name `temp` (nothing, once renamed into place),
    /// and its journal entry.
    fn take_back(&self, temp: Option<&str>) -> Result<(), StoreError> {
        if let Some(name) = temp {
            records::remove_entry(&self.store, name)?;
            self.records.end(name)?;
        }
        Ok(())
    }

    /// A name in the store for files being made, never a store path's: Nix's collector
    /// removes such an entry (it runs only once the publication lets go of its lock).
    fn temp_name(&self) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        format!(".srcstore-{}-{nanos}", std::process::id())
    }

    fn release(&self) {
        let _ = self.records.release(&self.project);
    }
}

/// A path srcstore published, as its records know it.
pub struct Publication {
    /// The project's owner.
    pub owner: u32,
    /// Where the project's daemon answers.
    pub socket: PathBuf,
}

/// Who published `path` (any string: only a store path srcstore's records list is one), from
/// srcstore's own records, never from the path's name.
pub fn published_by(path: &str) -> Option<Publication> {
    let base = path.strip_prefix(STORE_DIR)?.strip_prefix('/')?;
    if base.is_empty() || base.contains('/') || base.starts_with('.') {
        return None;
    }
    let (owner, socket) = Records::existing(Path::new(RECORDS))?.publisher(base)?;
    Some(Publication { owner, socket })
}

/// What `srcstore store gc` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Collected {
    /// Published paths no daemon roots any more, deleted through Nix.
    pub deleted: usize,
    /// Such paths Nix kept: something still uses them (a referrer, a build's temporary root).
    pub kept_alive: usize,
    /// Records of paths Nix had collected, forgotten.
    pub forgotten: usize,
    /// What the repair that comes first did, one line each.
    pub repaired: Vec<String>,
}

/// Opens srcstore's records and the store as root must, where the store can be written.
fn open_records() -> Result<(Records, crate::beneath::Tree), StoreError> {
    if !rustix::process::geteuid().is_root() {
        return Err(StoreError::NotRoot);
    }
    writable_store()?;
    let records = Records::open(Path::new(RECORDS))?;
    let store = crate::beneath::Tree::open(Path::new(STORE_DIR))?;
    Ok((records, store))
}

/// Takes back what publications and daemons that died left (`srcstore store repair`).
pub fn repair() -> Result<Vec<String>, StoreError> {
    let (records, store) = open_records()?;
    records.repair(&store)
}

/// Published paths, roots, blobs and their bytes (`srcstore store status`).
pub fn status() -> Result<Status, StoreError> {
    let (records, _) = open_records()?;
    records.status(&blobs::Blobs::open(&records.blobs_log())?)
}

/// Deletes the published paths nothing uses: after a [`repair`], each one no daemon roots is
/// handed to `nix-store --delete`, which keeps what is still alive; records of paths Nix
/// collected are forgotten. Blobs are never deleted here: Nix's collector removes a `.links`
/// entry once no path links to it.
pub fn gc() -> Result<Collected, StoreError> {
    let (records, store) = open_records()?;
    let mut c = Collected {
        repaired: records.repair(&store)?,
        ..Default::default()
    };
    let db = nixdb::NixDb::open(Path::new(NIX_STATE))?;
    for (base, rooted) in records.published()? {
        let path = format!("{STORE_DIR}/{base}");
        if !db.is_valid(&path)? {
            records.forget(&base)?;
            c.forgotten += 1;
            continue;
        }
        if rooted {
            continue;
        }
        let out = std::process::Command::new("nix-store")
            .args(["--delete", &path])
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("nix-store: {e}")))?;
        match out.status.success() {
            true => {
                records.forget(&base)?;
                c.deleted += 1;
            }
            false => c.kept_alive += 1,
        }
    }
    Ok(c)
}

/// `e`, its message naming `path`.
fn at(path: &Path, e: Errno) -> io::Error {
    let e = io::Error::from(e);
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The store path's name (its last component).
pub fn base_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}
