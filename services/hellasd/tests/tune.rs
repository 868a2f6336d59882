//! `hellasd tune` against fixture trees standing in for sysfs and procfs (`--root`): a 128 GB
//! Strix Halo untuned and tuned, a 96 GB BIOS carve-out, a 64 GB box, an old kernel, a machine
//! with no AMD GPU, and garbage everywhere. Applying writes a boot entry into a fake ESP, once.

mod support;

use std::path::Path;

use serde_json::Value;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

struct Machine {
    vendor: &'static str,
    product: &'static str,
    cpu: &'static str,
    ram: u64,
    carve_out: u64,
    gtt: u64,
    pages_limit: u64,
    kernel: &'static str,
    cmdline: String,
    firmware: &'static str,
    amd_gpu: bool,
}

fn strix_halo(ram: u64, carve_out: u64) -> Machine {
    // MemTotal is RAM less the carve-out and what the firmware keeps (about 300 MiB).
    Machine {
        vendor: "Framework",
        product: "Desktop (AMD Ryzen AI Max 300 Series)",
        cpu: "AMD RYZEN AI MAX+ 395 w/ Radeon 8060S",
        ram,
        carve_out,
        gtt: (ram - carve_out) / 2,
        pages_limit: (ram - carve_out) / 2 / 4096,
        kernel: "7.2.12+deb14-amd64",
        cmdline: "root=/dev/mapper/root rootfstype=erofs ro roothash=abc console=tty0 quiet".into(),
        firmware: "20260110-1",
        amd_gpu: true,
    }
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn fixture(m: &Machine) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "sys/class/dmi/id/sys_vendor", &format!("{}\n", m.vendor));
    write(root, "sys/class/dmi/id/product_name", &format!("{}\n", m.product));
    write(root, "sys/class/dmi/id/board_name", "FRANMFCP06\n");
    write(root, "sys/class/dmi/id/bios_version", "03.02\n");
    write(root, "proc/cpuinfo", &format!("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: {}\n", m.cpu));
    let mem_total = m.ram - m.carve_out - 300 * MIB;
    write(root, "proc/meminfo", &format!("MemTotal:       {} kB\nMemAvailable:   {} kB\n", mem_total / 1024, mem_total / 2048));
    write(root, "proc/sys/kernel/osrelease", &format!("{}\n", m.kernel));
    write(root, "proc/cmdline", &format!("{}\n", m.cmdline));
    write(root, "sys/module/ttm/parameters/pages_limit", &format!("{}\n", m.pages_limit));
    write(root, "sys/module/ttm/parameters/page_pool_size", &format!("{}\n", m.pages_limit));
    write(root, "var/lib/dpkg/status", &format!("Package: firmware-amd-graphics\nStatus: install ok installed\nVersion: {}\n\nPackage: zstd\nVersion: 1.5\n", m.firmware));
    write(root, "usr/lib/os-release", "ID=debian\nIMAGE_ID=hellas\nIMAGE_VERSION=0.1.0\n");
    if m.amd_gpu {
        write(root, "sys/class/drm/card1/device/vendor", "0x1002\n");
        write(root, "sys/class/drm/card1/device/device", "0x1586\n");
        write(root, "sys/class/drm/card1/device/mem_info_vram_total", &format!("{}\n", m.carve_out));
        write(root, "sys/class/drm/card1/device/mem_info_gtt_total", &format!("{}\n", m.gtt));
        write(root, "sys/class/kfd/kfd/topology/nodes/0/properties", "cpu_cores_count 32\ngfx_target_version 0\ndevice_id 0\n");
        write(root, "sys/class/kfd/kfd/topology/nodes/1/properties", "simd_count 80\ngfx_target_version 110501\ndevice_id 5510\ncwsr_size 5492736\n");
    } else {
        write(root, "sys/class/drm/card0/device/vendor", "0x1234\n");
    }
    dir
}

