//! Walking a project directory into a snapshot.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ignore::{WalkBuilder, WalkState};

use crate::read::{self, Root};
use crate::tree::{Dir, Entry, File, Node, Stamp, Symlink};
use crate::{Error, Snapshot};

/// Files whose names start with this are srcstore's own (watcher cookies) and are never part
/// of a snapshot, whatever the filter.
pub const RESERVED_PREFIX: &[u8] = b".srcstore-";

/// Which files of the directory a snapshot takes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Filter {
    /// `.gitignore` at every level (also outside a git repository), `.git/info/exclude`, the
    /// user's global git excludes and `.srcstoreignore`; `.git` itself is left out.
    Ignore,
    /// Everything, exactly what `nix-store --add` would take.
    All,
}

/// What a scan did, for reports and benchmarks.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ScanStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Files whose content was read and hashed (the rest were trusted by their stamp).
    pub hashed: u64,
}

/// Builds a [`Snapshot`] of a directory.
pub struct Scanner {
    path: PathBuf,
    filter: Filter,
    name: Option<String>,
    previous: Option<Node>,
    threads: usize,
    progress: Arc<AtomicU64>,
    on_dir: Option<DirHook>,
}

/// Called for every directory a walk enters, before its entries are read (the live view adds
/// its inotify watch there, so nothing created inside is missed).
pub type DirHook = Arc<DirHookFn>;
pub type DirHookFn = dyn Fn(&Path) -> Result<(), Error> + Send + Sync;

pub(crate) enum Item {
    Dir,
    File(Arc<File>),
    Symlink(Arc<Symlink>),
    /// A subtree built elsewhere (kept from the previous tree, or walked separately).
    Node(Node),
}

impl Scanner {
    pub fn new(path: impl Into<PathBuf>, filter: Filter) -> Self {
        Scanner {
            path: path.into(),
            filter,
            name: None,
            previous: None,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            progress: Arc::default(),
            on_dir: None,
        }
    }

    /// See [`DirHook`].
    pub fn on_dir(mut self, hook: DirHook) -> Self {
        self.on_dir = Some(hook);
        self
    }

    /// The `<name>` part of the snapshot's basename; defaults to the directory's basename made
    /// valid.
    pub fn name(mut self, name: Option<String>) -> Self {
        self.name = name;
        self
    }

    /// A tree from an earlier scan of the same directory (from the index, or the snapshot
    /// before): files whose stamp still matches are not read again, and unchanged nodes keep
    /// their identity.
    pub fn previous(mut self, tree: Option<Node>) -> Self {
        self.previous = tree;
        self
    }

    /// A counter of entries visited so far, for a progress display.
    pub fn progress(mut self, counter: Arc<AtomicU64>) -> Self {
        self.progress = counter;
        self
    }

    pub fn scan(self) -> Result<Snapshot, Error> {
        self.scan_with_stats().map(|(s, _)| s)
    }

    pub fn scan_with_stats(self) -> Result<(Snapshot, ScanStats), Error> {
        let abs = std::path::absolute(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let root = Arc::new(Root::open(&abs)?);
        let name = match self.name.clone() {
            Some(n) => {
                crate::name::validate(&n)?;
                n
            }
            None => crate::name::from_basename(
                &abs.file_name()
                    .map_or("source".into(), |n| n.to_string_lossy()),
            ),
        };
        let (tree, stats) = full::scan(&self, &root)?;
        Ok((Snapshot::new(tree, name, root), stats))
    }
}

/// One walk over part of a project, as a flat list (incremental updates; a whole project is
/// scanned by [`full::scan`]).
pub(crate) struct Walk<'a> {
    root: &'a Root,
    filter: Filter,
    threads: usize,
    /// The tree at the project root whose files may be trusted by stamp.
    previous: Option<&'a Node>,
    /// Paths whose previous nodes must not be trusted at all (an event named them).
    fresh: &'a HashSet<Vec<u8>>,
    progress: &'a AtomicU64,
    on_dir: Option<&'a DirHookFn>,
}

impl<'a> Walk<'a> {
    pub(crate) fn new(
        scanner: &'a Scanner,
        root: &'a Root,
        previous: Option<&'a Node>,
        fresh: &'a HashSet<Vec<u8>>,
    ) -> Self {
        Walk {
            root,
            filter: scanner.filter,
            threads: scanner.threads,
            previous,
            fresh,
            progress: &scanner.progress,
            on_dir: scanner.on_dir.as_deref(),
        }
    }

