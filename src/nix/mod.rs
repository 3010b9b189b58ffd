//! What srcstore needs to know of Nix beyond hashing: derivations and `nix.conf`.

pub mod conf;
pub mod drv;
pub mod version;
