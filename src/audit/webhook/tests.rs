//! Unit tests of `audit::webhook`: real receivers on loopback ports (hyper,
//! and rustls for https) answering as each test scripts, and the counts
//! each outcome leaves in the metrics. Pauses between attempts are short
//! here, but real: a paused clock jumps while loopback bytes are in flight,
//! and would time attempts out that were about to be answered.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::audit::{Audit, Change, EventKind, Source};

/// Bound on anything awaited here.
const LIMIT: Duration = Duration::from_secs(10);

const FAST: Backoff = Backoff {
    first: Duration::from_millis(10),
    max: Duration::from_millis(40),
};

/// A request as the receiver got it.
struct Received {
    path: String,
    headers: http::HeaderMap,
    body: Value,
    /// The server name the client sent, over TLS.
    sni: Option<String>,
}

/// The status the receiver answers its request `n` (from 0) with; `None`
/// to never answer.
type Script = Arc<dyn Fn(usize) -> Option<StatusCode> + Send + Sync>;

/// A webhook receiver on a loopback port.
struct Receiver {
    addr: SocketAddr,
    received: mpsc::UnboundedReceiver<Received>,
    connections: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start(script: impl Fn(usize) -> Option<StatusCode> + Send + Sync + 'static) -> Self {
        Self::serve(Arc::new(script), None).await
    }

    async fn serve(script: Script, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, received) = mpsc::unbounded_channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let (script, requests, seen) = (script.clone(), requests.clone(), seen.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => answer(tcp, None, script, requests, seen).await,
                        Some(acceptor) => {
                            // A handshake the client refused: nothing to answer.
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let sni = stream.get_ref().1.server_name().map(str::to_owned);
                            answer(stream, sni, script, requests, seen).await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            received,
            connections,
        }
    }

