use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{bail, Context};
use srcstore::daemon::StoreMode;
use srcstore::daemon::{self, paths, prepare_mountpoint, DaemonLock, StartError};
use srcstore::live::{Config, Live, Stopped};
use srcstore::store::Publisher;
use srcstore::{index, Filter};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// The project directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Where to mount (default: /run/srcstore/<name>-<key> as root, else under $XDG_RUNTIME_DIR/srcstore).
    #[arg(long)]
    mountpoint: Option<PathBuf>,
    /// Let other users read the view; Nix build users need it.
    #[arg(long)]
    allow_other: bool,
    /// The name after `<hash>-` (default: the directory's basename, made valid for Nix).
    #[arg(long)]
    name: Option<String>,
    /// Take every file, exactly what `nix-store --add DIR` would take.
    #[arg(long)]
    no_ignore: bool,
    /// How many superseded snapshots stay served (besides pinned ones).
    #[arg(long, default_value_t = 2)]
    keep: usize,
    /// How long a burst of changes must go quiet before it becomes a snapshot, in milliseconds.
    #[arg(long, default_value_t = 10)]
    settle_ms: u64,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Do not walk a snapshot's directories when a build is about to read it (after `path`,
    /// and for `watch`): the build then pays for each new directory itself.
    #[arg(long)]
    no_warm: bool,
    /// Publish snapshots to the Nix store on demand (`srcstore path --store`), as the valid
    /// /nix/store/<h>-source paths `nix-store --add` would make, copying only new bytes. Root.
    #[arg(long)]
    store: bool,
}

impl Args {
    /// The daemon `srcstore watch` starts for a project that has none.
    pub fn for_watch(dir: &Path, allow_other: bool, store: bool) -> Args {
        Args {
            dir: dir.to_path_buf(),
            mountpoint: None,
            allow_other,
            name: None,
            no_ignore: false,
            keep: 2,
            settle_ms: 10,
            threads: 2,
            no_warm: false,
            store,
        }
    }
}

enum Stop {
    Signal,
    Unmounted,
    Live(Stopped),
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    Ok(Server::start(&args)?.wait())
}

/// How often a daemon expires leases and tells the kernel which trees it no longer serves:
/// what the kernel holds of trees retired within one tick is what it holds beyond the trees
/// served (about 100 directory inodes per retired tree of 40 directories, with `path` in a loop).
const TICK: Duration = Duration::from_millis(100);

/// A running daemon: the live view, its control socket and its FUSE mount.
pub struct Server {
    dir: PathBuf,
    filter: Filter,
    mountpoint: PathBuf,
    index_path: Option<PathBuf>,
    live: Arc<Live>,
    mounted: srcstore_fuse::Mounted,
    stop_tx: mpsc::Sender<Stop>,
    stop_rx: mpsc::Receiver<Stop>,
    made: Made,
    /// Where `status` reads how many inodes the kernel holds of the view.
    inodes: Arc<std::sync::atomic::AtomicU64>,
    store: Option<StoreMode>,
    _lock: DaemonLock,
}

/// What a daemon made on its way up: taken back when it stops, and when it fails to start, so
/// that a failed `mount` leaves no socket that makes `path` report a stale daemon.
#[derive(Default)]
struct Made {
    socket: Option<PathBuf>,
    mountpoint: Option<PathBuf>,
}

impl Made {
    fn socket_gone(&mut self) {
        if let Some(s) = self.socket.take() {
            let _ = fs::remove_file(s);
        }
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        self.socket_gone();
        if let Some(m) = self.mountpoint.take() {
            let _ = fs::remove_dir(m); // only if empty: never what a user put there
        }
    }
}

