//! The inotify watcher, and the cookies that let [`Live::sync`] know the updater has applied
//! every change made before it.
//!
//! Cookies are never made in the project: they go to a directory of the view's own outside it
//! ([`Config::cookie_dir`](super::Config::cookie_dir)), watched on the same inotify instance,
//! so that no snapshot can hold one (with `--no-ignore` a snapshot takes everything, `.git`
//! too) and nothing a user of the project plants can redirect the write. They are created beneath that directory's descriptor
//! with `O_CREAT | O_EXCL | O_NOFOLLOW`, under names drawn from a random key, and removed
//! beneath it too (`unlinkat` never follows a link).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use notify::event::{DataChange, EventKind, ModifyKind};
use notify::{EventKindMask, RecursiveMode, Watcher};
use rustix::fs::{AtFlags, Mode, OFlags};

use super::{Live, SyncError};
use crate::tree::Node;
use crate::Error;

/// What the watcher hands the updater.
pub(super) type WatchEvent = notify::Result<notify::Event>;

/// The cookies whose callers are waiting (and only those: a caller that gives up takes its own
/// out), and the condition they sleep on.
pub(super) struct Cookies {
    pub(super) dir: CookieDir,
    waiting: Mutex<HashMap<Vec<u8>, Seen>>,
    changed: Condvar,
}

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Seen {
    /// Created; the watcher has not delivered its event yet.
    Made,
    /// Its event is in the updater's queue, behind the events before it.
    Queued,
    /// The updater has applied every event before it.
    Done,
}

impl Cookies {
    /// Cookies in the directory at `wanted` (see
    /// [`Config::cookie_dir`](super::Config::cookie_dir)), with nobody waiting yet.
    pub(super) fn open(wanted: Option<&Path>) -> Result<Cookies, Error> {
        Ok(Cookies {
            dir: CookieDir::open(wanted)?,
            waiting: Mutex::default(),
            changed: Condvar::new(),
        })
    }

    /// The watcher delivered `name`'s event.
    fn queued(&self, name: &[u8]) {
        if let Some(s @ Seen::Made) = self.waiting.lock().unwrap().get_mut(name) {
            *s = Seen::Queued;
        }
    }

    /// The updater applied every event before these cookies'; cookies nobody waits for any
    /// more are not kept.
    pub(super) fn done(&self, names: &[Vec<u8>]) {
        let mut waiting = self.waiting.lock().unwrap();
        for name in names {
            if let Some(s) = waiting.get_mut(name) {
                *s = Seen::Done;
            }
        }
        self.changed.notify_all();
    }

    /// Whether anyone still waits for `name`.
    pub(super) fn awaited(&self, name: &[u8]) -> bool {
        self.waiting.lock().unwrap().contains_key(name)
    }
}

/// A directory of the live view's own for its cookies, held open: every cookie is created and
/// removed beneath this descriptor, never through a path a project user could redirect.
pub(super) struct CookieDir {
    pub(super) path: PathBuf,
    fd: OwnedFd,
    parent: OwnedFd,
    name: Box<[u8]>,
    key: [u8; 32],
    next: AtomicU64,
}

