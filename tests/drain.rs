//! Draining: work in flight on a pool leaving rotation finishes (or is closed
//! at drain_timeout), WebSocket tunnels pass through and drain too, idle
//! upstream connections close at once, and "safe to remove" turns true only
//! when the pool holds nothing. Gauges return to zero after each scenario.
//!
//! Tests that wait on a drain deadline or a slow body run on tokio's paused
//! clock (`start_paused`): proxy, admin API and backends all run in the
//! test's runtime on real loopback sockets, and the clock jumps to the next
//! timer only when nothing can run, so a deadline costs no real time.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use support::{admin_json as admin, full, get, Backend, BoxBody, Client, Config, Proxy};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A backend serving `/slow` (ten chunks, 100 ms apart), `/ws` (a WebSocket
/// echo) and its name elsewhere.
async fn backend(name: &'static str) -> Backend {
    Backend::with_handler(
        name,
        Arc::new(move |mut req: Request<Incoming>| {
            Box::pin(async move {
                match req.uri().path() {
                    "/slow" => {
                        let chunks = futures_util::stream::unfold(0, |i| async move {
                            if i == 10 {
                                return None;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Some((
                                Ok::<_, hyper::Error>(Frame::data(Bytes::from(format!("{i};")))),
                                i + 1,
                            ))
                        });
                        Response::new(BoxBody::new(StreamBody::new(chunks)))
                    }
                    "/ws" => support::websocket_echo(&mut req),
                    _ => Response::new(full(name)),
                }
            })
        }),
    )
    .await
}

/// Blue (weight 100) over `blue` endpoints and green (weight 0), no active
/// health checks, the admin API keeping its changes in `state_file`.
fn config_with_state(
    blue: &[SocketAddr],
    green: &Backend,
    drain_timeout: &str,
    state_file: &std::path::Path,
) -> String {
    Config::new()
        .limits(|l| l.header_read_timeout("2s"))
        .admin()
        .state_file(state_file)
        .listener("web")
        .service("hello", |s| {
            s.drain_timeout(drain_timeout)
                .health_none()
                .pool("blue", 100, blue)
                .pool("green", 0, &[green.addr])
        })
        .toml()
}

/// Blue (weight 100) and green (weight 0), no active health checks, and the
/// admin API.
fn config(blue: &Backend, green: &Backend, drain_timeout: &str) -> String {
    support::blue_green_with(blue, green, 100, 0, |s| {
        s.drain_timeout(drain_timeout).health_none()
    })
    .admin()
    .toml()
}

async fn switch_to_green(proxy: &Proxy) {
    admin(
        proxy,
        Method::PUT,
        "/v1/services/hello/weights",
        r#"{"blue": 0, "green": 100}"#,
    )
    .await;
}

async fn blue_status(proxy: &Proxy) -> serde_json::Value {
    let status = admin(proxy, Method::GET, "/v1/status", "").await;
    status["services"][0]["pools"][0].clone()
}

/// Waits (bounded) until `done` holds for blue's status.
async fn until_blue(
    proxy: &Proxy,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let blue = blue_status(proxy).await;
        if done(&blue) {
            return blue;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}: {blue}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a GET for `/slow` and returns the response with its body unread.
async fn start_slow(addr: SocketAddr) -> (Response<Incoming>, tokio::task::JoinHandle<()>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, BoxBody>(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get("/slow")
        .header("host", "x")
        .body(full(""))
        .unwrap();
    (sender.send_request(req).await.unwrap(), task)
}

#[tokio::test(start_paused = true)]
async fn a_slow_response_from_blue_completes_after_the_switch() {
    let blue = backend("blue").await;
    let green = backend("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green, "5s")).await;
    let (response, _conn) = start_slow(proxy.addr()).await;
    assert_eq!(response.headers()["x-pool"], "blue");
    switch_to_green(&proxy).await;
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "green");
    let in_flight = blue_status(&proxy).await;
    assert_eq!(in_flight["in_flight"], 1, "{in_flight}");
    assert_eq!(in_flight["safe_to_remove"], false);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "0;1;2;3;4;5;6;7;8;9;", "the response was cut short");
    let done = until_blue(&proxy, "blue holds nothing", |b| {
        b["in_flight"] == 0 && b["upstream_connections_active"] == 0
    })
    .await;
    assert_eq!(done["state"], "ready");
    assert_eq!(done["in_rotation"], false);
}

async fn open_ws(addr: SocketAddr) -> WebSocketStream<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/ws");
    let (ws, response) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()["x-pool"], "blue");
    ws
}

