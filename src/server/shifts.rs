//! The shift controller: starts, steps, judges, rolls back and ends
//! progressive shifts, inside the server's command loop like every other
//! change. A shift's durable part (`ShiftRecord`) lives in the overrides and
//! the state file with the weights it set; what only a running process has —
//! when the step began, the counters read then, the steps judged — lives
//! here. The rules (step weights, judgement) are `crate::shift`'s.

use serde::Serialize;
use std::collections::HashMap;
use tokio::time::Instant;

use super::{now_rfc3339, ChangeError, Server};
use crate::audit::{Change, EventKind, Source};
use crate::config::Protocol;
use crate::metrics::ShiftMetrics;
use crate::shift::{self, Breach, Figures, Reading, Verdict};
use crate::state::ShiftRecord;

/// How a shift ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// Every step passed.
    Done,
    /// A step breached a limit: the weights from before are back.
    RolledBack,
    /// Aborted through the API: the weights from before are back.
    Aborted,
    /// A newer change to the service's weights ended it where it stood.
    Ended,
}

impl Outcome {
    /// The `state` label of `cutover_shift_state` after this outcome.
    fn state(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::RolledBack | Outcome::Aborted => "rolled_back",
            Outcome::Ended => "idle",
        }
    }
}

/// One step's judgement, as status lists it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Judged {
    /// From 1.
    pub step: usize,
    pub percent: u32,
    #[serde(flatten)]
    pub figures: Figures,
    /// "pass", "extend" or "breach".
    pub verdict: &'static str,
    pub reason: Option<String>,
}

/// What only a running process knows of a running shift.
struct Live {
    step_started_at: String,
    judge_at: Instant,
    extensions: u32,
    /// The target's counters when the step (not its extensions) began.
    baseline: Reading,
}

/// A service's running or last shift.
pub(super) struct Track {
    record: ShiftRecord,
    live: Option<Live>,
    judged: Vec<Judged>,
    ended: Option<(Outcome, String, String)>,
    metrics: ShiftMetrics,
}

impl Track {
    /// A shift about to begin its step.
    fn new(record: ShiftRecord, metrics: ShiftMetrics) -> Self {
        Self {
            record,
            live: None,
            judged: Vec::new(),
            ended: None,
            metrics,
        }
    }
}

/// Every service's running or last shift.
#[derive(Default)]
pub(super) struct Shifts {
    tracks: HashMap<String, Track>,
}

impl Shifts {
    /// When the next step of any running shift is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.tracks
            .values()
            .filter_map(|t| t.live.as_ref().map(|l| l.judge_at))
            .min()
    }

    /// Whether `service` has a running or last shift.
    pub(super) fn has(&self, service: &str) -> bool {
        self.tracks.contains_key(service)
    }

    pub(super) fn any_running(&self) -> bool {
        self.tracks.values().any(|t| t.live.is_some())
    }

    /// The shift part of `service`'s status.
    pub(super) fn view(&self, service: &str, current: Option<&Reading>) -> serde_json::Value {
        let Some(track) = self.tracks.get(service) else {
            return super::status::idle_shift();
        };
        let record = &track.record;
        let live = track.live.as_ref();
        let state = track
            .ended
            .as_ref()
            .map_or("running", |(outcome, _, _)| outcome.state());
        let now = Instant::now();
        serde_json::json!({
            "state": state,
            "to": record.to,
            "policy": record.policy,
            "step": record.step + 1,
            "percent": record.policy.steps.get(record.step),
            "before": record.before_weights,
            "started_at": record.started_at,
            "started_by": record.started_by,
            "step_started_at": live.map(|l| &l.step_started_at),
            "next_judgement_in_seconds": live.map(|l| {
                let left = l.judge_at.saturating_duration_since(now).as_secs_f64();
                (left * 10.0).round() / 10.0
            }),
            "extensions": live.map_or(0, |l| l.extensions),
            "current": live.zip(current).map(|(l, now)| Figures::between(&l.baseline, now)),
            "judged": track.judged,
            "outcome": track.ended.as_ref().map(|(o, _, _)| o),
            "reason": track.ended.as_ref().map(|(_, reason, _)| reason),
            "ended_at": track.ended.as_ref().map(|(_, _, at)| at),
        })
    }

    /// Forgets the shifts of services no longer configured.
    pub(super) fn retain(
        &mut self,
        keep: impl Fn(&str) -> bool,
        metrics: &crate::metrics::Metrics,
    ) {
        self.tracks.retain(|name, _| {
            let kept = keep(name);
            if !kept {
                metrics.forget_shift(name);
            }
            kept
        });
    }
}

