//! Picking a catalog model (the best quantisation that fits, with the planner's verdict) or
//! any model on Hugging Face, its download, and removing models.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hellas_model::plan::format_bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{csrf_forms, Owner, OwnerForm};
use super::page::{guard, redirect, setup_done, CsrfOnly, Page, St};
use crate::catalog::Fit;

fn fit_kind(fit: &Fit) -> &'static str {
    match fit {
        Fit::Installed => "installed",
        Fit::Fits { .. } => "fits",
        Fit::FitsSmallerContext { .. } => "fits_smaller_context",
        Fit::FitsAcross { .. } => "fits_across",
        Fit::DoesNotFit { .. } => "does_not_fit",
        Fit::Unknown { .. } => "unknown",
        Fit::Unavailable { .. } => "unavailable",
    }
}

pub async fn models_page(State(state): St, Owner(session): Owner) -> Response {
    let done = guard!(setup_done(&state));
    let offers = futures_util::future::join_all(state.catalog.entries.iter().map(|e| state.offer(e))).await;
    let models: Vec<Value> = state
        .catalog
        .entries
        .iter()
        .zip(&offers)
        .map(|(entry, offer)| {
            let chosen = &offer.chosen;
            let files: Vec<&str> = chosen.pull.iter().flat_map(|p| p.parts.iter().chain(&p.projector)).map(|f| f.file_name()).collect();
            let others: Vec<String> = offer.others.iter().map(|c| format!("{}: {}", c.quant, c.fit.describe())).collect();
            json!({
                "entry": entry.name, "name": entry.library_name(&chosen.quant), "title": entry.title, "description": entry.description,
                "repository": entry.repository, "quant": chosen.quant, "files": files,
                "size": chosen.pull.as_ref().map(|p| format_bytes(p.size())).unwrap_or_default(),
                "vision": chosen.pull.as_ref().is_ok_and(|p| p.projector.is_some()),
                "parameters": entry.parameters, "architecture": entry.architecture,
                "licence": entry.licence, "context": entry.context, "verdict": chosen.fit.describe(), "fit_kind": fit_kind(&chosen.fit),
                "downloadable": offer.downloadable(), "others": others,
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
pub struct PullForm {
    csrf: String,
    /// A catalog model's library name (`smollm2:135m-q4_1`) or a Hugging Face reference.
    reference: String,
}

/// "Download" for a catalog model or a model named by its Hugging Face reference: the fit
/// verdict, from its header, decides before anything is downloaded.
pub async fn start_pull(State(state): St, OwnerForm(session, form): OwnerForm<PullForm>) -> Response {
    let refuse = |status, message: String| Page::new("message", "Not downloaded", json!({ "back": "/models" })).error(status, message).render(&session);
    let pull = match state.pull_for(form.reference.trim()).await {
        Ok(pull) => pull,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("{e:#}")),
    };
    let fit = state.fit(&pull).await;
    if !fit.allows_pull() {
        return refuse(StatusCode::CONFLICT, format!("{} is not downloaded: {}", pull.title, fit.describe()));
    }
    let id = pull.id().to_string();
    state.downloads.start(pull);
    redirect(&format!("/downloads/{id}"))
}

pub async fn download_page(State(state): St, Owner(session): Owner, Path(sha256): Path<String>) -> Response {
    let Some(pull) = state.downloads.get(&sha256).map(|job| job.pull.clone()) else {
        return (StatusCode::NOT_FOUND, "no download of that model").into_response();
    };
    let next = if guard!(setup_done(&state)) { "/dashboard" } else { "/setup/key" };
    let data = json!({ "sha256": sha256, "name": pull.title, "size": format_bytes(pull.size()), "next": next });
    Page::new("download", format!("Downloading {}", pull.title), data).render(&session)
}

/// Server-sent events: the download's progress, one JSON object per change, until it ends.
pub async fn download_events(State(state): St, Owner(_session): Owner, Path(sha256): Path<String>) -> Response {
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

/// "Try again" after a failed or cancelled download: the same files, from where they stopped.
pub async fn retry_download(State(state): St, Path(sha256): Path<String>, OwnerForm(_session, _form): OwnerForm<CsrfOnly>) -> Response {
    let Some(pull) = state.downloads.get(&sha256).map(|job| job.pull.clone()) else {
        return (StatusCode::NOT_FOUND, "no download of that model").into_response();
    };
    state.downloads.start(pull);
    redirect(&format!("/downloads/{sha256}"))
}

pub async fn cancel_download(State(state): St, Path(sha256): Path<String>, OwnerForm(_session, _form): OwnerForm<CsrfOnly>) -> Response {
    state.downloads.cancel(&sha256);
    redirect(&format!("/downloads/{sha256}"))
}

/// A form naming one library model (remove it, measure it).
#[derive(Deserialize)]
pub struct ModelForm {
    csrf: String,
    name: String,
}

pub async fn remove_model(State(state): St, OwnerForm(session, form): OwnerForm<ModelForm>) -> Response {
    if let Ok(Some(refusal)) = state.library.removal_refusal(&form.name) {
        return Page::new("message", "Not removed", json!({ "back": "/dashboard" })).error(StatusCode::CONFLICT, refusal).render(&session);
    }
    state.supervisor.unload(&form.name).await;
    match state.library.remove(&form.name) {
        Ok(_) => redirect("/dashboard"),
        Err(e) => Page::new("message", "Not removed", json!({ "back": "/dashboard" })).error(StatusCode::NOT_FOUND, format!("{e:#}")).render(&session),
    }
}

/// "Measure" on the dashboard: the model's speed on this box, kept for the dashboard.
pub async fn bench_model(State(state): St, OwnerForm(session, form): OwnerForm<ModelForm>) -> Response {
    match state.bench(&form.name).await {
        Ok(_) => redirect("/dashboard"),
        Err(e) => Page::new("message", "Not measured", json!({ "back": "/dashboard" })).error(StatusCode::CONFLICT, e.to_string()).render(&session),
    }
}

csrf_forms!(PullForm, ModelForm);
