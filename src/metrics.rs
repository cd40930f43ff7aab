//! Prometheus metrics. One `Metrics` per server owns a registry and the metric
//! families named in DESIGN.md; label values are resolved into handles when a
//! snapshot is built (`PoolMetrics`, `ListenerMetrics`), so a request only
//! touches atomics. This module defines and renders metrics; it decides
//! nothing about routing.

use std::time::Duration;

use http::StatusCode;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Request latency buckets, in seconds: from a fast loopback hop to a slow
/// cross-cluster request.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

const CODES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// Why an upstream request failed, as the `kind` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamErrorKind {
    Connect = 0,
    Timeout = 1,
    Reset = 2,
}

const ERROR_KINDS: [&str; 3] = ["connect", "timeout", "reset"];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    connections_active: IntGaugeVec,
    upstream_connections_active: IntGaugeVec,
    pool_weight: IntGaugeVec,
    rejected: IntCounterVec,
    retries: IntCounterVec,
    drain_closed: IntCounterVec,
    endpoint_healthy: IntGaugeVec,
    health_checks: IntCounterVec,
    failovers: IntCounterVec,
    unavailable: IntCounterVec,
    tcp_connections: IntCounterVec,
    tcp_bytes: IntCounterVec,
    connections_refused: IntCounterVec,
    tls_handshakes: IntCounterVec,
    tls_sessions: IntCounterVec,
    tls_cert_expiry: IntGaugeVec,
    shift_state: IntGaugeVec,
    shift_step: IntGaugeVec,
    shift_percent: IntGaugeVec,
    shift_judged_requests: IntGaugeVec,
    shift_judged_error_rate: GaugeVec,
    shift_judged_p99: GaugeVec,
    audit_events: IntCounterVec,
    pub(crate) audit_log_errors: IntCounter,
    webhook_deliveries: IntCounterVec,
    pub(crate) config_reloads_success: IntCounter,
    pub(crate) config_reloads_failure: IntCounter,
    pub(crate) config_generation: IntGauge,
}

/// Handles for one pool of one service.
#[derive(Debug, Clone)]
pub(crate) struct PoolMetrics {
    requests: [IntCounter; 4],
    duration: Histogram,
    errors: [IntCounter; 3],
    pub upstream_connections: IntGauge,
    weight: IntGauge,
    retries: IntCounter,
    /// Work still in flight when a drain deadline closed it.
    pub drain_closed: IntCounter,
}

/// Handles for one endpoint of one pool.
#[derive(Debug, Clone)]
pub(crate) struct EndpointMetrics {
    /// The service and pool these are of.
    pub owner: std::sync::Arc<(String, String)>,
    healthy: IntGauge,
    /// Active checks: passed, failed.
    checks: [IntCounter; 2],
}

/// Handles for one service.
#[derive(Debug, Clone)]
pub(crate) struct ServiceMetrics {
    /// Times traffic moved to a weight-0 pool because the weighted ones died.
    pub failovers: IntCounter,
    /// Requests answered 503 because no endpoint was healthy.
    pub unavailable: IntCounter,
}

/// The states `cutover_shift_state` names, in its `state` label's terms.
pub(crate) const SHIFT_STATES: [&str; 4] = ["idle", "running", "rolled_back", "done"];

/// Handles for one service's progressive shift.
#[derive(Debug, Clone)]
pub(crate) struct ShiftMetrics {
    /// Step in force, from 1; 0 when no shift runs.
    pub step: IntGauge,
    /// The target's share of traffic at that step, in percent.
    pub percent: IntGauge,
    /// The figures of the last step judged (`judged`).
    judged_requests: IntGauge,
    judged_error_rate: Gauge,
    judged_p99: Gauge,
}

impl ShiftMetrics {
    /// Sets the figures of a step just judged.
    pub(crate) fn judged(&self, figures: &crate::shift::Figures) {
        self.judged_requests.set(figures.requests as i64);
        self.judged_error_rate.set(figures.error_rate);
        self.judged_p99.set(figures.p99_seconds.unwrap_or(0.0));
    }
}

/// Handles for one listener.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    pub(crate) connections_active: IntGauge,
    /// tcp: bytes relayed from clients (`in`) and to them (`out`).
    pub(crate) tcp_bytes: Option<[IntCounter; 2]>,
    /// Requests the proxy answered itself for bad input, by status.
    rejected: IntCounterVec,
    /// Connections closed before they were routed, by reason.
    refused: IntCounterVec,
    /// TLS-terminating listeners: their handshakes.
    pub(crate) tls: Option<Box<TlsCounters>>,
    listener: String,
}

