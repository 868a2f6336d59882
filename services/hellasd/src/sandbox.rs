//! The sandbox every engine (llama-server) and RPC worker (ggml-rpc-server) runs in.
//!
//! Both are large C++ programs that parse files from the internet and, for RPC, bytes from the
//! network, so each is started as if it were already exploited:
//! - no capabilities: the ambient and inheritable sets cleared and the bounding set emptied
//!   (hellasd's own CAP_NET_ADMIN and CAP_NET_BIND_SERVICE stay with hellasd), and
//!   `no_new_privs`, so no setuid or file-capability binary gives any back;
//! - Landlock: it reads and executes the system's programs and libraries, reads `/proc`, `/sys`
//!   and its own model files, uses the GPU's device nodes, writes only to its scratch directory,
//!   binds only its own TCP port, connects only to the ports it is given (a split model's RPC
//!   peers), and cannot signal processes or reach abstract sockets outside its sandbox.
//!
//! What the kernel's Landlock lacks is left out with a logged warning rather than refusing to
//! run: a box on an older kernel still serves, and says what it is not protected from.
//!
//! The ruleset is built here, in hellasd; the child only applies it between fork and exec,
//! with raw system calls (nothing there may allocate or take a lock).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use landlock::{
    Access, AccessFs, AccessNet, BitFlags, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope,
    ABI,
};

/// The Landlock rights asked for; a kernel with an older ABI enforces what it knows.
/// V6: file access with device ioctls (V5), TCP bind and connect (V4), signal and abstract
/// socket scoping (V6).
const TARGET: ABI = ABI::V6;

/// System paths any engine reads and executes from (its binary, libraries, Vulkan drivers).
const SYSTEM_READ: &[&str] = &["/usr", "/lib", "/lib64", "/bin", "/sbin"];
/// Files from /etc the loader, libc and the Vulkan loader read; the rest of /etc (host keys,
/// network secrets) stays out of reach.
const ETC_READ: &[&str] = &["/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/vulkan", "/etc/drirc"];
/// Read-only pseudo file systems: CPU topology, memory and the GPU's description. Other
/// processes' sensitive /proc files stay closed: Landlock refuses to trace out of the sandbox.
const KERNEL_READ: &[&str] = &["/proc", "/sys", "/dev/urandom", "/dev/random", "/dev/zero"];
/// The GPU's device nodes (render nodes for Vulkan, kfd for ROCm): read, write and ioctl.
const DEVICES: &[&str] = &["/dev/dri", "/dev/kfd"];

/// What one engine or worker may touch.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    /// Directories or files it may read and execute beyond the system's (a llama.cpp build
    /// outside /usr: `sandbox.read_only`).
    pub read_exec: Vec<PathBuf>,
    /// Files it may read: its model and projector.
    pub read: Vec<PathBuf>,
    /// Its scratch directory, the only place it writes: made if missing, given as HOME's
    /// stand-ins (TMPDIR, XDG_CACHE_HOME) so Mesa's shader cache lands there.
    pub scratch: PathBuf,
    /// TCP ports it may bind.
    pub bind: Vec<u16>,
    /// TCP ports it may connect to.
    pub connect: Vec<u16>,
}

/// How much of the sandbox this kernel enforces.
#[derive(Debug)]
pub struct Enforcement {
    pub landlock: RulesetStatus,
    /// Whether the bounding set could be emptied (hellasd holds CAP_SETPCAP, or runs as root).
    pub bounding_set_emptied: bool,
}

impl Enforcement {
    /// In words, for `/api/ps` and `hellasd ps`.
    pub fn describe(&self) -> String {
        match self.shortfall() {
            None => "sandboxed: no capabilities, Landlock fully enforced".into(),
            Some(shortfall) => format!("partly sandboxed: {shortfall}"),
        }
    }

    /// One line for the journal; `None` when everything is enforced.
    pub fn shortfall(&self) -> Option<String> {
        let mut missing = Vec::new();
        match self.landlock {
            RulesetStatus::FullyEnforced => {}
            RulesetStatus::PartiallyEnforced => missing.push(
                "this kernel's Landlock enforces only part of the sandbox (Linux 6.12 or later enforces all of it: TCP ports, device ioctls, signals)",
            ),
            RulesetStatus::NotEnforced => missing.push("this kernel has no Landlock, so file and network access is not confined (enable CONFIG_SECURITY_LANDLOCK and lsm=landlock)"),
        }
        if !self.bounding_set_emptied {
            missing.push("the capability bounding set is left as is because hellasd lacks CAP_SETPCAP (no_new_privs still keeps the child from gaining any)");
        }
        (!missing.is_empty()).then(|| missing.join("; "))
    }
}

