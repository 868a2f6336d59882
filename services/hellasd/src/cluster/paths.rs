//! The links to a peer. A box tells its peers every address it can be reached on (in its status,
//! over the pinned control channel); for each of a peer's addresses this box measures the path's
//! round trip (TCP handshakes to the peer's control port) and carries RPC over the fastest one:
//! a direct USB4/Thunderbolt or dedicated Ethernet cable before the LAN, the LAN when that cable
//! goes away.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

/// Handshakes per measurement; the fastest counts (the others met a busy CPU or queue).
const SAMPLES: usize = 3;
/// How long one handshake may take before the path counts as failed this time.
pub const MEASURE_TIMEOUT: Duration = Duration::from_millis(500);
/// Failed measurements in a row after which a path is down.
const FAILURES_UNTIL_DOWN: u32 = 2;
/// Good measurements in a row after which a path that came up may take traffic from another:
/// a link that flaps does not move models, and the peer has had a probe's time to let this
/// box's address on that link through its fence.
const SUCCESSES_UNTIL_SETTLED: u32 = 2;
/// A working path in use gives way only to one this much faster, so that two links of about
/// the same speed do not make the models move back and forth.
const SWITCH_BELOW: f64 = 0.7;

/// One address of a peer, as last measured.
#[derive(Clone, Debug)]
pub struct Path {
    pub address: IpAddr,
    pub latency: Option<Duration>,
    pub failures: u32,
    pub successes: u32,
    pub error: Option<String>,
}

impl Path {
    pub fn new(address: IpAddr) -> Path {
        Path { address, latency: None, failures: 0, successes: 0, error: None }
    }

    pub fn up(&self) -> bool {
        self.latency.is_some() && self.failures < FAILURES_UNTIL_DOWN
    }

    fn settled(&self) -> bool {
        self.up() && self.successes >= SUCCESSES_UNTIL_SETTLED
    }

    pub fn record(&mut self, measured: Result<Duration>) {
        match measured {
            Ok(latency) => {
                self.latency = Some(latency);
                self.failures = 0;
                self.successes += 1;
                self.error = None;
            }
            Err(e) => {
                self.failures += 1;
                self.successes = 0;
                self.error = Some(format!("{e:#}"));
                if !self.up() {
                    self.latency = None;
                }
            }
        }
    }
}

/// A path as the Pool page shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PathView {
    pub address: IpAddr,
    /// This box's interface the path leaves by.
    pub link: Option<String>,
    pub latency_ms: Option<f64>,
    pub up: bool,
    /// RPC to the peer goes this way (for models loaded from now on).
    pub chosen: bool,
    pub error: Option<String>,
}

/// The Pool page's view of `paths`, `route` the chosen one: working ones first, fastest first.
pub fn views(paths: &[Path], route: Option<IpAddr>, own: &[OwnAddress]) -> Vec<PathView> {
    let mut views: Vec<PathView> = paths
        .iter()
        .map(|p| PathView {
            address: p.address,
            link: link_to(own, p.address),
            latency_ms: p.latency.map(|d| d.as_secs_f64() * 1000.0),
            up: p.up(),
            chosen: route == Some(p.address),
            error: p.error.clone(),
        })
        .collect();
    let latency = |v: &PathView| v.latency_ms.unwrap_or(f64::MAX);
    views.sort_by(|a, b| b.up.cmp(&a.up).then(latency(a).total_cmp(&latency(b))));
    views
}

/// Whether a peer's claimed address can be a path: IPv4 (llama.cpp's `--rpc` takes no IPv6
/// scope), not loopback, unspecified, multicast or broadcast.
pub fn usable(address: &IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(_) => false,
    }
}

/// One of this box's IPv4 addresses: its interface, the address, the netmask.
pub type OwnAddress = (String, std::net::Ipv4Addr, std::net::Ipv4Addr);

/// This box's IPv4 addresses, loopback aside, with their interfaces.
pub fn own_addresses() -> Vec<OwnAddress> {
    let Ok(interfaces) = if_addrs::get_if_addrs() else { return Vec::new() };
    let mut own: Vec<_> = interfaces
        .into_iter()
        .filter(|i| !i.is_loopback())
        .filter_map(|i| match i.addr {
            if_addrs::IfAddr::V4(v4) => Some((i.name, v4.ip, v4.netmask)),
            _ => None,
        })
        .collect();
    own.sort();
    own
}

/// The interface of `own` whose subnet holds `address`.
pub fn link_to(own: &[OwnAddress], address: IpAddr) -> Option<String> {
    let IpAddr::V4(address) = address else { return None };
    own.iter()
        .find(|(_, ip, mask)| u32::from(*ip) & u32::from(*mask) == u32::from(address) & u32::from(*mask))
        .map(|(name, _, _)| name.clone())
}

