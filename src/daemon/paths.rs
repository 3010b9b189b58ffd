//! Where a user's daemons keep sockets, locks and default mountpoints, and the check that such
//! a place is its user's own; and where srcstore keeps what outlives a reboot ([`cache_home`]).
//!
//! `/run/srcstore` for root, `$XDG_RUNTIME_DIR/srcstore` for a user who has one, and
//! `/tmp/srcstore-<uid>` otherwise (whatever `TMPDIR` says, so that the root hook, which never
//! sees a user's environment, knows every default place). A runtime directory is used only
//! when it is a directory of its user's, closed to everyone else: in a shared `/tmp`, another
//! user could otherwise have made it first and put a socket of their own in it.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where daemons of this user keep sockets, locks and default mountpoints.
pub fn runtime_dir() -> PathBuf {
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/srcstore");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("srcstore"),
        None => fallback_runtime_dir(uid.as_raw()),
    }
}

/// Where srcstore keeps what must outlive the daemon and the machine's reboots (indexes, the
/// epoch of node ids, cache volumes): `${XDG_CACHE_HOME:-$HOME/.cache}/srcstore`, unlike the
/// runtime directory, which the system empties. `None` when neither variable is set. The one
/// rule for this place: everything that keeps files there asks here.
pub fn cache_home() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("srcstore"))
}

/// A user's runtime directory when they have no `XDG_RUNTIME_DIR`.
pub fn fallback_runtime_dir(uid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/srcstore-{uid}"))
}

/// [`runtime_dir`], made (mode 0700) if `create` and it is missing, and checked: a directory,
/// not a link, owned by this user and closed to everyone else. Anything else is refused with
/// the reason and the fix, since whoever controls it controls what `path` answers.
pub fn private_runtime_dir(create: bool) -> std::io::Result<PathBuf> {
    let dir = runtime_dir();
    if create {
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = dir.parent() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)?;
                }
                std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
            }
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    check_private_dir(&dir, rustix::process::geteuid().as_raw())?;
    Ok(dir)
}

/// `dir` is a directory (not a link) owned by `uid` with no access for group or others.
pub fn check_private_dir(dir: &Path, uid: u32) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            why,
        ))
    };
    if !meta.file_type().is_dir() {
        return refuse(format!(
            "not a directory of srcstore's (a {}); remove it and start again",
            if meta.file_type().is_symlink() {
                "symlink"
            } else {
                "file"
            }
        ));
    }
    if meta.uid() != uid {
        return refuse(format!(
            "owned by uid {}, not by uid {uid}: another user may have made it; remove it (as root) and start again",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return refuse(format!(
            "mode {:o} lets other users in; run `chmod 700` on it",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

fn key(project: &Path) -> String {
    blake3::hash(project.as_os_str().as_bytes()).to_hex()[..24].to_string()
}

pub fn socket_path(runtime: &Path, project: &Path) -> PathBuf {
    runtime.join(format!("{}.sock", key(project)))
}

pub fn lock_path(runtime: &Path, project: &Path) -> PathBuf {
    runtime.join(format!("{}.lock", key(project)))
}

/// The private directory the project's daemon makes its sync cookies in.
pub fn cookie_dir(runtime: &Path, project: &Path) -> PathBuf {
    runtime.join(format!("{}.cookies", key(project)))
}

/// The project's compile cache volume, `volumes/<key>` under the cache home.
pub fn volume_path(cache_home: &Path, project: &Path) -> PathBuf {
    cache_home.join("volumes").join(key(project))
}

/// `<runtime>/<name>-<key>`: one mountpoint per project, readable by name.
pub fn default_mountpoint(runtime: &Path, project: &Path, name: &str) -> PathBuf {
    runtime.join(format!("{name}-{}", &key(project)[..8]))
}

/// The project directory served by a daemon, searching `start` and its ancestors.
pub fn find_project(runtime: &Path, start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|dir| socket_path(runtime, dir).exists())
        .map(Path::to_path_buf)
}
