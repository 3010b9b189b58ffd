//! Scanning a whole project: a parallel walk over directory descriptors that builds each
//! directory's node as soon as everything below it is known.
//!
//! - Each directory is listed once, through a descriptor opened beneath its parent's (never
//!   through a symlink); its entries are stat-ed (`fstatat`) and opened relative to it, so no
//!   path is resolved twice.
//! - A directory's entries are sorted once and matched against the previous tree's directory in
//!   one merge, not looked up path by path. A directory whose entries come out as exactly the
//!   previous one's (same names, same nodes) is that node again, without hashing.
//! - Work is a shared stack of tasks (list a directory, hash a file), so one large directory's
//!   files are hashed by every thread. A directory's node is built by whichever thread finishes
//!   its last piece of work, then handed to its parent; memory holds the finished nodes and the
//!   unfinished directories along the frontier, nothing per path.
//! - With [`Filter::Ignore`], the ignore files are read from the listing (the `ignore` crate's
//!   `Gitignore` matchers) with the precedence its walker gives them; see [`super::rules`].

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use rustix::fs::{AtFlags, FileType, RawDir};

use super::rules::{Found, Level, Rules};
use super::{note_links, Filter, Links, ScanStats, Scanner};
use crate::tree::{Dir, Entry, File, Name, Node, Stamp, Symlink};
use crate::worktree::read::{self, Root};
use crate::Error;

pub(super) fn scan(scanner: &Scanner, root: &Root) -> Result<(Node, ScanStats), Error> {
    let rules = match scanner.filter {
        Filter::Ignore => Some(Rules::new(root.path())?),
        Filter::All => None,
    };
    let prev = match &scanner.previous {
        Some(Node::Dir(d)) => Some(d.clone()),
        _ => None,
    };
    let walk = Shared {
        root,
        rules: rules.as_ref(),
        hook: scanner.on_dir.as_deref(),
        progress: &scanner.progress,
        links: scanner.links.as_ref(),
        budget: scanner.budget.as_ref(),
        contents: scanner.contents,
        threads: scanner.threads.max(1),
        queue: Mutex::new(Queue::default()),
        wake: Condvar::new(),
        failed: AtomicBool::new(false),
        error: Mutex::new(None),
        result: Mutex::new(None),
    };
    let job = Arc::new(Job {
        rel: Box::default(),
        parent: None,
        prev,
        level: rules.as_ref().map(|r| r.top()),
        entries: Mutex::new(Vec::new()),
        pending: AtomicUsize::new(1),
    });
    walk.queue.lock().unwrap().tasks.push(Task::List {
        job,
        parent_fd: None,
    });
    let mut stats = ScanStats::default();
    std::thread::scope(|s| {
        // Also covers a spawn that fails, which would leave the spawned threads waiting for this one.
        let _end = EndOnPanic(&walk);
        let workers: Vec<_> = (1..walk.threads).map(|_| s.spawn(|| walk.work())).collect();
        let mine = walk.work();
        for w in workers {
            add(&mut stats, &w.join().expect("a scan thread panicked"));
        }
        add(&mut stats, &mine);
    });
    if let Some(e) = walk.error.into_inner().unwrap() {
        return Err(e);
    }
    let tree = walk
        .result
        .into_inner()
        .unwrap()
        .expect("a walk that did not fail finished its root");
    Ok((tree, stats))
}

fn add(total: &mut ScanStats, s: &ScanStats) {
    total.files += s.files;
    total.dirs += s.dirs;
    total.symlinks += s.symlinks;
    total.bytes += s.bytes;
    total.hashed += s.hashed;
}

struct Shared<'a> {
    root: &'a Root,
    rules: Option<&'a Rules>,
    hook: Option<&'a super::DirHookFn>,
    progress: &'a AtomicU64,
    links: Option<&'a Links>,
    budget: Option<&'a Arc<super::Budget>>,
    /// Whether files are read and hashed, or only stat-ed (`Scanner::unread`).
    contents: bool,
    threads: usize,
    queue: Mutex<Queue>,
    wake: Condvar,
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
    result: Mutex<Option<Node>>,
}

