//! First-boot settings for the device, written to `/hellas/seed.toml` on the stick's ESP (FAT,
//! so also writable by hand from any OS): `hostname`, `ssh_authorized_keys`, `claim_code`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use duct::cmd;

pub struct Seed {
    text: String,
}

const CODE_ALPHABET: &str = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

impl Seed {
    pub fn from_flags(hostname: Option<&str>, ssh_key: Option<&Path>, claim_code: Option<&str>) -> Result<Option<Seed>> {
        let mut text = String::from("# Applied once on the first boot, then removed (docs/operator-guide.md, \"Seed file\").\n");
        if hostname.is_none() && ssh_key.is_none() && claim_code.is_none() {
            return Ok(None);
        }
        if let Some(name) = hostname {
            let ok = !name.is_empty()
                && name.len() <= 63
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !name.starts_with('-')
                && !name.ends_with('-');
            if !ok {
                bail!("--hostname {name:?}: use 1 to 63 lower-case letters, digits and inner hyphens");
            }
            text.push_str(&format!("hostname = {name:?}\n"));
        }
        if let Some(file) = ssh_key {
            let keys: Vec<String> = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            if keys.is_empty() || !keys.iter().all(|k| ["ssh-", "ecdsa-", "sk-"].iter().any(|p| k.starts_with(p))) {
                bail!("{} is not an OpenSSH public key file (e.g. ~/.ssh/id_ed25519.pub)", file.display());
            }
            text.push_str(&format!("ssh_authorized_keys = {keys:?}\n"));
        }
        if let Some(code) = claim_code {
            let shaped = code.len() == 9 && code.char_indices().all(|(i, c)| if i == 4 { c == '-' } else { CODE_ALPHABET.contains(c) });
            if !shaped {
                bail!("--claim-code {code:?}: use XXXX-XXXX from {CODE_ALPHABET}");
            }
            text.push_str(&format!("claim_code = {code:?}\n"));
        }
        Ok(Some(Seed { text }))
    }

    /// Writes the seed into the ESP of the written `device` with mtools.
    pub fn write(&self, device: &Path) -> Result<()> {
        let offset = esp_offset(device)?;
        let image = format!("{}@@{offset}", device.display());
        let dir = tempfile_dir()?;
        let file = dir.join("seed.toml");
        std::fs::write(&file, &self.text).with_context(|| format!("writing {}", file.display()))?;
        // `mmd` fails when the directory exists, which is fine.
        let _ = cmd!("mmd", "-i", &image, "::/hellas").stderr_null().stdout_null().unchecked().run();
        let copied = cmd!("mcopy", "-o", "-i", &image, &file, "::/hellas/seed.toml").run().context("mcopy (mtools) failed");
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