impl CookieDir {
    fn open(wanted: Option<&Path>) -> Result<CookieDir, Error> {
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut r| r.read_exact(&mut key))
            .map_err(|e| Error::io("/dev/urandom", e))?;
        let (parent, name) = match wanted {
            Some(p) => match (p.parent(), p.file_name()) {
                (Some(parent), Some(name)) => (parent.to_path_buf(), name.as_bytes().to_vec()),
                _ => {
                    return Err(Error::io(
                        p,
                        std::io::Error::other("not a directory to make cookies in"),
                    ))
                }
            },
            None => {
                let tag = blake3::keyed_hash(&key, b"directory").to_hex();
                let name = format!("srcstore-cookies-{}", &tag[..24]);
                (std::env::temp_dir(), name.into_bytes())
            }
        };
        let parent = std::fs::canonicalize(&parent).map_err(|e| Error::io(&parent, e))?;
        let path = parent.join(OsStr::from_bytes(&name));
        let io = |e: rustix::io::Errno| Error::io(&path, e.into());
        let parent_fd = rustix::fs::open(
            &parent,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(&parent, e.into()))?;
        match rustix::fs::mkdirat(&parent_fd, &*name, Mode::RWXU) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io(e)),
        }
        let fd = rustix::fs::openat(
            &parent_fd,
            &*name,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(io)?;
        let st = rustix::fs::fstat(&fd).map_err(io)?;
        if st.st_uid != rustix::process::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
            return Err(Error::io(
                &path,
                std::io::Error::other(
                    "not a private directory of this user's; remove it and start again",
                ),
            ));
        }
        // An earlier run's cookies (names only: unlinking never follows a link).
        let mut buf = vec![std::mem::MaybeUninit::uninit(); 8192];
        let mut old = Vec::new();
        let mut listing = rustix::fs::RawDir::new(&fd, &mut buf);
        while let Some(Ok(entry)) = listing.next() {
            let n = entry.file_name().to_bytes();
            if n != b"." && n != b".." {
                old.push(n.to_vec());
            }
        }
        for n in old {
            let _ = rustix::fs::unlinkat(&fd, n.as_slice(), AtFlags::empty());
        }
        Ok(CookieDir {
            path,
            fd,
            parent: parent_fd,
            name: name.into(),
            key,
            next: AtomicU64::new(0),
        })
    }

    /// A name no one can guess ahead of time.
    fn fresh_name(&self) -> Vec<u8> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let tag = blake3::keyed_hash(&self.key, &n.to_le_bytes()).to_hex();
        tag[..32].as_bytes().to_vec()
    }

    fn create(&self, name: &[u8]) -> std::io::Result<()> {
        let flags = OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::WRONLY
            | OFlags::CLOEXEC
            | OFlags::NOCTTY;
        rustix::fs::openat(&self.fd, name, flags, Mode::RUSR | Mode::WUSR)?;
        Ok(())
    }

    fn remove(&self, name: &[u8]) {
        let _ = rustix::fs::unlinkat(&self.fd, name, AtFlags::empty());
    }

    /// The cookie a watcher event names, if it is one of this directory's.
    pub(super) fn cookie_of<'p>(&self, path: &'p Path) -> Option<&'p [u8]> {
        let rest = path.strip_prefix(&self.path).ok()?.as_os_str().as_bytes();
        (!rest.is_empty() && !rest.contains(&b'/')).then_some(rest)
    }
}

impl Drop for CookieDir {
    fn drop(&mut self) {
        // Only ever empty by now; a directory someone else filled stays.
        let _ = rustix::fs::unlinkat(&self.parent, &*self.name, AtFlags::REMOVEDIR);
    }
}

/// How long `sync` waits beyond its timeout for an update that is still running (a long scan),
/// before it gives up and says what it waits for; below a client's patience for an answer.
pub(super) const BUSY_LIMIT: Duration = Duration::from_secs(50);

/// A watcher whose events go to `tx`; it watches nothing until [`dir_hook`] adds directories.
pub(super) fn watcher(
    dir: &Path,
    cookies: Arc<Cookies>,
    tx: mpsc::Sender<WatchEvent>,
) -> Result<Arc<Mutex<notify::RecommendedWatcher>>, Error> {
    let handler = move |ev: WatchEvent| {
        // A waiter learns at once that its cookie reached the queue (the watcher works),
        // however long the update ahead of it takes.
        if let Ok(ev) = &ev {
            if matches!(ev.kind, EventKind::Create(_)) {
                for name in ev.paths.iter().filter_map(|p| cookies.dir.cookie_of(p)) {
                    cookies.queued(name);
                }
            }
        }
        let _ = tx.send(ev);
    };
    let mask = EventKindMask::CORE | EventKindMask::ACCESS_CLOSE;
    let watcher =
        notify::RecommendedWatcher::new(handler, notify::Config::default().with_event_kinds(mask))
            .map_err(|e| watch_error(dir, e))?;
    Ok(Arc::new(Mutex::new(watcher)))
}

/// Adds a watch for every directory a walk enters. It holds the watcher weakly: the updater
/// keeps the hook, and a watcher it kept alive would keep its own queue open, so a dropped view
/// would never stop.
pub(super) fn dir_hook(watcher: &Arc<Mutex<notify::RecommendedWatcher>>) -> crate::DirHook {
    let watcher = Arc::downgrade(watcher);
    Arc::new(move |path: &Path| {
        let Some(watcher) = watcher.upgrade() else {
            return Ok(()); // the view is being dropped; nothing will read the events
        };
        let mut watcher = watcher.lock().unwrap();
        watcher
            .watch(path, RecursiveMode::NonRecursive)
            .map_err(|e| watch_error(path, e))
    })
}

