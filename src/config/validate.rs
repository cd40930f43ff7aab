//! Turns the file as written (`schema`) into the typed `Config` (`model`):
//! every value is read into its type, and the checks that span more than one
//! field are made — names that must be unique, references between listeners
//! and services, value ranges. Collects every problem, each with its place,
//! instead of stopping at the first, so `cutover check` can list them all; a
//! `Config` comes out only when there is none.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use http::HeaderValue;
use toml::Spanned;

use super::model::{
    parse_source, Admin, Alpn, CertFiles, Config, Endpoint, Expect, Health, Host, Limits, Listener,
    ListenerTls, Pool, PoolTls, Protocol, Service, TlsVersion, Webhook,
};
use super::{schema, Problem};

/// Largest weight a pool may have. Weights are relative; percentages in practice.
pub(crate) const MAX_WEIGHT: i64 = 10_000;

/// Most attempts a request may make beyond its first.
pub(crate) const MAX_RETRIES: u32 = 10;

/// The typed configuration of `raw`, or every problem found in it.
pub(crate) fn validate(raw: &schema::Config) -> Result<Config, Vec<Problem>> {
    let mut problems = Vec::new();
    let limits = limits(raw, &mut problems);
    let listeners: Vec<Option<Listener>> = listeners(raw, &mut problems);
    let admin = admin(&raw.admin, &listeners, &mut problems);
    let services: Vec<Option<Service>> = services(raw, &mut problems);
    let config = admin.and_then(|admin| {
        Some(Config {
            runtime: raw.runtime.clone(),
            limits,
            admin,
            listeners: listeners.into_iter().collect::<Option<_>>()?,
            services: services.into_iter().collect::<Option<_>>()?,
        })
    });
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(problems),
    }
}

/// Records `problem` and gives no value: the way every conversion below says
/// a value could not be had, so no `None` comes without its problem.
fn refuse<T>(problems: &mut Vec<Problem>, problem: Problem) -> Option<T> {
    problems.push(problem);
    None
}

fn limits(raw: &schema::Config, problems: &mut Vec<Problem>) -> Limits {
    let limits = &raw.limits;
    if *limits.max_connections.get_ref() == 0 {
        problems.push(Problem::at(
            limits.max_connections.span(),
            "max_connections must be at least 1",
        ));
    }
    let header_bytes = *limits.max_header_bytes.get_ref();
    if !(1024..=1 << 20).contains(&header_bytes) {
        problems.push(Problem::at(
            limits.max_header_bytes.span(),
            format!("max_header_bytes is {header_bytes}; it must be between 1024 and 1048576"),
        ));
    }
    for (name, value) in [
        ("header_read_timeout", limits.header_read_timeout),
        ("idle_timeout", limits.idle_timeout),
        ("body_read_timeout", limits.body_read_timeout),
        ("send_timeout", limits.send_timeout),
        ("handshake_timeout", limits.handshake_timeout),
    ] {
        if value.is_zero() {
            problems.push(Problem {
                span: None,
                message: format!("[limits] {name} must be longer than 0s"),
            });
        }
    }
    if *limits.max_concurrent_streams.get_ref() == 0 {
        problems.push(Problem::at(
            limits.max_concurrent_streams.span(),
            "max_concurrent_streams must be at least 1",
        ));
    }
    if raw.runtime.threads > 1024 {
        problems.push(Problem {
            span: None,
            message: format!(
                "[runtime] threads is {}; it must be between 0 (one per core) and 1024",
                raw.runtime.threads
            ),
        });
    }
    Limits {
        max_connections: *limits.max_connections.get_ref(),
        max_header_bytes: limits.max_header_bytes.clone(),
        header_read_timeout: limits.header_read_timeout,
        idle_timeout: limits.idle_timeout,
        body_read_timeout: limits.body_read_timeout,
        send_timeout: limits.send_timeout,
        handshake_timeout: limits.handshake_timeout,
        max_concurrent_streams: *limits.max_concurrent_streams.get_ref(),
    }
}

