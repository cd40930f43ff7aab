//! The one table of proxy-made replies: every response cutover writes itself
//! (404 no service, 502/503/504 upstream trouble, 400/405/408/417/431/501/505
//! for bad or slow requests) with its status and short text body, written as
//! HTTP/1.1 bytes or as an HTTP/2 response. A reply to `HEAD` has no body.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

use super::codec::Refused;

/// A response the proxy makes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// No service for this Host on this listener.
    NoService,
    /// No healthy endpoint.
    Unavailable,
    /// The upstream failed after retries, with what went wrong.
    BadGateway(Gateway),
    /// The upstream did not answer within `request_timeout`.
    GatewayTimeout,
    /// The head could not be served as it is.
    Refused(Refused),
    /// The head was larger than `max_header_bytes`.
    HeadTooLarge(usize),
    /// The head did not arrive within `header_read_timeout`.
    HeadTimeout(Duration),
    /// The body stalled longer than `body_read_timeout`.
    BodyTimeout(Duration),
    /// The body's chunked framing was broken.
    BadBody(&'static str),
    /// `redirect_https`, but the request names no host.
    NoHostToRedirect,
}

/// What went wrong with an upstream, as a 502 says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gateway {
    Unreachable,
    Failed,
    Invalid,
    /// Closed by the proxy at its pool's drain deadline.
    Drained,
}

impl Reply {
    pub fn status(self) -> StatusCode {
        match self {
            Reply::NoService => StatusCode::NOT_FOUND,
            Reply::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Reply::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Reply::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reply::Refused(r) => r.status,
            Reply::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reply::HeadTimeout(_) | Reply::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Reply::BadBody(_) | Reply::NoHostToRedirect => StatusCode::BAD_REQUEST,
        }
    }

    /// Whether the reply is about the client's request (counted as a
    /// rejection on its listener) rather than about routing or upstreams.
    pub fn is_rejection(self) -> bool {
        matches!(
            self,
            Reply::Refused(_)
                | Reply::HeadTooLarge(_)
                | Reply::HeadTimeout(_)
                | Reply::BodyTimeout(_)
                | Reply::BadBody(_)
                | Reply::NoHostToRedirect
        )
    }

    /// The short text body: the status line's words, then what happened.
    pub fn text(self) -> Cow<'static, str> {
        let fixed = |s: &'static str| Cow::Borrowed(s);
        match self {
            Reply::NoService => fixed("404 Not Found: no service for this host\n"),
            Reply::Unavailable => {
                fixed("503 Service Unavailable: no healthy upstream endpoint\n")
            }
            Reply::BadGateway(Gateway::Unreachable) => {
                fixed("502 Bad Gateway: the upstream could not be reached\n")
            }
            Reply::BadGateway(Gateway::Failed) => {
                fixed("502 Bad Gateway: the upstream connection failed\n")
            }
            Reply::BadGateway(Gateway::Invalid) => fixed(
                "502 Bad Gateway: the upstream sent a response that is not valid HTTP/1.1\n",
            ),
            Reply::BadGateway(Gateway::Drained) => fixed(
                "502 Bad Gateway: the upstream connection was closed at its pool's drain deadline\n",
            ),
            Reply::GatewayTimeout => {
                fixed("504 Gateway Timeout: the upstream did not answer in time\n")
            }
            Reply::Refused(r) => Cow::Owned(format!("{}: {}\n", status_line(r.status), r.reason)),
            Reply::HeadTooLarge(limit) => Cow::Owned(format!(
                "431 Request Header Fields Too Large: the request head is larger than {limit} bytes\n"
            )),
            Reply::HeadTimeout(limit) => Cow::Owned(format!(
                "408 Request Timeout: the request head did not arrive within {limit:?}\n"
            )),
            Reply::BodyTimeout(limit) => Cow::Owned(format!(
                "408 Request Timeout: the request body stalled for longer than {limit:?}\n"
            )),
            Reply::BadBody(why) => Cow::Owned(format!(
                "400 Bad Request: the request body is not valid chunked encoding: {why}\n"
            )),
            Reply::NoHostToRedirect => fixed(
                "400 Bad Request: this listener redirects to https, but the request names no host\n",
            ),
        }
    }

    /// The reply as HTTP/1.1 bytes; `connection: close` when `close`, and
    /// `connection: keep-alive` to an HTTP/1.0 client (`http10`) otherwise.
    pub fn h1(self, head_method: bool, close: bool, http10: bool) -> Vec<u8> {
        let status = status_line(self.status());
        write_h1(&status, None, &self.text(), head_method, close, http10)
    }

    /// The reply as an HTTP/2 response.
    pub fn h2(self) -> http::Response<Bytes> {
        write_h2(self.status(), None, self.text().into_owned())
    }
}

