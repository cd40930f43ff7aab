//! How `ctl` calls the admin API: one request at a time, each bounded by a
//! timeout, with the bearer token and, on changes, the `If-Match` of
//! `--if-generation`. Owns the request and the reading of its answer into
//! JSON or a `Refused`; what to ask and how to show the answer is the
//! commands' business, not this file's.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

/// Bytes escaped in one path segment: everything but RFC 3986's unreserved
/// characters, so a `/` inside a name stays inside its segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `name` as one percent-encoded path segment: `team/app` is `team%2Fapp`.
pub fn segment(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, SEGMENT).to_string()
}

/// The admin API answered, and refused: its status and its `error` and
/// `detail`, printed as the one line the user sees.
#[derive(Debug, thiserror::Error)]
#[error("{status} {error}{}", if detail.is_empty() { String::new() } else { format!(": {detail}") })]
pub struct Refused {
    pub status: u16,
    pub error: String,
    pub detail: String,
}

impl Refused {
    /// Whether asking again later may succeed: the server's own trouble
    /// (5xx), not a refusal of the request.
    pub fn is_transient(&self) -> bool {
        self.status >= 500
    }
}

/// A client of one admin API.
pub struct Api {
    /// Base URL without a trailing slash, as the user gave it.
    pub base: String,
    token: Option<String>,
    /// The generation a change requires (`If-Match`), when one was given.
    if_generation: Option<u64>,
    /// Longest wait for one whole answer, connecting included.
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    pub fn new(
        base: &str,
        token: Option<String>,
        if_generation: Option<u64>,
        timeout: Duration,
    ) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            if_generation,
            timeout,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A read: `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.request(Method::GET, path, None, false).await
    }

    /// A change the server checks against `If-Match`: sent with it when
    /// `--if-generation` was given.
    pub async fn change(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.request(method, path, body, true).await
    }

    /// One call; `conditional` sends `If-Match` when a generation is set.
    /// The error is a `Refused` when the API answered with a failure.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        conditional: bool,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let (true, Some(generation)) = (conditional, self.if_generation) {
            req = req.header(header::IF_MATCH, format!("\"{generation}\""));
        }
        let body = match body {
            Some(value) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&value)?)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .with_context(|| format!("{url:?} is not a valid admin URL"))?;
        match tokio::time::timeout(self.timeout, self.exchange(req)).await {
            Ok(answer) => answer,
            Err(_) => bail!(
                "the admin API at {} did not answer within {}",
                self.base,
                humantime::format_duration(self.timeout)
            ),
        }
    }

    async fn exchange(&self, req: Request<Full<Bytes>>) -> anyhow::Result<Value> {
        let resp = self
            .client
            .request(req)
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("the admin API at {} broke off its answer", self.base))?
            .to_bytes();
        let value = serde_json::from_slice::<Value>(&bytes);
        if !status.is_success() {
            return Err(refusal(status, value.unwrap_or(Value::Null)).into());
        }
        value.with_context(|| {
            format!(
                "the admin API at {} answered {} with a body that is not JSON",
                self.base,
                status.as_u16()
            )
        })
    }
}

/// A failed answer as a `Refused`; the status's own reason stands in for a
/// body that says nothing.
fn refusal(status: StatusCode, body: Value) -> Refused {
    Refused {
        status: status.as_u16(),
        error: body["error"]
            .as_str()
            .or(status.canonical_reason())
            .unwrap_or("error")
            .to_owned(),
        detail: body["detail"].as_str().unwrap_or("").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_stays_one_segment() {
        assert_eq!(segment("team/app"), "team%2Fapp");
        assert_eq!(segment("hello-tls_2.x~"), "hello-tls_2.x~");
        assert_eq!(segment("[::1]:80"), "%5B%3A%3A1%5D%3A80");
        assert_eq!(segment("a b?c#d%"), "a%20b%3Fc%23d%25");
    }

    #[test]
    fn a_refusal_is_one_line() {
        let body = serde_json::json!({"error": "precondition failed", "detail": "If-Match \"41\" does not match the generation in force, 42; read the status again"});
        assert_eq!(
            refusal(StatusCode::PRECONDITION_FAILED, body).to_string(),
            "412 precondition failed: If-Match \"41\" does not match the generation in force, 42; read the status again"
        );
        let bare = refusal(StatusCode::BAD_GATEWAY, Value::Null);
        assert_eq!(bare.to_string(), "502 Bad Gateway");
        assert!(bare.is_transient());
        assert!(!refusal(StatusCode::CONFLICT, Value::Null).is_transient());
    }
}
