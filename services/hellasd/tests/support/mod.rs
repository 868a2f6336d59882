//! Test harness: a real hellasd with the real llama-server engine and the real test models.
//!
//! The engine tree and models come from `cargo xtask engine` and `cargo xtask models`, under
//! `$HELLAS_CACHE` (default `~/.cache/hellas`).
#![allow(dead_code)]

pub mod hub_server;
pub mod netns;
pub mod webdriver;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SMOLLM: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// SmolLM2's own chat template takes no tools, and this llama.cpp ignores the tools of a request
/// to a model whose template has none (no generic fallback any more). This one, SmolLM2's ChatML
/// with tools and calls as bare JSON objects, is given to the engines with `--chat-template`.
pub const SMOLLM_TOOLS_TEMPLATE: &str = include_str!("../fixtures/smollm2-tools.jinja");
pub const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";
/// all-MiniLM-L6-v2, converted by `cargo xtask models` (xtask/scripts/minilm_gguf.py).
pub const MINILM: &str = "all-MiniLM-L6-v2-F16.gguf";
/// sentence-transformers' embeddings of a few sentences, written beside [`MINILM`].
pub const MINILM_REFERENCE: &str = "all-MiniLM-L6-v2.reference.json";
/// A Gemma 3 vision projector for [`GEMMA`], with pseudo-random weights
/// (xtask/scripts/gemma3_projector.py).
pub const GEMMA_PROJECTOR: &str = "mmproj-gemma-3-270m-test-F16.gguf";

/// The environment that puts llama.cpp on Mesa's software Vulkan device (lavapipe) from the
/// engine tree: the Vulkan loader looks for drivers on the host, so it is told the tree's, and
/// ggml skips CPU-type Vulkan devices unless told which to use.
pub fn lavapipe() -> Vec<(&'static str, String)> {
    let icd = required(cache_dir().join("engine/tree/usr/share/vulkan/icd.d/lvp_icd.json"));
    vec![("GGML_VK_VISIBLE_DEVICES", "0".into()), ("VK_DRIVER_FILES", icd.display().to_string())]
}

pub fn cache_dir() -> PathBuf {
    match std::env::var_os("HELLAS_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/hellas"),
    }
}

fn required(path: PathBuf) -> PathBuf {
    assert!(path.exists(), "{} is missing: run `cargo xtask engine && cargo xtask models` (or `cargo xtask test`)", path.display());
    path
}

pub fn llama_server() -> PathBuf {
    required(cache_dir().join("engine/bin/llama-server"))
}

pub fn model(file: &str) -> PathBuf {
    required(cache_dir().join("models").join(file))
}

pub fn hellasd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hellasd"));
    cmd.arg("--no-system-config");
    cmd
}

pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports: each listener is held until all are chosen, since the kernel may
/// hand a port it just got back to the next `bind` to port 0.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<_> = (0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// Runs a hellasd command and returns its output, whether it succeeded or not.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running hellasd")
}