impl Sandbox {
    /// Confines the command: it will start with no capabilities, `no_new_privs`, and this
    /// Landlock ruleset, in `/` with its scratch directory for temporary files and caches. It
    /// also dies with hellasd (no engine may outlive the daemon that fences and accounts for it).
    pub fn confine(&self, cmd: &mut tokio::process::Command) -> Result<Enforcement> {
        std::fs::create_dir_all(&self.scratch).with_context(|| format!("creating the engines' scratch directory {}", self.scratch.display()))?;
        let ruleset = self.ruleset().context("building the engine's Landlock ruleset")?;
        let landlock = enforcement(&ruleset)?;
        let ruleset: Option<OwnedFd> = ruleset.into();
        let drop_bounding = holds_setpcap();
        // The child's HOME leads nowhere: Vulkan layers or a llama.cpp configuration planted in
        // a writable home would run in the next engine.
        cmd.current_dir("/")
            .env("HOME", "/nonexistent")
            .env("TMPDIR", &self.scratch)
            .env("XDG_CACHE_HOME", &self.scratch);
        // SAFETY: between fork and exec only raw system calls run, each async-signal-safe; the
        // ruleset descriptor is owned by the closure, which lives as long as the command.
        unsafe {
            cmd.pre_exec(move || {
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
                check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))?;
                if drop_bounding {
                    for cap in 0..64 {
                        // EINVAL past the kernel's last capability.
                        if libc::prctl(libc::PR_CAPBSET_DROP, cap) != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                }
                clear_inheritable()?;
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
                if let Some(fd) = &ruleset {
                    check(libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0) as libc::c_int)?;
                }
                Ok(())
            });
        }
        Ok(Enforcement { landlock, bounding_set_emptied: drop_bounding })
    }

    fn ruleset(&self) -> Result<RulesetCreated> {
        let read_exec = AccessFs::from_read(TARGET);
        let read_file = AccessFs::ReadFile | AccessFs::Execute;
        let devices = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::ReadDir | AccessFs::IoctlDev;
        let scratch = AccessFs::from_all(TARGET) & !(AccessFs::Execute | AccessFs::MakeChar | AccessFs::MakeBlock);
        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(TARGET))?
            .handle_access(AccessNet::from_all(TARGET))?
            .scope(Scope::from_all(TARGET))?
            .create()?;
        let system = SYSTEM_READ.iter().chain(ETC_READ).chain(KERNEL_READ).map(PathBuf::from);
        for path in system.chain(self.read_exec.iter().cloned()) {
            ruleset = allow_if_present(ruleset, &path, read_exec)?;
        }
        for path in DEVICES {
            ruleset = allow_if_present(ruleset, Path::new(path), devices)?;
        }
        ruleset = allow(ruleset, Path::new("/dev/null"), AccessFs::ReadFile | AccessFs::WriteFile)?;
        for path in &self.read {
            ruleset = allow(ruleset, path, read_file)?;
        }
        ruleset = allow(ruleset, &self.scratch, scratch)?;
        for &port in &self.bind {
            ruleset = ruleset.add_rule(NetPort::new(port, AccessNet::BindTcp))?;
        }
        for &port in &self.connect {
            ruleset = ruleset.add_rule(NetPort::new(port, AccessNet::ConnectTcp))?;
        }
        Ok(ruleset)
    }
}

fn allow(ruleset: RulesetCreated, path: &Path, access: BitFlags<AccessFs>) -> Result<RulesetCreated> {
    let fd = PathFd::new(path).with_context(|| format!("opening {} for the sandbox", path.display()))?;
    // A file takes only the file rights of the set (no listing or making entries in it).
    let access = if path.is_dir() { access } else { access & AccessFs::from_file(TARGET) };
    Ok(ruleset.add_rule(PathBeneath::new(fd, access))?)
}

fn allow_if_present(ruleset: RulesetCreated, path: &Path, access: BitFlags<AccessFs>) -> Result<RulesetCreated> {
    if path.exists() {
        allow(ruleset, path, access)
    } else {
        Ok(ruleset)
    }
}

/// What the kernel will enforce of this ruleset, learnt by applying a copy of it to a thread
/// that exists only for that (Landlock confines the calling thread alone) and then ends.
fn enforcement(ruleset: &RulesetCreated) -> Result<RulesetStatus> {
    let copy = ruleset.try_clone().context("duplicating the Landlock ruleset")?;
    let status = std::thread::spawn(move || copy.restrict_self().map(|status| status.ruleset)).join().map_err(|_| anyhow::anyhow!("the Landlock check panicked"))?;
    status.context("applying the Landlock ruleset")
}

/// linux/capability.h
const CAP_SETPCAP: u32 = 8;

/// Whether this process may empty a child's bounding set: CAP_SETPCAP in its effective set.
fn holds_setpcap() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|effective| effective & (1 << CAP_SETPCAP) != 0)
}

fn check(ret: libc::c_int) -> std::io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Empties the inheritable set (capset with the permitted and effective sets as they are), so
/// that a root parent's exec gives nothing through it. Async-signal-safe.
fn clear_inheritable() -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header { version: VERSION_3, pid: 0 };
    let mut data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capget/capset with a version-3 header read and write two data structs.
    unsafe {
        check(libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) as libc::c_int)?;
        for d in &mut data {
            d.inheritable = 0;
        }
        check(libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) as libc::c_int)
    }
}
