//! `cutover demo`: two sample backends standing in for the blue and green
//! clusters, a configuration file written for them, and the proxy in front,
//! all on loopback. Each backend answers with a small page naming its pool and
//! the request's host, like a hello-world app deployed to each cluster.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

/// Serves the sample page for `pool` on two ephemeral loopback ports, in
/// plain HTTP and over TLS (a certificate generated now for
/// `TLS_HOST`), first printing `listening ADDR tls ADDR` on stdout; runs
/// until the process is killed. The demo runs each sample backend as such
/// a process of its own, so an operator can kill one and watch the proxy
/// route around it.
pub async fn serve_sample(pool: Arc<str>) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let tls_listener = TcpListener::bind("127.0.0.1:0").await?;
    let acceptor = tls_acceptor(&pool).map_err(std::io::Error::other)?;
    println!(
        "listening {} tls {}",
        listener.local_addr()?,
        tls_listener.local_addr()?
    );
    std::io::stdout().flush()?;
    let tls_pool = pool.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = tls_listener.accept().await else {
                continue;
            };
            let (pool, acceptor) = (tls_pool.clone(), acceptor.clone());
            tokio::spawn(async move {
                match acceptor.accept(stream).await {
                    Ok(stream) => serve_page(pool, stream).await,
                    Err(e) => tracing::debug!(error = %e, "sample backend TLS handshake failed"),
                }
            });
        }
    });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(%pool, error = %e, "sample backend accept failed");
                continue;
            }
        };
        tokio::spawn(serve_page(pool.clone(), stream));
    }
}

/// The host name the sample backends' TLS certificates are for.
pub const TLS_HOST: &str = "hello.example.com";

/// A TLS acceptor with a self-signed certificate for `TLS_HOST`, its
/// subject naming `pool`, so `openssl s_client` shows which cluster
/// answered. Offers HTTP/2 and HTTP/1.1.
fn tls_acceptor(
    pool: &str,
) -> Result<tokio_rustls::TlsAcceptor, Box<dyn std::error::Error + Send + Sync>> {
    let mut params = rcgen::CertificateParams::new(vec![TLS_HOST.to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("cutover demo {pool}"));
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves the sample page on one connection, HTTP/1.1 or HTTP/2.
async fn serve_page<S>(pool: Arc<str>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let page = sample_page(&pool, &req);
        async move { Ok::<_, Infallible>(page) }
    });
    if let Err(e) = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "sample backend connection error");
    }
}

/// A sample backend running as a child process of this one; killed with it.
pub struct SampleProcess {
    pub addr: SocketAddr,
    /// Where it serves the same page over TLS.
    pub tls_addr: SocketAddr,
    pub(crate) pid: u32,
    _child: tokio::process::Child,
}

/// Starts `cutover sample-backend --pool POOL` and waits for its address.
pub async fn spawn_sample(pool: &str) -> std::io::Result<SampleProcess> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["sample-backend", "--pool", pool])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await?;
    let (addr, tls_addr) = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|rest| rest.split_once(" tls "))
        .and_then(|(plain, tls)| Some((plain.parse().ok()?, tls.parse().ok()?)))
        .ok_or_else(|| std::io::Error::other(format!("sample backend said {line:?}")))?;
    Ok(SampleProcess {
        addr,
        tls_addr,
        pid: child.id().unwrap_or_default(),
        _child: child,
    })
}

/// Seconds `/slow` streams for, one line a second: a long download to hold
/// on a pool while it drains.
const SLOW_SECONDS: u32 = 15;

fn sample_page(pool: &str, req: &Request<Incoming>) -> Response<Either<Full<Bytes>, Slow>> {
    let response = Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("x-pool", pool);
    if req.uri().path() == "/slow" {
        let body = Slow {
            pool: pool.into(),
            sent: 0,
            tick: tokio::time::interval(Duration::from_secs(1)),
        };
        return response
            .body(Either::Right(body))
            .expect("static headers are valid");
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("-");
    let body = format!(
        "hello from {pool}\nhost: {host}\npath: {}\n",
        req.uri().path()
    );
    response
        .body(Either::Left(Full::new(Bytes::from(body))))
        .expect("static headers are valid")
}

/// The body of `/slow`: a line a second for `SLOW_SECONDS`.
pub(crate) struct Slow {
    pool: Arc<str>,
    sent: u32,
    tick: tokio::time::Interval,
}

impl http_body::Body for Slow {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.sent == SLOW_SECONDS {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(self.tick.poll_tick(cx));
        self.sent += 1;
        let line = format!("{} {}/{SLOW_SECONDS}\n", self.pool, self.sent);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(line)))))
    }
}

