//! `hellasd apply-settings`: the owner's settings applied to the system, as root.

use anyhow::Result;

use crate::config::Config;
use crate::owner::owner_store;

pub fn run(config: &Config) -> Result<()> {
    let settings = owner_store(&config.state_dir).load()?.settings;
    crate::system_settings::apply(&settings)
}
