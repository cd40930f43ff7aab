//! `--watch`: polls `/v1/status` once a second and shows how the watched
//! shifts go — redrawn in place on a terminal; on a log, a line when a
//! step, state or outcome changes and otherwise one every 10 s — until
//! they end, then exits 0 when every one finished `done` and 1 otherwise.
//! Owns what is watched, when it has ended, when to print, and riding out
//! a lost admin connection; the text itself is `render`'s.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde_json::Value;
use tokio::time::MissedTickBehavior;

use super::api::{Api, Refused};
use super::render;

/// How often the status is read.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Longest silence on a log while nothing changes.
const LINE_AT_LEAST_EVERY: Duration = Duration::from_secs(10);

/// How long a lost admin API is asked again before giving up.
const RETRY_FOR: Duration = Duration::from_secs(30);

/// Moves the cursor home and clears the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Exit code of a watch stopped with Ctrl-C, as a shell reports SIGINT.
const INTERRUPTED: u8 = 130;

/// One shift being watched, known by when it started and which pool it
/// moves to: a later shift of the same service is another one.
#[derive(Debug, Clone, PartialEq)]
pub struct Watched {
    pub service: String,
    started_at: Value,
    to: Value,
}

impl Watched {
    /// The shift a service's status object describes; `None` when none
    /// has run there.
    pub fn of(service: &Value) -> Option<Self> {
        let shift = &service["shift"];
        if !shift["started_at"].is_string() {
            return None;
        }
        Some(Self {
            service: service["name"].as_str()?.to_owned(),
            started_at: shift["started_at"].clone(),
            to: shift["to"].clone(),
        })
    }
}

/// What to watch.
pub enum Target {
    /// These shifts (the one `shift --watch` started).
    Shifts(Vec<Watched>),
    /// Every shift running at the first answer; when none is, the whole
    /// status until interrupted.
    RunningNow,
}

/// Where a watched shift stands in one status.
#[derive(Debug, PartialEq)]
enum Progress<'a> {
    /// Still running; the service's status object.
    Running(&'a Value),
    /// Ended, `done` or not; the service's status object.
    Ended { service: &'a Value, done: bool },
    /// The status no longer describes it, for this reason.
    Gone(String),
}

fn progress<'a>(status: &'a Value, watched: &Watched) -> Progress<'a> {
    let found = status["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"].as_str() == Some(watched.service.as_str()));
    let Some(service) = found else {
        return Progress::Gone(format!(
            "service {:?} is no longer in the configuration",
            watched.service
        ));
    };
    let shift = &service["shift"];
    if shift["started_at"] != watched.started_at || shift["to"] != watched.to {
        return Progress::Gone(match shift["started_at"].as_str() {
            Some(at) => format!(
                "a newer shift, to {}, started {at}",
                shift["to"].as_str().unwrap_or("?")
            ),
            None => "the proxy no longer knows of it".to_owned(),
        });
    }
    match shift["outcome"].as_str() {
        Some(outcome) => Progress::Ended {
            service,
            done: outcome == "done",
        },
        None if shift["state"].as_str() == Some("running") => Progress::Running(service),
        // Stopped without saying how: not a success.
        None => Progress::Ended {
            service,
            done: false,
        },
    }
}

/// Once every watched shift has ended, the exit code: 0 when each one
/// finished `done`, 1 otherwise. `None` while one still runs.
fn exit_code(status: &Value, watched: &[Watched]) -> Option<u8> {
    let mut code = 0;
    for w in watched {
        match progress(status, w) {
            Progress::Running(_) => return None,
            Progress::Ended { done: true, .. } => {}
            Progress::Ended { done: false, .. } | Progress::Gone(_) => code = 1,
        }
    }
    Some(code)
}

/// What must be printed at once on a log when it changes: each watched
/// shift's state, step and outcome.
fn key(status: &Value, watched: &[Watched]) -> String {
    let mut key = String::new();
    for w in watched {
        let part = match progress(status, w) {
            Progress::Running(s) | Progress::Ended { service: s, .. } => {
                let shift = &s["shift"];
                format!(
                    "{} {} {} {};",
                    shift["state"], shift["step"], shift["percent"], shift["outcome"]
                )
            }
            Progress::Gone(why) => format!("gone {why};"),
        };
        key.push_str(&part);
    }
    key
}

/// The same for the whole status: its generation and every service's
/// shift state, step and outcome.
fn status_key(status: &Value) -> String {
    let mut key = status["generation"].to_string();
    for service in status["services"].as_array().into_iter().flatten() {
        let shift = &service["shift"];
        key.push_str(&format!(
            " {} {} {} {};",
            service["name"], shift["state"], shift["step"], shift["outcome"]
        ));
    }
    key
}

