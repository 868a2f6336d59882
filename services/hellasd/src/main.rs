use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use hellasd::config::Config;
use hellasd::keys::KeyStore;
use hellasd::library::ModelLibrary;
use hellasd::plan_command::{self, PlanArgs};

/// The Hellas daemon: serves local models through an OpenAI- and Ollama-compatible API.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Extra configuration file, applied after the system ones (repeatable).
    #[arg(long, global = true)]
    config: Vec<PathBuf>,
    /// Ignore /usr/lib/hellas/hellasd.toml and /etc/hellas/hellasd.toml.d.
    #[arg(long, global = true)]
    no_system_config: bool,
    /// Override `state_dir`.
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API and supervise the engines.
    Serve {
        /// Override `api.listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Override `engine.llama_server`.
        #[arg(long)]
        llama_server: Option<PathBuf>,
        /// Override `memory.budget_bytes`.
        #[arg(long)]
        budget_bytes: Option<u64>,
    },
    /// Manage the model library.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Show whether a model fits in memory, and what it needs.
    Plan(PlanArgs),
    /// Print this boot's claim code, which the web setup asks for.
    ClaimCode {
        /// Make one when the box has no owner and none was made this boot (the boot unit does).
        #[arg(long)]
        ensure: bool,
    },
    /// Set the owner's password, read as one line from standard input; on a box with no owner
    /// this claims it without the web setup (for scripted installs).
    SetPassword,
    /// Apply the owner's settings to the system (as root; hellas-settings.service runs it at boot
    /// and whenever the settings change): the box name becomes the host name avahi announces,
    /// and sshd runs with the owner's keys while there are any.
    ApplySettings,
    /// Apply the first-boot settings seeded on the stick's ESP (`/hellas/seed.toml`) once, then
    /// remove the file (as root; hellas-seed.service runs it at boot).
    ApplySeed {
        /// Where the ESP is mounted.
        #[arg(long, default_value = "/boot")]
        esp: PathBuf,
    },
    /// AMD Strix Halo memory tuning: GTT/TTM limits for the next boot and BIOS advice.
    Tune(hellasd::tune::TuneArgs),
    /// A/B updates from the signed release channel.
    #[command(subcommand)]
    Update(UpdateCommand),
    /// The boot's health check: hellasd answers and the engine starts (hellas-health.service).
    Health(hellasd::health::HealthArgs),
    /// Copy the running system from the stick to an internal disk (as root).
    Install {
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
    },
}

#[derive(Subcommand)]
enum UpdateCommand {
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

#[derive(Subcommand)]
enum ModelsCommand {
    /// Copy a GGUF file into the library.
    Add {
        file: PathBuf,
        #[arg(long)]
        name: String,
    },
    List,
    Rm { name: String },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a key; it is printed once.
    Create { name: String },
    List,
    /// Revoke a key by id or name.
    Revoke { key: String },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HELLASD_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Command::Plan(args) = &cli.command {
        return plan_command::run(args);
    }
    let files = Config::sources(std::path::Path::new("/"), !cli.no_system_config, &cli.config)?;
    let mut config = Config::load(&files)?;
    if let Some(dir) = cli.state_dir {
        config.state_dir = dir;
    }
    match cli.command {
        Command::Serve { listen, llama_server, budget_bytes } => {
            config.api.listen = listen.unwrap_or(config.api.listen);
            config.engine.llama_server = llama_server.unwrap_or(config.engine.llama_server);
            config.memory.budget_bytes = budget_bytes.or(config.memory.budget_bytes);
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(hellasd::serve::run(config))
        }
        Command::Models(command) => models(&config, command),
        Command::Keys(command) => keys(&config, command),
        Command::ClaimCode { ensure } => claim_code(&config, ensure),
        Command::SetPassword => set_password(&config),
        Command::ApplySettings => apply_settings(&config),
        Command::ApplySeed { esp } => hellasd::seed::apply(&config, &esp).map(drop),
        Command::Tune(args) => hellasd::tune::run(&args, &config),
        Command::Update(command) => update(&config, command),
        Command::Health(args) => hellasd::health::run(&args, &config),
        Command::Install { disk, keep_data, yes, list } => install(&config, disk, keep_data, yes, list),
        Command::Plan(_) => unreachable!("handled above"),
    }
}

fn claim_code(config: &Config, ensure: bool) -> Result<()> {
    let owner = hellasd::web::owner_store(&config.state_dir).load()?;
    if owner.owner.is_some() {
        println!("this box is claimed already: log in at http://{}.local/", owner.settings.box_name);
        return Ok(());
    }
    let claim = hellasd::web::ClaimFiles::new(&config.web.runtime_dir);
    let code = if ensure { Some(claim.ensure(owner.claim_code.as_deref())?) } else { claim.current()? };
    match code {
        Some(code) => println!("Hellas claim code: {code} (open http://{}.local/ to set up this box)", owner.settings.box_name),
        None => anyhow::bail!("no claim code yet this boot: is hellasd running? (`systemctl status hellasd`)"),
    }
    Ok(())
}

fn update(config: &Config, command: UpdateCommand) -> Result<()> {
    use hellasd::update::{self, UpdateFiles};
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

fn install(config: &Config, disk: Option<String>, keep_data: bool, yes: bool, list: bool) -> Result<()> {
    use hellasd::install;
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

fn apply_settings(config: &Config) -> Result<()> {
    let settings = hellasd::web::owner_store(&config.state_dir).load()?.settings;
    hellasd::system_settings::apply(&settings)
}

fn set_password(config: &Config) -> Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']);
    let store = hellasd::web::owner_store(&config.state_dir);
    if store.is_claimed()? {
        store.set_password(password)?;
        println!("the owner's password was changed");
    } else {
        store.claim(password)?;
        let name = store.load()?.settings.box_name;
        hellasd::web::ClaimFiles::new(&config.web.runtime_dir).claimed(&name)?;
        println!("the box is claimed; the owner logs in at http://{name}.local/");
    }
    Ok(())
}

fn models(config: &Config, command: ModelsCommand) -> Result<()> {
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

fn keys(config: &Config, command: KeysCommand) -> Result<()> {
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
