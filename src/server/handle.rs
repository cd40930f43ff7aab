//! The running server as others see it: a cheap, cloneable `Handle` that
//! reads status and snapshots and sends changes to the server's one command
//! loop, and the start-up `Options`.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use std::time::Duration;

use super::{ChangeError, Status};
use crate::audit::{Audit, Source};
use crate::metrics::Metrics;
use crate::shift;
use crate::snapshot::Snapshot;
use crate::state::Weights;

/// Why the configuration is being read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The file (or its directory) changed; skipped if the text is unchanged.
    FileChanged,
    /// SIGHUP: always re-read.
    Signal,
    /// `POST /v1/reload`, from this client: always re-read.
    Api(SocketAddr),
}

impl Trigger {
    pub(crate) fn source(self) -> Source {
        match self {
            Trigger::FileChanged => Source::File,
            Trigger::Signal => Source::Signal,
            Trigger::Api(client) => Source::Api(client),
        }
    }
}

/// An `If-Match` precondition: the change applies only while the generation
/// in force is one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IfMatch {
    /// `*`: any generation.
    Any,
    /// The generations given; tags that are no generation match none.
    Generations(Vec<u64>),
}

impl IfMatch {
    /// Reads an `If-Match` header: `*`, or a list of entity tags (`"42"`,
    /// `W/"42"`).
    pub(crate) fn parse(value: &str) -> Self {
        if value.trim() == "*" {
            return IfMatch::Any;
        }
        IfMatch::Generations(
            value
                .split(',')
                .filter_map(|tag| {
                    let tag = tag.trim();
                    let tag = tag.strip_prefix("W/").unwrap_or(tag);
                    tag.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
                })
                .collect(),
        )
    }

    /// The precondition as the header said it, for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            IfMatch::Any => "*".to_owned(),
            IfMatch::Generations(list) if list.is_empty() => "(no generation)".to_owned(),
            IfMatch::Generations(list) => list
                .iter()
                .map(|g| format!("\"{g}\""))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    pub(crate) fn matches(&self, generation: u64) -> bool {
        match self {
            IfMatch::Any => true,
            IfMatch::Generations(list) => list.contains(&generation),
        }
    }
}

/// Who asks for a change, and on what condition.
#[derive(Debug, Clone)]
pub(crate) struct Asked {
    pub source: Source,
    pub if_match: Option<IfMatch>,
}

pub(super) enum Command {
    Reload {
        trigger: Trigger,
        reply: Option<oneshot::Sender<Result<u64, ChangeError>>>,
    },
    SetWeights {
        service: String,
        weights: Weights,
        revert_after: Option<Duration>,
        asked: Asked,
        reply: oneshot::Sender<Result<u64, ChangeError>>,
    },
    SetDrain {
        service: String,
        pool: String,
        endpoint: Option<String>,
        drain: bool,
        asked: Asked,
        reply: oneshot::Sender<Result<u64, ChangeError>>,
    },
    StartShift {
        service: String,
        request: shift::Request,
        asked: Asked,
        reply: oneshot::Sender<Result<u64, ChangeError>>,
    },
    AbortShift {
        service: String,
        asked: Asked,
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
    pub(super) audit: Audit,
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
        self.ask(|reply| Command::Reload {
            trigger,
            reply: Some(reply),
        })
        .await
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

    /// Overrides some of a service's pool weights (the others keep theirs),
    /// for `revert_after` when given; returns the generation in force once
    /// the change is.
    pub(crate) async fn set_weights(
        &self,
        service: &str,
        weights: Weights,
        revert_after: Option<Duration>,
        asked: Asked,
    ) -> Result<u64, ChangeError> {
        self.ask(|reply| Command::SetWeights {
            service: service.to_owned(),
            weights,
            revert_after,
            asked,
            reply,
        })
        .await
    }

    /// Starts a progressive shift of `service`; returns the generation of
    /// its first step.
    pub(crate) async fn start_shift(
        &self,
        service: &str,
        request: shift::Request,
        asked: Asked,
    ) -> Result<u64, ChangeError> {
        self.ask(|reply| Command::StartShift {
            service: service.to_owned(),
            request,
            asked,
            reply,
        })
        .await
    }

    /// Aborts `service`'s shift and rolls its weights back.
    pub(crate) async fn abort_shift(
        &self,
        service: &str,
        asked: Asked,
    ) -> Result<u64, ChangeError> {
        self.ask(|reply| Command::AbortShift {
            service: service.to_owned(),
            asked,
            reply,
        })
        .await
    }

    /// The audit trail of changes.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Sets a pool, or one endpoint of it, to drain (`drain`) or back to
    /// ready; returns the generation in force once the change is.
    pub(crate) async fn set_drain(
        &self,
        service: &str,
        pool: &str,
        endpoint: Option<&str>,
        drain: bool,
        asked: Asked,
    ) -> Result<u64, ChangeError> {
        self.ask(|reply| Command::SetDrain {
            service: service.to_owned(),
            pool: pool.to_owned(),
            endpoint: endpoint.map(str::to_owned),
            drain,
            asked,
            reply,
        })
        .await
    }

    /// Sends the command `make` builds around its reply, and waits for the
    /// answer.
    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<u64, ChangeError>>) -> Command,
    ) -> Result<u64, ChangeError> {
        let (reply, answer) = oneshot::channel();
        self.send(make(reply)).await?;
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

#[cfg(test)]
mod tests {
    use super::IfMatch;

    #[test]
    fn if_match_reads_strong_and_weak_tags_and_star() {
        assert_eq!(IfMatch::parse("*"), IfMatch::Any);
        assert_eq!(IfMatch::parse(" * "), IfMatch::Any);
        assert_eq!(
            IfMatch::parse(r#""7", W/"8" ,"x", 9, "10"#),
            IfMatch::Generations(vec![7, 8])
        );
        for none in [
            "",
            "7",
            "\"\"",
            "W/",
            "\"-1\"",
            "\"99999999999999999999999\"",
            "\"7",
        ] {
            assert_eq!(
                IfMatch::parse(none),
                IfMatch::Generations(vec![]),
                "{none:?}"
            );
        }
        assert!(IfMatch::parse(r#""3""#).matches(3));
        assert!(!IfMatch::parse(r#""3""#).matches(4));
        assert!(IfMatch::Any.matches(4));
        assert_eq!(IfMatch::parse(r#""3", "4""#).describe(), r#""3", "4""#);
    }
}
