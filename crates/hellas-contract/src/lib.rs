//! hellas-contract: what the image builder (`xtask`) and the box (`hellasd`) must agree on,
//! written once. A rule here changes on both sides at once, or not at all.
//!
//! * [`box_name`]: the host-name rule for a box's name.
//! * [`claim_code`]: the claim code's alphabet and shape.
//! * [`ssh_keys`]: which OpenSSH public keys the box accepts.
//! * [`network`]: Wi-Fi networks and static wired addresses, as the seed and the settings page give them.
//! * [`seed`]: `/hellas/seed.toml` on the stick's ESP, written by `cargo xtask flash`, applied once.
//! * [`release`]: release and channel file names, partition labels, and sysupdate's patterns.
//! * [`manifest`]: the image manifest the builder writes beside every image.
//! * [`disk`]: which disks may be written, for `cargo xtask flash` and `hellasd install` alike.

pub mod box_name;
pub mod claim_code;
pub mod disk;
pub mod manifest;
pub mod network;
pub mod release;
pub mod seed;
pub mod ssh_keys;