fn tune(root: &Path, args: &[&str]) -> (bool, String) {
    let out = support::run(support::hellasd().arg("tune").arg("--root").arg(root).args(args));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn status(root: &Path) -> Value {
    let out = support::run(support::hellasd().arg("tune").arg("--root").arg(root).args(["status", "--json"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn fake_esp(uki: &str) -> tempfile::TempDir {
    let esp = tempfile::tempdir().unwrap();
    write(esp.path(), &format!("EFI/Linux/{uki}"), "MZ");
    esp
}

#[test]
fn untuned_strix_halo_128g_gets_its_parameters_once() {
    let machine = strix_halo(128 * GIB, 512 * MIB);
    let root = fixture(&machine);
    let report = status(root.path());
    let decision = &report["decision"];
    assert_eq!(decision["state"], "needs_reboot", "{report}");
    assert_eq!(decision["strix_halo"], true);
    // 128 GiB less the 4 GiB OS reserve, in 4 KiB pages.
    let params: Vec<&str> = decision["parameters"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(params, ["ttm.pages_limit=32505856", "ttm.page_pool_size=32505856"]);
    assert_eq!(report["probe"]["gpus"][0]["gfx_target"], "gfx1151");
    assert!(decision["bios_advice"].as_array().unwrap().is_empty(), "a 512 MiB carve-out is right");
    // The budget now: GTT (half of RAM) + carve-out.
    let usable = report["budget"]["usable"].as_u64().unwrap();
    assert_eq!(usable, machine.gtt + machine.carve_out);

    // Applying waits for a boot marked good, then writes one entry, then nothing more.
    let counting = fake_esp("hellas_0.1.0+2-1.efi");
    let (ok, out) = tune(root.path(), &["apply", "--esp", counting.path().to_str().unwrap()]);
    assert!(!ok && out.contains("still counting boots"), "{out}");
    assert!(!counting.path().join("loader/entries").exists());

    let esp = fake_esp("hellas_0.1.0.efi");
    let (ok, out) = tune(root.path(), &["apply", "--esp", esp.path().to_str().unwrap()]);
    assert!(ok && out.contains("reboot needed"), "{out}");
    let entry = esp.path().join("loader/entries/hellas-tuned+3.conf");
    let text = std::fs::read_to_string(&entry).unwrap();
    assert!(text.contains("uki /EFI/Linux/hellas_0.1.0.efi\n"), "{text}");
    assert!(
        text.contains("options root=/dev/mapper/root rootfstype=erofs ro roothash=abc console=tty0 quiet ttm.pages_limit=32505856 ttm.page_pool_size=32505856\n"),
        "{text}"
    );
    let (ok, out) = tune(root.path(), &["apply", "--esp", esp.path().to_str().unwrap()]);
    assert!(ok && out.contains("in place already"), "{out}");
    assert_eq!(std::fs::read_dir(esp.path().join("loader/entries")).unwrap().count(), 1);
    // Once the tuned entry was blessed (no counter), it is still recognised.
    std::fs::rename(&entry, esp.path().join("loader/entries/hellas-tuned.conf")).unwrap();
    let (ok, out) = tune(root.path(), &["apply", "--esp", esp.path().to_str().unwrap()]);
    assert!(ok && out.contains("in place already"), "{out}");
}

#[test]
fn the_tuned_entry_boots_the_booted_release_not_the_last_name() {
    let machine = strix_halo(128 * GIB, 512 * MIB);
    let root = fixture(&machine);
    let os_release = |version: &str| write(root.path(), "usr/lib/os-release", &format!("IMAGE_ID=hellas\nIMAGE_VERSION={version}\n"));
    let uki = |esp: &tempfile::TempDir| {
        let text = std::fs::read_to_string(std::fs::read_dir(esp.path().join("loader/entries")).unwrap().next().unwrap().unwrap().path()).unwrap();
        text.lines().find_map(|l| l.strip_prefix("uki /EFI/Linux/")).unwrap().to_string()
    };
    // A/B: the older release is booted (the newer one was rejected, or not yet booted), and by
    // name the older sorts last (0.1.9 after 0.1.10).
    let esp = fake_esp("hellas_0.1.9.efi");
    write(esp.path(), "EFI/Linux/hellas_0.1.10.efi", "MZ");
    os_release("0.1.9");
    assert!(tune(root.path(), &["apply", "--esp", esp.path().to_str().unwrap()]).0);
    assert_eq!(uki(&esp), "hellas_0.1.9.efi");
    // After the update to 0.1.10 is booted and marked good, the entry follows it.
    os_release("0.1.10");
    let (ok, out) = tune(root.path(), &["apply", "--esp", esp.path().to_str().unwrap()]);
    assert!(ok && out.contains("reboot needed"), "{out}");
    assert_eq!(uki(&esp), "hellas_0.1.10.efi");
    assert_eq!(std::fs::read_dir(esp.path().join("loader/entries")).unwrap().count(), 1, "one tuned entry, the new release's");
    // A release whose image is not on the ESP is refused, not guessed.
    os_release("0.2.0");
    let (ok, out) = tune(root.path(), &["apply", "--esp", esp.path().to_str().unwrap()]);
    assert!(!ok && out.contains("holds no image of the booted release hellas 0.2.0"), "{out}");
}

#[test]
fn tuned_strix_halo_reports_tuned_and_the_full_budget() {
    let mut machine = strix_halo(128 * GIB, 512 * MIB);
    machine.cmdline.push_str(" ttm.pages_limit=32505856 ttm.page_pool_size=32505856");
    machine.pages_limit = 32505856;
    machine.gtt = 32505856 * 4096;
    let root = fixture(&machine);
    let report = status(root.path());
    assert_eq!(report["decision"]["state"], "tuned", "{report}");
    let usable = report["budget"]["usable"].as_u64().unwrap();
    assert!((123 * GIB..=125 * GIB).contains(&usable), "about 124 GiB for models, not {usable}");
    let (ok, text) = tune(root.path(), &["status"]);
    assert!(ok && text.contains("state: tuned"), "{text}");
    let esp = fake_esp("hellas_0.1.0.efi");
    let (ok, out) = tune(root.path(), &["apply", "--esp", esp.path().to_str().unwrap()]);
    assert!(ok && out.contains("nothing to apply"), "{out}");
    assert!(!esp.path().join("loader").exists());

    // Started with the parameters but TTM did not take them (e.g. Secure Boot kept the UKI's
    // own command line): said plainly.
    let mut ignored = strix_halo(128 * GIB, 512 * MIB);
    ignored.cmdline.push_str(" ttm.pages_limit=32505856 ttm.page_pool_size=32505856");
    let report = status(fixture(&ignored).path());
    assert_eq!(report["decision"]["state"], "needs_reboot");
    assert!(report["decision"]["warnings"][0].as_str().unwrap().contains("did not take effect"), "{report}");
}

#[test]
fn a_96g_carve_out_gets_bios_advice_and_a_right_budget() {
    let machine = strix_halo(128 * GIB, 96 * GIB);
    let root = fixture(&machine);
    let report = status(root.path());
    let advice = report["decision"]["bios_advice"][0].as_str().unwrap_or_default();
    assert!(advice.contains("96.0 GiB") && advice.contains("512 MB") && advice.contains("Framework Desktop"), "{report}");
    assert_eq!(report["budget"]["usable"].as_u64().unwrap(), machine.gtt + machine.carve_out);
    assert_eq!(report["decision"]["parameters"][0], "ttm.pages_limit=32505856");
}

#[test]
fn a_64g_strix_halo_is_sized_for_64g() {
    let root = fixture(&strix_halo(64 * GIB, 512 * MIB));
    let report = status(root.path());
    assert_eq!(report["decision"]["parameters"][0], format!("ttm.pages_limit={}", 60 * GIB / 4096), "{report}");
}

#[test]
fn an_old_kernel_and_bad_firmware_are_flagged() {
    let mut machine = strix_halo(128 * GIB, 512 * MIB);
    machine.kernel = "6.10.3-amd64";
    machine.firmware = "20251125-1";
    let report = status(fixture(&machine).path());
    let warnings = report["decision"]["warnings"].to_string();
    assert!(warnings.contains("older than 6.18.4") && warnings.contains("20251125"), "{report}");
    // So old a kernel still needs amdgpu.gttsize as well.
    assert!(report["decision"]["parameters"].to_string().contains("amdgpu.gttsize=126976"), "{report}");
}

#[test]
fn no_amd_gpu_means_the_cpu_budget_and_no_changes() {
    let mut machine = strix_halo(32 * GIB, 0);
    machine.cpu = "Intel(R) Xeon(R) Processor";
    machine.amd_gpu = false;
    let root = fixture(&machine);
    let report = status(root.path());
    assert_eq!(report["decision"]["state"], "not_applicable", "{report}");
    assert_eq!(report["budget"]["source"]["kind"], "system_memory");
    let esp = fake_esp("hellas_0.1.0.efi");
    let (ok, out) = tune(root.path(), &["apply", "--esp", esp.path().to_str().unwrap()]);
    assert!(ok && out.contains("nothing to apply"), "{out}");
    // And this very machine: whatever it is, a report, never a crash.
    let (ok, out) = tune(Path::new("/"), &["status"]);
    assert!(ok, "{out}");
}

#[test]
fn missing_or_garbage_files_give_a_degraded_report() {
    let empty = tempfile::tempdir().unwrap();
    let (ok, out) = tune(empty.path(), &["status"]);
    assert!(ok && out.contains("could not read"), "{out}");
    let (ok, out) = tune(empty.path(), &["status", "--json"]);
    assert!(ok, "{out}");

    let machine = strix_halo(128 * GIB, 512 * MIB);
    let root = fixture(&machine);
    write(root.path(), "proc/meminfo", "MemTotal: lots\n");
    write(root.path(), "sys/module/ttm/parameters/pages_limit", "\u{0}\u{1}garbage");
    std::fs::write(root.path().join("sys/class/dmi/id/product_name"), [0xff, 0xfe, 0x00]).unwrap();
    write(root.path(), "sys/class/drm/card1/device/mem_info_gtt_total", "-1\n");
    write(root.path(), "sys/class/kfd/kfd/topology/nodes/1/properties", "nonsense");
    let report = status(root.path());
    assert_eq!(report["decision"]["state"], "degraded", "{report}");
    let problems = report["probe"]["problems"].to_string();
    assert!(problems.contains("MemTotal") && problems.contains("pages_limit") && problems.contains("not text"), "{report}");
    let (ok, out) = tune(root.path(), &["status"]);
    assert!(ok && out.contains("state: unknown"), "{out}");
}
