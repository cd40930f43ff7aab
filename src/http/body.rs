//! The response body the proxy hands to hyper: either an upstream's streamed
//! body or a short proxy-made text. It carries the request's completion guard,
//! so dropping the body (once written out or abandoned) is how a request says
//! it is done.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::guard::ConnActivity;
use crate::drain::Work;
use crate::upstream::PooledBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pub struct ProxyBody {
    kind: Kind,
    _finish: Finish,
    /// The request's work on its pool, done when the body is.
    _work: Option<Work>,
}

enum Kind {
    Upstream(PooledBody),
    Local(Option<Bytes>),
}

/// Marks the request finished on its connection when dropped.
pub struct Finish(Arc<ConnActivity>);

impl Finish {
    pub fn new(activity: Arc<ConnActivity>) -> Self {
        Self(activity)
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

impl ProxyBody {
    pub fn upstream(body: PooledBody, finish: Finish, work: Work) -> Self {
        Self {
            kind: Kind::Upstream(body),
            _finish: finish,
            _work: Some(work),
        }
    }

    pub fn local(text: impl Into<Bytes>, finish: Finish) -> Self {
        Self {
            kind: Kind::Local(Some(text.into())),
            _finish: finish,
            _work: None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
            Kind::Local(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Local(text) => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(body) => body.size_hint(),
            Kind::Local(text) => SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64)),
        }
    }
}
