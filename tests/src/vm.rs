//! Boots a Hellas disk image under QEMU: q35 with OVMF, the image behind a qcow2 overlay so
//! that it is never written, the guest's API, web and SSH ports forwarded to 127.0.0.1, the console
//! (ttyS0) in a log file and the guest's boot report on ttyS1. Readiness comes from that
//! report, one JSON line, never from console text. QEMU dies with its `Vm`, and with the
//! thread that booted it, so a failed or killed test leaves no guest running.

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use std::{fmt, thread};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub const QEMU: &str = "qemu-system-x86_64";
pub const QEMU_IMG: &str = "qemu-img";
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// hellasd's OpenAI-compatible API in the guest.
pub const GUEST_API_PORT: u16 = 8080;
/// The web setup in the guest.
pub const GUEST_WEB_PORT: u16 = 80;
/// The web pages over HTTPS in the guest.
pub const GUEST_HTTPS_PORT: u16 = 443;
/// The qemu-test image's Wi-Fi lab (hellas-wifi-lab): the box's web pages reached from its
/// "phone" across the setup hotspot (HTTP, HTTPS).
pub const GUEST_PHONE_WEB_PORT: u16 = 9080;
pub const GUEST_PHONE_HTTPS_PORT: u16 = 9443;
/// Disk the guest sees beyond the image, for the data partition to grow into on first boot.
pub const EXTRA_DISK_BYTES: u64 = 2 << 30;
/// How much of the console an error shows.
const CONSOLE_TAIL_LINES: usize = 60;

// The files of one run, in `Options::run_dir`.
const OVERLAY: &str = "overlay.qcow2";
const VARS: &str = "ovmf-vars.fd";
const CONSOLE: &str = "console.log";
const REPORT: &str = "ttyS1.log";
const QEMU_LOG: &str = "qemu.log";
const QMP: &str = "qmp.sock";
const INTERNAL_DISK: &str = "internal.qcow2";

