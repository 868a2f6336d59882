//! The engine's view of the pool: a model too big for this box runs across paired boxes. The
//! cluster implements [`Pool`]; the supervisor plans splits with it, holds memory on the peers,
//! degrades a split model whose box went away, and moves one whose link to a box went away (or
//! that a faster link to it came back for) onto the path the pool chose.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hellas_model::gguf::ModelInfo;
use hellas_model::plan::{Margin, Plan, PlanRequest, Verdict};
use hellas_model::pool as pool_plan;
use hellas_model::split::{Member, Share};

use super::{EngineError, EngineLease, Supervisor};

pub type PoolFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the engine needs of the pool of paired boxes.
pub trait Pool: Send + Sync {
    /// Bytes this box holds for its peers' models.
    fn held_bytes(&self) -> u64;
    /// This box as a member of a split, with `free` bytes to give.
    fn head(&self, free: u64) -> Member;
    /// The paired boxes that could take part now.
    fn members(&self) -> Vec<Member>;
    /// Asks every peer for its state now, instead of at the next probe.
    fn refresh(&self) -> PoolFuture<'_, ()>;
    /// Holds `bytes` on peer `node_id` for `key` (a model), renewing an existing hold.
    fn hold<'a>(&'a self, node_id: &'a str, key: &'a str, bytes: u64) -> PoolFuture<'a, anyhow::Result<()>>;
    fn release<'a>(&'a self, node_id: &'a str, key: &'a str) -> PoolFuture<'a, ()>;
    /// Counts peer `node_id` as gone, for `why`.
    fn mark_gone(&self, node_id: &str, why: &str);
    fn reachable(&self, node_id: &str) -> bool;
    /// The peer's RPC worker by the path chosen for it now.
    fn rpc(&self, node_id: &str) -> Option<SocketAddr>;
    /// Whether the path to the peer at `address` worked when last measured.
    fn path_up(&self, node_id: &str, address: IpAddr) -> bool;
}

/// A split model that lost a box.
#[derive(Clone, Debug)]
pub(super) struct Degraded {
    /// Node ids of the boxes it lost.
    pub(super) missing: Vec<String>,
    pub(super) message: String,
    /// Set once reloading on what remains failed: it waits for the missing boxes.
    pub(super) waiting: bool,
}

impl Supervisor {
    pub fn set_pool(&self, pool: Arc<dyn Pool>) {
        let _ = self.pool.set(pool);
    }

    /// What is held on this box for peers' models.
    pub(super) fn held_for_peers(&self) -> u64 {
        self.pool.get().map_or(0, |p| p.held_bytes())
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

    /// Holds each peer's share of a split plan in its memory before the engine places layers
    /// there; a peer that refuses releases the others.
    pub(super) async fn hold_on_peers(&self, plan: &Plan) -> Result<(), EngineError> {
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

    /// Checks a split model's peers; one that is gone degrades the model, one still reached by
    /// another path moves it there. Returns the error requests for it get now, if any.
    pub async fn check_split(self: &Arc<Self>, model: &str, plan: &Plan) -> Option<EngineError> {
        let unreachable = Self::unreachable_peers(plan).await;
        if !unreachable.is_empty() {
            let pool = self.pool.get()?;
            let mut moved = Vec::new();
            let mut missing = Vec::new();
            for share in unreachable {
                match rerouted(pool.as_ref(), &share) {
                    Some(now) if tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(now)).await.is_ok_and(|c| c.is_ok()) => moved.push((share, now)),
                    _ => missing.push(share),
                }
            }
            if !missing.is_empty() {
                self.degrade(model, missing);
            } else {
                self.move_split(model, &moved, "went away");
            }
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
        let message = format!("model '{model}' is degraded: box {names} is unreachable; reloading it on the boxes that remain");
        let failed = format!("box {names} is unreachable and it does not run on what remains");
        let missing = missing.iter().map(|s| s.node_id.clone()).collect();
        self.reload_elsewhere(model, Degraded { missing, message, waiting: false }, failed);
    }

    /// Reloads `model` with its peers' RPC over the paths the pool chose now: `moved` names
    /// each peer whose path changed, the link it leaves and the one it takes, and `why` it moves.
    fn move_split(self: &Arc<Self>, model: &str, moved: &[(Share, SocketAddr)], why: &str) {
        let links = moved
            .iter()
            .map(|(s, now)| format!("box {} from {} to {}", s.name, s.rpc.map(|a| a.ip().to_string()).unwrap_or_default(), now.ip()))
            .collect::<Vec<_>>()
            .join(", ");
        let message = format!("model '{model}' is moving to another link ({links}: the link it used {why}); it answers again once reloaded");
        let failed = format!("it could not move to another link ({links})");
        self.reload_elsewhere(model, Degraded { missing: Vec::new(), message, waiting: false }, failed);
    }

    /// Marks `model` degraded with `degraded`'s message, stops its engine and loads it again
    /// as the pool stands now; if that fails, requests are told `failed` and why.
    fn reload_elsewhere(self: &Arc<Self>, model: &str, degraded: Degraded, failed: String) {
        {
            let mut state = self.state.lock().unwrap();
            if state.degraded.contains_key(model) {
                return;
            }
            tracing::warn!("{}", degraded.message);
            state.degraded.insert(model.to_string(), degraded);
        }
        let supervisor = self.clone();
        let model = model.to_string();
        tokio::spawn(async move { supervisor.reload_degraded(&model, &failed).await });
    }

    async fn reload_degraded(self: Arc<Self>, model: &str, failed: &str) {
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
                tracing::info!(model, on = on.as_deref().unwrap_or("?"), "reloaded");
            }
            Err(why) => match state.degraded.get(model).map(|d| d.missing.is_empty()) {
                // A move that failed waits for nothing: the next request loads it again.
                Some(true) => {
                    tracing::warn!("model '{model}' is degraded: {failed} ({why})");
                    state.degraded.remove(model);
                }
                Some(false) => {
                    let degraded = state.degraded.get_mut(model).expect("looked up above");
                    degraded.message = format!("model '{model}' is degraded: {failed} ({why}); it runs again when the missing boxes are back");
                    degraded.waiting = true;
                    tracing::warn!("{}", degraded.message);
                }
                None => {}
            },
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
            // A peer whose chosen path is not the one this engine uses: its link went away (move
            // now), or a much faster one came up (move while no request runs).
            let moved: Vec<(Share, SocketAddr)> = split
                .peers()
                .iter()
                .filter_map(|s| rerouted(pool.as_ref(), s).map(|now| (s.clone(), now)))
                .collect();
            let link_down = moved.iter().any(|(s, _)| s.rpc.is_some_and(|old| !pool.path_up(&s.node_id, old.ip())));
            if link_down {
                self.move_split(&engine.model, &moved, "went away");
                continue;
            }
            if !moved.is_empty() && engine.in_flight() == 0 {
                self.move_split(&engine.model, &moved, "is slower than one that came up");
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
}

/// Where the pool sends `share`'s RPC now, when that is not where the engine sends it.
fn rerouted(pool: &dyn Pool, share: &Share) -> Option<SocketAddr> {
    pool.rpc(&share.node_id).filter(|now| Some(*now) != share.rpc)
}
