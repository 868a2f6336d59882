//! Fleet rollouts: the paired boxes updated to one release, one box at a time.
//!
//! The box the owner starts it on orders its peers by name and itself last (it reboots, which
//! ends its part). Each peer is asked to install the release (its own signed A/B update,
//! `crate::update`), then watched until it answers again on that release, healthy and idle. The
//! rollout halts at the first box that refuses, fails, comes back on another release (a rollback)
//! or does not come back in time, and says which box and why; the boxes after it are left alone.
//! The rollout is kept in `cluster/rollout.json`, so its outcome survives this box's own reboot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::control::{Request, Response};
use super::peers::Peer;
use super::Cluster;
use crate::update::{self, UpdateFiles};

/// What a peer's re-image request came to on this box.
pub(super) enum Reimaged {
    Done,
    /// A wipe, waiting for the owner; what the peer is told.
    Awaiting(String),
}

/// A paired box's request to wipe this one, shown to the owner on the Pool page.
#[derive(Clone, Debug, Serialize)]
pub struct WipeRequest {
    pub from: String,
    pub node_id: String,
    pub at: u64,
}

/// What a rollout is doing; the variants are its states.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RolloutState {
    /// Started, not at the first box yet.
    Starting,
    /// Waiting for `name` to come back healthy on the release.
    Updating { name: String, node_id: String },
    /// Every peer is on the release; this box installs it and reboots.
    UpdatingSelf,
    Done,
    Halted { name: String, reason: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub version: String,
    pub started_at: u64,
    pub state: RolloutState,
    /// What happened, a line per step, for the dashboard.
    pub steps: Vec<String>,
}

impl Rollout {
    pub fn running(&self) -> bool {
        matches!(self.state, RolloutState::Starting | RolloutState::Updating { .. } | RolloutState::UpdatingSelf)
    }

    pub fn summary(&self) -> String {
        match &self.state {
            RolloutState::Starting => format!("updating the fleet to {}", self.version),
            RolloutState::Updating { name, .. } => format!("updating the fleet to {}: waiting for {name}", self.version),
            RolloutState::UpdatingSelf => format!("updating the fleet to {}: this box is updating itself last", self.version),
            RolloutState::Done => format!("the fleet is on {}", self.version),
            RolloutState::Halted { name, reason } => format!("the update to {} halted at {name}: {reason}", self.version),
        }
    }
}

/// `cluster/rollout.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RolloutFile {
    pub rollout: Option<Rollout>,
}

/// How a box that was asked to update looks now, from its status answers.
#[derive(Debug, PartialEq)]
pub enum Progress {
    Waiting,
    Arrived,
    Failed(String),
}

/// Judges one status answer (`None`: no answer, e.g. rebooting) of a box updating to `version`;
/// `away` says whether it has been unreachable since it was asked, i.e. it rebooted.
pub fn judge(status: Option<&super::control::NodeStatus>, version: &str, away: bool) -> Progress {
    let Some(status) = status else { return Progress::Waiting };
    let update = &status.update;
    if let Some(rejected) = update.rejected.iter().find(|r| r.starts_with(&format!("{version}:"))) {
        return Progress::Failed(format!("it rolled back from {rejected}"));
    }
    if let Some(failure) = &update.failed {
        return Progress::Failed(failure.clone());
    }
    if status.version == version {
        return if status.healthy && !update.busy { Progress::Arrived } else { Progress::Waiting };
    }
    if away && !update.busy {
        return Progress::Failed(format!("it came back on {} instead of {version}", status.version));
    }
    Progress::Waiting
}

impl Cluster {
    /// Asks this box's updater for `version`: a peer's rollout reached this box.
    pub(super) fn update_this_box(&self, version: &str) -> Result<()> {
        if self.version() == version {
            return Ok(());
        }
        let files = UpdateFiles::new(&self.state_dir);
        if let Some(why) = files.status()?.not_on_offer(version) {
            bail!("{}: {why}", self.box_name());
        }
        files.request(&update::Request::Apply { version: version.to_string() })?;
        tracing::info!(version, "update requested by a fleet rollout");
        Ok(())
    }

