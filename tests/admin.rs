//! The admin API end to end: a weight switch under load, auth (also against
//! odd spellings of a path), every bad input and its status, slow and silent
//! clients, overrides against reloads and restarts, read-only mode, and
//! metrics that agree with what the backends saw.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover::admin::{BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS};
use http::{Method, Request, StatusCode};
use support::{full, get, Backend, Client, Config, Proxy, RawClient, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The usual blue/green config with the admin API on an ephemeral port.
fn config(blue: &Backend, green: &Backend, wb: i64, wg: i64) -> Config {
    support::blue_green(blue, green, wb, wg).admin()
}

/// One admin call on a fresh connection.
async fn call(
    admin: SocketAddr,
    method: Method,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Reply {
    let mut client = Client::connect(admin).await;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    client
        .send(req.body(full(body.to_owned())).unwrap())
        .await
        .unwrap()
}

/// The token the token-protected proxies of this file are given.
const TOKEN: &str = "s3cret-token";

/// Writes `TOKEN` to a private file in `dir`; its path.
fn token_file(dir: &tempfile::TempDir) -> PathBuf {
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    token_file
}

/// One admin call written as raw bytes, so the path arrives exactly as
/// spelled here, on a connection the proxy closes after answering. The
/// status code (0 when there was no answer) and the whole reply.
async fn raw_call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let reply = support::raw(admin, request.as_bytes(), support::RAW_LIMIT).await;
    let status = reply
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, reply)
}

/// Opens a connection to `admin` and writes `bytes` on it.
async fn send_raw(admin: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(admin).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Reads until the proxy closes the connection, waiting at most `limit`; how
/// long that took and what was read.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Duration, String) {
    let started = tokio::time::Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(
        read.is_ok(),
        "the connection was still open after {limit:?}; read {text:?}"
    );
    (started.elapsed(), text)
}

fn json(reply: &Reply) -> serde_json::Value {
    serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.text()))
}

async fn put_weights(admin: SocketAddr, body: &str) -> Reply {
    call(admin, Method::PUT, "/v1/services/hello/weights", body, None).await
}

async fn effective(admin: SocketAddr) -> serde_json::Value {
    let status = json(&call(admin, Method::GET, "/v1/status", "", None).await);
    status["services"][0]["weights"]["effective"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_switch_under_load_loses_nothing_and_is_immediate() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green, 100, 0).toml()).await;
    let admin = proxy.admin.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut client = Client::connect(proxy.addr()).await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut log = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let outcome = match client.get("/", &[]).await {
                    Ok(r) if r.status == StatusCode::OK => Ok(r.pool().to_owned()),
                    Ok(r) => Err(r.status.to_string()),
                    Err(e) => Err(e),
                };
                log.push((started, Instant::now(), outcome));
            }
            log
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = put_weights(admin, r#"{"blue": 0, "green": 100}"#).await;
    let answered = Instant::now();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for task in tasks {
        logs.extend(task.await.unwrap());
    }
    let failed: Vec<_> = logs.iter().filter(|(_, _, o)| o.is_err()).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    for (started, _, outcome) in &logs {
        if *started >= answered {
            assert_eq!(
                outcome.as_deref(),
                Ok("green"),
                "a request after the 200 saw the old weights"
            );
        }
    }
    let first_green = logs
        .iter()
        .filter(|(_, _, o)| o.as_deref() == Ok("green"))
        .map(|(_, done, _)| *done)
        .min()
        .unwrap();
    eprintln!(
        "API switch under load: {} requests, 0 failed; first green response {:?} after the 200",
        logs.len(),
        first_green.saturating_duration_since(answered)
    );
}

#[tokio::test]
async fn v1_needs_the_bearer_token_and_probes_do_not() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(&blue, &green, 100, 0).admin_token(&token_file(&dir));
    let proxy = Proxy::with_admin(&text.toml()).await;
    let admin = proxy.admin.unwrap();

    for token in [
        None,
        Some("wrong-token!"),
        Some("s3cret"),
        Some("s3cret-token-and-more"),
    ] {
        let reply = call(admin, Method::GET, "/v1/status", "", token).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "token {token:?}");
        assert_eq!(json(&reply)["error"], "unauthorized");
        let reply = call(
            admin,
            Method::PUT,
            "/v1/services/hello/weights",
            r#"{"green": 100}"#,
            token,
        )
        .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        get(proxy.addr(), "x", "/").await.pool(),
        "blue",
        "an unauthorized call changed weights"
    );
    let ok = call(admin, Method::GET, "/v1/status", "", Some(TOKEN)).await;
    assert_eq!(ok.status, StatusCode::OK);
    for probe in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            call(admin, Method::GET, probe, "", None).await.status,
            StatusCode::OK,
            "{probe}"
        );
    }
}

