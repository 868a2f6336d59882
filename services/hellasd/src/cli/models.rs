//! `hellasd models`: the model library from the command line.

use anyhow::Result;
use clap::Subcommand;
use std::path::PathBuf;

use crate::config::Config;
use crate::library::ModelLibrary;

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Copy a GGUF file into the library.
    Add {
        file: PathBuf,
        #[arg(long)]
        name: String,
    },
    List,
    Rm { name: String },
}

pub fn run(config: &Config, command: ModelsCommand) -> Result<()> {
    let library = ModelLibrary::open(config.state_dir.join("models"));
    match command {
        ModelsCommand::Add { file, name } => {
            let entry = library.add_file(&file, &name)?;
            println!("added {} ({} bytes, sha256 {})", entry.name, entry.size, entry.sha256);
        }
        ModelsCommand::List => {
            for entry in library.list()? {
                println!("{:<32} {:>14} {}", entry.name, entry.size, &entry.sha256[..12]);
            }
        }
        ModelsCommand::Rm { name } => {
            library.remove(&name)?;
            println!("removed {name}");
        }
    }
    Ok(())
}
