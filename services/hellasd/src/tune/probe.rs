//! What the machine is, read from a root directory (`/` on the device, a fixture tree in
//! tests): DMI, CPU, amdgpu devices and their memory, the kfd topology, RAM, the kernel and its
//! command line, the TTM limits, amdgpu's `gttsize` and the firmware package. Every fact is
//! optional: a missing or garbled file becomes a note in `problems`, never an error.

use std::fs;
use std::path::Path;

use serde::Serialize;

#[derive(Debug, Default, Clone, Serialize)]
pub struct Probe {
    pub vendor: Option<String>,
    pub product: Option<String>,
    pub board: Option<String>,
    pub bios_version: Option<String>,
    pub cpu_model: Option<String>,
    pub gpus: Vec<Gpu>,
    pub mem_total: Option<u64>,
    pub kernel: Option<String>,
    pub cmdline: Option<String>,
    /// The page limit of the TTM that amdgpu uses: `amdttm`'s when amdgpu-dkms is loaded, else
    /// `ttm`'s.
    pub ttm_pages_limit: Option<u64>,
    pub ttm_page_pool_size: Option<u64>,
    /// amdgpu-dkms's own TTM module (`amdttm`) is loaded: `ttm.*` parameters do not reach it.
    pub amdttm: bool,
    /// amdgpu's `gttsize` in MiB as the running module has it (-1: unset), from the command line
    /// or a modprobe.d option alike.
    pub amdgpu_gttsize: Option<i64>,
    /// Version of Debian's firmware-amd-graphics package (linux-firmware upstream date).
    pub firmware: Option<String>,
    pub problems: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Gpu {
    pub card: String,
    pub pci_id: String,
    /// e.g. `gfx1151`, from the kfd topology.
    pub gfx_target: Option<String>,
    pub vram_total: Option<u64>,
    pub gtt_total: Option<u64>,
    pub cwsr_size: Option<u64>,
}

impl Probe {
    pub fn read(root: &Path) -> Probe {
        let mut probe = Probe::default();
        let text = |rel: &str, problems: &mut Vec<String>| -> Option<String> {
            match fs::read(root.join(rel)) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
                    Ok(_) => None,
                    Err(_) => {
                        problems.push(format!("/{rel} is not text"));
                        None
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    problems.push(format!("/{rel}: {e}"));
                    None
                }
            }
        };
        let mut p = Vec::new();
        probe.vendor = text("sys/class/dmi/id/sys_vendor", &mut p);
        probe.product = text("sys/class/dmi/id/product_name", &mut p);
        probe.board = text("sys/class/dmi/id/board_name", &mut p);
        probe.bios_version = text("sys/class/dmi/id/bios_version", &mut p);
        probe.cpu_model = text("proc/cpuinfo", &mut p)
            .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_string())));
        probe.kernel = text("proc/sys/kernel/osrelease", &mut p);
        probe.cmdline = text("proc/cmdline", &mut p);
        // amdgpu-dkms brings its own TTM, `amdttm`, and binds amdgpu to it (the GMKtec EVO-X2 and
        // AXB35-02 readings in tests/fixtures/boxes show its limit in amdgpu's own warning).
        let ttm = if root.join("sys/module/amdttm/parameters").is_dir() { "amdttm" } else { "ttm" };
        probe.amdttm = ttm == "amdttm";
        probe.ttm_pages_limit = number(text(&format!("sys/module/{ttm}/parameters/pages_limit"), &mut p), "ttm pages_limit", &mut p);
        probe.ttm_page_pool_size = number(text(&format!("sys/module/{ttm}/parameters/page_pool_size"), &mut p), "ttm page_pool_size", &mut p);
        probe.amdgpu_gttsize = number(text("sys/module/amdgpu/parameters/gttsize", &mut p), "amdgpu gttsize", &mut p);
        match text("proc/meminfo", &mut p) {
            Some(meminfo) => {
                let kib = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok());
                match kib {
                    Some(kib) => probe.mem_total = Some(kib * 1024),
                    None => p.push("/proc/meminfo has no readable MemTotal".into()),
                }
            }
            None => p.push("/proc/meminfo is missing".into()),
        }
        probe.firmware = text("var/lib/dpkg/status", &mut p).and_then(|status| package_version(&status, "firmware-amd-graphics"));
        probe.gpus = gpus(root, &mut p);
        probe.problems = p;
        probe
    }
}

fn number<T: std::str::FromStr>(text: Option<String>, what: &str, problems: &mut Vec<String>) -> Option<T> {
    let text = text?;
    match text.parse() {
        Ok(n) => Some(n),
        Err(_) => {
            problems.push(format!("{what} holds {text:?}, not a number"));
            None
        }
    }
}

fn package_version(status: &str, package: &str) -> Option<String> {
    status.split("\n\n").find(|stanza| stanza.lines().any(|l| l == format!("Package: {package}"))).and_then(|stanza| {
        stanza.lines().find_map(|l| l.strip_prefix("Version: ").map(str::to_string))
    })
}

fn gpus(root: &Path, problems: &mut Vec<String>) -> Vec<Gpu> {
    let targets = kfd_nodes(root);
    let Ok(entries) = fs::read_dir(root.join("sys/class/drm")) else { return Vec::new() };
    let mut gpus = Vec::new();
    for entry in entries.flatten() {
        let card = entry.file_name().to_string_lossy().into_owned();
        if !card.strip_prefix("card").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let device = entry.path().join("device");
        let read = |name: &str| fs::read_to_string(device.join(name)).ok().map(|s| s.trim().to_string());
        if read("vendor").as_deref() != Some("0x1002") {
            continue;
        }
        let pci_id = read("device").unwrap_or_default();
        let mut bytes = |name: &str| {
            let value = read(name)?;
            match value.parse() {
                Ok(n) => Some(n),
                Err(_) => {
                    problems.push(format!("{card} {name} holds {value:?}, not a byte count"));
                    None
                }
            }
        };
        let (vram_total, gtt_total) = (bytes("mem_info_vram_total"), bytes("mem_info_gtt_total"));
        // kfd nodes name their device by PCI id; the first match is this card's.
        let node = targets.iter().find(|(id, _, _)| format!("{id:#06x}") == pci_id.to_lowercase());
        gpus.push(Gpu { card, pci_id, gfx_target: node.map(|n| n.1.clone()), vram_total, gtt_total, cwsr_size: node.and_then(|n| n.2) });
    }
    gpus.sort_by(|a, b| a.card.cmp(&b.card));
    gpus
}

/// (device id, gfx target, cwsr size) of each kfd GPU node.
fn kfd_nodes(root: &Path) -> Vec<(u64, String, Option<u64>)> {
    let Ok(nodes) = fs::read_dir(root.join("sys/class/kfd/kfd/topology/nodes")) else { return Vec::new() };
    let mut found = Vec::new();
    for node in nodes.flatten() {
        let Ok(properties) = fs::read_to_string(node.path().join("properties")) else { continue };
        let field = |key: &str| {
            properties.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse::<u64>().ok()).flatten()
            })
        };
        // gfx_target_version is major*10000 + minor*100 + stepping: 110501 is gfx1151.
        let (Some(device), Some(version)) = (field("device_id"), field("gfx_target_version")) else { continue };
        if version == 0 {
            continue; // a CPU node
        }
        let target = format!("gfx{}{}{:x}", version / 10000, (version / 100) % 100, version % 100);
        found.push((device, target, field("cwsr_size")));
    }
    found
}
