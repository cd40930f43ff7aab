//! The HTTP/1 half of an attempt, and what follows it: send a client's
//! request upstream — head, then its body as the client sends it — while
//! reading the response head at the same time, so an upstream that answers
//! early (a slow upload refused) is heard; then relay the response body to
//! the client in its own framing, or join the two connections after a 101.
//!
//! A request body stays in the connection's buffer until its response head
//! arrives (up to `REPLAY_KEEP`), so a request sent on a kept connection the
//! upstream had closed can be sent again whole.
//!
//! To an `h2` pool the same request goes as a stream (`attempt_h2`): its
//! body is taken from the client the same way and fed to the stream (a
//! chunked one decoded), and the response is written to the client in
//! HTTP/1.1 framing, by its length or chunked.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use http::Response;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Client, Transport};
use crate::http::attempt::{Answer, Conn, Exchange, Failure};
use crate::http::buffers;
use crate::http::codec::chunked::{BadChunk, Chunks};
use crate::http::codec::{self, Asked, Framing, RequestBody};
use crate::http::head::{read_head, Closing};
use crate::http::replies::Reply;
use crate::upstream::{EndpointConns, H2Sender, RawConn, WriteHalf};

mod h2_pool;

/// Room for one read of a response head, and of a large body.
const HEAD_READ: usize = buffers::HEAD_READ;
const BODY_READ: usize = 64 * 1024;
/// Request body bytes kept for a resend; past this the body is streamed
/// and the request can no longer be sent again.
const REPLAY_KEEP: usize = 64 * 1024;

pub(crate) struct H1Exchange<'c, 'a, S> {
    client: &'c mut Client<'a, S>,
    request: &'c codec::Request,
    /// What the client sent after the head: the body first.
    buf: &'c mut Vec<u8>,
    /// The body still starts at `buf[0]`: nothing of it was dropped.
    untouched: bool,
    /// The whole body went upstream in the last attempt.
    body_sent: bool,
    sent_continue: bool,
    /// The head for upstream, with what of the body goes in the same write.
    up: Vec<u8>,
    /// The response head for the client.
    out: Vec<u8>,
    /// Upstream bytes read past the response head.
    rest: Vec<u8>,
}

/// Where a request body comes from: the client's buffer, then its stream.
struct Source<'u, S> {
    stream: &'u mut S,
    limits: super::Limits,
    buf: &'u mut Vec<u8>,
    untouched: &'u mut bool,
    sent_continue: &'u mut bool,
}

/// Where a request body goes: an HTTP/1.1 connection, as the client framed
/// it, or an HTTP/2 stream.
trait Sink: Send {
    fn put<'s>(&'s mut self, bytes: &'s [u8]) -> impl Future<Output = io::Result<()>> + Send + 's;
}

impl Sink for WriteHalf<'_> {
    fn put<'s>(&'s mut self, bytes: &'s [u8]) -> impl Future<Output = io::Result<()>> + Send + 's {
        self.send(bytes)
    }
}

/// Why sending the body stopped.
enum UploadError {
    Client(Option<Reply>),
    Upstream(io::Error),
}

impl<'c, 'a, S: Transport> H1Exchange<'c, 'a, S> {
    pub fn new(
        client: &'c mut Client<'a, S>,
        request: &'c codec::Request,
        buf: &'c mut Vec<u8>,
    ) -> Self {
        Self {
            client,
            request,
            buf,
            untouched: true,
            body_sent: false,
            sent_continue: false,
            up: Vec::new(),
            out: Vec::new(),
            rest: buffers::take(),
        }
    }

    /// Whether nothing of the request body was taken from the client's
    /// buffer, so the connection can still find the next request.
    pub fn replayable_body(&self) -> bool {
        self.untouched
    }

