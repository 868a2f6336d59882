//! `hellasd tune`: detect the memory split of an AMD Strix Halo box, set GTT/TTM for the next
//! boot, verify it after the reboot, and tell the owner what to change in the BIOS.
//!
//! `status` reports (text or `--json`) and changes nothing; `apply` (run at boot by
//! hellas-tune.service) also writes the boot entry with the parameters. Both read the machine
//! through `--root` (default `/`), so fixture trees stand in for sysfs and procfs in tests
//! (tests/fixtures/boxes holds the boxes owners published). The budget reported is the one the
//! planner uses (`memory_budget::detect`: the carve-out plus GTT as far as TTM keeps it resident
//! and MemTotal less the OS reserve allows); once tuned it is the decision's `planned_gpu_bytes`.

mod apply;
mod bandwidth;
mod decide;
mod probe;

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use crate::config::Config;
use crate::memory_budget;
use hellas_model::plan::format_bytes;
pub use bandwidth::memory_bandwidth;
pub use decide::{decide, Decision, Options, State};
pub use probe::Probe;

#[derive(clap::Args)]
pub struct TuneArgs {
    /// The machine's root: sysfs, procfs and dpkg's status are read below it.
    #[arg(long, global = true, default_value = "/")]
    root: PathBuf,
    /// Also turn the IOMMU off (amd_iommu=off; others measured 5–12% faster decoding).
    #[arg(long, global = true)]
    iommu_off: bool,
    #[command(subcommand)]
    command: TuneCommand,
}

#[derive(clap::Subcommand)]
enum TuneCommand {
    /// What this machine is, whether it is tuned, and the BIOS advice.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Write the parameters for the next boot when they are missing (idempotent).
    Apply {
        /// Where the ESP is mounted.
        #[arg(long, default_value = "/boot")]
        esp: PathBuf,
    },
}

pub fn run(args: &TuneArgs, config: &Config) -> Result<()> {
    let probe = Probe::read(&args.root);
    let options = Options { os_reserve: config.memory.os_reserve_bytes, iommu_off: args.iommu_off };
    let decision = decide(&probe, &options);
    match &args.command {
        TuneCommand::Status { json: true } => {
            let budget = memory_budget::detect(&args.root, options.os_reserve).map_err(|e| format!("{e:#}"));
            let report = json!({ "probe": probe, "decision": decision, "budget": budget.as_ref().ok(), "budget_error": budget.as_ref().err() });
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        TuneCommand::Status { json: false } => print!("{}", describe(&probe, &decision, &args.root, options.os_reserve)),
        TuneCommand::Apply { esp } => {
            print!("{}", describe(&probe, &decision, &args.root, options.os_reserve));
            if decision.state != State::NeedsReboot {
                println!("nothing to apply");
                return Ok(());
            }
            let (name, version) = crate::update::booted_release(&args.root)?;
            match apply::apply(esp, probe.cmdline.as_deref().unwrap_or_default(), &decision.parameters, &name, &version)? {
                apply::Applied::Written(path) => println!("wrote {}: reboot needed", path.display()),
                apply::Applied::Unchanged(path) => println!("{} is in place already: reboot needed", path.display()),
            }
        }
    }
    Ok(())
}

/// The report for people.
/// This box's tuning state for the dashboard and the diagnostics: a summary, the warnings and
/// the BIOS advice.
pub fn status(os_reserve: u64) -> serde_json::Value {
    let probe = Probe::read(std::path::Path::new("/"));
    let decision = decide(&probe, &Options { os_reserve, iommu_off: false });
    json!({ "state": decision.summary(), "warnings": decision.warnings, "advice": decision.bios_advice })
}

pub fn describe(probe: &Probe, decision: &Decision, root: &std::path::Path, os_reserve: u64) -> String {
    let mut out = String::new();
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
    out.push_str(&format!("machine: {} {} (board {}, BIOS {})\n", or(&probe.vendor), or(&probe.product), or(&probe.board), or(&probe.bios_version)));
    out.push_str(&format!("cpu: {}\nkernel: {}\n", or(&probe.cpu_model), or(&probe.kernel)));
    for gpu in &probe.gpus {
        let size = |b: Option<u64>| b.map_or("unknown".into(), format_bytes);
        out.push_str(&format!(
            "gpu {}: {} {}, carve-out (VRAM) {}, GTT {}\n",
            gpu.card,
            gpu.pci_id,
            gpu.gfx_target.as_deref().unwrap_or("unknown target"),
            size(gpu.vram_total),
            size(gpu.gtt_total)
        ));
    }
    if probe.gpus.is_empty() {
        out.push_str("gpu: no AMD GPU\n");
    }
    out.push_str(&format!("state: {}\n", decision.summary()));
    if let Some(planned) = decision.planned_gpu_bytes {
        out.push_str(&format!("GPU memory once tuned: {}\n", format_bytes(planned)));
    }
    match memory_budget::detect(root, os_reserve) {
        Ok(budget) => out.push_str(&format!("budget for models now: {} ({})\n", format_bytes(budget.usable), budget.describe())),
        Err(e) => out.push_str(&format!("budget for models now: unknown ({e:#})\n")),
    }
    for warning in &decision.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    for advice in &decision.bios_advice {
        out.push_str(&format!("BIOS: {advice}\n"));
    }
    for problem in &probe.problems {
        out.push_str(&format!("could not read: {problem}\n"));
    }
    out
}
