//! Several boxes on one machine: network namespaces joined by veth pairs to a bridge that lives
//! in a namespace of its own, so nothing the boxes send reaches the host's network.

use std::process::Command;

/// Hosts `10.<net>.0.1`, `.2`, … on one switch.
pub struct Lan {
    pub hosts: Vec<String>,
    switch: String,
    net: u8,
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

impl Lan {
    /// Needs root (CAP_NET_ADMIN); the test says so rather than passing without trying.
    pub fn new(tag: &str, hosts: usize) -> Lan {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the cluster test makes network namespaces and needs root (run it as root, as CI does)"
        );
        let id = std::process::id() % 10_000;
        let net = 64 + (std::process::id() % 150) as u8;
        let switch = format!("{tag}{id}-sw");
        let lan = Lan {
            hosts: (0..hosts)
                .map(|i| format!("{tag}{id}-{}", (b'a' + i as u8) as char))
                .collect(),
            switch,
            net,
        };
        ip(&["netns", "add", &lan.switch]);
        ip(&["-n", &lan.switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan.switch, "link", "set", "br0", "up"]);
        for (i, host) in lan.hosts.iter().enumerate() {
            ip(&["netns", "add", host]);
            let port = format!("p{i}");
            ip(&[
                "-n",
                host,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &lan.switch,
            ]);
            ip(&[
                "-n",
                &lan.switch,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ]);
            ip(&[
                "-n",
                host,
                "addr",
                "add",
                &format!("{}/24", lan.address(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", host, "link", "set", "eth0", "up", "multicast", "on"]);
            ip(&["-n", host, "link", "set", "lo", "up"]);
            // mDNS leaves through the interface that holds the multicast route.
            ip(&["-n", host, "route", "add", "default", "dev", "eth0"]);
        }
        lan
    }

    pub fn address(&self, host: usize) -> String {
        format!("10.{}.0.{}", self.net, host + 1)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.switch]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
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