#[derive(Default)]
struct Queue {
    /// Last in, first out: a directory's files are hashed before its subdirectories are
    /// listed, which keeps few directories open and unfinished at a time.
    tasks: Vec<Task>,
    idle: usize,
    done: bool,
}

/// Ends the walk for every thread when the one holding it panics: the walk is over only when
/// all threads are idle, and a thread that panicked never will be. The panic then surfaces
/// through the scope's `join` instead of leaving the others waiting forever.
struct EndOnPanic<'s, 'a>(&'s Shared<'a>);

impl Drop for EndOnPanic<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.failed.store(true, Ordering::Relaxed);
            let mut queue = self.0.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.done = true;
            self.0.wake.notify_all();
        }
    }
}

enum Task {
    /// List a directory, opened below `parent_fd` (the project root when `None`).
    List {
        job: Arc<Job>,
        parent_fd: Option<Arc<OwnedFd>>,
    },
    /// Hash the file in slot `slot` of `job`, in the directory `dir_fd`.
    Hash {
        job: Arc<Job>,
        slot: usize,
        name: Name,
        dir_fd: Arc<OwnedFd>,
        /// The stamp the listing saw, if it stat-ed the file.
        expected: Option<Stamp>,
    },
}

/// A directory being built.
struct Job {
    /// Its path below the project root (empty for the root).
    rel: Box<[u8]>,
    /// Where its node goes when it is finished.
    parent: Option<(Arc<Job>, usize)>,
    /// The directory at the same place in the previous tree.
    prev: Option<Arc<Dir>>,
    /// The ignore rules in force for its entries' parent (its own are added when it is listed).
    level: Option<Arc<Level>>,
    /// Its entries in order, once listed; unfinished ones hold [`placeholder`].
    entries: Mutex<Vec<Entry>>,
    /// Pieces of work still outstanding: the listing, then one per unfinished entry.
    pending: AtomicUsize,
}

impl Job {
    fn child_rel(&self, name: &[u8]) -> Box<[u8]> {
        let mut rel = Vec::with_capacity(self.rel.len() + 1 + name.len());
        rel.extend_from_slice(&self.rel);
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name);
        rel.into()
    }
}

/// What an unfinished entry holds until its node is known.
fn placeholder() -> Node {
    static EMPTY: std::sync::LazyLock<Node> =
        std::sync::LazyLock::new(|| Node::Dir(Arc::new(Dir::new(Vec::new()))));
    EMPTY.clone()
}

/// What an entry that vanished while the walk looked at it holds: left out of its directory
/// when that is built. (Its removal raised an event in a watched directory, which a live view
/// applies next.)
static GONE: std::sync::LazyLock<Node> =
    std::sync::LazyLock::new(|| Node::Symlink(Arc::new(Symlink::new(Box::default()))));

fn gone() -> Node {
    GONE.clone()
}

fn is_gone(node: &Node) -> bool {
    node.id() == GONE.id()
}

/// What an entry turned out to be (from `d_type`, or a stat when that says nothing).
#[derive(Copy, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Other(FileType),
    Unknown,
}

fn kind_of(t: FileType) -> Kind {
    match t {
        FileType::Directory => Kind::Dir,
        FileType::RegularFile => Kind::File,
        FileType::Symlink => Kind::Symlink,
        FileType::Unknown => Kind::Unknown,
        other => Kind::Other(other),
    }
}

thread_local! {
    static DIRENTS: std::cell::RefCell<Vec<MaybeUninit<u8>>> =
        std::cell::RefCell::new(vec![MaybeUninit::uninit(); 32 * 1024]);
}

