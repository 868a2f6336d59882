//! `cargo xtask bench <name>`: measurements recorded in `docs/benchmarks.md`. Each bench owns
//! one section of that file, between `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->`,
//! and replaces only that one, so the file collects the latest result of every bench.
//!
//! Every bench also has a smoke form (`--smoke`): one small round that proves the bench still
//! works, judges no target and writes nothing. `cargo xtask test` runs them all (`smoke_all`).

mod chat;
mod cluster;
mod delay_line;
mod flash;
mod image;
mod proxy;
mod servers;
mod setup;
mod speculative;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use std::{fs, thread};

use anyhow::{bail, Context, Result};
use duct::cmd;

use crate::cache;

#[derive(clap::Subcommand)]
pub enum Bench {
    /// What hellasd's proxy costs against talking to llama-server directly.
    Proxy(proxy::Proxy),
    /// Cold build, daemon-only rebuild, sizes and boot time of the image.
    Image(image::ImageBench),
    /// From a booted box to the first answer through the web setup in a browser.
    Setup(setup::SetupBench),
    /// `cargo xtask flash`'s write and verify against dd and cmp.
    Flash(flash::FlashBench),
    /// A model split over llama.cpp RPC against the same model on one box.
    Cluster(cluster::ClusterBench),
    /// Decode speed with and without speculative decoding from n-grams.
    Speculative(speculative::SpeculativeBench),
    /// Every bench's smoke form, as `cargo xtask test` runs them after the tests.
    Smoke,
}

impl Bench {
    pub fn run(&self) -> Result<()> {
        match self {
            Bench::Proxy(proxy) => proxy.run(),
            Bench::Image(image) => image.run(),
            Bench::Setup(setup) => setup.run(),
            Bench::Flash(flash) => flash.run(),
            Bench::Cluster(cluster) => cluster.run(),
            Bench::Speculative(speculative) => speculative.run(),
            Bench::Smoke => {
                let root = crate::workspace::root()?;
                smoke_all(crate::image::Image::for_profile("qemu-test", &root).build()?.image)
            }
        }
    }
}

/// Runs the smoke form of every bench, each in turn whatever the others did, and fails naming
/// those that failed. `test_image` is the qemu-test image the caller built, which the image
/// bench boots.
pub fn smoke_all(test_image: PathBuf) -> Result<()> {
    let benches = [
        ("proxy", Bench::Proxy(proxy::Proxy::smoke())),
        ("image", Bench::Image(image::ImageBench::smoke(test_image))),
        ("setup", Bench::Setup(setup::SetupBench { smoke: true })),
        ("flash", Bench::Flash(flash::FlashBench::smoke())),
        ("cluster", Bench::Cluster(cluster::ClusterBench::smoke())),
        ("speculative", Bench::Speculative(speculative::SpeculativeBench::smoke())),
    ];
    let mut failed = Vec::new();
    for (name, bench) in benches {
        println!("==> test: cargo xtask bench {name} --smoke");
        let started = Instant::now();
        match bench.run() {
            Ok(()) => println!("==> test: bench {name} --smoke passed in {:.0} s", started.elapsed().as_secs_f64()),
            Err(err) => {
                eprintln!("==> test: bench {name} --smoke failed: {err:#}");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("the smoke form of bench {} failed (the errors are above)", failed.join(", "));
    }
    Ok(())
}

const INTRO: &str = "# Benchmarks

Every section of this file is written by `cargo xtask bench <name>` (`cargo xtask bench --help`
lists them): it measures on the machine it runs on and replaces only its own section, between
`<!-- bench:<name>:start -->` and `<!-- bench:<name>:end -->`. To refresh a section, run its
command again on an otherwise idle machine and commit the file; each section names the command,
the machine and the date it was measured on.

Each bench also has a smoke form, `cargo xtask bench <name> --smoke`: one small round that proves
the bench still works, judges no target and leaves this file alone. `cargo xtask bench smoke` runs
them all, and `cargo xtask test` (and so CI) runs them after the tests, so a broken bench fails
the build.
";

/// The machine a bench ran on, as its report states it.
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub date: String,
}

impl Machine {
    pub fn describe() -> Result<Machine> {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
            .map_or("unknown CPU".into(), |(_, model)| model.trim().to_string());
        let date = cmd!("date", "-u", "+%Y-%m-%d")
            .stdin_null()
            .read()
            .context("`date -u +%Y-%m-%d` failed")?;
        Ok(Machine {
            cpus: thread::available_parallelism().map_or(1, |cpus| cpus.get()),
            cpu_model,
            date,
        })
    }
}

/// The 1-minute load average, to tell a quiet machine from a busy one.
/// Fails naming the first of `files` (the engine's programs, the test models) that is not there.
pub fn require_built<P: AsRef<Path>>(files: &[P]) -> Result<()> {
    if let Some(missing) = files.iter().map(AsRef::as_ref).find(|file| !file.is_file()) {
        bail!("{} is missing: run `cargo xtask engine` and `cargo xtask models` first", missing.display());
    }
    Ok(())
}

pub fn load_average() -> Result<f64> {
    let text = fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    text.split_whitespace()
        .next()
        .and_then(|load| load.parse().ok())
        .with_context(|| format!("/proc/loadavg holds no load average: {text}"))
}

/// The nearest-rank percentile `p` (0–100) of `samples`, which must not be empty.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Replaces bench `name`'s section of `docs/benchmarks.md` with `body`, creating the file
/// (with its introduction) if needed. The file is written under a temporary name and renamed.
pub fn write_section(root: &Path, name: &str, body: &str) -> Result<PathBuf> {
    let path = root.join("docs/benchmarks.md");
    cache::remove_stale(&path)?;
    let current = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => INTRO.to_string(),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let updated = with_section(&current, name, body);
    let temp = cache::temp_path(&path, "tmp");
    fs::write(&temp, updated).with_context(|| format!("writing {}", temp.display()))?;
    fs::rename(&temp, &path)
        .with_context(|| format!("renaming {} to {}", temp.display(), path.display()))?;
    Ok(path)
}

/// `document` with the section between `name`'s markers replaced by `body`, or with the
/// section appended when it has none yet.
fn with_section(document: &str, name: &str, body: &str) -> String {
    let start = format!("<!-- bench:{name}:start -->");
    let end = format!("<!-- bench:{name}:end -->");
    let section = format!("{start}\n{}\n{end}", body.trim());
    let found = document.find(&start).and_then(|from| {
        let to = from + document[from..].find(&end)? + end.len();
        Some((from, to))
    });
    match found {
        Some((from, to)) => format!("{}{section}{}", &document[..from], &document[to..]),
        None => format!("{}\n\n{section}\n", document.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_is_appended_then_replaced_in_place() {
        let doc = with_section(INTRO, "proxy", "first\n");
        assert!(doc.starts_with(INTRO.trim_end()));
        assert!(doc.ends_with("<!-- bench:proxy:start -->\nfirst\n<!-- bench:proxy:end -->\n"));
        let doc = with_section(&doc, "other", "theirs");
        let doc = with_section(&doc, "proxy", "second");
        assert!(!doc.contains("first"));
        let proxy = doc.find("second").unwrap();
        assert!(
            proxy < doc.find("theirs").unwrap(),
            "the section keeps its place"
        );
        assert_eq!(with_section(&doc, "proxy", "second"), doc);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<_> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&samples[..1], 99.0), Duration::from_millis(100));
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
