//! The admin API's routes: the one table, `ROUTES`, that the router is built
//! from and the OpenAPI document is checked against, and how a request's
//! method and path resolve to a call and to who may make it. Paths are matched
//! exactly as sent; whether the token is needed follows from what matched.
//! Answering a call is `admin`'s, not this file's.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use http::Method;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: liveness and readiness probes, metric scrapes.
    Open,
    /// Only a caller presenting the bearer token, when one is configured.
    Token,
}

/// What a matched route asks for, its path parameters percent-decoded.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Call {
    Healthz,
    Readyz,
    Metrics,
    Status,
    Weights {
        service: String,
    },
    State {
        service: String,
        pool: String,
        endpoint: Option<String>,
    },
    Reload,
    StartShift {
        service: String,
    },
    AbortShift {
        service: String,
    },
    Events,
}

/// Turns a matched route's raw path parameters into its call; `None` when a
/// parameter names nothing (see `param`).
type MakeCall = fn(&matchit::Params<'_, '_>) -> Option<Call>;

/// One served route.
#[derive(Debug)]
pub struct Route {
    pub method: Method,
    /// Path template with `{name}` parameters, as the OpenAPI document has it.
    pub path: &'static str,
    pub(crate) access: Access,
    call: MakeCall,
}

const fn open(method: Method, path: &'static str, call: MakeCall) -> Route {
    Route {
        method,
        path,
        access: Access::Open,
        call,
    }
}

const fn token(method: Method, path: &'static str, call: MakeCall) -> Route {
    Route {
        method,
        path,
        access: Access::Token,
        call,
    }
}

/// Every route served. The OpenAPI document in `docs/openapi.json` must list
/// exactly these; everything under `/v1` needs the token.
pub static ROUTES: &[Route] = &[
    open(Method::GET, "/healthz", |_| Some(Call::Healthz)),
    open(Method::GET, "/readyz", |_| Some(Call::Readyz)),
    open(Method::GET, "/metrics", |_| Some(Call::Metrics)),
    token(Method::GET, "/v1/status", |_| Some(Call::Status)),
    token(Method::PUT, "/v1/services/{svc}/weights", |p| {
        Some(Call::Weights {
            service: param(p, "svc")?,
        })
    }),
    token(Method::PUT, "/v1/services/{svc}/pools/{pool}/state", |p| {
        Some(Call::State {
            service: param(p, "svc")?,
            pool: param(p, "pool")?,
            endpoint: None,
        })
    }),
    token(
        Method::PUT,
        "/v1/services/{svc}/pools/{pool}/endpoints/{ep}/state",
        |p| {
            Some(Call::State {
                service: param(p, "svc")?,
                pool: param(p, "pool")?,
                endpoint: Some(param(p, "ep")?),
            })
        },
    ),
    token(Method::POST, "/v1/services/{svc}/shift", |p| {
        Some(Call::StartShift {
            service: param(p, "svc")?,
        })
    }),
    token(Method::DELETE, "/v1/services/{svc}/shift", |p| {
        Some(Call::AbortShift {
            service: param(p, "svc")?,
        })
    }),
    token(Method::POST, "/v1/reload", |_| Some(Call::Reload)),
    token(Method::GET, "/v1/events", |_| Some(Call::Events)),
];

/// Paths that are no route but still need the token: anything under `/v1`,
/// so a caller without it learns nothing about what exists there. Routes are
/// matched before these.
const TOKEN_FALLBACK: [&str; 3] = ["/v1", "/v1/", "/v1/{*rest}"];

/// What the router finds at one path: who may ask, and the routes served
/// there, one per method (none for a fallback).
struct Target {
    access: Access,
    routes: Vec<&'static Route>,
}

/// The router, built once from `ROUTES` and `TOKEN_FALLBACK`. It matches the
/// path exactly as sent: no slashes are merged, no dot segments resolved, no
/// case folded, no `%2F` decoded before matching, so any odd spelling of a
/// route is no route.
static ROUTER: LazyLock<matchit::Router<Target>> = LazyLock::new(|| {
    let mut targets: BTreeMap<&str, Target> = BTreeMap::new();
    for route in ROUTES {
        let target = targets.entry(route.path).or_insert(Target {
            access: route.access,
            routes: Vec::new(),
        });
        // A path shared by several methods needs the token if any does.
        if route.access == Access::Token {
            target.access = Access::Token;
        }
        target.routes.push(route);
    }
    for path in TOKEN_FALLBACK {
        targets.insert(
            path,
            Target {
                access: Access::Token,
                routes: Vec::new(),
            },
        );
    }
    let mut router = matchit::Router::new();
    for (path, target) in targets {
        if let Err(e) = router.insert(path, target) {
            panic!("admin route {path} conflicts with another: {e}");
        }
    }
    router
});

/// Where a request's method and path lead.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Resolved {
    Call(Call),
    /// The path is served, but not with this method; the methods it takes.
    WrongMethod(Vec<Method>),
    NotFound,
}

