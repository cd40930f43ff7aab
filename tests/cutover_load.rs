//! Cutover under load: concurrent keep-alive clients keep sending while the
//! configuration file changes under them. A valid change applies to the next
//! request on every connection, old or new, and loses nothing; an invalid one
//! changes nothing. Also: listeners opened and closed by a reload, and the
//! Kubernetes ConfigMap symlink swap.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::{blue_green, get, Backend, Client, Config, Proxy};

const CLIENTS: usize = 16;

/// One request's outcome: when it started, and the pool that answered it or
/// the error.
type Outcome = (Instant, Result<String, String>);

/// Starts `CLIENTS` keep-alive connections, each sending requests back to back
/// until `stop` is set. The connections are open before this returns.
async fn start_load(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Outcome>>> {
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = Client::connect(addr).await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut log = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let outcome = match client.get("/", &[]).await {
                    Ok(reply) if reply.status == StatusCode::OK => Ok(reply.pool().to_owned()),
                    Ok(reply) => Err(format!("status {}", reply.status)),
                    Err(e) => Err(e),
                };
                log.push((started, outcome));
            }
            log
        }));
    }
    tasks
}

async fn finish_load(
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
) -> Vec<Vec<Outcome>> {
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for task in tasks {
        logs.push(task.await.unwrap());
    }
    logs
}

fn failures(logs: &[Vec<Outcome>]) -> Vec<&String> {
    logs.iter()
        .flatten()
        .filter_map(|(_, o)| o.as_ref().err())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_cutover_under_load_loses_nothing_and_applies_to_open_connections() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::start(&blue_green(&blue, &green, 100, 0).toml()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = start_load(proxy.addr(), stop.clone()).await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.rewrite(&blue_green(&blue, &green, 0, 100).toml());
    proxy.wait_generation(2).await;
    let switched = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = finish_load(stop, tasks).await;

    let total: usize = logs.iter().map(Vec::len).sum();
    assert!(total > 100, "only {total} requests were sent");
    assert_eq!(failures(&logs), Vec::<&String>::new(), "failed requests");
    for (i, log) in logs.iter().enumerate() {
        // Every connection was opened before the switch and served blue then.
        assert!(
            log.iter().any(|(_, o)| o.as_deref() == Ok("blue")),
            "client {i} never reached blue"
        );
        let after: Vec<_> = log.iter().filter(|(t, _)| *t >= switched).collect();
        assert!(
            !after.is_empty(),
            "client {i} sent nothing after the switch"
        );
        for (_, outcome) in after {
            assert_eq!(
                outcome.as_deref(),
                Ok("green"),
                "client {i}: a request after the reload went elsewhere"
            );
        }
    }
    eprintln!(
        "cutover under load: {total} requests on {CLIENTS} connections, {} failed",
        failures(&logs).len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_file_under_load_changes_nothing_then_a_valid_one_applies() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::start(&blue_green(&blue, &green, 100, 0).toml()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = start_load(proxy.addr(), stop.clone()).await;

    tokio::time::sleep(Duration::from_millis(200)).await;
    // A weight validation refuses.
    proxy.rewrite(&blue_green(&blue, &green, 0, -100).toml());
    proxy.wait_failed_reloads(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = finish_load(stop, tasks).await;

    assert_eq!(failures(&logs), Vec::<&String>::new(), "failed requests");
    assert!(
        logs.iter()
            .flatten()
            .all(|(_, o)| o.as_deref() == Ok("blue")),
        "the invalid file moved traffic"
    );
    let status = proxy.handle.status();
    assert_eq!(status.generation(), 1);
    let error = status.last_reload_error.expect("the error is kept");
    assert!(error.contains("weight -100"), "{error}");
    assert!(error.contains("cutover.toml:"), "{error}");

    proxy.rewrite(&blue_green(&blue, &green, 0, 100).toml());
    proxy.wait_generation(2).await;
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "green");
    assert!(proxy.handle.status().last_reload_error.is_none());
}

/// `config` with a second listener `alt` on `bind`, serving the same service.
fn with_second_listener(config: Config, bind: &str) -> String {
    config.listener_at("alt", bind).serves("hello").toml()
}

#[tokio::test]
async fn reload_opens_added_listeners_closes_removed_ones_and_keeps_the_rest() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let base = blue_green(&blue, &green, 100, 0);
    let proxy = Proxy::start(&base.toml()).await;
    let web = proxy.addr();
    let mut kept = Client::connect(web).await;
    assert_eq!(kept.get("/", &[]).await.unwrap().pool(), "blue");

    proxy.rewrite(&with_second_listener(base.clone(), "127.0.0.2:0"));
    proxy.wait_generation(2).await;
    let alt = proxy.handle.listener_addr("alt").expect("alt is bound");
    assert_eq!(proxy.addr(), web, "web was re-bound");
    assert_eq!(get(alt, "x", "/").await.pool(), "blue");
    // The connection opened before the reload still works: the socket was kept.
    assert_eq!(kept.get("/", &[]).await.unwrap().pool(), "blue");

    proxy.rewrite(&base.toml());
    proxy.wait_generation(3).await;
    assert!(proxy.handle.listener_addr("alt").is_none());
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if tokio::net::TcpStream::connect(alt).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "removed listener still accepts");
    assert_eq!(kept.get("/", &[]).await.unwrap().pool(), "blue");
}

#[tokio::test]
async fn a_bind_failure_on_reload_changes_nothing() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::start(&blue_green(&blue, &green, 100, 0).toml()).await;
    // The backend's port is taken: binding a listener there must fail, and
    // the weight change that came with it must not apply either.
    let config = with_second_listener(blue_green(&blue, &green, 0, 100), &blue.addr.to_string());
    proxy.rewrite(&config);
    proxy.wait_failed_reloads(1).await;
    let error = proxy.handle.status().last_reload_error.unwrap();
    assert!(error.contains("cannot bind"), "{error}");
    assert_eq!(proxy.generation(), 1);
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "blue");
}

#[cfg(unix)]
#[tokio::test]
async fn configmap_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;

    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    // The layout the kubelet makes for a mounted ConfigMap.
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("..2026_11_29_first");
    std::fs::create_dir(&first).unwrap();
    std::fs::write(
        first.join("cutover.toml"),
        blue_green(&blue, &green, 100, 0).toml(),
    )
    .unwrap();
    symlink("..2026_11_29_first", dir.path().join("..data")).unwrap();
    symlink("..data/cutover.toml", dir.path().join("cutover.toml")).unwrap();
    let path = dir.path().join("cutover.toml");
    let proxy = Proxy::start_at(dir, path.clone()).await;
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "blue");

    let root = path.parent().unwrap();
    let second = root.join("..2026_11_29_second");
    std::fs::create_dir(&second).unwrap();
    std::fs::write(
        second.join("cutover.toml"),
        blue_green(&blue, &green, 0, 100).toml(),
    )
    .unwrap();
    symlink("..2026_11_29_second", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    proxy.wait_generation(2).await;
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "green");
}
