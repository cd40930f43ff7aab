//! Changes asked through the admin API — weights and drains — applied by the
//! server's command loop: checked whole, saved to the state file, then
//! published. A refused change leaves everything as it was.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::shifts::who;
use super::{Asked, ChangeError, Server};
use crate::audit::{Change, EventKind, Source};
use crate::state::{self, Overrides, Revert, Weights};

impl Server {
    /// The service an API change names, when API changes are allowed.
    pub(super) fn changeable(&self, name: &str) -> Result<&crate::config::Service, ChangeError> {
        if self.config.admin.read_only {
            return Err(ChangeError::ReadOnly);
        }
        self.service(name)
            .ok_or_else(|| ChangeError::UnknownService(name.to_owned()))
    }

    /// The configured service `name`.
    pub(super) fn service(&self, name: &str) -> Option<&crate::config::Service> {
        self.config.services.iter().find(|s| s.name == name)
    }

    /// Refuses a change whose `If-Match` names another generation than the
    /// one in force.
    pub(super) fn precondition(&self, asked: &Asked) -> Result<(), ChangeError> {
        let current = self.snapshot.load().generation;
        match &asked.if_match {
            Some(tags) if !tags.matches(current) => Err(ChangeError::Stale {
                given: tags.describe(),
                current,
            }),
            _ => Ok(()),
        }
    }

    /// Puts `next` in force and publishes even when the state file cannot
    /// take it (the error is logged): for the changes that make traffic
    /// safer — a rollback, an abort, a revert — which must not wait on a
    /// disk.
    pub(super) fn commit_anyway(&mut self, next: Overrides) -> u64 {
        if let Some(file) = &self.config.admin.state_file {
            if let Err(e) = next.save(file) {
                tracing::error!(
                    "{e}; the change is in force but not saved yet: saving is retried every second"
                );
                self.unsaved = true;
            }
        }
        self.overrides = next;
        let generation = self.snapshot.load().generation + 1;
        self.publish(generation);
        generation
    }

    /// Saves the overrides in force again after `commit_anyway` could not.
    pub(super) fn retry_save(&mut self) {
        if !self.unsaved {
            return;
        }
        let Some(file) = &self.config.admin.state_file else {
            self.unsaved = false;
            return;
        };
        if self.overrides.save(file).is_ok() {
            tracing::info!("the state file is saved again");
            self.unsaved = false;
        }
    }

    /// Saves `next` to the state file (if any), then makes it the overrides
    /// in force and publishes; nothing changes when saving fails.
    pub(super) fn commit(&mut self, next: Overrides) -> Result<u64, ChangeError> {
        if let Some(file) = &self.config.admin.state_file {
            next.save(file).map_err(ChangeError::Persist)?;
        }
        self.overrides = next;
        let generation = self.snapshot.load().generation + 1;
        self.publish(generation);
        Ok(generation)
    }

    pub(super) fn set_weights(
        &mut self,
        name: &str,
        weights: Weights,
        revert_after: Option<Duration>,
        source: &Source,
    ) -> Result<u64, ChangeError> {
        let service = self.changeable(name)?.clone();
        let service = &service;
        let before = self.overrides.weights(service);
        let mut merged = before.clone();
        for (pool, weight) in weights {
            match merged.get_mut(&pool) {
                Some(w) => *w = weight,
                None => {
                    return Err(ChangeError::UnknownPool {
                        service: name.to_owned(),
                        pool,
                    })
                }
            }
        }
        if merged.values().all(|w| *w == 0) {
            return Err(ChangeError::AllZero(name.to_owned()));
        }
        let revert = revert_after.map(|after| Revert {
            at: humantime::format_rfc3339_millis(SystemTime::now() + after).to_string(),
            // What comes back is the override in force now, without a
            // dead-man switch of its own.
            to: self.overrides.get(name).cloned().map(|mut o| {
                o.revert = None;
                Box::new(o)
            }),
        });
        let mut next = self.overrides.clone();
        let shifting = next.shift(name).is_some();
        next.set_shift(name, None);
        next.set(service, merged.clone(), who(source), revert.clone());
        let generation = self.commit(next)?;
        match (&revert, revert_after) {
            (Some(revert), Some(after)) => {
                self.reverts
                    .insert(name.to_owned(), (Instant::now() + after, revert.at.clone()));
            }
            _ => {
                self.reverts.remove(name);
            }
        }
        let mut message = format!("weights set through the admin API by {}", who(source));
        if let Some(revert) = &revert {
            message.push_str(&format!("; they revert at {} unless confirmed", revert.at));
        }
        tracing::info!(service = name, weights = ?merged, generation, "{message}");
        self.audit.record(
            Change::new(EventKind::Weights, source.clone(), message)
                .service(name)
                .generation(generation)
                .before(&before)
                .after(&merged),
        );
        if shifting {
            let by = who(source);
            self.end_superseded(
                |_| format!("weights set through the admin API by {by} (newest wins)"),
                source,
                generation,
            );
            self.refresh_shifts();
        }
        Ok(generation)
    }

