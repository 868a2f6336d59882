//! One engine: the llama-server child process of a loaded model, how it is started, watched
//! until healthy, leased to requests, and noticed when it exits.

use std::collections::VecDeque;
use std::ops::Deref;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hellas_model::gguf::ModelKind;
use hellas_model::plan::Plan;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use super::{EngineStatus, Placement, Supervisor, CRASH_MEMORY, RECENT_OUTPUT_LINES, STOP_GRACE};
use crate::library::ModelEntry;
use crate::lines::Lines;
use crate::metrics::Metrics;
use crate::sandbox::Sandbox;

pub struct Engine {
    pub model: String,
    pub sha256: String,
    pub port: u16,
    pub pid: u32,
    pub plan: Plan,
    pub started: Instant,
    status: watch::Sender<EngineStatus>,
    in_flight: AtomicUsize,
    last_used: Mutex<Instant>,
    /// Set when hellasd itself stops the child, so its exit is not counted as a crash.
    stopping: AtomicBool,
    /// Why hellasd killed it, when it did so because of a failure.
    failure: Mutex<Option<String>>,
    recent_output: Mutex<VecDeque<String>>,
    placement: Mutex<Placement>,
    /// How far its sandbox is enforced, in words.
    pub sandbox: String,
    /// How long it may stay idle before it is unloaded, when a request said (Ollama's
    /// `keep_alive`); otherwise `engine.idle_unload_secs`. `Duration::MAX` keeps it.
    keep_alive: Mutex<Option<Duration>>,
}

impl Engine {
    /// Where its model sits, as llama-server's load log says (empty until it has loaded).
    pub fn placement(&self) -> Placement {
        self.placement.lock().unwrap().clone()
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn status(&self) -> EngineStatus {
        self.status.borrow().clone()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Its status once it has exited, or after `limit` if it has not (`Duration::MAX` waits
    /// for good).
    pub async fn exit_within(&self, limit: Duration) -> EngineStatus {
        let mut status = self.status.subscribe();
        let _ = tokio::time::timeout(limit, status.wait_for(|s| matches!(s, EngineStatus::Exited { .. }))).await;
        self.status()
    }

    /// How long it may stay idle, as the last request that said so asked.
    pub fn keep_alive(&self) -> Option<Duration> {
        *self.keep_alive.lock().unwrap()
    }

    pub fn set_keep_alive(&self, keep_alive: Duration) {
        *self.keep_alive.lock().unwrap() = Some(keep_alive);
    }

    pub fn idle_for(&self) -> Duration {
        self.last_used.lock().unwrap().elapsed()
    }

    fn recent_output(&self) -> String {
        self.recent_output.lock().unwrap().iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of our own child, which we reap ourselves, so the pid
        // cannot have been reused while the child is not yet reaped.
        unsafe {
            libc::kill(self.pid as libc::pid_t, signal);
        }
    }
}

/// A model's engine held for one request; keeps it from being unloaded as idle or evicted.
pub struct EngineLease {
    engine: Arc<Engine>,
}

impl EngineLease {
    pub(super) fn new(engine: Arc<Engine>) -> EngineLease {
        engine.in_flight.fetch_add(1, Ordering::SeqCst);
        EngineLease { engine }
    }

    pub(super) async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let mut rx = self.engine.status.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|s| !matches!(s, EngineStatus::Starting))).await;
        match waited {
            Ok(Ok(status)) => match &*status {
                EngineStatus::Ready => Ok(()),
                EngineStatus::Exited { reason } => Err(reason.clone()),
                EngineStatus::Starting => unreachable!(),
            },
            Ok(Err(_)) => Err("engine supervisor went away".into()),
            Err(_) => Err(format!("engine for '{}' not ready after {}s", self.engine.model, timeout.as_secs())),
        }
    }
}