/// The demo's ports on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The http listener.
    pub port: u16,
    pub admin_port: u16,
    /// The TLS-passthrough (tcp, sni) listener.
    pub tls_port: u16,
    /// The https listener: TLS terminated by the proxy.
    pub https_port: u16,
}

/// A self-signed certificate for `localhost`, `TLS_HOST` and 127.0.0.1,
/// written with its key as `proxy.crt` and `proxy.key` in `dir`: the
/// demo's https listener serves it.
pub fn write_proxy_cert(
    dir: &Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf), Box<dyn std::error::Error + Send + Sync>> {
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_owned(),
        TLS_HOST.to_owned(),
        "127.0.0.1".to_owned(),
    ])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cutover demo proxy");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let (cert_path, key_path) = (dir.join("proxy.crt"), dir.join("proxy.key"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok((cert_path, key_path))
}

/// The demo's configuration, in `dir` beside its state file and the
/// proxy's certificate: blue takes all traffic, green none, on an http
/// listener, an https one (TLS terminated by the proxy) and a
/// TLS-passthrough one.
pub fn config_text(
    ports: Ports,
    dir: &Path,
    blue: &SampleProcess,
    green: &SampleProcess,
) -> String {
    let state_file = dir.join("state.json");
    let state_file = state_file.display();
    let (cert, key) = (dir.join("proxy.crt"), dir.join("proxy.key"));
    let (cert, key) = (cert.display(), key.display());
    let Ports {
        port,
        admin_port,
        tls_port,
        https_port,
    } = ports;
    let (blue_tls, green_tls) = (blue.tls_addr, green.tls_addr);
    let (blue, green) = (blue.addr, green.addr);
    format!(
        r#"# cutover demo configuration. Edit a weight and save: the proxy reloads
# the file by itself, and the next request follows the new weights.

[admin]
listen = "127.0.0.1:{admin_port}"
state_file = "{state_file}"   # weights set with `cutover ctl` survive a restart

[[listener]]
name = "web"
bind = "127.0.0.1:{port}"
protocol = "http"
services = ["hello"]

# The same service over HTTPS: TLS terminated here, HTTP/2 or HTTP/1.1 by
# ALPN. Replace the files (cert-manager does) and new handshakes use the
# new pair; a broken pair is refused and the old one keeps serving.
[[listener]]
name = "web-tls"
bind = "127.0.0.1:{https_port}"
services = ["hello"]
tls = {{ certs = [{{ cert = "{cert}", key = "{key}" }}] }}

[[service]]
name = "hello"
hosts = []                 # no hosts: the listener's default service
drain_timeout = "20s"      # in-flight work on a pool leaving rotation may finish

  [service.health]
  kind = "http"            # GET /healthz on every endpoint
  path = "/healthz"
  interval = "1s"

  [[service.pool]]
  name = "blue"            # the cluster on the current Kubernetes version
  weight = 100             # blue
  endpoints = ["{blue}"]

  [[service.pool]]
  name = "green"           # the cluster on the next version
  weight = 0               # green
  endpoints = ["{green}"]

  [service.shift]          # `cutover ctl shift hello --to green` moves traffic in these steps,
  steps = [10, 50, 100]    # judging green's errors and p99 at the end of each, and rolls
  every = "10s"            # back by itself when a limit is breached
  max_error_rate = 0.01
  max_p99 = "500ms"
  min_requests = 20        # a quieter step is extended, not judged

# TLS passthrough: layer 4, routed by the ClientHello's server name. The
# clusters hold the certificates; the proxy never sees a key.
[[listener]]
name = "tls"
bind = "127.0.0.1:{tls_port}"
protocol = "tcp"
sni = true
services = ["hello-tls"]

[[service]]
name = "hello-tls"
hosts = ["{TLS_HOST}"]     # matched against the server name (SNI)
drain_timeout = "20s"
# migrate = "1m"           # after a switch, move long-lived connections over a minute

  [[service.pool]]
  name = "blue"
  weight = 100
  endpoints = ["{blue_tls}"]

  [[service.pool]]
  name = "green"
  weight = 0
  endpoints = ["{green_tls}"]
"#
    )
}

