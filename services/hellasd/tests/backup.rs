//! The owner's backup, restored onto a fresh box while claiming it, and the diagnostics bundle,
//! searched for every kind of secret the box holds.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::hub_server::{smollm_repo, REPO};
use support::{Daemon, Setup, Visitor, OWNER_PASSWORD, SMOLLM};

/// Pooling on loopback: no mDNS, no firewall, no worker until a peer pairs.
fn pool_on_loopback() -> String {
    format!("address = \"127.0.0.1\"\nlisten = \"127.0.0.1:{}\"\nmdns = false\nfirewall = false\n", support::free_port())
}

fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_backup_restores_a_box_while_it_is_claimed_and_a_bad_one_changes_nothing() {
    let (_dir, hub) = smollm_repo();
    let reference = format!("hf.co/{REPO}:Q4_1");
    // The box the backup comes from: a hand-added model, a pulled one, an API key, its pool key.
    let old = Daemon::start(Setup { hub: Some(hub.endpoint.clone()), cluster: Some(pool_on_loopback()), ..Setup::default() });
    assert_eq!(old.post("/api/pull", &json!({ "model": reference, "stream": false })).status(), 200);
    let mut owner = Visitor::login(&old);
    let backup = owner.get("/backup");
    assert_eq!(backup.status(), 200);
    assert!(backup.headers()["content-disposition"].to_str().unwrap().contains(".hellas-backup.json"));
    let backup = backup.bytes().unwrap().to_vec();
    let text = String::from_utf8(backup.clone()).unwrap();
    let key = old.key.clone().unwrap();
    assert!(!text.contains(&key) && !text.contains(OWNER_PASSWORD) && !text.contains("$argon2"), "no key, password or password hash in a backup");
    let old_node: Value = owner.get("/pool.json").json().unwrap();

    // A fresh box, claimed: the setup offers the restore; bad files change nothing.
    let new = Daemon::start(Setup { models: vec![], claimed: false, create_key: false, hub: Some(hub.endpoint.clone()), cluster: Some(pool_on_loopback()), ..Setup::default() });
    let mut claimer = Visitor::claim(&new);
    let settings = claimer.get("/settings").text().unwrap();
    assert!(settings.contains("Or restore a backup"), "{settings}");
    let csrf = claimer.csrf("/settings");
    let damaged = text.replacen("\"laptop\"", "\"x\"", 1).replacen("\"test\"", "\"tost\"", 1);
    let newer = text.replacen("\"version\": 1", "\"version\": 9", 1);
    for (file, why) in [
        (damaged.into_bytes(), "damaged"),
        (b"{\"format\": \"something-else\", \"version\": 1, \"created\": 0, \"box_name\": \"x\", \"sha256\": \"\", \"contents\": {}}".to_vec(), "not a Hellas backup"),
        (newer.into_bytes(), "made by a newer Hellas"),
        (b"PK\x03\x04 not json".to_vec(), "not a Hellas backup"),
    ] {
        let refused = claimer.post_file("/setup/restore", &[("csrf", &csrf)], "backup", file);
        assert_eq!(refused.status(), 400);
        let page = refused.text().unwrap();
        assert!(page.contains("Nothing was restored") && page.contains(why), "{why}: {page}");
    }
    assert!(!new.state_dir().join("keys.json").exists(), "a refused backup wrote no keys");
    assert!(claimer.get("/settings").text().unwrap().contains("Or restore a backup"), "a refused backup did not finish the setup");
    let forged = claimer.post_file("/setup/restore", &[("csrf", &"0".repeat(64))], "backup", backup.clone());
    assert_eq!(forged.status(), 403, "the restore checks the form's token");

    let restored = claimer.post_file("/setup/restore", &[("csrf", &csrf)], "backup", backup.clone());
    assert_eq!(restored.status(), 200);
    let page = restored.text().unwrap();
    assert!(page.contains("1 API keys restored"), "{page}");
    assert!(page.contains(&format!("downloading again from {reference}")), "{page}");
    assert!(page.contains("smollm2:135m-q4_1: added from a file, so it cannot be downloaded again"), "{page}");
    assert!(page.contains("pool identity and 0 pairings restored"), "{page}");

    // The service restarts to take up its pool identity (systemd would start it again).
    let mut new = new;
    wait_for("the daemon to restart itself", Duration::from_secs(20), || (!new.is_alive()).then_some(()));
    new.restart();
    let mut owner = Visitor::login(&new);
    let node: Value = owner.get("/pool.json").json().unwrap();
    assert_eq!(node["this"]["node_id"], old_node["this"]["node_id"], "the restored box is the same node to its peers");
    let models = new.client().get(format!("{}/v1/models", new.url)).bearer_auth(&key).send().unwrap();
    assert_eq!(models.status(), 200, "the old box's API key works on the restored one");
    wait_for("the pulled model to download again", Duration::from_secs(120), || {
        let tags: Value = new.client().get(format!("{}/api/tags", new.url)).bearer_auth(&key).send().ok()?.json().ok()?;
        tags.to_string().contains("hf.co/test/smollm2-135m-instruct-gguf:q4_1").then_some(())
    });
    assert!(owner.get("/dashboard").status().is_success(), "the setup is done");
}