/// Resolves a request to who may make it and what it asks for. A path that
/// matches no route needs no token, unless it is under `/v1`.
pub(super) fn resolve(method: &Method, path: &str) -> (Access, Resolved) {
    let Ok(matched) = ROUTER.at(path) else {
        return (Access::Open, Resolved::NotFound);
    };
    let target = matched.value;
    let resolved = if target.routes.is_empty()
        || matched.params.iter().any(|(_, raw)| decode(raw).is_none())
    {
        Resolved::NotFound
    } else if let Some(route) = target.routes.iter().find(|r| r.method == *method) {
        match (route.call)(&matched.params) {
            Some(call) => Resolved::Call(call),
            None => Resolved::NotFound,
        }
    } else {
        Resolved::WrongMethod(target.routes.iter().map(|r| r.method.clone()).collect())
    };
    (target.access, resolved)
}

/// The path parameter `name`, percent-decoded (see `decode`).
fn param(params: &matchit::Params<'_, '_>, name: &str) -> Option<String> {
    params.get(name).and_then(decode)
}

/// A path parameter, percent-decoded (an IPv6 endpoint arrives as
/// `%5B..%5D`). `None` for an empty one or a dot segment (`.`, `..`, in any
/// spelling): those name no service, pool or endpoint, and a path holding one
/// is no route.
fn decode(raw: &str) -> Option<String> {
    let text = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    match &*text {
        "" | "." | ".." => None,
        _ => Some(text.into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route's template with sample values for its parameters.
    fn sample(template: &str) -> String {
        template
            .replace("{svc}", "hello")
            .replace("{pool}", "blue")
            .replace("{ep}", "10.0.0.10:80")
    }

    #[test]
    fn every_listed_route_resolves_and_other_methods_are_refused() {
        for route in ROUTES {
            let path = sample(route.path);
            let (access, resolved) = resolve(&route.method, &path);
            assert_eq!(access, route.access, "{path}");
            assert!(
                matches!(resolved, Resolved::Call(_)),
                "{} {path}: {resolved:?}",
                route.method
            );
            let served: Vec<Method> = ROUTES
                .iter()
                .filter(|r| r.path == route.path)
                .map(|r| r.method.clone())
                .collect();
            for other in [Method::GET, Method::PUT, Method::POST, Method::DELETE] {
                if !served.contains(&other) {
                    assert_eq!(
                        resolve(&other, &path),
                        (route.access, Resolved::WrongMethod(served.clone())),
                        "{other} {path}"
                    );
                }
            }
        }
        assert_eq!(
            resolve(&Method::GET, "/v2/x"),
            (Access::Open, Resolved::NotFound)
        );
    }

    #[test]
    fn everything_under_v1_needs_the_token_and_nothing_else_does() {
        for route in ROUTES {
            let expected = if route.path.starts_with("/v1/") {
                Access::Token
            } else {
                Access::Open
            };
            assert_eq!(route.access, expected, "{}", route.path);
        }
        for path in ["/v1", "/v1/", "/v1/nothing", "/v1/services/hello"] {
            assert_eq!(
                resolve(&Method::GET, path),
                (Access::Token, Resolved::NotFound),
                "{path}"
            );
        }
    }

    #[test]
    fn odd_spellings_of_a_route_are_no_route() {
        let odd = [
            "//v1/status",
            "/v1//status",
            "/./v1/status",
            "/v1/./status",
            "/v1/../v1/status",
            "/%2Fv1/status",
            "/%2fv1/status",
            "/v1%2Fstatus",
            "/v1/status/",
            "/V1/status",
            "/v1/Status",
            "/v1/status%20",
            "v1/status",
            "*",
            "",
            "//healthz",
            "/healthz/",
            "/./healthz",
            "/HEALTHZ",
            "/v1/services//weights",
            "/v1/services/./weights",
            "/v1/services/../weights",
            "/v1/services/%2E/weights",
            "/v1/services/%2e%2E/weights",
            "/v1/services/hello/./weights",
            "/v1/services/hello/weights/",
            "/v1/services/hello/pools//state",
            "/v1/services/hello/pools/blue/endpoints/../state",
        ];
        for path in odd {
            for method in [Method::GET, Method::PUT, Method::POST] {
                let (access, resolved) = resolve(&method, path);
                assert_eq!(resolved, Resolved::NotFound, "{method} {path:?}");
                // Under /v1/ the token is asked for before "not found" is said.
                let expected = if path.starts_with("/v1/") {
                    Access::Token
                } else {
                    Access::Open
                };
                assert_eq!(access, expected, "{method} {path:?}");
            }
        }
    }

    #[test]
    fn path_parameters_are_percent_decoded() {
        assert_eq!(
            resolve(
                &Method::PUT,
                "/v1/services/hello/pools/blue/endpoints/%5B::1%5D:80/state"
            ),
            (
                Access::Token,
                Resolved::Call(Call::State {
                    service: "hello".into(),
                    pool: "blue".into(),
                    endpoint: Some("[::1]:80".into()),
                })
            )
        );
        assert_eq!(
            resolve(&Method::PUT, "/v1/services/a%20b%2Fc/weights"),
            (
                Access::Token,
                Resolved::Call(Call::Weights {
                    service: "a b/c".into()
                })
            )
        );
    }
}
