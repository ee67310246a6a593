//! One module per command, each printing what it did; the work is the library's.

pub mod bench;
pub mod check;
pub mod down;
pub mod eni;
pub mod import;
pub mod manpages;
pub mod map;
pub mod stats;
pub mod status;
pub mod steer;
