//! The one way tests write a cutover configuration: a builder that renders
//! the TOML a user would write, with only the keys a test sets, so every
//! other value is cutover's own default. Listeners bind `127.0.0.1:0` unless
//! told otherwise, and a service joins the listener declared before it.
//! It writes valid files only; a test about a broken or misspelt file (the
//! `file:line:col` messages of `cutover check`) keeps that text literal.
//!
//! ```ignore
//! Config::new()
//!     .limits(|l| l.header_read_timeout("1s"))
//!     .admin()
//!     .listener("web")
//!     .service("hello", |s| {
//!         s.hosts(["hello.example.com"])
//!             .retries(2)
//!             .health_none()
//!             .pool_with("blue", 100, &[blue.addr], |p| p.host("blue.internal"))
//!             .pool("green", 0, &[green.addr])
//!     })
//!     .toml()
//! ```

use std::fmt::{self, Display, Write as _};
use std::net::SocketAddr;
use std::path::Path;

/// A whole configuration file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    threads: Option<usize>,
    limits: Limits,
    admin: Option<Admin>,
    listeners: Vec<Listener>,
    services: Vec<Service>,
}

/// `[limits]`: each key is written only when set.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    max_connections: Option<usize>,
    max_header_bytes: Option<usize>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    body_read_timeout: Option<String>,
    send_timeout: Option<String>,
    handshake_timeout: Option<String>,
}

#[derive(Debug, Clone)]
struct Admin {
    listen: String,
    token_file: Option<String>,
    read_only: Option<bool>,
    state_file: Option<String>,
    /// `tls`, as the inline table's text.
    tls: Option<String>,
    audit_log: Option<String>,
    /// `[[admin.webhook]]` tables: url and event kinds.
    webhooks: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone)]
struct Listener {
    name: String,
    bind: String,
    services: Vec<String>,
    protocol: Option<&'static str>,
    sni: Option<bool>,
    accept_proxy: Option<Vec<String>>,
    /// `tls`, as the inline table's text.
    tls: Option<String>,
    redirect_https: Option<bool>,
}

/// One `[[service]]` table and what it holds.
#[derive(Debug, Clone)]
pub struct Service {
    name: String,
    hosts: Option<Vec<String>>,
    connect_timeout: Option<String>,
    request_timeout: Option<String>,
    drain_timeout: Option<String>,
    retries: Option<u32>,
    failover: Option<bool>,
    pools: Vec<Pool>,
    health: Option<Health>,
    outlier: Option<(u32, String)>,
    migrate: Option<String>,
    /// `[service.shift]`, as its lines.
    shift: Option<String>,
}

/// One `[[service.pool]]` table.
#[derive(Debug, Clone)]
pub struct Pool {
    name: String,
    weight: i64,
    endpoints: Vec<String>,
    host: Option<String>,
    send_proxy: Option<&'static str>,
    /// `tls = { ... }`, as written.
    tls: Option<String>,
    protocol: Option<&'static str>,
}

/// `[service.health]`: each key is written only when set.
#[derive(Debug, Clone, Default)]
pub struct Health {
    kind: Option<&'static str>,
    path: Option<String>,
    expect: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    healthy_threshold: Option<u32>,
    unhealthy_threshold: Option<u32>,
}

/// A TOML string literal, escaped.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn path_text(path: &Path) -> String {
    path.to_str().expect("a UTF-8 path").to_owned()
}

impl Config {
    pub fn new() -> Self {
        Self::default()
    }

    /// `[runtime] threads` (read by `cutover run` only).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Sets `[limits]` keys; called again, it changes the same table.
    pub fn limits(mut self, set: impl FnOnce(Limits) -> Limits) -> Self {
        self.limits = set(self.limits);
        self
    }

    /// The admin API on an ephemeral loopback port.
    pub fn admin(self) -> Self {
        self.admin_at("127.0.0.1:0")
    }

    /// The admin API on `listen`.
    pub fn admin_at(mut self, listen: impl Display) -> Self {
        self.admin_table().listen = listen.to_string();
        self
    }

    /// `[admin] token_file`.
    pub fn admin_token(mut self, path: &Path) -> Self {
        self.admin_table().token_file = Some(path_text(path));
        self
    }