/// TLS handshakes of one terminating listener.
#[derive(Debug, Clone)]
pub(crate) struct TlsCounters {
    succeeded: IntCounter,
    failed: IntCounter,
    /// Sessions by version (1.2, 1.3) and ALPN protocol (h2, http/1.1, none).
    sessions: [[IntCounter; 3]; 2],
}

impl TlsCounters {
    pub(crate) fn succeeded(&self, tls13: bool, alpn: Option<crate::config::Alpn>) {
        self.succeeded.inc();
        let alpn = match alpn {
            Some(crate::config::Alpn::H2) => 0,
            Some(crate::config::Alpn::Http11) => 1,
            None => 2,
        };
        self.sessions[usize::from(tls13)][alpn].inc();
    }

    pub(crate) fn failed(&self) {
        self.failed.inc();
    }
}

const TLS_VERSIONS: [&str; 2] = ["1.2", "1.3"];
const ALPNS: [&str; 3] = ["h2", "http/1.1", "none"];

/// One open client connection of a listener.
pub(crate) struct Open<'a>(&'a ListenerMetrics);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.connections_active.dec();
    }
}

/// Why a client connection was closed before it was routed, as the
/// `reason` label of `cutover_connections_refused_total` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A PROXY header missing, malformed, or sent by an untrusted source.
    ProxyHeader,
    /// sni: the first bytes are not a TLS handshake.
    NotTls,
    /// sni: a TLS record or ClientHello that breaks its own framing.
    BadHello,
    /// sni: the ClientHello did not fit in the bytes allowed before routing.
    TooLarge,
    /// The client took longer than `header_read_timeout` to be routable.
    TooSlow,
    /// The client closed before it could be routed.
    Truncated,
    /// sni: no service has the server name and the listener has no default.
    NoService,
}

