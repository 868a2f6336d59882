//! Memory budget detection: how many bytes models may use on this machine.
//!
//! On an AMD GPU (the appliance's APU) the budget is what the GPU can address, GTT + VRAM, of
//! the amdgpu device with the most; otherwise it is the kernel's `MemAvailable`. An OS reserve is
//! subtracted from either. Everything is read below a root directory so tests can pass a fixture
//! tree; production passes `/`.
//!
//! On an APU the VRAM is the BIOS carve-out and GTT is system RAM the GPU maps; the two are
//! disjoint, so their sum is the whole pool. GTT counts as far as the kernel really gives it:
//! no more than TTM's page limit (beyond it TTM swaps other GPU buffers out to make room, so they
//! do not stay resident) and no more than MemTotal less the OS reserve (GTT pages are the OS's own
//! RAM). The reserve is subtracted once, not on top of the OS's current usage.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;

/// PCI vendor id of AMD/ATI.
const AMD_VENDOR: &str = "0x1002";
const PAGE: u64 = 4096;

/// Where the budget came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BudgetSource {
    /// `ttm_limit`: TTM's page limit in bytes where it could be read.
    AmdGpu { card: String, gtt_total: u64, vram_total: u64, ttm_limit: Option<u64> },
    SystemMemory { mem_available: u64, mem_total: u64 },
    Configured,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryBudget {
    pub source: BudgetSource,
    /// What the source offers before the reserve.
    pub total: u64,
    pub os_reserve: u64,
    /// `total - os_reserve`: what models may use.
    pub usable: u64,
}

impl MemoryBudget {
    /// A one-line description, e.g. "AMD GPU card1: GTT 62.00 GiB + VRAM 512.0 MiB".
    pub fn describe(&self) -> String {
        use hellas_model::plan::format_bytes as f;
        let source = match &self.source {
            BudgetSource::AmdGpu { card, gtt_total, vram_total, ttm_limit } => match ttm_limit.filter(|l| l < gtt_total) {
                Some(limit) => format!("AMD GPU {card}: GTT {} (TTM keeps {} resident) + VRAM {}", f(*gtt_total), f(limit), f(*vram_total)),
                None => format!("AMD GPU {card}: GTT {} + VRAM {}", f(*gtt_total), f(*vram_total)),
            },
            BudgetSource::SystemMemory { mem_available, mem_total } => {
                format!("system memory: {} available of {}", f(*mem_available), f(*mem_total))
            }
            BudgetSource::Configured => "configured".to_string(),
        };
        if self.os_reserve > 0 {
            format!("{source}, less {} OS reserve", f(self.os_reserve))
        } else {
            source
        }
    }
}

/// The budget models get here: `fixed` bytes when set (configuration, a flag), else what this
/// machine has less `os_reserve`.
pub fn of(fixed: Option<u64>, os_reserve: u64) -> anyhow::Result<MemoryBudget> {
    match fixed {
        Some(bytes) => Ok(configured(bytes)),
        None => detect(Path::new("/"), os_reserve).context("detecting the memory budget"),
    }
}

/// A budget of exactly `bytes`, from configuration.
pub fn configured(bytes: u64) -> MemoryBudget {
    MemoryBudget { source: BudgetSource::Configured, total: bytes, os_reserve: 0, usable: bytes }
}

