//! The page handlers: one function per page or form.
//!
//! Guards return the response to send instead (`Err(Response)`), which `guard!` returns early.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Result;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use handlebars::Handlebars;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{blocking, ZONEINFO};
use crate::app::factory_reset;
use crate::catalog::{self, CatalogEntry, Fit};
use crate::owner::session::{self, Session};
use crate::owner::{self, claim, Settings};
use crate::app::AppState;
use crate::memory_budget::BudgetSource;
use hellas_model::plan::format_bytes;

pub(super) type St = State<Arc<AppState>>;
pub(super) type Ses = Extension<Session>;

const STEPS: [&str; 5] = ["Claim", "Password", "Settings", "Model", "API key"];
const TEMPLATES: [(&str, &str); 13] = [
    ("layout", include_str!("templates/layout.hbs")),
    ("claim", include_str!("templates/claim.hbs")),
    ("owner", include_str!("templates/owner.hbs")),
    ("settings", include_str!("templates/settings.hbs")),
    ("models", include_str!("templates/models.hbs")),
    ("download", include_str!("templates/download.hbs")),
    ("key_form", include_str!("templates/key_form.hbs")),
    ("key", include_str!("templates/key.hbs")),
    ("login", include_str!("templates/login.hbs")),
    ("reset", include_str!("templates/reset.hbs")),
    ("dashboard", include_str!("templates/dashboard.hbs")),
    ("message", include_str!("templates/message.hbs")),
    ("pool", include_str!("templates/pool.hbs")),
];

/// The pages, parsed once; `templates_parse` below checks they parse.
static PAGES: LazyLock<Handlebars<'static>> = LazyLock::new(|| templates().expect("the page templates are checked by a test"));

pub(super) fn templates() -> Result<Handlebars<'static>> {
    let mut pages = Handlebars::new();
    for (name, text) in TEMPLATES {
        pages.register_template_string(name, text).map_err(|e| anyhow::anyhow!("template {name}: {e}"))?;
    }
    Ok(pages)
}

/// A page to render: its template, title, where it is in the setup, and its own data.
pub(super) struct Page {
    template: &'static str,
    title: String,
    step: Option<usize>,
    data: Value,
    error: Option<String>,
    status: StatusCode,
}

impl Page {
    pub(super) fn new(template: &'static str, title: impl Into<String>, data: Value) -> Page {
        Page { template, title: title.into(), step: None, data, error: None, status: StatusCode::OK }
    }

    pub(super) fn step(mut self, step: usize) -> Page {
        self.step = Some(step);
        self
    }

    pub(super) fn error(mut self, status: StatusCode, error: impl Into<String>) -> Page {
        self.status = status;
        self.error = Some(error.into());
        self
    }

    pub(super) fn render(self, session: &Session) -> Response {
        let mut data = self.data;
        let steps: Vec<Value> = STEPS
            .iter()
            .enumerate()
            .map(|(i, label)| json!({ "label": label, "done": self.step.is_some_and(|s| i < s), "current": self.step == Some(i) }))
            .collect();
        let common = json!({
            "title": self.title, "csrf": session.csrf, "owner": session.owner, "error": self.error,
            "step": self.step.is_some(), "steps": steps,
        });
        if let (Value::Object(data), Value::Object(common)) = (&mut data, common) {
            data.extend(common);
        }
        match PAGES.render(self.template, &data) {
            Ok(html) => (self.status, [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], html).into_response(),
            Err(e) => internal(anyhow::anyhow!("rendering {}: {e}", self.template)),
        }
    }
}

pub(super) fn internal(e: anyhow::Error) -> Response {
    tracing::error!("{e:#}");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("Something went wrong on the box: {e:#}")).into_response()
}

