//! Which user a build runs as on the host, found exactly or not at all.
//!
//! Nix does not tell its pre-build hook. It runs the hook from the process doing the build (the
//! daemon's worker, or a client building for itself), synchronously, after it has locked this
//! build's user and made its build directory, and before it starts the builder. So:
//!
//! - Under `auto-allocate-uids` the parent locks `userpool2/slot-<i>`, and with the sandbox the
//!   build's group is its first uid, which Nix gives the chroot: the chroot names the user.
//! - Otherwise the parent holds a lock on `userpool/<uid>` for every build it runs. One lock is
//!   this build's. With several, a user who runs a process is not this build's (Nix killed every
//!   process of this build's user before it, and its builder has not started); among those left,
//!   this build's is the one owning this build's directory: in `nix-<pid>-<n>` (2.32+) or
//!   `nix-build-<name>.drv-<pid>-<n>` (2.30–2.31) the parent's latest, in
//!   `nix-build-<name>.drv-<n>` (up to 2.29) the only one named for this derivation. Since 2.18.5
//!   that directory is root's and the user owns `build` inside it.
//! - Anything else leaves more than one user possible, and the hook says so instead of guessing.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::process::Pid;

use super::volume::{state_dir, uids, Denied};

/// The uid and gid the build of `drv` (chroot `chroot` as Nix gave it, if sandboxed) runs as.
/// `parent` is the Nix process that runs the hook.
pub fn build_user(parent: Pid, drv: &Path, chroot: Option<&Path>) -> Result<(u32, u32), Denied> {
    let pid = parent.as_raw_nonzero().get();
    let proc = format!("/proc/{pid}");
    let locks = Locks::held_by(&proc, &state_dir());
    if !locks.slots.is_empty() {
        return slot_user(chroot);
    }
    let uid = match locks.users[..] {
        // Build users off (`build-users-group =`): the build runs as its Nix process's user.
        [] => uids(&proc).ok_or_else(|| Denied(format!("cannot tell who runs {proc}")))?[0],
        [uid] => uid,
        _ => among(&locks.users, pid as u32, drv)?,
    };
    // Nix gives the chroot to root and the build group.
    let gid = chroot
        .and_then(|c| fs::symlink_metadata(c).ok())
        .filter(|m| m.uid() == 0)
        .map(|m| m.gid())
        .or_else(|| crate::accounts::user(uid).map(|u| u.gid))
        .ok_or_else(|| Denied(format!("cannot tell the group of build user {uid}")))?;
    Ok((uid, gid))
}

/// The locks a Nix process holds on build users.
struct Locks {
    /// `userpool/<uid>`: classic build users.
    users: Vec<u32>,
    /// `userpool2/slot-<i>`: `auto-allocate-uids`.
    slots: Vec<u32>,
}