/// "api 127.0.0.1:5555", "file", "shift": who made a change, in a line.
pub(super) fn who(source: &Source) -> String {
    match source {
        Source::Api(client) => format!("api {client}"),
        other => other.as_str().to_owned(),
    }
}

impl Server {
    /// The target pool's counters now, if it still serves.
    fn reading(&self, service: &str, pool: &str) -> Option<Reading> {
        let snapshot = self.snapshot.load();
        let service = snapshot.service(service)?;
        let pool = service.pools.iter().find(|p| &*p.name == pool)?;
        Some(pool.metrics.reading())
    }

    /// The shift status of every service, joined with the counters now.
    pub(super) fn shift_views(&self) -> HashMap<String, serde_json::Value> {
        self.config
            .services
            .iter()
            .map(|s| {
                let current = self
                    .shifts
                    .tracks
                    .get(&s.name)
                    .filter(|t| t.live.is_some())
                    .and_then(|t| self.reading(&s.name, &t.record.to));
                (s.name.clone(), self.shifts.view(&s.name, current.as_ref()))
            })
            .collect()
    }

    pub(super) fn start_shift(
        &mut self,
        name: &str,
        request: &shift::Request,
        source: &Source,
    ) -> Result<u64, ChangeError> {
        let service = self.changeable(name)?.clone();
        if let Some(running) = self.overrides.shift(name) {
            return Err(ChangeError::ShiftRunning {
                service: name.to_owned(),
                to: running.to.clone(),
                step: running.step + 1,
            });
        }
        let to = request.to.as_str();
        if !service.pools.iter().any(|p| p.name == to) {
            return Err(ChangeError::UnknownPool {
                service: name.to_owned(),
                pool: to.to_owned(),
            });
        }
        if let Some(listener) = self
            .config
            .listeners
            .iter()
            .find(|l| l.protocol == Protocol::Tcp && l.services.contains(&service.name))
        {
            // A shift judges HTTP answers; layer 4 has none to judge.
            return Err(ChangeError::BadShift(format!(
                "service {name:?} is served by tcp listener {:?}: a shift judges HTTP responses, which a tcp listener does not read; move its weights with PUT /v1/services/{name}/weights",
                listener.name
            )));
        }
        let policy = request.policy(&service.shift);
        let problems = policy.problems();
        if !problems.is_empty() {
            return Err(ChangeError::BadShift(problems.join("; ")));
        }
        if self.overrides.is_drained(name, to, None) {
            return Err(ChangeError::BadShift(format!(
                "pool {to:?} is set to drain; set it ready before shifting traffic to it"
            )));
        }
        let before_weights = self.overrides.weights(&service);
        let share = shift::share(&before_weights, to);
        let Some(first) = policy.steps.iter().position(|s| *s > share) else {
            return Err(ChangeError::BadShift(format!(
                "pool {to:?} already carries {share}% of the traffic, as much as the last step {}%",
                policy.steps.last().copied().unwrap_or(0)
            )));
        };
        let record = ShiftRecord {
            to: to.to_owned(),
            // The shift is a later change: a `revert_after` pending on the
            // weights it starts from is over, and a rollback does not
            // bring it back.
            before: self.overrides.get(name).cloned().map(|mut o| {
                o.revert = None;
                o
            }),
            before_weights: before_weights.clone(),
            policy,
            step: first,
            started_at: now_rfc3339(),
            started_by: who(source),
        };
        let after = shift::split(&before_weights, to, record.policy.steps[first]);
        let mut next = self.overrides.clone();
        next.set(&service, after.clone(), "shift".to_owned(), None);
        next.set_shift(name, Some(record.clone()));
        let generation = self.commit(next)?;
        // A shift toward another pool than the last one's: its series go.
        self.metrics.forget_shift(name);
        let metrics = self.metrics.shift(name, to);
        let percent = record.policy.steps[first];
        let message = format!(
            "shift to {to:?} started: {percent}% at step {} of {}, {} per step",
            first + 1,
            record.policy.steps.len(),
            humantime::format_duration(record.policy.every)
        );
        tracing::info!(service = name, pool = to, generation, "{message}");
        self.audit.record(
            Change::new(EventKind::ShiftStart, source.clone(), message)
                .service(name)
                .pool(to)
                .generation(generation)
                .before(&before_weights)
                .after(&after),
        );
        self.shifts
            .tracks
            .insert(name.to_owned(), Track::new(record, metrics));
        self.begin_step(name);
        self.refresh_shifts();
        Ok(generation)
    }

