//! The running server as others see it: a cheap, cloneable `Handle` that
//! reads status and snapshots and sends changes to the server's one command
//! loop, and the start-up `Options`.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{ChangeError, Status};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::state::Weights;

/// Why the configuration is being read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The file (or its directory) changed; skipped if the text is unchanged.
    FileChanged,
    /// SIGHUP: always re-read.
    Signal,
    /// `POST /v1/reload`: always re-read.
    Api,
}

pub(super) enum Command {
    Reload {
        trigger: Trigger,
        reply: Option<oneshot::Sender<Result<u64, ChangeError>>>,
    },
    SetWeights {
        service: String,
        weights: Weights,
        reply: oneshot::Sender<Result<u64, ChangeError>>,
    },
    SetDrain {
        service: String,
        pool: String,
        endpoint: Option<String>,
        drain: bool,
        reply: oneshot::Sender<Result<u64, ChangeError>>,
    },
}

/// Start-up choices that do not come from the file.
#[derive(Clone)]
pub struct Options {
    /// Start from the file's weights, ignoring the state file.
    pub ignore_state: bool,
    /// Runtime that serves client connections; listeners are registered with
    /// it, whichever runtime the control plane runs on.
    pub data_plane: tokio::runtime::Handle,
}

impl Options {
    /// Data plane on the current runtime, state file honoured.
    pub fn current() -> Self {
        Self {
            ignore_state: false,
            data_plane: tokio::runtime::Handle::current(),
        }
    }
}

/// A cheap, cloneable view of a running server for callers outside it (the
/// binary, the admin API, tests).
#[derive(Clone)]
pub struct Handle {
    pub(super) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(super) status: watch::Receiver<Status>,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) shutdown: CancellationToken,
    pub metrics: Metrics,
}

impl Handle {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// The bound address of listener `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.status.borrow().listeners.get(name).copied()
    }

    /// Waits until the status satisfies `done`.
    pub async fn wait_for(&self, done: impl Fn(&Status) -> bool) {
        let mut status = self.status.clone();
        // An error means the server is gone, and so is what was waited for.
        _ = status.wait_for(|s| done(s)).await;
    }

    /// Re-reads the configuration file; returns the new generation once it
    /// is in force.
    pub(crate) async fn reload(&self, trigger: Trigger) -> Result<u64, ChangeError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Reload {
            trigger,
            reply: Some(reply),
        })
        .await?;
        answer.await.map_err(|_| ChangeError::Stopped)?
    }

    /// Asks for a reload without waiting for its outcome.
    pub(crate) async fn request_reload(&self, trigger: Trigger) {
        if self
            .send(Command::Reload {
                trigger,
                reply: None,
            })
            .await
            .is_err()
        {
            tracing::debug!("reload asked after the server stopped");
        }
    }

    /// Overrides some of a service's pool weights (the others keep theirs);
    /// returns the generation in force once the change is.
    pub(crate) async fn set_weights(
        &self,
        service: &str,
        weights: Weights,
    ) -> Result<u64, ChangeError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::SetWeights {
            service: service.to_owned(),
            weights,
            reply,
        })
        .await?;
        answer.await.map_err(|_| ChangeError::Stopped)?
    }

    /// Sets a pool, or one endpoint of it, to drain (`drain`) or back to
    /// ready; returns the generation in force once the change is.
    pub(crate) async fn set_drain(
        &self,
        service: &str,
        pool: &str,
        endpoint: Option<&str>,
        drain: bool,
    ) -> Result<u64, ChangeError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::SetDrain {
            service: service.to_owned(),
            pool: pool.to_owned(),
            endpoint: endpoint.map(str::to_owned),
            drain,
            reply,
        })
        .await?;
        answer.await.map_err(|_| ChangeError::Stopped)?
    }

    async fn send(&self, command: Command) -> Result<(), ChangeError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| ChangeError::Stopped)
    }

    /// Starts a graceful shutdown.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Directories of the TLS files in use, as they change.
    pub(crate) fn tls_dirs(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}
