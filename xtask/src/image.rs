//! `cargo xtask image`: turns `image/hellas.toml` into a bootable disk image.
//!
//! The pipeline, each step a module and each cached by the sha256 of its inputs under
//! `$HELLAS_CACHE/image`: tools tree → root tree from the lock → overlay and normalise →
//! partitions (systemd-repart) with the UKI (ukify) → outputs in `out/`.

mod firmware;
mod overlay;
pub mod packages;
mod partitions;
pub mod spec;
pub mod step;
mod tools;
mod uki;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use duct::cmd;
use hellas_contract::manifest::{self, Manifest};
use hellas_contract::release;
use serde_json::json;

use crate::{cache, deps};
use packages::{Lock, PackageSet};
use spec::Spec;
use step::{file_sha256, Inputs, Progress};

/// Bump when a change to the builder changes the image it makes from the same inputs.
const RECIPE: &str = "4";
/// Space a build needs in the cache (trees, staging, image) and in `out/`.
const NEEDED_BYTES: u64 = 12 << 30;

#[derive(clap::Args, Clone)]
pub struct Image {
    /// The profile to build (default: the spec's `default_profile`).
    #[arg(long)]
    profile: Option<String>,
    /// The image spec.
    #[arg(long, default_value = "image/hellas.toml")]
    spec: PathBuf,
    /// Where the image, its checksums and manifest go.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Refuse Release files past their Valid-Until date (off: snapshot mirrors have expired ones).
    #[arg(long, env = "HELLAS_CHECK_VALID_UNTIL")]
    check_valid_until: bool,
    /// Build a second time from empty step caches and compare the two images bit for bit.
    #[arg(long)]
    verify_reproducible: bool,
    /// Build as this version instead of the spec's `image.version` (releases do).
    #[arg(long)]
    pub version: Option<String>,
    /// One more overlay, laid over the profile's (a local customisation, or a test's fixture).
    #[arg(long)]
    pub overlay: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct LockCmd {
    #[arg(long, default_value = "image/hellas.toml")]
    spec: PathBuf,
    #[arg(long, env = "HELLAS_CHECK_VALID_UNTIL")]
    check_valid_until: bool,
    /// Refresh only one lock: `root` (image/packages.lock) or `tools` (image/tools.lock).
    #[arg(long, value_enum)]
    only: Option<LockedSet>,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum LockedSet {
    Root,
    Tools,
}

/// The outputs of a built image.
pub struct Built {
    pub image: PathBuf,
    /// The cached build: `disk.img`, `uki.efi` and `manifest.json` (read-only).
    pub disk: PathBuf,
}

pub fn mirror() -> Option<String> {
    std::env::var("HELLAS_MIRROR").ok().filter(|m| !m.is_empty())
}

fn apt_options(check_valid_until: bool) -> Vec<OsString> {
    if check_valid_until {
        vec![]
    } else {
        vec![r#"--aptopt=Acquire::Check-Valid-Until "false""#.into()]
    }
}

fn preflight(paths: &[&Path]) -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next()).unwrap_or("");
    if uid != "0" {
        bail!("building an image needs root (mmdebstrap, chroot into the tools tree, mount namespaces): run it as root, e.g. `sudo -E cargo xtask image`");
    }
    deps::ensure(&[deps::MMDEBSTRAP, deps::ZSTD])?;
    for path in paths {
        fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let free = cmd!("df", "--output=avail", "-B1", path).read().with_context(|| format!("checking free space on {}", path.display()))?;
        let free: u64 = free.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(u64::MAX);
        if free < NEEDED_BYTES {
            bail!(
                "{} has {:.1} GiB free; an image build needs about {} GiB: free space there (old builds: {})",
                path.display(),
                free as f64 / (1u64 << 30) as f64,
                NEEDED_BYTES >> 30,
                cache::root()?.join("image").display()
            );
        }
    }
    Ok(())
}

impl LockCmd {
    pub fn run(&self) -> Result<()> {
        let spec = Spec::load(&self.spec)?;
        preflight(&[&cache::root()?])?;
        let progress = Progress::new(PathBuf::from("out/lock.log"), cache::root()?.join("image"))?;
        let sets = [(LockedSet::Tools, tools::package_set()), (LockedSet::Root, PackageSet::root(&spec))];
        let result = sets.iter().filter(|(which, _)| self.only.is_none_or(|only| only == *which)).try_for_each(|(_, set)| {
            packages::lock(set, &self.spec.with_file_name(set.lock_file), &progress, &apt_options(self.check_valid_until))
        });
        progress.done();
        result
    }
}

impl Image {
    /// The default spec and output directory of the workspace at `root`, for one profile.
    pub fn for_profile(profile: &str, root: &Path) -> Image {
        Image {
            profile: Some(profile.to_string()),
            spec: root.join("image/hellas.toml"),
            out: root.join("out"),
            check_valid_until: std::env::var_os("HELLAS_CHECK_VALID_UNTIL").is_some(),
            verify_reproducible: false,
            version: None,
            overlay: None,
        }
    }

