//! Three boxes in network namespaces on a LAN with a switch that delays every frame, each a real
//! hellasd with the real engine; A and B are also cabled directly (link-local addresses, no
//! delay). A and B pair through their dashboards, C does not. SmolLM2 is too big for A's test
//! budget at the configured context, so A runs it across A and B over llama.cpp RPC and must
//! answer as a single llama-server does; the RPC goes over the direct cable (the interfaces'
//! counters show it), moves to the LAN when the cable is pulled and back when it returns; C
//! cannot reach B's RPC worker; killing B degrades the model with a 503 naming B, and A then
//! runs it alone at a smaller context.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::netns::{in_netns, Lan};
use hellasd::update::{Phase, Request, Status, UpdateFiles};
use support::{cache_dir, model, Daemon, DirectEngine, Setup, Visitor, SMOLLM};

const CTX: u32 = 4096;
const MIB: u64 = 1 << 20;
const CONTROL_PORT: u16 = 7077;
const RPC_PORT: u16 = 50052;
/// The LAN's one-way delay: a switch hop and a busy home network, against a cable's microseconds.
const LAN_DELAY: Duration = Duration::from_millis(2);

fn start_box(lan: &Lan, host: usize, budget: u64, models: bool) -> Daemon {
    let cluster = format!(
        "rollout_timeout_secs = 30\naddress = \"{address}\"\nlisten = \"0.0.0.0:{CONTROL_PORT}\"\nrpc_server = {rpc:?}\nrpc_port = {RPC_PORT}\nrpc_threads = 1\nnft = \"nft\"\nprobe_interval_secs = 1\n",
        address = lan.address(host),
        rpc = cache_dir().join("engine/bin/ggml-rpc-server"),
    );
    Daemon::start(Setup {
        ctx: CTX,
        parallel: 1,
        budget_bytes: Some(budget),
        models: if models {
            vec![("smollm2:135m-q4_1", SMOLLM)]
        } else {
            vec![]
        },
        netns: Some(lan.hosts[host].clone()),
        cluster: Some(cluster),
        ..Setup::default()
    })
}

/// The three boxes' owners logged in, the boxes named alpha, bravo and charlie.
fn owners(a: &Daemon, b: &Daemon, c: &Daemon) -> (Visitor, Visitor, Visitor) {
    let mut owners = (Visitor::login(a), Visitor::login(b), Visitor::login(c));
    for (owner, name) in [(&mut owners.0, "alpha"), (&mut owners.1, "bravo"), (&mut owners.2, "charlie")] {
        let csrf = owner.csrf("/settings");
        let saved = owner.post("/settings", &[("csrf", &csrf), ("box_name", name), ("timezone", "UTC")]);
        assert_eq!(saved.status(), 303, "naming the box {name}");
    }
    owners
}

/// Pairs `joiner` with the box `host` owns, at `address`.
fn pair(host: &mut Visitor, joiner: &mut Visitor, address: &str) {
    let code = show_code(host);
    let csrf = joiner.csrf("/pool");
    let paired = joiner.post("/pool/join", &[("csrf", &csrf), ("address", address), ("code", &code)]);
    assert_eq!(paired.status(), 303, "pairing with {address}: {}", paired.text().unwrap_or_default());
}

fn pool(visitor: &mut Visitor) -> Value {
    let response = visitor.get("/pool.json");
    assert_eq!(response.status(), 200);
    response.json().unwrap()
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<Value>) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {}s waiting for {what}",
            timeout.as_secs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The join code a dashboard shows after "Show a join code".
fn show_code(owner: &mut Visitor) -> String {
    let csrf = owner.csrf("/pool");
    let page = owner.post("/pool/code", &[("csrf", &csrf)]).text().unwrap();
    let at = page
        .find("id=\"join-code\">")
        .expect("the page shows a join code")
        + 15;
    page[at..at + 14].to_string()
}

fn chat(daemon: &Daemon) -> reqwest::blocking::Response {
    daemon.post("/v1/chat/completions", &request())
}

