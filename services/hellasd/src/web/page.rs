//! What every page shares: the templates, the page frame with the setup's steps, redirects, and
//! `guard!`, which returns early with the response a failed check gives.
#![allow(clippy::result_large_err)]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Result;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use handlebars::Handlebars;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::csrf_forms;
pub(super) use super::ZONEINFO;
use crate::owner::session::{self, Session};
use crate::app::AppState;

pub(super) type St = State<Arc<AppState>>;

const STEPS: [&str; 5] = ["Claim", "Password", "Settings", "Model", "API key"];
const TEMPLATES: [(&str, &str); 15] = [
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
    ("restored", include_str!("templates/restored.hbs")),
    ("claimed", include_str!("templates/claimed.hbs")),
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
pub(super) fn redirect_with(to: &str, session: &Session) -> Response {
    let mut response = redirect(to);
    if let Ok(value) = HeaderValue::from_str(&session::set_cookie(session)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

pub(super) fn claimed(state: &AppState) -> Result<bool, Response> {
    state.owner.is_claimed().map_err(internal)
}

pub(super) fn setup_done(state: &AppState) -> Result<bool, Response> {
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

pub(super) fn too_many(wait: Duration) -> String {
    format!("Too many wrong tries: wait {} seconds, then try again.", wait.as_secs().max(1))
}

pub(super) fn with_retry_after(mut response: Response, wait: Duration) -> Response {
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
    response
}




















/// A form with nothing but its CSRF token.
#[derive(Deserialize)]
pub struct CsrfOnly {
    csrf: String,
}

csrf_forms!(CsrfOnly);




























#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        templates().unwrap();
    }
}
