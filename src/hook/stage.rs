//! Resolving a named snapshot the way root must, and staging a clone of it for the sandbox.
//!
//! Everything the hook is handed comes from users: the derivation, the mount table, the view's
//! answers. Nix bind-mounts whatever path the hook prints, following symlinks, as root; so the
//! hook never prints a path a user can redirect. It opens the view's root by the mountpoint
//! without following any symlink, checks by the mount's id that it holds the root of the very
//! FUSE mount the table listed, opens the snapshot's directory beneath it without following
//! symlinks or leaving that mount, and clones exactly that directory
//! (`open_tree(OPEN_TREE_CLONE)`, not recursive) onto a slot of a root-only staging directory
//! (`move_mount`). The kernel fixed the directory when it was opened, so a server that answers
//! "directory" now and "symlink" later changes nothing: Nix binds the clone, and the clone can
//! only show what that FUSE server serves, never a path outside it.
//!
//! Staging directories, one per build, live in [`STAGE_ROOT`] with a `build` record naming the
//! build's chroot (or a deadline). The hook exits before the build starts and a user's daemon
//! cannot unmount root's mounts, so every hook run first sweeps away the stagings of builds
//! that are over; `srcstore nix setup --undo` sweeps them all.

use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, StatxFlags, CWD};
use rustix::io::Errno;
use rustix::mount::{MoveMountFlags, OpenTreeFlags, UnmountFlags};

use super::idmap::{self, Mapping};
use super::mountinfo::ViewMount;
use super::HookError;

/// Where staged snapshots are mounted: root's own, mode 0700.
pub const STAGE_ROOT: &str = "/run/srcstore-hook";
/// `statfs` type of a FUSE filesystem.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
/// A staging whose hook died before it wrote its record is swept after this.
const UNRECORDED_GRACE: Duration = Duration::from_secs(60);

/// Opens the snapshot directory `basename` of `view` as described in the module docs.
pub fn resolve(view: &ViewMount, basename: &str, named: &Path) -> Result<OwnedFd, HookError> {
    let fail = |why: String| HookError::new(named, why);
    let root = open_dir_unfollowed(&view.mountpoint).map_err(|e| {
        fail(format!(
            "cannot open the view at {} without following symlinks ({e})",
            view.mountpoint.display()
        ))
    })?;
    let st = rustix::fs::statx(&root, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)
        .map_err(|e| fail(format!("cannot stat the view ({e})")))?;
    let is_fuse = rustix::fs::fstatfs(&root).is_ok_and(|s| s.f_type == FUSE_SUPER_MAGIC);
    if st.stx_mnt_id != view.id || !is_fuse {
        return Err(fail(format!(
            "{} is not the srcstore view the mount table lists there (it changed while the hook looked); build again",
            view.mountpoint.display()
        )));
    }
    rustix::fs::openat2(
        &root,
        basename,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV,
    )
    .map_err(|e| {
        fail(match e {
            Errno::NOENT => {
                "not served by the view; build with the path `srcstore path` prints now".into()
            }
            Errno::LOOP | Errno::NOTDIR => {
                "not a directory of the srcstore view (a symlink or a file): refused".into()
            }
            Errno::XDEV => "another mount covers it inside the view: refused".into(),
            e => format!("cannot open it in the view ({e})"),
        })
    })
}

