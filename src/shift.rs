//! Progressive shifts, as pure rules: the policy a shift follows (steps,
//! hold time, limits), the weights each step sets, and how a step is judged
//! from the target pool's counters read at its start and at its end. No
//! clock, no I/O: the server's shift controller (`server::shifts`) drives
//! these and owns the running state.

use std::time::Duration;

use prometheus::core::Collector;
use serde::{Deserialize, Serialize};

/// A service's pool weights, by pool name.
pub type Weights = std::collections::BTreeMap<String, u32>;

/// Most steps a shift may have.
pub const MAX_STEPS: usize = 100;

/// Shortest hold time of a step.
pub const MIN_EVERY: Duration = Duration::from_millis(100);

/// Longest hold time of a step.
pub const MAX_EVERY: Duration = Duration::from_secs(86_400);

/// Most extensions one step may have.
pub const MAX_EXTENSIONS: u32 = 1000;

/// How a shift moves and what it accepts: `[service.shift]` gives the
/// defaults, a `POST /v1/services/{svc}/shift` body may override each field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// The target pool's share of the service's traffic at each step, in
    /// percent, strictly ascending, from 1 to 100.
    pub steps: Vec<u32>,
    /// How long each step is held before it is judged.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// Largest share of the target's attempts that may fail in one step:
    /// 5xx answers plus connect, reset and timeout failures.
    pub max_error_rate: f64,
    /// Largest p99 of the target's request duration in one step.
    #[serde(with = "humantime_serde")]
    pub max_p99: Duration,
    /// A step with fewer attempts on the target is extended, not judged.
    pub min_requests: u64,
    /// How many times one step may be extended for want of requests before
    /// the shift rolls back: a target that gets no traffic is never promoted
    /// unjudged.
    pub max_extensions: u32,
}

// Validated: `max_error_rate` is finite, so equality is total.
impl Eq for Policy {}

impl Default for Policy {
    fn default() -> Self {
        Self {
            steps: vec![10, 25, 50, 100],
            every: Duration::from_secs(30),
            max_error_rate: 0.01,
            max_p99: Duration::from_millis(500),
            min_requests: 100,
            max_extensions: 10,
        }
    }
}

impl Policy {
    /// Every problem with the policy, each as one sentence naming the field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.steps.is_empty() {
            problems.push(
                "steps is empty; give the target's share at each step, like [10, 25, 50, 100]"
                    .to_owned(),
            );
        }
        if self.steps.len() > MAX_STEPS {
            problems.push(format!(
                "steps has {} entries; at most {MAX_STEPS}",
                self.steps.len()
            ));
        }
        if let Some(bad) = self.steps.iter().find(|s| !(1..=100).contains(*s)) {
            problems.push(format!(
                "step {bad} is not a percentage from 1 to 100 of the service's traffic"
            ));
        }
        if self.steps.windows(2).any(|w| w[0] >= w[1]) {
            problems.push(format!(
                "steps {:?} do not strictly ascend; each step moves more traffic to the target",
                self.steps
            ));
        }
        if self.every < MIN_EVERY || self.every > MAX_EVERY {
            problems.push(format!(
                "every is {}; from {} to {}",
                humantime::format_duration(self.every),
                humantime::format_duration(MIN_EVERY),
                humantime::format_duration(MAX_EVERY)
            ));
        }
        if self.min_requests == 0 {
            problems.push(
                "min_requests is 0; at least 1, so no step is passed without a request judged"
                    .to_owned(),
            );
        }
        if self.max_extensions > MAX_EXTENSIONS {
            problems.push(format!(
                "max_extensions is {}; at most {MAX_EXTENSIONS}",
                self.max_extensions
            ));
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            problems.push(format!(
                "max_error_rate is {}; a share from 0 to 1 (0.01 is 1%)",
                self.max_error_rate
            ));
        }
        if self.max_p99.is_zero() || self.max_p99 > MAX_EVERY {
            problems.push(format!(
                "max_p99 is {}; longer than 0s and at most {}",
                humantime::format_duration(self.max_p99),
                humantime::format_duration(MAX_EVERY)
            ));
        }
        problems
    }
}

/// A `POST /v1/services/{svc}/shift` body: the target, and whichever
/// fields of the service's `[service.shift]` this shift changes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub to: String,
    pub steps: Option<Vec<u32>>,
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    pub max_error_rate: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub max_p99: Option<Duration>,
    pub min_requests: Option<u64>,
    pub max_extensions: Option<u32>,
}

