//! The persisted index: what every file of a project hashed to, under which stamp.
//!
//! One file per (project directory, filter) under `${XDG_CACHE_HOME:-~/.cache}/srcstore/`:
//! `SRCSTIDX`, a format version (u32 LE), the body (postcard), then the BLAKE3 of everything
//! before it. Written to a temporary file and renamed, so a reader sees the old index or the new
//! one, never half of one. An index that fails any check is never trusted: the caller is told
//! why, and it is rebuilt.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::tree::{Dir, Entry, File, Hash, Node, Stamp, Symlink};
use crate::Filter;

const MAGIC: &[u8; 8] = b"SRCSTIDX";
const VERSION: u32 = 1;

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
    #[error("index {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct Body {
    project: Vec<u8>,
    filter: Filter,
    records: Vec<Record>,
}

/// A node in depth-first order; `depth` 0 is the root directory.
#[derive(Serialize, Deserialize)]
struct Record {
    depth: u32,
    name: Vec<u8>,
    kind: Kind,
}

#[derive(Serialize, Deserialize)]
enum Kind {
    Dir,
    File {
        content: Hash,
        executable: bool,
        stamp: Stamp,
        racy: bool,
    },
    Symlink(Vec<u8>),
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

/// `${XDG_CACHE_HOME:-~/.cache}/srcstore`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("srcstore"))
}

/// Reads an index; `Ok(None)` when there is none yet.
pub fn load(path: &Path, project: &Path, filter: Filter) -> Result<Option<Node>, IndexError> {
    let io = |source| IndexError::Io {
        path: path.into(),
        source,
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
    let body: Body =
        postcard::from_bytes(&payload[12..]).map_err(|_| IndexError::Corrupt(path.into()))?;
    if body.project != project.as_os_str().as_bytes() || body.filter != filter {
        return Err(IndexError::OtherProject {
            path: path.into(),
            other: PathBuf::from(std::ffi::OsStr::from_bytes(&body.project)),
        });
    }
    rebuild(body.records, written)
        .map(Some)
        .ok_or_else(|| IndexError::Corrupt(path.into()))
}

/// Writes an index atomically.
pub fn save(path: &Path, project: &Path, filter: Filter, tree: &Node) -> Result<(), IndexError> {
    let io = |source| IndexError::Io {
        path: path.into(),
        source,
    };
    let mut records = Vec::new();
    tree.visit(&mut |rel, node| {
        let depth = if rel.is_empty() {
            0
        } else {
            rel.iter().filter(|&&b| b == b'/').count() as u32 + 1
        };
        let name = rel
            .rsplit(|&b| b == b'/')
            .next()
            .unwrap_or_default()
            .to_vec();
        let kind = match node {
            Node::Dir(_) => Kind::Dir,
            Node::File(f) => Kind::File {
                content: f.content,
                executable: f.executable,
                stamp: f.stamp,
                racy: f.racy,
            },
            Node::Symlink(s) => Kind::Symlink(s.target.to_vec()),
        };
        records.push(Record { depth, name, kind });
    });
    let body = Body {
        project: project.as_os_str().as_bytes().to_vec(),
        filter,
        records,
    };
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes = postcard::to_extend(&body, bytes).expect("serialising to memory cannot fail");
    let sum = blake3::hash(&bytes);
    bytes.extend_from_slice(sum.as_bytes());

    let dir = path.parent().expect("index path has a parent");
    fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile_in(dir).map_err(io)?;
    tmp.1.write_all(&bytes).map_err(io)?;
    tmp.1.sync_data().map_err(io)?;
    fs::rename(&tmp.0, path).map_err(|e| {
        let _ = fs::remove_file(&tmp.0);
        io(e)
    })
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, fs::File)> {
    let path = dir.join(format!(".tmp-{}-{:x}", std::process::id(), rand_suffix()));
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Rebuilds the tree from depth-first records; `None` if they do not describe one.
fn rebuild(records: Vec<Record>, written_ns: i64) -> Option<Node> {
    // A stack of directories being filled: (depth, name, entries so far).
    let mut stack: Vec<(u32, Vec<u8>, Vec<Entry>)> = Vec::new();
    let mut records = records.into_iter();
    match records.next()? {
        Record {
            depth: 0,
            kind: Kind::Dir,
            ..
        } => stack.push((0, Vec::new(), Vec::new())),
        _ => return None,
    }
    fn close(stack: &mut Vec<(u32, Vec<u8>, Vec<Entry>)>) -> Option<()> {
        let (_, name, entries) = stack.pop()?;
        let node = Node::Dir(Arc::new(Dir::new(entries)));
        stack.last_mut()?.2.push(Entry {
            name: name.into(),
            node,
        });
        Some(())
    }
    for r in records {
        if r.depth == 0 {
            return None;
        }
        while stack.len() as u32 > r.depth {
            close(&mut stack)?;
        }
        if stack.len() as u32 != r.depth || r.name.is_empty() {
            return None;
        }
        let node = match r.kind {
            Kind::Dir => {
                stack.push((r.depth, r.name, Vec::new()));
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
        stack.last_mut()?.2.push(Entry {
            name: r.name.into(),
            node,
        });
    }
    while stack.len() > 1 {
        close(&mut stack)?;
    }
    let (_, _, entries) = stack.pop()?;
    Some(Node::Dir(Arc::new(Dir::new(entries))))
}
