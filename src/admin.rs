//! The admin API: JSON over HTTP on its own listener, served by the control
//! plane's runtime so a saturated data plane cannot starve it. It reads the
//! server's status and snapshot and asks the server for changes through its
//! `Handle`; it never changes routing state itself. Routes are listed once in
//! `ROUTES`, which the OpenAPI document is checked against.

mod auth;
mod rates;
mod view;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::MAX_WEIGHT;
use crate::server::{ChangeError, Handle, Trigger};
use crate::state::Weights;
pub use auth::{Token, TokenError};
pub use rates::Rates;

/// Every route served: method and path template. The OpenAPI document in
/// `docs/openapi.json` must list exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/status"),
    ("PUT", "/v1/services/{svc}/weights"),
    ("PUT", "/v1/services/{svc}/pools/{pool}/state"),
    (
        "PUT",
        "/v1/services/{svc}/pools/{pool}/endpoints/{ep}/state",
    ),
    ("POST", "/v1/reload"),
];

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Healthz,
    Readyz,
    Metrics,
    Status,
    Weights(&'a str),
    State {
        service: &'a str,
        pool: &'a str,
        endpoint: Option<&'a str>,
    },
    Reload,
}

/// Resolves a path to its route, if the method fits.
fn route<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, StatusCode> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (route, allowed) = match segments.as_slice() {
        ["healthz"] => (Route::Healthz, Method::GET),
        ["readyz"] => (Route::Readyz, Method::GET),
        ["metrics"] => (Route::Metrics, Method::GET),
        ["v1", "status"] => (Route::Status, Method::GET),
        ["v1", "services", svc, "weights"] if !svc.is_empty() => (Route::Weights(svc), Method::PUT),
        ["v1", "services", service, "pools", pool, "state"] => (
            Route::State {
                service,
                pool,
                endpoint: None,
            },
            Method::PUT,
        ),
        ["v1", "services", service, "pools", pool, "endpoints", endpoint, "state"] => (
            Route::State {
                service,
                pool,
                endpoint: Some(endpoint),
            },
            Method::PUT,
        ),
        ["v1", "reload"] => (Route::Reload, Method::POST),
        _ => return Err(StatusCode::NOT_FOUND),
    };
    if *method == allowed {
        Ok(route)
    } else {
        Err(StatusCode::METHOD_NOT_ALLOWED)
    }
}

/// What every admin request shares.
pub struct Admin {
    pub handle: Handle,
    pub token: Option<Token>,
    pub rates: Rates,
}

/// Serves the admin API on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let admin = admin.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(req, &admin).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "admin connection error");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, admin: &Admin) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let route = match route(req.method(), &path) {
        Ok(route) => route,
        Err(StatusCode::METHOD_NOT_ALLOWED) => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                format!("{} does not take {}", path, req.method()),
            )
        }
        Err(_) => {
            return error(
                StatusCode::NOT_FOUND,
                "not found",
                format!("no route {path}"),
            )
        }
    };
    if path.starts_with("/v1/") {
        if let Some(token) = &admin.token {
            if let Err(why) = token.check(req.headers().get(header::AUTHORIZATION)) {
                return error(StatusCode::UNAUTHORIZED, "unauthorized", why.to_owned());
            }
        }
    }
    match route {
        Route::Healthz => text(StatusCode::OK, "ok\n"),
        Route::Readyz => {
            if admin.handle.is_shutting_down() {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        Route::Metrics => Response::builder()
            .header(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body(Full::new(Bytes::from(admin.handle.metrics.render())))
            .expect("static headers are valid"),
        Route::Status => json_response(StatusCode::OK, &view::status(admin)),
        Route::Weights(svc) => set_weights(req, &decode(svc), admin).await,
        Route::State {
            service,
            pool,
            endpoint,
        } => {
            let endpoint = endpoint.map(decode);
            set_state(
                req,
                &decode(service),
                &decode(pool),
                endpoint.as_deref(),
                admin,
            )
            .await
        }
        Route::Reload => match admin.handle.reload(Trigger::Api).await {
            Ok(generation) => json_response(StatusCode::OK, &json!({ "generation": generation })),
            Err(e) => change_error(e),
        },
    }
}

async fn set_weights(req: Request<Incoming>, svc: &str, admin: &Admin) -> Response<Full<Bytes>> {
    if admin.handle.status().services.iter().all(|s| s.name != svc) {
        return change_error(ChangeError::UnknownService(svc.to_owned()));
    }
    let body = match read_body(req).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let weights = match parse_weights(&body) {
        Ok(weights) => weights,
        Err(detail) => return error(StatusCode::BAD_REQUEST, "bad weights", detail),
    };
    match admin.handle.set_weights(svc, weights).await {
        Ok(generation) => {
            let status = admin.handle.status();
            let snapshot = admin.handle.snapshot();
            let service = status
                .services
                .iter()
                .find(|s| s.name == svc)
                .map(|view| view::service(admin, view, &snapshot));
            json_response(
                StatusCode::OK,
                &json!({ "generation": generation, "service": service }),
            )
        }
        Err(e) => change_error(e),
    }
}

/// A path segment, percent-decoded (an IPv6 endpoint arrives as %5B..%5D).
fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "unreadable body",
            format!("the body could not be read (at most {MAX_BODY} bytes): {e}"),
        )),
    }
}

