mod daemon;
pub mod hash;
pub mod mount;
pub mod nix;
pub mod path;
mod setup;
pub mod status;
mod view;
pub mod watch;