pub(super) fn redirect(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// A redirect that also moves the browser to a renewed session.
fn redirect_with(to: &str, session: &Session) -> Response {
    let mut response = redirect(to);
    if let Ok(value) = HeaderValue::from_str(&session::set_cookie(session)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

pub(super) fn check_csrf(session: &Session, token: &str) -> Result<(), Response> {
    if session::same(&session.csrf, token) {
        Ok(())
    } else {
        Err((StatusCode::FORBIDDEN, "the form is out of date or was sent from elsewhere (CSRF token missing or wrong): reload the page and try again").into_response())
    }
}

/// Owner pages: the owner's session, else the login page.
pub(super) fn require_owner(session: &Session) -> Result<(), Response> {
    if session.owner {
        Ok(())
    } else {
        Err(redirect("/login"))
    }
}

fn claimed(state: &AppState) -> Result<bool, Response> {
    state.owner.is_claimed().map_err(internal)
}

fn setup_done(state: &AppState) -> Result<bool, Response> {
    state.owner.load().map(|f| f.setup_done).map_err(internal)
}

macro_rules! guard {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(response) => return response,
        }
    };
}
pub(super) use guard;

fn too_many(wait: Duration) -> String {
    format!("Too many wrong tries: wait {} seconds, then try again.", wait.as_secs().max(1))
}

fn with_retry_after(mut response: Response, wait: Duration) -> Response {
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
    response
}

pub async fn home(State(state): St, Extension(session): Ses) -> Response {
    let file = guard!(state.owner.load().map_err(internal));
    if file.owner.is_none() {
        return redirect(if session.claim_ok { "/setup/owner" } else { "/setup/claim" });
    }
    if !session.owner {
        return redirect("/login");
    }
    redirect(if file.setup_done { "/dashboard" } else { "/settings" })
}

#[derive(Deserialize)]
pub struct ClaimForm {
    csrf: String,
    code: String,
}

pub async fn claim_page(State(state): St, Extension(session): Ses) -> Response {
    if guard!(claimed(&state)) {
        return redirect("/login");
    }
    Page::new("claim", "Claim this box", json!({})).step(0).render(&session)
}

pub async fn claim(State(state): St, Extension(session): Ses, ConnectInfo(peer): ConnectInfo<SocketAddr>, Form(form): Form<ClaimForm>) -> Response {
    guard!(check_csrf(&session, &form.csrf));
    if guard!(claimed(&state)) {
        return redirect("/login");
    }
    let page = || Page::new("claim", "Claim this box", json!({})).step(0);
    if let Err(wait) = state.guesses.check(peer.ip()) {
        return with_retry_after(page().error(StatusCode::TOO_MANY_REQUESTS, too_many(wait)).render(&session), wait);
    }
    let code = guard!(state.claim_code().map_err(internal));
    if !claim::matches(&form.code, &code) {
        state.guesses.failed(peer.ip());
        tracing::warn!(client = %peer.ip(), "a wrong claim code was entered");
        return page().error(StatusCode::FORBIDDEN, "That is not this box's claim code. Check the box's screen and try again.").render(&session);
    }
    let session = state.sessions.renew(&session, |s| s.claim_ok = true);
    redirect_with("/setup/owner", &session)
}

#[derive(Deserialize)]
pub struct OwnerForm {
    csrf: String,
    password: String,
    confirm: String,
}

fn owner_form() -> Page {
    Page::new("owner", "Set the owner's password", json!({ "min": owner::MIN_PASSWORD, "max": owner::MAX_PASSWORD })).step(1)
}

pub async fn owner_page(State(state): St, Extension(session): Ses) -> Response {
    if guard!(claimed(&state)) {
        return redirect("/login");
    }
    if !session.claim_ok {
        return redirect("/setup/claim");
    }
    owner_form().render(&session)
}

pub async fn set_owner(State(state): St, Extension(session): Ses, Form(form): Form<OwnerForm>) -> Response {
    guard!(check_csrf(&session, &form.csrf));
    if guard!(claimed(&state)) {
        return redirect("/login");
    }
    if !session.claim_ok {
        return redirect("/setup/claim");
    }
    if form.password != form.confirm {
        return owner_form().error(StatusCode::BAD_REQUEST, "The two passwords differ.").render(&session);
    }
    if let Err(rule) = owner::check_password(&form.password) {
        return owner_form().error(StatusCode::BAD_REQUEST, format!("That password does not work: {rule}.")).render(&session);
    }
    let web = state.clone();
    if let Err(e) = blocking(move || web.owner.claim(&form.password)).await {
        return owner_form().error(StatusCode::CONFLICT, format!("{e:#}")).render(&session);
    }
    let name = guard!(state.owner.load().map_err(internal)).settings.box_name;
    if let Err(e) = state.claim.claimed(&name) {
        tracing::warn!("updating the console's claim text: {e:#}");
    }
    tracing::info!("the box was claimed");
    let session = state.sessions.renew(&session, |s| {
        s.owner = true;
        s.claim_ok = false;
    });
    redirect_with("/settings", &session)
}

#[derive(Deserialize)]
pub struct SettingsForm {
    csrf: String,
    box_name: String,
    timezone: String,
    #[serde(default)]
    ssh_keys: String,
    #[serde(default)]
    update_channel: String,
}

fn settings_form(settings: &Settings, ssh_text: &str, done: bool) -> Page {
    let zones = owner::timezones(std::path::Path::new(ZONEINFO));
    let page = Page::new("settings", "Box settings", json!({ "settings": settings, "zones": zones, "ssh_keys": ssh_text }));
    if done {
        page
    } else {
        page.step(2)
    }
}

pub async fn settings_page(State(state): St, Extension(session): Ses) -> Response {
    guard!(require_owner(&session));
    let file = guard!(state.owner.load().map_err(internal));
    settings_form(&file.settings, &file.settings.ssh_keys.join("\n"), file.setup_done).render(&session)
}

pub async fn save_settings(State(state): St, Extension(session): Ses, Form(form): Form<SettingsForm>) -> Response {
    guard!(require_owner(&session));
    guard!(check_csrf(&session, &form.csrf));
    let done = guard!(setup_done(&state));
    let box_name = form.box_name.trim().to_string();
    let timezone = form.timezone.trim().to_string();
    let checked = owner::check_box_name(&box_name)
        .and_then(|()| owner::check_timezone(&timezone, std::path::Path::new(ZONEINFO)))
        .and_then(|()| owner::check_update_channel(form.update_channel.trim()))
        .and_then(|()| owner::parse_ssh_keys(&form.ssh_keys));
    let settings = Settings { box_name, timezone, ssh_keys: Vec::new(), update_channel: form.update_channel.trim().to_string() };
    let ssh_keys = match checked {
        Ok(keys) => keys,
        Err(problem) => return settings_form(&settings, &form.ssh_keys, done).error(StatusCode::BAD_REQUEST, problem).render(&session),
    };
    let settings = Settings { ssh_keys, ..settings };
    guard!(state.owner.update_settings(settings).map_err(internal));
    redirect(if done { "/dashboard" } else { "/models" })
}

/// The model's fit on this box, fetching its header when needed.
async fn entry_fit(state: &AppState, entry: &CatalogEntry) -> Fit {
    if state.library.get(&entry.name).ok().flatten().is_some_and(|m| m.sha256 == entry.sha256) {
        return Fit::Installed;
    }
    let request = state.supervisor.request();
    let budget = request.budget;
    match tokio::time::timeout(Duration::from_secs(20), state.headers.info(entry)).await {
        Ok(Ok(info)) => catalog::fit(&info, &request, |local| state.supervisor.split_plan(&info, local)),
        Ok(Err(e)) => Fit::Unknown { reason: format!("{e:#}"), weights_fit: entry.size <= budget },
        Err(_) => Fit::Unknown { reason: "the model's source did not answer in time".into(), weights_fit: entry.size <= budget },
    }
}

fn fit_kind(fit: &Fit) -> &'static str {
    match fit {
        Fit::Installed => "installed",
        Fit::Fits { .. } => "fits",
        Fit::FitsSmallerContext { .. } => "fits_smaller_context",
        Fit::FitsAcross { .. } => "fits_across",
        Fit::DoesNotFit { .. } => "does_not_fit",
        Fit::Unknown { .. } => "unknown",
    }
}

