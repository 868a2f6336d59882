//! `cargo xtask clients`: the clients too heavy for `cargo xtask test`, driven against a real
//! hellasd and engine: Claude Code and Codex CLI (from npm, ~800 MB) each given a task, and
//! Open WebUI (from PyPI, ~7 GB with PyTorch) chatting through the box's OpenAI and Ollama
//! connections in Chromium. Each is installed, pinned, into `$HELLAS_CACHE` (`agents/`,
//! `open-webui/`) on first use; then hellasd's ignored tests that drive them run
//! (`services/hellasd/tests/agents.rs`, `open_webui.rs`).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result};
use duct::cmd;

use crate::{cache, deps, engine, models, workspace};

/// The agent CLIs, pinned: what was proven against the box.
const AGENTS: &[&str] = &["@anthropic-ai/claude-code@2.1.332", "@openai/codex@0.171.0"];
const OPEN_WEBUI: &[&str] = &["open-webui==0.12.4"];

#[derive(Clone, Copy, clap::ValueEnum)]
enum Which {
    /// Claude Code and Codex CLI.
    Agents,
    /// Open WebUI in Chromium.
    OpenWebui,
}

#[derive(clap::Args)]
pub struct Clients {
    /// Run only these (default: all).
    #[arg(value_enum)]
    only: Vec<Which>,
    /// A tool-capable model (a GGUF file) for the agents: each must then do a task only a tool
    /// call can do. Without it they run on SmolLM2, which cannot call tools, and are only asked
    /// to answer.
    #[arg(long)]
    agent_model: Option<PathBuf>,
    #[command(flatten)]
    engine: engine::Engine,
}

impl Clients {
    pub fn run(&self) -> Result<()> {
        let all = self.only.is_empty();
        let agents = all || self.only.iter().any(|w| matches!(w, Which::Agents));
        let open_webui = all || self.only.iter().any(|w| matches!(w, Which::OpenWebui));
        self.engine.run()?;
        models::fetch_all()?;
        let cache = cache::root()?;
        let mut tests: Vec<&str> = Vec::new();
        if agents {
            deps::ensure(&[deps::NPM])?;
            cache::install_pinned(&cache.join("agents"), AGENTS, |staging| {
                let mut args: Vec<OsString> = ["install", "--no-fund", "--no-audit", "--prefix"].map(OsString::from).to_vec();
                args.push(staging.into());
                args.extend(AGENTS.iter().map(OsString::from));
                cmd("npm", &args).stdin_null().run().with_context(|| format!("`npm install --prefix {} {}` failed", staging.display(), AGENTS.join(" ")))?;
                Ok(())
            })?;
            tests.extend(["--test", "agents"]);
        }
        if open_webui {
            deps::ensure(&[deps::PIP, deps::CHROMIUM, deps::CHROMEDRIVER])?;
            cache::install_pinned(&cache.join("open-webui"), OPEN_WEBUI, |staging| {
                cmd!("python3", "-m", "venv", staging).run().with_context(|| format!("`python3 -m venv {}` failed", staging.display()))?;
                let mut args: Vec<&str> = vec!["-m", "pip", "install", "--quiet", "--no-input", "--disable-pip-version-check", "--progress-bar=off"];
                args.extend(OPEN_WEBUI);
                cmd(staging.join("bin/python"), &args).stdin_null().run().with_context(|| format!("`pip install {}` into {} failed", OPEN_WEBUI.join(" "), staging.display()))?;
                Ok(())
            })?;
            tests.extend(["--test", "open_webui"]);
        }
        let mut args = vec!["test", "-p", "hellasd"];
        args.extend(tests);
        // One at a time: each starts an engine, and the agents' prompts are long on two cores.
        args.extend(["--", "--ignored", "--nocapture", "--test-threads", "1"]);
        println!("==> clients: cargo {}", args.join(" "));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = cmd(cargo, &args).dir(workspace::root()?).env("HELLAS_CACHE", &cache);
        if let Some(model) = &self.agent_model {
            let model = model.canonicalize().with_context(|| format!("--agent-model {}", model.display()))?;
            command = command.env("HELLAS_AGENT_MODEL", model);
        }
        command.run().context("a client test failed (its output is above)")?;
        Ok(())
    }
}
