//! The box's memory bandwidth, the ceiling decoding runs against (see [`crate::engine::bench`]).

use std::path::Path;
use std::time::Instant;

use crate::engine::bench::Bandwidth;

use super::Probe;

/// Platforms whose memory bandwidth is known from their specification, by CPU model name.
const PLATFORMS: &[(&str, f64, &str)] = &[
    // Ryzen AI Max (Strix Halo): 256-bit LPDDR5X-8000 = 8000 MT/s × 32 bytes (AMD's product pages).
    ("Ryzen AI MAX", 256e9, "Strix Halo, 256-bit LPDDR5X-8000"),
];

/// The memory bandwidth of the machine at `root`: its platform's when it is a known one, else a
/// copy measured here.
pub fn memory_bandwidth(root: &Path) -> Bandwidth {
    let cpu = Probe::read(root).cpu_model.unwrap_or_default();
    match PLATFORMS.iter().find(|(name, _, _)| cpu.to_ascii_lowercase().contains(&name.to_ascii_lowercase())) {
        Some((_, bytes_per_sec, what)) => Bandwidth { bytes_per_sec: *bytes_per_sec, source: format!("{what}, from its specification") },
        None => Bandwidth { bytes_per_sec: measure_copy(), source: format!("measured by copying memory on this {}", if cpu.is_empty() { "machine" } else { &cpu }) },
    }
}

/// Memory bandwidth as a large copy sees it (bytes read plus bytes written, per second): the
/// best of a few rounds over buffers far larger than any cache.
fn measure_copy() -> f64 {
    const SIZE: usize = 256 << 20;
    let source = vec![1u8; SIZE];
    let mut dest = vec![0u8; SIZE];
    let mut best = f64::MAX;
    for _ in 0..4 {
        let started = Instant::now();
        dest.copy_from_slice(&source);
        std::hint::black_box(&dest);
        best = best.min(started.elapsed().as_secs_f64());
    }
    2.0 * SIZE as f64 / best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strix_halo_is_known_and_anything_else_is_measured() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::write(root.path().join("proc/cpuinfo"), "processor\t: 0\nmodel name\t: AMD RYZEN AI MAX+ 395 w/ Radeon 8060S\n").unwrap();
        let strix = memory_bandwidth(root.path());
        assert_eq!(strix.bytes_per_sec, 256e9);
        std::fs::write(root.path().join("proc/cpuinfo"), "model name\t: AMD EPYC\n").unwrap();
        let measured = memory_bandwidth(root.path());
        assert!(measured.source.starts_with("measured") && measured.bytes_per_sec > 1e8, "{measured:?}");
    }
}
