//! `[[admin.webhook]]`: events POSTed as JSON to each webhook's URL. Each
//! webhook has its own task and bounded queue, so a slow or dead receiver
//! delays only its own deliveries and never the control plane: `send` only
//! offers the event to the queue (a full one drops it, counted). A delivery
//! is one request on a fresh connection (TLS with the system's roots for
//! https), each attempt bounded by the webhook's `timeout`, retried
//! `retries` times with a growing pause; every outcome is counted under the
//! webhook's label, its scheme, host and port only, as the path and query
//! may carry a secret. This module delivers; what an event says is `audit`'s.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::Event;
use crate::config;
use crate::metrics::Metrics;
use crate::upstream::Stream;

/// Events waiting for one webhook; beyond this, events are dropped for it
/// (and counted), never waited for.
const QUEUE: usize = 1024;

/// The pause after a first failed attempt, doubled after each next one
/// up to `BACKOFF_MAX`.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

const AGENT: &str = concat!("cutover/", env!("CARGO_PKG_VERSION"));

/// One webhook's sender: the queue into its delivery task. Dropping it
/// stops the task, a delivery in progress included.
pub(super) struct Webhook {
    config: config::Webhook,
    label: Arc<str>,
    queue: mpsc::Sender<Arc<Event>>,
    task: tokio::task::JoinHandle<()>,
    metrics: Metrics,
    /// The queue was full at the last `send`: logged once per streak.
    overflowing: AtomicBool,
}

/// Why a webhook's sender could not start.
#[derive(Debug, thiserror::Error)]
pub(super) enum StartError {
    #[error("the URL has no host")]
    NoHost,
    #[error("{0:?} is not a name TLS can verify")]
    ServerName(String),
    #[error("the Host header would be invalid")]
    Host,
    #[error("TLS client: {0}")]
    Tls(String),
    #[error("not started within an async runtime")]
    NoRuntime,
}

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    #[error("TLS handshake: {0}")]
    Tls(#[source] io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The pauses between attempts.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    first: Duration,
    max: Duration,
}

impl Backoff {
    /// The pause after failed attempt `n` (0 for the first).
    fn after(self, n: u32) -> Duration {
        self.first.saturating_mul(1u32 << n.min(16)).min(self.max)
    }
}

/// The `scheme://host:port` of `url`, as metrics and logs name a webhook:
/// never its path or query.
pub(super) fn label(url: &Uri) -> String {
    let scheme = url.scheme_str().unwrap_or("http");
    format!("{scheme}://{}:{}", url.host().unwrap_or(""), port(url))
}

/// The port of `url`, written or its scheme's.
fn port(url: &Uri) -> u16 {
    let default = match url.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    url.port_u16().unwrap_or(default)
}

impl Webhook {
    /// Starts the delivery task of `config` on the current runtime.
    pub(super) fn start(config: &config::Webhook, metrics: &Metrics) -> Result<Self, StartError> {
        let tls = match config.url.scheme_str() {
            Some("https") => Some(system_client().map_err(StartError::Tls)?),
            _ => None,
        };
        let backoff = Backoff {
            first: BACKOFF_FIRST,
            max: BACKOFF_MAX,
        };
        Self::start_with(config, metrics, tls, backoff, QUEUE)
    }

    fn start_with(
        config: &config::Webhook,
        metrics: &Metrics,
        tls: Option<Arc<ClientConfig>>,
        backoff: Backoff,
        capacity: usize,
    ) -> Result<Self, StartError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let label: Arc<str> = label(&config.url).into();
        let delivery = Delivery {
            target: Target::new(&config.url, tls)?,
            label: label.clone(),
            timeout: config.timeout,
            retries: config.retries,
            backoff,
            metrics: metrics.clone(),
        };
        let (queue, events) = mpsc::channel(capacity);
        let task = runtime.spawn(delivery.run(events));
        Ok(Self {
            config: config.clone(),
            label,
            queue,
            task,
            metrics: metrics.clone(),
            overflowing: AtomicBool::new(false),
        })
    }

    /// What this sender was started from.
    pub(super) fn config(&self) -> &config::Webhook {
        &self.config
    }

    /// Its delivery task.
    #[cfg(test)]
    pub(super) fn task(&self) -> tokio::task::AbortHandle {
        self.task.abort_handle()
    }

    /// Offers `event` to the queue, when the webhook takes its kind; never
    /// waits.
    pub(super) fn send(&self, event: &Arc<Event>) {
        let events = &self.config.events;
        if !events.is_empty() && !events.contains(&event.kind) {
            return;
        }
        match self.queue.try_send(event.clone()) {
            Ok(()) => {
                if self.overflowing.swap(false, Ordering::Relaxed) {
                    tracing::info!(webhook = %self.label, "webhook: queue has room again");
                }
            }
            Err(TrySendError::Full(_)) => {
                self.metrics.webhook_delivery(&self.label, "dropped");
                if !self.overflowing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        webhook = %self.label,
                        seq = event.seq,
                        kind = event.kind.as_str(),
                        "webhook: {} events are waiting for the receiver; \
                         events are dropped for it until it catches up",
                        self.queue.max_capacity()
                    );
                }
            }
            Err(TrySendError::Closed(_)) => {
                self.metrics.webhook_delivery(&self.label, "dropped");
                tracing::warn!(
                    webhook = %self.label,
                    seq = event.seq,
                    kind = event.kind.as_str(),
                    "webhook: the sender has stopped; event dropped"
                );
            }
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a webhook's requests go, worked out once from its URL.
struct Target {
    /// Host (without brackets) and port to connect to.
    host: String,
    port: u16,
    /// For https: the client configuration and the name verified and sent
    /// as SNI.
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// The URL's host and port as written, without any user information.
    host_header: HeaderValue,
    /// The URL's path and query.
    path: Uri,
}

