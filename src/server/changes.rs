//! Changes asked through the admin API — weights and drains — applied by the
//! server's command loop: checked whole, saved to the state file, then
//! published. A refused change leaves everything as it was.

use super::{ChangeError, Server};
use crate::state::{self, Overrides, Weights};

impl Server {
    /// The service an API change names, when API changes are allowed.
    fn changeable(&self, name: &str) -> Result<&crate::config::Service, ChangeError> {
        if self.config.admin.read_only {
            return Err(ChangeError::ReadOnly);
        }
        self.config
            .services
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ChangeError::UnknownService(name.to_owned()))
    }

    /// Saves `next` to the state file (if any), then makes it the overrides
    /// in force and publishes; nothing changes when saving fails.
    fn commit(&mut self, next: Overrides) -> Result<u64, ChangeError> {
        if let Some(file) = &self.config.admin.state_file {
            next.save(file).map_err(ChangeError::Persist)?;
        }
        self.overrides = next;
        let generation = self.snapshot.load().generation + 1;
        self.publish(generation);
        Ok(generation)
    }

    pub(super) fn set_weights(&mut self, name: &str, weights: Weights) -> Result<u64, ChangeError> {
        let service = self.changeable(name)?;
        let mut merged: Weights = service
            .pools
            .iter()
            .map(|p| p.name.clone())
            .zip(self.overrides.effective(service))
            .collect();
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
        let mut next = self.overrides.clone();
        next.set(service, merged.clone());
        let generation = self.commit(next)?;
        tracing::info!(service = name, weights = ?merged, generation, "weights set through the admin API");
        Ok(generation)
    }

    pub(super) fn set_drain(
        &mut self,
        name: &str,
        pool: &str,
        endpoint: Option<&str>,
        drain: bool,
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
        let mut next = self.overrides.clone();
        next.set_drained(name, state::drain_key(pool, endpoint), drain);
        if drain && endpoint.is_none() {
            let weights = next.effective(service);
            let any_left = service
                .pools
                .iter()
                .zip(weights)
                .any(|(p, w)| w > 0 && !next.is_drained(name, &p.name, None));
            if !any_left {
                return Err(ChangeError::LastPool {
                    service: name.to_owned(),
                    pool: pool.to_owned(),
                });
            }
        }
        let generation = self.commit(next)?;
        tracing::info!(
            service = name,
            pool,
            endpoint,
            state = if drain { "drain" } else { "ready" },
            generation,
            "rotation changed through the admin API"
        );
        Ok(generation)
    }
}
