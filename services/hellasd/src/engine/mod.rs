//! Engine supervision: one llama-server child process per loaded model.
//!
//! A request for a model that is not running plans its memory, makes room by unloading the
//! least recently used idle models if the budget cannot hold it beside them, starts llama-server
//! on a loopback port, and waits until its `/health` answers. Models that fit together stay
//! resident together. A child that exits unexpectedly is noticed at once, its in-flight requests
//! fail (their connections break), and the next request starts it again, after a growing delay
//! when it keeps crashing. Idle models are unloaded after `idle_unload_secs`.
//!
//! * `process`: one engine's child process, its start, health and exit.
//! * `placement`: where its model really sits (GPU, CPU, peers), from llama-server's load log.
//! * `kv_cache`: how much of its KV cache running requests hold, for the gateway metrics.
//! * `bench`: a loaded model's prefill and decode speed against the memory-bandwidth ceiling.
//! * `settings`: flash attention, batch sizes and load mode per backend, from published
//!   measurements.
//! * `pool`: models split across paired boxes, through the [`Pool`] the cluster provides.

pub mod bench;
mod kv_cache;
mod placement;
mod pool;
mod process;
mod settings;

pub use placement::{is_gpu_device, Placement};
pub use pool::{Pool, PoolFuture};
pub use process::{resident_bytes, Engine, EngineLease};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use hellas_model::gguf::ModelInfo;
use hellas_model::plan::{self as planner, Plan, PlanRequest, Verdict};

use crate::config::EngineConfig;
use crate::sandbox::Sandbox;
use crate::library::{ModelEntry, ModelLibrary};
use crate::metrics::Metrics;
use pool::Degraded;
use process::CrashHistory;

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

#[derive(Default)]
struct State {
    engines: HashMap<String, Arc<Engine>>,
    crashes: HashMap<String, CrashHistory>,
    /// Models whose split lost a box, until they run again.
    degraded: HashMap<String, Degraded>,
}

pub struct Supervisor {
    config: EngineConfig,
    budget: u64,
    /// This box has a GPU its engines must run on (an AMD GPU, and offloading not turned off).
    expect_gpu: bool,
    library: Arc<ModelLibrary>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// Loads are serialised so that each plans against what the others left resident.
    load_lock: tokio::sync::Mutex<()>,
    /// GGUF facts by blob, with the draft model's name they were read with.
    model_info: Mutex<HashMap<String, (Option<String>, Arc<ModelInfo>)>>,
    http: reqwest::Client,
    /// The pool, when clustering is on: models too large for this box run across it.
    pool: OnceLock<Arc<dyn Pool>>,
    /// What every engine may touch, before its own model files and ports.
    sandbox: Sandbox,
    /// llama-server's version, once asked.
    engine_version: tokio::sync::OnceCell<Option<String>>,
    /// The engines' latest KV-cache use, for the gateway's scrapes.
    kv_cache: kv_cache::KvCacheReadings,
}

impl Supervisor {
    pub fn new(config: EngineConfig, sandbox: Sandbox, budget: u64, expect_gpu: bool, library: Arc<ModelLibrary>, metrics: Arc<Metrics>) -> Arc<Supervisor> {
        metrics.memory_budget_bytes.set(budget as i64);
        Arc::new(Supervisor {
            expect_gpu,
            config,
            budget,
            library,
            metrics,
            state: Mutex::new(State::default()),
            load_lock: tokio::sync::Mutex::new(()),
            model_info: Mutex::new(HashMap::new()),
            http: reqwest::Client::builder().no_proxy().build().expect("building an HTTP client"),
            pool: OnceLock::new(),
            sandbox,
            engine_version: tokio::sync::OnceCell::new(),
            kv_cache: Default::default(),
        })
    }