#[tokio::test]
async fn odd_spellings_of_a_path_neither_skip_the_token_nor_reach_a_route() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(&blue, &green, 100, 0).admin_token(&token_file(&dir));
    let proxy = Proxy::with_admin(&text.toml()).await;
    let admin = proxy.admin.unwrap();
    let generation = proxy.generation();

    // Each spelling of GET /v1/status and PUT /v1/services/hello/weights that
    // a path normalizer might take for the route, and none of which is it.
    let odd = |route: &str| {
        let rest = route.strip_prefix("/v1/").unwrap();
        vec![
            format!("//v1/{rest}"),
            format!("/v1//{rest}"),
            format!("/./v1/{rest}"),
            format!("/v1/./{rest}"),
            format!("/v1/../v1/{rest}"),
            format!("/%2Fv1/{rest}"),
            format!("/%2fv1/{rest}"),
            format!("/v1%2F{rest}"),
            format!("/v1/{rest}/"),
            format!("/V1/{rest}"),
            format!("/v1/{}", rest.to_uppercase()),
        ]
    };
    let mut calls: Vec<(&str, String, &str)> = Vec::new();
    for path in odd("/v1/status") {
        calls.push(("GET", path, ""));
    }
    let mut weights = odd("/v1/services/hello/weights");
    weights.extend([
        "/v1/services//hello/weights".to_owned(),
        "/v1/services/./hello/weights".to_owned(),
        "/v1/services/hello/./weights".to_owned(),
        "/v1/services/hello//weights".to_owned(),
        "/v1/services/hello%2Fweights".to_owned(),
        "/v1/services/x/../hello/weights".to_owned(),
    ]);
    for path in weights {
        calls.push(("PUT", path, r#"{"blue": 0, "green": 100}"#));
    }

    for (method, path, body) in &calls {
        // Under /v1 nothing answers without the token; elsewhere it is no route.
        let refused = if path.starts_with("/v1/") { 401 } else { 404 };
        for token in [None, Some("wrong-token!")] {
            let (status, reply) = raw_call(admin, method, path, body, token).await;
            assert_eq!(status, refused, "{method} {path} token {token:?}: {reply}");
            assert!(reply.contains(r#""error""#), "{reply}");
        }
        let (status, reply) = raw_call(admin, method, path, body, Some(TOKEN)).await;
        assert_eq!(status, 404, "{method} {path} with the token: {reply}");
    }

    let status = json(&call(admin, Method::GET, "/v1/status", "", Some(TOKEN)).await);
    assert_eq!(
        status["services"][0]["weights"]["effective"],
        serde_json::json!({"blue": 100, "green": 0}),
        "an odd path changed the weights"
    );
    assert_eq!(status["generation"], generation);
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "blue");
    // The real spellings still work, parameters percent-decoded as before.
    let (status, reply) = raw_call(
        admin,
        "PUT",
        "/v1/services/%68ello/weights",
        r#"{"blue": 0, "green": 100}"#,
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
}

#[tokio::test]
async fn wrong_methods_get_405_after_the_token_check() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(&blue, &green, 100, 0).admin_token(&token_file(&dir));
    let proxy = Proxy::with_admin(&text.toml()).await;
    let admin = proxy.admin.unwrap();
    let reply = call(admin, Method::DELETE, "/v1/status", "", None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = call(admin, Method::DELETE, "/v1/status", "", Some(TOKEN)).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "GET");
    assert_eq!(json(&reply)["error"], "method not allowed");
    let reply = call(admin, Method::POST, "/healthz", "", None).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
}

// The three tests below run on tokio's paused clock once the proxy is up:
// the proxy's timers still fire, in order, but a wait of HEADER_READ_TIMEOUT
// takes no real time. The sockets are real.

#[tokio::test]
async fn a_slow_admin_head_is_closed_after_the_header_read_timeout() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green, 100, 0).toml()).await;
    let admin = proxy.admin.unwrap();
    tokio::time::pause();
    let mut client = send_raw(admin, b"GET /v1/status HTTP/1.1\r\n").await;
    let (waited, reply) = read_until_closed(&mut client, Duration::from_secs(120)).await;
    assert!(!reply.contains(" 200 "), "{reply}");
    assert!(
        waited >= HEADER_READ_TIMEOUT && waited <= HEADER_READ_TIMEOUT + Duration::from_secs(5),
        "closed after {waited:?}, not {HEADER_READ_TIMEOUT:?}"
    );
    // A client that keeps a connection open between requests is bound the same way.
    let mut client = send_raw(admin, b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n").await;
    let (waited, reply) = read_until_closed(&mut client, Duration::from_secs(120)).await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert!(
        waited <= HEADER_READ_TIMEOUT + Duration::from_secs(5),
        "an idle keep-alive connection stayed open {waited:?}"
    );
}