#[derive(Debug, Clone)]
pub struct Options {
    /// Where the overlay, firmware variables, logs and QMP socket go.
    pub run_dir: PathBuf,
    /// The console on this terminal (Ctrl-A X quits QEMU) as well as in the log, and the guest
    /// may reboot. Otherwise a reboot ends QEMU, so that a boot loop fails fast.
    pub interactive: bool,
    /// Let a non-interactive guest reboot (the update tests do).
    pub reboots: bool,
    /// A second, blank disk of this many bytes: the box's internal disk (`/dev/vdb`).
    pub internal_disk_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// A running guest. Dropping it kills QEMU.
pub struct Vm {
    qemu: Child,
    /// How QEMU was started, for `restart`.
    args: Vec<std::ffi::OsString>,
    interactive: bool,
    /// QEMU processes started before this one (each restart keeps the last one's logs).
    restarts: usize,
    run_dir: PathBuf,
    accel: Accel,
    api_port: u16,
    web_port: u16,
    https_port: u16,
    ssh_port: u16,
    /// The Wi-Fi lab's ways in: phone HTTP, phone HTTPS.
    lab_ports: [u16; 2],
}

impl Vm {
    /// Starts QEMU on `image` and returns as soon as it runs; `wait_report` says when the
    /// guest is up.
    pub fn boot(image: &Path, options: &Options) -> Result<Vm> {
        for firmware in [OVMF_CODE, OVMF_VARS] {
            if !Path::new(firmware).is_file() {
                bail!("{firmware} is missing: install OVMF (`cargo xtask deps`)");
            }
        }
        let run_dir = prepare_run_dir(&options.run_dir)?;
        let overlay = run_dir.join(OVERLAY);
        create_overlay(image, &overlay)?;
        let vars = run_dir.join(VARS);
        fs::copy(OVMF_VARS, &vars)
            .with_context(|| format!("copying {OVMF_VARS} to {}", vars.display()))?;
        let accel = pick_accel(&run_dir)?;
        let [api_port, web_port, https_port, ssh_port, phone_web, phone_https] = free_ports()?;

        let mut qemu = qemu_command();
        qemu.args(
            "-name hellas -machine q35 -cpu max -smp 2 -m 3G -nodefaults -display none".split(' '),
        );
        qemu.args(["-accel", &accel.to_string()]);
        qemu.args(firmware(&vars));
        qemu.arg("-drive").arg(format!(
            "if=none,id=disk,format=qcow2,file={}",
            option_path(&overlay)
        ));
        qemu.args(["-device", "virtio-blk-pci,drive=disk"]);
        if let Some(bytes) = options.internal_disk_bytes {
            let internal = run_dir.join(INTERNAL_DISK);
            run_qemu_img(Command::new(QEMU_IMG).args(["create", "-q", "-f", "qcow2"]).arg(&internal).arg(bytes.to_string()))?;
            qemu.arg("-drive").arg(format!("if=none,id=internal,format=qcow2,file={}", option_path(&internal)));
            qemu.args(["-device", "virtio-blk-pci,drive=internal"]);
        }
        qemu.arg("-netdev").arg(format!(
            "user,id=net,hostfwd=tcp:127.0.0.1:{api_port}-:{GUEST_API_PORT},hostfwd=tcp:127.0.0.1:{web_port}-:{GUEST_WEB_PORT},hostfwd=tcp:127.0.0.1:{https_port}-:{GUEST_HTTPS_PORT},hostfwd=tcp:127.0.0.1:{ssh_port}-:22,\
             hostfwd=tcp:127.0.0.1:{phone_web}-:{GUEST_PHONE_WEB_PORT},hostfwd=tcp:127.0.0.1:{phone_https}-:{GUEST_PHONE_HTTPS_PORT}"
        ));
        qemu.args(["-device", "virtio-net-pci,netdev=net"]);
        // A second wired port with a cable to nothing that answers DHCP, as a dedicated cable to
        // another box is: it must get a link-local address without holding up the boot.
        qemu.args(["-netdev", "hubport,id=cable,hubid=1", "-device", "virtio-net-pci,netdev=cable"]);
        let console = option_path(&run_dir.join(CONSOLE));
        if options.interactive {
            // The terminal and the monitor share stdio (Ctrl-A X quits, Ctrl-A C is the
            // monitor); Ctrl-C goes to the guest. The console is logged all the same.
            qemu.arg("-chardev").arg(format!(
                "stdio,id=console,mux=on,signal=off,logfile={console}"
            ));
            qemu.args(["-mon", "chardev=console,mode=readline"]);
        } else {
            qemu.arg("-chardev")
                .arg(format!("file,id=console,path={console}"));
            if !options.reboots {
                qemu.arg("-no-reboot");
            }
        }
        qemu.args(["-serial", "chardev:console"]);
        qemu.arg("-chardev").arg(format!(
            "file,id=report,path={}",
            option_path(&run_dir.join(REPORT))
        ));
        qemu.args(["-serial", "chardev:report"]);
        let qmp = option_path(&run_dir.join(QMP));
        qemu.arg("-chardev")
            .arg(format!("socket,id=qmp,path={qmp},server=on,wait=off"));
        qemu.args(["-mon", "chardev=qmp,mode=control"]);
        // Lets a guest end the run with a status of its own choosing, as test guests may.
        qemu.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        let args: Vec<std::ffi::OsString> = qemu.get_args().map(|a| a.to_os_string()).collect();
        let qemu = spawn(args.clone(), &run_dir, options.interactive)?;
        Ok(Vm {
            qemu,
            args,
            interactive: options.interactive,
            restarts: 0,
            run_dir,
            accel,
            api_port,
            web_port,
            https_port,
            ssh_port,
            lab_ports: [phone_web, phone_https],
        })
    }

    /// Pulls the plug: QEMU is killed at once, as a power cut would stop the box.
    pub fn pull_the_plug(&mut self) {
        self.kill();
    }

    /// Starts QEMU again on the same disk, firmware variables and ports (after a power cut or
    /// a power-off); the last run's console and report move to `console.<n>.log` and
    /// `ttyS1.<n>.log`.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.restarts += 1;
        for name in [CONSOLE, REPORT] {
            let (stem, ext) = name.rsplit_once('.').expect("log names have an extension");
            let kept = self.run_dir.join(format!("{stem}.{}.{ext}", self.restarts));
            if self.run_dir.join(name).exists() {
                fs::rename(self.run_dir.join(name), &kept).with_context(|| format!("keeping {}", kept.display()))?;
            }
        }
        remove_if_present(&self.run_dir.join(QMP))?;
        self.qemu = spawn(self.args.clone(), &self.run_dir, self.interactive)?;
        Ok(())
    }

