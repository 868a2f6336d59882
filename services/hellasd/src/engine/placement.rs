//! Where an engine's model really sits, read from llama-server's own load log: the devices it
//! chose (`using device Vulkan0 (Radeon 8060S Graphics (RADV GFX1151)) - 72341 MiB free`), the
//! layers it offloaded (`offloaded 49/49 layers to GPU`) and the bytes of every buffer it made
//! (`Vulkan0 model buffer size = 17524.42 MiB`, `CPU KV buffer size = …`, `… compute buffer …`).
//!
//! The layer count alone does not tell: a CPU-only llama-server also reports every layer
//! "offloaded to GPU" (its CPU device takes them). The buffers do: bytes on a GPU device
//! (`Vulkan0`, `ROCm0`, `CUDA0`) are on the GPU; `CPU`, `CPU_Mapped`, `CPU_REPACK` and the
//! GPU's host-visible staging buffers (`Vulkan_Host`) are in system memory on the CPU's side;
//! `RPC[host:port]` buffers are on a peer.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Placement {
    /// The devices llama-server loads onto, as it names them, e.g.
    /// `Vulkan0 (Radeon 8060S Graphics (RADV GFX1151))`.
    pub devices: Vec<String>,
    /// Layers offloaded, of the model's (repeating layers plus the output layer).
    pub layers: Option<(u32, u32)>,
    /// Bytes of model, KV cache, compute and output buffers together, by where they are.
    pub buffers: BTreeMap<String, u64>,
}

/// Where a buffer named by llama.cpp lives.
#[derive(Debug, PartialEq)]
enum Location {
    Gpu,
    Host,
    Peer,
}

fn location(buffer: &str) -> Location {
    if buffer.starts_with("RPC") {
        Location::Peer
    } else if is_gpu_device(buffer) {
        Location::Gpu
    } else {
        Location::Host
    }
}

/// Whether ggml names a GPU device so: a GPU backend and the device's number (`Vulkan0`,
/// `ROCm1`), not its host-side buffers (`Vulkan_Host`) or the CPU.
pub fn is_gpu_device(name: &str) -> bool {
    let backend = name.trim_end_matches(|c: char| c.is_ascii_digit());
    backend.len() < name.len() && ["Vulkan", "ROCm", "CUDA", "Metal", "SYCL", "OpenCL", "MUSA", "CANN"].contains(&backend)
}

impl Placement {
    /// Takes what one line of llama-server's output says, if anything.
    pub fn observe(&mut self, line: &str) {
        if let Some(at) = line.find("using device ") {
            let device = &line[at + "using device ".len()..];
            let device = device.rsplit_once(" - ").map_or(device, |(name, _free)| name).trim();
            if !self.devices.iter().any(|d| d == device) {
                self.devices.push(device.to_string());
            }
        } else if let Some(at) = line.find("offloaded ") {
            let counts = line[at + "offloaded ".len()..].split_whitespace().next().unwrap_or_default();
            if let Some((done, of)) = counts.split_once('/') {
                if let (Ok(done), Ok(of)) = (done.parse(), of.parse()) {
                    self.layers = Some((done, of));
                }
            }
        } else if let Some((head, size)) = line.split_once(" buffer size =") {
            let mut words = head.split_whitespace().rev();
            let (Some(kind), Some(buffer)) = (words.next(), words.next()) else { return };
            let Some(mib) = size.trim().strip_suffix("MiB").and_then(|n| n.trim().parse::<f64>().ok()) else { return };
            if ["model", "KV", "compute", "output"].contains(&kind) {
                *self.buffers.entry(buffer.to_string()).or_default() += (mib * 1024.0 * 1024.0) as u64;
            }
        }
    }

    fn bytes_at(&self, wanted: Location) -> u64 {
        self.buffers.iter().filter(|(name, _)| location(name) == wanted).map(|(_, bytes)| bytes).sum()
    }

    /// What sits on this box's GPU: Ollama's `size_vram`.
    pub fn gpu_bytes(&self) -> u64 {
        self.bytes_at(Location::Gpu)
    }

    pub fn host_bytes(&self) -> u64 {
        self.bytes_at(Location::Host)
    }

    pub fn peer_bytes(&self) -> u64 {
        self.bytes_at(Location::Peer)
    }

    /// Whether the load log has been read (the model buffers are reported when loading ends).
    pub fn known(&self) -> bool {
        !self.buffers.is_empty()
    }

    /// The GPU device the model is on, as llama-server names it.
    pub fn gpu(&self) -> Option<&str> {
        self.devices.iter().map(String::as_str).find(|d| location(d.split_whitespace().next().unwrap_or_default()) == Location::Gpu)
    }

    /// One line for people, e.g. "GPU Vulkan0 (Radeon 8060S …): 49/49 layers, 17.1 GiB on the
    /// GPU, 166.9 MiB in system memory".
    pub fn describe(&self) -> String {
        use hellas_model::plan::format_bytes as f;
        if !self.known() {
            return "not known yet".into();
        }
        let layers = self.layers.map(|(done, of)| format!("{done}/{of} layers, ")).unwrap_or_default();
        let peers = if self.peer_bytes() > 0 { format!(", {} on peers", f(self.peer_bytes())) } else { String::new() };
        match self.gpu() {
            Some(gpu) => format!("GPU {gpu}: {layers}{} on the GPU, {} in system memory{peers}", f(self.gpu_bytes()), f(self.host_bytes())),
            None => format!("CPU: {} in system memory{peers}, nothing on a GPU", f(self.host_bytes())),
        }
    }

