//! The audit trail end to end: a weights change through the API lands in
//! `[admin] audit_log` as one JSON line and at the webhooks that take its
//! kind (and not at the others); a reload that sets `audit_log` starts the
//! file; and `cutover run` follows logrotate's recipe (rename, create,
//! SIGHUP) with the next lines in the new file and the old one intact; a
//! shift that rolls back tells its webhook why, and its audit log lines say
//! before and after.
//! The sinks themselves (fsync, rotation, retries, timeouts, full queues)
//! are tested beside their code in `src/audit/`.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use support::{full, Backend, Client, Config, Proxy, Reply};
use tokio::sync::mpsc;

/// Bound on anything waited for; generous, for a loaded machine.
const LIMIT: Duration = Duration::from_secs(20);

const BIN: &str = env!("CARGO_BIN_EXE_cutover");

/// One admin call on a fresh connection.
async fn call(admin: SocketAddr, method: Method, path: &str, body: &str) -> Reply {
    let mut client = Client::connect(admin).await;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(full(body.to_owned()))
        .unwrap();
    client.send(req).await.unwrap()
}

async fn put_weights(admin: SocketAddr, body: &str) {
    let reply = call(admin, Method::PUT, "/v1/services/hello/weights", body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

/// The file's lines, as JSON; none while it does not exist.
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn weights_events(path: &Path) -> Vec<Value> {
    lines(path)
        .into_iter()
        .filter(|e| e["kind"] == "weights")
        .collect()
}

/// Waits (bounded) until `path` holds `n` weights events; those events.
async fn wait_weights(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let found = weights_events(path);
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} holds {} weights events, not {n}, after {LIMIT:?}",
            path.display(),
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A webhook receiver answering 200: the backend (with the headers it saw)
/// and the JSON bodies it got, in order.
async fn receiver() -> (Backend, mpsc::UnboundedReceiver<Value>) {
    let (bodies, received) = mpsc::unbounded_channel();
    let backend = Backend::with_handler(
        "hooks",
        Arc::new(move |req: Request<Incoming>| {
            let bodies = bodies.clone();
            Box::pin(async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                // The test may have stopped listening; that is its business.
                _ = bodies.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
                http::Response::new(full("ok"))
            })
        }),
    )
    .await;
    (backend, received)
}

/// The usual blue/green configuration with the admin API.
fn config(blue: &Backend, green: &Backend) -> Config {
    support::blue_green(blue, green, 100, 0).admin()
}

#[tokio::test]
async fn a_configuration_with_an_audit_log_and_webhooks_starts_and_serves() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&blue, &green)
        .audit_log(&dir.path().join("audit.jsonl"))
        .webhook("https://hooks.example.com/cutover?token=s3cret", &[])
        .webhook("http://127.0.0.1:9/", &["weights", "shift_rollback"]);
    let proxy = Proxy::with_admin(&config.toml()).await;
    let reply = support::get(proxy.addr(), "hello", "/").await;
    assert_eq!((reply.status, reply.pool()), (StatusCode::OK, "blue"));
}

#[tokio::test]

async fn a_weights_change_through_the_api_is_appended_to_the_audit_log() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let proxy = Proxy::with_admin(&config(&blue, &green).audit_log(&log).toml()).await;
    let admin = proxy.admin.unwrap();

    put_weights(admin, r#"{"blue": 0, "green": 100}"#).await;
    let events = wait_weights(&log, 1).await;
    let event = &events[0];
    assert_eq!(event["source"], "api");
    let client: SocketAddr = event["client"].as_str().unwrap().parse().unwrap();
    assert!(client.ip().is_loopback(), "{client}");
    assert_eq!(event["service"], "hello");
    assert_eq!(event["before"]["blue"], 100);
    assert_eq!(event["before"]["green"], 0);
    assert_eq!(event["after"]["blue"], 0);
    assert_eq!(event["after"]["green"], 100);
    assert_eq!(event["generation"], proxy.generation());
    assert!(event["seq"].as_u64().is_some());
    let time = event["time"].as_str().unwrap();
    humantime::parse_rfc3339(time).unwrap_or_else(|e| panic!("{time}: {e}"));

    put_weights(admin, r#"{"blue": 50, "green": 50}"#).await;
    let events = wait_weights(&log, 2).await;
    assert!(events[1]["seq"].as_u64() > events[0]["seq"].as_u64());
    assert_eq!(events[1]["before"], events[0]["after"]);
}

#[tokio::test]

async fn a_weights_change_is_posted_to_the_webhooks_that_take_its_kind() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let (hooks, mut bodies) = receiver().await;
    let (others, mut other_bodies) = receiver().await;
    let config = config(&blue, &green)
        .webhook(
            &format!("http://{}/hooks/cutover?token=s3cret", hooks.addr),
            &["weights"],
        )
        .webhook(&format!("http://{}/other", others.addr), &["health"]);
    let proxy = Proxy::with_admin(&config.toml()).await;
    let admin = proxy.admin.unwrap();

    put_weights(admin, r#"{"blue": 0, "green": 100}"#).await;
    let event = tokio::time::timeout(LIMIT, bodies.recv())
        .await
        .expect("an event within the limit")
        .unwrap();
    assert_eq!(event["kind"], "weights");
    assert_eq!(event["source"], "api");
    assert_eq!(event["service"], "hello");
    assert_eq!(event["after"]["green"], 100);
    let seen = hooks.last_seen();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.uri, "/hooks/cutover?token=s3cret");
    let header = |name: &str| seen.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("content-type"), Some("application/json"));
    assert!(header("user-agent").is_some_and(|a| a.starts_with("cutover/")));

    // Counted under the webhook's scheme, host and port, never its query.
    let success = format!(
        "cutover_webhook_deliveries_total{{result=\"success\",webhook=\"http://{}\"}} 1",
        hooks.addr
    );
    let deadline = Instant::now() + LIMIT;
    loop {
        let metrics = call(admin, Method::GET, "/metrics", "").await.text();
        assert!(!metrics.contains("s3cret"), "the query reached the metrics");
        if metrics.contains(&success) {
            break;
        }
        assert!(Instant::now() < deadline, "no {success} in:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while let Ok(other) = other_bodies.try_recv() {
        assert_eq!(other["kind"], "health", "a kind not listed was sent");
    }
}

