//! srcstore's records of the store, in a directory of root's own (`/nix/var/srcstore`), and
//! the roots that keep its publications from Nix's collector.
//!
//! - `projects/<key>`: a publishing project (`owner <uid>`, `dir <path>`, its daemon's
//!   `socket <path>`); `<key>.lock` is held by its daemon for as long as it runs, so a lock
//!   anyone can take is a daemon that is gone.
//! - `publishing/<base>`: a publication under way (the key of its project), written before
//!   anything is made in the store and removed once the path is registered.
//! - `published/<base>`: what srcstore registered, and for which project.
//! - `blobs`: the blob log ([`super::blobs`]).
//! - Roots: `<state>/gcroots/srcstore/<key>/<base>`, a symlink to the path, the form of
//!   root Nix's collector reads beneath `gcroots`.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::{at, nixdb::NixDb, NIX_STATE, STORE_DIR};
use crate::beneath::Tree;

pub struct Records {
    dir: PathBuf,
    roots: PathBuf,
}

/// A project as its daemon publishes it: its key, and its lock held.
pub struct Project {
    key: String,
    _lock: OwnedFd,
}

/// What `srcstore store status` shows.
#[derive(Debug, Default, serde::Serialize)]
pub struct Status {
    /// Paths srcstore registered that are still valid, and those Nix has collected since.
    pub published: usize,
    pub collected: usize,
    pub roots: usize,
    /// Blobs srcstore knows of that are still in `.links`, and their bytes.
    pub blobs: usize,
    pub blob_bytes: u64,
    /// Publications under way (or left by one that died: `repair` takes those).
    pub publishing: usize,
}

impl Records {
    pub fn open(dir: &Path) -> io::Result<Records> {
        let gcroots = Path::new(NIX_STATE).join("gcroots");
        let roots = gcroots.join("srcstore");
        // Nix makes `gcroots` when it first runs; srcstore may run first.
        make_dir(&gcroots, 0o755)?;
        for d in [dir, &roots] {
            make_dir(d, if d == dir { 0o700 } else { 0o755 })?;
        }
        crate::daemon::paths::check_private_dir(dir, 0)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        for sub in ["projects", "publishing", "published"] {
            make_dir(&dir.join(sub), 0o700)?;
        }
        Ok(Records {
            dir: dir.to_path_buf(),
            roots,
        })
    }

    pub fn blobs_log(&self) -> PathBuf {
        self.dir.join("blobs")
    }