impl Server {
    pub fn start(args: &Args) -> anyhow::Result<Server> {
        let dir = fs::canonicalize(&args.dir).with_context(|| args.dir.display().to_string())?;
        if !dir.is_dir() {
            bail!("{}: not a directory", dir.display());
        }
        let filter = if args.no_ignore {
            Filter::All
        } else {
            Filter::Ignore
        };
        let name = match &args.name {
            Some(n) => {
                srcstore::name::validate(n)?;
                n.clone()
            }
            None => srcstore::name::from_basename(
                &dir.file_name().unwrap_or_default().to_string_lossy(),
            ),
        };
        let runtime = super::daemon::runtime_dir(true)?;
        let mountpoint = match &args.mountpoint {
            Some(m) => std::path::absolute(m)?,
            None => paths::default_mountpoint(&runtime, &dir, &name),
        };
        let lock = DaemonLock::acquire(&paths::lock_path(&runtime, &dir), &dir, &mountpoint)
            .map_err(|e| match e {
                e @ StartError::AlreadyServed { .. } => super::exit::refused(e),
                e => e.into(),
            })?;
        let store = match args.store {
            true => Some(store_mode(&dir, &paths::socket_path(&runtime, &dir))?),
            false => None,
        };
        check_allow_other(args.allow_other)?;
        check_fuse()?;
        let mut made = Made::default();
        if prepare_mountpoint(&mountpoint)? {
            made.mountpoint = Some(mountpoint.clone());
        }
        // From the moment the socket answers, a signal is a request to stop, never a kill.
        let (stop_tx, stop_rx) = mpsc::channel();
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
        ])?;
        let signal_tx = stop_tx.clone();
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                let _ = signal_tx.send(Stop::Signal);
            }
        });
        // The socket answers as soon as the project is ours; requests wait for the rest.
        let socket = paths::socket_path(&runtime, &dir);
        let _ = fs::remove_file(&socket); // we hold the lock: any socket left is a dead daemon's
        let listener = UnixListener::bind(&socket).with_context(|| socket.display().to_string())?;
        made.socket = Some(socket.clone());
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))?;
        let starting = Arc::new(daemon::Starting::default());
        let serving = starting.clone();
        std::thread::Builder::new()
            .name("srcstore-accept".into())
            .spawn(move || daemon::serve(listener, serving))?;
        let up = (move || -> anyhow::Result<(Server, Arc<daemon::LiveHandler>)> {
            let index_path = paths::cache_home().map(|c| index::location(&c, &dir, filter));
            let previous = index_path
                .as_deref()
                .and_then(|p| match index::load(p, &dir, filter) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!("{e}; discarding it");
                        None
                    }
                });
            let (live_tx, live_rx) = mpsc::channel();
            let config = Config {
                filter,
                name: Some(name),
                settle: Duration::from_millis(args.settle_ms),
                keep: args.keep,
                // Beside the lock we hold: this daemon's alone, and outside the project.
                cookie_dir: Some(paths::cookie_dir(&runtime, &dir)),
            };
            let live = Arc::new(Live::start(&dir, config, previous, live_tx)?);
            if args.allow_other {
                warn_closed_to_others(&live.current());
            }
            forward(live_rx, stop_tx.clone(), Stop::Live);
            save_index(index_path.as_deref(), &dir, filter, &live);
            // The scan's threads freed most of what they took (listings, the previous index
            // decoded beside the new tree); glibc would keep it in their arenas for the
            // daemon's life.
            srcstore::sys::release_free_memory();
            // From here on threads come and go (one per control connection): they share the
            // arenas the scan made instead of each making its own.
            srcstore::sys::limit_allocator_arenas(1);

            let warmer = match args.no_warm {
                true => daemon::Warmer::off(),
                // This very binary (even if replaced on disk since), as `srcstore warm-walk DIR`.
                false => daemon::Warmer::start(vec!["/proc/self/exe".into(), "warm-walk".into()])?,
            };
            let handler = Arc::new(daemon::LiveHandler::new(
                live.clone(),
                mountpoint.clone(),
                warmer,
                paths::cache_home()
                    .map(|home| srcstore::cache::Volume::at(paths::volume_path(&home, &dir))),
                store.clone(),
            ));

            let options = srcstore_fuse::Options {
                allow_other: args.allow_other,
                threads: args.threads,
                // The hook finds daemons in the mount table by this: see srcstore::nix::hook.
                fsname: format!("srcstore:{}", socket.display()),
                uid: rustix::process::geteuid().as_raw(),
                gid: rustix::process::getegid().as_raw(),
            };
            let unmounted_tx = stop_tx.clone();
            let mounted = srcstore_fuse::mount(
                super::view::LiveView(live.clone()),
                &mountpoint,
                &options,
                move || {
                    let _ = unmounted_tx.send(Stop::Unmounted);
                },
            )
            .with_context(|| format!("{}: cannot mount", mountpoint.display()))?;
            tracing::info!(
                "serving {}",
                mountpoint.join(live.current().basename()).display()
            );
            if let Some(mode) = &store {
                publish_first(mode.clone(), live.clone(), mountpoint.clone());
            }
            if let Some(warning) = super::nix::installed().and_then(|v| v.hook_warning()) {
                eprintln!("srcstore: warning: {warning}");
            }
            let server = Server {
                dir,
                filter,
                mountpoint,
                index_path,
                live,
                mounted,
                stop_tx,
                stop_rx,
                made,
                inodes: handler.inodes(),
                store,
                _lock: lock,
            };
            Ok((server, handler))
        })();
        match up {
            Ok((server, handler)) => {
                starting.up(handler);
                Ok(server)
            }
            Err(e) => {
                starting.failed(format!("{e:#}"));
                Err(e)
            }
        }
    }

    /// Stops a server running [`Server::wait`] on another thread.
    pub fn stopper(&self) -> impl Fn() + Send + 'static {
        let tx = self.stop_tx.clone();
        move || {
            let _ = tx.send(Stop::Signal);
        }
    }

    /// Serves until a signal, an external unmount or the project's disappearance; then
    /// unmounts and cleans up.
    pub fn wait(mut self) -> ExitCode {
        // Meanwhile: expire leases and make the kernel forget names no longer served.
        let stop = loop {
            match self.stop_rx.recv_timeout(TICK) {
                Ok(stop) => break stop,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.live.expire_pins();
                    let served: Vec<Vec<u8>> = self
                        .live
                        .served()
                        .iter()
                        .map(|s| s.basename().into_bytes())
                        .collect();
                    if self.mounted.forget_gone_roots(&served) > 0 {
                        // What the kernel forgot is freed by now or soon; give it back.
                        srcstore::sys::release_free_memory();
                    }
                    self.inodes.store(
                        self.mounted.inodes() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break Stop::Signal,
            }
        };
        self.made.socket_gone();
        if let Some(mode) = &self.store {
            daemon::release(mode, &self.mountpoint);
        }
        let code = match stop {
            Stop::Signal | Stop::Unmounted => {
                save_index(
                    self.index_path.as_deref(),
                    &self.dir,
                    self.filter,
                    &self.live,
                );
                ExitCode::SUCCESS
            }
            Stop::Live(Stopped::ProjectGone(p)) => {
                eprintln!(
                    "srcstore: error: {}: the project directory was removed or moved; stopping",
                    p.display()
                );
                ExitCode::FAILURE
            }
            Stop::Live(Stopped::WatcherFailed(e)) => {
                eprintln!("srcstore: error: {}: {e}; stopping", self.dir.display());
                ExitCode::FAILURE
            }
        };
        let mp = self.mountpoint.display();
        match self.mounted.unmount() {
            Ok(srcstore_fuse::Ending::Unmounted) => tracing::info!("unmounted {mp}"),
            Ok(srcstore_fuse::Ending::DetachedWhileHeld) => tracing::info!(
                "detached {mp}: still held (an open file, a working directory or a build's staged snapshot), which now gets errors; the kernel ends the mount when it lets go"
            ),
            Err(e) => tracing::warn!("{mp}: cannot unmount ({e}); `fusermount3 -u -z {mp}` detaches it, and the next `srcstore mount` repairs it"),
        }
        code
    }
}