/// The path's round trip: the fastest of a few TCP handshakes with `to`.
pub async fn measure(to: SocketAddr, timeout: Duration) -> Result<Duration> {
    let mut fastest: Option<Duration> = None;
    for _ in 0..SAMPLES {
        let started = Instant::now();
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(to))
            .await
            .with_context(|| format!("no answer from {to} within {} ms", timeout.as_millis()))?
            .with_context(|| format!("connecting to {to}"))?;
        let took = started.elapsed();
        fastest = Some(fastest.map_or(took, |f| f.min(took)));
    }
    Ok(fastest.expect("at least one sample"))
}

/// The path RPC should take: `current` while it is up and no settled path is much faster, else
/// the fastest settled path (the fastest that is up, while none has settled).
pub fn choose(paths: &[Path], current: Option<IpAddr>) -> Option<IpAddr> {
    let fastest = |ok: fn(&Path) -> bool| paths.iter().filter(|p| ok(p)).min_by_key(|p| p.latency);
    let fastest = fastest(Path::settled).or_else(|| fastest(Path::up))?;
    let kept = current.and_then(|c| paths.iter().find(|p| p.address == c && p.up()));
    match kept {
        Some(kept) if fastest.latency.unwrap().as_secs_f64() >= kept.latency.unwrap().as_secs_f64() * SWITCH_BELOW => Some(kept.address),
        _ => Some(fastest.address),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(address: &str, latency_us: Option<u64>) -> Path {
        let mut path = Path::new(address.parse().unwrap());
        match latency_us {
            Some(us) => {
                path.record(Ok(Duration::from_micros(us)));
                path.record(Ok(Duration::from_micros(us)));
            }
            None => {
                path.record(Err(anyhow::anyhow!("down")));
                path.record(Err(anyhow::anyhow!("down")));
            }
        }
        path
    }

    #[test]
    fn the_fastest_path_wins_and_a_working_one_is_kept_against_a_slightly_faster_one() {
        let lan = "192.168.1.20".parse().unwrap();
        let direct = "169.254.7.2".parse().unwrap();
        let paths = [path("192.168.1.20", Some(900)), path("169.254.7.2", Some(60))];
        assert_eq!(choose(&paths, None), Some(direct));
        assert_eq!(choose(&paths, Some(lan)), Some(direct), "much faster: move");
        let close = [path("192.168.1.20", Some(100)), path("169.254.7.2", Some(80))];
        assert_eq!(choose(&close, Some(lan)), Some(lan), "about as fast: stay");
        let cut = [path("192.168.1.20", Some(900)), path("169.254.7.2", None)];
        assert_eq!(choose(&cut, Some(direct)), Some(lan), "the chosen link is down: the LAN");
        assert_eq!(choose(&[path("169.254.7.2", None)], Some(direct)), None);
        let mut back = Path::new(direct);
        back.record(Ok(Duration::from_micros(60)));
        let just_back = [path("192.168.1.20", Some(900)), back.clone()];
        assert_eq!(choose(&just_back, Some(lan)), Some(lan), "one good measurement: not yet");
        let mut lan_new = Path::new(lan);
        lan_new.record(Ok(Duration::from_micros(900)));
        assert_eq!(choose(&[lan_new, back.clone()], None), Some(direct), "nothing settled yet: the fastest that is up");
        back.record(Ok(Duration::from_micros(60)));
        assert_eq!(choose(&[path("192.168.1.20", Some(900)), back], Some(lan)), Some(direct), "settled: move");
    }

    #[test]
    fn one_failed_measurement_does_not_take_a_path_down_two_do() {
        let mut p = path("169.254.7.2", Some(60));
        p.record(Err(anyhow::anyhow!("timed out")));
        assert!(p.up());
        p.record(Err(anyhow::anyhow!("timed out")));
        assert!(!p.up() && p.latency.is_none() && p.error.as_deref() == Some("timed out"));
        p.record(Ok(Duration::from_micros(70)));
        assert!(p.up());
    }

    #[test]
    fn only_ipv4_unicast_addresses_are_paths_and_links_are_found_by_subnet() {
        for bad in ["127.0.0.1", "0.0.0.0", "224.0.0.251", "255.255.255.255", "fe80::1"] {
            assert!(!usable(&bad.parse().unwrap()), "{bad}");
        }
        assert!(usable(&"169.254.7.2".parse().unwrap()));
        let own = vec![
            ("enp1s0".to_string(), "192.168.1.10".parse().unwrap(), "255.255.255.0".parse().unwrap()),
            ("thunderbolt0".to_string(), "169.254.3.9".parse().unwrap(), "255.255.0.0".parse().unwrap()),
        ];
        assert_eq!(link_to(&own, "169.254.7.2".parse().unwrap()).as_deref(), Some("thunderbolt0"));
        assert_eq!(link_to(&own, "192.168.1.20".parse().unwrap()).as_deref(), Some("enp1s0"));
        assert_eq!(link_to(&own, "10.0.0.1".parse().unwrap()), None);
    }
}