    /// Powers the guest off hard, takes the stick (the image's disk) out, and starts it again:
    /// it boots from the internal disk now.
    pub fn remove_stick_and_restart(&mut self) -> Result<()> {
        let stick = self.args.iter().position(|a| a.to_string_lossy().starts_with("if=none,id=disk,")).context("no stick attached")?;
        let device = self.args.iter().position(|a| a == "virtio-blk-pci,drive=disk").context("no stick attached")?;
        for at in [device, stick] {
            self.args.drain(at - 1..=at);
        }
        self.restart()
    }

    /// Waits for a boot report (a JSON object on ttyS1, one per boot) after the first `skip`
    /// that `wanted` accepts.
    pub fn wait_report_where(&mut self, timeout: Duration, what: &str, skip: usize, wanted: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let found = |vm: &Vm| -> Result<Option<Value>> { Ok(vm.reports()?.into_iter().skip(skip).find(&wanted)) };
        loop {
            if let Some(report) = found(self)? {
                return Ok(report);
            }
            if let Some(status) = self.qemu.try_wait().context("checking on QEMU")? {
                if let Some(report) = found(self)? {
                    return Ok(report);
                }
                bail!("QEMU exited ({status}) before a boot report {what}; reports: {:?}\n{}", self.reports()?, self.diagnostics());
            }
            if Instant::now() >= deadline {
                bail!("no boot report {what} within {} s; reports: {:?}\n{}", timeout.as_secs(), self.reports()?, self.diagnostics());
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// Every complete boot report on ttyS1 since QEMU started.
    pub fn reports(&self) -> Result<Vec<Value>> {
        let path = self.run_dir.join(REPORT);
        let text = match fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let Some(end) = text.rfind('\n') else { return Ok(vec![]) };
        Ok(text[..end].lines().filter_map(|line| serde_json::from_str::<Value>(line.trim()).ok()).filter(Value::is_object).collect())
    }

    /// Waits for the guest's boot report, the first JSON object written to ttyS1.
    pub fn wait_report(&mut self, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(report) = self.report()? {
                return Ok(report);
            }
            if let Some(status) = self.qemu.try_wait().context("checking on QEMU")? {
                // QEMU flushes ttyS1 as it exits.
                if let Some(report) = self.report()? {
                    return Ok(report);
                }
                bail!(
                    "QEMU exited ({status}) before the guest's boot report\n{}",
                    self.diagnostics()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "no boot report on ttyS1 within {} s\n{}",
                    timeout.as_secs(),
                    self.diagnostics()
                );
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// The first complete JSON object on ttyS1, if the guest has written one yet.
    fn report(&self) -> Result<Option<Value>> {
        let path = self.run_dir.join(REPORT);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        Ok(first_json_object(&String::from_utf8_lossy(&bytes)))
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    pub fn web_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.web_port)
    }

    /// The web pages over HTTPS (the box's self-signed certificate), forwarded.
    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.https_port)
    }

    /// The box's web pages as the Wi-Fi lab's phone reaches them, over the setup hotspot.
    pub fn phone_web_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.lab_ports[0])
    }

