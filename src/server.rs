//! The control plane's core: owns the running configuration, the listening
//! sockets and the upstream clients, and is the one place that publishes a new
//! snapshot. A reload validates the whole file first; only a valid file changes
//! anything. Unchanged listeners are never re-bound; added ones open before the
//! new snapshot is published, removed ones close after it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, ConfigError};
use crate::listener::{self, AcceptLoop};
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::upstream::Upstreams;

/// How long shutdown waits for in-flight requests before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listener {name:?}: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Why the configuration is being read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The file (or its directory) changed; skipped if the text is unchanged.
    FileChanged,
    /// SIGHUP: always re-read.
    Signal,
}

/// What the running server reports of itself.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub generation: u64,
    /// Bound address of each listener, by name.
    pub listeners: BTreeMap<String, SocketAddr>,
    /// The last failed reload's problems; cleared by a successful one.
    pub last_reload_error: Option<String>,
    pub reloads_failed: u64,
}

/// A cheap, cloneable view of a running server for callers outside it (the
/// binary, tests, later the admin API).
#[derive(Clone)]
pub struct Handle {
    snapshot: SharedSnapshot,
    status: watch::Receiver<Status>,
    triggers: mpsc::Sender<Trigger>,
    shutdown: CancellationToken,
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
        // The sender lives as long as the server; if it is gone, so is the wait.
        let _ = status.wait_for(|s| done(s)).await;
    }

    /// Asks the server to re-read its configuration file.
    pub async fn reload(&self, trigger: Trigger) {
        if self.triggers.send(trigger).await.is_err() {
            tracing::warn!("reload asked after the server stopped");
        }
    }

    /// Starts a graceful shutdown.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

struct RunningListener {
    name: String,
    local: SocketAddr,
    stop: CancellationToken,
}

pub struct Server {
    path: PathBuf,
    /// Text of the configuration in force, to skip reloads that change nothing.
    text: String,
    snapshot: SharedSnapshot,
    upstreams: Upstreams,
    listeners: HashMap<SocketAddr, RunningListener>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    status: watch::Sender<Status>,
    triggers: mpsc::Receiver<Trigger>,
}

impl Server {
    /// Binds every listener of `config` (read from `path`) and publishes the
    /// first snapshot. Nothing is left bound when it fails.
    pub fn start(path: &Path, text: String, config: Config) -> Result<(Self, Handle), ServerError> {
        let mut upstreams = Upstreams::default();
        let snapshot: SharedSnapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(
            &config,
            1,
            &mut upstreams,
        )));
        let (status, status_rx) = watch::channel(Status::default());
        let (triggers_tx, triggers) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let mut server = Self {
            path: path.to_path_buf(),
            text,
            snapshot: snapshot.clone(),
            upstreams,
            listeners: HashMap::new(),
            tracker: TaskTracker::new(),
            shutdown: shutdown.clone(),
            status,
            triggers,
        };
        server.open_listeners(&config)?;
        server.status.send_modify(|s| s.generation = 1);
        server.publish_listeners();
        let handle = Handle {
            snapshot,
            status: status_rx,
            triggers: triggers_tx,
            shutdown,
        };
        Ok((server, handle))
    }

    /// Loads `path` and starts a server from it.
    pub fn start_from_file(path: &Path) -> Result<(Self, Handle), ServerError> {
        let (text, config) = config::read(path)?;
        Self::start(path, text, config)
    }

    /// Serves until shutdown, reloading on every trigger; then stops accepting,
    /// asks connections to close after their current request, and waits for
    /// them (bounded).
    pub async fn run(mut self) {
        loop {
            tokio::select! {
                trigger = self.triggers.recv() => match trigger {
                    Some(trigger) => self.reload(trigger),
                    None => break,
                },
                () = self.shutdown.cancelled() => break,
            }
        }
        self.shutdown.cancel();
        self.tracker.close();
        tracing::info!("shutting down: waiting for open connections to finish");
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.tracker.len(),
                "connections still open after the shutdown grace period; closing them"
            );
        }
    }

    fn reload(&mut self, trigger: Trigger) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) => {
                self.reload_failed(format!(
                    "{}: cannot read the file: {e}",
                    self.path.display()
                ));
                return;
            }
        };
        if trigger == Trigger::FileChanged && text == self.text {
            return;
        }
        let config = match config::parse(&self.path, text.clone()) {
            Ok(config) => config,
            Err(e) => {
                for line in e.lines() {
                    tracing::error!("{line}");
                }
                self.reload_failed(e.to_string());
                return;
            }
        };
        if let Err(e) = self.open_listeners(&config) {
            self.reload_failed(e.to_string());
            return;
        }
        let generation = self.snapshot.load().generation + 1;
        let snapshot = Snapshot::build(&config, generation, &mut self.upstreams);
        // The one place a snapshot is published.
        self.snapshot.store(Arc::new(snapshot));
        self.close_removed_listeners(&config);
        self.text = text;
        self.status.send_modify(|s| {
            s.generation = generation;
            s.last_reload_error = None;
        });
        self.publish_listeners();
        tracing::info!(generation, ?trigger, "configuration reloaded");
    }

    fn reload_failed(&mut self, error: String) {
        tracing::error!("reload failed; the running configuration is unchanged: {error}");
        self.status.send_modify(|s| {
            s.last_reload_error = Some(error);
            s.reloads_failed += 1;
        });
    }

    /// Binds the listeners of `config` not yet bound. All or nothing: on a
    /// failure the sockets bound by this call are closed again.
    fn open_listeners(&mut self, config: &Config) -> Result<(), ServerError> {
        let mut opened = Vec::new();
        for l in &config.listeners {
            let addr: SocketAddr = l.bind.get_ref().parse().expect("validated bind");
            if let Some(running) = self.listeners.get_mut(&addr) {
                running.name.clone_from(l.name.get_ref());
                continue;
            }
            match listener::bind(addr) {
                Ok(socket) => opened.push((l.name.get_ref().clone(), addr, socket)),
                Err(source) => {
                    return Err(ServerError::Bind {
                        name: l.name.get_ref().clone(),
                        addr,
                        source,
                    })
                }
            }
        }
        for (name, addr, socket) in opened {
            let local = socket.local_addr().unwrap_or(addr);
            let stop = self.shutdown.child_token();
            let accept = AcceptLoop {
                listener: socket,
                bind: addr,
                snapshot: self.snapshot.clone(),
                tracker: self.tracker.clone(),
            };
            tokio::spawn(accept.run(stop.clone()));
            tracing::info!(listener = %name, %local, "listening");
            self.listeners
                .insert(addr, RunningListener { name, local, stop });
        }
        Ok(())
    }

    fn close_removed_listeners(&mut self, config: &Config) {
        self.listeners.retain(|addr, running| {
            let kept = config
                .listeners
                .iter()
                .any(|l| l.bind.get_ref().parse::<SocketAddr>().ok() == Some(*addr));
            if !kept {
                tracing::info!(listener = %running.name, local = %running.local, "closing removed listener");
                running.stop.cancel();
            }
            kept
        });
    }

    fn publish_listeners(&self) {
        let listeners = self
            .listeners
            .values()
            .map(|l| (l.name.clone(), l.local))
            .collect();
        self.status.send_modify(|s| s.listeners = listeners);
    }
}
