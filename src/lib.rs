//! cutover: a traffic-switching proxy for blue/green platform upgrades.
//!
//! Data plane: `listener` (sockets, accept loop), `http` (per-request routing
//! and forwarding), `balance` (weighted picks). Control plane: `config`
//! (schema, validation), `snapshot` (routing state built from a config),
//! `server` (publishes snapshots, owns listeners), `reload` (what triggers a
//! reload). `demo` wires sample backends to a proxy for a first look.

pub mod balance;
pub mod config;
pub mod demo;
pub mod http;
pub mod listener;
pub mod logging;
pub mod reload;
pub mod server;
pub mod snapshot;
pub mod upstream;

use std::path::Path;

use tokio_util::sync::CancellationToken;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error(transparent)]
    Watch(#[from] reload::WatchError),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Runs the proxy from the configuration file at `path` until SIGTERM/SIGINT:
/// listeners, file watching, SIGHUP reloads, graceful shutdown. `on_start`
/// sees the running server's handle once its listeners are bound.
pub async fn run(path: &Path, on_start: impl FnOnce(&server::Handle)) -> Result<(), RunError> {
    let signals = reload::Signals::install().map_err(RunError::Signals)?;
    let (server, handle) = server::Server::start_from_file(path)?;
    let watcher = reload::FileWatcher::new(path, handle.clone())?;
    let stop = CancellationToken::new();
    tokio::spawn(watcher.run(stop.clone()));
    let signal_task = tokio::spawn(signals.run(handle.clone()));
    on_start(&handle);
    server.run().await;
    stop.cancel();
    signal_task.abort();
    Ok(())
}