impl Locks {
    fn held_by(proc: &str, state: &Path) -> Locks {
        let (pool, pool2) = (state.join("userpool"), state.join("userpool2"));
        let mut locks = Locks {
            users: Vec::new(),
            slots: Vec::new(),
        };
        for fd in fs::read_dir(format!("{proc}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let name = |dir: &Path| Some(target.strip_prefix(dir).ok()?.to_str()?.to_owned());
            if let Some(uid) = name(&pool).and_then(|n| n.parse().ok()) {
                locks.users.push(uid);
            } else if let Some(i) = name(&pool2).and_then(|n| n.strip_prefix("slot-")?.parse().ok())
            {
                locks.slots.push(i);
            }
        }
        for v in [&mut locks.users, &mut locks.slots] {
            v.sort_unstable();
            v.dedup();
        }
        locks
    }
}

/// Under `auto-allocate-uids`, the build's user from its chroot: Nix makes it `root:<uid>`, or
/// `<uid>:<uid>` for a build with a uid range.
fn slot_user(chroot: Option<&Path>) -> Result<(u32, u32), Denied> {
    let chroot = chroot.ok_or_else(|| {
        Denied("an auto-allocated build user without a sandbox: nothing names it".into())
    })?;
    let m =
        fs::symlink_metadata(chroot).map_err(|e| Denied(format!("{}: {e}", chroot.display())))?;
    match (m.uid(), m.gid()) {
        (u, g) if g >= 1 << 16 && (u == 0 || u == g) => Ok((g, g)),
        (u, g) => Err(Denied(format!(
            "{}: owned by {u}:{g}, not by an auto-allocated build user",
            chroot.display()
        ))),
    }
}

/// Which of the build users `locked` by the Nix process `pid` builds `drv`.
fn among(locked: &[u32], pid: u32, drv: &Path) -> Result<u32, Denied> {
    let running = users_running();
    let idle: Vec<u32> = locked
        .iter()
        .copied()
        .filter(|u| !running.contains(u))
        .collect();
    if let [uid] = idle[..] {
        return Ok(uid);
    }
    let name = drv
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once('-'))
        .map_or("", |(_, n)| n);
    let dirs = BuildDirs::find(&build_roots(), name, pid)?;
    let mut owners: Vec<u32> = match dirs.latest_of_parent() {
        Some(dir) => owner(dir).into_iter().collect(),
        None => dirs.named.iter().filter_map(|d| owner(d)).collect(),
    };
    owners.retain(|u| idle.contains(u));
    owners.sort_unstable();
    owners.dedup();
    match owners[..] {
        [uid] => Ok(uid),
        _ => Err(Denied(format!(
            "cannot tell which of the build users {idle:?} builds it (its Nix process, pid {pid}, runs several builds at once)"
        ))),
    }
}

/// The build directories that can be this build's.
#[derive(Debug, Default, PartialEq)]
struct BuildDirs {
    /// Named for the parent process, with their counter: `nix-<pid>-<n>`,
    /// `nix-build-<name>-<pid>-<n>` (Nix 2.30+).
    of_parent: Vec<(u32, PathBuf)>,
    /// Named for the derivation only: `nix-build-<name>-<n>` (up to Nix 2.29).
    named: Vec<PathBuf>,
}

/// How many entries of one directory the hook looks at for build directories: others can fill
/// `/tmp`, and the hook must answer in bounded time. Past it, it cannot tell, and says so.
const MAX_ENTRIES: usize = 1 << 16;

impl BuildDirs {
    fn find(roots: &[PathBuf], name: &str, pid: u32) -> Result<BuildDirs, Denied> {
        let mut found = BuildDirs::default();
        for root in roots {
            for (i, e) in fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .enumerate()
            {
                if i == MAX_ENTRIES {
                    return Err(Denied(format!(
                        "{}: more than {MAX_ENTRIES} entries to look through for the build's directory",
                        root.display()
                    )));
                }
                if let Some(n) = e.file_name().to_str() {
                    found.add(root.join(n), n, name, pid);
                }
            }
        }
        Ok(found)
    }

    fn add(&mut self, path: PathBuf, entry: &str, name: &str, pid: u32) {
        let counter = |s: &str| -> Option<u32> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
        };
        let of_pid = |rest: &str| {
            let (p, n) = rest.split_once('-')?;
            (p.parse() == Ok(pid)).then_some(counter(n)?)
        };
        let named = entry
            .strip_prefix("nix-build-")
            .and_then(|r| r.strip_prefix(name))
            .and_then(|r| r.strip_prefix('-'))
            .filter(|_| !name.is_empty());
        if let Some(n) = entry.strip_prefix("nix-").and_then(of_pid) {
            self.of_parent.push((n, path));
        } else if let Some(rest) = named {
            match of_pid(rest) {
                Some(n) => self.of_parent.push((n, path)),
                None if counter(rest).is_some() => self.named.push(path),
                None => {}
            }
        }
    }

    /// The parent's directory made last. Nix counts them up from a random start, modulo 2³²:
    /// the latest is the one every other is at most 2³¹ before.
    fn latest_of_parent(&self) -> Option<&Path> {
        self.of_parent
            .iter()
            .find(|(n, _)| {
                self.of_parent
                    .iter()
                    .all(|(m, _)| n.wrapping_sub(*m) < 1 << 31)
            })
            .map(|(_, p)| p.as_path())
    }
}

