//! What a split across boxes is: the boxes that could take part ([`Member`]) and what each holds
//! of a model ([`Share`], [`Split`]), with the llama-server arguments that carry it out.

use std::net::SocketAddr;

use serde::Serialize;

/// A box that could take part.
#[derive(Clone, Debug)]
pub struct Member {
    pub node_id: String,
    pub name: String,
    /// Its RPC worker; `None` for the head, which runs llama-server itself.
    pub rpc: Option<SocketAddr>,
    /// Its budget not held by anything else.
    pub free: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Share {
    pub node_id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc: Option<SocketAddr>,
    pub layers: u32,
    pub bytes: u64,
}

/// The boxes a model runs on, the head first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Split {
    pub shares: Vec<Share>,
}

impl Split {
    pub fn head(&self) -> &Share {
        &self.shares[0]
    }

    pub fn peers(&self) -> &[Share] {
        &self.shares[1..]
    }

    /// `--rpc`: the peers' workers, in the order their devices take layers.
    pub fn rpc_arg(&self) -> String {
        self.peers()
            .iter()
            .filter_map(|s| s.rpc)
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `--tensor-split` and `--n-gpu-layers`. llama.cpp puts RPC devices before local ones and
    /// offloads the last `-ngl` layers. A head that offloads to its own GPU lists its share last
    /// and offloads all; a head without one keeps its share on the CPU by offloading only the
    /// peers' layers.
    pub fn device_args(&self, head_offloads: bool) -> (String, u32) {
        let mut split: Vec<u32> = self.peers().iter().map(|s| s.layers).collect();
        let peers: u32 = split.iter().sum();
        if head_offloads {
            split.push(self.head().layers);
            let all = peers + self.head().layers + 1; // +1: the output layer
            (join(&split), all)
        } else {
            (join(&split), peers)
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.shares.iter().map(|s| s.name.clone()).collect()
    }
}

fn join(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}
