//! Hellas developer tool, run as `cargo xtask <verb>`. One module per verb; everything
//! it downloads or builds lives under `$HELLAS_CACHE` (see `cache.rs`).

mod bench;
mod cache;
mod clients;
mod deps;
mod engine;
mod flash;
mod fuzz;
mod image;
mod models;
mod python;
mod qemu;
mod release;
mod signing;
mod test;
mod workspace;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(bin_name = "cargo xtask", about = "Hellas developer tool")]
enum Cmd {
    /// Run a benchmark and record its result in docs/benchmarks.md.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Drive the clients too heavy for `test` against a real box: Claude Code, Codex CLI, Open WebUI.
    Clients(clients::Clients),
    /// Install the host packages the other verbs need (with apt-get, when root).
    Deps,
    /// Fuzz the GGUF reader for a fixed time (coverage-guided, stable toolchain).
    Fuzz(fuzz::Fuzz),
    /// Build the bootable image from image/hellas.toml into out/.
    Image(image::Image),
    /// Resolve the image's and the tools tree's packages into image/packages.lock and image/tools.lock.
    Lock(image::LockCmd),
    /// Write an image to a USB stick, verify it by reading it back, and seed first-boot settings.
    Flash(flash::Flash),
    /// Build the llama.cpp engine tree and its launchers under $HELLAS_CACHE/engine.
    Engine(engine::Engine),
    /// Fetch and verify the test models into $HELLAS_CACHE/models.
    Models,
    /// Boot an image under QEMU with the console on this terminal (the system tests' harness).
    Qemu(qemu::Qemu),
    /// Build the image as a release and publish it, signed, into an update channel directory.
    Release(release::Release),
    /// Prepare deps, engine and models, then run `cargo test --workspace [-- ARGS]`.
    Test(test::Test),
}

fn main() -> anyhow::Result<()> {
    let command = Cmd::parse();
    // Paths in the verbs (image/, out/, rootfs-overlay/) are relative to the workspace root.
    std::env::set_current_dir(workspace::root()?).context("entering the workspace root")?;
    match command {
        Cmd::Bench(bench) => bench.run(),
        Cmd::Clients(clients) => clients.run(),
        Cmd::Deps => deps::ensure(deps::ALL),
        Cmd::Engine(engine) => engine.run(),
        Cmd::Flash(flash) => {
            deps::ensure(&[deps::MTOOLS])?;
            flash.run()
        }
        Cmd::Fuzz(fuzz) => fuzz.run(),
        Cmd::Image(image) => image.run(),
        Cmd::Lock(lock) => lock.run(),
        Cmd::Models => models::fetch_all(),
        Cmd::Qemu(qemu) => qemu.run(),
        Cmd::Release(release) => release.run(),
        Cmd::Test(test) => test.run(),
    }
}
