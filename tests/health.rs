//! Health checks, passive ejection, retries and failover: a dead or dying
//! endpoint never costs a client a failed GET while a healthy one exists.
//!
//! Tests that wait out check intervals or an ejection run on tokio's paused
//! clock (`start_paused`): the proxy, its checkers and the backends all run
//! in the test's runtime on real loopback sockets, and the clock jumps to
//! the next timer only when nothing can run, so a wait costs no real time.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cutover::health::EndpointHealth;
use http::{Request, Response, StatusCode};
use support::config::Service;
use support::{full, get, Backend, Client, Config, Proxy};
use tokio::time::Instant;

/// blue/green over `blue` and `green` endpoints, with what `service` adds to
/// the service table.
fn config(
    blue: &[SocketAddr],
    green: &[SocketAddr],
    wb: i64,
    wg: i64,
    service: impl FnOnce(Service) -> Service,
) -> String {
    Config::new()
        .listener("web")
        .service("hello", |s| {
            service(s.connect_timeout("5s"))
                .pool("blue", wb, blue)
                .pool("green", wg, green)
        })
        .toml()
}

/// Fast TCP checks: two failures or passes in a row, 50 ms apart.
fn fast_tcp(s: Service) -> Service {
    s.health(|h| {
        h.tcp()
            .interval("50ms")
            .timeout("500ms")
            .healthy_threshold(2)
            .unhealthy_threshold(2)
    })
}