#[tokio::test]
async fn a_silent_admin_connection_is_closed_when_idle() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green, 100, 0).toml()).await;
    let admin = proxy.admin.unwrap();
    tokio::time::pause();
    // Not a byte: the proxy cannot yet tell HTTP/1 from HTTP/2.
    let mut client = send_raw(admin, b"").await;
    let (waited, reply) = read_until_closed(&mut client, Duration::from_secs(120)).await;
    assert_eq!(reply, "");
    assert!(
        waited >= IDLE_TIMEOUT && waited <= IDLE_TIMEOUT + Duration::from_secs(5),
        "closed after {waited:?}"
    );
}

#[tokio::test]
async fn a_slow_admin_body_gets_408() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green, 100, 0).toml()).await;
    let admin = proxy.admin.unwrap();
    tokio::time::pause();
    let mut client = send_raw(
        admin,
        b"PUT /v1/services/hello/weights HTTP/1.1\r\nHost: admin\r\n\
          Content-Length: 26\r\n\r\n{\"blue\": 0,",
    )
    .await;
    let started = tokio::time::Instant::now();
    let (_, reply) = read_until_closed(&mut client, Duration::from_secs(120)).await;
    let waited = started.elapsed();
    assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
    assert!(reply.contains(r#""error": "body timeout""#), "{reply}");
    assert!(waited >= BODY_READ_TIMEOUT, "answered after {waited:?}");
    assert_eq!(
        effective(admin).await,
        serde_json::json!({"blue": 100, "green": 0})
    );
}

#[tokio::test]
async fn admin_connections_past_the_limit_wait_for_one_to_close() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green, 100, 0).toml()).await;
    let admin = proxy.admin.unwrap();
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let mut client = RawClient::connect(admin).await;
        // A complete request: the connection is surely accepted and counted.
        client
            .send(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
            .await;
        client.fill("a /healthz reply").await;
        held.push(client);
    }
    let mut waiting = RawClient::connect(admin).await;
    waiting
        .send(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await;
    let early = tokio::time::timeout(Duration::from_millis(300), waiting.try_fill("reply")).await;
    assert!(
        early.is_err(),
        "answered past {MAX_CONNECTIONS} connections"
    );
    drop(held.pop());
    waiting
        .fill("a /healthz reply once a connection closed")
        .await;
    assert!(
        String::from_utf8_lossy(&waiting.buf).starts_with("HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&waiting.buf)
    );
}

#[tokio::test]
async fn token_file_problems_refuse_start() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    /// Name, the token file's text and mode (or no file), and the refusal.
    type Case = (&'static str, Option<(&'static str, u32)>, &'static str);
    let cases: [Case; 3] = [
        ("missing", None, "cannot read"),
        ("empty", Some(("  \n", 0o600)), "is empty"),
        (
            "exposed",
            Some(("tok", 0o644)),
            "can be read by other users",
        ),
    ];
    for (name, file, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        if let Some((text, mode)) = file {
            std::fs::write(&token_file, text).unwrap();
            std::fs::set_permissions(
                &token_file,
                std::os::unix::fs::PermissionsExt::from_mode(mode),
            )
            .unwrap();
        }
        let path = dir.path().join("cutover.toml");
        let text = config(&blue, &green, 100, 0).admin_token(&token_file);
        std::fs::write(&path, text.toml()).unwrap();
        let err = Proxy::try_start_at(dir, path, true)
            .await
            .err()
            .expect(name);
        assert!(
            err.contains(expected) && err.contains("token"),
            "{name}: {err}"
        );
    }
}

