//! The layer-4 relay as a client and an upstream see it: a half-close
//! passed on while the other direction keeps flowing, every byte counted
//! per direction, a PROXY header written before the client's bytes, one
//! from an untrusted client refused even a byte at a time, and a connection
//! on a pool taken out of rotation closed at its drain deadline.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{Config, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw upstream: reads until the client's half-close, then answers with
/// how many bytes it got followed by `reply_len` bytes, and closes.
async fn counting_upstream(reply_len: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut got = Vec::new();
                stream.read_to_end(&mut got).await.unwrap();
                let mut reply = format!("{}\n", got.len()).into_bytes();
                reply.resize(reply.len() + reply_len, b'y');
                stream.write_all(&reply).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
    addr
}

fn config(blue: SocketAddr, green: SocketAddr, blue_weight: i64) -> String {
    Config::new()
        .admin()
        .tcp_listener("web")
        .service("hello", |s| {
            s.pool("blue", blue_weight, &[blue])
                .pool("green", 100 - blue_weight, &[green])
                .health_none()
                .drain_timeout("1s")
        })
        .toml()
}

fn sample(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no sample {prefix}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_half_close_is_passed_on_and_the_answer_still_flows_back_counted() {
    let upstream = counting_upstream(300_000).await;
    let proxy = Proxy::start(&config(upstream, upstream, 100)).await;
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let sent = vec![b'x'; 500_000];
    client.write_all(&sent).await.unwrap();
    client.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
        .await
        .expect("the answer within 10s")
        .unwrap();
    let head = answer.iter().position(|&b| b == b'\n').unwrap();
    assert_eq!(&answer[..head], b"500000", "the upstream saw every byte");
    assert_eq!(
        answer.len() - head - 1,
        300_000,
        "the whole answer came back"
    );

    let metrics = String::from_utf8(proxy.handle.metrics.render()).unwrap();
    let bytes_in = sample(
        &metrics,
        r#"cutover_tcp_bytes_total{direction="in",listener="web"} "#,
    );
    let bytes_out = sample(
        &metrics,
        r#"cutover_tcp_bytes_total{direction="out",listener="web"} "#,
    );
    assert_eq!(bytes_in, 500_000);
    assert_eq!(bytes_out, answer.len() as u64);
}

#[tokio::test]
async fn a_connection_on_a_drained_pool_closes_at_the_drain_deadline() {
    // An upstream that never answers: the connection stays open until cut.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let blue = listener.local_addr().unwrap();
    let green = counting_upstream(0).await;
    let held = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut stream = stream;
        let mut buf = [0u8; 64];
        while stream.read(&mut buf).await.unwrap_or(0) > 0 {}
    });
    let proxy = Proxy::start(&config(blue, green, 100)).await;
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    client.write_all(b"hello").await.unwrap();

    let generation = proxy.generation();
    proxy.rewrite(&config(blue, green, 0));
    proxy.wait_generation(generation + 1).await;
    let switched = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
        .await
        .expect("closed within 10s");
    assert!(matches!(read, Ok(0) | Err(_)), "closed, not answered");
    let after = switched.elapsed();
    assert!(
        after >= Duration::from_millis(800),
        "closed {after:?} after the switch, before the 1s drain deadline"
    );
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the upstream side closed too")
        .unwrap();
}

/// An upstream that records everything it got until the client's
/// half-close, then closes.
async fn recording_upstream() -> (SocketAddr, tokio::sync::oneshot::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.ok();
        tx.send(got).ok();
    });
    (addr, rx)
}

#[tokio::test]
async fn a_pool_with_send_proxy_gets_the_header_before_the_client_bytes() {
    let (upstream, got) = recording_upstream().await;
    let config = Config::new()
        .tcp_listener("web")
        .service("hello", |s| {
            s.pool_with("blue", 100, &[upstream], |p| p.send_proxy("v1"))
                .health_none()
        })
        .toml();
    let proxy = Proxy::start(&config).await;
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let local = client.local_addr().unwrap();
    client.write_all(b"hello").await.unwrap();
    client.shutdown().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), got)
        .await
        .expect("the upstream saw the end within 10s")
        .unwrap();
    let header = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
        local.port(),
        proxy.addr().port()
    );
    assert_eq!(String::from_utf8_lossy(&got), format!("{header}hello"));
}

/// A listener that trusts PROXY headers from 10.0.0.0/8 only, so a
/// loopback client's are refused.
fn screening_config(upstream: SocketAddr) -> String {
    Config::new()
        .tcp_listener("web")
        .accept_proxy(["10.0.0.0/8"])
        .service("hello", |s| s.pool("blue", 100, &[upstream]).health_none())
        .toml()
}

#[tokio::test]
async fn an_untrusted_proxy_header_sent_a_byte_at_a_time_is_refused() {
    let (upstream, got) = recording_upstream().await;
    let proxy = Proxy::start(&screening_config(upstream)).await;
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    client.set_nodelay(true).unwrap();
    for byte in b"PROXY TCP4 10.1.1.1 10.2.2.2 1 2\r\n" {
        if client.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the client was closed");
    let got = tokio::time::timeout(Duration::from_secs(10), got)
        .await
        .expect("the upstream connection ended within 10s")
        .unwrap();
    assert!(
        got.len() < 5,
        "the header did not reach the upstream: {:?}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn screened_bytes_that_are_no_header_go_upstream_whole() {
    let (upstream, got) = recording_upstream().await;
    let proxy = Proxy::start(&screening_config(upstream)).await;
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    client.set_nodelay(true).unwrap();
    // "PRO" could open a header: held until the next bytes say it does not.
    for part in [&b"PRO"[..], b"TOCOL 7", b" and the rest"] {
        client.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.shutdown().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), got)
        .await
        .expect("the upstream saw the end within 10s")
        .unwrap();
    assert_eq!(got, b"PROTOCOL 7 and the rest");
}
