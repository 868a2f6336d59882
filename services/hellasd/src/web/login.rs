//! Logging in and out, and the factory reset.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::blocking;
use super::extract::{csrf_forms, Owner, OwnerForm, Posted, Visitor};
use super::page::{claimed, guard, internal, redirect, redirect_with, too_many, with_retry_after, CsrfOnly, Page, St};
use crate::app::factory_reset;

#[derive(Deserialize)]
pub struct LoginForm {
    csrf: String,
    password: String,
}

pub async fn login_page(State(state): St, Visitor(session): Visitor) -> Response {
    if !guard!(claimed(&state)) {
        return redirect("/");
    }
    Page::new("login", "Log in", json!({})).render(&session)
}

pub async fn login(State(state): St, ConnectInfo(peer): ConnectInfo<SocketAddr>, Posted(session, form): Posted<LoginForm>) -> Response {
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

pub async fn logout(State(state): St, Posted(session, _form): Posted<CsrfOnly>) -> Response {
    state.sessions.end(&session.id);
    let mut response = redirect("/");
    response.headers_mut().append(header::SET_COOKIE, HeaderValue::from_static("hellas_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"));
    response
}

pub async fn reset_page(State(state): St, Owner(session): Owner) -> Response {
    let file = guard!(state.owner.load().map_err(internal));
    Page::new("reset", "Factory reset", json!({ "box_name": file.settings.box_name })).render(&session)
}

#[derive(Deserialize)]
pub struct ResetForm {
    csrf: String,
    confirm: String,
}

pub async fn reset(State(state): St, OwnerForm(session, form): OwnerForm<ResetForm>) -> Response {
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

csrf_forms!(LoginForm, ResetForm);
