//! The box's settings: name, time zone, SSH keys, update channel, a Wi-Fi network to join and a
//! static wired address.


use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use hellas_contract::network::{StaticWired, Wifi};
use hellas_contract::{box_name, ssh_keys};
use serde::Deserialize;
use serde_json::json;

use super::extract::{csrf_forms, Owner, OwnerForm};
use super::page::{guard, internal, redirect, setup_done, Page, St, ZONEINFO};
use crate::app::AppState;
use crate::network;
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
    /// A Wi-Fi network to join; empty: none.
    #[serde(default)]
    wifi_ssid: String,
    #[serde(default)]
    wifi_passphrase: String,
    #[serde(default)]
    wired_address: String,
    #[serde(default)]
    wired_gateway: String,
    /// Name servers, separated by spaces or commas.
    #[serde(default)]
    wired_dns: String,
    /// A checkbox: present ("on") when ticked.
    #[serde(default)]
    peers_may_wipe: Option<String>,
}

fn settings_form(state: &AppState, settings: &Settings, ssh_text: &str, done: bool) -> Page {
    let zones = owner::timezones(std::path::Path::new(ZONEINFO));
    // The Wi-Fi fields only on a box with a radio, with how joining the last network went.
    let wifi = json!({
        "radio": !network::iwd::wifi_interfaces(std::path::Path::new("/sys/class/net")).is_empty(),
        "last": network::read_status(&state.config.web.runtime_dir).wifi,
    });
    let page = Page::new("settings", "Box settings", json!({ "settings": settings, "zones": zones, "ssh_keys": ssh_text, "restore": !done, "wifi": wifi }));
    if done {
        page
    } else {
        page.step(2)
    }
}

pub async fn settings_page(State(state): St, Owner(session): Owner) -> Response {
    let file = guard!(state.owner.load().map_err(internal));
    settings_form(&state, &file.settings, &file.settings.ssh_keys.join("\n"), file.setup_done).render(&session)
}

pub async fn save_settings(State(state): St, OwnerForm(session, form): OwnerForm<SettingsForm>) -> Response {
    let done = guard!(setup_done(&state));
    let box_name = form.box_name.trim().to_string();
    let timezone = form.timezone.trim().to_string();
    let static_wired = (!form.wired_address.trim().is_empty()).then(|| StaticWired {
        address: form.wired_address.trim().to_string(),
        gateway: Some(form.wired_gateway.trim().to_string()).filter(|g| !g.is_empty()),
        dns: form.wired_dns.split([' ', ',']).filter(|d| !d.is_empty()).map(str::to_string).collect(),
    });
    let wifi = (!form.wifi_ssid.trim().is_empty()).then(|| Wifi {
        ssid: form.wifi_ssid.trim().to_string(),
        passphrase: Some(form.wifi_passphrase.clone()).filter(|p| !p.is_empty()),
    });
    let checked = box_name::check(&box_name)
        .and_then(|()| wifi.as_ref().map_or(Ok(()), |w| w.check().map_err(|e| format!("Wi-Fi: {e}"))))
        .and_then(|()| owner::check_timezone(&timezone, std::path::Path::new(ZONEINFO)))
        .and_then(|()| owner::check_update_channel(form.update_channel.trim()))
        .and_then(|()| static_wired.as_ref().map_or(Ok(()), |w| w.check().map_err(|e| format!("static wired address: {e}"))))
        .and_then(|()| ssh_keys::parse(&form.ssh_keys));
    let settings = Settings {
        box_name,
        timezone,
        ssh_keys: Vec::new(),
        update_channel: form.update_channel.trim().to_string(),
        peers_may_wipe: form.peers_may_wipe.is_some(),
        static_wired,
    };
    let ssh_keys = match checked {
        Ok(keys) => keys,
        Err(problem) => return settings_form(&state, &settings, &form.ssh_keys, done).error(StatusCode::BAD_REQUEST, problem).render(&session),
    };
    let settings = Settings { ssh_keys, ..settings };
    guard!(state.owner.update_settings(settings).map_err(internal));
    // Root's network watcher joins it (the passphrase is kept nowhere else); a box on its setup
    // hotspot closes it to do so, and the page the owner sees next says where to go.
    if let Some(wifi) = &wifi {
        guard!(network::request_wifi(&state.config.state_dir, wifi).map_err(internal));
        tracing::info!("the owner asked to join the Wi-Fi network {:?}", wifi.ssid);
        return Page::new("message", "Joining Wi-Fi", json!({
            "message": format!(
                "The box is joining {:?}. If you are on its setup hotspot, it closes now: join {:?} yourself and open http://{}.local/. If the box cannot join, its hotspot comes back within a minute and its screen says why.",
                wifi.ssid, wifi.ssid, state.owner.load().map(|f| f.settings.box_name).unwrap_or_else(|_| "hellas".into())
            ),
            "next": if done { "/dashboard" } else { "/models" },
        }))
        .render(&session);
    }
    redirect(if done { "/dashboard" } else { "/models" })
}

csrf_forms!(SettingsForm);
