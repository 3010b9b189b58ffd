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
    fn a_partition_open_to_others_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let volume = Volume::at(tmp.path().to_path_buf());
        let dir = volume.partition("go").unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let e = volume.partition("go").unwrap_err();
        assert!(e.to_string().contains("go: not a private directory"), "{e}");
    }
}
