//! The owner's backup (download it; restore it while claiming a box) and the diagnostics bundle.

use axum::extract::{Multipart, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::extract::{check_csrf, Owner};
use super::page::{guard, internal, setup_done, Page, St};
use crate::backup;

fn attachment(name: &str, bytes: Vec<u8>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json".to_string()), (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")), (header::CACHE_CONTROL, "no-store".to_string())],
        bytes,
    )
        .into_response()
}

/// `GET /backup`: the owner's backup file.
pub async fn download(State(state): St, Owner(_session): Owner) -> Response {
    let (name, bytes) = guard!(state.backup().map_err(internal));
    tracing::info!("the owner downloaded a backup");
    attachment(&name, bytes)
}

/// `GET /diagnostics`: the diagnostics bundle, with no secret in it.
pub async fn diagnostics(State(state): St, Owner(_session): Owner) -> Response {
    let name = format!("hellas-diagnostics-{}.json", crate::state_file::unix_now());
    attachment(&name, crate::diagnostics::bundle(&state).await)
}

/// `POST /setup/restore` (multipart: `csrf`, `backup`): restores a backup while the box is
/// being set up. A file that does not check out changes nothing and says why.
pub async fn restore(State(state): St, Owner(session): Owner, mut form: Multipart) -> Response {
    let refuse = |status: StatusCode, problem: String| Page::new("message", "Not restored", json!({ "back": "/settings" })).error(status, problem).render(&session);
    if guard!(setup_done(&state)) {
        return refuse(StatusCode::CONFLICT, "This box is set up already: a backup is restored while claiming a box (reset it first).".into());
    }
    let (mut csrf, mut file) = (None, None);
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_string();
                let bytes = match field.bytes().await {
                    Ok(bytes) => bytes,
                    Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("The upload was cut short ({e}); try again.")),
                };
                match name.as_str() {
                    "csrf" => csrf = Some(String::from_utf8_lossy(&bytes).into_owned()),
                    "backup" => file = Some(bytes),
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("The upload is not a form ({e}); try again.")),
        }
    }
    if let Err(refused) = check_csrf(&session, csrf.as_deref().unwrap_or_default()) {
        return refused;
    }
    let Some(file) = file.filter(|f| !f.is_empty()) else {
        return refuse(StatusCode::BAD_REQUEST, "Choose the backup file first.".into());
    };
    let contents = match backup::read(&file) {
        Ok(contents) => contents,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("Nothing was restored: {e:#}.")),
    };
    let (done, restart) = guard!(state.restore(contents).await.map_err(internal));
    if restart {
        // The pairings need this box's restored identity, which the daemon takes up at start;
        // systemd starts it again (Restart=on-failure).
        tokio::spawn(async {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            tracing::warn!("restarting to take up the restored pool identity");
            std::process::exit(75);
        });
    }
    Page::new("restored", "Backup restored", json!({ "done": done, "restart": restart })).render(&session)
}
