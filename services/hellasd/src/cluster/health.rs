//! Peers' health: their status asked at every probe, misses counted until a peer is gone, and
//! the members a split can be planned over.

use super::*;

impl Cluster {
    /// Asks every peer for its status now.
    pub async fn probe_all(&self) {
        let peers = self
            .peers
            .load()
            .map(|p| p.peers.clone())
            .unwrap_or_default();
        futures_util::future::join_all(peers.iter().map(|p| self.probe(p))).await;
        let known: Vec<String> = peers.into_iter().map(|p| p.node_id).collect();
        self.live.lock().unwrap().retain(|id, _| known.contains(id));
    }

    pub(super) async fn probe(&self, peer: &Peer) {
        let started = Instant::now();
        let answer = self.call(peer, &Request::Status).await;
        let mut live = self.live.lock().unwrap();
        let entry = live.entry(peer.node_id.clone()).or_default();
        match answer {
            Ok(Response::Status(status)) => {
                *entry = Live {
                    status: Some(status),
                    latency: Some(started.elapsed()),
                    misses: 0,
                    error: None,
                };
            }
            Ok(other) => {
                entry.misses += 1;
                entry.error = Some(format!("unexpected answer {other:?}"));
            }
            Err(e) => {
                entry.misses += 1;
                entry.error = Some(format!("{e:#}"));
            }
        }
    }

    /// Marks `node_id` gone until it answers again (the engine saw its worker vanish).
    pub fn mark_gone(&self, node_id: &str, why: &str) {
        if let Some(entry) = self.live.lock().unwrap().get_mut(node_id) {
            entry.misses = MISSES_UNTIL_GONE;
            entry.error = Some(why.to_string());
        }
    }

    pub fn reachable(&self, node_id: &str) -> bool {
        self.live
            .lock()
            .unwrap()
            .get(node_id)
            .is_some_and(Live::reachable)
    }

    /// The reachable peers with a running worker, for the planner.
    pub fn members(&self) -> Vec<Member> {
        let peers = self
            .peers
            .load()
            .map(|p| p.peers.clone())
            .unwrap_or_default();
        let live = self.live.lock().unwrap();
        peers
            .iter()
            .filter_map(|peer| {
                let l = live.get(&peer.node_id).filter(|l| l.reachable())?;
                let status = l.status.as_ref()?;
                Some(Member {
                    node_id: peer.node_id.clone(),
                    name: peer.name.clone(),
                    rpc: status.rpc,
                    free: status.available,
                })
            })
            .collect()
    }

    /// This box as a member of a split.
    pub fn head(&self, free: u64) -> Member {
        Member {
            node_id: self.identity.node_id.clone(),
            name: self.box_name(),
            rpc: None,
            free,
        }
    }
}
