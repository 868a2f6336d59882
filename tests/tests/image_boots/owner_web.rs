//! The owner's browser, reduced to what the test needs: one session cookie, and the CSRF token
//! of the last page seen, which every form POST carries as a browser's form would.

use std::time::Duration;

pub struct OwnerWeb {
    http: reqwest::blocking::Client,
    base: String,
    cookie: String,
    csrf: String,
    /// Over HTTPS: the certificate's SHA-256 (`AB:CD:…`) read off the box's console, which every
    /// answer's certificate must have, as an owner checks it when the browser warns.
    pinned: Option<String>,
}

/// What a page answered: status, redirect target and body.
pub type Visit = (u16, Option<String>, String);

impl OwnerWeb {
    pub fn new(base: String) -> OwnerWeb {
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        OwnerWeb { http, base, cookie: String::new(), csrf: String::new(), pinned: None }
    }

    /// The owner over HTTPS, trusting only the certificate with this fingerprint.
    pub fn pinned(base: String, fingerprint: &str) -> OwnerWeb {
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none())
            // No authority vouches for the box's certificate: the fingerprint check below does.
            .danger_accept_invalid_certs(true)
            .tls_info(true)
            .build()
            .unwrap();
        OwnerWeb { http, base, cookie: String::new(), csrf: String::new(), pinned: Some(fingerprint.to_string()) }
    }

    pub fn get(&mut self, path: &str) -> Visit {
        self.visit("GET", path, &[])
    }

    pub fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Visit {
        self.visit("POST", path, form)
    }

    fn visit(&mut self, method: &str, path: &str, form: &[(&str, &str)]) -> Visit {
        self.try_visit(method, path, form).unwrap_or_else(|err| panic!("{method} {path}: {err}"))
    }

    fn try_visit(&mut self, method: &str, path: &str, form: &[(&str, &str)]) -> Result<Visit, reqwest::Error> {
        let mut form: Vec<(&str, &str)> = form.to_vec();
        form.push(("csrf", &self.csrf));
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(&url),
            _ => self.http.post(&url).form(&form),
        };
        let response = request.header("cookie", &self.cookie).send()?;
        if let Some(pinned) = &self.pinned {
            use sha2::{Digest, Sha256};
            let der = response.extensions().get::<reqwest::tls::TlsInfo>().and_then(|i| i.peer_certificate()).expect("the box's certificate");
            let presented = Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
            assert_eq!(&presented, pinned, "{method} {path}: the box presents another certificate than its console names");
        }
        if let Some(set) = response.headers().get("set-cookie") {
            self.cookie = set.to_str().unwrap().split(';').next().unwrap().to_string();
        }
        let status = response.status().as_u16();
        let location = response.headers().get("location").map(|l| l.to_str().unwrap().to_string());
        let page = response.text().unwrap_or_default();
        if let Some(at) = page.find("name=\"csrf\" value=\"") {
            self.csrf = page[at + 19..at + 19 + 64].to_string();
        }
        Ok((status, location, page))
    }

    /// Logs in again, as after a reboot (sessions live in the daemon's memory).
    pub fn log_in(&mut self, password: &str) {
        self.get("/login");
        let (_, location, page) = self.post("/login", &[("password", password)]);
        assert!(location.is_some(), "logging in failed: {page}");
    }

    /// Logs in when the box answers; false when it does not (yet).
    pub fn try_log_in(&mut self, password: &str) -> bool {
        self.try_visit("GET", "/login", &[]).is_ok() && self.try_visit("POST", "/login", &[("password", password)]).is_ok_and(|(_, location, _)| location.is_some())
    }
}