    /// The same over HTTPS.
    pub fn phone_https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.lab_ports[1])
    }

    /// The guest's SSH port, forwarded.
    pub fn ssh_addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.ssh_port).into()
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The guest's console (ttyS0) as QEMU logged it.
    pub fn console_log(&self) -> PathBuf {
        self.run_dir.join(CONSOLE)
    }

    /// The last `lines` lines of the console.
    pub fn console_tail(&self, lines: usize) -> String {
        tail(&self.console_log(), lines)
    }

    /// The console tail, the raw ttyS1 output and QEMU's own messages, for an error.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- last {CONSOLE_TAIL_LINES} console lines ({}):\n{}\n--- ttyS1 ({}):\n{}\n--- QEMU ({}):\n{}",
            self.console_log().display(),
            self.console_tail(CONSOLE_TAIL_LINES),
            self.run_dir.join(REPORT).display(),
            tail(&self.run_dir.join(REPORT), 10),
            self.run_dir.join(QEMU_LOG).display(),
            tail(&self.run_dir.join(QEMU_LOG), 20),
        )
    }

    /// Waits for QEMU to end on its own (a person quitting, the guest powering off).
    pub fn wait(&mut self) -> Result<ExitStatus> {
        self.qemu.wait().context("waiting for QEMU")
    }

    /// Presses the guest's power button (every 20 s until it listens) and waits up to `timeout`
    /// for QEMU to exit; past that QEMU is killed and this is an error.
    pub fn power_off(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.qemu.try_wait().context("checking on QEMU")? {
            return Ok(status);
        }
        let deadline = Instant::now() + timeout;
        // A press early in boot, before logind watches the button, is lost: press again now and
        // then until the guest goes down.
        while Instant::now() < deadline {
            if let Err(err) = self.qmp("system_powerdown") {
                // QEMU may have exited between the check and the command.
                if let Some(status) = self.qemu.try_wait().context("checking on QEMU")? {
                    return Ok(status);
                }
                return Err(err);
            }
            let press_again = Instant::now() + Duration::from_secs(20);
            while Instant::now() < press_again.min(deadline) {
                if let Some(status) = self.qemu.try_wait().context("checking on QEMU")? {
                    return Ok(status);
                }
                thread::sleep(Duration::from_millis(200));
            }
        }
        self.kill();
        bail!(
            "the guest did not power off within {} s of the power button; QEMU was killed\n{}",
            timeout.as_secs(),
            self.diagnostics()
        )
    }

    /// Runs one QMP command without arguments and returns its result.
    fn qmp(&self, command: &str) -> Result<Value> {
        let path = self.run_dir.join(QMP);
        let stream = UnixStream::connect(&path)
            .with_context(|| format!("connecting to QEMU's QMP socket {}", path.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        qmp.next_message().context("reading QMP's greeting")?;
        qmp.execute("qmp_capabilities")?;
        qmp.execute(command)
    }

    fn kill(&mut self) {
        if let Ok(None) = self.qemu.try_wait() {
            let _ = self.qemu.kill();
        }
        let _ = self.qemu.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A QMP connection: one JSON message a line each way.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn next_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("QEMU closed the QMP connection");
        }
        serde_json::from_str(&line).with_context(|| format!("QMP sent {line:?}"))
    }

    fn execute(&mut self, command: &str) -> Result<Value> {
        writeln!(self.writer, "{}", serde_json::json!({ "execute": command }))
            .with_context(|| format!("sending QMP {command}"))?;
        // Events may come before the answer.
        loop {
            let message = self
                .next_message()
                .with_context(|| format!("reading QMP's answer to {command}"))?;
            if let Some(error) = message.get("error") {
                bail!("QMP {command} failed: {error}");
            }
            if let Some(result) = message.get("return") {
                return Ok(result.clone());
            }
        }
    }
}

/// Starts QEMU with `args`, its output in the run's log unless a person watches.
fn spawn(args: Vec<std::ffi::OsString>, run_dir: &Path, interactive: bool) -> Result<Child> {
    let mut qemu = qemu_command();
    qemu.args(args);
    if !interactive {
        let log = run_dir.join(QEMU_LOG);
        let log = OpenOptions::new().create(true).append(true).open(&log).with_context(|| format!("opening {}", log.display()))?;
        qemu.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    }
    qemu.spawn().with_context(|| format!("starting {QEMU} (is QEMU installed? `cargo xtask deps`)"))
}

/// Creates `dir` and clears the files of an earlier run from it: a report left there would
/// read as this guest's.
fn prepare_run_dir(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    for name in [OVERLAY, VARS, CONSOLE, REPORT, QEMU_LOG, QMP, INTERNAL_DISK] {
        remove_if_present(&dir.join(name))?;
    }
    if dir.join(QMP).as_os_str().len() >= 108 {
        bail!(
            "{} is too long a path for QEMU's QMP socket; use a shorter run directory",
            dir.join(QMP).display()
        );
    }
    Ok(dir)
}

/// A qcow2 overlay on `image`, EXTRA_DISK_BYTES larger, that takes every write of the guest.
fn create_overlay(image: &Path, overlay: &Path) -> Result<()> {
    let image = image
        .canonicalize()
        .with_context(|| format!("opening the image {}", image.display()))?;
    let bytes = fs::metadata(&image)
        .with_context(|| format!("reading the size of {}", image.display()))?
        .len();
    let mut create = Command::new(QEMU_IMG);
    create.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"]);
    create
        .arg(&image)
        .arg(overlay)
        .arg((bytes + EXTRA_DISK_BYTES).to_string());
    run_qemu_img(&mut create)
}

