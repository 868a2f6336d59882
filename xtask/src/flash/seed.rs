//! First-boot settings for the device, written to `/hellas/seed.toml` on the stick's ESP (FAT,
//! so also writable by hand from any OS), in the form `hellas_contract::seed` gives it.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use hellas_contract::network::{StaticWired, Wifi};
use hellas_contract::{box_name, claim_code, ssh_keys};
use duct::cmd;

/// The flags of `cargo xtask flash` that become the seed.
#[derive(clap::Args, Default)]
pub struct SeedFlags {
    /// Seed: the box's name (hellas.local otherwise).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Seed: an OpenSSH public key file allowed to log in.
    #[arg(long)]
    pub ssh_key: Option<PathBuf>,
    /// Seed: the claim code to use instead of a random one (XXXX-XXXX).
    #[arg(long)]
    pub claim_code: Option<String>,
    /// Seed: the Wi-Fi network the box joins (its name, as the router shows it).
    #[arg(long)]
    pub wifi_ssid: Option<String>,
    /// Seed: a file whose first line is the Wi-Fi passphrase (`-` reads it from stdin), or the
    /// HELLAS_WIFI_PASSPHRASE variable; never a flag, which others on the machine could read.
    #[arg(long, requires = "wifi_ssid", conflicts_with = "wifi_open")]
    pub wifi_passphrase_file: Option<PathBuf>,
    /// Seed: the Wi-Fi network has no passphrase.
    #[arg(long, requires = "wifi_ssid")]
    pub wifi_open: bool,
    /// Seed: a static wired address with its prefix length (192.168.1.50/24), for a network
    /// without DHCP.
    #[arg(long)]
    pub wired_address: Option<String>,
    /// Seed: the wired network's router.
    #[arg(long, requires = "wired_address")]
    pub wired_gateway: Option<String>,
    /// Seed: a name server for the static wired address (repeat for more).
    #[arg(long, requires = "wired_address")]
    pub wired_dns: Vec<String>,
}

/// The seed to write: `hellas_contract::seed`, from the flags.
pub struct Seed {
    seed: hellas_contract::seed::Seed,
}

impl Seed {
    pub fn from_flags(flags: &SeedFlags) -> Result<Option<Seed>> {
        if let Some(name) = &flags.hostname {
            box_name::check(name).map_err(|e| anyhow!("--hostname: {e}"))?;
        }
        if let Some(code) = &flags.claim_code {
            claim_code::check(code).map_err(|e| anyhow!("--claim-code: {e}"))?;
        }
        let ssh_authorized_keys = match &flags.ssh_key {
            Some(file) => {
                let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
                let keys = ssh_keys::parse(&text).map_err(|e| anyhow!("--ssh-key {}: {e}", file.display()))?;
                if keys.is_empty() {
                    bail!("--ssh-key {}: the file holds no public key (give e.g. ~/.ssh/id_ed25519.pub)", file.display());
                }
                Some(keys)
            }
            None => None,
        };
        let wifi = match &flags.wifi_ssid {
            Some(ssid) => {
                let passphrase = wifi_passphrase(flags)?;
                let wifi = Wifi { ssid: ssid.clone(), passphrase };
                wifi.check().map_err(|e| anyhow!("--wifi-ssid/--wifi-passphrase-file: {e}"))?;
                Some(wifi)
            }
            None => None,
        };
        let wired = flags.wired_address.as_ref().map(|address| StaticWired { address: address.clone(), gateway: flags.wired_gateway.clone(), dns: flags.wired_dns.clone() });
        if let Some(wired) = &wired {
            wired.check().map_err(|e| anyhow!("--wired-address/--wired-gateway/--wired-dns: {e}"))?;
        }
        let seed = hellas_contract::seed::Seed {
            hostname: flags.hostname.clone(),
            ssh_authorized_keys,
            claim_code: flags.claim_code.clone(),
            wifi,
            wired,
        };
        if seed.is_empty() {
            return Ok(None);
        }
        seed.check().map_err(anyhow::Error::msg)?;
        Ok(Some(Seed { seed }))
    }

    /// Writes the seed into the ESP of the written `device` with mtools.
    pub fn write(&self, device: &Path) -> Result<()> {
        let offset = esp_offset(device)?;
        let image = format!("{}@@{offset}", device.display());
        let dir = tempfile_dir()?;
        let file = dir.join("seed.toml");
        std::fs::write(&file, self.seed.render()).with_context(|| format!("writing {}", file.display()))?;
        // `mmd` fails when the directory exists, which is fine.
        let _ = cmd!("mmd", "-i", &image, "::/hellas").stderr_null().stdout_null().unchecked().run();
        let copied = cmd!("mcopy", "-o", "-i", &image, &file, format!("::/{}", hellas_contract::seed::PATH)).run().context("mcopy (mtools) failed");
        let _ = std::fs::remove_dir_all(&dir);
        copied?;
        Ok(())
    }
}

/// The passphrase from `--wifi-passphrase-file` (its first line; `-` is stdin) or
/// HELLAS_WIFI_PASSPHRASE; none with `--wifi-open`.
fn wifi_passphrase(flags: &SeedFlags) -> Result<Option<String>> {
    const VAR: &str = "HELLAS_WIFI_PASSPHRASE";
    if flags.wifi_open {
        return Ok(None);
    }
    let line = match &flags.wifi_passphrase_file {
        Some(file) if file.as_os_str() == "-" => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).context("reading the Wi-Fi passphrase from stdin")?;
            line
        }
        Some(file) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading the Wi-Fi passphrase from {}", file.display()))?;
            text.lines().next().unwrap_or_default().to_string()
        }
        None => std::env::var(VAR).map_err(|_| {
            anyhow!("--wifi-ssid needs the network's passphrase: give --wifi-passphrase-file FILE (or -), set {VAR}, or pass --wifi-open for a network without one")
        })?,
    };
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("hellas-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The byte offset of the EFI system partition, from the GPT (512-byte sectors).
pub fn esp_offset(device: &Path) -> Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    const ESP: [u8; 16] = [0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b];
    let mut file = std::fs::File::open(device).with_context(|| format!("opening {}", device.display()))?;
    let mut header = [0u8; 92];
    file.seek(SeekFrom::Start(512))?;
    file.read_exact(&mut header).with_context(|| format!("reading the GPT header of {}", device.display()))?;
    if &header[..8] != b"EFI PART" {
        bail!("{} has no GPT: not a Hellas image", device.display());
    }
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let (entries_lba, count, size) = (u64_at(&header, 72), u32_at(&header, 80).min(256), u32_at(&header, 84) as usize);
    if size < 128 {
        bail!("{} has a malformed GPT (entry size {size})", device.display());
    }
    let mut entries = vec![0u8; count as usize * size];
    file.seek(SeekFrom::Start(entries_lba * 512))?;
    file.read_exact(&mut entries).with_context(|| format!("reading the GPT entries of {}", device.display()))?;
    entries
        .chunks(size)
        .find(|e| e[..16] == ESP)
        .map(|e| u64_at(e, 32) * 512)
        .with_context(|| format!("{} has no EFI system partition", device.display()))
}
