//! The TOML schema, as serde types: the file as written, before validation.
//! Field names are the contract in DESIGN.md; every table rejects unknown
//! keys. Fields whose position a validation message needs are `Spanned`.
//! Defaults live here, next to the field they fill, but for `[limits]` and
//! `[service.outlier]`, whose typed values keep theirs. Nothing outside `config`
//! sees these types: `validate` turns them into the typed `model`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::model::{self, HealthKind, Outlier, Protocol, Runtime, UpstreamProtocol};
use crate::proxy_protocol;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Listener>,
    #[serde(default, rename = "service")]
    pub services: Vec<Service>,
}

/// Client-side limits applied to every listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open client connections per listener; further clients wait in the
    /// kernel's accept backlog.
    pub max_connections: Spanned<usize>,
    /// Largest request head (request line and headers) accepted; larger gets 431.
    pub max_header_bytes: Spanned<usize>,
    /// Time allowed from a request's first byte to the end of its head; slower
    /// clients get 408.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a client keep-alive connection may sit idle between requests.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest a client's request body may stall between two reads; a slower
    /// body gets 408 (slow-body guard).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Longest a client may take to accept more of a response; a slower
    /// client's connection is closed (slow-read guard).
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Time allowed for a client's TLS handshake, from its first byte.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Requests one HTTP/2 client may have in flight at once.
    pub max_concurrent_streams: Spanned<u32>,
}

impl Default for Limits {
    /// The typed defaults, at no place in the file.
    fn default() -> Self {
        let typed = model::Limits::default();
        Self {
            max_connections: Spanned::new(0..0, typed.max_connections),
            max_header_bytes: typed.max_header_bytes,
            header_read_timeout: typed.header_read_timeout,
            idle_timeout: typed.idle_timeout,
            body_read_timeout: typed.body_read_timeout,
            send_timeout: typed.send_timeout,
            handshake_timeout: typed.handshake_timeout,
            max_concurrent_streams: Spanned::new(0..0, typed.max_concurrent_streams),
        }
    }
}

/// The admin API's listener and how changes through it are kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    pub listen: Spanned<String>,
    /// File holding the bearer token every `/v1` call must present; required
    /// unless `listen` is a loopback address.
    pub token_file: Option<PathBuf>,
    /// The file is the only source of truth: API changes are refused (409).
    pub read_only: bool,
    /// Where API overrides are kept so they survive a restart.
    pub state_file: Option<PathBuf>,
    /// HTTPS for the admin API: one certificate and its key.
    pub tls: Option<Spanned<CertFiles>>,
    /// Where every change is appended as a JSON line.
    pub audit_log: Option<PathBuf>,
    /// Receivers of change events.
    #[serde(rename = "webhook")]
    pub webhooks: Vec<Webhook>,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: Spanned::new(0..0, "127.0.0.1:9901".to_owned()),
            token_file: None,
            read_only: false,
            state_file: None,
            tls: None,
            audit_log: None,
            webhooks: Vec::new(),
        }
    }
}

/// `[[admin.webhook]]`: change events POSTed as JSON to `url`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: Spanned<String>,
    /// Event kinds sent; every kind when empty.
    #[serde(default)]
    pub events: Vec<Spanned<String>>,
    /// Time allowed for one delivery attempt.
    #[serde(default = "default_webhook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Further attempts after a failed delivery.
    #[serde(default = "default_webhook_retries")]
    pub retries: Spanned<u32>,
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_webhook_retries() -> Spanned<u32> {
    Spanned::new(0..0, 3)
}

/// `[service.shift]`: the defaults of a progressive shift of this service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shift {
    pub steps: Spanned<Vec<u32>>,
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    pub max_error_rate: Spanned<f64>,
    #[serde(with = "humantime_serde")]
    pub max_p99: Duration,
    pub min_requests: u64,
    pub max_extensions: u32,
}

