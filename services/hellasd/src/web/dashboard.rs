//! The owner's dashboard: models, memory, keys, tuning, updates and the install to a disk.

use std::collections::VecDeque;

use anyhow::Result;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hellas_model::plan::format_bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{csrf_forms, Owner, OwnerForm};
use super::page::{guard, internal, redirect, Page, St};
use crate::app::AppState;
use crate::memory_budget::BudgetSource;

pub async fn dashboard(State(state): St, Owner(session): Owner) -> Response {
    let file = guard!(state.owner.load().map_err(internal));
    let loaded = state.supervisor.loaded();
    let models: Vec<Value> = guard!(state.library.list().map_err(internal))
        .into_iter()
        .map(|m| {
            let engine = loaded.iter().find(|e| e.model == m.name);
            let mut kind = state.supervisor.model_info(&m).map(|info| crate::library::capabilities(&m, &info).join(", ")).unwrap_or_else(|e| format!("unreadable: {e:#}"));
            if let Some(draft) = &m.draft {
                kind.push_str(&format!("; drafts with {draft}"));
            }
            json!({
                "name": m.name, "size": format_bytes(m.size), "kind": kind,
                "state": engine.map(|e| format!("{:?}", e.status()).to_lowercase()).unwrap_or_else(|| "not loaded".into()),
                "memory": engine.map(|e| format_bytes(e.plan.local_bytes())).unwrap_or_default(),
                "placement": engine.map(|e| e.placement().describe()).unwrap_or_default(),
                "problem": engine.and_then(|e| state.supervisor.placement_problem(e)),
            })
        })
        .collect();
    let used: u64 = state.supervisor.resident_bytes() + state.cluster.as_ref().map_or(0, |c| c.held_bytes());
    let downloads: Vec<Value> = state
        .downloads
        .all()
        .iter()
        .map(|job| json!({ "sha256": job.pull.id(), "name": job.pull.title, "state": describe_progress(&job.progress()) }))
        .collect();
    let keys = guard!(state.keys.list().map_err(internal));
    let recent = recent_rows(&state.recent.lock().unwrap());
    let tuning = crate::tune::status(state.config.memory.os_reserve_bytes);
    let update = guard!(update_view(&state).map_err(internal));
    let bench: Vec<Value> = state
        .bench
        .list()
        .iter()
        .map(|r| {
            json!({
                "model": r.model, "prefill": format!("{:.1}", r.prefill_per_sec), "decode": format!("{:.1}", r.decode_per_sec),
                "ceiling": format!("{:.0}% of {}", r.ceiling_fraction * 100.0, crate::engine::bench::format_rate(r.bandwidth.bytes_per_sec)),
                "bandwidth_source": r.bandwidth.source, "placement": r.placement, "engine": r.engine,
                "at": humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.at)).to_string(),
            })
        })
        .collect();
    let data = json!({
        "memory": memory_bar(&state, used), "models": models, "downloads": downloads, "keys": keys, "bench": bench,
        "recent": recent, "ssh_key_count": file.settings.ssh_keys.len(), "settings": file.settings, "tuning": tuning, "update": update,
        "wipe_request": state.cluster.as_ref().and_then(|c| c.wipe_request()),
        "draining": state.admission.is_draining().then(|| state.drain_status()),
    });
    Page::new("dashboard", format!("{}.local", file.settings.box_name), data).render(&session)
}

#[derive(Deserialize)]
pub struct DrainForm {
    csrf: String,
    drain: bool,
}

/// Starts or ends draining from the dashboard, as `hellasd drain` does on the box.
pub async fn drain(State(state): St, OwnerForm(_session, form): OwnerForm<DrainForm>) -> Response {
    state.admission.set_draining(form.drain);
    redirect("/dashboard")
}

/// `/metrics` for the owner's browser session, as the API serves it to API keys.
pub async fn metrics(State(state): St, Owner(_session): Owner) -> Response {
    ([(axum::http::header::CONTENT_TYPE, crate::metrics::Metrics::CONTENT_TYPE)], state.metrics_text().await).into_response()
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
pub async fn request_update(State(state): St, OwnerForm(session, form): OwnerForm<UpdateForm>) -> Response {
    use crate::update::{Request, UpdateFiles};
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
pub async fn request_install(State(state): St, OwnerForm(session, form): OwnerForm<InstallForm>) -> Response {
    use crate::update::{Request, UpdateFiles};
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
pub async fn update_status(State(state): St, Owner(_session): Owner) -> Response {
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

csrf_forms!(UpdateForm, InstallForm, DrainForm);
