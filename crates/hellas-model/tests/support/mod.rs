//! What the planner tests share: where the engine lives and how to read llama-server's load log.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::Child;

pub const MIB: f64 = 1024.0 * 1024.0;

/// `$HELLAS_CACHE`, default `$HOME/.cache/hellas`: where `cargo xtask engine`, `cargo xtask
/// models` and the tests keep what they fetch and build.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("HELLAS_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/hellas"),
    }
}

/// Kills and reaps the server however the test ends.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// Sizes llama-server logged, in bytes (it prints MiB with two decimals).
#[derive(Debug, Default)]
pub struct Reported {
    pub model: f64,
    pub kv: f64,
    pub compute: f64,
    pub output: f64,
    /// The vision projector's weights (clip's `load_hparams: model size`).
    pub projector_weights: f64,
    /// The projector's weights and compute buffer, as llama-server estimates them before loading
    /// (`[mtmd] estimated worst-case memory usage of mmproj`).
    pub projector_total: f64,
}

impl Reported {
    pub fn parse(log: &str) -> Reported {
        let mut r = Reported::default();
        for line in log.lines() {
            if let Some(mib) = mib_after(line, "load_hparams: model size:") {
                r.projector_weights = mib * MIB;
            } else if let Some(mib) = mib_after(line, "memory usage of mmproj is") {
                r.projector_total = mib * MIB;
            }
            // clip's own compute buffer (reserved when a projector warms up) is not the model's.
            if line.contains("reserve_compute_meta:") {
                continue;
            }
            let Some((what, size)) = line.split_once(" buffer size =") else { continue };
            let Some(mib) = parse_mib(size) else { continue };
            let bytes = mib * MIB;
            // One line per backend buffer (e.g. CPU and CPU_REPACK for weights, or the full and
            // the sliding-window KV cache): add them up.
            if what.ends_with(" model") {
                r.model += bytes;
            } else if what.ends_with(" KV") {
                r.kv += bytes;
            } else if what.ends_with(" compute") {
                r.compute += bytes;
            } else if what.ends_with(" output") {
                r.output += bytes;
            }
        }
        r
    }

    pub fn total(&self) -> f64 {
        self.model + self.kv + self.compute + self.output
    }
}

fn mib_after(line: &str, marker: &str) -> Option<f64> {
    line.split_once(marker).and_then(|(_, rest)| parse_mib(rest.split(" (").next().unwrap_or(rest)))
}

fn parse_mib(s: &str) -> Option<f64> {
    s.trim().strip_suffix("MiB").and_then(|n| n.trim().parse::<f64>().ok())
}

/// `planned` against `actual` as a signed percentage, for the tables.
pub fn pct(planned: f64, actual: f64) -> String {
    if actual == 0.0 {
        return "-".into();
    }
    format!("{:+.1}%", (planned - actual) / actual * 100.0)
}
