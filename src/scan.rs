//! Walking a project directory into a snapshot: a whole project through [`full`], the parts an
//! update names through [`Walk`] (the `ignore` crate's walker, which reads the ignore files
//! itself). [`rules`] gives the full walk the same rules, in the walker's precedence.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ignore::{WalkBuilder, WalkState};

use crate::tree::{Dir, Entry, File, Node, Symlink};
use crate::worktree::read::{self, Root};
use crate::{Error, Snapshot};

mod full;
mod rules;
mod update;

pub use update::Changes;

/// Which files of the directory a snapshot takes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Filter {
    /// `.gitignore` at every level (also outside a git repository), `.git/info/exclude`, the
    /// user's global git excludes and `.srcstoreignore`; `.git` itself is left out.
    Ignore,
    /// Everything, exactly what `nix-store --add` would take.
    All,
}

impl Filter {
    /// How a user keeps a path out of a snapshot taken under this filter: the advice every
    /// message about a path that cannot be taken ends with.
    pub fn how_to_leave_out(self) -> &'static str {
        match self {
            Filter::Ignore => "remove it or add it to .srcstoreignore",
            // `.srcstoreignore` keeps nothing out here: every file is taken, as Nix would.
            Filter::All => "remove it (with --no-ignore every file of the directory is taken)",
        }
    }
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
    pub(crate) filter: Filter,
    name: Option<String>,
    previous: Option<Node>,
    threads: usize,
    progress: Arc<AtomicU64>,
    on_dir: Option<DirHook>,
    links: Option<Links>,
    /// Whether files are read and hashed (else stat-ed only: see [`Scanner::unread`]).
    contents: bool,
    /// The directory, opened already (see [`Scanner::opened`]).
    opened: Option<OwnedFd>,
    budget: Option<Arc<Budget>>,
}

/// How much a scan may read: entries listed, and file bytes, each checked before it is read
/// (a file's size from the descriptor it is read through), so a tree larger than this is
/// refused without reading the rest.
pub struct Budget {
    entries: u64,
    bytes: u64,
    read: AtomicU64,
}

impl Budget {
    pub fn new(entries: u64, bytes: u64) -> Budget {
        Budget {
            entries,
            bytes,
            read: AtomicU64::new(0),
        }
    }

    /// `listed` entries so far, the last of them at `path`.
    pub(crate) fn list(&self, listed: u64, path: impl FnOnce() -> PathBuf) -> Result<(), Error> {
        match listed > self.entries {
            true => Err(Error::OverBudget {
                path: path(),
                limit: format!("{} entries", self.entries),
            }),
            false => Ok(()),
        }
    }

    /// `size` more bytes to read, of the file at `path`.
    pub(crate) fn take(&self, size: u64, path: impl FnOnce() -> PathBuf) -> Result<(), Error> {
        let before = self.read.fetch_add(size, Ordering::Relaxed);
        match before.saturating_add(size) > self.bytes {
            true => Err(Error::OverBudget {
                path: path(),
                limit: format!("{} bytes", self.bytes),
            }),
            false => Ok(()),
        }
    }
}

/// Where a walk notes the files it saw with more than one link (their paths below the root):
/// an edit through another of their names raises no event in any watched directory.
pub(crate) type Links = Arc<Mutex<HashSet<Vec<u8>>>>;

/// Called for every directory a walk enters, before its entries are read (the live view adds
/// its inotify watch there, so nothing created inside is missed).
pub type DirHook = Arc<DirHookFn>;
pub type DirHookFn = dyn Fn(&Path) -> Result<(), Error> + Send + Sync;

