//! The daemon layer: what a running `srcstore mount` is besides its engine and its FUSE view.
//!
//! - `protocol`: the control socket's messages; `client` and `server`: its two sides, each
//!   checking whom it talks to (`SO_PEERCRED`);
//! - `handler`: the answers, from the engine's live view (the one place requests meet `Live`);
//! - `paths`: the runtime directory policy (default places, and that one is its user's own);
//! - `start`: what a daemon claims and repairs on its way up (the project's lock, a dead
//!   daemon's mount); `epoch`: the counter that keeps node ids of one run from coming back in
//!   the next;
//! - `warm`: walking a snapshot before the build that asked for it comes.
//!
//! Nothing here knows FUSE: the binary assembles a daemon from this layer, the engine's `Live`
//! and the FUSE crate.

mod client;
mod epoch;
mod handler;
pub mod paths;
mod protocol;
mod server;
mod start;
mod warm;

pub use client::Client;
pub use handler::{publish, release, LiveHandler, Starting, StoreMode};
pub use protocol::{parse, Envelope, Request, Response, PROTOCOL_VERSION};
pub use server::{serve, Handler};
pub use start::{prepare_mountpoint, DaemonLock, StartError};
pub use warm::{walk, Warmer};