    /// Back to the release image, as peer `from` asked (see [`Request::Reimage`]). A wipe waits
    /// for this box's owner unless they let peers wipe it: a paired box is trusted to share
    /// memory, not to erase the owner's box.
    pub(super) fn reimage_this_box(&self, from: &Peer, keep_data: bool) -> Result<Reimaged> {
        if keep_data {
            match UpdateFiles::new(&self.state_dir).status()?.offered {
                Some(version) => self.update_this_box(&version)?,
                None => tracing::info!("re-image keeping the data: this box runs the newest release already"),
            }
            return Ok(Reimaged::Done);
        }
        if !self.owner.load()?.settings.peers_may_wipe {
            *self.wipe_request.lock().unwrap() = Some(WipeRequest { from: from.name.clone(), node_id: from.node_id.clone(), at: crate::state_file::unix_now() });
            tracing::warn!(peer = %from.name, "a peer asks to wipe this box: waiting for the owner to approve it on the Pool page");
            return Ok(Reimaged::Awaiting(format!(
                "{} waits for its owner to approve the wipe on its Pool page (or to let paired boxes wipe it, in its settings)",
                self.box_name()
            )));
        }
        tracing::warn!(peer = %from.name, "re-image without the data requested by a peer: factory reset");
        self.factory_reset()?;
        Ok(Reimaged::Done)
    }

    /// A peer's request to wipe this box, waiting for the owner.
    pub fn wipe_request(&self) -> Option<WipeRequest> {
        self.wipe_request.lock().unwrap().clone()
    }

    /// The owner's answer to the waiting wipe request: approved, the box is reset.
    pub fn answer_wipe_request(&self, approve: bool) -> Result<()> {
        let request = self.wipe_request.lock().unwrap().take().context("no paired box asks to wipe this one")?;
        if approve {
            tracing::warn!(peer = %request.from, "the owner approved the wipe a peer asked for: factory reset");
            self.factory_reset()?;
        } else {
            tracing::info!(peer = %request.from, "the owner refused the wipe a peer asked for");
        }
        Ok(())
    }