/// Detects the budget of the machine whose filesystem is at `root`, less `os_reserve` bytes.
pub fn detect(root: &Path, os_reserve: u64) -> anyhow::Result<MemoryBudget> {
    let meminfo = read_meminfo(root);
    match best_amd_gpu(root) {
        Some(gpu) => {
            // A GTT larger than TTM's limit is what a deprecated amdgpu.gttsize gives (the Beelink
            // GTR9 Pro and AXB35-02 readings in tests/fixtures/boxes: 128 and 120 GiB of GTT, of
            // which ROCm sees only the 62 GiB TTM limit).
            let ttm_limit = ttm_pages_limit(root).map(|pages| pages.saturating_mul(PAGE));
            let gtt = gpu.gtt_total.min(ttm_limit.unwrap_or(u64::MAX));
            // GTT is backed by system RAM, which the OS needs too: the reserve bites only where
            // the GTT would reach into it (a tuned box's limit already leaves it out).
            let (gtt, ram_for_gpu) = match &meminfo {
                Ok(m) if m.total > 0 => (gtt.min(m.total), m.total.saturating_sub(os_reserve)),
                _ => (gtt, gtt.saturating_sub(os_reserve)),
            };
            let total = gtt.saturating_add(gpu.vram_total);
            let usable = gtt.min(ram_for_gpu).saturating_add(gpu.vram_total);
            let source = BudgetSource::AmdGpu { card: gpu.card, gtt_total: gpu.gtt_total, vram_total: gpu.vram_total, ttm_limit };
            Ok(MemoryBudget { source, total, os_reserve: total - usable, usable })
        }
        None => {
            let m = meminfo?;
            let source = BudgetSource::SystemMemory { mem_available: m.available, mem_total: m.total };
            Ok(MemoryBudget { source, total: m.available, os_reserve, usable: m.available.saturating_sub(os_reserve) })
        }
    }
}

/// Whether this box's engines belong on its GPU: `engine.expect_gpu`, by default when it has an
/// AMD GPU, and never with offloading turned off (`engine.gpu_layers = 0`).
pub fn engines_on_gpu(engine: &crate::config::EngineConfig) -> bool {
    engine.expect_gpu.unwrap_or_else(|| best_amd_gpu(Path::new("/")).is_some()) && engine.gpu_layers != Some(0)
}

struct AmdGpu {
    card: String,
    gtt_total: u64,
    vram_total: u64,
}

/// The amdgpu device with the most GTT + VRAM. Devices whose files are missing or unreadable are
/// skipped (with a warning when they look like amdgpu but cannot be read).
fn best_amd_gpu(root: &Path) -> Option<AmdGpu> {
    let drm = root.join("sys/class/drm");
    let entries = fs::read_dir(&drm).ok()?;
    let mut best: Option<AmdGpu> = None;
    for entry in entries.flatten() {
        let card = entry.file_name().to_string_lossy().into_owned();
        // card0, card1, ...; not connectors (card0-DP-1) or render nodes.
        if !card.strip_prefix("card").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let device = entry.path().join("device");
        let vendor = fs::read_to_string(device.join("vendor")).unwrap_or_default();
        if vendor.trim() != AMD_VENDOR {
            continue;
        }
        let gtt_path = device.join("mem_info_gtt_total");
        let vram_path = device.join("mem_info_vram_total");
        if !gtt_path.exists() || !vram_path.exists() {
            continue;
        }
        let (gtt_total, vram_total) = match (read_u64(&gtt_path), read_u64(&vram_path)) {
            (Ok(g), Ok(v)) => (g, v),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(card, "ignoring AMD GPU: {e:#}");
                continue;
            }
        };
        if best.as_ref().is_none_or(|b| gtt_total.saturating_add(vram_total) > b.gtt_total.saturating_add(b.vram_total))
        {
            best = Some(AmdGpu { card, gtt_total, vram_total });
        }
    }
    best
}

/// The page limit of the TTM that amdgpu uses: amdgpu-dkms's `amdttm` when it is loaded, else the
/// kernel's `ttm`. Unreadable means no limit is known, not none.
fn ttm_pages_limit(root: &Path) -> Option<u64> {
    let module = if root.join("sys/module/amdttm/parameters").is_dir() { "amdttm" } else { "ttm" };
    read_u64(&root.join(format!("sys/module/{module}/parameters/pages_limit"))).ok()
}

