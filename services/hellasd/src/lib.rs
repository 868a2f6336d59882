//! hellasd: the Hellas on-device daemon, as a library so tests and fuzz targets reach its parts.

pub mod admission;
pub mod api;
pub mod config;
pub mod engine;
pub mod keys;
pub mod library;
pub mod metrics;
pub mod serve;
pub mod state_file;
pub mod system_settings;
pub mod tune;
pub mod health;
pub mod install;
pub mod update;
pub mod cluster;
pub mod seed;
pub mod memory_budget;
pub mod plan_command;
pub mod web;