async fn set_state(
    req: Request<Incoming>,
    service: &str,
    pool: &str,
    endpoint: Option<&str>,
    admin: &Admin,
) -> Response<Full<Bytes>> {
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
    match admin.handle.set_drain(service, pool, endpoint, drain).await {
        Ok(generation) => json_response(
            StatusCode::OK,
            &json!({
                "generation": generation,
                "service": service,
                "pool": pool,
                "endpoint": endpoint,
                "state": if drain { "drain" } else { "ready" },
            }),
        ),
        // In the path, an unknown pool is a missing resource.
        Err(e @ ChangeError::UnknownPool { .. }) => {
            error(StatusCode::NOT_FOUND, "unknown pool", e.to_string())
        }
        Err(e) => change_error(e),
    }
}

/// Parses `{"pool": weight, ...}`, naming exactly what is wrong.
fn parse_weights(body: &[u8]) -> Result<Weights, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    let serde_json::Value::Object(map) = value else {
        return Err(
            r#"the body must be a JSON object of pool weights, like {"blue": 0, "green": 100}"#
                .into(),
        );
    };
    if map.is_empty() {
        return Err("no weights given".into());
    }
    map.into_iter()
        .map(|(pool, w)| match w.as_u64() {
            Some(n) if n <= MAX_WEIGHT as u64 => Ok((pool, n as u32)),
            _ => Err(format!(
                "weight of pool {pool:?} is {w}; weights are whole numbers from 0 to {MAX_WEIGHT}"
            )),
        })
        .collect()
}

fn change_error(e: ChangeError) -> Response<Full<Bytes>> {
    let (status, short) = match &e {
        ChangeError::UnknownService(_) => (StatusCode::NOT_FOUND, "unknown service"),
        ChangeError::UnknownPool { .. } => (StatusCode::BAD_REQUEST, "unknown pool"),
        ChangeError::UnknownEndpoint { .. } => (StatusCode::NOT_FOUND, "unknown endpoint"),
        ChangeError::LastPool { .. } => (StatusCode::CONFLICT, "last pool in rotation"),
        ChangeError::AllZero(_) => (StatusCode::BAD_REQUEST, "all weights zero"),
        ChangeError::ReadOnly => (StatusCode::CONFLICT, "read-only"),
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
    fn every_listed_route_resolves_and_other_methods_are_refused() {
        for (method, template) in ROUTES {
            let path = template
                .replace("{svc}", "hello")
                .replace("{pool}", "blue")
                .replace("{ep}", "10.0.0.10:80");
            let method: Method = method.parse().unwrap();
            assert!(route(&method, &path).is_ok(), "{method} {path}");
            for other in [Method::GET, Method::PUT, Method::POST, Method::DELETE] {
                if other != method {
                    assert_eq!(route(&other, &path), Err(StatusCode::METHOD_NOT_ALLOWED));
                }
            }
        }
        assert_eq!(route(&Method::GET, "/v2/x"), Err(StatusCode::NOT_FOUND));
    }

    #[test]
    fn weights_are_whole_numbers_in_range() {
        assert_eq!(
            parse_weights(br#"{"blue": 0, "green": 100}"#).unwrap(),
            Weights::from([("blue".into(), 0), ("green".into(), 100)])
        );
        for bad in [
            &br#"{"blue": -1}"#[..],
            br#"{"blue": 1.5}"#,
            br#"{"blue": "10"}"#,
            br#"{"blue": 10001}"#,
            br#"{}"#,
            br#"[1]"#,
            b"{nope",
        ] {
            assert!(
                parse_weights(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
