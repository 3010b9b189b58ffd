//! The persisted index: what every file of a project hashed to, under which stamp.
//!
//! One file per (project directory, filter) under `${XDG_CACHE_HOME:-~/.cache}/srcstore/`:
//! `SRCSTIDX`, a format version (u32 LE), the body (postcard), then the BLAKE3 of everything
//! before it. Written to a temporary file and renamed, so a reader sees the old index or the new
//! one, never half of one. An index that fails any check is never trusted: the caller is told
//! why, and it is rebuilt.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::tree::{Dir, Entry, File, Hash, Name, Node, Stamp, Symlink};
use crate::Filter;

const MAGIC: &[u8; 8] = b"SRCSTIDX";
/// 2: directories carry their hash; records follow their count instead of forming one value.
const VERSION: u32 = 2;

/// Why an index was not used.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index {0} is not a srcstore index")]
    Foreign(PathBuf),
    #[error("index {path} has format version {found}, this srcstore reads {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("index {0} is corrupt or truncated")]
    Corrupt(PathBuf),
    #[error("index {path} belongs to {other}")]
    OtherProject { path: PathBuf, other: PathBuf },
    #[error("index {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
}

// The body, in postcard: the project path (bytes), the filter, the number of records (u64), then
// that many records: the tree in depth-first order, parents before children, entries in order.

/// A node; `depth` 0 is the root directory. Names and targets borrow from the index's bytes.
#[derive(Serialize, Deserialize)]
struct Record<'a> {
    depth: u32,
    name: &'a [u8],
    #[serde(borrow)]
    kind: Kind<'a>,
}

#[derive(Serialize, Deserialize)]
enum Kind<'a> {
    /// With the directory's hash, so that loading hashes nothing.
    Dir(Hash),
    File {
        content: Hash,
        executable: bool,
        stamp: Stamp,
        racy: bool,
    },
    Symlink(&'a [u8]),
}

/// Where the index of `project` (an absolute path) scanned with `filter` lives.
pub fn location(cache_dir: &Path, project: &Path, filter: Filter) -> PathBuf {
    let key = blake3::hash(project.as_os_str().as_bytes()).to_hex();
    let suffix = match filter {
        Filter::Ignore => "idx",
        Filter::All => "all.idx",
    };
    cache_dir.join(format!("{}.{suffix}", &key[..32]))
}

/// Reads an index; `Ok(None)` when there is none yet.
pub fn load(path: &Path, project: &Path, filter: Filter) -> Result<Option<Node>, IndexError> {
    let io = |cause| IndexError::Io {
        path: path.into(),
        cause,
    };
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    // Git's racy rule: a file changed no earlier than the index was written may have changed
    // again within the same timestamp tick, so its stamp proves nothing.
    let written = fs::metadata(path)
        .map(|m| Stamp::of(&m).mtime_ns)
        .map_err(io)?;
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(IndexError::Foreign(path.into()));
    }
    if bytes.len() < 12 + 32 {
        return Err(IndexError::Corrupt(path.into()));
    }
    let found = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    if found != VERSION {
        return Err(IndexError::Version {
            path: path.into(),
            found,
        });
    }
    let (payload, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(payload).as_bytes() != sum {
        return Err(IndexError::Corrupt(path.into()));
    }
    let corrupt = || IndexError::Corrupt(path.into());
    let mut de = postcard::Deserializer::from_bytes(&payload[12..]);
    let body_project = <&[u8]>::deserialize(&mut de).map_err(|_| corrupt())?;
    let body_filter = Filter::deserialize(&mut de).map_err(|_| corrupt())?;
    if body_project != project.as_os_str().as_bytes() || body_filter != filter {
        return Err(IndexError::OtherProject {
            path: path.into(),
            other: PathBuf::from(std::ffi::OsStr::from_bytes(body_project)),
        });
    }
    let tree = rebuild(&mut de, written).ok_or_else(corrupt)?;
    match de.finalize() {
        Ok([]) => Ok(Some(tree)),
        _ => Err(corrupt()),
    }
}

