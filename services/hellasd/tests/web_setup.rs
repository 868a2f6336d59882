//! The first-boot setup in a real browser (Debian's headless chromium through chromedriver)
//! against a real hellasd with the real engine: claim code, owner password, settings, a model
//! from the catalog (the best quantisation that fits) downloaded from a local stand-in for Hugging
//! Face that corrupts one download and cuts the next, the first API key, a chat answer through
//! the API from the "try it" box, and a model pasted as an hf.co reference.
//! Screenshots of every step go to `target/tmp/web-setup/`.
//!
//! Then the refusals, over plain HTTP: the API before the claim, wrong claim codes, forms without
//! their CSRF token or from another origin, bad model names and bodies over the limit.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::hub_server::{huge_model, smollm_repo, Fault, HubFile, HubServer, REPO};
use support::webdriver::Browser;
use support::{Daemon, Setup, Visitor, SMOLLM};

/// The catalog's SmolLM2 repository: the real Q4_1 and a Q8_0 too big for the test budget.
const CATALOG_REPO: &str = "test/SmolLM2-135M-Instruct-Catalog-GGUF";
const Q4_1: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const PASSWORD: &str = "a long and private phrase";

fn artefacts(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A catalog whose models are on `hub`: SmolLM2, whose better quantisation does not fit the
/// test budget and its smaller does, and a model far too big in any.
fn catalog(dir: &Path, hub: &HubServer) -> PathBuf {
    let (q8, huge) = (dir.join("q8_0.gguf"), dir.join("huge.gguf"));
    huge_model(&q8, 3 << 30);
    huge_model(&huge, 42 << 30);
    let unchecked = |path: &str, source: PathBuf| HubFile { path: path.into(), source, sha256: Some("cd".repeat(32)) };
    hub.add_repo(CATALOG_REPO, vec![HubFile::lfs(Q4_1, support::model(SMOLLM)), unchecked("SmolLM2-135M-Instruct.Q8_0.gguf", q8)]);
    hub.add_repo("test/Huge-70B-GGUF", vec![unchecked("Huge-70B-Q4_K_M.gguf", huge)]);
    let text = format!(
        r#"[[model]]
name = "smollm2:135m"
title = "SmolLM2 135M Instruct"
description = "A tiny model for trying things out."
repository = "{CATALOG_REPO}"
quantisations = ["Q8_0", "Q4_1"]
parameters = "135M"
architecture = "llama"
licence = "Apache-2.0"
context = 8192

[[model]]
name = "huge:70b"
title = "Huge 70B"
repository = "test/Huge-70B-GGUF"
quantisations = ["Q4_K_M"]
parameters = "70B"
architecture = "llama"
licence = "Llama 3.3"
context = 131072
"#
    );
    let path = dir.join("catalog.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn unclaimed(catalog: Option<PathBuf>, hub: Option<String>) -> Daemon {
    Daemon::start(Setup {
        hub,
        models: vec![],
        create_key: false,
        claimed: false,
        catalog,
        budget_bytes: Some(1 << 30),
        ctx: 2048,
        parallel: 1,
        ..Setup::default()
    })
}

fn claim_code(daemon: &Daemon) -> String {
    let out = support::run(daemon.cli().arg("claim-code"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().find(|w| w.len() == 9 && w.as_bytes()[4] == b'-').unwrap_or_else(|| panic!("no code in {text:?}")).to_string()
}

fn library_names(daemon: &Daemon) -> String {
    let out = support::run(daemon.cli().args(["models", "list"]));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_person_sets_up_the_box_in_a_browser() {
    let shots = artefacts("web-setup");
    let booted = Instant::now();
    let (_repo, hub) = smollm_repo();
    // About 20 MB/s, so the page shows a download in progress.
    hub.throttle(20 << 20);
    let daemon = unclaimed(Some(catalog(&shots, &hub)), Some(hub.endpoint.clone()));
    let browser = Browser::start(&shots.join("chromedriver.log"));
    let shot = |name: &str| browser.screenshot(&shots.join(format!("{name}.png")));

    // 1. The claim code: a wrong one is refused, the one from the console claims.
    // As a person types the box's address: plain HTTP, until the claim sends the browser to HTTPS.
    browser.goto(&format!("{}/", daemon.http_url));
    assert!(browser.url().ends_with("/setup/claim"), "{}", browser.url());
    shot("01-claim");
    browser.find("#code").type_text("ABCD-EFGH");
    browser.follow("#claim");
    assert!(browser.text(".error").contains("not this box's claim code"), "{}", browser.text("body"));
    browser.find("#code").type_text(&claim_code(&daemon).to_lowercase());
    browser.follow("#claim");

    // 2. The owner's password, with its rules; a mismatch is caught.
    assert!(browser.url().ends_with("/setup/owner"), "{}", browser.url());
    assert!(browser.text(".rules").contains("At least 10 characters"));
    shot("02-owner");
    browser.find("#password").type_text(PASSWORD);
    browser.find("#confirm").type_text("something else entirely");
    browser.follow("#save-password");
    assert!(browser.text(".error").contains("differ"), "{}", browser.text("body"));
    browser.find("#password").type_text(PASSWORD);
    browser.find("#confirm").type_text(PASSWORD);
    browser.follow("#save-password");
    // Claimed over plain HTTP: the box answers over HTTPS only now, and the owner logs in there
    // after checking the certificate's fingerprint; the session cookie is Secure.
    assert!(browser.text("#fingerprint").len() == 95, "{}", browser.text("body"));
    browser.follow("#continue");
    assert!(browser.url().starts_with(&format!("{}/login", daemon.web_url)), "{}", browser.url());
    browser.find("#password").type_text(PASSWORD);
    browser.follow("#login");
    let session = browser.cookies().into_iter().find(|c| c["name"] == "hellas_session").expect("a session cookie");
    assert_eq!((session["httpOnly"].as_bool(), session["sameSite"].as_str(), session["secure"].as_bool()), (Some(true), Some("Strict"), Some(true)), "{session}");

    // 3. Settings: a bad key is explained, then a good name and zone are kept.
    assert!(browser.url().ends_with("/settings"), "{}", browser.url());
    shot("03-settings");
    browser.find("#box_name").clear().type_text("kitchen");
    browser.find("#ssh_keys").type_text("not a key");
    browser.follow("#save-settings");
    assert!(browser.text(".error").contains("not an OpenSSH public key"), "{}", browser.text("body"));
    browser.find("#ssh_keys").clear();
    browser.find("#timezone").type_text("Europe/Athens");
    browser.follow("#save-settings");

    // 4. The catalog with this box's verdicts: of SmolLM2 the best quantisation that fits.
    assert!(browser.url().ends_with("/models"), "{}", browser.url());
    shot("04-models");
    let small = browser.text("tr[data-model='smollm2:135m-q4_1'] .verdict");
    assert!(small.starts_with("fits at context 2048"), "{small}");
    let quant = browser.text("tr[data-model='smollm2:135m-q4_1'] .quant");
    assert!(quant.starts_with("Q4_1") && quant.contains("Q8_0: does not fit"), "{quant}");
    assert!(browser.text("tr[data-model='smollm2:135m-q4_1'] .files").contains(Q4_1));
    let huge = browser.text("tr[data-model='huge:70b-q4_k_m'] .verdict");
    assert!(huge.starts_with("does not fit"), "{huge}");
    assert!(browser.try_find("tr[data-model='huge:70b-q4_k_m'] button").is_none(), "a model that cannot fit is not offered");

    // 5. The download: the first is corrupted (refused, nothing kept), the second is cut
    // part-way and resumes.
    hub.fault_next(Q4_1, Fault::Corrupt(50_000_000));
    hub.fault_next(Q4_1, Fault::Cut(30_000_000));
    browser.follow("tr[data-model='smollm2:135m-q4_1'] button");
    browser.wait_text("#status", Duration::from_secs(60), |t| t.contains('%'));
    shot("05-downloading");
    let failed = browser.wait_text("#status", Duration::from_secs(120), |t| t.starts_with("Failed"));
    assert!(failed.contains("sha256"), "{failed}");
    shot("06-corrupted");
    assert!(!library_names(&daemon).contains("smollm2"), "a corrupted download entered the library");
    let downloads = daemon.dir.path().join("state/downloads");
    assert_eq!(std::fs::read_dir(&downloads).map(|d| d.count()).unwrap_or(0), 0, "the corrupted file was kept");
    browser.follow("#retry");
    browser.wait_text("#status", Duration::from_secs(120), |t| t.contains("is ready"));
    shot("07-downloaded");
    let resumed: Vec<u64> = hub.requests(Q4_1).into_iter().filter(|start| *start > 0).collect();
    assert_eq!(resumed, vec![30_000_000], "the cut download resumes where it broke: {:?}", hub.requests(Q4_1));
    assert!(library_names(&daemon).contains("smollm2:135m-q4_1"));
    browser.follow("#continue");

    // 6. The first API key, its examples, and an answer through the real API.
    assert!(browser.url().ends_with("/setup/key"), "{}", browser.url());
    browser.follow("#create-key");
    let key = browser.text("#api-key");
    assert!(key.starts_with("hls_"), "{key}");
    assert!(browser.text("#ex-curl").contains(&key));
    assert!(browser.text("#ex-python").contains("base_url=\"http://127.0.0.1:"));
    shot("08-key");
    browser.find("#try-send").click();
    let answer = browser.wait_text("#try-answer", Duration::from_secs(180), |t| !t.is_empty() && t != "…");
    let first_answer = booted.elapsed();
    assert!(!answer.starts_with("Error"), "{answer}");
    shot("09-answer");

    // The same key works from outside the browser, and the same greedy question gets the same
    // answer there; the dashboard shows what happened.
    let direct: Value = daemon
        .client()
        .post(format!("{}/v1/chat/completions", daemon.url))
        .bearer_auth(&key)
        .json(&json!({
            "model": "smollm2:135m-q4_1", "max_tokens": 64, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(direct["choices"][0]["message"]["content"].as_str(), Some(answer.as_str()), "{direct}");
    browser.follow("#to-dashboard");
    assert!(browser.text("h1").contains("kitchen.local"), "{}", browser.text("body"));
    assert!(browser.text("#models").contains("smollm2:135m-q4_1"));
    assert!(browser.text("#recent").contains("smollm2:135m-q4_1"), "{}", browser.text("body"));
    assert!(browser.text("#keys").contains("first key"));
    shot("10-dashboard");

    // 7. Any model on Hugging Face: a reference pasted on the models page, checked to fit from
    // its header first, fetched part by part (a split model here) and served under its name.
    browser.goto(&format!("{}/models", daemon.web_url));
    browser.find("#reference").type_text(&format!("hf.co/{REPO}:Q4_1"));
    browser.follow("#pull");
    browser.wait_text("#status", Duration::from_secs(180), |t| t.contains("is ready"));
    shot("11-pulled");
    assert!(library_names(&daemon).contains("hf.co/test/smollm2-135m-instruct-gguf:q4_1"), "{}", library_names(&daemon));

    let timing = json!({ "booted_to_first_answer_secs": first_answer.as_secs_f64() });
    std::fs::write(shots.join("timing.json"), timing.to_string()).unwrap();
    println!("from start to the first answer in the browser: {:.1} s; screenshots in {}", first_answer.as_secs_f64(), shots.display());
}

#[test]
fn the_setup_refuses_what_it_must() {
    let daemon = unclaimed(None, None);
    let api = daemon.client();

    // Before the claim the API serves nothing, with or without a key.
    let before = api.get(format!("{}/v1/models", daemon.url)).send().unwrap();
    assert_eq!(before.status(), 403);
    assert_eq!(before.json::<Value>().unwrap()["error"]["type"], "not_set_up");
    let ollama = api.post(format!("{}/api/chat", daemon.url)).json(&json!({"model": "x"})).send().unwrap();
    assert_eq!(ollama.status(), 403);
    // Only a bare liveness answer: nothing about the box, its models or what it is asked.
    let health: Value = api.get(format!("{}/health", daemon.url)).send().unwrap().json().unwrap();
    assert_eq!(health, json!({"status": "ok"}));
    assert_eq!(api.get(format!("{}/metrics", daemon.url)).send().unwrap().status(), 403);

    let mut visitor = Visitor::new(&daemon);
    let csrf = visitor.csrf("/setup/claim");
    let cookie = visitor.cookie.clone();
    let set_cookie_flags = visitor.http.get(format!("{}/", daemon.web_url)).send().unwrap();
    let flags = set_cookie_flags.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(flags.contains("HttpOnly") && flags.contains("SameSite=Strict"), "{flags}");

    // Forms without the session's CSRF token, or posted from another origin, are refused.
    assert_eq!(visitor.post("/setup/claim", &[("code", "ABCD-EFGH")]).status(), 422, "a form without its token does not even parse");
    assert_eq!(visitor.post("/setup/claim", &[("csrf", &"0".repeat(64)), ("code", "ABCD-EFGH")]).status(), 403);
    let foreign = visitor
        .http
        .post(format!("{}/setup/claim", daemon.web_url))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .form(&[("csrf", csrf.as_str()), ("code", "ABCD-EFGH")])
        .send()
        .unwrap();
    assert_eq!(foreign.status(), 403);

    // Wrong claim codes: five are answered, then the door closes for a while, even for the
    // right code.
    for _ in 0..5 {
        assert_eq!(visitor.post("/setup/claim", &[("csrf", &csrf), ("code", "ABCD-EFGH")]).status(), 403);
    }
    let limited = visitor.post("/setup/claim", &[("csrf", &csrf), ("code", &claim_code(&daemon))]);
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    assert!(limited.text().unwrap().contains("Too many wrong tries"));

    // Owner pages need the owner; the password page needs the claim code first.
    assert_eq!(visitor.http.get(format!("{}/dashboard", daemon.web_url)).header("cookie", &cookie).send().unwrap().headers()["location"], "/login");
    assert_eq!(visitor.http.get(format!("{}/setup/owner", daemon.web_url)).header("cookie", &cookie).send().unwrap().headers()["location"], "/setup/claim");
    // An owner's form, even with this session's own CSRF token, is not for a visitor.
    assert_eq!(visitor.post("/keys/revoke", &[("csrf", &csrf), ("id", "any")]).headers()["location"], "/login");
    let owner = visitor.post("/setup/owner", &[("csrf", &csrf), ("password", PASSWORD), ("confirm", PASSWORD)]);
    assert_eq!(owner.headers()["location"], "/setup/claim");
    assert!(!daemon.dir.path().join("state/owner.json").exists(), "no owner without the claim code");

    // Bodies over the limit.
    let big = "x".repeat(100 << 10);
    assert_eq!(visitor.post("/setup/claim", &[("csrf", &csrf), ("code", &big)]).status(), 413);

    // Model names that could be paths never reach the library (NUL cannot be an argument;
    // the API test and the library's own tests cover it).
    for name in ["../etc/passwd", "/etc/passwd", "models/../../x"] {
        let out = support::run(daemon.cli().args(["models", "add"]).arg(support::model(SMOLLM)).args(["--name", name]));
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("invalid model name"), "{name:?} accepted");
    }
}

#[test]
fn bad_model_names_in_api_requests_are_refused() {
    let daemon = Daemon::start(Setup { models: vec![], ..Setup::default() });
    for name in ["../etc/passwd", "/etc/passwd", "a\u{0}b"] {
        let response = daemon.post("/v1/chat/completions", &json!({"model": name, "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(response.status(), 400, "{name:?}");
        let body: Value = response.json().unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains("invalid model name"), "{body}");
    }
}

/// The HTTPS certificate's SHA-256, as the box shows it: `AB:CD:…`.
fn fingerprint_of(response: &reqwest::blocking::Response) -> String {
    use sha2::{Digest, Sha256};
    let info = response.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS information");
    let der = info.peer_certificate().expect("the box's certificate");
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

#[test]
fn once_claimed_the_box_is_reached_over_https_with_secure_cookies() {
    let daemon = unclaimed(None, None);
    // Before the claim: the setup over plain HTTP, naming the certificate the HTTPS pages present,
    // as the console does.
    let mut plain = Visitor::at(&daemon, &daemon.http_url);
    let page = plain.get("/setup/claim").text().unwrap();
    let presented = fingerprint_of(&Visitor::new(&daemon).get("/setup/claim"));
    assert!(page.contains(&presented), "the claim page names the certificate {presented}: {page}");
    let console = std::fs::read_to_string(daemon.dir.path().join("run/claim.issue")).unwrap();
    assert!(console.contains(&presented) && console.contains("https://"), "the console names it too: {console}");

    // Someone else's session, begun in the clear before the claim.
    let mut early = Visitor::at(&daemon, &daemon.http_url);
    early.get("/setup/claim");
    let cleartext = early.cookie().to_string();

    // The claim over plain HTTP ends with the way to HTTPS and the fingerprint to check; then
    // every page redirects there, forms included (307 keeps the method), and no HSTS (it would
    // lock the browser out of a self-signed certificate).
    let csrf = plain.csrf("/setup/claim");
    assert_eq!(plain.post("/setup/claim", &[("csrf", &csrf), ("code", &claim_code(&daemon))]).status(), 303);
    let csrf = plain.csrf("/setup/owner");
    let claimed = plain.post("/setup/owner", &[("csrf", &csrf), ("password", PASSWORD), ("confirm", PASSWORD)]);
    assert_eq!(claimed.status(), 200);
    let page = claimed.text().unwrap();
    assert!(page.contains(&format!("{}/login", daemon.web_url)) && page.contains(&presented), "{page}");
    assert_eq!(plain.get("/dashboard").headers()["location"], format!("{}/dashboard", daemon.web_url), "the claim's cleartext session is no owner's");
    let tls_port = daemon.web_url.rsplit(':').next().unwrap();
    for (method, path) in [("GET", "/settings?x=1"), ("POST", "/settings"), ("GET", "/")] {
        let request = plain.http.request(method.parse().unwrap(), format!("{}{path}", daemon.http_url)).header("cookie", plain.cookie());
        let response = request.header("host", "kitchen.local:8088").send().unwrap();
        assert_eq!(response.status(), 307, "{method} {path}");
        assert_eq!(response.headers()["location"], format!("https://kitchen.local:{tls_port}{path}"), "{method} {path}");
        assert!(!response.headers().contains_key("strict-transport-security"));
    }
    assert_eq!(plain.get("/assets/style.css").status(), 307, "nothing is served in the clear any more");

    // A session begun in the clear, on its first HTTPS request: a new id and a Secure cookie;
    // the id that travelled in the clear is dropped.
    let mut secure = Visitor::new(&daemon);
    let first = secure.http.get(format!("{}/login", daemon.web_url)).header("cookie", &cleartext).send().unwrap();
    let set_cookie = first.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set_cookie.contains("Secure") && set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let old_id = cleartext.split('=').nth(1).unwrap();
    assert!(!set_cookie.contains(old_id), "a new id: {set_cookie}");
    let again = secure.http.get(format!("{}/login", daemon.web_url)).header("cookie", &cleartext).send().unwrap();
    let renewed = again.headers()["set-cookie"].to_str().unwrap();
    assert!(!renewed.contains(old_id) && renewed != set_cookie, "the cleartext id opens nothing: {renewed}");
    // A login over HTTPS gets a Secure cookie too.
    let csrf = secure.csrf("/login");
    let login = secure.post("/login", &[("csrf", &csrf), ("password", PASSWORD)]);
    assert_eq!(login.status(), 303);
    assert!(login.headers()["set-cookie"].to_str().unwrap().contains("; Secure"));
}
