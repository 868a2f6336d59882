//! `cargo xtask test`: the one command that runs every test. It first installs and builds
//! what the tests need (host packages, engine, models) into `$HELLAS_CACHE`, then runs
//! `cargo test --workspace` with `HELLAS_CACHE` exported so the tests find them, and the
//! `qemu-test` image built and flashed, seeded, for the system test (`HELLAS_TEST_IMAGE`) with the release channels
//! its update test serves (`HELLAS_TEST_CHANNELS`). After the tests it runs the smoke form of
//! every bench (`cargo xtask bench <name> --smoke`), so that a broken bench fails too, and
//! fuzzes the GGUF reader for a minute (`cargo xtask fuzz`). Extra
//! arguments after `--` go to `cargo test`; one that picks packages (`-p`) drops `--workspace`
//! and the benches.

use std::ffi::OsString;

use anyhow::{Context, Result};

use crate::{bench, cache, deps, engine, flash, fuzz, image, models, release, workspace};

/// How long the whole-workspace run fuzzes the GGUF reader.
const FUZZ_SECS: u64 = 60;

#[derive(clap::Args)]
pub struct Test {
    #[command(flatten)]
    engine: engine::Engine,
    /// Passed on to `cargo test`, e.g. `cargo xtask test -- -p hellasd -- --nocapture`.
    #[arg(last = true)]
    cargo_args: Vec<OsString>,
}

impl Test {
    pub fn run(&self) -> Result<()> {
        deps::ensure(deps::ALL)?;
        self.engine.run()?;
        models::fetch_all()?;
        let cache = cache::root()?;
        let root = workspace::root()?;
        let mut env: Vec<(&str, OsString)> = vec![("HELLAS_CACHE", cache.clone().into())];
        let system_tests = !selects_packages(&self.cargo_args)
            || self.cargo_args.iter().take_while(|a| *a != "--").any(|a| a.to_string_lossy().contains("hellas-system-tests"));
        let mut test_image = None;
        if system_tests {
            let built = image::Image::for_profile("qemu-test", &root).build()?;
            test_image = Some(built.image.clone());
            // The system test boots a stick flashed as an owner would, seeded, so the box must
            // apply the seed.
            let stick = cache.join("test-stick.img");
            std::fs::File::create(&stick).with_context(|| format!("creating {}", stick.display()))?;
            deps::ensure(&[deps::MTOOLS])?;
            flash::Flash::to_file(built.image, stick.clone(), "hellas-qemu", "QEMU-2345").run()?;
            env.push(("HELLAS_TEST_IMAGE", stick.into()));
            let spec = image::spec::Spec::load(&root.join("image/hellas.toml"))?;
            env.push(("HELLAS_TEST_CHANNELS", release::test_channels(&root, &spec.image.version)?.into()));
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut args: Vec<OsString> = vec!["test".into()];
        if !selects_packages(&self.cargo_args) {
            args.push("--workspace".into());
        }
        args.extend(self.cargo_args.iter().cloned());
        let shown: Vec<_> = args.iter().map(|arg| arg.to_string_lossy()).collect();
        println!(
            "==> test: cargo {} (HELLAS_CACHE={})",
            shown.join(" "),
            cache.display()
        );
        let mut command = duct::cmd(cargo, &args).dir(&root);
        for (name, value) in env {
            command = command.env(name, value);
        }
        command
            .run()
            .with_context(|| format!("`cargo {}` failed", shown.join(" ")))?;
        if let (false, Some(test_image)) = (selects_packages(&self.cargo_args), test_image) {
            bench::smoke_all(test_image)?;
            fuzz::Fuzz::for_secs(FUZZ_SECS).run()?;
        }
        Ok(())
    }
}

/// Whether `args` (before any `--`) pick packages, which `--workspace` would override.
fn selects_packages(args: &[OsString]) -> bool {
    args.iter().take_while(|arg| *arg != "--").any(|arg| {
        let arg = arg.to_string_lossy();
        arg == "-p" || arg.starts_with("--package") || (arg.starts_with("-p") && arg.len() > 2)
    })
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_selection_drops_workspace() {
        let args = |words: &[&str]| words.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(selects_packages(&args(&["-p", "hellasd"])));
        assert!(selects_packages(&args(&[
            "--package=hellasd",
            "--",
            "--nocapture"
        ])));
        assert!(selects_packages(&args(&["-phellasd"])));
        assert!(!selects_packages(&args(&["--release", "--", "-p"])));
        assert!(!selects_packages(&args(&[])));
    }
}