    /// Walks `start` (relative to the project root) to `max_depth`, returning every entry below
    /// it with its project-relative path; `start` itself is only passed to the dir hook.
    pub(crate) fn run(
        &self,
        start: &[u8],
        max_depth: Option<usize>,
    ) -> Result<Vec<(Vec<u8>, Item)>, Error> {
        let start_path = self.root.path().join(OsStr::from_bytes(start));
        let mut builder = WalkBuilder::new(&start_path);
        builder
            .threads(if max_depth == Some(1) {
                1
            } else {
                self.threads
            })
            .follow_links(false)
            .max_depth(max_depth)
            .standard_filters(false);
        if self.filter == Filter::Ignore {
            builder
                .git_ignore(true)
                .git_global(true)
                .git_exclude(true)
                .require_git(false)
                .parents(true)
                .add_custom_ignore_filename(".srcstoreignore")
                .filter_entry(|e| e.depth() == 0 || e.file_name() != ".git");
        }
        let items = Mutex::new(Vec::new());
        let failure: Mutex<Option<Error>> = Mutex::new(None);
        let base_len = self.root.path().as_os_str().len();
        builder.build_parallel().run(|| {
            let mut batch = Batch {
                local: Vec::new(),
                sink: &items,
            };
            let failure = &failure;
            Box::new(move |entry| {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => return stop_on(failure, walk_error(e)),
                };
                let rel = entry.path().as_os_str().as_bytes()[base_len..]
                    .strip_prefix(b"/")
                    .unwrap_or_default();
                if is_reserved(rel) {
                    return WalkState::Continue;
                }
                if entry.depth() == 0 {
                    return match self.enter_dir(entry.path()) {
                        Ok(()) => WalkState::Continue,
                        Err(e) => stop_on(failure, Some(e)),
                    };
                }
                match self.visit(entry.path(), rel) {
                    Ok(item) => {
                        self.progress.fetch_add(1, Ordering::Relaxed);
                        batch.push((rel.to_vec(), item));
                        WalkState::Continue
                    }
                    Err(e) => stop_on(failure, Some(e)),
                }
            })
        });
        if let Some(e) = failure.into_inner().unwrap() {
            return Err(e);
        }
        Ok(items.into_inner().unwrap())
    }

    fn enter_dir(&self, path: &Path) -> Result<(), Error> {
        self.on_dir.map_or(Ok(()), |hook| hook(path))
    }

    fn visit(&self, path: &Path, rel: &[u8]) -> Result<Item, Error> {
        let meta = fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
        let ft = meta.file_type();
        let previous = match self.fresh.contains(rel) {
            true => None,
            false => self.previous.and_then(|p| p.find(rel)),
        };
        if ft.is_dir() {
            self.enter_dir(path)?;
            return Ok(Item::Dir);
        }
        if ft.is_symlink() {
            let target = fs::read_link(path).map_err(|e| Error::io(path, e))?;
            let target = target.into_os_string().into_vec().into_boxed_slice();
            if let Some(Node::Symlink(old)) = previous {
                if old.target == target {
                    return Ok(Item::Symlink(old.clone()));
                }
            }
            return Ok(Item::Symlink(Arc::new(Symlink::new(target))));
        }
        if ft.is_file() {
            if let Some(Node::File(old)) = previous {
                use std::os::unix::fs::PermissionsExt;
                let exec = meta.permissions().mode() & 0o100 != 0;
                if !old.racy && old.stamp == Stamp::of(&meta) && old.executable == exec {
                    return Ok(Item::File(old.clone()));
                }
            }
            let rel_path = Path::new(OsStr::from_bytes(rel));
            let h = read::hash_file(self.root, rel_path, &meta)?;
            return Ok(Item::File(Arc::new(File::new(
                h.content,
                h.executable,
                h.stamp,
                h.racy,
            ))));
        }
        let kind = if ft.is_fifo() {
            "a named pipe (fifo)"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_block_device() || ft.is_char_device() {
            "a device node"
        } else {
            "a special file"
        };
        Err(Error::UnsupportedFileType {
            path: path.into(),
            kind,
        })
    }
}

/// A walker thread's findings, handed over in batches to keep the shared lock cold, and the
/// rest when the thread's visitor is dropped.
struct Batch<'a> {
    local: Vec<(Vec<u8>, Item)>,
    sink: &'a Mutex<Vec<(Vec<u8>, Item)>>,
}

