//! The control protocol between boxes: one JSON request and one JSON answer per mutual-TLS
//! connection, each a line. Small on purpose; the model's tensors travel over llama.cpp's RPC,
//! not here.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::tls::{self, Tls};

/// A request or answer longer than this is refused.
const MAX_LINE: usize = 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// From a box that was given this box's join code; the only request an unpaired box may make.
    Pair {
        node_id: String,
        name: String,
        port: u16,
        proof: String,
    },
    Status,
    /// Hold `bytes` of this box's budget for a model the caller runs across it, until `ttl_secs`
    /// pass without the hold being renewed.
    Reserve {
        key: String,
        bytes: u64,
        ttl_secs: u64,
    },
    Release {
        key: String,
    },
    /// The caller forgets this box; this box forgets it too.
    Unpair,
    /// Install `version` from this box's release channel and reboot into it (a fleet rollout).
    Update { version: String },
    /// Back to the release image: with `keep_data`, the channel's newest release (the root is
    /// read-only and verified, so a box on it runs the release image already); without, a
    /// factory reset (the box forgets its owner, models, keys and pairings), which waits for
    /// this box's owner to approve it unless they let peers wipe it.
    Reimage { keep_data: bool },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Paired {
        node_id: String,
        name: String,
        proof: String,
    },
    Status(NodeStatus),
    Done,
    Refused {
        message: String,
    },
    /// The request is recorded and waits for this box's owner (a wipe, see [`Request::Reimage`]).
    Awaiting {
        message: String,
    },
}

/// What a box tells its peers about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    pub node_id: String,
    pub name: String,
    pub version: String,
    /// Its boot passed the health check: it is not on trial after an update.
    pub healthy: bool,
    /// The box's memory budget for models.
    pub budget: u64,
    /// What of it is neither planned for its own models nor held for its peers'.
    pub free: u64,
    /// What it could lend: `free` plus its own idle models, which make way.
    #[serde(default)]
    pub available: u64,
    /// Its RPC worker, while one runs: its cluster address and the worker's port (the worker
    /// listens on every address in `addresses`).
    pub rpc: Option<SocketAddr>,
    /// Every address it can be reached on (LAN, direct cables), for its peers to measure.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub update: UpdateSummary,
}

/// A box's updater, as its peers see it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct UpdateSummary {
    /// Checking the channel, installing, or rebooting into a release.
    pub busy: bool,
    /// What the last check or install failed with.
    pub failed: Option<String>,
    /// The release its channel offers.
    pub offered: Option<String>,
    /// Releases it rolled back from, as "version: reason".
    pub rejected: Vec<String>,
    pub last_result: Option<String>,
}

/// An open control connection and what the TLS handshake established.
pub struct Connection<S> {
    stream: BufReader<S>,
    /// The fingerprint of the certificate the other side presented.
    pub fingerprint: String,
    /// The session's exported keying material (see [`tls::session_binding`]).
    pub session: [u8; 32],
}

pub type ClientConnection = Connection<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
pub type ServerConnection = Connection<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

/// Connects to the control port at `address`; with `pinned`, only a box with that key is spoken to.
pub async fn connect(
    tls: &Tls,
    address: SocketAddr,
    pinned: Option<&str>,
    timeout: Duration,
) -> Result<ClientConnection> {
    let connected = tokio::time::timeout(timeout, async {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        tcp.set_nodelay(true).ok();
        tls.client
            .connect(Tls::server_name(), tcp)
            .await
            .with_context(|| format!("TLS with {address}"))
    })
    .await
    .with_context(|| format!("no answer from {address} within {}s", timeout.as_secs_f32()))??;
    let (_, session) = connected.get_ref();
    let fingerprint = tls::peer_fingerprint(session).context("the box presented no certificate")?;
    if let Some(pinned) = pinned {
        if fingerprint != pinned {
            bail!("the box at {address} presented key {}…, not the paired one ({}…): unpair and pair it again if it was re-installed", &fingerprint[..12], &pinned[..12.min(pinned.len())]);
        }
    }
    let session = tls::session_binding(session)?;
    Ok(Connection {
        stream: BufReader::new(connected),
        fingerprint,
        session,
    })
}

