//! The daemon's shared state, assembled once by `hellasd serve`: what the API and the web pages
//! both serve from, and the factory reset that returns it to an unclaimed box.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::admission::Admission;
use crate::backup;
use crate::catalog::{self, Catalog, Downloads, Fit, Pull};
use crate::hub::{Hub, Reference};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::engine::bench::{BenchReport, BenchReports};
use crate::engine::{EngineError, Supervisor};
use crate::keys::KeyStore;
use crate::library::ModelLibrary;
use crate::memory_budget::MemoryBudget;
use crate::metrics::{GatewayLoad, Metrics};
use crate::web_certificate::WebCertificate;
use crate::owner::{owner_store, ClaimFiles, Limiter, OwnerStore, Sessions};

pub struct AppState {
    pub config: Config,
    pub budget: MemoryBudget,
    pub owner: OwnerStore,
    pub sessions: Sessions,
    pub claim: ClaimFiles,
    /// The web pages' HTTPS certificate.
    pub certificate: WebCertificate,
    /// Wrong claim codes and passwords.
    pub guesses: Limiter,
    pub catalog: Catalog,
    pub headers: catalog::Headers,
    pub downloads: Arc<Downloads>,
    /// Hugging Face, for `hf.co/…` references.
    pub hub: Hub,
    /// The last answers, newest last, for the dashboard's tokens/s.
    pub recent: Mutex<VecDeque<RecentRequest>>,
    pub library: Arc<ModelLibrary>,
    pub keys: KeyStore,
    pub supervisor: Arc<Supervisor>,
    /// The pool, when `cluster.enabled`.
    pub cluster: Option<Arc<Cluster>>,
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
    pub http: reqwest::Client,
    /// The latest speed measurement of each model.
    pub bench: BenchReports,
}

/// `/ready`'s and `/v1/hellas/drain`'s answer.
#[derive(serde::Serialize, Debug)]
pub struct DrainStatus {
    /// `ready`, `draining` or `drained`.
    pub status: &'static str,
    pub running: usize,
    pub waiting: usize,
}

pub struct RecentRequest {
    pub model: String,
    pub generated: u64,
    pub duration: Duration,
    pub at: Instant,
}

const RECENT: usize = 20;

/// What `hellasd serve` builds before it assembles the state.
pub struct Parts {
    pub budget: MemoryBudget,
    pub library: Arc<ModelLibrary>,
    pub supervisor: Arc<Supervisor>,
    pub cluster: Option<Arc<Cluster>>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// `/metrics`, with the engines' and the gateway's gauges brought up to date.
    pub async fn metrics_text(&self) -> String {
        self.supervisor.update_gauges();
        let load = self.admission.load();
        let engines = self.supervisor.loaded();
        // Each busy engine is asked at once; an idle one holds no cells.
        let gateway = engines.iter().map(|engine| async {
            let (running, waiting) = load.iter().find(|l| l.model == engine.model).map_or((0, 0), |l| (l.running, l.waiting));
            let kv_cache_usage = if running > 0 { self.supervisor.kv_cache_usage(engine).await.unwrap_or(0.0) } else { 0.0 };
            GatewayLoad { model: engine.model.clone(), waiting, running, kv_cache_usage }
        });
        let mut gateway = futures_util::future::join_all(gateway).await;
        // A model still loading has no engine to ask yet, but its queue counts.
        for l in load.iter().filter(|l| !engines.iter().any(|e| e.model == l.model)) {
            gateway.push(GatewayLoad { model: l.model.clone(), waiting: l.waiting, running: l.running, kv_cache_usage: 0.0 });
        }
        self.metrics.set_gateway(&gateway);
        self.metrics.render()
    }

    /// Whether the box takes new work, and what it still runs.
    pub fn drain_status(&self) -> DrainStatus {
        let load = self.admission.load();
        let running = load.iter().map(|l| l.running).sum();
        let waiting = load.iter().map(|l| l.waiting).sum();
        let status = match (self.admission.is_draining(), running + waiting) {
            (false, _) => "ready",
            (true, 0) => "drained",
            (true, _) => "draining",
        };
        DrainStatus { status, running, waiting }
    }

