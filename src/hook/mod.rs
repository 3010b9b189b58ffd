//! The pre-build hook: which snapshots a derivation names, and making exactly those visible in
//! its sandbox without exposing anything else.
//!
//! Nix runs the hook as root before every sandboxed build of every user, so everything it reads
//! (the derivation, the mount table, the sockets the table names, the views) may be written by
//! a hostile local user. The hook never breaks a build that names no snapshot (no output, no
//! error); a build that names one runs only if each snapshot is served by a daemon running as
//! the view's owner, and sees it only through a clone that [`stage`] made of the directory it
//! resolved itself. Each snapshot stays pinned until the build's chroot is gone.

mod build_user;
pub mod idmap;
mod mountinfo;
mod namespace;
mod refs;
mod stage;
mod volume;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use mountinfo::{view_mounts, ViewMount};
pub use refs::{reference, references, refusal_block, sandbox_block, Reference, STABLE_SRC};
pub use stage::{sweep, STAGE_ROOT};

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::cache;
use crate::daemon::{paths, Client, Request, PROTOCOL_VERSION};
use crate::nix::drv;

/// With the build's chroot to watch, a pin outlives it only by this much at most.
const LEASE_WITH_CHROOT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Without it (a caller that passes no chroot), the build must finish within this.
const LEASE_WITHOUT_CHROOT: Duration = Duration::from_secs(6 * 3600);
/// How long a daemon may take to answer the hook; a build waits at most this per snapshot.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Snapshots one derivation may name: each is a mount in nix-daemon's namespace for the whole
/// build (and a few in every sandbox made meanwhile), so a derivation naming thousands would
/// slow or break every other build.
pub const MAX_SNAPSHOTS: usize = 16;

/// Why the hook refuses a build: one line naming the snapshot path.
#[derive(Debug)]
pub struct HookError {
    path: PathBuf,
    why: String,
}

impl HookError {
    pub fn new(path: impl AsRef<Path>, why: impl fmt::Display) -> Self {
        HookError {
            path: path.as_ref().to_path_buf(),
            why: why.to_string(),
        }
    }
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = format!("{}: {}", self.path.to_string_lossy(), self.why);
        f.write_str(&one_line(&line))
    }
}

impl std::error::Error for HookError {}

/// `text` with every control character escaped. Paths in a message (the snapshot's, a socket, a
/// mountpoint, a volume) come from users: a newline or a terminal escape in them is shown
/// escaped, so the message stays one line and nothing can forge another.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// The hook for the build of `drv` in `chroot`: the `extra-sandbox-paths` block to print, empty
/// when the derivation names no snapshot (or cannot be read: then it is not ours to judge).
///
/// Call [`enter_builder_namespace`] first, while the process has one thread.
pub fn run(drv: &Path, chroot: Option<&Path>) -> Result<String, HookError> {
    if let Err(e) = stage::sweep(false) {
        tracing::debug!("{STAGE_ROOT}: {e}");
    }
    let Ok(text) = fs::read(drv) else {
        return Ok(String::new());
    };
    let Ok(derivation) = drv::parse(&text) else {
        return Ok(String::new());
    };
    let views = view_mounts(&fs::read("/proc/self/mountinfo").unwrap_or_default());
    let refs = references(&derivation, &views);
    if refs.is_empty() {
        return published_source(&derivation, drv, chroot);
    }
    if refs.len() > MAX_SNAPSHOTS {
        return Err(HookError::new(
            &refs[MAX_SNAPSHOTS].path,
            format!(
                "the derivation names {} snapshots, more than the {MAX_SNAPSHOTS} one build may have",
                refs.len()
            ),
        ));
    }
    let lease = match chroot {
        Some(_) => LEASE_WITH_CHROOT,
        None => LEASE_WITHOUT_CHROOT,
    };
    // A hook that is not root runs for a Nix that is not either: its sandbox can bind only what
    // its user can read, so the path itself, once checked, is as safe as a clone of it.
    let mut staging = match rustix::process::geteuid().is_root() {
        true => Some(stage::Staging::create(chroot, lease).map_err(|e| {
            HookError::new(STAGE_ROOT, format!("cannot stage snapshots there ({e})"))
        })?),
        false => None,
    };
    let result = (|| {
        let mut staged = Vec::with_capacity(refs.len());
        for r in &refs {
            let view = r.view.as_ref().ok_or_else(|| unseen(r))?;
            check_place(view, &r.path)?;
            pin(view, r, chroot, lease)?;
            let dir = stage::resolve(view, &r.basename, &r.path)?;
            let Some(staging) = staging.as_mut() else {
                staged.push(r.path.clone());
                continue;
            };
            let slot = staging.stage(&dir).map_err(|e| {
                HookError::new(&r.path, format!("cannot stage it for the sandbox ({e})"))
            })?;
            staged.push(slot);
        }
        let mut block = sandbox_block(&refs, &staged)?;
        if let Some(partition) = asks_for_cache(&derivation, drv)? {
            let main = refs.iter().find(|r| r.is_src).unwrap_or(&refs[0]);
            let view = main.view.as_ref().expect("a staged snapshot has a view");
            let origin = Origin {
                owner: view.owner.unwrap_or(0),
                socket: view.socket.clone(),
            };
            let line = match cache_volume(&origin, &partition, drv, chroot, staging.as_mut()) {
                Ok(line) => line,
                Err(volume::Denied(why)) => denied_line(drv, &why, staging.as_mut())?,
            };
            block.insert_str(block.len() - 1, &line);
        }
        Ok(block)
    })();
    if let (Err(_), Some(staging)) = (&result, staging) {
        staging.abandon();
    }
    result
}