    /// What is wrong with this placement on a box whose engine should run on its GPU.
    pub fn problem(&self) -> Option<String> {
        if !self.known() {
            return None;
        }
        if self.gpu().is_none() || self.gpu_bytes() == 0 {
            return Some(
                "the engine runs on the CPU, about ten times slower: llama-server found no usable GPU (check that the Vulkan driver, mesa-vulkan-drivers, sees the Radeon: `vulkaninfo --summary`)"
                    .into(),
            );
        }
        match self.layers {
            Some((done, of)) if done < of => Some(format!("only {done} of {of} layers are on the GPU, though the plan said all fit: the rest run on the CPU")),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(log: &str) -> Placement {
        let mut placement = Placement::default();
        log.lines().for_each(|line| placement.observe(line));
        placement
    }

    /// Forky's llama-server (b11669) on this machine's CPU, `-lv 4`.
    const CPU: &str = "\
0.00.013.618 I cmn  common_param:   - CPU     : AMD EPYC (24105 MiB, 24105 MiB free)
0.00.275.168 I load_tensors: offloading output layer to GPU
0.00.275.199 I load_tensors: offloading 29 repeating layers to GPU
0.00.275.213 I load_tensors: offloaded 31/31 layers to GPU
0.00.275.229 I load_tensors:          CPU model buffer size =    92.10 MiB
0.00.452.562 I llama_context:        CPU  output buffer size =     0.75 MiB
0.00.452.699 I llama_kv_cache:        CPU KV buffer size =    45.00 MiB
0.00.491.989 I sched_reserve:        CPU compute buffer size =    16.64 MiB
";

    /// A Strix Halo box on Vulkan, as published in https://github.com/janhq/jan/issues/6009 and
    /// https://github.com/geerlingguy/beowulf-ai-cluster/issues/2 (device line); KV and compute
    /// lines in the same build's format.
    const STRIX_HALO: &str = "\
llama_model_load_from_file_impl: using device Vulkan0 (Radeon 8060S Graphics (RADV GFX1151)) - 72341 MiB free
load_tensors: offloading 48 repeating layers to GPU
load_tensors: offloading output layer to GPU
load_tensors: offloaded 49/49 layers to GPU
load_tensors:          CPU model buffer size =   166.92 MiB
load_tensors:      Vulkan0 model buffer size = 17524.42 MiB
llama_kv_cache:    Vulkan0 KV buffer size =  1536.00 MiB
llama_context: Vulkan_Host  output buffer size =     0.58 MiB
llama_context:    Vulkan0 compute buffer size =   304.75 MiB
llama_context: Vulkan_Host compute buffer size =    20.01 MiB
";

    #[test]
    fn a_cpu_engine_is_told_from_its_buffers_not_its_layer_count() {
        let cpu = read(CPU);
        assert_eq!(cpu.layers, Some((31, 31)));
        assert_eq!((cpu.gpu_bytes(), cpu.gpu()), (0, None));
        assert!(cpu.host_bytes().abs_diff(((92.10 + 0.75 + 45.0 + 16.64) * 1048576.0) as u64) < 4, "{}", cpu.host_bytes());
        assert!(cpu.describe().starts_with("CPU: "), "{}", cpu.describe());
        assert!(cpu.problem().unwrap().contains("runs on the CPU"));
    }

    #[test]
    fn a_gpu_engine_counts_what_sits_on_the_gpu() {
        let gpu = read(STRIX_HALO);
        assert_eq!(gpu.gpu(), Some("Vulkan0 (Radeon 8060S Graphics (RADV GFX1151))"));
        let mib = |m: f64| (m * 1048576.0) as u64;
        assert!(gpu.gpu_bytes().abs_diff(mib(17524.42 + 1536.0 + 304.75)) < 4, "{}", gpu.gpu_bytes());
        assert!(gpu.host_bytes().abs_diff(mib(166.92 + 0.58 + 20.01)) < 4, "{}", gpu.host_bytes());
        assert_eq!(gpu.problem(), None);
        assert!(gpu.describe().starts_with("GPU Vulkan0 (Radeon 8060S Graphics (RADV GFX1151)): 49/49 layers, 18.9"), "{}", gpu.describe());
        let partial = read(&STRIX_HALO.replace("offloaded 49/49", "offloaded 30/49"));
        assert!(partial.problem().unwrap().contains("only 30 of 49 layers"));
    }

    #[test]
    fn peers_and_nothing_yet() {
        let split = read("llama_model_load_from_file_impl: using device RPC[10.0.2.233:50052] (RPC[10.0.2.233:50052]) - 108000 MiB free\nload_tensors: RPC[10.0.2.233:50052] model buffer size = 1024.00 MiB\n");
        assert_eq!(split.peer_bytes(), 1 << 30);
        assert_eq!(Placement::default().problem(), None);
        assert_eq!(Placement::default().describe(), "not known yet");
    }
}