    pub fn new(config: Config, parts: Parts) -> Result<AppState> {
        let downloads_http = reqwest::Client::builder().no_proxy().build().context("building the HTTP client")?;
        let catalog = Catalog::load(&config.web.catalog).context("loading the model catalog")?;
        let owner = owner_store(&config.state_dir);
        let certificate = WebCertificate::load_or_create(&config.state_dir, &owner.load()?.settings.box_name).context("the web pages' certificate")?;
        Ok(AppState {
            owner,
            sessions: Sessions::default(),
            claim: ClaimFiles::new(&config.web.runtime_dir).with_fingerprint(Some(certificate.fingerprint())),
            certificate,
            guesses: Limiter::new(Duration::from_secs(60), 5, 20),
            headers: catalog::Headers::new(config.state_dir.join("catalog"), downloads_http.clone()),
            hub: Hub::new(&config.hub.endpoint, downloads_http.clone()),
            downloads: Downloads::new(config.state_dir.join("downloads"), parts.library.clone(), downloads_http),
            catalog,
            budget: parts.budget,
            recent: Default::default(),
            keys: KeyStore::open(config.state_dir.join("keys.json")),
            bench: BenchReports::new(config.state_dir.join("bench.json")),
            admission: Admission::new(config.api.queue_depth),
            http: reqwest::Client::builder()
                .no_proxy()
                // A connection per request: llama-server closes one after a streamed answer
                // (though it says keep-alive), and a connection pooled in between was picked
                // by the next request and failed it (1 in 256 with 16 clients). On loopback a
                // connection costs a few system calls; keep-alive probes would cost more.
                .pool_max_idle_per_host(0)
                .tcp_keepalive(None)
                .tcp_user_timeout(None)
                .tcp_nodelay(true)
                .build()
                .context("building the HTTP client")?,
            library: parts.library,
            supervisor: parts.supervisor,
            cluster: parts.cluster,
            metrics: parts.metrics,
            config,
        })
    }

