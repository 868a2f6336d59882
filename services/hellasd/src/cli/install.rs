//! `hellasd install`: copy the running system from the stick to an internal disk.

use anyhow::{Context, Result};

use crate::config::Config;
use crate::update::install;

#[derive(clap::Args)]
pub struct InstallArgs {
    /// The whole internal disk, e.g. /dev/nvme0n1.
    #[arg(long, required_unless_present = "list")]
    disk: Option<String>,
    /// Keep the owner's settings, API keys and models (otherwise the disk starts unclaimed).
    #[arg(long)]
    keep_data: bool,
    /// Do not ask for the disk's name to be typed back.
    #[arg(long)]
    yes: bool,
    /// List the disks it could install to.
    #[arg(long)]
    list: bool,
}

pub fn run(config: &Config, args: InstallArgs) -> Result<()> {
    let InstallArgs { disk, keep_data, yes, list } = args;
    if list {
        for disk in install::candidates()? {
            println!("{}  {:.1} GB  {}{}", disk.device, disk.bytes as f64 / 1e9, disk.model, if disk.removable { "  (removable)" } else { "" });
        }
        return Ok(());
    }
    let disk = disk.context("name the disk with --disk")?;
    if !yes {
        println!("Everything on {disk} will be lost. Type {disk} to go on:");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).context("reading the confirmation")?;
        anyhow::ensure!(answer.trim() == disk, "not confirmed (typed {:?}): nothing was written; pass --yes in scripts", answer.trim());
    }
    install::install(&disk, keep_data, &config.web.runtime_dir)?;
    println!("installed to {disk}: remove the stick and reboot");
    Ok(())
}
