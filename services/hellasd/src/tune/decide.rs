//! What the memory split of this machine should be, and what is wrong with it: pure decisions
//! from a [`Probe`], so every case is testable from a fixture.
//!
//! On Strix Halo the GPU can use the BIOS carve-out (VRAM) plus GTT. GTT is RAM the kernel
//! manages (part of MemTotal), which amdgpu maps for the GPU up to TTM's `pages_limit` (half of
//! MemTotal by default); the carve-out is RAM the kernel never sees. Hellas keeps the carve-out
//! small and raises `ttm.pages_limit` (and `ttm.page_pool_size`) to MemTotal less the OS reserve,
//! so the GPU can never be handed the RAM the OS keeps, whatever the carve-out: on a 128 GB box
//! with a 512 MB carve-out that is about 121 GiB of GTT, with a 96 GB carve-out about 27 GiB.

use serde::Serialize;

use super::probe::Probe;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// A carve-out above this is memory the CPU cannot have back.
const SMALL_CARVE_OUT: u64 = GIB;
/// The GTT limit is MemTotal less the reserve rounded down to this step, so that MemTotal moving
/// by a few pages between kernels does not ask for another reboot, and so the limit is a whole
/// number of MiB for `amdgpu.gttsize`.
const LIMIT_STEP: u64 = 256 * MIB;
/// 6.18.4 carries the gfx1151 fixes the rest of the stack expects.
const MIN_KERNEL: (u64, u64, u64) = (6, 18, 4);
/// From 6.5 amdgpu sizes GTT from TTM's limit ("drm/amdgpu: Set GTT size equal to TTM mem limit",
/// drm pull for 6.5-rc1); before, GTT was half of RAM unless `amdgpu.gttsize` said otherwise. On
/// every version a `gttsize` that is set wins over TTM's limit (newer amdgpu warns that it is
/// deprecated, and "GTT size has been set as … but TTM size has been set as …, this is unusual").
const GTT_FOLLOWS_TTM: (u64, u64, u64) = (6, 5, 0);
/// Parameters this tool sets: a running command line holding any of them with another value (or
/// twice) is not tuned.
const OWNED: &[&str] = &["ttm.pages_limit=", "ttm.page_pool_size=", "amdgpu.gttsize="];
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
    if probe.amdttm {
        decision.warnings.push(
            "amdgpu-dkms is loaded with its own TTM module (amdttm), which ttm.pages_limit does not reach: Hellas uses the kernel's own amdgpu"
                .into(),
        );
    }
    let carve_out = gpu.vram_total.unwrap_or(0);
    if carve_out > SMALL_CARVE_OUT {
        decision.bios_advice.push(format!(
            "The BIOS reserves {:.1} GiB for the GPU (UMA frame buffer). Set it to 512 MB: GTT gives the GPU the memory it needs and the CPU keeps the rest. {} After that boot the GTT limit is sized again for the larger RAM, and one more reboot takes it.",
            carve_out as f64 / GIB as f64,
            menu_path(probe)
        ));
    }
    let Some(mem_total) = probe.mem_total else {
        decision.state = State::Degraded;
        decision.warnings.push("total memory is unknown (/proc/meminfo): cannot size GTT".into());
        return decision;
    };
    // GTT pages come out of MemTotal, so the limit is what the kernel has less what the OS keeps.
    // It used to be sized from RAM including the carve-out, which on the 96 GB carve-out readings
    // (GMKtec EVO-X2, Corsair AI Workstation 300: MemTotal about 31 GiB) planned 123 GiB of GTT
    // on top of 96 GiB of VRAM, and on the 512 MB Beelink GTR9 Pro (MemTotal 124.92 GiB) 122 GiB,
    // which left the OS 2.9 GiB and was 1.1 GiB more than the budget after the reboot.
    let gtt = mem_total.saturating_sub(options.os_reserve) / LIMIT_STEP * LIMIT_STEP;
    if gtt == 0 {
        decision.state = State::Degraded;
        decision.warnings.push(format!("{} of memory is no more than the OS reserve: nothing to give the GPU", format_gib(mem_total)));
        return decision;
    }
    let pages = gtt / PAGE;
    decision.planned_gpu_bytes = Some(gtt + carve_out);
    decision.parameters.push(format!("ttm.pages_limit={pages}"));
    decision.parameters.push(format!("ttm.page_pool_size={pages}"));
    let running: Vec<&str> = probe.cmdline.as_deref().unwrap_or_default().split_whitespace().collect();
    let gttsize = format!("amdgpu.gttsize={}", gtt / MIB);
    // A gttsize the running module has but the command line does not comes from a modprobe.d
    // option (the AXB35-02 reading): the boot entry cannot drop it, so it says the same size, and
    // keeps saying it once it is on the command line (else the next boot would drop it again).
    let gttsize_elsewhere =
        probe.amdgpu_gttsize.is_some_and(|mib| mib > 0) && !running.iter().any(|w| w.starts_with("amdgpu.gttsize="));
    if kernel.is_none_or(|v| v < GTT_FOLLOWS_TTM) || gttsize_elsewhere || running.contains(&gttsize.as_str()) {
        decision.parameters.push(gttsize);
    }
    if gttsize_elsewhere {
        decision.warnings.push(format!(
            "amdgpu.gttsize={} is set outside the kernel command line (a modprobe.d option), and a set gttsize wins over TTM's limit: the boot entry sets it to the planned size too",
            probe.amdgpu_gttsize.unwrap_or_default()
        ));
    }
    if options.iommu_off {
        decision.parameters.push("amd_iommu=off".into());
    }
    // Tuned: the running command line has exactly these owned parameters, once each, and the GPU
    // has the planned GTT (mem_info_gtt_total is the size amdgpu enforces) under TTM's limit.
    let owned_running: Vec<&str> = running.iter().copied().filter(|w| OWNED.iter().any(|o| w.starts_with(o))).collect();
    let owned_planned = decision.parameters.iter().filter(|p| OWNED.iter().any(|o| p.starts_with(o))).count();
    let in_cmdline = decision.parameters.iter().all(|p| running.contains(&p.as_str()))
        && owned_running.len() == owned_planned
        && owned_running.iter().all(|w| decision.parameters.iter().any(|p| p == w));
    let limit_applied = probe.ttm_pages_limit == Some(pages) && gpu.gtt_total == Some(gtt);
    decision.state = if in_cmdline && limit_applied { State::Tuned } else { State::NeedsReboot };
    if in_cmdline && !limit_applied {
        decision.warnings.push(format!(
            "the kernel was started with ttm.pages_limit={pages} but TTM reports {} and the GPU {} of GTT: the parameter did not take effect",
            probe.ttm_pages_limit.map_or("nothing".into(), |p| p.to_string()),
            gpu.gtt_total.map_or("unknown".into(), format_gib)
        ));
    }
    if let Some(dropped) = running.iter().find(|w| w.starts_with("amdgpu.gttsize=") && !decision.parameters.iter().any(|p| p == *w)) {
        decision.warnings.push(format!(
            "{dropped} on the command line is deprecated and wins over TTM's limit: the boot entry leaves it out"
        ));
    }
    if let Some(now) = gpu.gtt_total.filter(|&now| now > mem_total.saturating_sub(options.os_reserve)) {
        decision.warnings.push(format!(
            "GTT is {} now, more than the kernel's {} of RAM less the {} OS reserve: until the reboot, models are budgeted no further than that",
            format_gib(now),
            format_gib(mem_total),
            format_gib(options.os_reserve)
        ));
    }
    decision
}

