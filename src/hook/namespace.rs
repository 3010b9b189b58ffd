//! Joining the mount namespace the build's sandbox is made from.
//!
//! Nix runs the pre-build hook in the mount namespace it saved when it started, but builds from
//! one of its own: `nix-build` unshares one at start, nix-daemon runs in its own. A mount the
//! hook made where it was started would never reach the sandbox, and a view mounted after Nix
//! started may be missing from Nix's copy. So the hook first joins its parent's namespace (the
//! Nix process that will clone the sandbox), and reads the mount table, resolves and stages
//! there: what it checks is what the build gets.

use std::fs;
use std::os::fd::AsFd;

use rustix::fs::{Mode, OFlags};
use rustix::thread::LinkNameSpaceType;

/// Joins the parent's mount namespace, if the parent is a root process (Nix) in another one.
/// `Ok(false)` when there is nothing to join (the same namespace, or a caller that is not
/// root, as when a user runs the hook by hand).
pub fn join_parent() -> std::io::Result<bool> {
    if !rustix::process::geteuid().is_root() {
        return Ok(false);
    }
    let Some(ppid) = rustix::process::getppid() else {
        return Ok(false);
    };
    // Everything about the parent is read through one descriptor of its /proc directory: if it
    // died and its pid was reused, reads through it fail instead of describing another process.
    let proc = rustix::fs::open(
        format!("/proc/{}", ppid.as_raw_nonzero()),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let status = read_at(&proc, "status")?;
    let root_owned = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .is_some_and(|uids| uids.split_whitespace().all(|u| u == "0"));
    if !root_owned {
        return Ok(false);
    }
    let theirs = rustix::fs::openat(
        &proc,
        "ns/mnt",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let ours = rustix::fs::open(
        "/proc/self/ns/mnt",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if rustix::fs::fstat(&theirs)?.st_ino == rustix::fs::fstat(&ours)?.st_ino {
        return Ok(false);
    }
    if rustix::process::getppid() != Some(ppid) {
        return Err(std::io::Error::other(
            "the process that ran the hook is gone",
        ));
    }
    rustix::thread::move_into_link_name_space(theirs.as_fd(), Some(LinkNameSpaceType::Mount))?;
    // A namespace switch leaves the working directory and root pointing into the old one.
    rustix::process::chdir("/")?;
    Ok(true)
}

fn read_at(dir: &impl AsFd, name: &str) -> std::io::Result<String> {
    let fd = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    std::io::read_to_string(fs::File::from(fd))
}