impl Batch<'_> {
    fn push(&mut self, item: (Vec<u8>, Item)) {
        self.local.push(item);
        if self.local.len() >= 256 {
            self.sink.lock().unwrap().append(&mut self.local);
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.sink.lock().unwrap().append(&mut self.local);
    }
}

fn stop_on(failure: &Mutex<Option<Error>>, error: Option<Error>) -> WalkState {
    match error {
        Some(e) => {
            failure.lock().unwrap().get_or_insert(e);
            WalkState::Quit
        }
        None => WalkState::Continue,
    }
}

fn is_reserved(rel: &[u8]) -> bool {
    let base = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
    is_reserved_name(base)
}

fn is_reserved_name(name: &[u8]) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// Errors of the walk that must stop it (`Some`) or may be passed over (`None`: a malformed
/// pattern in an ignore file, which `git` itself would also skip).
fn walk_error(e: ignore::Error) -> Option<Error> {
    fn io_of(e: &ignore::Error) -> Option<(Option<PathBuf>, std::io::Error)> {
        match e {
            ignore::Error::WithPath { path, err } => {
                io_of(err).map(|(p, io)| (p.or_else(|| Some(path.clone())), io))
            }
            ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
                io_of(err)
            }
            ignore::Error::Io(io) => Some((None, std::io::Error::new(io.kind(), io.to_string()))),
            ignore::Error::Loop { child, .. } => Some((
                Some(child.clone()),
                std::io::Error::other("filesystem loop"),
            )),
            _ => None,
        }
    }
    match io_of(&e) {
        Some((path, io)) => Some(Error::io(path.unwrap_or_default(), io)),
        None => {
            tracing::warn!("ignore rules: {e}");
            None
        }
    }
}

/// Turns a walk's flat list into the tree at `base`, reusing every node of `previous` (the tree
/// at the project root) whose content is unchanged, so that node identities carry over.
pub(crate) fn assemble(
    items: Vec<(Vec<u8>, Item)>,
    base: &[u8],
    previous: Option<&Node>,
) -> (Node, ScanStats) {
    let mut stats = ScanStats::default();
    let mut children: HashMap<Vec<u8>, Vec<Entry>> = HashMap::new();
    let mut dirs: Vec<Vec<u8>> = Vec::new();
    for (rel, item) in items {
        let (parent, name) = split(&rel);
        let node = match item {
            Item::Dir => {
                stats.dirs += 1;
                dirs.push(rel);
                continue;
            }
            Item::File(f) => {
                stats.files += 1;
                stats.bytes += f.size();
                let is_new = previous
                    .and_then(|p| p.find(&rel))
                    .is_none_or(|old| old.id() != f.id);
                stats.hashed += is_new as u64;
                Node::File(f)
            }
            Item::Symlink(s) => {
                stats.symlinks += 1;
                Node::Symlink(s)
            }
            Item::Node(n) => n,
        };
        children.entry(parent.to_vec()).or_default().push(Entry {
            name: name.into(),
            node,
        });
    }
    // Deepest first, so every directory's children are complete when it is built.
    dirs.sort_unstable_by_key(|d| std::cmp::Reverse(d.iter().filter(|&&b| b == b'/').count()));
    dirs.push(base.to_vec());
    let mut root = None;
    for rel in dirs {
        let dir = Dir::new(children.remove(&rel).unwrap_or_default());
        let node = match previous.and_then(|p| p.find(&rel)) {
            Some(Node::Dir(old)) if old.hash == dir.hash => Node::Dir(old.clone()),
            _ => Node::Dir(Arc::new(dir)),
        };
        if rel == base {
            root = Some(node);
        } else {
            let (parent, name) = split(&rel);
            children.entry(parent.to_vec()).or_default().push(Entry {
                name: name.into(),
                node,
            });
        }
    }
    (root.expect("the base is always assembled"), stats)
}

pub(crate) fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

