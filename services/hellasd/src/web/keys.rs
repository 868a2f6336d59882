//! API keys: the form, the key shown once, revoking.


use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::extract::{csrf_forms, Owner, OwnerForm};
use super::page::{guard, internal, redirect, setup_done, Page, St};

fn key_form_page(done: bool) -> Page {
    let page = Page::new("key_form", "Create an API key", json!({ "default_name": if done { "" } else { "first key" } }));
    if done {
        page
    } else {
        page.step(4)
    }
}

pub async fn key_form(State(state): St, Owner(session): Owner) -> Response {
    let done = guard!(setup_done(&state));
    key_form_page(done).render(&session)
}

#[derive(Deserialize)]
pub struct KeyForm {
    csrf: String,
    name: String,
}

pub async fn create_key(State(state): St, headers: HeaderMap, OwnerForm(session, form): OwnerForm<KeyForm>) -> Response {
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

pub async fn revoke_key(State(state): St, OwnerForm(session, form): OwnerForm<RevokeForm>) -> Response {
    match state.keys.revoke(&form.id) {
        Ok(_) => redirect("/dashboard"),
        Err(e) => Page::new("message", "Not revoked", json!({ "back": "/dashboard" })).error(StatusCode::NOT_FOUND, format!("{e:#}")).render(&session),
    }
}

csrf_forms!(KeyForm, RevokeForm);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_base_follows_the_host() {
        assert_eq!(api_base("hellas.local", 8080), "http://hellas.local:8080/v1");
        assert_eq!(api_base("127.0.0.1:41234", 8080), "http://127.0.0.1:8080/v1");
        assert_eq!(api_base("[::1]:80", 8080), "http://[::1]:8080/v1");
    }
}
