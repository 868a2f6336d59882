//! hellasd: the Hellas on-device daemon, as a library so that its tests reach its parts.
//!
//! The modules stand in layers, and each imports only from layers below its own (the
//! `layers_point_down` test reads every `crate::` path and holds this):
//!
//! * verbs: [`cli`], one module per subcommand, called from `main.rs`;
//! * surfaces: [`api`] (the OpenAI- and Ollama-compatible routes) and [`web`] (setup, dashboard);
//! * the app: [`app`], the shared state both surfaces serve from, and [`status_screen`], the
//!   box's own display;
//! * services, each owning its state files: [`engine`], [`cluster`], [`catalog`], [`update`],
//!   [`tune`], [`network`], [`seed`], [`system_settings`];
//! * the domain: [`owner`], [`keys`], [`library`], [`admission`], [`metrics`], [`config`],
//!   [`memory_budget`], [`state_file`], [`lines`].
//!
//! Below them all: the crates `hellas-model` (GGUF reading, memory and pool planning) and
//! `hellas-contract` (what the image builder and the box agree on). Where a lower layer must
//! call up (the engine asking the pool for room), it takes a trait or a callback from above.

pub mod cli;

pub mod api;
pub mod web;

pub mod app;

pub mod backup;
pub mod catalog;
pub mod cluster;
pub mod hub;
pub mod engine;
pub mod network;
pub mod seed;
pub mod status_screen;
pub mod system_settings;
pub mod tune;
pub mod update;

pub mod admission;
pub mod config;
pub mod keys;
pub mod library;
pub mod lines;
pub mod memory_budget;
pub mod metrics;
pub mod owner;
pub mod recent_log;
pub mod web_certificate;
pub mod diagnostics;
pub mod sandbox;
pub mod state_file;

#[cfg(test)]
mod layers;