#[tokio::test]

async fn a_reload_that_sets_audit_log_starts_the_file() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green).toml()).await;
    let admin = proxy.admin.unwrap();
    let log = proxy.path.with_file_name("audit.jsonl");
    put_weights(admin, r#"{"blue": 0, "green": 100}"#).await;

    // The weights change too, so the reload makes a generation to wait on.
    let generation = proxy.generation();
    let config = support::blue_green(&blue, &green, 50, 50)
        .admin()
        .audit_log(&log);
    proxy.rewrite(&config.toml());
    proxy.wait_generation(generation + 1).await;

    put_weights(admin, r#"{"blue": 100, "green": 0}"#).await;
    let events = wait_weights(&log, 1).await;
    assert_eq!(events.len(), 1, "only the change after the reload");
    assert_eq!(events[0]["after"]["blue"], 100);
}

/// A `cutover run` child process, killed when dropped.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn hang_up(&self) {
        let pid = self.child.id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -HUP {pid}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn logrotate_then_sighup_sends_the_next_lines_to_a_new_file() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    let log = dir.path().join("audit.jsonl");
    let rotated = dir.path().join("audit.jsonl.1");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = Config::new()
        .threads(1)
        .admin_at(admin)
        .audit_log(&log)
        .listener_at("web", format!("127.0.0.1:{}", free_port()))
        .service("hello", |s| {
            s.pool("blue", 100, &[blue.addr])
                .pool("green", 0, &[green.addr])
        });
    std::fs::write(&path, config.toml()).unwrap();
    let stderr = dir.path().join("cutover.log");
    let child = std::process::Command::new(BIN)
        .args(["run", "-c", path.to_str().unwrap()])
        .env_remove("CUTOVER_CONFIG")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut proxy = Running { child, log: stderr };
    let deadline = Instant::now() + LIMIT;
    while tokio::net::TcpStream::connect(admin).await.is_err() {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            panic!("exited with {status}:\n{}", proxy.log());
        }
        assert!(
            Instant::now() < deadline,
            "admin API not up within {LIMIT:?}:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    put_weights(admin, r#"{"blue": 0, "green": 100}"#).await;
    let first = wait_weights(&log, 1).await;

    // logrotate's `create` and `postrotate kill -HUP`.
    std::fs::rename(&log, &rotated).unwrap();
    std::fs::File::create(&log).unwrap();
    proxy.hang_up();
    put_weights(admin, r#"{"blue": 100, "green": 0}"#).await;
    let next = wait_weights(&log, 1).await;
    assert_eq!(next[0]["after"]["blue"], 100, "log:\n{}", proxy.log());
    assert_eq!(weights_events(&rotated), first, "the rotated file changed");
}

/// A green answering 500 to every other request.
async fn failing_green() -> Backend {
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    Backend::with_handler(
        "green",
        Arc::new(move |_req: Request<Incoming>| {
            let count = count.clone();
            Box::pin(async move {
                let mut response = http::Response::new(full("green"));
                if count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2 == 0 {
                    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                }
                response
            })
        }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_reaches_the_webhook_and_the_audit_log_with_its_reason() {
    let blue = Backend::start("blue").await;
    let green = failing_green().await;
    let (hooks, mut bodies) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let config =
        support::blue_green_with(&blue, &green, 100, 0, |s| s.health_none().outlier(0, "10s"))
            .admin()
            .audit_log(&log)
            .webhook(&format!("http://{}/hooks", hooks.addr), &["shift_rollback"]);
    let proxy = Proxy::with_admin(&config.toml()).await;
    let admin = proxy.admin.unwrap();
    let addr = proxy.addr();
    let load = tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            if client.get("/", &[]).await.is_err() {
                client = Client::connect(addr).await;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let reply = call(
        admin,
        Method::POST,
        "/v1/services/hello/shift",
        r#"{"to": "green", "steps": [50, 100], "every": "500ms", "min_requests": 10}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    let event = tokio::time::timeout(LIMIT, bodies.recv())
        .await
        .expect("a rollback event within the limit")
        .unwrap();
    load.abort();
    assert_eq!(event["kind"], "shift_rollback");
    assert_eq!(event["source"], "shift");
    assert_eq!(event["service"], "hello");
    assert_eq!(event["before"]["green"], 50);
    assert_eq!(event["after"]["green"], 0);
    assert!(
        event["message"]
            .as_str()
            .unwrap()
            .contains("max_error_rate"),
        "{event}"
    );
    let deadline = Instant::now() + LIMIT;
    let kinds = loop {
        let kinds: Vec<String> = lines(&log)
            .iter()
            .map(|e| e["kind"].as_str().unwrap_or("").to_owned())
            .collect();
        if kinds.iter().any(|k| k == "shift_rollback") || Instant::now() > deadline {
            break kinds;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let start = kinds.iter().position(|k| k == "shift_start");
    let rollback = kinds.iter().position(|k| k == "shift_rollback");
    assert!(start.is_some() && start < rollback, "{kinds:?}");
}
