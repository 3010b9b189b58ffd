//! Warming the kernel for a build that is about to come.
//!
//! A directory's inode stands for one place, so every directory of a new snapshot is new to the
//! kernel, and the first walk of it pays a round trip to the daemon per directory. A build
//! starts tens of milliseconds after `srcstore path` answers (Nix evaluates, sets up the
//! sandbox), so the daemon walks the snapshot's directories through its own mount in that time,
//! and the build finds every entry cached. The kernel's dentry cache belongs to the filesystem,
//! not to one mount, so the clone the hook stages for the sandbox shares what the walk built.
//!
//! The walk lists directories only (`READDIRPLUS` hands over every entry's attributes), and
//! stops as soon as a newer snapshot is asked for: a build that starts early just shares the
//! work. It runs in a process of its own, never in the daemon's: a thread of the daemon waiting
//! on its own mount when the daemon is killed (SIGKILL) waits forever, since the kernel aborts
//! the mount only once every thread of its server is gone; the daemon would stay a zombie
//! holding its lock and its mount. A walker process just gets an error then.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

/// Walks snapshot directories in the background, newest request first (or, made with
/// [`Warmer::off`], walks nothing).
pub struct Warmer {
    requests: Option<mpsc::Sender<(u64, PathBuf)>>,
    latest: Arc<AtomicU64>,
    listed: Arc<AtomicU64>,
}

/// How often a walk in progress checks whether a newer snapshot was asked for.
const POLL: Duration = Duration::from_millis(5);

impl Warmer {
    /// A warmer that runs the command `walker` (program and arguments) with a directory added,
    /// for a walk: a process that calls [`walk`] and prints how many directories it listed.
    pub fn start(walker: Vec<std::ffi::OsString>) -> std::io::Result<Warmer> {
        let (requests, rx) = mpsc::channel::<(u64, PathBuf)>();
        let latest = Arc::new(AtomicU64::new(0));
        let listed = Arc::new(AtomicU64::new(0));
        let (current, count) = (latest.clone(), listed.clone());
        std::thread::Builder::new()
            .name("srcstore-warm".into())
            .spawn(move || {
                let mut last: Option<PathBuf> = None;
                while let Ok(mut request) = rx.recv() {
                    while let Ok(newer) = rx.try_recv() {
                        request = newer;
                    }
                    let (generation, dir) = request;
                    // A walk of what was just walked whole finds everything cached: skip it.
                    if last.as_ref() != Some(&dir) {
                        let cancelled = || current.load(Ordering::Relaxed) != generation;
                        let (listed, whole) = run_walker(&walker, &dir, cancelled);
                        count.fetch_add(listed, Ordering::Relaxed);
                        last = whole.then_some(dir);
                    }
                }
            })?;
        Ok(Warmer {
            requests: Some(requests),
            latest,
            listed,
        })
    }

    /// A warmer that walks nothing (`srcstore mount --no-warm`).
    pub fn off() -> Warmer {
        Warmer {
            requests: None,
            latest: Arc::default(),
            listed: Arc::default(),
        }
    }

    /// Directories listed by every walk so far (`status`'s `warmed_dirs`).
    pub fn listed(&self) -> u64 {
        self.listed.load(Ordering::Relaxed)
    }

    /// Walks `dir` (a snapshot through the daemon's own mount), abandoning any older walk.
    pub fn warm(&self, dir: &Path) {
        if let Some(requests) = &self.requests {
            let generation = self.latest.fetch_add(1, Ordering::Relaxed) + 1;
            let _ = requests.send((generation, dir.to_path_buf()));
        }
    }
}

/// Runs `walker` on `dir` until it ends or `cancelled`; how many directories it listed, and
/// whether it walked them all.
fn run_walker(
    walker: &[std::ffi::OsString],
    dir: &Path,
    cancelled: impl Fn() -> bool,
) -> (u64, bool) {
    let spawned = Command::new(&walker[0])
        .args(&walker[1..])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("cannot start the walker: {e}");
            return (0, false);
        }
    };
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut out = String::new();
                let _ = child.stdout.take().map(|mut o| o.read_to_string(&mut out));
                return (out.trim().parse().unwrap_or(0), status.success());
            }
            Ok(None) if cancelled() => {
                let _ = child.kill();
                let _ = child.wait();
                return (0, false);
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(_) => return (0, false),
        }
    }
}

/// Walkers: two keep both FUSE workers busy (each listing is one round trip to the daemon).
const WALKERS: usize = 2;

/// Lists every directory below `root` (what a walker process does); how many it listed.
pub fn walk(root: &Path) -> u64 {
    let started = std::time::Instant::now();
    // Directories to list, and how many are being listed (whose children may still come).
    let work = Mutex::new((vec![root.to_path_buf()], 0usize));
    let changed = Condvar::new();
    let listed = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..WALKERS {
            s.spawn(|| loop {
                let dir = {
                    let mut w = work.lock().unwrap();
                    loop {
                        if let Some(d) = w.0.pop() {
                            w.1 += 1;
                            break d;
                        }
                        if w.1 == 0 {
                            changed.notify_all();
                            return;
                        }
                        w = changed.wait(w).unwrap();
                    }
                };
                let mut found = Vec::new();
                // A directory gone (superseded and unpinned) has nothing left to warm.
                if let Ok(entries) = std::fs::read_dir(&dir) {
                    listed.fetch_add(1, Ordering::Relaxed);
                    found.extend(
                        entries
                            .flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path()),
                    );
                }
                let mut w = work.lock().unwrap();
                w.0.extend(found);
                w.1 -= 1;
                changed.notify_all();
            });
        }
    });
    let listed = listed.into_inner();
    tracing::debug!(
        "warmed {} ({listed} directories) in {:?}",
        root.display(),
        started.elapsed()
    );
    listed
}