impl Shared<'_> {
    /// One thread's share of the walk: takes tasks until there are none left anywhere.
    fn work(&self) -> ScanStats {
        let _end = EndOnPanic(self);
        let mut stats = ScanStats::default();
        while let Some(task) = self.next() {
            if self.failed.load(Ordering::Relaxed) {
                continue;
            }
            let result = match task {
                Task::List { job, parent_fd } => self.list(job, parent_fd, &mut stats),
                Task::Hash {
                    job,
                    slot,
                    name,
                    dir_fd,
                    expected,
                } => self.hash(job, slot, &name, &dir_fd, expected, &mut stats),
            };
            if let Err(e) = result {
                self.fail(e);
            }
        }
        stats
    }

    fn next(&self) -> Option<Task> {
        let mut q = self.queue.lock().unwrap();
        loop {
            if q.done {
                return None;
            }
            if let Some(t) = q.tasks.pop() {
                return Some(t);
            }
            q.idle += 1;
            if q.idle == self.threads {
                // Nobody is working, so nobody will add work: the walk is over.
                q.done = true;
                self.wake.notify_all();
                return None;
            }
            q = self.wake.wait(q).unwrap();
            q.idle -= 1;
        }
    }

    fn push(&self, tasks: impl IntoIterator<Item = Task>) {
        let mut q = self.queue.lock().unwrap();
        let before = q.tasks.len();
        q.tasks.extend(tasks);
        let added = q.tasks.len() - before;
        if q.idle > 0 && added > 0 {
            if added == 1 {
                self.wake.notify_one();
            } else {
                self.wake.notify_all();
            }
        }
    }

    fn fail(&self, e: Error) {
        self.error.lock().unwrap().get_or_insert(e);
        self.failed.store(true, Ordering::Relaxed);
    }

    fn abs(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.path().to_path_buf()
        } else {
            self.root.path().join(std::ffi::OsStr::from_bytes(rel))
        }
    }

    fn list(
        &self,
        job: Arc<Job>,
        parent_fd: Option<Arc<OwnedFd>>,
        stats: &mut ScanStats,
    ) -> Result<(), Error> {
        let dir_path = self.abs(&job.rel);
        if let Some(hook) = self.hook {
            match hook(&dir_path) {
                Ok(()) => {}
                Err(e) if e.vanished() && job.parent.is_some() => {
                    self.vanish(job);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        let io = |e: std::io::Error| Error::io(&dir_path, e);
        let opened = match (&parent_fd, job.rel.is_empty()) {
            (_, true) => read::open_dir_at(self.root.fd(), b".").map_err(io),
            (Some(p), false) => {
                let name = super::split(&job.rel).1;
                read::open_dir_at(p.as_fd(), name).map_err(io)
            }
            (None, false) => read::open_dir_at(self.root.fd(), &job.rel).map_err(io),
        };
        drop(parent_fd);
        let fd = match opened {
            Ok(fd) => fd,
            // Removed (or replaced) since its parent was listed.
            Err(e) if e.vanished() && job.parent.is_some() => {
                self.vanish(job);
                return Ok(());
            }
            Err(e) => return Err(e),
        };

        // The listing, minus what is never part of a snapshot.
        let mut found = Found::default();
        let mut listed: Vec<(Name, Kind)> = Vec::new();
        DIRENTS.with_borrow_mut(|buf| -> Result<(), Error> {
            let mut dir = RawDir::new(&fd, buf);
            while let Some(entry) = dir.next() {
                let entry = entry.map_err(|e| io(e.into()))?;
                let name = entry.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                found.note(name);
                listed.push((Name::new(name), kind_of(entry.file_type())));
            }
            Ok(())
        })?;

        // The ignore rules: this directory's own files, then every entry matched.
        let level = match (self.rules, &job.level) {
            (Some(rules), Some(parent)) => Some(rules.enter(parent, &dir_path, &found)),
            _ => None,
        };
        if let (Some(rules), Some(level)) = (self.rules, &level) {
            let mut path = dir_path.clone();
            let mut failure = None;
            listed.retain_mut(|(name, kind)| {
                if failure.is_some() || **name == *b".git" {
                    return false;
                }
                if *kind == Kind::Unknown {
                    match self.stat(&fd, name, &job) {
                        Ok(st) => *kind = kind_of(FileType::from_raw_mode(st.st_mode as _)),
                        Err(e) if e.vanished() => return false,
                        Err(e) => {
                            failure = Some(e);
                            return false;
                        }
                    }
                }
                if !rules.any(level) {
                    return true;
                }
                path.push(std::ffi::OsStr::from_bytes(name));
                let rel = job.child_rel(name);
                let ignored = rules.is_ignored(level, &path, &rel, *kind == Kind::Dir);
                path.pop();
                !ignored
            });
            if let Some(e) = failure {
                return Err(e);
            }
        }
        listed.sort_unstable_by(|a, b| a.0.cmp(&b.0));

        // Each entry against the previous directory's (both in order), in one merge.
        let fd = Arc::new(fd);
        let prev_entries: &[Entry] = job.prev.as_ref().map_or(&[], |d| &d.entries);
        let mut prev_at = 0;
        let mut entries = Vec::with_capacity(listed.len());
        let mut tasks = Vec::new();
        for (slot, (name, kind)) in listed.into_iter().enumerate() {
            while prev_at < prev_entries.len() && *prev_entries[prev_at].name < *name {
                prev_at += 1;
            }
            let prev = prev_entries
                .get(prev_at)
                .filter(|e| e.name == name)
                .map(|e| &e.node);
            let listed = self.progress.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(budget) = self.budget {
                budget.list(listed, || self.abs(&job.child_rel(&name)))?;
            }
            let node = self.entry(
                &job,
                &fd,
                slot,
                &name,
                kind,
                prev,
                level.as_ref(),
                &mut tasks,
                stats,
            )?;
            entries.push(Entry { name, node });
        }
        *job.entries.lock().unwrap() = entries;
        job.pending.fetch_add(tasks.len(), Ordering::Relaxed);
        // Subdirectories first, so that this directory's files come off the stack first.
        tasks.sort_by_key(|t| matches!(t, Task::Hash { .. }));
        self.push(tasks);
        drop(fd);
        self.finish_one(job);
        Ok(())
    }

    fn stat(&self, fd: &OwnedFd, name: &[u8], job: &Job) -> Result<rustix::fs::Stat, Error> {
        rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| Error::io(self.abs(&job.child_rel(name)), e.into()))
    }

    /// The node of one entry, or a placeholder and the task that will finish it.
    #[allow(clippy::too_many_arguments)]
    fn entry(
        &self,
        job: &Arc<Job>,
        fd: &Arc<OwnedFd>,
        slot: usize,
        name: &Name,
        mut kind: Kind,
        prev: Option<&Node>,
        level: Option<&Arc<Level>>,
        tasks: &mut Vec<Task>,
        stats: &mut ScanStats,
    ) -> Result<Node, Error> {
        let mut st = None;
        // A file the previous tree has is checked by its stamp; anything `d_type` does not
        // name is stat-ed. A file that is not read is not stat-ed either: the pass that reads
        // it does, as it opens it.
        if kind == Kind::Unknown
            || (kind == Kind::File && self.contents && matches!(prev, Some(Node::File(_))))
        {
            let s = match self.stat(fd, name, job) {
                Ok(s) => s,
                Err(e) if e.vanished() => return Ok(gone()),
                Err(e) => return Err(e),
            };
            kind = kind_of(FileType::from_raw_mode(s.st_mode as _));
            if kind == Kind::File {
                note_links(self.links, &job.child_rel(name), s.st_nlink);
            }
            st = Some(s);
        }
        match kind {
            Kind::Dir => {
                stats.dirs += 1;
                let child = Arc::new(Job {
                    rel: job.child_rel(name),
                    parent: Some((job.clone(), slot)),
                    prev: match prev {
                        Some(Node::Dir(d)) => Some(d.clone()),
                        _ => None,
                    },
                    level: level.cloned(),
                    entries: Mutex::new(Vec::new()),
                    pending: AtomicUsize::new(1),
                });
                tasks.push(Task::List {
                    job: child,
                    parent_fd: Some(fd.clone()),
                });
                Ok(placeholder())
            }
            Kind::Symlink => {
                stats.symlinks += 1;
                let target = match rustix::fs::readlinkat(&**fd, &**name, Vec::new()) {
                    Ok(t) => t.into_bytes(),
                    // Gone, or no longer a link: the change raised an event.
                    Err(e) if e == rustix::io::Errno::NOENT || e == rustix::io::Errno::INVAL => {
                        return Ok(gone())
                    }
                    Err(e) => return Err(Error::io(self.abs(&job.child_rel(name)), e.into())),
                };
                if let Some(Node::Symlink(old)) = prev {
                    if *old.target == *target {
                        return Ok(Node::Symlink(old.clone()));
                    }
                }
                Ok(Node::Symlink(Arc::new(Symlink::new(target.into()))))
            }
            Kind::File if !self.contents => {
                stats.files += 1;
                let unknown = crate::tree::Stamp {
                    size: 0,
                    mtime_ns: 0,
                    ctime_ns: 0,
                    ino: 0,
                };
                Ok(Node::File(Arc::new(File::new(
                    [0; 32], false, unknown, true,
                ))))
            }
            Kind::File => {
                if let (Some(st), Some(Node::File(old))) = (&st, prev) {
                    if !old.racy()
                        && old.stamp == read::stamp_of_stat(st)
                        && old.executable() == read::exec_of_stat(st)
                    {
                        stats.files += 1;
                        stats.bytes += old.size();
                        return Ok(Node::File(old.clone()));
                    }
                }
                tasks.push(Task::Hash {
                    job: job.clone(),
                    slot,
                    name: name.clone(),
                    dir_fd: fd.clone(),
                    expected: st.as_ref().map(read::stamp_of_stat),
                });
                Ok(placeholder())
            }
            // A stat names a type the kernel did not: no file Nix could store either.
            Kind::Other(t) => Err(Error::unsupported(self.abs(&job.child_rel(name)), t)),
            Kind::Unknown => Err(Error::unsupported(
                self.abs(&job.child_rel(name)),
                FileType::Unknown,
            )),
        }
    }

    fn hash(
        &self,
        job: Arc<Job>,
        slot: usize,
        name: &Name,
        dir_fd: &Arc<OwnedFd>,
        expected: Option<Stamp>,
        stats: &mut ScanStats,
    ) -> Result<(), Error> {
        let budget = self.budget.map(|b| &**b);
        let h = match read::hash_settled(dir_fd.as_fd(), name, expected, budget, || {
            self.abs(&job.child_rel(name))
        }) {
            Ok(h) => h,
            Err(e) if e.vanished() => {
                job.entries.lock().unwrap()[slot].node = gone();
                self.finish_one(job);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        note_links(self.links, &job.child_rel(name), h.links);
        stats.files += 1;
        stats.bytes += h.stamp.size;
        stats.hashed += 1;
        let node = Node::File(Arc::new(File::new(
            h.content,
            h.executable,
            h.stamp,
            h.racy,
        )));
        job.entries.lock().unwrap()[slot].node = node;
        self.finish_one(job);
        Ok(())
    }

    /// A directory that vanished before it was listed: left out of its parent.
    fn vanish(&self, job: Arc<Job>) {
        let (parent, slot) = job.parent.clone().expect("the root is never left out");
        parent.entries.lock().unwrap()[slot].node = gone();
        self.finish_one(parent);
    }

    /// Marks one piece of `job`'s work done; the last one builds its node and hands it up,
    /// finishing the parent too when that was its last piece.
    fn finish_one(&self, mut job: Arc<Job>) {
        loop {
            if job.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
                return;
            }
            let mut entries = std::mem::take(&mut *job.entries.lock().unwrap());
            entries.retain(|e| !is_gone(&e.node));
            let entries = entries.into_boxed_slice();
            // The previous node only for the very same entries: one that merely hashes the
            // same would bring back the stale stamps of files re-hashed since.
            let node = match &job.prev {
                Some(old) if old.same_entries(&entries) => Node::Dir(old.clone()),
                _ => Node::Dir(Arc::new(Dir::from_sorted(entries))),
            };
            match &job.parent {
                Some((parent, slot)) => {
                    parent.entries.lock().unwrap()[*slot].node = node;
                    let parent = parent.clone();
                    job = parent;
                }
                None => {
                    *self.result.lock().unwrap() = Some(node);
                    return;
                }
            }
        }
    }
}
