//! First-boot settings for the device, written to `/hellas/seed.toml` on the stick's ESP (FAT,
//! so also writable by hand from any OS), in the form `hellas_contract::seed` gives it.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use hellas_contract::{box_name, claim_code, ssh_keys};
use duct::cmd;

/// The seed to write: `hellas_contract::seed`, from the flags.
pub struct Seed {
    seed: hellas_contract::seed::Seed,
}

impl Seed {
    pub fn from_flags(hostname: Option<&str>, ssh_key: Option<&Path>, claim_code: Option<&str>) -> Result<Option<Seed>> {
        if let Some(name) = hostname {
            box_name::check(name).map_err(|e| anyhow!("--hostname: {e}"))?;
        }
        if let Some(code) = claim_code {
            claim_code::check(code).map_err(|e| anyhow!("--claim-code: {e}"))?;
        }
        let ssh_authorized_keys = match ssh_key {
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
        let seed = hellas_contract::seed::Seed { hostname: hostname.map(str::to_string), ssh_authorized_keys, claim_code: claim_code.map(str::to_string) };
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
