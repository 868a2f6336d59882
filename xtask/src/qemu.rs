//! `cargo xtask qemu`: boots an image for a person, with the console on this terminal and the
//! guest's API and web ports forwarded to 127.0.0.1. It boots through the system tests' own
//! harness (`hellas_system_tests::vm`), so what you try by hand is what CI proves. The image
//! is never written: the guest runs on a throwaway overlay in `target/qemu/`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use hellas_system_tests::vm::{Options, Vm, GUEST_API_PORT, GUEST_HTTPS_PORT, GUEST_WEB_PORT};

use crate::{deps, workspace};
use crate::image::spec::Spec;

#[derive(clap::Args)]
pub struct Qemu {
    /// The disk image to boot (default: the profile's image in out/).
    #[arg(long, conflicts_with = "profile")]
    image: Option<PathBuf>,
    /// The profile whose image to boot (default: the spec's `default_profile`).
    #[arg(long)]
    profile: Option<String>,
}

impl Qemu {
    pub fn run(&self) -> Result<()> {
        deps::ensure(&[deps::QEMU, deps::QEMU_IMG, deps::OVMF])?;
        let root = workspace::root()?;
        let image = match &self.image {
            Some(image) => image.clone(),
            None => {
                let spec = Spec::load(&root.join("image/hellas.toml"))?;
                let profile = self.profile.as_deref().unwrap_or(&spec.default_profile);
                let name = format!("{}-{}-{profile}", spec.image.name, spec.image.version);
                let image = root.join("out").join(format!("{name}.img"));
                if !image.is_file() {
                    bail!(
                        "{} is missing: build it with `cargo xtask image --profile {profile}`",
                        image.display()
                    );
                }
                image
            }
        };
        let options = Options {
            run_dir: root.join("target/qemu"),
            interactive: true,
            reboots: true,
            internal_disk_bytes: None,
        };
        let mut vm = Vm::boot(&image, &options)?;
        // QEMU may already have put the terminal in raw mode, hence the explicit \r.
        print!(
            "==> qemu: booting {} ({}); Ctrl-A X quits\r\n\
             ==> qemu: API {} (guest port {GUEST_API_PORT}), web {} (guest port {GUEST_WEB_PORT}), {} (guest port {GUEST_HTTPS_PORT})\r\n\
             ==> qemu: console log and overlay in {}\r\n",
            image.display(),
            vm.accel(),
            vm.api_url(),
            vm.web_url(),
            vm.https_url(),
            vm.run_dir().display()
        );
        let status = vm.wait()?;
        if !status.success() {
            bail!("QEMU exited with {status}");
        }
        Ok(())
    }
}

