//! Drains: when a pool or endpoint leaves rotation (weight 0, set to drain,
//! removed by a reload) its idle upstream connections close at once and what
//! is in flight may finish until the service's `drain_timeout`; then its
//! connections are closed and the work cut short is counted. Coming back
//! before the deadline cancels the drain. Run by the server each time it
//! publishes, from the snapshot before and the one after; the data plane
//! only holds `drain::Work` guards and watches the cut tokens.
//!
//! A service with `migrate` moves its layer-4 connections differently: a
//! long-lived TCP connection never returns to the balancer by itself, so
//! its pool's connections are closed one at a time over the `migrate`
//! window, and their clients reconnect to the pools in rotation gradually
//! rather than all at once at the drain deadline.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::drain::Activity;
use crate::snapshot::Snapshot;
use crate::upstream::{EndpointConns, Migration};

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
    /// The service's `migrate` window for layer-4 connections.
    migrate: Option<Duration>,
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
                        migrate: service.migrate,
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
                            migrate: service.migrate,
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
        let (cut, migrations): (Vec<CancellationToken>, Vec<Arc<Migration>>) =
            leave.conns.iter().map(|c| c.begin_drain()).unzip();
        for conns in &leave.conns {
            conns.retire(true);
        }
        tracing::info!(target = ?leave.target, deadline = ?leave.timeout, migrate = ?leave.migrate, "left rotation: draining");
        let cancel = CancellationToken::new();
        self.pending
            .insert(leave.target.clone(), (cancel.clone(), leave.conns.clone()));
        tokio::spawn(async move {
            let deadline = async {
                tokio::time::sleep(leave.timeout).await;
                // The data plane counts each piece of work it closes for
                // this (`drain_closed`); failover work started since is left
                // alone.
                for token in &cut {
                    token.cancel();
                }
                for conns in &leave.conns {
                    conns.close_idle();
                }
                let in_flight = leave.activity.as_ref().map_or(0, |a| a.in_flight());
                tracing::info!(target = ?leave.target, in_flight, "drain deadline reached: work begun before the drain closed");
            };
            let migrate = async {
                if let Some(window) = leave.migrate {
                    migrate(&migrations, window).await;
                    tracing::info!(target = ?leave.target, "migration window over: layer-4 connections moved");
                }
            };
            tokio::select! {
                ((), ()) = async { tokio::join!(deadline, migrate) } => {}
                () = cancel.cancelled() => return,
            }
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

/// Closes the layer-4 connections waiting in `migrations` one at a time,
/// evenly over `window`, the last at its end: clients reconnect, and land on
/// the pools in rotation, a few at a time instead of all at once.
async fn migrate(migrations: &[Arc<Migration>], window: Duration) {
    let total: usize = migrations.iter().map(|m| m.waiting()).sum();
    if total > 0 {
        let step = window / u32::try_from(total).unwrap_or(u32::MAX);
        for _ in 0..total {
            tokio::time::sleep(step).await;
            if let Some(fullest) = migrations.iter().max_by_key(|m| m.waiting()) {
                fullest.move_one();
            }
        }
    }
    // Any that joined late, or missed a turn, go now.
    for migration in migrations {
        migration.move_all();
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