impl Deref for EngineLease {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for EngineLease {
    fn drop(&mut self) {
        *self.engine.last_used.lock().unwrap() = Instant::now();
        self.engine.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) struct CrashHistory {
    pub(super) count: u32,
    pub(super) last: Instant,
}

impl CrashHistory {
    /// No delay for the first crash, then 2 s, 4 s, … up to a minute.
    pub(super) fn restart_delay(&self) -> Duration {
        if self.last.elapsed() > CRASH_MEMORY || self.count <= 1 {
            return Duration::ZERO;
        }
        let delay = Duration::from_secs(1u64 << (self.count - 1).min(6)).min(Duration::from_secs(60));
        delay.saturating_sub(self.last.elapsed())
    }
}

impl Supervisor {
    /// Stops an engine and waits until its process is gone (its memory is free).
    pub async fn stop(&self, engine: &Arc<Engine>) {
        if matches!(engine.status(), EngineStatus::Exited { .. }) {
            return;
        }
        engine.stopping.store(true, Ordering::SeqCst);
        engine.signal(libc::SIGTERM);
        if !matches!(engine.exit_within(STOP_GRACE).await, EngineStatus::Exited { .. }) {
            tracing::warn!(model = %engine.model, "engine ignored SIGTERM; killing it");
            engine.signal(libc::SIGKILL);
            engine.exit_within(Duration::MAX).await;
        }
    }

    pub(super) async fn start(self: &Arc<Self>, entry: ModelEntry, plan: Plan) -> anyhow::Result<()> {
        let port = free_loopback_port()?;
        let mut command = self.command(&entry, port, &plan);
        // It reads its model's files and its draft model's.
        let draft = self.library.draft_of(&entry).ok().flatten();
        let blobs = entry.blobs().into_iter().chain(draft.iter().flat_map(ModelEntry::blobs));
        let sandbox = Sandbox {
            read: blobs.map(|sha256| self.library.blob_path(sha256)).filter(|path| path.exists()).collect(),
            bind: vec![port],
            connect: plan.split.iter().flat_map(|split| split.peers()).filter_map(|share| share.rpc).map(|rpc| rpc.port()).collect(),
            ..self.sandbox.clone()
        };
        let confined = sandbox.confine(&mut command).with_context(|| format!("sandboxing the engine for '{}'", entry.name))?;
        if let Some(shortfall) = confined.shortfall() {
            tracing::warn!(model = %entry.name, "engine sandbox incomplete: {shortfall}");
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {} (set engine.llama_server)", self.config.llama_server.display()))?;
        let pid = child.id().context("child exited before it could be watched")?;
        tracing::info!(model = %entry.name, pid, port, ctx = plan.ctx, parallel = plan.parallel, "starting engine");
        let (status, _) = watch::channel(EngineStatus::Starting);
        let engine = Arc::new(Engine {
            model: entry.name.clone(),
            sha256: entry.sha256.clone(),
            port,
            pid,
            plan,
            started: Instant::now(),
            status,
            in_flight: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
            stopping: AtomicBool::new(false),
            failure: Mutex::new(None),
            recent_output: Mutex::new(VecDeque::new()),
            placement: Mutex::new(Placement::default()),
            sandbox: confined.describe(),
            keep_alive: Mutex::new(None),
        });
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(keep_output(engine.clone(), out)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(keep_output(engine.clone(), err)));
        }
        self.state.lock().unwrap().engines.insert(entry.name.clone(), engine.clone());
        self.update_gauges();
        let supervisor = self.clone();
        let watched = engine.clone();
        tokio::spawn(async move {
            let exit = child.wait().await;
            // Its last words explain an unexpected exit: read them to the end first (the pipes
            // close with the process, unless something it started still holds them).
            for reader in readers {
                let _ = tokio::time::timeout(OUTPUT_BATCH * 4, reader).await;
            }
            supervisor.on_exit(&watched, exit);
        });
        tokio::spawn(self.clone().wait_healthy(engine));
        Ok(())
    }

