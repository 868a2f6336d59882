//! `hellasd update`: the A/B updater's status, check, apply and boot-time run.

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::config::Config;

#[derive(Subcommand)]
pub enum UpdateCommand {
    /// What this box runs, what the channel offers, and what the updater is doing.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Read the channel now (as root).
    Check,
    /// Install the offered release (or VERSION) into the other slot and reboot into it (as root).
    Apply {
        version: Option<String>,
        /// Install, but leave the reboot to later.
        #[arg(long)]
        no_reboot: bool,
    },
    /// Settle the last boot and carry out the owner's request (hellas-update.service, as root).
    Run,
}

pub fn run(config: &Config, command: UpdateCommand) -> Result<()> {
    use crate::update::{self, UpdateFiles};
    let files = UpdateFiles::new(&config.state_dir);
    match command {
        UpdateCommand::Status { json } => {
            let status = files.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!("booted: {}\nchannel: {}\nphase: {:?}", status.booted, update::channel(config)?, status.phase);
                println!("offered: {}", status.offered.as_deref().unwrap_or("nothing newer"));
                for rejected in &status.rejected {
                    println!("rejected: {}", rejected.reason);
                }
                if let Some(result) = &status.last_result {
                    println!("last result: {result}");
                }
            }
            Ok(())
        }
        UpdateCommand::Check => update::check(config, &files, &mut files.settled_status()?),
        UpdateCommand::Apply { version, no_reboot } => {
            let mut status = files.settled_status()?;
            update::check(config, &files, &mut status)?;
            let version = version.or(status.offered.clone()).context("nothing to apply: the channel offers nothing newer")?;
            update::apply(config, &files, &mut status, &version, !no_reboot)
        }
        UpdateCommand::Run => update::run(config, true),
    }
}
