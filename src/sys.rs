//! The system calls no safe wrapper offers: the only module with `unsafe` code.
//!
//! Each function here is one call, sound for every input its safe signature admits, with the
//! reason beside it. Policy lives with the callers (`hook::idmap`, `cmd/mount.rs`).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// Moves this process into a new user namespace. Fails unless the process has one thread.
///
/// Only for a process that starts no thread before or while calling it (`srcstore nix
/// hold-user-namespace` calls it first thing): `unshare(CLONE_NEWUSER)` is refused with more
/// than one thread, and this never unshares the descriptor table, the case that makes
/// rustix's wrapper unsafe.
pub fn unshare_user_namespace() -> io::Result<()> {
    // SAFETY: only CLONE_NEWUSER: no descriptor table is unshared, so no thread can observe
    // descriptors of another table.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWUSER) }?;
    Ok(())
}

/// Moves the calling thread (only it: the kernel gives it a working directory and root of its
/// own, `CLONE_FS`) into a new mount namespace, a copy of the one it was in.
pub fn unshare_mount_namespace() -> io::Result<()> {
    // SAFETY: only CLONE_NEWNS (and the CLONE_FS it implies): no descriptor table is unshared,
    // so no thread can observe descriptors of another table.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }?;
    Ok(())
}

/// `struct mount_attr` of `<linux/mount.h>` (`MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH, {attr_set, userns_fd})`: sets mount attributes
/// (`MOUNT_ATTR_*`) on the mount `tree` refers to, id-mapping it by `userns` when given (with
/// `MOUNT_ATTR_IDMAP` in `attr_set`).
pub fn mount_setattr(
    tree: impl AsFd,
    attr_set: u64,
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |ns| ns.as_raw_fd() as u64),
    };
    // SAFETY: the path is a valid NUL-terminated empty string, `attr` a live `mount_attr` of
    // the size passed, both borrowed for the call only; the descriptors are borrowed and open.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    match r {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Lets the allocator make no more arenas than it has (glibc's `M_ARENA_MAX`): it makes one
/// for each thread that finds the others busy, up to eight per core, and each keeps a heap's
/// worth of pages. A daemon answering every control connection on a thread of its own grew by
/// one arena per few hundred connections this way, about 3 MB over 1,000 `srcstore path`s.
pub fn limit_allocator_arenas(max: i32) {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt takes two integers and changes only the allocator's own setting.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, max);
    }
}

/// Gives the memory the allocator holds free back to the system (glibc's `malloc_trim(0)`,
/// every arena): a daemon's start-up frees much of what its scan threads took, and glibc keeps
/// it in their arenas otherwise. Nothing elsewhere.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointers and only returns free pages of the allocator's own.
    unsafe {
        libc::malloc_trim(0);
    }
}
