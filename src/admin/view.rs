//! The JSON body of `GET /v1/status`: the server's status joined with live
//! figures read from the current snapshot's metric handles.

use serde_json::{json, Value};

use super::Admin;
use crate::server::ServiceView;
use crate::snapshot::{Endpoint, Snapshot};

pub fn status(admin: &Admin) -> Value {
    let status = admin.handle.status();
    let snapshot = admin.handle.snapshot();
    let services: Vec<Value> = status
        .services
        .iter()
        .map(|view| service(admin, view, &snapshot))
        .collect();
    json!({
        "generation": status.generation,
        "config_file": status.config_file,
        "read_only": status.read_only,
        "last_reload_error": status.last_reload_error,
        "listeners": status.listeners,
        "services": services,
    })
}

/// One service's part of the status.
pub fn service(admin: &Admin, view: &ServiceView, snapshot: &Snapshot) -> Value {
    let live = snapshot.service(&view.name);
    let pools: Vec<Value> = view
                .pools
                .iter()
                .map(|name| {
                    let pool = live.and_then(|s| s.pools.iter().find(|p| &*p.name == name));
                    let (requests, errors) = pool.map_or((0, 0), |p| p.metrics.totals());
                    json!({
                        "name": name,
                        "weight": view.effective_weights.get(name),
                        "file_weight": view.file_weights.get(name),
                        "endpoints": pool.map_or_else(Vec::new, |p| p
                            .endpoints
                            .iter()
                            .map(endpoint)
                            .collect()),
                        "requests_total": requests,
                        "errors_5xx_total": errors,
                        "requests_per_second": (admin.rates.get(&view.name, name) * 10.0).round() / 10.0,
                        "upstream_connections_active": pool.map_or(0, |p| p.metrics.upstream_connections.get()),
                    })
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
        },
        "pools": pools,
    })
}

fn endpoint(e: &Endpoint) -> Value {
    let detail = e.health.detail();
    json!({
        "address": &*e.address,
        "healthy": e.health.healthy(),
        "checked": detail.checked,
        "ejected_for_seconds": e.health.ejected_for().map(|d| d.as_secs_f64()),
        "last_error": detail.last_error,
        "since": humantime::format_rfc3339_seconds(detail.since).to_string(),
        "consecutive_passes": detail.consecutive_passes,
        "consecutive_failures": detail.consecutive_failures,
    })
}