/// Scanning a whole project: a parallel walk over directory descriptors that builds each
/// directory's node as soon as everything below it is known.
///
/// - Each directory is listed once, through a descriptor opened beneath its parent's (never
///   through a symlink); its entries are stat-ed (`fstatat`) and opened relative to it, so no
///   path is resolved twice.
/// - A directory's entries are sorted once and matched against the previous tree's directory in
///   one merge, not looked up path by path. A directory whose entries come out as exactly the
///   previous one's (same names, same nodes) is that node again, without hashing.
/// - Work is a shared stack of tasks (list a directory, hash a file), so one large directory's
///   files are hashed by every thread. A directory's node is built by whichever thread finishes
///   its last piece of work, then handed to its parent; memory holds the finished nodes and the
///   unfinished directories along the frontier, nothing per path.
/// - With [`Filter::Ignore`], the ignore files are read from the listing (the `ignore` crate's
///   `Gitignore` matchers) with the precedence its walker gives them; see [`rules`].
mod full {
    use std::mem::MaybeUninit;
    use std::os::fd::{AsFd, OwnedFd};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex};

    use rustix::fs::{AtFlags, FileType, RawDir};

    use super::rules::{Found, Level, Rules};
    use super::{is_reserved_name, Filter, ScanStats, Scanner};
    use crate::read::{self, Attempt, Root};
    use crate::tree::{Dir, Entry, File, Name, Node, Stamp, Symlink};
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

    fn unsupported(path: PathBuf, t: FileType) -> Error {
        let kind = match t {
            FileType::Fifo => "a named pipe (fifo)",
            FileType::Socket => "a socket",
            FileType::BlockDevice | FileType::CharacterDevice => "a device node",
            _ => "a special file",
        };
        Error::UnsupportedFileType { path, kind }
    }

    thread_local! {
        static DIRENTS: std::cell::RefCell<Vec<MaybeUninit<u8>>> =
            std::cell::RefCell::new(vec![MaybeUninit::uninit(); 32 * 1024]);
    }

    impl Shared<'_> {
        /// One thread's share of the walk: takes tasks until there are none left anywhere.
        fn work(&self) -> ScanStats {
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
                hook(&dir_path)?;
            }
            let io = |e: std::io::Error| Error::io(&dir_path, e);
            let fd = match (&parent_fd, job.rel.is_empty()) {
                (_, true) => read::open_dir_at(self.root.fd(), b".").map_err(io)?,
                (Some(p), false) => {
                    let name = super::split(&job.rel).1;
                    read::open_dir_at(p.as_fd(), name).map_err(io)?
                }
                (None, false) => read::open_dir_at(self.root.fd(), &job.rel).map_err(io)?,
            };
            drop(parent_fd);

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
                    if is_reserved_name(name) {
                        continue;
                    }
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
                self.progress.fetch_add(1, Ordering::Relaxed);
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
            // A file the previous tree has is checked by its stamp; so is anything `d_type`
            // does not name.
            if kind == Kind::Unknown || (kind == Kind::File && matches!(prev, Some(Node::File(_))))
            {
                let s = self.stat(fd, name, job)?;
                kind = kind_of(FileType::from_raw_mode(s.st_mode as _));
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
                    let target = rustix::fs::readlinkat(&**fd, &**name, Vec::new())
                        .map_err(|e| Error::io(self.abs(&job.child_rel(name)), e.into()))?
                        .into_bytes();
                    if let Some(Node::Symlink(old)) = prev {
                        if *old.target == *target {
                            return Ok(Node::Symlink(old.clone()));
                        }
                    }
                    Ok(Node::Symlink(Arc::new(Symlink::new(target.into()))))
                }
                Kind::File => {
                    if let (Some(st), Some(Node::File(old))) = (&st, prev) {
                        if !old.racy
                            && old.stamp == read::stamp_of_stat(st)
                            && old.executable == read::exec_of_stat(st)
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
                Kind::Other(t) => Err(unsupported(self.abs(&job.child_rel(name)), t)),
                Kind::Unknown => unreachable!("a stat always names the type"),
            }
        }

        fn hash(
            &self,
            job: Arc<Job>,
            slot: usize,
            name: &Name,
            dir_fd: &Arc<OwnedFd>,
            mut expected: Option<Stamp>,
            stats: &mut ScanStats,
        ) -> Result<(), Error> {
            let path = || self.abs(&job.child_rel(name));
            // Like `read::hash_file`: a file seen to change is read once more, after it settled.
            for attempt in 0..2 {
                if attempt > 0 {
                    let st = self.stat(dir_fd, name, &job)?;
                    if FileType::from_raw_mode(st.st_mode as _) != FileType::RegularFile {
                        break;
                    }
                    let now = read::stamp_of_stat(&st);
                    read::settle(now);
                    expected = Some(now);
                }
                let attempt = match read::open_file_at(dir_fd.as_fd(), name) {
                    Ok(mut file) => read::hash_open(&mut file, expected),
                    // Not a file any more (a symlink is refused by the open).
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                        Ok(Attempt::NotAFile)
                    }
                    Err(e) => Err(e),
                }
                .map_err(|e| Error::io(path(), e))?;
                let node = match attempt {
                    Attempt::Hashed(h) => {
                        stats.files += 1;
                        stats.bytes += h.stamp.size;
                        stats.hashed += 1;
                        Node::File(Arc::new(File::new(
                            h.content,
                            h.executable,
                            h.stamp,
                            h.racy,
                        )))
                    }
                    // Not a regular file any more (the old walk failed here too): look again,
                    // then give up as for a file that keeps changing.
                    Attempt::Changed | Attempt::NotAFile => continue,
                };
                job.entries.lock().unwrap()[slot].node = node;
                self.finish_one(job);
                return Ok(());
            }
            Err(Error::Unstable { path: path() })
        }

        /// Marks one piece of `job`'s work done; the last one builds its node and hands it up,
        /// finishing the parent too when that was its last piece.
        fn finish_one(&self, mut job: Arc<Job>) {
            loop {
                if job.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
                    return;
                }
                let entries = std::mem::take(&mut *job.entries.lock().unwrap()).into_boxed_slice();
                let node = match &job.prev {
                    Some(old) if old.same_entries(&entries) => Node::Dir(old.clone()),
                    prev => {
                        let dir = Dir::from_sorted(entries);
                        match prev {
                            Some(old) if old.hash == dir.hash => Node::Dir(old.clone()),
                            _ => Node::Dir(Arc::new(dir)),
                        }
                    }
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

    use std::os::unix::ffi::OsStrExt;
}

/// The rules of [`Filter::Ignore`], as the `ignore` crate's walker applies them with the
/// options [`Walk::run`] gives it (`.gitignore` also outside a repository, `.git/info/exclude`,
/// the global excludes file, `.srcstoreignore`, the ignore files of the root's parents).
///
/// A path is matched by each kind of file separately, nearest directory first, and the first
/// kind to have an opinion decides, in this order: `.srcstoreignore`, `.gitignore`,
/// `.git/info/exclude`, global. The root's parents are matched after the directories below it,
/// with the path under the root's canonical form. (Since no repository is required, the crate
/// never stops at a repository boundary.) Problems in an ignore file below the root are passed
/// over as the walker passes them over; in the root's parents they are reported as it reports
/// them. `scan::tests::rules_agree_with_the_ignore_crate` holds the two side by side.
mod rules {
    use std::ffi::OsStr;
    use std::fs;
    use std::io::BufRead;
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use ignore::gitignore::{Gitignore, GitignoreBuilder};

    use crate::Error;

    const CUSTOM: &str = ".srcstoreignore";

    /// Which ignore files a directory listing showed.
    #[derive(Default)]
    pub(super) struct Found {
        custom: bool,
        git_ignore: bool,
        git_dir: bool,
    }

    impl Found {
        pub(super) fn note(&mut self, name: &[u8]) {
            match name {
                b".srcstoreignore" => self.custom = true,
                b".gitignore" => self.git_ignore = true,
                b".git" => self.git_dir = true,
                _ => {}
            }
        }

        fn all() -> Self {
            Found {
                custom: true,
                git_ignore: true,
                git_dir: true,
            }
        }
    }

    /// One directory's ignore files, and the directory above's.
    pub(super) struct Level {
        custom: Gitignore,
        git_ignore: Gitignore,
        exclude: Gitignore,
        parent: Option<Arc<Level>>,
        /// This level or one above it has a rule.
        any: bool,
    }

    impl Level {
        fn empty() -> Self {
            Level {
                custom: Gitignore::empty(),
                git_ignore: Gitignore::empty(),
                exclude: Gitignore::empty(),
                parent: None,
                any: false,
            }
        }

        /// The rules of `dir`, whose listing showed `found`; the errors are returned apart.
        fn load(
            dir: &Path,
            found: &Found,
            parent: Option<Arc<Level>>,
            errors: &mut Vec<ignore::Error>,
        ) -> Level {
            let custom = if found.custom {
                create(dir, dir, CUSTOM, errors)
            } else {
                Gitignore::empty()
            };
            let git_ignore = if found.git_ignore {
                create(dir, dir, ".gitignore", errors)
            } else {
                Gitignore::empty()
            };
            let exclude = if found.git_dir {
                let git_type = dir.join(".git").metadata().ok().map(|m| m.file_type());
                match git_common_dir(dir, git_type) {
                    Ok(git_dir) => create(dir, &git_dir, "info/exclude", errors),
                    Err(e) => {
                        errors.extend(e);
                        Gitignore::empty()
                    }
                }
            } else {
                Gitignore::empty()
            };
            let any = !custom.is_empty()
                || !git_ignore.is_empty()
                || !exclude.is_empty()
                || parent.as_ref().is_some_and(|p| p.any);
            Level {
                custom,
                git_ignore,
                exclude,
                parent,
                any,
            }
        }

        fn has_own_rules(&self) -> bool {
            !self.custom.is_empty() || !self.git_ignore.is_empty() || !self.exclude.is_empty()
        }
    }

    /// The crate's `create_gitignore`: the file `name` in `file_dir`, matched below `dir`; I/O
    /// errors are passed over.
    fn create(
        dir: &Path,
        file_dir: &Path,
        name: &str,
        errors: &mut Vec<ignore::Error>,
    ) -> Gitignore {
        let mut builder = GitignoreBuilder::new(dir);
        let path = file_dir.join(name);
        if path.exists() {
            if let Some(e) = builder.add(&path) {
                if !e.is_io() {
                    errors.push(e);
                }
            }
        }
        builder.build().unwrap_or_else(|e| {
            errors.push(e);
            Gitignore::empty()
        })
    }

    /// The crate's `resolve_git_commondir`: where `info/exclude` is for the repository whose
    /// `.git` is in `dir` (a linked worktree's `.git` is a file naming it).
    fn git_common_dir(
        dir: &Path,
        git_type: Option<fs::FileType>,
    ) -> Result<PathBuf, Option<ignore::Error>> {
        let git_dir = dir.join(".git");
        if !git_type.is_some_and(|t| t.is_file()) {
            return Ok(git_dir);
        }
        let io = |e: std::io::Error, path: &Path| {
            Some(ignore::Error::WithPath {
                path: path.to_path_buf(),
                err: Box::new(ignore::Error::Io(e)),
            })
        };
        let first_line = |path: &Path| -> Result<Option<String>, std::io::Error> {
            let file = fs::File::open(path)?;
            std::io::BufReader::new(file).lines().next().transpose()
        };
        let line = match first_line(&git_dir) {
            Ok(Some(line)) => line,
            Ok(None) => return Err(None),
            Err(e) => return Err(io(e, &git_dir)),
        };
        let Some(real) = line.strip_prefix("gitdir: ") else {
            return Err(None);
        };
        let real = PathBuf::from(real);
        let common_file = real.join("commondir");
        let line = match fs::File::open(&common_file) {
            Err(_) => return Err(None),
            Ok(file) => match std::io::BufReader::new(file).lines().next() {
                Some(Ok(line)) => line,
                Some(Err(e)) => return Err(io(e, &common_file)),
                None => return Err(None),
            },
        };
        Ok(if line.starts_with('.') {
            real.join(line)
        } else {
            PathBuf::from(line)
        })
    }

    /// The rules of one scan.
    pub(super) struct Rules {
        /// The project root as the walk names it; entries' paths start with it.
        root: PathBuf,
        /// The root's canonical form, for the parents' rules.
        canonical: Option<PathBuf>,
        /// The nearest of the root's parents, each holding the next one up.
        parents: Option<Arc<Level>>,
        global: Gitignore,
    }

    impl Rules {
        pub(super) fn new(root: &Path) -> Result<Self, Error> {
            let global = match std::env::current_dir() {
                Ok(cwd) => GitignoreBuilder::new(cwd).build_global().0,
                Err(_) => Gitignore::empty(),
            };
            // The parents' ignore files, from `/` down, as the crate's `add_parents` reads them:
            // without a listing, so every kind is looked for.
            let canonical = root.canonicalize().ok();
            let mut parents = None;
            if let Some(canonical) = &canonical {
                let mut errors = Vec::new();
                let mut chain: Vec<&Path> = canonical.ancestors().skip(1).collect();
                chain.reverse();
                for dir in chain {
                    let level = Level::load(dir, &Found::all(), parents.clone(), &mut errors);
                    parents = Some(Arc::new(level));
                }
                for e in errors {
                    if let Some(e) = super::walk_error(e) {
                        return Err(e);
                    }
                }
            }
            if !parents.as_ref().is_some_and(|p| p.any) {
                parents = None;
            }
            Ok(Rules {
                root: root.to_path_buf(),
                canonical,
                parents,
                global,
            })
        }

        /// The level above the root (nothing: the parents are matched apart).
        pub(super) fn top(&self) -> Arc<Level> {
            Arc::new(Level::empty())
        }

        /// The rules for the entries of `dir` (an absolute path below the root), whose listing
        /// showed `found`, below the directory whose rules are `parent`.
        pub(super) fn enter(&self, parent: &Arc<Level>, dir: &Path, found: &Found) -> Arc<Level> {
            if !(found.custom || found.git_ignore || found.git_dir) {
                return parent.clone();
            }
            // Problems below the root are passed over, as the walker does.
            let level = Level::load(dir, found, Some(parent.clone()), &mut Vec::new());
            if level.has_own_rules() {
                Arc::new(level)
            } else {
                parent.clone()
            }
        }

        /// Whether any rule could match below `level`.
        pub(super) fn any(&self, level: &Level) -> bool {
            level.any || self.parents.is_some() || !self.global.is_empty()
        }

        /// Whether the entry at `path` (`rel` below the root) is left out.
        pub(super) fn is_ignored(
            &self,
            level: &Level,
            path: &Path,
            rel: &[u8],
            is_dir: bool,
        ) -> bool {
            let mut found = [
                ignore::Match::None,
                ignore::Match::None,
                ignore::Match::None,
            ];
            match_levels(Some(level), path, is_dir, &mut found);
            if let (Some(parents), Some(canonical)) = (&self.parents, &self.canonical) {
                let path = canonical.join(OsStr::from_bytes(rel));
                match_levels(Some(parents), &path, is_dir, &mut found);
            }
            debug_assert!(path.starts_with(&self.root));
            let [custom, git, exclude] = found;
            custom
                .or(git)
                .or(exclude)
                .or(self.global.matched(path, is_dir))
                .is_ignore()
        }
    }

    /// Each kind's first opinion, nearest level first (kinds: `.srcstoreignore`, `.gitignore`,
    /// `info/exclude`); kinds already decided are left alone.
    fn match_levels<'a>(
        mut at: Option<&'a Level>,
        path: &Path,
        is_dir: bool,
        found: &mut [ignore::Match<&'a ignore::gitignore::Glob>; 3],
    ) {
        while let Some(l) = at.filter(|l| l.any) {
            for (m, rules) in found.iter_mut().zip([&l.custom, &l.git_ignore, &l.exclude]) {
                if m.is_none() {
                    *m = rules.matched(path, is_dir);
                }
            }
            at = l.parent.as_deref();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;

    fn write(p: &Path, content: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    fn paths(node: &Node) -> Vec<String> {
        let mut out = Vec::new();
        node.visit(&mut |rel, n| {
            let kind = match n {
                Node::Dir(_) => "/",
                Node::File(_) => "",
                Node::Symlink(_) => "@",
            };
            out.push(format!("{}{kind}", String::from_utf8_lossy(rel)));
        });
        out
    }

    /// The `ignore` crate's own walker (what every scan used before), as the reference.
    fn reference(dir: &Path, filter: Filter) -> Node {
        let scanner = Scanner::new(dir, filter);
        let root = Root::open(&std::path::absolute(dir).unwrap()).unwrap();
        let fresh = HashSet::new();
        let walk = Walk::new(&scanner, &root, None, &fresh);
        assemble(walk.run(b"", None).unwrap(), b"", None).0
    }

    #[test]
    fn rules_agree_with_the_ignore_crate() {
        let t = tempfile::tempdir().unwrap();
        let outer = t.path().join("outer");
        // The root's parents' rules: anchored at the parent, and unanchored.
        write(&outer.join(".gitignore"), "p/parent-anchored\n*.bak\n");
        let p = outer.join("p");
        write(
            &p.join(".gitignore"),
            "*.log\nbuild/\n/anchored\n!keep.log\ndeep/**/x\n",
        );
        for f in [
            "a.log",
            "keep.log",
            "build/out",
            "sub/build/out",
            "anchored",
            "sub/anchored",
            "deep/1/2/x",
            "deep/x",
            "f.bak",
            "parent-anchored",
            "sub/parent-anchored",
            "main.c",
            ".git",
            "sub/.git",
            ".srcstore-cookie",
            "sub/.srcstore-x/y",
        ] {
            write(&p.join(f), f);
        }
        // Nearer rules win; `.srcstoreignore` beats `.gitignore` at any level.
        write(&p.join("sub/.gitignore"), "!a.log\nlocal\n");
        write(&p.join("sub/a.log"), "x");
        write(&p.join("sub/local"), "x");
        write(&p.join("sub/local2/local"), "x");
        write(&p.join(".srcstoreignore"), "secret/\n!keep-me.log\n");
        write(&p.join("sub/secret/s"), "x");
        write(&p.join("keep-me.log"), "x");
        write(&p.join("sub/.srcstoreignore"), "main.c\n");
        write(&p.join("sub/main.c"), "x");
        // A nested repository with an exclude file, and a linked worktree's `.git` file.
        write(&p.join("nested/.git/info/exclude"), "excluded\n");
        write(&p.join("nested/excluded"), "x");
        write(&p.join("nested/kept"), "x");
        let common = t.path().join("common");
        write(&common.join("info/exclude"), "wt-excluded\n");
        write(&common.join("worktrees/w/commondir"), "../..\n");
        write(
            &p.join("wt/.git"),
            &format!("gitdir: {}\n", common.join("worktrees/w").display()),
        );
        write(&p.join("wt/wt-excluded"), "x");
        write(&p.join("wt/other"), "x");
        // Directories only match directory patterns; a symlink is not a directory.
        std::os::unix::fs::symlink("build", p.join("sub/linkdir")).unwrap();
        std::os::unix::fs::symlink("x", p.join("build2")).unwrap();
        write(&p.join("sub/.gitignore2"), "x");

        for filter in [Filter::Ignore, Filter::All] {
            let ours = Scanner::new(&p, filter).scan().unwrap();
            let theirs = reference(&p, filter);
            assert_eq!(paths(ours.tree()), paths(&theirs), "{filter:?}");
            assert_eq!(ours.tree().hash(), theirs.hash(), "{filter:?}");
        }
        let kept = paths(Scanner::new(&p, Filter::Ignore).scan().unwrap().tree());
        for gone in [
            "a.log",
            "f.bak",
            "parent-anchored",
            "nested/excluded",
            "wt/wt-excluded",
        ] {
            assert!(!kept.iter().any(|k| k == gone), "{gone} was kept: {kept:?}");
        }
        for here in [
            "keep.log",
            "keep-me.log",
            "sub/a.log",
            "sub/parent-anchored",
            "wt/other",
        ] {
            assert!(
                kept.iter().any(|k| k == here),
                "{here} was left out: {kept:?}"
            );
        }
    }

    #[test]
    fn a_rescan_reuses_every_unchanged_node_and_hashes_only_what_changed() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        for i in 0..40 {
            write(
                &p.join(format!("d{}/e{}/f{i}", i % 4, i % 3)),
                &format!("{i}"),
            );
        }
        std::os::unix::fs::symlink("target", p.join("d0/link")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (first, s1) = Scanner::new(p, Filter::All).scan_with_stats().unwrap();
        assert_eq!((s1.files, s1.hashed, s1.symlinks), (40, 40, 1));
        let (second, s2) = Scanner::new(p, Filter::All)
            .previous(Some(first.tree().clone()))
            .scan_with_stats()
            .unwrap();
        assert_eq!((s2.files, s2.hashed, s2.dirs), (40, 0, s1.dirs));
        assert_eq!(second.tree().id(), first.tree().id());
        write(&p.join("d1/e1/f1"), "changed");
        let (third, s3) = Scanner::new(p, Filter::All)
            .previous(Some(second.tree().clone()))
            .scan_with_stats()
            .unwrap();
        assert_eq!(s3.hashed, 1);
        assert_ne!(third.tree().hash(), first.tree().hash());
        let id = |s: &Snapshot, rel: &str| s.tree().find(rel.as_bytes()).unwrap().id();
        assert_eq!(id(&third, "d0"), id(&first, "d0"));
        assert_eq!(id(&third, "d1/e0"), id(&first, "d1/e0"));
        assert_ne!(id(&third, "d1"), id(&first, "d1"));
        assert_eq!(
            third.tree().hash(),
            Scanner::new(p, Filter::All).scan().unwrap().tree().hash()
        );
    }
}