/// Writes an index atomically.
pub fn save(path: &Path, project: &Path, filter: Filter, tree: &Node) -> Result<(), IndexError> {
    let io = |cause| IndexError::Io {
        path: path.into(),
        cause,
    };
    let mut count = 0u64;
    tree.visit(&mut |_, _| count += 1);
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes = append(bytes, &project.as_os_str().as_bytes());
    bytes = append(bytes, &filter);
    bytes = append(bytes, &count);
    tree.visit(&mut |rel, node| {
        let depth = if rel.is_empty() {
            0
        } else {
            rel.iter().filter(|&&b| b == b'/').count() as u32 + 1
        };
        let name = rel.rsplit(|&b| b == b'/').next().unwrap_or_default();
        let kind = match node {
            Node::Dir(d) => Kind::Dir(d.hash),
            Node::File(f) => Kind::File {
                content: f.content,
                executable: f.executable(),
                stamp: f.stamp,
                racy: f.racy(),
            },
            Node::Symlink(s) => Kind::Symlink(&s.target),
        };
        let record = Record { depth, name, kind };
        bytes = append(std::mem::take(&mut bytes), &record);
    });
    let sum = blake3::hash(&bytes);
    bytes.extend_from_slice(sum.as_bytes());

    let dir = path.parent().expect("index path has a parent");
    fs::create_dir_all(dir).map_err(io)?;
    crate::atomic::write_durably(path, &bytes).map_err(io)
}

/// `bytes` with `value`'s postcard encoding appended.
fn append(bytes: Vec<u8>, value: &impl Serialize) -> Vec<u8> {
    postcard::to_extend(value, bytes).expect("serialising to memory cannot fail")
}

/// Rebuilds the tree from the count and the depth-first records that follow it; `None` if they
/// do not describe one (entries out of order included: lookups rely on the order).
fn rebuild<'de>(
    de: &mut postcard::Deserializer<'de, postcard::de_flavors::Slice<'de>>,
    written_ns: i64,
) -> Option<Node> {
    let count = u64::deserialize(&mut *de).ok()?;
    // Directories being filled: (name, hash, entries so far).
    let mut stack: Vec<(Name, Hash, Vec<Entry>)> = Vec::new();
    fn close(stack: &mut Vec<(Name, Hash, Vec<Entry>)>) -> Option<()> {
        let (name, hash, entries) = stack.pop()?;
        let node = Node::Dir(Arc::new(Dir::with_hash(hash, entries.into_boxed_slice())));
        stack.last_mut()?.2.push(Entry { name, node });
        Some(())
    }
    for i in 0..count {
        let r = Record::deserialize(&mut *de).ok()?;
        if i == 0 {
            match r.kind {
                Kind::Dir(hash) if r.depth == 0 => stack.push((Name::default(), hash, Vec::new())),
                _ => return None,
            }
            continue;
        }
        if r.depth == 0 {
            return None;
        }
        while stack.len() as u32 > r.depth {
            close(&mut stack)?;
        }
        let siblings = &mut stack.last_mut()?.2;
        let in_order = siblings.last().is_none_or(|last| *last.name < *r.name);
        if stack.len() as u32 != r.depth || r.name.is_empty() || !in_order {
            return None;
        }
        let name = Name::new(r.name);
        let node = match r.kind {
            Kind::Dir(hash) => {
                stack.push((name, hash, Vec::new()));
                continue;
            }
            Kind::File {
                content,
                executable,
                stamp,
                racy,
            } => Node::File(Arc::new(File::new(
                content,
                executable,
                stamp,
                racy || stamp.mtime_ns >= written_ns,
            ))),
            Kind::Symlink(target) => Node::Symlink(Arc::new(Symlink::new(target.into()))),
        };
        stack.last_mut()?.2.push(Entry { name, node });
    }
    while stack.len() > 1 {
        close(&mut stack)?;
    }
    let (_, hash, entries) = stack.pop()?;
    Some(Node::Dir(Arc::new(Dir::with_hash(
        hash,
        entries.into_boxed_slice(),
    ))))
}
