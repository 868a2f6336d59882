//! The web pages on port 80: the first-boot setup (claim, owner, settings, model, API key) and
//! afterwards the owner's dashboard. Server-rendered with handlebars; the only script shows
//! download progress, copies text and runs the "try it" box.
//!
//! Before the box is claimed only the setup pages answer; every API route answers 403. Forms
//! carry a per-session CSRF token, requests from another origin are refused, and wrong claim
//! codes and passwords are rate-limited.

mod backup;
mod dashboard;
mod extract;
mod keys;
mod login;
mod models;
mod page;
mod pool;
mod settings;
mod setup;
pub mod tls;

use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::app::AppState;
use crate::owner::session;

pub const ZONEINFO: &str = "/usr/share/zoneinfo";

/// Which listener a request came in on.
#[derive(Clone, Copy)]
pub(super) struct Https(pub bool);

/// The pages, for the plain HTTP listener (`https` false) or the HTTPS one.
pub fn router(state: Arc<AppState>, https: bool) -> Router {
    Router::new()
        .route("/", get(setup::home))
        .route("/setup/claim", get(setup::claim_page).post(setup::claim))
        .route("/setup/owner", get(setup::owner_page).post(setup::set_owner))
        .route("/setup/key", get(keys::key_form))
        .route("/settings", get(settings::settings_page).post(settings::save_settings))
        .route("/models", get(models::models_page))
        .route("/models/remove", post(models::remove_model))
        .route("/models/bench", post(models::bench_model))
        .route("/downloads", post(models::start_pull))
        .route("/downloads/{sha256}", get(models::download_page))
        .route("/downloads/{sha256}/events", get(models::download_events))
        .route("/downloads/{sha256}/cancel", post(models::cancel_download))
        .route("/downloads/{sha256}/retry", post(models::retry_download))
        .route("/keys", post(keys::create_key))
        .route("/keys/new", get(keys::key_form))
        .route("/keys/revoke", post(keys::revoke_key))
        .route("/dashboard", get(dashboard::dashboard))
        .route("/metrics", get(dashboard::metrics))
        .route("/backup", get(backup::download))
        .route("/diagnostics", get(backup::diagnostics))
        // A backup is a few KiB; one with many models and keys may pass the forms' limit.
        .route("/setup/restore", post(backup::restore).layer(axum::extract::DefaultBodyLimit::max(1 << 20)))
        .route("/update", get(dashboard::update_status).post(dashboard::request_update))
        .route("/install", post(dashboard::request_install))
        .route("/drain", post(dashboard::drain))
        .route("/pool", get(pool::pool_page))
        .route("/pool.json", get(pool::pool_json))
        .route("/pool/code", post(pool::new_code))
        .route("/pool/join", post(pool::join))
        .route("/pool/unpair", post(pool::unpair))
        .route("/pool/update", post(pool::update_fleet))
        .route("/pool/reimage", post(pool::reimage))
        .route("/pool/wipe-request", post(pool::answer_wipe))
        .route("/login", get(login::login_page).post(login::login))
        .route("/logout", post(login::logout))
        .route("/reset", get(login::reset_page).post(login::reset))
        .route("/assets/style.css", get(|| async { asset("text/css", include_str!("assets/style.css")) }))
        .route("/assets/app.js", get(|| async { asset("text/javascript", include_str!("assets/app.js")) }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such page") })
        .layer(axum::extract::DefaultBodyLimit::max(64 << 10))
        .route_layer(middleware::from_fn_with_state(state.clone(), with_session))
        .route_layer(axum::Extension(Https(https)))
        // Every request, the pages that do not exist included (a phone's connectivity check).
        .layer(middleware::from_fn(captive_redirect))
        .with_state(state)
}

/// On the setup hotspot every name is the box (`network::captive_dns`): a request from there
/// for a name other than the box's (`*.local`) or an address, such as a phone's connectivity
/// check, is sent to the setup page, which is how a phone learns it must "sign in to the
/// network" and opens the page.
async fn captive_redirect(request: Request, next: Next) -> Response {
    use crate::network::watch::{HOTSPOT_ADDRESS, HOTSPOT_NETWORK};
    let peer = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let on_hotspot = peer.is_some_and(|peer| HOTSPOT_NETWORK.parse::<ipnet::IpNet>().is_ok_and(|n| n.contains(&peer)));
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let name = host.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok()).map_or(host, |(name, _)| name);
    let elsewhere = !name.is_empty() && name.parse::<std::net::IpAddr>().is_err() && !name.starts_with('[') && !name.ends_with(".local");
    if on_hotspot && elsewhere {
        return (StatusCode::FOUND, [(header::LOCATION, format!("http://{HOTSPOT_ADDRESS}/"))]).into_response();
    }
    next.run(request).await
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// Gives every request its session (starting one when needed), refuses state changes from
/// other origins, and sets the security headers.
async fn with_session(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let https = request.extensions().get::<Https>().is_some_and(|h| h.0);
    if !https && state.owner.is_claimed().unwrap_or(true) {
        return to_https(&state, &request);
    }
    // The claim is a form posted over plain HTTP whose answer leads to HTTPS: a browser holds
    // that redirect to the form's CSP, so the HTTPS origin is named there.
    let form_action = if https { "'self'".to_string() } else { format!("'self' {}", https_origin(&state, request.headers())) };
    if request.method() == Method::POST && !same_origin(&request) {
        return (StatusCode::FORBIDDEN, "cross-origin form posts are refused").into_response();
    }
    let cookie = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| session::cookie_value(v, session::COOKIE).map(str::to_string));
    let (mut session, mut new) = state.sessions.resume_or_start(cookie.as_deref(), https);
    if https && !session.https {
        // A session begun over plain HTTP (the claim) gets a new id and a `Secure` cookie on
        // its first HTTPS request; the id that travelled in the clear is dropped.
        session = state.sessions.renew(&session, |s| s.https = true);
        new = true;
    }
    request.extensions_mut().insert(session.clone());
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if new && !headers.contains_key(header::SET_COOKIE) {
        if let Ok(value) = HeaderValue::from_str(&session::set_cookie(&session)) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // "no-referrer" would make browsers send `Origin: null` with forms, which `same_origin` refuses.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        // connect-src: the "try it" box calls the API on its own port.
        HeaderValue::from_str(&format!("default-src 'self'; connect-src *; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action {form_action}"))
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'; form-action 'self'")),
    );
    response
}

/// The same page over HTTPS: a claimed box is reached only that way. Temporary (307), so a
/// browser does not remember it past a factory reset, and with the method and body kept. No
/// HSTS: with a self-signed certificate it would make the browser's warning impossible to pass.
fn to_https(state: &AppState, request: &Request) -> Response {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    match HeaderValue::from_str(&format!("{}{path}", https_origin(state, request.headers()))) {
        Ok(location) => (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, "this box is reached over HTTPS now").into_response(),
    }
}

/// `https://host[:port]` for the host the request named and the HTTPS listener's port.
pub(super) fn https_origin(state: &AppState, headers: &axum::http::HeaderMap) -> String {
    // Only a host name or address goes into the redirect and the CSP, never other characters.
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)))
        .unwrap_or("hellas.local");
    // The host without its port; an IPv6 literal keeps its brackets.
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.contains(']') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    match state.config.web.tls_listen.port() {
        443 => format!("https://{name}"),
        port => format!("https://{name}:{port}"),
    }
}

/// A POST whose `Origin` (when the browser sends one) is this host.
fn same_origin(request: &Request) -> bool {
    let Some(origin) = request.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    let host = request.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    origin.split_once("://").is_some_and(|(_, rest)| rest == host)
}

/// Runs slow work (argon2 takes a good fraction of a second) off the async runtime.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.context("a background task failed")?
}