impl Request {
    /// The policy this shift follows: `defaults` with the fields given.
    pub fn policy(&self, defaults: &Policy) -> Policy {
        Policy {
            steps: self.steps.clone().unwrap_or_else(|| defaults.steps.clone()),
            every: self.every.unwrap_or(defaults.every),
            max_error_rate: self.max_error_rate.unwrap_or(defaults.max_error_rate),
            max_p99: self.max_p99.unwrap_or(defaults.max_p99),
            min_requests: self.min_requests.unwrap_or(defaults.min_requests),
            max_extensions: self.max_extensions.unwrap_or(defaults.max_extensions),
        }
    }
}

/// Counters of one pool, read at one moment: enough to judge the span
/// between two readings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Requests answered through the pool (every status class).
    pub requests: u64,
    /// Of those, answered 5xx (the upstream's, or the proxy's 502/504).
    pub errors_5xx: u64,
    /// Attempts on the pool that failed and went on to another attempt.
    pub retried: u64,
    /// Cumulative histogram bucket counts of the request duration, one per
    /// bound of `bounds`.
    pub buckets: Vec<u64>,
    /// Upper bounds of the buckets, in seconds.
    pub bounds: Vec<f64>,
    /// Every observation, those past the last bound included.
    pub count: u64,
}

impl Reading {
    /// Reads the pool's counters from its metric handles.
    pub(crate) fn of(
        requests: u64,
        errors_5xx: u64,
        retried: u64,
        histogram: &prometheus::Histogram,
    ) -> Self {
        let (mut bounds, mut buckets) = (Vec::new(), Vec::new());
        let mut count = 0;
        for family in histogram.collect() {
            for metric in family.get_metric() {
                count = metric.get_histogram().get_sample_count();
                for bucket in metric.get_histogram().get_bucket() {
                    bounds.push(bucket.upper_bound());
                    buckets.push(bucket.cumulative_count());
                }
            }
        }
        Self {
            requests,
            errors_5xx,
            retried,
            buckets,
            bounds,
            count,
        }
    }
}

/// The target pool's figures over one span (a step so far, or a whole one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Attempts on the target: requests it answered, plus attempts that
    /// failed on it and were retried elsewhere.
    pub requests: u64,
    /// Failed attempts: 5xx answers plus failures retried elsewhere.
    pub errors: u64,
    pub error_rate: f64,
    /// p99 of the request duration, as Prometheus' `histogram_quantile`
    /// estimates it from the buckets; `None` with no request.
    pub p99_seconds: Option<f64>,
}

impl Figures {
    /// The figures of the span from `from` to `to`, readings of one pool.
    pub fn between(from: &Reading, to: &Reading) -> Self {
        let retried = to.retried.saturating_sub(from.retried);
        let requests = to.requests.saturating_sub(from.requests) + retried;
        let errors = to.errors_5xx.saturating_sub(from.errors_5xx) + retried;
        let error_rate = if requests == 0 {
            0.0
        } else {
            errors as f64 / requests as f64
        };
        let buckets: Vec<u64> = if from.buckets.len() == to.buckets.len() {
            to.buckets
                .iter()
                .zip(&from.buckets)
                .map(|(t, f)| t.saturating_sub(*f))
                .collect()
        } else {
            to.buckets.clone()
        };
        let count = to.count.saturating_sub(from.count);
        Self {
            requests,
            errors,
            error_rate,
            p99_seconds: quantile(0.99, &to.bounds, &buckets, count),
        }
    }
}

/// The `q` quantile of a cumulative histogram, interpolated linearly within
/// the bucket it falls in, as Prometheus' `histogram_quantile` does; past the
/// last finite bound, that bound.
fn quantile(q: f64, bounds: &[f64], cumulative: &[u64], total: u64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (bound, count) in bounds.iter().zip(cumulative) {
        if *count as f64 >= rank {
            let inside = (count - below) as f64;
            let into = if inside == 0.0 {
                1.0
            } else {
                (rank - below as f64) / inside
            };
            return Some(lower + (bound - lower) * into);
        }
        below = *count;
        lower = *bound;
    }
    Some(lower)
}

/// Why a step failed its judgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "figure", rename_all = "snake_case")]
pub enum Breach {
    ErrorRate {
        value: f64,
        limit: f64,
    },
    P99 {
        value_seconds: f64,
        limit_seconds: f64,
    },
    TooFewRequests {
        value: u64,
        limit: u64,
    },
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Breach::ErrorRate { value, limit } => write!(
                f,
                "error rate {:.2}% is over max_error_rate {:.2}%",
                value * 100.0,
                limit * 100.0
            ),
            Breach::P99 {
                value_seconds,
                limit_seconds,
            } => write!(
                f,
                "p99 {:.0}ms is over max_p99 {:.0}ms",
                value_seconds * 1000.0,
                limit_seconds * 1000.0
            ),
            Breach::TooFewRequests { value, limit } => write!(
                f,
                "{value} requests reached the target, fewer than min_requests {limit}, after every extension"
            ),
        }
    }
}