/// `redirect_https`: the https URL of a request for `host` (its port
/// dropped: https is on its default port) and `target`; `None` without a
/// host, or with one that is not a plain `host[:port]` (no user part: the
/// redirect must not point at another site).
pub(crate) fn https_location(host: Option<&str>, target: &[u8]) -> Option<String> {
    let host = host.filter(|h| !h.is_empty() && !h.contains('@'))?;
    let authority: http::uri::Authority = host.parse().ok()?;
    let target = std::str::from_utf8(target).ok()?;
    let target = if target.starts_with('/') { target } else { "/" };
    let location = format!("https://{}{target}", authority.host());
    // Whatever the client sent must still make a valid header value.
    http::HeaderValue::from_str(&location).ok()?;
    Some(location)
}

/// The 308 `redirect_https` answers, as HTTP/1.1 bytes; see `Reply::h1`.
pub(crate) fn redirect_h1(location: &str, head_method: bool, close: bool, http10: bool) -> Vec<u8> {
    let text = format!("308 Permanent Redirect: {location}\n");
    write_h1(
        "308 Permanent Redirect",
        Some(location),
        &text,
        head_method,
        close,
        http10,
    )
}

/// A proxy-made response as HTTP/1.1 bytes: `status` line, an optional
/// `location`, and `text` as its body (none to `HEAD`).
fn write_h1(
    status: &str,
    location: Option<&str>,
    text: &str,
    head_method: bool,
    close: bool,
    http10: bool,
) -> Vec<u8> {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\ndate: {date}\r\n",
        text.len()
    );
    if let Some(location) = location {
        reply.push_str("location: ");
        reply.push_str(location);
        reply.push_str("\r\n");
    }
    if close {
        reply.push_str("connection: close\r\n");
    } else if http10 {
        reply.push_str("connection: keep-alive\r\n");
    }
    reply.push_str("\r\n");
    if !head_method {
        reply.push_str(text);
    }
    reply.into_bytes()
}

/// The same 308 as an HTTP/2 response.
pub(crate) fn redirect_h2(location: &str) -> http::Response<Bytes> {
    let text = format!("308 Permanent Redirect: {location}\n");
    write_h2(StatusCode::PERMANENT_REDIRECT, Some(location), text)
}

fn write_h2(status: StatusCode, location: Option<&str>, text: String) -> http::Response<Bytes> {
    let mut response = http::Response::new(Bytes::from(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Some(value) = location.and_then(|l| http::HeaderValue::from_str(l).ok()) {
        headers.insert(http::header::LOCATION, value);
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_location_drops_the_port_and_keeps_the_target() {
        let at = |host, target: &str| https_location(host, target.as_bytes());
        assert_eq!(
            at(Some("shop.example.com:8080"), "/a?b=1").as_deref(),
            Some("https://shop.example.com/a?b=1")
        );
        assert_eq!(
            at(Some("shop.example.com"), "/").as_deref(),
            Some("https://shop.example.com/")
        );
        assert_eq!(
            at(Some("[fd00::1]:8080"), "/x").as_deref(),
            Some("https://[fd00::1]/x")
        );
        assert_eq!(
            at(Some("[fd00::1]"), "/x").as_deref(),
            Some("https://[fd00::1]/x")
        );
        // Absolute or asterisk forms are sent to the root.
        assert_eq!(at(Some("a.test"), "*").as_deref(), Some("https://a.test/"));
        assert_eq!(at(None, "/x"), None);
        assert_eq!(at(Some(""), "/x"), None);
        assert_eq!(at(Some("[fd00::1"), "/x"), None);
        assert_eq!(at(Some("a.test@evil.test"), "/x"), None);
        assert_eq!(at(Some("a.test/evil"), "/x"), None);
    }

    #[test]
    fn the_redirect_says_where_and_has_no_body_for_head() {
        let get = String::from_utf8(redirect_h1("https://a.test/", false, false, false)).unwrap();
        assert!(
            get.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"),
            "{get}"
        );
        assert!(get.contains("\r\nlocation: https://a.test/\r\n"), "{get}");
        assert!(
            get.ends_with("\r\n\r\n308 Permanent Redirect: https://a.test/\n"),
            "{get}"
        );
        let head = String::from_utf8(redirect_h1("https://a.test/", true, true, false)).unwrap();
        assert!(head.ends_with("connection: close\r\n\r\n"), "{head}");
        let h2 = redirect_h2("https://a.test/");
        assert_eq!(h2.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(h2.headers()["location"], "https://a.test/");
    }
}
