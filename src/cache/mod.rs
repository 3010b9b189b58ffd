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
        let mut names = Vec::new();
        match fs::read_dir(&self.root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
            entries => {
                for entry in entries? {
                    let entry = entry?;
                    if !entry.file_type()?.is_dir() {
                        continue;
                    }
                    if let Some(name) = entry.file_name().to_str() {
                        if check_partition_name(name).is_ok() {
                            names.push(name.to_owned());
                        }
                    }
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

/// What a partition holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionStats {
    pub name: String,
    /// Files (cache entries) in it.
    pub entries: u64,
    /// Their size, in bytes allocated on disk.
    pub bytes: u64,
    /// What `srcstore gocacheprog` counted in it, over all its runs.
    pub gocacheprog: gocacheprog::Counts,
}

/// How often a daemon collects its volume on its own (see [`Volume::collect_if_due`]).
pub const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// What [`Volume::gc`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Collected {
    pub removed: u64,
    pub freed_bytes: u64,
    pub kept_bytes: u64,
}

impl Volume {
    /// Entries and bytes of every partition.
    pub fn stats(&self) -> io::Result<Vec<PartitionStats>> {
        self.partitions()?
            .into_iter()
            .map(|name| {
                let (mut entries, mut bytes) = (0, 0);
                for f in files(&self.root.join(&name)) {
                    entries += 1;
                    bytes += f.bytes;
                }
                let counted = self.root.join(&name).join(gocacheprog::DIR_IN_PARTITION);
                Ok(PartitionStats {
                    gocacheprog: gocacheprog::read_counts(&counted),
                    name,
                    entries,
                    bytes,
                })
            })
            .collect()
    }

    /// Empties `partition` (every partition with `None`). A build using it meanwhile sees
    /// cache misses, never a torn entry: each file is removed whole.
    pub fn clear(&self, partition: Option<&str>) -> io::Result<Collected> {
        let names = match partition {
            Some(p) => {
                check_partition_name(p)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                vec![p.to_owned()]
            }
            None => self.partitions()?,
        };
        let mut done = Collected::default();
        for name in names {
            let dir = self.root.join(&name);
            for f in files(&dir) {
                remove(&f, &mut done);
            }
            remove_empty_dirs(&dir);
        }
        Ok(done)
    }

    /// Whether a collection is due: none in the last `every` (by the time of the volume's
    /// `.collected` stamp, which this then renews). A daemon asks on each build's request and
    /// collects to [`default_max_size`] in the background, so a volume no tool trims (Zig's)
    /// never fills the disk.
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

    /// Removes the least recently used files of the whole volume until it holds at most
    /// `max_bytes`.
    pub fn gc(&self, max_bytes: u64) -> io::Result<Collected> {
        let mut all: Vec<File> = self
            .partitions()?
            .iter()
            .flat_map(|p| files(&self.root.join(p)))
            .collect();
        let mut total: u64 = all.iter().map(|f| f.bytes).sum();
        // Oldest use first; a file's use is its last read or write, whichever is later.
        all.sort_by_key(|f| f.used);
        let mut done = Collected::default();
        for f in &all {
            if total <= max_bytes {
                break;
            }
            total -= f.bytes;
            remove(f, &mut done);
        }
        done.kept_bytes = total;
        for p in self.partitions()? {
            remove_empty_dirs(&self.root.join(p));
        }
        Ok(done)
    }
}

/// A file of a partition, as [`Volume::gc`] weighs it.
struct File {
    path: PathBuf,
    bytes: u64,
    used: i64,
}

/// Every regular file below `dir`, never following a symlink.
fn files(dir: &Path) -> impl Iterator<Item = File> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some(File {
                bytes: m.blocks() * 512,
                used: m.atime().max(m.mtime()),
                path: e.into_path(),
            })
        })
}

fn remove(f: &File, done: &mut Collected) {
    match fs::remove_file(&f.path) {
        Ok(()) => {
            done.removed += 1;
            done.freed_bytes += f.bytes;
        }
        Err(e) => tracing::debug!("{}: {e}", f.path.display()),
    }
}

/// Removes the directories below `dir` that are empty (deepest first), keeping `dir`.
fn remove_empty_dirs(dir: &Path) {
    for e in walkdir::WalkDir::new(dir)
        .min_depth(1)
        .contents_first(true)
        .into_iter()
        .flatten()
    {
        if e.file_type().is_dir() {
            let _ = fs::remove_dir(e.path());
        }
    }
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

/// The default limit for [`Volume::gc`]: a tenth of the filesystem the volume is on.
pub fn default_max_size(volume: &Path) -> io::Result<u64> {
    let at = volume
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let st = rustix::fs::statvfs(at)?;
    Ok(st.f_blocks * st.f_frsize / 10)
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
        assert_eq!(stats.iter().map(|s| s.entries).collect::<Vec<_>>(), [2, 1]);
        let each = stats[1].bytes;
        let done = volume.gc(2 * each).unwrap();
        assert_eq!((done.removed, done.kept_bytes), (1, 2 * each));
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