/// The cache partition the derivation asks for with `srcstoreCache`, checked.
fn asks_for_cache(derivation: &drv::Derivation, drv: &Path) -> Result<Option<String>, HookError> {
    let Some((_, name)) = derivation.env.iter().find(|(k, _)| k == cache::ATTRIBUTE) else {
        return Ok(None);
    };
    cache::check_partition_name(name).map_err(|e| HookError::new(drv, e))?;
    Ok(Some(name.clone()))
}

/// For a derivation that names no snapshot of a view: when it asks for the cache volume and its
/// source is a store path srcstore published (by srcstore's own records, never by the path's
/// name), the block that mounts that project's volume; else nothing.
fn published_source(
    derivation: &drv::Derivation,
    drv: &Path,
    chroot: Option<&Path>,
) -> Result<String, HookError> {
    let Some(partition) = asks_for_cache(derivation, drv)? else {
        return Ok(String::new());
    };
    let src = derivation
        .env
        .iter()
        .find(|(k, _)| k == "src")
        .map(|(_, v)| v.as_str());
    let sources = derivation.input_sources.iter().map(String::as_str);
    // The `src` attribute's first, then the others in order.
    let Some(publication) = src
        .into_iter()
        .chain(sources)
        .find_map(crate::store::published_by)
    else {
        return Ok(String::new());
    };
    let origin = Origin {
        owner: publication.owner,
        socket: publication.socket,
    };
    let mut staging = match rustix::process::geteuid().is_root() {
        true => Some(
            stage::Staging::create(chroot, LEASE_WITH_CHROOT).map_err(|e| {
                HookError::new(STAGE_ROOT, format!("cannot stage snapshots there ({e})"))
            })?,
        ),
        false => None,
    };
    let lines = match cache_volume(&origin, &partition, drv, chroot, staging.as_mut()) {
        Ok(line) => line,
        Err(volume::Denied(why)) => denied_line(drv, &why, staging.as_mut())?,
    };
    Ok(match lines.is_empty() {
        true => String::new(),
        false => format!("extra-sandbox-paths\n{lines}\n"),
    })
}

/// Where a build's cache volume comes from: the owner of the project, and its daemon's socket.
struct Origin {
    owner: u32,
    socket: PathBuf,
}

