//! Engine supervision: one llama-server child process per loaded model.
//!
//! A request for a model that is not running plans its memory, makes room by unloading the
//! least recently used idle models if the budget cannot hold it beside them, starts llama-server
//! on a loopback port, and waits until its `/health` answers. Models that fit together stay
//! resident together. A child that exits unexpectedly is noticed at once, its in-flight requests
//! fail (their connections break), and the next request starts it again, after a growing delay
//! when it keeps crashing. Idle models are unloaded after `idle_unload_secs`.

use std::collections::{HashMap, VecDeque};
use std::ops::Deref;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::config::EngineConfig;
use hellas_model::gguf::{GgufFile, ModelInfo};
use crate::library::{ModelEntry, ModelLibrary};
use crate::metrics::Metrics;
use hellas_model::plan::{self as planner, Margin, Plan, PlanRequest, Verdict};
use hellas_model::pool as pool_plan;
use hellas_model::split::Share;

/// How many lines of a child's output are kept to explain a failure.
const RECENT_OUTPUT_LINES: usize = 30;
/// A child that does not stop within this after SIGTERM is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Crashes further apart than this do not add up.
const CRASH_MEMORY: Duration = Duration::from_secs(300);
/// Longer restart delays are answered with 503 and Retry-After instead of waiting.
const MAX_WAIT_FOR_RESTART: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq)]
pub enum EngineStatus {
    Starting,
    Ready,
    Exited { reason: String },
}

#[derive(Debug)]
pub enum EngineError {
    UnknownModel { name: String, available: Vec<String> },
    /// The model cannot fit in the budget even with nothing else loaded.
    TooLarge { plan: Box<Plan> },
    /// The model could run, but not now; try again after `retry_after`.
    Busy { message: String, retry_after: Duration },
    /// The engine failed to start or exited.
    Failed { message: String },
    /// The model ran across boxes and one of them is gone; `message` names it and says what
    /// hellasd does about it.
    Degraded { message: String },
    Internal(anyhow::Error),
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::UnknownModel { name, available } => {
                write!(f, "model '{name}' is not in the library (available: {})", available.join(", "))
            }
            EngineError::TooLarge { plan } => write!(
                f,
                "model '{}' needs {} but the memory budget is {}",
                plan.model,
                planner::format_bytes(plan.total),
                planner::format_bytes(plan.budget)
            ),
            EngineError::Busy { message, .. } | EngineError::Failed { message } | EngineError::Degraded { message } => f.write_str(message),
            EngineError::Internal(e) => write!(f, "{e:#}"),
        }
    }
}

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
}

