//! The admin API: JSON over HTTP on its own listener, served by the control
//! plane's runtime so a saturated data plane cannot starve it. It reads the
//! server's status and snapshot and asks the server for changes through its
//! `Handle`; it never changes routing state itself. This file answers calls;
//! which call a request is, and whether it needs the token, is `routes`'
//! (one table, `ROUTES`, which the OpenAPI document is checked against);
//! connections, their limits and timeouts are `conn`'s.

mod auth;
mod conn;
mod rates;
mod routes;
mod view;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::json;

use crate::audit::Source;
use crate::config::MAX_WEIGHT;
use crate::server::{Asked, ChangeError, Handle, IfMatch, Trigger};
use crate::state::Weights;
pub(crate) use auth::Token;
pub use auth::TokenError;
pub(crate) use conn::serve;
pub use conn::{HEADER_READ_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS};
pub(crate) use rates::Rates;
use routes::{resolve, Access, Call, Resolved};
pub use routes::{Route, ROUTES};

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// Longest a request body may take to arrive once its head has.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What every admin request shares.
pub(crate) struct Admin {
    pub(crate) handle: Handle,
    pub(crate) token: Option<Token>,
    pub(crate) rates: Rates,
}

/// Events `GET /v1/events` returns unless `limit` says otherwise.
const EVENTS_DEFAULT: usize = 100;

async fn handle(req: Request<Incoming>, admin: &Admin, peer: SocketAddr) -> Response<Full<Bytes>> {
    let (access, resolved) = resolve(req.method(), req.uri().path());
    if access == Access::Token {
        if let Some(token) = &admin.token {
            if let Err(why) = token.check(req.headers().get(header::AUTHORIZATION)) {
                return error(StatusCode::UNAUTHORIZED, "unauthorized", why.to_owned());
            }
        }
    }
    let call = match resolved {
        Resolved::Call(call) => call,
        Resolved::WrongMethod(allowed) => {
            let allowed: Vec<&str> = allowed.iter().map(Method::as_str).collect();
            let allowed = allowed.join(", ");
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                format!(
                    "{} does not take {}; it takes {allowed}",
                    req.uri().path(),
                    req.method()
                ),
            );
            if let Ok(value) = HeaderValue::from_str(&allowed) {
                response.headers_mut().insert(header::ALLOW, value);
            }
            return response;
        }
        Resolved::NotFound => {
            return error(
                StatusCode::NOT_FOUND,
                "not found",
                format!("no route {}", req.uri().path()),
            )
        }
    };
    match call {
        Call::Healthz => text(StatusCode::OK, "ok\n"),
        Call::Readyz => {
            if admin.handle.is_shutting_down() {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        Call::Metrics => Response::builder()
            .header(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body(Full::new(Bytes::from(admin.handle.metrics.render())))
            .expect("static headers are valid"),
        Call::Status => {
            let (generation, body) = view::status(admin);
            with_etag(json_response(StatusCode::OK, &body), generation)
        }
        Call::Events => events(&req, admin),
        Call::Weights { service } => set_weights(req, &service, admin, peer).await,
        Call::State {
            service,
            pool,
            endpoint,
        } => set_state(req, &service, &pool, endpoint.as_deref(), admin, peer).await,
        Call::StartShift { service } => start_shift(req, &service, admin, peer).await,
        Call::AbortShift { service } => {
            let asked = match asked(&req, peer) {
                Ok(asked) => asked,
                Err(why) => return bad_if_match(why),
            };
            let result = admin.handle.abort_shift(&service, asked).await;
            changed(admin, &service, result)
        }
        Call::Reload => match admin.handle.reload(Trigger::Api(peer)).await {
            Ok(generation) => json_response(StatusCode::OK, &json!({ "generation": generation })),
            Err(e) => change_error(e),
        },
    }
}

/// Who asks, and on what `If-Match` condition; why not, for an `If-Match`
/// with no entity tag in it (see `bad_if_match`).
fn asked(req: &Request<Incoming>, peer: SocketAddr) -> Result<Asked, String> {
    let mut if_match = None;
    for value in req.headers().get_all(header::IF_MATCH) {
        let text = String::from_utf8_lossy(value.as_bytes());
        let parsed = IfMatch::parse(&text);
        if parsed == IfMatch::Generations(Vec::new()) {
            return Err(format!(
                "If-Match {text:?} holds no entity tag; send the ETag of a status read, like \"42\" with its quotes, or *"
            ));
        }
        if_match = Some(match (if_match, parsed) {
            (None, parsed) => parsed,
            (Some(IfMatch::Any), _) | (_, IfMatch::Any) => IfMatch::Any,
            (Some(IfMatch::Generations(mut a)), IfMatch::Generations(b)) => {
                a.extend(b);
                IfMatch::Generations(a)
            }
        });
    }
    Ok(Asked {
        source: Source::Api(peer),
        if_match,
    })
}

fn bad_if_match(why: String) -> Response<Full<Bytes>> {
    error(StatusCode::BAD_REQUEST, "bad If-Match", why)
}

/// `ETag: "<generation>"`.
fn with_etag(mut response: Response<Full<Bytes>>, generation: u64) -> Response<Full<Bytes>> {
    if let Ok(value) = HeaderValue::from_str(&format!("\"{generation}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// The answer to a change of `svc`: the generation in force and the
/// service's status, with the generation as `ETag`.
fn changed(admin: &Admin, svc: &str, result: Result<u64, ChangeError>) -> Response<Full<Bytes>> {
    match result {
        Ok(generation) => {
            let status = admin.handle.status();
            let service = status
                .services
                .iter()
                .find(|s| s.name == svc)
                .map(|view| view::service(admin, view, &status));
            with_etag(
                json_response(
                    StatusCode::OK,
                    &json!({ "generation": generation, "service": service }),
                ),
                generation,
            )
        }
        Err(e) => change_error(e),
    }
}

/// `GET /v1/events?limit=N&since=SEQ`.
fn events(req: &Request<Incoming>, admin: &Admin) -> Response<Full<Bytes>> {
    let mut limit = EVENTS_DEFAULT;
    let mut since = None;
    for (key, value) in form_pairs(req.uri().query().unwrap_or("")) {
        let number = value.parse::<u64>();
        match (key.as_str(), number) {
            ("limit", Ok(n)) if n >= 1 => limit = (n as usize).min(crate::audit::RECENT),
            ("since", Ok(n)) => since = Some(n),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad query",
                    format!(
                    "{key}={value:?}: the query takes limit (1 to {}) and since (an event's seq)",
                    crate::audit::RECENT
                ),
                )
            }
        }
    }
    let recent = admin.handle.audit().recent(limit, since);
    let events: Vec<&crate::audit::Event> = recent.iter().map(|e| &**e).collect();
    json_response(StatusCode::OK, &json!({ "events": events }))
}

/// `key=value` pairs of a query, percent-decoded.
fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(key), decode(value))
        })
        .collect()
}