    /// Starts the clock of the step in force of `name`'s shift, from the
    /// target's counters now.
    fn begin_step(&mut self, name: &str) {
        let Some(track) = self.shifts.tracks.get(name) else {
            return;
        };
        let baseline = self.reading(name, &track.record.to).unwrap_or_default();
        let Some(track) = self.shifts.tracks.get_mut(name) else {
            return;
        };
        track.live = Some(Live {
            step_started_at: now_rfc3339(),
            judge_at: Instant::now() + track.record.policy.every,
            extensions: 0,
            baseline,
        });
        track.metrics.step.set((track.record.step + 1) as i64);
        track
            .metrics
            .percent
            .set(i64::from(track.record.policy.steps[track.record.step]));
        self.metrics.set_shift_state(name, "running");
    }

    /// Picks up the shifts the state file kept, each at the step it was
    /// on, its clock started anew.
    pub(super) fn resume_shifts(&mut self) {
        let records: Vec<(String, ShiftRecord)> = self
            .overrides
            .shifts()
            .map(|(name, record)| (name.clone(), record.clone()))
            .collect();
        for (name, record) in records {
            let problems = record.policy.problems();
            if !problems.is_empty() || record.step >= record.policy.steps.len() {
                // A hand-edited or foreign state file: roll back to the
                // weights from before rather than run an unknown plan.
                let why = if problems.is_empty() {
                    format!("step {} is past the last step", record.step + 1)
                } else {
                    problems.join("; ")
                };
                self.finish(
                    &name,
                    Outcome::RolledBack,
                    Source::Start,
                    format!("the state file's shift cannot resume: {why}"),
                );
                continue;
            }
            let message = format!(
                "shift to {:?} resumed after a restart at step {} of {} ({}%)",
                record.to,
                record.step + 1,
                record.policy.steps.len(),
                record.policy.steps[record.step]
            );
            tracing::info!(service = name, "{message}");
            self.audit.record(
                Change::new(EventKind::ShiftStep, Source::Start, message)
                    .service(&name)
                    .pool(&record.to),
            );
            let metrics = self.metrics.shift(&name, &record.to);
            self.shifts
                .tracks
                .insert(name.clone(), Track::new(record, metrics));
            self.begin_step(&name);
        }
        self.refresh_shifts();
    }

    /// Judges every step that is due.
    pub(super) fn judge_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .shifts
            .tracks
            .iter()
            .filter(|(_, t)| t.live.as_ref().is_some_and(|l| l.judge_at <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            self.judge(&name);
        }
        self.refresh_shifts();
    }

