//! Checks that span more than one field: names that must be unique, references
//! between listeners and services, value ranges. Collects every problem instead
//! of stopping at the first, so `cutover check` can list them all.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::{Config, Problem, Protocol};

/// Largest weight a pool may have. Weights are relative; percentages in practice.
pub const MAX_WEIGHT: i64 = 10_000;

pub fn validate(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_limits(config, &mut problems);
    check_admin(config, &mut problems);
    check_listeners(config, &mut problems);
    check_services(config, &mut problems);
    problems
}

fn check_limits(config: &Config, problems: &mut Vec<Problem>) {
    let limits = &config.limits;
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
    ] {
        if value.is_zero() {
            problems.push(Problem {
                span: None,
                message: format!("[limits] {name} must be longer than 0s"),
            });
        }
    }
    if config.runtime.threads > 1024 {
        problems.push(Problem {
            span: None,
            message: format!(
                "[runtime] threads is {}; it must be between 0 (one per core) and 1024",
                config.runtime.threads
            ),
        });
    }
}

fn check_admin(config: &Config, problems: &mut Vec<Problem>) {
    let admin = &config.admin;
    match admin.listen.get_ref().parse::<SocketAddr>() {
        Ok(addr) => {
            if !addr.ip().is_loopback() && admin.token_file.is_none() {
                problems.push(Problem::at(
                    admin.listen.span(),
                    format!("[admin] listens on {addr}, which is not a loopback address, but has no token_file: anyone who can reach it could move traffic"),
                ));
            }
            if config.listeners.iter().any(|l| {
                l.bind.get_ref().parse::<SocketAddr>().ok() == Some(addr) && addr.port() != 0
            }) {
                problems.push(Problem::at(
                    admin.listen.span(),
                    format!("[admin] listen {addr} is also a listener's bind"),
                ));
            }
        }
        Err(_) => problems.push(Problem::at(
            admin.listen.span(),
            format!(
                "[admin] listen {:?} is not an address and port, like \"127.0.0.1:9901\"",
                admin.listen.get_ref()
            ),
        )),
    }
}

fn check_listeners(config: &Config, problems: &mut Vec<Problem>) {
    if config.listeners.is_empty() {
        problems.push(Problem {
            span: Some(0..0),
            message: "no [[listener]]: the proxy would accept nothing".into(),
        });
    }
    let services: HashMap<&str, &super::Service> = config
        .services
        .iter()
        .map(|s| (s.name.get_ref().as_str(), s))
        .collect();
    let mut names = Unique::new("listener");
    let mut binds = HashSet::new();
    for listener in &config.listeners {
        names.check(&listener.name, problems);
        match listener.bind.get_ref().parse::<SocketAddr>() {
            Ok(addr) => {
                if !binds.insert(addr) {
                    problems.push(Problem::at(
                        listener.bind.span(),
                        format!("bind {addr} is used by another listener"),
                    ));
                }
            }
            Err(_) => problems.push(Problem::at(
                listener.bind.span(),
                format!(
                    "bind {:?} is not an address and port, like \"0.0.0.0:8080\" or \"[::]:8080\"",
                    listener.bind.get_ref()
                ),
            )),
        }
        if *listener.protocol.get_ref() == Protocol::Tcp {
            problems.push(Problem::at(
                listener.protocol.span(),
                "protocol \"tcp\" (layer 4) is not available in this version; use \"http\"",
            ));
        }
        if listener.services.get_ref().is_empty() {
            problems.push(Problem::at(
                listener.services.span(),
                format!("listener {:?} names no service", listener.name.get_ref()),
            ));
        }
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
}

fn check_services(config: &Config, problems: &mut Vec<Problem>) {
    let used: HashSet<&str> = config
        .listeners
        .iter()
        .flat_map(|l| l.services.get_ref().iter().map(|s| s.get_ref().as_str()))
        .collect();
    let mut names = Unique::new("service");
    for service in &config.services {
        let name = service.name.get_ref();
        names.check(&service.name, problems);
        if !used.contains(name.as_str()) {
            problems.push(Problem::at(
                service.name.span(),
                format!("service {name:?} is not used by any listener"),
            ));
        }
        for host in &service.hosts {
            if let Err(why) = check_host_pattern(host.get_ref()) {
                problems.push(Problem::at(
                    host.span(),
                    format!("host {:?} {why}", host.get_ref()),
                ));
            }
        }
        for (key, value) in [
            ("connect_timeout", service.connect_timeout),
            ("request_timeout", service.request_timeout),
        ] {
            if value == Duration::ZERO {
                problems.push(Problem::at(
                    service.name.span(),
                    format!("service {name:?}: {key} must be longer than 0s"),
                ));
            }
        }
        check_pools(service, problems);
        check_health(service, problems);
    }
}

/// Most attempts a request may make beyond its first.
pub const MAX_RETRIES: u32 = 10;

fn check_health(service: &super::Service, problems: &mut Vec<Problem>) {
    let name = service.name.get_ref();
    if *service.retries.get_ref() > MAX_RETRIES {
        problems.push(Problem::at(
            service.retries.span(),
            format!(
                "retries is {}; at most {MAX_RETRIES}",
                service.retries.get_ref()
            ),
        ));
    }
    let health = &service.health;
    if !health.path.get_ref().starts_with('/') {
        problems.push(Problem::at(
            health.path.span(),
            format!("health path {:?} must start with /", health.path.get_ref()),
        ));
    }
    if let Err(why) = crate::health::Expect::parse(health.expect.get_ref()) {
        problems.push(Problem::at(health.expect.span(), why));
    }
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
        ("outlier base_ejection", service.outlier.base_ejection),
    ] {
        if value.is_zero() {
            problems.push(Problem::at(
                service.name.span(),
                format!("service {name:?}: {key} must be longer than 0s"),
            ));
        }
    }
}