/// A loopback address with nothing listening: bound, then let go.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A backend whose /healthz answers with a status the test sets.
async fn with_health_status(name: &'static str, status: Arc<AtomicU16>) -> Backend {
    Backend::with_handler(
        name,
        Arc::new(move |req: Request<hyper::body::Incoming>| {
            let status = status.clone();
            Box::pin(async move {
                if req.uri().path() == "/healthz" {
                    let code = StatusCode::from_u16(status.load(Ordering::Relaxed)).unwrap();
                    let mut resp = Response::new(full("health"));
                    *resp.status_mut() = code;
                    resp
                } else {
                    Response::new(full(name))
                }
            })
        }),
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn thresholds_mark_down_and_up_exactly() {
    let status = Arc::new(AtomicU16::new(200));
    let blue = with_health_status("blue", status.clone()).await;
    let green = Backend::start("green").await;
    let health = |s: Service| {
        s.health(|h| {
            h.http("/healthz")
                .expect("200-299")
                .interval("100ms")
                .timeout("1s")
                .healthy_threshold(2)
                .unhealthy_threshold(3)
        })
    };
    let proxy = Proxy::start(&config(&[blue.addr], &[green.addr], 100, 0, health)).await;
    let snapshot = proxy.handle.snapshot();
    let endpoint = &snapshot.services[0].pools[0].endpoints[0];
    assert!(endpoint.health.healthy(), "the first pass makes it healthy");
    assert!(blue
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.uri.path() == "/healthz" && s.headers["user-agent"] == "cutover-health-check"));

    status.store(503, Ordering::Relaxed);
    until("blue is down", || !endpoint.health.healthy()).await;
    let detail = endpoint.health.detail();
    assert_eq!(
        detail.consecutive_failures, 3,
        "down after exactly 3 failures"
    );
    assert!(detail.last_error.unwrap().contains("status 503"));

    status.store(200, Ordering::Relaxed);
    until("blue is up", || endpoint.health.healthy()).await;
    assert_eq!(
        endpoint.health.detail().consecutive_passes,
        2,
        "up after exactly 2 passes"
    );
}

// Real time: a load test on worker threads, which a paused clock cannot have.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn green_dying_under_a_split_loses_no_get_and_comes_back() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::start(&config(&[blue.addr], &[green.addr], 50, 50, fast_tcp)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut client = Client::connect(proxy.addr()).await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut log = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let outcome = match client.get("/", &[]).await {
                    Ok(r) if r.status == StatusCode::OK => Ok(r.pool().to_owned()),
                    Ok(r) => Err(format!("{} {}", r.status, r.text())),
                    Err(e) => Err(e),
                };
                log.push((Instant::now(), outcome));
            }
            log
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    green.kill();
    let killed = Instant::now();
    let snapshot = proxy.handle.snapshot();
    let green_health = snapshot.services[0].pools[1].endpoints[0].health.clone();
    until("green is marked down", || !green_health.healthy()).await;
    let marked_down = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits_before_revival = green.hits();
    green.revive().await;
    until("green is back", || green_health.healthy()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for task in tasks {
        logs.extend(task.await.unwrap());
    }
    let failed: Vec<_> = logs.iter().filter(|(_, o)| o.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        green.hits() > hits_before_revival,
        "green took no traffic after coming back"
    );
    let retries = proxy.handle.metrics.render();
    let retries = String::from_utf8(retries).unwrap();
    eprintln!(
        "green died under a 50/50 split: {} requests, 0 failed; green marked down {:?} after it died; {}",
        logs.len(),
        marked_down,
        retries
            .lines()
            .filter(|l| l.starts_with("cutover_retries_total"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

#[tokio::test]
async fn a_refusing_endpoint_in_a_pool_of_two_costs_nothing() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let pool = [blue.addr, closed_port()];
    // No active checks: only retries and passive ejection protect clients.
    let extra = |s: Service| s.health_none().outlier(3, "30s");
    let proxy = Proxy::start(&config(&pool, &[green.addr], 100, 0, extra)).await;
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..100 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!((reply.status, reply.pool()), (StatusCode::OK, "blue"));
    }
    let text = String::from_utf8(proxy.handle.metrics.render()).unwrap();
    let retries = text
        .lines()
        .find(|l| l.starts_with("cutover_retries_total{pool=\"blue\""))
        .unwrap();
    // Three refusals eject it; after that it is not tried.
    assert!(retries.ends_with(" 3"), "{retries}");
    let snapshot = proxy.handle.snapshot();
    assert!(snapshot.services[0].pools[0].endpoints[1]
        .health
        .ejected_for()
        .is_some());
}

/// `cutover_retries_total` for the blue pool.
fn blue_retries(proxy: &Proxy) -> u64 {
    let text = String::from_utf8(proxy.handle.metrics.render()).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("cutover_retries_total{pool=\"blue\""))
        .unwrap_or_else(|| panic!("no blue retries in {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// GETs on `client` until `ejected` holds (at most 20), every one served
/// by blue.
async fn get_until_ejected(client: &mut Client, ejected: impl Fn() -> bool) {
    for _ in 0..20 {
        if ejected() {
            return;
        }
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!((reply.status, reply.pool()), (StatusCode::OK, "blue"));
    }
    panic!("not ejected after 20 requests");
}

/// Asserts an ejection in force ends within `left`, give or take the
/// millisecond an ejection is counted in.
fn assert_ejected_for(health: &EndpointHealth, left: Duration) {
    let tick = Duration::from_millis(1);
    let ejected_for = health.ejected_for();
    assert!(
        ejected_for.is_some_and(|d| d + tick >= left && d <= left + tick),
        "ejected for {ejected_for:?}, not {left:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_ejected_endpoint_is_tried_again_after_base_ejection_then_out_twice_as_long() {
    let base = Duration::from_secs(5);
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let pool = [blue.addr, closed_port()];
    let extra = |s: Service| s.health_none().outlier(3, "5s");
    let proxy = Proxy::start(&config(&pool, &[green.addr], 100, 0, extra)).await;
    let snapshot = proxy.handle.snapshot();
    let refusing = snapshot.services[0].pools[0].endpoints[1].health.clone();
    let mut client = Client::connect(proxy.addr()).await;

    get_until_ejected(&mut client, || refusing.ejected_for().is_some()).await;
    assert_eq!(blue_retries(&proxy), 3, "ejected after three refusals");
    assert_ejected_for(&refusing, base);

    // Out for all of base_ejection: not tried, even once.
    let almost = Duration::from_millis(10);
    tokio::time::sleep(base - almost).await;
    assert_ejected_for(&refusing, almost);
    for _ in 0..4 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!((reply.status, reply.pool()), (StatusCode::OK, "blue"));
    }
    assert_eq!(blue_retries(&proxy), 3, "tried while ejected");

    // Then back in rotation: tried again, and three more refusals eject it
    // for twice base_ejection.
    tokio::time::sleep(2 * almost).await;
    assert_eq!(refusing.ejected_for(), None);
    get_until_ejected(&mut client, || refusing.ejected_for().is_some()).await;
    assert_eq!(
        blue_retries(&proxy),
        6,
        "ejected again after three refusals"
    );
    assert_ejected_for(&refusing, 2 * base);
}

#[tokio::test]
async fn failover_to_a_weight_zero_pool_and_503_without_it() {
    let standby = Backend::start("green").await;
    for (failover, expected) in [
        (true, StatusCode::OK),
        (false, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let extra = |s: Service| fast_tcp(s.failover(failover));
        let proxy = Proxy::start(&config(&[closed_port()], &[standby.addr], 100, 0, extra)).await;
        let reply = get(proxy.addr(), "x", "/").await;
        assert_eq!(
            reply.status,
            expected,
            "failover = {failover}: {}",
            reply.text()
        );
        let serving = proxy.handle.snapshot().services[0].mode().as_str();
        if failover {
            assert_eq!(reply.pool(), "green");
            assert_eq!(serving, "failover");
            let text = String::from_utf8(proxy.handle.metrics.render()).unwrap();
            assert!(
                text.contains("cutover_failovers_total{service=\"hello\"} 1"),
                "counted once"
            );
        } else {
            assert_eq!(serving, "down");
            assert!(
                reply.text().contains("no healthy upstream"),
                "{}",
                reply.text()
            );
        }
    }
}

#[tokio::test]
async fn a_reload_during_a_failover_is_not_a_second_failover() {
    let standby = Backend::start("green").await;
    let dead = closed_port();
    let extra = |drain_timeout: &'static str| {
        move |s: Service| fast_tcp(s.failover(true).drain_timeout(drain_timeout))
    };
    let proxy = Proxy::start(&config(&[dead], &[standby.addr], 100, 0, extra("30s"))).await;
    let failovers = || {
        let text = String::from_utf8(proxy.handle.metrics.render()).unwrap();
        text.lines()
            .find(|l| l.starts_with("cutover_failovers_total{service=\"hello\"}"))
            .map(str::to_owned)
    };
    let reply = get(proxy.addr(), "x", "/").await;
    assert_eq!((reply.status, reply.pool()), (StatusCode::OK, "green"));
    assert_eq!(
        failovers().as_deref(),
        Some("cutover_failovers_total{service=\"hello\"} 1")
    );

    // A field that has nothing to do with failover changes; blue is still dead.
    proxy.rewrite(&config(&[dead], &[standby.addr], 100, 0, extra("10s")));
    proxy.wait_generation(2).await;
    for _ in 0..3 {
        let reply = get(proxy.addr(), "x", "/").await;
        assert_eq!((reply.status, reply.pool()), (StatusCode::OK, "green"));
    }
    assert_eq!(
        proxy.handle.snapshot().services[0].mode().as_str(),
        "failover"
    );
    assert_eq!(
        failovers().as_deref(),
        Some("cutover_failovers_total{service=\"hello\"} 1"),
        "the reload counted the failover again"
    );
}

#[tokio::test]
async fn nothing_healthy_is_503_at_once() {
    let extra = |s: Service| fast_tcp(s.failover(true));
    let proxy = Proxy::start(&config(&[closed_port()], &[closed_port()], 50, 50, extra)).await;
    let mut client = Client::connect(proxy.addr()).await;
    let started = Instant::now();
    for _ in 0..10 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    // connect_timeout is 5s: ten 503s in well under one means no connect was tried.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// A raw upstream that reads one request head and body, then resets the
/// connection without answering. Returns its address and a request counter.
async fn resetting_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let head_done = got.windows(4).any(|w| w == b"\r\n\r\n");
                    if head_done && (got.starts_with(b"GET") || got.ends_with(b"payload")) {
                        counter.fetch_add(1, Ordering::Relaxed);
                        // Reset rather than close: SO_LINGER 0.
                        let _ = stream.set_zero_linger();
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_post_whose_body_went_upstream_is_not_retried() {
    let (upstream, requests) = resetting_upstream().await;
    let spare = Backend::start("spare").await;
    let pool = [upstream, spare.addr];
    let extra = |s: Service| s.retries(2).health_none();
    let proxy = Proxy::start(&config(&pool, &[closed_port()], 100, 0, extra)).await;
    // Round-robin: make sure the POST lands on the resetting endpoint.
    let mut client = Client::connect(proxy.addr()).await;
    let mut answered = Vec::new();
    for _ in 0..2 {
        let req = Request::post("/submit")
            .header("host", "x")
            .body(full("payload"))
            .unwrap();
        answered.push(client.send(req).await.map(|r| r.status));
        client = Client::connect(proxy.addr()).await;
    }
    assert_eq!(
        requests.load(Ordering::Relaxed),
        1,
        "the POST was sent twice"
    );
    assert!(
        answered.contains(&Ok(StatusCode::BAD_GATEWAY)),
        "{answered:?}"
    );
    assert_eq!(spare.hits(), 1, "only the other POST reached the spare");

    // The same reset on a GET is retried on the spare.
    let (upstream, _) = resetting_upstream().await;
    let pool = [upstream, spare.addr];
    let proxy = Proxy::start(&config(&pool, &[closed_port()], 100, 0, extra)).await;
    for _ in 0..2 {
        assert_eq!(get(proxy.addr(), "x", "/").await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn reload_keeps_unchanged_checkers_and_new_endpoints_wait_for_a_pass() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let extra = |s: Service| s.health(|h| h.tcp().interval("2s"));
    let proxy = Proxy::start(&config(&[blue.addr], &[green.addr], 100, 0, extra)).await;
    let before = proxy.handle.snapshot();
    let blue_health = before.services[0].pools[0].endpoints[0].health.clone();

    let late = Backend::start("late").await;
    proxy.rewrite(&config(
        &[blue.addr, late.addr],
        &[green.addr],
        100,
        0,
        extra,
    ));
    proxy.wait_generation(2).await;
    let after = proxy.handle.snapshot();
    let endpoints = &after.services[0].pools[0].endpoints;
    assert!(
        Arc::ptr_eq(&endpoints[0].health, &blue_health),
        "blue's checker was restarted"
    );
    let late_health = endpoints[1].health.clone();
    until("the new endpoint passes its first check", || {
        late_health.healthy()
    })
    .await;
    for _ in 0..4 {
        get(proxy.addr(), "x", "/").await;
    }
    assert!(late.hits() > 0, "the new endpoint took no traffic");

    proxy.rewrite(&config(&[blue.addr], &[green.addr], 100, 0, extra));
    proxy.wait_generation(3).await;
    let last = proxy.handle.snapshot();
    assert!(Arc::ptr_eq(
        &last.services[0].pools[0].endpoints[0].health,
        &blue_health
    ));
    assert_eq!(last.services[0].pools[0].endpoints.len(), 1);
}
