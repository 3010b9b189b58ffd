//! A read-only FUSE view of immutable, content-named trees.
//!
//! The crate knows nothing of how the trees are made: a [`Source`] lists the trees served at
//! the mount's root (`<mountpoint>/<name>/`) and answers questions about their nodes. What this
//! crate owns is the FUSE side: inode numbers, attributes, kernel cache policy and the
//! read-only contract.
//!
//! Because a node stands for one content forever, the kernel is told to cache everything for
//! good (entries, attributes, pages), and to send no `open`/`opendir` at all (zero-message
//! opens): warm reads then cost what native reads cost. The price is that the daemon sees a
//! read only on a page-cache miss, so [`Source::read`] must prove every byte it returns.
//! Directories are listed with their entries' attributes (`READDIRPLUS`), so a walk over a
//! cold view costs no `LOOKUP` per entry.
#![forbid(unsafe_code)]

mod attr;
mod fs;
mod inodes;

use std::io;
use std::path::Path;

pub use fs::View;

/// What a node is, as far as the view is concerned.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64, executable: bool },
    Symlink { len: u64 },
}

/// A tree served at the mount's root.
pub struct Root<N> {
    pub name: Vec<u8>,
    pub node: N,
    /// Where the node sits below the project directory; child paths are built from it and
    /// handed back to [`Source::read`].
    pub path: Vec<u8>,
}

/// The trees to serve.
pub trait Source: Send + Sync + 'static {
    type Node: Clone + Send + Sync + 'static;

    /// The trees currently served, by name.
    fn roots(&self) -> Vec<Root<Self::Node>>;
    /// A stable identity: equal only for nodes with the same content at the same place,
    /// never 0, and below 2^62 - 1 (a file's number is its id + 1; directories are numbered
    /// from 2^62).
    fn id(&self, node: &Self::Node) -> u64;
    fn kind(&self, node: &Self::Node) -> Kind;
    fn child(&self, dir: &Self::Node, name: &[u8]) -> Option<Self::Node>;
    /// Calls `add` for the entries of `dir` from index `from` on, until it returns false.
    fn list(&self, dir: &Self::Node, from: usize, add: &mut dyn FnMut(&[u8], &Self::Node) -> bool);
    fn read_link(&self, node: &Self::Node) -> Vec<u8>;
    /// Bytes of a file node found at `path`; an error means the bytes could not be proven to
    /// be the node's, and the reader gets EIO.
    fn read(
        &self,
        node: &Self::Node,
        path: &[u8],
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Unproven>;
}

/// A read whose bytes could not be proven to be the node's (the reader gets EIO).
#[derive(Debug)]
pub struct Unproven;

/// How to mount.
#[derive(Clone, Debug)]
pub struct Options {
    /// Let other users (Nix build users) read the view; needs `user_allow_other` in
    /// `/etc/fuse.conf` for a non-root mounter.
    pub allow_other: bool,
    pub threads: usize,
    /// Shown as the mount's source in `/proc/mounts`.
    pub fsname: String,
    /// Owner presented for every entry.
    pub uid: u32,
    pub gid: u32,
}

/// A mounted view; [`Mounted::unmount`] (or drop) ends it.
pub struct Mounted {
    mountpoint: std::path::PathBuf,
    handed: fs::Handed,
    held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    unmounter: fuser::SessionUnmounter,
    notifier: fuser::Notifier,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
    /// Signalled when the session has ended.
    ended: std::sync::mpsc::Receiver<()>,
}

/// How a view ended on [`Mounted::unmount`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Unmounted, and the session over.
    Unmounted,
    /// Off its mountpoint, but still held (an open file, a working directory, a staged clone):
    /// the kernel ends it when the last holder lets go; until then they get errors once this
    /// process has exited.
    DetachedWhileHeld,
}

/// How long an unmount waits for the kernel to end the session. It ends only when nothing
/// holds the filesystem any more: a process with a file or working directory in the view, or
/// a clone of one of its directories mounted elsewhere (the Nix hook stages such clones),
/// keeps it alive after the detach. The server then stops waiting; the connection ends, and
/// whatever still holds the view gets errors, when this process closes its descriptors.
const SESSION_END_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Mounts `source` read-only at `mountpoint` and serves it from background threads.
/// `on_exit` runs when the session ends for any reason (including an external unmount).
pub fn mount<S: Source>(
    source: S,
    mountpoint: &Path,
    options: &Options,
    on_exit: impl FnOnce() + Send + 'static,
) -> io::Result<Mounted> {
    use fuser::MountOption as M;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        M::RO,
        M::NoDev,
        M::NoSuid,
        M::NoAtime,
        M::DefaultPermissions,
        M::FSName(options.fsname.clone()),
        M::Subtype("srcstore".into()),
    ];
    if options.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    let view = View::new(source, options.uid, options.gid);
    let (handed, held) = (view.handed(), view.held());
    let mut session = fuser::Session::new(view, mountpoint, &config)?;
    let unmounter = session.unmount_callable();
    let notifier = session.notifier();
    let (ended_tx, ended) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("srcstore-fuse".into())
        .spawn(move || {
            let result = session.run();
            let _ = ended_tx.send(());
            on_exit();
            result
        })?;
    Ok(Mounted {
        mountpoint: mountpoint.to_path_buf(),
        handed,
        held,
        unmounter,
        notifier,
        thread: Some(thread),
        ended,
    })
}

impl Mounted {
    /// How many inodes of the view the kernel holds (looked up and not yet forgotten).
    pub fn inodes(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Tells the kernel to drop every name at the root it was given that `served` no longer
    /// has, with everything below it: it is then not served from the kernel's cache, and the
    /// kernel forgets the inodes under it (else it keeps them until memory runs short, and this
    /// view's table with them). Returns how many it dropped.
    pub fn forget_gone_roots(&self, served: &[Vec<u8>]) -> usize {
        use std::os::unix::ffi::OsStrExt;
        let gone: Vec<Vec<u8>> = {
            let mut handed = self.handed.lock().unwrap();
            let gone = handed
                .iter()
                .filter(|n| !served.contains(n))
                .cloned()
                .collect();
            handed.retain(|n| served.contains(n));
            gone
        };
        for name in &gone {
            let _ = self
                .notifier
                .inval_entry(fuser::INodeNo::ROOT, std::ffi::OsStr::from_bytes(name));
        }
        gone.len()
    }

    /// Takes the mount off its mountpoint and ends the session, waiting for the kernel a
    /// bounded time only (see [`SESSION_END_GRACE`]): a reader holding a file open never keeps
    /// a server from stopping, nor leaves a dead mount behind. Says which way it ended.
    pub fn unmount(mut self) -> io::Result<Ending> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<Ending> {
        let Some(thread) = self.thread.take() else {
            return Ok(Ending::Unmounted);
        };
        // Root's plain unmount fails while anything holds the view (a user's goes through
        // fusermount's lazy one); then the mount is detached, so that no dead mount stays.
        let unmounted = match self.unmounter.unmount() {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH)
                    .map_err(io::Error::from)
            }
            other => other,
        };
        if self.ended.recv_timeout(SESSION_END_GRACE).is_err() {
            return unmounted.map(|()| Ending::DetachedWhileHeld);
        }
        let joined = thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("FUSE thread panicked")));
        unmounted.and(joined).map(|()| Ending::Unmounted)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