/// How this daemon publishes in store mode: as root, itself; as a user, through root's store
/// service, which must be answering.
fn store_mode(dir: &Path, socket: &Path) -> anyhow::Result<StoreMode> {
    let uid = rustix::process::geteuid().as_raw();
    if uid != 0 {
        let service = std::env::var_os("SRCSTORE_STORE_SERVICE").map_or_else(
            || PathBuf::from(srcstore::store::SERVICE_SOCKET),
            PathBuf::from,
        );
        if !service.exists() {
            return Err(super::exit::not_running(format!(
                "{}: no store service answers there: store mode for a user publishes through root's (`sudo srcstore store serve`, which `sudo srcstore nix setup --apply` installs)",
                service.display()
            )));
        }
        return Ok(StoreMode::Service(service));
    }
    let publisher = Publisher::open(dir, uid, socket).map_err(|e| match e {
        e @ srcstore::store::StoreError::NotRoot => super::exit::refused(e),
        e => e.into(),
    })?;
    Ok(StoreMode::Here(Arc::new(publisher)))
}

/// Publishes the first snapshot in the background: the copy of every file the store lacks is
/// made once, before the first `path --store` asks (which waits for it).
fn publish_first(mode: StoreMode, live: Arc<Live>, mountpoint: PathBuf) {
    let _ = std::thread::Builder::new()
        .name("srcstore-publish".into())
        .spawn(move || {
            let start = std::time::Instant::now();
            let (done, over) = mpsc::channel::<()>();
            // The first publication copies the whole project: say how far it has come.
            if let StoreMode::Here(publisher) = &mode {
                let log = publisher.clone();
                std::thread::spawn(move || {
                    while let Err(mpsc::RecvTimeoutError::Timeout) =
                        over.recv_timeout(Duration::from_secs(10))
                    {
                        if let Some(p) = log.progress() {
                            tracing::info!("{p}");
                        }
                    }
                });
            }
            let answer = daemon::publish(&live, &mode, &mountpoint, None);
            drop(done);
            match (answer.path, answer.error) {
                (Some(path), _) if answer.ok => {
                    tracing::info!("published {path} in {:.2}s", start.elapsed().as_secs_f64())
                }
                (_, error) => tracing::warn!("cannot publish: {}", error.unwrap_or_default()),
            }
        });
}

