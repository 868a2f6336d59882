//! The diagnostics bundle the owner downloads to ask for help: versions, the boot's health and
//! update state, the tuning state, where each engine runs and how it is sandboxed, the memory
//! budget, and hellasd's recent log. It names no secret: no API key, key digest, password or
//! its hash, session, claim or join code, SSH key or cluster key is put in, and every line of
//! log text is scrubbed of anything shaped like one before it leaves the box.

use serde_json::{json, Value};

use crate::app::AppState;

/// The bundle, as pretty JSON.
pub async fn bundle(state: &AppState) -> Vec<u8> {
    let engines: Vec<Value> = state
        .supervisor
        .loaded()
        .iter()
        .map(|engine| {
            json!({
                "model": engine.model, "status": format!("{:?}", engine.status()), "placement": engine.placement().describe(),
                "problem": state.supervisor.placement_problem(engine), "sandbox": engine.sandbox,
                "ctx": engine.plan.ctx, "parallel": engine.plan.parallel, "planned_bytes": engine.plan.total,
            })
        })
        .collect();
    let tuning = crate::tune::status(state.config.memory.os_reserve_bytes);
    let update = crate::update::UpdateFiles::new(&state.config.state_dir).status().map(|s| json!(s)).unwrap_or_else(|e| json!(format!("{e:#}")));
    let log: Vec<String> = crate::recent_log::lines().iter().map(|line| scrub(line)).collect();
    let bundle = json!({
        "hellasd": env!("CARGO_PKG_VERSION"),
        "engine": state.supervisor.engine_version().await,
        "image_version": crate::update::booted_version(std::path::Path::new("/")).ok(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
        "memory_budget": { "usable_bytes": state.budget.usable, "source": format!("{:?}", state.budget.source) },
        "engines": engines,
        "tuning": tuning,
        "update": update,
        "models": state.library.list().map(|models| models.iter().map(|m| json!({ "name": m.name, "size": m.size, "source": m.source })).collect::<Vec<_>>()).unwrap_or_default(),
        "log": log,
    });
    serde_json::to_vec_pretty(&bundle).expect("JSON values serialise")
}

/// A line of log text with anything shaped like a secret replaced: API keys (`hls_` and 64 hex
/// digits), SHA-256-long hex strings (key digests), claim and join codes (groups of four
/// capitals and digits joined by dashes), and PHC password hashes.
pub fn scrub(line: &str) -> String {
    line.split_inclusive(|c: char| c.is_whitespace() || "\"'=,;:()[]{}<>".contains(c))
        .map(|token| {
            let (word, tail) = token.split_at(token.trim_end_matches(|c: char| c.is_whitespace() || "\"'=,;:()[]{}<>".contains(c)).len());
            if looks_secret(word) {
                format!("[redacted]{tail}")
            } else {
                token.to_string()
            }
        })
        .collect()
}

fn looks_secret(word: &str) -> bool {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let code_group = |g: &str| g.len() == 4 && g.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    let groups: Vec<&str> = word.split('-').collect();
    (word.starts_with("hls_") && hex(&word[4..]))
        || (word.len() >= 64 && hex(word))
        || (groups.len() >= 2 && groups.iter().all(|g| code_group(g)))
        || word.starts_with("$argon2")
}

#[cfg(test)]
mod tests {
    use super::scrub;

    #[test]
    fn secrets_in_log_lines_are_scrubbed_and_the_rest_kept() {
        let key = format!("hls_{}", "ab12".repeat(16));
        let line = format!("INFO claim this box with the code ABCD-EF23 key={key} digest {} hash $argon2id$v=19$m=1 pairing XK2P-7QRT-M3ZD; model smollm2:135m", "0f".repeat(32));
        let scrubbed = scrub(&line);
        for secret in [key.as_str(), "ABCD-EF23", "XK2P-7QRT-M3ZD", "$argon2id", &"0f".repeat(32)] {
            assert!(!scrubbed.contains(secret), "{secret} in {scrubbed}");
        }
        assert!(scrubbed.contains("INFO claim this box with the code [redacted] key=[redacted]") && scrubbed.contains("model smollm2:135m"), "{scrubbed}");
    }
}
