//! cutover: a layer-4/7 traffic-switching proxy for blue/green platform
//! upgrades.
//!
//! Data plane: `listener` (sockets, accept loop), `inbound` (what client
//! connections share, PROXY headers from trusted sources), `limit`
//! (connections per listener), `http` (per-request routing and forwarding),
//! `tcp` (per-connection routing, by SNI too, and the relay),
//! `proxy_protocol` (PROXY header parsing and writing), `balance` (weighted
//! picks), `drain` (work in flight per pool). Control plane: `config`
//! (schema, validation), `snapshot` (routing state built from a config),
//! `server` (publishes snapshots, owns listeners), `reload` (what triggers a
//! reload). `demo` wires sample backends to a proxy for a first look.

pub mod admin;
pub mod audit;
pub mod balance;
pub mod config;
pub mod demo;
pub mod drain;
pub mod health;
pub mod http;
pub(crate) mod inbound;
pub mod limit;
pub(crate) mod listener;
pub mod logging;
pub mod metrics;
pub mod proxy_protocol;
pub mod reload;
pub mod server;
pub mod shift;
pub mod snapshot;
pub mod state;
pub mod tcp;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error(transparent)]
    Token(#[from] admin::TokenError),
    #[error("admin API: cannot bind {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Watch(#[from] reload::WatchError),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// What a caller learns once the proxy is up.
pub struct Started<'a> {
    pub handle: &'a server::Handle,
    pub admin: SocketAddr,
}

/// Starts the admin API (and its rate sampler) on the current runtime for the
/// server behind `handle`; both stop with `stop`. Returns the bound address.
pub async fn start_admin(
    handle: &server::Handle,
    config: &config::Admin,
    tls: Option<Arc<arc_swap::ArcSwap<rustls::ServerConfig>>>,
    stop: CancellationToken,
) -> Result<SocketAddr, RunError> {
    let token = config
        .token_file
        .as_deref()
        .map(admin::Token::load)
        .transpose()?;
    let bind_err = |source| RunError::AdminBind {
        addr: config.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    let admin = Arc::new(admin::Admin {
        handle: handle.clone(),
        token,
        rates: admin::Rates::default(),
    });
    let sampler = admin.clone();
    let (sampler_handle, sampler_stop) = (handle.clone(), stop.clone());
    tokio::spawn(async move { sampler.rates.run(sampler_handle, sampler_stop).await });
    let https = tls.is_some();
    tokio::spawn(admin::serve(listener, admin, tls, stop));
    tracing::info!(%addr, https, "admin API listening");
    Ok(addr)
}

/// Runs the proxy from the configuration file at `path` until SIGTERM/SIGINT.
/// Client connections are served on `options.data_plane`; the calling runtime
/// runs the control plane: the server's command loop, the admin API, file
/// watching and signals. `on_start` runs once everything is bound.
pub async fn run(
    path: &Path,
    options: server::Options,
    on_start: impl FnOnce(Started<'_>),
) -> Result<(), RunError> {
    let signals = reload::Signals::install().map_err(RunError::Signals)?;
    let (server, handle) = server::Server::start(path, options).await?;
    let admin_config = server.admin_config().clone();
    let admin_tls = server.admin_tls();
    let watcher = reload::FileWatcher::new(path, handle.clone())?;
    let stop = CancellationToken::new();
    let admin_addr = start_admin(&handle, &admin_config, admin_tls, stop.clone()).await?;
    tokio::spawn(watcher.run(stop.clone()));
    tokio::spawn(signals.run(handle.clone()));
    on_start(Started {
        handle: &handle,
        admin: admin_addr,
    });
    server.run().await;
    stop.cancel();
    Ok(())
}
