//! `hellasd serve`: assembles the daemon from its configuration and runs the API until SIGTERM.

use std::sync::Arc;

use anyhow::{Context, Result};
use axum::serve::ListenerExt;

use crate::api;
use crate::app::{factory_reset, AppState, Parts};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::engine::Supervisor;
use crate::library::ModelLibrary;
use crate::memory_budget;
use crate::metrics::Metrics;
use crate::owner::owner_store;
use crate::web;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Override `api.listen`.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Override `engine.llama_server`.
    #[arg(long)]
    llama_server: Option<std::path::PathBuf>,
    /// Override `memory.budget_bytes`.
    #[arg(long)]
    budget_bytes: Option<u64>,
}

impl ServeArgs {
    /// The configuration with these overrides applied.
    pub fn apply(self, mut config: Config) -> Config {
        config.api.listen = self.listen.unwrap_or(config.api.listen);
        config.engine.llama_server = self.llama_server.unwrap_or(config.engine.llama_server);
        config.memory.budget_bytes = self.budget_bytes.or(config.memory.budget_bytes);
        config
    }
}

pub async fn run(config: Config) -> Result<()> {
    let budget = memory_budget::of(config.memory.budget_bytes, config.memory.os_reserve_bytes)?;
    tracing::info!(usable_bytes = budget.usable, source = ?budget.source, "memory budget");
    let metrics = Arc::new(Metrics::new());
    let library = Arc::new(ModelLibrary::open(config.state_dir.join("models")));
    let on_gpu = crate::memory_budget::engines_on_gpu(&config.engine);
    let supervisor = Supervisor::new(config.engine.clone(), config.sandbox("engines"), budget.usable, on_gpu, library.clone(), metrics.clone());
    supervisor.spawn_idle_reaper();
    let cluster = if config.cluster.enabled {
        let cluster = Cluster::new(&config, owner_store(&config.state_dir), supervisor.clone()).context("setting up the pool")?;
        supervisor.set_pool(cluster.clone());
        Some(cluster)
    } else {
        None
    };
    let state = Arc::new(AppState::new(config, Parts { budget, library, supervisor: supervisor.clone(), cluster, metrics })?);
    let listener = tokio::net::TcpListener::bind(state.config.api.listen)
        .await
        .with_context(|| format!("listening on {}", state.config.api.listen))?;
    tracing::info!(address = %listener.local_addr()?, "API listening");
    let web_listener = tokio::net::TcpListener::bind(state.config.web.listen)
        .await
        .with_context(|| format!("listening on {} for the web pages", state.config.web.listen))?;
    tracing::info!(address = %web_listener.local_addr()?, "web pages listening");
    let tls_tcp = tokio::net::TcpListener::bind(state.config.web.tls_listen)
        .await
        .with_context(|| format!("listening on {} for the web pages over HTTPS", state.config.web.tls_listen))?;
    let tls_listener = web::tls::TlsListener::new(tls_tcp, &state.certificate)?;
    tracing::info!(address = %state.config.web.tls_listen, fingerprint = %state.certificate.fingerprint(), "web pages listening over HTTPS");
    state.start()?;
    tokio::spawn(crate::status_screen::run(state.clone()));
    if let Some(cluster) = &state.cluster {
        // A peer's re-image without the data is a factory reset, which needs the whole app.
        let app = Arc::downgrade(&state);
        cluster
            .start(Box::new(move || {
                let app = app.clone();
                Box::pin(async move {
                    let app = app.upgrade().context("hellasd is stopping")?;
                    factory_reset(&app).await
                })
            }))
            .await?;
    }
    let pages = web::router(state.clone(), false).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let web_server = tokio::spawn(async move { axum::serve(web_listener, pages).with_graceful_shutdown(shutdown_signal()).await });
    // tap_io: axum gives the peer's address to a tapped listener of any kind.
    let secure_pages = web::router(state.clone(), true).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let tls_listener = tls_listener.tap_io(|_| {});
    let tls_server = tokio::spawn(async move { axum::serve(tls_listener, secure_pages).with_graceful_shutdown(shutdown_signal()).await });
    // Streamed tokens are small writes that must leave at once, not wait for an ACK (Nagle).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("setting TCP_NODELAY on a client connection: {e}");
        }
    });
    let api = api::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, api).with_graceful_shutdown(shutdown_signal()).await.context("serving the API")?;
    web_server.await.context("the web server task")?.context("serving the web pages")?;
    tls_server.await.context("the HTTPS server task")?.context("serving the web pages over HTTPS")?;
    tracing::info!("stopping engines");
    supervisor.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
