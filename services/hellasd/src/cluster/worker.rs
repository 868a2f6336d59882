//! The RPC worker: Debian's ggml-rpc-server, run while this box has paired peers, so that a
//! peer's llama-server can place layers in this box's memory. It listens on every address (a
//! peer may come over the LAN or a direct cable), fenced by the firewall to the paired peers'
//! addresses; restarted when it exits.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::config::ClusterConfig;
use crate::sandbox::Sandbox;

pub struct Worker {
    config: ClusterConfig,
    endpoint: SocketAddr,
    child: Mutex<Option<u32>>,
    wanted: tokio::sync::watch::Sender<bool>,
    /// What the worker may touch: nothing but the system's libraries, its scratch directory
    /// and its own port; it connects nowhere.
    sandbox: Sandbox,
}

impl Worker {
    pub fn new(config: ClusterConfig, endpoint: SocketAddr, sandbox: Sandbox) -> Worker {
        Worker {
            sandbox: Sandbox { bind: vec![endpoint.port()], ..sandbox },
            config,
            endpoint,
            child: Mutex::new(None),
            wanted: tokio::sync::watch::channel(false).0,
        }
    }

    /// The worker's endpoint while it runs.
    pub fn running(&self) -> Option<SocketAddr> {
        self.child.lock().unwrap().map(|_| self.endpoint)
    }

    /// Starts or stops the worker; the supervising task does the work.
    pub fn want(&self, running: bool) {
        self.wanted
            .send_if_modified(|w| std::mem::replace(w, running) != running);
    }

    /// Kills the running worker, which [`Worker::supervise`] then starts again. A
    /// ggml-rpc-server serves one client at a time, and a client whose link went away (a pulled
    /// cable) leaves it waiting on a connection that never ends, so no one else gets in.
    pub fn restart(&self, why: &str) {
        if let Some(pid) = *self.child.lock().unwrap() {
            tracing::warn!(why, "restarting the RPC worker");
            // SAFETY: kill(2) on our own child's pid, cleared as soon as the child is reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }

    /// Runs the worker whenever it is wanted, until hellasd stops.
    pub async fn supervise(&self) {
        let mut wanted = self.wanted.subscribe();
        loop {
            if !*wanted.borrow_and_update() {
                if wanted.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let mut child = match self.spawn() {
                Ok(child) => child,
                Err(e) => {
                    tracing::error!("RPC worker: {e:#}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            *self.child.lock().unwrap() = child.id();
            tracing::info!(endpoint = %self.endpoint, pid = child.id(), "RPC worker started");
            let stop = loop {
                tokio::select! {
                    exit = child.wait() => break Err(exit),
                    changed = wanted.changed() => {
                        if changed.is_err() || !*wanted.borrow() {
                            break Ok(());
                        }
                    }
                }
            };
            *self.child.lock().unwrap() = None;
            match stop {
                Ok(()) => {
                    let _ = child.kill().await;
                    tracing::info!("RPC worker stopped: no paired peers");
                }
                Err(exit) => {
                    tracing::warn!(?exit, "RPC worker exited; restarting it");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    fn spawn(&self) -> Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new(&self.config.rpc_server);
        cmd.args([
            "--host",
            &self.endpoint.ip().to_string(),
            "--port",
            &self.endpoint.port().to_string(),
        ]);
        if let Some(threads) = self.config.rpc_threads {
            cmd.args(["--threads", &threads.to_string()]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // The sandbox also ties the worker's life to hellasd's, whose firewall and pairing are
        // what make it safe to run.
        let confined = self.sandbox.confine(&mut cmd).context("sandboxing the RPC worker")?;
        if let Some(shortfall) = confined.shortfall() {
            tracing::warn!("RPC worker sandbox incomplete: {shortfall}");
        }
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (set cluster.rpc_server)",
                self.config.rpc_server.display()
            )
        })?;
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child.stderr.take().map(|s| Box::new(s) as _),
        ]
        .into_iter()
        .flatten()
        {
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "rpc_worker", "{line}");
                }
            });
        }
        Ok(child)
    }
}
