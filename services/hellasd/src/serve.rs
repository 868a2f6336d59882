//! `hellasd serve`: assembles the daemon from its configuration and runs the API until SIGTERM.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::serve::ListenerExt;

use crate::admission::Admission;
use crate::api::{self, AppState};
use crate::config::Config;
use crate::engine::Supervisor;
use crate::keys::KeyStore;
use crate::library::ModelLibrary;
use crate::memory_budget;
use crate::metrics::Metrics;
use crate::web::{self, Web};

pub async fn run(config: Config) -> Result<()> {
    let budget = match config.memory.budget_bytes {
        Some(bytes) => memory_budget::configured(bytes),
        None => memory_budget::detect(Path::new("/"), config.memory.os_reserve_bytes).context("detecting the memory budget")?,
    };
    tracing::info!(usable_bytes = budget.usable, source = ?budget.source, "memory budget");
    let metrics = Arc::new(Metrics::new());
    let library = Arc::new(ModelLibrary::open(config.state_dir.join("models")));
    let supervisor = Supervisor::new(config.engine.clone(), budget.usable, library.clone(), metrics.clone());
    supervisor.spawn_idle_reaper();
    let cluster = if config.cluster.enabled {
        let cluster = crate::cluster::Cluster::new(&config, web::owner_store(&config.state_dir)).context("setting up the pool")?;
        supervisor.set_pool(cluster.clone());
        Some(cluster)
    } else {
        None
    };
    let http = reqwest::Client::builder().no_proxy().build().context("building the HTTP client")?;
    let web = Web::new(&config, library.clone(), http).context("loading the web setup")?;
    let state = Arc::new(AppState {
        budget,
        web,
        recent: Default::default(),
        keys: KeyStore::open(config.state_dir.join("keys.json")),
        admission: Admission::new(config.api.queue_depth),
        http: reqwest::Client::builder()
            .no_proxy()
            // llama-server closes idle keep-alive connections after 5 s; dropping ours sooner
            // keeps a request from being sent down a connection the engine is closing.
            .pool_idle_timeout(std::time::Duration::from_secs(3))
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?,
        library,
        supervisor: supervisor.clone(),
        cluster,
        metrics,
        config,
    });
    let listener = tokio::net::TcpListener::bind(state.config.api.listen)
        .await
        .with_context(|| format!("listening on {}", state.config.api.listen))?;
    tracing::info!(address = %listener.local_addr()?, "API listening");
    let web_listener = tokio::net::TcpListener::bind(state.config.web.listen)
        .await
        .with_context(|| format!("listening on {} for the web pages", state.config.web.listen))?;
    tracing::info!(address = %web_listener.local_addr()?, "web pages listening");
    state.web.start()?;
    if let Some(cluster) = &state.cluster {
        cluster.start(&state).await?;
    }
    let pages = web::router(state.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let web_server = tokio::spawn(async move { axum::serve(web_listener, pages).with_graceful_shutdown(shutdown_signal()).await });
    // Streamed tokens are small writes that must leave at once, not wait for an ACK (Nagle).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("setting TCP_NODELAY on a client connection: {e}");
        }
    });
    axum::serve(listener, api::router(state)).with_graceful_shutdown(shutdown_signal()).await.context("serving the API")?;
    web_server.await.context("the web server task")?.context("serving the web pages")?;
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