/// What the end of a step decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    /// Too few requests to judge: hold the step once more.
    Extend,
    Breach(Breach),
}

/// Judges a step's figures against the policy; `extensions` is how many
/// times the step was extended already.
pub fn judge(policy: &Policy, figures: &Figures, extensions: u32) -> Verdict {
    if figures.requests < policy.min_requests {
        if extensions < policy.max_extensions {
            return Verdict::Extend;
        }
        return Verdict::Breach(Breach::TooFewRequests {
            value: figures.requests,
            limit: policy.min_requests,
        });
    }
    if figures.error_rate > policy.max_error_rate {
        return Verdict::Breach(Breach::ErrorRate {
            value: figures.error_rate,
            limit: policy.max_error_rate,
        });
    }
    let limit = policy.max_p99.as_secs_f64();
    match figures.p99_seconds {
        Some(p99) if p99 > limit => Verdict::Breach(Breach::P99 {
            value_seconds: p99,
            limit_seconds: limit,
        }),
        _ => Verdict::Pass,
    }
}

/// The weights that give `target` `percent` of the traffic, the other pools
/// sharing the rest in proportion to their weights in `before` (evenly when
/// they all had 0). Weights sum to 100, rounded by largest remainder so the
/// target's share is exact.
pub fn split(before: &Weights, target: &str, percent: u32) -> Weights {
    let others: Vec<(&String, u32)> = before
        .iter()
        .filter(|(name, _)| name.as_str() != target)
        .map(|(name, w)| (name, *w))
        .collect();
    let rest = 100 - percent.min(100);
    let total: u64 = others.iter().map(|(_, w)| u64::from(*w)).sum();
    let share = |w: u32| -> (u64, u64) {
        // (whole part, remainder) of rest * w / total, in integers.
        let (num, den) = if total == 0 {
            (u64::from(rest), others.len().max(1) as u64)
        } else {
            (u64::from(rest) * u64::from(w), total)
        };
        (num / den, num % den)
    };
    let mut parts: Vec<(&String, u64, u64)> = others
        .iter()
        .map(|(name, w)| {
            let (whole, remainder) = share(*w);
            (*name, whole, remainder)
        })
        .collect();
    let given: u64 = parts.iter().map(|(_, whole, _)| whole).sum();
    let mut left = u64::from(rest).saturating_sub(given);
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|a, b| parts[*b].2.cmp(&parts[*a].2));
    for i in order {
        if left == 0 {
            break;
        }
        parts[i].1 += 1;
        left -= 1;
    }
    let mut weights: Weights = parts
        .into_iter()
        .map(|(name, whole, _)| (name.clone(), whole as u32))
        .collect();
    weights.insert(target.to_owned(), percent.min(100));
    weights
}

