//! What the memory split of this machine should be, and what is wrong with it: pure decisions
//! from a [`Probe`], so every case is testable from a fixture.
//!
//! On Strix Halo the GPU can use the BIOS carve-out (VRAM) plus GTT, which the kernel backs with
//! system RAM up to TTM's `pages_limit` (about half of RAM by default). Hellas keeps the
//! carve-out small and raises `ttm.pages_limit` (and `ttm.page_pool_size`) to all RAM but an OS
//! reserve: 128 GiB less 4 GiB is 32505856 pages of 4 KiB.

use serde::Serialize;

use super::probe::Probe;

const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;
/// A carve-out above this is memory the CPU cannot have back.
const SMALL_CARVE_OUT: u64 = GIB;
/// 6.18.4 carries the gfx1151 fixes the rest of the stack expects.
const MIN_KERNEL: (u64, u64, u64) = (6, 18, 4);
/// Kernels before 6.11 still size GTT with `amdgpu.gttsize` rather than TTM's limit alone.
const GTTSIZE_BEFORE: (u64, u64, u64) = (6, 11, 0);
/// linux-firmware releases with known gfx1151 regressions.
const BAD_FIRMWARE: &[&str] = &["20251125"];

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The running kernel already has the planned limits.
    Tuned,
    /// The parameters are known; a reboot with them is needed.
    NeedsReboot,
    /// Not a Strix Halo (or no AMD GPU): nothing to change.
    NotApplicable,
    /// Too little could be read to decide.
    Degraded,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub state: State,
    pub strix_halo: bool,
    /// Kernel parameters for the next boot (`key=value`).
    pub parameters: Vec<String>,
    /// GPU-visible memory once tuned: carve-out + TTM limit.
    pub planned_gpu_bytes: Option<u64>,
    pub warnings: Vec<String>,
    /// BIOS settings the owner should change.
    pub bios_advice: Vec<String>,
}

pub struct Options {
    pub os_reserve: u64,
    pub iommu_off: bool,
}

pub fn decide(probe: &Probe, options: &Options) -> Decision {
    let gpu = probe.gpus.first();
    let strix_halo = probe.cpu_model.as_deref().is_some_and(|m| m.contains("Ryzen AI Max"))
        || gpu.is_some_and(|g| g.gfx_target.as_deref() == Some("gfx1151") || g.pci_id.eq_ignore_ascii_case("0x1586"));
    let mut decision =
        Decision { state: State::NotApplicable, strix_halo, parameters: Vec::new(), planned_gpu_bytes: None, warnings: Vec::new(), bios_advice: Vec::new() };
    let Some(gpu) = gpu.filter(|_| strix_halo) else { return decision };
    let kernel = probe.kernel.as_deref().and_then(kernel_version);
    if let (Some(version), Some(release)) = (kernel, probe.kernel.as_deref()) {
        if version < MIN_KERNEL {
            decision.warnings.push(format!(
                "kernel {release} is older than 6.18.4, which gfx1151 needs for stable GPU compute: update the image"
            ));
        }
    }
    if let Some(firmware) = &probe.firmware {
        if BAD_FIRMWARE.iter().any(|bad| firmware.contains(bad)) {
            decision.warnings.push(format!("linux-firmware {firmware} has known gfx1151 regressions: use a newer firmware-amd-graphics"));
        }
    }
    let carve_out = gpu.vram_total.unwrap_or(0);
    if carve_out > SMALL_CARVE_OUT {
        decision.bios_advice.push(format!(
            "The BIOS reserves {:.1} GiB for the GPU (UMA frame buffer). Set it to 512 MB: GTT gives the GPU the memory it needs and the CPU keeps the rest. {}",
            carve_out as f64 / GIB as f64,
            menu_path(probe)
        ));
    }
    let Some(mem_total) = probe.mem_total else {
        decision.state = State::Degraded;
        decision.warnings.push("total memory is unknown (/proc/meminfo): cannot size GTT".into());
        return decision;
    };
    // MemTotal lacks the carve-out and what firmware keeps: round RAM up to whole GiB.
    let ram = (mem_total + carve_out).div_ceil(GIB) * GIB;
    let pages = ram.saturating_sub(options.os_reserve) / PAGE;
    decision.planned_gpu_bytes = Some(pages * PAGE + carve_out);
    decision.parameters.push(format!("ttm.pages_limit={pages}"));
    decision.parameters.push(format!("ttm.page_pool_size={pages}"));
    if kernel.is_some_and(|v| v < GTTSIZE_BEFORE) {
        decision.parameters.push(format!("amdgpu.gttsize={}", (pages * PAGE) >> 20));
    }
    if options.iommu_off {
        decision.parameters.push("amd_iommu=off".into());
    }
    let running = probe.cmdline.as_deref().unwrap_or_default();
    let in_cmdline = decision.parameters.iter().all(|p| running.split_whitespace().any(|w| w == p));
    let limit_applied = probe.ttm_pages_limit == Some(pages);
    decision.state = if in_cmdline && limit_applied { State::Tuned } else { State::NeedsReboot };
    if in_cmdline && !limit_applied {
        decision.warnings.push(format!(
            "the kernel was started with ttm.pages_limit={pages} but TTM reports {}: the parameter did not take effect",
            probe.ttm_pages_limit.map_or("nothing".into(), |p| p.to_string())
        ));
    }
    decision
}