fn admin(
    admin: &schema::Admin,
    listeners: &[Option<Listener>],
    problems: &mut Vec<Problem>,
) -> Option<Admin> {
    let Ok(listen) = admin.listen.get_ref().parse::<SocketAddr>() else {
        return refuse(
            problems,
            Problem::at(
                admin.listen.span(),
                format!(
                    "[admin] listen {:?} is not an address and port, like \"127.0.0.1:9901\"",
                    admin.listen.get_ref()
                ),
            ),
        );
    };
    if !listen.ip().is_loopback() && admin.token_file.is_none() {
        problems.push(Problem::at(
            admin.listen.span(),
            format!("[admin] listens on {listen}, which is not a loopback address, but has no token_file: anyone who can reach it could move traffic"),
        ));
    }
    if listen.port() != 0 && listeners.iter().flatten().any(|l| l.bind == listen) {
        problems.push(Problem::at(
            admin.listen.span(),
            format!("[admin] listen {listen} is also a listener's bind"),
        ));
    }
    Some(Admin {
        listen,
        token_file: admin.token_file.clone(),
        read_only: admin.read_only,
        state_file: admin.state_file.clone(),
        tls: admin.tls.as_ref().map(|t| cert_files(t.get_ref())),
        audit_log: admin.audit_log.clone(),
        // Every webhook is checked, not just those before the first bad one.
        webhooks: admin
            .webhooks
            .iter()
            .map(|w| webhook(w, problems))
            .collect::<Vec<_>>()
            .into_iter()
            .collect::<Option<_>>()?,
    })
}

/// Most attempts after a failed webhook delivery.
pub(crate) const MAX_WEBHOOK_RETRIES: u32 = 10;

fn webhook(raw: &schema::Webhook, problems: &mut Vec<Problem>) -> Option<Webhook> {
    let url = match raw.url.get_ref().parse::<http::Uri>() {
        Ok(url) if matches!(url.scheme_str(), Some("http" | "https")) && url.host().is_some() => {
            Some(url)
        }
        _ => refuse(
            problems,
            Problem::at(
                raw.url.span(),
                // Not quoted: a URL can hold a secret, and this message
                // reaches logs, status and the audit trail.
                "webhook url is not an http:// or https:// URL with a host",
            ),
        ),
    };
    let mut events = Vec::new();
    for name in &raw.events {
        match crate::audit::kind::EventKind::parse(name.get_ref()) {
            Some(kind) => events.push(kind),
            None => problems.push(Problem::at(
                name.span(),
                format!(
                    "webhook event {:?} is not one of {}",
                    name.get_ref(),
                    crate::audit::kind::EventKind::ALL
                        .map(|k| k.as_str())
                        .join(", ")
                ),
            )),
        }
    }
    if raw.timeout.is_zero() {
        problems.push(Problem::at(
            raw.url.span(),
            "webhook timeout must be longer than 0s",
        ));
    }
    let retries = *raw.retries.get_ref();
    if retries > MAX_WEBHOOK_RETRIES {
        problems.push(Problem::at(
            raw.retries.span(),
            format!("webhook retries is {retries}; at most {MAX_WEBHOOK_RETRIES}"),
        ));
    }
    Some(Webhook {
        url: url?,
        events,
        timeout: raw.timeout,
        retries,
    })
}

/// The typed `[service.shift]`, or its problems at the table's place.
fn shift(service: &schema::Service, problems: &mut Vec<Problem>) -> Option<crate::shift::Policy> {
    let raw = service.shift.get_ref();
    let policy = crate::shift::Policy {
        steps: raw.steps.get_ref().clone(),
        every: raw.every,
        max_error_rate: *raw.max_error_rate.get_ref(),
        max_p99: raw.max_p99,
        min_requests: raw.min_requests,
        max_extensions: raw.max_extensions,
    };
    let found = policy.problems();
    if found.is_empty() {
        return Some(policy);
    }
    // Each problem at its key when the file has it there, else at the table.
    let at = |span: std::ops::Range<usize>| {
        if span.is_empty() {
            service.shift.span()
        } else {
            span
        }
    };
    for problem in found {
        let span = if problem.starts_with("step") {
            at(raw.steps.span())
        } else if problem.starts_with("max_error_rate") {
            at(raw.max_error_rate.span())
        } else {
            at(0..0)
        };
        problems.push(Problem::at(
            span,
            format!(
                "service {:?}: [service.shift] {problem}",
                service.name.get_ref()
            ),
        ));
    }
    None
}