    pub(super) fn command(&self, entry: &ModelEntry, port: u16, plan: &Plan) -> tokio::process::Command {
        let c = &self.config;
        let mut cmd = tokio::process::Command::new(&c.llama_server);
        // A split model loads from its first part; llama.cpp finds the others beside it.
        cmd.arg("--model").arg(self.library.model_path(entry));
        if let Some(projector) = self.library.projector_path(entry) {
            cmd.arg("--mmproj").arg(projector);
        }
        // llama-server answers embeddings, or reranking, only when told to (501 otherwise);
        // `--reranking` turns embeddings on with rank pooling, which a reranker's file says too.
        // Only a model that generates text has anything to draft.
        match self.model_info(entry).map(|info| info.kind) {
            Ok(ModelKind::Embedding) => {
                cmd.arg("--embeddings");
            }
            Ok(ModelKind::Reranker) => {
                cmd.arg("--reranking");
            }
            Ok(ModelKind::Generative) | Err(_) => {
                // The draft model (the plan counted it) drafts first, n-grams of what the engine
                // has seen (when on) after it.
                let mut types = Vec::new();
                if let Ok(Some(draft)) = self.library.draft_of(entry) {
                    types.push("draft-simple");
                    cmd.arg("--model-draft").arg(self.library.model_path(&draft));
                    cmd.args(["--cache-type-k-draft", c.cache_type.as_str(), "--cache-type-v-draft", c.cache_type.as_str()]);
                    if let Some(layers) = c.gpu_layers {
                        cmd.args(["--gpu-layers-draft", &layers.to_string()]);
                    }
                }
                types.extend(c.speculative.spec_type());
                if !types.is_empty() {
                    cmd.args(["--spec-type", &types.join(",")]);
                }
            }
        }
        cmd.args(["--alias", &entry.name, "--host", "127.0.0.1", "--port", &port.to_string()]);
        // Level 4 makes llama-server log its devices and buffers as it loads, which is how
        // hellasd learns where the model sits; see `keep_output` for what reaches the journal.
        cmd.args(["--log-verbosity", "4"]);
        // -c is the context of all slots together; the plan's context is per slot.
        cmd.args(["--ctx-size", &(u64::from(plan.ctx) * u64::from(plan.parallel)).to_string()]);
        cmd.args(["--parallel", &plan.parallel.to_string()]);
        // Flash attention, batch sizes and load mode: this backend's, from published Strix Halo
        // measurements, unless the configuration says otherwise.
        cmd.args(super::settings::Backend::of(self.expect_gpu).settings().configured(c).args());
        cmd.arg("--no-webui");
        // llama-server's host-memory prompt cache (8 GiB by default) is memory the plan does not
        // hold; on a unified-memory box it would come out of the models' budget unannounced.
        cmd.args(["--cache-ram", "0"]);
        let cache_type = c.cache_type.as_str();
        cmd.args(["--cache-type-k", cache_type, "--cache-type-v", cache_type]);
        if let Some(threads) = c.threads {
            cmd.args(["--threads", &threads.to_string()]);
        }
        match &plan.split {
            Some(split) => {
                let (tensor_split, gpu_layers) = split.device_args(c.gpu_layers.is_some());
                cmd.args(["--rpc", &split.rpc_arg(), "--tensor-split", &tensor_split, "--n-gpu-layers", &gpu_layers.to_string()]);
            }
            None => {
                if let Some(layers) = c.gpu_layers {
                    cmd.args(["--n-gpu-layers", &layers.to_string()]);
                }
            }
        }
        cmd.args(&c.extra_args).envs(&c.env);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        cmd
    }

