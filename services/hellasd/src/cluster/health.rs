//! Peers' health: their status asked at every probe, misses counted until a peer is gone, each
//! path to them measured, and the members a split can be planned over.

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
        let latency = started.elapsed();
        let said = match &answer {
            Ok(Response::Status(status)) => Some(status.addresses.iter().copied().filter(paths::usable).collect::<Vec<_>>()),
            _ => None,
        };
        {
            let mut live = self.live.lock().unwrap();
            let entry = live.entry(peer.node_id.clone()).or_default();
            match answer {
                Ok(Response::Status(status)) => {
                    entry.status = Some(status);
                    entry.latency = Some(latency);
                    entry.misses = 0;
                    entry.error = None;
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
        let mut peer = peer.clone();
        if let Some(said) = said {
            let proven = self.prove_addresses(&peer, said).await;
            if proven != peer.addresses {
                self.learn_addresses(&peer, &proven).await;
                peer.addresses = proven;
            }
        }
        self.measure_paths(&peer).await;
    }

    /// Of the addresses `peer` says it has, those it has shown to be at: the one it was just
    /// reached at, those it showed before, and any new one where a TLS handshake finds its pinned
    /// key. A paired box that names another machine's address cannot open the fence to it.
    async fn prove_addresses(&self, peer: &Peer, said: Vec<IpAddr>) -> Vec<IpAddr> {
        let timeout = Duration::from_secs(1);
        let checks = said.into_iter().map(|address| async move {
            if address == peer.address || peer.addresses.contains(&address) {
                return Some(address);
            }
            let shown = control::connect(&self.tls, SocketAddr::new(address, peer.port), Some(&peer.fingerprint), timeout).await;
            shown.ok().map(|_| address)
        });
        futures_util::future::join_all(checks).await.into_iter().flatten().collect()
    }

    /// Keeps the addresses a peer has shown (the fence admits them from now on).
    async fn learn_addresses(&self, peer: &Peer, addresses: &[IpAddr]) {
        tracing::info!(peer = %peer.name, ?addresses, "the peer's addresses");
        let saved = self.peers.update(|p| {
            if let Some(known) = p.peers.iter_mut().find(|p| p.node_id == peer.node_id) {
                known.addresses = addresses.to_vec();
            }
            Ok(())
        });
        match saved {
            Ok(()) => self.fence_changed().await,
            Err(e) => tracing::warn!(peer = %peer.name, "saving the peer's addresses: {e:#}"),
        }
    }

    /// Measures every path to `peer` and picks the one RPC takes.
    async fn measure_paths(&self, peer: &Peer) {
        let addresses: Vec<IpAddr> = peer.all_addresses().into_iter().filter(paths::usable).collect();
        let measured = futures_util::future::join_all(
            addresses.iter().map(|a| paths::measure(SocketAddr::new(*a, peer.port), paths::MEASURE_TIMEOUT)),
        )
        .await;
        let mut live = self.live.lock().unwrap();
        let entry = live.entry(peer.node_id.clone()).or_default();
        let mut kept = std::mem::take(&mut entry.paths);
        for (address, result) in addresses.into_iter().zip(measured) {
            let mut path = match kept.iter().position(|p| p.address == address) {
                Some(i) => kept.swap_remove(i),
                None => paths::Path::new(address),
            };
            path.record(result);
            entry.paths.push(path);
        }
        let route = paths::choose(&entry.paths, entry.route);
        if route != entry.route {
            let latency = |a: Option<IpAddr>| entry.paths.iter().find(|p| Some(p.address) == a).and_then(|p| p.latency);
            tracing::info!(peer = %peer.name, from = ?entry.route, to = ?route, latency = ?latency(route), "RPC path");
            entry.route = route;
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
                    rpc: Self::route_to(l),
                    free: status.available,
                })
            })
            .collect()
    }

    /// The peer's worker by the path chosen for it: its port at the chosen address.
    fn route_to(live: &Live) -> Option<SocketAddr> {
        let worker = live.status.as_ref()?.rpc?;
        Some(live.route.map_or(worker, |address| SocketAddr::new(address, worker.port())))
    }

    /// Where RPC to `node_id` goes now.
    pub fn rpc(&self, node_id: &str) -> Option<SocketAddr> {
        self.live.lock().unwrap().get(node_id).and_then(Self::route_to)
    }

    /// Whether the path to `node_id` at `address` worked when last measured.
    pub fn path_up(&self, node_id: &str, address: IpAddr) -> bool {
        self.live.lock().unwrap().get(node_id).is_some_and(|l| l.paths.iter().any(|p| p.address == address && p.up()))
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
