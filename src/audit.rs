//! The audit trail: every change to what routes where — weights, drains,
//! shifts, reloads, endpoint health — recorded as an `Event` with its time,
//! its source and what it changed from and to. The last `RECENT` are kept for
//! `GET /v1/events`. Recording never waits: it takes a short lock to append
//! to the ring and hands the event to the sinks configured — the audit log
//! (`log`) and the webhooks (`webhook`) — which do their I/O elsewhere. This
//! module owns the events and which sinks are in force; it never writes a
//! file or opens a connection itself.

pub(crate) mod kind;
mod log;
mod webhook;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

pub use kind::EventKind;
use log::AuditLog;
use webhook::Webhook;

/// Events kept for `GET /v1/events`.
pub const RECENT: usize = 500;

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An admin API call, from this client address.
    Api(std::net::SocketAddr),
    /// The configuration file, reloaded on a change to it.
    File,
    /// SIGHUP.
    Signal,
    /// The shift controller.
    Shift,
    /// The active health checker.
    Health,
    /// A `revert_after` deadline.
    RevertAfter,
    /// Start-up: state restored from the state file.
    Start,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Api(_) => "api",
            Source::File => "file",
            Source::Signal => "signal",
            Source::Shift => "shift",
            Source::Health => "health",
            Source::RevertAfter => "revert_after",
            Source::Start => "start",
        }
    }

    fn client(&self) -> Option<String> {
        match self {
            Source::Api(addr) => Some(addr.to_string()),
            _ => None,
        }
    }
}

/// One recorded change, as `GET /v1/events`, the audit log and webhooks
/// carry it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Increases by one with every event of this process.
    pub seq: u64,
    /// RFC 3339, milliseconds.
    pub time: String,
    pub kind: EventKind,
    /// "api", "file", "signal", "shift", "health", "revert_after", "start".
    pub source: &'static str,
    /// The API client's address, for `source = "api"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The generation in force after the change, when it made one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    pub before: Value,
    pub after: Value,
    /// One sentence saying what happened and why.
    pub message: String,
}

/// An event being described, before it is recorded.
#[derive(Debug, Clone)]
pub struct Change {
    kind: EventKind,
    source: Source,
    service: Option<String>,
    pool: Option<String>,
    endpoint: Option<String>,
    generation: Option<u64>,
    before: Value,
    after: Value,
    message: String,
}

impl Change {
    pub fn new(kind: EventKind, source: Source, message: impl Into<String>) -> Self {
        Self {
            kind,
            source,
            service: None,
            pool: None,
            endpoint: None,
            generation: None,
            before: Value::Null,
            after: Value::Null,
            message: message.into(),
        }
    }

    pub fn service(mut self, name: &str) -> Self {
        self.service = Some(name.to_owned());
        self
    }

    pub fn pool(mut self, name: &str) -> Self {
        self.pool = Some(name.to_owned());
        self
    }

    pub fn endpoint(mut self, address: &str) -> Self {
        self.endpoint = Some(address.to_owned());
        self
    }

    pub fn generation(mut self, generation: u64) -> Self {
        self.generation = Some(generation);
        self
    }

    pub fn before(mut self, value: impl Serialize) -> Self {
        self.before = serde_json::to_value(value).unwrap_or(Value::Null);
        self
    }

    pub fn after(mut self, value: impl Serialize) -> Self {
        self.after = serde_json::to_value(value).unwrap_or(Value::Null);
        self
    }
}

/// The audit trail of one server: cheap to clone, shared by the control
/// plane and the health checkers.
#[derive(Clone, Default)]
pub struct Audit {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    seq: AtomicU64,
    /// Locked to number an event, append it and hand it to the sinks, so
    /// the ring, the file and each webhook see events in `seq` order.
    recent: Mutex<VecDeque<Arc<Event>>>,
    /// Locked after `recent` when both are; never across an `.await`.
    sinks: Mutex<Sinks>,
    metrics: crate::metrics::Metrics,
}

/// Where events go besides the ring, as `[admin]` last set it.
#[derive(Default)]
struct Sinks {
    log: Option<AuditLog>,
    webhooks: Vec<Webhook>,
}

impl Sinks {
    /// Offers `event` to every sink; never waits.
    fn send(&self, event: &Arc<Event>) {
        if let Some(log) = &self.log {
            log.send(event);
        }
        for webhook in &self.webhooks {
            webhook.send(event);
        }
    }
}