    async fn wait_healthy(self: Arc<Self>, engine: Arc<Engine>) {
        let deadline = Instant::now() + Duration::from_secs(self.config.startup_timeout_secs);
        let url = format!("{}/health", engine.base_url());
        loop {
            if engine.status() != EngineStatus::Starting {
                return;
            }
            let healthy = self.http.get(&url).timeout(Duration::from_secs(2)).send().await.is_ok_and(|r| r.status().is_success());
            if healthy {
                engine.status.send_if_modified(|s| {
                    let starting = *s == EngineStatus::Starting;
                    if starting {
                        *s = EngineStatus::Ready;
                    }
                    starting
                });
                let placement = engine.placement();
                tracing::info!(model = %engine.model, secs = engine.started.elapsed().as_secs_f64(), placement = %placement.describe(), "engine ready");
                if let Some(problem) = self.placement_problem(&engine) {
                    tracing::error!(model = %engine.model, "{problem}");
                }
                self.update_gauges();
                return;
            }
            if Instant::now() > deadline {
                let why = format!("engine for '{}' was not ready after {}s", engine.model, self.config.startup_timeout_secs);
                *engine.failure.lock().unwrap() = Some(why);
                engine.signal(libc::SIGKILL);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn on_exit(self: &Arc<Self>, engine: &Arc<Engine>, exit: std::io::Result<std::process::ExitStatus>) {
        let expected = engine.stopping.load(Ordering::SeqCst);
        let how = match exit {
            Ok(status) => status.to_string(),
            Err(e) => format!("could not be waited for: {e}"),
        };
        let reason = match engine.failure.lock().unwrap().take() {
            Some(failure) => failure,
            None if expected => format!("engine for '{}' was stopped", engine.model),
            None => {
                let output = engine.recent_output();
                format!("engine for '{}' exited unexpectedly ({how}); last output:\n{output}", engine.model)
            }
        };
        if expected {
            tracing::info!(model = %engine.model, %how, "engine stopped");
        } else {
            tracing::warn!(model = %engine.model, %how, "engine exited unexpectedly");
            self.metrics.engine_restarts.get_or_create(&Metrics::model(&engine.model)).inc();
        }
        // Forget the engine before announcing its exit, so a request that sees the exit and
        // retries starts a new one instead of finding this one again.
        {
            let mut state = self.state.lock().unwrap();
            if state.engines.get(&engine.model).is_some_and(|e| Arc::ptr_eq(e, engine)) {
                state.engines.remove(&engine.model);
            }
            if !expected {
                let crashes = state.crashes.entry(engine.model.clone()).or_insert(CrashHistory { count: 0, last: Instant::now() });
                if crashes.last.elapsed() > CRASH_MEMORY {
                    crashes.count = 0;
                }
                crashes.count += 1;
                crashes.last = Instant::now();
            }
        }
        engine.status.send_replace(EngineStatus::Exited { reason });
        if let (Some(split), Some(pool)) = (engine.plan.split.clone(), self.pool.get().cloned()) {
            let supervisor = self.clone();
            let engine = engine.clone();
            tokio::spawn(async move {
                if !expected {
                    // A split engine usually dies because a peer's worker went away.
                    supervisor.check_split(&engine.model, &engine.plan).await;
                }
                for share in split.peers() {
                    pool.release(&share.node_id, &engine.model).await;
                }
            });
        }
        self.metrics.memory_planned_bytes.remove(&Metrics::model(&engine.model));
        self.metrics.memory_used_bytes.remove(&Metrics::model(&engine.model));
        self.update_gauges();
    }
}

/// How long a serving engine's output waits in its pipe before it is read. llama-server writes
/// each log line in three pieces (time, level, message) and some thirty lines per request at
/// level 4; reading them as they come cost hellasd a wake-up per piece. A pipe holds 64 KiB,
/// about twenty requests' worth.
const OUTPUT_BATCH: Duration = Duration::from_millis(50);

/// Reads a child's output: what it says about where the model sits, the last lines (to explain
/// a failure), and the journal: everything while it loads, then only its warnings and errors
/// (at level 4 it logs some thirty lines of slot bookkeeping per request). While it loads,
/// lines are read as they come, so that its placement is known once it answers; after that, in
/// batches (see [`OUTPUT_BATCH`]).
async fn keep_output(engine: Arc<Engine>, mut stream: impl AsyncRead + Unpin) {
    let mut lines = Lines::default();
    let mut chunk = vec![0; 64 << 10];
    let keep = |line: &[u8]| keep_line(&engine, String::from_utf8_lossy(line).into_owned());
    while let Ok(read @ 1..) = stream.read(&mut chunk).await {
        lines.feed(&chunk[..read], keep);
        if engine.status() != EngineStatus::Starting {
            tokio::time::sleep(OUTPUT_BATCH).await;
        }
    }
    lines.finish(keep);
}

fn keep_line(engine: &Engine, line: String) {
    let loading = engine.status() == EngineStatus::Starting;
    if loading {
        engine.placement.lock().unwrap().observe(&line);
    }
    // Lines read `<time> <level> <message>`, the level one of D I W E.
    if loading || matches!(line.split_whitespace().nth(1), Some("W" | "E")) {
        tracing::info!(target: "engine", model = %engine.model, "{line}");
    }
    let mut recent = engine.recent_output.lock().unwrap();
    if recent.len() == RECENT_OUTPUT_LINES {
        recent.pop_front();
    }
    recent.push_back(line);
}

fn free_loopback_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Resident set size of a process, from /proc.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
