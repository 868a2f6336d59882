//! The servers a bench starts: each is stopped when its guard is dropped, whether the bench
//! finished or failed, so no run leaves a server behind.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use std::{env, fs, process, thread};

use anyhow::{bail, Context, Result};
use duct::cmd;

use super::chat;
use crate::cache;

/// A port nobody listens on now (the kernel's pick; it could be taken again before use, which
/// on a loopback-only bench is unlikely enough).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A server the bench started. Dropping it stops it: SIGTERM (on which hellasd stops its
/// engines), then SIGKILL if it still runs 10 s later.
pub struct Server {
    name: &'static str,
    handle: duct::Handle,
    log: PathBuf,
}

impl Server {
    pub fn start(
        name: &'static str,
        program: OsString,
        args: Vec<OsString>,
        log: PathBuf,
    ) -> Result<Server> {
        // duct applies the outer redirection first: stdout goes to the log, then stderr joins it.
        let handle = cmd(&program, args)
            .stdin_null()
            .stderr_to_stdout()
            .stdout_path(&log)
            .unchecked()
            .start()
            .with_context(|| format!("starting {}", Path::new(&program).display()))?;
        Ok(Server { name, handle, log })
    }

    pub fn pid(&self) -> u32 {
        self.handle.pids()[0]
    }

    pub fn wait_healthy(&self, agent: &ureq::Agent, base: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !chat::healthy(agent, base) {
            if let Some(output) = self.handle.try_wait()? {
                bail!(
                    "{} exited ({}) before it was healthy:\n{}",
                    self.name,
                    output.status,
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer {base}/health within {timeout:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Fails, with the end of its log, if the server has exited.
    pub fn ensure_running(&self) -> Result<()> {
        if let Some(output) = self.handle.try_wait()? {
            bail!(
                "{} exited ({}):\n{}",
                self.name,
                output.status,
                self.log_tail()
            );
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops the server and says how it ended.
    pub fn stop(&mut self) -> Result<String> {
        if let Some(output) = self.handle.try_wait()? {
            return Ok(format!("had exited by itself ({})", output.status));
        }
        let pid = self.pid().to_string();
        cmd!("kill", "-TERM", &pid)
            .run()
            .with_context(|| format!("`kill -TERM {pid}` failed"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(output) = self.handle.try_wait()? {
                return Ok(format!("stopped on SIGTERM ({})", output.status));
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.handle.kill()?;
        Ok("ran on 10 s after SIGTERM and was killed".into())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("==> bench: stopping {}: {err:#}", self.name);
        }
    }
}

/// A server's own child (hellasd's engine), killed when dropped if it still runs then:
/// after its parent stopped, or when the bench failed.
pub struct Reaper(pub u32);

impl Drop for Reaper {
    fn drop(&mut self) {
        if is_running(self.0) {
            let _ = cmd!("kill", "-KILL", self.0.to_string())
                .stderr_null()
                .run();
        }
    }
}

/// A bench's temporary directory (config, state, logs), removed when dropped unless kept.
pub struct Scratch {
    pub dir: PathBuf,
    pub keep: bool,
}

impl Scratch {
    pub fn create(name: &str) -> Result<Scratch> {
        let dir = env::temp_dir().join(format!("hellas-bench-{name}-{}", process::id()));
        cache::remove_any(&dir)?;
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch { dir, keep: false })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = cache::remove_any(&self.dir);
        }
    }
}

/// The child of `parent` that runs `binary` (its command line names a path ending in
/// `/binary`): its PID and command line.
pub fn child_command(parent: u32, binary: &str) -> Result<(u32, Vec<String>)> {
    for entry in fs::read_dir("/proc").context("reading /proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(stat), Ok(cmdline)) = (
            fs::read_to_string(format!("/proc/{pid}/stat")),
            fs::read(format!("/proc/{pid}/cmdline")),
        ) else {
            continue;
        };
        // The command name (field 2) may hold spaces or parentheses; nothing after its ')' can.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        let argv: Vec<String> = cmdline
            .split(|&byte| byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        if ppid == Some(parent) && argv.iter().any(|arg| arg.ends_with(&format!("/{binary}"))) {
            return Ok((pid, argv));
        }
    }
    bail!("process {parent} has no child running {binary}")
}

/// The CPU time process `pid` itself has used so far (user and system, its children not
/// included), from /proc/PID/stat in clock ticks of 1/100 s (USER_HZ on Linux).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // utime and stime are fields 14 and 15; the fields after the command name's ')' start at 3.
    let ticks: Option<u64> = stat.rsplit_once(')').and_then(|(_, rest)| {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    });
    let ticks = ticks.with_context(|| format!("{path} holds no CPU times: {stat}"))?;
    Ok(Duration::from_millis(ticks * 10))
}

/// Whether process `pid` exists and has not exited (a zombie has).
pub fn is_running(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}