impl Refusal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::ProxyHeader => "proxy_header",
            Refusal::NotTls => "not_tls",
            Refusal::BadHello => "bad_hello",
            Refusal::TooLarge => "too_large",
            Refusal::TooSlow => "too_slow",
            Refusal::Truncated => "truncated",
            Refusal::NoService => "no_service",
        }
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique and valid");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let reloads = counter(
            "cutover_config_reloads_total",
            "Configuration reloads, by result.",
            &["result"],
        );
        Self {
            requests: counter(
                "cutover_requests_total",
                "Requests answered, by service, pool and status class.",
                &["service", "pool", "code"],
            ),
            duration: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "cutover_request_duration_seconds",
                        "Time from a request's arrival to its upstream response headers.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["service", "pool"],
                )
                .expect("valid metric"),
            ),
            upstream_errors: counter(
                "cutover_upstream_errors_total",
                "Failed upstream requests, by kind: connect, timeout, reset.",
                &["service", "pool", "kind"],
            ),
            connections_active: gauge(
                "cutover_connections_active",
                "Open client connections, by listener.",
                &["listener"],
            ),
            upstream_connections_active: gauge(
                "cutover_upstream_connections_active",
                "Open connections to upstream endpoints, by service and pool.",
                &["service", "pool"],
            ),
            pool_weight: gauge(
                "cutover_pool_weight",
                "Effective weight of each pool.",
                &["service", "pool"],
            ),
            rejected: counter(
                "cutover_rejected_requests_total",
                "Requests the proxy answered itself without an upstream: malformed (400), no service for the host (404), too slow (408), too large (414, 431).",
                &["listener", "code"],
            ),
            retries: counter(
                "cutover_retries_total",
                "Further attempts made for requests after an attempt failed (connect, reset, invalid response), by the pool that failed them; a request an upstream declined unprocessed (GOAWAY, REFUSED_STREAM) and resent elsewhere is not counted.",
                &["service", "pool"],
            ),
            drain_closed: counter(
                "cutover_drain_closed_total",
                "Requests and tunnels still in flight on a pool when its drain deadline closed them.",
                &["service", "pool"],
            ),
            endpoint_healthy: gauge(
                "cutover_endpoint_healthy",
                "1 when the endpoint's active checks pass, else 0.",
                &["service", "pool", "endpoint"],
            ),
            health_checks: counter(
                "cutover_health_checks_total",
                "Active health checks, by result: success, failure.",
                &["service", "pool", "endpoint", "result"],
            ),
            failovers: counter(
                "cutover_failovers_total",
                "Times a service's traffic moved to a weight-0 pool because every weighted pool was down.",
                &["service"],
            ),
            unavailable: counter(
                "cutover_no_healthy_endpoint_total",
                "Requests answered 503 because no endpoint of the service was healthy.",
                &["service"],
            ),
            tcp_connections: counter(
                "cutover_tcp_connections_total",
                "Layer-4 connections relayed, by listener and the service and pool chosen.",
                &["listener", "service", "pool"],
            ),
            tcp_bytes: counter(
                "cutover_tcp_bytes_total",
                "Bytes relayed by tcp listeners: in (client to upstream) and out (upstream to client).",
                &["listener", "direction"],
            ),
            connections_refused: counter(
                "cutover_connections_refused_total",
                "Client connections closed before routing, by reason: proxy_header, not_tls, bad_hello, too_large, too_slow, truncated, no_service.",
                &["listener", "reason"],
            ),
            tls_handshakes: counter(
                "cutover_tls_handshakes_total",
                "TLS handshakes of terminating listeners, by result.",
                &["listener", "result"],
            ),
            tls_sessions: counter(
                "cutover_tls_sessions_total",
                "TLS sessions established by terminating listeners, by version and ALPN protocol.",
                &["listener", "version", "alpn"],
            ),
            tls_cert_expiry: gauge(
                "cutover_tls_cert_expiry_timestamp_seconds",
                "When each certificate a listener serves expires, in seconds since the Unix epoch.",
                &["listener", "subject"],
            ),
            shift_state: gauge(
                "cutover_shift_state",
                "1 for the state of each service's progressive shift (idle, running, rolled_back, done), 0 for the others.",
                &["service", "state"],
            ),
            shift_step: gauge(
                "cutover_shift_step",
                "Step of the running shift, from 1; 0 when none runs.",
                &["service"],
            ),
            shift_percent: gauge(
                "cutover_shift_target_percent",
                "The shift target's share of the service's traffic at the step in force, in percent.",
                &["service", "pool"],
            ),
            shift_judged_requests: gauge(
                "cutover_shift_judged_requests",
                "Attempts on the shift target over the last step judged.",
                &["service"],
            ),
            shift_judged_error_rate: register(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "cutover_shift_judged_error_rate",
                        "Share of the shift target's attempts that failed (5xx, connect, reset, timeout) over the last step judged.",
                    ),
                    &["service"],
                )
                .expect("valid metric"),
            ),
            shift_judged_p99: register(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "cutover_shift_judged_p99_seconds",
                        "p99 of the shift target's request duration over the last step judged.",
                    ),
                    &["service"],
                )
                .expect("valid metric"),
            ),
            audit_events: counter(
                "cutover_audit_events_total",
                "Changes recorded in the audit trail, by kind.",
                &["kind"],
            ),
            audit_log_errors: register(
                &registry,
                IntCounter::new(
                    "cutover_audit_log_errors_total",
                    "Audit events that could not be written to [admin] audit_log.",
                )
                .expect("valid metric"),
            ),
            webhook_deliveries: counter(
                "cutover_webhook_deliveries_total",
                "Events sent to webhooks, by webhook (scheme, host and port) and result: success, failure (every attempt failed), dropped (queue full).",
                &["webhook", "result"],
            ),
            config_reloads_success: reloads.with_label_values(&["success"]),
            config_reloads_failure: reloads.with_label_values(&["failure"]),
            config_generation: register(
                &registry,
                IntGauge::new(
                    "cutover_config_generation",
                    "Generation of the routing state in force; increases with every change.",
                )
                .expect("valid metric"),
            ),
            registry,
        }
    }

    pub(crate) fn pool(&self, service: &str, pool: &str) -> PoolMetrics {
        PoolMetrics {
            requests: CODES.map(|code| self.requests.with_label_values(&[service, pool, code])),
            duration: self.duration.with_label_values(&[service, pool]),
            errors: ERROR_KINDS.map(|kind| {
                self.upstream_errors
                    .with_label_values(&[service, pool, kind])
            }),
            upstream_connections: self
                .upstream_connections_active
                .with_label_values(&[service, pool]),
            weight: self.pool_weight.with_label_values(&[service, pool]),
            retries: self.retries.with_label_values(&[service, pool]),
            drain_closed: self.drain_closed.with_label_values(&[service, pool]),
        }
    }

    pub(crate) fn endpoint(&self, service: &str, pool: &str, endpoint: &str) -> EndpointMetrics {
        let labels = [service, pool, endpoint];
        EndpointMetrics {
            owner: std::sync::Arc::new((service.to_owned(), pool.to_owned())),
            healthy: self.endpoint_healthy.with_label_values(&labels),
            checks: ["success", "failure"].map(|result| {
                self.health_checks
                    .with_label_values(&[service, pool, endpoint, result])
            }),
        }
    }

    pub(crate) fn service(&self, service: &str) -> ServiceMetrics {
        ServiceMetrics {
            failovers: self.failovers.with_label_values(&[service]),
            unavailable: self.unavailable.with_label_values(&[service]),
        }
    }

    /// Handles for the shift of `service` toward `pool`.
    pub(crate) fn shift(&self, service: &str, pool: &str) -> ShiftMetrics {
        ShiftMetrics {
            step: self.shift_step.with_label_values(&[service]),
            percent: self.shift_percent.with_label_values(&[service, pool]),
            judged_requests: self.shift_judged_requests.with_label_values(&[service]),
            judged_error_rate: self.shift_judged_error_rate.with_label_values(&[service]),
            judged_p99: self.shift_judged_p99.with_label_values(&[service]),
        }
    }

    /// Sets `cutover_shift_state` of `service`: 1 for `state` (one of
    /// `SHIFT_STATES`), 0 for the others.
    pub(crate) fn set_shift_state(&self, service: &str, state: &str) {
        for name in SHIFT_STATES {
            self.shift_state
                .with_label_values(&[service, name])
                .set(i64::from(name == state));
        }
    }

    /// Drops the shift series of a service: it is gone, or a new shift
    /// targets another pool.
    pub(crate) fn forget_shift(&self, service: &str) {
        use prometheus::core::Collector;
        for state in SHIFT_STATES {
            _ = self.shift_state.remove_label_values(&[service, state]);
        }
        _ = self.shift_step.remove_label_values(&[service]);
        _ = self.shift_judged_requests.remove_label_values(&[service]);
        _ = self.shift_judged_error_rate.remove_label_values(&[service]);
        _ = self.shift_judged_p99.remove_label_values(&[service]);
        let pools: Vec<String> = self
            .shift_percent
            .collect()
            .iter()
            .flat_map(|family| family.get_metric().iter())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "service" && l.value() == service)
            })
            .filter_map(|m| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == "pool")
                    .map(|l| l.value().to_owned())
            })
            .collect();
        for pool in pools {
            _ = self.shift_percent.remove_label_values(&[service, &pool]);
        }
    }

    /// Counts an event recorded in the audit trail.
    pub(crate) fn audit_event(&self, kind: &str) {
        self.audit_events.with_label_values(&[kind]).inc();
    }

    /// Counts an event sent to (or dropped for) a webhook; `result` is
    /// success, failure or dropped.
    pub(crate) fn webhook_delivery(&self, webhook: &str, result: &str) {
        self.webhook_deliveries
            .with_label_values(&[webhook, result])
            .inc();
    }

    /// Drops the series of an endpoint that no longer exists in a pool.
    pub(crate) fn forget_endpoint(&self, service: &str, pool: &str, endpoint: &str) {
        _ = self
            .endpoint_healthy
            .remove_label_values(&[service, pool, endpoint]);
        for result in ["success", "failure"] {
            _ = self
                .health_checks
                .remove_label_values(&[service, pool, endpoint, result]);
        }
    }

    /// Handles for the listener `name`; `tcp`: with its byte counters;
    /// `tls`: with its handshake counters.
    pub(crate) fn listener(&self, name: &str, tcp: bool, tls: bool) -> ListenerMetrics {
        ListenerMetrics {
            tls: tls.then(|| {
                Box::new(TlsCounters {
                    succeeded: self.tls_handshakes.with_label_values(&[name, "success"]),
                    failed: self.tls_handshakes.with_label_values(&[name, "failure"]),
                    sessions: TLS_VERSIONS.map(|version| {
                        ALPNS
                            .map(|alpn| self.tls_sessions.with_label_values(&[name, version, alpn]))
                    }),
                })
            }),
            connections_active: self.connections_active.with_label_values(&[name]),
            tcp_bytes: tcp
                .then(|| ["in", "out"].map(|d| self.tcp_bytes.with_label_values(&[name, d]))),
            rejected: self.rejected.clone(),
            refused: self.connections_refused.clone(),
            listener: name.to_owned(),
        }
    }

    /// `cutover_tcp_connections_total` of one pool through one listener.
    pub(crate) fn tcp_connections(&self, listener: &str, service: &str, pool: &str) -> IntCounter {
        self.tcp_connections
            .with_label_values(&[listener, service, pool])
    }

    /// Drops the series of a pool that no longer exists.
    pub(crate) fn forget_pool(&self, service: &str, pool: &str) {
        for code in CODES {
            _ = self.requests.remove_label_values(&[service, pool, code]);
        }
        for kind in ERROR_KINDS {
            _ = self
                .upstream_errors
                .remove_label_values(&[service, pool, kind]);
        }
        for vec in [&self.upstream_connections_active, &self.pool_weight] {
            _ = vec.remove_label_values(&[service, pool]);
        }
        _ = self.duration.remove_label_values(&[service, pool]);
        _ = self.retries.remove_label_values(&[service, pool]);
        _ = self.drain_closed.remove_label_values(&[service, pool]);
    }

    /// Drops the series of a listener that no longer exists.
    pub(crate) fn forget_listener(&self, name: &str) {
        _ = self.connections_active.remove_label_values(&[name]);
        for direction in ["in", "out"] {
            _ = self.tcp_bytes.remove_label_values(&[name, direction]);
        }
        for result in ["success", "failure"] {
            _ = self.tls_handshakes.remove_label_values(&[name, result]);
        }
        for version in TLS_VERSIONS {
            for alpn in ALPNS {
                _ = self
                    .tls_sessions
                    .remove_label_values(&[name, version, alpn]);
            }
        }
    }

    /// Sets the expiry series of every certificate served, and drops those
    /// of certificates no longer served.
    /// `certs`: each served certificate's listener, subject and expiry (Unix
    /// seconds).
    pub(crate) fn set_cert_expiry(&self, certs: &[(&str, &str, i64)]) {
        use prometheus::core::Collector;
        // Only the series that go are removed, so no scrape sees a gap.
        for family in self.tls_cert_expiry.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map_or("", |l| l.value())
                };
                let (listener, subject) = (label("listener"), label("subject"));
                if !certs
                    .iter()
                    .any(|(l, s, _)| *l == listener && *s == subject)
                {
                    _ = self
                        .tls_cert_expiry
                        .remove_label_values(&[listener, subject]);
                }
            }
        }
        // Two pairs with one subject (an RSA and an ECDSA certificate, say)
        // share a series: it says the sooner expiry.
        let mut soonest: std::collections::HashMap<(&str, &str), i64> = Default::default();
        for &(listener, subject, not_after) in certs {
            let at = soonest.entry((listener, subject)).or_insert(not_after);
            *at = (*at).min(not_after);
        }
        for ((listener, subject), not_after) in soonest {
            self.tls_cert_expiry
                .with_label_values(&[listener, subject])
                .set(not_after);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("writing to a Vec cannot fail");
        out
    }
}

