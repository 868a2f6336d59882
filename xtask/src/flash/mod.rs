//! `cargo xtask flash`: writes an image to a USB stick (or a file), reads it back to prove it,
//! and seeds first-boot settings into its ESP.
//!
//! Refused: what is not a whole block device (files only with `--allow-file`), a mounted disk,
//! the disk this computer runs from, and non-removable disks without `--force`. The device is
//! shown by vendor, model and size and its name must be typed back (or `--yes`).

pub(crate) mod copy;
mod seed;
mod target;

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

#[derive(clap::Args)]
pub struct Flash {
    /// The stick's whole device, e.g. /dev/sdb.
    #[arg(long)]
    device: PathBuf,
    /// The image; default: out/hellas-<version>-<default profile>.img.
    #[arg(long)]
    image: Option<PathBuf>,
    #[command(flatten)]
    seed: seed::SeedFlags,
    /// Write to a regular file.
    #[arg(long)]
    allow_file: bool,
    /// Write to a disk that is not removable.
    #[arg(long)]
    force: bool,
    /// Do not ask for the device name to be typed back.
    #[arg(long)]
    yes: bool,
}

impl Flash {
    /// A seeded write of `image` into the file `device`, as the system test's stick.
    pub fn to_file(image: PathBuf, device: PathBuf, hostname: &str, claim_code: &str) -> Flash {
        Flash {
            device,
            image: Some(image),
            seed: seed::SeedFlags { hostname: Some(hostname.into()), claim_code: Some(claim_code.into()), ..Default::default() },
            allow_file: true,
            force: false,
            yes: true,
        }
    }

    pub fn run(&self) -> Result<()> {
        let image = match &self.image {
            Some(image) => image.clone(),
            None => default_image()?,
        };
        let len = std::fs::metadata(&image).with_context(|| format!("{} is missing: build it with `cargo xtask image`", image.display()))?.len();
        let seed = seed::Seed::from_flags(&self.seed)?;
        let target = target::check(&self.device, len, &target::Checks { allow_file: self.allow_file, force: self.force })?;
        println!("image:  {} ({:.1} MB)\ntarget: {}", image.display(), len as f64 / 1e6, target.description);
        if !self.yes {
            let name = target.name.clone().unwrap_or_else(|| self.device.display().to_string());
            println!("Everything on it will be lost. Type {name} to go on:");
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer).context("reading the confirmation")?;
            if answer.trim() != name {
                bail!("not confirmed (typed {:?}, wanted {name:?}): nothing was written; pass --yes in scripts", answer.trim());
            }
        }
        let stop_after = std::env::var("HELLAS_FLASH_TEST_STOP_AFTER").ok().and_then(|v| v.parse().ok());
        // A digest from the build is also a check of the image file itself: one damaged since
        // then fails the verify instead of being faithfully copied.
        let recorded = copy::recorded_digest(&image);
        let expected = copy::write(&image, &self.device, target.name.is_some(), stop_after, recorded.as_deref())?;
        let actual = copy::read_back(&self.device, len)?;
        if actual != expected {
            bail!(
                "verification failed: {} holds sha256 {actual} over the image's {len} bytes, the image is {expected}{}: \
                 the write was cut short, the stick is faulty, or the image file changed since it was built; it will not boot reliably. \
                 Write it again, use another stick, or rebuild the image",
                self.device.display(),
                if recorded.is_some() { " by its SHA256SUMS" } else { "" }
            );
        }
        println!("verified: sha256 {expected}");
        if let Some(seed) = seed {
            seed.write(&self.device)?;
            println!("seeded /hellas/seed.toml into the ESP");
        }
        Ok(())
    }
}

/// The default profile's image in out/.
fn default_image() -> Result<PathBuf> {
    let spec = crate::image::spec::Spec::load(std::path::Path::new("image/hellas.toml"))?;
    let (profile, _) = spec.profile(None)?;
    Ok(PathBuf::from(format!("out/{}-{}-{profile}.img", spec.image.name, spec.image.version)))
}