pub(crate) enum Item {
    Dir,
    /// `hashed`: its bytes were read (it may still be the previous node, if they proved the same).
    File {
        file: Arc<File>,
        hashed: bool,
    },
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
            links: None,
            contents: true,
            opened: None,
            budget: None,
        }
    }

    /// See [`Budget`].
    pub fn budget(mut self, budget: Arc<Budget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Scans the directory open at `dir` (a descriptor, `O_PATH` will do) rather than opening
    /// the path, which then only names it in messages: for a directory found by descriptor,
    /// that a path could no longer lead to.
    pub fn opened(mut self, dir: OwnedFd) -> Self {
        self.opened = Some(dir);
        self
    }

    /// Neither read nor stat files: each file's content hash, size and mode are left unknown
    /// (zeros) for the one pass that opens and reads it to fill in
    /// ([`crate::nar::nar_info_reading`]). Such a tree is no snapshot until then.
    pub fn unread(mut self) -> Self {
        self.contents = false;
        self
    }

    /// See [`Links`].
    pub(crate) fn links(mut self, links: Links) -> Self {
        self.links = Some(links);
        self
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
        let root = Arc::new(match &self.opened {
            Some(dir) => Root::reopen(&abs, dir.as_fd())?,
            None => Root::open(&abs)?,
        });
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
        let (tree, stats) = full::scan(&self, &root).map_err(|e| e.under(self.filter))?;
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
    links: Option<&'a Links>,
}

/// Notes `rel` in `links` if a stat showed it to have more than one link.
pub(crate) fn note_links(links: Option<&Links>, rel: &[u8], nlink: u64) {
    if let (Some(links), true) = (links, nlink > 1) {
        links.lock().unwrap().insert(rel.to_vec());
    }
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
            links: scanner.links.as_ref(),
        }
    }

    /// Walks `start` (relative to the project root) to `max_depth`, returning every entry below
    /// it with its project-relative path; `start` itself is only passed to the dir hook. An entry
    /// that vanishes while it is looked at is left out: its removal raised an event in a watched
    /// directory, so the update that follows sees the tree without it.
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
                    Err(e) => {
                        let e = walk_error(e).filter(|e| !e.vanished());
                        return stop_on(failure, e);
                    }
                };
                let rel = entry.path().as_os_str().as_bytes()[base_len..]
                    .strip_prefix(b"/")
                    .unwrap_or_default();
                if entry.depth() == 0 {
                    return match self.enter_dir(entry.path()) {
                        Ok(()) => WalkState::Continue,
                        Err(e) if e.vanished() => WalkState::Skip,
                        Err(e) => stop_on(failure, Some(e)),
                    };
                }
                match self.visit(entry.path(), rel) {
                    Ok(item) => {
                        self.progress.fetch_add(1, Ordering::Relaxed);
                        batch.push((rel.to_vec(), item));
                        WalkState::Continue
                    }
                    Err(e) if e.vanished() => WalkState::Skip,
                    Err(e) => stop_on(failure, Some(e.under(self.filter))),
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

    /// One entry, stat-ed and read beneath the project's root descriptor like every other
    /// access: a directory swapped for a link at the wrong moment is never followed.
    fn visit(&self, path: &Path, rel: &[u8]) -> Result<Item, Error> {
        let st = read::stat_at(self.root.fd(), rel).map_err(|e| Error::io(path, e))?;
        let ft = rustix::fs::FileType::from_raw_mode(st.st_mode);
        let old = self.previous.and_then(|p| p.find(rel));
        // An event named it: its stamp proves nothing, only a new hash does.
        let previous = old.filter(|_| !self.fresh.contains(rel));
        if ft == rustix::fs::FileType::Directory {
            self.enter_dir(path)?;
            return Ok(Item::Dir);
        }
        if ft == rustix::fs::FileType::Symlink {
            let target = read::read_link_at(self.root.fd(), rel).map_err(|e| Error::io(path, e))?;
            let target = target.into_boxed_slice();
            if let Some(Node::Symlink(old)) = previous {
                if old.target == target {
                    return Ok(Item::Symlink(old.clone()));
                }
            }
            return Ok(Item::Symlink(Arc::new(Symlink::new(target))));
        }
        if ft == rustix::fs::FileType::RegularFile {
            note_links(self.links, rel, st.st_nlink as u64);
            if let Some(Node::File(old)) = previous {
                let exec = read::exec_of_stat(&st);
                if !old.racy() && old.stamp == read::stamp_of_stat(&st) && old.executable() == exec
                {
                    return Ok(Item::File {
                        file: old.clone(),
                        hashed: false,
                    });
                }
            }
            let h = read::hash_settled(
                self.root.fd(),
                rel,
                Some(read::stamp_of_stat(&st)),
                None,
                || path.to_path_buf(),
            )?;
            if let Some(Node::File(old)) = old {
                // Hashed again to exactly what it was: the same node, so nothing above it moves.
                let same = (old.content, old.executable(), old.stamp, old.racy())
                    == (h.content, h.executable, h.stamp, h.racy);
                if same {
                    return Ok(Item::File {
                        file: old.clone(),
                        hashed: true,
                    });
                }
            }
            return Ok(Item::File {
                file: Arc::new(File::new(h.content, h.executable, h.stamp, h.racy)),
                hashed: true,
            });
        }
        Err(Error::unsupported(path.into(), ft))
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
            // Several ignore files' problems at once (the root's parents'): the first I/O error
            // among them stops the walk, as it would alone.
            ignore::Error::Partial(errs) => errs.iter().find_map(io_of),
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
            Item::File { file, hashed } => {
                stats.files += 1;
                stats.bytes += file.size();
                stats.hashed += hashed as u64;
                Node::File(file)
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
            Some(Node::Dir(old)) if old.same_entries(&dir.entries) => Node::Dir(old.clone()),
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
    fn a_panic_in_a_scan_thread_surfaces_instead_of_hanging_the_others() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..50 {
            write(&t.path().join(format!("d{i}/f")), "x");
        }
        let scanner = Scanner::new(t.path(), Filter::All).on_dir(Arc::new(|dir: &Path| {
            assert!(!dir.ends_with("d17"), "a hook that panics");
            Ok(())
        }));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scanner.scan()));
            tx.send(outcome.is_err()).unwrap();
        });
        let panicked = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the scan hung after one of its threads panicked");
        assert!(panicked, "the panic was swallowed");
    }

    #[test]
    fn a_file_hashed_while_racy_is_hashed_once_more_then_trusted() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..5 {
            write(&t.path().join(format!("d/f{i}")), &format!("{i}"));
        }
        let rescan = |previous: &Snapshot| {
            Scanner::new(t.path(), Filter::All)
                .previous(Some(previous.tree().clone()))
                .scan_with_stats()
                .unwrap()
        };
        // Hashed within the racy window of their last change: their stamps prove nothing yet.
        let (first, s1) = Scanner::new(t.path(), Filter::All)
            .scan_with_stats()
            .unwrap();
        assert_eq!(s1.hashed, 5);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (second, s2) = rescan(&first);
        assert_eq!(s2.hashed, 5, "racy stamps were trusted");
        let (third, s3) = rescan(&second);
        assert_eq!(
            s3.hashed, 0,
            "stamps proven by the second hash were not kept"
        );
        assert_eq!(third.tree().hash(), first.tree().hash());
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