    pub fn run(&self) -> Result<()> {
        let built = self.build()?;
        println!("{}", built.image.display());
        if self.verify_reproducible {
            let again = Image { out: self.out.join("reproducibility"), verify_reproducible: false, ..self.clone() };
            let cache = cache::root()?.join("image-reproducibility");
            cache::remove_any(&cache)?;
            let second = again.run_pipeline(cache.clone(), true)?;
            let differences = compare_images(&built.image, &second.image)?;
            cache::remove_any(&cache)?;
            if !differences.is_empty() {
                bail!("the two builds differ:\n{}", differences.join("\n"));
            }
            println!("reproducible: a second build from empty step caches gave the same image (sha256 {})", file_sha256(&built.image)?);
        }
        Ok(())
    }

    pub fn build(&self) -> Result<Built> {
        self.run_pipeline(cache::root()?.join("image"), true)
    }

    /// The cached build alone, without writing the image to `out/` (what a release needs).
    pub fn build_disk(&self) -> Result<PathBuf> {
        Ok(self.run_pipeline(cache::root()?.join("image"), false)?.disk)
    }

    fn run_pipeline(&self, step_cache: PathBuf, write_outputs: bool) -> Result<Built> {
        let mut spec = Spec::load(&self.spec)?;
        if let Some(version) = &self.version {
            spec.image.version = spec::check_version(version)?;
        }
        let (profile_name, profile) = spec.profile(self.profile.as_deref())?;
        let locks = Locks::load(&self.spec, &spec)?;
        preflight(&[&cache::root()?, &self.out])?;
        let progress = Progress::new(self.out.join(format!("build-{profile_name}.log")), step_cache)?;
        let result = self.pipeline(&spec, profile_name, profile, &locks, &progress, write_outputs);
        progress.done();
        result
    }

