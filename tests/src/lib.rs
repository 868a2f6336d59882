//! System tests for the Hellas image (in `tests/`), and the harness they boot it with.
//!
//! `vm` is a library so that `cargo xtask qemu` boots an image for a person exactly the way
//! the tests boot it in CI: one way to boot an image, not two.

pub mod vm;
pub mod channel;