fn listeners(raw: &schema::Config, problems: &mut Vec<Problem>) -> Vec<Option<Listener>> {
    if raw.listeners.is_empty() {
        problems.push(Problem {
            span: Some(0..0),
            message: "no [[listener]]: the proxy would accept nothing".into(),
        });
    }
    let services: HashMap<&str, &schema::Service> = raw
        .services
        .iter()
        .map(|s| (s.name.get_ref().as_str(), s))
        .collect();
    let mut names = Unique::new("listener");
    let mut binds = HashSet::new();
    raw.listeners
        .iter()
        .map(|listener| {
            names.check(&listener.name, problems);
            let bind = match listener.bind.get_ref().parse::<SocketAddr>() {
                Ok(addr) if !binds.insert(addr) => refuse(
                    problems,
                    Problem::at(
                        listener.bind.span(),
                        format!("bind {addr} is used by another listener"),
                    ),
                ),
                Ok(addr) => Some(addr),
                Err(_) => refuse(
                    problems,
                    Problem::at(
                        listener.bind.span(),
                        format!(
                            "bind {:?} is not an address and port, like \"0.0.0.0:8080\" or \"[::]:8080\"",
                            listener.bind.get_ref()
                        ),
                    ),
                ),
            };
            let protocol = *listener.protocol.get_ref();
            let sni = listener.sni.as_ref().is_some_and(|s| *s.get_ref());
            let listener_name = listener.name.get_ref();
            match (protocol, &listener.sni) {
                (Protocol::Http, Some(flag)) => problems.push(Problem::at(
                    flag.span(),
                    format!("listener {listener_name:?}: sni applies to tcp listeners; an http listener routes by Host"),
                )),
                (Protocol::Tcp, _) if !sni && listener.services.get_ref().len() > 1 => {
                    problems.push(Problem::at(
                        listener.services.span(),
                        format!(
                            "tcp listener {listener_name:?} names {} services but has no sni = true: without the ClientHello's server name every connection goes to one service",
                            listener.services.get_ref().len()
                        ),
                    ))
                }
                _ => {}
            }
            let accept_proxy: Vec<Option<ipnet::IpNet>> = listener
                .accept_proxy
                .iter()
                .map(|source| {
                    parse_source(source.get_ref()).or_else(|| {
                        refuse(
                            problems,
                            Problem::at(
                                source.span(),
                                format!(
                                    "accept_proxy {:?} is not an address or a CIDR block, like \"10.0.0.0/8\" or \"fd00::/8\"",
                                    source.get_ref()
                                ),
                            ),
                        )
                    })
                })
                .collect();
            let tls = listener_tls(listener, problems);
            let redirect_https = listener.redirect_https.as_ref().is_some_and(|r| *r.get_ref());
            if let Some(flag) = &listener.redirect_https {
                if protocol != Protocol::Http || listener.tls.is_some() {
                    problems.push(Problem::at(
                        flag.span(),
                        format!("listener {listener_name:?}: redirect_https applies to plain http listeners (it answers every request with a redirect to https)"),
                    ));
                }
            }
            if listener.services.get_ref().is_empty() {
                problems.push(Problem::at(
                    listener.services.span(),
                    format!("listener {:?} names no service", listener.name.get_ref()),
                ));
            }
            // A tcp listener without sni routes by nothing: hosts and
            // defaults do not apply (several services are reported above).
            let by_name = protocol == Protocol::Http || sni;
            check_listener_services(listener, by_name, &services, problems);
            Some(Listener {
                name: listener_name.clone(),
                bind: bind?,
                protocol,
                services: listener
                    .services
                    .get_ref()
                    .iter()
                    .map(|s| s.get_ref().clone())
                    .collect(),
                sni,
                accept_proxy: accept_proxy.into_iter().collect::<Option<_>>()?,
                tls: tls?,
                redirect_https,
            })
        })
        .collect()
}

