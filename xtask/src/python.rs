//! The Python packages the tests drive the box with: the official `openai` and `ollama`
//! clients (a capability counts when the client people use talks to the box) and `gguf`,
//! which writes the test models made here (shape-only GGUFs for the planner, the embedding
//! model converted from its published weights). They are installed with
//! `pip install --target` into `$HELLAS_CACHE/python/`, which the tests put on `PYTHONPATH`;
//! the directory is rebuilt, under a temporary name, only when the pins below change.

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
    cache::install_pinned(&dir, PINS, |staging| {
        let mut args = vec!["-m", "pip", "install", "--quiet", "--no-input", "--disable-pip-version-check", "--progress-bar=off", "--target"];
        let staging_arg = staging.to_string_lossy().into_owned();
        args.push(&staging_arg);
        args.extend(PINS);
        cmd("python3", &args)
            .stdin_null()
            .run()
            .with_context(|| format!("`python3 -m pip install --target {} {}` failed", staging.display(), PINS.join(" ")))?;
        Ok(())
    })?;
    Ok(dir)
}
