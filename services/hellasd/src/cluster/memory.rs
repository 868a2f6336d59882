//! Memory this box lends: holds that peers take on it for their split models, and what is free
//! beside its own engines.

use std::time::Instant;

use anyhow::Result;

use super::*;

impl Cluster {
    /// Memory held on this box for peers' models.
    pub fn held_bytes(&self) -> u64 {
        let mut holds = self.holds.lock().unwrap();
        holds.retain(|_, h| h.expires > Instant::now());
        holds.values().map(|h| h.bytes).sum()
    }

    pub(super) fn free(&self) -> u64 {
        self.supervisor
            .budget()
            .saturating_sub(self.supervisor.resident_bytes())
            .saturating_sub(self.held_bytes())
    }

    pub(super) fn available(&self) -> u64 {
        self.supervisor.budget().saturating_sub(self.supervisor.busy_bytes()).saturating_sub(self.held_bytes())
    }

    pub async fn hold(&self, node_id: &str, key: &str, bytes: u64) -> Result<()> {
        let peer = self.paired(node_id)?;
        let request = Request::Reserve {
            key: key.to_string(),
            bytes,
            ttl_secs: HOLD_TTL.as_secs(),
        };
        self.call(&peer, &request)
            .await
            .map(drop)
            .with_context(|| format!("holding memory on {}", peer.name))
    }

    pub async fn release(&self, node_id: &str, key: &str) {
        let Ok(peer) = self.paired(node_id) else {
            return;
        };
        if let Err(e) = self
            .call(
                &peer,
                &Request::Release {
                    key: key.to_string(),
                },
            )
            .await
        {
            tracing::debug!(peer = %peer.name, "releasing memory (it lapses by itself): {e:#}");
        }
    }
}
