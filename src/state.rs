//! Weight overrides set through the admin API, and the state file that keeps
//! them across restarts. An override sits on top of the file's weights until
//! the file's weights for that service change (the newest change wins). This
//! module owns the override rules and the file format; it does not publish.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Service};

const VERSION: u32 = 1;

pub use crate::shift::Weights;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Override {
    /// Every pool's weight while the override holds.
    pub weights: Weights,
    /// The file's weights when the override was set: when the file's differ
    /// from these, the file has changed since and wins.
    pub file_weights: Weights,
    /// When it was set, RFC 3339.
    pub set_at: String,
    /// Who set it: "api 127.0.0.1:5555", "shift", "revert_after".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_by: Option<String>,
    /// A dead-man switch: unless a later change comes first, the weights
    /// before this override come back at this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert: Option<Revert>,
}

/// What `revert_after` brings back, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Revert {
    /// RFC 3339, to the millisecond.
    pub at: String,
    /// The override in force before; none means the file's weights.
    pub to: Option<Box<Override>>,
}

/// A progressive shift in progress, as the state file keeps it so a restart
/// resumes it at the step it was on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ShiftRecord {
    /// The pool traffic moves to.
    pub to: String,
    pub policy: crate::shift::Policy,
    /// Index in `policy.steps` of the step in force.
    pub step: usize,
    /// The override in force before the shift; none means the file's
    /// weights. A rollback restores exactly this.
    pub before: Option<Override>,
    /// The weights in force before the shift.
    pub before_weights: Weights,
    /// RFC 3339.
    pub started_at: String,
    /// "api 127.0.0.1:5555".
    pub started_by: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    #[serde(default)]
    overrides: BTreeMap<String, Override>,
    /// Per service, the pools ("blue") and endpoints ("blue/10.0.0.10:80")
    /// set to drain.
    #[serde(default)]
    drained: BTreeMap<String, BTreeSet<String>>,
    /// Per service, the progressive shift in progress.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    shifts: BTreeMap<String, ShiftRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt ({source}); fix or remove it, or start with --ignore-state to use the configuration file's weights")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state file {path} has version {found}; this cutover reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("state file {path}: cannot write it: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The overrides in force, by service name.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    by_service: BTreeMap<String, Override>,
    drained: BTreeMap<String, BTreeSet<String>>,
    shifts: BTreeMap<String, ShiftRecord>,
}

/// A drain target within a service: `pool`, or `pool/endpoint`.
pub(crate) fn drain_key(pool: &str, endpoint: Option<&str>) -> String {
    match endpoint {
        Some(endpoint) => format!("{pool}/{endpoint}"),
        None => pool.to_owned(),
    }
}

/// The weights a service's pools have in the file.
pub(crate) fn file_weights(service: &Service) -> Weights {
    service
        .pools
        .iter()
        .map(|p| (p.name.clone(), p.weight))
        .collect()
}