/// Where Nix makes build directories: its `TMPDIR` (the hook has the environment of the Nix
/// process that runs it) up to 2.29, `build-dir` where set (2.22+), `<state>/builds` (2.30+).
fn build_roots() -> Vec<PathBuf> {
    let tmp = std::env::var_os("TMPDIR")
        .filter(|t| !t.is_empty())
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let mut roots = vec![tmp, state_dir().join("builds")];
    roots.extend(configured_build_dir());
    roots
}

/// `build-dir` from Nix's configuration file, if set there.
fn configured_build_dir() -> Option<PathBuf> {
    let dir =
        std::env::var_os("NIX_CONF_DIR").map_or_else(|| PathBuf::from("/etc/nix"), PathBuf::from);
    let conf = fs::read_to_string(dir.join("nix.conf")).ok()?;
    conf.lines().rev().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "build-dir").then(|| PathBuf::from(v.trim()))
    })
}

/// Who owns the build directory `dir`: the directory's owner, or since Nix 2.18.5, where it is
/// root's, the owner of `build` inside it. The directory is opened once, no symlink followed,
/// and `build` is looked at beneath that descriptor: others may write where it sits (`/tmp`).
fn owner(dir: &Path) -> Option<u32> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(dir, flags, Mode::empty()).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    if st.st_uid != 0 {
        return Some(st.st_uid);
    }
    let st = rustix::fs::statat(&fd, "build", AtFlags::SYMLINK_NOFOLLOW).ok()?;
    (FileType::from_raw_mode(st.st_mode) == FileType::Directory && st.st_uid != 0)
        .then_some(st.st_uid)
}

/// Every uid a process on the machine runs with.
fn users_running() -> Vec<u32> {
    let mut users: Vec<u32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| uids(&e.path().to_string_lossy()))
        .flatten()
        .collect();
    users.sort_unstable();
    users.dedup();
    users
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(entries: &[&str]) -> BuildDirs {
        let mut d = BuildDirs::default();
        for e in entries {
            d.add(PathBuf::from(e), e, "hello.drv", 42);
        }
        d
    }

    #[test]
    fn every_layout_names_this_builds_directory_and_no_other() {
        let d = dirs(&[
            "nix-build-hello.drv-0",    // up to 2.29
            "nix-build-hello.drv-42-7", // 2.30–2.31
            "nix-42-9",                 // 2.32+
            "nix-43-10",                // another Nix process
            "nix-build-hello.drv-43-1", // another Nix process
            "nix-build-hello2.drv-0",   // another derivation
            "nix-build-hello.drv-x",    // not Nix's
            "nix-build-hello.drv-",     // not Nix's
        ]);
        assert_eq!(d.named, vec![PathBuf::from("nix-build-hello.drv-0")]);
        assert_eq!(
            d.of_parent,
            vec![
                (7, PathBuf::from("nix-build-hello.drv-42-7")),
                (9, PathBuf::from("nix-42-9"))
            ]
        );
    }

    #[test]
    fn the_latest_directory_of_the_parent_is_found_across_the_counters_wrap() {
        assert_eq!(
            dirs(&["nix-42-7", "nix-42-9", "nix-42-8"]).latest_of_parent(),
            Some(Path::new("nix-42-9"))
        );
        assert_eq!(
            dirs(&["nix-42-4294967294", "nix-42-1", "nix-42-4294967295"]).latest_of_parent(),
            Some(Path::new("nix-42-1"))
        );
        assert_eq!(dirs(&["nix-build-hello.drv-0"]).latest_of_parent(), None);
    }
}
