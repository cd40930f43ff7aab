//! The configuration as the rest of cutover sees it: validated, typed values
//! (`SocketAddr`, `Authority`, `HeaderValue`, `Expect`, durations), so nothing
//! after validation parses a string or can fail on one. Only `validate` makes
//! these from the file's `schema`; each value that is read from text says
//! here how (`Endpoint::parse`, `Host::parse`, `Expect::parse`).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::HeaderValue;
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::proxy_protocol;

#[derive(Debug, Clone)]
pub struct Config {
    pub runtime: Runtime,
    pub(crate) limits: Limits,
    pub(crate) admin: Admin,
    pub(crate) listeners: Vec<Listener>,
    pub(crate) services: Vec<Service>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Data-plane worker threads; 0 means one per core.
    #[serde(default)]
    pub threads: usize,
}

/// Client-side limits applied to every listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Open client connections per listener, at least 1; further clients
    /// wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Largest request head (request line and headers) accepted; larger gets
    /// 431. Still `Spanned` because the data plane reads it with `get_ref`;
    /// its span is never read.
    pub max_header_bytes: Spanned<usize>,
    /// Time allowed from a request's first byte to the end of its head.
    pub header_read_timeout: Duration,
    /// How long a client keep-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// Longest a client's request body may stall between two reads.
    pub body_read_timeout: Duration,
    /// Longest a client may take to accept more of a response.
    pub send_timeout: Duration,
    /// Time allowed for a client's TLS handshake.
    pub handshake_timeout: Duration,
    /// Requests one HTTP/2 client may have in flight at once, at least 1.
    pub max_concurrent_streams: u32,
}

impl Default for Limits {
    /// The limits of a file that sets none.
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_header_bytes: Spanned::new(0..0, 65_536),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
        }
    }
}

/// The admin API's listener and how changes through it are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub(crate) listen: SocketAddr,
    /// File holding the bearer token every `/v1` call must present; set
    /// whenever `listen` is not a loopback address.
    pub(crate) token_file: Option<PathBuf>,
    /// The file is the only source of truth: API changes are refused (409).
    pub(crate) read_only: bool,
    /// Where API overrides are kept so they survive a restart.
    pub(crate) state_file: Option<PathBuf>,
    /// HTTPS for the admin API.
    pub(crate) tls: Option<CertFiles>,
    /// Where every change is appended as a JSON line.
    pub(crate) audit_log: Option<PathBuf>,
    pub(crate) webhooks: Vec<Webhook>,
}

/// `[[admin.webhook]]`: change events POSTed as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Webhook {
    /// `http://` or `https://`, with a host.
    pub url: http::Uri,
    /// Kinds sent; every kind when empty.
    pub events: Vec<crate::audit::kind::EventKind>,
    pub timeout: Duration,
    pub retries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Protocol {
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listener {
    pub name: String,
    /// The configured address, which identifies the listener across reloads.
    pub bind: SocketAddr,
    pub protocol: Protocol,
    /// Names of services that exist, in the file's order: exactly one on a
    /// tcp listener without `sni`.
    pub services: Vec<String>,
    /// tcp: route by the ClientHello's server name.
    pub sni: bool,
    /// Sources trusted to open with a PROXY protocol header.
    pub accept_proxy: Vec<IpNet>,
    /// http: TLS terminated here.
    pub tls: Option<ListenerTls>,
    /// http without tls: every request answered with a 308 to https.
    pub redirect_https: bool,
}

/// A certificate chain and its private key, as PEM files: read when a
/// configuration is loaded (`tls::Material`), never by `config`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// TLS terminated on an http listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerTls {
    /// At least one; the first is the default for a name no other covers.
    pub certs: Vec<CertFiles>,
    /// ALPN protocols offered, in order of preference; at least one.
    pub alpn: Vec<Alpn>,
    pub min_version: TlsVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alpn {
    H2,
    Http11,
}

impl Alpn {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "h2" => Some(Self::H2),
            "http/1.1" => Some(Self::Http11),
            _ => None,
        }
    }

    /// The protocol's ALPN identifier.
    pub fn id(self) -> &'static [u8] {
        match self {
            Self::H2 => b"h2",
            Self::Http11 => b"http/1.1",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsVersion {
    V1_2,
    V1_3,
}

/// TLS from the proxy to a pool's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolTls {
    /// The name sent and verified; `None`: the pool's `host`, else each
    /// endpoint's host.
    pub sni: Option<String>,
    /// Roots that sign the endpoints' certificates; `None`: the system's.
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    /// Client certificate for mutual TLS.
    pub client_cert: Option<CertFiles>,
}