fn request() -> Value {
    json!({
        "model": "smollm2:135m-q4_1",
        "messages": [{ "role": "user", "content": "Name three colours of the rainbow." }],
        "max_tokens": 24, "temperature": 0, "seed": 1,
    })
}

fn answer(body: &Value) -> String {
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The RPC address A's split of the model uses for B now (the Pool page's "RPC over").
fn split_rpc(owner: &mut Visitor) -> Option<String> {
    pool(owner)["split"][0]["shares"][1]["rpc"].as_str().map(str::to_string)
}

/// Bytes A moved over the direct cable and over the LAN while `f` ran.
fn traffic<T>(lan: &Lan, f: impl FnOnce() -> T) -> (T, u64, u64) {
    let before = (lan.bytes(0, "direct0"), lan.bytes(0, "eth0"));
    let out = f();
    (out, lan.bytes(0, "direct0").saturating_sub(before.0), lan.bytes(0, "eth0") - before.1)
}

/// Chats with A until it answers; every failure on the way must be the documented 503.
fn chat_until_answered(a: &Daemon, what: &str) -> (Value, Vec<String>) {
    let mut failures = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let response = a.try_post("/v1/chat/completions", &request(), Duration::from_secs(60));
        let response = response.unwrap_or_else(|e| panic!("A did not answer: {e}\n{}", a.log()));
        let status = response.status();
        let retry_after = response.headers().get("retry-after").is_some();
        let body: Value = response.json().unwrap_or_default();
        if status == 200 {
            return (body, failures);
        }
        assert!(status == 503 && body["error"]["type"] == "model_degraded" && retry_after, "while the model moves: {status} {body}");
        failures.push(body["error"]["message"].as_str().unwrap_or_default().to_string());
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {failures:?}\n{}", a.log());
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn connects(ns: &str, to: &str) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    in_netns(ns, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok()
    })
}