pub async fn models_page(State(state): St, Extension(session): Ses) -> Response {
    guard!(require_owner(&session));
    let done = guard!(setup_done(&state));
    let fits = futures_util::future::join_all(state.catalog.entries.iter().map(|e| entry_fit(&state, e))).await;
    let models: Vec<Value> = state
        .catalog
        .entries
        .iter()
        .zip(&fits)
        .map(|(entry, fit)| {
            json!({
                "name": entry.name, "title": entry.title, "description": entry.description, "sha256": entry.sha256,
                "size": format_bytes(entry.size), "parameters": entry.parameters, "architecture": entry.architecture,
                "licence": entry.licence, "context": entry.context, "verdict": fit.describe(), "fit_kind": fit_kind(fit),
                "downloadable": fit.downloadable(),
            })
        })
        .collect();
    let data = json!({
        "models": models, "setup": !done,
        "budget": format_bytes(state.supervisor.budget()), "budget_source": state.budget.describe(),
    });
    let page = Page::new("models", "Pick a model", data);
    if done { page } else { page.step(3) }.render(&session)
}

#[derive(Deserialize)]
pub struct DownloadForm {
    csrf: String,
    sha256: String,
}

pub async fn start_download(State(state): St, Extension(session): Ses, Form(form): Form<DownloadForm>) -> Response {
    guard!(require_owner(&session));
    guard!(check_csrf(&session, &form.csrf));
    let Some(entry) = state.catalog.get(&form.sha256).cloned() else {
        return (StatusCode::NOT_FOUND, "no such model in the catalog").into_response();
    };
    let fit = entry_fit(&state, &entry).await;
    if !fit.downloadable() && !matches!(fit, Fit::Installed) {
        let message = format!("{} is not downloaded: {}", entry.title, fit.describe());
        return Page::new("message", "Not downloaded", json!({ "back": "/models" })).error(StatusCode::CONFLICT, message).render(&session);
    }
    state.downloads.start(&entry);
    redirect(&format!("/downloads/{}", entry.sha256))
}

