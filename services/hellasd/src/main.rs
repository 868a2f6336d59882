//! `hellasd`, the Hellas on-device daemon and its administration verbs: one match over the verbs,
//! each carried out by its own module (`hellasd::cli`, or the service that owns it).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use hellasd::cli;
use hellasd::config::Config;

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
    Serve(cli::serve::ServeArgs),
    /// Manage the model library.
    #[command(subcommand)]
    Models(cli::models::ModelsCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(cli::keys::KeysCommand),
    /// Show whether a model fits in memory, and what it needs.
    Plan(cli::plan::PlanArgs),
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
    /// Keep a box with Wi-Fi reachable (as root; hellas-network.service runs it): open the setup
    /// hotspot while there is no network, join the Wi-Fi networks the owner gives.
    NetworkWatch,
    /// AMD Strix Halo memory tuning: GTT/TTM limits for the next boot and BIOS advice.
    Tune(hellasd::tune::TuneArgs),
    /// A/B updates from the signed release channel.
    #[command(subcommand)]
    Update(cli::update::UpdateCommand),
    /// The boot's health check: hellasd answers and the engine starts (hellas-health.service).
    Health(hellasd::update::health::HealthArgs),
    /// Copy the running system from the stick to an internal disk (as root).
    Install(cli::install::InstallArgs),
    /// Measure a model's prefill and decode speed on this box, against its memory bandwidth.
    Bench(cli::bench::BenchArgs),
    /// The running models, and where each really sits (GPU or CPU, bytes on the GPU).
    Ps(cli::ps::PsArgs),
    /// Stop taking new requests and finish what runs (for an update or behind a gateway);
    /// `--off` to take requests again.
    Drain(cli::drain::DrainArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HELLASD_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(hellasd::recent_log::Tee)
        .init();
    let cli = Cli::parse();
    // Planning reads only the model file: it needs no configuration.
    if let Command::Plan(args) = &cli.command {
        return cli::plan::run(args);
    }
    let files = Config::sources(std::path::Path::new("/"), !cli.no_system_config, &cli.config)?;
    let mut config = Config::load(&files)?;
    if let Some(dir) = cli.state_dir {
        config.state_dir = dir;
    }
    match cli.command {
        Command::Serve(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(cli::serve::run(args.apply(config)))
        }
        Command::Models(command) => cli::models::run(&config, command),
        Command::Keys(command) => cli::keys::run(&config, command),
        Command::ClaimCode { ensure } => cli::claim_code::run(&config, ensure),
        Command::SetPassword => cli::set_password::run(&config),
        Command::ApplySettings => cli::apply_settings::run(&config),
        Command::ApplySeed { esp } => hellasd::seed::apply(&config, &esp).map(drop),
        Command::NetworkWatch => hellasd::network::watch::run(&config),
        Command::Tune(args) => hellasd::tune::run(&args, &config),
        Command::Update(command) => cli::update::run(&config, command),
        Command::Health(args) => hellasd::update::health::run(&args, &config),
        Command::Install(args) => cli::install::run(&config, args),
        Command::Bench(args) => cli::bench::run(&config, &args),
        Command::Ps(args) => cli::ps::run(&config, &args),
        Command::Drain(args) => cli::drain::run(&config, &args),
        Command::Plan(_) => unreachable!("handled above"),
    }
}