/// The sandbox line that mounts the partition of `origin`'s project at
/// [`cache::STABLE_CACHE`], for a build its owner or root asked for (see `volume`).
fn cache_volume(
    origin: &Origin,
    partition: &str,
    drv: &Path,
    chroot: Option<&Path>,
    staging: Option<&mut stage::Staging>,
) -> Result<String, volume::Denied> {
    let owner = origin.owner;
    let parent = rustix::process::getppid()
        .ok_or_else(|| volume::Denied("the hook has no parent to ask".into()))?;
    let asker = volume::requester(parent)?;
    if asker != owner {
        let why = match asker {
            0 => "root's builds (root's own, a remote builder's `nix-store --serve`, a relay) prove nothing about whom they are for, and use only root's volumes".to_owned(),
            _ => "only its owner's builds use it".to_owned(),
        };
        return Err(volume::Denied(format!(
            "asked for by uid {asker}, but the project's cache is uid {owner}'s: {why}"
        )));
    }
    let denied = |e: std::io::Error| volume::Denied(format!("{}: {e}", origin.socket.display()));
    let mut client =
        Client::connect_within(&origin.socket, owner, ANSWER_TIMEOUT).map_err(denied)?;
    let answer = client
        .request(Request::Volume {
            partition: partition.to_owned(),
        })
        .map_err(denied)?;
    let path = match answer {
        a if a.ok => PathBuf::from(a.path.unwrap_or_default()),
        a => {
            return Err(volume::Denied(format!(
                "its daemon has no cache volume for it: {}",
                a.error
                    .unwrap_or_else(|| "it does not know the request; restart it".into())
            )))
        }
    };
    let (dir, owner_gid) = volume::open(&path, owner)?;
    let exe = std::env::current_exe().ok();
    let (outside, bin) = match staging {
        // Not root: the build runs as this user, who can only be the owner here.
        None if owner == rustix::process::geteuid().as_raw() => (path.clone(), exe),
        None => {
            return Err(volume::Denied(format!(
                "{}: another user's volume",
                path.display()
            )))
        }
        Some(staging) => {
            let (build_uid, build_gid) = build_user::build_user(parent, drv, chroot)?;
            let map = idmap::Mapping {
                owner_uid: owner,
                owner_gid,
                build_uid,
                build_gid,
            };
            let slot = staging.stage_volume(&dir, map).map_err(|e| {
                volume::Denied(format!("{}: cannot mount it ({e})", path.display()))
            })?;
            // Root's own binary, read-only even to a build that runs as host root.
            let bin = exe.and_then(|e| staging.stage_read_only_file(&e).ok());
            (slot, bin)
        }
    };
    let mut lines = refs::sandbox_line(&path, Path::new(cache::STABLE_CACHE), &outside)
        .map_err(|e| volume::Denied(e.to_string()))?;
    // The build's `srcstore gocacheprog`: this very binary, root's static copy under nix.conf.
    if let Some(line) =
        bin.and_then(|b| refs::sandbox_line(&b, Path::new(cache::STABLE_BIN), &b).ok())
    {
        lines.push_str(&line);
    }
    Ok(lines)
}

/// Where a build that asked for the volume and got none reads why; said on stderr too.
fn denied_line(
    drv: &Path,
    why: &str,
    staging: Option<&mut stage::Staging>,
) -> Result<String, HookError> {
    let note = one_line(&format!("srcstore: built without the cache volume: {why}"));
    eprintln!("{}", HookError::new(drv, &note));
    let Some(staging) = staging else {
        return Ok(String::new());
    };
    let file = staging
        .note(&note)
        .map_err(|e| HookError::new(STAGE_ROOT, format!("cannot write there ({e})")))?;
    refs::sandbox_line(drv, Path::new(cache::DENIED_NOTE), &file)
}

/// Joins the mount namespace the build's sandbox is cloned from (see `namespace`); a hook calls
/// it before [`run`], while it has one thread (a mount namespace cannot be joined by more).
pub fn enter_builder_namespace() {
    if let Err(e) = namespace::join_parent() {
        // Not fatal for a build that names no snapshot; one that does gets "not visible".
        tracing::debug!("cannot join the builder's mount namespace: {e}");
    }
}