/// What a pool's endpoints are spoken to in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum UpstreamProtocol {
    #[default]
    Http1,
    H2,
}

/// Parses an `accept_proxy` entry: a CIDR block, or one address.
pub(crate) fn parse_source(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Service {
    pub name: String,
    /// Hosts this service answers; empty makes it the default of the
    /// listeners that name it.
    pub hosts: Vec<Host>,
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response headers; past it, 504.
    pub request_timeout: Duration,
    /// How long in-flight work on a pool or endpoint leaving rotation may
    /// finish before it is closed.
    pub drain_timeout: Duration,
    /// Further attempts for a request that could not be sent; at most
    /// `MAX_RETRIES`.
    pub retries: u32,
    /// When every endpoint of the weighted pools is down, use any healthy pool.
    pub failover: bool,
    /// At least one, with unique names, one of them with weight above 0.
    pub pools: Vec<Pool>,
    pub health: Health,
    pub outlier: Outlier,
    /// Defaults of a progressive shift.
    pub shift: crate::shift::Policy,
    /// tcp: connections of a pool leaving rotation close one by one over
    /// this window rather than all at the drain deadline.
    pub migrate: Option<Duration>,
}

/// A `hosts` entry, lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    /// `example.com`: this name only.
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: any name ending so.
    Suffix(String),
}

