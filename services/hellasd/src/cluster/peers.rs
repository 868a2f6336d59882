//! The boxes this one is paired with, kept in `cluster/peers.json` on the data partition.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Peer {
    pub node_id: String,
    pub name: String,
    /// SHA-256 of its certificate: the key every control call from or to it must present.
    pub fingerprint: String,
    /// Where it was last reached; discovery updates it when the box moves.
    pub address: IpAddr,
    /// Every address it says it can be reached on (its status, over this pinned channel): the
    /// paths RPC may take, and the addresses the fence admits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// Its control port.
    pub port: u16,
    pub paired_at: u64,
}

impl Peer {
    pub fn control(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    /// Where it may be reached: where it was last reached, then what it said.
    pub fn all_addresses(&self) -> Vec<IpAddr> {
        let mut all = vec![self.address];
        all.extend(self.addresses.iter().filter(|a| **a != self.address));
        all
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peers {
    pub peers: Vec<Peer>,
}

impl Peers {
    pub fn by_fingerprint(&self, fingerprint: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.fingerprint == fingerprint)
    }

    pub fn by_node(&self, node_id: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.node_id == node_id)
    }

    /// Adds `peer`, replacing an earlier pairing with the same box.
    pub fn insert(&mut self, peer: Peer) {
        self.peers
            .retain(|p| p.node_id != peer.node_id && p.fingerprint != peer.fingerprint);
        self.peers.push(peer);
        self.peers.sort_by(|a, b| a.name.cmp(&b.name));
    }
}
