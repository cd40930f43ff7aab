//! The control plane's core: owns the running configuration, the weight
//! overrides, the listening sockets and the upstream clients, and is the one
//! place that publishes a new snapshot, and the status with it. Every change — a reload, an API weight
//! change — arrives as a `Command` and is applied by this one task, in order.
//! A reload validates the whole file first; only a valid file changes
//! anything. Unchanged listeners are never re-bound; added ones open before
//! the new snapshot is published, removed ones close after it.

mod changes;
mod drains;
mod handle;
mod shifts;
mod status;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{Audit, Change, EventKind};
use crate::config::{self, Config, ConfigError};
use crate::drain::Activities;
use crate::health::HealthChecks;
use crate::limit::ConnLimit;
use crate::listener::{self, AcceptLoop};
use crate::metrics::Metrics;
use crate::snapshot::{Inputs, SharedSnapshot, Snapshot};
use crate::state::{self, Overrides, StateError};
use crate::tls::{Fingerprint, Material, TlsErrors};
use crate::upstream::Upstreams;
use drains::Drains;
use handle::Command;
pub(crate) use handle::{Asked, IfMatch, Trigger};
pub use handle::{Handle, Options};
pub use status::{ServiceView, Status};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Tls(#[from] TlsErrors),
    #[error("listener {name:?}: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Why a requested change was refused; the admin API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChangeError {
    #[error("unknown service {0:?}")]
    UnknownService(String),
    #[error("service {service:?} has no pool {pool:?}")]
    UnknownPool { service: String, pool: String },
    #[error("pool {pool:?} of service {service:?} has no endpoint {endpoint:?}")]
    UnknownEndpoint {
        service: String,
        pool: String,
        endpoint: String,
    },
    #[error("draining pool {pool:?} would leave service {service:?} with no pool in rotation; set another pool's weight above 0 first")]
    LastPool { service: String, pool: String },
    #[error("every pool of service {0:?} would have weight 0, so it could serve nothing")]
    AllZero(String),
    #[error("read_only is set: the configuration file is the only source of truth")]
    ReadOnly,
    #[error("If-Match {given} does not match the generation in force, {current}; read the status again and retry")]
    Stale { given: String, current: u64 },
    #[error("service {service:?} is already shifting to pool {to:?} (step {step}); abort it first (DELETE /v1/services/{service}/shift)")]
    ShiftRunning {
        service: String,
        to: String,
        step: usize,
    },
    #[error("service {0:?} has no shift running")]
    NoShift(String),
    #[error("{0}")]
    BadShift(String),
    #[error("the change was not applied: {0}")]
    Persist(#[source] StateError),
    #[error("reload failed; the running configuration is unchanged: {0}")]
    Reload(String),
    #[error("the server is shutting down")]
    Stopped,
}

struct RunningListener {
    name: String,
    local: SocketAddr,
    stop: CancellationToken,
    /// Its connection limit, resized when `max_connections` changes.
    limit: Arc<ConnLimit>,
}

/// Longest the exit waits for the audit log to write what it was given.
const AUDIT_SETTLE: Duration = Duration::from_secs(2);

/// How often idle upstream connections are reaped.
const REAP_EVERY: Duration = Duration::from_secs(1);

pub struct Server {
    path: PathBuf,
    /// Text of the configuration in force, to skip reloads that change nothing.
    text: String,
    config: Config,
    /// What the configuration's TLS settings read from files.
    tls: Material,
    /// What the admin API's handshakes use, from `tls`; whether it serves
    /// HTTPS at all is decided at start.
    admin_tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    /// The text and TLS files of the last reload that failed: the same
    /// again is not tried again on a file event, nor reported twice.
    failed: Option<(String, Fingerprint)>,
    overrides: Overrides,
    /// Running and last shifts, by service.
    shifts: shifts::Shifts,
    /// When each `revert_after` in force comes due, by service, with the
    /// `at` of the revert it is for.
    reverts: HashMap<String, (tokio::time::Instant, String)>,
    audit: Audit,
    /// A change is in force that the state file could not take yet.
    unsaved: bool,
    /// When each service's weights in the file last changed (RFC 3339).
    file_changed_at: HashMap<String, String>,
    snapshot: SharedSnapshot,
    upstreams: Upstreams,
    checks: HealthChecks,
    activities: Activities,
    drains: Drains,
    metrics: Metrics,
    listeners: HashMap<SocketAddr, RunningListener>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    status: watch::Sender<Status>,
    commands: mpsc::Receiver<Command>,
    data_plane: tokio::runtime::Handle,
}

impl Server {
    /// Loads `path`, restores overrides from the state file (unless told not
    /// to, or read-only), binds every listener and publishes the first
    /// snapshot. Nothing is left bound when it fails.
    pub async fn start(path: &Path, options: Options) -> Result<(Self, Handle), ServerError> {
        let (text, config) = config::read(path)?;
        let tls = Material::load(&config)?;
        let overrides = match &config.admin.state_file {
            Some(file) if !options.ignore_state && !config.admin.read_only => {
                let mut overrides = Overrides::load(file)?;
                for service in overrides.reconcile(&config).0 {
                    tracing::info!(
                        service,
                        "the file's weights changed since the saved override; the file wins"
                    );
                }
                overrides
            }
            _ => Overrides::default(),
        };
        let metrics = Metrics::new();
        let audit = Audit::new(metrics.clone());
        audit.configure(&config.admin);
        let snapshot: SharedSnapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
        let (status, status_rx) = watch::channel(Status::default());
        let (commands_tx, commands) = mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let now = now_rfc3339();
        let mut server = Self {
            path: path.to_path_buf(),
            text,
            file_changed_at: config
                .services
                .iter()
                .map(|s| (s.name.clone(), now.clone()))
                .collect(),
            config,
            admin_tls: tls.admin.clone().map(ArcSwap::new).map(Arc::new),
            tls,
            failed: None,
            overrides,
            shifts: shifts::Shifts::default(),
            reverts: HashMap::new(),
            audit: audit.clone(),
            unsaved: false,
            snapshot: snapshot.clone(),
            upstreams: Upstreams::default(),
            checks: HealthChecks::new(audit.clone()),
            activities: Activities::default(),
            drains: Drains::default(),
            metrics: metrics.clone(),
            listeners: HashMap::new(),
            tracker: TaskTracker::new(),
            shutdown: shutdown.clone(),
            status,
            commands,
            data_plane: options.data_plane,
        };
        Material::warn_unverified(&server.config);
        server.publish(1);
        server.resume_shifts();
        server.arm_reverts();
        // Listeners open once the first health round has run (bounded), so
        // no client meets a service whose endpoints are not checked yet.
        let limit = server.checks.longest_timeout() + Duration::from_secs(1);
        server.checks.first_round(limit).await;
        let config = server.config.clone();
        if let Err(e) = server.open_listeners(&config) {
            server.checks.stop();
            return Err(e);
        }
        server.publish_listeners();
        if !server.overrides.is_empty() {
            tracing::info!("weight overrides restored from the state file");
        }
        let handle = Handle {
            snapshot,
            status: status_rx,
            commands: commands_tx,
            shutdown,
            metrics,
            audit,
        };
        Ok((server, handle))
    }

    /// The admin API's TLS, when `[admin] tls` was set at start: its
    /// certificate files reload like the listeners'.
    pub fn admin_tls(&self) -> Option<Arc<ArcSwap<rustls::ServerConfig>>> {
        self.admin_tls.clone()
    }

    /// The `[admin]` section the server started with.
    pub fn admin_config(&self) -> &config::Admin {
        &self.config.admin
    }

    /// Serves until shutdown, applying commands in order; then stops
    /// accepting, asks connections to close after their current request, and
    /// waits for them (bounded).
    pub async fn run(mut self) {
        // Idle upstream connections are checked for a close by their
        // upstream, and aged out, on this tick.
        let mut reap = tokio::time::interval(REAP_EVERY);
        reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = self.next_due();
            let wake = due.unwrap_or_else(far_future);
            tokio::select! {
                _ = reap.tick() => {
                    self.upstreams.reap();
                    self.retry_save();
                    // A running step's figures so far, for status.
                    if self.shifts.any_running() {
                        self.refresh_shifts();
                    }
                }
                () = tokio::time::sleep_until(wake), if due.is_some() => {
                    self.judge_due();
                    self.revert_due();
                }
                command = self.commands.recv() => match command {
                    Some(Command::Reload { trigger, reply }) => {
                        let result = self.reload(trigger);
                        if let Some(reply) = reply {
                            _ = reply.send(result);
                        }
                    }
                    Some(Command::SetWeights { service, weights, revert_after, asked, reply }) => {
                        let result = self
                            .precondition(&asked)
                            .and_then(|()| self.set_weights(&service, weights, revert_after, &asked.source));
                        _ = reply.send(result);
                    }
                    Some(Command::SetDrain { service, pool, endpoint, drain, asked, reply }) => {
                        let result = self.precondition(&asked).and_then(|()| {
                            self.set_drain(&service, &pool, endpoint.as_deref(), drain, &asked.source)
                        });
                        _ = reply.send(result);
                    }
                    Some(Command::StartShift { service, request, asked, reply }) => {
                        let result = self
                            .precondition(&asked)
                            .and_then(|()| self.start_shift(&service, &request, &asked.source));
                        _ = reply.send(result);
                    }
                    Some(Command::AbortShift { service, asked, reply }) => {
                        let result = self
                            .precondition(&asked)
                            .and_then(|()| self.abort_shift(&service, &asked.source));
                        _ = reply.send(result);
                    }
                    None => break,
                },
                () = self.shutdown.cancelled() => break,
            }
        }
        self.shutdown.cancel();
        self.checks.stop();
        self.drains.stop();
        self.tracker.close();
        // In-flight work may finish within the largest drain_timeout.
        let grace = self
            .config
            .services
            .iter()
            .map(|s| s.drain_timeout)
            .max()
            .unwrap_or_default();
        tracing::info!(
            ?grace,
            "shutting down: waiting for open connections to finish"
        );
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.tracker.len(),
                "connections still open after the shutdown grace period; closing them"
            );
        }
        // The last events (a drain, a rollback) reach the audit log before
        // the process exits; a stuck disk delays the exit at most this long.
        let audit = self.audit.clone();
        let settled = tokio::task::spawn_blocking(move || audit.settle(AUDIT_SETTLE)).await;
        if !matches!(settled, Ok(true)) {
            tracing::warn!("the audit log did not write every event before exit");
        }
    }

    fn reload(&mut self, trigger: Trigger) -> Result<u64, ChangeError> {
        if trigger == Trigger::Signal {
            // SIGHUP is also how log rotation asks for the audit log anew.
            self.audit.reopen();
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) => {
                return Err(self.reload_failed(
                    format!("{}: cannot read the file: {e}", self.path.display()),
                    trigger,
                ))
            }
        };
        let generation = self.snapshot.load().generation;
        let loaded = config::parse(&self.path, text.clone())
            .map_err(|e| (e.to_string(), Fingerprint::new()))
            .and_then(|config| {
                // Certificates and keys are read again too: a rotated pair is
                // a change even when the text is not.
                match Material::load(&config) {
                    Ok(tls) => Ok((config, tls)),
                    Err(e) => Err((e.to_string(), e.fingerprint().clone())),
                }
            });
        let on_file_event = trigger == Trigger::FileChanged;
        let (config, tls) = match loaded {
            Ok(loaded) => loaded,
            Err((error, read)) => {
                let seen = (text, read);
                if on_file_event && self.failed.as_ref() == Some(&seen) {
                    // An event elsewhere in the directory: this failure was
                    // reported when these very files came.
                    return Err(ChangeError::Reload(error));
                }
                self.failed = Some(seen);
                return Err(self.reload_failed(error, trigger));
            }
        };
        self.failed = None;
        if on_file_event && text == self.text && tls.fingerprint() == self.tls.fingerprint() {
            // Back to what is in force (say, a bad edit undone): nothing to
            // apply, and the last failure no longer describes the files.
            self.status.send_modify(|s| s.last_reload_error = None);
            return Ok(generation);
        }
        if let Err(e) = self.open_listeners(&config) {
            return Err(self.reload_failed(e.to_string(), trigger));
        }
        if config.runtime != self.config.runtime
            || config.admin.listen != self.config.admin.listen
            || config.admin.token_file != self.config.admin.token_file
            || config.admin.tls.is_some() != self.admin_tls.is_some()
        {
            tracing::warn!(
                "[runtime], [admin] listen and token_file, and turning [admin] tls on or off, take effect at the next start"
            );
        }
        let source = trigger.source();
        if config.admin.read_only && !self.overrides.is_empty() {
            // The file is now the only source of truth: API changes end.
            tracing::info!(
                "read_only is on: weight overrides, drains and shifts set through the API end"
            );
            self.overrides = Overrides::default();
            self.save_state_for(&config);
        }
        let now = now_rfc3339();
        let mut weights_before = BTreeMap::new();
        let mut weights_after = BTreeMap::new();
        for service in &config.services {
            let name = &service.name;
            let before = self.config.services.iter().find(|s| s.name == *name);
            if before.map(state::file_weights) != Some(state::file_weights(service)) {
                self.file_changed_at.insert(name.clone(), now.clone());
                weights_before.insert(name.clone(), before.map(state::file_weights));
                weights_after.insert(name.clone(), state::file_weights(service));
            }
        }
        let (ended, shifts_ended) = self.overrides.reconcile(&config);
        for service in &ended {
            tracing::info!(
                service,
                "the file changed this service's weights; its API override ends"
            );
        }
        self.config = config;
        self.text = text;
        if let (Some(admin), Some(new)) = (&self.admin_tls, &tls.admin) {
            admin.store(new.clone());
        }
        self.tls = tls;
        self.audit.configure(&self.config.admin);
        if !ended.is_empty() {
            self.save_state();
        }
        self.status.send_modify(|s| s.last_reload_error = None);
        Material::warn_unverified(&self.config);
        tracing::info!(
            generation = generation + 1,
            ?trigger,
            "configuration reloaded"
        );
        // The cause before its effects: the reload, then the shifts it ended.
        self.audit.record(
            Change::new(
                EventKind::Reload,
                source.clone(),
                format!("configuration reloaded from {}", self.path.display()),
            )
            .generation(generation + 1)
            .before(serde_json::json!({ "generation": generation, "file_weights": weights_before }))
            .after(
                serde_json::json!({ "generation": generation + 1, "file_weights": weights_after }),
            ),
        );
        let read_only = self.config.admin.read_only;
        self.end_superseded(
            |service| {
                if read_only {
                    "read_only is on: the file is the only source of truth".to_owned()
                } else if ended.iter().any(|s| s == service) {
                    "the configuration file changed the service's weights (newest wins)".to_owned()
                } else if shifts_ended.iter().any(|s| s == service) {
                    "the configuration file no longer has the target pool".to_owned()
                } else {
                    "the service's weights changed".to_owned()
                }
            },
            &source,
            generation + 1,
        );
        self.reverts
            .retain(|name, _| self.overrides.get(name).is_some_and(|o| o.revert.is_some()));
        self.publish(generation + 1);
        self.close_removed_listeners();
        self.publish_listeners();
        self.metrics.config_reloads_success.inc();
        Ok(generation + 1)
    }

    fn reload_failed(&mut self, error: String, trigger: Trigger) -> ChangeError {
        for line in error.lines() {
            tracing::error!("{}", line.trim());
        }
        tracing::error!("reload failed; the running configuration is unchanged");
        self.audit.record(
            Change::new(
                EventKind::ReloadFailed,
                trigger.source(),
                format!("reload failed; the running configuration is unchanged: {error}"),
            )
            .generation(self.snapshot.load().generation),
        );
        self.metrics.config_reloads_failure.inc();
        self.status.send_modify(|s| {
            s.last_reload_error = Some(error.clone());
            s.reloads_failed += 1;
        });
        ChangeError::Reload(error)
    }

    fn save_state(&self) {
        self.save_state_for(&self.config);
    }

    fn save_state_for(&self, config: &Config) {
        if let Some(file) = &config.admin.state_file {
            if let Err(e) = self.overrides.save(file) {
                tracing::error!("{e}");
            }
        }
    }

    /// Builds the snapshot for the current configuration and overrides, and
    /// publishes it: the one place a snapshot is stored.
    fn publish(&mut self, generation: u64) {
        let snapshot = Arc::new(Snapshot::build(
            &self.config,
            generation,
            Inputs {
                previous: &self.snapshot.load(),
                overrides: &self.overrides,
                upstreams: &mut self.upstreams,
                checks: &mut self.checks,
                activities: &mut self.activities,
                metrics: &self.metrics,
                tls: &self.tls,
            },
        ));
        let certs: Vec<(&str, &str, i64)> = self
            .config
            .listeners
            .iter()
            .filter_map(|l| Some((l.name.as_str(), self.tls.listeners.get(&l.bind)?)))
            .flat_map(|(name, tls)| {
                tls.certs
                    .iter()
                    .map(move |c| (name, c.subject.as_str(), c.not_after))
            })
            .collect();
        self.metrics.set_cert_expiry(&certs);
        let kept: HashSet<(&str, &str)> = snapshot
            .services
            .iter()
            .flat_map(|s| s.pools.iter().map(move |p| (&*s.name, &*p.name)))
            .collect();
        for pool in snapshot.services.iter().flat_map(|s| s.pools.iter()) {
            pool.metrics.set_weight(pool.weight);
        }
        let previous = self.snapshot.swap(snapshot.clone());
        self.drains.update(&previous, &snapshot);
        for listener in self.listeners.values() {
            listener.limit.resize(self.config.limits.max_connections);
        }
        for service in &previous.services {
            for pool in service.pools.iter() {
                let key = (&*service.name, &*pool.name);
                if !kept.contains(&key) {
                    self.metrics.forget_pool(&service.name, &pool.name);
                }
                for endpoint in pool.endpoints.iter() {
                    let stays = snapshot.service(&service.name).is_some_and(|s| {
                        s.pools.iter().any(|p| {
                            p.name == pool.name
                                && p.endpoints.iter().any(|e| e.address == endpoint.address)
                        })
                    });
                    if !stays {
                        self.metrics
                            .forget_endpoint(&service.name, &pool.name, &endpoint.address);
                    }
                }
            }
        }
        self.activities.retain(|s, p| kept.contains(&(s, p)));
        self.metrics.config_generation.set(generation as i64);
        let services = status::services(&self.config, &self.overrides, &self.file_changed_at);
        let names: HashSet<&str> = self
            .config
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        self.shifts
            .retain(|name| names.contains(name), &self.metrics);
        for name in &names {
            if !self.shifts.has(name) {
                self.metrics.set_shift_state(name, "idle");
            }
        }
        let shifts = self.shift_views();
        // The status and the snapshot it describes go out together, so a
        // reader of the status never joins two generations.
        self.status.send_modify(|s| {
            s.snapshot = snapshot;
            s.services = services;
            s.shifts = shifts;
            s.read_only = self.config.admin.read_only;
            s.config_file = self.path.clone();
            s.tls_dirs = self.tls.dirs();
        });
    }

    /// Binds the listeners of `config` not yet bound. All or nothing: on a
    /// failure the sockets bound by this call are closed again.
    fn open_listeners(&mut self, config: &Config) -> Result<(), ServerError> {
        // Sockets register with the runtime current when they are made: the
        // data plane's, so connections are driven by its threads.
        let _data_plane = self.data_plane.enter();
        let mut opened = Vec::new();
        for l in &config.listeners {
            let addr = l.bind;
            if let Some(running) = self.listeners.get_mut(&addr) {
                if running.name != l.name {
                    self.metrics.forget_listener(&running.name);
                    running.name.clone_from(&l.name);
                }
                continue;
            }
            match listener::bind(addr) {
                Ok(socket) => opened.push((l.name.clone(), addr, socket)),
                Err(source) => {
                    return Err(ServerError::Bind {
                        name: l.name.clone(),
                        addr,
                        source,
                    })
                }
            }
        }
        for (name, addr, socket) in opened {
            let local = socket.local_addr().unwrap_or(addr);
            let stop = self.shutdown.child_token();
            let limit = Arc::new(ConnLimit::new(config.limits.max_connections));
            let accept = AcceptLoop {
                listener: socket,
                bind: addr,
                snapshot: self.snapshot.clone(),
                tracker: self.tracker.clone(),
                limit: limit.clone(),
            };
            self.data_plane.spawn(accept.run(stop.clone()));
            tracing::info!(listener = %name, %local, "listening");
            self.listeners.insert(
                addr,
                RunningListener {
                    name,
                    local,
                    stop,
                    limit,
                },
            );
        }
        Ok(())
    }

    fn close_removed_listeners(&mut self) {
        let config = &self.config;
        let metrics = &self.metrics;
        let mut removed = false;
        self.listeners.retain(|addr, running| {
            let kept = config.listeners.iter().any(|l| l.bind == *addr);
            if !kept {
                tracing::info!(listener = %running.name, local = %running.local, "closing removed listener");
                running.stop.cancel();
                metrics.forget_listener(&running.name);
                removed = true;
            }
            kept
        });
        if removed {
            self.publish_listeners();
        }
    }

    fn publish_listeners(&self) {
        let listeners: BTreeMap<String, SocketAddr> = self
            .listeners
            .values()
            .map(|l| (l.name.clone(), l.local))
            .collect();
        self.status.send_modify(|s| s.listeners = listeners);
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// A deadline that never comes, for a timer with nothing to wait for.
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}