/// Accepts a connection on the control port.
pub async fn accept(
    tls: &Tls,
    tcp: tokio::net::TcpStream,
    timeout: Duration,
) -> Result<ServerConnection> {
    let stream = tokio::time::timeout(timeout, tls.server.accept(tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
    let (_, session) = stream.get_ref();
    let fingerprint =
        tls::peer_fingerprint(session).context("the peer presented no certificate")?;
    let session = tls::session_binding(session)?;
    Ok(Connection {
        stream: BufReader::new(stream),
        fingerprint,
        session,
    })
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<()> {
        let mut line = serde_json::to_vec(message).context("encoding a control message")?;
        line.push(b'\n');
        self.stream
            .get_mut()
            .write_all(&line)
            .await
            .context("sending a control message")?;
        self.stream
            .get_mut()
            .flush()
            .await
            .context("sending a control message")
    }

    pub async fn receive<T: serde::de::DeserializeOwned>(&mut self) -> Result<T> {
        let mut line = Vec::new();
        let mut limited = (&mut self.stream).take(MAX_LINE as u64 + 1);
        use tokio::io::AsyncReadExt;
        limited
            .read_until(b'\n', &mut line)
            .await
            .context("reading a control message")?;
        if line.len() > MAX_LINE {
            bail!("control message longer than {MAX_LINE} bytes");
        }
        if line.is_empty() {
            bail!("the other box closed the connection without an answer");
        }
        serde_json::from_slice(&line).context("decoding a control message")
    }

    /// Sends `request` and returns the answer, a refusal turned into an error.
    pub async fn call(&mut self, request: &Request) -> Result<Response> {
        self.send(request).await?;
        match self.receive().await? {
            Response::Refused { message } => bail!("{message}"),
            answer => Ok(answer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cluster::identity::Identity;

    /// A control port that answers every request with what it saw: the caller's key and the
    /// session binding.
    async fn echo_server(identity: &Identity) -> SocketAddr {
        let tls = std::sync::Arc::new(Tls::new(identity).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tls = tls.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = accept(&tls, tcp, Duration::from_secs(5)).await else { return };
                    let Ok(_) = conn.receive::<Request>().await else { return };
                    let seen = format!("{} {}", conn.fingerprint, hex::encode(conn.session));
                    conn.send(&Response::Refused { message: seen }).await.unwrap();
                });
            }
        });
        address
    }

    #[tokio::test]
    async fn both_keys_are_proven_and_the_pinned_one_is_checked() {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (Identity::load_or_create(dirs.0.path()).unwrap(), Identity::load_or_create(dirs.1.path()).unwrap());
        let server = echo_server(&b).await;
        let tls = Tls::new(&a).unwrap();

        let mut conn = connect(&tls, server, Some(&b.fingerprint), Duration::from_secs(5)).await.unwrap();
        assert_eq!(conn.fingerprint, b.fingerprint);
        let seen = format!("{:#}", conn.call(&Request::Status).await.unwrap_err());
        assert_eq!(seen, format!("{} {}", a.fingerprint, hex::encode(conn.session)), "the server saw the client's key and the same session binding");

        let other = connect(&tls, server, None, Duration::from_secs(5)).await.unwrap();
        assert_ne!(other.session, conn.session, "every session has its own binding");

        let wrong = connect(&tls, server, Some(&a.fingerprint), Duration::from_secs(5)).await.err().expect("a wrong pin is refused");
        assert!(format!("{wrong:#}").contains("not the paired one"), "{wrong:#}");
    }

    #[test]
    fn requests_read_as_documented() {
        let r: Request =
            serde_json::from_str(r#"{"op":"reserve","key":"a/m","bytes":5,"ttl_secs":10}"#)
                .unwrap();
        assert!(matches!(r, Request::Reserve { bytes: 5, .. }));
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
    }
}
