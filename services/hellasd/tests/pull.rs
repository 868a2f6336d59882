//! Pulling models from Hugging Face, against a local stand-in for the Hub (`support::hub_server`)
//! that speaks the part of its API the box uses: a split model (SmolLM2 cut into three parts by
//! llama.cpp's own gguf-split) is pulled whole, verified, resumed after a cut connection, and
//! answers through the daemon as the unsplit file does directly; every failure says what to do
//! and leaves nothing in the library, a full disk included.

mod support;

use std::path::PathBuf;
use std::process::Output;

use serde_json::{json, Value};
use support::hub_server::{part_name, smollm_repo, Fault, REPO};
use support::{model, run, Daemon, DirectEngine, Setup, SMOLLM};

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn greedy(post: impl Fn(&Value) -> reqwest::blocking::Response, name: &str) -> String {
    let body = json!({"model": name, "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0, "seed": 42, "max_tokens": 16});
    let answer: Value = post(&body).json().unwrap();
    answer["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("no answer: {answer}")).to_string()
}

#[test]
fn a_split_model_is_pulled_whole_verified_resumed_and_served() {
    let (_dir, hub) = smollm_repo();
    let part = part_name;
    let daemon = Daemon::start(Setup { models: vec![], budget_bytes: Some(4 << 30), hub: Some(hub.endpoint.clone()), ..Setup::default() });
    let pull = |reference: &str| run(daemon.cli().args(["models", "pull", reference]));
    let library = || String::from_utf8(run(daemon.cli().args(["models", "list"])).stdout).unwrap();

    for (reference, says) in [
        ("hf.co/test/Nothing-GGUF:Q4_1", "no such repository on Hugging Face"),
        (&format!("hf.co/{REPO}:Q4_1@v9"), "no such revision"),
        (&format!("hf.co/{REPO}:Q9_9"), "has no Q9_9 model"),
        (&format!("hf.co/{REPO}:Q5_0"), "lacks part(s) Gappy-Q5_0-00002-of-00002.gguf"),
        (&format!("hf.co/{REPO}:Q8_0"), "is it a GGUF file?"),
        (&format!("hf.co/{REPO}:Q3_K_M"), "not the abababab"),
        ("huggingface.co/test", "hf.co/ORG/REPO:QUANT"),
    ] {
        let out = pull(reference);
        assert!(!out.status.success() && text(&out).contains(says), "{reference}: {}", text(&out));
    }
    assert_eq!(library().trim(), "", "nothing half-fetched is ever named in the library");
    let partials: Vec<PathBuf> = std::fs::read_dir(daemon.state_dir().join("downloads")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(partials.is_empty(), "a file that failed its sha256 is deleted: {partials:?}");

    // The connection breaks in the middle of the second part: the download resumes from there.
    // The third arrives corrupt: refused by its sha256, nothing named; the retry fetches only it.
    hub.fault_next(&part(2), Fault::Cut(1 << 20));
    hub.fault_next(&part(3), Fault::Corrupt(4096));
    let out = pull(&format!("hf.co/{REPO}:Q4_1"));
    assert!(!out.status.success() && text(&out).contains(&format!("{}: the downloaded file's sha256", part(3))), "{}", text(&out));
    assert_eq!(library().trim(), "");
    let before: Vec<usize> = (1..=3).map(|n| hub.requests(&part(n)).len()).collect();
    let out = pull(&format!("hf.co/{REPO}:Q4_1"));
    assert!(out.status.success(), "{}", text(&out));
    let after: Vec<usize> = (1..=3).map(|n| hub.requests(&part(n)).len()).collect();
    assert_eq!((after[0], after[1]), (before[0], before[1]), "verified parts are kept: {before:?} → {after:?}");
    assert!(text(&out).contains("on this box: fits at context 2048") && text(&out).contains("added hf.co/test/smollm2-135m-instruct-gguf:q4_1"), "{}", text(&out));
    assert!(hub.requests(&part(2)).ends_with(&[0, 1 << 20]), "resumed from the cut: {:?}", hub.requests(&part(2)));
    assert!(library().contains("hf.co/test/smollm2-135m-instruct-gguf:q4_1"), "{}", library());

    // Served from its first part, named as the client pulled it, it answers as the whole file.
    let direct = DirectEngine::start(&model(SMOLLM), 2048, 2);
    let expected = greedy(|b| direct.post("/v1/chat/completions", b), "any");
    let answer = greedy(|b| daemon.post("/v1/chat/completions", b), &format!("hf.co/{REPO}:Q4_1"));
    assert_eq!(answer, expected);
    let fetched = hub.requests(&part(1)).len();
    let again = pull(&format!("hf.co/{REPO}:Q4_1"));
    assert!(again.status.success() && text(&again).contains("in the library already"), "{}", text(&again));
    assert_eq!(hub.requests(&part(1)).len(), fetched, "a model already pulled is not fetched again");
}

#[test]
fn ollama_pull_streams_its_progress_and_refuses_what_does_not_fit() {
    let (_dir, hub) = smollm_repo();
    let daemon = Daemon::start(Setup { models: vec![], budget_bytes: Some(4 << 30), hub: Some(hub.endpoint.clone()), ..Setup::default() });
    let reference = format!("hf.co/{REPO}:Q4_1");
    let response = daemon.post("/api/pull", &json!({ "model": reference }));
    assert_eq!(response.status(), 200);
    let lines: Vec<Value> = response.text().unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let statuses: Vec<&str> = lines.iter().filter_map(|l| l["status"].as_str()).collect();
    assert_eq!(statuses.first(), Some(&"pulling manifest"), "{lines:?}");
    assert_eq!(&statuses[statuses.len() - 2..], ["writing manifest", "success"], "{lines:?}");
    // Byte counts over all the files: they only grow, up to the whole (a watcher sees the
    // latest count, so the last one it streams may fall short of the total).
    let counts: Vec<(u64, u64)> = lines.iter().filter_map(|l| Some((l["completed"].as_u64()?, l["total"].as_u64()?))).collect();
    assert!(!counts.is_empty() && counts.windows(2).all(|w| w[0].0 <= w[1].0) && counts.iter().all(|(done, total)| done <= total), "{counts:?}");
    assert!(lines.iter().filter_map(|l| l["digest"].as_str()).all(|d| d.starts_with("sha256:")), "{lines:?}");
    let tags: Value = daemon.get("/api/tags").json().unwrap();
    assert!(tags.to_string().contains("hf.co/test/smollm2-135m-instruct-gguf:q4_1"), "{tags}");
    let chat = daemon.post("/api/chat", &json!({"model": reference, "messages": [{"role": "user", "content": "Hi"}], "stream": false, "options": {"num_predict": 4}}));
    assert_eq!(chat.status(), 200, "the pulled model answers under the name it was pulled by");

    // A catalog name pulls the best of its quantisations that fits: here the Q8_0 is not a GGUF
    // at all, so the Q4_1.
    let catalog = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        catalog.path(),
        format!("[[model]]\nname = \"smollm2:135m\"\ntitle = \"SmolLM2\"\nrepository = \"{REPO}\"\nquantisations = [\"Q8_0\", \"Q4_1\"]\nparameters = \"135M\"\narchitecture = \"llama\"\nlicence = \"Apache-2.0\"\ncontext = 8192\n"),
    )
    .unwrap();
    let with_catalog = Daemon::start(Setup { models: vec![], catalog: Some(catalog.path().into()), hub: Some(hub.endpoint.clone()), ..Setup::default() });
    let pulled = with_catalog.post("/api/pull", &json!({ "model": "smollm2:135m", "stream": false }));
    assert_eq!(pulled.status(), 200, "{}", pulled.text().unwrap());
    let tags: Value = with_catalog.get("/api/tags").json().unwrap();
    assert!(tags.to_string().contains("\"smollm2:135m-q4_1\""), "{tags}");

    let small = Daemon::start(Setup { models: vec![], budget_bytes: Some(64 << 20), hub: Some(hub.endpoint.clone()), ..Setup::default() });
    let refused = small.post("/api/pull", &json!({ "model": reference, "stream": false }));
    assert_eq!(refused.status(), 507);
    assert!(refused.text().unwrap().contains("does not fit"));
    let unknown = small.post("/api/pull", &json!({ "model": "llama3" }));
    assert_eq!(unknown.status(), 404);
    assert!(unknown.text().unwrap().contains("hf.co/ORG/REPO:QUANT"));
}

/// Waits until the downloads in `dir` hold 4 MiB of partial files: a download is under way.
fn wait_until_fetching(dir: &std::path::Path) {
    let fetched = || -> u64 {
        let partials = dir.read_dir().into_iter().flatten().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "partial"));
        partials.map(|e| e.metadata().map_or(0, |m| m.len())).sum()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while fetched() < 4 << 20 {
        assert!(std::time::Instant::now() < deadline, "the download did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A tmpfs mounted for one test (the tests run as root, as CI does), unmounted however it ends.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = run(std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir.path()));
        assert!(out.status.success(), "mounting a tmpfs (the test needs root): {}", text(&out));
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("--lazy").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_is_said_before_and_during_a_download_and_a_retry_continues() {
    let (_dir, hub) = smollm_repo();
    let daemon = Daemon::start(Setup { models: vec![], budget_bytes: Some(4 << 30), hub: Some(hub.endpoint.clone()), ..Setup::default() });
    // The CLI pulls into a state directory on a small file system of its own.
    let disk = Tmpfs::mount("200m");
    let state = disk.0.path().join("state");
    let config_text = std::fs::read_to_string(&daemon.config).unwrap();
    let config = daemon.dir.path().join("small-disk.toml");
    std::fs::write(&config, format!("state_dir = {state:?}\n{}", config_text.split_once('\n').unwrap().1)).unwrap();
    let reference = format!("hf.co/{REPO}:Q4_1");
    let pull = || support::hellasd().arg("--config").arg(&config).args(["models", "pull", &reference]).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let list = || text(&run(support::hellasd().arg("--config").arg(&config).args(["models", "list"])));

    // Too little room from the start: refused before a byte is fetched.
    let out = pull().wait_with_output().unwrap();
    assert!(!out.status.success() && text(&out).contains("free on the data partition") && text(&out).contains("remove a model"), "{}", text(&out));
    assert!(hub.requests(&part_name(1)).iter().all(|start| *start == 0), "{:?}", hub.requests(&part_name(1)));

    // Room at the start, then something else fills the disk mid-download.
    let out = run(std::process::Command::new("mount").args(["-o", "remount,size=400m"]).arg(disk.0.path()));
    assert!(out.status.success(), "{}", text(&out));
    hub.throttle(8 << 20);
    let running = pull();
    wait_until_fetching(&state.join("downloads"));
    let filler = disk.0.path().join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        while file.write_all(&[0u8; 1 << 20]).is_ok() {}
    }
    let out = running.wait_with_output().unwrap();
    assert!(!out.status.success() && text(&out).contains("the data partition is full") && text(&out).contains("start the download again"), "{}", text(&out));
    assert!(!list().contains("smollm2"), "a half-fetched model is never named: {}", list());

    // Room again: the retry continues from what was kept.
    std::fs::remove_file(&filler).unwrap();
    hub.throttle(0);
    let out = pull().wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(hub.requests(&part_name(1)).iter().any(|start| *start > 0), "resumed, not started over: {:?}", hub.requests(&part_name(1)));
    assert!(list().contains("hf.co/test/smollm2-135m-instruct-gguf:q4_1"), "{}", list());
}

#[test]
fn a_download_cut_by_a_restart_goes_on_by_itself() {
    let (_dir, hub) = smollm_repo();
    let mut daemon = Daemon::start(Setup { models: vec![], budget_bytes: Some(4 << 30), hub: Some(hub.endpoint.clone()), ..Setup::default() });
    hub.throttle(8 << 20);
    let reference = format!("hf.co/{REPO}:Q4_1");
    let (url, key) = (daemon.url.clone(), daemon.key.clone().unwrap());
    let pulling = std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder().no_proxy().build().unwrap();
        let _ = client.post(format!("{url}/api/pull")).bearer_auth(key).json(&json!({ "model": reference })).send().and_then(|r| r.text());
    });
    let downloads = daemon.state_dir().join("downloads");
    wait_until_fetching(&downloads);
    // As a power cut or a crash would: no time to finish anything.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGKILL) };
    daemon.restart();
    pulling.join().unwrap();
    hub.throttle(0);
    let name = "hf.co/test/smollm2-135m-instruct-gguf:q4_1";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !daemon.get("/api/tags").text().unwrap().contains(name) {
        assert!(std::time::Instant::now() < deadline, "the download did not go on after the restart:\n{}", daemon.log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(hub.requests(&part_name(1)).iter().any(|start| *start > 0), "it went on from where it stopped: {:?}", hub.requests(&part_name(1)));
    assert!(daemon.log().contains("resuming an interrupted download"));
    assert!(!downloads.read_dir().unwrap().flatten().any(|e| e.file_name().to_string_lossy().ends_with(".pull.json")), "nothing left to resume");
}