    /// Arms the `revert_after` deadlines the state file kept.
    pub(super) fn arm_reverts(&mut self) {
        let now = SystemTime::now();
        for service in &self.config.services {
            let Some(revert) = self
                .overrides
                .get(&service.name)
                .and_then(|o| o.revert.as_ref())
            else {
                continue;
            };
            let left = humantime::parse_rfc3339_weak(&revert.at)
                .ok()
                .and_then(|at| at.duration_since(now).ok())
                .unwrap_or_default();
            self.reverts.insert(
                service.name.clone(),
                (Instant::now() + left, revert.at.clone()),
            );
        }
    }

    /// When the next timed change — a shift's judgement, a revert — is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        let reverts = self.reverts.values().map(|(at, _)| *at);
        self.shifts.next_due().into_iter().chain(reverts).min()
    }

    /// Puts back the weights of every `revert_after` that came due and was
    /// not replaced by a later change meanwhile.
    pub(super) fn revert_due(&mut self) {
        let now = Instant::now();
        let due: Vec<(String, String)> = self
            .reverts
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(name, (_, at))| (name.clone(), at.clone()))
            .collect();
        for (name, at) in due {
            self.reverts.remove(&name);
            let Some(service) = self.service(&name).cloned() else {
                continue;
            };
            let Some(revert) = self
                .overrides
                .get(&name)
                .and_then(|o| o.revert.clone())
                .filter(|r| r.at == at)
            else {
                continue;
            };
            let before = self.overrides.weights(&service);
            let mut next = self.overrides.clone();
            next.restore(&name, revert.to.map(|o| *o));
            let generation = self.commit_anyway(next);
            let after = self.overrides.weights(&service);
            let message = format!(
                "revert_after came due at {at} with no later change: the weights before are back"
            );
            tracing::warn!(service = name, weights = ?after, generation, "{message}");
            self.audit.record(
                Change::new(EventKind::Revert, Source::RevertAfter, message)
                    .service(&name)
                    .generation(generation)
                    .before(&before)
                    .after(&after),
            );
        }
    }

    pub(super) fn set_drain(
        &mut self,
        name: &str,
        pool: &str,
        endpoint: Option<&str>,
        drain: bool,
        source: &Source,
    ) -> Result<u64, ChangeError> {
        let service = self.changeable(name)?;
        let pool_config = service
            .pools
            .iter()
            .find(|p| p.name == pool)
            .ok_or_else(|| ChangeError::UnknownPool {
                service: name.to_owned(),
                pool: pool.to_owned(),
            })?;
        if let Some(endpoint) = endpoint {
            if !pool_config
                .endpoints
                .iter()
                .any(|e| e.address() == endpoint)
            {
                return Err(ChangeError::UnknownEndpoint {
                    service: name.to_owned(),
                    pool: pool.to_owned(),
                    endpoint: endpoint.to_owned(),
                });
            }
        }
        let was_drained = self.overrides.is_drained(name, pool, endpoint);
        let mut next = self.overrides.clone();
        next.set_drained(name, state::drain_key(pool, endpoint), drain);
        if drain && endpoint.is_none() {
            let any_left = |weights: Vec<u32>| {
                service
                    .pools
                    .iter()
                    .zip(weights)
                    .any(|(p, w)| w > 0 && !next.is_drained(name, &p.name, None))
            };
            // A running shift may roll back to its weights from before:
            // those must keep a pool in rotation too.
            let after_rollback = next.shift(name).map(|shift| {
                service
                    .pools
                    .iter()
                    .map(|p| shift.before_weights.get(&p.name).copied().unwrap_or(0))
                    .collect::<Vec<u32>>()
            });
            if !any_left(next.effective(service)) || after_rollback.is_some_and(|w| !any_left(w)) {
                return Err(ChangeError::LastPool {
                    service: name.to_owned(),
                    pool: pool.to_owned(),
                });
            }
        }
        let generation = self.commit(next)?;
        let state_name = |drained: bool| if drained { "drain" } else { "ready" };
        tracing::info!(
            service = name,
            pool,
            endpoint,
            state = state_name(drain),
            generation,
            "rotation changed through the admin API"
        );
        let target = endpoint.map_or_else(
            || format!("pool {pool:?}"),
            |e| format!("endpoint {e} of pool {pool:?}"),
        );
        let mut change = Change::new(
            EventKind::Drain,
            source.clone(),
            format!(
                "{target} set to {} through the admin API by {}",
                state_name(drain),
                who(source)
            ),
        )
        .service(name)
        .pool(pool)
        .generation(generation)
        .before(serde_json::json!({ "state": state_name(was_drained) }))
        .after(serde_json::json!({ "state": state_name(drain) }));
        if let Some(endpoint) = endpoint {
            change = change.endpoint(endpoint);
        }
        self.audit.record(change);
        Ok(generation)
    }
}