impl Engine {
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn status(&self) -> EngineStatus {
        self.status.borrow().clone()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
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
    fn new(engine: Arc<Engine>) -> EngineLease {
        engine.in_flight.fetch_add(1, Ordering::SeqCst);
        EngineLease { engine }
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
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

struct CrashHistory {
    count: u32,
    last: Instant,
}

impl CrashHistory {
    /// No delay for the first crash, then 2 s, 4 s, … up to a minute.
    fn restart_delay(&self) -> Duration {
        if self.last.elapsed() > CRASH_MEMORY || self.count <= 1 {
            return Duration::ZERO;
        }
        let delay = Duration::from_secs(1u64 << (self.count - 1).min(6)).min(Duration::from_secs(60));
        delay.saturating_sub(self.last.elapsed())
    }
}

#[derive(Default)]
struct State {
    engines: HashMap<String, Arc<Engine>>,
    crashes: HashMap<String, CrashHistory>,
    /// Models whose split lost a box, until they run again.
    degraded: HashMap<String, Degraded>,
}

/// A split model that lost a box.
#[derive(Clone, Debug)]
struct Degraded {
    /// Node ids of the boxes it lost.
    missing: Vec<String>,
    message: String,
    /// Set once reloading on what remains failed: it waits for the missing boxes.
    waiting: bool,
}

pub struct Supervisor {
    config: EngineConfig,
    budget: u64,
    library: Arc<ModelLibrary>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// Loads are serialised so that each plans against what the others left resident.
    load_lock: tokio::sync::Mutex<()>,
    model_info: Mutex<HashMap<String, Arc<ModelInfo>>>,
    http: reqwest::Client,
    /// The pool, when clustering is on: models too large for this box run across it.
    pool: OnceLock<Arc<Cluster>>,
}

impl Supervisor {
    pub fn new(config: EngineConfig, budget: u64, library: Arc<ModelLibrary>, metrics: Arc<Metrics>) -> Arc<Supervisor> {
        metrics.memory_budget_bytes.set(budget as i64);
        Arc::new(Supervisor {
            config,
            budget,
            library,
            metrics,
            state: Mutex::new(State::default()),
            load_lock: tokio::sync::Mutex::new(()),
            model_info: Mutex::new(HashMap::new()),
            http: reqwest::Client::builder().no_proxy().build().expect("building an HTTP client"),
            pool: OnceLock::new(),
        })
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    pub fn set_pool(&self, pool: Arc<Cluster>) {
        let _ = self.pool.set(pool);
    }

    /// What this box's own engines are planned to hold.
    pub fn resident_bytes(&self) -> u64 {
        self.state.lock().unwrap().engines.values().map(|e| e.plan.local_bytes()).sum()
    }

    /// What this box's engines that are serving requests now are planned to hold: what idle
    /// ones hold makes way when needed.
    pub fn busy_bytes(&self) -> u64 {
        self.state.lock().unwrap().engines.values().filter(|e| e.in_flight() > 0).map(|e| e.plan.local_bytes()).sum()
    }

    /// What is held on this box for peers' models.
    fn held_for_peers(&self) -> u64 {
        self.pool.get().map_or(0, |p| p.held_bytes())
    }

    pub fn loaded(&self) -> Vec<Arc<Engine>> {
        let mut engines: Vec<_> = self.state.lock().unwrap().engines.values().cloned().collect();
        engines.sort_by(|a, b| a.model.cmp(&b.model));
        engines
    }

    /// The GGUF facts of a library model, read once per blob.
    pub fn model_info(&self, entry: &ModelEntry) -> anyhow::Result<Arc<ModelInfo>> {
        if let Some(info) = self.model_info.lock().unwrap().get(&entry.sha256) {
            return Ok(info.clone());
        }
        let path = self.library.blob_path(&entry.sha256);
        let info = Arc::new(
            GgufFile::open(&path)
                .and_then(|f| f.model_info())
                .with_context(|| format!("reading model '{}' ({})", entry.name, path.display()))?,
        );
        self.model_info.lock().unwrap().insert(entry.sha256.clone(), info.clone());
        Ok(info)
    }

    /// The plan this supervisor would load `entry` with: the configured context, or the largest
    /// that fits the budget.
    pub fn plan(&self, entry: &ModelEntry) -> anyhow::Result<Plan> {
        let info = self.model_info(entry)?;
        let request = self.request();
        let mut plan = planner::plan(&info, &request);
        if let Some(mut split) = self.split_plan(&info, &plan) {
            split.model = entry.name.clone();
            return Ok(split);
        }
        if let Verdict::FitsSmallerContext { max_ctx } = plan.verdict {
            plan = planner::plan(&info, &PlanRequest { ctx: max_ctx, ..request });
        }
        plan.model = entry.name.clone();
        Ok(plan)
    }

    /// The configured context and slots, against this box's budget.
    pub fn request(&self) -> PlanRequest {
        PlanRequest { ctx: self.config.ctx, parallel: self.config.parallel, cache_type: self.config.cache_type, budget: self.budget }
    }

    /// The split across the pool for a model whose `local` plan does not fit as asked, if the
    /// pool holds it. Across the pool before a smaller context here; a smaller context here
    /// before a smaller one across the pool.
    pub fn split_plan(&self, info: &ModelInfo, local: &Plan) -> Option<Plan> {
        let pool = self.pool.get()?;
        let head = pool.head(self.budget.saturating_sub(self.held_for_peers()));
        let peers = pool.members();
        let request = PlanRequest { ctx: local.ctx, parallel: local.parallel, cache_type: local.cache_type, budget: head.free };
        match local.verdict {
            Verdict::Fits => None,
            Verdict::FitsSmallerContext { .. } => pool_plan::plan_split(info, &request, &head, &peers, &Margin::default()),
            Verdict::DoesNotFit { .. } => pool_plan::plan_split_largest(info, &request, &head, &peers, &Margin::default()),
        }
    }

    /// The running engine for `model`, started if needed, held for one request.
    pub async fn acquire(self: &Arc<Self>, model: &str) -> Result<EngineLease, EngineError> {
        let ready_timeout = Duration::from_secs(self.config.startup_timeout_secs + 5);
        loop {
            if let Some(degraded) = self.state.lock().unwrap().degraded.get(model) {
                return Err(EngineError::Degraded { message: degraded.message.clone() });
            }
            let running = self.state.lock().unwrap().engines.get(model).cloned();
            if let Some(engine) = running {
                let lease = EngineLease::new(engine);
                return match lease.wait_ready(ready_timeout).await {
                    Ok(()) => Ok(lease),
                    Err(message) => Err(EngineError::Failed { message }),
                };
            }
            let _loading = self.load_lock.lock().await;
            if self.state.lock().unwrap().engines.contains_key(model) {
                continue; // another request started it while we waited
            }
            self.load(model).await?;
        }
    }

    async fn load(self: &Arc<Self>, model: &str) -> Result<(), EngineError> {
        let entry = self.library.get(model).map_err(EngineError::Internal)?.ok_or_else(|| EngineError::UnknownModel {
            name: model.to_string(),
            available: self.library.list().unwrap_or_default().into_iter().map(|e| e.name).collect(),
        })?;
        if let Some(pool) = self.pool.get() {
            // A model this box cannot hold alone as configured is planned on what the peers
            // have now, not at the last probe.
            let info = self.model_info(&entry).map_err(EngineError::Internal)?;
            if planner::plan(&info, &self.request()).verdict != Verdict::Fits {
                pool.probe_all().await;
            }
        }
        let plan = self.plan(&entry).map_err(EngineError::Internal)?;
        if let Verdict::DoesNotFit { .. } = plan.verdict {
            return Err(EngineError::TooLarge { plan: Box::new(plan) });
        }
        let delay = self.state.lock().unwrap().crashes.get(&entry.name).map_or(Duration::ZERO, |c| c.restart_delay());
        if delay > MAX_WAIT_FOR_RESTART {
            return Err(EngineError::Busy {
                message: format!("engine for '{}' keeps crashing; next restart in {}s", entry.name, delay.as_secs()),
                retry_after: delay,
            });
        }
        tokio::time::sleep(delay).await;
        self.make_room(&plan).await?;
        self.hold_on_peers(&plan).await?;
        self.start(entry, plan).await.map_err(EngineError::Internal)
    }

    /// Holds each peer's share of a split plan in its memory before the engine places layers
    /// there; a peer that refuses releases the others.
    async fn hold_on_peers(&self, plan: &Plan) -> Result<(), EngineError> {
        let (Some(split), Some(pool)) = (&plan.split, self.pool.get()) else { return Ok(()) };
        for (i, share) in split.peers().iter().enumerate() {
            if let Err(e) = pool.hold(&share.node_id, &plan.model, share.bytes).await {
                for held in &split.peers()[..i] {
                    pool.release(&held.node_id, &plan.model).await;
                }
                return Err(EngineError::Busy {
                    message: format!("model '{}' runs across {}: {e:#}", plan.model, split.names().join("+")),
                    retry_after: Duration::from_secs(5),
                });
            }
        }
        Ok(())
    }

    /// Unloads least recently used idle models until `plan` fits beside what stays.
    async fn make_room(&self, plan: &Plan) -> Result<(), EngineError> {
        self.make_room_for(plan.local_bytes(), &format!("model '{}'", plan.model)).await
    }

    /// Unloads least recently used idle models until `bytes` more fit in the budget; `what`
    /// (e.g. "model 'x'", "bravo's model 'y'") names what the room is for.
    pub async fn make_room_for(&self, bytes: u64, what: &str) -> Result<(), EngineError> {
        loop {
            let victim = {
                let state = self.state.lock().unwrap();
                let resident: u64 = state.engines.values().map(|e| e.plan.local_bytes()).sum::<u64>() + self.held_for_peers();
                if resident + bytes <= self.budget {
                    return Ok(());
                }
                let idle = state.engines.values().filter(|e| e.in_flight() == 0).max_by_key(|e| e.idle_for()).cloned();
                match idle {
                    Some(engine) => engine,
                    None => {
                        return Err(EngineError::Busy {
                            message: format!(
                                "{what} needs {} but {} of the {} budget is held by models serving requests",
                                planner::format_bytes(bytes),
                                planner::format_bytes(resident),
                                planner::format_bytes(self.budget)
                            ),
                            retry_after: Duration::from_secs(2),
                        })
                    }
                }
            };
            tracing::info!(model = %victim.model, for_what = what, "unloading least recently used model to make room");
            self.stop(&victim).await;
        }
    }

    async fn start(self: &Arc<Self>, entry: ModelEntry, plan: Plan) -> anyhow::Result<()> {
        let port = free_loopback_port()?;
        let blob = self.library.blob_path(&entry.sha256);
        let mut command = self.command(&blob, &entry.name, port, &plan);
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
        });
        if let Some(out) = child.stdout.take() {
            tokio::spawn(keep_output(engine.clone(), out));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(keep_output(engine.clone(), err));
        }
        self.state.lock().unwrap().engines.insert(entry.name.clone(), engine.clone());
        self.update_gauges();
        let supervisor = self.clone();
        let watched = engine.clone();
        tokio::spawn(async move {
            let exit = child.wait().await;
            supervisor.on_exit(&watched, exit);
        });
        tokio::spawn(self.clone().wait_healthy(engine));
        Ok(())
    }

    fn command(&self, blob: &Path, name: &str, port: u16, plan: &Plan) -> tokio::process::Command {
        let c = &self.config;
        let mut cmd = tokio::process::Command::new(&c.llama_server);
        cmd.arg("--model").arg(blob);
        cmd.args(["--alias", name, "--host", "127.0.0.1", "--port", &port.to_string()]);
        // -c is the context of all slots together; the plan's context is per slot.
        cmd.args(["--ctx-size", &(u64::from(plan.ctx) * u64::from(plan.parallel)).to_string()]);
        cmd.args(["--parallel", &plan.parallel.to_string()]);
        // Weights are read into memory rather than mapped, so the planned budget is what the
        // engine really holds and a model file on slow storage is not paged in mid-request.
        cmd.args(["--load-mode", "none", "--flash-attn", "on", "--no-webui"]);
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
        cmd.args(&c.extra_args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe. The child dies with the thread that spawned it
        // (a runtime worker, alive as long as hellasd), so no engine outlives the daemon.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
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
                tracing::info!(model = %engine.model, secs = engine.started.elapsed().as_secs_f64(), "engine ready");
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

    /// The peers of a split plan whose RPC worker does not take a connection now.
    async fn unreachable_peers(plan: &Plan) -> Vec<Share> {
        let Some(split) = &plan.split else { return Vec::new() };
        let checks = split.peers().iter().map(|share| async move {
            let Some(rpc) = share.rpc else { return Some(share.clone()) };
            let connected = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(rpc)).await;
            (!matches!(connected, Ok(Ok(_)))).then(|| share.clone())
        });
        futures_util::future::join_all(checks).await.into_iter().flatten().collect()
    }

    /// Checks a split model's peers; one that is gone degrades the model. Returns the error
    /// requests for it get now, if it is degraded.
    pub async fn check_split(self: &Arc<Self>, model: &str, plan: &Plan) -> Option<EngineError> {
        let missing = Self::unreachable_peers(plan).await;
        if !missing.is_empty() {
            self.degrade(model, missing);
        }
        let degraded = self.state.lock().unwrap().degraded.get(model).cloned();
        degraded.map(|d| EngineError::Degraded { message: d.message })
    }

    /// Marks `model` degraded, stops what is left of its engine and reloads it on what remains.
    fn degrade(self: &Arc<Self>, model: &str, missing: Vec<Share>) {
        let Some(pool) = self.pool.get() else { return };
        let names = missing
            .iter()
            .map(|s| format!("{} ({})", s.name, s.rpc.map(|a| a.ip().to_string()).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", ");
        for share in &missing {
            pool.mark_gone(&share.node_id, "its RPC worker does not answer");
        }
        {
            let mut state = self.state.lock().unwrap();
            if state.degraded.contains_key(model) {
                return;
            }
            let message = format!("model '{model}' is degraded: box {names} is unreachable; reloading it on the boxes that remain");
            tracing::warn!("{message}");
            let missing = missing.iter().map(|s| s.node_id.clone()).collect();
            state.degraded.insert(model.to_string(), Degraded { missing, message, waiting: false });
        }
        let supervisor = self.clone();
        let model = model.to_string();
        tokio::spawn(async move { supervisor.reload_degraded(&model, &names).await });
    }

    async fn reload_degraded(self: Arc<Self>, model: &str, missing: &str) {
        let engine = self.state.lock().unwrap().engines.get(model).cloned();
        if let Some(engine) = engine {
            self.stop(&engine).await;
        }
        let loaded = {
            let _loading = self.load_lock.lock().await;
            self.load(model).await
        };
        let ready = match loaded {
            Ok(()) => {
                let engine = self.state.lock().unwrap().engines.get(model).cloned();
                match engine {
                    Some(engine) => EngineLease::new(engine).wait_ready(Duration::from_secs(self.config.startup_timeout_secs + 5)).await,
                    None => Err("the engine exited at once".into()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let mut state = self.state.lock().unwrap();
        match ready {
            Ok(()) => {
                state.degraded.remove(model);
                let on = state.engines.get(model).map(|e| e.plan.split.as_ref().map_or_else(|| "this box alone".to_string(), |s| s.names().join("+")));
                tracing::info!(model, on = on.as_deref().unwrap_or("?"), "reloaded without the missing box");
            }
            Err(why) => {
                if let Some(degraded) = state.degraded.get_mut(model) {
                    degraded.message = format!(
                        "model '{model}' is degraded: box {missing} is unreachable and it does not run on what remains ({why}); it runs again when {missing} is back"
                    );
                    degraded.waiting = true;
                    tracing::warn!("{}", degraded.message);
                }
            }
        }
    }

    /// Called after each round of peer status checks: renews the memory held on peers for split
    /// models, degrades those that lost a peer, and lifts a degradation once its boxes are back.
    pub async fn pool_tick(self: &Arc<Self>) {
        let Some(pool) = self.pool.get().cloned() else { return };
        for engine in self.loaded() {
            let Some(split) = &engine.plan.split else { continue };
            let gone: Vec<Share> = split.peers().iter().filter(|s| !pool.reachable(&s.node_id)).cloned().collect();
            if !gone.is_empty() {
                self.degrade(&engine.model, gone);
                continue;
            }
            for share in split.peers() {
                if let Err(e) = pool.hold(&share.node_id, &engine.model, share.bytes).await {
                    tracing::warn!(model = %engine.model, "renewing the memory held on a peer: {e:#}");
                }
            }
        }
        self.state.lock().unwrap().degraded.retain(|model, d| {
            let back = d.waiting && d.missing.iter().all(|id| pool.reachable(id));
            if back {
                tracing::info!(model, "the missing boxes are back; the next request loads it across them");
            }
            !back
        });
    }

    /// Stops an engine and waits until its process is gone (its memory is free).
    pub async fn stop(&self, engine: &Arc<Engine>) {
        let mut rx = engine.status.subscribe();
        if matches!(*rx.borrow(), EngineStatus::Exited { .. }) {
            return;
        }
        engine.stopping.store(true, Ordering::SeqCst);
        engine.signal(libc::SIGTERM);
        let exited = |s: &EngineStatus| matches!(s, EngineStatus::Exited { .. });
        if tokio::time::timeout(STOP_GRACE, rx.wait_for(exited)).await.is_err() {
            tracing::warn!(model = %engine.model, "engine ignored SIGTERM; killing it");
            engine.signal(libc::SIGKILL);
            let _ = rx.wait_for(exited).await;
        }
    }

    pub async fn unload(&self, model: &str) -> bool {
        let engine = self.state.lock().unwrap().engines.get(model).cloned();
        match engine {
            Some(engine) => {
                self.stop(&engine).await;
                true
            }
            None => false,
        }
    }

    pub async fn shutdown(&self) {
        for engine in self.loaded() {
            self.stop(&engine).await;
        }
    }

    /// Unloads models nobody used for `idle_unload_secs`, checking a few times per period.
    pub fn spawn_idle_reaper(self: &Arc<Self>) {
        let ttl = Duration::from_secs(self.config.idle_unload_secs);
        let period = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
        let supervisor = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(supervisor) = supervisor.upgrade() else { return };
                for engine in supervisor.loaded() {
                    if engine.in_flight() == 0 && engine.status() == EngineStatus::Ready && engine.idle_for() >= ttl {
                        tracing::info!(model = %engine.model, idle_secs = engine.idle_for().as_secs(), "unloading idle model");
                        supervisor.stop(&engine).await;
                    }
                }
            }
        });
    }

    /// Refreshes the memory gauges (planned and resident memory of each engine).
    pub fn update_gauges(&self) {
        let engines = self.loaded();
        self.metrics.models_loaded.set(engines.len() as i64);
        for engine in engines {
            let labels = Metrics::model(&engine.model);
            self.metrics.memory_planned_bytes.get_or_create(&labels).set(engine.plan.local_bytes() as i64);
            if let Some(rss) = resident_bytes(engine.pid) {
                self.metrics.memory_used_bytes.get_or_create(&labels).set(rss as i64);
            }
        }
    }
}

/// Copies a child's output lines to the journal (through our log) and keeps the last few.
async fn keep_output(engine: Arc<Engine>, stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "engine", model = %engine.model, "{line}");
        let mut recent = engine.recent_output.lock().unwrap();
        if recent.len() == RECENT_OUTPUT_LINES {
            recent.pop_front();
        }
        recent.push_back(line);
    }
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
