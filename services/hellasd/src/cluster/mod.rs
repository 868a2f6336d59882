//! The pool: boxes that pair with each other and lend their memory to each other's models
//! through llama.cpp's RPC backend.
//!
//! * [`identity`]: this box's key pair and certificate, made on first start.
//! * [`discovery`]: `_hellas._tcp` over mDNS, a hint of who is on the network.
//! * [`pairing`]: one-time join codes; [`peers`]: who this box is paired with.
//! * [`control`] over [`tls`]: status, memory holds and unpairing, only between paired boxes;
//!   [`server`] answers them on the control port.
//! * [`worker`]: ggml-rpc-server while there are peers, fenced by [`firewall`].
//! * [`paths`]: every address a peer can be reached on, each path's latency, and the one RPC
//!   takes (a direct cable before the LAN).
//! * `memory`: what this box lends its peers; `health`: their status probes and who is gone.
//! * [`fleet`]: rollouts of a release over the paired boxes, one at a time, and re-imaging.
//!
//! The head box plans a split with `hellas_model::pool`, holds the memory on each peer, and
//! starts llama-server with `--rpc`; the engine supervisor watches the peers of every split model.

pub mod control;
pub mod discovery;
pub mod fleet;
pub mod firewall;
pub mod identity;
pub mod pairing;
pub mod paths;
pub mod peers;
pub mod server;
pub mod tls;
pub mod worker;

mod health;
mod memory;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::{ClusterConfig, Config};
use crate::engine::{Pool, PoolFuture, Supervisor};
use crate::update::{self, UpdateFiles};
use hellas_model::split::Member;
use crate::state_file::StateFile;
use crate::owner::OwnerStore;
use control::{NodeStatus, Request, Response, UpdateSummary};
use fleet::RolloutFile;
use identity::Identity;
use pairing::JoinCode;
use peers::{Peer, Peers};
use tls::Tls;

/// Missed status answers in a row after which a peer counts as gone.
const MISSES_UNTIL_GONE: u32 = 3;
/// How long a memory hold lives without renewal.
pub const HOLD_TTL: Duration = Duration::from_secs(30);

/// What this box last heard from a peer.
#[derive(Clone, Debug, Default)]
struct Live {
    status: Option<NodeStatus>,
    latency: Option<Duration>,
    misses: u32,
    error: Option<String>,
    /// Each of its addresses as last measured.
    paths: Vec<paths::Path>,
    /// The path RPC to it takes for models loaded from now on.
    route: Option<IpAddr>,
}

impl Live {
    fn reachable(&self) -> bool {
        self.status.is_some() && self.misses < MISSES_UNTIL_GONE
    }
}

struct Hold {
    bytes: u64,
    expires: Instant,
}

pub struct Cluster {
    config: ClusterConfig,
    pub identity: Identity,
    tls: Tls,
    peers: StateFile<Peers>,
    owner: OwnerStore,
    version: String,
    /// The address this box announces and its peers call first: `cluster.address`, else found
    /// again at every probe (the box may get its address after hellasd starts).
    address: Mutex<Option<IpAddr>>,
    /// This box's addresses at the last probe, with their interfaces.
    own: Mutex<Vec<paths::OwnAddress>>,
    worker: worker::Worker,
    /// Started once this box has an address to announce.
    discovery: Mutex<Option<discovery::Discovery>>,
    mdns_failed: std::sync::atomic::AtomicBool,
    /// What mDNS last announced.
    announced: Mutex<Option<discovery::Announcement>>,
    join_code: Mutex<Option<JoinCode>>,
    live: Mutex<HashMap<String, Live>>,
    /// Memory held on this box for peers' models, by `<peer node id>/<key>`.
    holds: Mutex<HashMap<String, Hold>>,
    supervisor: Arc<Supervisor>,
    /// The factory reset a peer's re-image without the data asks for, given at start.
    reset: OnceLock<FactoryReset>,
    /// Serialises firewall and worker changes.
    fence: tokio::sync::Mutex<()>,
    state_dir: PathBuf,
    rollout: StateFile<RolloutFile>,
    /// A peer's request to wipe this box, until the owner approves or refuses it.
    wipe_request: Mutex<Option<fleet::WipeRequest>>,
}

/// Returns the box to its unclaimed state; the app above gives it (see `crate::app::factory_reset`).
pub type FactoryReset = Box<dyn Fn() -> PoolFuture<'static, Result<()>> + Send + Sync>;