fn check_pools(service: &super::Service, problems: &mut Vec<Problem>) {
    let name = service.name.get_ref();
    if service.pools.is_empty() {
        problems.push(Problem::at(
            service.name.span(),
            format!("service {name:?} has no [[service.pool]]"),
        ));
        return;
    }
    if service.pools.len() > 255 {
        problems.push(Problem::at(
            service.name.span(),
            format!("service {name:?} has more than 255 pools"),
        ));
    }
    let mut pools = Unique::new("pool");
    for pool in &service.pools {
        pools.check(&pool.name, problems);
        let weight = *pool.weight.get_ref();
        if !(0..=MAX_WEIGHT).contains(&weight) {
            problems.push(Problem::at(
                pool.weight.span(),
                format!(
                    "pool {:?} has weight {weight}; weights are whole numbers from 0 to {MAX_WEIGHT}",
                    pool.name.get_ref()
                ),
            ));
        }
        if pool.endpoints.is_empty() {
            problems.push(Problem::at(
                pool.name.span(),
                format!("pool {:?} has no endpoints", pool.name.get_ref()),
            ));
        }
        let mut seen = HashSet::new();
        for endpoint in &pool.endpoints {
            if split_host_port(endpoint.get_ref()).is_none() {
                problems.push(Problem::at(
                    endpoint.span(),
                    format!(
                        "endpoint {:?} is not host:port (like \"10.0.0.10:80\", \"[fd00::1]:80\" or \"ingress.local:80\")",
                        endpoint.get_ref()
                    ),
                ));
            } else if !seen.insert(endpoint.get_ref()) {
                problems.push(Problem::at(
                    endpoint.span(),
                    format!(
                        "endpoint {:?} is listed twice in pool {:?}",
                        endpoint.get_ref(),
                        pool.name.get_ref()
                    ),
                ));
            }
        }
        if let Some(host) = &pool.host {
            if http::HeaderValue::from_str(host.get_ref()).is_err() || host.get_ref().is_empty() {
                problems.push(Problem::at(
                    host.span(),
                    format!("host {:?} is not a valid Host header value", host.get_ref()),
                ));
            }
        }
    }
    if service.pools.iter().all(|p| *p.weight.get_ref() <= 0) {
        problems.push(Problem::at(
            service.name.span(),
            format!("service {name:?} has no pool with weight > 0, so it could serve nothing"),
        ));
    }
}

/// Splits `host:port`, where host is an IPv4 address, a bracketed IPv6 address or
/// a DNS name. `None` when the text is not of that form.
pub fn split_host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        return Some((host, port));
    }
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    valid_name.then_some((host, port))
}

/// A `hosts` entry: a DNS name, or `*.` and a suffix; no port.
fn check_host_pattern(pattern: &str) -> Result<(), &'static str> {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    if name.contains(':') {
        return Err("must not carry a port: requests are matched on the host name alone");
    }
    if name.is_empty()
        || !name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
    {
        return Err("is not a host name or a \"*.suffix\" wildcard");
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::split_host_port;

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("10.0.0.10:80"), Some(("10.0.0.10", 80)));
        assert_eq!(split_host_port("[::1]:8080"), Some(("[::1]", 8080)));
        assert_eq!(
            split_host_port("ingress.local:443"),
            Some(("ingress.local", 443))
        );
        assert_eq!(split_host_port("10.0.0.10"), None);
        assert_eq!(split_host_port("10.0.0.10:0"), None);
        assert_eq!(split_host_port("10.0.0.10:99999"), None);
        assert_eq!(split_host_port(":80"), None);
        assert_eq!(split_host_port("http://x:80"), None);
        assert_eq!(split_host_port("[zz]:80"), None);
    }
}