/// Whether `view` may be where it is mounted. A hash names content only as its daemon claims,
/// so a view is believed only where nobody but its owner (and root) could have put it: at a
/// default place of uid X, only X's view, in X's own private runtime directory; elsewhere, a
/// user's view only where every directory above it is root's or theirs and closed to others
/// (in a shared `/tmp`, a view could stand where a gone daemon's was and serve other bytes
/// under its names). Root's views anywhere.
fn check_place(view: &ViewMount, named: &Path) -> Result<(), HookError> {
    let owner = view.owner.unwrap_or(0);
    if owner == 0 {
        return Ok(());
    }
    let refuse = |why: String| Err(HookError::new(named, why));
    let mountpoint = view.mountpoint.to_string_lossy();
    if let Some((runtime, _)) = refs::default_runtime_dir(&format!("{mountpoint}/")) {
        let place = refs::runtime_owner(runtime);
        if place != Some(owner) {
            return refuse(format!(
                "its view is mounted by uid {owner} in another user's place ({runtime}): refused"
            ));
        }
        if let Err(e) = paths::check_private_dir(Path::new(runtime), owner) {
            return refuse(format!("{runtime}: {e}"));
        }
        return Ok(());
    }
    for dir in view.mountpoint.ancestors().skip(1) {
        let Ok(meta) = fs::symlink_metadata(dir) else {
            return refuse(format!("cannot look at {} above its view", dir.display()));
        };
        if (meta.uid() != 0 && meta.uid() != owner) || meta.mode() & 0o022 != 0 {
            return refuse(format!(
                "its view is mounted below {}, which others can write: a view there could stand where another daemon's was; mount it at the default place, or below directories only you and root can write",
                dir.display()
            ));
        }
    }
    Ok(())
}

/// A snapshot of a view that a path names, found as the hook finds what it stages: a view in
/// the mount table, in its owner's place. Nothing has been asked of the view yet.
pub struct ViewSnapshot {
    pub view: ViewMount,
    reference: Reference,
}

impl ViewSnapshot {
    /// The snapshot `path` names exactly (`<mountpoint>/<basename>`).
    pub fn find(path: &str) -> Result<ViewSnapshot, HookError> {
        let views = view_mounts(&fs::read("/proc/self/mountinfo").unwrap_or_default());
        let reference = refs::reference(path, &views).ok_or_else(|| {
            HookError::new(
                path,
                "not a snapshot path of a srcstore view (`<mountpoint>/<hash>-<name>`)",
            )
        })?;
        let view = reference.view.clone().ok_or_else(|| unseen(&reference))?;
        check_place(&view, &reference.path)?;
        Ok(ViewSnapshot { view, reference })
    }

    /// Opens its directory as the hook opens what it stages: beneath the view, with no link
    /// followed and no other mount crossed (an `O_PATH` descriptor). This asks the view.
    pub fn open(&self) -> Result<OwnedFd, HookError> {
        let r = &self.reference;
        stage::resolve(&self.view, &r.basename, &r.path)
    }
}

/// Asks the daemon the view names to keep the snapshot until the build is over. The daemon
/// must run as the view's owner (or root): a socket of anyone else's is never written to.
fn pin(
    view: &ViewMount,
    r: &Reference,
    chroot: Option<&Path>,
    lease: Duration,
) -> Result<u64, HookError> {
    let socket = view.socket.display();
    let owner = view.owner.unwrap_or(0);
    let mut client = Client::connect_within(&view.socket, owner, ANSWER_TIMEOUT).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::PermissionDenied => format!("refused: {e}"),
            _ => format!(
                "the srcstore daemon serving it is not running ({socket}: {e}); run `srcstore mount --allow-other` in the project again"
            ),
        };
        HookError::new(&r.path, why)
    })?;
    let request = Request::Pin {
        basename: r.basename.clone(),
        lease_secs: Some(lease.as_secs()),
        until_gone: chroot.map(|c| c.display().to_string()),
    };
    let mismatch = |speaks: String| {
        HookError::new(
            &r.path,
            format!(
                "its daemon speaks control protocol {speaks} and this hook speaks {PROTOCOL_VERSION}: run `srcstore nix setup --apply` as root with the srcstore the daemon runs, to install the matching hook"
            ),
        )
    };
    let answer = client.request(request).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::Other => {
            mismatch("an unknown version".into())
        }
        _ => HookError::new(
            &r.path,
            format!("its daemon did not answer ({socket}: {e})"),
        ),
    })?;
    match answer {
        a if a.ok => a.pin.ok_or_else(|| mismatch("an unknown version".into())),
        a if a.speaks.is_some() => Err(mismatch(a.speaks.unwrap_or_default().to_string())),
        a => Err(HookError::new(
            &r.path,
            format!(
                "no longer served ({}); build with the path `srcstore path` prints now",
                a.error.unwrap_or_default()
            ),
        )),
    }
}

