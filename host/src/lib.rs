//! repeatd: a data-forwarding gateway for CommCare-style XForm submissions.
//!
//! Devices submit forms; the gateway keeps the forms and the cases they
//! change, and forwards forms, cases, form stubs and app changes to each
//! project's remote systems, one HTTP request per payload, retried until the
//! remote accepts. Payload formats and custom auth are WebAssembly plugins.
//!
//! # Layout
//! - [`config`]: reads and validates the TOML file, once.
//! - [`model`], [`record`]: the domain types and the repeat-record state
//!   machine (pure); [`connection`], [`repeater`]: the connection and
//!   repeater specs the file, the API and the store share; [`field`],
//!   [`units`]: their key-path errors, shared checks and `"90s"` durations.
//! - [`xform`], [`cases`], [`time`], [`filters`]: reading submissions,
//!   applying case blocks, timestamps, repeater filters (pure).
//! - [`clock`]: the one "now" and the one way to sleep, handed to every
//!   part that needs time (tests move it with `tokio::time::advance`).
//! - [`submission`]: what a new form changes (cases, records to register),
//!   planned without I/O.
//! - [`store`]: the redb file or the PostgreSQL database (`[store]`), behind
//!   one `Store`; the only module that knows either. It persists plans and
//!   outcomes through named operations.
//! - [`retention`]: how long final records and forms are kept (decided
//!   without I/O) and the task that has the store delete what is due.
//! - [`catalog`], [`secrets`]: configured objects and their secrets.
//! - [`ingest`]: the receiver endpoints.
//! - [`scheduler`] (its decisions in [`scheduler::planner`], pure),
//!   [`delivery`], [`auth`]: what is sent when, and how.
//! - [`email`]: error e-mails to each connection's contacts (SMTP).
//! - [`egress`]: which addresses connections made with a domain token may
//!   reach (the server-side request forgery guard).
//! - [`plugins`]: the WebAssembly host.
//! - [`api`], [`metrics`]: the admin API; [`endpoint`]: the error answers
//!   and token checks the JSON endpoints share.
//! - [`data_api`]: the CommCare HQ compatible Data API (forms, cases).
//! - [`console`]: the operator console under `/console/`, pages over the
//!   same operations as [`api`].
//! - [`sink`]: `repeatd sink`, a receiver that prints what it gets.
//! - [`tls`]: the PEM files of connections and `[tls]`, and HTTPS on `listen`.
//!
//! `run` wires them together for a listener the caller binds, so tests run
//! the real gateway on `127.0.0.1:0`.

// Denied everywhere; the one exception is reading wasmtime's compiled
// plugin cache (`plugins::PluginHost::compile`), justified there.
#![deny(unsafe_code)]

pub mod api;
pub mod auth;
pub mod cases;
pub mod catalog;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod console;
pub mod data_api;
pub mod delivery;
pub mod egress;
pub mod email;
pub mod endpoint;
pub mod field;
pub mod filters;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod plugins;
pub mod record;
pub mod repeater;
pub mod retention;
pub mod sample;
pub mod scheduler;
pub mod secrets;
pub mod sink;
pub mod store;
pub mod submission;
pub mod time;
pub mod tls;
pub mod units;
pub mod xform;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::{get, post};

use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::config::Config;
use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::plugins::PluginHost;
use crate::scheduler::Scheduler;
use crate::store::Store;

/// How long shutdown waits for sends under way.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long shutdown waits for error e-mails under way (they are sent again
/// after a restart when cut short).
const EMAIL_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a plugin file must stay unchanged before it is loaded.
const PLUGIN_SETTLE: Duration = Duration::from_millis(300);

/// Everything the HTTP handlers share.
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub catalog: Arc<Catalog>,
    pub plugins: Arc<PluginHost>,
    pub scheduler: Scheduler,
    pub metrics: Arc<Metrics>,
    pub delivery: Arc<Delivery>,
    pub notifier: email::Notifier,
    /// The retention task and what it has deleted.
    pub retention: retention::Retention,
    pub admin_token_digest: [u8; 32],
    /// Every "now" of the gateway.
    pub clock: Clock,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// Where the admin token came from, for the start-up message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTokenSource {
    /// `admin_token` in the config, or `REPEATD_ADMIN_TOKEN`.
    Configured,
    /// Generated on first start and kept in this file (mode 0600).
    File(PathBuf),
}