impl Target {
    fn new(url: &Uri, tls: Option<Arc<ClientConfig>>) -> Result<Self, StartError> {
        let written = url.host().ok_or(StartError::NoHost)?;
        let host = written
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(written)
            .to_owned();
        let tls = match tls {
            Some(config) => {
                let name = ServerName::try_from(host.clone())
                    .map_err(|_| StartError::ServerName(host.clone()))?;
                Some((config, name))
            }
            None => None,
        };
        let host_header = match url.port() {
            Some(port) => HeaderValue::try_from(format!("{written}:{port}")),
            None => HeaderValue::try_from(written),
        }
        .map_err(|_| StartError::Host)?;
        let path = url
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        Ok(Self {
            host,
            port: port(url),
            tls,
            host_header,
            path,
        })
    }
}

/// A webhook's delivery task: takes events from the queue one at a time.
struct Delivery {
    target: Target,
    label: Arc<str>,
    timeout: Duration,
    retries: u32,
    backoff: Backoff,
    metrics: Metrics,
}

impl Delivery {
    /// Delivers the events queued, in order, until the sender is dropped.
    async fn run(self, mut events: mpsc::Receiver<Arc<Event>>) {
        while let Some(event) = events.recv().await {
            self.deliver(&event).await;
        }
    }

    /// Sends `event` until an attempt succeeds or the retries are spent;
    /// counts the outcome.
    async fn deliver(&self, event: &Event) {
        let body = match serde_json::to_vec(event) {
            Ok(body) => Bytes::from(body),
            Err(error) => {
                self.metrics.webhook_delivery(&self.label, "failure");
                tracing::warn!(webhook = %self.label, seq = event.seq, kind = event.kind.as_str(),
                    %error, "webhook: event not delivered: cannot encode it");
                return;
            }
        };
        let mut failed = 0;
        loop {
            let error = match tokio::time::timeout(self.timeout, self.attempt(body.clone())).await {
                Ok(Ok(())) => {
                    self.metrics.webhook_delivery(&self.label, "success");
                    return;
                }
                Ok(Err(error)) => error,
                Err(_) => AttemptError::Timeout(self.timeout),
            };
            if failed == self.retries {
                self.metrics.webhook_delivery(&self.label, "failure");
                tracing::warn!(
                    webhook = %self.label,
                    seq = event.seq,
                    kind = event.kind.as_str(),
                    attempts = failed + 1,
                    %error,
                    "webhook: event not delivered"
                );
                return;
            }
            let pause = self.backoff.after(failed);
            tracing::debug!(webhook = %self.label, seq = event.seq, %error, ?pause,
                "webhook: attempt failed; trying again");
            tokio::time::sleep(pause).await;
            failed += 1;
        }
    }

    /// One POST of `body` on a fresh connection; `Ok` for a 2xx answer.
    /// Unbounded itself: the caller gives it the webhook's timeout.
    async fn attempt(&self, body: Bytes) -> Result<(), AttemptError> {
        let target = &self.target;
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(AttemptError::Connect)?;
        tcp.set_nodelay(true).map_err(AttemptError::Connect)?;
        let stream = match &target.tls {
            None => Stream::Plain(tcp),
            Some((config, name)) => Stream::Tls(Box::new(
                tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(AttemptError::Tls)?,
            )),
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = target.path.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, target.host_header.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        // The connection is driven here, beside the request, so that it
        // ends with the attempt (a timeout included).
        let mut conn = std::pin::pin!(conn);
        let mut response = std::pin::pin!(sender.send_request(request));
        let response = tokio::select! {
            biased;
            response = &mut response => response?,
            // Ended first: the request has its answer, or the reason
            // there is none.
            _ = &mut conn => response.await?,
        };
        match response.status() {
            status if status.is_success() => Ok(()),
            status => Err(AttemptError::Status(status)),
        }
    }
}

/// The client configuration of https webhooks: the system's roots,
/// HTTP/1.1 offered by ALPN. Built once.
fn system_client() -> Result<Arc<ClientConfig>, String> {
    static CLIENT: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(crate::tls::client::system_roots())
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        })
        .clone()
}

#[cfg(test)]
mod tests;
