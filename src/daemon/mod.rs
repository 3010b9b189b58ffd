//! What a running daemon does besides serving: for now, warming the kernel for builds.

mod warm;

pub use warm::Warmer;