fn watch_error(path: &Path, e: notify::Error) -> Error {
    let io = match e.kind {
        notify::ErrorKind::MaxFilesWatch => std::io::Error::other(
            "inotify watch limit reached; raise it with `sysctl fs.inotify.max_user_watches=524288` \
             (and fs.inotify.max_user_instances if many daemons run)",
        ),
        notify::ErrorKind::Io(io) => io,
        // Gone before it could be watched: a walk leaves it out (its removal raised an event).
        notify::ErrorKind::PathNotFound => {
            std::io::Error::from_raw_os_error(rustix::io::Errno::NOENT.raw_os_error())
        }
        other => std::io::Error::other(format!("{other:?}")),
    };
    Error::io(path, io)
}

impl Live {
    /// Returns once the updater has applied every change made before the call (see
    /// [`Live::sync`]).
    pub(super) fn settle(&self, timeout: Duration) -> Result<(), SyncError> {
        self.recheck_links();
        let cookies = &self.shared.cookies;
        let name = cookies.dir.fresh_name();
        cookies
            .waiting
            .lock()
            .unwrap()
            .insert(name.clone(), Seen::Made);
        if let Err(e) = cookies.dir.create(&name) {
            cookies.waiting.lock().unwrap().remove(&name);
            return Err(SyncError::Cookie {
                dir: cookies.dir.path.clone(),
                cause: Arc::new(e),
            });
        }
        let started = Instant::now();
        let mut waiting = cookies.waiting.lock().unwrap();
        let outcome = loop {
            let seen = waiting.get(&name).copied().unwrap_or(Seen::Done);
            if seen == Seen::Done {
                break Ok(());
            }
            let elapsed = started.elapsed();
            let limit = match (seen, self.moving()) {
                (Seen::Queued, None) => timeout.max(BUSY_LIMIT),
                _ => timeout,
            };
            if elapsed >= limit {
                break Err(seen);
            }
            let step = (limit - elapsed).min(Duration::from_millis(250));
            waiting = cookies.changed.wait_timeout(waiting, step).unwrap().0;
        };
        waiting.remove(&name);
        drop(waiting);
        cookies.dir.remove(&name);
        outcome.map_err(|seen| self.waited_for(seen, started.elapsed()))
    }

    /// Why the tree cannot be snapshotted for the moment (a file kept changing while it was
    /// hashed), while the updater waits to go again.
    fn moving(&self) -> Option<Arc<Error>> {
        self.shared.state.read().unwrap().moving.clone()
    }

    /// What a sync that gave up after `waited` was waiting for.
    fn waited_for(&self, seen: Seen, waited: Duration) -> SyncError {
        let dir = self.shared.dir.clone();
        if seen == Seen::Made {
            return SyncError::Unseen { dir, waited };
        }
        if let Some(moving) = self.moving() {
            return SyncError::Moving { moving, waited };
        }
        let (entries, running) = self.busy().unwrap_or_default();
        SyncError::Busy {
            dir,
            waited,
            running,
            entries,
        }
    }

    /// Files with several links change without an event in a watched directory when written
    /// through another name: each one whose stamp no longer matches the current snapshot is
    /// queued as changed, ahead of the cookie that follows. Ones that are gone or down to one
    /// link are forgotten (a later walk notes them again if they gain one).
    fn recheck_links(&self) {
        let mut links: Vec<Vec<u8>> = self.shared.links.lock().unwrap().iter().cloned().collect();
        if links.is_empty() {
            return;
        }
        links.sort_unstable(); // a directory's files together: it is opened once
        let current = self.current();
        let mut forget = Vec::new();
        let mut dir: Option<(Vec<u8>, Option<OwnedFd>)> = None;
        for rel in links {
            // Only a file of the snapshot can be stale in it; one no longer there (or left out)
            // is noted again by the walk that takes it back.
            let Some(Node::File(f)) = current.tree().find(&rel) else {
                forget.push(rel);
                continue;
            };
            let (parent, base) = crate::scan::split(&rel);
            if dir.as_ref().is_none_or(|(p, _)| p.as_slice() != parent) {
                let here: &[u8] = if parent.is_empty() { b"." } else { parent };
                let fd = crate::worktree::read::open_dir_at(current.root().fd(), here).ok();
                dir = Some((parent.to_vec(), fd));
            }
            let st = (dir.as_ref().and_then(|(_, fd)| fd.as_ref()))
                .and_then(|d| rustix::fs::statat(d, base, AtFlags::SYMLINK_NOFOLLOW).ok())
                .filter(|st| {
                    rustix::fs::FileType::from_raw_mode(st.st_mode as _)
                        == rustix::fs::FileType::RegularFile
                });
            let same = st.as_ref().is_some_and(|st| {
                !f.racy()
                    && f.stamp == crate::worktree::read::stamp_of_stat(st)
                    && f.executable() == crate::worktree::read::exec_of_stat(st)
            });
            if st.is_none_or(|st| st.st_nlink <= 1) {
                forget.push(rel.clone());
            }
            if !same {
                self.changed(self.shared.dir.join(OsStr::from_bytes(&rel)));
            }
        }
        let mut links = self.shared.links.lock().unwrap();
        for rel in forget {
            links.remove(&rel);
        }
    }