    /// Sends the head (`up`) and the body: from `buf[*sent..]`, then read
    /// from the client, each read within `body_read_timeout`. What of the
    /// body is in hand goes in the head's write.
    async fn upload(
        from: &mut Source<'_, S>,
        request: &codec::Request,
        up: &mut Vec<u8>,
        sent: &mut usize,
        upstream: &mut impl Sink,
    ) -> Result<(), UploadError> {
        let Source {
            stream,
            limits,
            buf,
            untouched,
            sent_continue,
        } = from;
        let limits = *limits;
        let mut chunks = Chunks::new();
        let mut left = match request.body {
            RequestBody::None => {
                return upstream.put(up).await.map_err(UploadError::Upstream);
            }
            RequestBody::Length(n) => n,
            RequestBody::Chunked => 0,
        };
        let mut head = Some(up);
        loop {
            let avail = &buf[*sent..];
            let (take, done) = match request.body {
                RequestBody::Chunked => match chunks.feed(avail) {
                    Ok(Some(end)) => (end, true),
                    Ok(None) => (avail.len(), false),
                    Err(BadChunk(why)) => {
                        return Err(UploadError::Client(Some(Reply::BadBody(why))))
                    }
                },
                _ => {
                    let take = left.min(avail.len() as u64);
                    left -= take;
                    (take as usize, left == 0)
                }
            };
            let body = &buf[*sent..*sent + take];
            if let Some(head) = head.take() {
                head.extend_from_slice(body);
                upstream.put(head).await.map_err(UploadError::Upstream)?;
                *sent += take;
            } else if take > 0 {
                upstream.put(body).await.map_err(UploadError::Upstream)?;
                *sent += take;
            }
            if done {
                return Ok(());
            }
            if *sent > REPLAY_KEEP {
                // Too much to keep for a resend: stream from here on.
                buf.drain(..*sent);
                *sent = 0;
                **untouched = false;
            }
            if request.expect_continue && !**sent_continue {
                **sent_continue = true;
                let reply = b"HTTP/1.1 100 Continue\r\n\r\n";
                match tokio::time::timeout(limits.send_timeout, stream.write_all(reply)).await {
                    Ok(Ok(())) => {}
                    _ => return Err(UploadError::Client(None)),
                }
            }
            buf.reserve(if left > HEAD_READ as u64 || left == 0 {
                BODY_READ
            } else {
                HEAD_READ
            });
            match tokio::time::timeout(limits.body_read_timeout, stream.read_buf(buf)).await {
                Ok(Ok(1..)) => {}
                Ok(Ok(0) | Err(_)) => return Err(UploadError::Client(None)),
                Err(_) => {
                    return Err(UploadError::Client(Some(Reply::BodyTimeout(
                        limits.body_read_timeout,
                    ))))
                }
            }
        }
    }

    /// Relays the response whose head `attempt` read: the head, then the
    /// body in its framing; after a 101, the tunnel. `true`: the client
    /// connection may serve another request.
    pub async fn relay(mut self, mut answer: Answer) -> bool {
        let cut = answer.cut.clone();
        let relayed = tokio::select! {
            biased;
            relayed = self.relay_body(&mut answer) => Some(relayed),
            () = cut.cancelled() => None,
        };
        let Some(relayed) = relayed else {
            answer.count_cut();
            tracing::info!(endpoint = %answer.conns.address(), "response closed at its pool's drain deadline");
            return false;
        };
        match relayed {
            Relayed::Clean { keep_alive } => {
                answer.reuse();
                keep_alive
            }
            Relayed::Dirty { keep_alive } => keep_alive,
            Relayed::Upgraded => self.tunnel(answer).await,
            Relayed::Broken => false,
        }
    }

