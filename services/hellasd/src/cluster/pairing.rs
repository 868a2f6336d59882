//! One-time join codes, the proofs that pair two boxes, and pairing and unpairing.
//!
//! The owner of box A shows a code (60 random bits, shown as `XXXX-XXXX-XXXX`, valid ten
//! minutes); the owner of box B types it on B. B connects to A over TLS and sends an HMAC of the
//! TLS session's exported keying material keyed with the code; A answers with its own HMAC over
//! the same session. Each proves it knows the code on this session, so a box in the middle, which
//! would hold two different sessions, can relay nothing useful, and it gets one guess: A forgets
//! the code at the first attempt, right or wrong.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

use super::control::{self, Request, Response};
use super::peers::Peer;
use super::Cluster;

/// Crockford's base32: no I, L, O or U to misread.
const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const CODE_CHARS: usize = 12;
pub const CODE_LIFETIME: Duration = Duration::from_secs(600);

pub struct JoinCode {
    code: String,
    expires: Instant,
}

impl JoinCode {
    pub fn new() -> JoinCode {
        let mut rng = rand::thread_rng();
        let code = (0..CODE_CHARS)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
            .collect();
        JoinCode {
            code,
            expires: Instant::now() + CODE_LIFETIME,
        }
    }

    /// `XXXX-XXXX-XXXX`.
    pub fn display(&self) -> String {
        let chars: Vec<char> = self.code.chars().collect();
        chars
            .chunks(4)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join("-")
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.expires
    }

    pub fn remaining(&self) -> Duration {
        self.expires.saturating_duration_since(Instant::now())
    }

    pub fn code(&self) -> &str {
        &self.code
    }
}

/// The code as typed, in its canonical form: case, spaces and dashes do not matter, and the
/// letters Crockford reads as digits are taken as those digits.
pub fn normalize(typed: &str) -> Result<String, String> {
    let code: String = typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        })
        .collect();
    if code.len() != CODE_CHARS || !code.bytes().all(|b| ALPHABET.contains(&b)) {
        return Err(format!("a join code is {CODE_CHARS} letters and digits like ABCD-EFGH-JKMN, as the other box's dashboard shows it"));
    }
    Ok(code)
}

/// Which side of the pairing a proof speaks for, so one side's proof cannot be sent back as the
/// other's.
#[derive(Clone, Copy)]
pub enum Role {
    Joiner,
    Host,
}

fn mac(code: &str, role: Role, session: &[u8; 32]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(code.as_bytes()).expect("HMAC takes any key length");
    mac.update(match role {
        Role::Joiner => b"hellas-pair-v1 joiner",
        Role::Host => b"hellas-pair-v1 host",
    });
    mac.update(session);
    mac
}

pub fn proof(code: &str, role: Role, session: &[u8; 32]) -> String {
    hex::encode(mac(code, role, session).finalize().into_bytes())
}

pub fn verify(code: &str, role: Role, session: &[u8; 32], proof_hex: &str) -> bool {
    hex::decode(proof_hex).is_ok_and(|bytes| mac(code, role, session).verify_slice(&bytes).is_ok())
}

impl Cluster {

    /// A new one-time join code for another box to pair with this one; it replaces any other.
    pub fn new_join_code(&self) -> (String, Duration) {
        let code = JoinCode::new();
        let shown = (code.display(), code.remaining());
        *self.join_code.lock().unwrap() = Some(code);
        tracing::info!("join code shown; valid {} s", shown.1.as_secs());
        shown
    }

