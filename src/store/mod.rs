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

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rustix::fs::Mode;
use rustix::io::Errno;

pub use farm::Made;
pub use nixdb::DbError;
pub use records::{Records, Status};

use crate::nar::NarInfo;
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
    #[error("{0}")]
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

/// One project's publisher: the store, the records, and the roots of this daemon's
/// publications.
pub struct Publisher {
    store: crate::beneath::Tree,
    links: OwnedFd,
    records: Records,
    project: records::Project,
    state: Mutex<State>,
}

struct State {
    blobs: blobs::Blobs,
    /// This daemon's latest publications, rooted (newest last).
    rooted: VecDeque<String>,
}

impl Publisher {
    /// The publisher for the project at `dir` owned by `owner`, whose daemon answers at
    /// `socket`. Repairs what a publication that died left (each repair said through `say`) and
    /// releases a previous daemon's roots.
    pub fn open(
        dir: &Path,
        owner: u32,
        socket: &Path,
        say: &dyn Fn(&str),
    ) -> Result<Publisher, StoreError> {
        let (records, store) = open_records()?;
        for line in records.repair(&store)? {
            say(&line);
        }
        let links = match rustix::fs::mkdirat(store.fd(), ".links", Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => farm::open_dir(store.fd(), ".links"),
            Err(e) => Err(e),
        }
        .map_err(|e| at(&Path::new(STORE_DIR).join(".links"), e))?;
        let blobs = blobs::Blobs::open(&records.blobs_log())?;
        let project = records.project(dir, owner, socket)?;
        Ok(Publisher {
            store,
            links,
            records,
            project,
            state: Mutex::new(State {
                blobs,
                rooted: VecDeque::new(),
            }),
        })
    }

    /// Publishes `snapshot` as its `source` path (see the module docs); `say` hears what it
    /// waits for.
    pub fn publish(
        &self,
        snapshot: &Snapshot,
        say: &dyn Fn(&str),
    ) -> Result<Published, StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let nar = nar::nar_info(snapshot)?;
        let path = nixhash::source_store_path(STORE_DIR, &nar.sha256, NAME);
        let base = path.rsplit('/').next().expect("a store path has a name");
        let _gc = locks::GcLock::shared(Path::new(NIX_STATE), || {
            say("waiting for Nix's garbage collector to finish")
        })?;
        let _lock = locks::PathLock::take(
            self.store.fd(),
            Path::new(STORE_DIR),
            base,
            PATH_LOCK_PATIENCE,
        )?;
        let db = nixdb::NixDb::open(Path::new(NIX_STATE))?;
        let made = match db.nar_hash(&path)? {
            Some(found) => {
                let expected = format!("sha256:{}", nixhash::hex(&nar.sha256));
                if found != expected {
                    return Err(StoreError::Mismatch {
                        path,
                        found,
                        expected,
                    });
                }
                None
            }
            None => {
                self.records.begin(base, &self.project)?;
                // Whatever stands there is no valid path: a leftover Nix's collector would
                // remove, or another user's entry. Nix removes it before it makes a path.
                records::remove_entry(&self.store, base)?;
                let made = farm::make(
                    snapshot,
                    self.store.fd(),
                    base,
                    self.links.as_fd(),
                    &mut state.blobs,
                )
                .map_err(StoreError::from)
                .and_then(|made| Ok(db.register_source(&path, &nar).map(|()| made)?));
                if made.is_err() {
                    records::remove_entry(&self.store, base)?;
                }
                self.records.end(base)?;
                Some(made?)
            }
        };
        self.records.root(&self.project, base)?;
        state.rooted.retain(|b| b != base);
        state.rooted.push_back(base.to_owned());
        while state.rooted.len() > ROOTED {
            let old = state.rooted.pop_front().expect("more than ROOTED");
            self.records.unroot(&self.project, &old)?;
        }
        Ok(Published { path, nar, made })
    }

    /// Releases this daemon's roots (the paths stay valid until Nix collects them).
    pub fn release(&self) {
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

/// Opens srcstore's records and the store as root must.
fn open_records() -> Result<(Records, crate::beneath::Tree), StoreError> {
    if !rustix::process::geteuid().is_root() {
        return Err(StoreError::NotRoot);
    }
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

fn at(path: &Path, e: Errno) -> io::Error {
    let e = io::Error::from(e);
    io::Error::new(e.kind(), format!("{}: {e}", PathBuf::from(path).display()))
}

/// The store path's name (its last component).
pub fn base_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}