/// A change to service `svc`: who asks and on what condition, and its
/// body; 404 for a service that does not exist, before the body is read.
async fn change_request(
    req: Request<Incoming>,
    svc: &str,
    admin: &Admin,
    peer: SocketAddr,
) -> Result<(Asked, Bytes), Response<Full<Bytes>>> {
    if admin.handle.status().services.iter().all(|s| s.name != svc) {
        return Err(change_error(ChangeError::UnknownService(svc.to_owned())));
    }
    let asked = asked(&req, peer).map_err(bad_if_match)?;
    Ok((asked, read_body(req).await?))
}

async fn start_shift(
    req: Request<Incoming>,
    svc: &str,
    admin: &Admin,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let (asked, body) = match change_request(req, svc, admin, peer).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let request: crate::shift::Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad shift",
                format!(
                    r#"the body must be like {{"to": "green", "steps": [10, 25, 50, 100], "every": "30s"}}: {e}"#
                ),
            )
        }
    };
    let result = admin.handle.start_shift(svc, request, asked).await;
    changed(admin, svc, result)
}

async fn set_weights(
    req: Request<Incoming>,
    svc: &str,
    admin: &Admin,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let (asked, body) = match change_request(req, svc, admin, peer).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let (weights, revert_after) = match parse_weights(&body) {
        Ok(parsed) => parsed,
        Err(detail) => return error(StatusCode::BAD_REQUEST, "bad weights", detail),
    };
    let result = admin
        .handle
        .set_weights(svc, weights, revert_after, asked)
        .await;
    changed(admin, svc, result)
}

/// Reads a request body of at most `MAX_BODY` bytes that arrives within
/// `BODY_READ_TIMEOUT`.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    let collect = Limited::new(req.into_body(), MAX_BODY).collect();
    match tokio::time::timeout(BODY_READ_TIMEOUT, collect).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            "unreadable body",
            format!("the body could not be read (at most {MAX_BODY} bytes): {e}"),
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "body timeout",
            format!("the body did not arrive within {BODY_READ_TIMEOUT:?}"),
        )),
    }
}

