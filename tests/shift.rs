//! Progressive shifts: a healthy green is promoted step by step and ends
//! `done`; a green that fails or is slow is rolled back by itself at the
//! first step it breaches; a quiet step is extended, then given up; a
//! restart resumes the step it was on; abort restores; a newer change (a
//! weights PUT, a file changing the weights) ends the shift; `If-Match`
//! guards every change; `revert_after` brings the old weights back.
//!
//! These run on tokio's paused clock (`start_paused`): proxy, admin API,
//! backends and load all run in the test's runtime on real loopback sockets,
//! and the clock jumps to the next timer only when nothing can run, so a
//! 10 s step costs no real time and a backend's `sleep` is a latency the
//! proxy measures exactly.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;
use support::{admin_call, admin_json, full, Backend, Client, Config, Proxy};
use tokio::time::Instant;

/// Blue (weight 100) and green (weight 0) with the admin API, no active
/// health checks, and `[service.shift]` as given.
fn config(blue: &Backend, green: &Backend, shift: &str) -> Config {
    support::blue_green_with(blue, green, 100, 0, |s| {
        let s = s.health_none();
        if shift.is_empty() {
            s
        } else {
            s.shift(shift)
        }
    })
    .admin()
}

/// A green backend answering 500 to every `nth` request (0: never), after
/// `delay`.
async fn green(nth: u64, delay: Duration) -> Backend {
    let count = Arc::new(AtomicU64::new(0));
    Backend::with_handler(
        "green",
        Arc::new(move |_req: Request<Incoming>| {
            let count = count.clone();
            Box::pin(async move {
                let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let mut response = Response::new(full("green"));
                if nth != 0 && n % nth == 0 {
                    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                }
                response
            })
        }),
    )
    .await
}

/// Clients sending a request every 10 ms each until stopped; each request's
/// status and the pool that answered.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(StatusCode, String)>>>,
}

impl Load {
    async fn start(proxy: &Proxy, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let mut client = Client::connect(proxy.addr()).await;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut log = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match client.get("/", &[]).await {
                        Ok(reply) => log.push((reply.status, reply.pool().to_owned())),
                        Err(e) => log.push((StatusCode::IM_A_TEAPOT, e)),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                log
            }));
        }
        Self { stop, tasks }
    }

    async fn finish(self) -> Vec<(StatusCode, String)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap());
        }
        all
    }
}

async fn status(proxy: &Proxy) -> Value {
    admin_json(proxy, Method::GET, "/v1/status", "").await["services"][0].clone()
}