fn forward<T: Send + 'static>(rx: mpsc::Receiver<T>, tx: mpsc::Sender<Stop>, wrap: fn(T) -> Stop) {
    std::thread::spawn(move || {
        if let Ok(v) = rx.recv() {
            let _ = tx.send(wrap(v));
        }
    });
}

fn save_index(path: Option<&Path>, dir: &Path, filter: Filter, live: &Live) {
    if let Some(p) = path {
        if let Err(e) = index::save(p, dir, filter, live.current().tree()) {
            tracing::warn!("{e}");
        }
    }
}

/// With `--allow-other` every local user reads the whole snapshot through the view, whatever
/// the working tree's modes say: said once, at start, when the project holds such files.
fn warn_closed_to_others(snapshot: &srcstore::Snapshot) {
    let (count, first) = snapshot.closed_to_others(3);
    if count > 0 {
        tracing::warn!(
            "{}: {count} entries other users cannot read in the working tree ({}{}) are readable by every local user through the view (--allow-other), as they would be in the store; keep them out of snapshots with .srcstoreignore",
            snapshot.dir().display(),
            first.join(", "),
            if count > first.len() { ", …" } else { "" }
        );
    }
}

/// What a FUSE mount needs from the machine, checked up front so that a failure names its
/// cause and its fix rather than the mount library's.
fn check_fuse() -> anyhow::Result<()> {
    match fs::OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "/dev/fuse: permission denied: this user may not use FUSE; as root, make it usable (`chmod 0666 /dev/fuse`, Debian's default)"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "/dev/fuse: missing: install fuse3 and load the module (`modprobe fuse`) as root"
        ),
        Err(e) => bail!("/dev/fuse: {e}"),
    }
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
    };
    if !rustix::process::geteuid().is_root() && !on_path("fusermount3") {
        bail!("fusermount3: not found; a user's FUSE mount needs it: install fuse3");
    }
    Ok(())
}

fn check_allow_other(allow_other: bool) -> anyhow::Result<()> {
    if !allow_other {
        tracing::warn!("without --allow-other, Nix build users cannot read the view");
        return Ok(());
    }
    if rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let conf = fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    if !conf.lines().any(|l| l.trim() == "user_allow_other") {
        bail!(
            "/etc/fuse.conf: --allow-other needs a line `user_allow_other` there (add it as root)"
        );
    }
    Ok(())
}