/// A peer as the dashboard shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PeerView {
    pub node_id: String,
    pub name: String,
    pub address: IpAddr,
    pub reachable: bool,
    pub status: Option<NodeStatus>,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
    /// The ways to it, fastest first.
    pub paths: Vec<paths::PathView>,
}

/// The pool as this box sees it.
#[derive(Clone, Debug, Serialize)]
pub struct PoolView {
    #[serde(rename = "self")]
    pub this: NodeStatus,
    pub fingerprint: String,
    pub address: Option<IpAddr>,
    pub peers: Vec<PeerView>,
    /// Boxes heard over mDNS that are not paired with this one.
    pub discovered: Vec<discovery::Announcement>,
}

impl Cluster {
    pub fn new(config: &Config, owner: OwnerStore, supervisor: Arc<Supervisor>) -> Result<Arc<Cluster>> {
        let cluster = &config.cluster;
        let identity = Identity::load_or_create(&config.state_dir.join("cluster"))?;
        let tls = Tls::new(&identity)?;
        let own = paths::own_addresses();
        let address = cluster.address.or_else(|| detect_address(&own));
        let version = crate::update::booted_version(std::path::Path::new("/"))
            .unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_string());
        Ok(Arc::new(Cluster {
            worker: worker::Worker::new(
                cluster.clone(),
                SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), cluster.rpc_port),
                config.sandbox("rpc"),
            ),
            config: cluster.clone(),
            identity,
            tls,
            peers: StateFile::new(config.state_dir.join("cluster/peers.json")),
            owner,
            version,
            address: Mutex::new(address),
            own: Mutex::new(own),
            discovery: Mutex::new(None),
            mdns_failed: Default::default(),
            announced: Mutex::new(None),
            join_code: Mutex::new(None),
            live: Mutex::new(HashMap::new()),
            holds: Mutex::new(HashMap::new()),
            supervisor,
            reset: OnceLock::new(),
            fence: tokio::sync::Mutex::new(()),
            wipe_request: Mutex::new(None),
            rollout: StateFile::new(config.state_dir.join("cluster/rollout.json")),
            state_dir: config.state_dir.clone(),
        }))
    }

    fn box_name(&self) -> String {
        self.owner
            .load()
            .map(|o| o.settings.box_name.clone())
            .unwrap_or_else(|_| "hellas".into())
    }

    /// The release this box runs: as the updater recorded it at boot, else os-release's.
    fn version(&self) -> String {
        self.booted(UpdateFiles::new(&self.state_dir).status().ok().as_ref())
    }

    fn booted(&self, update: Option<&update::Status>) -> String {
        update.map(|s| s.booted.clone()).filter(|b| !b.is_empty()).unwrap_or_else(|| self.version.clone())
    }

    /// This box's cluster address, when it has one.
    pub fn address(&self) -> Option<IpAddr> {
        *self.address.lock().unwrap()
    }

    /// Looks at this box's addresses again: finds the cluster address again, unless the owner
    /// set one, and restarts the RPC worker when an address went away (its client may have come
    /// that way).
    fn watch_addresses(&self) {
        let now = paths::own_addresses();
        let found = detect_address(&now);
        let gone: Vec<String> = {
            let mut own = self.own.lock().unwrap();
            let gone = own.iter().filter(|a| !now.contains(a)).map(|(link, ip, _)| format!("{ip} on {link}")).collect();
            *own = now;
            gone
        };
        if !gone.is_empty() {
            self.worker.restart(&format!("this box's address {} went away", gone.join(", ")));
        }
        if self.config.address.is_none() {
            let mut address = self.address.lock().unwrap();
            if *address != found {
                tracing::info!(address = ?found, "cluster address");
                *address = found;
            }
        }
    }

    /// What this box announces over mDNS now, once it has an address.
    fn announcement(&self) -> Option<discovery::Announcement> {
        let address = self.address()?;
        let status = self.status();
        let health = if status.update.failed.is_some() {
            "update-failed"
        } else if status.update.busy || !status.healthy {
            "updating"
        } else {
            "ok"
        };
        Some(discovery::Announcement {
            node_id: status.node_id,
            name: status.name,
            version: status.version,
            health: health.to_string(),
            budget: status.budget,
            address,
            port: self.config.listen.port(),
        })
    }

    /// Starts mDNS once there is an address to announce; announces again when the address,
    /// name, release or health changed.
    fn reannounce(&self) {
        use std::sync::atomic::Ordering;
        if !self.config.mdns || self.mdns_failed.load(Ordering::Relaxed) {
            return;
        }
        let Some(now) = self.announcement() else { return };
        let mut discovery = self.discovery.lock().unwrap();
        let Some(discovery) = discovery.as_ref() else {
            match discovery::Discovery::start(&now) {
                Ok(found) => {
                    *discovery = Some(found);
                    *self.announced.lock().unwrap() = Some(now);
                }
                Err(e) => {
                    tracing::warn!("mDNS discovery is off: {e:#}");
                    self.mdns_failed.store(true, Ordering::Relaxed);
                }
            }
            return;
        };
        let mut announced = self.announced.lock().unwrap();
        if announced.as_ref() != Some(&now) {
            match discovery.announce(&now) {
                Ok(()) => *announced = Some(now),
                Err(e) => tracing::warn!("announcing over mDNS: {e:#}"),
            }
        }
    }

    /// Starts the control port, discovery, the worker and the peer monitor.
    pub async fn start(self: &Arc<Self>, reset: FactoryReset) -> Result<()> {
        let _ = self.reset.set(reset);
        let listener = tokio::net::TcpListener::bind(self.config.listen)
            .await
            .with_context(|| {
                format!(
                    "listening on {} for the cluster control port",
                    self.config.listen
                )
            })?;
        tracing::info!(address = %listener.local_addr()?, node_id = %self.identity.node_id, "cluster control port listening");
        let cluster = self.clone();
        tokio::spawn(async move { cluster.serve(listener).await });
        self.reannounce();
        let cluster = self.clone();
        tokio::spawn(async move { cluster.worker.supervise().await });
        self.fence_changed().await;
        let cluster = Arc::downgrade(self);
        let period = Duration::from_secs(self.config.probe_interval_secs.max(1));
        tokio::spawn(async move {
            loop {
                let Some(cluster) = cluster.upgrade() else {
                    return;
                };
                cluster.watch_addresses();
                cluster.probe_all().await;
                cluster.settle_own_rollout();
                cluster.reannounce();
                cluster.supervisor.pool_tick().await;
                drop(cluster);
                tokio::time::sleep(period).await;
            }
        });
        Ok(())
    }

    // ---- the firewall and the worker ---------------------------------------------------------

    /// Brings the firewall and the worker in line with the peers: the fence first, so the port
    /// is never open to anyone else; no firewall, no worker.
    async fn fence_changed(&self) {
        let _fence = self.fence.lock().await;
        let peers = self
            .peers
            .load()
            .map(|p| p.peers.clone())
            .unwrap_or_default();
        let addresses: Vec<IpAddr> = peers.iter().flat_map(|p| p.all_addresses()).collect();
        if self.config.firewall {
            let (nft, port) = (self.config.nft.clone(), self.config.rpc_port);
            let applied =
                tokio::task::spawn_blocking(move || firewall::apply(&nft, port, &addresses)).await;
            if let Err(e) = applied.map_err(anyhow::Error::from).and_then(|r| r) {
                tracing::error!("the RPC port stays closed, so this box lends no memory: {e:#}");
                self.worker.want(false);
                return;
            }
        }
        self.worker.want(!peers.is_empty());
    }

    /// The paired box with `node_id`.
    fn paired(&self, node_id: &str) -> Result<Peer> {
        self.peers.load()?.by_node(node_id).cloned().with_context(|| format!("no paired box has node id {node_id}"))
    }

    /// One call to a paired peer, its key checked.
    async fn call(&self, peer: &Peer, request: &Request) -> Result<Response> {
        let timeout = Duration::from_secs(self.config.probe_interval_secs.clamp(1, 5));
        let mut conn =
            control::connect(&self.tls, peer.control(), Some(&peer.fingerprint), timeout).await?;
        tokio::time::timeout(timeout, conn.call(request))
            .await
            .with_context(|| {
                format!("{} did not answer within {}s", peer.name, timeout.as_secs())
            })?
    }

    pub fn status(&self) -> NodeStatus {
        let update = UpdateFiles::new(&self.state_dir).status().ok();
        NodeStatus {
            node_id: self.identity.node_id.clone(),
            name: self.box_name(),
            version: self.booted(update.as_ref()),
            healthy: update.as_ref().is_none_or(|u| u.pending.is_none()),
            budget: self.supervisor.budget(),
            free: self.free(),
            available: self.available(),
            rpc: self.worker.running().map(|worker| SocketAddr::new(self.address().unwrap_or(worker.ip()), worker.port())),
            addresses: self.own.lock().unwrap().iter().map(|(_, ip, _)| IpAddr::V4(*ip)).collect(),
            update: update.as_ref().map(Self::update_summary).unwrap_or_default(),
        }
    }

    fn update_summary(status: &update::Status) -> UpdateSummary {
        let busy = matches!(status.phase, update::Phase::Checking | update::Phase::Installing { .. } | update::Phase::Rebooting { .. } | update::Phase::CopyingToDisk { .. });
        let failed = match &status.phase {
            update::Phase::Failed { action, error } => Some(format!("{action} failed: {error}")),
            _ => None,
        };
        UpdateSummary {
            busy,
            failed,
            offered: status.offered.clone(),
            rejected: status.rejected.iter().map(|r| format!("{}: {}", r.version, r.reason)).collect(),
            last_result: status.last_result.clone(),
        }
    }

    /// The pool as the dashboard shows it.
    pub fn view(&self) -> PoolView {
        let peers = self
            .peers
            .load()
            .map(|p| p.peers.clone())
            .unwrap_or_default();
        let live = self.live.lock().unwrap().clone();
        let own = self.own.lock().unwrap().clone();
        let discovered = self
            .discovery
            .lock()
            .unwrap()
            .as_ref()
            .map(|d| d.found())
            .unwrap_or_default();
        PoolView {
            this: self.status(),
            fingerprint: self.identity.fingerprint.clone(),
            address: self.address(),
            discovered: discovered
                .into_iter()
                .filter(|d| !peers.iter().any(|p| p.node_id == d.node_id))
                .collect(),
            peers: peers
                .iter()
                .map(|peer| {
                    let l = live.get(&peer.node_id).cloned().unwrap_or_default();
                    PeerView {
                        paths: paths::views(&l.paths, l.route, &own),
                        node_id: peer.node_id.clone(),
                        name: peer.name.clone(),
                        address: peer.address,
                        reachable: l.reachable(),
                        latency_ms: l.latency.map(|d| d.as_secs_f64() * 1000.0),
                        status: l.status,
                        error: l.error,
                    }
                })
                .collect(),
        }
    }

    /// The control address of a box heard over mDNS.
    pub fn discovered(&self, node_id: &str) -> Option<SocketAddr> {
        let found = self.discovery.lock().unwrap().as_ref()?.get(node_id)?;
        Some(SocketAddr::new(found.address, found.port))
    }
}

