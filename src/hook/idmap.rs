//! An id-mapped mount: the owner's cache volume shown as the build user's.
//!
//! A build runs as whichever build user Nix picked (nixbld1 now, nixbld7 next), and inside its
//! sandbox as uid 1000 of a user namespace. The volume's files are the owner's, mode 0700: an
//! id-mapped mount of it (`mount_setattr(MOUNT_ATTR_IDMAP)`) shows the owner's uid and gid as
//! the build user's and group's, and files the build creates land on disk as the owner's. So
//! any build user reads and replaces what an earlier one wrote, with no `chown`, no shared
//! group and nothing opened to other local users.
//!
//! The mapping comes from a user namespace: the hook starts a copy of itself that unshares one
//! and waits ([`hold_user_namespace`]), writes its maps as root, and keeps a descriptor of it.
//!
//! The two system calls this needs, which rustix does not wrap safely, are in `crate::sys`.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Command, Stdio};

/// The arguments that make `srcstore` run [`hold_user_namespace`].
pub const HOLDER_ARGS: [&str; 2] = ["nix", "hold-user-namespace"];

/// Ids as the volume holds them on disk, and as the build is to see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub build_uid: u32,
    pub build_gid: u32,
}

impl Mapping {
    pub fn is_identity(&self) -> bool {
        self.owner_uid == self.build_uid && self.owner_gid == self.build_gid
    }
}

/// A user namespace mapping the owner's ids to the build's, for [`set_attrs`].
pub fn user_namespace(map: Mapping) -> io::Result<OwnedFd> {
    let mut child = Command::new("/proc/self/exe")
        .args(HOLDER_ARGS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let result = (|| {
        let mut ready = String::new();
        let stdout = child.stdout.take().ok_or(io::ErrorKind::BrokenPipe)?;
        BufReader::new(stdout).read_line(&mut ready)?;
        if ready.trim_end() != "ready" {
            return Err(io::Error::other(
                "the user namespace holder did not start (is this srcstore the one nix.conf names?)",
            ));
        }
        let proc = format!("/proc/{}", child.id());
        // An id inside the namespace (as on disk) maps to one outside (as the build sees it).
        fs::write(
            format!("{proc}/uid_map"),
            format!("{} {} 1\n", map.owner_uid, map.build_uid),
        )?;
        fs::write(
            format!("{proc}/gid_map"),
            format!("{} {} 1\n", map.owner_gid, map.build_gid),
        )?;
        fs::File::open(format!("{proc}/ns/user")).map(OwnedFd::from)
    })();
    drop(child.stdin.take());
    let _ = child.wait();
    result
}

/// What `srcstore nix hold-user-namespace` does: unshares a user namespace, says `ready`, and
/// holds it until its standard input closes.
pub fn hold_user_namespace() -> io::Result<()> {
    // First thing, while the process has one thread, as unshare(CLONE_NEWUSER) requires.
    crate::sys::unshare_user_namespace()?;
    let mut stdout = io::stdout().lock();
    stdout.write_all(b"ready\n")?;
    stdout.flush()?;
    let mut sink = Vec::new();
    io::stdin().read_to_end(&mut sink)?;
    Ok(())
}

const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Makes the detached mount `tree` (from `open_tree(OPEN_TREE_CLONE)`, not yet attached)
/// `nosuid,nodev` (a volume holds caches, never devices or programs that gain privileges),
/// id-mapped by `userns` if given, and read-only if `read_only`.
pub fn set_attrs(
    tree: impl AsFd,
    userns: Option<BorrowedFd<'_>>,
    read_only: bool,
) -> io::Result<()> {
    let mut set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if userns.is_some() {
        set |= MOUNT_ATTR_IDMAP;
    }
    if read_only {
        set |= MOUNT_ATTR_RDONLY;
    }
    crate::sys::mount_setattr(tree, set, userns)
}
