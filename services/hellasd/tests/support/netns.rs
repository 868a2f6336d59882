//! Several boxes on one machine: network namespaces whose `eth0` are TAP devices this process
//! holds, joined by a hub in this process that passes every frame on to the other hosts after a
//! set delay (a LAN with a switch hop and some latency; the CI kernel has no sch_netem to add it
//! with `tc`). Nothing the boxes send reaches the host's network. Two hosts can also be cabled
//! directly ([`Lan::direct`]): a veth pair with link-local addresses, as a USB4 or dedicated
//! Ethernet cable between two boxes gets them.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Hosts `10.<net>.0.1`, `.2`, … on one hub.
pub struct Lan {
    pub hosts: Vec<String>,
    net: u8,
    stop: Arc<AtomicBool>,
    hub: Vec<std::thread::JoinHandle<()>>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TAP device named `name` in the calling thread's network namespace; it lives as long as the
/// file. Frames are read and written whole, without a packet-info header.
fn tap(name: &str) -> File {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let file = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").expect("opening /dev/net/tun");
    let mut request = [0u8; 40];
    request[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as u16;
    request[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `request` is the size of.
    let set = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, request.as_mut_ptr()) };
    assert_eq!(set, 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
    file
}

/// Whether `file` has a frame to read within `timeout`.
fn readable(file: &File, timeout: Duration) -> bool {
    let mut poll = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as libc::c_int) > 0 }
}

fn lan_address(net: u8, host: usize) -> String {
    format!("10.{net}.0.{}", host + 1)
}

impl Lan {
    /// Needs root (CAP_NET_ADMIN); the test says so rather than passing without trying. Every
    /// frame takes `delay` from one host to another.
    pub fn new(tag: &str, hosts: usize, delay: Duration) -> Lan {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the cluster test makes network namespaces and needs root (run it as root, as CI does)"
        );
        let id = std::process::id() % 10_000;
        let net = 64 + (std::process::id() % 150) as u8;
        let hosts: Vec<String> = (0..hosts).map(|i| format!("{tag}{id}-{}", (b'a' + i as u8) as char)).collect();
        let mut taps = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            ip(&["netns", "add", host]);
            taps.push(Arc::new(in_netns(host, || tap("eth0"))));
            ip(&["-n", host, "addr", "add", &format!("{}/24", lan_address(net, i)), "dev", "eth0"]);
            ip(&["-n", host, "link", "set", "eth0", "up", "multicast", "on"]);
            ip(&["-n", host, "link", "set", "lo", "up"]);
            // mDNS leaves through the interface that holds the multicast route.
            ip(&["-n", host, "route", "add", "default", "dev", "eth0"]);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (frames, queue) = mpsc::channel::<(Instant, usize, Vec<u8>)>();
        let mut hub = Vec::new();
        for (from, port) in taps.iter().enumerate() {
            let (port, frames, stop) = (port.clone(), frames.clone(), stop.clone());
            hub.push(std::thread::spawn(move || {
                let mut buffer = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if !readable(&port, Duration::from_millis(200)) {
                        continue;
                    }
                    match (&*port).read(&mut buffer) {
                        Ok(n) => {
                            let _ = frames.send((Instant::now() + delay, from, buffer[..n].to_vec()));
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        drop(frames);
        hub.push(std::thread::spawn(move || {
            // One queue in arrival order: with one delay for all, that is also the order due.
            while let Ok((due, from, frame)) = queue.recv() {
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                for (to, port) in taps.iter().enumerate() {
                    if to != from {
                        let _ = (&**port).write(&frame);
                    }
                }
            }
        }));
        Lan { hosts, net, stop, hub }
    }

    pub fn address(&self, host: usize) -> String {
        lan_address(self.net, host)
    }

    /// Cables hosts `a` and `b` directly: `direct0` on each, with the link-local address
    /// [`Lan::direct_address`] and no added delay.
    pub fn direct(&self, a: usize, b: usize) {
        let (ns_a, ns_b) = (&self.hosts[a], &self.hosts[b]);
        ip(&["-n", ns_a, "link", "add", "direct0", "type", "veth", "peer", "name", "direct0", "netns", ns_b]);
        for (ns, host) in [(ns_a, a), (ns_b, b)] {
            ip(&["-n", ns, "addr", "add", &format!("{}/16", self.direct_address(host)), "dev", "direct0"]);
            ip(&["-n", ns, "link", "set", "direct0", "up"]);
        }
    }

    pub fn direct_address(&self, host: usize) -> String {
        format!("169.254.{}.{}", self.net, host + 1)
    }

    /// Pulls host `host`'s direct cable: both ends' interfaces go, as a USB4 link's do when
    /// its cable is pulled; [`Lan::direct`] plugs it back.
    pub fn unplug(&self, host: usize) {
        ip(&["-n", &self.hosts[host], "link", "del", "direct0"]);
    }

    /// Bytes host `host` sent and received on interface `link` so far; 0 when it has no such
    /// link (a pulled cable).
    pub fn bytes(&self, host: usize, link: &str) -> u64 {
        let out = Command::new("ip").args(["-n", &self.hosts[host], "-s", "-j", "link", "show", "dev", link]).output().expect("running ip");
        if !out.status.success() {
            return 0;
        }
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ip -s -j link show {link}: {e}"));
        let stats = &stats[0]["stats64"];
        stats["rx"]["bytes"].as_u64().unwrap_or(0) + stats["tx"]["bytes"].as_u64().unwrap_or(0)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.hub.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`; threads it starts stay there.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(format!("/run/netns/{ns}"))
                    .unwrap_or_else(|e| panic!("opening /run/netns/{ns}: {e}"));
                use std::os::fd::AsRawFd;
                assert_eq!(
                    unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                    0,
                    "setns into {ns}: {}",
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap()
    })
}

/// A blocking HTTP client whose connections start in `ns` (or here, without one): reqwest's
/// blocking client does its I/O on a thread it starts when built.
pub fn client(
    ns: Option<&str>,
    options: impl FnOnce(reqwest::blocking::ClientBuilder) -> reqwest::blocking::ClientBuilder + Send,
) -> reqwest::blocking::Client {
    let build = || {
        options(reqwest::blocking::Client::builder().no_proxy())
            .build()
            .unwrap()
    };
    match ns {
        Some(ns) => in_netns(ns, build),
        None => build(),
    }
}
