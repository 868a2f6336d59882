//! The box's settings: name, time zone, SSH keys, update channel.


use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use hellas_contract::{box_name, ssh_keys};
use serde::Deserialize;
use serde_json::json;

use super::extract::{csrf_forms, Owner, OwnerForm};
use super::page::{guard, internal, redirect, setup_done, Page, St, ZONEINFO};
use crate::owner::{self, Settings};

#[derive(Deserialize)]
pub struct SettingsForm {
    csrf: String,
    box_name: String,
    timezone: String,
    #[serde(default)]
    ssh_keys: String,
    #[serde(default)]
    update_channel: String,
    /// A checkbox: present ("on") when ticked.
    #[serde(default)]
    peers_may_wipe: Option<String>,
}

fn settings_form(settings: &Settings, ssh_text: &str, done: bool) -> Page {
    let zones = owner::timezones(std::path::Path::new(ZONEINFO));
    let page = Page::new("settings", "Box settings", json!({ "settings": settings, "zones": zones, "ssh_keys": ssh_text, "restore": !done }));
    if done {
        page
    } else {
        page.step(2)
    }
}

pub async fn settings_page(State(state): St, Owner(session): Owner) -> Response {
    let file = guard!(state.owner.load().map_err(internal));
    settings_form(&file.settings, &file.settings.ssh_keys.join("\n"), file.setup_done).render(&session)
}

pub async fn save_settings(State(state): St, OwnerForm(session, form): OwnerForm<SettingsForm>) -> Response {
    let done = guard!(setup_done(&state));
    let box_name = form.box_name.trim().to_string();
    let timezone = form.timezone.trim().to_string();
    let checked = box_name::check(&box_name)
        .and_then(|()| owner::check_timezone(&timezone, std::path::Path::new(ZONEINFO)))
        .and_then(|()| owner::check_update_channel(form.update_channel.trim()))
        .and_then(|()| ssh_keys::parse(&form.ssh_keys));
    let settings = Settings { box_name, timezone, ssh_keys: Vec::new(), update_channel: form.update_channel.trim().to_string(), peers_may_wipe: form.peers_may_wipe.is_some() };
    let ssh_keys = match checked {
        Ok(keys) => keys,
        Err(problem) => return settings_form(&settings, &form.ssh_keys, done).error(StatusCode::BAD_REQUEST, problem).render(&session),
    };
    let settings = Settings { ssh_keys, ..settings };
    guard!(state.owner.update_settings(settings).map_err(internal));
    redirect(if done { "/dashboard" } else { "/models" })
}

csrf_forms!(SettingsForm);
