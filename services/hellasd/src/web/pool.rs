//! The owner's pool pages: this box and its peers, join codes, joining and unpairing, and which
//! box holds which layers of the models that run across them.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{csrf_forms, Owner, OwnerForm};
use super::page::{guard, redirect, CsrfOnly, Page, St};
use crate::app::AppState;
use crate::cluster::Cluster;
use hellas_model::plan::format_bytes;

fn pool(state: &AppState) -> Result<&Arc<Cluster>, Response> {
    state.cluster.as_ref().ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            "pooling is off on this box (cluster.enabled = false)",
        )
            .into_response()
    })
}

/// The pool as data: for the page, and as JSON for the owner's scripts.
fn pool_data(state: &AppState, cluster: &Cluster) -> Value {
    let view = cluster.view();
    let rollout = cluster.rollout_state();
    let split: Vec<Value> = state
        .supervisor
        .loaded()
        .iter()
        .filter_map(|engine| {
            let split = engine.plan.split.as_ref()?;
            Some(json!({
                "model": engine.model, "ctx": engine.plan.ctx,
                "shares": split.shares.iter().map(|s| json!({ "name": s.name, "layers": s.layers, "memory": format_bytes(s.bytes), "bytes": s.bytes, "rpc": s.rpc.map(|a| a.to_string()) })).collect::<Vec<_>>(),
            }))
        })
        .collect();
    let peers: Vec<Value> = view
        .peers
        .iter()
        .map(|p| {
            json!({
                "node_id": p.node_id, "name": p.name, "address": p.address.to_string(), "reachable": p.reachable,
                "version": p.status.as_ref().map(|s| s.version.clone()),
                "budget": p.status.as_ref().map(|s| format_bytes(s.budget)), "free": p.status.as_ref().map(|s| format_bytes(s.free)),
                "worker": p.status.as_ref().and_then(|s| s.rpc).map(|a| a.to_string()),
                "latency": p.latency_ms.map(|ms| format!("{ms:.1} ms")), "error": p.error,
                "paths": p.paths.iter().map(|path| json!({
                    "address": path.address.to_string(), "link": path.link, "up": path.up, "chosen": path.chosen, "error": path.error,
                    "latency_ms": path.latency_ms, "latency": path.latency_ms.map(|ms| format!("{ms:.2} ms")),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "this": view.this, "budget": format_bytes(view.this.budget), "free": format_bytes(view.this.free),
        "address": view.address.map(|a| a.to_string()), "fingerprint": view.fingerprint, "rpc_port": state.config.cluster.rpc_port, "wipe_request": cluster.wipe_request(),
        "peers": peers, "discovered": view.discovered, "split": split,
        "offered": view.this.update.offered, "rollout": rollout.map(|r| json!({
            "version": r.version, "summary": r.summary(), "running": r.running(), "steps": r.steps,
            "halted": matches!(r.state, crate::cluster::fleet::RolloutState::Halted { .. }), "state": r.state,
        })),
    })
}

pub async fn pool_page(State(state): St, Owner(session): Owner) -> Response {
    let cluster = guard!(pool(&state));
    Page::new("pool", "Pool", pool_data(&state, cluster)).render(&session)
}

pub async fn pool_json(State(state): St, Owner(_session): Owner) -> Response {
    let cluster = guard!(pool(&state));
    axum::Json(pool_data(&state, cluster)).into_response()
}

/// "Add a box": a one-time join code to type on the other box.
pub async fn new_code(State(state): St, OwnerForm(session, _form): OwnerForm<CsrfOnly>) -> Response {
    let cluster = guard!(pool(&state));
    let (code, valid) = cluster.new_join_code();
    let mut data = pool_data(&state, cluster);
    data["code"] = json!({ "code": code, "minutes": valid.as_secs().div_ceil(60) });
    Page::new("pool", "Pool", data).render(&session)
}

#[derive(Deserialize)]
pub struct JoinForm {
    csrf: String,
    /// A box heard over mDNS…
    #[serde(default)]
    node_id: String,
    /// …or an address typed by hand, `host` or `host:port`.
    #[serde(default)]
    address: String,
    code: String,
}

pub async fn join(State(state): St, OwnerForm(session, form): OwnerForm<JoinForm>) -> Response {
    let cluster = guard!(pool(&state));
    let refuse = |status: StatusCode, problem: String| {
        let mut data = pool_data(&state, cluster);
        data["back"] = json!("/pool");
        Page::new("pool", "Pool", data)
            .error(status, problem)
            .render(&session)
    };
    let address = if !form.node_id.is_empty() {
        match cluster.discovered(&form.node_id) {
            Some(address) => address,
            None => {
                return refuse(
                    StatusCode::NOT_FOUND,
                    "That box is no longer heard on the network; type its address instead.".into(),
                )
            }
        }
    } else {
        match parse_address(form.address.trim(), state.config.cluster.listen.port()) {
            Some(address) => address,
            None => return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "{:?} is not an address: type the other box's IP address, e.g. 192.168.1.20",
                    form.address
                ),
            ),
        }
    };
    match cluster.join(address, &form.code).await {
        Ok(peer) => {
            tracing::info!(peer = %peer.name, "paired from the dashboard");
            redirect("/pool")
        }
        Err(e) => refuse(StatusCode::FORBIDDEN, format!("Not paired: {e:#}")),
    }
}

fn parse_address(typed: &str, default_port: u16) -> Option<SocketAddr> {
    typed.parse::<SocketAddr>().ok().or_else(|| {
        typed
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, default_port))
    })
}

#[derive(Deserialize)]
pub struct UnpairForm {
    csrf: String,
    node_id: String,
}

pub async fn unpair(State(state): St, OwnerForm(session, form): OwnerForm<UnpairForm>) -> Response {
    let cluster = guard!(pool(&state));
    match cluster.unpair(&form.node_id).await {
        Ok(_) => redirect("/pool"),
        Err(e) => Page::new("message", "Not unpaired", json!({ "back": "/pool" }))
            .error(StatusCode::NOT_FOUND, format!("{e:#}"))
            .render(&session),
    }
}

#[derive(Deserialize)]
pub struct FleetUpdateForm {
    csrf: String,
    version: String,
}

/// "Update fleet": every paired box, one at a time, then this one.
pub async fn update_fleet(State(state): St, OwnerForm(session, form): OwnerForm<FleetUpdateForm>) -> Response {
    let cluster = guard!(pool(&state));
    match cluster.start_rollout(form.version.trim()) {
        Ok(()) => redirect("/pool"),
        Err(e) => Page::new("pool", "Pool", pool_data(&state, cluster)).error(StatusCode::CONFLICT, format!("The fleet update did not start: {e:#}")).render(&session),
    }
}

#[derive(Deserialize)]
pub struct ReimageForm {
    csrf: String,
    node_id: String,
    #[serde(default)]
    keep_data: Option<String>,
    /// The box's name typed back.
    confirm: String,
}

/// "Re-image": a paired box back to the release image, its data kept or wiped.
pub async fn reimage(State(state): St, OwnerForm(session, form): OwnerForm<ReimageForm>) -> Response {
    let cluster = guard!(pool(&state));
    let refuse = |status: StatusCode, problem: String| Page::new("pool", "Pool", pool_data(&state, cluster)).error(status, problem).render(&session);
    let Some(peer) = cluster.view().peers.into_iter().find(|p| p.node_id == form.node_id) else {
        return refuse(StatusCode::NOT_FOUND, "That box is not paired with this one.".into());
    };
    if form.confirm.trim() != peer.name {
        return refuse(StatusCode::BAD_REQUEST, format!("Type the box's name, {}, to confirm.", peer.name));
    }
    match cluster.reimage(&form.node_id, form.keep_data.is_some()).await {
        Ok(done) => {
            tracing::info!("{done}");
            let mut data = pool_data(&state, cluster);
            data["notice"] = json!(done);
            Page::new("pool", "Pool", data).render(&session)
        }
        Err(e) => refuse(StatusCode::BAD_GATEWAY, format!("Not re-imaged: {e:#}")),
    }
}

#[derive(Deserialize)]
pub struct WipeAnswerForm {
    csrf: String,
    /// "approve" or "refuse".
    answer: String,
}

/// The owner's answer to a paired box's request to wipe this one.
pub async fn answer_wipe(State(state): St, OwnerForm(session, form): OwnerForm<WipeAnswerForm>) -> Response {
    let cluster = guard!(pool(&state));
    let approve = match form.answer.as_str() {
        "approve" => true,
        "refuse" => false,
        other => return Page::new("pool", "Pool", pool_data(&state, cluster)).error(StatusCode::BAD_REQUEST, format!("'{other}' is neither approve nor refuse.")).render(&session),
    };
    match cluster.answer_wipe_request(approve) {
        Ok(()) if approve => Page::new("message", "Wiping this box", json!({ "back": "/", "notice": "This box is being reset to the release image: its owner, models, keys and pairings are erased. Its claim code shows on its screen again." })).render(&session),
        Ok(()) => {
            let mut data = pool_data(&state, cluster);
            data["notice"] = json!("Refused: this box stays as it is.");
            Page::new("pool", "Pool", data).render(&session)
        }
        Err(e) => Page::new("pool", "Pool", pool_data(&state, cluster)).error(StatusCode::CONFLICT, format!("{e:#}")).render(&session),
    }
}

csrf_forms!(JoinForm, UnpairForm, FleetUpdateForm, ReimageForm, WipeAnswerForm);

#[cfg(test)]
mod tests {
    #[test]
    fn the_fleet_update_is_offered_only_while_none_runs() {
        let pages = super::super::page::templates().unwrap();
        let page = |rollout: serde_json::Value| {
            let data = serde_json::json!({ "this": {}, "offered": "2.0", "rollout": rollout, "csrf": "x" });
            pages.render("pool", &data).unwrap()
        };
        assert!(page(serde_json::Value::Null).contains("Update fleet to 2.0"));
        assert!(page(serde_json::json!({ "running": false, "summary": "the fleet is on 1.0" })).contains("Update fleet to 2.0"));
        let running = page(serde_json::json!({ "running": true, "summary": "updating the fleet to 2.0" }));
        assert!(!running.contains("Update fleet to") && running.contains("updating the fleet to 2.0"));
    }

    #[test]
    fn addresses_take_the_control_port_by_default() {
        assert_eq!(
            super::parse_address("10.0.0.2", 7077).unwrap().to_string(),
            "10.0.0.2:7077"
        );
        assert_eq!(
            super::parse_address("10.0.0.2:9", 7077)
                .unwrap()
                .to_string(),
            "10.0.0.2:9"
        );
        assert!(super::parse_address("box.local", 7077).is_none());
    }
}