impl PoolMetrics {
    #[inline]
    pub fn response(&self, status: StatusCode, elapsed: Duration) {
        let class = match status.as_u16() {
            0..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        self.requests[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    #[inline]
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.errors[kind as usize].inc();
    }

    #[inline]
    pub fn retry(&self) {
        self.retries.inc();
    }

    pub fn set_weight(&self, weight: u32) {
        self.weight.set(i64::from(weight));
    }

    /// Requests answered so far (every class), and those answered 5xx.
    pub fn totals(&self) -> (u64, u64) {
        let all = self.requests.iter().map(IntCounter::get).sum();
        (all, self.requests[3].get())
    }

    /// The pool's counters now, for judging a shift's step.
    pub(crate) fn reading(&self) -> crate::shift::Reading {
        let (requests, errors_5xx) = self.totals();
        crate::shift::Reading::of(requests, errors_5xx, self.retries.get(), &self.duration)
    }
}

impl EndpointMetrics {
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.set(i64::from(healthy));
    }

    pub fn check(&self, passed: bool) {
        self.checks[usize::from(!passed)].inc();
    }
}

impl ListenerMetrics {
    /// Counts a request the proxy answered itself. Off the hot path: only bad
    /// input gets here, so resolving the label now is fine.
    pub(crate) fn rejected(&self, status: StatusCode) {
        self.rejected
            .with_label_values(&[self.listener.as_str(), status.as_str()])
            .inc();
    }

    /// Counts a client connection in `cutover_connections_active` until the
    /// guard drops.
    pub(crate) fn open(&self) -> Open<'_> {
        self.connections_active.inc();
        Open(self)
    }

    /// Counts a connection closed before it was routed; off the hot path.
    pub(crate) fn refused(&self, why: Refusal) {
        self.refused
            .with_label_values(&[self.listener.as_str(), why.as_str()])
            .inc();
    }
}
