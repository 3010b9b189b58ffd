//! The compile cache volume: a writable directory per project, in partitions (`go`, `zig`,
//! `ccache`, …), that srcstore's hook mounts at `/srcstore/cache` in the sandbox of a build
//! the project's owner asked for (see `hook::volume` and `docs/cache.md`).
//!
//! A volume is its owner's own: `${XDG_CACHE_HOME:-~/.cache}/srcstore/volumes/<project key>/`,
//! every directory down to a partition mode 0700, so no other local user reads or writes it
//! outside a sandbox. Builds write into it through an id-mapped mount that shows the owner's
//! files as the build user's, whichever build user Nix picked: on disk everything stays the
//! owner's.
//!
//! This module never sees a snapshot: it knows directories and names, nothing of the tree.

pub mod gocacheprog;

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::beneath::{self, Kind, Removed, Tree};

/// Longest partition name, in bytes.
pub const MAX_PARTITION_NAME: usize = 64;

/// The derivation attribute that asks for a partition of the project's volume.
pub const ATTRIBUTE: &str = "srcstoreCache";

/// Where the volume appears inside the sandbox: the partition the build asked for.
pub const STABLE_CACHE: &str = "/srcstore/cache";

/// Where, inside the sandbox of a build that got the volume, srcstore itself is, for
/// `srcstore gocacheprog`.
pub const STABLE_BIN: &str = "/srcstore/bin/srcstore";

/// Where, inside the sandbox, a build that asked for the volume and got none finds why.
pub const DENIED_NOTE: &str = "/srcstore/no-cache";

/// Whether `name` may name a partition: `[a-z0-9][a-z0-9._-]*`, at most
/// [`MAX_PARTITION_NAME`] bytes. The one rule, for the hook that reads it from a derivation
/// and the daemon that makes the directory.
pub fn check_partition_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let first_ok = b
        .first()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c));
    if b.len() > MAX_PARTITION_NAME || !first_ok || !rest_ok {
        return Err(format!(
            "{ATTRIBUTE} = {name:?} is not a partition name: use [a-z0-9][a-z0-9._-]*, at most {MAX_PARTITION_NAME} bytes (e.g. \"go\")"
        ));
    }
    Ok(())
}

/// One project's volume.
#[derive(Debug, Clone)]
pub struct Volume {
    root: PathBuf,
}

