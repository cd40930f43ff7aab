//! SIGTERM on the real binary during load: requests already started finish,
//! new connections are refused, keep-alive clients are told to close, and the
//! process exits 0 within the drain deadline.

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use support::{full, Backend, Client, Config};

/// Kills the child if the test fails before it exits.
struct Child(Option<tokio::process::Child>);

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.start_kill();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_started_requests_refuses_new_ones_and_exits_0() {
    let slow = Backend::with_handler(
        "blue",
        Arc::new(|_req| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(700)).await;
                Response::new(full("done"))
            })
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    let (mut child, addr) = loop {
        let port = free_port();
        let admin = free_port();
        let config = Config::new()
            .admin_at(format!("127.0.0.1:{admin}"))
            .listener_at("web", format!("127.0.0.1:{port}"))
            .service("hello", |s| {
                s.drain_timeout("5s").pool("blue", 100, &[slow.addr])
            })
            .toml();
        std::fs::write(&path, config).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(["run", "-c"])
            .arg(&path)
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut child = Child(Some(child));
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut up = false;
        while Instant::now() < deadline {
            if let Some(status) = child.0.as_mut().unwrap().try_wait().unwrap() {
                // The port was taken meanwhile: try another.
                assert!(!status.success());
                break;
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if up {
            break (child, addr);
        }
    };

    let mut started = Vec::new();
    for _ in 0..8 {
        let mut client = Client::connect(addr).await;
        started.push(tokio::spawn(async move {
            let req = Request::get("/")
                .header("host", "x")
                .body(full(""))
                .unwrap();
            client.send(req).await
        }));
    }
    // Let every request reach the backend, then stop the proxy.
    let deadline = Instant::now() + Duration::from_secs(5);
    while slow.hits() < 8 {
        assert!(Instant::now() < deadline, "requests did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = child.0.as_ref().unwrap().id().unwrap();
    let signalled = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a new connection was accepted after SIGTERM"
    );
    for request in started {
        let reply = request.await.unwrap().expect("a started request failed");
        assert_eq!(reply.text(), "done");
        assert_eq!(reply.headers["connection"], "close", "keep-alive not ended");
    }
    let status = tokio::time::timeout(Duration::from_secs(6), child.0.as_mut().unwrap().wait())
        .await
        .expect("exited within the drain deadline")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    child.0 = None;
    eprintln!(
        "SIGTERM with 8 requests in flight: all completed, exit 0 after {:?}",
        signalled.elapsed()
    );
}
