//! `cargo xtask release`: builds the image as a release and publishes it into an update channel,
//! a directory to serve over HTTP(S) in the layout systemd-sysupdate reads (the transfer
//! definitions are hellasd's `update/transfers.rs`):
//!
//! - root slot A of the built image and its dm-verity hash partition, each under its partition
//!   UUID, which the UKI's `roothash=` derives;
//! - the UKI;
//! - `SHA256SUMS` over every release in the channel, and its detached signature.
//!
//! Every name comes from `hellas_contract::release`, which the box's sysupdate patterns use too.
//!
//! Publishing a version again replaces it; other versions stay.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use duct::cmd;
use hellas_contract::manifest::Manifest;
use hellas_contract::release::{self, Slot};

use crate::image::Image;
use crate::signing::SigningKey;
use crate::{cache, image::step::file_sha256};

#[derive(clap::Args)]
pub struct Release {
    #[command(flatten)]
    image: Image,
    /// The channel directory (made if missing); the boxes' `update.channel` is its URL.
    #[arg(long)]
    channel: PathBuf,
}

impl Release {
    pub fn run(&self) -> Result<()> {
        let key = SigningKey::find()?;
        let disk = self.image.build_disk()?;
        let published = publish(&disk, &self.channel, &key)?;
        println!("{} in {}", published, self.channel.display());
        Ok(())
    }
}

/// Publishes the built image in `disk` (a cached build) into `channel`; returns `<name>_<version>`.
pub fn publish(disk: &Path, channel: &Path, key: &SigningKey) -> Result<String> {
    let manifest_path = disk.join("manifest.json");
    let manifest = Manifest::parse(&fs::read(&manifest_path).with_context(|| format!("reading {}", manifest_path.display()))?)
        .map_err(|e| anyhow!("{}: {e}", manifest_path.display()))?;
    let (name, version) = (manifest.name.as_str(), manifest.version.as_str());
    fs::create_dir_all(channel).with_context(|| format!("creating {}", channel.display()))?;
    let mut files = Vec::new();
    for slot in [Slot::Root, Slot::Verity] {
        let label = slot.label(name, version);
        let part = manifest.partition(&label).map_err(|e| anyhow!("{}: {e}", manifest_path.display()))?;
        let file = slot.file(name, version, &part.uuid);
        let dest = channel.join(&file);
        let tmp = cache::temp_path(&dest, "tmp");
        cmd!("dd", format!("if={}", disk.join("disk.img").display()), "iflag=skip_bytes,count_bytes", format!("skip={}", part.offset), format!("count={}", part.size), "bs=4M", "status=none")
            .pipe(cmd!("zstd", "--quiet", "--force", "-T0", "-3", "-o", &tmp))
            .run()
            .with_context(|| format!("extracting partition {label} into {}", tmp.display()))?;
        fs::rename(&tmp, &dest).with_context(|| format!("renaming {} into place", tmp.display()))?;
        files.push(file);
    }
    let uki = release::uki_file(name, version);
    let tmp = cache::temp_path(&channel.join(&uki), "tmp");
    fs::copy(disk.join("uki.efi"), &tmp).with_context(|| format!("copying the UKI to {}", tmp.display()))?;
    fs::rename(&tmp, channel.join(&uki))?;
    files.push(uki);

    // The other versions' lines stay; this version's are replaced.
    let sums_path = channel.join(release::SUMS);
    let current = fs::read_to_string(&sums_path).unwrap_or_default();
    let mut lines: Vec<String> = current
        .lines()
        .filter(|l| l.split_once("  ").is_some_and(|(_, f)| !release::belongs_to(f, name, version)))
        .map(String::from)
        .collect();
    for file in &files {
        lines.push(format!("{}  {file}", file_sha256(&channel.join(file))?));
    }
    lines.sort_by(|a, b| a[66..].cmp(&b[66..]));
    let tmp = cache::temp_path(&sums_path, "tmp");
    fs::write(&tmp, lines.join("\n") + "\n").with_context(|| format!("writing {}", tmp.display()))?;
    // Signed before either goes into place; a reader between the two renames sees a mismatch
    // and refuses, which is safe.
    let signature = key.sign(&tmp)?;
    fs::rename(&tmp, &sums_path)?;
    fs::rename(&signature, channel.join(release::SUMS_SIGNATURE))?;
    Ok(release::release(name, version))
}

/// The system test's channels under `$HELLAS_CACHE/test-channels`: `good/` holds `<v>.1` of the
/// qemu-test profile; `bad/` holds `<v>.1` and `<v>.2`, whose engine cannot start
/// (`tests/fixtures/broken-engine`), so its boot fails the health check.
pub fn test_channels(workspace: &Path, version: &str) -> Result<PathBuf> {
    let key = SigningKey::find()?;
    let build = |release: String, overlay: Option<PathBuf>| {
        let mut image = Image::for_profile("qemu-test", workspace);
        image.version = Some(release);
        image.overlay = overlay;
        image.build_disk()
    };
    let dir = cache::root()?.join("test-channels");
    cache::remove_any(&dir)?;
    // Each build evicts the one before it from the step cache: publish it at once.
    publish(&build(format!("{version}.1"), None)?, &dir.join("good"), &key)?;
    cmd!("cp", "-al", dir.join("good"), dir.join("bad")).run().context("copying the good channel")?;
    publish(&build(format!("{version}.2"), Some(workspace.join("tests/fixtures/broken-engine")))?, &dir.join("bad"), &key)?;
    Ok(dir)
}
