//! Boots the `qemu-test` image once and proves it from the guest's boot report, its console
//! and its ports alone: a verity-protected erofs root, a data partition grown on first boot,
//! hellasd up, the API closed until the box is claimed, the claim code from the serial console
//! claiming it through the web setup on the forwarded port, the bundled model answering with
//! the key made there exactly as the same llama.cpp does on this host, and a clean power-off.
//! The image is flashed to a file as to a stick, with a seed the box must apply. Then the same
//! guest goes on through the update path (`update.rs`), rebooting as it goes; QEMU starts once
//! more only after the power cut. Few boots, because CI boots under TCG on two cores.
//!
//! The image comes from `HELLAS_TEST_IMAGE`, or else from `out/` where
//! `cargo xtask image --profile qemu-test` puts it. Artefacts (console log, boot report,
//! overlay) stay in `target/system-tests/image-boots/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use std::{env, fs};

use hellas_system_tests::vm::{Options, Vm};
use serde_json::{json, Value};

#[path = "image_boots/owner_web.rs"]
mod owner_web;
#[path = "image_boots/install.rs"]
mod install;
#[path = "image_boots/update.rs"]
mod update;
#[path = "image_boots/wifi.rs"]
mod wifi;

use owner_web::OwnerWeb;

const MODEL: &str = "smollm2:135m-q4_1";
const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// `partitions.data` in image/hellas.toml: the data partition as shipped, before it grows.
const SHIPPED_DATA_BYTES: u64 = 256 << 20;
/// CI machines boot under TCG, and a slow one takes many minutes.
const BOOT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Inference under TCG is slow, even for 8 tokens of a 135M model: on a 2-core dev box the
/// engine took 90 s to load and 7 min to answer (8.7 s per prompt token).
const INFERENCE_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(2 * 60);
const PASSWORD: &str = "a long and private phrase";
/// What `cargo xtask test` seeds into the stick's ESP (`cargo xtask flash --hostname
/// --claim-code`), which the box must apply on its first boot.
const SEEDED_HOSTNAME: &str = "hellas-qemu";
const SEEDED_CLAIM_CODE: &str = "QEMU-2345";
/// The box's internal disk, blank, which the test installs the system to at the end.
const INTERNAL_DISK_BYTES: u64 = 8 << 30;
const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test@host";