fn run_qemu_img(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .with_context(|| format!("running {shown} (is QEMU installed? `cargo xtask deps`)"))?;
    if !output.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The OVMF code (read-only) and variables drives.
fn firmware(vars: &Path) -> [String; 4] {
    [
        "-drive".into(),
        format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            option_path(Path::new(OVMF_CODE))
        ),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", option_path(vars)),
    ]
}

/// QEMU, set to be killed when the thread that starts it ends.
fn qemu_command() -> Command {
    let mut command = Command::new(QEMU);
    // SAFETY: prctl is async-signal-safe, as code between fork and exec must be.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// KVM when /dev/kvm opens and runs the firmware, else TCG. Some nested hosts offer a
/// /dev/kvm that fails on OVMF's first instructions ("KVM internal error"), which leaves
/// the guest paused for good; so the firmware gets two seconds on KVM first.
fn pick_accel(run_dir: &Path) -> Result<Accel> {
    if OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Ok(Accel::Tcg);
    }
    let vars = run_dir.join("kvm-probe-vars.fd");
    fs::copy(OVMF_VARS, &vars)
        .with_context(|| format!("copying {OVMF_VARS} to {}", vars.display()))?;
    let status = firmware_status_on_kvm(&vars);
    remove_if_present(&vars)?;
    let status = status?;
    if status == "running" {
        return Ok(Accel::Kvm);
    }
    eprintln!("vm: /dev/kvm does not run the firmware (QEMU status {status:?}); using TCG");
    Ok(Accel::Tcg)
}

/// Runs OVMF alone on KVM for two seconds and returns QEMU's run state ("running" when fine).
fn firmware_status_on_kvm(vars: &Path) -> Result<String> {
    let mut probe = qemu_command();
    probe.args("-machine q35 -accel kvm -cpu max -m 256M -nodefaults -display none".split(' '));
    probe.args(firmware(vars));
    probe.args(["-qmp", "stdio"]);
    probe
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = probe
        .spawn()
        .with_context(|| format!("starting {QEMU} (is QEMU installed? `cargo xtask deps`)"))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let asked = (|| -> io::Result<()> {
        writeln!(stdin, r#"{{"execute":"qmp_capabilities"}}"#)?;
        thread::sleep(Duration::from_secs(2));
        writeln!(stdin, r#"{{"execute":"query-status"}}"#)?;
        writeln!(stdin, r#"{{"execute":"quit"}}"#)
    })();
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut output = String::new();
    child
        .stdout
        .take()
        .expect("stdout is piped")
        .read_to_string(&mut output)?;
    if let Err(err) = asked {
        return Ok(format!("QMP on stdio failed: {err}"));
    }
    Ok(output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find_map(|answer| answer["return"]["status"].as_str().map(String::from))
        .unwrap_or_else(|| "unknown".into()))
}

/// The first complete line of `text` that is a JSON object. The firmware writes to every
/// serial port, so other lines come first; the last line may still be arriving.
fn first_json_object(text: &str) -> Option<Value> {
    let complete = &text[..text.rfind('\n')?];
    complete
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
        .find(Value::is_object)
}

/// Loopback ports that are free now, held together so that they differ.
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("finding a free port"))
        .collect::<Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// A path inside a QEMU option value, where a comma separates options unless doubled.
fn option_path(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The last `lines` lines of a text file, or a note that it could not be read.
fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("({err})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_is_the_first_complete_json_object() {
        let firmware = "\x1b[2J\x1b[01;01HBdsDxe: starting Boot0001 \"UEFI Misc Device\"\r\n";
        assert_eq!(first_json_object(firmware), None);
        let partial = format!("{firmware}{{\"state\":\"running\"");
        assert_eq!(first_json_object(&partial), None);
        let done = format!("{partial},\"hellasd\":\"active\"}}\r\n");
        assert_eq!(
            first_json_object(&done),
            Some(serde_json::json!({"state": "running", "hellasd": "active"}))
        );
    }

    #[test]
    fn commas_in_paths_are_doubled_for_qemu() {
        assert_eq!(
            option_path(Path::new("/tmp/a,b/disk.img")),
            "/tmp/a,,b/disk.img"
        );
        assert_eq!(option_path(Path::new("/tmp/plain")), "/tmp/plain");
    }
}
