//! Hellas developer tool, run as `cargo xtask <verb>`. One module per verb; everything
//! it downloads or builds lives under `$HELLAS_CACHE` (see `cache.rs`).

mod cache;
mod deps;
mod engine;
mod models;
mod test;

use clap::Parser;

#[derive(Parser)]
#[command(bin_name = "cargo xtask", about = "Hellas developer tool")]
enum Cmd {
    /// Install the host packages the other verbs need (with apt-get, when root).
    Deps,
    /// Build the llama.cpp engine tree and its launchers under $HELLAS_CACHE/engine.
    Engine(engine::Engine),
    /// Fetch and verify the test models into $HELLAS_CACHE/models.
    Models,
    /// Prepare deps, engine and models, then run `cargo test --workspace [-- ARGS]`.
    Test(test::Test),
}

fn main() -> anyhow::Result<()> {
    match Cmd::parse() {
        Cmd::Deps => deps::ensure(deps::ALL),
        Cmd::Engine(engine) => engine.run(),
        Cmd::Models => models::fetch_all(),
        Cmd::Test(test) => test.run(),
    }
}
