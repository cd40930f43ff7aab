//! What the server reports of itself after every change: bound listeners,
//! the last reload error, and per service the file's weights, the effective
//! ones and the override behind them — together with the snapshot published
//! with them, whose generation it is and whose metric handles hold the live
//! traffic figures. One `Status` is one published state: a view built from
//! it never joins two generations.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::config::Config;
use crate::snapshot::Snapshot;
use crate::state::{self, Overrides, Weights};

#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The snapshot published with `services`.
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) config_file: PathBuf,
    /// Bound address of each listener, by name.
    pub(crate) listeners: BTreeMap<String, SocketAddr>,
    /// The last failed reload's problems; cleared by a successful change.
    pub last_reload_error: Option<String>,
    pub reloads_failed: u64,
    pub(crate) read_only: bool,
    pub services: Vec<ServiceView>,
    /// Directories of the TLS files in use: a change there is a reload.
    pub(crate) tls_dirs: Vec<PathBuf>,
    /// Per service, its running or last shift as `GET /v1/status` shows it.
    pub(crate) shifts: HashMap<String, serde_json::Value>,
}

impl Status {
    /// The generation of the configuration and overrides in force.
    pub fn generation(&self) -> u64 {
        self.snapshot.generation
    }

    /// The running or last shift of `service`, as `/v1/status` shows it.
    pub(crate) fn shift(&self, service: &str) -> serde_json::Value {
        self.shifts.get(service).cloned().unwrap_or_else(idle_shift)
    }
}

/// The shift status of a service that has had none.
pub(crate) fn idle_shift() -> serde_json::Value {
    serde_json::json!({ "state": "idle" })
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    pub(crate) name: String,
    /// Pool names in configuration order.
    pub(crate) pools: Vec<String>,
    pub(crate) file_weights: Weights,
    pub effective_weights: Weights,
    /// Whether an API override is in force.
    pub(crate) override_active: bool,
    /// Who set the weights in force: "api" or "file".
    pub(crate) weights_source: &'static str,
    /// When they were set, RFC 3339.
    pub(crate) weights_set_at: String,
    /// Who set the override in force: "api 127.0.0.1:5555", "shift".
    pub(crate) set_by: Option<String>,
    /// A `revert_after` in force: when, and the weights it brings back.
    pub(crate) revert_at: Option<String>,
    pub(crate) revert_to: Option<Weights>,
}

pub(crate) fn services(
    config: &Config,
    overrides: &Overrides,
    file_changed_at: &HashMap<String, String>,
) -> Vec<ServiceView> {
    config
        .services
        .iter()
        .map(|s| {
            let name = s.name.clone();
            let pools: Vec<String> = s.pools.iter().map(|p| p.name.clone()).collect();
            let effective = overrides.weights(s);
            let over = overrides.get(&name);
            let revert = over.and_then(|o| o.revert.as_ref());
            ServiceView {
                set_by: over.and_then(|o| o.set_by.clone()),
                revert_at: revert.map(|r| r.at.clone()),
                revert_to: revert.map(|r| {
                    r.to.as_ref()
                        .map_or_else(|| state::file_weights(s), |o| o.weights.clone())
                }),
                file_weights: state::file_weights(s),
                effective_weights: effective,
                override_active: over.is_some(),
                weights_source: if over.is_some() { "api" } else { "file" },
                weights_set_at: over
                    .map(|o| o.set_at.clone())
                    .or_else(|| file_changed_at.get(&name).cloned())
                    .unwrap_or_default(),
                name,
                pools,
            }
        })
        .collect()
}
