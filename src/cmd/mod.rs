mod daemon;
pub mod hash;
pub mod mount;
pub mod path;
pub mod status;
mod view;