impl Decision {
    /// The state in a few words, for the report and the dashboard.
    pub fn summary(&self) -> String {
        match self.state {
            State::Tuned => "tuned".to_string(),
            State::NeedsReboot => format!("not tuned: reboot needed with {}", self.parameters.join(" ")),
            State::NotApplicable => "nothing to tune (not an AMD Strix Halo)".to_string(),
            State::Degraded => "unknown: too little could be read".to_string(),
        }
    }
}

fn kernel_version(release: &str) -> Option<(u64, u64, u64)> {
    let numbers: Vec<u64> = release.split(|c: char| !c.is_ascii_digit()).take(3).map(|n| n.parse().ok()).collect::<Option<_>>()?;
    Some((numbers[0], numbers[1], *numbers.get(2).unwrap_or(&0)))
}

/// Where the UMA setting lives on the Strix Halo boxes we know of, as their owners report it;
/// BIOS versions move menus, so the wording says where to look.
fn menu_path(probe: &Probe) -> String {
    const KNOWN: &[(&str, &str, &str)] = &[
        ("Framework", "Desktop", "Framework Desktop: in the BIOS setup (F2), look under Advanced for the iGPU memory allocation (UMA frame buffer size)."),
        ("GMKtec", "EVO-X2", "GMKtec EVO-X2: BIOS (Del) → Advanced → AMD CBS / NBIO → GFX Configuration → UMA Frame buffer Size."),
        ("Corsair", "AI Workstation", "Corsair AI Workstation 300: BIOS (Del) → Advanced → GFX Configuration → UMA Frame Buffer Size."),
        ("HP", "Z2 Mini G1a", "HP Z2 Mini G1a: BIOS (F10) → Advanced → Graphics / Video memory size (UMA)."),
        ("FEVM", "FAEX9", "FEVM FAEX9: BIOS (Del) → Advanced → AMD CBS → NBIO → GFX Configuration → UMA Frame Buffer Size."),
    ];
    let vendor = probe.vendor.as_deref().unwrap_or_default();
    let product = probe.product.as_deref().unwrap_or_default();
    KNOWN
        .iter()
        .find(|(v, p, _)| vendor.to_lowercase().contains(&v.to_lowercase()) && product.to_lowercase().contains(&p.to_lowercase()))
        .map(|(_, _, path)| path.to_string())
        .unwrap_or_else(|| format!("On this {vendor} {product}: look in the BIOS setup for \"UMA Frame Buffer Size\" (often under Advanced → AMD CBS → NBIO → GFX Configuration)."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("7.2.12+deb14-amd64"), Some((7, 2, 12)));
        assert!(kernel_version("6.18.4").unwrap() >= MIN_KERNEL);
        assert_eq!(kernel_version("garbage"), None);
    }
}