    async fn relay_body(&mut self, answer: &mut Answer) -> Relayed {
        let head = &answer.head;
        if head.status == 101 {
            return Relayed::Upgraded;
        }
        let keep_alive = !head.close && self.body_sent;
        let idle = answer.service.request_timeout;
        let conn_stream = match &mut answer.conn {
            Conn::H1(conn) => &mut conn.stream,
            Conn::H2(response) => {
                return self
                    .relay_h2(response.body_mut(), head, idle, answer.conns.address())
                    .await
                    .unwrap_or(Relayed::Dirty { keep_alive });
            }
        };
        let mut body = std::mem::take(&mut self.rest);
        let mut chunks = Chunks::new();
        let mut plain = Vec::new();
        let mut left = match head.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut ended = matches!(head.framing, Framing::None);
        let mut clean = true;
        let mut first = true;
        loop {
            let take = match head.framing {
                _ if ended => 0,
                Framing::None => 0,
                Framing::Length(_) => {
                    let n = left.min(body.len() as u64);
                    left -= n;
                    ended = left == 0;
                    n as usize
                }
                Framing::Chunked => {
                    let fed = if head.dechunk {
                        plain.clear();
                        chunks.decode(&body, |r| plain.extend_from_slice(&body[r]))
                    } else {
                        chunks.feed(&body)
                    };
                    match fed {
                        Ok(Some(end)) => {
                            ended = true;
                            end
                        }
                        Ok(None) => body.len(),
                        Err(BadChunk(why)) => {
                            tracing::warn!(endpoint = %answer.conns.address(), why, "upstream sent a malformed chunked body");
                            return Relayed::Broken;
                        }
                    }
                }
                Framing::UntilClose => body.len(),
            };
            // Bytes past the end of the response leave the connection in
            // no state to reuse.
            clean &= take == body.len();
            let data = if head.dechunk {
                &plain[..]
            } else {
                &body[..take]
            };
            if first {
                // The head and what came with it of the body: one write.
                self.out.extend_from_slice(data);
                let out = std::mem::take(&mut self.out);
                if !self.client.write(&out).await {
                    return Relayed::Broken;
                }
                first = false;
            } else if !data.is_empty() && !self.client.write(data).await {
                return Relayed::Broken;
            }
            if ended {
                break;
            }
            body.clear();
            body.reserve(BODY_READ);
            match tokio::time::timeout(idle, conn_stream.read_buf(&mut body)).await {
                Ok(Ok(0)) if head.framing == Framing::UntilClose => {
                    clean = false;
                    break;
                }
                Ok(Ok(0) | Err(_)) => return Relayed::Broken,
                Err(_) => {
                    tracing::warn!(endpoint = %answer.conns.address(), timeout = ?idle, "upstream response body stalled");
                    return Relayed::Broken;
                }
                Ok(Ok(_)) => {}
            }
        }
        buffers::give(body);
        if clean && self.body_sent {
            Relayed::Clean { keep_alive }
        } else {
            Relayed::Dirty { keep_alive }
        }
    }

    /// Joins client and upstream after a 101: the upstream's first bytes and
    /// the client's early ones cross first, then bytes flow both ways until
    /// either side closes or the pool's drain deadline.
    async fn tunnel(mut self, mut answer: Answer) -> bool {
        // A 101 comes over HTTP/1.1 only: upgrades never go to h2 pools.
        let Conn::H1(conn) = &mut answer.conn else {
            return false;
        };
        let mut out = std::mem::take(&mut self.out);
        out.extend_from_slice(&self.rest);
        if !self.client.write(&out).await {
            return false;
        }
        if !self.buf.is_empty() {
            // Flushed: over TLS the end may otherwise wait in rustls.
            let sent = async {
                conn.stream.write_all(self.buf).await?;
                conn.stream.flush().await
            };
            if sent.await.is_err() {
                return false;
            }
            self.buf.clear();
        }
        let cut = answer.cut.clone();
        let joined = tokio::select! {
            result = tokio::io::copy_bidirectional(&mut *self.client.stream, &mut conn.stream) => Some(result),
            () = cut.cancelled() => None,
        };
        match joined {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(endpoint = %answer.conns.address(), error = %e, "tunnel ended with an error")
            }
            None => {
                answer.count_cut();
                tracing::info!(endpoint = %answer.conns.address(), "tunnel closed at its pool's drain deadline");
            }
        }
        false
    }
}

/// Watches the client while the response head is awaited: a client that
/// closes (or fails) ends the attempt, and the connection is let go. What a
/// pipelining client sends meanwhile is kept in the buffer, up to a bound.
async fn watch<S: Transport>(from: &mut Source<'_, S>) -> UploadError {
    loop {
        if from.buf.len() >= REPLAY_KEEP {
            std::future::pending::<()>().await;
        }
        // Readiness first: on TCP the reactor knows it, so a client that
        // stays quiet costs no system call.
        if std::future::poll_fn(|cx| from.stream.poll_readable(cx))
            .await
            .is_err()
        {
            return UploadError::Client(None);
        }
        from.buf.reserve(HEAD_READ);
        let read = std::future::poll_fn(|cx| {
            match tokio_util::io::poll_read_buf(Pin::new(&mut *from.stream), cx, from.buf) {
                Poll::Pending if S::READINESS => Poll::Ready(Err(io::ErrorKind::WouldBlock.into())),
                ready => ready,
            }
        })
        .await;
        match read {
            Ok(0) => return UploadError::Client(None),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return UploadError::Client(None),
        }
    }
}