/// A listener's `tls` table: `Some(None)` when it has none.
fn listener_tls(
    listener: &schema::Listener,
    problems: &mut Vec<Problem>,
) -> Option<Option<ListenerTls>> {
    let Some(tls) = &listener.tls else {
        return Some(None);
    };
    let name = listener.name.get_ref();
    if *listener.protocol.get_ref() != Protocol::Http {
        return refuse(
            problems,
            Problem::at(
                tls.span(),
                format!("listener {name:?}: tls terminates TLS on http listeners; a tcp listener passes TLS through (sni = true routes it by server name)"),
            ),
        );
    }
    let raw = tls.get_ref();
    if raw.certs.get_ref().is_empty() {
        problems.push(Problem::at(
            raw.certs.span(),
            format!("listener {name:?}: tls has no certs; list at least one, like certs = [{{cert = \"a.crt\", key = \"a.key\"}}]"),
        ));
    }
    let mut alpn = Vec::new();
    for protocol in &raw.alpn {
        match Alpn::parse(protocol.get_ref()) {
            Some(p) if !alpn.contains(&p) => alpn.push(p),
            Some(_) => problems.push(Problem::at(
                protocol.span(),
                format!(
                    "listener {name:?}: alpn lists {:?} twice",
                    protocol.get_ref()
                ),
            )),
            None => problems.push(Problem::at(
                protocol.span(),
                format!(
                    "listener {name:?}: alpn {:?} is not \"h2\" or \"http/1.1\"",
                    protocol.get_ref()
                ),
            )),
        }
    }
    if raw.alpn.is_empty() {
        problems.push(Problem::at(
            tls.span(),
            format!("listener {name:?}: alpn is empty; list \"h2\", \"http/1.1\" or both"),
        ));
    }
    let min_version = match raw.min_version.get_ref().as_str() {
        "1.2" => TlsVersion::V1_2,
        "1.3" => TlsVersion::V1_3,
        other => {
            return refuse(
                problems,
                Problem::at(
                    raw.min_version.span(),
                    format!("listener {name:?}: min_version {other:?} is not \"1.2\" or \"1.3\" (older versions are not offered)"),
                ),
            )
        }
    };
    Some(Some(ListenerTls {
        certs: raw.certs.get_ref().iter().map(cert_files).collect(),
        alpn,
        min_version,
    }))
}

fn cert_files(files: &schema::CertFiles) -> CertFiles {
    CertFiles {
        cert: files.cert.clone(),
        key: files.key.clone(),
    }
}

/// The services a listener names: each must exist; and when it routes
/// `by_name` (Host or SNI), at most one may be its default (no hosts), and
/// no host may be claimed by two of them.
fn check_listener_services(
    listener: &schema::Listener,
    by_name: bool,
    services: &HashMap<&str, &schema::Service>,
    problems: &mut Vec<Problem>,
) {
    let mut hosts: HashMap<String, &str> = HashMap::new();
    let mut default: Option<&str> = None;
    for name in listener.services.get_ref() {
        let Some(service) = services.get(name.get_ref().as_str()) else {
            problems.push(Problem::at(
                name.span(),
                format!(
                    "listener {:?} names unknown service {:?}",
                    listener.name.get_ref(),
                    name.get_ref()
                ),
            ));
            continue;
        };
        if !by_name {
            continue;
        }
        if service.hosts.is_empty() {
            if let Some(other) = default.replace(name.get_ref()) {
                problems.push(Problem::at(
                    name.span(),
                    format!(
                        "services {other:?} and {:?} both have no hosts, so both would be listener {:?}'s default; give one of them hosts",
                        name.get_ref(),
                        listener.name.get_ref()
                    ),
                ));
            }
        }
        for host in &service.hosts {
            let key = host.get_ref().to_ascii_lowercase();
            if let Some(other) = hosts.insert(key, name.get_ref()) {
                if other != name.get_ref() {
                    problems.push(Problem::at(
                        host.span(),
                        format!(
                            "host {:?} is claimed by services {other:?} and {:?} on listener {:?}",
                            host.get_ref(),
                            name.get_ref(),
                            listener.name.get_ref()
                        ),
                    ));
                }
            }
        }
    }
}

