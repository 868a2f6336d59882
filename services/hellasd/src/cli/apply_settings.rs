//! `hellasd apply-settings`: the owner's settings applied to the system, as root.

use anyhow::{Context, Result};

use crate::config::Config;
use crate::owner::{apply_request_path, owner_store};

pub fn run(config: &Config) -> Result<()> {
    // Taken before the settings are read: a change made from here on asks again.
    let request = apply_request_path(&config.state_dir);
    match std::fs::remove_file(&request) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(|| format!("removing {}", request.display())),
        _ => {}
    }
    let settings = owner_store(&config.state_dir).load()?.settings;
    crate::system_settings::apply(&settings)
}