    /// Queues `path` (absolute) as changed, as if the watcher had named it.
    pub(super) fn changed(&self, path: PathBuf) {
        let event =
            notify::Event::new(EventKind::Modify(ModifyKind::Data(DataChange::Any))).add_path(path);
        let _ = self.inject.lock().unwrap().send(Ok(event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::Config;
    use crate::Filter;

    fn config(cookie_dir: Option<PathBuf>) -> Config {
        Config {
            filter: Filter::All,
            name: None,
            settle: Duration::from_millis(10),
            keep: 2,
            cookie_dir,
        }
    }

    #[test]
    fn callers_that_gave_up_leave_no_cookie_behind() {
        let t = tempfile::tempdir().unwrap();
        let project = t.path().join("p");
        std::fs::create_dir_all(&project).unwrap();
        std::fs::write(project.join("f"), "f").unwrap();
        let cookies = t.path().join("cookies");
        let (tx, _rx) = mpsc::channel();
        let live = Live::start(&project, config(Some(cookies.clone())), None, tx).unwrap();
        // Callers that give up before the watcher could deliver their cookie.
        let gave_up = (0..100)
            .filter(|_| live.sync(Duration::ZERO).is_err())
            .count();
        assert!(gave_up > 0, "no caller gave up: the test shows nothing");
        // One that waits: every cookie before it has been through the updater by then.
        live.sync(Duration::from_secs(10)).unwrap();
        assert_eq!(live.shared.cookies.waiting.lock().unwrap().len(), 0);
        assert_eq!(std::fs::read_dir(&cookies).unwrap().count(), 0);
        let names: Vec<_> = std::fs::read_dir(&project).unwrap().collect();
        assert_eq!(names.len(), 1, "the project was written: {names:?}");
    }

    #[test]
    fn a_dropped_view_stops_and_takes_its_cookie_directory_with_it() {
        let t = tempfile::tempdir().unwrap();
        let project = t.path().join("p");
        std::fs::create_dir_all(&project).unwrap();
        let cookies = t.path().join("cookies");
        let (tx, _rx) = mpsc::channel();
        let live = Live::start(&project, config(Some(cookies.clone())), None, tx).unwrap();
        live.sync(Duration::from_secs(10)).unwrap();
        let shared = Arc::downgrade(&live.shared);
        drop(live);
        for _ in 0..200 {
            if shared.upgrade().is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(shared.upgrade().is_none(), "the updater outlived its view");
        assert!(!cookies.exists(), "the cookie directory was left behind");
    }

    #[test]
    fn a_cookie_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let cookies = t.path().join("cookies");
        std::fs::create_dir(&cookies).unwrap();
        std::fs::set_permissions(&cookies, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (tx, _rx) = mpsc::channel();
        let e = Live::start(t.path(), config(Some(cookies.clone())), None, tx)
            .err()
            .expect("a shared cookie directory was used");
        assert!(e.to_string().contains("not a private directory"), "{e}");
        // A link where the directory should be is not followed either.
        std::fs::remove_dir(&cookies).unwrap();
        std::fs::create_dir(t.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(t.path().join("elsewhere"), &cookies).unwrap();
        let (tx, _rx) = mpsc::channel();
        assert!(Live::start(t.path(), config(Some(cookies)), None, tx).is_err());
    }
}