async fn echo(ws: &mut WebSocketStream<tokio::net::TcpStream>, text: &str) -> Result<(), String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(start_paused = true)]
async fn a_websocket_on_blue_keeps_echoing_then_closes_at_drain_timeout() {
    let blue = backend("blue").await;
    let green = backend("green").await;
    let drain_timeout = Duration::from_secs(1);
    let proxy = Proxy::with_admin(&config(&blue, &green, "1s")).await;
    let mut ws = open_ws(proxy.addr()).await;
    echo(&mut ws, "before").await.unwrap();
    let switched = Instant::now();
    switch_to_green(&proxy).await;
    echo(&mut ws, "after the switch").await.unwrap();
    assert_eq!(
        blue_status(&proxy).await["in_flight"],
        1,
        "the tunnel counts as work"
    );
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "green");
    // At drain_timeout the tunnel is closed: it echoes until then.
    let step = Duration::from_millis(50);
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if echo(&mut ws, "ping").await.is_err() {
                return;
            }
            tokio::time::sleep(step).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the tunnel outlived the drain");
    let closed_after = switched.elapsed();
    assert!(
        closed_after >= drain_timeout && closed_after <= drain_timeout + step,
        "closed {closed_after:?} after the switch, not at drain_timeout"
    );
    let blue_now = until_blue(&proxy, "blue holds nothing", |b| {
        b["in_flight"] == 0 && b["upstream_connections_active"] == 0
    })
    .await;
    assert_eq!(blue_now["in_flight"], 0);
    let metrics = String::from_utf8(proxy.handle.metrics.render()).unwrap();
    assert!(
        metrics.contains("cutover_drain_closed_total{pool=\"blue\",service=\"hello\"} 1"),
        "the cut tunnel is counted"
    );
}