    fn pipeline(&self, spec: &Spec, profile_name: &str, profile: &spec::Profile, locks: &Locks, progress: &Progress, write_outputs: bool) -> Result<Built> {
        let apt = apt_options(self.check_valid_until);
        let image_dir = self.spec.parent().unwrap_or(Path::new("."));
        let tools = tools::ensure(&locks.tools, progress, &apt)?;
        let rootfs = packages::rootfs(spec, &locks.root, &image_dir.join("dracut.conf"), progress, &apt)?;
        let hellasd = progress.step("hellasd (release build)", build_hellasd)?;
        let epoch = source_date_epoch(spec)?;
        let models = profile
            .models
            .iter()
            .map(|m| Ok((m.name.clone(), cache::root()?.join("models").join(&m.file))))
            .collect::<Result<Vec<_>>>()?;
        for (_, file) in &models {
            if !file.exists() {
                bail!("{} (wanted by profile {profile_name}) is missing: run `cargo xtask models`", file.display());
            }
        }
        let verity = (spec.partitions.root.0 / 100).div_ceil(1 << 20).max(8) << 20;
        let context = json!({
            "image": spec.image,
            "profile": profile_name,
            "partitions": { "esp": spec.partitions.esp.0, "root": spec.partitions.root.0, "verity": verity, "data": spec.partitions.data.0 },
            // The labels the box's updater and installer look for (hellas_contract::release).
            "labels": {
                "esp": release::ESP_LABEL,
                "root": release::root_label(&spec.image.name, &spec.image.version),
                "verity": release::verity_label(&spec.image.name, &spec.image.version),
                "empty": release::EMPTY_LABEL,
                "data": release::DATA_LABEL,
            },
        });
        if let Some(overlay) = &self.overlay {
            if !overlay.is_dir() {
                bail!("--overlay {}: no such directory", overlay.display());
            }
        }
        let overlays: Vec<PathBuf> = [image_dir.join("../rootfs-overlay"), image_dir.join("profiles").join(profile_name).join("overlay")]
            .into_iter()
            .filter(|p| p.is_dir())
            .chain(self.overlay.clone())
            .collect();
        let keyring = crate::signing::SigningKey::find()?.public_key()?;
        let cmdline = spec.cmdline(profile).join(" ");
        let mut inputs = Inputs::new("disk")
            .text("recipe", RECIPE)
            .text("rootfs", &rootfs.display().to_string())
            .text("tools", &tools.root.display().to_string())
            .text("context", &context.to_string())
            .text("cmdline", &cmdline)
            .text("epoch", &epoch.to_string())
            .file("hellasd", &hellasd)?
            .text("keyring", &hex::encode(&keyring))
            .tree("repart.d", &image_dir.join("repart.d"))?;
        for overlay in &overlays {
            inputs = inputs.tree("overlay", overlay)?;
        }
        for (name, file) in &models {
            inputs = inputs.file(name, file)?;
        }
        let digest = inputs.finish();
        let name = format!("{}-{}-{profile_name}", spec.image.name, spec.image.version);
        // The step cache keeps one build per step: releases and test variants get their own, so
        // they do not evict the image of the spec's version.
        let step_name = if self.version.is_some() || self.overlay.is_some() { format!("disk-{profile_name}-release") } else { format!("disk-{profile_name}") };
        let disk = step::cached_dir(progress, &step_name, &digest, |dir| {
            let work = dir.join("work");
            fs::create_dir_all(&work)?;
            let staged = overlay::stage(
                &work,
                &overlay::OverlayInputs {
                    rootfs: &rootfs,
                    overlays: overlays.clone(),
                    context: &context,
                    hellasd: &hellasd,
                    models: models.clone(),
                    keyring: &keyring,
                    source_date_epoch: epoch,
                    rootfs_started: packages::rootfs_started(&rootfs)?,
                },
                &tools,
                progress,
            )?;
            partitions::definitions(&image_dir.join("repart.d"), &work, &context)?;
            let roothash = partitions::without_esp(&tools, &work, "disk.img", epoch, progress)?;
            let cmdline = format!("roothash={roothash} {cmdline}");
            let uki = uki::build_esp(&tools, &work, &spec.image.name, &spec.image.version, &cmdline, epoch, progress)?;
            // Releases publish the UKI as it is on the ESP.
            fs::copy(&uki, dir.join("uki.efi")).with_context(|| format!("keeping a copy of {}", uki.display()))?;
            let layout = partitions::add_esp(&tools, &work, "disk.img", epoch, progress)?;
            fs::rename(work.join("disk.img"), dir.join("disk.img"))?;
            // Read-only from here on: out/ shares this file, and boots use overlays on top.
            fs::set_permissions(dir.join("disk.img"), <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o444))?;
            let manifest = manifest(spec, profile_name, &locks.root, &digest, &roothash, &layout, &staged.data)?;
            fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest)?).with_context(|| format!("writing {}", dir.join("manifest.json").display()))?;
            cache::remove_any(&work)
        })?;
        if !write_outputs {
            return Ok(Built { image: disk.join("disk.img"), disk });
        }
        let image = progress.step("outputs", || outputs(&disk, &self.out, &name))?;
        Ok(Built { image, disk })
    }
}

/// The two locks beside the spec: the root tree's and the tools tree's, each checked against
/// what its set asks for.
struct Locks {
    root: Lock,
    tools: Lock,
}

impl Locks {
    fn load(spec_path: &Path, spec: &Spec) -> Result<Locks> {
        let root = Lock::load(&spec_path.with_file_name("packages.lock"))?;
        root.check(&PackageSet::root(spec))?;
        let tools = Lock::load(&spec_path.with_file_name("tools.lock"))?;
        tools.check(&tools::package_set())?;
        Ok(Locks { root, tools })
    }
}

fn source_date_epoch(spec: &Spec) -> Result<u64> {
    if let Some(epoch) = spec.image.source_date_epoch {
        return Ok(epoch);
    }
    let text = cmd!("git", "log", "-1", "--format=%ct").read().context("reading the last commit's time for SOURCE_DATE_EPOCH (or set image.source_date_epoch)")?;
    text.trim().parse().with_context(|| format!("git printed {text:?} as the commit time"))
}

fn build_hellasd() -> Result<PathBuf> {
    cmd!("cargo", "build", "--release", "--quiet", "--package", "hellasd").run().context("cargo build --release -p hellasd failed")?;
    let metadata = cmd!("cargo", "metadata", "--format-version", "1", "--no-deps").read().context("cargo metadata")?;
    let metadata: serde_json::Value = serde_json::from_str(&metadata).context("parsing cargo metadata")?;
    let target = metadata["target_directory"].as_str().context("cargo metadata has no target_directory")?;
    Ok(Path::new(target).join("release/hellasd"))
}