/// A snapshot path at a default place of srcstore's with no view mounted there: its daemon is
/// gone, or it runs but its mount is out of this process's sight (nix-daemon's own mount
/// namespace sees mounts made after it started only when the root mount is shared).
fn unseen(r: &Reference) -> HookError {
    let elsewhere = "; if `srcstore mount` runs, nix-daemon may not see its mount: start it after `srcstore mount`, or make the root mount shared (`mount --make-rshared /`) and restart it";
    match serving_daemon(&r.path) {
        Some(pid) => HookError::new(
            &r.path,
            format!(
                "served by a srcstore daemon (pid {pid}), but its mount is not visible to nix-daemon, which runs in a mount namespace of its own: make the root mount shared (`mount --make-rshared /`) and restart nix-daemon, or restart nix-daemon after `srcstore mount`"
            ),
        ),
        None => HookError::new(
            &r.path,
            format!(
                "no srcstore daemon serves this snapshot any more; start `srcstore mount --allow-other` in the project and build with the path `srcstore path` prints{}",
                if own_mount_namespace() { elsewhere } else { "" }
            ),
        ),
    }
}

/// The pid of a daemon in the default runtime directory `path` lies in that serves the
/// mountpoint `path` lies in. Only a runtime directory private to its user is asked, and only
/// daemons running as that user.
fn serving_daemon(path: &Path) -> Option<u64> {
    let text = path.to_str()?;
    let (runtime, rest) = refs::default_runtime_dir(text)?;
    let mountpoint = Path::new(runtime).join(rest.split('/').next()?);
    let uid = refs::runtime_owner(runtime)?;
    // Everything through one descriptor of the directory, checked: its owner cannot swap it,
    // or a socket in it, for a link to somewhere root would then write.
    let dir = rustix::fs::open(
        runtime,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let st = rustix::fs::fstat(&dir).ok()?;
    if st.st_uid != uid || st.st_mode & 0o077 != 0 {
        return None;
    }
    let names: Vec<_> = rustix::fs::Dir::read_from(&dir)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_owned())
        .collect();
    names.into_iter().find_map(|name| {
        if !name.to_bytes().ends_with(b".sock") {
            return None;
        }
        let st = rustix::fs::statat(&dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW).ok()?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
            return None;
        }
        let socket = Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd()))
            .join(std::ffi::OsStr::from_bytes(name.to_bytes()));
        let mut client = Client::connect_within(&socket, uid, Duration::from_secs(2)).ok()?;
        let status = client.request(Request::Status).ok()?.status?;
        (status["mountpoint"].as_str()? == mountpoint.to_str()?).then(|| status["pid"].as_u64())?
    })
}

/// Whether the hook runs for a client of the Nix daemon, who never sees the hook's standard
/// error.
pub fn under_nix_daemon() -> bool {
    rustix::process::getppid().is_none_or(volume::serves_daemon_client)
}

/// Whether this process's mount namespace is not the machine's first one.
fn own_mount_namespace() -> bool {
    match (
        fs::read_link("/proc/self/ns/mnt"),
        fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(a), Ok(b)) => a != b,
        _ => false,
    }
}