impl<S> Drop for H1Exchange<'_, '_, S> {
    fn drop(&mut self) {
        // The response buffer came from the thread's free list.
        buffers::give(std::mem::take(&mut self.rest));
    }
}

enum Relayed {
    /// The response ended where its framing said: the upstream connection
    /// may be reused.
    Clean {
        keep_alive: bool,
    },
    /// Relayed whole, but the upstream connection cannot be reused.
    Dirty {
        keep_alive: bool,
    },
    Upgraded,
    /// Either side broke off.
    Broken,
}

impl<S: Transport> Exchange for H1Exchange<'_, '_, S> {
    async fn attempt<'x>(
        &'x mut self,
        conn: &'x mut RawConn,
        host: Option<&'x [u8]>,
    ) -> Result<codec::Response, Failure> {
        let reused = conn.reused;
        self.request.write_upstream(host, &mut self.up);
        let (mut upstream_read, mut upstream_write) = conn.stream.split();
        let asked = Asked {
            head_method: self.request.head_method,
            upgrade: self.request.wants_upgrade(),
            client: self.request.version,
            close: !self.request.keep_alive || self.client.conn.stopping(),
        };
        let uploading = AtomicBool::new(self.request.body != RequestBody::None);
        let mut sent = 0;
        let limits = self.client.conn.limits;
        let result = {
            let mut source = Source {
                stream: &mut *self.client.stream,
                limits,
                buf: self.buf,
                untouched: &mut self.untouched,
                sent_continue: &mut self.sent_continue,
            };
            let request = self.request;
            let up = &mut self.up;
            let uploading = &uploading;
            let sent = &mut sent;
            // The client side of the wait: its body goes up, then the
            // client is watched, so one that hangs up is let go at once.
            let upload = async move {
                if let Err(stopped) =
                    Self::upload(&mut source, request, up, sent, &mut upstream_write).await
                {
                    return stopped;
                }
                uploading.store(false, Ordering::Relaxed);
                watch(&mut source).await
            };
            let closing = Closing {
                uploading,
                stop: Some(&self.client.conn.listening.stop),
            };
            let read = read_head(
                &mut upstream_read,
                asked,
                closing,
                &mut self.rest,
                &mut self.out,
                None,
                reused,
            );
            tokio::pin!(upload);
            tokio::pin!(read);
            let mut upload_failed = None;
            loop {
                tokio::select! {
                    biased;
                    head = &mut read => break head.map_err(|e| match (e, upload_failed.take()) {
                        // The upstream went away while the body was going up.
                        (Failure::Broken { stale, .. }, Some(error)) => Failure::Broken { error, stale },
                        (e, _) => e,
                    }),
                    stopped = &mut upload, if upload_failed.is_none() => match stopped {
                        UploadError::Client(reply) => break Err(Failure::Client(reply)),
                        // The upstream may have answered already and
                        // closed (HAProxy relays that answer): read on.
                        UploadError::Upstream(error) => upload_failed = Some(error),
                    },
                }
            }
        };
        self.body_sent = !uploading.load(Ordering::Relaxed);
        // After an upstream failure a body still whole in `buf` stays there:
        // for a resend, or to be read past if the client is answered.
        let keep = self.untouched && !matches!(result, Ok(_) | Err(Failure::Client(_)));
        if !keep {
            self.buf.drain(..sent);
            if sent > 0 {
                self.untouched = false;
            }
        }
        result
    }

    async fn attempt_h2<'x>(
        &'x mut self,
        sender: &'x mut H2Sender,
        conns: &'x EndpointConns,
        host: Option<&'x [u8]>,
    ) -> Result<(codec::Response, Response<Incoming>), Failure> {
        self.send_h2(sender, conns, host).await
    }

    fn replayable(&self) -> bool {
        self.untouched
    }

    fn idempotent(&self) -> bool {
        self.request.idempotent
    }
}