    /// The next request, waited for (bounded).
    async fn next(&mut self) -> Received {
        tokio::time::timeout(LIMIT, self.received.recv())
            .await
            .expect("a request within the limit")
            .expect("the receiver runs")
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Serves one connection as `script` says.
async fn answer<S>(
    io: S,
    sni: Option<String>,
    script: Script,
    requests: Arc<AtomicUsize>,
    seen: mpsc::UnboundedSender<Received>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let n = requests.fetch_add(1, Ordering::Relaxed);
        let (script, seen, sni) = (script.clone(), seen.clone(), sni.clone());
        async move {
            let path = request
                .uri()
                .path_and_query()
                .map(ToString::to_string)
                .unwrap_or_default();
            let headers = request.headers().clone();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            // The test may have stopped listening; that is its business.
            _ = seen.send(Received {
                path,
                headers,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                sni,
            });
            let Some(status) = script(n) else {
                return std::future::pending().await;
            };
            let mut response = http::Response::new(Full::new(Bytes::from_static(b"ok")));
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    });
    // A client gone mid-request ends the connection; nothing to check.
    _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

fn hook(url: &str, events: &[EventKind], timeout: Duration, retries: u32) -> config::Webhook {
    config::Webhook {
        url: url.parse().unwrap(),
        events: events.to_vec(),
        timeout,
        retries,
    }
}

/// A sender of `config` with short pauses between attempts.
fn fast(config: &config::Webhook, metrics: &Metrics) -> Webhook {
    Webhook::start_with(config, metrics, None, FAST, QUEUE).unwrap()
}

fn event(audit: &Audit, kind: EventKind) -> Arc<Event> {
    audit.record(
        Change::new(
            kind,
            Source::Api(([127, 0, 0, 1], 5555).into()),
            "weights set",
        )
        .service("hello")
        .generation(4)
        .before(json!({"blue": 100, "green": 0}))
        .after(json!({"blue": 0, "green": 100})),
    )
}

/// `cutover_webhook_deliveries_total{webhook=label, result}`.
fn count(metrics: &Metrics, label: &str, result: &str) -> u64 {
    let text = String::from_utf8(metrics.render()).unwrap();
    let (webhook, result) = (
        format!("webhook=\"{label}\""),
        format!("result=\"{result}\""),
    );
    text.lines()
        .filter(|l| l.starts_with("cutover_webhook_deliveries_total{"))
        .filter(|l| l.contains(&webhook) && l.contains(&result))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits (bounded) until `result` is counted `n` times for `label`.
async fn counted(metrics: &Metrics, label: &str, result: &str, n: u64) {
    let deadline = Instant::now() + LIMIT;
    while count(metrics, label, result) < n {
        assert!(
            Instant::now() < deadline,
            "{result} counted {} times for {label}, not {n}, within {LIMIT:?}",
            count(metrics, label, result)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(count(metrics, label, result), n);
}

#[test]
fn a_webhook_is_labelled_by_scheme_host_and_port_only() {
    let cases = [
        (
            "https://user:pw@hooks.example.com/x?token=1",
            "https://hooks.example.com:443",
        ),
        ("http://hooks.example.com/x", "http://hooks.example.com:80"),
        ("http://[::1]:8080/a?b", "http://[::1]:8080"),
    ];
    for (url, label) in cases {
        assert_eq!(super::label(&url.parse().unwrap()), label, "{url}");
    }
}

#[test]
fn pauses_double_from_half_a_second_up_to_ten() {
    let backoff = Backoff {
        first: BACKOFF_FIRST,
        max: BACKOFF_MAX,
    };
    let pauses: Vec<u64> = (0..7)
        .map(|n| backoff.after(n).as_millis() as u64)
        .collect();
    assert_eq!(pauses, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
    assert_eq!(backoff.after(u32::MAX), BACKOFF_MAX);
}

#[tokio::test]
async fn the_receiver_gets_the_event_as_json_with_its_headers() {
    let mut receiver = Receiver::start(|_| Some(StatusCode::NO_CONTENT)).await;
    let url = format!("http://{}/hooks/cutover?token=s3cret", receiver.addr);
    let metrics = Metrics::new();
    let webhook = Webhook::start(&hook(&url, &[], Duration::from_secs(5), 3), &metrics).unwrap();
    let audit = Audit::default();
    webhook.send(&event(&audit, EventKind::Weights));

    let got = receiver.next().await;
    assert_eq!(got.path, "/hooks/cutover?token=s3cret");
    let header = |name: &str| got.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("content-type"), Some("application/json"));
    assert_eq!(header("user-agent"), Some(AGENT));
    assert!(AGENT.starts_with("cutover/"));
    let host = receiver.addr.to_string();
    assert_eq!(header("host"), Some(host.as_str()));
    assert_eq!(got.body["seq"], 1);
    assert_eq!(got.body["kind"], "weights");
    assert_eq!(got.body["source"], "api");
    assert_eq!(got.body["client"], "127.0.0.1:5555");
    assert_eq!(got.body["service"], "hello");
    assert_eq!(got.body["generation"], 4);
    assert_eq!(got.body["before"], json!({"blue": 100, "green": 0}));
    assert_eq!(got.body["after"], json!({"blue": 0, "green": 100}));

    let label = format!("http://{}", receiver.addr);
    counted(&metrics, &label, "success", 1).await;
    let text = String::from_utf8(metrics.render()).unwrap();
    assert!(!text.contains("s3cret"), "the query reached the metrics");
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_three_attempts_and_one_success_is_counted() {
    let mut receiver = Receiver::start(|n| {
        Some(if n < 2 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        })
    })
    .await;
    let url = format!("http://{}/hook", receiver.addr);
    let metrics = Metrics::new();
    let webhook = fast(&hook(&url, &[], Duration::from_secs(5), 3), &metrics);
    let audit = Audit::default();
    webhook.send(&event(&audit, EventKind::ShiftRollback));

    for _ in 0..3 {
        assert_eq!(receiver.next().await.body["seq"], 1);
    }
    let label = format!("http://{}", receiver.addr);
    counted(&metrics, &label, "success", 1).await;
    assert_eq!(count(&metrics, &label, "failure"), 0);
    assert_eq!(receiver.connections(), 3, "one connection per attempt");
}

#[tokio::test]
async fn a_silent_receiver_is_given_up_on_after_the_timeout_of_each_attempt() {
    let receiver = Receiver::start(|_| None).await;
    let url = format!("http://{}/hook", receiver.addr);
    let metrics = Metrics::new();
    let timeout = Duration::from_millis(100);
    let webhook = fast(&hook(&url, &[], timeout, 2), &metrics);
    let audit = Audit::default();
    let start = Instant::now();
    webhook.send(&event(&audit, EventKind::Weights));

    let label = format!("http://{}", receiver.addr);
    counted(&metrics, &label, "failure", 1).await;
    let took = start.elapsed();
    assert!(took >= timeout * 3, "gave up after {took:?}");
    assert_eq!(count(&metrics, &label, "success"), 0);
    assert_eq!(receiver.connections(), 3);
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_counted_as_a_failure() {
    // A port nothing listens on (bound, then closed).
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}/hook");
    let metrics = Metrics::new();
    let webhook = fast(&hook(&url, &[], Duration::from_secs(5), 1), &metrics);
    webhook.send(&event(&Audit::default(), EventKind::Health));
    counted(&metrics, &format!("http://{addr}"), "failure", 1).await;
}

#[tokio::test]
async fn a_full_queue_drops_events_and_counts_them() {
    let receiver = Receiver::start(|_| None).await;
    let url = format!("http://{}/hook", receiver.addr);
    let metrics = Metrics::new();
    let config = hook(&url, &[], Duration::from_secs(5), 0);
    let webhook = Webhook::start_with(&config, &metrics, None, FAST, 2).unwrap();
    let audit = Audit::default();
    // The task has not run yet (one thread, no await in between): two
    // events fill the queue, three find it full.
    for _ in 0..5 {
        webhook.send(&event(&audit, EventKind::Weights));
    }
    let label = format!("http://{}", receiver.addr);
    assert_eq!(count(&metrics, &label, "dropped"), 3);
}

#[tokio::test]
async fn only_the_kinds_listed_are_sent() {
    let mut receiver = Receiver::start(|_| Some(StatusCode::OK)).await;
    let url = format!("http://{}/hook", receiver.addr);
    let metrics = Metrics::new();
    let kinds = [EventKind::ShiftRollback, EventKind::Weights];
    let webhook = fast(&hook(&url, &kinds, Duration::from_secs(5), 0), &metrics);
    let audit = Audit::default();
    for kind in [
        EventKind::Health,
        EventKind::Weights,
        EventKind::Reload,
        EventKind::ShiftRollback,
        EventKind::Health,
    ] {
        webhook.send(&event(&audit, kind));
    }
    let first = receiver.next().await;
    let second = receiver.next().await;
    assert_eq!(
        (&first.body["kind"], &first.body["seq"]),
        (&json!("weights"), &json!(2))
    );
    assert_eq!(
        (&second.body["kind"], &second.body["seq"]),
        (&json!("shift_rollback"), &json!(4))
    );
    let label = format!("http://{}", receiver.addr);
    counted(&metrics, &label, "success", 2).await;
    assert!(
        receiver.received.try_recv().is_err(),
        "a kind not listed was sent"
    );
    assert_eq!(count(&metrics, &label, "dropped"), 0);
}

#[tokio::test]
async fn a_dropped_sender_stops_delivering() {
    let mut receiver = Receiver::start(|_| Some(StatusCode::OK)).await;
    let url = format!("http://{}/hook", receiver.addr);
    let metrics = Metrics::new();
    let webhook = fast(&hook(&url, &[], Duration::from_secs(5), 0), &metrics);
    let audit = Audit::default();
    webhook.send(&event(&audit, EventKind::Weights));
    receiver.next().await;
    let label = format!("http://{}", receiver.addr);
    counted(&metrics, &label, "success", 1).await;
    webhook.send(&event(&audit, EventKind::Weights));
    let task = webhook.task();
    drop(webhook);
    tokio::time::timeout(LIMIT, async {
        while !task.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the task ended");
    assert!(receiver.received.try_recv().is_err());
}

/// A certificate for `localhost`, the server side for it, and a client
/// trusting it.
fn localhost_tls() -> (TlsAcceptor, Arc<ClientConfig>) {
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert: CertificateDer<'static> = issued.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(issued.signing_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (TlsAcceptor::from(Arc::new(server)), Arc::new(client))
}

#[tokio::test]
async fn https_is_verified_and_names_the_host_by_sni() {
    let (acceptor, client) = localhost_tls();
    let ok: Script = Arc::new(|_| Some(StatusCode::OK));
    let mut receiver = Receiver::serve(ok, Some(acceptor)).await;
    let port = receiver.addr.port();
    let url = format!("https://localhost:{port}/hook?token=s3cret");
    let config = hook(&url, &[], Duration::from_secs(5), 0);
    let metrics = Metrics::new();
    let webhook = Webhook::start_with(&config, &metrics, Some(client), FAST, QUEUE).unwrap();
    webhook.send(&event(&Audit::default(), EventKind::Weights));
    let got = receiver.next().await;
    assert_eq!(got.sni.as_deref(), Some("localhost"));
    assert_eq!(got.path, "/hook?token=s3cret");
    assert_eq!(got.body["kind"], "weights");
    counted(&metrics, &format!("https://localhost:{port}"), "success", 1).await;
}

#[tokio::test]
async fn https_to_a_receiver_the_system_does_not_trust_fails() {
    let (acceptor, _) = localhost_tls();
    let ok: Script = Arc::new(|_| Some(StatusCode::OK));
    let mut receiver = Receiver::serve(ok, Some(acceptor)).await;
    let port = receiver.addr.port();
    let url = format!("https://localhost:{port}/hook");
    let metrics = Metrics::new();
    let webhook = Webhook::start(&hook(&url, &[], Duration::from_secs(5), 0), &metrics).unwrap();
    webhook.send(&event(&Audit::default(), EventKind::Weights));
    counted(&metrics, &format!("https://localhost:{port}"), "failure", 1).await;
    assert!(receiver.received.try_recv().is_err());
}

#[test]
fn a_sender_needs_a_runtime() {
    let config = hook("http://127.0.0.1:9/", &[], Duration::from_secs(1), 0);
    assert!(matches!(
        Webhook::start(&config, &Metrics::new()),
        Err(StartError::NoRuntime)
    ));
}
