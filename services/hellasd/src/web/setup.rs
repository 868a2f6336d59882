//! The first steps of the setup: the claim code, then the owner's password.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::Extension;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::{blocking, https_origin, Https};
use super::extract::{csrf_forms, Posted, Visitor};
use super::page::{claimed, guard, internal, redirect, redirect_with, too_many, with_retry_after, Page, St};
use crate::app::AppState;
use crate::owner::{self, claim};

pub async fn home(State(state): St, Visitor(session): Visitor) -> Response {
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

/// The claim form, with the certificate's fingerprint to check the HTTPS connection against.
fn claim_form(state: &AppState) -> Page {
    let seed_refused = crate::seed::refusal(&state.config.web.runtime_dir);
    Page::new("claim", "Claim this box", json!({ "fingerprint": state.certificate.fingerprint(), "seed_refused": seed_refused })).step(0)
}

pub async fn claim_page(State(state): St, Visitor(session): Visitor) -> Response {
    if guard!(claimed(&state)) {
        return redirect("/login");
    }
    claim_form(&state).render(&session)
}

pub async fn claim(State(state): St, ConnectInfo(peer): ConnectInfo<SocketAddr>, Posted(session, form): Posted<ClaimForm>) -> Response {
    if guard!(claimed(&state)) {
        return redirect("/login");
    }
    let page = || claim_form(&state);
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
pub struct PasswordForm {
    csrf: String,
    password: String,
    confirm: String,
}

fn owner_form() -> Page {
    Page::new("owner", "Set the owner's password", json!({ "min": owner::MIN_PASSWORD, "max": owner::MAX_PASSWORD })).step(1)
}

pub async fn owner_page(State(state): St, Visitor(session): Visitor) -> Response {
    if guard!(claimed(&state)) {
        return redirect("/login");
    }
    if !session.claim_ok {
        return redirect("/setup/claim");
    }
    owner_form().render(&session)
}

pub async fn set_owner(State(state): St, Extension(Https(https)): Extension<Https>, headers: HeaderMap, Posted(session, form): Posted<PasswordForm>) -> Response {
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
    if !https {
        // A claimed box answers over HTTPS only, and a session begun in the clear does not
        // cross over: the owner logs in there, after checking the certificate.
        state.sessions.end(&session.id);
        let url = format!("{}/login", https_origin(&state, &headers));
        return Page::new("claimed", "This box is yours", json!({ "url": url, "fingerprint": state.certificate.fingerprint() })).render(&session);
    }
    let session = state.sessions.renew(&session, |s| {
        s.owner = true;
        s.claim_ok = false;
    });
    redirect_with("/settings", &session)
}

csrf_forms!(ClaimForm, PasswordForm);
