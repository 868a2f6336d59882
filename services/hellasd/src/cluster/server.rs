//! The control port: what this box answers the boxes that call it. Only the pairing call is
//! open to a box that is not paired; every other call must come with a pinned key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::control::{self, Request, Response};
use super::peers::Peer;
use super::fleet::Reimaged;
use super::pairing::{self, Role};
use super::{Cluster, Hold, HOLD_TTL};

impl Cluster {

    pub(super) async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("cluster control port: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let cluster = self.clone();
            tokio::spawn(async move {
                if let Err(e) = cluster.answer(tcp, from).await {
                    tracing::debug!(%from, "control connection: {e:#}");
                }
            });
        }
    }

    async fn answer(&self, tcp: tokio::net::TcpStream, from: SocketAddr) -> Result<()> {
        let mut conn = control::accept(&self.tls, tcp, Duration::from_secs(5)).await?;
        let request: Request = tokio::time::timeout(Duration::from_secs(5), conn.receive())
            .await
            .context("no request within 5 s")??;
        let peer = self
            .peers
            .load()?
            .by_fingerprint(&conn.fingerprint)
            .cloned();
        let response = match (request, peer) {
            (
                Request::Pair {
                    node_id,
                    name,
                    port,
                    proof,
                },
                _,
            ) => {
                self.pair_request(&conn, from, node_id, name, port, &proof)
                    .await
            }
            (_, None) => Response::Refused {
                message: format!("{} is not paired with this box", from.ip()),
            },
            (request, Some(peer)) => {
                if peer.address != from.ip() {
                    // The key is what identifies a peer; its address is wherever it calls from.
                    self.peers.update(|p| {
                        if let Some(known) = p.peers.iter_mut().find(|p| p.node_id == peer.node_id)
                        {
                            known.address = from.ip();
                        }
                        Ok(())
                    })?;
                    self.fence_changed().await;
                }
                self.paired_request(&peer, request).await
            }
        };
        conn.send(&response).await
    }

    async fn pair_request(
        &self,
        conn: &control::ServerConnection,
        from: SocketAddr,
        node_id: String,
        name: String,
        port: u16,
        proof: &str,
    ) -> Response {
        // One guess per code, right or wrong.
        let code = self.join_code.lock().unwrap().take();
        let Some(code) = code.filter(|c| !c.expired()) else {
            return Response::Refused { message: format!("{} has no open join code: show one on its dashboard (Pool → Add a box), then type it within ten minutes", self.box_name()) };
        };
        if !pairing::verify(code.code(), Role::Joiner, &conn.session, proof) {
            tracing::warn!(%from, "wrong join code; the code is void now");
            return Response::Refused {
                message: "wrong join code; it is void now: show a new one on the other box".into(),
            };
        }
        if !conn.fingerprint.starts_with(&node_id) {
            return Response::Refused {
                message: "the node id does not belong to the key presented".into(),
            };
        }
        let peer = Peer {
            node_id,
            name,
            fingerprint: conn.fingerprint.clone(),
            address: from.ip(),
            addresses: Vec::new(),
            port,
            paired_at: crate::state_file::unix_now(),
        };
        if let Err(e) = self.peers.update(|p| {
            p.insert(peer.clone());
            Ok(())
        }) {
            return Response::Refused {
                message: format!("the box could not save the pairing: {e:#}"),
            };
        }
        tracing::info!(peer = %peer.name, node_id = %peer.node_id, address = %peer.address, "paired");
        self.fence_changed().await;
        Response::Paired {
            node_id: self.identity.node_id.clone(),
            name: self.box_name(),
            proof: pairing::proof(code.code(), Role::Host, &conn.session),
        }
    }

    async fn paired_request(&self, peer: &Peer, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(self.status()),
            Request::Reserve {
                key,
                bytes,
                ttl_secs,
            } => {
                let key = format!("{}/{key}", peer.node_id);
                let held = self.holds.lock().unwrap().get(&key).map_or(0, |h| h.bytes);
                // Idle models of this box's own make way, as they would for a model of its own.
                if bytes > self.free() + held {
                    let what = format!("{}'s model '{}'", peer.name, key.split_once('/').map_or("", |k| k.1));
                    if let Err(e) = self.supervisor.make_room_for(bytes - held, &what).await {
                        return Response::Refused { message: format!("{}: {e}", self.box_name()) };
                    }
                }
                let free = self.free();
                let mut holds = self.holds.lock().unwrap();
                if bytes > free + held {
                    return Response::Refused {
                        message: format!(
                            "{} has {} free, not {}",
                            self.box_name(),
                            hellas_model::plan::format_bytes(free + held),
                            hellas_model::plan::format_bytes(bytes)
                        ),
                    };
                }
                let ttl = Duration::from_secs(ttl_secs).min(HOLD_TTL * 4);
                holds.insert(
                    key,
                    Hold {
                        bytes,
                        expires: Instant::now() + ttl,
                    },
                );
                Response::Done
            }
            Request::Release { key } => {
                self.holds
                    .lock()
                    .unwrap()
                    .remove(&format!("{}/{key}", peer.node_id));
                Response::Done
            }
            Request::Unpair => match self.forget(peer) {
                Ok(()) => {
                    self.fence_changed().await;
                    Response::Done
                }
                Err(e) => Response::Refused {
                    message: format!("{e:#}"),
                },
            },
            Request::Update { version } => match self.update_this_box(&version) {
                Ok(()) => Response::Done,
                Err(e) => Response::Refused { message: format!("{e:#}") },
            },
            Request::Reimage { keep_data } => match self.reimage_this_box(peer, keep_data) {
                Ok(Reimaged::Done) => Response::Done,
                Ok(Reimaged::Awaiting(message)) => Response::Awaiting { message },
                Err(e) => Response::Refused { message: format!("{e:#}") },
            },
            Request::Pair { .. } => unreachable!("answered before"),
        }
    }
}