#[tokio::test]
async fn bad_calls_get_their_status_and_change_nothing() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green, 100, 0).toml()).await;
    let admin = proxy.admin.unwrap();
    let cases = [
        ("{not json", StatusCode::BAD_REQUEST, "not valid JSON"),
        ("[1, 2]", StatusCode::BAD_REQUEST, "JSON object"),
        ("{}", StatusCode::BAD_REQUEST, "no weights"),
        (
            r#"{"purple": 100}"#,
            StatusCode::BAD_REQUEST,
            "no pool \"purple\"",
        ),
        (r#"{"blue": 0}"#, StatusCode::BAD_REQUEST, "weight 0"),
        (r#"{"green": -5}"#, StatusCode::BAD_REQUEST, "-5"),
        (r#"{"green": 2.5}"#, StatusCode::BAD_REQUEST, "2.5"),
        (
            r#"{"green": "100"}"#,
            StatusCode::BAD_REQUEST,
            "whole numbers",
        ),
        (r#"{"green": 10001}"#, StatusCode::BAD_REQUEST, "10001"),
    ];
    for (body, status, needle) in cases {
        let reply = put_weights(admin, body).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text());
        let detail = json(&reply)["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains(needle), "{body}: {detail}");
    }
    let reply = call(
        admin,
        Method::PUT,
        "/v1/services/nope/weights",
        r#"{"blue": 1}"#,
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(json(&reply)["detail"].as_str().unwrap().contains("nope"));
    assert_eq!(
        call(admin, Method::GET, "/v1/nothing", "", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(admin, Method::DELETE, "/v1/status", "", None)
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        effective(admin).await,
        serde_json::json!({"blue": 100, "green": 0})
    );
    assert_eq!(proxy.generation(), 1, "a refused call published a snapshot");
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "blue");
}

#[tokio::test]
async fn overrides_hold_until_the_file_changes_its_weights() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green, 100, 0).toml()).await;
    let admin = proxy.admin.unwrap();

    assert_eq!(
        put_weights(admin, r#"{"blue": 0, "green": 100}"#)
            .await
            .status,
        StatusCode::OK
    );
    let status = json(&call(admin, Method::GET, "/v1/status", "", None).await);
    let service = &status["services"][0];
    assert_eq!(service["override"]["active"], true);
    assert_eq!(service["override"]["source"], "api");
    assert_eq!(
        service["weights"]["file"],
        serde_json::json!({"blue": 100, "green": 0})
    );

    // A reload that leaves the weights as they were keeps the override.
    let same_weights =
        support::blue_green_with(&blue, &green, 100, 0, |s| s.request_timeout("30s")).admin();
    proxy.rewrite(&same_weights.toml());
    proxy.wait_generation(3).await;
    assert_eq!(
        effective(admin).await,
        serde_json::json!({"blue": 0, "green": 100})
    );
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "green");

    // One that changes them replaces it: the newest change wins.
    proxy.rewrite(&config(&blue, &green, 100, 1).toml());
    proxy.wait_generation(4).await;
    let status = json(&call(admin, Method::GET, "/v1/status", "", None).await);
    assert_eq!(status["services"][0]["override"]["active"], false);
    assert_eq!(status["services"][0]["override"]["source"], "file");
    assert_eq!(
        effective(admin).await,
        serde_json::json!({"blue": 100, "green": 1})
    );
}

#[tokio::test]
async fn overrides_survive_a_restart_and_ignore_state_skips_them() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("state.json");
    let text = config(&blue, &green, 100, 0).state_file(&state).toml();

    let first = Proxy::with_admin(&text).await;
    assert_eq!(
        put_weights(first.admin.unwrap(), r#"{"blue": 0, "green": 100}"#)
            .await
            .status,
        StatusCode::OK
    );
    assert!(state.exists());
    drop(first);

    let second = Proxy::with_admin(&text).await;
    assert_eq!(
        get(second.addr(), "x", "/").await.pool(),
        "green",
        "the override was lost"
    );
    let status = json(&call(second.admin.unwrap(), Method::GET, "/v1/status", "", None).await);
    assert_eq!(status["services"][0]["override"]["active"], true);
    drop(second);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, &text).unwrap();
    let (server, handle) = cutover::server::Server::start(
        &path,
        cutover::server::Options {
            ignore_state: true,
            data_plane: tokio::runtime::Handle::current(),
        },
    )
    .await
    .unwrap();
    let weights = handle.status().services[0].effective_weights.clone();
    assert_eq!(weights["blue"], 100, "--ignore-state kept the override");
    drop(server);
}

