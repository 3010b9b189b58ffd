//! Warming the kernel for a build that is about to come.
//!
//! A directory's inode stands for one place, so every directory of a new snapshot is new to the
//! kernel, and the first walk of it pays a round trip to the daemon per directory. A build
//! starts tens of milliseconds after `srcstore path` answers (Nix evaluates, sets up the
//! sandbox), so the daemon walks the snapshot's directories through its own mount in that time,
//! and the build finds every entry cached. The kernel's dentry cache belongs to the filesystem,
//! not to one mount, so the clone the hook stages for the sandbox shares what the walk built.
//!
//! The walk runs on threads of its own (never a FUSE worker: it is one of their clients), lists
//! directories only (`READDIRPLUS` hands over every entry's attributes), and stops as soon as a
//! newer snapshot is asked for: a build that starts early just shares the work.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};

/// Walks snapshot directories in the background, newest request first (or, made with
/// [`Warmer::off`], walks nothing).
pub struct Warmer {
    requests: Option<mpsc::Sender<(u64, PathBuf)>>,
    latest: Arc<AtomicU64>,
    listed: Arc<AtomicU64>,
}

impl Warmer {
    pub fn start() -> std::io::Result<Warmer> {
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
                        count.fetch_add(walk(&dir, cancelled), Ordering::Relaxed);
                        last = (!cancelled()).then_some(dir);
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

/// Walkers: two keep both FUSE workers busy (each listing is one round trip to the daemon).
const WALKERS: usize = 2;

/// Lists every directory below `root` until `cancelled`; how many it listed.
fn walk(root: &Path, cancelled: impl Fn() -> bool + Sync) -> u64 {
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
                        if cancelled() {
                            changed.notify_all();
                            return;
                        }
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
        "warmed {} ({listed} directories{}) in {:?}",
        root.display(),
        if cancelled() { ", then cancelled" } else { "" },
        started.elapsed()
    );
    listed
}