    fn factory_reset(&self) -> Result<()> {
        let reset = self.reset.get().context("the pool is not started")?();
        // After the answer: the reset unpairs this box from the caller too.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Err(e) = reset.await {
                tracing::error!("re-image: {e:#}");
            }
        });
        Ok(())
    }

    /// Re-images paired box `node_id`; without `keep_data` it is reset and no longer paired.
    pub async fn reimage(&self, node_id: &str, keep_data: bool) -> Result<String> {
        let peer = self.paired(node_id)?;
        let answer = self.call(&peer, &Request::Reimage { keep_data }).await.with_context(|| format!("re-imaging {}", peer.name))?;
        if let Response::Awaiting { message } = answer {
            return Ok(format!("Not wiped yet: {message}."));
        }
        if keep_data {
            return Ok(format!("{} is going back to the channel's newest release, keeping its data", peer.name));
        }
        self.forget(&peer)?;
        self.fence_changed().await;
        Ok(format!("{} was reset to the release image: it is unclaimed and no longer paired", peer.name))
    }

    pub fn rollout_state(&self) -> Option<Rollout> {
        self.rollout.load().ok().and_then(|file| file.rollout.clone())
    }

    /// Starts updating the paired boxes to `version`, then this box.
    pub fn start_rollout(self: &Arc<Self>, version: &str) -> Result<()> {
        if self.rollout_state().is_some_and(|r| r.running()) {
            bail!("a fleet update is running already");
        }
        if self.version() != version {
            if let Some(why) = UpdateFiles::new(&self.state_dir).status()?.not_on_offer(version) {
                bail!("this box: {why}");
            }
        }
        let rollout = Rollout { version: version.to_string(), started_at: crate::state_file::unix_now(), state: RolloutState::Starting, steps: Vec::new() };
        self.rollout.update(|file| {
            file.rollout = Some(rollout);
            Ok(())
        })?;
        tracing::info!(version, "fleet update started");
        let cluster = self.clone();
        let version = version.to_string();
        tokio::spawn(async move { cluster.run_rollout(&version).await });
        Ok(())
    }

    async fn run_rollout(&self, version: &str) {
        let mut peers = self.peers.load().map(|p| p.peers.clone()).unwrap_or_default();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        for peer in peers {
            self.step(RolloutState::Updating { name: peer.name.clone(), node_id: peer.node_id.clone() }, format!("{}: asked to install {version}", peer.name));
            match self.update_peer(&peer, version).await {
                Ok(done) => self.step_line(done),
                Err(reason) => {
                    tracing::warn!(peer = %peer.name, "fleet update halted: {reason}");
                    self.step(RolloutState::Halted { name: peer.name.clone(), reason: reason.clone() }, format!("{}: {reason}; the rollout stops here", peer.name));
                    return;
                }
            }
        }
        let name = self.box_name();
        match self.update_this_box(version) {
            Ok(()) if self.version() == version => self.step(RolloutState::Done, format!("{name} (this box): on {version}")),
            Ok(()) => self.step(RolloutState::UpdatingSelf, format!("{name} (this box): installing {version}, then rebooting")),
            Err(e) => self.step(RolloutState::Halted { name: name.clone(), reason: format!("{e:#}") }, format!("{name} (this box): {e:#}")),
        }
    }

    /// Asks `peer` to install `version` and waits until it is back on it, healthy.
    async fn update_peer(&self, peer: &Peer, version: &str) -> Result<String, String> {
        if let Ok(Response::Status(status)) = self.call(peer, &Request::Status).await {
            if status.version == version {
                return Ok(format!("{}: already on {version}", peer.name));
            }
        }
        self.call(peer, &Request::Update { version: version.to_string() }).await.map_err(|e| format!("it refused: {e:#}"))?;
        let timeout = Duration::from_secs(self.config.rollout_timeout_secs);
        let deadline = Instant::now() + timeout;
        let mut away = false;
        loop {
            tokio::time::sleep(Duration::from_secs(self.config.probe_interval_secs.max(1))).await;
            let status = match self.call(peer, &Request::Status).await {
                Ok(Response::Status(status)) => Some(status),
                _ => {
                    away = true;
                    None
                }
            };
            match judge(status.as_ref(), version, away) {
                Progress::Arrived => return Ok(format!("{}: on {version} and healthy", peer.name)),
                Progress::Failed(why) => return Err(why),
                Progress::Waiting if Instant::now() > deadline => {
                    return Err(format!("it did not come back healthy on {version} within {} s", timeout.as_secs()))
                }
                Progress::Waiting => {}
            }
        }
    }

    /// Once this box, which updated itself last, knows how that went.
    pub(super) fn settle_own_rollout(&self) {
        let Some(rollout) = self.rollout_state().filter(|r| r.state == RolloutState::UpdatingSelf) else { return };
        let name = self.box_name();
        match judge(Some(&self.status()), &rollout.version, false) {
            Progress::Arrived => self.step(RolloutState::Done, format!("{name} (this box): on {} and healthy", rollout.version)),
            Progress::Failed(reason) => self.step(RolloutState::Halted { name: name.clone(), reason: reason.clone() }, format!("{name} (this box): {reason}")),
            Progress::Waiting => {}
        }
    }

    fn step(&self, state: RolloutState, line: String) {
        self.change_rollout(|r| {
            r.state = state;
            r.steps.push(line);
        });
    }

    fn step_line(&self, line: String) {
        self.change_rollout(|r| r.steps.push(line));
    }

    fn change_rollout(&self, change: impl FnOnce(&mut Rollout)) {
        let changed = self.rollout.update(|file| {
            if let Some(rollout) = file.rollout.as_mut() {
                change(rollout);
            }
            Ok(())
        });
        if let Err(e) = changed {
            tracing::error!("recording the fleet update: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::control::{NodeStatus, UpdateSummary};

    fn status(version: &str, update: UpdateSummary) -> NodeStatus {
        NodeStatus { node_id: "b".into(), name: "bravo".into(), version: version.into(), healthy: true, budget: 0, free: 0, available: 0, rpc: None, addresses: vec![], update }
    }

    #[test]
    fn a_box_arrives_fails_or_rolls_back() {
        let idle = UpdateSummary::default();
        let busy = UpdateSummary { busy: true, ..UpdateSummary::default() };
        assert_eq!(judge(None, "2", true), Progress::Waiting);
        assert_eq!(judge(Some(&status("1", busy.clone())), "2", false), Progress::Waiting);
        assert_eq!(judge(Some(&status("1", idle.clone())), "2", false), Progress::Waiting, "asked, not yet started");
        assert_eq!(judge(Some(&status("2", busy)), "2", true), Progress::Waiting, "still installing");
        let on_trial = NodeStatus { healthy: false, ..status("2", idle.clone()) };
        assert_eq!(judge(Some(&on_trial), "2", true), Progress::Waiting, "booted on trial");
        assert_eq!(judge(Some(&status("2", idle.clone())), "2", true), Progress::Arrived);
        let failed = UpdateSummary { failed: Some("installing 2 failed: bad signature".into()), ..UpdateSummary::default() };
        assert_eq!(judge(Some(&status("1", failed)), "2", false), Progress::Failed("installing 2 failed: bad signature".into()));
        let rolled = UpdateSummary { rejected: vec!["2: unhealthy: engine".into()], ..UpdateSummary::default() };
        assert!(matches!(judge(Some(&status("1", rolled)), "2", true), Progress::Failed(why) if why.contains("rolled back from 2: unhealthy")));
        assert_eq!(judge(Some(&status("1", idle)), "2", true), Progress::Failed("it came back on 1 instead of 2".into()));
    }
}