#[test]
fn the_diagnostics_bundle_names_no_secret() {
    let daemon = Daemon::start(Setup { models: vec![("smollm2:135m-q4_1", SMOLLM)], claimed: false, cluster: Some(pool_on_loopback()), ..Setup::default() });
    let claim_code = std::fs::read_to_string(daemon.dir.path().join("run/claim-code")).unwrap().trim().to_string();
    let mut owner = Visitor::claim(&daemon);
    let key = daemon.key.clone().unwrap();
    // An engine runs, so its placement and sandbox are in the bundle; a request logs its model.
    let chat = daemon.post("/v1/chat/completions", &json!({"model": "smollm2:135m-q4_1", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}));
    assert_eq!(chat.status(), 200);
    let csrf = owner.csrf("/pool");
    let pairing = owner.post("/pool/code", &[("csrf", &csrf)]).text().unwrap();
    let join_code = pairing.split("id=\"join-code\">").nth(1).and_then(|s| s.split('<').next()).expect("a join code on the Pool page").to_string();

    let response = owner.get("/diagnostics");
    assert_eq!(response.status(), 200);
    let bundle = response.text().unwrap();
    let parsed: Value = serde_json::from_str(&bundle).unwrap();
    assert!(parsed["engines"][0]["sandbox"].as_str().unwrap().starts_with("sandboxed"), "{parsed}");
    assert!(parsed["tuning"]["state"].is_string() && parsed["hellasd"].is_string(), "{parsed}");
    assert!(parsed["log"].as_array().unwrap().len() > 3, "{parsed}");

    let state = daemon.state_dir();
    let owner_file: Value = serde_json::from_slice(&std::fs::read(state.join("owner.json")).unwrap()).unwrap();
    let keys: Value = serde_json::from_slice(&std::fs::read(state.join("keys.json")).unwrap()).unwrap();
    let node_key = std::fs::read(state.join("cluster/node.key")).unwrap();
    use base64::Engine as _;
    let mut secrets = vec![
        ("the API key", key.clone()),
        ("the owner's password", OWNER_PASSWORD.to_string()),
        ("the password hash", owner_file["owner"]["password"].as_str().unwrap().to_string()),
        ("the claim code", claim_code),
        ("the join code", join_code),
        ("the session cookie", owner.cookie().split('=').nth(1).unwrap().to_string()),
        ("the pool key (hex)", hex::encode(&node_key)),
        ("the pool key (base64)", base64::engine::general_purpose::STANDARD.encode(&node_key)),
    ];
    for record in keys["keys"].as_array().unwrap() {
        secrets.push(("an API key digest", record["sha256"].as_str().unwrap().to_string()));
    }
    for (what, secret) in &secrets {
        assert!(!secret.is_empty() && !bundle.contains(secret.as_str()), "{what} is in the diagnostics bundle");
    }
    println!("the bundle ({} bytes) names none of: {}", bundle.len(), secrets.iter().map(|(w, _)| *w).collect::<Vec<_>>().join(", "));
}