    /// llama-server's version as it says it (`0.7.0 (build 11669, commit Debian)`), asked once;
    /// `None` if it does not say within ten seconds.
    pub async fn engine_version(&self) -> Option<String> {
        let ask = async {
            let mut cmd = tokio::process::Command::new(&self.config.llama_server);
            cmd.arg("--version").envs(&self.config.env).stdin(std::process::Stdio::null()).kill_on_drop(true);
            let out = tokio::time::timeout(Duration::from_secs(10), cmd.output()).await.ok()?.ok()?;
            // It prints to stderr, after the devices it found.
            let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
            text.lines().find_map(|line| line.strip_prefix("version: ")).map(|v| v.trim().to_string())
        };
        self.engine_version.get_or_init(|| ask).await.clone()
    }

    pub fn budget(&self) -> u64 {
        self.budget
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

    /// Measures `model`'s speed on its engine against `bandwidth`, loading it if needed (see
    /// [`bench`]).
    pub async fn bench(self: &Arc<Self>, model: &str, bandwidth: bench::Bandwidth) -> Result<bench::BenchReport, EngineError> {
        let lease = self.acquire(model).await?;
        let entry = self.library.get(model).map_err(EngineError::Internal)?.ok_or_else(|| EngineError::Failed { message: format!("model '{model}' left the library") })?;
        let weights = self.library.gguf(&entry).map_err(EngineError::Internal)?;
        bench::run(&self.http, &lease.base_url(), model, &weights, lease.placement().describe(), bandwidth).await.map_err(EngineError::Internal)
    }

    /// What is wrong with where an engine's model sits, on a box whose engines belong on its GPU.
    pub fn placement_problem(&self, engine: &Engine) -> Option<String> {
        self.expect_gpu.then(|| engine.placement().problem()).flatten()
    }

    pub fn loaded(&self) -> Vec<Arc<Engine>> {
        let mut engines: Vec<_> = self.state.lock().unwrap().engines.values().cloned().collect();
        engines.sort_by(|a, b| a.model.cmp(&b.model));
        engines
    }

    /// The GGUF facts of a library model, read once per blob and draft model.
    pub fn model_info(&self, entry: &ModelEntry) -> anyhow::Result<Arc<ModelInfo>> {
        // A draft model's name keeps its file while a model drafts with it (the library refuses
        // to remove it), so the name stands for the file here. Looked up without allocating:
        // this runs for every request.
        if let Some((draft, info)) = self.model_info.lock().unwrap().get(&entry.sha256) {
            if *draft == entry.draft {
                return Ok(info.clone());
            }
        }
        let info = Arc::new(self.library.model_info(entry).with_context(|| format!("reading model '{}'", entry.name))?);
        self.model_info.lock().unwrap().insert(entry.sha256.clone(), (entry.draft.clone(), info.clone()));
        Ok(info)
    }

    /// The plan this supervisor would load `entry` with: the configured context, or the largest
    /// that fits the budget.
    pub fn plan(&self, entry: &ModelEntry) -> anyhow::Result<Plan> {
        let info = self.model_info(entry)?;
        let request = self.request();
        let mut plan = planner::plan(&info, &request);
        // A draft model sits on this box beside its model, so a model with one is not split.
        if let Some(mut split) = self.split_plan(&info, &plan).filter(|_| info.draft.is_none()) {
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
                pool.refresh().await;
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

    /// How long `engine` may stay idle: what a request asked (Ollama's `keep_alive`), else
    /// `idle_unload_secs`.
    pub fn keep_alive(&self, engine: &Engine) -> Duration {
        engine.keep_alive().unwrap_or(Duration::from_secs(self.config.idle_unload_secs))
    }

    /// Unloads models idle for longer than their keep-alive, checking every second (a request
    /// may ask for its model to go as soon as it is answered).
    pub fn spawn_idle_reaper(self: &Arc<Self>) {
        let supervisor = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(supervisor) = supervisor.upgrade() else { return };
                for engine in supervisor.loaded() {
                    if engine.in_flight() == 0 && engine.status() == EngineStatus::Ready && engine.idle_for() >= supervisor.keep_alive(&engine) {
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
            let placement = engine.placement();
            if placement.known() {
                self.metrics.memory_gpu_bytes.get_or_create(&labels).set(placement.gpu_bytes() as i64);
                self.metrics.placement_problem.get_or_create(&labels).set(i64::from(self.placement_problem(&engine).is_some()));
            }
        }
    }
}