    /// The owner's backup file (see `backup`): its file name and bytes.
    pub fn backup(&self) -> Result<(String, Vec<u8>)> {
        let owner = self.owner.load()?;
        let pool = match &self.cluster {
            Some(cluster) => Some(backup::PoolBackup::new(&cluster.identity.key_der, &cluster.identity.cert_der, cluster.paired_boxes()?)),
            None => None,
        };
        let models = self.library.list()?.into_iter().map(|m| backup::ModelBackup { name: m.name, sha256: m.sha256, source: m.source }).collect();
        let contents = backup::Contents { settings: owner.settings.clone(), api_keys: self.keys.list()?, pool, models };
        let now = crate::state_file::unix_now();
        let day = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(now)).to_string();
        let name = format!("{}-{}.hellas-backup.json", owner.settings.box_name, &day[..10]);
        Ok((name, backup::write(&contents, &owner.settings.box_name, now)?))
    }

    /// Restores a checked backup onto this box while it is being claimed: its settings, API
    /// keys and pairings, and its models downloaded again where they fit. Returns a line per
    /// thing done or not, and whether the daemon must restart to take up the pairings.
    pub async fn restore(&self, contents: backup::Contents) -> Result<(Vec<String>, bool)> {
        let mut done = Vec::new();
        self.keys.replace_all(contents.api_keys.clone())?;
        done.push(format!("{} API keys restored: clients using them work again", contents.api_keys.len()));
        self.owner.update_settings(contents.settings.clone())?;
        done.push(format!("settings restored: this box is {}", contents.settings.box_name));
        let restart = match (&contents.pool, &self.cluster) {
            (Some(pool), Some(cluster)) => {
                let (key, cert) = pool.decoded()?;
                cluster.restore_pairings(&key, &cert, pool.peers.clone())?;
                done.push(format!("pool identity and {} pairings restored: in force once the service restarts, in a few seconds", pool.peers.len()));
                true
            }
            (Some(_), None) => {
                done.push("the pool pairings are not restored: pooling is off on this box".into());
                false
            }
            (None, _) => false,
        };
        for model in contents.models {
            let Some(source) = &model.source else {
                done.push(format!("{}: added from a file, so it cannot be downloaded again: add it again (hellasd models add)", model.name));
                continue;
            };
            let line = match self.pull_for(source).await {
                Ok(pull) => {
                    let fit = self.fit(&pull).await;
                    if fit.allows_pull() {
                        self.downloads.start(pull);
                        format!("{}: downloading again from {source}", model.name)
                    } else {
                        format!("{}: not downloaded: {}", model.name, fit.describe())
                    }
                }
                Err(e) => format!("{}: not downloaded: {e:#}", model.name),
            };
            done.push(line);
        }
        self.owner.finish_setup()?;
        tracing::info!("a backup was restored: {}", done.join("; "));
        Ok((done, restart))
    }

    /// Start-up: a claim code when the box has no owner, and interrupted downloads resumed.
    pub fn start(&self) -> Result<()> {
        let file = self.owner.load()?;
        if file.owner.is_none() {
            let code = self.claim.ensure(file.claim_code.as_deref())?;
            tracing::info!("not set up yet: claim this box at http://{}.local/ with the code {code}", file.settings.box_name);
        } else {
            self.claim.claimed(&file.settings.box_name)?;
        }
        self.downloads.resume_interrupted();
        Ok(())
    }

    /// This boot's claim code, made now (the seeded one, or a random one) if there is none yet.
    pub fn claim_code(&self) -> Result<String> {
        self.claim.ensure(self.owner.load()?.claim_code.as_deref())
    }

    /// What to fetch for `model`: a catalog model by its name (the best quantisation that fits)
    /// or by a library name it gives (`smollm2:135m-q4_1`), or a Hugging Face reference
    /// (`hf.co/ORG/REPO:QUANT`) resolved now.
    pub async fn pull_for(&self, model: &str) -> Result<Pull> {
        if let Some((entry, quant)) = self.catalog.find(model) {
            let chosen = match quant {
                Some(quant) => self.candidate(entry, quant).await,
                None => self.offer(entry).await.chosen,
            };
            return chosen.pull.map_err(anyhow::Error::msg);
        }
        let reference: Reference = model.parse().map_err(|e: String| anyhow::anyhow!("{e}, or the name of a catalog model"))?;
        let resolved = self.hub.resolve(&reference).await?;
        Ok(Pull::from_hub(&resolved, resolved.default_name()))
    }

    /// What the catalog offers of `entry` on this box: every quantisation listed on the Hub and
    /// planned from its header, the best that fits chosen.
    pub async fn offer(&self, entry: &catalog::CatalogEntry) -> catalog::Offer {
        let candidates = futures_util::future::join_all(entry.quantisations.iter().map(|q| self.candidate(entry, q))).await;
        catalog::Offer::choose(candidates)
    }

    async fn candidate(&self, entry: &catalog::CatalogEntry, quant: &str) -> catalog::Candidate {
        let pull = match entry.reference(quant) {
            Ok(reference) => self.hub.resolve(&reference).await.map(|resolved| Pull { title: entry.title.clone(), ..Pull::from_hub(&resolved, entry.library_name(quant)) }),
            Err(e) => Err(e),
        };
        let (pull, fit) = match pull {
            Ok(pull) => {
                let fit = self.fit(&pull).await;
                (Ok(pull), fit)
            }
            Err(e) => (Err(format!("{e:#}")), Fit::Unavailable { reason: format!("{e:#}") }),
        };
        catalog::Candidate { quant: quant.to_string(), pull, fit }
    }

    /// Whether a model to fetch fits this box (or the pool), from its header read by range
    /// request before any of its weights are downloaded.
    pub async fn fit(&self, pull: &Pull) -> Fit {
        if self.library.get(&pull.name).ok().flatten().is_some_and(|m| m.sha256 == pull.id()) {
            return Fit::Installed;
        }
        let request = self.supervisor.request();
        let weights_fit = pull.size() <= request.budget;
        match tokio::time::timeout(Duration::from_secs(20), self.headers.info(pull)).await {
            Ok(Ok(info)) => catalog::fit(&info, &request, |local| self.supervisor.split_plan(&info, local)),
            Ok(Err(e)) => Fit::Unknown { reason: format!("{e:#}"), weights_fit },
            Err(_) => Fit::Unknown { reason: "the model's source did not answer in time".into(), weights_fit },
        }
    }

    /// Measures `model`'s speed on this box against its memory bandwidth and keeps the report.
    pub async fn bench(&self, model: &str) -> Result<BenchReport, EngineError> {
        let bandwidth = tokio::task::spawn_blocking(|| crate::tune::memory_bandwidth(Path::new("/"))).await.map_err(|e| EngineError::Internal(e.into()))?;
        let report = self.supervisor.bench(model, bandwidth).await?;
        self.bench.keep(&report).map_err(EngineError::Internal)?;
        Ok(report)
    }

    pub fn record_recent(&self, request: RecentRequest) {
        let mut recent = self.recent.lock().unwrap();
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(request);
    }
}

/// Files the setup writes in the state directory, all removed by a factory reset.
pub fn state_paths(state_dir: &Path) -> Vec<PathBuf> {
    ["owner.json", "owner.lock", "keys.json", "keys.lock", "models", "downloads", "catalog", "bench.json"].iter().map(|p| state_dir.join(p)).collect()
}

/// Unpairs the box from its peers, stops every engine and download, deletes the state the setup
/// made (models, keys, owner, settings) and returns the box to its unclaimed state with a new claim code.
pub async fn factory_reset(state: &AppState) -> Result<()> {
    if let Some(cluster) = &state.cluster {
        cluster.unpair_all().await;
    }
    for engine in state.supervisor.loaded() {
        state.supervisor.unload(&engine.model).await;
    }
    for job in state.downloads.all() {
        state.downloads.cancel(job.pull.id());
    }
    for path in state_paths(&state.config.state_dir) {
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::Error::from(e).context(format!("removing {}", path.display()))),
        }
    }
    state.sessions.end_all();
    // Root stops sshd and puts the default name back.
    state.owner.ask_root_to_apply()?;
    let code = state.claim_code()?;
    tracing::info!("factory reset done: claim the box again with the code {code}");
    Ok(())
}