    /// `[admin] read_only`.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.admin_table().read_only = Some(read_only);
        self
    }

    /// `[admin] state_file`.
    pub fn state_file(mut self, path: &Path) -> Self {
        self.admin_table().state_file = Some(path_text(path));
        self
    }

    fn admin_table(&mut self) -> &mut Admin {
        self.admin.get_or_insert_with(|| Admin {
            listen: "127.0.0.1:0".to_owned(),
            token_file: None,
            read_only: None,
            state_file: None,
            tls: None,
            audit_log: None,
            webhooks: Vec::new(),
        })
    }

    /// `[admin] audit_log`.
    pub fn audit_log(mut self, path: &Path) -> Self {
        self.admin_table().audit_log = Some(path_text(path));
        self
    }

    /// An `[[admin.webhook]]` POSTing events of these kinds (every kind
    /// when empty) to `url`.
    pub fn webhook(mut self, url: &str, events: &[&str]) -> Self {
        let events = events.iter().map(|e| (*e).to_owned()).collect();
        self.admin_table().webhooks.push((url.to_owned(), events));
        self
    }

    /// A listener on an ephemeral loopback port.
    pub fn listener(self, name: &str) -> Self {
        self.listener_at(name, "127.0.0.1:0")
    }

    /// A listener on `bind`.
    pub fn listener_at(mut self, name: &str, bind: impl Display) -> Self {
        self.listeners.push(Listener {
            name: name.to_owned(),
            bind: bind.to_string(),
            services: Vec::new(),
            protocol: None,
            sni: None,
            accept_proxy: None,
            tls: None,
            redirect_https: None,
        });
        self
    }

    /// A `protocol = "tcp"` listener on an ephemeral loopback port.
    pub fn tcp_listener(self, name: &str) -> Self {
        self.tcp_listener_at(name, "127.0.0.1:0")
    }

    /// A `protocol = "tcp"` listener on `bind` (another loopback address
    /// beside a listener on `127.0.0.1:0`: two binds may not be the same).
    pub fn tcp_listener_at(mut self, name: &str, bind: impl Display) -> Self {
        self = self.listener_at(name, bind);
        self.last_listener().protocol = Some("tcp");
        self
    }

    /// The last listener routes by the ClientHello's server name.
    pub fn sni(mut self) -> Self {
        self.last_listener().sni = Some(true);
        self
    }

    /// The last listener reads PROXY headers from these sources.
    pub fn accept_proxy<const N: usize>(mut self, sources: [&str; N]) -> Self {
        self.last_listener().accept_proxy = Some(sources.map(str::to_owned).to_vec());
        self
    }

    /// The last listener terminates TLS with these certificate and key
    /// files; `extra` adds keys to the table (`alpn = ["h2"]`), or is "".
    pub fn tls(mut self, pairs: &[(&Path, &Path)], extra: &str) -> Self {
        let certs: Vec<String> = pairs
            .iter()
            .map(|(cert, key)| {
                format!(
                    "{{ cert = {}, key = {} }}",
                    quoted(&path_text(cert)),
                    quoted(&path_text(key))
                )
            })
            .collect();
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        self.last_listener().tls = Some(format!("{{ certs = [{}]{extra} }}", certs.join(", ")));
        self
    }

    /// The last listener answers every request with a redirect to https.
    pub fn redirect_https(mut self) -> Self {
        self.last_listener().redirect_https = Some(true);
        self
    }

    /// `[admin] tls` with this certificate and key.
    pub fn admin_tls(mut self, cert: &Path, key: &Path) -> Self {
        self.admin_table().tls = Some(format!(
            "{{ cert = {}, key = {} }}",
            quoted(&path_text(cert)),
            quoted(&path_text(key))
        ));
        self
    }

    fn last_listener(&mut self) -> &mut Listener {
        self.listeners.last_mut().expect("a listener declared")
    }

    /// The last listener also serves `service`, declared elsewhere.
    pub fn serves(mut self, service: &str) -> Self {
        self.listeners
            .last_mut()
            .expect("a listener before `serves`")
            .services
            .push(service.to_owned());
        self
    }

    /// A service, served by the last listener declared (if any).
    pub fn service(mut self, name: &str, build: impl FnOnce(Service) -> Service) -> Self {
        if let Some(listener) = self.listeners.last_mut() {
            listener.services.push(name.to_owned());
        }
        self.services.push(build(Service::new(name)));
        self
    }

    /// The file's text.
    pub fn toml(&self) -> String {
        self.to_string()
    }
}