impl Overrides {
    /// Reads the state file; a missing file means no overrides. Anything else
    /// unreadable is an error: starting without the overrides would silently
    /// send traffic back to where the file points.
    pub(crate) fn load(path: &Path) -> Result<Self, StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let state: StateFile =
            serde_json::from_str(&text).map_err(|source| StateError::Corrupt {
                path: path.to_path_buf(),
                source,
            })?;
        if state.version != VERSION {
            return Err(StateError::Version {
                path: path.to_path_buf(),
                found: state.version,
            });
        }
        Ok(Self {
            by_service: state.overrides,
            drained: state.drained,
            shifts: state.shifts,
        })
    }

    /// Writes the state file atomically: a temporary file beside it, fsync,
    /// rename over it, fsync the directory.
    pub(crate) fn save(&self, path: &Path) -> Result<(), StateError> {
        let write_err = |source| StateError::Write {
            path: path.to_path_buf(),
            source,
        };
        let state = StateFile {
            version: VERSION,
            overrides: self.by_service.clone(),
            drained: self.drained.clone(),
            shifts: self.shifts.clone(),
        };
        let text = serde_json::to_vec_pretty(&state).expect("state serializes");
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write_err)?;
        tmp.write_all(&text).map_err(write_err)?;
        tmp.as_file().sync_all().map_err(write_err)?;
        tmp.persist(path).map_err(|e| write_err(e.error))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err)?;
        Ok(())
    }

    pub(crate) fn get(&self, service: &str) -> Option<&Override> {
        self.by_service.get(service)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_service.is_empty() && self.drained.is_empty() && self.shifts.is_empty()
    }

    /// The shift in progress on `service`.
    pub(crate) fn shift(&self, service: &str) -> Option<&ShiftRecord> {
        self.shifts.get(service)
    }

    /// Every shift in progress, by service.
    pub(crate) fn shifts(&self) -> impl Iterator<Item = (&String, &ShiftRecord)> {
        self.shifts.iter()
    }

    pub(crate) fn set_shift(&mut self, service: &str, record: Option<ShiftRecord>) {
        match record {
            Some(record) => self.shifts.insert(service.to_owned(), record),
            None => self.shifts.remove(service),
        };
    }

    /// Puts back exactly `previous` as `service`'s override (none: the
    /// file's weights again).
    pub(crate) fn restore(&mut self, service: &str, previous: Option<Override>) {
        match previous {
            Some(o) => self.by_service.insert(service.to_owned(), o),
            None => self.by_service.remove(service),
        };
    }

    /// Whether a pool (or one endpoint of it) is set to drain.
    pub(crate) fn is_drained(&self, service: &str, pool: &str, endpoint: Option<&str>) -> bool {
        self.drained
            .get(service)
            .is_some_and(|set| set.contains(&drain_key(pool, endpoint)))
    }

    /// Sets a pool or endpoint to drain, or back to ready.
    pub(crate) fn set_drained(&mut self, service: &str, key: String, drain: bool) {
        let set = self.drained.entry(service.to_owned()).or_default();
        if drain {
            set.insert(key);
        } else {
            set.remove(&key);
        }
        if set.is_empty() {
            self.drained.remove(service);
        }
    }

    /// Sets `service`'s weights, as the newest change, by `set_by`, with a
    /// dead-man switch when `revert` is given.
    pub(crate) fn set(
        &mut self,
        service: &Service,
        weights: Weights,
        set_by: String,
        revert: Option<Revert>,
    ) {
        self.by_service.insert(
            service.name.clone(),
            Override {
                weights,
                file_weights: file_weights(service),
                set_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                set_by: Some(set_by),
                revert,
            },
        );
    }

    /// Applies the rules after the file was (re)read: an override ends when its
    /// service is gone, its pools changed, or the file's weights for it differ
    /// from those it was set over; a shift ends with its override or its
    /// target pool. Returns the services whose override ended, and those
    /// whose shift did.
    pub(crate) fn reconcile(&mut self, config: &Config) -> (Vec<String>, Vec<String>) {
        let mut ended = Vec::new();
        let mut shifts_ended = Vec::new();
        self.by_service.retain(|name, o| {
            let keep = config
                .services
                .iter()
                .find(|s| s.name == *name)
                .is_some_and(|s| file_weights(s) == o.file_weights);
            if !keep {
                ended.push(name.clone());
            }
            keep
        });
        // A shift lives in its service's override: it ends with it, or when
        // its target pool is gone.
        self.shifts.retain(|name, shift| {
            let keep = self.by_service.contains_key(name)
                && config
                    .services
                    .iter()
                    .find(|s| s.name == *name)
                    .is_some_and(|s| s.pools.iter().any(|p| p.name == shift.to));
            if !keep {
                shifts_ended.push(name.clone());
            }
            keep
        });
        // Drain settings last as long as what they name exists.
        self.drained.retain(|name, set| {
            let Some(service) = config.services.iter().find(|s| s.name == *name) else {
                return false;
            };
            set.retain(|key| {
                let (pool, endpoint) = key
                    .split_once('/')
                    .map_or((key.as_str(), None), |(p, e)| (p, Some(e)));
                service.pools.iter().any(|p| {
                    p.name == pool
                        && endpoint.is_none_or(|e| p.endpoints.iter().any(|x| x.address() == e))
                })
            });
            !set.is_empty()
        });
        (ended, shifts_ended)
    }

    /// The weights a service's pools take, by pool name.
    pub(crate) fn weights(&self, service: &Service) -> Weights {
        service
            .pools
            .iter()
            .map(|p| p.name.clone())
            .zip(self.effective(service))
            .collect()
    }

    /// The weights a service's pools take, in pool order.
    pub(crate) fn effective(&self, service: &Service) -> Vec<u32> {
        let o = self.by_service.get(&service.name);
        service
            .pools
            .iter()
            .map(|p| {
                o.and_then(|o| o.weights.get(&p.name).copied())
                    .unwrap_or(p.weight)
            })
            .collect()
    }
}