fn manifest(spec: &Spec, profile: &str, lock: &Lock, digest: &str, roothash: &str, layout: &serde_json::Value, data: &Path) -> Result<Manifest> {
    // dpkg's database moved to the data partition with the rest of /var.
    let sizes = cmd!("dpkg-query", format!("--admindir={}", data.join("lib/dpkg").display()), "-W", "-f=${Installed-Size} ${Package}\n")
        .read()
        .context("listing installed package sizes")?;
    let mut largest: Vec<(u64, String)> =
        sizes.lines().filter_map(|l| l.split_once(' ').and_then(|(s, p)| Some((s.parse::<u64>().ok()? * 1024, p.to_string())))).collect();
    largest.sort_by(|a, b| b.cmp(a));
    largest.truncate(15);
    let partitions = layout
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let text = |key: &str| p[key].as_str().map(str::to_string).with_context(|| format!("systemd-repart reported no {key} for a partition: {p}"));
            let number = |key: &str| p[key].as_u64().with_context(|| format!("systemd-repart reported no {key} for a partition: {p}"));
            Ok(manifest::Partition { kind: text("type")?, label: text("label")?, uuid: text("uuid")?, offset: number("offset")?, size: number("raw_size")? })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Manifest {
        name: spec.image.name.clone(),
        version: spec.image.version.clone(),
        profile: profile.to_string(),
        inputs_sha256: digest.to_string(),
        roothash: roothash.to_string(),
        kernel: lock.kernel_version(),
        partitions,
        packages: lock.packages.iter().map(|p| manifest::Package { name: p.name.clone(), version: p.version.clone(), architecture: p.architecture.clone() }).collect(),
        largest_packages: largest.into_iter().map(|(installed_bytes, name)| manifest::InstalledSize { name, installed_bytes }).collect(),
    })
}

/// Copies the cached image to `out/` as `<name>.img`, `.img.zst`, `SHA256SUMS` and
/// `<name>.manifest.json`, each under a temporary name first.
fn outputs(disk: &Path, out: &Path, name: &str) -> Result<PathBuf> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let image = out.join(format!("{name}.img"));
    let zst = out.join(format!("{name}.img.zst"));
    let source = disk.join("disk.img");
    let digest = file_sha256(&source)?;
    let current = fs::read_to_string(out.join("SHA256SUMS")).unwrap_or_default();
    let up_to_date = current.contains(&format!("{digest}  {name}.img")) && image.exists() && zst.exists();
    if !up_to_date {
        let tmp = cache::temp_path(&image, "tmp");
        cache::remove_any(&tmp)?;
        // The cached image is never written to again, so out/ can share it instead of a copy.
        if fs::hard_link(&source, &tmp).is_err() {
            cmd!("cp", "--sparse=always", &source, &tmp).run().with_context(|| format!("copying the image to {}", tmp.display()))?;
        }
        fs::rename(&tmp, &image)?;
        let tmp = cache::temp_path(&zst, "tmp");
        // The root is zstd-compressed erofs already: higher levels cost minutes and save little.
        cmd!("zstd", "--quiet", "--force", "-T0", "-9", &image, "-o", &tmp).run().context("zstd failed")?;
        fs::rename(&tmp, &zst)?;
        let zst_digest = file_sha256(&zst)?;
        let mut sums: Vec<String> = current.lines().filter(|l| !l.ends_with(&format!("  {name}.img")) && !l.ends_with(&format!("  {name}.img.zst"))).map(String::from).collect();
        sums.push(format!("{digest}  {name}.img"));
        sums.push(format!("{zst_digest}  {name}.img.zst"));
        sums.sort_by(|a, b| a[66..].cmp(&b[66..]));
        cache::write_if_changed(&out.join("SHA256SUMS"), (sums.join("\n") + "\n").as_bytes(), 0o644)?;
    }
    cache::write_if_changed(&out.join(format!("{name}.manifest.json")), &fs::read(disk.join("manifest.json"))?, 0o644)?;
    Ok(image)
}

/// The partitions (by the manifest's layout) in which two images differ; empty when identical.
fn compare_images(a: &Path, b: &Path) -> Result<Vec<String>> {
    if file_sha256(a)? == file_sha256(b)? {
        return Ok(vec![]);
    }
    let path = a.with_extension("manifest.json");
    let layout = Manifest::parse(&fs::read(&path).with_context(|| format!("reading {}", path.display()))?).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut differences = Vec::new();
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    for part in &layout.partitions {
        if !same_range(&mut fa, &mut fb, part.offset, part.size)? {
            differences.push(format!("partition {} ({}) at offset {}", part.label, part.kind, part.offset));
        }
    }
    if differences.is_empty() {
        differences.push("the partition table or the space between partitions".into());
    }
    Ok(differences)
}

fn same_range(a: &mut fs::File, b: &mut fs::File, offset: u64, size: u64) -> Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    a.seek(SeekFrom::Start(offset))?;
    b.seek(SeekFrom::Start(offset))?;
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut left = size;
    while left > 0 {
        let n = left.min(ba.len() as u64) as usize;
        a.read_exact(&mut ba[..n])?;
        b.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        left -= n as u64;
    }
    Ok(true)
}