    /// Takes `dir`'s project for this daemon (answering at `socket`), releasing the roots a
    /// previous one left.
    pub fn project(&self, dir: &Path, owner: u32, socket: &Path) -> io::Result<Project> {
        let id = format!("owner {owner}\ndir {}\n", dir.display());
        let key = format!("{owner}-{}", &blake3::hash(id.as_bytes()).to_hex()[..16]);
        let lock_path = self.dir.join(format!("projects/{key}.lock"));
        let lock = open_lock(&lock_path)?;
        match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{}: another daemon publishes this project; stop it first",
                        dir.display()
                    ),
                ))
            }
            Err(e) => return Err(at(&lock_path, e)),
        }
        let record = format!("{id}socket {}\n", socket.display());
        crate::atomic::write_whole(&self.dir.join(format!("projects/{key}")), record.as_bytes())?;
        let project = Project { key, _lock: lock };
        self.release(&project)?;
        make_dir(&self.roots.join(&project.key), 0o755)?;
        Ok(project)
    }

    /// Journals a publication of `base` for `project` before anything of it is made.
    pub fn begin(&self, base: &str, project: &Project) -> io::Result<()> {
        crate::atomic::write_whole(
            &self.dir.join("publishing").join(base),
            project.key.as_bytes(),
        )
    }

    /// The publication of `base` is over: registered, or taken back.
    pub fn end(&self, base: &str) -> io::Result<()> {
        remove_file(&self.dir.join("publishing").join(base))
    }

    /// Roots `base` for `project`, and records it as published by it.
    pub fn root(&self, project: &Project, base: &str) -> io::Result<()> {
        let link = self.roots.join(&project.key).join(base);
        remove_file(&link)?;
        std::os::unix::fs::symlink(Path::new(STORE_DIR).join(base), &link)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", link.display())))?;
        crate::atomic::write_whole(
            &self.dir.join("published").join(base),
            project.key.as_bytes(),
        )
    }

    pub fn unroot(&self, project: &Project, base: &str) -> io::Result<()> {
        remove_file(&self.roots.join(&project.key).join(base))
    }

    /// Removes every root of `project`.
    pub fn release(&self, project: &Project) -> io::Result<()> {
        release_roots(&self.roots.join(&project.key)).map(drop)
    }

    /// Takes back what publications that died left: a half-made entry in the store is
    /// removed, a registered one kept (a path is registered only once whole), and the roots of
    /// daemons that are gone are released. What it did, one line each.
    pub fn repair(&self, store: &Tree) -> Result<Vec<String>, super::StoreError> {
        let mut said = Vec::new();
        let dead = |key: &str| -> io::Result<bool> {
            let lock = open_lock(&self.dir.join(format!("projects/{key}.lock")))?;
            Ok(rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok())
        };
        let journal = self.dir.join("publishing");
        let mut db = None;
        for entry in fs::read_dir(&journal)? {
            let entry = entry?;
            let base = entry.file_name().to_string_lossy().into_owned();
            // A journal entry being written (or a write that died): no name of the store's.
            if base.starts_with(".tmp-") {
                continue;
            }
            let key = fs::read_to_string(entry.path()).unwrap_or_default();
            if !dead(key.trim())? {
                continue; // under way
            }
            let db = match &mut db {
                Some(db) => db,
                None => db.insert(NixDb::open(Path::new(NIX_STATE))?),
            };
            let path = format!("{STORE_DIR}/{base}");
            if db.is_valid(&path)? {
                said.push(format!(
                    "{path}: published whole before its daemon died; kept"
                ));
            } else if remove_entry(store, &base)? {
                said.push(format!(
                    "{path}: removed, left half-made by a publication that died"
                ));
            }
            self.end(&base)?;
        }
        for entry in fs::read_dir(&self.roots)? {
            let entry = entry?;
            let key = entry.file_name().to_string_lossy().into_owned();
            if dead(&key)? && release_roots(&entry.path())? > 0 {
                said.push(format!(
                    "released the roots of a daemon that is gone ({})",
                    self.project_dir(&key)
                ));
            }
        }
        Ok(said)
    }

    /// The paths srcstore published, each with whether a daemon's root still holds it.
    pub fn published(&self) -> io::Result<Vec<(String, bool)>> {
        let mut rooted = std::collections::HashSet::new();
        for entry in fs::read_dir(&self.roots)? {
            for root in fs::read_dir(entry?.path())? {
                rooted.insert(root?.file_name());
            }
        }
        let mut out = Vec::new();
        for entry in fs::read_dir(self.dir.join("published"))? {
            let name = entry?.file_name();
            let held = rooted.contains(&name);
            out.push((name.to_string_lossy().into_owned(), held));
        }
        Ok(out)
    }

    /// Forgets that srcstore published `base` (Nix collected it).
    pub fn forget(&self, base: &str) -> io::Result<()> {
        remove_file(&self.dir.join("published").join(base))
    }

    fn project_dir(&self, key: &str) -> String {
        self.project_field(key, "dir")
            .unwrap_or_else(|| key.to_owned())
    }

    /// The field `name` of the record of the project `key`.
    fn project_field(&self, key: &str, name: &str) -> Option<String> {
        let record = fs::read_to_string(self.dir.join("projects").join(key)).ok()?;
        record
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
    }

    /// Who published the path named `base`, and where its daemon answers, if srcstore did.
    pub fn publisher(&self, base: &str) -> Option<(u32, PathBuf)> {
        let key = fs::read_to_string(self.dir.join("published").join(base)).ok()?;
        let owner = self.project_field(key.trim(), "owner")?.parse().ok()?;
        let socket = self.project_field(key.trim(), "socket")?;
        Some((owner, PathBuf::from(socket)))
    }

    /// The records at `dir` for reading only, if they are root's and closed to others.
    pub fn existing(dir: &Path) -> Option<Records> {
        crate::daemon::paths::check_private_dir(dir, 0).ok()?;
        Some(Records {
            dir: dir.to_path_buf(),
            roots: Path::new(NIX_STATE).join("gcroots/srcstore"),
        })
    }

    /// Counts for `srcstore store status`.
    pub fn status(&self, blobs: &super::blobs::Blobs) -> Result<Status, super::StoreError> {
        let db = NixDb::open(Path::new(NIX_STATE))?;
        let mut s = Status::default();
        for (base, rooted) in self.published()? {
            match db.is_valid(&format!("{STORE_DIR}/{base}"))? {
                true => s.published += 1,
                false => s.collected += 1,
            }
            s.roots += rooted as usize;
        }
        s.publishing = fs::read_dir(self.dir.join("publishing"))?.count();
        let links = Path::new(STORE_DIR).join(".links");
        for name in blobs.names() {
            if let Ok(m) = fs::symlink_metadata(links.join(name)) {
                s.blobs += 1;
                s.blob_bytes += m.len();
            }
        }
        Ok(s)
    }
}

/// Removes whatever stands at `base` in the store (a directory with all it holds, never
/// following a link); whether there was anything.
pub(super) fn remove_entry(store: &Tree, base: &str) -> io::Result<bool> {
    match rustix::fs::statat(store.fd(), base, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(at(&Path::new(STORE_DIR).join(base), e)),
        Ok(st) => {
            store.remove(Path::new(base), st.st_ino)?;
            Ok(true)
        }
    }
}

/// Removes the root links in `dir`; how many.
fn release_roots(dir: &Path) -> io::Result<usize> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        r => r.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?,
    };
    let mut n = 0;
    for entry in entries {
        remove_file(&entry?.path())?;
        n += 1;
    }
    Ok(n)
}

fn make_dir(dir: &Path, mode: u32) -> io::Result<()> {
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display())))
        }
        _ => Ok(()),
    }
}

fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        }
        _ => Ok(()),
    }
}

fn open_lock(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| at(path, e))
}
