//! The agent CLIs people point at a box, driven non-interactively against a real hellasd and
//! its real engine: Claude Code (`claude -p`, over Anthropic Messages) and Codex CLI (`codex
//! exec`, with the box as a model provider over OpenAI Responses).
//!
//! Their packages (about 800 MB from npm) are too heavy for `cargo xtask test`, so these tests are
//! ignored there; `cargo xtask clients` installs the pinned CLIs into `$HELLAS_CACHE/agents` and
//! runs them. The model is SmolLM2 (with a ChatML template that takes tools) unless
//! `HELLAS_AGENT_MODEL` names a GGUF of a tool-capable model: then each CLI is given a task only
//! a tool call can do (writing a file) and the file must be there afterwards. SmolLM2, at 135M
//! parameters, answers such a task in prose, so with it each CLI is asked to say hello and the
//! test checks the whole conversation went through the box.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;
use support::{cache_dir, Daemon, Setup, SMOLLM};

const MODEL: &str = "agent-model";

/// The daemon the agents talk to, and whether its model can be given a tool task.
fn daemon() -> (Daemon, bool) {
    // The agents' instructions and tool descriptions run to thousands of tokens (Claude Code's
    // with only its Write tool to ~2,100, Codex's to ~6,700); the planner shrinks the context
    // to what the box holds.
    let (file, engine_args, ctx, tool_capable) = match std::env::var_os("HELLAS_AGENT_MODEL") {
        Some(file) => (PathBuf::from(file), vec![], 32768, true),
        // Greedy by default (the agents send no temperature), so SmolLM2 answers alike each run
        // rather than rambling on some.
        None => (support::model(SMOLLM), ["--chat-template", support::SMOLLM_TOOLS_TEMPLATE, "--temp", "0"].map(String::from).to_vec(), 8192, false),
    };
    let daemon = Daemon::start(Setup {
        ctx,
        parallel: 1,
        models: vec![],
        engine_args,
        ..Setup::default()
    });
    let out = support::run(support::hellasd().arg("--config").arg(&daemon.config).args(["models", "add"]).arg(&file).args(["--name", MODEL]));
    assert!(out.status.success(), "models add {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    (daemon, tool_capable)
}

/// An installed agent CLI, or the line that installs it.
fn agent(name: &str) -> PathBuf {
    let path = cache_dir().join("agents/node_modules/.bin").join(name);
    assert!(path.exists(), "{} is missing: run `cargo xtask clients`", path.display());
    path
}

/// Runs an agent CLI to its end in `home` (its settings and sessions, kept out of the user's),
/// with no terminal and nothing on stdin, and returns what it printed.
fn run_agent(command: &mut Command, name: &str, home: &Path) -> String {
    let started = Instant::now();
    let out = command
        .env("HOME", home)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{name}: {:.0} s\n{stdout}\n{stderr}", started.elapsed().as_secs_f64());
    assert!(out.status.success(), "{name} failed ({}):\n{stdout}\n{stderr}", out.status);
    stdout
}

/// The task: a file only a tool call can write, or (for a model that cannot call tools) a hello.
fn task(tool_capable: bool) -> &'static str {
    match tool_capable {
        true => "Create a file named hello.txt in the current directory containing exactly the word hello. Use your tools.",
        false => "Reply with one word: hello",
    }
}

fn assert_task_done(work: &Path, tool_capable: bool) {
    if tool_capable {
        let file = work.join("hello.txt");
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("the agent wrote no {}: {e}", file.display()));
        assert_eq!(text.trim(), "hello", "{}", file.display());
    } else {
        eprintln!("SmolLM2 cannot call tools; set HELLAS_AGENT_MODEL to a tool-capable GGUF for the tool task");
    }
}

#[test]
#[ignore = "needs the agent CLIs: cargo xtask clients"]
fn claude_code_works_through_the_box() {
    let claude = agent("claude");
    let (daemon, tool_capable) = daemon();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut command = Command::new(claude);
    command
        .current_dir(&work)
        .env("ANTHROPIC_BASE_URL", &daemon.url)
        .env("ANTHROPIC_AUTH_TOKEN", daemon.key.as_deref().unwrap())
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .args(["-p", "--output-format", "json", "--model", MODEL])
        // Root may not skip permission prompts; writing files in the directory is allowed.
        .args(["--tools", "Write", "--allowedTools", "Write", "--permission-mode", "acceptEdits"]);
    if !tool_capable {
        // Claude Code asks for up to 32,000 tokens; a small model's answer is cut well before.
        command.env("CLAUDE_CODE_MAX_OUTPUT_TOKENS", "512");
    }
    let out = run_agent(command.arg(task(tool_capable)), "claude", dir.path());
    let result: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("claude printed no JSON ({e}): {out}"));
    assert_eq!(result["is_error"], false, "{result}");
    assert!(!result["result"].as_str().unwrap_or_default().trim().is_empty(), "an answer: {result}");
    assert!(daemon.answered("/v1/messages", MODEL) >= 1, "the answer came through the box's /v1/messages");
    assert_task_done(&work, tool_capable);
}

#[test]
#[ignore = "needs the agent CLIs: cargo xtask clients"]
fn codex_works_with_the_box_as_its_provider() {
    let codex = agent("codex");
    let (daemon, tool_capable) = daemon();
    let dir = tempfile::tempdir().unwrap();
    let (home, work) = (dir.path().join("codex"), dir.path().join("work"));
    std::fs::create_dir(&home).unwrap();
    std::fs::create_dir(&work).unwrap();
    // The provider as docs/operator-guide.md gives it.
    let config = format!(
        "model = \"{MODEL}\"\nmodel_provider = \"hellas\"\n\n[model_providers.hellas]\nname = \"Hellas\"\nbase_url = \"{}/v1\"\nenv_key = \"HELLAS_API_KEY\"\nwire_api = \"responses\"\n",
        daemon.url
    );
    std::fs::write(home.join("config.toml"), config).unwrap();
    let mut command = Command::new(codex);
    command
        .current_dir(&work)
        .env("CODEX_HOME", &home)
        .env("HELLAS_API_KEY", daemon.key.as_deref().unwrap())
        .args(["exec", "--skip-git-repo-check", "--ephemeral", "--sandbox", "workspace-write", "--color", "never"])
        .arg("--output-last-message")
        .arg(dir.path().join("answer.txt"));
    run_agent(command.arg(task(tool_capable)), "codex", dir.path());
    let answer = std::fs::read_to_string(dir.path().join("answer.txt")).unwrap_or_default();
    assert!(!answer.trim().is_empty(), "codex's last message holds the model's answer");
    assert!(daemon.answered("/v1/responses", MODEL) >= 1, "the answer came through the box's /v1/responses");
    assert_task_done(&work, tool_capable);
}
