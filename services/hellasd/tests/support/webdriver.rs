//! A small W3C WebDriver client for the browser tests: Debian's chromedriver driving Debian's
//! chromium, headless. Clicks and typing are real input events in the browser.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::blocking::Client,
}

pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    /// Starts chromedriver and a headless chromium session.
    pub fn start(log: &Path) -> Browser {
        for tool in ["chromium", "chromedriver"] {
            assert!(
                Command::new("sh").args(["-c", &format!("command -v {tool}")]).stdout(Stdio::null()).status().unwrap().success(),
                "{tool} is missing: run `cargo xtask deps` (or `cargo xtask test`), which installs chromium and chromium-driver"
            );
        }
        let port = super::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let http = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(120)).build().unwrap();
        let mut browser = Browser { driver, base: format!("http://127.0.0.1:{port}"), http };
        let deadline = Instant::now() + Duration::from_secs(30);
        while browser.http.get(format!("{}/status", browser.base)).send().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start; see {}", log.display());
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1100", "--no-proxy-server", "--ignore-certificate-errors"],
            },
        }}});
        let session = browser.call("POST", "/session", caps);
        let id = session["sessionId"].as_str().expect("a WebDriver session id").to_string();
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body),
        };
        let response = request.send().unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status();
        let value: Value = response.json().unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        assert!(status.is_success(), "WebDriver {method} {path}: {status} {}", value["value"]);
        value.get("value").cloned().map(|v| if path == "/session" { json!({ "sessionId": value["value"]["sessionId"] }) } else { v }).unwrap()
    }

    fn script(&self, code: &str) -> Value {
        self.call("POST", "/execute/sync", json!({ "script": code, "args": [] }))
    }

    /// Clicks what leads to another page (a form's button, a link) and waits until that page
    /// has loaded, so nothing is read from the page being left.
    pub fn follow(&self, css: &str) {
        self.script("window.__hellasLeft = true;");
        self.find(css).click();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let url = format!("{}/execute/sync", self.base);
            let script = json!({ "script": "return window.__hellasLeft === undefined && document.readyState === 'complete';", "args": [] });
            let loaded = self.http.post(url).json(&script).send().ok().and_then(|r| r.json::<Value>().ok());
            if loaded.is_some_and(|v| v["value"] == true) {
                return;
            }
            assert!(Instant::now() < deadline, "clicking {css} did not lead to a new page");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    pub fn url(&self) -> String {
        self.call("GET", "/url", Value::Null).as_str().unwrap_or_default().to_string()
    }

    pub fn find(&self, css: &str) -> Element<'_> {
        self.try_find(css).unwrap_or_else(|| panic!("no element {css} on {}\n{}", self.url(), self.text("body")))
    }

    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        let url = format!("{}/elements", self.base);
        let found: Value = self.http.post(url).json(&json!({ "using": "css selector", "value": css })).send().ok()?.json().ok()?;
        let id = found["value"].as_array()?.first()?[ELEMENT].as_str()?.to_string();
        Some(Element { browser: self, id })
    }

    /// The first element matching `css` whose text holds `text`.
    pub fn try_find_text(&self, css: &str, text: &str) -> Option<Element<'_>> {
        let url = format!("{}/elements", self.base);
        let found: Value = self.http.post(url).json(&json!({ "using": "css selector", "value": css })).send().ok()?.json().ok()?;
        let ids = found["value"].as_array()?.iter().filter_map(|e| e[ELEMENT].as_str());
        ids.map(|id| Element { browser: self, id: id.to_string() }).find(|e| e.text().contains(text))
    }

    pub fn text(&self, css: &str) -> String {
        self.try_find(css).map(|e| e.text()).unwrap_or_default()
    }

    /// Waits until `css` exists and its text satisfies `ready`; returns the text.
    pub fn wait_text(&self, css: &str, timeout: Duration, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text(css);
            if ready(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "waited {timeout:?} for {css} on {}; it says {text:?}", self.url());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let png = self.call("GET", "/screenshot", Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// The page's cookies, as the browser holds them.
    pub fn cookies(&self) -> Vec<Value> {
        self.call("GET", "/cookie", Value::Null).as_array().cloned().unwrap_or_default()
    }
}

impl Element<'_> {
    pub fn click(&self) {
        self.browser.call("POST", &format!("/element/{}/click", self.id), json!({}));
    }

    pub fn clear(&self) -> &Self {
        self.browser.call("POST", &format!("/element/{}/clear", self.id), json!({}));
        self
    }

    pub fn type_text(&self, text: &str) -> &Self {
        self.browser.call("POST", &format!("/element/{}/value", self.id), json!({ "text": text }));
        self
    }

    pub fn text(&self) -> String {
        self.browser.call("GET", &format!("/element/{}/text", self.id), Value::Null).as_str().unwrap_or_default().to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.base).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