/// Reads the admin token file of `data_dir`, creating it on first start.
pub fn admin_token(config: &Config) -> anyhow::Result<(String, AdminTokenSource)> {
    if let Some(token) = &config.admin_token {
        return Ok((token.expose().to_owned(), AdminTokenSource::Configured));
    }
    let path = config.data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            Ok((text.trim().to_owned(), AdminTokenSource::File(path)))
        }
        _ => {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("data_dir {}", config.data_dir.display()))?;
            let mut bytes = [0u8; 24];
            getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            secrets::write_private_file(&path, format!("{token}\n").as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok((token, AdminTokenSource::File(path)))
        }
    }
}

/// The HTTP routes.
pub fn router(state: Arc<AppState>) -> Router {
    use api::*;
    use connection::ConnectionSpec;
    use repeater::RepeaterSpec;
    let domain = "/api/v1/domains/{domain}";
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(ingest::routes(&state))
        .route(
            &format!("{domain}/apps/{{app_id}}/events"),
            post(ingest::app_event),
        )
        .route(
            &format!("{domain}/repeaters/{{name}}/{{action}}"),
            post(repeater_action),
        )
        .route(&format!("{domain}/records"), get(list_records))
        .route(&format!("{domain}/records/bulk"), post(bulk_action))
        .route(&format!("{domain}/records/{{id}}"), get(get_record))
        .route(
            &format!("{domain}/records/{{id}}/{{action}}"),
            post(record_action),
        )
        .route(&format!("{domain}/forms/{{form_id}}"), get(get_form))
        .route(&format!("{domain}/cases/{{case_id}}"), get(get_case))
        .route(&format!("{domain}/stats"), get(domain_stats))
        .route("/api/v1/plugins", get(list_plugins));
    let routes = object_routes::<ConnectionSpec>(routes, &format!("{domain}/connections"));
    let routes = object_routes::<RepeaterSpec>(routes, &format!("{domain}/repeaters"));
    routes
        .merge(data_api::routes())
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state.clone())
        .merge(console::routes(state))
}

/// Opens the store, loads plugins and objects, starts the scheduler and
/// serves `listener` until `shutdown` completes; then lets sends under way
/// finish (bounded) and returns.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (state, _) = start(config).await?;
    serve(state, listener, shutdown).await
}

/// Builds and starts everything but the HTTP server, on the wall clock.
pub async fn start(config: Config) -> anyhow::Result<(Arc<AppState>, AdminTokenSource)> {
    start_with_clock(config, Clock::system()).await
}

