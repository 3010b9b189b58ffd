//! Whether a build gets its project's compile cache volume, and the checked directory if so.
//!
//! `.drv` files are world-readable and snapshot paths are not secret: any local user can write a
//! derivation that names someone else's snapshot and asks for its cache, and a cache keyed by
//! input hashes is then poisoned for its owner. So the volume is mounted only for a build its
//! owner asked for, and who asked is decided from credentials the kernel keeps, never from a
//! process's name ([`requester`]):
//!
//! - A parent holding a connection accepted on the Nix daemon's socket is a daemon worker, run
//!   under any name (`nix-daemon`, `nix daemon`, a worker re-executed with the connection on
//!   descriptor 0 or 3): the peer of that connection, fixed when the client connected, asked.
//! - A parent holding none builds for itself, and its own uid asked. For root that proves
//!   nothing about whom it builds for (`nix-store --serve` for a remote builder, a relay in
//!   front of the daemon): a build root asked for gets only a volume root owns.
//!
//! When two clients wait on one derivation, the worker that takes the build's lock first builds
//! it, and the hook judges that worker's client: the other client gets the output, never the
//! volume. Where the hook cannot look (the kernel refuses `pidfd_getfd`, as Yama's
//! `ptrace_scope = 3` does), it proves nothing, and the build runs without the volume.
//!
//! A build that does not get the volume still builds: it gets no `/srcstore/cache`, and one
//! line saying why ([`Denied`]).

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags};

/// Why a build that asked gets no volume: one line for its log.
#[derive(Debug)]
pub struct Denied(pub String);

/// The uid of the user who asked for the build the hook (a child of `parent`) runs for.
pub fn requester(parent: Pid) -> Result<u32, Denied> {
    let mut clients = daemon_clients(parent)?;
    clients.sort_unstable();
    clients.dedup();
    match clients[..] {
        [uid] => Ok(uid),
        [] => own_uid(parent),
        _ => Err(Denied(format!(
            "the Nix daemon's worker (pid {}) holds connections of several users {clients:?}",
            parent.as_raw_nonzero()
        ))),
    }
}

/// Whether `parent` serves a client of the Nix daemon (so the client never sees the hook's
/// standard error). Where that cannot be told, it is taken to.
pub fn serves_daemon_client(parent: Pid) -> bool {
    daemon_clients(parent).map_or(true, |c| !c.is_empty())
}

/// The socket the Nix daemon listens on, as Nix finds it: `NIX_DAEMON_SOCKET_PATH`, else
/// `daemon-socket/socket` in `NIX_STATE_DIR` (`/nix/var/nix`). The hook has the environment of
/// the Nix process that runs it, root's.
fn daemon_socket() -> PathBuf {
    if let Some(p) = std::env::var_os("NIX_DAEMON_SOCKET_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    state_dir().join("daemon-socket/socket")
}

/// Nix's state directory: `NIX_STATE_DIR`, else `/nix/var/nix`.
pub(super) fn state_dir() -> PathBuf {
    std::env::var_os("NIX_STATE_DIR")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/nix/var/nix"), PathBuf::from)
}

/// The peer uids of the connections `parent` holds that were accepted on the Nix daemon's
/// socket, on whichever descriptors.
fn daemon_clients(parent: Pid) -> Result<Vec<u32>, Denied> {
    let pid = parent.as_raw_nonzero();
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| Denied(format!("cannot look at its Nix process (pid {pid}): {e}")))?;
    let listening = daemon_socket();
    let mut pidfd = None;
    let mut uids = Vec::new();
    for fd in fds.flatten() {
        let is_socket = fs::read_link(fd.path())
            .is_ok_and(|l| l.as_os_str().as_encoded_bytes().starts_with(b"socket:"));
        let Some(n) = fd.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if !is_socket {
            continue;
        }
        let pidfd = match &pidfd {
            Some(p) => p,
            None => pidfd.insert(
                rustix::process::pidfd_open(parent, PidfdFlags::empty()).map_err(|e| {
                    Denied(format!("cannot look at its Nix process (pid {pid}): {e}"))
                })?,
            ),
        };
        let sock = match rustix::process::pidfd_getfd(pidfd, n, PidfdGetfdFlags::empty()) {
            Ok(sock) => sock,
            // Closed since it was listed.
            Err(rustix::io::Errno::BADF) => continue,
            Err(e) => {
                return Err(Denied(format!(
                    "cannot look at the connections of its Nix process (pid {pid}): {e}; the kernel refuses (is Yama's ptrace_scope 3?)"
                )))
            }
        };
        if let Some(uid) = accepted_peer(&sock, &listening) {
            uids.push(uid);
        }
    }
    Ok(uids)
}

/// The peer uid of `sock` if it is a connection accepted on the Unix socket `listening`.
fn accepted_peer(sock: &OwnedFd, listening: &Path) -> Option<u32> {
    if rustix::net::sockopt::socket_acceptconn(sock).ok()? {
        return None;
    }
    let local = rustix::net::getsockname(sock).ok()?;
    let local = rustix::net::SocketAddrUnix::try_from(local).ok()?;
    if local.path()?.to_bytes() != listening.as_os_str().as_encoded_bytes() {
        return None;
    }
    let cred = rustix::net::sockopt::socket_peercred(sock).ok()?;
    Some(cred.uid.as_raw())
}

/// The uid a process that builds for itself runs as: every one of its uids, which must agree,
/// and be the hook's own (Nix runs its hook as itself).
fn own_uid(parent: Pid) -> Result<u32, Denied> {
    let pid = parent.as_raw_nonzero();
    let uids = uids(&format!("/proc/{pid}"))
        .ok_or_else(|| Denied(format!("cannot tell who runs its Nix process (pid {pid})")))?;
    let me = rustix::process::geteuid().as_raw();
    match uids {
        [r, e, s, f] if [e, s, f] == [r; 3] && r == me => Ok(r),
        _ => Err(Denied(format!(
            "its Nix process (pid {pid}) runs with uids {uids:?}, not the hook's {me}: cannot tell who asked"
        ))),
    }
}

/// Real, effective, saved and filesystem uid of the process at `proc`.
pub(super) fn uids(proc: &str) -> Option<[u32; 4]> {
    let status = fs::read_to_string(format!("{proc}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    let mut ids = line.split_whitespace().skip(1).map(|n| n.parse().ok());
    Some([ids.next()??, ids.next()??, ids.next()??, ids.next()??])
}

/// Opens the volume directory `path` (from its daemon) as root must: no symlink followed
/// anywhere in it, a directory owned by `owner`, mode 0700. Its owner's group with it.
pub fn open(path: &Path, owner: u32) -> Result<(OwnedFd, u32), Denied> {
    let dir = super::stage::open_dir_unfollowed(path).map_err(|e| {
        Denied(format!(
            "{}: cannot open it without following symlinks ({e})",
            path.display()
        ))
    })?;
    let st = rustix::fs::fstat(&dir)
        .map_err(|e| Denied(format!("{}: cannot stat it ({e})", path.display())))?;
    if st.st_uid != owner || st.st_mode & 0o7777 != 0o700 {
        return Err(Denied(format!(
            "{}: not the daemon's user's private directory (owner {}, mode {:o}); `chmod 700` it",
            path.display(),
            st.st_uid,
            st.st_mode & 0o7777
        )));
    }
    Ok((dir, st.st_gid))
}