#[tokio::test(start_paused = true)]
async fn a_websocket_ends_normally_within_a_longer_drain() {
    let blue = backend("blue").await;
    let green = backend("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green, "30s")).await;
    let mut ws = open_ws(proxy.addr()).await;
    switch_to_green(&proxy).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    echo(&mut ws, "still here").await.unwrap();
    ws.close(None).await.unwrap();
    // The close handshake completes, then the client hangs up.
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    until_blue(&proxy, "the tunnel is done", |b| b["in_flight"] == 0).await;
    let metrics = String::from_utf8(proxy.handle.metrics.render()).unwrap();
    assert!(metrics.contains("cutover_drain_closed_total{pool=\"blue\",service=\"hello\"} 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_of_a_drained_pool_close_at_once() {
    let blue = backend("blue").await;
    let green = backend("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green, "30s")).await;
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..5 {
        client.get("/", &[]).await.unwrap();
    }
    assert_eq!(blue.open_connections(), 1, "one pooled upstream connection");
    // Green must be in rotation before blue may leave it.
    admin(
        &proxy,
        Method::PUT,
        "/v1/services/hello/weights",
        r#"{"green": 100}"#,
    )
    .await;
    let reply = admin(
        &proxy,
        Method::PUT,
        "/v1/services/hello/pools/blue/state",
        r#"{"state": "drain"}"#,
    )
    .await;
    assert_eq!(reply["state"], "drain");
    let deadline = Instant::now() + Duration::from_secs(5);
    while blue.open_connections() != 0 {
        assert!(
            Instant::now() < deadline,
            "blue still sees its connection open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Draining does not change the weight; green takes the traffic.
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "green");
    let status = blue_status(&proxy).await;
    assert_eq!(status["state"], "drain");
    assert_eq!(status["weight"], 100);
    assert_eq!(status["upstream_connections_active"], 0);
}

#[tokio::test(start_paused = true)]
async fn undrain_before_the_deadline_keeps_in_flight_work() {
    let blue = backend("blue").await;
    let green = backend("green").await;
    let text = support::blue_green_with(&blue, &green, 100, 1, |s| {
        s.drain_timeout("500ms").health_none()
    })
    .admin();
    let proxy = Proxy::with_admin(&text.toml()).await;
    // With blue=100 green=1 the first pick is blue.
    let (response, _conn) = start_slow(proxy.addr()).await;
    assert_eq!(response.headers()["x-pool"], "blue");
    admin(
        &proxy,
        Method::PUT,
        "/v1/services/hello/pools/blue/state",
        r#"{"state": "drain"}"#,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    admin(
        &proxy,
        Method::PUT,
        "/v1/services/hello/pools/blue/state",
        r#"{"state": "ready"}"#,
    )
    .await;
    // The slow body takes a second, well past the 500ms deadline.
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "0;1;2;3;4;5;6;7;8;9;");
}

// Real time: the quiet window is read off the wall clock (SystemTime), which a
// paused tokio clock does not move; and `cutover ctl` runs as a child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_to_remove_waits_for_open_work_and_a_quiet_drain_window() {
    let blue = backend("blue").await;
    let green = backend("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green, "3s")).await;
    assert_eq!(
        blue_status(&proxy).await["safe_to_remove"],
        false,
        "in rotation"
    );
    let mut ws = open_ws(proxy.addr()).await;
    switch_to_green(&proxy).await;
    for _ in 0..10 {
        let blue_now = blue_status(&proxy).await;
        assert_eq!(
            blue_now["safe_to_remove"], false,
            "safe while a tunnel is open: {blue_now}"
        );
        echo(&mut ws, "x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ws.close(None).await.unwrap();
    drop(ws);
    let closed_at = Instant::now();
    let blue_now = until_blue(&proxy, "safe to remove", |b| b["safe_to_remove"] == true).await;
    assert!(
        closed_at.elapsed() >= Duration::from_millis(2500),
        "safe before a whole drain window passed"
    );
    assert_eq!(blue_now["in_flight"], 0);
    assert_eq!(blue_now["upstream_connections_active"], 0);

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "ctl",
            "--admin",
            &format!("http://{}", proxy.admin.unwrap()),
            "status",
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("hello/blue: drained, idle since") && text.contains("safe to remove"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_return_to_zero() {
    let blue = backend("blue").await;
    let green = backend("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green, "1s")).await;
    {
        let mut client = Client::connect(proxy.addr()).await;
        client.get("/", &[]).await.unwrap();
        let mut ws = open_ws(proxy.addr()).await;
        echo(&mut ws, "x").await.unwrap();
        switch_to_green(&proxy).await;
        client.get("/", &[]).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = String::from_utf8(proxy.handle.metrics.render()).unwrap();
        let zero = metrics.contains("cutover_connections_active{listener=\"web\"} 0")
            && metrics
                .contains("cutover_upstream_connections_active{pool=\"blue\",service=\"hello\"} 0");
        if zero {
            break;
        }
        assert!(Instant::now() < deadline, "gauges stuck: {metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Real time: `cutover ctl` runs as a child process, which a paused clock
// would not wait for (it jumps ahead while the runtime only waits on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_endpoint_drains_by_api_and_ctl_and_the_state_persists() {
    let blue = backend("blue").await;
    let blue2 = backend("blue").await;
    let green = backend("green").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let text = config_with_state(&[blue.addr, blue2.addr], &green, "30s", &state);
    let proxy = Proxy::with_admin(&text).await;
    let url = format!("http://{}", proxy.admin.unwrap());
    let ctl = |args: Vec<String>| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(args)
            .output()
            .await
            .unwrap()
    };
    let target = format!("blue/{}", blue2.addr);
    let out = ctl(vec![
        "ctl".into(),
        "--admin".into(),
        url.clone(),
        "drain".into(),
        "hello".into(),
        target.clone(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = blue2.hits();
    for _ in 0..10 {
        assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "blue");
    }
    assert_eq!(blue2.hits(), before, "a drained endpoint took work");
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(saved.contains(&target), "{saved}");
    let status = blue_status(&proxy).await;
    assert_eq!(status["endpoints"][1]["state"], "drain");

    let out = ctl(vec![
        "ctl".into(),
        "--admin".into(),
        url.clone(),
        "undrain".into(),
        "hello".into(),
        target,
    ])
    .await;
    assert!(out.status.success());
    for _ in 0..10 {
        get(proxy.addr(), "x", "/").await;
    }
    assert!(blue2.hits() > before, "the endpoint is back in rotation");

    // Unknown names are 404s, a bad body a 400.
    let mut client = Client::connect(proxy.admin.unwrap()).await;
    for (path, body, status) in [
        (
            "/v1/services/hello/pools/purple/state",
            r#"{"state":"drain"}"#,
            404,
        ),
        (
            "/v1/services/hello/pools/blue/endpoints/10.9.9.9:80/state",
            r#"{"state":"drain"}"#,
            404,
        ),
        (
            "/v1/services/nope/pools/blue/state",
            r#"{"state":"drain"}"#,
            404,
        ),
        (
            "/v1/services/hello/pools/blue/state",
            r#"{"state":"sleep"}"#,
            400,
        ),
        ("/v1/services/hello/pools/blue/state", "drain", 400),
    ] {
        let req = Request::put(path)
            .header("host", "a")
            .body(full(body))
            .unwrap();
        let reply = client.send(req).await.unwrap();
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{path} {body}: {}",
            reply.text()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_drained_pool_keeps_no_connection_once_its_work_ends() {
    let blue = backend("blue").await;
    let green = backend("green").await;
    let proxy = Proxy::with_admin(&config(&blue, &green, "30s")).await;
    let (response, _conn) = start_slow(proxy.addr()).await;
    switch_to_green(&proxy).await;
    response.into_body().collect().await.unwrap();
    // The connection that carried the download is not kept for reuse.
    let blue_now = until_blue(&proxy, "blue holds no connection", |b| {
        b["in_flight"] == 0 && b["upstream_connections_active"] == 0
    })
    .await;
    assert_eq!(
        blue_now["safe_to_remove"], false,
        "not before a quiet drain window"
    );
    // Back in rotation, connections are reused again.
    admin(
        &proxy,
        Method::PUT,
        "/v1/services/hello/weights",
        r#"{"blue": 100, "green": 0}"#,
    )
    .await;
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..5 {
        client.get("/", &[]).await.unwrap();
    }
    assert_eq!(blue_status(&proxy).await["upstream_connections_active"], 1);
}