/// The target's share of the traffic under `weights`, in whole percent
/// (rounded down).
pub fn share(weights: &Weights, target: &str) -> u32 {
    let total: u64 = weights.values().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return 0;
    }
    let on = u64::from(weights.get(target).copied().unwrap_or(0));
    (on * 100 / total) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(pairs: &[(&str, u32)]) -> Weights {
        pairs.iter().map(|(n, w)| ((*n).to_owned(), *w)).collect()
    }

    #[test]
    fn split_gives_the_target_its_share_and_the_rest_in_proportion() {
        let before = weights(&[("blue", 100), ("green", 0)]);
        assert_eq!(
            split(&before, "green", 10),
            weights(&[("blue", 90), ("green", 10)])
        );
        assert_eq!(
            split(&before, "green", 100),
            weights(&[("blue", 0), ("green", 100)])
        );
        let three = weights(&[("a", 2), ("b", 1), ("green", 0)]);
        assert_eq!(
            split(&three, "green", 25),
            weights(&[("a", 50), ("b", 25), ("green", 25)])
        );
        let uneven = weights(&[("a", 1), ("b", 1), ("c", 1), ("green", 0)]);
        let split = split(&uneven, "green", 10);
        assert_eq!(split.values().sum::<u32>(), 100);
        assert_eq!(split["green"], 10);
        let zero = weights(&[("a", 0), ("b", 0), ("green", 5)]);
        assert_eq!(
            super::split(&zero, "green", 50),
            weights(&[("a", 25), ("b", 25), ("green", 50)])
        );
    }

    #[test]
    fn share_is_the_target_percent() {
        assert_eq!(share(&weights(&[("blue", 90), ("green", 10)]), "green"), 10);
        assert_eq!(share(&weights(&[("blue", 3), ("green", 1)]), "green"), 25);
        assert_eq!(share(&weights(&[("blue", 0), ("green", 0)]), "green"), 0);
    }

    #[test]
    fn policy_problems_name_the_field() {
        assert!(Policy::default().problems().is_empty());
        let bad = Policy {
            steps: vec![10, 10, 120],
            every: Duration::from_millis(10),
            max_error_rate: 1.5,
            max_p99: Duration::ZERO,
            min_requests: 0,
            max_extensions: 5000,
        };
        let problems = bad.problems().join("\n");
        for word in [
            "step 120",
            "ascend",
            "every",
            "max_error_rate",
            "max_p99",
            "min_requests",
            "max_extensions",
        ] {
            assert!(problems.contains(word), "{word} in {problems}");
        }
        let empty = Policy {
            steps: vec![],
            ..Policy::default()
        };
        assert!(empty.problems()[0].contains("steps is empty"));
        let forever = Policy {
            every: Duration::from_secs(300_000_000_000 * 365 * 86_400),
            ..Policy::default()
        };
        assert!(forever.problems()[0].contains("every is"));
    }

    fn reading(requests: u64, errors: u64, retried: u64, buckets: &[u64]) -> Reading {
        Reading {
            requests,
            errors_5xx: errors,
            retried,
            buckets: buckets.to_vec(),
            bounds: vec![0.1, 0.5, 1.0],
            count: *buckets.last().unwrap_or(&0),
        }
    }

    #[test]
    fn figures_count_retried_failures_as_attempts_and_errors() {
        let from = reading(10, 1, 1, &[5, 8, 10]);
        let to = reading(110, 4, 3, &[105, 108, 110]);
        let f = Figures::between(&from, &to);
        assert_eq!(f.requests, 102);
        assert_eq!(f.errors, 5);
        assert!((f.error_rate - 5.0 / 102.0).abs() < 1e-9);
        // 100 in the first bucket: p99 (rank 99) falls in it.
        assert!((f.p99_seconds.unwrap() - 0.099).abs() < 1e-9);
    }

    #[test]
    fn p99_interpolates_within_its_bucket_and_stops_at_the_last_bound() {
        assert_eq!(quantile(0.99, &[0.1, 0.5, 1.0], &[0, 0, 0], 0), None);
        let slow = quantile(0.99, &[0.1, 0.5, 1.0], &[0, 0, 100], 100).unwrap();
        assert!((slow - 0.995).abs() < 1e-9, "{slow}");
        // Beyond every bound: the bucket counts stop short of the total.
        assert_eq!(quantile(0.99, &[0.1, 0.5], &[0, 0], 100), Some(0.5));
    }

    #[test]
    fn judge_extends_quiet_steps_then_breaches_on_each_figure() {
        let policy = Policy {
            min_requests: 10,
            max_extensions: 2,
            ..Policy::default()
        };
        let quiet = Figures {
            requests: 3,
            ..Figures::default()
        };
        assert_eq!(judge(&policy, &quiet, 0), Verdict::Extend);
        assert_eq!(judge(&policy, &quiet, 1), Verdict::Extend);
        assert!(matches!(
            judge(&policy, &quiet, 2),
            Verdict::Breach(Breach::TooFewRequests {
                value: 3,
                limit: 10
            })
        ));
        let failing = Figures {
            requests: 100,
            errors: 5,
            error_rate: 0.05,
            p99_seconds: Some(0.01),
        };
        let Verdict::Breach(breach) = judge(&policy, &failing, 0) else {
            panic!("5% errors pass");
        };
        assert_eq!(
            breach.to_string(),
            "error rate 5.00% is over max_error_rate 1.00%"
        );
        let slow = Figures {
            requests: 100,
            errors: 0,
            error_rate: 0.0,
            p99_seconds: Some(0.8),
        };
        assert!(matches!(
            judge(&policy, &slow, 0),
            Verdict::Breach(Breach::P99 { .. })
        ));
        let fine = Figures {
            requests: 100,
            errors: 1,
            error_rate: 0.01,
            p99_seconds: Some(0.2),
        };
        assert_eq!(judge(&policy, &fine, 0), Verdict::Pass);
    }
}