/// Decides when a log gets a line: at once when the key changes, else at
/// most every `every`.
struct Throttle {
    every: Duration,
    last: Option<(String, Instant)>,
}

impl Throttle {
    fn new(every: Duration) -> Self {
        Self { every, last: None }
    }

    /// Whether to print `key` at `now`; a yes is remembered as printed.
    fn due(&mut self, key: &str, now: Instant) -> bool {
        let due = match &self.last {
            None => true,
            Some((last, at)) => last != key || now.saturating_duration_since(*at) >= self.every,
        };
        if due {
            self.last = Some((key.to_owned(), now));
        }
        due
    }
}

/// The watched shifts in one status: a block each on a terminal, a line
/// each otherwise.
fn view(status: &Value, watched: &[Watched], tty: bool) -> String {
    let mut out = String::new();
    for (i, w) in watched.iter().enumerate() {
        match progress(status, w) {
            Progress::Running(service) | Progress::Ended { service, .. } if tty => {
                if i > 0 {
                    out.push('\n');
                }
                out.push_str(&render::shift_block(service));
            }
            Progress::Running(service) | Progress::Ended { service, .. } => {
                out.push_str(&render::shift_line(service));
                out.push('\n');
            }
            Progress::Gone(why) => out.push_str(&format!(
                "{}: the shift to {} started {} ended unseen: {why}\n",
                w.service,
                w.to.as_str().unwrap_or("?"),
                w.started_at.as_str().unwrap_or("?"),
            )),
        }
    }
    out
}

/// Watches `target` until it ends (exit 0 or 1 as `exit_code` says), the
/// user interrupts (130), or the admin API stays lost for `RETRY_FOR` or
/// refuses (an error).
pub async fn run(api: &Api, target: Target) -> anyhow::Result<ExitCode> {
    let tty = std::io::stdout().is_terminal();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut watched = match target {
        Target::Shifts(shifts) => Some(shifts),
        Target::RunningNow => None,
    };
    let mut throttle = Throttle::new(LINE_AT_LEAST_EVERY);
    let mut lost_since: Option<Instant> = None;
    let mut ticker = tokio::time::interval(POLL_EVERY);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut out = std::io::stdout();
    loop {
        let polled = tokio::select! {
            signal = &mut interrupted => {
                signal.context("cannot listen for Ctrl-C")?;
                return Ok(ExitCode::from(INTERRUPTED));
            }
            polled = async {
                ticker.tick().await;
                api.get("/v1/status").await
            } => polled,
        };
        let status = match polled {
            Ok(status) => {
                if lost_since.take().is_some() {
                    eprintln!("the admin API at {} answers again", api.base);
                }
                status
            }
            Err(e)
                if e.downcast_ref::<Refused>()
                    .is_some_and(|r| !r.is_transient()) =>
            {
                return Err(e)
            }
            Err(e) => {
                let since = *lost_since.get_or_insert_with(|| {
                    eprintln!("{e:#}; asking again for up to {}s", RETRY_FOR.as_secs());
                    Instant::now()
                });
                if since.elapsed() >= RETRY_FOR {
                    return Err(e.context(format!(
                        "gave up watching after {}s without an answer",
                        RETRY_FOR.as_secs()
                    )));
                }
                continue;
            }
        };
        let watched = watched.get_or_insert_with(|| running_now(&status));
        // With no shift to follow, the whole status; else the shifts.
        let (text, key, code) = if watched.is_empty() {
            (render::status(&status), status_key(&status), None)
        } else {
            let code = exit_code(&status, watched);
            (view(&status, watched, tty), key(&status, watched), code)
        };
        let written = if tty {
            let at = humantime::format_rfc3339_seconds(SystemTime::now());
            let every = POLL_EVERY.as_secs();
            write!(
                out,
                "{CLEAR}{at}  {}  every {every}s, Ctrl-C to stop\n\n{text}",
                api.base
            )
        } else if code.is_some() || throttle.due(&key, Instant::now()) {
            out.write_all(text.as_bytes())
        } else {
            Ok(())
        };
        written
            .and_then(|()| out.flush())
            .context("cannot write to standard output")?;
        if let Some(code) = code {
            return Ok(ExitCode::from(code));
        }
    }
}