impl Limits {
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = Some(n);
        self
    }

    pub fn max_header_bytes(mut self, n: usize) -> Self {
        self.max_header_bytes = Some(n);
        self
    }

    pub fn header_read_timeout(mut self, d: &str) -> Self {
        self.header_read_timeout = Some(d.to_owned());
        self
    }

    pub fn idle_timeout(mut self, d: &str) -> Self {
        self.idle_timeout = Some(d.to_owned());
        self
    }

    pub fn body_read_timeout(mut self, d: &str) -> Self {
        self.body_read_timeout = Some(d.to_owned());
        self
    }

    pub fn send_timeout(mut self, d: &str) -> Self {
        self.send_timeout = Some(d.to_owned());
        self
    }

    pub fn handshake_timeout(mut self, d: &str) -> Self {
        self.handshake_timeout = Some(d.to_owned());
        self
    }

    fn is_empty(&self) -> bool {
        self.handshake_timeout.is_none()
            && self.max_connections.is_none()
            && self.max_header_bytes.is_none()
            && self.header_read_timeout.is_none()
            && self.idle_timeout.is_none()
            && self.body_read_timeout.is_none()
            && self.send_timeout.is_none()
    }
}

impl Service {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            hosts: None,
            connect_timeout: None,
            request_timeout: None,
            drain_timeout: None,
            retries: None,
            failover: None,
            pools: Vec::new(),
            health: None,
            outlier: None,
            migrate: None,
            shift: None,
        }
    }

    /// `[service.shift]` with these lines (`key = value`, one per line).
    pub fn shift(mut self, lines: &str) -> Self {
        self.shift = Some(lines.to_owned());
        self
    }

    /// `migrate`: a pool leaving rotation has its tcp connections closed
    /// one at a time over this window.
    pub fn migrate(mut self, d: &str) -> Self {
        self.migrate = Some(d.to_owned());
        self
    }

    /// Host names (or `*.suffix` wildcards) the service answers; without
    /// them it is its listeners' default.
    pub fn hosts<const N: usize>(mut self, hosts: [&str; N]) -> Self {
        self.hosts = Some(hosts.iter().map(|h| (*h).to_owned()).collect());
        self
    }

    pub fn connect_timeout(mut self, d: &str) -> Self {
        self.connect_timeout = Some(d.to_owned());
        self
    }

    pub fn request_timeout(mut self, d: &str) -> Self {
        self.request_timeout = Some(d.to_owned());
        self
    }

    pub fn drain_timeout(mut self, d: &str) -> Self {
        self.drain_timeout = Some(d.to_owned());
        self
    }

    pub fn retries(mut self, n: u32) -> Self {
        self.retries = Some(n);
        self
    }

    pub fn failover(mut self, on: bool) -> Self {
        self.failover = Some(on);
        self
    }

    /// A pool of `endpoints` with `weight` (any integer, so a test can write
    /// one validation refuses).
    pub fn pool(self, name: &str, weight: impl Into<i64>, endpoints: &[SocketAddr]) -> Self {
        self.pool_with(name, weight, endpoints, |p| p)
    }

    /// A pool, with what `build` adds to it (its Host rewrite).
    pub fn pool_with(
        mut self,
        name: &str,
        weight: impl Into<i64>,
        endpoints: &[SocketAddr],
        build: impl FnOnce(Pool) -> Pool,
    ) -> Self {
        self.pools.push(build(Pool {
            name: name.to_owned(),
            weight: weight.into(),
            endpoints: endpoints.iter().map(ToString::to_string).collect(),
            host: None,
            send_proxy: None,
            tls: None,
            protocol: None,
        }));
        self
    }

    /// `[service.health]` keys.
    pub fn health(mut self, set: impl FnOnce(Health) -> Health) -> Self {
        self.health = Some(set(self.health.take().unwrap_or_default()));
        self
    }

    /// No active checks: endpoints are healthy unless passively ejected.
    pub fn health_none(self) -> Self {
        self.health(|h| h.none())
    }

    /// HTTP checks of `path` every `interval`.
    pub fn health_http(self, path: &str, interval: &str) -> Self {
        self.health(|h| h.http(path).interval(interval))
    }

    /// `[service.outlier]`: ejection after `consecutive_failures` in a row,
    /// first for `base_ejection`.
    pub fn outlier(mut self, consecutive_failures: u32, base_ejection: &str) -> Self {
        self.outlier = Some((consecutive_failures, base_ejection.to_owned()));
        self
    }
}