pub struct Setup {
    pub ctx: u32,
    pub parallel: u32,
    pub budget_bytes: Option<u64>,
    pub queue_depth: usize,
    pub idle_unload_secs: u64,
    pub models: Vec<(&'static str, &'static str)>,
    pub create_key: bool,
    /// Give the box an owner (`hellasd set-password`) before it starts.
    pub claimed: bool,
    /// `web.catalog`; none means an empty catalog.
    pub catalog: Option<PathBuf>,
    /// Run `hellasd serve` in this network namespace (see [`netns::Lan`]).
    pub netns: Option<String>,
    /// The `[cluster]` table; none turns pooling off.
    pub cluster: Option<String>,
    /// `hub.endpoint`: where `hf.co/…` references resolve.
    pub hub: Option<String>,
    /// `engine.expect_gpu`: unset detects an AMD GPU (there is none here).
    pub expect_gpu: Option<bool>,
    /// `engine.env`, e.g. [`lavapipe`] to run the engines on the software Vulkan device.
    pub engine_env: Vec<(&'static str, String)>,
    /// `engine.extra_args`, e.g. `--chat-template TEMPLATE`.
    pub engine_args: Vec<String>,
    /// `engine.speculative`, e.g. `"ngram"`.
    pub speculative: Option<&'static str>,
    /// `api.metrics_open_to`: networks that may read `/metrics` without a key.
    pub metrics_open_to: Vec<&'static str>,
    /// The API listens on every address, not only on loopback (`url` stays on loopback).
    pub api_on_every_address: bool,
    /// Another program in llama-server's place (`engine.llama_server`); its directory is added
    /// to what engines may read.
    pub engine: Option<PathBuf>,
}

pub const OWNER_PASSWORD: &str = "correct horse battery staple";

impl Default for Setup {
    fn default() -> Self {
        Setup {
            ctx: 2048,
            parallel: 2,
            budget_bytes: None,
            queue_depth: 16,
            idle_unload_secs: 600,
            models: vec![("smollm2:135m-q4_1", SMOLLM)],
            create_key: true,
            claimed: true,
            catalog: None,
            netns: None,
            cluster: None,
            hub: None,
            expect_gpu: None,
            engine_env: Vec::new(),
            engine_args: Vec::new(),
            speculative: None,
            metrics_open_to: Vec::new(),
            api_on_every_address: false,
            engine: None,
        }
    }
}

pub struct Daemon {
    child: Child,
    pub url: String,
    /// The setup pages and dashboard, over HTTPS (the box's self-signed certificate).
    pub web_url: String,
    /// The same over plain HTTP: the setup until the box is claimed, then a redirect.
    pub http_url: String,
    pub key: Option<String>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// The network namespace it serves in, which its clients are made in too.
    pub netns: Option<String>,
    http: reqwest::blocking::Client,
}

impl Daemon {
    pub fn start(setup: Setup) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let [port, web_port, tls_port] = free_ports();
        let config = dir.path().join("hellasd.toml");
        // One engine thread: tests run two at a time on this two-core machine, each with its
        // engines, and llama-server's threads spin while they wait for each other, so more
        // threads than cores can stall an answer for minutes on a busy machine.
        let mut text = format!(
            "state_dir = {state:?}\n[api]\nlisten = \"{ip}:{port}\"\nqueue_depth = {queue}\nmax_body_bytes = 1048576\nmetrics_open_to = {open:?}\n\
             [engine]\nllama_server = {server:?}\nctx = {ctx}\nparallel = {parallel}\nthreads = 1\nidle_unload_secs = {idle}\nstartup_timeout_secs = 120\n",
            state = dir.path().join("state"),
            ip = if setup.api_on_every_address { "0.0.0.0" } else { "127.0.0.1" },
            queue = setup.queue_depth,
            server = setup.engine.clone().unwrap_or_else(llama_server),
            ctx = setup.ctx,
            parallel = setup.parallel,
            idle = setup.idle_unload_secs,
            open = setup.metrics_open_to,
        );
        if let Some(expect) = setup.expect_gpu {
            text.push_str(&format!("expect_gpu = {expect}\n"));
        }
        if let Some(speculative) = setup.speculative {
            text.push_str(&format!("speculative = {speculative:?}\n"));
        }
        if !setup.engine_args.is_empty() {
            let args = toml::Value::Array(setup.engine_args.iter().cloned().map(toml::Value::String).collect());
            text.push_str(&format!("extra_args = {args}\n"));
        }
        if !setup.engine_env.is_empty() {
            text.push_str("[engine.env]\n");
            for (name, value) in &setup.engine_env {
                text.push_str(&format!("{name} = {value:?}\n"));
            }
        }
        text.push_str(&format!(
            "[web]\nlisten = \"127.0.0.1:{web_port}\"\ntls_listen = \"127.0.0.1:{tls_port}\"\nruntime_dir = {:?}\ncatalog = {:?}\n",
            dir.path().join("run"),
            setup.catalog.clone().unwrap_or_else(|| dir.path().join("no-catalog.toml")),
        ));
        match &setup.cluster {
            Some(cluster) => text.push_str(&format!("[cluster]\n{cluster}\n")),
            None => text.push_str("[cluster]\nenabled = false\n"),
        }
        if let Some(endpoint) = &setup.hub {
            text.push_str(&format!("[hub]\nendpoint = {endpoint:?}\n"));
        }
        // The engine tree lives outside /usr, so its engines' sandbox is told to read it.
        let mut read_only = vec![cache_dir().join("engine")];
        read_only.extend(setup.engine.iter().filter_map(|engine| engine.parent()).map(Path::to_path_buf));
        text.push_str(&format!("[sandbox]\nread_only = {read_only:?}\n"));
        if let Some(budget) = setup.budget_bytes {
            text.push_str(&format!("[memory]\nbudget_bytes = {budget}\n"));
        }
        std::fs::write(&config, text).unwrap();
        for (name, file) in &setup.models {
            let out = run(hellasd().arg("--config").arg(&config).args(["models", "add"]).arg(model(file)).args(["--name", name]));
            assert!(out.status.success(), "models add failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        if setup.claimed {
            use std::io::Write;
            let mut child = hellasd().arg("--config").arg(&config).arg("set-password").stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
            writeln!(child.stdin.take().unwrap(), "{OWNER_PASSWORD}").unwrap();
            assert!(child.wait().unwrap().success(), "hellasd set-password failed");
        }
        let key = setup.create_key.then(|| {
            let out = run(hellasd().arg("--config").arg(&config).args(["keys", "create", "test"]));
            assert!(out.status.success(), "keys create failed: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        });
        let child = serve(&config, setup.netns.as_deref(), &dir.path().join("hellasd.log"));
        // No connection is kept between calls, as with a client per call: a test that makes the
        // daemon close a connection (413, a killed engine) must not see the next call fail on it.
        let http = netns::client(setup.netns.as_deref(), |b| b.timeout(Duration::from_secs(300)).pool_max_idle_per_host(0));
        let daemon = Daemon {
            child,
            url: format!("http://127.0.0.1:{port}"),
            web_url: format!("https://127.0.0.1:{tls_port}"),
            http_url: format!("http://127.0.0.1:{web_port}"),
            key,
            dir,
            config,
            netns: setup.netns.clone(),
            http,
        };
        daemon.wait_healthy();
        daemon
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(resp) = self.http.get(format!("{}/health", self.url)).send() {
                if resp.status().is_success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("hellasd did not become healthy; log:\n{}", self.log());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hellasd.log")).unwrap_or_default()
    }

    pub fn is_alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// A hellasd CLI command against this daemon's state.
    pub fn cli(&self) -> Command {
        let mut cmd = hellasd();
        cmd.arg("--config").arg(&self.config);
        cmd
    }

    /// The engine processes this daemon runs (its direct children).
    pub fn engine_pids(&self) -> Vec<u32> {
        children_of(self.child.id())
    }

    /// An HTTP client that reaches this daemon (made in its network namespace).
    pub fn client(&self) -> reqwest::blocking::Client {
        self.http.clone()
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::blocking::Response {
        let mut req = self.client().post(format!("{}{path}", self.url)).json(body);
        if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        }
        req.send().unwrap()
    }

    /// A POST that may fail: the answer, or why none came within `timeout`.
    pub fn try_post(&self, path: &str, body: &serde_json::Value, timeout: Duration) -> reqwest::Result<reqwest::blocking::Response> {
        let mut req = self.client().post(format!("{}{path}", self.url)).json(body).timeout(timeout);
        if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        }
        req.send()
    }

    /// How many requests for `model` on `route` this daemon answered with 200, by its metrics.
    pub fn answered(&self, route: &str, model: &str) -> u64 {
        let metrics = self.get("/metrics").text().unwrap();
        let prefix = format!("hellas_requests_total{{route=\"{route}\",model=\"{model}\",status=\"200\"}} ");
        metrics.lines().find_map(|line| line.strip_prefix(&prefix)).map_or(0, |n| n.parse().unwrap())
    }

    pub fn get(&self, path: &str) -> reqwest::blocking::Response {
        let mut req = self.client().get(format!("{}{path}", self.url));
        if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        }
        req.send().unwrap()
    }
}

/// `hellasd serve` with `config`, in network namespace `netns` if given, its log appended to `log`.
fn serve(config: &Path, netns: Option<&str>, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut serve = match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(env!("CARGO_BIN_EXE_hellasd")).arg("--no-system-config");
            cmd
        }
        None => hellasd(),
    };
    serve
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("HELLASD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting hellasd serve")
}

impl Daemon {
    /// Stops hellasd and starts it again on the same state, as a reboot of the box would.
    pub fn restart(&mut self) {
        self.stop();
        self.child = serve(&self.config, self.netns.as_deref(), &self.dir.path().join("hellasd.log"));
        self.wait_healthy();
    }

