//! `hellasd keys`: API keys from the command line.

use anyhow::Result;
use clap::Subcommand;

use crate::config::Config;
use crate::keys::KeyStore;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a key; it is printed once.
    Create { name: String },
    List,
    /// Revoke a key by id or name.
    Revoke { key: String },
}

pub fn run(config: &Config, command: KeysCommand) -> Result<()> {
    let store = KeyStore::open(config.state_dir.join("keys.json"));
    match command {
        KeysCommand::Create { name } => {
            let (record, secret) = store.create(&name)?;
            eprintln!("created key {} ({}); it is shown only once:", record.id, record.name);
            println!("{secret}");
        }
        KeysCommand::List => {
            for key in store.list()? {
                println!("{}  {:<24} created {}", key.id, key.name, humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(key.created)));
            }
        }
        KeysCommand::Revoke { key } => {
            let record = store.revoke(&key)?;
            println!("revoked {} ({})", record.id, record.name);
        }
    }
    Ok(())
}
