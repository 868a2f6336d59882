//! `cargo xtask bench flash`: `cargo xtask flash`'s write and read-back verify against
//! `dd oflag=direct bs=4M` followed by `cmp`, on the same loop device in one run.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use duct::cmd;

use super::{load_average, write_section, Machine};
use crate::flash::copy;

const TARGET_RATIO: f64 = 0.95;

#[derive(clap::Args)]
pub struct FlashBench {
    /// Image size in MiB.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// A 16 MiB run that proves the bench works (`cargo xtask test` runs it): the ratio is not
    /// judged, and docs/benchmarks.md is left alone.
    #[arg(long, conflicts_with = "mib")]
    pub smoke: bool,
}

impl FlashBench {
    pub fn smoke() -> FlashBench {
        FlashBench { mib: 16, smoke: true }
    }

    pub fn run(&self) -> Result<()> {
        if self.smoke && self.mib != 16 {
            return FlashBench::smoke().run();
        }
        let ws = crate::workspace::locate()?;
        let machine = Machine::describe()?;
        let load_before = load_average()?;
        let dir = ws.target.join("bench-flash");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let image = dir.join("image.img");
        let backing = dir.join("device");
        // Random bytes, so nothing along the way can take a shortcut on zeros.
        cmd!("dd", "if=/dev/urandom", format!("of={}", image.display()), "bs=1M", format!("count={}", self.mib), "status=none").run()?;
        cmd!("truncate", "-s", format!("{}M", self.mib + 64), &backing).run()?;
        let device = cmd!("losetup", "--find", "--show", &backing).read().context("losetup (needs root)")?;
        let result = measure(&image, &device);
        let _ = Command::new("losetup").args(["-d", &device]).status();
        let _ = std::fs::remove_file(&backing);
        let (ours, theirs) = result?;
        let ratio = theirs / ours;
        let body = format!(
            "## flash: write and verify against dd and cmp\n\nMeasured by `cargo xtask bench flash --mib {}` on {}.\n\n\
             - Machine: {} CPUs, {}; 1-minute load average {load_before:.2} before the bench.\n\
             - Target: a loop device over a file in the target directory; a {} MiB image of random bytes.\n\
             - flash: O_DIRECT writes of 4 MiB, fsync, then an O_DIRECT read-back hashed with sha256 and compared with the image's digest (from its SHA256SUMS, as for a built image).\n\
             - baseline: `dd oflag=direct bs=4M conv=fsync`, then `cmp` of the image with the device.\n\n\
             | | seconds | MB/s |\n|---|--:|--:|\n| flash (write + verify) | {ours:.1} | {:.0} |\n| dd + cmp | {theirs:.1} | {:.0} |\n\n\
             Ratio of throughput flash / baseline: **{ratio:.2}** (target ≥ {TARGET_RATIO}): **{}**.\n",
            self.mib,
            machine.date,
            machine.cpus,
            machine.cpu_model,
            self.mib,
            2.0 * self.mib as f64 * 1.048576 / ours,
            2.0 * self.mib as f64 * 1.048576 / theirs,
            if ratio >= TARGET_RATIO { "PASS" } else { "FAIL" },
        );
        if self.smoke {
            println!("{body}\n==> bench flash --smoke: works; a smoke run judges no target (PASS/FAIL above) and leaves docs/benchmarks.md alone");
            return Ok(());
        }
        let path = write_section(&ws.root, "flash", &body)?;
        println!("{body}\n==> bench flash: written to {}", path.display());
        Ok(())
    }
}

/// Seconds for flash's write + verify, and for dd + cmp.
fn measure(image: &std::path::Path, device: &str) -> Result<(f64, f64)> {
    let len = std::fs::metadata(image)?.len();
    let device_path = std::path::Path::new(device);
    // Both sides start with nothing cached, the image included.
    let drop_caches = || std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache (needs root)");
    // As `cargo xtask flash` of a built image: its digest comes from the build's SHA256SUMS.
    let recorded = crate::image::step::file_sha256(image)?;
    drop_caches()?;
    let started = Instant::now();
    let written = copy::write(image, device_path, true, None, Some(&recorded))?;
    if copy::read_back(device_path, len)? != written {
        bail!("flash's verify failed on {device}");
    }
    let ours = started.elapsed().as_secs_f64();
    drop_caches()?;
    let started = Instant::now();
    cmd!("dd", format!("if={}", image.display()), format!("of={device}"), "bs=4M", "oflag=direct", "conv=fsync", "status=none").run()?;
    cmd!("cmp", "-n", len.to_string(), image, device).run().context("cmp found a difference")?;
    let theirs = started.elapsed().as_secs_f64();
    Ok((ours, theirs))
}
