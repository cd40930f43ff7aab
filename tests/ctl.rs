//! `cutover ctl` against a running proxy's admin API: tables for people,
//! JSON for scripts, one clear line and exit 1 when the API refuses, exit 2
//! for a malformed command; names that need escaping, a silent admin API,
//! and progressive shifts followed with `--watch` until they end.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Response, StatusCode};
use support::{admin_json, full, get, Backend, Client, Config, Proxy};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

async fn ctl(admin: SocketAddr, args: &[&str]) -> (i32, String, String) {
    ctl_within(admin, args, Duration::from_secs(60)).await
}

/// `cutover ctl --admin http://ADMIN ARGS...`, killed if it runs longer
/// than `limit`: its exit code, stdout and stderr.
async fn ctl_within(admin: SocketAddr, args: &[&str], limit: Duration) -> (i32, String, String) {
    let url = format!("http://{admin}");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["ctl", "--admin", &url])
        .args(args)
        .env_remove("CUTOVER_TOKEN_FILE")
        .env_remove("CUTOVER_ADMIN")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("ctl {args:?} still running after {limit:?}"))
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn proxy(token: Option<&std::path::Path>) -> (Proxy, Backend, Backend) {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut config = support::blue_green(&blue, &green, 100, 0).admin();
    if let Some(token) = token {
        config = config.admin_token(token);
    }
    (Proxy::with_admin(&config.toml()).await, blue, green)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_then_status_shows_the_switch() {
    let (proxy, _blue, _green) = proxy(None).await;
    let admin = proxy.admin.unwrap();

    let (code, out, err) = ctl(admin, &["weights", "hello", "blue=0", "green=100"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("blue=0 green=100"), "{out}");
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "green");

    let (code, out, _) = ctl(admin, &["status"]).await;
    assert_eq!(code, 0);
    let header = out.lines().nth(1).unwrap();
    for column in [
        "SERVICE",
        "POOL",
        "FILE",
        "WEIGHT",
        "SET BY",
        "REQ/S",
        "ENDPOINTS",
    ] {
        assert!(header.contains(column), "{out}");
    }
    let green_row = out.lines().find(|l| l.contains("green")).unwrap();
    assert!(green_row.split_whitespace().any(|w| w == "100"), "{out}");
    assert!(out.contains("api "), "who set it: {out}");

    let (code, out, _) = ctl(admin, &["status", "--json"]).await;
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["services"][0]["weights"]["effective"]["green"], 100);

    let (code, out, _) = ctl(admin, &["reload"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("generation 3"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_one_line_and_exit_1() {
    let (proxy, _blue, _green) = proxy(None).await;
    let admin = proxy.admin.unwrap();
    let (code, out, err) = ctl(admin, &["weights", "hello", "purple=5"]).await;
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("400") && err.contains("purple"), "{err}");

    let (code, _, err) = ctl(admin, &["weights", "nope", "blue=5"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("404") && err.contains("nope"), "{err}");

    // A malformed pair is a usage error, caught before any call.
    let (code, _, err) = ctl(admin, &["weights", "hello", "blue:5"]).await;
    assert_eq!(code, 2, "{err}");

    // Nothing listening: a clear line naming the address.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, _, err) = ctl(closed, &["status"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach the admin API") && err.contains(&closed.to_string()),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (proxy, _blue, _green) = proxy(Some(&token)).await;
    let admin = proxy.admin.unwrap();
    let (code, _, err) = ctl(admin, &["status"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let token_arg = token.display().to_string();
    let (code, out, err) = ctl(admin, &["--token-file", &token_arg, "status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hello"));
}

/// The generation in force, as `ctl status --json` reads it.
async fn generation(admin: SocketAddr) -> u64 {
    let (code, out, err) = ctl(admin, &["status", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    status["generation"].as_u64().expect("a generation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_named_with_a_slash_is_one_path_segment() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let config = Config::new()
        .admin()
        .listener("web")
        .service("team/app", |s| {
            s.pool("blue", 100, &[blue.addr])
                .pool("green", 0, &[green.addr])
        });
    let proxy = Proxy::with_admin(&config.toml()).await;
    let admin = proxy.admin.unwrap();

    let (code, out, err) = ctl(admin, &["weights", "team/app", "blue=0", "green=100"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("team/app: weights blue=0 green=100"),
        "{out}"
    );
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "green");

    let endpoint = format!("blue/{}", blue.addr);
    for args in [
        &["drain", "team/app", "blue"][..],
        &["undrain", "team/app", "blue"],
        &["drain", "team/app", &endpoint],
        &["undrain", "team/app", &endpoint],
    ] {
        let (code, _, err) = ctl(admin, args).await;
        assert_eq!(code, 0, "{args:?}: {err}");
    }

    // The generation in force passes `--if-generation`, whether or not
    // the server checks it.
    let now = generation(admin).await.to_string();
    let (code, out, err) = ctl(
        admin,
        &[
            "--if-generation",
            &now,
            "weights",
            "team/app",
            "blue=100",
            "green=0",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("blue=100 green=0"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_admin_api_times_out_and_the_request_went_as_asked() {
    // Accepts, reads the request head, and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = silent.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = head_tx.send(String::from_utf8_lossy(&head).into_owned());
        // Held open, silent, until the client gives up.
        let _ = stream.read(&mut buf).await;
    });

    let started = Instant::now();
    let (code, out, err) = ctl(
        addr,
        &[
            "--timeout",
            "300ms",
            "--if-generation",
            "7",
            "weights",
            "team/app",
            "blue=1",
        ],
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "the admin API at http://{addr} did not answer within 300ms"
        )),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let head = head_rx.await.unwrap().to_ascii_lowercase();
    assert!(
        head.starts_with("put /v1/services/team%2fapp/weights http/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nif-match: \"7\"\r\n"), "{head}");

    let (code, out, _) = ctl(addr, &["--help"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("--timeout <DURATION>") && out.contains("[default: 10s]"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_commands_exit_2_before_any_call() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for (args, says) in [
        (
            &["shift", "hello", "--to", "green", "--steps", "10,x"][..],
            "step \"x\" is not a whole percentage",
        ),
        (
            &["shift", "hello", "--to", "green", "--every", "soon"],
            "\"soon\" is not a duration",
        ),
        (
            &["shift", "hello", "--to", "green", "--max-p99", "fast"],
            "\"fast\" is not a duration",
        ),
        (
            &["shift", "hello", "--to", "green", "--max-error-rate", "1%"],
            "\"1%\" is not a number",
        ),
        (&["shift", "hello", "--steps", "10,100"], "--to <POOL>"),
        (
            &["weights", "hello", "blue=0", "--revert-after", "later"],
            "\"later\" is not a duration",
        ),
        (&["events", "--limit", "0"], "0 is not in 1..=500"),
        (
            &["--if-generation", "twelve", "abort", "hello"],
            "'twelve' for '--if-generation <N>'",
        ),
        (
            &["--if-generation", "12", "status"],
            "--if-generation guards a change",
        ),
        (
            &["--if-generation", "12", "events"],
            "--if-generation guards a change",
        ),
        (
            &["status", "--watch", "--json"],
            "'--watch' cannot be used with '--json'",
        ),
        (
            &["--json", "shift", "hello", "--to", "green", "--watch"],
            "'--watch' cannot be used with '--json'",
        ),
        (
            &["--timeout", "a while", "status"],
            "\"a while\" is not a duration",
        ),
    ] {
        let (code, out, err) = ctl(closed, args).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("cannot reach"), "{args:?}: {err}");
    }
}

/// Requests to the proxy on one keep-alive connection, every few
/// milliseconds, until dropped.
struct Load(tokio::task::JoinHandle<()>);

impl Load {
    fn start(addr: SocketAddr) -> Self {
        Self(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut pace = tokio::time::interval(Duration::from_millis(5));
            loop {
                pace.tick().await;
                if client.get("/", &[("host", "x")]).await.is_err() {
                    client = Client::connect(addr).await;
                }
            }
        }))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A green backend that answers 500 to everything.
async fn failing_green() -> Backend {
    Backend::with_handler(
        "green",
        Arc::new(|_req| {
            Box::pin(async {
                Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(full("broken"))
                    .unwrap()
            })
        }),
    )
    .await
}

/// A short policy, so a whole shift takes about a second under load.
const QUICK: [&str; 6] = [
    "--steps",
    "50,100",
    "--every",
    "300ms",
    "--min-requests",
    "5",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn shift_watch_exits_0_once_a_healthy_green_has_all_the_traffic() {
    let (proxy, _blue, _green) = proxy(None).await;
    let admin = proxy.admin.unwrap();
    let _load = Load::start(proxy.addr());

    let mut args = vec!["shift", "hello", "--to", "green"];
    args.extend(QUICK);
    args.push("--watch");
    let (code, out, err) = ctl_within(admin, &args, Duration::from_secs(30)).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("hello: shifting to green through 50%,100%, 300ms per step (generation "),
        "{out}"
    );
    let last = out.lines().last().unwrap_or("");
    assert!(last.starts_with("hello: shift to green done"), "{out}");
    assert!(last.ends_with("weights blue=0 green=100"), "{out}");
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn shift_watch_exits_1_when_green_fails_and_blue_has_the_traffic_back() {
    let blue = Backend::start("blue").await;
    let green = failing_green().await;
    let config =
        support::blue_green_with(&blue, &green, 100, 0, |s| s.health_none().outlier(0, "10s"))
            .admin();
    let proxy = Proxy::with_admin(&config.toml()).await;
    let admin = proxy.admin.unwrap();
    let _load = Load::start(proxy.addr());

    let mut args = vec!["shift", "hello", "--to", "green"];
    args.extend(QUICK);
    args.push("--watch");
    let (code, out, err) = ctl_within(admin, &args, Duration::from_secs(30)).await;
    assert_eq!(code, 1, "{out}{err}");
    let last = out.lines().last().unwrap_or("");
    assert!(
        last.starts_with("hello: shift to green rolled_back"),
        "{out}"
    );
    assert!(last.contains("error rate"), "{out}");
    assert!(last.ends_with("weights blue=100 green=0"), "{out}");
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn status_shows_a_running_shift_and_watch_follows_it_to_the_end() {
    let (proxy, _blue, _green) = proxy(None).await;
    let admin = proxy.admin.unwrap();
    let _load = Load::start(proxy.addr());

    let (code, out, err) = ctl(
        admin,
        &[
            "shift",
            "hello",
            "--to",
            "green",
            "--steps",
            "50,100",
            "--every",
            "2s",
            "--min-requests",
            "5",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("through 50%,100%, 2s per step"), "{out}");

    let (code, out, _) = ctl(admin, &["status"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("hello: shift to green running, step 1/2 (50%), next judgement in "),
        "{out}"
    );

    let (code, out, err) = ctl_within(admin, &["status", "--watch"], Duration::from_secs(30)).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.lines()
            .next()
            .unwrap_or("")
            .starts_with("hello: shift to green running"),
        "{out}"
    );
    assert!(
        out.lines()
            .last()
            .unwrap_or("")
            .starts_with("hello: shift to green done"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn abort_rolls_back_and_a_second_abort_is_refused() {
    let (proxy, _blue, _green) = proxy(None).await;
    let admin = proxy.admin.unwrap();

    let (code, out, err) = ctl(
        admin,
        &[
            "shift", "hello", "--to", "green", "--steps", "10,100", "--every", "1m",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("hello: shifting to green through 10%,100%, 1m per step"),
        "{out}"
    );
    let (code, out, err) = ctl(admin, &["abort", "hello"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("hello: shift aborted, weights back to blue=100 green=0 (generation "),
        "{out}"
    );
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "blue");

    let (code, out, err) = ctl(admin, &["abort", "hello"]).await;
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.starts_with("error: 409 no shift running"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn events_list_each_change_and_who_made_it() {
    let (proxy, _blue, _green) = proxy(None).await;
    let admin = proxy.admin.unwrap();
    let (code, _, err) = ctl(admin, &["weights", "hello", "blue=0", "green=100"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ctl(admin, &["drain", "hello", "blue"]).await;
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = ctl(admin, &["events"]).await;
    assert_eq!(code, 0, "{err}");
    let weights = out
        .lines()
        .find(|l| l.contains(" weights "))
        .unwrap_or_else(|| panic!("no weights event: {out}"));
    assert!(weights.contains("api 127.0.0.1:"), "{out}");
    assert!(
        weights.contains("blue=100 green=0 → blue=0 green=100"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains(" drain ") && l.contains("hello/blue")),
        "{out}"
    );

    let (code, out, _) = ctl(admin, &["events", "--limit", "1"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().count(),
        2,
        "a header and the latest event: {out}"
    );
    assert!(out.contains(" drain "), "{out}");

    let (code, out, _) = ctl(admin, &["events", "--json"]).await;
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        json["events"].as_array().is_some_and(|e| e.len() >= 2),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_stale_if_generation_is_refused_and_changes_nothing() {
    let (proxy, _blue, _green) = proxy(None).await;
    let admin = proxy.admin.unwrap();
    let seen = generation(admin).await.to_string();
    let (code, _, err) = ctl(
        admin,
        &[
            "--if-generation",
            &seen,
            "weights",
            "hello",
            "blue=50",
            "green=50",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");

    // Another change since `seen`: each guarded call is refused.
    for args in [
        &["weights", "hello", "blue=0", "green=100"][..],
        &["drain", "hello", "blue"],
        &["shift", "hello", "--to", "green"],
    ] {
        let mut all = vec!["--if-generation", &seen];
        all.extend(args);
        let (code, out, err) = ctl(admin, &all).await;
        assert_eq!(code, 1, "{args:?}: {out}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("412 precondition failed"), "{args:?}: {err}");
    }
    let status = admin_json(&proxy, Method::GET, "/v1/status", "").await;
    assert_eq!(status["services"][0]["weights"]["effective"]["green"], 50);
    assert_eq!(status["services"][0]["shift"]["state"], "idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn revert_after_says_when_the_weights_come_back() {
    let (proxy, _blue, _green) = proxy(None).await;
    let admin = proxy.admin.unwrap();
    let (code, out, err) = ctl(
        admin,
        &[
            "weights",
            "hello",
            "blue=0",
            "green=100",
            "--revert-after",
            "10m",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("reverting to blue=100 green=0 at "), "{out}");
    let (code, out, _) = ctl(admin, &["status"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("hello: weights revert to blue=100 green=0 at "),
        "{out}"
    );
}
