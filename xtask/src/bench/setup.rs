//! `cargo xtask bench setup`: how long a person takes from a booted box to a first answer,
//! measured by the browser test (`services/hellasd/tests/web_setup.rs`): hellasd starting with
//! no owner, then the claim, password, settings, catalog, a download (one corrupted and one
//! cut part-way, both recovered), the first key and an answer in the "try it" box, all at
//! machine speed in headless chromium. `--smoke` runs the same test in the test profile, so that
//! `cargo xtask test` reuses the build it already made, and only checks that it reports a time.

use std::fs;

use anyhow::{Context, Result};
use duct::cmd;
use serde_json::Value;

use super::{load_average, write_section, Machine};
use crate::{cache, deps, models};

const TEST: &str = "a_person_sets_up_the_box_in_a_browser";

#[derive(clap::Args)]
pub struct SetupBench {
    /// Run the browser test unoptimised, as `cargo test` builds it, to prove the bench works
    /// (`cargo xtask test` runs it): no target judged, docs/benchmarks.md left alone.
    #[arg(long)]
    pub smoke: bool,
}

impl SetupBench {
    pub fn run(&self) -> Result<()> {
        let ws = crate::workspace::locate()?;
        deps::ensure(&[deps::CHROMIUM, deps::CHROMEDRIVER])?;
        models::fetch_all()?;
        let cache = cache::root()?;
        if !cache.join("engine/bin/llama-server").exists() {
            anyhow::bail!("the engine is missing: run `cargo xtask engine` first");
        }
        let machine = Machine::describe()?;
        let load_before = load_average()?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        // The smoke form builds as `cargo test --workspace` did (same profile, same features), so
        // it compiles nothing new.
        let profile: &[&str] = if self.smoke { &["--workspace"] } else { &["--release", "-p", "hellasd"] };
        let artefacts = ws.target.join("tmp/web-setup");
        let timing_path = artefacts.join("timing.json");
        // A time left by an earlier run must not pass for this one's.
        crate::cache::remove_any(&timing_path)?;
        cmd(cargo, ["test"].iter().chain(profile).chain(&["--test", "web_setup", TEST, "--", "--exact"]).copied())
            .env("HELLAS_CACHE", &cache)
            .dir(&ws.root)
            .run()
            .context("the browser test failed")?;
        let timing: Value = serde_json::from_slice(&fs::read(&timing_path).with_context(|| format!("reading {}", timing_path.display()))?)
            .with_context(|| format!("parsing {}", timing_path.display()))?;
        let secs = timing["booted_to_first_answer_secs"].as_f64().context("no booted_to_first_answer_secs in the timing")?;
        let body = format!(
            "## setup: from a booted box to the first answer\n\nMeasured by `cargo xtask bench setup` on {}.\n\n\
             - Machine: {} CPUs, {}; 1-minute load average {load_before:.2} before the bench.\n\
             - Method: the browser test `{TEST}` (release build): hellasd starts unclaimed with the real engine; headless chromium \
             claims it with the claim code, sets the password and settings, picks SmolLM2 from the catalog, downloads it from a \
             local server limited to 20 MiB/s that corrupts the first download (refused) and cuts the second at 30 MB (resumed), \
             makes the first API key and sends \"What is the capital of France?\" from the try-it box. A person reads and types; \
             the test does not, so this is the machine's share of the five-minute goal.\n\
             - Screenshots of every step: `target/tmp/web-setup/*.png`.\n\n\
             | measure | value | target |\n|---|--:|--:|\n\
             | hellasd start to the first answer in the browser | {secs:.1} s | ≤ 300 s with a person at the keyboard |\n",
            machine.date, machine.cpus, machine.cpu_model,
        );
        if self.smoke {
            println!("==> bench setup --smoke: works: the first answer came {secs:.1} s after hellasd started (test profile; docs/benchmarks.md left alone)");
            return Ok(());
        }
        let path = write_section(&ws.root, "setup", &body)?;
        println!("{body}\n==> bench setup: written to {}", path.display());
        Ok(())
    }
}