/// Of `own` addresses, the first of the interface that holds the default route, else the first.
fn detect_address(own: &[paths::OwnAddress]) -> Option<IpAddr> {
    let default_interface = std::fs::read_to_string("/proc/net/route").ok().and_then(|routes| {
        routes.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&"00000000")).then(|| fields[0].to_string())
        })
    });
    own.iter()
        .find(|(link, _, _)| Some(link) == default_interface.as_ref())
        .or(own.first())
        .map(|(_, ip, _)| IpAddr::V4(*ip))
}

/// The engine plans, holds and watches split models through this.
impl Pool for Cluster {
    fn held_bytes(&self) -> u64 {
        Cluster::held_bytes(self)
    }

    fn head(&self, free: u64) -> Member {
        Cluster::head(self, free)
    }

    fn members(&self) -> Vec<Member> {
        Cluster::members(self)
    }

    fn refresh(&self) -> PoolFuture<'_, ()> {
        Box::pin(self.probe_all())
    }

    fn hold<'a>(&'a self, node_id: &'a str, key: &'a str, bytes: u64) -> PoolFuture<'a, Result<()>> {
        Box::pin(Cluster::hold(self, node_id, key, bytes))
    }

    fn release<'a>(&'a self, node_id: &'a str, key: &'a str) -> PoolFuture<'a, ()> {
        Box::pin(Cluster::release(self, node_id, key))
    }

    fn mark_gone(&self, node_id: &str, why: &str) {
        Cluster::mark_gone(self, node_id, why)
    }

    fn reachable(&self, node_id: &str) -> bool {
        Cluster::reachable(self, node_id)
    }

    fn rpc(&self, node_id: &str) -> Option<SocketAddr> {
        Cluster::rpc(self, node_id)
    }

    fn path_up(&self, node_id: &str, address: IpAddr) -> bool {
        Cluster::path_up(self, node_id, address)
    }
}
