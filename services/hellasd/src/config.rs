//! Daemon configuration, assembled once at start-up.
//!
//! Sources, later ones winning key by key: `/usr/lib/hellas/hellasd.toml` (shipped in the image),
//! `/etc/hellas/hellasd.toml.d/*.toml` in name order (the owner's drop-ins), files named with
//! `--config`, then command-line flags. Every file is checked on its own against the schema, so an
//! unknown key or a wrong type is reported with the file, line and key that hold it.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use hellas_model::plan::CacheType;

pub const VENDOR_CONFIG: &str = "/usr/lib/hellas/hellasd.toml";
pub const DROP_IN_DIR: &str = "/etc/hellas/hellasd.toml.d";

const GIB: u64 = 1 << 30;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the model library, API keys and other device state live (the data partition).
    pub state_dir: PathBuf,
    pub api: ApiConfig,
    pub engine: EngineConfig,
    pub memory: MemoryConfig,
    pub web: WebConfig,
    pub update: UpdateConfig,
    pub cluster: ClusterConfig,
    pub hub: HubConfig,
    pub sandbox: SandboxConfig,
    pub network: NetworkConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The OpenAI- and Ollama-compatible API, /health and /metrics.
    pub listen: SocketAddr,
    /// Requests with a larger body are refused with 413.
    pub max_body_bytes: usize,
    /// Requests waiting per model beyond its busy slots; past this, 429.
    pub queue_depth: usize,
    /// What a 429 or 503 tells the client to wait, in seconds.
    pub retry_after_secs: u64,
    /// Networks whose addresses may read `/metrics` without an API key (a Prometheus on a
    /// trusted network), e.g. `["10.0.0.0/8"]`; otherwise it needs an API key, like the models.
    pub metrics_open_to: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// The llama-server binary (Debian's llama.cpp-tools on the device).
    pub llama_server: PathBuf,
    /// Context per slot, in tokens (clamped to the model's training context).
    pub ctx: u32,
    /// Concurrent sequences per model (llama-server `-np`); also the model's admission slots.
    pub parallel: u32,
    pub cache_type: CacheType,
    /// CPU threads per engine (`-t`); unset lets llama-server decide.
    pub threads: Option<u32>,
    /// Layers offloaded to the GPU (`-ngl`); unset lets llama-server decide.
    pub gpu_layers: Option<i32>,
    /// How llama-server loads the weights (`--load-mode`); unset: the engine settings' choice
    /// for this box's backend (see `engine::settings`).
    pub load_mode: Option<LoadMode>,
    /// llama-server's logical batch (`-b`); unset: the engine settings' choice for this box's
    /// backend. Below the micro-batch it also lowers that, which the plan over-counts safely.
    pub batch_size: Option<std::num::NonZeroU32>,
    /// Whether engines must run on the GPU, so that one on the CPU is an error the owner sees;
    /// unset: when the box has an AMD GPU (and `gpu_layers` is not 0).
    pub expect_gpu: Option<bool>,
    /// Speculative decoding: `ngram` drafts tokens from sequences the engine has already seen
    /// (llama-server `--spec-type ngram-mod`), which speeds up answers that repeat what came
    /// before, such as code being copied or edited; on free text it gains or costs a little.
    pub speculative: Speculative,
    /// Extra arguments appended to every llama-server command line.
    pub extra_args: Vec<String>,
    /// Environment variables every llama-server gets, e.g. `GGML_VK_VISIBLE_DEVICES`.
    pub env: std::collections::BTreeMap<String, String>,
    /// A model with no request for this long is unloaded.
    pub idle_unload_secs: u64,
    /// A child that is not healthy after this long is killed and reported as failed.
    pub startup_timeout_secs: u64,
}

/// `engine.speculative`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speculative {
    #[default]
    Off,
    Ngram,
}

impl Speculative {
    /// llama-server's `--spec-type` for it.
    pub fn spec_type(self) -> Option<&'static str> {
        match self {
            Speculative::Off => None,
            Speculative::Ngram => Some("ngram-mod"),
        }
    }
}

/// llama-server's `--load-mode`, spelled as it takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadMode {
    /// mmap, unless a device cannot use it.
    #[serde(rename = "auto")]
    Auto,
    /// Read into memory the engine allocates itself.
    #[serde(rename = "none")]
    Read,
    #[serde(rename = "mmap")]
    Mmap,
    #[serde(rename = "mlock")]
    Mlock,
    #[serde(rename = "mmap+mlock")]
    MmapMlock,
    /// Direct I/O, past the page cache.
    #[serde(rename = "dio")]
    Dio,
}