fn read_u64(path: &Path) -> anyhow::Result<u64> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.trim().parse().with_context(|| format!("{} holds {:?}, not a byte count", path.display(), text.trim()))
}

struct MemInfo {
    total: u64,
    available: u64,
}

fn read_meminfo(root: &Path) -> anyhow::Result<MemInfo> {
    let path: PathBuf = root.join("proc/meminfo");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
            .with_context(|| format!("{} has no {name} line", path.display()))?;
        let mut parts = line.split_whitespace();
        let value: u64 = parts
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{} has an unreadable {name} line: {:?}", path.display(), line.trim()))?;
        match parts.next() {
            Some("kB") => Ok(value.saturating_mul(1024)),
            None => Ok(value),
            Some(unit) => bail!("{} gives {name} in unknown unit {unit:?}", path.display()),
        }
    };
    Ok(MemInfo { total: field("MemTotal")?, available: field("MemAvailable")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn meminfo(root: &Path, total_kb: u64, available_kb: u64) {
        write(
            root,
            "proc/meminfo",
            &format!("MemTotal:       {total_kb} kB\nMemFree:        1000 kB\nMemAvailable:   {available_kb} kB\nBuffers: 0 kB\n"),
        );
    }

    fn card(root: &Path, name: &str, vendor: &str, gtt: Option<&str>, vram: Option<&str>) {
        write(root, &format!("sys/class/drm/{name}/device/vendor"), &format!("{vendor}\n"));
        if let Some(g) = gtt {
            write(root, &format!("sys/class/drm/{name}/device/mem_info_gtt_total"), g);
        }
        if let Some(v) = vram {
            write(root, &format!("sys/class/drm/{name}/device/mem_info_vram_total"), v);
        }
    }

    #[test]
    fn amd_apu_untuned_128g() {
        // A 128 GB Strix Halo with the default TTM limit: 512 MiB carve-out, GTT ~ half of RAM.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        meminfo(root, 131_000_000, 120_000_000);
        let gtt = 62 * GIB + 300 * MIB;
        card(root, "card1", "0x1002", Some(&format!("{gtt}\n")), Some(&format!("{}\n", 512 * MIB)));
        // A connector directory and a render node are not devices.
        write(root, "sys/class/drm/card1-DP-1/status", "disconnected\n");
        write(root, "sys/class/drm/renderD128/dev", "226:128\n");

        let b = detect(root, 4 * GIB).unwrap();
        assert_eq!(b.source, BudgetSource::AmdGpu { card: "card1".into(), gtt_total: gtt, vram_total: 512 * MIB, ttm_limit: None });
        assert_eq!(b.total, gtt + 512 * MIB);
        // GTT is half of RAM: the other half is the OS's, so the reserve takes nothing from it.
        assert_eq!(b.usable, gtt + 512 * MIB);
        assert!(b.describe().starts_with("AMD GPU card1: GTT 62.29 GiB + VRAM 512.0 MiB"), "{}", b.describe());
    }

    #[test]
    fn largest_amd_device_wins_and_others_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        meminfo(root, 64 * 1024 * 1024, 60 * 1024 * 1024);
        card(root, "card0", "0x1002", Some("1073741824"), Some("536870912"));
        card(root, "card1", "0x1002", Some("4294967296"), Some("17179869184"));
        card(root, "card2", "0x10de", Some("999999999999"), Some("999999999999"));
        card(root, "card3", "0x1002", None, Some("1")); // no GTT file: not usable
        let b = detect(root, 0).unwrap();
        assert!(matches!(&b.source, BudgetSource::AmdGpu { card, .. } if card == "card1"));
        assert_eq!(b.usable, 4 * GIB + 16 * GIB);
    }

    #[test]
    fn tuned_gtt_is_capped_by_ram() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        meminfo(root, 8 * 1024 * 1024, 6 * 1024 * 1024); // 8 GiB of RAM
        card(root, "card0", "0x1002", Some(&(100 * GIB).to_string()), Some(&(512 * MIB).to_string()));
        let b = detect(root, GIB).unwrap();
        assert_eq!(b.total, 8 * GIB + 512 * MIB);
        assert_eq!(b.usable, 7 * GIB + 512 * MIB);
    }

    #[test]
    fn gtt_beyond_the_ttm_limit_is_not_budgeted() {
        // The Beelink GTR9 Pro reading: amdgpu.gttsize=131072 gives 128 GiB of GTT on 124.92 GiB
        // of RAM, while TTM keeps its default limit of half of MemTotal.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mem_total_kib = 130_988_933;
        meminfo(root, mem_total_kib, 120_000_000);
        card(root, "card1", "0x1002", Some(&(128 * GIB).to_string()), Some(&(512 * MIB).to_string()));
        let limit = mem_total_kib / 4 / 2;
        write(root, "sys/module/ttm/parameters/pages_limit", &format!("{limit}\n"));
        let b = detect(root, 4 * GIB).unwrap();
        assert_eq!(b.usable, limit * 4096 + 512 * MIB);
        assert!(b.describe().contains("(TTM keeps 62.46 GiB resident)"), "{}", b.describe());
        // With amdgpu-dkms, amdgpu uses amdttm's limit, not the kernel's ttm.
        write(root, "sys/module/ttm/parameters/pages_limit", "31457280\n");
        write(root, "sys/module/amdttm/parameters/pages_limit", "4062211\n");
        assert_eq!(detect(root, 4 * GIB).unwrap().usable, 4_062_211 * 4096 + 512 * MIB);
    }

    #[test]
    fn no_gpu_uses_mem_available() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        meminfo(root, 16 * 1024 * 1024, 12 * 1024 * 1024);
        card(root, "card0", "0x8086", None, None); // an Intel iGPU
        let b = detect(root, 4 * GIB).unwrap();
        assert_eq!(b.source, BudgetSource::SystemMemory { mem_available: 12 * GIB, mem_total: 16 * GIB });
        assert_eq!((b.total, b.usable), (12 * GIB, 8 * GIB));
        // A reserve larger than the memory leaves nothing, not an underflow.
        assert_eq!(detect(root, 64 * GIB).unwrap().usable, 0);
    }

    #[test]
    fn garbage_is_skipped_or_reported() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        card(root, "card0", "0x1002", Some("lots\n"), Some("\u{0}\u{1}"));
        // The unreadable GPU is skipped; with no meminfo the error names the file.
        let err = format!("{:#}", detect(root, 0).unwrap_err());
        assert!(err.contains("proc/meminfo"), "{err}");

        write(root, "proc/meminfo", "MemTotal: many kB\nMemAvailable: 5 kB\n");
        let err = format!("{:#}", detect(root, 0).unwrap_err());
        assert!(err.contains("unreadable MemTotal"), "{err}");

        write(root, "proc/meminfo", "MemTotal: 5 kB\n");
        let err = format!("{:#}", detect(root, 0).unwrap_err());
        assert!(err.contains("no MemAvailable"), "{err}");

        // With a good meminfo, the garbage GPU falls back to system memory.
        meminfo(root, 2048, 1024);
        let b = detect(root, 0).unwrap();
        assert_eq!(b.usable, 1024 * 1024);
    }

    #[test]
    fn configured_budget() {
        let b = configured(8 * GIB);
        assert_eq!((b.total, b.os_reserve, b.usable), (8 * GIB, 0, 8 * GIB));
        assert_eq!(serde_json::to_value(&b).unwrap()["source"]["kind"], "configured");
    }

    #[test]
    fn this_machine() {
        // Whatever this machine is, detection must work on the real / (where there is one).
        if !Path::new("/proc/meminfo").exists() {
            return;
        }
        let b = detect(Path::new("/"), 0).unwrap();
        assert!(b.usable > 0);
    }
}