#[tokio::test]
async fn a_corrupt_state_file_refuses_start() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(&state, "{\"version\": 1, \"overrides\": {\"hello\": ").unwrap();
    let path = dir.path().join("cutover.toml");
    let text = config(&blue, &green, 100, 0).state_file(&state);
    std::fs::write(&path, text.toml()).unwrap();
    let err = Proxy::try_start_at(dir, path, true)
        .await
        .err()
        .expect("start refused");
    assert!(
        err.contains("state.json") && err.contains("corrupt"),
        "{err}"
    );
}

#[tokio::test]
async fn read_only_refuses_changes_with_409() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green, 100, 0).read_only(true).toml()).await;
    let admin = proxy.admin.unwrap();
    let reply = put_weights(admin, r#"{"blue": 0, "green": 100}"#).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(json(&reply)["detail"]
        .as_str()
        .unwrap()
        .contains("read_only"));
    assert_eq!(
        effective(admin).await,
        serde_json::json!({"blue": 100, "green": 0})
    );
    // Reload is still allowed: it reads the file, the source of truth.
    assert_eq!(
        call(admin, Method::POST, "/v1/reload", "", None)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn reload_endpoint_reports_an_invalid_file() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green, 100, 0).toml()).await;
    let admin = proxy.admin.unwrap();
    let reply = call(admin, Method::POST, "/v1/reload", "", None).await;
    assert_eq!(json(&reply)["generation"], 2);
    std::fs::write(&proxy.path, "[[listener]]\nname = 1\n").unwrap();
    let reply = call(admin, Method::POST, "/v1/reload", "", None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        json(&reply)["detail"]
            .as_str()
            .unwrap()
            .contains("cutover.toml:2:"),
        "{}",
        reply.text()
    );
    let status = json(&call(admin, Method::GET, "/v1/status", "", None).await);
    assert!(status["last_reload_error"]
        .as_str()
        .unwrap()
        .contains("cutover.toml:2:"));
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "blue");
}

#[tokio::test]
async fn readyz_turns_unready_when_shutdown_starts() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green, 100, 0).toml()).await;
    let admin = proxy.admin.unwrap();
    assert_eq!(
        call(admin, Method::GET, "/readyz", "", None).await.status,
        StatusCode::OK
    );
    proxy.handle.shutdown();
    // The admin API stays up while the data plane drains, and says so.
    let reply = call(admin, Method::GET, "/readyz", "", None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn openapi_document_lists_exactly_the_served_routes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let mut served: Vec<(String, String)> = cutover::admin::ROUTES
        .iter()
        .map(|route| (route.method.to_string(), route.path.to_owned()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
}

#[tokio::test]
async fn an_api_change_does_not_hide_a_failed_reload_and_undoing_the_edit_does() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let text = config(&blue, &green, 100, 0).toml();
    let proxy = Proxy::with_admin(&text).await;
    let admin = proxy.admin.unwrap();
    proxy.rewrite("[[listener]]\nname = 1\n");
    proxy.wait_failed_reloads(1).await;
    assert_eq!(
        put_weights(admin, r#"{"green": 10}"#).await.status,
        StatusCode::OK
    );
    let status = json(&call(admin, Method::GET, "/v1/status", "", None).await);
    assert!(
        status["last_reload_error"].is_string(),
        "the file is still broken: {status}"
    );
    // Putting the running text back clears it.
    proxy.rewrite(&text);
    tokio::time::timeout(
        Duration::from_secs(10),
        proxy.handle.wait_for(|s| s.last_reload_error.is_none()),
    )
    .await
    .expect("error cleared");
}

#[tokio::test]
async fn turning_read_only_on_ends_api_overrides() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green, 100, 0).toml()).await;
    let admin = proxy.admin.unwrap();
    assert_eq!(
        put_weights(admin, r#"{"blue": 0, "green": 100}"#)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "green");
    proxy.rewrite(&config(&blue, &green, 100, 0).read_only(true).toml());
    proxy.wait_generation(3).await;
    assert_eq!(
        get(proxy.addr(), "x", "/").await.pool(),
        "blue",
        "the file rules in read-only mode"
    );
    assert_eq!(
        effective(admin).await,
        serde_json::json!({"blue": 100, "green": 0})
    );
}