fn format_gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB as f64)
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
        .unwrap_or_else(|| {
            let machine = format!("{vendor} {product}");
            let on = if machine.trim().is_empty() { "In the BIOS setup".to_string() } else { format!("On this {}: in the BIOS setup", machine.trim()) };
            format!("{on}, look for \"UMA Frame Buffer Size\" (often under Advanced → AMD CBS → NBIO → GFX Configuration).")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESERVE: u64 = 4 * GIB;

    fn strix_halo(mem_total: u64, carve_out: u64, kernel: &str, cmdline: &str) -> Probe {
        Probe {
            mem_total: Some(mem_total),
            kernel: Some(kernel.into()),
            cmdline: Some(cmdline.into()),
            gpus: vec![super::super::probe::Gpu {
                card: "card1".into(),
                pci_id: "0x1586".into(),
                vram_total: Some(carve_out),
                gtt_total: Some(mem_total / 2),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn options() -> Options {
        Options { os_reserve: RESERVE, iommu_off: false }
    }

    #[test]
    fn gtt_is_what_the_kernel_has_less_the_reserve_whatever_the_carve_out() {
        for (mem_total, carve_out) in [(131_000_000 * 1024, 512 * MIB), (32_497_688 * 1024, 96 * GIB), (65_000_000 * 1024, 512 * MIB)] {
            let d = decide(&strix_halo(mem_total, carve_out, "7.2.12", "ro"), &options());
            let planned = d.planned_gpu_bytes.unwrap();
            assert!(planned - carve_out <= mem_total - RESERVE && planned - carve_out > mem_total - RESERVE - LIMIT_STEP, "{d:?}");
            assert_eq!(d.parameters[0], format!("ttm.pages_limit={}", (planned - carve_out) / PAGE));
        }
    }

    #[test]
    fn gttsize_is_set_where_the_kernel_needs_it_and_dropped_elsewhere() {
        let has_gttsize = |kernel: &str, cmdline: &str| {
            decide(&strix_halo(131_000_000 * 1024, 512 * MIB, kernel, cmdline), &options()).parameters.iter().any(|p| p.starts_with("amdgpu.gttsize="))
        };
        assert!(has_gttsize("6.1.0-18-amd64", "ro"), "before 6.5 GTT does not follow TTM");
        assert!(!has_gttsize("6.5.0", "ro"));
        assert!(!has_gttsize("7.0.0-28-generic", "ro amdgpu.gttsize=131072"), "a deprecated gttsize of another size goes");
        // Set by a modprobe.d option, which the boot entry cannot remove: it is overridden.
        let mut probe = strix_halo(131_000_000 * 1024, 512 * MIB, "6.14.0-1014-oem", "ro");
        probe.amdgpu_gttsize = Some(122880);
        let d = decide(&probe, &options());
        let planned_gtt = d.planned_gpu_bytes.unwrap() - 512 * MIB;
        assert!(d.parameters.contains(&format!("amdgpu.gttsize={}", planned_gtt / MIB)), "{d:?}");
        assert!(d.warnings.iter().any(|w| w.contains("modprobe.d")), "{d:?}");
    }

    #[test]
    fn a_command_line_with_other_owned_values_is_not_tuned() {
        let probe = strix_halo(131_000_000 * 1024, 512 * MIB, "7.2.12", "ro");
        let parameters = decide(&probe, &options()).parameters;
        let pages: u64 = parameters[0].strip_prefix("ttm.pages_limit=").unwrap().parse().unwrap();
        let tuned = |cmdline: String| {
            let mut probe = strix_halo(131_000_000 * 1024, 512 * MIB, "7.2.12", &cmdline);
            probe.ttm_pages_limit = Some(pages);
            probe.gpus[0].gtt_total = Some(pages * PAGE);
            decide(&probe, &options()).state
        };
        assert_eq!(tuned(format!("ro {}", parameters.join(" "))), State::Tuned);
        assert_eq!(tuned(format!("ro ttm.pages_limit=1 {}", parameters.join(" "))), State::NeedsReboot, "a second value");
        assert_eq!(tuned(format!("ro {} amdgpu.gttsize=126976", parameters.join(" "))), State::NeedsReboot, "a stray gttsize");
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("7.2.12+deb14-amd64"), Some((7, 2, 12)));
        assert!(kernel_version("6.18.4").unwrap() >= MIN_KERNEL);
        assert_eq!(kernel_version("garbage"), None);
    }
}