pub async fn download_page(State(state): St, Extension(session): Ses, Path(sha256): Path<String>) -> Response {
    guard!(require_owner(&session));
    let Some(entry) = state.catalog.get(&sha256).cloned() else {
        return (StatusCode::NOT_FOUND, "no such model in the catalog").into_response();
    };
    let next = if guard!(setup_done(&state)) { "/dashboard" } else { "/setup/key" };
    let data = json!({ "sha256": entry.sha256, "name": entry.title, "size": format_bytes(entry.size), "next": next });
    Page::new("download", format!("Downloading {}", entry.title), data).render(&session)
}

/// Server-sent events: the download's progress, one JSON object per change, until it ends.
pub async fn download_events(State(state): St, Extension(session): Ses, Path(sha256): Path<String>) -> Response {
    guard!(require_owner(&session));
    let Some(job) = state.downloads.get(&sha256) else {
        return (StatusCode::NOT_FOUND, "no download of that model").into_response();
    };
    let receiver = job.watch();
    let stream = futures_util::stream::unfold((receiver, true, false), |(mut rx, first, ended)| async move {
        if ended {
            return None;
        }
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let progress = rx.borrow_and_update().clone();
        let event = format!("data: {}\n\n", serde_json::to_string(&progress).unwrap_or_default());
        Some((Ok::<_, std::io::Error>(Bytes::from(event)), (rx, false, progress.finished())))
    });
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (headers, Body::from_stream(stream)).into_response()
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn cancel_download(State(state): St, Extension(session): Ses, Path(sha256): Path<String>, Form(form): Form<CsrfForm>) -> Response {
    guard!(require_owner(&session));
    guard!(check_csrf(&session, &form.csrf));
    state.downloads.cancel(&sha256);
    redirect(&format!("/downloads/{sha256}"))
}

fn key_form_page(done: bool) -> Page {
    let page = Page::new("key_form", "Create an API key", json!({ "default_name": if done { "" } else { "first key" } }));
    if done {
        page
    } else {
        page.step(4)
    }
}

pub async fn key_form(State(state): St, Extension(session): Ses) -> Response {
    guard!(require_owner(&session));
    let done = guard!(setup_done(&state));
    key_form_page(done).render(&session)
}

#[derive(Deserialize)]
pub struct KeyForm {
    csrf: String,
    name: String,
}

pub async fn create_key(State(state): St, Extension(session): Ses, headers: HeaderMap, Form(form): Form<KeyForm>) -> Response {
    guard!(require_owner(&session));
    guard!(check_csrf(&session, &form.csrf));
    let done = guard!(setup_done(&state));
    let (record, secret) = match state.keys.create(form.name.trim()) {
        Ok(created) => created,
        Err(e) => return key_form_page(done).error(StatusCode::BAD_REQUEST, format!("{e:#}")).render(&session),
    };
    if !done {
        guard!(state.owner.finish_setup().map_err(internal));
    }
    let models: Vec<String> = guard!(state.library.list().map_err(internal)).into_iter().map(|m| m.name).collect();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("hellas.local");
    let data = json!({
        "key_name": record.name, "secret": secret, "base_url": api_base(host, state.config.api.listen.port()),
        "model": models.first().cloned().unwrap_or_else(|| "MODEL".into()), "models": models,
    });
    Page::new("key", "Your API key", data).render(&session)
}

/// The API's base URL as this browser reaches the box: its host name with the API's port.
fn api_base(host: &str, port: u16) -> String {
    let name = match host.strip_prefix('[') {
        Some(rest) => format!("[{}]", rest.split(']').next().unwrap_or_default()),
        None => host.split(':').next().unwrap_or(host).to_string(),
    };
    format!("http://{name}:{port}/v1")
}

#[derive(Deserialize)]
pub struct RevokeForm {
    csrf: String,
    id: String,
}

pub async fn revoke_key(State(state): St, Extension(session): Ses, Form(form): Form<RevokeForm>) -> Response {
    guard!(require_owner(&session));
    guard!(check_csrf(&session, &form.csrf));
    match state.keys.revoke(&form.id) {
        Ok(_) => redirect("/dashboard"),
        Err(e) => Page::new("message", "Not revoked", json!({ "back": "/dashboard" })).error(StatusCode::NOT_FOUND, format!("{e:#}")).render(&session),
    }
}

#[derive(Deserialize)]
pub struct RemoveForm {
    csrf: String,
    name: String,
}

pub async fn remove_model(State(state): St, Extension(session): Ses, Form(form): Form<RemoveForm>) -> Response {
    guard!(require_owner(&session));
    guard!(check_csrf(&session, &form.csrf));
    state.supervisor.unload(&form.name).await;
    match state.library.remove(&form.name) {
        Ok(_) => redirect("/dashboard"),
        Err(e) => Page::new("message", "Not removed", json!({ "back": "/dashboard" })).error(StatusCode::NOT_FOUND, format!("{e:#}")).render(&session),
    }
}

pub async fn dashboard(State(state): St, Extension(session): Ses) -> Response {
    guard!(require_owner(&session));
    let file = guard!(state.owner.load().map_err(internal));
    let loaded = state.supervisor.loaded();
    let models: Vec<Value> = guard!(state.library.list().map_err(internal))
        .into_iter()
        .map(|m| {
            let engine = loaded.iter().find(|e| e.model == m.name);
            json!({
                "name": m.name, "size": format_bytes(m.size),
                "state": engine.map(|e| format!("{:?}", e.status()).to_lowercase()).unwrap_or_else(|| "not loaded".into()),
                "memory": engine.map(|e| format_bytes(e.plan.local_bytes())).unwrap_or_default(),
            })
        })
        .collect();
    let used: u64 = state.supervisor.resident_bytes() + state.cluster.as_ref().map_or(0, |c| c.held_bytes());
    let downloads: Vec<Value> = state
        .downloads
        .all()
        .iter()
        .map(|job| json!({ "sha256": job.entry.sha256, "name": job.entry.title, "state": describe_progress(&job.progress()) }))
        .collect();
    let keys = guard!(state.keys.list().map_err(internal));
    let recent = recent_rows(&state.recent.lock().unwrap());
    let tuning = {
        let probe = crate::tune::Probe::read(std::path::Path::new("/"));
        let options = crate::tune::Options { os_reserve: state.config.memory.os_reserve_bytes, iommu_off: false };
        let decision = crate::tune::decide(&probe, &options);
        json!({ "state": decision.summary(), "warnings": decision.warnings, "advice": decision.bios_advice })
    };
    let update = guard!(update_view(&state).map_err(internal));
    let data = json!({
        "memory": memory_bar(&state, used), "models": models, "downloads": downloads, "keys": keys,
        "recent": recent, "ssh_key_count": file.settings.ssh_keys.len(), "settings": file.settings, "tuning": tuning, "update": update,
    });
    Page::new("dashboard", format!("{}.local", file.settings.box_name), data).render(&session)
}

/// The dashboard's update section: what runs, what the channel offers, what is happening.
fn update_view(state: &AppState) -> Result<Value> {
    use crate::update::{self, Phase};
    let status = update::UpdateFiles::new(&state.config.state_dir).status()?;
    let booted = update::booted_version(std::path::Path::new("/")).unwrap_or_else(|_| status.booted.clone());
    let phase = match &status.phase {
        Phase::Idle => String::new(),
        Phase::Checking => "checking the channel…".into(),
        Phase::Installing { version } => format!("installing {version}…"),
        Phase::Rebooting { version } => format!("{version} is installed; rebooting into it…"),
        Phase::CopyingToDisk { disk } => format!("installing to {disk}…"),
        Phase::Failed { action, error } => format!("{action} failed: {error}"),
    };
    Ok(json!({
        "booted": booted, "channel": update::channel(&state.config)?, "offered": status.offered, "phase": phase,
        "busy": matches!(status.phase, Phase::Checking | Phase::Installing { .. } | Phase::Rebooting { .. } | Phase::CopyingToDisk { .. }),
        "disks": crate::update::install::candidates().unwrap_or_default().iter().map(|d| json!({ "device": d.device, "label": format!("{} {} ({})", d.device, d.model, format_bytes(d.bytes)) })).collect::<Vec<_>>(),
        "failed": matches!(status.phase, Phase::Failed { .. }), "last_result": status.last_result,
        "rejected": status.rejected,
    }))
}

#[derive(Deserialize)]
pub struct UpdateForm {
    csrf: String,
    #[serde(default)]
    version: Option<String>,
}

/// "Check for updates" and "Update to …": both hand the request to the root updater.
pub async fn request_update(State(state): St, Extension(session): Ses, Form(form): Form<UpdateForm>) -> Response {
    use crate::update::{Request, UpdateFiles};
    guard!(require_owner(&session));
    guard!(check_csrf(&session, &form.csrf));
    let request = match form.version {
        Some(version) => {
            let status = guard!(UpdateFiles::new(&state.config.state_dir).status().map_err(internal));
            if let Some(why) = status.not_on_offer(&version) {
                return Page::new("message", "Not updated", json!({ "back": "/dashboard" })).error(StatusCode::CONFLICT, why).render(&session);
            }
            Request::Apply { version }
        }
        None => Request::Check,
    };
    guard!(UpdateFiles::new(&state.config.state_dir).request(&request).map_err(internal));
    tracing::info!("update requested: {request:?}");
    redirect("/dashboard")
}

#[derive(Deserialize)]
pub struct InstallForm {
    csrf: String,
    disk: String,
    #[serde(default)]
    keep_data: Option<String>,
    confirm: String,
}

/// "Install to this disk": the disk's name typed back, then the request to the root updater.
pub async fn request_install(State(state): St, Extension(session): Ses, Form(form): Form<InstallForm>) -> Response {
    use crate::update::{Request, UpdateFiles};
    guard!(require_owner(&session));
    guard!(check_csrf(&session, &form.csrf));
    let refuse = |problem: String| Page::new("message", "Not installed", json!({ "back": "/dashboard" })).error(StatusCode::BAD_REQUEST, problem).render(&session);
    if form.confirm.trim() != form.disk {
        return refuse(format!("type {} to confirm: everything on it is lost", form.disk));
    }
    if !crate::update::install::candidates().unwrap_or_default().iter().any(|d| d.device == form.disk) {
        return refuse(format!("{} is not a disk this box can install to", form.disk));
    }
    let request = Request::Install { disk: form.disk, keep_data: form.keep_data.is_some() };
    guard!(UpdateFiles::new(&state.config.state_dir).request(&request).map_err(internal));
    tracing::info!("install requested: {request:?}");
    redirect("/dashboard")
}

/// The update status as JSON, for the owner's scripts and the dashboard's polling.
pub async fn update_status(State(state): St, Extension(session): Ses) -> Response {
    guard!(require_owner(&session));
    match crate::update::UpdateFiles::new(&state.config.state_dir).status() {
        Ok(status) => axum::Json(status).into_response(),
        Err(e) => internal(e),
    }
}

fn describe_progress(progress: &crate::catalog::Progress) -> String {
    use crate::catalog::Progress as P;
    match progress {
        P::Starting => "starting".into(),
        P::Downloading { done, total, .. } => format!("{:.0}% of {}", 100.0 * *done as f64 / *total as f64, format_bytes(*total)),
        P::Retrying { done, .. } => format!("resuming from {}", format_bytes(*done)),
        P::Verifying { .. } => "verifying".into(),
        P::Done { .. } => "done".into(),
        P::Failed { error } => format!("failed: {error}"),
        P::Cancelled => "cancelled".into(),
    }
}

/// The memory bar: what models use, what is free for them, and the OS reserve, over all the
/// memory the GPU (or the CPU) can use.
fn memory_bar(state: &AppState, used: u64) -> Value {
    let budget = &state.budget;
    let total = budget.total.max(1);
    let free = budget.usable.saturating_sub(used);
    let part = |kind: &str, bytes: u64, label: String| json!({ "kind": kind, "percent": format!("{:.2}", 100.0 * bytes as f64 / total as f64), "label": label });
    let mut parts = vec![
        part("used", used, format!("models {}", format_bytes(used))),
        part("free", free, format!("free {}", format_bytes(free))),
    ];
    if budget.os_reserve > 0 {
        parts.push(part("reserve", budget.os_reserve, format!("OS reserve {}", format_bytes(budget.os_reserve))));
    }
    let source = match &budget.source {
        BudgetSource::AmdGpu { gtt_total, vram_total, .. } => format!(
            "GPU memory: carve-out (BIOS) {} + GTT {} = {}",
            format_bytes(*vram_total),
            format_bytes(*gtt_total),
            format_bytes(budget.total)
        ),
        _ => budget.describe(),
    };
    let label = format!("{} of {} used by models", format_bytes(used), format_bytes(budget.usable));
    json!({ "parts": parts, "source": source, "label": label })
}

fn recent_rows(recent: &VecDeque<crate::app::RecentRequest>) -> Vec<Value> {
    recent
        .iter()
        .rev()
        .map(|r| {
            let secs = r.duration.as_secs_f64();
            json!({
                "model": r.model, "tokens": r.generated,
                "rate": if secs > 0.0 { format!("{:.1}", r.generated as f64 / secs) } else { "-".into() },
                "ago": format!("{} s", r.at.elapsed().as_secs()),
            })
        })
        .collect()
}

#[derive(Deserialize)]
pub struct LoginForm {
    csrf: String,
    password: String,
}

pub async fn login_page(State(state): St, Extension(session): Ses) -> Response {
    if !guard!(claimed(&state)) {
        return redirect("/");
    }
    Page::new("login", "Log in", json!({})).render(&session)
}

pub async fn login(State(state): St, Extension(session): Ses, ConnectInfo(peer): ConnectInfo<SocketAddr>, Form(form): Form<LoginForm>) -> Response {
    guard!(check_csrf(&session, &form.csrf));
    let page = || Page::new("login", "Log in", json!({}));
    if let Err(wait) = state.guesses.check(peer.ip()) {
        return with_retry_after(page().error(StatusCode::TOO_MANY_REQUESTS, too_many(wait)).render(&session), wait);
    }
    let web = state.clone();
    let right = guard!(blocking(move || web.owner.verify_password(&form.password)).await.map_err(internal));
    if !right {
        state.guesses.failed(peer.ip());
        tracing::warn!(client = %peer.ip(), "a wrong owner password was entered");
        return page().error(StatusCode::FORBIDDEN, "Wrong password.").render(&session);
    }
    let session = state.sessions.renew(&session, |s| s.owner = true);
    redirect_with("/", &session)
}

pub async fn logout(State(state): St, Extension(session): Ses, Form(form): Form<CsrfForm>) -> Response {
    guard!(check_csrf(&session, &form.csrf));
    state.sessions.end(&session.id);
    let mut response = redirect("/");
    response.headers_mut().append(header::SET_COOKIE, HeaderValue::from_static("hellas_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"));
    response
}

pub async fn reset_page(State(state): St, Extension(session): Ses) -> Response {
    guard!(require_owner(&session));
    let file = guard!(state.owner.load().map_err(internal));
    Page::new("reset", "Factory reset", json!({ "box_name": file.settings.box_name })).render(&session)
}

#[derive(Deserialize)]
pub struct ResetForm {
    csrf: String,
    confirm: String,
}

pub async fn reset(State(state): St, Extension(session): Ses, Form(form): Form<ResetForm>) -> Response {
    guard!(require_owner(&session));
    guard!(check_csrf(&session, &form.csrf));
    let file = guard!(state.owner.load().map_err(internal));
    if form.confirm.trim() != file.settings.box_name {
        return Page::new("reset", "Factory reset", json!({ "box_name": file.settings.box_name }))
            .error(StatusCode::BAD_REQUEST, format!("Type the box name, {}, exactly to confirm.", file.settings.box_name))
            .render(&session);
    }
    tracing::warn!("factory reset requested by the owner");
    guard!(factory_reset(&state).await.map_err(internal));
    let mut response = redirect("/");
    response.headers_mut().append(header::SET_COOKIE, HeaderValue::from_static("hellas_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_the_api_base_follows_the_host() {
        templates().unwrap();
        assert_eq!(api_base("hellas.local", 8080), "http://hellas.local:8080/v1");
        assert_eq!(api_base("127.0.0.1:41234", 8080), "http://127.0.0.1:8080/v1");
        assert_eq!(api_base("[::1]:80", 8080), "http://[::1]:8080/v1");
    }
}