/// Like [`start`], with every "now" and every sleep taken from `clock`.
pub async fn start_with_clock(
    config: Config,
    clock: Clock,
) -> anyhow::Result<(Arc<AppState>, AdminTokenSource)> {
    // Secrets print as "********" in Debug output.
    tracing::debug!(?config, "configuration");
    let config = Arc::new(config);
    let (token, token_source) = admin_token(&config)?;
    let store = open_store(&config, clock).await?;
    let key = Arc::new(secrets::SecretKey::load_or_create(&config.data_dir)?);
    let limits = config.plugins;
    let cache_dir = config.data_dir.join("plugin-cache");
    let plugins =
        tokio::task::spawn_blocking(move || PluginHost::with_cache(limits, cache_dir, clock))
            .await??;
    {
        let plugins = plugins.clone();
        let plugin_dir = config.plugin_dir.clone();
        tokio::task::spawn_blocking(move || plugins::watch(plugins, plugin_dir, PLUGIN_SETTLE))
            .await??;
    }
    for declared in &config.repeaters {
        if !plugins.is_loaded(&declared.spec.format) {
            anyhow::bail!(
                "repeaters: repeater \"{}\" of domain \"{}\": format: no payload format plugin \"{}\" (built-ins: form-xml, form-json, case-xml, case-json, form-stub, app-schema; or put {}.wasm in {})",
                declared.spec.name,
                declared.domain,
                declared.spec.format,
                declared.spec.format,
                config.plugin_dir.display()
            );
        }
    }
    let catalog = Catalog::load(store.clone(), key.clone()).await?;
    catalog.apply_config(&config).await?;
    let catalog = Arc::new(catalog);
    for domain in catalog.snapshot().domains.values() {
        for stored in domain.connections.values() {
            stored.spec.warn_if_unverified(&domain.name);
        }
    }
    let metrics = Arc::new(Metrics::default());
    let delivery = Arc::new(Delivery::new(plugins.clone(), &config.delivery, clock)?);
    let notifier =
        email::Notifier::start(config.smtp.as_ref(), store.clone(), catalog.clone(), clock).await?;
    let scheduler = Scheduler::start(
        scheduler::Wiring {
            store: store.clone(),
            catalog: catalog.clone(),
            delivery: delivery.clone(),
            plugins: plugins.clone(),
            metrics: metrics.clone(),
            notifier: notifier.clone(),
            retry_defaults: config.retry,
            clock,
        },
        config.delivery.max_in_flight,
    );
    cluster::follow(store.clone(), catalog.clone(), scheduler.clone(), clock);
    let retention = retention::Retention::start(store.clone(), config.retention, clock);
    let state = Arc::new(AppState {
        config,
        store,
        catalog,
        plugins,
        scheduler,
        metrics,
        delivery,
        notifier,
        retention,
        admin_token_digest: secrets::token_digest(&token),
        clock,
    });
    Ok((state, token_source))
}

/// Opens the store `[store]` names: the redb file of `data_dir`, or the
/// PostgreSQL database at `url` (its schema migrated).
async fn open_store(config: &Config, clock: Clock) -> anyhow::Result<Store> {
    let store = &config.store;
    match (store.backend, &store.url) {
        (config::StoreBackend::Postgres, Some(url)) => {
            let node_id = node_id(&config.data_dir)?;
            let connected =
                Store::connect_postgres(url.expose(), store.lease, clock, Some(node_id)).await?;
            tracing::info!(lease = ?store.lease, "the store is PostgreSQL, shared by every node");
            Ok(connected)
        }
        // `Config::validate` refuses postgres without a URL.
        (config::StoreBackend::Postgres, None) => {
            anyhow::bail!("store: backend \"postgres\" needs \"url\" or \"url_env\"")
        }
        (config::StoreBackend::Redb, _) => {
            let data_dir = config.data_dir.clone();
            let opened = tokio::task::spawn_blocking(move || Store::open(&data_dir)).await??;
            Ok(opened.with_clock(clock))
        }
    }
}

/// This node's id in a cluster, kept in `data_dir/node-id` (made on first
/// start): each node has a data directory of its own, and a node restarted
/// over it is the same node.
fn node_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => anyhow::bail!("reading {}: {error}", path.display()),
    }
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let id = bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::write(&path, &id))
        .map_err(|error| anyhow::anyhow!("writing {}: {error}", path.display()))?;
    Ok(id)
}

/// Serves HTTP (HTTPS with `[tls]`) until `shutdown`, then drains the scheduler.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router(state.clone());
    match &state.config.tls {
        None => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving HTTP")?,
        Some(tls) => {
            let acceptor = tls
                .acceptor()
                .map_err(|error| anyhow::anyhow!("tls.{error}"))?;
            axum::serve(tls::HttpsListener::new(listener, acceptor)?, app)
                .with_graceful_shutdown(shutdown)
                .await
                .context("serving HTTPS")?
        }
    }
    state.scheduler.shutdown(SHUTDOWN_GRACE).await;
    state.notifier.shutdown(EMAIL_SHUTDOWN_GRACE).await;
    state.retention.shutdown().await;
    // Joins the plugin host's threads (the watcher may be compiling a file).
    let plugins = state.plugins.clone();
    tokio::task::spawn_blocking(move || plugins.shutdown())
        .await
        .context("stopping the plugin host")?;
    Ok(())
}
