//! `cargo xtask bench image`: what building and booting the image costs on this machine: a cold
//! build from empty step caches, a rebuild after touching only hellasd, the image sizes, and the
//! time from starting QEMU until hellasd's API answers through the forwarded port.
//! `--smoke` boots the qemu-test image only (the one `cargo xtask test` builds) and reports its
//! sizes and boot time, without the two builds.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use hellas_system_tests::vm::{Options, Vm};

use super::{load_average, write_section, Machine};
use crate::{cache, image};

/// Targets from the image issue.
const COLD_TARGET: Duration = Duration::from_secs(10 * 60);
const REBUILD_TARGET: Duration = Duration::from_secs(90);
const ZST_TARGET: u64 = 600_000_000;

#[derive(clap::Args)]
pub struct ImageBench {
    /// Keep the cached steps (skip the cold build): for a quick look at the other numbers.
    #[arg(long)]
    warm: bool,
    /// Only boot the qemu-test image until the API answers, to prove the bench works (`cargo
    /// xtask test` runs it): no builds, no targets judged, docs/benchmarks.md left alone.
    #[arg(long, conflicts_with = "warm")]
    smoke: bool,
    /// The qemu-test image to boot, when the caller has built it already.
    #[arg(skip)]
    test_image: Option<PathBuf>,
}

impl ImageBench {
    /// The smoke form, booting `test_image` (the qemu-test image `cargo xtask test` built).
    pub fn smoke(test_image: PathBuf) -> ImageBench {
        ImageBench { warm: false, smoke: true, test_image: Some(test_image) }
    }

    pub fn run(&self) -> Result<()> {
        let ws = crate::workspace::locate()?;
        if self.smoke {
            let test_image = match &self.test_image {
                Some(image) => image.clone(),
                None => image::Image::for_profile("qemu-test", &ws.root).build()?.image,
            };
            let (boot, accel) = boot_to_api(&test_image, &ws)?;
            let size = fs::metadata(&test_image).with_context(|| format!("reading {}", test_image.display()))?.len();
            println!(
                "==> bench image --smoke: works: {} ({:.0} MiB) booted to API ready in {:.0} s ({accel:?}); docs/benchmarks.md left alone",
                test_image.display(),
                size as f64 / (1u64 << 20) as f64,
                boot.as_secs_f64()
            );
            return Ok(());
        }
        let machine = Machine::describe()?;
        let load_before = load_average()?;
        let build = image::Image::for_profile("strix-halo", &ws.root);
        let cold = if self.warm {
            None
        } else {
            // Downloaded .debs stay: the bench measures the builder, not the network.
            for step in ["tools", "rootfs", "disk-strix-halo"] {
                cache::remove_any(&cache::root()?.join("image").join(step))?;
            }
            let started = Instant::now();
            build.build()?;
            Some(started.elapsed())
        };
        let main_rs = ws.root.join("services/hellasd/src/main.rs");
        fs::File::options()
            .append(true)
            .open(&main_rs)
            .and_then(|f| f.set_modified(SystemTime::now()))
            .with_context(|| format!("touching {}", main_rs.display()))?;
        // Touching leaves the binary's bytes as they were, so drop the disk step as a changed
        // daemon would: the rebuild then pays for the compile, the disk and the outputs.
        cache::remove_any(&cache::root()?.join("image/disk-strix-halo"))?;
        let started = Instant::now();
        let built = build.build()?;
        let rebuild = started.elapsed();

        let size = |path: &std::path::Path| fs::metadata(path).map(|m| m.len()).with_context(|| format!("reading {}", path.display()));
        let img = size(&built.image)?;
        let allocated = {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(&built.image)?.blocks() * 512
        };
        let zst = size(&built.image.with_extension("img.zst"))?;

        let test_image = image::Image::for_profile("qemu-test", &ws.root).build()?;
        let (boot, accel) = boot_to_api(&test_image.image, &ws)?;

        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
        let mut body = format!(
            "## image: building and booting\n\nMeasured by `cargo xtask bench image{}` on {}.\n\n\
             - Machine: {} CPUs, {}; 1-minute load average {load_before:.2} before the bench.\n\
             - Cold build: tools tree, root tree, disk and outputs from empty step caches (downloaded .debs kept), default profile.\n\
             - Rebuild: after touching only `services/hellasd/src/main.rs`, with the disk step's cache dropped as a changed daemon would (release build of hellasd, disk, outputs).\n\
             - Boot: from starting QEMU ({accel:?}, 2 vCPUs, 3 GiB) on the qemu-test image until `GET /health` answers through the forwarded port.\n\n\
             | measure | value | target | result |\n|---|--:|--:|---|\n",
            if self.warm { " --warm" } else { "" },
            machine.date,
            machine.cpus,
            machine.cpu_model,
        );
        if let Some(cold) = cold {
            body.push_str(&format!("| cold build | {:.0} s | ≤ {} s | {} |\n", cold.as_secs_f64(), COLD_TARGET.as_secs(), verdict(cold <= COLD_TARGET)));
        }
        body.push_str(&format!(
            "| daemon-only rebuild | {:.0} s | ≤ {} s | {} |\n\
             | image (nominal / allocated) | {:.0} MiB / {:.0} MiB | | |\n\
             | image .img.zst | {:.0} MiB | ≤ {:.0} MiB | {} |\n\
             | boot to API ready | {:.0} s | | |\n",
            rebuild.as_secs_f64(),
            REBUILD_TARGET.as_secs(),
            verdict(rebuild <= REBUILD_TARGET),
            mib(img),
            mib(allocated),
            mib(zst),
            mib(ZST_TARGET),
            verdict(zst <= ZST_TARGET),
            boot.as_secs_f64(),
        ));
        let path = write_section(&ws.root, "image", &body)?;
        println!("{body}\n==> bench image: written to {}", path.display());
        Ok(())
    }
}

/// Boots `image` under QEMU, waits until hellasd's API answers `GET /health` through the
/// forwarded port, and powers it off: the time that took, and the accelerator used.
fn boot_to_api(image: &std::path::Path, ws: &crate::workspace::Workspace) -> Result<(Duration, hellas_system_tests::vm::Accel)> {
    let options = Options { run_dir: ws.target.join("bench-image"), interactive: false, reboots: false, internal_disk_bytes: None };
    let started = Instant::now();
    let mut vm = Vm::boot(image, &options)?;
    let health = format!("{}/health", vm.api_url());
    let agent = ureq::Agent::new_with_defaults();
    let deadline = started + Duration::from_secs(15 * 60);
    while agent.get(&health).call().is_err() {
        if Instant::now() > deadline {
            anyhow::bail!("hellasd did not answer {health} within 15 minutes:\n{}", vm.diagnostics());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let boot = started.elapsed();
    let accel = vm.accel();
    vm.power_off(Duration::from_secs(120))?;
    Ok((boot, accel))
}