impl Default for Shift {
    fn default() -> Self {
        let typed = crate::shift::Policy::default();
        Self {
            steps: Spanned::new(0..0, typed.steps),
            every: typed.every,
            max_error_rate: Spanned::new(0..0, typed.max_error_rate),
            max_p99: typed.max_p99,
            min_requests: typed.min_requests,
            max_extensions: typed.max_extensions,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: Spanned<String>,
    pub bind: Spanned<String>,
    #[serde(default = "default_protocol")]
    pub protocol: Spanned<Protocol>,
    pub services: Spanned<Vec<Spanned<String>>>,
    /// tcp: route each connection by its TLS ClientHello's server name
    /// (passthrough), against the services' `hosts`.
    #[serde(default)]
    pub sni: Option<Spanned<bool>>,
    /// Sources (addresses or CIDR blocks) whose connections start with a
    /// PROXY protocol header, read for the client's address.
    #[serde(default)]
    pub accept_proxy: Vec<Spanned<String>>,
    /// http: TLS terminated here, with these certificates.
    #[serde(default)]
    pub tls: Option<Spanned<ListenerTls>>,
    /// http without tls: answer every request with a 308 to its https URL.
    #[serde(default)]
    pub redirect_https: Option<Spanned<bool>>,
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// TLS terminated on an http listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Chosen by the ClientHello's server name; the first is the default.
    pub certs: Spanned<Vec<CertFiles>>,
    /// Protocols offered by ALPN, in order of preference.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<Spanned<String>>,
    /// The oldest TLS version accepted: "1.2" or "1.3".
    #[serde(default = "default_min_version")]
    pub min_version: Spanned<String>,
}

fn default_alpn() -> Vec<Spanned<String>> {
    ["h2", "http/1.1"]
        .into_iter()
        .map(|p| Spanned::new(0..0, p.to_owned()))
        .collect()
}

fn default_min_version() -> Spanned<String> {
    Spanned::new(0..0, "1.2".to_owned())
}

/// TLS from the proxy to a pool's endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolTls {
    /// Server name sent and verified; the pool's `host`, else the
    /// endpoint's host name, when absent.
    #[serde(default)]
    pub sni: Option<Spanned<String>>,
    /// CA certificates (PEM) that sign the endpoints' certificates; the
    /// system's roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate. Must be written out; logged as a warning.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Client certificate for mutual TLS, with `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

fn default_protocol() -> Spanned<Protocol> {
    Spanned::new(0..0, Protocol::Http)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: Spanned<String>,
    /// Host names (or `*.suffix` wildcards) this service answers; empty makes it
    /// the default of the listeners that name it.
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response headers; past it, 504.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long in-flight work on a pool or endpoint leaving rotation may
    /// finish before it is closed.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Further attempts for a request that could not be sent, or that was
    /// reset before its response headers when it is idempotent and bodiless.
    #[serde(default = "default_retries")]
    pub retries: Spanned<u32>,
    /// When every endpoint of the weighted pools is down, use any healthy pool.
    #[serde(default = "default_true")]
    pub failover: bool,
    #[serde(default, rename = "pool")]
    pub pools: Vec<Pool>,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub outlier: Outlier,
    /// Spanned for its place in messages; the table as written.
    #[serde(default = "default_shift")]
    pub shift: Spanned<Shift>,
    /// tcp: after the service's pools change, close the connections of a
    /// pool leaving rotation one by one over this window.
    #[serde(default, with = "humantime_serde")]
    pub migrate: Option<Duration>,
}

fn default_shift() -> Spanned<Shift> {
    Spanned::new(0..0, Shift::default())
}

fn default_retries() -> Spanned<u32> {
    Spanned::new(0..0, 2)
}

fn default_true() -> bool {
    true
}

/// Active health checks of a service's endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    pub kind: HealthKind,
    /// Path of the HTTP check.
    pub path: Spanned<String>,
    /// Statuses that pass an HTTP check: "200-399", "200", "200,204".
    pub expect: Spanned<String>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub healthy_threshold: Spanned<u32>,
    pub unhealthy_threshold: Spanned<u32>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            kind: HealthKind::Tcp,
            path: Spanned::new(0..0, "/healthz".to_owned()),
            expect: Spanned::new(0..0, "200-399".to_owned()),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: Spanned::new(0..0, 2),
            unhealthy_threshold: Spanned::new(0..0, 3),
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub name: Spanned<String>,
    pub weight: Spanned<i64>,
    pub endpoints: Vec<Spanned<String>>,
    /// Host header sent to this pool's endpoints instead of the client's.
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// tcp: a PROXY protocol header, of this version, opens every
    /// connection to the pool's endpoints.
    #[serde(default)]
    pub send_proxy: Option<Spanned<proxy_protocol::Version>>,
    /// http: TLS to the endpoints.
    #[serde(default)]
    pub tls: Option<Spanned<PoolTls>>,
    /// http: what the endpoints are spoken to in.
    #[serde(default)]
    pub protocol: Option<Spanned<UpstreamProtocol>>,
}