/// What the demo prints once everything is up.
pub fn instructions(
    ports: Ports,
    admin: SocketAddr,
    path: &Path,
    blue: &SampleProcess,
    green: &SampleProcess,
) -> String {
    let file = path.display();
    let (blue_pid, green_pid) = (blue.pid, green.pid);
    let Ports {
        port,
        tls_port,
        https_port,
        ..
    } = ports;
    format!(
        r#"
cutover demo is running: blue and green sample backends behind the proxy.

  proxy   http://127.0.0.1:{port}/   and   https://localhost:{https_port}/
  admin   http://{admin}/v1/status   (metrics: http://{admin}/metrics)
  config  {file}

Try it (in another terminal):

  curl -s http://127.0.0.1:{port}/
  for i in $(seq 20); do curl -s http://127.0.0.1:{port}/ | head -1; done | sort | uniq -c

Cut over to green with the admin API, and look:

  cutover ctl --admin http://{admin} weights hello blue=0 green=100
  cutover ctl --admin http://{admin} status
  curl -s http://{admin}/metrics | grep cutover_requests_total

(from a checkout: `cargo run --release -- ctl ...`). Roll back with
blue=100 green=0. Or edit the config file and swap the weights there
(a file change replaces an API override), in one command:

  sed -i -E 's/[0-9]+( +# blue)/0\1/; s/[0-9]+( +# green)/100\1/' {file}

then run the curl loop again: every request now says "hello from green".
Roll back with the numbers swapped; split 90/10 with 90 and 10. A file with a mistake is
refused with its line and column in this log; the proxy keeps the old weights.

Or shift progressively, judged as it goes: keep some traffic flowing, start
the shift, and watch it step 10% -> 50% -> 100% ([service.shift] in the
config); green's errors and p99 are judged at each step, a breach rolls back
by itself, and the exit code says which (0 done, 1 rolled back):

  while sleep 0.01; do curl -s -o /dev/null http://127.0.0.1:{port}/; done &
  cutover ctl --admin http://{admin} shift hello --to green --watch
  cutover ctl --admin http://{admin} events

Drain blue with a download in flight: start a 15-second download,
cut over, and watch status count it down to "safe to remove":

  curl -sN http://127.0.0.1:{port}/slow &
  cutover ctl --admin http://{admin} weights hello blue=0 green=100
  watch -n1 cutover ctl --admin http://{admin} status

The download finishes on blue while every new request goes to green; 20s
(drain_timeout) after blue's last byte, status says blue is safe to remove.

Watch it survive a cluster dying: split 50/50 (weights hello blue=50
green=50), keep the curl loop running, and kill green's process:

  kill {green_pid}          # green; blue is {blue_pid}

Not one request fails: those green cannot take are retried on blue, the
health checks mark green down, and `cutover ctl ... status` shows why.

HTTPS, terminated by the proxy with a self-signed certificate (hence -k),
HTTP/2 chosen by ALPN; the backends see X-Forwarded-Proto: https:

  curl -sk --http2 https://localhost:{https_port}/ -o /dev/null -w '%{{http_version}}\n'
  curl -sk https://localhost:{https_port}/ | head -1
  openssl s_client -connect 127.0.0.1:{https_port} -servername localhost -alpn h2 </dev/null 2>/dev/null | grep -E 'subject|ALPN|Protocol'
  curl -s http://{admin}/metrics | grep cutover_tls_

TLS passthrough (layer 4): port {tls_port} routes each TLS connection by its
server name without decrypting it; each sample cluster holds its own
self-signed certificate for {TLS_HOST} (hence -k):

  curl -sk --resolve {TLS_HOST}:{tls_port}:127.0.0.1 https://{TLS_HOST}:{tls_port}/
  openssl s_client -connect 127.0.0.1:{tls_port} -servername {TLS_HOST} </dev/null 2>/dev/null | grep subject
  cutover ctl --admin http://{admin} weights hello-tls blue=0 green=100

The certificate's subject says which cluster answered. A connection with
another server name, or no TLS at all, is closed and counted in
cutover_connections_refused_total.

Stop with Ctrl-C.
"#
    )
}