async fn set_state(
    req: Request<Incoming>,
    service: &str,
    pool: &str,
    endpoint: Option<&str>,
    admin: &Admin,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let asked = match asked(&req, peer) {
        Ok(asked) => asked,
        Err(why) => return bad_if_match(why),
    };
    let body = match read_body(req).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let drain = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => match v.get("state").and_then(|s| s.as_str()) {
            Some("drain") => true,
            Some("ready") => false,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad state",
                    format!(
                        r#"the body must be {{"state": "ready"}} or {{"state": "drain"}}, not {v}"#
                    ),
                )
            }
        },
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad state",
                format!("the body is not valid JSON: {e}"),
            )
        }
    };
    match admin
        .handle
        .set_drain(service, pool, endpoint, drain, asked)
        .await
    {
        Ok(generation) => with_etag(
            json_response(
                StatusCode::OK,
                &json!({
                    "generation": generation,
                    "service": service,
                    "pool": pool,
                    "endpoint": endpoint,
                    "state": if drain { "drain" } else { "ready" },
                }),
            ),
            generation,
        ),
        // In the path, an unknown pool is a missing resource.
        Err(e @ ChangeError::UnknownPool { .. }) => {
            error(StatusCode::NOT_FOUND, "unknown pool", e.to_string())
        }
        Err(e) => change_error(e),
    }
}

/// Longest `revert_after` accepted.
const MAX_REVERT_AFTER: Duration = Duration::from_secs(7 * 86_400);

/// Parses `{"pool": weight, ..., "revert_after": "10m"}`, naming exactly
/// what is wrong.
fn parse_weights(body: &[u8]) -> Result<(Weights, Option<Duration>), String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(
            r#"the body must be a JSON object of pool weights, like {"blue": 0, "green": 100}"#
                .into(),
        );
    };
    let revert_after = match map.remove("revert_after") {
        None => None,
        Some(serde_json::Value::String(text)) => match humantime::parse_duration(&text) {
            Ok(d) if !d.is_zero() && d <= MAX_REVERT_AFTER => Some(d),
            _ => {
                return Err(format!(
                    "revert_after {text:?} is not a duration from 1s to 7d, like \"10m\""
                ))
            }
        },
        Some(other) => {
            return Err(format!(
                "revert_after is {other}; it is a duration string, like \"10m\""
            ))
        }
    };
    if map.is_empty() {
        return Err("no weights given".into());
    }
    let weights = map
        .into_iter()
        .map(|(pool, w)| match w.as_u64() {
            Some(n) if n <= MAX_WEIGHT as u64 => Ok((pool, n as u32)),
            _ => Err(format!(
                "weight of pool {pool:?} is {w}; weights are whole numbers from 0 to {MAX_WEIGHT}"
            )),
        })
        .collect::<Result<_, _>>()?;
    Ok((weights, revert_after))
}

fn change_error(e: ChangeError) -> Response<Full<Bytes>> {
    let (status, short) = match &e {
        ChangeError::UnknownService(_) => (StatusCode::NOT_FOUND, "unknown service"),
        ChangeError::UnknownPool { .. } => (StatusCode::BAD_REQUEST, "unknown pool"),
        ChangeError::UnknownEndpoint { .. } => (StatusCode::NOT_FOUND, "unknown endpoint"),
        ChangeError::LastPool { .. } => (StatusCode::CONFLICT, "last pool in rotation"),
        ChangeError::AllZero(_) => (StatusCode::BAD_REQUEST, "all weights zero"),
        ChangeError::ReadOnly => (StatusCode::CONFLICT, "read-only"),
        ChangeError::Stale { .. } => (StatusCode::PRECONDITION_FAILED, "precondition failed"),
        ChangeError::ShiftRunning { .. } => (StatusCode::CONFLICT, "shift running"),
        ChangeError::NoShift(_) => (StatusCode::CONFLICT, "no shift running"),
        ChangeError::BadShift(_) => (StatusCode::BAD_REQUEST, "bad shift"),
        ChangeError::Reload(_) => (StatusCode::BAD_REQUEST, "invalid configuration"),
        ChangeError::Persist(_) => (StatusCode::INTERNAL_SERVER_ERROR, "state not saved"),
        ChangeError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    };
    error(status, short, e.to_string())
}

fn error(status: StatusCode, short: &str, detail: String) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": short, "detail": detail }))
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).expect("status serializes");
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static headers are valid")
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_whole_numbers_in_range() {
        assert_eq!(
            parse_weights(br#"{"blue": 0, "green": 100}"#).unwrap(),
            (
                Weights::from([("blue".into(), 0), ("green".into(), 100)]),
                None
            )
        );
        assert_eq!(
            parse_weights(br#"{"green": 100, "revert_after": "10m"}"#).unwrap(),
            (
                Weights::from([("green".into(), 100)]),
                Some(Duration::from_secs(600))
            )
        );
        for bad in [
            &br#"{"blue": -1}"#[..],
            br#"{"blue": 1.5}"#,
            br#"{"blue": "10"}"#,
            br#"{"blue": 10001}"#,
            br#"{}"#,
            br#"[1]"#,
            b"{nope",
            br#"{"revert_after": "10m"}"#,
            br#"{"blue": 1, "revert_after": 600}"#,
            br#"{"blue": 1, "revert_after": "0s"}"#,
            br#"{"blue": 1, "revert_after": "30d"}"#,
            br#"{"blue": 1, "revert_after": "soon"}"#,
        ] {
            assert!(
                parse_weights(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
