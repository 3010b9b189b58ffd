//! What srcstore needs to know of Nix beyond hashing: derivations, the pre-build hook's view of
//! running daemons, and `nix.conf`.

pub mod conf;
pub mod drv;
pub mod hook;
