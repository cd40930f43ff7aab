//! The HTTP/1 half of an attempt to an `h2` pool: the request goes as a
//! stream of the endpoint's shared connection, its body taken from the
//! client as for HTTP/1.1 (`upload`, then `watch`) and fed to the stream,
//! a chunked one decoded; the response goes to the client in HTTP/1.1
//! framing, by its length or chunked.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::{watch, H1Exchange, Relayed, Sink, Source, UploadError};
use crate::http::attempt::Failure;
use crate::http::codec::chunked::{self, BadChunk, Chunks};
use crate::http::codec::{self, Asked, Framing, RequestBody};
use crate::http::h1::Transport;
use crate::http::upstream_h2::{self, Piece};
use crate::upstream::{EndpointConns, H2Sender};

/// A request body on its way to an HTTP/2 stream: HTTP/2 frames it, so a
/// chunked one is decoded.
struct ToStream {
    tx: mpsc::Sender<Piece>,
    chunks: Option<Chunks>,
}

impl Sink for ToStream {
    async fn put<'s>(&'s mut self, bytes: &'s [u8]) -> io::Result<()> {
        let data = match &mut self.chunks {
            None => Bytes::copy_from_slice(bytes),
            Some(chunks) => {
                let mut plain = Vec::new();
                chunks
                    .decode(bytes, |r| plain.extend_from_slice(&bytes[r]))
                    .map_err(|BadChunk(why)| io::Error::other(why))?;
                Bytes::from(plain)
            }
        };
        if data.is_empty() {
            return Ok(());
        }
        self.tx
            .send(Piece::Data(data))
            .await
            .map_err(|_| io::ErrorKind::BrokenPipe.into())
    }
}

impl<S: Transport> H1Exchange<'_, '_, S> {
    /// `Exchange::attempt_h2`: the request as a stream of an `h2` pool's
    /// connection.
    pub(super) async fn send_h2<'x>(
        &'x mut self,
        sender: &'x mut H2Sender,
        conns: &'x EndpointConns,
        host: Option<&'x [u8]>,
    ) -> Result<(codec::Response, Response<Incoming>), Failure> {
        if self.request.wants_upgrade() {
            return Err(upstream_h2::UPGRADE_REFUSED);
        }
        self.request.write_upstream(host, &mut self.up);
        let size = match self.request.body {
            RequestBody::None => Some(0),
            RequestBody::Length(n) => Some(n),
            RequestBody::Chunked => None,
        };
        let (tx, body) = upstream_h2::channel(size);
        let request = upstream_h2::request(&self.up, conns.address(), conns.is_tls(), body)?;
        let mut sink = ToStream {
            tx,
            chunks: (self.request.body == RequestBody::Chunked).then(Chunks::new),
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
            let parsed = self.request;
            let uploading = &uploading;
            let sent = &mut sent;
            // As for HTTP/1.1: the body goes up, then the client is watched.
            let upload = async move {
                let mut head = Vec::new();
                if let Err(stopped) =
                    Self::upload(&mut source, parsed, &mut head, sent, &mut sink).await
                {
                    return stopped;
                }
                // A stream already gone is told by its response.
                _ = sink.tx.send(Piece::End).await;
                uploading.store(false, Ordering::Relaxed);
                watch(&mut source).await
            };
            let respond = upstream_h2::send(sender, request);
            tokio::pin!(upload);
            tokio::pin!(respond);
            let mut upload_failed = false;
            loop {
                tokio::select! {
                    biased;
                    response = &mut respond => break response,
                    stopped = &mut upload, if !upload_failed => match stopped {
                        UploadError::Client(reply) => break Err(Failure::Client(reply)),
                        // The stream ended: its response says why.
                        UploadError::Upstream(_) => upload_failed = true,
                    },
                }
            }
        };
        let still_uploading = uploading.load(Ordering::Relaxed);
        self.body_sent = !still_uploading;
        let keep = self.untouched && !matches!(result, Ok(_) | Err(Failure::Client(_)));
        if !keep {
            self.buf.drain(..sent);
            if sent > 0 {
                self.untouched = false;
            }
        }
        let response = result?;
        let asked = Asked {
            head_method: self.request.head_method,
            upgrade: false,
            client: self.request.version,
            close: !self.request.keep_alive
                || self.client.conn.stopping()
                || still_uploading
                || self.client.conn.listening.stop.is_cancelled(),
        };
        let head = upstream_h2::head_for_h1(&response, asked, &mut self.out);
        Ok((head, response))
    }

    /// Relays the body of an HTTP/2 upstream's response in the framing its
    /// head (`head_for_h1`) said; `Some(Broken)` when either side broke off.
    pub(super) async fn relay_h2(
        &mut self,
        body: &mut Incoming,
        head: &codec::Response,
        idle: Duration,
        address: &str,
    ) -> Option<Relayed> {
        let out = std::mem::take(&mut self.out);
        if !self.client.write(&out).await {
            return Some(Relayed::Broken);
        }
        if head.framing == Framing::None {
            return None;
        }
        let chunked = head.framing == Framing::Chunked;
        let mut framed = Vec::new();
        loop {
            let frame = match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    tracing::debug!(endpoint = %address, error = %e, "upstream HTTP/2 response body failed");
                    return Some(Relayed::Broken);
                }
                Err(_) => {
                    tracing::warn!(endpoint = %address, timeout = ?idle, "upstream response body stalled");
                    return Some(Relayed::Broken);
                }
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers are not forwarded
            };
            let written = if chunked {
                framed.clear();
                chunked::size_line(data.len(), &mut framed);
                framed.extend_from_slice(&data);
                framed.extend_from_slice(b"\r\n");
                data.is_empty() || self.client.write(&framed).await
            } else {
                self.client.write(&data).await
            };
            if !written {
                return Some(Relayed::Broken);
            }
        }
        if chunked && !self.client.write(chunked::LAST_CHUNK).await {
            return Some(Relayed::Broken);
        }
        None
    }
}