impl Host {
    /// A DNS name, or `*.` and a suffix; no port.
    pub fn parse(pattern: &str) -> Result<Self, &'static str> {
        let (wildcard, name) = match pattern.strip_prefix("*.") {
            Some(name) => (true, name),
            None => (false, pattern),
        };
        if name.contains(':') {
            return Err("must not carry a port: requests are matched on the host name alone");
        }
        if !is_dns_name(name, usize::MAX) {
            return Err("is not a host name or a \"*.suffix\" wildcard");
        }
        let name = name.to_ascii_lowercase();
        Ok(if wildcard {
            Self::Suffix(format!(".{name}"))
        } else {
            Self::Exact(name)
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pool {
    pub name: String,
    /// Relative share of new work, at most `MAX_WEIGHT`.
    pub weight: u32,
    /// At least one, none listed twice.
    pub endpoints: Vec<Endpoint>,
    /// Host header sent to this pool's endpoints instead of the client's.
    pub host: Option<HeaderValue>,
    /// tcp: the PROXY header every connection to the endpoints opens with.
    pub send_proxy: Option<proxy_protocol::Version>,
    /// http: TLS to the endpoints.
    pub tls: Option<PoolTls>,
    /// http: HTTP/1.1 (the default) or HTTP/2 to the endpoints.
    pub protocol: UpstreamProtocol,
}

/// An upstream endpoint, `host:port`: an IP address or a DNS name, resolved
/// when connecting. One validated text, in the form each use needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// As a URI authority, which keeps the text as written in the file.
    pub authority: Authority,
    /// The same, as a `Host` header: what an HTTP health check sends when
    /// its pool does not rewrite the Host.
    pub host: HeaderValue,
}

impl Endpoint {
    /// `host:port`, where host is an IPv4 address, a bracketed IPv6 address or
    /// a DNS name, and port is not 0.
    pub fn parse(text: &str) -> Option<Self> {
        let (host, port) = text.rsplit_once(':')?;
        port.parse::<u16>().ok().filter(|p| *p != 0)?;
        let valid = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
            None => is_dns_name(host, 63),
        };
        if !valid || host.len() > 253 {
            return None;
        }
        Some(Self {
            authority: text.parse().ok()?,
            host: HeaderValue::from_str(text).ok()?,
        })
    }

    /// The address as written in the file: for display, and to connect to.
    pub fn address(&self) -> &str {
        self.authority.as_str()
    }
}

/// Dot-separated labels of letters, digits and `-`, each at most
/// `max_label` long.
fn is_dns_name(name: &str, max_label: usize) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= max_label
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Active health checks of a service's endpoints. Two endpoints with equal
/// settings share a checker, so this is a map key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Health {
    pub kind: HealthKind,
    /// Path of the HTTP check.
    pub path: PathAndQuery,
    /// Statuses that pass an HTTP check.
    pub expect: Expect,
    pub interval: Duration,
    pub timeout: Duration,
    /// Passes in a row that make an unhealthy endpoint healthy; at least 1.
    pub healthy_threshold: u32,
    /// Failures in a row that make a healthy endpoint unhealthy; at least 1.
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum HealthKind {
    /// GET `path`; healthy when the status is in `expect`.
    Http,
    /// Healthy when a TCP connection opens.
    Tcp,
    /// No active checks: healthy unless passively ejected.
    None,
}

/// HTTP statuses that pass a check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Expect(Vec<RangeInclusive<u16>>);

impl Expect {
    /// "200-399", "200", "200,204,300-399".
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("expect {text:?} is not a list of statuses or ranges, like \"200-399\" or \"200,204\"")
        };
        let ranges = text
            .split(',')
            .map(|part| {
                let part = part.trim();
                let (lo, hi) = part.split_once('-').unwrap_or((part, part));
                let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
                let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
                if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
                    return Err(bad());
                }
                Ok(lo..=hi)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(ranges))
    }

    pub fn matches(&self, status: u16) -> bool {
        self.0.iter().any(|r| r.contains(&status))
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            match (range.start(), range.end()) {
                (lo, hi) if lo == hi => write!(f, "{sep}{lo}")?,
                (lo, hi) => write!(f, "{sep}{lo}-{hi}")?,
            }
        }
        Ok(())
    }
}

/// Passive ejection: endpoints failing in a row are taken out for a while.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Outlier {
    /// Connect failures or 5xx in a row that eject an endpoint; 0 disables.
    pub consecutive_failures: u32,
    /// First ejection's length, above 0; each repeated ejection lasts longer.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
}

impl Default for Outlier {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        for good in ["10.0.0.10:80", "[::1]:8080", "ingress.local:443"] {
            let endpoint = Endpoint::parse(good).unwrap();
            assert_eq!(endpoint.address(), good);
            assert_eq!(endpoint.host.to_str().ok(), Some(good));
        }
        for bad in [
            "10.0.0.10",
            "10.0.0.10:0",
            "10.0.0.10:99999",
            ":80",
            "http://x:80",
            "[zz]:80",
            "user@x:80",
        ] {
            assert!(Endpoint::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn hosts_are_lowercased_and_wildcards_kept_as_suffixes() {
        assert_eq!(
            Host::parse("Hello.Example.com"),
            Ok(Host::Exact("hello.example.com".into()))
        );
        assert_eq!(
            Host::parse("*.example.com"),
            Ok(Host::Suffix(".example.com".into()))
        );
        for bad in ["", "*.", "a..b", "example.com:80", "a_b.com"] {
            assert!(Host::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expect_lists_and_ranges() {
        let e = Expect::parse("200-299, 304").unwrap();
        assert!(e.matches(204) && e.matches(304) && !e.matches(301) && !e.matches(500));
        assert_eq!(e.to_string(), "200-299,304");
        for bad in ["", "2xx", "399-200", "200-", "99", "600"] {
            assert!(Expect::parse(bad).is_err(), "{bad}");
        }
    }
}
