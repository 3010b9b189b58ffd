//! The working tree, and the only code that opens project files.
//!
//! - `read`: the project's root descriptor, and opening, stat-ing and reading links of entries
//!   beneath it (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: nothing through a link, nothing
//!   outside the tree); hashing a file with stamps before and after.
//! - `verify`: the one proof of bytes, by content, for everything that leaves srcstore (a FUSE
//!   read, a NAR's file contents).
//!
//! - `cursor`: a depth-first walk of a snapshot over the project's directories, handing on
//!   each file's bytes through that proof.
//!
//! Everything else reaches project files through these.

pub(crate) mod cursor;
pub(crate) mod read;
pub(crate) mod verify;
