//! The verbs of `hellasd`, one module each; `main.rs` parses the command line and calls them.
//! The boot's health check, tuning and seed verbs are their services' own `run`
//! ([`crate::update::health`], [`crate::tune`], [`crate::seed`]).

pub mod apply_settings;
pub mod bench;
pub mod claim_code;
pub mod drain;
mod daemon;
pub mod install;
pub mod keys;
pub mod models;
pub mod plan;
pub mod ps;
pub mod serve;
pub mod set_password;
pub mod update;
