//! Drains: when a pool or endpoint leaves rotation (weight 0, set to drain,
//! removed by a reload) its idle upstream connections close at once and what
//! is in flight may finish until the service's `drain_timeout`; then its
//! connections are closed and the work cut short is counted. Coming back
//! before the deadline cancels the drain. Run by the server each time it
//! publishes, from the snapshot before and the one after; the data plane
//! only holds `drain::Work` guards and watches the cut tokens.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::drain::Activity;
use crate::snapshot::Snapshot;
use crate::upstream::EndpointConns;

/// What a drain applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    Pool {
        service: String,
        pool: String,
    },
    Endpoint {
        service: String,
        pool: String,
        address: String,
    },
}

/// Drains in progress, by what they drain: how to cancel each, and the
/// connection sets it retired.
#[derive(Default)]
pub(super) struct Drains {
    pending: HashMap<Target, (CancellationToken, Vec<Arc<EndpointConns>>)>,
}

/// What leaves rotation, with what is needed to end its connections.
struct Leaving {
    target: Target,
    conns: Vec<Arc<EndpointConns>>,
    activity: Option<Arc<Activity>>,
    timeout: Duration,
}

impl Drains {
    /// Compares what was in rotation with what is now: starts a drain for
    /// what left, cancels the drain of what came back.
    pub(super) fn update(&mut self, previous: &Snapshot, next: &Snapshot) {
        let now_in = in_rotation(next);
        let mut leaving = Vec::new();
        for service in &previous.services {
            for pool in service.pools.iter() {
                let pool_target = Target::Pool {
                    service: service.name.to_string(),
                    pool: pool.name.to_string(),
                };
                let pool_was_in = pool.in_rotation();
                if pool_was_in && !now_in.contains(&pool_target) {
                    leaving.push(Leaving {
                        target: pool_target,
                        conns: pool.endpoints.iter().map(|e| e.conns.clone()).collect(),
                        activity: Some(pool.activity.clone()),
                        timeout: service.drain_timeout,
                    });
                    continue;
                }
                for endpoint in pool.endpoints.iter() {
                    let target = Target::Endpoint {
                        service: service.name.to_string(),
                        pool: pool.name.to_string(),
                        address: endpoint.address.to_string(),
                    };
                    if pool_was_in && !endpoint.draining && !now_in.contains(&target) {
                        leaving.push(Leaving {
                            target,
                            conns: vec![endpoint.conns.clone()],
                            activity: None,
                            timeout: service.drain_timeout,
                        });
                    }
                }
            }
        }
        self.pending.retain(|target, (cancel, conns)| {
            let back = now_in.contains(target);
            if back {
                tracing::info!(?target, "back in rotation: drain cancelled");
                cancel.cancel();
                for conns in conns.iter() {
                    conns.retire(false);
                }
            }
            !back && !cancel.is_cancelled()
        });
        for leave in leaving {
            self.start(leave);
        }
        // Whatever is in rotation keeps its connections for reuse, whether
        // or not a drain of it was still pending.
        for service in &next.services {
            for pool in service.pools.iter().filter(|p| p.in_rotation()) {
                for endpoint in pool.endpoints.iter().filter(|e| !e.draining) {
                    endpoint.conns.retire(false);
                }
            }
        }
    }

    fn start(&mut self, leave: Leaving) {
        // The work in flight now is what the deadline may cut; work that
        // starts later (failover onto this pool) watches a fresh token.
        let cut: Vec<CancellationToken> = leave.conns.iter().map(|c| c.begin_drain()).collect();
        for conns in &leave.conns {
            conns.retire(true);
        }
        tracing::info!(target = ?leave.target, deadline = ?leave.timeout, "left rotation: draining");
        let cancel = CancellationToken::new();
        self.pending
            .insert(leave.target.clone(), (cancel.clone(), leave.conns.clone()));
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(leave.timeout) => {}
                () = cancel.cancelled() => return,
            }
            // The data plane counts each piece of work it closes for this
            // (`drain_closed`); failover work started since is left alone.
            for token in &cut {
                token.cancel();
            }
            for conns in &leave.conns {
                conns.close_idle();
            }
            let in_flight = leave.activity.as_ref().map_or(0, |a| a.in_flight());
            tracing::info!(target = ?leave.target, in_flight, "drain deadline reached: work begun before the drain closed");
            cancel.cancel();
        });
    }

    /// Cancels every pending drain (shutdown).
    pub(super) fn stop(&mut self) {
        for (cancel, _) in self.pending.values() {
            cancel.cancel();
        }
        self.pending.clear();
    }
}

/// Every pool and endpoint in rotation in a snapshot.
fn in_rotation(snapshot: &Snapshot) -> HashSet<Target> {
    let mut set = HashSet::new();
    for service in &snapshot.services {
        for pool in service.pools.iter().filter(|p| p.in_rotation()) {
            set.insert(Target::Pool {
                service: service.name.to_string(),
                pool: pool.name.to_string(),
            });
            for endpoint in pool.endpoints.iter().filter(|e| !e.draining) {
                set.insert(Target::Endpoint {
                    service: service.name.to_string(),
                    pool: pool.name.to_string(),
                    address: endpoint.address.to_string(),
                });
            }
        }
    }
    set
}