impl Volume {
    /// The volume at `root` (`volumes/<project key>` under the cache home).
    pub fn at(root: PathBuf) -> Self {
        Volume { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The partition `name`, made (mode 0700, with the volume above it) if missing, and
    /// checked: a directory of this user's, closed to others. Its absolute path.
    pub fn partition(&self, name: &str) -> io::Result<PathBuf> {
        check_partition_name(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let dir = self.root.join(name);
        make_private_dirs(&dir)?;
        Ok(dir)
    }

    /// Names of the partitions that exist, sorted.
    pub fn partitions(&self) -> io::Result<Vec<String>> {
        let tree = match Tree::open(&self.root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            tree => tree?,
        };
        Ok(partitions_in(&tree)?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }
}

/// The partitions of the volume `tree`, sorted, each opened beneath it.
fn partitions_in(tree: &Tree) -> io::Result<Vec<(String, Tree)>> {
    let mut names: Vec<String> = tree
        .list()?
        .into_iter()
        .filter(|(name, kind)| *kind == Kind::Dir && check_partition_name(name).is_ok())
        .map(|(name, _)| name)
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let sub = tree.subtree(&name)?;
            Ok((name, sub))
        })
        .collect()
}

/// What an entry costs on disk: the blocks allocated to it and its inode, so that an empty file
/// or a symlink, which a build can make by the million, is never free.
pub const INODE_BYTES: u64 = 256;

/// What a partition holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionStats {
    pub name: String,
    /// Its entries, of every kind (files, directories, symlinks, FIFOs, …).
    pub entries: u64,
    /// What they cost on disk: their blocks, and [`INODE_BYTES`] each.
    pub bytes: u64,
    /// Of the entries, the symlinks.
    pub symlinks: u64,
    /// Of the entries, FIFOs, sockets and devices.
    pub special: u64,
    /// Directories not looked into: deeper than a walk goes, or closed to their owner.
    pub unentered: u64,
    /// What `srcstore gocacheprog` counted in it, over all its runs.
    pub gocacheprog: gocacheprog::Counts,
    /// What stands where srcstore's own file should be (a link, a FIFO, a huge file): said, not
    /// read.
    pub planted: Vec<String>,
}

/// How often a daemon collects its volume on its own (see [`Volume::collect_if_due`]).
pub const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The most a volume may hold after [`Volume::gc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Limit {
    /// Bytes, counted as [`PartitionStats::bytes`] counts them.
    pub bytes: u64,
    /// Entries of every kind.
    pub entries: u64,
}

/// What [`Volume::gc`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Collected {
    pub removed: u64,
    pub freed_bytes: u64,
    pub kept_bytes: u64,
    pub kept_entries: u64,
}

impl Collected {
    fn take(&mut self, r: Removed) {
        self.removed += r.entries;
        self.freed_bytes += r.bytes + r.entries * INODE_BYTES;
    }
}

/// The largest `counts` file of gocacheprog's that `stats` reads.
const MAX_COUNTS_FILE: u64 = 4096;

impl Volume {
    fn tree(&self) -> io::Result<Tree> {
        Tree::open(&self.root)
    }

    /// Entries and bytes of every partition. Reads nothing but gocacheprog's small `counts`
    /// file, and that only when it is a regular file.
    pub fn stats(&self) -> io::Result<Vec<PartitionStats>> {
        partitions_in(&self.tree()?)?
            .into_iter()
            .map(|(name, tree)| {
                let mut s = PartitionStats {
                    name,
                    entries: 0,
                    bytes: 0,
                    symlinks: 0,
                    special: 0,
                    unentered: 0,
                    gocacheprog: gocacheprog::Counts::default(),
                    planted: Vec::new(),
                };
                tree.walk(&mut |e| {
                    s.entries += 1;
                    s.bytes += e.bytes + INODE_BYTES;
                    s.symlinks += u64::from(e.kind == Kind::Symlink);
                    s.special += u64::from(e.kind == Kind::Special);
                    s.unentered += u64::from(e.unentered);
                })?;
                let counts = Path::new(gocacheprog::DIR_IN_PARTITION).join(gocacheprog::COUNTS);
                match tree.read_file(&counts, MAX_COUNTS_FILE) {
                    Ok(bytes) => s.gocacheprog = gocacheprog::parse_counts(&bytes),
                    Err(beneath::ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => s.planted.push(format!("{}: {e}", counts.display())),
                }
                Ok(s)
            })
            .collect()
    }

    /// Empties `partition` (every partition with `None`) of every kind of entry. A build using
    /// it meanwhile sees cache misses, never a torn entry: each file is removed whole.
    pub fn clear(&self, partition: Option<&str>) -> io::Result<Collected> {
        if let Some(p) = partition {
            check_partition_name(p).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        }
        let mut done = Collected::default();
        for (name, tree) in partitions_in(&self.tree()?)? {
            if partition.is_none_or(|p| p == name) {
                done.take(tree.clear()?);
            }
        }
        Ok(done)
    }

    /// Whether a collection is due: none in the last `every` (by the time of the volume's
    /// `.collected` stamp, which this then renews). A daemon asks on each build's request and
    /// collects to [`default_limit`] in the background, so a volume no tool trims (Zig's)
    /// does not grow without end between manual collections.
    pub fn collect_if_due(&self, every: std::time::Duration) -> bool {
        let stamp = self.root.join(".collected");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < every));
        if fresh {
            return false;
        }
        // Written before the collection: two requests at once start at most one more.
        fs::write(&stamp, b"").is_ok()
    }

    /// Removes the least recently used units of the whole volume ([`units`]) until it holds
    /// at most `limit`, then the directories left empty.
    pub fn gc(&self, limit: Limit) -> io::Result<Collected> {
        let parts = partitions_in(&self.tree()?)?;
        let mut listed = Vec::new();
        for (i, (_, tree)) in parts.iter().enumerate() {
            tree.walk(&mut |e| {
                listed.push(Listed {
                    partition: i,
                    rel: e.rel.to_path_buf(),
                    dir: e.kind == Kind::Dir && !e.unentered,
                    ino: e.ino,
                    bytes: e.bytes + INODE_BYTES,
                    used: e.used,
                })
            })?;
        }
        let (mut bytes, mut entries) = (0u64, 0u64);
        for l in &listed {
            bytes += l.bytes;
            entries += 1;
        }
        let mut units = units(listed);
        // Oldest use first.
        units.sort_by(|a, b| (a.used, &a.rel).cmp(&(b.used, &b.rel)));
        let mut done = Collected::default();
        for u in &units {
            if bytes <= limit.bytes && entries <= limit.entries {
                break;
            }
            let removed = parts[u.partition].1.remove(&u.rel, u.ino)?;
            bytes = bytes.saturating_sub(u.bytes);
            entries = entries.saturating_sub(u.entries);
            done.take(removed);
        }
        for (_, tree) in &parts {
            let pruned = tree.prune_empty_dirs()?;
            bytes = bytes.saturating_sub(pruned.bytes + pruned.entries * INODE_BYTES);
            entries = entries.saturating_sub(pruned.entries);
            done.take(pruned);
        }
        done.kept_bytes = bytes;
        done.kept_entries = entries;
        Ok(done)
    }
}

/// An entry a walk of [`Volume::gc`] met.
struct Listed {
    partition: usize,
    rel: PathBuf,
    /// A directory the walk entered: what it holds was listed too.
    dir: bool,
    ino: u64,
    bytes: u64,
    used: i64,
}

/// What gc removes whole, never a part of it.
#[derive(Debug, PartialEq, Eq)]
struct Unit {
    partition: usize,
    rel: PathBuf,
    ino: u64,
    bytes: u64,
    entries: u64,
    used: i64,
}

/// Groups what a walk listed into the units gc removes: each entry that is not a directory the
/// walk entered (a file, a link, a FIFO, a directory too deep to enter), except inside a Zig
/// cache, a directory that holds `h/` and `o/`. Zig's manifests in `h/` name outputs in `o/`,
/// and a manifest whose output is gone fails the build (`failed to parse archive:
/// FileNotFound`, measured with Zig 0.17): such a cache is one unit, used when its newest
/// entry was. Directories the walk entered go when they are left empty.
fn units(listed: Vec<Listed>) -> Vec<Unit> {
    use std::collections::{HashMap, HashSet};
    let dirs: HashSet<(usize, &Path)> = listed
        .iter()
        .filter(|l| l.dir)
        .map(|l| (l.partition, l.rel.as_path()))
        .collect();
    let is_zig = |p: usize, dir: &Path| {
        dirs.contains(&(p, dir.join("h").as_path())) && dirs.contains(&(p, dir.join("o").as_path()))
    };
    // Each entry's unit: the outermost Zig cache above it, or itself.
    let owner: Vec<Option<PathBuf>> = listed
        .iter()
        .map(|l| {
            let mut outermost = None;
            for a in l.rel.ancestors() {
                if !a.as_os_str().is_empty() && is_zig(l.partition, a) {
                    outermost = Some(a.to_path_buf());
                }
            }
            outermost
        })
        .collect();
    let mut zig: HashMap<(usize, PathBuf), Unit> = HashMap::new();
    let mut out = Vec::new();
    for (l, owner) in listed.iter().zip(owner) {
        match owner {
            Some(root) => {
                let u = zig.entry((l.partition, root.clone())).or_insert(Unit {
                    partition: l.partition,
                    rel: root,
                    ino: 0,
                    bytes: 0,
                    entries: 0,
                    used: i64::MIN,
                });
                if u.rel == l.rel {
                    u.ino = l.ino;
                }
                u.bytes += l.bytes;
                u.entries += 1;
                u.used = u.used.max(l.used);
            }
            None if l.dir => {}
            None => out.push(Unit {
                partition: l.partition,
                rel: l.rel.clone(),
                ino: l.ino,
                bytes: l.bytes,
                entries: 1,
                used: l.used,
            }),
        }
    }
    out.extend(zig.into_values());
    out
}

/// Parses a size: bytes, or a number with K, M, G or T (powers of 1024), e.g. `512M`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{s:?} is not a size: use e.g. 512M, 20G or bytes")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?} is not a size: use e.g. 512M, 20G or bytes"))
}

/// The default limit for [`Volume::gc`]: a tenth of the filesystem the volume is on, in bytes
/// and in inodes (where it counts them).
pub fn default_limit(volume: &Path) -> io::Result<Limit> {
    let at = volume
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let st = rustix::fs::statvfs(at)?;
    Ok(Limit {
        bytes: st.f_blocks * st.f_frsize / 10,
        entries: match st.f_files {
            0 => u64::MAX,
            n => n / 10,
        },
    })
}

/// Makes `dir` and every missing directory above it mode 0700, then checks `dir` is this
/// user's and closed to others (a directory someone else made first is refused, not used).
fn make_private_dirs(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display())))
        }
        _ => {}
    }
    let meta = fs::symlink_metadata(dir)?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: not a private directory of uid {me} (a link, another user's, or open to others); remove it and start again",
                dir.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_are_short_lowercase_words() {
        for ok in [
            "go",
            "zig",
            "ccache",
            "rust-1.2",
            "a",
            "0x",
            &"a".repeat(64),
        ] {
            assert!(check_partition_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Go",
            ".hidden",
            "-x",
            "a/b",
            "..",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            let e = check_partition_name(bad).unwrap_err();
            assert!(e.contains(ATTRIBUTE), "{e}");
        }
    }

    #[test]
    fn a_partition_is_made_private_and_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let volume = Volume::at(tmp.path().join("volumes/abc"));
        let go = volume.partition("go").unwrap();
        assert_eq!(go, tmp.path().join("volumes/abc/go"));
        for dir in [&go, volume.root()] {
            let mode = fs::metadata(dir).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
        volume.partition("zig").unwrap();
        assert_eq!(volume.partitions().unwrap(), ["go", "zig"]);
        assert!(volume.partition("../x").is_err());
    }

    #[test]
    fn gc_removes_the_least_recently_used_files_first_and_clear_empties() {
        let tmp = tempfile::tempdir().unwrap();
        let volume = Volume::at(tmp.path().to_path_buf());
        let go = volume.partition("go").unwrap();
        let zig = volume.partition("zig").unwrap();
        for (i, dir) in [&go, &zig, &go].iter().enumerate() {
            let f = dir.join(format!("sub/f{i}"));
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(&f, vec![b'x'; 8192]).unwrap();
            let t = 1_000_000 + i as i64 * 1000;
            let times = rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: t,
                    tv_nsec: 0,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: t,
                    tv_nsec: 0,
                },
            };
            rustix::fs::utimensat(rustix::fs::CWD, &f, &times, rustix::fs::AtFlags::empty())
                .unwrap();
        }
        let stats = volume.stats().unwrap();
        // go: sub, sub/f0, sub/f2; zig: sub, sub/f1.
        assert_eq!(stats.iter().map(|s| s.entries).collect::<Vec<_>>(), [3, 2]);
        let all = stats[0].bytes + stats[1].bytes;
        let file = fs::metadata(zig.join("sub/f1")).unwrap().blocks() * 512 + INODE_BYTES;
        let limit = Limit {
            bytes: all - file,
            entries: u64::MAX,
        };
        let done = volume.gc(limit).unwrap();
        assert_eq!((done.removed, done.kept_bytes), (1, all - file));
        assert!(!go.join("sub/f0").exists(), "the oldest went first");
        assert!(go.join("sub/f2").exists() && zig.join("sub/f1").exists());

        volume.clear(Some("go")).unwrap();
        assert_eq!(
            fs::read_dir(&go).unwrap().count(),
            0,
            "files and emptied dirs gone"
        );
        assert!(zig.join("sub/f1").exists());
        assert!(volume.clear(Some("../x")).is_err());
    }

    fn age(path: &Path, t: i64) {
        let at = rustix::fs::Timespec {
            tv_sec: t,
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: at,
            last_modification: at,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            path,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }

    #[test]
    fn gc_removes_a_zig_cache_whole_never_its_outputs_without_its_manifests() {
        let tmp = tempfile::tempdir().unwrap();
        let volume = Volume::at(tmp.path().to_path_buf());
        let zig = volume.partition("zig").unwrap();
        let global = zig.join("zig-global");
        for (f, t) in [("h/m.txt", 3_000), ("o/ab/lib.a", 1_000), ("z/zz", 2_000)] {
            let f = global.join(f);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(&f, vec![b'x'; 8192]).unwrap();
            age(&f, t);
        }
        let newer = zig.join("other");
        fs::write(&newer, vec![b'y'; 8192]).unwrap();
        age(&newer, 2_500);
        // Only the oldest file has to go, and it is an output: its whole cache goes with it
        // (judged by its newest entry, which is newer than `other`).
        let all: u64 = volume.stats().unwrap()[0].bytes;
        let done = volume
            .gc(Limit {
                bytes: all - 1,
                entries: u64::MAX,
            })
            .unwrap();
        assert!(!newer.exists(), "the older unit went first");
        assert!(global.join("o/ab/lib.a").exists() && global.join("h/m.txt").exists());
        assert_eq!(done.removed, 1);
        volume
            .gc(Limit {
                bytes: 0,
                entries: u64::MAX,
            })
            .unwrap();
        assert!(!global.exists(), "gone whole");
    }

    #[test]
    fn gc_counts_entries_so_empty_files_and_links_are_collected_too() {
        let tmp = tempfile::tempdir().unwrap();
        let volume = Volume::at(tmp.path().to_path_buf());
        let t = volume.partition("t").unwrap();
        for i in 0..20 {
            fs::write(t.join(format!("empty{i}")), "").unwrap();
            std::os::unix::fs::symlink("/nowhere", t.join(format!("link{i}"))).unwrap();
        }
        let stats = &volume.stats().unwrap()[0];
        assert_eq!((stats.entries, stats.symlinks), (40, 20));
        let done = volume
            .gc(Limit {
                bytes: u64::MAX,
                entries: 10,
            })
            .unwrap();
        assert_eq!((done.removed, done.kept_entries), (30, 10));
        volume
            .gc(Limit {
                bytes: 0,
                entries: u64::MAX,
            })
            .unwrap();
        assert_eq!(fs::read_dir(&t).unwrap().count(), 0);
    }

    #[test]
    fn a_collection_is_due_once_per_interval() {
        let tmp = tempfile::tempdir().unwrap();
        let volume = Volume::at(tmp.path().to_path_buf());
        volume.partition("go").unwrap();
        assert!(volume.collect_if_due(COLLECT_EVERY), "never collected: due");
        assert!(
            !volume.collect_if_due(COLLECT_EVERY),
            "just collected: not due"
        );
        assert!(volume.collect_if_due(std::time::Duration::ZERO));
    }

    #[test]
    fn sizes_read_like_df_and_du_print_them() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("20g").unwrap(), 20 << 30);
        for bad in ["", "G", "1.5G", "-1", "10X", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_partition_open_to_others_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let volume = Volume::at(tmp.path().to_path_buf());
        let dir = volume.partition("go").unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let e = volume.partition("go").unwrap_err();
        assert!(e.to_string().contains("go: not a private directory"), "{e}");
    }
}