    /// Pairs with the box whose control port is at `address`, whose owner showed `typed`.
    pub async fn join(&self, address: SocketAddr, typed: &str) -> Result<Peer> {
        let code = normalize(typed).map_err(anyhow::Error::msg)?;
        let mut conn = control::connect(&self.tls, address, None, Duration::from_secs(5)).await?;
        if conn.fingerprint == self.identity.fingerprint {
            bail!("{address} is this box itself");
        }
        let request = Request::Pair {
            node_id: self.identity.node_id.clone(),
            name: self.box_name(),
            port: self.config.listen.port(),
            proof: proof(&code, Role::Joiner, &conn.session),
        };
        let Response::Paired {
            node_id,
            name,
            proof,
        } = conn
            .call(&request)
            .await
            .with_context(|| format!("pairing with {address}"))?
        else {
            bail!("{address} answered the pairing with something else");
        };
        if !verify(&code, Role::Host, &conn.session, &proof)
            || !conn.fingerprint.starts_with(&node_id)
        {
            bail!("the box at {address} did not prove it knows the join code: not paired (is something in between?)");
        }
        let peer = Peer {
            node_id,
            name,
            fingerprint: conn.fingerprint.clone(),
            address: address.ip(),
            addresses: Vec::new(),
            port: address.port(),
            paired_at: crate::state_file::unix_now(),
        };
        self.peers.update(|p| {
            p.peers.retain(|old| old.node_id != peer.node_id);
            p.insert(peer.clone());
            Ok(())
        })?;
        tracing::info!(peer = %peer.name, node_id = %peer.node_id, %address, "paired");
        self.fence_changed().await;
        self.probe(&peer).await;
        Ok(peer)
    }

    /// Forgets `node_id` here and asks it to forget this box; revoked here even if it is gone.
    pub async fn unpair(&self, node_id: &str) -> Result<Peer> {
        let peer = self.paired(node_id)?;
        if let Err(e) = self.call(&peer, &Request::Unpair).await {
            tracing::warn!(peer = %peer.name, "the peer was not told (its calls are refused from now on; unpair there too): {e:#}");
        }
        self.forget(&peer)?;
        self.fence_changed().await;
        Ok(peer)
    }

    /// The paired boxes, as kept (for the owner's backup).
    pub fn paired_boxes(&self) -> Result<Vec<Peer>> {
        Ok(self.peers.load()?.peers.clone())
    }

    /// Takes up a backup's identity and pairings; they are in force from the daemon's next start
    /// (the TLS configuration and the node id are made once, at start).
    pub fn restore_pairings(&self, key_der: &[u8], cert_der: &[u8], peers: Vec<Peer>) -> Result<()> {
        super::identity::Identity::save(&self.state_dir.join("cluster"), key_der, cert_der)?;
        self.peers.update(|p| {
            p.peers = peers;
            Ok(())
        })
    }

    /// Unpairs every peer (a factory reset).
    pub async fn unpair_all(&self) {
        let peers = self.peers.load().map(|p| p.peers.clone()).unwrap_or_default();
        for peer in peers {
            if let Err(e) = self.unpair(&peer.node_id).await {
                tracing::warn!(peer = %peer.name, "unpairing: {e:#}");
            }
        }
    }

    pub(super) fn forget(&self, peer: &Peer) -> Result<()> {
        self.peers.update(|p| {
            p.peers.retain(|old| old.node_id != peer.node_id);
            Ok(())
        })?;
        self.live.lock().unwrap().remove(&peer.node_id);
        self.holds
            .lock()
            .unwrap()
            .retain(|key, _| !key.starts_with(&format!("{}/", peer.node_id)));
        tracing::info!(peer = %peer.name, node_id = %peer.node_id, "unpaired");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_back_however_typed() {
        let code = JoinCode::new();
        let shown = code.display();
        assert_eq!(shown.len(), 14);
        assert_eq!(
            normalize(&shown.to_lowercase().replace('-', " ")).unwrap(),
            code.code()
        );
        assert_eq!(normalize("0o1i-L234-5678").unwrap(), "001112345678");
        assert!(normalize("ABCD-EFGH").unwrap_err().contains("12 letters"));
        assert!(normalize("ABCD-EFGH-JKMU").is_err());
    }

    #[test]
    fn proofs_bind_code_role_and_session() {
        let session = [7u8; 32];
        let p = proof("ABCDEFGHJKMN", Role::Joiner, &session);
        assert!(verify("ABCDEFGHJKMN", Role::Joiner, &session, &p));
        assert!(!verify("ABCDEFGHJKMP", Role::Joiner, &session, &p));
        assert!(!verify("ABCDEFGHJKMN", Role::Host, &session, &p));
        assert!(!verify("ABCDEFGHJKMN", Role::Joiner, &[8u8; 32], &p));
        assert!(!verify("ABCDEFGHJKMN", Role::Joiner, &session, "zz"));
    }
}