#[test]
fn a_model_too_big_for_one_box_runs_across_two_paired_boxes() {
    let lan = Lan::new("hx", 3, LAN_DELAY);
    lan.direct(0, 1);
    // At ctx 4096 SmolLM2 plans ~355 MB: A holds it only at a smaller context, so the pool wins.
    let a = start_box(&lan, 0, 330 * MIB, true);
    let b = start_box(&lan, 1, 400 * MIB, true);
    let c = start_box(&lan, 2, 400 * MIB, false);
    let (mut owner_a, mut owner_b, mut owner_c) =
        (Visitor::login(&a), Visitor::login(&b), Visitor::login(&c));
    for (owner, name) in [
        (&mut owner_a, "alpha"),
        (&mut owner_b, "bravo"),
        (&mut owner_c, "charlie"),
    ] {
        let csrf = owner.csrf("/settings");
        let saved = owner.post(
            "/settings",
            &[("csrf", &csrf), ("box_name", name), ("timezone", "UTC")],
        );
        assert_eq!(saved.status(), 303, "naming the box {name}");
    }

    // Discovery: each box hears the others over mDNS.
    let heard = wait_for(
        "B to hear A and C over mDNS",
        Duration::from_secs(20),
        || {
            let p = pool(&mut owner_b);
            (p["discovered"].as_array()?.len() == 2).then_some(p)
        },
    );
    let a_id = pool(&mut owner_a)["this"]["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    let found_a = heard["discovered"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["node_id"] == a_id.as_str())
        .expect("B hears A");
    assert_eq!(found_a["address"], lan.address(0));
    assert!(
        found_a["budget"].as_u64().unwrap() == 330 * MIB,
        "{found_a}"
    );

    // Pairing: one guess per code. C's wrong guess voids A's code, so B needs a new one.
    let code = show_code(&mut owner_a);
    let csrf = owner_c.csrf("/pool");
    let wrong = owner_c.post(
        "/pool/join",
        &[
            ("csrf", &csrf),
            ("address", &lan.address(0)),
            ("code", "0000-0000-0000"),
        ],
    );
    assert_eq!(wrong.status(), 403);
    assert!(wrong.text().unwrap().contains("wrong join code"));
    let csrf = owner_b.csrf("/pool");
    let void = owner_b.post(
        "/pool/join",
        &[("csrf", &csrf), ("node_id", &a_id), ("code", &code)],
    );
    assert_eq!(void.status(), 403, "a code must not outlive a wrong guess");
    assert!(void.text().unwrap().contains("no open join code"));
    let code = show_code(&mut owner_a);
    let csrf = owner_b.csrf("/pool");
    let paired = owner_b.post(
        "/pool/join",
        &[
            ("csrf", &csrf),
            ("node_id", &a_id),
            ("code", &code.to_lowercase()),
        ],
    );
    assert_eq!(
        paired.status(),
        303,
        "pairing B with A: {}",
        paired.text().unwrap_or_default()
    );

    // Both sides know each other and B lends memory; C is paired with nobody.
    let b_name = "bravo";
    let peers = wait_for("A to see B's worker", Duration::from_secs(20), || {
        let p = pool(&mut owner_a);
        let peer = p["peers"].as_array()?.first()?.clone();
        (peer["reachable"] == true && peer["worker"].is_string()).then_some(peer)
    });
    assert_eq!(peers["address"], lan.address(1));
    assert_eq!(pool(&mut owner_b)["peers"][0]["node_id"], a_id.as_str());
    // A learned both of B's addresses and measured both paths: the cable is the fast one.
    let b_direct = lan.direct_address(1);
    let paths = wait_for("A to measure both paths to B", Duration::from_secs(20), || {
        let paths = pool(&mut owner_a)["peers"][0]["paths"].clone();
        (paths.as_array()?.len() == 2 && paths.as_array()?.iter().all(|p| p["up"] == true)).then_some(paths)
    });
    println!("A's paths to B: {paths}");
    assert_eq!(paths[0]["address"], b_direct.as_str(), "the cable is measured faster: {paths}");
    assert_eq!((paths[0]["chosen"].clone(), paths[0]["link"].clone()), (json!(true), json!("direct0")), "{paths}");
    assert!(paths[1]["latency_ms"].as_f64().unwrap() > paths[0]["latency_ms"].as_f64().unwrap() * 3.0, "{paths}");
    assert!(owner_a.get("/pool").text().unwrap().contains(&format!("<strong>➜ direct0 <code>{b_direct}</code>")), "the Pool page marks the link in use");
    assert!(pool(&mut owner_c)["peers"].as_array().unwrap().is_empty());

    // The fence: only the paired peer reaches B's RPC worker, on each link.
    let worker = format!("{}:{RPC_PORT}", lan.address(1));
    assert!(
        connects(&lan.hosts[0], &worker),
        "A, paired with B, must reach B's worker"
    );
    assert!(connects(&lan.hosts[0], &format!("{b_direct}:{RPC_PORT}")), "A must reach B's worker over the cable");
    assert!(
        !connects(&lan.hosts[2], &worker),
        "C, not paired, must not reach B's worker"
    );

    // The split answers as one llama-server does.
    let reference = {
        let engine = DirectEngine::start(&model(SMOLLM), CTX, 1);
        let warm = engine.post("/v1/chat/completions", &request());
        assert_eq!(warm.status(), 200);
        answer(&warm.json().unwrap())
    };
    assert!(!reference.is_empty());
    // B runs the model itself first; idle, it makes way for A's share as for one of its own.
    assert_eq!(chat(&b).status(), 200, "B alone");
    let response = chat(&a);
    assert_eq!(response.status(), 200, "A across A+B");
    assert_eq!(
        answer(&response.json().unwrap()),
        reference,
        "the split must answer as one box"
    );
    assert_eq!(split_rpc(&mut owner_a), Some(format!("{b_direct}:{RPC_PORT}")), "the split's RPC goes over the cable");
    let (response, direct, over_lan) = traffic(&lan, || chat(&a));
    assert_eq!(response.status(), 200);
    println!("one answer across A+B over the cable: {direct} bytes on the cable, {over_lan} on the LAN");
    assert!(direct > 50_000 && direct > 5 * over_lan, "the split's traffic takes the cable: {direct} bytes there, {over_lan} on the LAN");

    // The cable is pulled: the model moves to the LAN (a request may get the documented 503
    // while it reloads), answers the same, and its traffic takes the LAN.
    lan.unplug(0);
    let (moved, failures) = chat_until_answered(&a, "A to answer over the LAN");
    println!("with the cable pulled: {} request(s) got a 503 first: {failures:?}", failures.len());
    assert!(failures.iter().all(|f| f.contains("moving to another link") && f.contains(&b_direct)), "{failures:?}");
    assert_eq!(answer(&moved), reference, "over the LAN, the same answer");
    assert_eq!(split_rpc(&mut owner_a), Some(format!("{}:{RPC_PORT}", lan.address(1))), "the split's RPC goes over the LAN");
    let (response, direct, over_lan) = traffic(&lan, || chat(&a));
    assert_eq!(response.status(), 200);
    println!("one answer over the LAN: {direct} bytes on the cable, {over_lan} on the LAN");
    assert!(over_lan > 50_000 && direct == 0, "the split's traffic takes the LAN: {over_lan} bytes there, {direct} on the cable");

    // The cable is back: once the model is idle it moves back to it.
    lan.direct(0, 1);
    wait_for("A's split to move back to the cable", Duration::from_secs(120), || {
        (split_rpc(&mut owner_a) == Some(format!("{b_direct}:{RPC_PORT}"))).then_some(Value::Null)
    });
    let (back, failures) = chat_until_answered(&a, "A to answer over the cable again");
    assert_eq!(answer(&back), reference);
    let (response, direct, over_lan) = traffic(&lan, || chat(&a));
    assert_eq!(response.status(), 200);
    println!("the cable back ({} request(s) waited with a 503): {direct} bytes on the cable, {over_lan} on the LAN", failures.len());
    assert!(direct > 50_000 && direct > 5 * over_lan, "the split's traffic takes the cable again: {direct} bytes there, {over_lan} on the LAN");
    let split = pool(&mut owner_a)["split"][0].clone();
    println!("A runs across the pool: {split}");
    assert_eq!(split["ctx"], CTX, "{split}");
    let shares = split["shares"].as_array().unwrap();
    assert_eq!(shares.len(), 2, "{split}");
    assert_eq!(shares[1]["name"], b_name);
    let layers: u64 = shares.iter().map(|s| s["layers"].as_u64().unwrap()).sum();
    assert_eq!(layers, 30, "every layer is placed: {split}");
    assert!(
        shares.iter().all(|s| s["layers"].as_u64().unwrap() > 0),
        "{split}"
    );
    // B holds A's share in its own budget.
    let b_free = pool(&mut owner_b)["this"]["free"].as_u64().unwrap();
    assert_eq!(
        b_free,
        400 * MIB - shares[1]["bytes"].as_u64().unwrap(),
        "B's free memory counts the hold"
    );
    let ps_b: Value = b.get("/api/ps").json().unwrap();
    assert_eq!(ps_b["models"], json!([]), "B unloaded its idle model to lend the memory: {ps_b}");

    // Unpairing revokes: C pairs with A, then unpairs; both forget, and C's worker closes.
    pair(&mut owner_a, &mut owner_c, &lan.address(0));
    let c_worker = format!("{}:{RPC_PORT}", lan.address(2));
    wait_for("C's worker to open to A", Duration::from_secs(20), || connects(&lan.hosts[0], &c_worker).then_some(Value::Null));
    let c_id = pool(&mut owner_c)["this"]["node_id"].as_str().unwrap().to_string();
    assert_eq!(pool(&mut owner_a)["peers"].as_array().unwrap().len(), 2);
    let csrf = owner_c.csrf("/pool");
    assert_eq!(owner_c.post("/pool/unpair", &[("csrf", &csrf), ("node_id", &a_id)]).status(), 303);
    assert!(pool(&mut owner_c)["peers"].as_array().unwrap().is_empty());
    let left = pool(&mut owner_a)["peers"].clone();
    assert!(!left.to_string().contains(&c_id), "A must forget C when C unpairs: {left}");
    wait_for("C's worker to close", Duration::from_secs(20), || (!connects(&lan.hosts[0], &c_worker)).then_some(Value::Null));

    // B disappears: a clear 503 naming it, then A alone at a smaller context.
    let b_pid = b.pid();
    unsafe { libc::kill(b_pid as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    let degraded = chat(&a);
    let status = degraded.status();
    let body: Value = degraded.json().unwrap();
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(b_name) && message.contains(&b_direct),
        "the 503 names the missing box: {message}"
    );
    assert_eq!(body["error"]["type"], "model_degraded");
    println!("with B gone: {message}");
    let recovered = wait_for("A to run the model alone", Duration::from_secs(90), || {
        let response = chat(&a);
        (response.status() == 200).then(|| response.json().unwrap())
    });
    assert!(!answer(&recovered).is_empty());
    println!(
        "A alone answers: {:?} (across A+B: {reference:?})",
        answer(&recovered)
    );
    let now = pool(&mut owner_a);
    assert!(
        now["split"].as_array().unwrap().is_empty(),
        "A runs it alone now: {now}"
    );
    assert_eq!(now["peers"][0]["reachable"], false);
    let ps: Value = a.get("/api/ps").json().unwrap();
    assert!(ps.to_string().contains("smollm2"), "{ps}");
    drop((a, c));
}

/// What the root updater (`hellasd update run`) would have written: this box runs `booted`, its
/// channel offers `offered`.
fn updater_status(daemon: &Daemon, booted: &str, offered: Option<&str>, phase: Phase) {
    let status = Status {
        booted: booted.into(),
        available: vec!["1.0".into(), "2.0".into()],
        offered: offered.map(str::to_string),
        phase,
        ..Status::default()
    };
    UpdateFiles::new(&daemon.state_dir()).write_status(&status).unwrap();
}

/// The update the box asked its root updater for, taken as `hellas-update.path` takes it.
fn take_request(daemon: &Daemon) -> Option<Request> {
    let path = UpdateFiles::new(&daemon.state_dir()).request_path();
    let request = std::fs::read(&path).ok()?;
    std::fs::remove_file(&path).unwrap();
    Some(serde_json::from_slice(&request).unwrap())
}

#[test]
fn a_fleet_updates_one_box_at_a_time_and_halts_at_the_first_failure() {
    let lan = Lan::new("hf", 3, Duration::ZERO);
    let (a, mut b, c) = (start_box(&lan, 0, 400 * MIB, false), start_box(&lan, 1, 400 * MIB, false), start_box(&lan, 2, 400 * MIB, false));
    let (mut owner_a, mut owner_b, mut owner_c) = owners(&a, &b, &c);
    for daemon in [&a, &b, &c] {
        updater_status(daemon, "1.0", Some("2.0"), Phase::Idle);
    }
    pair(&mut owner_a, &mut owner_b, &lan.address(0));
    pair(&mut owner_a, &mut owner_c, &lan.address(0));
    wait_for("A to see both peers on 1.0", Duration::from_secs(20), || {
        let peers = pool(&mut owner_a)["peers"].clone();
        peers.as_array().unwrap().iter().all(|p| p["version"] == "1.0").then_some(peers)
    });

    // Update fleet: bravo updates and comes back on 2.0; charlie's install fails; alpha waits.
    let csrf = owner_a.csrf("/pool");
    assert_eq!(owner_a.post("/pool/update", &[("csrf", &csrf), ("version", "2.0")]).status(), 303);
    let mut order = Vec::new();
    let halted = wait_for("the rollout to halt", Duration::from_secs(90), || {
        if let Some(request) = take_request(&b) {
            assert_eq!(request, Request::Apply { version: "2.0".into() });
            order.push("bravo");
            updater_status(&b, "2.0", None, Phase::Idle);
            b.restart(); // the reboot into 2.0
        }
        if let Some(request) = take_request(&c) {
            assert_eq!(request, Request::Apply { version: "2.0".into() });
            order.push("charlie");
            updater_status(&c, "1.0", Some("2.0"), Phase::Failed { action: "installing 2.0".into(), error: "SHA256SUMS.gpg does not verify".into() });
        }
        assert!(take_request(&a).is_none(), "alpha must wait for the other boxes");
        let rollout = pool(&mut owner_a)["rollout"].clone();
        (rollout["halted"] == true).then_some(rollout)
    });
    assert_eq!(order, ["bravo", "charlie"], "one box at a time, by name");
    let summary = halted["summary"].as_str().unwrap();
    assert!(summary.contains("halted at charlie") && summary.contains("SHA256SUMS.gpg does not verify"), "{halted}");
    assert!(halted["steps"].to_string().contains("bravo: on 2.0 and healthy"), "{halted}");
    assert!(UpdateFiles::new(&a.state_dir()).status().unwrap().booted == "1.0" && take_request(&a).is_none(), "alpha is left alone");
    let page = owner_a.get("/pool").text().unwrap();
    assert!(page.contains("halted at charlie"), "the Pool page says where the rollout stopped");

    // Re-image, data kept: charlie goes back to the channel's release.
    let csrf = owner_a.csrf("/pool");
    let c_id = pool(&mut owner_c)["this"]["node_id"].as_str().unwrap().to_string();
    let refused = owner_a.post("/pool/reimage", &[("csrf", &csrf), ("node_id", &c_id), ("keep_data", "on"), ("confirm", "bravo")]);
    assert_eq!(refused.status(), 400, "the box's name must be typed back");
    let kept = owner_a.post("/pool/reimage", &[("csrf", &csrf), ("node_id", &c_id), ("keep_data", "on"), ("confirm", "charlie")]);
    assert_eq!(kept.status(), 200);
    assert_eq!(take_request(&c), Some(Request::Apply { version: "2.0".into() }));
    assert!(c.state_dir().join("owner.json").exists());

    // Re-image, data wiped: it waits for charlie's owner, who refuses it once, then approves.
    let ask = |owner_a: &mut Visitor| {
        let asked = owner_a.post("/pool/reimage", &[("csrf", &csrf), ("node_id", &c_id), ("confirm", "charlie")]);
        assert_eq!(asked.status(), 200);
        let page = asked.text().unwrap();
        assert!(page.contains("Not wiped yet: charlie waits for its owner to approve the wipe"), "{page}");
    };
    ask(&mut owner_a);
    assert!(c.state_dir().join("owner.json").exists(), "nothing is wiped before charlie's owner says so");
    let dashboard = owner_c.get("/dashboard").text().unwrap();
    assert!(dashboard.contains("alpha asks to wipe this box"), "charlie's dashboard shows the request");
    let csrf_c = owner_c.csrf("/pool");
    let refused = owner_c.post("/pool/wipe-request", &[("csrf", &csrf_c), ("answer", "refuse")]);
    assert!(refused.status() == 200 && refused.text().unwrap().contains("Refused: this box stays as it is."));
    assert!(!owner_c.get("/pool").text().unwrap().contains("asks to wipe"), "a refused request is gone");
    assert!(c.state_dir().join("owner.json").exists());
    ask(&mut owner_a);
    let approved = owner_c.post("/pool/wipe-request", &[("csrf", &csrf_c), ("answer", "approve")]);
    assert!(approved.status() == 200 && approved.text().unwrap().contains("being reset"));
    wait_for("charlie to be reset", Duration::from_secs(20), || (!c.state_dir().join("owner.json").exists()).then_some(Value::Null));
    assert!(!pool(&mut owner_a)["peers"].to_string().contains(&c_id), "alpha no longer lists charlie");
    let peers_of_c: Value = serde_json::from_slice(&std::fs::read(c.state_dir().join("cluster/peers.json")).unwrap()).unwrap();
    assert_eq!(peers_of_c["peers"], json!([]), "charlie forgot alpha");
    drop(owner_c);
}

