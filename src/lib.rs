//! srcstore's engine: turns a working tree into an immutable, content-named [`Snapshot`].
//!
//! A snapshot is a BLAKE3 Merkle tree over exactly what `nix-store --add` would store of the
//! tree (names, file types, executable bits, bytes, symlink targets) after the project's ignore
//! rules. Its root hash names it; nodes are reference-counted and shared between snapshots, so
//! a new snapshot after a small edit costs memory and time in proportion to the edit.
//!
//! The engine knows nothing of FUSE or of the Nix daemon: it scans, hashes, keeps an index of
//! what it has hashed, and streams a snapshot as a NAR so callers can compute what Nix would.
//!
//! ```no_run
//! let snap = srcstore::Scanner::new("/path/to/project", srcstore::Filter::Ignore).scan()?;
//! println!("{}", snap.basename());
//! # Ok::<(), srcstore::Error>(())
//! ```
// `unsafe` lives in one module, `sys` (system calls no safe wrapper offers).
#![deny(unsafe_code)]

mod accounts;
mod atomic;
pub mod beneath;
pub mod cache;
pub mod daemon;
mod error;
pub mod hook;
pub mod index;
pub mod live;
pub mod name;
pub mod nar;
pub mod nix;
pub mod nixhash;
mod scan;
mod snapshot;
pub mod store;
pub mod sys;
pub mod tree;
mod worktree;

pub use error::Error;
pub use scan::Changes;
pub use scan::{Budget, DirHook, Filter, ScanStats, Scanner};
pub use snapshot::Snapshot;
