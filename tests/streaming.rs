//! Bodies stream through the proxy in both directions with bounded memory: a
//! 1 GiB upload and a 1 GiB download pass while the process's peak resident
//! memory stays far below the body size. Alone in its binary so the peak
//! measured is this test's.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::{blue_green, Backend, BoxBody, Client, Proxy};

const CHUNK: usize = 64 * 1024;
const TOTAL: u64 = 1 << 30;
/// Growth of the peak resident set allowed while moving 2 GiB.
const MEMORY_BOUND: u64 = 128 << 20;

fn generated_body() -> BoxBody {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let chunks = (TOTAL / CHUNK as u64) as usize;
    let frames =
        stream::iter((0..chunks).map(move |_| Ok::<_, hyper::Error>(Frame::data(chunk.clone()))));
    StreamBody::new(frames).boxed()
}

/// Peak resident set size of this process, from /proc.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

async fn drain(body: hyper::body::Incoming) -> u64 {
    let mut body = body;
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            total += data.len() as u64;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_streams_both_ways_with_bounded_memory() {
    let backend = Backend::with_handler(
        "blue",
        Arc::new(|req: Request<hyper::body::Incoming>| {
            Box::pin(async move {
                if req.uri().path() == "/upload" {
                    let received = drain(req.into_body()).await;
                    Response::new(support::full(received.to_string()))
                } else {
                    Response::new(generated_body())
                }
            })
        }),
    )
    .await;
    let proxy = Proxy::start(&blue_green(&backend, &backend, 100, 0).toml()).await;
    let before = peak_rss();

    let mut client = Client::connect(proxy.addr()).await;
    let upload = Request::post("/upload")
        .header("host", "x")
        .body(generated_body())
        .unwrap();
    let reply = client.send(upload).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.text(),
        TOTAL.to_string(),
        "upstream received all of it"
    );

    // The download is drained frame by frame, never collected.
    let stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, BoxBody>(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            Request::get("/download")
                .header("host", "x")
                .body(support::full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(drain(response.into_body()).await, TOTAL);

    let growth = peak_rss().saturating_sub(before);
    eprintln!(
        "peak RSS grew by {} KiB while streaming 2 GiB",
        growth / 1024
    );
    assert!(
        growth < MEMORY_BOUND,
        "peak RSS grew by {} MiB",
        growth >> 20
    );
}