    /// The daemon's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn stop(&mut self) {
        // SIGTERM lets hellasd stop its engines; then make sure.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn children_of(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let mut pids: Vec<u32> = std::fs::read_to_string(path).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect();
    // Engines are spawned from runtime worker threads, so look in every thread's list.
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            pids.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    pids.sort();
    pids.dedup();
    pids
}

/// llama-server started directly, with the arguments hellasd gives it, for comparisons.
pub struct DirectEngine {
    child: Child,
    pub url: String,
}

impl DirectEngine {
    pub fn start(model_file: &Path, ctx: u32, parallel: u32) -> DirectEngine {
        DirectEngine::start_with(model_file, ctx, parallel, &[])
    }

    /// Started with `extra` arguments too (`--mmproj FILE`, `--embeddings`).
    pub fn start_with(model_file: &Path, ctx: u32, parallel: u32, extra: &[&std::ffi::OsStr]) -> DirectEngine {
        DirectEngine::start_in(model_file, ctx, parallel, extra, &[])
    }

    /// Started with `extra` arguments and `env` (e.g. [`lavapipe`]).
    pub fn start_in(model_file: &Path, ctx: u32, parallel: u32, extra: &[&std::ffi::OsStr], env: &[(&str, String)]) -> DirectEngine {
        let port = free_port();
        let child = Command::new(llama_server())
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .arg("--model")
            .arg(model_file)
            .args(extra)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--ctx-size", &(ctx * parallel).to_string(), "--parallel", &parallel.to_string()])
            .args(["--load-mode", "none", "--flash-attn", "on", "--no-webui", "--cache-ram", "0", "--cache-type-k", "f16", "--cache-type-v", "f16", "--threads", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting llama-server");
        let engine = DirectEngine { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if reqwest::blocking::get(format!("{}/health", engine.url)).is_ok_and(|r| r.status().is_success()) {
                return engine;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("llama-server did not become healthy");
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::blocking::Response {
        let client = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(300)).build().unwrap();
        client.post(format!("{}{path}", self.url)).json(body).send().unwrap()
    }
}

impl Drop for DirectEngine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser-like client: keeps the session cookie and reads CSRF tokens from forms.
pub struct Visitor {
    pub http: reqwest::blocking::Client,
    pub base: String,
    pub cookie: String,
}

impl Visitor {
    /// A browser on the HTTPS pages that has accepted the box's certificate.
    pub fn new(daemon: &Daemon) -> Visitor {
        Visitor::at(daemon, &daemon.web_url)
    }

    /// A browser on `base`: the daemon's `web_url` or `http_url`.
    pub fn at(daemon: &Daemon, base: &str) -> Visitor {
        let http = netns::client(daemon.netns.as_deref(), |b| {
            b.redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(120)).danger_accept_invalid_certs(true).tls_info(true)
        });
        Visitor { http, base: base.to_string(), cookie: String::new() }
    }

    pub fn remember(&mut self, response: &reqwest::blocking::Response) {
        for value in response.headers().get_all("set-cookie") {
            let value = value.to_str().unwrap();
            if let Some(pair) = value.split(';').next() {
                self.cookie = pair.to_string();
            }
        }
    }

    /// GETs a page and returns its CSRF token.
    pub fn csrf(&mut self, path: &str) -> String {
        let response = self.http.get(format!("{}{path}", self.base)).header("cookie", &self.cookie).send().unwrap();
        self.remember(&response);
        let page = response.text().unwrap();
        let at = page.find("name=\"csrf\" value=\"").unwrap_or_else(|| panic!("no form on {path}: {page}")) + 19;
        page[at..at + 64].to_string()
    }

    pub fn post(&mut self, path: &str, form: &[(&str, &str)]) -> reqwest::blocking::Response {
        let response = self.http.post(format!("{}{path}", self.base)).header("cookie", &self.cookie).form(form).send().unwrap();
        self.remember(&response);
        response
    }

    pub fn get(&mut self, path: &str) -> reqwest::blocking::Response {
        let response = self.http.get(format!("{}{path}", self.base)).header("cookie", &self.cookie).send().unwrap();
        self.remember(&response);
        response
    }

    /// The session cookie it sends (`name=value`).
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// Posts a form with a file (multipart), as a browser's file field sends it.
    pub fn post_file(&mut self, path: &str, fields: &[(&str, &str)], file_field: &str, file: Vec<u8>) -> reqwest::blocking::Response {
        let mut form = reqwest::blocking::multipart::Form::new();
        for (name, value) in fields {
            form = form.text(name.to_string(), value.to_string());
        }
        form = form.part(file_field.to_string(), reqwest::blocking::multipart::Part::bytes(file).file_name("backup.json"));
        let response = self.http.post(format!("{}{path}", self.base)).header("cookie", &self.cookie).multipart(form).send().unwrap();
        self.remember(&response);
        response
    }

    /// Claims an unclaimed box through the setup pages, with the owner's password.
    pub fn claim(daemon: &Daemon) -> Visitor {
        let mut visitor = Visitor::new(daemon);
        let code = std::fs::read_to_string(daemon.dir.path().join("run/claim-code")).expect("the box's claim code");
        let csrf = visitor.csrf("/setup/claim");
        assert_eq!(visitor.post("/setup/claim", &[("csrf", &csrf), ("code", code.trim())]).status(), 303);
        let csrf = visitor.csrf("/setup/owner");
        let owner = visitor.post("/setup/owner", &[("csrf", &csrf), ("password", OWNER_PASSWORD), ("confirm", OWNER_PASSWORD)]);
        assert_eq!(owner.status(), 303, "setting the password: {}", owner.text().unwrap_or_default());
        visitor
    }

    /// Logs in as the owner of a claimed box.
    pub fn login(daemon: &Daemon) -> Visitor {
        let mut visitor = Visitor::new(daemon);
        let csrf = visitor.csrf("/login");
        let response = visitor.post("/login", &[("csrf", &csrf), ("password", OWNER_PASSWORD)]);
        assert_eq!(response.status(), 303, "logging in: {}", response.text().unwrap_or_default());
        visitor
    }
}