impl LoadMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadMode::Auto => "auto",
            LoadMode::Read => "none",
            LoadMode::Mmap => "mmap",
            LoadMode::Mlock => "mlock",
            LoadMode::MmapMlock => "mmap+mlock",
            LoadMode::Dio => "dio",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// The setup pages and the owner's dashboard over plain HTTP: the setup until the box is
    /// claimed, then a redirect to HTTPS.
    pub listen: SocketAddr,
    /// The same pages over HTTPS, with the box's own certificate (see `web_certificate`).
    pub tls_listen: SocketAddr,
    /// The curated model catalog shipped in the image.
    pub catalog: PathBuf,
    /// Where this boot's claim code and console text live (a tmpfs).
    pub runtime_dir: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Directories engines and RPC workers may also read and execute, beyond /usr and the
    /// other system paths: where a llama.cpp build outside /usr lives, with its Vulkan drivers.
    pub read_only: Vec<PathBuf>,
}

impl Config {
    /// The sandbox of an engine or RPC worker (see `sandbox`), before its own files and ports:
    /// its scratch directory is `scratch/<kind>` in the state directory.
    pub fn sandbox(&self, kind: &str) -> crate::sandbox::Sandbox {
        crate::sandbox::Sandbox { read_exec: self.sandbox.read_only.clone(), scratch: self.state_dir.join("scratch").join(kind), ..Default::default() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Without a network this long, a box with Wi-Fi opens its setup hotspot.
    pub hotspot_after_secs: u64,
    /// How long joining a Wi-Fi network may take before it counts as failed.
    pub join_timeout_secs: u64,
    /// While the hotspot is open and no one is on it, the known Wi-Fi networks are tried again
    /// this often (a router that came up after the box).
    pub retry_known_secs: u64,
    /// Interfaces whose addresses do not count as being on the owner's network (a management
    /// link, the boot test's own).
    pub ignore_interfaces: Vec<String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig { hotspot_after_secs: 60, join_timeout_secs: 45, retry_known_secs: 300, ignore_interfaces: Vec::new() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// The Hugging Face Hub that `hf.co/…` references resolve against (its API and file
    /// downloads); a mirror speaking the same API may stand in.
    pub endpoint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// The release channel: the URL of a directory with `SHA256SUMS`, its signature
    /// `SHA256SUMS.gpg` and the releases (`cargo xtask release` writes one). Empty: none; the
    /// owner's settings may name one.
    pub channel: String,
    /// Boot attempts a newly installed release gets; once they are used up without its health
    /// check passing, the release it replaced boots again.
    pub boot_tries: u32,
    /// How long the boot's health check waits for hellasd to answer.
    pub health_timeout_secs: u64,
    /// The systemd-sysupdate binary.
    pub sysupdate: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Pool this box with paired boxes: discovery, pairing, the control port and the RPC worker.
    pub enabled: bool,
    /// The control port other boxes reach over mutual TLS (pairing, status, memory holds).
    pub listen: SocketAddr,
    /// The address this box is reached at by its peers; unset: the first non-loopback IPv4
    /// address of the interface that holds the default route, else of any interface.
    pub address: Option<std::net::IpAddr>,
    /// Announce and browse `_hellas._tcp` over mDNS.
    pub mdns: bool,
    /// Debian's ggml-rpc-server (llama.cpp-tools-extra).
    pub rpc_server: PathBuf,
    /// The RPC worker's port, opened only to paired peers.
    pub rpc_port: u16,
    /// CPU threads of the RPC worker (`-t`); unset lets it decide.
    pub rpc_threads: Option<u32>,
    /// Manage the nftables table `inet hellas` that fences the RPC port.
    pub firewall: bool,
    /// The nft binary.
    pub nft: PathBuf,
    /// How often peers are asked for their status, in seconds; three missed answers in a row
    /// make a peer unreachable.
    pub probe_interval_secs: u64,
    /// How long a fleet update waits for each box to come back healthy on the new release.
    pub rollout_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// A fixed budget for models in bytes; unset means detect it (GTT + VRAM, or MemAvailable).
    pub budget_bytes: Option<u64>,
    /// Memory left to the OS and hellasd itself when the budget is detected.
    pub os_reserve_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("/var/lib/hellas"),
            api: ApiConfig::default(),
            engine: EngineConfig::default(),
            memory: MemoryConfig::default(),
            web: WebConfig::default(),
            update: UpdateConfig::default(),
            cluster: ClusterConfig::default(),
            hub: HubConfig::default(),
            sandbox: SandboxConfig::default(),
            network: NetworkConfig::default(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "0.0.0.0:8080".parse().unwrap(),
            max_body_bytes: 8 << 20,
            queue_depth: 64,
            retry_after_secs: 2,
            metrics_open_to: Vec::new(),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            llama_server: PathBuf::from("/usr/bin/llama-server"),
            ctx: 4096,
            parallel: 4,
            cache_type: CacheType::F16,
            threads: None,
            gpu_layers: None,
            load_mode: None,
            batch_size: None,
            expect_gpu: None,
            speculative: Speculative::Off,
            extra_args: Vec::new(),
            env: Default::default(),
            idle_unload_secs: 30 * 60,
            startup_timeout_secs: 300,
        }
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: "0.0.0.0:80".parse().unwrap(),
            tls_listen: "0.0.0.0:443".parse().unwrap(),
            catalog: PathBuf::from("/usr/share/hellas/catalog.toml"),
            runtime_dir: PathBuf::from("/run/hellas"),
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig { endpoint: "https://huggingface.co".into() }
    }
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            channel: String::new(),
            boot_tries: 3,
            health_timeout_secs: 300,
            sysupdate: PathBuf::from("/usr/lib/systemd/systemd-sysupdate"),
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: true,
            listen: "0.0.0.0:7077".parse().unwrap(),
            address: None,
            mdns: true,
            rpc_server: PathBuf::from("/usr/libexec/x86_64-linux-gnu/llama/bin/ggml-rpc-server"),
            rpc_port: 50052,
            rpc_threads: None,
            firewall: true,
            nft: PathBuf::from("/usr/sbin/nft"),
            probe_interval_secs: 2,
            rollout_timeout_secs: 1800,
        }
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { budget_bytes: None, os_reserve_bytes: 4 * GIB }
    }
}