impl Audit {
    /// An audit trail counting its events in `metrics`.
    pub fn new(metrics: crate::metrics::Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                metrics,
                ..Inner::default()
            }),
        }
    }

    /// Records a change: stamps it, keeps it among the recent ones and
    /// hands it to the sinks. Never waits on I/O.
    pub fn record(&self, change: Change) -> Arc<Event> {
        let mut recent = self.inner.recent.lock().expect("audit lock");
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let event = Arc::new(Event {
            seq,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            kind: change.kind,
            source: change.source.as_str(),
            client: change.source.client(),
            service: change.service,
            pool: change.pool,
            endpoint: change.endpoint,
            generation: change.generation,
            before: change.before,
            after: change.after,
            message: change.message,
        });
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(event.clone());
        self.inner
            .sinks
            .lock()
            .expect("audit sinks lock")
            .send(&event);
        drop(recent);
        self.inner.metrics.audit_event(event.kind.as_str());
        event
    }

    /// Puts the sinks of `admin` in force: an audit log writer for
    /// `audit_log` (the one running is kept while the path is the same; a
    /// replaced one finishes writing its queue to the old path) and a
    /// sender per `[[admin.webhook]]` (one running with the same settings
    /// is kept; the others stop, and what they had queued is dropped).
    /// Called at start and after every reload, within an async runtime; a
    /// sink that cannot start is logged and left out.
    pub(crate) fn configure(&self, admin: &crate::config::Admin) {
        let metrics = &self.inner.metrics;
        let mut sinks = self.inner.sinks.lock().expect("audit sinks lock");
        let log = match sinks.log.take() {
            Some(log) if Some(log.path()) == admin.audit_log.as_deref() => Some(log),
            _ => admin.audit_log.as_deref().and_then(|path| {
                AuditLog::start(path, metrics)
                    .inspect(|_| tracing::info!(path = %path.display(), "audit log: appending events"))
                    .inspect_err(|error| {
                        tracing::error!(path = %path.display(), %error, "audit log: cannot start its writer");
                    })
                    .ok()
            }),
        };
        let mut running = std::mem::take(&mut sinks.webhooks);
        let webhooks = admin
            .webhooks
            .iter()
            .filter_map(|config| {
                if let Some(at) = running.iter().position(|w| w.config() == config) {
                    return Some(running.swap_remove(at));
                }
                let label = webhook::label(&config.url);
                Webhook::start(config, metrics)
                    .inspect(|_| tracing::info!(webhook = %label, "webhook: sending events"))
                    .inspect_err(|error| {
                        tracing::error!(webhook = %label, %error, "webhook: cannot start");
                    })
                    .ok()
            })
            .collect();
        *sinks = Sinks { log, webhooks };
        drop(sinks);
        // Webhooks no longer configured stop here, outside the lock.
        drop(running);
    }

    /// Waits, at most `limit`, until the audit log has written every event
    /// recorded so far: at shutdown, so the last changes reach the file.
    /// Blocks: call it off the async runtime.
    pub fn settle(&self, limit: std::time::Duration) -> bool {
        let marker = self
            .inner
            .sinks
            .lock()
            .expect("audit sinks lock")
            .log
            .as_ref()
            .map(AuditLog::marker);
        match marker {
            None => true,
            Some(None) => false,
            Some(Some(wait)) => wait.recv_timeout(limit).is_ok(),
        }
    }

    /// Has the audit log opened afresh at its path before its next line:
    /// SIGHUP, after an outside tool rotated the file.
    pub fn reopen(&self) {
        if let Some(log) = &self.inner.sinks.lock().expect("audit sinks lock").log {
            log.reopen();
        }
    }

    /// At most `limit` events, oldest first: the most recent ones, or with
    /// `since` (a `seq`) the first ones after it, so a poller that fell
    /// behind reads on from where it was instead of skipping ahead.
    pub fn recent(&self, limit: usize, since: Option<u64>) -> Vec<Arc<Event>> {
        let recent = self.inner.recent.lock().expect("audit lock");
        match since {
            Some(since) => recent
                .iter()
                .filter(|e| e.seq > since)
                .take(limit)
                .cloned()
                .collect(),
            None => {
                let skip = recent.len().saturating_sub(limit);
                recent.iter().skip(skip).cloned().collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_their_names() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                Value::String(kind.as_str().to_owned())
            );
        }
        assert_eq!(EventKind::parse("nope"), None);
    }

    #[test]
    fn the_ring_keeps_the_newest_in_order() {
        let audit = Audit::default();
        for i in 0..RECENT + 10 {
            audit.record(Change::new(
                EventKind::Weights,
                Source::File,
                format!("{i}"),
            ));
        }
        let all = audit.recent(usize::MAX, None);
        assert_eq!(all.len(), RECENT);
        assert_eq!(all[0].seq, 11);
        assert_eq!(all.last().unwrap().seq, (RECENT + 10) as u64);
        let last_two = audit.recent(2, None);
        assert_eq!(last_two[1].seq, (RECENT + 10) as u64);
        assert_eq!(audit.recent(100, Some((RECENT + 8) as u64)).len(), 2);
        // Behind by more than the limit: the first ones after `since`.
        let next = audit.recent(3, Some(20));
        let seqs: Vec<u64> = next.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [21, 22, 23]);
    }

    const LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

    fn admin(audit_log: Option<&std::path::Path>, webhooks: &[&str]) -> crate::config::Admin {
        crate::config::Admin {
            listen: ([127, 0, 0, 1], 0).into(),
            token_file: None,
            read_only: false,
            state_file: None,
            tls: None,
            audit_log: audit_log.map(std::path::Path::to_path_buf),
            webhooks: webhooks
                .iter()
                .map(|url| crate::config::Webhook {
                    url: url.parse().unwrap(),
                    // No event recorded here is of this kind: nothing is sent.
                    events: vec![EventKind::Drain],
                    timeout: LIMIT,
                    retries: 0,
                })
                .collect(),
        }
    }

    impl Audit {
        /// The writer in force and how many times it opened its file, once
        /// every event recorded before is written.
        fn flush_log(&self) -> Option<(usize, u64)> {
            let sinks = self.inner.sinks.lock().unwrap();
            sinks.log.as_ref().map(|log| (log.id(), log.flush(LIMIT)))
        }

        fn webhook_tasks(&self) -> Vec<tokio::task::AbortHandle> {
            let sinks = self.inner.sinks.lock().unwrap();
            sinks.webhooks.iter().map(Webhook::task).collect()
        }
    }

    fn lines(path: &std::path::Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn configure_keeps_unchanged_sinks_and_replaces_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        let (one, two) = ("http://127.0.0.1:9/one", "http://127.0.0.1:9/two");
        let audit = Audit::default();
        audit.configure(&admin(Some(&a), &[one]));
        let (writer, _) = audit.flush_log().unwrap();
        let hooks = audit.webhook_tasks();
        audit.record(Change::new(EventKind::Weights, Source::File, "first"));

        audit.configure(&admin(Some(&a), &[one]));
        assert_eq!(
            audit.flush_log(),
            Some((writer, 1)),
            "the writer was replaced"
        );
        let kept = audit.webhook_tasks();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].id(), hooks[0].id(), "the webhook was replaced");

        audit.configure(&admin(Some(&b), &[two, one]));
        audit.record(Change::new(EventKind::Weights, Source::File, "second"));
        let (moved, opens) = audit.flush_log().unwrap();
        assert_ne!(moved, writer);
        assert_eq!(opens, 1);
        let now = audit.webhook_tasks();
        assert_eq!(now.len(), 2);
        assert!(now.iter().any(|t| t.id() == hooks[0].id()));
        assert_eq!(lines(&b).len(), 1);
        assert_eq!(lines(&b)[0]["seq"], 2);
        // The replaced writer had written its event before it ended.
        assert_eq!(lines(&a).len(), 1);
        assert_eq!(lines(&a)[0]["seq"], 1);

        audit.configure(&admin(None, &[]));
        assert_eq!(audit.flush_log(), None);
        assert!(audit.webhook_tasks().is_empty());
        tokio::time::timeout(LIMIT, async {
            while !now.iter().all(tokio::task::AbortHandle::is_finished) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the removed webhooks' tasks ended");
        audit.record(Change::new(EventKind::Weights, Source::File, "third"));
        audit.reopen();
        assert_eq!(audit.recent(10, None).len(), 3);
    }

    #[tokio::test]
    async fn reopen_reaches_the_audit_log_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::default();
        audit.configure(&admin(Some(&path), &[]));
        audit.record(Change::new(EventKind::Weights, Source::File, "before"));
        assert_eq!(audit.flush_log().map(|(_, opens)| opens), Some(1));
        audit.reopen();
        audit.record(Change::new(EventKind::Weights, Source::File, "after"));
        assert_eq!(audit.flush_log().map(|(_, opens)| opens), Some(2));
        assert_eq!(lines(&path).len(), 2);
    }

    #[tokio::test]
    async fn settle_returns_once_every_event_is_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::default();
        assert!(audit.settle(LIMIT), "no audit log: nothing to wait for");
        audit.configure(&admin(Some(&path), &[]));
        for i in 0..200 {
            audit.record(Change::new(
                EventKind::Weights,
                Source::File,
                format!("{i}"),
            ));
        }
        let settle = audit.clone();
        assert!(tokio::task::spawn_blocking(move || settle.settle(LIMIT))
            .await
            .unwrap());
        assert_eq!(lines(&path).len(), 200);
    }
}