fn services(raw: &schema::Config, problems: &mut Vec<Problem>) -> Vec<Option<Service>> {
    let used_by = |protocol: Option<Protocol>| -> HashSet<&str> {
        raw.listeners
            .iter()
            .filter(|l| protocol.is_none_or(|p| *l.protocol.get_ref() == p))
            .flat_map(|l| l.services.get_ref().iter().map(|s| s.get_ref().as_str()))
            .collect()
    };
    let used = used_by(None);
    let by_http = used_by(Some(Protocol::Http));
    let by_tcp = used_by(Some(Protocol::Tcp));
    let mut names = Unique::new("service");
    raw.services
        .iter()
        .map(|service| {
            let name = service.name.get_ref();
            names.check(&service.name, problems);
            if !used.contains(name.as_str()) {
                problems.push(Problem::at(
                    service.name.span(),
                    format!("service {name:?} is not used by any listener"),
                ));
            }
            for (key, value) in [
                ("connect_timeout", service.connect_timeout),
                ("request_timeout", service.request_timeout),
                ("outlier base_ejection", service.outlier.base_ejection),
            ] {
                if value.is_zero() {
                    problems.push(Problem::at(
                        service.name.span(),
                        format!("service {name:?}: {key} must be longer than 0s"),
                    ));
                }
            }
            let retries = *service.retries.get_ref();
            if retries > MAX_RETRIES {
                problems.push(Problem::at(
                    service.retries.span(),
                    format!("retries is {retries}; at most {MAX_RETRIES}"),
                ));
            }
            let hosts: Vec<Option<Host>> = service
                .hosts
                .iter()
                .map(|host| match Host::parse(host.get_ref()) {
                    Ok(parsed) => Some(parsed),
                    Err(why) => refuse(
                        problems,
                        Problem::at(host.span(), format!("host {:?} {why}", host.get_ref())),
                    ),
                })
                .collect();
            if let Some(window) = service.migrate {
                if !by_tcp.contains(name.as_str()) {
                    problems.push(Problem::at(
                        service.name.span(),
                        format!("service {name:?}: migrate moves tcp connections, but no tcp listener uses this service"),
                    ));
                }
                if window.is_zero() {
                    problems.push(Problem::at(
                        service.name.span(),
                        format!("service {name:?}: migrate must be longer than 0s"),
                    ));
                }
            }
            if by_http.contains(name.as_str()) {
                for pool in &service.pools {
                    if let Some(send_proxy) = &pool.send_proxy {
                        problems.push(Problem::at(
                            send_proxy.span(),
                            format!("pool {:?} of service {name:?}: send_proxy applies to tcp listeners' connections, but an http listener uses this service (its upstream connections carry many clients' requests)", pool.name.get_ref()),
                        ));
                    }
                }
            }
            if by_tcp.contains(name.as_str()) {
                for pool in &service.pools {
                    for (key, span) in [
                        ("tls", pool.tls.as_ref().map(|t| t.span())),
                        ("protocol", pool.protocol.as_ref().map(|p| p.span())),
                    ] {
                        if let Some(span) = span {
                            problems.push(Problem::at(
                                span,
                                format!("pool {:?} of service {name:?}: {key} applies to http listeners' requests, but a tcp listener uses this service (its bytes go upstream as they came)", pool.name.get_ref()),
                            ));
                        }
                    }
                }
            }
            let pools = pools(service, problems);
            let health = health(service, problems);
            let shift = shift(service, problems);
            Some(Service {
                name: name.clone(),
                hosts: hosts.into_iter().collect::<Option<_>>()?,
                connect_timeout: service.connect_timeout,
                request_timeout: service.request_timeout,
                drain_timeout: service.drain_timeout,
                retries,
                failover: service.failover,
                pools: pools?,
                health: health?,
                outlier: service.outlier.clone(),
                shift: shift?,
                migrate: service.migrate,
            })
        })
        .collect()
}