/// Every shift running in `status`.
fn running_now(status: &Value) -> Vec<Watched> {
    status["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["shift"]["state"].as_str() == Some("running"))
        .filter_map(Watched::of)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::render::samples::{ended, idle, running, status_of as status};
    use super::*;

    fn watched(service: &str, started_at: &str) -> Watched {
        Watched {
            service: service.to_owned(),
            started_at: Value::from(started_at),
            to: Value::from("green"),
        }
    }

    #[test]
    fn the_shift_is_known_by_its_start_and_target() {
        let service = running("hello", "2026-12-02T17:00:00Z");
        assert_eq!(
            Watched::of(&service),
            Some(watched("hello", "2026-12-02T17:00:00Z"))
        );
        assert_eq!(Watched::of(&idle("hello")), None);
    }

    #[test]
    fn exit_0_only_when_the_watched_shift_is_done() {
        let w = [watched("hello", "t0")];
        assert_eq!(exit_code(&status(vec![running("hello", "t0")]), &w), None);
        assert_eq!(
            exit_code(&status(vec![ended("hello", "t0", "done", "done")]), &w),
            Some(0)
        );
        for (state, outcome) in [
            ("rolled_back", "rolled_back"),
            ("rolled_back", "aborted"),
            ("idle", "ended"),
        ] {
            assert_eq!(
                exit_code(&status(vec![ended("hello", "t0", state, outcome)]), &w),
                Some(1),
                "{outcome}"
            );
        }
    }

    #[test]
    fn a_newer_shift_or_a_vanished_service_ends_the_watch_with_1() {
        let w = [watched("hello", "t0")];
        let newer = status(vec![running("hello", "t1")]);
        assert_eq!(exit_code(&newer, &w), Some(1));
        let text = view(&newer, &w, false);
        assert!(
            text.contains("ended unseen: a newer shift, to green, started t1"),
            "{text}"
        );
        assert_eq!(exit_code(&status(vec![idle("other")]), &w), Some(1));
        // A proxy that forgot every shift (restarted without state).
        assert_eq!(exit_code(&status(vec![idle("hello")]), &w), Some(1));
    }

    #[test]
    fn several_shifts_end_when_the_last_does_and_all_must_be_done() {
        let w = [watched("a", "t0"), watched("b", "t0")];
        let half = status(vec![ended("a", "t0", "done", "done"), running("b", "t0")]);
        assert_eq!(exit_code(&half, &w), None);
        let both = status(vec![
            ended("a", "t0", "done", "done"),
            ended("b", "t0", "done", "done"),
        ]);
        assert_eq!(exit_code(&both, &w), Some(0));
        let one_failed = status(vec![
            ended("a", "t0", "rolled_back", "rolled_back"),
            ended("b", "t0", "done", "done"),
        ]);
        assert_eq!(exit_code(&one_failed, &w), Some(1));
    }

    #[test]
    fn status_watch_follows_the_shifts_running_at_its_start() {
        let now = status(vec![
            running("a", "t0"),
            ended("b", "t0", "done", "done"),
            idle("c"),
        ]);
        assert_eq!(running_now(&now), vec![watched("a", "t0")]);
        assert!(running_now(&status(vec![idle("c")])).is_empty());
    }

    #[test]
    fn a_log_gets_a_line_per_change_and_otherwise_one_every_10s() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut throttle = Throttle::new(LINE_AT_LEAST_EVERY);
        let w = [watched("hello", "t0")];
        let step2 = key(&status(vec![running("hello", "t0")]), &w);
        let mut step3 = running("hello", "t0");
        step3["shift"]["step"] = Value::from(3);
        step3["shift"]["percent"] = Value::from(50);
        let step3 = key(&status(vec![step3]), &w);
        let done = key(&status(vec![ended("hello", "t0", "done", "done")]), &w);

        assert!(throttle.due(&step2, at(0)));
        assert!(!throttle.due(&step2, at(1)));
        assert!(!throttle.due(&step2, at(9)));
        assert!(throttle.due(&step2, at(10)));
        assert!(!throttle.due(&step2, at(11)));
        assert!(throttle.due(&step3, at(12)), "a new step prints at once");
        assert!(!throttle.due(&step3, at(13)));
        assert!(throttle.due(&done, at(14)), "the outcome prints at once");
    }

    #[test]
    fn the_whole_status_prints_again_when_a_shift_starts() {
        let quiet = status_key(&status(vec![idle("hello")]));
        let shifting = status_key(&status(vec![running("hello", "t0")]));
        assert_ne!(quiet, shifting);
    }

    #[test]
    fn a_terminal_gets_blocks_and_a_log_gets_lines() {
        let w = [watched("a", "t0"), watched("b", "t0")];
        let now = status(vec![running("a", "t0"), ended("b", "t0", "done", "done")]);
        let lines = view(&now, &w, false);
        assert_eq!(lines.lines().count(), 2, "{lines}");
        assert!(lines.starts_with("a: shift to green running"), "{lines}");
        let blocks = view(&now, &w, true);
        assert!(blocks.contains("\n\nb: shift to green done"), "{blocks}");
    }
}