#[test]
fn qemu_test_image_boots_serves_its_model_updates_rolls_back_and_powers_off() {
    let image = test_image();
    let run_dir = fresh_artefacts_dir();
    println!(
        "image: {}; artefacts: {}",
        image.display(),
        run_dir.display()
    );

    // The host's answer first: it takes seconds, and a missing engine fails before the boot.
    let expected = host_answer(&run_dir);
    println!("the host's llama-server answers {expected:?}");

    let booted = Instant::now();
    let options = Options {
        run_dir: run_dir.clone(),
        interactive: false,
        reboots: true,
        internal_disk_bytes: Some(INTERNAL_DISK_BYTES),
    };
    let mut vm = Vm::boot(&image, &options)
        .unwrap_or_else(|err| panic!("booting {}: {err:#}", image.display()));
    let report = vm
        .wait_report(BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err:#}"));
    let boot_secs = booted.elapsed().as_secs_f64();
    save(&run_dir.join("report.json"), &report);
    println!(
        "boot report after {boot_secs:.0} s under {}: {report}",
        vm.accel()
    );
    check_report(&report, &vm);
    check_status_screen(&vm);
    wifi::the_phone_finds_the_hotspot_and_the_setup_page(&vm, &report);

    let (key, mut web) = claim_through_the_web(&vm);
    check_api(&vm, &key, &expected);
    wifi::the_owner_on_the_phone_moves_the_box_to_the_home_network(&vm);
    let booted = update::update_roll_back_and_refuse(&mut vm, &mut web, &key, &image_version());
    install::install_and_boot_from_the_disk(&mut vm, &mut web, &key, &booted);

    let status = vm
        .power_off(POWER_OFF_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err:#}"));
    assert!(
        status.success(),
        "QEMU exited with {status} after the power-off\n{}",
        vm.diagnostics()
    );
    println!(
        "powered off; the boot took {boot_secs:.0} s under {}",
        vm.accel()
    );
}

/// The API through the forwarded port: health, the model list, and a greedy answer that must
/// be the host's, word for word.
fn check_api(vm: &Vm, key: &str, expected: &str) {
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(INFERENCE_TIMEOUT)
        .build()
        .unwrap();
    let api = vm.api_url();
    let health = client
        .get(format!("{api}/health"))
        .send()
        .expect("GET /health");
    assert_eq!(
        health.status(),
        200,
        "GET /health: {}",
        health.text().unwrap_or_default()
    );

    let models = client
        .get(format!("{api}/v1/models"))
        .bearer_auth(key)
        .send()
        .expect("GET /v1/models");
    assert_eq!(
        models.status(),
        200,
        "GET /v1/models: {}",
        models.text().unwrap_or_default()
    );
    let models: Value = models.json().expect("GET /v1/models returns JSON");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(
        ids.contains(&MODEL),
        "{MODEL} is not in GET /v1/models: {models}"
    );

    let asked = Instant::now();
    let answer = client
        .post(format!("{api}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&greedy_chat())
        .send()
        .expect("POST /v1/chat/completions");
    assert_eq!(
        answer.status(),
        200,
        "POST /v1/chat/completions: {}",
        answer.text().unwrap_or_default()
    );
    let answer: Value = answer.json().expect("the chat completion is JSON");
    println!(
        "the guest answers after {:.1} s: {answer}",
        asked.elapsed().as_secs_f64()
    );
    save(&vm.run_dir().join("completion.json"), &answer);
    let text = content(&answer);
    assert!(!text.trim().is_empty(), "empty answer: {answer}");
    let finished = answer["usage"]["completion_tokens"] == 4
        || answer["choices"][0]["finish_reason"] == "stop";
    assert!(finished, "neither 4 tokens nor a stop: {answer}");
    assert!(
        text == expected,
        "the guest answers {text:?} and the host's llama-server {expected:?} (same Debian llama.cpp, same model, greedy); \
         the backends each loaded, from the guest's console:\n{}",
        backend_lines(&vm.console_log())
    );
    // Where the engine put the model, from its own load log: the CPU, nothing in VRAM.
    let ps: Value = client.get(format!("{api}/api/ps")).bearer_auth(key).send().and_then(|r| r.json()).expect("GET /api/ps");
    save(&vm.run_dir().join("ps.json"), &ps);
    assert_eq!(ps["models"][0]["size_vram"], 0, "the guest's engine runs on its CPU: {ps}");
    // The image's kernel enforces the whole engine sandbox (Landlock, no capabilities).
    assert_eq!(ps["models"][0]["sandbox"], "sandboxed: no capabilities, Landlock fully enforced", "{ps}");
}

/// The first-boot setup as a person does it: the API refuses before the claim, the claim code
/// is read off the serial console (the getty's issue text shows it too), and the setup pages
/// on the forwarded web port take it, the owner's password and a request for the first API
/// key, which is returned with the owner's web session.
fn claim_through_the_web(vm: &Vm) -> (String, OwnerWeb) {
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let before = http
        .get(format!("{}/v1/models", vm.api_url()))
        .send()
        .expect("GET /v1/models before the claim");
    assert_eq!(before.status(), 403, "the API must be closed before the claim");

    let console = String::from_utf8_lossy(&fs::read(vm.console_log()).unwrap_or_default()).into_owned();
    let code = claim_code_in(&console)
        .unwrap_or_else(|| panic!("no claim code on the serial console\n{}", vm.diagnostics()));
    // agetty may print its prompt a little after the boot report: it asks the terminal about
    // itself first and waits a while for an answer that a log file never gives.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&fs::read(vm.console_log()).unwrap_or_default()).contains(&format!("enter the claim code {code}")) {
        assert!(
            Instant::now() < deadline,
            "the login prompt's issue text does not show the claim code {code}\n{}",
            vm.console_tail(40)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(code, SEEDED_CLAIM_CODE, "the box did not take the claim code seeded on its stick");
    println!("the serial console shows the seeded claim code {code}");

    let mut web = OwnerWeb::new(vm.web_url());
    let (status, _, _) = web.get("/setup/claim");
    assert_eq!(status, 200, "the setup page is not reachable on the forwarded port");
    let claimed = web.post("/setup/claim", &[("code", &code)]);
    assert_eq!(claimed.1.as_deref(), Some("/setup/owner"), "the console's claim code did not claim the box: {claimed:?}");
    web.get("/setup/owner");
    let owner = web.post("/setup/owner", &[("password", PASSWORD), ("confirm", PASSWORD)]);
    assert_eq!(owner.0, 200, "setting the owner's password: {owner:?}");

    // Claimed: the pages answer over HTTPS only, with the certificate whose fingerprint the
    // console and the claim's last page show; plain HTTP redirects there.
    let fingerprint = fingerprint_in(&String::from_utf8_lossy(&fs::read(vm.console_log()).unwrap_or_default()))
        .unwrap_or_else(|| panic!("no certificate fingerprint on the serial console\n{}", vm.console_tail(40)));
    assert!(owner.2.contains(&fingerprint) && owner.2.contains("https://127.0.0.1/login"), "the claim's last page: {}", owner.2);
    let plain = web.get("/dashboard");
    assert_eq!((plain.0, plain.1.as_deref()), (307, Some("https://127.0.0.1/dashboard")), "plain HTTP after the claim");
    let mut web = OwnerWeb::pinned(vm.https_url(), &fingerprint);
    web.log_in(PASSWORD);
    println!("the box answers over HTTPS with the certificate {fingerprint} its console shows");

    // sshd stays off until the owner gives a public key, then runs with it.
    assert_eq!(ssh_banner(vm), None, "sshd answers before the owner gave a key");
    web.get("/settings");
    let saved = web.post("/settings", &[("box_name", SEEDED_HOSTNAME), ("timezone", "UTC"), ("ssh_keys", SSH_KEY)]);
    assert_eq!(saved.1.as_deref(), Some("/models"), "saving the settings: {saved:?}");
    let deadline = Instant::now() + Duration::from_secs(180);
    let banner = loop {
        if let Some(banner) = ssh_banner(vm) {
            break banner;
        }
        assert!(Instant::now() < deadline, "sshd did not start after the key was set\n{}", vm.diagnostics());
        std::thread::sleep(Duration::from_secs(2));
    };
    println!("with the owner's key set, sshd answers {banner:?}");

    web.get("/setup/key");
    let (status, _, page) = web.post("/keys", &[("name", "qemu-test")]);
    assert_eq!(status, 200, "creating the first API key: {page}");
    let at = page.find("id=\"api-key\">").expect("the key page shows the key") + 13;
    (page[at..].split('<').next().unwrap().to_string(), web)
}

/// The box's status screen as agetty draws it on the serial console: the seeded name, the
/// guest's address, where the engine runs and the tuning (its QR code: `wifi.rs`).
fn check_status_screen(vm: &Vm) {
    let console = console_text(vm);
    let Some((_, screen)) = console.rsplit_once(&format!("Box:       {SEEDED_HOSTNAME}.local\n")) else {
        panic!("the serial console shows no status screen naming {SEEDED_HOSTNAME}\n{}", vm.console_tail(80));
    };
    let lines: Vec<&str> = screen.lines().take(60).collect();
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(has("Network:   10.0.2.15 ("), "the screen shows no address:\n{}", lines.join("\n"));
    assert!(has("Engine:    on the CPU") && has("Memory:    "), "the screen shows no engine or tuning:\n{}", lines.join("\n"));
}

/// The serial console so far, as text, without carriage returns.
fn console_text(vm: &Vm) -> String {
    String::from_utf8_lossy(&fs::read(vm.console_log()).unwrap_or_default()).replace('\r', "")
}

/// Reads a half-block QR code back as a camera would (a lit half is a light module).
fn decode_qr(lines: &[&str]) -> String {
    const SCALE: usize = 4;
    // Only the code's own lines: the journal's lines may come between them on the console.
    let rows: Vec<Vec<char>> = lines
        .iter()
        .filter(|l| l.contains('█') && l.chars().all(|c| "█▀▄ ".contains(c)))
        .map(|l| l.chars().collect())
        .collect();
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let light = |x: usize, y: usize| {
        let c = rows[y / 2].get(x).copied().unwrap_or(' ');
        c == '█' || (y.is_multiple_of(2) && c == '▀') || (!y.is_multiple_of(2) && c == '▄')
    };
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(width * SCALE, rows.len() * 2 * SCALE, |x, y| if light(x / SCALE, y / SCALE) { 255 } else { 0 });
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code on the screen:\n{}", lines.join("\n"));
    grids[0].decode().expect("the screen's QR code decodes").1
}

/// The web certificate's SHA-256 on the console's issue text, on the line after its label.
fn fingerprint_in(console: &str) -> Option<String> {
    let (_, after) = console.rsplit_once("SHA-256 fingerprint:")?;
    let candidate = after.split_whitespace().next()?;
    let shaped = candidate.len() == 95 && candidate.split(':').all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
    shaped.then(|| candidate.to_string())
}

/// The code in hellasd's "Hellas claim code: XXXX-XXXX" line.
fn claim_code_in(console: &str) -> Option<String> {
    console.match_indices("Hellas claim code: ").find_map(|(at, marker)| {
        let code = console.get(at + marker.len()..at + marker.len() + 9)?;
        let shaped = code.char_indices().all(|(i, c)| if i == 4 { c == '-' } else { c.is_ascii_uppercase() || c.is_ascii_digit() });
        shaped.then(|| code.to_string())
    })
}

/// The SSH server's greeting through the forwarded port, if one answers. QEMU accepts the
/// host's connection either way and closes it when nothing listens in the guest.
fn ssh_banner(vm: &Vm) -> Option<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect_timeout(&vm.ssh_addr(), Duration::from_secs(10)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.starts_with("SSH-").then(|| text.trim().to_string())
}

fn save(path: &Path, value: &Value) {
    fs::write(path, serde_json::to_vec_pretty(value).unwrap())
        .unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
}

/// The engine's lines about the ggml backends it found and loaded (CPU variant, Vulkan).
fn backend_lines(console: &Path) -> String {
    let text = String::from_utf8_lossy(&fs::read(console).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("backend") || line.contains("ggml_vulkan"))
        .collect();
    lines.join("\n")
}

pub(crate) fn check_report(report: &Value, vm: &Vm) {
    let field = |name: &str| {
        report[name]
            .as_str()
            .unwrap_or_else(|| panic!("no string {name:?} in the boot report {report}"))
    };
    let bytes = |name: &str| {
        report[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no number {name:?} in the boot report {report}"))
    };
    let failed = field("failed_units").trim();
    assert!(
        field("state") == "running" && failed.is_empty(),
        "the system is {:?} with failed units {failed:?}\nreport: {report}\n{}",
        field("state"),
        vm.diagnostics()
    );
    assert_eq!(field("root_fstype"), "erofs", "{report}");
    assert!(
        field("root_options")
            .split(',')
            .any(|option| option == "ro"),
        "/ is not read-only: {report}"
    );
    assert!(
        field("dm_uuid").contains("VERITY"),
        "/ is not on dm-verity: {report}"
    );
    assert!(
        bytes("data_part_bytes") > SHIPPED_DATA_BYTES,
        "the data partition did not grow: {report}"
    );
    assert!(
        bytes("data_fs_bytes") > SHIPPED_DATA_BYTES,
        "the data file system did not grow: {report}"
    );
    assert_eq!(field("hellasd"), "active", "{report}\n{}", vm.diagnostics());
    assert_eq!(field("hostname"), SEEDED_HOSTNAME, "the seeded box name is not the host name: {report}");
    assert_eq!(field("fence"), "yes", "hellasd did not put its nftables fence around the RPC port: {report}\n{}", vm.diagnostics());
    assert_eq!(bytes("control_port"), 1, "nothing listens on the cluster control port: {report}");
    assert_eq!(field("mdns"), "on", "hellasd's mDNS did not start beside avahi: {report}\n{}", vm.diagnostics());
    // A port cabled to another box (no DHCP server) gets a link-local address, and the boot did
    // not wait for DHCP there (network-online.target's wait would have failed: no failed units).
    assert!(field("cable").contains(" 169.254."), "the DHCP-less port has no link-local address: {report}\n{}", vm.diagnostics());
    // The image's Vulkan stack (ggml's backend, Mesa's drivers) finds the guest's only Vulkan
    // device, the software one; inference on it under TCG would take hours, so the engine
    // answers on the CPU (the host tests run it on lavapipe: services/hellasd/tests/placement.rs).
    assert!(field("vulkan").starts_with("Vulkan0: llvmpipe"), "llama-server lists no Vulkan device: {report}");
    check_exposure(report);
}

/// The highest `systemd-analyze security` exposure each shipped unit may have (0 safest, 10
/// unsafe); each unit's hardening block says what it keeps and why.
const EXPOSURE_LIMITS: &[(&str, f64)] = &[
    ("hellas-claim-code", 1.0),
    ("hellas-seed", 2.0),
    ("hellas-settings", 2.0),
    ("hellas-tune", 2.0),
    // Starts the engine on the GPU, reaches hellasd over TCP.
    ("hellas-health", 3.0),
    // Root, to drive iwd and write its store; reads addresses over netlink.
    ("hellas-network", 2.5),
    // Serves the network, keeps the GPU's devices, Mesa needs W+X.
    ("hellasd", 3.0),
    // systemd-sysupdate and systemd-repart write raw block devices and the ESP as root.
    ("hellas-update", 7.0),
];

fn check_exposure(report: &Value) {
    let exposure = &report["exposure"];
    for (unit, limit) in EXPOSURE_LIMITS {
        let level = exposure[unit].as_f64().unwrap_or_else(|| panic!("no exposure for {unit} in the boot report: {exposure}"));
        assert!(level <= *limit, "{unit}.service is exposed {level} (limit {limit}); all: {exposure}");
    }
    println!("systemd-analyze security exposure: {exposure}");
}

fn greedy_chat() -> Value {
    json!({
        "model": MODEL,
        // A short system prompt replaces SmolLM2's long default one: under software emulation
        // every prompt token costs seconds.
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Capital of France?"},
        ],
        "temperature": 0, "seed": 42, "max_tokens": 4,
    })
}

fn content(answer: &Value) -> String {
    answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content in {answer}"))
        .to_string()
}

/// The same request to the host's llama-server (`cargo xtask engine`), started much as
/// hellasd starts the guest's. Both run ggml's `haswell` CPU kernels: the launcher pins them
/// on an AVX2 host, and they are the best that TCG's `-cpu max` offers (AVX2 and FMA, no
/// AVX-512 or AVX-VNNI), while the guest's Vulkan backend skips Mesa's software device
/// (lavapipe). So the text must match.
fn host_answer(artefacts: &Path) -> String {
    let cache = cache_dir();
    let server = cache.join("engine/bin/llama-server");
    let model = cache.join("models").join(MODEL_FILE);
    for path in [&server, &model] {
        assert!(
            path.exists(),
            "{} is missing: run `cargo xtask engine && cargo xtask models` (or `cargo xtask test`)",
            path.display()
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log_path = artefacts.join("host-llama-server.log");
    let log = fs::File::create(&log_path)
        .unwrap_or_else(|err| panic!("creating {}: {err}", log_path.display()));
    let engine = HostEngine(
        Command::new(&server)
            .arg("--model")
            .arg(&model)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                // As the qemu-test image's hellasd drop-in configures the guest's engine.
                "--ctx-size",
                "2048",
                "--parallel",
                "1",
            ])
            .args([
                "--load-mode",
                "none",
                "--flash-attn",
                "on",
                "--no-webui",
                "--cache-ram",
                "0",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("starting {}: {err}", server.display())),
    );
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client
        .get(format!("{url}/health"))
        .send()
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "the host's llama-server did not become healthy; see {}",
            log_path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let answer: Value = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&greedy_chat())
        .send()
        .and_then(|r| r.json())
        .expect("the host's chat completion");
    drop(engine);
    content(&answer)
}

struct HostEngine(Child);

impl Drop for HostEngine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The image: from the environment, or where `cargo xtask image` puts it.
fn test_image() -> PathBuf {
    let out = workspace_root().join("out");
    let name = format!("hellas-{}-qemu-test", image_version());
    let image = env::var_os("HELLAS_TEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| out.join(format!("{name}.img")));
    assert!(
        image.is_file(),
        "the qemu-test image is missing: run `cargo xtask image --profile qemu-test` (or `cargo xtask test`, which builds it); looked for {}",
        image.display()
    );
    image
}

/// `[image] version` from image/hellas.toml, read without a TOML parser.
fn image_version() -> String {
    let spec = workspace_root().join("image/hellas.toml");
    let text =
        fs::read_to_string(&spec).unwrap_or_else(|err| panic!("reading {}: {err}", spec.display()));
    version_in_spec(&text)
        .unwrap_or_else(|| panic!("no `version` under [image] in {}", spec.display()))
}

fn version_in_spec(text: &str) -> Option<String> {
    let mut section = "";
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[image]" {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if key.trim() == "version" {
                let value = value.split('#').next()?.trim();
                return Some(value.trim_matches('"').to_string());
            }
        }
    }
    None
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace root")
}

/// `target/system-tests/image-boots`, emptied of an earlier run's files. The target
/// directory is CARGO_TARGET_TMPDIR's parent, wherever CARGO_TARGET_DIR puts it.
fn fresh_artefacts_dir() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target directory");
    let dir = target.join("system-tests/image-boots");
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap_or_else(|err| panic!("removing {}: {err}", dir.display()));
    }
    fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("creating {}: {err}", dir.display()));
    dir
}

pub(crate) fn cache_dir() -> PathBuf {
    match env::var_os("HELLAS_CACHE").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env::var_os("HOME").expect("HOME is set")).join(".cache/hellas"),
    }
}

#[test]
fn the_claim_code_is_found_among_other_console_lines() {
    let console = "Starting x - Hellas claim code: shown below\nHellas claim code: AB2C-D3EF (open http://hellas.local/)\n";
    assert_eq!(claim_code_in(console).as_deref(), Some("AB2C-D3EF"));
    assert_eq!(claim_code_in("Hellas claim code: shown"), None);
}

#[test]
fn the_image_version_is_read_from_the_image_section() {
    let spec = "default_profile = \"x\"\n[debian]\nversion = \"no\"\n[image]\nname = \"hellas\"\nversion = \"0.1.0\" # why\n[kernel]\n";
    assert_eq!(version_in_spec(spec).as_deref(), Some("0.1.0"));
    assert_eq!(version_in_spec("[image]\nname = \"hellas\"\n"), None);
}