/// Opens the directory at the absolute `path` as root must open what users name: no symlink
/// followed anywhere in it (nor a magic link of /proc), only a handle (`O_PATH`) to check and
/// clone.
pub fn open_dir_unfollowed(path: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        CWD,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

/// A staging directory for one build's snapshots.
pub struct Staging {
    dir: PathBuf,
    slots: usize,
}

impl Staging {
    /// A new staging directory for the build with `chroot` (or one that ends within `lease`),
    /// its record written before anything is mounted in it.
    pub fn create(chroot: Option<&Path>, lease: Duration) -> std::io::Result<Staging> {
        let root = stage_root(true)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let dir = root.join(format!("{}-{}", std::process::id(), now.as_nanos()));
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let record = match chroot {
            Some(c) => format!("chroot {}\n", c.display()),
            None => format!("until {}\n", (now + lease).as_secs()),
        };
        // Whole or absent: a concurrent sweep reading half a chroot's path would find no such
        // directory and take this staging for a finished build's.
        crate::atomic::write_whole(&dir.join("build"), record.as_bytes())?;
        Ok(Staging { dir, slots: 0 })
    }

    /// Mounts a clone of the directory `dir` (from [`resolve`]) on the next slot; its path.
    pub fn stage(&mut self, dir: &OwnedFd) -> std::io::Result<PathBuf> {
        let slot = self.next_slot()?;
        attach(&clone_of(dir)?, &slot)?;
        Ok(slot)
    }

    /// Mounts an id-mapped clone of the volume directory `dir` (from `volume::open`) on the
    /// next slot, showing `map`'s owner as its build user; its path.
    pub fn stage_volume(&mut self, dir: &OwnedFd, map: Mapping) -> std::io::Result<PathBuf> {
        let slot = self.next_slot()?;
        let tree = clone_of(dir)?;
        let userns = match map.is_identity() {
            true => None,
            false => Some(idmap::user_namespace(map)?),
        };
        idmap::set_attrs(&tree, userns.as_ref().map(|n| n.as_fd()), false)?;
        attach(&tree, &slot)?;
        Ok(slot)
    }

    /// Mounts a read-only clone of the file `path` (root's own) on a new file slot; its path.
    /// A bind that Nix makes of it stays read-only, even for a build running as host root.
    pub fn stage_read_only_file(&mut self, path: &Path) -> std::io::Result<PathBuf> {
        let slot = self.dir.join(format!("{}.file", self.slots));
        self.slots += 1;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&slot)?;
        let file = rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
        let tree = clone_of(&file)?;
        idmap::set_attrs(&tree, None, true)?;
        attach(&tree, &slot)?;
        Ok(slot)
    }

    /// A file `note` in this staging holding `text` and a newline, readable by the build.
    pub fn note(&mut self, text: &str) -> std::io::Result<PathBuf> {
        let path = self.dir.join("note");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)?;
        writeln!(f, "{text}")?;
        Ok(path)
    }

    fn next_slot(&mut self) -> std::io::Result<PathBuf> {
        let slot = self.dir.join(self.slots.to_string());
        self.slots += 1;
        fs::DirBuilder::new().mode(0o700).create(&slot)?;
        Ok(slot)
    }

    /// Takes back what this staging mounted (a hook that fails after staging).
    pub fn abandon(self) {
        remove(&self.dir);
    }
}

/// A detached clone of exactly the directory `dir` (no mounts below it).
fn clone_of(dir: &OwnedFd) -> std::io::Result<OwnedFd> {
    Ok(rustix::mount::open_tree(
        dir,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )?)
}

fn attach(tree: &OwnedFd, slot: &Path) -> std::io::Result<()> {
    Ok(rustix::mount::move_mount(
        tree,
        "",
        CWD,
        slot,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?)
}

/// The staging root, made if `create` and checked: root's own directory, closed to others.
fn stage_root(create: bool) -> std::io::Result<PathBuf> {
    let root = PathBuf::from(STAGE_ROOT);
    if create {
        match fs::DirBuilder::new().mode(0o700).create(&root) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    crate::daemon::paths::check_private_dir(&root, 0)?;
    Ok(root)
}

/// Removes the stagings of builds that are over (every one, with `all`); how many.
pub fn sweep(all: bool) -> std::io::Result<usize> {
    let root = match stage_root(false) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        r => r?,
    };
    let mut removed = 0;
    for entry in fs::read_dir(&root)? {
        let dir = entry?.path();
        if all || is_over(&dir) {
            remove(&dir);
            removed += 1;
        }
    }
    Ok(removed)
}

fn is_over(dir: &Path) -> bool {
    // A record not yet written (it is written whole, after the directory is made) is a hook's
    // still at work, until the grace runs out.
    let record = fs::read_to_string(dir.join("build")).unwrap_or_default();
    let record = record.trim_end();
    if let Some(chroot) = record.strip_prefix("chroot ") {
        return fs::symlink_metadata(chroot)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
    }
    if let Some(until) = record
        .strip_prefix("until ")
        .and_then(|u| u.parse::<u64>().ok())
    {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        return now >= until;
    }
    let age = fs::symlink_metadata(dir).map_or(Duration::MAX, |m| {
        let made = UNIX_EPOCH + Duration::from_secs(m.ctime().max(0) as u64);
        SystemTime::now().duration_since(made).unwrap_or_default()
    });
    age > UNRECORDED_GRACE
}

/// Detaches every slot's mount (a dead daemon's answers ENOTCONN; detaching still works) and
/// removes the directory.
fn remove(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            // The record and a note are files; every other entry a slot with a mount on it (a
            // directory, or a file named `<n>.file`).
            let is_slot = entry.file_name().to_string_lossy().ends_with(".file");
            if !is_slot && entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = fs::remove_file(&path);
                continue;
            }
            match rustix::mount::unmount(&path, UnmountFlags::DETACH) {
                Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => {}
                Err(e) => {
                    tracing::warn!("{}: cannot unmount a staged snapshot: {e}", path.display())
                }
            }
            let _ = match is_slot {
                true => fs::remove_file(&path),
                false => fs::remove_dir(&path),
            };
        }
    }
    let _ = fs::remove_dir(dir);
}
