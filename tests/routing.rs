//! Routing: weighted splits, Host routing and its 404, Host rewrite, forwarding
//! and hop-by-hop headers, and the proxy's own 502 and 504.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use support::{blue_green, blue_green_with, full, get, Backend, Client, Config, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_ten_split_is_within_two_percent_and_smooth() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::start(&blue_green(&blue, &green, 90, 10).toml()).await;

    let mut client = Client::connect(proxy.addr()).await;
    let mut picks = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        picks.push(reply.pool().to_owned());
    }
    let green_share = picks.iter().filter(|p| *p == "green").count() as f64 / 10_000.0;
    assert!(
        (green_share - 0.10).abs() <= 0.02,
        "green got {:.2}%",
        green_share * 100.0
    );
    // Smooth: never a long run of the small pool, nor of the large one.
    let longest_blue_run = picks
        .split(|p| p == "green")
        .map(|run| run.len())
        .max()
        .unwrap();
    assert!(
        longest_blue_run <= 20,
        "blue ran {longest_blue_run} in a row"
    );
    assert!(
        picks
            .windows(2)
            .all(|w| !(w[0] == "green" && w[1] == "green")),
        "green was picked twice in a row"
    );
    assert_eq!(blue.hits() + green.hits(), 10_000);
}

/// Three services on `web`: `shop` and `api` by Host (`api` with a Host
/// rewrite), and `fallback`, the default.
fn shop_api_fallback(a: &Backend, b: &Backend, c: &Backend) -> String {
    Config::new()
        .listener("web")
        .service("shop", |s| {
            s.hosts(["shop.example.com", "*.shop.example.com"])
                .pool("blue", 100, &[a.addr])
        })
        .service("api", |s| {
            s.hosts(["api.example.com"])
                .pool_with("blue", 100, &[b.addr], |p| p.host("api.cluster-a.internal"))
        })
        .service("fallback", |s| s.pool("blue", 1, &[c.addr]))
        .toml()
}

#[tokio::test]
async fn routes_by_host_with_wildcards_ports_and_case() {
    let shop = Backend::start("shop").await;
    let api = Backend::start("api").await;
    let fallback = Backend::start("fallback").await;
    let proxy = Proxy::start(&shop_api_fallback(&shop, &api, &fallback)).await;
    let addr = proxy.addr();

    assert_eq!(get(addr, "shop.example.com", "/").await.pool(), "shop");
    assert_eq!(get(addr, "SHOP.Example.com:8080", "/").await.pool(), "shop");
    assert_eq!(get(addr, "eu.shop.example.com", "/").await.pool(), "shop");
    assert_eq!(get(addr, "api.example.com", "/").await.pool(), "api");
    // No match: the listener's default service (the one without hosts).
    assert_eq!(get(addr, "other.example.com", "/").await.pool(), "fallback");
}

#[tokio::test]
async fn unknown_host_without_default_service_is_404() {
    let shop = Backend::start("shop").await;
    let config = Config::new()
        .listener("web")
        .service("shop", |s| {
            s.hosts(["shop.example.com"])
                .pool("blue", 100, &[shop.addr])
        })
        .toml();
    let proxy = Proxy::start(&config).await;
    let reply = get(proxy.addr(), "nope.example.com", "/").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(
        reply.text().contains("no service for this host"),
        "{}",
        reply.text()
    );
    assert_eq!(shop.hits(), 0);
}

#[tokio::test]
async fn host_rewrite_and_forwarding_headers() {
    let shop = Backend::start("shop").await;
    let api = Backend::start("api").await;
    let fallback = Backend::start("fallback").await;
    let proxy = Proxy::start(&shop_api_fallback(&shop, &api, &fallback)).await;

    let mut client = Client::connect(proxy.addr()).await;
    let reply = client
        .get(
            "/v1/items?id=7",
            &[
                ("host", "api.example.com"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["via"], "1.1 cutover");
    let seen = api.last_seen();
    assert_eq!(seen.uri.path_and_query().unwrap(), "/v1/items?id=7");
    assert_eq!(seen.headers["host"], "api.cluster-a.internal");
    assert_eq!(seen.headers["x-forwarded-host"], "api.example.com");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["via"], "1.1 cutover");

    // Without a rewrite the client's Host goes through unchanged.
    get(proxy.addr(), "shop.example.com", "/").await;
    assert_eq!(shop.last_seen().headers["host"], "shop.example.com");
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let backend = Backend::with_handler(
        "blue",
        Arc::new(|_req| {
            Box::pin(async {
                Response::builder()
                    .header("connection", "x-internal")
                    .header("x-internal", "secret")
                    .header("keep-alive", "timeout=5")
                    .header("proxy-authenticate", "Basic")
                    .header("x-kept", "yes")
                    .body(full("ok"))
                    .unwrap()
            })
        }),
    )
    .await;
    let proxy = Proxy::start(&blue_green(&backend, &backend, 100, 0).toml()).await;
    let mut client = Client::connect(proxy.addr()).await;
    let reply = client
        .get(
            "/",
            &[
                ("connection", "keep-alive, x-drop-me"),
                ("x-drop-me", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("te", "trailers"),
                ("x-keep-me", "1"),
            ],
        )
        .await
        .unwrap();
    let seen = backend.last_seen();
    for name in ["x-drop-me", "keep-alive", "proxy-authorization", "te"] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the upstream"
        );
    }
    assert_eq!(seen.headers["x-keep-me"], "1");
    for name in ["x-internal", "keep-alive", "proxy-authenticate"] {
        assert!(
            !reply.headers.contains_key(name),
            "{name} reached the client"
        );
    }
    assert_eq!(reply.headers["x-kept"], "yes");
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    // Bind then drop: a loopback port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let blue = Backend::start("blue").await;
    // No active checks and no failover, so the request really tries the
    // dead endpoint (with them, see tests/health.rs).
    let config = Config::new()
        .limits(|l| l.header_read_timeout("2s"))
        .listener("web")
        .service("hello", |s| {
            s.failover(false)
                .health_none()
                .pool("blue", 100, &[closed])
                .pool("green", 0, &[blue.addr])
        });
    let proxy = Proxy::start(&config.toml()).await;
    let reply = get(proxy.addr(), "x", "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        reply.text().starts_with("502 Bad Gateway"),
        "{}",
        reply.text()
    );
}

#[tokio::test]
async fn slow_upstream_is_504_after_request_timeout() {
    let slow = Backend::with_handler(
        "blue",
        Arc::new(|_req| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Response::new(full("late"))
            })
        }),
    )
    .await;
    let config = blue_green_with(&slow, &slow, 100, 0, |s| s.request_timeout("200ms"));
    let proxy = Proxy::start(&config.toml()).await;
    let started = std::time::Instant::now();
    let reply = get(proxy.addr(), "x", "/").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(4));
}