impl Config {
    /// The configuration files in the order they apply: the vendor file and drop-ins under
    /// `root` (normally `/`) when `system` is set, then `extra`.
    pub fn sources(root: &Path, system: bool, extra: &[PathBuf]) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        if system {
            let vendor = root.join(VENDOR_CONFIG.trim_start_matches('/'));
            if vendor.exists() {
                files.push(vendor);
            }
            let drop_ins = root.join(DROP_IN_DIR.trim_start_matches('/'));
            match fs::read_dir(&drop_ins) {
                Ok(entries) => {
                    let mut found = Vec::new();
                    for entry in entries {
                        let path = entry.with_context(|| format!("listing {}", drop_ins.display()))?.path();
                        if path.extension().is_some_and(|e| e == "toml") {
                            found.push(path);
                        }
                    }
                    found.sort();
                    files.extend(found);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("listing {}", drop_ins.display())),
            }
        }
        files.extend(extra.iter().cloned());
        Ok(files)
    }

    /// Merges `files` in order over the defaults.
    pub fn load(files: &[PathBuf]) -> Result<Config> {
        let mut merged = toml::Table::new();
        for file in files {
            let text = fs::read_to_string(file).with_context(|| format!("reading configuration {}", file.display()))?;
            // Checking each file alone is what lets the error name the file and line.
            toml::from_str::<Config>(&text).with_context(|| format!("invalid configuration in {}", file.display()))?;
            let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
            merge(&mut merged, table);
        }
        Config::deserialize(toml::Value::Table(merged)).context("failed to assemble configuration settings")
    }
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(incoming)) => merge(existing, incoming),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn later_files_win_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "usr/lib/hellas/hellasd.toml", "[engine]\nctx = 8192\nparallel = 2\n");
        write(dir.path(), "etc/hellas/hellasd.toml.d/20-b.toml", "[engine]\nparallel = 3\n");
        write(dir.path(), "etc/hellas/hellasd.toml.d/10-a.toml", "[engine]\nparallel = 1\n[api]\nqueue_depth = 5\n");
        write(dir.path(), "etc/hellas/hellasd.toml.d/notes.txt", "ignored");
        let files = Config::sources(dir.path(), true, &[]).unwrap();
        assert_eq!(files.len(), 3);
        let config = Config::load(&files).unwrap();
        assert_eq!(config.engine.ctx, 8192);
        assert_eq!(config.engine.parallel, 3);
        assert_eq!(config.api.queue_depth, 5);
        assert_eq!(config.api.max_body_bytes, ApiConfig::default().max_body_bytes);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "x.toml", "state_dir = \"/tmp\"\n[engine]\nctx = 1\nthreeds = 4\n");
        let err = format!("{:#}", Config::load(&[file]).unwrap_err());
        assert!(err.contains("x.toml"), "{err}");
        assert!(err.contains("threeds"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn wrong_type_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "x.toml", "[api]\nlisten = 8080\n");
        let err = format!("{:#}", Config::load(&[file]).unwrap_err());
        assert!(err.contains("listen"), "{err}");
    }

    #[test]
    fn engine_settings_take_llama_servers_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "x.toml", "[engine]\nload_mode = \"mmap+mlock\"\nbatch_size = 4096\n");
        let config = Config::load(&[file]).unwrap();
        assert_eq!(config.engine.load_mode, Some(LoadMode::MmapMlock));
        assert_eq!(config.engine.batch_size.map(|b| b.get()), Some(4096));
        let zero = write(dir.path(), "y.toml", "[engine]\nbatch_size = 0\n");
        let err = format!("{:#}", Config::load(&[zero]).unwrap_err());
        assert!(err.contains("batch_size"), "{err}");
    }

    #[test]
    fn the_shipped_vendor_file_is_valid() {
        let vendor = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rootfs-overlay/usr/lib/hellas/hellasd.toml");
        let config = Config::load(&[vendor]).unwrap();
        assert_eq!(config.engine.gpu_layers, Some(999));
    }
}
