//! The updater thread: folds the watcher's events into bursts, applies each with
//! [`Scanner::update`] and publishes the snapshot it gives.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{EventKind, Flag};

use super::watch::WatchEvent;
use super::{Event, Shared, Stopped};
use crate::{Changes, Scanner};

/// The longest a stream of events may postpone a snapshot.
const MAX_BURST: Duration = Duration::from_millis(500);

pub(super) struct Updater {
    pub(super) shared: Arc<Shared>,
    pub(super) hook: crate::DirHook,
    pub(super) on_stop: mpsc::Sender<Stopped>,
}

/// What one attempt at applying a burst came to.
enum Outcome {
    Applied,
    /// The error is what `path` answers until an update succeeds.
    Failed,
    /// The tree moved under the update: the same changes go again once it settles.
    Moving,
    Stop(Stopped),
}

impl Updater {
    pub(super) fn run(self, rx: mpsc::Receiver<WatchEvent>) {
        let dir = self.shared.dir.clone();
        // The changes of an update that failed (a fifo appeared, a file kept changing): they
        // are tried again with the next burst, or the snapshot would never catch up with them.
        let mut unapplied = Changes::default();
        // The cookies of a burst whose update must go again: answered once it has gone through.
        let mut held: Vec<Vec<u8>> = Vec::new();
        // After an update the tree moved under: how long to let it settle before going again.
        let mut retry: Option<Duration> = None;
        loop {
            let first = match retry {
                None => match rx.recv() {
                    Ok(ev) => Some(ev),
                    Err(_) => return,
                },
                Some(wait) => match rx.recv_timeout(wait) {
                    Ok(ev) => Some(ev),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                },
            };
            let started = Instant::now();
            let mut changes = std::mem::take(&mut unapplied);
            let mut cookies = std::mem::take(&mut held);
            cookies.retain(|c| self.shared.cookies.awaited(c));
            let mut next = first;
            // A burst ends when it goes quiet for `settle` (or runs long); a waiting caller
            // (a cookie) ends it at once with whatever is already queued.
            while let Some(ev) = next.take() {
                if let Err(stop) = self.absorb(ev, &dir, &mut changes, &mut cookies) {
                    let _ = self.on_stop.send(stop);
                    return;
                }
                next = if !cookies.is_empty() {
                    rx.try_recv().ok()
                } else if started.elapsed() < MAX_BURST {
                    rx.recv_timeout(self.shared.config.settle).ok()
                } else {
                    None
                };
            }
            let outcome = if changes.is_empty() {
                Outcome::Applied
            } else {
                self.apply(&changes, started)
            };
            match outcome {
                Outcome::Applied => retry = None,
                Outcome::Failed => {
                    retry = None;
                    unapplied = changes;
                }
                Outcome::Moving => {
                    unapplied = changes;
                    held = cookies;
                    let first = self.shared.config.settle.max(Duration::from_millis(20));
                    retry = Some(retry.map_or(first, |r| (r * 2).min(MAX_BURST)));
                    continue;
                }
                Outcome::Stop(stop) => {
                    let _ = self.on_stop.send(stop);
                    return;
                }
            }
            if !cookies.is_empty() {
                self.shared.cookies.done(&cookies);
            }
        }
    }

    /// Folds one watcher event into the pending changes; `Err` when the project itself is gone.
    fn absorb(
        &self,
        ev: WatchEvent,
        dir: &Path,
        changes: &mut Changes,
        cookies: &mut Vec<Vec<u8>>,
    ) -> Result<(), Stopped> {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!("watcher: {e}; rescanning");
                changes.everything();
                return Ok(());
            }
        };
        if ev.flag() == Some(Flag::Rescan) {
            tracing::warn!("inotify queue overflowed; rescanning against the last snapshot");
            self.shared.counters.rescans.fetch_add(1, Ordering::Relaxed);
            changes.everything();
            return Ok(());
        }
        if matches!(ev.kind, EventKind::Access(_) | EventKind::Other) && ev.paths.is_empty() {
            return Ok(());
        }
        let cookie_dir = &self.shared.cookies.dir;
        for path in &ev.paths {
            if let Some(name) = cookie_dir.cookie_of(path) {
                if matches!(ev.kind, EventKind::Create(_)) {
                    cookies.push(name.to_vec());
                }
                continue;
            }
            if path == &cookie_dir.path {
                if matches!(ev.kind, EventKind::Remove(_)) {
                    tracing::warn!(
                        "{}: the cookie directory was removed; `path` cannot sync until a restart",
                        path.display()
                    );
                }
                continue;
            }
            let Ok(rel) = path.strip_prefix(dir) else {
                continue;
            };
            let rel = rel.as_os_str().as_bytes();
            if rel.is_empty() {
                if matches!(
                    ev.kind,
                    EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
                ) && !dir.is_dir()
                {
                    return Err(Stopped::ProjectGone(dir.to_path_buf()));
                }
                continue;
            }
            changes.add(rel.to_vec());
        }
        Ok(())
    }

    /// Brings the current snapshot up to date; on failure the error is what `path` answers
    /// until an update succeeds, unless the tree only moved under the update.
    fn apply(&self, changes: &Changes, started: Instant) -> Outcome {
        let current = self.shared.state.read().unwrap().current.clone();
        self.shared.progress.store(0, Ordering::Relaxed);
        *self.shared.busy.lock().unwrap() = Some(started);
        let result = Scanner::new(&self.shared.dir, self.shared.config.filter)
            .on_dir(self.hook.clone())
            .links(self.shared.links.clone())
            .progress(self.shared.progress.clone())
            .update(&current, changes);
        *self.shared.busy.lock().unwrap() = None;
        if result.is_ok() {
            self.shared.reader.let_go_of_removed();
        }
        let mut state = self.shared.state.write().unwrap();
        let outcome = match result {
            Ok((next, stats)) => {
                state.error = None;
                state.moving = None;
                let name = next.basename();
                if name == current.basename() {
                    // The same content under fresher stamps (a touch, a file re-hashed to what
                    // it was): served from now on under the same name, and no new snapshot.
                    state.current = next;
                } else {
                    tracing::info!("snapshot {name} ({} files hashed)", stats.hashed);
                    let old = std::mem::replace(&mut state.current, next);
                    state.kept.retain(|s| s.basename() != name);
                    state.kept.push_front(old);
                    state.kept.truncate(self.shared.config.keep);
                    drop(state);
                    self.shared.publish(Event::Snapshot(name));
                }
                Outcome::Applied
            }
            Err(_) if !self.shared.dir.is_dir() => {
                return Outcome::Stop(Stopped::ProjectGone(self.shared.dir.clone()))
            }
            Err(e) if e.is_transient() => {
                tracing::debug!("{e}; going again once the changes settle");
                state.moving = Some(Arc::new(e));
                return Outcome::Moving;
            }
            Err(e) => {
                tracing::warn!("{e}");
                state.error = Some(Arc::new(e));
                state.moving = None;
                Outcome::Failed
            }
        };
        let c = &self.shared.counters;
        c.updates.fetch_add(1, Ordering::Relaxed);
        c.last_update_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        outcome
    }
}