fn health(service: &schema::Service, problems: &mut Vec<Problem>) -> Option<Health> {
    let name = service.name.get_ref();
    let health = &service.health;
    let path = health.path.get_ref();
    let path = if !path.starts_with('/') {
        refuse(
            problems,
            Problem::at(
                health.path.span(),
                format!("health path {path:?} must start with /"),
            ),
        )
    } else {
        path.parse().ok().or_else(|| {
            refuse(
                problems,
                Problem::at(
                    health.path.span(),
                    format!("health path {path:?} is not a valid request path"),
                ),
            )
        })
    };
    let expect = Expect::parse(health.expect.get_ref())
        .map_err(|why| problems.push(Problem::at(health.expect.span(), why)))
        .ok();
    for threshold in [&health.healthy_threshold, &health.unhealthy_threshold] {
        if *threshold.get_ref() == 0 {
            problems.push(Problem::at(
                threshold.span(),
                "thresholds must be at least 1",
            ));
        }
    }
    for (key, value) in [
        ("health interval", health.interval),
        ("health timeout", health.timeout),
    ] {
        if value.is_zero() {
            problems.push(Problem::at(
                service.name.span(),
                format!("service {name:?}: {key} must be longer than 0s"),
            ));
        }
    }
    Some(Health {
        kind: health.kind,
        path: path?,
        expect: expect?,
        interval: health.interval,
        timeout: health.timeout,
        healthy_threshold: *health.healthy_threshold.get_ref(),
        unhealthy_threshold: *health.unhealthy_threshold.get_ref(),
    })
}

fn pools(service: &schema::Service, problems: &mut Vec<Problem>) -> Option<Vec<Pool>> {
    let name = service.name.get_ref();
    if service.pools.is_empty() {
        return refuse(
            problems,
            Problem::at(
                service.name.span(),
                format!("service {name:?} has no [[service.pool]]"),
            ),
        );
    }
    if service.pools.len() > 255 {
        problems.push(Problem::at(
            service.name.span(),
            format!("service {name:?} has more than 255 pools"),
        ));
    }
    if service.pools.iter().all(|p| *p.weight.get_ref() <= 0) {
        problems.push(Problem::at(
            service.name.span(),
            format!("service {name:?} has no pool with weight > 0, so it could serve nothing"),
        ));
    }
    let mut names = Unique::new("pool");
    let pools: Vec<Option<Pool>> = service
        .pools
        .iter()
        .map(|pool| {
            names.check(&pool.name, problems);
            pool_of(pool, problems)
        })
        .collect();
    pools.into_iter().collect()
}

fn pool_of(pool: &schema::Pool, problems: &mut Vec<Problem>) -> Option<Pool> {
    let name = pool.name.get_ref();
    let weight = *pool.weight.get_ref();
    let weight = match u32::try_from(weight) {
        Ok(w) if i64::from(w) <= MAX_WEIGHT => Some(w),
        _ => refuse(
            problems,
            Problem::at(
                pool.weight.span(),
                format!(
                    "pool {name:?} has weight {weight}; weights are whole numbers from 0 to {MAX_WEIGHT}"
                ),
            ),
        ),
    };
    if pool.endpoints.is_empty() {
        problems.push(Problem::at(
            pool.name.span(),
            format!("pool {name:?} has no endpoints"),
        ));
    }
    let mut seen = HashSet::new();
    let endpoints: Vec<Option<Endpoint>> = pool
        .endpoints
        .iter()
        .map(|endpoint| endpoint_of(endpoint, name, &mut seen, problems))
        .collect();
    let host = match &pool.host {
        None => Some(None),
        Some(host) => match HeaderValue::from_str(host.get_ref()) {
            Ok(value) if !value.is_empty() => Some(Some(value)),
            _ => refuse(
                problems,
                Problem::at(
                    host.span(),
                    format!("host {:?} is not a valid Host header value", host.get_ref()),
                ),
            ),
        },
    };
    let tls = match &pool.tls {
        None => Some(None),
        Some(tls) => pool_tls(name, tls, problems).map(Some),
    };
    // Without `sni`, the Host rewrite is the name TLS sends and verifies.
    if let (Some(Some(tls)), Some(Some(host)), Some(raw)) = (&tls, &host, &pool.host) {
        let authority = host
            .to_str()
            .ok()
            .and_then(|h| h.parse::<http::uri::Authority>().ok());
        let usable = authority.is_some_and(|a| {
            let host = a.host().trim_start_matches('[').trim_end_matches(']');
            host.parse::<std::net::IpAddr>().is_ok() || Host::parse(host).is_ok()
        });
        if tls.sni.is_none() && !usable {
            problems.push(Problem::at(
                raw.span(),
                format!(
                    "pool {name:?}: host {:?} is not a host name TLS can verify; set tls sni",
                    raw.get_ref()
                ),
            ));
        }
    }
    Some(Pool {
        name: name.clone(),
        weight: weight?,
        endpoints: endpoints.into_iter().collect::<Option<_>>()?,
        host: host?,
        send_proxy: pool.send_proxy.as_ref().map(|v| *v.get_ref()),
        tls: tls?,
        protocol: pool
            .protocol
            .as_ref()
            .map(|p| *p.get_ref())
            .unwrap_or_default(),
    })
}