impl Pool {
    /// The Host header this pool's endpoints get instead of the client's.
    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_owned());
        self
    }

    /// `send_proxy`: "v1" or "v2".
    pub fn send_proxy(mut self, version: &'static str) -> Self {
        self.send_proxy = Some(version);
        self
    }

    /// `tls = { sni, ca_file }`: TLS to the endpoints, verified against
    /// `ca_file` for the name `sni`.
    pub fn tls(mut self, sni: &str, ca_file: &Path) -> Self {
        self.tls = Some(format!(
            "{{ sni = {}, ca_file = {} }}",
            quoted(sni),
            quoted(&path_text(ca_file))
        ));
        self
    }

    /// `tls = { sni, ca_file, cert, key }`: as `tls`, presenting a client
    /// certificate (mutual TLS).
    pub fn mtls(mut self, sni: &str, ca_file: &Path, cert: &Path, key: &Path) -> Self {
        self.tls = Some(format!(
            "{{ sni = {}, ca_file = {}, cert = {}, key = {} }}",
            quoted(sni),
            quoted(&path_text(ca_file)),
            quoted(&path_text(cert)),
            quoted(&path_text(key))
        ));
        self
    }

    /// `protocol`: "http1" or "h2".
    pub fn protocol(mut self, protocol: &'static str) -> Self {
        self.protocol = Some(protocol);
        self
    }
}

impl Health {
    pub fn none(mut self) -> Self {
        self.kind = Some("none");
        self
    }

    pub fn tcp(mut self) -> Self {
        self.kind = Some("tcp");
        self
    }

    /// `kind = "http"` with `path`.
    pub fn http(mut self, path: &str) -> Self {
        self.kind = Some("http");
        self.path = Some(path.to_owned());
        self
    }

    pub fn expect(mut self, statuses: &str) -> Self {
        self.expect = Some(statuses.to_owned());
        self
    }

    pub fn interval(mut self, d: &str) -> Self {
        self.interval = Some(d.to_owned());
        self
    }

    pub fn timeout(mut self, d: &str) -> Self {
        self.timeout = Some(d.to_owned());
        self
    }

    pub fn healthy_threshold(mut self, n: u32) -> Self {
        self.healthy_threshold = Some(n);
        self
    }

    pub fn unhealthy_threshold(mut self, n: u32) -> Self {
        self.unhealthy_threshold = Some(n);
        self
    }
}

/// Writes `key = value` when the value is set; strings are quoted.
struct Table<'a>(&'a mut String, &'static str);

impl Table<'_> {
    fn text(&mut self, key: &str, value: &Option<String>) -> fmt::Result {
        match value {
            Some(v) => writeln!(self.0, "{}{key} = {}", self.1, quoted(v)),
            None => Ok(()),
        }
    }

    fn raw(&mut self, key: &str, value: Option<impl Display>) -> fmt::Result {
        match value {
            Some(v) => writeln!(self.0, "{}{key} = {v}", self.1),
            None => Ok(()),
        }
    }

    fn list(&mut self, key: &str, items: &[String]) -> fmt::Result {
        let items: Vec<String> = items.iter().map(|i| quoted(i)).collect();
        writeln!(self.0, "{}{key} = [{}]", self.1, items.join(", "))
    }
}

