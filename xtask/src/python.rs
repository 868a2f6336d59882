//! The Python packages the tests drive the box with: the official `openai` and `ollama`
//! clients (a capability counts when the client people use talks to the box) and `gguf`,
//! which writes the test models made here (shape-only GGUFs for the planner, the embedding
//! model converted from its published weights). They are installed with
//! `pip install --target` into `$HELLAS_CACHE/python/`, which the tests put on `PYTHONPATH`;
//! the directory is rebuilt, under a temporary name, only when the pins below change.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};
use duct::cmd;

use crate::{cache, deps};

/// Each pinned, so a rerun installs the same code; pip resolves their dependencies.
const PINS: &[&str] = &["openai==3.51.0", "ollama==0.6.3", "anthropic==2.16.0", "gguf==0.19.0", "safetensors==0.8.0"];

/// Installs the pinned packages when they are not there yet; returns the directory.
pub fn ensure() -> Result<PathBuf> {
    deps::ensure(&[deps::PIP])?;
    let dir = cache::root()?.join("python");
    let stamp = PINS.join("\n") + "\n";
    if fs::read_to_string(dir.join("pins.txt")).ok().as_deref() == Some(stamp.as_str()) {
        println!("==> python: {} up to date", dir.display());
        return Ok(dir);
    }
    cache::remove_stale(&dir)?;
    let staging = cache::temp_path(&dir, "tmp");
    println!("==> python: installing {} into {}", PINS.join(" "), dir.display());
    let mut args = vec!["-m", "pip", "install", "--quiet", "--no-input", "--disable-pip-version-check", "--progress-bar=off", "--target"];
    let staging_arg = staging.to_string_lossy().into_owned();
    args.push(&staging_arg);
    args.extend(PINS);
    let result = cmd("python3", &args)
        .stdin_null()
        .run()
        .with_context(|| format!("`python3 -m pip install --target {} {}` failed", staging.display(), PINS.join(" ")))
        .and_then(|_| fs::write(staging.join("pins.txt"), &stamp).with_context(|| format!("writing {}/pins.txt", staging.display())))
        .and_then(|_| cache::replace_dir(&staging, &dir));
    if result.is_err() {
        cache::remove_any(&staging)?;
    }
    result.map(|_| dir)
}