/// Waits (bounded, in paused time) until `done` holds for the service's
/// status; returns it.
async fn until(proxy: &Proxy, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let service = status(proxy).await;
        if done(&service) {
            return service;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}: {:#}",
            service["shift"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One admin call carrying `If-Match: tag`.
async fn with_if_match(
    proxy: &Proxy,
    method: Method,
    path: &str,
    body: &str,
    tag: &str,
) -> support::Reply {
    admin_call(proxy, method, path, body, &[("if-match", tag)]).await
}

fn assert_status(reply: &support::Reply, status: StatusCode) {
    assert_eq!(reply.status, status, "{}", reply.text());
}

async fn start_shift(proxy: &Proxy, body: &str) -> support::Reply {
    admin_call(proxy, Method::POST, "/v1/services/hello/shift", body, &[]).await
}

fn effective(service: &Value) -> (u64, u64) {
    let w = &service["weights"]["effective"];
    (w["blue"].as_u64().unwrap(), w["green"].as_u64().unwrap())
}

async fn events(proxy: &Proxy) -> Vec<Value> {
    admin_json(proxy, Method::GET, "/v1/events?limit=500", "").await["events"]
        .as_array()
        .unwrap()
        .clone()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["kind"].as_str()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_healthy_green_goes_step_by_step_to_done_and_no_request_fails() {
    let blue = Backend::start("blue").await;
    let green = green(0, Duration::ZERO).await;
    let proxy = Proxy::with_admin(&config(&blue, &green, "").toml()).await;
    let load = Load::start(&proxy, 8).await;

    let reply = start_shift(
        &proxy,
        r#"{"to": "green", "steps": [10, 25, 50, 100], "every": "10s", "min_requests": 50}"#,
    )
    .await;
    assert_status(&reply, StatusCode::OK);
    let started: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(started["service"]["shift"]["state"], "running");
    assert_eq!(started["service"]["shift"]["percent"], 10);
    assert_eq!(effective(&started["service"]), (90, 10));
    assert!(reply.headers.contains_key("etag"));

    // Each step's weights are in force while it holds.
    let second = until(&proxy, "step 2", |s| s["shift"]["step"] == 2).await;
    assert_eq!(effective(&second), (75, 25));
    let done = until(&proxy, "done", |s| s["shift"]["state"] != "running").await;
    let log = load.finish().await;

    let shift = &done["shift"];
    assert_eq!(shift["state"], "done", "{shift:#}");
    assert_eq!(shift["outcome"], "done");
    assert_eq!(effective(&done), (0, 100));
    let judged = shift["judged"].as_array().unwrap();
    let verdicts: Vec<&str> = judged
        .iter()
        .map(|j| j["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["pass"; 4], "{shift:#}");
    for step in judged {
        assert!(step["requests"].as_u64().unwrap() >= 50, "{step}");
        assert_eq!(step["errors"], 0, "{step}");
    }
    let failed: Vec<_> = log.iter().filter(|(s, _)| *s != StatusCode::OK).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(log.iter().any(|(_, pool)| pool == "blue"));
    assert!(log.iter().any(|(_, pool)| pool == "green"));

    let events = events(&proxy).await;
    let shift_kinds: Vec<&str> = kinds(&events)
        .into_iter()
        .filter(|k| k.starts_with("shift"))
        .collect();
    assert_eq!(
        shift_kinds,
        [
            "shift_start",
            "shift_step",
            "shift_step",
            "shift_step",
            "shift_done"
        ]
    );
    let metrics = String::from_utf8(
        admin_call(&proxy, Method::GET, "/metrics", "", &[])
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    assert!(metrics.contains(r#"cutover_shift_state{service="hello",state="done"} 1"#));
    assert!(metrics.contains(r#"cutover_shift_state{service="hello",state="running"} 0"#));
    assert!(metrics.contains(r#"cutover_shift_judged_error_rate{service="hello"} 0"#));
}

#[tokio::test(start_paused = true)]
async fn a_green_answering_five_percent_500s_rolls_back_at_the_first_step() {
    let blue = Backend::start("blue").await;
    let green = green(20, Duration::ZERO).await;
    let proxy = Proxy::with_admin(
        &config(
            &blue,
            &green,
            "steps = [10, 25, 50, 100]\nevery = \"10s\"\nmin_requests = 50\nmax_error_rate = 0.01",
        )
        .toml(),
    )
    .await;
    let load = Load::start(&proxy, 8).await;
    // The defaults come from [service.shift].
    let reply = start_shift(&proxy, r#"{"to": "green"}"#).await;
    assert_status(&reply, StatusCode::OK);

    let ended = until(&proxy, "the end", |s| s["shift"]["state"] != "running").await;
    let shift = &ended["shift"];
    assert_eq!(shift["state"], "rolled_back", "{shift:#}");
    assert_eq!(shift["outcome"], "rolled_back");
    assert_eq!(shift["step"], 1, "not at the first step: {shift:#}");
    let reason = shift["reason"].as_str().unwrap();
    assert!(
        reason.contains("error rate") && reason.contains("max_error_rate 1.00%"),
        "{reason}"
    );
    let judged = &shift["judged"][0];
    assert_eq!(judged["verdict"], "breach");
    let rate = judged["error_rate"].as_f64().unwrap();
    assert!((0.03..0.07).contains(&rate), "{rate}");
    // Blue has everything again, as before the shift: the file's weights.
    assert_eq!(effective(&ended), (100, 0));
    assert_eq!(ended["override"]["active"], false);
    let blue_before = blue.hits();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = load.finish().await;
    assert!(blue.hits() > blue_before);
    let after: Vec<_> = log.iter().rev().take(20).collect();
    assert!(
        after
            .iter()
            .all(|(s, p)| *s == StatusCode::OK && p == "blue"),
        "{after:?}"
    );

    let events = events(&proxy).await;
    let rollback = events
        .iter()
        .find(|e| e["kind"] == "shift_rollback")
        .expect("a rollback event");
    assert_eq!(rollback["source"], "shift");
    assert_eq!(rollback["before"]["green"], 10);
    assert_eq!(rollback["after"]["green"], 0);
    assert!(rollback["message"].as_str().unwrap().contains("error rate"));
    let metrics = admin_call(&proxy, Method::GET, "/metrics", "", &[])
        .await
        .text();
    assert!(
        metrics.contains(r#"cutover_shift_state{service="hello",state="rolled_back"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"cutover_shift_target_percent{pool="green",service="hello"} 0"#));
    assert!(metrics.contains(r#"cutover_shift_step{service="hello"} 0"#));
}

#[tokio::test(start_paused = true)]
async fn a_slow_green_rolls_back_on_p99() {
    let blue = Backend::start("blue").await;
    let green = green(0, Duration::from_millis(800)).await;
    let proxy = Proxy::with_admin(&config(&blue, &green, "").toml()).await;
    let load = Load::start(&proxy, 16).await;
    let reply = start_shift(
        &proxy,
        r#"{"to": "green", "steps": [20, 100], "every": "20s", "min_requests": 20, "max_p99": "500ms"}"#,
    )
    .await;
    assert_status(&reply, StatusCode::OK);
    let ended = until(&proxy, "the end", |s| s["shift"]["state"] != "running").await;
    load.finish().await;
    let shift = &ended["shift"];
    assert_eq!(shift["state"], "rolled_back", "{shift:#}");
    let reason = shift["reason"].as_str().unwrap();
    assert!(
        reason.contains("p99") && reason.contains("max_p99 500ms"),
        "{reason}"
    );
    let p99 = shift["judged"][0]["p99_seconds"].as_f64().unwrap();
    assert!(p99 > 0.5, "{p99}");
    assert_eq!(effective(&ended), (100, 0));
}

#[tokio::test(start_paused = true)]
async fn a_quiet_step_is_extended_then_rolled_back_unjudged() {
    let blue = Backend::start("blue").await;
    let green = green(0, Duration::ZERO).await;
    let proxy = Proxy::with_admin(&config(&blue, &green, "").toml()).await;
    let started = Instant::now();
    let reply = start_shift(
        &proxy,
        r#"{"to": "green", "steps": [50, 100], "every": "10s", "min_requests": 10, "max_extensions": 2}"#,
    )
    .await;
    assert_status(&reply, StatusCode::OK);

    let extended = until(&proxy, "an extension", |s| s["shift"]["extensions"] == 1).await;
    assert_eq!(extended["shift"]["state"], "running");
    assert_eq!(extended["shift"]["step"], 1);
    assert_eq!(extended["shift"]["judged"][0]["verdict"], "extend");
    assert_eq!(effective(&extended), (50, 50));

    let ended = until(&proxy, "the end", |s| s["shift"]["state"] != "running").await;
    let shift = &ended["shift"];
    assert_eq!(shift["state"], "rolled_back", "{shift:#}");
    assert!(
        shift["reason"]
            .as_str()
            .unwrap()
            .contains("fewer than min_requests 10"),
        "{shift:#}"
    );
    // Judged at 10 s, extended twice: 30 s.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(30) && took < Duration::from_secs(32),
        "{took:?}"
    );
    assert_eq!(effective(&ended), (100, 0));
}

#[tokio::test(start_paused = true)]
async fn a_restart_resumes_the_shift_at_its_step() {
    let blue = Backend::start("blue").await;
    let green = green(0, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let text = config(&blue, &green, "").state_file(&state).toml();

    let first = Proxy::with_admin(&text).await;
    let load = Load::start(&first, 8).await;
    let reply = start_shift(
        &first,
        r#"{"to": "green", "steps": [10, 50, 100], "every": "10s", "min_requests": 20}"#,
    )
    .await;
    assert_status(&reply, StatusCode::OK);
    until(&first, "step 2", |s| s["shift"]["step"] == 2).await;
    load.finish().await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let second = Proxy::with_admin(&text).await;
    let resumed = status(&second).await;
    let shift = &resumed["shift"];
    assert_eq!(shift["state"], "running", "{shift:#}");
    assert_eq!(shift["step"], 2);
    assert_eq!(shift["percent"], 50);
    assert_eq!(shift["before"]["blue"], 100);
    assert_eq!(effective(&resumed), (50, 50));
    assert!(kinds(&events(&second).await).contains(&"shift_step"));

    // It carries on from there, and a rollback still restores the weights
    // from before the shift, not those at the restart.
    let load = Load::start(&second, 8).await;
    let reply = admin_call(&second, Method::DELETE, "/v1/services/hello/shift", "", &[]).await;
    assert_status(&reply, StatusCode::OK);
    load.finish().await;
    assert_eq!(effective(&status(&second).await), (100, 0));
}

#[tokio::test(start_paused = true)]
async fn abort_restores_the_weights_from_before_and_a_second_abort_is_409() {
    let blue = Backend::start("blue").await;
    let green = green(0, Duration::ZERO).await;
    let proxy = Proxy::with_admin(
        &support::blue_green_with(&blue, &green, 80, 20, |s| s.health_none())
            .admin()
            .toml(),
    )
    .await;
    // An API override in force before the shift comes back exactly.
    admin_json(
        &proxy,
        Method::PUT,
        "/v1/services/hello/weights",
        r#"{"blue": 70, "green": 30}"#,
    )
    .await;
    let reply = start_shift(
        &proxy,
        r#"{"to": "green", "steps": [10, 50, 100], "every": "10s"}"#,
    )
    .await;
    assert_status(&reply, StatusCode::OK);
    let running: Value = serde_json::from_slice(&reply.body).unwrap();
    // 10% is below the share green had: the shift starts at 50%.
    assert_eq!(running["service"]["shift"]["percent"], 50);
    assert_eq!(effective(&running["service"]), (50, 50));

    let reply = admin_call(&proxy, Method::DELETE, "/v1/services/hello/shift", "", &[]).await;
    assert_status(&reply, StatusCode::OK);
    let aborted: Value = serde_json::from_slice(&reply.body).unwrap();
    let service = &aborted["service"];
    assert_eq!(effective(service), (70, 30));
    assert_eq!(service["override"]["active"], true);
    assert_eq!(service["shift"]["state"], "rolled_back");
    assert_eq!(service["shift"]["outcome"], "aborted");

    let again = admin_call(&proxy, Method::DELETE, "/v1/services/hello/shift", "", &[]).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text());
    assert!(again.text().contains("no shift running"));
    let event = events(&proxy)
        .await
        .into_iter()
        .find(|e| e["kind"] == "shift_abort")
        .unwrap();
    assert_eq!(event["source"], "api");
    assert!(event["client"].as_str().unwrap().starts_with("127.0.0.1:"));
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_changes_the_weights_ends_the_shift_and_one_that_does_not_keeps_it() {
    let blue = Backend::start("blue").await;
    let green = green(0, Duration::ZERO).await;
    let proxy = Proxy::with_admin(&config(&blue, &green, "").toml()).await;
    let reply = start_shift(
        &proxy,
        r#"{"to": "green", "steps": [10, 100], "every": "10m"}"#,
    )
    .await;
    assert_status(&reply, StatusCode::OK);

    // A reload that leaves the weights alone: the shift runs on.
    let untouched = support::blue_green_with(&blue, &green, 100, 0, |s| {
        s.health_none().drain_timeout("5s")
    })
    .admin()
    .toml();
    // Reloaded through the API: a file event's thread would race the
    // paused clock.
    proxy.rewrite(&untouched);
    admin_json(&proxy, Method::POST, "/v1/reload", "").await;
    let kept = status(&proxy).await;
    assert_eq!(kept["shift"]["state"], "running");
    assert_eq!(effective(&kept), (90, 10));

    // One that changes them wins: the shift ends where it stood.
    let changed = support::blue_green_with(&blue, &green, 50, 50, |s| s.health_none())
        .admin()
        .toml();
    proxy.rewrite(&changed);
    admin_json(&proxy, Method::POST, "/v1/reload", "").await;
    let ended = status(&proxy).await;
    assert_eq!(ended["shift"]["state"], "idle", "{:#}", ended["shift"]);
    assert_eq!(ended["shift"]["outcome"], "ended");
    assert!(ended["shift"]["reason"]
        .as_str()
        .unwrap()
        .contains("configuration file changed"));
    assert_eq!(effective(&ended), (50, 50));
    let events = events(&proxy).await;
    let end = events.iter().find(|e| e["kind"] == "shift_end").unwrap();
    // The API's reload, or the file watcher's if it saw the write first.
    assert!(end["source"] == "api" || end["source"] == "file", "{end}");
    assert!(kinds(&events).contains(&"reload"));
}

#[tokio::test(start_paused = true)]
async fn conflicts_get_409_and_stale_changes_get_412() {
    let blue = Backend::start("blue").await;
    let green = green(0, Duration::ZERO).await;
    let proxy = Proxy::with_admin(&config(&blue, &green, "").toml()).await;
    let path = "/v1/services/hello/weights";

    let before = admin_call(&proxy, Method::GET, "/v1/status", "", &[]).await;
    let etag = before.headers["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", proxy.generation()));

    // A stale If-Match changes nothing.
    let stale = format!("\"{}\"", proxy.generation() - 1);
    let reply = with_if_match(&proxy, Method::PUT, path, r#"{"green": 100}"#, &stale).await;
    assert_status(&reply, StatusCode::PRECONDITION_FAILED);
    assert!(reply.text().contains("precondition failed"));
    assert_eq!(effective(&status(&proxy).await), (100, 0));
    for bad in ["nonsense", "W/\"x\"", "\"\""] {
        let reply = with_if_match(&proxy, Method::PUT, path, r#"{"green": 100}"#, bad).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(reply.text().contains("bad If-Match"), "{}", reply.text());
    }
    // A tag that is no generation of this proxy's matches nothing.
    let reply = with_if_match(
        &proxy,
        Method::PUT,
        path,
        r#"{"green": 100}"#,
        "\"abc\", \"99999\"",
    )
    .await;
    assert_status(&reply, StatusCode::PRECONDITION_FAILED);
    assert_eq!(effective(&status(&proxy).await), (100, 0));

    // The current one applies, and answers with the next.
    let reply = with_if_match(&proxy, Method::PUT, path, r#"{"green": 10}"#, &etag).await;
    assert_status(&reply, StatusCode::OK);
    let next = reply.headers["etag"].to_str().unwrap().to_owned();
    assert_ne!(next, etag);
    // The old tag is now stale, for a drain and for a shift too.
    let reply = with_if_match(
        &proxy,
        Method::PUT,
        "/v1/services/hello/pools/green/state",
        r#"{"state": "drain"}"#,
        &etag,
    )
    .await;
    assert_status(&reply, StatusCode::PRECONDITION_FAILED);
    let reply = with_if_match(
        &proxy,
        Method::POST,
        "/v1/services/hello/shift",
        r#"{"to": "green", "every": "10s"}"#,
        &etag,
    )
    .await;
    assert_status(&reply, StatusCode::PRECONDITION_FAILED);

    let reply = with_if_match(
        &proxy,
        Method::POST,
        "/v1/services/hello/shift",
        r#"{"to": "green", "every": "10s"}"#,
        &next,
    )
    .await;
    assert_status(&reply, StatusCode::OK);
    // A second shift on a running one.
    let reply = start_shift(&proxy, r#"{"to": "green"}"#).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
    assert!(reply.text().contains("already shifting"));

    // Bad shifts: 400, 404, each naming what is wrong.
    for (body, status, words) in [
        (
            r#"{"to": "purple"}"#,
            StatusCode::BAD_REQUEST,
            "no pool \\\"purple\\\"",
        ),
        (
            r#"{"steps": [10]}"#,
            StatusCode::BAD_REQUEST,
            "missing field `to`",
        ),
        (
            r#"{"to": "green", "steps": [50, 10]}"#,
            StatusCode::BAD_REQUEST,
            "ascend",
        ),
        (
            r#"{"to": "green", "every": "soon"}"#,
            StatusCode::BAD_REQUEST,
            "every",
        ),
        (
            r#"{"to": "green", "colour": "red"}"#,
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
    ] {
        let reply = admin_call(&proxy, Method::DELETE, "/v1/services/hello/shift", "", &[]).await;
        assert!(reply.status == StatusCode::OK || reply.status == StatusCode::CONFLICT);
        let reply = start_shift(&proxy, body).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text());
        assert!(reply.text().contains(words), "{body}: {}", reply.text());
    }
    let reply = admin_call(
        &proxy,
        Method::POST,
        "/v1/services/nope/shift",
        r#"{"to": "green"}"#,
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    // A weights PUT during a shift ends it, and says so.
    let reply = start_shift(
        &proxy,
        r#"{"to": "green", "steps": [50, 100], "every": "10m"}"#,
    )
    .await;
    assert_status(&reply, StatusCode::OK);
    let reply = admin_call(
        &proxy,
        Method::PUT,
        path,
        r#"{"blue": 100, "green": 0}"#,
        &[],
    )
    .await;
    assert_status(&reply, StatusCode::OK);
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    let shift = &body["service"]["shift"];
    assert_eq!(shift["outcome"], "ended", "{shift:#}");
    assert!(shift["reason"]
        .as_str()
        .unwrap()
        .contains("weights set through the admin API"));
    assert_eq!(effective(&body["service"]), (100, 0));
}

#[tokio::test(start_paused = true)]
async fn read_only_refuses_a_shift() {
    let blue = Backend::start("blue").await;
    let green = green(0, Duration::ZERO).await;
    let proxy = Proxy::with_admin(&config(&blue, &green, "").read_only(true).toml()).await;
    let reply = start_shift(&proxy, r#"{"to": "green"}"#).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
    assert!(reply.text().contains("read_only"));
}

#[tokio::test(start_paused = true)]
async fn revert_after_brings_the_weights_back_unless_a_later_change_came_first() {
    let blue = Backend::start("blue").await;
    let green = green(0, Duration::ZERO).await;
    let proxy = Proxy::with_admin(&config(&blue, &green, "").toml()).await;
    let path = "/v1/services/hello/weights";

    let set = admin_json(
        &proxy,
        Method::PUT,
        path,
        r#"{"blue": 0, "green": 100, "revert_after": "10m"}"#,
    )
    .await;
    let over = &set["service"]["override"];
    assert!(over["revert_at"].is_string(), "{over}");
    assert_eq!(over["revert_to"]["blue"], 100);
    assert_eq!(effective(&set["service"]), (0, 100));
    tokio::time::sleep(Duration::from_secs(599)).await;
    assert_eq!(effective(&status(&proxy).await), (0, 100));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reverted = status(&proxy).await;
    assert_eq!(effective(&reverted), (100, 0));
    assert_eq!(reverted["override"]["active"], false);
    let revert = events(&proxy)
        .await
        .into_iter()
        .find(|e| e["kind"] == "revert")
        .unwrap();
    assert_eq!(revert["source"], "revert_after");
    assert_eq!(revert["before"]["green"], 100);
    assert_eq!(revert["after"]["green"], 0);
    assert_eq!(support::get(proxy.addr(), "x", "/").await.pool(), "blue");

    // Confirmed by a later PUT: no revert.
    admin_json(
        &proxy,
        Method::PUT,
        path,
        r#"{"blue": 0, "green": 100, "revert_after": "10m"}"#,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let confirmed = admin_json(&proxy, Method::PUT, path, r#"{"blue": 0, "green": 100}"#).await;
    assert!(confirmed["service"]["override"]["revert_at"].is_null());
    tokio::time::sleep(Duration::from_secs(1200)).await;
    assert_eq!(effective(&status(&proxy).await), (0, 100));

    for bad in [
        r#"{"green": 1, "revert_after": "never"}"#,
        r#"{"green": 1, "revert_after": 5}"#,
    ] {
        let reply = admin_call(&proxy, Method::PUT, path, bad, &[]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(reply.text().contains("revert_after"), "{}", reply.text());
    }
}

// Real time: load on worker threads, which a paused clock cannot have.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steps_driven_by_the_controller_under_load_lose_no_request() {
    let blue = Backend::start("blue").await;
    let green = green(0, Duration::ZERO).await;
    let proxy = Proxy::with_admin(&config(&blue, &green, "").toml()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut client = Client::connect(proxy.addr()).await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut log = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match client.get("/", &[]).await {
                    Ok(reply) => log.push((reply.status, reply.pool().to_owned())),
                    Err(e) => log.push((StatusCode::IM_A_TEAPOT, e)),
                }
            }
            log
        }));
    }
    let reply = start_shift(
        &proxy,
        r#"{"to": "green", "steps": [10, 25, 50, 75, 100], "every": "300ms", "min_requests": 20}"#,
    )
    .await;
    assert_status(&reply, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let service = status(&proxy).await;
        if service["shift"]["state"] != "running" {
            break service;
        }
        assert!(Instant::now() < deadline, "{:#}", service["shift"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Some more requests after the last step.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut log = Vec::new();
    for task in tasks {
        log.extend(task.await.unwrap());
    }
    assert_eq!(done["shift"]["state"], "done", "{:#}", done["shift"]);
    let failed: Vec<_> = log.iter().filter(|(s, _)| *s != StatusCode::OK).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        log.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(log.len() > 1000, "{}", log.len());
    assert!(log.iter().any(|(_, p)| p == "blue"));
    assert!(log.iter().any(|(_, p)| p == "green"));
    assert_eq!(support::get(proxy.addr(), "x", "/").await.pool(), "green");
}

#[tokio::test(start_paused = true)]
async fn what_a_shift_cannot_judge_or_undo_is_refused() {
    let blue = Backend::start("blue").await;
    let green = green(0, Duration::ZERO).await;
    let text = Config::new()
        .admin()
        .listener("web")
        .service("hello", |s| {
            s.health_none()
                .pool("blue", 100, &[blue.addr])
                .pool("green", 0, &[green.addr])
        })
        .tcp_listener_at("l4", {
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            free.local_addr().unwrap()
        })
        .service("db", |s| {
            s.health_none()
                .pool("blue", 100, &[blue.addr])
                .pool("green", 0, &[green.addr])
        })
        .toml();
    let proxy = Proxy::with_admin(&text).await;

    // Layer 4 has no HTTP answers to judge.
    let reply = admin_call(
        &proxy,
        Method::POST,
        "/v1/services/db/shift",
        r#"{"to": "green"}"#,
        &[],
    )
    .await;
    assert_status(&reply, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("tcp listener"), "{}", reply.text());
    // A step is never passed on no request.
    let reply = start_shift(&proxy, r#"{"to": "green", "min_requests": 0}"#).await;
    assert_status(&reply, StatusCode::BAD_REQUEST);
    assert!(
        reply.text().contains("min_requests is 0"),
        "{}",
        reply.text()
    );

    // A pending revert_after ends with the shift that follows it: a
    // rollback restores the weights, not the dead-man switch.
    let set = admin_json(
        &proxy,
        Method::PUT,
        "/v1/services/hello/weights",
        r#"{"blue": 90, "green": 10, "revert_after": "1m"}"#,
    )
    .await;
    assert!(set["service"]["override"]["revert_at"].is_string());
    let reply = start_shift(
        &proxy,
        r#"{"to": "green", "steps": [50, 100], "every": "10m"}"#,
    )
    .await;
    assert_status(&reply, StatusCode::OK);

    tokio::time::sleep(Duration::from_secs(120)).await;
    let reply = admin_call(&proxy, Method::DELETE, "/v1/services/hello/shift", "", &[]).await;
    assert_status(&reply, StatusCode::OK);
    let back = status(&proxy).await;
    assert_eq!(effective(&back), (90, 10));
    assert!(
        back["override"]["revert_at"].is_null(),
        "{:#}",
        back["override"]
    );
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(effective(&status(&proxy).await), (90, 10));
}

#[tokio::test(start_paused = true)]
async fn a_drain_that_would_leave_the_rollback_nothing_is_refused() {
    let blue = Backend::start("blue").await;
    let green = green(0, Duration::ZERO).await;
    let proxy = Proxy::with_admin(&config(&blue, &green, "").toml()).await;
    let reply = start_shift(
        &proxy,
        r#"{"to": "green", "steps": [50, 100], "every": "10m"}"#,
    )
    .await;
    assert_status(&reply, StatusCode::OK);
    // Green has 50 now, so blue could go; but a rollback restores
    // blue=100 green=0, which a drained blue could not serve.
    let reply = admin_call(
        &proxy,
        Method::PUT,
        "/v1/services/hello/pools/blue/state",
        r#"{"state": "drain"}"#,
        &[],
    )
    .await;
    assert_status(&reply, StatusCode::CONFLICT);
    assert_eq!(status(&proxy).await["shift"]["state"], "running");
}