fn pool_tls(
    pool: &str,
    tls: &Spanned<schema::PoolTls>,
    problems: &mut Vec<Problem>,
) -> Option<PoolTls> {
    let raw = tls.get_ref();
    let sni = match &raw.sni {
        None => None,
        Some(sni) => match Host::parse(sni.get_ref()) {
            Ok(Host::Exact(name)) => Some(name),
            _ => {
                return refuse(
                    problems,
                    Problem::at(
                        sni.span(),
                        format!(
                            "pool {pool:?}: tls sni {:?} is not a host name",
                            sni.get_ref()
                        ),
                    ),
                )
            }
        },
    };
    let client_cert = match (&raw.cert, &raw.key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(CertFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => {
            return refuse(
                problems,
                Problem::at(
                    tls.span(),
                    format!("pool {pool:?}: tls needs both cert and key for a client certificate, or neither"),
                ),
            )
        }
    };
    if raw.insecure_skip_verify && raw.ca_file.is_some() {
        problems.push(Problem::at(
            tls.span(),
            format!("pool {pool:?}: tls has both ca_file and insecure_skip_verify = true; verification is either on or off"),
        ));
    }
    Some(PoolTls {
        sni,
        ca_file: raw.ca_file.clone(),
        insecure_skip_verify: raw.insecure_skip_verify,
        client_cert,
    })
}

fn endpoint_of<'a>(
    endpoint: &'a Spanned<String>,
    pool: &str,
    seen: &mut HashSet<&'a str>,
    problems: &mut Vec<Problem>,
) -> Option<Endpoint> {
    let text = endpoint.get_ref().as_str();
    let Some(parsed) = Endpoint::parse(text) else {
        return refuse(
            problems,
            Problem::at(
                endpoint.span(),
                format!(
                    "endpoint {text:?} is not host:port (like \"10.0.0.10:80\", \"[fd00::1]:80\" or \"ingress.local:80\")"
                ),
            ),
        );
    };
    if !seen.insert(text) {
        return refuse(
            problems,
            Problem::at(
                endpoint.span(),
                format!("endpoint {text:?} is listed twice in pool {pool:?}"),
            ),
        );
    }
    Some(parsed)
}

/// Tracks names that must be unique among their kind.
struct Unique<'a> {
    kind: &'static str,
    seen: HashSet<&'a str>,
}

impl<'a> Unique<'a> {
    fn new(kind: &'static str) -> Self {
        Self {
            kind,
            seen: HashSet::new(),
        }
    }

    fn check(&mut self, name: &'a Spanned<String>, problems: &mut Vec<Problem>) {
        let text = name.get_ref().as_str();
        if text.is_empty() {
            problems.push(Problem::at(
                name.span(),
                format!("{} name must not be empty", self.kind),
            ));
        } else if !self.seen.insert(text) {
            problems.push(Problem::at(
                name.span(),
                format!("duplicate {} name {text:?}", self.kind),
            ));
        }
    }
}
