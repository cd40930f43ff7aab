//! The JSON body of `GET /v1/status`: the server's status joined with live
//! figures read from the metric handles of the snapshot published with it,
//! so every figure is of one generation.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::Admin;
use crate::server::{ServiceView, Status};
use crate::snapshot::{Endpoint, Pool, Service};

/// The status body, and the generation it describes.
pub fn status(admin: &Admin) -> (u64, Value) {
    let status = admin.handle.status();
    let services: Vec<Value> = status
        .services
        .iter()
        .map(|view| service(admin, view, &status))
        .collect();
    let body = json!({
        "generation": status.generation(),
        "config_file": status.config_file,
        "read_only": status.read_only,
        "last_reload_error": status.last_reload_error,
        "listeners": status.listeners,
        "services": services,
    });
    (status.generation(), body)
}

/// One service's part of the status; `status` is the one `view` is of.
pub fn service(admin: &Admin, view: &ServiceView, status: &Status) -> Value {
    let live = status.snapshot.service(&view.name);
    let pools: Vec<Value> = view
        .pools
        .iter()
        .map(|name| {
            let found =
                live.and_then(|s| s.pools.iter().find(|p| &*p.name == name).map(|p| (s, p)));
            let rate = (admin.rates.get(&view.name, name) * 10.0).round() / 10.0;
            let mut value = json!({
                "name": name,
                "weight": view.effective_weights.get(name),
                "file_weight": view.file_weights.get(name),
                "requests_per_second": rate,
            });
            if let Some((service, pool)) = found {
                pool_live(&mut value, service, pool);
            }
            value
        })
        .collect();
    json!({
        "name": view.name,
        "serving": live.map_or("down", |s| s.mode().as_str()),
        "weights": { "file": view.file_weights, "effective": view.effective_weights },
        "override": {
            "active": view.override_active,
            "source": view.weights_source,
            "set_at": view.weights_set_at,
            "set_by": view.set_by,
            "revert_at": view.revert_at,
            "revert_to": view.revert_to,
        },
        "shift": status.shift(&view.name),
        "pools": pools,
    })
}

/// What a pool holds and serves now, and whether it can be removed.
fn pool_live(value: &mut Value, service: &Service, pool: &Pool) {
    let (requests, errors) = pool.metrics.totals();
    let connections = pool.metrics.upstream_connections.get();
    let in_flight = pool.activity.in_flight();
    let last_served = pool.activity.last_served();
    let quiet_for = last_served.and_then(|t| SystemTime::now().duration_since(t).ok());
    // Out of rotation, holding nothing, and silent for a whole drain window.
    let safe_to_remove = !pool.in_rotation()
        && in_flight == 0
        && connections == 0
        && quiet_for.is_none_or(|quiet| quiet >= service.drain_timeout);
    let extra = json!({
        "state": if pool.draining { "drain" } else { "ready" },
        "in_rotation": pool.in_rotation(),
        "endpoints": pool.endpoints.iter().map(endpoint).collect::<Vec<_>>(),
        "requests_total": requests,
        "errors_5xx_total": errors,
        "in_flight": in_flight,
        "upstream_connections_active": connections,
        "last_served": last_served.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        "drain_timeout_seconds": service.drain_timeout.as_secs_f64(),
        "safe_to_remove": safe_to_remove,
    });
    if let (Value::Object(into), Value::Object(from)) = (value, extra) {
        into.extend(from);
    }
}

fn endpoint(e: &Endpoint) -> Value {
    let detail = e.health.detail();
    json!({
        "address": &*e.address,
        "state": if e.draining { "drain" } else { "ready" },
        "healthy": e.health.healthy(),
        "checked": detail.checked,
        "ejected_for_seconds": e.health.ejected_for().map(|d| d.as_secs_f64()),
        "last_error": detail.last_error,
        "since": humantime::format_rfc3339_seconds(detail.since).to_string(),
        "consecutive_passes": detail.consecutive_passes,
        "consecutive_failures": detail.consecutive_failures,
    })
}
