//! Browser sessions, CSRF tokens and the limits on guessing.
//!
//! Every visitor gets a session cookie (`HttpOnly`, `SameSite=Strict`) on the first page; the
//! session carries a CSRF token that every form and every script call must send back, and says
//! how far the visitor got: the claim code was right, or they are the owner. Sessions live in
//! memory, so a restart logs everyone out, which is the safe way round.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;

pub const COOKIE: &str = "hellas_session";
/// An owner's session ends after this long without a request.
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the least recently used go first, so a flood of visitors costs
/// bounded memory.
const MAX_SESSIONS: usize = 4096;

#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub id: String,
    pub csrf: String,
    /// The claim code was entered right in this session.
    pub claim_ok: bool,
    pub owner: bool,
    /// Its cookie was set over HTTPS (and is `Secure`).
    pub https: bool,
    last_seen: Instant,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// The session a cookie names, or a new one (the second value says it is new), made for a
    /// request over HTTPS or not.
    pub fn resume_or_start(&self, cookie: Option<&str>, https: bool) -> (Session, bool) {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap();
        if let Some(session) = cookie.and_then(|id| map.get_mut(id)) {
            if now.duration_since(session.last_seen) < IDLE {
                session.last_seen = now;
                return (session.clone(), false);
            }
        }
        if let Some(id) = cookie {
            map.remove(id);
        }
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.values().min_by_key(|s| s.last_seen).map(|s| s.id.clone()) {
                map.remove(&oldest);
            }
        }
        let session = Session { id: token(), csrf: token(), claim_ok: false, owner: false, https, last_seen: now };
        map.insert(session.id.clone(), session.clone());
        (session, true)
    }

    /// Applies a change to a live session.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut Session)) {
        if let Some(session) = self.map.lock().unwrap().get_mut(id) {
            change(session);
        }
    }

    /// After a login or claim: a new id, so a session id planted before cannot ride along
    /// (session fixation), carrying the state over.
    pub fn renew(&self, old: &Session, change: impl FnOnce(&mut Session)) -> Session {
        let mut map = self.map.lock().unwrap();
        map.remove(&old.id);
        let mut session = Session { id: token(), csrf: token(), last_seen: Instant::now(), ..old.clone() };
        change(&mut session);
        map.insert(session.id.clone(), session.clone());
        session
    }

    pub fn end(&self, id: &str) {
        self.map.lock().unwrap().remove(id);
    }

    /// Logs every owner session out (a new password, a factory reset).
    pub fn end_all(&self) {
        self.map.lock().unwrap().clear();
    }
}

/// The session's cookie: `Secure` once it is set over HTTPS, so the browser never sends it in
/// the clear again.
pub fn set_cookie(session: &Session) -> String {
    let secure = if session.https { "; Secure" } else { "" };
    format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}", session.id, IDLE.as_secs())
}

pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').filter_map(|part| part.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

fn token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Constant-time equality for secrets.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts failed guesses (claim codes, passwords) per client address and in total, and refuses
/// further tries while either is over its limit within the window.
pub struct Limiter {
    window: Duration,
    per_client: usize,
    total: usize,
    failures: Mutex<HashMap<Option<IpAddr>, VecDeque<Instant>>>,
}

impl Limiter {
    pub fn new(window: Duration, per_client: usize, total: usize) -> Limiter {
        Limiter { window, per_client, total, failures: Mutex::new(HashMap::new()) }
    }

    /// `Err(wait)` while `client` may not try again.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap();
        let mut wait = Duration::ZERO;
        for (key, limit) in [(Some(client), self.per_client), (None, self.total)] {
            if let Some(times) = failures.get_mut(&key) {
                while times.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
                    times.pop_front();
                }
                if times.len() >= limit {
                    wait = wait.max(self.window - now.duration_since(times[times.len() - limit]));
                }
            }
        }
        failures.retain(|_, times| !times.is_empty());
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait.max(Duration::from_secs(1)))
        }
    }

    pub fn failed(&self, client: IpAddr) {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap();
        for key in [Some(client), None] {
            failures.entry(key).or_default().push_back(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_resume_renew_and_end() {
        let sessions = Sessions::default();
        let (first, new) = sessions.resume_or_start(None, false);
        assert!(new);
        let (again, new) = sessions.resume_or_start(Some(&first.id), false);
        assert!(!new);
        assert_eq!(again.csrf, first.csrf);
        let owner = sessions.renew(&first, |s| s.owner = true);
        assert_ne!(owner.id, first.id);
        assert!(sessions.resume_or_start(Some(&first.id), false).1, "the old id is gone");
        assert!(sessions.resume_or_start(Some(&owner.id), false).0.owner);
        sessions.end(&owner.id);
        assert!(!sessions.resume_or_start(Some(&owner.id), false).0.owner);
        assert!(set_cookie(&owner).contains("HttpOnly; SameSite=Strict"));
        assert_eq!(cookie_value("a=1; hellas_session=xyz; b=2", COOKIE), Some("xyz"));
    }

    #[test]
    fn limiter_counts_per_client_and_in_total() {
        let limiter = Limiter::new(Duration::from_secs(60), 3, 5);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        for _ in 0..3 {
            assert!(limiter.check(a).is_ok());
            limiter.failed(a);
        }
        assert!(limiter.check(a).is_err());
        assert!(limiter.check(b).is_ok());
        limiter.failed(b);
        limiter.failed(b);
        assert!(limiter.check(c).is_err(), "five failures in all stop everyone");
    }
}