    fn judge(&mut self, name: &str) {
        let Some(track) = self.shifts.tracks.get(name) else {
            return;
        };
        let Some(live) = &track.live else {
            return;
        };
        let record = track.record.clone();
        let reading = self.reading(name, &record.to).unwrap_or_default();
        let figures = Figures::between(&live.baseline, &reading);
        let verdict = shift::judge(&record.policy, &figures, live.extensions);
        let percent = record.policy.steps[record.step];
        let judged = |verdict: &'static str, reason: Option<String>| Judged {
            step: record.step + 1,
            percent,
            figures: figures.clone(),
            verdict,
            reason,
        };
        let Some(track) = self.shifts.tracks.get_mut(name) else {
            return;
        };
        match verdict {
            Verdict::Extend => {
                if let Some(live) = &mut track.live {
                    live.extensions += 1;
                    live.judge_at += record.policy.every;
                }
                tracing::info!(
                    service = name,
                    requests = figures.requests,
                    min_requests = record.policy.min_requests,
                    "shift step {} ({percent}%) extended: too few requests on the target to judge",
                    record.step + 1
                );
                let entry = judged(
                    "extend",
                    Some(format!(
                        "{} requests, fewer than min_requests {}",
                        figures.requests, record.policy.min_requests
                    )),
                );
                // One entry per step's extensions, with the figures so far.
                match track.judged.last_mut() {
                    Some(last) if last.verdict == "extend" && last.step == entry.step => {
                        *last = entry;
                    }
                    _ => track.judged.push(entry),
                }
            }
            Verdict::Pass => {
                track.metrics.judged(&figures);
                track.judged.push(judged("pass", None));
                if record.step + 1 == record.policy.steps.len() {
                    self.finish(
                        name,
                        Outcome::Done,
                        Source::Shift,
                        "every step passed".to_owned(),
                    );
                } else {
                    self.next_step(name, &figures);
                }
            }
            Verdict::Breach(breach) => {
                track.metrics.judged(&figures);
                let reason = format!(
                    "{breach} at step {} ({percent}%){}",
                    record.step + 1,
                    context(&breach, &figures)
                );
                track.judged.push(judged("breach", Some(reason.clone())));
                self.finish(name, Outcome::RolledBack, Source::Shift, reason);
            }
        }
    }

    /// Moves `name`'s shift to its next step.
    fn next_step(&mut self, name: &str, judged: &Figures) {
        let Some(mut record) = self.overrides.shift(name).cloned() else {
            return;
        };
        let Some(service) = self.service(name).cloned() else {
            return;
        };
        let before = self.overrides.weights(&service);
        record.step += 1;
        let percent = record.policy.steps[record.step];
        let after = shift::split(&record.before_weights, &record.to, percent);
        let mut next = self.overrides.clone();
        next.set(&service, after.clone(), "shift".to_owned(), None);
        next.set_shift(name, Some(record.clone()));
        match self.commit(next) {
            Ok(generation) => {
                let message = format!(
                    "shift to {:?}: step {} passed ({} requests, error rate {:.2}%, p99 {}); step {} of {}: {percent}%",
                    record.to,
                    record.step,
                    judged.requests,
                    judged.error_rate * 100.0,
                    p99_text(judged.p99_seconds),
                    record.step + 1,
                    record.policy.steps.len()
                );
                tracing::info!(service = name, generation, "{message}");
                self.audit.record(
                    Change::new(EventKind::ShiftStep, Source::Shift, message)
                        .service(name)
                        .pool(&record.to)
                        .generation(generation)
                        .before(&before)
                        .after(&after),
                );
                if let Some(track) = self.shifts.tracks.get_mut(name) {
                    track.record = record;
                }
                self.begin_step(name);
            }
            Err(e) => {
                // The state file could not take the step: stop where the
                // shift stands rather than run on unsaved.
                let reason = format!("step {} could not be saved: {e}", record.step + 1);
                self.finish(name, Outcome::RolledBack, Source::Shift, reason);
            }
        }
    }

    /// Ends `name`'s shift. Done: the last step's weights stay. Rolled back
    /// or aborted: the override from before the shift is restored. Ended:
    /// the caller has already put the newer weights in place.
    pub(super) fn finish(
        &mut self,
        name: &str,
        outcome: Outcome,
        source: Source,
        reason: String,
    ) -> Option<u64> {
        let record = self.overrides.shift(name).cloned()?;
        let service = self.service(name).cloned();
        let before = service.as_ref().map(|s| self.overrides.weights(s));
        let mut next = self.overrides.clone();
        next.set_shift(name, None);
        if matches!(outcome, Outcome::RolledBack | Outcome::Aborted) {
            next.restore(name, record.before.clone());
        }
        let generation = self.commit_anyway(next);
        let after = service.as_ref().map(|s| self.overrides.weights(s));
        let (kind, message) = match outcome {
            Outcome::Done => (
                EventKind::ShiftDone,
                format!("shift to {:?} done: {reason}", record.to),
            ),
            Outcome::RolledBack => (
                EventKind::ShiftRollback,
                format!(
                    "shift to {:?} rolled back to the weights from before it: {reason}",
                    record.to
                ),
            ),
            Outcome::Aborted => (
                EventKind::ShiftAbort,
                format!(
                    "shift to {:?} aborted at step {}; the weights from before it are back",
                    record.to,
                    record.step + 1
                ),
            ),
            Outcome::Ended => (
                EventKind::ShiftEnd,
                format!(
                    "shift to {:?} ended at step {}: {reason}",
                    record.to,
                    record.step + 1
                ),
            ),
        };
        match outcome {
            Outcome::RolledBack => tracing::warn!(service = name, generation, "{message}"),
            _ => tracing::info!(service = name, generation, "{message}"),
        }
        self.audit.record(
            Change::new(kind, source, message)
                .service(name)
                .pool(&record.to)
                .generation(generation)
                .before(&before)
                .after(&after),
        );
        let share = after.as_ref().map_or(0, |w| shift::share(w, &record.to));
        if let Some(track) = self.shifts.tracks.get_mut(name) {
            track.live = None;
            track.metrics.percent.set(i64::from(share));
            track.record = record;
            let reason = match outcome {
                Outcome::Aborted => format!("aborted at step {}", track.record.step + 1),
                _ => reason,
            };
            track.ended = Some((outcome, reason, now_rfc3339()));
            track.metrics.step.set(0);
        }
        self.metrics.set_shift_state(name, outcome.state());
        self.refresh_shifts();
        Some(generation)
    }

    /// `DELETE /v1/services/{svc}/shift`.
    pub(super) fn abort_shift(&mut self, name: &str, source: &Source) -> Result<u64, ChangeError> {
        self.changeable(name)?;
        if self.overrides.shift(name).is_none() {
            return Err(ChangeError::NoShift(name.to_owned()));
        }
        self.finish(
            name,
            Outcome::Aborted,
            source.clone(),
            format!("aborted by {}", who(source)),
        )
        .ok_or_else(|| ChangeError::Reload("the rollback could not be saved".to_owned()))
    }

    /// Marks the shifts that the overrides no longer hold (a newer change
    /// replaced them) as ended, saying why for each service.
    pub(super) fn end_superseded(
        &mut self,
        why: impl Fn(&str) -> String,
        source: &Source,
        generation: u64,
    ) {
        let gone: Vec<String> = self
            .shifts
            .tracks
            .iter()
            .filter(|(name, t)| t.live.is_some() && self.overrides.shift(name).is_none())
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let Some(track) = self.shifts.tracks.get_mut(&name) else {
                continue;
            };
            let why = why(&name);
            let message = format!(
                "shift to {:?} ended at step {}: {why}",
                track.record.to,
                track.record.step + 1
            );
            tracing::info!(service = name, generation, "{message}");
            track.live = None;
            track.ended = Some((Outcome::Ended, why, now_rfc3339()));
            track.metrics.step.set(0);
            let share = self
                .config
                .services
                .iter()
                .find(|s| s.name == name)
                .map_or(0, |s| {
                    shift::share(&self.overrides.weights(s), &track.record.to)
                });
            track.metrics.percent.set(i64::from(share));
            self.audit.record(
                Change::new(EventKind::ShiftEnd, source.clone(), message)
                    .service(&name)
                    .pool(&track.record.to)
                    .generation(generation),
            );
            self.metrics.set_shift_state(&name, Outcome::Ended.state());
        }
    }

    /// Publishes the shift part of the status, with the running steps'
    /// figures so far.
    pub(super) fn refresh_shifts(&self) {
        let views = self.shift_views();
        self.status.send_modify(|s| s.shifts = views);
    }
}

/// The counts behind a breach, for its message.
fn context(breach: &Breach, figures: &Figures) -> String {
    match breach {
        Breach::ErrorRate { .. } => format!(
            ": {} of {} requests failed",
            figures.errors, figures.requests
        ),
        Breach::P99 { .. } => format!(" over {} requests", figures.requests),
        Breach::TooFewRequests { .. } => String::new(),
    }
}

fn p99_text(p99: Option<f64>) -> String {
    p99.map_or_else(|| "none".to_owned(), |s| format!("{:.1}ms", s * 1000.0))
}