impl Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        if let Some(threads) = self.threads {
            writeln!(out, "[runtime]\nthreads = {threads}\n")?;
        }
        if !self.limits.is_empty() {
            let l = &self.limits;
            out.push_str("[limits]\n");
            let mut t = Table(&mut out, "");
            t.raw("max_connections", l.max_connections)?;
            t.raw("max_header_bytes", l.max_header_bytes)?;
            t.text("header_read_timeout", &l.header_read_timeout)?;
            t.text("idle_timeout", &l.idle_timeout)?;
            t.text("body_read_timeout", &l.body_read_timeout)?;
            t.text("send_timeout", &l.send_timeout)?;
            t.text("handshake_timeout", &l.handshake_timeout)?;
            out.push('\n');
        }
        if let Some(admin) = &self.admin {
            out.push_str("[admin]\n");
            let mut t = Table(&mut out, "");
            t.text("listen", &Some(admin.listen.clone()))?;
            t.text("token_file", &admin.token_file)?;
            t.raw("read_only", admin.read_only)?;
            t.text("state_file", &admin.state_file)?;
            t.raw("tls", admin.tls.as_ref())?;
            t.text("audit_log", &admin.audit_log)?;
            out.push('\n');
            for (url, events) in &admin.webhooks {
                out.push_str("[[admin.webhook]]\n");
                let mut t = Table(&mut out, "");
                t.text("url", &Some(url.clone()))?;
                t.list("events", events)?;
                out.push('\n');
            }
        }
        for listener in &self.listeners {
            out.push_str("[[listener]]\n");
            let mut t = Table(&mut out, "");
            t.text("name", &Some(listener.name.clone()))?;
            t.text("bind", &Some(listener.bind.clone()))?;
            t.text("protocol", &listener.protocol.map(str::to_owned))?;
            t.list("services", &listener.services)?;
            t.raw("sni", listener.sni)?;
            if let Some(sources) = &listener.accept_proxy {
                t.list("accept_proxy", sources)?;
            }
            t.raw("tls", listener.tls.as_ref())?;
            t.raw("redirect_https", listener.redirect_https)?;
            out.push('\n');
        }
        for service in &self.services {
            write_service(&mut out, service)?;
        }
        f.write_str(&out)
    }
}

fn write_service(out: &mut String, s: &Service) -> fmt::Result {
    out.push_str("[[service]]\n");
    let mut t = Table(out, "");
    t.text("name", &Some(s.name.clone()))?;
    if let Some(hosts) = &s.hosts {
        t.list("hosts", hosts)?;
    }
    t.text("connect_timeout", &s.connect_timeout)?;
    t.text("request_timeout", &s.request_timeout)?;
    t.text("drain_timeout", &s.drain_timeout)?;
    t.raw("retries", s.retries)?;
    t.raw("failover", s.failover)?;
    t.text("migrate", &s.migrate)?;
    for pool in &s.pools {
        out.push_str("\n  [[service.pool]]\n");
        let mut t = Table(out, "  ");
        t.text("name", &Some(pool.name.clone()))?;
        t.raw("weight", Some(pool.weight))?;
        t.list("endpoints", &pool.endpoints)?;
        t.text("host", &pool.host)?;
        t.text("send_proxy", &pool.send_proxy.map(str::to_owned))?;
        t.raw("tls", pool.tls.as_ref())?;
        t.text("protocol", &pool.protocol.map(str::to_owned))?;
    }
    if let Some(h) = &s.health {
        out.push_str("\n  [service.health]\n");
        let mut t = Table(out, "  ");
        t.text("kind", &h.kind.map(str::to_owned))?;
        t.text("path", &h.path)?;
        t.text("expect", &h.expect)?;
        t.text("interval", &h.interval)?;
        t.text("timeout", &h.timeout)?;
        t.raw("healthy_threshold", h.healthy_threshold)?;
        t.raw("unhealthy_threshold", h.unhealthy_threshold)?;
    }
    if let Some((failures, ejection)) = &s.outlier {
        out.push_str("\n  [service.outlier]\n");
        let mut t = Table(out, "  ");
        t.raw("consecutive_failures", Some(failures))?;
        t.text("base_ejection", &Some(ejection.clone()))?;
    }
    if let Some(lines) = &s.shift {
        out.push_str("\n  [service.shift]\n");
        for line in lines.lines() {
            writeln!(out, "  {}", line.trim())?;
        }
    }
    out.push('\n');
    Ok(())
}
